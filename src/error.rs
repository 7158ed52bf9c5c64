//! The library's one error type: every variant names the system that failed, keeps its cause, and
//! says what to do about it.

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
    #[error("{action} {repo}")]
    Git {
        action: &'static str,
        /// The repository, with any credentials removed from its URL.
        repo: String,
        #[source]
        source: Sdk,
    },

    /// GitHub refused, failed or rate-limited a request.
    #[error("GitHub: {action}: {message}")]
    Github {
        action: &'static str,
        message: String,
        #[source]
        source: Option<Sdk>,
    },

    /// The Kubernetes API failed.
    #[error("Kubernetes: {action}")]
    Kube {
        action: &'static str,
        #[source]
        source: Sdk,
    },

    /// A directory prenv writes into holds something else (a file, a link): nothing can go there.
    #[error(
        "{path} is not a directory (it is a file or a link): prenv cannot write there; move it away, then sync again"
    )]
    Obstacle { path: String },

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
    #[error("secrets: {what}")]
    Secrets {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An age identity file is unreadable as one.
    #[error("age identity file {path}: {message}")]
    Identity { path: String, message: String },

    /// The operating system's random generator failed (credentials are never made without it).
    #[error("no randomness for {what}: {source}")]
    Randomness {
        what: &'static str,
        #[source]
        source: getrandom::Error,
    },

    /// A container registry refused or failed a manifest check (never taken for "not pushed yet").
    #[error("registry: checking {image}: {message}")]
    Registry { image: String, message: String },

    /// Reading or writing a local file failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The error of an SDK (git2, octocrab, kube), kept as the cause with its text cleaned of
/// credentials: such errors can echo a URL holding a token, and the whole chain is printed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Sdk {
    /// The SDK: `git2`, `octocrab`, `kube`.
    pub system: &'static str,
    /// The SDK's own classification (git2's class and code, an HTTP status), for logs and tests.
    pub code: Option<String>,
    pub message: String,
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
            Error::Obstacle { .. } => "obstacle",
            Error::Github { .. } => "github",
            Error::Kube { .. } => "kube",
            Error::Contention { .. } => "contention",
            Error::Secrets { .. } => "secrets",
            Error::Identity { .. } => "identity",
            Error::Randomness { .. } => "randomness",
            Error::Registry { .. } => "registry",
            Error::Io { .. } => "io",
        }
    }

    /// The error and its causes, `: `-separated, as the command line prints them.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_the_action_and_keeps_the_cause() {
        let e = Error::Git {
            action: "fetching from",
            repo: "https://***@github.com/acme/envs.git".into(),
            source: Sdk {
                system: "git2",
                code: Some("Net/GenericError".into()),
                message: "could not connect".into(),
            },
        };
        assert_eq!(e.to_string(), "fetching from https://***@github.com/acme/envs.git");
        assert_eq!(
            e.chain(),
            "fetching from https://***@github.com/acme/envs.git: could not connect"
        );
        assert_eq!(e.metric_label(), "git");
    }
}
