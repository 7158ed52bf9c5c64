//! prenv in the cluster, as `prenv init` scaffolds it for both engines (`infrastructure/prenv`
//! and `infrastructure/prenv-monitoring`): the stages build with kubectl kustomize, `prenv watch`
//! may only read the objects it watches, `prenv serve` has no Kubernetes API access and is reached
//! from outside only at `/webhook`, both run locked down with probes and limits, both are scraped
//! through a ServiceMonitor, and the prenv.toml they read is the config `init` was given.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_yaml::Value;

/// The two example configs, with the namespace and resource `prenv watch` reads in each.
const ENGINES: &[(&str, &str, &str, &str)] = &[
    (
        "prenv.toml",
        "flux-system",
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
    ),
    ("prenv-argocd.toml", "argocd", "argoproj.io", "applications"),
];

fn scaffold(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = repo_root().join("examples").join(config);
    let out = prenv(&["--config", s(&path), "init", "--repo", s(dir.path())]);
    assert!(out.status.success(), "{config}: {}", text(&out.stderr));
    dir
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some(kind) && str_at(o, &["metadata", "name"]) == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn prenv_objects(root: &Path) -> Vec<Value> {
    kustomize(&root.join("infrastructure/prenv"))
}

#[test]
fn the_watcher_may_only_read_the_objects_it_watches_in_their_namespace() {
    for (config, namespace, group, resource) in ENGINES {
        let dir = scaffold(config);
        let objects = prenv_objects(dir.path());
        let kinds: Vec<&str> = objects.iter().filter_map(|o| str_at(o, &["kind"])).collect();
        assert!(
            !kinds.iter().any(|k| k.starts_with("Cluster")),
            "{config}: cluster-wide RBAC in {kinds:?}"
        );
        let roles: Vec<&Value> = objects
            .iter()
            .filter(|o| str_at(o, &["kind"]) == Some("Role"))
            .collect();
        assert_eq!(roles.len(), 1, "{config}: one Role, the watcher's");
        let role = roles[0];
        assert_eq!(str_at(role, &["metadata", "namespace"]), Some(*namespace), "{config}");
        let rules = role["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), 1, "{config}");
        assert_eq!(strings(&rules[0]["apiGroups"]), [*group], "{config}");
        assert_eq!(strings(&rules[0]["resources"]), [*resource], "{config}");
        assert_eq!(
            strings(&rules[0]["verbs"]),
            ["get", "list", "watch"],
            "{config}: read-only"
        );
        let binding = find(&objects, "RoleBinding", "prenv-watcher");
        assert_eq!(str_at(binding, &["metadata", "namespace"]), Some(*namespace));
        assert_eq!(str_at(binding, &["roleRef", "name"]), Some("prenv-watcher"));
        assert_eq!(str_at(binding, &["subjects", "0", "name"]), Some("prenv-watcher"));
        assert_eq!(str_at(binding, &["subjects", "0", "namespace"]), Some("prenv-system"));
        assert_eq!(
            objects
                .iter()
                .filter(|o| str_at(o, &["kind"]) == Some("RoleBinding"))
                .count(),
            1,
            "{config}: serve is bound to nothing"
        );
    }
}

#[test]
fn serve_and_watch_run_locked_down_with_probes_limits_and_one_replica() {
    for (config, ..) in ENGINES {
        let dir = scaffold(config);
        let objects = prenv_objects(dir.path());
        for (name, command, port) in [("prenv-serve", "serve", 8080), ("prenv-watcher", "watch", 9090)] {
            let deployment = find(&objects, "Deployment", name);
            assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1), "{config} {name}");
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(str_at(pod, &["serviceAccountName"]), Some(name));
            assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
            assert_eq!(
                pod["securityContext"]["runAsUser"].as_u64(),
                Some(65532),
                "the image's user"
            );
            let c = &pod["containers"][0];
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
            assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
            let args = strings(&c["args"]);
            assert!(args.contains(&command), "{name}: {args:?}");
            assert!(args.contains(&format!("0.0.0.0:{port}").as_str()), "{name}: {args:?}");
            for probe in ["readinessProbe", "livenessProbe"] {
                assert_eq!(
                    str_at(c, &[probe, "httpGet", "path"]),
                    Some("/healthz"),
                    "{name} {probe}"
                );
            }
            for limit in ["cpu", "memory"] {
                assert!(
                    str_at(c, &["resources", "limits", limit]).is_some(),
                    "{name}: no {limit} limit"
                );
            }
            let image = str_at(c, &["image"]).unwrap();
            assert_eq!(image, format!("ghcr.io/acme/prenv:v{}", env!("CARGO_PKG_VERSION")));
        }
        assert!(
            !objects
                .iter()
                .any(|o| str_at(o, &["kind"]) == Some("PodDisruptionBudget")),
            "{config}: a PodDisruptionBudget on one replica blocks node drains"
        );
        // serve never talks to the Kubernetes API: no token is mounted.
        let serve = &find(&objects, "Deployment", "prenv-serve")["spec"]["template"]["spec"];
        assert_eq!(serve["automountServiceAccountToken"].as_bool(), Some(false));
        // It writes only its git cache, to the emptyDir at /tmp.
        let mounts = serve["containers"][0]["volumeMounts"].as_sequence().unwrap();
        let tmp = mounts
            .iter()
            .find(|m| str_at(m, &["mountPath"]) == Some("/tmp"))
            .unwrap();
        let volume = serve["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == tmp["name"])
            .unwrap();
        assert!(volume["emptyDir"].is_mapping(), "{volume:?}");
    }
}

#[test]
fn only_the_webhook_path_is_exposed_on_a_host_under_the_wildcard() {
    for (config, ..) in ENGINES {
        let dir = scaffold(config);
        let objects = prenv_objects(dir.path());
        let ingresses: Vec<&Value> = objects
            .iter()
            .filter(|o| str_at(o, &["kind"]) == Some("Ingress"))
            .collect();
        assert_eq!(ingresses.len(), 1, "{config}: one Ingress, serve's");
        let spec = &ingresses[0]["spec"];
        assert_eq!(str_at(spec, &["ingressClassName"]), Some("traefik"));
        let host = "prenv-webhook.preview.example.com";
        assert_eq!(strings(&spec["tls"][0]["hosts"]), [host]);
        assert!(
            spec["tls"][0]["secretName"].is_null(),
            "the wildcard (Traefik's default TLSStore)"
        );
        let rules = spec["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(str_at(&rules[0], &["host"]), Some(host));
        let paths = rules[0]["http"]["paths"].as_sequence().unwrap();
        assert_eq!(paths.len(), 1, "{config}: {paths:?}");
        assert_eq!(str_at(&paths[0], &["path"]), Some("/webhook"));
        assert_eq!(
            str_at(&paths[0], &["pathType"]),
            Some("Exact"),
            "not /webhook/… nor /metrics"
        );
        assert_eq!(str_at(&paths[0], &["backend", "service", "name"]), Some("prenv-serve"));
        let env = std::fs::read_to_string(dir.path().join("scripts/platform.env")).unwrap();
        assert!(
            env.contains(&format!("SERVE_WEBHOOK_URL='https://{host}/webhook'")),
            "{env}"
        );
        // Nothing but the ingress controller and monitoring reach the pods.
        let deny = find(&objects, "NetworkPolicy", "default-deny-ingress");
        assert!(deny["spec"]["podSelector"].as_mapping().unwrap().is_empty());
        let serve = find(&objects, "NetworkPolicy", "prenv-serve");
        let from: Vec<&str> = serve["spec"]["ingress"][0]["from"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|f| str_at(f, &["namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"]))
            .collect();
        assert_eq!(from, ["kube-system", "monitoring"], "{config}");
    }
}

#[test]
fn prometheus_scrapes_both_through_service_monitors_on_their_named_ports() {
    for (config, ..) in ENGINES {
        let dir = scaffold(config);
        let objects = prenv_objects(dir.path());
        let monitors = kustomize(&dir.path().join("infrastructure/prenv-monitoring"));
        assert_eq!(monitors.len(), 2, "{config}");
        for monitor in &monitors {
            assert_eq!(str_at(monitor, &["kind"]), Some("ServiceMonitor"));
            assert_eq!(
                strings(&monitor["spec"]["namespaceSelector"]["matchNames"]),
                ["prenv-system"]
            );
            let app = str_at(monitor, &["spec", "selector", "matchLabels", "app.kubernetes.io/name"]).unwrap();
            let service = find(&objects, "Service", app);
            assert_eq!(
                str_at(service, &["metadata", "labels", "app.kubernetes.io/name"]),
                Some(app),
                "the monitor selects the Service by its labels"
            );
            let port = str_at(monitor, &["spec", "endpoints", "0", "port"]).unwrap();
            assert!(
                service["spec"]["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|p| str_at(p, &["name"]) == Some(port)),
                "{app}: no port {port}"
            );
            assert_eq!(str_at(monitor, &["spec", "endpoints", "0", "path"]), Some("/metrics"));
        }
    }
}

#[test]
fn the_cluster_prenv_toml_is_the_given_config_pushing_over_ssh_with_the_mounted_key() {
    for (config, ..) in ENGINES {
        let dir = scaffold(config);
        let objects = prenv_objects(dir.path());
        let map = objects
            .iter()
            .find(|o| str_at(o, &["kind"]) == Some("ConfigMap"))
            .unwrap();
        let name = str_at(map, &["metadata", "name"]).unwrap();
        assert!(
            name.starts_with("prenv-config-"),
            "a hashed name rolls the pods on a change: {name}"
        );
        let toml = str_at(map, &["data", "shop.toml"]).unwrap();
        let cluster = prenv::model::config::Config::parse(toml, "the cluster's prenv.toml").unwrap();
        let given = std::fs::read_to_string(repo_root().join("examples").join(config)).unwrap();
        let given = prenv::model::config::Config::parse(&given, config).unwrap();
        assert_eq!(
            cluster.render_digest(),
            given.render_digest(),
            "{config}: renders the same"
        );
        assert_eq!(cluster.github.repository, given.github.repository);
        assert_eq!(cluster.lifecycle.pin_label, given.lifecycle.pin_label);
        assert_eq!(cluster.watch.status_context, given.watch.status_context);
        assert_eq!(
            cluster.git.url.as_deref(),
            Some("ssh://git@github.com/acme/shop-environments.git"),
            "{config}"
        );
        assert_eq!(cluster.git.ssh_key.as_deref(), Some("/etc/prenv-git/identity"));
        for (kind, name) in [("Deployment", "prenv-serve"), ("Deployment", "prenv-watcher")] {
            let volumes = &find(&objects, kind, name)["spec"]["template"]["spec"]["volumes"];
            assert!(
                volumes
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|v| str_at(v, &["configMap", "name"]) == Some(name_of(map))),
                "{name} mounts {}",
                name_of(map)
            );
        }
    }
}

fn name_of(o: &Value) -> &str {
    str_at(o, &["metadata", "name"]).unwrap()
}

#[test]
fn with_sealed_secrets_serve_seals_with_the_mounted_public_certificate() {
    // The Argo CD example seals its credentials (Argo CD cannot decrypt SOPS).
    let dir = scaffold("prenv-argocd.toml");
    let repo = dir.path().to_path_buf();
    let objects = prenv_objects(&repo);
    let map = objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some("ConfigMap"))
        .unwrap();
    let cluster = prenv::model::config::Config::parse(str_at(map, &["data", "shop.toml"]).unwrap(), "cluster").unwrap();
    let cert = cluster.secrets.sealed_secrets_cert.clone().unwrap();
    let pod = &find(&objects, "Deployment", "prenv-serve")["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| str_at(m, &["mountPath"]).is_some_and(|p| cert.starts_with(&format!("{p}/"))))
        .unwrap_or_else(|| panic!("{cert} is on no mount"));
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        str_at(volume, &["configMap", "name"]),
        Some("prenv-sealed-secrets-cert")
    );
    let env = std::fs::read_to_string(repo.join("scripts/platform.env")).unwrap();
    assert!(
        env.contains("SEALED_CERT_CONFIG_MAP='prenv-sealed-secrets-cert'"),
        "{env}"
    );
    let secrets = Command::new("bash")
        .arg(repo.join("scripts/create-secrets"))
        .args(["--dry-run", "prenv"])
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(secrets.status.success(), "{}", text(&secrets.stderr));
    let printed = text(&secrets.stdout);
    assert!(printed.contains("+ kubeseal --fetch-cert"), "{printed}");
    assert!(
        printed.contains("-n prenv-system create configmap prenv-sealed-secrets-cert --from-file=cert.pem="),
        "{printed}"
    );
}
