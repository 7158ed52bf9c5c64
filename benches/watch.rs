//! Watcher benchmark (release build): the real `prenv watch` against the fake Kubernetes API server
//! and the fake GitHub of the tests (`tests/fakes/`), with 5,000 ready Flux Kustomizations (the
//! interval-reconcile fixture, one per PR) and pacing off. Prints: the time until every environment
//! is reported and the GitHub requests that took; the time to take in one routine reconcile of every
//! environment (kustomize-controller's seven writes per interval run) and the GitHub writes it caused;
//! the watcher's peak memory (VmHWM); and what the default pacing makes of a first report.
//! Run with `cargo bench --bench watch`.

#[path = "../tests/fakes/mod.rs"]
mod fakes;

use std::time::{Duration, Instant};

use fakes::replay::{Session, UNPACED, fixture, many};

const ENVS: u64 = 5_000;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn until(what: &str, check: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    let mut session = Session::new("flux", UNPACED).await;
    session.hub.hub().limits = false;
    let steps = many(&fixture("flux", "interval-reconciles-unchanged").steps, ENVS);
    // One interval run: from its Ready=Unknown start to the status patch after Ready=True.
    let run_start = steps.iter().position(|s| s["event"] == "apply").unwrap();
    let run_len = 7 * ENVS as usize;
    for item in steps[0]["list"]["items"].as_array().unwrap() {
        session.kube.apply(item.clone());
    }
    let start = Instant::now();
    session.start();
    until("every environment reported", async || {
        session.hub.writes() as u64 >= ENVS * 4
    })
    .await;
    let reported = start.elapsed();
    let watcher = session.watcher.as_ref().unwrap();
    let requests = watcher.metric("prenv_github_requests_total").await.unwrap_or(0.0);
    let events_before = watcher.metric("prenv_watch_events_total").await.unwrap_or(0.0);
    let writes_before = session.hub.writes();

    let start = Instant::now();
    for step in &steps[run_start..run_start + run_len] {
        session.kube.apply(step["object"].clone());
    }
    let watcher = session.watcher.as_ref().unwrap();
    let want = events_before + run_len as f64;
    until("the reconcile wave taken in", async || {
        watcher.metric("prenv_watch_events_total").await.unwrap_or(0.0) >= want
    })
    .await;
    let wave = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wave_writes = session.hub.writes() - writes_before;
    let peak = vm_hwm_kib(watcher.pid());
    println!(
        "prenv watch, {ENVS} ready environments first seen: all reported in {reported:.1?} ({} GitHub writes, {requests} requests OK incl. reads)",
        writes_before
    );
    println!(
        "prenv watch, one interval reconcile of all {ENVS} ({run_len} watch events): taken in {wave:.1?}, {wave_writes} GitHub writes; peak RSS {peak} KiB"
    );
    let per_env = writes_before as f64 / ENVS as f64;
    println!(
        "default pacing (1 s apart, 60/min, 450/h): a first report of 50 unmarked environments ({:.0} writes) takes {:.1} min",
        per_env * 50.0,
        per_env * 50.0 / 60.0
    );
}
