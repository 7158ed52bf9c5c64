//! prenv itself in the cluster: `prenv serve` (the GitHub webhook, behind an Ingress that routes
//! only `/webhook`) and `prenv watch` (each environment's state onto its PR), one of each for
//! every project of the environments repository. Both read the ConfigMap `prenv-config`, one
//! `<project>.toml` per project (`--config-dir`), which `prenv init` starts with its own config's
//! — one source of truth, no hand-copied manifests; `prenv onboard` says how to add the next
//! project's. Their Secrets come from `scripts/create-secrets prenv`, never from git.
//!
//! Two stages: `infrastructure/prenv` needs no CRD and no other stage, so a broken monitoring
//! stack never keeps webhooks from landing; `infrastructure/prenv-monitoring` holds the
//! ServiceMonitors, whose CRD kube-prometheus-stack installs, and depends on that stage.

use serde_json::{Value, json};

use super::objects;
use crate::error::{Error, Result};
use crate::manifests::yaml;
use crate::model::config::{Config, Engine, Platform, SecretsBackend};
use crate::model::tree::Tree;

/// Where serve and watch run.
pub const PRENV_NAMESPACE: &str = "prenv-system";
pub const SERVE: &str = "prenv-serve";
pub const WATCH: &str = "prenv-watcher";
/// The Secret with the GitHub App's private key (`PRENV_GITHUB_APP_KEY`), read by both.
pub const GITHUB_SECRET: &str = "prenv-github";
/// The Secret with `PRENV_WEBHOOK_SECRET`, the key GitHub signs every delivery with.
pub const WEBHOOK_SECRET: &str = "prenv-webhook";
/// The Secret with serve's SSH deploy key (`identity`, write access) and `known_hosts`.
pub const GIT_SECRET: &str = "prenv-git";
/// The ConfigMap with the Sealed Secrets controller's certificate (public), for rendering.
pub const SEALED_CERT_CONFIG_MAP: &str = "prenv-sealed-secrets-cert";
/// The only path of serve the Ingress routes: GitHub needs nothing else, and `/metrics` and
/// `/healthz` stay inside the cluster.
pub const WEBHOOK_PATH: &str = "/webhook";
/// serve answers the webhook, `/healthz` and `/metrics` on one port (`prenv serve --listen`).
const SERVE_PORT: u16 = 8080;
/// watch's `/healthz` and `/metrics` (`prenv watch --listen`).
const WATCH_PORT: u16 = 9090;
/// distroless's nonroot user and group, which the image runs as (Dockerfile `USER`).
const NONROOT: u32 = 65532;
/// The ConfigMap with one `<project>.toml` per project, mounted as serve's and watch's `--config-dir`.
pub const CONFIG_MAP: &str = "prenv-config";
/// Where the projects' configs are kept in the environments repository, listed in the
/// ConfigMap's generator in `infrastructure/prenv/kustomization.yaml`.
pub const PROJECTS_CONFIG_DIR: &str = "infrastructure/prenv/projects";
/// The read-only mounts: the configs, and serve's git credentials. `HOME` is the latter, because
/// libgit2 reads SSH host keys from `$HOME/.ssh/known_hosts` only (libgit2 1.9
/// `transports/ssh_libssh2.c`, `load_known_hosts`).
const CONFIG_DIR: &str = "/etc/prenv";
const GIT_HOME: &str = "/etc/prenv-git";
const SEALED_CERT_DIR: &str = "/etc/prenv-sealed-secrets";
/// serve's git cache (a clone of the environments repository) lives in an emptyDir at /tmp; the
/// root filesystem is read-only. Bounded so a runaway clone evicts the pod, not the node's disk.
const TMP_SIZE_LIMIT: &str = "1Gi";
/// Where kube-prometheus-stack runs (`infrastructure/monitoring`).
const MONITORING_NAMESPACE: &str = "monitoring";

/// The files of both stages, by path under `infrastructure/`.
pub fn files(config: &Config) -> Result<Tree> {
    let mut tree = Tree::new();
    let toml = cluster_config(config)?;
    let resources = [
        ("namespace.yaml", vec![namespace()]),
        ("watch.yaml", watch(config)),
        ("serve.yaml", serve(config)),
        ("network-policy.yaml", network_policies(config)),
    ];
    let mut names = Vec::new();
    for (file, docs) in resources {
        tree.insert(format!("infrastructure/prenv/{file}"), yaml::to_multi_doc(&docs)?)?;
        names.push(file);
    }
    let project_file = format!("projects/{}.toml", config.project_id);
    tree.insert(format!("infrastructure/prenv/{project_file}"), toml)?;
    // A generated name (hash suffix) rolls both Deployments whenever a project's config changes;
    // each file is one key, `<project>.toml`, of the mounted directory.
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": names,
        "configMapGenerator": [{"name": CONFIG_MAP, "namespace": PRENV_NAMESPACE, "files": [project_file]}],
    });
    tree.insert(
        "infrastructure/prenv/kustomization.yaml",
        yaml::to_string(&kustomization)?,
    )?;
    tree.insert(
        "infrastructure/prenv-monitoring/service-monitors.yaml",
        yaml::to_multi_doc(&service_monitors())?,
    )?;
    let monitoring = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["service-monitors.yaml"],
    });
    tree.insert(
        "infrastructure/prenv-monitoring/kustomization.yaml",
        yaml::to_string(&monitoring)?,
    )?;
    Ok(tree)
}

/// The SSH URL serve pushes to with its own deploy key: `platform.repo_url`, else `git.url` when
/// it is SSH, else (Argo CD) `argocd.repo_url` as SSH; GitHub's HTTPS URLs are turned into SSH.
pub fn push_url(config: &Config) -> std::result::Result<String, String> {
    if config.engine == Engine::Flux || config.platform.repo_url.is_some() {
        return super::flux_repo_url(config);
    }
    if let Some(url) = config.git.url.clone().filter(|u| Platform::is_ssh_url(u)) {
        return Ok(super::ssh_form(&url));
    }
    let url = config.argocd.repo_url.clone().unwrap_or_default();
    if Platform::is_ssh_url(&url) {
        return Ok(super::ssh_form(&url));
    }
    let github = objects::github_repo(&url);
    if !github.is_empty() {
        return Ok(format!("ssh://git@github.com/{github}.git"));
    }
    Err("key `platform.repo_url` is missing; prenv serve pushes to the environments repository over SSH with its own deploy key (scripts/create-secrets prenv): set it to ssh://git@HOST/OWNER/REPO.git".into())
}

/// The host and port of an `ssh://` URL, for its `known_hosts` line.
pub fn push_host(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("ssh://");
    let host_port = rest.split('/').next().unwrap_or_default();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "22"));
    (host.to_string(), port.to_string())
}

/// A project's config as serve and watch read it in the cluster: the config `init` was given, with the
/// environments repository reached over SSH with the mounted deploy key, the git cache in the
/// default place (under /tmp) and, with Sealed Secrets, the mounted certificate. The sections
/// [`Config`] leaves out of its own serialization (they are not part of the render digest) are
/// added from theirs; `[platform]` is `init`'s alone.
fn cluster_config(config: &Config) -> Result<String> {
    let mut c = config.clone();
    c.git.url = Some(push_url(config).map_err(Error::Render)?);
    c.git.ssh_key = Some(format!("{GIT_HOME}/identity"));
    c.git.cache_dir = None;
    if c.secrets.backend == SecretsBackend::SealedSecrets {
        c.secrets.sealed_secrets_cert = Some(format!("{SEALED_CERT_DIR}/cert.pem"));
    }
    let err = |e: toml::ser::Error| Error::Render(format!("prenv.toml for the cluster: {e}"));
    let mut table = toml::Table::try_from(&c).map_err(err)?;
    let sections = [
        ("github", toml::Value::try_from(&c.github).map_err(err)?),
        ("lifecycle", toml::Value::try_from(&c.lifecycle).map_err(err)?),
        ("watch", toml::Value::try_from(&c.watch).map_err(err)?),
        ("git", toml::Value::try_from(&c.git).map_err(err)?),
        ("sync", toml::Value::try_from(&c.sync).map_err(err)?),
        ("capacity", toml::Value::try_from(&c.capacity).map_err(err)?),
    ];
    for (key, value) in sections {
        table.insert(key.into(), value);
    }
    let body = toml::to_string(&table).map_err(err)?;
    Ok(format!(
        "# Written by prenv init from prenv.toml: what prenv serve and prenv watch read in the cluster\n\
         # for project {}. Change prenv.toml and run prenv init again instead of editing this file.\n{body}",
        config.project_id
    ))
}

fn namespace() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": PRENV_NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }},
    })
}

fn labels(name: &str) -> Value {
    json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "prenv"})
}

/// One unprivileged container that may write only its mounts (restricted Pod Security).
fn container(config: &Config, args: &[&str], port: (&str, u16), resources: Value, env: Vec<Value>) -> Value {
    let probe = |period: u32| json!({"httpGet": {"path": "/healthz", "port": port.0}, "periodSeconds": period});
    let mut env_all = vec![json!({"name": "PRENV_LOG", "value": "info"})];
    env_all.extend(env);
    let mut full_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    full_args.extend(["--config-dir".to_string(), CONFIG_DIR.to_string()]);
    full_args.extend(["--listen".to_string(), format!("0.0.0.0:{}", port.1)]);
    json!({
        "name": "prenv",
        "image": config.platform.prenv_image(),
        "args": full_args,
        "env": env_all,
        "ports": [{"name": port.0, "containerPort": port.1}],
        "readinessProbe": probe(10),
        "livenessProbe": probe(20),
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}],
    })
}

fn secret_env(name: &str, secret: &str, optional: bool) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name, "optional": optional}}})
}

/// One replica (two would report the same transitions twice, or race each other's pushes), no
/// PodDisruptionBudget, replaced rather than rolled.
fn deployment(name: &str, mut pod: Value) -> Value {
    pod["securityContext"] = json!({
        "runAsNonRoot": true, "runAsUser": NONROOT, "runAsGroup": NONROOT, "fsGroup": NONROOT,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if let Some(volumes) = pod["volumes"].as_array_mut() {
        volumes.insert(0, json!({"name": "config", "configMap": {"name": CONFIG_MAP}}));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": PRENV_NAMESPACE, "labels": labels(name)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod},
        },
    })
}

fn service(name: &str, port: (&str, u16)) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": PRENV_NAMESPACE, "labels": labels(name)},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": port.0, "port": port.1, "targetPort": port.0}],
        },
    })
}

fn service_account(name: &str, token: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": PRENV_NAMESPACE},
        "automountServiceAccountToken": token,
    })
}

/// `prenv watch`: reads the engine's objects in the GitOps namespace — get, list, watch on
/// Kustomizations (Flux) or Applications (Argo CD) there, nothing else, nowhere else — and
/// writes only to GitHub.
fn watch(config: &Config) -> Vec<Value> {
    let (namespace, group, resource) = match config.engine {
        Engine::Flux => (&config.flux.namespace, "kustomize.toolkit.fluxcd.io", "kustomizations"),
        Engine::Argocd => (&config.argocd.namespace, "argoproj.io", "applications"),
    };
    let meta = json!({"name": WATCH, "namespace": namespace});
    let port = ("metrics", WATCH_PORT);
    let resources = json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}});
    let container = container(
        config,
        &["watch"],
        port,
        resources,
        vec![secret_env("PRENV_GITHUB_APP_KEY", GITHUB_SECRET, false)],
    );
    let pod = json!({"serviceAccountName": WATCH, "containers": [container], "volumes": []});
    vec![
        service_account(WATCH, true),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
            "rules": [{"apiGroups": [group], "resources": [resource], "verbs": ["get", "list", "watch"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WATCH},
            "subjects": [{"kind": "ServiceAccount", "name": WATCH, "namespace": PRENV_NAMESPACE}],
        }),
        deployment(WATCH, pod),
        service(WATCH, port),
    ]
}

/// `prenv serve`: no Kubernetes API access at all (it only commits to git), the webhook secret
/// and the GitHub App key from Secrets, the deploy key and known_hosts as files, its git cache in
/// an emptyDir, and an Ingress for `/webhook` alone.
fn serve(config: &Config) -> Vec<Value> {
    let port = ("http", SERVE_PORT);
    // Renders and git packs take more than watching; a burst of PRs is one sync.
    let resources = json!({"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}});
    let env = vec![
        secret_env("PRENV_WEBHOOK_SECRET", WEBHOOK_SECRET, false),
        secret_env("PRENV_GITHUB_APP_KEY", GITHUB_SECRET, false),
        json!({"name": "HOME", "value": GIT_HOME}),
        json!({"name": "XDG_CACHE_HOME", "value": "/tmp/cache"}),
        json!({"name": "XDG_DATA_HOME", "value": "/tmp/data"}),
    ];
    let mut container = container(config, &["serve"], port, resources, env);
    // Every key of the webhook Secret, so a project's own `PRENV_WEBHOOK_SECRET_<PROJECT>` added
    // there reaches serve without editing this Deployment.
    container["envFrom"] = json!([{"secretRef": {"name": WEBHOOK_SECRET}}]);
    let mut mounts = vec![
        json!({"name": "git", "mountPath": GIT_HOME, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    // 0440 with fsGroup: the nonroot user reads the key through its group, nobody else can.
    let mut volumes = vec![
        json!({"name": "git", "secret": {"secretName": GIT_SECRET, "defaultMode": 0o440, "items": [
            {"key": "identity", "path": "identity"},
            {"key": "known_hosts", "path": ".ssh/known_hosts"},
        ]}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}),
    ];
    if config.secrets.backend == SecretsBackend::SealedSecrets {
        mounts.push(json!({"name": "sealed-secrets-cert", "mountPath": SEALED_CERT_DIR, "readOnly": true}));
        volumes.push(json!({"name": "sealed-secrets-cert", "configMap": {"name": SEALED_CERT_CONFIG_MAP}}));
    }
    if let Some(all) = container["volumeMounts"].as_array_mut() {
        all.extend(mounts);
    }
    let pod = json!({
        "serviceAccountName": SERVE, "automountServiceAccountToken": false,
        "containers": [container], "volumes": volumes,
    });
    let host = config.platform.webhook_host(&config.domain);
    let mut ingress = objects::ingress(
        config,
        "prenv-webhook",
        PRENV_NAMESPACE,
        &host,
        WEBHOOK_PATH,
        (SERVE, SERVE_PORT),
    );
    ingress["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = json!("Exact");
    vec![
        service_account(SERVE, false),
        deployment(SERVE, pod),
        service(SERVE, port),
        ingress,
    ]
}

/// Nothing reaches prenv's pods but the ingress controller (serve's port, for `/webhook`) and
/// the monitoring namespaces (both ports, for `/metrics`). Egress stays open: GitHub's API and
/// git host, and the Kubernetes API, have no stable addresses to allow.
fn network_policies(config: &Config) -> Vec<Value> {
    let from = |namespaces: &[&str]| -> Value {
        namespaces
            .iter()
            .map(|ns| json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}))
            .collect()
    };
    let monitoring: Vec<&str> = config
        .network
        .allow_from_namespaces
        .iter()
        .map(String::as_str)
        .collect();
    let mut to_serve = vec![config.ingress.namespace.as_str()];
    to_serve.extend(&monitoring);
    let allow = |name: &str, port: u16, sources: &[&str]| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": PRENV_NAMESPACE},
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": from(sources), "ports": [{"protocol": "TCP", "port": port}]}],
            },
        })
    };
    vec![
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-ingress", "namespace": PRENV_NAMESPACE},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }),
        allow(SERVE, SERVE_PORT, &to_serve),
        allow(WATCH, WATCH_PORT, &monitoring),
    ]
}

/// A ServiceMonitor per daemon, in `monitoring` beside the Prometheus that reads them:
/// kube-prometheus-stack ignores `prometheus.io/scrape` annotations and, with
/// `serviceMonitorSelectorNilUsesHelmValues: false` (the pinned values), selects every
/// ServiceMonitor of every namespace (kube-prometheus-stack 66.3.0
/// `templates/prometheus/prometheus.yaml`: `serviceMonitorSelector: {}`,
/// `serviceMonitorNamespaceSelector: {}`).
fn service_monitors() -> Vec<Value> {
    [(SERVE, "http"), (WATCH, "metrics")]
        .into_iter()
        .map(|(name, port)| {
            json!({
                "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                "metadata": {"name": name, "namespace": MONITORING_NAMESPACE, "labels": labels(name)},
                "spec": {
                    "namespaceSelector": {"matchNames": [PRENV_NAMESPACE]},
                    "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                    "endpoints": [{"port": port, "path": "/metrics", "interval": "30s"}],
                },
            })
        })
        .collect()
}

/// The URL GitHub delivers `pull_request` events to: serve's `/webhook` on `platform.webhook_host`.
pub fn webhook_url(config: &Config) -> String {
    format!("https://{}{WEBHOOK_PATH}", config.platform.webhook_host(&config.domain))
}

/// The values of `scripts/platform.env` that `scripts/create-secrets prenv` needs.
pub fn env_values(config: &Config) -> Vec<(&'static str, String)> {
    let push = push_url(config).unwrap_or_default();
    let (push_host, push_port) = push_host(&push);
    let app = &config.github;
    vec![
        ("PRENV_NAMESPACE", PRENV_NAMESPACE.into()),
        ("PRENV_GITHUB_SECRET", GITHUB_SECRET.into()),
        ("SERVE_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        ("SERVE_GIT_SECRET", GIT_SECRET.into()),
        ("SERVE_WEBHOOK_URL", webhook_url(config)),
        ("SERVE_PUSH_URL", push.clone()),
        ("SERVE_PUSH_HOST", push_host),
        ("SERVE_PUSH_PORT", push_port),
        ("SERVE_PUSH_REPO", objects::github_repo(&push)),
        ("APP_REPO", app.repository.clone().unwrap_or_default()),
        (
            "GITHUB_APP_SET",
            (app.app_id.is_some() && app.installation_id.is_some()).to_string(),
        ),
        (
            "SEALED_CERT_CONFIG_MAP",
            match config.secrets.backend {
                SecretsBackend::SealedSecrets => SEALED_CERT_CONFIG_MAP.into(),
                SecretsBackend::Sops => String::new(),
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(engine: &str, extra: &str) -> Config {
        let text = format!(
            "project_id = \"shop\"\ndomain = \"preview.acme.dev\"\nimage = \"ghcr.io/acme/shop\"\nengine = \"{engine}\"\n{extra}"
        );
        Config::parse(&text, "test").unwrap()
    }

    #[test]
    fn serve_and_watch_read_every_projects_config_from_one_config_map_directory() {
        let config = config("flux", "[platform]\nrepo_url = \"git@github.com:acme/envs.git\"\n");
        let tree = files(&config).unwrap();
        assert!(tree.get("infrastructure/prenv/projects/shop.toml").is_some());
        let kustomization =
            String::from_utf8(tree.get("infrastructure/prenv/kustomization.yaml").unwrap().to_vec()).unwrap();
        assert!(kustomization.contains("- projects/shop.toml"), "{kustomization}");
        for docs in [watch(&config), serve(&config)] {
            let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
            let pod = &deployment["spec"]["template"]["spec"];
            let args: Vec<&str> = pod["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(&args[1..3], ["--config-dir", CONFIG_DIR], "{args:?}");
            assert_eq!(pod["volumes"][0]["configMap"]["name"], CONFIG_MAP);
        }
    }

    #[test]
    fn serve_pushes_over_ssh_whatever_url_the_engine_reads() {
        for (engine, extra, want) in [
            (
                "flux",
                "[platform]\nrepo_url = \"git@github.com:acme/envs.git\"\n",
                "ssh://git@github.com/acme/envs.git",
            ),
            (
                "argocd",
                "[argocd]\nrepo_url = \"https://github.com/acme/envs.git\"\n",
                "ssh://git@github.com/acme/envs.git",
            ),
            (
                "argocd",
                "[argocd]\nrepo_url = \"https://github.com/acme/envs\"\n",
                "ssh://git@github.com/acme/envs.git",
            ),
            (
                "argocd",
                "[argocd]\nrepo_url = \"ssh://git@git.acme.dev:2222/envs.git\"\n",
                "ssh://git@git.acme.dev:2222/envs.git",
            ),
            (
                "argocd",
                "[git]\nurl = \"git@git.acme.dev:envs.git\"\n[argocd]\nrepo_url = \"https://git.acme.dev/envs.git\"\n",
                "ssh://git@git.acme.dev/envs.git",
            ),
        ] {
            assert_eq!(push_url(&config(engine, extra)).as_deref(), Ok(want), "{extra}");
        }
        let err = push_url(&config(
            "argocd",
            "[argocd]\nrepo_url = \"https://git.acme.dev/envs.git\"\n",
        ))
        .unwrap_err();
        assert!(err.contains("key `platform.repo_url` is missing"), "{err}");
    }

    #[test]
    fn the_host_and_port_of_a_push_url_are_found_without_the_user() {
        for (url, host, port) in [
            ("ssh://git@github.com/acme/envs.git", "github.com", "22"),
            ("ssh://git@git.acme.dev:2222/envs.git", "git.acme.dev", "2222"),
            ("ssh://git.acme.dev/envs.git", "git.acme.dev", "22"),
        ] {
            assert_eq!(push_host(url), (host.to_string(), port.to_string()), "{url}");
        }
    }
}
