//! Error answers: every way a request can fail, and the one place statuses are chosen.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{MAX_BODY_BYTES, PREFIX};
use crate::auth::AuthError;
use crate::recovery::{Failure, Throttled};

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
    pub fn as_str(self) -> &'static str {
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
    EndpointNotAllowed,
    Auth(AuthError),
    /// A recovery would be due, but the restart budget says not now.
    Throttled(Throttled),
    NotFound,
    NoSuchOperation,
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
            EndpointNotAllowed => (
                StatusCode::FORBIDDEN,
                Galaxy::Unknown,
                "endpoint_not_allowed",
                "`endpoint` is not a Galaxy URL this service manages".to_owned(),
            ),
            Auth(e @ AuthError::Forbidden(_)) => (
                StatusCode::FORBIDDEN,
                Galaxy::Unknown,
                e.code(),
                e.to_string(),
            ),
            Auth(e @ AuthError::Unavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Galaxy::Unknown,
                e.code(),
                "the caller's token cannot be checked right now".to_owned(),
            ),
            Auth(e) => (
                StatusCode::UNAUTHORIZED,
                Galaxy::Unknown,
                e.code(),
                e.to_string(),
            ),
            Throttled(t) => (
                StatusCode::TOO_MANY_REQUESTS,
                Galaxy::Unavailable,
                t.code(),
                t.to_string(),
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                Galaxy::Unknown,
                "not_found",
                format!("no such route; the API lives under {PREFIX}"),
            ),
            NoSuchOperation => (
                StatusCode::NOT_FOUND,
                Galaxy::Unknown,
                "no_such_operation",
                "no operation of that id is kept; operations are forgotten after a day".to_owned(),
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
    pub(super) fn body(&self) -> (StatusCode, Value) {
        let (status, galaxy, code, message) = self.parts();
        let mut body = json!({
            "galaxy": galaxy.as_str(),
            "error": { "code": code, "message": message },
        });
        if let ApiError::Throttled(t) = self {
            body["retry_after_s"] = json!(t.retry_after_secs());
        }
        (status, body)
    }

    /// Headers the status calls for: `WWW-Authenticate` with a 401, `Retry-After` with a 429.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            ApiError::Auth(AuthError::Missing) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"galaxyctl-api\""),
                );
            }
            ApiError::Auth(AuthError::Invalid(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"galaxyctl-api\", error=\"invalid_token\"",
                    ),
                );
            }
            ApiError::Auth(AuthError::Forbidden(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"galaxyctl-api\", error=\"insufficient_scope\"",
                    ),
                );
            }
            ApiError::Throttled(t) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs()));
            }
            _ => {}
        }
        headers
    }

    /// The response, with `extra` fields added to the body.
    pub(super) fn respond(&self, extra: &[(&str, Value)]) -> Response {
        let (status, mut body) = self.body();
        for (key, value) in extra {
            body[*key] = value.clone();
        }
        (status, self.headers(), Json(body)).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(&[])
    }
}
