//! The watcher's decisions, pure: what each environment's state is for its head commit, what
//! happened to it (the timeline), and when something is worth telling GitHub. `Tracker::observe(event,
//! now) -> effects`: watch events, recalled memory and clock ticks in; reports, recall requests and
//! metric samples out. No I/O and no clock, so the controllers' status sequences replay as tables.
//!
//! Memory that must survive a restart (the timeline, when each head was first seen, what was last
//! reported) is an [`EnvRecord`]; the shell stores it in the PR comment's marker and hands it back
//! with [`Event::Recalled`] before the tracker decides anything about an environment it has not seen
//! in this process.
//!
//! [`StatusSink`] is the seam to GitHub: the watch flow talks to it only, so its table tests run
//! against [`MemorySink`] and production against `adapters::pr_status::PrStatus`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::core::status::{Failure, IMAGE_WAIT, Observation, Verdict};
use crate::error::{Error, Result};
use crate::model::config::{Lifecycle, Watch};
use crate::model::pr::{PrState, PullRequest};

/// Heads (commits) whose history a record keeps: the current one and the two before, so the comment
/// can say what still runs when a new commit fails, and its size stays bounded.
pub const KEEP_HEADS: usize = 3;
/// Timeline steps kept per head: a first deploy that fails, retries and recovers needs about six.
pub const KEEP_STEPS: usize = 8;

/// An environment's state for its head commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Committed to the environments repository; the controller has not picked the head up yet.
    Committed,
    /// The controller is applying the head or waiting for it to become healthy.
    Reconciling,
    /// Blocked on something outside the environment; the controller's words.
    Waiting(String),
    Ready,
    Failed(Failure),
    /// Being deleted.
    Destroying,
    /// Gone.
    Destroyed,
}

impl State {
    /// The stable word used in timelines, markers and metrics.
    pub fn word(&self) -> &'static str {
        match self {
            State::Committed => "committed",
            State::Reconciling => "reconciling",
            State::Waiting(_) => "waiting",
            State::Ready => "ready",
            State::Failed(_) => "failed",
            State::Destroying => "destroying",
            State::Destroyed => "destroyed",
        }
    }

    /// What GitHub shows of this state: committed, reconciling and waiting are one "pending", a
    /// failure is its reason and object (not its wording, which changes with durations and retries).
    fn class(&self) -> (&'static str, Option<(&str, Option<&str>)>) {
        match self {
            State::Committed | State::Reconciling | State::Waiting(_) => ("pending", None),
            State::Failed(f) => ("failed", Some((f.reason.as_str(), f.object.as_deref()))),
            other => (other.word(), None),
        }
    }
}

/// Where a head's start time comes from, from most to least exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Since {
    /// The `prenv.dev/eligible-at` annotation: when the PR became deployable (opened, ready for
    /// review, labelled, reopened; `core::eligible`). Only the head that opened the environment.
    Eligible,
    /// The `prenv.dev/committed-at` annotation: when prenv committed the head.
    Committed,
    /// The object's creation in the cluster (the environment's first head).
    Created,
    /// When this watcher first saw the head.
    Seen,
}

/// One timeline step: a state word and when it began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step(pub String, pub DateTime<Utc>);

/// What happened to one head commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub sha: String,
    /// When the head started: the clock of its 10-minute budget.
    pub since: DateTime<Utc>,
    pub from: Since,
    /// At most [`KEEP_STEPS`], oldest first.
    pub steps: Vec<Step>,
}

impl Head {
    /// The time from the head's start to its first ready step.
    pub fn time_to_ready(&self) -> Option<Duration> {
        self.steps.iter().find(|s| s.0 == "ready").map(|s| s.1 - self.since)
    }
}

/// Everything the tracker knows about one environment; it is what the PR comment's marker carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRecord {
    pub env: String,
    pub pr: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<String>,
    pub state: State,
    /// Still terminating past the alert threshold.
    #[serde(default)]
    pub stuck: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since: Option<DateTime<Utc>>,
    /// Gone while the watcher was not watching (a watch gap or a restart): the time is when it
    /// noticed, not when it happened.
    #[serde(default)]
    pub noticed_late: bool,
    /// At most [`KEEP_HEADS`], oldest first; the last is the current head.
    pub heads: Vec<Head>,
    /// The start of the environment's opening (when its PR became deployable, else its first
    /// head's start) until it is first ready: its first ready of any head is open→ready, and only
    /// the heads after that count commit→ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening: Option<DateTime<Utc>>,
}

impl EnvRecord {
    fn new(obs: &Observation) -> EnvRecord {
        EnvRecord {
            env: obs.env.clone(),
            pr: obs.pr,
            url: obs.url.clone(),
            databases: obs.databases.clone(),
            state: State::Committed,
            stuck: false,
            deleting_since: None,
            noticed_late: false,
            heads: Vec::new(),
            opening: None,
        }
    }

    /// The current head commit ("" before the first observation).
    pub fn head(&self) -> &str {
        self.heads.last().map_or("", |h| h.sha.as_str())
    }

    /// The current head's history.
    pub fn current(&self) -> Option<&Head> {
        self.heads.last()
    }

    fn step(&mut self, word: &str, at: DateTime<Utc>) {
        if let Some(head) = self.heads.last_mut() {
            if head.steps.last().is_some_and(|s| s.0 == word) {
                return;
            }
            head.steps.push(Step(word.to_string(), at));
            let extra = head.steps.len().saturating_sub(KEEP_STEPS);
            head.steps.drain(..extra);
        }
    }

    /// `lifecycle`: the head starts a lifecycle of the environment (its first sight, or its return
    /// after it was gone). Without memory that may be a later head of an environment that existed
    /// before: the head opened the environment only when prenv committed it before the object was
    /// created (a later push is committed after).
    fn new_head(&mut self, obs: &Observation, lifecycle: bool, now: DateTime<Utc>) {
        let committed = obs.committed_at.filter(|t| *t <= now);
        let opens = lifecycle && committed.zip(obs.created).is_none_or(|(c, created)| c <= created);
        let eligible = obs.eligible_at.filter(|t| opens && *t <= now);
        if lifecycle {
            self.opening = None;
        }
        let (since, from) = match (eligible, committed, obs.created) {
            (Some(at), _, _) => (at, Since::Eligible),
            (None, Some(at), _) => (at, Since::Committed),
            (None, None, Some(created)) if opens && created <= now => (created, Since::Created),
            _ => (now, Since::Seen),
        };
        self.heads.push(Head {
            sha: obs.head_sha.clone(),
            since,
            from,
            steps: Vec::new(),
        });
        if opens {
            self.opening = Some(since);
        }
        let extra = self.heads.len().saturating_sub(KEEP_HEADS);
        self.heads.drain(..extra);
    }
}

/// Why an environment was removed, as far as its PR tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    Merged,
    Closed,
    /// Closed with the pin label, and the pin ran out.
    PinExpired,
    /// Open, turned back to draft.
    Draft,
    /// Open, but no longer deployed (a fork without the review label, or removed from the
    /// environments repository by hand).
    NotDeployed,
    /// The PR could not be looked up.
    Unknown,
}

impl Why {
    /// The PR may still be open: a removal must not read as a passing check.
    pub fn pr_may_be_open(self) -> bool {
        matches!(self, Why::Draft | Why::NotDeployed | Why::Unknown)
    }
}

/// Why the environment of `pr` was removed, by the lifecycle rules of `core::plan`.
pub fn why_removed(pr: &PullRequest, lifecycle: &Lifecycle, now: DateTime<Utc>) -> Why {
    match pr.state {
        PrState::Closed => {
            let closed = pr.closed_at.unwrap_or(pr.updated_at);
            let pin_end = closed + Duration::hours(i64::from(lifecycle.pin_hours));
            if pr.has_label(&lifecycle.pin_label) && pin_end <= now {
                Why::PinExpired
            } else if pr.merged_at.is_some() {
                Why::Merged
            } else {
                Why::Closed
            }
        }
        PrState::Open if pr.draft && !lifecycle.deploy_drafts => Why::Draft,
        PrState::Open => Why::NotDeployed,
    }
}

/// When the removal of the environment of `pr` became due, the start of close→gone (RNF-02): the
/// PR's close, or the end of its pin; `None` while the PR is open (a draft again, a fork unlabelled:
/// no close to measure from).
pub fn removal_due(pr: &PullRequest, lifecycle: &Lifecycle) -> Option<DateTime<Utc>> {
    let closed = pr.closed_at.filter(|_| pr.state == PrState::Closed)?;
    Some(match pr.has_label(&lifecycle.pin_label) {
        true => closed + Duration::hours(i64::from(lifecycle.pin_hours)),
        false => closed,
    })
}

/// What the watch (or the shell) tells the tracker.
#[derive(Debug, Clone)]
pub enum Event {
    /// A (re-)list begins: every object follows as [`Event::Applied`], then [`Event::Listed`].
    Listing,
    /// The (re-)list is complete: known environments it did not contain are gone (kube-rs emits no
    /// `Delete` for objects deleted during a watch gap; `watcher::Event::InitDone`).
    Listed,
    /// An object as it is now.
    Applied(Observation),
    /// An object deleted, as it last was.
    Deleted(Observation),
    /// The memory of `env` from its PR comment (`None`: there is none), after an [`Effect::Recall`];
    /// also for environments the shell found on GitHub but not in the cluster.
    Recalled { env: String, memory: Option<EnvRecord> },
    /// Time passes (deletions stuck past the alert threshold).
    Tick,
}

/// What the tracker asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Find the memory of `env` on PR `pr` and answer with [`Event::Recalled`].
    Recall { env: String, pr: u64 },
    /// Make the PR show this record.
    Report(Box<EnvRecord>),
    /// The head that opened an environment became ready: seconds from its start, when the PR
    /// became deployable where known (sampled once per head, never on a restart).
    OpenToReady { env: String, seconds: f64 },
    /// A later head became ready: seconds from prenv committing it.
    CommitToReady { env: String, seconds: f64 },
    /// An environment the watcher saw disappear, `at`: `seconds` from its deletion starting. The
    /// shell measures close→gone from the PR's close ([`removal_due`]), falling back to these.
    CloseToGone {
        env: String,
        pr: u64,
        at: DateTime<Utc>,
        seconds: f64,
    },
    /// A new failure, by the controller's reason.
    Failure { env: String, reason: String },
}

/// An environment first seen, whose memory is being recalled.
struct Recalling {
    latest: Observation,
    /// Deleted meanwhile: `Some(true)` seen deleted by the watch, `Some(false)` missing from a list.
    gone: Option<bool>,
}

enum Slot {
    Recalling(Box<Recalling>),
    Known(Box<EnvRecord>),
}

/// The watcher's memory of every environment.
pub struct Tracker {
    envs: BTreeMap<String, Slot>,
    /// The environments of the (re-)list under way.
    listing: Option<BTreeSet<String>>,
    /// A first list completed: an environment recalled but absent from the cluster is gone.
    listed: bool,
    alert: Duration,
}

impl Tracker {
    /// A tracker that flags deletions still going after `alert`.
    pub fn new(alert: Duration) -> Tracker {
        Tracker {
            envs: BTreeMap::new(),
            listing: None,
            listed: false,
            alert,
        }
    }

    /// Takes one event at `now`; returns what to do about it.
    pub fn observe(&mut self, event: Event, now: DateTime<Utc>) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::Listing => self.listing = Some(BTreeSet::new()),
            Event::Listed => self.listed(now, &mut out),
            Event::Applied(obs) => {
                if let Some(listing) = &mut self.listing {
                    listing.insert(obs.env.clone());
                }
                self.seen(obs, false, now, &mut out);
            }
            Event::Deleted(obs) => self.seen(obs, true, now, &mut out),
            Event::Recalled { env, memory } => self.recalled(env, memory, now, &mut out),
            Event::Tick => self.tick(now, &mut out),
        }
        out
    }

    /// The record of `env`, once recalled.
    pub fn record(&self, env: &str) -> Option<&EnvRecord> {
        match self.envs.get(env) {
            Some(Slot::Known(record)) => Some(record),
            _ => None,
        }
    }

    /// Every environment the tracker knows of, gone ones included.
    pub fn known(&self) -> BTreeSet<String> {
        self.envs.keys().cloned().collect()
    }

    /// Whether a first list has completed.
    pub fn has_listed(&self) -> bool {
        self.listed
    }

    /// Environments by state word (gone ones excluded; those still being recalled as "unknown"),
    /// and how many are stuck terminating.
    pub fn census(&self) -> (BTreeMap<&'static str, i64>, i64) {
        let mut states = BTreeMap::new();
        let mut stuck = 0;
        for slot in self.envs.values() {
            let word = match slot {
                Slot::Recalling(_) => "unknown",
                Slot::Known(r) if r.state == State::Destroyed => continue,
                Slot::Known(r) => {
                    stuck += i64::from(r.stuck);
                    r.state.word()
                }
            };
            *states.entry(word).or_default() += 1;
        }
        (states, stuck)
    }

    fn seen(&mut self, obs: Observation, deleted: bool, now: DateTime<Utc>, out: &mut Vec<Effect>) {
        match self.envs.get_mut(&obs.env) {
            Some(Slot::Known(record)) => apply(record, &obs, deleted.then_some(true), now, out),
            Some(Slot::Recalling(pending)) => {
                pending.gone = pending.gone.or(deleted.then_some(true));
                pending.latest = obs;
            }
            None => {
                out.push(Effect::Recall {
                    env: obs.env.clone(),
                    pr: obs.pr,
                });
                let pending = Recalling {
                    gone: deleted.then_some(true),
                    latest: obs,
                };
                self.envs
                    .insert(pending.latest.env.clone(), Slot::Recalling(Box::new(pending)));
            }
        }
    }

    fn listed(&mut self, now: DateTime<Utc>, out: &mut Vec<Effect>) {
        self.listed = true;
        let listed = self.listing.take().unwrap_or_default();
        for (_, slot) in self.envs.iter_mut().filter(|(env, _)| !listed.contains(*env)) {
            match slot {
                Slot::Known(record) => {
                    let was = record.visible();
                    gone(record, false, now, out);
                    report_if_changed(record, was, out);
                }
                Slot::Recalling(pending) => pending.gone = pending.gone.or(Some(false)),
            }
        }
    }

    fn recalled(&mut self, env: String, memory: Option<EnvRecord>, now: DateTime<Utc>, out: &mut Vec<Effect>) {
        let slot = match self.envs.remove(&env) {
            Some(Slot::Recalling(pending)) => {
                let mut record = memory.unwrap_or_else(|| EnvRecord::new(&pending.latest));
                apply(&mut record, &pending.latest, pending.gone, now, out);
                Slot::Known(Box::new(record))
            }
            Some(known @ Slot::Known(_)) => known,
            None => match memory {
                // Found on GitHub, not in the cluster: gone while nobody watched, once a list says so.
                Some(mut record) => {
                    if self.listed && record.state != State::Destroyed {
                        let was = record.visible();
                        gone(&mut record, false, now, out);
                        report_if_changed(&record, was, out);
                    }
                    Slot::Known(Box::new(record))
                }
                None => return,
            },
        };
        self.envs.insert(env, slot);
    }

    fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<Effect>) {
        for slot in self.envs.values_mut() {
            let Slot::Known(record) = slot else { continue };
            let overdue = record.deleting_since.is_some_and(|since| now - since >= self.alert);
            if record.state == State::Destroying && !record.stuck && overdue {
                record.stuck = true;
                out.push(Effect::Report(record.clone()));
            }
        }
    }
}

/// What [`EnvRecord::visible`] shows, owned, to compare across a change.
type Visible = (String, String, Option<(String, Option<String>)>, bool, Option<String>);

impl EnvRecord {
    /// What GitHub shows; a report is due when it changes.
    fn visible(&self) -> Visible {
        let (class, failure) = self.state.class();
        (
            self.head().to_string(),
            class.to_string(),
            failure.map(|(r, o)| (r.to_string(), o.map(String::from))),
            self.stuck,
            self.url.clone(),
        )
    }
}

fn report_if_changed(record: &EnvRecord, was: Visible, out: &mut Vec<Effect>) {
    if record.visible() != was {
        out.push(Effect::Report(Box::new(record.clone())));
    }
}

/// Applies one observation to a record; `gone_how`: deleted (`Some(true)` seen by the watch,
/// `Some(false)` found missing from a list).
fn apply(record: &mut EnvRecord, obs: &Observation, gone_how: Option<bool>, now: DateTime<Utc>, out: &mut Vec<Effect>) {
    let was = (!record.heads.is_empty()).then(|| record.visible());
    record.pr = obs.pr;
    record.url = obs.url.clone().or(record.url.take());
    record.databases = obs.databases.clone().or(record.databases.take());
    if record.heads.is_empty() || record.state == State::Destroyed && gone_how.is_none() {
        // A first sight, or an environment back after it was gone (a reopened PR): a new lifecycle.
        record.stuck = false;
        record.deleting_since = None;
        record.noticed_late = false;
        record.new_head(obs, true, now);
        record.state = State::Committed;
        decide(record, obs, true, now, out);
    } else if gone_how.is_none() {
        decide(record, obs, false, now, out);
    }
    if let Some(observed) = gone_how {
        record.deleting_since = record.deleting_since.or(obs.deleting_since);
        gone(record, observed, now, out);
    }
    match was {
        Some(was) => report_if_changed(record, was, out),
        None => out.push(Effect::Report(Box::new(record.clone()))),
    }
}

/// The state for the observation's verdict, with the memory of the head: a failure stays a failure
/// through the controller's retries (a Flux retry starts like a first attempt, with
/// Ready=Unknown/Progressing), and a ready head stays ready through routine reconciles and brief
/// Argo CD health flickers, until the controller says ready, failed (otherwise), or a new head comes.
/// `fresh`: the record's head was just created for this observation.
fn decide(record: &mut EnvRecord, obs: &Observation, fresh: bool, now: DateTime<Utc>, out: &mut Vec<Effect>) {
    if obs.verdict == Verdict::Deleting {
        if record.state != State::Destroying {
            record.state = State::Destroying;
            record.deleting_since = obs.deleting_since.filter(|t| *t <= now).or(Some(now));
            record.step("destroying", now);
        }
        return;
    }
    let current = if fresh {
        None
    } else if obs.head_sha != record.head() {
        record.new_head(obs, false, now);
        None
    } else {
        Some(record.state.clone())
    };
    let next = match (&obs.verdict, current.clone()) {
        // A head that waited for its image is ready only after the controller was seen at work on
        // it: a status from before the wait ended (an app held at zero replicas is healthy) says
        // nothing about the pod that starts now.
        (Verdict::Ready, Some(State::Waiting(why))) if why.starts_with(IMAGE_WAIT) => State::Reconciling,
        (Verdict::Ready, _) => State::Ready,
        (Verdict::Failed(f), Some(State::Failed(g))) if g.same_as(f) => State::Failed(g),
        (Verdict::Failed(f), _) => State::Failed(f.clone()),
        (Verdict::Progressing | Verdict::Waiting(_), Some(kept @ (State::Ready | State::Failed(_)))) => kept,
        (Verdict::Progressing, _) => State::Reconciling,
        (Verdict::Waiting(why), _) => State::Waiting(why.clone()),
        (Verdict::NotYet | Verdict::Deleting, current) => current.unwrap_or(State::Committed),
        (Verdict::Routine, current) => current.unwrap_or(State::Reconciling),
    };
    let first_step = record.current().is_some_and(|h| h.steps.is_empty());
    if current.as_ref() == Some(&next) && !first_step {
        return;
    }
    if let State::Failed(f) = &next
        && !matches!(&current, Some(State::Failed(g)) if g.same_as(f))
    {
        out.push(Effect::Failure {
            env: record.env.clone(),
            reason: f.reason.clone(),
        });
    }
    let became_ready = next == State::Ready && current != Some(State::Ready);
    record.state = next;
    if became_ready {
        ready(record, obs, now, out);
    } else {
        let word = record.state.word();
        record.step(word, now);
    }
}

/// Records a ready step at the controller's own transition time, and samples open→ready when this
/// watcher (in this process or, through the marker, an earlier one) saw the head before it was ready.
fn ready(record: &mut EnvRecord, obs: &Observation, now: DateTime<Utc>, out: &mut Vec<Effect>) {
    let Some(head) = record.heads.last() else { return };
    // The controller's time, unless it lies outside what this record saw (clock skew, or a status
    // older than the head's last step): the timeline stays in order.
    let last = head.steps.last().map_or(head.since, |s| s.1.max(head.since));
    let at = obs.changed_at.filter(|t| *t <= now && *t >= last).unwrap_or(now);
    let witnessed = !head.steps.is_empty() && !head.steps.iter().any(|s| s.0 == "ready");
    let since = head.since;
    record.step("ready", at);
    // The environment's first ready, whichever head got there (a failed first head fixed by a
    // later push included), ends its opening; every later ready is its head's own.
    let seconds = |from: DateTime<Utc>| (at - from).num_milliseconds() as f64 / 1000.0;
    let env = record.env.clone();
    match record.opening.take() {
        Some(opened) if witnessed => out.push(Effect::OpenToReady {
            env,
            seconds: seconds(opened),
        }),
        Some(_) => {}
        None if witnessed => out.push(Effect::CommitToReady {
            env,
            seconds: seconds(since),
        }),
        None => {}
    }
}

fn gone(record: &mut EnvRecord, observed: bool, now: DateTime<Utc>, out: &mut Vec<Effect>) {
    if record.state == State::Destroyed {
        return;
    }
    record.state = State::Destroyed;
    record.stuck = false;
    record.noticed_late = !observed;
    record.step("destroyed", now);
    if let (true, Some(since)) = (observed, record.deleting_since) {
        out.push(Effect::CloseToGone {
            env: record.env.clone(),
            pr: record.pr,
            at: now,
            seconds: (now - since).num_milliseconds().max(0) as f64 / 1000.0,
        });
    }
}

/// GitHub writes (content-creating requests) made, by kind: for `/metrics` and the write budget.
#[derive(Debug, Default)]
pub struct WriteCounts {
    pub statuses: AtomicU64,
    pub deployments: AtomicU64,
    pub deployment_statuses: AtomicU64,
    pub comments: AtomicU64,
}

impl WriteCounts {
    pub fn total(&self) -> u64 {
        [
            &self.statuses,
            &self.deployments,
            &self.deployment_statuses,
            &self.comments,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Where the watcher's reports go and its memory comes back from: the PR (its comment's marker, its
/// commit status, its deployments). One job at a time; a failed call is retried by the caller.
pub trait StatusSink: Send + 'static {
    /// Takes `[watch]` (pacing) and `[lifecycle]` (why an environment was removed) before any call.
    fn configure(&mut self, _watch: &Watch, _lifecycle: &Lifecycle) {}
    /// The memory of `env` that PR `pr` carries, `None` when it has none.
    fn recall(
        &mut self,
        env: &str,
        pr: u64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<EnvRecord>>> + Send;
    /// Environments not in `listed` (the first list) whose PR says they are not gone yet, with
    /// their memory: gone while no watcher ran.
    fn sweep(
        &mut self,
        listed: &BTreeSet<String>,
        project_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(String, EnvRecord)>>> + Send;
    /// Makes the PR show `record`, writing only what differs from what it shows.
    fn write(&mut self, record: &EnvRecord, now: DateTime<Utc>) -> impl Future<Output = Result<()>> + Send;
    /// When the removal of PR `pr`'s environment became due ([`removal_due`]), as the PR says now;
    /// `None` while it is open.
    fn removal_due(
        &mut self,
        pr: u64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send;
    /// The writes made so far, shared with the metrics.
    fn writes(&self) -> Arc<WriteCounts>;
}

/// What [`MemorySink`] holds: one marker per environment (what its PR comment would carry) and
/// every write it took.
#[derive(Debug, Default)]
pub struct MemoryPrs {
    pub markers: BTreeMap<String, EnvRecord>,
    /// Every record that changed what a PR shows, in order.
    pub written: Vec<EnvRecord>,
    /// The next this many writes fail (GitHub refusing), to test retries.
    pub fail_writes: u32,
    pub recalls: u64,
    /// When each closed PR's removal became due, as GitHub would say; PRs not here are open.
    pub removals_due: BTreeMap<u64, DateTime<Utc>>,
}

/// An in-memory [`StatusSink`] for table tests of the watch flow; clones share it. A write that
/// would change nothing on the PR is not a write, as with GitHub's own sink.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    pub prs: Arc<Mutex<MemoryPrs>>,
    writes: Arc<WriteCounts>,
}

impl MemorySink {
    pub fn prs(&self) -> std::sync::MutexGuard<'_, MemoryPrs> {
        self.prs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl StatusSink for MemorySink {
    async fn recall(&mut self, env: &str, _pr: u64, _now: DateTime<Utc>) -> Result<Option<EnvRecord>> {
        let mut prs = self.prs();
        prs.recalls += 1;
        Ok(prs.markers.get(env).cloned())
    }

    async fn sweep(
        &mut self,
        listed: &BTreeSet<String>,
        _project_id: &str,
        _now: DateTime<Utc>,
    ) -> Result<Vec<(String, EnvRecord)>> {
        let prs = self.prs();
        let open = prs
            .markers
            .iter()
            .filter(|(env, r)| !listed.contains(*env) && r.state != State::Destroyed);
        Ok(open.map(|(env, r)| (env.clone(), r.clone())).collect())
    }

    async fn write(&mut self, record: &EnvRecord, _now: DateTime<Utc>) -> Result<()> {
        let mut prs = self.prs();
        if prs.fail_writes > 0 {
            prs.fail_writes -= 1;
            return Err(Error::Github {
                action: "writing a report (memory sink)",
                message: "refused, as the test asked".into(),
                source: None,
            });
        }
        if prs.markers.get(&record.env) != Some(record) {
            self.writes.comments.fetch_add(1, Ordering::Relaxed);
            prs.markers.insert(record.env.clone(), record.clone());
            prs.written.push(record.clone());
        }
        Ok(())
    }

    async fn removal_due(&mut self, pr: u64, _now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        Ok(self.prs().removals_due.get(&pr).copied())
    }

    fn writes(&self) -> Arc<WriteCounts> {
        self.writes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
    const B: &str = "b5e5ed6dec4810da85f01fd692050e26bc5a09a9";

    fn at(secs: i64) -> DateTime<Utc> {
        "2026-11-24T12:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(secs)
    }

    fn obs(sha: &str, verdict: Verdict) -> Observation {
        Observation {
            env: "shop-pr-7".into(),
            pr: 7,
            head_sha: sha.into(),
            url: Some("https://shop-pr-7.p.example.com".into()),
            databases: None,
            created: Some(at(0)),
            committed_at: None,
            eligible_at: None,
            deleting_since: (verdict == Verdict::Deleting).then(|| at(0)),
            changed_at: None,
            verdict,
        }
    }

    fn failed(reason: &str) -> Verdict {
        Verdict::Failed(Failure {
            reason: reason.into(),
            object: Some("Deployment/shop-pr-7/app".into()),
            message: format!("{reason} after {}s", reason.len()),
        })
    }

    /// Replays `(seconds, event)` and returns the state word after each and whether it reported.
    fn replay(tracker: &mut Tracker, events: Vec<(i64, Event)>) -> Vec<(String, bool)> {
        events
            .into_iter()
            .map(|(t, e)| {
                let effects = tracker.observe(e, at(t));
                let reported = effects.iter().any(|e| matches!(e, Effect::Report(_)));
                let word = tracker.record("shop-pr-7").map_or("unknown", |r| r.state.word());
                (word.to_string(), reported)
            })
            .collect()
    }

    #[test]
    fn retries_keep_a_failure_and_routine_runs_keep_ready() {
        let mut t = Tracker::new(Duration::minutes(5));
        let seen = |v| Event::Applied(obs(A, v));
        let got = replay(
            &mut t,
            vec![
                (0, seen(Verdict::NotYet)),
                (
                    1,
                    Event::Recalled {
                        env: "shop-pr-7".into(),
                        memory: None,
                    },
                ),
                (2, seen(Verdict::Progressing)),
                (300, seen(failed("HealthCheckFailed"))),
                (360, seen(Verdict::Progressing)),
                (660, seen(failed("HealthCheckFailed"))),
                (700, seen(Verdict::Ready)),
                (1000, seen(Verdict::Routine)),
                (1001, seen(Verdict::Ready)),
                (1100, Event::Applied(obs(B, Verdict::NotYet))),
                (1101, Event::Applied(obs(B, failed("ReconciliationFailed")))),
            ],
        );
        let want = [
            ("unknown", false),
            ("committed", true),
            ("reconciling", false),
            ("failed", true),
            ("failed", false),
            ("failed", false),
            ("ready", true),
            ("ready", false),
            ("ready", false),
            ("committed", true),
            ("failed", true),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|(w, r)| (w.to_string(), *r)).collect();
        assert_eq!(got, want);
        let record = t.record("shop-pr-7").unwrap();
        assert_eq!(record.heads.len(), 2);
        assert_eq!(record.heads[0].time_to_ready(), Some(Duration::seconds(700)));
    }

    #[test]
    fn a_restart_with_the_marker_changes_nothing_and_samples_nothing() {
        let mut first = Tracker::new(Duration::minutes(5));
        first.observe(Event::Applied(obs(A, Verdict::Progressing)), at(0));
        first.observe(
            Event::Recalled {
                env: "shop-pr-7".into(),
                memory: None,
            },
            at(1),
        );
        let effects = first.observe(Event::Applied(obs(A, Verdict::Ready)), at(60));
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::OpenToReady { seconds, .. } if *seconds == 60.0))
        );
        let memory = first.record("shop-pr-7").cloned();
        let mut second = Tracker::new(Duration::minutes(5));
        let mut effects = second.observe(Event::Applied(obs(A, Verdict::Routine)), at(600));
        effects.extend(second.observe(
            Event::Recalled {
                env: "shop-pr-7".into(),
                memory,
            },
            at(601),
        ));
        effects.extend(second.observe(Event::Applied(obs(A, Verdict::Ready)), at(602)));
        assert_eq!(
            effects,
            vec![Effect::Recall {
                env: "shop-pr-7".into(),
                pr: 7
            }]
        );
        // Without a marker, an environment first seen ready is reported but not sampled.
        let mut fresh = Tracker::new(Duration::minutes(5));
        fresh.observe(Event::Applied(obs(A, Verdict::Ready)), at(0));
        let effects = fresh.observe(
            Event::Recalled {
                env: "shop-pr-7".into(),
                memory: None,
            },
            at(1),
        );
        assert!(matches!(effects.as_slice(), [Effect::Report(r)] if r.state == State::Ready));
    }

    #[test]
    fn the_opening_head_counts_from_the_pr_event_and_later_heads_from_their_commit() {
        let opened = |sha: &str, committed: i64, v| Observation {
            eligible_at: Some(at(-120)),
            committed_at: Some(at(committed)),
            created: Some(at(5)),
            ..obs(sha, v)
        };
        // A tracker that saw `seen` at `secs` first, with no memory of it on the PR.
        let met = |seen: Observation, secs: i64| {
            let mut t = Tracker::new(Duration::minutes(5));
            t.observe(Event::Applied(seen), at(secs));
            let forgotten = Event::Recalled {
                env: "shop-pr-7".into(),
                memory: None,
            };
            t.observe(forgotten, at(secs + 1));
            t
        };
        let mut t = met(opened(A, 0, Verdict::Progressing), 10);
        let first = t.observe(Event::Applied(opened(A, 0, Verdict::Ready)), at(180));
        t.observe(Event::Applied(opened(B, 400, Verdict::Progressing)), at(410));
        let later = t.observe(Event::Applied(opened(B, 400, Verdict::Ready)), at(460));
        let samples = |effects: Vec<Effect>| {
            effects
                .into_iter()
                .filter(|e| matches!(e, Effect::OpenToReady { .. } | Effect::CommitToReady { .. }))
                .collect::<Vec<_>>()
        };
        let env = || "shop-pr-7".to_string();
        assert_eq!(
            samples(first),
            [Effect::OpenToReady {
                env: env(),
                seconds: 300.0
            }]
        );
        assert_eq!(
            samples(later),
            [Effect::CommitToReady {
                env: env(),
                seconds: 60.0
            }]
        );
        let heads = &t.record("shop-pr-7").unwrap().heads;
        assert_eq!((heads[0].from, heads[1].from), (Since::Eligible, Since::Committed));
        assert_eq!(t.record("shop-pr-7").unwrap().opening, None);

        // A watcher without memory that first meets a later head (committed after the object was
        // created) does not take it for the opening one.
        let mut fresh = met(opened(B, 400, Verdict::Progressing), 410);
        let effects = fresh.observe(Event::Applied(opened(B, 400, Verdict::Ready)), at(460));
        assert_eq!(
            samples(effects),
            [Effect::CommitToReady {
                env: env(),
                seconds: 60.0
            }]
        );
    }

    #[test]
    fn removal_is_due_at_the_close_or_the_end_of_the_pin() {
        let lifecycle = Lifecycle::default();
        let mut pr = crate::core::plan::tests::pr(7);
        assert_eq!(removal_due(&pr, &lifecycle), None, "open: nothing closed");
        pr.state = PrState::Closed;
        pr.closed_at = Some(at(60));
        assert_eq!(removal_due(&pr, &lifecycle), Some(at(60)));
        pr.labels = vec![lifecycle.pin_label.clone()];
        let pin = i64::from(lifecycle.pin_hours) * 3600;
        assert_eq!(removal_due(&pr, &lifecycle), Some(at(60 + pin)));
    }

    #[test]
    fn environments_missing_from_a_relist_are_gone_and_stuck_deletions_are_flagged() {
        let mut t = Tracker::new(Duration::minutes(5));
        t.observe(Event::Applied(obs(A, Verdict::Ready)), at(0));
        t.observe(
            Event::Recalled {
                env: "shop-pr-7".into(),
                memory: None,
            },
            at(0),
        );
        t.observe(Event::Applied(obs(A, Verdict::Deleting)), at(10));
        assert!(t.observe(Event::Tick, at(200)).is_empty());
        let flagged = t.observe(Event::Tick, at(301));
        assert!(matches!(flagged.as_slice(), [Effect::Report(r)] if r.stuck));
        assert_eq!(t.census().1, 1);
        t.observe(Event::Listing, at(400));
        let effects = t.observe(Event::Listed, at(401));
        let record = t.record("shop-pr-7").unwrap();
        assert_eq!(
            (record.state.word(), record.noticed_late, record.stuck),
            ("destroyed", true, false)
        );
        assert!(
            matches!(effects.as_slice(), [Effect::Report(_)]),
            "no close→gone sample for a gone it did not see: {effects:?}"
        );
    }

    #[test]
    fn removal_reasons_follow_the_lifecycle() {
        let lifecycle = Lifecycle::default();
        let pr = |state, draft, merged: bool, labels: &[&str], closed_secs: i64| PullRequest {
            number: 7,
            state,
            draft,
            title: String::new(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            head_sha: A.into(),
            head_ref: "x".into(),
            head_repo: None,
            base_repo: None,
            author: None,
            closed_at: Some(at(closed_secs)),
            merged_at: merged.then(|| at(closed_secs)),
            updated_at: at(closed_secs),
            created_at: None,
            trigger: None,
        };
        let hours = |h: i64| h * 3600;
        let table = [
            (pr(PrState::Closed, false, true, &[], 0), Why::Merged),
            (pr(PrState::Closed, false, false, &[], 0), Why::Closed),
            (
                pr(PrState::Closed, false, true, &["preserve=true"], -hours(48)),
                Why::PinExpired,
            ),
            (pr(PrState::Open, true, false, &[], 0), Why::Draft),
            (pr(PrState::Open, false, false, &[], 0), Why::NotDeployed),
        ];
        for (pr, want) in table {
            assert_eq!(why_removed(&pr, &lifecycle, at(0)), want, "{pr:?}");
        }
    }
}
