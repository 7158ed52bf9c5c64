//! The render contract, end to end: the real binary writes a tree, real `kubectl kustomize` builds it.

mod common;

use std::collections::BTreeSet;

use common::*;
use prenv::model::naming;
use serde_json::json;

const HOSTILE_CONFIG: &str = r#"
project_id = "shop"
domain = "preview.example.com"
image = "ghcr.io/acme/shop"
databases = ["postgres", "mariadb"]
engine = "flux"
tag_template = "{branch}-{number}-{short_sha}"
storage_class = "fast-ssd"
[github]
repository = "acme/shop"
"#;

/// The hostile config with a fresh age recipient, so MariaDB credentials can be encrypted.
fn hostile_config() -> String {
    let recipient = age::x25519::Identity::generate().to_public();
    format!("{HOSTILE_CONFIG}[secrets]\nage_recipients = [\"{recipient}\"]\n")
}

/// Branch names and labels no environment should be able to trip over.
fn hostile_prs() -> Vec<(u64, &'static str, serde_json::Value)> {
    let branches: &[(u64, &str)] = &[
        (1, "on"),
        (2, "no"),
        (3, "yes"),
        (4, "1e3"),
        (5, "0x1F"),
        (6, "~"),
        (7, "feature/ünïcode-🚀"),
        (8, "../../etc/passwd"),
        (9, "refs/heads/a..b"),
        (10, "-leading-dash"),
        (11, "quote\"and'apostrophe: colon # hash"),
        (12, "{{.env}}/$(rm -rf /)"),
        (13, "null"),
        (14, "2026-01-01"),
        (15, "line\u{2028}separator\u{85}nel"),
        (
            123_456,
            "a-very-long-branch-name-that-keeps-going-and-going-well-past-sixty-three-characters-of-label",
        ),
        (999_999, "main"),
    ];
    branches
        .iter()
        .map(|(n, branch)| {
            let sha = format!("{:040x}", n * 7919);
            let labels = ["on", "preserve=true", "ü", "1e3"];
            (*n, *branch, gh_pr(*n, branch, &sha, &labels))
        })
        .collect()
}

#[test]
fn every_env_of_a_hostile_snapshot_builds_with_kustomize_and_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &hostile_config());
    let prs = hostile_prs();
    let snapshot = write_prs(dir.path(), &prs.iter().map(|(_, _, v)| v.clone()).collect::<Vec<_>>());
    let out_dir = dir.path().join("out");
    let out = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&snapshot),
        "--out",
        s(&out_dir),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "render failed: {}", text(&out.stderr));

    for (number, branch, _) in &prs {
        let env = format!("shop-pr-{number}");
        let host = format!("{env}.preview.example.com");
        let objects = kustomize(&out_dir.join("environments").join(&env));
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| str_at(o, &["kind"])).collect();
        for kind in [
            "Namespace",
            "ResourceQuota",
            "LimitRange",
            "NetworkPolicy",
            "Deployment",
            "Service",
            "Ingress",
            "ServiceAccount",
            "Cluster",
            "StatefulSet",
        ] {
            assert!(kinds.contains(kind), "{env}: no {kind} in {kinds:?}");
        }
        for o in &objects {
            let kind = str_at(o, &["kind"]).unwrap();
            let name = str_at(o, &["metadata", "name"]).unwrap();
            assert!(naming::dns_name_problem(name).is_none(), "{env}: {kind} name {name:?}");
            if kind == "Namespace" {
                assert_eq!(name, env);
                assert_eq!(
                    str_at(o, &["metadata", "labels", "pod-security.kubernetes.io/enforce"]),
                    Some("restricted")
                );
            } else {
                assert_eq!(
                    str_at(o, &["metadata", "namespace"]),
                    Some(env.as_str()),
                    "{env}: {kind}/{name} namespace"
                );
            }
            let labels = o["metadata"]["labels"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{env}: {kind}/{name} has no labels"));
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{env}: label {k:?} of {kind}/{name} is not a string: {v:?}"));
                assert!(naming::is_label_value(v), "{env}: label {k:?}={v:?}");
            }
            assert_eq!(
                str_at(o, &["metadata", "labels", "prenv.dev/pr"]),
                Some(number.to_string().as_str())
            );
            assert_eq!(
                str_at(o, &["metadata", "labels", "prenv.dev/branch"]),
                Some(naming::sanitize_label_value(branch).as_str())
            );
            let head_ref = str_at(o, &["metadata", "annotations", "prenv.dev/head-ref"]).unwrap();
            assert_eq!(
                naming::decode_annotation(head_ref).as_deref(),
                Some(*branch),
                "{env}: branch must read back exactly"
            );
            assert_eq!(
                str_at(o, &["metadata", "labels", "app.kubernetes.io/managed-by"]),
                Some("prenv")
            );
            match kind {
                "Ingress" => {
                    assert_eq!(str_at(o, &["spec", "rules", "0", "host"]), Some(host.as_str()));
                    assert_eq!(str_at(o, &["spec", "tls", "0", "hosts", "0"]), Some(host.as_str()));
                    assert!(naming::dns_name_problem(&host).is_none());
                }
                "Deployment" => {
                    let image = str_at(o, &["spec", "template", "spec", "containers", "0", "image"]).unwrap();
                    let sha = format!("{:040x}", number * 7919);
                    let (repo, tag) = image.rsplit_once(':').unwrap();
                    assert_eq!(repo, "ghcr.io/acme/shop");
                    assert!(naming::is_image_tag(tag), "{env}: tag {tag:?}");
                    assert!(tag.ends_with(&format!("{number}-{}", &sha[..7])), "{env}: tag {tag:?}");
                    assert_eq!(
                        str_at(o, &["spec", "template", "metadata", "labels", "prenv.dev/pr"]),
                        Some(number.to_string().as_str())
                    );
                    assert_eq!(
                        str_at(o, &["spec", "selector", "matchLabels", "app.kubernetes.io/name"]),
                        Some("app")
                    );
                    assert!(
                        o["spec"]["selector"]["matchLabels"].get("prenv.dev/pr").is_none(),
                        "selectors stay immutable"
                    );
                }
                "Cluster" => assert_eq!(str_at(o, &["spec", "storage", "storageClass"]), Some("fast-ssd")),
                "StatefulSet" => assert_eq!(
                    str_at(o, &["spec", "volumeClaimTemplates", "0", "spec", "storageClassName"]),
                    Some("fast-ssd")
                ),
                _ => {}
            }
        }
    }
}

#[test]
fn no_input_writes_outside_its_environment_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &hostile_config());
    let prs: Vec<_> = hostile_prs().into_iter().map(|(_, _, v)| v).collect();
    let snapshot = write_prs(dir.path(), &prs);
    let out_dir = dir.path().join("out");
    let out = prenv(&[
        "--config",
        s(&config),
        "render",
        "--prs",
        s(&snapshot),
        "--out",
        s(&out_dir),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tree = prenv::adapters::fs::read_tree(&out_dir, "environments").unwrap();
    let envs: BTreeSet<String> = hostile_prs().iter().map(|(n, _, _)| format!("shop-pr-{n}")).collect();
    for path in tree.paths() {
        let env = path.split('/').nth(1).unwrap();
        assert!(envs.contains(env), "unexpected path {path}");
        assert_eq!(path.matches('/').count(), 2, "nested path {path}");
    }
    let top: BTreeSet<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(["base", "environments", "flux", "overlays"].map(String::from))
    );
}

#[test]
fn the_flux_wiring_lists_one_kustomization_per_project_and_one_per_environment_in_its_index() {
    let dir = render_example("prenv.toml");
    // The root index gives the project's Kustomization, over the project's own index.
    let projects = kustomize(&dir.path().join("flux/environments"));
    assert_eq!(projects.len(), 1);
    let project = &projects[0];
    assert_eq!(str_at(project, &["apiVersion"]), Some("kustomize.toolkit.fluxcd.io/v1"));
    assert_eq!(str_at(project, &["kind"]), Some("Kustomization"));
    assert_eq!(str_at(project, &["metadata", "name"]), Some("prenv-environments-shop"));
    assert_eq!(str_at(project, &["metadata", "namespace"]), Some("flux-system"));
    assert_eq!(str_at(project, &["spec", "path"]), Some("./flux/environments/shop"));
    assert_eq!(project["spec"]["prune"].as_bool(), Some(true));
    assert_eq!(str_at(project, &["spec", "sourceRef", "kind"]), Some("GitRepository"));
    assert_eq!(
        str_at(project, &["spec", "sourceRef", "name"]),
        Some("prenv-environments")
    );
    let objects = kustomize(&dir.path().join("flux/environments/shop"));
    let names: Vec<&str> = objects
        .iter()
        .filter_map(|o| str_at(o, &["metadata", "name"]))
        .collect();
    assert_eq!(
        names,
        ["shop-pr-101", "shop-pr-102", "shop-pr-105", "shop-pr-106", "shop-pr-99"]
    );
    for o in &objects {
        assert_eq!(str_at(o, &["apiVersion"]), Some("kustomize.toolkit.fluxcd.io/v1"));
        // The watcher's clock for this push: when prenv committed the head (here, --now).
        assert_eq!(
            str_at(o, &["metadata", "annotations", "prenv.dev/committed-at"]),
            Some(common::NOW)
        );
        let name = str_at(o, &["metadata", "name"]).unwrap();
        // The start of open→ready: when the PR became deployable, as prenv.json records it.
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("environments/{name}/prenv.json"))).unwrap(),
        )
        .unwrap();
        let eligible = str_at(o, &["metadata", "annotations", "prenv.dev/eligible-at"]);
        assert_eq!(eligible, meta["eligible_at"].as_str(), "{name}");
        assert!(eligible.is_some_and(|t| t <= common::NOW), "{name}: {eligible:?}");
        assert_eq!(
            str_at(o, &["spec", "path"]),
            Some(format!("./environments/{name}").as_str())
        );
        assert_eq!(o["spec"]["prune"].as_bool(), Some(true));
        assert_eq!(o["spec"]["wait"].as_bool(), Some(true));
        assert_eq!(str_at(o, &["spec", "decryption", "provider"]), Some("sops"));
        assert_eq!(str_at(o, &["spec", "sourceRef", "kind"]), Some("GitRepository"));
        // The env's own directory builds from the tree root.
        kustomize(&dir.path().join("environments").join(name));
    }
}

#[test]
fn the_argocd_wiring_is_an_applicationset_over_the_metadata_files() {
    let dir = render_example("prenv-argocd.toml");
    assert!(!dir.path().join("flux").exists());
    let objects = kustomize(&dir.path().join("argocd"));
    assert_eq!(objects.len(), 1);
    let set = &objects[0];
    assert_eq!(str_at(set, &["kind"]), Some("ApplicationSet"));
    // One ApplicationSet per project, in a file of its own, over its own environments only: a
    // file path glob (argo-cd docs/operator-manual/applicationset/Generators-Git.md, "Git
    // Generator: Files") that no other project's names match (a project id holds no `-pr-`).
    assert!(dir.path().join("argocd/applicationset-shop.yaml").exists());
    assert_eq!(
        str_at(set, &["spec", "generators", "0", "git", "files", "0", "path"]),
        Some("environments/shop-pr-*/prenv.json")
    );
    // Name, path and namespace come from the directory (the git files generator's `path` params,
    // argo-cd v3.0 applicationset/generators/git.go `generateParamsFromGitFile`), not from the file.
    assert_eq!(
        str_at(set, &["spec", "template", "spec", "source", "path"]),
        Some("{{.path.path}}")
    );
    assert_eq!(
        str_at(set, &["spec", "template", "spec", "destination", "namespace"]),
        Some("{{.path.basename}}")
    );
    // Argo CD flattens each file's keys and matches the generator's selector on them
    // (generator_spec_processor.go `Transform`): only files with prenv's mark become Applications.
    assert_eq!(
        str_at(
            set,
            &["spec", "generators", "0", "selector", "matchLabels", "generator"]
        ),
        Some("prenv")
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("environments/shop-pr-101/prenv.json")).unwrap())
            .unwrap();
    assert_eq!(
        meta["generator"].as_str(),
        Some("prenv"),
        "the selector would drop prenv's own file"
    );
    // The directory name is the namespace prenv renders, so deriving it from the path changes nothing.
    assert_eq!(meta["namespace"].as_str(), Some("shop-pr-101"));
    for key in ["pr", "head_sha", "url", "databases"] {
        assert!(
            meta.get(key).is_some(),
            "metadata lacks {key}, which the template reads"
        );
    }
    let objects = kustomize(&dir.path().join("environments/shop-pr-101"));
    let ingress = objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some("Ingress"))
        .unwrap();
    assert_eq!(
        str_at(ingress, &["metadata", "annotations", "cert-manager.io/cluster-issuer"]),
        Some("letsencrypt")
    );
    assert_eq!(
        str_at(ingress, &["spec", "tls", "0", "secretName"]),
        Some("preview-tls")
    );
}

#[test]
fn quota_grows_one_step_per_database() {
    let table = [
        ("[]", "300m", "512Mi", "0"),
        ("[\"postgres\"]", "800m", "1Gi", "1Gi"),
        ("[\"postgres\", \"mariadb\"]", "1300m", "1536Mi", "2Gi"),
    ];
    for (dbs, cpu, memory, storage) in table {
        let objects = render_env_with_databases(dbs);
        let quota = objects
            .iter()
            .find(|o| str_at(o, &["kind"]) == Some("ResourceQuota"))
            .unwrap();
        assert_eq!(str_at(quota, &["spec", "hard", "requests.cpu"]), Some(cpu), "{dbs}");
        assert_eq!(str_at(quota, &["spec", "hard", "limits.memory"]), Some(memory), "{dbs}");
        assert_eq!(
            str_at(quota, &["spec", "hard", "requests.storage"]),
            Some(storage),
            "{dbs}"
        );
    }
}

#[test]
fn a_rendered_environment_matches_its_snapshot() {
    let dir = render_example("prenv-argocd.toml");
    let tree = prenv::adapters::fs::read_tree(dir.path(), "environments/shop-pr-106").unwrap();
    let mut combined = String::new();
    // The credentials are random and sealed: tests/sealed.rs checks them.
    for (path, bytes) in tree.iter().filter(|(p, _)| !p.ends_with(".sealed.yaml")) {
        combined.push_str(&format!("# ---- {path}\n{}", text(bytes)));
    }
    insta::assert_snapshot!("env_shop_pr_106_argocd_both_databases", combined);
}

#[test]
fn the_committed_environments_are_the_render_of_the_examples() {
    let out = prenv(&[
        "--config",
        s(&repo_root().join("examples/prenv.toml")),
        "render",
        "--prs",
        s(&repo_root().join("examples/prs.json")),
        "--out",
        s(&repo_root()),
        "--now",
        NOW,
        "--check",
    ]);
    assert!(
        out.status.success(),
        "environments/ is out of date with examples/; run scripts/update-golden and commit the result:\n{}",
        text(&out.stderr)
    );
}

#[test]
fn rendering_twice_writes_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let args = |check: bool| {
        let mut a = vec![
            "--config".to_string(),
            s(&repo_root().join("examples/prenv.toml")).to_string(),
            "render".into(),
            "--prs".into(),
            s(&repo_root().join("examples/prs.json")).to_string(),
            "--out".into(),
            s(dir.path()).to_string(),
            "--now".into(),
            NOW.into(),
        ];
        if check {
            a.push("--check".into());
        }
        a
    };
    let run = |a: Vec<String>| prenv(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(args(true)).status.code(), Some(1), "an empty directory differs");
    assert!(run(args(false)).status.success());
    let before = prenv::adapters::fs::read_tree(dir.path(), "environments").unwrap();
    // A later clock must not change created_at or anything else.
    let mut later = args(false);
    later[8] = "2026-11-24T13:00:00Z".into();
    let second = run(later);
    assert!(second.status.success());
    assert!(
        text(&second.stderr).contains("0 files added, 0 changed, 0 removed"),
        "{}",
        text(&second.stderr)
    );
    assert_eq!(
        prenv::adapters::fs::read_tree(dir.path(), "environments").unwrap(),
        before
    );
    assert_eq!(run(args(true)).status.code(), Some(0));
}

#[test]
fn closing_a_pr_prunes_its_environment_and_leaves_hand_made_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n",
    );
    let sha = "b".repeat(40);
    let open = write_prs(dir.path(), &[gh_pr(1, "a", &sha, &[]), gh_pr(2, "b", &sha, &[])]);
    let out_dir = dir.path().join("o");
    let render = |prs: &std::path::Path| {
        prenv(&[
            "--config",
            s(&config),
            "render",
            "--prs",
            s(prs),
            "--out",
            s(&out_dir),
            "--now",
            NOW,
        ])
    };
    assert!(render(&open).status.success());
    std::fs::create_dir_all(out_dir.join("environments/hand-made")).unwrap();
    std::fs::write(
        out_dir.join("environments/hand-made/kustomization.yaml"),
        "resources: []\n",
    )
    .unwrap();
    let mut closed = gh_pr(2, "b", &sha, &[]);
    closed["state"] = json!("closed");
    closed["closed_at"] = json!("2026-11-24T11:00:00Z");
    let closed = write_prs(dir.path(), &[gh_pr(1, "a", &sha, &[]), closed]);
    let out = render(&closed);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out_dir.join("environments/shop-pr-1/prenv.json").exists());
    assert!(
        !out_dir.join("environments/shop-pr-2").exists(),
        "closed PR's environment is pruned"
    );
    assert!(out_dir.join("flux/environments/shop/shop-pr-1.yaml").exists());
    assert!(!out_dir.join("flux/environments/shop/shop-pr-2.yaml").exists());
    assert!(
        out_dir.join("environments/hand-made/kustomization.yaml").exists(),
        "a directory prenv did not create stays"
    );
}

#[test]
fn bad_input_is_a_clear_error_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n",
    );
    let long = dir.path().join("long.toml");
    std::fs::write(
        &long,
        format!(
            "project_id = \"{}\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n",
            "x".repeat(60)
        ),
    )
    .unwrap();
    let mut no_sha = gh_pr(5, "a", &"c".repeat(40), &[]);
    no_sha["head"].as_object_mut().unwrap().remove("sha");
    let broken = write_prs(dir.path(), &[no_sha]);
    let missing = dir.path().join("nope.json");
    let cases = [
        (s(&long).to_string(), s(&broken).to_string(), "project_id"),
        (
            s(&good).to_string(),
            s(&broken).to_string(),
            "element 0 (PR #5): missing field `sha`",
        ),
        (s(&good).to_string(), s(&missing).to_string(), "nope.json"),
        (
            s(&dir.path().join("none.toml")).to_string(),
            s(&broken).to_string(),
            "none.toml",
        ),
    ];
    for (config, prs, want) in cases {
        let out = prenv(&[
            "--config",
            &config,
            "render",
            "--prs",
            &prs,
            "--out",
            s(&dir.path().join("o")),
        ]);
        assert_eq!(out.status.code(), Some(2), "{want}");
        let err = text(&out.stderr);
        assert!(err.starts_with("error: ") && err.contains(want), "{want}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A render against what the repository stores leaves out exactly the environment files that are
/// as stored (by blob id), on every core (100 environments make two parts), and names them: the
/// tree and the names together are the whole render, and a drifted or missing file is in the tree.
#[test]
fn a_render_against_the_stored_files_leaves_out_exactly_those_as_stored() {
    use prenv::manifests::render::{Around, render_changed, render_owned};
    use prenv::model::layout::BlobId;
    use prenv::model::pr::PrState;
    let config = postgres_config("");
    let now = "2026-11-24T12:00:00Z".parse().unwrap();
    let prs: Vec<_> = (1..=100)
        .map(|n| lib_pr(n, PrState::Open, format!("{n:040x}"), "2026-11-24T10:00:00Z"))
        .collect();
    let plan = prenv::core::plan::plan(&config, &prs, &Default::default(), now);
    let envs: Vec<_> = plan.desired().collect();
    let whole = render_owned(&config, &envs).unwrap();
    let mut stored: std::collections::BTreeMap<String, BlobId> = whole
        .iter()
        .filter(|(path, _)| path.starts_with("environments/") || path.starts_with("flux/environments/shop/"))
        .map(|(path, bytes)| (path.to_string(), BlobId::of(bytes)))
        .collect();
    let drifted = "environments/shop-pr-7/kustomization.yaml";
    let missing = "environments/shop-pr-93/networkpolicies.yaml";
    stored.insert(drifted.into(), BlobId::of(b"kind: Kustomization\n"));
    stored.remove(missing);
    let (tree, same) = render_changed(&config, &envs, &Around::default(), |_| true, &stored).unwrap();
    // The project's wiring index lists every environment: it is always written, and compared later.
    let index = "flux/environments/shop/kustomization.yaml";
    let expected_same: BTreeSet<&str> = whole
        .iter()
        .filter(|(path, bytes)| *path != index && stored.get(*path) == Some(&BlobId::of(bytes)))
        .map(|(path, _)| path)
        .collect();
    let named: BTreeSet<&str> = same.iter().map(String::as_str).collect();
    let wrong: Vec<_> = named.symmetric_difference(&expected_same).collect();
    assert!(wrong.is_empty(), "named wrongly or not named: {wrong:?}");
    assert_eq!(same.len(), expected_same.len(), "a path is named once");
    assert!(same.len() > 500, "{} files as stored", same.len());
    for (path, bytes) in whole.iter() {
        match tree.get(path) {
            Some(rendered) => assert_eq!(rendered, bytes, "{path}"),
            None => assert!(expected_same.contains(path), "{path} is neither rendered nor as stored"),
        }
    }
    assert_eq!(tree.len() + same.len(), whole.len());
    for path in [drifted, missing, index] {
        assert!(tree.get(path).is_some(), "{path} is left out");
    }
}
