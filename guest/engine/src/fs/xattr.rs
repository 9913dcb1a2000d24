//! Extended attributes, stored in the inode record (so copy-up carries them along).

use crate::error::{Error, Result};
use crate::layers::LayerRef;
use crate::records::InodeRecord;
use crate::types::{Ino, Timestamp, XattrMode};

use super::State;
use super::limits::{XATTR_NAME_MAX, XATTR_SIZE_MAX, XATTR_TOTAL_MAX};

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("empty attribute name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(Error::Range);
    }
    if name.contains(&0) {
        return Err(Error::InvalidArgument("attribute name contains a NUL byte"));
    }
    Ok(())
}

/// Checks the attributes a new object starts with against the limits `set_xattr` applies.
pub(crate) fn check_initial(xattrs: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
    let mut total = 0;
    for (name, value) in xattrs {
        check_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::AttributeTooLarge(value.len()));
        }
        total += name.len() + value.len();
    }
    if total > XATTR_TOTAL_MAX {
        return Err(Error::NoSpace);
    }
    Ok(())
}

impl State {
    pub(crate) fn get_xattr(&self, l: &LayerRef, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        check_name(name)?;
        self.live(l, ino)?.rec.xattrs.get(name).cloned().ok_or(Error::NoAttribute)
    }

    pub(crate) fn list_xattr(&self, l: &LayerRef, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self.live(l, ino)?.rec.xattrs.into_keys().collect())
    }

    pub(crate) fn set_xattr(
        &mut self,
        l: &LayerRef,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> Result<()> {
        check_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::AttributeTooLarge(value.len()));
        }
        let v = self.live(l, ino)?;
        let exists = v.rec.xattrs.contains_key(name);
        match mode {
            XattrMode::Create if exists => return Err(Error::Exists),
            XattrMode::Replace if !exists => return Err(Error::NoAttribute),
            _ => {}
        }
        let total: usize =
            v.rec.xattrs.iter().filter(|(k, _)| k.as_slice() != name).map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + name.len()
                + value.len();
        if total > XATTR_TOTAL_MAX {
            return Err(Error::NoSpace);
        }
        let mut rec = self.own(l, ino, v)?;
        rec.xattrs.insert(name.to_vec(), value.to_vec());
        rec.ctime = Timestamp::now();
        self.put_inode(l, ino, &rec);
        Ok(())
    }

    pub(crate) fn remove_xattr(&mut self, l: &LayerRef, ino: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let v = self.live(l, ino)?;
        if !v.rec.xattrs.contains_key(name) {
            return Err(Error::NoAttribute);
        }
        let mut rec = self.own(l, ino, v)?;
        rec.xattrs.remove(name);
        rec.ctime = Timestamp::now();
        self.put_inode(l, ino, &rec);
        Ok(())
    }
}

/// The xattr holding file capabilities, which a write or a change of owner removes.
pub(crate) const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// What dropping privileges would clear, or `None` when there is nothing to drop. File
/// capabilities always go; the returned bits are the permission bits to clear: with `setid`, the
/// set-user-id bit and an effective (group-executable) set-group-id bit of a non-directory.
pub(crate) fn privileges_to_drop(rec: &InodeRecord, setid: bool) -> Option<u32> {
    let perm = u32::from(rec.perm);
    let mut clear = 0u32;
    if setid && rec.kind != crate::types::FileKind::Directory {
        clear |= perm & libc::S_ISUID;
        if perm & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP) {
            clear |= libc::S_ISGID;
        }
    }
    (clear != 0 || rec.xattrs.contains_key(CAPABILITY_XATTR)).then_some(clear)
}

impl State {
    /// Drops what Linux drops when a file is modified or changes owner: its file capabilities
    /// and, with `setid`, the set-user-id bit and an effective (group-executable) set-group-id
    /// bit. Changes nothing — not even ctime — when there is nothing to drop.
    pub(crate) fn drop_privileges(&mut self, l: &LayerRef, ino: Ino, setid: bool) -> Result<()> {
        let v = self.live(l, ino)?;
        let Some(clear) = privileges_to_drop(&v.rec, setid) else { return Ok(()) };
        let mut rec = self.own(l, ino, v)?;
        rec.perm &= !(clear as u16);
        rec.xattrs.remove(CAPABILITY_XATTR);
        rec.ctime = Timestamp::now();
        self.put_inode(l, ino, &rec);
        Ok(())
    }
}
