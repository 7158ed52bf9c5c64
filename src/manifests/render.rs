//! Rendering: the environments that the plan wants, as files. Pure: config and metadata in, a
//! [`Tree`] out. Every manifest is a typed value; [`crate::manifests::yaml`] lays it out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::json;

use super::kinds::{self, FluxKustomization, KustomizeFile};
use super::{templates, yaml};
use crate::error::{Error, Result};
use crate::model::config::{Config, Database, Engine};
use crate::model::labels;
use crate::model::layout::{
    self, ARGOCD_INDEX, BlobId, FLUX_INDEX, META_FILE, env_dir, flux_file, flux_legacy_file, flux_project_file,
    flux_project_index,
};
use crate::model::meta::{EnvMeta, GENERATOR};
use crate::model::tree::Tree;
use crate::model::{naming, parallel};

/// Pod Security Standard every preview namespace enforces (RNF-09).
const POD_SECURITY_LEVEL: &str = "restricted";
/// The app's Deployment in `base/deployment.yaml`.
const APP_DEPLOYMENT: &str = "app";
/// The CloudNativePG cluster name in `overlays/postgres`; the operator writes `<name>-app`.
const POSTGRES_CLUSTER: &str = "db";

/// The whole self-contained tree: the embedded `base/` and `overlays/` plus environments and wiring.
pub fn render_all(config: &Config, envs: &[&EnvMeta]) -> Result<Tree> {
    let mut tree = templates::tree()?;
    tree.extend(render_owned(config, envs)?);
    Ok(tree)
}

/// Only the paths prenv owns: one directory per environment (`envs`, every environment that
/// should exist) and the engine wiring.
pub fn render_owned(config: &Config, envs: &[&EnvMeta]) -> Result<Tree> {
    render_selected(config, envs, &Around::default(), |_| true)
}

/// What the repository holds around one project's environments that its rendering refers to or
/// must list as it is: everything that is not this project's to write.
#[derive(Debug, Default)]
pub struct Around<'a> {
    /// Environments whose Flux Kustomization stays as it is at the top of the wiring directory
    /// (another project's, unreadable, or their PR unknown): the root index still lists them.
    pub kept: Vec<&'a str>,
    /// This project's environments whose Kustomization stays as it is in the project's directory
    /// (unreadable, or their PR unknown): the project's index still lists them.
    pub kept_own: Vec<&'a str>,
    /// This project's environments whose Kustomization sits at the top of the wiring directory,
    /// where environments were wired before projects had an index: written there and listed by
    /// the root index until they are pruned (see [`layout::flux_legacy_file`]).
    pub legacy: BTreeSet<&'a str>,
    /// The other projects whose Flux Kustomization the wiring holds: the root index lists them.
    pub flux_projects: BTreeSet<String>,
    /// ApplicationSet files of the Argo CD wiring that are not this project's: still listed.
    pub argo_kept: Vec<String>,
    /// The project template directories the repository holds (`projects/<id>/base`, …).
    pub templates: BTreeSet<String>,
    /// Leaves out the wiring every environment shares (indexes, project Kustomizations,
    /// ApplicationSets): for a partial view, which keeps it as it is.
    pub partial: bool,
}

/// Like [`render_owned`], but writes the files of only the environments `wanted` selects (a sync
/// skips the ones known to be as rendered); the wiring indexes list every environment of `envs`
/// and what `around` says stays.
pub fn render_selected(
    config: &Config,
    envs: &[&EnvMeta],
    around: &Around<'_>,
    wanted: impl Fn(&EnvMeta) -> bool,
) -> Result<Tree> {
    Ok(render_changed(config, envs, around, wanted, &BTreeMap::new())?.0)
}

/// Like [`render_selected`], but leaves out of the tree each environment's file whose bytes are
/// those of the blob `stored` lists at its path, and returns those paths beside it: a sync with no
/// memory renders every environment to compare it with the repository, and held all their files
/// (36 MB for 10,000) although nearly all are as stored. Each part of the render compares its own
/// files as it makes them.
pub fn render_changed(
    config: &Config,
    envs: &[&EnvMeta],
    around: &Around<'_>,
    wanted: impl Fn(&EnvMeta) -> bool,
    stored: &BTreeMap<String, BlobId>,
) -> Result<(Tree, Vec<String>)> {
    let chosen: Vec<&EnvMeta> = envs.iter().copied().filter(|m| wanted(m)).collect();
    // Quota, limits and policies depend only on the settings and databases: render them once.
    let mut shared: BTreeMap<Vec<Database>, SharedFiles> = BTreeMap::new();
    for meta in &chosen {
        if !shared.contains_key(&meta.databases) {
            shared.insert(meta.databases.clone(), SharedFiles::render(config, &meta.databases)?);
        }
    }
    // An environment's files depend on it alone: a full sync renders them on every core (a
    // fifth of a full sync of 10,000 on one), and the parts join in order, so the first error
    // is the first environment's.
    let mut trees = Vec::new();
    let mut same = Vec::new();
    let parts = parallel::by_parts(&chosen, |part| {
        let mut rendered = Rendered::default();
        render_envs(config, part, &shared, around, stored, &mut rendered).map(|()| rendered)
    });
    for part in parts {
        let part = part?;
        trees.push(part.tree);
        same.extend(part.same);
    }
    let mut tree = Tree::joined(trees);
    match config.engine {
        _ if around.partial => {}
        Engine::Flux => render_flux_indexes(config, envs, around, &mut tree)?,
        Engine::Argocd => render_argocd(config, &around.argo_kept, &mut tree)?,
    }
    Ok((tree, same))
}

/// What a part of a render made: the files that differ from what is stored, and the paths of
/// those that do not.
#[derive(Default)]
struct Rendered {
    tree: Tree,
    same: Vec<String>,
}

impl Rendered {
    /// Adds the files of `one` environment, each to the tree or, when it is the blob `stored`
    /// lists at its path, to the paths left out.
    fn add(&mut self, one: Tree, stored: &BTreeMap<String, BlobId>) -> Result<()> {
        for (path, bytes) in one {
            if stored.get(&path).is_some_and(|id| *id == BlobId::of(&bytes)) {
                self.same.push(path);
            } else {
                self.tree.insert_shared(path, bytes)?;
            }
        }
        Ok(())
    }
}

/// The files of each of `metas`, and its Flux Kustomization with Flux, into `out`.
fn render_envs(
    config: &Config,
    metas: &[&EnvMeta],
    shared: &BTreeMap<Vec<Database>, SharedFiles>,
    around: &Around<'_>,
    stored: &BTreeMap<String, BlobId>,
    out: &mut Rendered,
) -> Result<()> {
    for meta in metas {
        let mut tree = Tree::new();
        render_env(config, meta, &shared[&meta.databases], &around.templates, &mut tree)?;
        if config.engine == Engine::Flux {
            // The watcher reads the database kinds from here for the PR comment.
            let mut annotations = env_annotations(meta);
            let dbs: Vec<&str> = meta.databases.iter().map(|d| d.name()).collect();
            annotations.insert(labels::DATABASES.into(), dbs.join(","));
            if let Some(at) = meta.committed_at {
                annotations.insert(
                    labels::COMMITTED_AT.into(),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
            if let Some(at) = meta.eligible_at {
                annotations.insert(
                    labels::ELIGIBLE_AT.into(),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
            annotations.extend(waiting_annotations(meta));
            annotations.extend(queued_annotations(meta));
            let object = FluxKustomization::for_env(config, meta, env_labels(config, meta), annotations);
            let env = meta.env.as_str();
            let path = if around.legacy.contains(env) {
                flux_legacy_file(env)
            } else {
                flux_file(env)
            };
            tree.insert(path, yaml::to_string(&object)?)?;
        }
        out.add(tree, stored)?;
    }
    Ok(())
}

/// The files that are the same for every environment with the same databases.
struct SharedFiles {
    quota: Arc<[u8]>,
    limits: Arc<[u8]>,
    policies: Arc<[u8]>,
}

impl SharedFiles {
    fn render(config: &Config, databases: &[Database]) -> Result<SharedFiles> {
        Ok(SharedFiles {
            quota: Arc::from(yaml::to_string(&resource_quota(config, databases))?.as_bytes()),
            limits: Arc::from(yaml::to_string(&limit_range(config))?.as_bytes()),
            policies: Arc::from(yaml::to_multi_doc(&network_policies(config, databases))?.as_bytes()),
        })
    }
}

fn render_env(
    config: &Config,
    meta: &EnvMeta,
    shared: &SharedFiles,
    templates: &BTreeSet<String>,
    tree: &mut Tree,
) -> Result<()> {
    let span = tracing::debug_span!("render", pr = meta.pr, env = %meta.env);
    let _guard = span.enter();
    let dir = env_dir(meta.env.as_str());
    let host = meta.host();
    if let Some(problem) = naming::dns_name_problem(host) {
        return Err(Error::Name {
            name: host.to_string(),
            message: format!("preview host of PR #{}: {problem}", meta.pr),
        });
    }
    tree.insert(
        format!("{dir}/kustomization.yaml"),
        yaml::to_string(&env_kustomization(config, meta, templates)?)?,
    )?;
    tree.insert(format!("{dir}/namespace.yaml"), yaml::to_string(&namespace(meta))?)?;
    // The same bytes for every environment of these databases: held once.
    let shared_files = [
        ("resourcequota.yaml", &shared.quota),
        ("limitrange.yaml", &shared.limits),
        ("networkpolicies.yaml", &shared.policies),
    ];
    for (name, bytes) in shared_files {
        tree.insert_shared(format!("{dir}/{name}"), Arc::clone(bytes))?;
    }
    tree.insert(format!("{dir}/{META_FILE}"), pretty_json(meta)?)
}

/// Labels every object of an environment carries; values are made valid label values here.
fn env_labels(config: &Config, meta: &EnvMeta) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.into(), GENERATOR.into()),
        (labels::PROJECT.into(), config.project_id.clone()),
        (labels::ENV.into(), meta.env.to_string()),
        (labels::PR.into(), meta.pr.to_string()),
        (labels::BRANCH.into(), naming::sanitize_label_value(&meta.head_ref)),
    ])
}

/// Annotations carry what labels cannot hold verbatim: the exact branch name (percent-encoded only
/// where YAML tools would mangle it) and the URL.
fn env_annotations(meta: &EnvMeta) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::HEAD_SHA.into(), meta.head_sha.clone()),
        (labels::HEAD_REF.into(), naming::encode_annotation(&meta.head_ref)),
        (labels::URL.into(), meta.url.clone()),
    ])
}

/// The head an environment waits to move to, for the watcher (see [`labels::WAITING_FOR_SHA`]).
fn waiting_annotations(meta: &EnvMeta) -> BTreeMap<String, String> {
    meta.waiting_for
        .iter()
        .flat_map(|w| {
            [
                (labels::WAITING_FOR_SHA.to_string(), w.sha.clone()),
                (labels::WAITING_FOR_IMAGE.to_string(), w.image.clone()),
                (
                    labels::WAITING_SINCE.to_string(),
                    w.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            ]
        })
        .collect()
}

/// An environment's place in the queue, for the watcher (see [`labels::QUEUED_POSITION`]).
fn queued_annotations(meta: &EnvMeta) -> BTreeMap<String, String> {
    meta.queued
        .iter()
        .flat_map(|q| {
            [
                (labels::QUEUED_POSITION.to_string(), q.position.to_string()),
                (labels::QUEUED_OF.to_string(), q.of.to_string()),
                (
                    labels::QUEUED_AT.to_string(),
                    q.queued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            ]
        })
        .collect()
}

/// The patches an environment applies to the template: its host on the Ingress, its URL and PR
/// in the app's environment, and the storage class of its database volumes.
fn env_patches(config: &Config, meta: &EnvMeta) -> Result<Vec<kinds::Patch>> {
    let mut patches = vec![kinds::json_patch(
        "networking.k8s.io",
        "Ingress",
        "app",
        ingress_ops(config, meta),
    )?];
    let env_ops = [("PRENV_URL", meta.url.clone()), ("PRENV_PR", meta.pr.to_string()), ("PRENV_HEAD_SHA", meta.head_sha.clone())]
        .into_iter()
        .map(|(name, value)| json!({"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": name, "value": value}}))
        .collect();
    patches.push(kinds::json_patch("apps", "Deployment", "app", env_ops)?);
    if let Some(class) = &config.storage_class {
        for db in &meta.databases {
            let (group, kind, name, path) = match db {
                Database::Postgres => (
                    "postgresql.cnpg.io",
                    "Cluster",
                    POSTGRES_CLUSTER,
                    "/spec/storage/storageClass",
                ),
                Database::Mariadb => (
                    "apps",
                    "StatefulSet",
                    "mariadb",
                    "/spec/volumeClaimTemplates/0/spec/storageClassName",
                ),
            };
            patches.push(kinds::json_patch(
                group,
                kind,
                name,
                vec![json!({"op": "add", "path": path, "value": class})],
            )?);
        }
    }
    Ok(patches)
}

/// The template directories an environment builds on, relative to its directory: its project's
/// own (`projects/<id>/base`, `projects/<id>/overlays/<db>`) where the repository holds them,
/// the defaults (`base`, `overlays/<db>`) where it does not.
fn template_refs(config: &Config, meta: &EnvMeta, templates: &BTreeSet<String>) -> (String, Vec<String>) {
    let pick = |own: String, default: String| {
        let dir = if templates.contains(&own) { own } else { default };
        format!("../../{dir}")
    };
    let base = pick(layout::project_base(&config.project_id), layout::BASE_DIR.into());
    let overlays = meta
        .databases
        .iter()
        .map(|db| {
            pick(
                layout::project_overlay(&config.project_id, db.name()),
                format!("{}/{}", layout::OVERLAYS_DIR, db.name()),
            )
        })
        .collect();
    (base, overlays)
}

fn env_kustomization(config: &Config, meta: &EnvMeta, templates: &BTreeSet<String>) -> Result<KustomizeFile> {
    let (image_name, tag) = meta
        .image
        .rsplit_once(':')
        .ok_or_else(|| Error::Render(format!("image {:?} of {} has no tag", meta.image, meta.env)))?;
    let patches = env_patches(config, meta)?;
    let (base, overlays) = template_refs(config, meta, templates);
    Ok(KustomizeFile {
        namespace: Some(meta.namespace.clone()),
        resources: [
            base.as_str(),
            "namespace.yaml",
            "resourcequota.yaml",
            "limitrange.yaml",
            "networkpolicies.yaml",
        ]
        .into_iter()
        // Written once by the secrets step: SOPS-encrypted (Flux decrypts it) or sealed.
        .chain(
            meta.databases
                .contains(&Database::Mariadb)
                .then_some(layout::secret_file(config)),
        )
        .map(String::from)
        .collect(),
        components: overlays,
        labels: vec![kinds::LabelSet {
            pairs: env_labels(config, meta),
            include_selectors: false,
            include_templates: true,
        }],
        common_annotations: env_annotations(meta),
        images: vec![kinds::ImageOverride {
            name: "app".into(),
            new_name: image_name.into(),
            new_tag: tag.into(),
        }],
        patches,
        // A new environment whose first image is not pushed yet runs no app pod (it could only fail
        // to pull); everything else is created so that only the app starts once the image exists.
        replicas: if meta.holds_app() {
            vec![kinds::ReplicaCount {
                name: APP_DEPLOYMENT.into(),
                count: 0,
            }]
        } else {
            Vec::new()
        },
        ..KustomizeFile::default()
    })
}

fn ingress_ops(config: &Config, meta: &EnvMeta) -> Vec<serde_json::Value> {
    let host = meta.host();
    let mut ops = vec![
        json!({"op": "replace", "path": "/spec/rules/0/host", "value": host}),
        json!({"op": "replace", "path": "/spec/tls/0/hosts/0", "value": host}),
        json!({"op": "replace", "path": "/spec/ingressClassName", "value": config.ingress.class}),
    ];
    let mut annotations = config.ingress.annotations.clone();
    let secret = match (&config.ingress.tls_secret, &config.ingress.cluster_issuer) {
        (Some(secret), _) => Some(secret.clone()),
        (None, Some(issuer)) => {
            annotations.insert("cert-manager.io/cluster-issuer".into(), issuer.clone());
            Some("preview-tls".into())
        }
        (None, None) => None,
    };
    if let Some(secret) = secret {
        ops.push(json!({"op": "add", "path": "/spec/tls/0/secretName", "value": secret}));
    }
    if !annotations.is_empty() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": annotations}));
    }
    ops
}

fn object_meta(name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    }
}

fn namespace(meta: &EnvMeta) -> Namespace {
    let labels = ["enforce", "audit", "warn"]
        .into_iter()
        .map(|mode| {
            (
                format!("pod-security.kubernetes.io/{mode}"),
                POD_SECURITY_LEVEL.to_string(),
            )
        })
        .chain([("pod-security.kubernetes.io/enforce-version".into(), "latest".into())])
        .collect();
    Namespace {
        metadata: object_meta(&meta.namespace, labels),
        ..Namespace::default()
    }
}

/// The quota: the base allowance plus one step per enabled database (RNF-13).
fn resource_quota(config: &Config, databases: &[Database]) -> ResourceQuota {
    // The same arithmetic the capacity check multiplies (`Config::quota_for`).
    let q = config.quota_for(databases);
    let (cpu, memory, storage, pods) = (q.cpu, q.memory, q.storage, q.pods);
    let hard = [
        ("requests.cpu", cpu.to_string()),
        ("limits.cpu", cpu.to_string()),
        ("requests.memory", memory.to_string()),
        ("limits.memory", memory.to_string()),
        ("requests.storage", storage.to_string()),
        ("persistentvolumeclaims", databases.len().to_string()),
        ("pods", pods.to_string()),
        ("services.loadbalancers", "0".into()),
        ("services.nodeports", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    ResourceQuota {
        metadata: object_meta("preview-quota", BTreeMap::new()),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn limit_range(config: &Config) -> LimitRange {
    let q = &config.quota;
    let pair = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    LimitRange {
        metadata: object_meta("preview-limits", BTreeMap::new()),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(pair(&q.default_cpu, &q.default_memory)),
                default_request: Some(pair(&q.default_request_cpu, &q.default_request_memory)),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..LabelSelector::default()
    }
}

fn from_namespace(ns: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(selector(&[("kubernetes.io/metadata.name", ns)])),
        ..NetworkPolicyPeer::default()
    }
}

fn same_namespace() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }
}

fn ports(protocol: &str, numbers: &[u16]) -> Vec<NetworkPolicyPort> {
    numbers
        .iter()
        .map(|n| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(*n))),
            protocol: Some(protocol.into()),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

fn policy(
    name: &str,
    pods: LabelSelector,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
) -> NetworkPolicy {
    let types = [("Ingress", ingress.is_some()), ("Egress", egress.is_some())]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(t, _)| t.to_string())
        .collect();
    NetworkPolicy {
        metadata: object_meta(name, BTreeMap::new()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(types),
            ingress,
            egress,
        }),
    }
}

/// Default deny in both directions, then only what a preview needs (RNF-07): traffic inside the
/// namespace, from the ingress controller and the configured scrapers, DNS, and for CloudNativePG
/// the operator's calls in and the instance manager's calls to the API server. One declarative
/// list, longer than most functions: split up, the policy set would no longer read as a whole.
fn network_policies(config: &Config, databases: &[Database]) -> Vec<NetworkPolicy> {
    let net = &config.network;
    let all = LabelSelector::default();
    let mut policies = vec![
        policy("default-deny", all.clone(), Some(vec![]), Some(vec![])),
        policy(
            "allow-same-namespace",
            all.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_namespace()]),
                ..Default::default()
            }]),
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![same_namespace()]),
                ..Default::default()
            }]),
        ),
        policy(
            "allow-ingress-controller",
            selector(&[("app.kubernetes.io/name", "app")]),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![from_namespace(&config.ingress.namespace)]),
                ..Default::default()
            }]),
            None,
        ),
        policy(
            "allow-dns",
            all.clone(),
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector(&[("kubernetes.io/metadata.name", &net.dns_namespace)])),
                    pod_selector: Some(selector(&[("k8s-app", "kube-dns")])),
                    ..Default::default()
                }]),
                ports: Some([ports("UDP", &[53]), ports("TCP", &[53])].concat()),
            }]),
        ),
    ];
    if !net.allow_from_namespaces.is_empty() {
        policies.push(policy(
            "allow-monitoring",
            all.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(net.allow_from_namespaces.iter().map(|ns| from_namespace(ns)).collect()),
                ..Default::default()
            }]),
            None,
        ));
    }
    if databases.contains(&Database::Postgres) {
        let cluster = selector(&[("cnpg.io/cluster", POSTGRES_CLUSTER)]);
        policies.push(policy(
            "allow-cnpg-operator",
            cluster.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![from_namespace(&net.cnpg_namespace)]),
                ports: Some(ports("TCP", &[8000, 5432])),
            }]),
            None,
        ));
        policies.push(policy(
            "allow-cnpg-api-server",
            cluster,
            None,
            Some(vec![NetworkPolicyEgressRule {
                ports: Some(ports("TCP", &net.api_server_ports)),
                to: None,
            }]),
        ));
    }
    policies
}

/// This project's Flux Kustomization and index, and the root index. The project's index lists
/// its environments wired in its directory; the root index lists every project's Kustomization
/// and the environments wired at the top (this project's and everyone else's, as they are), in
/// the same order whoever writes it, so one project's sync keeps every other's entry.
fn render_flux_indexes(config: &Config, envs: &[&EnvMeta], around: &Around<'_>, tree: &mut Tree) -> Result<()> {
    // Kept environments sort by their PR number too, so keeping one never reorders an index.
    fn by_pr(env: &str) -> (u64, &str) {
        let pr = naming::split_env(env).map_or(env, |(_, n)| n).parse().ok();
        (pr.unwrap_or(u64::MAX), env)
    }
    fn resources(mut listed: Vec<(u64, &str)>) -> Vec<&str> {
        listed.sort_unstable();
        listed.dedup();
        listed.into_iter().map(|(_, name)| name).collect()
    }
    let (legacy, nested): (Vec<&EnvMeta>, Vec<&EnvMeta>) =
        envs.iter().partition(|m| around.legacy.contains(m.env.as_str()));
    let own: Vec<(u64, &str)> = nested
        .iter()
        .map(|m| (m.pr, m.env.as_str()))
        .chain(around.kept_own.iter().copied().map(by_pr))
        .collect();
    let project = &config.project_id;
    tree.insert(flux_project_index(project), index_yaml(&resources(own))?)?;
    let object = FluxKustomization::for_project(config);
    tree.insert(flux_project_file(project), yaml::to_string(&object)?)?;
    let mut projects: BTreeSet<&str> = around.flux_projects.iter().map(String::as_str).collect();
    projects.insert(project);
    let top: Vec<(u64, &str)> = legacy
        .iter()
        .map(|m| (m.pr, m.env.as_str()))
        .chain(around.kept.iter().copied().map(by_pr))
        .collect();
    let root: Vec<&str> = projects.iter().copied().chain(resources(top)).collect();
    tree.insert(FLUX_INDEX, index_yaml(&root)?)
}

/// A wiring index listing the files `<stem>.yaml` of `stems`: the YAML of its [`KustomizeFile`].
/// When every stem is a name as prenv writes them (a DNS label, which with `.yaml` YAML takes as
/// a plain string) the text is written directly, byte for byte what the serializer writes (a test
/// holds the two together): an index of 10,000 entries through the serializer cost more than the
/// rest of a sync's render, and one file name allocated per entry a tenth of it. Anything else
/// goes through the serializer.
fn index_yaml(stems: &[&str]) -> Result<String> {
    let plain = |stem: &str| {
        stem.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && stem
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if stems.is_empty() || !stems.iter().all(|s| plain(s)) {
        let index = KustomizeFile {
            resources: stems.iter().map(|s| [s, ".yaml"].concat()).collect(),
            ..KustomizeFile::default()
        };
        return yaml::to_string(&index);
    }
    let defaults = KustomizeFile::default();
    let mut out = String::with_capacity(80 + stems.iter().map(|s| s.len() + 8).sum::<usize>());
    for (key, value) in [("apiVersion", defaults.api_version), ("kind", defaults.kind)] {
        out.push_str(key);
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
    }
    out.push_str("resources:\n");
    for stem in stems {
        out.push_str("- ");
        out.push_str(stem);
        out.push_str(".yaml\n");
    }
    Ok(out)
}

/// This project's ApplicationSet in a file of its own, and the wiring's index listing it with
/// every other project's (`kept`, names inside `argocd/`), in name order whoever writes it.
pub fn render_argocd(config: &Config, kept: &[String], tree: &mut Tree) -> Result<()> {
    let set = kinds::application_set(config, &layout::project_meta_glob(&config.project_id));
    let own = layout::argocd_applicationset(&config.project_id);
    tree.insert(own.as_str(), yaml::to_string(&set)?)?;
    let mut listed: BTreeSet<String> = kept.iter().cloned().collect();
    listed.insert(own.trim_start_matches(&format!("{}/", layout::ARGOCD_DIR)).to_string());
    let index = KustomizeFile {
        resources: listed.into_iter().collect(),
        ..KustomizeFile::default()
    };
    tree.insert(ARGOCD_INDEX, yaml::to_string(&index)?)
}

/// Serializes a value to pretty JSON with a trailing newline (used for metadata files).
pub fn pretty_json<T: Serialize>(value: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| Error::Render(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_written_directly_is_what_the_serializer_writes() {
        let by_serializer = |stems: &[&str]| {
            yaml::to_string(&KustomizeFile {
                resources: stems.iter().map(|s| format!("{s}.yaml")).collect(),
                ..KustomizeFile::default()
            })
            .unwrap()
        };
        let lists: &[&[&str]] = &[
            &["shop-pr-1"],
            &["blog", "shop", "shop-pr-7", "shop-pr-10"],
            &["a", "x-1.2", "z0-pr-18446744073709551615"],
        ];
        for list in lists {
            assert_eq!(index_yaml(list).unwrap(), by_serializer(list), "{list:?}");
        }
        // What is not a plain name goes through the serializer, quoted as it must be.
        let odd: &[&[&str]] = &[&[], &["1"], &["a: b"], &["- x"], &["shop", "Shop"]];
        for list in odd {
            assert_eq!(index_yaml(list).unwrap(), by_serializer(list), "{list:?}");
        }
    }
}
