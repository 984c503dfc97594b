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

/// The `MESSAGE_ID` of each kind of journal entry an administrator looks for. The catalog in
/// `units/galaxyctl-api.catalog` explains each one, so `journalctl -x` shows the explanation,
/// and `journalctl MESSAGE_ID=...` finds every entry of a kind.
pub mod message_id {
    /// A recovery of Galaxy started.
    pub const RECOVERY_STARTED: &str = "6b927d3bb35347d5b06d92c07a2debe1";
    /// The restart of one unit was asked of systemd.
    pub const RESTART_REQUESTED: &str = "0b20450153d541adbd0e74b4966a4491";
    /// A restart job ended, with systemd's job result.
    pub const JOB_FINISHED: &str = "5cdc2260279b4b48bcf4557ae0805da4";
    /// A recovery ended with Galaxy answering again.
    pub const RECOVERY_FINISHED: &str = "47b637b48d48471ab54e09257a83248b";
    /// A recovery ended without Galaxy answering.
    pub const RECOVERY_FAILED: &str = "2c4f2d38f5bf4272b8d5afa683684dc6";
    /// A request was refused: credentials, endpoint or restart budget.
    pub const REQUEST_REFUSED: &str = "1908b266d8864c8580ef3e8ab9ab2079";
}

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

#[cfg(test)]
mod tests {
    use super::message_id::*;

    /// Every kind of entry has its explanation in the catalog, and the catalog explains
    /// nothing that is never logged.
    #[test]
    fn catalog_explains_every_message_id() {
        let catalog = include_str!("../units/galaxyctl-api.catalog");
        let ids = [
            RECOVERY_STARTED,
            RESTART_REQUESTED,
            JOB_FINISHED,
            RECOVERY_FINISHED,
            RECOVERY_FAILED,
            REQUEST_REFUSED,
        ];
        let in_catalog: Vec<&str> = catalog
            .lines()
            .filter_map(|line| line.strip_prefix("-- "))
            .collect();
        for id in ids {
            assert_eq!(id.len(), 32, "{id} is not 128 bits in hex");
            assert!(in_catalog.contains(&id), "{id} is missing from the catalog");
        }
        assert_eq!(
            in_catalog.len(),
            ids.len(),
            "the catalog explains unknown ids"
        );
    }
}
