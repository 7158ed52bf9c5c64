//! Many projects on one platform: several applications' configs synced into one real bare
//! environments repository by the real binary. A project owns only its own environments (the
//! mark and its project id), has its own template and wiring, and never reads, changes, counts or
//! reports another's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::json;

/// A project's config: `extra` adds keys (other databases, quotas, engine settings).
fn config(project: &str, extra: &str) -> String {
    format!(
        "project_id = \"{project}\"\ndomain = \"p.example.com\"\nimage = \"ghcr.io/acme/{project}\"\nengine = \"flux\"\n{extra}\n[github]\nrepository = \"acme/{project}\"\n"
    )
}

/// PR `n` of `acme/<project>`, open, at a SHA that differs per project, PR and `round`.
fn open(project: &str, n: u64, round: u64) -> serde_json::Value {
    let salt: u64 = project.bytes().map(u64::from).sum();
    let mut pr = gh_pr(
        n,
        &format!("f/{n}"),
        &format!("{:040x}", salt * 1_000_000 + n * 1000 + round),
        &[],
    );
    let repo = format!("acme/{project}");
    pr["head"]["repo"]["full_name"] = json!(repo);
    pr["base"]["repo"]["full_name"] = json!(repo);
    pr
}

fn closed(project: &str, n: u64) -> serde_json::Value {
    let mut pr = open(project, n, 0);
    pr["state"] = json!("closed");
    pr["closed_at"] = json!("2026-11-24T11:00:00Z");
    pr["updated_at"] = json!("2026-11-24T11:00:00Z");
    pr
}

/// One bare environments repository and a directory per project for its config and snapshot.
struct Platform {
    dir: tempfile::TempDir,
    remote: PathBuf,
}

impl Platform {
    fn new() -> Platform {
        let (dir, remote) = bare_envs_repo();
        Platform { dir, remote }
    }

    /// Writes project `project`'s config (and its PR snapshot) and runs `cmd` for it.
    fn run(&self, project: &str, conf: &str, cmd: &str, prs: &[serde_json::Value], extra: &[&str]) -> Output {
        let home = self.dir.path().join(project);
        std::fs::create_dir_all(&home).unwrap();
        let config = write_config(&home, conf);
        let prs = write_prs(&home, prs);
        let mut args = vec!["--config", s(&config), cmd, "--repo", s(&self.remote)];
        // Onboarding reads no PRs and no clock.
        if cmd != "onboard" {
            args.extend(["--prs", s(&prs), "--now", NOW]);
        }
        args.extend_from_slice(extra);
        prenv(&args)
    }

    fn sync(&self, project: &str, conf: &str, prs: &[serde_json::Value]) -> String {
        let out = self.run(project, conf, "sync", prs, &[]);
        assert!(
            out.status.success(),
            "sync of {project} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Every file at the tip with its mode and blob id.
    fn tree(&self) -> BTreeMap<String, String> {
        tip_tree(&self.remote)
    }

    fn file(&self, path: &str) -> Option<String> {
        tip_file(&self.remote, path)
    }

    /// A checkout of the tip, for `kubectl kustomize`.
    fn checkout(&self) -> tempfile::TempDir {
        let work = tempfile::tempdir().unwrap();
        git(
            self.dir.path(),
            &["clone", "--quiet", s(&self.remote), s(&work.path().join("w"))],
        );
        work
    }

    /// Someone's commit, pushed through a clone.
    fn push(&self, edit: impl FnOnce(&Path)) {
        let work = self.dir.path().join("hand");
        if !work.exists() {
            git(self.dir.path(), &["clone", "--quiet", s(&self.remote), s(&work)]);
        }
        git(&work, &["pull", "--quiet", "--ff-only"]);
        edit(&work);
        git(&work, &["add", "-A"]);
        let who = ["-c", "user.name=someone", "-c", "user.email=s@x"];
        git(&work, &[&who[..], &["commit", "--quiet", "-m", "by hand"]].concat());
        git(&work, &["push", "--quiet", "origin", "main"]);
    }
}

/// The files of the tree that belong to project `project`: its environments, their wiring, and
/// its Flux Kustomization and index.
fn of_project(tree: &BTreeMap<String, String>, project: &str) -> BTreeMap<String, String> {
    let prefix = format!("{project}-pr-");
    let (own_dir, own_file) = (format!("{project}/"), format!("{project}.yaml"));
    tree.iter()
        .filter(|(p, _)| {
            p.strip_prefix("environments/")
                .is_some_and(|rest| rest.starts_with(&prefix))
                || p.strip_prefix("flux/environments/")
                    .is_some_and(|rest| rest.starts_with(&prefix) || rest.starts_with(&own_dir) || rest == own_file)
        })
        .map(|(p, m)| (p.clone(), m.clone()))
        .collect()
}

/// The names a kustomize index at `path` lists (`resources`), in its order.
fn listed(platform: &Platform, path: &str) -> Vec<String> {
    let index = platform.file(path).unwrap_or_else(|| panic!("{path} is missing"));
    let value: serde_yaml::Value = serde_yaml::from_str(&index).unwrap();
    value["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().trim_end_matches(".yaml").to_string())
        .collect()
}

/// The names of the objects `kubectl kustomize` builds from `dir`.
fn built_names(dir: &Path) -> Vec<String> {
    kustomize(dir)
        .iter()
        .filter_map(|o| str_at(o, &["metadata", "name"]).map(String::from))
        .collect()
}

/// Builds the whole Flux wiring of a checkout as the cluster does: the root index gives the
/// projects' Kustomizations (and the environments wired before projects had an index), and each
/// project's Kustomization builds its path. Returns every environment Kustomization's name.
fn built_wiring(root: &Path) -> Vec<String> {
    let mut envs = Vec::new();
    for object in kustomize(&root.join("flux/environments")) {
        let name = str_at(&object, &["metadata", "name"]).unwrap().to_string();
        let path = str_at(&object, &["spec", "path"]).unwrap();
        match path.strip_prefix("./flux/environments/") {
            Some(project) => {
                assert_eq!(name, format!("prenv-environments-{project}"));
                envs.extend(built_names(&root.join("flux/environments").join(project)));
            }
            None => envs.push(name),
        }
    }
    envs.sort();
    envs
}

#[test]
fn a_second_project_in_the_same_repository_changes_nothing_of_the_first() {
    let platform = Platform::new();
    let shop = config("shop", "databases = [\"postgres\"]");
    // Other databases and other quotas: were blog to touch shop, shop's files would change.
    let blog = config("blog", "databases = []\n[quota]\ncpu = \"700m\"\nmemory = \"1Gi\"");
    let shop_prs: Vec<_> = (1..=5).map(|n| open("shop", n, 0)).collect();
    platform.sync("shop", &shop, &shop_prs);
    let before = of_project(&platform.tree(), "shop");
    // Seven files per environment, and the project's Flux Kustomization and index.
    assert_eq!(before.len(), 5 * 7 + 2, "{before:#?}");
    // Blog's PR numbers are shop's too: other pull requests, other environments.
    let blog_prs: Vec<_> = (1..=3).map(|n| open("blog", n, 0)).collect();
    let out = platform.sync("blog", &blog, &blog_prs);
    assert!(
        !out.contains("shop-pr-"),
        "blog's sync reports shop's environments:\n{out}"
    );
    assert_eq!(
        of_project(&platform.tree(), "shop"),
        before,
        "blog's sync changed shop's files"
    );
    for n in 1..=3 {
        let meta: serde_json::Value =
            serde_json::from_str(&platform.file(&format!("environments/blog-pr-{n}/prenv.json")).unwrap()).unwrap();
        assert_eq!(meta["project"], "blog");
        let quota = platform
            .file(&format!("environments/blog-pr-{n}/resourcequota.yaml"))
            .unwrap();
        assert!(quota.contains("700m"), "{quota}");
    }
    // Each project has its own index and Kustomization; the root index lists the projects.
    assert_eq!(
        listed(&platform, "flux/environments/kustomization.yaml"),
        ["blog", "shop"]
    );
    assert_eq!(
        listed(&platform, "flux/environments/shop/kustomization.yaml"),
        (1..=5).map(|n| format!("shop-pr-{n}")).collect::<Vec<_>>()
    );
    assert_eq!(
        listed(&platform, "flux/environments/blog/kustomization.yaml"),
        ["blog-pr-1", "blog-pr-2", "blog-pr-3"]
    );
    // Each project's next sync, and its plan, finds nothing to do: nothing of the other reads as its own.
    for (project, conf, prs) in [("shop", &shop, &shop_prs), ("blog", &blog, &blog_prs)] {
        let out = platform.sync(project, conf, prs);
        assert!(out.contains("no change"), "{project}: {out}");
        let plan = platform.run(project, conf, "plan", prs, &["--output", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let envs: Vec<&str> = doc["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["env"].as_str().unwrap())
            .collect();
        assert!(
            envs.iter().all(|e| e.starts_with(&format!("{project}-pr-"))),
            "{project} plans {envs:?}"
        );
    }
    // Both projects' environments build from the tree's root with their own settings.
    let work = platform.checkout();
    let root = work.path().join("w");
    let labels = |env: &str| -> Vec<String> {
        kustomize(&root.join("environments").join(env))
            .iter()
            .filter_map(|o| str_at(o, &["metadata", "labels", "prenv.dev/project"]).map(String::from))
            .collect()
    };
    assert!(labels("shop-pr-2").iter().all(|p| p == "shop"));
    assert!(labels("blog-pr-2").iter().all(|p| p == "blog"));
    assert_eq!(
        built_names(&root.join("flux/environments")),
        ["prenv-environments-blog", "prenv-environments-shop"]
    );
    let envs = built_wiring(&root);
    assert_eq!(
        envs.len(),
        8,
        "one Flux Kustomization per environment of both projects: {envs:?}"
    );
}

#[test]
fn five_projects_share_one_repository_and_never_touch_each_other() {
    let platform = Platform::new();
    let projects = ["shop", "blog", "wiki", "shop-admin", "api"];
    let confs: Vec<String> = projects
        .iter()
        .enumerate()
        .map(|(i, p)| config(p, &format!("databases = []\n[quota]\ncpu = \"{}m\"", 300 + 100 * i)))
        .collect();
    let prs = |p: &str, round| vec![open(p, 1, round), open(p, 2, round)];
    let mut seen: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for (p, conf) in projects.iter().zip(&confs) {
        platform.sync(p, conf, &prs(p, 0));
        let tree = platform.tree();
        // What every project synced before still is exactly as it left it.
        for (done, files) in &seen {
            assert_eq!(&of_project(&tree, done), files, "{p}'s sync changed {done}'s files");
        }
        seen.insert(p, of_project(&tree, p));
    }
    // `shop-admin`'s environments are not `shop`'s, though their names share a prefix.
    assert_eq!(seen["shop"].len(), 2 * 7 + 2);
    assert_eq!(seen["shop-admin"].len(), 2 * 7 + 2);
    // A new commit on every PR of one project updates that project only.
    let before = platform.tree();
    let out = platform.sync("wiki", &confs[2], &prs("wiki", 1));
    assert!(out.contains("plan: 2 update;"), "{out}");
    let after = platform.tree();
    for p in projects.iter().filter(|p| **p != "wiki") {
        assert_eq!(
            of_project(&after, p),
            of_project(&before, p),
            "wiki's update changed {p}"
        );
    }
    let mut sorted = projects.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(listed(&platform, "flux/environments/kustomization.yaml"), sorted);
    for p in projects {
        let index = format!("flux/environments/{p}/kustomization.yaml");
        assert_eq!(listed(&platform, &index), [format!("{p}-pr-1"), format!("{p}-pr-2")]);
    }
    let work = platform.checkout();
    assert_eq!(built_wiring(&work.path().join("w")).len(), 10);
    // Every project settled: its next sync commits nothing.
    for (p, conf) in projects.iter().zip(&confs) {
        let round = if *p == "wiki" { 1 } else { 0 };
        let out = platform.sync(p, conf, &prs(p, round));
        assert!(out.contains("no change"), "{p}: {out}");
    }
}

#[test]
fn concurrent_syncs_of_different_projects_all_land() {
    let platform = Platform::new();
    let projects = ["shop", "blog", "wiki", "api"];
    std::thread::scope(|scope| {
        for p in projects {
            let platform = &platform;
            scope.spawn(move || {
                let prs: Vec<_> = (1..=3).map(|n| open(p, n, 0)).collect();
                platform.sync(p, &config(p, "databases = [\"postgres\"]"), &prs);
            });
        }
    });
    let tree = platform.tree();
    let log = git(&platform.remote, &["log", "--stat", "--format=%H %P%n%B", "main"]);
    for p in projects {
        assert_eq!(of_project(&tree, p).len(), 3 * 7 + 2, "{p}:\n{log}");
    }
    assert_eq!(
        listed(&platform, "flux/environments/kustomization.yaml"),
        ["api", "blog", "shop", "wiki"],
        "every project's wiring is listed:\n{log}"
    );
    // And all is settled: each project's next sync commits nothing.
    for p in projects {
        let prs: Vec<_> = (1..=3).map(|n| open(p, n, 0)).collect();
        let out = platform.sync(p, &config(p, "databases = [\"postgres\"]"), &prs);
        assert!(out.contains("no change"), "{p}: {out}");
    }
}

#[test]
fn closing_one_projects_prs_prunes_its_own_and_the_breaker_counts_only_its_own() {
    let platform = Platform::new();
    let shop = config("shop", "databases = []");
    let blog = config("blog", "databases = []");
    platform.sync("shop", &shop, &(1..=5).map(|n| open("shop", n, 0)).collect::<Vec<_>>());
    platform.sync("blog", &blog, &(1..=5).map(|n| open("blog", n, 0)).collect::<Vec<_>>());
    let blog_files = of_project(&platform.tree(), "blog");
    // Three of shop's five environments closing is 60 % of shop's: the breaker trips (counted
    // over both projects' ten it would be 30 % and pass).
    let three_closed: Vec<_> = (1..=5)
        .map(|n| if n <= 3 { closed("shop", n) } else { open("shop", n, 0) })
        .collect();
    let out = platform.run("shop", &shop, "sync", &three_closed, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("3 of 5 environments"),
        "{}",
        text(&out.stderr)
    );
    // Allowed, only shop's go; blog's environments, none of which is in shop's snapshot, stay.
    let out = platform.run("shop", &shop, "sync", &three_closed, &["--allow-mass-prune"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tree = platform.tree();
    assert_eq!(of_project(&tree, "shop").len(), 2 * 7 + 2);
    assert_eq!(of_project(&tree, "blog"), blog_files);
    // A project whose config is gone (shop, offboarded) keeps its environments through the others' syncs.
    platform.sync("blog", &blog, &(1..=5).map(|n| open("blog", n, 0)).collect::<Vec<_>>());
    assert_eq!(of_project(&platform.tree(), "shop").len(), 2 * 7 + 2);
}

#[test]
fn metadata_written_before_projects_is_owned_by_the_project_its_name_says() {
    let platform = Platform::new();
    let shop = config("shop", "databases = [\"postgres\"]");
    let prs: Vec<_> = (1..=3).map(|n| open("shop", n, 0)).collect();
    platform.sync("shop", &shop, &prs);
    // An older prenv wrote no project field.
    platform.push(|w| {
        for n in 1..=3 {
            let path = w.join(format!("environments/shop-pr-{n}/prenv.json"));
            let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            meta.as_object_mut().unwrap().remove("project");
            std::fs::write(&path, serde_json::to_string_pretty(&meta).unwrap() + "\n").unwrap();
        }
    });
    let legacy = of_project(&platform.tree(), "shop");
    // Upgrading changes nothing, and a second project does not take them either.
    let out = platform.sync("shop", &shop, &prs);
    assert!(out.contains("no change"), "{out}");
    platform.sync("blog", &config("blog", ""), &[open("blog", 1, 0)]);
    assert_eq!(of_project(&platform.tree(), "shop"), legacy);
    // A new commit rewrites the environment anyway, and then it names its project.
    platform.sync(
        "shop",
        &shop,
        &[open("shop", 1, 1), open("shop", 2, 0), open("shop", 3, 0)],
    );
    let meta: serde_json::Value =
        serde_json::from_str(&platform.file("environments/shop-pr-1/prenv.json").unwrap()).unwrap();
    assert_eq!(meta["project"], "shop");
    let untouched: serde_json::Value =
        serde_json::from_str(&platform.file("environments/shop-pr-2/prenv.json").unwrap()).unwrap();
    assert!(untouched.get("project").is_none());
}

#[test]
fn an_environment_whose_metadata_names_another_project_is_left_alone() {
    let platform = Platform::new();
    let shop = config("shop", "databases = []");
    platform.sync("shop", &shop, &[open("shop", 1, 0), open("shop", 2, 0)]);
    // Someone copied another project's metadata into shop-pr-2.
    platform.push(|w| {
        let path = w.join("environments/shop-pr-2/prenv.json");
        let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        meta["project"] = json!("blog");
        std::fs::write(&path, serde_json::to_string_pretty(&meta).unwrap() + "\n").unwrap();
    });
    let before = of_project(&platform.tree(), "shop");
    let out = platform.run("shop", &shop, "plan", &[open("shop", 1, 0), closed("shop", 2)], &[]);
    let plan = text(&out.stdout);
    assert!(plan.contains("names project \"blog\""), "{plan}");
    platform.sync("shop", &shop, &[open("shop", 1, 0), closed("shop", 2)]);
    assert_eq!(
        of_project(&platform.tree(), "shop"),
        before,
        "the foreign environment was touched"
    );
}

#[test]
fn argo_cd_gets_one_applicationset_per_project_and_migrates_the_shared_file() {
    let platform = Platform::new();
    let argo = "databases = []\nengine = \"argocd\"\n[argocd]\nrepo_url = \"https://github.com/acme/environments.git\"";
    let conf = |p: &str| config(p, argo).replace("engine = \"flux\"\n", "");
    platform.sync("shop", &conf("shop"), &[open("shop", 1, 0)]);
    // The repository as an older prenv left it: shop's ApplicationSet in the one shared file.
    platform.push(|w| {
        std::fs::rename(
            w.join("argocd/applicationset-shop.yaml"),
            w.join("argocd/applicationset.yaml"),
        )
        .unwrap();
        std::fs::write(
            w.join("argocd/kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- applicationset.yaml\n",
        )
        .unwrap();
    });
    let names = |platform: &Platform| -> Vec<String> {
        let work = platform.checkout();
        let mut names: Vec<String> = kustomize(&work.path().join("w/argocd"))
            .iter()
            .map(|o| str_at(o, &["metadata", "name"]).unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    // Blog's first sync adds its own ApplicationSet and keeps shop's where it is.
    platform.sync("blog", &conf("blog"), &[open("blog", 1, 0)]);
    assert!(platform.file("argocd/applicationset.yaml").is_some());
    assert_eq!(names(&platform), ["blog-previews", "shop-previews"]);
    let set = platform.file("argocd/applicationset-blog.yaml").unwrap();
    assert!(set.contains("environments/blog-pr-*/prenv.json"), "{set}");
    // Shop's next sync moves its ApplicationSet to its own file: the same object, so Argo CD
    // keeps every Application it generated.
    platform.sync("shop", &conf("shop"), &[open("shop", 1, 0)]);
    assert!(platform.file("argocd/applicationset.yaml").is_none());
    assert!(platform.file("argocd/applicationset-shop.yaml").is_some());
    assert_eq!(names(&platform), ["blog-previews", "shop-previews"]);
    let out = platform.sync("blog", &conf("blog"), &[open("blog", 1, 0)]);
    assert!(out.contains("no change"), "{out}");
}

#[test]
fn a_project_id_that_would_make_names_ambiguous_is_refused() {
    let platform = Platform::new();
    let out = platform.run("x", &config("shop-pr-tools", ""), "plan", &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-pr-"), "{}", text(&out.stderr));
}

/// An application of its own, as a team brings it: its Deployment (another port, probes and
/// variables), Service, Ingress and an extra resource, all plain YAML. What prenv patches keeps
/// its name (`app` Deployment with image `app`, `app` Ingress); see base/README.md.
const BLOG_TEMPLATE: &[(&str, &str)] = &[
    (
        "kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - app.yaml\n  - settings.yaml\n",
    ),
    (
        "app.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  labels: {app.kubernetes.io/name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: app}}
  template:
    metadata:
      labels: {app.kubernetes.io/name: app}
    spec:
      containers:
        - name: app
          image: app
          ports: [{name: http, containerPort: 9000}]
          env:
            - {name: BLOG_MODE, value: preview}
          envFrom: [{configMapRef: {name: blog-settings}}]
          readinessProbe: {httpGet: {path: /healthz, port: http}}
---
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  selector: {app.kubernetes.io/name: app}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
spec:
  ingressClassName: traefik
  tls: [{hosts: [blog.example.invalid]}]
  rules:
    - host: blog.example.invalid
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: app, port: {name: http}}}}]
"#,
    ),
    (
        "settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: blog-settings\ndata:\n  THEME: dark\n",
    ),
];

fn add_blog_template(platform: &Platform) {
    platform.push(|w| {
        let base = w.join("projects/blog/base");
        std::fs::create_dir_all(&base).unwrap();
        for (name, body) in BLOG_TEMPLATE {
            std::fs::write(base.join(name), body).unwrap();
        }
    });
}

fn find<'a>(objects: &'a [serde_yaml::Value], kind: &str, name: &str) -> Option<&'a serde_yaml::Value> {
    objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some(kind) && str_at(o, &["metadata", "name"]) == Some(name))
}

#[test]
fn two_applications_with_their_own_templates_live_in_one_repository() {
    let platform = Platform::new();
    let shop = config("shop", "databases = [\"postgres\"]");
    let blog = config("blog", "databases = [\"postgres\"]");
    platform.sync("shop", &shop, &[open("shop", 1, 0)]);
    add_blog_template(&platform);
    platform.sync("blog", &blog, &[open("blog", 1, 0)]);
    let kustomization = platform.file("environments/blog-pr-1/kustomization.yaml").unwrap();
    // Its own base; no overlay of its own for PostgreSQL, so the default one.
    assert!(kustomization.contains("../../projects/blog/base"), "{kustomization}");
    assert!(kustomization.contains("../../overlays/postgres"), "{kustomization}");
    let work = platform.checkout();
    let root = work.path().join("w");
    let blog_objects = kustomize(&root.join("environments/blog-pr-1"));
    let shop_objects = kustomize(&root.join("environments/shop-pr-1"));
    let container = |objects: &[serde_yaml::Value]| {
        find(objects, "Deployment", "app").unwrap()["spec"]["template"]["spec"]["containers"][0].clone()
    };
    let (blog_app, shop_app) = (container(&blog_objects), container(&shop_objects));
    assert_eq!(blog_app["ports"][0]["containerPort"].as_u64(), Some(9000));
    assert_eq!(shop_app["ports"][0]["containerPort"].as_u64(), Some(8080));
    assert_eq!(
        str_at(&blog_app, &["readinessProbe", "httpGet", "path"]),
        Some("/healthz")
    );
    assert_eq!(
        str_at(&blog_app, &["image"]),
        Some(
            format!(
                "ghcr.io/acme/blog:pr-1-{}",
                &open("blog", 1, 0)["head"]["sha"].as_str().unwrap()[..7]
            )
            .as_str()
        )
    );
    let env_names: Vec<&str> = blog_app["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in ["BLOG_MODE", "DATABASE_URL", "PRENV_URL", "PRENV_PR"] {
        assert!(env_names.contains(&name), "{name} missing from {env_names:?}");
    }
    let settings = find(&blog_objects, "ConfigMap", "blog-settings").expect("blog's extra resource");
    assert_eq!(str_at(settings, &["metadata", "namespace"]), Some("blog-pr-1"));
    assert!(find(&shop_objects, "ConfigMap", "blog-settings").is_none());
    let ingress = find(&blog_objects, "Ingress", "app").unwrap();
    assert_eq!(
        str_at(ingress, &["spec", "rules", "0", "host"]),
        Some("blog-pr-1.p.example.com")
    );
    // Shop's environment did not move off the shared default template.
    let shop_kustomization = platform.file("environments/shop-pr-1/kustomization.yaml").unwrap();
    assert!(shop_kustomization.contains("- \"../../base\""), "{shop_kustomization}");
}

#[test]
fn one_projects_broken_template_does_not_block_another_projects_environments() {
    let platform = Platform::new();
    let shop = config("shop", "databases = []");
    let blog = config("blog", "databases = []");
    platform.sync("shop", &shop, &[open("shop", 1, 0)]);
    add_blog_template(&platform);
    platform.sync("blog", &blog, &[open("blog", 1, 0)]);
    // Someone breaks blog's template: it names a file that does not exist.
    platform.push(|w| {
        std::fs::write(
            w.join("projects/blog/base/kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - app.yaml\n  - missing.yaml\n",
        )
        .unwrap();
    });
    // Shop's next PR is written, and everything Flux applies for shop still builds: each
    // environment has a Flux Kustomization of its own, so only blog's fail to reconcile.
    platform.sync("shop", &shop, &[open("shop", 1, 0), open("shop", 2, 0)]);
    let work = platform.checkout();
    let root = work.path().join("w");
    assert_eq!(built_wiring(&root), ["blog-pr-1", "shop-pr-1", "shop-pr-2"]);
    for env in ["shop-pr-1", "shop-pr-2"] {
        kustomize(&root.join("environments").join(env));
    }
    let broken = Command::new(kubectl())
        .args(["kustomize", s(&root.join("environments/blog-pr-1"))])
        .output()
        .unwrap();
    assert!(!broken.status.success(), "blog's environment should not build");
}

#[test]
fn onboarding_a_second_application_is_one_command_and_idempotent() {
    let platform = Platform::new();
    let shop = config("shop", "databases = [\"postgres\"]");
    platform.sync("shop", &shop, &[open("shop", 1, 0)]);
    let blog = config("blog", "databases = [\"postgres\"]");
    let tip = || git(&platform.remote, &["rev-parse", "main"]);
    let before = tip();
    // The dry run shows the files and the GitHub steps, and writes nothing.
    let dry = platform.run("blog", &blog, "onboard", &[], &["--dry-run"]);
    let shown = text(&dry.stdout);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    for want in [
        "also serving shop",
        "would write projects/blog/base/deployment.yaml",
        "would write projects/blog/overlays/postgres/kustomization.yaml",
        "https://github.com/acme/blog/settings/hooks/new",
        "require the status check `prenv/preview`",
        "dry run: nothing written",
    ] {
        assert!(shown.contains(want), "{want:?} missing:\n{shown}");
    }
    assert!(!shown.contains("overlays/mariadb"), "{shown}");
    assert_eq!(tip(), before);
    let out = platform.run("blog", &blog, "onboard", &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("committed"), "{}", text(&out.stdout));
    let onboarded = tip();
    let again = platform.run("blog", &blog, "onboard", &[], &[]);
    assert!(
        text(&again.stdout).contains("no change: blog is onboarded already"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(tip(), onboarded);
    // Shop, whose environments build on the shared template, is not moved off it.
    let shop_again = platform.run("shop", &shop, "onboard", &[], &[]);
    assert!(
        text(&shop_again.stdout).contains("build on the shared base/"),
        "{}",
        text(&shop_again.stdout)
    );
    assert_eq!(tip(), onboarded);
    // Blog's first sync builds on its own template, which builds.
    platform.sync("blog", &blog, &[open("blog", 1, 0)]);
    let kustomization = platform.file("environments/blog-pr-1/kustomization.yaml").unwrap();
    assert!(kustomization.contains("../../projects/blog/base"), "{kustomization}");
    assert!(
        kustomization.contains("../../projects/blog/overlays/postgres"),
        "{kustomization}"
    );
    let work = platform.checkout();
    let objects = kustomize(&work.path().join("w/environments/blog-pr-1"));
    assert!(find(&objects, "Cluster", "db").is_some(), "blog's own postgres overlay");
    // A bad config is refused before anything is read or written.
    let bad = platform.run("bad", &config("Blog", ""), "onboard", &[], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("project_id"), "{}", text(&bad.stderr));
}

#[test]
fn a_hand_broken_index_of_one_project_leaves_the_others_sync_and_wiring_working() {
    let platform = Platform::new();
    let shop = config("shop", "databases = []");
    let blog = config("blog", "databases = []");
    platform.sync("shop", &shop, &[open("shop", 1, 0)]);
    platform.sync("blog", &blog, &[open("blog", 1, 0)]);
    // Someone's merge leaves conflict markers in blog's index.
    let index = "flux/environments/blog/kustomization.yaml";
    let broken = "<<<<<<< HEAD\nresources:\n- blog-pr-1.yaml\n=======\nresources: []\n>>>>>>> theirs\n";
    platform.push(|w| std::fs::write(w.join(index), broken).unwrap());
    // Shop's sync neither stops nor mentions blog, and shop's wiring builds.
    let out = platform.sync("shop", &shop, &[open("shop", 1, 0), open("shop", 2, 0)]);
    assert!(out.contains("committed"), "{out}");
    assert!(!out.contains("blog"), "{out}");
    // Blog's sync writes its new environment, keeps the broken index as it is and says why.
    let blog_prs = [open("blog", 1, 0), open("blog", 2, 0)];
    let out = platform.sync("blog", &blog, &blog_prs);
    assert!(out.contains(&format!("kept    {index}: it does not parse")), "{out}");
    assert_eq!(platform.file(index).as_deref(), Some(broken));
    assert!(platform.file("environments/blog-pr-2/prenv.json").is_some());
    // The same inputs again: nothing to commit, and the index is still reported.
    let again = platform.sync("blog", &blog, &blog_prs);
    assert!(
        again.contains("no change") && again.contains(&format!("kept    {index}")),
        "{again}"
    );
    let work = platform.checkout();
    let root = work.path().join("w");
    assert_eq!(
        built_names(&root.join("flux/environments")),
        ["prenv-environments-blog", "prenv-environments-shop"]
    );
    assert_eq!(
        built_names(&root.join("flux/environments/shop")),
        ["shop-pr-1", "shop-pr-2"]
    );
    let blog_build = Command::new(kubectl())
        .args(["kustomize", s(&root.join("flux/environments/blog"))])
        .output()
        .unwrap();
    assert!(!blog_build.status.success(), "blog's broken index should not build");
}

#[test]
fn environments_wired_before_projects_had_an_index_stay_at_the_top_until_pruned() {
    let platform = Platform::new();
    let shop = config("shop", "databases = []");
    platform.sync("shop", &shop, &[open("shop", 1, 0), open("shop", 2, 0)]);
    // The layout of an older prenv: every environment's Kustomization at the top of the wiring,
    // listed by the one shared index, and no project directory.
    platform.push(|w| {
        let flux = w.join("flux/environments");
        for n in [1, 2] {
            let file = format!("shop-pr-{n}.yaml");
            std::fs::rename(flux.join("shop").join(&file), flux.join(&file)).unwrap();
        }
        std::fs::remove_dir_all(flux.join("shop")).unwrap();
        std::fs::remove_file(flux.join("shop.yaml")).unwrap();
        std::fs::write(
            flux.join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- shop-pr-1.yaml\n- shop-pr-2.yaml\n",
        )
        .unwrap();
    });
    let legacy = |tree: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        tree.iter()
            .filter(|(p, _)| p.starts_with("flux/environments/shop-pr-"))
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect()
    };
    let before = legacy(&platform.tree());
    assert_eq!(before.len(), 2);
    // A new PR is wired in the project's directory; the running ones are not moved (moving them
    // would make the root Kustomization prune them, namespace and database with them).
    let three = [open("shop", 1, 0), open("shop", 2, 0), open("shop", 3, 0)];
    platform.sync("shop", &shop, &three);
    assert_eq!(
        legacy(&platform.tree()),
        before,
        "a running environment's Kustomization moved"
    );
    assert_eq!(
        listed(&platform, "flux/environments/kustomization.yaml"),
        ["shop", "shop-pr-1", "shop-pr-2"]
    );
    assert_eq!(
        listed(&platform, "flux/environments/shop/kustomization.yaml"),
        ["shop-pr-3"]
    );
    let work = platform.checkout();
    assert_eq!(
        built_wiring(&work.path().join("w")),
        ["shop-pr-1", "shop-pr-2", "shop-pr-3"]
    );
    // Closed, an environment at the top leaves it and the root index; the other stays.
    let one_closed = [closed("shop", 1), open("shop", 2, 0), open("shop", 3, 0)];
    platform.sync("shop", &shop, &one_closed);
    let tree = platform.tree();
    assert!(!tree.contains_key("flux/environments/shop-pr-1.yaml"));
    assert!(!tree.contains_key("flux/environments/shop/shop-pr-1.yaml"));
    assert_eq!(legacy(&tree).len(), 1);
    assert_eq!(
        listed(&platform, "flux/environments/kustomization.yaml"),
        ["shop", "shop-pr-2"]
    );
    let again = platform.sync("shop", &shop, &one_closed);
    assert!(again.contains("no change"), "{again}");
}
