//! The one desired-state pipeline, shared by `render`, `render --check`, `plan` and `sync`: from the
//! PRs, the config and what the repository holds now, to the decisions and the exact files to write
//! and remove. Pure but for the credential maker it is handed (randomness for new passwords).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashSet as HashSet;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::manifests::{render, templates};
use crate::model::config::{Config, Database};
use crate::model::layout::{
    self, ARGOCD_APPLICATIONSET, ARGOCD_DIR, BlobId, FLUX_DIR, FLUX_INDEX, Place, TreeId, argocd_project_of, env_dir,
    flux_file, flux_legacy_file, flux_project_dir, flux_project_file, flux_project_index, project_of_env, secret_path,
};
use crate::model::meta::EnvMeta;
use crate::model::pr::PullRequest;
use crate::model::tree::Tree;
use crate::secrets::CredentialMaker;

use super::breaker;
use super::diff::{self, Changes};
use super::plan::{self, Action, Evidence, Plan};
use super::ports::{RepoView, Settled, Verifications};
use super::prints;

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
    /// Files of the wiring this run would rewrite but keeps as they are, and why (an index edited
    /// by hand into something prenv does not write): reported, never overwritten.
    pub held: BTreeMap<String, String>,
    /// What the tree is once this run's files are written (or the tree read, when nothing
    /// changes), when it is settled (see [`Settled`]); `None` when something in it is not.
    pub settled: Option<Settled>,
}

/// The PRs of `prs` a run against `current` decides: against a settled tree, those whose decision
/// it does not hold already ([`prints::to_decide`]); else all of them.
pub fn to_decide<'a>(
    config: &Config,
    current: &RepoView,
    prs: &'a [PullRequest],
    now: DateTime<Utc>,
) -> Cow<'a, [PullRequest]> {
    let changed: Vec<&PullRequest> = match (&current.settled, &current.decide) {
        (Some(_), Some(decide)) => prs.iter().filter(|pr| decide.contains(&pr.number)).collect(),
        (Some(settled), None) => match prints::to_decide(config, settled, prs, now) {
            Some(changed) => changed,
            None => return Cow::Borrowed(prs),
        },
        (None, _) => return Cow::Borrowed(prs),
    };
    if changed.len() == prs.len() {
        return Cow::Borrowed(prs);
    }
    Cow::Owned(changed.into_iter().cloned().collect())
}

/// Whether a plan made against a partial view ([`RepoView::settled`]) is the one a full view
/// gives: it only keeps or updates environments that exist (or skips PRs that have none), so the
/// set of environments, the indexes that list them and every environment the view left out stay
/// as they are. A plan that would create, pin, queue or prune is made again against a full view.
pub fn fits_partial_view(plan: &Plan) -> bool {
    plan.decisions
        .iter()
        .all(|d| matches!(d.action, Action::Keep | Action::Update | Action::Skip))
}

/// Computes the desired state against `current`. New environments that need credentials get them
/// from `credentials`; existing credential files are kept byte for byte. Every owned environment
/// is compared with its rendering (unless `verified` knows its content), so drift is restored;
/// paths prenv does not own, or must leave alone, are never compared, written or removed. The one
/// pipeline, longer than most functions so that its steps read in order.
pub fn desired(inputs: &Inputs<'_>, current: &RepoView, credentials: &mut dyn CredentialMaker) -> Result<Desired> {
    let config = inputs.config;
    let decided = to_decide(config, current, inputs.prs, inputs.now);
    let inputs = &Inputs {
        prs: &decided,
        ..*inputs
    };
    let mut plan = plan::plan_knowing(
        config,
        inputs.prs,
        current,
        inputs.now,
        inputs.evidence,
        inputs.verified,
    );
    // A partial view counts what the settled tree holds, as a full view of it would.
    let own_envs = match &current.settled {
        Some(rest) => rest.envs,
        None => current.env_count_of(&config.project_id),
    };
    breaker::check_mass_prune(&plan, own_envs, &config.sync, inputs.allow_mass_prune)?;
    if current.settled.is_some() {
        plan.settled = own_envs.saturating_sub(current.env_count_of(&config.project_id));
    }
    let untouched: HashSet<&str> = untouched(config, &plan, current);
    // An environment whose metadata is unchanged and whose content is known to be as rendered
    // needs neither render nor compare: a sync of one changed PR among thousands stays fast.
    let trusted: HashSet<&str> = plan
        .desired()
        .filter(|m| current.envs.get(m.env.as_str()) == Some(*m))
        .filter(|m| {
            current
                .envs
                .entry(m.env.as_str())
                .is_some_and(|e| inputs.verified.knows_entry(e))
        })
        .map(|m| m.env.as_str())
        .collect();
    let envs: Vec<&EnvMeta> = plan.desired().collect();
    let project = config.project_id.as_str();
    // Wiring left as it is stays where it is: at the top (the root index lists it) or in this
    // project's directory (its index lists it); another project's directory is its own.
    let wired_top: HashSet<&str> = current.wired_envs(true).collect();
    let kept: Vec<&str> = wired_top
        .iter()
        .copied()
        .filter(|env| untouched.contains(env))
        .collect();
    let kept_own: Vec<&str> = current
        .wired_envs(false)
        .filter(|env| untouched.contains(env) && project_of_env(env) == Some(project))
        .collect();
    // An environment wired at the top before projects had an index stays there until it is
    // pruned: moving it would delete it in the cluster (see `layout::flux_legacy_file`).
    let legacy: BTreeSet<&str> = envs
        .iter()
        .map(|m| m.env.as_str())
        .filter(|env| wired_top.contains(env))
        .collect();
    let argo_kept = other_applicationsets(config, current);
    let around = render::Around {
        kept,
        kept_own,
        legacy,
        flux_projects: other_flux_projects(config, current),
        argo_kept: argo_kept
            .iter()
            .map(|p| p.trim_start_matches(&format!("{ARGOCD_DIR}/")).to_string())
            .collect(),
        templates: current.templates.clone(),
        // A partial view holds none of the wiring every environment shares: it stays as it is.
        partial: current.settled.is_some(),
    };
    let mut compared: BTreeMap<String, BlobId> = current
        .owned_files(|env| !trusted.contains(env) && !untouched.contains(env))
        .into_iter()
        .filter(|(path, _)| !argo_kept.contains(path.as_str()) && !other_projects_flux(project, path))
        .collect();
    // A rendered file that is as stored is no change: it leaves the comparison at once, not held
    // until the end (`env_files_after` reads its id from the view, where it is the same).
    let (mut desired, same) =
        render::render_changed(config, &envs, &around, |m| !trusted.contains(m.env.as_str()), &compared)?;
    for path in &same {
        compared.remove(path.as_str());
    }
    drop(same);
    let (mut paths, mut metas) = (Vec::new(), Vec::new());
    for meta in envs
        .iter()
        .filter(|m| m.databases.contains(&Database::Mariadb) && !trusted.contains(m.env.as_str()))
    {
        let path = secret_path(config, meta.env.as_str());
        // Credentials are generated once: an existing encrypted file is kept byte for byte.
        if compared.remove(path.as_str()).is_none() {
            paths.push(path);
            metas.push(*meta);
        }
    }
    let made = credentials.mariadb_credentials_of(&metas, inputs.now)?;
    for (path, bytes) in paths.into_iter().zip(made) {
        desired.insert(path, bytes)?;
    }
    // An index's stored bytes are its current blob's only when the view's id is that blob's.
    let stored = |path: &str| {
        let index = current.flux_indexes.get(path)?;
        (compared.get(path) == Some(&index.id)).then(|| index.bytes())
    };
    let mut changes = diff::changes_of(&compared, &desired, stored);
    let held = hold_wiring(config, current, &mut changes);
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
    let verified = newly_verified(&envs, &trusted, &around.legacy, current, &desired, &changes);
    let settled = settled_after(
        inputs,
        &plan,
        current,
        &envs,
        trusted.len() + verified.len(),
        &held,
        &around.legacy,
    );
    explain_rerendered(&mut plan, &changes, current);
    // The files to write are the changed part of the desired tree, moved, not copied: a full
    // sync of thousands of environments holds their bytes once.
    // The changed paths are desired paths, each once (added ones are not in the repository,
    // modified ones are): as many of them as desired paths, as on a full sync, is all of them.
    let mut upserts = desired;
    if changes.added.len() + changes.modified.len() != upserts.len() {
        upserts.retain(|p| changes.added.contains(p) || changes.modified.contains(p));
    }
    Ok(Desired {
        plan,
        changes,
        upserts,
        verified,
        strays: current.strays.clone(),
        held,
        settled,
    })
}

/// What this run leaves settled ([`Settled`]), when every environment of the project is, once its
/// files are written: nothing blocked, stray, held, wired without a directory, wired at the top,
/// or queued, and every environment verified (`verified` of the `envs` rendered or trusted; the
/// rest were kept settled). Pins are the only clock the kept environments answer to: the earliest
/// ends the fact.
fn settled_after(
    inputs: &Inputs<'_>,
    plan: &Plan,
    current: &RepoView,
    envs: &[&EnvMeta],
    verified: usize,
    held: &BTreeMap<String, String>,
    legacy: &BTreeSet<&str>,
) -> Option<Settled> {
    let config = inputs.config;
    let clean = !config.capacity.limited()
        && verified == envs.len()
        && held.is_empty()
        && legacy.is_empty()
        && current.blocked.is_empty()
        && current.wired_only.is_empty()
        && current.strays.is_empty()
        && current.obstacles.is_empty()
        && plan.decisions.iter().all(|d| d.action != Action::Blocked);
    if !clean {
        return None;
    }
    // Kept without metadata of their own: settled in the tree read (a wired-only one would be too,
    // but there is none).
    let kept: Vec<_> = plan
        .decisions
        .iter()
        .filter(|d| d.action == Action::Keep && d.desired.is_none())
        .filter_map(|d| current.envs.entry(&d.env))
        .collect();
    let pins = envs
        .iter()
        .filter_map(|m| m.preserve_until)
        .chain(kept.iter().filter_map(|e| e.preserve_until));
    let (envs, due) = match &current.settled {
        // Only keeps and updates (see `fits_partial_view`): the set is the settled tree's.
        Some(rest) => (rest.envs, pins.chain(rest.due).min()),
        None => (envs.len() + kept.len(), pins.min()),
    };
    let read = current.settled.as_ref().and_then(|s| s.prints.as_deref());
    Some(Settled {
        project: config.project_id.clone(),
        digest: config.render_digest(),
        due,
        envs,
        prints: Some(std::sync::Arc::new(prints::after(
            config, plan, inputs.prs, read, inputs.now,
        ))),
    })
}

/// The other projects whose Flux Kustomization (`flux/environments/<project>.yaml`) is prenv's:
/// the root index keeps listing them.
fn other_flux_projects(config: &Config, current: &RepoView) -> BTreeSet<String> {
    let prefix = format!("{FLUX_DIR}/");
    current
        .owned
        .range(prefix.clone()..)
        .take_while(|(path, _)| path.starts_with(&prefix))
        .filter_map(|(path, _)| match Place::of(path) {
            Place::FluxProject { project } if *path == flux_project_file(project) => Some(project),
            _ => None,
        })
        .filter(|project| *project != config.project_id)
        .map(String::from)
        .collect()
}

/// Whether `path` is another project's Flux Kustomization or index: never compared, written or
/// removed by this project's sync.
fn other_projects_flux(project: &str, path: &str) -> bool {
    matches!(Place::of(path), Place::FluxProject { project: owner } if owner != project)
}

/// Keeps the Flux files this run would write over but must not: an index (the root one or this
/// project's) that is not as prenv writes it — broken by hand or by a merge, or listing something
/// prenv never writes — is kept byte for byte, and no file beside it is removed while it stands
/// (it may list one, and its build would fail); a file at a path prenv writes that is not prenv's
/// is kept too. Each is reported with why. Another project's index is never read here: whatever
/// it holds, this project's wiring does not depend on it.
fn hold_wiring(config: &Config, current: &RepoView, changes: &mut Changes) -> BTreeMap<String, String> {
    let mut held = BTreeMap::new();
    let project = config.project_id.as_str();
    let own_index = flux_project_index(project);
    for (path, dir) in [
        (FLUX_INDEX.to_string(), FLUX_DIR.to_string()),
        (own_index.clone(), flux_project_dir(project)),
    ] {
        if !changes.modified.contains(&path) {
            continue;
        }
        let Some(index) = current.flux_indexes.get(&path) else {
            continue;
        };
        let read = index.read();
        let not_ours = (path == own_index)
            .then(|| {
                read.listed
                    .iter()
                    .flatten()
                    .find(|name| project_of_env(name) != Some(project))
            })
            .flatten()
            .map(|name| format!("it lists {name}.yaml, which is no environment of project {project}"));
        let Some(why) = read.foreign.clone().or(not_ours) else {
            continue;
        };
        changes.modified.remove(&path);
        let beside = format!("{dir}/");
        changes
            .removed
            .retain(|p| p.strip_prefix(&beside).is_none_or(|file| file.contains('/')));
        tracing::warn!(file = %path, %why, "a Flux index prenv would rewrite is not as prenv writes it; kept as it is");
        held.insert(
            path,
            format!("{why}; kept as it is, and no file beside it is removed until it is fixed or deleted (then the next sync writes it)"),
        );
    }
    let flux = format!("{FLUX_DIR}/");
    let taken: Vec<String> = changes
        .added
        .range(flux.clone()..)
        .take_while(|p| p.starts_with(&flux))
        .filter(|p| current.strays.contains(*p))
        .cloned()
        .collect();
    for path in taken {
        changes.added.remove(&path);
        held.insert(
            path.clone(),
            "a file prenv did not write is where prenv writes this; kept as it is: move it away".into(),
        );
        // Written beside someone's file of that name, the project's index (or a root index
        // listing it) would make that file read as this project's Kustomization next time.
        if path == flux_project_file(project) {
            for index in [own_index.as_str(), FLUX_INDEX] {
                if changes.added.remove(index) || changes.modified.remove(index) {
                    let why = format!("not written while {path} is someone else's file");
                    held.insert(index.to_string(), why);
                }
            }
        }
    }
    held
}

/// Environment names whose paths this run leaves exactly as they are: blocked ones (not prenv's,
/// or unreadable), ones kept without metadata to render from (wiring whose directory is gone),
/// and every other project's.
/// A hash set: it holds most of the environments of a sync of one changed PR, and is asked about
/// each of them; the order is the index's to choose (`render`'s sorts what it lists).
fn untouched<'a>(config: &Config, plan: &'a Plan, current: &'a RepoView) -> HashSet<&'a str> {
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
    trusted: &HashSet<&str>,
    legacy: &BTreeSet<&str>,
    current: &RepoView,
    desired: &Tree,
    changes: &Changes,
) -> Vec<(TreeId, Option<BlobId>)> {
    let removed = |path: &str| changes.removed.contains(path);
    let candidates: Vec<&&EnvMeta> = envs
        .iter()
        .filter(|m| !trusted.contains(m.env.as_str()))
        .filter(|m| {
            let dir = format!("{}/", env_dir(m.env.as_str()));
            current
                .strays
                .range(dir.clone()..)
                .next()
                .is_none_or(|p| !p.starts_with(&dir))
        })
        .collect();
    // Every written file hashed: after a full sync's render, 60,000 of them, on every core.
    let verified = |m: &&&EnvMeta| {
        let files = diff::env_files_after(m.env.as_str(), current, desired, removed);
        let env = m.env.as_str();
        let path = if legacy.contains(env) {
            flux_legacy_file(env)
        } else {
            flux_file(env)
        };
        let wiring = match desired.get(&path) {
            Some(bytes) => Some(BlobId::of(bytes)),
            None => current.owned_id(&path),
        };
        (TreeId::of_files(files), wiring)
    };
    crate::model::parallel::map(&candidates, verified)
}

/// Kept environments whose files change anyway are updates, with the reason: their files drifted
/// from what prenv renders (restored), or the settings or templates changed.
fn explain_rerendered(plan: &mut Plan, changes: &Changes, current: &RepoView) {
    // A full sync keeps none: its 60,000 changed paths need no label.
    if !plan.decisions.iter().any(|d| d.action == Action::Keep) {
        return;
    }
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
            format!("drift repaired: {}", files.join(", ")).into()
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
    // A commit creating thousands of environments would otherwise carry a line for each: a
    // message of megabytes that `git log` pages through and every later sync reads back (the
    // base commit is read to find its tree). `prenv plan` lists them all.
    let changing = plan.changing().count();
    msg.extend(lines.take(MESSAGE_LINES));
    if changing > MESSAGE_LINES {
        msg.push_str(&format!(
            "… and {} more (`prenv plan` lists every decision)\n",
            changing - MESSAGE_LINES
        ));
    }
    msg
}

/// The most environments a commit message names one by one.
const MESSAGE_LINES: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::diff::view_of;
    use crate::core::plan::tests::{NOW, at, closed, config, pr};
    use crate::core::ports::NoMemory;

    /// The projects here have no MariaDB: nothing asks for credentials.
    struct NoCredentials;

    impl CredentialMaker for NoCredentials {
        fn mariadb_credentials(&mut self, meta: &EnvMeta, _now: DateTime<Utc>) -> Result<Vec<u8>> {
            Err(Error::Render(format!("{}: no project here has MariaDB", meta.env)))
        }
    }

    fn blog() -> Config {
        Config::parse(
            "project_id = \"blog\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/blog\"\ndatabases = []\nengine = \"flux\"\n[github]\nrepository = \"acme/blog\"\n",
            "test",
        )
        .unwrap()
    }

    fn blog_pr(n: u64) -> PullRequest {
        let mut p = pr(n);
        p.head_repo = Some("acme/blog".into());
        p.base_repo = Some("acme/blog".into());
        p
    }

    fn desired_against(config: &Config, prs: &[PullRequest], view: &RepoView) -> Desired {
        let evidence = Evidence::default();
        let inputs = Inputs {
            config,
            prs,
            evidence: &evidence,
            now: at(NOW),
            allow_mass_prune: true,
            verified: &NoMemory,
        };
        desired(&inputs, view, &mut NoCredentials).unwrap()
    }

    /// One sync of `config` against `tree`, its commit applied to the tree.
    fn sync(config: &Config, prs: &[PullRequest], tree: &mut Tree) -> Desired {
        let d = desired_against(config, prs, &view_of(tree, None));
        tree.retain(|p| !d.changes.removed.contains(p));
        tree.extend(d.upserts.clone());
        d
    }

    fn listed(tree: &Tree, index: &str) -> Vec<String> {
        let read = diff::read_index(tree.get(index).unwrap());
        assert_eq!(read.foreign, None, "{index}");
        read.listed.unwrap().into_iter().collect()
    }

    fn move_file(tree: &mut Tree, from: &str, to: &str) {
        let bytes = tree.get(from).unwrap().to_vec();
        tree.retain(|p| p != from);
        tree.insert(to, bytes).unwrap();
    }

    #[test]
    fn the_breaker_counts_an_environment_whose_directory_is_gone_among_those_that_exist() {
        let mut tree = Tree::new();
        let open: Vec<PullRequest> = (1..=6).map(pr).collect();
        sync(&config(), &open, &mut tree);
        // Someone deletes PR #1's directory; its wiring stays listed.
        tree.retain(|p| !p.starts_with("environments/shop-pr-1/"));
        let view = view_of(&tree, None);
        assert_eq!(view.env_count_of("shop"), 6);
        // Every PR closes: six prunes (one of them only the wiring) of six environments, which a
        // breaker allowing all of them passes, and one allowing half refuses as six of six.
        let closed: Vec<PullRequest> = (1..=6).map(|n| closed(pr(n), "2026-11-24T11:00:00Z", &[])).collect();
        let run = |share: f64| {
            let mut cfg = config();
            cfg.sync.max_prune_share = share;
            let evidence = Evidence::default();
            let inputs = Inputs {
                config: &cfg,
                prs: &closed,
                evidence: &evidence,
                now: at(NOW),
                allow_mass_prune: false,
                verified: &NoMemory,
            };
            desired(&inputs, &view, &mut NoCredentials)
        };
        let all = run(1.0).unwrap();
        assert_eq!(all.plan.count(plan::Action::Prune), 6);
        assert!(all.changes.removed.contains("flux/environments/shop/shop-pr-1.yaml"));
        match run(0.5) {
            Err(Error::MassPrune { prunes, existing, .. }) => assert_eq!((prunes, existing), (6, 6)),
            other => panic!("expected the breaker to trip, got {other:?}"),
        }
    }

    #[test]
    fn a_commit_message_names_the_first_hundred_environments_and_counts_the_rest() {
        let prs: Vec<PullRequest> = (1..=150).map(pr).collect();
        let d = desired_against(&config(), &prs, &RepoView::default());
        let message = commit_message(&d.plan, &d.changes);
        assert!(message.starts_with("prenv: 150 created\n\n"), "{message}");
        let named: Vec<&str> = message.lines().filter(|l| l.starts_with("create ")).collect();
        assert_eq!(named.len(), MESSAGE_LINES);
        assert!(named[0].starts_with("create shop-pr-1 (PR #1 at "), "{}", named[0]);
        assert!(
            message.ends_with("… and 50 more (`prenv plan` lists every decision)\n"),
            "{message}"
        );

        let few = desired_against(&config(), &prs[..3], &RepoView::default());
        let message = commit_message(&few.plan, &few.changes);
        assert_eq!(message.lines().filter(|l| l.starts_with("create ")).count(), 3);
        assert!(!message.contains("more"), "{message}");
    }

    #[test]
    fn each_project_gets_its_own_index_and_kustomization_and_the_root_lists_both() {
        let mut tree = Tree::new();
        sync(&config(), &[pr(1), pr(2)], &mut tree);
        sync(&blog(), &[blog_pr(1)], &mut tree);
        assert_eq!(listed(&tree, FLUX_INDEX), ["blog", "shop"]);
        assert_eq!(
            listed(&tree, "flux/environments/shop/kustomization.yaml"),
            ["shop-pr-1", "shop-pr-2"]
        );
        assert_eq!(
            listed(&tree, "flux/environments/blog/kustomization.yaml"),
            ["blog-pr-1"]
        );
        let shop = String::from_utf8(tree.get("flux/environments/shop.yaml").unwrap().to_vec()).unwrap();
        assert!(shop.contains("name: prenv-environments-shop"), "{shop}");
        assert!(shop.contains("path: \"./flux/environments/shop\""), "{shop}");
        assert!(tree.get("flux/environments/blog/blog-pr-1.yaml").is_some());
        // Both projects settled: neither's next sync changes anything.
        assert!(sync(&config(), &[pr(1), pr(2)], &mut tree).changes.is_empty());
        assert!(sync(&blog(), &[blog_pr(1)], &mut tree).changes.is_empty());
    }

    #[test]
    fn a_sync_parses_no_index_but_the_ones_it_would_rewrite() {
        let mut tree = Tree::new();
        sync(&config(), &[pr(1), pr(2)], &mut tree);
        sync(&blog(), &[blog_pr(1), blog_pr(2)], &mut tree);
        let view = view_of(&tree, None);
        let d = desired_against(&config(), &[pr(1), pr(2), pr(3)], &view);
        assert!(d.changes.added.contains("flux/environments/shop/shop-pr-3.yaml"));
        assert!(
            d.changes.iter().all(|p| !p.starts_with("flux/environments/blog")),
            "{:?}",
            d.changes
        );
        // Shop's index changes, so it was checked; the root and blog's were never parsed.
        assert!(view.flux_indexes["flux/environments/shop/kustomization.yaml"].parsed());
        assert!(!view.flux_indexes[FLUX_INDEX].parsed());
        assert!(!view.flux_indexes["flux/environments/blog/kustomization.yaml"].parsed());
    }

    #[test]
    fn a_broken_index_of_this_project_is_kept_and_nothing_it_may_list_is_removed() {
        let mut tree = Tree::new();
        let index = "flux/environments/shop/kustomization.yaml";
        sync(&config(), &[pr(1), pr(2), pr(3)], &mut tree);
        let good = tree.get(index).unwrap().to_vec();
        let broken = b"<<<<<<< HEAD\nresources:\n- shop-pr-1.yaml\n=======\n".to_vec();
        tree.insert(index, broken.clone()).unwrap();
        let prs = [pr(1), closed(pr(2), "2026-11-24T11:00:00Z", &[]), pr(3), pr(4)];
        let d = sync(&config(), &prs, &mut tree);
        assert!(d.held[index].contains("does not parse"), "{:?}", d.held);
        assert_eq!(
            tree.get(index),
            Some(&broken[..]),
            "the broken index is kept byte for byte"
        );
        assert!(d.changes.removed.contains("environments/shop-pr-2/prenv.json"));
        assert!(tree.get("flux/environments/shop/shop-pr-2.yaml").is_some());
        assert!(tree.get("flux/environments/shop/shop-pr-4.yaml").is_some());
        // Held again, not rewritten: the same inputs change nothing.
        assert!(sync(&config(), &prs, &mut tree).changes.is_empty());
        // Restored by hand, the index is rewritten and the pruned environment's wiring goes.
        tree.insert(index, good).unwrap();
        let d = sync(&config(), &prs, &mut tree);
        assert!(d.held.is_empty(), "{:?}", d.held);
        assert!(tree.get("flux/environments/shop/shop-pr-2.yaml").is_none());
        assert_eq!(listed(&tree, index), ["shop-pr-1", "shop-pr-3", "shop-pr-4"]);
    }

    #[test]
    fn a_root_index_listing_something_prenv_never_writes_is_kept_and_the_project_still_gets_its_wiring() {
        let mut tree = Tree::new();
        sync(&blog(), &[blog_pr(1)], &mut tree);
        let root = b"resources:\n- blog.yaml\n- ../../team/extra\n".to_vec();
        tree.insert(FLUX_INDEX, root.clone()).unwrap();
        let d = sync(&config(), &[pr(1)], &mut tree);
        assert!(d.held[FLUX_INDEX].contains("../../team/extra"), "{:?}", d.held);
        assert_eq!(tree.get(FLUX_INDEX), Some(&root[..]));
        assert_eq!(
            listed(&tree, "flux/environments/shop/kustomization.yaml"),
            ["shop-pr-1"]
        );
        assert!(tree.get("flux/environments/shop.yaml").is_some());
    }

    #[test]
    fn someone_elses_file_where_the_projects_kustomization_goes_is_kept_and_never_becomes_prenvs() {
        let mut tree = Tree::new();
        let mine = b"kind: ConfigMap\nmetadata: {name: mine}\n".to_vec();
        tree.insert("flux/environments/shop.yaml", mine.clone()).unwrap();
        for _ in 0..2 {
            let d = sync(&config(), &[pr(1)], &mut tree);
            assert!(d.held.contains_key("flux/environments/shop.yaml"), "{:?}", d.held);
            assert_eq!(tree.get("flux/environments/shop.yaml"), Some(&mine[..]));
            assert!(tree.get("flux/environments/shop/kustomization.yaml").is_none());
            assert!(!String::from_utf8_lossy(tree.get(FLUX_INDEX).unwrap_or_default()).contains("shop.yaml"));
        }
        assert!(tree.get("environments/shop-pr-1/prenv.json").is_some());
    }

    #[test]
    fn an_environment_wired_before_projects_had_an_index_stays_at_the_top_until_it_is_pruned() {
        // The layout before: every environment's Kustomization at the top, one shared index.
        let mut tree = Tree::new();
        sync(&config(), &[pr(1), pr(2)], &mut tree);
        for n in [1, 2] {
            let env = format!("shop-pr-{n}");
            move_file(&mut tree, &flux_file(&env), &flux_legacy_file(&env));
        }
        tree.retain(|p| !p.starts_with("flux/environments/shop/") && p != "flux/environments/shop.yaml");
        tree.insert(FLUX_INDEX, "resources:\n- shop-pr-1.yaml\n- shop-pr-2.yaml\n")
            .unwrap();
        let legacy_one = tree.get("flux/environments/shop-pr-1.yaml").unwrap().to_vec();
        let d = sync(&config(), &[pr(1), pr(2), pr(3)], &mut tree);
        assert!(
            d.changes
                .iter()
                .all(|p| !p.contains("shop-pr-1") && !p.contains("shop-pr-2")),
            "{:?}",
            d.changes
        );
        assert_eq!(tree.get("flux/environments/shop-pr-1.yaml"), Some(&legacy_one[..]));
        assert_eq!(listed(&tree, FLUX_INDEX), ["shop", "shop-pr-1", "shop-pr-2"]);
        assert_eq!(
            listed(&tree, "flux/environments/shop/kustomization.yaml"),
            ["shop-pr-3"]
        );
        // A new head rewrites the Kustomization where it is.
        let mut moved = pr(2);
        moved.head_sha = "2".repeat(40);
        let d = sync(&config(), &[pr(1), moved.clone(), pr(3)], &mut tree);
        assert!(
            d.changes.modified.contains("flux/environments/shop-pr-2.yaml"),
            "{:?}",
            d.changes
        );
        assert!(tree.get("flux/environments/shop/shop-pr-2.yaml").is_none());
        // Pruned, it leaves the top and the root index.
        let prs = [closed(pr(1), "2026-11-24T11:00:00Z", &[]), moved, pr(3)];
        let d = sync(&config(), &prs, &mut tree);
        assert!(d.changes.removed.contains("flux/environments/shop-pr-1.yaml"));
        assert_eq!(listed(&tree, FLUX_INDEX), ["shop", "shop-pr-2"]);
        assert!(sync(&config(), &prs, &mut tree).changes.is_empty());
    }
}
