//! "No broken preview on a new commit": `prenv sync` and `prenv plan` (the real binary, a real bare
//! environments repository) against the local fake registry of tests/fakes/registry.rs, which follows
//! the OCI distribution spec and distribution's handlers (cited there). An environment moves to a new
//! head only once its image exists; meanwhile it keeps the previous image, records the head it waits
//! for, and the watcher reports the wait as pending on that head.

mod common;
#[path = "fakes/registry.rs"]
mod fake_registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use fake_registry::*;
use prenv::core::status::{self, Verdict};
use prenv::core::tracker::{Effect, Event, State as Tracked, Tracker};

const USER: &str = "ci";
const PASSWORD: &str = "s3cret-registry-pass";
const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A private registry holding nothing yet; user `ci` may pull `acme/shop` (token flow).
async fn registry() -> Fake {
    Fake::start(|s| s.user(USER, PASSWORD, &["acme/shop"]), public(&[])).await
}

struct Fixture {
    dir: tempfile::TempDir,
    remote: PathBuf,
    image: String,
}

impl Fixture {
    fn new(fake: &Fake, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = fake.image("acme/shop");
        write_config(
            dir.path(),
            &format!(
                "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"{image}\"\ndatabases = []\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\n{extra}"
            ),
        );
        let remote = dir.path().join("envs.git");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)],
        );
        Fixture { dir, remote, image }
    }

    /// `prenv <cmd>` with these PRs at `now`, checking images with the registry credentials.
    fn run(&self, cmd: &str, prs: &[serde_json::Value], now: &str) -> Output {
        let snapshot = write_prs(self.dir.path(), prs);
        let config = self.dir.path().join("prenv.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_prenv"))
            .args([
                "--config",
                s(&config),
                cmd,
                "--prs",
                s(&snapshot),
                "--repo",
                s(&self.remote),
            ])
            .args(["--now", now])
            .env_remove("PRENV_CONFIG")
            .env_remove("PRENV_IMAGE_CHECK")
            .env_remove("PRENV_REGISTRY_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .env("PRENV_REGISTRY_USERNAME", USER)
            .env("PRENV_REGISTRY_PASSWORD", PASSWORD)
            .env("PRENV_LOG", "info")
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "prenv {cmd} failed: {all}");
        assert!(!all.contains(PASSWORD), "the registry password leaked: {all}");
        out
    }

    fn meta(&self, env: &str) -> serde_json::Value {
        let json = git(&self.remote, &["show", &format!("main:environments/{env}/prenv.json")]);
        serde_json::from_str(&json).unwrap()
    }

    fn file(&self, path: &str) -> String {
        git(&self.remote, &["show", &format!("main:{path}")])
    }

    fn commits(&self) -> usize {
        git(&self.remote, &["rev-list", "--count", "main"])
            .trim()
            .parse()
            .unwrap()
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// PR `n` at head `sha`, last updated at `updated`.
fn pr(n: u64, sha: &str, updated: &str) -> serde_json::Value {
    let mut pr = gh_pr(n, &format!("feature/{n}"), sha, &[]);
    pr["updated_at"] = updated.into();
    pr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_commit_keeps_the_running_image_until_its_own_exists_then_moves() {
    let fake = registry().await;
    fake.push("acme/shop", "pr-7-aaaaaaa", OCI_INDEX);
    let f = Fixture::new(&fake, "");
    f.run("sync", &[pr(7, A, "2026-11-24T10:00:00Z")], "2026-11-24T10:01:00Z");
    assert_eq!(f.meta("shop-pr-7")["image"], format!("{}:pr-7-aaaaaaa", f.image));
    assert!(fake.tokens_issued() >= 1, "the check went through the token flow");

    // A push: CI has not built pr-7-bbbbbbb yet.
    let pushed = [pr(7, B, "2026-11-24T11:00:00Z")];
    let waiting = format!("waiting for image {}:pr-7-bbbbbbb", f.image);
    let planned = f.run("plan", &pushed, "2026-11-24T11:00:30Z");
    assert!(text(&planned.stdout).contains(&waiting), "{}", text(&planned.stdout));
    let out = f.run("sync", &pushed, "2026-11-24T11:00:30Z");
    assert!(
        text(&out.stdout).contains(&format!(
            "{waiting}: the registry does not have it yet; keeps running aaaaaaa"
        )),
        "{}",
        text(&out.stdout)
    );
    let meta = f.meta("shop-pr-7");
    assert_eq!(
        (meta["head_sha"].as_str(), meta["image"].as_str()),
        (Some(A), Some(&*format!("{}:pr-7-aaaaaaa", f.image)))
    );
    assert_eq!(
        meta["waiting_for"],
        serde_json::json!({"sha": B, "image": format!("{}:pr-7-bbbbbbb", f.image), "since": "2026-11-24T11:00:30Z"})
    );
    let env_kustomization = f.file("environments/shop-pr-7/kustomization.yaml");
    assert!(
        env_kustomization.contains("newTag: pr-7-aaaaaaa") && !env_kustomization.contains("replicas"),
        "{env_kustomization}"
    );
    let wiring = f.file("flux/environments/shop/shop-pr-7.yaml");
    assert!(wiring.contains(&format!("prenv.dev/waiting-for-sha: {B}")), "{wiring}");
    assert!(wiring.contains(&format!("prenv.dev/head-sha: {A}")), "{wiring}");

    // Still building: the next sync commits nothing.
    let commits = f.commits();
    let out = f.run("sync", &pushed, "2026-11-24T11:03:00Z");
    assert!(text(&out.stdout).contains("no change"), "{}", text(&out.stdout));
    assert_eq!(f.commits(), commits);

    // CI pushed it: the next sync moves, and the head's clock started when it began waiting.
    fake.push("acme/shop", "pr-7-bbbbbbb", OCI_MANIFEST);
    let out = f.run("sync", &pushed, "2026-11-24T11:06:00Z");
    assert!(
        text(&out.stdout).contains("is in the registry now"),
        "{}",
        text(&out.stdout)
    );
    let meta = f.meta("shop-pr-7");
    assert_eq!(meta["image"], format!("{}:pr-7-bbbbbbb", f.image));
    assert_eq!(meta["head_sha"], B);
    assert_eq!(meta.get("waiting_for"), None);
    assert_eq!(meta["committed_at"], "2026-11-24T11:00:30Z");
    assert!(!f.file("flux/environments/shop/shop-pr-7.yaml").contains("waiting-for"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_pr_without_its_image_is_created_with_the_app_held_at_zero_replicas() {
    let fake = registry().await;
    let f = Fixture::new(&fake, "");
    let out = f.run("sync", &[pr(8, A, "2026-11-24T10:00:00Z")], "2026-11-24T10:00:10Z");
    assert!(
        text(&out.stdout).contains("held at zero replicas"),
        "{}",
        text(&out.stdout)
    );
    let checkout = f.dir.path().join("checkout");
    Command::new("git")
        .args(["clone", "--quiet", s(&f.remote), s(&checkout)])
        .status()
        .unwrap();
    let objects = kustomize(&checkout.join("environments/shop-pr-8"));
    let app = objects
        .iter()
        .find(|o| str_at(o, &["kind"]) == Some("Deployment"))
        .expect("the app Deployment is rendered");
    assert_eq!(app["spec"]["replicas"].as_u64(), Some(0), "no pod to fail pulling");
    assert!(objects.iter().any(|o| str_at(o, &["kind"]) == Some("Namespace")));

    fake.push("acme/shop", "pr-8-aaaaaaa", OCI_INDEX);
    f.run("sync", &[pr(8, A, "2026-11-24T10:00:00Z")], "2026-11-24T10:04:00Z");
    assert!(!f.file("environments/shop-pr-8/kustomization.yaml").contains("replicas"));
    assert_eq!(f.meta("shop-pr-8")["committed_at"], "2026-11-24T10:00:10Z");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_is_down_holds_only_the_moving_heads_and_says_why() {
    let fake = registry().await;
    fake.push("acme/shop", "pr-7-aaaaaaa", OCI_INDEX);
    fake.push("acme/shop", "pr-9-aaaaaaa", OCI_INDEX);
    let f = Fixture::new(&fake, "");
    f.run(
        "sync",
        &[pr(7, A, "2026-11-24T10:00:00Z"), pr(9, A, "2026-11-24T10:00:00Z")],
        "2026-11-24T10:01:00Z",
    );
    fake.go_down(503);
    let now = [
        pr(7, B, "2026-11-24T11:00:00Z"),
        pr(9, A, "2026-11-24T10:00:00Z"),
        pr(10, A, "2026-11-24T11:00:00Z"),
    ];
    let out = f.run("sync", &now, "2026-11-24T11:01:00Z");
    let shown = text(&out.stdout);
    assert!(shown.contains("cannot check it (the registry answered 503"), "{shown}");
    assert_eq!(
        f.meta("shop-pr-7")["image"],
        format!("{}:pr-7-aaaaaaa", f.image),
        "kept, not moved blindly"
    );
    assert!(f.meta("shop-pr-10")["waiting_for"].is_object(), "created, held");
    assert!(
        shown.contains("keep    shop-pr-9"),
        "an unchanged environment is untouched: {shown}"
    );
    // Back up: the next sync moves what waited.
    fake.recover();
    fake.push("acme/shop", "pr-7-bbbbbbb", OCI_INDEX);
    f.run("sync", &now, "2026-11-24T11:02:00Z");
    assert_eq!(f.meta("shop-pr-7")["image"], format!("{}:pr-7-bbbbbbb", f.image));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_heads_that_change_cost_a_registry_request_and_the_check_can_be_turned_off() {
    let fake = registry().await;
    for n in 1..=5 {
        fake.push("acme/shop", &format!("pr-{n}-aaaaaaa"), OCI_INDEX);
    }
    let f = Fixture::new(&fake, "");
    let mut prs: Vec<_> = (1..=5).map(|n| pr(n, A, "2026-11-24T10:00:00Z")).collect();
    f.run("sync", &prs, "2026-11-24T10:01:00Z");
    assert_eq!(fake.manifest_checks(), 5, "one check per new environment");
    f.run("sync", &prs, "2026-11-24T10:02:00Z");
    assert_eq!(fake.manifest_checks(), 5, "running their images already: no request");
    prs[2] = pr(3, B, "2026-11-24T10:05:00Z");
    f.run("sync", &prs, "2026-11-24T10:06:00Z");
    assert_eq!(fake.manifest_checks(), 6, "one changed head, one request");

    // `sync.image_check = false`: moves at once, asks nothing.
    let off = Fixture::new(&fake, "[sync]\nimage_check = false\n");
    off.run("sync", &[pr(4, B, "2026-11-24T10:05:00Z")], "2026-11-24T10:06:00Z");
    assert_eq!(off.meta("shop-pr-4")["image"], format!("{}:pr-4-bbbbbbb", off.image));
    assert_eq!(fake.manifest_checks(), 6);
}

/// A Flux Kustomization as kustomize-controller leaves it: Ready for the head it runs, with
/// prenv's annotations (waiting ones included when given).
fn kustomization(head: &str, waiting: Option<(&str, &str)>, ready: &str) -> serde_json::Value {
    let mut annotations =
        serde_json::json!({"prenv.dev/head-sha": head, "prenv.dev/url": "https://shop-pr-7.p.example.com"});
    if let Some((sha, image)) = waiting {
        annotations["prenv.dev/waiting-for-sha"] = sha.into();
        annotations["prenv.dev/waiting-for-image"] = image.into();
        annotations["prenv.dev/waiting-since"] = "2026-11-24T11:00:30Z".into();
    }
    serde_json::json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "shop-pr-7", "generation": 3, "creationTimestamp": "2026-11-24T10:00:00Z",
            "labels": {"prenv.dev/pr": "7", "prenv.dev/env": "shop-pr-7"}, "annotations": annotations},
        "status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": ready, "reason": "ReconciliationSucceeded",
            "observedGeneration": 3, "message": "Applied revision", "lastTransitionTime": "2026-11-24T10:02:00Z"}]}
    })
}

#[test]
fn the_watcher_reports_the_wait_as_pending_on_the_waiting_head_and_ready_only_after_it_rolled() {
    let image = "ghcr.io/acme/shop:pr-7-bbbbbbb";
    let t0: chrono::DateTime<chrono::Utc> = "2026-11-24T11:01:00Z".parse().unwrap();
    let waiting = status::from_flux(&kustomization(A, Some((B, image)), "True")).unwrap();
    assert_eq!(waiting.head_sha, B, "the wait is about the new head");
    assert_eq!(waiting.verdict, Verdict::Waiting(format!("waiting for image {image}")));
    assert_eq!(waiting.committed_at, Some("2026-11-24T11:00:30Z".parse().unwrap()));
    // Argo CD renders the annotations empty when nothing waits: nothing changes.
    let mut argo_empty = kustomization(A, Some(("", "")), "True");
    argo_empty["metadata"]["annotations"]["prenv.dev/waiting-since"] = "".into();
    assert_eq!(status::from_flux(&argo_empty).unwrap().verdict, Verdict::Ready);

    let mut tracker = Tracker::new(chrono::Duration::minutes(5));
    tracker.observe(Event::Applied(waiting.clone()), t0);
    tracker.observe(
        Event::Recalled {
            env: "shop-pr-7".into(),
            memory: None,
        },
        t0,
    );
    let record = tracker.record("shop-pr-7").expect("recalled").clone();
    assert_eq!(record.head(), B);
    assert!(matches!(&record.state, Tracked::Waiting(w) if w == &format!("waiting for image {image}")));
    let lifecycle = prenv::model::config::Lifecycle::default();
    let (state, description, _) = prenv::adapters::pr_status::commit_status_of(&record, None, &lifecycle);
    assert_eq!(
        (state, description.as_str()),
        ("pending", &*format!("waiting for image {image}"))
    );

    // The wait ends with the head unchanged (a new PR held at zero replicas): a Ready status from
    // before the release says nothing about the pod starting now.
    let stale = status::from_flux(&kustomization(B, None, "True")).unwrap();
    tracker.observe(Event::Applied(stale.clone()), t0 + chrono::Duration::minutes(4));
    assert_eq!(tracker.record("shop-pr-7").unwrap().state, Tracked::Reconciling);
    let effects = tracker.observe(Event::Applied(stale), t0 + chrono::Duration::minutes(5));
    assert_eq!(tracker.record("shop-pr-7").unwrap().state, Tracked::Ready);
    // The object existed before the wait began (created 10:00, waiting since 11:00:30), so this
    // head is a later commit of the environment: its sample is commit→ready, from the wait's start.
    let took = effects.iter().find_map(|e| match e {
        Effect::CommitToReady { seconds, .. } => Some(*seconds),
        _ => None,
    });
    assert!(
        took.is_some_and(|s| s >= 270.0),
        "timed from when the wait began: {took:?}"
    );
}

/// The meta of `env` at the tip of `remote`, once it exists.
fn meta_at(remote: &Path, env: &str) -> Option<serde_json::Value> {
    let out = Command::new("git")
        .arg("-C")
        .arg(remote)
        .args(["show", &format!("main:environments/{env}/prenv.json")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Polls `done` until it holds, failing after a deadline generous for a loaded machine.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_syncs_a_waiting_environment_again_and_moves_it_once_ci_pushed_the_image() {
    use hmac::{KeyInit, Mac};
    use std::io::{Read, Write};
    const SECRET: &str = "webhook-secret-for-image-tests";
    let fake = registry().await;
    let f = Fixture::new(&fake, "");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prenv"))
        .args([
            "--config",
            s(&f.dir.path().join("prenv.toml")),
            "serve",
            "--repo",
            s(&f.remote),
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--resync-secs",
            "0",
            "--debounce-ms",
            "50",
        ])
        .args(["--image-recheck-secs", "1"])
        .env_remove("PRENV_IMAGE_CHECK")
        .env("PRENV_REGISTRY_USERNAME", USER)
        .env("PRENV_REGISTRY_PASSWORD", PASSWORD)
        .env("PRENV_WEBHOOK_SECRET", SECRET)
        .env("PRENV_LOG", "warn")
        .spawn()
        .unwrap();
    let send = |raw: &[u8]| -> String {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = stream.write_all(raw);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    eventually("prenv serve answers /healthz", || {
        send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").contains("200 OK")
    });
    let mut pull = pr(7, A, "2026-11-24T10:00:00Z");
    pull["base"]["repo"] = serde_json::json!({"id": 7001, "full_name": "acme/shop"});
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "opened", "number": 7, "pull_request": pull,
        "repository": {"id": 7001, "full_name": "acme/shop", "owner": {"login": "acme"}}, "sender": {"login": "dev"}
    }))
    .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut raw = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: pull_request\r\nX-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    assert!(send(&raw).contains(" 202 "), "the delivery is accepted");
    eventually("the environment is created, waiting for its image", || {
        meta_at(&f.remote, "shop-pr-7").is_some_and(|m| m["waiting_for"].is_object())
    });
    let checks = fake.manifest_checks();
    // No further event arrives and the full resync is off: only the re-check can move it.
    fake.push("acme/shop", "pr-7-aaaaaaa", OCI_INDEX);
    eventually("the environment moves once the image exists", || {
        meta_at(&f.remote, "shop-pr-7").is_some_and(|m| m.get("waiting_for").is_none())
    });
    assert!(fake.manifest_checks() > checks, "the re-check asked the registry again");
    child.kill().unwrap();
    child.wait().unwrap();
}
