//! One sync: read the repository once, compute the desired state (the pure pipeline of
//! [`crate::core::desired`]), publish one commit, and on a lost race read again, re-plan and retry
//! with backoff. Also `plan` (the same without publishing) and `secrets rewrap`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::desired::{self, Desired, Inputs};
use crate::core::diff::Changes;
use crate::core::plan::{self, Evidence, Plan};
use crate::core::ports::{Change, EnvStore, ImageRegistry, Published, RepoView, Settled, Verifications};
use crate::core::prints;
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::layout::secret_file;
use crate::model::naming::EnvName;
use crate::model::pr::{Elements, Listing, PullRequest, Read};
use crate::model::tree::Tree;
use crate::secrets::{CredentialMaker, sops};

/// First backoff after a rejected publish; doubles each attempt, with jitter.
const BACKOFF_START: Duration = Duration::from_millis(20);
/// Longest backoff between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the caller allows for this run, and what it knows beyond the snapshot.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Lets the circuit breaker pass a mass prune, once.
    pub allow_mass_prune: bool,
    pub evidence: Evidence,
    /// The registry asked, before each plan, about the images of the heads that would move; `None`
    /// (image checks off, or a caller that checks nothing): every image counts as present.
    pub registry: Option<Images>,
}

/// A shared [`ImageRegistry`], for [`SyncOptions`].
#[derive(Clone)]
pub struct Images(pub Arc<dyn ImageRegistry + Send + Sync>);

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Images(registry)")
    }
}

/// Turns image checks off for one process whatever the config says (`false`, `off`, `0`): for runs
/// without registry access, such as the test suite's.
pub const IMAGE_CHECK_VAR: &str = "PRENV_IMAGE_CHECK";

/// The registry `plan`, `sync` and `serve` ask, with credentials from the environment; `None` when
/// `sync.image_check = false` or [`IMAGE_CHECK_VAR`] turns checks off.
pub fn image_checks(config: &Config) -> Result<Option<Images>> {
    let off = std::env::var(IMAGE_CHECK_VAR)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "off" | "0" | "no"));
    if !config.sync.image_check || off {
        tracing::info!("image checks are off: environments move to new heads without asking the registry");
        return Ok(None);
    }
    let credentials = crate::adapters::registry::Credentials::from_env(&config.image);
    let registry = crate::adapters::registry::RegistryImages::new(credentials)?;
    Ok(Some(Images(Arc::new(registry))))
}

/// The evidence to plan with: the caller's, plus what the registry says about the images of the
/// heads that would move against `view` (only those: an environment already running its head's
/// image costs no request). Facts the caller brought are not asked again.
fn with_image_facts(
    view: &RepoView,
    config: &Config,
    prs: &[PullRequest],
    now: DateTime<Utc>,
    opts: &SyncOptions,
) -> Evidence {
    let mut evidence = opts.evidence.clone();
    if let Some(Images(registry)) = &opts.registry {
        let wanted: BTreeSet<String> = plan::images_to_check(config, prs, view, now)
            .into_iter()
            .filter(|image| !evidence.images.contains_key(image))
            .collect();
        if !wanted.is_empty() {
            evidence.images.extend(registry.check(&wanted));
        }
    }
    evidence
}

/// Everything a run decided and did.
#[derive(Debug, Serialize)]
pub struct SyncOutcome {
    pub repo: String,
    pub branch: String,
    pub plan: Plan,
    #[serde(skip)]
    pub changes: Changes,
    /// Files added, changed and removed by the commit (or that would be).
    pub files: FileCounts,
    /// The commit published, if anything changed.
    pub commit: Option<String>,
    /// The tip the plan was made against.
    pub base: Option<String>,
    pub attempts: u32,
    /// PRs with an environment whose state could not be confirmed (kept), and why.
    pub unconfirmed: BTreeMap<u64, String>,
    /// Files inside prenv's directories that are not prenv's: kept as they are.
    pub strays: std::collections::BTreeSet<String>,
    /// Wiring files this run kept instead of rewriting them, and why.
    pub held: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize)]
pub struct FileCounts {
    pub added: usize,
    pub modified: usize,
    pub removed: usize,
}

impl FileCounts {
    fn of(changes: &Changes) -> FileCounts {
        FileCounts {
            added: changes.added.len(),
            modified: changes.modified.len(),
            removed: changes.removed.len(),
        }
    }
}

/// The desired state of a sync against `view`, without writing anything (`prenv plan`). `verified`
/// is what the store remembers verifying ([`EnvStore::verifications`]).
#[allow(clippy::too_many_arguments, reason = "the inputs of one run, each distinct")]
pub fn prepare(
    view: &RepoView,
    verified: &dyn Verifications,
    config: &Config,
    prs: &[PullRequest],
    now: DateTime<Utc>,
    opts: &SyncOptions,
    credentials: &mut dyn CredentialMaker,
) -> Result<Desired> {
    // Only the PRs to decide ask the registry: a PR whose decision the settled tree holds runs its
    // head's image (one waiting for its image is never held: see `prints::after`).
    let prs = desired::to_decide(config, view, prs, now);
    let evidence = with_image_facts(view, config, &prs, now, opts);
    let inputs = Inputs {
        config,
        prs: &prs,
        evidence: &evidence,
        now,
        allow_mass_prune: opts.allow_mass_prune,
        verified,
    };
    desired::desired(&inputs, view, credentials)
}

/// A partial view is read for at most this many PRs: past it, reading the environments one by
/// one saves nothing over reading them all.
const PARTIAL_MAX_PRS: usize = 64;

/// The view to sync `prs` against: a partial one, of only the environments of the PRs to decide,
/// when the store knows the tree it reads to be settled for these settings
/// ([`EnvStore::read_settled`]) and those are a few: the snapshot's PRs when it names a few, or
/// of a snapshot of every PR, those that changed since the tree's decisions were made
/// ([`prints::to_decide`]); else everything. Evidence about PRs the snapshot does not name
/// (operator-confirmed closures, unconfirmed PRs) and capacity limits concern every environment,
/// so they want the full view.
pub fn read_for(
    store: &mut dyn EnvStore,
    config: &Config,
    prs: &[PullRequest],
    now: DateTime<Utc>,
    opts: &SyncOptions,
) -> Result<RepoView> {
    read_deciding(store, config, now, opts, &mut |settled| {
        Ok(numbers_to_decide(config, settled, prs, now))
    })
}

/// The numbers of the PRs of `prs` a run against `settled` decides ([`prints::to_decide`]).
fn numbers_to_decide(config: &Config, settled: &Settled, prs: &[PullRequest], now: DateTime<Utc>) -> Vec<u64> {
    match prints::to_decide(config, settled, prs, now) {
        Some(changed) => changed.iter().map(|pr| pr.number).collect(),
        None => prs.iter().map(|pr| pr.number).collect(),
    }
}

/// [`read_for`] a listing ([`Listing`]): against a settled tree whose fingerprints hold now, the
/// elements they know are left unread, and the view is read for the PRs that changed among the
/// rest. Gives the view, the listing and the PRs built for it: every PR, unless the view is
/// partial.
///
/// `listing` is called once, when the listing is first needed: after the branch's tip and what
/// the memory knows of its tree are read, so a listing split on another thread is waited for as
/// late as can be.
pub fn read_listed(
    store: &mut dyn EnvStore,
    config: &Config,
    listing: impl FnOnce() -> Result<Listing>,
    now: DateTime<Utc>,
    opts: &SyncOptions,
) -> Result<(RepoView, Listing, Read)> {
    let mut pending = Some(listing);
    let mut got: Option<Listing> = None;
    let mut read = None;
    let view = read_deciding(store, config, now, opts, &mut |settled| {
        let listing = match got {
            Some(ref listing) => listing,
            None => got.insert(pending.take().expect("a store asks for the PRs to decide once a read")()?),
        };
        // A few elements are built: knowing them by their bytes would cost more (an index of
        // every fingerprinted PR) than it saves.
        let known = if listing.len() > PARTIAL_MAX_PRS {
            prints::known_elements(config, settled, now)
        } else {
            Default::default()
        };
        let built = read.insert(listing.read(&known)?);
        Ok(numbers_to_decide(config, settled, &built.prs, now))
    })?;
    let listing = match (got, pending) {
        (Some(listing), _) => listing,
        (None, Some(listing)) => listing()?,
        // Taken only by a call that failed, whose failure `read_deciding` gave back.
        (None, None) => unreachable!("a listing that failed to read was reported"),
    };
    let read = match read {
        Some(read) if view.settled.is_some() || read.unread == 0 => read,
        _ => listing.every()?,
    };
    Ok((view, listing, read))
}

/// The view for a run whose PRs to decide, against a settled tree, `to_decide` gives: partial
/// when they are a few (see [`read_for`]).
fn read_deciding(
    store: &mut dyn EnvStore,
    config: &Config,
    now: DateTime<Utc>,
    opts: &SyncOptions,
    to_decide: &mut dyn FnMut(&Settled) -> Result<Vec<u64>>,
) -> Result<RepoView> {
    let evidence = &opts.evidence;
    if !evidence.unconfirmed.is_empty() || !evidence.closed_by_operator.is_empty() || config.capacity.limited() {
        return store.read();
    }
    let mut decide = None;
    let mut failed = None;
    let mut names = |settled: &Settled| {
        let numbers = to_decide(settled).map_err(|e| failed = Some(e)).ok()?;
        if numbers.len() > PARTIAL_MAX_PRS {
            return None;
        }
        let names = numbers
            .iter()
            .filter_map(|pr| EnvName::new(&config.project_id, *pr).ok())
            .map(|env| env.as_str().to_string())
            .collect::<BTreeSet<String>>();
        decide = Some(numbers.into_iter().collect());
        Some(names)
    };
    let mut view = store.read_settled(&config.project_id, &config.render_digest(), &mut names, now)?;
    if let Some(e) = failed {
        return Err(e);
    }
    if view.settled.is_some() {
        view.decide = decide.map(Arc::new);
        tracing::debug!(
            envs = view.envs.len(),
            "the tree read is settled: read only the environments of the PRs to decide"
        );
    }
    Ok(view)
}

/// The PRs a sync decides from.
pub enum Prs<'a> {
    /// Every PR of the snapshot.
    All(&'a [PullRequest]),
    /// A listing read for the view ([`read_listed`]): the PRs built for it, and the listing, to
    /// build every PR when a full view is read instead (a plan that changes which environments
    /// exist, or a lost race).
    Listed(&'a Listing, Read),
}

impl<'a> From<&'a [PullRequest]> for Prs<'a> {
    fn from(prs: &'a [PullRequest]) -> Prs<'a> {
        Prs::All(prs)
    }
}

impl<'a> From<&'a Vec<PullRequest>> for Prs<'a> {
    fn from(prs: &'a Vec<PullRequest>) -> Prs<'a> {
        Prs::All(prs)
    }
}

impl Prs<'_> {
    /// The PRs to plan against `view`, with the elements they were built from (of a listing).
    fn for_view(&mut self, view: &RepoView) -> Result<(&[PullRequest], Option<&Elements>)> {
        match self {
            Prs::All(prs) => Ok((prs, None)),
            Prs::Listed(listing, read) => {
                if view.settled.is_none() && read.unread > 0 {
                    *read = listing.every()?;
                }
                Ok((&read.prs, Some(&read.elements)))
            }
        }
    }
}

/// [`prepare`] with the PRs `prs` gives for `view`; of a listing, the fingerprints the run leaves
/// learn the element each PR was built from.
#[allow(clippy::too_many_arguments, reason = "the inputs of one run, each distinct")]
fn prepare_given(
    view: &RepoView,
    verified: &dyn Verifications,
    config: &Config,
    prs: &mut Prs<'_>,
    now: DateTime<Utc>,
    opts: &SyncOptions,
    credentials: &mut dyn CredentialMaker,
) -> Result<Desired> {
    let (prs, elements) = prs.for_view(view)?;
    let mut prepared = prepare(view, verified, config, prs, now, opts, credentials)?;
    if let (Some(prints), Some(elements)) = (prepared.settled.as_mut().and_then(|s| s.prints.as_mut()), elements) {
        prints::learn_elements(config, Arc::make_mut(prints), prs, elements);
    }
    Ok(prepared)
}

/// Makes the branch match the desired state: one commit when something changed, none otherwise.
/// `view` is what the caller read (and listed PRs for); a publish that loses a race reads again,
/// re-plans on the new tip and tries again, with backoff.
#[allow(clippy::too_many_arguments, reason = "the inputs of one run, each distinct")]
pub fn sync<'a>(
    store: &mut dyn EnvStore,
    mut view: RepoView,
    config: &Config,
    prs: impl Into<Prs<'a>>,
    now: DateTime<Utc>,
    opts: &SyncOptions,
    credentials: &mut dyn CredentialMaker,
) -> Result<SyncOutcome> {
    let mut prs = prs.into();
    let max = config.sync.max_attempts;
    for attempt in 1..=max {
        let span = tracing::info_span!("sync", attempt, repo = %store.display());
        let _guard = span.enter();
        if attempt > 1 {
            view = store.read()?;
        }
        let mut prepared = prepare_given(&view, store.verifications(), config, &mut prs, now, opts, credentials)?;
        if view.settled.is_some() && !desired::fits_partial_view(&prepared.plan) {
            tracing::debug!("the plan changes which environments exist: planning again against a full view");
            view = store.read()?;
            prepared = prepare_given(&view, store.verifications(), config, &mut prs, now, opts, credentials)?;
        }
        let mut outcome = SyncOutcome {
            repo: store.display().to_string(),
            branch: store.branch().to_string(),
            files: FileCounts::of(&prepared.changes),
            plan: prepared.plan,
            changes: prepared.changes,
            commit: None,
            base: view.tip.as_ref().map(ToString::to_string),
            attempts: attempt,
            unconfirmed: opts.evidence.unconfirmed.clone(),
            strays: prepared.strays,
            held: prepared.held,
        };
        if outcome.changes.is_empty() {
            tracing::info!("nothing changed; no commit");
            if let (Some(tip), Some(settled)) = (&view.tip, &prepared.settled) {
                store.settle(tip, settled);
            }
            store.learn(&prepared.verified);
            return Ok(outcome);
        }
        let change = Change {
            upserts: prepared.upserts,
            removals: outcome.changes.removed.iter().cloned().collect(),
            message: desired::commit_message(&outcome.plan, &outcome.changes),
        };
        let published = store.publish(&view, &change)?;
        if let (Published::Done(commit), Some(settled)) = (&published, &prepared.settled) {
            store.settle(commit, settled);
        }
        // Facts about content, true whether or not this commit landed.
        store.learn(&prepared.verified);
        match published {
            Published::Done(commit) => {
                tracing::info!(commit = %commit, files = outcome.changes.len(), "published");
                outcome.commit = Some(commit.to_string());
                return Ok(outcome);
            }
            Published::Rejected => {
                tracing::info!("branch moved under us; re-planning on the new tip");
                backoff(attempt);
            }
        }
    }
    Err(Error::Contention {
        repo: store.display().to_string(),
        branch: store.branch().to_string(),
        attempts: max,
    })
}

/// What a rewrap did.
#[derive(Debug, Serialize)]
pub struct Rewrapped {
    pub repo: String,
    pub branch: String,
    /// Environment secrets found.
    pub checked: usize,
    /// Secrets whose data key was re-encrypted.
    pub rewrapped: usize,
    pub commit: Option<String>,
}

/// Re-encrypts the data key of every environment secret whose recipients differ from
/// `secrets.age_recipients`, in one commit; values, MAC and timestamps stay as they are.
pub fn rewrap(store: &mut dyn EnvStore, config: &Config, identities: &[age::x25519::Identity]) -> Result<Rewrapped> {
    let mut wanted = config.secrets.age_recipients.clone();
    wanted.sort();
    let file = secret_file(config);
    for attempt in 1..=config.sync.max_attempts {
        let view = store.read()?;
        let mut done = Rewrapped {
            repo: store.display().to_string(),
            branch: store.branch().to_string(),
            checked: 0,
            rewrapped: 0,
            commit: None,
        };
        let mut upserts = Tree::new();
        // Only this project's secrets: another project's are encrypted for its own recipients.
        let secrets: Vec<String> = view
            .envs_of(&config.project_id)
            .filter(|(_, entry)| entry.file(file).is_some())
            .map(|(env, _)| format!("{}/{file}", crate::model::layout::env_dir(env.as_str())))
            .collect();
        for path in &secrets {
            done.checked += 1;
            let bytes = store.read_file(&view, path)?.unwrap_or_default();
            if let Some(rewrapped) = rewrap_one(path, &bytes, &wanted, config, identities)? {
                upserts.insert(path.as_str(), rewrapped)?;
                done.rewrapped += 1;
            }
        }
        if upserts.is_empty() {
            return Ok(done);
        }
        let mut message = format!(
            "prenv: re-encrypt {} secrets for {} age recipients\n\n",
            done.rewrapped,
            wanted.len()
        );
        for path in upserts.paths() {
            message.push_str(&format!("rewrap {path}\n"));
        }
        let change = Change {
            upserts,
            removals: Vec::new(),
            message,
        };
        match store.publish(&view, &change)? {
            Published::Done(commit) => {
                done.commit = Some(commit.to_string());
                return Ok(done);
            }
            Published::Rejected => backoff(attempt),
        }
    }
    Err(Error::Contention {
        repo: store.display().to_string(),
        branch: store.branch().to_string(),
        attempts: config.sync.max_attempts,
    })
}

/// One secret's file re-encrypted for `wanted` (sorted), or `None` when it already is.
fn rewrap_one(
    path: &str,
    bytes: &[u8],
    wanted: &[String],
    config: &Config,
    identities: &[age::x25519::Identity],
) -> Result<Option<String>> {
    let fail = |e: sops::SopsError| Error::Secrets {
        what: format!("rewrapping {path}"),
        source: Box::new(e),
    };
    let doc = sops::parse_yaml(&String::from_utf8_lossy(bytes)).map_err(fail)?;
    let mut current = sops::recipients(&doc);
    current.sort();
    if current == wanted {
        return Ok(None);
    }
    let rewrapped = sops::rewrap(&doc, identities, &config.secrets.age_recipients).map_err(fail)?;
    Ok(Some(crate::manifests::yaml::to_string(&rewrapped)?))
}

/// Waits before the next attempt: exponential backoff with full jitter, so racing writers spread out.
pub fn backoff(attempt: u32) {
    let cap = BACKOFF_START.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
    let seed = getrandom::u64().unwrap_or(u64::from(std::process::id()));
    let jitter = seed % (cap.as_micros() as u64 + 1);
    std::thread::sleep(Duration::from_micros(jitter));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ports::memory::MemoryStore;
    use crate::model::meta::EnvMeta;
    use crate::model::pr::{PrState, PullRequest};

    /// Credentials that are easy to recognise, counted.
    struct Numbered(u32);

    impl CredentialMaker for Numbered {
        fn mariadb_credentials(&mut self, meta: &EnvMeta, _now: DateTime<Utc>) -> Result<Vec<u8>> {
            self.0 += 1;
            Ok(format!("credentials {} of {}\n", self.0, meta.env).into_bytes())
        }
    }

    fn config() -> Config {
        Config::parse(
            "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = [\"mariadb\"]\n[secrets]\nage_recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n[sync]\nmax_attempts = 3\n",
            "test",
        )
        .unwrap()
    }

    fn pr(n: u64, sha: char) -> PullRequest {
        PullRequest {
            number: n,
            state: PrState::Open,
            draft: false,
            title: "t".into(),
            labels: vec![],
            head_sha: sha.to_string().repeat(40),
            head_ref: format!("f/{n}"),
            head_repo: Some("acme/shop".into()),
            base_repo: Some("acme/shop".into()),
            author: None,
            closed_at: None,
            merged_at: None,
            updated_at: "2026-11-24T10:00:00Z".parse().unwrap(),
            created_at: None,
            trigger: None,
        }
    }

    fn closed(n: u64) -> PullRequest {
        PullRequest {
            state: PrState::Closed,
            closed_at: Some("2026-11-24T11:00:00Z".parse().unwrap()),
            ..pr(n, 'a')
        }
    }

    fn run(store: &mut MemoryStore, prs: &[PullRequest], creds: &mut Numbered) -> Result<SyncOutcome> {
        let view = store.read()?;
        let now = "2026-11-24T12:00:00Z".parse().unwrap();
        sync(store, view, &config(), prs, now, &SyncOptions::default(), creds)
    }

    fn envs(store: &MemoryStore) -> Vec<String> {
        let tree = store.tip_tree();
        crate::core::diff::existing_envs(&tree)
            .keys()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn sync_flows_against_an_in_memory_repository() {
        // (what happens, PRs before, PRs now, environments after, commits made by the second run)
        type Row = (
            &'static str,
            Vec<PullRequest>,
            Vec<PullRequest>,
            &'static [&'static str],
            usize,
        );
        let table: Vec<Row> = vec![
            (
                "nothing changed, nothing committed",
                vec![pr(1, 'a')],
                vec![pr(1, 'a')],
                &["shop-pr-1"],
                0,
            ),
            (
                "a new commit updates in one commit",
                vec![pr(1, 'a')],
                vec![pr(1, 'b')],
                &["shop-pr-1"],
                1,
            ),
            (
                "a closed PR is pruned",
                vec![pr(1, 'a'), pr(2, 'a')],
                vec![pr(1, 'a'), closed(2)],
                &["shop-pr-1"],
                1,
            ),
            (
                "a PR missing from the snapshot is kept",
                vec![pr(1, 'a'), pr(2, 'a')],
                vec![pr(1, 'a')],
                &["shop-pr-1", "shop-pr-2"],
                0,
            ),
            (
                "a new PR is created",
                vec![pr(1, 'a')],
                vec![pr(1, 'a'), pr(3, 'c')],
                &["shop-pr-1", "shop-pr-3"],
                1,
            ),
        ];
        for (name, before, now, want, commits) in table {
            let mut store = MemoryStore::new();
            let mut creds = Numbered(0);
            run(&mut store, &before, &mut creds).unwrap();
            let first = store.commits.len();
            let outcome = run(&mut store, &now, &mut creds).unwrap();
            assert_eq!(envs(&store), *want, "{name}");
            assert_eq!(store.commits.len() - first, commits, "{name}");
            assert_eq!(outcome.commit.is_some(), commits == 1, "{name}");
        }
    }

    #[test]
    fn credentials_are_made_once_and_kept_byte_for_byte() {
        let mut store = MemoryStore::new();
        let mut creds = Numbered(0);
        run(&mut store, &[pr(1, 'a')], &mut creds).unwrap();
        run(&mut store, &[pr(1, 'b')], &mut creds).unwrap();
        assert_eq!(creds.0, 1, "a new commit must not regenerate the credentials");
        let file = store
            .tip_tree()
            .get("environments/shop-pr-1/mariadb-credentials.sops.yaml")
            .map(<[u8]>::to_vec);
        assert_eq!(file.as_deref(), Some(&b"credentials 1 of shop-pr-1\n"[..]));
    }

    #[test]
    fn a_lost_race_is_replanned_on_the_new_tip_and_keeps_the_other_writers_work() {
        let mut store = MemoryStore::new();
        let mut creds = Numbered(0);
        run(&mut store, &[pr(1, 'a')], &mut creds).unwrap();
        let mut once = true;
        store.interloper = Some(Box::new(move |tip| {
            let mut theirs = tip.clone();
            theirs.insert("README.md", "someone else's commit\n").unwrap();
            std::mem::take(&mut once).then_some(theirs)
        }));
        let outcome = run(&mut store, &[pr(1, 'a'), pr(2, 'b')], &mut creds).unwrap();
        assert_eq!(outcome.attempts, 2);
        assert_eq!(envs(&store), ["shop-pr-1", "shop-pr-2"]);
        assert!(
            store.tip_tree().get("README.md").is_some(),
            "the other writer's file survived"
        );
    }

    #[test]
    fn writers_that_never_stop_end_in_a_clear_contention_error() {
        let mut store = MemoryStore::new();
        store.interloper = Some(Box::new(|tip| {
            let mut theirs = tip.clone();
            let n = theirs.len();
            theirs.insert(format!("noise/{n}"), "x").unwrap();
            Some(theirs)
        }));
        let e = run(&mut store, &[pr(1, 'a')], &mut Numbered(0)).unwrap_err();
        assert_eq!(e.metric_label(), "contention");
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
    }

    #[test]
    fn the_breaker_stops_a_mass_prune_before_anything_is_written() {
        let mut store = MemoryStore::new();
        let open: Vec<_> = (1..=10).map(|n| pr(n, 'a')).collect();
        run(&mut store, &open, &mut Numbered(0)).unwrap();
        let commits = store.commits.len();
        let all_closed: Vec<_> = (1..=10).map(closed).collect();
        let e = run(&mut store, &all_closed, &mut Numbered(0)).unwrap_err();
        assert_eq!(e.metric_label(), "mass_prune");
        assert_eq!(store.commits.len(), commits);
        assert_eq!(envs(&store).len(), 10);
    }
}
