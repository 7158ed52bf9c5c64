//! `prenv watch`: runs in the cluster, watches the Flux Kustomizations (or Argo CD Applications) that
//! prenv's wiring creates, and reports each environment's state onto its PR. It never crashes on a
//! strange object (logged and skipped), never posts on the wrong PR (the PR comes from prenv's own
//! label), and writes to GitHub only when a state changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures::{Stream, StreamExt};

use crate::adapters::kube::Seen;
use crate::adapters::pr_status::PrStatus;
use crate::app::metrics::{Histogram, Kind, family, one, read};
use crate::core::status::{self, EnvState, Observed};
use crate::error::{Error, Result};
use crate::model::config::{Config, Engine};

/// Buckets (seconds) of the open→ready and close→gone histograms.
const BUCKETS: [f64; 9] = [30.0, 60.0, 120.0, 180.0, 300.0, 420.0, 600.0, 900.0, 1800.0];

/// Prometheus metrics of the watcher.
pub struct WatchMetrics {
    open_to_ready: Histogram,
    close_to_gone: Histogram,
    states: Mutex<BTreeMap<String, &'static str>>,
    terminating_too_long: AtomicU64,
    pub skipped_objects: AtomicU64,
    pub report_errors: AtomicU64,
}

impl Default for WatchMetrics {
    fn default() -> Self {
        WatchMetrics {
            open_to_ready: Histogram::new(&BUCKETS),
            close_to_gone: Histogram::new(&BUCKETS),
            states: Mutex::default(),
            terminating_too_long: AtomicU64::new(0),
            skipped_objects: AtomicU64::new(0),
            report_errors: AtomicU64::new(0),
        }
    }
}

impl WatchMetrics {
    pub fn render(&self, github: &crate::adapters::github::Stats) -> String {
        let mut out = String::new();
        self.open_to_ready.render(
            "prenv_open_to_ready_seconds",
            "From the environment's object appearing to Ready.",
            &mut out,
        );
        self.close_to_gone.render(
            "prenv_close_to_gone_seconds",
            "From deletion starting to the object gone.",
            &mut out,
        );
        let by_state: BTreeMap<&str, i64> =
            self.states
                .lock()
                .expect("metrics lock")
                .values()
                .fold(BTreeMap::new(), |mut m, state| {
                    *m.entry(*state).or_default() += 1;
                    m
                });
        let states: Vec<(&str, i64)> = ["committed", "reconciling", "ready", "failed", "destroying"]
            .into_iter()
            .map(|s| (s, by_state.get(s).copied().unwrap_or(0)))
            .collect();
        family(
            &mut out,
            "prenv_environments",
            "Environments by state.",
            Kind::Gauge,
            Some("state"),
            &states,
        );
        let requests = [
            ("ok", read(&github.ok)),
            ("retried", read(&github.retried)),
            ("failed", read(&github.failed)),
        ];
        let by = Some("outcome");
        family(
            &mut out,
            "prenv_github_requests_total",
            "GitHub requests by outcome.",
            Kind::Counter,
            by,
            &requests,
        );
        let singles = [
            (
                "prenv_environments_terminating_too_long",
                "Environments still terminating past the alert threshold.",
                Kind::Gauge,
                read(&self.terminating_too_long),
            ),
            (
                "prenv_github_rate_limit_remaining",
                "The last x-ratelimit-remaining seen (-1: none yet).",
                Kind::Gauge,
                github.rate_limit_remaining.load(Ordering::Relaxed),
            ),
            (
                "prenv_watch_skipped_objects_total",
                "Objects that could not be read.",
                Kind::Counter,
                read(&self.skipped_objects),
            ),
            (
                "prenv_watch_report_errors_total",
                "Failed reports (retried on the next event).",
                Kind::Counter,
                read(&self.report_errors),
            ),
        ];
        for (name, help, kind, value) in singles {
            family(&mut out, name, help, kind, None, &one(value));
        }
        out
    }
}

/// Watches and reports until the stream ends (it does not, short of a shutdown).
pub async fn watch(
    config: &Config,
    stream: impl Stream<Item = Seen>,
    mut reporter: PrStatus,
    metrics: Arc<WatchMetrics>,
) -> Result<()> {
    let mut stream = std::pin::pin!(stream);
    let read = match config.engine {
        Engine::Flux => status::from_flux,
        Engine::Argocd => status::from_argo,
    };
    let mut ready_seen: BTreeMap<String, bool> = BTreeMap::new();
    let alert = chrono::Duration::seconds(i64::try_from(config.watch.terminating_alert_secs).unwrap_or(i64::MAX));
    // Environments being deleted: what was observed, since when, and whether it was flagged.
    let mut terminating: BTreeMap<String, (Observed, chrono::DateTime<Utc>, bool)> = BTreeMap::new();
    let tick_every = std::time::Duration::from_secs(config.watch.terminating_alert_secs.clamp(1, 30));
    let mut tick = tokio::time::interval(tick_every);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tick.tick() => {
                let now = Utc::now();
                for (obs, since, flagged) in terminating.values_mut().filter(|(_, since, f)| !*f && now - *since >= alert) {
                    *flagged = true;
                    metrics.terminating_too_long.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(env = %obs.env, since = %since, "environment still terminating past the alert threshold");
                    let stuck = Observed { stuck: true, ..obs.clone() };
                    if let Err(e) = reporter.report(&stuck, now).await {
                        metrics.report_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(env = %stuck.env, error = %e, "reporting failed");
                    }
                }
                continue;
            }
        };
        let (value, deleted) = match next {
            None => return Ok(()),
            Some(Seen::Applied(v)) => (v, false),
            Some(Seen::Deleted(v)) => (v, true),
            Some(Seen::Listing | Seen::Listed) => continue,
            Some(Seen::Interrupted(e)) => {
                tracing::warn!(error = %e, "watch interrupted; retrying with backoff");
                continue;
            }
        };
        let deletion_timestamp = value["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok());
        let mut observed: Observed = match read(&value) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "object not readable as a prenv environment; skipped");
                metrics.skipped_objects.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let now = Utc::now();
        if observed.state == EnvState::Destroying && !terminating.contains_key(&observed.env) {
            let since = deletion_timestamp.unwrap_or(now);
            terminating.insert(observed.env.clone(), (observed.clone(), since, false));
        }
        if deleted {
            if terminating.remove(&observed.env).is_some_and(|(_, _, flagged)| flagged) {
                metrics.terminating_too_long.fetch_sub(1, Ordering::Relaxed);
            }
            observed.state = EnvState::Destroyed;
            if let Some(since) = deletion_timestamp {
                metrics
                    .close_to_gone
                    .observe((now - since).num_milliseconds() as f64 / 1000.0);
            }
            metrics.states.lock().expect("metrics lock").remove(&observed.env);
            ready_seen.remove(&observed.env);
        } else {
            metrics
                .states
                .lock()
                .expect("metrics lock")
                .insert(observed.env.clone(), observed.state.word());
            if observed.state == EnvState::Ready && !ready_seen.get(&observed.env).copied().unwrap_or(false) {
                ready_seen.insert(observed.env.clone(), true);
                if let Some(created) = observed.created {
                    metrics
                        .open_to_ready
                        .observe((now - created).num_milliseconds() as f64 / 1000.0);
                }
            }
        }
        if let Err(e) = reporter.report(&observed, now).await {
            metrics.report_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pr = observed.pr, env = %observed.env, error = %e, "reporting failed; the next event retries");
        }
    }
}

/// Serves `/healthz` and `/metrics` for the watcher.
pub async fn serve_metrics(
    listen: SocketAddr,
    metrics: Arc<WatchMetrics>,
    github: Arc<crate::adapters::github::Stats>,
) -> Result<()> {
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (m, g) = (metrics.clone(), github.clone());
                async move { m.render(&g) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io("listening on", listen.to_string(), e))?;
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::io("serving on", listen.to_string(), e))
}
