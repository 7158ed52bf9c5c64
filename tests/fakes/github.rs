//! A fake GitHub REST API for what `prenv watch` touches: commit statuses, deployments and their
//! statuses, issue comments and pull requests of one repository (acme/shop unless made with
//! [`FakeGitHub::of`]). It keeps every write (with the time
//! it arrived) and refuses what GitHub refuses. Sources, as collected in the project's notes on
//! GitHub (the OpenAPI description `@octokit/openapi@23.0.2 generated/api.github.com.json`, and
//! github/docs pages):
//!
//! - Every request needs credentials: 401 `Bad credentials` otherwise (troubleshooting doc).
//! - `POST /repos/{o}/{r}/statuses/{sha}` (`repos/create-commit-status`): `state` ∈ error, failure,
//!   pending, success; 201; a description over 140 characters is a 422 "description is too long
//!   (maximum is 140 characters)"; at most 1,000 statuses per SHA and context (422).
//! - `POST /repos/{o}/{r}/deployments` (`repos/create-deployment`): `ref` required; with
//!   `required_contexts` omitted GitHub checks every context of the ref and answers 409 while one is
//!   not successful (a pending prenv status included); 201 with the deployment.
//! - `GET /repos/{o}/{r}/deployments` (`repos/list-deployments`): filters `sha`, `environment`.
//! - `POST /repos/{o}/{r}/deployments/{id}/statuses` (`repos/create-deployment-status`): `state` ∈
//!   error, failure, inactive, in_progress, queued, pending, success; description at most 140.
//!   `GET` lists them.
//! - `GET /repos/{o}/{r}/issues/{n}/comments` (`issues/list-comments`): "ordered by ascending ID",
//!   `per_page` at most 100, a `Link` header whose URLs use the id form `/repositories/{id}/…`
//!   (github/docs `using-pagination-in-the-rest-api.md`), so that path is served too.
//! - `POST …/issues/{n}/comments`, `PATCH …/issues/comments/{id}`: a body over 65,536 characters is
//!   a 422 (`Body is too long (maximum is 65536 characters)`); PATCH of an unknown comment is 404.
//! - `GET /repos/{o}/{r}/pulls/{n}` (`pulls/get`): 404 `Not Found` for an unknown PR.
//!   `GET /repos/{o}/{r}/pulls` (`pulls/list`): `state` open (default), closed or all; `sort=updated`
//!   with `direction`; `per_page` at most 100.
//! - Secondary rate limit (docs "Rate limits for the REST API"): more than 80 content-creating
//!   requests in a minute or 500 in an hour get 403 "You have exceeded a secondary rate limit…" with
//!   `retry-after`. On unless a test turns it off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

pub const OWNER: &str = "acme";
pub const REPO: &str = "shop";
const REPO_ID: u64 = 186_853_002;

/// One write GitHub received.
#[derive(Debug, Clone)]
pub struct Write {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
pub struct Hub {
    pub writes: Vec<Write>,
    /// (sha, body) of every commit status.
    pub statuses: Vec<(String, Value)>,
    pub deployments: Vec<Value>,
    pub deployment_statuses: BTreeMap<u64, Vec<Value>>,
    /// (id, issue, body), ascending id.
    pub comments: Vec<(u64, u64, String)>,
    pub pulls: BTreeMap<u64, Value>,
    /// Enforce the secondary rate limits.
    pub limits: bool,
    /// The one repository served, `owner/name`: requests for any other are 404, as GitHub answers
    /// a repository the token cannot see.
    pub repository: String,
    next_id: u64,
}

/// The fake; clones share it.
#[derive(Clone)]
pub struct FakeGitHub(pub Arc<Mutex<Hub>>);

impl Default for FakeGitHub {
    fn default() -> Self {
        FakeGitHub::of(&format!("{OWNER}/{REPO}"))
    }
}

fn error(status: StatusCode, message: &str, errors: Value) -> Response {
    (status, Json(json!({"message": message, "errors": errors, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()}))).into_response()
}

fn too_long(resource: &str, field: &str, max: usize) -> Response {
    let message = format!("{field} is too long (maximum is {max} characters)");
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Validation Failed",
        json!([{"resource": resource, "code": "custom", "field": field, "message": message}]),
    )
}

impl FakeGitHub {
    /// A fake serving `repository` (`owner/name`).
    pub fn of(repository: &str) -> FakeGitHub {
        FakeGitHub(Arc::new(Mutex::new(Hub {
            limits: true,
            repository: repository.to_string(),
            next_id: 5_000,
            ..Hub::default()
        })))
    }

    pub fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.0.lock().unwrap()
    }

    /// A PR as `GET /pulls/{n}` returns it (the fields prenv's parser reads).
    pub fn set_pull(
        &self,
        number: u64,
        state: &str,
        draft: bool,
        merged: bool,
        labels: &[&str],
        closed_at: Option<&str>,
    ) {
        let full_name = self.hub().repository.clone();
        let pull = json!({
            "number": number, "state": state, "draft": draft, "title": format!("PR {number}"),
            "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
            "head": {"sha": "0".repeat(40), "ref": "feature", "repo": {"full_name": full_name}},
            "base": {"repo": {"full_name": full_name}},
            "user": {"login": "octocat"}, "closed_at": closed_at,
            "merged_at": if merged { json!(closed_at) } else { Value::Null },
            "updated_at": closed_at.unwrap_or("2026-11-24T11:00:00Z"),
        });
        self.hub().pulls.insert(number, pull);
    }

    pub fn writes(&self) -> usize {
        self.hub().writes.len()
    }

    /// Commit statuses posted on `sha`: (state, description).
    pub fn statuses_on(&self, sha: &str) -> Vec<(String, String)> {
        self.hub()
            .statuses
            .iter()
            .filter(|(s, _)| s == sha)
            .map(|(_, b)| {
                (
                    b["state"].as_str().unwrap_or_default().into(),
                    b["description"].as_str().unwrap_or_default().into(),
                )
            })
            .collect()
    }

    /// Comments carrying prenv's marker, on any issue.
    pub fn prenv_comments(&self) -> Vec<(u64, String)> {
        self.hub()
            .comments
            .iter()
            .filter(|(_, _, b)| b.contains("<!-- prenv:"))
            .map(|(_, issue, b)| (*issue, b.clone()))
            .collect()
    }

    /// The latest status state of every deployment: (environment, sha, state).
    pub fn deployment_states(&self) -> Vec<(String, String, String)> {
        let hub = self.hub();
        hub.deployments
            .iter()
            .map(|d| {
                let id = d["id"].as_u64().unwrap();
                let last = hub
                    .deployment_statuses
                    .get(&id)
                    .and_then(|s| s.last())
                    .map_or("none", |s| s["state"].as_str().unwrap());
                (
                    d["environment"].as_str().unwrap().into(),
                    d["sha"].as_str().unwrap().into(),
                    last.into(),
                )
            })
            .collect()
    }

    pub fn router(&self) -> axum::Router {
        let repo = format!("/repos/{}", self.hub().repository);
        axum::Router::new()
            .route(&format!("{repo}/statuses/{{sha}}"), post(create_status))
            .route(
                &format!("{repo}/deployments"),
                get(list_deployments).post(create_deployment),
            )
            .route(
                &format!("{repo}/deployments/{{id}}/statuses"),
                get(list_deployment_statuses).post(create_deployment_status),
            )
            .route(
                &format!("{repo}/issues/{{n}}/comments"),
                get(list_comments).post(create_comment),
            )
            .route(
                &format!("/repositories/{REPO_ID}/issues/{{n}}/comments"),
                get(list_comments),
            )
            .route(&format!("{repo}/issues/comments/{{id}}"), patch(edit_comment))
            .route(&format!("{repo}/pulls/{{n}}"), get(get_pull))
            .route(&format!("{repo}/pulls"), get(list_pulls))
            .layer(axum::middleware::from_fn_with_state(self.clone(), gate))
            .with_state(self.clone())
    }
}

/// Credentials on every request; secondary rate limits on content-creating ones; the write log.
async fn gate(
    State(hub): State<FakeGitHub>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !request.headers().contains_key("authorization") {
        return error(StatusCode::UNAUTHORIZED, "Bad credentials", Value::Null);
    }
    let writing = matches!(*request.method(), Method::POST | Method::PATCH);
    if writing {
        let now = Instant::now();
        let h = hub.hub();
        let within = |d: Duration| h.writes.iter().filter(|w| now.duration_since(w.at) < d).count();
        if h.limits && (within(Duration::from_secs(60)) >= 80 || within(Duration::from_secs(3600)) >= 500) {
            let mut r = error(
                StatusCode::FORBIDDEN,
                "You have exceeded a secondary rate limit and have been temporarily blocked from content creation. Please retry your request again later.",
                Value::Null,
            );
            r.headers_mut().insert("retry-after", "60".parse().unwrap());
            return r;
        }
    }
    next.run(request).await
}

fn log_write(h: &mut Hub, method: &str, path: String, body: &Value) {
    h.writes.push(Write {
        at: Instant::now(),
        method: method.into(),
        path,
        body: body.clone(),
    });
}

async fn create_status(State(hub): State<FakeGitHub>, Path(sha): Path<String>, Json(body): Json<Value>) -> Response {
    let mut h = hub.hub();
    log_write(&mut h, "POST", format!("statuses/{sha}"), &body);
    if !matches!(
        body["state"].as_str(),
        Some("error" | "failure" | "pending" | "success")
    ) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
            json!([{"resource": "Status", "field": "state", "code": "invalid"}]),
        );
    }
    if body["description"].as_str().is_some_and(|d| d.chars().count() > 140) {
        return too_long("Status", "description", 140);
    }
    let context = body["context"].as_str().unwrap_or("default").to_ascii_lowercase();
    let same = h
        .statuses
        .iter()
        .filter(|(s, b)| {
            *s == sha
                && b["context"]
                    .as_str()
                    .unwrap_or("default")
                    .eq_ignore_ascii_case(&context)
        })
        .count();
    if same >= 1000 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
            json!([{"resource": "Status", "code": "custom", "message": "This SHA and context has reached the maximum number of statuses."}]),
        );
    }
    h.next_id += 1;
    let id = h.next_id;
    h.statuses.push((sha, body.clone()));
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "state": body["state"], "description": body["description"], "context": context})),
    )
        .into_response()
}

async fn create_deployment(State(hub): State<FakeGitHub>, Json(body): Json<Value>) -> Response {
    let mut h = hub.hub();
    log_write(&mut h, "POST", "deployments".into(), &body);
    let Some(reference) = body["ref"].as_str().map(String::from) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\n\"ref\" wasn't supplied.",
            Value::Null,
        );
    };
    if body.get("required_contexts").is_none() {
        let pending = h
            .statuses
            .iter()
            .any(|(s, b)| *s == reference && b["state"] != "success");
        if pending {
            return error(
                StatusCode::CONFLICT,
                &format!("Conflict: Commit status checks failed for {reference}."),
                Value::Null,
            );
        }
    }
    h.next_id += 1;
    let deployment = json!({
        "id": h.next_id, "sha": reference, "ref": reference, "task": "deploy",
        "environment": body["environment"].as_str().unwrap_or("production"),
        "transient_environment": body["transient_environment"].as_bool().unwrap_or(false),
        "production_environment": body["production_environment"].as_bool().unwrap_or(false),
        "description": body["description"],
    });
    h.deployments.push(deployment.clone());
    (StatusCode::CREATED, Json(deployment)).into_response()
}

async fn list_deployments(State(hub): State<FakeGitHub>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let h = hub.hub();
    let matches = |d: &&Value, key: &str, field: &str| q.get(key).is_none_or(|want| d[field].as_str() == Some(want));
    let list: Vec<Value> = h
        .deployments
        .iter()
        .rev()
        .filter(|d| matches(d, "environment", "environment") && matches(d, "sha", "sha"))
        .take(100)
        .cloned()
        .collect();
    Json(list).into_response()
}

async fn create_deployment_status(
    State(hub): State<FakeGitHub>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    let mut h = hub.hub();
    log_write(&mut h, "POST", format!("deployments/{id}/statuses"), &body);
    if !h.deployments.iter().any(|d| d["id"] == id) {
        return error(StatusCode::NOT_FOUND, "Not Found", Value::Null);
    }
    let states = [
        "error",
        "failure",
        "inactive",
        "in_progress",
        "queued",
        "pending",
        "success",
    ];
    if !body["state"].as_str().is_some_and(|s| states.contains(&s)) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
            json!([{"resource": "DeploymentStatus", "field": "state", "code": "invalid"}]),
        );
    }
    if body["description"].as_str().is_some_and(|d| d.chars().count() > 140) {
        return too_long("DeploymentStatus", "description", 140);
    }
    h.deployment_statuses.entry(id).or_default().push(body.clone());
    (
        StatusCode::CREATED,
        Json(json!({"id": id * 10, "state": body["state"]})),
    )
        .into_response()
}

async fn list_deployment_statuses(State(hub): State<FakeGitHub>, Path(id): Path<u64>) -> Response {
    let h = hub.hub();
    let mut list = h.deployment_statuses.get(&id).cloned().unwrap_or_default();
    list.reverse();
    Json(list).into_response()
}

async fn list_comments(
    State(hub): State<FakeGitHub>,
    Path(n): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let h = hub.hub();
    let all: Vec<&(u64, u64, String)> = h.comments.iter().filter(|c| c.1 == n).collect();
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|(id, _, b)| json!({"id": id, "body": b, "html_url": format!("https://github.com/{}/pull/{n}#issuecomment-{id}", h.repository)}))
        .collect();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut response = Json(items).into_response();
    if page * per < all.len() {
        let link = format!(
            "<http://{host}/repositories/{REPO_ID}/issues/{n}/comments?per_page={per}&page={}>; rel=\"next\"",
            page + 1
        );
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

async fn create_comment(State(hub): State<FakeGitHub>, Path(n): Path<u64>, Json(body): Json<Value>) -> Response {
    let mut h = hub.hub();
    log_write(&mut h, "POST", format!("issues/{n}/comments"), &body);
    let Some(text) = body["body"].as_str().map(String::from) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
            json!([{"resource": "IssueComment", "field": "body", "code": "missing_field"}]),
        );
    };
    if text.chars().count() > 65_536 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
            json!([{"resource": "IssueComment", "code": "unprocessable", "field": "data", "message": "Body is too long (maximum is 65536 characters)"}]),
        );
    }
    h.next_id += 1;
    let id = h.next_id;
    h.comments.push((id, n, text));
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "html_url": format!("https://github.com/{}/pull/{n}#issuecomment-{id}", h.repository)})),
    )
        .into_response()
}

async fn edit_comment(State(hub): State<FakeGitHub>, Path(id): Path<u64>, Json(body): Json<Value>) -> Response {
    let mut h = hub.hub();
    log_write(&mut h, "PATCH", format!("issues/comments/{id}"), &body);
    let text = body["body"].as_str().unwrap_or_default().to_string();
    if text.chars().count() > 65_536 {
        return too_long("IssueComment", "body", 65_536);
    }
    match h.comments.iter_mut().find(|c| c.0 == id) {
        Some(c) => {
            c.2 = text;
            Json(json!({"id": id})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "Not Found", Value::Null),
    }
}

async fn get_pull(State(hub): State<FakeGitHub>, Path(n): Path<u64>) -> Response {
    match hub.hub().pulls.get(&n) {
        Some(pull) => Json(pull.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found", Value::Null),
    }
}

async fn list_pulls(State(hub): State<FakeGitHub>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let state = q.get("state").map_or("open", String::as_str);
    let per: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let mut pulls: Vec<Value> = hub
        .hub()
        .pulls
        .values()
        .filter(|p| state == "all" || p["state"] == state)
        .cloned()
        .collect();
    let updated = |p: &Value| p["updated_at"].as_str().unwrap_or_default().to_string();
    pulls.sort_by_key(updated);
    if q.get("direction").is_none_or(|d| d == "desc") {
        pulls.reverse();
    }
    pulls.truncate(per);
    Json(pulls).into_response()
}
