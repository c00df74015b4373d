//! Where mirrors live, and one refresh per mirror at a time.
//!
//! Mirrors are kept at `<root>/<host>/<owner>/<repo>.git`, created on first use. Refreshes of
//! one mirror never overlap: a caller that arrives while a refresh is running waits for it and
//! shares its outcome instead of fetching again (singleflight); a caller that arrives after it
//! finished starts a new one. Deciding who may see the result is the caller's business: the
//! registry only keeps the upstream from being asked twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::live::{Board, LivePack};
use crate::mirror::{Error, FreeSpace, Hints, Mirror, Refreshed};
use crate::shared::{Hydrated, Published, Shared};
use gitcache_storage::lease::{Held, Leases};
use gitcache_storage::repo::RepoKey;
use gitcache_upstream::Upstream;
use std::time::Duration;

/// What concurrent callers of one refresh share.
type Outcome = Result<Refreshed, Arc<Error>>;

#[derive(Debug, Default)]
struct Slot {
    /// Held while a refresh runs.
    running: tokio::sync::Mutex<()>,
    /// The number of refreshes finished, and the last outcome with the digest of the
    /// credential it was fetched with.
    last: Mutex<(u64, Option<(Outcome, u64)>)>,
    /// Held while bitmaps are written for the mirror (one writer at a time; a second waits
    /// and finds the first one's file), and while leftovers are removed: the writer's
    /// temporary is never taken for a crash's.
    writing_bitmaps: Mutex<()>,
    /// Set while a background consolidation of the mirror is started or running.
    maintaining: std::sync::atomic::AtomicBool,
    /// When the last background consolidation failed: none is started again before
    /// [`MAINTENANCE_BACKOFF`] has passed.
    failed_at: Mutex<Option<std::time::Instant>>,
    /// Bitmap files known sound (written and read back here, or checked), as they were then:
    /// checking one again when the mirror is next opened would read it whole once more (123
    /// MB at 500,000 commits, on the cores the first answers need).
    sound_bitmaps: Mutex<std::collections::HashMap<PathBuf, FileStamp>>,
    /// Answers from the mirror not yet handed over (see [`Registry::answering`]).
    answering: std::sync::atomic::AtomicUsize,
    /// Told when the last of those is handed over.
    quieted: tokio::sync::Notify,
    /// Where the mirror's first pack is announced while it arrives.
    live: Arc<Board>,
}

/// What tells a file apart from another at the same path, or from itself changed: its
/// inode, length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: std::time::SystemTime,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
}

impl Slot {
    /// Note the bitmap file at `path` sound as it is now.
    fn sound(&self, path: &Path) {
        if let Some(stamp) = FileStamp::of(path) {
            self.sound_bitmaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.to_owned(), stamp);
        }
    }

    /// Whether the bitmap file at `path` was noted sound and has not changed since.
    fn still_sound(&self, path: &Path) -> bool {
        let known = self
            .sound_bitmaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied();
        known.is_some() && known == FileStamp::of(path)
    }

    /// Whether dropping this slot (no one holding it) loses nothing worth its few hundred
    /// bytes: no bitmap file is remembered sound (a mirror on disk would be checked again
    /// when next opened) and no failed maintenance is still being waited out. What else it
    /// holds (the last refresh's outcome) only matters to callers holding it. Slots of keys
    /// without a mirror (refused, failed, evicted) are forgettable, so their number is
    /// bounded by the mirrors on disk and the work under way, not by the keys ever asked for.
    fn forgettable(&self) -> bool {
        let no_bitmaps = self
            .sound_bitmaps
            .try_lock()
            .is_ok_and(|sound| sound.is_empty());
        let no_backoff = self
            .failed_at
            .try_lock()
            .is_ok_and(|at| !at.is_some_and(|at| at.elapsed() < MAINTENANCE_BACKOFF));
        no_bitmaps && no_backoff
    }

    /// Until no answer from the mirror is left to hand over, or `most` has passed.
    async fn quiet(&self, most: Duration) {
        let deadline = tokio::time::Instant::now() + most;
        loop {
            let notified = self.quieted.notified();
            tokio::pin!(notified);
            // Listening before looking: a last answer sent in between still wakes this.
            notified.as_mut().enable();
            if self.answering.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// An answer from a mirror, until it is handed over (dropped): background work on that
/// mirror waits for it (see [`Registry::answering`]).
#[derive(Debug)]
pub struct Answering {
    slot: Arc<Slot>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.slot.answering.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slot.quieted.notify_waiters();
        }
    }
}

/// Clears a flag when dropped: a task that set it clears it however it ends.
struct ClearOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Clears a board when dropped: a refresh clears what it posted however it ends.
struct Clearing<'a>(&'a Board);

impl Drop for Clearing<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// `lock` if nobody holds it; a holder that panicked left nothing to protect (the lock only
/// says "someone is writing"), so a poisoned lock is taken too.
fn try_hold(lock: &Mutex<()>) -> Option<std::sync::MutexGuard<'_, ()>> {
    match lock.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Packs a mirror may gather before it is consolidated in the background.
pub const DEFAULT_CONSOLIDATE_AFTER: usize = 8;

/// How long after a failed background consolidation (a full disk, a damaged pack) none is
/// started again: each one writes the whole history, and refreshes (each of which asks for
/// one) come far more often.
pub const MAINTENANCE_BACKOFF: Duration = Duration::from_secs(600);

/// A mirror is consolidated, whatever its number of packs, once the packs beside its
/// consolidated one hold more than this share of its objects (and at least
/// [`BESIDE_AT_LEAST`]). Their commits and trees lie beyond the bitmaps, and every answer the
/// bitmaps give (clones, filters, fetches whose haves are old enough) walks them: 1,750
/// commits in seven packs (8,750 objects, 7% of the consolidated pack's) made a clone take
/// 0.61 of git's time through the proxy instead of 0.04–0.10, and a fetch whose have is the
/// consolidated tip 1.45. A mirror left alone for a while gets them in one refresh, and would
/// serve that way until eight more refreshes.
pub const BESIDE_SHARE: u64 = 64;

/// Objects beside the consolidated pack below which [`BESIDE_SHARE`] does not apply: walking
/// them is cheap, and small repositories would be consolidated at every refresh.
pub const BESIDE_AT_LEAST: u64 = 1024;

/// Whether `beside` (the objects of each pack beside a consolidated pack of `consolidated`
/// objects) is more than [`BESIDE_SHARE`] allows.
fn far_past(consolidated: u64, beside: &[u64]) -> bool {
    let objects = beside.iter().fold(0u64, |sum, n| sum.saturating_add(*n));
    objects >= BESIDE_AT_LEAST && objects.saturating_mul(BESIDE_SHARE) > consolidated
}

/// The commits kept by id, as `packed-refs` lists them.
fn kept_commits(packed_refs: &[u8]) -> Vec<gix_hash::ObjectId> {
    use bstr::ByteSlice as _;
    packed_refs
        .lines()
        .filter_map(|line| {
            let (id, name) = line.split_once_str(" ")?;
            name.starts_with(crate::mirror::KEPT_PREFIX.as_bytes())
                .then(|| gix_hash::ObjectId::from_hex(id).ok())?
        })
        .collect()
}

/// Whether the pack index at `path` lists one of `ids`.
fn holds_any(path: &Path, ids: &[gix_hash::ObjectId]) -> bool {
    let Some(first) = ids.first() else {
        return false;
    };
    gix_pack::index::File::at(path, first.kind())
        .is_ok_and(|index| ids.iter().any(|id| index.lookup(id).is_some()))
}

/// Objects in the version 2 pack index at `path`, from the last entry of its fan-out table
/// (`None` if it is not one).
fn idx_objects(path: &Path) -> Option<u64> {
    use std::io::Read as _;
    let mut head = [0u8; 8 + 256 * 4];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if head[..8] != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
        return None;
    }
    let last: [u8; 4] = head[8 + 255 * 4..].try_into().ok()?;
    Some(u64::from(u32::from_be_bytes(last)))
}

/// The mirrors under one folder.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    slots: Mutex<Slots>,
    consolidate_after: usize,
    /// Bytes kept free on the disk of `root`: no consolidation starts below (it writes a
    /// pack as large as the mirror's beside the ones it replaces, and with a shared store
    /// first takes what the store holds). 0: no floor.
    min_free: u64,
    /// How the free space of that disk is told.
    free_space: FreeSpace,
    /// Refreshes of different mirrors running at once (each may download a whole
    /// repository, and goes on when its client leaves).
    refreshes: Arc<tokio::sync::Semaphore>,
    /// Bitmap writers of different mirrors running at once: each holds up to a few hundred
    /// MiB (a cache of decoded trees, the pack's delta tree, the bitmaps) and a core for
    /// seconds to minutes, and mirrors opened together would otherwise all start one.
    bitmap_writers: Arc<tokio::sync::Semaphore>,
    /// The object store mirrors are committed to, when instances share one.
    shared: Option<Shared>,
    /// Leases that let one instance at a time refresh or maintain a shared mirror.
    leases: Option<(Arc<dyn Leases>, Duration)>,
    /// Mirrors whose packs background maintenance replaced (see [`Registry::maintained`]).
    maintained: tokio::sync::broadcast::Sender<RepoKey>,
    /// Told of each local copy dropped for a removal made elsewhere (see
    /// [`Registry::on_removed_elsewhere`]).
    removed_elsewhere: std::sync::OnceLock<RemovedElsewhere>,
    /// Awaited for each mirror dropped because its name came to mean another repository
    /// (see [`Registry::on_replaced`]).
    replaced: std::sync::OnceLock<Replaced>,
    /// The longest background work on a mirror waits for the answers from it (see
    /// [`Registry::answering`]).
    quiet_wait: Duration,
    /// Background maintenance so far (see [`Registry::maintenance`]).
    maintenance: Arc<MaintenanceCounts>,
}

/// Background maintenance of a registry's mirrors (see
/// [`Registry::maintain_in_background`]): under way now, and how it ended so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Under way: waiting for the answers from the mirror to be handed over, consolidating
    /// its packs or writing their bitmaps.
    pub running: u64,
    /// Ended with the mirror's packs consolidated.
    pub consolidated: u64,
    /// Ended with nothing to do: the mirror gone meanwhile, or another instance's
    /// consolidation taken instead.
    pub skipped: u64,
    /// Ended in failure (not started again for [`MAINTENANCE_BACKOFF`]).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct MaintenanceCounts {
    running: std::sync::atomic::AtomicU64,
    consolidated: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// One background maintenance under way, counted until it is dropped (with its task, had
/// the task never run).
struct Running(Arc<MaintenanceCounts>);

impl Running {
    fn start(counts: &Arc<MaintenanceCounts>) -> Self {
        counts.running.fetch_add(1, Ordering::AcqRel);
        Running(Arc::clone(counts))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long background work on a mirror waits at most for the answers from it: long enough
/// for generating any of them, short enough that a client reading slowly holds nothing back
/// for long.
pub const DEFAULT_QUIET_WAIT: Duration = Duration::from_secs(10);

/// What [`Registry::on_removed_elsewhere`] calls.
struct RemovedElsewhere(Box<dyn Fn(&RepoKey) + Send + Sync>);

impl std::fmt::Debug for RemovedElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemovedElsewhere")
    }
}

/// What [`Registry::on_replaced`] awaits.
type ReplacedHook = Box<
    dyn Fn(&RepoKey) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

struct Replaced(ReplacedHook);

impl std::fmt::Debug for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replaced")
    }
}

/// Maintained mirrors announced and not yet taken by a slow listener (it then misses the
/// oldest: each is only a chance to prepare for the next answers).
const MAINTAINED_BACKLOG: usize = 64;

/// Bitmap writers running at once in the process, whatever the mirrors.
const CONCURRENT_BITMAP_WRITERS: usize = 1;

/// How often an instance waiting for another's refresh asks whether the lease is free.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// How many lease durations an instance waits for another's refresh before it goes on
/// without the lease (a first download of a large repository takes minutes).
const LEASE_PATIENCE: u32 = 20;

/// Tries at committing a refresh when other instances keep committing first.
const COMMIT_TRIES: usize = 4;

/// The folder under the root where removed mirrors wait to be deleted.
const TRASH: &str = ".removed";

fn sweep_removed(root: &Path) -> std::io::Result<()> {
    let trash = root.join(TRASH);
    let entries = match std::fs::read_dir(&trash) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        std::fs::remove_dir_all(entry?.path())?;
    }
    Ok(())
}

/// The state shared by the callers working on one mirror, by key.
#[derive(Debug)]
struct Slots {
    by_key: HashMap<RepoKey, Arc<Slot>>,
    /// At this many slots, those that no one holds and that remember nothing worth keeping
    /// are dropped (see [`Slot::forgettable`]).
    prune_at: usize,
}

/// Slots are never pruned below this many.
const SLOTS_PRUNE_MIN: usize = 1024;

impl Slots {
    fn new() -> Self {
        Slots {
            by_key: HashMap::new(),
            prune_at: SLOTS_PRUNE_MIN,
        }
    }

    /// `key`'s slot, made if there is none. Slots are handed out only here, under the
    /// registry's lock, and every holder counts in the slot's strong count: a slot only the
    /// map holds has no one working with it, so dropping it cannot leave two slots (two
    /// refreshes at once) for one key.
    fn get(&mut self, key: &RepoKey) -> Arc<Slot> {
        if self.by_key.len() >= self.prune_at && !self.by_key.contains_key(key) {
            self.by_key
                .retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.forgettable());
            // Pruning again only after as many new slots as are left: a constant cost per slot.
            self.prune_at = (self.by_key.len() * 2).max(SLOTS_PRUNE_MIN);
        }
        Arc::clone(self.by_key.entry(key.clone()).or_default())
    }
}

/// How many times a refresh drops a copy found to hold another repository and tries again
/// (the state taken from a shared store instead may be the old repository's too).
const REPLACED_TRIES: usize = 3;

/// Refreshes of different mirrors that run at once unless told otherwise.
pub const DEFAULT_CONCURRENT_REFRESHES: usize = 16;

impl Registry {
    /// Mirrors under `root` (created as needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry {
            root: root.into(),
            slots: Mutex::new(Slots::new()),
            consolidate_after: DEFAULT_CONSOLIDATE_AFTER,
            min_free: 0,
            free_space: gitcache_storage::fs::free_bytes,
            refreshes: Arc::new(tokio::sync::Semaphore::new(DEFAULT_CONCURRENT_REFRESHES)),
            bitmap_writers: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_BITMAP_WRITERS)),
            shared: None,
            leases: None,
            maintained: tokio::sync::broadcast::channel(MAINTAINED_BACKLOG).0,
            removed_elsewhere: std::sync::OnceLock::new(),
            replaced: std::sync::OnceLock::new(),
            quiet_wait: DEFAULT_QUIET_WAIT,
            maintenance: Arc::default(),
        }
    }

    /// Background maintenance under way now, and how it ended since the registry was made
    /// (for metrics, and for waiting until the mirrors are settled).
    pub fn maintenance(&self) -> Maintenance {
        let counts = &self.maintenance;
        Maintenance {
            running: counts.running.load(Ordering::Acquire),
            consolidated: counts.consolidated.load(Ordering::Relaxed),
            skipped: counts.skipped.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
        }
    }

    /// Let background work on a mirror wait at most `wait` for the answers from it (default
    /// [`DEFAULT_QUIET_WAIT`]; zero: not at all).
    pub fn with_quiet_wait(mut self, wait: Duration) -> Self {
        self.quiet_wait = wait;
        self
    }

    /// Note an answer about to be served from `key`'s mirror, which may first open it or wait
    /// on its refresh (a miss). Until the guard returned is dropped (once the answer is
    /// handed over whole), background work on the mirror waits before it starts: the
    /// consolidation a refresh asks for (writing the bitmaps of a first pack takes a core for
    /// seconds), and the checks made when the mirror is first opened (each bitmap file read
    /// whole). The client that waited for the download has the cores for its answer first;
    /// whoever comes after finds the work under way. Each such start waits at most
    /// [`with_quiet_wait`](Self::with_quiet_wait), counted from when it was asked for (the
    /// checks, then the maintenance they ask for, may each wait that long). Take the guard
    /// before the mirror is opened or the refresh asked for: the work it holds back starts
    /// as they end.
    pub fn answering(&self, key: &RepoKey) -> Answering {
        let slot = self.slot(key);
        slot.answering.fetch_add(1, Ordering::AcqRel);
        Answering { slot }
    }

    /// The first pack of `key`'s mirror while it arrives (a mirror made from nothing, by a
    /// refresh of this registry): the one being received now, or the next one announced.
    /// A clone of the same tips may be answered with its bytes as they come (see
    /// [`crate::live`]); wait for it beside the refresh, which may bring none. `None` once
    /// the refresh under way is known to bring the mirror from elsewhere instead (another
    /// instance fetches it, or the shared store holds it): no pack will be announced here.
    pub async fn live_pack(&self, key: &RepoKey) -> Option<Arc<LivePack>> {
        let slot = self.slot(key);
        slot.live.next().await
    }

    /// The pack of `key`'s mirror announced now, when it is not `seen`, or the next one: a
    /// pack fetched ahead of the refs for a client may answer that client as it comes (see
    /// [`crate::live`]). `None` once the refresh under way is known to bring the mirror from
    /// elsewhere.
    pub async fn live_pack_after(
        &self,
        key: &RepoKey,
        seen: Option<&Arc<LivePack>>,
    ) -> Option<Arc<LivePack>> {
        let slot = self.slot(key);
        match seen {
            Some(seen) => slot.live.next_after(seen).await,
            None => slot.live.next().await,
        }
    }

    /// How many packs refreshes of `key`'s mirror have taken in ahead of their refs so far
    /// (see [`Board::landed`]): what [`landed_after`](Self::landed_after) waits past.
    pub fn landings(&self, key: &RepoKey) -> u64 {
        self.slot(key).live.landings()
    }

    /// Once a refresh of `key`'s mirror has taken in a pack (fetched ahead of its refs, or
    /// its own fetch) past the `seen`th, before its refs are written: how many it has. A
    /// fetch waiting for that refresh whose wants are now all there may be answered at once.
    pub async fn landed_after(&self, key: &RepoKey, seen: u64) -> u64 {
        let slot = self.slot(key);
        slot.live.landed_after(seen).await
    }

    /// The objects of `key`'s first pack found as it arrived (see [`crate::live::Early`]),
    /// once a refresh making the mirror from nothing has them, unless they are `seen`, for a
    /// fetch of `wants` that has `haves`, or is a shallow clone of `depth` (see
    /// [`Board::next_early`](crate::live::Board::next_early)).
    pub async fn early_after(
        &self,
        key: &RepoKey,
        seen: Option<&Arc<crate::live::Early>>,
        (wants, haves): (&[gix_hash::ObjectId], &[gix_hash::ObjectId]),
        depth: Option<u32>,
    ) -> Arc<crate::live::Early> {
        let slot = self.slot(key);
        slot.live.next_early(seen, wants, haves, depth).await
    }

    /// Once the reading of `key`'s first pack for the objects found early cut the history
    /// from `wants` down to `haves` for want of room to walk it (see
    /// [`Board::past_the_walk`](crate::live::Board::past_the_walk)).
    pub async fn early_past_the_walk(
        &self,
        key: &RepoKey,
        wants: &[gix_hash::ObjectId],
        haves: &[gix_hash::ObjectId],
    ) {
        let slot = self.slot(key);
        slot.live.past_the_walk(wants, haves).await;
    }

    /// The first pack of `key`'s mirror announced now or next, whatever was said of the mirror
    /// coming from elsewhere: for a clone told so ([`live_pack`](Self::live_pack) was
    /// `None`), should this registry fetch the mirror itself after all (the other instance's
    /// fetch failed, its lease lapsed).
    pub async fn announced_pack(&self, key: &RepoKey) -> Arc<LivePack> {
        let slot = self.slot(key);
        slot.live.announced().await
    }

    /// The mirrors whose packs background maintenance (see
    /// [`maintain_in_background`](Self::maintain_in_background)) consolidated from now on,
    /// each as its maintenance ends: the new pack's bitmaps written, the replaced packs
    /// gone. A server that keeps repositories open opens such a mirror again then, and reads
    /// the new packs before the next fetch needs them.
    pub fn maintained(&self) -> tokio::sync::broadcast::Receiver<RepoKey> {
        self.maintained.subscribe()
    }

    /// Call `then` with each mirror whose local copy is dropped from now on because the
    /// shared store says it was removed (a purge or removal on another instance), as it
    /// goes, on the task that drops it: a server drops what else it keeps of it (stored
    /// answers). Every one is told, none missed. Set once; `false` if it was set before.
    pub fn on_removed_elsewhere(&self, then: impl Fn(&RepoKey) + Send + Sync + 'static) -> bool {
        (self.removed_elsewhere)
            .set(RemovedElsewhere(Box::new(then)))
            .is_ok()
    }

    /// Await `then` for each mirror dropped from now on because its upstream's refs were
    /// found to share no history with it ([`Error::Replaced`]), after the mirror is gone and
    /// before it is fetched again, its refresh lock held: a server drops what else it keeps
    /// of the repository (stored answers, here and in a shared store), none of which may
    /// answer for the repository the name means now. It runs whether or not the folder could
    /// be deleted, and must not refresh or remove the same mirror (its lock is held). Set
    /// once; `false` if it was set before.
    pub fn on_replaced<F>(&self, then: impl Fn(&RepoKey) -> F + Send + Sync + 'static) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        (self.replaced)
            .set(Replaced(Box::new(move |key| Box::pin(then(key)))))
            .is_ok()
    }

    /// Tell [`on_removed_elsewhere`](Self::on_removed_elsewhere)'s callback of `key`.
    fn tell_removed_elsewhere(&self, key: &RepoKey) {
        if let Some(then) = self.removed_elsewhere.get() {
            (then.0)(key);
        }
    }

    /// Coordinate shared mirrors through `leases` (expiring after `ttl` unless renewed): one
    /// instance at a time refreshes a mirror while the others wait and then take its result
    /// from the store, and one at a time maintains it. Without leases, instances that miss
    /// together each fetch, and the conditional commit sorts them out.
    pub fn with_leases(mut self, leases: Arc<dyn Leases>, ttl: Duration) -> Self {
        self.leases = Some((leases, ttl.max(Duration::from_secs(1))));
        self
    }

    fn lease_name(kind: &str, key: &RepoKey) -> String {
        format!("{kind}:{}", key.relative_path().display())
    }

    /// Wait for the lease `kind` of `key`; `None` without leases, when they cannot be asked,
    /// or after [`LEASE_PATIENCE`] leases' worth of waiting (a holder that renews but makes
    /// no progress must not stop the fleet): then the work goes on without, its commit still
    /// conditional.
    async fn wait_for_lease(&self, kind: &str, key: &RepoKey) -> Option<Held> {
        self.wait_for_lease_noting(kind, key, || {}).await
    }

    /// [`wait_for_lease`](Self::wait_for_lease), calling `waiting` first if another instance
    /// holds the lease now.
    async fn wait_for_lease_noting(
        &self,
        kind: &str,
        key: &RepoKey,
        waiting: impl FnOnce(),
    ) -> Option<Held> {
        let (leases, ttl) = self.leases.as_ref()?;
        let name = Self::lease_name(kind, key);
        // A database that does not answer holds nothing up longer than a lease lasts.
        let first =
            tokio::time::timeout(*ttl, Held::try_take(Arc::clone(leases), name.clone(), *ttl));
        match first.await {
            Ok(Ok(Some(held))) => return Some(held),
            Ok(Ok(None)) => waiting(),
            Ok(Err(err)) => {
                tracing::warn!(%err, "leases unavailable; going on without");
                return None;
            }
            Err(_) => {
                tracing::warn!(kind, "leases did not answer in time; going on without");
                return None;
            }
        }
        let waiting = Held::take(Arc::clone(leases), name, *ttl, LEASE_POLL);
        match tokio::time::timeout(*ttl * LEASE_PATIENCE, waiting).await {
            Ok(Ok(held)) => Some(held),
            Ok(Err(err)) => {
                tracing::warn!(%err, "leases unavailable; going on without");
                None
            }
            Err(_) => {
                tracing::warn!(
                    kind,
                    "another instance held the lease too long; going on without"
                );
                None
            }
        }
    }

    /// Keep mirrors in `shared` (an object store other instances use too), each folder
    /// under the root a working copy: refreshes and consolidations are committed there, and
    /// a refresh first takes what another instance committed (see [`crate::shared`]).
    pub fn with_shared(mut self, shared: Shared) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The object store mirrors are shared in, if any.
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The folder mirrors live under (`<host>/<owner>/<repo>.git` each).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run at most `n` refreshes (of different mirrors) at once; the others wait their turn.
    pub fn with_max_concurrent_refreshes(mut self, n: usize) -> Self {
        self.refreshes = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Consolidate a mirror once it has more than `packs` packs (see
    /// [`refresh_and_maintain`](Self::refresh_and_maintain)).
    pub fn with_consolidate_after(mut self, packs: usize) -> Self {
        self.consolidate_after = packs.max(1);
        self
    }

    /// Start no consolidation while the disk of the mirrors has less than `bytes` free (see
    /// [`consolidate`](Self::consolidate)), and stop a refresh whose pack, as it arrives,
    /// takes it below that (see [`Mirror::keeping_free`]); 0: no floor.
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Tell the free space of the mirrors' disk with `free` instead of the file system's
    /// (see [`Mirror::measuring_free_space`]).
    pub fn with_free_space(mut self, free: FreeSpace) -> Self {
        self.free_space = free;
        self
    }

    /// Bytes free on the disk of the mirrors, as this registry tells them.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        (self.free_space)(&self.root)
    }

    /// How many packs (with an index) `key`'s mirror has.
    fn pack_count(&self, key: &RepoKey) -> usize {
        std::fs::read_dir(self.path(key).join("objects").join("pack")).map_or(0, |dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("pack-") && name.ends_with(".idx")
                })
                .count()
        })
    }

    /// Whether the mirror of `key` should be consolidated: it has more packs than the policy
    /// allows, or one pack not yet marked with its tips or without reachability bitmaps (a
    /// mirror's first fetch: marking it lets clones be answered from it as it is, bitmaps
    /// answer the other fetches without a walk).
    pub fn needs_consolidation(&self, key: &RepoKey) -> bool {
        let dir = self.path(key).join("objects").join("pack");
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let stems: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".idx"))
            .filter(|n| n.starts_with("pack-"))
            .collect();
        // The pack's own files, not a temporary being written (`incoming-…`).
        let has = |stem: &str, ext: &str| names.iter().any(|n| *n == format!("{stem}.{ext}"));
        // Consolidation leaves commits kept by id in a pack beside the consolidated one.
        let kept_pack = usize::from(
            stems.iter().any(|s| has(s, "tips") && has(s, "bitmap"))
                && std::fs::read(self.path(key).join("packed-refs")).is_ok_and(|refs| {
                    bstr::ByteSlice::find(refs.as_slice(), crate::mirror::KEPT_PREFIX).is_some()
                }),
        );
        // A consolidated pack without its bitmaps (a restart before they were written, a
        // damaged file removed), or without its tips (done without when taken from the
        // shared store), is maintained again, whatever lies beside it.
        if stems.iter().any(|s| has(s, "tips") != has(s, "bitmap")) {
            return true;
        }
        // Far past its consolidated pack: every answer its bitmaps give walks the commits and
        // trees of the packs beside it.
        let consolidated = stems.iter().find(|s| has(s, "tips") && has(s, "bitmap"));
        if stems.len() > 1
            && let Some(main) = consolidated
        {
            let pack_dir = self.path(key).join("objects").join("pack");
            let idx = |stem: &str| pack_dir.join(format!("{stem}.idx"));
            // The pack consolidation wrote for commits kept by id holds one of them, and is
            // not counted: consolidating would only write it again.
            let kept = std::fs::read(self.path(key).join("packed-refs"))
                .map(|refs| kept_commits(&refs))
                .unwrap_or_default();
            let beside: Vec<u64> = stems
                .iter()
                .filter(|s| *s != main && !holds_any(&idx(s), &kept))
                .filter_map(|s| idx_objects(&idx(s)))
                .collect();
            if let Some(objects) = idx_objects(&idx(main))
                && far_past(objects, &beside)
            {
                return true;
            }
        }
        match stems.as_slice() {
            [stem] => !(has(stem, "tips") && has(stem, "bitmap")),
            _ => stems.len() > self.consolidate_after + kept_pack,
        }
    }

    /// [`refresh`](Self::refresh), then [maintain](Self::maintain_in_background) the mirror.
    pub async fn refresh_and_maintain(
        self: &Arc<Self>,
        key: &RepoKey,
        upstream: &Upstream,
        extra_prefixes: &[&str],
    ) -> Outcome {
        self.refresh_hinted_and_maintain(key, upstream, extra_prefixes, &Hints::default())
            .await
    }

    /// [`refresh_and_maintain`](Self::refresh_and_maintain), fetching `hints` (objects a
    /// client asked for that the mirror lacks) by id beside asking for the upstream's refs
    /// (see [`Mirror::refresh_hinted`]). A refresh already under way is waited for and shared
    /// as it is.
    pub async fn refresh_hinted_and_maintain(
        self: &Arc<Self>,
        key: &RepoKey,
        upstream: &Upstream,
        extra_prefixes: &[&str],
        hints: &Hints,
    ) -> Outcome {
        let outcome = self
            .refresh_with(key, upstream, extra_prefixes, true, &[], hints)
            .await;
        if outcome.is_ok() {
            self.maintain_in_background(key);
        }
        outcome
    }

    /// If the mirror of `key` [needs it](Self::needs_consolidation), consolidate it in a
    /// background task (which waits for any refresh of it to finish), unless one is under way
    /// already; it starts once the answers from the mirror are handed over (see
    /// [`answering`](Self::answering)). Also worth calling when a mirror is first
    /// opened: maintenance cut short (by a restart) is taken up again. Must be called within
    /// a Tokio runtime.
    pub fn maintain_in_background(self: &Arc<Self>, key: &RepoKey) {
        if !self.needs_consolidation(key) {
            return;
        }
        let slot = self.slot(key);
        let failed_at = *slot.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        if failed_at.is_some_and(|at| at.elapsed() < MAINTENANCE_BACKOFF) {
            return;
        }
        if slot.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        let (registry, key) = (Arc::clone(self), key.clone());
        // Counted from now: a maintenance asked for is under way before its task runs.
        let running = Running::start(&self.maintenance);
        tokio::spawn(async move {
            let _clear = ClearOnDrop(&slot.maintaining);
            // Ends before the flag above is cleared: one who saw that may count on this.
            let _running = running;
            let counts = &registry.maintenance;
            slot.quiet(registry.quiet_wait).await;
            let failed = |at| *slot.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = at;
            let outcome = registry.consolidate(&key).await;
            let ended = match &outcome {
                Ok(Some(_)) => &counts.consolidated,
                Ok(None) => &counts.skipped,
                Err(_) => &counts.failed,
            };
            ended.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(Some(done)) => {
                    tracing::info!(
                        packs_before = done.packs_before,
                        objects = done.objects,
                        bitmaps = done.bitmap.is_some(),
                        "mirror consolidated"
                    );
                    // Only a mirror whose packs were consolidated with their bitmaps; no one
                    // listening is no error.
                    if done.pack.is_some() && done.bitmap.is_some() {
                        let _ = registry.maintained.send(key);
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    failed(Some(std::time::Instant::now()));
                    tracing::warn!(%err, "mirror consolidation failed; not tried again for a while");
                    return;
                }
            }
            failed(None);
        });
    }

    /// Check the mirror's bitmap files in the background (each read whole, once), remove
    /// damaged ones, write the commit graphs its consolidated packs lack (or write damaged
    /// ones again) and the reverse indexes its packs lack, then
    /// [maintain](Self::maintain_in_background) it, which writes the bitmaps again. For when
    /// a mirror is opened: loads never read a bitmap's or a graph's checksum. Starts once
    /// the answers from the mirror are handed over (see [`answering`](Self::answering)).
    /// Must be called within a Tokio runtime.
    pub fn check_in_background(self: &Arc<Self>, key: &RepoKey) {
        if self.existing(key).is_none() {
            return;
        }
        let (registry, key) = (Arc::clone(self), key.clone());
        tokio::spawn(async move {
            registry.slot(&key).quiet(registry.quiet_wait).await;
            // Evicted or removed meanwhile: nothing to check.
            let Some(mirror) = registry.existing(&key) else {
                return;
            };
            {
                // Leftovers of a crash go when the mirror is first opened, not only at its
                // next refresh.
                let slot = registry.slot(&key);
                let _running = slot.running.lock().await;
                if let Err(err) = Self::tidy(&slot, &mirror) {
                    tracing::warn!(%err, "removing a crash's leftovers failed");
                }
            }
            let checking = Arc::clone(&registry);
            let checked_key = key.clone();
            let checked = tokio::task::spawn_blocking(move || checking.check_bitmaps(&checked_key));
            match checked.await {
                Ok(Ok(removed)) if !removed.is_empty() => {
                    tracing::warn!(?removed, "damaged bitmap files removed; writing them again");
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::warn!(%err, "checking bitmap files failed"),
                Err(err) => tracing::warn!(%err, "checking bitmap files failed"),
            }
            registry.write_graphs(&key).await;
            registry.maintain_in_background(&key);
        });
    }

    /// Check the checksums of the mirror's bitmap files and remove the damaged ones (see
    /// [`Mirror::remove_damaged_bitmaps`]), but for those this registry wrote or checked and
    /// finds unchanged since (same inode, length and time): returns the files removed.
    /// Blocking: each file checked is read whole.
    pub fn check_bitmaps(&self, key: &RepoKey) -> Result<Vec<PathBuf>, Error> {
        let Some(mirror) = self.existing(key) else {
            return Ok(Vec::new());
        };
        let slot = self.slot(key);
        let dir = mirror.git_dir().join("objects").join("pack");
        // The bitmaps of the packs the check reads: a pack's own (not a temporary), with its
        // index and data beside it.
        let before: Vec<(PathBuf, Option<FileStamp>)> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "bitmap")
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("pack-"))
                    && path.with_extension("idx").is_file()
                    && path.with_extension("pack").is_file()
            })
            .map(|path| {
                let stamp = FileStamp::of(&path);
                (path, stamp)
            })
            .collect();
        let removed = mirror.remove_damaged_bitmaps_except(&|path| slot.still_sound(path))?;
        // Those checked (or vouched for) and unchanged meanwhile are not read again next time;
        // files gone since are forgotten.
        let mut sound = std::collections::HashMap::new();
        for (path, stamp) in before {
            if let Some(stamp) = stamp
                && !removed.contains(&path)
                && FileStamp::of(&path) == Some(stamp)
            {
                sound.insert(path, stamp);
            }
        }
        *slot.sound_bitmaps.lock().unwrap_or_else(|p| p.into_inner()) = sound;
        Ok(removed)
    }

    /// Write the commit graphs the mirror's consolidated packs lack (see
    /// [`Mirror::write_missing_graphs`]), one bitmap writer's permit held: each reads every
    /// commit of its pack.
    async fn write_graphs(&self, key: &RepoKey) {
        let Some(mirror) = self.existing(key) else {
            return;
        };
        let Ok(_permit) = Arc::clone(&self.bitmap_writers).acquire_owned().await else {
            return;
        };
        let slot = self.slot(key);
        let written = tokio::task::spawn_blocking(move || {
            // A writer's temporary is not a crash's leftover while this is held.
            let _writing = slot
                .writing_bitmaps
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            mirror.write_missing_graphs()
        })
        .await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(%err, "writing commit graphs failed"),
            Err(err) => tracing::warn!(%err, "writing commit graphs failed"),
        }
    }

    /// Remove what a crash left in the mirror (see [`crate::ingest::remove_leftovers`]).
    /// Call with the mirror's refresh lock held, so that no ingestion of this process is
    /// under way; a bitmap writer's temporary is kept while it writes.
    fn tidy(slot: &Slot, mirror: &Mirror) -> std::io::Result<()> {
        let writer_idle = try_hold(&slot.writing_bitmaps);
        let removed = crate::ingest::remove_leftovers(mirror.git_dir(), writer_idle.is_some())?;
        if removed > 0 {
            tracing::info!(removed, "removed what a crash left in the mirror");
        }
        Ok(())
    }

    fn slot(&self, key: &RepoKey) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
    }

    /// Whether `key`'s mirror is being refreshed, maintained or evicted now (its refresh
    /// lock is held): [`evict_local`](Self::evict_local) would pass over it.
    pub fn is_busy(&self, key: &RepoKey) -> bool {
        self.slot(key).running.try_lock().is_err()
    }

    /// Where the mirror of `key` lives.
    pub fn path(&self, key: &RepoKey) -> PathBuf {
        self.root.join(key.relative_path())
    }

    /// The mirror of `key`, if it was created (its `HEAD`, written last, exists).
    pub fn existing(&self, key: &RepoKey) -> Option<Mirror> {
        let path = self.path(key);
        path.join("HEAD").is_file().then(|| Mirror::open(path))
    }

    /// Whether `key`'s mirror has not been fetched into yet here: there is none on disk, or
    /// its first fetch has not ended (a mirror has refs once one has, if only none).
    pub fn unfetched(&self, key: &RepoKey) -> bool {
        !self.path(key).join("packed-refs").is_file()
    }

    /// Refresh the mirror of `key` from `upstream`, creating it (in the upstream's object
    /// format) if needed. While a refresh of the same mirror runs, callers wait and share its
    /// outcome.
    pub async fn refresh(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra_prefixes: &[&str],
    ) -> Outcome {
        self.refresh_with(key, upstream, extra_prefixes, true, &[], &Hints::default())
            .await
    }

    /// [`refresh`](Self::refresh) of a mirror that exists: when there is none by its turn
    /// (removed meanwhile), [`Error::NoMirror`] and nothing is created.
    pub async fn refresh_existing(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra_prefixes: &[&str],
    ) -> Outcome {
        self.refresh_with(key, upstream, extra_prefixes, false, &[], &Hints::default())
            .await
    }

    /// [`refresh`](Self::refresh) the mirror of `key` (which must exist), also fetching the
    /// commits `oids` by id and keeping them (see [`Mirror::refresh_keeping`]): for fetches
    /// of commits no mirrored ref reaches, such as a pull request's merge commit. Done at
    /// once when they are all in the mirror by the time it is this refresh's turn.
    pub async fn keep(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra_prefixes: &[&str],
        oids: &[gix_hash::ObjectId],
    ) -> Outcome {
        self.refresh_with(
            key,
            upstream,
            extra_prefixes,
            false,
            oids,
            &Hints::default(),
        )
        .await
    }

    async fn refresh_with(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra_prefixes: &[&str],
        create: bool,
        keep: &[gix_hash::ObjectId],
        hints: &Hints,
    ) -> Outcome {
        let slot = self.slot(key);
        let seen = slot.last.lock().unwrap_or_else(|p| p.into_inner()).0;
        let _running = slot.running.lock().await;
        // However the refresh ends (cut short too), what it posted on the board goes (before
        // the lock does).
        let _clear = Clearing(&slot.live);
        if !create && self.existing(key).is_none() {
            return Err(Arc::new(Error::NoMirror));
        }
        // A refusal of another credential is not shared (one revoked, or never valid): this
        // caller's may be good.
        let credential = upstream.credential_digest();
        let finished = {
            let last = slot.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.0 != seen { last.1.clone() } else { None }
        }
        .filter(|(outcome, by)| {
            *by == credential || !matches!(outcome, Err(err) if err.is_access_denied())
        })
        .map(|(outcome, _)| outcome);
        if let Some(outcome) = finished
            && (keep.is_empty() || self.holds(key, keep).await)
        {
            // A refresh finished while we waited (with what was to be kept): it is ours too,
            // but for what it asked for ahead, which was another caller's to ask.
            return outcome.map(|done| Refreshed {
                asked_ahead: Vec::new(),
                ..done
            });
        }
        if !keep.is_empty() && self.holds(key, keep).await {
            return Ok(Refreshed::default());
        }
        let outcome = self
            .refresh_now(key, upstream, extra_prefixes, keep, hints)
            .await
            .map_err(Arc::new);
        // Refreshes that waited share a plain refresh's outcome only: one that also fetched
        // ids to keep (which the upstream may refuse, for one client) is not theirs. One that
        // fetched ids ahead is (a refusal there fails nothing).
        if keep.is_empty() {
            let mut last = slot.last.lock().unwrap_or_else(|p| p.into_inner());
            *last = (last.0 + 1, Some((outcome.clone(), credential)));
        }
        outcome
    }

    /// Remove the mirror of `key`, never while a refresh or consolidation of it runs: it is
    /// first renamed out of its place (at once, atomically: the next request finds no mirror
    /// and fetches anew), then deleted. Readers that have its files open keep reading them.
    /// `false` if there was none. Leftovers of a removal cut short (a crash) go at the next.
    pub async fn remove(&self, key: &RepoKey) -> Result<bool, Error> {
        let slot = self.slot(key);
        let _running = slot.running.lock().await;
        if let Some(shared) = &self.shared {
            shared.remove(key).await?;
        }
        let removed = self.discard_and_sweep(key).await?;
        if let Some(shared) = &self.shared {
            // No copy older than the tombstone is left here: one made from now on is newer,
            // whatever the clocks say.
            shared.copy_dropped(key);
        }
        Ok(removed)
    }

    /// [`discard`](Self::discard) `key`'s folder (its refresh lock held), then delete the
    /// trash: this removal, and every one a crash cut short before it.
    async fn discard_and_sweep(&self, key: &RepoKey) -> Result<bool, Error> {
        if !self.discard(key)? {
            return Ok(false);
        }
        self.sweep_trash().await?;
        Ok(true)
    }

    /// Delete the trash (what [`discard`](Self::discard) moved there), on a blocking thread.
    async fn sweep_trash(&self) -> Result<(), Error> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sweep_removed(&root))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Every mirror folder under the root, by key (the trash and foreign folders aside).
    pub fn on_disk(&self) -> Vec<RepoKey> {
        self.listed(false).unwrap_or_default()
    }

    /// [`on_disk`](Self::on_disk), or the error of a folder that could not be listed (no
    /// folder at all is no mirror): for callers that must not take a failed listing for
    /// mirrors gone.
    pub fn try_on_disk(&self) -> std::io::Result<Vec<RepoKey>> {
        self.listed(true)
    }

    /// The mirror folders; with `strict`, a folder that cannot be listed is an error, else
    /// it holds none.
    fn listed(&self, strict: bool) -> std::io::Result<Vec<RepoKey>> {
        // The folders in `path`. An entry gone or unreadable meanwhile is none; a folder gone
        // is empty.
        let dirs = |path: &Path| -> std::io::Result<Vec<std::ffi::OsString>> {
            let entries = match std::fs::read_dir(path) {
                Ok(entries) => entries,
                Err(err) if strict && err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(err);
                }
                Err(_) => return Ok(Vec::new()),
            };
            Ok(entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name())
                .collect())
        };
        let mut keys = Vec::new();
        // Hosts only: not the trash or other dot folders, not a file system's `lost+found`
        // (which this process may not read).
        let hosts = dirs(&self.root)?.into_iter().filter(|name| {
            let name = name.as_encoded_bytes();
            !name.starts_with(b".") && name != b"lost+found"
        });
        for host in hosts {
            for owner in dirs(&self.root.join(&host))? {
                for repo in dirs(&self.root.join(&host).join(&owner))? {
                    let relative = Path::new(&host).join(&owner).join(&repo);
                    if let Some(key) = RepoKey::from_relative_path(&relative) {
                        keys.push(key);
                    }
                }
            }
        }
        Ok(keys)
    }

    /// Drop `key`'s local folder to free disk space, unless a refresh or consolidation of it
    /// is under way (`false`; try again later). A shared mirror stays in the store: only this
    /// instance's copy goes, and the next request hydrates it again.
    pub async fn evict_local(&self, key: &RepoKey) -> Result<bool, Error> {
        let slot = self.slot(key);
        let Ok(_running) = slot.running.try_lock() else {
            return Ok(false);
        };
        self.discard_and_sweep(key).await
    }

    /// Move the local folder of `key` into the trash at once (call with its refresh lock
    /// held); `false` if there was none.
    fn discard(&self, key: &RepoKey) -> Result<bool, Error> {
        let trash = self.root.join(TRASH);
        let path = self.path(key);
        if !path.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&trash)?;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let gone = trash.join(format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(&path, &gone)?;
        gitcache_storage::fs::sync_parent(&path)?;
        // Its bitmap files went with it: nothing left to remember of them.
        self.slot(key)
            .sound_bitmaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(true)
    }

    /// Delete what removals cut short (a crash) left in the trash; run at start.
    pub fn sweep_removed(&self) -> Result<(), Error> {
        Ok(sweep_removed(&self.root)?)
    }

    /// Consolidate the mirror of `key` (see [`Mirror::consolidate`]), never while a refresh
    /// of it runs. `None` if there is no such mirror.
    pub async fn consolidate(
        &self,
        key: &RepoKey,
    ) -> Result<Option<crate::mirror::Consolidated>, Error> {
        // Below the floor, no packs are merged: the mirror keeps serving from its packs as
        // they are, and is consolidated by a later maintenance (after its next refresh, or
        // when it is next opened) with room. A lone pack (a mirror's first) is only marked
        // and given its bitmaps, a fraction of its size: that goes on.
        if self.min_free > 0
            && self.pack_count(key) > 1
            && self.free_bytes().unwrap_or(u64::MAX) < self.min_free
        {
            tracing::info!(
                keep = self.min_free,
                "not enough free disk space to consolidate"
            );
            return Ok(None);
        }
        // One instance at a time maintains a shared mirror; the others leave it to it.
        let lease = match &self.leases {
            Some((leases, ttl)) if self.shared.is_some() => {
                let name = Self::lease_name("maintain", key);
                match Held::try_take(Arc::clone(leases), name, *ttl).await {
                    Ok(Some(held)) => Some(held),
                    Ok(None) => return Ok(None),
                    Err(err) => {
                        tracing::warn!(%err, "leases unavailable; maintaining without");
                        None
                    }
                }
            }
            _ => None,
        };
        let outcome = self.consolidate_held(key).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        outcome
    }

    /// With leases, the refresh lease of `key` (waited for), so that no instance commits a
    /// refresh while this one consolidates (which would make the consolidation's commit
    /// conflict and its work be thrown away): refreshes wait for consolidation across the
    /// fleet as they do within an instance.
    async fn hold_refreshes(&self, key: &RepoKey) -> Option<Held> {
        if self.shared.is_some() {
            self.wait_for_lease("refresh", key).await
        } else {
            None
        }
    }

    /// Consolidate `key`'s mirror (its refresh lock held): taken from the shared store first
    /// and committed there after. `None`: no mirror, or another instance committed first
    /// (its state wins; this pack goes).
    async fn consolidate_locked(
        &self,
        key: &RepoKey,
    ) -> Result<Option<(Mirror, crate::mirror::Consolidated)>, Error> {
        if let Some(shared) = &self.shared {
            self.take_shared(shared, key).await?;
        }
        let Some(mirror) = self.existing(key) else {
            return Ok(None);
        };
        let consolidating = mirror.clone();
        let done = tokio::task::spawn_blocking(move || consolidating.consolidate())
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        if let Some(shared) = &self.shared
            && shared.publish(key, mirror.git_dir()).await? == Published::Conflict
        {
            tracing::info!(
                "another instance committed this mirror during consolidation; taking its state"
            );
            self.take_shared(shared, key).await?;
            return Ok(None);
        }
        Ok(Some((mirror, done)))
    }

    async fn consolidate_held(
        &self,
        key: &RepoKey,
    ) -> Result<Option<crate::mirror::Consolidated>, Error> {
        let slot = self.slot(key);
        let (mirror, mut done) = {
            // In the order refreshes take them (this instance's lock, then the fleet's lease).
            let _running = slot.running.lock().await;
            let refreshes = self.hold_refreshes(key).await;
            let consolidated = self.consolidate_locked(key).await;
            if let Some(lease) = refreshes {
                lease.release().await;
            }
            match consolidated? {
                Some(done) => done,
                None => return Ok(None),
            }
        };
        // Bitmaps take long on big histories: refreshes go on meanwhile, and a second
        // writer for the same mirror waits for the first and finds its file.
        if let Some(pack) = done.pack.clone()
            && done.bitmap.is_none()
        {
            let tips = done.tips.clone();
            let (slot, writer) = (Arc::clone(&slot), mirror.clone());
            let _writer_permit = Arc::clone(&self.bitmap_writers)
                .acquire_owned()
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            let written = tokio::task::spawn_blocking(move || {
                // Waited for, not tried: the leftovers sweep holds it for a moment too (so as
                // not to take a writer's temporary for a crash's), and a writer that gave up
                // on that left the mirror without bitmaps until its next maintenance. A
                // second writer finds the first one's file and is done at once.
                let _writing = slot
                    .writing_bitmaps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // A file already there (another writer's, or one taken from the shared
                // store) is returned as it is: only one written now was read back here.
                let existing = FileStamp::of(&pack.with_extension("bitmap"));
                let written = writer.write_bitmaps(&pack, &tips)?;
                if let Some(path) = &written
                    && let Some(now) = FileStamp::of(path)
                    && existing != Some(now)
                {
                    slot.sound(path);
                }
                Ok::<_, Error>(written)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            done.bitmap = written;
        }
        // What was kept aside of the pack replaced goes once the new pack has its bitmaps,
        // and the bitmaps join the shared store: where no consolidation runs.
        let replaced = done.pack.clone().filter(|_| done.bitmap.is_some());
        if replaced.is_some() || self.shared.is_some() {
            let _running = slot.running.lock().await;
            if self.existing(key).is_none() {
                // Removed meanwhile.
                return Ok(Some(done));
            }
            if let Some(pack) = replaced {
                let removing = mirror.clone();
                tokio::task::spawn_blocking(move || removing.remove_replaced(&pack))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            }
            if let Some(shared) = &self.shared {
                // The bitmaps join the manifest (unless another instance committed
                // meanwhile: then its own maintenance writes them), and files no manifest
                // names go.
                shared.publish(key, mirror.git_dir()).await?;
                let collected = shared.collect(key).await?;
                if collected > 0 {
                    tracing::info!(collected, "unnamed files collected from the shared store");
                }
            }
        }
        // The bundle is a copy of the pack: written without holding refreshes back.
        if let Some(shared) = self.shared.as_ref().filter(|s| s.bundles())
            && let Err(err) = shared.bundle(key, mirror.git_dir()).await
        {
            tracing::warn!(%err, "the mirror's bundle could not be written");
        }
        Ok(Some(done))
    }

    /// Whether the mirror of `key` holds every object of `oids` (looked up on a blocking
    /// thread: it opens the repository).
    async fn holds(&self, key: &RepoKey, oids: &[gix_hash::ObjectId]) -> bool {
        let (path, oids) = (self.path(key), oids.to_vec());
        tokio::task::spawn_blocking(move || {
            gitcache_pack::Repository::open(path)
                .is_ok_and(|repo| oids.iter().all(|oid| repo.contains(oid)))
        })
        .await
        .unwrap_or(false)
    }

    async fn refresh_now(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra: &[&str],
        keep: &[gix_hash::ObjectId],
        hints: &Hints,
    ) -> Result<Refreshed, Error> {
        let Some(shared) = &self.shared else {
            let _permit = self.permit().await?;
            return self.refresh_local(key, upstream, extra, keep, hints).await;
        };
        // While another instance refreshes, wait (holding no permit: refreshes of other
        // mirrors go on): its result is then taken from the store, and no first pack is
        // announced here meanwhile.
        let slot = self.slot(key);
        let lease = self
            .wait_for_lease_noting("refresh", key, || slot.live.elsewhere())
            .await;
        let outcome = match self.permit().await {
            Ok(_permit) => {
                self.refresh_shared(shared, key, upstream, extra, keep, hints)
                    .await
            }
            Err(err) => Err(err),
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
        outcome
    }

    /// One of the permits that bound refreshes running at once.
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        Arc::clone(&self.refreshes)
            .acquire_owned()
            .await
            .map_err(|_| Error::Io(std::io::Error::other("the registry is closed")))
    }

    async fn refresh_shared(
        &self,
        shared: &Shared,
        key: &RepoKey,
        upstream: &Upstream,
        extra: &[&str],
        keep: &[gix_hash::ObjectId],
        hints: &Hints,
    ) -> Result<Refreshed, Error> {
        let path = self.path(key);
        let before = self.refs_of(key);
        let slot = self.slot(key);
        for _ in 0..COMMIT_TRIES {
            // The store out of reach (or holding something unusable) does not stop the
            // instance: the local copy is refreshed alone and committed once the store
            // answers again (the next refresh hydrates, then publishes). A mirror taken from
            // the store is not fetched from nothing here: no first pack is announced.
            match self
                .take_shared_noting(shared, key, || slot.live.elsewhere())
                .await
            {
                Ok(()) => {}
                Err(Error::Shared(err)) => {
                    if matches!(err, crate::shared::Error::FailedLately(_)) {
                        tracing::info!(%err, "refreshing the local copy alone");
                    } else {
                        tracing::warn!(%err, "object store unavailable; refreshing the local copy alone");
                    }
                    let mut done = self
                        .refresh_local(key, upstream, extra, keep, hints)
                        .await?;
                    // A manifest that could not be read is replaced by this commit; one that
                    // names a damaged file is left to a later one (this copy is behind it).
                    if let Err(err) = shared.publish(key, &path).await {
                        tracing::warn!(%err, "the refresh stays local until the store answers again");
                    }
                    done.changed = self.refs_of(key) != before;
                    return Ok(done);
                }
                Err(err) => return Err(err),
            }
            let mut done = self
                .refresh_local(key, upstream, extra, keep, hints)
                .await?;
            match shared.publish(key, &path).await {
                Ok(Published::Done) => {
                    done.changed = self.refs_of(key) != before;
                    return Ok(done);
                }
                Ok(Published::Conflict) => {
                    tracing::info!(
                        "another instance committed this mirror first; taking its state"
                    );
                }
                Err(err) => {
                    tracing::warn!(%err, "object store unavailable; the refresh stays local until it answers again");
                    done.changed = self.refs_of(key) != before;
                    return Ok(done);
                }
            }
        }
        Err(Error::Contended(COMMIT_TRIES))
    }

    /// The refs of `key`'s local copy, to tell whether a refresh changed them.
    fn refs_of(&self, key: &RepoKey) -> Option<Vec<(bstr::BString, Option<gix_hash::ObjectId>)>> {
        let repo = gitcache_pack::Repository::open(self.path(key)).ok()?;
        let refs = repo.refs().ok()?;
        Some(refs.into_iter().map(|r| (r.name, r.oid)).collect())
    }

    /// Where the bundle of `key`'s consolidated pack can be downloaded (a presigned URL,
    /// valid for `expires_in`) and the bundled pack's stem, when the shared store keeps
    /// bundles and has one for it.
    pub async fn bundle_url(
        &self,
        key: &RepoKey,
        expires_in: Duration,
    ) -> Result<Option<(String, String)>, Error> {
        match &self.shared {
            Some(shared) if shared.bundles() => match self.existing(key) {
                Some(mirror) => Ok(shared.bundle_url(key, mirror.git_dir(), expires_in).await?),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// Whether the shared store keeps bundles for `bundle-uri`.
    pub fn bundles(&self) -> bool {
        self.shared.as_ref().is_some_and(Shared::bundles)
    }

    /// Bring `key`'s local copy up to what another instance committed, if the store holds
    /// a newer manifest (one small read when it does not). Skipped while a refresh of it runs
    /// (that refresh takes the store's state anyway) and without a shared store.
    pub async fn catch_up(&self, key: &RepoKey) -> Result<(), Error> {
        self.catching_up(key, true).await
    }

    /// [`catch_up`](Self::catch_up) with a purge elsewhere alone: a copy whose manifest was
    /// removed from the store goes, and nothing is downloaded (for a disk below its floor).
    pub async fn catch_up_removal(&self, key: &RepoKey) -> Result<(), Error> {
        self.catching_up(key, false).await
    }

    async fn catching_up(&self, key: &RepoKey, download: bool) -> Result<(), Error> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let slot = self.slot(key);
        let Ok(_running) = slot.running.try_lock() else {
            return Ok(());
        };
        if self.existing(key).is_none() {
            return Ok(());
        }
        if download {
            return self.take_shared(shared, key).await;
        }
        if shared.removed(key, &self.path(key)).await? {
            tracing::info!("the shared mirror was removed; dropping the local copy");
            self.discard(key)?;
            shared.copy_dropped(key);
            self.tell_removed_elsewhere(key);
        }
        Ok(())
    }

    /// Bring `key`'s local copy to what the shared store holds (call with its refresh lock);
    /// a copy whose manifest was removed there (a purge on another instance) goes.
    async fn take_shared(&self, shared: &Shared, key: &RepoKey) -> Result<(), Error> {
        self.take_shared_noting(shared, key, || {}).await
    }

    /// [`take_shared`](Self::take_shared), calling `taking` once the store is found to hold
    /// a state the local copy lacks, before it is taken.
    async fn take_shared_noting(
        &self,
        shared: &Shared,
        key: &RepoKey,
        taking: impl FnOnce(),
    ) -> Result<(), Error> {
        let mut taking = Some(taking);
        let mut noting = || {
            if let Some(taking) = taking.take() {
                taking();
            }
        };
        if shared
            .hydrate_noting(key, &self.path(key), &mut noting)
            .await?
            == Hydrated::Removed
        {
            tracing::info!("the shared mirror was removed; dropping the local copy");
            self.discard(key)?;
            shared.copy_dropped(key);
            self.tell_removed_elsewhere(key);
            // A state committed since the removal is taken now, as a copy made anew would.
            shared.hydrate_noting(key, &self.path(key), noting).await?;
        }
        Ok(())
    }

    /// Refresh `key`'s local copy (its refresh lock held), creating it if there is none. A
    /// copy whose upstream now lists a history that shares nothing with it
    /// ([`Error::Replaced`]) is dropped, with a tombstone in the shared store for the other
    /// instances' copies and what [`on_replaced`](Self::on_replaced) drops, and the repository
    /// is fetched again from nothing.
    async fn refresh_local(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra: &[&str],
        keep: &[gix_hash::ObjectId],
        hints: &Hints,
    ) -> Result<Refreshed, Error> {
        let mut replaced = false;
        for _ in 0..REPLACED_TRIES {
            match self
                .refresh_local_once(key, upstream, extra, keep, hints)
                .await
            {
                // A repository of another object format under the name is another
                // repository as surely.
                Err(Error::Replaced | Error::ObjectFormat { .. }) => {}
                Ok(mut done) => {
                    done.replaced = replaced;
                    done.changed |= replaced;
                    return Ok(done);
                }
                Err(err) => return Err(err),
            }
            tracing::warn!(
                "the upstream's repository is not the mirror's (its history shares nothing with it, or its object format differs: the name means another repository now, or the history was rewritten whole): dropping the mirror and what is stored of it, and fetching it again"
            );
            self.drop_replaced(key).await?;
            replaced = true;
        }
        Err(Error::Replaced)
    }

    /// Drop `key`'s copy, found to hold another repository than the one its name means now
    /// (its refresh lock held): a tombstone in the shared store first, over the state the copy
    /// took (the other instances' copies go at it); then the folder, and what
    /// [`on_replaced`](Self::on_replaced) drops. Until the store takes the tombstone, the
    /// copy stays as it was and this fails: dropped alone, it would be made again from the
    /// store's state, the old repository's. When the store holds another state (another
    /// instance committed since, having found the same or not yet), nothing is written there
    /// and that state is taken, to be checked again.
    async fn drop_replaced(&self, key: &RepoKey) -> Result<(), Error> {
        let path = self.path(key);
        let tombstone = match &self.shared {
            Some(shared) => shared.remove_taken(key, &path).await?,
            None => None,
        };
        let tombstoned = self.shared.is_none() || tombstone.is_some();
        let dropped = self.discard(key);
        if let Some(then) = self.replaced.get() {
            (then.0)(key).await;
        }
        if dropped? {
            if let Some(shared) = &self.shared
                && tombstone.is_some()
            {
                // A copy made here from now on is newer than that tombstone, whatever the
                // clocks say.
                shared.copy_dropped(key);
            }
            if let Err(err) = self.sweep_trash().await {
                tracing::warn!(%err, "deleting the dropped mirror failed; the next start deletes it");
            }
        }
        if !tombstoned && let Some(shared) = &self.shared {
            self.take_shared(shared, key).await?;
        }
        Ok(())
    }

    async fn refresh_local_once(
        &self,
        key: &RepoKey,
        upstream: &Upstream,
        extra: &[&str],
        keep: &[gix_hash::ObjectId],
        hints: &Hints,
    ) -> Result<Refreshed, Error> {
        let mirror = match self.existing(key) {
            Some(mirror) => mirror,
            None => {
                let format = upstream.object_format().await?;
                let path = self.path(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // A half-created folder from a crash is replaced.
                if path.exists() {
                    std::fs::remove_dir_all(&path)?;
                }
                Mirror::create(path, format)?
            }
        };
        let slot = self.slot(key);
        Self::tidy(&slot, &mirror)?;
        // However the local refresh ends (cut short too), its pack is announced no more.
        let _clear = Clearing(&slot.live);
        let mirror = mirror
            .announcing_on(Arc::clone(&slot.live))
            .keeping_free(self.min_free)
            .measuring_free_space(self.free_space);
        mirror.refresh_hinted(upstream, extra, keep, hints).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitcache_testkit::repo::{self, RepoSpec};
    use gitcache_testkit::upstream::{Access, Upstream};

    /// How many files of `git_dir`'s pack folder have the extension `ext`.
    fn pack_files(git_dir: &Path, ext: &str) -> usize {
        repo::pack_files(git_dir, ext).unwrap().len()
    }

    /// The mirrors listed are the folders that make keys: files, dot folders (the trash)
    /// and `lost+found` at the top are passed over, a repository named with a dot is not; a
    /// data directory not made yet holds none.
    #[test]
    fn mirrors_on_disk_are_the_folders_that_make_keys() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("mirrors"));
        assert_eq!(registry.try_on_disk().unwrap(), Vec::new());
        let keys = [
            RepoKey::new("example.com", "acme", "app.git").unwrap(),
            RepoKey::new("example.com", "acme", ".github.git").unwrap(),
        ];
        for key in &keys {
            std::fs::create_dir_all(registry.path(key)).unwrap();
        }
        let root = registry.root().to_owned();
        for folder in [".removed/x/y", "lost+found/x/y"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        std::fs::write(root.join("stray"), b"").unwrap();
        std::fs::write(root.join("example.com/stray"), b"").unwrap();
        std::fs::write(root.join("example.com/acme/stray.git"), b"").unwrap();
        let mut listed = registry.try_on_disk().unwrap();
        listed.sort_by_key(|k| k.relative_path());
        let mut expected = keys.to_vec();
        expected.sort_by_key(|k| k.relative_path());
        assert_eq!(listed, expected);
        assert_eq!(registry.on_disk().len(), 2);
    }

    /// Keys asked for once (refused upstream, failed, evicted) do not keep a slot each for
    /// ever; a slot someone holds, or one remembering sound bitmaps or a failed maintenance,
    /// is kept and stays the only one of its key.
    #[test]
    fn slots_no_one_holds_are_pruned_and_held_ones_stay_single() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        let key = |i: usize| RepoKey::new("example.com", "acme", &format!("r{i}")).unwrap();
        let count = || registry.slots.lock().unwrap().by_key.len();

        let held = registry.answering(&key(0));
        let sound = registry.slot(&key(1));
        let bitmap = dir.path().join("pack.bitmap");
        std::fs::write(&bitmap, b"x").unwrap();
        sound.sound(&bitmap);
        drop(sound);
        let failed = registry.slot(&key(2));
        *failed.failed_at.lock().unwrap() = Some(std::time::Instant::now());
        drop(failed);

        for i in 3..10 * SLOTS_PRUNE_MIN {
            drop(registry.answering(&key(i)));
            assert!(
                count() <= SLOTS_PRUNE_MIN,
                "{} slots after {i} keys",
                count()
            );
        }
        // The held slot is the one the map hands out: a refresh now would wait on it.
        assert!(Arc::ptr_eq(&held.slot, &registry.slot(&key(0))));
        assert!(registry.slot(&key(1)).still_sound(&bitmap));
        assert!(registry.slot(&key(2)).failed_at.lock().unwrap().is_some());
        drop(held);

        // More held at once than the pruning threshold: every one stays the map's own,
        // through the prunes their arrival sets off; once let go, they are pruned.
        let many: Vec<Answering> = (0..3 * SLOTS_PRUNE_MIN)
            .map(|i| registry.answering(&key(100_000 + i)))
            .collect();
        for (i, held) in many.iter().enumerate() {
            assert!(Arc::ptr_eq(&held.slot, &registry.slot(&key(100_000 + i))));
        }
        let prune_at = registry.slots.lock().unwrap().prune_at;
        assert!(count() >= many.len());
        drop(many);
        for i in 0..prune_at {
            drop(registry.answering(&key(300_000 + i)));
        }
        assert!(count() <= SLOTS_PRUNE_MIN, "{} slots", count());
    }

    #[test]
    fn a_mirror_is_far_past_its_consolidation_by_the_share_of_objects_beside_it() {
        // 128,000 objects: more than 2,000 beside, counted together.
        assert!(!far_past(128_000, &[1_200, 800]));
        assert!(far_past(128_000, &[1_200, 801]));
        // Never for fewer than BESIDE_AT_LEAST, however small the consolidated pack.
        assert!(!far_past(10, &[BESIDE_AT_LEAST - 1]));
        assert!(far_past(10, &[BESIDE_AT_LEAST]));
        assert!(!far_past(64_000, &[]));
        let most = u64::from(u32::MAX);
        assert!(
            far_past(most, &[most, most, most]),
            "counts of indexes at their largest"
        );
    }

    #[test]
    fn objects_are_counted_from_a_pack_index_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        repo::generate(&path, &RepoSpec::tiny(3)).unwrap();
        let git = |args: &[&str]| gitcache_testkit::git::git_stdout(&path, args);
        git(&["repack", "-adq"]);
        let idx = repo::pack_files(&path, "idx").unwrap();
        let counted = git(&["count-objects", "-v"]);
        let in_pack: u64 = counted
            .lines()
            .find_map(|l| l.strip_prefix("in-pack: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(in_pack > 10);
        assert_eq!(idx_objects(&idx[0]), Some(in_pack));
        // The kept commits of `packed-refs`, and whether an index lists one.
        let main = git(&["rev-parse", "main"]);
        let main = gix_hash::ObjectId::from_hex(main.trim().as_bytes()).unwrap();
        let other = gix_hash::ObjectId::from_hex(&[b'7'; 40]).unwrap();
        let refs = format!(
            "# pack-refs with: peeled fully-peeled sorted\n{main} refs/heads/main\n\
             {other} {}1/{other}\n{main} {}2/{main}\n",
            crate::mirror::KEPT_PREFIX,
            crate::mirror::KEPT_PREFIX
        );
        assert_eq!(kept_commits(refs.as_bytes()), [other, main]);
        assert!(holds_any(&idx[0], &[other, main]));
        assert!(!holds_any(&idx[0], &[other]));
        assert!(!holds_any(&idx[0], &[]));
        assert!(!holds_any(&path.join("HEAD"), &[main]));
        // Not an index: none.
        assert_eq!(idx_objects(&path.join("HEAD")), None);
        std::fs::write(dir.path().join("short.idx"), b"\xfftOc\0\0\0\x02").unwrap();
        assert_eq!(idx_objects(&dir.path().join("short.idx")), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_background_consolidation_is_not_started_again_at_once() {
        let upstream = Upstream::start().unwrap();
        let source = upstream.repo_path("acme/failing");
        repo::generate(&source, &RepoSpec::small(95)).unwrap();
        upstream.adopt_repo("acme/failing", Access::Public).unwrap();
        let client = gitcache_upstream::Upstream::new(
            &upstream.repo_url("acme/failing"),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()).with_consolidate_after(1));
        let key = RepoKey::new("127.0.0.1", "acme", "failing").unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
        repo::append_commits(&source, "main", 2, 96).unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
        let git_dir = registry.path(&key);
        assert_eq!(pack_files(&git_dir, "pack"), 2);
        assert!(registry.needs_consolidation(&key));
        // Where the consolidated pack is written, a folder: writing it fails.
        let staging = git_dir.join(format!(
            "objects/pack/incoming-{}-consolidate",
            std::process::id()
        ));
        std::fs::create_dir(&staging).unwrap();
        let slot = registry.slot(&key);
        let settled = || async {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while slot.maintaining.load(Ordering::Acquire) {
                assert!(std::time::Instant::now() < deadline, "still maintaining");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        registry.maintain_in_background(&key);
        assert!(slot.maintaining.load(Ordering::Acquire), "started");
        settled().await;
        assert_eq!(pack_files(&git_dir, "pack"), 2, "nothing consolidated");
        assert!(slot.failed_at.lock().unwrap().is_some());
        let failed = crate::registry::Maintenance {
            failed: 1,
            ..Default::default()
        };
        assert_eq!(registry.maintenance(), failed);
        // Asked again (as after every refresh): not started, though it could succeed now.
        std::fs::remove_dir(&staging).unwrap();
        registry.maintain_in_background(&key);
        assert!(
            !slot.maintaining.load(Ordering::Acquire),
            "started again at once"
        );
        // Asked directly, it is done; a background one after a success is not held back.
        registry.consolidate(&key).await.unwrap().unwrap();
        assert_eq!(pack_files(&git_dir, "pack"), 1);
        // As long ago as the wait lasts (none, on a clock younger than that).
        *slot.failed_at.lock().unwrap() =
            std::time::Instant::now().checked_sub(MAINTENANCE_BACKOFF);
        repo::append_commits(&source, "main", 2, 97).unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
        registry.maintain_in_background(&key);
        assert!(
            slot.maintaining.load(Ordering::Acquire),
            "started once the wait is over"
        );
        settled().await;
        assert!(slot.failed_at.lock().unwrap().is_none());
        assert_eq!(pack_files(&git_dir, "pack"), 1);
        // Counted as a background maintenance that consolidated (the direct one is not).
        let ended = registry.maintenance();
        assert_eq!((ended.running, ended.consolidated, ended.failed), (0, 1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bitmaps_are_written_only_with_a_writers_permit() {
        let upstream = Upstream::start().unwrap();
        repo::generate(&upstream.repo_path("acme/held"), &RepoSpec::small(97)).unwrap();
        upstream.adopt_repo("acme/held", Access::Public).unwrap();
        let client = gitcache_upstream::Upstream::new(
            &upstream.repo_url("acme/held"),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let key = RepoKey::new("127.0.0.1", "acme", "held").unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
        let git_dir = registry.path(&key);
        assert!(registry.needs_consolidation(&key));

        // Every permit held elsewhere (another mirror's writer): the consolidation is done,
        // its bitmaps wait.
        let held = Arc::clone(&registry.bitmap_writers)
            .acquire_many_owned(CONCURRENT_BITMAP_WRITERS as u32)
            .await
            .unwrap();
        // The first fetch marked its pack already; consolidation marks it again (a new file
        // renamed into place) just before its bitmaps are written.
        let tips = || {
            let marked = repo::pack_files(&git_dir, "tips").unwrap();
            marked
                .first()
                .map(|f| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(f).unwrap()))
        };
        let first = tips();
        assert!(first.is_some());
        let consolidating = tokio::spawn({
            let (registry, key) = (Arc::clone(&registry), key.clone());
            async move { registry.consolidate(&key).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tips() == first {
            assert!(std::time::Instant::now() < deadline, "not consolidated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Long enough for a small repository's bitmaps to be written, were they not held.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pack_files(&git_dir, "bitmap"), 0);
        assert!(!consolidating.is_finished());

        drop(held);
        let done = consolidating.await.unwrap().unwrap().unwrap();
        assert!(done.bitmap.as_deref().is_some_and(Path::is_file));
        assert_eq!(pack_files(&git_dir, "bitmap"), 1);
        assert!(!registry.needs_consolidation(&key));
    }
}
