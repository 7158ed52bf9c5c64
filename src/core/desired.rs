//! The one desired-state pipeline, shared by `render`, `render --check`, `plan` and `sync`: from the
//! PRs, the config and what the repository holds now, to the decisions and the exact files to write
//! and remove. Pure but for the credential maker it is handed (randomness for new passwords).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::manifests::{render, templates};
use crate::model::config::{Config, Database};
use crate::model::layout::{BlobId, Place, secret_path};
use crate::model::meta::EnvMeta;
use crate::model::pr::PullRequest;
use crate::model::tree::Tree;
use crate::secrets::CredentialMaker;

use super::breaker;
use super::diff::{self, Changes};
use super::plan::{self, Action, Evidence, Plan};
use super::ports::RepoView;

/// Everything a run decides with, besides what the repository holds.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub prs: &'a [PullRequest],
    pub evidence: &'a Evidence,
    pub now: DateTime<Utc>,
    /// Lets the circuit breaker pass a mass prune, once.
    pub allow_mass_prune: bool,
    /// Render and compare environments whose metadata is unchanged too (a rendered directory,
    /// where hand edits must show); a sync trusts unchanged metadata to mean unchanged files.
    pub verify_unchanged: bool,
}

/// What a run wants: the decisions, the files that change, and the bytes to write.
#[derive(Debug, Clone)]
pub struct Desired {
    pub plan: Plan,
    pub changes: Changes,
    /// The files to write (added or modified, templates included).
    pub upserts: Tree,
}

/// Computes the desired state against `current`. New environments that need credentials get them
/// from `credentials`; existing credential files are kept byte for byte.
pub fn desired(inputs: &Inputs<'_>, current: &RepoView, credentials: &mut dyn CredentialMaker) -> Result<Desired> {
    let config = inputs.config;
    let mut plan = plan::plan_with(config, inputs.prs, &current.envs, inputs.now, inputs.evidence);
    breaker::check_mass_prune(&plan, current.envs.len(), &config.sync, inputs.allow_mass_prune)?;
    // An environment whose metadata (settings digest included) is unchanged renders to the files it
    // has: neither render nor compare it. This keeps a sync of one changed PR among thousands fast.
    let unchanged: BTreeSet<&str> = plan
        .desired()
        .filter(|m| !inputs.verify_unchanged && current.envs.get(&m.env) == Some(*m))
        .map(|m| m.env.as_str())
        .collect();
    let envs: Vec<&EnvMeta> = plan.desired().collect();
    let mut desired = render::render_selected(config, &envs, |m| !unchanged.contains(m.env.as_str()))?;
    let mut compared: BTreeMap<&str, BlobId> = current
        .owned
        .iter()
        .filter(|(path, _)| !Place::of(path).env().is_some_and(|env| unchanged.contains(env)))
        .map(|(p, id)| (p.as_str(), *id))
        .collect();
    for meta in envs
        .iter()
        .filter(|m| m.databases.contains(&Database::Mariadb) && !unchanged.contains(m.env.as_str()))
    {
        let path = secret_path(config, meta.env.as_str());
        // Credentials are generated once: an existing encrypted file is kept byte for byte.
        if compared.remove(path.as_str()).is_none() {
            desired.insert(path, credentials.mariadb_credentials(meta, inputs.now)?)?;
        }
    }
    let mut changes = diff::changes_of(&compared, &desired);
    let templates = templates::missing(|top| current.top_level.contains(top))?;
    for path in templates.paths() {
        changes.added.insert(path.to_string());
    }
    desired.extend(templates);
    mark_rerendered(&mut plan, &changes);
    let mut upserts = Tree::new();
    for path in changes.added.iter().chain(&changes.modified) {
        let bytes = desired.get(path).expect("changed paths come from the desired tree");
        upserts.insert(path.as_str(), bytes)?;
    }
    Ok(Desired { plan, changes, upserts })
}

/// Kept environments whose files change anyway (new settings or templates) are updates.
fn mark_rerendered(plan: &mut Plan, changes: &Changes) {
    let changed: BTreeSet<&str> = changes
        .added
        .iter()
        .chain(&changes.modified)
        .chain(&changes.removed)
        .filter_map(|p| match Place::of(p) {
            Place::EnvFile { env, .. } => Some(env),
            _ => None,
        })
        .collect();
    for d in plan
        .decisions
        .iter_mut()
        .filter(|d| d.action == Action::Keep && changed.contains(d.env.as_str()))
    {
        d.action = Action::Update;
        d.reason = "rendered files changed (new prenv.toml settings or templates)".into();
    }
}

/// The commit message: a summary line, then one line per environment that changes.
pub fn commit_message(plan: &Plan, changes: &Changes) -> String {
    let counts = [
        (Action::Create, "created"),
        (Action::Update, "updated"),
        (Action::Pin, "pinned"),
        (Action::Prune, "pruned"),
    ];
    let summary: Vec<String> = counts
        .iter()
        .filter(|(a, _)| plan.count(*a) > 0)
        .map(|(a, word)| format!("{} {word}", plan.count(*a)))
        .collect();
    let mut msg = if summary.is_empty() {
        format!("prenv: update wiring ({} files)\n", changes.len())
    } else {
        format!("prenv: {}\n", summary.join(", "))
    };
    msg.push('\n');
    let lines = plan.changing().map(|d| {
        let at = d
            .desired
            .as_ref()
            .map(|m| format!(" at {}", m.short_sha()))
            .unwrap_or_default();
        format!(
            "{:<6} {} (PR #{}{at}): {}\n",
            d.action.to_string(),
            d.env,
            d.pr,
            d.reason
        )
    });
    msg.extend(lines);
    msg
}
