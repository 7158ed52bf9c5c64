//! GitHub, through octocrab (which owns authentication: a token, or a GitHub App whose installation
//! token it refreshes before expiry). Pull requests come back in GitHub's REST shape and are read by
//! the same parser as a snapshot file, so no SDK type leaves this module.
//!
//! Pruning needs positive evidence: open PRs are listed (every page), and every PR that has an
//! environment but is not in that listing is looked up on its own. Only a PR GitHub confirms closed can
//! lose its environment; a failed or partial listing loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::StatusCode;
use octocrab::Octocrab;

use crate::core::ports::PrSource;
use crate::error::{Error, Result, Sdk};
use crate::model::config::Config;
use crate::model::pr::{self, PullRequest, Snapshot};

/// The public API; `github.api_url` points elsewhere (GitHub Enterprise, or a test server).
pub const DEFAULT_API: &str = "https://api.github.com";
/// GitHub's largest page.
const PER_PAGE: u32 = 100;
/// A listing longer than this many pages is refused rather than trusted (100,000 open PRs).
const MAX_PAGES: usize = 1_000;
/// Attempts per request on server errors, lost connections and rate limits.
const ATTEMPTS: u32 = 5;
/// The most one request may wait in all before giving up: a CI job or a webhook sync should fail
/// clearly (nothing pruned) rather than hang until an hour-long rate-limit window resets.
const MAX_TOTAL_WAIT: Duration = Duration::from_secs(180);
/// First backoff after a server error or a lost connection; doubles each attempt.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest backoff step after server errors.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// GitHub: without `retry-after`, "wait for at least one minute before retrying" a secondary limit.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// A GitHub that does not accept the connection or answer within these is a lost connection, retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variables holding credentials (never the config file, never logged).
pub const TOKEN_VARS: [&str; 2] = ["PRENV_GITHUB_TOKEN", "GITHUB_TOKEN"];
pub const APP_KEY_VAR: &str = "PRENV_GITHUB_APP_KEY";

/// Why a PR's state is unknown, in words an operator can act on.
fn lookup_failure(e: &Error) -> String {
    let text = e.to_string();
    if text.contains("answered 404") {
        "GitHub answers 404: the PR or its repository was deleted or transferred, or the token cannot see it".into()
    } else {
        text
    }
}

/// A pull-request source backed by the GitHub REST API.
pub struct GitHub {
    client: Octocrab,
    /// The API root, to follow `Link` pages on it only.
    api: String,
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
            source: None,
        };
        let repository = config.github.repository.as_deref().ok_or_else(|| Error::Config {
            path: "prenv.toml".into(),
            message: "key `github.repository` is missing; without --prs prenv lists the PRs of this owner/name".into(),
        })?;
        let (owner, repo) = repository.split_once('/').expect("validated as owner/name at load");
        let api = config.github.api_url.as_deref().unwrap_or(DEFAULT_API);
        // One retry policy, prenv's: octocrab's own layer would retry 429s and 5xx at once.
        let builder = Octocrab::builder()
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(Some(CONNECT_TIMEOUT))
            .set_read_timeout(Some(READ_TIMEOUT))
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
            api: api.to_string(),
            owner: owner.to_string(),
            repo: repo.to_string(),
            stats: std::sync::Arc::new(stats),
        })
    }

    /// Open PRs (every page), plus a lookup of each PR in `with_envs` that the listing lacks. A
    /// failed listing fails the run (nothing can be planned without it); a failed lookup concerns
    /// one PR only: it is recorded as unconfirmed (its environment is kept) and the rest goes on.
    pub async fn snapshot(&self, with_envs: &BTreeSet<u64>) -> Result<Snapshot> {
        let mut prs = self.list_open().await?;
        let listed: BTreeSet<u64> = prs.iter().map(|p| p.number).collect();
        let mut unconfirmed = BTreeMap::new();
        for number in with_envs.difference(&listed) {
            let path = format!("/repos/{}/{}/pulls/{number}", self.owner, self.repo);
            let looked_up = match self.get(&path).await {
                Ok((body, _)) => pr::parse_snapshot(&format!("[{body}]"), &format!("GitHub PR #{number}")),
                Err(e) => Err(e),
            };
            match looked_up {
                Ok(one) => {
                    tracing::info!(pr = number, state = ?one.first().map(|p| p.state), "looked up a PR missing from the open listing");
                    prs.extend(one);
                }
                Err(e) => {
                    let why = lookup_failure(&e);
                    tracing::warn!(pr = number, error = %why, "cannot confirm the state of a PR that has an environment; keeping it");
                    unconfirmed.insert(*number, why);
                }
            }
        }
        prs.sort_by_key(|p| p.number);
        Ok(Snapshot { prs, unconfirmed })
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
                    source: None,
                });
            }
            let (body, link) = self.get(&url).await?;
            prs.extend(pr::parse_snapshot(&body, &format!("GitHub listing page {pages}"))?);
            next = self.next_page(link.as_deref())?;
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
                source: None,
            })?
        };
        Ok((value, link))
    }

    /// One request with prenv's retry policy ([`retry_wait`]) around it.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(String, Option<String>)> {
        use std::sync::atomic::Ordering;
        let consequence = if method == Method::Get {
            "nothing was pruned"
        } else {
            "retried on the next change"
        };
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (answer, message, cause) = match self.try_once(method, url, body).await {
                Tried::Answered(text, link) => return Ok((text, link)),
                Tried::Failed { answer, message, cause } => (answer, message, cause),
            };
            let jitter = f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX);
            let message = match retry_wait(&answer, attempt, chrono::Utc::now(), jitter) {
                Some(wait) if attempt < ATTEMPTS && waited + wait <= MAX_TOTAL_WAIT => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        status = answer.status.map(|s| s.as_u16()),
                        wait_ms = wait.as_millis() as u64,
                        attempt,
                        url,
                        "GitHub failed or asked us to wait; retrying"
                    );
                    waited += wait;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Some(wait) if attempt < ATTEMPTS => format!(
                    "{message}; GitHub asks to wait {}s more, past the {}s this run may wait; {consequence}, run again later",
                    wait.as_secs(),
                    MAX_TOTAL_WAIT.as_secs()
                ),
                Some(_) => format!("{message} (after {attempt} attempts); {consequence}"),
                None => format!("{message}; {consequence}"),
            };
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Github {
                action: if method == Method::Get {
                    "reading from GitHub"
                } else {
                    "writing to GitHub"
                },
                message,
                source: cause,
            });
        }
    }

    /// One attempt: the body and Link header of a success, or what the failure told us.
    async fn try_once(&self, method: Method, url: &str, body: Option<&serde_json::Value>) -> Tried {
        use std::sync::atomic::Ordering;
        let sent = match method {
            Method::Get => self.client._get(url).await,
            Method::Post => self.client._post(url, body).await,
            Method::Patch => self.client._patch(url, body).await,
        };
        let lost = |e: octocrab::Error| Tried::Failed {
            answer: Answer::lost(),
            message: format!("{url}: {}", short_error(&e)),
            cause: Some(Sdk {
                system: "octocrab",
                code: None,
                message: e.to_string(),
            }),
        };
        let response = match sent {
            Ok(response) => response,
            Err(e) => return lost(e),
        };
        let answer = Answer::of(&response);
        let link = header(&response, "link");
        if let Some(remaining) = answer.remaining {
            tracing::info!(remaining, "GitHub rate-limit budget");
            self.stats
                .rate_limit_remaining
                .store(i64::try_from(remaining).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        let text = match self.client.body_to_string(response).await {
            Ok(text) => text,
            Err(e) => return lost(e),
        };
        if answer.status.is_some_and(|s| s.is_success()) {
            self.stats.ok.fetch_add(1, Ordering::Relaxed);
            return Tried::Answered(text, link);
        }
        let answer = answer.with_message(&text);
        let status = answer.status.map_or(0, |s| s.as_u16());
        let what = if answer.is_rate_limit() {
            "rate limited"
        } else {
            "answered"
        };
        Tried::Failed {
            message: format!("{url}: {what} {status}: {}", github_message(&text)),
            answer,
            cause: None,
        }
    }
}

/// The outcome of one attempt.
enum Tried {
    /// A 2xx: the body and the Link header.
    Answered(String, Option<String>),
    Failed {
        answer: Answer,
        message: String,
        cause: Option<Sdk>,
    },
}

/// What a failed request told us, as far as the retry policy cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `None`: no answer at all (connection refused, reset or timed out).
    pub status: Option<StatusCode>,
    /// `retry-after`, in seconds.
    pub retry_after: Option<u64>,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset`, in UTC epoch seconds.
    pub reset: Option<i64>,
    /// The body says it is a secondary rate limit.
    pub secondary: bool,
}

impl Answer {
    fn lost() -> Answer {
        Answer::default()
    }

    fn of<B>(response: &http::Response<B>) -> Answer {
        Answer {
            status: Some(response.status()),
            retry_after: header(response, "retry-after").and_then(|v| v.trim().parse().ok()),
            remaining: header(response, "x-ratelimit-remaining").and_then(|v| v.trim().parse().ok()),
            reset: header(response, "x-ratelimit-reset").and_then(|v| v.trim().parse().ok()),
            secondary: false,
        }
    }

    fn with_message(mut self, body: &str) -> Answer {
        self.secondary = github_message(body)
            .to_ascii_lowercase()
            .contains("secondary rate limit");
        self
    }

    /// GitHub's rate limits answer 429, or 403 with a zero budget, a `retry-after` or a
    /// secondary-limit message (a plain 403 is a permission problem, not worth retrying).
    pub fn is_rate_limit(&self) -> bool {
        match self.status {
            Some(StatusCode::TOO_MANY_REQUESTS) => true,
            Some(StatusCode::FORBIDDEN) => self.remaining == Some(0) || self.retry_after.is_some() || self.secondary,
            _ => false,
        }
    }
}

/// prenv's one retry policy for GitHub (octocrab's own retry layer is switched off, so nothing
/// retries in a burst): how long to wait before attempt `attempt + 1`, or `None` when waiting
/// cannot help. Following GitHub's "Rate limits for the REST API" (docs.github.com): a
/// `retry-after` is waited exactly; else with `x-ratelimit-remaining: 0`, until
/// `x-ratelimit-reset`; else a secondary limit waits at least a minute, doubling on each repeat.
/// Server errors and lost connections back off exponentially from [`BACKOFF_START`], with "equal
/// jitter" (half fixed, half random) so that no two retries come closer than half the step.
/// `jitter` is a number in `[0, 1]`.
pub fn retry_wait(answer: &Answer, attempt: u32, now: chrono::DateTime<chrono::Utc>, jitter: f64) -> Option<Duration> {
    let step = |start: Duration| start.saturating_mul(1 << (attempt.saturating_sub(1)).min(16));
    if answer.is_rate_limit() {
        if let Some(secs) = answer.retry_after {
            return Some(Duration::from_secs(secs));
        }
        if let (Some(0), Some(reset)) = (answer.remaining, answer.reset) {
            let millis = reset.saturating_mul(1000).saturating_sub(now.timestamp_millis());
            return Some(Duration::from_millis(u64::try_from(millis).unwrap_or(0)));
        }
        return Some(step(SECONDARY_LIMIT_WAIT));
    }
    let retryable = match answer.status {
        None => true,
        Some(s) => s.is_server_error(),
    };
    retryable.then(|| {
        let step = step(BACKOFF_START).min(BACKOFF_MAX);
        step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    })
}

fn header<B>(response: &http::Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The pull-request source backed by GitHub, for synchronous callers (the command line, the
/// receiver's blocking sync worker).
pub struct GitHubPrs<'a>(pub &'a Config);

impl PrSource for GitHubPrs<'_> {
    fn snapshot(&self, with_envs: &BTreeSet<u64>) -> Result<Snapshot> {
        snapshot_blocking(self.0, with_envs)
    }
}

/// [`GitHub::snapshot`] from synchronous code: a one-off runtime (octocrab's client must be built
/// inside one), for the command line and the receiver's blocking sync worker.
pub fn snapshot_blocking(config: &Config, with_envs: &BTreeSet<u64>) -> Result<Snapshot> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting a runtime for", "GitHub", e))?;
    runtime.block_on(async { GitHub::from_env(config)?.snapshot(with_envs).await })
}

impl GitHub {
    /// The next page of a listing, as a path on the API: octocrab sends credentials only to
    /// relative URLs (or api.github.com), so a GitHub App's absolute `Link` URLs on GitHub Enterprise
    /// or a test server would go out unauthenticated. A next page on another host is refused.
    pub fn next_page(&self, link: Option<&str>) -> Result<Option<String>> {
        let Some(url) = link.and_then(next_link) else {
            return Ok(None);
        };
        same_origin_path(&url, &self.api)
            .map(Some)
            .ok_or_else(|| Error::Github {
                action: "following a page link",
                message: format!("the next page {url} is not on {}; refusing to follow it", self.api),
                source: None,
            })
    }
}

/// `url` as path and query when it is on the same scheme and host as `api` (or already relative).
fn same_origin_path(url: &str, api: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(url.to_string());
    }
    let origin = |u: &str| -> Option<(String, usize)> {
        let (scheme, rest) = u.split_once("://")?;
        let host = rest.split('/').next()?;
        Some((
            format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()),
            scheme.len() + 3 + host.len(),
        ))
    };
    let (theirs, at) = origin(url)?;
    let (ours, _) = origin(api)?;
    (theirs == ours).then(|| match &url[at..] {
        "" => "/".to_string(),
        rest => rest.to_string(),
    })
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

    fn answer(status: u16) -> Answer {
        Answer {
            status: Some(StatusCode::from_u16(status).unwrap()),
            ..Answer::default()
        }
    }

    #[test]
    fn the_retry_policy_follows_githubs_rate_limit_guidance() {
        let now: chrono::DateTime<chrono::Utc> = "2026-11-24T12:00:00Z".parse().unwrap();
        let (secs, ms) = (Duration::from_secs, Duration::from_millis);
        // An answer with `retry-after`, `x-ratelimit-remaining` and the reset `in` seconds from now.
        let with = |status, retry_after, remaining, reset_in: Option<i64>| Answer {
            retry_after,
            remaining,
            reset: reset_in.map(|s| now.timestamp() + s),
            ..answer(status)
        };
        let secondary = Answer {
            secondary: true,
            ..answer(403)
        };
        // (what GitHub said, the attempt it answered, jitter, the wait)
        let table: Vec<(&str, Answer, u32, f64, Option<Duration>)> = vec![
            (
                "429 retry-after is waited exactly",
                with(429, Some(7), None, None),
                1,
                0.9,
                Some(secs(7)),
            ),
            (
                "403 with an empty budget waits until the reset",
                with(403, None, Some(0), Some(42)),
                1,
                0.5,
                Some(secs(42)),
            ),
            (
                "retry-after wins over the reset",
                with(403, Some(3), Some(0), Some(42)),
                1,
                0.5,
                Some(secs(3)),
            ),
            (
                "a reset in the past waits nothing",
                with(403, None, Some(0), Some(-5)),
                1,
                0.5,
                Some(Duration::ZERO),
            ),
            (
                "secondary limit without headers waits a minute",
                secondary.clone(),
                1,
                0.0,
                Some(secs(60)),
            ),
            ("a repeated secondary limit doubles", secondary, 2, 0.0, Some(secs(120))),
            (
                "429 without headers is a secondary limit",
                answer(429),
                1,
                0.3,
                Some(secs(60)),
            ),
            ("a plain 403 is a permission problem", answer(403), 1, 0.5, None),
            ("404 is an answer, not a failure to retry", answer(404), 1, 0.5, None),
            ("422 is not retried", answer(422), 1, 0.5, None),
            ("502 backs off from half a second", answer(502), 1, 0.0, Some(ms(250))),
            ("502 with full jitter", answer(502), 1, 1.0, Some(ms(500))),
            ("503 doubles", answer(503), 3, 0.0, Some(secs(1))),
            ("server errors cap at 30 s", answer(500), 12, 1.0, Some(secs(30))),
            ("a lost connection backs off too", Answer::lost(), 2, 0.0, Some(ms(500))),
        ];
        for (name, answer, attempt, jitter, want) in table {
            assert_eq!(retry_wait(&answer, attempt, now, jitter), want, "{name}");
        }
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let link = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/repositories/1/pulls?page=2")
        );
        assert_eq!(next_link(r#"<https://x/p?page=1>; rel="prev""#), None);
        let api = "https://ghe.example.com/api/v3";
        assert_eq!(
            same_origin_path("https://GHE.example.com/api/v3/repositories/1/pulls?page=2", api).as_deref(),
            Some("/api/v3/repositories/1/pulls?page=2")
        );
        assert_eq!(same_origin_path("https://evil.example.com/x", api), None);
        assert_eq!(
            same_origin_path("http://ghe.example.com/x", api),
            None,
            "no downgrade to http"
        );
        assert_eq!(
            same_origin_path("/repos/a/b/pulls?page=3", api).as_deref(),
            Some("/repos/a/b/pulls?page=3")
        );
    }
}
