//! The library's one error type: every variant names the system that failed and what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in prenv, by the system that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing, unreadable or has a bad value.
    #[error("config {path}: {message}")]
    Config { path: String, message: String },

    /// The pull-request snapshot is unreadable or misses a required field.
    #[error("pull-request snapshot {origin}: {message}")]
    Snapshot { origin: String, message: String },

    /// A generated name would not be valid in Kubernetes or DNS.
    #[error("name {name:?}: {message}")]
    Name { name: String, message: String },

    /// Rendering the desired tree failed (a bug or a bad template).
    #[error("render: {0}")]
    Render(String),

    /// A git operation on the environments repository failed.
    #[error("{action} {repo}: {message}")]
    Git {
        action: &'static str,
        /// The repository, with any credentials removed from its URL.
        repo: String,
        message: String,
    },

    /// GitHub refused, failed or rate-limited a request; nothing was pruned.
    #[error("GitHub: {action}: {message}")]
    Github { action: &'static str, message: String },

    /// The circuit breaker refused a run that would prune too many environments at once.
    #[error(
        "refusing to prune {prunes} of {existing} environments in one run (limit {limit_percent}% once more than {min_envs} exist): \
         a GitHub outage or a wrong snapshot looks like this; check the plan with `prenv plan`, then re-run with --allow-mass-prune if it is right"
    )]
    MassPrune {
        prunes: usize,
        existing: usize,
        limit_percent: u32,
        min_envs: usize,
    },

    /// Other writers kept moving the branch; every attempt to publish was rejected.
    #[error(
        "gave up publishing to {branch} of {repo} after {attempts} attempts: other writers kept moving the branch; run prenv sync again"
    )]
    Contention {
        repo: String,
        branch: String,
        attempts: u32,
    },

    /// Encrypting or decrypting a secret failed.
    #[error("secrets: {what}: {source}")]
    Secrets {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Reading or writing a local file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Snapshot { .. } => "snapshot",
            Error::Name { .. } => "name",
            Error::Render(_) => "render",
            Error::Git { .. } => "git",
            Error::MassPrune { .. } => "mass_prune",
            Error::Github { .. } => "github",
            Error::Contention { .. } => "contention",
            Error::Secrets { .. } => "secrets",
            Error::Io { .. } => "io",
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
