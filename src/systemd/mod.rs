//! The systemd client: restart a unit and follow its job to the end, read a unit's state.
//!
//! One D-Bus connection per service. At connect time it calls `Subscribe` and installs the
//! `JobRemoved` match, and one task drains that signal stream into a broadcast channel: a
//! stream nobody polls would stall the whole connection. A restart takes a receiver from the
//! channel *before* calling `RestartUnit`, so the end of its job cannot slip by unseen.

mod proxies;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

pub use proxies::{JobProxy, ManagerProxy, ServiceProxy, UnitProxy};

use crate::config::Bus;

/// How many job signals may wait for a slow reader before it starts missing them.
const JOB_CHANNEL_CAPACITY: usize = 1024;

/// The D-Bus error systemd answers for a unit name it knows nothing about.
pub const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// Something that went wrong talking to systemd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemdError {
    /// systemd (or the bus) answered a call with a D-Bus error, kept with its name.
    #[error("{name}: {message}")]
    Remote { name: String, message: String },
    /// The bus could not be reached or the connection broke.
    #[error("D-Bus connection: {0}")]
    Bus(String),
    /// The job did not end within the configured time.
    #[error("the job of {unit} did not finish within {timeout:?}")]
    JobTimeout { unit: String, timeout: Duration },
    /// The unit is not one this service manages; nothing was asked of systemd.
    #[error("{unit} is not a unit this service may restart")]
    NotAllowed { unit: String },
}

impl SystemdError {
    /// The D-Bus error name, when systemd or the bus answered with one.
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            SystemdError::Remote { name, .. } => Some(name),
            _ => None,
        }
    }

    pub fn is_no_such_unit(&self) -> bool {
        self.dbus_name() == Some(NO_SUCH_UNIT)
    }
}

impl From<zbus::Error> for SystemdError {
    fn from(e: zbus::Error) -> SystemdError {
        match e {
            zbus::Error::MethodError(name, message, _) => SystemdError::Remote {
                name: name.to_string(),
                message: message.unwrap_or_default(),
            },
            zbus::Error::FDO(fdo) => {
                let fdo = *fdo;
                SystemdError::Remote {
                    name: zbus::DBusError::name(&fdo).to_string(),
                    message: zbus::DBusError::description(&fdo)
                        .unwrap_or_default()
                        .to_owned(),
                }
            }
            other => SystemdError::Bus(other.to_string()),
        }
    }
}

/// One `JobRemoved` signal.
#[derive(Debug, Clone)]
struct JobRemoved {
    job: OwnedObjectPath,
    result: String,
}

/// How a restart job ended, as systemd reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobOutcome {
    /// The job's object path.
    pub job: String,
    /// The job result: `done` only means the job ended, not that the unit stayed up.
    pub result: String,
}

/// A unit's state as systemd reports it now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitState {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// The service's `Result` (`success`, `exit-code`, `start-limit-hit`, ...); targets have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The invocation id in hex; empty while the unit never ran.
    pub invocation_id: String,
    /// When the unit last changed state (RFC 3339), if it ever did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The service's main process, if it has one now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
    /// How often systemd restarted the service on its own (`Restart=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_restarts: Option<u32>,
    /// When the unit last changed state, in microseconds since the epoch; 0 if never.
    #[serde(skip)]
    pub changed_us: u64,
}

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }

    pub fn is_failed(&self) -> bool {
        self.active_state == "failed"
    }

    pub fn exists(&self) -> bool {
        self.load_state != "not-found"
    }

    /// How long the unit has been in its state, if systemd said when it entered it.
    pub fn active_for(&self) -> Option<Duration> {
        if self.changed_us == 0 {
            return None;
        }
        let entered = std::time::UNIX_EPOCH + Duration::from_micros(self.changed_us);
        std::time::SystemTime::now().duration_since(entered).ok()
    }
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.active_state, self.sub_state)?;
        if let Some(result) = &self.result {
            write!(f, ", result {result}")?;
        }
        Ok(())
    }
}

/// One connection to the bus, subscribed to the manager's job signals.
#[derive(Debug)]
struct Link {
    connection: Connection,
    manager: ManagerProxy<'static>,
    /// Kept only to hand out fresh receivers; never read itself.
    jobs: broadcast::Receiver<JobRemoved>,
    /// Cleared when the signal stream ends or a call finds the connection broken.
    alive: Arc<AtomicBool>,
}

impl Link {
    async fn connect(bus: Bus, call_timeout: Duration) -> Result<Link, SystemdError> {
        let builder = match bus {
            Bus::System => zbus::connection::Builder::system()?,
            Bus::User => zbus::connection::Builder::session()?,
        };
        let connection = builder.method_timeout(call_timeout).build().await?;
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;

        // The match goes in before Subscribe, so not even the first signal is lost.
        let mut signals = manager.receive_job_removed().await?;
        manager.subscribe().await?;

        let alive = Arc::new(AtomicBool::new(true));
        let (jobs_tx, jobs) = broadcast::channel(JOB_CHANNEL_CAPACITY);
        let drained = alive.clone();
        tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                match signal.args() {
                    Ok(args) => {
                        tracing::trace!(job = %args.job.as_str(), unit = %args.unit,
                            result = %args.result, "job removed");
                        // No receiver at the moment is normal: nobody waits for a job.
                        let _ = jobs_tx.send(JobRemoved {
                            job: args.job.clone(),
                            result: args.result.clone(),
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed JobRemoved signal"),
                }
            }
            // Dropping the sender wakes every waiting restart, which then reconnects.
            drained.store(false, Ordering::SeqCst);
            tracing::warn!("the bus closed the job signal stream");
        });

        Ok(Link {
            connection,
            manager,
            jobs,
            alive,
        })
    }

    async fn unit(&self, unit: &str) -> Result<UnitProxy<'static>, SystemdError> {
        let path = self.manager.load_unit(unit).await?;
        Ok(UnitProxy::builder(&self.connection)
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    /// The path of the job queued for `unit`, if there is one.
    async fn pending_job(&self, unit: &str) -> Result<Option<OwnedObjectPath>, SystemdError> {
        let (id, path) = self.unit(unit).await?.job().await?;
        Ok((id != 0).then_some(path))
    }

    async fn job_exists(&self, job: &OwnedObjectPath) -> bool {
        let Ok(builder) = JobProxy::builder(&self.connection).path(job.clone()) else {
            return false;
        };
        match builder.cache_properties(CacheProperties::No).build().await {
            Ok(proxy) => proxy.state().await.is_ok(),
            Err(_) => false,
        }
    }
}

/// How a wait for a job's end was cut short.
enum Interrupted {
    ConnectionLost,
}

/// Waits for the `JobRemoved` signal of `job`.
async fn job_removed(
    link: &Link,
    jobs: &mut broadcast::Receiver<JobRemoved>,
    job: &OwnedObjectPath,
) -> Result<String, Interrupted> {
    loop {
        match jobs.recv().await {
            Ok(removed) if removed.job == *job => return Ok(removed.result),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Our signal may have been among those missed: ask whether the job still
                // exists, and stop waiting for a signal that already passed.
                tracing::warn!(missed, job = %job.as_str(), "job signals were missed");
                if !link.job_exists(job).await {
                    return Ok(UNKNOWN_RESULT.to_owned());
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Err(Interrupted::ConnectionLost),
        }
    }
}

/// The job result reported when a job ended unseen (while the connection was down); the
/// unit's state then tells how it went.
pub const UNKNOWN_RESULT: &str = "unknown";

/// The first pause before a call is tried again; it doubles each time.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// D-Bus errors after which the same call may work a moment later: systemd re-executing
/// (the call in flight gets no reply, the name is briefly unowned) or the bus restarting.
const TRANSIENT_ERRORS: [&str; 4] = [
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Disconnected",
];

impl SystemdError {
    fn is_transient(&self) -> bool {
        match self {
            SystemdError::Remote { name, .. } => TRANSIENT_ERRORS.contains(&name.as_str()),
            SystemdError::Bus(_) => true,
            SystemdError::JobTimeout { .. } | SystemdError::NotAllowed { .. } => false,
        }
    }
}

/// systemd's manager on the system or the user bus. The connection is made again when it
/// breaks, and calls that fail for a passing reason (systemd re-executing, the bus
/// restarting) are tried again with a growing pause, within the call timeout.
#[derive(Debug)]
pub struct Systemd {
    bus: Bus,
    call_timeout: Duration,
    job_timeout: Duration,
    link: tokio::sync::Mutex<Arc<Link>>,
    /// The only units [`Systemd::restart`] acts on; none until [`Systemd::allow`] is called.
    allowed: std::sync::Mutex<Vec<String>>,
}

impl Systemd {
    /// Connects to `bus`, subscribes to the manager's signals and starts draining them.
    ///
    /// `call_timeout` bounds every method call, retries included; `job_timeout` how long a
    /// restart job may take.
    pub async fn connect(
        bus: Bus,
        call_timeout: Duration,
        job_timeout: Duration,
    ) -> Result<Systemd, SystemdError> {
        let link = Link::connect(bus, call_timeout).await?;
        Ok(Systemd {
            bus,
            call_timeout,
            job_timeout,
            link: tokio::sync::Mutex::new(Arc::new(link)),
            allowed: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Names the units that may be restarted: those of the configuration. Whatever a caller
    /// manages to ask for, no other unit is ever restarted through this connection.
    pub fn allow(&self, units: Vec<String>) {
        *self
            .allowed
            .lock()
            .expect("allow-list lock is never held across a panic") = units;
    }

    fn check_allowed(&self, unit: &str) -> Result<(), SystemdError> {
        let allowed = self
            .allowed
            .lock()
            .expect("allow-list lock is never held across a panic");
        if allowed.iter().any(|u| u == unit) {
            Ok(())
        } else {
            Err(SystemdError::NotAllowed {
                unit: unit.to_owned(),
            })
        }
    }

    /// The current connection, made again first if it broke.
    async fn link(&self) -> Result<Arc<Link>, SystemdError> {
        let mut link = self.link.lock().await;
        if !link.alive.load(Ordering::SeqCst) {
            tracing::warn!(bus = ?self.bus, "bus connection lost, connecting again");
            *link = Arc::new(Link::connect(self.bus, self.call_timeout).await?);
            tracing::info!(bus = ?self.bus, "bus connection made again");
        }
        Ok(link.clone())
    }

    /// Runs `call` on the current link, again after a pause while it fails for a passing
    /// reason and time is left before `until`.
    async fn retrying<T, F, Fut>(&self, until: Instant, call: F) -> Result<T, SystemdError>
    where
        F: Fn(Arc<Link>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SystemdError>>,
    {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let attempt = match self.link().await {
                Ok(link) => {
                    let result = call(link.clone()).await;
                    if let Err(SystemdError::Bus(_)) = &result {
                        link.alive.store(false, Ordering::SeqCst);
                    }
                    result
                }
                Err(e) => Err(e),
            };
            match attempt {
                Err(e) if e.is_transient() && Instant::now() + delay < until => {
                    tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64,
                        "systemd call failed, trying again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }

    /// The manager's version, a cheap call that shows the connection works.
    pub async fn version(&self) -> Result<String, SystemdError> {
        let until = Instant::now() + self.call_timeout;
        self.retrying(
            until,
            |link| async move { Ok(link.manager.version().await?) },
        )
        .await
    }

    /// Restarts `unit` (starts it when stopped) and waits for its job to end. The job is
    /// asked for once: if the answer to the call is lost, the unit's pending job is followed
    /// instead of asking again; if the connection breaks while waiting, the job is followed
    /// on a new one.
    pub async fn restart(&self, unit: &str) -> Result<JobOutcome, SystemdError> {
        self.check_allowed(unit)?;
        let deadline = Instant::now() + self.job_timeout;
        let timed_out = || SystemdError::JobTimeout {
            unit: unit.to_owned(),
            timeout: self.job_timeout,
        };

        let (mut link, mut jobs, job) = self.queue_restart(unit, deadline).await?;
        tracing::debug!(unit, job = %job.as_str(), "restart job queued");
        loop {
            let waited =
                tokio::time::timeout_at(deadline.into(), job_removed(&link, &mut jobs, &job));
            match waited.await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(result)) => {
                    return Ok(JobOutcome {
                        job: job.as_str().to_owned(),
                        result,
                    })
                }
                Ok(Err(Interrupted::ConnectionLost)) => {
                    link.alive.store(false, Ordering::SeqCst);
                    link = self
                        .retrying(deadline, |link| async move { Ok(link) })
                        .await?;
                    jobs = link.jobs.resubscribe();
                    if !link.job_exists(&job).await {
                        tracing::warn!(unit, job = %job.as_str(),
                            "the job ended while the connection was down");
                        return Ok(JobOutcome {
                            job: job.as_str().to_owned(),
                            result: UNKNOWN_RESULT.to_owned(),
                        });
                    }
                }
            }
        }
    }

    /// Calls `RestartUnit`, returning the link and a job receiver taken before the call.
    async fn queue_restart(
        &self,
        unit: &str,
        until: Instant,
    ) -> Result<(Arc<Link>, broadcast::Receiver<JobRemoved>, OwnedObjectPath), SystemdError> {
        let mut delay = FIRST_RETRY_DELAY;
        let mut asked = false;
        loop {
            let link = self.link().await?;
            let jobs = link.jobs.resubscribe();
            if asked {
                // The last call's answer was lost, not necessarily the call: a job it queued
                // is followed rather than a second one queued.
                if let Ok(Some(job)) = link.pending_job(unit).await {
                    return Ok((link, jobs, job));
                }
            }
            asked = true;
            match link.manager.restart_unit(unit, "replace").await {
                Ok(job) => return Ok((link, jobs, job)),
                Err(e) => {
                    let e = SystemdError::from(e);
                    if !e.is_transient() || Instant::now() + delay >= until {
                        return Err(e);
                    }
                    if let SystemdError::Bus(_) = e {
                        link.alive.store(false, Ordering::SeqCst);
                    }
                    tracing::warn!(unit, error = %e, "restart call failed, trying again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// The services a target pulls in or restarts with it (`Wants=`, `Requires=`, and the
    /// units `PartOf=` it), sorted; empty for anything but a target.
    pub async fn members(&self, unit: &str) -> Result<Vec<String>, SystemdError> {
        if !unit.ends_with(".target") {
            return Ok(Vec::new());
        }
        let until = Instant::now() + self.call_timeout;
        let (wants, requires, consists_of) = self
            .retrying(until, |link| async move {
                let proxy = link.unit(unit).await?;
                Ok(tokio::try_join!(
                    proxy.wants(),
                    proxy.requires(),
                    proxy.consists_of()
                )?)
            })
            .await?;
        let mut members: Vec<String> = wants
            .into_iter()
            .chain(requires)
            .chain(consists_of)
            .filter(|member| member.ends_with(".service"))
            .collect();
        members.sort();
        members.dedup();
        Ok(members)
    }

    /// Whether a job is queued or running for the unit.
    pub async fn has_job(&self, unit: &str) -> Result<bool, SystemdError> {
        let until = Instant::now() + self.call_timeout;
        self.retrying(until, |link| async move {
            Ok(link.pending_job(unit).await?.is_some())
        })
        .await
    }

    /// Reads the unit's state now.
    pub async fn unit_state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let until = Instant::now() + self.call_timeout;
        self.retrying(until, |link| async move { read_state(&link, unit).await })
            .await
    }
}

/// Reads the unit's state on `link`.
async fn read_state(link: &Link, unit: &str) -> Result<UnitState, SystemdError> {
    let proxy = link.unit(unit).await?;
    let path = proxy.inner().path().to_owned();
    let (load_state, active_state, sub_state, invocation_id, changed) = tokio::try_join!(
        proxy.load_state(),
        proxy.active_state(),
        proxy.sub_state(),
        proxy.invocation_id(),
        proxy.state_change_timestamp(),
    )?;

    let (result, main_pid, n_restarts) = if unit.ends_with(".service") && load_state != "not-found"
    {
        let service = ServiceProxy::builder(&link.connection)
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let (result, pid, restarts) =
            tokio::try_join!(service.result(), service.main_pid(), service.n_restarts())?;
        (Some(result), (pid != 0).then_some(pid), Some(restarts))
    } else {
        (None, None, None)
    };

    Ok(UnitState {
        unit: unit.to_owned(),
        load_state,
        active_state,
        sub_state,
        result,
        invocation_id: invocation_id.iter().map(|b| format!("{b:02x}")).collect(),
        since: (changed != 0).then(|| {
            let at = std::time::UNIX_EPOCH + Duration::from_micros(changed);
            humantime::format_rfc3339_seconds(at).to_string()
        }),
        main_pid,
        n_restarts,
        changed_us: changed,
    })
}
