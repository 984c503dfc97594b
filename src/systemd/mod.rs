//! The systemd client: restart a unit and follow its job to the end, read a unit's state.
//!
//! One D-Bus connection per service. At connect time it calls `Subscribe` and installs the
//! `JobRemoved` match, and one task drains that signal stream into a broadcast channel: a
//! stream nobody polls would stall the whole connection. A restart takes a receiver from the
//! channel *before* calling `RestartUnit`, so the end of its job cannot slip by unseen.

mod proxies;

use std::fmt;
use std::time::Duration;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// A connection to systemd's manager on the system or the user bus.
#[derive(Debug)]
pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
    /// Kept only to hand out fresh receivers; never read itself.
    jobs: broadcast::Receiver<JobRemoved>,
    job_timeout: Duration,
}

impl Systemd {
    /// Connects to `bus`, subscribes to the manager's signals and starts draining them.
    ///
    /// `call_timeout` bounds every method call on the connection.
    pub async fn connect(
        bus: Bus,
        call_timeout: Duration,
        job_timeout: Duration,
    ) -> Result<Systemd, SystemdError> {
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

        let (jobs_tx, jobs) = broadcast::channel(JOB_CHANNEL_CAPACITY);
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
            // Dropping the sender wakes every waiting restart with an error.
            tracing::warn!("the bus closed the job signal stream");
        });

        Ok(Systemd {
            connection,
            manager,
            jobs,
            job_timeout,
        })
    }

    /// The manager's version, a cheap call that shows the connection works.
    pub async fn version(&self) -> Result<String, SystemdError> {
        Ok(self.manager.version().await?)
    }

    /// Restarts `unit` (starts it when stopped) and waits for its job to end.
    pub async fn restart(&self, unit: &str) -> Result<JobOutcome, SystemdError> {
        let mut jobs = self.jobs.resubscribe();
        let job = self.manager.restart_unit(unit, "replace").await?;
        tracing::debug!(unit, job = %job.as_str(), "restart job queued");

        let wait = async {
            loop {
                match jobs.recv().await {
                    Ok(removed) if removed.job == job => return Ok(removed.result),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // Our signal may have been among those missed: ask whether the job
                        // still exists, and stop waiting for a signal that already passed.
                        tracing::warn!(missed, unit, "job signals were missed");
                        if !self.job_exists(&job).await {
                            return Ok("unknown".to_owned());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(SystemdError::Bus(
                            "connection lost while waiting for the job".to_owned(),
                        ))
                    }
                }
            }
        };
        let result = tokio::time::timeout(self.job_timeout, wait)
            .await
            .map_err(|_| SystemdError::JobTimeout {
                unit: unit.to_owned(),
                timeout: self.job_timeout,
            })??;

        Ok(JobOutcome {
            job: job.as_str().to_owned(),
            result,
        })
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

    /// The services a target pulls in or restarts with it (`Wants=`, `Requires=`, and the
    /// units `PartOf=` it), sorted; empty for anything but a target.
    pub async fn members(&self, unit: &str) -> Result<Vec<String>, SystemdError> {
        if !unit.ends_with(".target") {
            return Ok(Vec::new());
        }
        let proxy = self.unit_proxy(unit).await?;
        let (wants, requires, consists_of) =
            tokio::try_join!(proxy.wants(), proxy.requires(), proxy.consists_of())?;
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
        let (id, _) = self.unit_proxy(unit).await?.job().await?;
        Ok(id != 0)
    }

    async fn unit_proxy(&self, unit: &str) -> Result<UnitProxy<'static>, SystemdError> {
        let path = self.manager.load_unit(unit).await?;
        Ok(UnitProxy::builder(&self.connection)
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    /// Reads the unit's state now.
    pub async fn unit_state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let proxy = self.unit_proxy(unit).await?;
        let path = proxy.inner().path().to_owned();
        let (load_state, active_state, sub_state, invocation_id, changed) = tokio::try_join!(
            proxy.load_state(),
            proxy.active_state(),
            proxy.sub_state(),
            proxy.invocation_id(),
            proxy.state_change_timestamp(),
        )?;

        let (result, main_pid, n_restarts) =
            if unit.ends_with(".service") && load_state != "not-found" {
                let service = ServiceProxy::builder(&self.connection)
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
        })
    }
}
