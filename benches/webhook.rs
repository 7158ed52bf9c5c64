//! Webhook benchmark (release build): with 1,000 and then 10,000 environments already in a local
//! bare repository, 200 signed `pull_request` deliveries, one after another, to `prenv serve` with
//! its default debounce; for each, the time from sending it to the new commit on the branch. Prints
//! p50, p95 and max per size. Run with `cargo bench --bench webhook` (PRENV_BENCH_SIZES=100,1000 to
//! choose the sizes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};

mod support;

const EVENTS: u64 = 200;
/// The PRs the events are about (the others' environments just exist).
const PRS: u64 = 50;
const SECRET: &str = "bench-secret";
const CONFIG: &str = "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\n";

/// `envs` open PRs as `prenv sync --prs` reads them.
fn snapshot(envs: u64) -> String {
    let prs: Vec<serde_json::Value> = (1..=envs)
        .map(|n| {
            serde_json::json!({
                "number": n, "state": "open", "draft": false, "title": "bench", "labels": [],
                "head": {"sha": format!("{:040x}", n * 7919), "ref": format!("feature/{n}"), "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
                "closed_at": null, "merged_at": null, "updated_at": "2026-11-24T09:00:00Z"
            })
        })
        .collect();
    serde_json::to_string(&prs).unwrap()
}

fn post(port: u16, delivery: u64, body: &[u8]) {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let sig = hex::encode(mac.finalize().into_bytes());
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-GitHub-Event: pull_request\r\nX-GitHub-Delivery: bench-{delivery}\r\nX-Hub-Signature-256: sha256={sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
}

fn tip(repo: &std::path::Path) -> Option<git2::Oid> {
    git2::Repository::open_bare(repo)
        .ok()?
        .refname_to_id("refs/heads/main")
        .ok()
}

fn main() {
    for envs in support::sizes("1000,10000") {
        run(envs);
    }
}

fn run(envs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("envs.git");
    git2::Repository::init_bare(&remote).unwrap();
    std::fs::write(dir.path().join("prenv.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("prs.json"), snapshot(envs)).unwrap();
    // The environments that already exist, written by a sync as a deployment would have them.
    let cache = dir.path().join("cache");
    let status = Command::new(env!("CARGO_BIN_EXE_prenv"))
        .env("PRENV_IMAGE_CHECK", "false")
        .current_dir(dir.path())
        .args([
            "--config",
            "prenv.toml",
            "sync",
            "--prs",
            "prs.json",
            "--now",
            "2026-11-24T12:00:00Z",
            "--repo",
        ])
        .arg(&remote)
        .env("XDG_CACHE_HOME", &cache)
        .env("PRENV_LOG", "error")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the initial sync of {envs} PRs failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_prenv"))
        .env("PRENV_IMAGE_CHECK", "false")
        .current_dir(dir.path())
        .args([
            "--config",
            "prenv.toml",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--resync-secs",
            "0",
            "--repo",
        ])
        .arg(&remote)
        .env("XDG_CACHE_HOME", &cache)
        .env("PRENV_WEBHOOK_SECRET", SECRET)
        .env("PRENV_LOG", "error")
        .spawn()
        .unwrap();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut latencies = Vec::new();
    for i in 0..EVENTS {
        let n = i % PRS + 1;
        let body = serde_json::to_vec(&serde_json::json!({
            "action": "synchronize",
            "repository": {"id": 1, "full_name": "acme/shop"},
            "pull_request": {
                "number": n, "state": "open", "draft": false, "title": "bench", "labels": [],
                "head": {"sha": format!("{:040x}", i + 1), "ref": format!("feature/{n}"), "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
                "closed_at": null, "merged_at": null, "updated_at": "2026-11-24T10:00:00Z"
            }
        }))
        .unwrap();
        let before = tip(&remote);
        let start = Instant::now();
        post(port, i, &body);
        while tip(&remote) == before {
            assert!(start.elapsed() < Duration::from_secs(30), "event {i} made no commit");
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(start.elapsed());
    }
    let _ = server.kill();
    let _ = server.wait();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "webhook receipt -> commit, {envs} environments in the repository, {EVENTS} events over {PRS} PRs, default 200 ms debounce: p50 {:.0?}, p95 {:.0?}, max {:.0?}",
        at(0.50),
        at(0.95),
        latencies[latencies.len() - 1]
    );
}
