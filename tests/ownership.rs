//! The environments repository is prenv's to keep, not to trust: hostile commits pushed through a
//! real clone into a real bare repository, then the real binary. What prenv owns it heals, what it
//! does not own it never touches, and nothing found there stops the other PRs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::json;

const CONFIG: &str = "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\n";

fn sha(n: u64, round: u64) -> String {
    format!("{:040x}", n * 1000 + round)
}

fn open(n: u64) -> serde_json::Value {
    gh_pr(n, &format!("f/{n}"), &sha(n, 0), &[])
}

fn closed(n: u64) -> serde_json::Value {
    let mut pr = open(n);
    pr["state"] = json!("closed");
    pr["closed_at"] = json!("2026-11-24T11:00:00Z");
    pr["updated_at"] = json!("2026-11-24T11:00:00Z");
    pr
}

struct Repo {
    dir: tempfile::TempDir,
    remote: PathBuf,
    config: PathBuf,
}

impl Repo {
    /// A bare repository synced from `prs`.
    fn synced(prs: &[serde_json::Value]) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("envs.git");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)],
        );
        let config = write_config(dir.path(), CONFIG);
        let repo = Repo { dir, remote, config };
        repo.sync(prs);
        repo
    }

    fn run(&self, cmd: &str, prs: &[serde_json::Value], extra: &[&str]) -> Output {
        let file = self.dir.path().join("prs.json");
        std::fs::write(&file, serde_json::to_string(prs).unwrap()).unwrap();
        let mut args = vec![
            "--config",
            s(&self.config),
            cmd,
            "--prs",
            s(&file),
            "--repo",
            s(&self.remote),
        ];
        args.extend(["--now", NOW]);
        args.extend_from_slice(extra);
        prenv(&args)
    }

    fn sync(&self, prs: &[serde_json::Value]) -> String {
        let out = self.run("sync", prs, &[]);
        assert!(
            out.status.success(),
            "sync failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn plan(&self, prs: &[serde_json::Value]) -> String {
        let out = self.run("plan", prs, &["--diff"]);
        assert!(out.status.success(), "plan failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Someone's commit, pushed through a clone: `edit` changes the work tree.
    fn push(&self, edit: impl FnOnce(&Path)) {
        let work = self.dir.path().join("work");
        if !work.exists() {
            git(self.dir.path(), &["clone", "--quiet", s(&self.remote), s(&work)]);
        }
        git(&work, &["pull", "--quiet", "--ff-only"]);
        edit(&work);
        git(&work, &["add", "-A"]);
        git(
            &work,
            &[
                "-c",
                "user.name=someone",
                "-c",
                "user.email=s@x",
                "commit",
                "--quiet",
                "-m",
                "by hand",
            ],
        );
        git(&work, &["push", "--quiet", "origin", "main"]);
    }

    /// Every file at the tip with its blob id (and mode, so links and submodules show).
    fn tree(&self) -> BTreeMap<String, String> {
        tip_tree(&self.remote)
    }

    fn file(&self, path: &str) -> Option<String> {
        tip_file(&self.remote, path)
    }

    fn tip(&self) -> String {
        git(&self.remote, &["rev-parse", "main"]).trim().to_string()
    }
}

/// The entries of the tree that `keep` selects: what must be exactly as it was.
fn part(tree: &BTreeMap<String, String>, keep: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    tree.iter()
        .filter(|(p, _)| keep(p))
        .map(|(p, m)| (p.clone(), m.clone()))
        .collect()
}

#[test]
fn damaged_metadata_keeps_its_environment_and_its_wiring() {
    let repo = Repo::synced(&[open(1), open(2), open(3), open(4)]);
    repo.push(|w| {
        let conflict = "<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> theirs\n";
        std::fs::write(w.join("environments/shop-pr-1/prenv.json"), conflict).unwrap();
        let meta = w.join("environments/shop-pr-2/prenv.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        v["pr"] = json!("two");
        std::fs::write(&meta, v.to_string()).unwrap();
        std::fs::write(w.join("environments/shop-pr-3/prenv.json"), "").unwrap();
    });
    let before = repo.tree();
    let damaged = |p: &str| ["shop-pr-1", "shop-pr-2", "shop-pr-3"].iter().any(|e| p.contains(e));
    // A sync of one unrelated PR: nothing of the damaged environments changes, their wiring stays
    // listed, and each is reported with its file and the parse error.
    let plan = repo.plan(&[open(4), open(5)]);
    for env in ["shop-pr-1", "shop-pr-2", "shop-pr-3"] {
        assert!(plan.contains(&format!("environments/{env}/prenv.json")), "{plan}");
    }
    assert!(plan.contains("cannot read"), "{plan}");
    repo.sync(&[open(4), open(5)]);
    let after = repo.tree();
    assert_eq!(part(&after, damaged), part(&before, damaged));
    let index = repo.file("flux/environments/shop/kustomization.yaml").unwrap();
    for env in ["shop-pr-1", "shop-pr-2", "shop-pr-3", "shop-pr-4", "shop-pr-5"] {
        assert!(index.contains(&format!("{env}.yaml")), "{env} left the index:\n{index}");
    }
    // Even their PRs closing removes nothing: there is no metadata to prove what is prenv's.
    repo.sync(&[closed(1), closed(2), closed(3), open(4), open(5)]);
    assert_eq!(part(&repo.tree(), damaged), part(&before, damaged));
}

#[test]
fn a_hand_made_directory_is_never_taken_over_nor_deleted() {
    let repo = Repo::synced(&[open(1)]);
    repo.push(|w| {
        let dir = w.join("environments/shop-pr-107");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kustomization.yaml"), "resources: [mine.yaml]\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "my own experiment\n").unwrap();
    });
    let mine = |p: &str| p.starts_with("environments/shop-pr-107/");
    let before = part(&repo.tree(), mine);
    let plan = repo.plan(&[open(1), open(107), open(108)]);
    assert!(
        plan.contains("blocked") && plan.contains("environments/shop-pr-107 exists and is not prenv's"),
        "{plan}"
    );
    repo.sync(&[open(1), open(107), open(108)]);
    assert_eq!(part(&repo.tree(), mine), before, "a hand-made directory was changed");
    assert!(
        repo.file("environments/shop-pr-108/prenv.json").is_some(),
        "the other PR was not synced"
    );
    assert!(!repo.tree().contains_key("flux/environments/shop/shop-pr-107.yaml"));
    repo.sync(&[open(1), closed(107), open(108)]);
    assert_eq!(
        part(&repo.tree(), mine),
        before,
        "closing its PR deleted a person's files"
    );
}

#[test]
fn a_file_a_link_or_a_submodule_where_an_environment_belongs_blocks_only_that_pr() {
    let repo = Repo::synced(&[open(1)]);
    repo.push(|w| {
        std::fs::write(w.join("environments/shop-pr-108"), "a file\n").unwrap();
        std::os::unix::fs::symlink("shop-pr-1", w.join("environments/shop-pr-109")).unwrap();
        // A nested repository is added as a submodule entry (a gitlink), as `git submodule add` does.
        let nested = w.join("environments/shop-pr-110");
        git(w, &["init", "--quiet", s(&nested)]);
        git(
            &nested,
            &[
                "-c",
                "user.name=n",
                "-c",
                "user.email=n@x",
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                "x",
            ],
        );
    });
    let odd = |p: &str| {
        ["shop-pr-108", "shop-pr-109", "shop-pr-110"]
            .iter()
            .any(|e| p.contains(e))
    };
    let before = part(&repo.tree(), odd);
    assert_eq!(before.len(), 3, "{before:?}");
    let prs = [open(1), open(2), open(108), open(109), open(110)];
    let plan = repo.plan(&prs);
    for (env, what) in [
        ("shop-pr-108", "a file"),
        ("shop-pr-109", "a symbolic link"),
        ("shop-pr-110", "a submodule"),
    ] {
        assert!(
            plan.contains(&format!("environments/{env} exists and is not prenv's ({what})")),
            "{plan}"
        );
    }
    // Every sync succeeds, the other PR is deployed, and the odd entries stay as they were.
    for _ in 0..2 {
        repo.sync(&prs);
    }
    assert_eq!(part(&repo.tree(), odd), before);
    assert!(repo.file("environments/shop-pr-2/prenv.json").is_some());
}

#[test]
fn drift_inside_an_environment_is_repaired_and_reported_and_foreign_files_are_kept() {
    let repo = Repo::synced(&[open(1), open(2)]);
    let rendered = repo.tree();
    repo.push(|w| {
        let k = w.join("environments/shop-pr-1/kustomization.yaml");
        let text = std::fs::read_to_string(&k).unwrap();
        std::fs::write(&k, text.replace(&sha(1, 0)[..7], "hacked1")).unwrap();
        std::fs::remove_file(w.join("environments/shop-pr-1/networkpolicies.yaml")).unwrap();
        std::fs::write(w.join("environments/shop-pr-1/extra.yaml"), "kind: ConfigMap\n").unwrap();
        std::fs::remove_file(w.join("flux/environments/shop/shop-pr-2.yaml")).unwrap();
    });
    let plan = repo.plan(&[open(1), open(2)]);
    assert!(plan.contains("drift repaired"), "{plan}");
    assert!(
        plan.contains("restored environments/shop-pr-1/networkpolicies.yaml"),
        "{plan}"
    );
    assert!(
        plan.contains("rewrote environments/shop-pr-1/kustomization.yaml"),
        "{plan}"
    );
    assert!(
        plan.contains("restored flux/environments/shop/shop-pr-2.yaml"),
        "{plan}"
    );
    assert!(plan.contains("kept    environments/shop-pr-1/extra.yaml"), "{plan}");
    repo.sync(&[open(1), open(2)]);
    let healed = repo.tree();
    let prenvs = |p: &str| !p.ends_with("extra.yaml");
    assert_eq!(
        part(&healed, prenvs),
        part(&rendered, prenvs),
        "prenv's files are not as rendered"
    );
    assert!(
        healed.contains_key("environments/shop-pr-1/extra.yaml"),
        "a foreign file was deleted"
    );
    let tip = repo.tip();
    assert!(repo.sync(&[open(1), open(2)]).contains("no change"));
    assert_eq!(repo.tip(), tip, "a healed repository must make no further commit");
}

#[test]
fn pushed_metadata_cannot_move_an_environment_elsewhere() {
    let repo = Repo::synced(&[open(1)]);
    repo.push(|w| {
        let meta = w.join("environments/shop-pr-1/prenv.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        v["namespace"] = json!("kube-system");
        v["image"] = json!("evil.example.com/miner:latest");
        v["url"] = json!("https://evil.example.com");
        std::fs::write(&meta, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    });
    // The PR is not in this snapshot: the environment is kept, rendered from its name and the config.
    repo.sync(&[open(2)]);
    let meta: serde_json::Value =
        serde_json::from_str(&repo.file("environments/shop-pr-1/prenv.json").unwrap()).unwrap();
    assert_eq!(meta["namespace"], "shop-pr-1");
    assert_eq!(meta["url"], "https://shop-pr-1.p.example.com");
    assert!(meta["image"].as_str().unwrap().starts_with("ghcr.io/acme/shop:"));
    let kustomization = repo.file("environments/shop-pr-1/kustomization.yaml").unwrap();
    assert!(kustomization.contains("namespace: shop-pr-1") && !kustomization.contains("kube-system"));
    assert!(!kustomization.contains("evil"));
}

#[test]
fn pruning_removes_only_what_prenv_wrote() {
    let repo = Repo::synced(&[open(1), open(2)]);
    repo.push(|w| std::fs::write(w.join("environments/shop-pr-1/notes.txt"), "mine\n").unwrap());
    let out = repo.sync(&[closed(1), open(2)]);
    assert!(
        out.contains("prune") && out.contains("kept    environments/shop-pr-1/notes.txt"),
        "{out}"
    );
    let tree = repo.tree();
    let left: Vec<&String> = tree.keys().filter(|p| p.contains("shop-pr-1")).collect();
    assert_eq!(left, ["environments/shop-pr-1/notes.txt"]);
    assert!(
        !repo
            .file("flux/environments/shop/kustomization.yaml")
            .unwrap()
            .contains("shop-pr-1")
    );
}

#[test]
fn wiring_follows_decisions_when_a_directory_is_deleted_by_hand() {
    let repo = Repo::synced(&[open(1), open(2), open(3)]);
    repo.push(|w| {
        for env in ["shop-pr-1", "shop-pr-2", "shop-pr-3"] {
            std::fs::remove_dir_all(w.join("environments").join(env)).unwrap();
        }
    });
    // PR 1 is not in the snapshot, PR 2 is open, PR 3 closed.
    repo.sync(&[open(2), closed(3)]);
    let tree = repo.tree();
    let index = repo.file("flux/environments/shop/kustomization.yaml").unwrap();
    assert!(
        tree.contains_key("flux/environments/shop/shop-pr-1.yaml") && index.contains("shop-pr-1.yaml"),
        "{index}"
    );
    assert!(
        tree.contains_key("environments/shop-pr-2/prenv.json"),
        "the open PR's directory was not written again"
    );
    assert!(
        !tree.contains_key("flux/environments/shop/shop-pr-3.yaml") && !index.contains("shop-pr-3"),
        "{index}"
    );
    let message = git(&repo.remote, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains("prune  shop-pr-3"),
        "the prune is in the commit message: {message}"
    );
}

#[test]
fn a_late_sync_with_an_older_snapshot_never_rolls_back() {
    let mut newer = open(1);
    newer["head"]["sha"] = json!(sha(1, 2));
    newer["updated_at"] = json!("2026-11-24T11:30:00Z");
    let mut older = open(1);
    older["head"]["sha"] = json!(sha(1, 1));
    older["updated_at"] = json!("2026-11-24T11:00:00Z");
    let repo = Repo::synced(&[open(2)]);
    repo.sync(&[newer.clone()]);
    let out = repo.sync(&[older]);
    assert!(out.contains("is older than what deployed it"), "{out}");
    let meta: serde_json::Value =
        serde_json::from_str(&repo.file("environments/shop-pr-1/prenv.json").unwrap()).unwrap();
    assert_eq!(
        meta["head_sha"],
        sha(1, 2),
        "an older snapshot rolled the environment back"
    );
    // An edit that changes nothing deployed (a new title) bumps updated_at but makes no commit.
    let tip = repo.tip();
    newer["title"] = json!("renamed");
    newer["updated_at"] = json!("2026-11-24T11:45:00Z");
    assert!(repo.sync(&[newer]).contains("no change"));
    assert_eq!(repo.tip(), tip);
}

#[test]
fn a_stale_lock_is_named_and_a_killed_runs_pack_is_cleaned() {
    let repo = Repo::synced(&[open(1)]);
    let lock = repo.remote.join("refs/heads/main.lock");
    std::fs::write(&lock, "").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = repo.run("sync", &[open(1), open(2)], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("refs/heads/main.lock exists since") && err.contains("remove it if no git or prenv is running"),
        "{err}"
    );
    std::fs::remove_file(&lock).unwrap();

    let pack = repo.remote.join("objects/pack/pack_git2_leftover");
    std::fs::write(&pack, "half a pack").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let fresh = repo.remote.join("objects/pack/pack_git2_in_progress");
    std::fs::write(&fresh, "someone writing right now").unwrap();
    repo.sync(&[open(1), open(2)]);
    assert!(!pack.exists(), "the killed run's temporary pack was not removed");
    assert!(fresh.exists(), "a temporary pack being written now was removed");
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let repo = Repo::synced(&[]);
    let prs: Vec<_> = (1..=300).map(open).collect();
    let file = repo.dir.path().join("prs.json");
    std::fs::write(&file, serde_json::to_string(&prs).unwrap()).unwrap();
    let cmd = format!(
        "{} --config {} plan --diff --prs {} --repo {} --now {NOW} | head -1; exit ${{PIPESTATUS[0]}}",
        env!("CARGO_BIN_EXE_prenv"),
        s(&repo.config),
        s(&file),
        s(&repo.remote)
    );
    let out = Command::new("bash")
        .args(["-c", &cmd])
        .env("PRENV_IMAGE_CHECK", "false")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn render_out_never_writes_or_deletes_through_a_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let (out_dir, outside) = (dir.path().join("out"), dir.path().join("outside"));
    std::fs::create_dir_all(out_dir.join("environments")).unwrap();
    std::fs::create_dir_all(outside.join("victim")).unwrap();
    std::fs::write(outside.join("victim/kustomization.yaml"), "precious\n").unwrap();
    std::fs::write(outside.join("file.txt"), "precious\n").unwrap();
    let config = write_config(dir.path(), CONFIG);
    // A directory link where an environment belongs, and a link where the wiring directory belongs.
    std::os::unix::fs::symlink(outside.join("victim"), out_dir.join("environments/shop-pr-1")).unwrap();
    let render = |prs: &[serde_json::Value], check: bool| {
        let file = write_prs(dir.path(), prs);
        let mut args = vec![
            "--config",
            s(&config),
            "render",
            "--prs",
            s(&file),
            "--out",
            s(&out_dir),
            "--now",
            NOW,
        ];
        if check {
            args.push("--check");
        }
        prenv(&args)
    };
    let snapshot = |root: &Path| -> BTreeMap<PathBuf, Vec<u8>> {
        walk(root)
            .into_iter()
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let before = snapshot(&outside);
    let out = render(&[open(1), open(2)], false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out_dir.join("environments/shop-pr-2/kustomization.yaml").is_file());
    assert!(
        std::fs::symlink_metadata(out_dir.join("environments/shop-pr-1"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(snapshot(&outside), before, "render wrote through a link");
    // --check settles: what render wrote, it finds unchanged.
    assert_eq!(render(&[open(1), open(2)], true).status.code(), Some(0));
    // Closing the PRs prunes only real files.
    let out = render(&[closed(1), closed(2)], false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(snapshot(&outside), before, "render deleted through a link");

    // A link where a wiring directory belongs is an obstacle: a clear error, nothing written there.
    std::fs::remove_dir_all(out_dir.join("flux")).ok();
    std::fs::create_dir_all(out_dir.join("flux")).unwrap();
    std::os::unix::fs::symlink(&outside, out_dir.join("flux/environments")).unwrap();
    let out = render(&[open(3)], false);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("flux/environments is not a directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(&outside), before);
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
