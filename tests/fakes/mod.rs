//! Stand-ins for what a recovery talks to, shared by the integration tests: a Galaxy on a
//! local port whose answer each test chooses, and a [`UnitControl`] that plays a script
//! instead of systemd and records every restart asked of it.
//!
//! The fake's restarts act on the Galaxy stand-in (a restart can open its port, or change its
//! answer), which models "restarting the unit brings Galaxy back" without any timing: a test
//! decides what a restart fixes, not how long it takes.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use galaxyctl_api::config::Settings;
use galaxyctl_api::notify::StatusLine;
use galaxyctl_api::probe::Prober;
use galaxyctl_api::recovery::{Recovery, UnitControl};
use galaxyctl_api::systemd::{JobOutcome, SystemdError, UnitState, NO_SUCH_UNIT};

/// A bound on any wait in a test, so that a bug shows as a failure instead of a hung run.
/// Never an assertion on how fast something is.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What the Galaxy stand-in answers to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200, a working Galaxy.
    Ok,
    /// 302 to a login page, also a working Galaxy.
    Found,
    /// 502, nginx while Galaxy's app server is down.
    BadGateway,
    /// 500, a Galaxy that is up but broken.
    ServerError,
    /// Accepts the request and never answers.
    Hang,
}

/// A Galaxy on 127.0.0.1, listening or not. Clones share the same stand-in.
#[derive(Clone)]
pub struct Galaxy {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    answer: Mutex<Answer>,
    listening: Mutex<bool>,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

impl Galaxy {
    /// A stand-in that listens and gives `answer`.
    pub fn listening(answer: Answer) -> Galaxy {
        let galaxy = Galaxy::closed(answer);
        galaxy.open();
        galaxy
    }

    /// A stand-in whose port nothing listens on (connections are refused) until [`open`].
    ///
    /// [`open`]: Galaxy::open
    pub fn closed(answer: Answer) -> Galaxy {
        // Reserve a free port, then let it go: connecting to it is refused from now on.
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = reserved
            .local_addr()
            .expect("a bound socket has an address");
        drop(reserved);
        Galaxy {
            shared: Arc::new(Shared {
                addr,
                answer: Mutex::new(answer),
                listening: Mutex::new(false),
                connections: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
            }),
        }
    }

    /// Starts listening on the stand-in's port; does nothing when it already listens.
    /// Must run inside a tokio runtime.
    pub fn open(&self) {
        let mut listening = self.shared.listening.lock().unwrap();
        if *listening {
            return;
        }
        let socket = TcpSocket::new_v4().expect("create a socket");
        socket.set_reuseaddr(true).expect("set SO_REUSEADDR");
        socket
            .bind(self.shared.addr)
            .expect("bind the stand-in's port again");
        let listener = socket.listen(1024).expect("listen");

        let counter = self.shared.clone();
        let listener = listener.tap_io(move |_| {
            counter.connections.fetch_add(1, Ordering::SeqCst);
        });
        let app = Router::new()
            .fallback(answer)
            .with_state(self.shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *listening = true;
    }

    /// Changes what every later request is answered.
    pub fn set(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// The URL a dashboard would send as `endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// How many TCP connections the stand-in accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many HTTP requests reached the stand-in.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

async fn answer(State(shared): State<Arc<Shared>>) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let answer = *shared.answer.lock().unwrap();
    match answer {
        Answer::Ok => (StatusCode::OK, "Galaxy").into_response(),
        Answer::Found => (StatusCode::FOUND, [(header::LOCATION, "/login")]).into_response(),
        Answer::BadGateway => (StatusCode::BAD_GATEWAY, "Bad Gateway").into_response(),
        Answer::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "Oops").into_response(),
        Answer::Hang => std::future::pending().await,
    }
}

/// Holds scripted restarts back until a test opens it. Clones share the same gate.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
}

impl Gate {
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// How the fake's restart call of a unit ends.
#[derive(Debug, Clone)]
pub enum Job {
    /// The job ends with this result (`done`, `failed`, `canceled`, ...).
    Ends(&'static str),
    /// systemd refuses the call.
    Refused(SystemdError),
    /// The call panics, as a bug in a `UnitControl` would.
    Panics,
}

/// What the fake does for one unit.
#[derive(Debug, Clone)]
pub struct UnitScript {
    pub job: Job,
    /// The state read before the unit is restarted (the unit name is filled in on reading).
    pub before: Result<UnitState, SystemdError>,
    /// The states read after a restart, one per read; the last one stays.
    pub after: Vec<UnitState>,
    /// Whether the restart makes something listen on Galaxy's port (nginx coming back).
    pub opens_port: bool,
    /// What Galaxy answers once the restart's job ended.
    pub brings: Option<Answer>,
    /// When set, the restart's job ends only once this gate opens.
    pub gate: Option<Gate>,
}

impl Default for UnitScript {
    fn default() -> UnitScript {
        UnitScript {
            job: Job::Ends("done"),
            before: Ok(active()),
            after: vec![active()],
            opens_port: false,
            brings: None,
            gate: None,
        }
    }
}

impl UnitScript {
    /// A restart that ends `done` and leaves the unit active.
    pub fn done() -> UnitScript {
        UnitScript::default()
    }

    /// A restart that ends `done` and makes Galaxy give `answer`.
    pub fn bringing(answer: Answer) -> UnitScript {
        UnitScript {
            brings: Some(answer),
            ..UnitScript::default()
        }
    }

    /// A restart that systemd refuses with `error`.
    pub fn refused(error: SystemdError) -> UnitScript {
        UnitScript {
            job: Job::Refused(error),
            ..UnitScript::default()
        }
    }

    pub fn before(mut self, state: UnitState) -> UnitScript {
        self.before = Ok(state);
        self
    }

    pub fn after(mut self, states: Vec<UnitState>) -> UnitScript {
        self.after = states;
        self
    }

    pub fn job(mut self, job: Job) -> UnitScript {
        self.job = job;
        self
    }

    pub fn gated(mut self, gate: &Gate) -> UnitScript {
        self.gate = Some(gate.clone());
        self
    }

    pub fn opens_port(mut self) -> UnitScript {
        self.opens_port = true;
        self
    }
}

fn unit_state(load: &str, active: &str, sub: &str, result: Option<&str>) -> UnitState {
    UnitState {
        unit: String::new(),
        load_state: load.to_owned(),
        active_state: active.to_owned(),
        sub_state: sub.to_owned(),
        result: result.map(str::to_owned),
        invocation_id: "0123456789abcdef0123456789abcdef".to_owned(),
        ..UnitState::default()
    }
}

pub fn active() -> UnitState {
    unit_state("loaded", "active", "running", Some("success"))
}

pub fn inactive() -> UnitState {
    unit_state("loaded", "inactive", "dead", Some("success"))
}

pub fn failed(result: &str) -> UnitState {
    unit_state("loaded", "failed", "failed", Some(result))
}

pub fn not_found() -> UnitState {
    unit_state("not-found", "inactive", "dead", None)
}

/// The error systemd answers for a unit it does not know.
pub fn no_such_unit(unit: &str) -> SystemdError {
    SystemdError::Remote {
        name: NO_SUCH_UNIT.to_owned(),
        message: format!("Unit {unit} not found."),
    }
}

/// A [`UnitControl`] that plays scripts. Units without a script restart `done` and stay
/// active.
pub struct FakeSystemd {
    galaxy: Galaxy,
    units: Mutex<HashMap<String, FakeUnit>>,
    restarts: Mutex<Vec<String>>,
    jobs: AtomicUsize,
}

#[derive(Default)]
struct FakeUnit {
    script: UnitScript,
    restarted: bool,
    reads_since_restart: usize,
}

impl FakeSystemd {
    pub fn new(galaxy: &Galaxy) -> Arc<FakeSystemd> {
        Arc::new(FakeSystemd {
            galaxy: galaxy.clone(),
            units: Mutex::new(HashMap::new()),
            restarts: Mutex::new(Vec::new()),
            jobs: AtomicUsize::new(0),
        })
    }

    /// Sets what the fake does for `unit` from now on.
    pub fn script(&self, unit: &str, script: UnitScript) {
        let mut units = self.units.lock().unwrap();
        units.entry(unit.to_owned()).or_default().script = script;
    }

    /// Every restart asked of the fake, in the order asked.
    pub fn restarts(&self) -> Vec<String> {
        self.restarts.lock().unwrap().clone()
    }
}

impl UnitControl for FakeSystemd {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<JobOutcome, SystemdError>> {
        async move {
            self.restarts.lock().unwrap().push(unit.to_owned());
            let script = {
                let mut units = self.units.lock().unwrap();
                units.entry(unit.to_owned()).or_default().script.clone()
            };
            if let Some(gate) = &script.gate {
                gate.wait().await;
            }

            let result = match script.job {
                Job::Ends(result) => result,
                Job::Refused(error) => return Err(error),
                Job::Panics => panic!("scripted panic in the restart of {unit}"),
            };
            if script.opens_port {
                self.galaxy.open();
            }
            if let Some(answer) = script.brings {
                self.galaxy.set(answer);
            }
            {
                let mut units = self.units.lock().unwrap();
                let fake = units.entry(unit.to_owned()).or_default();
                fake.restarted = true;
                fake.reads_since_restart = 0;
            }
            let job = self.jobs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(JobOutcome {
                job: format!("/org/freedesktop/systemd1/job/{job}"),
                result: result.to_owned(),
            })
        }
        .boxed()
    }

    fn unit_state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, SystemdError>> {
        async move {
            let mut units = self.units.lock().unwrap();
            let fake = units.entry(unit.to_owned()).or_default();
            let mut state = if fake.restarted {
                let last = fake.script.after.len().saturating_sub(1);
                let state = fake.script.after[fake.reads_since_restart.min(last)].clone();
                fake.reads_since_restart += 1;
                state
            } else {
                fake.script.before.clone()?
            };
            state.unit = unit.to_owned();
            Ok(state)
        }
        .boxed()
    }
}

/// The settings a test varies; everything else is short so that tests run fast.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub bus: &'static str,
    pub galaxy_units: &'static [&'static str],
    pub nginx_restart: &'static str,
    /// Both the probe's timeout and its connect timeout: a busy test machine can take a
    /// while for a local TLS handshake, which must not look like a Galaxy that hangs.
    pub probe_timeout: &'static str,
    pub answer_budget: &'static str,
    pub readiness_deadline: &'static str,
    pub max_recoveries: u32,
    pub failure_cooldown: &'static str,
    /// The `[auth]` table's body.
    pub auth: String,
    /// Whether `https://` on the stand-in's port is a Galaxy URL too.
    pub https_too: bool,
}

impl Default for TestConfig {
    fn default() -> TestConfig {
        TestConfig {
            bus: "system",
            galaxy_units: &["galaxy.service"],
            nginx_restart: "when-inactive",
            probe_timeout: "2s",
            // Generous: a request normally gets its outcome long before; these only bound
            // how long a broken recovery can hold a test.
            answer_budget: "10s",
            readiness_deadline: "10s",
            max_recoveries: 10,
            failure_cooldown: "2min",
            auth: r#"mode = "none""#.to_owned(),
            https_too: false,
        }
    }
}

impl TestConfig {
    /// The configuration file, with `galaxy` as the only Galaxy URL.
    pub fn toml(&self, galaxy: &Galaxy) -> String {
        let units: Vec<String> = self.galaxy_units.iter().map(|u| format!("{u:?}")).collect();
        let mut urls = vec![format!("{:?}", galaxy.url())];
        if self.https_too {
            urls.push(format!("\"https://{}/\"", galaxy.addr()));
        }
        format!(
            r#"
listen = "127.0.0.1:5001"
bus = "{bus}"

[galaxy]
units = [{units}]
urls = [{urls}]

[nginx]
unit = "nginx.service"
restart = "{nginx_restart}"

[probe]
connect_timeout = "{probe_timeout}"
timeout = "{probe_timeout}"
interval = "20ms"

[recovery]
job_timeout = "5s"
readiness_deadline = "{readiness_deadline}"
answer_budget = "{answer_budget}"
bus_timeout = "5s"
max_recoveries = {max_recoveries}
window = "15min"
failure_cooldown = "{failure_cooldown}"

[auth]
{auth}
"#,
            bus = self.bus,
            units = units.join(", "),
            urls = urls.join(", "),
            nginx_restart = self.nginx_restart,
            probe_timeout = self.probe_timeout,
            readiness_deadline = self.readiness_deadline,
            answer_budget = self.answer_budget,
            max_recoveries = self.max_recoveries,
            failure_cooldown = self.failure_cooldown,
            auth = self.auth,
        )
    }

    pub fn settings(&self, galaxy: &Galaxy) -> Settings {
        Settings::parse(&self.toml(galaxy), std::path::Path::new("test.toml"))
            .expect("the test configuration is valid")
    }
}

/// An answer of the router: its status, headers, JSON body and the body's text.
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

/// Sends `request` through `router`; the answer must be JSON.
pub async fn send_any(router: &Router, request: axum::http::Request<axum::body::Body>) -> Reply {
    use tower::ServiceExt;
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("read the answer");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status} answer is not JSON ({e}): {text}"));
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Sends `request`; the answer must be JSON with the `galaxy` key the dashboard reads.
pub async fn send(router: &Router, request: axum::http::Request<axum::body::Body>) -> Reply {
    let reply = send_any(router, request).await;
    assert!(
        reply.body["galaxy"].is_string(),
        "{} answer without `galaxy`: {}",
        reply.status,
        reply.text
    );
    reply
}

/// The whole API on the fake, as the service would build it from `settings`.
pub fn router(settings: Settings, systemd: &Arc<FakeSystemd>) -> axum::Router {
    let (recovery, prober) = recovery(&settings, systemd);
    let auth =
        galaxyctl_api::auth::Authenticator::new(&settings.auth).expect("the authenticator starts");
    galaxyctl_api::http::router(galaxyctl_api::http::AppState {
        settings: Arc::new(settings),
        prober,
        recovery,
        status: Arc::new(StatusLine::new("test".to_owned())),
        auth: Arc::new(auth),
    })
}

/// A recovery on the fake, with the prober the settings describe.
pub fn recovery(settings: &Settings, systemd: &Arc<FakeSystemd>) -> (Arc<Recovery>, Prober) {
    let prober = Prober::new(&settings.probe).expect("build the HTTP client");
    let status = Arc::new(StatusLine::new("test".to_owned()));
    let control: Arc<dyn UnitControl> = systemd.clone();
    let recovery = Recovery::new(control, prober.clone(), settings, status);
    (Arc::new(recovery), prober)
}
