//! The commands of `lcfsd`, one per file, and their exit codes.

mod format;
mod fsck;
mod layer;
mod run;

use std::process::ExitCode;

use crate::cli::Command;

/// The command failed (bad arguments, unusable device).
pub const EXIT_ERROR: u8 = 2;
/// fsck found problems.
pub const EXIT_NOT_CLEAN: u8 = 1;

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Format(args) => format::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Fsck(args) => fsck::run(&args),
        Command::Run(args) => run::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Layer { command } => layer::run(command).map(|()| ExitCode::SUCCESS),
    }
}
