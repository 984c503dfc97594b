//! The `serve` command: start-up in order, serving, and a bounded graceful shutdown.
//!
//! systemd hears READY=1 only once the configuration is valid, the bus is connected and the
//! listener is bound, so `systemctl start` fails visibly when any of them does not work.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Bus, Settings, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::http::{router, AppState};
use crate::notify::{self, StatusLine};
use crate::probe::Prober;
use crate::recovery::Recovery;
use crate::systemd::Systemd;

/// Runs the service until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);

    let systemd = Systemd::connect(
        settings.bus,
        settings.recovery.bus_timeout,
        settings.recovery.job_timeout,
    )
    .await
    .with_context(|| {
        format!(
            "cannot connect to systemd on the {} bus",
            bus_name(settings.bus)
        )
    })?;
    let version = systemd.version().await.context("systemd does not answer")?;
    tracing::info!(bus = bus_name(settings.bus), systemd_version = %version, "connected to systemd");

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr().context("listener has no address")?;

    let prober = Prober::new(&settings.probe).context("cannot build the HTTP client")?;
    let status = Arc::new(StatusLine::new(format!(
        "Listening on {local}, systemd on the {} bus",
        bus_name(settings.bus)
    )));
    let recovery = Arc::new(Recovery::new(
        Arc::new(systemd),
        prober.clone(),
        &settings,
        status.clone(),
    ));
    let app = router(AppState {
        settings: settings.clone(),
        prober,
        recovery,
        status: status.clone(),
    });

    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let watchdog = notify::watchdog_interval().map(notify::spawn_watchdog);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    tracing::info!(listen = %local, galaxy_units = ?settings.galaxy_units,
        nginx_unit = %settings.nginx_unit, "ready");
    notify::ready(&status.text());

    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    notify::stopping();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }

    // Requests under way get their answer; a recovery under way is systemd's job by now and
    // its units carry on without us.
    let _ = stop_tx.send(());
    match tokio::time::timeout(DEFAULT_SHUTDOWN_TIMEOUT, server).await {
        Ok(joined) => joined
            .context("server task failed")?
            .context("server failed")?,
        Err(_) => tracing::warn!(
            timeout_s = DEFAULT_SHUTDOWN_TIMEOUT.as_secs(),
            "requests still open at shutdown were dropped"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

pub fn bus_name(bus: Bus) -> &'static str {
    match bus {
        Bus::System => "system",
        Bus::User => "user",
    }
}
