//! Who may cause a restart: OIDC tokens checked against a local identity provider, static
//! tokens from a private file, and the explicit `none` mode, all through the router.
//!
//! Every refused request must stop at authentication: the systemd fake sees no restart and
//! the Galaxy stand-in no connection. The identity provider counts the requests it gets, so
//! that caching and refetching of its keys can be asserted without looking at a clock.

mod fakes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;

use fakes::{send, send_any, Answer, FakeSystemd, Galaxy, Reply, PATIENCE};
use galaxyctl_api::auth::Authenticator;
use galaxyctl_api::config::{ConfigError, Settings};

const STARTUP: &str = "/galaxyctl_api/v1.0/galaxy-startup";
const RESTART: &str = "/galaxyctl_api/v1.0/restart";
const INFO: &str = "/galaxyctl_api/v1.0/info";
const STATUS: &str = "/galaxyctl_api/v1.0/status";
const OPERATIONS: &str = "/galaxyctl_api/v1.0/operations";

/// Where the provider lives under its origin, as Keycloak's realms do.
const REALM: &str = "/realms/laniakea";

const RSA_A: &str = include_str!("fixtures/oidc/rsa-a.key.pem");
const RSA_B: &str = include_str!("fixtures/oidc/rsa-b.key.pem");
const RSA_C: &str = include_str!("fixtures/oidc/rsa-c.key.pem");
const EC: &str = include_str!("fixtures/oidc/ec-p256.key.pem");

fn jwk_a() -> Value {
    serde_json::from_str(include_str!("fixtures/oidc/rsa-a.jwk.json")).unwrap()
}

fn jwk_c() -> Value {
    serde_json::from_str(include_str!("fixtures/oidc/rsa-c.jwk.json")).unwrap()
}

fn jwk_ec() -> Value {
    serde_json::from_str(include_str!("fixtures/oidc/ec-p256.jwk.json")).unwrap()
}

// --- the identity provider -------------------------------------------------------------------

/// How the provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Serve,
    /// 500 to everything.
    Fail,
    /// Accepts requests and never answers.
    Hang,
}

/// A local OIDC provider: a discovery document pointing at a key set it can change.
#[derive(Clone)]
struct Idp {
    shared: Arc<IdpShared>,
}

struct IdpShared {
    addr: SocketAddr,
    keys: Mutex<Vec<Value>>,
    behaviour: Mutex<Behaviour>,
    discovery: AtomicUsize,
    jwks: AtomicUsize,
}

impl Idp {
    /// A provider that listens and publishes `keys`.
    async fn start(keys: Vec<Value>) -> Idp {
        let idp = Idp::closed(keys);
        idp.open().await;
        idp
    }

    /// A provider whose port nothing listens on until [`Idp::open`].
    fn closed(keys: Vec<Value>) -> Idp {
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = reserved
            .local_addr()
            .expect("a bound socket has an address");
        drop(reserved);
        Idp {
            shared: Arc::new(IdpShared {
                addr,
                keys: Mutex::new(keys),
                behaviour: Mutex::new(Behaviour::Serve),
                discovery: AtomicUsize::new(0),
                jwks: AtomicUsize::new(0),
            }),
        }
    }

    async fn open(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
        socket.set_reuseaddr(true).expect("set SO_REUSEADDR");
        socket
            .bind(self.shared.addr)
            .expect("bind the provider's port");
        let listener = socket.listen(128).expect("listen");
        let app = Router::new()
            .route(
                &format!("{REALM}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(&format!("{REALM}/protocol/openid-connect/certs"), get(jwks))
            .with_state(self.shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }

    fn issuer(&self) -> String {
        format!("http://{}{REALM}", self.shared.addr)
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.shared.keys.lock().unwrap() = keys;
    }

    fn behave(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    fn discovery_requests(&self) -> usize {
        self.shared.discovery.load(Ordering::SeqCst)
    }

    fn jwks_requests(&self) -> usize {
        self.shared.jwks.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.discovery_requests() + self.jwks_requests()
    }
}

async fn misbehave(shared: &IdpShared) -> Option<Response> {
    let behaviour = *shared.behaviour.lock().unwrap();
    match behaviour {
        Behaviour::Serve => None,
        Behaviour::Fail => Some(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Behaviour::Hang => std::future::pending().await,
    }
}

async fn discovery(State(shared): State<Arc<IdpShared>>) -> Response {
    shared.discovery.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = misbehave(&shared).await {
        return response;
    }
    let base = format!("http://{}{REALM}", shared.addr);
    Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/protocol/openid-connect/certs"),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<IdpShared>>) -> Response {
    shared.jwks.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = misbehave(&shared).await {
        return response;
    }
    let keys = shared.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

// --- tokens ----------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The claims of a token the dashboard would send for `sub`.
fn claims(issuer: &str, sub: &str) -> Value {
    let now = now();
    json!({ "iss": issuer, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + 600 })
}

fn sign(alg: Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("the fixture key is a PKCS#8 PEM");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("sign the test token")
}

/// A token signed with the provider's key A.
fn token_a(claims: &Value) -> String {
    sign(Algorithm::RS256, RSA_A, Some("key-a"), claims)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token put together by hand: `header.payload.signature`.
fn handmade(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// An HS256 token whose secret is the provider's published RSA modulus: what a verifier that
/// let the token choose the algorithm would accept.
fn hs256_with_public_key(claims: &Value) -> String {
    let secret = jwk_a()["n"].as_str().unwrap().to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("key-a".to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

// --- the service -----------------------------------------------------------------------------

fn settings(galaxy: &Galaxy, auth: &str) -> Settings {
    let text = format!(
        r#"
bus = "system"

[galaxy]
units = ["galaxy.service"]
urls = ["{url}"]

[probe]
connect_timeout = "200ms"
timeout = "2s"
interval = "20ms"

[recovery]
readiness_deadline = "5s"
answer_budget = "10s"

[auth]
{auth}
"#,
        url = galaxy.url(),
    );
    Settings::parse(&text, Path::new("auth-test.toml")).expect("the test configuration is valid")
}

struct TestApp {
    router: Router,
    galaxy: Galaxy,
    systemd: Arc<FakeSystemd>,
}

impl TestApp {
    fn new(galaxy: &Galaxy, auth: &str) -> TestApp {
        let settings = settings(galaxy, auth);
        let systemd = FakeSystemd::new(galaxy);
        let router = fakes::router(settings, &systemd);
        TestApp {
            router,
            galaxy: galaxy.clone(),
            systemd,
        }
    }

    /// An app trusting `idp`, with `extra` lines in `[auth]`.
    fn oidc(galaxy: &Galaxy, idp: &Idp, extra: &str) -> TestApp {
        let auth = format!(
            "mode = \"oidc\"\nissuers = [\"{}\"]\nleeway = \"60s\"\n{extra}",
            idp.issuer()
        );
        TestApp::new(galaxy, &auth)
    }

    /// POSTs the dashboard's request with `authorization` as the header's value, if any.
    async fn post(&self, authorization: Option<&str>) -> Reply {
        let mut request = Request::post(STARTUP).header(header::CONTENT_TYPE, "application/json");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = json!({ "endpoint": self.galaxy.url() }).to_string();
        send(&self.router, request.body(Body::from(body)).unwrap()).await
    }

    async fn post_bearer(&self, token: &str) -> Reply {
        self.post(Some(&format!("Bearer {token}"))).await
    }

    /// Nothing got past authentication: no restart, no probe.
    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            self.galaxy.connections(),
            0,
            "{case}: the Galaxy stand-in was connected to"
        );
        assert!(
            self.systemd.restarts().is_empty(),
            "{case}: restarts {:?}",
            self.systemd.restarts()
        );
    }
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error.code>")
    }

    fn www_authenticate(&self) -> &str {
        self.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

// --- oidc ------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_rs256_and_es256_tokens_reach_galaxy() {
    let idp = Idp::start(vec![jwk_a(), jwk_ec()]).await;
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::oidc(&galaxy, &idp, "");

    let rs256 = token_a(&claims(&idp.issuer(), "alice"));
    let es256 = sign(
        Algorithm::ES256,
        EC,
        Some("key-ec"),
        &claims(&idp.issuer(), "alice"),
    );
    for (name, token) in [("RS256", rs256), ("ES256", es256)] {
        let reply = app.post_bearer(&token).await;

        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text);
        assert_eq!(reply.body["galaxy"], "online", "{name}");
        assert!(!reply.text.contains(&token), "{name}: the token is echoed");
    }
    assert_eq!(galaxy.requests(), 2);
    assert!(app.systemd.restarts().is_empty());
}

#[tokio::test]
async fn token_within_the_leeway_and_issuer_with_trailing_slash_are_accepted() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::oidc(&galaxy, &idp, "");

    let mut expired_a_little = claims(&idp.issuer(), "alice");
    expired_a_little["exp"] = json!(now() - 20);
    let slash = claims(&format!("{}/", idp.issuer()), "alice");
    for (name, claims) in [
        ("within leeway", expired_a_little),
        ("trailing slash", slash),
    ] {
        let reply = app.post_bearer(&token_a(&claims)).await;

        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text);
    }
}

#[tokio::test]
async fn no_credentials_is_401_unauthenticated_with_a_bearer_challenge() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, "");
    let valid = token_a(&claims(&idp.issuer(), "alice"));

    for (name, authorization) in [
        ("no Authorization header", None),
        ("empty header", Some(String::new())),
        ("scheme only", Some("Bearer".to_owned())),
        ("scheme and blank", Some("Bearer    ".to_owned())),
        ("Basic scheme", Some("Basic YWxpY2U6c2VjcmV0".to_owned())),
        ("token without a scheme", Some(valid.clone())),
        ("scheme misspelt", Some(format!("Bearr {valid}"))),
    ] {
        let reply = app.post(authorization.as_deref()).await;

        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "unauthenticated", "{name}");
        assert_eq!(reply.body["galaxy"], "unknown", "{name}");
        assert!(
            reply.www_authenticate().starts_with("Bearer "),
            "{name}: WWW-Authenticate {:?}",
            reply.www_authenticate()
        );
        assert!(!reply.text.contains(&valid), "{name}: the token is echoed");
        app.assert_untouched(name);
    }
    // Nothing to check, so nothing was asked of the provider.
    assert_eq!(idp.requests(), 0);
}

#[tokio::test]
async fn tokens_refused_before_the_provider_is_asked() {
    // A token that is not a JWT, names an algorithm without a public key or an issuer that is
    // not trusted costs the provider nothing: forged tokens cannot make the service fetch.
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, "");
    let issuer = idp.issuer();
    let good = claims(&issuer, "alice");

    let mut no_iss = good.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let untrusted = claims("https://idp.evil.example/realms/laniakea", "alice");
    let look_alike = claims(&format!("{issuer}x"), "alice");
    let iss_array = {
        let mut claims = good.clone();
        claims["iss"] = json!([issuer]);
        claims
    };
    let alg_none = handmade(&json!({ "alg": "none", "typ": "JWT" }), &good, b"");
    let alg_none_kid = handmade(
        &json!({ "alg": "none", "kid": "key-a" }),
        &good,
        b"signature",
    );
    let cases = [
        ("garbage", "garbage".to_owned()),
        ("three dots of garbage", "a.b.c".to_owned()),
        ("header not JSON", format!("{}.e30.", b64(b"not json"))),
        ("alg none", alg_none),
        ("alg none with kid", alg_none_kid),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key(&good),
        ),
        ("no iss", token_a(&no_iss)),
        ("untrusted iss", token_a(&untrusted)),
        ("look-alike iss", token_a(&look_alike)),
        ("iss as an array", token_a(&iss_array)),
    ];
    for (name, token) in &cases {
        let reply = app.post_bearer(token).await;

        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "invalid_token", "{name}");
        assert!(
            reply.www_authenticate().contains("invalid_token"),
            "{name}: WWW-Authenticate {:?}",
            reply.www_authenticate()
        );
        assert!(!reply.text.contains(token.as_str()), "{name}: token echoed");
        app.assert_untouched(name);
    }
    assert_eq!(idp.requests(), 0, "the provider was asked");
}

#[tokio::test]
async fn forged_expired_and_premature_tokens_are_401_invalid_token() {
    let idp = Idp::start(vec![jwk_a(), jwk_ec()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, "");
    let issuer = idp.issuer();
    let good = claims(&issuer, "alice");
    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    let without = |key: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(key);
        claims
    };

    // A genuine token for alice, its payload then swapped for mallory's.
    let genuine = token_a(&good);
    let forged_payload = {
        let parts: Vec<&str> = genuine.split('.').collect();
        let payload = b64(with("sub", json!("mallory")).to_string().as_bytes());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let unsigned = {
        let parts: Vec<&str> = genuine.split('.').collect();
        format!("{}.{}.", parts[0], parts[1])
    };
    let cases = [
        (
            "signed by another key with the same kid",
            sign(Algorithm::RS256, RSA_B, Some("key-a"), &good),
        ),
        ("payload swapped", forged_payload),
        ("signature stripped", unsigned),
        (
            "signed by a key the provider does not publish",
            sign(Algorithm::RS256, RSA_C, Some("key-c"), &good),
        ),
        (
            "RSA key named for the EC key",
            sign(Algorithm::RS256, RSA_A, Some("key-ec"), &good),
        ),
        (
            "ES256 header over the RSA key id",
            sign(Algorithm::ES256, EC, Some("key-a"), &good),
        ),
        // Two keys are published, so a token must say which one.
        ("no kid", sign(Algorithm::RS256, RSA_A, None, &good)),
        (
            "expired beyond the leeway",
            token_a(&with("exp", json!(now() - 3600))),
        ),
        (
            "nbf in the future",
            token_a(&with("nbf", json!(now() + 3600))),
        ),
        ("no exp", token_a(&without("exp"))),
        ("exp not a number", token_a(&with("exp", json!("tomorrow")))),
    ];
    for (name, token) in &cases {
        let reply = app.post_bearer(token).await;

        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "invalid_token", "{name}");
        assert_eq!(reply.body["galaxy"], "unknown", "{name}");
        assert!(
            reply.www_authenticate().starts_with("Bearer "),
            "{name}: WWW-Authenticate {:?}",
            reply.www_authenticate()
        );
        assert!(!reply.text.contains(token.as_str()), "{name}: token echoed");
        app.assert_untouched(name);
    }

    // The genuine token itself goes through: the refusals above were for what was changed.
    galaxy.set(Answer::Ok);
    let reply = app.post_bearer(&genuine).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn subject_not_in_the_allow_list_is_403_forbidden() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, r#"subjects = ["alice"]"#);
    let issuer = idp.issuer();
    let mut no_sub = claims(&issuer, "alice");
    no_sub.as_object_mut().unwrap().remove("sub");

    for (name, claims) in [
        ("another subject", claims(&issuer, "mallory")),
        ("a prefix of the subject", claims(&issuer, "alic")),
        ("the subject in capitals", claims(&issuer, "ALICE")),
        ("no subject", no_sub),
    ] {
        let reply = app.post_bearer(&token_a(&claims)).await;

        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "forbidden", "{name}");
        assert_eq!(reply.body["galaxy"], "unknown", "{name}");
        app.assert_untouched(name);
    }

    galaxy.set(Answer::Ok);
    let reply = app.post_bearer(&token_a(&claims(&issuer, "alice"))).await;
    assert_eq!(reply.status, StatusCode::OK, "alice: {}", reply.text);
}

#[tokio::test]
async fn audiences_when_configured_must_be_named_by_the_token() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, r#"audiences = ["galaxyctl-api"]"#);
    let issuer = idp.issuer();
    let with_aud = |aud: Value| {
        let mut claims = claims(&issuer, "alice");
        claims["aud"] = aud;
        claims
    };

    for (name, claims) in [
        ("another audience", with_aud(json!("account"))),
        ("other audiences", with_aud(json!(["account", "broker"]))),
        // A token for no audience in particular is not a token for this service.
        ("no audience", claims(&issuer, "alice")),
    ] {
        let reply = app.post_bearer(&token_a(&claims)).await;

        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "invalid_token", "{name}");
        app.assert_untouched(name);
    }

    galaxy.set(Answer::Ok);
    for aud in [json!("galaxyctl-api"), json!(["account", "galaxyctl-api"])] {
        let reply = app.post_bearer(&token_a(&with_aud(aud.clone()))).await;
        assert_eq!(reply.status, StatusCode::OK, "aud {aud}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_fetched_once_and_cached_across_requests() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::oidc(&galaxy, &idp, "");
    let token = token_a(&claims(&idp.issuer(), "alice"));

    // Concurrent first requests share one fetch, then later ones use the cache.
    let first = (0..10).map(|_| {
        let (router, token, url) = (app.router.clone(), token.clone(), galaxy.url());
        tokio::spawn(async move {
            let request = Request::post(STARTUP)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::from(json!({ "endpoint": url }).to_string()))
                .unwrap();
            send(&router, request).await.status
        })
    });
    let first = tokio::time::timeout(PATIENCE, join_all(first))
        .await
        .expect("every request is answered");
    for status in first {
        assert_eq!(
            status.expect("the request task did not panic"),
            StatusCode::OK
        );
    }
    for _ in 0..20 {
        assert_eq!(app.post_bearer(&token).await.status, StatusCode::OK);
    }

    assert_eq!(idp.discovery_requests(), 1);
    assert_eq!(idp.jwks_requests(), 1);
    // Every authenticated request was let through to a probe: the twenty one after another
    // each sent their own, the ten concurrent ones may have shared one under way.
    let probes = galaxy.requests();
    assert!(
        (21..=30).contains(&probes),
        "{probes} probes reached Galaxy"
    );
}

#[tokio::test]
async fn a_key_rotated_in_at_the_provider_is_fetched_and_accepted() {
    // The service fetches an issuer's keys again for an unknown key id at most once every
    // 30 seconds (auth::MIN_REFRESH_INTERVAL, a std Instant that paused tokio time cannot
    // move), so this test waits that out in real time; it asserts on request counts only.
    const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::oidc(&galaxy, &idp, "");
    let issuer = idp.issuer();
    let old = token_a(&claims(&issuer, "alice"));
    let rotated = sign(
        Algorithm::RS256,
        RSA_C,
        Some("key-c"),
        &claims(&issuer, "alice"),
    );

    assert_eq!(app.post_bearer(&old).await.status, StatusCode::OK);
    assert_eq!(idp.jwks_requests(), 1);

    // Key C appears at the provider. Forged tokens naming unknown key ids right after a fetch
    // must not turn into a stream of fetches.
    idp.publish(vec![jwk_a(), jwk_c()]);
    for i in 0..20 {
        let forged = sign(
            Algorithm::RS256,
            RSA_B,
            Some(&format!("forged-{i}")),
            &claims(&issuer, "alice"),
        );
        let reply = app.post_bearer(&forged).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }
    assert_eq!(idp.jwks_requests(), 1, "forged key ids caused fetches");

    // Once the refresh interval allows, the unknown key id causes one fetch and is accepted.
    let accepted = tokio::time::timeout(REFRESH_INTERVAL + PATIENCE, async {
        loop {
            let reply = app.post_bearer(&rotated).await;
            if reply.status == StatusCode::OK {
                return reply;
            }
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
            assert_eq!(reply.code(), "invalid_token");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("the rotated key is accepted once the keys are fetched again");
    assert_eq!(accepted.body["galaxy"], "online");
    assert_eq!(idp.jwks_requests(), 2);
    assert_eq!(idp.discovery_requests(), 2);

    // And the old key still works, from the cache.
    assert_eq!(app.post_bearer(&old).await.status, StatusCode::OK);
    assert_eq!(idp.jwks_requests(), 2);
    assert!(app.systemd.restarts().is_empty());
}

#[tokio::test]
async fn provider_down_failing_or_hanging_is_503_auth_unavailable() {
    let galaxy = Galaxy::listening(Answer::BadGateway);

    let down = Idp::closed(vec![jwk_a()]);
    let failing = Idp::start(vec![jwk_a()]).await;
    failing.behave(Behaviour::Fail);
    let hanging = Idp::start(vec![jwk_a()]).await;
    hanging.behave(Behaviour::Hang);

    let cases = [
        ("down", &down),
        ("failing", &failing),
        ("hanging", &hanging),
    ];
    let apps: Vec<TestApp> = cases
        .iter()
        .map(|(_, idp)| TestApp::oidc(&galaxy, idp, ""))
        .collect();
    // The hanging provider holds its request for the service's own timeout: all run at once.
    let replies = cases.iter().zip(&apps).map(|((_, idp), app)| async move {
        let token = token_a(&claims(&idp.issuer(), "alice"));
        app.post_bearer(&token).await
    });
    let replies = tokio::time::timeout(PATIENCE, join_all(replies))
        .await
        .expect("a provider that does not answer does not hang the request");

    for (((name, _), app), reply) in cases.iter().zip(&apps).zip(replies) {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), "auth_unavailable", "{name}");
        assert_eq!(reply.body["galaxy"], "unknown", "{name}");
        app.assert_untouched(name);
    }
    assert_eq!(failing.discovery_requests(), 1);
    assert_eq!(hanging.discovery_requests(), 1);
}

#[tokio::test]
async fn provider_back_after_an_outage_is_used_at_once() {
    let idp = Idp::closed(vec![jwk_a()]);
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::oidc(&galaxy, &idp, "");
    let token = token_a(&claims(&idp.issuer(), "alice"));

    let reply = app.post_bearer(&token).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(galaxy.connections(), 0);

    // A failed fetch caches nothing, so the next request asks again.
    idp.open().await;
    let reply = app.post_bearer(&token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(idp.jwks_requests(), 1);
}

#[tokio::test]
async fn reading_routes_need_no_credentials_and_ask_no_provider() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, "");

    let reply = send_any(&app.router, Request::get(INFO).body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["name"], "galaxyctl-api");

    let reply = send(
        &app.router,
        Request::get(STATUS).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    let unknown = format!("{OPERATIONS}/0123456789abcdef0123456789abcdef");
    let reply = send(
        &app.router,
        Request::get(unknown).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);

    let metrics = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = app.router.clone().oneshot(metrics).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    assert_eq!(idp.requests(), 0);
    app.assert_untouched("reading routes");
}

#[tokio::test]
async fn restart_is_refused_without_a_valid_token_like_galaxy_startup() {
    let idp = Idp::start(vec![jwk_a()]).await;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::oidc(&galaxy, &idp, r#"subjects = ["alice"]"#);
    let issuer = idp.issuer();
    let restart = |authorization: Option<String>| {
        let mut request = Request::post(RESTART);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        send(&app.router, request.body(Body::empty()).unwrap())
    };

    for (name, authorization, status, code) in [
        ("no token", None, 401, "unauthenticated"),
        (
            "garbage",
            Some("Bearer garbage".to_owned()),
            401,
            "invalid_token",
        ),
        (
            "another key",
            Some(format!(
                "Bearer {}",
                sign(
                    Algorithm::RS256,
                    RSA_B,
                    Some("key-a"),
                    &claims(&issuer, "alice")
                )
            )),
            401,
            "invalid_token",
        ),
        (
            "another subject",
            Some(format!("Bearer {}", token_a(&claims(&issuer, "mallory")))),
            403,
            "forbidden",
        ),
    ] {
        let reply = restart(authorization).await;

        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.text);
        assert_eq!(reply.code(), code, "{name}");
        app.assert_untouched(name);
    }

    // With alice's token the restart is under way.
    let reply = restart(Some(format!(
        "Bearer {}",
        token_a(&claims(&issuer, "alice"))
    )))
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let restarted = tokio::time::timeout(PATIENCE, async {
        while app.systemd.restarts().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        restarted.is_ok(),
        "no restart after an accepted POST /restart"
    );
}

// --- token -----------------------------------------------------------------------------------

const TOKEN_ONE: &str = "dashboard-7c1f0e2a9b4d4e6f8a1b2c3d4e5f6a7b";
const TOKEN_TWO: &str = "operator-0f9e8d7c6b5a49382716a5b4c3d2e1f0";

/// A tokens file with `mode` holding both tokens, with a comment and blank lines.
fn tokens_file(mode: u32) -> tempfile::NamedTempFile {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    let mut file = tempfile::NamedTempFile::new().expect("create a temporary file");
    writeln!(
        file,
        "# galaxyctl-api tokens\n\n{TOKEN_ONE}\n  {TOKEN_TWO}  \n"
    )
    .unwrap();
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    file
}

fn token_auth(file: &Path) -> String {
    format!("mode = \"token\"\ntokens_file = \"{}\"", file.display())
}

#[tokio::test]
async fn both_tokens_of_a_private_file_are_accepted_with_any_scheme_case() {
    let file = tokens_file(0o600);
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::new(&galaxy, &token_auth(file.path()));

    for authorization in [
        format!("Bearer {TOKEN_ONE}"),
        format!("Bearer {TOKEN_TWO}"),
        format!("bearer {TOKEN_ONE}"),
        format!("BEARER {TOKEN_TWO}"),
        format!("BeArEr {TOKEN_ONE}"),
        format!("Bearer   {TOKEN_TWO}  "),
    ] {
        let reply = app.post(Some(&authorization)).await;

        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{authorization}: {}",
            reply.text
        );
        assert_eq!(reply.body["galaxy"], "online");
        assert!(!reply.text.contains(TOKEN_ONE) && !reply.text.contains(TOKEN_TWO));
    }
    assert_eq!(galaxy.requests(), 6);
}

#[tokio::test]
async fn other_tokens_are_401_and_never_echoed() {
    let file = tokens_file(0o600);
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(&galaxy, &token_auth(file.path()));

    let prefix = &TOKEN_ONE[..TOKEN_ONE.len() - 1];
    let longer = format!("{TOKEN_ONE}0");
    let both = format!("{TOKEN_ONE}{TOKEN_TWO}");
    let upper = TOKEN_ONE.to_uppercase();
    for (name, token, code) in [
        ("unknown token", "not-a-token", "invalid_token"),
        ("a prefix of a token", prefix, "invalid_token"),
        ("a token and more", &longer, "invalid_token"),
        ("two tokens run together", &both, "invalid_token"),
        ("a token in capitals", &upper, "invalid_token"),
        (
            "the comment line",
            "# galaxyctl-api tokens",
            "invalid_token",
        ),
        ("nothing", "", "unauthenticated"),
    ] {
        let reply = app.post_bearer(token).await;

        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.code(), code, "{name}");
        assert!(reply.www_authenticate().starts_with("Bearer "), "{name}");
        if !token.is_empty() {
            assert!(!reply.text.contains(token), "{name}: the token is echoed");
        }
        app.assert_untouched(name);
    }

    let reply = app.post(None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "unauthenticated");
    app.assert_untouched("no header");
}

#[test]
fn a_tokens_file_others_may_read_or_write_is_refused() {
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666] {
        let file = tokens_file(mode);
        let galaxy = Galaxy::closed(Answer::Ok);
        let settings = settings(&galaxy, &token_auth(file.path()));

        let error = Authenticator::new(&settings.auth)
            .expect_err(&format!("a tokens file with mode {mode:o} is refused"));

        assert!(
            error.contains(&format!("{mode:o}")),
            "mode {mode:o}: {error}"
        );
        assert!(
            !error.contains(TOKEN_ONE) && !error.contains(TOKEN_TWO),
            "{error}"
        );
    }
}

#[test]
fn a_missing_or_empty_tokens_file_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tokens");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no tokens yet\n\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let galaxy = Galaxy::closed(Answer::Ok);

    for path in [missing, empty] {
        let settings = settings(&galaxy, &token_auth(&path));
        assert!(
            Authenticator::new(&settings.auth).is_err(),
            "{} is accepted",
            path.display()
        );
    }
}

// --- none and the default --------------------------------------------------------------------

#[tokio::test]
async fn explicit_mode_none_accepts_requests_without_credentials() {
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = TestApp::new(&galaxy, r#"mode = "none""#);

    let reply = app.post(None).await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["galaxy"], "online");
}

#[test]
fn the_default_configuration_refuses_unauthenticated_restarts() {
    let galaxy = Galaxy::closed(Answer::Ok);
    let without_auth = format!("[galaxy]\nurls = [\"{}\"]\n", galaxy.url());
    let plain_http =
        format!("{without_auth}[auth]\nissuers = [\"http://idp.example.org/realms/laniakea\"]\n");
    let no_issuer = format!("{without_auth}[auth]\nmode = \"oidc\"\nissuers = []\n");

    for (name, text) in [
        ("empty file", String::new()),
        ("no [auth]", without_auth.clone()),
        ("issuer over plain http", plain_http),
        ("empty issuer list", no_issuer),
    ] {
        match Settings::parse(&text, Path::new("config.toml")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "auth.issuers", "{name}"),
            Err(other) => panic!("{name}: refused for another reason: {other}"),
            Ok(settings) => panic!("{name}: accepted with auth mode {:?}", settings.auth.mode),
        }
    }
    let error = Settings::parse(&without_auth, Path::new("config.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth.issuers"), "{error}");
}

#[tokio::test]
async fn restart_in_token_mode_needs_one_of_the_tokens() {
    let file = tokens_file(0o600);
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(&galaxy, &token_auth(file.path()));
    let restart = |authorization: &str| {
        let request = Request::post(RESTART).header(header::AUTHORIZATION, authorization);
        send(&app.router, request.body(Body::empty()).unwrap())
    };

    let reply = send(
        &app.router,
        Request::post(RESTART).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    let reply = restart("Bearer not-a-token").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    app.assert_untouched("POST /restart");

    let reply = restart(&format!("bearer {TOKEN_TWO}")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert!(!reply.text.contains(TOKEN_TWO));
}

#[tokio::test]
async fn info_needs_no_credentials_in_token_mode() {
    let file = tokens_file(0o600);
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(&galaxy, &token_auth(file.path()));

    let reply = send_any(&app.router, Request::get(INFO).body(Body::empty()).unwrap()).await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    app.assert_untouched("GET /info");
}
