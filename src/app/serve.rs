//! `prenv serve`: the webhook receiver. A signed `pull_request` event reaches the environments
//! repository in about a second: the signature is checked in constant time, duplicate deliveries are
//! dropped, bursts are debounced into one sync of the affected PRs, and a periodic full resync from
//! the GitHub listing is the backstop for anything a webhook missed. Its front door bounds what a
//! client without a signature can hold: header and body timeouts, and a connection cap fitted to
//! the open-file limit, so idle and slowloris connections cannot shut GitHub out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Notify, mpsc, watch};

use crate::adapters::git::EnvRepo;
use crate::adapters::github::GitHubPrs;
use crate::app::metrics::{Histogram, Kind, family, one, read};
use crate::app::sync::{self, SyncOptions};
use crate::core::ports::{EnvStore, PrSource};
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::pr::{self, PullRequest};

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

/// How the receiver runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The webhook secret shared with GitHub.
    pub secret: Vec<u8>,
    /// Bodies larger than this are refused (413).
    pub max_body: usize,
    /// How long to wait for more events before syncing a burst.
    pub debounce: Duration,
    /// Full resync from the GitHub listing; `None` disables it.
    pub resync: Option<Duration>,
    /// Where the environments repository is (resolved by the CLI).
    pub repo: String,
    pub cache_dir: std::path::PathBuf,
    /// What a client may hold before it is cut off.
    pub limits: Limits,
}

enum Work {
    Pr { pr: Box<PullRequest>, received: Instant },
    FullResync,
}

struct Metrics {
    deliveries: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections the receiver closed, by reason: `evicted` (to make room), `refused` (no room),
    /// `header_timeout`, `body_timeout`.
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    connections_open: AtomicU64,
    connections_max: AtomicU64,
    accept_errors: AtomicU64,
    /// PRs with an environment whose state the last full resync could not confirm.
    unconfirmed: AtomicU64,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deliveries: Mutex::default(),
            dropped: Mutex::default(),
            connections_open: AtomicU64::new(0),
            connections_max: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            latency: Histogram::new(&BUCKETS),
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
        let mut out = String::new();
        let by = Some("outcome");
        family(
            &mut out,
            "prenv_webhook_deliveries_total",
            "Webhook deliveries by outcome.",
            Kind::Counter,
            by,
            &samples(&self.deliveries),
        );
        self.render_connections(&mut out);
        let syncs = [("ok", read(&self.syncs_ok)), ("error", read(&self.syncs_failed))];
        family(
            &mut out,
            "prenv_syncs_total",
            "Syncs run by the receiver, by outcome.",
            Kind::Counter,
            by,
            &syncs,
        );
        family(
            &mut out,
            "prenv_unconfirmed_prs",
            "PRs with an environment whose state GitHub could not confirm (kept).",
            Kind::Gauge,
            None,
            &one(read(&self.unconfirmed)),
        );
        self.latency.render(
            "prenv_webhook_to_commit_seconds",
            "From webhook receipt to the commit published.",
            &mut out,
        );
        out
    }

    fn render_connections(&self, out: &mut String) {
        family(
            out,
            "prenv_webhook_connections_open",
            "Connections open to the receiver.",
            Kind::Gauge,
            None,
            &one(read(&self.connections_open)),
        );
        family(
            out,
            "prenv_webhook_connections_max",
            "The connection cap in force (--max-connections fitted to the open-file limit).",
            Kind::Gauge,
            None,
            &one(read(&self.connections_max)),
        );
        family(
            out,
            "prenv_webhook_connections_dropped_total",
            "Connections the receiver closed, by reason.",
            Kind::Counter,
            Some("reason"),
            &samples(&self.dropped),
        );
        family(
            out,
            "prenv_webhook_accept_errors_total",
            "Failed accept() calls (running out of files, above all); each pauses accepting.",
            Kind::Counter,
            None,
            &one(read(&self.accept_errors)),
        );
    }
}

struct Shared {
    secret: Vec<u8>,
    repository: RepositoryFilter,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    work: mpsc::UnboundedSender<Work>,
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
    prs.pop()
        .map(|p| Delivery::Pr(Box::new(p)))
        .ok_or_else(|| "empty pull_request".into())
}

async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !verify_signature(&shared.secret, &body, header("x-hub-signature-256")) {
        shared.metrics.delivery("bad_signature");
        tracing::warn!("webhook with a missing or wrong signature refused");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
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
    match parse_delivery(header("x-github-event").unwrap_or(""), &body, |o| {
        shared.repository.accepts(o)
    }) {
        Ok(Delivery::Foreign(origin)) => {
            shared.metrics.delivery("other_repository");
            tracing::info!(repository = %origin.full_name, id = ?origin.id, "event of another repository ignored");
            (StatusCode::ACCEPTED, "ignored: another repository\n")
        }
        Ok(Delivery::Pr(pr)) => {
            tracing::info!(pr = pr.number, sha = %pr.head_sha, "pull_request event accepted");
            shared.metrics.delivery("accepted");
            let _ = shared.work.send(Work::Pr {
                pr,
                received: Instant::now(),
            });
            (StatusCode::ACCEPTED, "accepted\n")
        }
        Ok(Delivery::Ignored(what)) => {
            shared.metrics.delivery("ignored");
            tracing::debug!(what, "delivery ignored");
            (StatusCode::ACCEPTED, "ignored\n")
        }
        Err(e) => {
            shared.metrics.delivery("invalid");
            tracing::warn!(error = %e, "invalid pull_request payload");
            (StatusCode::BAD_REQUEST, "invalid payload\n")
        }
    }
}

/// Runs the receiver until SIGINT or SIGTERM, then finishes the work it accepted.
pub async fn serve(config: Config, options: ServeOptions) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let repository = config.github.repository.as_deref().ok_or_else(|| Error::Config {
        path: "prenv.toml".into(),
        message: "key `github.repository` is missing; `prenv serve` acts only on the events of this owner/name (an organisation webhook or GitHub App delivers every repository's)".into(),
    })?;
    let shared = Arc::new(Shared {
        secret: options.secret.clone(),
        repository: RepositoryFilter::new(repository),
        seen: Mutex::new((HashSet::new(), VecDeque::new())),
        work: tx.clone(),
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
    tracing::info!(listen = %options.listen, max_connections = options.limits.max_connections, "webhook receiver ready");
    let resync = options.resync.map(|every| {
        let tx = tx.clone();
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
    });
    drop(tx);
    let worker = tokio::spawn(worker(config, options.clone(), rx, metrics.clone()));
    front_door(listener, app, options.limits, metrics, shutdown_signal()).await;
    tracing::info!("shutting down: finishing accepted work");
    if let Some(resync) = resync {
        resync.abort();
    }
    // The router (and its sender) is gone: the worker drains the queue and stops.
    let _ = worker.await;
    Ok(())
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

/// Takes work off the queue, debounces bursts and runs one sync at a time.
async fn worker(config: Config, options: ServeOptions, mut rx: mpsc::UnboundedReceiver<Work>, metrics: Arc<Metrics>) {
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
            if let Work::Pr { pr, received: at } = work {
                received.push(at);
                // The latest state of each PR wins; ties go to the later delivery.
                match prs.get(&pr.number) {
                    Some(old) if old.updated_at > pr.updated_at => {}
                    _ => {
                        prs.insert(pr.number, *pr);
                    }
                }
            }
        }
        let (config, options2, metrics2) = (config.clone(), options.clone(), metrics.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            run_sync(&config, &options2, &metrics2, prs.into_values().collect(), full)
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                metrics.syncs_ok.fetch_add(1, Ordering::Relaxed);
                for at in received {
                    metrics.latency.observe(at.elapsed().as_secs_f64());
                }
            }
            Ok(Err(e)) => {
                metrics.syncs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "sync failed; the next event or resync retries");
            }
            Err(e) => {
                metrics.syncs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "sync task failed");
            }
        }
    }
}

/// One sync: the PRs from the events (environments of other PRs are kept), or, for a full resync,
/// the GitHub listing with positive-evidence lookups.
fn run_sync(
    config: &Config,
    options: &ServeOptions,
    metrics: &Metrics,
    mut prs: Vec<PullRequest>,
    full: bool,
) -> Result<()> {
    let mut repo = EnvRepo::open(&options.repo, &config.git, &options.cache_dir, false)?;
    let view = repo.read()?;
    let mut opts = SyncOptions::default();
    if full {
        let listed = GitHubPrs(config).snapshot(&view.prs_with_envs())?;
        // Events in the same burst are at least as fresh as the listing.
        let from_events: HashSet<u64> = prs.iter().map(|p| p.number).collect();
        prs.extend(listed.prs.into_iter().filter(|p| !from_events.contains(&p.number)));
        metrics
            .unconfirmed
            .store(listed.unconfirmed.len() as u64, Ordering::Relaxed);
        opts.evidence.unconfirmed = listed.unconfirmed;
    }
    let mut material = crate::adapters::fs::load_material(config)?;
    let outcome = sync::sync(&mut repo, view, config, &prs, chrono::Utc::now(), &opts, &mut material)?;
    tracing::info!(commit = ?outcome.commit, prs = prs.len(), full, "sync done");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The front door: what a client without a signature can hold.
//
// `axum::serve` (axum 0.8.9, axum/src/serve/mod.rs `handle_connection`) builds hyper-util's auto
// connection builder without a timer, so hyper's header-read timeout is off (hyper 1.12,
// src/common/time.rs `Time::check`: "timeout `header_read_timeout` has default, but no timer set"),
// and it accepts every connection it can; on an accept() error it logs and sleeps one second
// (axum/src/serve/listener.rs `handle_accept_error`, taken from hyper 0.14's `tcp.rs`). With a
// 256-file limit, 300 idle connections took every descriptor: /healthz and deliveries timed out.
// axum's newer `ListenerExt::limit_connections` (tokio-rs/axum main, listener.rs) is a semaphore:
// at the cap it stops accepting, so an attacker holding the cap still shuts GitHub out.
//
// So prenv runs its own loop on hyper's HTTP/1 connection (the protocol GitHub delivers with):
// - hyper's `header_read_timeout` (hyper src/server/conn/http1.rs `Builder::header_read_timeout`)
//   with tokio's timer. Its clock starts when hyper waits for a request head (src/proto/h1/conn.rs
//   `Conn::poll_read_head`): on accept and again after every answer on a kept-alive connection, so
//   it is the idle timeout as well as the slowloris one.
// - a total deadline on each request from its head to its answer, which bounds a trickled body
//   (tower-http's `RequestBodyTimeoutLayer` restarts its clock at every frame, so a byte every few
//   seconds would never trip it); a late request is answered 408 and its connection closed.
// - a cap on open connections sized to the open-file limit, and when it is reached the connection
//   that has waited longest on its client (idle, sending a head, or not reading our answer) is
//   closed to make room, as nginx reuses connections when worker_connections run short
//   (nginx src/core/ngx_connection.c `ngx_drain_connections`). A request being answered is never
//   closed; a new connection always finds room unless every connection is busy answering.
// - accept() errors never end the loop: a peer that gave up is skipped; running out of files
//   closes the connection that waited longest (freeing a descriptor) and pauses accepting, 10 ms
//   doubling to 1 s while the errors last (nginx src/event/ngx_event_accept.c disables accepting
//   on EMFILE/ENFILE for `accept_mutex_delay`; hyper 0.14 and axum sleep 1 s).

/// Files kept out of the connection budget: the listener, the runtime, logs, and what a sync and
/// a full resync open (git packs, HTTPS to GitHub). Measured: an idle receiver holds 10, and 12 at
/// the peak of 60 syncs into a local repository; the rest is room for large repositories' packs.
const RESERVED_FILES: u64 = 64;
/// Fewer connections than this is no receiver: `prenv serve` refuses to start.
const MIN_CONNECTIONS: u64 = 8;
/// A request head larger than this is refused (431): GitHub's are a few KiB, and it bounds what an
/// open connection costs in memory.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The first pause after an accept() error; it doubles while the errors last.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
/// The longest pause, as hyper 0.14 and axum::serve sleep after an accept() error.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What a client may hold before it is cut off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most (already fitted to the open-file limit, see [`connection_cap`]).
    pub max_connections: usize,
    /// A request head must arrive within this long of the connection opening or of its previous
    /// answer; an idle connection is closed after it.
    pub header_timeout: Duration,
    /// A request must be read and answered within this long of its head.
    pub body_timeout: Duration,
}

/// The soft open-file limit (RLIMIT_NOFILE) of this process; `None` when unlimited or unknown.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    // rlim_t is u64 on Linux and the BSDs but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(soft)
}

#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

/// The connection cap: `requested`, lowered so that connections never take the files a sync needs
/// ([`RESERVED_FILES`]) under the soft open-file limit `open_files`. An error says what to raise.
pub fn connection_cap(requested: u64, open_files: Option<u64>) -> std::result::Result<usize, String> {
    let budget = open_files.map_or(u64::MAX, |limit| limit.saturating_sub(RESERVED_FILES));
    let needed = MIN_CONNECTIONS.min(requested);
    if budget < needed {
        return Err(format!(
            "the open-file limit (RLIMIT_NOFILE) is {}: prenv serve keeps {RESERVED_FILES} files for syncs and needs room for at least {needed} connections; raise the limit (`ulimit -n 1024`, LimitNOFILE= in a systemd unit)",
            open_files.unwrap_or_default()
        ));
    }
    Ok(usize::try_from(requested.min(budget)).unwrap_or(usize::MAX))
}

/// How connections end when the receiver stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Serve,
    /// Finish the request in hand, then close.
    Drain,
    /// Close now: the grace period is over.
    Now,
}

/// One open connection as the pool sees it.
struct Slot {
    /// Since when the connection waits on its client (for a request, or to read our answer);
    /// `None` while a request is being answered.
    waiting_since: Option<Instant>,
    /// Told to close, to make room; it holds its file until its task has ended.
    closing: bool,
    close: Arc<Notify>,
}

/// Every connection whose task is alive, closing ones included: they hold a file until it ends.
#[derive(Default)]
struct Slots {
    next_id: u64,
    open: HashMap<u64, Slot>,
    closing: usize,
}

impl Slots {
    /// The connection that has waited longest on its client and is not closing yet.
    fn longest_waiting(&self) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, s)| !s.closing)
            .filter_map(|(id, s)| s.waiting_since.map(|since| (since, *id)))
            .min()
            .map(|(_, id)| id)
    }
}

/// The open connections: the cap, and which one gives up its place when a new one needs it.
struct Pool {
    cap: usize,
    slots: Mutex<Slots>,
    /// Woken when a connection ends or starts waiting on its client: the accept loop may go on.
    room: Notify,
    metrics: Arc<Metrics>,
}

impl Pool {
    fn new(cap: usize, metrics: Arc<Metrics>) -> Pool {
        metrics.connections_max.store(cap as u64, Ordering::Relaxed);
        Pool {
            cap,
            slots: Mutex::default(),
            room: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().expect("connection pool lock")
    }

    /// True when a new connection would find a place: below the cap, or at it with one that can
    /// be closed and no other closing still (so connections never hold more than cap + 1 files).
    fn has_room(&self) -> bool {
        let slots = self.lock();
        slots.open.len() < self.cap || (slots.closing == 0 && slots.longest_waiting().is_some())
    }

    /// Registers a new connection, at the cap closing the one that has waited longest on its
    /// client. `None` when every connection is busy answering: the new one is turned away.
    fn admit(&self) -> Option<(u64, Arc<Notify>)> {
        let mut slots = self.lock();
        if slots.open.len() >= self.cap && !self.evict(&mut slots) {
            self.metrics.dropped("refused");
            return None;
        }
        slots.next_id += 1;
        let id = slots.next_id;
        let close = Arc::new(Notify::new());
        let slot = Slot {
            waiting_since: Some(Instant::now()),
            closing: false,
            close: close.clone(),
        };
        slots.open.insert(id, slot);
        self.metrics
            .connections_open
            .store(slots.open.len() as u64, Ordering::Relaxed);
        Some((id, close))
    }

    /// Tells the connection that has waited longest on its client to close; false when none waits.
    fn evict(&self, slots: &mut Slots) -> bool {
        let Some(slot) = slots.longest_waiting().and_then(|id| slots.open.get_mut(&id)) else {
            return false;
        };
        slot.closing = true;
        // The permit is kept if the connection's task is not listening at this instant.
        slot.close.notify_one();
        slots.closing += 1;
        self.metrics.dropped("evicted");
        true
    }

    /// Frees a file when accept() ran out of them.
    fn evict_one(&self) {
        let mut slots = self.lock();
        self.evict(&mut slots);
    }

    /// A request arrived; false when the connection is closing to make room.
    fn serving(&self, id: u64) -> bool {
        match self.lock().open.get_mut(&id) {
            Some(slot) if !slot.closing => {
                slot.waiting_since = None;
                true
            }
            _ => false,
        }
    }

    /// The request is answered; the connection waits on its client again.
    fn waiting(&self, id: u64) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.waiting_since = Some(Instant::now());
        }
        self.room.notify_one();
    }

    /// The connection's task ended and its file is closed.
    fn leave(&self, id: u64) {
        let mut slots = self.lock();
        if slots.open.remove(&id).is_some_and(|s| s.closing) {
            slots.closing -= 1;
        }
        self.metrics
            .connections_open
            .store(slots.open.len() as u64, Ordering::Relaxed);
        drop(slots);
        self.room.notify_one();
    }
}

/// Takes a connection out of the pool however its task ends.
struct Leave(Arc<Pool>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// The source of connections: tokio's listener, or a fake that fails like one.
trait Acceptor {
    type Stream;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<tokio::net::TcpStream> {
        tokio::net::TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// The pause after accept() errors: 10 ms doubling to 1 s while they last, reset by a success.
#[derive(Debug, Default)]
struct Pause {
    current: Duration,
    logged: Option<Instant>,
}

impl Pause {
    fn next(&mut self) -> Duration {
        self.current = (self.current * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        self.current
    }
}

/// The peer gave up before its connection was accepted: nothing to wait for.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// The process (or the system) ran out of files or buffers.
#[cfg(unix)]
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(not(unix))]
fn out_of_files(_: &std::io::Error) -> bool {
    false
}

/// The next connection to serve: waits while every connection is busy answering, and rides out
/// accept() errors (see the front door's comment) instead of spinning or giving up.
async fn next_stream<A: Acceptor>(acceptor: &A, pool: &Pool, pause: &mut Pause) -> A::Stream {
    loop {
        loop {
            let room = pool.room.notified();
            if pool.has_room() {
                break;
            }
            room.await;
        }
        match acceptor.accept().await {
            Ok(stream) => {
                pause.current = Duration::ZERO;
                return stream;
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                pool.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                if out_of_files(&e) {
                    pool.evict_one();
                }
                let wait = pause.next();
                // At most once a second, so that running out of files does not also flood the log.
                if pause.logged.is_none_or(|at| at.elapsed() >= ACCEPT_PAUSE_MAX) {
                    pause.logged = Some(Instant::now());
                    tracing::error!(error = %e, retry_in = ?wait, "accepting a connection failed; closed the longest-waiting connection and pausing");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// An answer that also closes the connection.
fn closing(status: StatusCode, text: &'static str) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response((status, text));
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The router behind the connection `id`, under the body timeout: a request of a connection told
/// to close is answered 503, one not read and answered in time 408, both closing the connection.
fn answering(
    pool: Arc<Pool>,
    app: axum::Router,
    id: u64,
    body_timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future + Send,
> {
    let app = TowerToHyperService::new(app);
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let pool = pool.clone();
        let answer = hyper::service::Service::call(&app, request);
        async move {
            if !pool.serving(id) {
                return Ok(closing(StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n"));
            }
            let answered = tokio::time::timeout(body_timeout, answer).await;
            pool.waiting(id);
            Ok::<_, Infallible>(match answered {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    pool.metrics.dropped("body_timeout");
                    closing(StatusCode::REQUEST_TIMEOUT, "request not received in time\n")
                }
            })
        }
    })
}

/// Serves one connection with hyper's HTTP/1 under the limits, until it ends, is closed to make
/// room, or the receiver stops.
fn spawn_connection(
    stream: tokio::net::TcpStream,
    pool: &Arc<Pool>,
    app: &axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<Stop>,
    alive: mpsc::Sender<()>,
) {
    let Some((id, close)) = pool.admit() else {
        return;
    };
    let leave = Leave(pool.clone(), id);
    let service = answering(pool.clone(), app.clone(), id, limits.body_timeout);
    let metrics = pool.metrics.clone();
    tokio::spawn(async move {
        let (_alive, _leave) = (alive, leave);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEADER_BYTES);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        loop {
            // Biased: the connection writes out an answer before a close request is honoured.
            tokio::select! {
                biased;
                done = conn.as_mut() => {
                    match done {
                        Err(e) if e.is_timeout() => metrics.dropped("header_timeout"),
                        Err(e) => tracing::debug!(error = %e, "connection ended"),
                        Ok(()) => {}
                    }
                    break;
                }
                () = close.notified() => break,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() == Stop::Now {
                        break;
                    }
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    });
}

/// Serves `app` on `listener` until `signal`; then lets the requests in hand finish (within the
/// header and body timeouts, after which the rest are closed) and returns once every connection is
/// gone, and with them every handle on the work queue.
async fn front_door(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    signal: impl Future<Output = ()>,
) {
    let pool = Arc::new(Pool::new(limits.max_connections, metrics));
    let (stop_tx, stop_rx) = watch::channel(Stop::Serve);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let accepting = async {
        let mut pause = Pause::default();
        loop {
            let stream = next_stream(&listener, &pool, &mut pause).await;
            spawn_connection(stream, &pool, &app, limits, stop_rx.clone(), alive_tx.clone());
        }
    };
    tokio::select! {
        _ = accepting => {}
        () = signal => {}
    }
    drop(listener);
    let _ = stop_tx.send(Stop::Drain);
    drop(alive_tx);
    let grace = limits.header_timeout + limits.body_timeout;
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!(?grace, "closing the connections still open after the grace period");
        let _ = stop_tx.send(Stop::Now);
        let _ = alive_rx.recv().await;
    }
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

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        // (requested, soft limit, cap or error)
        let table: &[(u64, Option<u64>, Option<usize>)] = &[
            (512, None, Some(512)),
            (512, Some(1024), Some(512)),
            (512, Some(256), Some(192)),
            (100, Some(256), Some(100)),
            (512, Some(72), Some(8)),
            (512, Some(71), None),
            (512, Some(20), None),
            (4, Some(68), Some(4)),
        ];
        for (requested, limit, want) in table {
            let got = connection_cap(*requested, *limit);
            assert_eq!(got.as_ref().ok(), want.as_ref(), "{requested} under {limit:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.contains("RLIMIT_NOFILE") && e.contains("ulimit -n"), "{e}");
            }
        }
    }

    #[test]
    fn the_accept_pause_doubles_to_a_second() {
        let mut pause = Pause::default();
        let steps: Vec<u64> = (0..10).map(|_| pause.next().as_millis() as u64).collect();
        assert_eq!(steps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[test]
    fn a_full_pool_closes_the_connection_that_waited_longest_and_never_one_being_answered() {
        let pool = Pool::new(2, Arc::new(Metrics::default()));
        let (first, close_first) = pool.admit().unwrap();
        let (second, _) = pool.admit().unwrap();
        assert!(pool.serving(second));
        assert!(pool.has_room(), "the first one waits and can make room");
        let (third, _) = pool.admit().unwrap();
        // The first is told to close and holds its file until its task ends: no more room.
        assert!(!pool.has_room());
        assert!(!pool.serving(first), "a closing connection takes no request");
        pool.leave(first);
        assert!(pool.serving(third));
        // Both remaining connections are answering: nothing can be closed, a new one is refused.
        assert!(!pool.has_room());
        assert!(pool.admit().is_none());
        pool.waiting(second);
        assert!(pool.has_room());
        // The close request reached the first connection even though nobody listened then.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let notified = close_first.notified();
        futures::pin_mut!(notified);
        assert!(std::future::Future::poll(notified, &mut cx).is_ready());
        let metrics = pool.metrics.render();
        assert!(
            metrics.contains("prenv_webhook_connections_dropped_total{reason=\"evicted\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("prenv_webhook_connections_dropped_total{reason=\"refused\"} 1"),
            "{metrics}"
        );
    }

    /// Fails like accept() out of files, `failures` times, then yields a connection.
    struct OutOfFiles {
        failures: usize,
        calls: std::sync::atomic::AtomicUsize,
        error: fn() -> std::io::Error,
    }

    impl Acceptor for OutOfFiles {
        type Stream = usize;

        async fn accept(&self) -> std::io::Result<usize> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            if call < self.failures {
                Err((self.error)())
            } else {
                Ok(call)
            }
        }
    }

    #[tokio::test]
    async fn accept_errors_pause_the_loop_instead_of_spinning_or_ending_it() {
        let pool = Pool::new(4, Arc::new(Metrics::default()));
        let (waiting, _) = pool.admit().unwrap();
        let emfile = OutOfFiles {
            failures: 4,
            calls: 0.into(),
            error: || std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        let mut pause = Pause::default();
        let start = Instant::now();
        assert_eq!(next_stream(&emfile, &pool, &mut pause).await, 4);
        // 10 + 20 + 40 + 80 ms of pauses, and one call per pause: no busy loop.
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        assert_eq!(emfile.calls.load(Ordering::Relaxed), 5);
        assert_eq!(pause.current, Duration::ZERO, "a success resets the pause");
        assert!(
            !pool.serving(waiting),
            "running out of files closes the longest-waiting connection"
        );
        assert_eq!(pool.metrics.accept_errors.load(Ordering::Relaxed), 4);

        // A peer that gave up before it was accepted is skipped at once.
        let aborted = OutOfFiles {
            failures: 50,
            calls: 0.into(),
            error: || std::io::ErrorKind::ConnectionAborted.into(),
        };
        let start = Instant::now();
        assert_eq!(next_stream(&aborted, &pool, &mut pause).await, 50);
        assert!(start.elapsed() < Duration::from_millis(100), "{:?}", start.elapsed());
        assert_eq!(pool.metrics.accept_errors.load(Ordering::Relaxed), 4);
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
