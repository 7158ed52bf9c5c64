//! `[watch]`: how `prenv watch` reports on PRs.

use serde::{Deserialize, Serialize};

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
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            status_context: "prenv/preview".into(),
            grafana_url: None,
            terminating_alert_secs: 300,
        }
    }
}
