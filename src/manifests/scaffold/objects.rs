//! The parts of the platform that come from `prenv.toml` rather than from the embedded files: the
//! Let's Encrypt issuer and the wildcard certificate, the Ingresses of Grafana and of Flux's
//! webhook Receiver, the runner scale set and the runners' rights, Alertmanager's receivers, and
//! `scripts/platform.env`.

use serde_json::{Value, json};

use super::{GRAFANA_SECRET, RECEIVER_NAME, RECEIVER_SECRET, WILDCARD_SECRET};
use crate::error::{Error, Result};
use crate::manifests::yaml;
use crate::model::config::{Config, DnsProvider, Engine};
use crate::model::tree::Tree;

/// Where the runner pods run, and the ServiceAccount they run as.
pub const RUNNER_NAMESPACE: &str = "arc-runners";
pub const RUNNER_SERVICE_ACCOUNT: &str = "preview-runner";
/// The Secret with the GitHub App the runner scale set registers with.
pub const RUNNER_SECRET: &str = "arc-github-app";
/// The ClusterIssuer of the wildcard certificate (and of `ingress.cluster_issuer`, if set so).
pub const ISSUER: &str = "letsencrypt";
/// The controller release of actions-runner-controller (infrastructure/runners/controller.yaml).
const ARC_RELEASE: &str = "arc";
const ARC_NAMESPACE: &str = "arc-systems";
/// The Docker daemon of the runner pods: a pinned major version, never `latest`.
const DIND_IMAGE: &str = "docker:27-dind";

/// The embedded release of kube-prometheus-stack, whose values get Alertmanager's receivers.
const KPS_FILE: &str = "infrastructure/monitoring/kube-prometheus-stack.yaml";
/// Where the Prometheus Operator mounts each Secret of `alertmanagerSpec.secrets` in the
/// Alertmanager container (prometheus-operator v0.78.2 `pkg/alertmanager/statefulset.go`,
/// `secretsDir`; API doc of `AlertmanagerSpec.secrets`).
const ALERTMANAGER_SECRETS_DIR: &str = "/etc/alertmanager/secrets";
/// The receiver every alert goes to, and the one that drops (the Watchdog heartbeat; every alert
/// when no receiver is configured).
const TEAM_RECEIVER: &str = "platform-team";
const NULL_RECEIVER: &str = "null";

/// The generated files of `infrastructure/`, by path.
pub fn infrastructure(config: &Config) -> Result<Tree> {
    let grafana_host = config.platform.grafana_host(&config.domain);
    let grafana = ingress(
        config,
        "grafana",
        "monitoring",
        &grafana_host,
        "/",
        ("kube-prometheus-stack-grafana", 80),
    );
    let files = [
        (
            "certificates/cluster-issuer.yaml",
            yaml::to_string(&cluster_issuer(config))?,
        ),
        (
            "certificates/wildcard-certificate.yaml",
            yaml::to_string(&certificate(config))?,
        ),
        ("monitoring/grafana-ingress.yaml", yaml::to_string(&grafana)?),
        (
            "runners/runner-scale-set.yaml",
            yaml::to_string(&runner_scale_set(config))?,
        ),
        ("runners/runner-rbac.yaml", yaml::to_multi_doc(&runner_rbac(config))?),
    ];
    let mut tree = Tree::new();
    for (path, text) in files {
        tree.insert(format!("infrastructure/{path}"), text)?;
    }
    Ok(tree)
}

/// Alertmanager's configuration from `[platform.alerts]`, into the values of the embedded
/// kube-prometheus-stack release (kube-prometheus-stack 66.3.0 `values.yaml` `alertmanager.config`,
/// which `templates/alertmanager/secret.yaml` renders as the configuration Secret). Credentials
/// stay out of git: Slack's webhook URL and the SMTP password are read from files of the Secret
/// `alerts.secret`, mounted by `alertmanagerSpec.secrets` (`*_file` keys, Alertmanager
/// `config/config.go`). The file's opening comment is kept; the values are rewritten as data.
pub fn route_alerts(config: &Config, tree: &mut Tree) -> Result<()> {
    let bytes = tree
        .get(KPS_FILE)
        .ok_or_else(|| Error::Render(format!("the embedded platform lacks {KPS_FILE}")))?;
    let text = String::from_utf8_lossy(bytes).to_string();
    let mut docs = super::argocd::parse_docs(KPS_FILE, bytes)?;
    let release = docs
        .iter_mut()
        .find(|d| d["kind"] == "HelmRelease")
        .ok_or_else(|| Error::Render(format!("{KPS_FILE} holds no HelmRelease")))?;
    let alertmanager = &mut release["spec"]["values"]["alertmanager"];
    alertmanager["config"] = alertmanager_config(config);
    // A Secret that does not exist would keep the Alertmanager pod from starting.
    if config.platform.alerts.needs_secret() {
        alertmanager["alertmanagerSpec"]["secrets"] = json!([config.platform.alerts.secret()]);
    }
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    tree.insert(KPS_FILE, format!("{header}{}", yaml::to_multi_doc(&docs)?))
}

/// The Alertmanager configuration: every alert to the configured receivers, grouped by alert and
/// namespace; the chart's inhibition (a critical alert mutes the warnings of the same alert and
/// namespace) and its Watchdog heartbeat to nowhere.
pub fn alertmanager_config(config: &Config) -> Value {
    let alerts = &config.platform.alerts;
    let file = |key: &str| format!("{ALERTMANAGER_SECRETS_DIR}/{}/{key}", alerts.secret());
    let mut global = json!({"resolve_timeout": "5m"});
    let mut team = json!({"name": TEAM_RECEIVER});
    if let Some(channel) = &alerts.slack_channel {
        global["slack_api_url_file"] = json!(file("slack-webhook-url"));
        team["slack_configs"] = json!([{"channel": channel, "send_resolved": true}]);
    }
    if !alerts.email_to.is_empty() {
        global["smtp_from"] = json!(alerts.email_from);
        global["smtp_smarthost"] = json!(alerts.smtp_smarthost);
        global["smtp_require_tls"] = json!(true);
        if let Some(user) = &alerts.smtp_username {
            global["smtp_auth_username"] = json!(user);
            global["smtp_auth_password_file"] = json!(file("smtp-password"));
        }
        team["email_configs"] = json!([{"to": alerts.email_to.join(", "), "send_resolved": true}]);
    }
    let (default, receivers) = match alerts.any() {
        true => (TEAM_RECEIVER, vec![json!({"name": NULL_RECEIVER}), team]),
        false => (NULL_RECEIVER, vec![json!({"name": NULL_RECEIVER})]),
    };
    json!({
        "global": global,
        "route": {
            "receiver": default,
            "group_by": ["alertname", "namespace"],
            "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
            "routes": [{"receiver": NULL_RECEIVER, "matchers": ["alertname = \"Watchdog\""]}],
        },
        "inhibit_rules": [
            {"source_matchers": ["severity = critical"], "target_matchers": ["severity =~ warning|info"], "equal": ["namespace", "alertname"]},
            {"source_matchers": ["severity = warning"], "target_matchers": ["severity = info"], "equal": ["namespace", "alertname"]},
        ],
        "receivers": receivers,
        "templates": ["/etc/alertmanager/config/*.tmpl"],
    })
}

/// Let's Encrypt through a DNS-01 challenge (the only challenge a wildcard certificate can use),
/// solved with the configured provider's API.
fn cluster_issuer(config: &Config) -> Value {
    let p = &config.platform;
    let secret = p.dns_secret();
    let solver = match p.dns_provider.unwrap_or(DnsProvider::Cloudflare) {
        DnsProvider::Cloudflare => json!({"cloudflare": {"apiTokenSecretRef": {"name": secret, "key": "api-token"}}}),
        DnsProvider::Digitalocean => json!({"digitalocean": {"tokenSecretRef": {"name": secret, "key": "api-token"}}}),
        DnsProvider::Route53 => json!({"route53": {
            "region": p.dns_region.clone().unwrap_or_default(),
            "accessKeyIDSecretRef": {"name": secret, "key": "access-key-id"},
            "secretAccessKeySecretRef": {"name": secret, "key": "secret-access-key"},
        }}),
    };
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": ISSUER},
        "spec": {"acme": {
            "server": p.acme_server(),
            "email": p.acme_email.clone().unwrap_or_default(),
            "privateKeySecretRef": {"name": "letsencrypt-account"},
            "solvers": [{"dns01": solver}],
        }},
    })
}

fn certificate(config: &Config) -> Value {
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "preview-wildcard", "namespace": "kube-system"},
        "spec": {
            "secretName": WILDCARD_SECRET,
            "dnsNames": [format!("*.{}", config.domain)],
            "issuerRef": {"kind": "ClusterIssuer", "name": ISSUER},
        },
    })
}

/// An HTTPS Ingress for `host` with no certificate of its own: Traefik serves the wildcard (its
/// default TLSStore), as for every preview.
pub(super) fn ingress(
    config: &Config,
    name: &str,
    namespace: &str,
    host: &str,
    path: &str,
    (service, port): (&str, u16),
) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ingressClassName": config.ingress.class,
            "tls": [{"hosts": [host]}],
            "rules": [{"host": host, "http": {"paths": [{
                "path": path, "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": port}}},
            }]}}],
        },
    })
}

/// Flux's webhook Receiver — a push to the environments repository reconciles at once instead of
/// at the next interval — and the Ingress that exposes notification-controller's `webhook-receiver`
/// Service (port 80, fluxcd/notification-controller `config/manager/service.yaml`) under `/hook/`.
/// Flux's own NetworkPolicy `allow-webhooks` admits it from every namespace (fluxcd/flux2
/// `manifests/policies/allow-webhooks.yaml`).
pub fn receiver(config: &Config) -> Vec<Value> {
    let flux = &config.flux;
    let mut sources =
        vec![json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": flux.source})];
    if flux.source != flux.namespace {
        // bootstrap's own GitRepository, named after the namespace: infrastructure changes too.
        sources.push(
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": flux.namespace}),
        );
    }
    let host = config.platform.receiver_host(&config.domain);
    vec![
        json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1",
            "kind": "Receiver",
            "metadata": {"name": RECEIVER_NAME, "namespace": flux.namespace},
            "spec": {"type": "github", "events": ["ping", "push"], "secretRef": {"name": RECEIVER_SECRET}, "resources": sources},
        }),
        ingress(
            config,
            "flux-webhook",
            &flux.namespace,
            &host,
            "/hook/",
            ("webhook-receiver", 80),
        ),
    ]
}

/// The ephemeral runner scale set (`runs-on: preview-runners`): every job a fresh pod, deleted
/// afterwards. Docker-in-Docker is spelled out instead of `containerMode: dind`, whose daemon
/// container the chart writes with no resources (gha-runner-scale-set 0.10.1
/// `templates/_helpers.tpl`, `dind-container`). `controllerServiceAccount` is set because the
/// chart otherwise finds the controller with Helm's `lookup`, which `helm template` (Argo CD)
/// cannot do; the controller chart names its ServiceAccount `<release>-gha-rs-controller`
/// (`gha-runner-scale-set-controller.serviceAccountName`).
fn runner_scale_set(config: &Config) -> Value {
    let image = config.platform.runner_image.clone().unwrap_or_default();
    let limits = |memory: &str| json!({"limits": {"memory": memory}});
    let mounts = |extra: &[(&str, &str)]| -> Value {
        let mut all = vec![json!({"name": "work", "mountPath": "/home/runner/_work"})];
        all.extend(extra.iter().map(|(n, p)| json!({"name": n, "mountPath": p})));
        Value::Array(all)
    };
    json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": "preview-runners", "namespace": RUNNER_NAMESPACE},
        "spec": {
            "interval": "1h",
            "dependsOn": [{"name": ARC_RELEASE, "namespace": ARC_NAMESPACE}],
            "chart": {"spec": {"chart": "gha-runner-scale-set", "version": "0.10.1", "sourceRef": {"kind": "HelmRepository", "name": "actions-runner-controller", "namespace": "flux-system"}}},
            "values": {
                "githubConfigUrl": config.platform.runners_github_url.clone().unwrap_or_default(),
                "githubConfigSecret": RUNNER_SECRET,
                "runnerScaleSetName": "preview-runners",
                "minRunners": 0,
                "maxRunners": 5,
                "controllerServiceAccount": {"namespace": ARC_NAMESPACE, "name": format!("{ARC_RELEASE}-gha-rs-controller")},
                "listenerTemplate": {"spec": {"containers": [{"name": "listener", "resources": limits("128Mi")}]}},
                "template": {"spec": {
                    "serviceAccountName": RUNNER_SERVICE_ACCOUNT,
                    "initContainers": [{
                        "name": "init-dind-externals", "image": image,
                        "command": ["cp", "-r", "/home/runner/externals/.", "/home/runner/tmpDir/"],
                        "volumeMounts": [{"name": "dind-externals", "mountPath": "/home/runner/tmpDir"}],
                        "resources": limits("64Mi"),
                    }],
                    "containers": [
                        {
                            "name": "runner", "image": image, "command": ["/home/runner/run.sh"],
                            "env": [{"name": "DOCKER_HOST", "value": "unix:///var/run/docker.sock"}],
                            "volumeMounts": mounts(&[("dind-sock", "/var/run")]),
                            "resources": limits("2Gi"),
                        },
                        {
                            // The Docker daemon must run privileged: see the README on runner rights.
                            "name": "dind", "image": DIND_IMAGE,
                            "args": ["dockerd", "--host=unix:///var/run/docker.sock", "--group=$(DOCKER_GROUP_GID)"],
                            "env": [{"name": "DOCKER_GROUP_GID", "value": "123"}],
                            "securityContext": {"privileged": true},
                            "volumeMounts": mounts(&[("dind-sock", "/var/run"), ("dind-externals", "/home/runner/externals")]),
                            "resources": limits("2Gi"),
                        },
                    ],
                    "volumes": [{"name": "work", "emptyDir": {}}, {"name": "dind-sock", "emptyDir": {}}, {"name": "dind-externals", "emptyDir": {}}],
                }},
            },
        },
    })
}

/// What a runner job may do in the cluster, and nothing more:
/// - everywhere: read the state of workloads, Services, Ingresses, events and database Clusters
///   (no Secrets, no ConfigMaps, no logs: they can hold credentials of other tenants);
/// - in the GitOps namespace: read the Flux Kustomizations (or Argo CD Applications), so a job
///   can wait until its preview is ready;
/// - in each of `platform.runner_namespaces`, and nowhere else: create, change and delete
///   workloads and their configuration (a deploy). Such a namespace is created here and never
///   pruned.
///
/// No RBAC objects, no escalate/bind/impersonate, no write outside those namespaces.
fn runner_rbac(config: &Config) -> Vec<Value> {
    let read = ["get", "list", "watch"];
    let subject = json!([{"kind": "ServiceAccount", "name": RUNNER_SERVICE_ACCOUNT, "namespace": RUNNER_NAMESPACE}]);
    let role = |kind: &str, name: &str, namespace: Option<&str>, rules: Value| {
        let mut meta = json!({"name": name});
        if let Some(ns) = namespace {
            meta["namespace"] = json!(ns);
        }
        let binding = format!("{kind}Binding");
        [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta.clone(), "rules": rules}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding, "metadata": meta,
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}, "subjects": subject}),
        ]
    };
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": RUNNER_SERVICE_ACCOUNT, "namespace": RUNNER_NAMESPACE},
    })];
    out.extend(role("ClusterRole", "preview-runner-read", None, json!([
        {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "endpoints", "events", "persistentvolumeclaims"], "verbs": read},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets"], "verbs": read},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": read},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": read},
        {"apiGroups": ["postgresql.cnpg.io"], "resources": ["clusters"], "verbs": read},
    ])));
    let (gitops_ns, group, resource) = match config.engine {
        Engine::Flux => (&config.flux.namespace, "kustomize.toolkit.fluxcd.io", "kustomizations"),
        Engine::Argocd => (&config.argocd.namespace, "argoproj.io", "applications"),
    };
    out.extend(role(
        "Role",
        "preview-runner-status",
        Some(gitops_ns),
        json!([{"apiGroups": [group], "resources": [resource], "verbs": read}]),
    ));
    let write = ["get", "list", "watch", "create", "update", "patch", "delete"];
    for ns in &config.platform.runner_namespaces {
        out.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "annotations": {
                "kustomize.toolkit.fluxcd.io/prune": "disabled",
                "argocd.argoproj.io/sync-options": "Delete=false",
            }},
        }));
        out.extend(role("Role", "preview-runner-deploy", Some(ns), json!([
            {"apiGroups": [""], "resources": ["pods", "services", "configmaps", "secrets", "persistentvolumeclaims"], "verbs": write},
            {"apiGroups": [""], "resources": ["pods/log", "events"], "verbs": read},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets"], "verbs": write},
            {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": write},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": write},
        ])));
    }
    out
}

/// `scripts/platform.env`: the values from `prenv.toml` the bootstrap scripts need, as shell
/// assignments (single-quoted), so the scripts and the manifests never disagree.
pub fn platform_env(config: &Config) -> Result<String> {
    let p = &config.platform;
    let (engine, namespace, repo, branch) = match config.engine {
        Engine::Flux => (
            "flux",
            &config.flux.namespace,
            super::flux_repo_url(config).unwrap_or_default(),
            &config.git.branch,
        ),
        Engine::Argocd => (
            "argocd",
            &config.argocd.namespace,
            config.argocd.repo_url.clone().unwrap_or_default(),
            &config.argocd.target_revision,
        ),
    };
    let values = [
        ("PRENV_ENGINE", engine.to_string()),
        ("FLUX_VERSION", super::FLUX_VERSION.into()),
        ("ARGOCD_VERSION", super::ARGOCD_VERSION.into()),
        ("GITOPS_NAMESPACE", namespace.clone()),
        ("SOPS_SECRET", config.flux.sops_secret.clone()),
        ("GITHUB_REPO", github_repo(&repo)),
        ("REPO_URL", repo),
        ("REPO_BRANCH", branch.clone()),
        (
            "DNS_PROVIDER",
            p.dns_provider.map(DnsProvider::name).unwrap_or_default().into(),
        ),
        ("DNS_SECRET", p.dns_secret().into()),
        ("RECEIVER_NAME", RECEIVER_NAME.into()),
        ("RECEIVER_SECRET", RECEIVER_SECRET.into()),
        ("RECEIVER_HOST", p.receiver_host(&config.domain)),
        ("GRAFANA_HOST", p.grafana_host(&config.domain)),
        ("GRAFANA_SECRET", GRAFANA_SECRET.into()),
        ("RUNNER_NAMESPACE", RUNNER_NAMESPACE.into()),
        ("RUNNER_SECRET", RUNNER_SECRET.into()),
        ("ALERTS_SECRET", p.alerts.secret().into()),
        ("ALERTS_SLACK", p.alerts.slack_channel.is_some().to_string()),
        (
            "ALERTS_SMTP_AUTH",
            (p.alerts.needs_secret() && p.alerts.smtp_username.is_some()).to_string(),
        ),
    ];
    let values = values.into_iter().chain(super::prenv::env_values(config));
    let mut out = String::from(
        "# shellcheck shell=bash disable=SC2034\n\
         # Written by prenv init from prenv.toml: the values the scripts here need. Change prenv.toml\n\
         # and run prenv init again instead of editing this file.\n",
    );
    for (name, value) in values {
        out.push_str(&format!("{name}='{}'\n", value.replace('\'', "'\\''")));
    }
    Ok(out)
}

/// `owner/name` of a github.com repository URL (SSH or HTTPS), for `gh`; empty for other hosts.
pub(super) fn github_repo(url: &str) -> String {
    let rest = url.trim_start_matches("ssh://").trim_start_matches("https://");
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    let Some(path) = rest
        .strip_prefix("github.com/")
        .or_else(|| rest.strip_prefix("github.com:"))
    else {
        return String::new();
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    if path.split('/').count() == 2 {
        path.to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::github_repo;

    #[test]
    fn github_repositories_are_found_in_every_url_form() {
        for url in [
            "ssh://git@github.com/acme/envs.git",
            "git@github.com:acme/envs.git",
            "https://github.com/acme/envs.git",
            "https://github.com/acme/envs",
        ] {
            assert_eq!(github_repo(url), "acme/envs", "{url}");
        }
        assert_eq!(github_repo("ssh://git@gitlab.com/acme/envs.git"), "");
        assert_eq!(github_repo("https://github.com/acme"), "");
    }
}
