//! A property: whatever damage people push to a synced environments repository — corrupt, missing
//! or extra metadata, files where directories belong, deleted wiring, stray files — a sync never
//! removes an environment of an open PR and never changes a path prenv does not own. Runs the real
//! pipeline against the in-memory store, so hundreds of cases take a second.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use prenv::app::sync::{self, SyncOptions};
use prenv::core::ports::memory::MemoryStore;
use prenv::core::ports::{Change, EnvStore};
use prenv::model::config::Config;
use prenv::model::layout::ENV_FILES;
use prenv::model::meta::EnvMeta;
use prenv::model::pr::{PrState, PullRequest};
use prenv::model::tree::Tree;
use proptest::prelude::*;

mod common;

use common::{NoCredentials, lib_pr, postgres_config};

const ENVS: u64 = 6;

fn config() -> Config {
    postgres_config("[sync]\nmax_prune_share = 1.0\n")
}

fn pr(n: u64, state: PrState) -> PullRequest {
    lib_pr(n, state, format!("{:040x}", n), "2026-11-24T11:00:00Z")
}

/// One thing a person (or a bad merge) does to the repository.
#[derive(Debug, Clone)]
enum Damage {
    CorruptMeta(u64),
    WrongTypeInMeta(u64),
    DeleteMeta(u64),
    ExtraFile(u64),
    FileForDirectory(u64),
    DeleteDirectory(u64),
    DeleteWiring(u64),
    DeleteIndex,
    ExtraWiring,
    ForeignDirectory(u64),
    EditRenderedFile(u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    let env = 1..=ENVS + 2;
    prop_oneof![
        env.clone().prop_map(Damage::CorruptMeta),
        env.clone().prop_map(Damage::WrongTypeInMeta),
        env.clone().prop_map(Damage::DeleteMeta),
        env.clone().prop_map(Damage::ExtraFile),
        env.clone().prop_map(Damage::FileForDirectory),
        env.clone().prop_map(Damage::DeleteDirectory),
        env.clone().prop_map(Damage::DeleteWiring),
        Just(Damage::DeleteIndex),
        Just(Damage::ExtraWiring),
        env.clone().prop_map(Damage::ForeignDirectory),
        env.prop_map(Damage::EditRenderedFile),
    ]
}

fn dir(n: u64) -> String {
    format!("environments/shop-pr-{n}")
}

fn apply(tree: &Tree, damage: &Damage) -> Tree {
    let mut files: BTreeMap<String, Vec<u8>> = tree.iter().map(|(p, b)| (p.to_string(), b.to_vec())).collect();
    let meta = |n: u64| format!("{}/prenv.json", dir(n));
    match damage {
        Damage::CorruptMeta(n) => {
            files
                .entry(meta(*n))
                .and_modify(|b| *b = b"<<<<<<< HEAD\n{}\n=======\n".to_vec());
        }
        Damage::WrongTypeInMeta(n) => {
            if let Some(b) = files.get_mut(&meta(*n)) {
                let mut v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
                v["pr"] = serde_json::json!("not a number");
                *b = v.to_string().into_bytes();
            }
        }
        Damage::DeleteMeta(n) => {
            files.remove(&meta(*n));
        }
        Damage::ExtraFile(n) if files.keys().any(|p| p.starts_with(&format!("{}/", dir(*n)))) => {
            files.insert(format!("{}/notes.txt", dir(*n)), b"mine".to_vec());
        }
        Damage::FileForDirectory(n) => {
            files.retain(|p, _| !p.starts_with(&format!("{}/", dir(*n))));
            files.insert(dir(*n), b"a file".to_vec());
        }
        Damage::DeleteDirectory(n) => files.retain(|p, _| !p.starts_with(&format!("{}/", dir(*n)))),
        Damage::DeleteWiring(n) => {
            files.remove(&format!("flux/environments/shop/shop-pr-{n}.yaml"));
        }
        Damage::DeleteIndex => {
            files.remove("flux/environments/shop/kustomization.yaml");
        }
        Damage::ExtraWiring => {
            files.insert("flux/environments/mine.yaml".into(), b"kind: Kustomization\n".to_vec());
        }
        Damage::ForeignDirectory(n) if !files.keys().any(|p| p.starts_with(&format!("{}/", dir(*n)))) => {
            files.insert(format!("{}/kustomization.yaml", dir(*n)), b"resources: []\n".to_vec());
        }
        Damage::EditRenderedFile(n) => {
            files
                .entry(format!("{}/namespace.yaml", dir(*n)))
                .and_modify(|b| b.extend_from_slice(b"# edited\n"));
        }
        Damage::ExtraFile(_) | Damage::ForeignDirectory(_) => {}
    }
    let mut out = Tree::new();
    for (p, b) in files {
        // A file where a directory belongs replaces the directory (git cannot hold both).
        if out.paths().any(|q| q.starts_with(&format!("{p}/"))) {
            continue;
        }
        out.insert(p, b).unwrap();
    }
    out
}

/// The paths prenv may write by the simplest reading of the rules, independent of the code under
/// test: prenv's file names in directories whose metadata parses with the mark and names them,
/// the wiring of those and of what the index beside it lists, the indexes and the project's
/// Kustomization. Everything else must survive a sync byte for byte.
fn oracle_owned(tree: &Tree) -> BTreeSet<String> {
    let mut owned = BTreeSet::new();
    let listed = |index: &str| -> BTreeSet<String> {
        tree.get(index)
            .map(|index| {
                String::from_utf8_lossy(index)
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("- ")?.strip_suffix(".yaml").map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The root index lists what is wired at the top; the project's index what is in its directory.
    let (top, nested) = (
        listed("flux/environments/kustomization.yaml"),
        listed("flux/environments/shop/kustomization.yaml"),
    );
    let mut with_meta = BTreeSet::new();
    for (path, bytes) in tree.iter() {
        let Some(rest) = path.strip_prefix("environments/") else {
            continue;
        };
        let Some((env, "prenv.json")) = rest.split_once('/') else {
            continue;
        };
        let ok = serde_json::from_slice::<EnvMeta>(bytes).is_ok_and(|m| {
            m.generator == "prenv" && m.env.as_str() == env && m.pr.to_string() == env.trim_start_matches("shop-pr-")
        });
        if ok {
            with_meta.insert(env.to_string());
        }
    }
    let marked = with_meta;
    for path in tree.paths() {
        let env_file = path
            .strip_prefix("environments/")
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(env, file)| marked.contains(env) && ENV_FILES.contains(&file));
        let wiring = match path.strip_prefix("flux/environments/") {
            Some("kustomization.yaml" | "shop.yaml" | "shop/kustomization.yaml") => true,
            Some(file) => match file.strip_prefix("shop/") {
                Some(file) => file
                    .strip_suffix(".yaml")
                    .is_some_and(|env| marked.contains(env) || nested.contains(env)),
                None => file
                    .strip_suffix(".yaml")
                    .is_some_and(|env| marked.contains(env) || top.contains(env)),
            },
            None => false,
        };
        if env_file || wiring {
            owned.insert(path.to_string());
        }
    }
    owned
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn damage_never_removes_an_open_prs_environment_nor_touches_what_is_not_prenvs(
        damages in proptest::collection::vec(damage(), 1..5),
        states in proptest::collection::vec(0u8..3, ENVS as usize + 2),
    ) {
        let cfg = config();
        let now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut store = MemoryStore::new();
        let first: Vec<_> = (1..=ENVS).map(|n| pr(n, PrState::Open)).collect();
        let view = store.read().unwrap();
        sync::sync(&mut store, view, &cfg, &first, now, &SyncOptions::default(), &mut NoCredentials).unwrap();
        let mut damaged = store.tip_tree();
        for d in &damages {
            damaged = apply(&damaged, d);
        }
        let base = store.read().unwrap();
        let change = Change { upserts: damaged.clone(), removals: store.tip_tree().paths().map(String::from).collect(), message: "damage".into() };
        store.publish(&base, &change).unwrap();
        prop_assert_eq!(store.tip_tree(), damaged.clone());

        // Each PR: open, closed, or not in the snapshot at all.
        let snapshot: Vec<PullRequest> = states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                0 => Some(pr(i as u64 + 1, PrState::Open)),
                1 => Some(pr(i as u64 + 1, PrState::Closed)),
                _ => None,
            })
            .collect();
        let view = store.read().unwrap();
        sync::sync(&mut store, view, &cfg, &snapshot, now, &SyncOptions::default(), &mut NoCredentials).unwrap();
        let after = store.tip_tree();

        let owned = oracle_owned(&damaged);
        for (path, bytes) in damaged.iter().filter(|(p, _)| !owned.contains(*p)) {
            prop_assert!(after.get(path) == Some(bytes), "{} is not prenv's and was changed ({:?})", path, damages);
        }
        // What goes, goes by a prune decision: only the environments of PRs the snapshot says closed.
        for path in damaged.paths().filter(|p| after.get(p).is_none()) {
            let env = path.trim_start_matches("environments/").trim_start_matches("flux/environments/").trim_start_matches("shop/");
            let n: Option<u64> = env.strip_prefix("shop-pr-").and_then(|r| r.split(['/', '.']).next()).and_then(|n| n.parse().ok());
            let closed = n.is_some_and(|n| snapshot.iter().any(|p| p.number == n && p.state == PrState::Closed));
            prop_assert!(closed, "{} was removed without a prune decision ({:?})", path, damages);
        }
        for p in snapshot.iter().filter(|p| p.state == PrState::Open) {
            let env = dir(p.number);
            let blocked = damaged.paths().any(|q| q == env || (q.starts_with(&format!("{env}/")) && !owned.contains(q)));
            if owned.contains(&format!("{env}/prenv.json")) || !blocked {
                prop_assert!(after.get(&format!("{env}/prenv.json")).is_some(), "open PR #{}'s environment is gone ({:?})", p.number, damages);
            }
        }
        // Environments whose PR the snapshot does not mention keep their files.
        for n in (1..=ENVS).filter(|n| !snapshot.iter().any(|p| p.number == *n)) {
            let meta = format!("{}/prenv.json", dir(n));
            if owned.contains(&meta) {
                prop_assert!(after.get(&meta).is_some(), "PR #{} is unknown but its environment went ({:?})", n, damages);
            }
        }
    }
}
