//! `prenv init`: the platform comes up on a fresh cluster by construction, and a test says why.
//!
//! - Apply order, both engines, proved statically: every custom resource of the scaffold (the
//!   rendered environments included) has its CRD from k3s, from Flux or Argo CD itself, or from a
//!   chart released in a stage its own stage depends on (Flux `dependsOn`, transitively) or that
//!   syncs in an earlier wave (Argo CD, with `SkipDryRunOnMissingResource`); and the environments
//!   wait for nothing optional.
//! - The observability stack: every container the pinned charts run has a memory limit and they
//!   add up to less than 6 GiB; the dashboard queries only labels kube-state-metrics exports; the
//!   data sources point at Services the charts create; the alert rules pass promtool; alerts go
//!   to the configured receivers (amtool checks the configuration), credentials from a Secret.
//! - The runners' identity writes only in its deploy namespaces and has no escalation path.
//! - The charts render without cluster access (no Helm `lookup` is reached).
//! - `init` refuses an incomplete config, writes nothing twice and keeps edits; the scripts pass
//!   shellcheck, run with --dry-run, never print a secret and create-or-update (any order).
//!
//! The charts are not rendered here (no Helm, no chart repository): what each pinned chart does is
//! a table below, read from the chart's source at its pinned version and cited row by row.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use prenv::model::quantity::Bytes;
use serde_yaml::Value;

fn init_with(config: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--config", s(config), "init", "--repo", s(dir)];
    args.extend_from_slice(extra);
    prenv(&args)
}

fn init(dir: &Path, extra: &[&str]) -> std::process::Output {
    init_with(&repo_root().join("examples/prenv.toml"), dir, extra)
}

/// `prenv render` of the example PRs (common's `render_example`), then `prenv init` of the same
/// config into that directory: the repository as it is once the first previews exist. (init keeps
/// the rendered `flux/environments/kustomization.yaml`, which differs from its empty one.)
fn scaffolded_with_previews(config: &str) -> tempfile::TempDir {
    let dir = render_example(config);
    let out = init_with(&repo_root().join("examples").join(config), dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

/// The files of a scaffold's `scripts/`, sorted.
fn scripts_in(dir: &Path) -> Vec<String> {
    let mut scripts: Vec<String> = std::fs::read_dir(dir.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    scripts.sort();
    scripts
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

fn kind(o: &Value) -> &str {
    str_at(o, &["kind"]).unwrap_or_default()
}

fn name(o: &Value) -> &str {
    str_at(o, &["metadata", "name"]).unwrap_or_default()
}

/// The API group of an object, `""` for the core group.
fn group(o: &Value) -> &str {
    str_at(o, &["apiVersion"])
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(g, _)| g)
}

/// Built into Kubernetes: the core group, `*.k8s.io` and the unsuffixed groups.
fn is_built_in(group: &str) -> bool {
    group.is_empty() || group.ends_with(".k8s.io") || matches!(group, "apps" | "batch" | "policy" | "autoscaling")
}

/// The value at a dotted path (`a.b.c`) of Helm values.
fn at<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, key| v.get(key))
}

// ---------------------------------------------------------------------------------------------
// What the pinned charts do, from their source.
// ---------------------------------------------------------------------------------------------

/// How a chart's CRDs reach the cluster.
enum CrdsBy {
    /// A `crds/` directory: Helm installs it on install; helm-controller's `install.crds` /
    /// `upgrade.crds` decide (default Create on install, Skip on upgrade), Argo CD's `helm template`
    /// includes it.
    CrdsDir,
    /// Templates guarded by this value, which must be true.
    Value(&'static str),
}

/// The API groups whose CRDs a pinned chart installs.
const CHART_CRDS: &[(&str, &str, CrdsBy, &str)] = &[
    (
        "cert-manager",
        "cert-manager.io",
        CrdsBy::Value("crds.enabled"),
        "cert-manager/cert-manager v1.16.2 deploy/crds/crd-*.yaml, templated `if or .Values.crds.enabled .Values.installCRDs`",
    ),
    (
        "cloudnative-pg",
        "postgresql.cnpg.io",
        CrdsBy::Value("crds.create"),
        "cloudnative-pg/charts cloudnative-pg-v0.23.0 charts/cloudnative-pg/templates/crds/crds.yaml, `if .Values.crds.create`",
    ),
    (
        "kube-prometheus-stack",
        "monitoring.coreos.com",
        CrdsBy::CrdsDir,
        "prometheus-community/helm-charts kube-prometheus-stack-66.3.0 charts/kube-prometheus-stack/charts/crds/crds/",
    ),
    (
        "gha-runner-scale-set-controller",
        "actions.github.com",
        CrdsBy::CrdsDir,
        "actions/actions-runner-controller gha-runner-scale-set-0.10.1 charts/gha-runner-scale-set-controller/crds/",
    ),
    (
        "sealed-secrets",
        "bitnami.com",
        CrdsBy::CrdsDir,
        "bitnami-labs/sealed-secrets helm-v2.16.2 helm/sealed-secrets/crds/",
    ),
];

/// Charts that render custom resources of another chart's CRDs (these objects are inside the
/// release, so the order is the release's: `dependsOn` or a later wave).
const CHART_CREATES: &[(&str, &str, &str)] = &[(
    "gha-runner-scale-set",
    "actions.github.com",
    "gha-runner-scale-set-0.10.1 templates/autoscalingrunnerset.yaml (an AutoscalingRunnerSet)",
)];

/// Groups whose CRDs exist before anything the scaffold applies: k3s deploys its helm-controller's
/// CRDs and Traefik's (the `traefik-crd` chart) at start; `flux bootstrap` installs Flux's CRDs
/// (gotk-components.yaml) before the flux-system Kustomization exists; Argo CD's install manifest
/// holds its CRDs.
fn crd_before_any_stage(group: &str, engine: &str) -> bool {
    matches!(
        group,
        "helm.cattle.io" | "k3s.cattle.io" | "traefik.io" | "traefik.containo.us"
    ) || (engine == "flux" && group.ends_with(".toolkit.fluxcd.io"))
        || (engine == "argocd" && group == "argoproj.io")
}

/// The CRD groups a HelmRelease (or the values of an Argo CD Application) installs, checking that
/// the chart's CRD switch is on.
fn crds_of(chart: &str, values: &Value, install_crds: Option<&str>) -> Vec<&'static str> {
    let mut groups = Vec::new();
    for (c, g, by, source) in CHART_CRDS {
        if *c != chart {
            continue;
        }
        match by {
            CrdsBy::Value(path) => assert_eq!(
                at(values, path).and_then(Value::as_bool),
                Some(true),
                "{chart}: `{path}` must be true for the chart to install {g} ({source})"
            ),
            CrdsBy::CrdsDir => assert!(
                install_crds != Some("Skip"),
                "{chart}: install.crds Skip leaves out {g} ({source})"
            ),
        }
        groups.push(*g);
    }
    groups
}

// ---------------------------------------------------------------------------------------------
// Apply order: Flux
// ---------------------------------------------------------------------------------------------

/// A Flux Kustomization of the scaffold: what it applies and what it waits for.
struct FluxStage {
    name: String,
    deps: Vec<String>,
    wait: bool,
    objects: Vec<Value>,
}

/// What Flux applies from `clusters/preview`, which has no kustomization.yaml: every manifest in it
/// and every subdirectory with a kustomization.yaml (fluxcd/pkg kustomize `Generator`
/// `findOrGenerateKustomization` / `scanManifests`). `flux-system/` is what bootstrap commits; a
/// stand-in with its sync objects is written for the build (gotk-components.yaml is Flux's own
/// install: Namespace, CRDs, controllers).
fn flux_cluster_objects(root: &Path) -> Vec<Value> {
    let cluster = root.join("clusters/preview");
    let generated = cluster.join("kustomization.yaml");
    assert!(
        !generated.exists(),
        "clusters/preview/kustomization.yaml would hide flux-system/ from Flux"
    );
    let bootstrap = cluster.join("flux-system");
    std::fs::create_dir_all(&bootstrap).unwrap();
    std::fs::write(
        bootstrap.join("gotk-components.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: flux-system}\n",
    )
    .unwrap();
    std::fs::write(
        bootstrap.join("gotk-sync.yaml"),
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: flux-system, namespace: flux-system}\n\
         spec: {interval: 1m0s, ref: {branch: main}, secretRef: {name: flux-system}, url: ssh://git@github.com/acme/shop-environments.git}\n---\n\
         apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: flux-system, namespace: flux-system}\n\
         spec: {interval: 10m0s, path: ./clusters/preview, prune: true, sourceRef: {kind: GitRepository, name: flux-system}}\n",
    )
    .unwrap();
    std::fs::write(
        bootstrap.join("kustomization.yaml"),
        "resources: [gotk-components.yaml, gotk-sync.yaml]\n",
    )
    .unwrap();
    let mut resources: Vec<String> = std::fs::read_dir(&cluster)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || cluster.join(n).join("kustomization.yaml").exists())
        .collect();
    resources.sort();
    std::fs::write(&generated, format!("resources: {resources:?}\n")).unwrap();
    let objects = kustomize(&cluster);
    std::fs::remove_file(&generated).unwrap();
    std::fs::remove_dir_all(&bootstrap).unwrap();
    objects
}

/// Every Flux Kustomization of the cluster, with the objects of its path. A Kustomization that
/// another one applies (the stages by flux-system, the environments' by the root) exists only
/// once that one has applied, so it also comes after everything its creator waits for.
fn flux_stages(root: &Path) -> Vec<FluxStage> {
    let cluster = flux_cluster_objects(root);
    let is_kustomization =
        |o: &Value| kind(o) == "Kustomization" && group(o) == "kustomize.toolkit.fluxcd.io" && name(o) != "flux-system";
    let mut queue: Vec<(Value, Vec<String>)> = cluster
        .iter()
        .filter(|o| is_kustomization(o))
        .map(|o| (o.clone(), vec!["flux-system".to_string()]))
        .collect();
    let mut stages = vec![FluxStage {
        name: "flux-system".into(),
        deps: vec![],
        wait: false,
        objects: cluster,
    }];
    while let Some((k, created_by)) = queue.pop() {
        let path = str_at(&k, &["spec", "path"])
            .unwrap()
            .trim_start_matches("./")
            .to_string();
        let objects = kustomize(&root.join(&path));
        let mut deps: Vec<String> = k["spec"]["dependsOn"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|d| str_at(d, &["name"]).map(String::from))
            .collect();
        deps.extend(created_by);
        for child in objects.iter().filter(|o| is_kustomization(o)) {
            let mut by = deps.clone();
            by.push(name(&k).to_string());
            queue.push((child.clone(), by));
        }
        stages.push(FluxStage {
            name: name(&k).to_string(),
            deps,
            wait: k["spec"]["wait"].as_bool() == Some(true),
            objects,
        });
    }
    stages
}

/// The stages `name` depends on, transitively.
fn closure<'a>(name: &str, deps: &'a BTreeMap<String, Vec<String>>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = deps
        .get(name)
        .map(|d| d.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(d) = todo.pop() {
        let Some((key, more)) = deps.get_key_value(d) else {
            panic!("{name} depends on {d}, which is no Kustomization of the scaffold");
        };
        if seen.insert(key.as_str()) {
            todo.extend(more.iter().map(String::as_str));
        }
    }
    seen
}

/// The CRD groups each HelmRelease of a stage installs, by release name.
fn flux_release_crds(stage: &FluxStage) -> BTreeMap<String, Vec<&'static str>> {
    stage
        .objects
        .iter()
        .filter(|o| kind(o) == "HelmRelease")
        .map(|r| {
            let chart = str_at(r, &["spec", "chart", "spec", "chart"]).unwrap();
            let groups = crds_of(chart, &r["spec"]["values"], str_at(r, &["spec", "install", "crds"]));
            (name(r).to_string(), groups)
        })
        .collect()
}

/// A chart that renders custom resources of another chart's CRDs (`CHART_CREATES`) waits for the
/// release of that chart (`dependsOn`), or that release is in a stage before this one.
fn assert_releases_wait_for_their_crds(
    stage: &FluxStage,
    before: &BTreeSet<&str>,
    provides: &BTreeMap<&str, BTreeMap<String, Vec<&str>>>,
) {
    for r in stage.objects.iter().filter(|o| kind(o) == "HelmRelease") {
        let chart = str_at(r, &["spec", "chart", "spec", "chart"]).unwrap();
        let on: Vec<&str> = r["spec"]["dependsOn"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|d| str_at(d, &["name"]))
            .collect();
        for (_, needed, source) in CHART_CREATES.iter().filter(|(c, _, _)| *c == chart) {
            let same_stage = on.iter().any(|d| {
                provides[stage.name.as_str()]
                    .get(*d)
                    .is_some_and(|g| g.contains(needed))
            });
            let earlier = before
                .iter()
                .any(|b| provides[b].values().flatten().any(|g| g == needed));
            assert!(
                same_stage || earlier,
                "HelmRelease {} ({source}) does not wait for the release of {needed}",
                name(r)
            );
        }
    }
}

#[test]
fn flux_applies_every_custom_resource_after_the_stage_whose_chart_installs_its_crd() {
    let dir = scaffolded_with_previews("prenv.toml");
    let stages = flux_stages(dir.path());
    let deps: BTreeMap<String, Vec<String>> = stages.iter().map(|s| (s.name.clone(), s.deps.clone())).collect();
    let provides: BTreeMap<&str, BTreeMap<String, Vec<&str>>> =
        stages.iter().map(|s| (s.name.as_str(), flux_release_crds(s))).collect();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for stage in &stages {
        let before = closure(&stage.name, &deps);
        for o in stage.objects.iter().filter(|o| !is_built_in(group(o))) {
            checked += 1;
            if crd_before_any_stage(group(o), "flux") {
                continue;
            }
            let here = provides[stage.name.as_str()].values().flatten().any(|g| *g == group(o));
            let earlier = before
                .iter()
                .any(|b| provides[b].values().flatten().any(|g| *g == group(o)));
            if here || !earlier {
                wrong.push(format!(
                    "{} {} in {}: its CRD ({}) is {}",
                    kind(o),
                    name(o),
                    stage.name,
                    group(o),
                    if here {
                        "installed by the same stage"
                    } else {
                        "installed by no stage this one depends on"
                    }
                ));
            }
        }
        assert_releases_wait_for_their_crds(stage, &before, &provides);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let names: BTreeSet<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "flux-system",
        "infra-controllers",
        "infra-certificates",
        "infra-monitoring-rules",
        "infra-prenv",
        "infra-prenv-monitoring",
        "prenv-environments",
        "shop-pr-101",
    ] {
        assert!(names.contains(want), "no Kustomization {want} in {names:?}");
    }
    let monitors = stages
        .iter()
        .flat_map(|s| s.objects.iter().map(move |o| (s.name.as_str(), o)))
        .filter(|(_, o)| kind(o) == "ServiceMonitor")
        .map(|(stage, o)| format!("{stage}/{}", name(o)))
        .collect::<Vec<_>>();
    assert_eq!(
        monitors,
        [
            "infra-prenv-monitoring/prenv-serve",
            "infra-prenv-monitoring/prenv-watcher"
        ],
        "the ServiceMonitors are checked, after kube-prometheus-stack"
    );
    println!(
        "Flux: {checked} custom resources in {} Kustomizations checked for apply order",
        stages.len()
    );
    assert!(checked >= 25, "only {checked} custom resources checked");
}

/// Namespaces that exist before Flux applies any stage: Kubernetes' own, and Flux's (bootstrap).
const NAMESPACES_BEFORE_FLUX: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "flux-system",
];

#[test]
fn flux_applies_every_object_after_its_namespace_exists() {
    // kustomize-controller applies a stage's Namespaces first and dry-runs the rest (fluxcd/pkg
    // `ssa` `ResourceManager.ApplyAllStaged`): an object in a namespace that neither this stage
    // nor one it depends on creates fails on a fresh cluster, every time.
    let dir = scaffolded_with_previews("prenv.toml");
    let stages = flux_stages(dir.path());
    let deps: BTreeMap<String, Vec<String>> = stages.iter().map(|s| (s.name.clone(), s.deps.clone())).collect();
    let created = |stage: &FluxStage| -> Vec<String> {
        stage
            .objects
            .iter()
            .filter(|o| kind(o) == "Namespace")
            .map(|o| name(o).to_string())
            .collect()
    };
    let mut wrong = Vec::new();
    let mut checked = 0;
    for stage in &stages {
        let mut known: Vec<String> = created(stage);
        for before in closure(&stage.name, &deps) {
            known.extend(created(stages.iter().find(|s| s.name == before).unwrap()));
        }
        for o in &stage.objects {
            let Some(ns) = str_at(o, &["metadata", "namespace"]) else {
                continue;
            };
            checked += 1;
            if !NAMESPACES_BEFORE_FLUX.contains(&ns) && !known.iter().any(|k| k == ns) {
                wrong.push(format!(
                    "{} {} in {}: namespace {ns} is created by no stage before it",
                    kind(o),
                    name(o),
                    stage.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked >= 30, "only {checked} namespaced objects checked");
}

#[test]
fn prenv_serve_and_watch_wait_for_no_optional_platform_part() {
    // Flux: the stage of serve and watch depends on nothing; its ServiceMonitors are apart.
    let dir = scaffolded_with_previews("prenv.toml");
    let stages = flux_stages(dir.path());
    let deps: BTreeMap<String, Vec<String>> = stages.iter().map(|s| (s.name.clone(), s.deps.clone())).collect();
    assert_eq!(closure("infra-prenv", &deps), BTreeSet::from(["flux-system"]));
    let prenv = stages.iter().find(|s| s.name == "infra-prenv").unwrap();
    assert!(
        prenv.objects.iter().all(|o| is_built_in(group(o))),
        "infra-prenv holds a custom resource, which would need a chart first"
    );
    for want in ["prenv-serve", "prenv-watcher"] {
        assert!(prenv.objects.iter().any(|o| kind(o) == "Deployment" && name(o) == want));
    }
    let monitoring = closure("infra-prenv-monitoring", &deps);
    assert!(monitoring.contains("infra-monitoring"), "{monitoring:?}");
    // Argo CD: serve and watch sync no later than the monitoring stack, and after the previews.
    let dir = scaffolded_with_previews("prenv-argocd.toml");
    let stages = argo_stages(dir.path());
    let wave_of = |n: &str| stages.iter().find(|s| s.name == n).unwrap().wave;
    assert!(wave_of("infra-prenv") <= wave_of("infra-monitoring"));
    assert!(wave_of("infra-prenv") > wave_of("prenv-environments"));
    assert!(wave_of("infra-prenv-monitoring") > wave_of("infra-monitoring"));
}

#[test]
fn no_preview_environment_waits_for_an_optional_platform_part() {
    let dir = scaffolded_with_previews("prenv.toml");
    let stages = flux_stages(dir.path());
    let deps: BTreeMap<String, Vec<String>> = stages.iter().map(|s| (s.name.clone(), s.deps.clone())).collect();
    let env = stages
        .iter()
        .find(|s| s.name == "shop-pr-101")
        .expect("the environment's Kustomization");
    let env_groups: BTreeSet<&str> = env.objects.iter().map(group).filter(|g| !is_built_in(g)).collect();
    for waited in closure("shop-pr-101", &deps) {
        let stage = stages.iter().find(|s| s.name == waited).unwrap();
        for o in &stage.objects {
            assert!(
                !(stage.wait && group(o) == "cert-manager.io"),
                "shop-pr-101 waits for {waited}, which waits for {} {}: an unissued certificate would block every preview",
                kind(o),
                name(o)
            );
        }
        for (release, groups) in flux_release_crds(stage) {
            assert!(
                groups.iter().any(|g| env_groups.contains(g)),
                "shop-pr-101 waits for {waited}, whose release {release} installs nothing an environment uses"
            );
        }
        let releases = stage.objects.iter().filter(|o| kind(o) == "HelmRelease").count();
        assert!(
            releases == 0 || stage.wait || waited == "prenv-environments",
            "{waited} does not wait for its charts"
        );
    }
    // The root waits for what created it (flux-system) and for infra-controllers: nothing else.
    let root = stages.iter().find(|s| s.name == "prenv-environments").unwrap();
    assert_eq!(root.deps, ["infra-controllers", "flux-system"]);
}

// ---------------------------------------------------------------------------------------------
// Apply order: Argo CD
// ---------------------------------------------------------------------------------------------

fn wave(o: &Value) -> i64 {
    str_at(o, &["metadata", "annotations", "argocd.argoproj.io/sync-wave"]).map_or(0, |w| w.parse().unwrap())
}

/// A stage Application of the root, with the objects of its path and the CRD groups its chart
/// Applications install.
struct ArgoStage {
    name: String,
    wave: i64,
    objects: Vec<Value>,
    provides: BTreeSet<&'static str>,
}

fn argo_stages(root: &Path) -> Vec<ArgoStage> {
    let cluster = root.join("clusters/preview");
    let root_app = &docs(&cluster.join("root.yaml"))[0];
    assert_eq!(str_at(root_app, &["spec", "source", "path"]), Some("clusters/preview"));
    let mut apps = Vec::new();
    for file in std::fs::read_dir(&cluster).unwrap() {
        apps.extend(docs(&file.unwrap().path()));
    }
    apps.into_iter()
        .filter(|a| name(a) != "prenv-platform")
        .map(|a| {
            let path = str_at(&a, &["spec", "source", "path"]).unwrap();
            let objects = kustomize(&root.join(path));
            let provides = objects
                .iter()
                .filter(|o| kind(o) == "Application" && str_at(o, &["spec", "source", "chart"]).is_some())
                .flat_map(|app| {
                    crds_of(
                        str_at(app, &["spec", "source", "chart"]).unwrap(),
                        &app["spec"]["source"]["helm"]["valuesObject"],
                        None,
                    )
                })
                .collect();
            ArgoStage {
                name: name(&a).to_string(),
                wave: wave(&a),
                objects,
                provides,
            }
        })
        .collect()
}

/// The objects of every rendered environment (each an Application of the ApplicationSet's git
/// files generator over environments/*/prenv.json, synced once the ApplicationSet exists).
fn environment_objects(root: &Path) -> Vec<Value> {
    let mut objects = Vec::new();
    for meta in files(&root.join("environments"), "prenv.json") {
        objects.extend(kustomize(meta.parent().unwrap()));
    }
    assert!(
        objects.iter().any(|o| kind(o) == "Cluster"),
        "no database Cluster rendered"
    );
    objects
}

/// Why the custom resource `o`, synced in wave `w` (by stage `in_stage`, or by an environment's
/// Application), could fail on a fresh cluster; empty when its CRD is there in time.
fn argo_order_problems(o: &Value, w: i64, in_stage: Option<&ArgoStage>, stages: &[ArgoStage]) -> Vec<String> {
    let what = format!(
        "{} {} in {} (wave {w})",
        kind(o),
        name(o),
        in_stage.map_or("an environment", |s| s.name.as_str())
    );
    let mut problems = Vec::new();
    if crd_before_any_stage(group(o), "argocd") {
        return problems;
    }
    if in_stage.is_some_and(|s| s.provides.contains(group(o))) {
        problems.push(format!("{what}: its CRD's chart is in the same stage"));
    }
    if !stages.iter().any(|s| s.wave < w && s.provides.contains(group(o))) {
        problems.push(format!("{what}: no earlier wave installs {}", group(o)));
    }
    let skip = str_at(o, &["metadata", "annotations", "argocd.argoproj.io/sync-options"]).unwrap_or_default();
    if in_stage.is_some() && !skip.contains("SkipDryRunOnMissingResource=true") {
        problems.push(format!("{what}: no SkipDryRunOnMissingResource=true"));
    }
    problems
}

#[test]
fn argocd_syncs_every_custom_resource_in_a_wave_after_the_chart_of_its_crd() {
    let dir = scaffolded_with_previews("prenv-argocd.toml");
    let stages = argo_stages(dir.path());
    let env_wave = stages.iter().find(|s| s.name == "prenv-environments").unwrap().wave;
    let in_stages = stages
        .iter()
        .flat_map(|s| s.objects.iter().map(move |o| (o, s.wave, Some(s))));
    let env_objects = environment_objects(dir.path());
    let in_envs = env_objects.iter().map(|o| (o, env_wave + 1, None));
    let custom: Vec<_> = in_stages
        .chain(in_envs)
        .filter(|(o, _, _)| !is_built_in(group(o)))
        .collect();
    let wrong: Vec<String> = custom
        .iter()
        .flat_map(|(o, w, s)| argo_order_problems(o, *w, *s, &stages))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!("Argo CD: {} custom resources checked for sync order", custom.len());
    assert!(custom.len() >= 15, "only {} custom resources checked", custom.len());
    // Inside a stage, a chart that renders another chart's CRs syncs in a later wave than it.
    for stage in &stages {
        for app in stage.objects.iter().filter(|o| kind(o) == "Application") {
            let chart = str_at(app, &["spec", "source", "chart"]).unwrap_or_default();
            for (_, needed, source) in CHART_CREATES.iter().filter(|(c, _, _)| *c == chart) {
                let provider = stage.objects.iter().find(|p| {
                    let chart_of_p = str_at(p, &["spec", "source", "chart"]);
                    kind(p) == "Application"
                        && CHART_CRDS
                            .iter()
                            .any(|(c, g, _, _)| g == needed && Some(*c) == chart_of_p)
                });
                assert!(
                    provider.is_some_and(|p| wave(p) < wave(app)),
                    "{} ({source}) is not after the chart of {needed}",
                    name(app)
                );
            }
        }
    }
}

#[test]
fn argocd_syncs_nothing_optional_before_the_environments() {
    let dir = scaffolded_with_previews("prenv-argocd.toml");
    let stages = argo_stages(dir.path());
    let env_wave = stages.iter().find(|s| s.name == "prenv-environments").unwrap().wave;
    let env_objects = environment_objects(dir.path());
    let before: Vec<&ArgoStage> = stages.iter().filter(|s| s.wave < env_wave).collect();
    assert!(!before.is_empty());
    for stage in before {
        assert!(
            stage
                .provides
                .iter()
                .any(|g| env_objects.iter().any(|o| group(o) == *g)),
            "{} (wave {}) syncs before the environments (wave {env_wave}) but installs nothing they use",
            stage.name,
            stage.wave
        );
    }
}

#[test]
fn argocd_restores_the_application_health_check_the_waves_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_with(&repo_root().join("examples/prenv-argocd.toml"), dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = std::fs::read_to_string(dir.path().join("scripts/bootstrap-argocd")).unwrap();
    // argo-cd v2.13.9 docs/operator-manual/health.md, "Argo CD App".
    assert!(script.contains("resource.customizations.health.argoproj.io_Application"));
    assert!(script.contains("hs.status = obj.status.health.status"));
}

// ---------------------------------------------------------------------------------------------
// The observability stack
// ---------------------------------------------------------------------------------------------

/// Every container the observability charts run at their pinned versions with the scaffold's
/// values, and where its memory limit is set: (release, container, values path of its
/// `resources`, source).
const OBSERVABILITY_CONTAINERS: &[(&str, &str, &str, &str)] = &[
    (
        "kube-prometheus-stack",
        "prometheus",
        "prometheus.prometheusSpec.resources",
        "templates/prometheus/prometheus.yaml",
    ),
    (
        "kube-prometheus-stack",
        "config-reloader (Prometheus)",
        "prometheusOperator.prometheusConfigReloader.resources",
        "templates/prometheus-operator/deployment.yaml --config-reloader-memory-limit",
    ),
    (
        "kube-prometheus-stack",
        "init-config-reloader (Prometheus)",
        "prometheusOperator.prometheusConfigReloader.resources",
        "prometheus-operator v0.78.2 pkg/prometheus/common.go",
    ),
    (
        "kube-prometheus-stack",
        "alertmanager",
        "alertmanager.alertmanagerSpec.resources",
        "templates/alertmanager/alertmanager.yaml",
    ),
    (
        "kube-prometheus-stack",
        "config-reloader (Alertmanager)",
        "prometheusOperator.prometheusConfigReloader.resources",
        "prometheus-operator v0.78.2 pkg/alertmanager/statefulset.go",
    ),
    (
        "kube-prometheus-stack",
        "init-config-reloader (Alertmanager)",
        "prometheusOperator.prometheusConfigReloader.resources",
        "prometheus-operator v0.78.2 pkg/alertmanager/statefulset.go",
    ),
    (
        "kube-prometheus-stack",
        "prometheus-operator",
        "prometheusOperator.resources",
        "templates/prometheus-operator/deployment.yaml",
    ),
    (
        "kube-prometheus-stack",
        "admission create job",
        "prometheusOperator.admissionWebhooks.patch.resources",
        "templates/prometheus-operator/admission-webhooks/job-patch/job-createSecret.yaml",
    ),
    (
        "kube-prometheus-stack",
        "admission patch job",
        "prometheusOperator.admissionWebhooks.patch.resources",
        "templates/prometheus-operator/admission-webhooks/job-patch/job-patchWebhook.yaml",
    ),
    (
        "kube-prometheus-stack",
        "kube-state-metrics",
        "kube-state-metrics.resources",
        "kube-state-metrics-5.27.0 templates/deployment.yaml",
    ),
    (
        "kube-prometheus-stack",
        "node-exporter (one node)",
        "prometheus-node-exporter.resources",
        "prometheus-node-exporter-4.42.0 templates/daemonset.yaml",
    ),
    (
        "kube-prometheus-stack",
        "grafana",
        "grafana.resources",
        "grafana-8.6.3 templates/_pod.tpl",
    ),
    (
        "kube-prometheus-stack",
        "grafana-sc-dashboard",
        "grafana.sidecar.resources",
        "grafana-8.6.3 templates/_pod.tpl, sidecar.dashboards.enabled",
    ),
    (
        "kube-prometheus-stack",
        "grafana-sc-datasources",
        "grafana.sidecar.resources",
        "grafana-8.6.3 templates/_pod.tpl, sidecar.datasources.enabled",
    ),
    (
        "loki",
        "loki",
        "singleBinary.resources",
        "helm-loki-6.24.0 templates/single-binary/statefulset.yaml",
    ),
    (
        "loki",
        "loki-sc-rules",
        "sidecar.resources",
        "helm-loki-6.24.0 templates/single-binary/statefulset.yaml, sidecar.rules.enabled (default true)",
    ),
    (
        "loki",
        "nginx (gateway)",
        "gateway.resources",
        "helm-loki-6.24.0 templates/gateway/deployment-gateway-nginx.yaml",
    ),
    (
        "alloy",
        "alloy (one node)",
        "alloy.resources",
        "alloy helm-chart/0.10.1 templates/containers/_agent.yaml",
    ),
    (
        "alloy",
        "config-reloader (one node)",
        "configReloader.resources",
        "alloy helm-chart/0.10.1 templates/containers/_watch.yaml",
    ),
];

/// Values that keep the other containers of those charts from running, and the chart default
/// that a missing value falls back to: (release, values path, required value or None for
/// "absent or false", why).
const OBSERVABILITY_OFF: &[(&str, &str, Option<bool>, &str)] = &[
    (
        "loki",
        "lokiCanary.enabled",
        Some(false),
        "the loki-canary DaemonSet (default true)",
    ),
    (
        "loki",
        "test.enabled",
        Some(false),
        "the Helm test pod, which the chart refuses without the canary",
    ),
    (
        "loki",
        "chunksCache.enabled",
        Some(false),
        "the memcached chunks cache (default true)",
    ),
    (
        "loki",
        "resultsCache.enabled",
        Some(false),
        "the memcached results cache (default true)",
    ),
    ("loki", "minio.enabled", None, "MinIO (default false)"),
    (
        "kube-prometheus-stack",
        "grafana.persistence.enabled",
        None,
        "Grafana's init-chown-data (default false)",
    ),
    (
        "kube-prometheus-stack",
        "grafana.sidecar.alerts.enabled",
        None,
        "grafana-sc-alerts (default false)",
    ),
    (
        "kube-prometheus-stack",
        "grafana.sidecar.notifiers.enabled",
        None,
        "grafana-sc-notifiers (default false)",
    ),
    (
        "kube-prometheus-stack",
        "grafana.sidecar.plugins.enabled",
        None,
        "grafana-sc-plugins (default false)",
    ),
    (
        "kube-prometheus-stack",
        "grafana.imageRenderer.enabled",
        None,
        "the image renderer (default false)",
    ),
    (
        "kube-prometheus-stack",
        "kube-state-metrics.kubeRBACProxy.enabled",
        None,
        "kube-state-metrics' kube-rbac-proxy (default false)",
    ),
    (
        "kube-prometheus-stack",
        "prometheus-node-exporter.kubeRBACProxy.enabled",
        None,
        "node-exporter's kube-rbac-proxy (default false)",
    ),
    (
        "kube-prometheus-stack",
        "prometheusOperator.admissionWebhooks.deployment.enabled",
        None,
        "a separate webhook Deployment (default false)",
    ),
];

fn monitoring_values(dir: &Path) -> BTreeMap<String, Value> {
    let mut values = BTreeMap::new();
    for file in ["kube-prometheus-stack.yaml", "loki.yaml", "alloy.yaml"] {
        for doc in docs(&dir.join("infrastructure/monitoring").join(file)) {
            if kind(&doc) == "HelmRelease" {
                values.insert(name(&doc).to_string(), doc["spec"]["values"].clone());
            }
        }
    }
    values
}

#[test]
fn every_container_of_the_observability_stack_has_a_memory_limit_and_all_fit_in_6_gib() {
    let dir = scaffolded();
    let values = monitoring_values(dir.path());
    let mut total = 0u64;
    let mut lines = Vec::new();
    for (release, container, path, source) in OBSERVABILITY_CONTAINERS {
        let limit = at(&values[*release], path)
            .and_then(|r| at(r, "limits.memory"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| {
                panic!("{release}: container {container} ({source}) has no memory limit at {path}.limits.memory")
            });
        let bytes = Bytes::parse(limit).unwrap_or_else(|| panic!("{limit}")).0;
        total += bytes;
        lines.push(format!("{release}/{container}: {limit}"));
    }
    for (release, path, want, why) in OBSERVABILITY_OFF {
        let got = at(&values[*release], path).and_then(Value::as_bool);
        let off = match want {
            Some(v) => got == Some(*v),
            None => got != Some(true),
        };
        assert!(
            off,
            "{release}: {path} = {got:?} would run {why}, a container the sum does not count"
        );
    }
    // Replicas the sum counts once.
    assert_eq!(
        at(&values["loki"], "singleBinary.replicas").and_then(Value::as_u64),
        Some(1)
    );
    for scaled in ["backend", "read", "write"] {
        assert_eq!(
            at(&values["loki"], &format!("{scaled}.replicas")).and_then(Value::as_u64),
            Some(0),
            "loki {scaled}"
        );
    }
    let budget = 6u64 << 30;
    println!(
        "observability memory limits, {} containers:\n  {}\n= {} MiB of {} MiB",
        lines.len(),
        lines.join("\n  "),
        total >> 20,
        budget >> 20
    );
    assert!(total < budget, "{} MiB of limits", total >> 20);
}

#[test]
fn k3s_control_plane_monitors_that_would_fire_forever_are_off() {
    let values = monitoring_values(scaffolded().path());
    // kube-prometheus-stack-66.3.0 templates/exporters/kube-{etcd,controller-manager,scheduler,
    // proxy}/ and templates/prometheus/rules-1.14/{etcd,kubernetes-system-controller-manager,
    // kube-scheduler.rules,kubernetes-system-kube-proxy}.yaml all check `.Values.<component>.enabled`.
    for component in ["kubeEtcd", "kubeControllerManager", "kubeScheduler", "kubeProxy"] {
        assert_eq!(
            at(&values["kube-prometheus-stack"], &format!("{component}.enabled")).and_then(Value::as_bool),
            Some(false),
            "{component}"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let dir = scaffolded();
    let rule = &docs(&dir.path().join("infrastructure/monitoring-rules/alert-rules.yaml"))[0];
    assert_eq!(kind(rule), "PrometheusRule");
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

/// The Alertmanager values of kube-prometheus-stack in a scaffold (Flux HelmRelease or Argo CD
/// Application of the same release).
fn alertmanager_values(dir: &Path) -> Value {
    let release = docs(&dir.join("infrastructure/monitoring/kube-prometheus-stack.yaml"))
        .into_iter()
        .find(|o| name(o) == "kube-prometheus-stack")
        .unwrap();
    let values = match kind(&release) {
        "HelmRelease" => &release["spec"]["values"],
        _ => &release["spec"]["source"]["helm"]["valuesObject"],
    };
    values["alertmanager"].clone()
}

/// `amtool check-config` (Debian prometheus-alertmanager, scripts/tools.sh) on a configuration.
fn amtool_checks(dir: &Path, config: &Value) {
    let file = dir.join("alertmanager.yaml");
    std::fs::write(&file, serde_yaml::to_string(config).unwrap()).unwrap();
    let out = Command::new("amtool")
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("running amtool (scripts/tools.sh installs it)");
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn alerts_reach_the_configured_receivers_with_credentials_from_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_with(&repo_root().join("examples/prenv-argocd.toml"), dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("drop every alert"), "{}", text(&out.stderr));
    let am = alertmanager_values(dir.path());
    let config = &am["config"];
    amtool_checks(dir.path(), config);
    // The Secret is mounted at /etc/alertmanager/secrets/<name>/ (prometheus-operator v0.78.2
    // pkg/alertmanager/statefulset.go), and the credentials are read from its files.
    let secrets: Vec<&str> = am["alertmanagerSpec"]["secrets"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(secrets, ["alertmanager-receivers"]);
    let dir_of = "/etc/alertmanager/secrets/alertmanager-receivers/";
    assert_eq!(
        str_at(config, &["global", "slack_api_url_file"]),
        Some(format!("{dir_of}slack-webhook-url").as_str())
    );
    assert_eq!(
        str_at(config, &["global", "smtp_auth_password_file"]),
        Some(format!("{dir_of}smtp-password").as_str())
    );
    assert_eq!(str_at(config, &["global", "smtp_smarthost"]), Some("smtp.acme.dev:587"));
    assert_eq!(str_at(config, &["route", "receiver"]), Some("platform-team"));
    let team = config["receivers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "platform-team")
        .unwrap();
    assert_eq!(str_at(team, &["slack_configs", "0", "channel"]), Some("#shop-previews"));
    assert_eq!(
        str_at(team, &["email_configs", "0", "to"]),
        Some("platform-oncall@acme.dev")
    );
    let rendered = serde_yaml::to_string(config).unwrap();
    for credential in ["api_url:", "auth_password:", "hooks.slack.com"] {
        assert!(!rendered.contains(credential), "a credential in git: {rendered}");
    }
    // The script creates that Secret, with those keys, without printing a value.
    let secret = "https://hooks.slack.com/services/T0/B0/never-printed";
    let env = [("ALERT_SLACK_WEBHOOK_URL", secret), ("ALERT_SMTP_PASSWORD", secret)];
    let created = dry(dir.path(), "create-secrets", &["alerts"], &env);
    assert!(
        created.contains("-n monitoring create secret generic alertmanager-receivers"),
        "{created}"
    );
    for key in ["slack-webhook-url=", "smtp-password="] {
        assert!(created.contains(key), "{key}: {created}");
    }
    assert!(!created.contains("never-printed"), "{created}");
    assert_creates_or_updates("create-secrets", &created);
    let all = dry(dir.path(), "create-secrets", &[], &env);
    assert!(all.contains("alertmanager-receivers"), "all lacks alerts: {all}");
}

#[test]
fn without_a_receiver_init_says_alerts_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Alertmanager will drop every alert"),
        "{}",
        text(&out.stderr)
    );
    let am = alertmanager_values(dir.path());
    amtool_checks(dir.path(), &am["config"]);
    assert_eq!(str_at(&am["config"], &["route", "receiver"]), Some("null"));
    // No Secret to mount: a missing one would keep Alertmanager from starting.
    assert!(am["alertmanagerSpec"].get("secrets").is_none(), "{am:?}");
    let refused = Command::new("bash")
        .arg(dir.path().join("scripts/create-secrets"))
        .args(["--dry-run", "alerts"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("no receiver of [platform.alerts]"));
    let all = dry(dir.path(), "create-secrets", &[], &[]);
    assert!(!all.contains("alertmanager-receivers"), "{all}");
}

/// kube-state-metrics turns a Kubernetes label key into a metric label `label_<key>` with every
/// character that is not a letter, digit or `_` replaced by `_` (kube-state-metrics
/// `internal/store/utils.go` `SanitizeLabelName`).
fn ksm_label(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

/// The label keys kube-state-metrics exports per resource, from the scaffold's
/// `metricLabelsAllowlist` (`<resource>=[label,…]`, joined into --metric-labels-allowlist by
/// kube-state-metrics-5.27.0 templates/deployment.yaml), as metric label names.
fn ksm_allowlist(kps: &Value) -> BTreeMap<String, Vec<String>> {
    let entries = at(kps, "kube-state-metrics.metricLabelsAllowlist").and_then(Value::as_sequence);
    let mut allowed = BTreeMap::new();
    for entry in entries.expect("no metricLabelsAllowlist") {
        let (resource, labels) = entry.as_str().unwrap().split_once('=').unwrap();
        let labels = labels.trim_start_matches('[').trim_end_matches(']');
        allowed.insert(
            resource.to_string(),
            labels.split(',').map(|l| ksm_label(l.trim())).collect(),
        );
    }
    allowed
}

/// The labels the rendered environments' namespaces carry, as kube-state-metrics names them.
fn environment_namespace_labels(root: &Path) -> BTreeSet<(String, String)> {
    let mut labels = BTreeSet::new();
    for meta in files(&root.join("environments"), "prenv.json") {
        for ns in kustomize(meta.parent().unwrap())
            .iter()
            .filter(|o| kind(o) == "Namespace")
        {
            for (k, v) in ns["metadata"]["labels"].as_mapping().unwrap() {
                labels.insert((ksm_label(k.as_str().unwrap()), v.as_str().unwrap().to_string()));
            }
        }
    }
    labels
}

#[test]
fn the_dashboard_queries_only_labels_kube_state_metrics_exports() {
    let dir = scaffolded_with_previews("prenv.toml");
    let dashboard =
        std::fs::read_to_string(dir.path().join("infrastructure/monitoring/preview-dashboard.json")).unwrap();
    let allowed = ksm_allowlist(&monitoring_values(dir.path())["kube-prometheus-stack"]);
    let namespace_labels = environment_namespace_labels(dir.path());
    let selector = regex::Regex::new(r#"kube_(\w+?)_labels\{([^}]*)\}"#).unwrap();
    let matcher = regex::Regex::new(r#"label_(\w+)\s*=\s*\\?"([^"\\]*)\\?""#).unwrap();
    let mut queried = 0;
    for m in selector.captures_iter(&dashboard) {
        let resource = format!("{}s", &m[1]);
        for l in matcher.captures_iter(&m[2]) {
            queried += 1;
            assert!(
                allowed.get(&resource).is_some_and(|ls| ls.iter().any(|a| a == &l[1])),
                "the dashboard queries label_{} of {resource}, which metricLabelsAllowlist {allowed:?} does not export",
                &l[1]
            );
            assert!(
                namespace_labels.contains(&(l[1].to_string(), l[2].to_string())),
                "no environment namespace has label_{}={:?}: {namespace_labels:?}",
                &l[1],
                &l[2]
            );
        }
    }
    assert!(queried >= 1, "the dashboard queries no namespace label");
}

/// Every data source uid the dashboard's panels and variables use.
fn datasource_uids(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(uid) = map
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(|u| u.as_str())
            {
                out.push(uid.to_string());
            }
            map.values().for_each(|x| datasource_uids(x, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|x| datasource_uids(x, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_uses_only_the_data_sources_grafana_is_given() {
    let dir = scaffolded();
    let monitoring = dir.path().join("infrastructure/monitoring");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring.join("preview-dashboard.json")).unwrap()).unwrap();
    let mut uids = Vec::new();
    datasource_uids(&dashboard, &mut uids);
    assert!(!uids.is_empty());
    // kube-prometheus-stack provisions Prometheus with `grafana.sidecar.datasources.uid` (chart
    // default "prometheus") at http://<fullname>-prometheus.<namespace>:9090
    // (templates/grafana/configmaps-datasources.yaml); the Loki data source is the scaffold's.
    let values = monitoring_values(dir.path());
    let prometheus_uid = at(&values["kube-prometheus-stack"], "grafana.sidecar.datasources.uid")
        .and_then(Value::as_str)
        .unwrap_or("prometheus");
    let loki = &docs(&monitoring.join("loki-datasource.yaml"))[0]["datasources"][0];
    for uid in &uids {
        assert!(
            uid == prometheus_uid || Some(uid.as_str()) == str_at(loki, &["uid"]),
            "unknown data source {uid}"
        );
    }
    let panels = dashboard["panels"].as_array().unwrap();
    for want in ["CPU", "Memory", "Network", "restarts", "Logs"] {
        assert!(
            panels.iter().any(|p| p["title"].as_str().unwrap().contains(want)),
            "no {want} panel"
        );
    }
}

#[test]
fn logs_and_grafana_go_to_services_the_pinned_charts_create() {
    let dir = scaffolded();
    let monitoring = dir.path().join("infrastructure/monitoring");
    let values = monitoring_values(dir.path());
    // The loki chart's gateway Service is `<fullname>-gateway` on gateway.service.port (default 80)
    // in the release's namespace (helm-loki-6.24.0 templates/gateway/service-gateway.yaml,
    // `loki.fullname` = the release name "loki"); Alloy pushes there and Grafana reads there.
    assert_ne!(
        at(&values["loki"], "gateway.enabled").and_then(Value::as_bool),
        Some(false)
    );
    let loki = &docs(&monitoring.join("loki-datasource.yaml"))[0]["datasources"][0];
    assert_eq!(str_at(loki, &["url"]), Some("http://loki-gateway.monitoring.svc"));
    let alloy = at(&values["alloy"], "alloy.configMap.content")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        alloy.contains("url = \"http://loki-gateway.monitoring.svc/loki/api/v1/push\""),
        "{alloy}"
    );
    // Grafana's Ingress points at the grafana subchart's Service: `<release>-grafana` port 80
    // (grafana-8.6.3 `grafana.fullname`, values service.port).
    let ingress = &docs(&monitoring.join("grafana-ingress.yaml"))[0];
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(str_at(backend, &["name"]), Some("kube-prometheus-stack-grafana"));
    assert_eq!(backend["port"]["number"].as_u64(), Some(80));
    assert_eq!(
        str_at(ingress, &["spec", "rules", "0", "host"]),
        Some("grafana.preview.example.com")
    );
}

// ---------------------------------------------------------------------------------------------
// Runners, charts, config, scripts
// ---------------------------------------------------------------------------------------------

const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection", "*"];

/// Every rule the scaffold grants the runner's ServiceAccount, with the namespace it applies in
/// (`None`: cluster-wide).
fn runner_rules(objects: &[Value]) -> Vec<(Option<String>, Value)> {
    let is_runner = |b: &Value| {
        b["subjects"].as_sequence().into_iter().flatten().any(|s| {
            str_at(s, &["kind"]) == Some("ServiceAccount")
                && str_at(s, &["name"]) == Some("preview-runner")
                && str_at(s, &["namespace"]) == Some("arc-runners")
        })
    };
    let mut rules = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding") && is_runner(o))
    {
        let role_kind = str_at(binding, &["roleRef", "kind"]).unwrap();
        let role_name = str_at(binding, &["roleRef", "name"]).unwrap();
        let ns = str_at(binding, &["metadata", "namespace"]).map(String::from);
        let role = objects
            .iter()
            .find(|r| {
                kind(r) == role_kind
                    && name(r) == role_name
                    && (role_kind == "ClusterRole" || str_at(r, &["metadata", "namespace"]) == ns.as_deref())
            })
            .unwrap_or_else(|| panic!("{role_kind} {role_name} bound to the runner is not in the scaffold"));
        for rule in role["rules"].as_sequence().unwrap() {
            rules.push((ns.clone(), rule.clone()));
        }
    }
    rules
}

/// One rule granted to the runner in namespace `ns` (`None`: cluster-wide): no escalation path,
/// no write outside the deploy namespaces, no cluster-wide read of Secrets, ConfigMaps or logs.
fn assert_runner_rule(config: &str, ns: Option<&str>, rule: &Value, deploy: &[&str]) {
    let list = |k: &str| -> Vec<String> {
        rule[k]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let (verbs, resources, groups) = (list("verbs"), list("resources"), list("apiGroups"));
    let at = ns.unwrap_or("cluster-wide");
    assert!(
        !verbs
            .iter()
            .any(|v| matches!(v.as_str(), "escalate" | "bind" | "impersonate" | "*")),
        "{config} {at}: {verbs:?}"
    );
    assert!(
        !resources
            .iter()
            .any(|r| r == "*" || r.starts_with("pods/exec") || r == "serviceaccounts/token"),
        "{config} {at}: {resources:?}"
    );
    assert!(
        !groups.iter().any(|g| g == "*" || g == "rbac.authorization.k8s.io"),
        "{config} {at}: RBAC rights {groups:?}"
    );
    let writes = verbs.iter().any(|v| WRITE_VERBS.contains(&v.as_str()));
    match ns {
        None => {
            assert!(!writes, "{config}: a cluster-wide write {verbs:?} on {resources:?}");
            let private = resources
                .iter()
                .any(|r| r == "secrets" || r == "configmaps" || r == "pods/log");
            assert!(!private, "{config}: cluster-wide read of {resources:?}");
        }
        Some(ns) if writes => assert!(
            deploy.contains(&ns),
            "{config}: writes in {ns}, not a deploy namespace {deploy:?}"
        ),
        Some(_) => {}
    }
}

#[test]
fn the_runner_may_write_only_in_its_deploy_namespaces_and_never_escalate() {
    for config in ["prenv.toml", "prenv-argocd.toml"] {
        let dir = tempfile::tempdir().unwrap();
        let out = init_with(&repo_root().join("examples").join(config), dir.path(), &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let example: toml::Value =
            toml::from_str(&std::fs::read_to_string(repo_root().join("examples").join(config)).unwrap()).unwrap();
        let deploy: Vec<&str> = example["platform"]
            .get("runner_namespaces")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        let mut objects = Vec::new();
        for k in files(&dir.path().join("infrastructure"), "kustomization.yaml") {
            objects.extend(kustomize(k.parent().unwrap()));
        }
        let rules = runner_rules(&objects);
        assert!(rules.len() >= 3, "{config}: {rules:?}");
        for (ns, rule) in &rules {
            assert_runner_rule(config, ns.as_deref(), rule, &deploy);
        }
        // And the runner pods run as that ServiceAccount.
        let pod_sa = objects
            .iter()
            .filter(|o| kind(o) == "HelmRelease" || kind(o) == "Application")
            .any(|o| {
                serde_yaml::to_string(o)
                    .unwrap()
                    .contains("serviceAccountName: preview-runner")
            });
        assert!(pod_sa, "{config}: the runner pods do not run as preview-runner");
    }
}

#[test]
fn the_charts_need_no_cluster_access_to_render() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_with(&repo_root().join("examples/prenv-argocd.toml"), dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut apps = BTreeMap::new();
    for k in files(&dir.path().join("infrastructure"), "kustomization.yaml") {
        for app in kustomize(k.parent().unwrap())
            .into_iter()
            .filter(|o| kind(o) == "Application")
        {
            apps.insert(
                name(&app).to_string(),
                app["spec"]["source"]["helm"]["valuesObject"].clone(),
            );
        }
    }
    // Every Helm `lookup` in the pinned charts, and the value that keeps `helm template` (Argo CD)
    // from reaching it: `lookup` returns nothing there, so the chart would fail or drift.
    // gha-runner-scale-set-0.10.1 templates/_helpers.tpl: the controller's ServiceAccount, found by
    // listing Deployments unless controllerServiceAccount is set; the controller chart names it
    // `<release>-gha-rs-controller` (gha-runner-scale-set-controller.serviceAccountName).
    let runners = &apps["preview-runners"];
    assert_eq!(
        at(runners, "controllerServiceAccount.name").and_then(Value::as_str),
        Some("arc-gha-rs-controller")
    );
    assert_eq!(
        at(runners, "controllerServiceAccount.namespace").and_then(Value::as_str),
        Some("arc-systems")
    );
    assert!(apps.contains_key("arc"), "the controller release is named arc");
    // grafana-8.6.3 templates/_helpers.tpl `grafana.password` looks up the Secret it creates unless
    // admin.existingSecret is set (templates/secret.yaml).
    assert_eq!(
        at(&apps["kube-prometheus-stack"], "grafana.admin.existingSecret").and_then(Value::as_str),
        Some("grafana-admin")
    );
    // sealed-secrets helm-v2.16.2 templates/networkpolicy.yaml looks up the API server's Endpoints
    // when networkPolicy.enabled (default false).
    assert_ne!(
        at(&apps["sealed-secrets"], "networkPolicy.enabled").and_then(Value::as_bool),
        Some(true)
    );
    // No other pinned chart calls lookup (kube-prometheus-stack-66.3.0, helm-loki-6.24.0, alloy
    // helm-chart/0.10.1, cert-manager v1.16.2, cloudnative-pg-v0.23.0: none in templates/).
    let known = [
        "alloy",
        "arc",
        "cert-manager",
        "cloudnative-pg",
        "kube-prometheus-stack",
        "loki",
        "preview-runners",
        "sealed-secrets",
    ];
    assert_eq!(apps.keys().map(String::as_str).collect::<Vec<_>>(), known);
}

/// A config that differs from examples/prenv.toml by removing the `remove` lines and adding `add`.
fn variant(dir: &Path, base: &str, remove: &[&str], add: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples").join(base)).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !remove.iter().any(|r| l.starts_with(r)))
        .collect();
    write_config(dir, &format!("{}\n{add}", kept.join("\n")))
}

#[test]
fn init_refuses_an_incomplete_config_with_the_key_and_the_fix_and_writes_nothing() {
    for (base, remove, extra, want) in [
        (
            "prenv.toml",
            &["acme_email"][..],
            &[][..],
            "key `platform.acme_email` is missing",
        ),
        (
            "prenv.toml",
            &["dns_provider"],
            &[],
            "key `platform.dns_provider` is missing",
        ),
        (
            "prenv.toml",
            &["runners_github_url"],
            &[],
            "key `platform.runners_github_url` is missing",
        ),
        (
            "prenv.toml",
            &["runner_image"],
            &[],
            "key `platform.runner_image` is missing",
        ),
        ("prenv.toml", &["repo_url"], &[], "key `platform.repo_url` is missing"),
        (
            "prenv.toml",
            &[],
            &["--engine", "argocd"],
            "key `argocd.repo_url` is missing",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = variant(dir.path(), base, remove, "");
        let repo = dir.path().join("repo");
        let out = init_with(&config, &repo, extra);
        assert_eq!(out.status.code(), Some(2), "{want}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains(want), "{want} not in {}", text(&out.stderr));
        assert!(!repo.exists(), "{want}: init wrote files");
    }
    // A value Let's Encrypt refuses is refused at load, by every command (plan here).
    let dir = tempfile::tempdir().unwrap();
    let config = variant(dir.path(), "prenv.toml", &["acme_email"], "");
    let text_of = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[platform]", "[platform]\nacme_email = \"platform@example.com\"");
    std::fs::write(&config, text_of).unwrap();
    let prs = repo_root().join("examples/prs.json");
    let out = prenv(&["--config", s(&config), "plan", "--prs", s(&prs)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`platform.acme_email` = \"platform@example.com\" uses the reserved domain"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn init_refuses_a_webhook_host_the_wildcard_certificate_does_not_cover() {
    // [platform] is the example's last section: the key lands in it.
    for (host, refused) in [
        ("hooks.acme.dev", true),
        ("a.b.preview.example.com", true),
        ("hooks.preview.example.com", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = variant(dir.path(), "prenv.toml", &[], &format!("webhook_host = \"{host}\"\n"));
        let repo = dir.path().join("repo");
        let out = init_with(&config, &repo, &[]);
        if refused {
            assert_eq!(out.status.code(), Some(2), "{host}");
            let want = format!("key `platform.webhook_host` = \"{host}\" is not one label under the domain");
            assert!(text(&out.stderr).contains(&want), "{}", text(&out.stderr));
            assert!(!repo.exists(), "{host}: init wrote files");
        } else {
            assert!(out.status.success(), "{host}: {}", text(&out.stderr));
            let serve = std::fs::read_to_string(repo.join("infrastructure/prenv/serve.yaml")).unwrap();
            assert!(serve.contains(&format!("host: {host}")), "{serve}");
        }
    }
}

#[test]
fn every_kustomization_of_the_scaffold_builds() {
    let dir = scaffolded();
    let mut built = 0;
    for file in files(dir.path(), "kustomization.yaml") {
        if docs(&file).first().and_then(|d| str_at(d, &["kind"])) == Some("Component") {
            continue; // components build inside an environment: tests/render.rs
        }
        let objects = kustomize(file.parent().unwrap());
        let empty_index = file.ends_with("flux/environments/kustomization.yaml");
        assert!(
            !objects.is_empty() || empty_index,
            "{} builds to nothing",
            file.display()
        );
        built += 1;
    }
    assert!(built >= 8, "only {built} kustomizations");
    let runner = std::fs::read_to_string(dir.path().join("runner-image/Dockerfile")).unwrap();
    assert!(
        runner.contains("kubectl")
            && runner.contains("helm")
            && runner.contains("FROM ghcr.io/actions/actions-runner:")
    );
}

#[test]
fn the_platform_keys_reach_the_manifests() {
    let dir = scaffolded();
    let first = |path: &str| docs(&dir.path().join(path)).remove(0);
    let issuer = first("infrastructure/certificates/cluster-issuer.yaml");
    assert_eq!(
        str_at(&issuer, &["spec", "acme", "email"]),
        Some("platform-team@acme.dev")
    );
    let solver = &issuer["spec"]["acme"]["solvers"][0]["dns01"]["cloudflare"];
    assert_eq!(str_at(solver, &["apiTokenSecretRef", "name"]), Some("dns-api-token"));
    let cert = first("infrastructure/certificates/wildcard-certificate.yaml");
    assert_eq!(str_at(&cert, &["spec", "dnsNames", "0"]), Some("*.preview.example.com"));
    let runners = first("infrastructure/runners/runner-scale-set.yaml")["spec"]["values"].clone();
    assert_eq!(str_at(&runners, &["githubConfigUrl"]), Some("https://github.com/acme"));
    let image = str_at(&runners, &["template", "spec", "containers", "0", "image"]);
    assert_eq!(image, Some("ghcr.io/acme/preview-runner:2.321.0"));
    let env = docs(&dir.path().join("clusters/preview/environments.yaml"));
    let source = env.iter().find(|o| kind(o) == "GitRepository").unwrap();
    assert_eq!(
        str_at(source, &["spec", "url"]),
        Some("ssh://git@github.com/acme/shop-environments.git")
    );
    assert_eq!(
        str_at(source, &["spec", "secretRef", "name"]),
        Some("flux-system"),
        "bootstrap's deploy key"
    );
    let receiver = docs(&dir.path().join("clusters/preview/receiver.yaml"));
    let ingress = &receiver.iter().find(|o| kind(o) == "Ingress").unwrap()["spec"]["rules"][0];
    assert_eq!(str_at(ingress, &["host"]), Some("flux-webhook.preview.example.com"));
    let backend = str_at(ingress, &["http", "paths", "0", "backend", "service", "name"]);
    assert_eq!(backend, Some("webhook-receiver"));
}

#[test]
fn flux_is_pinned_to_a_release_that_knows_wait_for_termination() {
    let dir = scaffolded();
    let env = std::fs::read_to_string(dir.path().join("scripts/platform.env")).unwrap();
    let version = env
        .lines()
        .find_map(|l| l.strip_prefix("FLUX_VERSION='"))
        .unwrap()
        .trim_end_matches('\'');
    let parts: Vec<u32> = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        parts[0] == 2 && parts[1] >= 6,
        "Flux {version}: deletionPolicy WaitForTermination needs v2.6"
    );
    let fixtures = std::fs::read_to_string(repo_root().join("tests/fixtures/crds/README.md")).unwrap();
    assert!(
        fixtures.contains(&format!("Flux **{version}**")),
        "the CRD fixtures are not Flux {version}"
    );
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
    // Every run says which URL GitHub delivers pull_request events to, and that no App is set.
    assert!(
        text(&again.stdout).contains("https://prenv-webhook.preview.example.com/webhook (event \"Pull requests\""),
        "{}",
        text(&again.stdout)
    );
    assert!(text(&again.stderr).contains("github.app_id or github.installation_id is not set"));
    let edited = dir.path().join("infrastructure/controllers/cloudnative-pg.yaml");
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

/// Runs a scaffolded script with --dry-run and the environment given; its standard output.
fn dry(dir: &Path, script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .arg(dir.join("scripts").join(script))
        .arg("--dry-run")
        .args(args)
        .env("HOME", dir)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn shellcheck(script: &Path) {
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

/// Every `kubectl create` of the output makes a manifest that is applied (create or update), so a
/// script runs twice, or before or after another, without failing on what exists.
fn assert_creates_or_updates(script: &str, output: &str) {
    for line in output
        .lines()
        .filter(|l| l.contains("kubectl") && l.contains(" create "))
    {
        assert!(
            line.contains("--dry-run=client -o yaml | kubectl apply --server-side"),
            "{script}: {line}"
        );
    }
}

#[test]
fn the_scripts_pass_shellcheck() {
    let dir = scaffolded();
    let scripts = scripts_in(dir.path());
    let want = [
        "bootstrap-flux",
        "bootstrap-k3s",
        "create-secrets",
        "lib.sh",
        "platform.env",
        "setup-age",
    ];
    assert_eq!(scripts, want);
    for script in &scripts {
        shellcheck(&dir.path().join("scripts").join(script));
    }
    for own in ["scripts/test", "scripts/bench", "scripts/update-golden", ".ci/run"] {
        shellcheck(&repo_root().join(own));
    }
}

#[test]
fn the_bootstrap_scripts_run_dry_pin_their_versions_and_run_in_any_order() {
    let dir = scaffolded();
    let k3s = dry(dir.path(), "bootstrap-k3s", &[], &[]);
    assert!(
        k3s.contains("secrets-encryption: true") && k3s.contains("+ systemctl enable --now k3s"),
        "{k3s}"
    );
    // A deploy key, never a personal access token (RNF-08): a PAT in the environment is not used.
    let flux = dry(dir.path(), "bootstrap-flux", &[], &[("GITHUB_TOKEN", "ghp_never-used")]);
    let script = std::fs::read_to_string(dir.path().join("scripts/bootstrap-flux")).unwrap();
    for pat in ["flux bootstrap github", "GITHUB_TOKEN", "--token-auth", "--password"] {
        assert!(!script.contains(pat), "bootstrap-flux uses a token ({pat})");
    }
    assert!(!flux.contains("ghp_never-used"), "{flux}");
    assert!(flux.contains("--private-key-file="), "{flux}");
    for want in [
        "flux bootstrap git --url=ssh://git@github.com/acme/shop-environments.git --branch=main --path=clusters/preview",
        "--version=v2.6.4",
        "FLUX_VERSION=2.6.4",
        "ssh-keygen -q -t ed25519",
    ] {
        assert!(flux.contains(want), "bootstrap-flux lacks {want}:\n{flux}");
    }
    let age = dry(dir.path(), "setup-age", &[], &[]);
    assert!(
        age.contains("create secret generic sops-age --from-file=age.agekey="),
        "{age}"
    );
    assert!(
        age.contains("kubectl create namespace flux-system --dry-run=client -o yaml | kubectl apply"),
        "{age}"
    );
    // setup-age creates or updates the namespace and the Secret; bootstrap-flux creates nothing
    // with kubectl (flux applies its manifests server-side, over what exists): either goes first.
    assert_creates_or_updates("setup-age", &age);
    assert_creates_or_updates("bootstrap-flux", &flux);
}

#[test]
fn create_secrets_runs_dry_and_never_prints_a_value() {
    let dir = scaffolded();
    let secret = "s3cr3t-value-never-printed";
    let env = [
        ("DNS_API_TOKEN", secret),
        ("RECEIVER_TOKEN", secret),
        ("ARC_GITHUB_APP_ID", "1"),
        ("ARC_GITHUB_APP_INSTALLATION_ID", "2"),
        ("ARC_GITHUB_APP_PRIVATE_KEY_FILE", "/k.pem"),
        ("GRAFANA_ADMIN_PASSWORD", secret),
    ];
    let mut env = env.to_vec();
    env.extend([
        ("PRENV_WEBHOOK_SECRET", secret),
        ("PRENV_GITHUB_APP_KEY_FILE", "/prenv-app.pem"),
        // A personal token in the environment is never used (RNF-08): an App key and a deploy key.
        ("GITHUB_TOKEN", "ghp_never-used"),
    ]);
    let secrets = dry(dir.path(), "create-secrets", &[], &env);
    for want in [
        "-n cert-manager create secret generic dns-api-token",
        "-n flux-system create secret generic receiver-token",
        "-n arc-runners create secret generic arc-github-app",
        "-n monitoring create secret generic grafana-admin",
        "webhook URL: https://flux-webhook.preview.example.com/hook/",
        "-n prenv-system create secret generic prenv-webhook --from-file=PRENV_WEBHOOK_SECRET=",
        "-n prenv-system create secret generic prenv-github --from-file=PRENV_GITHUB_APP_KEY=/prenv-app.pem",
        "-n prenv-system create secret generic prenv-git --from-file=identity=",
        "ssh-keygen -q -t ed25519",
        "webhook URL: https://prenv-webhook.preview.example.com/webhook",
        "event \"Pull requests\"",
        "lacks github.app_id",
    ] {
        assert!(secrets.contains(want), "create-secrets lacks {want}:\n{secrets}");
    }
    for value in [secret, "ghp_never-used"] {
        assert!(
            !secrets.contains(value),
            "create-secrets printed a secret value:\n{secrets}"
        );
    }
    // prenv alone, as a part of its own.
    let prenv = dry(dir.path(), "create-secrets", &["prenv"], &env);
    assert!(
        prenv.contains("prenv-webhook") && !prenv.contains("grafana-admin"),
        "{prenv}"
    );
    assert_creates_or_updates("create-secrets", &secrets);
    // The webhook path is notification-controller's: sha256(token + name + namespace)
    // (api/v1 receiver_types.go, GetWebhookPath).
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(format!("{secret}environments-pushflux-system")));
    assert!(secrets.contains(&format!("/hook/{digest}")), "{secrets}");
}

#[test]
fn the_argocd_scaffold_installs_the_same_pinned_charts_as_applications() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_with(&repo_root().join("examples/prenv-argocd.toml"), dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.path().join("flux").exists(), "no Flux wiring for Argo CD");
    let mut objects = Vec::new();
    for k in files(&dir.path().join("infrastructure"), "kustomization.yaml") {
        objects.extend(kustomize(k.parent().unwrap()));
    }
    assert!(
        !objects
            .iter()
            .any(|o| matches!(kind(o), "HelmRelease" | "HelmRepository"))
    );
    let apps: Vec<&Value> = objects.iter().filter(|o| kind(o) == "Application").collect();
    for app in &apps {
        assert_eq!(str_at(app, &["metadata", "namespace"]), Some("argocd"));
        let version = str_at(app, &["spec", "source", "targetRevision"]).unwrap();
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit() || c == 'v'),
            "unpinned {version}"
        );
    }
    let kps = apps.iter().find(|a| name(a) == "kube-prometheus-stack").unwrap();
    let values = &kps["spec"]["source"]["helm"]["valuesObject"];
    assert_eq!(
        at(values, "prometheus.prometheusSpec.retention").and_then(Value::as_str),
        Some("7d")
    );
    let wiring = kustomize(&dir.path().join("argocd"));
    assert_eq!(wiring.iter().map(kind).collect::<Vec<_>>(), ["ApplicationSet"]);
    // prenv's first sync rewrites argocd/ whole: the scaffold writes there only what it would.
    let render = render_example("prenv-argocd.toml");
    for file in ["argocd/applicationset-shop.yaml", "argocd/kustomization.yaml"] {
        assert_eq!(
            std::fs::read(dir.path().join(file)).unwrap(),
            std::fs::read(render.path().join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn the_argocd_scripts_install_a_pinned_argo_cd_and_pass_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_with(&repo_root().join("examples/prenv-argocd.toml"), dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let scripts = scripts_in(dir.path());
    assert_eq!(
        scripts,
        [
            "bootstrap-argocd",
            "bootstrap-k3s",
            "create-secrets",
            "lib.sh",
            "platform.env"
        ]
    );
    shellcheck(&dir.path().join("scripts/bootstrap-argocd"));
    let argo = dry(dir.path(), "bootstrap-argocd", &[], &[]);
    assert!(
        argo.contains("argo-cd/v2.13.9/manifests/install.yaml") && argo.contains("clusters/preview/root.yaml"),
        "{argo}"
    );
    assert_creates_or_updates("bootstrap-argocd", &argo);
}
