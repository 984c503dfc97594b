//! The HTTP API: routes, request parsing, and the one place where answers and statuses are
//! chosen.
//!
//! Every answer is JSON and carries the `galaxy` key the Laniakea Dashboard reads, errors
//! included: the dashboard reads `response.json()["galaxy"]` without looking at the status,
//! and a page that is not JSON would crash it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
use url::Url;

use crate::config::Settings;
use crate::notify::StatusLine;
use crate::probe::{Prober, Verdict};
use crate::recovery::{new_id, Failure, Progress, Recovery, Report, Ticket};

/// The API's path prefix, as the dashboard calls it.
pub const PREFIX: &str = "/galaxyctl_api/v1.0";

/// The largest request body accepted; the dashboard's is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The longest endpoint URL accepted.
const MAX_ENDPOINT_LEN: usize = 2048;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub prober: Prober,
    pub recovery: Arc<Recovery>,
    pub status: Arc<StatusLine>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/galaxy-startup", post(galaxy_startup))
        .route("/info", get(info));
    Router::new()
        .nest(PREFIX, api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("the request handler panicked".to_owned()).into_response()
        }))
        .with_state(state)
}

/// What Galaxy's state is, as far as an answer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Galaxy {
    Online,
    Starting,
    Unavailable,
    /// The request was refused before Galaxy was looked at.
    Unknown,
}

impl Galaxy {
    fn as_str(self) -> &'static str {
        match self {
            Galaxy::Online => "online",
            Galaxy::Starting => "starting",
            Galaxy::Unavailable => "unavailable",
            Galaxy::Unknown => "unknown",
        }
    }
}

/// Everything that turns into an error answer, and the only place statuses are chosen.
#[derive(Debug)]
pub enum ApiError {
    UnsupportedMediaType,
    BodyTooLarge,
    BadBody(String),
    InvalidJson(String),
    InvalidEndpoint(String),
    NotFound,
    MethodNotAllowed,
    /// Galaxy could not be brought back.
    Recovery(Failure),
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, Galaxy, &'static str, String) {
        use ApiError::*;
        match self {
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Galaxy::Unknown,
                "unsupported_media_type",
                "the body must be JSON, sent with Content-Type: application/json".to_owned(),
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Galaxy::Unknown,
                "body_too_large",
                format!("the body must not exceed {MAX_BODY_BYTES} bytes"),
            ),
            BadBody(m) => (
                StatusCode::BAD_REQUEST,
                Galaxy::Unknown,
                "bad_body",
                m.clone(),
            ),
            InvalidJson(m) => (
                StatusCode::BAD_REQUEST,
                Galaxy::Unknown,
                "invalid_json",
                m.clone(),
            ),
            InvalidEndpoint(m) => (
                StatusCode::BAD_REQUEST,
                Galaxy::Unknown,
                "invalid_endpoint",
                m.clone(),
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                Galaxy::Unknown,
                "not_found",
                format!("no such route; the API lives under {PREFIX}"),
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                Galaxy::Unknown,
                "method_not_allowed",
                "this route does not take that method".to_owned(),
            ),
            Recovery(failure @ Failure::ProbeBroken { .. }) => (
                StatusCode::BAD_GATEWAY,
                Galaxy::Unknown,
                failure.code(),
                failure.to_string(),
            ),
            Recovery(failure) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Galaxy::Unavailable,
                failure.code(),
                failure.to_string(),
            ),
            Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Galaxy::Unknown,
                "internal",
                m.clone(),
            ),
        }
    }

    /// The answer's JSON body, to which a handler may add fields.
    fn body(&self) -> (StatusCode, Value) {
        let (status, galaxy, code, message) = self.parts();
        let body = json!({
            "galaxy": galaxy.as_str(),
            "error": { "code": code, "message": message },
        });
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.body();
        (status, Json(body)).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `GET /info`: what this service is and what it manages.
async fn info(State(app): State<AppState>) -> Json<Value> {
    let settings = &app.settings;
    Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "bus": settings.bus,
        "units": {
            "galaxy": settings.galaxy_units,
            "nginx": settings.nginx_unit,
        },
        "status": app.status.text(),
    }))
}

/// The body of a galaxy-startup request. Fields other than `endpoint` are ignored, so that a
/// newer dashboard sending more does not break.
#[derive(Debug, Deserialize)]
struct StartupRequest {
    endpoint: Value,
}

/// `POST /galaxy-startup`: answers whether Galaxy is online, bringing it back first if not.
async fn galaxy_startup(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_id();
    let span = tracing::info_span!("request", request_id = %request_id);
    let (status, mut body) = match startup(&app, &headers, body).instrument(span).await {
        Ok(answer) => answer,
        Err(error) => error.body(),
    };
    body["request_id"] = Value::String(request_id);
    (status, Json(body)).into_response()
}

async fn startup(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Value), ApiError> {
    let url = parse_startup(headers, body)?;

    let probed_at = Instant::now();
    let probe = app.prober.probe(&url).await;
    tracing::info!(endpoint = %url, verdict = %probe.verdict,
        http_status = probe.http_status().unwrap_or(0),
        duration_ms = probe.duration.as_millis() as u64, "probe");
    app.status.checked(&probe.verdict.to_string());

    match &probe.verdict {
        Verdict::Online { status } => {
            return Ok((
                StatusCode::OK,
                json!({ "galaxy": "online", "endpoint": url.as_str(), "http_status": status }),
            ))
        }
        Verdict::Broken { detail } => {
            return Err(ApiError::Recovery(Failure::ProbeBroken {
                detail: detail.clone(),
            }))
        }
        Verdict::Refused { .. } | Verdict::Unhealthy { .. } => {}
    }

    let (ticket, mut progress) = app.recovery.join_or_start(&url, probe, probed_at);
    if ticket != Ticket::Started {
        tracing::info!(ticket = ?ticket, "waiting on the recovery under way");
    }
    let budget = app.settings.recovery.answer_budget;
    let waited = tokio::time::timeout(
        budget,
        progress.wait_for(|p| matches!(p, Progress::Finished(_))),
    )
    .await;
    let recovery_vanished = matches!(waited, Ok(Err(_)));
    drop(waited);

    let current = progress.borrow().clone();
    match current {
        Progress::Finished(report) => answer(&url, &report),
        Progress::Running { .. } if recovery_vanished => Err(ApiError::Internal(
            "the recovery ended without an outcome".to_owned(),
        )),
        Progress::Running { id, restarting } => Ok((
            StatusCode::ACCEPTED,
            json!({
                "galaxy": "starting",
                "endpoint": url.as_str(),
                "message": "Galaxy is being restarted and does not answer yet",
                "recovery": { "id": id, "restarting": restarting },
            }),
        )),
    }
}

/// The answer for a finished recovery.
fn answer(url: &Url, report: &Report) -> Result<(StatusCode, Value), ApiError> {
    let recovery = json!({
        "id": report.id,
        "units": report.units,
        "duration_ms": report.duration.as_millis() as u64,
    });
    match &report.outcome {
        Ok(()) => Ok((
            StatusCode::OK,
            json!({ "galaxy": "online", "endpoint": url.as_str(), "recovery": recovery }),
        )),
        Err(failure) => {
            let (status, mut body) = ApiError::Recovery(failure.clone()).body();
            body["endpoint"] = Value::String(url.to_string());
            body["recovery"] = recovery;
            Ok((status, body))
        }
    }
}

/// Checks the request and returns the endpoint to probe; nothing is probed before this.
fn parse_startup(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Url, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }

    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::BadBody(rejection.body_text())
        }
    })?;
    let request: StartupRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidJson(format!(
            "the body must be a JSON object with an `endpoint`: {e}"
        ))
    })?;
    let Value::String(endpoint) = request.endpoint else {
        return Err(ApiError::InvalidEndpoint(
            "`endpoint` must be a string".to_owned(),
        ));
    };
    parse_endpoint(&endpoint)
}

/// Accepts an absolute http(s) URL with a host and without credentials.
pub fn parse_endpoint(endpoint: &str) -> Result<Url, ApiError> {
    let invalid = |why: &str| ApiError::InvalidEndpoint(format!("`endpoint` {why}"));
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(invalid("is too long"));
    }
    let url = Url::parse(endpoint).map_err(|e| invalid(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    Ok(url)
}
