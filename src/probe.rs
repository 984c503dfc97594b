//! Asking Galaxy whether it answers: one GET on its URL, bounded in time, judged by status.
//!
//! The verdict tells the recovery what to suspect. Nothing listening at all points at nginx;
//! an answer other than 200 or 302 (nginx's 502 while Galaxy's app server is down, a 500) or
//! no answer in time points at Galaxy. A TLS or name-resolution failure is neither: restarting
//! units would not fix it, so it is reported as such.

use std::error::Error as _;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

/// One probe: its verdict and how long it took.
#[derive(Debug, Clone)]
pub struct Probe {
    pub verdict: Verdict,
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
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
    last: Arc<Mutex<Option<ProbeRecord>>>,
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
        let probe = Probe {
            verdict,
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
