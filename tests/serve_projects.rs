//! One `prenv serve` for several projects, as an organisation's GitHub meets it: signed deliveries
//! of two application repositories over real HTTP into real bare repositories, each landing in its
//! own project's environments; another repository's are acknowledged and ignored; a project whose
//! environments repository hangs holds up no other; each project's full resync lists its own
//! repository on a fake GitHub (tests/fakes/github.rs); and the metrics say which project is which.

mod common;
mod fakes;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use hmac::{KeyInit, Mac};
use serde_json::json;

const SECRET: &str = "shared-webhook-secret";
const BLOG_SECRET: &str = "the-blog-projects-own-secret";

/// A project as the test configures it: id, application repository, extra sections, and extra
/// lines of its `[github]` section.
struct Project<'a> {
    id: &'a str,
    repository: &'a str,
    extra: String,
    github: String,
}

impl<'a> Project<'a> {
    fn new(id: &'a str, repository: &'a str) -> Project<'a> {
        Project {
            id,
            repository,
            extra: String::new(),
            github: String::new(),
        }
    }
}

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// A bare repository at `dir/name`.
fn bare(dir: &Path, name: &str) -> PathBuf {
    let remote = dir.join(name);
    git(dir, &["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)]);
    remote
}

impl Server {
    /// The receiver with one config per project in a `--config-dir`; `args` are extra flags
    /// (debounce and resync among them), `env` extra variables.
    fn start(projects: &[Project], args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        bare(dir.path(), "envs.git");
        let configs = dir.path().join("configs");
        std::fs::create_dir(&configs).unwrap();
        for p in projects {
            std::fs::write(
                configs.join(format!("{}.toml", p.id)),
                format!(
                    "project_id = \"{}\"\ndomain = \"p.example.com\"\nimage = \"r/{}\"\nengine = \"flux\"\n{}\n[github]\nrepository = \"{}\"\n{}",
                    p.id, p.id, p.extra, p.repository, p.github
                ),
            )
            .unwrap();
        }
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_prenv"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--config-dir", s(&configs), "--cache-dir", s(&dir.path().join("cache"))])
            .args(args)
            .env("PRENV_IMAGE_CHECK", "false")
            .env_remove("PRENV_CONFIG")
            .env("PRENV_WEBHOOK_SECRET", SECRET)
            .env("GITHUB_TOKEN", "ghp_serve_projects_test")
            .env("PRENV_LOG", "warn")
            .current_dir(dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        let server = Server {
            child: command.spawn().unwrap(),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.get("/healthz").0 != 200 {
            assert!(Instant::now() < deadline, "prenv serve did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("envs.git")
    }

    fn request(&self, raw: &[u8]) -> (u16, String) {
        http_request(self.port, raw)
    }

    fn get(&self, path: &str) -> (u16, String) {
        match TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(_) => self.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()),
            Err(_) => (0, String::new()),
        }
    }

    /// Posts a `pull_request` delivery signed with `secret`; the status and the body.
    fn deliver(&self, delivery: &str, body: &[u8], secret: &str) -> (u16, String) {
        let mut raw = format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: pull_request\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
            sign(secret, body),
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let (status, text) = self.request(&raw);
        (status, text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    }

    fn metrics(&self) -> String {
        self.get("/metrics").1
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn wait_for_envs(remote: &Path, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while env_names(remote) != want {
        assert!(
            Instant::now() < deadline,
            "environments are {:?}, wanted {want:?}",
            env_names(remote)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A `pull_request` delivery of `repository` (GitHub id `id`) about PR `n` at `sha`.
fn event(repository: &str, id: u64, action: &str, n: u64, sha: char) -> Vec<u8> {
    let mut pr = gh_pr(n, &format!("feature/{n}"), &sha.to_string().repeat(40), &[]);
    if action == "closed" {
        pr["state"] = json!("closed");
        pr["closed_at"] = json!("2026-11-24T12:00:00Z");
        pr["updated_at"] = json!("2026-11-24T12:00:00Z");
    }
    pr["base"]["repo"] = json!({"id": id, "full_name": repository});
    pr["head"]["repo"] = json!({"id": id, "full_name": repository});
    serde_json::to_vec(&json!({
        "action": action,
        "number": n,
        "pull_request": pr,
        "repository": {"id": id, "full_name": repository, "owner": {"login": repository.split('/').next()}},
        "sender": {"login": "dev"}
    }))
    .unwrap()
}

/// The value of the sample written exactly `sample` (name and labels) on `/metrics`, 0 when absent.
fn metric(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn each_repositorys_deliveries_land_in_its_own_projects_environments() {
    let server = Server::start(
        &[Project::new("shop", "acme/shop"), Project::new("blog", "acme/blog")],
        &["--repo", "envs.git", "--debounce-ms", "50", "--resync-secs", "0"],
        &[],
    );
    let remote = server.remote();
    // The same PR number in both repositories: only the repository tells them apart.
    let shop = event("acme/shop", 11, "opened", 1, 'a');
    let blog = event("ACME/Blog", 12, "opened", 1, 'b');
    assert_eq!(server.deliver("d-1", &shop, SECRET), (202, "accepted\n".into()));
    assert_eq!(server.deliver("d-2", &blog, SECRET), (202, "accepted\n".into()));
    wait_for_envs(&remote, &["blog-pr-1", "shop-pr-1"]);
    let blog_meta = tip_file(&remote, "environments/blog-pr-1/prenv.json").unwrap();
    assert!(
        blog_meta.contains(&"b".repeat(40)),
        "blog's PR 1 at blog's head: {blog_meta}"
    );

    // A repository no project is configured for: acknowledged, ignored, counted.
    let other = event("acme/wiki", 13, "opened", 2, 'c');
    assert_eq!(
        server.deliver("d-3", &other, SECRET),
        (202, "ignored: another repository\n".into())
    );
    // Closing blog's PR 1 prunes blog's environment, never shop's of the same number.
    let close = event("acme/blog", 12, "closed", 1, 'b');
    assert_eq!(server.deliver("d-4", &close, SECRET).0, 202);
    wait_for_envs(&remote, &["shop-pr-1"]);

    let metrics = server.metrics();
    for (sample, want) in [
        (
            "prenv_webhook_deliveries_total{project=\"shop\",outcome=\"accepted\"}",
            1.0,
        ),
        (
            "prenv_webhook_deliveries_total{project=\"blog\",outcome=\"accepted\"}",
            2.0,
        ),
        ("prenv_webhook_deliveries_total{outcome=\"other_repository\"}", 1.0),
        ("prenv_syncs_total{project=\"shop\",outcome=\"error\"}", 0.0),
        ("prenv_syncs_total{project=\"blog\",outcome=\"error\"}", 0.0),
    ] {
        assert_eq!(metric(&metrics, sample), want, "{sample}\n{metrics}");
    }
    for project in ["shop", "blog"] {
        let syncs = format!("prenv_syncs_total{{project=\"{project}\",outcome=\"ok\"}}");
        assert!(metric(&metrics, &syncs) >= 1.0, "{syncs}\n{metrics}");
        let latency = format!("prenv_webhook_to_commit_seconds_count{{project=\"{project}\"}}");
        assert!(metric(&metrics, &latency) >= 1.0, "{latency}\n{metrics}");
    }
    assert_eq!(
        metrics.matches("# TYPE prenv_syncs_total counter").count(),
        1,
        "one family, a sample per project:\n{metrics}"
    );
}

#[test]
fn a_project_with_its_own_secret_accepts_only_deliveries_signed_with_it() {
    let server = Server::start(
        &[Project::new("shop", "acme/shop"), Project::new("blog", "acme/blog")],
        &["--repo", "envs.git", "--debounce-ms", "50", "--resync-secs", "0"],
        &[("PRENV_WEBHOOK_SECRET_BLOG", BLOG_SECRET)],
    );
    let blog = event("acme/blog", 12, "opened", 3, 'b');
    let shop = event("acme/shop", 11, "opened", 4, 'a');
    // Each project's deliveries need its own secret: blog's, or the shared one for shop.
    assert_eq!(server.deliver("d-1", &blog, SECRET).0, 401);
    assert_eq!(server.deliver("d-2", &shop, BLOG_SECRET).0, 401);
    assert_eq!(server.deliver("d-3", &blog, "guessed").0, 401);
    assert_eq!(server.deliver("d-4", &blog, BLOG_SECRET).0, 202);
    assert_eq!(server.deliver("d-5", &shop, SECRET).0, 202);
    wait_for_envs(&server.remote(), &["blog-pr-3", "shop-pr-4"]);
    let metrics = server.metrics();
    for (sample, want) in [
        ("prenv_webhook_deliveries_total{outcome=\"bad_signature\"}", 1.0),
        (
            "prenv_webhook_deliveries_total{project=\"blog\",outcome=\"bad_signature\"}",
            1.0,
        ),
        (
            "prenv_webhook_deliveries_total{project=\"shop\",outcome=\"bad_signature\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&metrics, sample), want, "{sample}\n{metrics}");
    }
}

/// A git server that accepts connections and never answers: a host that black-holes requests.
fn hanging_git_server() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[test]
fn a_project_whose_environments_repository_hangs_holds_up_no_other_project() {
    // shop's environments repository never answers; blog's is a local bare repository.
    let (_held, port) = hanging_git_server();
    let dir = tempfile::tempdir().unwrap();
    let blog_envs = bare(dir.path(), "blog-envs.git");
    let mut shop = Project::new("shop", "acme/shop");
    shop.extra = format!("[git]\nurl = \"http://127.0.0.1:{port}/shop-envs.git\"\n");
    let mut blog = Project::new("blog", "acme/blog");
    blog.extra = format!("[git]\nurl = \"{}\"\n", s(&blog_envs));
    let server = Server::start(&[shop, blog], &["--debounce-ms", "50", "--resync-secs", "0"], &[]);
    let stuck = event("acme/shop", 11, "opened", 1, 'a');
    assert_eq!(server.deliver("d-1", &stuck, SECRET).0, 202);
    std::thread::sleep(Duration::from_millis(200));
    // shop's sync is stuck fetching; blog's deliveries are synced all the same, one after another.
    for n in 1..=3u64 {
        let opened = event("acme/blog", 12, "opened", n, 'b');
        assert_eq!(server.deliver(&format!("d-b{n}"), &opened, SECRET).0, 202);
        let want: Vec<String> = (1..=n).map(|i| format!("blog-pr-{i}")).collect();
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        wait_for_envs(&blog_envs, &want);
    }
    // The counter moves just after the commit lands.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&server.metrics(), "prenv_syncs_total{project=\"blog\",outcome=\"ok\"}") < 3.0 {
        assert!(
            Instant::now() < deadline,
            "blog's syncs are not counted:\n{}",
            server.metrics()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let metrics = server.metrics();
    for outcome in ["ok", "error"] {
        let sample = format!("prenv_syncs_total{{project=\"shop\",outcome=\"{outcome}\"}}");
        assert_eq!(metric(&metrics, &sample), 0.0, "shop's sync still hangs:\n{metrics}");
    }
}

#[test]
fn a_project_whose_breaker_is_open_holds_up_no_other_project() {
    // shop closes every one of its three environments in one burst: the mass-prune breaker
    // refuses that sync (and every retry) while blog's deliveries keep being synced.
    let mut shop = Project::new("shop", "acme/shop");
    shop.extra = "[sync]\nbreaker_min_envs = 1\n".into();
    // A long debounce: the three closes are one burst, one sync.
    let server = Server::start(
        &[shop, Project::new("blog", "acme/blog")],
        &["--repo", "envs.git", "--debounce-ms", "1000", "--resync-secs", "0"],
        &[],
    );
    let remote = server.remote();
    for n in 1..=3u64 {
        let opened = event("acme/shop", 11, "opened", n, 'a');
        assert_eq!(server.deliver(&format!("d-s{n}"), &opened, SECRET).0, 202);
    }
    wait_for_envs(&remote, &["shop-pr-1", "shop-pr-2", "shop-pr-3"]);
    for n in 1..=3u64 {
        let closed = event("acme/shop", 11, "closed", n, 'a');
        assert_eq!(server.deliver(&format!("d-c{n}"), &closed, SECRET).0, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(
        &server.metrics(),
        "prenv_syncs_total{project=\"shop\",outcome=\"error\"}",
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the breaker did not refuse shop's mass prune"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let opened = event("acme/blog", 12, "opened", 9, 'b');
    assert_eq!(server.deliver("d-b9", &opened, SECRET).0, 202);
    wait_for_envs(&remote, &["blog-pr-9", "shop-pr-1", "shop-pr-2", "shop-pr-3"]);
}

#[test]
fn each_projects_full_resync_lists_its_own_repository() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shop_hub = fakes::github::FakeGitHub::of("acme/shop");
    let blog_hub = fakes::github::FakeGitHub::of("acme/blog");
    shop_hub.set_pull(5, "open", false, false, &[], None);
    blog_hub.set_pull(6, "open", false, false, &[], None);
    let (shop_port, blog_port) = runtime.block_on(async {
        (
            fakes::replay::serve(shop_hub.router()).await,
            fakes::replay::serve(blog_hub.router()).await,
        )
    });
    let mut shop = Project::new("shop", "acme/shop");
    shop.github = format!("api_url = \"http://127.0.0.1:{shop_port}\"\n");
    let mut blog = Project::new("blog", "acme/blog");
    blog.github = format!("api_url = \"http://127.0.0.1:{blog_port}\"\n");
    let server = Server::start(
        &[shop, blog],
        &["--repo", "envs.git", "--debounce-ms", "50", "--resync-secs", "1"],
        &[],
    );
    // No delivery at all: the backstop finds each repository's open PR on its own GitHub.
    wait_for_envs(&server.remote(), &["blog-pr-6", "shop-pr-5"]);
}

/// The Ready Kustomization of shop's PR 101 at head A that kustomize-controller v1.9.4 shows after
/// its first reconcile (the listed object of tests/fixtures/status/flux/interval-reconciles-unchanged.json),
/// rewritten as project `project`'s PR `pr` at head `sha`: name, labels, annotations and path.
fn ready_kustomization(project: &str, pr: u64, sha: &str) -> serde_json::Value {
    let steps = fakes::replay::fixture("flux", "interval-reconciles-unchanged").steps;
    let object = steps[0]["list"]["items"][0].clone();
    let text = object
        .to_string()
        .replace("3f786850e387550fdab836ed7e6dc881de23001b", sha)
        .replace("shop-pr-101", &format!("{project}-pr-{pr}"))
        .replace(
            "\"prenv.dev/project\":\"shop\"",
            &format!("\"prenv.dev/project\":\"{project}\""),
        )
        .replace("\"prenv.dev/pr\":\"101\"", &format!("\"prenv.dev/pr\":\"{pr}\""));
    serde_json::from_str(&text).unwrap()
}

/// A running `prenv watch`; killed on drop.
struct Watch {
    child: Child,
    port: u16,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watch {
    fn metrics(&self) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn one_watch_reports_each_projects_environments_on_its_own_repository() {
    const SHOP: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
    const BLOG: &str = "b5e5ed6dec4810da85f01fd692050e26bc5a09a9";
    const BLOG_LATER: &str = "103e6d3465f605daf999614fd9784c1ce9878d1c";
    const WIKI: &str = "b6589fc6ab0dc82cf12099d1c2d40ab994e8410c";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kube = fakes::kube::FakeKube::new(fakes::kube::FLUX);
    let shop_hub = fakes::github::FakeGitHub::of("acme/shop");
    let blog_hub = fakes::github::FakeGitHub::of("acme/blog");
    let (kube_port, shop_port, blog_port) = runtime.block_on(async {
        (
            fakes::replay::serve(kube.router()).await,
            fakes::replay::serve(shop_hub.router()).await,
            fakes::replay::serve(blog_hub.router()).await,
        )
    });
    // Two projects the watcher has configs for, and a third (wiki) it has none for.
    kube.apply(ready_kustomization("shop", 101, SHOP));
    kube.apply(ready_kustomization("blog", 101, BLOG));
    kube.apply(ready_kustomization("wiki", 101, WIKI));
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    for (project, port) in [("shop", shop_port), ("blog", blog_port)] {
        std::fs::write(
            configs.join(format!("{project}.toml")),
            format!(
                "project_id = \"{project}\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/{project}\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[github]\nrepository = \"acme/{project}\"\napi_url = \"http://127.0.0.1:{port}\"\n[watch]\n{}",
                fakes::replay::UNPACED
            ),
        )
        .unwrap();
    }
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{kube_port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\nusers:\n- name: fake\n  user:\n    token: fake\ncurrent-context: fake\n"),
    )
    .unwrap();
    let port = free_port();
    let watch = Watch {
        child: Command::new(env!("CARGO_BIN_EXE_prenv"))
            .args([
                "watch",
                "--config-dir",
                s(&configs),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("GITHUB_TOKEN", "ghp_watch_projects_test")
            .env("PRENV_LOG", "warn")
            .env_remove("PRENV_CONFIG")
            .spawn()
            .unwrap(),
        port,
    };
    let success =
        |hub: &fakes::github::FakeGitHub, sha: &str| hub.statuses_on(sha).iter().any(|(state, _)| state == "success");
    until("each project's listed environment reported ready", || {
        success(&shop_hub, SHOP) && success(&blog_hub, BLOG)
    });
    // A later environment of blog, seen on the watch rather than the list, goes to blog's too.
    kube.apply(ready_kustomization("blog", 8, BLOG_LATER));
    until("blog's new environment reported ready", || {
        success(&blog_hub, BLOG_LATER)
    });
    until("every report written", || {
        let m = watch.metrics();
        m.contains("prenv_github_pending_reports{project=\"shop\"} 0")
            && m.contains("prenv_github_pending_reports{project=\"blog\"} 0")
    });
    let shas = |hub: &fakes::github::FakeGitHub| {
        let mut shas: Vec<String> = hub.hub().statuses.iter().map(|(sha, _)| sha.clone()).collect();
        shas.dedup();
        shas
    };
    assert_eq!(
        shas(&shop_hub),
        [SHOP],
        "shop's repository is told of shop's environment alone"
    );
    assert_eq!(shas(&blog_hub), [BLOG, BLOG_LATER], "blog's of blog's alone");
    assert!(
        shop_hub
            .prenv_comments()
            .iter()
            .all(|(pr, body)| *pr == 101 && body.contains("shop-pr-101")),
        "{:?}",
        shop_hub.prenv_comments()
    );
    let blog_comments: Vec<u64> = blog_hub.prenv_comments().iter().map(|(pr, _)| *pr).collect();
    assert_eq!(blog_comments, [101, 8]);

    let metrics = watch.metrics();
    for sample in [
        "prenv_environments{project=\"shop\",state=\"ready\"} 1\n",
        "prenv_environments{project=\"blog\",state=\"ready\"} 2\n",
        "prenv_github_writes_total{project=\"blog\",kind=\"status\"}",
        "prenv_open_to_ready_seconds_count{project=\"shop\"}",
    ] {
        assert!(metrics.contains(sample), "{sample} missing from /metrics:\n{metrics}");
    }
    assert!(
        metric(&metrics, "prenv_watch_other_project_objects_total") >= 1.0,
        "wiki's object is counted, never reported:\n{metrics}"
    );
    assert_eq!(
        metrics.matches("# TYPE prenv_environments gauge").count(),
        1,
        "one family, a sample per project"
    );
}

#[test]
fn configs_naming_one_project_twice_are_refused_and_other_commands_take_one_config() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, project: &str, repository: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("project_id = \"{project}\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"{repository}\"\n"),
        )
        .unwrap();
        path
    };
    let shop = write("shop.toml", "shop", "acme/shop");
    let again = write("shop-copy.toml", "shop", "acme/shop-copy");
    for command in ["serve", "watch"] {
        let out = prenv(&["--config", s(&shop), "--config", s(&again), command]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = text(&out.stderr);
        assert!(
            err.contains("project_id \"shop\"") && err.contains("shop.toml") && err.contains("shop-copy.toml"),
            "{command}: {err}"
        );
    }
    let out = prenv(&["--config", s(&shop), "--config", s(&again), "plan", "--prs", s(&shop)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config is given 2 times; only `serve` and `watch` act for several projects"),
        "{}",
        text(&out.stderr)
    );
}
