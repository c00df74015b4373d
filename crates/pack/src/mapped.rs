//! Read-only maps of packs and of the files beside them: git's reverse indexes are read in
//! place, so a request touches only the pages it needs instead of copying whole files, and
//! gitoxide reads packs through these maps ([`crate::packs::PackData`]), so that a walk
//! reading much of a pack can let go of its pages as it goes ([`LetGo`]). A received pack is
//! read through a map while it is indexed, its pages let go of as the reading goes on
//! ([`ReadOnce`]).
//!
//! The crate's one reviewed exception to `forbid(unsafe_code)`: mapping a file is unsafe in
//! Rust because another process could change it while it is mapped, and so is letting go of
//! a map's pages, which reads them again from the file. These files never change in place:
//! git and gitcache write them whole under a temporary name and rename them into place, and
//! remove them by unlinking (the mapped inode lives on). gix maps packs and their indexes on
//! the same grounds.

#![allow(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file mapped read-only; its clones share the one map.
#[derive(Clone)]
pub(crate) struct Mapped(std::sync::Arc<memmap2::Mmap>);

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
        Ok(Mapped(std::sync::Arc::new(map)))
    }

    /// Drop every page of the map from the process (not from the page cache): a long reading
    /// of the file does not keep all of it resident. Elsewhere than on Unix, nothing.
    pub(crate) fn release(&self) -> std::io::Result<()> {
        // SAFETY: `MADV_DONTNEED` on a shared file mapping only unmaps its pages; the next
        // access maps them again from the page cache (or the file), with the same bytes: the
        // file never changes while mapped (see the module documentation), and the map is
        // read-only, so no write of ours is lost. Slices borrowed from it meanwhile (other
        // threads reading entries) read the same bytes before and after. memmap2 marks the
        // advice unsafe for every map: an anonymous one reads back zeroes, and a private one
        // loses what was written to it.
        #[cfg(unix)]
        unsafe {
            self.0.unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        }
        #[cfg(not(unix))]
        Ok(())
    }

    /// Drop the pages holding `range` of the file from the process, as [`release`] does for
    /// all of them: what one reader has just copied, leaving the pages other readers of the
    /// map are using where they are. The range is clamped to the file; the pages at its two
    /// ends go whole (a neighbour reading them maps them again).
    ///
    /// [`release`]: Self::release
    pub(crate) fn release_range(&self, range: std::ops::Range<u64>) -> std::io::Result<()> {
        let len = self.0.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len));
        if start >= end {
            return Ok(());
        }
        // Within the map's length once clamped (memmap2 checks the offset and the length
        // each against it, not their sum), so both fit a `usize`.
        let (start, end) = (start as usize, end as usize);
        // SAFETY: as for `release`: pages of a read-only shared file mapping, mapped again
        // with the same bytes when next read.
        #[cfg(unix)]
        unsafe {
            self.0
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        }
        #[cfg(not(unix))]
        Ok(())
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Counts what a long reading of a map touches, and says when to let go of its pages
/// ([`Mapped::release`]): every [`LetGo::EVERY`] bytes, each read counted with 64 KiB more
/// (reading a few bytes maps the pages around them too: Linux maps up to 64 KiB of what the
/// page cache holds at each fault). Counted by their bytes alone, the entries of a pack of
/// mostly small deltas kept 60 MB mapped between releases; with a page more, `large` peaked
/// at 31 MiB, with 64 KiB at 27 MiB.
#[derive(Debug)]
pub(crate) struct LetGo {
    read: AtomicU64,
    every: u64,
    /// How many times it said to let go (for tests to see that it did).
    #[cfg(test)]
    said: AtomicU64,
}

impl LetGo {
    /// Bytes read between two lettings go of the pages when each byte is read once (a pack
    /// indexed). At 16 MiB, taking in a 50 MB pack of large files peaked at 51 MiB, at 4 MiB
    /// 42 MiB; the 64,000 releases taking in a pack of 4 million objects took no time that
    /// could be measured.
    pub(crate) const EVERY: u64 = 4 << 20;

    /// What a read maps around its bytes.
    const AROUND: u64 = 64 << 10;

    /// Letting go every `every` bytes counted (at least one).
    pub(crate) fn every(every: u64) -> LetGo {
        LetGo {
            read: AtomicU64::new(0),
            every: every.max(1),
            #[cfg(test)]
            said: AtomicU64::new(0),
        }
    }

    /// Count `reads` reads of `len` bytes in all: whether the pages should go now.
    pub(crate) fn read(&self, len: u64, reads: u64) -> bool {
        let len = len.saturating_add(reads.saturating_mul(Self::AROUND));
        let before = self.read.fetch_add(len, Ordering::Relaxed);
        let now = before / self.every != before.wrapping_add(len) / self.every;
        #[cfg(test)]
        if now {
            self.said.fetch_add(1, Ordering::Relaxed);
        }
        now
    }

    /// How many times [`read`](Self::read) said to let go.
    #[cfg(test)]
    pub(crate) fn said(&self) -> u64 {
        self.said.load(Ordering::Relaxed)
    }
}

/// What a reader moving forward through a map (runs of a pack copied in pack order) read
/// since it last let go of pages: a stretch, let go of ([`Mapped::release_range`]) once it
/// spans [`Forward::STRETCH`] bytes, or before a read further than that from it. A stretch
/// holds what was read and the gaps between, each narrower than a stretch: the pages of
/// distant parts of the map, which other readers may be using, are kept.
#[derive(Debug, Default)]
pub(crate) struct Forward {
    start: u64,
    end: u64,
    /// Whether anything was read since the last letting go.
    read: bool,
}

impl Forward {
    /// The span of a stretch, and the widest gap it spans. Each madvise is a system call,
    /// and the pages at a stretch's ends are mapped again if read again: a run of small
    /// entries let go of one by one would fault on the same page over and over.
    pub(crate) const STRETCH: u64 = 1 << 20;

    /// `range` was read, after what was read before it: the stretch to let go of now, if any.
    pub(crate) fn read(&mut self, range: std::ops::Range<u64>) -> Option<std::ops::Range<u64>> {
        debug_assert!(!self.read || range.start >= self.start, "read in order");
        if self.read && range.start > self.end.saturating_add(Self::STRETCH) {
            // Far from the stretch: it goes, and this read starts the next one.
            let done = self.start..self.end;
            *self = Forward {
                start: range.start,
                end: range.end,
                read: true,
            };
            return Some(done);
        }
        if !self.read {
            self.start = range.start;
            self.read = true;
        }
        self.end = self.end.max(range.end);
        (self.end.saturating_sub(self.start) >= Self::STRETCH)
            .then(|| self.rest())
            .flatten()
    }

    /// The stretch read and not let go of yet (none if nothing was).
    pub(crate) fn rest(&mut self) -> Option<std::ops::Range<u64>> {
        let done = std::mem::take(self);
        done.read.then_some(done.start..done.end)
    }
}

/// Entries inflated from a pack: their compressed bytes and their number, which a reader
/// letting go of the pack's pages counts ([`LetGo::read`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Inflated {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
}

impl Inflated {
    /// One more entry, of `bytes` compressed.
    pub(crate) fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.entries = self.entries.saturating_add(1);
    }

    /// Counted by `let_go` (and then none): whether the pages should go now.
    pub(crate) fn count(&mut self, let_go: &LetGo) -> bool {
        let taken = std::mem::take(self);
        taken.entries > 0 && let_go.read(taken.bytes, taken.entries)
    }
}

/// A file read through once, in an order of its reader's own, whose pages are let go of as
/// [`LetGo`] says: a pack being indexed, which gitoxide's delta traversal reads as one
/// borrowed slice. Without this, every page of the pack stayed mapped into the process until
/// the end, and counted in its resident memory: 1.3 GB of the 2 GB an indexing of 4 million
/// objects took, where git's `index-pack` reads through a buffer.
///
/// The pages go back to the page cache, not away: the file is read again from there (a minor
/// fault) if a page is wanted again, and the pack's first readers find it there.
pub(crate) struct ReadOnce {
    map: Mapped,
    read: LetGo,
}

impl std::fmt::Debug for ReadOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnce")
            .field("len", &self.map.len())
            .field("read", &self.read)
            .finish()
    }
}

impl ReadOnce {
    /// Map the file at `path`.
    pub(crate) fn open(path: &Path) -> std::io::Result<ReadOnce> {
        Ok(ReadOnce {
            map: Mapped::open(path)?,
            read: LetGo::every(LetGo::EVERY),
        })
    }

    /// The whole file.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The bytes in `range`, `None` past the end, counted as read: the file's pages are let
    /// go of when [`LetGo`] says so.
    pub(crate) fn read(&self, range: std::ops::Range<u64>) -> Option<&[u8]> {
        let bytes = self
            .map
            .get(usize::try_from(range.start).ok()?..usize::try_from(range.end).ok()?)?;
        if self.read.read(bytes.len() as u64, 1) {
            // Failing to let go only costs memory.
            let _ = self.map.release();
        }
        Some(bytes)
    }
}

/// Resident bytes of the mapping holding `at`, from `/proc/self/smaps`.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn resident(at: *const u8) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let at = at as usize;
    let mut inside = false;
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((Ok(start), Ok(end))) =
            range.map(|(s, e)| (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)))
        {
            inside = (start..end).contains(&at);
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            return kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .unwrap()
                << 10;
        }
    }
    panic!("no mapping holds {at:#x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forward reader lets go of what it read in stretches of about a MiB, the gaps
    /// between its reads with them, and of a stretch before a wide gap, never of the gap.
    #[test]
    fn forward_reads_go_in_stretches_without_their_wide_gaps() {
        let mib = Forward::STRETCH;
        let mut forward = Forward::default();
        assert_eq!(forward.rest(), None);
        // Small runs close to each other: one stretch, let go of once it spans a MiB.
        let mut gone = Vec::new();
        for i in 0..40u64 {
            let start = 100 + i * 40_000;
            gone.extend(forward.read(start..start + 30_000));
        }
        assert_eq!(gone, vec![100..100 + 26 * 40_000 + 30_000]);
        // A gap wider than a stretch: what was read before it goes, alone.
        assert_eq!(
            forward.read(10 * mib..10 * mib + 500),
            Some(27 * 40_000 + 100..39 * 40_000 + 30_100)
        );
        assert_eq!(forward.read(10 * mib + 600..10 * mib + 700), None);
        // Small reads far apart, each gap under a stretch: let go of once they span one.
        assert_eq!(forward.read(10 * mib + 900_000..10 * mib + 900_100), None);
        assert_eq!(
            forward.read(11 * mib + 100..11 * mib + 200),
            Some(10 * mib..11 * mib + 200)
        );
        assert_eq!(forward.rest(), None);
        // A piece of a MiB at once goes at once.
        assert_eq!(
            forward.read(11 * mib + 300..12 * mib + 300),
            Some(11 * mib + 300..12 * mib + 300)
        );
        assert_eq!(forward.read(20 * mib..20 * mib + 5), None);
        assert_eq!(forward.rest(), Some(20 * mib..20 * mib + 5));
        assert_eq!(forward.rest(), None);
    }

    /// Letting go of a range drops its pages alone, whatever the range's alignment, and a
    /// range reaching past the end is clamped to the file.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_range_let_go_leaves_the_other_pages_resident() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        let mib = 1usize << 20;
        let len = 16 * mib + 999;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 241) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let map = Mapped::open(&path).unwrap();
        let touch = |map: &Mapped| (0..len).step_by(4096).map(|i| map[i] as u64).sum::<u64>();
        std::hint::black_box(touch(&map));
        let whole = resident(map.as_ptr());
        assert!(whole >= 16 * mib, "{whole} resident after reading it all");
        // The file's pages may be mapped in folios of up to 2 MiB (ext4 on Linux 6.18 maps
        // them so), which go whole.
        let folio = 2 * mib;
        // Four MiB, not on page boundaries: those pages go, a page or folio either side at
        // most.
        map.release_range(4 * mib as u64 + 100..8 * mib as u64 + 100)
            .unwrap();
        let after = resident(map.as_ptr());
        assert!(
            after <= whole - 4 * mib + 8192 && after >= whole - 4 * mib - 2 * folio,
            "{after} resident after letting go of 4 MiB of {whole}"
        );
        // Past the end: clamped, the tail goes; wholly past it, or empty: nothing.
        map.release_range(15 * mib as u64..u64::MAX).unwrap();
        map.release_range(len as u64 + 1..len as u64 + 5000)
            .unwrap();
        map.release_range(3 * mib as u64..3 * mib as u64).unwrap();
        let tail = resident(map.as_ptr());
        assert!(
            tail + mib <= after && tail + mib + folio + 8192 >= after,
            "{tail} resident after letting go of the last MiB and more, {after} before"
        );
        // What was let go of reads the same again.
        assert!(map[..] == bytes[..]);
    }

    /// A file read through whole keeps about one stretch between releases resident, not the
    /// whole file, and what is read again (a slice held across releases too) is the file's.
    #[test]
    #[cfg(target_os = "linux")]
    fn pages_read_are_let_go_and_read_the_same_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        let every = usize::try_from(LetGo::EVERY).unwrap();
        let len = 4 * every + 12_345;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = ReadOnce::open(&path).unwrap();
        let held = file.read(0..4096).unwrap();
        let (mut most, mut least_after_release) = (0, usize::MAX);
        let step = 1 << 20;
        for start in (0..len).step_by(step) {
            let end = (start + step).min(len);
            let read = file.read(start as u64..end as u64).unwrap();
            assert!(read == &bytes[start..end], "bytes at {start}");
            let now = resident(file.bytes().as_ptr());
            most = most.max(now);
            if start >= every {
                least_after_release = least_after_release.min(now);
            }
        }
        assert!(held == &bytes[..4096]);
        assert!(file.read(len as u64..len as u64 + 1).is_none());
        // Read whole, the file was resident at one time or another, never all at once.
        assert!(
            most >= step && most <= every + 2 * step,
            "{most} resident at most"
        );
        assert!(
            least_after_release <= 2 * step,
            "{least_after_release} after a release"
        );
    }
}
