//! The HTTP contract, through the router without a socket for the API: what every answer
//! looks like, which requests are refused before Galaxy is touched, and which units a request
//! that finds Galaxy down gets restarted.
//!
//! Galaxy is a stand-in on a local port and systemd a scripted fake (see `fakes`).

mod fakes;

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tower::ServiceExt;

use fakes::{
    active, failed, inactive, no_such_unit, Answer, FakeSystemd, Galaxy, Gate, TestConfig,
    UnitScript, PATIENCE,
};
use galaxyctl_api::auth::Authenticator;
use galaxyctl_api::http::{router, AppState, MAX_BODY_BYTES};
use galaxyctl_api::notify::StatusLine;
use galaxyctl_api::recovery::Recovery;

const STARTUP: &str = "/galaxyctl_api/v1.0/galaxy-startup";
const INFO: &str = "/galaxyctl_api/v1.0/info";

struct TestApp {
    router: Router,
    systemd: Arc<FakeSystemd>,
    recovery: Arc<Recovery>,
}

fn app(galaxy: &Galaxy, config: TestConfig) -> TestApp {
    let settings = config.settings(galaxy);
    let auth = Authenticator::new(&settings.auth).expect("the test's auth settings work");
    let systemd = FakeSystemd::new(galaxy);
    let (recovery, prober) = fakes::recovery(&settings, &systemd);
    let router = router(AppState {
        settings: Arc::new(settings),
        prober,
        recovery: recovery.clone(),
        status: Arc::new(StatusLine::new("test".to_owned())),
        auth: Arc::new(auth),
    });
    TestApp {
        router,
        systemd,
        recovery,
    }
}

/// Sends `request` and returns the status, the headers and the JSON body, which every answer
/// must have.
async fn exchange(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("read the answer");
    let status = parts.status;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status} answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "{status} answer {body}"
    );
    (status, parts.headers, body)
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = exchange(router, request).await;
    (status, body)
}

/// Like [`send`], for the answers the dashboard reads: they must carry a `galaxy` string.
async fn send_for_dashboard(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, body) = send(router, request).await;
    assert!(
        body["galaxy"].is_string(),
        "{status} answer without a `galaxy` string: {body}"
    );
    (status, body)
}

/// POSTs `body` to galaxy-startup with `content_type`.
async fn post_raw(
    router: &Router,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut request = Request::post(STARTUP);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    post_request(router, request.body(body.into()).unwrap()).await
}

/// Sends a galaxy-startup request, checking that the answer is one the dashboard can read and
/// that it names the request.
async fn startup(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = exchange(router, request).await;
    assert!(
        body["galaxy"].is_string(),
        "{status} answer without a `galaxy` string: {body}"
    );
    let request_id = body["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{status} galaxy-startup answer without a request_id: {body}"));
    assert_eq!(request_id.len(), 32, "request_id {request_id:?}");
    assert!(request_id.bytes().all(|b| b.is_ascii_hexdigit()));
    (status, headers, body)
}

async fn post_request(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = startup(router, request).await;
    (status, body)
}

/// POSTs the dashboard's request for `endpoint`.
async fn post(router: &Router, endpoint: &str) -> (StatusCode, Value) {
    let body = json!({ "endpoint": endpoint }).to_string();
    post_raw(router, Some("application/json"), body).await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error.code>")
}

/// A request that must be refused, and how.
struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
}

impl Case {
    fn bytes(name: &'static str, body: Vec<u8>, status: u16, code: &'static str) -> Case {
        Case {
            name,
            content_type: Some("application/json"),
            body,
            status: StatusCode::from_u16(status).unwrap(),
            code,
        }
    }

    fn media(name: &'static str, content_type: Option<&'static str>, body: &str) -> Case {
        Case {
            content_type,
            ..Case::bytes(name, body.into(), 415, "unsupported_media_type")
        }
    }

    fn json(name: &'static str, body: &str) -> Case {
        Case::bytes(name, body.into(), 400, "invalid_json")
    }

    fn endpoint(name: &'static str, body: &str) -> Case {
        Case::bytes(name, body.into(), 400, "invalid_endpoint")
    }

    fn not_allowed(name: &'static str, body: &str) -> Case {
        Case::bytes(name, body.into(), 403, "endpoint_not_allowed")
    }
}

#[tokio::test]
async fn malformed_requests_are_refused_before_galaxy_is_touched() {
    // Galaxy answers 502: any request that got through would probe it and restart units.
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());
    let url = galaxy.url();
    let valid = json!({ "endpoint": url }).to_string();

    let nested = |depth| "[".repeat(depth);
    let endpoint = |endpoint: String| json!({ "endpoint": endpoint }).to_string();
    let addr = galaxy.addr();
    let port = addr.port();
    let other_port = if port == 65535 { 1024 } else { port + 1 };
    let cases = [
        // Not announced as JSON.
        Case::media("no Content-Type", None, &valid),
        Case::media("text/plain", Some("text/plain"), &valid),
        Case::media(
            "form",
            Some("application/x-www-form-urlencoded"),
            &format!("endpoint={url}"),
        ),
        Case::media(
            "JSON look-alike",
            Some("application/json-patch+json"),
            &valid,
        ),
        // Not JSON, or not the object the dashboard sends.
        Case::json("empty body", ""),
        Case::json("truncated JSON", r#"{"endpoint": "#),
        Case::bytes(
            "not UTF-8",
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
            "invalid_json",
        ),
        Case::json("trailing garbage", &format!("{valid} x")),
        Case::json("JSON string", &json!(url).to_string()),
        Case::json("JSON array", &json!([url]).to_string()),
        Case::json("JSON number", "42"),
        Case::json("JSON null", "null"),
        Case::json("no endpoint", "{}"),
        Case::json("another key", &json!({ "url": url }).to_string()),
        Case::json("10000 nested arrays", &nested(10_000)),
        Case::json(
            "deeply nested endpoint",
            &format!(r#"{{"endpoint": {}"#, nested(5_000)),
        ),
        Case::json("deeply nested objects", &r#"{"a":"#.repeat(3_000)),
        // An endpoint that is not an http(s) URL to probe.
        Case::endpoint("numeric endpoint", r#"{"endpoint": 5001}"#),
        Case::endpoint("null endpoint", r#"{"endpoint": null}"#),
        Case::endpoint("array endpoint", &json!({ "endpoint": [url] }).to_string()),
        Case::endpoint(
            "object endpoint",
            &json!({ "endpoint": { "href": url } }).to_string(),
        ),
        Case::endpoint("empty endpoint", &endpoint(String::new())),
        Case::endpoint("relative endpoint", &endpoint("/galaxy/".into())),
        Case::endpoint("file: URL", &endpoint("file:///etc/passwd".into())),
        Case::endpoint("ftp: URL", &endpoint(format!("ftp://{addr}/"))),
        Case::endpoint("unix: URL", &endpoint("unix:/run/galaxy.sock".into())),
        Case::endpoint(
            "user and password",
            &endpoint(format!("http://admin:pw@{addr}/")),
        ),
        Case::endpoint("user only", &endpoint(format!("http://admin@{addr}/"))),
        Case::endpoint("no host", &endpoint("http://".into())),
        Case::endpoint("port without host", &endpoint("http://:8080/".into())),
        Case::endpoint(
            "over-long endpoint",
            &endpoint(format!("{url}{}", "a".repeat(2100))),
        ),
        // A URL, but not one of this Galaxy.
        Case::not_allowed(
            "another port",
            &endpoint(format!("http://127.0.0.1:{other_port}/")),
        ),
        Case::not_allowed("another scheme", &endpoint(format!("https://{addr}/"))),
        Case::not_allowed(
            "another name",
            &endpoint(format!("http://localhost:{port}/")),
        ),
        Case::not_allowed(
            "metadata service",
            &endpoint("http://169.254.169.254/".into()),
        ),
        // Too much of it.
        Case::bytes(
            "body over the limit",
            json!({ "endpoint": url, "padding": "x".repeat(MAX_BODY_BYTES) })
                .to_string()
                .into(),
            413,
            "body_too_large",
        ),
    ];

    let mut wrong = Vec::new();
    let mut seen = (0, 0);
    for Case {
        name,
        content_type,
        body,
        status,
        code,
    } in cases
    {
        let (got_status, got) = post_raw(&app.router, content_type, body).await;
        if got_status != status || error_code(&got) != code || got["galaxy"] != "unknown" {
            wrong.push(format!(
                "{name}: expected {status} {code}, got {got_status} {got}"
            ));
        }
        if !got["error"]["message"].is_string() {
            wrong.push(format!("{name}: no error.message in {got}"));
        }
        let (connections, restarts) = (galaxy.connections(), app.systemd.restarts().len());
        if connections != seen.0 || restarts != seen.1 {
            wrong.push(format!(
                "{name}: Galaxy saw {} connections, systemd {} restarts",
                connections - seen.0,
                restarts - seen.1
            ));
        }
        seen = (connections, restarts);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(galaxy.connections(), 0);
    assert_eq!(app.systemd.restarts(), Vec::<String>::new());
}

#[tokio::test]
async fn content_type_parameters_and_case_are_accepted() {
    let galaxy = Galaxy::listening(Answer::Ok);
    let app = app(&galaxy, TestConfig::default());
    let body = json!({ "endpoint": galaxy.url(), "newer_dashboard_field": true }).to_string();

    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let (status, answer) = post_raw(&app.router, Some(content_type), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{content_type}: {answer}");
        assert_eq!(answer["galaxy"], "online", "{content_type}: {answer}");
    }
    assert_eq!(galaxy.requests(), 2);
}

#[tokio::test]
async fn wrong_methods_are_405_json() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());

    for (method, path) in [
        (Method::GET, STARTUP),
        (Method::PUT, STARTUP),
        (Method::DELETE, STARTUP),
        (Method::POST, INFO),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "endpoint": galaxy.url() }).to_string()))
            .unwrap();
        let (status, body) = send_for_dashboard(&app.router, request).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert_eq!(error_code(&body), "method_not_allowed", "{method} {path}");
        assert_eq!(body["galaxy"], "unknown");
    }
    assert_eq!(galaxy.connections(), 0);
    assert!(app.systemd.restarts().is_empty());
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());

    for path in [
        "/",
        "/galaxyctl_api/v1.0",
        "/galaxyctl_api/v1.0/",
        "/galaxyctl_api/v1.0/galaxy-startup/",
        "/galaxyctl_api/v1.0/galaxy-shutdown",
        "/galaxyctl_api/v2.0/galaxy-startup",
        "/galaxy-startup",
    ] {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "endpoint": galaxy.url() }).to_string()))
            .unwrap();
        let (status, body) = send_for_dashboard(&app.router, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(error_code(&body), "not_found", "{path}");
    }
    assert_eq!(galaxy.connections(), 0);
    assert!(app.systemd.restarts().is_empty());
}

#[tokio::test]
async fn info_names_the_service_its_bus_and_units() {
    let galaxy = Galaxy::listening(Answer::Ok);
    let config = TestConfig {
        bus: "user",
        galaxy_units: &["galaxy-web.service", "galaxy-handlers.target"],
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);

    let info = || Request::get(INFO).body(Body::empty()).unwrap();
    let (status, body) = send_for_dashboard(&app.router, info()).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    // Nothing probed Galaxy yet, and /info itself does not.
    assert_eq!(body["galaxy"], "unknown");
    assert_eq!(body["name"], "galaxyctl-api");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["bus"], "user");
    assert_eq!(
        body["units"],
        json!({
            "galaxy": ["galaxy-web.service", "galaxy-handlers.target"],
            "nginx": "nginx.service",
        })
    );
    assert_eq!(galaxy.connections(), 0);

    // The last probe, a request's, found Galaxy online.
    post(&app.router, &galaxy.url()).await;
    let (_, body) = send_for_dashboard(&app.router, info()).await;
    assert_eq!(body["galaxy"], "online", "{body}");
    assert_eq!(galaxy.connections(), 1);
}

#[tokio::test]
async fn callers_without_a_valid_token_are_refused_before_galaxy_is_touched() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    // A private file, as the service insists on (tempfile creates it with mode 0600).
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "# the dashboard\nfirst-token\nsecond-token").unwrap();
    let config = TestConfig {
        auth: format!("mode = \"token\"\ntokens_file = {:?}", tokens.path()),
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);
    app.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));
    let body = json!({ "endpoint": galaxy.url() }).to_string();

    for (authorization, code) in [
        (None, "unauthenticated"),
        (Some("Bearer"), "unauthenticated"),
        (Some("Basic Zmlyc3QtdG9rZW4="), "unauthenticated"),
        (Some("Bearer third-token"), "invalid_token"),
        (Some("Bearer first-token-and-more"), "invalid_token"),
        (Some("Bearer # the dashboard"), "invalid_token"),
    ] {
        let mut request = Request::post(STARTUP).header(header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request.body(Body::from(body.clone())).unwrap();
        // Not `startup`: the request_id of these answers has its own test below.
        let (status, headers, answer) = exchange(&app.router, request).await;

        assert!(
            headers.contains_key(header::WWW_AUTHENTICATE),
            "{authorization:?}"
        );
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{authorization:?}: {answer}"
        );
        assert_eq!(error_code(&answer), code, "{authorization:?}");
        assert_eq!(answer["galaxy"], "unknown");
    }
    assert_eq!(galaxy.connections(), 0);
    assert!(app.systemd.restarts().is_empty());

    // The second token of the file is as good as the first; /info needs none.
    let request = Request::post(STARTUP)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "bearer second-token")
        .body(Body::from(body))
        .unwrap();
    let (status, answer) = post_request(&app.router, request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["galaxy"], "online");
    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
    let (status, _) = send(&app.router, Request::get(INFO).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

/// The request_id lets an administrator find a dashboard's failed call in the journal, a
/// refused one included.
#[tokio::test]
async fn refused_caller_answer_names_its_request() {
    let galaxy = Galaxy::listening(Answer::Ok);
    let tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens.as_file(), "the-token").unwrap();
    let config = TestConfig {
        auth: format!("mode = \"token\"\ntokens_file = {:?}", tokens.path()),
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);

    // `startup` checks the request_id.
    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn galaxy_answering_200_or_302_is_online_without_restart() {
    for (answer, http_status) in [(Answer::Ok, 200), (Answer::Found, 302)] {
        let galaxy = Galaxy::listening(answer);
        let app = app(&galaxy, TestConfig::default());

        let (status, body) = post(&app.router, &galaxy.url()).await;

        assert_eq!(status, StatusCode::OK, "{answer:?}: {body}");
        assert_eq!(body["galaxy"], "online", "{answer:?}");
        assert_eq!(body["endpoint"], galaxy.url());
        assert_eq!(body["http_status"], http_status);
        assert_eq!(galaxy.requests(), 1, "{answer:?}");
        assert!(app.systemd.restarts().is_empty(), "{answer:?}");
        assert!(app.recovery.last().is_none());
    }
}

/// Galaxy answers 502 and its restart brings it back; `nginx` is nginx's state before.
async fn recover_from_502(nginx_restart: &'static str, nginx: UnitScript) -> TestApp {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let config = TestConfig {
        nginx_restart,
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);
    app.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));
    app.systemd.script("nginx.service", nginx);

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["galaxy"], "online", "{body}");
    assert_eq!(body["endpoint"], galaxy.url());
    let report = app.recovery.last().expect("a recovery ran");
    assert_eq!(body["recovery"]["id"], report.id);
    assert_eq!(report.outcome, Ok(()));
    app
}

#[tokio::test]
async fn galaxy_answering_502_restarts_galaxy_and_leaves_active_nginx_alone() {
    let app = recover_from_502("when-inactive", UnitScript::done().before(active())).await;

    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn galaxy_answering_502_restarts_inactive_nginx_too() {
    for nginx in [inactive(), failed("exit-code")] {
        let app = recover_from_502("when-inactive", UnitScript::done().before(nginx)).await;

        assert_eq!(app.systemd.restarts(), ["galaxy.service", "nginx.service"]);
    }
}

#[tokio::test]
async fn nginx_restart_always_restarts_active_nginx_with_galaxy() {
    let app = recover_from_502("always", UnitScript::done().before(active())).await;

    assert_eq!(app.systemd.restarts(), ["galaxy.service", "nginx.service"]);
}

#[tokio::test]
async fn galaxy_answering_500_or_hanging_is_restarted() {
    for answer in [Answer::ServerError, Answer::Hang] {
        let galaxy = Galaxy::listening(answer);
        let config = TestConfig {
            probe_timeout: "300ms",
            ..TestConfig::default()
        };
        let app = app(&galaxy, config);
        app.systemd
            .script("galaxy.service", UnitScript::bringing(Answer::Ok));

        let (status, body) = post(&app.router, &galaxy.url()).await;

        assert_eq!(status, StatusCode::OK, "{answer:?}: {body}");
        assert_eq!(body["galaxy"], "online", "{answer:?}");
        assert_eq!(app.systemd.restarts(), ["galaxy.service"], "{answer:?}");
    }
}

#[tokio::test]
async fn refused_connection_restarts_nginx_first() {
    // Nothing listens; nginx comes back but Galaxy behind it is down, then Galaxy comes back.
    let galaxy = Galaxy::closed(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());
    app.systemd
        .script("nginx.service", UnitScript::done().opens_port());
    app.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["galaxy"], "online");
    assert_eq!(app.systemd.restarts(), ["nginx.service", "galaxy.service"]);
}

#[tokio::test]
async fn refused_connection_fixed_by_nginx_restarts_nothing_else() {
    let galaxy = Galaxy::closed(Answer::Ok);
    let app = app(&galaxy, TestConfig::default());
    app.systemd
        .script("nginx.service", UnitScript::done().opens_port());

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["galaxy"], "online");
    assert_eq!(app.systemd.restarts(), ["nginx.service"]);
}

#[tokio::test]
async fn nothing_listening_after_nginx_restart_is_not_listening() {
    let galaxy = Galaxy::closed(Answer::Ok);
    let config = TestConfig {
        probe_timeout: "300ms",
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["galaxy"], "unavailable");
    assert_eq!(error_code(&body), "not_listening");
    assert_eq!(app.systemd.restarts(), ["nginx.service"]);
}

#[tokio::test]
async fn start_limit_hit_is_job_failed() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());
    let start_limit_hit = UnitScript::done()
        .job(fakes::Job::Ends("failed"))
        .after(vec![failed("start-limit-hit")]);
    app.systemd.script("galaxy.service", start_limit_hit);

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["galaxy"], "unavailable");
    assert_eq!(error_code(&body), "job_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("galaxy.service"), "{message}");
    assert!(message.contains("start-limit-hit"), "{message}");
    let unit = &body["recovery"]["units"][0];
    assert_eq!(unit["unit"], "galaxy.service");
    assert_eq!(unit["job"]["result"], "failed");
    assert_eq!(unit["state"]["result"], "start-limit-hit");
    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn unknown_unit_is_no_such_unit() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());
    app.systemd.script(
        "galaxy.service",
        UnitScript::refused(no_such_unit("galaxy.service")),
    );

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["galaxy"], "unavailable");
    assert_eq!(error_code(&body), "no_such_unit");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("galaxy.service"), "{message}");
    let unit_error = body["recovery"]["units"][0]["error"].as_str().unwrap();
    assert!(
        unit_error.contains("org.freedesktop.systemd1.NoSuchUnit"),
        "{unit_error}"
    );
}

#[tokio::test]
async fn failed_recovery_is_followed_by_429_without_restart() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = app(&galaxy, TestConfig::default());
    app.systemd.script(
        "galaxy.service",
        UnitScript::refused(no_such_unit("galaxy.service")),
    );
    let (status, body) = post(&app.router, &galaxy.url()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let request = Request::post(STARTUP)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "endpoint": galaxy.url() }).to_string()))
        .unwrap();
    let (status, headers, body) = startup(&app.router, request).await;

    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["galaxy"], "unavailable");
    assert_eq!(error_code(&body), "cooling_down");
    let retry_after_s = body["retry_after_s"].as_u64().expect("retry_after_s");
    assert!(retry_after_s >= 1);
    let retry_after: u64 = headers
        .get(header::RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn endpoint_that_cannot_be_probed_is_probe_failed_without_restart() {
    // TLS to a plain-HTTP port: no restart can fix that.
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let config = TestConfig {
        https_too: true,
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);

    let (status, body) = post(&app.router, &format!("https://{}/", galaxy.addr())).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["galaxy"], "unknown");
    assert_eq!(error_code(&body), "probe_failed");
    assert!(app.systemd.restarts().is_empty());
    // No recovery ran, so none failed: the next request is not held back by a cooldown.
    assert!(app.recovery.last().is_none());
    let (status, body) = post(&app.router, &format!("https://{}/", galaxy.addr())).await;
    assert_eq!(error_code(&body), "probe_failed", "{status} {body}");
}

#[tokio::test]
async fn galaxy_slower_than_the_answer_budget_gets_starting_then_online() {
    // The restart does not bring Galaxy back by itself: the test does, after the answer.
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let config = TestConfig {
        answer_budget: "300ms",
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);

    let (status, body) = post(&app.router, &galaxy.url()).await;

    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["galaxy"], "starting");
    assert_eq!(body["endpoint"], galaxy.url());
    let id = body["recovery"]["id"].as_str().expect("a recovery id");
    assert!(!id.is_empty());
    assert_eq!(body["recovery"]["restarting"], json!(["galaxy.service"]));

    galaxy.set(Answer::Ok);
    let online = tokio::time::timeout(PATIENCE, async {
        loop {
            let (status, body) = post(&app.router, &galaxy.url()).await;
            if body["galaxy"] == "online" {
                return (status, body);
            }
            assert_eq!(body["galaxy"], "starting", "{body}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("Galaxy is online again");
    assert_eq!(online.0, StatusCode::OK);

    let report = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(report) = app.recovery.last() {
                return report;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the recovery finishes");
    assert_eq!(report.id, id);
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_cause_one_restart_of_each_unit() {
    const REQUESTS: usize = 50;
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let config = TestConfig {
        galaxy_units: &["galaxy.service", "galaxy-handlers.service"],
        nginx_restart: "always",
        probe_timeout: "5s",
        ..TestConfig::default()
    };
    let app = app(&galaxy, config);

    // The restart is held a while after the first probe reached Galaxy, so that the requests
    // come to the recovery having found Galaxy down (joining it, or finding it just finished),
    // or find Galaxy back. Requests that arrive while a probe is under way share it, so Galaxy
    // sees fewer connections than requests. Bounded: a probe that never arrives shows in the
    // answers, not as a hang. When the gate opens changes the interleaving, not the outcome
    // asserted below.
    let gate = Gate::default();
    app.systemd.script(
        "galaxy.service",
        UnitScript::bringing(Answer::Ok).gated(&gate),
    );
    let opener = {
        let (galaxy, gate) = (galaxy.clone(), gate.clone());
        tokio::spawn(async move {
            let first_probe = async {
                while galaxy.connections() == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            let _ = tokio::time::timeout(PATIENCE, first_probe).await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            gate.open();
        })
    };

    let requests = (0..REQUESTS).map(|_| {
        let (router, url) = (app.router.clone(), galaxy.url());
        tokio::spawn(async move { post(&router, &url).await })
    });
    let answers = tokio::time::timeout(PATIENCE, join_all(requests))
        .await
        .expect("every request is answered");
    opener.await.unwrap();

    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let (status, body) = answer.expect("the request task did not panic");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["galaxy"], "online", "{body}");
        ids.insert(body["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), REQUESTS, "request ids are unique");

    let mut restarts = app.systemd.restarts();
    restarts.sort();
    assert_eq!(
        restarts,
        ["galaxy-handlers.service", "galaxy.service", "nginx.service"]
    );
}
