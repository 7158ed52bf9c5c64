//! `prenv serve`: the webhook receiver. A signed `pull_request` event reaches the environments
//! repository in about a second: the signature is checked in constant time, duplicate deliveries are
//! dropped, bursts are debounced into one sync of the affected PRs, and a periodic full resync from
//! the GitHub listing is the backstop for anything a webhook missed.

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

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Histogram;
use crate::pr::{self, PullRequest};

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
}

enum Work {
    Pr { pr: Box<PullRequest>, received: Instant },
    FullResync,
}

struct Metrics {
    deliveries: Mutex<BTreeMap<&'static str, u64>>,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deliveries: Mutex::default(),
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            latency: Histogram::new(&BUCKETS),
        }
    }
}

impl Metrics {
    fn delivery(&self, outcome: &'static str) {
        *self
            .deliveries
            .lock()
            .expect("metrics lock")
            .entry(outcome)
            .or_default() += 1;
    }

    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP prenv_webhook_deliveries_total Webhook deliveries by outcome.\n# TYPE prenv_webhook_deliveries_total counter\n");
        for (outcome, n) in self.deliveries.lock().expect("metrics lock").iter() {
            out.push_str(&format!(
                "prenv_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str(
            "# HELP prenv_syncs_total Syncs run by the receiver, by outcome.\n# TYPE prenv_syncs_total counter\n",
        );
        out.push_str(&format!(
            "prenv_syncs_total{{outcome=\"ok\"}} {}\n",
            self.syncs_ok.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "prenv_syncs_total{{outcome=\"error\"}} {}\n",
            self.syncs_failed.load(Ordering::Relaxed)
        ));
        self.latency.render(
            "prenv_webhook_to_commit_seconds",
            "From webhook receipt to the commit published.",
            &mut out,
        );
        out
    }
}

struct Shared {
    secret: Vec<u8>,
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

/// What a webhook delivery means for prenv.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// A PR event that may change its environment.
    Pr(Box<PullRequest>),
    /// Signed and well-formed, but nothing for prenv (another event or action, or a ping).
    Ignored(&'static str),
}

/// Reads a verified delivery. Errors are bad payloads (400), never panics, whatever the bytes.
pub fn parse_delivery(event: &str, body: &[u8]) -> std::result::Result<Delivery, String> {
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
    match parse_delivery(header("x-github-event").unwrap_or(""), &body) {
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
    let shared = Arc::new(Shared {
        secret: options.secret.clone(),
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
    tracing::info!(listen = %options.listen, "webhook receiver ready");
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
    let worker = tokio::spawn(worker(config, options.clone(), rx, metrics));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::io("serving on", options.listen.to_string(), e))?;
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
        let (config, options2) = (config.clone(), options.clone());
        let outcome =
            tokio::task::spawn_blocking(move || run_sync(&config, &options2, prs.into_values().collect(), full)).await;
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
fn run_sync(config: &Config, options: &ServeOptions, mut prs: Vec<PullRequest>, full: bool) -> Result<()> {
    let mut repo = crate::envrepo::EnvRepo::open(&options.repo, &config.git, &options.cache_dir, false)?;
    if full {
        let listed = crate::github::snapshot_blocking(config, &repo.prs_with_envs()?)?;
        // Events in the same burst are at least as fresh as the listing.
        let from_events: HashSet<u64> = prs.iter().map(|p| p.number).collect();
        prs.extend(listed.into_iter().filter(|p| !from_events.contains(&p.number)));
    }
    let report = crate::sync::sync(&mut repo, config, &prs, chrono::Utc::now(), Default::default())?;
    tracing::info!(commit = ?report.commit, prs = prs.len(), full, "sync done");
    Ok(())
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

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), event in "[a-z_]{0,20}") {
            let _ = parse_delivery(&event, &body);
            let _ = parse_delivery("pull_request", &body);
        }

        #[test]
        fn any_json_shape_parses_without_panicking(json in proptest_json()) {
            let _ = parse_delivery("pull_request", json.to_string().as_bytes());
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
