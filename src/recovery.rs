//! Bringing Galaxy back: which units to restart, following their jobs, waiting for Galaxy.
//!
//! One recovery runs at a time. A request that finds Galaxy down while a recovery runs joins
//! it instead of starting another, and one that probed before a recovery ended takes that
//! recovery's outcome: any number of concurrent requests cause one restart of each unit. A
//! recovery runs in its own task, so it carries on (and logs its outcome) after the requests
//! that wait for it have answered "starting".

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;
use url::Url;

use crate::config::{NginxRestart, Settings};
use crate::logging::message_id;
use crate::notify::StatusLine;
use crate::probe::{Probe, Prober, Verdict};
use crate::systemd::{JobOutcome, Systemd, SystemdError, UnitState};

/// What the recovery needs from systemd. [`Systemd`] is the real one; tests of the decisions
/// alone may use another.
pub trait UnitControl: Send + Sync + 'static {
    /// Restarts the unit and waits for its job to end.
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<JobOutcome, SystemdError>>;

    /// Reads the unit's state now.
    fn unit_state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, SystemdError>>;
}

impl UnitControl for Systemd {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<JobOutcome, SystemdError>> {
        Systemd::restart(self, unit).boxed()
    }

    fn unit_state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, SystemdError>> {
        Systemd::unit_state(self, unit).boxed()
    }
}

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
                "Galaxy did not answer within {}s of the restart (last probe: {last_probe})",
                after.as_secs()
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
    /// The unit's state once its job ended.
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

/// Where a recovery stands.
#[derive(Debug, Clone)]
pub enum Progress {
    Running {
        id: String,
        /// The units whose restart has been requested so far.
        restarting: Vec<String>,
    },
    Finished(Arc<Report>),
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

/// How a request came to wait on a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// It started a new recovery.
    Started,
    /// A recovery was already running.
    Joined,
    /// A recovery ended after the request's probe; its outcome answers the request.
    Finished,
}

/// The units and timings a recovery works with, taken from [`Settings`]. A recovery keeps
/// the plan it started with, even when the configuration is reloaded meanwhile.
#[derive(Debug, Clone)]
struct Plan {
    prober: Prober,
    galaxy_units: Vec<String>,
    nginx_unit: String,
    nginx_restart: NginxRestart,
    probe_interval: Duration,
    probe_timeout: Duration,
    readiness_deadline: Duration,
    max_recoveries: u32,
    window: Duration,
    failure_cooldown: Duration,
}

#[derive(Debug, Default)]
struct Flights {
    current: Option<watch::Receiver<Progress>>,
    last: Option<(Instant, Arc<Report>)>,
    /// When the recoveries within the window started, oldest first.
    starts: VecDeque<Instant>,
}

impl Flights {
    /// Whether the restart budget allows a new recovery now.
    fn admit(&mut self, plan: &Plan, now: Instant) -> Result<(), Throttled> {
        if let Some((ended, report)) = &self.last {
            if let Err(failure) = &report.outcome {
                let until = *ended + plan.failure_cooldown;
                if now < until {
                    return Err(Throttled::CoolingDown {
                        retry_after: until - now,
                        last_failure: failure.to_string(),
                    });
                }
            }
        }
        while self
            .starts
            .front()
            .is_some_and(|start| now.duration_since(*start) >= plan.window)
        {
            self.starts.pop_front();
        }
        if self.starts.len() >= plan.max_recoveries as usize {
            let oldest = self.starts[0];
            return Err(Throttled::BudgetSpent {
                retry_after: (oldest + plan.window).saturating_duration_since(now),
                max: plan.max_recoveries,
                window: plan.window,
            });
        }
        self.starts.push_back(now);
        Ok(())
    }
}

impl Plan {
    fn new(settings: &Settings, prober: Prober) -> Plan {
        Plan {
            prober,
            galaxy_units: settings.galaxy_units.clone(),
            nginx_unit: settings.nginx_unit.clone(),
            nginx_restart: settings.nginx_restart,
            probe_interval: settings.probe.interval,
            probe_timeout: settings.probe.timeout,
            readiness_deadline: settings.recovery.readiness_deadline,
            max_recoveries: settings.recovery.max_recoveries,
            window: settings.recovery.window,
            failure_cooldown: settings.recovery.failure_cooldown,
        }
    }
}

/// Runs recoveries, one at a time.
pub struct Recovery {
    control: Arc<dyn UnitControl>,
    plan: Mutex<Arc<Plan>>,
    status: Arc<StatusLine>,
    flights: Mutex<Flights>,
}

impl Recovery {
    pub fn new(
        control: Arc<dyn UnitControl>,
        prober: Prober,
        settings: &Settings,
        status: Arc<StatusLine>,
    ) -> Recovery {
        Recovery {
            control,
            plan: Mutex::new(Arc::new(Plan::new(settings, prober))),
            status,
            flights: Mutex::new(Flights::default()),
        }
    }

    /// Waits on the running recovery, or on the one that ended since `probed_at`, or starts
    /// one for `url` given the `probe` that found Galaxy down, if the restart budget allows.
    pub fn join_or_start(
        self: &Arc<Self>,
        url: &Url,
        probe: Probe,
        probed_at: Instant,
    ) -> Result<(Ticket, watch::Receiver<Progress>), Throttled> {
        let mut flights = self
            .flights
            .lock()
            .expect("flights lock is never held across a panic");
        if let Some(current) = &flights.current {
            return Ok((Ticket::Joined, current.clone()));
        }
        if let Some((ended, report)) = &flights.last {
            if *ended > probed_at {
                let (_, rx) = watch::channel(Progress::Finished(report.clone()));
                return Ok((Ticket::Finished, rx));
            }
        }
        let plan = self.plan();
        flights.admit(&plan, Instant::now())?;

        let id = new_id();
        let (tx, rx) = watch::channel(Progress::Running {
            id: id.clone(),
            restarting: Vec::new(),
        });
        flights.current = Some(rx.clone());
        drop(flights);

        let span = tracing::info_span!("recovery", recovery_id = %id);
        let flight = Flight {
            recovery: self.clone(),
            plan,
            id,
            url: url.clone(),
            started: Instant::now(),
            units: Vec::new(),
            tx,
        };
        tokio::spawn(flight.run(probe).instrument(span));
        Ok((Ticket::Started, rx))
    }

    /// Takes new settings; a recovery under way finishes with those it started with.
    pub fn reconfigure(&self, settings: &Settings, prober: Prober) {
        *self
            .plan
            .lock()
            .expect("plan lock is never held across a panic") =
            Arc::new(Plan::new(settings, prober));
    }

    fn plan(&self) -> Arc<Plan> {
        self.plan
            .lock()
            .expect("plan lock is never held across a panic")
            .clone()
    }

    /// The systemd side, for reading the managed units' state.
    pub fn units(&self) -> &Arc<dyn UnitControl> {
        &self.control
    }

    /// Every unit a recovery may restart: the Galaxy units, then nginx.
    pub fn managed_units(&self) -> Vec<String> {
        let plan = self.plan();
        let mut units = plan.galaxy_units.clone();
        units.push(plan.nginx_unit.clone());
        units
    }

    /// The recovery under way, if any: its id and the units restarted so far.
    pub fn running(&self) -> Option<(String, Vec<String>)> {
        let flights = self
            .flights
            .lock()
            .expect("flights lock is never held across a panic");
        let progress = flights.current.as_ref()?.borrow().clone();
        match progress {
            Progress::Running { id, restarting } => Some((id, restarting)),
            Progress::Finished(_) => None,
        }
    }

    /// The outcome of the last recovery, if one ran.
    pub fn last(&self) -> Option<Arc<Report>> {
        let flights = self
            .flights
            .lock()
            .expect("flights lock is never held across a panic");
        flights.last.as_ref().map(|(_, report)| report.clone())
    }
}

/// One recovery in its task.
struct Flight {
    recovery: Arc<Recovery>,
    plan: Arc<Plan>,
    id: String,
    url: Url,
    started: Instant,
    units: Vec<UnitReport>,
    tx: watch::Sender<Progress>,
}

impl Flight {
    async fn run(mut self, probe: Probe) {
        tracing::info!(message_id = message_id::RECOVERY_STARTED, endpoint = %self.url,
            verdict = %probe.verdict, "recovery started");
        let outcome = self.recover(probe).await;
        let duration = self.started.elapsed();
        let duration_ms = duration.as_millis() as u64;
        let units: Vec<&str> = self.units.iter().map(|u| u.unit.as_str()).collect();
        let units = units.join(",");

        let status = self.recovery.status.clone();
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
        match &outcome {
            Ok(()) => {
                tracing::info!(
                    message_id = message_id::RECOVERY_FINISHED,
                    units,
                    duration_ms,
                    outcome = "online",
                    "recovery finished"
                );
                status.recovery(format!(
                    "recovery {stamp}: Galaxy back after {}s",
                    duration.as_secs()
                ));
            }
            Err(failure) => {
                tracing::error!(message_id = message_id::RECOVERY_FAILED, units, duration_ms,
                    outcome = "unavailable", error = failure.code(),
                    reason = %failure, "recovery failed");
                status.recovery(format!("recovery {stamp} failed: {failure}"));
            }
        }

        let report = Arc::new(Report {
            id: self.id,
            outcome,
            units: self.units,
            duration,
            finished_at: SystemTime::now(),
        });
        let mut flights = self
            .recovery
            .flights
            .lock()
            .expect("flights lock is never held across a panic");
        flights.current = None;
        flights.last = Some((Instant::now(), report.clone()));
        self.tx.send_replace(Progress::Finished(report));
    }

    async fn recover(&mut self, mut probe: Probe) -> Result<(), Failure> {
        let plan = self.plan.clone();
        let mut nginx_restarted = false;

        if let Verdict::Refused { .. } = probe.verdict {
            // Nothing listens: the front door is down, whatever Galaxy does behind it.
            self.restart(std::slice::from_ref(&plan.nginx_unit)).await?;
            nginx_restarted = true;
            probe = self.probe_until_listening().await;
            if probe.is_online() {
                return Ok(());
            }
        }

        match &probe.verdict {
            Verdict::Online { .. } => return Ok(()),
            Verdict::Refused { detail } => {
                return Err(Failure::NotListening {
                    detail: detail.clone(),
                })
            }
            Verdict::Broken { detail } => {
                return Err(Failure::ProbeBroken {
                    detail: detail.clone(),
                })
            }
            Verdict::Unhealthy { .. } => {}
        }

        let mut units = plan.galaxy_units.clone();
        if !nginx_restarted && self.nginx_needs_restart(&plan).await {
            units.push(plan.nginx_unit.clone());
        }
        self.restart(&units).await?;
        self.wait_for_galaxy(&plan).await
    }

    async fn nginx_needs_restart(&self, plan: &Plan) -> bool {
        if plan.nginx_restart == NginxRestart::Always {
            return true;
        }
        match self.recovery.control.unit_state(&plan.nginx_unit).await {
            Ok(state) if !state.exists() => {
                tracing::info!(unit = %plan.nginx_unit, "nginx unit not found, left alone");
                false
            }
            Ok(state) => {
                tracing::debug!(unit = %plan.nginx_unit, active_state = %state.active_state,
                    "nginx unit state");
                !state.is_active()
            }
            Err(e) => {
                // The Galaxy restart may still succeed; do not give up on it for this.
                tracing::warn!(unit = %plan.nginx_unit, error = %e, "cannot read nginx state");
                false
            }
        }
    }

    /// Restarts `units` together, follows each job to its end and checks that each unit is
    /// up. The first failure, in the order given, is the one reported.
    async fn restart(&mut self, units: &[String]) -> Result<(), Failure> {
        let control = self.recovery.control.clone();
        self.recovery
            .status
            .recovery(format!("restarting {}", units.join(", ")));
        for unit in units {
            tracing::info!(message_id = message_id::RESTART_REQUESTED, unit = %unit,
                "restart requested");
        }
        self.tx.send_modify(|progress| {
            if let Progress::Running { restarting, .. } = progress {
                restarting.extend(units.iter().cloned());
            }
        });

        let jobs = join_all(units.iter().map(|unit| control.restart(unit))).await;

        let mut first_failure = None;
        for (unit, job) in units.iter().zip(jobs) {
            let mut report = UnitReport {
                unit: unit.clone(),
                job: None,
                state: None,
                error: None,
            };
            let failure = match job {
                Ok(job) => {
                    tracing::info!(message_id = message_id::JOB_FINISHED, unit = %unit,
                        job = %job.job, job_result = %job.result,
                        "job finished");
                    let failure = self.check_unit(unit, &job, &mut report).await;
                    report.job = Some(job);
                    failure
                }
                Err(error) => {
                    tracing::error!(unit = %unit, error = %error,
                        dbus_error = error.dbus_name().unwrap_or(""), "restart refused");
                    report.error = Some(error.to_string());
                    Some(if error.is_no_such_unit() {
                        Failure::NoSuchUnit { unit: unit.clone() }
                    } else {
                        Failure::Bus {
                            unit: Some(unit.clone()),
                            error,
                        }
                    })
                }
            };
            self.units.push(report);
            first_failure = first_failure.or(failure);
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Reads the unit's state after its job ended, records it and says what is wrong with it.
    async fn check_unit(
        &self,
        unit: &str,
        job: &JobOutcome,
        report: &mut UnitReport,
    ) -> Option<Failure> {
        let state = match self.recovery.control.unit_state(unit).await {
            Ok(state) => state,
            Err(error) => {
                report.error = Some(error.to_string());
                return Some(Failure::Bus {
                    unit: Some(unit.to_owned()),
                    error,
                });
            }
        };
        tracing::info!(unit, active_state = %state.active_state, sub_state = %state.sub_state,
            result = state.result.as_deref().unwrap_or(""), "unit state");
        let failure = if job.result != "done" {
            Some(Failure::JobFailed {
                unit: unit.to_owned(),
                job_result: job.result.clone(),
                unit_result: state.result.clone(),
            })
        } else if state.is_failed() {
            Some(Failure::UnitFailed {
                unit: unit.to_owned(),
                result: state.result.clone(),
            })
        } else {
            None
        };
        report.state = Some(state);
        failure
    }

    /// After an nginx restart: probes until something listens, for at most one probe timeout,
    /// since a unit whose job ended may still be opening its socket.
    async fn probe_until_listening(&self) -> Probe {
        let plan = &self.plan;
        let until = Instant::now() + plan.probe_timeout;
        loop {
            let probe = self.probe().await;
            if !matches!(probe.verdict, Verdict::Refused { .. }) || Instant::now() >= until {
                return probe;
            }
            tokio::time::sleep(plan.probe_interval).await;
        }
    }

    /// Probes until Galaxy answers, a Galaxy unit fails or the readiness deadline passes.
    async fn wait_for_galaxy(&self, plan: &Plan) -> Result<(), Failure> {
        self.recovery.status.recovery(format!(
            "restarted {}, waiting for Galaxy",
            plan.galaxy_units.join(", ")
        ));
        let deadline = self.started + plan.readiness_deadline;
        loop {
            let probe = self.probe().await;
            if probe.is_online() {
                return Ok(());
            }
            if let Verdict::Broken { detail } = probe.verdict {
                return Err(Failure::ProbeBroken { detail });
            }
            if Instant::now() >= deadline {
                return Err(Failure::Deadline {
                    after: plan.readiness_deadline,
                    last_probe: probe.verdict.to_string(),
                });
            }

            // A unit whose job ended `done` can still die right after: stop waiting then.
            for unit in &plan.galaxy_units {
                match self.recovery.control.unit_state(unit).await {
                    Ok(state) if state.is_failed() => {
                        tracing::error!(unit = %unit, result = state.result.as_deref().unwrap_or(""),
                            "unit failed while Galaxy was starting");
                        return Err(Failure::UnitFailed {
                            unit: unit.clone(),
                            result: state.result,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(unit = %unit, error = %e, "cannot read unit state"),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(plan.probe_interval.min(left)).await;
        }
    }

    async fn probe(&self) -> Probe {
        let probe = self.plan.prober.probe(&self.url).await;
        tracing::debug!(endpoint = %self.url, verdict = %probe.verdict,
            duration_ms = probe.duration.as_millis() as u64, "probe");
        self.recovery.status.checked(&probe.verdict.to_string());
        probe
    }
}

/// A random identifier for a recovery or a request.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
