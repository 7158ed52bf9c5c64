//! `prenv serve`: the webhook receiver. A signed `pull_request` event reaches the environments
//! repository in about a second: the signature is checked in constant time, duplicate deliveries are
//! dropped, bursts are debounced into one sync of the affected PRs, and a periodic full resync from
//! the GitHub listing is the backstop for anything a webhook missed. One receiver serves several
//! projects: each delivery goes to the project whose `github.repository` sent it, and each project
//! has its own queue, debounce, resync and sync, so one project's burst or failing push never holds
//! another's. Its front door (serve/front_door.rs)
//! bounds what a client without a signature can hold: header and body timeouts, and a connection
//! cap fitted to the open-file limit, so idle and slowloris connections cannot shut GitHub out.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use tokio::sync::mpsc;

use crate::adapters::git::EnvRepo;
use crate::adapters::github::GitHubPrs;
use crate::app::metrics::{Exposition, Histogram, Kind, one, read};
use crate::app::sync::{self, SyncOptions};
use crate::core::ports::{EnvStore, PrSource};
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::pr::{self, PullRequest};

mod front_door;
pub use front_door::{Limits, connection_cap, open_file_limit};

/// The `pull_request` actions that can change an environment.
pub const ACTIONS: &[&str] = &[
    "opened",
    "reopened",
    "synchronize",
    "closed",
    "labeled",
    "unlabeled",
    "ready_for_review",
    "converted_to_draft",
    "edited",
];
/// Delivery ids remembered to drop GitHub's redeliveries and replays.
const REMEMBERED_DELIVERIES: usize = 10_000;
/// Latency buckets (seconds) of the webhook → commit histogram.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// How the receiver runs, for every project it serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Bodies larger than this are refused (413).
    pub max_body: usize,
    /// How long to wait for more events before syncing a burst (each project its own).
    pub debounce: Duration,
    /// Full resync from the GitHub listing; `None` disables it.
    pub resync: Option<Duration>,
    /// What a client may hold before it is cut off.
    pub limits: Limits,
    /// How soon a PR whose environment waits for its head's image is synced again (default 30 s:
    /// CI pushes minutes after the event, and half a minute keeps the wait short with one request
    /// per waiting head). The periodic full resync remains the backstop.
    pub image_recheck: Duration,
}

/// One project the receiver acts for.
#[derive(Debug, Clone)]
pub struct Project {
    pub config: Config,
    /// The webhook secret GitHub signs this project's deliveries with (projects may share one).
    pub secret: Vec<u8>,
    /// Where its environments repository is (resolved by the CLI), and its cache clone.
    pub repo: String,
    pub cache_dir: std::path::PathBuf,
    /// The registry asked before an environment moves to a new image; `None`: image checks off.
    pub images: Option<sync::Images>,
}

enum Work {
    Pr {
        pr: Box<PullRequest>,
        received: Instant,
    },
    FullResync,
    /// A PR whose environment waits for its head's image, synced again after
    /// [`ServeOptions::image_recheck`].
    Recheck(Box<PullRequest>),
}

/// What the receiver measures of one project, exposed with its `project` label.
struct ProjectMetrics {
    /// Deliveries routed to the project, by outcome.
    deliveries: Mutex<BTreeMap<&'static str, u64>>,
    /// PRs with an environment whose state the last full resync could not confirm.
    unconfirmed: AtomicU64,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    latency: Histogram,
}

impl Default for ProjectMetrics {
    fn default() -> Self {
        ProjectMetrics {
            deliveries: Mutex::default(),
            unconfirmed: AtomicU64::new(0),
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            latency: Histogram::new(&BUCKETS),
        }
    }
}

struct Metrics {
    /// Deliveries no project is known for (refused before routing, other repositories), by outcome.
    deliveries: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections the receiver closed, by reason: `evicted` (to make room), `refused` (no room),
    /// `header_timeout`, `body_timeout`.
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    connections_open: AtomicU64,
    connections_max: AtomicU64,
    accept_errors: AtomicU64,
    /// Each project's own, by project id.
    projects: Vec<(String, Arc<ProjectMetrics>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deliveries: Mutex::default(),
            dropped: Mutex::default(),
            connections_open: AtomicU64::new(0),
            connections_max: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            projects: Vec::new(),
        }
    }
}

/// Adds one to the counter `key` of a labelled family.
fn bump(counters: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *counters.lock().expect("metrics lock").entry(key).or_default() += 1;
}

/// The samples of a labelled family, for [`family`].
fn samples(counters: &Mutex<BTreeMap<&'static str, u64>>) -> Vec<(&'static str, i64)> {
    counters
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|(k, n)| (*k, i64::try_from(*n).unwrap_or(i64::MAX)))
        .collect()
}

impl Metrics {
    fn delivery(&self, outcome: &'static str) {
        bump(&self.deliveries, outcome);
    }

    fn dropped(&self, reason: &'static str) {
        bump(&self.dropped, reason);
    }

    fn render(&self) -> String {
        let mut out = Exposition::default();
        let (deliveries, by) = ("prenv_webhook_deliveries_total", Some("outcome"));
        let help = "Webhook deliveries by outcome (with the project they were routed to, once known).";
        out.family(deliveries, help, Kind::Counter, by, &samples(&self.deliveries));
        for (project, m) in &self.projects {
            out.scope(&[("project", project)]);
            out.family(deliveries, help, Kind::Counter, by, &samples(&m.deliveries));
        }
        out.scope(&[]);
        self.render_connections(&mut out);
        for (project, m) in &self.projects {
            out.scope(&[("project", project)]);
            let syncs = [("ok", read(&m.syncs_ok)), ("error", read(&m.syncs_failed))];
            out.family(
                "prenv_syncs_total",
                "Syncs run by the receiver, by outcome.",
                Kind::Counter,
                by,
                &syncs,
            );
            out.family(
                "prenv_unconfirmed_prs",
                "PRs with an environment whose state GitHub could not confirm (kept).",
                Kind::Gauge,
                None,
                &one(read(&m.unconfirmed)),
            );
            m.latency.render(
                "prenv_webhook_to_commit_seconds",
                "From webhook receipt to the commit published.",
                &mut out,
            );
        }
        out.text()
    }

    fn render_connections(&self, out: &mut Exposition) {
        out.family(
            "prenv_webhook_connections_open",
            "Connections open to the receiver.",
            Kind::Gauge,
            None,
            &one(read(&self.connections_open)),
        );
        out.family(
            "prenv_webhook_connections_max",
            "The connection cap in force (--max-connections fitted to the open-file limit).",
            Kind::Gauge,
            None,
            &one(read(&self.connections_max)),
        );
        out.family(
            "prenv_webhook_connections_dropped_total",
            "Connections the receiver closed, by reason.",
            Kind::Counter,
            Some("reason"),
            &samples(&self.dropped),
        );
        out.family(
            "prenv_webhook_accept_errors_total",
            "Failed accept() calls (running out of files, above all); each pauses accepting.",
            Kind::Counter,
            None,
            &one(read(&self.accept_errors)),
        );
    }
}

impl ProjectMetrics {
    fn delivery(&self, outcome: &'static str) {
        bump(&self.deliveries, outcome);
    }
}

/// Where the deliveries of one project go.
struct Route {
    project: String,
    secret: Vec<u8>,
    repository: RepositoryFilter,
    work: mpsc::UnboundedSender<Work>,
    metrics: Arc<ProjectMetrics>,
}

struct Shared {
    routes: Vec<Route>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    metrics: Arc<Metrics>,
}

/// True when `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`; compared in
/// constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(hex_sig) = signature.and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The repository a delivery says it comes from (`repository` in every `pull_request` payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub full_name: String,
    pub id: Option<u64>,
}

/// What a webhook delivery means for prenv.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// A PR event that may change its environment.
    Pr(Box<PullRequest>),
    /// A PR event of another repository (an organisation webhook or App sends every repository's).
    Foreign(Origin),
    /// Signed and well-formed, but nothing for prenv (another event or action, or a ping).
    Ignored(&'static str),
}

/// Which repository's events this receiver acts on: an organisation webhook or a GitHub App
/// installation delivers the events of every repository, and a PR number means nothing outside
/// its own repository.
#[derive(Debug)]
pub struct RepositoryFilter {
    full_name: String,
    /// GitHub's id of the repository, learned from the first event that matches by name. Once
    /// known it decides: a rename keeps the id, a deleted and re-created namesake does not.
    id: Mutex<Option<u64>>,
}

impl RepositoryFilter {
    pub fn new(full_name: &str) -> RepositoryFilter {
        RepositoryFilter {
            full_name: full_name.to_string(),
            id: Mutex::new(None),
        }
    }

    /// True when `origin` names the configured repository (case-insensitively, as GitHub compares
    /// names), learning nothing: for a delivery not signed with this project's secret.
    pub fn names(&self, origin: &Origin) -> bool {
        origin.full_name.eq_ignore_ascii_case(&self.full_name)
    }

    /// True when `origin` is the configured repository (names compared case-insensitively, as GitHub does).
    pub fn accepts(&self, origin: &Origin) -> bool {
        let by_name = origin.full_name.eq_ignore_ascii_case(&self.full_name);
        let mut known = self.id.lock().expect("repository id lock");
        match (*known, origin.id) {
            (Some(id), Some(theirs)) => {
                if theirs == id && !by_name {
                    tracing::warn!(configured = %self.full_name, payload = %origin.full_name, "the repository was renamed; update github.repository");
                }
                theirs == id
            }
            (None, Some(theirs)) if by_name => {
                *known = Some(theirs);
                true
            }
            _ => by_name,
        }
    }
}

/// Reads a verified delivery; `is_ours` says whether its repository is the configured one, and is
/// asked before the PR is read, so another repository's event is ignored whatever its shape.
/// Errors are bad payloads (400), never panics, whatever the bytes.
pub fn parse_delivery(
    event: &str,
    body: &[u8],
    is_ours: impl Fn(&Origin) -> bool,
) -> std::result::Result<Delivery, String> {
    if event == "ping" {
        return Ok(Delivery::Ignored("ping"));
    }
    if event != "pull_request" {
        return Ok(Delivery::Ignored("event"));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let action = value.get("action").and_then(|a| a.as_str()).ok_or("no `action`")?;
    if !ACTIONS.contains(&action) {
        return Ok(Delivery::Ignored("action"));
    }
    let repository = value.get("repository").ok_or("no `repository`")?;
    let origin = Origin {
        full_name: repository
            .get("full_name")
            .and_then(|n| n.as_str())
            .ok_or("no `repository.full_name`")?
            .to_string(),
        id: repository.get("id").and_then(|i| i.as_u64()),
    };
    if !is_ours(&origin) {
        return Ok(Delivery::Foreign(origin));
    }
    let pr = value.get("pull_request").ok_or("no `pull_request`")?;
    let mut prs = pr::parse_snapshot(&format!("[{pr}]"), "webhook payload").map_err(|e| e.to_string())?;
    let label = value.get("label").and_then(|l| l.get("name")).and_then(|n| n.as_str());
    prs.pop()
        .map(|mut p| {
            // The event's time is the payload's `updated_at`: what made a PR deployable, and when.
            p.trigger = Some(pr::Trigger {
                action: action.to_string(),
                label: label.map(String::from),
                at: p.updated_at,
            });
            Delivery::Pr(Box::new(p))
        })
        .ok_or_else(|| "empty pull_request".into())
}

async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header("x-hub-signature-256");
    // Which projects' secrets sign it: any one admits the delivery, and routing then asks for
    // the secret of the project it names.
    let signed: Vec<bool> = shared
        .routes
        .iter()
        .map(|r| verify_signature(&r.secret, &body, signature))
        .collect();
    if !signed.contains(&true) {
        shared.metrics.delivery("bad_signature");
        tracing::warn!("webhook with a missing or wrong signature refused");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    // The project the delivery's repository belongs to, and whether its own secret signed it.
    let routed: Cell<Option<(usize, bool)>> = Cell::new(None);
    let parsed = parse_delivery(header("x-github-event").unwrap_or(""), &body, |o| {
        let signed_by_it = shared
            .routes
            .iter()
            .enumerate()
            .position(|(i, r)| signed[i] && r.repository.accepts(o));
        // Named by a project whose secret did not sign it: another project's secret at work.
        let named = || (shared.routes.iter().enumerate()).position(|(i, r)| !signed[i] && r.repository.names(o));
        routed.set(match signed_by_it {
            Some(at) => Some((at, true)),
            None => named().map(|at| (at, false)),
        });
        routed.get().is_some()
    });
    if let Some((at, false)) = routed.get() {
        let route = &shared.routes[at];
        route.metrics.delivery("bad_signature");
        tracing::warn!(project = %route.project, "a delivery of this project's repository not signed with its secret refused");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    // Remembered only once admitted: a delivery refused above cannot shadow the genuine one.
    if let Some(id) = header("x-github-delivery") {
        let mut seen = shared.seen.lock().expect("delivery lock");
        if !seen.0.insert(id.to_string()) {
            shared.metrics.delivery("duplicate");
            return (StatusCode::OK, "duplicate delivery ignored\n");
        }
        seen.1.push_back(id.to_string());
        if seen.1.len() > REMEMBERED_DELIVERIES
            && let Some(old) = seen.1.pop_front()
        {
            seen.0.remove(&old);
        }
    }
    match (parsed, routed.get()) {
        (Ok(Delivery::Pr(pr)), Some((at, _))) => {
            let route = &shared.routes[at];
            tracing::info!(project = %route.project, pr = pr.number, sha = %pr.head_sha, "pull_request event accepted");
            route.metrics.delivery("accepted");
            let _ = route.work.send(Work::Pr {
                pr,
                received: Instant::now(),
            });
            (StatusCode::ACCEPTED, "accepted\n")
        }
        (Ok(Delivery::Foreign(origin)), _) => {
            shared.metrics.delivery("other_repository");
            tracing::info!(repository = %origin.full_name, id = ?origin.id, "event of a repository no project is configured for ignored");
            (StatusCode::ACCEPTED, "ignored: another repository\n")
        }
        // Not reached: a PR is parsed only for a repository a project accepted, which routes it.
        (Ok(Delivery::Pr(pr)), None) => {
            shared.metrics.delivery("other_repository");
            tracing::warn!(pr = pr.number, "a PR event no project accepted ignored");
            (StatusCode::ACCEPTED, "ignored: another repository\n")
        }
        (Ok(Delivery::Ignored(what)), _) => {
            shared.metrics.delivery("ignored");
            tracing::debug!(what, "delivery ignored");
            (StatusCode::ACCEPTED, "ignored\n")
        }
        (Err(e), _) => {
            shared.metrics.delivery("invalid");
            tracing::warn!(error = %e, "invalid pull_request payload");
            (StatusCode::BAD_REQUEST, "invalid payload\n")
        }
    }
}

/// Runs the receiver for one project until SIGINT or SIGTERM, then finishes the work it accepted.
pub async fn serve(project: Project, options: ServeOptions) -> Result<()> {
    serve_projects(vec![project], options).await
}

/// Runs the receiver for every project in `projects` until SIGINT or SIGTERM, then finishes the
/// work each accepted. Each project has its own queue, debounce, resync timer and worker, so a
/// burst or a failing push of one never delays another's syncs.
pub async fn serve_projects(projects: Vec<Project>, options: ServeOptions) -> Result<()> {
    if projects.is_empty() {
        return Err(Error::Config {
            path: "--config".into(),
            message: "no project to serve: give a config with --config FILE or --config-dir DIR".into(),
        });
    }
    let mut routes = Vec::new();
    let mut pipelines = Vec::new();
    for project in projects {
        let repository = project.config.github.repository.clone().ok_or_else(|| Error::Config {
            path: format!("the config of project {}", project.config.project_id),
            message: "key `github.repository` is missing; `prenv serve` acts only on the events of this owner/name (an organisation webhook or GitHub App delivers every repository's)".into(),
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(ProjectMetrics::default());
        routes.push(Route {
            project: project.config.project_id.clone(),
            secret: project.secret.clone(),
            repository: RepositoryFilter::new(&repository),
            work: tx.clone(),
            metrics: metrics.clone(),
        });
        pipelines.push((project, tx, rx, metrics));
    }
    let metrics = Arc::new(Metrics {
        projects: routes.iter().map(|r| (r.project.clone(), r.metrics.clone())).collect(),
        ..Metrics::default()
    });
    let shared = Arc::new(Shared {
        routes,
        seen: Mutex::new((HashSet::new(), VecDeque::new())),
        metrics: metrics.clone(),
    });
    let metrics_route = {
        let metrics = metrics.clone();
        move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }
    };
    let app = axum::Router::new()
        .route("/webhook", post(webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_route))
        .layer(DefaultBodyLimit::max(options.max_body))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::io("listening on", options.listen.to_string(), e))?;
    let served: Vec<&str> = pipelines.iter().map(|p| p.0.config.project_id.as_str()).collect();
    tracing::info!(listen = %options.listen, max_connections = options.limits.max_connections, projects = ?served, "webhook receiver ready");
    let mut resyncs = Vec::new();
    let mut workers = Vec::new();
    for (project, tx, rx, metrics) in pipelines {
        if let Some(every) = options.resync {
            resyncs.push(resync_timer(every, tx.clone()));
        }
        let recheck = Recheck {
            after: options.image_recheck,
            queue: tx.downgrade(),
            scheduled: Arc::new(Mutex::new(HashSet::new())),
        };
        drop(tx);
        workers.push(tokio::spawn(worker(project, options.clone(), rx, metrics, recheck)));
    }
    front_door::front_door(listener, app, options.limits, metrics, shutdown_signal()).await;
    tracing::info!("shutting down: finishing accepted work");
    for resync in resyncs {
        resync.abort();
    }
    // The router (and its senders) is gone: each worker drains its queue and stops.
    for worker in workers {
        let _ = worker.await;
    }
    Ok(())
}

/// Queues a full resync every `every`, the first after one period.
fn resync_timer(every: Duration, tx: mpsc::UnboundedSender<Work>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if tx.send(Work::FullResync).is_err() {
                break;
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Takes one project's work off its queue, debounces bursts and runs one sync at a time.
async fn worker(
    project: Project,
    options: ServeOptions,
    mut rx: mpsc::UnboundedReceiver<Work>,
    metrics: Arc<ProjectMetrics>,
    recheck: Recheck,
) {
    let project = Arc::new(project);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.debounce;
        while let Ok(Some(more)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            batch.push(more);
        }
        let full = batch.iter().any(|w| matches!(w, Work::FullResync));
        let mut prs: BTreeMap<u64, PullRequest> = BTreeMap::new();
        let mut received = Vec::new();
        for work in batch {
            let pr = match work {
                Work::Pr { pr, received: at } => {
                    received.push(at);
                    pr
                }
                Work::Recheck(pr) => pr,
                Work::FullResync => continue,
            };
            // The latest state of each PR wins; ties go to the later delivery.
            match prs.get(&pr.number) {
                Some(old) if old.updated_at > pr.updated_at => {}
                _ => {
                    prs.insert(pr.number, *pr);
                }
            }
        }
        let (project2, metrics2) = (project.clone(), metrics.clone());
        let outcome =
            tokio::task::spawn_blocking(move || run_sync(&project2, &metrics2, prs.into_values().collect(), full))
                .await;
        match outcome {
            Ok(Ok(waiting)) => {
                recheck.later(waiting);
                metrics.syncs_ok.fetch_add(1, Ordering::Relaxed);
                for at in received {
                    metrics.latency.observe(at.elapsed().as_secs_f64());
                }
            }
            Ok(Err(e)) => {
                metrics.syncs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(project = %project.config.project_id, error = %e, "sync failed; the next event or resync retries");
            }
            Err(e) => {
                metrics.syncs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(project = %project.config.project_id, error = %e, "sync task failed");
            }
        }
    }
}

/// Syncs again, after [`ServeOptions::image_recheck`], the PRs whose environment waits for an image: once each,
/// however many syncs found it waiting meanwhile. The queue is held weakly, so a pending recheck
/// never keeps the receiver from shutting down.
#[derive(Clone)]
struct Recheck {
    after: Duration,
    queue: mpsc::WeakUnboundedSender<Work>,
    scheduled: Arc<Mutex<HashSet<u64>>>,
}

impl Recheck {
    fn later(&self, waiting: Vec<PullRequest>) {
        let fresh: Vec<PullRequest> = {
            let mut scheduled = self.scheduled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            waiting.into_iter().filter(|pr| scheduled.insert(pr.number)).collect()
        };
        if fresh.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.after).await;
            let mut scheduled = this.scheduled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for pr in fresh {
                scheduled.remove(&pr.number);
                tracing::info!(pr = pr.number, "re-checking the image an environment waits for");
                if let Some(queue) = this.queue.upgrade() {
                    let _ = queue.send(Work::Recheck(Box::new(pr)));
                }
            }
        });
    }
}

/// One sync: the PRs from the events (environments of other PRs are kept), or, for a full resync,
/// the GitHub listing with positive-evidence lookups. Returns the PRs whose environment now waits
/// for its head's image, to sync again soon.
fn run_sync(
    project: &Project,
    metrics: &ProjectMetrics,
    mut prs: Vec<PullRequest>,
    full: bool,
) -> Result<Vec<PullRequest>> {
    let config = &project.config;
    let mut repo = EnvRepo::open(&project.repo, &config.git, &project.cache_dir, false)?;
    let mut opts = SyncOptions {
        registry: project.images.clone(),
        ..SyncOptions::default()
    };
    let now = chrono::Utc::now();
    // The events' PRs only: their environments may be all a settled tree needs read.
    let view = if full {
        repo.read()?
    } else {
        sync::read_for(&mut repo, config, &prs, now, &opts)?
    };
    if full {
        let listed = GitHubPrs(config).snapshot(&view.prs_with_envs(&config.project_id))?;
        // Events in the same burst are at least as fresh as the listing.
        let from_events: HashSet<u64> = prs.iter().map(|p| p.number).collect();
        prs.extend(listed.prs.into_iter().filter(|p| !from_events.contains(&p.number)));
        metrics
            .unconfirmed
            .store(listed.unconfirmed.len() as u64, Ordering::Relaxed);
        opts.evidence.unconfirmed = listed.unconfirmed;
    }
    let mut material = crate::adapters::fs::load_material(config)?;
    let outcome = sync::sync(&mut repo, view, config, &prs, now, &opts, &mut material)?;
    tracing::info!(project = %config.project_id, commit = ?outcome.commit, prs = prs.len(), full, "sync done");
    let waiting: HashSet<u64> = outcome
        .plan
        .desired()
        .filter(|m| m.waiting_for.is_some())
        .map(|m| m.pr)
        .collect();
    Ok(prs.into_iter().filter(|p| waiting.contains(&p.number)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"action":"opened"}"#;
        let good = sign(b"s3cret", body);
        assert!(verify_signature(b"s3cret", body, Some(&good)));
        assert!(!verify_signature(b"other", body, Some(&good)));
        assert!(!verify_signature(b"s3cret", b"{}", Some(&good)));
        assert!(!verify_signature(b"s3cret", body, None));
        assert!(!verify_signature(b"s3cret", body, Some("sha1=abc")));
        assert!(!verify_signature(b"s3cret", body, Some("sha256=zz")));
    }

    #[test]
    fn only_the_configured_repository_is_accepted() {
        let origin = |name: &str, id: Option<u64>| Origin {
            full_name: name.into(),
            id,
        };
        let filter = RepositoryFilter::new("acme/shop");
        assert!(!filter.accepts(&origin("Codertocat/Hello-World", Some(1))));
        assert!(
            filter.accepts(&origin("ACME/Shop", None)),
            "names compare case-insensitively"
        );
        assert!(
            filter.accepts(&origin("acme/shop", Some(42))),
            "the id is learned by name"
        );
        assert!(
            !filter.accepts(&origin("acme/shop", Some(43))),
            "a re-created namesake is another repository"
        );
        assert!(
            filter.accepts(&origin("acme/storefront", Some(42))),
            "a renamed repository keeps its id"
        );
        assert!(!filter.accepts(&origin("Codertocat/Hello-World", None)));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), event in "[a-z_]{0,20}") {
            let _ = parse_delivery(&event, &body, |_| true);
            let _ = parse_delivery("pull_request", &body, |_| true);
        }

        #[test]
        fn any_json_shape_parses_without_panicking(json in proptest_json()) {
            let _ = parse_delivery("pull_request", json.to_string().as_bytes(), |_| true);
        }
    }

    fn proptest_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z0-9 ]{0,12}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from("opened")),
            Just(serde_json::Value::from("closed")),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("action".to_string()),
                        Just("pull_request".to_string()),
                        Just("number".to_string()),
                        Just("head".to_string()),
                        Just("state".to_string()),
                        "[a-z]{1,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
