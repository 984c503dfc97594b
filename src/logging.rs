//! Where log entries go: structured entries in the journal, or readable lines on stderr.
//!
//! Under systemd every field of an event becomes a journal field of its own (`UNIT=`,
//! `JOB_RESULT=`, `REQUEST_ID=`, ...), so `journalctl -o json` and field matches work. From a
//! terminal, or when the journal socket is missing, lines go to stderr instead.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The environment variable holding a `tracing` filter, such as `debug` or
/// `galaxyctl_api=trace`.
pub const FILTER_ENV: &str = "GALAXYCTL_API_LOG";

/// Where to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The journal when running under systemd, stderr otherwise.
    Auto,
    Journal,
    Stderr,
}

/// Installs the global subscriber. Returns the target actually used.
pub fn init(target: Target) -> Target {
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let want_journal = match target {
        Target::Auto => under_systemd,
        Target::Journal => true,
        Target::Stderr => false,
    };

    let journald = if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("galaxyctl-api".to_owned()),
            ),
            Err(e) => {
                eprintln!("galaxyctl-api: journal unreachable ({e}), logging to stderr");
                None
            }
        }
    } else {
        None
    };

    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => {
            registry.with(layer).init();
            Target::Journal
        }
        None => {
            // journald stamps the lines it collects from stderr itself.
            let stderr = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal());
            if under_systemd {
                registry.with(stderr.without_time()).init();
            } else {
                registry.with(stderr).init();
            }
            Target::Stderr
        }
    }
}
