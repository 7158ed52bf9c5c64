//! `prenv.json`, the metadata file of every environment: what prenv records about it, and its
//! `generator` field, the ownership mark. A directory without the mark is never prenv's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::{self, Database};
use super::naming::{self, EnvName};

/// The ownership mark: an environment directory without it is never touched.
pub const GENERATOR: &str = "prenv";
/// Bumped when the metadata layout changes incompatibly.
pub const META_SCHEMA: u32 = 1;

/// What prenv records about one environment, in `environments/<env>/prenv.json`. Later steps (sync,
/// the Argo CD generator, the watcher) read it; it holds nothing that changes without a reason to
/// redeploy, so an edited PR title or a new comment causes no commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvMeta {
    pub generator: String,
    pub schema: u32,
    pub env: EnvName,
    pub namespace: String,
    pub pr: u64,
    pub head_sha: String,
    pub head_ref: String,
    pub url: String,
    pub image: String,
    pub databases: Vec<Database>,
    /// When prenv first created this environment.
    #[serde(deserialize_with = "super::timestamp::instant")]
    pub created_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "super::timestamp::maybe_instant")]
    pub closed_at: Option<DateTime<Utc>>,
    pub merged: bool,
    /// Set on a closed, pinned PR: the environment is removed after this instant.
    #[serde(default, deserialize_with = "super::timestamp::maybe_instant")]
    pub preserve_until: Option<DateTime<Utc>>,
    /// [`config::Config::render_digest`] of the settings the environment was rendered with.
    #[serde(default)]
    pub render_digest: String,
    /// The PR's `updated_at` that produced this state: only information at least as new replaces
    /// it, so a late sync with an older snapshot never rolls an environment back.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::timestamp::maybe_instant"
    )]
    pub pr_updated_at: Option<DateTime<Utc>>,
    /// When prenv first committed this head commit to the environments repository: the watcher
    /// measures each push against the time budget from here.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::timestamp::maybe_instant"
    )]
    pub committed_at: Option<DateTime<Utc>>,
    /// The project (`project_id`) whose environment this is: with the mark, the ownership check
    /// of every run. Absent in metadata written before projects shared a repository; then the
    /// environment belongs to the project whose id prefixes its name ([`belongs_to`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// When the PR became deployable (`core::eligible`), recorded when the environment is created:
    /// the watcher measures the environment's first head from here (open→ready).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::timestamp::maybe_instant"
    )]
    pub eligible_at: Option<DateTime<Utc>>,
    /// A newer head whose image the registry does not have yet: the environment keeps running
    /// `head_sha`/`image` meanwhile, and the watcher reports the wait on this head's commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<ImageWait>,
    /// Set while the environment waits for room in the cluster (`[capacity]`): its files are in
    /// git, but its wiring is suspended, so nothing of it exists in the cluster yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Queued>,
}

/// An environment's place in the cluster's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// When the environment was first queued: the queue is first come, first served by it (ties
    /// by PR number), across every project of the repository.
    #[serde(deserialize_with = "super::timestamp::instant")]
    pub queued_at: DateTime<Utc>,
    /// Its place when this metadata was written, from 1: the environments ahead of it, every
    /// project's, plus one.
    pub position: u32,
    /// How many environments were queued then.
    pub of: u32,
}

/// The head an environment waits to move to, because its image is not in the registry yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageWait {
    /// The PR's head commit that is not deployed yet.
    pub sha: String,
    /// Its image, `repository:tag`.
    pub image: String,
    /// When prenv first found the head waiting: the head's start for the 10-minute budget.
    #[serde(deserialize_with = "super::timestamp::instant")]
    pub since: DateTime<Utc>,
}

impl EnvMeta {
    pub fn short_sha(&self) -> &str {
        &self.head_sha[..self.head_sha.len().min(config::SHORT_SHA_LEN)]
    }

    /// Waiting for the image of the head it has: nothing runs yet (a new PR whose first image CI
    /// has not pushed), so the app is held at zero replicas instead of failing to pull.
    pub fn holds_app(&self) -> bool {
        self.waiting_for.as_ref().is_some_and(|w| w.image == self.image)
    }

    /// Waiting for room in the cluster: nothing of it runs.
    pub fn is_queued(&self) -> bool {
        self.queued.is_some()
    }

    pub fn host(&self) -> &str {
        self.url.trim_start_matches("https://")
    }
}

/// The metadata of environment directory `dir`, when the file parses, carries the ownership mark
/// and names this very directory; otherwise why not, in words for the operator.
pub fn owned_meta(dir: &str, bytes: &[u8]) -> Result<EnvMeta, NotOwned> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| NotOwned::Unreadable(e.to_string()))?;
    if value.get("generator").and_then(|g| g.as_str()) != Some(GENERATOR) {
        return Err(NotOwned::Unmarked);
    }
    let meta: EnvMeta = serde_json::from_value(value).map_err(|e| NotOwned::Unreadable(e.to_string()))?;
    if meta.env.as_str() != dir {
        return Err(NotOwned::Unreadable(format!(
            "it names environment {:?}, not {dir:?}",
            meta.env.as_str()
        )));
    }
    Ok(meta)
}

/// Whether environment `meta` (already carrying the mark) is project `project_id`'s: its metadata
/// names that project, or, written before metadata named projects, its name is
/// `{project_id}-pr-{number}`. An environment of another project is never read as one's own.
pub fn belongs_to(meta: &EnvMeta, project_id: &str) -> bool {
    let named = naming::pr_of(project_id, meta.env.as_str()).is_some();
    match &meta.project {
        Some(project) => project == project_id && named,
        None => named,
    }
}

/// Why an environment directory's metadata does not make it prenv's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOwned {
    /// No ownership mark: someone's own directory.
    Unmarked,
    /// The mark may be there, but the file cannot be read as prenv's metadata.
    Unreadable(String),
}
