//! The lifecycle decision: which environments should exist, as a pure function of
//! (config, PR snapshot, environments that exist now, the time). Nothing here reads a clock or a disk.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Serialize;

use crate::model::config::{self, Config};
use crate::model::meta::{EnvMeta, GENERATOR, ImageWait, META_SCHEMA, belongs_to};
use crate::model::naming::{self, EnvName};
use crate::model::pr::{PrState, PullRequest};

use super::capacity;
use super::eligible;
use super::ports::{Blocked, EnvEntry, ImageFact, ImageFacts, NoMemory, RepoView, Verifications};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new environment.
    Create,
    /// An existing environment gets a new commit or new settings.
    Update,
    /// Nothing to change.
    Keep,
    /// A closed PR's environment is kept because of the pin label, until a deadline.
    Pin,
    /// A new environment waits for room in the cluster (`[capacity]`), or moves in the queue: its
    /// files are written with its wiring suspended, so nothing of it runs yet.
    Queue,
    /// The environment is removed: its PR is confirmed closed (and not pinned) or no longer eligible.
    Prune,
    /// No environment, none wanted.
    Skip,
    /// The environment's path holds something prenv must not touch (not prenv's, or prenv's but
    /// unreadable): nothing is written or removed there, and the reason says what to do.
    Blocked,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    /// The word `prenv plan` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Keep => "keep",
            Action::Pin => "pin",
            Action::Queue => "queue",
            Action::Prune => "prune",
            Action::Skip => "skip",
            Action::Blocked => "blocked",
        }
    }
}

/// One decision, with the reason a person reads in `prenv plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub pr: u64,
    /// The environment name, or what it would have been when it is not a valid name.
    pub env: String,
    pub action: Action,
    /// Borrowed where it is the same for every environment it is said of: a sync of one PR keeps
    /// thousands, and their reasons were 10,000 allocations of their own.
    pub reason: Cow<'static, str>,
    /// The environment as it should be after this run; `None` for prune and skip. Boxed: a plan
    /// of 10,000 environments is sorted, and moving decisions of hundreds of bytes each cost more
    /// than the rest of an incremental sync's plan.
    #[serde(skip)]
    pub desired: Option<Box<EnvMeta>>,
}

/// Every decision of one run, ordered by PR number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// How full the cluster is once the plan is applied; `None` without a `[capacity]` limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<capacity::Usage>,
    /// Environments kept as they are without a decision of their own: a partial view left them
    /// out because the tree it read is settled (see [`super::ports::Settled`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub settled: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Plan {
    /// The environments that should exist after this run.
    pub fn desired(&self) -> impl Iterator<Item = &EnvMeta> {
        self.decisions.iter().filter_map(|d| d.desired.as_deref())
    }

    pub fn count(&self, action: Action) -> usize {
        self.decisions.iter().filter(|d| d.action == action).count()
    }

    /// The decisions that change something (not keep, not skip), for messages.
    pub fn changing(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| !matches!(d.action, Action::Keep | Action::Skip | Action::Blocked))
    }

    /// True when applying the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.decisions
            .iter()
            .all(|d| matches!(d.action, Action::Keep | Action::Skip | Action::Blocked))
    }
}

/// What is known about PRs beyond the snapshot itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// PRs with an environment whose state the source could not confirm, and why: kept, and said so.
    pub unconfirmed: BTreeMap<u64, String>,
    /// PRs missing from the snapshot that the operator declares closed (`--confirm-closed N`):
    /// the operator's word is the evidence, and their environments are pruned.
    pub closed_by_operator: BTreeSet<u64>,
    /// What the registry said about the images of the heads that would change (see
    /// [`images_to_check`]); an image not named here counts as present.
    pub images: ImageFacts,
}

/// Whether a PR should have an environment, and why not when it should not.
enum Want {
    Deploy { preserve_until: Option<DateTime<Utc>> },
    Absent(String),
}

/// Decides, for every PR in the snapshot and every environment that exists, what happens in this run.
/// Environments whose PR is missing from the snapshot are kept: only positive evidence prunes.
pub fn plan(config: &Config, prs: &[PullRequest], existing: &BTreeMap<EnvName, EnvMeta>, now: DateTime<Utc>) -> Plan {
    let view = RepoView {
        envs: existing.clone().into_iter().collect(),
        ..RepoView::default()
    };
    plan_with(config, prs, &view, now, &Evidence::default())
}

/// [`plan`] against everything a repository read found (blocked names, wiring whose directory is
/// gone), with what is known beyond the snapshot: PRs that could not be confirmed, and PRs the
/// operator declared closed.
pub fn plan_with(
    config: &Config,
    prs: &[PullRequest],
    view: &RepoView,
    now: DateTime<Utc>,
    evidence: &Evidence,
) -> Plan {
    plan_knowing(config, prs, view, now, evidence, &NoMemory)
}

/// [`plan_with`], knowing which environment contents earlier runs verified: an environment the
/// snapshot does not mention, whose content is verified as rendered with the current settings and
/// whose pin (if any) holds, is kept as it is without decoding its metadata, so a run over
/// thousands of environments costs what changed.
pub fn plan_knowing(
    config: &Config,
    prs: &[PullRequest],
    view: &RepoView,
    now: DateTime<Utc>,
    evidence: &Evidence,
    verified: &dyn Verifications,
) -> Plan {
    let mut decisions = Vec::with_capacity(prs.len() + view.envs.len());
    let mut seen: rustc_hash::FxHashSet<String> = rustc_hash::FxHashSet::default();
    seen.reserve(prs.len());
    let digest = config.render_digest();
    // With a capacity limit every environment's place in the queue matters, so none is kept
    // undecoded while it is queued: a queued one may be the next to be created.
    let limited = config.capacity.limited();
    for pr in prs {
        let decision = hold_for_image(decide(config, &digest, pr, view, now), view, &evidence.images, now);
        seen.insert(decision.env.clone());
        tracing::debug!(pr = pr.number, env = %decision.env, action = %decision.action, reason = %decision.reason, "decided");
        decisions.push(decision);
    }
    // Another project's environments are not this run's: not kept, not rendered, not counted.
    let mut own: Vec<(&EnvName, &EnvEntry)> = view
        .envs
        .entries()
        .filter(|(env, entry)| !seen.contains(env.as_str()) && entry.belongs_to(env.as_str(), &config.project_id))
        .collect();
    // In the plan's order before they become decisions: sorting these pairs is a fraction of
    // sorting 10,000 decisions, and the sort of all of them below then only merges sorted runs.
    own.sort_unstable_by(|a, b| a.1.pr.cmp(&b.1.pr).then_with(|| a.0.cmp(b.0)));
    for (env, entry) in own {
        let settled = *entry.render_digest == *digest
            && verified.knows_entry(entry)
            && entry.preserve_until.is_none_or(|until| now < until)
            && !evidence.closed_by_operator.contains(&entry.pr)
            && (!limited || entry.meta().is_ok_and(|m| !m.is_queued()));
        let decision = if settled {
            decision(
                entry.pr,
                // Not `to_string`: through the formatter it cost as much as the rest of a decision.
                env.as_str().to_owned(),
                Action::Keep,
                kept_unseen(entry.pr, evidence),
                None,
            )
        } else {
            match entry.meta() {
                Ok(meta) => unseen(config, &digest, env, meta, now, evidence),
                Err(error) => blocked(entry.pr, env.as_str(), &forgotten(env.as_str(), error)),
            }
        };
        decisions.push(decision);
    }
    for (env, why) in view.blocked.iter().filter(|(env, _)| !seen.contains(*env)) {
        if let Some(pr) = pr_of(config, env) {
            decisions.push(blocked(pr, env, why));
        }
    }
    for env in view.wired_only.iter().filter(|env| !seen.contains(env.as_str())) {
        if let Some(pr) = pr_of(config, env.as_str()) {
            let reason = format!(
                "its directory is gone but its wiring is listed; PR #{pr} is not in the snapshot, so both are left as they are"
            );
            decisions.push(decision(pr, env.to_string(), Action::Keep, reason, None));
        }
    }
    let decisions = in_order(decisions);
    let mut plan = Plan {
        decisions,
        ..Plan::default()
    };
    capacity::admit(config, &mut plan, view, now);
    plan
}

/// The decisions ordered by PR number, then environment name.
fn in_order(mut decisions: Vec<Decision>) -> Vec<Decision> {
    decisions.sort_by(|a, b| a.pr.cmp(&b.pr).then_with(|| a.env.cmp(&b.env)));
    decisions
}

fn decision(
    pr: u64,
    env: String,
    action: Action,
    reason: impl Into<Cow<'static, str>>,
    desired: Option<EnvMeta>,
) -> Decision {
    Decision {
        pr,
        env,
        action,
        reason: reason.into(),
        desired: desired.map(Box::new),
    }
}

fn blocked(pr: u64, env: &str, why: &Blocked) -> Decision {
    decision(pr, env.to_string(), Action::Blocked, why.explain(env), None)
}

/// The PR number of environment `env` when it is this project's (`{project_id}-pr-{number}`).
pub fn pr_of(config: &Config, env: &str) -> Option<u64> {
    naming::pr_of(&config.project_id, env)
}

/// An existing environment whose PR the snapshot does not mention.
fn unseen(
    config: &Config,
    digest: &str,
    env: &EnvName,
    meta: &EnvMeta,
    now: DateTime<Utc>,
    evidence: &Evidence,
) -> Decision {
    let pr = meta.pr;
    if evidence.closed_by_operator.contains(&pr) {
        let why = format!("PR #{pr} is not in the snapshot and the operator confirmed it closed (--confirm-closed)");
        return decision(pr, env.to_string(), Action::Prune, why, None);
    }
    if let Some(until) = meta.preserve_until.filter(|until| now >= *until) {
        let why = format!("pinned after its PR closed; the pin expired at {}", rfc3339(until));
        return decision(pr, env.to_string(), Action::Prune, why, None);
    }
    let desired = match kept_meta(config, digest, env, meta) {
        Ok(desired) => desired,
        Err(error) => {
            let why = Blocked::Unreadable {
                file: crate::model::layout::meta_path(env.as_str()),
                error,
            };
            return blocked(pr, env.as_str(), &why);
        }
    };
    let (action, reason) = if &desired == meta {
        (Action::Keep, kept_unseen(pr, evidence))
    } else {
        (
            Action::Update,
            format!("{}, so it is kept; settings changed", missing(pr, evidence)).into(),
        )
    };
    decision(pr, env.to_string(), action, reason, Some(desired))
}

/// Why PR `pr` is not in the snapshot, in words.
fn missing(pr: u64, evidence: &Evidence) -> String {
    match evidence.unconfirmed.get(&pr) {
        Some(why) => format!("PR #{pr} cannot be confirmed ({why})"),
        None => format!("PR #{pr} is not in the snapshot"),
    }
}

/// Why an environment whose PR is not in the snapshot is kept as it is. Said of thousands of
/// environments in a sync of one PR: the common case names no number (the decision carries it),
/// so it is one text for all of them.
fn kept_unseen(pr: u64, evidence: &Evidence) -> Cow<'static, str> {
    const KEPT: &str = ": no evidence it closed, so it is kept";
    match evidence.unconfirmed.get(&pr) {
        Some(_) => Cow::Owned(format!("{}{KEPT}", missing(pr, evidence))),
        None => Cow::Borrowed("not in the snapshot: no evidence it closed, so it is kept"),
    }
}

/// An environment whose metadata the store remembered but cannot decode: kept as it is.
fn forgotten(env: &str, error: &str) -> Blocked {
    Blocked::Unreadable {
        file: crate::model::layout::meta_path(env),
        error: format!(
            "what prenv remembered of it does not decode: {error}; remove prenv's cache directory to read it again"
        ),
    }
}

/// The metadata of an environment kept without its PR in the snapshot. Nothing of the recorded file
/// is trusted that can be derived: name, namespace, URL, image, databases and the PR number come
/// from the directory's name and the config; only what prenv alone knows (what was deployed, when
/// it was created, the pin) is read back, and checked.
fn kept_meta(config: &Config, digest: &str, env: &EnvName, recorded: &EnvMeta) -> Result<EnvMeta, String> {
    let pr = pr_of(config, env.as_str())
        .ok_or_else(|| format!("{env} is not an environment of project {}", config.project_id))?;
    if recorded.pr != pr {
        return Err(format!("it says PR #{}, but the directory is PR #{pr}'s", recorded.pr));
    }
    let sha = &recorded.head_sha;
    if !is_sha(sha) {
        return Err(format!("its head_sha {sha:?} is not a commit SHA"));
    }
    if let (Some(until), Some(closed)) = (recorded.preserve_until, recorded.closed_at)
        && until > closed + Duration::hours(i64::from(config::PIN_HOURS_MAX))
    {
        return Err(format!(
            "its pin lasts until {}, beyond the {}-hour limit",
            rfc3339(until),
            config::PIN_HOURS_MAX
        ));
    }
    let tag = config::render_tag(&config.tag_template, pr, sha, &recorded.head_ref);
    Ok(EnvMeta {
        generator: GENERATOR.into(),
        schema: META_SCHEMA,
        env: env.clone(),
        namespace: env.to_string(),
        pr,
        head_sha: sha.clone(),
        head_ref: recorded.head_ref.clone(),
        url: env_url(config, env),
        image: image_of(config, &tag),
        databases: config.databases.clone(),
        created_at: recorded.created_at,
        closed_at: recorded.closed_at.filter(|_| recorded.preserve_until.is_some()),
        merged: recorded.merged && recorded.preserve_until.is_some(),
        preserve_until: recorded.preserve_until,
        render_digest: digest.to_string(),
        pr_updated_at: recorded.pr_updated_at,
        committed_at: recorded.committed_at.filter(|t| *t >= recorded.created_at),
        eligible_at: recorded.eligible_at,
        waiting_for: recorded.waiting_for.clone().filter(|w| is_sha(&w.sha)),
        project: recorded.project.clone(),
        queued: recorded.queued.clone(),
    })
}

/// The decision for one PR against what the repository holds. Longer than most functions: the
/// guards (ownership, rollback) and the lifecycle match read best as one sequence.
fn decide(config: &Config, digest: &str, pr: &PullRequest, view: &RepoView, now: DateTime<Utc>) -> Decision {
    let env = match EnvName::new(&config.project_id, pr.number) {
        Ok(env) => env,
        Err(e) => {
            let name = format!("{}{}{}", config.project_id, naming::ENV_INFIX, pr.number);
            return decision(pr.number, name, Action::Skip, format!("cannot be deployed: {e}"), None);
        }
    };
    if let Some(why) = view.blocked.get(env.as_str()) {
        return blocked(pr.number, env.as_str(), why);
    }
    let prior = match view.envs.entry(env.as_str()).map(|e| e.meta()) {
        Some(Err(error)) => return blocked(pr.number, env.as_str(), &forgotten(env.as_str(), error)),
        Some(Ok(meta)) => Some(meta),
        None => None,
    };
    if let Some(p) = prior.filter(|p| !belongs_to(p, &config.project_id)) {
        let other = p.project.as_deref().unwrap_or("another project");
        let why = Blocked::NotPrenvs(format!("prenv's, but its prenv.json names project {other:?}"));
        return blocked(pr.number, env.as_str(), &why);
    }
    // Information older than what produced the environment never changes it (a slow resync, a late
    // sync with an older snapshot): the environment stays as the newer information left it.
    if let Some(p) = prior
        && p.pr_updated_at.is_some_and(|deployed| pr.updated_at < deployed)
    {
        let desired = match kept_meta(config, digest, &env, p) {
            Ok(desired) => desired,
            Err(error) => {
                return blocked(
                    pr.number,
                    env.as_str(),
                    &Blocked::Unreadable {
                        file: crate::model::layout::meta_path(env.as_str()),
                        error,
                    },
                );
            }
        };
        let why = format!(
            "the snapshot's PR #{} (updated {}) is older than what deployed it ({}); kept",
            pr.number,
            rfc3339(pr.updated_at),
            p.pr_updated_at.map(rfc3339).unwrap_or_default()
        );
        let action = if &desired == p { Action::Keep } else { Action::Update };
        return decision(pr.number, env.to_string(), action, why, Some(desired));
    }
    let wired = view.wired_only.contains(&env);
    match (want(config, pr, now), prior) {
        (Want::Absent(why), Some(_)) => decision(pr.number, env.to_string(), Action::Prune, why, None),
        (Want::Absent(why), None) if wired => {
            let why = format!("{why}; its directory was already gone, its wiring goes now");
            decision(pr.number, env.to_string(), Action::Prune, why, None)
        }
        (Want::Absent(why), None) => decision(pr.number, env.to_string(), Action::Skip, why, None),
        (Want::Deploy { preserve_until }, prior) => {
            let created_at = prior.map_or(now, |p| p.created_at.min(now));
            let mut meta = env_meta(config, digest, pr, env.clone(), created_at, preserve_until);
            // A new head is committed now; the same head keeps the time it was first committed.
            meta.committed_at = match prior {
                Some(p) if p.head_sha == meta.head_sha => p.committed_at.map(|t| t.min(now)),
                _ => Some(now),
            };
            // When the PR became deployable: recorded once, when its environment is created.
            meta.eligible_at = match prior {
                Some(p) => p.eligible_at,
                None => eligible::eligible_at(
                    pr,
                    pr.is_fork(config.github.repository.as_deref()),
                    &config.lifecycle,
                    now,
                ),
            };
            // Only a change worth a commit records a newer PR time: a title edit commits nothing.
            // Nor does metadata written before it named its project gain the name by itself.
            // (Compared in place: a copy of the metadata per PR was a tenth of a listing's plan.)
            if let Some(p) = prior {
                let own = (meta.pr_updated_at, meta.project.take());
                meta.pr_updated_at = p.pr_updated_at;
                meta.project = p.project.clone();
                if meta != *p {
                    (meta.pr_updated_at, meta.project) = own;
                }
            }
            let (action, mut reason) = classify(pr, &meta, prior);
            if wired && prior.is_none() {
                reason = format!("{reason}; its directory was gone, so it is written again");
            }
            decision(pr.number, env.to_string(), action, reason, Some(meta))
        }
    }
}

fn want(config: &Config, pr: &PullRequest, now: DateTime<Utc>) -> Want {
    let lc = &config.lifecycle;
    match pr.state {
        PrState::Open if pr.draft && !lc.deploy_drafts => {
            Want::Absent("draft PR (lifecycle.deploy_drafts = false); mark it ready for review to deploy".into())
        }
        PrState::Open
            if pr.is_fork(config.github.repository.as_deref()) && !lc.deploy_forks && !pr.has_label(&lc.fork_label) =>
        {
            let from = pr.head_repo.as_deref().unwrap_or("a deleted repository");
            Want::Absent(format!(
                "PR from fork {from} (lifecycle.deploy_forks = false); a maintainer adds the label `{}` after review to deploy it",
                lc.fork_label
            ))
        }
        PrState::Open => Want::Deploy { preserve_until: None },
        PrState::Closed => {
            // Parsing guarantees closed PRs carry closed_at; fall back to the update time regardless.
            let closed_at = pr.closed_at.unwrap_or(pr.updated_at);
            let how = if pr.merged_at.is_some() { "merged" } else { "closed" };
            if pr.has_label(&lc.pin_label) {
                let until = closed_at + Duration::hours(i64::from(lc.pin_hours));
                if now < until {
                    return Want::Deploy {
                        preserve_until: Some(until),
                    };
                }
                return Want::Absent(format!(
                    "{how} at {}; pin `{}` expired at {}",
                    rfc3339(closed_at),
                    lc.pin_label,
                    rfc3339(until)
                ));
            }
            Want::Absent(format!("{how} at {}", rfc3339(closed_at)))
        }
    }
}

fn classify(pr: &PullRequest, meta: &EnvMeta, prior: Option<&EnvMeta>) -> (Action, String) {
    let pinned = |until: DateTime<Utc>| {
        format!(
            "closed at {}, pinned by label until {}",
            meta.closed_at.map(rfc3339).unwrap_or_default(),
            rfc3339(until)
        )
    };
    match (prior, meta.preserve_until) {
        (None, Some(until)) => (Action::Pin, pinned(until)),
        (None, None) => (Action::Create, format!("open PR on branch {}", pr.head_ref)),
        (Some(p), _) if p == meta => {
            let why = match meta.preserve_until {
                Some(until) => pinned(until),
                None => ["up to date at ", meta.short_sha()].concat(),
            };
            (Action::Keep, why)
        }
        (Some(p), _) if p.head_sha != meta.head_sha => (
            Action::Update,
            format!(
                "new commit {} -> {} on {}",
                p.short_sha(),
                meta.short_sha(),
                pr.head_ref
            ),
        ),
        (Some(p), Some(until)) if p.preserve_until != meta.preserve_until => (Action::Pin, pinned(until)),
        (Some(_), _) => (Action::Update, "settings changed".into()),
    }
}

/// The metadata of `pr`'s environment; `digest` is `config.render_digest()`, computed once per plan
/// (it serializes and hashes the whole config).
fn env_meta(
    config: &Config,
    digest: &str,
    pr: &PullRequest,
    env: EnvName,
    created_at: DateTime<Utc>,
    preserve_until: Option<DateTime<Utc>>,
) -> EnvMeta {
    EnvMeta {
        generator: GENERATOR.into(),
        schema: META_SCHEMA,
        namespace: env.to_string(),
        url: env_url(config, &env),
        env,
        pr: pr.number,
        head_sha: pr.head_sha.clone(),
        head_ref: pr.head_ref.clone(),
        image: head_image(config, pr),
        databases: config.databases.clone(),
        created_at,
        closed_at: preserve_until.and(pr.closed_at),
        merged: preserve_until.is_some() && pr.merged_at.is_some(),
        preserve_until,
        render_digest: digest.to_string(),
        pr_updated_at: Some(pr.updated_at),
        committed_at: None,
        eligible_at: None,
        waiting_for: None,
        project: Some(config.project_id.clone()),
        queued: None,
    }
}

/// A commit SHA as git writes it: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn is_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The image of a PR's head commit, `repository:tag`, as [`env_meta`] records it.
fn head_image(config: &Config, pr: &PullRequest) -> String {
    let tag = config::render_tag(&config.tag_template, pr.number, &pr.head_sha, &pr.head_ref);
    image_of(config, &tag)
}

/// `repository:tag` of the configured image. (Joined, not formatted: a plan of a listing makes
/// one per PR.)
fn image_of(config: &Config, tag: &str) -> String {
    [config.image.as_str(), ":", tag].concat()
}

/// The preview URL of environment `env`.
fn env_url(config: &Config, env: &EnvName) -> String {
    ["https://", env.as_str(), ".", &config.domain].concat()
}

/// The images a run must ask the registry about before planning: those of PRs that should be
/// deployed and whose environment does not run that image yet (new PRs, new heads), and those of
/// environments waiting for one. An environment already running its head's image costs no request,
/// so a sync of one changed PR among thousands asks about one image.
pub fn images_to_check(config: &Config, prs: &[PullRequest], view: &RepoView, now: DateTime<Utc>) -> BTreeSet<String> {
    prs.iter()
        .filter(|pr| matches!(want(config, pr, now), Want::Deploy { .. }))
        .filter_map(|pr| {
            let env = EnvName::new(&config.project_id, pr.number).ok()?;
            if view.blocked.contains_key(env.as_str()) {
                return None;
            }
            let image = head_image(config, pr);
            let moving = view
                .envs
                .get(env.as_str())
                // A queued environment runs nothing yet: whether its image exists decides whether
                // its app starts or is held once it leaves the queue.
                .is_none_or(|p| p.image != image || p.waiting_for.is_some() || p.is_queued());
            moving.then_some(image)
        })
        .collect()
}

/// An environment moves to a new image only once the registry has it. A decision that would move
/// it to an image the registry lacks (or could not confirm) is held instead: an existing
/// environment keeps running its previous head (image and head annotations unchanged, so nothing
/// rolls) and records the head it waits for; a new one is created with its app at zero replicas,
/// so the namespace, quota and databases are ready when the image lands and only the app starts
/// then. Once the image is there, the head moves, and keeps the time it began waiting as its start.
fn hold_for_image(d: Decision, view: &RepoView, images: &ImageFacts, now: DateTime<Utc>) -> Decision {
    let Some(meta) = d.desired.as_ref().filter(|m| m.waiting_for.is_none()) else {
        return d;
    };
    let prior = view.envs.get(meta.env.as_str());
    let waited = prior
        .and_then(|p| p.waiting_for.as_ref())
        .filter(|w| w.sha == meta.head_sha && w.image == meta.image);
    let why = match images.get(&meta.image) {
        None | Some(ImageFact::Present) => return released(d, waited),
        Some(ImageFact::Absent) => format!("waiting for image {}: the registry does not have it yet", meta.image),
        Some(ImageFact::Unknown(error)) => format!("waiting for image {}: cannot check it ({error})", meta.image),
    };
    if prior.is_some_and(|p| p.image == meta.image && !p.holds_app() && !p.is_queued()) {
        return d; // already running that image: nothing to wait for
    }
    let since = waited.map_or(now, |w| w.since);
    let wait = ImageWait {
        sha: meta.head_sha.clone(),
        image: meta.image.clone(),
        since,
    };
    let (pr, env) = (d.pr, d.env.clone());
    let Some(p) = prior.filter(|p| !p.holds_app()) else {
        // Nothing runs yet: the environment is for the new head, with the app held.
        let held = EnvMeta {
            waiting_for: Some(wait),
            ..(**meta).clone()
        };
        let same = prior == Some(&held);
        let (action, reason) = match (prior, same) {
            (None, _) => (
                d.action,
                format!(
                    "{}; {why}, so the app is held at zero replicas until it exists",
                    d.reason
                ),
            ),
            (Some(_), true) => (
                Action::Keep,
                format!("{why} (since {}); the app is held at zero replicas", rfc3339(since)),
            ),
            (Some(_), false) => (
                Action::Update,
                format!("{}; {why}, so the app stays at zero replicas", d.reason),
            ),
        };
        return decision(pr, env, action, reason, Some(held));
    };
    let mut held = EnvMeta {
        head_sha: p.head_sha.clone(),
        head_ref: p.head_ref.clone(),
        image: p.image.clone(),
        committed_at: p.committed_at,
        waiting_for: Some(wait),
        ..(**meta).clone()
    };
    // A title edit while waiting commits nothing, as in `decide`.
    if (EnvMeta {
        pr_updated_at: p.pr_updated_at,
        ..held.clone()
    }) == *p
    {
        held.pr_updated_at = p.pr_updated_at;
    }
    let (action, reason) = if held == *p {
        let why = format!("{why} (since {}); keeps running {}", rfc3339(since), p.short_sha());
        (Action::Keep, why)
    } else {
        let why = format!("{why}; keeps running {} meanwhile", p.short_sha());
        (Action::Update, why)
    };
    decision(pr, env, action, reason, Some(held))
}

/// The decision once the awaited image exists: the head moves, timed from when it began waiting.
fn released(mut d: Decision, waited: Option<&ImageWait>) -> Decision {
    if let (Some(w), Some(meta)) = (waited, d.desired.as_mut()) {
        meta.committed_at = Some(meta.committed_at.map_or(w.since, |t| t.min(w.since)));
        d.reason = format!("image {} is in the registry now: {}", w.image, d.reason).into();
    }
    d
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::ports::EnvEntry;
    use crate::model::layout::TreeId;

    pub(crate) fn config() -> Config {
        Config::parse(
            "project_id = \"shop\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\n",
            "test",
        )
        .unwrap()
    }

    pub(crate) fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    pub(crate) fn pr(number: u64) -> PullRequest {
        PullRequest {
            number,
            state: PrState::Open,
            draft: false,
            title: "t".into(),
            labels: vec![],
            head_sha: "1".repeat(40),
            head_ref: "feature/x".into(),
            head_repo: Some("acme/shop".into()),
            base_repo: Some("acme/shop".into()),
            author: None,
            closed_at: None,
            merged_at: None,
            updated_at: at("2026-11-20T10:00:00Z"),
            created_at: None,
            trigger: None,
        }
    }

    pub(crate) fn closed(mut p: PullRequest, when: &str, labels: &[&str]) -> PullRequest {
        p.state = PrState::Closed;
        p.closed_at = Some(at(when));
        p.labels = labels.iter().map(|s| s.to_string()).collect();
        p
    }

    pub(crate) const NOW: &str = "2026-11-24T12:00:00Z";

    /// The metadata a plan would give an open PR's environment created at `created_at`.
    pub(crate) fn env_meta_for(cfg: &Config, pr: &PullRequest, env: EnvName, created_at: DateTime<Utc>) -> EnvMeta {
        env_meta(cfg, &cfg.render_digest(), pr, env, created_at, None)
    }

    /// Each row: the PR, whether its environment exists already, the expected action and a reason fragment.
    #[test]
    fn lifecycle_decisions() {
        let mut draft = pr(2);
        draft.draft = true;
        let mut fork = pr(3);
        fork.head_repo = Some("stranger/shop".into());
        let mut reviewed_fork = fork.clone();
        reviewed_fork.labels = vec!["safe-to-preview".into()];
        let mut deleted_fork = pr(4);
        deleted_fork.head_repo = None;
        let mut pushed = pr(5);
        pushed.head_sha = "2".repeat(40);
        let mut merged = closed(pr(6), "2026-11-24T11:00:00Z", &[]);
        merged.merged_at = merged.closed_at;
        let table: Vec<(&str, PullRequest, bool, Action, &str)> = vec![
            (
                "open PR gets an environment",
                pr(1),
                false,
                Action::Create,
                "open PR on branch feature/x",
            ),
            (
                "open PR already deployed is kept",
                pr(1),
                true,
                Action::Keep,
                "up to date",
            ),
            (
                "new commit updates",
                pushed,
                true,
                Action::Update,
                "new commit 1111111 -> 2222222",
            ),
            ("draft is skipped", draft.clone(), false, Action::Skip, "draft"),
            ("PR turned draft is pruned", draft, true, Action::Prune, "draft"),
            ("fork is skipped", fork, false, Action::Skip, "fork stranger/shop"),
            (
                "reviewed fork is deployed",
                reviewed_fork,
                false,
                Action::Create,
                "open PR",
            ),
            (
                "deleted fork is skipped",
                deleted_fork,
                false,
                Action::Skip,
                "deleted repository",
            ),
            (
                "closed PR is pruned",
                closed(pr(7), "2026-11-24T11:00:00Z", &[]),
                true,
                Action::Prune,
                "closed at 2026-11-24T11:00:00Z",
            ),
            ("merged PR is pruned", merged, true, Action::Prune, "merged at"),
            (
                "closed PR never deployed is skipped",
                closed(pr(8), "2026-11-24T11:00:00Z", &[]),
                false,
                Action::Skip,
                "closed",
            ),
            (
                "pinned PR is kept until the deadline",
                closed(pr(9), "2026-11-23T12:00:01Z", &["preserve=true"]),
                true,
                Action::Pin,
                "until 2026-11-25T12:00:01Z",
            ),
            (
                "pin expires after 48 hours",
                closed(pr(10), "2026-11-22T12:00:00Z", &["preserve=true"]),
                true,
                Action::Prune,
                "expired at 2026-11-24T12:00:00Z",
            ),
            (
                "preserve label on an open PR changes nothing",
                {
                    let mut p = pr(11);
                    p.labels = vec!["preserve=true".into()];
                    p
                },
                false,
                Action::Create,
                "open PR",
            ),
        ];
        for (name, pr, exists, action, reason) in table {
            let cfg = config();
            let mut existing = BTreeMap::new();
            if exists {
                let env = EnvName::new("shop", pr.number).unwrap();
                let mut before = pr.clone();
                before.head_sha = "1".repeat(40);
                before.state = PrState::Open;
                existing.insert(
                    env.clone(),
                    env_meta(
                        &cfg,
                        &cfg.render_digest(),
                        &before,
                        env,
                        at("2026-11-01T00:00:00Z"),
                        None,
                    ),
                );
            }
            let plan = plan(&cfg, &[pr], &existing, at(NOW));
            let d = &plan.decisions[0];
            assert_eq!(d.action, action, "{name}: {d:?}");
            assert!(
                d.reason.contains(reason),
                "{name}: reason {:?} lacks {reason:?}",
                d.reason
            );
            assert_eq!(
                d.desired.is_some(),
                matches!(action, Action::Create | Action::Update | Action::Keep | Action::Pin),
                "{name}"
            );
        }
    }

    #[test]
    fn each_head_records_when_it_was_first_committed() {
        let cfg = config();
        let env = EnvName::new("shop", 12).unwrap();
        let first = plan(&cfg, &[pr(12)], &BTreeMap::new(), at(NOW));
        let meta = first.decisions[0].desired.as_deref().cloned().unwrap();
        assert_eq!(meta.committed_at, Some(at(NOW)));
        // Later runs with the same head keep the time: the watcher's budget is per push.
        let later = at("2026-11-24T13:00:00Z");
        let existing = BTreeMap::from([(env.clone(), meta.clone())]);
        let again = plan(&cfg, &[pr(12)], &existing, later);
        assert_eq!(again.decisions[0].action, Action::Keep);
        assert_eq!(again.decisions[0].desired.as_ref().unwrap().committed_at, Some(at(NOW)));
        // A new head is committed at this run's time.
        let mut pushed = pr(12);
        pushed.head_sha = "9".repeat(40);
        pushed.updated_at = later;
        let moved = plan(&cfg, &[pushed], &existing, later);
        assert_eq!(moved.decisions[0].action, Action::Update);
        assert_eq!(moved.decisions[0].desired.as_ref().unwrap().committed_at, Some(later));
    }

    #[test]
    fn the_environment_records_when_its_pr_became_deployable_once() {
        let cfg = config();
        let env = EnvName::new("shop", 12).unwrap();
        let mut opened = pr(12);
        opened.created_at = Some(at("2026-11-20T09:00:00Z"));
        let first = plan(&cfg, &[opened.clone()], &BTreeMap::new(), at(NOW));
        let meta = first.decisions[0].desired.as_deref().cloned().unwrap();
        assert_eq!(meta.eligible_at, Some(at("2026-11-20T09:00:00Z")));
        // A push later keeps it: only the environment's opening counts from the PR event.
        let mut pushed = opened;
        pushed.head_sha = "9".repeat(40);
        pushed.updated_at = at("2026-11-24T13:00:00Z");
        let existing = BTreeMap::from([(env, meta)]);
        let moved = plan(&cfg, &[pushed], &existing, at("2026-11-24T13:00:00Z"));
        let desired = moved.decisions[0].desired.as_ref().unwrap();
        assert_eq!(desired.eligible_at, Some(at("2026-11-20T09:00:00Z")));
    }

    #[test]
    fn an_environment_missing_from_the_snapshot_is_kept() {
        let cfg = config();
        let env = EnvName::new("shop", 12).unwrap();
        let meta = env_meta(&cfg, &cfg.render_digest(), &pr(12), env.clone(), at(NOW), None);
        let existing = BTreeMap::from([(env, meta.clone())]);
        let plan = plan(&cfg, &[], &existing, at(NOW));
        assert_eq!(plan.decisions.len(), 1);
        assert_eq!(plan.decisions[0].action, Action::Keep);
        assert_eq!(plan.decisions[0].desired.as_deref(), Some(&meta));
        assert!(plan.is_noop());
    }

    /// Remembered metadata that must not be needed: decoding it fails the test.
    struct Undecodable;

    impl crate::core::ports::MetaSource for Undecodable {
        fn decode(&self) -> std::result::Result<EnvMeta, String> {
            Err("the remembered bytes are damaged".into())
        }
    }

    fn remembered(cfg: &Config, n: u64, tree: u8, preserve_until: Option<DateTime<Utc>>) -> (EnvName, EnvEntry) {
        let env = EnvName::new("shop", n).unwrap();
        let entry = EnvEntry::remembered(
            n,
            preserve_until,
            cfg.render_digest().into(),
            Some("shop".into()),
            TreeId([tree; 20]),
            Default::default(),
            std::sync::Arc::new(Undecodable),
        );
        (env, entry)
    }

    #[test]
    fn a_verified_environment_missing_from_the_snapshot_is_kept_without_reading_its_metadata() {
        let cfg = config();
        let mut view = RepoView::default();
        for (n, tree, pin) in [(1, 1, None), (2, 2, Some(at("2026-11-24T11:00:00Z"))), (3, 3, None)] {
            let (env, entry) = remembered(&cfg, n, tree, pin);
            view.envs.insert(env, entry);
        }
        // Trees 1 and 2 are verified as rendered; tree 3 is not.
        let verified =
            crate::core::ports::memory::Remembered([(TreeId([1; 20]), None), (TreeId([2; 20]), None)].into());
        let plan = plan_knowing(&cfg, &[], &view, at(NOW), &Evidence::default(), &verified);
        let got: Vec<(u64, Action)> = plan.decisions.iter().map(|d| (d.pr, d.action)).collect();
        // 1: kept untouched and undecoded. 2: its pin expired, so its metadata is needed (and
        // damaged: kept as it is, never recreated). 3: not verified, needed, damaged: the same.
        assert_eq!(got, [(1, Action::Keep), (2, Action::Blocked), (3, Action::Blocked)]);
        assert!(plan.decisions[0].desired.is_none(), "left exactly as it is");
        assert!(plan.decisions[0].reason.contains("not in the snapshot"));
        assert!(
            plan.decisions[1].reason.contains("does not decode"),
            "{}",
            plan.decisions[1].reason
        );
        // A PR in the snapshot always needs its environment's metadata.
        let plan = plan_knowing(&cfg, &[pr(1)], &view, at(NOW), &Evidence::default(), &verified);
        assert_eq!(plan.decisions[0].action, Action::Blocked);
        // A changed config is not the one the content was verified with.
        let mut other = config();
        other.domain = "other.example.com".into();
        let plan = plan_knowing(&other, &[], &view, at(NOW), &Evidence::default(), &verified);
        assert_eq!(plan.decisions[0].action, Action::Blocked, "decoded, so rendered again");
    }

    #[test]
    fn an_unconfirmed_pr_is_kept_with_the_reason_and_an_operator_confirmed_one_is_pruned() {
        let cfg = config();
        let existing: BTreeMap<_, _> = [12, 13, 14]
            .into_iter()
            .map(|n| {
                let env = EnvName::new("shop", n).unwrap();
                (
                    env.clone(),
                    env_meta(&cfg, &cfg.render_digest(), &pr(n), env, at(NOW), None),
                )
            })
            .collect();
        let evidence = Evidence {
            unconfirmed: BTreeMap::from([(12, "GitHub answers 404".to_string())]),
            closed_by_operator: [13].into(),
            ..Evidence::default()
        };
        let view = RepoView {
            envs: existing.into_iter().collect(),
            ..RepoView::default()
        };
        let plan = plan_with(&cfg, &[pr(14)], &view, at(NOW), &evidence);
        let got: Vec<(u64, Action)> = plan.decisions.iter().map(|d| (d.pr, d.action)).collect();
        assert_eq!(got, [(12, Action::Keep), (13, Action::Prune), (14, Action::Keep)]);
        assert!(
            plan.decisions[0]
                .reason
                .contains("cannot be confirmed (GitHub answers 404)")
        );
        assert!(plan.decisions[1].reason.contains("--confirm-closed"));
    }

    #[test]
    fn a_second_plan_over_its_own_result_changes_nothing() {
        let cfg = config();
        let prs = vec![pr(1), closed(pr(2), "2026-11-24T00:00:00Z", &["preserve=true"]), pr(3)];
        let first = plan(&cfg, &prs, &BTreeMap::new(), at(NOW));
        let existing: BTreeMap<_, _> = first.desired().map(|m| (m.env.clone(), m.clone())).collect();
        let later = at(NOW) + Duration::hours(1);
        let second = plan(&cfg, &prs, &existing, later);
        assert!(second.is_noop(), "{second:?}");
        assert_eq!(
            second.desired().cloned().collect::<Vec<_>>(),
            first.desired().cloned().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_pr_number_too_long_for_a_name_is_skipped_with_the_reason() {
        let mut cfg = config();
        cfg.project_id = "p".repeat(naming::PROJECT_ID_MAX);
        let plan = plan(&cfg, &[pr(1_000_000)], &BTreeMap::new(), at(NOW));
        assert_eq!(plan.decisions[0].action, Action::Skip);
        assert!(
            plan.decisions[0].reason.contains("cannot be deployed"),
            "{:?}",
            plan.decisions[0]
        );
    }

    #[test]
    fn image_tag_pins_the_head_commit() {
        let cfg = config();
        let plan = plan(&cfg, &[pr(42)], &BTreeMap::new(), at(NOW));
        let meta = plan.desired().next().unwrap();
        assert_eq!(meta.image, "ghcr.io/acme/shop:pr-42-1111111");
        assert_eq!(meta.url, "https://shop-pr-42.preview.example.com");
    }

    /// The plan of one PR against `existing`, with what the registry says of images.
    fn plan_images(prs: &[PullRequest], existing: &[EnvMeta], facts: &[(&str, ImageFact)], now: &str) -> Plan {
        let view = RepoView {
            envs: existing.iter().map(|m| (m.env.clone(), m.clone())).collect(),
            ..RepoView::default()
        };
        let evidence = Evidence {
            images: facts.iter().map(|(i, f)| (i.to_string(), f.clone())).collect(),
            ..Evidence::default()
        };
        plan_with(&config(), prs, &view, at(now), &evidence)
    }

    fn pushed(n: u64, sha: char, updated: &str) -> PullRequest {
        PullRequest {
            head_sha: sha.to_string().repeat(40),
            updated_at: at(updated),
            ..pr(n)
        }
    }

    #[test]
    fn a_new_head_whose_image_is_missing_keeps_the_running_one_and_records_the_wait() {
        let env = EnvName::new("shop", 7).unwrap();
        let running = plan(&config(), &[pr(7)], &BTreeMap::new(), at("2026-11-24T10:00:00Z")).decisions[0]
            .desired
            .clone()
            .unwrap();
        let new = "ghcr.io/acme/shop:pr-7-2222222";
        // (what the registry says, the expected action, the reason fragment)
        let table = [
            (
                ImageFact::Absent,
                Action::Update,
                "waiting for image ghcr.io/acme/shop:pr-7-2222222: the registry does not have it yet; keeps running 1111111",
            ),
            (
                ImageFact::Unknown("the registry answered 503".into()),
                Action::Update,
                "cannot check it (the registry answered 503); keeps running 1111111",
            ),
        ];
        for (fact, action, says) in table {
            let first = plan_images(
                &[pushed(7, '2', "2026-11-24T11:00:00Z")],
                std::slice::from_ref(&running),
                &[(new, fact.clone())],
                NOW,
            );
            let d = &first.decisions[0];
            assert_eq!((d.action, d.env.as_str()), (action, env.as_str()), "{fact:?}: {d:?}");
            assert!(d.reason.contains(says), "{fact:?}: {}", d.reason);
            let held = d.desired.as_deref().cloned().unwrap();
            assert_eq!(
                (held.head_sha.as_str(), held.image.as_str(), held.committed_at),
                (running.head_sha.as_str(), running.image.as_str(), running.committed_at),
                "the running head and image stay"
            );
            assert_eq!(
                held.waiting_for,
                Some(ImageWait {
                    sha: "2".repeat(40),
                    image: new.into(),
                    since: at(NOW)
                })
            );
            // A later run that still finds no image changes nothing, and keeps when the wait began.
            let later = "2026-11-24T12:05:00Z";
            let again = plan_images(
                &[pushed(7, '2', "2026-11-24T11:00:00Z")],
                std::slice::from_ref(&held),
                &[(new, fact)],
                later,
            );
            assert_eq!(again.decisions[0].action, Action::Keep, "{:?}", again.decisions[0]);
            assert!(
                again.decisions[0].reason.contains("since 2026-11-24T12:00:00Z"),
                "{}",
                again.decisions[0].reason
            );
            // The image appears: the head moves, timed from when it began waiting.
            let moved = plan_images(
                &[pushed(7, '2', "2026-11-24T11:00:00Z")],
                &[held],
                &[(new, ImageFact::Present)],
                later,
            );
            let d = &moved.decisions[0];
            let meta = d.desired.as_ref().unwrap();
            assert_eq!(d.action, Action::Update);
            assert!(
                d.reason
                    .starts_with("image ghcr.io/acme/shop:pr-7-2222222 is in the registry now"),
                "{}",
                d.reason
            );
            assert_eq!((meta.image.as_str(), meta.waiting_for.as_ref()), (new, None));
            assert_eq!(meta.committed_at, Some(at(NOW)));
        }
    }

    #[test]
    fn a_new_pr_whose_image_is_missing_is_created_with_its_app_held_until_it_exists() {
        let image = "ghcr.io/acme/shop:pr-8-1111111";
        let created = plan_images(&[pr(8)], &[], &[(image, ImageFact::Absent)], NOW);
        let d = &created.decisions[0];
        assert_eq!(d.action, Action::Create);
        assert!(d.reason.contains("held at zero replicas"), "{}", d.reason);
        let held = d.desired.as_deref().cloned().unwrap();
        assert!(held.holds_app());
        // Still missing: kept. Pushed again meanwhile: the wait moves to the newer head.
        let kept = plan_images(
            &[pr(8)],
            std::slice::from_ref(&held),
            &[(image, ImageFact::Absent)],
            "2026-11-24T12:01:00Z",
        );
        assert_eq!(kept.decisions[0].action, Action::Keep, "{:?}", kept.decisions[0]);
        let newer = "ghcr.io/acme/shop:pr-8-3333333";
        let moved = plan_images(
            &[pushed(8, '3', "2026-11-24T12:00:30Z")],
            std::slice::from_ref(&held),
            &[(newer, ImageFact::Absent)],
            "2026-11-24T12:01:00Z",
        );
        let m = moved.decisions[0].desired.as_deref().cloned().unwrap();
        assert!(m.holds_app() && m.image == newer, "{m:?}");
        // There: the app starts, and the head keeps its creation as its start.
        let released = plan_images(
            &[pr(8)],
            std::slice::from_ref(&held),
            &[(image, ImageFact::Present)],
            "2026-11-24T12:09:00Z",
        );
        let r = released.decisions[0].desired.as_deref().cloned().unwrap();
        assert_eq!(released.decisions[0].action, Action::Update);
        assert!(!r.holds_app() && r.waiting_for.is_none());
        assert_eq!(r.committed_at, held.committed_at);
    }

    #[test]
    fn only_heads_that_would_move_or_wait_are_asked_about() {
        let cfg = config();
        let running = plan(&cfg, &[pr(1), pr(2)], &BTreeMap::new(), at(NOW));
        let mut view = RepoView {
            envs: running.desired().map(|m| (m.env.clone(), m.clone())).collect(),
            ..RepoView::default()
        };
        let mut draft = pr(4);
        draft.draft = true;
        let prs = [pr(1), pushed(2, '2', NOW), pr(3), draft, closed(pr(5), NOW, &[])];
        let asked = images_to_check(&cfg, &prs, &view, at(NOW));
        assert_eq!(
            asked.into_iter().collect::<Vec<_>>(),
            ["ghcr.io/acme/shop:pr-2-2222222", "ghcr.io/acme/shop:pr-3-1111111"],
            "running its image already (1), a draft (4) and a closed PR (5) cost no request"
        );
        let env1 = EnvName::new("shop", 1).unwrap();
        let mut waiting = view.envs.get(env1.as_str()).unwrap().clone();
        waiting.waiting_for = Some(ImageWait {
            sha: "1".repeat(40),
            image: "ghcr.io/acme/shop:pr-1-1111111".into(),
            since: at(NOW),
        });
        view.envs
            .insert(env1, EnvEntry::read(waiting, None, Default::default()));
        assert!(images_to_check(&cfg, &[pr(1)], &view, at(NOW)).contains("ghcr.io/acme/shop:pr-1-1111111"));
    }

    #[test]
    fn an_image_nobody_asked_about_counts_as_present() {
        let cfg = config();
        let running = plan(&cfg, &[pr(1)], &BTreeMap::new(), at(NOW)).decisions[0]
            .desired
            .as_deref()
            .cloned()
            .unwrap();
        let moved = plan_images(&[pushed(1, '2', NOW)], &[running], &[], NOW);
        assert_eq!(moved.decisions[0].action, Action::Update);
        assert_eq!(
            moved.decisions[0].desired.as_ref().unwrap().image,
            "ghcr.io/acme/shop:pr-1-2222222"
        );
    }
}
