//! Asking Galaxy whether it answers: one GET on its URL, bounded in time, judged by status.
//!
//! The verdict tells the recovery what to suspect. Nothing listening at all points at nginx;
//! an answer other than 200 or 302 (nginx's 502 while Galaxy's app server is down, a 500) or
//! no answer in time points at Galaxy. A TLS or name-resolution failure is neither: restarting
//! units would not fix it, so it is reported as such.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use url::Url;

use crate::config::ProbeSettings;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Galaxy answered 200 or 302.
    Online { status: u16 },
    /// The connection was refused or reset: nothing (no nginx) listens.
    Refused { detail: String },
    /// Something answered, but not as a working Galaxy does, or did not answer in time.
    Unhealthy { status: Option<u16>, detail: String },
    /// The probe itself could not be made (TLS, DNS, ...): no restart would change that.
    Broken { detail: String },
}

/// One probe: its verdict, when it started and how long it took.
#[derive(Debug, Clone)]
pub struct Probe {
    pub verdict: Verdict,
    /// When the GET was sent; for a shared probe, earlier than the request that shared it.
    pub started: Instant,
    pub duration: Duration,
}

impl Probe {
    pub fn is_online(&self) -> bool {
        matches!(self.verdict, Verdict::Online { .. })
    }

    /// The HTTP status Galaxy answered with, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match &self.verdict {
            Verdict::Online { status } => Some(*status),
            Verdict::Unhealthy { status, .. } => *status,
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Online { status } => write!(f, "online (HTTP {status})"),
            Verdict::Refused { detail } => write!(f, "nothing listens ({detail})"),
            Verdict::Unhealthy {
                status: Some(status),
                ..
            } => write!(f, "answered HTTP {status}"),
            Verdict::Unhealthy {
                status: None,
                detail,
            } => write!(f, "no answer ({detail})"),
            Verdict::Broken { detail } => write!(f, "cannot probe ({detail})"),
        }
    }
}

type SharedProbe = Shared<BoxFuture<'static, Probe>>;

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("readiness_url", &self.readiness_url)
            .field("readiness_socket", &self.readiness_socket)
            .finish_non_exhaustive()
    }
}

/// The last probe, as `GET /status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeRecord {
    /// When the probe ended (RFC 3339).
    pub at: String,
    pub endpoint: String,
    pub online: bool,
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub latency_ms: u64,
}

/// Probes Galaxy over HTTP(S). Cheap to clone; clones share one client and one record of
/// the last probe.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    last: Arc<Mutex<Option<ProbeRecord>>>,
    /// Probes under way that requests arriving meanwhile share, by URL.
    in_flight: Arc<Mutex<HashMap<Url, SharedProbe>>>,
    readiness_url: Option<Url>,
    readiness_socket: Option<PathBuf>,
    timeout: Duration,
}

impl Prober {
    pub fn new(settings: &ProbeSettings) -> Result<Prober, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("galaxyctl-api/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            // A 302 is Galaxy's normal answer for a login page: it counts as online and is
            // never followed anywhere.
            .redirect(Policy::none())
            .no_proxy()
            .danger_accept_invalid_certs(!settings.verify_tls)
            // Each probe opens its own connection: a pooled one could be a leftover from
            // before a restart and tell nothing about now.
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Prober {
            client,
            last: Arc::default(),
            in_flight: Arc::default(),
            readiness_url: settings.readiness_url.clone(),
            readiness_socket: settings.readiness_socket.clone(),
            timeout: settings.timeout,
        })
    }

    /// GETs `url` (Galaxy's API answers 404 to HEAD) and judges the answer by its status
    /// alone; the body is never read.
    pub async fn probe(&self, url: &Url) -> Probe {
        let started = Instant::now();
        let verdict = match self.client.get(url.clone()).send().await {
            Ok(response) => judge(response.status()),
            Err(e) => classify(&e),
        };
        self.record(url, started, verdict)
    }

    /// Like [`Prober::probe`], but requests that arrive while a probe of the same URL is under
    /// way share its verdict instead of sending one more GET each: a probe that started at
    /// most one probe's time before the request is as good an answer, and a busy dashboard
    /// then costs Galaxy one request at a time, not one per caller.
    pub async fn probe_shared(&self, url: &Url) -> Probe {
        let shared = {
            let mut in_flight = self
                .in_flight
                .lock()
                .expect("probe lock is never held across a panic");
            match in_flight.get(url) {
                Some(shared) => shared.clone(),
                None => {
                    let prober = self.clone();
                    let target = url.clone();
                    let shared = async move { prober.probe(&target).await }.boxed().shared();
                    in_flight.insert(url.clone(), shared.clone());
                    shared
                }
            }
        };
        let probe = shared.clone().await;
        let mut in_flight = self
            .in_flight
            .lock()
            .expect("probe lock is never held across a panic");
        if in_flight
            .get(url)
            .is_some_and(|current| current.ptr_eq(&shared))
        {
            in_flight.remove(url);
        }
        probe
    }

    /// Whether a restarted Galaxy is ready: its readiness URL when one is configured (over
    /// its unix socket when one is), else `endpoint` itself.
    pub async fn probe_ready(&self, endpoint: &Url) -> Probe {
        match (&self.readiness_url, &self.readiness_socket) {
            (Some(url), Some(socket)) => {
                let started = Instant::now();
                let verdict = get_over_socket(socket, url, self.timeout).await;
                self.record(url, started, verdict)
            }
            (Some(url), None) => self.probe(url).await,
            (None, _) => self.probe(endpoint).await,
        }
    }

    /// Whether readiness is judged on something else than the endpoint.
    pub fn has_readiness_probe(&self) -> bool {
        self.readiness_url.is_some()
    }

    fn record(&self, url: &Url, started: Instant, verdict: Verdict) -> Probe {
        let probe = Probe {
            verdict,
            started,
            duration: started.elapsed(),
        };
        let record = ProbeRecord {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            endpoint: url.to_string(),
            online: probe.is_online(),
            verdict: probe.verdict.to_string(),
            http_status: probe.http_status(),
            latency_ms: probe.duration.as_millis() as u64,
        };
        *self
            .last
            .lock()
            .expect("probe record lock is never held across a panic") = Some(record);
        probe
    }

    /// The last probe made by this prober or its clones.
    pub fn last(&self) -> Option<ProbeRecord> {
        self.last
            .lock()
            .expect("probe record lock is never held across a panic")
            .clone()
    }
}

/// One GET of `url`'s path over a unix socket, as nginx would send it to gunicorn.
async fn get_over_socket(socket: &Path, url: &Url, timeout: Duration) -> Verdict {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, url.host_str().unwrap_or("localhost"))
            .header(
                hyper::header::USER_AGENT,
                concat!("galaxyctl-api/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(response.status())
    };
    let shown = socket.display();
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => {
            judge(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY))
        }
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            Verdict::Refused {
                detail: format!("{shown}: {e}"),
            }
        }
        Ok(Err(e)) => Verdict::Unhealthy {
            status: None,
            detail: format!("{shown}: {e}"),
        },
        Err(_) => Verdict::Unhealthy {
            status: None,
            detail: format!("{shown}: no answer within {}s", timeout.as_secs()),
        },
    }
}

fn judge(status: StatusCode) -> Verdict {
    if status == StatusCode::OK || status == StatusCode::FOUND {
        Verdict::Online {
            status: status.as_u16(),
        }
    } else {
        Verdict::Unhealthy {
            status: Some(status.as_u16()),
            detail: format!("HTTP {}", status.as_u16()),
        }
    }
}

fn classify(e: &reqwest::Error) -> Verdict {
    let detail = describe(e);
    if e.is_timeout() {
        return Verdict::Unhealthy {
            status: None,
            detail,
        };
    }
    let io_kind = std::iter::successors(e.source(), |s| (*s).source())
        .find_map(|s| s.downcast_ref::<std::io::Error>())
        .map(|io| io.kind());
    match io_kind {
        Some(
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe,
        ) => Verdict::Refused { detail },
        // A connection that opened and then failed without an answer: something is there,
        // but it does not work.
        _ if e.is_request() && !e.is_connect() => Verdict::Unhealthy {
            status: None,
            detail,
        },
        _ => Verdict::Broken { detail },
    }
}

/// The error and its causes on one line, innermost last.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    for cause in std::iter::successors(e.source(), |s| (*s).source()) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A unix socket that answers every request with `status` and records the request line.
    async fn socket_server(path: &Path, status: u16) -> tokio::task::JoinHandle<String> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let n = stream.read(&mut request).await.unwrap();
            let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request[..n])
                .lines()
                .next()
                .unwrap()
                .to_owned()
        })
    }

    #[tokio::test]
    async fn readiness_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::parse("http://localhost/galaxy/api/version?x=1").unwrap();
        let timeout = Duration::from_secs(5);

        let ok = dir.path().join("ok.sock");
        let server = socket_server(&ok, 200).await;
        assert_eq!(
            get_over_socket(&ok, &url, timeout).await,
            Verdict::Online { status: 200 }
        );
        assert_eq!(
            server.await.unwrap(),
            "GET /galaxy/api/version?x=1 HTTP/1.1"
        );

        let bad = dir.path().join("bad.sock");
        let _server = socket_server(&bad, 502).await;
        assert!(matches!(
            get_over_socket(&bad, &url, timeout).await,
            Verdict::Unhealthy {
                status: Some(502),
                ..
            }
        ));

        let missing = dir.path().join("missing.sock");
        assert!(matches!(
            get_over_socket(&missing, &url, timeout).await,
            Verdict::Refused { .. }
        ));
    }

    /// An HTTP server that answers 200 after `delay` and counts its connections.
    async fn slow_server(delay: Duration) -> (Url, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/galaxy", listener.local_addr().unwrap())).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = vec![0; 4096];
                    let _ = stream.read(&mut request).await;
                    tokio::time::sleep(delay).await;
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, connections)
    }

    fn prober() -> Prober {
        Prober::new(&ProbeSettings {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            verify_tls: true,
            readiness_url: None,
            readiness_socket: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_probe() {
        use std::sync::atomic::Ordering;
        let (url, connections) = slow_server(Duration::from_millis(300)).await;
        let prober = prober();

        let probes =
            futures_util::future::join_all((0..20).map(|_| prober.probe_shared(&url))).await;
        assert!(probes.iter().all(Probe::is_online));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one GET for all twenty"
        );

        // Once it ended, the next request probes anew.
        assert!(prober.probe_shared(&url).await.is_online());
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_200_and_302_are_online() {
        assert!(matches!(
            judge(StatusCode::OK),
            Verdict::Online { status: 200 }
        ));
        assert!(matches!(
            judge(StatusCode::FOUND),
            Verdict::Online { status: 302 }
        ));
        for status in [201, 204, 301, 303, 401, 404, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(judge(status), Verdict::Unhealthy { .. }),
                "{status} must not count as online"
            );
        }
    }
}
