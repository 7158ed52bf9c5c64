//! The memory a sync keeps between runs (adapters/memory.rs) against a real git repository: the
//! tree ids the core predicts are the ones git writes, a warm memory skips every unchanged
//! environment, drift changes a tree id and so is still repaired, and a damaged memory file is
//! ignored without changing any result.

use std::path::Path;

use chrono::{DateTime, Utc};
use prenv::adapters::git::EnvRepo;
use prenv::app::sync::{self, SyncOptions};
use prenv::core::ports::{EnvStore, NoMemory};
use prenv::model::config::Config;
use prenv::model::layout::{BlobId, TreeId, env_dir, flux_file};
use prenv::model::pr::{PrState, PullRequest};

mod common;

use common::{NoCredentials, lib_pr, postgres_config};

const ENVS: u64 = 8;

fn config() -> Config {
    postgres_config("")
}

fn pr(n: u64, round: u64) -> PullRequest {
    lib_pr(
        n,
        PrState::Open,
        format!("{:040x}", n * 1000 + round),
        &format!("2026-11-24T11:00:0{round}Z"),
    )
}

fn now() -> DateTime<Utc> {
    "2026-11-24T12:00:00Z".parse().unwrap()
}

fn open(repo: &Path, cache: &Path) -> EnvRepo {
    EnvRepo::open(repo.to_str().unwrap(), &config().git, cache, true).unwrap()
}

/// Syncs `prs` with a freshly opened repository (a new process would do the same).
fn sync_once(repo: &Path, cache: &Path, prs: &[PullRequest]) -> sync::SyncOutcome {
    let mut store = open(repo, cache);
    let view = store.read().unwrap();
    sync::sync(
        &mut store,
        view,
        &config(),
        prs,
        now(),
        &SyncOptions::default(),
        &mut NoCredentials,
    )
    .unwrap()
}

/// The environments a plan would render and compare, given the store's memory.
fn rendered(repo: &Path, cache: &Path, prs: &[PullRequest]) -> usize {
    let mut store = open(repo, cache);
    let view = store.read().unwrap();
    let desired = sync::prepare(
        &view,
        store.verifications(),
        &config(),
        prs,
        now(),
        &SyncOptions::default(),
        &mut NoCredentials,
    )
    .unwrap();
    assert!(desired.changes.is_empty(), "{:?}", desired.changes);
    desired.verified.len()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn id(hex: &str) -> [u8; 20] {
    hex::decode(hex).unwrap().try_into().unwrap()
}

#[test]
fn the_trees_the_core_predicts_are_the_trees_git_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, cache) = (tmp.path().join("envs.git"), tmp.path().join("cache"));
    let prs: Vec<PullRequest> = (1..=ENVS).map(|n| pr(n, 1)).collect();
    sync_once(&repo, &cache, &prs);
    let mut store = open(&repo, &cache);
    store.read().unwrap();
    for n in 1..=ENVS {
        let env = format!("shop-pr-{n}");
        let tree = TreeId(id(&git(&repo, &["rev-parse", &format!("main:{}", env_dir(&env))])));
        let wiring = BlobId(id(&git(&repo, &["rev-parse", &format!("main:{}", flux_file(&env))])));
        assert!(
            store.verifications().knows(tree, Some(wiring)),
            "{env}: git wrote another tree"
        );
    }
}

#[test]
fn a_warm_memory_renders_only_what_changed_and_drift_is_still_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, cache) = (tmp.path().join("envs.git"), tmp.path().join("cache"));
    let mut prs: Vec<PullRequest> = (1..=ENVS).map(|n| pr(n, 1)).collect();
    sync_once(&repo, &cache, &prs);
    // Without memory every environment is rendered and compared; with it, none.
    let cold = tmp.path().join("cold");
    assert_eq!(rendered(&repo, &cold, &prs), ENVS as usize);
    assert_eq!(rendered(&repo, &cache, &prs), 0);

    // One PR moves: only its environment is rendered, and the next run renders nothing.
    prs[2] = pr(3, 2);
    let outcome = sync_once(&repo, &cache, &prs);
    assert!(outcome.commit.is_some());
    assert_eq!(rendered(&repo, &cache, &prs), 0);

    // A person edits an environment: its tree id changes, so the memory does not know it.
    let work = tmp.path().join("work");
    git(
        tmp.path(),
        &["clone", "--quiet", repo.to_str().unwrap(), work.to_str().unwrap()],
    );
    let file = work.join("environments/shop-pr-5/kustomization.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("newTag:", "newTag: hand-made #")).unwrap();
    git(
        &work,
        &[
            "-c",
            "user.name=a",
            "-c",
            "user.email=a@x",
            "commit",
            "--quiet",
            "-am",
            "hand edit",
        ],
    );
    git(&work, &["push", "--quiet", "origin", "main"]);
    let outcome = sync_once(&repo, &cache, &prs);
    let repaired: Vec<_> = outcome
        .plan
        .decisions
        .iter()
        .filter(|d| d.reason.starts_with("drift repaired"))
        .map(|d| d.env.clone())
        .collect();
    assert_eq!(repaired, vec!["shop-pr-5".to_string()]);
    assert_eq!(
        git(&repo, &["show", "main:environments/shop-pr-5/kustomization.yaml"]),
        text.trim_end()
    );
}

#[test]
fn a_damaged_memory_file_is_ignored_and_changes_no_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, cache) = (tmp.path().join("envs.git"), tmp.path().join("cache"));
    let prs: Vec<PullRequest> = (1..=ENVS).map(|n| pr(n, 1)).collect();
    sync_once(&repo, &cache, &prs);
    let dir = cache.join("memory");
    // Beside it, the small file of settled trees (see tests/settled.rs).
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(files.len(), 1, "one memory file per repository: {files:?}");
    let good = std::fs::read(&files[0]).unwrap();
    for (damage, cut) in [
        (Vec::new(), false),
        (good[..good.len() / 2].to_vec(), true),
        (b"prenv-memory 3\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(), false),
        (good.iter().map(|b| b ^ 0x5a).collect(), false),
    ] {
        std::fs::write(&files[0], &damage).unwrap();
        let n = rendered(&repo, &cache, &prs);
        if cut {
            // A file cut short keeps the whole records before the cut (each environment's
            // verification is written right after it): the environments after it are rendered.
            assert!(0 < n && n < ENVS as usize, "{n} of {ENVS} rendered after a cut");
        } else {
            assert_eq!(n, ENVS as usize, "a damaged memory is not trusted");
        }
        let outcome = sync_once(&repo, &cache, &prs);
        assert!(outcome.commit.is_none() && outcome.changes.is_empty());
    }
    // The runs above wrote a good memory again.
    assert_eq!(rendered(&repo, &cache, &prs), 0);
    // The memory is only an optimisation: the same plan with none at all.
    let mut store = open(&repo, &cache);
    let view = store.read().unwrap();
    let without = sync::prepare(
        &view,
        &NoMemory,
        &config(),
        &prs,
        now(),
        &SyncOptions::default(),
        &mut NoCredentials,
    )
    .unwrap();
    assert!(without.changes.is_empty());
}
