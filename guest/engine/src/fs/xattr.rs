//! Extended attributes, stored in the inode record (so copy-up carries them along).

use crate::error::{Error, Result};
use crate::layers::LayerRef;
use crate::types::{Ino, Timestamp, XattrMode};

use super::State;

/// Longest attribute name (bytes), as Linux limits it.
const XATTR_NAME_MAX: usize = 255;
/// Largest attribute value (bytes), as Linux limits it.
const XATTR_SIZE_MAX: usize = 65_536;
/// Most attribute bytes (names and values) one inode may hold.
const XATTR_TOTAL_MAX: usize = 256 * 1024;

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
