//! Render benchmark: 1,000 open PRs, in process (parse + plan + render) and end to end through the
//! release binary (`prenv render` into an empty directory), with wall time and peak memory.
//! Run with `cargo bench --bench render` (or scripts/bench); prints its figures.

use std::time::{Duration, Instant};

const PRS: u64 = 1_000;
const ROUNDS: usize = 10;
const NOW: &str = "2026-11-24T12:00:00Z";
const CONFIG: &str = "project_id = \"shop\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\", \"mariadb\"]\nengine = \"flux\"\n";

/// The config with a fresh age recipient, so every environment's MariaDB credentials are encrypted.
fn config_text() -> String {
    let recipient = age::x25519::Identity::generate().to_public();
    format!("{CONFIG}[secrets]\nage_recipients = [\"{recipient}\"]\n")
}

fn snapshot() -> String {
    let prs: Vec<serde_json::Value> = (1..=PRS)
        .map(|n| {
            serde_json::json!({
                "number": n, "state": "open", "draft": false, "title": format!("Change {n}"),
                "labels": [{"name": "enhancement"}],
                "head": {"sha": format!("{:040x}", n * 104_729), "ref": format!("feature/change-{n}"), "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
                "user": {"login": "dev"}, "closed_at": null, "merged_at": null, "updated_at": "2026-11-24T10:00:00Z"
            })
        })
        .collect();
    serde_json::to_string(&prs).unwrap()
}

fn peak_rss_kib(who: i32) -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(who, &mut usage) };
    usage.ru_maxrss
}

fn stats(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[0], times[times.len() / 2])
}

fn main() {
    let json = snapshot();
    let config = prenv::model::config::Config::parse(&config_text(), "bench").unwrap();
    let now = NOW.parse().unwrap();

    let mut times = Vec::new();
    let mut files = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let prs = prenv::model::pr::parse_snapshot(&json, "bench").unwrap();
        let plan = prenv::core::plan::plan(&config, &prs, &Default::default(), now);
        let envs: Vec<_> = plan.desired().collect();
        let tree = prenv::manifests::render::render_owned(&config, &envs).unwrap();
        times.push(start.elapsed());
        files = tree.len();
    }
    let (min, median) = stats(times);
    println!("render core, {PRS} open PRs -> {files} files: min {min:.1?}, median {median:.1?} over {ROUNDS} rounds");
    println!(
        "render core, peak RSS of the bench process: {} KiB",
        peak_rss_kib(libc::RUSAGE_SELF)
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prenv.toml"), config_text()).unwrap();
    std::fs::write(dir.path().join("prs.json"), &json).unwrap();
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let out = dir.path().join(format!("out-{round}"));
        let start = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_prenv"))
            .current_dir(dir.path())
            .args([
                "--config",
                "prenv.toml",
                "render",
                "--prs",
                "prs.json",
                "--now",
                NOW,
                "--out",
            ])
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        times.push(start.elapsed());
        assert!(status.success());
    }
    let (min, median) = stats(times);
    println!(
        "prenv render (release binary), {PRS} open PRs into an empty directory: min {min:.1?}, median {median:.1?} over {ROUNDS} runs"
    );
    println!(
        "prenv render (release binary), peak RSS: {} KiB",
        peak_rss_kib(libc::RUSAGE_CHILDREN)
    );
}
