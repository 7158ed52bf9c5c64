//! The one desired-state pipeline, shared by `render`, `render --check`, `plan` and `sync`: from the
//! PRs, the config and what the repository holds now, to the decisions and the exact files to write
//! and remove. Pure but for the credential maker it is handed (randomness for new passwords).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::manifests::{render, templates};
use crate::model::config::{Config, Database};
use crate::model::layout::{
    self, ARGOCD_APPLICATIONSET, ARGOCD_DIR, BlobId, Place, TreeId, argocd_project_of, env_dir, flux_file, secret_path,
};
use crate::model::meta::EnvMeta;
use crate::model::pr::PullRequest;
use crate::model::tree::Tree;
use crate::secrets::CredentialMaker;

use super::breaker;
use super::diff::{self, Changes};
use super::plan::{self, Action, Evidence, Plan};
use super::ports::{RepoView, Verifications};

/// Everything a run decides with, besides what the repository holds.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub prs: &'a [PullRequest],
    pub evidence: &'a Evidence,
    pub now: DateTime<Utc>,
    /// Lets the circuit breaker pass a mass prune, once.
    pub allow_mass_prune: bool,
    /// What earlier runs verified: environments known to be exactly as rendered.
    pub verified: &'a dyn Verifications,
}

/// What a run wants: the decisions, the files that change, and the bytes to write.
#[derive(Debug, Clone)]
pub struct Desired {
    pub plan: Plan,
    pub changes: Changes,
    /// The files to write (added or modified, templates included).
    pub upserts: Tree,
    /// Environment directories (tree id, wiring blob id) exactly as rendered once this run's files
    /// are written: for the caller's verification memory.
    pub verified: Vec<(TreeId, Option<BlobId>)>,
    /// Files that are not prenv's inside its directories: kept, reported.
    pub strays: BTreeSet<String>,
}

/// Computes the desired state against `current`. New environments that need credentials get them
/// from `credentials`; existing credential files are kept byte for byte. Every owned environment
/// is compared with its rendering (unless `verified` knows its content), so drift is restored;
/// paths prenv does not own, or must leave alone, are never compared, written or removed. The one
/// pipeline, longer than most functions so that its steps read in order.
pub fn desired(inputs: &Inputs<'_>, current: &RepoView, credentials: &mut dyn CredentialMaker) -> Result<Desired> {
    let config = inputs.config;
    let mut plan = plan::plan_knowing(
        config,
        inputs.prs,
        current,
        inputs.now,
        inputs.evidence,
        inputs.verified,
    );
    let own_envs = current.envs_of(&config.project_id).count();
    breaker::check_mass_prune(&plan, own_envs, &config.sync, inputs.allow_mass_prune)?;
    let untouched: BTreeSet<&str> = untouched(config, &plan, current);
    // An environment whose metadata is unchanged and whose content is known to be as rendered
    // needs neither render nor compare: a sync of one changed PR among thousands stays fast.
    let trusted: BTreeSet<&str> = plan
        .desired()
        .filter(|m| current.envs.get(m.env.as_str()) == Some(*m))
        .filter(|m| {
            current
                .envs
                .entry(m.env.as_str())
                .is_some_and(|e| e.tree.is_some_and(|tree| inputs.verified.knows(tree, e.wiring)))
        })
        .map(|m| m.env.as_str())
        .collect();
    let envs: Vec<&EnvMeta> = plan.desired().collect();
    let kept: Vec<&str> = untouched
        .iter()
        .copied()
        .filter(|env| current.owned_id(&flux_file(env)).is_some())
        .collect();
    let argo_kept = other_applicationsets(config, current);
    let around = render::Around {
        kept,
        argo_kept: argo_kept
            .iter()
            .map(|p| p.trim_start_matches(&format!("{ARGOCD_DIR}/")).to_string())
            .collect(),
        templates: current.templates.clone(),
    };
    let mut desired = render::render_selected(config, &envs, &around, |m| !trusted.contains(m.env.as_str()))?;
    let mut compared: BTreeMap<String, BlobId> = current
        .owned_files(|env| !trusted.contains(env) && !untouched.contains(env))
        .into_iter()
        .filter(|(path, _)| !argo_kept.contains(path.as_str()))
        .collect();
    for meta in envs
        .iter()
        .filter(|m| m.databases.contains(&Database::Mariadb) && !trusted.contains(m.env.as_str()))
    {
        let path = secret_path(config, meta.env.as_str());
        // Credentials are generated once: an existing encrypted file is kept byte for byte.
        if compared.remove(path.as_str()).is_none() {
            desired.insert(path, credentials.mariadb_credentials(meta, inputs.now)?)?;
        }
    }
    let mut changes = diff::changes_of(&compared, &desired);
    // The defaults are added where the repository has none, unless this project builds only on its own.
    let own_base = current.templates.contains(&layout::project_base(&config.project_id));
    let own_overlays = config.databases.iter().all(|db| {
        current
            .templates
            .contains(&layout::project_overlay(&config.project_id, db.name()))
    });
    let uses_default = |top: &str| match top {
        layout::BASE_DIR => !own_base,
        layout::OVERLAYS_DIR => !own_overlays,
        _ => true,
    };
    let templates = templates::missing(|top| current.top_level.contains(top) || !uses_default(top))?;
    changes.added.extend(templates.paths().map(String::from));
    desired.extend(templates);
    refuse_obstacles(current, &changes)?;
    let verified = newly_verified(&envs, &trusted, current, &desired, &changes);
    explain_rerendered(&mut plan, &changes, current);
    // The files to write are the changed part of the desired tree, moved, not copied: a full
    // sync of thousands of environments holds their bytes once.
    let mut upserts = desired;
    upserts.retain(|p| changes.added.contains(p) || changes.modified.contains(p));
    Ok(Desired {
        plan,
        changes,
        upserts,
        verified,
        strays: current.strays.clone(),
    })
}

/// Environment names whose paths this run leaves exactly as they are: blocked ones (not prenv's,
/// or unreadable), ones kept without metadata to render from (wiring whose directory is gone),
/// and every other project's.
fn untouched<'a>(config: &Config, plan: &'a Plan, current: &'a RepoView) -> BTreeSet<&'a str> {
    let kept_bare = plan
        .decisions
        .iter()
        .filter(|d| d.action == Action::Blocked || (d.action == Action::Keep && d.desired.is_none()))
        .map(|d| d.env.as_str());
    let project = &config.project_id;
    let others = current
        .envs
        .entries()
        .filter(|(env, entry)| !entry.belongs_to(env.as_str(), project))
        .map(|(env, _)| env.as_str());
    let others_wired = current
        .wired_only
        .iter()
        .filter(|env| plan::pr_of(config, env.as_str()).is_none())
        .map(crate::model::naming::EnvName::as_str);
    current
        .blocked
        .keys()
        .map(String::as_str)
        .chain(kept_bare)
        .chain(others)
        .chain(others_wired)
        .collect()
}

/// The Argo CD wiring files that are other projects' ApplicationSets (their own files, or the
/// file from before projects when it names another project): kept and listed as they are.
fn other_applicationsets(config: &Config, current: &RepoView) -> BTreeSet<String> {
    let project = config.project_id.as_str();
    current
        .owned
        .keys()
        .filter(|path| {
            let Some(file) = path.strip_prefix(&format!("{ARGOCD_DIR}/")) else {
                return false;
            };
            match argocd_project_of(file) {
                Some(owner) => owner != project,
                None => {
                    path.as_str() == ARGOCD_APPLICATIONSET && current.argo_legacy_project.as_deref() != Some(project)
                }
            }
        })
        .cloned()
        .collect()
}

/// An error when something would be written below a directory that exists as something else.
fn refuse_obstacles(current: &RepoView, changes: &Changes) -> Result<()> {
    for obstacle in &current.obstacles {
        let prefix = format!("{obstacle}/");
        if changes
            .added
            .iter()
            .chain(&changes.modified)
            .any(|p| p.starts_with(&prefix))
        {
            return Err(Error::Obstacle { path: obstacle.clone() });
        }
    }
    Ok(())
}

/// Environments whose content is known once this run's files are written: every rendered
/// environment (unchanged or rewritten), as the tree id its directory holds afterwards — predicted
/// from the rendered bytes and the files kept, exactly as git names it — and its wiring's blob id.
/// A directory holding files that are not prenv's is left out: its tree cannot be predicted.
fn newly_verified(
    envs: &[&EnvMeta],
    trusted: &BTreeSet<&str>,
    current: &RepoView,
    desired: &Tree,
    changes: &Changes,
) -> Vec<(TreeId, Option<BlobId>)> {
    let removed = |path: &str| changes.removed.contains(path);
    envs.iter()
        .filter(|m| !trusted.contains(m.env.as_str()))
        .filter(|m| {
            let dir = format!("{}/", env_dir(m.env.as_str()));
            current
                .strays
                .range(dir.clone()..)
                .next()
                .is_none_or(|p| !p.starts_with(&dir))
        })
        .map(|m| {
            let files = diff::env_files_after(m.env.as_str(), current, desired, removed);
            let wiring = match desired.get(&flux_file(m.env.as_str())) {
                Some(bytes) => Some(BlobId::of(bytes)),
                None => current.owned_id(&flux_file(m.env.as_str())),
            };
            (TreeId::of_files(files), wiring)
        })
        .collect()
}

/// Kept environments whose files change anyway are updates, with the reason: their files drifted
/// from what prenv renders (restored), or the settings or templates changed.
fn explain_rerendered(plan: &mut Plan, changes: &Changes, current: &RepoView) {
    let mut touched: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (path, how) in changes.labelled() {
        if let Some(env) = Place::of(path).env() {
            touched.entry(env).or_default().push(format!("{how} {path}"));
        }
    }
    for d in plan.decisions.iter_mut().filter(|d| d.action == Action::Keep) {
        let Some(files) = touched.get(d.env.as_str()) else {
            continue;
        };
        d.action = Action::Update;
        let drifted = d
            .desired
            .as_ref()
            .is_some_and(|m| current.envs.get(m.env.as_str()) == Some(m));
        d.reason = if drifted {
            format!("drift repaired: {}", files.join(", "))
        } else {
            "rendered files changed (new prenv.toml settings or templates)".into()
        };
    }
}

/// The commit message: a summary line, then one line per environment that changes.
pub fn commit_message(plan: &Plan, changes: &Changes) -> String {
    let counts = [
        (Action::Create, "created"),
        (Action::Update, "updated"),
        (Action::Pin, "pinned"),
        (Action::Queue, "queued"),
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
