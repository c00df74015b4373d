//! A deployed site's manifest: every path of the tree with its entry, and where the
//! deployment came from. The encoding is stable (entries in path order, fixed field layout)
//! and versioned by its first eight bytes, so that equal sites encode to equal bytes and a
//! staged manifest can be named by the hash of its content.
//!
//! ```text
//! "gcpages1"
//! u16 len, commit (hex)      u16 len, source (repository URL and branch)
//! u32 entry count
//! per entry, in strictly ascending path order:
//!   u16 len, path            u8 kind: 0 directory, 1 inline file, 2 blob file, 3 symlink
//!   inline: u32 len, bytes   blob: 32-byte SHA-256, u64 size   symlink: u16 len, target
//! ```
//!
//! Decoding is strict: anything [`SiteManifest::encode`] would not write is refused.

use std::collections::BTreeMap;

/// The first bytes of every manifest (format version 1).
pub const MAGIC: &[u8; 8] = b"gcpages1";
/// Files up to this many bytes are stored inline in the manifest.
pub const INLINE_MAX: usize = 256;
/// The most entries a manifest holds.
pub const MAX_ENTRIES: usize = 1_000_000;
/// The longest path or symlink target.
pub const MAX_PATH: usize = 4096;

/// Where a file's content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// In the manifest (at most [`INLINE_MAX`] bytes).
    Inline(Vec<u8>),
    /// A blob named by the SHA-256 of the content.
    Blob {
        /// The content's SHA-256.
        hash: [u8; 32],
        /// Its size in bytes.
        size: u64,
    },
}

/// What a path of the tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A file.
    File(Content),
    /// A symbolic link, its target as the tree holds it.
    Symlink(String),
}

/// A site as deployed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteManifest {
    /// The commit deployed (hex).
    pub commit: String,
    /// Where it came from: the repository URL and branch.
    pub source: String,
    /// Every path (relative, `/`-separated, no leading slash) and its entry.
    pub entries: BTreeMap<String, Entry>,
}

/// A manifest that is not one [`SiteManifest::encode`] writes.
#[derive(Debug, thiserror::Error)]
#[error("invalid site manifest: {0}")]
pub struct Invalid(pub String);

fn invalid(what: impl Into<String>) -> Invalid {
    Invalid(what.into())
}

/// Whether `path` is a tree path: non-empty `/`-separated segments, none `.` or `..`, without
/// control characters or `\`.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && !segment.chars().any(|c| c.is_control() || c == '\\')
        })
}

impl SiteManifest {
    /// How many files the site holds.
    pub fn files(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::File(_)))
            .count()
    }

    /// The bytes of all its files.
    pub fn size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File(Content::Inline(bytes)) => bytes.len() as u64,
                Entry::File(Content::Blob { size, .. }) => *size,
                _ => 0,
            })
            .sum()
    }

    /// The manifest as stored.
    pub fn encode(&self) -> Vec<u8> {
        fn short(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as u16).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        let mut out = MAGIC.to_vec();
        short(&mut out, &self.commit);
        short(&mut out, &self.source);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (path, entry) in &self.entries {
            short(&mut out, path);
            match entry {
                Entry::Dir => out.push(0),
                Entry::File(Content::Inline(bytes)) => {
                    out.push(1);
                    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
                Entry::File(Content::Blob { hash, size }) => {
                    out.push(2);
                    out.extend_from_slice(hash);
                    out.extend_from_slice(&size.to_be_bytes());
                }
                Entry::Symlink(target) => {
                    out.push(3);
                    short(&mut out, target);
                }
            }
        }
        out
    }

    /// Parse and check a stored manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(invalid("not a site manifest of a known version"));
        }
        let commit = r.text()?;
        if commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("commit id"));
        }
        let source = r.text()?;
        if source.chars().any(char::is_control) {
            return Err(invalid("source"));
        }
        let count = r.u32()? as usize;
        if count > MAX_ENTRIES {
            return Err(invalid("too many entries"));
        }
        let mut entries = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let path = r.text()?;
            if !valid_path(&path) {
                return Err(invalid(format!("path {path:?}")));
            }
            if last.as_ref().is_some_and(|l| *l >= path) {
                return Err(invalid("paths not in order, or twice"));
            }
            let entry = match r.take(1)?[0] {
                0 => Entry::Dir,
                1 => {
                    let len = r.u32()? as usize;
                    if len > INLINE_MAX {
                        return Err(invalid("inline file too large"));
                    }
                    Entry::File(Content::Inline(r.take(len)?.to_vec()))
                }
                2 => {
                    let hash: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
                    let size = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
                    Entry::File(Content::Blob { hash, size })
                }
                3 => {
                    let target = r.text()?;
                    if target.is_empty() || target.chars().any(char::is_control) {
                        return Err(invalid("symlink target"));
                    }
                    Entry::Symlink(target)
                }
                _ => return Err(invalid("entry kind")),
            };
            last = Some(path.clone());
            entries.insert(path, entry);
        }
        if r.at != bytes.len() {
            return Err(invalid("trailing bytes"));
        }
        // Every entry's parent directory is listed as one.
        for path in entries.keys() {
            if let Some((parent, _)) = path.rsplit_once('/')
                && entries.get(parent) != Some(&Entry::Dir)
            {
                return Err(invalid(format!("{path:?} without its directory")));
            }
        }
        Ok(SiteManifest {
            commit,
            source,
            entries,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| invalid("cut short"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, Invalid> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn text(&mut self) -> Result<String, Invalid> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        if len > MAX_PATH {
            return Err(invalid("text too long"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| invalid("text not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SiteManifest {
        let mut entries = BTreeMap::new();
        entries.insert("docs".into(), Entry::Dir);
        entries.insert(
            "docs/a.html".into(),
            Entry::File(Content::Inline(b"<p>a</p>".to_vec())),
        );
        entries.insert(
            "index.html".into(),
            Entry::File(Content::Blob {
                hash: [7; 32],
                size: 9000,
            }),
        );
        entries.insert("latest".into(), Entry::Symlink("docs".into()));
        SiteManifest {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            source: "https://forge.example/acme/site.git#pages".into(),
            entries,
        }
    }

    #[test]
    fn manifests_round_trip_and_refuse_what_is_never_written() {
        let manifest = sample();
        let bytes = manifest.encode();
        assert_eq!(SiteManifest::decode(&bytes).unwrap(), manifest);
        assert_eq!(manifest.files(), 2);
        assert_eq!(manifest.size(), 9008);
        // Cut anywhere, or with a byte more: refused.
        for end in 0..bytes.len() {
            assert!(SiteManifest::decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SiteManifest::decode(&longer).is_err());
        // A file without its directory, a path that leaves the tree.
        let mut orphan = sample();
        orphan.entries.remove("docs");
        assert!(SiteManifest::decode(&orphan.encode()).is_err());
        let mut outside = sample();
        outside
            .entries
            .insert("../x".into(), Entry::File(Content::Inline(Vec::new())));
        assert!(SiteManifest::decode(&outside.encode()).is_err());
    }

    #[test]
    fn paths_are_checked() {
        for good in ["a", "a/b.html", ".well-known/x", "a b/c"] {
            assert!(valid_path(good), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "./a", "a/../b", "..", "a\\b", "a\u{0}b",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }
}
