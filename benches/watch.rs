//! Watcher benchmark (release build): `prenv watch` against a local fake Kubernetes API listing 5,000
//! ready Flux Kustomizations and a local fake GitHub that accepts every write. Prints the time until
//! every environment is reported, the GitHub requests made, and the watcher's peak memory (VmHWM).
//! Run with `cargo bench --bench watch`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};

const ENVS: u64 = 5_000;

fn kustomization(n: u64) -> Value {
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {
            "name": format!("shop-pr-{n}"), "namespace": "flux-system", "generation": 1, "uid": format!("u-{n}"),
            "resourceVersion": "1", "creationTimestamp": "2026-11-24T12:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "prenv", "prenv.dev/pr": n.to_string(), "prenv.dev/env": format!("shop-pr-{n}")},
            "annotations": {"prenv.dev/head-sha": format!("{:040x}", n), "prenv.dev/url": format!("https://shop-pr-{n}.p.example.com"), "prenv.dev/databases": "postgres"}
        },
        "spec": {"path": format!("./environments/shop-pr-{n}"), "interval": "5m", "prune": true, "sourceRef": {"kind": "GitRepository", "name": "x"}},
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": "Applied revision: main@sha1:0", "lastTransitionTime": "2026-11-24T12:01:00Z"}]}
    })
}

async fn kube(Query(q): Query<std::collections::BTreeMap<String, String>>) -> axum::response::Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        // Nothing changes after the list: hold the watch open.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return "".into_response();
    }
    let items: Vec<Value> = (1..=ENVS).map(kustomization).collect();
    Json(json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "KustomizationList", "metadata": {"resourceVersion": "1"}, "items": items})).into_response()
}

async fn github(State(count): State<Arc<AtomicU64>>, method: axum::http::Method) -> axum::response::Response {
    count.fetch_add(1, Ordering::Relaxed);
    if method == axum::http::Method::GET {
        Json(json!([])).into_response()
    } else {
        (axum::http::StatusCode::CREATED, Json(json!({"id": 1}))).into_response()
    }
}

async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let kube_port = serve(axum::Router::new().route(
        "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations",
        axum::routing::get(kube),
    ))
    .await;
    let count = Arc::new(AtomicU64::new(0));
    let hub_port = serve(axum::Router::new().fallback(github).with_state(count.clone())).await;
    std::fs::write(
        dir.path().join("kubeconfig"),
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: f\n  cluster:\n    server: http://127.0.0.1:{kube_port}\ncontexts:\n- name: f\n  context:\n    cluster: f\n    user: f\nusers:\n- name: f\n  user:\n    token: f\ncurrent-context: f\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prenv.toml"),
        format!("project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\napi_url = \"http://127.0.0.1:{hub_port}\"\n"),
    )
    .unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_prenv"))
        .current_dir(dir.path())
        .args([
            "--config",
            "prenv.toml",
            "watch",
            "--listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .env("GITHUB_TOKEN", "bench")
        .env("PRENV_LOG", "error")
        .spawn()
        .unwrap();
    // Per environment: one comment lookup, a status, a deployment, its status and a comment.
    let expected = ENVS * 5;
    while count.load(Ordering::Relaxed) < expected {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {} requests",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = vm_hwm_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "prenv watch, {ENVS} watched environments: all reported in {elapsed:.1?} ({} GitHub requests), peak RSS {peak} KiB",
        count.load(Ordering::Relaxed)
    );
}
