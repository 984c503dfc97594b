//! The restart budget: at most `max_recoveries` recoveries start within `window`, and none
//! for `failure_cooldown` after a failed one. A refused recovery is a 429 with `Retry-After`,
//! never another restart.
//!
//! Recoveries end quickly here: a restart either brings the Galaxy stand-in back at once, or
//! leaves it down until a short readiness deadline. No assertion depends on how long anything
//! took; `Retry-After` is only checked to lie within the configured window.

mod fakes;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::json;

use fakes::{failed, send, Answer, FakeSystemd, Galaxy, Job, Reply, UnitScript};
use galaxyctl_api::config::Settings;

const STARTUP: &str = "/galaxyctl_api/v1.0/galaxy-startup";
const RESTART: &str = "/galaxyctl_api/v1.0/restart";

/// The budget a test runs with.
struct Budget {
    max_recoveries: u32,
    window: &'static str,
    failure_cooldown: &'static str,
}

struct TestApp {
    router: Router,
    galaxy: Galaxy,
    systemd: Arc<FakeSystemd>,
}

impl TestApp {
    fn new(galaxy: &Galaxy, budget: Budget) -> TestApp {
        let text = format!(
            r#"
[galaxy]
units = ["galaxy.service"]
urls = ["{url}"]

[probe]
connect_timeout = "200ms"
timeout = "1s"
interval = "50ms"

[recovery]
readiness_deadline = "300ms"
answer_budget = "10s"
max_recoveries = {max}
window = "{window}"
failure_cooldown = "{cooldown}"

[auth]
mode = "none"
"#,
            url = galaxy.url(),
            max = budget.max_recoveries,
            window = budget.window,
            cooldown = budget.failure_cooldown,
        );
        let settings = Settings::parse(&text, Path::new("throttle.toml")).expect("a valid config");
        let systemd = FakeSystemd::new(galaxy);
        let router = fakes::router(settings, &systemd);
        TestApp {
            router,
            galaxy: galaxy.clone(),
            systemd,
        }
    }

    /// The dashboard's request.
    async fn startup(&self) -> Reply {
        let request = Request::post(STARTUP)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({ "endpoint": self.galaxy.url() }).to_string(),
            ))
            .unwrap();
        send(&self.router, request).await
    }

    /// An explicit restart, which spends the same budget.
    async fn restart(&self) -> Reply {
        send(
            &self.router,
            Request::post(RESTART).body(Body::empty()).unwrap(),
        )
        .await
    }

    fn restarts(&self) -> usize {
        self.systemd.restarts().len()
    }
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error.code>")
    }

    /// Checks a 429 answer for `code` and returns its wait in seconds, which header and body
    /// must agree on, and which lies within `1..=max_s`.
    fn assert_throttled(&self, code: &str, max_s: u64) -> u64 {
        assert_eq!(self.status, StatusCode::TOO_MANY_REQUESTS, "{}", self.body);
        assert_eq!(self.code(), code, "{}", self.body);
        assert_eq!(self.body["galaxy"], "unavailable", "{}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);

        let header: u64 = self
            .headers
            .get(header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("a 429 without Retry-After: {}", self.body))
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After is a number of seconds");
        let field = self.body["retry_after_s"]
            .as_u64()
            .unwrap_or_else(|| panic!("a 429 without retry_after_s: {}", self.body));
        assert_eq!(header, field, "Retry-After and retry_after_s differ");
        assert!((1..=max_s).contains(&field), "retry_after_s {field}");
        field
    }
}

const HOUR_S: u64 = 3600;

#[tokio::test]
async fn a_third_recovery_within_the_window_is_429_too_many_recoveries() {
    // Each restart brings Galaxy back; then Galaxy goes down again.
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(
        &galaxy,
        Budget {
            max_recoveries: 2,
            window: "1h",
            failure_cooldown: "2min",
        },
    );
    app.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));

    for n in 1..=2 {
        let reply = app.startup().await;

        assert_eq!(reply.status, StatusCode::OK, "recovery {n}: {}", reply.body);
        assert_eq!(reply.body["galaxy"], "online");
        assert_eq!(app.restarts(), n);
        galaxy.set(Answer::BadGateway);
    }

    let reply = app.startup().await;
    reply.assert_throttled("too_many_recoveries", HOUR_S);
    assert!(reply.body["request_id"].is_string());
    assert_eq!(app.restarts(), 2, "a third restart");

    // Asking again, or asking for a restart outright, spends nothing either.
    app.startup()
        .await
        .assert_throttled("too_many_recoveries", HOUR_S);
    app.restart()
        .await
        .assert_throttled("too_many_recoveries", HOUR_S);
    assert_eq!(app.systemd.restarts(), ["galaxy.service", "galaxy.service"]);

    // The budget limits restarts, not answers: a Galaxy that is back is reported online.
    galaxy.set(Answer::Ok);
    let reply = app.startup().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["galaxy"], "online");
    assert_eq!(app.restarts(), 2);
}

#[tokio::test]
async fn failed_recoveries_without_cooldown_still_spend_the_budget() {
    // Galaxy stays down: every recovery ends at the readiness deadline.
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(
        &galaxy,
        Budget {
            max_recoveries: 2,
            window: "1h",
            failure_cooldown: "0s",
        },
    );

    for n in 1..=2 {
        let reply = app.startup().await;

        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "recovery {n}: {}",
            reply.body
        );
        assert_eq!(reply.code(), "deadline_exceeded");
        assert_eq!(app.restarts(), n);
    }

    app.startup()
        .await
        .assert_throttled("too_many_recoveries", HOUR_S);
    assert_eq!(app.restarts(), 2, "a third restart");
}

#[tokio::test]
async fn after_a_failed_recovery_the_next_request_is_429_cooling_down() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(
        &galaxy,
        Budget {
            max_recoveries: 10,
            window: "1h",
            failure_cooldown: "1h",
        },
    );

    let reply = app.startup().await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.code(), "deadline_exceeded");
    assert_eq!(app.restarts(), 1);

    for _ in 0..3 {
        let reply = app.startup().await;
        reply.assert_throttled("cooling_down", HOUR_S);
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("did not answer"),
            "the last failure is named: {message}"
        );
    }
    app.restart().await.assert_throttled("cooling_down", HOUR_S);
    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn start_limit_hit_is_503_job_failed_then_429_without_another_restart() {
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let app = TestApp::new(
        &galaxy,
        Budget {
            max_recoveries: 10,
            window: "1h",
            failure_cooldown: "1h",
        },
    );
    let start_limit_hit = UnitScript::done()
        .job(Job::Ends("failed"))
        .after(vec![failed("start-limit-hit")]);
    app.systemd.script("galaxy.service", start_limit_hit);

    let reply = app.startup().await;

    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["galaxy"], "unavailable");
    assert_eq!(reply.code(), "job_failed");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("start-limit-hit"), "{message}");
    assert_eq!(app.restarts(), 1);

    let reply = app.startup().await;
    reply.assert_throttled("cooling_down", HOUR_S);
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("start-limit-hit"), "{message}");
    assert_eq!(app.systemd.restarts(), ["galaxy.service"]);
}
