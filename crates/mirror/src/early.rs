//! The objects of a mirror's first pack found as the pack arrives, made a repository of their
//! own (see [`crate::live::Early`]).
//!
//! Its files live in `objects/pack/early-<process>-<n>/` of the mirror, made once the pack is
//! whole: a pack of the objects found alone (their entries copied from the arriving pack,
//! so that every entry of it is in its index), its index, the mirror's config and the refs
//! the refresh will write. They go when the last answer reading them ends; a crash leaves
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
        // The time too: a process of the same id (the first of a container) finds no
        // leftover of another under the name.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "{PREFIX}{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = git_dir.join("objects").join("pack").join(name);
        // Held before it exists: a tidy meanwhile leaves it be.
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        // Its own, not one made elsewhere under the same name (left as it is).
        if let Err(err) = std::fs::create_dir(&path) {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
            return Err(err);
        }
        let dir = EarlyDir { path };
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
}

impl Drop for EarlyDir {
    fn drop(&mut self) {
        let removal = Removal(std::mem::take(&mut self.path));
        // Its last holder may be an answer's body, dropped on an async worker: the files
        // (a copy of part of a pack) go on a blocking thread there. A task the runtime drops
        // unrun (it is shutting down) drops the removal with it, which removes them then.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(removal))),
            Err(_) => drop(removal),
        }
    }
}

/// An early folder's files, removed when dropped; then it is held no more (a tidy meanwhile
/// finds it held or gone).
struct Removal(PathBuf);

impl Drop for Removal {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%err, path = %self.0.display(), "removing an early index failed");
        }
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// The scans of arriving packs at once in this process: two at most (each holds up to 64
/// MiB of decoded objects).
pub(crate) static SCANS: crate::live::Turns = crate::live::Turns::new(2);

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
            self.pack.reading_reached(self.at);
            return Ok(read);
        }
    }
}

/// Scan `pack` as it arrives, then write what was found as a pack of its own in a new folder
/// of `git_dir`, with its index and `refs` as the mirror will have them: an [`Early`] once
/// the shallow closures of `wants` are found, with the history it walks (and those `more` wants meanwhile, see
/// [`Tips::asking`](gitcache_pack::early::Tips::asking)), or else once the pack is whole.
/// Should the scan go on only for wants not found yet (ids the pack may lack), what was
/// found by then is given to `meanwhile` first, as an [`Early`] of its own. What the walks
/// of the history go through is recorded in `walks`, and `ran_out` is called each time they
/// are refused a commit for want of room (see
/// [`Tips::when_walks_run_out`](gitcache_pack::early::Tips::when_walks_run_out)). Nothing
/// is written that would leave less than `keep` bytes free (`free` tells what is). Given up
/// once `stop` is set.
pub(crate) fn build(
    git_dir: &Path,
    pack: &std::sync::Arc<LivePack>,
    refs: &[RefLine],
    (wants, more): (
        gitcache_pack::early::Wants,
        impl FnMut() -> gitcache_pack::early::Wants + Send + 'static,
    ),
    floor: (crate::mirror::FreeSpace, u64),
    stop: &AtomicBool,
    (meanwhile, (walks, ran_out)): (
        impl FnOnce(Early) + Send + 'static,
        (
            std::sync::Arc<gitcache_pack::early::Walks>,
            impl FnMut() + Send + 'static,
        ),
    ),
) -> Result<Early, String> {
    let format = pack.object_format();
    let mut read = std::io::BufReader::with_capacity(
        1 << 16,
        Following {
            pack: pack.as_ref(),
            at: 0,
            stop,
        },
    );
    let mut tips = gitcache_pack::early::Tips::default()
        .wanting(wants)
        .asking(more)
        .reading_back({
            let pack = std::sync::Arc::clone(pack);
            move |buf, at| pack.read_at(buf, at)
        })
        .told_by({
            let pack = std::sync::Arc::clone(pack);
            move |at| pack.told_at(at)
        })
        .meanwhile({
            let (git_dir, pack, refs) = (
                git_dir.to_owned(),
                std::sync::Arc::clone(pack),
                refs.to_vec(),
            );
            move |found| match copy(&git_dir, &pack, &refs, floor, &found) {
                Ok(early) => meanwhile(early),
                Err(err) => tracing::debug!(%err, "no early index of what was found so far"),
            }
        })
        .sharing_walks(walks)
        .when_walks_run_out(ran_out);
    let found = gitcache_pack::early::scan_for(
        &mut read,
        format,
        gitcache_pack::early::Limits::default(),
        stop,
        Some(&mut tips),
    )
    .map_err(|err| err.to_string())?;
    // Nothing more to tell it of while it copies what it found.
    pack.reading_reached(u64::MAX);
    let read = read.into_inner().at;
    let passed = found.passed();
    tracing::debug!(
        found = found.len(),
        entries = found.entries(),
        bytes_read = read,
        read_back = found.read_back(),
        passed_for_budget = passed.budget,
        passed_base_gone = passed.base_gone,
        passed_large = passed.large,
        passed_other = passed.other,
        passed_unawaited = passed.unawaited,
        walked_late = tips.walked_late(),
        blobs_told = pack.told_count(),
        blobs_told_taken = found.told(),
        "the first pack's reading ended"
    );
    match (pack.progress(), found.checksum()) {
        // Stopped once the wanted closures were found: the rest is still arriving.
        (_, None) => {}
        (Progress::Whole(bytes), Some(_)) if bytes == read => {}
        (Progress::Whole(bytes), Some(_)) => {
            return Err(format!("the pack is {bytes} bytes, {read} were scanned"));
        }
        (other, Some(_)) => return Err(format!("the pack is not whole: {other:?}")),
    }
    copy(git_dir, pack, refs, floor, &found)
}

/// The objects `found` in `pack`, copied to a pack of their own in a new folder of
/// `git_dir`, with its index and `refs`, within the floor `keep` (see [`build`]).
fn copy(
    git_dir: &Path,
    pack: &LivePack,
    refs: &[RefLine],
    (free, keep): (crate::mirror::FreeSpace, u64),
    found: &gitcache_pack::early::Found,
) -> Result<Early, String> {
    // The copy and its index (the entries' bytes and 64 bytes an object at most), and room
    // left for what taking the pack in writes after it (its indexes, 64 bytes an object at
    // most): the copy is the one to go without.
    let needed = (found.bytes())
        .saturating_add(64 * found.len() as u64)
        .saturating_add(64 * u64::from(found.entries()));
    let available = free(git_dir).map_err(|err| err.to_string())?;
    if available.saturating_sub(needed) < keep {
        return Err(format!(
            "no room for a copy of {needed} bytes above the floor of {keep}"
        ));
    }
    let dir = EarlyDir::create(git_dir).map_err(|err| err.to_string())?;
    let packs = dir.packs();
    let (copy, index) = (packs.join("early.pack.tmp"), packs.join("early.idx.tmp"));
    // The refs' objects too: the refs written beside them are peeled.
    let also: Vec<gix_hash::ObjectId> = refs.iter().filter_map(|r| r.oid).collect();
    let written = found
        .write_pack(&|buf, at| pack.read_at(buf, at), &copy, &index, &also)
        .map_err(|err| err.to_string())?;
    let name = packs.join(format!("pack-{}", written.checksum));
    std::fs::rename(&copy, name.with_extension("pack")).map_err(|err| err.to_string())?;
    std::fs::rename(&index, name.with_extension("idx")).map_err(|err| err.to_string())?;
    let repo =
        gitcache_pack::Repository::open_unchecked(dir.git_dir()).map_err(|err| err.to_string())?;
    crate::mirror::write_refs(dir.git_dir(), &repo, refs).map_err(|err| err.to_string())?;
    Ok(Early::new(repo, written, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first pack read for a deeper shallow clone's objects behind its receiving: the
    /// reading takes the blobs stored whole the receiving told it of, and what it found is
    /// what a reading told nothing finds, its copy whole as git reads it.
    #[test]
    fn a_reading_behind_the_receiving_takes_the_blobs_it_is_told_of() {
        use crate::ingest::{Announce, ingest_pack_announced};
        use crate::live::{Asked, Board};
        use gitcache_testkit::git::{clone_pack, git_stdout as git};
        use gitcache_testkit::repo::{RepoSpec, generate};

        let dir = tempfile::tempdir().unwrap();
        let source = generate(&dir.path().join("src.git"), &RepoSpec::small(31))
            .unwrap()
            .path;
        let tip = git(&source, &["rev-parse", "main"]);
        let tip = gix_hash::ObjectId::from_hex(tip.trim().as_bytes()).unwrap();
        let pack = clone_pack(&source);
        let free: crate::mirror::FreeSpace = |_| Ok(u64::MAX);
        let mut found = Vec::new();
        for told in [true, false] {
            let mirror = dir.path().join(format!("mirror-{told}.git"));
            git(
                dir.path(),
                &["init", "-q", "--bare", mirror.to_str().unwrap()],
            );
            let board = std::sync::Arc::new(Board::default());
            // The bytes come once the reading is under way (or not): the pack is announced
            // before its first byte is read.
            struct Gated(Vec<u8>, usize, Option<std::sync::mpsc::Receiver<()>>);
            impl std::io::Read for Gated {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    if let Some(gate) = self.2.take() {
                        gate.recv().map_err(std::io::Error::other)?;
                    }
                    let n = buf.len().min(self.0.len() - self.1);
                    buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                    self.1 += n;
                    Ok(n)
                }
            }
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let receiving = std::thread::spawn({
                let (board, mirror) = (std::sync::Arc::clone(&board), mirror.clone());
                let mut gated = std::io::BufReader::new(Gated(pack.clone(), 0, Some(gate)));
                move || {
                    ingest_pack_announced(
                        &mirror,
                        gix_hash::Kind::Sha1,
                        &mut gated,
                        gitcache_pack::Closure::Unchecked,
                        Some(Announce {
                            board,
                            asked: Asked::first(vec![tip]),
                        }),
                    )
                }
            });
            let started = std::time::Instant::now();
            let live = loop {
                if let Some(live) = board.current() {
                    break live;
                }
                assert!(started.elapsed() < std::time::Duration::from_secs(60));
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            let reading = told.then(|| live.read_early());
            open.send(()).unwrap();
            // The whole pack received before the reading reads a byte: it is all behind.
            receiving.join().unwrap().unwrap();
            let walks = std::sync::Arc::new(gitcache_pack::early::Walks::default());
            let wants = gitcache_pack::early::Wants {
                tips: vec![tip],
                deep: vec![(tip, 40)],
                ..Default::default()
            };
            let early = build(
                &mirror,
                &live,
                &[],
                (wants, gitcache_pack::early::Wants::default),
                (free, 0),
                &AtomicBool::new(false),
                (|_| {}, (walks, || {})),
            )
            .unwrap();
            drop(reading);
            assert_eq!(live.told_taken() > 0, told, "{}", live.told_count());
            // The copy is whole as git reads it (every id rehashed).
            let packs = early.repository().git_dir().join("objects").join("pack");
            for entry in std::fs::read_dir(&packs).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "idx") {
                    git(dir.path(), &["verify-pack", path.to_str().unwrap()]);
                }
            }
            found.push(early.found());
        }
        assert_eq!(found[0], found[1]);
    }

    /// A folder held by this process is passed over by the tidying of leftovers, and goes
    /// once let go of; one no process holds is a crash's leftover, and a folder of the same
    /// name made elsewhere is not taken, nor removed.
    #[test]
    fn a_held_folder_is_no_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path();
        std::fs::create_dir_all(git_dir.join("objects").join("pack")).unwrap();
        std::fs::write(git_dir.join("config"), "[core]\n\tbare = true\n").unwrap();
        let held = EarlyDir::create(git_dir).unwrap();
        let written = held.packs().join("early.pack.tmp");
        std::fs::write(&written, b"being written").unwrap();
        let path = held.git_dir().to_owned();
        assert!(is_held(&path));
        crate::ingest::remove_leftovers(git_dir, true).unwrap();
        assert!(written.is_file(), "held: kept");
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
