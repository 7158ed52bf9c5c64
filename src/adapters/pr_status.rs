//! Telling the PR what its environment is doing: a commit status on the head SHA, one GitHub
//! Deployment per head commit with statuses (so GitHub shows "View deployment"), and exactly one
//! comment per environment, found again by a hidden marker and edited in place.
//!
//! GitHub is made to match the tracker's record, and written only where it differs from what was
//! posted: the marker carries the record (timeline, first-seen times) and what was posted (the last
//! commit status per head, the deployments not yet inactive, why the environment was removed), so a
//! restarted watcher writes nothing when nothing changed. Writes are paced ([`Pacer`]) within GitHub's
//! secondary rate limits; reads (finding the comment, looking up a PR) are not content-creating and
//! are not paced.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::adapters::github::{GitHub, Method};
use crate::core::status::Failure;
use crate::core::tracker::{EnvRecord, Head, Since, State, StatusSink, Why, WriteCounts, removal_due, why_removed};
use crate::error::{Error, Result};
use crate::model::config::{Lifecycle, Watch};
use crate::model::naming::EnvName;
use crate::model::pr;

/// The deployment budget the product promises (RNF-01): ready within 10 minutes.
pub const READY_BUDGET_SECS: i64 = 600;
/// GitHub refuses a commit status or deployment status description over 140 characters (422
/// "description is too long (maximum is 140 characters)").
pub const DESCRIPTION_MAX: usize = 140;
/// GitHub refuses a comment over 65,536 characters; prenv's stays far below (a bounded timeline and
/// a bounded message), and this is the guard.
pub const COMMENT_MAX: usize = 60_000;
const MARKER_PREFIX: &str = "<!-- prenv:";
const MARKER_V2: &str = "<!-- prenv:v2 ";
/// Pages of a PR's deployments read when sweeping them at removal (100 each).
const DEPLOYMENT_PAGES: usize = 10;
/// Recently updated PRs whose comments the startup sweep reads (one page): environments removed while
/// no watcher ran belong to PRs closed or changed shortly before.
const SWEEP_PRS: u32 = 100;

/// How the watcher reports, from `[watch]` in prenv.toml.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// The commit status context.
    pub context: String,
    /// Grafana's base URL for dashboard and log links; unset leaves them out.
    pub grafana_url: Option<String>,
}

/// What was posted for one environment, beyond the record: the marker's second half.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    /// The last commit status posted, by head SHA (a digest of state, description and target).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<String, String>,
    /// Deployments not yet marked inactive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<Deployment>,
    /// Why the environment was removed, once looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
}

/// A GitHub Deployment prenv created, and its last status ("created", "success", "failure").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub sha: String,
    pub id: u64,
    pub state: String,
}

/// The hidden marker of an environment's comment: `<!-- prenv:v2 {json} -->`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub env: String,
    /// `None`: the comment is prenv's but its memory is unreadable (an edited or older comment).
    #[serde(default)]
    pub record: Option<EnvRecord>,
    #[serde(default)]
    pub posted: Posted,
}

impl Marker {
    /// The marker line. `<` and `>` are escaped inside the JSON (`\u003c`, valid JSON), so no value
    /// can close the HTML comment.
    pub fn render(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"env\":\"{}\"}}", self.env));
        format!(
            "{MARKER_V2}{} -->",
            json.replace('<', "\\u003c").replace('>', "\\u003e")
        )
    }

    /// The marker for `env` in a comment body: the current form, or the first version's
    /// `<!-- prenv:env=… state=… sha=… deployment=… -->` (read into a record, so an upgraded watcher
    /// keeps the comment and what it said). `now` dates the history of a first-version marker.
    pub fn parse(body: &str, env: &str, now: DateTime<Utc>) -> Option<Marker> {
        let start = body.find(MARKER_PREFIX)?;
        let rest = &body[start..];
        let inner = &rest[..rest.find("-->")?];
        if let Some(json) = inner.strip_prefix(MARKER_V2) {
            return match serde_json::from_str::<Marker>(json) {
                Ok(marker) => (marker.env == env).then_some(marker),
                // Unreadable memory, but still this environment's comment: keep editing it.
                Err(_) => json.contains(&format!("\"env\":\"{env}\"")).then(|| Marker {
                    env: env.to_string(),
                    record: None,
                    posted: Posted::default(),
                }),
            };
        }
        legacy(&inner[MARKER_PREFIX.len()..], env, now)
    }
}

/// A first-version marker: `env=… state=… sha=… deployment=…`.
fn legacy(pairs: &str, env: &str, now: DateTime<Utc>) -> Option<Marker> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for pair in pairs.split_whitespace() {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k, v);
        }
    }
    if fields.get("env") != Some(&env) {
        return None;
    }
    let sha = fields.get("sha").copied().unwrap_or_default().to_string();
    let state = match fields.get("state").copied().unwrap_or_default() {
        "ready" => State::Ready,
        "failed" => State::Failed(Failure {
            reason: "Unknown".into(),
            object: None,
            message: String::new(),
        }),
        "destroying" | "destroying-stuck" => State::Destroying,
        "destroyed" => State::Destroyed,
        "reconciling" => State::Reconciling,
        _ => State::Committed,
    };
    let deployments = fields
        .get("deployment")
        .and_then(|d| d.parse().ok())
        .map(|id| Deployment {
            sha: sha.clone(),
            id,
            state: if state == State::Ready { "success" } else { "created" }.into(),
        });
    let record = (!sha.is_empty()).then(|| EnvRecord {
        env: env.to_string(),
        pr: 0,
        url: None,
        databases: None,
        stuck: fields.get("state") == Some(&"destroying-stuck"),
        deleting_since: None,
        noticed_late: false,
        state,
        heads: vec![Head {
            sha,
            since: now,
            from: Since::Seen,
            steps: Vec::new(),
        }],
        opening: None,
    });
    Some(Marker {
        env: env.to_string(),
        record,
        posted: Posted {
            deployments: deployments.into_iter().collect(),
            ..Posted::default()
        },
    })
}

/// Keeps GitHub writes within limits: a least gap between two writes, and caps over any minute and
/// any hour (0 disables a cap or the gap). Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct Pacer {
    gap: Duration,
    caps: [(u32, Duration); 2],
    sent: VecDeque<Instant>,
}

impl Pacer {
    pub fn new(watch: &Watch) -> Pacer {
        Pacer {
            gap: Duration::from_millis(watch.write_interval_ms),
            caps: [
                (watch.writes_per_minute, Duration::from_secs(60)),
                (watch.writes_per_hour, Duration::from_secs(3600)),
            ],
            sent: VecDeque::new(),
        }
    }

    /// How long the next write must wait at `now`.
    pub fn delay(&self, now: Instant) -> Duration {
        let mut wait = self
            .sent
            .back()
            .map_or(Duration::ZERO, |last| (*last + self.gap).saturating_duration_since(now));
        for (cap, window) in self.caps {
            let cap = cap as usize;
            if cap > 0 && self.sent.len() >= cap {
                // The cap-th latest write must leave the window first.
                let nth = self.sent[self.sent.len() - cap];
                wait = wait.max((nth + window).saturating_duration_since(now));
            }
        }
        wait
    }

    /// Records a write sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.sent.push_back(at);
        while self
            .sent
            .front()
            .is_some_and(|t| at.saturating_duration_since(*t) > Duration::from_secs(3600))
        {
            self.sent.pop_front();
        }
    }
}

/// What the reporter knows of one environment's comment and what it posted.
#[derive(Debug, Default)]
struct Entry {
    comment: Option<u64>,
    body: Option<String>,
    posted: Posted,
    /// GitHub's deployments of the environment were swept at removal.
    swept: bool,
}

/// Reports records to GitHub, remembering per environment what it posted.
pub struct PrStatus {
    github: GitHub,
    settings: StatusSettings,
    lifecycle: Lifecycle,
    pacer: Pacer,
    entries: BTreeMap<String, Entry>,
    writes: Arc<WriteCounts>,
}

impl StatusSink for PrStatus {
    /// Applies the pacing of `[watch]` and the pin rules of `[lifecycle]` (for removal reasons).
    fn configure(&mut self, watch: &Watch, lifecycle: &Lifecycle) {
        self.pacer = Pacer::new(watch);
        self.lifecycle = lifecycle.clone();
    }

    /// The writes made so far, shared with the metrics.
    fn writes(&self) -> Arc<WriteCounts> {
        self.writes.clone()
    }

    /// From the PR as GitHub has it now (`GET /repos/{owner}/{repo}/pulls/{n}`, the look-up
    /// [`PrStatus::why`] makes too): its close, or its pin's end.
    async fn removal_due(&mut self, pr: u64, _now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let path = self.github.repo_path(&format!("pulls/{pr}"));
        let (body, _) = self.github.call(Method::Get, &path, None).await?;
        let prs = pr::parse_snapshot(&format!("[{body}]"), &format!("GitHub PR #{pr}"))?;
        Ok(prs.first().and_then(|p| removal_due(p, &self.lifecycle)))
    }

    /// Finds the environment's comment (every page) and returns the memory its marker carries.
    async fn recall(&mut self, env: &str, pr: u64, now: DateTime<Utc>) -> Result<Option<EnvRecord>> {
        let mut entry = Entry::default();
        let mut next = Some(self.github.repo_path(&format!("issues/{pr}/comments?per_page=100")));
        while let Some(url) = next.take() {
            let (page, link) = self.github.call(Method::Get, &url, None).await?;
            for comment in page.as_array().into_iter().flatten() {
                let body = comment["body"].as_str().unwrap_or_default();
                if let Some(marker) = Marker::parse(body, env, now) {
                    entry.comment = comment["id"].as_u64();
                    entry.body = Some(body.to_string());
                    entry.posted = marker.posted;
                    let record = marker.record.map(|r| EnvRecord { pr, ..r });
                    self.entries.insert(env.to_string(), entry);
                    return Ok(record);
                }
            }
            next = self.github.next_page(link.as_deref())?;
        }
        self.entries.insert(env.to_string(), entry);
        Ok(None)
    }

    /// The startup sweep: among the most recently updated PRs, those with no environment in the
    /// cluster (`listed`) whose comment says the environment is not gone yet, with that memory. The
    /// watch cannot tell of them: kube-rs lists only what exists, and the watcher did not run when
    /// they went away.
    async fn sweep(
        &mut self,
        listed: &BTreeSet<String>,
        project_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, EnvRecord)>> {
        let path = self.github.repo_path(&format!(
            "pulls?state=all&sort=updated&direction=desc&per_page={SWEEP_PRS}"
        ));
        let (pulls, _) = self.github.call(Method::Get, &path, None).await?;
        let mut found = Vec::new();
        for number in pulls
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["number"].as_u64())
        {
            let Ok(env) = EnvName::new(project_id, number) else {
                continue;
            };
            let env = env.to_string();
            if listed.contains(&env) || self.entries.contains_key(&env) {
                continue;
            }
            match self.recall(&env, number, now).await? {
                Some(record) if record.state != State::Destroyed => found.push((env, record)),
                _ => {
                    self.entries.remove(&env);
                }
            }
        }
        Ok(found)
    }

    /// Makes GitHub show `record`: deployments first, then the commit status, then the comment (which
    /// carries the marker of all of it), each written only when it differs from what was posted.
    async fn write(&mut self, record: &EnvRecord, now: DateTime<Utc>) -> Result<()> {
        if !self.entries.contains_key(&record.env) {
            // Never post without knowing whether a comment exists: that is how duplicates start.
            self.recall(&record.env, record.pr, now).await?;
        }
        let mut entry = self.entries.remove(&record.env).unwrap_or_default();
        let result = self.sync(record, &mut entry, now).await;
        self.entries.insert(record.env.clone(), entry);
        result
    }
}

impl PrStatus {
    pub fn new(github: GitHub, settings: StatusSettings) -> PrStatus {
        let watch = Watch::default();
        PrStatus {
            github,
            settings,
            lifecycle: Lifecycle::default(),
            pacer: Pacer::new(&watch),
            entries: BTreeMap::new(),
            writes: Arc::default(),
        }
    }

    pub fn github(&self) -> &GitHub {
        &self.github
    }

    async fn sync(&mut self, record: &EnvRecord, entry: &mut Entry, now: DateTime<Utc>) -> Result<()> {
        let span = tracing::info_span!("report", pr = record.pr, env = %record.env, state = record.state.word());
        let _guard = span.enter();
        let removing = matches!(record.state, State::Destroying | State::Destroyed);
        if removing && entry.posted.why.is_none() {
            entry.posted.why = Some(self.why(record.pr, now).await);
        }
        self.deployments(record, entry).await?;
        self.commit_status(record, entry).await?;
        self.comment(record, entry).await
    }

    /// Why the environment of `pr` went away, from the PR as GitHub has it now.
    async fn why(&self, pr: u64, now: DateTime<Utc>) -> Why {
        let path = self.github.repo_path(&format!("pulls/{pr}"));
        let looked_up = match self.github.call(Method::Get, &path, None).await {
            Ok((body, _)) => pr::parse_snapshot(&format!("[{body}]"), &format!("GitHub PR #{pr}")),
            Err(e) => Err(e),
        };
        match looked_up.as_deref() {
            Ok([pr]) => why_removed(pr, &self.lifecycle, now),
            Ok(_) => Why::Unknown,
            Err(e) => {
                tracing::warn!(pr, error = %e, "cannot look up why the environment was removed");
                Why::Unknown
            }
        }
    }

    /// One paced write.
    async fn write_call(&mut self, path: &str, method: Method, body: &Value, kind: &AtomicU64) -> Result<Value> {
        let wait = self.pacer.delay(Instant::now());
        if !wait.is_zero() {
            tracing::debug!(wait_ms = wait.as_millis() as u64, "pacing GitHub writes");
            tokio::time::sleep(wait).await;
        }
        self.pacer.sent(Instant::now());
        let (answer, _) = self.github.call(method, path, Some(body)).await?;
        kind.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    /// One deployment per head commit; its status follows the head's state; older ones are marked
    /// inactive when the head is ready (they no longer run) or when they never succeeded (abandoned);
    /// at removal every deployment of the environment is, including any the marker lost.
    async fn deployments(&mut self, record: &EnvRecord, entry: &mut Entry) -> Result<()> {
        if matches!(record.state, State::Destroying | State::Destroyed) {
            if !entry.swept {
                self.sweep_deployments(record, entry).await?;
                entry.swept = true;
            }
            return self.retire(entry, |_| true).await;
        }
        let head = record.head().to_string();
        if !entry.posted.deployments.iter().any(|d| d.sha == head) {
            let id = match self.existing_deployment(&record.env, &head).await? {
                Some(id) => id,
                None => self.create_deployment(record).await?,
            };
            entry.posted.deployments.push(Deployment {
                sha: head.clone(),
                id,
                state: "created".into(),
            });
        }
        let want = match &record.state {
            State::Ready => Some(("success", None)),
            State::Failed(f) => Some(("failure", Some(f.summary(DESCRIPTION_MAX)))),
            _ => None,
        };
        let current = entry.posted.deployments.iter().position(|d| d.sha == head);
        if let (Some((state, description)), Some(i)) = (want, current)
            && entry.posted.deployments[i].state != state
        {
            let id = entry.posted.deployments[i].id;
            self.deployment_status(id, state, record.url.as_deref(), description.as_deref())
                .await?;
            entry.posted.deployments[i].state = state.into();
        }
        let head_ready = record.state == State::Ready;
        self.retire(entry, |d| d.sha != head && (head_ready || d.state != "success"))
            .await
    }

    /// Marks the deployments `which` selects inactive ("destroyed" for a transient environment).
    async fn retire(&mut self, entry: &mut Entry, which: impl Fn(&Deployment) -> bool) -> Result<()> {
        while let Some(i) = entry.posted.deployments.iter().position(&which) {
            let id = entry.posted.deployments[i].id;
            self.deployment_status(id, "inactive", None, None).await?;
            entry.posted.deployments.remove(i);
        }
        Ok(())
    }

    async fn deployment_status(
        &mut self,
        id: u64,
        state: &str,
        url: Option<&str>,
        description: Option<&str>,
    ) -> Result<()> {
        // auto_inactive is of no use: GitHub applies it only to non-transient environments, and prenv's
        // are transient; prenv retires older deployments itself.
        let mut body = json!({"state": state, "auto_inactive": false});
        if let Some(url) = url.filter(|_| state == "success") {
            body["environment_url"] = json!(url);
        }
        if let Some(description) = description {
            body["description"] = json!(description);
        }
        let path = self.github.repo_path(&format!("deployments/{id}/statuses"));
        let writes = self.writes.clone();
        self.write_call(&path, Method::Post, &body, &writes.deployment_statuses)
            .await
            .map(drop)
    }

    /// A deployment of `env` at `sha` that GitHub already has (created before a crash lost it from
    /// the marker), so none is created twice.
    async fn existing_deployment(&self, env: &str, sha: &str) -> Result<Option<u64>> {
        let path = self
            .github
            .repo_path(&format!("deployments?environment={env}&sha={sha}&per_page=100"));
        let (list, _) = self.github.call(Method::Get, &path, None).await?;
        Ok(list.as_array().and_then(|l| l.iter().find_map(|d| d["id"].as_u64())))
    }

    async fn create_deployment(&mut self, record: &EnvRecord) -> Result<u64> {
        // auto_merge false and no required contexts: GitHub would otherwise try to merge the base
        // branch (202, no deployment) or refuse while prenv's own status is pending (409).
        let body = json!({
            "ref": record.head(), "environment": record.env, "auto_merge": false,
            "required_contexts": [], "transient_environment": true, "production_environment": false,
            "description": format!("prenv preview of PR #{}", record.pr),
        });
        let path = self.github.repo_path("deployments");
        let writes = self.writes.clone();
        let created = self.write_call(&path, Method::Post, &body, &writes.deployments).await?;
        created["id"].as_u64().ok_or_else(|| Error::Github {
            action: "creating a deployment",
            message: format!("GitHub's answer has no id: {}", cut(&created.to_string(), 200)),
            source: None,
        })
    }

    /// Adds every deployment GitHub lists for the environment that is not inactive yet and not in the
    /// marker, so removal retires them all.
    async fn sweep_deployments(&self, record: &EnvRecord, entry: &mut Entry) -> Result<()> {
        let mut next = Some(
            self.github
                .repo_path(&format!("deployments?environment={}&per_page=100", record.env)),
        );
        let mut pages = 0;
        while let Some(url) = next.take().filter(|_| pages < DEPLOYMENT_PAGES) {
            pages += 1;
            let (list, link) = self.github.call(Method::Get, &url, None).await?;
            for d in list.as_array().into_iter().flatten() {
                let Some(id) = d["id"].as_u64() else { continue };
                if entry.posted.deployments.iter().any(|k| k.id == id) {
                    continue;
                }
                let path = self
                    .github
                    .repo_path(&format!("deployments/{id}/statuses?per_page=100"));
                let (statuses, _) = self.github.call(Method::Get, &path, None).await?;
                let inactive = statuses
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["state"] == "inactive"));
                if !inactive {
                    entry.posted.deployments.push(Deployment {
                        sha: d["sha"].as_str().unwrap_or_default().to_string(),
                        id,
                        state: "unknown".into(),
                    });
                }
            }
            next = self.github.next_page(link.as_deref())?;
        }
        Ok(())
    }

    async fn commit_status(&mut self, record: &EnvRecord, entry: &mut Entry) -> Result<()> {
        let (state, description, target) = commit_status_of(record, entry.posted.why, &self.lifecycle);
        let head = record.head().to_string();
        let key = digest(&format!(
            "{state}\n{description}\n{}\n{}",
            target.unwrap_or(""),
            self.settings.context
        ));
        entry
            .posted
            .statuses
            .retain(|sha, _| record.heads.iter().any(|h| &h.sha == sha));
        if entry.posted.statuses.get(&head) == Some(&key) {
            return Ok(());
        }
        let mut body = json!({"state": state, "context": self.settings.context, "description": description});
        if let Some(url) = target {
            body["target_url"] = json!(url);
        }
        let path = self.github.repo_path(&format!("statuses/{head}"));
        let writes = self.writes.clone();
        match self.write_call(&path, Method::Post, &body, &writes.statuses).await {
            Ok(_) => {}
            // The 1,000-statuses-per-SHA cap: retrying cannot help, and the comment still reports.
            Err(e) if e.to_string().contains("answered 422") => {
                tracing::error!(error = %e, "GitHub refused the commit status; not retried");
            }
            Err(e) => return Err(e),
        }
        entry.posted.statuses.insert(head, key);
        Ok(())
    }

    async fn comment(&mut self, record: &EnvRecord, entry: &mut Entry) -> Result<()> {
        let marker = Marker {
            env: record.env.clone(),
            record: Some(record.clone()),
            posted: entry.posted.clone(),
        };
        let text = comment_body(record, &marker, &self.settings, &self.lifecycle);
        if entry.body.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let body = json!({"body": text});
        let writes = self.writes.clone();
        if let Some(id) = entry.comment {
            let path = self.github.repo_path(&format!("issues/comments/{id}"));
            match self.write_call(&path, Method::Patch, &body, &writes.comments).await {
                Ok(_) => {
                    entry.body = Some(text);
                    return Ok(());
                }
                // Deleted by someone: post it again rather than lose the report.
                Err(e) if e.to_string().contains("answered 404") => entry.comment = None,
                Err(e) => return Err(e),
            }
        }
        let path = self.github.repo_path(&format!("issues/{}/comments", record.pr));
        let created = self.write_call(&path, Method::Post, &body, &writes.comments).await?;
        entry.comment = created["id"].as_u64();
        entry.body = Some(text);
        Ok(())
    }
}

/// The commit status for the record's head: state, description (at most [`DESCRIPTION_MAX`]) and
/// target URL. A removal never reads as a passing check while the PR may be open: it stays pending
/// and says why; only for a closed or merged PR does it resolve to success.
pub fn commit_status_of<'a>(
    record: &'a EnvRecord,
    why: Option<Why>,
    lifecycle: &Lifecycle,
) -> (&'static str, String, Option<&'a str>) {
    let url = record.url.as_deref();
    let (state, description, target) = match &record.state {
        // The wait for a head's image says which image: the PR author knows CI is not done.
        State::Waiting(why) if why.starts_with(crate::core::status::IMAGE_WAIT) => ("pending", why.clone(), url),
        // A queued environment says its place: the PR author knows it is the cluster that is full.
        State::Waiting(why) if why.starts_with(crate::core::capacity::QUEUED) => (
            "pending",
            format!("Preview environment {why}: waiting for room in the cluster"),
            None,
        ),
        State::Committed | State::Reconciling | State::Waiting(_) => {
            ("pending", "Preview environment is being deployed".to_string(), url)
        }
        State::Ready => ("success", "Preview environment ready".to_string(), url),
        State::Failed(f) => ("failure", f.summary(DESCRIPTION_MAX), url),
        State::Destroying | State::Destroyed => {
            let why = why.unwrap_or(Why::Unknown);
            let state = if why.pr_may_be_open() { "pending" } else { "success" };
            (state, format!("Preview removed: {}", why_words(why, lifecycle)), None)
        }
    };
    (state, cut(&description, DESCRIPTION_MAX), target)
}

/// Why, in words for a PR author.
pub fn why_words(why: Why, lifecycle: &Lifecycle) -> String {
    match why {
        Why::Merged => "the PR was merged".into(),
        Why::Closed => "the PR was closed".into(),
        Why::PinExpired => format!(
            "its pin (label `{}`) ran out {} h after the PR closed",
            lifecycle.pin_label, lifecycle.pin_hours
        ),
        Why::Draft => "the PR was converted to draft; it is deployed again when marked ready for review".into(),
        Why::NotDeployed => "the PR no longer gets a preview (e.g. a fork PR without its review label)".into(),
        Why::Unknown => "the PR could not be looked up".into(),
    }
}

/// The comment: the marker, a heading that names the state (never the failure text), the facts, the
/// failure's message, and the timeline of the last few commits. A pure function of the record, so an
/// unchanged record renders the same text and causes no edit.
pub fn comment_body(record: &EnvRecord, marker: &Marker, settings: &StatusSettings, lifecycle: &Lifecycle) -> String {
    let (icon, words) = match &record.state {
        State::Waiting(why) if why.starts_with(crate::core::capacity::QUEUED) => ("⏳", "is queued"),
        State::Committed | State::Reconciling | State::Waiting(_) => ("⏳", "is being deployed"),
        State::Ready => ("✅", "is ready"),
        State::Failed(_) => ("❌", "failed"),
        State::Destroying => ("🗑️", "is being removed"),
        State::Destroyed => ("🗑️", "was removed"),
    };
    let mut text = format!(
        "{}\n### {icon} Preview environment `{}` {words}\n\n| | |\n|---|---|\n",
        marker.render(),
        record.env
    );
    let removed = matches!(record.state, State::Destroying | State::Destroyed);
    if let Some(url) = &record.url {
        text.push_str(&format!(
            "| URL | {} |\n",
            if removed { format!("~~{url}~~") } else { url.clone() }
        ));
    }
    text.push_str(&format!("| Commit | `{}` |\n", short(record.head())));
    text.push_str(&state_rows(record, marker.posted.why, lifecycle));
    if let Some(dbs) = record.databases.as_deref().filter(|d| !d.is_empty()) {
        text.push_str(&format!("| Databases | {} |\n", cell(dbs)));
    }
    if let Some(grafana) = settings.grafana_url.as_deref().filter(|_| !removed) {
        let g = grafana.trim_end_matches('/');
        text.push_str(&format!(
            "| Dashboard | [Grafana]({g}/d/prenv-preview/preview?var-namespace={ns}) |\n| Logs | [Loki]({g}/explore?left=%7B%22queries%22:%5B%7B%22expr%22:%22%7Bnamespace%3D%5C%22{ns}%5C%22%7D%22%7D%5D%7D) |\n",
            ns = record.env
        ));
    }
    if let State::Failed(f) = &record.state {
        text.push_str(&format!(
            "\n<details><summary>Controller message</summary>\n\n~~~text\n{}\n~~~\n\n</details>\n",
            f.message.replace("~~~", "~ ~ ~")
        ));
    }
    text.push_str(&timeline(record));
    if text.chars().count() > COMMENT_MAX {
        text = text.chars().take(COMMENT_MAX).collect();
    }
    text
}

/// The table rows that depend on the state: elapsed time against the budget, the failure, the
/// removal and its reason.
fn state_rows(record: &EnvRecord, why: Option<Why>, lifecycle: &Lifecycle) -> String {
    let Some(head) = record.current() else {
        return String::new();
    };
    let from = match head.from {
        Since::Eligible => "from when the PR became deployable",
        Since::Committed => "from the commit",
        Since::Created => "from the environment's creation in the cluster",
        Since::Seen => "from when the watcher first saw this commit",
    };
    let step_time = |word: &str| head.steps.iter().rev().find(|s| s.0 == word).map(|s| s.1);
    match &record.state {
        State::Ready => {
            let took = head.time_to_ready().unwrap_or_default().num_seconds().max(0);
            let verdict = if took <= READY_BUDGET_SECS {
                "within"
            } else {
                "⚠️ over"
            };
            format!(
                "| Ready in | {} {from} ({verdict} the 10-minute budget) |\n",
                minutes(took)
            )
        }
        State::Failed(f) => {
            let mut rows = format!(
                "| Failure | {}{} |\n",
                cell(&f.reason),
                f.object
                    .as_deref()
                    .map(|o| format!(" on `{}`", cell(o)))
                    .unwrap_or_default()
            );
            if let Some(at) = step_time("failed") {
                rows.push_str(&format!(
                    "| Failed at | {} UTC, {} {from} |\n",
                    at.format("%H:%M:%S"),
                    minutes((at - head.since).num_seconds().max(0))
                ));
            }
            rows.push_str(&previous_ready(record));
            rows
        }
        State::Destroying | State::Destroyed => {
            let why = why_words(why.unwrap_or(Why::Unknown), lifecycle);
            let mut rows = format!("| Removed because | {} |\n", cell(&why));
            if let Some(at) = step_time("destroyed") {
                let late = if record.noticed_late {
                    " (noticed then, after a gap in the watch)"
                } else {
                    ""
                };
                rows.push_str(&format!("| Gone at | {} UTC{late} |\n", at.format("%Y-%m-%d %H:%M:%S")));
            }
            if record.stuck {
                rows.push_str(
                    "| ⚠️ | Still terminating past the alert threshold: check for stuck finalizers or volumes |\n",
                );
            }
            rows
        }
        State::Waiting(why) if why.starts_with(crate::core::capacity::QUEUED) => format!(
            "| Queued | {} (since {} UTC): the cluster has no room for another environment (`[capacity]` in prenv.toml); it is created, and this comment updated, as soon as one frees |\n",
            cell(why),
            head.since.format("%H:%M:%S")
        ),
        State::Waiting(why) => format!(
            "| Waiting | {} (since {} UTC) |\n",
            cell(why),
            head.since.format("%H:%M:%S")
        ),
        State::Committed | State::Reconciling => format!(
            "| Deploying | since {} UTC, {from} (10-minute budget) |\n",
            head.since.format("%H:%M:%S")
        ),
    }
}

/// When the current head failed and an earlier one was ready: it may still be serving.
fn previous_ready(record: &EnvRecord) -> String {
    let earlier = record
        .heads
        .iter()
        .rev()
        .skip(1)
        .find(|h| h.steps.iter().any(|s| s.0 == "ready"));
    match earlier {
        Some(h) => format!(
            "| Previous commit | `{}` was ready; the URL may still serve it |\n",
            short(&h.sha)
        ),
        None => String::new(),
    }
}

fn timeline(record: &EnvRecord) -> String {
    let mut out = String::from("\n<details><summary>Timeline (UTC)</summary>\n\n| Commit | Steps |\n|---|---|\n");
    for head in record.heads.iter().rev() {
        let steps: Vec<String> = head
            .steps
            .iter()
            .map(|s| format!("{} {}", s.0, s.1.format("%H:%M:%S")))
            .collect();
        out.push_str(&format!(
            "| `{}` (started {}) | {} |\n",
            short(&head.sha),
            head.since.format("%Y-%m-%d %H:%M:%S"),
            steps.join(" → ")
        ));
    }
    out.push_str("\n</details>\n");
    out
}

fn minutes(secs: i64) -> String {
    format!("{}m{:02}s", secs / 60, secs % 60)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Text made safe for a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'").replace('\n', " ")
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// A short stable digest (FNV-1a, 64 bits) for what was posted; not a security measure.
fn digest(s: &str) -> String {
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tracker::Step;

    fn at(s: &str) -> DateTime<Utc> {
        format!("2026-11-24T{s}Z").parse().unwrap()
    }

    fn record(state: State) -> EnvRecord {
        let steps = |n: usize| {
            (0..n)
                .map(|i| {
                    Step(
                        [
                            "committed",
                            "reconciling",
                            "ready",
                            "failed",
                            "ready",
                            "reconciling",
                            "failed",
                            "ready",
                        ][i]
                            .into(),
                        at("12:00:00"),
                    )
                })
                .collect()
        };
        EnvRecord {
            env: "shop-pr-7".into(),
            pr: 7,
            url: Some("https://shop-pr-7.p.example.com".into()),
            databases: Some("postgres".into()),
            state,
            stuck: false,
            deleting_since: None,
            noticed_late: false,
            heads: (0..3)
                .map(|i| Head {
                    sha: format!("{i}").repeat(40),
                    since: at("12:00:00"),
                    from: Since::Committed,
                    steps: steps(8),
                })
                .collect(),
            opening: None,
        }
    }

    #[test]
    fn markers_round_trip_match_only_their_environment_and_read_the_first_version() {
        let failure = Failure {
            reason: "ReconciliationFailed".into(),
            object: Some("Cluster/shop-pr-7/db".into()),
            message: "denied --> <script> \"quoted\" -->".into(),
        };
        let marker = Marker {
            env: "shop-pr-7".into(),
            record: Some(record(State::Failed(failure))),
            posted: Posted {
                deployments: vec![Deployment {
                    sha: "0".repeat(40),
                    id: 42,
                    state: "failure".into(),
                }],
                why: Some(Why::Merged),
                ..Posted::default()
            },
        };
        let body = format!("{}\n### text", marker.render());
        assert_eq!(
            body.matches("-->").count(),
            1,
            "a value closed the HTML comment: {body}"
        );
        assert_eq!(Marker::parse(&body, "shop-pr-7", at("12:00:00")), Some(marker));
        assert_eq!(Marker::parse(&body, "shop-pr-70", at("12:00:00")), None);
        assert_eq!(Marker::parse("no marker here", "shop-pr-7", at("12:00:00")), None);
        let damaged = "<!-- prenv:v2 {\"env\":\"shop-pr-7\",\"record\":{oops -->";
        assert_eq!(
            Marker::parse(damaged, "shop-pr-7", at("12:00:00")).map(|m| m.record),
            Some(None)
        );
        let old = format!(
            "<!-- prenv:env=shop-pr-7 state=ready sha={} deployment=1001 -->\n### old",
            "a".repeat(40)
        );
        let read = Marker::parse(&old, "shop-pr-7", at("12:00:00")).unwrap();
        assert_eq!(read.record.unwrap().state, State::Ready);
        assert_eq!(read.posted.deployments[0].id, 1001);
    }

    #[test]
    fn the_pacer_keeps_the_gap_and_the_caps() {
        let watch = Watch {
            write_interval_ms: 1000,
            writes_per_minute: 3,
            writes_per_hour: 5,
            ..Watch::default()
        };
        let mut pacer = Pacer::new(&watch);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(pacer.delay(t0), Duration::ZERO);
        pacer.sent(t0);
        assert_eq!(pacer.delay(t0), s(1), "a second between writes");
        pacer.sent(t0 + s(1));
        pacer.sent(t0 + s(2));
        assert_eq!(
            pacer.delay(t0 + s(3)),
            s(57),
            "three in a minute: wait until the first leaves it"
        );
        pacer.sent(t0 + s(60));
        pacer.sent(t0 + s(61));
        assert_eq!(pacer.delay(t0 + s(62)), s(3538), "five in an hour");
        let off = Pacer::new(&Watch {
            write_interval_ms: 0,
            writes_per_minute: 0,
            writes_per_hour: 0,
            ..Watch::default()
        });
        assert_eq!(off.delay(t0), Duration::ZERO);
    }

    #[test]
    fn statuses_stay_within_140_characters_and_removals_never_pass_an_open_pr() {
        let lifecycle = Lifecycle::default();
        let long = Failure {
            reason: "ReconciliationFailed".into(),
            object: Some("Cluster/shop-pr-7/db".into()),
            message: format!(
                "Cluster/shop-pr-7/db dry-run failed (Invalid): {} can't shrink existing storage from 2Gi to 1Gi",
                "admission webhook denied the request ".repeat(8)
            ),
        };
        let (state, description, _) = commit_status_of(&record(State::Failed(long)), None, &lifecycle);
        assert_eq!(state, "failure");
        assert!(
            description.chars().count() <= DESCRIPTION_MAX && description.ends_with("from 2Gi to 1Gi"),
            "{description}"
        );
        let table = [
            (Why::Merged, "success"),
            (Why::Closed, "success"),
            (Why::PinExpired, "success"),
            (Why::Draft, "pending"),
            (Why::NotDeployed, "pending"),
            (Why::Unknown, "pending"),
        ];
        let removed = record(State::Destroyed);
        for (why, want) in table {
            let (state, description, target) = commit_status_of(&removed, Some(why), &lifecycle);
            assert_eq!(state, want, "{why:?}");
            assert!(description.starts_with("Preview removed: ") && description.chars().count() <= DESCRIPTION_MAX);
            assert_eq!(target, None, "no link to a removed preview");
        }
    }

    #[test]
    fn the_comment_is_bounded_and_its_heading_does_not_repeat_the_failure() {
        let failure = Failure {
            reason: "HealthCheckFailed".into(),
            object: Some("Deployment/shop-pr-7/app".into()),
            message: "x".repeat(crate::core::status::MESSAGE_MAX),
        };
        let record = record(State::Failed(failure));
        let marker = Marker {
            env: record.env.clone(),
            record: Some(record.clone()),
            posted: Posted::default(),
        };
        let settings = StatusSettings {
            context: "prenv/preview".into(),
            grafana_url: Some("https://grafana.example.com".into()),
        };
        let body = comment_body(&record, &marker, &settings, &Lifecycle::default());
        assert!(body.chars().count() < 10_000, "{} characters", body.chars().count());
        let heading = body.lines().find(|l| l.starts_with("###")).unwrap();
        assert_eq!(heading, "### ❌ Preview environment `shop-pr-7` failed");
        assert!(
            body.contains("| Failure | HealthCheckFailed on `Deployment/shop-pr-7/app` |"),
            "{body}"
        );
        assert!(body.contains("| Previous commit | `1111111` was ready"), "{body}");
        assert_eq!(
            body,
            comment_body(&record, &marker, &settings, &Lifecycle::default()),
            "deterministic"
        );
    }

    #[test]
    fn a_queued_environment_says_queued_position_n_of_m_in_the_status_and_the_comment() {
        let queued = record(State::Waiting(crate::core::capacity::words(2, 3)));
        let (state, description, target) = commit_status_of(&queued, None, &Lifecycle::default());
        assert_eq!(state, "pending");
        assert_eq!(
            description,
            "Preview environment queued, position 2 of 3: waiting for room in the cluster"
        );
        assert_eq!(target, None, "nothing to link to before it exists");
        let marker = Marker {
            env: queued.env.clone(),
            record: Some(queued.clone()),
            posted: Posted::default(),
        };
        let settings = StatusSettings {
            context: "prenv/preview".into(),
            grafana_url: None,
        };
        let body = comment_body(&queued, &marker, &settings, &Lifecycle::default());
        assert!(
            body.contains("### ⏳ Preview environment `shop-pr-7` is queued"),
            "{body}"
        );
        assert!(
            body.contains("| Queued | queued, position 2 of 3 (since 12:00:00 UTC)"),
            "{body}"
        );
    }
}
