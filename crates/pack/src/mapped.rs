//! Read-only maps of the files beside a pack: git's reverse indexes are read in place, so a
//! request touches only the pages it needs instead of copying whole files.
//!
//! The crate's one reviewed exception to `forbid(unsafe_code)`: mapping a file is unsafe in
//! Rust because another process could change it while it is mapped. These files never change
//! in place: git and gitcache write them whole under a temporary name and rename them into
//! place, and remove them by unlinking (the mapped inode lives on). gix maps packs and their
//! indexes on the same grounds.

#![allow(unsafe_code)]

use std::path::Path;

/// A file mapped read-only.
pub(crate) struct Mapped(memmap2::Mmap);

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("len", &self.0.len())
            .finish()
    }
}

impl Mapped {
    /// Map the file at `path`.
    pub(crate) fn open(path: &Path) -> std::io::Result<Mapped> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the file is one git or gitcache writes whole and renames into place and
        // never modifies or truncates afterwards (see the module documentation), so the
        // mapped bytes do not change while the map lives.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Mapped(map))
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}
