//! What an environment's GitOps object says about the PR's head commit, read the way the controllers
//! write it. Pure: a Flux `Kustomization` or an Argo CD `Application` (as JSON) in, an [`Observation`]
//! out. Only the fields read are typed; an object prenv cannot read is an error to log and skip.
//!
//! The verdict is about the *head commit* (the `prenv.dev/head-sha` annotation), never about "the
//! object": a status still describing an older commit says [`Verdict::NotYet`], and the start of a
//! routine reconcile of a commit that was already applied says [`Verdict::Routine`]. Memory (a failure
//! that is being retried, what was reported) is the tracker's job (`core::tracker`), not this one's.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::config::SHORT_SHA_LEN;
use crate::model::labels;

/// When prenv committed the head to the environments repository. The renderer does not write it yet
/// (see the watcher's README section); without it the watcher falls back to the object's creation or
/// the moment it first saw the head.
pub const COMMITTED_AT: &str = crate::model::labels::COMMITTED_AT;
/// A controller message kept for the PR comment is cut to this many characters: enough for any
/// kustomize-controller or Argo CD message seen in practice, and the comment stays far below GitHub's
/// 65,536-character limit.
pub const MESSAGE_MAX: usize = 1_500;

/// What the controller's status says about the head commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The status does not describe the head yet: nothing reconciled (Flux: no Ready condition, or
    /// conditions stamped with an older generation; Argo CD: the empty status of a fresh Application,
    /// or a status whose workload still runs another commit of the PR).
    NotYet,
    /// The controller is applying the head or waiting for it to become healthy.
    Progressing,
    /// Blocked on something outside the environment (a Flux dependency), with the controller's words.
    Waiting(String),
    /// Applied and healthy for the head.
    Ready,
    /// The controller failed on the head.
    Failed(Failure),
    /// A routine reconcile of a generation that was applied before (every Flux `interval`, and every
    /// commit to the shared environments repository): it tells nothing new.
    Routine,
    /// Being deleted.
    Deleting,
}

/// A failure, as the controller reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The controller's reason: a Flux condition reason (`HealthCheckFailed`, `BuildFailed` …) or an
    /// Argo CD one (`SyncFailed`, `ComparisonError`, `Degraded` …).
    pub reason: String,
    /// The first failing object, `Kind/namespace/name`, when the controller names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The controller's message, on one line and without retry chatter, at most [`MESSAGE_MAX`].
    pub message: String,
}

impl Failure {
    fn new(reason: &str, object: Option<String>, message: &str) -> Failure {
        let message = one_line(message);
        let object = object.or_else(|| first_object(&message));
        Failure {
            reason: reason.to_string(),
            object,
            message: cut_end(&message, MESSAGE_MAX),
        }
    }

    /// The same failure: the same reason on the same object. A retry whose message differs only in a
    /// duration or a retry count is not news.
    pub fn same_as(&self, other: &Failure) -> bool {
        self.reason == other.reason && self.object == other.object
    }

    /// At most `max` characters that keep what tells the PR author what broke: the reason, the first
    /// failing object and the end of the message (an API error chain ends with its most specific
    /// cause), eliding the middle instead of cutting off the end.
    pub fn summary(&self, max: usize) -> String {
        let full = format!("{}: {}", self.reason, self.message);
        if full.chars().count() <= max {
            return full;
        }
        let head = match &self.object {
            Some(object) => format!("{} {object}: ", self.reason),
            None => format!("{}: ", self.reason),
        };
        let message = match &self.object {
            Some(object) => self
                .message
                .strip_prefix(object.as_str())
                .unwrap_or(&self.message)
                .trim_start(),
            None => &self.message,
        };
        let room = max.saturating_sub(head.chars().count() + 1);
        let tail = tail_at_word(message, room);
        let mut out = head;
        out.push('…');
        out.push_str(&tail);
        out.chars().take(max).collect()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary(MESSAGE_MAX))
    }
}

/// One environment object as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub env: String,
    pub pr: u64,
    pub head_sha: String,
    pub url: Option<String>,
    /// The databases, as the object's annotation lists them.
    pub databases: Option<String>,
    /// When the object was created in the cluster.
    pub created: Option<DateTime<Utc>>,
    /// The [`COMMITTED_AT`] annotation.
    pub committed_at: Option<DateTime<Utc>>,
    /// The `prenv.dev/eligible-at` annotation: when the PR became deployable.
    pub eligible_at: Option<DateTime<Utc>>,
    /// `metadata.deletionTimestamp`.
    pub deleting_since: Option<DateTime<Utc>>,
    /// When the controller last changed the condition the verdict rests on (Flux: Ready's
    /// `lastTransitionTime`; Argo CD: `status.health.lastTransitionTime`), for honest ready times.
    pub changed_at: Option<DateTime<Utc>>,
    pub verdict: Verdict,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    metadata: Meta,
    #[serde(default)]
    status: Option<serde_json::Value>,
    /// Argo CD: the requested operation, present until it completes.
    #[serde(default)]
    operation: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    creation_timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    deletion_timestamp: Option<DateTime<Utc>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FluxStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    observed_generation: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    observed_generation: Option<i64>,
    #[serde(default)]
    last_transition_time: Option<DateTime<Utc>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ArgoStatus {
    #[serde(default)]
    sync: Option<ArgoSync>,
    #[serde(default)]
    health: Option<ArgoHealth>,
    #[serde(default)]
    operation_state: Option<ArgoOperation>,
    #[serde(default)]
    conditions: Vec<ArgoCondition>,
    #[serde(default)]
    summary: Option<ArgoSummary>,
    #[serde(default)]
    resources: Vec<ArgoResource>,
}

#[derive(Deserialize)]
struct ArgoSync {
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArgoHealth {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    last_transition_time: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArgoOperation {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_count: Option<i64>,
    #[serde(default)]
    sync_result: Option<ArgoSyncResult>,
}

#[derive(Deserialize)]
struct ArgoSyncResult {
    #[serde(default)]
    resources: Vec<ArgoResource>,
}

#[derive(Deserialize)]
struct ArgoResource {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    health: Option<ArgoHealth>,
}

impl ArgoResource {
    fn id(&self) -> String {
        match self.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

#[derive(Deserialize)]
struct ArgoSummary {
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
struct ArgoCondition {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<String>,
}

/// An object read up to its status, and the observation without a verdict yet.
struct Read<S> {
    object: Object,
    status: S,
    observed: Observation,
}

fn read<S: serde::de::DeserializeOwned + Default>(value: &serde_json::Value, kind: &str) -> Result<Read<S>, String> {
    let object: Object = serde_json::from_value(value.clone()).map_err(|e| format!("unreadable {kind}: {e}"))?;
    let m = &object.metadata;
    let pr = m
        .labels
        .get(labels::PR)
        .ok_or_else(|| format!("{}: no {} label", m.name, labels::PR))?
        .parse::<u64>()
        .map_err(|_| format!("{}: label {} is not a PR number", m.name, labels::PR))?;
    let head_sha = m
        .annotations
        .get(labels::HEAD_SHA)
        .filter(|s| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{}: no valid {} annotation", m.name, labels::HEAD_SHA))?
        .to_ascii_lowercase();
    let env = m.labels.get(labels::ENV).cloned().unwrap_or_else(|| m.name.clone());
    let status = match &object.status {
        Some(s) => serde_json::from_value(s.clone()).map_err(|e| format!("{env}: unreadable status: {e}"))?,
        None => S::default(),
    };
    let observed = Observation {
        env,
        pr,
        head_sha,
        url: m.annotations.get(labels::URL).cloned(),
        databases: m.annotations.get(labels::DATABASES).cloned(),
        created: m.creation_timestamp,
        committed_at: m.annotations.get(COMMITTED_AT).and_then(|t| t.parse().ok()),
        eligible_at: m.annotations.get(labels::ELIGIBLE_AT).and_then(|t| t.parse().ok()),
        deleting_since: m.deletion_timestamp,
        changed_at: None,
        verdict: Verdict::NotYet,
    };
    Ok(Read {
        object,
        status,
        observed,
    })
}

/// Reads a Flux `kustomize.toolkit.fluxcd.io/v1` Kustomization prenv's wiring created, following
/// kustomize-controller v1.9.4 (`internal/controller/kustomization_controller.go`) and fluxcd/pkg
/// `runtime/conditions/setter.go`:
///
/// - Every condition carries its own `observedGeneration`, set to the generation the controller read
///   on success *and* failure (`conditions.Set`); `status.observedGeneration` moves only when a
///   reconcile succeeds (`finalizeStatus`), and stays -1 (the CRD default) until the first success.
///   So the generation a Ready condition speaks for is the condition's own `observedGeneration`, and
///   the head commit's generation is `metadata.generation` (the head SHA is in `spec.commonMetadata`,
///   so every new head bumps it).
/// - `reconcile` sets Ready=Unknown/Progressing before fetching anything, on *every* run, interval
///   runs included; on a generation that already succeeded (`status.observedGeneration ==
///   metadata.generation`) that is [`Verdict::Routine`].
/// - Ready=False is a failure for that generation whatever `status.observedGeneration` says, except
///   `DependencyNotReady` (`checkDependencies`: waiting, requeued every 30 s) and
///   `HealthCheckCanceled` (a newer revision cancelled the check). Any other reason is a failure, so a
///   reason added by a later controller version is reported rather than hidden as "reconciling".
/// - `Stalled=True` (`MarkStalled`: InvalidCELExpression, AccessDenied, FeatureGateDisabled) is
///   terminal until the next generation.
/// - A child can finish a run stamped with its *old* generation after the parent already bumped the
///   generation and the head annotation (conditions older than `metadata.generation`): not about the
///   head yet.
pub fn from_flux(value: &serde_json::Value) -> Result<Observation, String> {
    let read: Read<FluxStatus> = read(value, "Kustomization")?;
    let (meta, status) = (&read.object.metadata, &read.status);
    let generation = meta.generation.unwrap_or(0);
    let condition = |kind: &str| status.conditions.iter().find(|c| c.kind == kind);
    // A condition without observedGeneration (not written by v1) is taken to be current.
    let current = |c: &Condition| c.observed_generation.is_none_or(|g| g >= generation);
    let applied = status.observed_generation == Some(generation);
    let failure = |c: &Condition| {
        let reason = c.reason.as_deref().unwrap_or("Unknown");
        Failure::new(reason, None, c.message.as_deref().unwrap_or_default())
    };
    let ready = condition("Ready");
    let verdict = if meta.deletion_timestamp.is_some() {
        Verdict::Deleting
    } else if let Some(stalled) = condition("Stalled").filter(|c| c.status == "True" && current(c)) {
        Verdict::Failed(failure(stalled))
    } else {
        match ready {
            None => Verdict::NotYet,
            Some(r) if !current(r) => Verdict::NotYet,
            Some(r) if r.status == "True" => Verdict::Ready,
            Some(r) if r.status == "False" => match r.reason.as_deref() {
                Some("DependencyNotReady") if applied => Verdict::Routine,
                Some("DependencyNotReady") => Verdict::Waiting(one_line(r.message.as_deref().unwrap_or_default())),
                Some("HealthCheckCanceled") => Verdict::Progressing,
                _ => Verdict::Failed(failure(r)),
            },
            Some(_) if applied => Verdict::Routine,
            Some(_) => Verdict::Progressing,
        }
    };
    let observed = Observation {
        changed_at: ready.and_then(|r| r.last_transition_time),
        verdict,
        ..read.observed
    };
    Ok(queued(meta, waiting_for_image(meta, observed)))
}

/// Reads an Argo CD `argoproj.io/v1alpha1` Application generated by prenv's ApplicationSet, following
/// argo-cd v3.0.23 (`controller/appcontroller.go`, `controller/state.go`, `controller/sync.go`) and
/// gitops-engine `pkg/sync/sync_context.go`, `pkg/health/health.go`. `image` is the configured image
/// repository (`image` in prenv.toml), whose tag always contains the commit (`tag_template` must use
/// `{sha}` or `{short_sha}`).
///
/// - There is no status subresource (`manifests/crds/application-crd.yaml`: `subresources: {}`), so
///   every status write bumps `metadata.generation`: generation tells nothing here.
/// - A fresh Application carries the zero status (`sync.status: ""`, `health: {}`): not yet.
/// - The ApplicationSet updates the head annotation *before* the Application notices the new
///   revision; until then sync, health and the operation describe the previous commit. Only
///   `status.summary.images` (from the live tree, `ApplicationTree.GetSummary`) ties the running
///   workload to a commit: when it shows the PR's image at another commit and no operation is under
///   way, the status is not about the head yet.
/// - `autoSync` puts the request in `.operation` and clears `status.operationState`; the phase is
///   `Running` while syncing *and while retrying a failed attempt* (`retryCount > 0`, the error in
///   `message`); `Failed`/`Error` only after the last retry (`processRequestedAppOperation`). A
///   failing attempt is a failure at once, with the first object whose sync failed.
/// - `SyncError` ("Failed sync attempt to <rev>: …", set by the refresh after the last retry) is the
///   same failure as the failed operation; `ComparisonError`, `InvalidSpecError` and `UnknownError`
///   are failures of their own. A `ComparisonError` "app path does not exist" means the environment's
///   directory left git: its deletion is on the way, not a failure.
/// - Sync `Succeeded` means applied, "EVEN if those objects subsequently degraded"
///   (`syncContext.Sync`): ready needs Synced *and* Healthy; `Degraded` (a Deployment past
///   `progressDeadlineSeconds`) is a failure, with no message on the Application in v3.
pub fn from_argo(value: &serde_json::Value, image: &str) -> Result<Observation, String> {
    let read: Read<ArgoStatus> = read(value, "Application")?;
    let status = &read.status;
    let verdict = if read.object.metadata.deletion_timestamp.is_some() {
        Verdict::Deleting
    } else {
        argo_verdict(status, read.object.operation.is_some(), image, &read.observed.head_sha)
    };
    let observed = Observation {
        changed_at: status.health.as_ref().and_then(|h| h.last_transition_time),
        verdict,
        ..read.observed
    };
    let meta = &read.object.metadata;
    Ok(queued(meta, waiting_for_image(meta, observed)))
}

/// The verdict of a live (not deleting) Application; see [`from_argo`]. One ordered list of the
/// controller's signals (operation, retries, conditions, health), kept together on purpose: the
/// order is the semantics.
fn argo_verdict(status: &ArgoStatus, operation_requested: bool, image: &str, head: &str) -> Verdict {
    let sync = status
        .sync
        .as_ref()
        .and_then(|s| s.status.as_deref())
        .filter(|s| !s.is_empty());
    let health = status
        .health
        .as_ref()
        .and_then(|h| h.status.as_deref())
        .filter(|s| !s.is_empty());
    let op = status.operation_state.as_ref();
    let phase = op.and_then(|o| o.phase.as_deref());
    let running = operation_requested || matches!(phase, Some("Running" | "Terminating"));
    if sync.is_none() && health.is_none() && op.is_none() && !operation_requested {
        return Verdict::NotYet;
    }
    if !running && runs_another_commit(status, image, head) {
        return Verdict::NotYet;
    }
    let sync_failure = |o: &ArgoOperation| {
        let failed = o
            .sync_result
            .iter()
            .flat_map(|r| &r.resources)
            .find(|r| matches!(r.status.as_deref(), Some("SyncFailed")))
            .map(ArgoResource::id);
        let reason = if phase == Some("Error") {
            "SyncError"
        } else {
            "SyncFailed"
        };
        Failure::new(reason, failed, &strip_retry(o.message.as_deref().unwrap_or_default()))
    };
    if let Some(o) = op {
        let retrying = o.retry_count.unwrap_or(0) > 0 && o.message.as_deref().is_some_and(|m| !m.is_empty());
        if (phase == Some("Running") && retrying) || (matches!(phase, Some("Failed" | "Error")) && !running) {
            return Verdict::Failed(sync_failure(o));
        }
    }
    if running {
        return Verdict::Progressing;
    }
    if let Some(c) = status.conditions.iter().find(|c| c.kind.ends_with("Error")) {
        let message = c.message.as_deref().unwrap_or_default();
        return match (c.kind.as_str(), op) {
            ("ComparisonError", _) if message.contains("app path does not exist") => Verdict::Progressing,
            ("SyncError", Some(o)) => Verdict::Failed(sync_failure(o)),
            (kind, _) => Verdict::Failed(Failure::new(kind, None, message)),
        };
    }
    match (sync, health) {
        (_, Some("Degraded")) => {
            let object = status
                .resources
                .iter()
                .find(|r| r.health.as_ref().and_then(|h| h.status.as_deref()) == Some("Degraded"))
                .map(ArgoResource::id);
            Verdict::Failed(Failure::new(
                "Degraded",
                object,
                "Argo CD reports the application Degraded: a workload is unhealthy (e.g. a Deployment past its progress deadline); see the resource tree in Argo CD",
            ))
        }
        (Some("Synced"), Some("Healthy")) => Verdict::Ready,
        _ => Verdict::Progressing,
    }
}

/// What the watcher reads of an environment that waits for a newer head's image (prenv.json's
/// `waiting_for`, carried by the [`labels::WAITING_FOR_SHA`] annotations): the PR's head is that
/// commit, and it is waiting, whatever the controller says of the head still running, so the PR
/// shows "waiting for image …" as pending on the commit it is about. Argo CD renders the
/// annotations empty when there is no wait; a deletion stays a deletion.
fn waiting_for_image(meta: &Meta, observed: Observation) -> Observation {
    let get = |key: &str| meta.annotations.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let sha =
        get(labels::WAITING_FOR_SHA).filter(|s| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let (Some(sha), Some(image)) = (sha, get(labels::WAITING_FOR_IMAGE)) else {
        return observed;
    };
    if observed.verdict == Verdict::Deleting {
        return observed;
    }
    Observation {
        head_sha: sha.to_ascii_lowercase(),
        committed_at: get(labels::WAITING_SINCE)
            .and_then(|t| t.parse().ok())
            .or(observed.committed_at),
        changed_at: None,
        verdict: Verdict::Waiting(format!("{IMAGE_WAIT} {}", cut_end(image, MESSAGE_MAX))),
        ..observed
    }
}

/// What the watcher reads of an environment queued for room in the cluster (prenv.json's
/// `queued`, carried by the [`labels::QUEUED_POSITION`] annotations; Argo CD renders them empty
/// when it is not queued): it waits, in words the PR shows ("queued, position 2 of 3"), whatever
/// the controller says of an object it does not apply (a suspended Flux Kustomization has no
/// status; an Application without automated sync is OutOfSync). A deletion stays a deletion.
fn queued(meta: &Meta, observed: Observation) -> Observation {
    let number = |key: &str| meta.annotations.get(key).and_then(|v| v.trim().parse::<u32>().ok());
    let (Some(position), Some(of)) = (number(labels::QUEUED_POSITION), number(labels::QUEUED_OF)) else {
        return observed;
    };
    if observed.verdict == Verdict::Deleting {
        return observed;
    }
    Observation {
        changed_at: None,
        verdict: Verdict::Waiting(crate::core::capacity::words(position, of)),
        ..observed
    }
}

/// How the wait for a head's image begins in words (the commit status and the comment show it):
/// the tracker knows an image wait by it.
pub const IMAGE_WAIT: &str = "waiting for image";

/// The live tree shows the PR's image at another commit than `head`, and not at `head`.
fn runs_another_commit(status: &ArgoStatus, image: &str, head: &str) -> bool {
    let short = &head[..head.len().min(SHORT_SHA_LEN)];
    let tags: Vec<&str> = status
        .summary
        .iter()
        .flat_map(|s| &s.images)
        .filter_map(|i| {
            i.rsplit_once(':')
                .filter(|(repo, _)| *repo == image)
                .map(|(_, tag)| tag)
        })
        .collect();
    !tags.is_empty() && !tags.iter().any(|t| t.contains(short))
}

/// An Argo CD operation message without the retry chatter that changes on every attempt
/// (`processRequestedAppOperation`: "… due to application controller sync timeout. Retrying attempt
/// #N at 3:04PM." in v2.14–v3.1, ". Retrying attempt #N at …" later, " (retried N times).").
fn strip_retry(message: &str) -> String {
    static RETRY: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?: due to application controller sync timeout)?\. Retrying attempt #\d+ at .*$|\s*\(retried \d+ times\)\.?$")
            .expect("a valid pattern")
    });
    RETRY.replace(message.trim(), "").into_owned()
}

/// The first `Kind/namespace/name` (or `Kind/name`) a controller message names: kustomize-controller
/// formats objects with `ssautil.FmtObjMetadata` / kstatus `ObjMetadata` as `Kind/ns/name`.
fn first_object(message: &str) -> Option<String> {
    static OBJECT: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"\b[A-Z][A-Za-z0-9]*/[a-z0-9][a-z0-9.-]*(?:/[a-z0-9][a-z0-9.-]*)?").expect("a valid pattern")
    });
    OBJECT.find(message).map(|m| m.as_str().to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s` cut to `max` characters at the end, marked.
fn cut_end(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The last `room` characters of `s`, starting at a word when one starts close enough.
fn tail_at_word(s: &str, room: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let start = chars.len().saturating_sub(room);
    let tail: String = chars[start..].iter().collect();
    match tail.find(' ') {
        Some(i) if start > 0 && i < room / 4 => tail[i + 1..].to_string(),
        _ => tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
    const IMAGE: &str = "ghcr.io/acme/shop";

    fn object(kind: &str, generation: i64, deleting: bool, status: serde_json::Value) -> serde_json::Value {
        let mut o = json!({
            "apiVersion": "x/v1", "kind": kind,
            "metadata": {
                "name": "shop-pr-7", "generation": generation, "creationTimestamp": "2026-11-24T12:00:00Z",
                "labels": {"prenv.dev/pr": "7", "prenv.dev/env": "shop-pr-7"},
                "annotations": {"prenv.dev/head-sha": SHA, "prenv.dev/url": "https://shop-pr-7.p.example.com"}
            },
            "status": status
        });
        if deleting {
            o["metadata"]["deletionTimestamp"] = json!("2026-11-24T13:00:00Z");
        }
        o
    }

    /// A Kustomization at generation 2 with `observedGeneration` `og` and conditions
    /// `(type, status, reason, condition observedGeneration)`.
    fn flux(og: i64, conditions: &[(&str, &str, &str, i64)]) -> serde_json::Value {
        let conditions: Vec<_> = conditions
            .iter()
            .map(|(t, s, r, g)| json!({"type": t, "status": s, "reason": r, "observedGeneration": g, "message": format!("{r} for Deployment/shop-pr-7/app"), "lastTransitionTime": "2026-11-24T12:01:00Z"}))
            .collect();
        object(
            "Kustomization",
            2,
            false,
            json!({"observedGeneration": og, "conditions": conditions}),
        )
    }

    fn word(v: &Verdict) -> &'static str {
        match v {
            Verdict::NotYet => "not-yet",
            Verdict::Progressing => "progressing",
            Verdict::Waiting(_) => "waiting",
            Verdict::Ready => "ready",
            Verdict::Failed(_) => "failed",
            Verdict::Routine => "routine",
            Verdict::Deleting => "deleting",
        }
    }

    #[test]
    fn flux_conditions_speak_for_their_own_generation() {
        let (ready, unknown, failed) = (
            ("Ready", "True", "ReconciliationSucceeded"),
            ("Ready", "Unknown", "Progressing"),
            ("Ready", "False", "HealthCheckFailed"),
        );
        let at = |(t, s, r): (&'static str, &'static str, &'static str), g| (t, s, r, g);
        type Row<'a> = (&'a str, i64, Vec<(&'a str, &'a str, &'a str, i64)>, &'a str);
        let table: &[Row] = &[
            ("nothing reconciled yet", -1, vec![], "not-yet"),
            ("first run starting", -1, vec![at(unknown, 2)], "progressing"),
            (
                "a failed first deploy keeps observedGeneration -1",
                -1,
                vec![at(failed, 2)],
                "failed",
            ),
            (
                "a failed new commit keeps the old observedGeneration",
                1,
                vec![at(failed, 2)],
                "failed",
            ),
            ("ready for the head's generation", 2, vec![at(ready, 2)], "ready"),
            ("ready, status write not landed yet", 1, vec![at(ready, 2)], "ready"),
            (
                "ready for the old generation: the head is not reconciled",
                1,
                vec![at(ready, 1)],
                "not-yet",
            ),
            (
                "interval run of an applied generation",
                2,
                vec![at(unknown, 2)],
                "routine",
            ),
            (
                "retry of a never-applied generation",
                1,
                vec![at(unknown, 2)],
                "progressing",
            ),
            (
                "dependency not ready on a new generation",
                1,
                vec![("Ready", "False", "DependencyNotReady", 2)],
                "waiting",
            ),
            (
                "dependency behind on an applied generation",
                2,
                vec![("Ready", "False", "DependencyNotReady", 2)],
                "routine",
            ),
            (
                "health check cancelled by a newer revision",
                1,
                vec![("Ready", "False", "HealthCheckCanceled", 2)],
                "progressing",
            ),
            (
                "a reason Flux adds later is still a failure",
                1,
                vec![("Ready", "False", "SomethingNew", 2)],
                "failed",
            ),
            (
                "stalled",
                1,
                vec![
                    ("Stalled", "True", "InvalidCELExpression", 2),
                    ("Ready", "False", "InvalidCELExpression", 2),
                ],
                "failed",
            ),
        ];
        for (name, og, conditions, want) in table {
            let got = from_flux(&flux(*og, conditions)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(word(&got.verdict), *want, "{name}: {:?}", got.verdict);
        }
        let deleting = object("Kustomization", 3, true, json!({"observedGeneration": 2}));
        assert_eq!(from_flux(&deleting).unwrap().verdict, Verdict::Deleting);
    }

    /// An Application with the given status, `.operation` requested or not.
    fn argo(status: serde_json::Value, requested: bool) -> serde_json::Value {
        let mut o = object("Application", 9, false, status);
        if requested {
            o["operation"] = json!({"sync": {"revision": "abc"}});
        }
        o
    }

    fn images(tag: &str) -> serde_json::Value {
        json!({"images": [format!("{IMAGE}:{tag}"), "ghcr.io/cloudnative-pg/postgresql:17.2"]})
    }

    #[test]
    fn argo_statuses_are_read_for_the_head_commit() {
        let zero =
            json!({"health": {}, "summary": {}, "sync": {"comparedTo": {"source": {"repoURL": ""}}, "status": ""}});
        let (head, old) = (images("pr-7-3f78685"), images("pr-7-b5e5ed6"));
        let failing = json!({"phase": "Running", "retryCount": 1, "message": "one or more objects failed to apply, reason: denied. Retrying attempt #1 at 12:01PM.",
            "syncResult": {"resources": [{"kind": "Cluster", "namespace": "shop-pr-7", "name": "db", "status": "SyncFailed"}]}});
        let table: Vec<(&str, serde_json::Value, bool, &str)> = vec![
            ("fresh Application: the zero status", zero, false, "not-yet"),
            (
                "auto-sync requested",
                json!({"sync": {"status": "OutOfSync"}}),
                true,
                "progressing",
            ),
            (
                "sync running",
                json!({"sync": {"status": "OutOfSync"}, "operationState": {"phase": "Running"}}),
                false,
                "progressing",
            ),
            (
                "a failed attempt being retried",
                json!({"sync": {"status": "OutOfSync"}, "operationState": failing}),
                false,
                "failed",
            ),
            (
                "synced, rolling out",
                json!({"sync": {"status": "Synced"}, "health": {"status": "Progressing"}, "summary": head}),
                false,
                "progressing",
            ),
            (
                "synced and healthy at the head",
                json!({"sync": {"status": "Synced"}, "health": {"status": "Healthy"}, "summary": head}),
                false,
                "ready",
            ),
            (
                "healthy, but still the previous commit",
                json!({"sync": {"status": "Synced"}, "health": {"status": "Healthy"}, "summary": old}),
                false,
                "not-yet",
            ),
            (
                "degraded at the previous commit",
                json!({"sync": {"status": "Synced"}, "health": {"status": "Degraded"}, "summary": old}),
                false,
                "not-yet",
            ),
            (
                "degraded at the head",
                json!({"sync": {"status": "Synced"}, "health": {"status": "Degraded"}, "summary": head}),
                false,
                "failed",
            ),
            (
                "comparison error",
                json!({"sync": {"status": "Unknown"}, "conditions": [{"type": "ComparisonError", "message": "rpc error"}]}),
                false,
                "failed",
            ),
            (
                "its directory left git",
                json!({"sync": {"status": "Unknown"}, "conditions": [{"type": "ComparisonError", "message": "environments/shop-pr-7: app path does not exist"}]}),
                false,
                "progressing",
            ),
            (
                "a warning is not a failure",
                json!({"sync": {"status": "Synced"}, "health": {"status": "Healthy"}, "conditions": [{"type": "OrphanedResourceWarning"}]}),
                false,
                "ready",
            ),
        ];
        for (name, status, requested, want) in table {
            let got = from_argo(&argo(status, requested), IMAGE).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(word(&got.verdict), want, "{name}: {:?}", got.verdict);
        }
        let deleting = object("Application", 9, true, json!({"sync": {"status": "Synced"}}));
        assert_eq!(from_argo(&deleting, IMAGE).unwrap().verdict, Verdict::Deleting);
    }

    #[test]
    fn a_failure_names_its_reason_and_first_object_within_the_limit() {
        let health = Failure::new(
            "HealthCheckFailed",
            None,
            "health check failed after 5m0.031s: timeout waiting for: [Deployment/shop-pr-101/app status: 'InProgress']\n",
        );
        assert_eq!(health.object.as_deref(), Some("Deployment/shop-pr-101/app"));
        let webhook = "Cluster/shop-pr-101/db dry-run failed (Invalid): admission webhook \"vcluster.cnpg.io\" denied the request: Cluster.postgresql.cnpg.io \"db\" is invalid: spec.storage.size: Invalid value: \"1Gi\": can't shrink existing storage from 2Gi to 1Gi\n";
        let apply = Failure::new("ReconciliationFailed", None, webhook);
        let summary = apply.summary(140);
        assert!(summary.chars().count() <= 140, "{summary}");
        assert!(
            summary.starts_with("ReconciliationFailed Cluster/shop-pr-101/db: …"),
            "{summary}"
        );
        assert!(
            summary.ends_with("can't shrink existing storage from 2Gi to 1Gi"),
            "{summary}"
        );
        let argo = Failure::new(
            "SyncFailed",
            Some("Cluster/shop-pr-101/db".into()),
            &strip_retry(
                "one or more objects failed to apply, reason: denied due to application controller sync timeout. Retrying attempt #3 at 12:03PM.",
            ),
        );
        assert_eq!(argo.message, "one or more objects failed to apply, reason: denied");
        let again = Failure::new(
            "SyncFailed",
            Some("Cluster/shop-pr-101/db".into()),
            &strip_retry("one or more objects failed to apply, reason: denied (retried 5 times)."),
        );
        assert!(argo.same_as(&again) && argo.message == again.message);
        assert!(!argo.same_as(&health));
        assert_eq!(health.summary(500), format!("HealthCheckFailed: {}", health.message));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut no_pr = flux(1, &[]);
        no_pr["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("prenv.dev/pr");
        let mut bad_sha = flux(1, &[]);
        bad_sha["metadata"]["annotations"]["prenv.dev/head-sha"] = json!("not-a-sha");
        let mut bad_status = flux(1, &[]);
        bad_status["status"] = json!({"conditions": "nope"});
        for (name, obj) in [
            ("null", json!(null)),
            ("string", json!("x")),
            ("no metadata", json!({"kind": "Kustomization"})),
            ("no pr label", no_pr),
            ("bad sha", bad_sha),
            ("bad status", bad_status),
        ] {
            assert!(from_flux(&obj).is_err(), "{name}");
            assert!(from_argo(&obj, IMAGE).is_err(), "{name}");
        }
    }

    #[test]
    fn the_times_prenv_recorded_are_read_from_the_annotations_and_blanks_ignored() {
        let mut o = flux(2, &[("Ready", "True", "ReconciliationSucceeded", 2)]);
        o["metadata"]["annotations"]["prenv.dev/eligible-at"] = json!("2026-11-24T11:58:00Z");
        o["metadata"]["annotations"]["prenv.dev/committed-at"] = json!("2026-11-24T11:59:00Z");
        let seen = from_flux(&o).unwrap();
        assert_eq!(seen.eligible_at, Some("2026-11-24T11:58:00Z".parse().unwrap()));
        assert_eq!(seen.committed_at, Some("2026-11-24T11:59:00Z".parse().unwrap()));
        // What the ApplicationSet template makes of a prenv.json older than the key (Go
        // text/template prints a missing map value as "<no value>"), and a blank: no time.
        for blank in ["<no value>", ""] {
            o["metadata"]["annotations"]["prenv.dev/eligible-at"] = json!(blank);
            assert_eq!(from_flux(&o).unwrap().eligible_at, None, "{blank:?}");
        }
    }

    #[test]
    fn a_queued_environment_waits_with_its_place_whatever_the_controller_says() {
        let queued = |mut o: serde_json::Value, position: &str, of: &str| {
            o["metadata"]["annotations"]["prenv.dev/queued-position"] = json!(position);
            o["metadata"]["annotations"]["prenv.dev/queued-of"] = json!(of);
            o
        };
        // A suspended Kustomization never gets a status; an Application without automated sync
        // sits OutOfSync and Missing.
        let suspended = object("Kustomization", 1, false, json!(null));
        let unsynced = argo(
            json!({"sync": {"status": "OutOfSync"}, "health": {"status": "Missing"}}),
            false,
        );
        for (name, seen) in [
            ("flux", from_flux(&queued(suspended.clone(), "2", "3")).unwrap()),
            ("argo", from_argo(&queued(unsynced.clone(), "2", "3"), IMAGE).unwrap()),
        ] {
            assert_eq!(
                seen.verdict,
                Verdict::Waiting("queued, position 2 of 3".into()),
                "{name}"
            );
        }
        // Argo CD renders the annotations empty for an environment that is not queued.
        let not_queued = from_argo(&queued(unsynced, "", ""), IMAGE).unwrap();
        assert_eq!(word(&not_queued.verdict), "progressing");
        assert_eq!(from_flux(&suspended).unwrap().verdict, Verdict::NotYet);
        // A deletion is a deletion.
        let deleting = object("Kustomization", 1, true, json!(null));
        assert_eq!(
            from_flux(&queued(deleting, "1", "1")).unwrap().verdict,
            Verdict::Deleting
        );
    }
}
