//! The HTTP API: routes, request parsing and the handlers; `error.rs` holds every error answer
//! and is the one place statuses are chosen.
//!
//! Every answer under the API prefix is JSON and carries the `galaxy` key the Laniakea
//! Dashboard reads, errors included: the dashboard reads `response.json()["galaxy"]` without
//! looking at the status, and a page that is not JSON would crash it. Only `/metrics`, for
//! Prometheus, answers in text. Each request gets an id, named in its answer and its log
//! entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
use url::Url;

use crate::auth::{bearer_token, Authenticator, Identity};
use crate::config::Settings;
use crate::endpoint::{self, EndpointError};
use crate::listener::Peer;
use crate::logging::message_id;
use crate::notify::StatusLine;
use crate::probe::{Prober, Verdict};
use crate::recovery::{new_id, Failure, Progress, Recovery, Report, Ticket, Trigger};

mod error;

pub use error::{ApiError, Galaxy};

/// The API's path prefix, as the dashboard calls it.
pub const PREFIX: &str = "/galaxyctl_api/v1.0";

/// The largest request body accepted; the dashboard's is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a client has to send its body once its headers are in: the listener bounds the
/// headers, this bounds the rest, so a client that stops sending does not hold a connection.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub prober: Prober,
    pub recovery: Arc<Recovery>,
    pub status: Arc<StatusLine>,
    pub auth: Arc<Authenticator>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    // Everything that can cause a restart sits behind authentication; what only reads does not.
    let protected = Router::new()
        .route("/galaxy-startup", post(galaxy_startup))
        .route("/restart", post(restart))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_caller,
        ));
    let api = Router::new()
        .route("/info", get(info))
        .route("/status", get(status))
        .route("/operations/{id}", get(operation))
        .merge(protected);
    Router::new()
        .nest(PREFIX, api)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(assign_request_id))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("the request handler panicked".to_owned()).into_response()
        }))
        .with_state(state)
}

/// The id of one request, as its answer and its log entries name it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request its id before anything else looks at it.
async fn assign_request_id(mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(RequestId(new_id()));
    next.run(request).await
}

/// The request's id; one is made up if the request never went through the router's layer.
fn request_id(extension: Option<axum::Extension<RequestId>>) -> String {
    extension.map_or_else(new_id, |id| id.0 .0)
}

/// Lets a request through only with credentials the configured mode accepts. A refused
/// request is logged with the reason, never with its token, and goes no further: nothing is
/// parsed, probed or restarted for it.
async fn require_caller(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match app.auth.authenticate(bearer).await {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(error) => {
            let id = request
                .extensions()
                .get::<RequestId>()
                .map_or_else(new_id, |id| id.0.clone());
            let peer = request
                .extensions()
                .get::<Peer>()
                .map_or_else(String::new, |peer| peer.0.to_string());
            // The router nested under the prefix sees the path without it.
            let path = request
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .map_or_else(|| request.uri().path(), |uri| uri.0.path())
                .to_owned();
            tracing::warn!(message_id = message_id::REQUEST_REFUSED, request_id = %id, peer,
                path, error = error.code(), reason = %error, "request refused");
            ApiError::Auth(error).respond(&[("request_id", Value::String(id))])
        }
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
        "galaxy": last_known(&app).as_str(),
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

/// Galaxy's state as far as the last probe and a recovery under way tell; nothing is probed.
fn last_known(app: &AppState) -> Galaxy {
    if app.recovery.running().is_some() {
        return Galaxy::Starting;
    }
    match app.prober.last() {
        Some(probe) if probe.online => Galaxy::Online,
        Some(_) => Galaxy::Unavailable,
        None => Galaxy::Unknown,
    }
}

/// `GET /metrics`: the counters in the Prometheus text format.
async fn metrics(State(app): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        app.recovery.metrics().encode(),
    )
        .into_response()
}

/// `GET /status`: the last probe, each managed unit's state read live from systemd, and the
/// last recovery.
async fn status(State(app): State<AppState>) -> Response {
    let control = app.recovery.units().clone();
    let names = crate::server::managed_units(&app.settings);
    let states = join_all(names.iter().map(|unit| control.unit_state(unit))).await;
    let units: Vec<Value> = names
        .iter()
        .zip(states)
        .map(|(unit, state)| match state {
            Ok(state) => json!(state),
            Err(e) => json!({ "unit": unit, "error": e.to_string() }),
        })
        .collect();

    let last_probe = app.prober.last();
    let running = app.recovery.running();
    let galaxy = last_known(&app);
    let last_recovery = app.recovery.last().map(|report| {
        let mut recovery = json!({
            "id": report.id,
            "finished_at": humantime::format_rfc3339_seconds(report.finished_at).to_string(),
            "outcome": if report.outcome.is_ok() { "online" } else { "unavailable" },
            "duration_ms": report.duration.as_millis() as u64,
            "units": report.units,
        });
        if let Err(failure) = &report.outcome {
            recovery["error"] = json!({ "code": failure.code(), "message": failure.to_string() });
        }
        recovery
    });

    Json(json!({
        "galaxy": galaxy.as_str(),
        "last_probe": last_probe,
        "units": units,
        "recovery_running": running.map(|(id, restarting)| json!({ "id": id, "restarting": restarting })),
        "last_recovery": last_recovery,
        "status": app.status.text(),
    }))
    .into_response()
}

/// `POST /restart`: restarts the Galaxy units now, whatever Galaxy answers (after a change
/// of its configuration, say). Answers at once with the operation to follow.
async fn restart(
    State(app): State<AppState>,
    id: Option<axum::Extension<RequestId>>,
    caller: Option<axum::Extension<Identity>>,
    peer: Option<axum::Extension<Peer>>,
) -> Response {
    let request_id = request_id(id);
    let subject = caller.map(|c| c.0.subject).unwrap_or_default();
    let peer = peer.map_or_else(String::new, |peer| peer.0 .0.to_string());
    let span = tracing::info_span!("request", request_id = %request_id, caller = %subject, peer);
    let _entered = span.enter();

    let url = app.settings.galaxy_urls[0].clone();
    let started = app
        .recovery
        .join_or_start(&url, Trigger::Explicit, Instant::now());
    let id = ("request_id", Value::String(request_id));
    match started {
        Ok((ticket, progress)) => {
            let operation = match &*progress.borrow() {
                Progress::Running { id, .. } => id.clone(),
                Progress::Finished(report) => report.id.clone(),
            };
            tracing::info!(ticket = ?ticket, operation = %operation, "restart asked for");
            let body = json!({
                "galaxy": "starting",
                "message": if ticket == Ticket::Joined {
                    "a recovery was already under way; follow it"
                } else {
                    "the Galaxy units are being restarted"
                },
                "operation": operation_link(&operation),
                "request_id": id.1,
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(throttled) => {
            tracing::warn!(message_id = message_id::REQUEST_REFUSED, error = throttled.code(),
                reason = %throttled, "request refused");
            ApiError::Throttled(throttled).respond(&[id])
        }
    }
}

/// `GET /operations/{id}`: a recovery's steps and outcome.
async fn operation(
    State(app): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match app.recovery.operation(&id) {
        Some(operation) => {
            let mut body = operation.to_json();
            if body.get("galaxy").is_none() {
                body["galaxy"] = json!("starting");
            }
            Json(body).into_response()
        }
        None => ApiError::NoSuchOperation.into_response(),
    }
}

fn operation_link(id: &str) -> Value {
    json!({ "id": id, "href": format!("{PREFIX}/operations/{id}") })
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
    id: Option<axum::Extension<RequestId>>,
    caller: Option<axum::Extension<Identity>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = request_id(id);
    let subject = caller.map(|c| c.0.subject).unwrap_or_default();
    let peer = peer.map_or_else(String::new, |peer| peer.0 .0.to_string());
    let span = tracing::info_span!("request", request_id = %request_id, caller = %subject, peer);
    let id = ("request_id", Value::String(request_id.clone()));
    match startup(&app, &headers, body).instrument(span).await {
        Ok((status, mut body)) => {
            body[id.0] = id.1;
            (status, Json(body)).into_response()
        }
        Err(error) => error.respond(&[id]),
    }
}

async fn startup(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Value), ApiError> {
    // The answer budget counts from the request's arrival, so that body, probe and wait
    // together stay within it.
    let arrived = Instant::now();
    let url = parse_startup(headers, body, &app.settings.galaxy_urls).await?;

    let probe = app.prober.probe_shared(&url).await;
    // A shared probe may have started before this request: a recovery that ended since it
    // started is the one that answers this request.
    let probed_at = probe.started;
    tracing::info!(endpoint = %url, verdict = %probe.verdict,
        http_status = probe.http_status().unwrap_or(0),
        duration_ms = probe.duration.as_millis() as u64, "probe");
    app.status.checked(&probe.verdict.to_string());
    app.recovery.metrics().probed(&probe.verdict);

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

    let (ticket, mut progress) = app
        .recovery
        .join_or_start(&url, Trigger::Down(probe), probed_at)
        .map_err(|throttled| {
            tracing::warn!(message_id = message_id::REQUEST_REFUSED, error = throttled.code(),
                reason = %throttled, retry_after_s = throttled.retry_after_secs(),
                "request refused");
            ApiError::Throttled(throttled)
        })?;
    if ticket != Ticket::Started {
        tracing::info!(ticket = ?ticket, "waiting on the recovery under way");
    }
    let budget = app
        .settings
        .recovery
        .answer_budget
        .saturating_sub(arrived.elapsed());
    let mut stopping = app.recovery.stopping();
    // On shutdown the caller gets what is known now rather than a closed connection: the
    // restart itself is in systemd's hands and goes on.
    let waited = tokio::select! {
        waited = tokio::time::timeout(
            budget,
            progress.wait_for(|p| matches!(p, Progress::Finished(_))),
        ) => Some(waited),
        _ = stopping.wait_for(|stopping| *stopping) => None,
    };
    let recovery_vanished = matches!(waited, Some(Ok(Err(_))));
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
                "operation": operation_link(&id),
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
async fn parse_startup(
    headers: &HeaderMap,
    body: Body,
    galaxy_urls: &[Url],
) -> Result<Url, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }

    let body = read_body(headers, body).await?;
    // serde reads a struct from a JSON array too (`["http://..."]` fills `endpoint`): only
    // the object the dashboard sends is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidJson(
            "the body must be a JSON object with an `endpoint`".to_owned(),
        ));
    }
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
    endpoint::check(&endpoint, galaxy_urls).map_err(|e| match e {
        EndpointError::Invalid(_) => ApiError::InvalidEndpoint(e.to_string()),
        EndpointError::NotAllowed => {
            tracing::warn!(message_id = message_id::REQUEST_REFUSED,
                error = "endpoint_not_allowed", endpoint = %endpoint,
                reason = "the endpoint is not under any of galaxy.urls", "request refused");
            ApiError::EndpointNotAllowed
        }
    })
}

/// Reads the body: at most [`MAX_BODY_BYTES`] of it, refused at once when its announced
/// length is larger, and for at most [`BODY_READ_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(ApiError::BodyTooLarge),
        Ok(Err(e)) => Err(ApiError::BadBody(format!("the body cannot be read: {e}"))),
        Err(_) => Err(ApiError::BadBody(
            "the body did not arrive in time".to_owned(),
        )),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
