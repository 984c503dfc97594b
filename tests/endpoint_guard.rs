//! A request's `endpoint` is chosen by the caller; the service must only ever connect to the
//! configured Galaxy URL. Every other origin and path is refused before any connection, which
//! a trap proves: listeners on the addresses a confused service might reach record every
//! connection they accept, and must record none.

mod fakes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use fakes::{Answer, FakeSystemd, Galaxy};
use galaxyctl_api::config::Settings;

const STARTUP: &str = "/galaxyctl_api/v1.0/galaxy-startup";

/// Listeners that count the connections they accept, and where they came in.
#[derive(Clone, Default)]
struct Trap {
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Trap {
    /// Listens on `addr` (port 0 for any) and returns the address it got, or `None` when the
    /// address does not exist on this host (no IPv6, say).
    async fn listen(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let listener = TcpListener::bind(addr).await.ok()?;
        let local = listener.local_addr().ok()?;
        let trap = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                trap.accepted.fetch_add(1, Ordering::SeqCst);
                trap.seen.lock().unwrap().push(local);
                drop(stream);
            }
        });
        Some(local)
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

/// The trap's own port on 127.0.0.1, 127.0.0.2 and ::1, and Galaxy's port on the addresses
/// that are not Galaxy's (127.0.0.2 and ::1), so that a probe of another spelling of the host
/// lands in the trap instead of failing silently.
async fn set_trap(galaxy: &Galaxy) -> (Trap, u16) {
    let trap = Trap::default();
    let port = trap
        .listen("127.0.0.1:0".parse().unwrap())
        .await
        .expect("listen on 127.0.0.1")
        .port();
    let galaxy_port = galaxy.addr().port();
    for host in ["127.0.0.2", "[::1]"] {
        for port in [port, galaxy_port] {
            let _ = trap.listen(format!("{host}:{port}").parse().unwrap()).await;
        }
    }
    (trap, port)
}

struct TestApp {
    router: Router,
    systemd: Arc<FakeSystemd>,
}

/// An app whose only Galaxy URL is `allowed`, with `galaxy` behind it for the fake systemd.
fn app(galaxy: &Galaxy, allowed: &str) -> TestApp {
    let text = format!(
        r#"
[galaxy]
units = ["galaxy.service"]
urls = ["{allowed}"]

[probe]
connect_timeout = "200ms"
timeout = "1s"
interval = "20ms"

[recovery]
readiness_deadline = "1s"
answer_budget = "5s"

[auth]
mode = "none"
"#
    );
    let settings = Settings::parse(&text, Path::new("guard.toml")).expect("a valid config");
    let systemd = FakeSystemd::new(galaxy);
    let router = fakes::router(settings, &systemd);
    TestApp { router, systemd }
}

async fn post(router: &Router, endpoint: &str) -> (StatusCode, Value) {
    let request = Request::post(STARTUP)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "endpoint": endpoint }).to_string()))
        .unwrap();
    let reply = fakes::send(router, request).await;
    (reply.status, reply.body)
}

#[tokio::test]
async fn endpoints_outside_the_galaxy_url_are_refused_before_any_connection() {
    // Galaxy answers 502: a refused endpoint that still got probed there would also restart.
    let galaxy = Galaxy::listening(Answer::BadGateway);
    let (trap, t) = set_trap(&galaxy).await;
    let g = galaxy.addr().port();
    let allowed = format!("http://127.0.0.1:{g}/galaxy");
    let app = app(&galaxy, &allowed);

    let not_allowed = (StatusCode::FORBIDDEN, "endpoint_not_allowed");
    let invalid = (StatusCode::BAD_REQUEST, "invalid_endpoint");
    let cases: Vec<(&str, String, (StatusCode, &str))> = vec![
        // Another origin.
        (
            "another port",
            format!("http://127.0.0.1:{t}/galaxy"),
            not_allowed,
        ),
        (
            "default port",
            "http://127.0.0.1/galaxy".into(),
            not_allowed,
        ),
        (
            "localhost, trap port",
            format!("http://localhost:{t}/galaxy"),
            not_allowed,
        ),
        (
            "localhost, Galaxy port",
            format!("http://localhost:{g}/galaxy"),
            not_allowed,
        ),
        (
            "127.0.0.2, trap port",
            format!("http://127.0.0.2:{t}/galaxy"),
            not_allowed,
        ),
        (
            "127.0.0.2, Galaxy port",
            format!("http://127.0.0.2:{g}/galaxy"),
            not_allowed,
        ),
        (
            "decimal IPv4",
            format!("http://2130706433:{t}/galaxy"),
            not_allowed,
        ),
        (
            "hex IPv4",
            format!("http://0x7f.0.0.1:{t}/galaxy"),
            not_allowed,
        ),
        (
            "short IPv4",
            format!("http://127.1:{t}/galaxy"),
            not_allowed,
        ),
        (
            "trailing dot",
            format!("http://127.0.0.1.:{t}/galaxy"),
            not_allowed,
        ),
        (
            "a name under the address",
            format!("http://127.0.0.1.nip.io:{g}/galaxy"),
            not_allowed,
        ),
        (
            "cloud metadata",
            "http://169.254.169.254/latest/meta-data/".into(),
            not_allowed,
        ),
        (
            "metadata on the Galaxy path",
            format!("http://169.254.169.254:{g}/galaxy"),
            not_allowed,
        ),
        (
            "IPv6 loopback, Galaxy port",
            format!("http://[::1]:{g}/galaxy"),
            not_allowed,
        ),
        (
            "IPv6 loopback, trap port",
            format!("http://[::1]:{t}/galaxy"),
            not_allowed,
        ),
        (
            "IPv4-mapped IPv6",
            format!("http://[::ffff:127.0.0.1]:{g}/galaxy"),
            not_allowed,
        ),
        (
            "IPv4-mapped IPv6, hex",
            format!("http://[::ffff:7f00:1]:{g}/galaxy"),
            not_allowed,
        ),
        (
            "IPv4-compatible IPv6",
            format!("http://[::127.0.0.1]:{g}/galaxy"),
            not_allowed,
        ),
        (
            "https on the http port",
            format!("https://127.0.0.1:{g}/galaxy"),
            not_allowed,
        ),
        // Another path on Galaxy's origin.
        (
            "dot-dot out",
            format!("http://127.0.0.1:{g}/galaxy/../x"),
            not_allowed,
        ),
        (
            "encoded dot-dot",
            format!("http://127.0.0.1:{g}/galaxy/%2e%2e/x"),
            not_allowed,
        ),
        (
            "encoded dot-dot, capitals",
            format!("http://127.0.0.1:{g}/galaxy/%2E%2E"),
            not_allowed,
        ),
        (
            "half-encoded dot-dot",
            format!("http://127.0.0.1:{g}/galaxy/.%2e/x"),
            not_allowed,
        ),
        (
            "longer first segment",
            format!("http://127.0.0.1:{g}/galaxyx"),
            not_allowed,
        ),
        (
            "path in capitals",
            format!("http://127.0.0.1:{g}/GALAXY"),
            not_allowed,
        ),
        (
            "another prefix",
            format!("http://127.0.0.1:{g}/admin/galaxy"),
            not_allowed,
        ),
        ("the root", format!("http://127.0.0.1:{g}/"), not_allowed),
        ("no path", format!("http://127.0.0.1:{g}"), not_allowed),
        (
            "backslashes",
            format!(r"http:\\127.0.0.1:{t}\galaxy"),
            not_allowed,
        ),
        (
            "at-sign in the path",
            format!("http://127.0.0.1:{g}/galaxy@127.0.0.1:{t}/"),
            not_allowed,
        ),
        (
            "at-sign after a fragment",
            format!("http://127.0.0.1:{g}#@127.0.0.1:{t}/galaxy"),
            not_allowed,
        ),
        (
            "at-sign after a query",
            format!("http://127.0.0.1:{g}?@127.0.0.1:{t}/galaxy"),
            not_allowed,
        ),
        (
            "backslash before the at-sign",
            format!(r"http://127.0.0.1:{t}\@127.0.0.1:{g}/galaxy"),
            not_allowed,
        ),
        // Userinfo: whatever it spells, a URL with credentials is refused.
        (
            "Galaxy's origin as userinfo",
            format!("http://127.0.0.1:{g}@127.0.0.1:{t}/galaxy"),
            invalid,
        ),
        (
            "user at the trap",
            format!("http://x@127.0.0.1:{t}/galaxy"),
            invalid,
        ),
        (
            "user at Galaxy",
            format!("http://x@127.0.0.1:{g}/galaxy"),
            invalid,
        ),
        (
            "user and password",
            format!("http://a:b@127.0.0.1:{g}/galaxy"),
            invalid,
        ),
        (
            "encoded at-sign",
            format!("http://x%40y@127.0.0.1:{g}/galaxy"),
            invalid,
        ),
        // Not http(s).
        ("file", "file:///etc/passwd".into(), invalid),
        ("ftp", format!("ftp://127.0.0.1:{g}/galaxy"), invalid),
        (
            "gopher",
            format!("gopher://127.0.0.1:{t}/_GET%20/"),
            invalid,
        ),
        ("websocket", format!("ws://127.0.0.1:{g}/galaxy"), invalid),
        ("javascript", "javascript:fetch('/')".into(), invalid),
        ("data", "data:text/html,<h1>galaxy</h1>".into(), invalid),
        ("no scheme", format!("127.0.0.1:{g}/galaxy"), invalid),
        (
            "scheme-relative",
            format!("//127.0.0.1:{g}/galaxy"),
            invalid,
        ),
        (
            "port out of range",
            format!("http://127.0.0.1:{}/galaxy", 65536 + u32::from(g)),
            invalid,
        ),
        (
            "port with a suffix",
            format!("http://127.0.0.1:{g}.evil.example/galaxy"),
            invalid,
        ),
    ];

    let mut wrong = Vec::new();
    for (name, endpoint, (status, code)) in &cases {
        let (got, body) = post(&app.router, endpoint).await;
        let got_code = body["error"]["code"].as_str().unwrap_or("<none>");
        if got != *status || got_code != *code || body["galaxy"] != "unknown" {
            wrong.push(format!(
                "{name} ({endpoint}): expected {status} {code}, got {got} {body}"
            ));
        }
        if trap.connections() != 0 || galaxy.connections() != 0 {
            wrong.push(format!(
                "{name} ({endpoint}): connections: trap {:?}, Galaxy {}",
                trap.seen(),
                galaxy.connections()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(trap.connections(), 0);
    assert_eq!(galaxy.connections(), 0);
    assert!(
        app.systemd.restarts().is_empty(),
        "{:?}",
        app.systemd.restarts()
    );
}

#[tokio::test]
async fn endpoints_under_the_galaxy_url_are_probed_there_only() {
    let galaxy = Galaxy::listening(Answer::Ok);
    let (trap, _) = set_trap(&galaxy).await;
    let g = galaxy.addr().port();
    let app = app(&galaxy, &format!("http://127.0.0.1:{g}/galaxy"));

    let endpoints = [
        format!("http://127.0.0.1:{g}/galaxy"),
        format!("http://127.0.0.1:{g}/galaxy/"),
        format!("http://127.0.0.1:{g}/galaxy/api/version"),
        format!("http://127.0.0.1:{g}/galaxy/api/../api/version"),
        format!("http://127.0.0.1:{g}/galaxy?from=dashboard"),
        format!("HTTP://127.0.0.1:{g}/galaxy"),
    ];
    for (i, endpoint) in endpoints.iter().enumerate() {
        let (status, body) = post(&app.router, endpoint).await;

        assert_eq!(status, StatusCode::OK, "{endpoint}: {body}");
        assert_eq!(body["galaxy"], "online", "{endpoint}");
        assert_eq!(galaxy.requests(), i + 1, "{endpoint}");
    }
    assert_eq!(trap.connections(), 0, "{:?}", trap.seen());
    assert!(app.systemd.restarts().is_empty());
}

/// A Galaxy that sends every request elsewhere with a 302.
async fn redirecting_galaxy(location: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(move || {
        let location = location.clone();
        async move { (StatusCode::FOUND, [(header::LOCATION, location)]).into_response() }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn a_redirect_from_galaxy_is_never_followed() {
    let galaxy = Galaxy::closed(Answer::Ok);
    let (trap, t) = set_trap(&galaxy).await;
    let redirecting = redirecting_galaxy(format!("http://127.0.0.1:{t}/steal")).await;
    let allowed = format!("http://{redirecting}/galaxy");
    let app = app(&galaxy, &allowed);

    let (status, body) = post(&app.router, &allowed).await;

    // A 302 is how Galaxy answers with its login page: online, and followed nowhere.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["galaxy"], "online");
    assert_eq!(body["http_status"], 302);
    assert_eq!(trap.connections(), 0, "{:?}", trap.seen());
    assert!(app.systemd.restarts().is_empty());
}

/// A Galaxy that works: 200 on its URL, 404 on pages it does not have, as Galaxy's own
/// router answers.
async fn healthy_galaxy_with_missing_pages() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let app = Router::new().fallback(move |uri: axum::http::Uri| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = match uri.path() {
                "/galaxy" | "/galaxy/" | "/galaxy/api/version" => StatusCode::OK,
                _ => StatusCode::NOT_FOUND,
            };
            Response::builder()
                .status(status)
                .body(Body::from("galaxy"))
                .unwrap()
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, requests)
}

#[tokio::test]
async fn a_missing_page_under_the_galaxy_url_does_not_restart_a_working_galaxy() {
    let (addr, requests) = healthy_galaxy_with_missing_pages().await;
    let galaxy = Galaxy::closed(Answer::Ok);
    let app = app(&galaxy, &format!("http://{addr}/galaxy"));

    let (status, body) = post(&app.router, &format!("http://{addr}/galaxy/no/such/page")).await;

    assert!(requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        app.systemd.restarts(),
        Vec::<String>::new(),
        "{status} {body}"
    );
    assert_ne!(body["galaxy"], "unavailable", "{status} {body}");
}
