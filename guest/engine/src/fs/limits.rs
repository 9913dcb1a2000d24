//! Every limit the engine enforces on names, links, attributes, files and labels, in one place
//! (Linux's where Linux has one, containerd's for labels).

/// Longest file name (bytes), as Linux limits it.
pub(crate) const NAME_MAX: usize = 255;
/// Longest symbolic link target (bytes), as Linux limits it.
pub(crate) const SYMLINK_MAX: usize = 4095;
/// Most names one inode may have (ext4's limit).
pub(crate) const LINK_MAX: usize = 65_000;
/// Longest extended attribute name (bytes), as Linux limits it.
pub(crate) const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value (bytes), as Linux limits it.
pub(crate) const XATTR_SIZE_MAX: usize = 65_536;
/// Most extended attribute bytes (names and values) one inode may hold.
pub(crate) const XATTR_TOTAL_MAX: usize = 256 * 1024;
/// Largest file size: 2^43 bytes (8 TiB), so extent counts fit 32 bits.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 43;
/// Largest layer label, key and value together (bytes), as containerd limits it.
pub(crate) const LABEL_MAX: usize = 4096;
