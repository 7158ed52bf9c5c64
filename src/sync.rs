//! One sync: plan against the branch tip, render, commit what changed in one commit, publish, and on
//! a lost race re-plan on the new tip. The decisions stay in the pure core; this module sequences I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::envrepo::{self, EnvRepo, Published, RepoState};
use crate::error::{Error, Result};
use crate::plan::{self, Action, Plan};
use crate::pr::PullRequest;
use crate::render::{self, ENVIRONMENTS_DIR};
use crate::secrets;
use crate::state::{self, Changes};
use crate::templates;
use crate::tree::Tree;

/// What the caller allows for this run, and what it knows beyond the snapshot.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Lets the circuit breaker pass a mass prune, once.
    pub allow_mass_prune: bool,
    pub evidence: plan::Evidence,
}

/// Everything a run decided and did.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub repo: String,
    pub branch: String,
    pub plan: Plan,
    #[serde(skip)]
    pub changes: Changes,
    /// Files added, changed and removed by the commit (or that would be).
    pub files: FileCounts,
    /// The commit published, if anything changed.
    pub commit: Option<String>,
    /// The tip the plan was made against.
    pub base: Option<String>,
    pub attempts: u32,
    /// PRs with an environment whose state could not be confirmed (kept), and why.
    pub unconfirmed: BTreeMap<u64, String>,
}

#[derive(Debug, Default, Serialize)]
pub struct FileCounts {
    pub added: usize,
    pub modified: usize,
    pub removed: usize,
}

/// One plan against one tip: the decisions, the files that would change, and the new owned files.
pub struct Prepared {
    pub state: RepoState,
    pub plan: Plan,
    pub changes: Changes,
    /// The files to write (added or modified, templates included).
    pub upserts: Tree,
}

/// Plans against the current tip without writing anything.
pub fn prepare(
    repo: &mut EnvRepo,
    config: &Config,
    prs: &[PullRequest],
    now: DateTime<Utc>,
    opts: &SyncOptions,
) -> Result<Prepared> {
    let tip = repo.tip()?;
    let state = repo.read_state(tip)?;
    let mut plan = plan::plan_with(config, prs, &state.envs, now, &opts.evidence);
    plan::check_mass_prune(&plan, state.envs.len(), &config.sync, opts.allow_mass_prune)?;
    // An environment whose metadata (settings digest included) is unchanged renders to the files it
    // has: neither render nor compare it. This keeps a sync of one changed PR among thousands fast.
    let unchanged: BTreeSet<&str> = plan
        .desired()
        .filter(|m| state.envs.get(&m.env) == Some(*m))
        .map(|m| m.env.as_str())
        .collect();
    let mut desired = render::render_selected(config, &plan, |m| !unchanged.contains(m.env.as_str()))?;
    let mut compared: BTreeMap<&str, git2::Oid> = state
        .owned
        .iter()
        .filter(|(path, _)| !owned_by_any(path, &unchanged))
        .map(|(p, id)| (p.as_str(), *id))
        .collect();
    // Credentials are generated once: an existing encrypted file is kept byte for byte.
    for (path, meta) in secrets::wanted(config, &plan).filter(|(_, m)| !unchanged.contains(m.env.as_str())) {
        if compared.remove(path.as_str()).is_none() {
            desired.insert(path, secrets::new_mariadb_secret(config, meta, now)?)?;
        }
    }
    let mut changes = state::changes_with(&compared, &desired, |id, bytes| *id == envrepo::blob_id(bytes));
    let templates = templates::missing(|top| state.top_level.iter().any(|t| t == top))?;
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
    Ok(Prepared {
        state,
        plan,
        changes,
        upserts,
    })
}

/// True for a path inside one of `envs`' directories or their Flux Kustomization file.
fn owned_by_any(path: &str, envs: &BTreeSet<&str>) -> bool {
    if let Some(rest) = path.strip_prefix(&format!("{ENVIRONMENTS_DIR}/")) {
        return rest.split('/').next().is_some_and(|env| envs.contains(env));
    }
    path.strip_prefix(&format!("{}/", render::FLUX_DIR))
        .and_then(|file| file.strip_suffix(".yaml"))
        .is_some_and(|env| envs.contains(env))
}

/// Kept environments whose files change anyway (new settings or templates) are updates.
fn mark_rerendered(plan: &mut Plan, changes: &Changes) {
    let changed: BTreeSet<&str> = changes
        .added
        .iter()
        .chain(&changes.modified)
        .chain(&changes.removed)
        .filter_map(|p| p.strip_prefix(&format!("{ENVIRONMENTS_DIR}/")))
        .filter_map(|rest| rest.split('/').next())
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

/// Makes the branch match the desired state: one commit when something changed, none otherwise.
/// A publish that loses a race fetches, re-plans on the new tip and tries again, with backoff.
pub fn sync(
    repo: &mut EnvRepo,
    config: &Config,
    prs: &[PullRequest],
    now: DateTime<Utc>,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    let author = envrepo::signature(&config.git)?;
    let max = config.sync.max_attempts;
    for attempt in 1..=max {
        let span = tracing::info_span!("sync", attempt, repo = %repo.display());
        let _guard = span.enter();
        let prepared = prepare(repo, config, prs, now, opts)?;
        let base = prepared.state.tip;
        let mut report = SyncReport {
            repo: repo.display().to_string(),
            branch: repo.branch().to_string(),
            files: FileCounts {
                added: prepared.changes.added.len(),
                modified: prepared.changes.modified.len(),
                removed: prepared.changes.removed.len(),
            },
            plan: prepared.plan,
            changes: prepared.changes,
            commit: None,
            base: base.map(|b| b.to_string()),
            attempts: attempt,
            unconfirmed: opts.evidence.unconfirmed.clone(),
        };
        if report.changes.is_empty() {
            tracing::info!("nothing changed; no commit");
            return Ok(report);
        }
        let removals: Vec<String> = report.changes.removed.iter().cloned().collect();
        let message = commit_message(&report.plan, &report.changes);
        let commit = repo.commit(base, &prepared.upserts, &removals, &message, &author)?;
        match repo.publish(commit, base)? {
            Published::Done => {
                tracing::info!(commit = %commit, files = report.changes.len(), "published");
                report.commit = Some(commit.to_string());
                return Ok(report);
            }
            Published::Rejected => {
                tracing::info!("branch moved under us; re-planning on the new tip");
                envrepo::backoff(attempt);
            }
        }
    }
    Err(Error::Contention {
        repo: repo.display().to_string(),
        branch: repo.branch().to_string(),
        attempts: max,
    })
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
    for d in plan
        .decisions
        .iter()
        .filter(|d| !matches!(d.action, Action::Keep | Action::Skip))
    {
        let at = d
            .desired
            .as_ref()
            .map(|m| format!(" at {}", m.short_sha()))
            .unwrap_or_default();
        msg.push_str(&format!(
            "{:<6} {} (PR #{}{at}): {}\n",
            d.action.to_string(),
            d.env,
            d.pr,
            d.reason
        ));
    }
    msg
}

/// What a rewrap did.
#[derive(Debug, Serialize)]
pub struct RewrapReport {
    pub repo: String,
    pub branch: String,
    /// Environment secrets found.
    pub checked: usize,
    /// Secrets whose data key was re-encrypted.
    pub rewrapped: usize,
    pub commit: Option<String>,
}

/// Re-encrypts the data key of every environment secret whose recipients differ from
/// `secrets.age_recipients`, in one commit; values, MAC and timestamps stay as they are.
pub fn rewrap(repo: &mut EnvRepo, config: &Config, identities: &[age::x25519::Identity]) -> Result<RewrapReport> {
    let author = envrepo::signature(&config.git)?;
    let mut wanted = config.secrets.age_recipients.clone();
    wanted.sort();
    let suffix = format!("/{}", secrets::secret_file(config));
    for attempt in 1..=config.sync.max_attempts {
        let tip = repo.tip()?;
        let state = repo.read_state(tip)?;
        let mut report = RewrapReport {
            repo: repo.display().to_string(),
            branch: repo.branch().to_string(),
            checked: 0,
            rewrapped: 0,
            commit: None,
        };
        let mut upserts = Tree::new();
        for path in state.owned.keys().filter(|p| p.ends_with(&suffix)) {
            report.checked += 1;
            let bytes = repo.read_file(tip, path)?.unwrap_or_default();
            let what = || format!("rewrapping {path}");
            let doc = crate::sops::parse_yaml(&String::from_utf8_lossy(&bytes)).map_err(|e| Error::Secrets {
                what: what(),
                source: Box::new(e),
            })?;
            let mut current = crate::sops::recipients(&doc);
            current.sort();
            if current == wanted {
                continue;
            }
            let rewrapped =
                crate::sops::rewrap(&doc, identities, &config.secrets.age_recipients).map_err(|e| Error::Secrets {
                    what: what(),
                    source: Box::new(e),
                })?;
            upserts.insert(path.as_str(), crate::yaml::to_string(&rewrapped)?)?;
            report.rewrapped += 1;
        }
        if upserts.is_empty() {
            return Ok(report);
        }
        let mut message = format!(
            "prenv: re-encrypt {} secrets for {} age recipients\n\n",
            report.rewrapped,
            wanted.len()
        );
        for path in upserts.paths() {
            message.push_str(&format!("rewrap {path}\n"));
        }
        let commit = repo.commit(tip, &upserts, &[], &message, &author)?;
        match repo.publish(commit, tip)? {
            Published::Done => {
                report.commit = Some(commit.to_string());
                return Ok(report);
            }
            Published::Rejected => envrepo::backoff(attempt),
        }
    }
    Err(Error::Contention {
        repo: repo.display().to_string(),
        branch: repo.branch().to_string(),
        attempts: config.sync.max_attempts,
    })
}
