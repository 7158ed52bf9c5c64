//! `[watch]`: how `prenv watch` reports on PRs, and how fast it may write to GitHub.

use serde::{Deserialize, Serialize};

/// GitHub's secondary rate limit on content-creating requests (commit statuses, deployments and
/// their statuses, comments): "no more than 80 content-generating requests per minute and no more
/// than 500 content-generating requests per hour" (docs.github.com, "Rate limits for the REST API",
/// secondary rate limits).
pub const GITHUB_WRITES_PER_MINUTE: u32 = 80;
pub const GITHUB_WRITES_PER_HOUR: u32 = 500;

/// How `prenv watch` reports on PRs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    /// The commit status context on the head SHA.
    pub status_context: String,
    /// Grafana's base URL, for the dashboard and Loki links in the PR comment; unset omits them.
    pub grafana_url: Option<String>,
    /// An environment still terminating this long after deletion started is flagged on the PR and
    /// in `prenv_environments_terminating_too_long` (the product promises gone within 5 minutes).
    pub terminating_alert_secs: u64,
    /// The least time between two GitHub writes. GitHub: "If you are making a large number of POST,
    /// PATCH, PUT, or DELETE requests … wait at least one second between each request" (REST API
    /// best practices). 0 turns the gap off (a test GitHub only).
    pub write_interval_ms: u64,
    /// GitHub writes allowed in any 60 seconds; at most GitHub's 80. 0: no cap (a test GitHub only).
    pub writes_per_minute: u32,
    /// GitHub writes allowed in any hour; at most GitHub's 500. The default leaves 50 for people and
    /// other tools on the same account. 0: no cap (a test GitHub only).
    pub writes_per_hour: u32,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            status_context: "prenv/preview".into(),
            grafana_url: None,
            terminating_alert_secs: 300,
            write_interval_ms: 1_000,
            writes_per_minute: 60,
            writes_per_hour: 450,
        }
    }
}

impl Watch {
    /// The settings' problems, each naming its key and the fix; checked when the watcher starts.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let over = |key: &str, value: u32, limit: u32, per: &str| {
            format!(
                "key `watch.{key}` = {value} is above GitHub's secondary rate limit of {limit} content-creating requests per {per}; use at most {limit} (GitHub may block the account past it)"
            )
        };
        if self.writes_per_minute > GITHUB_WRITES_PER_MINUTE {
            problems.push(over(
                "writes_per_minute",
                self.writes_per_minute,
                GITHUB_WRITES_PER_MINUTE,
                "minute",
            ));
        }
        if self.writes_per_hour > GITHUB_WRITES_PER_HOUR {
            problems.push(over(
                "writes_per_hour",
                self.writes_per_hour,
                GITHUB_WRITES_PER_HOUR,
                "hour",
            ));
        }
        if self.status_context.trim().is_empty() {
            problems.push(
                "key `watch.status_context` is empty; name the commit status context, e.g. \"prenv/preview\"".into(),
            );
        }
        if self.write_interval_ms > 60_000 {
            problems.push(format!(
                "key `watch.write_interval_ms` = {} is more than a minute between writes; GitHub asks for at least 1000",
                self.write_interval_ms
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_stay_within_githubs_limits_and_excess_is_named() {
        assert!(Watch::default().problems().is_empty());
        let too_fast = Watch {
            writes_per_minute: 81,
            writes_per_hour: 501,
            ..Watch::default()
        };
        let problems = too_fast.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("watch.writes_per_minute") && problems[1].contains("watch.writes_per_hour"));
        let test_github = Watch {
            write_interval_ms: 0,
            writes_per_minute: 0,
            writes_per_hour: 0,
            ..Watch::default()
        };
        assert!(test_github.problems().is_empty());
    }
}
