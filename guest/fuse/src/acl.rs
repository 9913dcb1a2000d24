//! POSIX ACLs as the kernel stores them in `system.posix_acl_access` and
//! `system.posix_acl_default` (the `posix_acl_xattr` format: a version header, then 8-byte
//! entries of tag, permission and id, little-endian).
//!
//! With `FUSE_POSIX_ACL` the kernel enforces ACLs itself and reads and writes them as these
//! xattrs; what it leaves to the file system is inheritance: a file created in a directory
//! with a default ACL gets that ACL, narrowed by the mode it was created with, and the mode
//! narrowed by the ACL (as Linux's `posix_acl_create` does for local file systems); a new
//! directory also inherits the default ACL itself.

pub(crate) const ACCESS: &[u8] = b"system.posix_acl_access";
pub(crate) const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// Parses an ACL xattr value; `None` if it is malformed.
fn parse(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (header, body) = bytes.split_at_checked(4)?;
    if u32::from_le_bytes(header.try_into().ok()?) != VERSION || body.len() % 8 != 0 {
        return None;
    }
    body.chunks_exact(8)
        .map(|c| {
            let tag = u16::from_le_bytes([c[0], c[1]]);
            let perm = u16::from_le_bytes([c[2], c[3]]);
            let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            let known = matches!(tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER);
            (known && perm <= 7).then_some(Entry { tag, perm, id })
        })
        .collect()
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// Whether `bytes` is a well-formed ACL xattr value.
pub(crate) fn is_valid(bytes: &[u8]) -> bool {
    parse(bytes).is_some_and(|entries| {
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        count(USER_OBJ) == 1 && count(GROUP_OBJ) == 1 && count(OTHER) == 1 && count(MASK) <= 1
    })
}

/// What a new file inherits from its directory's default ACL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Inherited {
    /// The permission bits (`0o7777`) after masking by the ACL.
    pub perm: u16,
    /// The access ACL, when it says more than the mode bits do.
    pub access: Option<Vec<u8>>,
}

/// Applies a directory's default ACL to a new file created with `mode`. `None` if the default
/// ACL is malformed (the caller then falls back to the umask).
pub(crate) fn inherit(default: &[u8], mode: u32) -> Option<Inherited> {
    let mut entries = parse(default)?;
    let mut rwx = mode & 0o777;
    let mut extended = false;
    for e in entries.iter_mut() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((rwx >> 6) & 7) as u16;
                rwx = (rwx & !0o700) | (u32::from(e.perm) << 6);
            }
            OTHER => {
                e.perm &= (rwx & 7) as u16;
                rwx = (rwx & !0o007) | u32::from(e.perm);
            }
            USER | GROUP | MASK => extended = true,
            _ => {}
        }
    }
    // The group class bits follow the mask entry if there is one, the owning group otherwise.
    let class = match entries.iter().position(|e| e.tag == MASK) {
        Some(m) => m,
        None => entries.iter().position(|e| e.tag == GROUP_OBJ)?,
    };
    entries[class].perm &= ((rwx >> 3) & 7) as u16;
    rwx = (rwx & !0o070) | (u32::from(entries[class].perm) << 3);
    let perm = ((mode & 0o7000) | rwx) as u16;
    Some(Inherited { perm, access: extended.then(|| encode(&entries)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(&entries.iter().map(|&(tag, perm, id)| Entry { tag, perm, id }).collect::<Vec<_>>())
    }

    #[test]
    fn a_minimal_default_acl_narrows_the_mode_like_a_umask() {
        // default: user::rwx group::r-x other::r-x, created with 0666 → 0644 and no ACL.
        let d = acl(&[(USER_OBJ, 7, u32::MAX), (GROUP_OBJ, 5, u32::MAX), (OTHER, 5, u32::MAX)]);
        assert!(is_valid(&d));
        let got = inherit(&d, 0o666).expect("valid");
        assert_eq!(got, Inherited { perm: 0o644, access: None });
    }

    #[test]
    fn an_extended_default_acl_is_inherited_with_the_mask_as_group_bits() {
        // default: user::rwx user:1000:rwx group::r-x mask::rwx other::---, created with 0640:
        // the mask becomes r--, the mode 0640, the named user entry is kept.
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let got = inherit(&d, 0o640).expect("valid");
        assert_eq!(got.perm, 0o640);
        let access = parse(&got.access.expect("extended ACL is stored")).expect("parses");
        assert_eq!(access.iter().find(|e| e.tag == MASK).map(|e| e.perm), Some(4));
        assert_eq!(access.iter().find(|e| e.tag == GROUP_OBJ).map(|e| e.perm), Some(5), "owning group untouched");
        assert_eq!(access.iter().find(|e| e.tag == USER).map(|e| (e.perm, e.id)), Some((7, 1000)));
    }

    #[test]
    fn malformed_values_are_rejected() {
        assert!(!is_valid(b""));
        assert!(!is_valid(&[2, 0, 0, 0, 1, 0, 7]));
        assert!(!is_valid(&acl(&[(USER_OBJ, 7, 0)])), "base entries missing");
        assert!(!is_valid(&acl(&[(USER_OBJ, 9, 0), (GROUP_OBJ, 5, 0), (OTHER, 5, 0)])));
        assert!(inherit(&[1, 0, 0, 0], 0o644).is_none());
    }
}
