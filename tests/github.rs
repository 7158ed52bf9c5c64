//! PRs from a local server that speaks GitHub's REST shapes (wiremock): pagination, App tokens,
//! failures that must never prune, and the positive evidence that must.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use serde_json::json;
use wiremock::matchers::{header_regex, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

struct Fixture {
    dir: tempfile::TempDir,
    remote: PathBuf,
}

impl Fixture {
    /// A repository whose environments were synced from `prs` (a snapshot file, no GitHub).
    fn with_envs(prs: &[serde_json::Value]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("envs.git");
        let out = Command::new("git")
            .args(["init", "--quiet", "--bare"])
            .arg(&remote)
            .output()
            .unwrap();
        assert!(out.status.success());
        let f = Fixture { dir, remote };
        if !prs.is_empty() {
            let file = write_prs(f.dir.path(), prs);
            write_config(f.dir.path(), &config("http://127.0.0.1:9", ""));
            let out = f.prenv("sync", &["--prs", s(&file)], &[]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        f
    }

    fn prenv(&self, cmd: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_prenv"));
        // No test reaches a registry: image checks are tests/image_wait.rs's.
        c.env("PRENV_IMAGE_CHECK", "false");
        c.args([
            "--config",
            s(&self.dir.path().join("prenv.toml")),
            cmd,
            "--repo",
            s(&self.remote),
            "--now",
            NOW,
        ])
        .args(extra)
        .env_remove("GITHUB_TOKEN")
        .env_remove("PRENV_GITHUB_TOKEN")
        .env("PRENV_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Syncs from GitHub (the mock) with a token.
    async fn sync_from(&self, server: &MockServer) -> Output {
        write_config(self.dir.path(), &config(&server.uri(), ""));
        let (config, remote) = (self.dir.path().join("prenv.toml"), self.remote.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_prenv"))
                .env("PRENV_IMAGE_CHECK", "false")
                .args(["--config", s(&config), "sync", "--repo", s(&remote), "--now", NOW])
                .env("GITHUB_TOKEN", "ghp_testtoken_never_logged")
                .env("PRENV_LOG", "info")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    fn envs(&self) -> Vec<String> {
        env_names(&self.remote)
    }
}

fn config(api: &str, extra: &str) -> String {
    format!(
        "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\napi_url = \"{api}\"\n{extra}"
    )
}

fn sha(n: u64) -> String {
    format!("{:040x}", n + 1000)
}

fn open_pr(n: u64) -> serde_json::Value {
    gh_pr(n, &format!("f/{n}"), &sha(n), &[])
}

fn closed_pr(n: u64) -> serde_json::Value {
    let mut pr = open_pr(n);
    pr["state"] = json!("closed");
    pr["closed_at"] = json!("2026-11-24T11:00:00Z");
    pr
}

fn listing(prs: Vec<serde_json::Value>) -> Mock {
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls"))
        .respond_with(ResponseTemplate::new(200).set_body_json(prs))
}

#[tokio::test]
async fn a_listing_of_three_pages_is_read_whole() {
    let server = MockServer::start().await;
    let page = |n: u32, prs: std::ops::RangeInclusive<u64>, next: Option<u32>| {
        let mut response = ResponseTemplate::new(200)
            .set_body_json(prs.map(open_pr).collect::<Vec<_>>())
            .insert_header("x-ratelimit-remaining", "4990");
        if let Some(next) = next {
            let link = format!(
                "<{}/repos/acme/shop/pulls?state=open&per_page=100&page={next}>; rel=\"next\"",
                server.uri()
            );
            response = response.insert_header("link", link.as_str());
        }
        (n, response)
    };
    for (n, response) in [
        page(1, 1..=100, Some(2)),
        page(2, 101..=200, Some(3)),
        page(3, 201..=230, None),
    ] {
        let mut mock = Mock::given(method("GET"))
            .and(path("/repos/acme/shop/pulls"))
            .and(query_param("state", "open"));
        mock = if n == 1 {
            mock.and(wiremock::matchers::query_param_is_missing("page"))
        } else {
            mock.and(query_param("page", n.to_string()))
        };
        mock.respond_with(response).expect(1).mount(&server).await;
    }
    let f = Fixture::with_envs(&[]);
    let out = f.sync_from(&server).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.envs().len(), 230);
    assert!(!text(&out.stderr).contains("ghp_testtoken"), "the token was logged");
    assert!(
        text(&out.stderr).contains("remaining"),
        "the rate-limit budget is logged"
    );
}

#[tokio::test]
async fn a_pr_confirmed_closed_is_pruned() {
    let f = Fixture::with_envs(&[open_pr(1), open_pr(2)]);
    let server = MockServer::start().await;
    listing(vec![open_pr(1)]).mount(&server).await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls/2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_pr(2)))
        .expect(1)
        .mount(&server)
        .await;
    let out = f.sync_from(&server).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.envs(), ["shop-pr-1"]);
}

#[tokio::test]
async fn an_empty_or_truncated_listing_prunes_nothing_without_proof() {
    let f = Fixture::with_envs(&[open_pr(1), open_pr(2), open_pr(3)]);
    let server = MockServer::start().await;
    // The listing lost every PR; each lookup says they are still open.
    listing(vec![]).mount(&server).await;
    for n in 1..=3 {
        Mock::given(method("GET"))
            .and(path(format!("/repos/acme/shop/pulls/{n}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(open_pr(n)))
            .expect(1)
            .mount(&server)
            .await;
    }
    let out = f.sync_from(&server).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.envs(), ["shop-pr-1", "shop-pr-2", "shop-pr-3"]);
}

#[tokio::test]
async fn failures_and_rate_limits_never_prune() {
    let cases: Vec<(&str, ResponseTemplate, &str)> = vec![
        ("502", ResponseTemplate::new(502).set_body_string("bad gateway"), "502"),
        (
            "rate limit",
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header(
                    "x-ratelimit-reset",
                    (chrono::Utc::now().timestamp() + 3600).to_string().as_str(),
                )
                .set_body_json(json!({"message": "API rate limit exceeded"})),
            "rate limited 403",
        ),
        (
            "secondary limit",
            ResponseTemplate::new(403)
                .insert_header("retry-after", "3600")
                .set_body_json(json!({"message": "You have exceeded a secondary rate limit"})),
            "secondary rate limit",
        ),
    ];
    for (name, response, want) in cases {
        let f = Fixture::with_envs(&[open_pr(1), open_pr(2)]);
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/repos/acme/shop/pulls"))
            .respond_with(response)
            .mount(&server)
            .await;
        let out = f.sync_from(&server).await;
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = text(&out.stderr);
        assert!(
            err.contains(want) && err.contains("nothing was pruned"),
            "{name}: {err}"
        );
        assert_eq!(f.envs(), ["shop-pr-1", "shop-pr-2"], "{name}");
    }
}

#[tokio::test]
async fn one_pr_that_cannot_be_looked_up_is_kept_and_reported_while_the_rest_syncs() {
    let f = Fixture::with_envs(&[open_pr(1), open_pr(2), open_pr(5)]);
    let server = MockServer::start().await;
    listing(vec![open_pr(1), open_pr(3)]).mount(&server).await;
    // #2: deleted, transferred or invisible to the token; #5: GitHub keeps failing.
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls/2"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest/pulls/pulls#get-a-pull-request", "status": "404"})))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls/5"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let out = f.sync_from(&server).await;
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(f.envs(), ["shop-pr-1", "shop-pr-2", "shop-pr-3", "shop-pr-5"], "{err}");
    assert!(
        err.contains("PR #2") && err.contains("404") && err.contains("--confirm-closed 2"),
        "{err}"
    );
    assert!(err.contains("PR #5") && err.contains("500"), "{err}");
    let plan = text(&out.stdout);
    assert!(plan.contains("cannot be confirmed"), "{plan}");

    // The operator's word is the evidence: --confirm-closed prunes it, and only it.
    write_config(f.dir.path(), &config(&server.uri(), ""));
    let (config, remote) = (f.dir.path().join("prenv.toml"), f.remote.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_prenv"))
            .env("PRENV_IMAGE_CHECK", "false")
            .args([
                "--config",
                s(&config),
                "sync",
                "--repo",
                s(&remote),
                "--now",
                NOW,
                "--confirm-closed",
                "2",
            ])
            .env("GITHUB_TOKEN", "ghp_testtoken_never_logged")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.envs(), ["shop-pr-1", "shop-pr-3", "shop-pr-5"]);
}

/// A responder that records when each request arrived, then answers from a script.
struct Timed {
    arrivals: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    script: Vec<ResponseTemplate>,
}

impl wiremock::Respond for Timed {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut arrivals = self.arrivals.lock().unwrap();
        arrivals.push(std::time::Instant::now());
        let i = (arrivals.len() - 1).min(self.script.len() - 1);
        self.script[i].clone()
    }
}

/// Runs a sync against a listing that answers `script` in turn; returns the gaps between requests.
async fn gaps_for(script: Vec<ResponseTemplate>) -> (Output, Vec<std::time::Duration>) {
    let f = Fixture::with_envs(&[]);
    let server = MockServer::start().await;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls"))
        .respond_with(Timed {
            arrivals: arrivals.clone(),
            script,
        })
        .mount(&server)
        .await;
    let out = f.sync_from(&server).await;
    let arrivals = arrivals.lock().unwrap().clone();
    (out, arrivals.windows(2).map(|w| w[1] - w[0]).collect())
}

#[tokio::test]
async fn retries_are_spaced_as_github_asks_and_never_burst() {
    use std::time::Duration;
    let ok = ResponseTemplate::new(200).set_body_json(vec![open_pr(1)]);
    // A 429 with Retry-After: the next request comes that many seconds later, not before.
    let limited = ResponseTemplate::new(429)
        .insert_header("retry-after", "2")
        .set_body_json(json!({"message": "You have exceeded a secondary rate limit."}));
    let (out, gaps) = gaps_for(vec![limited, ok.clone()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(gaps.len(), 1, "exactly one retry: {gaps:?}");
    assert!(
        gaps[0] >= Duration::from_secs(2) && gaps[0] < Duration::from_millis(2900),
        "{gaps:?}"
    );

    // An exhausted budget: nothing before x-ratelimit-reset.
    let reset = chrono::Utc::now().timestamp() + 2;
    let exhausted = ResponseTemplate::new(403)
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header("x-ratelimit-reset", reset.to_string().as_str())
        .set_body_json(json!({"message": "API rate limit exceeded for installation ID 1."}));
    let (out, gaps) = gaps_for(vec![exhausted, ok.clone()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(chrono::Utc::now().timestamp() >= reset, "retried before the reset");

    // Server errors: exponential backoff with jitter, each wait at least half its step.
    let (out, gaps) = gaps_for(vec![
        ResponseTemplate::new(502),
        ResponseTemplate::new(503),
        ResponseTemplate::new(500),
        ok,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(gaps.len(), 3, "one request per attempt, no library retries: {gaps:?}");
    for (gap, min) in gaps.iter().zip([250, 500, 1000]) {
        assert!(*gap >= Duration::from_millis(min), "{gaps:?}");
    }
}

#[tokio::test]
async fn a_short_retry_after_is_honoured() {
    let f = Fixture::with_envs(&[]);
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"message": "slow down"})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    listing(vec![open_pr(4)]).mount(&server).await;
    let out = f.sync_from(&server).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.envs(), ["shop-pr-4"]);
}

fn app_key() -> String {
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("running openssl");
    assert!(out.status.success());
    text(&out.stdout)
}

#[tokio::test]
async fn a_github_app_exchanges_its_jwt_for_installation_tokens_and_refreshes_them() {
    let f = Fixture::with_envs(&[open_pr(1), open_pr(2)]);
    let server = MockServer::start().await;
    // Tokens that expire within octocrab's refresh margin force a new exchange per request.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
    Mock::given(method("POST"))
        .and(path("/app/installations/42/access_tokens"))
        .and(header_regex("authorization", "^Bearer ey[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"token": "ghs_installation", "expires_at": soon, "permissions": {"pull_requests": "read"}, "repository_selection": "selected"})))
        .expect(3)
        .mount(&server)
        .await;
    let with_token = |r: &Request| {
        r.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.ends_with("ghs_installation"))
    };
    // Page 2 comes as GitHub writes its Link: absolute, in the /repositories/{id} form. It must
    // carry the installation token too (octocrab sends it only to relative URLs).
    let next = format!(
        "<{}/repositories/186853002/pulls?state=open&per_page=100&page=2>; rel=\"next\"",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls"))
        .and(with_token)
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(vec![open_pr(1)])
                .insert_header("link", next.as_str()),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repositories/186853002/pulls"))
        .and(query_param("page", "2"))
        .and(with_token)
        .respond_with(ResponseTemplate::new(200).set_body_json(vec![open_pr(3)]))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls/2"))
        .and(with_token)
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_pr(2)))
        .expect(1)
        .mount(&server)
        .await;
    write_config(
        f.dir.path(),
        &config(&server.uri(), "app_id = 7\ninstallation_id = 42\n"),
    );
    let key = app_key();
    let (dir, remote) = (f.dir.path().to_path_buf(), f.remote.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_prenv"))
            .env("PRENV_IMAGE_CHECK", "false")
            .args([
                "--config",
                s(&dir.join("prenv.toml")),
                "sync",
                "--repo",
                s(&remote),
                "--now",
                NOW,
            ])
            .env_remove("GITHUB_TOKEN")
            .env("PRENV_GITHUB_APP_KEY", key)
            .env("PRENV_LOG", "debug")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(f.envs(), ["shop-pr-1", "shop-pr-3"]);
    let logs = text(&out.stderr);
    assert!(
        !logs.contains("ghs_installation") && !logs.contains("PRIVATE KEY"),
        "a credential was logged"
    );
}

#[tokio::test]
async fn the_periodic_full_resync_catches_what_no_webhook_reported() {
    let f = Fixture::with_envs(&[open_pr(1)]);
    let server = MockServer::start().await;
    // PR 9 opened without a webhook reaching prenv; PR 1 was closed the same way.
    listing(vec![open_pr(9)]).mount(&server).await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_pr(1)))
        .mount(&server)
        .await;
    write_config(f.dir.path(), &config(&server.uri(), ""));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prenv"))
        .env("PRENV_IMAGE_CHECK", "false")
        .args([
            "--config",
            s(&f.dir.path().join("prenv.toml")),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--repo", s(&f.remote), "--resync-secs", "1"])
        .env("PRENV_WEBHOOK_SECRET", "x")
        .env("GITHUB_TOKEN", "ghp_test")
        .env("PRENV_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while f.envs() != ["shop-pr-9"] {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the resync did not converge: {:?}", f.envs());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
