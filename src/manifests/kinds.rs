//! Small typed structs for the non-core kinds prenv writes: kustomize's `Kustomization` file, Flux's
//! `Kustomization` and Argo CD's `ApplicationSet`. Only the fields prenv sets are typed.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Result;
use crate::model::config::Config;
use crate::model::labels;
use crate::model::layout;
use crate::model::meta::{EnvMeta, GENERATOR};

/// `kustomization.yaml` (kustomize.config.k8s.io/v1beta1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KustomizeFile {
    pub api_version: &'static str,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelSet>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageOverride>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
    /// Replica counts that override the template's (kustomize `replicas`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaCount>,
}

/// One kustomize `replicas` entry: the workload's name and its count.
#[derive(Debug, Serialize)]
pub struct ReplicaCount {
    pub name: String,
    pub count: u32,
}

impl Default for KustomizeFile {
    fn default() -> Self {
        KustomizeFile {
            api_version: "kustomize.config.k8s.io/v1beta1",
            kind: "Kustomization",
            namespace: None,
            resources: Vec::new(),
            components: Vec::new(),
            labels: Vec::new(),
            common_annotations: BTreeMap::new(),
            images: Vec::new(),
            patches: Vec::new(),
            replicas: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSet {
    pub pairs: BTreeMap<String, String>,
    /// Selectors stay as the template wrote them: they are immutable on a Deployment.
    pub include_selectors: bool,
    /// Pods carry the labels too, so logs and metrics can be filtered by PR.
    pub include_templates: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageOverride {
    pub name: String,
    pub new_name: String,
    pub new_tag: String,
}

#[derive(Debug, Serialize)]
pub struct Patch {
    pub target: PatchTarget,
    /// A JSON6902 patch, written as YAML.
    pub patch: String,
}

#[derive(Debug, Serialize)]
pub struct PatchTarget {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// A JSON6902 patch on one object of the base or an overlay.
pub fn json_patch(group: &str, kind: &str, name: &str, ops: Vec<Value>) -> Result<Patch> {
    Ok(Patch {
        target: PatchTarget {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
        },
        patch: super::yaml::to_string(&ops)?,
    })
}

/// Flux `kustomize.toolkit.fluxcd.io/v1` Kustomization: one per environment, and one per project
/// over that project's index.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxKustomization {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Value,
    pub spec: Value,
}

impl FluxKustomization {
    pub fn for_env(
        config: &Config,
        meta: &EnvMeta,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        let flux = &config.flux;
        let mut object = FluxKustomization {
            api_version: "kustomize.toolkit.fluxcd.io/v1",
            kind: "Kustomization",
            metadata: json!({
                "name": meta.env.as_str(),
                "namespace": flux.namespace,
                "labels": labels,
                "annotations": annotations,
            }),
            spec: json!({
                "interval": flux.interval,
                "retryInterval": "1m",
                "timeout": flux.timeout,
                "path": format!("./{}", layout::env_dir(meta.env.as_str())),
                "prune": true,
                "wait": true,
                // Deleting the Kustomization completes only when the namespace (volumes included) is
                // gone, so the watcher's "destroyed" means gone and close->gone is measured honestly.
                "deletionPolicy": "WaitForTermination",
                "sourceRef": {"kind": "GitRepository", "name": flux.source},
                "decryption": {"provider": "sops", "secretRef": {"name": flux.sops_secret}},
                // In the spec so that every new head commit bumps the generation: the watcher counts
                // Ready only when observedGeneration has caught up, i.e. for this very commit.
                "commonMetadata": {"annotations": common_annotations(meta)},
            }),
        };
        // A queued environment (no room in the cluster yet) is in git but not applied: the
        // controller skips a suspended Kustomization (kustomize-controller
        // `internal/controller/kustomization_controller.go`, `Reconcile`: "Reconciliation is
        // suspended for this object"), so no namespace, quota or database exists until it leaves
        // the queue and the field goes.
        if meta.is_queued() {
            object.spec["suspend"] = json!(true);
        }
        object
    }

    /// The Flux Kustomization of one project: it applies the project's index
    /// (`flux/environments/<project>/`), so a broken index or template of one project fails only
    /// that project's Kustomization, and the root Kustomization applies only these and the legacy
    /// ones.
    pub fn for_project(config: &Config) -> Self {
        let flux = &config.flux;
        let project = &config.project_id;
        FluxKustomization {
            api_version: "kustomize.toolkit.fluxcd.io/v1",
            kind: "Kustomization",
            metadata: json!({
                "name": layout::flux_project_name(project),
                "namespace": flux.namespace,
                "labels": {labels::MANAGED_BY: GENERATOR, labels::PROJECT: project},
            }),
            spec: json!({
                "interval": flux.interval,
                "retryInterval": "1m",
                "timeout": flux.timeout,
                "path": format!("./{}", layout::flux_project_dir(project)),
                // An environment's Kustomization that leaves the index is deleted, and with it
                // (its own prune and WaitForTermination) the environment.
                "prune": true,
                // Only Kustomization objects are applied here: waiting for them to be ready would
                // hold every environment of the project behind its slowest one.
                "wait": false,
                "sourceRef": {"kind": "GitRepository", "name": flux.source},
            }),
        }
    }
}

/// What every object of an environment carries: its head and, while it waits for a newer head's
/// image, that image (so that entering and leaving the wait bump the generation too, and the
/// watcher never reads a status from before the wait ended as the new head's).
fn common_annotations(meta: &EnvMeta) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::from([(labels::HEAD_SHA, meta.head_sha.clone())]);
    if let Some(w) = &meta.waiting_for {
        out.insert(labels::WAITING_FOR_IMAGE, w.image.clone());
    }
    out
}

/// The ApplicationSet's `templatePatch`: automated sync unless the environment is queued, and
/// then the label [`labels::QUEUED`] instead (`argocd app list -l prenv.dev/queued=true` lists the
/// queue). Both branches leave a patch, never an empty document.
const AUTOMATED_UNLESS_QUEUED: &str = "{{- if index . \"queued\" }}\nmetadata:\n  labels:\n    prenv.dev/queued: \"true\"\n{{- else }}\nspec:\n  syncPolicy:\n    automated:\n      prune: true\n      selfHeal: true\n{{- end }}\n";

/// Argo CD ApplicationSet: a git files generator over every environment's metadata file, so each
/// environment directory becomes one Application, and removing the directory removes the Application.
pub fn application_set(config: &Config, meta_glob: &str) -> Value {
    let argo = &config.argocd;
    let repo = argo.repo_url.clone().unwrap_or_default();
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "ApplicationSet",
        "metadata": {
            "name": format!("{}-previews", config.project_id),
            "namespace": argo.namespace,
            "labels": {labels::MANAGED_BY: GENERATOR, labels::PROJECT: config.project_id},
        },
        "spec": {
            "goTemplate": true,
            "goTemplateOptions": ["missingkey=error"],
            // Argo CD flattens each file's keys and matches this selector against them
            // (argo-cd v3.0 applicationset/generators/generator_spec_processor.go, `Transform`):
            // a metadata file without prenv's mark, someone's own directory, yields no Application.
            "generators": [{
                "git": {
                    "repoURL": repo,
                    "revision": argo.target_revision,
                    "files": [{"path": meta_glob}],
                },
                "selector": {"matchLabels": {"generator": GENERATOR}},
            }],
            "template": {
                "metadata": {
                    "name": "{{.path.basename}}",
                    "labels": {
                        labels::MANAGED_BY: GENERATOR,
                        labels::PROJECT: config.project_id,
                        labels::ENV: "{{.path.basename}}",
                        labels::PR: "{{.pr}}",
                    },
                    "annotations": {
                        labels::HEAD_SHA: "{{.head_sha}}",
                        labels::URL: "{{.url}}",
                        labels::DATABASES: "{{ join \",\" .databases }}",
                        // `index` yields no value rather than an error (missingkey=error applies
                        // to `.key` only, Go text/template exec.go `evalField`) for metadata
                        // written before prenv recorded the time; the watcher then ignores it.
                        labels::COMMITTED_AT: "{{ index . \"committed_at\" }}",
                        labels::ELIGIBLE_AT: "{{ index . \"eligible_at\" }}",
                        // Empty unless the environment waits for a newer head's image (`with` on
                        // a missing key yields nothing; with goTemplate the file's nested object is
                        // kept as it is, argo-cd applicationset/generators/git.go
                        // `generateParamsFromGitFile`): the watcher reports the wait on that head.
                        labels::WAITING_FOR_SHA: "{{ with index . \"waiting_for\" }}{{ .sha }}{{ end }}",
                        labels::WAITING_FOR_IMAGE: "{{ with index . \"waiting_for\" }}{{ .image }}{{ end }}",
                        labels::WAITING_SINCE: "{{ with index . \"waiting_for\" }}{{ .since }}{{ end }}",
                        // Empty unless the environment is queued for room in the cluster: the
                        // watcher reports its place ("queued, position N of M").
                        labels::QUEUED_POSITION: "{{ with index . \"queued\" }}{{ .position }}{{ end }}",
                        labels::QUEUED_OF: "{{ with index . \"queued\" }}{{ .of }}{{ end }}",
                        labels::QUEUED_AT: "{{ with index . \"queued\" }}{{ .queued_at }}{{ end }}",
                    },
                    // Deleting the Application deletes what it deployed, namespace included.
                    "finalizers": ["resources-finalizer.argocd.argoproj.io"],
                },
                "spec": {
                    "project": argo.project,
                    "source": {"repoURL": repo, "targetRevision": argo.target_revision, "path": "{{.path.path}}"},
                    "destination": {"server": "https://kubernetes.default.svc", "namespace": "{{.path.basename}}"},
                    // `automated` comes from the templatePatch below: a queued environment's
                    // Application is there (visible, OutOfSync) but never synced.
                    "syncPolicy": {
                        "syncOptions": ["CreateNamespace=false", "ServerSideApply=true"],
                        "retry": {"limit": 5, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}},
                    },
                },
            },
            // Automated sync (prune, self-heal) for every environment that is not queued for room
            // in the cluster (`queued` in prenv.json). The patch is rendered with the same
            // parameters and merged into each Application (argo-cd v2.10+
            // applicationset/controllers/template/patch.go `applyTemplatePatch`, a strategic merge
            // patch); `index` on a missing key yields nothing (not an error, as with `.queued`
            // under missingkey=error), so metadata without `queued` gets automated sync, as
            // before the guard existed.
            "templatePatch": AUTOMATED_UNLESS_QUEUED,
        },
    })
}
