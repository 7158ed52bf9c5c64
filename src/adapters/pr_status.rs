//! Telling the PR what its environment is doing: a commit status on the head SHA, a GitHub
//! Deployment with statuses (so GitHub shows "View deployment"), and exactly one comment, found again
//! by a hidden marker and edited in place. Writes happen only when the state changes; the marker in
//! the comment is the durable memory, so a restarted watcher posts nothing new.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::adapters::github::{GitHub, Method};
use crate::core::status::{EnvState, Observed};
use crate::error::Result;

/// The deployment budget the product promises (RNF-01): ready within 10 minutes.
pub const READY_BUDGET_SECS: i64 = 600;
const MARKER_PREFIX: &str = "<!-- prenv:";
/// The marker state of an environment still terminating past the alert threshold.
const STUCK: &str = "destroying-stuck";

/// How the watcher reports, from `[watch]` in prenv.toml.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// The commit status context.
    pub context: String,
    /// Grafana's base URL for dashboard and log links; unset leaves them out.
    pub grafana_url: Option<String>,
}

/// What was last reported for an environment, as the marker in its comment records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marker {
    pub env: String,
    pub state: String,
    pub sha: String,
    pub deployment: Option<u64>,
    pub comment: Option<u64>,
}

impl Marker {
    fn render(&self) -> String {
        let deployment = self.deployment.map(|d| format!(" deployment={d}")).unwrap_or_default();
        debug_assert!(!self.state.contains(char::is_whitespace));
        format!(
            "{MARKER_PREFIX}env={} state={} sha={}{deployment} -->",
            self.env, self.state, self.sha
        )
    }

    /// Reads a marker for `env` from a comment body.
    pub fn parse(body: &str, env: &str) -> Option<Marker> {
        let start = body.find(MARKER_PREFIX)?;
        let rest = &body[start + MARKER_PREFIX.len()..];
        let inner = &rest[..rest.find("-->")?];
        let mut marker = Marker::default();
        for pair in inner.split_whitespace() {
            match pair.split_once('=') {
                Some(("env", v)) => marker.env = v.to_string(),
                Some(("state", v)) => marker.state = v.to_string(),
                Some(("sha", v)) => marker.sha = v.to_string(),
                Some(("deployment", v)) => marker.deployment = v.parse().ok(),
                _ => {}
            }
        }
        (marker.env == env).then_some(marker)
    }
}

/// Reports states to GitHub, remembering per environment what it last wrote.
pub struct PrStatus {
    github: GitHub,
    settings: StatusSettings,
    known: BTreeMap<String, Marker>,
    /// When each environment was first seen in each state, for the timeline.
    timeline: BTreeMap<String, Vec<(String, DateTime<Utc>)>>,
    /// GitHub writes made, for the figures.
    pub writes: u64,
}

impl PrStatus {
    pub fn new(github: GitHub, settings: StatusSettings) -> PrStatus {
        PrStatus {
            github,
            settings,
            known: BTreeMap::new(),
            timeline: BTreeMap::new(),
            writes: 0,
        }
    }

    pub fn github(&self) -> &GitHub {
        &self.github
    }

    /// Reports one observation; returns whether anything was written.
    pub async fn report(&mut self, obs: &Observed, now: DateTime<Utc>) -> Result<bool> {
        let marker = match self.known.get(&obs.env) {
            Some(m) => m.clone(),
            None => self.find_comment(obs).await?.unwrap_or_else(|| Marker {
                env: obs.env.clone(),
                ..Marker::default()
            }),
        };
        let steps = self.timeline.entry(obs.env.clone()).or_default();
        if steps.last().map(|(s, _)| s.as_str()) != Some(obs.state.word()) {
            steps.push((obs.state.word().to_string(), now));
        }
        let word = if obs.stuck { STUCK } else { obs.state.word() };
        if marker.state == word && marker.sha == obs.head_sha {
            self.known.insert(obs.env.clone(), marker);
            return Ok(false);
        }
        let span = tracing::info_span!("report", pr = obs.pr, env = %obs.env, state = obs.state.word());
        let _guard = span.enter();
        let mut next = Marker {
            env: obs.env.clone(),
            state: word.to_string(),
            sha: obs.head_sha.clone(),
            deployment: marker.deployment.filter(|_| marker.sha == obs.head_sha),
            comment: marker.comment,
        };
        // Stuck is news for people (the comment), not a new deployment or commit state.
        if !obs.stuck {
            if obs.state != EnvState::Destroyed {
                self.commit_status(obs).await?;
            }
            self.deployment(obs, &mut next).await?;
        }
        self.comment(obs, &mut next, now).await?;
        tracing::info!("reported");
        self.known.insert(obs.env.clone(), next);
        Ok(true)
    }

    async fn commit_status(&mut self, obs: &Observed) -> Result<()> {
        let (state, description) = match &obs.state {
            EnvState::Ready => ("success", "Preview environment ready".to_string()),
            EnvState::Failed(reason) => ("failure", truncate(&format!("Preview failed: {reason}"), 140)),
            EnvState::Destroying | EnvState::Destroyed => ("success", "Preview environment removed".to_string()),
            other => ("pending", format!("Preview environment {}", other.word())),
        };
        let mut body = json!({"state": state, "context": self.settings.context, "description": description});
        if let Some(url) = &obs.url {
            body["target_url"] = json!(url);
        }
        let path = self.github.repo_path(&format!("statuses/{}", obs.head_sha));
        self.github.call(Method::Post, &path, Some(&body)).await?;
        self.writes += 1;
        Ok(())
    }

    async fn deployment(&mut self, obs: &Observed, marker: &mut Marker) -> Result<()> {
        // Destroying already marked the deployment inactive.
        if obs.state == EnvState::Destroyed
            && self
                .known
                .get(&obs.env)
                .is_some_and(|m| m.state.starts_with("destroying"))
        {
            return Ok(());
        }
        let id = match marker.deployment {
            Some(id) => id,
            None if matches!(obs.state, EnvState::Destroying | EnvState::Destroyed) => return Ok(()),
            None => {
                let body = json!({
                    "ref": obs.head_sha, "environment": obs.env, "auto_merge": false,
                    "required_contexts": [], "transient_environment": true, "production_environment": false,
                    "description": format!("prenv preview of PR #{}", obs.pr),
                });
                let (created, _) = self
                    .github
                    .call(Method::Post, &self.github.repo_path("deployments"), Some(&body))
                    .await?;
                self.writes += 1;
                let id = created["id"].as_u64().ok_or_else(|| crate::Error::Github {
                    action: "creating a deployment",
                    message: "GitHub's answer has no id".into(),
                    source: None,
                })?;
                marker.deployment = Some(id);
                id
            }
        };
        let state = match &obs.state {
            EnvState::Committed | EnvState::Reconciling => "in_progress",
            EnvState::Ready => "success",
            EnvState::Failed(_) => "failure",
            EnvState::Destroying | EnvState::Destroyed => "inactive",
        };
        let mut body = json!({"state": state, "auto_inactive": true});
        if let Some(url) = obs.url.as_ref().filter(|_| state == "success") {
            body["environment_url"] = json!(url);
        }
        let path = self.github.repo_path(&format!("deployments/{id}/statuses"));
        self.github.call(Method::Post, &path, Some(&body)).await?;
        self.writes += 1;
        Ok(())
    }

    /// Looks through every page of the PR's comments for this environment's marker.
    async fn find_comment(&self, obs: &Observed) -> Result<Option<Marker>> {
        let mut next = Some(
            self.github
                .repo_path(&format!("issues/{}/comments?per_page=100", obs.pr)),
        );
        while let Some(url) = next.take() {
            let (page, link) = self.github.call(Method::Get, &url, None).await?;
            for comment in page.as_array().into_iter().flatten() {
                let body = comment["body"].as_str().unwrap_or_default();
                if let Some(mut marker) = Marker::parse(body, &obs.env) {
                    marker.comment = comment["id"].as_u64();
                    return Ok(Some(marker));
                }
            }
            next = self.github.next_page(link.as_deref())?;
        }
        Ok(None)
    }

    async fn comment(&mut self, obs: &Observed, marker: &mut Marker, now: DateTime<Utc>) -> Result<()> {
        let body = json!({"body": self.comment_body(obs, marker, now)});
        match marker.comment {
            Some(id) => {
                let path = self.github.repo_path(&format!("issues/comments/{id}"));
                self.github.call(Method::Patch, &path, Some(&body)).await?;
            }
            None => {
                let path = self.github.repo_path(&format!("issues/{}/comments", obs.pr));
                let (created, _) = self.github.call(Method::Post, &path, Some(&body)).await?;
                marker.comment = created["id"].as_u64();
            }
        }
        self.writes += 1;
        Ok(())
    }

    fn comment_body(&self, obs: &Observed, marker: &Marker, now: DateTime<Utc>) -> String {
        let icon = match obs.state {
            EnvState::Ready => "✅",
            EnvState::Failed(_) => "❌",
            EnvState::Destroyed | EnvState::Destroying => "🗑️",
            _ => "⏳",
        };
        let mut text = format!(
            "{}\n### {icon} Preview environment `{}`: {}\n\n",
            marker.render(),
            obs.env,
            obs.state
        );
        text.push_str("| | |\n|---|---|\n");
        if let Some(url) = &obs.url {
            text.push_str(&format!("| URL | {url} |\n"));
        }
        text.push_str(&format!(
            "| Commit | `{}` |\n",
            &obs.head_sha[..7.min(obs.head_sha.len())]
        ));
        if let Some(dbs) = obs.databases.as_deref().filter(|d| !d.is_empty()) {
            text.push_str(&format!("| Databases | {dbs} |\n"));
        }
        if let Some(grafana) = &self.settings.grafana_url {
            let g = grafana.trim_end_matches('/');
            text.push_str(&format!(
                "| Dashboard | [Grafana]({g}/d/prenv-preview/preview?var-namespace={ns}) |\n| Logs | [Loki]({g}/explore?left=%7B%22queries%22:%5B%7B%22expr%22:%22%7Bnamespace%3D%5C%22{ns}%5C%22%7D%22%7D%5D%7D) |\n",
                ns = obs.env
            ));
        }
        let steps = self.timeline.get(&obs.env).cloned().unwrap_or_default();
        if !steps.is_empty() {
            let line: Vec<String> = steps
                .iter()
                .map(|(s, t)| format!("{s} {}", t.format("%H:%M:%S")))
                .collect();
            text.push_str(&format!("| Timeline | {} |\n", line.join(" → ")));
        }
        if obs.stuck {
            text.push_str("| ⚠️ | The namespace is still terminating more than 5 minutes after close: check for stuck finalizers or volumes |\n");
        }
        if let Some(created) = obs.created {
            let elapsed = (now - created).num_seconds().max(0);
            let verdict = match obs.state {
                EnvState::Ready if elapsed <= READY_BUDGET_SECS => "within the 10-minute budget",
                EnvState::Ready => "over the 10-minute budget",
                _ => "of the 10-minute budget",
            };
            text.push_str(&format!(
                "| Elapsed | {}m{:02}s {verdict} |\n",
                elapsed / 60,
                elapsed % 60
            ));
        }
        text
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_match_only_their_environment() {
        let m = Marker {
            env: "shop-pr-7".into(),
            state: "ready".into(),
            sha: "a".repeat(40),
            deployment: Some(42),
            comment: None,
        };
        let body = format!("{}\n### text", m.render());
        assert_eq!(Marker::parse(&body, "shop-pr-7"), Some(m));
        assert_eq!(Marker::parse(&body, "shop-pr-70"), None);
        assert_eq!(Marker::parse("no marker here", "shop-pr-7"), None);
        assert_eq!(Marker::parse("<!-- prenv: broken", "shop-pr-7"), None);
    }
}
