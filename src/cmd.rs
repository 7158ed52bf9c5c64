//! The commands as the command line runs them: each turns its arguments into a call of the library
//! and prints what came back. Printing is here; deciding is in the library.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use prenv::adapters::fs::{self, SnapshotFile};
use prenv::adapters::git::{EnvRepo, Location};
use prenv::adapters::github::GitHubPrs;
use prenv::app::projects::Loaded;
use prenv::app::show;
use prenv::app::sync::{self, SyncOptions};
use prenv::core::plan::Evidence;
use prenv::core::ports::{EnvStore, PrSource, RepoView};
use prenv::model::config::{Config, Engine};
use prenv::model::pr::{Listing, Read, Snapshot};
use prenv::secrets::sops;

use crate::cli::{
    AuditArgs, DecryptArgs, EncryptArgs, IdentityArgs, InitArgs, OnboardArgs, Output, PlanArgs, PlanView, RenderArgs,
    RepoArgs, RewrapArgs, ServeArgs, SnapshotArgs, SyncArgs, WatchArgs,
};

/// What a successful command found.
pub enum Outcome {
    Clean,
    /// `--check` found a difference, or `audit` found a plain-text Secret.
    Differs,
}

fn identities(args: &IdentityArgs) -> anyhow::Result<Vec<age::x25519::Identity>> {
    let path = args
        .identity
        .as_ref()
        .context("no age identity: pass --identity FILE or set SOPS_AGE_KEY_FILE")?;
    Ok(fs::load_identities(path)?)
}

fn read_sops_file(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    sops::parse_yaml(&text).with_context(|| format!("reading {}", path.display()))
}

pub fn encrypt(config: &Config, args: &EncryptArgs) -> anyhow::Result<Outcome> {
    let doc = read_sops_file(&args.file)?;
    if config.secrets.age_recipients.is_empty() {
        anyhow::bail!("key `secrets.age_recipients` in prenv.toml is empty; add the cluster's age public key");
    }
    let encrypted = sops::encrypt(&doc, &config.secrets.age_recipients, Utc::now())
        .with_context(|| format!("encrypting {}", args.file.display()))?;
    let out = prenv::manifests::yaml::to_string(&encrypted)?;
    match if args.in_place {
        Some(&args.file)
    } else {
        args.output.as_ref()
    } {
        Some(path) => std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?,
        None => write!(std::io::stdout().lock(), "{out}")?,
    }
    Ok(Outcome::Clean)
}

pub fn decrypt(args: &DecryptArgs) -> anyhow::Result<Outcome> {
    let ids = identities(&args.identity)?;
    let doc = read_sops_file(&args.file)?;
    let plain = sops::decrypt(&doc, &ids).with_context(|| format!("decrypting {}", args.file.display()))?;
    write!(
        std::io::stdout().lock(),
        "{}",
        prenv::manifests::yaml::to_string(&plain)?
    )?;
    Ok(Outcome::Clean)
}

pub fn rewrap(config: &Config, args: &RewrapArgs) -> anyhow::Result<Outcome> {
    let ids = identities(&args.identity)?;
    let mut repo = open_repo(config, &args.repo)?;
    let done = sync::rewrap(&mut repo, config, &ids)?;
    match &done.commit {
        Some(commit) => writeln!(
            std::io::stdout().lock(),
            "re-encrypted the data keys of {} secrets for {} recipients: committed {} to {} of {}",
            done.rewrapped,
            config.secrets.age_recipients.len(),
            &commit[..12],
            done.branch,
            done.repo
        ),
        None => writeln!(
            std::io::stdout().lock(),
            "all {} secrets are already encrypted for the configured recipients",
            done.checked
        ),
    }?;
    Ok(Outcome::Clean)
}

pub fn audit(args: &AuditArgs) -> anyhow::Result<Outcome> {
    let found = prenv::app::audit::audit(&args.repo)?;
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?,
        Output::Text => {
            for f in &found.findings {
                writeln!(
                    out,
                    "plain-text Secret {} in {} at commit {}: {} ({})",
                    f.secret,
                    f.path,
                    f.commit,
                    f.keys.join(", "),
                    f.reason
                )?;
            }
            writeln!(
                out,
                "audited {} commits, {} manifest files: {} plain-text Secrets",
                found.commits,
                found.blobs,
                found.findings.len()
            )?;
        }
    }
    if found.findings.is_empty() {
        return Ok(Outcome::Clean);
    }
    eprintln!(
        "{} holds Secrets in plain text in its history: rotate those credentials, then rewrite the history (git filter-repo) and encrypt them with `prenv secrets encrypt`",
        args.repo.display()
    );
    Ok(Outcome::Differs)
}

/// Where the PRs come from: `--prs FILE`, or GitHub.
fn source<'a>(config: &'a Config, args: &SnapshotArgs) -> Box<dyn PrSource + 'a> {
    match &args.prs {
        Some(path) => Box::new(SnapshotFile(path.clone())),
        None => Box::new(GitHubPrs(config)),
    }
}

/// The snapshot for the environments in `view`, with a warning for every PR it could not confirm.
fn snapshot(config: &Config, args: &SnapshotArgs, view: &RepoView) -> anyhow::Result<Snapshot> {
    snapshot_for(config, args, &view.prs_with_envs(&config.project_id))
}

/// The snapshot, asking about the PRs `with_envs` (those with an environment), with a warning for
/// every PR it could not confirm.
fn snapshot_for(config: &Config, args: &SnapshotArgs, with_envs: &BTreeSet<u64>) -> anyhow::Result<Snapshot> {
    let snapshot = source(config, args).snapshot(with_envs)?;
    warn_unconfirmed(&snapshot.unconfirmed);
    Ok(snapshot)
}

fn warn_unconfirmed(unconfirmed: &BTreeMap<u64, String>) {
    for (pr, why) in unconfirmed {
        eprintln!(
            "warning: cannot confirm the state of PR #{pr}, so its environment is kept: {why}. \
             Fix the token's access, or if the PR is gone for good, run again with --confirm-closed {pr}"
        );
    }
}

fn now(args: &SnapshotArgs) -> DateTime<Utc> {
    args.now.unwrap_or_else(Utc::now)
}

pub fn render(config: &Config, args: &RenderArgs) -> anyhow::Result<Outcome> {
    let source = source(config, &args.snapshot);
    let done = prenv::app::render::render(config, &args.out, source.as_ref(), now(&args.snapshot), args.check)?;
    let changes = &done.desired.changes;
    if args.check {
        let lines = show::check_lines(&args.out, changes);
        for line in &lines {
            eprintln!("{line}");
        }
        return Ok(if lines.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Differs
        });
    }
    eprintln!(
        "rendered {} environments into {} ({} files added, {} changed, {} removed)",
        done.envs,
        args.out.display(),
        changes.added.len(),
        changes.modified.len(),
        changes.removed.len()
    );
    Ok(Outcome::Clean)
}

/// Opens the repository named by `--repo`, the config, or the embedded default (created on first use).
fn open_repo(config: &Config, args: &RepoArgs) -> anyhow::Result<EnvRepo> {
    let at = Location::resolve(&config.git, args.repo.as_deref(), args.cache_dir.as_deref())?;
    Ok(EnvRepo::open_at(&at, &config.git)?)
}

fn sync_options(config: &Config, view: &PlanView, snapshot: &Snapshot) -> anyhow::Result<SyncOptions> {
    Ok(SyncOptions {
        allow_mass_prune: view.allow_mass_prune,
        evidence: Evidence {
            unconfirmed: snapshot.unconfirmed.clone(),
            closed_by_operator: view.confirm_closed.iter().copied().collect(),
            ..Evidence::default()
        },
        registry: sync::image_checks(config)?,
    })
}

/// What `plan` and `sync` both start from: the repository read once, the PRs for it, the options
/// and the secret material.
struct Run<P> {
    repo: EnvRepo,
    view: RepoView,
    prs: P,
    opts: SyncOptions,
    material: prenv::secrets::Material,
    now: DateTime<Utc>,
}

/// The repository's view and the snapshot for it (every environment read).
fn start(config: &Config, args: &SyncArgs) -> anyhow::Result<Run<Snapshot>> {
    let mut repo = open_repo(config, &args.repo)?;
    let view = repo.read()?;
    let snapshot = snapshot(config, &args.snapshot, &view)?;
    Ok(Run {
        opts: sync_options(config, &args.view, &snapshot)?,
        material: fs::load_material(config)?,
        now: now(&args.snapshot),
        repo,
        view,
        prs: snapshot,
    })
}

/// [`start`] for a sync, which may read only the environments of the PRs a snapshot file names
/// or that changed in it ([`sync::read_listed`]); `plan` shows every decision.
fn start_sync(config: &Config, args: &SyncArgs) -> anyhow::Result<Run<Given>> {
    // A snapshot file is read without asking which PRs have an environment (a listing asks).
    let Some(path) = &args.snapshot.prs else {
        let run = start(config, args)?;
        return Ok(Run {
            repo: run.repo,
            view: run.view,
            prs: Given::Snapshot(run.prs),
            opts: run.opts,
            material: run.material,
            now: run.now,
        });
    };
    // Split and digested while the repository is opened and its settled tree looked up: the
    // listing is waited for when the PRs to decide are asked.
    std::thread::scope(|scope| {
        let listing = scope.spawn(|| SnapshotFile(path.clone()).listing());
        let listing = || listing.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let mut repo = open_repo(config, &args.repo)?;
        let opts = sync_options(config, &args.view, &Snapshot::default())?;
        let now = now(&args.snapshot);
        let (view, listing, read) = sync::read_listed(&mut repo, config, listing, now, &opts)?;
        Ok(Run {
            opts,
            material: fs::load_material(config)?,
            now,
            repo,
            view,
            prs: Given::Listed(listing, read),
        })
    })
}

/// The PRs of a run: a snapshot, or a snapshot file read as a listing against the view.
enum Given {
    Snapshot(Snapshot),
    Listed(Listing, Read),
}

pub fn plan(config: &Config, args: &PlanArgs) -> anyhow::Result<Outcome> {
    let Run {
        mut repo,
        view,
        prs: snapshot,
        opts,
        mut material,
        now,
    } = start(config, &args.run)?;
    let desired = sync::prepare(
        &view,
        repo.verifications(),
        config,
        &snapshot.prs,
        now,
        &opts,
        &mut material,
    )?;
    repo.learn(&desired.verified);
    let mut out = std::io::stdout().lock();
    let shown = &args.run.view;
    match shown.output {
        Output::Json => {
            let mut doc = serde_json::json!({
                "repo": repo.display(),
                "branch": repo.branch(),
                "base": view.tip.as_ref().map(ToString::to_string),
                "decisions": desired.plan.decisions,
                "unconfirmed": snapshot.unconfirmed,
                "strays": desired.strays,
                "held": desired.held,
                "files": {"added": desired.changes.added, "modified": desired.changes.modified, "removed": desired.changes.removed},
            });
            // How full the cluster is, with a `[capacity]` limit.
            if let Some(capacity) = &desired.plan.capacity {
                doc["capacity"] = serde_json::to_value(capacity)?;
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Output::Text => {
            write!(
                out,
                "{}",
                show::plan_text(
                    &desired.plan,
                    &desired.changes,
                    &desired.strays,
                    &desired.held,
                    shown.show_skipped
                )
            )?;
            if args.diff {
                write!(out, "{}", show::unified_diff(&repo, &view, &desired)?)?;
            }
        }
    }
    Ok(Outcome::Clean)
}

pub fn sync(config: &Config, args: &SyncArgs) -> anyhow::Result<Outcome> {
    let Run {
        mut repo,
        view,
        prs,
        opts,
        mut material,
        now,
    } = start_sync(config, args)?;
    let (snapshot, listing): (Snapshot, Listing);
    let prs = match prs {
        Given::Snapshot(given) => {
            snapshot = given;
            sync::Prs::All(&snapshot.prs)
        }
        Given::Listed(given, read) => {
            listing = given;
            sync::Prs::Listed(&listing, read)
        }
    };
    let done = sync::sync(&mut repo, view, config, prs, now, &opts, &mut material)?;
    let mut out = std::io::stdout().lock();
    match args.view.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&done)?)?,
        Output::Text => {
            write!(
                out,
                "{}",
                show::plan_text(
                    &done.plan,
                    &done.changes,
                    &done.strays,
                    &done.held,
                    args.view.show_skipped
                )
            )?;
            match &done.commit {
                Some(commit) => writeln!(
                    out,
                    "committed {} to {} of {} (attempt {})",
                    &commit[..12],
                    done.branch,
                    done.repo,
                    done.attempts
                )?,
                None => writeln!(out, "no change: {} of {} already matches", done.branch, done.repo)?,
            }
        }
    }
    Ok(Outcome::Clean)
}

pub fn init(config: &Config, args: &InitArgs) -> anyhow::Result<Outcome> {
    let mut config = config.clone();
    if let Some(engine) = &args.engine {
        config.engine = if engine == "argocd" {
            Engine::Argocd
        } else {
            Engine::Flux
        };
    }
    let done = prenv::app::init::init(&config, &args.repo, args.force)?;
    for path in &done.kept {
        eprintln!(
            "kept {}: it differs from the scaffold (your edit?); --force overwrites it",
            args.repo.join(path).display()
        );
    }
    writeln!(
        std::io::stdout().lock(),
        "scaffolded {}: {} files written, {} unchanged, {} kept",
        args.repo.display(),
        done.written.len(),
        done.unchanged,
        done.kept.len()
    )?;
    writeln!(
        std::io::stdout().lock(),
        "GitHub webhook of the application repository (or its GitHub App): {} (event \"Pull requests\"; secret: scripts/create-secrets prenv)",
        prenv::manifests::scaffold::webhook_url(&config)
    )?;
    Ok(Outcome::Clean)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// One kube watch per engine kind and namespace the projects use (usually one for all), each
/// object reported by the project its label names, on that project's repository with that
/// project's GitHub settings.
pub fn watch(projects: &[Loaded], args: &WatchArgs) -> anyhow::Result<Outcome> {
    runtime()?.block_on(async {
        let other_projects = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut groups: Vec<((Engine, String), Vec<_>)> = Vec::new();
        let mut metrics = Vec::new();
        for Loaded { path, config } in projects {
            let github = prenv::adapters::github::GitHub::from_env(config).with_context(|| {
                format!(
                    "the GitHub client of project {} ({})",
                    config.project_id,
                    path.display()
                )
            })?;
            let project_metrics = std::sync::Arc::new(prenv::app::watch::WatchMetrics::default());
            metrics.push((config.project_id.clone(), project_metrics.clone(), github.stats.clone()));
            let settings = prenv::adapters::pr_status::StatusSettings {
                context: config.watch.status_context.clone(),
                grafana_url: config.watch.grafana_url.clone(),
            };
            let watched = prenv::app::watch::Watched {
                config: config.clone(),
                reporter: prenv::adapters::pr_status::PrStatus::new(github, settings),
                metrics: project_metrics,
            };
            let key = (
                config.engine,
                prenv::adapters::kube::engine_namespace(config).to_string(),
            );
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, group)) => group.push(watched),
                None => groups.push((key, vec![watched])),
            }
        }
        let all = std::sync::Arc::new(prenv::app::watch::WatchedMetrics {
            projects: metrics,
            other_projects,
        });
        let client = prenv::adapters::kube::connect().await?;
        let watches = groups.into_iter().map(|((engine, namespace), group)| {
            let ids: Vec<&str> = group.iter().map(|w| w.config.project_id.as_str()).collect();
            let objects = prenv::adapters::kube::environments(engine, &namespace, &ids, client.clone());
            prenv::app::watch::watch_projects(group, objects, all.other_projects.clone())
        });
        let server = tokio::spawn(prenv::app::watch::serve_metrics(args.listen, all.clone()));
        tokio::select! {
            result = futures::future::try_join_all(watches) => { result?; }
            result = server => result.context("metrics server")??,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        }
        anyhow::Ok(Outcome::Clean)
    })
}

/// The webhook secret of `project`: its own (`PRENV_WEBHOOK_SECRET_<PROJECT>`), else the shared one.
fn webhook_secret(project: &str) -> anyhow::Result<Vec<u8>> {
    let own = prenv::app::projects::secret_var(project);
    let shared = prenv::app::projects::SECRET_VAR;
    [own.as_str(), shared]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|s| !s.is_empty()))
        .map(String::into_bytes)
        .with_context(|| format!("{shared} is not set (nor {own} for project {project}): the receiver refuses to run without the webhook secret it verifies signatures with"))
}

pub fn serve(projects: &[Loaded], args: &ServeArgs) -> anyhow::Result<Outcome> {
    let several = projects.len() > 1;
    let mut served = Vec::new();
    for Loaded { path, config } in projects {
        let secret = webhook_secret(&config.project_id)?;
        let at = Location::resolve(&config.git, args.repo.repo.as_deref(), args.repo.cache_dir.as_deref())
            .with_context(|| {
                format!(
                    "the environments repository of project {} ({})",
                    config.project_id,
                    path.display()
                )
            })?;
        // With several projects, each has its own cache clone: a clone is locked for a whole
        // sync, and one project's slow push must not hold another's.
        let cache_dir = if several {
            at.cache_dir.join(&config.project_id)
        } else {
            at.cache_dir.clone()
        };
        // Open once now: a bad repository is an error at start, not at the first event.
        drop(
            EnvRepo::open(&at.location, &config.git, &cache_dir, at.create)
                .with_context(|| format!("project {} ({})", config.project_id, path.display()))?,
        );
        tracing::info!(project = %config.project_id, repo = %prenv::adapters::git::redact_url(&at.location), "serving");
        served.push(prenv::app::serve::Project {
            config: config.clone(),
            secret,
            repo: at.location,
            cache_dir,
            images: None,
        });
    }
    let open_files = prenv::app::serve::open_file_limit();
    let max_connections = prenv::app::serve::connection_cap(args.max_connections, open_files)
        .map_err(anyhow::Error::msg)
        .context("--max-connections")?;
    if (max_connections as u64) < args.max_connections {
        tracing::warn!(
            requested = args.max_connections,
            max_connections,
            open_files = open_files.unwrap_or_default(),
            "--max-connections lowered to fit the open-file limit, keeping files for syncs"
        );
    }
    let options = prenv::app::serve::ServeOptions {
        listen: args.listen,
        max_body: args.max_body_bytes,
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        resync: (args.resync_secs > 0).then(|| std::time::Duration::from_secs(args.resync_secs)),
        limits: prenv::app::serve::Limits {
            max_connections,
            header_timeout: std::time::Duration::from_millis(args.header_timeout_ms),
            body_timeout: std::time::Duration::from_secs(args.body_timeout_secs),
        },
        image_recheck: std::time::Duration::from_secs(args.image_recheck_secs),
    };
    runtime()?.block_on(async {
        // Made inside the runtime: the registry clients' connections live on it.
        for project in &mut served {
            project.images = sync::image_checks(&project.config)?;
        }
        prenv::app::serve::serve_projects(served, options).await
    })?;
    Ok(Outcome::Clean)
}

pub fn onboard(config: &Config, args: &OnboardArgs) -> anyhow::Result<Outcome> {
    let mut repo = open_repo(config, &args.repo)?;
    let done = prenv::app::onboard::onboard(&mut repo, config, args.dry_run)?;
    let mut out = std::io::stdout().lock();
    if let Output::Json = args.output {
        writeln!(out, "{}", serde_json::to_string_pretty(&done)?)?;
        return Ok(Outcome::Clean);
    }
    let others = if done.other_projects.is_empty() {
        "no other project".to_string()
    } else {
        format!(
            "also serving {}",
            done.other_projects.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    writeln!(
        out,
        "project {} on {} of {} ({others})",
        done.project, done.branch, done.repo
    )?;
    writeln!(out, "template: {}", done.template)?;
    let verb = if args.dry_run { "would write" } else { "wrote" };
    for path in &done.scaffolded {
        writeln!(out, "  {verb} {path}")?;
    }
    match &done.commit {
        Some(commit) => writeln!(out, "committed {} to {} of {}", &commit[..12], done.branch, done.repo)?,
        None if args.dry_run => writeln!(out, "dry run: nothing written")?,
        None => writeln!(out, "no change: {} is onboarded already", done.project)?,
    }
    writeln!(out, "on GitHub, the platform owner:")?;
    for (i, step) in done.github_steps.iter().enumerate() {
        writeln!(out, "  {}. {step}", i + 1)?;
    }
    writeln!(
        out,
        "for the cluster's prenv serve and prenv watch, the platform owner:"
    )?;
    for (i, step) in done.platform_steps.iter().enumerate() {
        writeln!(out, "  {}. {step}", i + 1)?;
    }
    Ok(Outcome::Clean)
}
