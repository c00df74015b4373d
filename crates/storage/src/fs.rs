//! The filesystem backend: the data directory and the file operations mirrors rely on.
//!
//! - [`DataDir::open`] takes an exclusive lock on `<root>/gitcache.lock` for the life of the
//!   process: two servers writing the same mirrors would undo each other's refreshes, so the
//!   second is refused with a clear error.
//! - [`replace_file`] writes a file beside its destination, syncs it, renames it over the
//!   destination and syncs the folder: a reader sees the old content or the new, never a
//!   mix, and after a crash one of the two is there. Temporary names are unique per call, so
//!   a crash that left one behind never blocks the next write.
//! - [`tree_size`] adds up what a folder holds, for operators.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The file whose lock marks a data directory as taken.
pub const LOCK_FILE: &str = "gitcache.lock";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process holds the directory.
    #[error("data directory {path} is in use by another gitcache process")]
    InUse {
        /// The directory.
        path: PathBuf,
    },
    /// The directory or its lock file cannot be created or locked.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A data directory this process owns until the value is dropped.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    /// Held open: the lock lives as long as the file handle.
    _lock: File,
}

impl DataDir {
    /// Create `root` if needed and take it for this process.
    pub fn open(root: impl Into<PathBuf>) -> Result<DataDir, Error> {
        let root = root.into();
        let io = |source| Error::Io {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::InUse { path: root }),
            Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
        }
        let mut owner = &lock;
        let _ = owner
            .set_len(0)
            .and_then(|()| writeln!(owner, "{}", std::process::id()));
        Ok(DataDir { root, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }
}

/// Replace `path`'s content with `content`, atomically and durably (see the module docs).
pub fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    replace_file_with(path, |file| file.write_all(content))
}

/// [`replace_file`], unless `path` holds `content` already: a replacement waits for the disk
/// twice (the file, then its folder), and most refreshes of a mirror leave its `HEAD`, and
/// many all of its refs, as they were. A file left as it is gets the time of the call as its
/// modification time, as a replacement would have (readers may take it for when it was last
/// written, such as a mirror's last refresh), and its folder is made durable, in case the
/// replacement that wrote it was cut short before that.
pub fn replace_file_if_changed(path: &Path, content: &[u8]) -> std::io::Result<()> {
    match std::fs::read(path) {
        Ok(old) if old == content => {
            let touched = File::options()
                .write(true)
                .open(path)
                .and_then(|file| file.set_modified(std::time::SystemTime::now()));
            match touched {
                Ok(()) => sync_parent(path),
                // Not writable in place (its permissions): replaced as any.
                Err(_) => replace_file(path, content),
            }
        }
        _ => replace_file(path, content),
    }
}

/// [`replace_file`] with the content written by `write` into the new file.
pub fn replace_file_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let temp = Temporary::beside(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp.path())?;
    write(&mut file)?;
    file.sync_all()?;
    std::fs::rename(temp.path(), path)?;
    temp.keep();
    sync_parent(path)
}

/// A temporary file removed when this is dropped unless [`Temporary::keep`] was called: a
/// download cut short (its task dropped midway, when the client that waited for it left)
/// leaves nothing behind.
#[derive(Debug)]
pub(crate) struct Temporary(Option<PathBuf>);

impl Temporary {
    /// A name beside `path` ([`temp_beside`]), removed on drop.
    pub(crate) fn beside(path: &Path) -> std::io::Result<Temporary> {
        Ok(Temporary(Some(temp_beside(path)?)))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The file is in its place (renamed), or to stay: nothing is removed.
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Gone already (never made, or renamed into place) is fine.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A name beside `path` to write before renaming over it, unique per call (see
/// [`is_leftover_temp`]).
pub(crate) fn temp_beside(path: &Path) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?
        .to_owned();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(name))
}

/// Make a rename or creation in `path`'s folder durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Sync a folder's entries to disk (a no-op where folders cannot be opened as files).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether `name` is a temporary file [`replace_file`] left behind (a crash mid-write).
pub fn is_leftover_temp(name: &str) -> bool {
    name.rsplit_once(".tmp-").is_some_and(|(_, tail)| {
        tail.split('-')
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The bytes free for this process on the file system holding `path` (what a non-root
/// writer may still use).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// [`free_bytes`] on the disk of `path`, or of its nearest parent that exists (a folder not
/// made yet); `None` when none can be asked.
pub fn free_bytes_near(path: &Path) -> Option<u64> {
    let mut at = path;
    loop {
        match free_bytes(at) {
            Ok(free) => return Some(free),
            Err(_) => at = at.parent()?,
        }
    }
}

/// Give the disk space of `len` bytes of `file` from `offset` back to the file system, the
/// file's length kept (those bytes read as zeros after). Where the file system cannot, an
/// error, and nothing changed.
pub fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::FallocateFlags;
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(file, mode, offset, len)?;
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (file, offset, len);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The bytes held by the files under `dir` (symbolic links not followed).
pub fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same content leaves the file in place (the same inode), its modification time
    /// moved on as a replacement would move it; other content replaces it.
    #[test]
    fn a_file_holding_the_content_already_is_left_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packed-refs");
        replace_file_if_changed(&path, b"one\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let before = std::fs::metadata(&path).unwrap();

        replace_file_if_changed(&path, b"one\n").unwrap();
        let same = std::fs::metadata(&path).unwrap();
        assert_eq!(same.ino(), before.ino(), "not written again");
        assert!(same.modified().unwrap() > long_ago, "its time moved on");

        replace_file_if_changed(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), before.ino());
    }

    #[test]
    fn a_punched_hole_gives_its_blocks_back_and_keeps_the_length() {
        use std::io::Write;
        use std::os::unix::fs::{FileExt, MetadataExt};
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 4 << 20]).unwrap();
        file.sync_all().unwrap();
        let before = file.metadata().unwrap().blocks();
        match punch_hole(&file, 0, 3 << 20) {
            Ok(()) => {}
            // A file system without holes (the spill then keeps its bytes to the end).
            Err(err) if err.kind() == std::io::ErrorKind::Unsupported => return,
            Err(err) if err.raw_os_error() == Some(95) => return,
            Err(err) => panic!("{err}"),
        }
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 4 << 20);
        assert!(
            meta.blocks() < before,
            "{} of {before} blocks",
            meta.blocks()
        );
        let mut tail = [0u8; 2];
        file.read_exact_at(&mut tail, (3 << 20) - 1).unwrap();
        assert_eq!(tail, [0, 7]);
    }

    #[test]
    fn a_data_dir_has_one_owner_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let first = DataDir::open(&dir).unwrap();
        let err = DataDir::open(&dir).unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("in use by another gitcache process")
        );
        drop(first);
        DataDir::open(&dir).unwrap();
    }

    #[test]
    fn replacing_leaves_no_temporaries_and_survives_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("packed-refs");
        // A leftover from a crash, as an older exclusive-lock scheme would have tripped on.
        std::fs::write(root.path().join("packed-refs.lock"), b"stale").unwrap();
        std::fs::write(root.path().join("packed-refs.tmp-1-0"), b"stale").unwrap();
        replace_file(&path, b"one\n").unwrap();
        replace_file(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        let mut names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["packed-refs", "packed-refs.lock", "packed-refs.tmp-1-0"]
        );
        assert!(is_leftover_temp("packed-refs.tmp-1-0"));
        assert!(!is_leftover_temp("packed-refs.lock"));
        assert!(!is_leftover_temp("pack-tmp-abc.pack"));
    }

    #[test]
    fn replacing_into_a_missing_folder_fails_cleanly() {
        let root = tempfile::tempdir().unwrap();
        let err = replace_file(&root.path().join("missing/HEAD"), b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn sizes_add_up() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::write(root.path().join("a/one"), vec![0u8; 10]).unwrap();
        std::fs::write(root.path().join("a/b/two"), vec![0u8; 32]).unwrap();
        assert_eq!(tree_size(root.path()).unwrap(), 42);
    }
}
