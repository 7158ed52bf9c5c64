//! `prenv watch`: runs in the cluster, watches the Flux Kustomizations (or Argo CD Applications) that
//! prenv's wiring creates, and reports each environment's state onto its PR. The shell only moves
//! data: watch events into the pure tracker (`core::tracker`), its reports into an outbox, and one
//! reporter task that drains the outbox to GitHub at a paced rate. A newer report of an environment
//! replaces an older one still waiting, so a backlog never writes stale states. It never crashes on a
//! strange object (logged and skipped) and never posts on the wrong PR (the PR comes from prenv's own
//! label). One watcher reports for several projects: each object goes to the project its
//! `prenv.dev/project` label names, whose own tracker, outbox and GitHub client post on that
//! project's repository; objects of a project it has no config for are ignored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};

use crate::adapters::kube::Seen;
use crate::app::metrics::{Exposition, Histogram, Kind, one, read};
use crate::core::status::{self, Observation};
use crate::core::tracker::{Effect, EnvRecord, Event, StatusSink, Tracker, WriteCounts};
use crate::error::{Error, Result};
use crate::model::config::{Config, Engine};
use crate::model::labels;

/// Buckets (seconds) of the open→ready, commit→ready and close→gone histograms. 300 and 600 are
/// the objectives (gone within 5 minutes, ready within 10), so the SLO rules
/// (monitoring-rules/slo-rules.yaml) read their shares from the `le="300"` and `le="600"` buckets.
const BUCKETS: [f64; 9] = [30.0, 60.0, 120.0, 180.0, 300.0, 420.0, 600.0, 900.0, 1800.0];
/// Buckets (seconds) of the delay from a state change to GitHub showing it.
const DELAY_BUCKETS: [f64; 8] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0];
/// A failed report or recall is retried after this, doubling up to [`RETRY_MAX`]: GitHub asks to
/// back off, and the next state change of the environment replaces the report anyway.
const RETRY_START: Duration = Duration::from_secs(15);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// How often a watch whose stream ended checks whether GitHub has been told everything.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// The environment states `prenv_environments` always lists (0 when none).
const STATES: [&str; 7] = [
    "unknown",
    "committed",
    "reconciling",
    "waiting",
    "ready",
    "failed",
    "destroying",
];

/// Prometheus metrics of the watcher.
pub struct WatchMetrics {
    open_to_ready: Histogram,
    commit_to_ready: Histogram,
    close_to_gone: Histogram,
    report_delay: Histogram,
    census: Mutex<(BTreeMap<&'static str, i64>, i64)>,
    failures: Mutex<BTreeMap<String, i64>>,
    writes: OnceLock<Arc<WriteCounts>>,
    pending_reports: AtomicU64,
    events: AtomicU64,
    relists: AtomicU64,
    interruptions: AtomicU64,
    pub skipped_objects: AtomicU64,
    pub report_errors: AtomicU64,
}

impl Default for WatchMetrics {
    fn default() -> Self {
        WatchMetrics {
            open_to_ready: Histogram::new(&BUCKETS),
            commit_to_ready: Histogram::new(&BUCKETS),
            close_to_gone: Histogram::new(&BUCKETS),
            report_delay: Histogram::new(&DELAY_BUCKETS),
            census: Mutex::default(),
            failures: Mutex::default(),
            writes: OnceLock::new(),
            pending_reports: AtomicU64::new(0),
            events: AtomicU64::new(0),
            relists: AtomicU64::new(0),
            interruptions: AtomicU64::new(0),
            skipped_objects: AtomicU64::new(0),
            report_errors: AtomicU64::new(0),
        }
    }
}

/// The metrics of every project a watcher reports for, each under its `project` label, and what
/// it ignored.
#[derive(Default)]
pub struct WatchedMetrics {
    /// Each project's id, its metrics and its GitHub client's counters.
    pub projects: Vec<(String, Arc<WatchMetrics>, Arc<crate::adapters::github::Stats>)>,
    /// Objects of a project the watcher has no config for: ignored, never reported.
    pub other_projects: Arc<AtomicU64>,
}

impl WatchedMetrics {
    /// The Prometheus text of every project's metrics.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        for (project, metrics, github) in &self.projects {
            out.scope(&[("project", project)]);
            metrics.render_into(github, &mut out);
        }
        out.scope(&[]);
        out.family(
            "prenv_watch_other_project_objects_total",
            "Objects of a project no config of this watcher is for (ignored, never reported).",
            Kind::Counter,
            None,
            &one(read(&self.other_projects)),
        );
        out.text()
    }
}

impl WatchMetrics {
    /// The Prometheus text of every metric, with the GitHub client's own counters, unlabelled.
    pub fn render(&self, github: &crate::adapters::github::Stats) -> String {
        let mut out = Exposition::default();
        self.render_into(github, &mut out);
        out.text()
    }

    /// Adds every metric, with the GitHub client's own counters, to `out` under its labels.
    pub fn render_into(&self, github: &crate::adapters::github::Stats, out: &mut Exposition) {
        self.open_to_ready.render(
            "prenv_open_to_ready_seconds",
            "From the PR becoming deployable (opened, ready for review, labelled, reopened; else the commit) to its environment's first head Ready; once per environment.",
            out,
        );
        self.commit_to_ready.render(
            "prenv_commit_to_ready_seconds",
            "From prenv committing a later head of an environment (else its first sight) to Ready; once per commit.",
            out,
        );
        self.close_to_gone.render(
            "prenv_close_to_gone_seconds",
            "From the PR's close (or its pin's end; else the deletion's start) to the environment gone, when the watcher saw it go.",
            out,
        );
        self.report_delay.render(
            "prenv_report_delay_seconds",
            "From a state change to GitHub showing it (pacing and retries included).",
            out,
        );
        self.render_environments(out);
        self.render_github(github, out);
        let singles = [
            ("prenv_watch_events_total", "Watch events received.", &self.events),
            (
                "prenv_watch_relists_total",
                "Full (re-)lists: the start, and each 410 Gone.",
                &self.relists,
            ),
            (
                "prenv_watch_interruptions_total",
                "Watch errors (retried with backoff).",
                &self.interruptions,
            ),
            (
                "prenv_watch_skipped_objects_total",
                "Objects that could not be read.",
                &self.skipped_objects,
            ),
            (
                "prenv_watch_report_errors_total",
                "Failed reports and comment look-ups (retried with backoff).",
                &self.report_errors,
            ),
        ];
        for (name, help, counter) in singles {
            out.family(name, help, Kind::Counter, None, &one(read(counter)));
        }
    }

    fn render_environments(&self, out: &mut Exposition) {
        let (states, stuck) = self.census.lock().expect("metrics lock").clone();
        let samples: Vec<(&str, i64)> = STATES
            .iter()
            .map(|s| (*s, states.get(s).copied().unwrap_or(0)))
            .collect();
        out.family(
            "prenv_environments",
            "Environments by state.",
            Kind::Gauge,
            Some("state"),
            &samples,
        );
        out.family(
            "prenv_environments_terminating_too_long",
            "Environments still terminating past the alert threshold.",
            Kind::Gauge,
            None,
            &one(stuck),
        );
        let failures = self.failures.lock().expect("metrics lock").clone();
        let samples: Vec<(&str, i64)> = failures.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        out.family(
            "prenv_environment_failures_total",
            "Failures reported, by the controller's reason.",
            Kind::Counter,
            Some("reason"),
            &samples,
        );
    }

    fn render_github(&self, github: &crate::adapters::github::Stats, out: &mut Exposition) {
        let requests = [
            ("ok", read(&github.ok)),
            ("retried", read(&github.retried)),
            ("failed", read(&github.failed)),
        ];
        out.family(
            "prenv_github_requests_total",
            "GitHub requests by outcome.",
            Kind::Counter,
            Some("outcome"),
            &requests,
        );
        if let Some(w) = self.writes.get() {
            let writes = [
                ("status", read(&w.statuses)),
                ("deployment", read(&w.deployments)),
                ("deployment_status", read(&w.deployment_statuses)),
                ("comment", read(&w.comments)),
            ];
            out.family(
                "prenv_github_writes_total",
                "GitHub writes (content-creating requests) by kind.",
                Kind::Counter,
                Some("kind"),
                &writes,
            );
        }
        let gauges = [
            (
                "prenv_github_rate_limit_remaining",
                "The last x-ratelimit-remaining seen (-1: none yet).",
                github.rate_limit_remaining.load(Ordering::Relaxed),
            ),
            (
                "prenv_github_pending_reports",
                "GitHub jobs waiting or under way: reports, comment look-ups, the startup sweep.",
                read(&self.pending_reports),
            ),
        ];
        for (name, help, value) in gauges {
            out.family(name, help, Kind::Gauge, None, &one(value));
        }
    }

    fn take(&self, effect: &Effect) {
        match effect {
            Effect::OpenToReady { seconds, .. } => self.open_to_ready.observe(*seconds),
            Effect::CommitToReady { seconds, .. } => self.commit_to_ready.observe(*seconds),
            Effect::Failure { reason, .. } => {
                let label: String = reason
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                *self.failures.lock().expect("metrics lock").entry(label).or_default() += 1;
            }
            // Measured by the reporter, once it knows when the PR closed.
            Effect::CloseToGone { .. } | Effect::Recall { .. } | Effect::Report(_) => {}
        }
    }
}

/// What the reporter task does next.
#[derive(Debug, Clone, PartialEq)]
enum Job {
    Recall {
        env: String,
        pr: u64,
        attempts: u32,
    },
    /// The startup sweep, with the environments the first list showed.
    Sweep {
        listed: std::collections::BTreeSet<String>,
        attempts: u32,
    },
    Report {
        record: Box<EnvRecord>,
        queued: Instant,
        attempts: u32,
    },
    /// Close→gone of an environment seen gone `at`: from the PR's close, looked up.
    Measure {
        env: String,
        pr: u64,
        at: chrono::DateTime<Utc>,
        /// From the deletion's start, if the PR cannot be looked up.
        fallback: f64,
    },
}

struct Queued {
    record: Box<EnvRecord>,
    queued: Instant,
    attempts: u32,
    not_before: Instant,
}

/// Work for the reporter: recalls first (they unblock the tracker), then one report per
/// environment, oldest first; a newer report replaces a waiting one. Pure: times are arguments.
#[derive(Default)]
struct Queue {
    recalls: VecDeque<(Job, Instant)>,
    measures: VecDeque<Job>,
    sweep: Option<(Job, Instant)>,
    reports: BTreeMap<String, Queued>,
    order: VecDeque<String>,
}

impl Queue {
    fn recall(&mut self, env: String, pr: u64, attempts: u32, not_before: Instant) {
        self.recalls.push_back((Job::Recall { env, pr, attempts }, not_before));
    }

    fn sweep(&mut self, listed: std::collections::BTreeSet<String>, attempts: u32, not_before: Instant) {
        self.sweep = Some((Job::Sweep { listed, attempts }, not_before));
    }

    fn report(&mut self, record: Box<EnvRecord>, now: Instant) {
        match self.reports.get_mut(&record.env) {
            Some(waiting) => waiting.record = record,
            None => {
                self.order.push_back(record.env.clone());
                let queued = Queued {
                    record,
                    queued: now,
                    attempts: 0,
                    not_before: now,
                };
                self.reports.insert(queued.record.env.clone(), queued);
            }
        }
    }

    /// Puts back a report that failed, unless a newer one arrived meanwhile.
    fn retry(&mut self, record: Box<EnvRecord>, queued: Instant, attempts: u32, now: Instant) {
        if self.reports.contains_key(&record.env) {
            return;
        }
        self.order.push_back(record.env.clone());
        let not_before = now + backoff(attempts);
        let env = record.env.clone();
        self.reports.insert(
            env,
            Queued {
                record,
                queued,
                attempts,
                not_before,
            },
        );
    }

    /// The next due job, or when the next one is due (`None`: nothing waits).
    fn take(&mut self, now: Instant) -> std::result::Result<Job, Option<Instant>> {
        if let Some(i) = self.recalls.iter().position(|(_, due)| *due <= now) {
            return Ok(self.recalls.remove(i).expect("a position in the queue").0);
        }
        if let Some(job) = self.measures.pop_front() {
            return Ok(job);
        }
        if self.sweep.as_ref().is_some_and(|(_, due)| *due <= now) {
            return Ok(self.sweep.take().expect("a sweep is queued").0);
        }
        if let Some(i) = self.order.iter().position(|env| self.reports[env].not_before <= now) {
            let env = self.order.remove(i).expect("a position in the queue");
            let q = self.reports.remove(&env).expect("ordered reports are queued");
            return Ok(Job::Report {
                record: q.record,
                queued: q.queued,
                attempts: q.attempts,
            });
        }
        let due = self
            .recalls
            .iter()
            .chain(&self.sweep)
            .map(|(_, d)| *d)
            .chain(self.reports.values().map(|q| q.not_before));
        Err(due.min())
    }
}

fn backoff(attempts: u32) -> Duration {
    RETRY_START.saturating_mul(1 << attempts.min(10)).min(RETRY_MAX)
}

/// The queue shared by the watch loop and the reporter task.
#[derive(Default)]
struct Outbox {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Jobs taken and not finished (0 or 1): a report sleeping in the pacer is still pending.
    busy: AtomicU64,
}

impl Outbox {
    fn with<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        let result = f(&mut self.queue.lock().expect("outbox lock"));
        self.wake.notify_one();
        result
    }

    /// Jobs waiting or under way: reports, comment look-ups and the sweep.
    fn len(&self) -> u64 {
        let q = self.queue.lock().expect("outbox lock");
        (q.reports.len() + q.recalls.len() + q.measures.len() + usize::from(q.sweep.is_some())) as u64
            + self.busy.load(Ordering::SeqCst)
    }

    fn done(&self) {
        self.busy.store(0, Ordering::SeqCst);
    }

    async fn next(&self) -> Job {
        loop {
            let next = {
                let mut queue = self.queue.lock().expect("outbox lock");
                let next = queue.take(Instant::now());
                // Marked busy under the lock, so `len` never misses a job between queue and work.
                if next.is_ok() {
                    self.busy.store(1, Ordering::SeqCst);
                }
                next
            };
            match next {
                Ok(job) => return job,
                Err(Some(due)) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(due.into()) => {}
                    }
                }
                Err(None) => self.wake.notified().await,
            }
        }
    }
}

/// The reporter task: drains the outbox to GitHub, one job at a time.
async fn report<S: StatusSink>(
    project_id: String,
    mut reporter: S,
    outbox: Arc<Outbox>,
    recalled: mpsc::UnboundedSender<(String, Option<EnvRecord>)>,
    metrics: Arc<WatchMetrics>,
) {
    loop {
        match outbox.next().await {
            Job::Recall { env, pr, attempts } => match reporter.recall(&env, pr, Utc::now()).await {
                Ok(memory) => {
                    if recalled.send((env, memory)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.report_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pr, env = %env, error = %e, "cannot read the PR's comments; retrying with backoff");
                    let due = Instant::now() + backoff(attempts);
                    outbox.with(|q| q.recall(env, pr, attempts + 1, due));
                }
            },
            Job::Sweep { listed, attempts } => match reporter.sweep(&listed, &project_id, Utc::now()).await {
                Ok(found) => {
                    for (env, record) in found {
                        tracing::info!(env = %env, "an environment gone while no watcher ran");
                        if recalled.send((env, Some(record))).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    metrics.report_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot sweep recent PRs for environments gone meanwhile; retrying with backoff");
                    let due = Instant::now() + backoff(attempts);
                    outbox.with(|q| q.sweep(listed, attempts + 1, due));
                }
            },
            Job::Report {
                record,
                queued,
                attempts,
            } => match reporter.write(&record, Utc::now()).await {
                Ok(()) => metrics.report_delay.observe(queued.elapsed().as_secs_f64()),
                Err(e) => {
                    metrics.report_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(pr = record.pr, env = %record.env, error = %e, "reporting failed; retrying with backoff");
                    outbox.with(|q| q.retry(record, queued, attempts + 1, Instant::now()));
                }
            },
            Job::Measure { env, pr, at, fallback } => match reporter.removal_due(pr, Utc::now()).await {
                Ok(Some(due)) => {
                    let seconds = (at - due).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics.close_to_gone.observe(seconds);
                }
                // Removed while the PR is open (a draft again, a fork unlabelled): no close.
                Ok(None) => tracing::debug!(pr, env = %env, "removed while its PR is open; no close→gone sample"),
                Err(e) => {
                    metrics.report_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pr, env = %env, error = %e, "cannot look up when the PR closed; close→gone counts from the deletion's start");
                    metrics.close_to_gone.observe(fallback);
                }
            },
        }
        outbox.done();
        metrics.pending_reports.store(outbox.len(), Ordering::Relaxed);
    }
}

/// Stops a task (the reporter, a project's watch) when the watch ends or is dropped (Ctrl-C).
struct Abort<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for Abort<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches and reports until the stream ends (in production it does not, short of a shutdown);
/// then finishes what is queued for GitHub and returns. Longer than most functions: one `select!`
/// loop over the stream, the pacer and the retry timer, whose arms share the outbox.
pub async fn watch<S: StatusSink>(
    config: &Config,
    stream: impl Stream<Item = Seen>,
    mut reporter: S,
    metrics: Arc<WatchMetrics>,
) -> Result<()> {
    let problems = config.watch.problems();
    if !problems.is_empty() {
        return Err(Error::Config {
            path: "prenv.toml".into(),
            message: problems.join("; "),
        });
    }
    reporter.configure(&config.watch, &config.lifecycle);
    let _ = metrics.writes.set(reporter.writes());
    let outbox = Arc::new(Outbox::default());
    let (recalled_tx, mut recalled) = mpsc::unbounded_channel();
    let _worker = Abort(tokio::spawn(report(
        config.project_id.clone(),
        reporter,
        outbox.clone(),
        recalled_tx,
        metrics.clone(),
    )));
    let alert_secs = config.watch.terminating_alert_secs;
    let mut tracker = Tracker::new(chrono::Duration::seconds(i64::try_from(alert_secs).unwrap_or(i64::MAX)));
    let mut tick = tokio::time::interval(Duration::from_secs(alert_secs.clamp(1, 30)));
    let mut stream = std::pin::pin!(stream);
    let mut ended = false;
    loop {
        let event = tokio::select! {
            // Recalled memory first: it unblocks environments the tracker holds back.
            biased;
            Some((env, memory)) = recalled.recv() => Some(Event::Recalled { env, memory }),
            _ = tick.tick() => Some(Event::Tick),
            seen = stream.next(), if !ended => match seen {
                None => {
                    ended = true;
                    None
                }
                Some(seen) => event_of(seen, config, &metrics),
            },
            // After the stream: until every recall is answered and every report written.
            _ = tokio::time::sleep(DRAIN_POLL), if ended => {
                if outbox.len() == 0 && recalled.is_empty() {
                    return Ok(());
                }
                None
            }
        };
        let Some(event) = event else { continue };
        let now = Instant::now();
        let first_list = matches!(event, Event::Listed) && !tracker.has_listed();
        let effects = tracker.observe(event, Utc::now());
        if first_list {
            outbox.with(|q| q.sweep(tracker.known(), 0, now));
        }
        for effect in effects {
            metrics.take(&effect);
            match effect {
                Effect::Recall { env, pr } => outbox.with(|q| q.recall(env, pr, 0, now)),
                Effect::Report(record) => outbox.with(|q| q.report(record, now)),
                Effect::CloseToGone { env, pr, at, seconds } => outbox.with(|q| {
                    q.measures.push_back(Job::Measure {
                        env,
                        pr,
                        at,
                        fallback: seconds,
                    })
                }),
                _ => {}
            }
        }
        *metrics.census.lock().expect("metrics lock") = tracker.census();
        metrics.pending_reports.store(outbox.len(), Ordering::Relaxed);
    }
}

/// One project a watcher reports for: its config, the sink that reaches its repository (with its
/// token), and its metrics.
pub struct Watched<S> {
    pub config: Config,
    pub reporter: S,
    pub metrics: Arc<WatchMetrics>,
}

/// Watches the objects of several projects on one stream (one watch of the engine's kind) until
/// it ends, each project as [`watch`] does alone: every object goes to the project its
/// `prenv.dev/project` label names, so each project's tracker sees only its own environments and
/// its reports reach only its own repository. A (re-)list and an interruption concern them all.
/// Objects of a project not among `projects` are ignored and counted, the first of each project
/// logged.
pub async fn watch_projects<S: StatusSink>(
    projects: Vec<Watched<S>>,
    stream: impl Stream<Item = Seen>,
    other_projects: Arc<AtomicU64>,
) -> Result<()> {
    // Checked before any watch starts: one project's bad `[watch]` must not leave the others
    // running half-configured.
    for p in &projects {
        let problems = p.config.watch.problems();
        if !problems.is_empty() {
            return Err(Error::Config {
                path: format!("the config of project {}", p.config.project_id),
                message: problems.join("; "),
            });
        }
    }
    let mut projects = projects;
    if projects.len() == 1
        && let Some(p) = projects.pop()
    {
        // One project: its objects only (the API server selects them), watched as ever.
        return watch(&p.config, stream, p.reporter, p.metrics).await;
    }
    let mut routes: BTreeMap<String, mpsc::UnboundedSender<Seen>> = BTreeMap::new();
    let mut runs = Vec::new();
    for p in projects {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert(p.config.project_id.clone(), tx);
        let own = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|seen| (seen, rx)) });
        // A task each: a busy stream (or project) never starves another project's loop of the
        // runtime's cooperative budget, which a task shares among all it polls.
        let id = p.config.project_id.clone();
        let task = tokio::spawn(async move { watch(&p.config, own, p.reporter, p.metrics).await });
        runs.push((id, Abort(task)));
    }
    let route = async move {
        let mut stream = std::pin::pin!(stream);
        let mut logged = BTreeSet::new();
        while let Some(seen) = stream.next().await {
            let object = match &seen {
                Seen::Applied(o) | Seen::Deleted(o) => o,
                Seen::Listing | Seen::Listed | Seen::Interrupted(_) => {
                    for tx in routes.values() {
                        let _ = tx.send(seen.clone());
                    }
                    continue;
                }
            };
            let project = object["metadata"]["labels"][labels::PROJECT]
                .as_str()
                .unwrap_or_default();
            match routes.get(project) {
                Some(tx) => {
                    let _ = tx.send(seen);
                }
                None => {
                    other_projects.fetch_add(1, Ordering::Relaxed);
                    if logged.insert(project.to_string()) {
                        let name = object["metadata"]["name"].as_str().unwrap_or_default();
                        tracing::info!(
                            project,
                            object = name,
                            "objects of a project this watcher has no config for are ignored"
                        );
                    }
                }
            }
        }
        // Every project's stream ends with this one: each finishes what it queued for GitHub.
        drop(routes);
    };
    route.await;
    for (project, mut run) in runs {
        match (&mut run.0).await {
            Ok(result) => result?,
            Err(e) => tracing::error!(project, error = %e, "a project's watch ended abnormally"),
        }
    }
    Ok(())
}

/// The tracker's event for what the watch saw; `None` for what it need not know (logged).
fn event_of(seen: Seen, config: &Config, metrics: &WatchMetrics) -> Option<Event> {
    metrics.events.fetch_add(1, Ordering::Relaxed);
    let read = |value: &serde_json::Value| -> Option<Observation> {
        let observed = match config.engine {
            Engine::Flux => status::from_flux(value),
            Engine::Argocd => status::from_argo(value, &config.image),
        };
        observed
            .map_err(|e| {
                metrics.skipped_objects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "object not readable as a prenv environment; skipped");
            })
            .ok()
    };
    match seen {
        Seen::Applied(value) => read(&value).map(Event::Applied),
        Seen::Deleted(value) => read(&value).map(Event::Deleted),
        Seen::Listing => {
            metrics.relists.fetch_add(1, Ordering::Relaxed);
            Some(Event::Listing)
        }
        Seen::Listed => Some(Event::Listed),
        Seen::Interrupted(e) => {
            metrics.interruptions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "watch interrupted; kube-runtime retries with backoff");
            None
        }
    }
}

/// Serves `/healthz` and `/metrics` for the watcher, every project's metrics under its label.
pub async fn serve_metrics(listen: SocketAddr, metrics: Arc<WatchedMetrics>) -> Result<()> {
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io("listening on", listen.to_string(), e))?;
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::io("serving on", listen.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tracker::{Head, Since, State};

    fn record(env: &str, state: State) -> Box<EnvRecord> {
        Box::new(EnvRecord {
            env: env.into(),
            pr: 7,
            url: None,
            databases: None,
            state,
            stuck: false,
            deleting_since: None,
            noticed_late: false,
            heads: vec![Head {
                sha: "a".repeat(40),
                since: Utc::now(),
                from: Since::Seen,
                steps: vec![],
            }],
            opening: None,
        })
    }

    #[test]
    fn the_outbox_serves_recalls_first_keeps_one_report_per_environment_and_backs_off() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.report(record("a", State::Committed), t0);
        q.report(record("b", State::Committed), t0);
        q.report(record("a", State::Ready), t0);
        q.recall("c".into(), 9, 0, t0);
        assert!(matches!(q.take(t0), Ok(Job::Recall { env, .. }) if env == "c"));
        let Ok(Job::Report { record: first, .. }) = q.take(t0) else {
            panic!("a report")
        };
        assert_eq!(
            (first.env.as_str(), first.state.clone()),
            ("a", State::Ready),
            "the newer report replaced the older"
        );
        q.retry(first, t0, 1, t0);
        assert!(matches!(q.take(t0), Ok(Job::Report { record, .. }) if record.env == "b"));
        assert_eq!(
            q.take(t0),
            Err(Some(t0 + backoff(1))),
            "the failed report waits its backoff"
        );
        q.report(
            record(
                "a",
                State::Failed(crate::core::status::Failure {
                    reason: "X".into(),
                    object: None,
                    message: String::new(),
                }),
            ),
            t0,
        );
        assert!(matches!(q.take(t0 + backoff(1)), Ok(Job::Report { record, .. }) if record.state.word() == "failed"));
        assert_eq!(q.take(t0), Err(None));
        assert_eq!(backoff(30), RETRY_MAX);
    }
}

/// The watch flow (stream → tracker → outbox → sink) against the in-memory status sink, replaying
/// the controllers' status fixtures: what the PRs are told, and how many writes it takes.
#[cfg(test)]
mod flow {
    use super::*;
    use crate::core::tracker::{MemorySink, State};

    const FLUX: &str = "engine = \"flux\"\n";
    /// The fixtures' deletions happened days before the wall clock: no stuck alert in these tables
    /// (the end-to-end tests cover it).
    const NEVER: u64 = 1 << 40;
    const ARGO: &str = "engine = \"argocd\"\n[argocd]\nrepo_url = \"https://github.com/acme/shop-environments.git\"\n";

    fn config(engine: &str) -> Config {
        let text = format!(
            "project_id = \"shop\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\"]\n{engine}[watch]\nwrite_interval_ms = 0\nwrites_per_minute = 0\nwrites_per_hour = 0\nterminating_alert_secs = {NEVER}\n"
        );
        Config::parse(&text, "test").expect("a valid test config")
    }

    /// The fixture's steps as watch runs: one `Vec<Seen>` per watcher process (a `restart` step
    /// starts the next), without the steps no watcher saw (`missed`).
    fn runs(fixture: &str) -> Vec<Vec<Seen>> {
        let value: serde_json::Value = serde_json::from_str(fixture).expect("a fixture");
        let mut runs = vec![Vec::new()];
        for step in value["steps"].as_array().expect("steps") {
            let run = runs.last_mut().expect("a run");
            match step["event"].as_str().unwrap_or_default() {
                _ if step["missed"] == true => {}
                "apply" => run.push(Seen::Applied(step["object"].clone())),
                "delete" => run.push(Seen::Deleted(step["object"].clone())),
                "list" | "relist" => {
                    run.push(Seen::Listing);
                    run.extend(
                        step["list"]["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .cloned()
                            .map(Seen::Applied),
                    );
                    run.push(Seen::Listed);
                }
                "restart" => runs.push(Vec::new()),
                _ => {}
            }
        }
        runs
    }

    /// Replays every run against one sink (the PRs outlive the watcher) and returns what was
    /// written, as "<pr> <short head> <state>[ <reason>]", and the writes of each run.
    async fn replay(engine: &str, fixture: &str) -> (Vec<String>, Vec<u64>) {
        let config = config(engine);
        let sink = MemorySink::default();
        let mut per_run = Vec::new();
        for run in runs(fixture) {
            let before = sink.writes().total();
            // Each event waits until GitHub was told about the one before, as events spaced out
            // in time are; otherwise a newer report replaces a waiting one (the outbox's job).
            let metrics = Arc::new(WatchMetrics::default());
            let idle = metrics.clone();
            let stream = futures::stream::iter(run).then(move |seen| {
                let idle = idle.clone();
                async move {
                    for _ in 0..10_000 {
                        tokio::task::yield_now().await;
                        if idle.pending_reports.load(Ordering::SeqCst) == 0 {
                            break;
                        }
                    }
                    seen
                }
            });
            watch(&config, stream, sink.clone(), metrics)
                .await
                .expect("the watch runs");
            per_run.push(sink.writes().total() - before);
        }
        let told = sink
            .prs()
            .written
            .iter()
            .map(|r| {
                let reason = match &r.state {
                    State::Failed(f) => format!(" {}", f.reason),
                    _ => String::new(),
                };
                format!("{} {} {}{reason}", r.pr, &r.head()[..7], r.state.word())
            })
            .collect();
        (told, per_run)
    }

    /// A row: name, engine config, fixture, what the PRs are told, writes per watcher run.
    type Row<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [u64]);

    #[tokio::test]
    async fn the_watch_flow_tells_each_pr_the_truth_once() {
        let table: &[Row] = &[
            (
                "a failed first deploy, then its fix",
                FLUX,
                include_str!("../../tests/fixtures/status/flux/first-deploy-health-timeout-then-fix.json"),
                // Reported failed at the first Ready=False, whatever observedGeneration says; its
                // retries (Ready=Unknown, then False again) tell nothing new.
                &[
                    "101 3f78685 committed",
                    "101 3f78685 failed HealthCheckFailed",
                    "101 b5e5ed6 committed",
                    "101 b5e5ed6 ready",
                ],
                &[4],
            ),
            (
                "two hours of interval reconciles",
                FLUX,
                include_str!("../../tests/fixtures/status/flux/interval-reconciles-unchanged.json"),
                // 24 interval runs, another PR's commit and a requested reconcile: nothing after the
                // first report.
                &["101 3f78685 ready"],
                &[1],
            ),
            (
                "a restart mid-way",
                FLUX,
                include_str!("../../tests/fixtures/status/flux/watcher-restart.json"),
                // The second process recalls what the first told and writes only what changed: 101
                // became ready meanwhile, 99 went away while no watcher ran (found by the sweep).
                &[
                    "102 89e6c98 ready",
                    "99 b6589fc ready",
                    "99 b6589fc destroying",
                    "101 3f78685 committed",
                    "101 3f78685 ready",
                    "99 b6589fc destroyed",
                ],
                &[4, 2],
            ),
            (
                "a sync failing through its retries, then a fix",
                ARGO,
                include_str!("../../tests/fixtures/status/argocd/new-commit-sync-fails-retries.json"),
                // Five retries and the SyncError that follows are one failure; the fix is ready.
                &[
                    "101 3f78685 ready",
                    "101 b5e5ed6 committed",
                    "101 b5e5ed6 failed SyncFailed",
                    "101 103e6d3 committed",
                    "101 103e6d3 ready",
                ],
                &[5],
            ),
        ];
        for (name, engine, fixture, want_told, want_writes) in table {
            let (told, writes) = replay(engine, fixture).await;
            assert_eq!(told, *want_told, "{name}");
            assert_eq!(writes, *want_writes, "{name}: writes per watcher run");
        }
    }
}
