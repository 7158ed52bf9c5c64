//! A sync of a few PRs against a settled tree reads only their environments (`sync::read_for`,
//! `EnvStore::read_settled`), and so does a sync of every PR, for the PRs that changed since the
//! tree's decisions were made (`core::prints`). The property that makes it safe: at every step of any sequence of
//! webhook-shaped events, hand edits, settings changes and passing time, the commit it makes holds
//! exactly the tree a sync from a full read of the same repository makes, with no memory at all.
//! Real git repositories on both sides; the full side is a copy of the repository before the step
//! with an empty cache, so nothing it knows comes from the partial side.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use prenv::adapters::git::EnvRepo;
use prenv::app::sync::{self, SyncOptions, SyncOutcome};
use prenv::model::config::Config;
use prenv::model::pr::{Listing, PrState, PullRequest};
use proptest::prelude::*;

mod common;

use common::{NoCredentials, git, lib_pr, s};

const OPEN: u64 = 6;

/// What happens before one sync, whose snapshot names only the PR the event is about.
#[derive(Debug, Clone)]
enum Event {
    /// PR `n` gets a new head.
    Push(u64),
    /// PR `n` closes; with `pin`, labelled to keep its environment for a while.
    Close { n: u64, pin: bool },
    /// A new PR `n` opens.
    Open(u64),
    /// Someone edits environment `n`'s kustomization by hand (drift), then PR 1 gets a new head.
    Edit(u64),
    /// Someone adds a file of their own in environment `n`'s directory, then PR 1 gets a new head.
    Stray(u64),
    /// The settings change (another quota), then PR 1 gets a new head.
    Settings,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1..=OPEN).prop_map(Event::Push),
        2 => (1..=OPEN, any::<bool>()).prop_map(|(n, pin)| Event::Close { n, pin }),
        1 => (OPEN + 1..=OPEN + 3).prop_map(Event::Open),
        1 => (1..=OPEN).prop_map(Event::Edit),
        1 => (1..=OPEN).prop_map(Event::Stray),
        1 => Just(Event::Settings),
    ]
}

fn config(settings: u32, engine: &str) -> Config {
    let text = format!(
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"{engine}\"\ndatabases = [\"postgres\"]\n[quota]\npods = {}\n{}",
        20 + settings,
        if engine == "argocd" {
            "[argocd]\nrepo_url = \"https://git.example.com/envs.git\"\n"
        } else {
            ""
        }
    );
    Config::parse(&text, "test").unwrap()
}

/// The PRs as the fake GitHub knows them: state, head round, labels, and when each last changed
/// (GitHub moves `updated_at` only when something about the PR does).
struct Prs {
    rounds: std::collections::BTreeMap<u64, (PrState, u64, bool, DateTime<Utc>)>,
}

impl Prs {
    fn new(now: DateTime<Utc>) -> Prs {
        Prs {
            rounds: (1..=OPEN).map(|n| (n, (PrState::Open, 0, false, now))).collect(),
        }
    }

    fn pr(&self, n: u64) -> PullRequest {
        let (state, round, pin, changed) = self.rounds[&n];
        let mut pr = lib_pr(n, state, format!("{:040x}", n * 1000 + round), &changed.to_rfc3339());
        if state == PrState::Closed {
            pr.closed_at = Some(changed);
        }
        if pin {
            pr.labels = vec!["preserve=true".into()];
        }
        pr
    }

    fn push(&mut self, n: u64, now: DateTime<Utc>) {
        let entry = self.rounds.entry(n).or_insert((PrState::Open, 0, false, now));
        if entry.0 == PrState::Open {
            entry.1 += 1;
            entry.3 = now;
        }
    }
}

fn open(repo: &Path, cache: &Path) -> EnvRepo {
    EnvRepo::open(s(repo), &config(0, "flux").git, cache, true).unwrap()
}

/// One sync as `prenv sync --prs` runs it: a view for the snapshot (partial when the memory in
/// `cache` knows the tip to be settled), then the sync.
fn sync_with(repo: &Path, cache: &Path, config: &Config, prs: &[PullRequest], now: DateTime<Utc>) -> SyncOutcome {
    let mut store = open(repo, cache);
    let opts = SyncOptions::default();
    let view = sync::read_for(&mut store, config, prs, now, &opts).unwrap();
    sync::sync(&mut store, view, config, prs, now, &opts, &mut NoCredentials).unwrap()
}

/// PR `pr` in GitHub's REST shape, with fields prenv does not read (some of them in every
/// listing, `volatile` one that moves with each listing, as a repository's `pushed_at` does).
fn rest(pr: &PullRequest, volatile: u64) -> serde_json::Value {
    let time = |at: Option<DateTime<Utc>>| at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    serde_json::json!({
        "url": format!("https://api.github.com/repos/acme/shop/pulls/{}", pr.number),
        "number": pr.number, "state": if pr.state == PrState::Open { "open" } else { "closed" },
        "draft": pr.draft, "title": pr.title,
        "labels": pr.labels.iter().map(|l| serde_json::json!({"name": l, "color": "ededed"})).collect::<Vec<_>>(),
        "head": {"sha": pr.head_sha, "ref": pr.head_ref, "repo": pr.head_repo.as_ref().map(|r| serde_json::json!({"full_name": r}))},
        "base": {"ref": "main", "repo": {"full_name": pr.base_repo, "open_issues_count": volatile}},
        "user": pr.author.as_ref().map(|a| serde_json::json!({"login": a})),
        "closed_at": time(pr.closed_at), "merged_at": time(pr.merged_at),
        "updated_at": time(Some(pr.updated_at)), "created_at": time(pr.created_at),
    })
}

/// [`sync_with`] as `prenv sync --prs FILE` runs it for a snapshot of every PR: the file's JSON
/// read as a [`Listing`], so the elements the settled tree's fingerprints know are not built.
/// Gives the outcome and how many elements were left unread.
fn sync_listed(
    repo: &Path,
    cache: &Path,
    config: &Config,
    prs: &[PullRequest],
    volatile: u64,
    now: DateTime<Utc>,
) -> (SyncOutcome, usize) {
    let json = serde_json::to_string(&prs.iter().map(|pr| rest(pr, volatile)).collect::<Vec<_>>()).unwrap();
    let mut store = open(repo, cache);
    let opts = SyncOptions::default();
    let (view, listing, read) =
        sync::read_listed(&mut store, config, || Listing::new(json, "prs.json"), now, &opts).unwrap();
    let unread = read.unread;
    let done = sync::sync(
        &mut store,
        view,
        config,
        sync::Prs::Listed(&listing, read),
        now,
        &opts,
        &mut NoCredentials,
    );
    (done.unwrap(), unread)
}

fn tree(repo: &Path) -> String {
    git(repo, &["rev-parse", "main^{tree}"]).trim().to_string()
}

fn message(repo: &Path) -> String {
    git(repo, &["log", "-1", "--format=%B", "main"])
}

/// Commits `edit` (run in a clone of `repo`) to `repo` as someone else would.
fn push_by_hand(repo: &Path, edit: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    git(dir.path(), &["clone", "--quiet", s(repo), s(&work)]);
    edit(&work);
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "-c",
            "user.name=Someone",
            "-c",
            "user.email=s@example.com",
            "commit",
            "--quiet",
            "-m",
            "by hand",
        ],
    );
    git(&work, &["push", "--quiet", "origin", "main"]);
}

fn copy_repo(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .args(["-r", s(from), s(to)])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// PRs closed before the tests begin, with no environment, as a listing of every PR holds
/// many: enough that a listing of every PR is larger than a partial view's limit, as real ones
/// are, so its elements are known by their bytes ([`prenv::model::pr::Listing`]).
fn long_closed() -> impl Iterator<Item = PullRequest> {
    (1001..=1070).map(|n| lib_pr(n, PrState::Closed, format!("{n:040x}"), "2026-11-01T10:00:00Z"))
}

/// A repository of `OPEN` environments after a full sync, and its cache.
struct Side {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    cache: PathBuf,
}

fn settled_side(now: DateTime<Utc>, prs: &Prs, engine: &str) -> Side {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("envs.git");
    git(
        dir.path(),
        &["init", "--quiet", "--bare", "--initial-branch=main", s(&repo)],
    );
    let cache = dir.path().join("cache");
    let all: Vec<PullRequest> = (1..=OPEN).map(|n| prs.pr(n)).chain(long_closed()).collect();
    let done = sync_with(&repo, &cache, &config(0, engine), &all, now);
    assert_eq!(done.plan.count(prenv::core::plan::Action::Create), OPEN as usize);
    Side { _dir: dir, repo, cache }
}

/// Runs `events` on the partial side and, step by step, the same sync on a copy of the repository
/// with no memory; returns how many steps read a partial view. Each snapshot names only the PR
/// the event is about, as a webhook delivers it.
fn both_sides_agree(events: &[(Event, bool)], engine: &str) -> usize {
    let events: Vec<(Event, bool, bool)> = events.iter().map(|(e, later)| (e.clone(), *later, false)).collect();
    agree(&events, engine)
}

/// [`both_sides_agree`], each event with whether the snapshot lists every PR the fake GitHub
/// knows (open and closed, as `prenv sync` from CI gives) instead of the one it is about. The
/// partial side reads such a snapshot as `prenv sync --prs FILE` does, as a JSON listing.
fn agree(events: &[(Event, bool, bool)], engine: &str) -> usize {
    agree_listed(events, engine, false).0
}

/// [`agree`]; with `volatile`, each listing also moves a field prenv does not read in every
/// element. Gives the steps that read a partial view, and those that left elements unread.
fn agree_listed(events: &[(Event, bool, bool)], engine: &str, volatile: bool) -> (usize, usize) {
    let mut now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse().unwrap();
    let mut prs = Prs::new(now - Duration::minutes(1));
    let side = settled_side(now, &prs, engine);
    let mut settings = 0;
    let mut partial_steps = 0;
    let mut unread_steps = 0;
    for (step, (event, later, every)) in events.iter().enumerate() {
        now += if *later {
            Duration::hours(30)
        } else {
            Duration::minutes(2)
        };
        let about = match event {
            Event::Push(n) => {
                prs.push(*n, now - Duration::minutes(1));
                *n
            }
            Event::Close { n, pin } => {
                let entry = prs.rounds.get_mut(n).unwrap();
                // Closing, or labelling, moves its time.
                if entry.0 == PrState::Open || entry.2 != *pin {
                    entry.3 = now - Duration::minutes(1);
                }
                entry.0 = PrState::Closed;
                entry.2 = *pin;
                *n
            }
            Event::Open(n) => {
                prs.push(*n, now - Duration::minutes(1));
                *n
            }
            Event::Edit(n) | Event::Stray(n) => {
                let file = match event {
                    Event::Edit(_) => "kustomization.yaml",
                    _ => "notes.txt",
                };
                let path = format!("environments/shop-pr-{n}/{file}");
                push_by_hand(&side.repo, |work| {
                    let target = work.join(&path);
                    if target.parent().unwrap().exists() {
                        let mut text = std::fs::read_to_string(&target).unwrap_or_default();
                        text.push_str("# edited by hand\n");
                        std::fs::write(&target, text).unwrap();
                    } else {
                        // The environment is gone: someone's own file at the top instead.
                        let other = work.join("README.hand");
                        let mut text = std::fs::read_to_string(&other).unwrap_or_default();
                        text.push_str("a line of someone's\n");
                        std::fs::write(other, text).unwrap();
                    }
                });
                prs.push(1, now - Duration::minutes(1));
                1
            }
            Event::Settings => {
                settings += 1;
                prs.push(1, now - Duration::minutes(1));
                1
            }
        };
        let config = config(settings, engine);
        let snapshot: Vec<PullRequest> = if *every {
            prs.rounds.keys().map(|n| prs.pr(*n)).chain(long_closed()).collect()
        } else {
            vec![prs.pr(about)]
        };
        let full_dir = tempfile::tempdir().unwrap();
        let full_repo = full_dir.path().join("envs.git");
        copy_repo(&side.repo, &full_repo);
        let full = sync_with(
            &full_repo,
            &full_dir.path().join("empty-cache"),
            &config,
            &snapshot,
            now,
        );
        assert_eq!(full.plan.settled, 0, "a sync with no memory reads everything");
        let done = if *every {
            let moved = if volatile { step as u64 } else { 0 };
            let (done, unread) = sync_listed(&side.repo, &side.cache, &config, &snapshot, moved, now);
            if unread > 0 {
                unread_steps += 1;
            }
            done
        } else {
            sync_with(&side.repo, &side.cache, &config, &snapshot, now)
        };
        if done.plan.settled > 0 {
            partial_steps += 1;
        }
        let context = format!("step {step}: {event:?} (30 h later: {later}, every PR: {every})");
        assert_eq!(tree(&side.repo), tree(&full_repo), "{context}: the trees differ");
        assert_eq!(done.commit.is_some(), full.commit.is_some(), "{context}");
        if done.commit.is_some() {
            assert_eq!(
                message(&side.repo),
                message(&full_repo),
                "{context}: the commit messages differ"
            );
        }
        let changing = |o: &SyncOutcome| -> Vec<(String, String)> {
            o.plan
                .changing()
                .map(|d| (d.env.clone(), d.action.to_string()))
                .collect()
        };
        assert_eq!(
            changing(&done),
            changing(&full),
            "{context}: the decisions that change something differ"
        );
        let kept = |o: &SyncOutcome| o.plan.count(prenv::core::plan::Action::Keep) + o.plan.settled;
        assert_eq!(kept(&done), kept(&full), "{context}: the environments kept differ");
    }
    (partial_steps, unread_steps)
}

#[test]
fn a_push_to_one_pr_of_a_settled_tree_reads_only_its_environment_and_commits_what_a_full_read_does() {
    let events = [
        (Event::Push(3), false),
        (Event::Push(5), false),
        (Event::Push(3), false),
    ];
    assert_eq!(
        both_sides_agree(&events, "flux"),
        3,
        "every push after a settled sync reads a partial view"
    );
}

#[test]
fn a_plan_that_changes_which_environments_exist_is_made_again_against_the_full_view() {
    let events = [
        (Event::Close { n: 2, pin: false }, false),
        (Event::Push(3), false),
        (Event::Open(8), false),
        (Event::Push(3), false),
    ];
    // The close and the open each fall back to a full read; the pushes after them are partial.
    assert_eq!(both_sides_agree(&events, "flux"), 2);
}

#[test]
fn a_hand_edit_a_stray_file_or_new_settings_void_the_settled_tree_until_a_full_read_settles_it_again() {
    let events = [
        (Event::Edit(2), false),
        (Event::Push(3), false),
        (Event::Settings, false),
        (Event::Push(3), false),
        (Event::Stray(4), false),
        (Event::Push(3), false),
    ];
    // After the edit: drift repaired by a full read, then partial. New settings: a full read
    // renders everything again, then partial. A stray file is kept and reported, so nothing is
    // settled while it is there.
    assert_eq!(both_sides_agree(&events, "flux"), 2);
}

#[test]
fn a_pin_ends_the_settled_tree_when_it_expires() {
    let events = [
        (Event::Close { n: 2, pin: true }, false),
        (Event::Push(3), false),
        // 30 hours later the pin still holds; 60 hours later it has expired, and the pinned
        // environment is pruned by a sync about another PR, as a full read prunes it.
        (Event::Push(3), true),
        (Event::Push(3), true),
    ];
    assert_eq!(both_sides_agree(&events, "flux"), 2);
}

#[test]
fn an_argo_cd_repository_agrees_too() {
    let events = [
        (Event::Push(3), false),
        (Event::Close { n: 2, pin: false }, false),
        (Event::Push(3), false),
        (Event::Edit(4), false),
        (Event::Push(5), false),
    ];
    assert_eq!(both_sides_agree(&events, "argocd"), 3);
}

#[test]
fn a_snapshot_of_every_pr_reads_only_the_environments_of_prs_that_changed() {
    let events = [
        // The first sync listed every PR: each PR's fingerprint is known.
        (Event::Push(3), false, true),
        // A webhook's sync decides one PR; the others' fingerprints carry over.
        (Event::Push(5), false, false),
        (Event::Push(2), false, true),
        // A new PR: its environment is created from a full read, which lists every PR.
        (Event::Open(9), false, true),
        // Someone's push voids the settled tree: a full read, which settles it again.
        (Event::Edit(4), false, true),
        (Event::Push(3), false, true),
        // A closed PR is pruned from a full read; its closed listing is then known too.
        (Event::Close { n: 6, pin: false }, false, true),
        (Event::Push(1), false, true),
        // 30 hours later the time is past every decision: still partial.
        (Event::Push(2), true, true),
    ];
    // Each listing against a settled tree leaves unbuilt the PRs whose elements are the bytes an
    // earlier listing's decisions were made from: all but the first (the side was settled from
    // PRs, not a listing) and the one after the hand edit (a full read).
    let (partial, unread) = agree_listed(&events, "flux", false);
    assert_eq!((partial, unread), (6, 6));
    // A field prenv does not read that moves in every element: each is built, and the PRs whose
    // fingerprint is the same are still left out, and their environments unread.
    let (partial, unread) = agree_listed(&events, "flux", true);
    assert_eq!((partial, unread), (6, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_events_commits_what_a_full_read_commits(
        events in proptest::collection::vec((event(), proptest::bool::weighted(0.2)), 1..7)
    ) {
        both_sides_agree(&events, "flux");
    }

    #[test]
    fn any_sequence_of_listings_and_events_commits_what_a_full_read_commits(
        events in proptest::collection::vec((event(), proptest::bool::weighted(0.2), any::<bool>()), 1..8)
    ) {
        agree(&events, "flux");
    }

    #[test]
    fn any_sequence_of_events_on_argo_cd_commits_what_a_full_read_commits(
        events in proptest::collection::vec((event(), proptest::bool::weighted(0.2)), 1..5)
    ) {
        both_sides_agree(&events, "argocd");
    }
}
