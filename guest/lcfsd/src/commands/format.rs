//! `lcfsd format`: writes an empty lcfs file system to a device.

use std::sync::Arc;

use anyhow::{Context, bail};
use lcfs_engine::device::{Device, FileDevice};
use lcfs_engine::{Engine, FormatOptions};

use crate::cli::FormatArgs;

pub fn run(args: &FormatArgs) -> anyhow::Result<()> {
    let exists = args.device.exists();
    let device = match (exists, args.size) {
        (false, None) => bail!("{} does not exist; give --size to create it", args.device.display()),
        (false, Some(size)) => FileDevice::open_or_create(&args.device, size),
        (true, _) => FileDevice::open(&args.device),
    }
    .with_context(|| format!("cannot open {}", args.device.display()))?;
    let device: Arc<dyn Device> = Arc::new(device);
    let options = FormatOptions { size: args.size, metadata_bytes: args.metadata_size, force: args.force };
    Engine::format(&device, &options)?;
    let size = device.len().with_context(|| format!("cannot read the size of {}", args.device.display()))?;
    println!("formatted {} ({} bytes)", args.device.display(), size);
    Ok(())
}
