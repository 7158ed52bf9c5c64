//! The capacity guard end to end: projects' configs synced by the real binary into one real bare
//! environments repository that stands for one cluster. New environments beyond
//! `capacity.max_environments` wait in a queue recorded in git, with their wiring suspended, and are
//! created first come first served as room frees; nothing that runs is ever evicted.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use serde_json::{Value, json};

/// A project's config with one PostgreSQL database and the `[capacity]` table `capacity`.
fn config(project: &str, capacity: &str) -> String {
    format!(
        "project_id = \"{project}\"\ndomain = \"p.example.com\"\nimage = \"ghcr.io/acme/{project}\"\nengine = \"flux\"\ndatabases = [\"postgres\"]\n[github]\nrepository = \"acme/{project}\"\n[capacity]\n{capacity}\n"
    )
}

/// PR `n` of `acme/<project>`, open.
fn open(project: &str, n: u64) -> Value {
    let salt: u64 = project.bytes().map(u64::from).sum();
    let mut pr = gh_pr(n, &format!("f/{n}"), &format!("{:040x}", salt * 1000 + n), &[]);
    let repo = format!("acme/{project}");
    pr["head"]["repo"]["full_name"] = json!(repo);
    pr["base"]["repo"]["full_name"] = json!(repo);
    pr
}

/// The same PR, closed (with `labels`) at 11:00.
fn closed(project: &str, n: u64, labels: &[&str]) -> Value {
    let mut pr = open(project, n);
    pr["state"] = json!("closed");
    pr["closed_at"] = json!("2026-11-24T11:00:00Z");
    pr["updated_at"] = json!("2026-11-24T11:00:00Z");
    pr["labels"] = json!(labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>());
    pr
}

/// `12:mm` on the tests' day: each step of a scenario happens at its own minute.
fn minute(mm: u32) -> String {
    format!("2026-11-24T12:{mm:02}:00Z")
}

/// One bare environments repository (one cluster) shared by every project of a test.
struct Cluster {
    dir: tempfile::TempDir,
    remote: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let (dir, remote) = bare_envs_repo();
        Cluster { dir, remote }
    }

    /// Runs `cmd` (`sync` or `plan`) for `project` with its config and PR snapshot at `now`.
    fn run(&self, project: &str, conf: &str, cmd: &str, prs: &[Value], now: &str, extra: &[&str]) -> Output {
        let home = self.dir.path().join(project);
        std::fs::create_dir_all(&home).unwrap();
        let config = write_config(&home, conf);
        let prs = write_prs(&home, prs);
        let mut args = vec![
            "--config",
            s(&config),
            cmd,
            "--repo",
            s(&self.remote),
            "--prs",
            s(&prs),
            "--now",
            now,
        ];
        args.extend_from_slice(extra);
        prenv(&args)
    }

    fn sync(&self, project: &str, conf: &str, prs: &[Value], now: &str) -> String {
        let out = self.run(project, conf, "sync", prs, now, &[]);
        assert!(
            out.status.success(),
            "sync of {project} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn plan(&self, project: &str, conf: &str, prs: &[Value], now: &str) -> String {
        let out = self.run(project, conf, "plan", prs, now, &[]);
        assert!(out.status.success(), "plan of {project} failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn meta(&self, env: &str) -> Value {
        let file = tip_file(&self.remote, &format!("environments/{env}/prenv.json"))
            .unwrap_or_else(|| panic!("{env} has no prenv.json"));
        serde_json::from_str(&file).unwrap()
    }

    /// The environment's Flux Kustomization as the cluster would get it.
    fn kustomization(&self, env: &str) -> Value {
        // Each project's environments are wired in its own directory of the Flux wiring.
        let project = env.rsplit_once("-pr-").map_or(env, |(project, _)| project);
        let file = tip_file(&self.remote, &format!("flux/environments/{project}/{env}.yaml"))
            .unwrap_or_else(|| panic!("{env} has no Flux Kustomization"));
        serde_yaml::from_str(&file).unwrap()
    }

    /// The environments in the repository, and whether each is queued.
    fn envs(&self) -> Vec<(String, bool)> {
        tip_tree(&self.remote)
            .keys()
            .filter_map(|p| p.strip_prefix("environments/")?.strip_suffix("/prenv.json"))
            .map(|env| (env.to_string(), self.meta(env).get("queued").is_some()))
            .collect()
    }

    fn checkout(&self) -> tempfile::TempDir {
        let work = tempfile::tempdir().unwrap();
        git(
            self.dir.path(),
            &["clone", "--quiet", s(&self.remote), s(&work.path().join("w"))],
        );
        work
    }
}

/// `[(env, queued)]` from literals.
fn envs(list: &[(&str, bool)]) -> Vec<(String, bool)> {
    list.iter().map(|(e, q)| (e.to_string(), *q)).collect()
}

#[test]
fn the_pr_beyond_the_limit_is_queued_first_in_line_with_its_kustomization_suspended() {
    let cluster = Cluster::new();
    let shop = config("shop", "max_environments = 3");
    let prs: Vec<Value> = (1..=4).map(|n| open("shop", n)).collect();
    let out = cluster.sync("shop", &shop, &prs, &minute(0));
    assert!(
        out.contains(
            "queue   shop-pr-4                #4       queued, position 1 of 1: the cluster is full (3 of capacity.max_environments = 3 in use)"
        ),
        "{out}"
    );
    assert_eq!(
        cluster.envs(),
        envs(&[
            ("shop-pr-1", false),
            ("shop-pr-2", false),
            ("shop-pr-3", false),
            ("shop-pr-4", true)
        ])
    );
    // Recorded in git: when it joined the queue, its place and the queue's length.
    assert_eq!(
        cluster.meta("shop-pr-4")["queued"],
        json!({"queued_at": minute(0), "position": 1, "of": 1})
    );
    // Its wiring is suspended, with its place for the watcher; the others' are not.
    let queued = cluster.kustomization("shop-pr-4");
    assert_eq!(queued["spec"]["suspend"], json!(true));
    let annotations = &queued["metadata"]["annotations"];
    assert_eq!(annotations["prenv.dev/queued-position"], json!("1"));
    assert_eq!(annotations["prenv.dev/queued-of"], json!("1"));
    assert_eq!(annotations["prenv.dev/queued-at"], json!(minute(0)));
    let running = cluster.kustomization("shop-pr-1");
    assert!(running["spec"].get("suspend").is_none(), "{running:?}");
    assert!(
        running["metadata"]["annotations"]
            .get("prenv.dev/queued-position")
            .is_none()
    );
    // The watcher reads the queued Kustomization (suspended: no status) as waiting, with its place.
    let seen = prenv::core::status::from_flux(&queued).unwrap();
    assert_eq!(
        seen.verdict,
        prenv::core::status::Verdict::Waiting("queued, position 1 of 1".into())
    );
    // Its files build like any environment's, ready for the day it leaves the queue, and the index
    // lists it (suspended) with the others.
    let work = cluster.checkout();
    let root = work.path().join("w");
    let built = kustomize(&root.join("environments/shop-pr-4"));
    assert!(
        built.iter().any(|o| str_at(o, &["kind"]) == Some("Namespace")),
        "{built:?}"
    );
    let root_wiring = kustomize(&root.join("flux/environments"));
    assert_eq!(
        root_wiring
            .iter()
            .filter_map(|o| str_at(o, &["metadata", "name"]))
            .collect::<Vec<_>>(),
        ["prenv-environments-shop"]
    );
    let wiring = kustomize(&root.join("flux/environments/shop"));
    assert_eq!(wiring.len(), 4);
    let suspended: Vec<&str> = wiring
        .iter()
        .filter(|o| o["spec"]["suspend"].as_bool() == Some(true))
        .filter_map(|o| str_at(o, &["metadata", "name"]))
        .collect();
    assert_eq!(suspended, ["shop-pr-4"], "{wiring:?}");
    // The same PRs later: nothing moves, nothing is committed.
    let again = cluster.sync("shop", &shop, &prs, &minute(5));
    assert!(again.contains("no change"), "{again}");
    assert!(
        again.contains("keep    shop-pr-4                #4       queued, position 1 of 1 since 2026-11-24T12:00:00Z"),
        "{again}"
    );
}

#[test]
fn closing_a_pr_activates_the_queued_one_in_the_same_sync() {
    let cluster = Cluster::new();
    let shop = config("shop", "max_environments = 2");
    let prs: Vec<Value> = (1..=4).map(|n| open("shop", n)).collect();
    cluster.sync("shop", &shop, &prs, &minute(0));
    assert_eq!(
        cluster.envs(),
        envs(&[
            ("shop-pr-1", false),
            ("shop-pr-2", false),
            ("shop-pr-3", true),
            ("shop-pr-4", true)
        ])
    );
    assert_eq!(cluster.meta("shop-pr-4")["queued"]["position"], json!(2));
    let mut now_closed = prs.clone();
    now_closed[0] = closed("shop", 1, &[]);
    let out = cluster.sync("shop", &shop, &now_closed, &minute(7));
    assert!(out.contains("prune   shop-pr-1"), "{out}");
    assert!(
        out.contains(
            "create  shop-pr-3                #3       room in the cluster: leaves the queue it joined at 2026-11-24T12:00:00Z"
        ),
        "{out}"
    );
    assert_eq!(
        cluster.envs(),
        envs(&[("shop-pr-2", false), ("shop-pr-3", false), ("shop-pr-4", true)])
    );
    // Out of the queue: applied, and timed from now; the one behind moves up.
    let activated = cluster.kustomization("shop-pr-3");
    assert!(activated["spec"].get("suspend").is_none(), "{activated:?}");
    assert_eq!(cluster.meta("shop-pr-3")["committed_at"], json!(minute(7)));
    assert_eq!(
        cluster.meta("shop-pr-4")["queued"],
        json!({"queued_at": minute(0), "position": 1, "of": 1})
    );
}

#[test]
fn two_projects_share_the_cluster_limit_first_come_first_served() {
    let cluster = Cluster::new();
    let shop = config("shop", "max_environments = 3");
    let blog = config("blog", "max_environments = 3");
    cluster.sync("shop", &shop, &[open("shop", 1), open("shop", 2)], &minute(0));
    // Blog's second PR finds the cluster full: shop's two count.
    let blog_prs = [open("blog", 1), open("blog", 2)];
    cluster.sync("blog", &blog, &blog_prs, &minute(1));
    assert_eq!(
        cluster.meta("blog-pr-2")["queued"],
        json!({"queued_at": minute(1), "position": 1, "of": 1})
    );
    // Shop's third comes later, so it is behind blog's, whatever the project.
    let shop_prs = [open("shop", 1), open("shop", 2), open("shop", 3)];
    let out = cluster.sync("shop", &shop, &shop_prs, &minute(2));
    assert!(out.contains("queued, position 2 of 2"), "{out}");
    // Shop's first closes: the room goes to the head of the queue, blog's, which only blog creates;
    // shop does not jump the queue.
    let shop_prs = [closed("shop", 1, &[]), open("shop", 2), open("shop", 3)];
    let out = cluster.sync("shop", &shop, &shop_prs, &minute(3));
    assert!(out.contains("prune   shop-pr-1"), "{out}");
    assert!(
        out.contains("queue   shop-pr-3                #3       queued, position 1 of 1"),
        "{out}"
    );
    assert!(out.contains("capacity: cluster 3 of 3 used, 0 left, 1 queued"), "{out}");
    assert_eq!(
        cluster.meta("blog-pr-2")["queued"]["position"],
        json!(1),
        "another project's files are not shop's to write"
    );
    let out = cluster.sync("blog", &blog, &blog_prs, &minute(4));
    assert!(out.contains("create  blog-pr-2"), "{out}");
    assert_eq!(
        cluster.envs(),
        envs(&[
            ("blog-pr-1", false),
            ("blog-pr-2", false),
            ("shop-pr-2", false),
            ("shop-pr-3", true)
        ])
    );
    // Blog's next PR queues behind shop's.
    let out = cluster.sync(
        "blog",
        &blog,
        &[open("blog", 1), open("blog", 2), open("blog", 3)],
        &minute(5),
    );
    assert!(out.contains("queued, position 2 of 2"), "{out}");
}

#[test]
fn pinned_and_running_environments_are_never_evicted_even_over_a_lowered_limit() {
    let cluster = Cluster::new();
    let two = config("shop", "max_environments = 2");
    cluster.sync("shop", &two, &[open("shop", 1), open("shop", 2)], &minute(0));
    // PR 1 closes with the pin label: its environment stays, and still takes its place.
    let prs = [closed("shop", 1, &["preserve=true"]), open("shop", 2), open("shop", 3)];
    let out = cluster.sync("shop", &two, &prs, &minute(1));
    assert!(out.contains("pin     shop-pr-1"), "{out}");
    assert!(out.contains("queue   shop-pr-3"), "{out}");
    // The limit lowered below what runs: nothing goes, nothing new comes.
    let one = config("shop", "max_environments = 1");
    let out = cluster.sync("shop", &one, &prs, &minute(2));
    assert!(out.contains("capacity: cluster 2 of 1 used, 0 left, 1 queued"), "{out}");
    assert_eq!(
        cluster.envs(),
        envs(&[("shop-pr-1", false), ("shop-pr-2", false), ("shop-pr-3", true)])
    );
}

#[test]
fn a_per_project_limit_queues_within_the_project_while_the_cluster_has_room() {
    let cluster = Cluster::new();
    let limits = "max_environments = 4\nmax_environments_per_project = 1";
    let (shop, blog) = (config("shop", limits), config("blog", limits));
    let out = cluster.sync("shop", &shop, &[open("shop", 1), open("shop", 2)], &minute(0));
    assert!(
        out.contains("queued, position 1 of 1: project shop is full (capacity.max_environments_per_project = 1)"),
        "{out}"
    );
    let out = cluster.sync("blog", &blog, &[open("blog", 1)], &minute(1));
    assert!(out.contains("create  blog-pr-1"), "{out}");
    assert!(
        out.contains("capacity: cluster 2 of 4 used, 2 left, 1 queued; project blog 1 of 1 used, 0 left, 0 queued"),
        "{out}"
    );
    assert_eq!(
        cluster.envs(),
        envs(&[("blog-pr-1", false), ("shop-pr-1", false), ("shop-pr-2", true)])
    );
}

#[test]
fn prenv_plan_shows_the_capacity_used_and_left_and_the_node_arithmetic() {
    let cluster = Cluster::new();
    let shop = config("shop", "max_environments = 3\nnode_cpu = \"8\"\nnode_memory = \"32Gi\"");
    let prs: Vec<Value> = (1..=5).map(|n| open("shop", n)).collect();
    cluster.sync("shop", &shop, &prs[..2], &minute(0));
    let plan = cluster.plan("shop", &shop, &prs, &minute(1));
    let json = cluster.run("shop", &shop, "plan", &prs, &minute(1), &["--output", "json"]);
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
    let combined = format!(
        "--- prenv plan\n{plan}--- prenv plan --output json: capacity\n{}\n",
        serde_json::to_string_pretty(&doc["capacity"]).unwrap()
    );
    insta::assert_snapshot!("plan_with_a_full_cluster", combined);
    // A plan writes nothing: the queue is what the next sync records.
    assert_eq!(cluster.envs(), envs(&[("shop-pr-1", false), ("shop-pr-2", false)]));
}

#[test]
fn the_argo_cd_template_reads_the_queue_fields_the_metadata_records() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(
        dir.path(),
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"argocd\"\ndatabases = [\"postgres\"]\n[argocd]\nrepo_url = \"https://git.example.com/envs.git\"\n[capacity]\nmax_environments = 1\n",
    );
    let snapshot = write_prs(dir.path(), &[open("shop", 1), open("shop", 2)]);
    let out_dir = dir.path().join("o");
    let out = prenv(&[
        "--config",
        s(&conf),
        "render",
        "--prs",
        s(&snapshot),
        "--out",
        s(&out_dir),
        "--now",
        NOW,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("environments/shop-pr-2/prenv.json")).unwrap())
            .unwrap();
    let queued = meta["queued"].as_object().expect("PR 2 is queued");
    let set = &docs(&out_dir.join("argocd/applicationset-shop.yaml"))[0];
    let template = serde_yaml::to_string(&set["spec"]).unwrap();
    // Every field the template and its patch read of `queued` is one the metadata writes.
    for field in ["position", "of", "queued_at"] {
        assert!(queued.contains_key(field), "{field} missing from {queued:?}");
        assert!(
            template.contains(&format!("{{{{ .{field} }}}}")),
            "the template does not read {field}"
        );
    }
    let patch = str_at(set, &["spec", "templatePatch"]).unwrap();
    assert!(patch.starts_with("{{- if index . \"queued\" }}"), "{patch}");
    assert!(
        set["spec"]["template"]["spec"]["syncPolicy"].get("automated").is_none(),
        "automated sync comes only from the patch, for environments that are not queued"
    );
    assert!(
        patch.contains("automated:") && patch.contains("prenv.dev/queued: \"true\""),
        "{patch}"
    );
}
