//! The registry adapter against the local fake registry and token service of
//! tests/fakes/registry.rs (which cites the specifications and distribution's handlers it follows).
//! The adapter must say "absent" only for the registry's 404.

#[path = "fakes/registry.rs"]
mod fake_registry;

use fake_registry::*;
use prenv::Error;
use prenv::adapters::registry::{Credentials, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
