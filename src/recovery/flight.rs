//! One recovery in its own task: which units to restart, following their jobs, waiting for
//! Galaxy to answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use tokio::sync::watch;
use url::Url;

use super::{Failure, Operation, Plan, Progress, Recovery, Report, Trigger, UnitReport};
use crate::config::NginxRestart;
use crate::logging::message_id;
use crate::probe::{Probe, Verdict};
use crate::systemd::JobOutcome;

/// The first pause between probes while waiting for a restarted Galaxy; it doubles up to the
/// configured interval.
const FIRST_WAIT_PROBE_PAUSE: Duration = Duration::from_millis(10);

/// How often the members of a target are asked whether a job of theirs is still pending.
const MEMBER_JOB_POLL: Duration = Duration::from_millis(200);

/// Cleans up after a flight that ended without an outcome.
struct Unfinished {
    recovery: Arc<Recovery>,
    progress: watch::Receiver<Progress>,
    finished: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::error!("recovery ended without an outcome");
        self.recovery.metrics.recovery_abandoned();
        // A panic elsewhere may have poisoned the lock; the state it guards is still whole.
        let mut flights = self
            .recovery
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if flights
            .current
            .as_ref()
            .is_some_and(|current| current.same_channel(&self.progress))
        {
            flights.current = None;
        }
    }
}

/// One recovery in its task.
pub(super) struct Flight {
    recovery: Arc<Recovery>,
    plan: Arc<Plan>,
    operation: Arc<Operation>,
    url: Url,
    started: Instant,
    units: Vec<UnitReport>,
    /// Member services of a Galaxy target, watched like the Galaxy units themselves.
    watched: Vec<String>,
    tx: watch::Sender<Progress>,
}

impl Flight {
    pub(super) fn new(
        recovery: Arc<Recovery>,
        plan: Arc<Plan>,
        operation: Arc<Operation>,
        url: Url,
        tx: watch::Sender<Progress>,
    ) -> Flight {
        Flight {
            recovery,
            plan,
            operation,
            url,
            started: Instant::now(),
            units: Vec::new(),
            watched: Vec::new(),
            tx,
        }
    }

    pub(super) async fn run(mut self, trigger: Trigger) {
        // Should this task die before the end (a panic), requests must not go on joining a
        // recovery that will never finish: the guard lets the next request start a new one.
        let mut guard = Unfinished {
            recovery: self.recovery.clone(),
            progress: self.tx.subscribe(),
            finished: false,
        };
        let outcome = match trigger {
            Trigger::Down(probe) => {
                tracing::info!(message_id = message_id::RECOVERY_STARTED, endpoint = %self.url,
                    verdict = %probe.verdict, trigger = "startup", "recovery started");
                self.operation.step(format!(
                    "recovery started: Galaxy at {} {}",
                    self.url, probe.verdict
                ));
                self.recover(probe).await
            }
            Trigger::Explicit => {
                tracing::info!(message_id = message_id::RECOVERY_STARTED, endpoint = %self.url,
                    verdict = "not probed, a restart was asked for", trigger = "restart",
                    "recovery started");
                self.operation.step("restart of the Galaxy units asked for");
                self.restart_galaxy(false, true).await
            }
        };
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

        match &outcome {
            Ok(()) => self.operation.step("Galaxy answers"),
            Err(failure) => self.operation.step(format!("failed: {failure}")),
        }
        self.recovery
            .metrics
            .recovery_ended(outcome.is_ok(), duration);
        let report = Arc::new(Report {
            id: self.operation.id.clone(),
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
        self.operation.finish(report.clone());
        self.tx.send_replace(Progress::Finished(report));
        guard.finished = true;
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
        self.restart_galaxy(nginx_restarted, false).await
    }

    /// Restarts the Galaxy units, and nginx too when the policy says so and it was not just
    /// restarted, then waits for Galaxy to answer.
    async fn restart_galaxy(
        &mut self,
        nginx_restarted: bool,
        explicit: bool,
    ) -> Result<(), Failure> {
        let plan = self.plan.clone();
        let mut units = Vec::new();
        for unit in &plan.galaxy_units {
            // A Galaxy that is starting answers 502 until it is up: restarting it would only
            // start it over. An explicit restart is asked for whatever the unit does.
            if !explicit && self.still_starting(unit, &plan).await {
                tracing::info!(unit = %unit, "unit is still starting, waiting for it");
                self.operation.step(format!(
                    "{unit} is still starting; not restarted, waited for"
                ));
            } else {
                units.push(unit.clone());
            }
        }
        if !nginx_restarted && self.nginx_needs_restart(&plan).await {
            units.push(plan.nginx_unit.clone());
        }
        if !units.is_empty() {
            self.restart(&units).await?;
        }
        for target in plan.galaxy_units.iter().filter(|u| u.ends_with(".target")) {
            self.follow_members(target, &plan).await?;
        }
        self.wait_for_galaxy(&plan).await
    }

    /// After a target's own job: waits until no job of its member services is left, then
    /// checks each member came up. Gravity's `galaxy.target` restarts its `PartOf=` units.
    async fn follow_members(&mut self, target: &str, plan: &Plan) -> Result<(), Failure> {
        let control = self.recovery.control.clone();
        let bus_failure = |error| Failure::Bus {
            unit: Some(target.to_owned()),
            error,
        };
        let members = control.members(target).await.map_err(bus_failure)?;
        tracing::info!(
            unit = target,
            members = members.join(","),
            "following the target's members"
        );
        self.operation
            .step(format!("{target} pulls in {}", members.join(", ")));

        let until = Instant::now() + plan.job_timeout;
        loop {
            let mut pending = Vec::new();
            for member in &members {
                if control.has_job(member).await.map_err(bus_failure)? {
                    pending.push(member.as_str());
                }
            }
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= until {
                return Err(Failure::Bus {
                    unit: Some(target.to_owned()),
                    error: crate::systemd::SystemdError::JobTimeout {
                        unit: pending.join(","),
                        timeout: plan.job_timeout,
                    },
                });
            }
            tokio::time::sleep(MEMBER_JOB_POLL).await;
        }

        let mut first_failure = None;
        for member in &members {
            let state = control.unit_state(member).await.map_err(bus_failure)?;
            tracing::info!(unit = %member, part_of = target, active_state = %state.active_state,
                sub_state = %state.sub_state, result = state.result.as_deref().unwrap_or(""),
                "unit state");
            self.operation.step(format!("{member} is {state}"));
            if !state.is_active() && first_failure.is_none() {
                first_failure = Some(Failure::UnitFailed {
                    unit: member.clone(),
                    result: state.result.clone(),
                });
            }
            self.units.push(UnitReport {
                unit: member.clone(),
                job: None,
                state: Some(state),
                error: None,
            });
            self.watched.push(member.clone());
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Whether the unit is activating, or became active less than the start-up grace ago.
    async fn still_starting(&self, unit: &str, plan: &Plan) -> bool {
        match self.recovery.control.unit_state(unit).await {
            Ok(state) => {
                state.active_state == "activating"
                    || (state.is_active()
                        && state
                            .active_for()
                            .is_some_and(|age| age < plan.startup_grace))
            }
            // The restart will say what is wrong.
            Err(_) => false,
        }
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
            self.operation.step(format!("restart of {unit} requested"));
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
                    self.operation.step(format!(
                        "job {} of {unit} finished: {}",
                        job.job, job.result
                    ));
                    self.recovery.metrics.restarted(unit, &job.result);
                    let failure = self.check_unit(unit, &job, &mut report).await;
                    report.job = Some(job);
                    failure
                }
                Err(error) => {
                    tracing::error!(unit = %unit, error = %error,
                        dbus_error = error.dbus_name().unwrap_or(""), "restart refused");
                    self.operation
                        .step(format!("restart of {unit} refused: {error}"));
                    self.recovery.metrics.restarted(unit, "refused");
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
        self.operation.step(format!("{unit} is {state}"));
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
    async fn wait_for_galaxy(&mut self, plan: &Plan) -> Result<(), Failure> {
        self.recovery.status.recovery(format!(
            "restarted {}, waiting for Galaxy",
            plan.galaxy_units.join(", ")
        ));
        self.operation
            .step(format!("waiting for Galaxy at {} to answer", self.url));
        // The deadline counts from the restart, not from the start of the recovery: a slow
        // nginx phase or restart job does not eat into Galaxy's time to start.
        let deadline = Instant::now() + plan.readiness_deadline;
        // With a readiness URL, Galaxy itself is asked first; the endpoint (through nginx)
        // is asked once Galaxy says it is ready.
        let mut ready = !plan.prober.has_readiness_probe();
        // Probes come quickly at first and then slow down to the configured interval: a
        // Galaxy that is back within moments is seen within moments, and one that takes
        // minutes is not asked more than once an interval for most of them.
        let mut pause = FIRST_WAIT_PROBE_PAUSE.min(plan.probe_interval);
        loop {
            if !ready {
                let probe = plan.prober.probe_ready(&self.url).await;
                self.recovery.metrics.probed(&probe.verdict);
                tracing::debug!(verdict = %probe.verdict, "readiness probe");
                if probe.is_online() {
                    ready = true;
                    self.operation.step("Galaxy reports ready");
                }
            }
            let probe = if ready {
                self.probe().await
            } else {
                self.recovery.status.checked("Galaxy not ready yet");
                Probe {
                    verdict: Verdict::Unhealthy {
                        status: None,
                        detail: "Galaxy is not ready yet".to_owned(),
                    },
                    started: Instant::now(),
                    duration: Duration::ZERO,
                }
            };
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
            let units: Vec<String> = plan
                .galaxy_units
                .iter()
                .chain(&self.watched)
                .cloned()
                .collect();
            for unit in &units {
                match self.recovery.control.unit_state(unit).await {
                    Ok(state) if state.is_failed() => {
                        tracing::error!(unit = %unit, result = state.result.as_deref().unwrap_or(""),
                            "unit failed while Galaxy was starting");
                        self.operation.step(format!("{unit} is {state}"));
                        let result = state.result.clone();
                        // The answer shows the unit as it is now, not as it was when its job
                        // ended.
                        if let Some(report) = self.units.iter_mut().rev().find(|r| r.unit == *unit)
                        {
                            report.state = Some(state);
                        }
                        return Err(Failure::UnitFailed {
                            unit: unit.clone(),
                            result,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(unit = %unit, error = %e, "cannot read unit state"),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(plan.probe_interval);
        }
    }

    async fn probe(&self) -> Probe {
        let probe = self.plan.prober.probe(&self.url).await;
        self.recovery.metrics.probed(&probe.verdict);
        tracing::debug!(endpoint = %self.url, verdict = %probe.verdict,
            duration_ms = probe.duration.as_millis() as u64, "probe");
        self.recovery.status.checked(&probe.verdict.to_string());
        probe
    }
}
