//! A container registry, asked one question before an environment moves to a new image: does
//! `image:tag` exist yet? An answer of "no" must mean the registry said so (404); every other
//! outcome — refused credentials, a rate limit, an outage — is an [`Error::Registry`], so a broken
//! registry keeps the previous image instead of passing for "not pushed yet".
//!
//! The question is the OCI distribution spec's "Checking if content exists in the registry"
//! (opencontainers/distribution-spec spec.md): `HEAD /v2/<name>/manifests/<tag>`, 200 if present,
//! 404 if not. Authentication follows the Docker token spec (distribution/distribution
//! docs/content/spec/auth/token.md): a 401 carries `WWW-Authenticate: Bearer realm=…,service=…,scope=…`,
//! the client fetches a token from the realm (anonymously, or with basic credentials) and retries with
//! `Authorization: Bearer`. A registry that challenges with `Basic` (distribution's htpasswd) gets the
//! basic credentials directly.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use regex::Regex;

use crate::core::ports::{ImageFact, ImageFacts, ImageRegistry};
use crate::error::{Error, Result};

/// Every manifest type a pushed tag can be, so the registry never hides one behind content
/// negotiation: buildx pushes a multi-arch image (and any image with provenance) as an OCI index,
/// and distribution answers 404 to a client whose Accept lacks the tag's type
/// (registry/handlers/manifests.go, GetManifest).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// One request (connect, answer, body) may take this long; a registry slower than that is failing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// token.md: "When omitted, this defaults to 60 seconds."
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is dropped this long before it expires, so no request carries a dying one.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// A token answer is a small JSON document (a JWT of a few KiB); anything larger is not one.
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;
/// Where Docker Hub's API lives: `docker.io` names an index, not a host that answers /v2/.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The distribution spec's repository name grammar (spec.md, "Pulling manifests").
static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap());
/// The distribution spec's tag grammar (spec.md, "Pulling manifests").
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());

/// How prenv authenticates to a registry.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No credentials: public images (ghcr.io and Docker Hub still require the token exchange).
    #[default]
    Anonymous,
    /// A user and password or access token, sent only to the token service or to a registry that
    /// challenges with `Basic`, and only over https (or to a loopback address).
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    // Never the password: a Debug print can reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

impl Credentials {
    fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
        }
    }
}

/// An image reference split into where its registry answers and the repository name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `https`, or `http` for a registry on a loopback address (a local registry, a test).
    pub scheme: &'static str,
    /// The registry's host and port, e.g. `ghcr.io` or `127.0.0.1:5000`.
    pub host: String,
    /// The repository, e.g. `acme/shop`.
    pub name: String,
}

impl ImageRef {
    /// Splits `image` (no tag, no digest) the way docker does (distribution/reference's
    /// normalize.go): the first component is a registry host if it has a `.` or a `:` or is
    /// `localhost`; otherwise the image is on Docker Hub, where one-component names are `library/…`.
    pub fn parse(image: &str) -> Result<ImageRef> {
        let bad = |message: String| Error::Registry {
            image: image.to_string(),
            message,
        };
        let last = image.rsplit('/').next().unwrap_or_default();
        if image.contains('@') || last.contains(':') {
            return Err(bad("give the image without a tag or digest (prenv adds the tag)".into()));
        }
        let (host, name) = match image.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), image.to_string()),
        };
        let (host, name) = if host == "docker.io" || host == "index.docker.io" {
            let name = if name.contains('/') {
                name
            } else {
                format!("library/{name}")
            };
            (DOCKER_HUB_API.to_string(), name)
        } else {
            (host, name)
        };
        if !NAME.is_match(&name) {
            return Err(bad(format!(
                "repository name {name:?} is not a valid registry name (lowercase letters, digits, \
                 and . _ - separators between / components)"
            )));
        }
        let scheme = if is_loopback(&host) { "http" } else { "https" };
        Ok(ImageRef { scheme, host, name })
    }
}

/// Whether `host` (with an optional port) is this machine: the only place prenv talks plain http.
fn is_loopback(host: &str) -> bool {
    let bare = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One `WWW-Authenticate` challenge prenv can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        /// RFC 6750's `error` (`insufficient_scope`, `invalid_token`), for the message.
        error: Option<String>,
    },
    Basic,
}

/// The first challenge prenv can answer among `WWW-Authenticate` headers (RFC 7235: a scheme, then
/// comma-separated `key=value` or `key="quoted"` parameters).
fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let mut found = None;
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let Ok(value) = value.to_str() else { continue };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let params = auth_params(rest);
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            if let Some(realm) = get("realm") {
                return Some(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                    error: get("error"),
                });
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            found = Some(Challenge::Basic);
        }
    }
    found
}

/// RFC 7235 auth-params: `a="x, \"y\"", b=z` → [(a, `x, "y"`), (b, z)].
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// RFC 3986 percent-encoding for a query value: everything but the unreserved characters.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An answer: status, headers, and the body (empty for HEAD).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// What has been tried on one manifest check.
#[derive(Default)]
struct Attempt {
    /// The `Authorization` header of the next request.
    auth: Option<String>,
    /// `auth` is a cached token, not yet accepted on this check.
    cached: bool,
    /// A token was fetched for this check: a second 401 is a refusal, not a reason to fetch again.
    fresh_token: bool,
    sent_basic: bool,
}

/// A registry client: one HTTP connection pool, the credentials, and the tokens it was given.
pub struct Registry {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    credentials: Credentials,
    /// Bearer tokens by registry host and scope, with the instant they stop being used.
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Registry {
    /// A client that trusts the system's CA certificates (distroless/static ships them).
    pub fn new(credentials: Credentials) -> Result<Registry> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| Error::Registry {
                image: "(any)".into(),
                message: format!("cannot load the system's CA certificates: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Registry {
            client: Client::builder(TokioExecutor::new()).build(connector),
            credentials,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `image:tag` exists: `Ok(true)` on 200, `Ok(false)` only on the registry's 404;
    /// anything else is an error naming the image and what the registry answered.
    pub async fn manifest_exists(&self, image: &str, tag: &str) -> Result<bool> {
        let shown = format!("{image}:{tag}");
        let fail = |message: String| Error::Registry {
            image: shown.clone(),
            message,
        };
        let r = ImageRef::parse(image)?;
        if !TAG.is_match(tag) {
            return Err(fail(format!(
                "tag {tag:?} is not a valid tag (up to 128 letters, digits, _ . -, not starting with . or -)"
            )));
        }
        let url = format!("{}://{}/v2/{}/manifests/{tag}", r.scheme, r.host, r.name);
        let scope = format!("repository:{}:pull", r.name);
        let auth = self.cached_token(&r.host, &scope);
        let mut attempt = Attempt {
            cached: auth.is_some(),
            auth,
            ..Attempt::default()
        };
        loop {
            let answer = self
                .send(Method::HEAD, &url, attempt.auth.as_deref(), Some(MANIFEST_ACCEPT))
                .await
                .map_err(&fail)?;
            match answer.status {
                StatusCode::OK => return Ok(true),
                StatusCode::NOT_FOUND => return Ok(false),
                StatusCode::UNAUTHORIZED => self
                    .answer_challenge(&r, &scope, &answer.headers, &mut attempt)
                    .await
                    .map_err(&fail)?,
                status => return Err(fail(refusal(status, &answer.headers))),
            }
        }
    }

    /// Picks the credentials for the next try after a 401, or says why there is none. Each way of
    /// authenticating is tried once, so the loop in [`Registry::manifest_exists`] ends.
    async fn answer_challenge(
        &self,
        r: &ImageRef,
        scope: &str,
        headers: &HeaderMap,
        attempt: &mut Attempt,
    ) -> Result<(), String> {
        if attempt.cached {
            // The registry no longer takes the cached token (revoked, or clocks apart): start over.
            self.forget_token(&r.host, scope);
            (attempt.auth, attempt.cached) = (None, false);
            return Ok(());
        }
        match challenge(headers) {
            Some(Challenge::Bearer { error, .. }) if attempt.fresh_token => {
                let why = error.map_or(String::new(), |e| format!(" ({e})"));
                Err(format!(
                    "the registry refused the token it issued{why}: {} may not pull {}; check the registry credentials",
                    self.who(),
                    r.name
                ))
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
                ..
            }) => {
                let token = self
                    .token(&realm, service.as_deref(), asked.as_deref().unwrap_or(scope))
                    .await?;
                attempt.auth = Some(format!("Bearer {}", token.0));
                attempt.fresh_token = true;
                self.remember_token(&r.host, scope, token);
                Ok(())
            }
            Some(Challenge::Basic) => match self.credentials.basic_header() {
                Some(_) if attempt.sent_basic => Err("the registry refused the basic credentials".into()),
                Some(basic) => {
                    // ImageRef::parse chose http only for loopback, so this never leaves the machine.
                    attempt.auth = Some(basic);
                    attempt.sent_basic = true;
                    Ok(())
                }
                None => Err("the registry asks for a user and password (Basic); configure registry credentials".into()),
            },
            None => Err("the registry answered 401 without a Bearer or Basic challenge prenv can answer".into()),
        }
    }

    /// Who is asking, for messages: the user name, never the password.
    fn who(&self) -> String {
        match &self.credentials {
            Credentials::Anonymous => "an anonymous client".into(),
            Credentials::Basic { username, .. } => format!("user {username:?}"),
        }
    }

    /// A token from the realm for `scope` (token.md, "Requesting a Token"), with how long to use it.
    async fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<(String, Duration), String> {
        let uri: Uri = realm
            .parse()
            .map_err(|_| format!("the token realm {realm:?} is not a URL"))?;
        let host = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(host) => {}
            _ => return Err(format!("refusing the token realm {realm}: it is not https")),
        }
        let mut query: Vec<String> = service
            .map(|s| format!("service={}", query_escape(s)))
            .into_iter()
            .collect();
        // One `scope` parameter per space-separated entry of the challenge's scope (token.md).
        query.extend(scope.split_whitespace().map(|s| format!("scope={}", query_escape(s))));
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{}", query.join("&"));
        let basic = self.credentials.basic_header();
        let answer = self.send(Method::GET, &url, basic.as_deref(), None).await?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(format!(
                    "the token service {realm} refused {} ({}); check the registry credentials",
                    self.who(),
                    answer.status.as_u16()
                ));
            }
            status => return Err(format!("the token service {realm} answered {status}")),
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("the token service {realm} answered something other than a token: {e}"))?;
        // token.md: `access_token` is accepted for OAuth 2.0 compatibility; either may be given.
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token service {realm} answered without a token"))?;
        let lifetime = parsed.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok((token, lifetime))
    }

    fn cached_token(&self, host: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (token, until) = tokens.get(&(host.to_string(), scope.to_string()))?;
        (Instant::now() < *until).then(|| format!("Bearer {token}"))
    }

    fn remember_token(&self, host: &str, scope: &str, (token, lifetime): (String, Duration)) {
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert((host.to_string(), scope.to_string()), (token, until));
    }

    fn forget_token(&self, host: &str, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(&(host.to_string(), scope.to_string()));
    }

    /// One request, bounded by [`REQUEST_TIMEOUT`]; the error text names the URL, never a credential.
    async fn send(
        &self,
        method: Method,
        url: &str,
        auth: Option<&str>,
        accept: Option<&str>,
    ) -> Result<Answer, String> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url)
            .header(header::USER_AGENT, concat!("prenv/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("cannot build a request to {url}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{method} {url}: {}", error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{method} {url}: no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
    }
}

/// Environment variables the registry credentials come from (never the config file).
pub const USERNAME_VAR: &str = "PRENV_REGISTRY_USERNAME";
pub const PASSWORD_VAR: &str = "PRENV_REGISTRY_PASSWORD";
/// An access token, sent as the password (ghcr.io, Docker Hub and most registries take one).
pub const TOKEN_VAR: &str = "PRENV_REGISTRY_TOKEN";
/// The GitHub token, used for ghcr.io when no registry credentials are set.
pub const GITHUB_TOKEN_VAR: &str = "GITHUB_TOKEN";
/// The user name sent with a token when none is set: token services check the token, not the name.
const TOKEN_USER: &str = "prenv";
/// One image check (challenge, token, retry) may take this long before it counts as unanswered, so
/// a registry that hangs delays a sync by this much at most, not per image.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Checks in flight at once: a burst of new heads is answered quickly without hammering the registry.
const CONCURRENT_CHECKS: usize = 8;

impl Credentials {
    /// The credentials for `image` from environment variables (`var` looks one up; empty counts as
    /// unset): user and password, a token, or for ghcr.io the GitHub token; else anonymous.
    pub fn from_vars(image: &str, var: impl Fn(&str) -> Option<String>) -> Credentials {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let username = var(USERNAME_VAR).unwrap_or_else(|| TOKEN_USER.to_string());
        let on_ghcr = ImageRef::parse(image).is_ok_and(|r| r.host == "ghcr.io");
        let password = var(PASSWORD_VAR)
            .or_else(|| var(TOKEN_VAR))
            .or_else(|| on_ghcr.then(|| var(GITHUB_TOKEN_VAR)).flatten());
        match password {
            Some(password) => Credentials::Basic { username, password },
            None => Credentials::Anonymous,
        }
    }

    /// [`Credentials::from_vars`] with this process's environment.
    pub fn from_env(image: &str) -> Credentials {
        Credentials::from_vars(image, |name| std::env::var(name).ok())
    }
}

/// The registry as the sync flow asks it ([`ImageRegistry`]): each image checked at most
/// [`CHECK_TIMEOUT`], [`CONCURRENT_CHECKS`] at a time; a failure is [`ImageFact::Unknown`] with the
/// registry's words, never "absent".
pub struct RegistryImages {
    registry: Registry,
    /// A runtime of its own for callers outside one (the command line); inside a runtime's blocking
    /// thread (`prenv serve`'s sync) the checks run on that runtime.
    runtime: Option<tokio::runtime::Runtime>,
}

impl RegistryImages {
    pub fn new(credentials: Credentials) -> Result<RegistryImages> {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => None,
            Err(_) => Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Registry {
                        image: "(any)".into(),
                        message: format!("cannot start the async runtime for registry checks: {e}"),
                    })?,
            ),
        };
        let registry = match &runtime {
            Some(rt) => {
                let _entered = rt.enter();
                Registry::new(credentials)?
            }
            None => Registry::new(credentials)?,
        };
        Ok(RegistryImages { registry, runtime })
    }

    async fn fact(&self, image: &str) -> ImageFact {
        let Some((repository, tag)) = image.rsplit_once(':').filter(|(r, _)| !r.ends_with('/')) else {
            return ImageFact::Unknown(format!("{image} has no tag"));
        };
        let check = self.registry.manifest_exists(repository, tag);
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(Ok(true)) => ImageFact::Present,
            Ok(Ok(false)) => ImageFact::Absent,
            Ok(Err(Error::Registry { message, .. })) => ImageFact::Unknown(message),
            Ok(Err(e)) => ImageFact::Unknown(e.to_string()),
            Err(_) => ImageFact::Unknown(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
        }
    }
}

impl ImageRegistry for RegistryImages {
    fn check(&self, images: &BTreeSet<String>) -> ImageFacts {
        use futures::StreamExt;
        let work = futures::stream::iter(images)
            .map(|image| async move { (image.clone(), self.fact(image).await) })
            .buffer_unordered(CONCURRENT_CHECKS)
            .collect::<ImageFacts>();
        let facts = match &self.runtime {
            Some(rt) => rt.block_on(work),
            // Inside a runtime only on a blocking thread (spawn_blocking), where blocking is allowed.
            None => tokio::runtime::Handle::current().block_on(work),
        };
        for (image, fact) in &facts {
            tracing::info!(image = %image, fact = ?fact, "image check");
        }
        facts
    }
}

/// What a status other than 200, 401 or 404 on a manifest check means, in words.
fn refusal(status: StatusCode, headers: &HeaderMap) -> String {
    match status {
        StatusCode::FORBIDDEN => {
            "the registry answered 403 (DENIED): the credentials may not pull this repository".into()
        }
        StatusCode::TOO_MANY_REQUESTS => {
            let after = headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map_or(String::new(), |v| format!(", retry after {v}"));
            format!("the registry rate-limited the check (429{after})")
        }
        s if s.is_redirection() => {
            format!("the registry answered {s} to a manifest check; prenv follows no redirects there")
        }
        s => format!("the registry answered {s}"),
    }
}

/// An error and its causes, so "connection refused" is not lost behind hyper's "client error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_the_way_docker_splits_them() {
        for (image, scheme, host, name) in [
            ("ghcr.io/acme/shop", "https", "ghcr.io", "acme/shop"),
            (
                "registry.example.com:5000/a/b/c",
                "https",
                "registry.example.com:5000",
                "a/b/c",
            ),
            ("localhost:5000/shop", "http", "localhost:5000", "shop"),
            ("127.0.0.1:40123/acme/shop", "http", "127.0.0.1:40123", "acme/shop"),
            ("[::1]:5000/shop", "http", "[::1]:5000", "shop"),
            ("nginx", "https", DOCKER_HUB_API, "library/nginx"),
            ("acme/shop", "https", DOCKER_HUB_API, "acme/shop"),
            ("docker.io/nginx", "https", DOCKER_HUB_API, "library/nginx"),
        ] {
            let r = ImageRef::parse(image).unwrap();
            assert_eq!(
                (r.scheme, r.host.as_str(), r.name.as_str()),
                (scheme, host, name),
                "{image}"
            );
        }
    }

    #[test]
    fn a_reference_with_a_tag_digest_or_bad_name_is_refused_naming_it() {
        for (image, says) in [
            ("ghcr.io/acme/shop:v1", "without a tag"),
            ("ghcr.io/acme/shop@sha256:abc", "without a tag or digest"),
            ("ghcr.io/Acme/Shop", "not a valid registry name"),
            ("ghcr.io/acme//shop", "not a valid registry name"),
        ] {
            let e = ImageRef::parse(image).unwrap_err().to_string();
            assert!(e.contains(image) && e.contains(says), "{image}: {e}");
        }
    }

    #[test]
    fn challenges_are_read_with_quoted_commas_escapes_and_any_case() {
        let mut headers = HeaderMap::new();
        headers.append(header::WWW_AUTHENTICATE, "Basic realm=\"x\"".parse().unwrap());
        headers.append(
            header::WWW_AUTHENTICATE,
            r#"bearer realm="https://auth.example/token?a=1",service="reg \"one\"",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            challenge(&headers),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token?a=1".into(),
                service: Some("reg \"one\"".into()),
                scope: Some("repository:a/b:pull,push repository:c:pull".into()),
                error: Some("insufficient_scope".into()),
            })
        );
        let mut basic = HeaderMap::new();
        basic.append(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Registry Realm\"".parse().unwrap(),
        );
        assert_eq!(challenge(&basic), Some(Challenge::Basic));
        let mut other = HeaderMap::new();
        other.append(header::WWW_AUTHENTICATE, "Negotiate".parse().unwrap());
        assert_eq!(challenge(&other), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(query_escape("reg.example-1_~"), "reg.example-1_~");
    }

    #[test]
    fn credentials_come_from_the_environment_with_ghcr_falling_back_to_the_github_token() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let shown = |c: Credentials| format!("{c:?}");
        type Vars = &'static [(&'static str, &'static str)];
        let table: [(&str, Vars, &str); 6] = [
            ("ghcr.io/acme/shop", &[], "Anonymous"),
            ("ghcr.io/acme/shop", &[(GITHUB_TOKEN_VAR, "gh")], "Basic(prenv, ***)"),
            ("registry.example.com/shop", &[(GITHUB_TOKEN_VAR, "gh")], "Anonymous"),
            (
                "registry.example.com/shop",
                &[(USERNAME_VAR, "ci"), (PASSWORD_VAR, "pw"), (GITHUB_TOKEN_VAR, "gh")],
                "Basic(ci, ***)",
            ),
            ("registry.example.com/shop", &[(TOKEN_VAR, "t")], "Basic(prenv, ***)"),
            (
                "ghcr.io/acme/shop",
                &[(TOKEN_VAR, " "), (PASSWORD_VAR, "")],
                "Anonymous",
            ),
        ];
        for (image, set, want) in table {
            assert_eq!(shown(Credentials::from_vars(image, vars(set))), want, "{image} {set:?}");
        }
        let Credentials::Basic { password, .. } =
            Credentials::from_vars("ghcr.io/a/b", vars(&[(TOKEN_VAR, "t"), (GITHUB_TOKEN_VAR, "gh")]))
        else {
            panic!("basic credentials")
        };
        assert_eq!(password, "t", "the registry's own token wins over the GitHub token");
    }

    #[test]
    fn credentials_never_print_their_password() {
        let c = Credentials::Basic {
            username: "ci".into(),
            password: "s3cret".into(),
        };
        assert_eq!(format!("{c:?}"), "Basic(ci, ***)");
    }
}
