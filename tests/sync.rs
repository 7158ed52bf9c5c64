//! `prenv sync` and `prenv plan` against real bare repositories in temp dirs, through the real binary.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

const CONFIG: &str = "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\n";

struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    remote: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), CONFIG);
        let remote = dir.path().join("envs.git");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)],
        );
        Fixture { dir, config, remote }
    }

    fn prs(&self, name: &str, prs: &[serde_json::Value]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_string(prs).unwrap()).unwrap();
        path
    }

    /// Runs `prenv sync` (or `plan`) with the fixture's config against `repo`.
    fn run(&self, cmd: &str, prs: &Path, repo: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["--config", s(&self.config), cmd, "--prs", s(prs), "--repo", repo];
        if !extra.contains(&"--now") {
            args.extend(["--now", NOW]);
        }
        args.extend_from_slice(extra);
        prenv(&args)
    }

    fn sync(&self, prs: &Path, extra: &[&str]) -> std::process::Output {
        let out = self.run("sync", prs, s(&self.remote), extra);
        assert!(
            out.status.success(),
            "sync failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn tip(&self) -> Option<String> {
        let out = Command::new("git")
            .args(["-C", s(&self.remote), "rev-parse", "--verify", "--quiet", "main"])
            .output()
            .unwrap();
        out.status.success().then(|| text(&out.stdout).trim().to_string())
    }

    fn commits(&self) -> usize {
        self.tip().map_or(0, |_| {
            git(&self.remote, &["rev-list", "--count", "main"])
                .trim()
                .parse()
                .unwrap()
        })
    }

    fn files(&self, rev: &str) -> BTreeSet<String> {
        git(&self.remote, &["ls-tree", "-r", "--name-only", rev])
            .lines()
            .map(String::from)
            .collect()
    }

    fn envs(&self) -> BTreeSet<String> {
        self.files("main")
            .iter()
            .filter_map(|p| {
                p.strip_prefix("environments/")?
                    .strip_suffix("/prenv.json")
                    .map(String::from)
            })
            .collect()
    }
}

/// A real git server on loopback (`git daemon` with push enabled) serving the fixture's directory,
/// so pushes go through receive-pack with its atomic compare-and-swap of the branch.
struct Daemon {
    child: std::process::Child,
    port: u16,
}

impl Daemon {
    fn serve(f: &Fixture) -> Daemon {
        let port = free_port();
        git(&f.remote, &["config", "daemon.receivepack", "true"]);
        // The daemon binary itself, not the `git daemon` wrapper, so killing it stops the server.
        let exec_path = git(f.dir.path(), &["--exec-path"]);
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", f.dir.path().display()))
            .arg(f.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Daemon { child, port }
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/envs.git", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("running git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn sha(n: u64) -> String {
    format!("{:040x}", n * 2_654_435_761)
}

fn open(n: u64) -> serde_json::Value {
    gh_pr(n, &format!("feature/{n}"), &sha(n), &[])
}

fn closed(n: u64, at: &str, labels: &[&str]) -> serde_json::Value {
    let mut pr = gh_pr(n, &format!("feature/{n}"), &sha(n), labels);
    pr["state"] = json!("closed");
    pr["closed_at"] = json!(at);
    pr
}

fn envs(ns: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
    ns.into_iter().map(|n| format!("shop-pr-{n}")).collect()
}

#[test]
fn first_sync_creates_every_environment_in_one_commit_and_the_second_makes_none() {
    let f = Fixture::new();
    let prs = f.prs("prs.json", &(1..=12).map(open).collect::<Vec<_>>());
    let out = f.sync(&prs, &[]);
    assert!(text(&out.stdout).contains("committed"), "{}", text(&out.stdout));
    assert_eq!(f.commits(), 1);
    assert_eq!(f.envs(), envs(1..=12));
    let files = f.files("main");
    assert!(files.contains("base/kustomization.yaml") && files.contains("overlays/postgres/kustomization.yaml"));
    assert!(files.contains("flux/environments/shop/shop-pr-7.yaml"));
    let message = git(&f.remote, &["log", "-1", "--format=%B", "main"]);
    assert!(message.starts_with("prenv: 12 created\n"), "{message}");
    assert!(
        message.contains(&format!("create shop-pr-3 (PR #3 at {})", &sha(3)[..7])),
        "{message}"
    );

    let tip = f.tip();
    let out = f.sync(&prs, &[]);
    assert!(text(&out.stdout).contains("no change"), "{}", text(&out.stdout));
    assert_eq!(f.tip(), tip, "an unchanged snapshot makes no commit");
}

#[test]
fn closing_a_pr_prunes_exactly_its_directory_in_one_commit() {
    let f = Fixture::new();
    f.sync(&f.prs("a.json", &(1..=3).map(open).collect::<Vec<_>>()), &[]);
    let before = f.tip().unwrap();
    f.sync(
        &f.prs("b.json", &[open(1), closed(2, "2026-11-24T11:00:00Z", &[]), open(3)]),
        &[],
    );
    assert_eq!(f.commits(), 2);
    let changed: BTreeSet<String> = git(&f.remote, &["diff", "--name-only", &before, "main"])
        .lines()
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = f
        .files(&before)
        .into_iter()
        .filter(|p| {
            p.starts_with("environments/shop-pr-2/")
                || p == "flux/environments/shop/shop-pr-2.yaml"
                || p == "flux/environments/shop/kustomization.yaml"
        })
        .collect();
    assert_eq!(changed, expected);
    assert_eq!(f.envs(), envs([1, 3]));
    let message = git(&f.remote, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.starts_with("prenv: 1 pruned")
            && message.contains("prune  shop-pr-2 (PR #2): closed at 2026-11-24T11:00:00Z"),
        "{message}"
    );
}

#[test]
fn a_new_commit_on_a_pr_updates_only_that_environment() {
    let f = Fixture::new();
    f.sync(&f.prs("a.json", &(1..=3).map(open).collect::<Vec<_>>()), &[]);
    let before = f.tip().unwrap();
    let mut pushed = open(2);
    pushed["head"]["sha"] = json!("f".repeat(40));
    f.sync(&f.prs("b.json", &[open(1), pushed, open(3)]), &[]);
    let changed = git(&f.remote, &["diff", "--name-only", &before, "main"]);
    assert!(
        changed
            .lines()
            .all(|p| p.starts_with("environments/shop-pr-2/") || p == "flux/environments/shop/shop-pr-2.yaml"),
        "{changed}"
    );
    let kustomization = git(&f.remote, &["show", "main:environments/shop-pr-2/kustomization.yaml"]);
    assert!(kustomization.contains("newTag: pr-2-fffffff"), "{kustomization}");
    let meta = git(&f.remote, &["show", "main:environments/shop-pr-2/prenv.json"]);
    assert!(
        meta.contains("\"created_at\": \"2026-11-24T12:00:00Z\""),
        "created_at survives updates: {meta}"
    );
}

#[test]
fn a_settings_change_rerenders_every_environment_in_one_commit() {
    let f = Fixture::new();
    let prs = f.prs("a.json", &(1..=3).map(open).collect::<Vec<_>>());
    f.sync(&prs, &[]);
    std::fs::write(&f.config, format!("{CONFIG}[quota]\ncpu = \"400m\"\n")).unwrap();
    let out = f.sync(&prs, &[]);
    assert!(text(&out.stdout).contains("plan: 3 update"), "{}", text(&out.stdout));
    assert_eq!(f.commits(), 2);
    let quota = git(&f.remote, &["show", "main:environments/shop-pr-2/resourcequota.yaml"]);
    assert!(quota.contains("requests.cpu: \"900m\""), "{quota}");
    assert!(text(&f.sync(&prs, &[]).stdout).contains("no change"));
}

#[test]
fn a_pinned_environment_survives_until_its_deadline() {
    let f = Fixture::new();
    f.sync(&f.prs("a.json", &[open(1), open(2)]), &[]);
    let pinned = f.prs(
        "b.json",
        &[open(1), closed(2, "2026-11-24T11:00:00Z", &["preserve=true"])],
    );
    let out = f.sync(&pinned, &[]);
    assert!(text(&out.stdout).contains("pin "), "{}", text(&out.stdout));
    assert_eq!(f.envs(), envs([1, 2]));
    let meta = git(&f.remote, &["show", "main:environments/shop-pr-2/prenv.json"]);
    assert!(meta.contains("\"preserve_until\": \"2026-11-26T11:00:00Z\""), "{meta}");
    for (now, present) in [("2026-11-26T10:59:59Z", true), ("2026-11-26T11:00:00Z", false)] {
        let out = f.run("sync", &pinned, s(&f.remote), &["--now", now]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(f.envs().contains("shop-pr-2"), present, "at {now}");
    }
}

#[test]
fn files_prenv_does_not_own_are_left_as_the_user_wrote_them() {
    let f = Fixture::new();
    // A user's repository: own README, own base/, a hand-made environment, a foreign metadata file.
    let work = f.dir.path().join("work");
    git(f.dir.path(), &["clone", "--quiet", s(&f.remote), s(&work)]);
    std::fs::create_dir_all(work.join("base")).unwrap();
    std::fs::create_dir_all(work.join("environments/hand-made")).unwrap();
    std::fs::create_dir_all(work.join("environments/shop-pr-3")).unwrap();
    std::fs::write(work.join("README.md"), "# Our environments\n").unwrap();
    std::fs::write(work.join("base/kustomization.yaml"), "resources: [custom.yaml]\n").unwrap();
    std::fs::write(
        work.join("environments/hand-made/kustomization.yaml"),
        "resources: []\n",
    )
    .unwrap();
    std::fs::write(
        work.join("environments/shop-pr-3/prenv.json"),
        "{\"generator\": \"someone-else\"}\n",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "commit",
            "--quiet",
            "-m",
            "user files",
        ],
    );
    git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
    let user_tip = f.tip().unwrap();

    f.sync(
        &f.prs("a.json", &[open(1), closed(3, "2026-11-24T11:00:00Z", &[])]),
        &[],
    );
    let changed = git(&f.remote, &["diff", "--name-only", &user_tip, "main"]);
    for line in changed.lines() {
        assert!(
            line.starts_with("environments/shop-pr-1/") || line.starts_with("flux/") || line.starts_with("overlays/"),
            "prenv touched {line}"
        );
    }
    assert_eq!(
        git(&f.remote, &["show", "main:base/kustomization.yaml"]),
        "resources: [custom.yaml]\n"
    );
    assert_eq!(git(&f.remote, &["show", "main:README.md"]), "# Our environments\n");
    assert!(
        f.files("main").contains("environments/shop-pr-3/prenv.json"),
        "an unowned directory is never pruned"
    );
    assert!(f.files("main").contains("environments/hand-made/kustomization.yaml"));
}

/// Ten syncs race on one remote, each with a different snapshot (its own PR open). Every one must
/// succeed, and no environment may be lost: PRs missing from a snapshot are kept.
fn race(f: &Fixture, repo: &str, via_cache: bool) {
    let children: Vec<_> = (1..=10u64)
        .map(|n| {
            let prs = f.prs(&format!("race-{n}.json"), &[open(n)]);
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_prenv"));
            // No test reaches a registry: image checks are tests/image_wait.rs's.
            cmd.env("PRENV_IMAGE_CHECK", "false");
            cmd.args([
                "--config",
                s(&f.config),
                "sync",
                "--prs",
                s(&prs),
                "--repo",
                repo,
                "--now",
                NOW,
            ]);
            if via_cache {
                // Separate caches, as on separate CI machines, so the pushes really race.
                cmd.args(["--cache-dir", s(&f.dir.path().join(format!("cache-{n}")))]);
            }
            cmd.env("PRENV_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a racing sync failed: {}", text(&out.stderr));
    }
    assert_eq!(f.envs(), envs(1..=10), "no environment lost");
    assert!(f.commits() <= 10);
    git(&f.remote, &["fsck", "--strict", "--no-dangling"]);
}

#[test]
fn ten_concurrent_syncs_through_a_remote_url_converge_without_losing_an_environment() {
    let f = Fixture::new();
    let daemon = Daemon::serve(&f);
    race(&f, &daemon.url(), true);
}

#[test]
fn ten_concurrent_syncs_on_a_local_repository_converge_without_losing_an_environment() {
    let f = Fixture::new();
    race(&f, s(&f.remote), false);
}

#[test]
fn the_breaker_refuses_a_mass_prune_and_pushes_nothing() {
    let f = Fixture::new();
    f.sync(&f.prs("a.json", &(1..=6).map(open).collect::<Vec<_>>()), &[]);
    let tip = f.tip();
    let mut prs: Vec<_> = (1..=4).map(|n| closed(n, "2026-11-24T11:00:00Z", &[])).collect();
    prs.extend([open(5), open(6)]);
    let mass = f.prs("b.json", &prs);
    let out = f.run("sync", &mass, s(&f.remote), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("refusing to prune 4 of 6 environments") && err.contains("--allow-mass-prune"),
        "{err}"
    );
    assert_eq!(f.tip(), tip, "nothing pushed");
    f.sync(&mass, &["--allow-mass-prune"]);
    assert_eq!(f.envs(), envs([5, 6]));
}

#[test]
fn plan_shows_the_sync_without_writing_and_diffs_on_request() {
    let f = Fixture::new();
    f.sync(&f.prs("a.json", &[open(1), open(2)]), &[]);
    let tip = f.tip();
    let mut pushed = open(2);
    pushed["head"]["sha"] = json!("e".repeat(40));
    let prs = f.prs("b.json", &[closed(1, "2026-11-24T11:00:00Z", &[]), pushed, open(3)]);
    let out = f.run("plan", &prs, s(&f.remote), &["--diff"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for want in [
        "prune   shop-pr-1",
        "update  shop-pr-2",
        "create  shop-pr-3",
        "plan: 1 create, 1 update, 1 prune",
        "--- a/environments/shop-pr-2/kustomization.yaml",
        "+  newTag: pr-2-eeeeeee",
        "--- a/environments/shop-pr-1/prenv.json\n+++ /dev/null",
    ] {
        assert!(stdout.contains(want), "plan output lacks {want:?}:\n{stdout}");
    }
    let json_out = f.run("plan", &prs, s(&f.remote), &["--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(doc["decisions"].as_array().unwrap().len(), 3);
    assert_eq!(doc["decisions"][0]["action"], "prune");
    assert_eq!(f.tip(), tip, "plan writes nothing");
}

#[test]
fn a_corrupt_or_unreachable_repository_is_a_clear_error() {
    let f = Fixture::new();
    let prs = f.prs("a.json", &[open(1)]);
    let corrupt = f.dir.path().join("corrupt.git");
    std::fs::create_dir_all(corrupt.join("objects")).unwrap();
    std::fs::write(corrupt.join("HEAD"), "garbage\n").unwrap();
    let cases = [
        (s(&corrupt).to_string(), "corrupt.git"),
        (s(&f.dir.path().join("missing.git")).to_string(), "missing.git"),
        (
            format!("file://{}", f.dir.path().join("nowhere.git").display()),
            "nowhere.git",
        ),
        (
            "https://x-access-token:ghp_supersecret123@127.0.0.1:9/acme/envs.git".to_string(),
            "127.0.0.1:9",
        ),
    ];
    for (repo, want) in cases {
        let out = f.run("sync", &prs, &repo, &["--cache-dir", s(&f.dir.path().join("cache"))]);
        assert_eq!(out.status.code(), Some(2), "{repo}");
        let err = text(&out.stderr);
        assert!(err.starts_with("error: ") && err.contains(want), "{repo}: {err}");
        assert!(
            !err.contains("supersecret") && !text(&out.stdout).contains("supersecret"),
            "token leaked: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn the_embedded_default_repository_is_created_on_first_use() {
    let f = Fixture::new();
    let prs = f.prs("a.json", &[open(1)]);
    let data = f.dir.path().join("data");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_prenv"))
            .env("PRENV_IMAGE_CHECK", "false")
            .args(["--config", s(&f.config), "sync", "--prs", s(&prs), "--now", NOW])
            .env("XDG_DATA_HOME", &data)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let repo = data.join("prenv/environments.git");
    assert!(git(&repo, &["ls-tree", "-r", "--name-only", "main"]).contains("environments/shop-pr-1/prenv.json"));
    assert!(text(&run().stdout).contains("no change"));
}

/// Kills syncs of a large snapshot at staggered moments; the remote must always hold a complete
/// commit (or none), and a final uninterrupted run converges.
#[test]
fn a_sync_killed_at_any_moment_leaves_a_complete_commit() {
    let f = Fixture::new();
    let daemon = Daemon::serve(&f);
    let url = daemon.url();
    let prs = f.prs("big.json", &(1..=300).map(open).collect::<Vec<_>>());
    for delay_ms in [5u64, 20, 40, 80, 120, 200, 300] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prenv"))
            .env("PRENV_IMAGE_CHECK", "false")
            .args([
                "--config",
                s(&f.config),
                "sync",
                "--prs",
                s(&prs),
                "--repo",
                &url,
                "--now",
                NOW,
            ])
            .args(["--cache-dir", s(&f.dir.path().join(format!("cache-{delay_ms}")))])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        git(&f.remote, &["fsck", "--strict", "--no-dangling"]);
        if f.tip().is_some() {
            let files = f.files("main");
            let envs = f.envs();
            assert_eq!(envs.len(), 300, "a published commit is the whole sync");
            for env in envs {
                for file in ["kustomization.yaml", "namespace.yaml", "networkpolicies.yaml"] {
                    assert!(files.contains(&format!("environments/{env}/{file}")));
                }
            }
        }
    }
    f.sync(&prs, &[]);
    assert_eq!(f.envs(), envs(1..=300));
    assert!(text(&f.sync(&prs, &[]).stdout).contains("no change"));
}

#[test]
fn a_repository_made_on_a_master_host_checks_out_what_prenv_wrote() {
    let f = Fixture::new();
    let remote = f.dir.path().join("master.git");
    git(
        f.dir.path(),
        &[
            "-c",
            "init.defaultBranch=master",
            "init",
            "--quiet",
            "--bare",
            s(&remote),
        ],
    );
    let prs = f.prs("prs.json", &[open(1)]);
    let out = f.run("sync", &prs, s(&remote), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(git(&remote, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");
    let clone = f.dir.path().join("clone");
    let out = Command::new("git")
        .args(["clone", "--quiet", s(&remote), s(&clone)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("warning"), "{}", text(&out.stderr));
    assert!(clone.join("environments/shop-pr-1/kustomization.yaml").is_file());
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let f = Fixture::new();
    let prs = f.prs("prs.json", &[open(1)]);
    let out = f.run("sync", &prs, s(&f.remote), &["--log", "info"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("INFO"), "info lines are logged: {err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape in piped stderr: {err:?}");
}

/// A snapshot file of more PRs than a partial view takes is split into its elements without
/// parsing them, and against a settled tree most are never built: whatever is wrong with the file
/// is still named, with the file, and nothing is committed.
#[test]
fn a_broken_snapshot_file_is_named_even_against_a_settled_tree() {
    let f = Fixture::new();
    let prs: Vec<_> = (1..=70).map(open).collect();
    let good = serde_json::to_string(&prs).unwrap();
    let path = f.prs("prs.json", &prs);
    f.sync(&path, &[]);
    // The second run finds the tree settled and the elements known.
    assert!(text(&f.sync(&path, &[]).stdout).contains("no change"));
    let tip = f.tip();
    let mut wrong_number = prs.clone();
    wrong_number[40]["number"] = json!("forty-one");
    let cases = [
        ("cut short", good[..good.len() / 2].to_string(), "prs.json"),
        ("trailing text", format!("{good} x"), "prs.json"),
        ("a missing comma", good.replacen("},{", "}{", 1), "prs.json"),
        (
            "a number that is not one",
            serde_json::to_string(&wrong_number).unwrap(),
            "element 40",
        ),
    ];
    for (what, json, named) in cases {
        std::fs::write(&path, json).unwrap();
        let out = f.run("sync", &path, s(&f.remote), &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{what}: {err}");
        assert!(err.contains("prs.json") && err.contains(named), "{what}: {err}");
        assert_eq!(f.tip(), tip, "{what}: nothing is committed");
    }
    std::fs::write(&path, &good).unwrap();
    assert!(text(&f.sync(&path, &[]).stdout).contains("no change"));
}
