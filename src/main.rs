//! The `prenv` binary: parse the command line, run one command, print errors once with their chain.

mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use prenv::config::Config;
use prenv::plan::{self, Action, Plan};
use prenv::pr::{self, PullRequest};
use prenv::render::{self, ARGOCD_DIR, ENVIRONMENTS_DIR, FLUX_DIR};
use prenv::state::{self, Changes};
use prenv::tree::Tree;

use cli::{
    AuditArgs, Cli, Commands, DecryptArgs, EncryptArgs, IdentityArgs, InitArgs, Output, PlanArgs, RenderArgs, RepoArgs,
    RewrapArgs, SecretsCommand, ServeArgs, SnapshotArgs, SyncArgs, WatchArgs,
};
use prenv::envrepo::EnvRepo;
use prenv::sync::{self, SyncOptions};

/// What a successful command found.
enum Outcome {
    Clean,
    /// `--check` found a difference.
    Differs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(&cli) {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Differs) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false)
        .init();
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything but empty (no-color.org).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    let config = || Config::load(&cli.config);
    match &cli.command {
        Commands::Init(args) => init_cmd(&config()?, args),
        Commands::Render(args) => render_cmd(&config()?, args),
        Commands::Plan(args) => plan_cmd(&config()?, args),
        Commands::Sync(args) => sync_cmd(&config()?, args),
        Commands::Audit(args) => audit_cmd(args),
        Commands::Serve(args) => serve_cmd(&config()?, args),
        Commands::Watch(args) => watch_cmd(&config()?, args),
        Commands::Secrets(SecretsCommand::Encrypt(args)) => encrypt_cmd(&config()?, args),
        Commands::Secrets(SecretsCommand::Decrypt(args)) => decrypt_cmd(args),
        Commands::Secrets(SecretsCommand::Rewrap(args)) => rewrap_cmd(&config()?, args),
    }
}

fn identities(args: &IdentityArgs) -> anyhow::Result<Vec<age::x25519::Identity>> {
    let path = args
        .identity
        .as_ref()
        .context("no age identity: pass --identity FILE or set SOPS_AGE_KEY_FILE")?;
    Ok(prenv::secrets::load_identities(path)?)
}

fn encrypt_cmd(config: &Config, args: &EncryptArgs) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let doc = prenv::sops::parse_yaml(&text).with_context(|| format!("reading {}", args.file.display()))?;
    if config.secrets.age_recipients.is_empty() {
        anyhow::bail!(
            "key `secrets.age_recipients` in {} is empty; add the cluster's age public key",
            "prenv.toml"
        );
    }
    let encrypted = prenv::sops::encrypt(&doc, &config.secrets.age_recipients, Utc::now())
        .with_context(|| format!("encrypting {}", args.file.display()))?;
    let out = prenv::yaml::to_string(&encrypted)?;
    let target = if args.in_place {
        Some(&args.file)
    } else {
        args.output.as_ref()
    };
    match target {
        Some(path) => std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{out}"),
    }
    Ok(Outcome::Clean)
}

fn decrypt_cmd(args: &DecryptArgs) -> anyhow::Result<Outcome> {
    let ids = identities(&args.identity)?;
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let doc = prenv::sops::parse_yaml(&text).with_context(|| format!("reading {}", args.file.display()))?;
    let plain = prenv::sops::decrypt(&doc, &ids).with_context(|| format!("decrypting {}", args.file.display()))?;
    print!("{}", prenv::yaml::to_string(&plain)?);
    Ok(Outcome::Clean)
}

fn rewrap_cmd(config: &Config, args: &RewrapArgs) -> anyhow::Result<Outcome> {
    let ids = identities(&args.identity)?;
    let mut repo = open_repo(config, &args.repo)?;
    let report = sync::rewrap(&mut repo, config, &ids)?;
    match &report.commit {
        Some(commit) => println!(
            "re-encrypted the data keys of {} secrets for {} recipients: committed {} to {} of {}",
            report.rewrapped,
            config.secrets.age_recipients.len(),
            &commit[..12],
            report.branch,
            report.repo
        ),
        None => println!(
            "all {} secrets are already encrypted for the configured recipients",
            report.checked
        ),
    }
    Ok(Outcome::Clean)
}

fn audit_cmd(args: &AuditArgs) -> anyhow::Result<Outcome> {
    let report = prenv::audit::audit(&args.repo)?;
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Output::Text => {
            for f in &report.findings {
                writeln!(
                    out,
                    "plain-text Secret {} in {} at commit {}: {}",
                    f.secret,
                    f.path,
                    f.commit,
                    f.keys.join(", ")
                )?;
            }
            writeln!(
                out,
                "audited {} commits, {} manifest files: {} plain-text Secrets",
                report.commits,
                report.blobs,
                report.findings.len()
            )?;
        }
    }
    if report.findings.is_empty() {
        Ok(Outcome::Clean)
    } else {
        eprintln!(
            "{} holds Secrets in plain text in its history: rotate those credentials, then rewrite the history (git filter-repo) and encrypt them with `prenv secrets encrypt`",
            args.repo.display()
        );
        Ok(Outcome::Differs)
    }
}

struct Inputs {
    prs: Vec<PullRequest>,
    now: DateTime<Utc>,
    /// PRs with an environment that GitHub could not confirm, and why.
    unconfirmed: BTreeMap<u64, String>,
}

/// The PRs from `--prs`, or from GitHub: open PRs plus a lookup of each PR in `with_envs` that the
/// listing lacks (the positive evidence pruning needs).
fn load_snapshot(config: &Config, args: &SnapshotArgs, with_envs: &BTreeSet<u64>) -> anyhow::Result<Inputs> {
    let snapshot = match &args.prs {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading pull-request snapshot {}", path.display()))?;
            prenv::github::Snapshot {
                prs: pr::parse_snapshot(&text, &path.display().to_string())?,
                unconfirmed: BTreeMap::new(),
            }
        }
        None => prenv::github::snapshot_blocking(config, with_envs)?,
    };
    for (pr, why) in &snapshot.unconfirmed {
        eprintln!(
            "warning: cannot confirm the state of PR #{pr}, so its environment is kept: {why}. \
             Fix the token's access, or if the PR is gone for good, run again with --confirm-closed {pr}"
        );
    }
    Ok(Inputs {
        prs: snapshot.prs,
        now: args.now.unwrap_or_else(Utc::now),
        unconfirmed: snapshot.unconfirmed,
    })
}

/// The parts of a rendered directory prenv may own: environments and wiring.
fn read_current(dir: &Path) -> anyhow::Result<Tree> {
    let mut tree = Tree::new();
    for sub in [ENVIRONMENTS_DIR, FLUX_DIR, ARGOCD_DIR] {
        tree.extend(Tree::read_dir(dir, sub)?);
    }
    Ok(tree)
}

/// The plan and the desired owned tree for a current tree.
fn desire(config: &Config, inputs: &Inputs, current: &Tree) -> anyhow::Result<(Plan, Tree, Changes)> {
    let existing = state::existing_envs(current);
    let plan = plan::plan(config, &inputs.prs, &existing, inputs.now);
    let mut desired = render::render_owned(config, &plan)?;
    // Credentials are generated once: an existing encrypted file is kept byte for byte.
    for (path, meta) in prenv::secrets::wanted(config, &plan) {
        let bytes = match current.get(&path) {
            Some(existing) => existing.to_vec(),
            None => prenv::secrets::new_mariadb_secret(config, meta, inputs.now)?.into_bytes(),
        };
        desired.insert(path, bytes)?;
    }
    let changes = state::changes(&state::owned_part(current, &existing), &desired);
    Ok((plan, desired, changes))
}

fn render_cmd(config: &Config, args: &RenderArgs) -> anyhow::Result<Outcome> {
    let current = read_current(&args.out)?;
    let with_envs = state::existing_envs(&current).values().map(|m| m.pr).collect();
    let inputs = load_snapshot(config, &args.snapshot, &with_envs)?;
    let (_plan, desired, changes) = desire(config, &inputs, &current)?;
    let templates = prenv::templates::missing(|top| args.out.join(top).exists())?;
    if args.check {
        return Ok(check(&args.out, &changes, &templates));
    }
    write_render(&args.out, &desired, &templates, &changes)?;
    eprintln!(
        "rendered {} environments into {} ({} files added, {} changed, {} removed)",
        desired
            .under(ENVIRONMENTS_DIR)
            .filter(|(p, _)| p.ends_with(plan::META_FILE))
            .count(),
        args.out.display(),
        changes.added.len() + templates.len(),
        changes.modified.len(),
        changes.removed.len()
    );
    Ok(Outcome::Clean)
}

fn check(dir: &Path, changes: &Changes, templates: &Tree) -> Outcome {
    let mut stderr = std::io::stderr().lock();
    let lines = [
        ("missing", &changes.added),
        ("differs", &changes.modified),
        ("stale", &changes.removed),
    ];
    for (what, paths) in lines {
        for path in paths {
            let _ = writeln!(stderr, "{what}: {}", dir.join(path).display());
        }
    }
    for path in templates.paths() {
        let _ = writeln!(stderr, "missing: {}", dir.join(path).display());
    }
    if changes.is_empty() && templates.is_empty() {
        Outcome::Clean
    } else {
        let _ = writeln!(
            stderr,
            "{} is out of date; run `prenv render` without --check to update it",
            dir.display()
        );
        Outcome::Differs
    }
}

fn write_render(dir: &Path, desired: &Tree, templates: &Tree, changes: &Changes) -> anyhow::Result<()> {
    templates.write_to(dir)?;
    desired.write_to(dir)?;
    for path in &changes.removed {
        let file = dir.join(path);
        std::fs::remove_file(&file).with_context(|| format!("removing stale file {}", file.display()))?;
        // Empty environment directories go too; a directory still holding other files stays.
        if let Some(parent) = file.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// Opens the repository named by `--repo`, the config, or the embedded default (created on first use).
fn open_repo(config: &Config, args: &RepoArgs) -> anyhow::Result<EnvRepo> {
    let (location, create, cache_dir) = resolve_repo(config, args)?;
    Ok(EnvRepo::open(&location, &config.git, &cache_dir, create)?)
}

/// Where the repository is (`--repo`, `git.url`, or the embedded default, which may be created),
/// and where remote clones are cached.
fn resolve_repo(config: &Config, args: &RepoArgs) -> anyhow::Result<(String, bool, PathBuf)> {
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| config.git.cache_dir.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| xdg_dir("XDG_CACHE_HOME", ".cache").join("prenv"));
    let (location, create) = match args.repo.as_ref().or(config.git.url.as_ref()) {
        Some(location) => (location.clone(), false),
        None => {
            let path = default_repo_path();
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            (path.display().to_string(), true)
        }
    };
    Ok((location, create, cache_dir))
}

fn init_cmd(config: &Config, args: &InitArgs) -> anyhow::Result<Outcome> {
    let mut config = config.clone();
    if let Some(engine) = &args.engine {
        config.engine = if engine == "argocd" {
            prenv::config::Engine::Argocd
        } else {
            prenv::config::Engine::Flux
        };
    }
    let tree = prenv::init::scaffold(&config)?;
    let done = prenv::init::write(&tree, &args.repo, args.force)?;
    for path in &done.kept {
        eprintln!(
            "kept {}: it differs from the scaffold (your edit?); --force overwrites it",
            args.repo.join(path).display()
        );
    }
    println!(
        "scaffolded {}: {} files written, {} unchanged, {} kept",
        args.repo.display(),
        done.written.len(),
        done.unchanged,
        done.kept.len()
    );
    Ok(Outcome::Clean)
}

fn watch_cmd(config: &Config, args: &WatchArgs) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let github = prenv::github::GitHub::from_env(config)?;
        let stats = github.stats.clone();
        let settings = prenv::report::ReportSettings {
            context: config.watch.status_context.clone(),
            grafana_url: config.watch.grafana_url.clone(),
        };
        let reporter = prenv::report::Reporter::new(github, settings);
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster service account, or KUBECONFIG)")?;
        let metrics = std::sync::Arc::new(prenv::watch::WatchMetrics::default());
        let server = tokio::spawn(prenv::watch::serve_metrics(args.listen, metrics.clone(), stats));
        tokio::select! {
            result = prenv::watch::watch(config, client, reporter, metrics) => result?,
            result = server => result.context("metrics server")??,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        }
        anyhow::Ok(Outcome::Clean)
    })
}

fn serve_cmd(config: &Config, args: &ServeArgs) -> anyhow::Result<Outcome> {
    let secret = std::env::var("PRENV_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .context("PRENV_WEBHOOK_SECRET is not set: the receiver refuses to run without the webhook secret it verifies signatures with")?;
    let (location, create, cache_dir) = resolve_repo(config, &args.repo)?;
    // Open once now: a bad repository is an error at start, not at the first event.
    drop(EnvRepo::open(&location, &config.git, &cache_dir, create)?);
    let options = prenv::serve::ServeOptions {
        listen: args.listen,
        secret: secret.into_bytes(),
        max_body: args.max_body_bytes,
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        resync: (args.resync_secs > 0).then(|| std::time::Duration::from_secs(args.resync_secs)),
        repo: location,
        cache_dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(prenv::serve::serve(config.clone(), options))?;
    Ok(Outcome::Clean)
}

/// The embedded default environments repository: `$XDG_DATA_HOME/prenv/environments.git`.
fn default_repo_path() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share").join("prenv/environments.git")
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(fallback),
    }
}

fn plan_cmd(config: &Config, args: &PlanArgs) -> anyhow::Result<Outcome> {
    let mut repo = open_repo(config, &args.repo)?;
    let with_envs = if args.snapshot.prs.is_none() {
        repo.prs_with_envs()?
    } else {
        BTreeSet::new()
    };
    let inputs = load_snapshot(config, &args.snapshot, &with_envs)?;
    let opts = sync_options(&args.view, &inputs);
    let prepared = sync::prepare(&mut repo, config, &inputs.prs, inputs.now, &opts)?;
    let mut out = std::io::stdout().lock();
    match args.view.output {
        Output::Json => {
            let doc = serde_json::json!({
                "repo": repo.display(),
                "branch": repo.branch(),
                "base": prepared.state.tip.map(|t| t.to_string()),
                "decisions": prepared.plan.decisions,
                "unconfirmed": inputs.unconfirmed,
                "files": {"added": prepared.changes.added, "modified": prepared.changes.modified, "removed": prepared.changes.removed},
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Output::Text => {
            write!(
                out,
                "{}",
                plan_text(&prepared.plan, &prepared.changes, args.view.show_skipped)
            )?;
            if args.diff {
                write!(out, "{}", unified_diff(&repo, &prepared)?)?;
            }
        }
    }
    Ok(Outcome::Clean)
}

fn unified_diff(repo: &EnvRepo, prepared: &sync::Prepared) -> anyhow::Result<String> {
    let c = &prepared.changes;
    let mut text = String::new();
    for path in c.added.iter().chain(&c.modified).chain(&c.removed) {
        let old = repo.read_file(prepared.state.tip, path)?.unwrap_or_default();
        let new = prepared.upserts.get(path).unwrap_or_default();
        let (old, new) = (String::from_utf8_lossy(&old), String::from_utf8_lossy(new));
        let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
        let (a, b) = (
            if c.added.contains(path) {
                "/dev/null".to_string()
            } else {
                format!("a/{path}")
            },
            if c.removed.contains(path) {
                "/dev/null".to_string()
            } else {
                format!("b/{path}")
            },
        );
        text.push_str(&diff.unified_diff().header(&a, &b).to_string());
    }
    Ok(text)
}

fn sync_cmd(config: &Config, args: &SyncArgs) -> anyhow::Result<Outcome> {
    let mut repo = open_repo(config, &args.repo)?;
    let with_envs = if args.snapshot.prs.is_none() {
        repo.prs_with_envs()?
    } else {
        BTreeSet::new()
    };
    let inputs = load_snapshot(config, &args.snapshot, &with_envs)?;
    let opts = sync_options(&args.view, &inputs);
    let report = sync::sync(&mut repo, config, &inputs.prs, inputs.now, &opts)?;
    let mut out = std::io::stdout().lock();
    match args.view.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Output::Text => {
            write!(
                out,
                "{}",
                plan_text(&report.plan, &report.changes, args.view.show_skipped)
            )?;
            match &report.commit {
                Some(commit) => writeln!(
                    out,
                    "committed {} to {} of {} (attempt {})",
                    &commit[..12],
                    report.branch,
                    report.repo,
                    report.attempts
                )?,
                None => writeln!(out, "no change: {} of {} already matches", report.branch, report.repo)?,
            }
        }
    }
    Ok(Outcome::Clean)
}

fn sync_options(view: &cli::PlanView, inputs: &Inputs) -> SyncOptions {
    SyncOptions {
        allow_mass_prune: view.allow_mass_prune,
        evidence: plan::Evidence {
            unconfirmed: inputs.unconfirmed.clone(),
            closed_by_operator: view.confirm_closed.iter().copied().collect(),
        },
    }
}

fn plan_text(plan: &Plan, changes: &Changes, show_skipped: bool) -> String {
    let mut text = String::new();
    for d in plan
        .decisions
        .iter()
        .filter(|d| show_skipped || d.action != Action::Skip)
    {
        text.push_str(&format!(
            "{:<7} {:<24} #{:<7} {}\n",
            d.action.to_string(),
            d.env,
            d.pr,
            d.reason
        ));
    }
    let mut counts = BTreeMap::new();
    for d in &plan.decisions {
        *counts.entry(d.action).or_insert(0usize) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(a, n)| format!("{n} {a}")).collect();
    text.push_str(&format!(
        "plan: {}; {} files to add, {} to change, {} to remove\n",
        if summary.is_empty() {
            "no pull requests".to_string()
        } else {
            summary.join(", ")
        },
        changes.added.len(),
        changes.modified.len(),
        changes.removed.len()
    ));
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsString;
        let table = [
            (true, None, true),
            (false, None, false),
            (true, Some(OsString::from("1")), false),
            (true, Some(OsString::new()), true),
            (false, Some(OsString::from("1")), false),
        ];
        for (terminal, no_color, want) in table {
            assert_eq!(
                super::colour(terminal, no_color.clone()),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }
}
