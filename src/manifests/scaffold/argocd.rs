//! The Argo CD platform, converted from the Flux form of the same files (one source of truth for
//! charts, pinned versions and values): every HelmRelease becomes an Argo CD Application of the
//! same chart, every stage an Application in a sync wave, and a root Application in
//! `clusters/preview/root.yaml` syncs the stages and the environments' ApplicationSet.
//!
//! Apply order: Argo CD applies a sync wave only once every resource of the waves before it is
//! healthy (with the Application health check `scripts/bootstrap-argocd` restores), so a stage's
//! wave is after the waves of the stages it depends on. The environments' wave comes right after
//! the stages they need and before every optional stage, so a failing optional stage never holds
//! back the environments. Argo CD still dry-runs a whole sync up front, so a custom resource whose
//! CRD a chart installs carries `SkipDryRunOnMissingResource=true` (argo-cd
//! docs/user-guide/sync-options.md).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{CLUSTER_DIR, ENVIRONMENTS, ENVIRONMENTS_DEPEND_ON, STAGES};
use crate::error::{Error, Result};
use crate::manifests::yaml;
use crate::model::config::Config;
use crate::model::layout;
use crate::model::tree::Tree;

/// The API groups whose CRDs a chart of the scaffold installs (cert-manager, kube-prometheus-stack,
/// CloudNativePG, actions-runner-controller, Sealed Secrets); a custom resource of any other group
/// has its CRD from k3s or Argo CD before any sync.
const CHART_CRD_GROUPS: &[&str] = &[
    "cert-manager.io",
    "monitoring.coreos.com",
    "postgresql.cnpg.io",
    "actions.github.com",
    "bitnami.com",
];
const WAVE: &str = "argocd.argoproj.io/sync-wave";
const SYNC_OPTIONS: &str = "argocd.argoproj.io/sync-options";
const IN_CLUSTER: &str = "https://kubernetes.default.svc";
/// Deleting an Application deletes what it deployed.
const FINALIZER: &str = "resources-finalizer.argocd.argoproj.io";

/// The Argo CD tree from the engine-neutral one: infrastructure converted, Argo CD wiring added.
pub fn convert(config: &Config, tree: Tree) -> Result<Tree> {
    let repositories = helm_repositories(&tree)?;
    let release_waves = release_waves(&tree)?;
    let mut out = Tree::new();
    for (path, bytes) in tree.iter() {
        let is_manifest =
            path.starts_with("infrastructure/") && path.ends_with(".yaml") && !path.ends_with("kustomization.yaml");
        if !is_manifest {
            out.insert(path, bytes)?;
            continue;
        }
        let mut docs = Vec::new();
        for doc in parse_docs(path, bytes)? {
            match doc["kind"].as_str() {
                Some("HelmRepository") => {}
                Some("HelmRelease") => docs.push(helm_application(config, &doc, &repositories, &release_waves)?),
                _ => docs.push(skip_dry_run_if_chart_crd(doc)),
            }
        }
        if docs.is_empty() {
            return Err(Error::Render(format!(
                "scaffold file {path} holds only HelmRepositories; put them beside their HelmRelease"
            )));
        }
        out.insert(path, yaml::to_multi_doc(&docs)?)?;
    }
    wiring(config, &mut out)?;
    Ok(out)
}

/// The stage Applications, the environments' Application and ApplicationSet, the root Application.
fn wiring(config: &Config, tree: &mut Tree) -> Result<()> {
    let waves = stage_waves();
    let stages: Vec<Value> = STAGES
        .iter()
        .map(|s| {
            application(
                config,
                s.name,
                &format!("infrastructure/{}", s.dir),
                Some(waves[s.name]),
            )
        })
        .collect();
    tree.insert(
        format!("{CLUSTER_DIR}/infrastructure.yaml"),
        yaml::to_multi_doc(&stages)?,
    )?;
    let environments = application(config, ENVIRONMENTS, layout::ARGOCD_DIR, Some(waves[ENVIRONMENTS]));
    tree.insert(
        format!("{CLUSTER_DIR}/environments.yaml"),
        yaml::to_string(&environments)?,
    )?;
    let root = application(config, "prenv-platform", CLUSTER_DIR, None);
    tree.insert(format!("{CLUSTER_DIR}/root.yaml"), yaml::to_string(&root)?)?;
    // The same two files `prenv render` writes, so the first sync changes nothing here.
    crate::manifests::render::render_argocd(config, &[], tree)
}

/// The sync wave of every stage and of the environments: the stages the environments need by
/// their depth, the environments after them, every other stage after the environments.
fn stage_waves() -> BTreeMap<&'static str, u32> {
    fn depth(name: &str) -> u32 {
        let stage = STAGES.iter().find(|s| s.name == name);
        stage.map_or(0, |s| s.depends_on.iter().map(|d| depth(d) + 1).max().unwrap_or(0))
    }
    fn needs(name: &str) -> Vec<&'static str> {
        let stage = STAGES.iter().find(|s| s.name == name);
        let direct = stage.map_or(&[][..], |s| s.depends_on);
        direct
            .iter()
            .flat_map(|d| std::iter::once(*d).chain(needs(d)))
            .collect()
    }
    let essential: Vec<&str> = ENVIRONMENTS_DEPEND_ON
        .iter()
        .flat_map(|d| std::iter::once(*d).chain(needs(d)))
        .collect();
    let env_wave = essential.iter().map(|s| depth(s) + 1).max().unwrap_or(0);
    let mut waves: BTreeMap<&str, u32> = STAGES
        .iter()
        .map(|s| {
            (
                s.name,
                if essential.contains(&s.name) {
                    depth(s.name)
                } else {
                    env_wave + 1 + depth(s.name)
                },
            )
        })
        .collect();
    waves.insert(ENVIRONMENTS, env_wave);
    waves
}

/// An Application of a directory of this repository (the environments repository).
fn application(config: &Config, name: &str, path: &str, wave: Option<u32>) -> Value {
    let argo = &config.argocd;
    let mut app = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": argo.namespace, "finalizers": [FINALIZER]},
        "spec": {
            "project": argo.project,
            "source": {"repoURL": argo.repo_url.clone().unwrap_or_default(), "targetRevision": argo.target_revision, "path": path},
            "destination": {"server": IN_CLUSTER, "namespace": argo.namespace},
            "syncPolicy": sync_policy(&["ServerSideApply=true"]),
        },
    });
    if let Some(wave) = wave {
        app["metadata"]["annotations"] = json!({WAVE: wave.to_string()});
    }
    app
}

/// Automated, pruning, self-healing, and retrying with backoff: a stage whose CRDs are not there
/// yet (a manual sync out of order) converges on its own.
fn sync_policy(options: &[&str]) -> Value {
    json!({
        "automated": {"prune": true, "selfHeal": true},
        "syncOptions": options,
        "retry": {"limit": 10, "backoff": {"duration": "30s", "factor": 2, "maxDuration": "10m"}},
    })
}

fn skip_dry_run_if_chart_crd(mut doc: Value) -> Value {
    let group = doc["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map(|(g, _)| g.to_string());
    if group.is_some_and(|g| CHART_CRD_GROUPS.contains(&g.as_str())) {
        doc["metadata"]["annotations"][SYNC_OPTIONS] = json!("SkipDryRunOnMissingResource=true");
    }
    doc
}

/// The YAML documents of a scaffold file, as data (empty documents dropped).
pub(super) fn parse_docs(path: &str, bytes: &[u8]) -> Result<Vec<Value>> {
    serde_yaml::Deserializer::from_slice(bytes)
        .map(|d| serde::Deserialize::deserialize(d).map_err(|e| Error::Render(format!("scaffold file {path}: {e}"))))
        .filter(|v: &Result<Value>| !matches!(v, Ok(Value::Null)))
        .collect()
}

/// Every document of the infrastructure, with its file.
fn infrastructure_docs(tree: &Tree) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (path, bytes) in tree.under("infrastructure").filter(|(p, _)| p.ends_with(".yaml")) {
        docs.extend(parse_docs(path, bytes)?);
    }
    Ok(docs)
}

/// HelmRepository name -> URL (Argo CD takes an OCI registry without its scheme).
fn helm_repositories(tree: &Tree) -> Result<BTreeMap<String, String>> {
    let docs = infrastructure_docs(tree)?;
    Ok(docs
        .iter()
        .filter(|d| d["kind"] == "HelmRepository")
        .map(|d| {
            let url = d["spec"]["url"].as_str().unwrap_or_default();
            (
                str_of(&d["metadata"]["name"]),
                url.trim_start_matches("oci://").to_string(),
            )
        })
        .collect())
}

/// HelmRelease name -> sync wave inside its stage: after the releases it depends on (the runner
/// scale set after the controller that installs its CRDs).
fn release_waves(tree: &Tree) -> Result<BTreeMap<String, u32>> {
    let docs = infrastructure_docs(tree)?;
    let deps: BTreeMap<String, Vec<String>> = docs
        .iter()
        .filter(|d| d["kind"] == "HelmRelease")
        .map(|d| {
            let on = d["spec"]["dependsOn"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| str_of(&x["name"]))
                .collect();
            (str_of(&d["metadata"]["name"]), on)
        })
        .collect();
    fn wave(name: &str, deps: &BTreeMap<String, Vec<String>>, seen: usize) -> u32 {
        let on = deps.get(name).map(Vec::as_slice).unwrap_or_default();
        if seen > deps.len() {
            return 0; // a cycle; helm-controller would refuse it too
        }
        on.iter().map(|d| wave(d, deps, seen + 1) + 1).max().unwrap_or(0)
    }
    Ok(deps.keys().map(|n| (n.clone(), wave(n, &deps, 0))).collect())
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The Argo CD Application of one Flux HelmRelease: same chart, version, release name and values.
fn helm_application(
    config: &Config,
    release: &Value,
    repositories: &BTreeMap<String, String>,
    waves: &BTreeMap<String, u32>,
) -> Result<Value> {
    let name = str_of(&release["metadata"]["name"]);
    let chart = &release["spec"]["chart"]["spec"];
    let repo = str_of(&chart["sourceRef"]["name"]);
    let url = repositories
        .get(&repo)
        .ok_or_else(|| Error::Render(format!("HelmRelease {name} refers to unknown HelmRepository {repo}")))?;
    let argo = &config.argocd;
    Ok(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name, "namespace": argo.namespace, "finalizers": [FINALIZER],
            "annotations": {WAVE: waves.get(&name).copied().unwrap_or(0).to_string()},
        },
        "spec": {
            "project": argo.project,
            "source": {
                "repoURL": url, "chart": chart["chart"], "targetRevision": chart["version"],
                "helm": {"releaseName": name, "valuesObject": release["spec"]["values"]},
            },
            "destination": {"server": IN_CLUSTER, "namespace": release["metadata"]["namespace"]},
            "syncPolicy": sync_policy(&["CreateNamespace=true", "ServerSideApply=true"]),
        },
    }))
}
