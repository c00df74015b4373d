//! Taking a pack received from upstream into a mirror: index and verify it, then move it into
//! place so that readers only ever see complete packs.
//!
//! The pack is written and indexed in a staging folder inside `objects/pack` (same file system,
//! so the final moves are renames). The data file is moved first and the index last: git and
//! gitoxide find packs through their index, so a pack is visible only once both are in place.
//! Any failure — a truncated, corrupt or hostile pack, a full disk — removes the staging
//! folder and leaves the mirror exactly as it was.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gitcache_pack::{Closure, PackEntry};

use crate::live::{Asked, Board, Publisher};
use gix_hash::{Kind as HashKind, ObjectId};

/// The largest single allocation a received pack may cause. A pack header can claim any
/// object count, and indexing sizes its tables by it: a hostile upstream could otherwise make
/// us allocate tens of gigabytes. 2 GiB admits about 33 million objects
/// ([`CLAIMED_OBJECT_BYTES`] each).
pub const MAX_ALLOCATION: usize = 2 << 30;

/// What each object a pack's header claims is counted for against [`MAX_ALLOCATION`]: its
/// entry, and the tables indexing sizes by the count.
pub const CLAIMED_OBJECT_BYTES: usize = std::mem::size_of::<PackEntry>() * 4;

/// What each distinct base a received pack names by id (a `REF_DELTA`'s base, in the pack
/// or not) is counted for against [`MAX_ALLOCATION`] beside its objects: its id in the list
/// and the set of those named, with their room to grow.
pub const NAMED_BASE_BYTES: usize = 160;

/// Blobs stored whole from this size on are hashed as they arrive, and unless a delta rests
/// on them not decoded again ([`gitcache_pack::ReadPack::hashed`]): taking in a pack takes
/// the same memory whatever the size of its files. Smaller ones are hashed when the pack's
/// objects are decoded, on all cores rather than on the thread reading the pack; but while a
/// mirror's first pack is read for the objects found early, every blob stored whole that
/// arrives past where that reading has come is hashed, and the reading told of it
/// ([`LivePack::told_at`](crate::live::LivePack::told_at)).
pub const HASHED_ON_ARRIVAL: u64 = 1 << 20;

/// A pack now part of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The pack's checksum, which names its files.
    pub checksum: ObjectId,
    /// `objects/pack/pack-<checksum>.pack`.
    pub pack: PathBuf,
    /// `objects/pack/pack-<checksum>.idx`.
    pub index: PathBuf,
    /// Objects in the pack, bases added to complete a thin pack included.
    pub objects: u32,
    /// Whether this call moved the pack into place (`false`: the repository had the very
    /// same pack already, which must then not be removed on its account).
    pub fresh: bool,
    /// Whether the pack was received behind answers: a first pack announced, read for the
    /// objects found early as it arrived (see [`ingest_pack_announced`]).
    pub received_behind: bool,
    /// Whether it was indexed behind answers: a fetch waited for the objects found early in
    /// it, and a reading of it for them had begun by the end of its download.
    pub indexed_behind: bool,
}

/// Why a received pack was not taken in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a valid pack (truncated, corrupt, wrong checksum, unresolvable delta).
    #[error("invalid pack from upstream: {message}")]
    InvalidPack {
        /// What gitoxide found wrong.
        message: String,
    },
    /// The mirror's folders could not be written.
    #[error("cannot store the pack: {0}")]
    Io(#[from] std::io::Error),
    /// The check run on the indexed pack refused it (its history is not whole).
    #[error("the pack was refused: {0}")]
    Refused(gitcache_pack::Error),
}

impl Error {
    /// Whether the upstream sent something unusable (rather than a local failure).
    pub fn is_upstream_fault(&self) -> bool {
        matches!(self, Error::InvalidPack { .. } | Error::Refused(_))
    }
}

/// Removes the staging folder unless disarmed.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Index, verify and move into place the pack read from `pack`, into the bare repository at
/// `git_dir` whose objects are `hash`. Thin packs are completed with bases from the repository.
/// One ingestion into a repository at a time (the registry's refresh lock): a pack whose
/// name is taken is compared with the one there, which a second ingestion moving its own
/// into place meanwhile would defeat.
///
/// Ask upstream for `ofs-delta`: a ref-delta whose base the repository already has is
/// completed with a copy of that base even when the base is also in the pack, and the pack
/// is then refused for holding that object twice (git sends no such pack).
pub fn ingest_pack(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut (dyn BufRead + Send),
) -> Result<Ingested, Error> {
    ingest_pack_checked(git_dir, hash, pack, Closure::Unchecked)
}

/// [`ingest_pack`], checking as the objects are read that the pack is closed as `closure`
/// says ([`gitcache_pack::Repository::check_pack_closed`]): a pack that is not never becomes
/// part of the mirror, whatever happens after (a crash during the check leaves only a
/// staging folder, which is a crash's leftover).
///
/// The pack is read in one pass as it arrives (each entry inflated to find where it ends,
/// its CRC-32 taken, the bytes written to the file as they are), a thin pack's bases are
/// added at its end; then every object is decoded once, deltas resolved on all cores, for
/// its id and the check together, and the index is written.
pub fn ingest_pack_checked(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut (dyn BufRead + Send),
    closure: Closure,
) -> Result<Ingested, Error> {
    ingest_pack_announced(git_dir, hash, pack, closure, None)
}

/// A pack to be announced on a [`Board`] while it arrives: what it was asked for with.
#[derive(Debug)]
pub struct Announce {
    /// Where it is announced.
    pub board: std::sync::Arc<Board>,
    /// What the fetch that brings it asked for.
    pub asked: Asked,
}

/// [`ingest_pack_checked`], announcing the pack on `announce`'s board while it arrives
/// (see [`crate::live`]): readers may follow its bytes as they are written, until it is
/// whole (before it is indexed and checked) or has failed. A pack asked for with haves and
/// `thin-pack` is whole as received once its trailer is checked, bases left out and all (its
/// readers take thin packs); any other is whole once it is found to need no bases from the
/// mirror, and failed otherwise. A mirror's first pack is received on a thread of its own,
/// which steps behind answers (a lower priority) while the pack is read for the objects
/// found early as it arrives ([`LivePack::read_early`](crate::live::LivePack::read_early)),
/// which a fetch waits for: that reading comes first. Once it is over, the rest is received
/// on the caller's thread, at its priority.
pub fn ingest_pack_announced(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut (dyn BufRead + Send),
    closure: Closure,
    announce: Option<Announce>,
) -> Result<Ingested, Error> {
    let stop = AtomicBool::new(false);
    ingest_pack_guarded(git_dir, hash, pack, closure, announce, &stop, &|_| Ok(()))
}

/// The most bytes of the bases added to complete a thin pack written without asking for room
/// (a larger base is asked for alone).
pub const ROOM_ASKED_EVERY: u64 = 16 << 20;

/// Room taking a pack in asks for after the download (see [`ingest_pack_guarded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Bytes of the next base that completes a thin pack: more may follow, and the indexes.
    Bases(u64),
    /// Bytes of bases written since the last ask: told so that they are counted, not asked
    /// for (they are on the disk already).
    Written(u64),
    /// The last writes: the indexes, or the pack again with its indexes.
    Last(u64),
}

impl Ask {
    /// The bytes asked for, or told of.
    pub fn bytes(self) -> u64 {
        match self {
            Ask::Bases(bytes) | Ask::Written(bytes) | Ask::Last(bytes) => bytes,
        }
    }
}

/// [`ingest_pack_announced`], given up (the pack refused, nothing left behind) once `stop`
/// is set: a caller's deadline for decoding a pack, which a hostile upstream can make cost
/// far more than its size (deltas each copying one large base again). And asking `room`
/// before the disk takes more once the pack has arrived: before the bases added to complete a
/// thin pack are written (with the first's size), then before each base that would take the
/// bytes written since the last ask past [`ROOM_ASKED_EVERY`] (telling it first of those,
/// [`Ask::Written`], then asking for that base's size), and telling it of those written after
/// the last ask; before the index and reverse
/// index are written, with their size; and before gitoxide's indexer writes the pack again
/// (a pack whose deltas name bases within it by id), with the size received and its
/// indexes', in one ask. An error from it stops the ingestion, nothing left behind. A caller
/// keeping a floor of free space checks the arriving pack itself as it reads it.
pub fn ingest_pack_guarded(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut (dyn BufRead + Send),
    closure: Closure,
    announce: Option<Announce>,
    stop: &AtomicBool,
    room: &dyn Fn(Ask) -> std::io::Result<()>,
) -> Result<Ingested, Error> {
    ingest_hashing_from(
        git_dir,
        hash,
        pack,
        closure,
        announce,
        HASHED_ON_ARRIVAL,
        Guards { stop, room },
    )
}

/// What an ingestion is stopped by (see [`ingest_pack_guarded`]).
pub(crate) struct Guards<'a> {
    /// Set: given up.
    pub(crate) stop: &'a AtomicBool,
    /// Asked for room before the disk takes more after the download.
    pub(crate) room: &'a dyn Fn(Ask) -> std::io::Result<()>,
}

/// [`ingest_pack_announced`], hashing blobs stored whole from `hash_from` bytes on as
/// they arrive (see [`HASHED_ON_ARRIVAL`]; the fuzz target hashes every one so).
pub(crate) fn ingest_hashing_from(
    git_dir: &Path,
    hash: HashKind,
    pack: &mut (dyn BufRead + Send),
    closure: Closure,
    announce: Option<Announce>,
    hash_from: u64,
    Guards { stop, room }: Guards<'_>,
) -> Result<Ingested, Error> {
    let pack_dir = git_dir.join("objects").join("pack");
    std::fs::create_dir_all(&pack_dir)?;
    let staging_dir = pack_dir.join(format!("incoming-{}-{}", std::process::id(), unique()));
    std::fs::create_dir(&staging_dir)?;
    let mut staging = Staging(Some(staging_dir.clone()));

    let repo = gitcache_pack::Repository::open(git_dir).map_err(std::io::Error::other)?;
    if repo.object_format() != hash {
        return Err(std::io::Error::other(format!(
            "a {hash} pack for a {} repository",
            repo.object_format()
        ))
        .into());
    }
    let received = staging_dir.join("received.pack");
    let started = std::time::Instant::now();
    let board = announce.as_ref().map(|a| std::sync::Arc::clone(&a.board));
    let Received {
        entries,
        checksum,
        bases,
        ref_deltas_within,
        hashed,
        behind,
        read_began,
    } = receive(&repo, hash, pack, &received, announce, hash_from, room)?;
    let received_bytes = std::fs::metadata(&received)?.len();
    tracing::debug!(
        bytes = received_bytes,
        objects = entries.len(),
        ms = started.elapsed().as_millis() as u64,
        "a pack received"
    );
    let index_bytes = index_files_bytes(entries.len() as u64, hash, received_bytes);
    // Room is asked for before the indexing starts: the indexing may run on a thread of
    // its own (below), and the ask is the caller's, on this one.
    let index_at = if ref_deltas_within {
        // Deltas on a base named by id within the pack: gitoxide's indexer resolves them,
        // writing the pack again.
        room(Ask::Last(received_bytes.saturating_add(index_bytes)))?;
        None
    } else {
        let data = staging_dir.join(format!("pack-{checksum}.pack"));
        // The index and reverse index: 32 bytes an object and more (a pack of tiny objects
        // has indexes larger than itself).
        room(Ask::Last(index_bytes))?;
        std::fs::rename(&received, &data)?;
        Some(data)
    };
    let index_it = || -> Result<(PathBuf, PathBuf), Error> {
        let Some(data) = index_at else {
            return index_with_ref_deltas(&repo, hash, &received, &staging_dir, closure, stop);
        };
        let index = data.with_extension("idx");
        let read = gitcache_pack::ReadPack {
            entries: &entries,
            bases: &bases,
            hashed: &hashed,
            checksum: &checksum,
            stop,
        };
        repo.index_pack(&data, read, &index, closure)
            .map_err(|err| match (err, closure) {
                // Writing the index failed here (a full disk): not the upstream's fault.
                (gitcache_pack::Error::Io(err), _) => Error::Io(err),
                (err, Closure::Closed { .. }) => Error::Refused(err),
                (err, Closure::Unchecked) => Error::InvalidPack {
                    message: err.to_string(),
                },
            })?;
        Ok((data, index))
    };
    // A fetch waits for an answer from the objects found as this pack arrived: that answer
    // (the reading, its copy, the pack sent) comes first on the cores, the indexing after.
    // Not when no reading of it began by the end of the download (every turn to read taken
    // elsewhere, or one starting later): the indexing then runs at the server's priority.
    let (indexed, indexed_behind) =
        match read_began && board.is_some_and(|board| board.early_wanted()) {
            true => crate::behind::behind_answers(index_it),
            false => (index_it(), false),
        };
    let (data, index) = indexed?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "a pack received and indexed"
    );
    let objects = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let final_pack = pack_dir.join(format!("pack-{checksum}.pack"));
    let final_index = pack_dir.join(format!("pack-{checksum}.idx"));
    // Written beside the index, unless gitoxide's indexer made it.
    let reverse = Some(index.with_extension("rev")).filter(|r| r.is_file());
    let fresh = !final_index.exists();
    let final_reverse = final_index.with_extension("rev");
    if fresh {
        for file in [Some(&data), reverse.as_ref(), Some(&index)]
            .into_iter()
            .flatten()
        {
            std::fs::File::open(file)?.sync_all()?;
            let mut perms = std::fs::metadata(file)?.permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(file, perms)?;
        }
        // The index last: the pack is found by it, whole by then.
        std::fs::rename(&data, &final_pack)?;
        if let Some(reverse) = &reverse {
            std::fs::rename(reverse, &final_reverse)?;
        }
        std::fs::rename(&index, &final_index)?;
        gitcache_storage::fs::sync_dir(&pack_dir)?;
    } else if !same_bytes(&data, &final_pack)? {
        // Named by a checksum hashed without collision detection: a pack of that name with
        // other bytes is kept, and this one refused (as git checks since 2.48).
        return Err(invalid(format!(
            "pack-{checksum} is in the mirror already with other bytes"
        )));
    } else if let Some(reverse) = reverse.filter(|_| !final_reverse.exists()) {
        // The pack there has no reverse index (taken in before they were written): this
        // one's is its own, and readers check it before using it.
        let mut perms = std::fs::metadata(&reverse)?.permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&reverse, perms)?;
        std::fs::File::open(&reverse)?.sync_all()?;
        std::fs::rename(&reverse, &final_reverse)?;
        gitcache_storage::fs::sync_dir(&pack_dir)?;
    }
    drop(staging.0.take().map(std::fs::remove_dir_all));
    Ok(Ingested {
        checksum,
        pack: final_pack,
        index: final_index,
        objects,
        fresh,
        received_behind: behind,
        indexed_behind,
    })
}

/// The bytes of the version 2 index and the reverse index of a pack of `objects` objects and
/// `pack_bytes` bytes whose ids are `hash`: what taking it in writes beside it.
fn index_files_bytes(objects: u64, hash: HashKind, pack_bytes: u64) -> u64 {
    let h = hash.len_in_bytes() as u64;
    // Entries past 2 GiB take 8 bytes more each: all of them, at most, in a pack that large.
    let large = if pack_bytes >= 1 << 31 { 8 } else { 0 };
    let index = objects
        .saturating_mul(h + 8 + large)
        .saturating_add(8 + 256 * 4 + 2 * h);
    let reverse = objects.saturating_mul(4).saturating_add(12 + 2 * h);
    index.saturating_add(reverse)
}

/// A received pack in its file: its entries, its checksum, where the bases added to complete
/// it as a thin pack are, by id, and whether some delta's base is named by id and was not
/// added (a base within the pack), and its blobs hashed as they were read (stored whole, from
/// the size asked or told of to a reading, no delta on them; by position, in order).
struct Received {
    entries: Vec<PackEntry>,
    checksum: ObjectId,
    bases: std::collections::HashMap<ObjectId, u64>,
    ref_deltas_within: bool,
    hashed: Vec<(u32, ObjectId)>,
    /// Whether the receiving stepped behind answers.
    behind: bool,
    /// Whether a reading of the pack for the objects found early began by its end.
    read_began: bool,
}

/// The largest tag or commit read as a first pack arrives, to see what a tag tags and which
/// wants they are (see [`crate::live::EntryKinds`]): one larger counts as tagging anything,
/// or as no want.
const MOST_TAG_READ: u64 = 1 << 16;

/// Read the pack from `pack` into the file `to` as it is received, then complete a thin pack
/// as `git index-pack --fix-thin` does: the bases its deltas name by id that the repository
/// has are added at the end of the file (the deltas keep naming them by id), and the count
/// and checksum are written anew. Blobs stored whole from `hash_from` bytes on (every one
/// while a reading of a first pack is told of them, see [`HASHED_ON_ARRIVAL`]) are hashed
/// as they are read, and kept so unless a delta rests on them by offset (a delta naming its
/// base by id is completed, or read by gitoxide's indexer, which decodes every object).
/// While a first pack announced is being read for the objects found early (a fetch waits
/// for them), it is received behind answers, on a thread of its own: on two cores, that
/// reading, the receiving and the upstream's own work took turns, and the reading (which a
/// depth-50 clone of the bench's 50 MB repository waits on) ended up to 0.2 s after the
/// download.
fn receive(
    repo: &gitcache_pack::Repository,
    hash: HashKind,
    pack: &mut (dyn BufRead + Send),
    to: &Path,
    announce: Option<Announce>,
    hash_from: u64,
    room: &dyn Fn(Ask) -> std::io::Result<()>,
) -> Result<Received, Error> {
    use gix_pack::data::entry::Header;
    use std::io::{Seek, Write};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(to)?;
    // A first pack's wants, sorted: each found among the commits and tags it holds whole
    // (see below).
    let mut wants: Vec<ObjectId> = (announce.as_ref())
        .filter(|a| a.asked.haves.is_empty())
        .map(|a| a.asked.wants.clone())
        .unwrap_or_default();
    wants.sort_unstable();
    wants.dedup();
    let live = match announce {
        Some(Announce { board, asked }) => Some(Live {
            as_received: !asked.haves.is_empty(),
            thin: asked.thin_pack,
            publisher: board.announce(asked, hash, file.try_clone()?),
            head: Vec::with_capacity(gix_pack::data::header::SIZE),
            written: 0,
            published: 0,
            held: hash.len_in_bytes() as u64,
        }),
        None => None,
    };
    // A mirror's first pack, announced: nothing had, nothing thin.
    let first = live.as_ref().is_some_and(|live| !live.as_received);
    let announced = (live.as_ref()).map(|live| std::sync::Arc::clone(live.publisher.pack()));
    let mut tee = Tee {
        inner: pack,
        out: std::io::BufWriter::with_capacity(1 << 16, file),
        sum: Trailing::new(hash),
        failed: None,
        live,
    };
    // The tee checks the trailer: gitoxide's check hashes with collision detection, a quarter
    // of the time of reading a pack on one thread ([`gitcache_pack::Checksum`]).
    let mut read =
        gitcache_pack::incoming::Incoming::new(&mut tee, hash, hash_from).map_err(invalid)?;
    // A header may claim any count: nothing is sized by it beyond this bound.
    let claimed = read.count() as usize;
    let claimed_bytes = claimed.saturating_mul(CLAIMED_OBJECT_BYTES);
    if claimed_bytes > MAX_ALLOCATION {
        return Err(Error::InvalidPack {
            message: format!("the pack claims {claimed} objects, more than can be indexed"),
        });
    }
    let mut entries = Vec::new();
    // Where the last entry read ends: the file must end there, with the checksum.
    let mut entries_end = gix_pack::data::header::SIZE as u64;
    // Bases named by id, each once, in the order first named; the set is keyed by ids the
    // pack chose, hence std's seeded hasher.
    let (mut named, mut seen) = (Vec::new(), std::collections::HashSet::new());
    // The blobs hashed as they were read so far, by offset: their positions and ids.
    let mut hashed = std::collections::HashMap::new();
    // A first pack's entries' kinds, for filtered clones answered from it once whole
    // (see `EntryKinds`): tags stored whole are read to see what they tag, and they and
    // the commits stored whole are hashed to see which wants they are (a filter keeps
    // what is wanted, whatever its kind: only wants all commits and tags are a choice of
    // kinds).
    let mut kinds = first.then(|| (Vec::new(), true));
    let mut wanted_found = vec![false; wants.len()];
    // Commits are read only while a want is not found yet (a pack's tips come first).
    let unfound = std::sync::atomic::AtomicUsize::new(wants.len());
    let keep_tags = |_: u64, header: &Header, size: u64| {
        let read = match header {
            Header::Tag => true,
            Header::Commit => unfound.load(std::sync::atomic::Ordering::Relaxed) > 0,
            _ => false,
        };
        first && read && size <= MOST_TAG_READ
    };
    let mut tag = Vec::new();
    // One entry read and taken account of: `false` past the last.
    let mut next = || -> Result<bool, Error> {
        // While the first pack is read for the objects found early, its blobs stored whole
        // are hashed here, where every entry is inflated anyway to find its end, and told to
        // that reading, which then need not inflate them (nor the indexing hash them).
        let telling = announced
            .as_deref()
            .filter(|pack| first && pack.wants_told(read.offset()));
        read.hash_from(match telling {
            Some(_) => 0,
            None => hash_from,
        });
        let Some((entry, read_whole)) = read
            .next_entry_keeping(&keep_tags, &mut tag)
            .map_err(invalid)?
        else {
            return Ok(false);
        };
        // The index keeps a CRC-32 of each entry as written in its shortest form, which git
        // always writes: a longer form would not match it.
        if entry.header_size as usize != entry.header.size(entry.size) {
            return Err(Error::InvalidPack {
                message: format!(
                    "the entry at offset {} has a header not in its shortest form",
                    entry.offset
                ),
            });
        }
        if let (Some(pack), Header::Blob, Some(id)) = (telling, entry.header, entry.id) {
            let (end, crc32) = (entry.end(), entry.crc32);
            pack.tell(
                entry.offset,
                gitcache_pack::incoming::Told { end, crc32, id },
            );
        }
        let position =
            u32::try_from(entries.len()).map_err(|_| invalid("too many objects for one pack"))?;
        match (entry.header, entry.id) {
            (Header::RefDelta { base_id }, _) if seen.insert(base_id) => {
                named.push(base_id);
                // Each costs a hundred bytes or so: a pack of deltas on distinct made-up
                // bases, 30 bytes each, would otherwise hold gigabytes within the count.
                let held = named.len().saturating_mul(NAMED_BASE_BYTES);
                if claimed_bytes.saturating_add(held) > MAX_ALLOCATION {
                    return Err(invalid(format!(
                        "the pack names more than {} bases by id, more than can be held",
                        named.len() - 1
                    )));
                }
            }
            (Header::OfsDelta { base_distance }, _) => {
                // A base comes before its deltas: not decoded only if none rests on it.
                if let Some(base) = entry.offset.checked_sub(base_distance) {
                    hashed.remove(&base);
                }
            }
            (_, Some(id)) => {
                hashed.insert(entry.offset, (position, id));
            }
            _ => {}
        }
        if let Some((kinds, tags_on_commits)) = kinds.as_mut() {
            let kind = match entry.header {
                Header::OfsDelta { base_distance } => entry
                    .offset
                    .checked_sub(base_distance)
                    .and_then(|base| {
                        entries
                            .binary_search_by_key(&base, |e: &PackEntry| e.offset)
                            .ok()
                    })
                    .and_then(|at| kinds.get(at).copied().flatten()),
                header => header.as_kind(),
            };
            if kind == Some(gix_object::Kind::Tag) {
                *tags_on_commits &= read_whole
                    && gitcache_pack::tagged(&tag, hash).is_some_and(|(_, kind)| {
                        matches!(kind, gix_object::Kind::Commit | gix_object::Kind::Tag)
                    });
            }
            if let (true, Some(kind @ (gix_object::Kind::Commit | gix_object::Kind::Tag))) =
                (read_whole, kind)
                && let Ok(id) = gix_object::compute_hash(hash, kind, &tag)
                && let Ok(place) = wants.binary_search(&id)
                && !std::mem::replace(&mut wanted_found[place], true)
            {
                unfound.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            kinds.push(kind);
        }
        entries.push(PackEntry {
            offset: entry.offset,
            crc32: entry.crc32,
        });
        entries_end = entry.end();
        Ok(true)
    };
    // A first pack is received on a thread of its own, which steps behind answers while the
    // pack is read for the objects found early (looked at each entry, an atomic's load: the
    // reading may begin at any point), and hands the rest back to this thread, at its own
    // priority, once that reading is over.
    let (behind, handed_back) = match (first, announced.as_deref()) {
        (true, Some(pack)) => crate::behind::on_own_thread(
            "receive-pack",
            |yielding| -> Result<(bool, bool), Error> {
                loop {
                    let reading = pack.is_read_early();
                    if reading && !yielding.tried() {
                        yielding.step_behind();
                        if yielding.stepped_behind() {
                            tracing::debug!(
                                "the rest of the pack received behind the answers from what it holds"
                            );
                        }
                    }
                    if yielding.stepped_behind() && !reading {
                        return Ok((true, true));
                    }
                    if !next()? {
                        return Ok((yielding.stepped_behind(), false));
                    }
                }
            },
        )?,
        _ => {
            while next()? {}
            (false, false)
        }
    };
    if handed_back {
        tracing::debug!("the rest of the pack received at the server's own priority again");
        while next()? {}
    }
    let mut checksum = read.trailer().map_err(invalid)?;
    if let Some(err) = tee.failed.take() {
        return Err(err.into());
    }
    let live = tee.live.take();
    let mut file = tee.out.into_inner().map_err(|e| e.into_error())?;
    if entries.is_empty() {
        return Err(Error::InvalidPack {
            message: "no pack was written".into(),
        });
    }
    let (computed, trailer) = tee.sum.finish()?;
    if trailer != checksum.as_slice() || computed != checksum {
        return Err(invalid(format!(
            "the pack's checksum is {computed}, its trailer says {checksum}"
        )));
    }
    // The bytes the entries and the trailer were read from, exactly.
    let mut end = entries_end;
    if file.metadata()?.len() != end + hash.len_in_bytes() as u64 {
        return Err(invalid(
            "the pack written is not the bytes its entries were read from",
        ));
    }

    let mut live = match live {
        Some(live) if live.as_received && (live.thin || named.is_empty()) => {
            // Whole as received, for readers that take what the upstream sends as it is.
            live.publisher.whole_as_received(end, checksum.as_slice());
            None
        }
        live => live,
    };
    let mut bases = std::collections::HashMap::new();
    let mut ref_deltas_within = false;
    if !named.is_empty() {
        // The mirror's own packs: failing to list them is no fault of the upstream's.
        let mut thin = repo.thin_bases().map_err(std::io::Error::other)?;
        file.set_len(end)?;
        file.seek(std::io::SeekFrom::Start(end))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut file);
        let mut entry = Vec::new();
        // Room for the first base is asked for before it is written, and for each base that
        // would take the bytes written since the last ask past ROOM_ASKED_EVERY (those told
        // of first: they are on the disk already, and asking for them again would count them
        // twice), so that less than that is ever written unasked. The last ones are told of
        // after them.
        let mut ask = |ask: Ask| -> Result<(), Error> {
            room(ask).map_err(|err| {
                if let Some(live) = live.take() {
                    live.publisher.failed(format!(
                        "no room on the disk for the bases that complete the pack: {err}"
                    ));
                }
                err.into()
            })
        };
        let (mut unasked, mut asked) = (0u64, false);
        for id in named {
            entry.clear();
            let Some(crc32) = thin.entry(&id, &mut entry).map_err(std::io::Error::other)? else {
                ref_deltas_within = true;
                continue;
            };
            let size = entry.len() as u64;
            if !asked || unasked.saturating_add(size) > ROOM_ASKED_EVERY {
                if unasked > 0 {
                    ask(Ask::Written(unasked))?;
                }
                ask(Ask::Bases(size))?;
                (unasked, asked) = (0, true);
            } else {
                unasked += size;
            }
            out.write_all(&entry)?;
            entries.push(PackEntry { offset: end, crc32 });
            bases.insert(id, end);
            end += entry.len() as u64;
        }
        if unasked > 0 {
            ask(Ask::Written(unasked))?;
        }
        out.flush()?;
        drop(out);
        if !bases.is_empty() {
            let count = u32::try_from(entries.len())
                .map_err(|_| invalid("too many objects for one pack"))?;
            file.seek(std::io::SeekFrom::Start(8))?;
            file.write_all(&count.to_be_bytes())?;
            file.flush()?;
            checksum = checksum_of_file(&mut file, end, hash)?;
            file.seek(std::io::SeekFrom::Start(end))?;
            file.write_all(checksum.as_bytes())?;
        } else {
            // Nothing added: the trailer goes back as it was.
            file.seek(std::io::SeekFrom::Start(end))?;
            file.write_all(checksum.as_bytes())?;
        }
    }
    if let Some(live) = live {
        if !bases.is_empty() {
            live.publisher
                .failed("the upstream's pack left out objects it needs (a thin pack)");
        } else if ref_deltas_within {
            // Bases named by id that the mirror lacks: within the pack, or nowhere. Only
            // resolving its deltas tells, after which the mirror answers.
            live.publisher
                .failed("the upstream's pack names bases by id that the mirror lacks");
        } else {
            // The file holds the pack as received, trailer and all.
            if let Some((kinds, tags_on_commits)) = kinds {
                live.publisher.entry_kinds(crate::live::EntryKinds {
                    offsets: entries.iter().map(|entry| entry.offset).collect(),
                    kinds,
                    end,
                    tags_on_commits,
                    wants_commits_or_tags: wanted_found.iter().all(|found| *found),
                });
            }
            live.publisher.whole(end + hash.len_in_bytes() as u64);
        }
    }
    let mut hashed: Vec<(u32, ObjectId)> = hashed.into_values().collect();
    hashed.sort_unstable_by_key(|&(position, _)| position);
    Ok(Received {
        entries,
        checksum,
        bases,
        ref_deltas_within,
        hashed,
        behind,
        read_began: announced
            .as_deref()
            .is_some_and(crate::live::LivePack::read_began),
    })
}

/// Whether the files `a` and `b` hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// The checksum of the first `len` bytes of `file` (as gitcache hashes trailers: see
/// [`gitcache_pack::Checksum`]), read from its start; the file is left just past them.
pub(crate) fn checksum_of_file(
    file: &mut std::fs::File,
    len: u64,
    hash: HashKind,
) -> std::io::Result<ObjectId> {
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut sum = gitcache_pack::Checksum::new(hash);
    let mut left = len;
    let mut buf = vec![0; 1 << 20];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..n])?;
        sum.update(&buf[..n]);
        left -= n as u64;
    }
    sum.finish().map_err(std::io::Error::other)
}

/// A checksum of everything but the last `hash`-length bytes given to it (a pack's trailer,
/// held back until more bytes come after them or the end).
struct Trailing {
    sum: gitcache_pack::Checksum,
    held: [u8; 64],
    /// How many bytes `held` holds, at most `keep`.
    len: usize,
    keep: usize,
}

impl Trailing {
    fn new(hash: HashKind) -> Self {
        Trailing {
            sum: gitcache_pack::Checksum::new(hash),
            held: [0; 64],
            len: 0,
            keep: hash.len_in_bytes(),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        let keep = self.keep;
        if bytes.len() >= keep {
            self.sum.update(&self.held[..self.len]);
            let (hashed, held) = bytes.split_at(bytes.len() - keep);
            self.sum.update(hashed);
            self.held[..keep].copy_from_slice(held);
            self.len = keep;
        } else {
            // Fewer than the held back: what they push out of the window is hashed.
            let spill = (self.len + bytes.len()).saturating_sub(keep);
            self.sum.update(&self.held[..spill]);
            self.held.copy_within(spill..self.len, 0);
            self.len -= spill;
            self.held[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    /// The checksum of the bytes before the held-back ones, and those.
    fn finish(self) -> Result<(ObjectId, Vec<u8>), Error> {
        let held = self.held[..self.len].to_vec();
        Ok((self.sum.finish().map_err(invalid)?, held))
    }
}

/// A reader that writes every byte its reader consumes into `out`, and hashes it into `sum`:
/// the pack file is the bytes the entries were read from, exactly, whatever the reader
/// buffered beyond them.
struct Tee<'a> {
    inner: &'a mut (dyn BufRead + Send),
    out: std::io::BufWriter<std::fs::File>,
    sum: Trailing,
    failed: Option<std::io::Error>,
    /// Readers following the file, told how far it may be read.
    live: Option<Live>,
}

/// How far a pack announced while it arrives has been written.
struct Live {
    publisher: Publisher,
    /// Whole as received once its trailer is checked (see [`ingest_pack_announced`]).
    as_received: bool,
    /// Asked for as a thin pack: bases named by id it may leave out.
    thin: bool,
    /// The pack's header, as far as it has come.
    head: Vec<u8>,
    /// Bytes given to the file's buffered writer.
    written: u64,
    /// Bytes the readers were told of.
    published: u64,
    /// Bytes at the end held back from the readers until the pack is whole: what may be the
    /// trailer, which completing a thin pack writes anew.
    held: u64,
}

impl Live {
    /// `bytes` more are being written: the header, while it comes, is kept for the readers
    /// (completing a thin pack writes another count into the file).
    fn received(&mut self, bytes: &[u8]) {
        let room = gix_pack::data::header::SIZE - self.head.len();
        if room > 0 {
            self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
            if self.head.len() == gix_pack::data::header::SIZE {
                self.publisher.received_head(&self.head);
            }
        }
    }

    /// `amount` more bytes were given to `out`: tell the readers of those written through.
    fn wrote(&mut self, amount: usize, out: &std::io::BufWriter<std::fs::File>) {
        self.written += amount as u64;
        let through = self.written - out.buffer().len() as u64;
        let readable = through.saturating_sub(self.held);
        if readable > self.published {
            self.published = readable;
            self.publisher.arrived(readable);
        }
    }
}

impl std::io::Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Tee<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if self.failed.is_none() {
            let result = match self.inner.fill_buf() {
                Ok(data) if data.len() >= amount => {
                    self.sum.update(&data[..amount]);
                    if let Some(live) = &mut self.live {
                        live.received(&data[..amount]);
                    }
                    let written = std::io::Write::write_all(&mut self.out, &data[..amount]);
                    if let (Ok(()), Some(live)) = (&written, &mut self.live) {
                        live.wrote(amount, &self.out);
                    }
                    written
                }
                Ok(_) => Err(std::io::Error::other("consumed more than was read")),
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                self.failed = Some(err);
            }
        }
        self.inner.consume(amount);
    }
}

/// The indexes of a received pack with deltas on bases named by id within it, made by
/// gitoxide's indexer from the received file (complete by now), then checked.
fn index_with_ref_deltas(
    repo: &gitcache_pack::Repository,
    hash: HashKind,
    received: &Path,
    staging_dir: &Path,
    closure: Closure,
    stop: &AtomicBool,
) -> Result<(PathBuf, PathBuf), Error> {
    let dir = staging_dir.join("indexed");
    std::fs::create_dir(&dir)?;
    let outcome = gix_pack::Bundle::write_to_directory(
        &mut std::io::BufReader::new(std::fs::File::open(received)?),
        Some(&dir),
        &mut gix_utils::progress::Discard,
        stop,
        None::<gix_odb::Handle>,
        hash,
        gix_pack::bundle::write::Options {
            thread_limit: Some(2),
            iteration_mode: gix_pack::data::input::Mode::Verify,
            alloc_limit_bytes: Some(MAX_ALLOCATION),
            ..Default::default()
        },
    )
    .map_err(|err| Error::InvalidPack {
        message: err.to_string(),
    })?;
    let (Some(data), Some(index)) = (outcome.data_path, outcome.index_path) else {
        return Err(Error::InvalidPack {
            message: "no pack was written".into(),
        });
    };
    match closure {
        Closure::Closed { self_contained } => repo
            .check_pack_closed(&data, &index, self_contained)
            .map_err(Error::Refused)?,
        // The check refuses an object twice; unchecked, it is looked for here.
        Closure::Unchecked => {
            let written = gix_pack::index::File::at(&index, hash).map_err(invalid)?;
            let ids: Vec<ObjectId> = written.iter().map(|e| e.oid).collect();
            if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(invalid(format!("{} is in the pack twice", pair[0])));
            }
        }
    }
    Ok((data, index))
}

fn invalid(err: impl std::fmt::Display) -> Error {
    Error::InvalidPack {
        message: err.to_string(),
    }
}

/// Remove what a crash left behind: staging folders, responses and temporaries in
/// `objects/pack` and the folders of objects found in a first pack as it arrived that no
/// answer of this process holds (unless `temporaries` is false: a writer of this process may be using one),
/// the files of a pack whose index is gone (a crash between moving a pack's data and its
/// index into place, or while a pack was removed), half-written temporaries of
/// `packed-refs` or `HEAD`, and what consolidation kept aside of the pack it replaced
/// (`objects/pack/replaced/`) once the consolidated pack has its bitmaps (with
/// `temporaries` only: no bitmap writer is reading it). Call with no ingestion of the
/// mirror under way (the registry holds its refresh lock). Files that vanish meanwhile are
/// no error.
pub fn remove_leftovers(git_dir: &Path, temporaries: bool) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut remove = |path: &Path, dir: bool| -> std::io::Result<()> {
        let result = if dir {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        Ok(())
    };
    let pack_dir = git_dir.join("objects").join("pack");
    let names: Vec<(String, bool)> = match std::fs::read_dir(&pack_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| {
                let dir = e.file_type().is_ok_and(|t| t.is_dir());
                (e.file_name().to_string_lossy().into_owned(), dir)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let indexed: std::collections::HashSet<&str> = names
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".idx"))
        .collect();
    for (name, dir) in &names {
        let orphan = name.starts_with("pack-")
            && !name.ends_with(".idx")
            && name
                .rsplit_once('.')
                .is_some_and(|(stem, _)| !indexed.contains(stem));
        // The objects of a first pack found as it arrived: this process's while held.
        let early =
            name.starts_with(crate::early::PREFIX) && !crate::early::is_held(&pack_dir.join(name));
        if orphan || (temporaries && (name.starts_with("incoming-") || early)) {
            remove(&pack_dir.join(name), *dir)?;
        }
    }
    // What consolidation kept aside of the pack it replaced, once the consolidated pack
    // (marked with its tips) has the bitmaps it was kept for.
    let has = |name: String| names.iter().any(|(n, _)| *n == name);
    if temporaries
        && has("replaced".to_owned())
        && indexed
            .iter()
            .any(|stem| has(format!("{stem}.tips")) && has(format!("{stem}.bitmap")))
    {
        remove(&pack_dir.join("replaced"), true)?;
    }
    if let Ok(entries) = std::fs::read_dir(git_dir) {
        for entry in entries {
            let entry = entry?;
            if gitcache_storage::fs::is_leftover_temp(&entry.file_name().to_string_lossy())
                && entry.file_type()?.is_file()
            {
                remove(&entry.path(), false)?;
            }
        }
    }
    Ok(removed)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 16) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_is_held_back_however_the_bytes_come() {
        let mut rng = gitcache_testkit::repo::Rng::new(16);
        for kind in [HashKind::Sha1, HashKind::Sha256] {
            let keep = kind.len_in_bytes();
            for len in [0, 1, keep - 1, keep, keep + 1, 1000, 70_000] {
                let bytes = rng.bytes(len);
                let split = len.saturating_sub(keep);
                let mut whole = gitcache_pack::Checksum::new(kind);
                whole.update(&bytes[..split]);
                let expected = whole.finish().unwrap();
                // In pieces of random lengths, from none to more than the trailer.
                let mut trailing = Trailing::new(kind);
                let mut at = 0;
                while at < len {
                    let step = rng.below(2 * keep + 2).min(len - at);
                    trailing.update(&bytes[at..at + step]);
                    at += step;
                }
                let (sum, held) = trailing.finish().unwrap();
                assert_eq!(sum, expected, "{kind} {len}");
                assert_eq!(held, &bytes[split..], "{kind} {len}");
            }
        }
    }
}
