//! Hostile and malformed requests: a corpus, written by hand and generated, sent through the
//! router, and a few sent as raw bytes to the real listener.
//!
//! Each request must be refused with the status its family calls for, as JSON the dashboard
//! can read, without a panic, a restart or any connection to Galaxy. Galaxy answers 502 while
//! the corpus runs, so a request that slipped through would both be probed and restart units.

mod fakes;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use fakes::{Answer, FakeSystemd, Galaxy, PATIENCE};
use galaxyctl_api::config::Settings;
use galaxyctl_api::http::MAX_BODY_BYTES;

const STARTUP: &str = "/galaxyctl_api/v1.0/galaxy-startup";
const RESTART: &str = "/galaxyctl_api/v1.0/restart";
const INFO: &str = "/galaxyctl_api/v1.0/info";
const STATUS: &str = "/galaxyctl_api/v1.0/status";
const OPERATIONS: &str = "/galaxyctl_api/v1.0/operations";
const METRICS: &str = "/metrics";
const JSON: &str = "application/json";

/// A family of hostile requests and the one answer all of its members must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// A route with a method it does not take: 405 `method_not_allowed`.
    WrongMethod,
    /// A path that is no route: 404 `not_found`.
    NoRoute,
    /// An operation id never handed out: 404 `no_such_operation`.
    NoOperation,
    /// A body not announced as JSON: 415 `unsupported_media_type`.
    MediaType,
    /// More than [`MAX_BODY_BYTES`]: 413 `body_too_large`.
    TooLarge,
    /// Not JSON, or not an object with an `endpoint`: 400 `invalid_json`.
    NotJson,
    /// An `endpoint` that is no http(s) URL to probe: 400 `invalid_endpoint`.
    BadEndpoint,
    /// An http(s) URL outside the Galaxy URL: 403 `endpoint_not_allowed`.
    ForeignEndpoint,
}

impl Family {
    fn expected(self) -> (StatusCode, &'static str) {
        match self {
            Family::WrongMethod => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Family::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            Family::NoOperation => (StatusCode::NOT_FOUND, "no_such_operation"),
            Family::MediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Family::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Family::NotJson => (StatusCode::BAD_REQUEST, "invalid_json"),
            Family::BadEndpoint => (StatusCode::BAD_REQUEST, "invalid_endpoint"),
            Family::ForeignEndpoint => (StatusCode::FORBIDDEN, "endpoint_not_allowed"),
        }
    }
}

/// One hostile request.
#[derive(Debug, Clone)]
struct Case {
    family: Family,
    name: String,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
}

impl Case {
    /// A POST to galaxy-startup announced as JSON.
    fn post(family: Family, name: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
        Case {
            family,
            name: name.into(),
            method: Method::POST,
            path: STARTUP.to_owned(),
            headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
            body: body.into(),
        }
    }

    /// A POST to galaxy-startup asking about `endpoint`.
    fn endpoint(family: Family, name: impl Into<String>, endpoint: Value) -> Case {
        let body = json!({ "endpoint": endpoint }).to_string();
        Case::post(family, name, body)
    }

    fn content_type(mut self, value: HeaderValue) -> Case {
        self.headers
            .retain(|(name, _)| name != header::CONTENT_TYPE);
        self.headers.push((header::CONTENT_TYPE, value));
        self
    }

    fn without_content_type(mut self) -> Case {
        self.headers
            .retain(|(name, _)| name != header::CONTENT_TYPE);
        self
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Case {
        self.headers.push((name, value));
        self
    }

    fn request(&self) -> Request<Body> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request
            .body(Body::from(self.body.clone()))
            .unwrap_or_else(|e| panic!("{}: cannot build the request: {e}", self.name))
    }

    /// Whether the request reaches the authentication of a route that can restart units.
    fn is_protected(&self) -> bool {
        let path = self.path.split('?').next();
        self.method == Method::POST && (path == Some(STARTUP) || path == Some(RESTART))
    }
}

/// The addresses the corpus aims at.
struct Targets {
    /// The only Galaxy URL: `http://127.0.0.1:<galaxy>/galaxy`.
    allowed: String,
    galaxy: u16,
    trap: u16,
}

/// The corpus: every request in it must be refused.
fn corpus(t: &Targets) -> Vec<Case> {
    let mut cases = Vec::new();
    wrong_methods_and_routes(t, &mut cases);
    media_types(t, &mut cases);
    bodies(t, &mut cases);
    endpoint_types(&mut cases);
    odd_endpoints(t, &mut cases);
    generated_endpoints(t, &mut cases);
    header_floods(&mut cases);
    cases
}

/// The dashboard's own request, aimed at the Galaxy URL: dangerous wherever it is routed.
fn valid_body(t: &Targets) -> Vec<u8> {
    json!({ "endpoint": t.allowed }).to_string().into_bytes()
}

fn wrong_methods_and_routes(t: &Targets, cases: &mut Vec<Case>) {
    let body = valid_body(t);
    let request = |family, method: Method, path: &str| Case {
        family,
        name: format!("{method} {path}"),
        method,
        path: path.to_owned(),
        headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        body: body.clone(),
    };
    let brew = Method::from_bytes(b"BREW").unwrap();
    let operation = format!("{OPERATIONS}/0123456789abcdef0123456789abcdef");
    let not_post = [Method::GET, Method::PUT, Method::DELETE, Method::PATCH];
    let not_get = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
    let either = [Method::OPTIONS, Method::TRACE, brew.clone()];
    for path in [STARTUP, RESTART] {
        for method in not_post.iter().chain(&either) {
            cases.push(request(Family::WrongMethod, method.clone(), path));
        }
    }
    for path in [INFO, STATUS, operation.as_str(), METRICS] {
        for method in not_get.iter().chain(&either) {
            cases.push(request(Family::WrongMethod, method.clone(), path));
        }
    }
    for id in [
        "x",
        "0",
        "..",
        "%2e%2e%2fetc%2fpasswd",
        "%00",
        "%C3%A9t%C3%A9",
        "'%20OR%201=1",
        "00000000000000000000000000000000",
        "0123456789ABCDEF0123456789ABCDEF",
    ] {
        let path = format!("{OPERATIONS}/{id}");
        cases.push(request(Family::NoOperation, Method::GET, &path));
    }
    let long_id = format!("{OPERATIONS}/{}", "f".repeat(4096));
    cases.push(Case {
        name: "GET a 4 KiB operation id".to_owned(),
        ..request(Family::NoOperation, Method::GET, &long_id)
    });

    let long = format!("{STARTUP}/{}", "a".repeat(8 * 1024));
    let odd_paths = [
        "/",
        "/galaxy-startup",
        "/galaxyctl_api",
        "/galaxyctl_api/v1.0",
        "/galaxyctl_api/v1.0/",
        "//galaxyctl_api/v1.0/galaxy-startup",
        "/galaxyctl_api//v1.0/galaxy-startup",
        "/galaxyctl_api/v1.0//galaxy-startup",
        "/galaxyctl_api/v1.0/galaxy-startup/",
        "/galaxyctl_api/v1.0/galaxy-startup//",
        "/galaxyctl_api/v1.0/galaxy-startup/..",
        "/galaxyctl_api/v1.0/./galaxy-startup",
        "/galaxyctl_api/v1.0/x/../galaxy-startup",
        "/galaxyctl_api/v1.1/../v1.0/galaxy-startup",
        "/galaxyctl_api%2Fv1.0%2Fgalaxy-startup",
        "/galaxyctl_api/v1.0%2Fgalaxy-startup",
        "/galaxyctl_api/v1.0/galaxy%2Dstartup",
        "/galaxyctl_api/v1.0/galaxy-startup%2F",
        "/galaxyctl_api/v1.0/galaxy-startup%00",
        "/galaxyctl_api/v1.0/galaxy-startup%20",
        "/galaxyctl_api/v1.0/galaxy-startup;x=1",
        "/galaxyctl_api/v1.0/galaxy-startup.json",
        "/GALAXYCTL_API/v1.0/galaxy-startup",
        "/galaxyctl_api/V1.0/galaxy-startup",
        "/galaxyctl_api/v1.0/Galaxy-Startup",
        "/galaxyctl_api/v2.0/galaxy-startup",
        "/galaxyctl_api/v1.0/galaxy-shutdown",
        "/galaxyctl_api/v1.0/info/",
        "/galaxyctl_api/v1.0/restart/",
        "/galaxyctl_api/v1.0/operations",
        "/galaxyctl_api/v1.0/operations/",
        "/galaxyctl_api/v1.0/operations/a/b",
        "/galaxyctl_api/v1.0/metrics",
        "/galaxyctl_api/metrics",
        "/galaxyctl_api/v1.0/../../etc/passwd",
        "/galaxyctl_api/v1.0/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/galaxyctl_api/v1.0/galaxy-startup/%2e%2e",
        "/galaxyctl_api/v1.0/%C3%A9",
        "/galaxyctl_api/v1.0/\u{e9}",
        long.as_str(),
    ];
    for path in odd_paths {
        // `http` refuses a few raw bytes in a URI; what it refuses never reaches a server.
        if path.parse::<axum::http::Uri>().is_err() {
            continue;
        }
        let mut case = request(Family::NoRoute, Method::POST, path);
        if path.len() > 100 {
            case.name = format!("POST {}... ({} bytes)", &path[..60], path.len());
        }
        cases.push(case);
    }
    for method in [Method::GET, Method::PUT, Method::DELETE, brew] {
        cases.push(request(
            Family::NoRoute,
            method,
            "/galaxyctl_api/v1.0/nothing",
        ));
    }
}

fn media_types(t: &Targets, cases: &mut Vec<Case>) {
    let body = valid_body(t);
    cases.push(
        Case::post(Family::MediaType, "no Content-Type", body.clone()).without_content_type(),
    );
    for content_type in [
        "",
        " ",
        "text/plain",
        "text/json",
        "text/html; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=galaxy",
        "application/jsonx",
        "application/json5",
        "application/json-patch+json",
        "application/ld+json",
        "application/problem+json",
        "application/xml",
        "application/octet-stream",
        "application/ json",
        "application/json, text/plain",
        "application/json text/plain",
        "application/*",
        "*/*",
        "json",
        "application",
        "; application/json",
        "application/json\u{b}",
    ] {
        let Ok(value) = HeaderValue::from_str(content_type) else {
            continue;
        };
        cases.push(
            Case::post(
                Family::MediaType,
                format!("Content-Type {content_type:?}"),
                body.clone(),
            )
            .content_type(value),
        );
    }
    // A value that is not visible ASCII cannot be read as a media type at all.
    let latin1 = HeaderValue::from_bytes(b"application/json\xff").unwrap();
    cases.push(
        Case::post(
            Family::MediaType,
            "Content-Type with a latin-1 byte",
            body.clone(),
        )
        .content_type(latin1),
    );
    // The first of two Content-Type headers counts.
    cases.push(
        Case::post(
            Family::MediaType,
            "text/plain then application/json",
            body.clone(),
        )
        .content_type(HeaderValue::from_static("text/plain"))
        .header(header::CONTENT_TYPE, HeaderValue::from_static(JSON)),
    );
    let form = format!("endpoint={}", t.allowed);
    cases.push(
        Case::post(Family::MediaType, "form-encoded body", form).content_type(
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        ),
    );
    let multipart = format!(
        "--galaxy\r\nContent-Disposition: form-data; name=\"endpoint\"\r\n\r\n{}\r\n--galaxy--\r\n",
        t.allowed
    );
    cases.push(
        Case::post(Family::MediaType, "multipart body", multipart).content_type(
            HeaderValue::from_static("multipart/form-data; boundary=galaxy"),
        ),
    );
}

/// A gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = u16::try_from(data.len()).expect("a small payload");
    out.push(1); // the final block, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
    let mut out = if big_endian {
        vec![0xfe, 0xff]
    } else {
        vec![0xff, 0xfe]
    };
    for unit in text.encode_utf16() {
        let bytes = if big_endian {
            unit.to_be_bytes()
        } else {
            unit.to_le_bytes()
        };
        out.extend_from_slice(&bytes);
    }
    out
}

fn bodies(t: &Targets, cases: &mut Vec<Case>) {
    let valid = valid_body(t);
    let valid_text = String::from_utf8(valid.clone()).unwrap();
    let trap = format!("http://127.0.0.1:{}/galaxy", t.trap);
    let not_json = |name: &str, body: Vec<u8>| Case::post(Family::NotJson, name, body);

    // Too small, or not the object the dashboard sends.
    for body in [
        "",
        " ",
        "\n",
        "{}",
        "null",
        "[]",
        "\"x\"",
        "1",
        "-0",
        "true",
        "false",
        "{",
        "}",
        "[",
        "{\"endpoint\"}",
        "{\"endpoint\":}",
        "{\"endpoint\" \"x\"}",
        "{endpoint: \"x\"}",
        "{'endpoint': 'x'}",
        "{\"Endpoint\": \"x\"}",
        "{\"endpoint \": \"x\"}",
        "{\"endpoint\": NaN}",
        "{\"endpoint\": Infinity}",
        "{\"endpoint\": 1e999999}",
        "{\"endpoint\": \"\\ud800\"}",
        "{\"endpoint\": \"\\u00\"}",
        "{\"endpoint\": \"\\x41\"}",
    ] {
        cases.push(not_json(&format!("body {body:?}"), body.into()));
    }
    cases.push(not_json(
        "valid JSON twice",
        format!("{valid_text}{valid_text}").into(),
    ));
    cases.push(not_json(
        "trailing comma",
        valid_text.replace('}', ",}").into(),
    ));
    cases.push(not_json(
        "a comment",
        format!("/* galaxy */ {valid_text}").into(),
    ));
    cases.push(not_json("trailing NUL", [valid.as_slice(), b"\0"].concat()));
    cases.push(not_json("leading NUL", [b"\0", valid.as_slice()].concat()));
    cases.push(not_json(
        "the body as a JSON string",
        json!(valid_text).to_string().into(),
    ));
    cases.push(not_json("in an array", format!("[{valid_text}]").into()));
    // An array is no object, even one whose first element would fill `endpoint`.
    cases.push(not_json(
        "an array holding a URL",
        json!([trap]).to_string().into(),
    ));
    cases.push(not_json(
        "an array holding two URLs",
        json!([trap, t.allowed]).to_string().into(),
    ));
    // Two `endpoint` keys: one parser taking the first, another the last, must not differ.
    cases.push(not_json(
        "duplicate key, trap last",
        format!(r#"{{"endpoint": "{}", "endpoint": "{trap}"}}"#, t.allowed).into(),
    ));
    cases.push(not_json(
        "duplicate key, trap first",
        format!(r#"{{"endpoint": "{trap}", "endpoint": "{}"}}"#, t.allowed).into(),
    ));

    // Encodings the service does not decode.
    cases.push(not_json(
        "UTF-8 BOM",
        [b"\xef\xbb\xbf".as_slice(), &valid].concat(),
    ));
    cases.push(not_json("UTF-16LE", utf16(&valid_text, false)));
    cases.push(not_json("UTF-16BE", utf16(&valid_text, true)));
    cases.push(
        not_json("UTF-16LE announced", utf16(&valid_text, false))
            .content_type(HeaderValue::from_static("application/json; charset=utf-16")),
    );
    let utf32: Vec<u8> = valid_text
        .chars()
        .flat_map(|c| (c as u32).to_le_bytes())
        .collect();
    cases.push(not_json("UTF-32LE", utf32));
    for (name, bytes) in [
        ("invalid UTF-8", b"\xff\xfe".as_slice()),
        ("overlong slash", b"\xc0\xaf"),
        ("encoded surrogate", b"\xed\xa0\x80"),
        ("truncated sequence", b"\xe2\x82"),
    ] {
        let body = [
            br#"{"endpoint": "http://127.0.0.1/"#.as_slice(),
            bytes,
            b"\"}",
        ]
        .concat();
        cases.push(not_json(name, body));
    }
    let latin1 = [
        br#"{"endpoint": "http://gal"#.as_slice(),
        b"\xe4",
        b"xy/\"}",
    ]
    .concat();
    cases.push(
        not_json("latin-1 announced", latin1).content_type(HeaderValue::from_static(
            "application/json; charset=iso-8859-1",
        )),
    );
    let gzip = HeaderValue::from_static("gzip");
    cases.push(
        not_json("gzip garbage", b"\x1f\x8b\x08\x00garbage".to_vec())
            .header(header::CONTENT_ENCODING, gzip.clone()),
    );
    cases.push(
        not_json("gzip of the dashboard's request", gzip_stored(&valid))
            .header(header::CONTENT_ENCODING, gzip),
    );
    for encoding in ["deflate", "br", "zstd", "compress", "x-gzip"] {
        cases.push(
            not_json(
                &format!("{encoding} garbage"),
                b"\x78\x9c\x00garbage".to_vec(),
            )
            .header(header::CONTENT_ENCODING, HeaderValue::from_static(encoding)),
        );
    }
    cases.push(
        not_json("base64 transfer encoding", base64_of(&valid).into_bytes()).header(
            HeaderName::from_static("content-transfer-encoding"),
            HeaderValue::from_static("base64"),
        ),
    );

    // Nesting: the parser's depth limit, then the body limit.
    cases.push(not_json("10k nested arrays", "[".repeat(10_000).into()));
    cases.push(not_json(
        "10k nested objects",
        r#"{"a":"#.repeat(2_000).into(),
    ));
    cases.push(not_json(
        "nested endpoint",
        format!(r#"{{"endpoint": {}"#, "[".repeat(10_000)).into(),
    ));
    // Fields other than `endpoint` are skipped, however deep they go.
    cases.push(Case::post(
        Family::ForeignEndpoint,
        "5k levels in an ignored field",
        format!(
            r#"{{"x": {}1{}, "endpoint": "{trap}"}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        ),
    ));

    // Too much.
    let too_large = |name: &str, body: Vec<u8>| Case::post(Family::TooLarge, name, body);
    cases.push(too_large("100k nested arrays", "[".repeat(100_000).into()));
    cases.push(too_large("one byte over", vec![b' '; MAX_BODY_BYTES + 1]));
    cases.push(too_large(
        "padded request",
        json!({ "endpoint": t.allowed, "padding": "x".repeat(MAX_BODY_BYTES) })
            .to_string()
            .into(),
    ));
    cases.push(too_large("1 MiB of zeros", vec![0; 1 << 20]));
    cases.push(too_large(
        "16 KiB endpoint",
        json!({ "endpoint": format!("{}/{}", t.allowed, "a".repeat(MAX_BODY_BYTES)) })
            .to_string()
            .into(),
    ));
    // Just within the limit, and still not a request.
    let mut full = vec![b' '; MAX_BODY_BYTES - 2];
    full.extend_from_slice(b"{}");
    cases.push(not_json("exactly the limit, whitespace and {}", full));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn endpoint_types(cases: &mut Vec<Case>) {
    for (name, endpoint) in [
        ("number", json!(5001)),
        ("negative number", json!(-1)),
        ("float", json!(1.5)),
        (
            "huge integer",
            serde_json::from_str("123456789012345678901234567890").unwrap(),
        ),
        ("true", json!(true)),
        ("false", json!(false)),
        ("null", Value::Null),
        ("empty array", json!([])),
        ("array of a URL", json!(["http://127.0.0.1/galaxy"])),
        ("empty object", json!({})),
        (
            "object with href",
            json!({ "href": "http://127.0.0.1/galaxy" }),
        ),
        (
            "object with url",
            json!({ "url": "http://127.0.0.1/galaxy" }),
        ),
    ] {
        cases.push(Case::endpoint(
            Family::BadEndpoint,
            format!("endpoint {name}"),
            endpoint,
        ));
    }
}

fn odd_endpoints(t: &Targets, cases: &mut Vec<Case>) {
    let (g, trap) = (t.galaxy, t.trap);
    let bad = [
        "".to_owned(),
        " ".to_owned(),
        "galaxy".to_owned(),
        "/galaxy".to_owned(),
        "//127.0.0.1/galaxy".to_owned(),
        "http:".to_owned(),
        "http://".to_owned(),
        "http:///".to_owned(),
        "http://:80/".to_owned(),
        "http://[::1/".to_owned(),
        "http://[zz]/".to_owned(),
        "http://exa mple.org/galaxy".to_owned(),
        "http://exa\u{0}mple.org/galaxy".to_owned(),
        "http://exa<mple.org/".to_owned(),
        "http://galaxy.example.org\u{2025}evil.example/galaxy".to_owned(),
        "http://127.0.0.1:99999/galaxy".to_owned(),
        format!("http://127.0.0.1:{g}x/galaxy"),
        "http://256.256.256.256/galaxy".to_owned(),
        "http://0x100000000/galaxy".to_owned(),
        "javascript:alert(document.domain)".to_owned(),
        "JaVaScRiPt:alert(1)".to_owned(),
        "data:text/plain,galaxy".to_owned(),
        "data:application/json;base64,e30=".to_owned(),
        "about:blank".to_owned(),
        "mailto:admin@127.0.0.1".to_owned(),
        "file:///etc/passwd".to_owned(),
        "file://127.0.0.1/etc/shadow".to_owned(),
        format!("ftp://127.0.0.1:{g}/galaxy"),
        format!("gopher://127.0.0.1:{trap}/_POST%20/"),
        format!("dict://127.0.0.1:{trap}/info"),
        format!("ldap://127.0.0.1:{trap}/"),
        format!("ws://127.0.0.1:{g}/galaxy"),
        format!("wss://127.0.0.1:{g}/galaxy"),
        "unix:/run/galaxy.sock".to_owned(),
        "http+unix://%2Frun%2Fgalaxy.sock/galaxy".to_owned(),
        format!("http://user@127.0.0.1:{g}/galaxy"),
        format!("http://user:pass@127.0.0.1:{g}/galaxy"),
        format!("http://127.0.0.1:{g}@127.0.0.1:{trap}/galaxy"),
        format!("http://%40@127.0.0.1:{g}/galaxy"),
        format!("{}/{}", t.allowed, "a".repeat(2100)),
    ];
    for endpoint in bad {
        cases.push(Case::endpoint(
            Family::BadEndpoint,
            format!("endpoint {}", shorten(&endpoint)),
            json!(endpoint),
        ));
    }

    let foreign = [
        format!("http://127.0.0.1:{trap}/galaxy"),
        format!(" http://127.0.0.1:{trap}/galaxy"),
        format!("http://127.0.0.1:{trap}/galaxy\r\n"),
        format!("http://127.0.0.1:{trap}\t/galaxy"),
        format!("http://127.0.0.1:{g}/gal axy"),
        format!("http://127.0.0.1:{g}/galaxy\r\nHost: evil.example"),
        format!("http://127.0.0.1:{g}/\u{0}galaxy"),
        format!("http://127.0.0.1:{g}/galaxy\u{0}x"),
        format!("http://127.0.0.1:{g}/galaxy%00"),
        format!("http://127.0.0.1:{g}/galaxy/%2e%2e/%2e%2e/etc/passwd"),
        format!("http://127.0.0.1:{g}/galaxy%2f..%2fadmin"),
        format!("http://127.0.0.1:{g}/%67alaxy"),
        format!("http://127.0.0.1:{g}/galax%79"),
        format!("http://127\u{3002}0\u{3002}0\u{3002}1:{trap}/galaxy"),
        format!("http://\u{ff11}\u{ff12}\u{ff17}.0.0.1:{trap}/galaxy"),
        "http://g\u{e4}laxy.example.org/galaxy".to_owned(),
        "http://xn--glaxy-gra.example.org/galaxy".to_owned(),
        "http://\u{1f30c}.example/galaxy".to_owned(),
        "HTTP://EXAMPLE.ORG/galaxy".to_owned(),
        format!("http://%31%32%37.0.0.1:{trap}/galaxy"),
        format!("http://localhost.:{g}/galaxy"),
        format!("http://LOCALHOST:{g}/galaxy"),
        format!("http://0.0.0.0:{g}/galaxy"),
        format!("http://0:{g}/galaxy"),
        format!("http://[::]:{g}/galaxy"),
        format!("http://[0:0:0:0:0:ffff:7f00:1]:{g}/galaxy"),
        format!("http://[fe80::1]:{g}/galaxy"),
        "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        "http://100.100.100.200/latest/meta-data/".to_owned(),
        format!("http://127.0.0.1:{g}#/galaxy"),
        format!("http://127.0.0.1:{g}?/galaxy"),
    ];
    for endpoint in foreign {
        cases.push(Case::endpoint(
            Family::ForeignEndpoint,
            format!("endpoint {}", shorten(&endpoint)),
            json!(endpoint),
        ));
    }
}

/// Every combination of scheme, host, port and path that is not the Galaxy URL.
fn generated_endpoints(t: &Targets, cases: &mut Vec<Case>) {
    let g = t.galaxy.to_string();
    let trap = t.trap.to_string();
    let hosts = [
        "127.0.0.1",
        "localhost",
        "127.0.0.2",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.1",
        "galaxy.example.org",
    ];
    let ports = [
        Some(g.as_str()),
        Some(trap.as_str()),
        None,
        Some("80"),
        Some("8080"),
    ];
    let paths = [
        "/galaxy",
        "/galaxyx",
        "/",
        "/galaxy/../admin",
        "/admin/galaxy",
    ];
    for scheme in ["http", "https"] {
        for host in hosts {
            for port in ports {
                for path in paths {
                    let is_galaxy = scheme == "http"
                        && host == "127.0.0.1"
                        && port == Some(g.as_str())
                        && path == "/galaxy";
                    if is_galaxy {
                        continue;
                    }
                    let authority = match port {
                        Some(port) => format!("{host}:{port}"),
                        None => host.to_owned(),
                    };
                    let endpoint = format!("{scheme}://{authority}{path}");
                    cases.push(Case::endpoint(
                        Family::ForeignEndpoint,
                        format!("generated {endpoint}"),
                        json!(endpoint),
                    ));
                }
            }
        }
    }
    for scheme in ["ftp", "file", "gopher", "ws"] {
        for port in [&g, &trap] {
            let endpoint = format!("{scheme}://127.0.0.1:{port}/galaxy");
            cases.push(Case::endpoint(
                Family::BadEndpoint,
                format!("generated {endpoint}"),
                json!(endpoint),
            ));
        }
    }
}

fn header_floods(cases: &mut Vec<Case>) {
    // The router sets no limit on headers (hyper does, on the socket): a flood must still end
    // in the body's refusal, never in a crash.
    let mut many = Case::post(Family::NotJson, "1000 headers", "{}");
    for i in 0..1000 {
        let name = HeaderName::from_bytes(format!("x-flood-{i}").as_bytes()).unwrap();
        many = many.header(name, HeaderValue::from_static("galaxy"));
    }
    cases.push(many);
    let big = HeaderValue::from_str(&"g".repeat(100 * 1024)).unwrap();
    cases.push(
        Case::post(Family::NotJson, "a 100 KiB header", "{}")
            .header(HeaderName::from_static("x-big"), big.clone()),
    );
    cases.push(
        Case::post(Family::NotJson, "a 100 KiB Authorization", "{}").header(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", "g".repeat(100 * 1024))).unwrap(),
        ),
    );
    let mut repeated = Case::post(Family::NotJson, "500 Content-Type headers", "{}");
    for _ in 0..500 {
        repeated = repeated.header(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    }
    cases.push(repeated);
    let mut hosts = Case::post(Family::NotJson, "many Host headers", "{}");
    for host in ["127.0.0.1", "evil.example", "169.254.169.254"] {
        hosts = hosts.header(header::HOST, HeaderValue::from_static(host));
    }
    cases.push(hosts);
}

fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        let _ = write!(short, "... ({} bytes)", text.len());
    }
    format!("{short:?}")
}

// --- running it ------------------------------------------------------------------------------

/// A listener that counts the connections it accepts: where a confused service would go.
async fn trap() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted)
}

struct TestApp {
    router: Router,
    galaxy: Galaxy,
    systemd: Arc<FakeSystemd>,
    targets: Targets,
    trap: Arc<AtomicUsize>,
}

impl TestApp {
    async fn new(auth: &str) -> TestApp {
        let galaxy = Galaxy::listening(Answer::BadGateway);
        let (trap_port, trap) = trap().await;
        let targets = Targets {
            allowed: format!("http://127.0.0.1:{}/galaxy", galaxy.addr().port()),
            galaxy: galaxy.addr().port(),
            trap: trap_port,
        };
        let text = format!(
            r#"
[galaxy]
units = ["galaxy.service"]
urls = ["{}"]

[probe]
connect_timeout = "200ms"
timeout = "1s"
interval = "20ms"

[recovery]
readiness_deadline = "1s"
answer_budget = "5s"

[auth]
{auth}
"#,
            targets.allowed
        );
        let settings = Settings::parse(&text, Path::new("hostile.toml")).expect("a valid config");
        let systemd = FakeSystemd::new(&galaxy);
        let router = fakes::router(settings, &systemd);
        TestApp {
            router,
            galaxy,
            systemd,
            targets,
            trap,
        }
    }

    /// Connections to Galaxy and to the trap, and restarts, so far.
    fn touched(&self) -> (usize, usize, usize) {
        (
            self.galaxy.connections(),
            self.trap.load(Ordering::SeqCst),
            self.systemd.restarts().len(),
        )
    }

    /// Nothing reached Galaxy, the trap or systemd.
    fn untouched(&self) -> Result<(), String> {
        let (galaxy, trap) = (self.galaxy.connections(), self.trap.load(Ordering::SeqCst));
        let restarts = self.systemd.restarts();
        if galaxy == 0 && trap == 0 && restarts.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "Galaxy connections {galaxy}, trap connections {trap}, restarts {restarts:?}"
            ))
        }
    }

    /// Sends `case`; returns what was wrong with the answer, if anything.
    async fn check(&self, case: &Case, expected: (StatusCode, &str)) -> Option<String> {
        let before = self.touched();
        let response = self
            .router
            .clone()
            .oneshot(case.request())
            .await
            .expect("infallible");
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = match axum::body::to_bytes(response.into_body(), usize::MAX).await {
            Ok(bytes) => bytes,
            Err(e) => return Some(format!("{}: the body cannot be read: {e}", case.name)),
        };
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(body) => body,
            Err(e) => {
                return Some(format!(
                    "{}: {status} answer is not JSON ({e}): {:?}",
                    case.name,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ))
            }
        };

        let mut wrong = Vec::new();
        let code = body["error"]["code"].as_str().unwrap_or("<none>");
        if (status, code) != expected {
            wrong.push(format!(
                "expected {} {}, got {status} {code}",
                expected.0, expected.1
            ));
        }
        if !body["galaxy"].is_string() {
            wrong.push("no `galaxy` key".to_owned());
        }
        if content_type.as_ref().and_then(|v| v.to_str().ok()) != Some(JSON) {
            wrong.push(format!("Content-Type {content_type:?}"));
        }
        let after = self.touched();
        if after != before {
            wrong.push(format!(
                "Galaxy connections, trap connections, restarts went from {before:?} to {after:?}"
            ));
        }
        (!wrong.is_empty())
            .then(|| format!("[{:?}] {}: {}", case.family, case.name, wrong.join("; ")))
    }

    /// The router still answers, and the dashboard's own request still works.
    async fn assert_still_serving(&self) {
        let info = Request::get(INFO).body(Body::empty()).unwrap();
        let response = self.router.clone().oneshot(info).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);

        self.galaxy.set(Answer::Ok);
        let request = Case::endpoint(
            Family::NotJson,
            "the dashboard's",
            json!(self.targets.allowed),
        );
        let response = self
            .router
            .clone()
            .oneshot(request.request())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(self.galaxy.requests(), 1);
    }
}

#[tokio::test]
async fn the_hostile_corpus_is_refused_without_touching_galaxy() {
    let app = TestApp::new(r#"mode = "none""#).await;
    let cases = corpus(&app.targets);

    let mut sizes = std::collections::BTreeMap::new();
    let mut wrong = Vec::new();
    for case in &cases {
        *sizes.entry(format!("{:?}", case.family)).or_insert(0) += 1;
        if let Some(problem) = app.check(case, case.family.expected()).await {
            wrong.push(problem);
        }
    }
    println!("hostile corpus: {} requests {sizes:?}", cases.len());

    assert!(cases.len() >= 200, "only {} cases", cases.len());
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    app.untouched().unwrap();
    app.assert_still_serving().await;
}

#[tokio::test]
async fn the_hostile_corpus_without_credentials_stops_at_authentication() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "hostile-corpus-token\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tokens.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let auth = format!(
        "mode = \"token\"\ntokens_file = \"{}\"",
        tokens.path().display()
    );
    let app = TestApp::new(&auth).await;
    let cases = corpus(&app.targets);

    // Every third case is enough to cover each family; galaxy-startup refuses them all before
    // reading anything, other routes answer as without authentication.
    let slice: Vec<&Case> = cases.iter().step_by(3).collect();
    let mut wrong = Vec::new();
    for case in &slice {
        let expected = if case.is_protected() {
            let presented = case
                .headers
                .iter()
                .any(|(name, _)| name == header::AUTHORIZATION);
            let code = if presented {
                "invalid_token"
            } else {
                "unauthenticated"
            };
            (StatusCode::UNAUTHORIZED, code)
        } else {
            case.family.expected()
        };
        if let Some(problem) = app.check(case, expected).await {
            wrong.push(problem);
        }
    }
    println!(
        "hostile corpus without credentials: {} requests",
        slice.len()
    );

    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        slice.len(),
        wrong.join("\n")
    );
    app.untouched().unwrap();
}

// --- on a real socket ------------------------------------------------------------------------

/// Serves `app` with the service's own listener on 127.0.0.1:0 until `Server` is dropped.
async fn serve(app: &TestApp) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (router_tx, router_rx) = tokio::sync::watch::channel(app.router.clone());
    tokio::spawn(galaxyctl_api::listener::serve(
        listener,
        None,
        router_rx,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(1),
    ));
    Server {
        addr,
        _stop: stop_tx,
        _router: router_tx,
    }
}

/// A listener serving the app; dropping it stops the listener.
struct Server {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _router: tokio::sync::watch::Sender<Router>,
}

/// What came back on a raw connection before the server closed it.
struct RawAnswer {
    /// The status of the first answer, if one came.
    status: Option<u16>,
    /// Everything after the first answer's headers.
    body: Vec<u8>,
}

impl RawAnswer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes `request`, half-closes when `then_close`, and reads until the server closes the
/// connection (the test fails if it does not within [`PATIENCE`]).
async fn raw(addr: SocketAddr, name: &str, request: &[u8], then_close: bool) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything (a flood): a failed write is fine.
    let _ = stream.write_all(request).await;
    if then_close {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{name}: the server kept the connection open");
    parse_raw(&answer)
}

fn parse_raw(answer: &[u8]) -> RawAnswer {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => answer[end + 4..].to_vec(),
        None => Vec::new(),
    };
    RawAnswer { status, body }
}

fn startup_head(extra: &str) -> String {
    format!(
        "POST {STARTUP} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{extra}"
    )
}

/// What a raw request must get before the connection closes.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// hyper's own refusal (no body of the service's), or none at all.
    Hyper(Option<u16>),
    /// The service's JSON answer with this status and error code.
    Service(u16, &'static str),
}

#[tokio::test]
async fn hostile_connections_are_answered_or_closed_without_restarts() {
    let app = TestApp::new(r#"mode = "none""#).await;
    let server = serve(&app).await;
    let valid = String::from_utf8(valid_body(&app.targets)).unwrap();
    let with_body = |extra: &str| {
        format!(
            "{}{extra}Content-Length: {}\r\n\r\n{valid}",
            startup_head(""),
            valid.len()
        )
    };

    let mut flood = String::new();
    for i in 0..200 {
        let _ = write!(flood, "X-Flood-{i}: galaxy\r\n");
    }
    let big_header = format!("X-Big: {}\r\n", "g".repeat(100 * 1024));
    let mut chunked = startup_head("Transfer-Encoding: chunked\r\n\r\n");
    for _ in 0..8 {
        let _ = write!(chunked, "1000\r\n{}\r\n", "x".repeat(4096));
    }
    chunked.push_str("0\r\n\r\n");

    let cases: Vec<(&str, Vec<u8>, bool, Expect)> = vec![
        // More headers than the listener takes, or more header bytes than it buffers.
        (
            "200 headers",
            with_body(&flood).into(),
            false,
            Expect::Hyper(Some(431)),
        ),
        (
            "a 100 KiB header",
            with_body(&big_header).into(),
            false,
            Expect::Hyper(Some(431)),
        ),
        // The client goes before the headers end: no answer is owed.
        (
            "truncated headers",
            format!("{}Content-Le", startup_head("")).into(),
            true,
            Expect::Hyper(None),
        ),
        // The client goes before the announced body is in.
        (
            "truncated body",
            format!("{}Content-Length: 1000\r\n\r\n{valid}", startup_head("")).into(),
            true,
            Expect::Service(400, "bad_body"),
        ),
        // Not HTTP/1 at all.
        (
            "garbage",
            b"GARBAGE\r\n\r\n".to_vec(),
            true,
            Expect::Hyper(Some(400)),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            true,
            Expect::Hyper(None),
        ),
        (
            "TLS client hello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            true,
            Expect::Hyper(Some(400)),
        ),
        ("NUL bytes", vec![0; 64], true, Expect::Hyper(Some(400))),
        // Ambiguous framing, the stuff of request smuggling: chunked wins and its body is
        // empty; what follows is never read as a second request.
        (
            "Content-Length and chunked",
            format!(
                "{}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                startup_head(""),
                with_body("")
            )
            .into(),
            true,
            Expect::Service(400, "invalid_json"),
        ),
        (
            "two Content-Lengths",
            format!(
                "{}Content-Length: 2\r\nContent-Length: {}\r\n\r\n{valid}",
                startup_head(""),
                valid.len()
            )
            .into(),
            true,
            Expect::Hyper(Some(400)),
        ),
        (
            "negative Content-Length",
            format!("{}Content-Length: -1\r\n\r\n{valid}", startup_head("")).into(),
            true,
            Expect::Hyper(Some(400)),
        ),
        (
            "unknown transfer coding",
            format!("{}Transfer-Encoding: gzip\r\n\r\n{valid}", startup_head("")).into(),
            true,
            Expect::Hyper(Some(400)),
        ),
        // A chunked body over the limit is refused by the service itself.
        (
            "32 KiB chunked",
            chunked.into(),
            false,
            Expect::Service(413, "body_too_large"),
        ),
    ];

    let mut wrong = Vec::new();
    for (name, request, half_close, expect) in &cases {
        let answer = raw(server.addr, name, request, *half_close).await;
        let fine = match *expect {
            Expect::Hyper(status) => answer.status == status,
            Expect::Service(status, code) => {
                let body: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                answer.status == Some(status)
                    && body["error"]["code"] == code
                    && body["galaxy"].is_string()
            }
        };
        if !fine {
            wrong.push(format!(
                "{name}: expected {expect:?}, got {:?} {:?}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
    }
    println!("hostile connections: {} requests", cases.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    app.untouched().unwrap();

    // The listener still serves.
    let info = format!("GET {INFO} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let answer = raw(server.addr, "GET /info", info.as_bytes(), false).await;
    assert_eq!(answer.status, Some(200));
    assert_eq!(answer.json()["name"], "galaxyctl-api");
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_disconnected() {
    // The listener gives a client a bounded time for its headers (10 s); the test only waits
    // for the disconnection, within PATIENCE, and asserts nothing about how long it took.
    let app = TestApp::new(r#"mode = "none""#).await;
    let server = serve(&app).await;

    let answer = raw(
        server.addr,
        "stalled headers",
        startup_head("X-Slow: ").as_bytes(),
        false,
    )
    .await;

    assert_eq!(answer.status, None);
    app.untouched().unwrap();
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_is_answered_and_disconnected() {
    let app = TestApp::new(r#"mode = "none""#).await;
    let server = serve(&app).await;

    // A length far over the limit needs no body to be refused; a body that stops coming must
    // not hold a connection (and its task) for ever. Both wait at once.
    let huge = format!(
        "{}Content-Length: 1000000000000\r\n\r\n{{",
        startup_head("")
    );
    let stalled = format!(
        "{}Content-Length: 1000\r\n\r\n{{\"endpoint\": ",
        startup_head("")
    );
    let (huge, stalled) = tokio::join!(
        raw(server.addr, "announced 1 TB", huge.as_bytes(), false),
        raw(server.addr, "stalled body", stalled.as_bytes(), false),
    );

    assert_eq!(huge.status, Some(413), "announced 1 TB");
    assert_eq!(huge.json()["error"]["code"], "body_too_large");
    if let Some(status) = stalled.status {
        assert!((400..500).contains(&status), "stalled body: {status}");
        assert!(stalled.json()["galaxy"].is_string());
    }
    app.untouched().unwrap();
}
