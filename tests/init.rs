//! `prenv init`: the scaffold builds, its alert rules pass promtool, its dashboard references only
//! data sources that exist, the observability stack fits in 6 GiB, its scripts pass shellcheck and
//! run with --dry-run, and a second init changes nothing and never overwrites an edited file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use prenv::model::quantity::Bytes;

fn init(dir: &Path, extra: &[&str]) -> std::process::Output {
    let config = repo_root().join("examples/prenv.toml");
    let mut args = vec!["--config", s(&config), "init", "--repo", s(dir)];
    args.extend_from_slice(extra);
    prenv(&args)
}

fn scaffolded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

fn files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

#[test]
fn every_kustomization_of_the_scaffold_builds() {
    let dir = scaffolded();
    let mut built = 0;
    for file in files(dir.path(), "kustomization.yaml") {
        let kind = docs(&file)[0]["kind"].as_str().unwrap_or("Kustomization").to_string();
        if kind == "Component" {
            continue; // components build inside an environment: tests/render.rs
        }
        let objects = kustomize(file.parent().unwrap());
        assert!(
            !objects.is_empty() || file.ends_with("flux/environments/kustomization.yaml"),
            "{} builds to nothing",
            file.display()
        );
        built += 1;
    }
    assert!(built >= 6, "only {built} kustomizations");
    let runner = std::fs::read_to_string(dir.path().join("runner-image/Dockerfile")).unwrap();
    assert!(
        runner.contains("kubectl")
            && runner.contains("helm")
            && runner.contains("FROM ghcr.io/actions/actions-runner:")
    );
    let sync = std::fs::read_to_string(dir.path().join("clusters/preview/sync.yaml")).unwrap();
    for want in [
        "kind: GitRepository",
        "kind: Receiver",
        "path: \"./infrastructure\"",
        "path: \"./flux/environments\"",
        "provider: sops",
    ] {
        assert!(sync.contains(want), "clusters/preview/sync.yaml lacks {want}");
    }
    let cert = std::fs::read_to_string(dir.path().join("infrastructure/wildcard-certificate.yaml")).unwrap();
    assert!(cert.contains("\"*.preview.example.com\""), "{cert}");
}

#[test]
fn the_alert_rules_pass_promtool() {
    let dir = scaffolded();
    let rule = &docs(&dir.path().join("infrastructure/monitoring/alert-rules.yaml"))[0];
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    let rules_file = dir.path().join("rules.yaml");
    std::fs::write(&rules_file, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .expect("running promtool");
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let names: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in [
        "PreviewVolumeAlmostFull",
        "PreviewMemoryNearLimit",
        "PreviewPodRestarting",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}

#[test]
fn the_dashboard_parses_and_uses_only_existing_data_sources() {
    let dir = scaffolded();
    let monitoring = dir.path().join("infrastructure/monitoring");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring.join("preview-dashboard.json")).unwrap()).unwrap();
    let datasources = &docs(&monitoring.join("loki-datasource.yaml"))[0]["datasources"];
    // kube-prometheus-stack provisions Prometheus with uid "prometheus"; Loki is ours.
    let mut known = vec!["prometheus".to_string()];
    known.extend(
        datasources
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|d| d["uid"].as_str().map(String::from)),
    );
    let mut uses = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(uid) = map
                    .get("datasource")
                    .and_then(|d| d.get("uid"))
                    .and_then(|u| u.as_str())
                {
                    out.push(uid.to_string());
                }
                map.values().for_each(|x| collect(x, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut uses);
    assert!(!uses.is_empty());
    for uid in &uses {
        assert!(known.contains(uid), "the dashboard uses unknown data source {uid}");
    }
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in ["CPU", "Memory", "Network", "restarts", "Logs"] {
        assert!(titles.iter().any(|t| t.contains(want)), "no {want} panel in {titles:?}");
    }
    assert_eq!(dashboard["templating"]["list"][0]["name"].as_str(), Some("namespace"));
}

#[test]
fn the_observability_stack_stays_under_6_gib_of_memory_limits() {
    let dir = scaffolded();
    fn limits(v: &serde_yaml::Value, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(map) => {
                for (k, v) in map {
                    if k.as_str() == Some("limits")
                        && let Some(m) = v.get("memory").and_then(|m| m.as_str())
                    {
                        out.push(m.to_string());
                    }
                    limits(v, out);
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter().for_each(|x| limits(x, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for file in ["kube-prometheus-stack.yaml", "loki.yaml", "alloy.yaml"] {
        for doc in docs(&dir.path().join("infrastructure/monitoring").join(file)) {
            limits(&doc["spec"]["values"], &mut found);
        }
    }
    assert!(found.len() >= 8, "{found:?}");
    let total: u64 = found
        .iter()
        .map(|q| Bytes::parse(q).unwrap_or_else(|| panic!("{q}")).0)
        .sum();
    let budget = 6u64 << 30;
    println!(
        "observability memory limits: {found:?} = {} MiB of {} MiB",
        total >> 20,
        budget >> 20
    );
    assert!(total < budget, "{} MiB of limits", total >> 20);
}

#[test]
fn init_twice_changes_nothing_and_keeps_edited_files_unless_forced() {
    let dir = scaffolded();
    let again = init(dir.path(), &[]);
    assert!(
        text(&again.stdout).contains(": 0 files written"),
        "{}",
        text(&again.stdout)
    );
    let edited = dir.path().join("infrastructure/cloudnative-pg.yaml");
    std::fs::write(&edited, "# ours\n").unwrap();
    let kept = init(dir.path(), &[]);
    assert!(kept.status.success());
    assert!(
        text(&kept.stderr).contains("kept") && text(&kept.stderr).contains("cloudnative-pg.yaml"),
        "{}",
        text(&kept.stderr)
    );
    assert_eq!(std::fs::read_to_string(&edited).unwrap(), "# ours\n");
    let forced = init(dir.path(), &["--force"]);
    assert!(
        text(&forced.stdout).contains(": 1 files written"),
        "{}",
        text(&forced.stdout)
    );
    assert!(std::fs::read_to_string(&edited).unwrap().contains("kind: HelmRelease"));
}

#[test]
fn the_scripts_pass_shellcheck_and_run_dry() {
    let dir = scaffolded();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(dir.path().join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    scripts.sort();
    assert_eq!(scripts.len(), 3);
    let mut all = scripts.clone();
    for own in ["scripts/test", "scripts/bench", "scripts/update-golden", ".ci/run"] {
        all.push(repo_root().join(own));
    }
    for script in &all {
        let check = Command::new("shellcheck")
            .arg("-x")
            .arg(script)
            .current_dir(repo_root())
            .output()
            .expect("running shellcheck");
        assert!(check.status.success(), "{}: {}", script.display(), text(&check.stdout));
        let syntax = Command::new("bash").arg("-n").arg(script).output().unwrap();
        assert!(
            syntax.status.success(),
            "{}: {}",
            script.display(),
            text(&syntax.stderr)
        );
    }
    let dry = |name: &str, args: &[&str]| {
        let out = Command::new("bash")
            .arg(dir.path().join("scripts").join(name))
            .arg("--dry-run")
            .args(args)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let k3s = dry("bootstrap-k3s", &[]);
    assert!(
        k3s.contains("secrets-encryption: true") && k3s.contains("+ systemctl enable --now k3s"),
        "{k3s}"
    );
    let flux = dry(
        "bootstrap-flux",
        &["--owner", "acme", "--repository", "shop-environments"],
    );
    assert!(flux.contains("--path=clusters/preview"), "{flux}");
    let age = dry("setup-age", &[]);
    assert!(age.contains("create secret generic sops-age"), "{age}");
}

#[test]
fn the_argocd_scaffold_installs_the_same_pinned_charts_as_applications() {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_root().join("examples/prenv-argocd.toml");
    let out = prenv(&["--config", s(&config), "init", "--repo", s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.path().join("clusters").exists(), "no Flux wiring for Argo CD");
    let objects = kustomize(&dir.path().join("infrastructure"));
    assert!(
        !objects
            .iter()
            .any(|o| matches!(str_at(o, &["kind"]), Some("HelmRelease" | "HelmRepository")))
    );
    let apps: Vec<&serde_yaml::Value> = objects
        .iter()
        .filter(|o| str_at(o, &["kind"]) == Some("Application"))
        .collect();
    let names: Vec<&str> = apps.iter().filter_map(|a| str_at(a, &["metadata", "name"])).collect();
    for want in [
        "cert-manager",
        "kube-prometheus-stack",
        "loki",
        "alloy",
        "cloudnative-pg",
        "arc",
        "preview-runners",
        "sealed-secrets",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    for app in &apps {
        assert_eq!(str_at(app, &["metadata", "namespace"]), Some("argocd"));
        let version = str_at(app, &["spec", "source", "targetRevision"]).unwrap();
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit() || c == 'v'),
            "unpinned {version}"
        );
    }
    let kps = apps
        .iter()
        .find(|a| str_at(a, &["metadata", "name"]) == Some("kube-prometheus-stack"))
        .unwrap();
    assert_eq!(
        str_at(
            kps,
            &[
                "spec",
                "source",
                "helm",
                "valuesObject",
                "prometheus",
                "prometheusSpec",
                "retention"
            ]
        ),
        Some("7d")
    );
    let wiring = kustomize(&dir.path().join("argocd"));
    let kinds: Vec<&str> = wiring.iter().filter_map(|o| str_at(o, &["kind"])).collect();
    assert_eq!(kinds, ["Application", "ApplicationSet"]);
}
