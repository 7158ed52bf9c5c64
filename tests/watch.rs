//! `prenv watch` end to end: a local fake Kubernetes API (list + watch of Flux Kustomizations) and a
//! local fake GitHub that keeps what is written to it. A full lifecycle posts the expected statuses,
//! one deployment and one comment edited in place; a restart posts nothing; 250 other comments do not
//! hide prenv's own.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use common::*;
use serde_json::{Value, json};
use tokio::sync::broadcast;

// ---------- fake Kubernetes ----------

#[derive(Clone)]
struct Kube {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    events: broadcast::Sender<String>,
    version: Arc<Mutex<u64>>,
}

impl Kube {
    fn new() -> Kube {
        Kube {
            objects: Arc::default(),
            events: broadcast::channel(64).0,
            version: Arc::new(Mutex::new(1)),
        }
    }

    fn put(&self, kind: &str, mut object: Value) {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        object["metadata"]["resourceVersion"] = json!(v.to_string());
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        if kind == "DELETED" {
            self.objects.lock().unwrap().remove(&name);
        } else {
            self.objects.lock().unwrap().insert(name, object.clone());
        }
        let _ = self.events.send(json!({"type": kind, "object": object}).to_string());
    }
}

async fn kustomizations(
    State(kube): State<Kube>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let rx = kube.events.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx)
            .filter_map(|line| async move { line.ok().map(|l| Ok::<_, std::io::Error>(format!("{l}\n"))) });
        return axum::body::Body::from_stream(stream).into_response();
    }
    let items: Vec<Value> = kube.objects.lock().unwrap().values().cloned().collect();
    let version = kube.version.lock().unwrap().to_string();
    Json(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "KustomizationList",
        "metadata": {"resourceVersion": version}, "items": items
    }))
    .into_response()
}

use futures::StreamExt as _;

// ---------- fake GitHub ----------

/// (deployment id, state, environment URL)
type DeploymentStatus = (u64, String, Option<String>);

#[derive(Clone, Default)]
struct Hub {
    statuses: Arc<Mutex<Vec<(String, String)>>>,
    deployments: Arc<Mutex<Vec<Value>>>,
    deployment_statuses: Arc<Mutex<Vec<DeploymentStatus>>>,
    comments: Arc<Mutex<Vec<(u64, String)>>>,
    writes: Arc<Mutex<u64>>,
}

impl Hub {
    fn write(&self) {
        *self.writes.lock().unwrap() += 1;
    }
    fn writes(&self) -> u64 {
        *self.writes.lock().unwrap()
    }
    fn prenv_comments(&self) -> Vec<String> {
        self.comments
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b.contains("<!-- prenv:"))
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn status(State(hub): State<Hub>, Path(sha): Path<String>, Json(body): Json<Value>) -> StatusCode {
    hub.write();
    hub.statuses
        .lock()
        .unwrap()
        .push((sha, body["state"].as_str().unwrap_or_default().to_string()));
    StatusCode::CREATED
}

async fn deployment(State(hub): State<Hub>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    hub.write();
    let mut d = hub.deployments.lock().unwrap();
    let id = 1000 + d.len() as u64;
    d.push(body);
    (StatusCode::CREATED, Json(json!({"id": id})))
}

async fn deployment_status(State(hub): State<Hub>, Path(id): Path<u64>, Json(body): Json<Value>) -> StatusCode {
    hub.write();
    hub.deployment_statuses.lock().unwrap().push((
        id,
        body["state"].as_str().unwrap_or_default().to_string(),
        body["environment_url"].as_str().map(String::from),
    ));
    StatusCode::CREATED
}

async fn list_comments(
    State(hub): State<Hub>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let per = 100;
    let all = hub.comments.lock().unwrap().clone();
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|(id, b)| json!({"id": id, "body": b}))
        .collect();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut response = Json(items).into_response();
    if page * per < all.len() {
        let link = format!(
            "<http://{host}/repos/acme/shop/issues/7/comments?per_page=100&page={}>; rel=\"next\"",
            page + 1
        );
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

async fn add_comment(State(hub): State<Hub>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    hub.write();
    let mut c = hub.comments.lock().unwrap();
    let id = 5000 + c.len() as u64;
    c.push((id, body["body"].as_str().unwrap_or_default().to_string()));
    (StatusCode::CREATED, Json(json!({"id": id})))
}

async fn edit_comment(State(hub): State<Hub>, Path(id): Path<u64>, Json(body): Json<Value>) -> StatusCode {
    hub.write();
    for c in hub.comments.lock().unwrap().iter_mut().filter(|c| c.0 == id) {
        c.1 = body["body"].as_str().unwrap_or_default().to_string();
    }
    StatusCode::OK
}

async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

// ---------- the lifecycle ----------

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn kustomization(generation: i64, observed: i64, ready: Option<&str>, deleting: bool) -> Value {
    let mut o = json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {
            "name": "shop-pr-7", "namespace": "flux-system", "generation": generation, "uid": "u-1",
            "creationTimestamp": "2026-11-24T12:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "prenv", "prenv.dev/pr": "7", "prenv.dev/env": "shop-pr-7"},
            "annotations": {"prenv.dev/head-sha": SHA, "prenv.dev/url": "https://shop-pr-7.p.example.com", "prenv.dev/databases": "postgres"}
        },
        "spec": {"path": "./environments/shop-pr-7", "interval": "5m", "prune": true, "sourceRef": {"kind": "GitRepository", "name": "x"}},
        "status": {"observedGeneration": observed, "conditions": []}
    });
    if let Some(status) = ready {
        o["status"]["conditions"] = json!([{"type": "Ready", "status": status, "reason": if status == "True" { "ReconciliationSucceeded" } else { "Progressing" }, "message": "", "lastTransitionTime": "2026-11-24T12:01:00Z"}]);
    }
    if deleting {
        o["metadata"]["deletionTimestamp"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    o
}

struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_watcher(dir: &std::path::Path, kube_port: u16, hub_port: u16, alert_secs: u64) -> Watcher {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{kube_port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\nusers:\n- name: fake\n  user:\n    token: fake\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    let config = write_config(
        dir,
        &format!(
            "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\napi_url = \"http://127.0.0.1:{hub_port}\"\n[watch]\ngrafana_url = \"https://grafana.example.com\"\nterminating_alert_secs = {alert_secs}\n"
        ),
    );
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Watcher(
        std::process::Command::new(env!("CARGO_BIN_EXE_prenv"))
            .args([
                "--config",
                s(&config),
                "watch",
                "--listen",
                &format!("127.0.0.1:{metrics}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("GITHUB_TOKEN", "ghp_watch_test")
            .env("PRENV_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The fake Kubernetes API (with `shop-pr-7` committed) and the fake GitHub, both serving.
async fn fakes() -> (Kube, u16, Hub, u16) {
    let kube = Kube::new();
    kube.put("ADDED", kustomization(1, 0, None, false));
    let kube_port = serve(
        axum::Router::new()
            .route(
                "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations",
                get(kustomizations),
            )
            .with_state(kube.clone()),
    )
    .await;
    let hub = Hub::default();
    // 250 comments by others come first: prenv must page past them to find (and not duplicate) its own.
    for i in 0..250u64 {
        hub.comments.lock().unwrap().push((i + 1, format!("LGTM #{i}")));
    }
    let hub_port = serve(
        axum::Router::new()
            .route("/repos/acme/shop/statuses/{sha}", post(status))
            .route("/repos/acme/shop/deployments", post(deployment))
            .route("/repos/acme/shop/deployments/{id}/statuses", post(deployment_status))
            .route(
                "/repos/acme/shop/issues/7/comments",
                get(list_comments).post(add_comment),
            )
            .route("/repos/acme/shop/issues/comments/{id}", patch(edit_comment))
            .with_state(hub.clone()),
    )
    .await;
    (kube, kube_port, hub, hub_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lifecycle_posts_statuses_one_deployment_and_one_comment_and_a_restart_posts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kube_port, hub, hub_port) = fakes().await;
    let watcher = start_watcher(dir.path(), kube_port, hub_port, 300);
    until("the committed report", || hub.prenv_comments().len() == 1).await;
    // A garbage object in between must be skipped, not crash the watcher.
    kube.put("ADDED", json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": "junk", "namespace": "flux-system", "labels": {"app.kubernetes.io/managed-by": "prenv"}}}));
    kube.put("MODIFIED", kustomization(1, 1, Some("Unknown"), false));
    until("reconciling", || hub.statuses.lock().unwrap().len() == 2).await;
    kube.put("MODIFIED", kustomization(1, 1, Some("True"), false));
    until("ready", || {
        hub.statuses.lock().unwrap().iter().any(|(_, s)| s == "success")
    })
    .await;
    // The same state again (a resync of an unchanged object) writes nothing.
    let before = hub.writes();
    kube.put("MODIFIED", kustomization(1, 1, Some("True"), false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.writes(), before, "an unchanged state was written again");

    // Restart: the new watcher lists the Ready object and finds its marker: nothing to write.
    drop(watcher);
    let watcher = start_watcher(dir.path(), kube_port, hub_port, 300);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(hub.writes(), before, "a restart posted again");

    kube.put("MODIFIED", kustomization(1, 1, Some("True"), true));
    kube.put("DELETED", kustomization(1, 1, Some("True"), true));
    until("destroyed", || {
        hub.prenv_comments()
            .first()
            .is_some_and(|c| c.contains("state=destroyed"))
    })
    .await;
    drop(watcher);

    let statuses: Vec<String> = hub
        .statuses
        .lock()
        .unwrap()
        .iter()
        .map(|(sha, s)| {
            assert_eq!(sha, SHA, "a status landed on the wrong commit");
            s.clone()
        })
        .collect();
    assert_eq!(
        statuses,
        ["pending", "pending", "success", "success"],
        "committed, reconciling, ready, destroying"
    );
    assert_eq!(
        hub.deployments.lock().unwrap().len(),
        1,
        "one deployment per environment"
    );
    let deployment_states: Vec<String> = hub
        .deployment_statuses
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.1.clone())
        .collect();
    assert_eq!(deployment_states, ["in_progress", "in_progress", "success", "inactive"]);
    let success = hub
        .deployment_statuses
        .lock()
        .unwrap()
        .iter()
        .find(|d| d.1 == "success")
        .cloned()
        .unwrap();
    assert_eq!(success.2.as_deref(), Some("https://shop-pr-7.p.example.com"));
    let comments = hub.prenv_comments();
    assert_eq!(comments.len(), 1, "exactly one comment, edited in place");
    let comment = &comments[0];
    for want in [
        "shop-pr-7",
        "https://shop-pr-7.p.example.com",
        "postgres",
        "grafana.example.com/d/prenv-preview",
        "Loki",
        "Timeline",
        "destroyed",
    ] {
        assert!(comment.contains(want), "comment lacks {want:?}:\n{comment}");
    }
    println!("GitHub writes for one environment lifecycle: {}", hub.writes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_still_terminating_past_the_threshold_is_flagged_on_the_pr() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kube_port, hub, hub_port) = fakes().await;
    let _watcher = start_watcher(dir.path(), kube_port, hub_port, 1);
    until("the committed report", || hub.prenv_comments().len() == 1).await;
    kube.put("MODIFIED", kustomization(1, 1, Some("True"), true));
    until("the stuck note", || {
        hub.prenv_comments()
            .first()
            .is_some_and(|c| c.contains("still terminating"))
    })
    .await;
    assert!(hub.prenv_comments()[0].contains("state=destroying-stuck"));
    let deployments_before = hub.deployment_statuses.lock().unwrap().len();
    kube.put("DELETED", kustomization(1, 1, Some("True"), true));
    until("destroyed", || {
        hub.prenv_comments()
            .first()
            .is_some_and(|c| c.contains("state=destroyed"))
    })
    .await;
    assert_eq!(
        hub.deployment_statuses.lock().unwrap().len(),
        deployments_before,
        "no second inactive status"
    );
}
