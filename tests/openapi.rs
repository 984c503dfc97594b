//! The OpenAPI description in api/openapi.json and the router agree: every documented route
//! answers, every route in src/http/mod.rs is documented, and every other method is a 405.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use galaxyctl_api::auth::Authenticator;
use galaxyctl_api::config::Settings;
use galaxyctl_api::http::{router, AppState, PREFIX};
use galaxyctl_api::notify::StatusLine;
use galaxyctl_api::probe::Prober;
use galaxyctl_api::recovery::{Recovery, UnitControl};
use galaxyctl_api::systemd::{JobOutcome, SystemdError, UnitState};
use serde_json::Value;
use tower::ServiceExt;

/// systemd as the routes see it when all is well; these tests look at routing only.
struct AllActive;

impl UnitControl for AllActive {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<JobOutcome, SystemdError>> {
        let _ = unit;
        async {
            Ok(JobOutcome {
                job: "/org/freedesktop/systemd1/job/1".to_owned(),
                result: "done".to_owned(),
            })
        }
        .boxed()
    }

    fn unit_state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, SystemdError>> {
        async move {
            Ok(UnitState {
                unit: unit.to_owned(),
                load_state: "loaded".to_owned(),
                active_state: "active".to_owned(),
                sub_state: "running".to_owned(),
                result: Some("success".to_owned()),
                invocation_id: String::new(),
                ..UnitState::default()
            })
        }
        .boxed()
    }
}

fn app() -> axum::Router {
    // Galaxy's URL points at a port nothing listens on; no route here needs it to answer.
    let settings = Settings::parse(
        "[galaxy]\nurls = [\"http://127.0.0.1:9/galaxy\"]\n[auth]\nmode = \"none\"\n\
         [recovery]\nreadiness_deadline = \"1s\"\n[probe]\ntimeout = \"1s\"\n\
         connect_timeout = \"1s\"\n",
        Path::new("openapi-test.toml"),
    )
    .expect("the test configuration is valid");
    let prober = Prober::new(&settings.probe).expect("the client builds");
    let status = Arc::new(StatusLine::new("test".to_owned()));
    let recovery = Arc::new(Recovery::new(
        Arc::new(AllActive),
        prober.clone(),
        &settings,
        status.clone(),
    ));
    let auth = Authenticator::new(&settings.auth).expect("mode none needs nothing");
    router(AppState {
        settings: Arc::new(settings),
        prober,
        recovery,
        status,
        auth: Arc::new(auth),
    })
}

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.json"))
        .expect("api/openapi.json is readable");
    serde_json::from_str(&text).expect("api/openapi.json is JSON")
}

/// (METHOD, path) of every documented operation, path parameters filled in.
fn documented() -> Vec<(Method, String)> {
    let spec = spec();
    let mut routes = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths is an object") {
        for method in item.as_object().expect("a path item is an object").keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes())
                .expect("documented methods are HTTP methods");
            routes.push((method, path.replace("{id}", "0123abcd")));
        }
    }
    routes
}

/// (METHOD, path) of every `.route("...", method(...))` in src/http/mod.rs, as written there.
fn in_source() -> Vec<(Method, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs"))
        .expect("src/http/mod.rs is readable");
    let mut routes = Vec::new();
    for piece in source.split(".route(\"").skip(1) {
        let (path, rest) = piece
            .split_once('"')
            .expect("a route path is a string literal");
        let rest = rest.trim_start_matches([',', ' ', '\n']);
        let method = rest
            .split('(')
            .next()
            .expect("a method router follows the path");
        let method = Method::from_bytes(method.trim().to_uppercase().as_bytes())
            .expect("routes use get(..) or post(..)");
        routes.push((method, path.replace("{id}", "0123abcd")));
    }
    routes
}

async fn call(method: Method, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"endpoint": "http://127.0.0.1:9/elsewhere"}"#,
        ))
        .expect("the request is well formed");
    let response = app().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the body is readable");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn every_documented_route_answers() {
    let routes = documented();
    assert!(
        routes.len() >= 6,
        "the description lists the routes: {routes:?}"
    );
    for (method, path) in routes {
        let (status, body) = call(method.clone(), &path).await;
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert!(
            !body.contains("\"not_found\""),
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
}

#[tokio::test]
async fn every_route_is_documented() {
    let documented = documented();
    let routes = in_source();
    assert!(
        routes.len() >= 6,
        "routes found in src/http/mod.rs: {routes:?}"
    );
    for (method, path) in routes {
        let full = format!("{PREFIX}{path}");
        assert!(
            documented.contains(&(method.clone(), path.clone()))
                || documented.contains(&(method.clone(), full.clone())),
            "{method} {path} is routed but not in api/openapi.json"
        );
    }
}

#[tokio::test]
async fn other_methods_are_refused_with_json() {
    let documented = documented();
    for (_, path) in &documented {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            if documented.contains(&(method.clone(), path.clone())) {
                continue;
            }
            let (status, body) = call(method.clone(), path).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            let json: Value = serde_json::from_str(&body).expect("a 405 is JSON");
            assert_eq!(json["error"]["code"], "method_not_allowed");
            assert!(json.get("galaxy").is_some(), "{body}");
        }
    }
}
