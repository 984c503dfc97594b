//! The `serve` command: start-up in order, serving, reloads, and a bounded graceful shutdown.
//!
//! systemd hears READY=1 only once the configuration is valid, the bus is connected and the
//! listener is bound, so `systemctl start` fails visibly when any of them does not work.
//! SIGHUP (`systemctl reload`) re-reads the configuration file; a file that does not validate
//! leaves the running settings in place and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::{AuthMode, Bus, Settings, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::http::{router, AppState};
use crate::listener::{self, Origin};
use crate::notify::{self, StatusLine};
use crate::probe::Prober;
use crate::recovery::Recovery;
use crate::systemd::Systemd;

/// A file the configuration names (tokens, certificate, key) cannot be used: like an invalid
/// configuration, only an administrator can fix it, so restarting does not help.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Unusable(pub anyhow::Error);

/// Runs the service until SIGTERM or SIGINT. `path` is re-read on SIGHUP.
pub async fn serve(settings: Settings, path: PathBuf) -> anyhow::Result<()> {
    let settings = Arc::new(settings);

    // What needs no one else comes first, so a bad file fails before anything is opened.
    let auth = authenticator(&settings).map_err(Unusable)?;
    let tls = match &settings.tls {
        Some(tls) => Some(listener::tls_acceptor(&tls.certificate, &tls.key).map_err(Unusable)?),
        None => None,
    };
    let prober = Prober::new(&settings.probe).context("cannot build the HTTP client")?;

    let bus = bus_name(settings.bus);
    let systemd = connect(&settings).await?;
    let version = systemd.version().await.context("systemd does not answer")?;
    tracing::info!(bus, systemd_version = %version, "connected to systemd");
    let systemd = Arc::new(systemd);

    let (listener, origin) = listener::listen(settings.listen).await?;
    let local = listener.local_addr().context("listener has no address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let activated = match origin {
        Origin::Activated => " (socket activated)",
        Origin::Bound => "",
    };
    let status = Arc::new(StatusLine::new(format!(
        "Listening on {scheme}://{local}{activated}, systemd on the {bus} bus"
    )));
    let recovery = Arc::new(Recovery::new(
        systemd.clone(),
        prober.clone(),
        &settings,
        status.clone(),
    ));
    let state = AppState {
        settings: settings.clone(),
        prober,
        recovery,
        status: status.clone(),
        auth: Arc::new(auth),
    };
    let (router_tx, router_rx) = watch::channel(router(state.clone()));

    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let watchdog = notify::watchdog_interval().map(|interval| {
        let systemd = systemd.clone();
        notify::spawn_watchdog(interval, move || {
            let systemd = systemd.clone();
            async move { healthy(&systemd, interval / 8).await }
        })
    });
    let server = tokio::spawn(listener::serve(
        listener,
        tls,
        router_rx,
        async {
            let _ = stop_rx.await;
        },
        DEFAULT_SHUTDOWN_TIMEOUT,
    ));

    tracing::info!(listen = %local, scheme, socket_activated = origin == Origin::Activated,
        galaxy_units = ?settings.galaxy_units, nginx_unit = %settings.nginx_unit, "ready");
    notify::ready(&status.text());

    let mut state = state;
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!(signal = "SIGTERM", "shutting down");
                break;
            }
            _ = interrupt.recv() => {
                tracing::info!(signal = "SIGINT", "shutting down");
                break;
            }
            _ = hangup.recv() => {
                notify::reloading();
                match reload(&path, &state, &systemd) {
                    Ok(reloaded) => {
                        state = reloaded;
                        let _previous = router_tx.send_replace(router(state.clone()));
                        tracing::info!(path = %path.display(), "configuration reloaded");
                        status.note("configuration reloaded".to_owned());
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = format!("{e:#}"),
                            "reload refused, the running configuration stays");
                        status.note(format!("reload refused, old configuration kept: {e:#}"));
                    }
                }
                notify::ready(&status.text());
            }
        }
    }
    notify::stopping();
    state.recovery.stop();
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

/// Reads and checks the configuration again and returns the state to serve with. What only
/// a restart can change (the listening address, TLS, the bus) is reported and kept as is.
fn reload(path: &Path, current: &AppState, systemd: &Systemd) -> anyhow::Result<AppState> {
    let settings = Settings::load(path, false)?;
    let auth = authenticator(&settings)?;
    let prober = Prober::new(&settings.probe).context("cannot build the HTTP client")?;

    let old = &current.settings;
    let tls_changed = match (&old.tls, &settings.tls) {
        (None, None) => false,
        (Some(a), Some(b)) => a.certificate != b.certificate || a.key != b.key,
        _ => true,
    };
    if settings.listen != old.listen || settings.bus != old.bus || tls_changed {
        tracing::warn!("listen, bus and tls take effect only when the service restarts");
    }

    systemd.allow(managed_units(&settings));
    current.recovery.reconfigure(&settings, prober.clone());
    Ok(AppState {
        settings: Arc::new(settings),
        prober,
        recovery: current.recovery.clone(),
        status: current.status.clone(),
        auth: Arc::new(auth),
    })
}

/// Connects to the configured bus's systemd, allowed to restart the configured units only.
pub async fn connect(settings: &Settings) -> anyhow::Result<Systemd> {
    let bus = bus_name(settings.bus);
    let systemd = Systemd::connect(
        settings.bus,
        settings.recovery.bus_timeout,
        settings.recovery.job_timeout,
    )
    .await
    .with_context(|| format!("cannot connect to systemd on the {bus} bus"))?;
    systemd.allow(managed_units(settings));
    Ok(systemd)
}

/// The units the configuration lets the service restart.
pub fn managed_units(settings: &Settings) -> Vec<String> {
    let mut units = settings.galaxy_units.clone();
    units.push(settings.nginx_unit.clone());
    units
}

fn authenticator(settings: &Settings) -> anyhow::Result<Authenticator> {
    let auth = Authenticator::new(&settings.auth).map_err(|e| anyhow::anyhow!("auth: {e}"))?;
    if settings.auth.mode == AuthMode::None {
        tracing::warn!("auth.mode is \"none\": anyone who reaches the port can restart Galaxy");
    }
    Ok(auth)
}

/// Whether the service can do its work: the bus connection answers a call in time. The
/// runtime running this check at all is the other half of the answer.
async fn healthy(systemd: &Systemd, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, systemd.version()).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "systemd does not answer; the watchdog is not fed");
            false
        }
        Err(_) => {
            tracing::warn!("systemd did not answer in time; the watchdog is not fed");
            false
        }
    }
}

pub fn bus_name(bus: Bus) -> &'static str {
    match bus {
        Bus::System => "system",
        Bus::User => "user",
    }
}
