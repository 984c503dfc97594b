//! Bringing Galaxy back: which units to restart, following their jobs, waiting for Galaxy.
//!
//! One recovery runs at a time. A request that finds Galaxy down while a recovery runs joins
//! it instead of starting another, and one that probed before a recovery ended takes that
//! recovery's outcome: any number of concurrent requests cause one restart of each unit. A
//! recovery runs in its own task, so it carries on (and logs its outcome) after the requests
//! that wait for it have answered "starting".

mod flight;
mod operations;
mod outcome;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::Instrument;
use url::Url;

use crate::config::{NginxRestart, Settings};
use crate::metrics::Metrics;
use crate::notify::StatusLine;
use crate::probe::{Probe, Prober};
use crate::systemd::{JobOutcome, Systemd, SystemdError, UnitState};

use flight::Flight;
pub use operations::{Kind, Operation, Operations, Step};
pub use outcome::{Failure, Report, Throttled, UnitReport};

/// What the recovery needs from systemd. [`Systemd`] is the real one; tests of the decisions
/// alone may use another.
pub trait UnitControl: Send + Sync + 'static {
    /// Restarts the unit and waits for its job to end.
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<JobOutcome, SystemdError>>;

    /// Reads the unit's state now.
    fn unit_state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, SystemdError>>;

    /// The services a target unit pulls in or restarts with it; none for other units.
    fn members<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<Vec<String>, SystemdError>> {
        let _ = unit;
        futures_util::future::ready(Ok(Vec::new())).boxed()
    }

    /// Whether a job is queued or running for the unit.
    fn has_job<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        let _ = unit;
        futures_util::future::ready(Ok(false)).boxed()
    }
}

impl UnitControl for Systemd {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<JobOutcome, SystemdError>> {
        Systemd::restart(self, unit).boxed()
    }

    fn unit_state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, SystemdError>> {
        Systemd::unit_state(self, unit).boxed()
    }

    fn members<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<Vec<String>, SystemdError>> {
        Systemd::members(self, unit).boxed()
    }

    fn has_job<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<bool, SystemdError>> {
        Systemd::has_job(self, unit).boxed()
    }
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

/// Why a recovery is wanted.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A probe found Galaxy down; its verdict says what to suspect.
    Down(Probe),
    /// An administrator asked for a restart of the Galaxy units, whatever Galaxy answers.
    Explicit,
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
    job_timeout: Duration,
    startup_grace: Duration,
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
            job_timeout: settings.recovery.job_timeout,
            startup_grace: settings.recovery.startup_grace,
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
    operations: Operations,
    metrics: Metrics,
    /// Set when the service shuts down, so that requests waiting on a recovery answer.
    stopping: watch::Sender<bool>,
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
            operations: Operations::default(),
            metrics: Metrics::new(),
            stopping: watch::Sender::new(false),
        }
    }

    /// Waits on the running recovery, or on the one that ended since `probed_at`, or starts
    /// one for `url` if the restart budget allows. An explicit restart never takes the outcome
    /// of a recovery that ended before it, since it asks for a restart of its own.
    pub fn join_or_start(
        self: &Arc<Self>,
        url: &Url,
        trigger: Trigger,
        probed_at: Instant,
    ) -> Result<(Ticket, watch::Receiver<Progress>), Throttled> {
        let mut flights = self
            .flights
            .lock()
            .expect("flights lock is never held across a panic");
        if let Some(current) = &flights.current {
            return Ok((Ticket::Joined, current.clone()));
        }
        if let (Trigger::Down(_), Some((ended, report))) = (&trigger, &flights.last) {
            if *ended > probed_at {
                let (_, rx) = watch::channel(Progress::Finished(report.clone()));
                return Ok((Ticket::Finished, rx));
            }
        }
        let plan = self.plan();
        flights.admit(&plan, Instant::now())?;

        let kind = match trigger {
            Trigger::Down(_) => Kind::Startup,
            Trigger::Explicit => Kind::Restart,
        };
        let operation = Arc::new(Operation::new(new_id(), kind));
        self.operations.add(operation.clone());
        let (tx, rx) = watch::channel(Progress::Running {
            id: operation.id.clone(),
            restarting: Vec::new(),
        });
        flights.current = Some(rx.clone());
        drop(flights);

        self.metrics.recovery_started();
        let span = tracing::info_span!("recovery", recovery_id = %operation.id);
        let flight = Flight::new(self.clone(), plan, operation, url.clone(), tx);
        tokio::spawn(flight.run(trigger).instrument(span));
        Ok((Ticket::Started, rx))
    }

    /// Tells the requests waiting on a recovery to answer now: the service is stopping.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Becomes true when the service stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// The service's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A recovery started or finished lately, by id.
    pub fn operation(&self, id: &str) -> Option<Arc<Operation>> {
        self.operations.get(id)
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

/// A random identifier for a recovery or a request.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
