//! The platform scaffold `prenv init` writes, as a tree: the environment templates, the engine
//! wiring and the cluster infrastructure (ingress TLS, monitoring, logs, databases, runners). Pure:
//! the config in, files out; writing them is the shell's (`app::init`).

use serde_json::json;

use super::{kinds, templates, yaml};
use crate::error::{Error, Result};
use crate::model::config::{Config, Engine};
use crate::model::layout::{self, FLUX_DIR};
use crate::model::tree::Tree;

/// The Secret holding the wildcard certificate; Traefik's default TLSStore serves it.
pub const WILDCARD_SECRET: &str = "preview-wildcard-tls";
/// Where the environments repository is cloned from when the config does not say (edit it).
const PLACEHOLDER_URL: &str = "ssh://git@github.com/acme/environments.git";

/// Everything `init` writes, by path.
pub fn scaffold(config: &Config) -> Result<Tree> {
    if config.engine == Engine::Argocd {
        return scaffold_argocd(config);
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
            "encrypted_regex": layout::SOPS_ENCRYPTED_REGEX,
            "age": config.secrets.age_recipients.join(","),
        }]});
        tree.insert(".sops.yaml", yaml::to_string(&rules)?)?;
    }
    Ok(tree)
}

/// The Argo CD platform: the same infrastructure, each Flux HelmRelease turned into an Argo CD
/// Application with the same chart, pinned version and values (one source of truth), a root
/// Application over `infrastructure/`, the Sealed Secrets controller, and the environments'
/// ApplicationSet.
fn scaffold_argocd(config: &Config) -> Result<Tree> {
    let mut flux_config = config.clone();
    flux_config.engine = Engine::Flux;
    let flux = scaffold(&flux_config)?;
    let argo = &config.argocd;
    let repo_url = argo.repo_url.clone().unwrap_or_else(|| PLACEHOLDER_URL.into());
    let mut repositories = std::collections::BTreeMap::new();
    for (path, bytes) in flux
        .iter()
        .filter(|(p, _)| p.starts_with("infrastructure/") && p.ends_with(".yaml"))
    {
        for doc in parse_docs(path, bytes)? {
            if doc["kind"] == "HelmRepository" {
                let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let url = doc["spec"]["url"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("oci://")
                    .to_string();
                repositories.insert(name, url);
            }
        }
    }
    let mut tree = Tree::new();
    for (path, bytes) in flux.iter() {
        if path.starts_with("clusters/") || path.starts_with("flux/") {
            continue;
        }
        if !(path.starts_with("infrastructure/") && path.ends_with(".yaml") && !path.ends_with("kustomization.yaml")) {
            tree.insert(path, bytes)?;
            continue;
        }
        let mut out = Vec::new();
        for doc in parse_docs(path, bytes)? {
            match doc["kind"].as_str() {
                Some("HelmRepository") => {}
                Some("HelmRelease") => out.push(helm_application(&doc, &repositories, &argo.namespace, &argo.project)?),
                _ => out.push(doc),
            }
        }
        if path.ends_with("sources.yaml") {
            out.push(helm_app(
                "sealed-secrets",
                "kube-system",
                "https://bitnami-labs.github.io/sealed-secrets",
                "sealed-secrets",
                "2.16.2",
                json!({"fullnameOverride": "sealed-secrets-controller", "resources": {"limits": {"memory": "128Mi"}}}),
                &argo.namespace,
                &argo.project,
            ));
        }
        tree.insert(path, yaml::to_multi_doc(&out)?)?;
    }
    let root = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "prenv-infrastructure", "namespace": argo.namespace, "finalizers": ["resources-finalizer.argocd.argoproj.io"]},
        "spec": {
            "project": argo.project,
            "source": {"repoURL": repo_url, "targetRevision": argo.target_revision, "path": "infrastructure"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": argo.namespace},
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}, "syncOptions": ["ServerSideApply=true"]},
        },
    });
    tree.insert("argocd/infrastructure.yaml", yaml::to_string(&root)?)?;
    let set = kinds::application_set(config, &layout::meta_glob());
    tree.insert("argocd/applicationset.yaml", yaml::to_string(&set)?)?;
    let index = kinds::KustomizeFile {
        resources: vec!["infrastructure.yaml".into(), "applicationset.yaml".into()],
        ..kinds::KustomizeFile::default()
    };
    tree.insert("argocd/kustomization.yaml", yaml::to_string(&index)?)?;
    Ok(tree)
}

fn parse_docs(path: &str, bytes: &[u8]) -> Result<Vec<serde_json::Value>> {
    serde_yaml::Deserializer::from_slice(bytes)
        .map(|d| serde::Deserialize::deserialize(d).map_err(|e| Error::Render(format!("scaffold file {path}: {e}"))))
        .filter(|v: &Result<serde_json::Value>| !matches!(v, Ok(serde_json::Value::Null)))
        .collect()
}

fn helm_application(
    release: &serde_json::Value,
    repositories: &std::collections::BTreeMap<String, String>,
    argo_namespace: &str,
    project: &str,
) -> Result<serde_json::Value> {
    let name = release["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = release["metadata"]["namespace"].as_str().unwrap_or("monitoring");
    let chart = &release["spec"]["chart"]["spec"];
    let repo = chart["sourceRef"]["name"].as_str().unwrap_or_default();
    let url = repositories
        .get(repo)
        .ok_or_else(|| Error::Render(format!("HelmRelease {name} refers to unknown HelmRepository {repo}")))?;
    Ok(helm_app(
        name,
        namespace,
        url,
        chart["chart"].as_str().unwrap_or_default(),
        chart["version"].as_str().unwrap_or_default(),
        release["spec"]["values"].clone(),
        argo_namespace,
        project,
    ))
}

#[allow(clippy::too_many_arguments)]
fn helm_app(
    name: &str,
    namespace: &str,
    repo_url: &str,
    chart: &str,
    version: &str,
    values: serde_json::Value,
    argo_namespace: &str,
    project: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": argo_namespace},
        "spec": {
            "project": project,
            "source": {"repoURL": repo_url, "chart": chart, "targetRevision": version, "helm": {"releaseName": name, "valuesObject": values}},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": namespace},
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}, "syncOptions": ["CreateNamespace=true", "ServerSideApply=true"]},
        },
    })
}
