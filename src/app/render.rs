//! `prenv render --out DIR`: the desired tree written into (or, with `--check`, compared with) a
//! directory, through the same pipeline as a sync.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::adapters::fs;
use crate::core::desired::{self, Desired, Inputs};
use crate::core::plan::Evidence;
use crate::core::ports::{NoMemory, PrSource};
use crate::error::Result;
use crate::model::config::Config;

/// What a render found and did.
pub struct Rendered {
    pub desired: Desired,
    /// Environments in the directory after the render.
    pub envs: usize,
}

/// Renders into `dir` (or only compares, with `check`): reads what the directory holds once, asks
/// `source` for the PRs (accounting for the environments found there), and writes the difference.
pub fn render(config: &Config, dir: &Path, source: &dyn PrSource, now: DateTime<Utc>, check: bool) -> Result<Rendered> {
    let current = fs::read_rendered(dir)?;
    let snapshot = source.snapshot(&current.prs_with_envs(&config.project_id))?;
    let evidence = Evidence {
        unconfirmed: snapshot.unconfirmed.clone(),
        ..Evidence::default()
    };
    let inputs = Inputs {
        config,
        prs: &snapshot.prs,
        evidence: &evidence,
        now,
        // A directory is not a shared repository: what it renders is what the snapshot says.
        allow_mass_prune: true,
        // A rendered directory is compared whole: a hand edit shows in --check and is restored.
        verified: &NoMemory,
    };
    let mut material = fs::load_material(config)?;
    let desired = desired::desired(&inputs, &current, &mut material)?;
    if !check {
        fs::apply_rendered(dir, &desired.upserts, &desired.changes.removed)?;
    }
    let envs = desired.plan.desired().count();
    Ok(Rendered { desired, envs })
}
