//! `prenv.json`, the metadata file of every environment: what prenv records about it, and its
//! `generator` field, the ownership mark. A directory without the mark is never prenv's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::{self, Database};
use super::naming::EnvName;

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
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub merged: bool,
    /// Set on a closed, pinned PR: the environment is removed after this instant.
    pub preserve_until: Option<DateTime<Utc>>,
    /// [`config::Config::render_digest`] of the settings the environment was rendered with.
    #[serde(default)]
    pub render_digest: String,
}

impl EnvMeta {
    pub fn short_sha(&self) -> &str {
        &self.head_sha[..self.head_sha.len().min(config::SHORT_SHA_LEN)]
    }

    pub fn host(&self) -> &str {
        self.url.trim_start_matches("https://")
    }
}

/// The metadata of environment directory `dir`, when the directory is prenv's: the file parses, carries
/// the ownership mark and names this very directory.
pub fn owned_meta(dir: &str, bytes: &[u8]) -> Option<EnvMeta> {
    match serde_json::from_slice::<EnvMeta>(bytes) {
        Ok(meta) if meta.generator == GENERATOR && meta.env.as_str() == dir => Some(meta),
        Ok(_) => {
            tracing::warn!(
                env = dir,
                "metadata file is not prenv's or names another environment; leaving it alone"
            );
            None
        }
        Err(e) => {
            tracing::warn!(env = dir, error = %e, "unreadable metadata file; leaving the directory alone");
            None
        }
    }
}
