//! The service level objectives as `prenv init` ships them: the PrometheusRule of recording rules
//! and burn-rate alerts passes `promtool check rules` and its unit tests (tests/promtool/, run by
//! the real promtool that scripts/tools.sh installs), every alert is proven to fire and to stay
//! quiet, the rules read only metrics the watcher exposes (names and `le` buckets), the dashboard
//! reads only series the rules record, and the pods SLI's log half is wired end to end: the Loki
//! ruler's rule, the sidecar folder the ruler reads, its remote write and Prometheus's receiver.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::{docs, prenv, repo_root, s, str_at, text};
use serde_yaml::Value;

const RULES: &str = "infrastructure/monitoring-rules/slo-rules.yaml";
const DASHBOARD: &str = "infrastructure/monitoring/slo-dashboard.json";
const LOKI_RULES: &str = "infrastructure/monitoring/loki-rules.yaml";

fn scaffolded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_root().join("examples/prenv.toml");
    let out = prenv(&["--config", s(&config), "init", "--repo", s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

/// The PrometheusRule's groups, as a Prometheus rule file.
fn rule_spec(dir: &Path) -> Value {
    let rule = &docs(&dir.join(RULES))[0];
    assert_eq!(str_at(rule, &["kind"]), Some("PrometheusRule"));
    rule["spec"].clone()
}

fn rules(spec: &Value) -> Vec<&Value> {
    spec["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .collect()
}

fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool (scripts/tools.sh installs it)")
}

#[test]
fn the_slo_rules_pass_promtool_and_their_unit_tests() {
    let dir = scaffolded();
    let work = dir.path().join("promtool");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        work.join("slo-rules.yaml"),
        serde_yaml::to_string(&rule_spec(dir.path())).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("tests/promtool/slo-rules.test.yaml"),
        work.join("slo-rules.test.yaml"),
    )
    .unwrap();
    let check = promtool(&["check", "rules", "slo-rules.yaml"], &work);
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
    let test = promtool(&["test", "rules", "slo-rules.test.yaml"], &work);
    assert!(test.status.success(), "{}{}", text(&test.stdout), text(&test.stderr));
    println!("{}", text(&test.stdout).trim());
}

#[test]
fn every_slo_alert_is_tested_firing_and_quiet_for_each_objective() {
    let dir = scaffolded();
    let spec = rule_spec(dir.path());
    let alerts: BTreeSet<String> = rules(&spec)
        .iter()
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    assert_eq!(
        alerts.len(),
        6,
        "a fast and a slow burn alert per objective: {alerts:?}"
    );
    let tests = &docs(&repo_root().join("tests/promtool/slo-rules.test.yaml"))[0];
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in tests["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_string();
            match case["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()) {
                true => fires.insert(name),
                false => quiet.insert(name),
            };
        }
    }
    assert_eq!(fires, alerts, "alerts without a test that makes them fire");
    assert_eq!(quiet, alerts, "alerts without a test that keeps them quiet");
    // Each objective's recorded error ratio exists for every window the alerts read.
    let recorded: BTreeSet<(String, String)> = rules(&spec)
        .iter()
        .filter_map(|r| {
            Some((
                r["record"].as_str()?.to_string(),
                str_at(r, &["labels", "slo"])?.to_string(),
            ))
        })
        .collect();
    let read = regex::Regex::new(r#"(prenv:slo_error:ratio_rate\w+)\{slo="([\w-]+)"\}"#).unwrap();
    let mut reads = 0;
    for rule in rules(&spec).iter().filter(|r| r["alert"].is_string()) {
        for m in read.captures_iter(rule["expr"].as_str().unwrap()) {
            reads += 1;
            assert!(
                recorded.contains(&(m[1].to_string(), m[2].to_string())),
                "{} reads {}{{slo={:?}}}, which no rule records",
                rule["alert"].as_str().unwrap(),
                &m[1],
                &m[2]
            );
        }
    }
    assert_eq!(reads, 6 * 4, "each alert reads two long and two short windows");
}

/// The metric families and samples `prenv watch` exposes on /metrics, before any event: every
/// histogram is there from the start, with its buckets.
fn watcher_samples() -> BTreeMap<String, BTreeSet<String>> {
    let metrics = prenv::app::watch::WatchMetrics::default();
    let exposition = metrics.render(&prenv::adapters::github::Stats::default());
    let sample = regex::Regex::new(r#"^(\w+)(?:\{([^}]*)\})? "#).unwrap();
    let le = regex::Regex::new(r#"le="([^"]+)""#).unwrap();
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let m = sample
            .captures(line)
            .unwrap_or_else(|| panic!("not a sample line: {line}"));
        let labels = m.get(2).map_or("", |l| l.as_str());
        let entry = samples.entry(m[1].to_string()).or_default();
        if let Some(le) = le.captures(labels) {
            entry.insert(le[1].to_string());
        }
    }
    samples
}

#[test]
fn the_rules_read_only_metrics_the_watcher_exposes_with_the_buckets_of_the_objectives() {
    let dir = scaffolded();
    let spec = rule_spec(dir.path());
    let exposed = watcher_samples();
    let metric = regex::Regex::new(r#"\b(prenv_\w+?)(?:\{([^}]*)\})?\["#).unwrap();
    let le = regex::Regex::new(r#"le="([^"]+)""#).unwrap();
    let mut read = BTreeSet::new();
    for rule in rules(&spec) {
        let expr = rule["expr"].as_str().unwrap();
        for m in metric.captures_iter(expr) {
            let name = &m[1];
            read.insert(name.to_string());
            let buckets = exposed
                .get(name)
                .unwrap_or_else(|| panic!("the rules read {name}, which the watcher does not expose: {exposed:?}"));
            if let Some(le) = m.get(2).and_then(|l| le.captures(l.as_str())) {
                assert!(
                    buckets.contains(&le[1]),
                    "the rules read {name}{{le={:?}}}, the watcher's buckets are {buckets:?}",
                    &le[1]
                );
            }
        }
    }
    let want: BTreeSet<String> = [
        "prenv_open_to_ready_seconds_bucket",
        "prenv_open_to_ready_seconds_count",
        "prenv_commit_to_ready_seconds_bucket",
        "prenv_commit_to_ready_seconds_count",
        "prenv_close_to_gone_seconds_bucket",
        "prenv_close_to_gone_seconds_count",
    ]
    .map(String::from)
    .into();
    assert_eq!(read, want, "the SLO rules read the watcher's three histograms");
}

#[test]
fn the_slo_dashboard_shows_each_objective_from_recorded_series() {
    let dir = scaffolded();
    let spec = rule_spec(dir.path());
    let recorded: BTreeMap<String, BTreeSet<String>> = rules(&spec)
        .iter()
        .filter_map(|r| r["record"].as_str().map(|n| (n, r)))
        .fold(BTreeMap::new(), |mut m, (name, r)| {
            let slo = str_at(r, &["labels", "slo"]).unwrap_or_default().to_string();
            m.entry(name.to_string()).or_insert_with(BTreeSet::new).insert(slo);
            m
        });
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(DASHBOARD)).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert_eq!(panels[0]["type"], "row", "the SLOs open with a row");
    let series = regex::Regex::new(r#"(prenv[:_][\w:]+)(?:\{slo="([\w-]+)"\})?"#).unwrap();
    let mut shown = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "prometheus", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut names = 0;
            for m in series.captures_iter(expr) {
                names += 1;
                let slos = recorded
                    .get(&m[1])
                    .unwrap_or_else(|| panic!("{title}: {} is no recorded series", &m[1]));
                let slo = m.get(2).map_or("", |s| s.as_str());
                assert!(slos.contains(slo), "{title}: {}{{slo={slo:?}}} is not recorded", &m[1]);
                shown.insert(slo.to_string());
            }
            assert!(names > 0, "{title}: {expr} reads no recorded series");
        }
    }
    for slo in ["ready-10m", "gone-5m", "pods-observed"] {
        assert!(shown.contains(slo), "the dashboard does not show {slo}");
        let budget = panels.iter().any(|p| {
            p["title"].as_str().unwrap().contains("budget")
                && p["targets"][0]["expr"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("slo=\"{slo}\""))
        });
        assert!(budget, "no error budget panel for {slo}");
    }
}

/// The values of a HelmRelease of stage infra-monitoring.
fn values(dir: &Path, file: &str) -> Value {
    docs(&dir.join("infrastructure/monitoring").join(file))
        .into_iter()
        .find(|d| str_at(d, &["kind"]) == Some("HelmRelease"))
        .unwrap()["spec"]["values"]
        .clone()
}

#[test]
fn the_log_half_of_the_pods_sli_flows_from_the_loki_ruler_to_prometheus() {
    let dir = scaffolded();
    // The Loki rule records what the Prometheus rule joins.
    let loki_rules = &docs(&dir.path().join(LOKI_RULES))[0];
    let recorded: Vec<&str> = loki_rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["record"].as_str())
        .collect();
    assert_eq!(recorded, ["prenv:pod_log_lines:count1h"]);
    let expr = loki_rules["groups"][0]["rules"][0]["expr"].as_str().unwrap();
    assert!(expr.contains("sum by (namespace, pod)"), "{expr}");
    let spec = rule_spec(dir.path());
    let observed = rules(&spec)
        .into_iter()
        .find(|r| r["record"] == "prenv:preview_pod:observed")
        .unwrap();
    assert!(
        observed["expr"]
            .as_str()
            .unwrap()
            .contains("prenv:pod_log_lines:count1h")
    );

    // The rules sidecar finds the ConfigMap: label loki_rule (helm-loki-6.24.0 values.yaml
    // sidecar.rules.label), in Loki's own namespace (sidecar.rules.searchNamespace unset).
    let kustomization = &docs(&dir.path().join("infrastructure/monitoring/kustomization.yaml"))[0];
    let generated = kustomization["configMapGenerator"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "loki-rules")
        .expect("a ConfigMap of the Loki rules");
    assert_eq!(str_at(generated, &["namespace"]), Some("monitoring"));
    assert!(generated["options"]["labels"]["loki_rule"].is_string());
    assert_eq!(generated["files"][0], "loki-rules.yaml");

    // The sidecar writes into /rules/<tenant>, the directory the local rule store lists tenants
    // of (loki v3.3.2 pkg/ruler/rulestore/local/local.go ListAllUsers); with auth off the tenant
    // is "fake" (docs/sources/operations/multi-tenancy.md). The ruler's scratch copy is elsewhere.
    let loki = values(dir.path(), "loki.yaml");
    assert_eq!(loki["loki"]["auth_enabled"], Value::Bool(false));
    let ruler = &loki["loki"]["structuredConfig"]["ruler"];
    let directory = str_at(ruler, &["storage", "local", "directory"]).unwrap();
    assert_eq!(str_at(ruler, &["storage", "type"]), Some("local"));
    assert_eq!(
        str_at(&loki, &["sidecar", "rules", "folder"]),
        Some(format!("{directory}/fake").as_str())
    );
    let scratch = str_at(ruler, &["rule_path"]).unwrap();
    assert!(
        !scratch.starts_with(directory),
        "rule_path {scratch} inside the rules {directory}"
    );
    // /tmp is an emptyDir of the single-binary StatefulSet (templates/single-binary/statefulset.yaml).
    assert!(scratch.starts_with("/tmp/"), "{scratch}");

    // Remote write to the Prometheus Service kube-prometheus-stack creates
    // (<fullname>-prometheus:9090, templates/prometheus/service.yaml), which accepts it.
    assert_eq!(ruler["remote_write"]["enabled"], Value::Bool(true));
    let clients = ruler["remote_write"]["clients"].as_mapping().unwrap();
    let urls: Vec<&str> = clients.values().filter_map(|c| c["url"].as_str()).collect();
    assert_eq!(
        urls,
        ["http://kube-prometheus-stack-prometheus.monitoring.svc:9090/api/v1/write"]
    );
    let stack = values(dir.path(), "kube-prometheus-stack.yaml");
    assert_eq!(
        stack["prometheus"]["prometheusSpec"]["enableRemoteWriteReceiver"],
        Value::Bool(true)
    );
    // The running pods come from preview namespaces by a label kube-state-metrics exports.
    let allow = stack["kube-state-metrics"]["metricLabelsAllowlist"][0]
        .as_str()
        .unwrap();
    assert!(
        allow.starts_with("namespaces=[") && allow.contains("app.kubernetes.io/managed-by"),
        "{allow}"
    );
    let running = rules(&spec)
        .into_iter()
        .find(|r| r["record"] == "prenv:preview_pod:running")
        .unwrap();
    assert!(
        running["expr"]
            .as_str()
            .unwrap()
            .contains(r#"kube_namespace_labels{label_app_kubernetes_io_managed_by="prenv"}"#)
    );
}

#[test]
fn both_engines_ship_the_slo_rules_and_dashboard() {
    for config in ["prenv.toml", "prenv-argocd.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let path = repo_root().join("examples").join(config);
        let out = prenv(&["--config", s(&path), "init", "--repo", s(dir.path())]);
        assert!(out.status.success(), "{config}: {}", text(&out.stderr));
        for file in [RULES, DASHBOARD, LOKI_RULES] {
            assert!(dir.path().join(file).is_file(), "{config}: no {file}");
        }
        let stage = &docs(&dir.path().join("infrastructure/monitoring-rules/kustomization.yaml"))[0];
        let resources: Vec<&str> = stage["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        assert!(resources.contains(&"slo-rules.yaml"), "{config}: {resources:?}");
    }
}
