//! A fake Kubernetes API server for one custom resource (Flux Kustomizations or Argo CD
//! Applications in one namespace), with the list and watch behaviour of the real one, inconvenient
//! parts included. Each behaviour cites the upstream code it models (kubernetes/apiserver@v0.36.3,
//! and kube-rs 5.0.0, whose watcher is the client):
//!
//! - resourceVersion is one counter for the whole store, assigned at every write (the etcd revision:
//!   `pkg/storage/etcd3/store.go` `GuaranteedUpdate`/`Delete` set it from the response revision).
//! - LIST answers `{kind: <Kind>List, metadata: {resourceVersion, continue}, items}` in key order,
//!   filtered by `labelSelector`, `limit` items a page with a `continue` token that pins the
//!   snapshot (`pkg/storage/etcd3/store.go` `GetList`: limit, continue, `UpdateList`). kube-rs lists
//!   without resourceVersion, 500 a page (`watcher.rs` `Config::default`, `to_list_params`).
//! - WATCH (`?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=290`) answers 200,
//!   chunked, one JSON event per line (`pkg/endpoints/handlers/watch.go` `WatchServer.HandleHTTP`),
//!   every event after N from the watch cache (`pkg/storage/cacher/watch_cache.go`
//!   `getAllEventsSinceLocked`), and ends after `timeoutSeconds` (`handlers/get.go` `ListResource`).
//! - A resume from a resourceVersion older than the cache window is *not* an HTTP error: the answer
//!   is 200 with a single `ERROR` event, a `Status` with code 410, reason `Expired`, message `too old
//!   resource version: N (oldest-1)` (`watch_cache.go` `getAllEventsSinceLocked`, `cacher.go`
//!   `Watch` → `newErrWatcher`). kube-rs then re-lists (`watcher.rs` `step_trampolined`: 410 →
//!   `State::Empty`); an HTTP 410 would make it retry the same watch forever.
//! - DELETED carries the object as it was last stored, at the deletion's resourceVersion
//!   (`pkg/storage/etcd3/watcher.go` `prepareObjs`: "sends the *old* object with the etcd revision
//!   for the time at which it gets deleted").
//! - BOOKMARK events carry only apiVersion, kind and metadata.resourceVersion, and only to watches
//!   that asked with `allowWatchBookmarks=true` (`cacher/cache_watcher.go` `convertToWatchEvent`;
//!   `cacher.go` `defaultBookmarkFrequency = time.Minute`; kube-core's `Bookmark` needs apiVersion and
//!   kind to parse).
//! - A watch cut (the response ends) makes kube-rs re-watch from its last resourceVersion without
//!   listing (`watcher.rs`: stream end → `State::InitListed`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The custom resource the fake serves.
#[derive(Debug, Clone)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespace: &'static str,
}

pub const FLUX: Resource = Resource {
    group: "kustomize.toolkit.fluxcd.io",
    version: "v1",
    kind: "Kustomization",
    plural: "kustomizations",
    namespace: "flux-system",
};

pub const ARGOCD: Resource = Resource {
    group: "argoproj.io",
    version: "v1alpha1",
    kind: "Application",
    plural: "applications",
    namespace: "argocd",
};

impl Resource {
    pub fn path(&self) -> String {
        format!(
            "/apis/{}/{}/namespaces/{}/{}",
            self.group, self.version, self.namespace, self.plural
        )
    }

    fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

struct Store {
    resource: Resource,
    /// The revision counter (etcd's), shared by every object.
    rv: u64,
    objects: BTreeMap<String, Value>,
    /// The watch cache: (resourceVersion, type, object), oldest first.
    cache: Vec<(u64, &'static str, Value)>,
    /// The oldest revision the cache still holds events after; older resumes get 410.
    oldest: u64,
    /// Bumped by [`FakeKube::cut`]: every watch response open before it ends.
    cuts: u64,
    /// Bumped by [`FakeKube::bookmark`].
    bookmarks: u64,
    /// While set, watch requests wait (the watcher cannot reach the server).
    outage: bool,
    /// Snapshots pinned by `continue` tokens.
    snapshots: BTreeMap<u64, Vec<Value>>,
    lists: u64,
    watches: u64,
}

/// The fake API server; clones share it.
#[derive(Clone)]
pub struct FakeKube {
    store: Arc<Mutex<Store>>,
    changed: watch::Sender<u64>,
}

impl FakeKube {
    pub fn new(resource: Resource) -> FakeKube {
        FakeKube {
            store: Arc::new(Mutex::new(Store {
                resource,
                rv: 1_000,
                objects: BTreeMap::new(),
                cache: Vec::new(),
                oldest: 1_000,
                cuts: 0,
                bookmarks: 0,
                outage: false,
                snapshots: BTreeMap::new(),
                lists: 0,
                watches: 0,
            })),
            changed: watch::channel(0).0,
        }
    }

    fn poke(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Creates or replaces an object (ADDED the first time, MODIFIED after).
    pub fn apply(&self, mut object: Value) {
        {
            let mut s = self.store.lock().unwrap();
            s.rv += 1;
            object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let name = object["metadata"]["name"].as_str().expect("an object name").to_string();
            let kind = if s.objects.contains_key(&name) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            s.objects.insert(name, object.clone());
            let rv = s.rv;
            s.cache.push((rv, kind, object));
        }
        self.poke();
    }

    /// Deletes an object: DELETED with its last stored state at the deletion's revision.
    pub fn delete(&self, name: &str) {
        {
            let mut s = self.store.lock().unwrap();
            s.rv += 1;
            let Some(mut last) = s.objects.remove(name) else { return };
            last["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let rv = s.rv;
            s.cache.push((rv, "DELETED", last));
        }
        self.poke();
    }

    /// Sends a BOOKMARK to every open watch that asked for them.
    pub fn bookmark(&self) {
        self.store.lock().unwrap().bookmarks += 1;
        self.poke();
    }

    /// Ends every open watch response; with `outage`, new watch requests wait until [`Self::heal`].
    pub fn cut(&self, outage: bool) {
        {
            let mut s = self.store.lock().unwrap();
            s.cuts += 1;
            s.outage = outage;
        }
        self.poke();
    }

    /// Ends the outage; with `compact`, the watch cache has moved past everything before now, so a
    /// resume from an older revision gets 410 Gone.
    pub fn heal(&self, compact: bool) {
        {
            let mut s = self.store.lock().unwrap();
            if compact {
                s.cache.clear();
                s.oldest = s.rv + 1;
            }
            s.outage = false;
        }
        self.poke();
    }

    /// Whether watch requests are held (an outage): the watcher sees nothing meanwhile.
    pub fn in_outage(&self) -> bool {
        self.store.lock().unwrap().outage
    }

    /// Lists and watches served so far.
    pub fn requests(&self) -> (u64, u64) {
        let s = self.store.lock().unwrap();
        (s.lists, s.watches)
    }

    pub fn object(&self, name: &str) -> Option<Value> {
        self.store.lock().unwrap().objects.get(name).cloned()
    }

    /// The router serving the resource's collection.
    pub fn router(&self) -> axum::Router {
        let path = self.store.lock().unwrap().resource.path();
        axum::Router::new()
            .route(&path, axum::routing::get(collection))
            .fallback(|| async {
                (StatusCode::NOT_FOUND, Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})))
            })
            .with_state(self.clone())
    }
}

/// A label selector of `k=v`, `k==v`, `k!=v` and `k` terms (apimachinery `labels.Parse`).
fn selects(selector: Option<&String>, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .into_iter()
        .flat_map(|s| s.split(','))
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
            } else {
                labels.get(term.trim()).is_some()
            }
        })
}

async fn collection(State(kube): State<FakeKube>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch_response(kube, q).await;
    }
    let mut s = kube.store.lock().unwrap();
    s.lists += 1;
    let selector = q.get("labelSelector");
    let (rv, offset) = match q.get("continue").and_then(|c| c.split_once(':')) {
        Some((rv, offset)) => (rv.parse().unwrap_or(0), offset.parse().unwrap_or(0)),
        None => {
            let rv = s.rv;
            let items: Vec<Value> = s.objects.values().filter(|o| selects(selector, o)).cloned().collect();
            s.snapshots.insert(rv, items);
            (rv, 0)
        }
    };
    let Some(snapshot) = s.snapshots.get(&rv).cloned() else {
        let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "The provided continue parameter is too old"});
        return (StatusCode::GONE, Json(gone)).into_response();
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<Value> = snapshot.iter().skip(offset).take(limit).cloned().collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if offset + page.len() < snapshot.len() {
        metadata["continue"] = json!(format!("{rv}:{}", offset + page.len()));
        metadata["remainingItemCount"] = json!(snapshot.len() - offset - page.len());
    }
    let r = &s.resource;
    Json(json!({"apiVersion": r.api_version(), "kind": format!("{}List", r.kind), "metadata": metadata, "items": page}))
        .into_response()
}

/// A watch response: waits out an outage, then either one ERROR 410 event (the revision is older
/// than the cache) or the events after the revision as they come, bookmarks included.
async fn watch_response(kube: FakeKube, q: BTreeMap<String, String>) -> Response {
    let mut changes = kube.changed.subscribe();
    while kube.store.lock().unwrap().outage {
        if changes.changed().await.is_err() {
            break;
        }
    }
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800));
    let selector = q.get("labelSelector").cloned();
    let (cuts, marks, too_old, api_version, kind) = {
        let mut s = kube.store.lock().unwrap();
        s.watches += 1;
        let r = &s.resource;
        (s.cuts, s.bookmarks, from + 1 < s.oldest, r.api_version(), r.kind)
    };
    if too_old {
        let oldest = kube.store.lock().unwrap().oldest;
        let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", oldest - 1), "reason": "Expired", "code": 410}});
        return axum::body::Body::from(format!("{status}\n")).into_response();
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let state = (kube, changes, from, marks);
    let stream = futures::stream::unfold(state, move |(kube, mut changes, mut pos, mut marks)| {
        let (selector, api_version) = (selector.clone(), api_version.clone());
        async move {
            loop {
                let lines = {
                    let s = kube.store.lock().unwrap();
                    if s.cuts != cuts {
                        return None;
                    }
                    let mut lines: Vec<String> = s
                        .cache
                        .iter()
                        .filter(|(rv, _, o)| *rv > pos && selects(selector.as_ref(), o))
                        .map(|(_, t, o)| format!("{}\n", json!({"type": t, "object": o})))
                        .collect();
                    pos = s.cache.last().map_or(pos, |(rv, _, _)| pos.max(*rv));
                    if s.bookmarks != marks {
                        marks = s.bookmarks;
                        if bookmarks {
                            let mark = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": s.rv.to_string()}}});
                            lines.push(format!("{mark}\n"));
                        }
                    }
                    lines
                };
                if !lines.is_empty() {
                    return Some((Ok::<_, std::io::Error>(lines.concat()), (kube, changes, pos, marks)));
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return None },
                    _ = tokio::time::sleep_until(deadline) => return None,
                }
            }
        }
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("a header value"));
    response
}
