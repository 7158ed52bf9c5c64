//! The status fixtures (`tests/fixtures/status/{flux,argocd}/*.json`, written step by step from
//! kustomize-controller v1.9.4 and argo-cd v3.0.23; format in each folder's README) replayed through
//! the fake API server into the real `prenv watch`, started, restarted and cut off as the steps say.
//!
//! What the replayed controller does, and where upstream it comes from:
//!
//! - Flux sets `Ready=Unknown/Progressing` ("Reconciliation in progress") and `Reconciling=True` at
//!   the start of *every* reconcile, interval runs and other PRs' commits included, before fetching
//!   anything (`fluxcd/kustomize-controller@v1.9.4 internal/controller/kustomization_controller.go`
//!   `reconcile`, then `r.patch`); each `patch` is up to three writes, conditions first
//!   (`fluxcd/pkg@runtime/v0.110.1 runtime/patch/patch.go` `Helper.Patch`), so the watch sees each.
//! - Every condition's `observedGeneration` is the generation the controller read, on success and
//!   failure (`runtime/conditions/setter.go` `Set`); `status.observedGeneration` moves only when
//!   Ready=True (`kustomization_controller.go` `finalizeStatus`) and is -1 until then (the CRD default,
//!   `api/v1/kustomization_types.go`, the `+kubebuilder:default` on `Kustomization.Status`).
//! - `status.lastAttemptedRevision` is set once the artifact is fetched (`reconcile`), while
//!   `status.lastAppliedRevision` only after the health check passes (`reconcile`, after
//!   `checkHealth`): a failed new commit shows the new one attempted, the old one applied.
//! - Retries come every `retryInterval` and start like a first attempt (`Reconcile`: `RequeueAfter:
//!   obj.GetRetryInterval()`).
//! - Argo CD: sync status, health, `operationState` (Running with `retryCount` and the retry message,
//!   then Failed and `SyncError`) and the head annotation running ahead of the status
//!   (`argoproj/argo-cd@v3.0.23 controller/appcontroller.go` `processRequestedAppOperation`,
//!   `processAppRefreshQueueItem`, `controller/sync.go` `SyncAppState`, `controller/state.go`
//!   `CompareAppState`; `argoproj/gitops-engine@0882c168faa3 pkg/sync/sync_context.go` `Sync`,
//!   `pkg/health/health.go`).
//! - A `relist` step is answered by the fake with 410 Gone inside a 200 watch response, so kube-rs
//!   lists again (`tests/fakes/kube.rs`; kube-runtime 5.0.0 `watcher.rs` `step_trampolined`).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::github::{FakeGitHub, OWNER, REPO};
use super::kube::{ARGOCD, FLUX, FakeKube};

/// One scenario file.
pub struct Fixture {
    pub steps: Vec<Value>,
}

/// Reads `tests/fixtures/status/<engine>/<name>.json`.
pub fn fixture(engine: &str, name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/status/{engine}/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap();
    Fixture {
        steps: value["steps"].as_array().unwrap().clone(),
    }
}

/// Serves `app` on a loopback port.
pub async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A running `prenv watch`; killed on drop.
pub struct Watcher {
    child: Child,
    pub metrics_port: u16,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watcher {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of an unlabelled (or first labelled) sample of `name` on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.metrics_port, "/metrics").await?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await.unwrap_or_default()
    }
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// A fake cluster, a fake GitHub and the watcher between them.
pub struct Session {
    pub kube: FakeKube,
    pub hub: FakeGitHub,
    pub engine: &'static str,
    dir: tempfile::TempDir,
    kube_port: u16,
    hub_port: u16,
    /// The `[watch]` section's lines.
    pub watch: String,
    pub watcher: Option<Watcher>,
    /// Each object step waits until the watcher took it in and told GitHub, as controller writes
    /// seconds or minutes apart are; off, steps come as fast as the fake can serve them (and a
    /// newer report may replace one still waiting, as the watcher's outbox does under load).
    pub spaced: bool,
}

/// Pacing off (a test GitHub), as `[watch]` lines.
pub const UNPACED: &str = "write_interval_ms = 0\nwrites_per_minute = 0\nwrites_per_hour = 0\n";

impl Session {
    /// `engine`: "flux" or "argocd"; `watch`: the `[watch]` lines.
    pub async fn new(engine: &'static str, watch: &str) -> Session {
        let kube = FakeKube::new(if engine == "flux" { FLUX } else { ARGOCD });
        let hub = FakeGitHub::default();
        let kube_port = serve(kube.router()).await;
        let hub_port = serve(hub.router()).await;
        Session {
            kube,
            hub,
            engine,
            dir: tempfile::tempdir().unwrap(),
            kube_port,
            hub_port,
            watch: watch.to_string(),
            watcher: None,
            spaced: true,
        }
    }

    pub fn start(&mut self) {
        let dir = self.dir.path();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\nusers:\n- name: fake\n  user:\n    token: fake\ncurrent-context: fake\n", self.kube_port),
        )
        .unwrap();
        let argo = if self.engine == "argocd" {
            "[argocd]\nrepo_url = \"https://github.com/acme/shop-environments.git\"\n"
        } else {
            ""
        };
        let config = dir.join("prenv.toml");
        std::fs::write(
            &config,
            format!(
                "project_id = \"shop\"\ndomain = \"preview.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\"]\nengine = \"{}\"\n{argo}[github]\nrepository = \"{OWNER}/{REPO}\"\napi_url = \"http://127.0.0.1:{}\"\n[watch]\ngrafana_url = \"https://grafana.example.com\"\n{}",
                self.engine, self.hub_port, self.watch
            ),
        )
        .unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_prenv"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "watch",
                "--listen",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("GITHUB_TOKEN", "ghp_watch_test")
            .env("PRENV_LOG", "warn")
            .env_remove("PRENV_CONFIG")
            .spawn()
            .unwrap();
        self.watcher = Some(Watcher { child, metrics_port });
    }

    pub fn stop(&mut self) {
        self.watcher = None;
    }

    /// Waits until the watcher has taken in every event and GitHub shows all of it: events and
    /// writes unchanged over a few polls, and no report waiting.
    pub async fn settle(&self) {
        let watcher = self.watcher.as_ref().expect("a running watcher");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut last, mut calm) = (None, 0);
        while calm < 5 {
            assert!(
                Instant::now() < deadline,
                "the watcher did not settle; metrics:\n{}",
                watcher.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(60)).await;
            let pending = watcher.metric("prenv_github_pending_reports").await;
            let now = (
                watcher.metric("prenv_watch_events_total").await,
                self.hub.writes(),
                self.kube.requests(),
            );
            calm = if pending == Some(0.0) && last == Some(now) {
                calm + 1
            } else {
                0
            };
            last = Some(now);
        }
    }

    /// Waits for `check`, up to 20 seconds.
    pub async fn until(&self, what: &str, check: impl Fn(&FakeGitHub) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(&self.hub) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Replays fixture steps; `pause` gives wall-clock time before the steps it names (a deletion left
    /// stuck past the alert threshold).
    pub async fn replay(&mut self, steps: &[Value], pause: &[(usize, Duration)]) {
        if steps.first().is_some_and(|s| s["event"] != "list") && self.watcher.is_none() {
            self.start();
            self.settle().await;
        }
        for (i, step) in steps.iter().enumerate() {
            if let Some((_, wait)) = pause.iter().find(|(at, _)| *at == i) {
                self.settle().await;
                tokio::time::sleep(*wait).await;
            }
            self.step(step).await;
        }
        self.settle().await;
    }

    async fn step(&mut self, step: &Value) {
        let name = |o: &Value| o["metadata"]["name"].as_str().unwrap().to_string();
        // Steps no watch streams now (during an outage or while no watcher runs) are not waited for.
        let live = step["missed"] != true && step["replayed"] != true && !self.kube.in_outage();
        let spaced = self.spaced;
        self.spaced = spaced && live;
        match step["event"].as_str().unwrap() {
            "apply" => {
                let seen = self.events().await;
                self.kube.apply(step["object"].clone());
                self.taken_in(seen).await;
            }
            "delete" => {
                let seen = self.events().await;
                self.kube.delete(&name(&step["object"]));
                self.taken_in(seen).await;
            }
            "bookmark" => self.kube.bookmark(),
            "list" => {
                if self.kube.requests().0 == 0 {
                    for item in step["list"]["items"].as_array().unwrap() {
                        self.kube.apply(item.clone());
                    }
                }
                self.start();
                self.settle().await;
            }
            "disconnect" => {
                self.settle().await;
                self.kube.cut(true);
            }
            "resume" => {
                let watches = self.kube.requests().1;
                self.kube.heal(false);
                self.until_kube("a re-watch", |(_, w)| w > watches).await;
            }
            "relist" => {
                let lists = self.kube.requests().0;
                self.kube.heal(true);
                self.until_kube("a re-list after 410 Gone", |(l, _)| l > lists).await;
                self.settle().await;
            }
            "restart" => {
                self.settle().await;
                self.stop();
            }
            other => panic!("unknown fixture event {other}"),
        }
        self.spaced = spaced;
    }

    async fn events(&self) -> f64 {
        match (&self.watcher, self.spaced) {
            (Some(w), true) => w.metric("prenv_watch_events_total").await.unwrap_or(0.0),
            _ => 0.0,
        }
    }

    /// When spaced and watching: waits until the watcher saw more than `seen` events and has
    /// nothing waiting for GitHub (twice in a row, 10 ms apart).
    async fn taken_in(&self, seen: f64) {
        let Some(w) = self.watcher.as_ref().filter(|_| self.spaced) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut calm = 0;
        while calm < 2 {
            assert!(Instant::now() < deadline, "the watcher did not take in a step");
            tokio::time::sleep(Duration::from_millis(10)).await;
            let events = w.metric("prenv_watch_events_total").await.unwrap_or(0.0);
            let pending = w.metric("prenv_github_pending_reports").await;
            calm = if events > seen && pending == Some(0.0) {
                calm + 1
            } else {
                0
            };
        }
    }

    async fn until_kube(&self, what: &str, check: impl Fn((u64, u64)) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(self.kube.requests()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The deletion of `object` as the API server writes it: first `deletionTimestamp` and generation+1
/// (`kubernetes/apiserver@v0.36.3 pkg/registry/generic/registry/store.go` `markAsDeleting`), while
/// the finalizer `finalizers.fluxcd.io` holds it (`kustomize-controller api/v1/kustomization_types.go`
/// `KustomizationFinalizer`); then DELETED with that last stored state once the controller removes
/// the finalizer (`kustomization_controller.go` `finalize`; `store.go` `deleteWithoutFinalizers`).
/// No status write happens in between.
pub fn deletion(object: &Value) -> [Value; 2] {
    let mut deleting = object.clone();
    deleting["metadata"]["deletionTimestamp"] =
        serde_json::json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let generation = deleting["metadata"]["generation"].as_i64().unwrap_or(1);
    deleting["metadata"]["generation"] = serde_json::json!(generation + 1);
    [
        serde_json::json!({"event": "apply", "object": deleting.clone()}),
        serde_json::json!({"event": "delete", "object": deleting}),
    ]
}

/// The fixture's steps for `count` environments at once: every object step repeated for
/// `shop-pr-<n>` (its own PR, head, image tag and URL), lists and controls kept once.
pub fn many(steps: &[Value], count: u64) -> Vec<Value> {
    let rename = |object: &Value, n: u64| {
        let sha = format!("{n:07x}{}", "f".repeat(33));
        let text = object
            .to_string()
            .replace("shop-pr-101", &format!("shop-pr-{n}"))
            .replace("\"prenv.dev/pr\":\"101\"", &format!("\"prenv.dev/pr\":\"{n}\""))
            .replace("pr-101-3f78685", &format!("pr-{n}-{}", &sha[..7]));
        let mut object: Value = serde_json::from_str(&text).unwrap();
        object["metadata"]["annotations"]["prenv.dev/head-sha"] = serde_json::json!(sha);
        object
    };
    let mut out = Vec::new();
    for step in steps {
        match step["event"].as_str().unwrap() {
            "apply" | "delete" => out.extend((1..=count).map(
                |n| serde_json::json!({"at": step["at"], "event": step["event"], "object": rename(&step["object"], n)}),
            )),
            "list" | "relist" => {
                let items: Vec<Value> = (1..=count)
                    .flat_map(|n| step["list"]["items"].as_array().unwrap().iter().map(move |i| (n, i)))
                    .map(|(n, i)| rename(i, n))
                    .collect();
                let mut step = step.clone();
                step["list"]["items"] = Value::Array(items);
                out.push(step);
            }
            _ => out.push(step.clone()),
        }
    }
    out
}
