//! Sync benchmark (release build), at 100, 1,000 and 10,000 open PRs (PRENV_BENCH_SIZES to choose):
//! a full sync into an empty repository, then an incremental sync when 1 PR got a new commit —
//! once with a snapshot of every PR (a `prenv sync` from CI), once with a snapshot of only that PR
//! (what a webhook delivers: the tree is settled, so only that PR's environment is read), once
//! the same with the tree not known to be settled (as after someone else's push: every
//! environment is read, from the memory), and once with the memory of earlier runs removed (the
//! first run after an upgrade) — each beside the git floor measured in the same run: `git add -A && git commit` of
//! the identical change, from a fresh work tree for the full sync, and from a work tree with a warm
//! index where only the changed files were touched for the incremental ones. The two incremental
//! kinds with a settled tree run three times a round, each with a new head. Prints wall time, CPU
//! time (every thread), peak memory and the ratio. Run with `cargo bench --bench sync` (or
//! scripts/bench); PRENV_BENCH_ROUNDS sets the rounds, and PRENV_BENCH_EACH prints every run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

const NOW: &str = "2026-11-24T12:00:00Z";
const CONFIG: &str = "project_id = \"shop\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\", \"mariadb\"]\nengine = \"flux\"\n";

/// Rounds per size (PRENV_BENCH_ROUNDS to choose), each figure the median of them: one round of
/// 10,000 let a single noisy sample of this shared disk decide a row (two runs on one day gave
/// 0.17 and 0.21 for the same build), so the largest size has as many, although its full sync and
/// git floor take tens of seconds each. Five, not three: an incremental sync takes tens of
/// milliseconds, and one slow sample of three moved a growth figure by a tenth.
const ROUNDS: usize = 5;

/// The config with a fresh age recipient, so every environment's MariaDB credentials are encrypted.
fn config_text() -> String {
    let recipient = age::x25519::Identity::generate().to_public();
    format!("{CONFIG}[secrets]\nage_recipients = [\"{recipient}\"]\n")
}

/// `prs` open PRs; PR `bumped` (if any) has head `sha`; `only` keeps just that PR.
fn snapshot(prs: u64, bumped: Option<(u64, char)>, only: bool) -> String {
    let prs: Vec<serde_json::Value> = (1..=prs)
        .filter(|n| !only || bumped.is_some_and(|(b, _)| b == *n))
        .map(|n| {
            let (sha, updated) = match bumped {
                Some((b, c)) if b == n => (c.to_string().repeat(40), "2026-11-24T11:00:00Z"),
                _ => (format!("{:040x}", n * 104_729), "2026-11-24T10:00:00Z"),
            };
            serde_json::json!({
                "number": n, "state": "open", "draft": false, "title": format!("Change {n}"),
                "labels": [], "head": {"sha": sha, "ref": format!("feature/change-{n}"), "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
                "user": {"login": "dev"}, "closed_at": null, "merged_at": null, "updated_at": updated
            })
        })
        .collect();
    serde_json::to_string(&prs).unwrap()
}

/// Set in a copy of this benchmark that only runs one command and reports on it (see [`measure`]).
const HELPER_VAR: &str = "PRENV_BENCH_MEASURE";

/// What one command cost: wall time, peak RSS (KiB), and CPU time (user and system, all threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    wall: Duration,
    peak: i64,
    cpu: Duration,
}

/// Runs a command to completion; returns what it cost.
///
/// Through a fresh copy of this binary: Linux counts in a child's peak RSS the memory of the
/// process it was spawned from (the parent's, shared until `exec`), so a child of this process,
/// which holds snapshots of 10,000 PRs, reported this process's peak for every small sync. The
/// copy is small when it spawns the command, and times it itself, so its own start costs nothing.
///
/// Every command starts with nothing left to write back: a git floor of 10,000 environments
/// leaves a work tree of 60,000 files, and a full sync a 40 MB pack, in the page cache, and the
/// kernel writes them out over the next half minute. Measured while that ran, the incremental
/// syncs of the next round took half as long again as those of the first (10,000 PRs: 19 ms in
/// round one, 30–33 ms after a floor; 1,000 PRs: 14 and 17–20 ms), so a growth figure measured
/// the harness's own writes. `sync(2)` waits for them, outside the time measured.
fn measure(cmd: &mut Command) -> Cost {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut helper = Command::new(std::env::current_exe().expect("the benchmark's path"));
    helper.env(HELPER_VAR, "1").arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => helper.env(key, value),
            None => helper.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        helper.current_dir(dir);
    }
    let out = helper
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("spawning");
    assert!(out.status.success(), "{cmd:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().expect("the helper's report"))
        .collect();
    let [nanos, kib, cpu] = fields[..] else {
        panic!("the helper's report: {text}")
    };
    Cost {
        wall: Duration::from_nanos(nanos),
        peak: kib as i64,
        cpu: Duration::from_micros(cpu),
    }
}

/// The helper's side of [`measure`]: runs its arguments, reports `nanoseconds peak-KiB
/// cpu-microseconds`.
#[allow(clippy::zombie_processes, reason = "wait4 reaps the child to read its rusage")]
fn helper() -> ! {
    let mut args = std::env::args_os().skip(1);
    let mut cmd = Command::new(args.next().expect("a command"));
    cmd.args(args).env_remove(HELPER_VAR);
    let start = Instant::now();
    let child = cmd.stdout(std::process::Stdio::null()).spawn().expect("spawning");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, writing into locals we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    let ok = pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let micros = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    let cpu = micros(usage.ru_utime) + micros(usage.ru_stime);
    println!("{} {} {cpu}", elapsed.as_nanos(), usage.ru_maxrss);
    std::process::exit(if ok { 0 } else { 1 })
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
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
    // No test reaches a registry: image checks are tests/image_wait.rs's.
    cmd.env("PRENV_IMAGE_CHECK", "false");
    cmd.current_dir(dir)
        .args(["--config", "prenv.toml", "sync", "--prs", prs, "--now", NOW, "--repo"])
        .arg(repo)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("PRENV_LOG", "error");
    cmd
}

/// Removes what the memory below `cache` knows of settled trees (`*.settled`), keeping the rest:
/// the next sync reads every environment, as after a push by someone else.
fn forget_settled(cache: &Path) {
    let dir = cache.join("prenv").join("memory");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "settled") {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// `git add -A && git commit` in a work tree, as one shell command like a CI job would run it.
fn git_floor(work: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("git add -A && git -c user.name=b -c user.email=b@x commit --quiet -m bench")
        .current_dir(work);
    cmd
}

/// The median wall time of `xs` with its CPU time, and the highest peak.
fn median(mut xs: Vec<Cost>) -> Cost {
    xs.sort();
    let peak = xs.iter().map(|x| x.peak).max().unwrap_or(0);
    Cost {
        peak,
        ..xs[xs.len() / 2]
    }
}

fn report(what: &str, ours: Cost, floor: Cost) -> f64 {
    let ratio = ours.wall.as_secs_f64() / floor.wall.as_secs_f64();
    println!(
        "  {what}: prenv {:.1?} (cpu {:.1?}, peak {:.1} MB) | git {:.1?} (peak {:.1} MB) | ratio {ratio:.2}",
        ours.wall,
        ours.cpu,
        ours.peak as f64 / 1024.0,
        floor.wall,
        floor.peak as f64 / 1024.0,
    );
    ratio
}

/// Brings work tree `work` from the tree of `from` to that of `to` touching only the files that
/// differ (as an editor or a generator writing in place would), so git's index stays warm.
fn apply(repo: &Path, work: &Path, from: &str, to: &str) {
    sh(&format!(
        "git -C {} diff --binary {from} {to} | git -C {} apply --whitespace=nowarn",
        repo.display(),
        work.display()
    ));
}

/// One size's directory, its steps (snapshot files) and what its runs cost, by [`Kind`].
struct Size {
    prs: u64,
    dir: tempfile::TempDir,
    steps: Vec<(Kind, String)>,
    runs: std::cell::RefCell<[Vec<Cost>; 10]>,
}

impl Size {
    /// Each step commits once (each moves PR `mid` to a head not seen before), so the steps are
    /// the commits of the branch in order, and the git floor replays them one by one. The
    /// incremental kinds with a settled tree run three times a round: the first after a full
    /// sync reads the two 10,000-entry trees from its pack, the later ones as an incremental sync
    /// wrote them.
    fn new(prs: u64) -> Size {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("prenv.toml"), config_text()).unwrap();
        let mid = prs / 2 + 1;
        let steps = [(Kind::Full, None)]
            .into_iter()
            .chain("aef".chars().map(|c| (Kind::Every, Some(c))))
            .chain("b78".chars().map(|c| (Kind::That, Some(c))))
            .chain([(Kind::Unsettled, Some('c')), (Kind::Cold, Some('d'))])
            .enumerate()
            .map(|(k, (kind, head))| {
                let file = format!("step-{k}.json");
                let only = matches!(kind, Kind::That | Kind::Unsettled | Kind::Cold);
                std::fs::write(d.join(&file), snapshot(prs, head.map(|c| (mid, c)), only)).unwrap();
                (kind, file)
            })
            .collect();
        Size {
            prs,
            dir,
            steps,
            runs: Default::default(),
        }
    }

    fn repo(&self, round: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("envs-{round}.git"))
    }

    /// A new empty repository for round `round`, and no memory.
    fn begin(&self, round: usize) {
        let repo = self.repo(round);
        git(
            self.dir.path(),
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                repo.to_str().unwrap(),
            ],
        );
        let _ = std::fs::remove_dir_all(self.dir.path().join("cache"));
    }

    /// Step `k` of round `round`: one sync.
    fn step(&self, round: usize, k: usize) {
        let d = self.dir.path();
        let (kind, file) = &self.steps[k];
        match kind {
            Kind::Unsettled => forget_settled(&d.join("cache")),
            Kind::Cold => std::fs::remove_dir_all(d.join("cache")).unwrap(),
            _ => {}
        }
        let cost = measure(&mut sync(d, &self.repo(round), file));
        if std::env::var_os("PRENV_BENCH_EACH").is_some() {
            let ms = cost.wall.as_secs_f64() * 1e3;
            eprintln!("{} PRs, round {round}, step {k} ({kind:?}): {ms:.2} ms", self.prs);
        }
        self.runs.borrow_mut()[2 * *kind as usize].push(cost);
    }

    /// The git floor of round `round`: the identical trees, committed by git from a work tree.
    fn floor(&self, round: usize) {
        let (d, repo) = (self.dir.path(), self.repo(round));
        let work = d.join(format!("work-{round}"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        let last = self.steps.len() - 1;
        sh(&format!(
            "git -C {} archive main~{last} | tar -x -C {}",
            repo.display(),
            work.display()
        ));
        let mut runs = self.runs.borrow_mut();
        runs[1].push(measure(&mut git_floor(&work)));
        for (k, (kind, _)) in self.steps.iter().enumerate().skip(1) {
            // A status first, as any earlier command in a real work tree would have run, so the
            // index is warm and git only hashes the files that changed.
            git(&work, &["status", "--porcelain"]);
            let (from, to) = (format!("main~{}", last + 1 - k), format!("main~{}", last - k));
            apply(&repo, &work, &from, &to);
            runs[2 * *kind as usize + 1].push(measure(&mut git_floor(&work)));
        }
    }
}

/// What a step of a round measures; the index of its prenv runs in the table is twice its value,
/// its git floor's the next.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Full,
    Every,
    That,
    Unsettled,
    Cold,
}

fn main() {
    if std::env::var_os(HELPER_VAR).is_some() {
        helper();
    }
    // Every size is set up first and each step runs for every size in turn: this shared machine
    // drifts by a fifth over minutes, and a growth figure compares sizes measured apart.
    let sizes: Vec<Size> = support::sizes("100,1000,10000").into_iter().map(Size::new).collect();
    let rounds =
        std::env::var("PRENV_BENCH_ROUNDS").map_or(ROUNDS, |r| r.parse().expect("PRENV_BENCH_ROUNDS: a number"));
    for round in 0..rounds {
        for size in &sizes {
            size.begin(round);
        }
        for k in 0..sizes[0].steps.len() {
            for size in &sizes {
                size.step(round, k);
            }
        }
        for size in &sizes {
            size.floor(round);
        }
    }
    let mut incremental = Vec::new();
    for size in &sizes {
        let prs = size.prs;
        let m: Vec<Cost> = size.runs.take().into_iter().map(median).collect();
        println!("{prs} open PRs, postgres + mariadb, {rounds} round(s), medians of every run (peak = highest):");
        report("full sync into an empty repository", m[0], m[1]);
        let r = report("1 PR has a new commit, snapshot of every PR", m[2], m[3]);
        report("1 PR has a new commit, snapshot of that PR only", m[4], m[5]);
        report(
            "1 PR has a new commit, that PR only, tree not settled (after another's push)",
            m[6],
            m[7],
        );
        report(
            "1 PR has a new commit, no memory (first run after an upgrade)",
            m[8],
            m[9],
        );
        incremental.push((prs, m[2], m[4], r));
    }
    for pair in incremental.windows(2) {
        let ((a, ta, oa, _), (b, tb, ob, _)) = (pair[0], pair[1]);
        let x = |b: Duration, a: Duration| b.as_secs_f64() / a.as_secs_f64();
        println!(
            "growth {a} -> {b} PRs, 1 PR changed: every-PR snapshot x{:.2} (cpu x{:.2}), that-PR snapshot x{:.2} (cpu x{:.2})",
            x(tb.wall, ta.wall),
            x(tb.cpu, ta.cpu),
            x(ob.wall, oa.wall),
            x(ob.cpu, oa.cpu)
        );
    }
}
