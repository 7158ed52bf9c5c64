//! The registry adapter against a local fake registry and token service that behave as the
//! specifications and a real registry do, inconvenient parts included: a public image still needs
//! the token exchange, a token is granted only the access the caller has (an empty grant is not an
//! error at the token service, it is a 401 at the registry), and a tag whose manifest type the
//! client did not accept is answered 404. The adapter must say "absent" only for the registry's 404.
//!
//! Sources of each behaviour, cited where the fake implements it:
//! - OCI distribution spec (opencontainers/distribution-spec @ 967efdc, spec.md, "Checking if content
//!   exists in the registry"): HEAD /v2/<name>/manifests/<tag> is 200 with `Docker-Content-Digest`
//!   and `Content-Length`, or 404.
//! - Docker token authentication (distribution/distribution @ 0d6b721,
//!   docs/content/spec/auth/token.md), and distribution's implementation of both sides:
//!   registry/auth/token/accesscontroller.go (authChallenge.challengeParams),
//!   registry/auth/htpasswd/access.go (challenge.SetHeaders), registry/handlers/manifests.go
//!   (GetManifest's Accept negotiation), registry/api/errcode/register.go (error codes and statuses).
//! - ghcr.io: anonymous pulls of public images still go through the token exchange
//!   (CodesWhat/drydock#87: "GHCR requires a token exchange even for public repos"; the token comes
//!   from `https://ghcr.io/token?scope=repository:<name>:pull&service=ghcr.io`, oras-project/oras-java#178),
//!   and Basic credentials sent straight to /v2/ are refused (argoproj-labs/argocd-image-updater#303).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use prenv::Error;
use prenv::adapters::registry::{Credentials, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const SERVICE: &str = "registry.test";

/// How the fake registry authenticates clients.
#[derive(Clone)]
enum Auth {
    /// Token auth (token.md). `public` repositories grant pull to anyone, anonymous included.
    Token { public: BTreeSet<String> },
    /// htpasswd: Basic on every request (registry/auth/htpasswd/access.go).
    Basic,
}

/// One stored manifest: its media type and, for a Docker manifest list, the platforms it lists.
#[derive(Clone)]
struct Manifest {
    media_type: &'static str,
    platforms: Vec<&'static str>,
}

/// The registry's and the token service's state, shared by both endpoints.
struct State {
    auth: Auth,
    /// user → (password, repositories the user may pull).
    users: BTreeMap<String, (String, BTreeSet<String>)>,
    /// (repository, tag) → manifest.
    manifests: BTreeMap<(String, String), Manifest>,
    /// Issued token → the repositories it may pull (token.md: the intersection of asked and granted).
    tokens: Mutex<BTreeMap<String, BTreeSet<String>>>,
    issued: AtomicU64,
    /// `expires_in` of issued tokens; None omits it (token.md: then 60 seconds).
    expires_in: Option<u64>,
    /// Answer `access_token` instead of `token` (token.md accepts either).
    oauth_field: bool,
    /// When set, every manifest check is answered with this status (an outage, a rate limit).
    fail_with: Option<u16>,
    /// The realm announced in challenges; None: this server's own /token.
    realm: Option<String>,
    base: String,
}

impl State {
    fn new(base: &str, auth: Auth) -> State {
        State {
            auth,
            users: BTreeMap::new(),
            manifests: BTreeMap::new(),
            tokens: Mutex::new(BTreeMap::new()),
            issued: AtomicU64::new(0),
            expires_in: Some(300),
            oauth_field: false,
            fail_with: None,
            realm: None,
            base: base.to_string(),
        }
    }

    fn user(mut self, name: &str, password: &str, repos: &[&str]) -> State {
        let repos = repos.iter().map(|r| r.to_string()).collect();
        self.users.insert(name.into(), (password.into(), repos));
        self
    }

    fn manifest(mut self, repo: &str, tag: &str, media_type: &'static str, platforms: &[&'static str]) -> State {
        let m = Manifest {
            media_type,
            platforms: platforms.to_vec(),
        };
        self.manifests.insert((repo.into(), tag.into()), m);
        self
    }

    /// The (user, password) of a `Basic` Authorization header, if it is one.
    fn basic(request: &Request) -> Option<(String, String)> {
        let value = request.headers.get("authorization")?.to_str().ok()?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.strip_prefix("Basic ")?)
            .ok()?;
        let (user, password) = String::from_utf8(decoded)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.into(), p.into()))?;
        Some((user, password))
    }

    fn known_user(&self, user: &str, password: &str) -> Option<&BTreeSet<String>> {
        self.users
            .get(user)
            .filter(|(p, _)| p == password)
            .map(|(_, repos)| repos)
    }

    /// GET /token?service=…&scope=… (token.md, "Requesting a Token").
    fn issue_token(&self, request: &Request) -> ResponseTemplate {
        let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        assert!(
            pairs.contains(&("service".into(), SERVICE.into())),
            "the client passes the challenge's service: {pairs:?}"
        );
        // "If an attempt to authenticate to the token server fails, the token server should return
        // a 401 Unauthorized response" (token.md); no credentials at all is an anonymous client.
        let mine = match State::basic(request) {
            Some((user, password)) => match self.known_user(&user, &password) {
                Some(repos) => repos.clone(),
                None => return errors(401, "UNAUTHORIZED", "invalid username or password"),
            },
            None => BTreeSet::new(),
        };
        let Auth::Token { public } = &self.auth else {
            unreachable!("only token auth has a token service")
        };
        // "It is this intersected set of access which is placed in the returned token"; a subset,
        // even an empty one, "must not be considered an error" (token.md).
        let mut granted = BTreeSet::new();
        for (_, scope) in pairs.iter().filter(|(k, _)| k == "scope") {
            let parts: Vec<&str> = scope.split(':').collect();
            if let ["repository", name, actions] = parts.as_slice()
                && actions.split(',').any(|a| a == "pull")
                && (public.contains(*name) || mine.contains(*name))
            {
                granted.insert(name.to_string());
            }
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("token-{n}");
        self.tokens.lock().unwrap().insert(token.clone(), granted);
        let field = if self.oauth_field { "access_token" } else { "token" };
        let mut body = serde_json::json!({ field: token, "issued_at": "2026-12-02T00:00:00Z" });
        if let Some(e) = self.expires_in {
            body["expires_in"] = e.into();
        }
        ResponseTemplate::new(200).set_body_json(body)
    }

    /// The 401 of registry/auth/token/accesscontroller.go: `Bearer realm,service,scope` and, for a
    /// token that was sent, `error="invalid_token"` or `error="insufficient_scope"`.
    fn bearer_challenge(&self, name: &str, error: Option<&str>) -> ResponseTemplate {
        let realm = self.realm.clone().unwrap_or_else(|| format!("{}/token", self.base));
        let mut value = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"repository:{name}:pull\"");
        if let Some(e) = error {
            value.push_str(&format!(",error=\"{e}\""));
        }
        errors(401, "UNAUTHORIZED", "authentication required").insert_header("WWW-Authenticate", value)
    }

    /// The access check in front of every /v2/ request: None lets the request through.
    fn refuse(&self, request: &Request, name: &str) -> Option<ResponseTemplate> {
        let header = request.headers.get("authorization").and_then(|v| v.to_str().ok());
        match &self.auth {
            Auth::Basic => match State::basic(request) {
                Some((u, p)) if self.known_user(&u, &p).is_some_and(|repos| repos.contains(name)) => None,
                _ => Some(
                    errors(401, "UNAUTHORIZED", "authentication required")
                        .insert_header("WWW-Authenticate", "Basic realm=\"Registry Realm\""),
                ),
            },
            Auth::Token { .. } => {
                // Basic straight to /v2/ is not a token (argocd-image-updater#303 on ghcr.io).
                let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
                    return Some(self.bearer_challenge(name, None));
                };
                match self.tokens.lock().unwrap().get(token) {
                    None => Some(self.bearer_challenge(name, Some("invalid_token"))),
                    Some(granted) if !granted.contains(name) => {
                        Some(self.bearer_challenge(name, Some("insufficient_scope")))
                    }
                    Some(_) => None,
                }
            }
        }
    }

    /// HEAD /v2/<name>/manifests/<tag>: registry/handlers/manifests.go, GetManifest.
    fn head_manifest(&self, request: &Request) -> ResponseTemplate {
        let p = request.url.path();
        let (name, tag) = p
            .strip_prefix("/v2/")
            .and_then(|rest| rest.rsplit_once("/manifests/"))
            .expect("the route matched /v2/<name>/manifests/<tag>");
        if let Some(refused) = self.refuse(request, name) {
            return refused;
        }
        if let Some(status) = self.fail_with {
            return errors(status, "UNKNOWN", "unknown error").insert_header("Retry-After", "30");
        }
        // "this parsing of Accept headers is not quite as full-featured": split on commas, drop parameters.
        let accepted: BTreeSet<String> = request
            .headers
            .get_all("accept")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|m| m.split(';').next().unwrap_or_default().trim().to_string())
            .collect();
        let Some(manifest) = self.manifests.get(&(name.to_string(), tag.to_string())) else {
            return ResponseTemplate::new(404); // MANIFEST_UNKNOWN, 404; a HEAD answer has no body
        };
        let media_type = match manifest.media_type {
            // "OCI manifest found, but accept header does not support OCI manifests", and the same
            // for indexes: both are MANIFEST_UNKNOWN, a 404.
            t @ (OCI_MANIFEST | OCI_INDEX) if !accepted.contains(t) => return ResponseTemplate::new(404),
            // An old client gets the linux/amd64 entry of a manifest list instead, or a 404 if there
            // is none; and that entry only if it accepts schema 2.
            DOCKER_LIST if !accepted.contains(DOCKER_LIST) => {
                if !manifest.platforms.contains(&"linux/amd64") {
                    return ResponseTemplate::new(404);
                }
                if !accepted.contains(DOCKER_MANIFEST) {
                    return ResponseTemplate::new(400); // MANIFEST_INVALID: "Schema 2 manifest not supported by client"
                }
                DOCKER_MANIFEST
            }
            t => t,
        };
        let digest = format!("sha256:{}", "ab".repeat(32));
        ResponseTemplate::new(200)
            .insert_header("Content-Type", media_type)
            .insert_header("Docker-Content-Digest", digest.as_str())
            .insert_header("Etag", format!("\"{digest}\"").as_str())
    }
}

/// An error answer in the registry's JSON form (registry/api/errcode).
fn errors(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({ "errors": [{ "code": code, "message": message }] }))
}

struct Endpoint(Arc<State>, fn(&State, &Request) -> ResponseTemplate);

impl Respond for Endpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        (self.1)(&self.0, request)
    }
}

/// A running fake registry: the server, its state, and the image prefix that reaches it.
struct Fake {
    server: MockServer,
    state: Arc<State>,
}

impl Fake {
    async fn start(build: impl FnOnce(State) -> State, auth: Auth) -> Fake {
        let server = MockServer::start().await;
        let state = Arc::new(build(State::new(&server.uri(), auth)));
        Mock::given(method("HEAD"))
            .and(path_regex(r"^/v2/.+/manifests/[^/]+$"))
            .respond_with(Endpoint(state.clone(), State::head_manifest))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/token"))
            .respond_with(Endpoint(state.clone(), State::issue_token))
            .mount(&server)
            .await;
        Fake { server, state }
    }

    /// `acme/shop` on this registry, as an image reference prenv is configured with.
    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.server.address())
    }

    fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }
}

fn public(names: &[&str]) -> Auth {
    Auth::Token {
        public: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// A registry with no public repository and the private `acme/private:v1`; user `ci` (password
/// `s3cret-pass`) may pull `repos`.
async fn private(repos: &[&str]) -> Fake {
    Fake::start(
        |s| {
            s.manifest("acme/private", "v1", OCI_INDEX, &[])
                .user("ci", "s3cret-pass", repos)
        },
        public(&[]),
    )
    .await
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: user.into(),
        password: password.into(),
    }
}

fn registry(credentials: Credentials) -> Registry {
    Registry::new(credentials).expect("a registry client")
}

/// The message of a registry error; any other outcome fails the test.
fn refusal(outcome: Result<bool, Error>) -> String {
    match outcome {
        Err(e @ Error::Registry { .. }) => e.to_string(),
        other => panic!("expected a registry error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_public_image_is_checked_anonymously_through_the_token_exchange_and_the_token_is_reused() {
    let fake = Fake::start(
        |s| s.manifest("acme/shop", "pr-7-abc1234", OCI_INDEX, &[]),
        public(&["acme/shop"]),
    )
    .await;
    let registry = registry(Credentials::Anonymous);
    let image = fake.image("acme/shop");
    assert!(registry.manifest_exists(&image, "pr-7-abc1234").await.unwrap());
    assert!(
        !registry.manifest_exists(&image, "pr-7-def5678").await.unwrap(),
        "404 is absent"
    );
    assert_eq!(fake.tokens_issued(), 1, "the second check reuses the token");
}

#[tokio::test]
async fn every_manifest_type_a_push_can_produce_is_found_because_the_accept_header_names_it() {
    let fake = Fake::start(
        |s| {
            s.manifest("acme/shop", "index", OCI_INDEX, &[])
                .manifest("acme/shop", "oci", OCI_MANIFEST, &[])
                .manifest("acme/shop", "list-arm-only", DOCKER_LIST, &["linux/arm64"])
                .manifest("acme/shop", "docker", DOCKER_MANIFEST, &[])
        },
        public(&["acme/shop"]),
    )
    .await;
    let registry = registry(Credentials::Anonymous);
    for tag in ["index", "oci", "list-arm-only", "docker"] {
        assert!(
            registry.manifest_exists(&fake.image("acme/shop"), tag).await.unwrap(),
            "{tag}"
        );
    }
    // The fake's negotiation is real: without those Accept entries the same tags look absent, which
    // is what a client sending only the default Accept would wrongly conclude.
    let token = format!("token-{}", fake.tokens_issued());
    for tag in ["index", "oci", "list-arm-only"] {
        let status = raw_head(
            &fake,
            &format!("/v2/acme/shop/manifests/{tag}"),
            &token,
            DOCKER_MANIFEST,
        )
        .await;
        assert_eq!(status, 404, "{tag} without its media type in Accept");
    }
}

#[tokio::test]
async fn a_private_image_is_found_with_basic_credentials_given_to_the_token_service() {
    let fake = private(&["acme/private"]).await;
    let image = fake.image("acme/private");
    assert!(
        registry(basic("ci", "s3cret-pass"))
            .manifest_exists(&image, "v1")
            .await
            .unwrap()
    );
    assert!(
        !registry(basic("ci", "s3cret-pass"))
            .manifest_exists(&image, "v2")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_image_the_caller_may_not_pull_is_an_error_never_absent() {
    let fake = private(&[]).await;
    let image = fake.image("acme/private");
    // The token service grants an empty set without complaint; the registry then says insufficient_scope.
    let anonymous = refusal(registry(Credentials::Anonymous).manifest_exists(&image, "v2").await);
    assert!(
        anonymous.contains(&format!("{image}:v2"))
            && anonymous.contains("insufficient_scope")
            && anonymous.contains("an anonymous client may not pull acme/private"),
        "{anonymous}"
    );
    let user = refusal(registry(basic("ci", "s3cret-pass")).manifest_exists(&image, "v1").await);
    assert!(user.contains("user \"ci\" may not pull"), "{user}");
    assert!(!user.contains("s3cret-pass"), "no password in errors: {user}");
}

#[tokio::test]
async fn credentials_the_token_service_rejects_are_named_without_the_password() {
    let fake = private(&["acme/private"]).await;
    let message = refusal(
        registry(basic("ci", "wrong-password"))
            .manifest_exists(&fake.image("acme/private"), "v1")
            .await,
    );
    assert!(message.contains("refused user \"ci\" (401)"), "{message}");
    assert!(!message.contains("wrong-password"), "{message}");
}

#[tokio::test]
async fn a_registry_that_asks_for_basic_auth_gets_the_credentials_directly() {
    let fake = Fake::start(
        |s| {
            s.manifest("acme/shop", "v1", DOCKER_MANIFEST, &[])
                .user("ci", "pw", &["acme/shop"])
        },
        Auth::Basic,
    )
    .await;
    let image = fake.image("acme/shop");
    assert!(registry(basic("ci", "pw")).manifest_exists(&image, "v1").await.unwrap());
    assert!(!registry(basic("ci", "pw")).manifest_exists(&image, "v9").await.unwrap());
    let anonymous = refusal(registry(Credentials::Anonymous).manifest_exists(&image, "v1").await);
    assert!(anonymous.contains("asks for a user and password"), "{anonymous}");
    let wrong = refusal(registry(basic("ci", "nope")).manifest_exists(&image, "v1").await);
    assert!(wrong.contains("refused the basic credentials"), "{wrong}");
    assert_eq!(fake.tokens_issued(), 0, "a Basic registry has no token service");
}

#[tokio::test]
async fn an_outage_a_rate_limit_or_a_denial_is_an_error_naming_the_status() {
    for (status, says) in [
        (500, "answered 500"),
        (503, "answered 503"),
        (429, "rate-limited the check (429, retry after 30)"),
        (403, "answered 403 (DENIED)"),
    ] {
        let fake = Fake::start(
            |s| State {
                fail_with: Some(status),
                ..s.manifest("acme/shop", "v1", OCI_INDEX, &[])
            },
            public(&["acme/shop"]),
        )
        .await;
        let message = refusal(
            registry(Credentials::Anonymous)
                .manifest_exists(&fake.image("acme/shop"), "v1")
                .await,
        );
        assert!(message.contains(says), "{status}: {message}");
    }
}

#[tokio::test]
async fn an_oauth_style_token_without_a_lifetime_works_and_a_revoked_token_is_replaced() {
    let fake = Fake::start(
        |s| State {
            oauth_field: true,
            expires_in: None,
            ..s.manifest("acme/shop", "v1", OCI_INDEX, &[])
        },
        public(&["acme/shop"]),
    )
    .await;
    let registry = registry(Credentials::Anonymous);
    let image = fake.image("acme/shop");
    assert!(registry.manifest_exists(&image, "v1").await.unwrap());
    // The registry forgets every token (a restart with a new signing key): invalid_token, then a new one.
    fake.state.tokens.lock().unwrap().clear();
    assert!(registry.manifest_exists(&image, "v1").await.unwrap());
    assert_eq!(fake.tokens_issued(), 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_not_reused() {
    let fake = Fake::start(
        |s| State {
            expires_in: Some(5),
            ..s.manifest("acme/shop", "v1", OCI_INDEX, &[])
        },
        public(&["acme/shop"]),
    )
    .await;
    let registry = registry(Credentials::Anonymous);
    for _ in 0..2 {
        assert!(registry.manifest_exists(&fake.image("acme/shop"), "v1").await.unwrap());
    }
    assert_eq!(fake.tokens_issued(), 2, "a 5-second token is inside the safety margin");
}

#[tokio::test]
async fn a_token_realm_over_plain_http_elsewhere_is_refused_before_credentials_leave() {
    let fake = Fake::start(
        |s| State {
            realm: Some("http://auth.example.com/token".into()),
            ..s.manifest("acme/shop", "v1", OCI_INDEX, &[])
        },
        public(&["acme/shop"]),
    )
    .await;
    let message = refusal(
        registry(basic("ci", "pw"))
            .manifest_exists(&fake.image("acme/shop"), "v1")
            .await,
    );
    assert!(
        message.contains("refusing the token realm http://auth.example.com/token"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_and_bad_references_are_errors_naming_the_image() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let registry = registry(Credentials::Anonymous);
    let image = format!("{addr}/acme/shop");
    let message = refusal(registry.manifest_exists(&image, "v1").await);
    assert!(
        message.contains(&format!("{image}:v1")) && message.contains("HEAD http://"),
        "{message}"
    );
    for (image, tag, says) in [
        ("ghcr.io/acme/shop:v1", "v2", "without a tag"),
        ("ghcr.io/acme/shop", "-bad", "not a valid tag"),
        ("ghcr.io/acme/shop", &"x".repeat(129), "not a valid tag"),
    ] {
        let message = refusal(registry.manifest_exists(image, tag).await);
        assert!(message.contains(says), "{image}:{tag}: {message}");
    }
}

/// A HEAD request by hand, with exactly the given Accept and bearer token: the status line's code.
async fn raw_head(fake: &Fake, path: &str, token: &str, accept: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(fake.server.address()).await.unwrap();
    let request = format!(
        "HEAD {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n",
        fake.server.address()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {answer}"))
}
