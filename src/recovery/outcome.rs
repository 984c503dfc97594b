//! How a recovery ended, or why none started: what answers and logs are made of.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::systemd::{JobOutcome, SystemdError, UnitState};

/// Why a recovery did not bring Galaxy back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// systemd knows no unit of that name.
    NoSuchUnit { unit: String },
    /// The restart job ended with another result than `done`.
    JobFailed {
        unit: String,
        job_result: String,
        unit_result: Option<String>,
    },
    /// The job ended, but the unit then failed.
    UnitFailed {
        unit: String,
        result: Option<String>,
    },
    /// systemd or the bus refused or broke a call.
    Bus {
        unit: Option<String>,
        error: SystemdError,
    },
    /// nginx was restarted, yet still nothing listens at the endpoint.
    NotListening { detail: String },
    /// The endpoint cannot be probed at all (TLS, name resolution).
    ProbeBroken { detail: String },
    /// Galaxy did not answer before the readiness deadline.
    Deadline { after: Duration, last_probe: String },
}

impl Failure {
    /// A stable code for API clients and log queries.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::NoSuchUnit { .. } => "no_such_unit",
            Failure::JobFailed { .. } => "job_failed",
            Failure::UnitFailed { .. } => "unit_failed",
            Failure::Bus { .. } => "bus_error",
            Failure::NotListening { .. } => "not_listening",
            Failure::ProbeBroken { .. } => "probe_failed",
            Failure::Deadline { .. } => "deadline_exceeded",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoSuchUnit { unit } => write!(f, "systemd has no unit named {unit}"),
            Failure::JobFailed {
                unit,
                job_result,
                unit_result,
            } => {
                write!(
                    f,
                    "the restart job of {unit} ended with result `{job_result}`"
                )?;
                match unit_result {
                    Some(result) => write!(f, "; the unit's result is `{result}`"),
                    None => Ok(()),
                }
            }
            Failure::UnitFailed { unit, result } => match result {
                Some(result) => write!(f, "{unit} failed after its restart (result `{result}`)"),
                None => write!(f, "{unit} failed after its restart"),
            },
            Failure::Bus {
                unit: Some(unit),
                error,
            } => write!(f, "systemd call for {unit} failed: {error}"),
            Failure::Bus { unit: None, error } => write!(f, "systemd call failed: {error}"),
            Failure::NotListening { detail } => {
                write!(f, "nginx was restarted but nothing listens: {detail}")
            }
            Failure::ProbeBroken { detail } => write!(f, "Galaxy cannot be probed: {detail}"),
            Failure::Deadline { after, last_probe } => write!(
                f,
                "Galaxy did not answer within {} of the restart (last probe: {last_probe})",
                humantime::format_duration(*after)
            ),
        }
    }
}

/// What happened to one unit during a recovery.
#[derive(Debug, Clone, Serialize)]
pub struct UnitReport {
    pub unit: String,
    /// The restart job and how it ended, when it was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobOutcome>,
    /// The unit's state once its job ended, or later when it was then found failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<UnitState>,
    /// The error systemd answered, with its D-Bus name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a recovery ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub id: String,
    pub outcome: Result<(), Failure>,
    pub units: Vec<UnitReport>,
    pub duration: Duration,
    pub finished_at: SystemTime,
}

/// Why no new recovery starts now, and when one may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttled {
    /// The last recovery failed a short while ago: a Galaxy that fails to start (a crash
    /// loop, systemd's `start-limit-hit`) is reported, not hammered.
    CoolingDown {
        retry_after: Duration,
        last_failure: String,
    },
    /// The configured number of recoveries already started within the window.
    BudgetSpent {
        retry_after: Duration,
        max: u32,
        window: Duration,
    },
}

impl Throttled {
    pub fn code(&self) -> &'static str {
        match self {
            Throttled::CoolingDown { .. } => "cooling_down",
            Throttled::BudgetSpent { .. } => "too_many_recoveries",
        }
    }

    /// Whole seconds to wait, rounded up, at least one.
    pub fn retry_after_secs(&self) -> u64 {
        let (Throttled::CoolingDown { retry_after, .. }
        | Throttled::BudgetSpent { retry_after, .. }) = self;
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Throttled::CoolingDown { last_failure, .. } => write!(
                f,
                "the last recovery failed ({last_failure}); no new one starts for {}s",
                self.retry_after_secs()
            ),
            Throttled::BudgetSpent { max, window, .. } => write!(
                f,
                "{max} recoveries already started within {}s; the next may start in {}s",
                window.as_secs(),
                self.retry_after_secs()
            ),
        }
    }
}
