//! Telling systemd how the service is doing: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
//!
//! Outside a `Type=notify` unit (no `NOTIFY_SOCKET`) every call is a no-op, so the same code
//! runs from a terminal. A failed notification is logged and never stops the service.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the service is ready, with its first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is re-reading its configuration; `ready` ends it.
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::Status("Reloading the configuration"),
    ]);
}

/// Tells systemd the service is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("Shutting down")]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Feeds the watchdog four times per interval, each time only if `healthy` says so. A runtime
/// that no longer schedules tasks, or a service that cannot reach systemd, stops feeding it,
/// and systemd restarts the service.
pub fn spawn_watchdog<F, Fut>(interval: Duration, healthy: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        // A quarter of the interval: one late or skipped feed is not yet a kill.
        let mut ticks = tokio::time::interval(interval / 4);
        loop {
            ticks.tick().await;
            if healthy().await {
                send(&[NotifyState::Watchdog]);
            }
        }
    })
}

/// The line `systemctl status galaxyctl-api` shows: where the service listens, the last
/// check of Galaxy and any recovery under way or just finished.
#[derive(Debug)]
pub struct StatusLine {
    listening: String,
    parts: Mutex<Parts>,
    /// The text systemd last heard. Times are to the second, so on a busy server the line
    /// is sent at most about once a second, not on every request.
    sent: Mutex<String>,
}

#[derive(Debug, Default)]
struct Parts {
    last_check: Option<String>,
    recovery: Option<String>,
    note: Option<String>,
}

impl StatusLine {
    pub fn new(listening: String) -> StatusLine {
        StatusLine {
            listening,
            parts: Mutex::new(Parts::default()),
            sent: Mutex::new(String::new()),
        }
    }

    /// The current text.
    pub fn text(&self) -> String {
        let parts = self
            .parts
            .lock()
            .expect("status lock is never held across a panic");
        let mut text = self.listening.clone();
        if let Some(check) = &parts.last_check {
            text.push_str("; last check ");
            text.push_str(check);
        }
        for part in [&parts.recovery, &parts.note].into_iter().flatten() {
            text.push_str("; ");
            text.push_str(part);
        }
        text
    }

    /// Records the outcome of a probe, such as `online (HTTP 200)`.
    pub fn checked(&self, outcome: &str) {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
        self.update(|p| p.last_check = Some(format!("{stamp}: {outcome}")));
    }

    /// Records what the recovery is doing or how it ended.
    pub fn recovery(&self, text: String) {
        self.update(|p| p.recovery = Some(text));
    }

    /// Records something else worth a look, such as the outcome of a reload.
    pub fn note(&self, text: String) {
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
        self.update(|p| p.note = Some(format!("{stamp}: {text}")));
    }

    fn update(&self, change: impl FnOnce(&mut Parts)) {
        change(
            &mut self
                .parts
                .lock()
                .expect("status lock is never held across a panic"),
        );
        let text = self.text();
        let mut sent = self
            .sent
            .lock()
            .expect("status lock is never held across a panic");
        if *sent != text {
            send(&[NotifyState::Status(&text)]);
            *sent = text;
        }
    }
}
