//! The command line: every clap type in one place, one `*Args` struct per subcommand.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "prenv",
    version,
    about = "One preview environment per GitHub pull request, the GitOps way"
)]
pub struct Cli {
    /// The configuration file (default: prenv.toml). `serve` and `watch` take it once per
    /// project (repeat it, or see --config-dir); every other command takes one.
    #[arg(long, global = true, env = "PRENV_CONFIG", action = clap::ArgAction::Append)]
    pub config: Vec<PathBuf>,

    /// Log filter for stderr (`error`, `warn`, `info`, `debug`, or a `tracing` filter).
    #[arg(long, global = true, default_value = "warn", env = "PRENV_LOG")]
    pub log: String,

    #[command(subcommand)]
    pub command: Commands,
}

/// Where a command that acts for one project reads its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "prenv.toml";

impl Cli {
    /// The one config of a command that acts for one project.
    pub fn config(&self) -> Result<PathBuf, String> {
        match self.config.as_slice() {
            [] => Ok(PathBuf::from(DEFAULT_CONFIG)),
            [one] => Ok(one.clone()),
            many => Err(format!(
                "--config is given {} times; only `serve` and `watch` act for several projects, every other command takes one config",
                many.len()
            )),
        }
    }

    /// The configs of `serve` and `watch`: every `--config`, then every `*.toml` of
    /// `--config-dir`; neither given: prenv.toml.
    pub fn configs(&self, dir: Option<&std::path::Path>) -> prenv::Result<Vec<PathBuf>> {
        let mut paths = self.config.clone();
        if let Some(dir) = dir {
            paths.extend(prenv::app::projects::files_in(dir)?);
        }
        if paths.is_empty() {
            paths.push(PathBuf::from(DEFAULT_CONFIG));
        }
        Ok(paths)
    }
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Scaffold an environments repository: templates, engine wiring and cluster infrastructure.
    Init(InitArgs),
    /// Add this config's project to an environments repository that may serve others already:
    /// check the config, scaffold its own template, print the GitHub steps; again, it changes nothing.
    Onboard(OnboardArgs),
    /// Write the desired tree (base/, overlays/, environments/, wiring) for a PR snapshot into a directory.
    Render(RenderArgs),
    /// Print what a sync would create, update, keep, pin and prune, without writing anything.
    Plan(PlanArgs),
    /// Make the environments repository match the PRs: one commit when something changed, pushed.
    Sync(SyncArgs),
    /// Receive GitHub webhooks and sync the affected PRs within a second, for one project or several
    /// (secret: PRENV_WEBHOOK_SECRET, or PRENV_WEBHOOK_SECRET_<PROJECT> for a project's own).
    Serve(ServeArgs),
    /// Watch the environments in the cluster and report their state onto their PRs (kubeconfig or
    /// in-cluster credentials; GitHub credentials as for sync).
    Watch(WatchArgs),
    /// Scan every commit of a repository for Secrets committed in plain text; exit 1 on any.
    #[command(after_help = prenv::app::audit::CHECKS)]
    Audit(AuditArgs),
    /// Encrypt, decrypt and re-key SOPS/age secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Encrypt a Secret manifest for `secrets.age_recipients` (for shared secrets in base/ or overlays/).
    Encrypt(EncryptArgs),
    /// Decrypt a SOPS file to standard output, for debugging.
    Decrypt(DecryptArgs),
    /// Re-encrypt the data key of every environment's secret for the configured recipients, in one commit.
    Rewrap(RewrapArgs),
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// The plain Secret manifest (YAML).
    pub file: PathBuf,
    /// Write the encrypted file here; default: standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Replace FILE with its encrypted form.
    #[arg(long, conflicts_with = "output")]
    pub in_place: bool,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The SOPS-encrypted file.
    pub file: PathBuf,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// An age identity file (`AGE-SECRET-KEY-...` lines); default: `$SOPS_AGE_KEY_FILE`.
    #[arg(long, env = "SOPS_AGE_KEY_FILE", hide_env_values = true)]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory of the environments repository (created if missing).
    #[arg(long)]
    pub repo: PathBuf,

    /// Overrides `engine` from the config.
    #[arg(long, value_parser = ["flux", "argocd"])]
    pub engine: Option<String>,

    /// Overwrite files whose content differs from the scaffold (edited files are kept otherwise).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct OnboardArgs {
    #[command(flatten)]
    pub repo: RepoArgs,

    /// Show what would be written and done, without writing anything.
    #[arg(long)]
    pub dry_run: bool,

    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (POST /webhook, GET /healthz, GET /metrics).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,

    #[command(flatten)]
    pub projects: ProjectsArgs,

    #[command(flatten)]
    pub repo: RepoArgs,

    /// Wait this long for more events before syncing a burst.
    #[arg(long, default_value_t = 200)]
    pub debounce_ms: u64,

    /// Full resync from the GitHub listing every this many seconds (the backstop); 0 disables it.
    #[arg(long, default_value_t = 600)]
    pub resync_secs: u64,

    /// Sync a PR whose environment waits for its head's image again after this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub image_recheck_secs: u64,

    /// Larger webhook bodies are refused with 413.
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// At most this many connections are open at once, lowered to fit the open-file limit (64
    /// files are kept for syncs). When all are taken, the one that has waited longest on its
    /// client is closed to make room; a request being answered is never closed.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// A client must send a request's complete headers within this many milliseconds of
    /// connecting or of its previous answer; so an idle connection is closed after it too.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// A request must be read in full and answered within this many seconds of its headers
    /// (GitHub gives up after 10); a slower one is answered 408 and its connection closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Address for GET /healthz and GET /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub listen: std::net::SocketAddr,

    #[command(flatten)]
    pub projects: ProjectsArgs,
}

/// The projects `serve` and `watch` act for, besides those of `--config`.
#[derive(Debug, Args)]
pub struct ProjectsArgs {
    /// A directory of configs, one `<project>.toml` per project (every `*.toml` in it; a mounted
    /// ConfigMap works). Adds to any --config.
    #[arg(long, env = "PRENV_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The repository to scan (a local path; bare or not).
    #[arg(long)]
    pub repo: PathBuf,

    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Which environments repository, and where remote ones are cached.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Path or URL of the environments repository (overrides `git.url`). Unset and unconfigured:
    /// a local bare repository at `$XDG_DATA_HOME/prenv/environments.git`, created on first use.
    #[arg(long)]
    pub repo: Option<String>,

    /// Where clones of remote repositories are cached (overrides `git.cache_dir`).
    #[arg(long, env = "PRENV_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Where pull requests and the time come from.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// A JSON array of pull requests in GitHub's REST shape (`GET /repos/{o}/{r}/pulls?state=all`).
    /// Without it, PRs come from the GitHub API (`github.repository`, credentials from the environment).
    #[arg(long)]
    pub prs: Option<PathBuf>,

    /// The time to decide with (RFC 3339), for reproducible runs; defaults to the system clock.
    #[arg(long, value_parser = parse_time)]
    pub now: Option<DateTime<Utc>>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,

    /// The directory to write; environments already rendered there are updated or pruned.
    #[arg(long)]
    pub out: PathBuf,

    /// Write nothing; exit 1 when the directory differs from what would be written.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub run: SyncArgs,

    /// Also print a unified diff of every file that would change.
    #[arg(long)]
    pub diff: bool,
}

/// How a plan is shown and what it may do; shared by `plan` and `sync`.
#[derive(Debug, Args)]
pub struct PlanView {
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Also list PRs that get no environment and never had one.
    #[arg(long)]
    pub show_skipped: bool,

    /// Prune even when more than `sync.max_prune_share` of the environments would go in one run.
    #[arg(long)]
    pub allow_mass_prune: bool,

    /// Treat PR N as closed although GitHub cannot confirm it (deleted, transferred, no access):
    /// your word is the evidence, and its environment is pruned. Repeatable.
    #[arg(long, value_name = "N")]
    pub confirm_closed: Vec<u64>,
}

/// What a sync (or a plan) runs on: the PRs, the repository, how it is shown and what it may do.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,

    #[command(flatten)]
    pub repo: RepoArgs,

    #[command(flatten)]
    pub view: PlanView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; write it like 2026-11-24T12:00:00Z"))
}
