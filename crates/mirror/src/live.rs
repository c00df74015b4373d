//! A pack a mirror fetches, readable while it arrives, before it is taken in.
//!
//! A mirror made from nothing fetches the closure of the upstream's tips in one pack, and a
//! clone of the same tips is answered by exactly that pack. A fetch of commits a push just
//! made, with haves the mirror holds, is answered by the pack the mirror fetches ahead of its
//! refs when that pack is asked for with the client's own wants, haves and options. Its bytes
//! are written to a file as they arrive; a [`LivePack`] lets a reader follow that file, so
//! that the client that asked gets the pack as the upstream sends it, rather than after the
//! whole pack is indexed and checked (which, for a large repository, takes longer than the
//! download). The mirror still takes the pack in, and checks it, as it would have.
//!
//! ```
//! use gitcache_mirror::live::{Asked, Board, Progress};
//! use std::io::Write;
//! use std::time::Duration;
//!
//! let board = Board::default();
//! let dir = tempfile::tempdir().unwrap();
//! let mut file = std::fs::File::create(dir.path().join("received.pack")).unwrap();
//! let reader = std::fs::File::open(dir.path().join("received.pack")).unwrap();
//! let publisher = board.announce(Asked::first(vec![]), gix_hash::Kind::Sha1, reader);
//! let pack = board.current().unwrap();
//!
//! file.write_all(b"PACK").unwrap();
//! publisher.arrived(4);
//! assert_eq!(pack.wait_past(0, Duration::from_secs(1)), Progress::Arriving(4));
//! let mut buf = [0; 4];
//! assert_eq!(pack.read_at(&mut buf, 0).unwrap(), 4);
//! assert_eq!(&buf, b"PACK");
//! drop(publisher); // never said whole: a failure
//! assert!(matches!(pack.wait_past(4, Duration::ZERO), Progress::Failed(_)));
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gix_hash::{Kind as HashKind, ObjectId};

/// How far a live pack has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The first this many bytes of the file may be read; more are coming.
    Arriving(u64),
    /// The whole pack, this many bytes, trailer included, is in the file as received.
    Whole(u64),
    /// Receiving it failed (why, in words a client may be shown): the bytes read so far
    /// are no pack.
    Failed(String),
}

/// What a pack was asked of the upstream with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    /// The wants.
    pub wants: Vec<ObjectId>,
    /// The haves (none for a mirror's first pack).
    pub haves: Vec<ObjectId>,
    /// Whether deltas on objects the haves reach may come (`thin-pack`).
    pub thin_pack: bool,
    /// Whether tags pointing into the pack come with it (`include-tag`).
    pub include_tag: bool,
}

impl Asked {
    /// A mirror's first pack: the closure of `wants`, nothing had.
    pub fn first(wants: Vec<ObjectId>) -> Asked {
        Asked {
            wants,
            ..Asked::default()
        }
    }
}

/// `ids` sorted, each once.
fn sorted(ids: &[ObjectId]) -> Vec<ObjectId> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A pack while it is received: what it was asked for with and its bytes so far.
#[derive(Debug)]
pub struct LivePack {
    /// What the pack was asked for with, the wants and haves sorted, each once.
    asked: Asked,
    format: HashKind,
    /// The file the pack is written to (read at offsets: renaming it or removing it, as
    /// taking the pack in does, changes nothing for a reader holding it).
    file: std::fs::File,
    /// The pack's header as received, once it has arrived: completing a thin pack writes its
    /// count anew in the file.
    head: std::sync::OnceLock<Vec<u8>>,
    /// Where the entries end and the trailer as received, once the pack is whole: completing
    /// a thin pack writes bases and a new trailer from there on.
    trailer: std::sync::OnceLock<(u64, Vec<u8>)>,
    /// The kind of each entry, once a first pack is whole as received.
    kinds: std::sync::OnceLock<EntryKinds>,
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Told of every change too, for readers waiting in a task.
    told: tokio::sync::Notify,
    /// Readings of it for the objects found early under way (see [`LivePack::read_early`]).
    read_early: std::sync::atomic::AtomicUsize,
    /// Blobs stored whole its receiving hashed while such a reading ran, by offset, in pack
    /// order, for the reading to take instead of inflating and hashing them again (see
    /// [`LivePack::tell`]).
    blobs_told: Mutex<ToldBlobs>,
    /// Whether `blobs_told` has room for more, waiting and in all (see
    /// [`LivePack::wants_told`]): read without its lock, at each entry received.
    told_room: std::sync::atomic::AtomicBool,
    /// How far into the pack such a reading has come (see [`LivePack::reading_reached`]).
    reading_at: std::sync::atomic::AtomicU64,
    /// Whether such a reading ever began (see [`LivePack::read_began`]).
    read_began: std::sync::atomic::AtomicBool,
}

/// What [`LivePack::tell`] holds.
#[derive(Debug, Default)]
struct ToldBlobs {
    /// Not taken yet, in pack order.
    blobs: std::collections::VecDeque<(u64, gitcache_pack::incoming::Told)>,
    /// Ever told.
    count: usize,
    /// Ever taken by a reading.
    taken: usize,
}

/// The most blobs told and not taken yet (about 50 bytes each): a reading that far behind
/// the receiving hashes what comes next itself.
const MOST_TOLD_WAITING: usize = 1 << 16;

/// The most blobs told in all: each is also kept for the indexing not to hash it again,
/// about 100 bytes with its map's room (a pack of small blobs could otherwise hold hundreds
/// of megabytes so, where the pack's own entries take 15 bytes each); the reading inflates
/// those past it itself.
const MOST_TOLD: usize = 1 << 18;

/// A reading of a [`LivePack`] for the objects found early, under way until dropped.
#[derive(Debug)]
pub struct ReadEarly<'a>(&'a LivePack);

impl Drop for ReadEarly<'_> {
    fn drop(&mut self) {
        let pack = self.0;
        if pack
            .read_early
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
            == 1
        {
            // What was told and not taken is let go; a later reading starts from the start.
            let mut told = pack.lock_told();
            told.blobs = Default::default();
            pack.note_room(&told);
            pack.reading_at
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl LivePack {
    /// A reading of the pack for the objects found early starts; it ends when what this
    /// returns is dropped. Its receiving steps behind answers meanwhile (see
    /// [`ingest_pack_announced`](crate::ingest::ingest_pack_announced)).
    pub fn read_early(&self) -> ReadEarly<'_> {
        self.read_early
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.read_began
            .store(true, std::sync::atomic::Ordering::Relaxed);
        ReadEarly(self)
    }

    /// Whether a reading for the objects found early ever began.
    pub fn read_began(&self) -> bool {
        self.read_began.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a reading for the objects found early is under way.
    pub fn is_read_early(&self) -> bool {
        self.read_early.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Whether the receiving is to hash the blob stored whole that arrives at `offset` and
    /// [`tell`](Self::tell) it: a reading for the objects found early is under way, has not
    /// come that far (see [`reading_reached`](Self::reading_reached)), and has taken enough
    /// of what was told (see [`MOST_TOLD_WAITING`], [`MOST_TOLD`]). A reading close behind
    /// still takes nearly every blob so told: it reads only what was written, which the
    /// receiving parsed first.
    pub(crate) fn wants_told(&self, offset: u64) -> bool {
        self.is_read_early()
            && offset > self.reading_at.load(std::sync::atomic::Ordering::Relaxed)
            && self.told_room.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether more may be told, as `told` now is (see [`wants_told`](Self::wants_told)).
    fn note_room(&self, told: &ToldBlobs) {
        let room = told.blobs.len() < MOST_TOLD_WAITING && told.count < MOST_TOLD;
        self.told_room
            .store(room, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tell the readings of the pack for the objects found early what the receiving learned
    /// of the blob stored whole at `offset`, after those told before (see
    /// [`gitcache_pack::early::Tips::told_by`]).
    pub(crate) fn tell(&self, offset: u64, blob: gitcache_pack::incoming::Told) {
        let mut told = self.lock_told();
        if told.blobs.back().is_none_or(|&(last, _)| last < offset) {
            told.blobs.push_back((offset, blob));
            told.count += 1;
            self.note_room(&told);
        }
    }

    /// The reading for the objects found early has come to `offset` in the pack: the blobs
    /// that arrive before it are not told of (`u64::MAX`: none, the reading is over).
    pub fn reading_reached(&self, offset: u64) {
        (self.reading_at).fetch_max(offset, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the receiving told of the blob stored whole at `offset`, taken (what was told of
    /// blobs before it is let go: a reading goes through the pack in order, and there is one
    /// at a time). `None` too when the receiving holds the list (stepped behind answers, it
    /// may be off the cores a while): the reading inflates that blob itself.
    pub fn told_at(&self, offset: u64) -> Option<gitcache_pack::incoming::Told> {
        let mut told = match self.blobs_told.try_lock() {
            Ok(told) => told,
            Err(std::sync::TryLockError::Poisoned(told)) => told.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let mut found = None;
        while let Some(&(at, blob)) = told.blobs.front() {
            if at > offset {
                break;
            }
            told.blobs.pop_front();
            if at == offset {
                told.taken += 1;
                found = Some(blob);
                break;
            }
        }
        self.note_room(&told);
        found
    }

    /// How many blobs the receiving told of.
    pub fn told_count(&self) -> usize {
        self.lock_told().count
    }

    /// How many blobs told of a reading took.
    pub fn told_taken(&self) -> usize {
        self.lock_told().taken
    }

    fn lock_told(&self) -> std::sync::MutexGuard<'_, ToldBlobs> {
        self.blobs_told.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the pack answers a clone of exactly `wants` (in any order, repeats aside): a
    /// mirror's first pack, asked for with no haves.
    pub fn answers(&self, wants: &[ObjectId]) -> bool {
        self.asked.haves.is_empty() && sorted(wants) == self.asked.wants
    }

    /// Whether the pack answers a fetch of exactly `wants` from a client that has `haves`, asks
    /// for a thin pack or not (`thin_pack`) and for the tags pointing into it or not
    /// (`include_tag`): a pack asked for with the same wants, with haves among `haves` (the
    /// client then has all they reach, which the pack leaves out), thin only when the
    /// client takes thin packs, with the tags when the client wants them.
    pub fn answers_fetch(
        &self,
        wants: &[ObjectId],
        haves: &[ObjectId],
        thin_pack: bool,
        include_tag: bool,
    ) -> bool {
        let asked = &self.asked;
        !asked.haves.is_empty()
            && sorted(wants) == asked.wants
            && asked.haves.iter().all(|h| haves.contains(h))
            && (thin_pack || !asked.thin_pack)
            && (asked.include_tag || !include_tag)
    }

    /// The haves the pack was asked for with, sorted, each once (objects the mirror holds;
    /// the pack leaves out what they reach).
    pub fn haves(&self) -> &[ObjectId] {
        &self.asked.haves
    }

    /// The object format of the pack.
    pub fn object_format(&self) -> HashKind {
        self.format
    }

    /// The kind of each entry, once a mirror's first pack is whole: only for a pack with no
    /// delta naming its base by id (one that has any is not given kinds).
    pub fn entry_kinds(&self) -> Option<&EntryKinds> {
        self.kinds.get()
    }

    /// Read the pack's bytes as received at `offset` into `buf` (only what
    /// [`wait_past`](Self::wait_past) said has arrived is meaningful).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut buf = buf;
        if let Some((end, trailer)) = self.trailer.get() {
            if let Some(into) = offset.checked_sub(*end) {
                // The trailer, from what was received (the file may hold bases there now).
                let from = usize::try_from(into).map_or(trailer.len(), |i| i.min(trailer.len()));
                let n = buf.len().min(trailer.len() - from);
                buf[..n].copy_from_slice(&trailer[from..from + n]);
                return Ok(n);
            }
            let before = usize::try_from(end - offset).unwrap_or(usize::MAX);
            let len = buf.len().min(before);
            buf = &mut buf[..len];
        }
        let read = std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)?;
        if let Some(head) = self.head.get()
            && let Ok(start) = usize::try_from(offset)
            && start < head.len()
        {
            // The header as received (the file may hold another count there now).
            let n = read.min(head.len() - start);
            buf[..n].copy_from_slice(&head[start..start + n]);
        }
        Ok(read)
    }

    /// How far the pack has arrived, once more than `offset` bytes have, or it ended, or
    /// `most` has passed (then as it is).
    pub fn wait_past(&self, offset: u64, most: Duration) -> Progress {
        let deadline = Instant::now() + most;
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*progress {
                Progress::Arriving(n) if *n <= offset => {}
                other => return other.clone(),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return progress.clone();
            }
            progress = self
                .changed
                .wait_timeout(progress, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// How far the pack has arrived, once more than `offset` bytes have or it ended: as
    /// [`wait_past`](Self::wait_past), for a task (no bound: a pack ends, whole or failed,
    /// when its refresh does).
    pub async fn arrived_past(&self, offset: u64) -> Progress {
        loop {
            let told = self.told.notified();
            tokio::pin!(told);
            // Listening before looking: a change in between still wakes this.
            told.as_mut().enable();
            match self.progress() {
                Progress::Arriving(n) if n <= offset => {}
                other => return other,
            }
            told.await;
        }
    }

    /// How far the pack has arrived now.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, to: Progress) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        // An end is final.
        if matches!(*progress, Progress::Arriving(_)) {
            *progress = to;
            self.changed.notify_all();
            self.told.notify_waiters();
        }
    }
}

/// Turns at some work of which only so many may run at once in a process (each holds memory
/// the others do not share): taken while one is free, given back when dropped.
#[derive(Debug)]
pub struct Turns {
    running: std::sync::atomic::AtomicUsize,
    most: usize,
}

/// One of the [`Turns`], given back when dropped.
#[derive(Debug)]
pub struct Turn(&'static Turns);

impl Turns {
    /// At most `most` turns at once.
    pub const fn new(most: usize) -> Turns {
        Turns {
            running: std::sync::atomic::AtomicUsize::new(0),
            most,
        }
    }

    /// A turn, if one is free.
    pub fn take(&'static self) -> Option<Turn> {
        use std::sync::atomic::Ordering;
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < self.most).then_some(running + 1)
            })
            .ok()
            .map(|_| Turn(self))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        (self.0.running).fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The entries of a mirror's first pack, once it is whole: where each lies and what kind of
/// object it holds. Enough to send a clone of what the pack was fetched for with a filter
/// that leaves out kinds (`blob:none`, `tree:0`) by copying the other entries, before the
/// pack is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKinds {
    /// Where each entry starts, rising; each ends where the next starts, the last at `end`.
    pub offsets: Vec<u64>,
    /// The kind of each entry's object (a delta's is its base's); `None` for a delta whose
    /// base is not an entry before it.
    pub kinds: Vec<Option<gix_object::Kind>>,
    /// Where the entries end (the trailer follows).
    pub end: u64,
    /// Whether every tag is stored whole and tags a commit or a tag: a tag of a tree or a
    /// blob sends that object with some filters, so that a filtered clone is not only a
    /// choice of kinds.
    pub tags_on_commits: bool,
    /// Whether every want the pack was fetched for is a commit or a tag stored whole in it:
    /// a filter leaves out no object wanted by name (a ref of a tree or a blob), so that
    /// a filtered clone is a choice of kinds only then.
    pub wants_commits_or_tags: bool,
}

impl EntryKinds {
    /// Whether a clone of the pack's wants with a filter that leaves out kinds is sent the
    /// entries of the kinds it keeps, and nothing else: every want a commit or a tag, every
    /// tag tagging a commit or a tag.
    pub fn filterable(&self) -> bool {
        self.tags_on_commits && self.wants_commits_or_tags
    }

    /// The entries of the kinds `keep` takes, each as where it starts and where it ends;
    /// `None` when some entry's kind is not known (a delta by id).
    pub fn taken(&self, keep: impl Fn(gix_object::Kind) -> bool) -> Option<Vec<(u64, u64)>> {
        let ends = self.offsets.iter().skip(1).chain([&self.end]);
        let mut taken = Vec::new();
        for ((at, end), kind) in self.offsets.iter().zip(ends).zip(&self.kinds) {
            if keep((*kind)?) {
                taken.push((*at, *end));
            }
        }
        Some(taken)
    }
}

/// The receiving end's hold on a [`LivePack`]: it says how far the pack has arrived, and
/// that it is whole. Dropped before that, the pack failed.
#[derive(Debug)]
pub struct Publisher {
    pack: Arc<LivePack>,
}

impl Publisher {
    /// The pack announced.
    pub(crate) fn pack(&self) -> &Arc<LivePack> {
        &self.pack
    }

    /// The pack's header as received (its first 12 bytes): readers are given these bytes
    /// from here on, whatever the file holds there. Said before more than 12 bytes are said
    /// to have arrived, and once.
    pub fn received_head(&self, head: &[u8]) {
        let _ = self.pack.head.set(head.to_vec());
    }

    /// The first `bytes` of the file may be read now.
    pub fn arrived(&self, bytes: u64) {
        self.pack.set(Progress::Arriving(bytes));
    }

    /// The whole pack is in the file: `bytes`, trailer included.
    pub fn whole(self, bytes: u64) {
        self.pack.set(Progress::Whole(bytes));
    }

    /// The whole pack arrived: its entries, in the file up to `end`, then `trailer`, which
    /// readers are given from memory (completing a thin pack writes bases after `end`).
    pub fn whole_as_received(self, end: u64, trailer: &[u8]) {
        let _ = self.pack.trailer.set((end, trailer.to_vec()));
        self.pack.set(Progress::Whole(end + trailer.len() as u64));
    }

    /// The kind of each entry of the pack, said before it is said to be [whole](Self::whole),
    /// and once.
    pub fn entry_kinds(&self, kinds: EntryKinds) {
        let _ = self.pack.kinds.set(kinds);
    }

    /// Receiving failed: `why`.
    pub fn failed(self, why: impl Into<String>) {
        self.pack.set(Progress::Failed(why.into()));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.pack.set(Progress::Failed(
            "the upstream's pack was not received whole".into(),
        ));
    }
}

/// Where a mirror's pack is announced while it arrives (one at a time a mirror), or its first
/// pack said to be coming from elsewhere.
#[derive(Debug, Default)]
pub struct Board {
    posted: Mutex<Posted>,
    told: tokio::sync::Notify,
}

/// What a board says now.
#[derive(Debug, Default)]
struct Posted {
    /// The pack arriving now.
    pack: Option<Arc<LivePack>>,
    /// The refresh under way brings the mirror from elsewhere (another instance fetches it,
    /// or it is copied from a shared store): no pack is announced here meanwhile.
    elsewhere: bool,
    /// Packs taken into the mirror by its refreshes so far, before their refs were written
    /// (see [`Board::landed`]); never reset.
    landings: u64,
    /// The objects of the first pack found as it arrived (see [`Early`]).
    early: Option<Arc<Early>>,
    /// A fetch waits for them: they are looked for (not otherwise, a second decoding of
    /// the pack as it arrives).
    early_wanted: bool,
    /// What the fetches waiting for them want (the first [`MOST_EARLY_WANTS`], and of those
    /// with haves, the first [`MOST_EARLY_HAVES`] haves): the scan may stop once it has found
    /// their shallow closures, and the history between their wants and haves.
    early_wants: gitcache_pack::early::Wants,
    /// What the reading of the first pack for the objects found early walked (see
    /// [`Board::walking`]).
    walks: Option<Arc<gitcache_pack::early::Walks>>,
}

/// The most wants of waiting fetches a board keeps for the objects found early.
const MOST_EARLY_WANTS: usize = 64;

/// The most wants of one fetch a board keeps for the objects found early: one fetch of many
/// (or of ids made up) does not take the room of all the others.
const MOST_EARLY_WANTS_EACH: usize = 8;

/// The deepest shallow clone the objects found early may answer (deeper ones wait for the
/// mirror): its commits come from the room the reading's walks have
/// ([`gitcache_pack::early::MOST_WALKED`]), shared with the other fetches waiting.
pub const MOST_EARLY_DEPTH: u32 = 128;

/// The most haves of waiting fetches a board keeps for the objects found early.
const MOST_EARLY_HAVES: usize = 64;

/// The most haves of one fetch a board keeps for the objects found early (a client's first
/// request lists 16 at most, its newest commits).
const MOST_EARLY_HAVES_EACH: usize = 16;

/// The most haves of a fetch whose history is looked at for commits the walks of the
/// reading had no room for ([`Board::past_the_walk`]): each look makes a set of them.
const MOST_CUT_HAVES: usize = 256;

/// A repository of the objects of a mirror's first pack found as the pack arrived
/// ([`gitcache_pack::early`]), with the refs the mirror will have: what needs only those
/// objects (a shallow clone of the tips, most often) may be answered from it before the pack
/// is indexed. Its files are removed once the last holder lets go of it (a crash leaves them
/// to [`crate::ingest::remove_leftovers`]).
#[derive(Debug)]
pub struct Early {
    repo: Arc<gitcache_pack::Repository>,
    found: usize,
    /// The commits found that the copy does not hold (see
    /// [`holds_every_have_found`](Self::holds_every_have_found)).
    left_out: gitcache_pack::early::LeftOut,
    /// What a check of the answer of each key asked about found out (see
    /// [`checked`](Self::checked)).
    checked: Mutex<std::collections::HashMap<String, Arc<dyn std::any::Any + Send + Sync>>>,
    /// Kept while this is.
    _dir: crate::early::EarlyDir,
}

/// The most answers an [`Early`] remembers having checked.
const MOST_CHECKED: usize = 4096;

impl Early {
    pub(crate) fn new(
        repo: gitcache_pack::Repository,
        written: gitcache_pack::early::Written,
        dir: crate::early::EarlyDir,
    ) -> Early {
        Early {
            repo: Arc::new(repo),
            found: written.objects,
            left_out: written.commits_left_out,
            checked: Mutex::default(),
            _dir: dir,
        }
    }

    /// Where what a check of the answer keyed `key` found out is kept (whether it can be
    /// made from the objects found alone, and what the check made for it), once found out:
    /// identical requests arriving together are checked once (then share one answer). Past
    /// a few thousand keys, or asked for another type under the same key, a cell no other
    /// request shares.
    pub fn checked<T: Send + Sync + 'static>(&self, key: &str) -> Arc<tokio::sync::OnceCell<T>> {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = checked.get(key) {
            if let Ok(cell) = Arc::clone(cell).downcast::<tokio::sync::OnceCell<T>>() {
                return cell;
            }
            return Arc::default();
        }
        let cell: Arc<tokio::sync::OnceCell<T>> = Arc::default();
        if checked.len() < MOST_CHECKED {
            checked.insert(key.to_owned(), Arc::clone(&cell) as _);
        }
        cell
    }

    /// The repository: the pack, indexed by what was found, and the refs.
    pub fn repository(&self) -> Arc<gitcache_pack::Repository> {
        Arc::clone(&self.repo)
    }

    /// Whether it holds every one of `haves` the first pack's reading found as a commit (or
    /// may have: eight bytes of an id are compared): a fetch with haves answered from it then
    /// acknowledges what the mirror would, and leaves out what they reach. A have the
    /// reading did not find is taken to be one the pack lacks, the mirror's to lack too:
    /// `git pack-objects` writes every commit before the first tree, and the reading ends
    /// past the trees it follows. A have it passed undecoded (a commit stored as a delta on
    /// a base no longer kept), or that is a tree, a blob or a tag written after the trees,
    /// is not acknowledged, and what it reaches is sent: more than the mirror would send,
    /// never less.
    pub fn holds_every_have_found(&self, haves: &[gix_hash::ObjectId]) -> bool {
        !haves.iter().any(|have| self.left_out.may_hold(have))
    }

    /// How many objects it holds: all that were found, or, past
    /// [`Limits::copy_all_bytes`](gitcache_pack::early::Limits::copy_all_bytes) of them, the
    /// closures followed and what they need.
    pub fn found(&self) -> usize {
        self.found
    }
}

impl Board {
    /// A pack `asked` of the upstream, in `format`, arriving into the file `file` is read
    /// from: announced until [`clear`](Self::clear). The returned publisher tells its
    /// readers how far it has arrived.
    pub fn announce(&self, asked: Asked, format: HashKind, file: std::fs::File) -> Publisher {
        let asked = Asked {
            wants: sorted(&asked.wants),
            haves: sorted(&asked.haves),
            ..asked
        };
        let pack = Arc::new(LivePack {
            asked,
            format,
            file,
            head: std::sync::OnceLock::new(),
            trailer: std::sync::OnceLock::new(),
            kinds: std::sync::OnceLock::new(),
            progress: Mutex::new(Progress::Arriving(0)),
            changed: Condvar::new(),
            told: tokio::sync::Notify::new(),
            read_early: Default::default(),
            blobs_told: Default::default(),
            told_room: std::sync::atomic::AtomicBool::new(true),
            reading_at: Default::default(),
            read_began: Default::default(),
        });
        {
            let mut posted = self.posted();
            posted.pack = Some(Arc::clone(&pack));
            posted.elsewhere = false;
            // Its reading walks anew.
            posted.walks = None;
        }
        self.told.notify_waiters();
        Publisher { pack }
    }

    /// The refresh under way brings the mirror from elsewhere: those waiting for a pack
    /// ([`next`](Self::next)) are told none is coming, until one is announced or the board
    /// is [cleared](Self::clear).
    pub fn elsewhere(&self) {
        let mut posted = self.posted();
        if posted.pack.is_none() {
            posted.elsewhere = true;
            drop(posted);
            self.told.notify_waiters();
        }
    }

    /// The pack announced now, if any.
    pub fn current(&self) -> Option<Arc<LivePack>> {
        self.posted().pack.clone()
    }

    /// The pack announced now, or the next one announced; `None` once the refresh under way
    /// is said to bring the mirror from [elsewhere](Self::elsewhere).
    pub async fn next(&self) -> Option<Arc<LivePack>> {
        self.wait_for(|posted| match &posted.pack {
            Some(pack) => Some(Some(Arc::clone(pack))),
            None => posted.elsewhere.then_some(None),
        })
        .await
    }

    /// The pack announced now if it is not `seen`, or the next one announced; `None` once the
    /// refresh under way is said to bring the mirror from [elsewhere](Self::elsewhere).
    pub async fn next_after(&self, seen: &Arc<LivePack>) -> Option<Arc<LivePack>> {
        self.wait_for(|posted| match &posted.pack {
            Some(pack) if !Arc::ptr_eq(pack, seen) => Some(Some(Arc::clone(pack))),
            _ => posted.elsewhere.then_some(None),
        })
        .await
    }

    /// The pack announced now, or the next one announced, whatever was said of elsewhere: for
    /// those told none was coming, should this instance fetch the mirror itself after all
    /// (the other instance's fetch failed).
    pub async fn announced(&self) -> Arc<LivePack> {
        self.wait_for(|posted| posted.pack.clone()).await
    }

    /// What `pick` makes of what is posted, once it makes something.
    async fn wait_for<T>(&self, pick: impl Fn(&Posted) -> Option<T>) -> T {
        loop {
            let told = self.told.notified();
            tokio::pin!(told);
            // Listening before looking: an announcement in between still wakes this.
            told.as_mut().enable();
            if let Some(picked) = pick(&self.posted()) {
                return picked;
            }
            told.await;
        }
    }

    /// A pack the refresh under way fetched is now in the mirror, taken in and checked as
    /// any, while its refs are still to be written: fetches waiting for that refresh whose
    /// wants it brought may be answered now (see [`landed_after`](Self::landed_after)).
    pub fn landed(&self) {
        self.posted().landings += 1;
        self.told.notify_waiters();
    }

    /// How many packs have [landed](Self::landed) so far: what to wait past with
    /// [`landed_after`](Self::landed_after).
    pub fn landings(&self) -> u64 {
        self.posted().landings
    }

    /// Once more than `seen` packs have [landed](Self::landed): how many have.
    pub async fn landed_after(&self, seen: u64) -> u64 {
        self.wait_for(|posted| (posted.landings > seen).then_some(posted.landings))
            .await
    }

    /// The objects of the first pack found as it arrived: fetches waiting for the refresh may
    /// be answered from them ([`next_early`](Self::next_early)) until the board is cleared.
    /// Posted only while `pack`, the pack they were found in, is the one announced: not
    /// after the board was cleared (the refresh ended meanwhile), nor for another pack.
    pub fn early(&self, pack: &Arc<LivePack>, early: Arc<Early>) {
        let mut posted = self.posted();
        if posted.pack.as_ref().is_some_and(|p| Arc::ptr_eq(p, pack)) {
            let before = posted.early.replace(early);
            drop(posted);
            self.told.notify_waiters();
            // What it replaces goes outside the lock (its files are removed when it was
            // the last holder).
            drop(before);
        }
    }

    /// Whether a fetch waits for the objects found early in the first pack
    /// ([`next_early`](Self::next_early) was called since the board was last cleared).
    pub fn early_wanted(&self) -> bool {
        self.posted().early_wanted
    }

    /// What the fetches waiting for the objects found early want, so far (a few dozen ids
    /// at most).
    pub fn early_wants(&self) -> gitcache_pack::early::Wants {
        self.posted().early_wants.clone()
    }

    /// The objects found early in the first pack, once posted, unless they are `seen`; they
    /// are looked for from now on ([`early_wanted`](Self::early_wanted)), for a fetch of
    /// `wants` among others, which has `haves` (an incremental fetch: the history from its
    /// wants down to its haves is looked for too), or which is a shallow clone of `depth`
    /// (past one, the history from its wants is looked for to that depth, at most
    /// [`MOST_EARLY_DEPTH`]).
    pub async fn next_early(
        &self,
        seen: Option<&Arc<Early>>,
        wants: &[ObjectId],
        haves: &[ObjectId],
        depth: Option<u32>,
    ) -> Arc<Early> {
        {
            let mut posted = self.posted();
            posted.early_wanted = true;
            let early = &mut posted.early_wants;
            let deep = depth
                .filter(|&depth| depth > 1 && haves.is_empty())
                .map(|depth| depth.min(MOST_EARLY_DEPTH));
            for want in wants.iter().take(MOST_EARLY_WANTS_EACH) {
                if early.tips.len() < MOST_EARLY_WANTS && !early.tips.contains(want) {
                    early.tips.push(*want);
                }
                if !haves.is_empty() && early.tips.contains(want) && !early.walked.contains(want) {
                    early.walked.push(*want);
                }
                if let Some(depth) = deep.filter(|_| early.tips.contains(want)) {
                    match early.deep.iter_mut().find(|(id, _)| id == want) {
                        Some((_, had)) => *had = (*had).max(depth),
                        None => early.deep.push((*want, depth)),
                    }
                }
            }
            for have in haves.iter().take(MOST_EARLY_HAVES_EACH) {
                if early.haves.len() < MOST_EARLY_HAVES && !early.haves.contains(have) {
                    early.haves.push(*have);
                }
            }
            tracing::debug!(
                wanted = early.tips.len(),
                walked = early.walked.len(),
                haves = early.haves.len(),
                deep = early.deep.len(),
                "waiting for the objects found as the first pack arrives"
            );
        }
        self.wait_for(|posted| {
            posted
                .early
                .as_ref()
                .filter(|early| seen.is_none_or(|seen| !Arc::ptr_eq(early, seen)))
                .cloned()
        })
        .await
    }

    /// The reading of `pack`, the first pack, for the objects found early records what it
    /// walks in `walks` (see
    /// [`Tips::sharing_walks`](gitcache_pack::early::Tips::sharing_walks)): an incremental
    /// fetch whose history it cuts before its haves is not answered from those objects
    /// ([`past_the_walk`](Self::past_the_walk)). Kept only while `pack` is the one announced.
    pub fn walking(&self, pack: &Arc<LivePack>, walks: Arc<gitcache_pack::early::Walks>) {
        let mut posted = self.posted();
        if posted.pack.as_ref().is_some_and(|p| Arc::ptr_eq(p, pack)) {
            posted.walks = Some(walks);
        }
    }

    /// The walks of the reading of `pack` were refused a commit for want of room (see
    /// [`Tips::when_walks_run_out`](gitcache_pack::early::Tips::when_walks_run_out)): those
    /// waiting [`past_the_walk`](Self::past_the_walk) look again.
    pub fn walks_ran_out(&self, pack: &Arc<LivePack>) {
        let current = (self.posted().pack.as_ref()).is_some_and(|p| Arc::ptr_eq(p, pack));
        if current {
            self.told.notify_waiters();
        }
    }

    /// Once the walks of the reading of the pack announced cut the history from `wants`
    /// down to `haves` (see [`Walks::cut`](gitcache_pack::early::Walks::cut)): a fetch of
    /// those is not answered from the objects found early. Until the board is cleared, or
    /// another pack announced. Looked at again only when the walks recorded more, outside
    /// the board's lock; never for a fetch of more wants than the reading walks for one
    /// fetch, or more than 256 haves, `MOST_CUT_HAVES` (it waits as before).
    pub async fn past_the_walk(&self, wants: &[ObjectId], haves: &[ObjectId]) {
        if wants.len() > MOST_EARLY_WANTS_EACH || haves.len() > MOST_CUT_HAVES {
            return std::future::pending().await;
        }
        let mut looked: Option<(Arc<gitcache_pack::early::Walks>, u64)> = None;
        loop {
            let told = self.told.notified();
            tokio::pin!(told);
            // Listening before looking: a refusal in between still wakes this.
            told.as_mut().enable();
            let walks = self.posted().walks.clone();
            if let Some(walks) = walks {
                let changes = walks.changes();
                let same = looked
                    .as_ref()
                    .is_some_and(|(w, c)| Arc::ptr_eq(w, &walks) && *c == changes);
                if !same {
                    if walks.cut(wants, haves) {
                        return;
                    }
                    looked = Some((walks, changes));
                }
            }
            told.await;
        }
    }

    /// No pack is announced any more, nor said to come from elsewhere (the refresh that did
    /// ended).
    pub fn clear(&self) {
        let mut posted = self.posted();
        let landings = posted.landings;
        let before = std::mem::replace(
            &mut *posted,
            Posted {
                landings,
                ..Posted::default()
            },
        );
        drop(posted);
        // What it held goes outside the lock (the objects found early remove their files).
        drop(before);
    }

    fn posted(&self) -> std::sync::MutexGuard<'_, Posted> {
        self.posted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    /// Turns are taken up to the most, and given back when dropped.
    #[test]
    fn turns_are_taken_up_to_the_most() {
        static TWO: Turns = Turns::new(2);
        let first = TWO.take().unwrap();
        let second = TWO.take().unwrap();
        assert!(TWO.take().is_none());
        drop(first);
        let third = TWO.take().unwrap();
        assert!(TWO.take().is_none());
        drop((second, third));
        assert!(TWO.take().is_some());
    }

    /// The entries of the kinds taken, each from where it starts to where the next does
    /// (the last to the entries' end); nothing when a kind is not known.
    #[test]
    fn entries_of_the_kinds_taken_are_where_they_lie() {
        use gix_object::Kind;
        let mut kinds = EntryKinds {
            offsets: vec![12, 40, 90, 200],
            kinds: vec![
                Some(Kind::Commit),
                Some(Kind::Tree),
                Some(Kind::Blob),
                Some(Kind::Tree),
            ],
            end: 260,
            tags_on_commits: true,
            wants_commits_or_tags: true,
        };
        assert_eq!(
            kinds.taken(|kind| kind != Kind::Blob),
            Some(vec![(12, 40), (40, 90), (200, 260)])
        );
        assert_eq!(
            kinds.taken(|kind| kind == Kind::Commit),
            Some(vec![(12, 40)])
        );
        kinds.kinds[2] = None;
        assert_eq!(kinds.taken(|kind| kind != Kind::Blob), None);
    }

    /// Blobs are told of only while a reading runs, for blobs past where it has come, and
    /// with room left; each is taken once, in pack order, the ones a reading passed let go
    /// (told of too late, or for a reading that began later than their arrival); once the
    /// last reading ends, what was left goes, and a new one starts from the pack's start.
    #[test]
    fn blobs_are_told_of_in_order_to_a_reading_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::File::create(&path).unwrap();
        let board = Board::default();
        let _publisher = board.announce(
            Asked::first(vec![oid(1)]),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        let pack = board.current().unwrap();
        let blob = |n: u8| gitcache_pack::incoming::Told {
            end: u64::from(n) * 100 + 50,
            crc32: u32::from(n),
            id: oid(n),
        };
        assert!(!pack.wants_told(12), "no reading");
        let reading = pack.read_early();
        assert!(pack.wants_told(12));
        for n in [1, 2, 3, 5] {
            pack.tell(u64::from(n) * 100, blob(n));
        }
        // Told again, or out of order: not taken.
        pack.tell(300, blob(9));
        pack.tell(250, blob(9));
        assert_eq!(pack.told_count(), 4);
        assert_eq!(pack.told_at(100), Some(blob(1)));
        assert_eq!(pack.told_at(100), None, "taken once");
        // Past the second: it is let go; the third is told, the fourth was not.
        assert_eq!(pack.told_at(300), Some(blob(3)));
        assert_eq!(pack.told_at(200), None);
        assert_eq!(pack.told_at(400), None);
        assert_eq!(pack.told_at(500), Some(blob(5)));
        assert_eq!(pack.told_taken(), 3);
        pack.reading_reached(1000);
        assert!(!pack.wants_told(1000) && pack.wants_told(1001));
        pack.reading_reached(600);
        assert!(pack.wants_told(1001), "the reading does not go back");
        pack.tell(2000, blob(6));
        pack.reading_reached(u64::MAX);
        assert!(!pack.wants_told(u64::MAX), "over");
        drop(reading);
        let again = pack.read_early();
        assert!(pack.wants_told(12), "from the start again");
        assert_eq!(pack.told_at(2000), None, "left when the reading ended");
        // No more than so many waiting.
        for n in 0..MOST_TOLD_WAITING as u64 {
            pack.tell(3000 + n, blob(7));
        }
        assert!(!pack.wants_told(1 << 40));
        assert_eq!(pack.told_at(3000), Some(blob(7)));
        assert!(pack.wants_told(1 << 40));
        drop(again);
    }

    #[test]
    fn a_reader_follows_the_file_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        let mut file = std::fs::File::create(&path).unwrap();
        let board = Board::default();
        let publisher = board.announce(
            Asked::first(vec![oid(2), oid(1), oid(2)]),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        let pack = board.current().unwrap();
        assert!(pack.answers(&[oid(1), oid(2)]));
        assert!(pack.answers(&[oid(2), oid(1), oid(1)]));
        assert!(!pack.answers(&[oid(1)]));
        assert!(!pack.answers(&[oid(1), oid(2), oid(3)]));

        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match pack.wait_past(got.len() as u64, Duration::from_secs(30)) {
                    Progress::Arriving(n) | Progress::Whole(n) if n > got.len() as u64 => {
                        let mut buf = vec![0; n as usize - got.len()];
                        let read = pack.read_at(&mut buf, got.len() as u64).unwrap();
                        got.extend_from_slice(&buf[..read]);
                    }
                    Progress::Whole(_) => return got,
                    other => panic!("{other:?}"),
                }
            }
        });
        for chunk in [&b"PACK"[..], b"\0\0\0\x02", b"rest of it"] {
            file.write_all(chunk).unwrap();
            let len = file.metadata().unwrap().len();
            publisher.arrived(len);
            std::thread::sleep(Duration::from_millis(5));
        }
        // Taking the pack in moves and removes the file: the reader holds it open.
        std::fs::rename(&path, dir.path().join("moved.pack")).unwrap();
        std::fs::remove_file(dir.path().join("moved.pack")).unwrap();
        publisher.whole(18);
        assert_eq!(reader.join().unwrap(), b"PACK\0\0\0\x02rest of it");

        board.clear();
        assert!(board.current().is_none());
    }

    #[test]
    fn an_end_is_final_and_a_dropped_publisher_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"PACK").unwrap();
        let board = Board::default();
        let open = || std::fs::File::open(&path).unwrap();

        let publisher = board.announce(Asked::first(vec![oid(1)]), HashKind::Sha1, open());
        let pack = board.current().unwrap();
        publisher.arrived(4);
        assert_eq!(
            pack.wait_past(4, Duration::from_millis(10)),
            Progress::Arriving(4)
        );
        publisher.failed("bad entry");
        assert_eq!(
            pack.wait_past(0, Duration::ZERO),
            Progress::Failed("bad entry".into())
        );

        let publisher = board.announce(Asked::first(vec![oid(1)]), HashKind::Sha1, open());
        let pack = board.current().unwrap();
        drop(publisher);
        assert!(matches!(
            pack.wait_past(0, Duration::ZERO),
            Progress::Failed(_)
        ));

        let publisher = board.announce(Asked::first(vec![oid(1)]), HashKind::Sha1, open());
        let pack = board.current().unwrap();
        publisher.whole(4);
        assert_eq!(pack.wait_past(4, Duration::ZERO), Progress::Whole(4));
    }

    /// Readers are given the header and trailer as received, whatever the file holds there
    /// after (a thin pack completed with bases).
    #[test]
    fn the_header_and_trailer_are_read_as_received() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        let mut file = std::fs::File::create(&path).unwrap();
        let board = Board::default();
        let asked = Asked {
            wants: vec![oid(2)],
            haves: vec![oid(1)],
            thin_pack: true,
            include_tag: false,
        };
        let publisher = board.announce(asked, HashKind::Sha1, std::fs::File::open(&path).unwrap());
        let pack = board.current().unwrap();
        let received = b"PACK\0\0\0\x02\0\0\0\x01entryTRAILER";
        file.write_all(&received[..17]).unwrap();
        publisher.received_head(&received[..12]);
        publisher.arrived(17);
        // Completed: another count, and bases where the trailer was.
        std::os::unix::fs::FileExt::write_at(&file, b"\0\0\0\x05", 8).unwrap();
        publisher.whole_as_received(17, b"TRAILER");
        file.write_all(b"BASES AND ANOTHER TRAILER").unwrap();
        assert_eq!(pack.wait_past(0, Duration::ZERO), Progress::Whole(24));
        let read_all = |step: usize| {
            let mut got = Vec::new();
            while got.len() < 24 {
                let mut buf = vec![0; step];
                let n = pack.read_at(&mut buf, got.len() as u64).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            got
        };
        for step in [1, 5, 7, 64] {
            assert_eq!(read_all(step), received, "step {step}");
        }
        let mut past = [0; 4];
        assert_eq!(
            pack.read_at(&mut past, 24).unwrap(),
            0,
            "nothing past the end"
        );
    }

    /// A pack fetched for a client answers that client's fetch, with the same wants, its
    /// haves among the client's, thin only for a client that takes thin packs and with the
    /// tags when the client wants them; a mirror's first pack answers clones only.
    #[test]
    fn a_pack_answers_the_fetches_it_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Board::default();
        let asked = Asked {
            wants: vec![oid(3), oid(2)],
            haves: vec![oid(1)],
            thin_pack: false,
            include_tag: true,
        };
        let _publisher = board.announce(asked, HashKind::Sha1, std::fs::File::open(&path).unwrap());
        let pack = board.current().unwrap();
        let (wants, haves) = ([oid(2), oid(3), oid(2)], [oid(4), oid(1)]);
        assert!(pack.answers_fetch(&wants, &haves, false, true));
        assert!(pack.answers_fetch(&wants, &haves, true, false));
        assert!(!pack.answers_fetch(&wants[..1], &haves, true, true));
        assert!(!pack.answers_fetch(&wants, &haves[..1], true, true));
        assert!(!pack.answers(&wants), "asked for with haves: no clone's");
        assert_eq!(pack.haves(), &[oid(1)]);

        let _publisher = board.announce(
            Asked::first(vec![oid(2)]),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        let first = board.current().unwrap();
        assert!(first.answers(&[oid(2)]));
        assert!(
            !first.answers_fetch(&[oid(2)], &haves, true, true),
            "no fetch's"
        );
    }

    /// A task waiting on `board` as `wait` does, still waiting a moment later.
    async fn waiting_as<T, F>(
        board: &Arc<Board>,
        wait: impl FnOnce(Arc<Board>) -> F,
    ) -> tokio::task::JoinHandle<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let waiting = tokio::spawn(wait(Arc::clone(board)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        waiting
    }

    /// A task waiting on `board` for the next pack, still waiting a moment later.
    async fn waiting_on(board: &Arc<Board>) -> tokio::task::JoinHandle<Option<Arc<LivePack>>> {
        waiting_as(board, |board| async move { board.next().await }).await
    }

    /// What a waiting task was told.
    async fn told<T>(waiting: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("told within the time")
            .unwrap()
    }

    #[tokio::test]
    async fn the_next_announcement_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        let waiting = waiting_on(&board).await;
        let _publisher = board.announce(
            Asked::first(vec![oid(7)]),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        let pack = told(waiting).await.expect("announced");
        assert!(pack.answers(&[oid(7)]));
        // Announced already: found at once.
        assert!(board.next().await.unwrap().answers(&[oid(7)]));
    }

    /// A pack seen that answered nothing: the next one announced is waited for.
    #[tokio::test]
    async fn the_next_pack_after_one_seen_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        let open = || std::fs::File::open(&path).unwrap();
        let _first = board.announce(Asked::first(vec![oid(1)]), HashKind::Sha1, open());
        let seen = board.next().await.unwrap();
        let waiting = waiting_as(&board, {
            let seen = Arc::clone(&seen);
            |board| async move { board.next_after(&seen).await }
        })
        .await;
        let _second = board.announce(Asked::first(vec![oid(2)]), HashKind::Sha1, open());
        assert!(told(waiting).await.unwrap().answers(&[oid(2)]));
        // Cleared, then said to come from elsewhere: none comes.
        board.clear();
        board.elsewhere();
        assert!(board.next_after(&seen).await.is_none());
    }

    /// Those waiting past the packs landed so far are told of the next; a refresh's end
    /// (the board cleared) forgets nothing of them.
    #[tokio::test]
    async fn packs_landed_are_counted_and_waited_past() {
        let board = Arc::new(Board::default());
        assert_eq!(board.landings(), 0);
        let waiting = waiting_as(&board, |board| async move { board.landed_after(0).await }).await;
        board.landed();
        assert_eq!(told(waiting).await, 1);
        board.clear();
        assert_eq!(board.landings(), 1);
        // Landed already: told at once.
        assert_eq!(board.landed_after(0).await, 1);
        let waiting = waiting_as(&board, |board| async move { board.landed_after(1).await }).await;
        board.landed();
        assert_eq!(told(waiting).await, 2);
    }

    /// One told that no pack comes may still wait for one: announced should this instance
    /// fetch the mirror itself after all.
    #[tokio::test]
    async fn a_pack_announced_after_word_of_elsewhere_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        board.elsewhere();
        assert!(board.next().await.is_none());
        // Word of elsewhere is no pack: still waiting.
        let waiting = waiting_as(&board, |board| async move { board.announced().await }).await;
        let _publisher = board.announce(
            Asked::first(vec![oid(3)]),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        assert!(told(waiting).await.answers(&[oid(3)]));
    }

    #[tokio::test]
    async fn a_mirror_from_elsewhere_tells_those_waiting_that_no_pack_comes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        let waiting = waiting_on(&board).await;
        board.elsewhere();
        assert!(told(waiting).await.is_none());
        // Said already: told at once.
        assert!(board.next().await.is_none());

        // The mirror's own first fetch after all (the other instance's failed): announced.
        let _publisher = board.announce(
            Asked::first(vec![oid(7)]),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        assert!(board.next().await.unwrap().answers(&[oid(7)]));
        // A pack announced is not taken back by word of elsewhere.
        board.elsewhere();
        assert!(board.next().await.is_some());
        assert!(board.announced().await.answers(&[oid(7)]));

        // Cleared, a board waits again.
        board.clear();
        waiting_on(&board).await.abort();
    }

    /// The walks of the reading of the first pack are looked at for the pack announced alone,
    /// and forgotten when another is announced or the board is cleared; a fetch is told it
    /// is past them only when they cut its own history.
    #[tokio::test]
    async fn walks_are_looked_at_for_their_own_pack() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(&config, "").unwrap();
        let file = || std::fs::File::open(&config).unwrap();
        // oid(1) has parent oid(2), whose parent oid(3) was refused.
        let walks = || {
            Arc::new(gitcache_pack::early::Walks::new(
                [(oid(1), vec![oid(2)]), (oid(2), vec![oid(3)])],
                [oid(3)],
            ))
        };
        let (wants, far_have, near_have) = ([oid(1)], [oid(4)], [oid(2)]);
        // Ready soon, or the test fails (not hangs).
        async fn within(future: impl std::future::Future<Output = ()>) {
            tokio::time::timeout(std::time::Duration::from_secs(10), future)
                .await
                .expect("told in time");
        }
        let board = Board::default();
        let _first = board.announce(Asked::first(vec![]), HashKind::Sha1, file());
        let first = board.current().unwrap();
        let far = board.past_the_walk(&wants, &far_have);
        tokio::pin!(far);
        assert!(poll_once(&mut far).is_none(), "nothing walked yet");
        let _second = board.announce(Asked::first(vec![]), HashKind::Sha1, file());
        board.walking(&first, walks());
        board.walks_ran_out(&first);
        assert!(poll_once(&mut far).is_none(), "not the pack announced");
        let second = board.current().unwrap();
        board.walking(&second, walks());
        board.walks_ran_out(&second);
        within(far).await;
        // A fetch whose have is above the commit refused is not past the walk.
        let near = board.past_the_walk(&wants, &near_have);
        tokio::pin!(near);
        assert!(poll_once(&mut near).is_none(), "its history was walked");
        // A fetch of too many haves is not looked at.
        let many: Vec<ObjectId> = (0..=MOST_CUT_HAVES)
            .map(|n| oid(100 + (n % 100) as u8))
            .collect();
        let crowded = board.past_the_walk(&wants, &many);
        tokio::pin!(crowded);
        assert!(poll_once(&mut crowded).is_none(), "not looked at");
        // Forgotten when another pack is announced, and when cleared.
        let _third = board.announce(Asked::first(vec![]), HashKind::Sha1, file());
        let again = board.past_the_walk(&wants, &far_have);
        tokio::pin!(again);
        assert!(
            poll_once(&mut again).is_none(),
            "a new pack's reading walks anew"
        );
        board.walking(&board.current().unwrap(), walks());
        board.walks_ran_out(&board.current().unwrap());
        within(again).await;
        board.clear();
        let cleared = board.past_the_walk(&wants, &far_have);
        tokio::pin!(cleared);
        assert!(poll_once(&mut cleared).is_none(), "forgotten once cleared");
    }

    /// The objects found early in a pack are posted only while that pack is the one
    /// announced, and looked for only once a fetch waits for them; clearing the board forgets
    /// both.
    #[tokio::test]
    async fn objects_found_early_are_posted_for_their_own_pack() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("m.git");
        crate::mirror::Mirror::create(&git_dir, HashKind::Sha1).unwrap();
        let early = || {
            let repo = gitcache_pack::Repository::open(&git_dir).unwrap();
            let early_dir = crate::early::EarlyDir::create(&git_dir).unwrap();
            let written = gitcache_pack::early::Written {
                checksum: ObjectId::null(HashKind::Sha1),
                objects: 0,
                commits_left_out: Default::default(),
            };
            Arc::new(Early::new(repo, written, early_dir))
        };
        let board = Board::default();
        let file = || std::fs::File::open(git_dir.join("config")).unwrap();
        let _first = board.announce(Asked::first(vec![]), HashKind::Sha1, file());
        let first = board.current().unwrap();
        assert!(!board.early_wanted());
        let waiting = {
            let board = &board;
            async move { board.next_early(None, &[oid(7)], &[], None).await }
        };
        tokio::pin!(waiting);
        assert!(poll_once(&mut waiting).is_none(), "nothing posted yet");
        assert!(board.early_wanted(), "looked for once waited for");
        assert_eq!(board.early_wants().tips, [oid(7)]);
        let _second = board.announce(Asked::first(vec![]), HashKind::Sha1, file());
        board.early(&first, early());
        assert!(poll_once(&mut waiting).is_none(), "not another pack's");
        let second = board.current().unwrap();
        let posted = early();
        board.early(&second, Arc::clone(&posted));
        let got = waiting.await;
        assert!(Arc::ptr_eq(&got, &posted));
        // Posted again for the same pack (more found): those that saw the first get it.
        let more = early();
        board.early(&second, Arc::clone(&more));
        assert!(Arc::ptr_eq(
            &board.next_early(Some(&got), &[], &[], None).await,
            &more
        ));
        board.clear();
        assert!(!board.early_wanted() && board.early_wants() == Default::default());
        board.early(&second, early());
        let again = board.next_early(None, &[], &[], None);
        tokio::pin!(again);
        assert!(
            poll_once(&mut again).is_none(),
            "not after the board was cleared"
        );
    }

    /// One fetch of many wants (or of ids made up) takes a few of the places of the wants
    /// looked for early: another fetch's want is still looked for.
    #[tokio::test]
    async fn one_fetch_of_many_wants_leaves_room_for_the_others() {
        let board = Board::default();
        let many: Vec<ObjectId> = (0..100).map(oid).collect();
        let first = board.next_early(None, &many, &[], None);
        tokio::pin!(first);
        assert!(poll_once(&mut first).is_none());
        let other = [oid(200)];
        let second = board.next_early(None, &other, &[], None);
        tokio::pin!(second);
        assert!(poll_once(&mut second).is_none());
        let wants = board.early_wants().tips;
        assert_eq!(wants.len(), MOST_EARLY_WANTS_EACH + 1, "{wants:?}");
        assert!(wants.contains(&oid(200)));
    }

    /// A fetch with haves has its wants walked down to them, and a few of its haves kept; a
    /// fetch without has its wants followed alone. A want past the room left is not walked
    /// either.
    #[tokio::test]
    async fn the_wants_of_a_fetch_with_haves_are_walked_down_to_a_few_of_them() {
        let board = Board::default();
        let (one, two, three) = ([oid(1)], [oid(2)], [oid(3)]);
        let shallow = board.next_early(None, &one, &[], None);
        tokio::pin!(shallow);
        assert!(poll_once(&mut shallow).is_none());
        let haves: Vec<ObjectId> = (100..140).map(oid).collect();
        let incremental = board.next_early(None, &two, &haves, None);
        tokio::pin!(incremental);
        assert!(poll_once(&mut incremental).is_none());
        let wants = board.early_wants();
        assert_eq!(wants.tips, [oid(1), oid(2)]);
        assert_eq!(wants.walked, [oid(2)]);
        assert_eq!(wants.haves, haves[..MOST_EARLY_HAVES_EACH]);

        // The room for wants taken: a later fetch's want is neither followed nor walked.
        for n in 0..MOST_EARLY_WANTS {
            let want = [oid(150 + n as u8)];
            let many = board.next_early(None, &want, &[], None);
            tokio::pin!(many);
            assert!(poll_once(&mut many).is_none());
        }
        let late = board.next_early(None, &three, &haves, None);
        tokio::pin!(late);
        assert!(poll_once(&mut late).is_none());
        let wants = board.early_wants();
        assert!(!wants.tips.contains(&oid(3)) && !wants.walked.contains(&oid(3)));
        // The room for haves: taken by others' up to the most, each fetch's few.
        for n in 0..8u8 {
            let others: Vec<ObjectId> = (0..MOST_EARLY_HAVES_EACH as u8 + 4)
                .map(|k| {
                    ObjectId::from_bytes_or_panic(&[
                        n, k, 0xa5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ])
                })
                .collect();
            let fetch = board.next_early(None, &two, &others, None);
            tokio::pin!(fetch);
            assert!(poll_once(&mut fetch).is_none());
        }
        assert_eq!(board.early_wants().haves.len(), MOST_EARLY_HAVES);
    }

    /// A fetch is answered from the objects found early only with every have of it found
    /// there that the first pack holds: one the copy left out makes it wait.
    #[test]
    fn a_have_the_copy_left_out_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("m.git");
        crate::mirror::Mirror::create(&git_dir, HashKind::Sha1).unwrap();
        let repo = gitcache_pack::Repository::open(&git_dir).unwrap();
        let written = gitcache_pack::early::Written {
            checksum: ObjectId::null(HashKind::Sha1),
            objects: 0,
            commits_left_out: [oid(5)].into_iter().collect(),
        };
        let early = Early::new(
            repo,
            written,
            crate::early::EarlyDir::create(&git_dir).unwrap(),
        );
        assert!(early.holds_every_have_found(&[oid(6), oid(7)]));
        assert!(!early.holds_every_have_found(&[oid(6), oid(5)]));
    }

    /// Polls `future` once.
    fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(future).poll(&mut context) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }
}
