//! `prenv serve` as GitHub meets it: signed deliveries over real HTTP on loopback, into a real bare
//! repository. Tampered, unsigned, replayed, oversized and garbage deliveries change nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use hmac::{KeyInit, Mac};
use serde_json::json;

const SECRET: &str = "webhook-secret-for-tests";

struct Server {
    child: Child,
    port: u16,
    remote: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_for("acme/shop")
    }

    /// A receiver configured for one application repository.
    fn start_for(repository: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("envs.git");
        assert!(
            Command::new("git")
                .args(["init", "--quiet", "--bare"])
                .arg(&remote)
                .status()
                .unwrap()
                .success()
        );
        let config = write_config(
            dir.path(),
            &format!(
                "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"{repository}\"\n"
            ),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_prenv"))
            .args([
                "--config",
                s(&config),
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--repo",
                s(&remote),
            ])
            .args(["--resync-secs", "0", "--debounce-ms", "50", "--max-body-bytes", "65536"])
            .env("PRENV_WEBHOOK_SECRET", SECRET)
            .env("PRENV_LOG", "warn")
            .spawn()
            .unwrap();
        let server = Server {
            child,
            port,
            remote,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.get("/healthz").0 != 200 {
            assert!(Instant::now() < deadline, "prenv serve did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn request(&self, raw: &[u8]) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if stream.write_all(raw).is_err() {
            return (0, String::new());
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, text)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
    }

    fn post(&self, event: &str, delivery: &str, body: &[u8], signature: Option<&str>) -> (u16, String) {
        let mut head = format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: {event}\r\nX-GitHub-Delivery: {delivery}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(sig) = signature {
            head.push_str(&format!("X-Hub-Signature-256: {sig}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.request(&raw)
    }

    fn envs(&self) -> Vec<String> {
        envs_of(&self.remote)
    }

    fn wait_for(&self, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.envs() != want {
            assert!(
                Instant::now() < deadline,
                "environments are {:?}, wanted {want:?}",
                self.envs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn commits(&self) -> usize {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.remote)
            .args(["rev-list", "--count", "main"])
            .output()
            .unwrap();
        text(&out.stdout).trim().parse().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envs_of(remote: &Path) -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(remote)
        .args(["ls-tree", "--name-only", "main", "environments/"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("environments/").to_string())
        .collect()
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `pull_request` delivery as GitHub sends it.
fn event(action: &str, pr: serde_json::Value) -> Vec<u8> {
    event_from("acme/shop", 7001, action, pr)
}

/// A delivery from a given repository: an organisation webhook or App sends every repository's.
fn event_from(repository: &str, id: u64, action: &str, mut pr: serde_json::Value) -> Vec<u8> {
    pr["base"]["repo"] = json!({"id": id, "full_name": repository});
    pr["head"]["repo"] = json!({"id": id, "full_name": repository});
    serde_json::to_vec(&json!({
        "action": action,
        "number": pr["number"],
        "pull_request": pr,
        "repository": {"id": id, "full_name": repository, "owner": {"login": repository.split('/').next()}},
        "sender": {"login": "dev"}
    }))
    .unwrap()
}

fn pr(n: u64, sha: &str) -> serde_json::Value {
    gh_pr(n, &format!("feature/{n}"), sha, &[])
}

#[test]
fn signed_events_drive_the_lifecycle_and_bad_ones_change_nothing() {
    let server = Server::start();
    let opened = event("opened", pr(1, &"a".repeat(40)));
    assert_eq!(server.post("pull_request", "d-1", &opened, Some(&sign(&opened))).0, 202);
    server.wait_for(&["shop-pr-1"]);

    // Tampered body, wrong secret, no signature: refused, nothing synced.
    let other = event("opened", pr(2, &"b".repeat(40)));
    let mut tampered = other.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    assert_eq!(
        server.post("pull_request", "d-2", &tampered, Some(&sign(&other))).0,
        401
    );
    assert_eq!(server.post("pull_request", "d-3", &other, None).0, 401);
    assert_eq!(server.post("pull_request", "d-4", &other, Some("sha256=00")).0, 401);

    // A new commit, then a replay of the first delivery: the replay must not roll it back.
    let mut pushed = pr(1, &"c".repeat(40));
    pushed["updated_at"] = json!("2026-11-24T11:00:00Z");
    let sync = event("synchronize", pushed);
    assert_eq!(server.post("pull_request", "d-5", &sync, Some(&sign(&sync))).0, 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.commits() < 2 {
        assert!(Instant::now() < deadline, "the synchronize event made no commit");
        std::thread::sleep(Duration::from_millis(25));
    }
    let (status, body) = server.post("pull_request", "d-1", &opened, Some(&sign(&opened)));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate"));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.commits(), 2, "a replayed delivery changed the repository");

    // Closing prunes.
    let mut closed = pr(1, &"c".repeat(40));
    closed["state"] = json!("closed");
    closed["closed_at"] = json!("2026-11-24T12:00:00Z");
    closed["updated_at"] = json!("2026-11-24T12:00:00Z");
    let close = event("closed", closed);
    assert_eq!(server.post("pull_request", "d-6", &close, Some(&sign(&close))).0, 202);
    server.wait_for(&[]);

    // Other events and pings are fine but do nothing; an oversized body is refused.
    let ping = br#"{"zen":"Keep it logically awesome."}"#;
    assert_eq!(server.post("ping", "d-7", ping, Some(&sign(ping))).0, 202);
    let big = vec![b'x'; 100_000];
    assert_eq!(server.post("pull_request", "d-8", &big, Some(&sign(&big))).0, 413);
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("prenv_webhook_deliveries_total{outcome=\"bad_signature\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("prenv_webhook_deliveries_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("prenv_webhook_to_commit_seconds_count"), "{metrics}");
}

/// One of GitHub's own example payloads (octokit/webhooks, see tests/fixtures/github/README.md).
fn github_example(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/github").join(name)).unwrap()
}

#[test]
fn githubs_own_example_payloads_drive_the_lifecycle_of_their_repository() {
    let server = Server::start_for("Codertocat/Hello-World");
    let opened = github_example("pull_request.opened.payload.json");
    assert_eq!(
        server.post("pull_request", "ex-1", &opened, Some(&sign(&opened))).0,
        202
    );
    server.wait_for(&["shop-pr-2"]);
    let closed = github_example("pull_request.closed.payload.json");
    assert_eq!(
        server.post("pull_request", "ex-2", &closed, Some(&sign(&closed))).0,
        202
    );
    server.wait_for(&[]);
}

#[test]
fn events_of_other_repositories_are_ignored_and_change_nothing() {
    let server = Server::start();
    for n in [2, 10, 11] {
        let opened = event("opened", pr(n, &"a".repeat(40)));
        assert_eq!(
            server
                .post("pull_request", &format!("own-{n}"), &opened, Some(&sign(&opened)))
                .0,
            202
        );
    }
    server.wait_for(&["shop-pr-10", "shop-pr-11", "shop-pr-2"]);
    let commits = server.commits();

    // Other repositories of the organisation, the same PR numbers: GitHub's own example payloads
    // for Codertocat/Hello-World's PR #2, then PR #10 closed and #11 opened elsewhere.
    let mut closed = pr(10, &"b".repeat(40));
    closed["state"] = json!("closed");
    closed["closed_at"] = json!("2026-11-24T12:00:00Z");
    let foreign = [
        github_example("pull_request.closed.payload.json"),
        github_example("pull_request.opened.with-organization.payload.json"),
        event_from("Codertocat/Another-Repo", 186853003, "closed", closed.clone()),
        event_from("Codertocat/Another-Repo", 186853003, "opened", pr(11, &"c".repeat(40))),
        // The configured name but another id than the one learned: a re-created namesake.
        event_from("acme/shop", 9999, "closed", closed),
        // Another repository's PR of a shape prenv cannot read is still just another repository's.
        br#"{"action":"opened","repository":{"id":5,"full_name":"other/x"},"pull_request":{"number":"two"}}"#.to_vec(),
    ];
    for (i, body) in foreign.iter().enumerate() {
        let (status, text) = server.post("pull_request", &format!("foreign-{i}"), body, Some(&sign(body)));
        assert_eq!(status, 202, "{text}");
        assert!(text.contains("ignored: another repository"), "{i}: {text}");
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.envs(), ["shop-pr-10", "shop-pr-11", "shop-pr-2"]);
    assert_eq!(
        server.commits(),
        commits,
        "another repository's event changed the environments"
    );
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("prenv_webhook_deliveries_total{outcome=\"other_repository\"} 6"),
        "{metrics}"
    );
}

#[test]
fn a_burst_of_events_is_debounced_into_few_commits() {
    let server = Server::start();
    for n in 1..=20u64 {
        let body = event("opened", pr(n, &format!("{:040x}", n)));
        assert_eq!(
            server
                .post("pull_request", &format!("burst-{n}"), &body, Some(&sign(&body)))
                .0,
            202
        );
    }
    let want: Vec<String> = {
        let mut v: Vec<String> = (1..=20).map(|n| format!("shop-pr-{n}")).collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.envs() != want {
        assert!(Instant::now() < deadline, "{:?}", server.envs());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(server.commits() < 20, "{} commits for 20 events", server.commits());
}

#[test]
fn garbage_never_brings_the_receiver_down() {
    let server = Server::start();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..300 {
        let len = (next() % 2048) as usize;
        let body: Vec<u8> = match i % 3 {
            0 => (0..len).map(|_| next() as u8).collect(),
            1 => format!(
                "{{\"action\":\"opened\",\"pull_request\":{{\"number\":{},\"head\":{}}}}}",
                next(),
                next() % 7
            )
            .into_bytes(),
            _ => event(
                "opened",
                json!({"number": next() % 5, "state": "open", "head": {"sha": "zz"}}),
            ),
        };
        // Signed correctly, so the parser itself is exercised.
        let (status, _) = server.post("pull_request", &format!("g-{i}"), &body, Some(&sign(&body)));
        assert!(status == 400 || status == 202, "delivery {i}: status {status}");
    }
    let raw = b"POST /webhook HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nxx";
    let _ = server.request(raw);
    assert_eq!(server.get("/healthz").0, 200, "the receiver died");
    assert!(server.envs().is_empty());
}

#[test]
fn sigterm_stops_the_receiver_cleanly() {
    let mut server = Server::start();
    let body = event("opened", pr(3, &"d".repeat(40)));
    assert_eq!(server.post("pull_request", "t-1", &body, Some(&sign(&body))).0, 202);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "prenv serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(server.envs(), ["shop-pr-3"], "accepted work is finished before exit");
}
