//! Entry names of a layer tar, cleaned the way containerd cleans them.

/// A tar entry's path as components below the layer's root: `.` and empty components are
/// dropped and `..` removes the previous component, stopping at the root, so
/// `../../etc/passwd` and `/etc/passwd` both name `etc/passwd` in the layer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    pub(crate) fn parse(raw: &[u8]) -> EntryPath {
        let mut components: Vec<Vec<u8>> = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    components.pop();
                }
                name => components.push(name.to_vec()),
            }
        }
        EntryPath { components }
    }

    /// The last component; `None` for the root itself.
    pub(crate) fn name(&self) -> Option<&[u8]> {
        self.components.last().map(Vec::as_slice)
    }

    /// The components leading to the entry's directory.
    pub(crate) fn parent(&self) -> &[Vec<u8>] {
        &self.components[..self.components.len().saturating_sub(1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Vec<String> {
        EntryPath::parse(raw.as_bytes()).components.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    }

    #[test]
    fn paths_stay_below_the_root() {
        assert_eq!(parts("./etc/passwd"), ["etc", "passwd"]);
        assert_eq!(parts("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(parts("../../etc/passwd"), ["etc", "passwd"]);
        assert_eq!(parts("a/../../b"), ["b"]);
        assert_eq!(parts("usr//lib/./x/"), ["usr", "lib", "x"]);
        assert!(EntryPath::parse(b"./").name().is_none());
        assert!(EntryPath::parse(b"..").name().is_none());
    }

    #[test]
    fn parent_and_name_split_the_last_component() {
        let p = EntryPath::parse(b"a/b/c");
        assert_eq!(p.name(), Some(&b"c"[..]));
        assert_eq!(p.parent(), [b"a".to_vec(), b"b".to_vec()]);
        assert!(EntryPath::parse(b"top").parent().is_empty());
    }
}
