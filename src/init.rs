//! `prenv init`: scaffolds a complete environments repository — the environment templates, the
//! engine wiring and the cluster infrastructure (ingress TLS, monitoring, logs, databases, runners) —
//! and writes it without ever overwriting a file someone edited, unless asked to.

use std::path::Path;

use serde_json::json;

use crate::config::{Config, Engine};
use crate::error::{Error, Result};
use crate::render::FLUX_DIR;
use crate::tree::Tree;
use crate::{kinds, templates, yaml};

/// The Secret holding the wildcard certificate; Traefik's default TLSStore serves it.
pub const WILDCARD_SECRET: &str = "preview-wildcard-tls";
/// Where the environments repository is cloned from when the config does not say (edit it).
const PLACEHOLDER_URL: &str = "ssh://git@github.com/acme/environments.git";

/// Everything `init` writes, by path.
pub fn scaffold(config: &Config) -> Result<Tree> {
    if config.engine == Engine::Argocd {
        return Err(Error::Config {
            path: "prenv.toml".into(),
            message: "`prenv init` scaffolds the Flux platform only so far; with engine = \"argocd\" use `prenv render` for the ApplicationSet and install the infrastructure charts with Argo CD".into(),
        });
    }
    let mut tree = templates::tree()?;
    tree.extend(templates::platform("flux")?);
    let flux = &config.flux;
    let url = config
        .git
        .url
        .clone()
        .filter(|u| u.contains("://") || u.contains('@'))
        .unwrap_or_else(|| PLACEHOLDER_URL.into());
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "preview-wildcard", "namespace": "kube-system"},
        "spec": {
            "secretName": WILDCARD_SECRET,
            "dnsNames": [format!("*.{}", config.domain)],
            "issuerRef": {"kind": "ClusterIssuer", "name": "letsencrypt"},
        },
    });
    tree.insert(
        "infrastructure/wildcard-certificate.yaml",
        yaml::to_string(&certificate)?,
    )?;
    let decryption = json!({"provider": "sops", "secretRef": {"name": flux.sops_secret}});
    let sync = vec![
        json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": flux.source, "namespace": flux.namespace},
            "spec": {"interval": "5m", "url": url, "ref": {"branch": config.git.branch}, "secretRef": {"name": "environments-git"}},
        }),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": "infrastructure", "namespace": flux.namespace},
            "spec": {
                "interval": "10m", "timeout": "10m", "path": "./infrastructure", "prune": true, "wait": true,
                "sourceRef": {"kind": "GitRepository", "name": flux.source}, "decryption": decryption,
            },
        }),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": "prenv-environments", "namespace": flux.namespace},
            "spec": {
                "interval": "1m", "path": format!("./{FLUX_DIR}"), "prune": true,
                "dependsOn": [{"name": "infrastructure"}],
                "sourceRef": {"kind": "GitRepository", "name": flux.source}, "decryption": decryption,
            },
        }),
        // A push to the environments repository reconciles at once instead of at the next interval.
        json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1",
            "kind": "Receiver",
            "metadata": {"name": "environments-push", "namespace": flux.namespace},
            "spec": {
                "type": "github", "events": ["ping", "push"], "secretRef": {"name": "receiver-token"},
                "resources": [{"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": flux.source}],
            },
        }),
    ];
    tree.insert("clusters/preview/sync.yaml", yaml::to_multi_doc(&sync)?)?;
    let cluster = kinds::KustomizeFile {
        resources: vec!["sync.yaml".into()],
        ..kinds::KustomizeFile::default()
    };
    tree.insert("clusters/preview/kustomization.yaml", yaml::to_string(&cluster)?)?;
    let empty = kinds::KustomizeFile::default();
    tree.insert(format!("{FLUX_DIR}/kustomization.yaml"), yaml::to_string(&empty)?)?;
    if !config.secrets.age_recipients.is_empty() {
        let rules = json!({"creation_rules": [{
            "path_regex": ".*\\.sops\\.ya?ml$",
            "encrypted_regex": crate::sops::ENCRYPTED_REGEX,
            "age": config.secrets.age_recipients.join(","),
        }]});
        tree.insert(".sops.yaml", yaml::to_string(&rules)?)?;
    }
    Ok(tree)
}

/// What writing the scaffold did.
#[derive(Debug, Default)]
pub struct Written {
    pub written: Vec<String>,
    pub unchanged: usize,
    /// Files that exist with other content and were left alone (no `--force`).
    pub kept: Vec<String>,
}

/// Writes the scaffold below `dir`: new files are created, identical ones skipped, and a file with
/// other content is kept as it is unless `force`.
pub fn write(tree: &Tree, dir: &Path, force: bool) -> Result<Written> {
    let mut out = Written::default();
    for (path, bytes) in tree.iter() {
        let target = dir.join(path);
        match std::fs::read(&target) {
            Ok(existing) if existing == bytes => {
                out.unchanged += 1;
                continue;
            }
            Ok(_) if !force => {
                out.kept.push(path.to_string());
                continue;
            }
            _ => {}
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
        }
        std::fs::write(&target, bytes).map_err(|e| Error::io("writing", &target, e))?;
        out.written.push(path.to_string());
    }
    Ok(out)
}
