//! `lcfsd`: the lcfs guest daemon. `main` only parses arguments, sets up logging and
//! dispatches; each command lives in `commands/`.

#![forbid(unsafe_code)]

mod api;
mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LCFS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; log files and journals get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lcfsd: {e:#}");
            ExitCode::from(commands::EXIT_ERROR)
        }
    }
}
