//! `lcfsd fsck`: checks a device without writing to it.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lcfs_engine::device::FileDevice;

use super::EXIT_NOT_CLEAN;
use crate::cli::FsckArgs;

pub fn run(args: &FsckArgs) -> anyhow::Result<ExitCode> {
    let device =
        FileDevice::open_shared(&args.device).with_context(|| format!("cannot check {}", args.device.display()))?;
    let report = lcfs_engine::fsck(Arc::new(device))?;
    println!("{report}");
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_CLEAN) })
}
