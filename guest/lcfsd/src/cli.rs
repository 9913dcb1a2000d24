//! Command-line interface of `lcfsd`. The doc comments are the help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The lcfs guest daemon: every container layer of a host on one device.
#[derive(Debug, Parser)]
#[command(name = "lcfsd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Format a device (a regular file, created sparse if missing, or a block device).
    Format(FormatArgs),
    /// Check a device without writing to it; exits 0 only when it is clean.
    Fsck(FsckArgs),
    /// Serve a device: mount every layer under the mountpoint and answer the API on a unix
    /// socket until SIGTERM or SIGINT, then flush, unmount and exit 0.
    Run(RunArgs),
    /// Manage the layers of a running daemon through its API socket.
    Layer {
        #[command(subcommand)]
        command: LayerCommand,
    },
}

/// Where the API socket is unless told otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/lcfs/api.sock";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Path of the device file or block device; an empty or missing file is formatted.
    #[arg(long)]
    pub device: PathBuf,
    /// Size of the device in bytes (suffixes K, M, G, T accepted): a missing file is created
    /// with this size, a smaller one grows to it.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Directory to mount on; each layer appears as <mountpoint>/<layer>.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Unix socket of the lcfs API (created with mode 0600).
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// Also serve containerd's Snapshots and Diff gRPC services on this unix socket, for
    /// containerd's `[proxy_plugins.lcfs] type = "snapshot" address = "PATH"` and (containerd
    /// 2.x) `[proxy_plugins.lcfs-diff] type = "diff" address = "PATH"`.
    #[arg(long, value_name = "PATH")]
    pub snapshotter_socket: Option<PathBuf>,
    /// containerd's root directory, whose content store holds the layers the Diff service
    /// unpacks.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/containerd")]
    pub containerd_root: PathBuf,
    /// Threads serving file system requests (default: four per CPU, between 4 and 32).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds between checkpoints that make file changes durable (0: only on fsync and
    /// layer operations).
    #[arg(long, default_value_t = 5)]
    pub checkpoint_interval: u64,
    /// Let the kernel cache writes and send them in large batches (FUSE writeback cache);
    /// `--writeback-cache false` sends every write to the daemon as it happens.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub writeback_cache: bool,
    /// Serve file system requests over io_uring, one queue per CPU, where the kernel offers
    /// it (Linux 6.14 and later; turns the kernel's `fuse.enable_uring` on); `--io-uring
    /// false` serves them through /dev/fuse only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub io_uring: bool,
}

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Create a writable layer (or a read-only view), empty or on a committed parent.
    Create {
        /// Name of the new layer (its directory name in the mount).
        id: String,
        /// Committed layer to build on.
        #[arg(long)]
        parent: Option<String>,
        /// Create a read-only view instead of a writable layer.
        #[arg(long)]
        view: bool,
        /// Label as KEY=VALUE; may be repeated.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long, default_value = DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
    },
    /// Commit the writable layer KEY as the immutable layer NAME (NAME may equal KEY).
    Commit {
        key: String,
        name: String,
        #[arg(long, default_value = DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
    },
    /// Remove a layer that has no children.
    Remove {
        id: String,
        #[arg(long, default_value = DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
    },
    /// List the layers, parents before children.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
    },
}

/// Parses KEY=VALUE.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, clap::Args)]
pub struct FormatArgs {
    /// Path of the device file or block device.
    #[arg(long)]
    pub device: PathBuf,
    /// Size of the device in bytes (suffixes K, M, G, T accepted); a file is created or grown
    /// to this size. Required when the file does not exist.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Bytes reserved for metadata (default: an eighth of the device, 16 MiB to 64 GiB).
    #[arg(long, value_parser = parse_size)]
    pub metadata_size: Option<u64>,
    /// Format even if the device holds an lcfs file system or other data.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Path of the device file or block device.
    #[arg(long)]
    pub device: PathBuf,
}

/// Parses a byte count: plain bytes, or a number with a binary suffix (K, M, G, T, optionally
/// followed by `iB` or `B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    let number: u64 =
        number.parse().map_err(|_| format!("{s:?} is not a size (expected bytes, e.g. 10G or 10737418240)"))?;
    let shift = match suffix.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        other => return Err(format!("unknown size suffix {other:?} in {s:?} (use K, M, G or T)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_plain_and_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
