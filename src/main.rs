use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    galaxyctl_api::cli::run(galaxyctl_api::cli::Cli::parse())
}
