//! What an environment's GitOps object says about it, as one of a few states a PR author cares about.
//! Pure: a Flux `Kustomization` or an Argo CD `Application` (as JSON) in, an [`Observed`] out. Only
//! the fields read are typed; anything else about the object is ignored, and an object prenv cannot
//! read is an error to log and skip, never a crash.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::model::labels;

/// The states reported on a PR, in lifecycle order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvState {
    /// Committed to the environments repository; the engine has not picked it up yet.
    Committed,
    /// The engine is applying it or waiting for it to become healthy.
    Reconciling,
    /// Applied and healthy for the head commit.
    Ready,
    /// The engine gave up or the workload is unhealthy; the reason says why.
    Failed(String),
    /// The environment is being deleted.
    Destroying,
    /// Gone.
    Destroyed,
}

impl EnvState {
    /// The stable word used in comments, markers and metrics.
    pub fn word(&self) -> &'static str {
        match self {
            EnvState::Committed => "committed",
            EnvState::Reconciling => "reconciling",
            EnvState::Ready => "ready",
            EnvState::Failed(_) => "failed",
            EnvState::Destroying => "destroying",
            EnvState::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for EnvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvState::Failed(reason) => write!(f, "failed: {reason}"),
            other => f.write_str(other.word()),
        }
    }
}

/// One environment as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub env: String,
    pub pr: u64,
    pub head_sha: String,
    pub url: Option<String>,
    pub state: EnvState,
    /// When the object was created in the cluster.
    pub created: Option<DateTime<Utc>>,
    /// The databases of the environment, as its object's annotation lists them.
    pub databases: Option<String>,
    /// Still terminating longer than the watcher's alert threshold after deletion started.
    pub stuck: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    metadata: Meta,
    #[serde(default)]
    status: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
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
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
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
}

#[derive(Deserialize)]
struct ArgoSync {
    status: Option<String>,
}

#[derive(Deserialize)]
struct ArgoHealth {
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ArgoOperation {
    phase: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ArgoCondition {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<String>,
}

/// Flux reasons that mean the reconciliation failed rather than is still going.
const FLUX_FAILURES: &[&str] = &[
    "BuildFailed",
    "HealthCheckFailed",
    "ArtifactFailed",
    "ReconciliationFailed",
    "PruneFailed",
    "DecryptionFailed",
    "InvalidPath",
];

/// An object read up to its status, and the observation without a state yet.
struct Read<S> {
    object: Object,
    status: S,
    observed: Observed,
}

fn read<S: serde::de::DeserializeOwned + Default>(value: &serde_json::Value, kind: &str) -> Result<Read<S>, String> {
    let object: Object = serde_json::from_value(value.clone()).map_err(|e| format!("unreadable {kind}: {e}"))?;
    let (env, pr, head_sha, url) = identity(&object)?;
    let status = match &object.status {
        Some(s) => serde_json::from_value(s.clone()).map_err(|e| format!("{env}: unreadable status: {e}"))?,
        None => S::default(),
    };
    let observed = Observed {
        env,
        pr,
        head_sha,
        url,
        state: EnvState::Committed,
        created: object.metadata.creation_timestamp,
        databases: object.metadata.annotations.get(labels::DATABASES).cloned(),
        stuck: false,
    };
    Ok(Read {
        object,
        status,
        observed,
    })
}

fn identity(obj: &Object) -> Result<(String, u64, String, Option<String>), String> {
    let m = &obj.metadata;
    let pr = m
        .labels
        .get(labels::PR)
        .ok_or_else(|| format!("{}: no {} label", m.name, labels::PR))?
        .parse::<u64>()
        .map_err(|_| format!("{}: label {} is not a PR number", m.name, labels::PR))?;
    let sha = m
        .annotations
        .get(labels::HEAD_SHA)
        .filter(|s| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{}: no valid {} annotation", m.name, labels::HEAD_SHA))?
        .clone();
    let env = m.labels.get(labels::ENV).cloned().unwrap_or_else(|| m.name.clone());
    Ok((env, pr, sha, m.annotations.get(labels::URL).cloned()))
}

/// Reads a Flux `kustomize.toolkit.fluxcd.io/v1` Kustomization prenv wrote.
pub fn from_flux(value: &serde_json::Value) -> Result<Observed, String> {
    let read: Read<FluxStatus> = read(value, "Kustomization")?;
    let (obj, status) = (&read.object, &read.status);
    let condition = |kind: &str| status.conditions.iter().find(|c| c.kind == kind);
    let current = obj.metadata.generation.is_some() && status.observed_generation == obj.metadata.generation;
    let reason = |c: &Condition| {
        let r = c.reason.clone().unwrap_or_else(|| "Unknown".into());
        match &c.message {
            Some(m) if !m.is_empty() => format!("{r}: {m}"),
            _ => r,
        }
    };
    let state = if obj.metadata.deletion_timestamp.is_some() {
        EnvState::Destroying
    } else if let Some(stalled) = condition("Stalled").filter(|c| c.status == "True") {
        EnvState::Failed(reason(stalled))
    } else {
        match condition("Ready") {
            None => EnvState::Committed,
            Some(ready) if ready.status == "True" && current => EnvState::Ready,
            Some(ready)
                if ready.status == "False"
                    && current
                    && ready.reason.as_deref().is_some_and(|r| FLUX_FAILURES.contains(&r)) =>
            {
                EnvState::Failed(reason(ready))
            }
            Some(_) => EnvState::Reconciling,
        }
    };
    Ok(Observed { state, ..read.observed })
}

/// Reads an Argo CD `argoproj.io/v1alpha1` Application generated by prenv's ApplicationSet.
pub fn from_argo(value: &serde_json::Value) -> Result<Observed, String> {
    let read: Read<ArgoStatus> = read(value, "Application")?;
    let (obj, status) = (&read.object, &read.status);
    let sync = status.sync.as_ref().and_then(|s| s.status.as_deref());
    let health = status.health.as_ref().and_then(|h| h.status.as_deref());
    let phase = status.operation_state.as_ref().and_then(|o| o.phase.as_deref());
    let error = status.conditions.iter().find(|c| c.kind.ends_with("Error"));
    let state = if obj.metadata.deletion_timestamp.is_some() {
        EnvState::Destroying
    } else if matches!(phase, Some("Failed" | "Error")) {
        let message = status
            .operation_state
            .as_ref()
            .and_then(|o| o.message.clone())
            .unwrap_or_default();
        EnvState::Failed(format!("sync {}: {message}", phase.unwrap_or_default()))
    } else if let Some(c) = error {
        EnvState::Failed(format!("{}: {}", c.kind, c.message.clone().unwrap_or_default()))
    } else if health == Some("Degraded") {
        let message = status
            .health
            .as_ref()
            .and_then(|h| h.message.clone())
            .unwrap_or_default();
        EnvState::Failed(format!("Degraded: {message}"))
    } else if sync == Some("Synced") && health == Some("Healthy") {
        EnvState::Ready
    } else if sync.is_none() && health.is_none() {
        EnvState::Committed
    } else {
        EnvState::Reconciling
    };
    Ok(Observed { state, ..read.observed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(generation: i64, deleting: bool) -> serde_json::Value {
        let mut m = json!({
            "name": "shop-pr-7", "namespace": "flux-system", "generation": generation,
            "creationTimestamp": "2026-11-24T12:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "prenv", "prenv.dev/pr": "7", "prenv.dev/env": "shop-pr-7"},
            "annotations": {"prenv.dev/head-sha": "a".repeat(40), "prenv.dev/url": "https://shop-pr-7.p.example.com"}
        });
        if deleting {
            m["deletionTimestamp"] = json!("2026-11-24T13:00:00Z");
        }
        m
    }

    fn flux(generation: i64, observed: i64, conditions: serde_json::Value, deleting: bool) -> serde_json::Value {
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": meta(generation, deleting),
            "spec": {"path": "./environments/shop-pr-7"},
            "status": {"observedGeneration": observed, "conditions": conditions, "lastAppliedRevision": "main@sha1:0123"}
        })
    }

    fn cond(kind: &str, status: &str, reason: &str) -> serde_json::Value {
        json!({"type": kind, "status": status, "reason": reason, "message": format!("{reason} happened"), "lastTransitionTime": "2026-11-24T12:01:00Z"})
    }

    #[test]
    fn flux_statuses_map_to_states() {
        let table = [
            ("no status yet", flux(1, 0, json!([]), false), "committed"),
            (
                "progressing",
                flux(
                    2,
                    2,
                    json!([
                        cond("Ready", "Unknown", "Progressing"),
                        cond("Reconciling", "True", "Progressing")
                    ]),
                    false,
                ),
                "reconciling",
            ),
            (
                "ready",
                flux(2, 2, json!([cond("Ready", "True", "ReconciliationSucceeded")]), false),
                "ready",
            ),
            (
                "ready for an older generation",
                flux(3, 2, json!([cond("Ready", "True", "ReconciliationSucceeded")]), false),
                "reconciling",
            ),
            (
                "health check failed",
                flux(2, 2, json!([cond("Ready", "False", "HealthCheckFailed")]), false),
                "failed",
            ),
            (
                "build failed",
                flux(2, 2, json!([cond("Ready", "False", "BuildFailed")]), false),
                "failed",
            ),
            (
                "stalled",
                flux(
                    2,
                    2,
                    json!([
                        cond("Stalled", "True", "InvalidPath"),
                        cond("Ready", "False", "InvalidPath")
                    ]),
                    false,
                ),
                "failed",
            ),
            (
                "dependency not ready is still going",
                flux(2, 2, json!([cond("Ready", "False", "DependencyNotReady")]), false),
                "reconciling",
            ),
            (
                "being deleted",
                flux(2, 2, json!([cond("Ready", "True", "ReconciliationSucceeded")]), true),
                "destroying",
            ),
        ];
        for (name, obj, want) in table {
            let got = from_flux(&obj).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.state.word(), want, "{name}: {:?}", got.state);
            assert_eq!((got.pr, got.env.as_str()), (7, "shop-pr-7"));
        }
        let failed = from_flux(&flux(2, 2, json!([cond("Ready", "False", "HealthCheckFailed")]), false)).unwrap();
        assert_eq!(
            failed.state,
            EnvState::Failed("HealthCheckFailed: HealthCheckFailed happened".into())
        );
    }

    fn argo(status: serde_json::Value, deleting: bool) -> serde_json::Value {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": meta(1, deleting), "status": status})
    }

    #[test]
    fn argo_statuses_map_to_states() {
        let table = [
            ("new", argo(json!({}), false), "committed"),
            (
                "out of sync",
                argo(
                    json!({"sync": {"status": "OutOfSync"}, "health": {"status": "Missing"}}),
                    false,
                ),
                "reconciling",
            ),
            (
                "progressing",
                argo(
                    json!({"sync": {"status": "Synced"}, "health": {"status": "Progressing"}}),
                    false,
                ),
                "reconciling",
            ),
            (
                "healthy",
                argo(
                    json!({"sync": {"status": "Synced", "revision": "abc"}, "health": {"status": "Healthy"}}),
                    false,
                ),
                "ready",
            ),
            (
                "degraded",
                argo(
                    json!({"sync": {"status": "Synced"}, "health": {"status": "Degraded", "message": "CrashLoopBackOff"}}),
                    false,
                ),
                "failed",
            ),
            (
                "sync failed",
                argo(
                    json!({"operationState": {"phase": "Failed", "message": "one or more objects failed"}}),
                    false,
                ),
                "failed",
            ),
            (
                "comparison error",
                argo(
                    json!({"conditions": [{"type": "ComparisonError", "message": "repo not found"}]}),
                    false,
                ),
                "failed",
            ),
            (
                "deleting",
                argo(
                    json!({"sync": {"status": "Synced"}, "health": {"status": "Healthy"}}),
                    true,
                ),
                "destroying",
            ),
        ];
        for (name, obj, want) in table {
            let got = from_argo(&obj).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.state.word(), want, "{name}: {:?}", got.state);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut no_pr = flux(1, 1, json!([]), false);
        no_pr["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("prenv.dev/pr");
        let mut bad_sha = flux(1, 1, json!([]), false);
        bad_sha["metadata"]["annotations"]["prenv.dev/head-sha"] = json!("not-a-sha");
        let mut bad_status = flux(1, 1, json!([]), false);
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
            assert!(from_argo(&obj).is_err(), "{name}");
        }
    }
}
