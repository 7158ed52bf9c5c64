//! `prenv init`: writes the platform scaffold ([`crate::manifests::scaffold`]) into a directory
//! without ever overwriting a file someone edited, unless asked to.

use std::path::Path;

use crate::adapters::fs::{self, Written};
use crate::error::Result;
use crate::manifests::scaffold;
use crate::model::config::Config;

/// Scaffolds the environments repository at `dir` for `config`'s engine.
pub fn init(config: &Config, dir: &Path, force: bool) -> Result<Written> {
    let tree = scaffold::scaffold(config)?;
    if !config.platform.alerts.any() {
        tracing::warn!(
            "no receiver in [platform.alerts]: Alertmanager will drop every alert (disk, memory, restarts); set slack_channel or email_to and run scripts/create-secrets alerts"
        );
    }
    if config.github.app_id.is_none() || config.github.installation_id.is_none() {
        tracing::warn!(
            "github.app_id or github.installation_id is not set: prenv serve and prenv watch in the cluster authenticate as a GitHub App (never a personal token); set both and run prenv init again"
        );
    }
    fs::write_keeping_edits(&tree, dir, force)
}
