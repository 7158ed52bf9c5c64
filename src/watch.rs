//! `prenv watch`: runs in the cluster, watches the Flux Kustomizations (or Argo CD Applications) that
//! prenv's wiring creates, and reports each environment's state onto its PR. It never crashes on a
//! strange object (logged and skipped), never posts on the wrong PR (the PR comes from prenv's own
//! label), and writes to GitHub only when a state changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};

use crate::config::{Config, Engine};
use crate::envstate::{self, EnvState, Observed};
use crate::error::{Error, Result};
use crate::metrics::Histogram;
use crate::report::Reporter;

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
    pub fn render(&self, github: &crate::github::Stats) -> String {
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
        out.push_str("# HELP prenv_environments Environments by state.\n# TYPE prenv_environments gauge\n");
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for state in self.states.lock().expect("metrics lock").values() {
            *by_state.entry(state).or_default() += 1;
        }
        for state in ["committed", "reconciling", "ready", "failed", "destroying"] {
            out.push_str(&format!(
                "prenv_environments{{state=\"{state}\"}} {}\n",
                by_state.get(state).copied().unwrap_or(0)
            ));
        }
        out.push_str(&format!(
            "# HELP prenv_environments_terminating_too_long Environments still terminating past the alert threshold.\n# TYPE prenv_environments_terminating_too_long gauge\nprenv_environments_terminating_too_long {}\n",
            self.terminating_too_long.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP prenv_github_requests_total GitHub requests by outcome.\n# TYPE prenv_github_requests_total counter\n");
        for (outcome, n) in [
            ("ok", &github.ok),
            ("retried", &github.retried),
            ("failed", &github.failed),
        ] {
            out.push_str(&format!(
                "prenv_github_requests_total{{outcome=\"{outcome}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP prenv_github_rate_limit_remaining The last x-ratelimit-remaining seen (-1: none yet).\n# TYPE prenv_github_rate_limit_remaining gauge\n");
        out.push_str(&format!(
            "prenv_github_rate_limit_remaining {}\n",
            github.rate_limit_remaining.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP prenv_watch_skipped_objects_total Objects that could not be read.\n# TYPE prenv_watch_skipped_objects_total counter\nprenv_watch_skipped_objects_total {}\n",
            self.skipped_objects.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP prenv_watch_report_errors_total Failed reports (retried on the next event).\n# TYPE prenv_watch_report_errors_total counter\nprenv_watch_report_errors_total {}\n",
            self.report_errors.load(Ordering::Relaxed)
        ));
        out
    }
}

/// The kind prenv's wiring creates for the configured engine.
pub fn api_resource(engine: Engine) -> ApiResource {
    let (group, version, kind, plural) = match engine {
        Engine::Flux => ("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations"),
        Engine::Argocd => ("argoproj.io", "v1alpha1", "Application", "applications"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Watches and reports until the stream ends (it does not, short of a shutdown).
pub async fn watch(
    config: &Config,
    client: kube::Client,
    mut reporter: Reporter,
    metrics: Arc<WatchMetrics>,
) -> Result<()> {
    let namespace = match config.engine {
        Engine::Flux => config.flux.namespace.clone(),
        Engine::Argocd => config.argocd.namespace.clone(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &api_resource(config.engine));
    let selector = format!("{}={}", crate::render::labels::MANAGED_BY, crate::plan::GENERATOR);
    let mut stream = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let read = match config.engine {
        Engine::Flux => envstate::from_flux,
        Engine::Argocd => envstate::from_argo,
    };
    let mut ready_seen: BTreeMap<String, bool> = BTreeMap::new();
    let alert = chrono::Duration::seconds(i64::try_from(config.watch.terminating_alert_secs).unwrap_or(i64::MAX));
    // Environments being deleted: what was observed, since when, and whether it was flagged.
    let mut terminating: BTreeMap<String, (Observed, chrono::DateTime<Utc>, bool)> = BTreeMap::new();
    let tick_every = std::time::Duration::from_secs(config.watch.terminating_alert_secs.clamp(1, 30));
    let mut tick = tokio::time::interval(tick_every);
    loop {
        let next = tokio::select! {
            next = stream.try_next() => next,
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
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "watch interrupted; retrying with backoff");
                continue;
            }
        };
        let (object, deleted) = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
            watcher::Event::Delete(o) => (o, true),
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        let value = match serde_json::to_value(&object) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "object not serializable; skipped");
                metrics.skipped_objects.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
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
            let since = object.metadata.deletion_timestamp.as_ref().map_or(now, |t| {
                chrono::DateTime::from_timestamp_millis(t.0.as_millisecond()).unwrap_or(now)
            });
            terminating.insert(observed.env.clone(), (observed.clone(), since, false));
        }
        if deleted {
            if terminating.remove(&observed.env).is_some_and(|(_, _, flagged)| flagged) {
                metrics.terminating_too_long.fetch_sub(1, Ordering::Relaxed);
            }
            observed.state = EnvState::Destroyed;
            if let Some(since) = object.metadata.deletion_timestamp.as_ref().map(|t| t.0) {
                metrics
                    .close_to_gone
                    .observe((now.timestamp_millis() - since.as_millisecond()) as f64 / 1000.0);
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
    github: Arc<crate::github::Stats>,
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
