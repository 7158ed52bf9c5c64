//! The platform scaffold `prenv init` writes, as a tree: the environment templates, the cluster
//! infrastructure in stages (ingress TLS, monitoring, logs, databases, runners), the engine's
//! wiring and the bootstrap scripts. Pure: the config in, files out; writing them is the shell's
//! (`app::init`).
//!
//! The infrastructure is applied in [`STAGES`], each a directory of `infrastructure/`: a custom
//! resource is never in the stage whose chart installs its CRD, and a stage that holds custom
//! resources depends on the stage with that chart. With Flux every stage is a Kustomization with
//! `dependsOn`; with Argo CD an Application in a sync wave (`argocd.rs`). The preview
//! environments depend only on the stage they need, so an optional part that fails (monitoring,
//! runners, a certificate not issued yet) never blocks a preview.

mod argocd;
mod objects;
mod prenv;

use serde_json::{Value, json};

use super::{kinds, templates, yaml};
use crate::error::{Error, Result};
use crate::model::config::{Config, Engine, Platform};
use crate::model::layout::{self, FLUX_DIR};
use crate::model::tree::Tree;

pub use objects::{RUNNER_NAMESPACE, RUNNER_SERVICE_ACCOUNT, alertmanager_config};
pub use prenv::{CONFIG_MAP, PRENV_NAMESPACE, PROJECTS_CONFIG_DIR, WEBHOOK_PATH, webhook_url};

/// The Secret holding the wildcard certificate; Traefik's default TLSStore serves it.
pub const WILDCARD_SECRET: &str = "preview-wildcard-tls";
/// The Flux release `scripts/bootstrap-flux` installs. v2.6 is the first whose Kustomization
/// accepts `deletionPolicy: WaitForTermination`, which every environment uses.
pub const FLUX_VERSION: &str = "v2.6.4";
/// The Argo CD release `scripts/bootstrap-argocd` installs (the version of the CRD fixtures).
pub const ARGOCD_VERSION: &str = "v2.13.9";
/// The cluster's entry point: Flux's bootstrap path, or the directory of Argo CD's root Application.
pub const CLUSTER_DIR: &str = "clusters/preview";
/// The Secret `flux bootstrap` creates from the deploy key (`--secret-name`); the environments'
/// GitRepository reads the same repository with it.
pub const FLUX_BOOTSTRAP_SECRET: &str = "flux-system";
/// The Flux Receiver that reconciles at once on a push, and the Secret with its token.
pub const RECEIVER_NAME: &str = "environments-push";
pub const RECEIVER_SECRET: &str = "receiver-token";
/// The Secret with Grafana's admin user and password (`scripts/create-secrets grafana`).
pub const GRAFANA_SECRET: &str = "grafana-admin";
/// The name of the root Kustomization (or Application) over the environments' wiring.
pub const ENVIRONMENTS: &str = "prenv-environments";
/// What the environments need applied first: CloudNativePG's CRD (their database Cluster).
pub const ENVIRONMENTS_DEPEND_ON: &[&str] = &["infra-controllers"];

/// One stage of the infrastructure: `infrastructure/<dir>`, applied after the stages it depends on.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub name: &'static str,
    pub dir: &'static str,
    pub depends_on: &'static [&'static str],
}

/// The stages. Charts that install CRDs are in a stage before the custom resources of those CRDs:
/// kustomize-controller dry-runs every object of a stage (but CRDs and Namespaces) before it
/// applies any (kustomize-controller `internal/controller/kustomization_controller.go` `apply`,
/// fluxcd/pkg `ssa` `ResourceManager.ApplyAll`), so a CR beside the HelmRelease of its CRD fails
/// every time on a fresh cluster, and the HelmRelease is never created.
pub const STAGES: &[Stage] = &[
    Stage {
        name: "infra-controllers",
        dir: "controllers",
        depends_on: &[],
    },
    Stage {
        name: "infra-cert-manager",
        dir: "cert-manager",
        depends_on: &[],
    },
    Stage {
        name: "infra-certificates",
        dir: "certificates",
        depends_on: &["infra-cert-manager"],
    },
    Stage {
        name: "infra-monitoring",
        dir: "monitoring",
        depends_on: &[],
    },
    Stage {
        name: "infra-monitoring-rules",
        dir: "monitoring-rules",
        depends_on: &["infra-monitoring"],
    },
    Stage {
        name: "infra-runners",
        dir: "runners",
        depends_on: &[],
    },
    // prenv serve and watch need no CRD: nothing optional holds back the webhook.
    Stage {
        name: "infra-prenv",
        dir: "prenv",
        depends_on: &[],
    },
    Stage {
        name: "infra-prenv-monitoring",
        dir: "prenv-monitoring",
        depends_on: &["infra-monitoring"],
    },
];

/// Everything `init` writes, by path; refuses a config that lacks what the engine needs.
pub fn scaffold(config: &Config) -> Result<Tree> {
    check_complete(config)?;
    let mut tree = templates::tree()?;
    tree.extend(templates::platform("common")?);
    tree.extend(objects::infrastructure(config)?);
    tree.extend(prenv::files(config)?);
    objects::route_alerts(config, &mut tree)?;
    tree.insert("scripts/platform.env", objects::platform_env(config)?)?;
    if !config.secrets.age_recipients.is_empty() {
        let rules = json!({"creation_rules": [{
            "path_regex": ".*\\.sops\\.ya?ml$",
            "encrypted_regex": layout::SOPS_ENCRYPTED_REGEX,
            "age": config.secrets.age_recipients.join(","),
        }]});
        tree.insert(".sops.yaml", yaml::to_string(&rules)?)?;
    }
    match config.engine {
        Engine::Flux => {
            tree.extend(templates::platform("flux")?);
            flux_wiring(config, &mut tree)?;
            Ok(tree)
        }
        Engine::Argocd => {
            tree.extend(templates::platform("argocd")?);
            argocd::convert(config, tree)
        }
    }
}

/// `prenv init` writes nothing for a config the platform cannot come up with: each missing value
/// is named with its key and the fix, before any file is written.
fn check_complete(config: &Config) -> Result<()> {
    let refuse = |message: String| Error::Config {
        path: "prenv.toml (prenv init)".into(),
        message,
    };
    if let Some(message) = config.platform.missing_for_init() {
        return Err(refuse(message));
    }
    let webhook = config.platform.webhook_host(&config.domain);
    if webhook.split_once('.').is_none_or(|(_, rest)| rest != config.domain) {
        return Err(refuse(format!(
            "key `platform.webhook_host` = {webhook:?} is not one label under the domain {:?}, so the wildcard certificate does not cover it; give e.g. \"prenv-webhook.{}\"",
            config.domain, config.domain
        )));
    }
    match config.engine {
        Engine::Flux => flux_repo_url(config).map(drop).map_err(&refuse)?,
        Engine::Argocd if config.argocd.repo_url.as_deref().is_none_or(str::is_empty) => return Err(refuse(
            "key `argocd.repo_url` is missing; with Argo CD the platform's Applications and the environments' ApplicationSet clone the environments repository from it".into(),
        )),
        Engine::Argocd => {}
    }
    // prenv serve pushes with its own deploy key, over SSH, whatever the engine reads with.
    prenv::push_url(config).map(drop).map_err(refuse)
}

/// The SSH URL Flux clones the environments repository from, as `ssh://` (the form Flux's
/// GitRepository and `flux bootstrap git` take): `platform.repo_url`, else `git.url` when it is SSH.
pub fn flux_repo_url(config: &Config) -> std::result::Result<String, String> {
    let url = config
        .platform
        .repo_url
        .clone()
        .or_else(|| config.git.url.clone().filter(|u| Platform::is_ssh_url(u)))
        .ok_or_else(|| {
            "key `platform.repo_url` is missing; Flux reads the environments repository over SSH with the deploy key scripts/bootstrap-flux creates: set it to ssh://git@github.com/OWNER/REPO.git".to_string()
        })?;
    Ok(ssh_form(&url))
}

/// An SSH URL as `ssh://`: the scp-like `git@host:owner/repo.git` becomes
/// `ssh://git@host/owner/repo.git`; an `ssh://` URL stays as it is.
fn ssh_form(url: &str) -> String {
    if url.starts_with("ssh://") {
        return url.to_string();
    }
    let (user_host, path) = url.split_once(':').unwrap_or((url, ""));
    format!("ssh://{user_host}/{}", path.trim_start_matches('/'))
}

/// The Flux wiring: one Kustomization per stage, the environments' source and root Kustomization,
/// the webhook Receiver and its Ingress, in `clusters/preview/` beside what `flux bootstrap` writes
/// (`flux-system/`). That directory has no kustomization.yaml on purpose: kustomize-controller then
/// applies every manifest in it and every subdirectory with its own kustomization.yaml (fluxcd/pkg
/// `kustomize.Generator.findOrGenerateKustomization`), so `flux-system/` is included whenever
/// bootstrap has written it, and Flux manages itself from git.
fn flux_wiring(config: &Config, tree: &mut Tree) -> Result<()> {
    let stages: Vec<Value> = STAGES
        .iter()
        .map(|s| {
            flux_kustomization(
                config,
                s.name,
                &format!("./infrastructure/{}", s.dir),
                s.depends_on,
                true,
            )
        })
        .collect();
    tree.insert(
        format!("{CLUSTER_DIR}/infrastructure.yaml"),
        yaml::to_multi_doc(&stages)?,
    )?;
    let flux = &config.flux;
    let mut wiring = Vec::new();
    // With `flux.source = "flux-system"` the environments use bootstrap's own GitRepository.
    if flux.source != flux.namespace {
        let url = flux_repo_url(config).map_err(Error::Render)?;
        wiring.push(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": flux.source, "namespace": flux.namespace},
            "spec": {"interval": "5m", "url": url, "ref": {"branch": config.git.branch}, "secretRef": {"name": FLUX_BOOTSTRAP_SECRET}},
        }));
    }
    // The root applies the root index `flux/environments/kustomization.yaml`: one Kustomization
    // per project (each applies its project's index, written by that project's sync alone) and
    // the environments wired before projects had one. The environments' own Kustomizations
    // decrypt SOPS files; the root and the projects' only apply Kustomization objects and need no
    // key (a decryption Secret that does not exist fails a Kustomization: kustomize-controller
    // `internal/decryptor` `ImportKeys`).
    let mut root = flux_kustomization(
        config,
        ENVIRONMENTS,
        &format!("./{FLUX_DIR}"),
        ENVIRONMENTS_DEPEND_ON,
        false,
    );
    root["spec"]["interval"] = json!("1m");
    wiring.push(root);
    tree.insert(format!("{CLUSTER_DIR}/environments.yaml"), yaml::to_multi_doc(&wiring)?)?;
    tree.insert(
        format!("{CLUSTER_DIR}/receiver.yaml"),
        yaml::to_multi_doc(&objects::receiver(config))?,
    )?;
    let empty = kinds::KustomizeFile::default();
    tree.insert(format!("{FLUX_DIR}/kustomization.yaml"), yaml::to_string(&empty)?)
}

/// A Flux Kustomization of this repository's `path` in the Flux namespace. `wait` makes it ready
/// only once everything it applied is (the charts installed, their CRDs registered), which is
/// what a stage that depends on it waits for.
fn flux_kustomization(config: &Config, name: &str, path: &str, depends_on: &[&str], wait: bool) -> Value {
    let flux = &config.flux;
    let mut spec = json!({
        "interval": "10m", "retryInterval": "2m", "timeout": "10m", "path": path, "prune": true, "wait": wait,
        "sourceRef": {"kind": "GitRepository", "name": flux.source},
    });
    if !depends_on.is_empty() {
        spec["dependsOn"] = depends_on.iter().map(|d| json!({"name": d})).collect();
    }
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": flux.namespace},
        "spec": spec,
    })
}
