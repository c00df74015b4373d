//! Writing a pack: stored entries reused byte for byte wherever git's rules allow.
//!
//! - A whole stored object is copied as it is.
//! - A stored delta whose base is also sent is copied, its base written first so that it can
//!   go out as an ofs-delta (or as a ref-delta when the client did not ask for ofs-delta).
//! - A stored delta whose base the client provably has is sent as a ref-delta in a thin pack.
//! - A stored delta whose base is neither sent nor had gets a new delta against the nearest
//!   object further down its stored chain that is sent (or had, in a thin pack), or failing
//!   that against the best of the few nearest such objects of its stored delta tree (see
//!   [`crate::forest`]), or of the objects sent whole whose path is named alike (see
//!   [`crate::window`]), when that delta is less than half the object's size: such objects
//!   are versions of the same file or directory, and a tree of thousands of entries otherwise
//!   goes whole.
//! - In an incremental fetch answered by a walk, an object stored whole gets a new delta
//!   against an object at its path (see [`crate::select::Selection::path_bases`]) when that
//!   delta is less than half its size: the version sent before it, if that one is stored
//!   whole too, or in a thin pack the client's version, as git's delta search finds such
//!   bases in its window and among its preferred bases; otherwise it is copied as stored.
//!   In a small thin answer from a pack's bitmaps, one stored whole with a client's version
//!   at its path is held out of the runs copied and tried the same way (see
//!   [`PackWriter::hold_for_client`]): consolidation stores the newest version of a file
//!   whole, the client's older one as a delta on it.
//! - In an answer from a pack's bitmaps of a small part of it, an object stored whole gets a
//!   new delta against the next larger object sent whole whose path's name hash is its own
//!   (see [`PackWriter::pair_whole`]), when that delta is less than half its size and the
//!   chain stored below it leaves room: git's delta search finds such pairs among what it does
//!   not send as stored deltas.
//! - The objects such an answer sends from beyond the bitmapped pack (packs fetched since a
//!   consolidation) are paired the same way, whatever the answer's share of the pack, by the
//!   names the walk met them at and in the order they are written, each moved ahead to where
//!   the first delta stored on it would write it (see [`PackWriter::pair_beyond`]); and the
//!   largest of a name sent from the pack is paired with a version of its name from beyond it
//!   stored whole.
//! - Anything else is resolved and compressed again, once, as a whole object.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use gix_hash::ObjectId;
use gix_object::Kind;
use gix_pack::Find as _;
use gix_pack::data::entry::Header;

use crate::Error;
use crate::OidMap;
use crate::bitmap::Bits;
use crate::objects::Objects;
use crate::packs::{RevCache, StoredPack};
use crate::reuse::Copied;

/// How the pack may be written.
#[derive(Debug, Clone)]
pub(crate) struct WriteOptions {
    pub(crate) ofs_delta: bool,
    pub(crate) thin: bool,
    /// zlib level for objects compressed again (0–9).
    pub(crate) compression: u32,
    /// Threads that compress objects again (1: the writing thread only).
    pub(crate) threads: usize,
    /// The longest delta chain written (see [`crate::Options::max_delta_depth`]).
    pub(crate) max_depth: u64,
    /// Objects made again for earlier answers (see [`crate::Options::remade`]).
    pub(crate) remade: Option<std::sync::Arc<crate::Remade>>,
    /// Bytes after which a batch takes no more objects (see
    /// [`crate::Options::lookahead_bytes`]).
    pub(crate) batch_bytes: u64,
}

/// The deepest chain [`WriteOptions::max_depth`] may allow: a written object's depth is kept
/// in the top byte of its offset.
pub(crate) const MAX_DEPTH: usize = 255;
const DEPTH_SHIFT: u32 = 56;
const OFFSET_BITS: u64 = (1 << DEPTH_SHIFT) - 1;

/// Where `oid` was written, if it was.
fn offset_of(written: &OidMap<u64>, oid: &ObjectId) -> Option<u64> {
    written.get(oid).map(|at| at & OFFSET_BITS)
}

/// The delta chain `oid` was written at the end of: as recorded if it was written one by
/// one, as stored if it was copied in a run (0: whole, or neither).
fn depth_of(written: &OidMap<u64>, oid: &ObjectId, in_pack: &Sent<'_>) -> u64 {
    match written.get(oid) {
        Some(at) => at >> DEPTH_SHIFT,
        None => in_pack
            .copied
            .as_ref()
            .and_then(|copied| copied.depth_of(oid))
            .unwrap_or(0),
    }
}

/// Objects planned, and compressed again where needed, ahead of writing: bounds the memory
/// that compressed-ahead objects take, with [`WriteOptions::batch_bytes`].
const BATCH: usize = 512;
/// How far down an object's stored delta chain a base for a new delta is looked for.
const CHAIN_LOOKUP: usize = 16;
/// Objects larger than this (or with a larger base) are not given new deltas: bounds the
/// memory and time of one (the source index takes up to the source's size again).
const MAX_DELTA_OBJECT: u64 = 16 << 20;
/// Objects smaller than this are not given new deltas (a delta of half their size would
/// hardly be one).
const MIN_DELTA_OBJECT: u64 = 64;
/// Bases tried for a new delta from an object's stored delta tree, and how many entries of
/// the tree are looked at to find them (nine in ten of git's own choices on the bench
/// repository lie within 16).
const TREE_CANDIDATES: usize = 4;
const TREE_VISITS: usize = 128;
/// Bases tried from the objects sent whole whose path's name hash is nearest (see
/// [`crate::window`]), for an object whose delta tree offered fewer than
/// [`TREE_CANDIDATES`].
const NAME_CANDIDATES: usize = 2;
/// Bases from the delta tree deeper than this in their stored chain are passed over: a new
/// delta adds one to its base's chain (git's default limit is 50).
const TREE_BASE_DEPTH: usize = 40;
/// An answer of at least one object in this many of a pack's has the pack's delta forest read
/// (once for the repository handle), if it was not already.
const FOREST_SHARE: usize = 16;
/// Objects stored whole are paired with larger ones of their name (see
/// [`PackWriter::pair_whole`]) in answers from a pack's bitmaps of at most this share of the
/// pack.
const PAIRED_SHARE: usize = 4;
/// The most objects paired in one answer: each is held out of the copied runs with what is
/// stored below it, to be written one by one.
const PAIRED_MOST: usize = 256;
/// Sent positions looked at below an object to learn its longest chain (itself included): one
/// with more is not paired.
const HEIGHT_VISITS: usize = 256;
/// An answer to pair of at least one object in this many of the pack's reads the pack's delta
/// forest for it, if it was not read already: every entry header, through a buffer (about 12 ms
/// for a pack of 31 MB and 134,000 entries, growing with the pack; kept with the handle, as
/// for new bases).
const PAIRED_FOREST_SHARE: usize = 64;
/// Of the objects an answer from a pack's bitmaps sends from beyond that pack, at most this
/// many whose name another one shares are looked up to be paired (see
/// [`PackWriter::pair_beyond`]).
const BEYOND_LOOKED_AT: usize = 1 << 16;
/// Of those, at most this many of one name (the root trees share theirs).
const BEYOND_GROUP: usize = 4096;
/// Objects from beyond the bitmapped pack of one name looked at as the base of the largest of
/// that name in the pack (a refresh's pack stores one version in 50 or so whole).
const BEYOND_BASES: usize = 256;
/// The same, of all names in one answer.
const BEYOND_BASES_ALL: usize = 4096;
/// Positions of delta forests those paired from beyond the pack may look at, all together
/// (past it, no more are paired; one object's look is bounded by [`HEIGHT_VISITS`]).
const BEYOND_VISITS: usize = 1 << 22;
/// Objects larger than this get one new delta tried, not one per candidate base.
const LARGE_DELTA_OBJECT: u64 = 1 << 20;
/// Bytes of objects and bases one pack's new deltas may look at (each try counts both): the
/// CPU bound of the search, about a second of it here.
const NEW_DELTA_BUDGET: i64 = 512 << 20;

/// The same for deltas tried for objects stored whole against objects at their paths (see
/// [`crate::select::Selection::path_bases`]): a budget of their own, so that these tries,
/// which only make a pack smaller, never leave objects that must be compressed again
/// without theirs.
const PATH_DELTA_BUDGET: i64 = 256 << 20;

/// What new deltas may look at in one pack: for objects that cannot go as stored, and for
/// objects stored whole tried against objects at their paths; and how the latter went.
struct Budgets {
    needed: AtomicI64,
    by_path: AtomicI64,
    path_tries: PathTries,
}

/// Tries by path (objects stored whole, against objects at their paths) whose outcome is
/// known, and how many gave a delta, for trees and for blobs. Where files are rewritten
/// whole at every change (generated or minified files, data) none pays, and each try still
/// costs inflating the object and its base and reading both through: once the answer's first
/// [`PATH_TRIES_SAMPLE`] tries of a kind are known and fewer than one in
/// [`PATH_TRIES_SHARE`] paid, the rest of that kind is sent as stored, untried. What a batch
/// tries is decided when the batches before it are done, so that the same answer is the same
/// pack (objects taken from the store of objects made again count as tried).
#[derive(Default)]
struct PathTries {
    tried: [AtomicU32; 2],
    paid: [AtomicU32; 2],
}

/// Tries by path of one kind known before the rest of that kind may be left untried.
const PATH_TRIES_SAMPLE: u32 = 32;
/// Fewer than one try in this many paying leaves the rest of their kind untried.
const PATH_TRIES_SHARE: u32 = 16;

impl PathTries {
    fn slot(kind: Kind) -> Option<usize> {
        match kind {
            Kind::Tree => Some(0),
            Kind::Blob => Some(1),
            Kind::Commit | Kind::Tag => None,
        }
    }

    fn record(&self, kind: Kind, paid: bool) {
        if let Some(k) = Self::slot(kind) {
            self.tried[k].fetch_add(1, Ordering::Relaxed);
            if paid {
                self.paid[k].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether tries for objects of `kind` are left out from now on.
    fn hopeless(&self, kind: Kind) -> bool {
        Self::slot(kind).is_some_and(|k| {
            let tried = self.tried[k].load(Ordering::Relaxed);
            let paid = self.paid[k].load(Ordering::Relaxed);
            tried >= PATH_TRIES_SAMPLE && paid.saturating_mul(PATH_TRIES_SHARE) < tried
        })
    }
}

impl Budgets {
    fn of(&self, redo: &Redo) -> &AtomicI64 {
        if redo.stored_whole {
            &self.by_path
        } else {
            &self.needed
        }
    }
}

/// Entries sent as they are stored, larger than this, are not held in a batch but read
/// when written: holding them saves a second lookup, worth it for small ones only.
const HELD_ENTRY_BYTES: u64 = 64 << 10;

/// What the writer did, for the `Total` progress line and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Objects in the pack.
    pub objects: u32,
    /// Of those, written as deltas.
    pub deltas: u32,
    /// Entries copied from a stored pack (whole or delta).
    pub reused: u32,
    /// Of those, deltas.
    pub reused_deltas: u32,
    /// Of those, copied with their neighbours in runs of one stored pack, not looked up one
    /// by one (git's "pack-reused").
    pub pack_reused: u32,
    /// Of those, deltas.
    pub pack_reused_deltas: u32,
    /// Deltas made for this pack: for objects whose stored base is not sent, and in an
    /// incremental fetch for objects stored whole, against objects at their paths.
    pub new_deltas: u32,
    /// Whether a stored pack was sent as it is.
    pub whole_pack: bool,
    /// Bytes of pack data written.
    pub bytes: u64,
    /// The most bytes of stored entries and objects to compress again planned ahead of
    /// writing at once (at most twice [`crate::Options::lookahead_bytes`], plus the last
    /// object of each of the two batches).
    pub lookahead_bytes: u64,
    /// Bytes of stored entries read out of packs while writing object by object (a large
    /// entry sent as stored is read once, when written).
    pub stored_read_bytes: u64,
    /// Objects stored whole sent as stored without trying the delta against the object at
    /// their path that they were offered: tries of their kind had kept failing.
    pub untried: u32,
    /// New deltas made for objects written before they were made, and so lost. None should
    /// be: an object that the writing of the batch before its own will write first, as the
    /// base of one of that batch's deltas, is left out of its batch's making (see
    /// [`PackStats::pulled_forward`]). Counted to show it.
    pub lost_deltas: u32,
    /// Objects that were to be tried as a delta (made again, or tried against the object at
    /// their path) but are written before their batch, as the base of an object written
    /// earlier: sent without the try (whole, or as stored). Found when their batch is started
    /// (while the batch before it is written, or after it, when the two batches held are over
    /// their bound in bytes), from the deltas the batch before writes.
    pub pulled_forward: u32,
}

/// A stored entry and what it is.
enum Stored {
    /// Not in a pack, or unreadable as an entry: write from the full object.
    Full,
    /// A whole object's entry, header included.
    Base(EntryBytes),
    /// A delta entry: its base, its decompressed delta size, and the compressed delta bytes
    /// (after `header_len`).
    Delta {
        base: ObjectId,
        size: u64,
        entry: EntryBytes,
        header_len: usize,
    },
}

/// A stored entry's bytes: copied out of the pack, or for a large entry (a MiB or more) the
/// pack's map itself, whose pages are let go of as it is written and when it is dropped.
/// Copying large files out of the map cost an allocation for each (glibc may map one of that
/// size anew, its pages faulted in and zeroed) and a copy: a tenth of a depth-1 answer at 3
/// GB, 2.5 GB of it stored entries.
enum EntryBytes {
    Copied(Vec<u8>),
    Mapped {
        map: crate::mapped::Mapped,
        range: std::ops::Range<usize>,
    },
}

impl std::ops::Deref for EntryBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            EntryBytes::Copied(bytes) => bytes,
            EntryBytes::Mapped { map, range } => &map[range.clone()],
        }
    }
}

impl EntryBytes {
    /// Write the bytes from `from` on: a mapped entry a MiB at a time, each piece's pages let
    /// go of once written, so that a file of gigabytes is not resident whole while it goes.
    fn write_from<W: Write>(&self, from: usize, sink: &mut Sink<W>) -> std::io::Result<()> {
        let EntryBytes::Mapped { map, range } = self else {
            return sink.write_all(self.get(from..).unwrap_or_default());
        };
        let piece = crate::mapped::Forward::STRETCH as usize;
        let mut at = range.start.saturating_add(from).min(range.end);
        while at < range.end {
            let end = at.saturating_add(piece).min(range.end);
            sink.write_all(&map[at..end])?;
            let _ = map.release_range(at as u64..end as u64);
            at = end;
        }
        Ok(())
    }
}

impl Drop for EntryBytes {
    fn drop(&mut self) {
        if let EntryBytes::Mapped { map, range } = self {
            // Its pages alone go: the rest of the map, which other answers may be reading,
            // stays. Failing to let go only costs memory.
            let _ = map.release_range(range.start as u64..range.end as u64);
        }
    }
}

/// Bytes of stored entries an answer reads out of a pack between two lettings go of the pack's
/// pages ([`crate::packs::StoredPack::let_go`]): the pages of what it copied do not stay with
/// the process for the handle's life. A depth-1 answer at 50 MB copies 21 MB of stored entries:
/// they were half its peak, where git's was lower. Readers of the same pack map the pages
/// again from the page cache.
pub(crate) const LET_GO_EVERY: u64 = 8 << 20;

/// How an object is stored, or for a large entry only what planning needs.
enum Peek {
    Stored(Stored),
    /// An entry of `len` bytes, a delta against `base` if it is one, else a whole object of
    /// the kind and size in `whole`.
    Large {
        len: u64,
        base: Option<ObjectId>,
        whole: Option<(Kind, u64)>,
    },
}

/// The objects of the pack: those written object by object (with their place in the order),
/// and those copied in runs (written before all of them).
struct Sent<'a> {
    listed: OidMap<usize>,
    copied: Option<Copied<'a>>,
    /// The pack (of the listed packs) the copied entries are from, and the positions there
    /// of the first objects of the order: those left by the copy (their ids were not looked
    /// up to find them).
    left: Option<(usize, Vec<usize>)>,
}

impl Sent<'_> {
    /// The pack and position of the object at `place` in the order, if known without a
    /// lookup.
    fn left_at(&self, place: usize) -> Option<(usize, usize)> {
        let (k, left) = self.left.as_ref()?;
        Some((*k, *left.get(place)?))
    }

    fn contains(&self, oid: &ObjectId) -> bool {
        self.listed.contains_key(oid) || self.copied.as_ref().is_some_and(|c| c.contains(oid))
    }

    /// How many deltas lie below `oid` in the pack written, if it is sent: as written, 0 while
    /// it waits to be written, or as copied. One lookup where [`Sent::contains`] and then
    /// [`depth_of`] would look a copied object up twice.
    fn sent_depth(&self, written: &OidMap<u64>, oid: &ObjectId) -> Option<u64> {
        if let Some(at) = written.get(oid) {
            return Some(at >> DEPTH_SHIFT);
        }
        if self.listed.contains_key(oid) {
            return Some(0);
        }
        self.copied.as_ref()?.depth_of(oid)
    }
}

/// The kind (1 tree, 2 blob) of the entry of `data` at `offset`, if it is a tree or blob
/// stored whole of a size a delta is made for: one to pair.
pub(crate) fn whole_to_pair(data: &crate::packs::PackData, offset: u64) -> Option<u8> {
    let entry = data.entry(offset).ok()?;
    let kind = match entry.header {
        Header::Tree => 1,
        Header::Blob => 2,
        _ => return None,
    };
    (MIN_DELTA_OBJECT..=MAX_DELTA_OBJECT)
        .contains(&entry.decompressed_size)
        .then_some(kind)
}

/// What [`PackWriter::beyond_base`] has looked at in one answer: objects, and packs that
/// could not be mapped (not tried again).
struct BeyondLooks {
    looked: usize,
    unreadable: Vec<bool>,
}

/// [`SentIn::at_place`] of an object not in the pack.
const NOT_IN: u32 = u32::MAX;
/// A pack's [`SentIn::at_place`] is kept when it holds at least one in this many of the
/// objects sent one by one.
const AT_PLACE_SHARE: usize = 8;

/// What an answer sends of one pack, by position: made when an object first looks for a new
/// delta base there (a visit of its delta tree looks at up to 128 entries, each looked up by
/// id before: a tenth of the time of an answer without `thin-pack`).
struct SentIn {
    /// The positions sent.
    bits: crate::bitmap::Bits,
    /// Where each one written object by object comes in the order (the others are copied).
    place: HashMap<u32, usize>,
    /// The other way: the position of the object at each place in the order, [`NOT_IN`] for
    /// one not in this pack (what is written later is then not looked up by id again). Empty
    /// for a pack holding few of them.
    at_place: Vec<u32>,
    /// The objects sent whole by name, when first needed (`None` inside: the pack has no name
    /// hashes, or nothing is sent whole).
    named: Option<Option<NamedWhole>>,
    /// The positions copied in runs, when this is the pack they were copied from.
    copied: Option<crate::bitmap::Bits>,
}

/// The objects an answer sends whole from one pack, by kind and name hash.
struct NamedWhole {
    window: crate::window::NameWindow,
    names: crate::bitmap::Names,
    bitmaps: std::sync::Arc<crate::bitmap::Loaded>,
    rev: std::sync::Arc<crate::packs::RevIndex>,
}

impl NamedWhole {
    /// The window's key of position `p`: a tree or blob with a name hash.
    fn key_of(&self, p: usize) -> Option<u64> {
        name_key(&self.bitmaps, &self.names, &self.rev, p)
    }
}

/// The kind and name hash of the tree or blob at position `p` of a pack with `bitmaps` and their
/// `names` (by index position), as [`crate::window::key`] orders them.
fn name_key(
    bitmaps: &crate::bitmap::Loaded,
    names: &crate::bitmap::Names,
    rev: &crate::packs::RevIndex,
    p: usize,
) -> Option<u64> {
    let types = &bitmaps.bitmaps;
    let kind = match () {
        _ if types.blobs.get(p) => 2,
        _ if types.trees.get(p) => 1,
        _ => return None,
    };
    let name = names.get(rev.at(p))?;
    Some(crate::window::key(kind, name))
}

impl SentIn {
    /// `k`: which of the listed packs `pack` is.
    fn new(
        k: usize,
        pack: &StoredPack,
        rev: &crate::packs::RevIndex,
        in_pack: &Sent<'_>,
    ) -> SentIn {
        let mut bits = crate::bitmap::Bits::with_len(rev.len());
        let mut place = HashMap::new();
        let mut at_place = vec![NOT_IN; in_pack.listed.len()];
        // The objects the copy left are known by position; the rest are looked up.
        let known = match &in_pack.left {
            Some((from, left)) if *from == k => left.as_slice(),
            _ => &[],
        };
        for (at, &q) in known.iter().enumerate() {
            if q < rev.len() {
                bits.set(q);
                place.insert(q as u32, at);
            }
        }
        // Looked up a few thousand at a time (see `lookup_many`), not all gathered first.
        let mut unknown = in_pack
            .listed
            .iter()
            .filter(|&(_, &at)| at >= known.len())
            .peekable();
        let (mut ids, mut ats) = (Vec::new(), Vec::new());
        while unknown.peek().is_some() {
            ids.clear();
            ats.clear();
            for (id, &at) in unknown.by_ref().take(4096) {
                ids.push(id.as_ref());
                ats.push(at);
            }
            for (&at, i) in ats.iter().zip(crate::packs::lookup_many(&pack.index, &ids)) {
                if let Some(q) = i
                    .and_then(|i| rev.pack_position(&pack.index, i))
                    .and_then(|q| u32::try_from(q).ok())
                {
                    bits.set(q as usize);
                    place.insert(q, at);
                    if let Some(slot) = at_place.get_mut(at) {
                        *slot = q;
                    }
                }
            }
        }
        // Kept for a pack holding a fair share of what is sent: one holding a few objects
        // (of thousands of packs) would otherwise cost four bytes for every object sent.
        if place.len() < in_pack.listed.len() / AT_PLACE_SHARE {
            at_place = Vec::new();
        }
        let copied = in_pack
            .copied
            .as_ref()
            .and_then(|c| c.positions_in(pack))
            .map(|positions| {
                let mut copied = crate::bitmap::Bits::with_len(rev.len());
                for q in positions {
                    bits.set(q);
                    copied.set(q);
                }
                copied
            });
        SentIn {
            bits,
            place,
            at_place,
            named: None,
            copied,
        }
    }

    /// The position of the object at `place` in the order, if it is in this pack.
    fn position_at(&self, place: usize) -> Option<usize> {
        let q = *self.at_place.get(place)?;
        (q != NOT_IN).then_some(q as usize)
    }

    /// Whether position `q` is sent and written before the object at `place` in the order.
    fn written_before(&self, q: usize, place: usize) -> bool {
        match self.place.get(&(q as u32)) {
            Some(&at) => at < place,
            None => self.bits.get(q),
        }
    }

    /// The objects sent whole by name, made when first asked for. Which are stored whole is
    /// read from the forest if there is one, else from each sent entry's first byte (an answer
    /// of a small part of a large pack reads no forest, and a server may never read one for a
    /// pack it sends whole to clones).
    fn named_whole(
        &mut self,
        pack: &StoredPack,
        rev: &std::sync::Arc<crate::packs::RevIndex>,
        forest: Option<&crate::forest::DeltaForest>,
        cache: &crate::bitmap::BitmapCache,
        revs: &RevCache,
        hash: gix_hash::Kind,
    ) -> Option<&NamedWhole> {
        if self.named.is_none() {
            let bitmaps = cache.get(pack, revs, hash);
            let names = match &bitmaps {
                // Names only guide the choice of bases: one that cannot be read is none.
                Some(bitmaps) => bitmaps.names_for(self.bits.count()).ok().flatten(),
                None => None,
            };
            let made = bitmaps.zip(names).and_then(|(bitmaps, names)| {
                let mut named = NamedWhole {
                    window: crate::window::NameWindow::default(),
                    names,
                    bitmaps,
                    rev: std::sync::Arc::clone(rev),
                };
                // The pack's own mapping, shared by every answer (pages it faulted in stay).
                let data = match forest {
                    Some(_) => None,
                    None => Some(pack.data(hash).ok()?),
                };
                let whole = self.bits.ones().filter(|&q| match (forest, &data) {
                    (Some(forest), _) => forest.base(q).is_none(),
                    (None, Some(data)) => crate::packs::stored_whole_at(data, rev.offset(pack, q)),
                    (None, None) => false,
                });
                named.window = crate::window::NameWindow::new(whole, |q| named.key_of(q));
                (named.window.len() > 0).then_some(named)
            });
            self.named = Some(made);
        }
        self.named.as_ref().and_then(Option::as_ref)
    }
}

/// What is stored below the positions an answer sends from one pack: the pack's delta forest,
/// or for a small answer without one, what its own entries are stored on ([`SentBelow`]: the
/// chains of sent deltas, which the writer writes one link longer when their base is held
/// out of the runs; a delta whose base is not sent gets a new base whose depth the writer
/// checks then).
enum Below<'f> {
    Forest(&'f crate::forest::DeltaForest),
    Sent(&'f SentBelow),
}

impl Below<'_> {
    /// The longest chain stored below `q` (see [`crate::forest::DeltaForest::height`]).
    fn height(&self, q: usize, visits: usize) -> Option<usize> {
        match self {
            Below::Forest(forest) => forest.height(q, visits, |_| true),
            Below::Sent(sent) => sent.height(q, visits),
        }
    }

    /// Each position stored below `q`, at most `visits` of them.
    fn under(&self, q: usize, visits: usize, each: impl FnMut(usize)) {
        match self {
            Below::Forest(forest) => {
                let each = std::cell::RefCell::new(each);
                forest.height(q, visits, |c| {
                    (each.borrow_mut())(c);
                    true
                });
            }
            Below::Sent(sent) => sent.under(q, visits, each),
        }
    }
}

/// Of the positions an answer sends from one pack, the deltas stored on each one that are
/// sent too, read from every sent entry's header (for an answer small enough that no delta
/// forest of the whole pack is read for it); a sent delta whose stored base is not sent
/// counts as stored on the first sent one down its chain, as it is made again against that.
struct SentBelow {
    on: HashMap<u32, Vec<u32>>,
}

impl SentBelow {
    fn new(
        pack: &StoredPack,
        data: &crate::packs::PackData,
        packed: &crate::reuse::Packed,
    ) -> SentBelow {
        let rev = &*packed.rev;
        // The position the entry at `p` is stored on, if any.
        let base_of = |p: usize| {
            let offset = rev.offset(pack, p);
            rev.base_position(pack, p, offset, data.entry(offset).ok()?.header)
        };
        let mut on: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in packed.positions() {
            // A delta whose base is not sent is made again against the first one sent down
            // its stored chain (as the writer looks for it): counted below that one.
            let mut base = base_of(p);
            for _ in 0..CHAIN_LOOKUP {
                match base {
                    Some(b) if b != p && !packed.bits.get(b) => base = base_of(b),
                    _ => break,
                }
            }
            if let Some(b) = base.filter(|&b| b != p && packed.bits.get(b)) {
                on.entry(b as u32).or_default().push(p as u32);
            }
        }
        SentBelow { on }
    }

    /// Each sent delta stored below position `q`, at most `visits` of them.
    fn under(&self, q: usize, visits: usize, mut each: impl FnMut(usize)) {
        let mut stack = vec![q as u32];
        let mut visited = 0;
        while let Some(at) = stack.pop() {
            for &c in self.on.get(&at).map_or(&[][..], Vec::as_slice) {
                visited += 1;
                if visited > visits {
                    return;
                }
                each(c as usize);
                stack.push(c);
            }
        }
    }

    /// The longest chain of sent deltas stored below position `q` (0: none), or `None` past
    /// `visits` positions looked at (a bound on the work, and on a cycle of bases by id in a
    /// damaged pack).
    fn height(&self, q: usize, visits: usize) -> Option<usize> {
        let mut stack = vec![(q as u32, 0usize)];
        let (mut height, mut visited) = (0, 1);
        while let Some((at, depth)) = stack.pop() {
            height = height.max(depth);
            for &c in self.on.get(&at).map_or(&[][..], Vec::as_slice) {
                visited += 1;
                if visited > visits {
                    return None;
                }
                stack.push((c, depth + 1));
            }
        }
        Some(height)
    }
}

/// An object that cannot be copied as stored, or one stored whole that may go as a delta
/// against an object at its path, and bases to try a new delta against.
struct Redo {
    oid: ObjectId,
    against: Vec<ObjectId>,
    /// Stored whole: without a delta that pays, it goes as stored.
    stored_whole: bool,
    /// The kind of an object stored whole, when planning read it (not for a large entry).
    kind: Option<Kind>,
    /// Bases of `against` whose content selection read (the client's trees): not read again.
    read: Vec<(ObjectId, std::sync::Arc<[u8]>)>,
}

/// An object made ready ahead of writing: a whole object's entry, header included, or a new
/// delta against `base` (the delta's size and its zlib bytes; the entry's header depends on
/// where the base is written).
use crate::remade::Made as Ready;

/// The trailing checksum of a file: one gitcache writes (a pack it sends or stores, an index),
/// or a pack it receives.
///
/// For SHA-1 it is computed without collision detection, as git does for the files it writes
/// since 2.48. The checksum guards against damage, never stands for the content: objects'
/// ids, which a collision could forge, are hashed with the detection as before, and a file
/// named by its checksum replaces nothing of that name with other bytes. The detection took
/// a sixth of the time of answering a `tree:0` clone, and a quarter of reading a received pack.
///
/// ```
/// let mut sum = gitcache_pack::Checksum::new(gix_hash::Kind::Sha1);
/// sum.update(b"abc");
/// let id = sum.finish().unwrap();
/// assert_eq!(id.to_string(), "a9993e364706816aba3e25717850c26c9cd0d89d");
/// ```
#[derive(Clone)]
pub struct Checksum(Hasher);

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Hasher::Sha1(_) => "sha1",
            Hasher::Other(_) => "other",
        };
        f.debug_tuple("Checksum").field(&kind).finish()
    }
}

#[derive(Clone)]
enum Hasher {
    /// SHA-1, without collision detection.
    Sha1(sha1::Sha1),
    /// Any other hash, as gitoxide computes it.
    Other(gix_hash::Hasher),
}

impl Checksum {
    /// A checksum of nothing yet, in `hash`.
    pub fn new(hash: gix_hash::Kind) -> Self {
        Checksum(match hash {
            gix_hash::Kind::Sha1 => Hasher::Sha1(sha1::Digest::new()),
            other => Hasher::Other(gix_hash::hasher(other)),
        })
    }

    /// Hash `bytes` next.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            Hasher::Sha1(hasher) => sha1::Digest::update(hasher, bytes),
            Hasher::Other(hasher) => hasher.update(bytes),
        }
    }

    /// The checksum of everything hashed.
    pub fn finish(self) -> Result<ObjectId, Error> {
        match self.0 {
            Hasher::Sha1(hasher) => {
                let digest: [u8; 20] = sha1::Digest::finalize(hasher).into();
                Ok(ObjectId::Sha1(digest))
            }
            Hasher::Other(hasher) => hasher.try_finalize().map_err(Error::odb),
        }
    }
}

/// Hashes and counts everything written.
pub(crate) struct Sink<W: Write> {
    out: W,
    hasher: Checksum,
    /// Bytes written so far.
    pub(crate) offset: u64,
}

impl<W: Write> Sink<W> {
    pub(crate) fn new(out: W, hash: gix_hash::Kind) -> Self {
        Sink {
            out,
            hasher: Checksum::new(hash),
            offset: 0,
        }
    }

    /// The writer, and the hash of everything written to it through the sink.
    pub(crate) fn finish(self) -> Result<(W, ObjectId), Error> {
        let digest = self.hasher.finish()?;
        Ok((self.out, digest))
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub(crate) struct PackWriter<'a> {
    objects: &'a mut Objects,
    /// Makes object handles for compression threads.
    spawn_objects: &'a (dyn Fn() -> Objects + Sync),
    opts: WriteOptions,
    /// The stored packs, to find the base of an offset delta.
    packs: &'a [StoredPack],
    rev: &'a RevCache,
    /// Which of `packs` each odb pack id is.
    pack_of_id: HashMap<u32, Option<usize>>,
    /// Each of `packs`' file, mapped, once asked for.
    data: Vec<Option<std::sync::Arc<crate::packs::PackData>>>,
    /// Each of `packs`' reverse index, once asked for (the cache is behind a lock).
    revs: Vec<Option<std::sync::Arc<crate::packs::RevIndex>>>,
    buf: Vec<u8>,
    /// Stored delta bases learnt while looking down chains (`None`: stored whole).
    bases: OidMap<Option<ObjectId>>,
    /// The writing thread's compressor, made when first needed and kept for the whole pack
    /// (as the lanes' are): each holds a few hundred KiB, and making them again for every
    /// batch churned the allocator (memory kept by it grew with the number of packs written
    /// at once).
    zlib: Option<flate2::Compress>,
    /// Bytes of stored entries read out of packs.
    read_bytes: u64,
    /// When to let go of the pages of the packs read (see [`LET_GO_EVERY`]).
    let_go: crate::mapped::LetGo,
    /// The bitmaps of the packs, for their name hashes.
    bitmaps: Option<&'a crate::bitmap::BitmapCache>,
    /// What the answer sends of each pack, by position, when first needed.
    sent_in: HashMap<usize, SentIn>,
    /// Objects offered as bases by path (as [`crate::select::PathBase::sent`]), and of those
    /// the ones planned so far that are stored whole: usable by those after them.
    offered: crate::OidSet,
    planned_whole: crate::OidSet,
    /// Tries by path planned, by [`PathTries::slot`], and objects stored whole left untried.
    path_planned: [u32; 2],
    untried: u32,
    /// Objects stored whole of an answer from a pack's bitmaps, each with a larger one of its
    /// name sent before it to try as its base (see [`PackWriter::pair_whole`]).
    paired: OidMap<ObjectId>,
    /// Objects of an answer from a pack's bitmaps, each with the client's object of its kind
    /// and name to try as its base when it is made again: stored whole in the pack (see
    /// [`PackWriter::hold_for_client`]), or from beyond it however stored.
    by_client: OidMap<ObjectId>,
    /// For an answer from a pack's bitmaps, the objects stored whole to try against the
    /// client's (see [`PackWriter::hold_for_client`]): no other object stored whole is, and
    /// no other object takes one of them as a base that goes as stored. `None` for an
    /// answer by a walk.
    client_held: Option<crate::OidSet>,
    /// The content of the client's trees selection read (see
    /// [`crate::select::Selection::client_read`]).
    client_read: OidMap<std::sync::Arc<[u8]>>,
    /// What the sent entries of the bitmapped pack are stored on, when read for the answer
    /// (see [`SentBelow`]): once for `pair_whole` and `hold_for_client`.
    sent_below: Option<SentBelow>,
    /// What is stored below the objects paired from beyond the bitmapped pack (see
    /// [`PackWriter::pair_beyond`]).
    below_paired: crate::OidSet,
    /// Objects from beyond the bitmapped pack that an object of the pack is paired with: given
    /// no base of their own (the delta on one may write it first, ahead of its place).
    pinned: crate::OidSet,
}

impl<'a> PackWriter<'a> {
    pub(crate) fn new(
        objects: &'a mut Objects,
        spawn_objects: &'a (dyn Fn() -> Objects + Sync),
        opts: WriteOptions,
        packs: &'a [StoredPack],
        rev: &'a RevCache,
        bitmaps: Option<&'a crate::bitmap::BitmapCache>,
    ) -> Self {
        PackWriter {
            bitmaps,
            sent_in: HashMap::new(),
            offered: crate::OidSet::default(),
            planned_whole: crate::OidSet::default(),
            path_planned: [0; 2],
            untried: 0,
            paired: OidMap::default(),
            by_client: OidMap::default(),
            client_held: None,
            client_read: OidMap::default(),
            sent_below: None,
            below_paired: crate::OidSet::default(),
            pinned: crate::OidSet::default(),
            objects,
            spawn_objects,
            opts,
            packs,
            rev,
            pack_of_id: HashMap::new(),
            data: Vec::new(),
            revs: Vec::new(),
            buf: Vec::new(),
            bases: OidMap::default(),
            zlib: None,
            read_bytes: 0,
            let_go: crate::mapped::LetGo::every(LET_GO_EVERY),
        }
    }

    /// Write a complete pack of `packed` and `order` (each object once) into `out`: the
    /// entries of `packed` that can go as stored are copied first, in runs (when the client
    /// takes offset deltas), then everything else object by object.
    pub(crate) fn write<W: Write>(
        &mut self,
        order: &[ObjectId],
        selection: &crate::select::Selection,
        out: W,
    ) -> Result<PackStats, Error> {
        let (packed, client_has) = (selection.packed.as_ref(), &selection.client_has);
        let path_bases = &selection.path_bases;
        self.offered = path_bases.values().filter_map(|b| b.sent).collect();
        self.client_read.clone_from(&selection.client_read);
        let total = order.len() + packed.map_or(0, |p| p.count);
        let count = u32::try_from(total).map_err(|_| Error::Odb {
            message: "more than 2^32 objects".into(),
        })?;
        let mut sink = Sink::new(out, self.objects.hash());
        sink.write_all(b"PACK")?;
        sink.write_all(&2u32.to_be_bytes())?;
        sink.write_all(&count.to_be_bytes())?;
        let mut stats = PackStats {
            objects: count,
            ..PackStats::default()
        };
        let packs = self.packs;
        let (copied, mut listed, left) = match packed {
            Some(packed) => {
                let pack = packs.get(packed.pack).ok_or_else(|| Error::Odb {
                    message: "selected from a pack no longer listed".into(),
                })?;
                let beyond = (&selection.others[..], &selection.others_names[..]);
                let held = self.pair_whole(pack, packed, beyond);
                let held = self.hold_for_client(pack, packed, path_bases, held, beyond);
                let (copied, left) = if self.opts.ofs_delta {
                    let hash = self.objects.hash();
                    let (copied, left) = crate::reuse::copy_runs(
                        &mut sink,
                        pack,
                        packed,
                        held.as_ref(),
                        hash,
                        &mut stats,
                    )?;
                    (Some(copied), left)
                } else {
                    (None, packed.positions().collect())
                };
                let oids = left
                    .iter()
                    .map(|&p| pack.index.oid_at_index(packed.rev.at(p)).to_owned())
                    .collect();
                (copied, oids, Some((packed.pack, left)))
            }
            None => (None, Vec::new(), None),
        };
        let order: std::borrow::Cow<'_, [ObjectId]> = if listed.is_empty() {
            order.into()
        } else {
            listed.extend_from_slice(order);
            listed.into()
        };
        let order = self.pair_beyond(
            order,
            &selection.others,
            &selection.others_names,
            packed.map(|p| p.pack),
        );
        let in_pack = Sent {
            listed: order
                .iter()
                .enumerate()
                .map(|(at, oid)| (*oid, at))
                .collect(),
            copied,
            left,
        };
        let mut written: OidMap<u64> =
            OidMap::with_capacity_and_hasher(order.len(), Default::default());
        let mut chain: Vec<(ObjectId, Stored)> = Vec::new();
        let mut planned: OidMap<Stored> = OidMap::default();
        let mut ready: OidMap<Ready> = OidMap::default();
        let budget = Budgets {
            needed: AtomicI64::new(NEW_DELTA_BUDGET),
            by_path: AtomicI64::new(PATH_DELTA_BUDGET),
            path_tries: PathTries::default(),
        };
        // Compression lanes beside this thread, made when first needed (with one thread, the
        // writing thread compresses itself, between planning and writing).
        let background = self.opts.threads > 1;
        let mut lanes: Vec<LaneState> = Vec::new();
        // Set when writing fails: lanes stop taking objects.
        let abandon = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| -> Result<(), Error> {
            // Planned up to `planned_to`; the batch written now ends at `batch_end`. The batch
            // after it is planned, and its objects compressed again on the lanes, while this
            // one is written (so that two batches are held at most).
            let (mut planned_to, mut batch_end) = (0, 0);
            let mut in_flight: Vec<Rebuilding<'_>> = Vec::new();
            // The next batch's objects to make, when they were not started early.
            let mut deferred: Option<Vec<Redo>> = None;
            let mut held_ahead = 0u64;
            let mut run = || -> Result<(), Error> {
                for (i, oid) in order.iter().enumerate() {
                    if i == batch_end {
                        if i == planned_to {
                            let (end, redo, bytes) = self.plan_batch(
                                &order[..],
                                i,
                                &in_pack,
                                (client_has, path_bases),
                                &written,
                                &mut planned,
                            )?;
                            planned_to = end;
                            held_ahead = bytes;
                            deferred = Some(redo);
                        }
                        if let Some(mut redo) = deferred.take() {
                            // Some may have gone early, as bases of the batch before.
                            let mut pulled = 0;
                            redo.retain(|r| {
                                let left = !written.contains_key(&r.oid);
                                let hopeless = r.stored_whole
                                    && r.kind.is_some_and(|k| budget.path_tries.hopeless(k));
                                let tried = !r.against.is_empty() && !hopeless;
                                pulled += u32::from(!left && tried);
                                left
                            });
                            stats.pulled_forward += pulled;
                            in_flight = self.start_rebuild(
                                scope, &mut lanes, background, redo, &budget, &abandon,
                            )?;
                        }
                        batch_end = planned_to;
                        let (following, bytes) = if planned_to < order.len() {
                            let (end, redo, bytes) = self.plan_batch(
                                &order[..],
                                planned_to,
                                &in_pack,
                                (client_has, path_bases),
                                &written,
                                &mut planned,
                            )?;
                            planned_to = end;
                            (redo, bytes)
                        } else {
                            (Vec::new(), 0)
                        };
                        stats.lookahead_bytes = stats.lookahead_bytes.max(held_ahead + bytes);
                        let made = self.join_rebuild(
                            std::mem::take(&mut in_flight),
                            &mut lanes,
                            &budget,
                            &abandon,
                        )?;
                        for (id, made) in made {
                            // Written early, as the base of a delta, while it was being made.
                            if !written.contains_key(&id) {
                                ready.insert(id, made);
                            } else if matches!(made, Ready::Delta { .. }) {
                                stats.lost_deltas += 1;
                            }
                        }
                        // Those that writing this batch will write first, as bases, are not
                        // made: a lane could finish one before it is written (its delta lost)
                        // or not, as the lanes' timing goes.
                        let mut following = following;
                        let pulled = self.pulled_by(
                            &order[i..batch_end],
                            &following,
                            (&ready, &mut planned),
                            &written,
                            &in_pack,
                        )?;
                        if !pulled.is_empty() {
                            following.retain(|r| {
                                let left = !pulled.contains(&r.oid);
                                let hopeless = r.stored_whole
                                    && r.kind.is_some_and(|k| budget.path_tries.hopeless(k));
                                let tried = !r.against.is_empty() && !hopeless;
                                stats.pulled_forward += u32::from(!left && tried);
                                left
                            });
                        }
                        // The next batch's objects are made while this one is written, unless the
                        // two batches are already over their bound (a batch holds at least one
                        // object however large: two large ones made at once would double it).
                        if held_ahead.saturating_add(bytes)
                            > self.opts.batch_bytes.saturating_mul(2)
                        {
                            deferred = Some(following);
                        } else {
                            in_flight = self.start_rebuild(
                                scope, &mut lanes, background, following, &budget, &abandon,
                            )?;
                        }
                        held_ahead = bytes;
                    }
                    if written.contains_key(oid) {
                        continue;
                    }
                    // Collect the chain of stored bases that are sent but not yet written.
                    let mut current = *oid;
                    loop {
                        let stored = match (planned.remove(&current), ready.get(&current)) {
                            (Some(stored), _) => stored,
                            // Made again: what is stored is not read (a large entry was not
                            // held), the object is read again if its delta cannot be written.
                            (None, Some(Ready::Delta { .. } | Ready::Whole(_))) => Stored::Full,
                            (None, _) => self.stored(&current)?,
                        };
                        let stored_base = match &stored {
                            Stored::Delta { base, .. } => Some(*base),
                            _ => None,
                        };
                        let next = base_first(ready.get(&current), stored_base).filter(|base| {
                            in_pack.listed.contains_key(base)
                                && !written.contains_key(base)
                                && !chain.iter().any(|(c, _)| c == base)
                                && *base != current
                        });
                        chain.push((current, stored));
                        match next {
                            Some(base) => current = base,
                            None => break,
                        }
                    }
                    while let Some((id, stored)) = chain.pop() {
                        let start = sink.offset;
                        let depth = match ready.remove(&id) {
                            Some(Ready::Whole(entry)) => {
                                sink.write_all(&entry)?;
                                0
                            }
                            Some(Ready::Delta { base, size, data }) => {
                                let header =
                                    self.delta_header(&sink, &base, &written, client_has, &in_pack);
                                let base_depth = depth_of(&written, &base, &in_pack);
                                match header {
                                    Some(header) if base_depth < self.opts.max_depth => {
                                        header.write_to(size, &mut sink)?;
                                        sink.write_all(&data)?;
                                        stats.deltas += 1;
                                        stats.new_deltas += 1;
                                        base_depth + 1
                                    }
                                    // Its base could not be written first (a cycle of stored
                                    // deltas), or ends a chain as long as allowed: as stored
                                    // if it can be, else whole.
                                    _ => self.entry(
                                        &mut sink, &id, stored, &written, client_has, &in_pack,
                                        &mut stats,
                                    )?,
                                }
                            }
                            Some(Ready::AsStored) | None => self.entry(
                                &mut sink, &id, stored, &written, client_has, &in_pack, &mut stats,
                            )?,
                        };
                        written.insert(id, start | (depth << DEPTH_SHIFT));
                    }
                }
                Ok(())
            };
            let result = run();
            if result.is_err() {
                // Lanes still making objects are stopped and waited for here, so that one that
                // panicked is an error like any other (the scope would panic for it).
                abandon.store(true, Ordering::Relaxed);
                let _ = finish_rebuild(std::mem::take(&mut in_flight), &mut lanes);
            }
            result
        })?;
        let done = written.len() + in_pack.copied.as_ref().map_or(0, |c| c.count);
        if done != total {
            return Err(Error::Odb {
                message: format!("wrote {done} of {total} objects"),
            });
        }
        let checksum = sink.hasher.clone().finish()?;
        sink.out.write_all(checksum.as_bytes())?;
        stats.bytes = sink.offset + checksum.as_bytes().len() as u64;
        stats.stored_read_bytes = self.read_bytes;
        stats.untried = self.untried;
        Ok(stats)
    }

    /// Of the objects an answer sends from `packed` (a pack's bitmaps chose them), those stored
    /// whole that may go as a delta of another sent whole, as git's delta search finds for
    /// objects it does not send as stored deltas: trees and blobs sorted by kind, path's name
    /// hash and size (largest first), each paired with the one before it of the same kind and
    /// name (most often a newer version of the same file or directory, which a fetched pack
    /// brought whole and consolidation kept so), when the longest chain stored below it (sent
    /// or not: an object below whose base is not sent gets a new delta against one above it;
    /// for a small answer without the forest, as [`SentBelow`] counts it), one link longer and with its base's links (if paired itself), still leaves room under
    /// the allowed depth for one more link (a new delta against one of them). The pairs go to
    /// [`PackWriter::paired`]; their positions are returned, to be held out of the runs copied
    /// (with what is stored below them) and written after them, as a delta if one pays. The
    /// first of each name, which has none before it here, is paired with a version of its name
    /// from beyond the pack (`others`, with `others_names`) stored whole, if there is one (see
    /// [`PackWriter::beyond_base`]) and the chain below it, one link longer, leaves room for
    /// one more. At most [`PAIRED_MOST`] objects are paired, and [`HEIGHT_VISITS`] positions
    /// looked at below each.
    ///
    /// `None` for an answer of more than a [`PAIRED_SHARE`]th of the pack (a clone's pack is
    /// copied in runs, as git reuses it), a pack without name hashes, or an answer of more
    /// than [`crate::select::CLIENT_PATHS_ANSWER`] objects without the pack's delta forest
    /// (read here for an answer of at least a [`PAIRED_FOREST_SHARE`]th of the pack; a
    /// smaller answer reads what its own entries are stored on instead, see [`Below`]).
    fn pair_whole(
        &mut self,
        pack: &StoredPack,
        packed: &crate::reuse::Packed,
        (others, others_names): (&[ObjectId], &[u32]),
    ) -> Option<Bits> {
        let rev = &*packed.rev;
        let max_depth = usize::try_from(self.opts.max_depth).unwrap_or(usize::MAX);
        if max_depth == 0 || packed.count.saturating_mul(PAIRED_SHARE) > rev.len() {
            return None;
        }
        // The chains: from the forest, built or to be read for this answer, or for a small
        // answer from its own entries' bases (`None`).
        let read_forest = match rev.built_forest() {
            Some(_) => Some(false),
            None if rev.forest_possible()
                && packed.count.saturating_mul(PAIRED_FOREST_SHARE) >= rev.len() =>
            {
                Some(true)
            }
            None if packed.count <= crate::select::CLIENT_PATHS_ANSWER => None,
            None => return None,
        };
        let hash = self.objects.hash();
        let loaded = self.bitmaps?.get(pack, self.rev, hash)?;
        // An answer of commits and tags alone (`tree:0`) pairs nothing: its name hashes are
        // not read (a tenth of such an answer in a process of its own).
        let types = &loaded.bitmaps;
        if !packed
            .positions()
            .any(|q| types.blobs.get(q) || types.trees.get(q))
        {
            return None;
        }
        let names = loaded.names_for(packed.count).ok().flatten()?;
        // Trees and blobs by kind and name.
        let mut named: Vec<(u64, usize)> = packed
            .positions()
            .filter_map(|q| Some((name_key(&loaded, &names, rev, q)?, q)))
            .collect();
        named.sort_unstable();
        // The objects sent from beyond the pack by name, in the order they come, for the
        // largest of a name here to be paired with (see `beyond_base`).
        let mut beyond: Vec<(u32, usize)> = match others_names.len() == others.len() {
            true => others_names.iter().copied().zip(0..).collect(),
            false => Vec::new(),
        };
        beyond.sort_unstable();
        let beyond_of = |key: u64| {
            let name = key as u32;
            let from = beyond.partition_point(|&(n, _)| n < name);
            let to = beyond.partition_point(|&(n, _)| n <= name);
            &beyond[from..to]
        };
        let beyond_has = |key: u64| !beyond_of(key).is_empty();
        let mut looks = BeyondLooks {
            looked: 0,
            unreadable: vec![false; self.packs.len()],
        };
        // Of those whose name another one shares, here or beyond the pack, the ones stored
        // whole with a size a delta is made for: (kind and name, size largest first, position).
        let data = pack.data(hash).ok()?;
        let mut whole: Vec<(u64, std::cmp::Reverse<u64>, usize)> = named
            .chunk_by(|a, b| a.0 == b.0)
            .filter(|group| group.len() > 1 || beyond_has(group[0].0))
            .flatten()
            .filter_map(|&(key, q)| {
                let entry = data.entry(rev.offset(pack, q)).ok()?;
                let size = entry.decompressed_size;
                (!entry.header.is_delta() && (MIN_DELTA_OBJECT..=MAX_DELTA_OBJECT).contains(&size))
                    .then_some((key, std::cmp::Reverse(size), q))
            })
            .collect();
        whole.sort_unstable();
        if !whole
            .chunk_by(|a, b| a.0 == b.0)
            .any(|group| group.len() > 1 || beyond_has(group[0].0))
        {
            return None;
        }
        // What is stored below each (an answer with nothing to pair reads no forest), kept for
        // `hold_for_client` when read from the answer's entries.
        let mut sent_below = None;
        let forest = match read_forest.and_then(|read| match read {
            true => rev.forest(pack, hash),
            false => rev.built_forest(),
        }) {
            Some(forest) => Below::Forest(forest),
            // A forest that could not be read: as for a small answer, if this one is.
            None if packed.count <= crate::select::CLIENT_PATHS_ANSWER => {
                let sent = self
                    .sent_below
                    .take()
                    .unwrap_or_else(|| SentBelow::new(pack, &data, packed));
                Below::Sent(sent_below.insert(sent))
            }
            None => return None,
        };
        let oid_at = |q: usize| pack.index.oid_at_index(rev.at(q)).to_owned();
        let mut held = Bits::with_len(rev.len());
        for group in whole.chunk_by(|a, b| a.0 == b.0) {
            if self.paired.len() >= PAIRED_MOST {
                break;
            }
            // The largest is paired with one of its name beyond the pack, stored whole there
            // (most often its newer version, which a refresh brought whole).
            let (key, _, first) = group[0];
            let those = beyond_of(key);
            let room = || {
                forest
                    .height(first, HEIGHT_VISITS)
                    .is_some_and(|below| 2 + below <= max_depth)
            };
            let base = (!those.is_empty() && looks.looked < BEYOND_BASES_ALL && room())
                .then(|| self.beyond_base(key, those, others, packed.pack, &mut looks))
                .flatten();
            let mut start = 0;
            if let Some(base) = base {
                held.set(first);
                self.paired.insert(oid_at(first), base);
                self.pinned.insert(base);
                start = 1;
            }
            // The one before, and the depth it will have if its own delta pays.
            let mut before: Option<(usize, usize)> = (start == 1).then_some((first, 1));
            for &(_, _, q) in &group[start..] {
                let room = self.paired.len() < PAIRED_MOST;
                let depth = before.filter(|_| room).and_then(|(b, depth)| {
                    let below = forest.height(q, HEIGHT_VISITS)?;
                    (depth + 2 + below <= max_depth).then(|| (b, depth + 1))
                });
                match depth {
                    Some((b, depth)) => {
                        held.set(q);
                        self.paired.insert(oid_at(q), oid_at(b));
                        before = Some((q, depth));
                    }
                    None => before = Some((q, 0)),
                }
            }
        }
        // Without copied runs nothing is held out of them: what is stored below a paired
        // object is no base for a new delta of an object written before it, as below one
        // paired from beyond the pack.
        if !self.opts.ofs_delta {
            for q in held.ones() {
                forest.under(q, HEIGHT_VISITS, |c| {
                    self.below_paired.insert(oid_at(c));
                });
            }
        }
        self.sent_below = sent_below;
        (!self.paired.is_empty()).then_some(held)
    }

    /// Objects from beyond the pack (`beyond`: packs fetched since it, with their name
    /// hashes) of the name of one [`client_path_bases`](crate::select) paired with the
    /// client's object (the other versions of a directory or file a push changed several
    /// times, sent together): tried against that object too, when of its kind, at most
    /// [`PAIRED_MOST`]. Only the versions of the wants' own trees have a path found; the
    /// oldest version of a push, stored whole in the pack fetched, went whole.
    fn hold_beyond_by_name(
        &mut self,
        path_bases: &OidMap<crate::select::PathBase>,
        (others, names): (&[ObjectId], &[u32]),
        client_held: &mut crate::OidSet,
    ) {
        if names.len() != others.len() {
            return;
        }
        let kind_of = |objects: &Objects, oid: &ObjectId| -> Option<Kind> {
            objects.header(oid).ok().flatten().map(|(kind, _)| kind)
        };
        // By name hash and kind (a file and a directory may share a hash): the first found.
        let mut by_name: HashMap<(u32, Kind), ObjectId> = HashMap::new();
        for (oid, name) in others.iter().zip(names) {
            if let Some(client) = path_bases.get(oid).and_then(|b| b.client)
                && let Some(kind) = kind_of(self.objects, &client)
            {
                by_name.entry((*name, kind)).or_insert(client);
            }
        }
        if by_name.is_empty() {
            return;
        }
        let named: std::collections::HashSet<u32> = by_name.keys().map(|(name, _)| *name).collect();
        let mut found = 0;
        for (oid, name) in others.iter().zip(names) {
            if found >= PAIRED_MOST {
                break;
            }
            if !named.contains(name)
                || path_bases.contains_key(oid)
                || self.by_client.contains_key(oid)
            {
                continue;
            }
            let Some(&base) =
                kind_of(self.objects, oid).and_then(|kind| by_name.get(&(*name, kind)))
            else {
                continue;
            };
            self.by_client.insert(*oid, base);
            client_held.insert(*oid);
            found += 1;
        }
    }

    /// `held` with the objects `packed` sends stored whole that a thin pack may send as a
    /// delta against the client's object at their path: held out of the runs copied, to be
    /// written after them, as a delta if one pays (see [`PackWriter::plan_batch`]), as stored
    /// otherwise. Those are the objects [`crate::select::PathBase::client`] pairs (the trees
    /// of the wants compared with the haves'), and the other versions sent of their paths:
    /// the objects of the same kind and name hash as a client's object found so (as git's
    /// window pairs an object with the preferred bases its name sorts it next to; at most
    /// [`PAIRED_MOST`] of these). Each only when the longest chain of deltas sent stored below
    /// it (written one by one after it, then), one link longer, is within the allowed depth
    /// (a sent delta whose base is not sent gets a new base whose depth the writer checks
    /// then; held with its stored chain too long, the deepest would be made again). Those
    /// held, with the objects from beyond the pack and those of `path_bases` `held` already,
    /// go to [`PackWriter::client_held`]: the only ones tried against the client's objects. Without
    /// offset deltas (no runs) the same are tried, and what is stored below them goes to
    /// [`PackWriter::below_paired`].
    fn hold_for_client(
        &mut self,
        pack: &StoredPack,
        packed: &crate::reuse::Packed,
        path_bases: &OidMap<crate::select::PathBase>,
        held: Option<Bits>,
        beyond: (&[ObjectId], &[u32]),
    ) -> Option<Bits> {
        let max_depth = usize::try_from(self.opts.max_depth).unwrap_or(usize::MAX);
        self.client_held = Some(crate::OidSet::default());
        if !self.opts.thin
            || max_depth == 0
            || packed.count > crate::select::CLIENT_PATHS_ANSWER
            || !path_bases.values().any(|b| b.client.is_some())
        {
            return held;
        }
        let hash = self.objects.hash();
        let rev = &*packed.rev;
        let position = |oid: &ObjectId| rev.position_of(pack, oid);
        let taken = |q: usize| held.as_ref().is_some_and(|h| h.get(q));
        // The bases of `pair_whole`'s pairs: written early as such, as stored.
        let bases: crate::OidSet = self.paired.values().copied().collect();
        // Tried against the client's as they come: objects from beyond the pack (written one
        // by one, as a walk's are), and those `pair_whole` holds (with room for a link).
        let mut client_held = crate::OidSet::default();
        let mut in_pack = Vec::new();
        for (oid, _) in path_bases.iter().filter(|(_, b)| b.client.is_some()) {
            match position(oid).filter(|&q| packed.bits.get(q)) {
                None => {
                    client_held.insert(*oid);
                }
                Some(q) if taken(q) => {
                    client_held.insert(*oid);
                }
                Some(_) if bases.contains(oid) => {}
                Some(q) => in_pack.push(q),
            }
        }
        self.hold_beyond_by_name(path_bases, beyond, &mut client_held);
        let Ok(data) = pack.data(hash) else {
            self.client_held = Some(client_held);
            return held;
        };
        // Positions to hold, each with the base to try if the selection did not name it.
        let mut candidates: Vec<(usize, Option<ObjectId>)> = in_pack
            .into_iter()
            .filter(|&q| whole_to_pair(&data, rev.offset(pack, q)).is_some())
            .map(|q| (q, None))
            .collect();
        // The client's objects found, by kind and name hash (when the pack's bitmaps have
        // the names).
        let loaded = self.bitmaps.and_then(|b| b.get(pack, self.rev, hash));
        let wanted = packed.count + path_bases.len();
        let named =
            loaded.and_then(|loaded| Some((loaded.names_for(wanted).ok().flatten()?, loaded)));
        if let Some((names, loaded)) = &named {
            let mut by_name: HashMap<u64, ObjectId> = HashMap::new();
            for base in path_bases.values().filter_map(|b| b.client) {
                if let Some(key) = position(&base).and_then(|q| name_key(loaded, names, rev, q)) {
                    by_name.entry(key).or_insert(base);
                }
            }
            let mut found = 0;
            for q in packed.positions() {
                if found >= PAIRED_MOST {
                    break;
                }
                let Some(&base) = name_key(loaded, names, rev, q).and_then(|k| by_name.get(&k))
                else {
                    continue;
                };
                if whole_to_pair(&data, rev.offset(pack, q)).is_none() {
                    continue;
                }
                let oid = pack.index.oid_at_index(rev.at(q)).to_owned();
                if path_bases.contains_key(&oid) || bases.contains(&oid) {
                    continue;
                }
                // One `pair_whole` holds has its base (a try against each would cost twice).
                if !taken(q) {
                    candidates.push((q, Some(base)));
                    found += 1;
                }
            }
        }
        if candidates.is_empty() {
            self.client_held = Some(client_held);
            return held;
        }
        let below = self
            .sent_below
            .take()
            .unwrap_or_else(|| SentBelow::new(pack, &data, packed));
        let oid_at = |q: usize| pack.index.oid_at_index(rev.at(q)).to_owned();
        let mut any = held.is_some();
        let mut more = held.unwrap_or_else(|| Bits::with_len(rev.len()));
        for (q, base) in candidates {
            let room = below
                .height(q, HEIGHT_VISITS)
                .is_some_and(|height| height < max_depth);
            if !room {
                continue;
            }
            more.set(q);
            any = true;
            let oid = oid_at(q);
            if let Some(base) = base {
                self.by_client.insert(oid, base);
            }
            client_held.insert(oid);
            // Without copied runs nothing is held out of them: what is stored below it is no
            // base for a new delta of an object written before it (see `pair_whole`).
            if !self.opts.ofs_delta {
                below.under(q, HEIGHT_VISITS, |c| {
                    self.below_paired.insert(oid_at(c));
                });
            }
        }
        self.client_held = Some(client_held);
        self.sent_below = Some(below);
        any.then_some(more)
    }

    /// Of `those` (the objects sent from beyond the bitmapped pack `bitmapped` whose name hash
    /// is that of `key`, by index in `others`, in the order they come), the first of the first
    /// [`BEYOND_BASES`] stored whole, of the kind `key` says and of a size a delta is made for:
    /// the base of the object of the pack paired with it, which [`PackWriter::pinned`] then
    /// holds: given no base of its own among [`PackWriter::pair_beyond`]'s pairs (when the
    /// delta on it pays, writing that delta, after the copied runs, writes it first, as
    /// stored).
    fn beyond_base(
        &mut self,
        key: u64,
        those: &[(u32, usize)],
        others: &[ObjectId],
        bitmapped: usize,
        looks: &mut BeyondLooks,
    ) -> Option<ObjectId> {
        let hash = self.objects.hash();
        those.iter().take(BEYOND_BASES).find_map(|&(_, i)| {
            if looks.looked >= BEYOND_BASES_ALL {
                return None;
            }
            looks.looked += 1;
            let oid = others.get(i)?;
            let (k, index) = self
                .packs
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != bitmapped)
                .find_map(|(k, pack)| Some((k, crate::packs::lookup(&pack.index, oid)?)))?;
            if looks.unreadable.get(k).is_none_or(|&u| u) {
                return None;
            }
            let pack = &self.packs[k];
            let Ok(data) = pack.data(hash) else {
                looks.unreadable[k] = true;
                return None;
            };
            let kind = whole_to_pair(&data, pack.index.pack_offset_at_index(index))?;
            (crate::window::key(kind, key as u32) == key).then_some(*oid)
        })
    }

    /// Of the trees and blobs an answer from a pack's bitmaps sends from beyond that pack
    /// (`others`, listed last in `order`, with the name hashes the walk met them at: the packs
    /// fetched since a consolidation), those stored whole, paired as
    /// [`PackWriter::pair_whole`] pairs the pack's own: by kind and name, each with the one
    /// before it, when the longest chain stored below it, one link longer and with its base's
    /// links, leaves room for one more link under the allowed depth. Here "before" is in the
    /// order of writing: an object stored whole is written at its place, or earlier as the
    /// stored base of a delta below it that comes first (writing a delta writes its bases
    /// first). Each paired object is moved to that first place in `order`, which is returned,
    /// so that its delta is made by the time it is written, and its base is written before
    /// it; what is stored below it goes to [`PackWriter::below_paired`]. Objects written one
    /// by one break no copied runs: the bounds are on the work ([`BEYOND_LOOKED_AT`],
    /// [`BEYOND_GROUP`], [`BEYOND_VISITS`]), not on the pairs.
    fn pair_beyond<'o>(
        &mut self,
        order: std::borrow::Cow<'o, [ObjectId]>,
        others: &[ObjectId],
        names: &[u32],
        bitmapped: Option<usize>,
    ) -> std::borrow::Cow<'o, [ObjectId]> {
        let max_depth = usize::try_from(self.opts.max_depth).unwrap_or(usize::MAX);
        let Some(start) = order.len().checked_sub(others.len()) else {
            return order;
        };
        if max_depth == 0
            || others.len() < 2
            || names.len() != others.len()
            || order[start..] != *others
        {
            return order;
        }
        // Those whose name another one shares, in the order they come (most often by pack);
        // at most [`BEYOND_GROUP`] of one name (the root trees share theirs).
        let mut by_name: Vec<(u32, usize)> = names.iter().copied().zip(0..).collect();
        by_name.sort_unstable();
        let mut shared = vec![false; others.len()];
        for &(_, i) in by_name
            .chunk_by(|a, b| a.0 == b.0)
            .filter(|group| group.len() > 1)
            .flat_map(|group| group.iter().take(BEYOND_GROUP))
            .take(BEYOND_LOOKED_AT)
        {
            shared[i] = true;
        }
        drop(by_name);
        // Of those, the ones stored whole with a size a delta is made for: (kind and name,
        // pack, position there, index in `others`). None is in the bitmapped pack; each is
        // looked for first where the one before was found. (An object stored in two packs may
        // be found in another than the writer reads it from: its pairing then counts the wrong
        // chains, and the writer's own checks of depth still hold.) How many of them each pack
        // holds decides whether its delta forest is worth reading.
        let hash = self.objects.hash();
        if self.data.len() < self.packs.len() {
            self.data.resize(self.packs.len(), None);
            self.revs.resize(self.packs.len(), None);
        }
        let mut held_here = vec![0usize; self.packs.len()];
        let mut unreadable = vec![false; self.packs.len()];
        let mut whole: Vec<(u64, usize, usize, usize)> = Vec::new();
        let mut last: Option<usize> = None;
        for (i, oid) in others.iter().enumerate().filter(|&(i, _)| shared[i]) {
            let in_last =
                last.and_then(|k| Some((k, crate::packs::lookup(&self.packs[k].index, oid)?)));
            let found = in_last.or_else(|| {
                self.packs
                    .iter()
                    .enumerate()
                    .filter(|&(k, _)| Some(k) != bitmapped && Some(k) != last)
                    .find_map(|(k, pack)| Some((k, crate::packs::lookup(&pack.index, oid)?)))
            });
            let Some((k, index)) = found else {
                continue;
            };
            last = Some(k);
            held_here[k] += 1;
            if unreadable[k] {
                continue;
            }
            let pack = &self.packs[k];
            let file = match &self.data[k] {
                Some(file) => file,
                None => match pack.data(hash) {
                    Ok(file) => self.data[k].insert(file),
                    Err(_) => {
                        unreadable[k] = true;
                        continue;
                    }
                },
            };
            let Some(kind) = whole_to_pair(file, pack.index.pack_offset_at_index(index)) else {
                continue;
            };
            let rev = self.revs[k].get_or_insert_with(|| self.rev.get(pack, hash));
            if let Some(p) = rev.pack_position(&pack.index, index) {
                whole.push((crate::window::key(kind, names[i]), k, p, i));
            }
        }
        drop(shared);
        // Only those whose kind and name another one shares.
        whole.sort_unstable();
        let whole: Vec<(u64, usize, usize, usize)> = whole
            .chunk_by(|a, b| a.0 == b.0)
            .filter(|group| group.len() > 1)
            .flatten()
            .copied()
            .collect();
        if whole.is_empty() {
            return order;
        }
        // Where each is first written, and the longest chain stored below it (every entry
        // counted), from its pack's delta forest: read (if it was not already) for a pack that
        // holds at least one in [`FOREST_SHARE`] of its objects among those looked up.
        let place: OidMap<usize> = others.iter().zip(start..).map(|(o, at)| (*o, at)).collect();
        let visits = std::cell::Cell::new(0);
        // (kind and name, first place, longest chain below, pack, position, index in `others`)
        let mut found: Vec<(u64, usize, usize, usize, usize, usize)> = Vec::new();
        for &(key, k, p, i) in &whole {
            if visits.get() >= BEYOND_VISITS {
                break;
            }
            let pack = &self.packs[k];
            let Some(rev) = self.revs[k].as_ref() else {
                continue;
            };
            let forest = match rev.built_forest() {
                Some(forest) => forest,
                None if rev.forest_possible()
                    && held_here[k].saturating_mul(FOREST_SHARE) >= rev.len() =>
                {
                    match rev.forest(pack, hash) {
                        Some(forest) => forest,
                        None => continue,
                    }
                }
                None => continue,
            };
            // One pinned is written ahead of every object listed here.
            let pinned = self.pinned.contains(&others[i]);
            let first = std::cell::Cell::new(if pinned { start } else { start + i });
            let below = forest.height(p, HEIGHT_VISITS, |q| {
                visits.set(visits.get() + 1);
                let oid = pack.index.oid_at_index(rev.at(q));
                if let Some(&at) = place.get(oid) {
                    first.set(first.get().min(at));
                }
                true
            });
            if let Some(below) = below {
                found.push((key, first.get(), below, k, p, i));
            }
        }
        drop(place);
        // By kind and name, in the order of writing: each paired with the one before it.
        found.sort_unstable();
        let mut moved: Vec<(usize, usize)> = Vec::new();
        for group in found.chunk_by(|a, b| a.0 == b.0) {
            // The one before, and the depth it will have if its own delta pays.
            let mut before: Option<(usize, usize)> = None;
            for &(_, first, below, k, p, i) in group {
                let depth = before
                    .filter(|_| !self.pinned.contains(&others[i]))
                    .and_then(|(b, depth)| {
                        (depth + 2 + below <= max_depth).then_some((b, depth + 1))
                    });
                let Some((b, depth)) = depth else {
                    before = Some((i, 0));
                    continue;
                };
                self.paired.insert(others[i], others[b]);
                if first < start + i {
                    moved.push((first, start + i));
                }
                before = Some((i, depth));
                // What is stored below it: no base for a new delta of an object written
                // before it (that would write it, through them, ahead of its own delta).
                let pack = &self.packs[k];
                if let Some(forest) = self.revs[k].as_ref().and_then(|r| r.built_forest()) {
                    let rev = self.revs[k].as_ref().expect("read above");
                    let below_paired = std::cell::RefCell::new(&mut self.below_paired);
                    forest.height(p, HEIGHT_VISITS, |q| {
                        let oid = pack.index.oid_at_index(rev.at(q)).to_owned();
                        below_paired.borrow_mut().insert(oid);
                        true
                    });
                }
            }
        }
        if moved.is_empty() {
            return order;
        }
        // Each moved object just before the one whose writing would have written it.
        moved.sort_unstable();
        let from: std::collections::HashSet<usize> = moved.iter().map(|&(_, at)| at).collect();
        let mut out = Vec::with_capacity(order.len());
        let mut next = moved.iter().peekable();
        for (at, oid) in order.iter().enumerate() {
            while let Some(&(_, was)) = next.next_if(|&&(to, _)| to == at) {
                out.push(order[was]);
            }
            if !from.contains(&at) {
                out.push(*oid);
            }
        }
        out.into()
    }

    /// The pack and position of the object at `place` in the order, if the sent objects were
    /// looked up in the first packs holding it (the first pack that does, as a lookup by id
    /// would find it; none if a pack before it was not looked in).
    fn found_at(&self, place: usize) -> Option<(usize, usize)> {
        for k in 0..self.packs.len() {
            let sent = self.sent_in.get(&k)?;
            if sent.at_place.is_empty() {
                return None;
            }
            match sent.position_at(place) {
                Some(p) => return Some((k, p)),
                None => continue,
            }
        }
        None
    }

    /// Of `bases`, those whose content selection read, with it.
    fn read_of(&self, bases: &[ObjectId]) -> Vec<(ObjectId, std::sync::Arc<[u8]>)> {
        if self.client_read.is_empty() {
            return Vec::new();
        }
        bases
            .iter()
            .filter_map(|b| Some((*b, std::sync::Arc::clone(self.client_read.get(b)?))))
            .collect()
    }

    /// Plan the batch of `order` from `start`: read how each object is stored (holding the
    /// entries sent as stored into `planned`), and list those that must be made again with
    /// the bases to try for each. Returns where the batch ends, that list, and the bytes held.
    fn plan_batch(
        &mut self,
        order: &[ObjectId],
        start: usize,
        in_pack: &Sent<'_>,
        (client_has, path_bases): (&crate::select::Has, &OidMap<crate::select::PathBase>),
        written: &OidMap<u64>,
        planned: &mut OidMap<Stored>,
    ) -> Result<(usize, Vec<Redo>, u64), Error> {
        let mut redo = Vec::new();
        let mut bytes = 0u64;
        // Bytes of large stored entries read while planning but not held.
        let mut passed = 0u64;
        let mut end = start;
        // Set when this batch holds the last of a kind's first tries by path: the batches
        // after it are started once those are known, and leave the kind untried if they
        // did not pay (see [`PathTries`]).
        let mut sampled = false;
        for (place, id) in order
            .iter()
            .enumerate()
            .take((start + BATCH).min(order.len()))
            .skip(start)
        {
            if end > start && (bytes + passed >= self.opts.batch_bytes || sampled) {
                break;
            }
            end = place + 1;
            if written.contains_key(id) {
                // Written early, as the base of a delta.
                continue;
            }
            let (thin, max_depth) = (self.opts.thin, self.opts.max_depth);
            // A base copied or written already with no room below the allowed depth: the
            // object is made again (against one further down its chain, if it can be). The
            // depth of one written later is known only then.
            let usable = |base: &ObjectId| {
                in_pack
                    .sent_depth(written, base)
                    .is_some_and(|depth| depth < max_depth)
                    || (thin && client_has.contains(base))
            };
            let at = in_pack.left_at(place).or_else(|| self.found_at(place));
            let peek = self.stored_within(id, at, HELD_ENTRY_BYTES)?;
            let whole = matches!(
                peek,
                Peek::Stored(Stored::Base(_)) | Peek::Large { base: None, .. }
            );
            // Bases by path: the object sent before at its path, if it was planned as stored
            // whole (then nothing it depends on comes after it: no two objects are made
            // deltas of each other), and in a thin pack the client's object there (git's
            // preferred base).
            let mut by_path = Vec::new();
            if let Some(bases) = path_bases.get(id) {
                // An object made again anyway (its stored base not sent) takes any base.
                let room = !whole
                    || self
                        .client_held
                        .as_ref()
                        .is_none_or(|held| held.contains(id));
                by_path.extend(bases.sent.filter(|b| self.planned_whole.contains(b)));
                by_path.extend(
                    bases
                        .client
                        .filter(|b| thin && room && client_has.contains(b)),
                );
            }
            by_path.extend(self.paired.get(id));
            by_path.extend(
                self.by_client
                    .get(id)
                    .filter(|b| thin && client_has.contains(b) && !by_path.contains(b)),
            );
            if whole {
                if self.offered.contains(id) {
                    self.planned_whole.insert(*id);
                }
                // Kind and size from the entry's header (read only for an object with a base
                // by path): an object of a size no delta is made for is not tried at all.
                let header = || match &peek {
                    Peek::Stored(Stored::Base(entry)) => whole_header(entry, self.objects.hash()),
                    Peek::Large { whole, .. } => *whole,
                    Peek::Stored(_) => None,
                };
                let header = (!by_path.is_empty() && self.opts.max_depth > 0)
                    .then(header)
                    .filter(|header| {
                        header.is_none_or(|(_, size)| {
                            (MIN_DELTA_OBJECT..=MAX_DELTA_OBJECT).contains(&size)
                        })
                    });
                if let Some(header) = header {
                    // Tried while the batch before is written; as stored if no delta pays.
                    redo.push(Redo {
                        oid: *id,
                        read: self.read_of(&by_path),
                        against: by_path.clone(),
                        stored_whole: true,
                        kind: header.map(|(kind, _)| kind),
                    });
                    if let Some(k) = header.and_then(|(kind, _)| PathTries::slot(kind)) {
                        self.path_planned[k] += 1;
                        sampled |= self.path_planned[k] == PATH_TRIES_SAMPLE;
                    }
                }
            }
            // Whether it goes as stored, its entry's length, its stored delta base.
            let (reusable, held, stored_base) = match &peek {
                Peek::Large { len, base, .. } => (base.is_none_or(|b| usable(&b)), *len, *base),
                Peek::Stored(Stored::Base(entry)) => (true, entry.len() as u64, None),
                Peek::Stored(Stored::Delta { base, entry, .. }) => {
                    (usable(base), entry.len() as u64, Some(*base))
                }
                Peek::Stored(Stored::Full) => (false, 0, None),
            };
            if reusable && held > HELD_ENTRY_BYTES {
                // Read when written: a batch of large files held for nothing made a depth-1
                // clone of them take more memory than git's. Still counted, so that planning
                // reads no further ahead of writing.
                passed += held;
                continue;
            }
            let stored = match peek {
                Peek::Stored(stored) if reusable => {
                    bytes += held;
                    stored
                }
                // Compressed again from the object: its stored entry is not kept.
                _ => {
                    bytes += self.objects.header(id)?.map_or(0, |(_, size)| size);
                    let mut against = match stored_base {
                        // No delta at all under a limit of 0.
                        Some(_) if max_depth == 0 => Vec::new(),
                        Some(base) => {
                            match self.usable_ancestor(&base, in_pack, client_has, written)? {
                                Some(ancestor) => vec![ancestor],
                                None => self.new_bases(id, place, in_pack, client_has, written),
                            }
                        }
                        None => Vec::new(),
                    };
                    for base in by_path.into_iter().filter(|_| max_depth > 0) {
                        if !against.contains(&base) {
                            against.push(base);
                        }
                    }
                    redo.push(Redo {
                        oid: *id,
                        read: self.read_of(&against),
                        against,
                        stored_whole: false,
                        kind: None,
                    });
                    Stored::Full
                }
            };
            planned.insert(*id, stored);
        }
        Ok((end, redo, bytes))
    }

    /// Of the objects `following` makes, those that writing `batch` writes first: each object
    /// of the batch is written after its base (the one made for it, else the stored one) if
    /// that is in the pack and not written yet, and that base after its own, as the writing
    /// loop walks them. `ready` holds what was made for the batch, `planned` how the objects
    /// planned are stored; the entries of others are read for their base (kept in `planned`
    /// for the writing when small, read for their header alone when large).
    fn pulled_by(
        &mut self,
        batch: &[ObjectId],
        following: &[Redo],
        (ready, planned): (&OidMap<Ready>, &mut OidMap<Stored>),
        written: &OidMap<u64>,
        in_pack: &Sent<'_>,
    ) -> Result<crate::OidSet, Error> {
        let mut pulled = crate::OidSet::default();
        if following.is_empty() {
            return Ok(pulled);
        }
        let made: crate::OidSet = following.iter().map(|r| r.oid).collect();
        // Written by the time the walk reaches them again.
        let mut walked = crate::OidSet::default();
        for oid in batch {
            if written.contains_key(oid) || !walked.insert(*oid) {
                continue;
            }
            let mut current = *oid;
            loop {
                let stored_base = match planned.get(&current) {
                    Some(Stored::Delta { base, .. }) => Some(*base),
                    Some(_) => None,
                    // Written from what was made: its stored entry is not read.
                    None if matches!(
                        ready.get(&current),
                        Some(Ready::Delta { .. } | Ready::Whole(_))
                    ) =>
                    {
                        None
                    }
                    // A large entry of a listed pack: its header alone. One read whole is
                    // kept for the writing, which would read it again, unless it is large
                    // (from another pack, which is read whole): held no longer than planning
                    // holds one.
                    None => match self.stored_within(&current, None, HELD_ENTRY_BYTES)? {
                        Peek::Large { base, .. } => base,
                        Peek::Stored(stored) => {
                            let (base, len) = match &stored {
                                Stored::Delta { base, entry, .. } => (Some(*base), entry.len()),
                                Stored::Base(entry) => (None, entry.len()),
                                Stored::Full => (None, 0),
                            };
                            if len as u64 <= HELD_ENTRY_BYTES {
                                planned.insert(current, stored);
                            }
                            base
                        }
                    },
                };
                let next = base_first(ready.get(&current), stored_base).filter(|base| {
                    in_pack.listed.contains_key(base)
                        && !written.contains_key(base)
                        && walked.insert(*base)
                });
                let Some(base) = next else { break };
                if made.contains(&base) {
                    pulled.insert(base);
                }
                current = base;
            }
        }
        Ok(pulled)
    }

    /// Start making `redo` on the lanes (made now if there are none yet), or with one thread,
    /// make them here and now.
    fn start_rebuild<'scope>(
        &mut self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        lanes: &mut Vec<LaneState>,
        background: bool,
        redo: Vec<Redo>,
        budget: &'scope Budgets,
        abandon: &'scope std::sync::atomic::AtomicBool,
    ) -> Result<Vec<Rebuilding<'scope>>, Error> {
        // Tries by path of a kind that kept failing in the batches before are not made.
        let before = redo.len();
        let redo: Vec<Redo> = redo
            .into_iter()
            .filter(|r| !(r.stored_whole && r.kind.is_some_and(|k| budget.path_tries.hopeless(k))))
            .collect();
        self.untried += (before - redo.len()) as u32;
        if redo.is_empty() {
            return Ok(Vec::new());
        }
        let jobs = std::sync::Arc::new(Jobs {
            redo,
            next: std::sync::atomic::AtomicUsize::new(0),
            remade: self.opts.remade.clone(),
            level: self.opts.compression,
        });
        if !background {
            let level = self.opts.compression;
            let zlib = self.zlib.get_or_insert_with(|| compressor(level));
            let made = jobs.work(self.objects, zlib, budget, abandon)?;
            return Ok(vec![Rebuilding::Done(made)]);
        }
        // A thread costs tens of microseconds to start, against a few hundred to make one of
        // these objects again (most are read through a stored delta chain): two are enough
        // to share. The writing thread is one of the threads: it takes from the same queue
        // when it comes to wait.
        const MIN_PER_LANE: usize = 2;
        let wanted = (self.opts.threads - 1)
            .max(1)
            .min(jobs.redo.len().div_ceil(MIN_PER_LANE));
        while lanes.len() < wanted {
            lanes.push(((self.spawn_objects)(), compressor(self.opts.compression)));
        }
        let mut running = Vec::with_capacity(wanted + 1);
        // This thread takes what is left when it comes to wait for them.
        running.push(Rebuilding::Shared(std::sync::Arc::clone(&jobs)));
        let taken: Vec<LaneState> = lanes.drain(..wanted).collect();
        let unchecked = crate::ids::Unchecked::here();
        for (mut objects, mut zlib) in taken {
            let jobs = std::sync::Arc::clone(&jobs);
            // A thread that cannot be started is an error, not a panic.
            let started = std::thread::Builder::new().spawn_scoped(scope, move || {
                let _keyed = unchecked.then(crate::ids::Unchecked::enter);
                let made = jobs.work(&mut objects, &mut zlib, budget, abandon);
                ((objects, zlib), made)
            });
            match started {
                Ok(handle) => running.push(Rebuilding::Running(handle)),
                Err(err) => {
                    // Those started are waited for by the caller's error path.
                    abandon.store(true, Ordering::Relaxed);
                    let _ = finish_rebuild(running, lanes);
                    return Err(Error::Io(err));
                }
            }
        }
        Ok(running)
    }

    /// Wait for a batch's lanes, making here meanwhile the objects none of them has taken
    /// yet: this thread would otherwise sit idle while a lane still has a queue.
    fn join_rebuild(
        &mut self,
        in_flight: Vec<Rebuilding<'_>>,
        lanes: &mut Vec<LaneState>,
        budget: &Budgets,
        abandon: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<(ObjectId, Ready)>, Error> {
        let mut here = Vec::new();
        let mut failed = None;
        for lane in &in_flight {
            if let Rebuilding::Shared(jobs) = lane {
                let level = self.opts.compression;
                let zlib = self.zlib.get_or_insert_with(|| compressor(level));
                // A panic here is an error like a lane's, after the lanes are waited for (it
                // would otherwise unwind through the scope with them still at work).
                let objects = &mut *self.objects;
                let worked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    jobs.work(objects, zlib, budget, abandon)
                }));
                match worked {
                    Ok(Ok(made)) => here.extend(made),
                    Ok(Err(e)) => {
                        // The lanes stop at their next object, and are waited for below.
                        abandon.store(true, Ordering::Relaxed);
                        failed = Some(e);
                    }
                    Err(_) => {
                        abandon.store(true, Ordering::Relaxed);
                        failed = Some(Error::Odb {
                            message: "compression panicked".into(),
                        });
                    }
                }
            }
        }
        let made = finish_rebuild(in_flight, lanes);
        if let Some(e) = failed {
            return Err(e);
        }
        let mut made = made?;
        made.extend(here);
        Ok(made)
    }

    #[allow(clippy::too_many_arguments)] // Reason: the writer's state, passed apart to keep borrows simple.
    fn entry<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        oid: &ObjectId,
        stored: Stored,
        written: &OidMap<u64>,
        client_has: &crate::select::Has,
        in_pack: &Sent<'_>,
        stats: &mut PackStats,
    ) -> Result<u64, Error> {
        match stored {
            Stored::Base(entry) => {
                entry.write_from(0, sink)?;
                stats.reused += 1;
                return Ok(0);
            }
            Stored::Delta {
                base,
                size,
                entry,
                header_len,
            } => {
                let base_depth = depth_of(written, &base, in_pack);
                if base_depth < self.opts.max_depth
                    && let Some(header) =
                        self.delta_header(sink, &base, written, client_has, in_pack)
                {
                    header.write_to(size, sink)?;
                    entry.write_from(header_len, sink)?;
                    stats.reused += 1;
                    stats.reused_deltas += 1;
                    stats.deltas += 1;
                    return Ok(base_depth + 1);
                }
            }
            Stored::Full => {}
        }
        self.full(sink, oid)?;
        Ok(0)
    }

    /// The header of a delta against `base` written next, if the client can resolve it: its
    /// base written before it, or (in a thin pack) one the client has.
    fn delta_header<W: Write>(
        &self,
        sink: &Sink<W>,
        base: &ObjectId,
        written: &OidMap<u64>,
        client_has: &crate::select::Has,
        in_pack: &Sent<'_>,
    ) -> Option<Header> {
        if let Some(base_offset) = offset_of(written, base).or_else(|| {
            in_pack
                .copied
                .as_ref()
                .and_then(|copied| copied.offset_of(base))
        }) {
            Some(if self.opts.ofs_delta {
                Header::OfsDelta {
                    base_distance: sink.offset - base_offset,
                }
            } else {
                Header::RefDelta { base_id: *base }
            })
        } else if self.opts.thin && !in_pack.contains(base) && client_has.contains(base) {
            Some(Header::RefDelta { base_id: *base })
        } else {
            None
        }
    }

    /// The first object below `base` in its stored delta chain that a delta may be made
    /// against: one that is sent (and if copied or `written` already, with room below the
    /// allowed depth), or in a thin pack one the client has.
    fn usable_ancestor(
        &mut self,
        base: &ObjectId,
        in_pack: &Sent<'_>,
        client_has: &crate::select::Has,
        written: &OidMap<u64>,
    ) -> Result<Option<ObjectId>, Error> {
        let mut current = *base;
        for _ in 0..CHAIN_LOOKUP {
            let next = match self.bases.get(&current) {
                Some(known) => *known,
                None => {
                    // The base alone: an entry's header is enough.
                    let next = match self.stored_within(&current, None, 0)? {
                        Peek::Stored(Stored::Delta { base, .. }) => Some(base),
                        Peek::Large { base, .. } => base,
                        Peek::Stored(_) => None,
                    };
                    self.bases.insert(current, next);
                    next
                }
            };
            let Some(next) = next else {
                return Ok(None);
            };
            // One copied or written too deep is passed over (one further down is shallower).
            if in_pack
                .sent_depth(written, &next)
                .is_some_and(|depth| depth < self.opts.max_depth)
                || (self.opts.thin && client_has.contains(&next))
            {
                return Ok(Some(next));
            }
            current = next;
        }
        Ok(None)
    }

    /// Bases to try a new delta of `oid` (at `place` in the order) against, from its pack:
    ///
    /// - the few objects nearest to it in its stored delta tree that are had by the client in
    ///   a thin pack, or sent and either written before it or written as stored whenever they
    ///   come (copied in runs or stored whole when the answer copies runs of this pack; else
    ///   stored whole or a delta whose base is sent), so that no two objects are made deltas
    ///   of each other and none is pulled forward ahead of the delta its batch makes for it;
    /// - when those are fewer than [`TREE_CANDIDATES`] and the pack's bitmap file has name
    ///   hashes, the [`NAME_CANDIDATES`] objects sent whole whose path's name hash is nearest
    ///   to `oid`'s (files named alike; an object stored whole depends on nothing).
    ///
    /// A base from the tree leaves room for one more link, and some for what is stored on the
    /// object: at the depth it was written at if it was, else its stored depth.
    fn new_bases(
        &mut self,
        oid: &ObjectId,
        place: usize,
        in_pack: &Sent<'_>,
        client_has: &crate::select::Has,
        written: &OidMap<u64>,
    ) -> Vec<ObjectId> {
        let hash = self.objects.hash();
        let (packs, revs, thin, cache) = (self.packs, self.rev, self.opts.thin, self.bitmaps);
        let Some((k, pack, index)) = packs
            .iter()
            .enumerate()
            .find_map(|(k, pack)| Some((k, pack, crate::packs::lookup(&pack.index, oid)?)))
        else {
            return Vec::new();
        };
        let rev = revs.get(pack, hash);
        // Reading the forest means reading every entry header of the pack: not for an answer
        // of a small part of it, unless it was read already.
        let sent = in_pack.listed.len() + in_pack.copied.as_ref().map_or(0, |c| c.count);
        let forest = match rev.built_forest() {
            Some(forest) => Some(forest),
            None if sent.saturating_mul(FOREST_SHARE) >= rev.len() => rev.forest(pack, hash),
            None => None,
        };
        let Some(p) = rev.pack_position(&pack.index, index) else {
            return Vec::new();
        };
        // Without a forest, only names can offer bases: none to offer, nothing to set up.
        let named = || {
            cache
                .and_then(|c| c.get(pack, revs, hash))
                .is_some_and(|b| b.bitmaps.has_names())
        };
        if forest.is_none() && !named() {
            return Vec::new();
        }
        let sent = self
            .sent_in
            .entry(k)
            .or_insert_with(|| SentIn::new(k, pack, &rev, in_pack));
        let oid_at = |q: usize| pack.index.oid_at_index(rev.at(q)).to_owned();
        // Objects stored whole that are paired go as the delta their batch makes, if it pays:
        // not as stored whenever they come.
        let (paired, client_held) = (&self.paired, self.client_held.as_ref());
        let is_paired = |q: usize| {
            let held = client_held.is_some_and(|h| !h.is_empty());
            (held || !paired.is_empty()) && {
                let oid = oid_at(q);
                paired.contains_key(&oid) || client_held.is_some_and(|h| h.contains(&oid))
            }
        };
        // Nor does what is stored below one paired from beyond the bitmapped pack: writing it
        // writes that one.
        let below_paired = &self.below_paired;
        let is_below_paired =
            |q: usize| !below_paired.is_empty() && below_paired.contains(&oid_at(q));
        // A base from the tree deeper than this leaves no room for the delta (a copied one
        // is written at its stored depth), or for what is stored on it.
        let max_depth = usize::try_from(self.opts.max_depth).unwrap_or(usize::MAX);
        let base_depth = TREE_BASE_DEPTH.min(max_depth.saturating_sub(1));
        let mut found = match forest {
            Some(forest) => {
                let had = |q: usize| thin && !sent.bits.get(q) && client_has.contains(&oid_at(q));
                forest.nearest(p, TREE_CANDIDATES, TREE_VISITS, |q| {
                    // Written before it, or written as stored whatever comes first: copied in
                    // runs, or stored whole, or (with no runs) a delta whose base is sent. An
                    // object written one by one after it is pulled forward as a base, before
                    // what its own batch makes of it: a delta whose base must be made again
                    // would then go whole.
                    let as_stored = match &sent.copied {
                        Some(copied) => {
                            copied.get(q) || (forest.base(q).is_none() && !is_paired(q))
                        }
                        None => match forest.base(q) {
                            None => !is_paired(q),
                            Some(b) => (sent.bits.get(b) || had(b)) && !is_below_paired(q),
                        },
                    };
                    // Shallow enough as stored or as written, if it has room for the link
                    // as written (a copied one is as stored).
                    let shallow = || {
                        let copied = sent.copied.as_ref().is_some_and(|c| c.get(q));
                        let written = (!copied)
                            .then(|| written.get(&oid_at(q)))
                            .flatten()
                            .map(|at| (at >> DEPTH_SHIFT) as usize);
                        match written {
                            Some(depth) => {
                                depth < max_depth
                                    && (depth <= base_depth || forest.depth(q) <= base_depth)
                            }
                            None => forest.depth(q) <= base_depth,
                        }
                    };
                    // The client's objects are whole for it.
                    had(q)
                        || ((sent.written_before(q, place) || (sent.bits.get(q) && as_stored))
                            && shallow())
                })
            }
            None => Vec::new(),
        };
        if found.len() < TREE_CANDIDATES
            && let Some(cache) = cache
            && let Some(named) = sent.named_whole(pack, &rev, forest, cache, revs, hash)
            && let Some(key) = named.key_of(p)
        {
            for q in named.window.nearest(key, p, NAME_CANDIDATES, |q| {
                !found.contains(&q) && !is_paired(q)
            }) {
                found.push(q);
            }
        }
        found.into_iter().map(oid_at).collect()
    }

    /// Write `oid` as a whole object, compressed again.
    fn full<W: Write>(&mut self, sink: &mut Sink<W>, oid: &ObjectId) -> Result<(), Error> {
        let level = self.opts.compression;
        let zlib = self.zlib.get_or_insert_with(|| compressor(level));
        let entry = compress_whole(self.objects, oid, zlib)?;
        sink.write_all(&entry)?;
        Ok(())
    }

    /// How `oid` is stored.
    fn stored(&mut self, oid: &ObjectId) -> Result<Stored, Error> {
        Ok(match self.stored_within(oid, None, u64::MAX)? {
            Peek::Stored(stored) => stored,
            // No entry is longer than the largest bound; were one, it would go whole.
            Peek::Large { .. } => Stored::Full,
        })
    }

    /// How `oid` is stored, but for an entry in the listed packs longer than `most` bytes
    /// only its length and delta base, from its header: what planning needs to pass over a
    /// large entry sent as stored without copying it (it is read when written).
    /// `at`: the pack (of the listed ones) and position of `oid` there, when known.
    fn stored_within(
        &mut self,
        oid: &ObjectId,
        at: Option<(usize, usize)>,
        most: u64,
    ) -> Result<Peek, Error> {
        if let Some(found) = self.stored_in_listed_pack(oid, at, most) {
            return Ok(found);
        }
        let odb = self.objects.odb();
        let Some(location) = odb
            .location_by_oid(oid, &mut self.buf)
            .map_err(Error::odb)?
        else {
            return Ok(Peek::Stored(Stored::Full));
        };
        let Some(entry) = odb.entry_by_location(&location) else {
            return Ok(Peek::Stored(Stored::Full));
        };
        self.read_bytes += entry.data.len() as u64;
        let parsed = match gix_pack::data::Entry::from_bytes(
            &entry.data,
            location.pack_offset,
            self.objects.hash(),
        ) {
            Ok(parsed) => parsed,
            Err(_) => return Ok(Peek::Stored(Stored::Full)),
        };
        let header_len = parsed.header_size();
        Ok(Peek::Stored(match parsed.header {
            Header::Commit | Header::Tree | Header::Blob | Header::Tag => {
                Stored::Base(EntryBytes::Copied(entry.data))
            }
            Header::RefDelta { base_id } => Stored::Delta {
                base: base_id,
                size: parsed.decompressed_size,
                entry: EntryBytes::Copied(entry.data),
                header_len,
            },
            Header::OfsDelta { base_distance } => {
                let Some(base_offset) = location.pack_offset.checked_sub(base_distance) else {
                    return Ok(Peek::Stored(Stored::Full));
                };
                match self.base_at(oid, &location, base_offset) {
                    Some(base) => Stored::Delta {
                        base,
                        size: parsed.decompressed_size,
                        entry: EntryBytes::Copied(entry.data),
                        header_len,
                    },
                    None => Stored::Full,
                }
            }
        }))
    }

    /// How `oid` is stored, read from one of `packs` with the entry's end taken from the
    /// reverse index, so that nothing is inflated (the object database's lookup by id
    /// inflates the entry to learn its length). `None`: not in those packs, or not readable
    /// this way. An entry longer than `most` bytes is read up to its header only.
    fn stored_in_listed_pack(
        &mut self,
        oid: &ObjectId,
        at: Option<(usize, usize)>,
        most: u64,
    ) -> Option<Peek> {
        let hash = self.objects.hash();
        if self.data.len() < self.packs.len() {
            self.data.resize(self.packs.len(), None);
            self.revs.resize(self.packs.len(), None);
        }
        let (k, index, known_at) = match at.filter(|&(k, _)| k < self.packs.len()) {
            Some((k, p)) => {
                let rev = self.revs[k].get_or_insert_with(|| self.rev.get(&self.packs[k], hash));
                (k, rev.index_at(p)?, Some(p))
            }
            None => self
                .packs
                .iter()
                .enumerate()
                .find_map(|(k, p)| crate::packs::lookup(&p.index, oid).map(|i| (k, i, None)))?,
        };
        let pack = &self.packs[k];
        // A position given for `oid` must be of `oid` (else it is looked for by the object
        // database).
        if known_at.is_some() && pack.index.oid_at_index(index) != *oid {
            return None;
        }
        let offset = pack.index.pack_offset_at_index(index);
        // Read from this pack's own mapping: a lookup by id could find the same object in
        // another pack.
        let data = match &self.data[k] {
            Some(data) => std::sync::Arc::clone(data),
            None => {
                let data = pack.data(hash).ok()?;
                self.data[k] = Some(std::sync::Arc::clone(&data));
                data
            }
        };
        let pack_end = data.pack_end() as u64;
        let rev = self.revs[k].get_or_insert_with(|| self.rev.get(pack, hash));
        let p = match known_at {
            Some(p) => p,
            None => rev.pack_position(&pack.index, index)?,
        };
        let end = match p + 1 {
            next if next < rev.len() => rev.offset(pack, next),
            _ => pack_end,
        };
        let len = end.checked_sub(offset)?;
        // A delta's base is most often near it: searched for down from its position.
        let base_at = |distance: u64| {
            let q = rev.position_before(pack, p, offset.checked_sub(distance)?)?;
            Some(pack.index.oid_at_index(rev.at(q)).to_owned())
        };
        let large = len > most;
        // A header is at most ten bytes of type and size, and then a base's distance in at
        // most ten or its id.
        let read = if large { len.min(64) } else { len };
        if end > pack_end {
            return None;
        }
        let bytes = data.entry_slice(offset..offset + read)?;
        let parsed = gix_pack::data::Entry::from_bytes(bytes, offset, hash).ok()?;
        let (header_size, size) = (parsed.header_size() as u64, parsed.decompressed_size);
        // Checked before the entry is copied.
        if !crate::packs::entry_ends_at(&data, offset, header_size, size, end) {
            return None;
        }
        self.read_bytes += bytes.len() as u64;
        // A large entry is read in place, its pages let go of once it is written; the others
        // are copied, and counted.
        let entry = if read >= crate::mapped::Forward::STRETCH
            && let Some(map) = pack.mapped()
        {
            let range = usize::try_from(offset).ok()?..usize::try_from(offset + read).ok()?;
            // The map the pack's data reads from: the same bytes.
            debug_assert_eq!(
                map.get(range.clone()).map(<[u8]>::as_ptr),
                Some(bytes.as_ptr())
            );
            EntryBytes::Mapped { map, range }
        } else {
            EntryBytes::Copied(bytes.to_vec())
        };
        if let EntryBytes::Copied(_) = entry
            && self
                .let_go
                .read(read, u64::from(large && len > HELD_ENTRY_BYTES))
        {
            // Counted by their bytes alone: an answer reads many small entries near each
            // other, and counting the pages mapped around each let go many times an answer,
            // every concurrent answer on the pack mapping them again. But the header of an
            // entry sent as stored but read when written (over 64 KiB, its header read alone
            // while planning) counts with the 64 KiB mapped around it: planning a batch of
            // them read a few bytes of each and mapped all their pages. (Headers of small
            // entries read alone, down a delta chain, count by their bytes.) All the packs
            // read: the count is of all of them.
            self.packs.iter().for_each(crate::packs::StoredPack::let_go);
        }
        if large {
            let base = match parsed.header {
                Header::Commit | Header::Tree | Header::Blob | Header::Tag => None,
                Header::RefDelta { base_id } => Some(base_id),
                Header::OfsDelta { base_distance } => Some(base_at(base_distance)?),
            };
            let whole = parsed
                .header
                .as_kind()
                .map(|kind| (kind, parsed.decompressed_size));
            return Some(Peek::Large { len, base, whole });
        }
        let header_len = parsed.header_size();
        Some(Peek::Stored(match parsed.header {
            Header::Commit | Header::Tree | Header::Blob | Header::Tag => Stored::Base(entry),
            Header::RefDelta { base_id } => Stored::Delta {
                base: base_id,
                size: parsed.decompressed_size,
                entry,
                header_len,
            },
            Header::OfsDelta { base_distance } => {
                let base = base_at(base_distance)?;
                Stored::Delta {
                    base,
                    size: parsed.decompressed_size,
                    entry,
                    header_len,
                }
            }
        }))
    }

    /// The object at `offset` of the pack that holds `known` at `location`.
    fn base_at(
        &mut self,
        known: &ObjectId,
        location: &gix_pack::data::entry::Location,
        offset: u64,
    ) -> Option<ObjectId> {
        let packs = self.packs;
        let index = *self.pack_of_id.entry(location.pack_id).or_insert_with(|| {
            packs.iter().position(|p| {
                p.index
                    .lookup(known)
                    .map(|i| p.index.pack_offset_at_index(i))
                    == Some(location.pack_offset)
            })
        });
        let pack = &packs[index?];
        self.rev
            .get(pack, self.objects.hash())
            .object_at(pack, offset)
    }
}

/// The pack entry (header and zlib data) of `oid` as a whole object.
fn compress_whole(
    objects: &mut Objects,
    oid: &ObjectId,
    zlib: &mut flate2::Compress,
) -> Result<Vec<u8>, Error> {
    let (kind, data) = objects.read(oid)?;
    whole_entry(kind, data, zlib)
}

/// The kind and size of the object whose whole entry is `entry`, from its header.
fn whole_header(entry: &[u8], hash: gix_hash::Kind) -> Option<(Kind, u64)> {
    let parsed = gix_pack::data::Entry::from_bytes(entry, 0, hash).ok()?;
    Some((parsed.header.as_kind()?, parsed.decompressed_size))
}

/// The pack entry of an object of `kind` whose content is `data`, compressed.
pub(crate) fn whole_entry(
    kind: Kind,
    data: &[u8],
    zlib: &mut flate2::Compress,
) -> Result<Vec<u8>, Error> {
    let header = match kind {
        Kind::Commit => Header::Commit,
        Kind::Tree => Header::Tree,
        Kind::Blob => Header::Blob,
        Kind::Tag => Header::Tag,
    };
    let mut entry = Vec::with_capacity(data.len() / 2 + 64);
    header.write_to(data.len() as u64, &mut entry)?;
    deflate(zlib, data, &mut entry)?;
    Ok(entry)
}

/// Append `input`, zlib-compressed, to `out`.
fn deflate(zlib: &mut flate2::Compress, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    // One compressor per thread, reset between objects: setting up zlib's state for every
    // object (hundreds of KiB zeroed each time) cost more than compressing small files.
    zlib.reset();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = zlib.total_in();
        let status = zlib
            .compress_vec(input, out, flate2::FlushCompress::Finish)
            .map_err(|e| Error::Io(io::Error::other(e)))?;
        input = &input[(zlib.total_in() - before) as usize..];
        if status == flate2::Status::StreamEnd {
            return Ok(());
        }
    }
}

/// `redo.oid` as a new delta against the best of `redo.against` when that pays, else whole;
/// and whether a delta was tried (the object read and encoded against a base).
/// Each delta tried takes its object's and its base's sizes from `budget`; none is tried once
/// it is spent.
fn rebuild(
    objects: &mut Objects,
    redo: &Redo,
    zlib: &mut flate2::Compress,
    budget: &AtomicI64,
) -> Result<(Ready, bool), Error> {
    Ok(match best_delta(objects, redo, budget)? {
        Search::Delta { base, delta } => {
            let mut data = Vec::with_capacity(delta.len() / 2 + 64);
            deflate(zlib, &delta, &mut data)?;
            let size = delta.len() as u64;
            (Ready::Delta { base, size, data }, true)
        }
        // Copied as it is stored.
        Search::Whole(read) if redo.stored_whole => (Ready::AsStored, read.is_some()),
        // The object as the search read it: resolving its stored chain again cost as much
        // as the search's own reading.
        Search::Whole(Some((kind, target))) => {
            (Ready::Whole(whole_entry(kind, &target, zlib)?), true)
        }
        Search::Whole(None) => (
            Ready::Whole(compress_whole(objects, &redo.oid, zlib)?),
            false,
        ),
    })
}

/// What a search for a new delta found.
enum Search {
    Delta {
        base: ObjectId,
        delta: Vec<u8>,
    },
    /// No delta that pays: the object goes whole (its kind and content, if the search read
    /// them: then a delta was tried).
    Whole(Option<(Kind, Vec<u8>)>),
}

/// The smallest delta of `redo.oid` against one of `redo.against`, if one is of one kind with
/// it, of sizes that can make a good delta, and less than half of the object (git's own bar
/// where there was none); else the object whole, with its content if a try read it.
fn best_delta(objects: &mut Objects, redo: &Redo, budget: &AtomicI64) -> Result<Search, Error> {
    if redo.against.is_empty() {
        return Ok(Search::Whole(None));
    }
    // Sizes first, from the headers: nothing is inflated for a pair that cannot do.
    let Some((kind, target_size)) = objects.header(&redo.oid)? else {
        return Ok(Search::Whole(None));
    };
    if !(MIN_DELTA_OBJECT..=MAX_DELTA_OBJECT).contains(&target_size) {
        return Ok(Search::Whole(None));
    }
    let tries = if target_size > LARGE_DELTA_OBJECT {
        1
    } else {
        redo.against.len()
    };
    // What a delta may take at most: under half the object (git's bar where there was no
    // delta), then under the best one found.
    let mut limit = usize::try_from(target_size / 2)
        .unwrap_or(usize::MAX)
        .saturating_sub(20);
    let mut target: Option<(Kind, Vec<u8>)> = None;
    let mut best: Option<(ObjectId, Vec<u8>)> = None;
    for base in redo.against.iter().take(tries) {
        let Some((base_kind, source_size)) = objects.header(base)? else {
            continue;
        };
        // A delta's object has its base's kind. Like git, no delta from a base 32 times
        // larger, nor (git's rule too) from one smaller by at least the limit: a delta that
        // copies each byte of its base once must then insert more than it may take. An
        // object that repeats its base would make one, and is sent whole, as git sends it.
        if kind != base_kind
            || source_size > MAX_DELTA_OBJECT
            || source_size / 32 > target_size
            || usize::try_from(target_size.saturating_sub(source_size))
                .map_or(true, |grown| grown >= limit)
        {
            continue;
        }
        let cost = i64::try_from(source_size + target_size).unwrap_or(i64::MAX);
        if budget.fetch_sub(cost, Ordering::Relaxed) < cost {
            break;
        }
        if target.is_none() {
            let (kind, data) = objects.read(&redo.oid)?;
            target = Some((kind, data.to_vec()));
        }
        let target = target.as_ref().map_or(&[][..], |(_, data)| data);
        let source = match redo.read.iter().find(|(read, _)| read == base) {
            Some((_, content)) => &content[..],
            None => objects.read(base)?.1,
        };
        let Some(index) = crate::delta::SourceIndex::new(source) else {
            continue;
        };
        if let Some(delta) = crate::delta::encode(&index, target, limit) {
            let small = delta.len() * 16 <= target.len();
            limit = delta.len().saturating_sub(1);
            best = Some((*base, delta));
            if small {
                break;
            }
        }
    }
    Ok(match best {
        Some((base, delta)) => Search::Delta { base, delta },
        None => Search::Whole(target),
    })
}

pub(crate) fn compressor(level: u32) -> flate2::Compress {
    flate2::Compress::new(flate2::Compression::new(level), true)
}

/// Objects made ready by one thread, or why it stopped.
type Lane = Result<Vec<(ObjectId, Ready)>, Error>;

/// A compression lane: an object handle and a compressor (zeroed state of a few hundred KiB
/// when made), moved to a thread for a batch and back, kept for the whole pack.
type LaneState = (Objects, flate2::Compress);

/// A batch's objects being made again on one lane, or made already.
enum Rebuilding<'scope> {
    Running(std::thread::ScopedJoinHandle<'scope, (LaneState, Lane)>),
    Done(Vec<(ObjectId, Ready)>),
    /// The batch's queue, for the writing thread to take from when it waits.
    Shared(std::sync::Arc<Jobs>),
}

/// A batch's objects to make again, shared by its lanes: each takes the next not yet taken,
/// so that one large object does not leave the others idle.
struct Jobs {
    redo: Vec<Redo>,
    next: std::sync::atomic::AtomicUsize,
    /// Objects made for earlier answers, and where those made now are kept.
    remade: Option<std::sync::Arc<crate::Remade>>,
    /// The zlib level they are made at.
    level: u32,
}

impl Jobs {
    fn work(
        &self,
        objects: &mut Objects,
        zlib: &mut flate2::Compress,
        budget: &Budgets,
        abandon: &std::sync::atomic::AtomicBool,
    ) -> Lane {
        let mut made = Vec::new();
        loop {
            if abandon.load(Ordering::Relaxed) {
                return Ok(made);
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(redo) = self.redo.get(i) else {
                return Ok(made);
            };
            made.push((redo.oid, self.make(objects, redo, zlib, budget)?));
        }
    }

    /// `redo` made, or taken from the store of objects made before.
    fn make(
        &self,
        objects: &mut Objects,
        redo: &Redo,
        zlib: &mut flate2::Compress,
        budgets: &Budgets,
    ) -> Result<Ready, Error> {
        // A try by path is counted when a delta was tried, now or for an answer before (an
        // object stored whole goes into the store only then): the same answer counts the same
        // tries whether it finds them there or not.
        let tally = |ready: &Ready| {
            if redo.stored_whole
                && let Some(kind) = redo.kind
            {
                let paid = matches!(ready, Ready::Delta { .. });
                budgets.path_tries.record(kind, paid);
            }
        };
        let budget = budgets.of(redo);
        if let Some(remade) = &self.remade
            && let Some(ready) = remade.get(&redo.oid, self.level, &redo.against, redo.stored_whole)
        {
            tally(&ready);
            return Ok(ready);
        }
        let (ready, tried) = rebuild(objects, redo, zlib, budget)?;
        if tried {
            tally(&ready);
        }
        // Kept only if no delta was left untried for want of budget (a failed attempt leaves
        // it below zero for good): otherwise a later answer with budget to spare would be
        // given what this one settled for. An object stored whole that no delta was tried for
        // (its base of another kind, or of sizes that cannot do) is not kept: nothing was
        // spent on it.
        if let Some(remade) = &self.remade
            && budget.load(Ordering::Relaxed) >= 0
            && (tried || !redo.stored_whole)
        {
            remade.put(
                &redo.oid,
                self.level,
                &redo.against,
                redo.stored_whole,
                &ready,
            );
        }
        Ok(ready)
    }
}

/// The base an object is written after, if it is one of the pack's: the one it was made a
/// delta of, else (unless it was made whole) the one it is stored a delta of.
fn base_first(ready: Option<&Ready>, stored_base: Option<ObjectId>) -> Option<ObjectId> {
    match ready {
        Some(Ready::Delta { base, .. }) => Some(*base),
        Some(Ready::Whole(_)) => None,
        Some(Ready::AsStored) | None => stored_base,
    }
}

/// Wait for a batch's lanes, take them back into `lanes`, and return what they made.
fn finish_rebuild(
    running: Vec<Rebuilding<'_>>,
    lanes: &mut Vec<LaneState>,
) -> Result<Vec<(ObjectId, Ready)>, Error> {
    let mut out = Vec::new();
    let mut failed = None;
    for lane in running {
        let made = match lane {
            Rebuilding::Done(made) => Ok(made),
            Rebuilding::Shared(_) => Ok(Vec::new()),
            Rebuilding::Running(handle) => match handle.join() {
                Ok((state, made)) => {
                    lanes.push(state);
                    made
                }
                Err(_) => Err(Error::Odb {
                    message: "compression thread panicked".into(),
                }),
            },
        };
        // Every lane is waited for (and taken back) before an error is returned.
        match made {
            Ok(made) => out.extend(made),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use gix_hash::ObjectId;

    use super::{Redo, Search, best_delta};
    use crate::Repository;

    /// `content` stored as a loose object of the repository at `path`; its id.
    fn store(path: &std::path::Path, content: &str) -> ObjectId {
        let id = gitcache_testkit::git::write_blob(path, content.as_bytes());
        ObjectId::from_hex(id.as_bytes()).unwrap()
    }

    /// Two versions of a file, their ids, and the repository (at `r.git` in the directory).
    fn versions() -> (tempfile::TempDir, Repository, ObjectId, ObjectId) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        gitcache_testkit::git::git_stdout(
            dir.path(),
            &["init", "-q", "--bare", path.to_str().unwrap()],
        );
        let old = store(&path, &lines(0..300));
        let new = store(&path, &format!("{}one more line\n", lines(0..300)));
        let repo = Repository::open(&path).unwrap();
        (dir, repo, old, new)
    }

    fn lines(numbers: impl Iterator<Item = u64>) -> String {
        numbers.map(|i| format!("line {i}\n")).collect()
    }

    /// An answer lets go of the pack's pages as it copies large stretches of it: in a clone
    /// (runs of the pack copied) and a depth-1 fetch (entry by entry) of 24 MiB of
    /// incompressible blobs, about a MiB of the pack is resident at a time, where without
    /// letting go all of it was (25 MB), and letting go of the whole map every
    /// [`super::LET_GO_EVERY`] (8 MiB) copied kept up to 10 MiB. In 64 KiB blobs, a clone
    /// (one run of the whole pack) keeps as little: the run is written as it grows, where it
    /// was written at its end, the pages its entries' headers were read from resident until
    /// then (24 MiB); a depth-1 answer lets go of the whole map every 8 MiB of small entries.
    #[cfg(target_os = "linux")]
    #[test]
    fn answers_let_go_of_the_pages_they_copied() {
        for (blob, depth1_most) in [(1 << 20, 6 << 20), (64 << 10, 12 << 20)] {
            let (_dir, repo, want) = blobs_repo(24 << 20, blob);
            for deepen in [None, Some(1)] {
                let most = match deepen {
                    None => 6 << 20,
                    Some(_) => depth1_most,
                };
                let fetch = gitcache_protocol::request::Fetch {
                    wants: vec![want],
                    deepen,
                    done: true,
                    ofs_delta: true,
                    no_progress: true,
                    ..Default::default()
                };
                let planned =
                    crate::plan(&repo, &fetch, repo.object_format(), &Default::default()).unwrap();
                // The pack's map, shared by every reader of the handle: how much of it is
                // resident is looked at as the answer is written.
                let data = repo.listed_packs()[0].data(gix_hash::Kind::Sha1).unwrap();
                let mut sent = Sampled {
                    at: data.entry_slice(0..1).unwrap().as_ptr(),
                    bytes: Vec::new(),
                    most: 0,
                };
                let stats = planned.write_to(&mut sent).unwrap();
                // The clone copies runs of the pack (its bitmaps say what it holds), the
                // depth-1 answer entry by entry.
                let blobs = u32::try_from((24 << 20) / blob).unwrap();
                match deepen {
                    None => assert!(stats.pack_reused >= blobs, "{stats:?}"),
                    Some(_) => assert!(stats.stored_read_bytes > 24 << 20, "{stats:?}"),
                }
                let len = sent.bytes.len();
                assert!(len > 24 << 20, "{deepen:?}: {len} bytes sent");
                // The stretch copied since the last letting go (a MiB) and the piece or entry
                // being copied (a MiB), in the folios the file's pages are mapped in (up to 2
                // MiB each on ext4); for small entries one at a time, the 8 MiB between two
                // lettings go of the whole map.
                assert!(
                    sent.most <= most,
                    "{blob}-byte blobs, {deepen:?}: {} bytes of the pack resident at most",
                    sent.most
                );
            }
        }
    }

    /// A repository of `total` bytes of incompressible blobs of `blob` bytes each, packed with
    /// bitmaps, and the commit holding them (a later commit is in the pack too, so that
    /// answers for it are not the pack sent as it is).
    #[cfg(target_os = "linux")]
    fn blobs_repo(total: usize, blob: usize) -> (tempfile::TempDir, Repository, ObjectId) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        std::fs::create_dir(&work).unwrap();
        let git = |args: &[&str]| gitcache_testkit::git::git_stdout(&work, args);
        git(&["init", "-q"]);
        let mut rng = gitcache_testkit::repo::Rng::new(5);
        for i in 0..total / blob {
            std::fs::write(work.join(format!("{i}.bin")), rng.bytes(blob)).unwrap();
        }
        let commit = |message: &str| {
            git(&["add", "-A"]);
            let who = ["-c", "user.name=A", "-c", "user.email=a@example.com"];
            git(&[&who[..], &["commit", "-qm", message]].concat());
        };
        commit("blobs");
        std::fs::write(work.join("later"), "later\n").unwrap();
        commit("later");
        git(&["repack", "-adqb"]);
        let want = ObjectId::from_hex(git(&["rev-parse", "HEAD~1"]).trim().as_bytes()).unwrap();
        let repo = Repository::open(work.join(".git")).unwrap();
        (dir, repo, want)
    }

    /// A writer keeping what it is given and the most of a map found resident at its writes.
    struct Sampled {
        at: *const u8,
        bytes: Vec<u8>,
        most: usize,
    }

    impl std::io::Write for Sampled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.most = self.most.max(crate::mapped::resident(self.at));
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn checksums_are_the_object_formats_hashes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for kind in [gix_hash::Kind::Sha1, gix_hash::Kind::Sha256] {
            let mut ours = super::Checksum::new(kind);
            ours.update(&data[..12_345]);
            ours.update(&data[12_345..]);
            let mut theirs = gix_hash::hasher(kind);
            theirs.update(&data);
            assert_eq!(ours.finish().unwrap(), theirs.try_finalize().unwrap());
        }
    }

    #[test]
    fn new_deltas_stop_when_their_budget_is_spent() {
        let (_dir, repo, old, new) = versions();
        let mut objects = repo.objects();
        let redo = Redo {
            oid: new,
            against: vec![old],
            stored_whole: false,
            kind: None,
            read: Vec::new(),
        };
        let budget = AtomicI64::new(1 << 20);
        let Search::Delta { base, delta } = best_delta(&mut objects, &redo, &budget).unwrap()
        else {
            panic!("no delta of an object one line longer than its base");
        };
        assert_eq!(base, old);
        assert!(delta.len() < 64, "{} bytes", delta.len());
        let spent = (1 << 20) - budget.load(Ordering::Relaxed);
        assert!(spent > 2 * 2000, "both sizes counted: {spent}");
        // Less left than the pair's sizes: nothing is tried.
        let budget = AtomicI64::new(100);
        assert!(matches!(
            best_delta(&mut objects, &redo, &budget).unwrap(),
            Search::Whole(None)
        ));
    }

    /// The newer of [`versions`] to make again against a base of `content` alone.
    fn against(content: &str) -> (tempfile::TempDir, Repository, Redo) {
        let (dir, _, _, new) = versions();
        let path = dir.path().join("r.git");
        let base = store(&path, content);
        let redo = Redo {
            oid: new,
            against: vec![base],
            stored_whole: false,
            kind: None,
            read: Vec::new(),
        };
        (dir, Repository::open(&path).unwrap(), redo)
    }

    #[test]
    fn a_base_whose_object_adds_more_than_the_limit_is_not_read() {
        // 20 of the object's 301 lines: the 281 others would go in as literals, more than
        // half the object.
        let (_dir, repo, redo) = against(&lines(0..20));
        let mut objects = repo.objects();
        let budget = AtomicI64::new(1 << 20);
        assert!(matches!(
            best_delta(&mut objects, &redo, &budget).unwrap(),
            Search::Whole(None)
        ));
        assert_eq!(budget.load(Ordering::Relaxed), 1 << 20, "nothing was tried");
    }

    #[test]
    fn an_object_no_base_pays_for_goes_whole_as_the_search_read_it() {
        // As long, nothing in common beyond the word.
        let (_dir, repo, redo) = against(&lines((0..300).map(|i| i * 7_919 + 1_000_003)));
        let mut objects = repo.objects();
        let new = redo.oid;
        let budget = AtomicI64::new(1 << 20);
        let Search::Whole(Some((kind, read))) = best_delta(&mut objects, &redo, &budget).unwrap()
        else {
            panic!("a delta against an unrelated base, or the object not read");
        };
        assert!(
            budget.load(Ordering::Relaxed) < 1 << 20,
            "a delta was tried"
        );
        assert_eq!(kind, gix_object::Kind::Blob);
        assert_eq!(read, objects.read(&new).unwrap().1);
        // The entry made from what the search read is the one made by reading again.
        let mut zlib = super::compressor(3);
        let again = super::compress_whole(&mut objects, &new, &mut zlib).unwrap();
        let (made, tried) = super::rebuild(&mut objects, &redo, &mut zlib, &budget).unwrap();
        assert!(matches!(made, super::Ready::Whole(entry) if entry == again));
        assert!(tried, "a delta was tried");
    }
}
