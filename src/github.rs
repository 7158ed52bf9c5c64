//! GitHub, through octocrab (which owns authentication: a token, or a GitHub App whose installation
//! token it refreshes before expiry). Pull requests come back in GitHub's REST shape and are read by
//! the same parser as a snapshot file, so no SDK type leaves this module.
//!
//! Pruning needs positive evidence: open PRs are listed (every page), and every PR that has an
//! environment but is not in that listing is looked up on its own. Only a PR GitHub confirms closed can
//! lose its environment; a failed or partial listing loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;
use octocrab::Octocrab;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pr::{self, PullRequest};

/// The public API; `github.api_url` points elsewhere (GitHub Enterprise, or a test server).
pub const DEFAULT_API: &str = "https://api.github.com";
/// GitHub's largest page.
const PER_PAGE: u32 = 100;
/// A listing longer than this many pages is refused rather than trusted (100,000 open PRs).
const MAX_PAGES: usize = 1_000;
/// Attempts per request on server errors and rate limits.
const ATTEMPTS: u32 = 4;
/// Longest wait for a rate limit to reset before giving up with an error.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Environment variables holding credentials (never the config file, never logged).
pub const TOKEN_VARS: [&str; 2] = ["PRENV_GITHUB_TOKEN", "GITHUB_TOKEN"];
pub const APP_KEY_VAR: &str = "PRENV_GITHUB_APP_KEY";

/// A pull-request source backed by the GitHub REST API.
pub struct GitHub {
    client: Octocrab,
    owner: String,
    repo: String,
    /// Requests by outcome and the last rate-limit budget seen, for `/metrics`.
    pub stats: std::sync::Arc<Stats>,
}

/// What the GitHub client did, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: std::sync::atomic::AtomicU64,
    pub retried: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// `x-ratelimit-remaining` of the last response; -1 before any.
    pub rate_limit_remaining: std::sync::atomic::AtomicI64,
}

/// The HTTP methods prenv uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl GitHub {
    /// Authenticates from the environment: a GitHub App (`github.app_id`, `github.installation_id`,
    /// the private key PEM in `PRENV_GITHUB_APP_KEY`) or a token (`PRENV_GITHUB_TOKEN`/`GITHUB_TOKEN`).
    pub fn from_env(config: &Config) -> Result<GitHub> {
        let err = |m: String| Error::Github {
            action: "authenticating",
            message: m,
        };
        let repository = config.github.repository.as_deref().ok_or_else(|| Error::Config {
            path: "prenv.toml".into(),
            message: "key `github.repository` is missing; without --prs prenv lists the PRs of this owner/name".into(),
        })?;
        let (owner, repo) = repository.split_once('/').expect("validated as owner/name at load");
        let api = config.github.api_url.as_deref().unwrap_or(DEFAULT_API);
        let builder = Octocrab::builder()
            .base_uri(api)
            .map_err(|e| err(format!("github.api_url {api:?}: {e}")))?;
        let client = match (config.github.app_id, std::env::var(APP_KEY_VAR).ok()) {
            (Some(app_id), Some(pem)) => {
                let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|_| err(format!("{APP_KEY_VAR} is not an RSA private key in PEM form")))?;
                let app = builder
                    .app(app_id.into(), key)
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                let installation = config.github.installation_id.ok_or_else(|| {
                    err("key `github.installation_id` is missing; find it in the App's installation URL".into())
                })?;
                app.installation(installation.into()).map_err(|e| err(e.to_string()))?
            }
            (Some(_), None) => {
                return Err(err(format!(
                    "github.app_id is set but {APP_KEY_VAR} holds no private key"
                )));
            }
            (None, _) => {
                let token = TOKEN_VARS
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()))
                    .ok_or_else(|| {
                        err("no credentials: set GITHUB_TOKEN (or PRENV_GITHUB_TOKEN), or github.app_id with PRENV_GITHUB_APP_KEY; or pass --prs FILE".into())
                    })?;
                builder.personal_token(token).build().map_err(|e| err(e.to_string()))?
            }
        };
        let stats = Stats::default();
        stats
            .rate_limit_remaining
            .store(-1, std::sync::atomic::Ordering::Relaxed);
        Ok(GitHub {
            client,
            owner: owner.to_string(),
            repo: repo.to_string(),
            stats: std::sync::Arc::new(stats),
        })
    }

    /// Open PRs (every page), plus a lookup of each PR in `with_envs` that the listing lacks.
    pub async fn snapshot(&self, with_envs: &BTreeSet<u64>) -> Result<Vec<PullRequest>> {
        let mut prs = self.list_open().await?;
        let listed: BTreeSet<u64> = prs.iter().map(|p| p.number).collect();
        for number in with_envs.difference(&listed) {
            let path = format!("/repos/{}/{}/pulls/{number}", self.owner, self.repo);
            let (body, _) = self.get(&path).await?;
            let one = pr::parse_snapshot(&format!("[{body}]"), &format!("GitHub PR #{number}"))?;
            tracing::info!(pr = number, state = ?one.first().map(|p| p.state), "looked up a PR missing from the open listing");
            prs.extend(one);
        }
        prs.sort_by_key(|p| p.number);
        Ok(prs)
    }

    async fn list_open(&self) -> Result<Vec<PullRequest>> {
        let mut next = Some(format!(
            "/repos/{}/{}/pulls?state=open&per_page={PER_PAGE}",
            self.owner, self.repo
        ));
        let mut prs = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(Error::Github {
                    action: "listing pull requests",
                    message: format!("more than {MAX_PAGES} pages; refusing a listing this long"),
                });
            }
            let (body, link) = self.get(&url).await?;
            prs.extend(pr::parse_snapshot(&body, &format!("GitHub listing page {pages}"))?);
            next = link.as_deref().and_then(next_link);
        }
        tracing::info!(open = prs.len(), pages, "listed open pull requests");
        Ok(prs)
    }

    /// GET with retries on server errors and rate limits; returns the body and the Link header.
    async fn get(&self, url: &str) -> Result<(String, Option<String>)> {
        self.send(Method::Get, url, None).await
    }

    /// `repos/{owner}/{repo}` prefixed to `rest`.
    pub fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.owner, self.repo)
    }

    /// A JSON request with the same retries as reads; returns the parsed body and the Link header.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(serde_json::Value, Option<String>)> {
        let (text, link) = self.send(method, url, body).await?;
        let value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| Error::Github {
                action: "reading a GitHub answer",
                message: format!("{url}: {e}"),
            })?
        };
        Ok((value, link))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(String, Option<String>)> {
        use std::sync::atomic::Ordering;
        let fail = |m: String| {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            Error::Github {
                action: if method == Method::Get {
                    "reading from GitHub"
                } else {
                    "writing to GitHub"
                },
                message: m,
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = match method {
                Method::Get => self.client._get(url).await,
                Method::Post => self.client._post(url, body).await,
                Method::Patch => self.client._patch(url, body).await,
            }
            .map_err(|e| fail(format!("{url}: {}", short_error(&e))))?;
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let remaining = header("x-ratelimit-remaining");
            let reset = header("x-ratelimit-reset").and_then(|r| r.parse::<i64>().ok());
            let retry_after = header("retry-after").and_then(|r| r.parse::<u64>().ok());
            let link = header("link");
            if let Some(remaining) = &remaining {
                tracing::info!(remaining = %remaining, "GitHub rate-limit budget");
                if let Ok(n) = remaining.parse::<i64>() {
                    self.stats.rate_limit_remaining.store(n, Ordering::Relaxed);
                }
            }
            let body = self
                .client
                .body_to_string(response)
                .await
                .map_err(|e| fail(format!("{url}: {}", short_error(&e))))?;
            if status.is_success() {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                return Ok((body, link));
            }
            let limited = status == StatusCode::TOO_MANY_REQUESTS
                || (status == StatusCode::FORBIDDEN && (remaining.as_deref() == Some("0") || retry_after.is_some()));
            let wait = if limited {
                retry_after.map(Duration::from_secs).or_else(|| {
                    reset.map(|r| {
                        Duration::from_secs(u64::try_from(r - chrono::Utc::now().timestamp()).unwrap_or(0) + 1)
                    })
                })
            } else if status.is_server_error() {
                Some(Duration::from_millis(200 * u64::from(attempt)))
            } else {
                None
            };
            match wait {
                Some(wait) if attempt < ATTEMPTS && wait <= MAX_RATE_LIMIT_WAIT => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        status = status.as_u16(),
                        wait_ms = wait.as_millis() as u64,
                        url,
                        "GitHub asked us to wait; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    let what = if limited { "rate limited" } else { "answered" };
                    let consequence = if method == Method::Get {
                        "nothing was pruned"
                    } else {
                        "retried on the next change"
                    };
                    return Err(fail(format!(
                        "{url}: {what} {} after {attempt} attempts: {}; {consequence}",
                        status.as_u16(),
                        github_message(&body)
                    )));
                }
            }
        }
    }
}

/// [`GitHub::snapshot`] from synchronous code: a one-off runtime (octocrab's client must be built
/// inside one), for the command line and the receiver's blocking sync worker.
pub fn snapshot_blocking(config: &Config, with_envs: &BTreeSet<u64>) -> Result<Vec<PullRequest>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting a runtime for", "GitHub", e))?;
    runtime.block_on(async { GitHub::from_env(config)?.snapshot(with_envs).await })
}

/// The `rel="next"` URL of a Link header.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        rel.contains("rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

fn github_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

fn short_error(e: &octocrab::Error) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or(&text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let link = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/repositories/1/pulls?page=2")
        );
        assert_eq!(next_link(r#"<https://x/p?page=1>; rel="prev""#), None);
    }
}
