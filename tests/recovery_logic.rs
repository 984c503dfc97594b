//! The recovery's decisions, asked of [`Recovery`] directly: how a restart that went wrong is
//! reported, when the waiting for Galaxy stops, and which requests share one recovery.
//!
//! Galaxy is a stand-in on a local port and systemd a scripted fake (see `fakes`).

mod fakes;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use url::Url;

use fakes::{
    active, failed, inactive, no_such_unit, not_found, Answer, FakeSystemd, Galaxy, Gate, Job,
    TestConfig, UnitScript, PATIENCE,
};
use galaxyctl_api::probe::{Probe, Prober};
use galaxyctl_api::recovery::{Failure, Progress, Recovery, Report, Throttled, Ticket, Trigger};
use galaxyctl_api::systemd::SystemdError;

struct Setup {
    galaxy: Galaxy,
    systemd: Arc<FakeSystemd>,
    recovery: Arc<Recovery>,
    prober: Prober,
    url: Url,
}

fn setup(answer: Answer, config: TestConfig) -> Setup {
    let galaxy = Galaxy::listening(answer);
    let settings = config.settings(&galaxy);
    let systemd = FakeSystemd::new(&galaxy);
    let (recovery, prober) = fakes::recovery(&settings, &systemd);
    let url = Url::parse(&galaxy.url()).unwrap();
    Setup {
        galaxy,
        systemd,
        recovery,
        prober,
        url,
    }
}

type Joined = Result<(Ticket, watch::Receiver<Progress>), Throttled>;

impl Setup {
    /// What a request does: probe Galaxy, noting when, and come to the recovery.
    async fn request(&self) -> Joined {
        let (probe, probed_at) = self.probe().await;
        self.recovery
            .join_or_start(&self.url, Trigger::Down(probe), probed_at)
    }

    async fn probe(&self) -> (Probe, Instant) {
        let probed_at = Instant::now();
        let probe = self.prober.probe(&self.url).await;
        assert!(
            !probe.is_online(),
            "the test expects Galaxy down: {probe:?}"
        );
        (probe, probed_at)
    }

    /// Starts a recovery and waits for its report.
    async fn recover(&self) -> Arc<Report> {
        let (ticket, progress) = self.request().await.expect("not throttled");
        assert_eq!(ticket, Ticket::Started);
        finished(progress).await
    }
}

/// Waits for the recovery behind `progress` to finish.
async fn finished(mut progress: watch::Receiver<Progress>) -> Arc<Report> {
    let waited = tokio::time::timeout(
        PATIENCE,
        progress.wait_for(|p| matches!(p, Progress::Finished(_))),
    )
    .await
    .expect("the recovery finishes");
    match &*waited.expect("the recovery ends with an outcome") {
        Progress::Finished(report) => report.clone(),
        Progress::Running { .. } => unreachable!("waited for Finished"),
    }
}

fn code(report: &Report) -> &'static str {
    report.outcome.as_ref().err().map_or("ok", Failure::code)
}

#[tokio::test]
async fn unit_failed_right_after_a_done_job_is_unit_failed() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    let crashes = UnitScript::done().after(vec![failed("exit-code")]);
    s.systemd.script("galaxy.service", crashes);

    let report = s.recover().await;

    assert_eq!(
        report.outcome,
        Err(Failure::UnitFailed {
            unit: "galaxy.service".to_owned(),
            result: Some("exit-code".to_owned()),
        })
    );
    assert_eq!(report.units[0].job.as_ref().unwrap().result, "done");
    assert_eq!(s.systemd.restarts(), ["galaxy.service"]);
    // Known failed at once: Galaxy was not waited for (the one probe is the request's).
    assert_eq!(s.galaxy.requests(), 1);
}

#[tokio::test]
async fn unit_failing_while_galaxy_starts_stops_the_wait_as_unit_failed() {
    // Active when its job ends, failed at the next look while Galaxy still answers 502.
    let s = setup(Answer::BadGateway, TestConfig::default());
    let dies_later = UnitScript::done().after(vec![active(), failed("signal")]);
    s.systemd.script("galaxy.service", dies_later);

    let report = s.recover().await;

    assert_eq!(code(&report), "unit_failed", "{:?}", report.outcome);
    assert_eq!(
        report.units[0].state.as_ref().unwrap().active_state,
        "failed"
    );
    let message = report.outcome.as_ref().unwrap_err().to_string();
    assert!(message.contains("galaxy.service"), "{message}");
    assert!(message.contains("signal"), "{message}");
    assert_eq!(s.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn galaxy_not_answering_by_the_readiness_deadline_is_deadline_exceeded() {
    let config = TestConfig {
        readiness_deadline: "300ms",
        ..TestConfig::default()
    };
    let s = setup(Answer::BadGateway, config);

    let report = s.recover().await;

    assert_eq!(code(&report), "deadline_exceeded", "{:?}", report.outcome);
    match report.outcome.as_ref().unwrap_err() {
        Failure::Deadline { last_probe, .. } => assert!(last_probe.contains("502"), "{last_probe}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn request_probed_before_a_recovery_ended_takes_its_outcome() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    s.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));
    // This request found Galaxy down, but comes to the recovery only after it ended.
    let (late_probe, late_probed_at) = s.probe().await;

    let report = s.recover().await;
    assert_eq!(report.outcome, Ok(()));

    let (ticket, progress) = s
        .recovery
        .join_or_start(&s.url, Trigger::Down(late_probe), late_probed_at)
        .expect("not throttled");
    assert_eq!(ticket, Ticket::Finished);
    assert_eq!(finished(progress).await.id, report.id);
    assert_eq!(s.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn request_probed_after_a_recovery_ended_starts_another() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    s.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));
    let first = s.recover().await;
    assert_eq!(first.outcome, Ok(()));

    // Galaxy went down again after the recovery.
    s.galaxy.set(Answer::BadGateway);
    let second = s.recover().await;

    assert_eq!(second.outcome, Ok(()));
    assert_ne!(second.id, first.id);
    assert_eq!(s.systemd.restarts(), ["galaxy.service", "galaxy.service"]);
}

#[tokio::test]
async fn request_during_a_recovery_joins_it() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    let gate = Gate::default();
    s.systemd.script(
        "galaxy.service",
        UnitScript::bringing(Answer::Ok).gated(&gate),
    );

    let (ticket, first) = s.request().await.expect("not throttled");
    assert_eq!(ticket, Ticket::Started);
    let (ticket, second) = s.request().await.expect("not throttled");
    assert_eq!(ticket, Ticket::Joined);
    gate.open();

    let (first, second) = (finished(first).await, finished(second).await);
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(first.outcome, Ok(()));
    assert_eq!(s.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn first_failure_in_unit_order_is_reported_and_every_unit_recorded() {
    let config = TestConfig {
        galaxy_units: &["galaxy.service", "galaxy-handlers.service"],
        ..TestConfig::default()
    };
    let s = setup(Answer::BadGateway, config);
    let timed_out = SystemdError::JobTimeout {
        unit: "galaxy.service".to_owned(),
        timeout: std::time::Duration::from_secs(5),
    };
    s.systemd
        .script("galaxy.service", UnitScript::refused(timed_out));
    s.systemd.script(
        "galaxy-handlers.service",
        UnitScript::refused(no_such_unit("galaxy-handlers.service")),
    );

    let report = s.recover().await;

    assert_eq!(code(&report), "bus_error", "{:?}", report.outcome);
    let units: Vec<&str> = report.units.iter().map(|u| u.unit.as_str()).collect();
    assert_eq!(units, ["galaxy.service", "galaxy-handlers.service"]);
    let handlers_error = report.units[1].error.as_deref().unwrap();
    assert!(
        handlers_error.contains("org.freedesktop.systemd1.NoSuchUnit"),
        "{handlers_error}"
    );
}

#[tokio::test]
async fn refused_restart_keeps_the_dbus_error_name() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    let denied = SystemdError::Remote {
        name: "org.freedesktop.DBus.Error.AccessDenied".to_owned(),
        message: "Interactive authentication required.".to_owned(),
    };
    s.systemd
        .script("galaxy.service", UnitScript::refused(denied));

    let report = s.recover().await;

    assert_eq!(code(&report), "bus_error", "{:?}", report.outcome);
    let message = report.outcome.as_ref().unwrap_err().to_string();
    assert!(
        message.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{message}"
    );
    assert!(message.contains("galaxy.service"), "{message}");
}

#[tokio::test]
async fn canceled_job_is_job_failed() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    s.systemd.script(
        "galaxy.service",
        UnitScript::done()
            .job(Job::Ends("canceled"))
            .after(vec![inactive()]),
    );

    let report = s.recover().await;

    assert_eq!(
        report.outcome,
        Err(Failure::JobFailed {
            unit: "galaxy.service".to_owned(),
            job_result: "canceled".to_owned(),
            unit_result: Some("success".to_owned()),
        })
    );
}

#[tokio::test]
async fn nginx_that_is_missing_or_unreadable_is_left_alone() {
    let unreadable = UnitScript {
        before: Err(SystemdError::Bus("connection reset".to_owned())),
        ..UnitScript::done()
    };
    for nginx in [UnitScript::done().before(not_found()), unreadable] {
        let s = setup(Answer::BadGateway, TestConfig::default());
        s.systemd
            .script("galaxy.service", UnitScript::bringing(Answer::Ok));
        s.systemd.script("nginx.service", nginx.clone());

        let report = s.recover().await;

        assert_eq!(report.outcome, Ok(()), "nginx {:?}", nginx.before);
        assert_eq!(
            s.systemd.restarts(),
            ["galaxy.service"],
            "nginx {:?}",
            nginx.before
        );
    }
}

#[tokio::test]
async fn failed_recovery_is_followed_by_a_cooldown_without_restart() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    s.systemd.script(
        "galaxy.service",
        UnitScript::refused(no_such_unit("galaxy.service")),
    );
    let report = s.recover().await;
    assert_eq!(code(&report), "no_such_unit");

    let throttled = s.request().await.expect_err("cooling down");

    assert_eq!(throttled.code(), "cooling_down");
    assert!(throttled.retry_after_secs() >= 1);
    assert!(
        throttled.to_string().contains("galaxy.service"),
        "{throttled}"
    );
    assert_eq!(s.systemd.restarts(), ["galaxy.service"]);
}

#[tokio::test]
async fn recoveries_beyond_the_budget_are_refused() {
    let config = TestConfig {
        max_recoveries: 2,
        ..TestConfig::default()
    };
    let s = setup(Answer::BadGateway, config);
    s.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));
    for _ in 0..2 {
        s.galaxy.set(Answer::BadGateway);
        assert_eq!(s.recover().await.outcome, Ok(()));
    }

    s.galaxy.set(Answer::BadGateway);
    let throttled = s.request().await.expect_err("the budget is spent");

    assert_eq!(throttled.code(), "too_many_recoveries");
    assert_eq!(s.systemd.restarts(), ["galaxy.service", "galaxy.service"]);
}

/// Regression: a recovery task that died without an outcome stayed "current" for ever, so
/// every later request joined the dead recovery instead of starting a new one.
#[tokio::test]
async fn recovery_that_died_does_not_hold_later_requests() {
    let s = setup(Answer::BadGateway, TestConfig::default());
    s.systemd
        .script("galaxy.service", UnitScript::done().job(Job::Panics));
    let (ticket, mut progress) = s.request().await.expect("not throttled");
    assert_eq!(ticket, Ticket::Started);
    let waited = tokio::time::timeout(
        PATIENCE,
        progress.wait_for(|p| matches!(p, Progress::Finished(_))),
    )
    .await
    .expect("the recovery task ends");
    assert!(waited.is_err(), "the recovery died without an outcome");
    drop(waited);

    s.systemd
        .script("galaxy.service", UnitScript::bringing(Answer::Ok));
    let (ticket, progress) = s.request().await.expect("not throttled");

    assert_eq!(ticket, Ticket::Started);
    assert_eq!(finished(progress).await.outcome, Ok(()));
    assert_eq!(s.systemd.restarts(), ["galaxy.service", "galaxy.service"]);
}
