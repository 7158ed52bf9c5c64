//! A local fake of a container registry and its token service that behave as the specifications
//! and a real registry do, inconvenient parts included: a public image still needs the token
//! exchange, a token is granted only the access the caller has (an empty grant is not an error at
//! the token service, it is a 401 at the registry), and a tag whose manifest type the client did not
//! accept is answered 404. Shared by the adapter's tests (tests/registry.rs) and the sync flow's
//! (tests/image_wait.rs).
//!
//! Sources of each behaviour, cited where the fake implements it:
//! - OCI distribution spec (opencontainers/distribution-spec @ 967efdc, spec.md, "Checking if content
//!   exists in the registry", endpoint end-3): HEAD /v2/<name>/manifests/<tag> "MUST return 200 OK"
//!   with `Docker-Content-Digest` and `Content-Length` (the manifest's size), or "MUST be 404 Not Found".
//! - Docker token authentication (distribution/distribution @ 0d6b721,
//!   docs/content/spec/auth/token.md), and distribution's implementation of both sides:
//!   registry/auth/token/accesscontroller.go (authChallenge.challengeParams),
//!   registry/auth/htpasswd/access.go (challenge.SetHeaders), registry/handlers/manifests.go
//!   (GetManifest: the Accept negotiation, then `Content-Type`, `Content-Length`,
//!   `Docker-Content-Digest` and `Etag` set from the stored payload; a HEAD is a GET without the body,
//!   registry/handlers/app.go routes both to it), registry/api/errcode/register.go (error codes and
//!   statuses).
//! - ghcr.io: anonymous pulls of public images still go through the token exchange
//!   (CodesWhat/drydock#87: "GHCR requires a token exchange even for public repos"; the token comes
//!   from `https://ghcr.io/token?scope=repository:<name>:pull&service=ghcr.io`, oras-project/oras-java#178),
//!   and Basic credentials sent straight to /v2/ are refused (argoproj-labs/argocd-image-updater#303).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const SERVICE: &str = "registry.test";

/// How the fake registry authenticates clients.
#[derive(Clone)]
pub enum Auth {
    /// Token auth (token.md). `public` repositories grant pull to anyone, anonymous included.
    Token { public: BTreeSet<String> },
    /// htpasswd: Basic on every request (registry/auth/htpasswd/access.go).
    Basic,
}

/// One stored manifest: its media type and, for a Docker manifest list, the platforms it lists.
#[derive(Clone)]
pub struct Manifest {
    media_type: &'static str,
    platforms: Vec<&'static str>,
}

/// The registry's and the token service's state, shared by both endpoints.
pub struct State {
    pub auth: Auth,
    /// user → (password, repositories the user may pull).
    pub users: BTreeMap<String, (String, BTreeSet<String>)>,
    /// (repository, tag) → manifest.
    pub manifests: Mutex<BTreeMap<(String, String), Manifest>>,
    /// Issued token → the repositories it may pull (token.md: the intersection of asked and granted).
    pub tokens: Mutex<BTreeMap<String, BTreeSet<String>>>,
    pub issued: AtomicU64,
    /// `expires_in` of issued tokens; None omits it (token.md: then 60 seconds).
    pub expires_in: Option<u64>,
    /// Answer `access_token` instead of `token` (token.md accepts either).
    pub oauth_field: bool,
    /// When set, every manifest check is answered with this status (an outage, a rate limit).
    pub fail_with: Option<u16>,
    /// The realm announced in challenges; None: this server's own /token.
    pub realm: Option<String>,
    pub base: String,
    /// Set while the test runs: every manifest check is answered with this status (an outage).
    pub outage: Mutex<Option<u16>>,
    /// Manifest checks answered (any outcome).
    pub manifest_checks: AtomicU64,
}

impl State {
    fn new(base: &str, auth: Auth) -> State {
        State {
            auth,
            users: BTreeMap::new(),
            manifests: Mutex::new(BTreeMap::new()),
            outage: Mutex::new(None),
            manifest_checks: AtomicU64::new(0),
            tokens: Mutex::new(BTreeMap::new()),
            issued: AtomicU64::new(0),
            expires_in: Some(300),
            oauth_field: false,
            fail_with: None,
            realm: None,
            base: base.to_string(),
        }
    }

    pub fn user(mut self, name: &str, password: &str, repos: &[&str]) -> State {
        let repos = repos.iter().map(|r| r.to_string()).collect();
        self.users.insert(name.into(), (password.into(), repos));
        self
    }

    pub fn manifest(mut self, repo: &str, tag: &str, media_type: &'static str, platforms: &[&'static str]) -> State {
        let m = Manifest {
            media_type,
            platforms: platforms.to_vec(),
        };
        self.manifests.get_mut().unwrap().insert((repo.into(), tag.into()), m);
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
        self.manifest_checks.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = self.fail_with.or(*self.outage.lock().unwrap()) {
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
        let Some(manifest) = self
            .manifests
            .lock()
            .unwrap()
            .get(&(name.to_string(), tag.to_string()))
            .cloned()
        else {
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
        // The stored payload decides the headers (GetManifest: `Content-Length` is len(p), the
        // digest is the payload's); HEAD sends them without the body.
        let payload =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "tag": tag})).unwrap();
        let digest = {
            use sha2::Digest;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&payload)))
        };
        ResponseTemplate::new(200)
            .insert_header("Content-Type", media_type)
            .insert_header("Docker-Content-Digest", digest.as_str())
            .insert_header("Etag", format!("\"{digest}\"").as_str())
            .set_body_raw(payload, media_type)
    }
}

/// An error answer in the registry's JSON form (registry/api/errcode).
pub fn errors(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({ "errors": [{ "code": code, "message": message }] }))
}

pub struct Endpoint(Arc<State>, fn(&State, &Request) -> ResponseTemplate);

impl Respond for Endpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        (self.1)(&self.0, request)
    }
}

/// A running fake registry: the server, its state, and the image prefix that reaches it.
pub struct Fake {
    pub server: MockServer,
    pub state: Arc<State>,
}

impl Fake {
    pub async fn start(build: impl FnOnce(State) -> State, auth: Auth) -> Fake {
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
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.server.address())
    }

    pub fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// CI pushes `repo:tag` now.
    pub fn push(&self, repo: &str, tag: &str, media_type: &'static str) {
        let m = Manifest {
            media_type,
            platforms: Vec::new(),
        };
        self.state
            .manifests
            .lock()
            .unwrap()
            .insert((repo.into(), tag.into()), m);
    }

    /// Every manifest check is answered `status` until [`Fake::recover`].
    pub fn go_down(&self, status: u16) {
        *self.state.outage.lock().unwrap() = Some(status);
    }

    pub fn recover(&self) {
        *self.state.outage.lock().unwrap() = None;
    }

    /// Manifest checks that passed authentication (a 401 challenge is not counted).
    pub fn manifest_checks(&self) -> u64 {
        self.state.manifest_checks.load(Ordering::SeqCst)
    }
}

pub fn public(names: &[&str]) -> Auth {
    Auth::Token {
        public: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// A registry with no public repository and the private `acme/private:v1`; user `ci` (password
/// `s3cret-pass`) may pull `repos`.
pub async fn private(repos: &[&str]) -> Fake {
    Fake::start(
        |s| {
            s.manifest("acme/private", "v1", OCI_INDEX, &[])
                .user("ci", "s3cret-pass", repos)
        },
        public(&[]),
    )
    .await
}
