//! The watcher's own manifests: they build, run `prenv watch` locked down, and may only read the
//! objects it watches.

mod common;

use common::*;

#[test]
fn the_watcher_manifests_build_and_grant_only_read_access_to_watched_objects() {
    for (dir, namespace, group, resource) in [
        (
            "deploy/watcher",
            "flux-system",
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
        ),
        ("deploy/watcher-argocd", "argocd", "argoproj.io", "applications"),
    ] {
        let objects = kustomize(&repo_root().join(dir));
        let kinds: Vec<&str> = objects.iter().filter_map(|o| str_at(o, &["kind"])).collect();
        assert!(
            !kinds.iter().any(|k| k.starts_with("Cluster")),
            "{dir}: cluster-wide RBAC in {kinds:?}"
        );
        let role = objects.iter().find(|o| str_at(o, &["kind"]) == Some("Role")).unwrap();
        assert_eq!(str_at(role, &["metadata", "namespace"]), Some(namespace), "{dir}");
        let rules = role["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), 1, "{dir}");
        assert_eq!(str_at(&rules[0], &["apiGroups", "0"]), Some(group));
        assert_eq!(str_at(&rules[0], &["resources", "0"]), Some(resource));
        let verbs: Vec<&str> = rules[0]["verbs"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"], "{dir}: read-only");
        let binding = objects
            .iter()
            .find(|o| str_at(o, &["kind"]) == Some("RoleBinding"))
            .unwrap();
        assert_eq!(str_at(binding, &["metadata", "namespace"]), Some(namespace));
        assert_eq!(str_at(binding, &["subjects", "0", "name"]), Some("prenv-watcher"));
        assert_eq!(str_at(binding, &["subjects", "0", "namespace"]), Some("prenv-system"));

        let deployment = objects
            .iter()
            .find(|o| str_at(o, &["kind"]) == Some("Deployment"))
            .unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(str_at(pod, &["serviceAccountName"]), Some("prenv-watcher"));
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        let container = &pod["containers"][0];
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false)
        );
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(args.contains(&"watch"), "{args:?}");
        assert!(container["resources"]["limits"]["memory"].as_str().is_some());

        let config = objects
            .iter()
            .find(|o| str_at(o, &["kind"]) == Some("ConfigMap"))
            .unwrap();
        let toml = str_at(config, &["data", "prenv.toml"]).unwrap();
        prenv::model::config::Config::parse(toml, "deploy/watcher/prenv.toml")
            .expect("the shipped prenv.toml is valid");
    }
}
