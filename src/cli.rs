//! The command line: `galaxyctl-api [serve] [--config FILE]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Settings, DEFAULT_CONFIG_PATH};
use crate::logging;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Brings an offline Galaxy back through systemd's D-Bus API"
)]
pub struct Cli {
    /// The configuration file [default: /etc/galaxyctl-api/config.toml, optional there].
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where log entries go.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_target: logging::Target,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
}

/// Runs the command line; what `main` calls.
pub fn run(cli: Cli) -> ExitCode {
    logging::init(cli.log_target);

    let (path, explicit) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let settings = match Settings::load(&path, explicit) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("galaxyctl-api: {e}");
            return ExitCode::FAILURE;
        }
    };

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("galaxyctl-api: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::server::serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "service failed");
                    eprintln!("galaxyctl-api: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
