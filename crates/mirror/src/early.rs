//! The objects of a mirror's first pack found as the pack arrives, made a repository of their
//! own (see [`crate::live::Early`]).
//!
//! Its files live in `objects/pack/early-<process>-<n>/` of the mirror, made once a fetch
//! waits for them: the pack itself, a second name of the file it arrives into (renaming or
//! removing the ingestion's name leaves it be), an index of the objects found, the mirror's
//! config and the refs the refresh will write. They go when the last answer reading them ends; a crash leaves
//! them to [`crate::ingest::remove_leftovers`], which passes over those of this process still
//! held.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gitcache_protocol::ls_refs::RefLine;

use crate::live::{Early, LivePack, Progress};

/// How the folders start, in `objects/pack`.
pub(crate) const PREFIX: &str = "early-";

/// The folders of this process still held.
static HELD: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// The folder of an [`Early`], removed when dropped.
#[derive(Debug)]
pub(crate) struct EarlyDir {
    path: PathBuf,
}

impl EarlyDir {
    /// A new folder in `git_dir`'s pack folder, ready for a pack.
    pub(crate) fn create(git_dir: &Path) -> std::io::Result<EarlyDir> {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = git_dir.join("objects").join("pack").join(name);
        // Held before it exists: a tidy meanwhile leaves it be.
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        let dir = EarlyDir { path };
        // Its own, not one a crash left under the same name.
        std::fs::create_dir(&dir.path)?;
        std::fs::create_dir_all(dir.packs())?;
        std::fs::copy(git_dir.join("config"), dir.path.join("config"))?;
        Ok(dir)
    }

    /// The repository's folder.
    pub(crate) fn git_dir(&self) -> &Path {
        &self.path
    }

    fn packs(&self) -> PathBuf {
        self.path.join("objects").join("pack")
    }

    /// Where the second name of the file the pack arrives into is made.
    pub(crate) fn received(&self) -> PathBuf {
        self.packs().join("received")
    }
}

impl Drop for EarlyDir {
    fn drop(&mut self) {
        // Removed before it is let go of: a tidy meanwhile finds it held or gone.
        if let Err(err) = std::fs::remove_dir_all(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%err, path = %self.path.display(), "removing an early index failed");
        }
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
    }
}

/// Whether `path` is the folder of an [`Early`] of this process still held.
pub(crate) fn is_held(path: &Path) -> bool {
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(path)
}

/// Reads a live pack's bytes as they arrive, to its end (its trailer included, once it is
/// whole); an error once it failed or `stop` is set.
struct Following<'a> {
    pack: &'a LivePack,
    at: u64,
    stop: &'a AtomicBool,
}

impl Read for Following<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("stopped"));
            }
            let end = match self.pack.wait_past(self.at, Duration::from_millis(500)) {
                Progress::Arriving(end) | Progress::Whole(end) if end > self.at => end,
                Progress::Whole(_) => return Ok(0),
                Progress::Failed(why) => return Err(std::io::Error::other(why)),
                Progress::Arriving(_) => continue,
            };
            let len = buf
                .len()
                .min(usize::try_from(end - self.at).unwrap_or(usize::MAX));
            let read = self.pack.read_at(&mut buf[..len], self.at)?;
            if read == 0 {
                return Err(std::io::Error::other("the pack's file ended early"));
            }
            self.at += read as u64;
            return Ok(read);
        }
    }
}

/// Scan `pack` as it arrives into a new folder of `git_dir` (a second name of the pack's
/// file made there first, while the file has the name it was announced with), index what
/// was found, and write `refs` as the mirror will have them: an [`Early`] once the pack is
/// whole. Given up once `stop` is set.
pub(crate) fn build(
    git_dir: &Path,
    pack: &LivePack,
    refs: &[RefLine],
    stop: &AtomicBool,
) -> Result<Early, String> {
    let dir = EarlyDir::create(git_dir).map_err(|err| err.to_string())?;
    // Made before the ingestion renames the file (once the pack is whole), or not at all; the
    // name is in the ingestion's own folder, which no other file ever takes.
    std::fs::hard_link(pack.announced_path(), dir.received())
        .map_err(|err| format!("no second name for the pack's file: {err}"))?;
    if !pack.is_file(&dir.received()) {
        return Err("the pack's file was not linked".into());
    }
    let format = pack.object_format();
    let mut read = std::io::BufReader::with_capacity(1 << 16, Following { pack, at: 0, stop });
    let found = gitcache_pack::early::scan(
        &mut read,
        format,
        gitcache_pack::early::Limits::default(),
        stop,
    )
    .map_err(|err| err.to_string())?;
    let read = read.into_inner().at;
    match pack.progress() {
        Progress::Whole(bytes) if bytes == read => {}
        Progress::Whole(bytes) => {
            return Err(format!("the pack is {bytes} bytes, {read} were scanned"));
        }
        other => return Err(format!("the pack is not whole: {other:?}")),
    }
    let linked = dir.received();
    let on_disk = std::fs::metadata(&linked).map_err(|err| err.to_string())?;
    if on_disk.len() != read {
        return Err(format!(
            "the pack's file is {} bytes, {read} arrived",
            on_disk.len()
        ));
    }
    let name = dir.packs().join(format!("pack-{}", found.checksum()));
    found
        .write_index(&name.with_extension("idx.tmp"))
        .map_err(|err| err.to_string())?;
    std::fs::rename(&linked, name.with_extension("pack")).map_err(|err| err.to_string())?;
    std::fs::rename(name.with_extension("idx.tmp"), name.with_extension("idx"))
        .map_err(|err| err.to_string())?;
    let repo = gitcache_pack::Repository::open(dir.git_dir()).map_err(|err| err.to_string())?;
    crate::mirror::write_refs(dir.git_dir(), &repo, refs).map_err(|err| err.to_string())?;
    Ok(Early::new(repo, found.len(), dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder held by this process is passed over by the tidying of leftovers, and goes
    /// once let go of; one no process holds is a crash's leftover.
    #[test]
    fn a_held_folder_is_no_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path();
        std::fs::create_dir_all(git_dir.join("objects").join("pack")).unwrap();
        std::fs::write(git_dir.join("config"), "[core]\n\tbare = true\n").unwrap();
        let held = EarlyDir::create(git_dir).unwrap();
        std::fs::write(held.received(), b"arriving").unwrap();
        let path = held.git_dir().to_owned();
        assert!(is_held(&path));
        crate::ingest::remove_leftovers(git_dir, true).unwrap();
        assert!(held.received().is_file(), "held: kept");
        drop(held);
        assert!(!path.exists() && !is_held(&path), "let go: removed");

        let crashed = git_dir
            .join("objects")
            .join("pack")
            .join(format!("{PREFIX}0-0"));
        std::fs::create_dir_all(&crashed).unwrap();
        crate::ingest::remove_leftovers(git_dir, true).unwrap();
        assert!(!crashed.exists(), "a crash's leftover");
    }
}
