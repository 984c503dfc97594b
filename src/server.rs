//! The `serve` command: start-up in order, serving, and a bounded graceful shutdown.
//!
//! systemd hears READY=1 only once the configuration is valid, the bus is connected and the
//! listener is bound, so `systemctl start` fails visibly when any of them does not work.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::auth::Authenticator;
use crate::config::{AuthMode, Bus, Settings, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::http::{router, AppState};
use crate::listener::{self, Origin};
use crate::notify::{self, StatusLine};
use crate::probe::Prober;
use crate::recovery::Recovery;
use crate::systemd::Systemd;

/// Runs the service until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);

    // What needs no one else comes first, so a bad file fails before anything is opened.
    let auth = Authenticator::new(&settings.auth).map_err(|e| anyhow::anyhow!("auth: {e}"))?;
    if settings.auth.mode == AuthMode::None {
        tracing::warn!("auth.mode is \"none\": anyone who reaches the port can restart Galaxy");
    }
    let tls = match &settings.tls {
        Some(tls) => Some(listener::tls_acceptor(&tls.certificate, &tls.key)?),
        None => None,
    };
    let prober = Prober::new(&settings.probe).context("cannot build the HTTP client")?;

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

    let (listener, origin) = listener::listen(settings.listen).await?;
    let local = listener.local_addr().context("listener has no address")?;

    let scheme = if tls.is_some() { "https" } else { "http" };
    let activated = if origin == Origin::Activated {
        " (socket activated)"
    } else {
        ""
    };
    let status = Arc::new(StatusLine::new(format!(
        "Listening on {scheme}://{local}{activated}, systemd on the {} bus",
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
        auth: Arc::new(auth),
    });

    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let watchdog = notify::watchdog_interval().map(notify::spawn_watchdog);
    let server = tokio::spawn(listener::serve(
        listener,
        tls,
        app,
        async {
            let _ = stop_rx.await;
        },
        DEFAULT_SHUTDOWN_TIMEOUT,
    ));

    tracing::info!(listen = %local, scheme, socket_activated = origin == Origin::Activated,
        galaxy_units = ?settings.galaxy_units, nginx_unit = %settings.nginx_unit, "ready");
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
    server.await.context("server task failed")?;
    tracing::info!("stopped");
    Ok(())
}

pub fn bus_name(bus: Bus) -> &'static str {
    match bus {
        Bus::System => "system",
        Bus::User => "user",
    }
}
