//! The command line: `serve` (the default) and the commands an administrator scripts with,
//! `status`, `startup` and `check-config`, all on the service's own code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use url::Url;

use crate::auth::Authenticator;
use crate::config::{Settings, DEFAULT_CONFIG_PATH};
use crate::logging;
use crate::notify::StatusLine;
use crate::probe::Prober;
use crate::recovery::{Progress, Recovery, Trigger, UnitControl};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Brings an offline Galaxy back through systemd's D-Bus API"
)]
pub struct Cli {
    /// The configuration file [default: /etc/galaxyctl-api/config.toml, optional there].
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where log entries go [default: the journal under systemd, stderr otherwise].
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_target: logging::Target,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Show whether Galaxy answers and each managed unit's state; exits 1 when Galaxy is down.
    Status,
    /// Bring Galaxy back now if it does not answer, printing each step; exits 1 on failure.
    Startup {
        /// The Galaxy URL to probe [default: the first of galaxy.urls].
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Check the configuration file (and the files it names) and say what is wrong.
    CheckConfig,
}

/// The exit status of `serve` when the configuration cannot be used (`EX_CONFIG` of
/// sysexits.h). The unit's `RestartPreventExitStatus=` names it.
pub const EXIT_CONFIG: u8 = 78;

/// Runs the command line; what `main` calls.
pub fn run(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Serve);
    // A command typed in a shell reports on stderr, whatever the service itself does.
    let target = match (&command, cli.log_target) {
        (Command::Serve, target) => target,
        (_, logging::Target::Auto) => logging::Target::Stderr,
        (_, target) => target,
    };
    logging::init(target);

    let (path, explicit) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let settings = match Settings::load(&path, explicit) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("galaxyctl-api: {e}");
            // The service's unit does not restart on this status: a restart cannot fix the file.
            return match command {
                Command::Serve => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            };
        }
    };

    if let Command::CheckConfig = command {
        return check_config(&path, &settings);
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("galaxyctl-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Serve => crate::server::serve(settings, path).await.map(|()| true),
            Command::Status => status(settings).await,
            Command::Startup { endpoint } => startup(settings, endpoint).await,
            Command::CheckConfig => unreachable!("handled above"),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("galaxyctl-api: {e:#}");
            if e.is::<crate::server::Unusable>() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn check_config(path: &std::path::Path, settings: &Settings) -> ExitCode {
    let mut problems = Vec::new();
    if let Err(e) = Authenticator::new(&settings.auth) {
        problems.push(format!("auth: {e}"));
    }
    if let Some(tls) = &settings.tls {
        if let Err(e) = crate::listener::tls_acceptor(&tls.certificate, &tls.key) {
            problems.push(format!("tls: {e:#}"));
        }
    }
    if problems.is_empty() {
        println!("{}: valid", path.display());
        println!("  listen       {}", settings.listen);
        println!("  bus          {}", crate::server::bus_name(settings.bus));
        println!("  galaxy units {}", settings.galaxy_units.join(", "));
        println!("  nginx unit   {}", settings.nginx_unit);
        let urls: Vec<&str> = settings.galaxy_urls.iter().map(Url::as_str).collect();
        println!("  galaxy urls  {}", urls.join(", "));
        println!("  auth         {:?}", settings.auth.mode);
        ExitCode::SUCCESS
    } else {
        for problem in problems {
            eprintln!("{}: {problem}", path.display());
        }
        ExitCode::FAILURE
    }
}

async fn status(settings: Settings) -> anyhow::Result<bool> {
    let systemd = crate::server::connect(&settings).await?;
    let prober = Prober::new(&settings.probe)?;
    let url = &settings.galaxy_urls[0];
    let probe = prober.probe(url).await;
    println!(
        "Galaxy {url}: {} ({} ms)\n",
        probe.verdict,
        probe.duration.as_millis()
    );

    let mut units = settings.galaxy_units.clone();
    units.push(settings.nginx_unit.clone());
    println!(
        "{:<32} {:<12} {:<14} {:<16} {:<8} {:<8} SINCE",
        "UNIT", "ACTIVE", "SUB", "RESULT", "PID", "RESTARTS"
    );
    for unit in &units {
        match systemd.unit_state(unit).await {
            Ok(state) if !state.exists() => println!("{unit:<32} not-found"),
            Ok(state) => println!(
                "{:<32} {:<12} {:<14} {:<16} {:<8} {:<8} {}",
                unit,
                state.active_state,
                state.sub_state,
                state.result.as_deref().unwrap_or("-"),
                state.main_pid.map_or("-".to_owned(), |p| p.to_string()),
                state.n_restarts.map_or("-".to_owned(), |n| n.to_string()),
                state.since.as_deref().unwrap_or("-"),
            ),
            Err(e) => println!("{unit:<32} cannot read: {e}"),
        }
    }
    Ok(probe.is_online())
}

async fn startup(settings: Settings, endpoint: Option<String>) -> anyhow::Result<bool> {
    let url = match endpoint {
        Some(endpoint) => crate::endpoint::check(&endpoint, &settings.galaxy_urls)?,
        None => settings.galaxy_urls[0].clone(),
    };
    let systemd: Arc<dyn UnitControl> = Arc::new(crate::server::connect(&settings).await?);
    let prober = Prober::new(&settings.probe)?;

    let probed_at = Instant::now();
    let probe = prober.probe(&url).await;
    println!("probe {url}: {}", probe.verdict);
    if probe.is_online() {
        return Ok(true);
    }

    let status = Arc::new(StatusLine::new("galaxyctl-api startup".to_owned()));
    let recovery = Arc::new(Recovery::new(systemd, prober, &settings, status));
    let (_, mut progress) = recovery
        .join_or_start(&url, Trigger::Down(probe), probed_at)
        .map_err(|throttled| anyhow::anyhow!("{throttled}"))?;
    let finished = progress
        .wait_for(|p| matches!(p, Progress::Finished(_)))
        .await
        .context("the recovery ended without an outcome")?
        .clone();
    let Progress::Finished(report) = finished else {
        unreachable!("wait_for returned a finished recovery")
    };
    for unit in &report.units {
        let job = unit.job.as_ref().map_or("-", |j| j.result.as_str());
        let state = unit
            .state
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        println!("{}: job {job}, now {state}", unit.unit);
        if let Some(error) = &unit.error {
            println!("  {error}");
        }
    }
    match &report.outcome {
        Ok(()) => {
            println!("Galaxy answers again after {} s", report.duration.as_secs());
            Ok(true)
        }
        Err(failure) => {
            println!("Galaxy is unavailable: {failure}");
            Ok(false)
        }
    }
}
