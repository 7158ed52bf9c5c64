//! Sync benchmark (release build): a full sync of 1,000 open PRs into an empty repository, and an
//! incremental sync when 1 of the 1,000 PRs got a new commit, each beside the git floor — `git add -A
//! && git commit` of the identical change, measured in the same run. Prints wall time and peak memory.
//! Run with `cargo bench --bench sync` (or scripts/bench).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PRS: u64 = 1_000;
const ROUNDS: usize = 5;
const NOW: &str = "2026-11-24T12:00:00Z";
const CONFIG: &str = "project_id = \"shop\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\", \"mariadb\"]\nengine = \"flux\"\n";

/// The config with a fresh age recipient, so every environment's MariaDB credentials are encrypted.
fn config_text() -> String {
    let recipient = age::x25519::Identity::generate().to_public();
    format!("{CONFIG}[secrets]\nage_recipients = [\"{recipient}\"]\n")
}

fn snapshot(bumped: Option<u64>) -> String {
    let prs: Vec<serde_json::Value> = (1..=PRS)
        .map(|n| {
            let sha = if Some(n) == bumped { "f".repeat(40) } else { format!("{:040x}", n * 104_729) };
            serde_json::json!({
                "number": n, "state": "open", "draft": false, "title": format!("Change {n}"),
                "labels": [], "head": {"sha": sha, "ref": format!("feature/change-{n}"), "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
                "user": {"login": "dev"}, "closed_at": null, "merged_at": null, "updated_at": "2026-11-24T10:00:00Z"
            })
        })
        .collect();
    serde_json::to_string(&prs).unwrap()
}

/// Runs a command to completion; returns its wall time and peak RSS (KiB) from wait4.
#[allow(clippy::zombie_processes, reason = "wait4 reaps the child to read its rusage")]
fn measure(cmd: &mut Command) -> (Duration, i64) {
    let start = Instant::now();
    let child = cmd.stdout(std::process::Stdio::null()).spawn().expect("spawning");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, writing into locals we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (elapsed, usage.ru_maxrss)
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

fn sync(dir: &Path, repo: &Path, prs: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prenv"));
    cmd.current_dir(dir)
        .args(["--config", "prenv.toml", "sync", "--prs", prs, "--now", NOW, "--repo"])
        .arg(repo);
    cmd
}

/// `git add -A && git commit` in a work tree, as one shell command like a CI job would run it.
fn git_floor(work: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("git add -A && git -c user.name=b -c user.email=b@x commit --quiet -m bench")
        .current_dir(work);
    cmd
}

fn median(mut xs: Vec<(Duration, i64)>) -> (Duration, i64) {
    xs.sort();
    let peak = xs.iter().map(|x| x.1).max().unwrap_or(0);
    (xs[xs.len() / 2].0, peak)
}

fn report(what: &str, ours: (Duration, i64), floor: (Duration, i64)) {
    println!(
        "{what}: prenv sync {:.1?} (peak {} KiB) | git add -A && git commit {:.1?} (peak {} KiB) | ratio {:.2}",
        ours.0,
        ours.1,
        floor.0,
        floor.1,
        ours.0.as_secs_f64() / floor.0.as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("prenv.toml"), config_text()).unwrap();
    std::fs::write(d.join("base.json"), snapshot(None)).unwrap();
    std::fs::write(d.join("bumped.json"), snapshot(Some(500))).unwrap();

    let (mut full, mut full_floor, mut incr, mut incr_floor) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let repo = d.join(format!("envs-{round}.git"));
        git(
            d,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                repo.to_str().unwrap(),
            ],
        );
        full.push(measure(&mut sync(d, &repo, "base.json")));
        incr.push(measure(&mut sync(d, &repo, "bumped.json")));

        // The git floor: the identical trees, committed by git from a work tree.
        let work = d.join(format!("work-{round}"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        let export = |rev: &str| {
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "git -C {} archive {rev} | tar -x -C {}",
                    repo.display(),
                    work.display()
                ))
                .status()
                .unwrap();
            assert!(status.success());
        };
        export("main~1");
        full_floor.push(measure(&mut git_floor(&work)));
        export("main");
        incr_floor.push(measure(&mut git_floor(&work)));
    }
    println!("{PRS} open PRs, postgres + mariadb, {ROUNDS} rounds, medians (peak = highest of the rounds):");
    report("full sync into an empty repository", median(full), median(full_floor));
    report(
        "incremental sync, 1 of 1,000 PRs has a new commit",
        median(incr),
        median(incr_floor),
    );
}
