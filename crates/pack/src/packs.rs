//! Whole-pack reuse: when the objects to send are exactly one stored pack's objects, the pack
//! file goes out as it is, with no per-object work.
//!
//! Two ways to know it:
//! - after selection, by comparing the selected set with each pack of the same size;
//! - before any selection, by a `pack-<hash>.tips` file beside the pack, written by
//!   [`Repository::mark_pack_tips`](crate::Repository::mark_pack_tips) once it has checked that
//!   the pack holds exactly the objects reachable from those tips. A clone whose wants are
//!   those tips is then answered with no walk at all. Git ignores files it does not know in
//!   `objects/pack`, and a pack never changes, so the mark stays true for its pack's life.

use std::io::Write;
use std::path::{Path, PathBuf};

use gix_hash::{Kind as HashKind, ObjectId};

use crate::Error;
use crate::OidSet;

/// A stored pack and, if marked, the tips it is the closure of.
#[derive(Clone)]
pub(crate) struct StoredPack {
    pub(crate) pack: PathBuf,
    /// Shared by every request on the repository handle (one mapping of the file).
    pub(crate) index: std::sync::Arc<gix_pack::index::File>,
    pub(crate) tips: Option<std::sync::Arc<OidSet>>,
    /// The pack file mapped, once asked for; shared like the index.
    pub(crate) data: MappedData,
    /// The graph of the pack's commits (`pack-<checksum>.graph`), if it has a sound one.
    pub(crate) graph: Option<std::sync::Arc<crate::graph::Graph>>,
}

/// A pack file as gitoxide reads it, through gitcache's own map of it (whose pages a long
/// walk may let go of: [`StoredPack::let_go`]).
pub(crate) type PackData = gix_pack::data::File<crate::mapped::Mapped>;

/// A pack file's mapping, made when first needed and kept by the repository handle: mapping
/// it for each answer that copies from it, and unmapping it after, were a tenth of such an
/// answer (page faults on every page touched again, and the unmapping).
pub(crate) type MappedData =
    std::sync::Arc<std::sync::Mutex<Option<(std::sync::Arc<PackData>, crate::mapped::Mapped)>>>;

impl std::fmt::Debug for StoredPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPack")
            .field("pack", &self.pack)
            .finish_non_exhaustive()
    }
}

impl StoredPack {
    pub(crate) fn num_objects(&self) -> usize {
        self.index.num_objects() as usize
    }

    pub(crate) fn contains(&self, oid: &ObjectId) -> bool {
        lookup(&self.index, oid).is_some()
    }

    /// Whether an object of `bases` stored whole here would be tried as a delta against one
    /// at its path, as the writer tries them: the client's (in a `thin` pack), or the one
    /// sent before it, stored whole too. `true` if the pack cannot be read, which says
    /// nothing either way.
    pub(crate) fn tries_by_path(
        &self,
        bases: &crate::OidMap<crate::select::PathBase>,
        thin: bool,
        hash: HashKind,
    ) -> bool {
        if bases.is_empty() {
            return false;
        }
        let Ok(data) = self.data(hash) else {
            return true;
        };
        let whole = |oid: &ObjectId| {
            lookup(&self.index, oid)
                .is_some_and(|i| stored_whole_at(&data, self.index.pack_offset_at_index(i)))
        };
        bases.iter().any(|(oid, base)| {
            let offered = (thin && base.client.is_some()) || base.sent.is_some_and(|s| whole(&s));
            offered && whole(oid)
        })
    }

    /// The pack file, mapped once for every user of this repository handle (an error, as
    /// when no file handle is free, is not kept: it is tried again next time).
    pub(crate) fn data(&self, hash: HashKind) -> Result<std::sync::Arc<PackData>, Error> {
        let mut kept = self.data.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((data, _)) = kept.as_ref() {
            return Ok(std::sync::Arc::clone(data));
        }
        let map = crate::mapped::Mapped::open(&self.pack)?;
        let data = std::sync::Arc::new(
            PackData::from_data(map.clone(), self.pack.clone(), hash).map_err(Error::odb)?,
        );
        *kept = Some((std::sync::Arc::clone(&data), map));
        Ok(data)
    }

    /// Let go of the pages of the pack file read so far, if it is mapped: a walk reading much
    /// of a large pack (writing its bitmaps) keeps only what it reads between two calls
    /// resident, not the whole file. Readers sharing the map read the pages again from the
    /// page cache.
    pub(crate) fn let_go(&self) {
        if let Some(map) = self.mapped() {
            // Failing to let go only costs memory.
            let _ = map.release();
        }
    }

    /// Let go of the pages holding `range` of the pack file, if it is mapped: a reader done
    /// with a large stretch it copied (runs of the pack) keeps none of it resident and leaves
    /// the rest of the map, which other answers may be reading, as it is.
    pub(crate) fn let_go_of(&self, range: std::ops::Range<u64>) {
        if let Some(map) = self.mapped() {
            // Failing to let go only costs memory.
            let _ = map.release_range(range);
        }
    }

    /// The pack file's map, if it is mapped ([`Self::data`] maps it); taken out of the lock,
    /// so that letting go of its pages holds no other reader of the handle up.
    pub(crate) fn mapped(&self) -> Option<crate::mapped::Mapped> {
        (self.data.lock().unwrap_or_else(|p| p.into_inner()))
            .as_ref()
            .map(|(_, map)| map.clone())
    }
}

/// The number of entries the header of the pack file at `path` says it holds, if it can be
/// read.
pub(crate) fn header_count(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut header = [0; gix_pack::data::header::SIZE];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    gix_pack::data::header::decode(&header)
        .ok()
        .map(|(_, count)| count)
}

/// Whether the entry of `data` at offset `at` is a whole object: its type, in its first byte,
/// is not a delta's (6 or 7). `false` if it cannot be read.
pub(crate) fn stored_whole_at(data: &PackData, at: u64) -> bool {
    data.entry_slice(at..at.saturating_add(1))
        .and_then(|b| b.first().copied())
        .is_some_and(|b| !matches!((b >> 4) & 7, 6 | 7))
}

/// Whether the entry at `offset` of `data`, whose header of `header_len` bytes states `size`
/// bytes of content (a whole object's, or a delta's), may end at `end`: where the next one in
/// pack order starts (see [`RevIndex::offset`]), the end of an entry copied as stored. Within
/// twice the content and 64 bytes (and no shorter than the shortest zlib stream) it is taken
/// to: zlib's deflate makes at most a 4,096th more than its input and a few bytes, and any
/// compressor's stored blocks 5 bytes in 65,535.
/// Past that, a valid zlib stream may still be as long (one padded with empty blocks, as an
/// upstream may send), or the end is wrong (a damaged reverse index trusted unread, or a
/// damaged index, would make each entry copied run on over the rest of the pack): the stream
/// is inflated, to nowhere, to find where it ends.
pub(crate) fn entry_ends_at(
    data: &PackData,
    offset: u64,
    header_len: u64,
    size: u64,
    end: u64,
) -> bool {
    // The shortest zlib stream is 8 bytes (its header, an empty block, its checksum).
    let Some(stream_len) = end
        .checked_sub(offset)
        .and_then(|len| len.checked_sub(header_len))
    else {
        return false;
    };
    if stream_len < 8 {
        return false;
    }
    if stream_len <= size.saturating_mul(2).saturating_add(64) {
        return true;
    }
    let Some(stream) = data.entry_slice(offset.saturating_add(header_len)..end) else {
        return false;
    };
    let mut inflate = flate2::Decompress::new(true);
    let mut sink = [0u8; 8192];
    loop {
        let before = (inflate.total_in(), inflate.total_out());
        let Some(rest) = usize::try_from(before.0)
            .ok()
            .and_then(|at| stream.get(at..))
        else {
            return false;
        };
        match inflate.decompress(rest, &mut sink, flate2::FlushDecompress::None) {
            Ok(flate2::Status::StreamEnd) => {
                return inflate.total_in() == stream.len() as u64 && inflate.total_out() == size;
            }
            Ok(_)
                if inflate.total_out() <= size
                    && (inflate.total_in(), inflate.total_out()) != before => {}
            _ => return false,
        }
    }
}

/// The size of the object whose entry is at offset `at` of `data`, as that entry states it: a
/// whole object's from its header, a delta's from the start of its delta (the size of what it
/// makes), as git reads sizes for `blob:limit`. One entry is read, not its delta chain. `None`
/// if the entry cannot be read.
pub(crate) fn stated_size(
    data: &PackData,
    at: u64,
    inflate: &mut gix_zlib::Inflate,
) -> Option<u64> {
    let entry = data.entry(at).ok()?;
    if entry.header.as_kind().is_some() {
        return Some(entry.decompressed_size);
    }
    // A delta starts with two sizes of at most ten bytes each. Inflating stops once they
    // are out, however much of the pack the input reaches to.
    let end = (data.pack_end() as u64).min(entry.data_offset.saturating_add(64 << 10));
    let input = data.entry_slice(entry.data_offset..end)?;
    let mut sizes = [0u8; 20];
    inflate.reset();
    let (_, _, written) = inflate.once(input, &mut sizes).ok()?;
    crate::delta::target_size(&sizes[..written])
}

/// Interpolation probes [`lookup`] makes before it searches by halves.
const INTERPOLATIONS: usize = 6;

/// The index position of `oid` in `index`, as `index.lookup` finds it, in fewer probes: ids
/// are hashes, spread evenly, so where the first eight bytes of `oid` fall between the bounds
/// known of the range's keys is close to where it is. Each probe reads one id (a cache miss
/// in a large index: the bounds are the keys probed before, not read again) and compares two
/// integers, where halving the range reads a dozen ids. After [`INTERPOLATIONS`] probes, or
/// on two ids sharing their first eight bytes, what is left is searched by halves: a table
/// made to mislead the guesses costs no more than that.
pub(crate) fn lookup(index: &gix_pack::index::File, oid: &gix_hash::oid) -> Option<u32> {
    let mut probe = Probe::new(index, oid);
    while probe.step(index, oid) {}
    probe.finish(index, oid)
}

/// [`lookup`] of each of `ids`, a few at a time with their probes taken in turns: the probes
/// of different ids do not wait for each other, so the processor has several reads from a
/// large index under way at once instead of one.
pub(crate) fn lookup_many(
    index: &gix_pack::index::File,
    ids: &[&gix_hash::oid],
) -> Vec<Option<u32>> {
    const AT_ONCE: usize = 16;
    let mut found = Vec::with_capacity(ids.len());
    for group in ids.chunks(AT_ONCE) {
        let mut probes: Vec<Probe> = group.iter().map(|oid| Probe::new(index, oid)).collect();
        for _ in 0..INTERPOLATIONS {
            let mut going = false;
            for (probe, oid) in probes.iter_mut().zip(group) {
                going |= probe.step(index, oid);
            }
            if !going {
                break;
            }
        }
        for (probe, oid) in probes.iter().zip(group) {
            found.push(probe.finish(index, oid));
        }
    }
    found
}

/// One [`lookup`] under way.
struct Probe {
    /// The range that holds the id if the index does.
    lo: u32,
    hi: u32,
    /// Every key in `lo..hi` lies within `low..=high` (in a sorted index): at first any key,
    /// then the keys of the probes that bounded the range; `low <= target <= high` holds.
    low: u64,
    high: u64,
    /// The first eight bytes of the id.
    target: u64,
    probes: usize,
    /// Found by a probe, or left to the search by halves.
    hit: Option<u32>,
    settled: bool,
}

impl Probe {
    fn new(index: &gix_pack::index::File, oid: &gix_hash::oid) -> Self {
        let target = Self::key(oid);
        Probe {
            lo: 0,
            hi: index.num_objects(),
            low: 0,
            high: u64::MAX,
            target,
            probes: 0,
            hit: None,
            settled: false,
        }
    }

    /// What the search compares: an id's first eight bytes.
    fn key(id: &gix_hash::oid) -> u64 {
        u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("ids are longer"))
    }

    /// One interpolation probe; whether another is worth making.
    fn step(&mut self, index: &gix_pack::index::File, oid: &gix_hash::oid) -> bool {
        if self.settled
            || self.probes == INTERPOLATIONS
            || self.hi - self.lo <= 8
            || self.low >= self.high
        {
            self.settled = true;
            return false;
        }
        self.probes += 1;
        let share = u128::from(self.target - self.low) * u128::from(self.hi - 1 - self.lo)
            / u128::from(self.high - self.low);
        let guess = self.lo + u32::try_from(share).expect("within the range");
        let id = index.oid_at_index(guess);
        let key = Self::key(id);
        match key.cmp(&self.target) {
            std::cmp::Ordering::Less => (self.lo, self.low) = (guess + 1, key),
            std::cmp::Ordering::Greater => (self.hi, self.high) = (guess, key),
            std::cmp::Ordering::Equal => {
                self.settled = true;
                if id == oid {
                    self.hit = Some(guess);
                }
                return false;
            }
        }
        true
    }

    /// The position found, by the probes or by halving what is left of the range.
    fn finish(&self, index: &gix_pack::index::File, oid: &gix_hash::oid) -> Option<u32> {
        if self.hit.is_some() {
            return self.hit;
        }
        let (mut lo, mut hi) = (self.lo, self.hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match index.oid_at_index(mid).cmp(oid) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }
}

/// Pack indexes by file, opened once per repository handle (a pack never changes) and
/// dropped when their pack is gone.
#[derive(Default)]
pub(crate) struct IndexCache(std::sync::Mutex<std::collections::HashMap<PathBuf, Opened>>);

/// What is kept of one pack between listings.
struct Opened {
    index: std::sync::Arc<gix_pack::index::File>,
    data: MappedData,
    /// Its commit graph: loaded, found damaged (not read again), or not there yet (looked
    /// for at every listing: maintenance writes it after the pack).
    graph: GraphState,
    /// The index and pack files as they were before they were read.
    stamps: (Option<Stamp>, Option<Stamp>),
    /// Its tips as read, with their file as it was before (read again when it changes: a
    /// pack is marked after it is listed).
    tips: (Option<Stamp>, Option<std::sync::Arc<OidSet>>),
}

enum GraphState {
    Absent,
    /// With the file as it was before it was read.
    Loaded(std::sync::Arc<crate::graph::Graph>, Option<Stamp>),
    Damaged,
}

/// A version of a file: its device and inode, length, and times of change. Files beside a
/// pack are replaced by renaming a new one into place, which gives them a new inode (or one
/// freed since, whose time of last change is then later: that time cannot be set back). A
/// pack file's own name is its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed: (i64, i64),
}

impl Stamp {
    /// `path` as it is now (`None`: not there, or unreadable).
    pub(crate) fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let (device, inode, changed) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), (meta.ctime(), meta.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let (device, inode, changed) = (0, 0, (0, 0));
        Some(Stamp {
            device,
            inode,
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
        })
    }

    /// Whether `path` is still the file `before` was taken of (a file that was not there
    /// still is not).
    pub(crate) fn unchanged(path: &Path, before: Option<Stamp>) -> bool {
        Stamp::of(path) == before
    }
}

impl IndexCache {
    /// Take what `from` (another handle's) opened of packs whose index and pack files are
    /// still the ones it read, so that a handle opened again does not map and load them
    /// again. A commit graph comes along while its file is unchanged; one found damaged is
    /// looked for again (maintenance writes it again). Returns the packs taken, with their
    /// indexes.
    pub(crate) fn adopt(&self, from: &IndexCache) -> Vec<Adopted> {
        let from = from.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut into = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut packs = Vec::new();
        for (idx, opened) in from.iter() {
            let pack = idx.with_extension("pack");
            if opened.stamps.0.is_none()
                || !Stamp::unchanged(idx, opened.stamps.0)
                || !Stamp::unchanged(&pack, opened.stamps.1)
            {
                continue;
            }
            let graph = match &opened.graph {
                GraphState::Loaded(graph, stamp)
                    if Stamp::unchanged(&idx.with_extension("graph"), *stamp) =>
                {
                    GraphState::Loaded(std::sync::Arc::clone(graph), *stamp)
                }
                _ => GraphState::Absent,
            };
            into.insert(
                idx.clone(),
                Opened {
                    index: std::sync::Arc::clone(&opened.index),
                    data: std::sync::Arc::clone(&opened.data),
                    graph,
                    stamps: opened.stamps,
                    tips: opened.tips.clone(),
                },
            );
            packs.push((pack, std::sync::Arc::clone(&opened.index)));
        }
        packs
    }
}

/// A pack file taken by a handle from another, with the index that handle had read.
pub(crate) type Adopted = (PathBuf, std::sync::Arc<gix_pack::index::File>);

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache").finish_non_exhaustive()
    }
}

/// The packs of `objects/pack` that have both an index and a data file, the largest first.
pub(crate) fn list(
    git_dir: &Path,
    hash: HashKind,
    indexes: &IndexCache,
) -> Result<Vec<StoredPack>, Error> {
    let dir = git_dir.join("objects").join("pack");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut open = indexes.0.lock().unwrap_or_else(|p| p.into_inner());
    let mut packs = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("idx") {
            continue;
        }
        let pack = path.with_extension("pack");
        if !pack.is_file() {
            continue;
        }
        let opened = match open.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // Taken before the files are read: a file replaced meanwhile is not taken
                // for the one read (see `IndexCache::adopt`).
                let stamps = (Stamp::of(&path), Stamp::of(&pack));
                entry.insert(Opened {
                    index: std::sync::Arc::new(
                        gix_pack::index::File::at(&path, hash).map_err(Error::odb)?,
                    ),
                    data: MappedData::default(),
                    graph: GraphState::Absent,
                    stamps,
                    tips: (None, None),
                })
            }
        };
        if matches!(opened.graph, GraphState::Absent) {
            let graph = path.with_extension("graph");
            let stamp = Stamp::of(&graph);
            if stamp.is_some() && graph.is_file() {
                opened.graph = match crate::graph::Graph::load(&graph, hash) {
                    Ok(loaded) => GraphState::Loaded(std::sync::Arc::new(loaded), stamp),
                    Err(_) => GraphState::Damaged,
                };
            }
        }
        let tips_path = path.with_extension("tips");
        let stamp = Stamp::of(&tips_path);
        if stamp.is_none() || stamp != opened.tips.0 {
            // Stamped before it is read: a file replaced meanwhile is read again next time,
            // and so is one that could not be read.
            opened.tips = match stamp.map(|_| read_tips(&tips_path, hash)) {
                Some(Ok(tips)) => (stamp, tips.map(std::sync::Arc::new)),
                _ => (None, None),
            };
        }
        packs.push(StoredPack {
            pack,
            index: std::sync::Arc::clone(&opened.index),
            tips: opened.tips.1.clone(),
            data: std::sync::Arc::clone(&opened.data),
            graph: match &opened.graph {
                GraphState::Loaded(graph, _) => Some(std::sync::Arc::clone(graph)),
                _ => None,
            },
        });
    }
    open.retain(|idx, _| packs.iter().any(|p| p.pack.with_extension("idx") == *idx));
    // Largest first, then by name: an object is looked for pack by pack in this order, and a
    // mirror is mostly one large pack (its first fetch or its consolidation) beside the small
    // ones of later fetches. The directory's own order (a hash of the names on most file
    // systems) put the large pack anywhere, so a lookup probed the small indexes before it
    // as often as not.
    packs.sort_by(|a, b| {
        b.num_objects()
            .cmp(&a.num_objects())
            .then_with(|| a.pack.cmp(&b.pack))
    });
    Ok(packs)
}

/// The most bytes of a `.tips` file: one written larger is not written (its pack stays
/// unmarked), one found larger is not read. Tips are refs' targets, so the file is smaller
/// than the `ls-refs` answer they came from (bounded at 256 MiB by the upstream client).
pub const MAX_TIPS_FILE_BYTES: u64 = 256 << 20;

/// The tips in the file at `path`: `Ok(None)` when there is none, or it is too large or not
/// a list of ids; an error when it could not be read (tried again at the next listing).
fn read_tips(path: &Path, hash: HashKind) -> std::io::Result<Option<OidSet>> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    if len > MAX_TIPS_FILE_BYTES {
        return Ok(None);
    }
    let mut text = Vec::with_capacity(len as usize);
    // Bounded again: the file may have grown since.
    file.take(MAX_TIPS_FILE_BYTES + 1).read_to_end(&mut text)?;
    let Ok(text) = std::str::from_utf8(&text) else {
        return Ok(None);
    };
    if text.len() as u64 > MAX_TIPS_FILE_BYTES {
        return Ok(None);
    }
    Ok(text
        .lines()
        .map(|l| {
            let l = l.trim();
            (l.len() == hash.len_in_hex())
                .then(|| ObjectId::from_hex(l.as_bytes()).ok())
                .flatten()
        })
        .collect())
}

/// The one pack whose objects are exactly `objects`, if any.
pub(crate) fn exact_match<'a>(
    packs: &'a [StoredPack],
    objects: &[&ObjectId],
) -> Option<&'a StoredPack> {
    packs
        .iter()
        .filter(|p| p.num_objects() == objects.len() && !objects.is_empty())
        .find(|p| objects.iter().all(|oid| p.contains(oid)))
}

/// Write `tips` beside `pack` atomically; `None` (nothing written) when there are too many
/// for [`MAX_TIPS_FILE_BYTES`].
pub(crate) fn write_tips(pack: &Path, tips: &OidSet) -> Result<Option<PathBuf>, Error> {
    write_tips_within(pack, tips, MAX_TIPS_FILE_BYTES)
}

fn write_tips_within(pack: &Path, tips: &OidSet, max: u64) -> Result<Option<PathBuf>, Error> {
    let path = pack.with_extension("tips");
    let Some(first) = tips.iter().next() else {
        write_beside_pack(&path, b"")?;
        return Ok(Some(path));
    };
    if tips.len() as u64 * (first.kind().len_in_hex() as u64 + 1) > max {
        return Ok(None);
    }
    let mut sorted: Vec<&ObjectId> = tips.iter().collect();
    sorted.sort();
    let mut text = Vec::new();
    for oid in sorted {
        writeln!(text, "{oid}")?;
    }
    write_beside_pack(&path, &text)?;
    Ok(Some(path))
}

/// Write a file beside a pack atomically: through a temporary named `incoming-…` in the same
/// folder (what mirrors remove after a crash), synced, then renamed into place.
pub(crate) fn write_beside_pack(path: &Path, data: &[u8]) -> Result<(), Error> {
    write_beside_pack_with(path, |file| Ok(file.write_all(data)?))
}

/// [`write_beside_pack`], the content written by `write` to the file as it is made.
pub(crate) fn write_beside_pack_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), Error>,
) -> Result<(), Error> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!("incoming-{}-{name}", std::process::id()));
    let written = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(std::fs::rename(&tmp, path)?)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The number git's reverse index names `hash` by, if it has one for it.
pub(crate) fn rev_format_id(hash: HashKind) -> Option<u32> {
    match hash {
        HashKind::Sha1 => Some(1),
        HashKind::Sha256 => Some(2),
        _ => None,
    }
}

/// Write git's reverse index (version 1) to `out`: the index positions `0..n` of a pack's
/// objects in the order they are in the pack (`offset_at` gives each one's offset), the
/// pack's `checksum`, and the file's own. An object format without one
/// ([`rev_format_id`]) is an error.
pub(crate) fn write_rev<W: Write>(
    out: W,
    n: usize,
    offset_at: impl Fn(u32) -> u64,
    checksum: &ObjectId,
    hash: HashKind,
) -> Result<W, Error> {
    let id = rev_format_id(hash).ok_or_else(|| Error::odb("no reverse index for this format"))?;
    let (order, _) = by_offset(n, offset_at);
    let mut out = crate::write::Sink::new(out, hash);
    out.write_all(b"RIDX")?;
    out.write_all(&1u32.to_be_bytes())?;
    out.write_all(&id.to_be_bytes())?;
    // Hashed a chunk at a time, not four bytes at a time.
    let mut chunk = Vec::with_capacity(1 << 16);
    for position in order {
        chunk.extend_from_slice(&position.to_be_bytes());
        if chunk.len() >= 1 << 16 {
            out.write_all(&chunk)?;
            chunk.clear();
        }
    }
    out.write_all(&chunk)?;
    out.write_all(checksum.as_bytes())?;
    out.flush()?;
    let (mut out, own) = out.finish()?;
    out.write_all(own.as_bytes())?;
    out.flush()?;
    Ok(out)
}

/// Index positions of a pack's objects in pack order: git's reverse index (its `.rev` file
/// read in place, or built from the index when there is none), and (made when first asked
/// for) each index position's pack position.
#[derive(Debug)]
pub(crate) struct RevIndex {
    /// Objects in the pack.
    objects: usize,
    order: Order,
    inverse: std::sync::OnceLock<Vec<u32>>,
    /// Lookups of pack positions so far, while there is no table for them.
    lookups: std::sync::atomic::AtomicUsize,
    /// Every entry's offset by pack position, made once many were read (`None` inside: a
    /// pack of 4 GiB or more, whose offsets are read from the index each time).
    offsets: std::sync::OnceLock<Option<Vec<u32>>>,
    /// Offsets read from the index so far, while there is no table of them.
    offset_reads: std::sync::atomic::AtomicUsize,
    /// The pack's delta forest, read when first needed (`None`: unreadable).
    forest: std::sync::OnceLock<Option<crate::forest::DeltaForest>>,
    /// The `.rev` file is read in place trusted unread (see [`RevIndex::load_trusted`]).
    unread: bool,
}

#[derive(Debug)]
enum Order {
    /// git's `.rev`: big-endian positions after a 12-byte header (one past the last reads
    /// as the last).
    Mapped(crate::mapped::Mapped),
    Built(Vec<u32>),
}

/// Whether `rev` (a whole `.rev` file of `n` positions after its header) was written for
/// `pack`: its trailer names the pack's checksum; and, if `whole`, every position is within
/// the pack and the file ends with its own checksum. One that was not (another pack's, or
/// damaged) could name entries out of offset order, or some twice and others not at all:
/// answers from it would be wrong, and a server keeps answers to send again. Hashing the file
/// reads it in order; checking the order itself read the index's offsets in random order,
/// most of a small fetch's time on a large pack. A server checks each pack's file once, when
/// it first loads it ([`RevCache`] keeps it for the handles after); a process answering one
/// request may trust it as git does ([`Repository::trusting_reverse_indexes`]).
///
/// The whole file is read a MiB at a time, each let go of once read
/// ([`Mapped::release_range`]): a check leaves none of the file in the process (16 MB at 4
/// million objects); answers map again the pages they read.
///
/// [`Mapped::release_range`]: crate::mapped::Mapped::release_range
/// [`Repository::trusting_reverse_indexes`]: crate::Repository::trusting_reverse_indexes
fn rev_sound(
    pack: &StoredPack,
    rev: &crate::mapped::Mapped,
    n: usize,
    hash: HashKind,
    whole: bool,
) -> bool {
    const PIECE: usize = 1 << 20;
    let len = hash.len_in_bytes();
    let (body, own) = rev.split_at(rev.len() - len);
    let named = body[body.len() - len..] == *pack.index.pack_checksum().as_bytes();
    if !named || !whole {
        // The trailer's page, read to compare.
        let _ = rev.release();
        return named;
    }
    let positions = REV_HEADER..REV_HEADER + 4 * n;
    let mut hasher = crate::write::Checksum::new(hash);
    let mut in_range = true;
    for (i, piece) in body.chunks(PIECE).enumerate() {
        let start = i * PIECE;
        // Pieces and positions both start at multiples of four: none is cut in two.
        let (from, to) = (
            positions.start.max(start),
            positions.end.min(start + piece.len()),
        );
        if from < to {
            let mut past = 0u32;
            for c in piece[from - start..to - start].chunks_exact(4) {
                let position = u32::from_be_bytes(c.try_into().expect("four bytes"));
                past |= u32::from(position as usize >= n);
            }
            in_range &= past == 0;
        }
        hasher.update(piece);
        let _ = rev.release_range(start as u64..(start + piece.len()) as u64);
    }
    let sound = in_range && hasher.finish().is_ok_and(|sum| sum.as_bytes() == own);
    // The trailer's page, read again to compare.
    let _ = rev.release();
    sound
}

/// Index positions `0..n` in the order of their offsets (`offset_at` of each), ties in index
/// order, and the offsets so ordered when all fit in 32 bits (`None`: a pack of 4 GiB or more).
///
/// A pack's offsets are spread at random over its index (which is by object id), so this is a
/// sort of every object: a comparison sort of four million took a third of a second, the most
/// of a first answer on a handle opened again. Offsets under 4 GiB are sorted by radix
/// instead, 11 bits at a time, stable, passing over digits every offset shares.
pub(crate) fn by_offset(n: usize, offset_at: impl Fn(u32) -> u64) -> (Vec<u32>, Option<Vec<u32>>) {
    // Each key is an offset over its index position: unique, and in the order wanted.
    let mut keys: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let Ok(offset) = u32::try_from(offset_at(i)) else {
            // Rare: not worth a radix sort of wider keys.
            drop(keys);
            let mut pairs: Vec<(u64, u32)> = (0..n as u32).map(|i| (offset_at(i), i)).collect();
            pairs.sort_unstable();
            return (pairs.into_iter().map(|(_, i)| i).collect(), None);
        };
        keys.push((u64::from(offset) << 32) | u64::from(i));
    }
    if n < RADIX_FROM {
        keys.sort_unstable();
    } else {
        let mut scratch = vec![0u64; n];
        let mut counts = vec![0usize; 1 << RADIX_BITS];
        for shift in (32..64).step_by(RADIX_BITS) {
            let digit = |key: u64| (key >> shift) as usize & ((1 << RADIX_BITS) - 1);
            counts.fill(0);
            for &key in &keys {
                counts[digit(key)] += 1;
            }
            if counts.contains(&n) {
                // Every key has this digit: the order stays as it is.
                continue;
            }
            let mut at = 0;
            for count in &mut counts {
                (*count, at) = (at, at + *count);
            }
            for &key in &keys {
                let d = digit(key);
                scratch[counts[d]] = key;
                counts[d] += 1;
            }
            std::mem::swap(&mut keys, &mut scratch);
        }
    }
    let order = keys.iter().map(|&k| k as u32).collect();
    let offsets = keys.iter().map(|&k| (k >> 32) as u32).collect();
    (order, Some(offsets))
}

/// Bits of an offset [`by_offset`] sorts by in each pass (three passes for 32 bits).
const RADIX_BITS: usize = 11;
/// Fewer objects than this are sorted by comparison: a radix pass's counts are not worth it.
const RADIX_FROM: usize = 1 << 14;

/// The tables a reverse index makes when answers need them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Made {
    /// Pack positions by index position.
    pub(crate) positions: bool,
    /// Offsets by pack position.
    pub(crate) offsets: bool,
    /// The delta forest.
    pub(crate) forest: bool,
}

impl std::ops::BitOr for Made {
    type Output = Made;
    fn bitor(self, other: Made) -> Made {
        Made {
            positions: self.positions || other.positions,
            offsets: self.offsets || other.offsets,
            forest: self.forest || other.forest,
        }
    }
}

/// Bytes before the positions in a `.rev` file.
const REV_HEADER: usize = 12;

/// A reverse index makes its table of offsets once it was asked for more than one in this
/// many of its entries' offsets.
const OFFSET_READS_SHARE: usize = 32;

impl RevIndex {
    /// Whether it is the pack's `.rev` file read in place trusted unread (see
    /// [`load_trusted`](Self::load_trusted)).
    pub(crate) fn is_unread(&self) -> bool {
        self.unread
    }

    /// Whether it is the pack's `.rev` file, read in place.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.order, Order::Mapped(_))
    }

    /// Read `pack-<hash>.rev` in place if it is the pack's and sound, every position and its
    /// checksum read (see [`rev_sound`]), else build the order from the index.
    pub(crate) fn load(pack: &StoredPack, hash: HashKind) -> RevIndex {
        Self::load_checking(pack, hash, true)
    }

    /// Read `pack-<hash>.rev` in place if its size and header are right and its trailer
    /// names the pack, trusting its positions as git does (see [`rev_sound`]; one past the
    /// last reads as the last), else build the order from the index.
    pub(crate) fn load_trusted(pack: &StoredPack, hash: HashKind) -> RevIndex {
        Self::load_checking(pack, hash, false)
    }

    /// Whether `pack`'s `.rev` file is there, the pack's, and sound, every position and its
    /// checksum read.
    pub(crate) fn file_sound(pack: &StoredPack, hash: HashKind) -> bool {
        Self::load(pack, hash).is_mapped()
    }

    fn load_checking(pack: &StoredPack, hash: HashKind, whole: bool) -> RevIndex {
        let n = pack.num_objects();
        let order = match crate::mapped::Mapped::open(&pack.pack.with_extension("rev")) {
            Ok(map)
                if map.len() == REV_HEADER + 4 * n + 2 * hash.len_in_bytes()
                    && map.starts_with(b"RIDX")
                    && map[4..8] == 1u32.to_be_bytes()
                    && rev_format_id(hash).is_some_and(|id| map[8..12] == id.to_be_bytes())
                    && rev_sound(pack, &map, n, hash, whole) =>
            {
                Order::Mapped(map)
            }
            _ => return Self::from_offsets(pack),
        };
        RevIndex {
            unread: !whole,
            objects: n,
            order,
            inverse: std::sync::OnceLock::new(),
            lookups: Default::default(),
            offsets: std::sync::OnceLock::new(),
            offset_reads: Default::default(),
            forest: std::sync::OnceLock::new(),
        }
    }

    /// The reverse index of `pack` built from its index's offsets, whatever files lie
    /// beside it.
    pub(crate) fn from_offsets(pack: &StoredPack) -> RevIndex {
        let n = pack.num_objects();
        let (order, offsets) = by_offset(n, |i| pack.index.pack_offset_at_index(i));
        RevIndex {
            unread: false,
            objects: n,
            order: Order::Built(order),
            inverse: std::sync::OnceLock::new(),
            lookups: Default::default(),
            offsets: std::sync::OnceLock::from(offsets),
            offset_reads: Default::default(),
            forest: std::sync::OnceLock::new(),
        }
    }

    /// Objects in the pack.
    pub(crate) fn len(&self) -> usize {
        self.objects
    }

    /// The index position (into the `.idx`, by object id) of the object at pack position
    /// `p`. A `.rev` trusted unread naming a position past the last reads as the last (see
    /// [`load_trusted`](Self::load_trusted)).
    pub(crate) fn at(&self, p: usize) -> u32 {
        match &self.order {
            Order::Mapped(map) => {
                let at = REV_HEADER + 4 * p;
                let position = u32::from_be_bytes(map[at..at + 4].try_into().expect("four bytes"));
                // `p` is below the count, so the count is not 0.
                position.min(self.objects.saturating_sub(1) as u32)
            }
            Order::Built(order) => order[p],
        }
    }

    /// [`at`](Self::at), `None` past the last position.
    pub(crate) fn index_at(&self, p: usize) -> Option<u32> {
        (p < self.len()).then(|| self.at(p))
    }

    /// The pack position of `oid` in `pack` (whose reverse index this is), if it holds it.
    pub(crate) fn position_of(&self, pack: &StoredPack, oid: &gix_hash::oid) -> Option<usize> {
        lookup(&pack.index, oid)
            .and_then(|i| self.pack_position(&pack.index, i))
            .filter(|&q| q < self.len())
    }

    /// The pack position of the entry that the entry at position `p` of `pack` (at `offset`,
    /// with `header`) is stored on, if it is a delta on one in the pack.
    pub(crate) fn base_position(
        &self,
        pack: &StoredPack,
        p: usize,
        offset: u64,
        header: gix_pack::data::entry::Header,
    ) -> Option<usize> {
        use gix_pack::data::entry::Header;
        match header {
            Header::OfsDelta { base_distance } => {
                Header::verified_base_pack_offset(offset, base_distance)
                    .and_then(|base| self.position_before(pack, p, base))
            }
            Header::RefDelta { base_id } => self.position_of(pack, &base_id),
            _ => None,
        }
    }

    /// The pack position of the object at index position `index`: by binary search over
    /// offsets for the first lookups, from a table of every object's once there were many
    /// (a few hundred lookups, as an incremental fetch makes, do not pay for the table).
    /// `None` if a `.rev` file does not hold the object's offset.
    pub(crate) fn pack_position(&self, idx: &gix_pack::index::File, index: u32) -> Option<usize> {
        let known = |p: u32| (p != u32::MAX).then_some(p as usize);
        if let Some(inverse) = self.inverse.get() {
            return inverse.get(index as usize).and_then(|&p| known(p));
        }
        if self
            .lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            > self.len() / 64
        {
            return self
                .inverse
                .get_or_init(|| self.positions_by_index())
                .get(index as usize)
                .and_then(|&p| known(p));
        }
        self.position_of_offset(idx, idx.pack_offset_at_index(index))
    }

    /// The pack position of the entry at `offset`, if an entry starts there.
    fn position_of_offset(&self, idx: &gix_pack::index::File, offset: u64) -> Option<usize> {
        // Pack positions are in offset order.
        if let Some(offsets) = self.offsets(idx) {
            return offsets.binary_search(&u32::try_from(offset).ok()?).ok();
        }
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match idx.pack_offset_at_index(self.at(mid)).cmp(&offset) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// What this reverse index made so far, beyond its order.
    pub(crate) fn made(&self) -> Made {
        Made {
            positions: self.inverse.get().is_some(),
            offsets: self.offsets.get().is_some_and(Option::is_some),
            forest: self.forest.get().is_some_and(Option::is_some),
        }
    }

    /// Make now what `made` names (of a reverse index of another pack, that answers needed),
    /// rather than on the answer that first needs it.
    pub(crate) fn make(&self, pack: &StoredPack, hash: HashKind, made: Made) {
        if made.positions {
            self.inverse.get_or_init(|| self.positions_by_index());
        }
        if made.offsets {
            self.all_offsets(pack);
        }
        if made.forest {
            self.forest(pack, hash);
        }
    }

    /// Each index position's pack position.
    fn positions_by_index(&self) -> Vec<u32> {
        // A position no entry names (a `.rev` trusted unread and damaged) stays unknown.
        let mut inv = vec![u32::MAX; self.len()];
        for p in 0..self.len() {
            inv[self.at(p) as usize] = p as u32;
        }
        inv
    }

    /// The delta forest of `pack`, if it was read already.
    pub(crate) fn built_forest(&self) -> Option<&crate::forest::DeltaForest> {
        self.forest.get().and_then(Option::as_ref)
    }

    /// Whether the delta forest may be had: read already, or never tried, for a pack of no
    /// more objects than a forest holds (a read that failed is not tried again).
    pub(crate) fn forest_possible(&self) -> bool {
        match self.forest.get() {
            Some(forest) => forest.is_some(),
            None => self.len() <= crate::forest::MAX_OBJECTS,
        }
    }

    /// The delta forest of `pack` (this reverse index's pack), read once.
    pub(crate) fn forest(
        &self,
        pack: &StoredPack,
        hash: HashKind,
    ) -> Option<&crate::forest::DeltaForest> {
        if let Some(forest) = self.forest.get() {
            return forest.as_ref();
        }
        match crate::forest::DeltaForest::build(pack, self, hash) {
            Ok(forest) => self.forest.get_or_init(|| Some(forest)).as_ref(),
            // Too large, or damaged: never tried again. A passing error (no file handle
            // free) is tried again next time.
            Err(Error::Io(_)) => None,
            Err(_) => self.forest.get_or_init(|| None).as_ref(),
        }
    }

    /// The offset in `pack` of the entry at pack position `p`.
    pub(crate) fn offset(&self, pack: &StoredPack, p: usize) -> u64 {
        match self.offsets(&pack.index) {
            Some(offsets) => u64::from(offsets[p]),
            None => pack.index.pack_offset_at_index(self.at(p)),
        }
    }

    /// Every entry's offset by pack position, made now if it was not (`None`: a pack of 4 GiB
    /// or more).
    pub(crate) fn all_offsets(&self, pack: &StoredPack) -> Option<&[u32]> {
        self.offsets
            .get_or_init(|| self.read_offsets(&pack.index))
            .as_deref()
    }

    /// The table of offsets by pack position, once it is made or worth making: the index
    /// keeps offsets by object id, so reading them in pack order is a random read each, and
    /// answers that copy most of a pack read hundreds of thousands (a tenth of a negotiated
    /// fetch's time). A few hundred reads, as a small fetch makes, do not pay for the table.
    fn offsets(&self, idx: &gix_pack::index::File) -> Option<&[u32]> {
        if let Some(made) = self.offsets.get() {
            return made.as_deref();
        }
        let reads = self
            .offset_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if reads < self.len() / OFFSET_READS_SHARE {
            return None;
        }
        self.offsets
            .get_or_init(|| self.read_offsets(idx))
            .as_deref()
    }

    /// `None` also when the offsets are out of order (a `.rev` that is not this pack's order
    /// despite its checksums): searches by halves in it would go wrong, and reading from the
    /// index, each search finds nothing where the order is broken instead.
    fn read_offsets(&self, idx: &gix_pack::index::File) -> Option<Vec<u32>> {
        let offsets: Vec<u32> = (0..self.len())
            .map(|p| u32::try_from(idx.pack_offset_at_index(self.at(p))).ok())
            .collect::<Option<_>>()?;
        offsets
            .windows(2)
            .all(|pair| pair[0] < pair[1])
            .then_some(offsets)
    }

    /// The position of the entry at `target` in `pack`, searched backwards from position
    /// `below` (exclusive): a delta's base is most often near it. `None` if no entry starts
    /// there.
    pub(crate) fn position_before(
        &self,
        pack: &StoredPack,
        below: usize,
        target: u64,
    ) -> Option<usize> {
        // Gallop down to a position at or before the target, then search between.
        let mut hi = below.min(self.len());
        let mut step = 1;
        let lo = loop {
            if hi == 0 {
                return None;
            }
            let probe = hi.saturating_sub(step);
            let at = self.offset(pack, probe);
            if at == target {
                return Some(probe);
            }
            if at < target {
                break probe + 1;
            }
            hi = probe;
            step *= 2;
        };
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.offset(pack, mid).cmp(&target) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The object stored at `offset` of `pack`.
    pub(crate) fn object_at(&self, pack: &StoredPack, offset: u64) -> Option<ObjectId> {
        let p = self.position_of_offset(&pack.index, offset)?;
        Some(pack.index.oid_at_index(self.at(p)).to_owned())
    }
}

/// Reverse indexes by pack file, kept for the life of a repository handle (packs never change)
/// and taken by the handle that replaces it (see [`RevCache::adopt`]).
#[derive(Default)]
pub(crate) struct RevCache {
    map: std::sync::Mutex<std::collections::HashMap<PathBuf, RevEntry>>,
    /// `.rev` files are loaded unread, trusted as git trusts them (see [`rev_sound`]).
    trusted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RevCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevCache").finish_non_exhaustive()
    }
}

/// A reverse index with its pack's `.rev` file as it was before it was read, and the index
/// it was made from.
type RevEntry = (
    std::sync::Arc<RevIndex>,
    Option<Stamp>,
    std::sync::Arc<gix_pack::index::File>,
);

impl RevCache {
    /// Load `.rev` files from now on trusting them unread (see [`rev_sound`]).
    pub(crate) fn trust(&self) {
        self.trusted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `.rev` files are trusted unread.
    pub(crate) fn trusting(&self) -> bool {
        self.trusted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn get(&self, pack: &StoredPack, hash: HashKind) -> std::sync::Arc<RevIndex> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rev, _, _)) = map.get(&pack.pack) {
            return std::sync::Arc::clone(rev);
        }
        // A new pack: those gone since are dropped (checked here, not on every lookup).
        map.retain(|path, _| path.exists());
        let stamp = Stamp::of(&pack.pack.with_extension("rev"));
        let rev = std::sync::Arc::new(if self.trusting() {
            RevIndex::load_trusted(pack, hash)
        } else {
            RevIndex::load(pack, hash)
        });
        map.insert(
            pack.pack.clone(),
            (
                std::sync::Arc::clone(&rev),
                stamp,
                std::sync::Arc::clone(&pack.index),
            ),
        );
        rev
    }

    /// [`get`](Self::get), its `.rev` file read and checked whatever this cache trusts: for
    /// what is written from it (bitmaps, commit graphs), which outlives the answer.
    pub(crate) fn get_checked(
        &self,
        pack: &StoredPack,
        hash: HashKind,
    ) -> std::sync::Arc<RevIndex> {
        let rev = self.get(pack, hash);
        if rev.is_unread() {
            return std::sync::Arc::new(RevIndex::load(pack, hash));
        }
        rev
    }

    /// The reverse index of `pack` if one was made already.
    #[cfg(test)]
    pub(crate) fn made(&self, pack: &Path) -> Option<std::sync::Arc<RevIndex>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(pack).map(|(rev, _, _)| std::sync::Arc::clone(rev))
    }

    /// What the reverse indexes made so far made, together (`None`: none was asked for).
    pub(crate) fn made_any(&self) -> Option<Made> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|(rev, _, _)| rev.made())
            .reduce(|a, b| a | b)
    }

    /// Take `from`'s (another handle's) reverse indexes of `packs` (taken whole from it: see
    /// [`IndexCache::adopt`]) made from the index taken with the pack, whose `.rev` file is as
    /// it was read, with what they made since (tables of offsets and positions, the delta
    /// forest).
    pub(crate) fn adopt(&self, from: &RevCache, packs: &[Adopted]) {
        let from = from.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut into = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for (pack, index) in packs {
            // One read unread is not taken by a handle that checks.
            if let Some((rev, stamp, made_from)) = from.get(pack)
                && (!rev.is_unread() || self.trusting())
                && std::sync::Arc::ptr_eq(made_from, index)
                && Stamp::unchanged(&pack.with_extension("rev"), *stamp)
            {
                into.insert(
                    pack.clone(),
                    (
                        std::sync::Arc::clone(rev),
                        *stamp,
                        std::sync::Arc::clone(index),
                    ),
                );
            }
        }
    }
}

/// The type of each object of `pack`, by pack position, from the entries' headers alone (a
/// delta is of its base's type; bases in the same pack). `None` if a delta's base is not
/// found before it in the pack (git never writes that; gitcache then walks instead).
pub(crate) fn kinds(
    pack: &StoredPack,
    rev: &RevIndex,
    hash: HashKind,
) -> Result<Option<Vec<gix_object::Kind>>, Error> {
    let mut headers = crate::forest::Headers::new(pack, hash)?;
    // Every offset is read in order: the reverse index's table of them (made now) serves.
    rev.all_offsets(pack);
    let n = rev.len();
    let mut kinds: Vec<gix_object::Kind> = Vec::with_capacity(n);
    for p in 0..n {
        let offset = rev.offset(pack, p);
        let entry = gix_pack::data::Entry::from_bytes(headers.at(offset)?, offset, hash)
            .map_err(Error::odb)?;
        if let Some(kind) = entry.header.as_kind() {
            kinds.push(kind);
            continue;
        }
        let base = rev.base_position(pack, p, offset, entry.header);
        // Only a base earlier in the pack has its type known by now.
        match base.and_then(|p| kinds.get(p)) {
            Some(&kind) => kinds.push(kind),
            None => return Ok(None),
        }
    }
    Ok(Some(kinds))
}

#[cfg(test)]
mod tests {
    use super::{Order, RevIndex};
    use crate::Repository;

    /// A small generated repository (`seed`), packed by `git` with `repack`.
    fn repacked(seed: u64, repack: &[&str]) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        let spec = gitcache_testkit::repo::RepoSpec::small(seed);
        gitcache_testkit::repo::generate(&path, &spec).unwrap();
        gitcache_testkit::git::git_stdout(&path, repack);
        let repo = Repository::open(&path).unwrap();
        (dir, repo)
    }

    /// The size an entry states is the object's, as git gives it, for whole objects and
    /// deltas alike (at every depth of their chains), without the chain being read.
    #[test]
    fn entries_state_their_objects_sizes() {
        let (dir, repo) = repacked(31, &["repack", "-adfq", "--window=50", "--depth=20"]);
        let path = dir.path().join("r.git");
        let listed = gitcache_testkit::git::git_stdout(
            &path,
            &[
                "cat-file",
                "--batch-all-objects",
                "--batch-check=%(objectname) %(objectsize) %(deltabase)",
            ],
        );
        let pack = &repo.stored_packs().unwrap()[0];
        let data = pack.data(gix_hash::Kind::Sha1).unwrap();
        let mut inflate = gix_zlib::Inflate::default();
        let (mut objects, mut deltas) = (0, 0);
        for line in listed.lines() {
            let mut fields = line.split(' ');
            let (id, size, base) = (
                gix_hash::ObjectId::from_hex(fields.next().unwrap().as_bytes()).unwrap(),
                fields.next().unwrap().parse::<u64>().unwrap(),
                fields.next().unwrap(),
            );
            let at = pack
                .index
                .pack_offset_at_index(pack.index.lookup(id).unwrap());
            assert_eq!(
                super::stated_size(&data, at, &mut inflate),
                Some(size),
                "{id}"
            );
            objects += 1;
            deltas += usize::from(base.bytes().any(|b| b != b'0'));
        }
        assert_eq!(objects, pack.num_objects());
        assert!(deltas > objects / 4, "{deltas} deltas of {objects}");
    }

    /// Packs are listed largest first (ties by name), whatever order the directory gives
    /// them in: objects are looked for in the listing's order.
    #[test]
    fn packs_are_listed_largest_first() {
        let (dir, repo) = repacked(12, &["repack", "-adq"]);
        let path = dir.path().join("r.git");
        let git = |args: &[&str]| gitcache_testkit::git::git_stdout(&path, args);
        let first = repo.stored_packs().unwrap()[0].pack.clone();
        // Five small packs of one commit each, of two to six new blobs.
        for n in 0..5 {
            let mut tree = String::new();
            for b in 0..n + 2 {
                let blob = gitcache_testkit::git::write_blob(
                    &path,
                    format!("pack {n} blob {b}\n").as_bytes(),
                );
                tree.push_str(&format!("100644 blob {blob}\tf{b}\n"));
            }
            let tree = gitcache_testkit::git::git_with_input(&path, &["mktree"], tree.as_bytes());
            let tree = String::from_utf8(tree).unwrap();
            let commit = git(&["commit-tree", tree.trim(), "-m", &format!("pack {n}")]);
            git(&["update-ref", &format!("refs/heads/p{n}"), commit.trim()]);
            git(&["repack", "-dq"]);
        }
        let listed = repo.stored_packs().unwrap();
        assert_eq!(listed.len(), 6);
        assert_eq!(
            listed[0].pack, first,
            "the first pack holds the most objects"
        );
        for pair in listed.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.num_objects() > b.num_objects()
                    || (a.num_objects() == b.num_objects() && a.pack < b.pack),
                "{} objects before {}",
                a.num_objects(),
                b.num_objects()
            );
        }
    }

    /// A pack's tips are read once per version of their file: one written, rewritten or
    /// removed after a listing shows at the next.
    #[test]
    fn tips_follow_their_file_between_listings() {
        let (_dir, repo) = repacked(77, &["repack", "-adq"]);
        let tips_of = |repo: &Repository| repo.stored_packs().unwrap()[0].tips.clone();
        assert_eq!(tips_of(&repo), None);
        let pack = repo.stored_packs().unwrap()[0].pack.clone();
        let ids: Vec<_> = (1..=3u8)
            .map(|n| gix_hash::ObjectId::from_bytes_or_panic(&[n; 20]))
            .collect();
        let set = |ids: &[gix_hash::ObjectId]| ids.iter().copied().collect::<super::OidSet>();
        super::write_tips(&pack, &set(&ids)).unwrap().unwrap();
        assert_eq!(tips_of(&repo).as_deref(), Some(&set(&ids)));
        super::write_tips(&pack, &set(&ids[..1])).unwrap().unwrap();
        assert_eq!(tips_of(&repo).as_deref(), Some(&set(&ids[..1])));
        std::fs::remove_file(pack.with_extension("tips")).unwrap();
        assert_eq!(tips_of(&repo), None);
    }

    /// Every object of a pack is found where the index's own search finds it, and ids it
    /// lacks (each object's id with its last byte changed, and ids past either end) are not.
    #[test]
    fn interpolated_lookups_find_what_the_index_finds() {
        let (_dir, repo) = repacked(9, &["repack", "-adq"]);
        let packs = repo.stored_packs().unwrap();
        let index = &packs[0].index;
        let mut missing = 0;
        for i in 0..index.num_objects() {
            let oid = index.oid_at_index(i).to_owned();
            assert_eq!(super::lookup(index, &oid), Some(i));
            let mut other = oid;
            let bytes = other.as_mut_slice();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x5a;
            assert_eq!(super::lookup(index, &other), index.lookup(other));
            missing += usize::from(index.lookup(other).is_none());
        }
        assert!(missing > 0);
        for edge in [0x00u8, 0xff] {
            let oid = gix_hash::ObjectId::from_bytes_or_panic(&[edge; 20]);
            assert_eq!(super::lookup(index, &oid), None);
        }
        assert_many_as_one(index);
    }

    /// [`super::lookup_many`] finds what [`super::lookup`] finds, for the ids of `index` and
    /// ids it lacks, in an order unlike the index's (a partial group at the end).
    fn assert_many_as_one(index: &gix_pack::index::File) {
        let mut ids: Vec<gix_hash::ObjectId> = Vec::new();
        for i in (0..index.num_objects()).rev() {
            let oid = index.oid_at_index(i).to_owned();
            let mut absent = oid;
            absent.as_mut_slice()[19] ^= 0x33;
            ids.extend([oid, absent]);
        }
        ids.push(gix_hash::ObjectId::from_bytes_or_panic(&[0xff; 20]));
        let refs: Vec<&gix_hash::oid> = ids.iter().map(|id| id.as_ref()).collect();
        let one: Vec<Option<u32>> = refs.iter().map(|id| super::lookup(index, id)).collect();
        assert_eq!(super::lookup_many(index, &refs), one);
    }

    /// An index of ids that share their first eight bytes in groups (as a table made to
    /// mislead the guesses could), and one whose ids are out of order (damaged): every id
    /// of the first is found where it is, and nothing is found wrongly or loops in either.
    #[test]
    fn lookups_hold_where_guesses_mislead() {
        let write_index = |ids: &[[u8; 20]]| {
            let mut out = vec![0xff, b't', b'O', b'c', 0, 0, 0, 2];
            for byte in 0..=255u8 {
                let below = ids.iter().filter(|id| id[0] <= byte).count() as u32;
                out.extend_from_slice(&below.to_be_bytes());
            }
            for id in ids {
                out.extend_from_slice(id);
            }
            for _ in ids {
                out.extend_from_slice(&0u32.to_be_bytes());
            }
            for i in 0..ids.len() as u32 {
                out.extend_from_slice(&(12 + 100 * i).to_be_bytes());
            }
            out.extend_from_slice(&[0u8; 40]);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pack-x.idx");
            std::fs::write(&path, out).unwrap();
            let index = gix_pack::index::File::at(&path, gix_hash::Kind::Sha1).unwrap();
            (dir, index)
        };
        // Sixteen prefixes, each shared by eight ids; the prefixes crowded at both ends.
        let mut ids = Vec::new();
        for group in 0..16u8 {
            let first = if group < 8 { group } else { 0xf0 + group };
            for member in 0..8u8 {
                let mut id = [0u8; 20];
                id[0] = first;
                id[7] = 0x80;
                id[19] = member * 2;
                ids.push(id);
            }
        }
        ids.sort();
        let (_dir, index) = write_index(&ids);
        for (i, id) in ids.iter().enumerate() {
            let oid = gix_hash::ObjectId::from_bytes_or_panic(id);
            assert_eq!(super::lookup(&index, &oid), Some(i as u32));
            let mut absent = *id;
            absent[19] += 1;
            let absent = gix_hash::ObjectId::from_bytes_or_panic(&absent);
            assert_eq!(super::lookup(&index, &absent), None);
        }
        assert_many_as_one(&index);
        let mut shuffled = ids.clone();
        shuffled.reverse();
        shuffled.swap(3, 90);
        let (_dir, damaged) = write_index(&shuffled);
        for (i, id) in shuffled.iter().enumerate() {
            let oid = gix_hash::ObjectId::from_bytes_or_panic(id);
            let found = super::lookup(&damaged, &oid);
            assert!(found.is_none_or(|f| f == i as u32), "a wrong hit");
        }
        assert_many_as_one(&damaged);
    }

    /// A reverse index answers offsets and positions of offsets from the index at first, then
    /// from its table of offsets once many were asked for: the same answers either way, for
    /// an order read from git's `.rev` and for one built from the index (whose table is made
    /// with it).
    #[test]
    fn offsets_are_the_same_read_from_the_index_or_from_the_table() {
        let (_dir, repo) = repacked(4, &["-c", "pack.writeReverseIndex=true", "repack", "-adq"]);
        let packs = repo.stored_packs().unwrap();
        let pack = &packs[0];
        let n = pack.num_objects();
        let truth: Vec<u64> = {
            let mut offsets: Vec<u64> = (0..n as u32)
                .map(|i| pack.index.pack_offset_at_index(i))
                .collect();
            offsets.sort_unstable();
            offsets
        };
        let loaded = RevIndex::load(pack, repo.object_format());
        assert!(
            matches!(loaded.order, Order::Mapped(_)),
            "git's .rev is read"
        );
        for rev in [loaded, RevIndex::from_offsets(pack)] {
            let mapped = matches!(rev.order, Order::Mapped(_));
            assert_eq!(rev.offsets.get().is_some(), !mapped);
            if mapped {
                // Reads from the index until the table is made.
                assert_eq!(rev.offset(pack, n / 2), truth[n / 2]);
                assert!(rev.offsets.get().is_none(), "too few reads for a table");
            }
            // Past the reads that make the table, and again after it.
            for round in 0..2 {
                for (p, &offset) in truth.iter().enumerate() {
                    assert_eq!(rev.offset(pack, p), offset, "round {round}");
                    assert_eq!(rev.position_of_offset(&pack.index, offset), Some(p));
                    assert_eq!(rev.position_of_offset(&pack.index, offset + 1), None);
                    if p > 0 {
                        assert_eq!(rev.position_before(pack, p, truth[p - 1]), Some(p - 1));
                        assert_eq!(rev.position_before(pack, p, truth[p / 3]), Some(p / 3));
                    }
                }
            }
            assert!(
                rev.offsets.get().is_some_and(Option::is_some),
                "the table was made"
            );
            assert_eq!(rev.all_offsets(pack).map(<[u32]>::len), Some(n));
        }
    }

    /// A pack file is mapped once per repository handle: every listing of its packs shares
    /// the mapping, and a pack replaced by another is let go.
    #[test]
    fn a_pack_is_mapped_once_per_repository_handle() {
        let (dir, repo) = repacked(5, &["repack", "-adq"]);
        let hash = repo.object_format();
        let first = repo.stored_packs().unwrap()[0].data(hash).unwrap();
        let again = repo.stored_packs().unwrap()[0].data(hash).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        assert_eq!(
            std::sync::Arc::strong_count(&first),
            3,
            "two answers and the handle"
        );
        drop(again);
        // Replaced (a new pack of everything, the old one removed): the handle lets it go.
        let path = dir.path().join("r.git");
        let commit =
            gitcache_testkit::git::git_stdout(&path, &["commit-tree", "-m", "x", "HEAD^{tree}"]);
        gitcache_testkit::git::git_stdout(&path, &["update-ref", "refs/heads/x", commit.trim()]);
        gitcache_testkit::git::git_stdout(&path, &["repack", "-adq"]);
        let packs = repo.stored_packs().unwrap();
        assert!(packs.iter().all(|p| p.pack != *first.path()));
        assert_eq!(
            std::sync::Arc::strong_count(&first),
            1,
            "only this test holds it"
        );
    }

    /// git's `.rev` is read in place when it was written for the pack and is whole; one
    /// damaged, another pack's, one naming a position past the last or of another object
    /// format (their checksums made right), is not used: the order is built from the index
    /// instead, and is the same as the true file's. Trusted unread, only another pack's or
    /// format's is not used (one past the last reads as the last). A load leaves none of the
    /// file resident.
    #[test]
    fn a_reverse_index_is_used_only_when_it_is_the_packs_own() {
        let (_dir, repo) = repacked(3, &["-c", "pack.writeReverseIndex=true", "repack", "-adq"]);
        let packs = repo.stored_packs().unwrap();
        let pack = &packs[0];
        let hash = repo.object_format();
        let rev_path = pack.pack.with_extension("rev");
        let good = std::fs::read(&rev_path).expect("git wrote a reverse index");
        let order = |rev: &RevIndex| (0..rev.len()).map(|p| rev.at(p)).collect::<Vec<_>>();
        let built = order(&RevIndex::from_offsets(pack));

        let read = RevIndex::load(pack, hash);
        let Order::Mapped(map) = &read.order else {
            panic!("the pack's own is read");
        };
        #[cfg(target_os = "linux")]
        assert_eq!(crate::mapped::resident(map.as_ptr()), 0, "let go of");
        assert_eq!(order(&read), built);

        let n = pack.num_objects();
        let len = hash.len_in_bytes();
        // Two positions swapped: the order is wrong and the file's checksum says so.
        let mut swapped = good.clone();
        let (a, b) = (12, 12 + 4 * (n - 1));
        let first: [u8; 4] = swapped[a..a + 4].try_into().unwrap();
        swapped.copy_within(b..b + 4, a);
        swapped[b..b + 4].copy_from_slice(&first);
        // The file's own checksum made right again after `change`.
        let resummed = |change: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.clone();
            change(&mut bytes);
            let mut hasher = gix_hash::hasher(hash);
            hasher.update(&bytes[..bytes.len() - len]);
            let sum = hasher.try_finalize().unwrap();
            let end = bytes.len() - len;
            bytes[end..].copy_from_slice(sum.as_bytes());
            bytes
        };
        // Another pack's: whole, but naming another pack.
        let other = resummed(&|bytes| {
            let at = bytes.len() - 2 * len;
            bytes[at] ^= 0x01;
        });
        let past = resummed(&|bytes| bytes[12..16].copy_from_slice(&(n as u32).to_be_bytes()));
        let format = resummed(&|bytes| bytes[8..12].copy_from_slice(&2u32.to_be_bytes()));
        assert!(RevIndex::load_trusted(pack, hash).is_mapped());
        assert!(RevIndex::file_sound(pack, hash));
        for (name, bytes, trusted) in [
            ("a damaged", swapped, true),
            ("another pack's", other, false),
            ("a position past the last in a", past, true),
            ("another object format's", format, false),
        ] {
            std::fs::write(&rev_path, &bytes).unwrap();
            let rev = RevIndex::load(pack, hash);
            assert!(
                matches!(rev.order, Order::Built(_)),
                "{name} file is not used"
            );
            assert_eq!(order(&rev), built, "{name} file");
            assert!(!RevIndex::file_sound(pack, hash), "{name} file");
            let unread = RevIndex::load_trusted(pack, hash);
            assert_eq!(unread.is_mapped(), trusted, "{name} file, trusted");
            if let Order::Mapped(map) = &unread.order {
                #[cfg(target_os = "linux")]
                assert_eq!(
                    crate::mapped::resident(map.as_ptr()),
                    0,
                    "{name}: let go of"
                );
                // Read as it is: the first position is the last one's (swapped), or one past
                // the last, read as the last.
                let first = if name == "a damaged" {
                    built[n - 1]
                } else {
                    n as u32 - 1
                };
                assert_eq!(unread.at(0), first, "{name} file, trusted");
            }
        }
    }

    /// Index positions ordered by offset by radix are what a comparison sort gives: for
    /// offsets spread at random (as by object id), in order, sharing their high bits (a small
    /// pack), equal (a damaged index), and of 4 GiB and more.
    #[test]
    fn ordering_by_offset_by_radix_is_sorting() {
        let sorted = |offsets: &[u64]| {
            let mut pairs: Vec<(u64, u32)> = offsets.iter().copied().zip(0..).collect();
            pairs.sort_unstable();
            let order: Vec<u32> = pairs.iter().map(|&(_, i)| i).collect();
            let fit: Option<Vec<u32>> = pairs.iter().map(|&(o, _)| u32::try_from(o).ok()).collect();
            (order, fit)
        };
        let mut rng = gitcache_testkit::repo::Rng::new(1105);
        let mut random = move || rng.next_u64();
        let n = 3 * super::RADIX_FROM;
        let cases: Vec<Vec<u64>> = vec![
            (0..n)
                .map(|_| random() % (u64::from(u32::MAX) + 1))
                .collect(),
            (0..n as u64).map(|i| 12 + 40 * i).collect(),
            (0..n).map(|_| random() % 5_000).collect(),
            (0..n).map(|_| (1 << 20) | (random() % 1024)).collect(),
            (0..100).map(|_| random() % 1_000_000).collect(),
            (0..n).map(|_| random() % (1 << 34)).collect(),
            Vec::new(),
        ];
        for (case, offsets) in cases.iter().enumerate() {
            let got = super::by_offset(offsets.len(), |i| offsets[i as usize]);
            assert_eq!(got, sorted(offsets), "case {case}");
        }
    }

    /// A reverse index read unread (by a handle trusting it) is never what a checking
    /// handle uses: what writes bitmaps or graphs loads its own checked one, a handle opened
    /// again from a trusting one trusts too, and a checking cache does not take it (nor the
    /// bitmaps whose positions come from it).
    #[test]
    fn a_reverse_index_read_unread_stays_with_handles_that_trust() {
        use std::sync::Arc;
        let (_dir, checking) = repacked(
            23,
            &["-c", "pack.writeReverseIndex=true", "repack", "-adbq"],
        );
        let path = checking.git_dir().to_owned();
        let hash = checking.object_format();
        let trusting = Repository::open(&path).unwrap().trusting_reverse_indexes();
        let packs = trusting.stored_packs().unwrap();
        let unread = trusting.rev_cache().get(&packs[0], hash);
        assert!(unread.is_mapped() && unread.is_unread());
        let checked = trusting.rev_cache().get_checked(&packs[0], hash);
        assert!(checked.is_mapped() && !checked.is_unread());
        assert!(!Arc::ptr_eq(&checked, &unread));
        let read = checking
            .rev_cache()
            .get(&checking.stored_packs().unwrap()[0], hash);
        assert!(read.is_mapped() && !read.is_unread());
        assert!(Arc::ptr_eq(
            &checking.rev_cache().get_checked(&packs[0], hash),
            &read
        ));

        // Opened again: trusting still, and what was read taken.
        trusting.bitmaps(&packs[0]).expect("git's bitmaps are read");
        let again = trusting.reopen().unwrap();
        assert!(again.rev_cache().trusting());
        assert!(Arc::ptr_eq(
            &again.rev_cache().made(&packs[0].pack).unwrap(),
            &unread
        ));
        // A checking cache and bitmap cache take none of it.
        let adopted = vec![(packs[0].pack.clone(), Arc::clone(&packs[0].index))];
        let (revs, bitmaps) = (
            super::RevCache::default(),
            crate::bitmap::BitmapCache::default(),
        );
        revs.adopt(&trusting.rev_cache(), &adopted);
        bitmaps.adopt(&trusting.bitmap_cache(), &adopted, false);
        assert!(revs.made(&packs[0].pack).is_none());
        assert!(bitmaps.held(&packs[0].pack).is_none());
        bitmaps.adopt(&trusting.bitmap_cache(), &adopted, true);
        assert!(bitmaps.held(&packs[0].pack).is_some());
    }

    /// A handle opened again takes what the one before read and made of the packs that are
    /// still as it read them, and reads anew what was added or replaced; answers are the
    /// same as a fresh handle's. After every pack was replaced, what the handle before had
    /// made is made again for the new pack on request.
    #[test]
    fn a_handle_opened_again_keeps_what_stayed_and_reads_what_changed() {
        use gitcache_protocol::request::Fetch;
        use std::sync::Arc;

        let (_dir, first) = repacked(21, &["repack", "-adbq"]);
        let path = first.git_dir().to_owned();
        let hash = first.object_format();
        let git = |args: &[&str]| gitcache_testkit::git::git_stdout(&path, args);
        let all = super::Made {
            positions: true,
            offsets: true,
            forest: true,
        };
        let packs = first.stored_packs().unwrap();
        let old = packs[0].pack.clone();
        let rev = first.rev_cache().get(&packs[0], hash);
        rev.make(&packs[0], hash, all);
        assert_eq!(rev.made(), all);
        let bitmaps = first.bitmaps(&packs[0]).expect("git's bitmaps are read");

        // Nothing changed: everything is taken.
        let second = first.reopen().unwrap();
        let again = second.stored_packs().unwrap();
        assert!(Arc::ptr_eq(&again[0].index, &packs[0].index));
        assert!(Arc::ptr_eq(&second.rev_cache().made(&old).unwrap(), &rev));
        assert!(Arc::ptr_eq(&second.bitmaps(&again[0]).unwrap(), &bitmaps));

        // A pack added beside: the old one's parts are still taken; the new one is read.
        let head = git(&["rev-parse", "HEAD"]);
        let commit = git(&[
            "commit-tree",
            "HEAD^{tree}",
            "-p",
            head.trim(),
            "-m",
            "added",
        ]);
        git(&["update-ref", "refs/heads/added", commit.trim()]);
        git(&["repack", "-dq"]);
        let third = second.reopen().unwrap();
        let listed = third.stored_packs().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(Arc::ptr_eq(&third.rev_cache().made(&old).unwrap(), &rev));
        let new = listed.iter().find(|p| p.pack != old).unwrap();
        assert!(
            third.rev_cache().made(&new.pack).is_none(),
            "the new pack is read when needed"
        );

        // A file beside the old pack replaced by the same bytes in a new file, as rewriting
        // it does; the old pack as a handle lists it.
        let replace = |path: &std::path::Path| {
            let copy = old.with_extension("copy");
            std::fs::copy(path, &copy).unwrap();
            std::fs::rename(&copy, path).unwrap();
        };
        let listed_old = |repo: &Repository| {
            let listed = repo.stored_packs().unwrap();
            listed.into_iter().find(|p| p.pack == old).unwrap()
        };

        // The bitmap file replaced: read again, the rest taken.
        let bitmap = old.with_extension("bitmap");
        replace(&bitmap);
        let fourth = third.reopen().unwrap();
        let reread = fourth.bitmaps(&listed_old(&fourth)).expect("read again");
        assert!(!Arc::ptr_eq(&reread, &bitmaps));
        assert!(Arc::ptr_eq(&fourth.rev_cache().made(&old).unwrap(), &rev));

        // The same answers as a handle opened afresh: a clone, and one of depth 1.
        let tips: Vec<gix_hash::ObjectId> = git(&["for-each-ref", "--format=%(objectname)"])
            .lines()
            .map(|l| gix_hash::ObjectId::from_hex(l.as_bytes()).unwrap())
            .collect();
        let clone = Fetch {
            wants: tips.clone(),
            done: true,
            ofs_delta: true,
            thin_pack: true,
            no_progress: true,
            ..Fetch::default()
        };
        let shallow = Fetch {
            deepen: Some(1),
            ..clone.clone()
        };
        let answer = |repo: &Repository, fetch: &Fetch| {
            let mut out = Vec::new();
            crate::plan(repo, fetch, hash, &crate::Options::default())
                .unwrap()
                .write_to(&mut out)
                .unwrap();
            out
        };
        let fresh = Repository::open(&path).unwrap();
        for fetch in [&clone, &shallow] {
            assert!(answer(&fourth, fetch) == answer(&fresh, fetch));
        }

        // The bitmap file removed (as a damaged one is): none is taken, none is read.
        std::fs::remove_file(&bitmap).unwrap();
        let without = fourth.reopen().unwrap();
        assert!(without.bitmaps(&listed_old(&without)).is_none());
        assert!(Arc::ptr_eq(&without.rev_cache().made(&old).unwrap(), &rev));
        // The index replaced (the same bytes, a new file): it is read again, and what was
        // made from the one before is not taken.
        replace(&old.with_extension("idx"));
        let reindexed = without.reopen().unwrap();
        assert!(!Arc::ptr_eq(&listed_old(&reindexed).index, &packs[0].index));
        assert!(reindexed.rev_cache().made(&old).is_none());
        let now = Repository::open(&path).unwrap();
        assert!(answer(&reindexed, &shallow) == answer(&now, &shallow));

        // Every pack replaced: nothing is taken, and what the handle before made is made
        // for the new pack when asked.
        git(&["repack", "-adbq"]);
        let fifth = fourth.reopen().unwrap();
        assert!(fifth.rev_cache().made_any().is_none(), "nothing taken");
        fifth.warm_like(&fourth).unwrap();
        let listed = fifth.stored_packs().unwrap();
        assert_eq!(listed.len(), 1);
        assert_ne!(listed[0].pack, old);
        assert_eq!(fifth.rev_cache().made(&listed[0].pack).unwrap().made(), all);
        // The answers above read the name hashes too.
        assert_eq!(fourth.bitmap_cache().read_any(), (true, true));
        assert_eq!(fifth.bitmap_cache().read_any(), (true, true));
        for fetch in [&clone, &shallow] {
            let now = Repository::open(&path).unwrap();
            assert!(answer(&fifth, fetch) == answer(&now, fetch));
        }
        // After a handle that had made nothing (it sent whole packs): the reverse index
        // and bitmaps every other answer reads, nothing more.
        let idle = Repository::open(&path).unwrap();
        let after_idle = idle.reopen().unwrap();
        assert!(after_idle.rev_cache().made_any().is_none());
        after_idle.warm_like(&idle).unwrap();
        // (A reverse index built from the index keeps the offsets it sorted.)
        let made = after_idle.rev_cache().made_any().expect("a reverse index");
        assert!(!made.forest && !made.positions, "{made:?}");
        assert_eq!(after_idle.bitmap_cache().read_any(), (true, false));
    }
}

#[cfg(test)]
mod tips_tests {
    use super::*;

    #[test]
    fn tips_are_written_and_read_back_within_the_bound_and_not_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path().join("pack-x.pack");
        let tips: OidSet = (1..=3u8)
            .map(|n| ObjectId::from_bytes_or_panic(&[n; 20]))
            .collect();
        // Three lines of 41 bytes.
        assert_eq!(write_tips_within(&pack, &tips, 122).unwrap(), None);
        assert!(!pack.with_extension("tips").exists());
        let path = write_tips_within(&pack, &tips, 123).unwrap().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 123);
        assert_eq!(read_tips(&path, HashKind::Sha1).unwrap(), Some(tips));
        // No tips: an empty file, read back as none.
        let none = write_tips_within(&pack, &OidSet::default(), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            read_tips(&none, HashKind::Sha1).unwrap(),
            Some(OidSet::default())
        );
    }
}
