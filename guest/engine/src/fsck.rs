//! Consistency check of a device.
pub struct FsckReport;
pub fn fsck() {}
