//! The mirrors as the proxy sees them: opened repositories kept while their packs stay the
//! same, whether a mirror has what a fetch wants, refreshes (in tasks of their own), and
//! what happened to each repository since the start (for the admin page).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use gitcache_mirror::mirror::{ClientFetch, Hints, MAX_HINTS};
use gitcache_mirror::registry::Registry;
use gitcache_pack::Repository;
use gitcache_protocol::ls_refs::RefLine;
use gitcache_protocol::request::Fetch;
use gitcache_storage::repo::RepoKey;
use gitcache_upstream::Upstream;
use tracing::Instrument;

use crate::error::Error;
use crate::metrics;
use crate::target::Target;

/// An opened mirror, kept while its packs stay the same.
#[derive(Debug)]
struct OpenRepo {
    packs_changed: Option<SystemTime>,
    repo: Arc<Repository>,
    /// What the handles it replaced had made for their answers (see
    /// [`Repository::warmth`]), made for new packs when maintenance has written them.
    inherited: gitcache_pack::Warmth,
    /// When a request last took it.
    used: Instant,
    /// Whether its files were checked and its maintenance taken up (not when only a
    /// webhook's questions opened it: the next request does it).
    checked: bool,
    /// Whether a request took this mirror (this handle or one it replaced): it is then
    /// prepared for shallow clones after maintenance (see [`Mirrors::prepare`]).
    requested: bool,
}

impl OpenRepo {
    /// The handle, taken now as `how` says, and whether its check and maintenance are to be
    /// taken up (it was opened so far only for a webhook's questions).
    fn taken(&mut self, how: Opening) -> (Arc<Repository>, bool) {
        self.used = Instant::now();
        let take_up = how == Opening::Checked && !self.checked;
        self.checked |= how != Opening::Question;
        (Arc::clone(&self.repo), take_up)
    }
}

/// Why a mirror is opened (see [`Mirrors::open_and_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// For a request: checked, maintenance taken up, when opened anew.
    Checked,
    /// After its maintenance: nothing to take up.
    Maintained,
    /// For a webhook's questions: nothing taken up (it would show on `/metrics`); the next
    /// request does it.
    Question,
}

/// What this instance did for one repository since it started (for the admin page).
pub(crate) type RepoStats = gitcache_catalog::Activity;

/// How much disk mirrors may take (see [`Mirrors::enforce`]).
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    /// The most bytes all mirrors may hold.
    pub(crate) max_bytes: Option<u64>,
    /// The bytes to keep free on the disk; a refresh is refused below it.
    pub(crate) min_free: u64,
    /// Stored responses, evicted with their mirror.
    pub(crate) responses: Option<Arc<crate::response_cache::ResponseCache>>,
    /// Metric labels, bounded in number.
    pub(crate) labels: Arc<metrics::RepoLabels>,
}

/// The registry, the open mirrors and their activity.
#[derive(Debug)]
pub(crate) struct Mirrors {
    registry: Arc<Registry>,
    /// Refs outside `refs/heads/` and `refs/tags/` that mirrors keep too.
    extra_ref_prefixes: Vec<String>,
    open: Mutex<HashMap<RepoKey, OpenRepo>>,
    /// Activity by repository, and the number of the note that last changed it.
    stats: Mutex<HashMap<RepoKey, (RepoStats, u64)>>,
    /// Notes taken so far.
    notes: std::sync::atomic::AtomicU64,
    /// Held while room is made on the disk (by a refresh, or the upkeep's budget).
    making_room: tokio::sync::Mutex<()>,
    /// Evictions made for refreshes so far.
    evictions: std::sync::atomic::AtomicU64,
    /// Repositories fetched through this instance: how to reach them, and when last.
    used: Mutex<HashMap<RepoKey, (Target, Instant)>>,
    /// What the handles closed while idle had made for their answers (see
    /// [`OpenRepo::inherited`]): the next handle of the mirror inherits it. Kept for mirrors
    /// on disk only.
    closed_warmth: Mutex<HashMap<RepoKey, gitcache_pack::Warmth>>,
    budget: Budget,
    /// Ids the upstream would not give by id, by repository and to whom, and when: not asked
    /// again for a while (a client repeating them must not repeat the upstream's work).
    refused_ids: Mutex<crate::bounded::Bounded<(RepoKey, gix_hash::ObjectId, Asker), Instant>>,
    /// By repository, when the last client's `ls-refs` that said anything of the tags was
    /// asked for, and whether its answer found them the mirror's (see [`Mirrors::moved`]).
    tags_listed: Mutex<crate::bounded::Bounded<RepoKey, (Instant, bool)>>,
    /// By repository, the refs its last refresh's listing named that the mirror did not
    /// take, with their values (see [`Refreshed::left_out`](gitcache_mirror::mirror::Refreshed)):
    /// a client's listing that shows them alike has not moved. Repositories with none have
    /// no entry.
    left_out: Mutex<crate::bounded::Bounded<RepoKey, LeftOut>>,
    /// By repository, the room beyond the disk's floor its last refresh lacked when it was
    /// stopped for the floor, and when: for [`STOPPED_FOR_DISK_FOR`] its next refresh starts
    /// only with that free above the floor (evicting for it when that can be had), so that it
    /// is not downloaded in part again and again. Twice what had arrived when the download
    /// was stopped; what the whole pack took and was to take when taking it in was (see
    /// [`gitcache_mirror::mirror::Error::LowDisk`]).
    stopped_for_disk: Mutex<crate::bounded::Bounded<RepoKey, StoppedForDisk>>,
    /// The settings answers are written with, when preparing a mirror makes ahead what a
    /// shallow clone of its `HEAD` compresses again (see [`Mirrors::prepare`]).
    answers: std::sync::OnceLock<gitcache_pack::Options>,
    /// Warming refreshes started and not ended (queued for a refresh permit, or running).
    warming: Arc<std::sync::atomic::AtomicUsize>,
    /// The same for push webhooks' refreshes.
    webhook_warming: Arc<std::sync::atomic::AtomicUsize>,
    /// The same for the others (the catalog's schedule), which no bound drops.
    other_warming: Arc<std::sync::atomic::AtomicUsize>,
}

/// Why a mirror is refreshed in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Warming {
    /// A client's listing showed refs the mirror lacks.
    RefsMoved,
    /// A scheduled refresh of a repository the catalog names.
    Scheduled,
    /// A push webhook.
    PushWebhook,
}

impl Warming {
    fn as_str(self) -> &'static str {
        match self {
            Warming::RefsMoved => "refs moved",
            Warming::Scheduled => "scheduled refresh",
            Warming::PushWebhook => "push webhook",
        }
    }
}

/// The most warming refreshes waiting or running at once; past it, a warming is dropped (a
/// client's next fetch refreshes the mirror if it needs to). Anyone can ask for listings, each
/// of which can start one (for a repository not mirrored yet, a whole clone).
const MAX_WARMING: usize = 64;
/// The same for push webhooks' refreshes: whoever holds the secret can send events for every
/// repository, each naming a push of its own. Events are taken no more at once, so none is
/// dropped here (those past wait their turn, see [`crate::webhook::EVENTS_WAITING`]).
const MAX_WEBHOOK_WARMING: usize = crate::webhook::EVENTS_TAKEN_AT_ONCE;

/// Refs a mirror did not take, and the values they were listed with.
/// Digests of the refs a refresh left out (see [`left_out_digest`]): each by its name,
/// value and target, and by its name and value alone (a listing that tells no targets).
type LeftOut = Arc<std::collections::HashSet<u64>>;

/// A keyed digest of a listed ref (the key is the process's own: an upstream cannot make
/// a moved ref collide with one left out).
fn left_out_digest(name: &[u8], oid: Option<gix_hash::ObjectId>, target: Option<&[u8]>) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(std::hash::RandomState::new)
        .hash_one((name, oid, target))
}
/// The most repositories whose refs left out are remembered (few have any).
const MAX_LEFT_OUT_REPOS: usize = 1_000;

/// A refresh stopped for the disk's floor (see [`Mirrors::stopped_for_disk`]).
#[derive(Debug, Clone, Copy)]
struct StoppedForDisk {
    /// The room beyond the floor it lacked.
    needed: u64,
    /// When it was first stopped, since it has been stopped.
    since: Instant,
    /// Whether a refresh of it evicted other mirrors since: once in a while only, so that an
    /// upstream whose pack never ends cannot have the cache emptied, doubling by doubling.
    evicted: bool,
}

/// How long a refresh stopped for the disk's floor asks its successors for the room it
/// lacked (see [`Mirrors::stopped_for_disk`]): past it, one tries as any does.
const STOPPED_FOR_DISK_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a client's listing of the tags vouches for the mirror's (see
/// [`Mirrors::tags_as_listed_lately`]): a client fetches within seconds of its `ls-refs`.
const TAGS_LISTED_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// The most repositories whose last listing of the tags is remembered.
const MAX_TAGS_LISTED: usize = 10_000;
/// How long an id the upstream refused is not asked for again.
const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// The most refused ids remembered (see [`crate::bounded::Bounded`]).
const MAX_REFUSED: usize = 10_000;
/// The most repositories without a mirror on disk whose activity and last use are kept (see
/// [`Mirrors::forget_beyond`]): those of mirrors on disk are bounded by the disk, these by
/// this.
pub(crate) const MAX_KEPT_OFF_DISK: usize = 10_000;
/// The most open mirrors kept that no request holds (see [`Mirrors::close_idle`]).
pub(crate) const MAX_IDLE_OPEN: usize = 256;
/// How long an open mirror must have gone unused before it counts against
/// [`MAX_IDLE_OPEN`]: a handle is not closed between two requests close together.
pub(crate) const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Mirrors {
    pub(crate) fn new(
        registry: Arc<Registry>,
        extra_ref_prefixes: Vec<String>,
        budget: Budget,
    ) -> Self {
        Mirrors {
            registry,
            extra_ref_prefixes,
            open: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            notes: Default::default(),
            making_room: Default::default(),
            evictions: Default::default(),
            used: Mutex::new(HashMap::new()),
            closed_warmth: Mutex::new(HashMap::new()),
            budget,
            refused_ids: Mutex::new(crate::bounded::Bounded::new(MAX_REFUSED, MAX_REFUSED)),
            tags_listed: Mutex::new(crate::bounded::Bounded::new(
                MAX_TAGS_LISTED,
                MAX_TAGS_LISTED,
            )),
            left_out: Mutex::new(crate::bounded::Bounded::new(
                MAX_LEFT_OUT_REPOS / 8,
                MAX_LEFT_OUT_REPOS,
            )),
            stopped_for_disk: Mutex::new(crate::bounded::Bounded::new(
                MAX_LEFT_OUT_REPOS / 8,
                MAX_LEFT_OUT_REPOS,
            )),
            answers: std::sync::OnceLock::new(),
            warming: Default::default(),
            webhook_warming: Default::default(),
            other_warming: Default::default(),
        }
    }

    /// Answers are written with `options`: preparing a mirror asked for lately also answers
    /// a shallow clone of its `HEAD` into nothing, so that what that answer compresses again
    /// is in `options`' store of such objects (when it has one) before a client asks.
    pub(crate) fn answer_with(&self, options: gitcache_pack::Options) {
        let _ = self.answers.set(options);
    }

    /// Whether one of `oids` was refused by the upstream for `key` lately, to a client's
    /// fetch.
    pub(crate) fn refused_lately(&self, key: &RepoKey, oids: &[gix_hash::ObjectId]) -> bool {
        self.refused_to(key, oids, Asker::Client)
    }

    /// Note that the upstream would not give `oids` of `key` by id to a client's fetch.
    pub(crate) fn note_refused(&self, key: &RepoKey, oids: &[gix_hash::ObjectId]) {
        self.note_refused_to(key, oids, Asker::Client);
    }

    /// Whether one of `oids` was refused by the upstream for `key` lately, to `asker`.
    fn refused_to(&self, key: &RepoKey, oids: &[gix_hash::ObjectId], asker: Asker) -> bool {
        let refused = self.refused_ids.lock().unwrap_or_else(|p| p.into_inner());
        oids.iter().any(|oid| {
            refused
                .get(&(key.clone(), *oid, asker))
                .is_some_and(|at| at.elapsed() < REFUSED_FOR)
        })
    }

    /// Note that the upstream would not give `oids` of `key` by id to `asker`.
    fn note_refused_to(&self, key: &RepoKey, oids: &[gix_hash::ObjectId], asker: Asker) {
        let mut refused = self.refused_ids.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for oid in oids {
            refused.make_room(|_, at| now.duration_since(*at) < REFUSED_FOR);
            refused.insert((key.clone(), *oid, asker), now);
        }
    }

    /// A client's `ls-refs` answer of every tag, asked for at `asked`, is on its way: until
    /// it is read whole (see [`moved`](Self::moved)), the mirror's tags are vouched for by no
    /// earlier one.
    pub(crate) fn tags_listing(&self, key: &RepoKey, asked: Instant) {
        self.note_tags(key, asked, false);
    }

    /// Remember what a client's listing asked for at `asked` says of the mirror's tags
    /// (`same`: exactly the listed ones), unless a later listing's is known already.
    fn note_tags(&self, key: &RepoKey, asked: Instant, same: bool) {
        let mut listed = self.tags_listed.lock().unwrap_or_else(|p| p.into_inner());
        if listed.get(key).is_some_and(|(at, _)| *at > asked) {
            return;
        }
        listed.make_room(|_, (at, _)| at.elapsed() < TAGS_LISTED_FOR);
        listed.insert(key.clone(), (asked, same));
    }

    /// Whether the last client's `ls-refs` answer listing every tag of `key`, within
    /// [`TAGS_LISTED_FOR`], found the mirror's tags as they are, and no listing since showed
    /// one otherwise (see [`moved`](Self::moved)): a refresh it started brings no other.
    pub(crate) fn tags_as_listed_lately(&self, key: &RepoKey) -> bool {
        let listed = self.tags_listed.lock().unwrap_or_else(|p| p.into_inner());
        listed
            .get(key)
            .is_some_and(|(at, same)| *same && at.elapsed() < TAGS_LISTED_FOR)
    }

    /// Note those of `oids` that a warming refresh of `key` asked for ahead and the mirror
    /// still lacks as refused to warming (its credential may see other refs than the clients
    /// whose listings named them). Blocking: the mirror is opened anew (a handle kept for
    /// answers is opened again only once the pack folder's time changes).
    fn note_refused_ahead(&self, key: &RepoKey, oids: &[gix_hash::ObjectId]) {
        let Some(repo) = (self.registry.existing(key))
            .and_then(|mirror| Repository::open(mirror.git_dir()).ok())
        else {
            return;
        };
        let lacking: Vec<_> = oids.iter().copied().filter(|o| !repo.contains(o)).collect();
        if !lacking.is_empty() {
            self.note_refused_to(key, &lacking, Asker::Warming);
        }
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whether a mirror keeps the ref `name`.
    pub(crate) fn is_mirrored(&self, name: &[u8]) -> bool {
        name == b"HEAD"
            || name.starts_with(b"refs/heads/")
            || name.starts_with(b"refs/tags/")
            || self
                .extra_ref_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_bytes()))
    }

    /// What happened to `key`'s repository since the start.
    pub(crate) fn stats(&self, key: &RepoKey) -> RepoStats {
        self.lock_stats()
            .get(key)
            .map(|(stats, _)| stats.clone())
            .unwrap_or_default()
    }

    /// Note that `target` was just fetched through this instance.
    pub(crate) fn used(&self, target: &Target) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.key.clone(), (target.clone(), Instant::now()));
    }

    /// The repositories fetched within `window` whose mirror was last refreshed (by this
    /// instance) more than `interval` ago, or never: what a scheduled refresh keeps fresh.
    pub(crate) fn due(
        &self,
        interval: std::time::Duration,
        window: std::time::Duration,
    ) -> Vec<Target> {
        let now = Instant::now();
        let unix = crate::proxy::unix_now();
        let stats = self.lock_stats();
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(_, at)| now.duration_since(*at) <= window)
            .filter(|(target, _)| {
                stats
                    .get(&target.key)
                    .and_then(|(s, _)| s.last_refresh)
                    .is_none_or(|(at, _)| unix.saturating_sub(at) >= interval.as_secs() as i64)
            })
            .map(|(target, _)| target.clone())
            .collect()
    }

    /// What happened to every repository since the start.
    pub(crate) fn all_stats(&self) -> Vec<(RepoKey, RepoStats)> {
        self.lock_stats()
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect()
    }

    pub(crate) fn note(&self, key: &RepoKey, update: impl FnOnce(&mut RepoStats)) {
        let mut stats = self.lock_stats();
        let number = (self.notes).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (noted, last) = stats.entry(key.clone()).or_default();
        update(noted);
        *last = number;
    }

    /// Forget the activity and last use of the repositories without a mirror in `on_disk`
    /// beyond the `keep` noted most recently (activity lives as long as the process, and
    /// anyone may ask for any number of public repositories whose mirror is then evicted, or
    /// never made): the repositories forgotten, for the memory of what was written to the
    /// catalog. A repository forgotten starts again from nothing when it comes back.
    pub(crate) fn forget_beyond(
        &self,
        on_disk: &std::collections::HashSet<RepoKey>,
        keep: usize,
    ) -> Vec<RepoKey> {
        let forgotten = drop_oldest(
            &mut self.lock_stats(),
            keep,
            |key, _| !on_disk.contains(key),
            |(_, at)| *at,
        )
        .into_iter()
        .map(|(key, _)| key)
        .collect();
        drop_oldest(
            &mut self.used.lock().unwrap_or_else(|p| p.into_inner()),
            keep,
            |key, _| !on_disk.contains(key),
            |(_, at)| *at,
        );
        self.lock_closed_warmth()
            .retain(|key, _| on_disk.contains(key));
        forgotten
    }

    /// Bytes of trees the open mirrors keep for their answers (see
    /// [`Repository::keep_head_trees`]).
    pub(crate) fn kept_tree_bytes(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values()
            .map(|known| known.repo.kept_trees().bytes)
            .sum()
    }

    /// Close the open mirrors that no request holds and that are gone from disk (`on_disk`,
    /// when the listing could be made: removed by another instance, say), and, of those unused
    /// for `idle_for`, all but the `keep` used last: each holds its files mapped. One closed
    /// is opened again by the next request that needs it. Those kept let go of the trees
    /// they kept.
    pub(crate) fn close_idle(
        &self,
        on_disk: Option<&std::collections::HashSet<RepoKey>>,
        keep: usize,
        idle_for: std::time::Duration,
    ) {
        let unheld = |known: &OpenRepo| Arc::strong_count(&known.repo) == 1;
        let is_idle = |known: &OpenRepo| unheld(known) && known.used.elapsed() >= idle_for;
        let (gone, idle) = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let gone = |key: &RepoKey| on_disk.is_some_and(|d| !d.contains(key));
            let gone = drop_oldest(
                &mut open,
                0,
                |key, known| unheld(known) && gone(key),
                |known| known.used,
            );
            let idle = drop_oldest(
                &mut open,
                keep,
                |_, known| is_idle(known),
                |known| known.used,
            );
            // The idle handles kept let go of the trees they kept (up to 4 MiB each): only
            // mirrors used lately hold them.
            for known in open.values().filter(|known| is_idle(known)) {
                known.repo.forget_kept_trees();
            }
            // What an idle handle had made is made again by the next one after maintenance:
            // noted before the table's lock goes, so that a request opening the mirror
            // meanwhile finds it (the two locks are taken in this order only).
            let mut remembered = self.lock_closed_warmth();
            for (key, _) in &gone {
                remembered.remove(key);
            }
            for (key, known) in &idle {
                let kept = remembered.entry(key.clone()).or_default();
                *kept = *kept | known.inherited | known.repo.warmth();
            }
            (gone, idle)
        };
        // Their files are unmapped and closed after the tables' locks are released.
        drop((gone, idle));
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, HashMap<RepoKey, (RepoStats, u64)>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_closed_warmth(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RepoKey, gitcache_pack::Warmth>> {
        self.closed_warmth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record how a refresh of `key` ended (on `/metrics` when `counted`).
    fn note_refresh(&self, key: &RepoKey, started: Instant, error: Option<String>, counted: bool) {
        if counted {
            metrics::refresh(
                if error.is_none() { "ok" } else { "error" },
                started.elapsed(),
            );
        }
        let now = crate::proxy::unix_now();
        self.note(key, |s| {
            s.last_refresh = Some((now, error.is_none()));
            if let Some(error) = error {
                s.last_error = Some((now, error));
            }
        });
    }

    /// Bring `key`'s mirror up to date from `upstream` (creating it when `create`), in a task
    /// of its own: a client that leaves (or gives up on a long first download) does not
    /// throw away what was fetched for the next one. The upstream's idle and transfer
    /// timeouts bound it. Also fetching the commits `keep` by id and keeping them (a mirror
    /// that exists only; see [`Registry::keep`]), or else fetching `hints` (the wants of a
    /// fetch the mirror lacks, or what an `ls-refs` answer's refs moved to) by id beside
    /// asking for the upstream's refs (see
    /// [`gitcache_mirror::mirror::Mirror::refresh_hinted`]).
    pub(crate) async fn refresh_asking(
        self: &Arc<Self>,
        key: &RepoKey,
        upstream: Upstream,
        create: bool,
        keep: Vec<gix_hash::ObjectId>,
        hints: Hints,
    ) -> Result<gitcache_mirror::mirror::Refreshed, Error> {
        self.refresh_counted(key, upstream, create, keep, hints, true)
            .await
    }

    /// [`refresh_asking`](Self::refresh_asking), on `/metrics` only when `counted`.
    async fn refresh_counted(
        self: &Arc<Self>,
        key: &RepoKey,
        upstream: Upstream,
        create: bool,
        keep: Vec<gix_hash::ObjectId>,
        hints: Hints,
        counted: bool,
    ) -> Result<gitcache_mirror::mirror::Refreshed, Error> {
        let started = Instant::now();
        let (mirrors, task_key) = (Arc::clone(self), key.clone());
        // The outcome is noted by the task: a miss answered while the refresh still runs
        // (its first pack, as it arrives) does not wait for it. Room is made in the task too:
        // an eviction is not cut short by a caller that stops waiting.
        let outcome = tokio::spawn(
            async move {
                mirrors.room_for_refresh(&task_key).await?;
                let prefixes: Vec<&str> = mirrors
                    .extra_ref_prefixes
                    .iter()
                    .map(String::as_str)
                    .collect();
                let registry = &mirrors.registry;
                let outcome = if !keep.is_empty() {
                    let outcome = registry.keep(&task_key, &upstream, &prefixes, &keep).await;
                    if outcome.is_ok() {
                        registry.maintain_in_background(&task_key);
                    }
                    outcome
                } else if create {
                    registry
                        .refresh_hinted_and_maintain(&task_key, &upstream, &prefixes, &hints)
                        .await
                } else {
                    let outcome = registry
                        .refresh_existing(&task_key, &upstream, &prefixes)
                        .await;
                    // Not counted, not maintained: its consolidation would show on
                    // `/metrics`. The next request that opens the mirror takes it up.
                    if outcome.is_ok() && counted {
                        registry.maintain_in_background(&task_key);
                    }
                    outcome
                };
                // Stopped for the disk as its pack arrived or was taken in: as refused for it at
                // the start, and its next refresh waits for the room this one lacked.
                let outcome = outcome.map_err(|err| match &*err {
                    gitcache_mirror::mirror::Error::LowDisk {
                        free, keep, needed, ..
                    } => {
                        mirrors.note_stopped_for_disk(&task_key, Some(*needed));
                        Error::LowDisk {
                            free: *free,
                            keep: *keep,
                        }
                    }
                    _ => Error::Mirror(err),
                });
                if outcome.is_ok() {
                    mirrors.note_stopped_for_disk(&task_key, None);
                }
                if let Ok(done) = &outcome
                    && let Some(left_out) = &done.left_out
                {
                    mirrors.note_left_out(&task_key, left_out);
                }
                if let Err(err) = &outcome {
                    // Said here too: an answer sent as the pack arrived did not wait for it.
                    tracing::info!(%err, "refresh failed");
                }
                mirrors.note_refresh(
                    &task_key,
                    started,
                    outcome.as_ref().err().map(ToString::to_string),
                    counted,
                );
                outcome
            }
            .in_current_span(),
        )
        .await;
        match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                let err = Error::Internal(err.to_string());
                self.note_refresh(key, started, Some(err.to_string()), counted);
                Err(err)
            }
        }
    }

    /// Whether the disk has at least the free space the budget keeps (always, without a
    /// floor, or when it cannot be told).
    fn above_the_floor(&self) -> bool {
        let keep = self.budget.min_free;
        keep == 0 || self.registry.free_bytes().unwrap_or(u64::MAX) >= keep
    }

    /// Refuse a refresh of `key` that would start with less disk free than the budget keeps
    /// (and the room its last refresh lacked when it was stopped for the floor, see
    /// [`Mirrors::stopped_for_disk`]), after evicting what can be evicted.
    async fn room_for_refresh(&self, key: &RepoKey) -> Result<(), Error> {
        // Room asked for beyond the floor, and whether evicting for it is still allowed: once
        // per window (see [`StoppedForDisk::evicted`]), taken now.
        let (headroom, may_evict) = {
            let mut table = (self.stopped_for_disk.lock()).unwrap_or_else(|p| p.into_inner());
            match table
                .get_mut(key)
                .filter(|stopped| stopped.since.elapsed() < STOPPED_FOR_DISK_FOR)
            {
                Some(stopped) => {
                    let may = !stopped.evicted;
                    stopped.evicted = true;
                    (stopped.needed, may)
                }
                None => (0, true),
            }
        };
        if headroom == 0 && self.above_the_floor() {
            return Ok(());
        }
        let keep = self.budget.min_free.saturating_add(headroom);
        let free = || self.registry.free_bytes().unwrap_or(u64::MAX);
        // One eviction at a time: refreshes starting together would each evict for the
        // same shortfall. One that waited for another's takes its outcome (unless it needs
        // more room than the floor).
        let seen = self.evictions.load(std::sync::atomic::Ordering::Acquire);
        let _one = self.making_room.lock().await;
        let evicted = self.evictions.load(std::sync::atomic::Ordering::Acquire) != seen;
        if may_evict && (!evicted || headroom > 0) && free() < keep {
            let budget = Budget {
                min_free: keep,
                ..self.budget.clone()
            };
            self.enforce(&budget, Some(key)).await;
            self.evictions
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        match free() {
            free if free >= keep => Ok(()),
            free => Err(Error::LowDisk { free, keep }),
        }
    }

    /// Note the room beyond the disk's floor `key`'s refresh lacked when it was stopped for
    /// the floor, or (`None`) that a refresh of it went through.
    fn note_stopped_for_disk(&self, key: &RepoKey, needed: Option<u64>) {
        let mut table = (self.stopped_for_disk.lock()).unwrap_or_else(|p| p.into_inner());
        match needed {
            Some(needed) => {
                table.make_room(|_, stopped| stopped.since.elapsed() < STOPPED_FOR_DISK_FOR);
                // The window (and whether it evicted) goes on from the first stop in it.
                let (since, evicted) = match table.get(key) {
                    Some(before) if before.since.elapsed() < STOPPED_FOR_DISK_FOR => {
                        (before.since, before.evicted)
                    }
                    _ => (Instant::now(), false),
                };
                table.insert(
                    key.clone(),
                    StoppedForDisk {
                        needed: needed.max(1),
                        since,
                        evicted,
                    },
                );
            }
            None => {
                table.remove(key);
            }
        }
    }

    /// Note what `key`'s refresh left out of the refs its listing named (see
    /// [`Mirrors::left_out`]).
    fn note_left_out(&self, key: &RepoKey, left_out: &[RefLine]) {
        // Made before the table is locked (every listing's comparison takes it). A line
        // with a target has a digest with it and one without (a listing that tells no
        // targets); one without has the one.
        let digests: std::collections::HashSet<u64> = left_out
            .iter()
            .flat_map(|line| {
                let target = line.symref_target.as_deref().map(|t| t.as_ref());
                let with = target.map(|t| left_out_digest(&line.name, line.oid, Some(t)));
                with.into_iter()
                    .chain([left_out_digest(&line.name, line.oid, None)])
            })
            .collect();
        let mut table = self.left_out.lock().unwrap_or_else(|p| p.into_inner());
        if digests.is_empty() {
            table.remove(key);
        } else {
            table.make_room(|_, _| true);
            table.insert(key.clone(), Arc::new(digests));
        }
    }

    /// Whether `remote` (an upstream's `ls-refs` answer) gives a mirrored ref another value
    /// than `key`'s mirror holds (also when there is no mirror to compare with), but for refs
    /// the mirror's last refresh left out, listed alike: then what a
    /// refresh may fetch ahead of its own `ls-refs` (see [`Mirrors::refresh_asking`]): the
    /// new values of the branches (and other refs but tags, which `include-tag` brings) that
    /// the mirror lacks and a warming refresh was not refused lately, [`MAX_HINTS`] at most,
    /// asked for as the client that listed them most likely fetches them next (`git fetch`):
    /// with what those refs pointed at here (the mirror's `HEAD` for a new one) as haves, a
    /// thin pack, tags included. Not kept when the refresh's own refs do not reach them.
    /// With `listed`, what the listing says of the mirror's tags is noted too (see
    /// [`tags_as_listed_lately`](Self::tags_as_listed_lately)).
    pub(crate) fn moved(
        &self,
        key: &RepoKey,
        remote: &[RefLine],
        listed: Option<&Listed>,
    ) -> Option<Hints> {
        let Ok(Some(repo)) = self.open(key) else {
            return Some(Hints::default());
        };
        let Ok(local) = repo.refs() else {
            return Some(Hints::default());
        };
        let local: HashMap<_, _> = local
            .into_iter()
            .map(|r| (r.name, (r.oid, r.peeled.or(r.oid))))
            .collect();
        // A ref the mirror does not take is seen as it was left out, not as moved: every
        // listing would otherwise start a refresh that leaves it out again.
        let left_out = (self.left_out.lock().unwrap_or_else(|p| p.into_inner()))
            .get(key)
            .cloned();
        let taken: std::borrow::Cow<'_, [RefLine]> = match &left_out {
            Some(left_out) => remote
                .iter()
                .filter(|line| {
                    // The same name and value, and (for `HEAD`) the same target when the
                    // listing says one: a new target is news even at the same commit.
                    let target = line.symref_target.as_deref().map(|t| t.as_ref());
                    !left_out.contains(&left_out_digest(&line.name, line.oid, target))
                })
                .cloned()
                .collect(),
            None => remote.into(),
        };
        let remote = &taken[..];
        if let Some(listed) = listed {
            self.note_listed_tags(key, listed, &local, remote);
        }
        let head = local
            .get(b"HEAD".as_slice())
            .and_then(|(_, peeled)| *peeled);
        let mut moved = false;
        let (mut ids, mut haves) = (Vec::new(), Vec::new());
        for line in remote {
            let Some(oid) = line.oid else {
                continue;
            };
            let (before, peeled) = local.get(&line.name).copied().unwrap_or_default();
            if !self.is_mirrored(line.name.as_ref()) || before == line.oid {
                continue;
            }
            moved = true;
            let fetched = !line.name.starts_with(b"refs/tags/")
                && !line
                    .name
                    .starts_with(gitcache_mirror::mirror::KEPT_PREFIX.as_bytes());
            if fetched
                && ids.len() < MAX_HINTS
                && !ids.contains(&oid)
                && !repo.contains(&oid)
                && !self.refused_to(key, &[oid], Asker::Warming)
            {
                ids.push(oid);
                if let Some(had) = peeled.or(head).filter(|h| !haves.contains(h)) {
                    haves.push(had);
                }
            }
        }
        let client = (!haves.is_empty()).then_some(ClientFetch {
            haves,
            thin_pack: true,
            include_tag: true,
        });
        moved.then_some(Hints {
            ids,
            client,
            keep_unreached: false,
        })
    }

    /// What a client's listing `remote` says of the mirror's tags (`local`: its refs, with
    /// their values and what they peel to): a listing of every tag vouches for them when its
    /// tags are exactly the mirror's; any listing with a tag the mirror holds otherwise (or
    /// lacks) vouches against them.
    fn note_listed_tags(
        &self,
        key: &RepoKey,
        listed: &Listed,
        local: &HashMap<bstr::BString, (Option<gix_hash::ObjectId>, Option<gix_hash::ObjectId>)>,
        remote: &[RefLine],
    ) {
        let tags = || (remote.iter()).filter(|line| line.name.starts_with(b"refs/tags/"));
        let differs =
            tags().any(|line| local.get(&line.name).map(|(oid, _)| *oid) != Some(line.oid));
        if listed.every_tag {
            let local_tags = (local.keys()).filter(|name| name.starts_with(b"refs/tags/"));
            let same = !differs && {
                let listed: std::collections::HashSet<&bstr::BString> =
                    tags().map(|line| &line.name).collect();
                local_tags.clone().count() == listed.len()
                    && local_tags.into_iter().all(|name| listed.contains(name))
            };
            self.note_tags(key, listed.asked, same);
        } else if differs {
            self.note_tags(key, listed.asked, false);
        }
    }

    /// Refresh `key`'s mirror in a task of its own, nobody waiting for it (warming, after
    /// `why`; creating the mirror only when `create`, and then fetching `hints` ahead of its
    /// refs, see [`refresh_asking`](Self::refresh_asking)): counted in the warming metric,
    /// logged either way. With `own_credential` (`upstream` asks with gitcache's credential,
    /// not a client's), the hints the upstream refused are remembered (see
    /// [`moved`](Self::moved)); a client's refusal is its own.
    pub(crate) fn warm(
        self: &Arc<Self>,
        key: RepoKey,
        upstream: Upstream,
        reason: Warming,
        create: bool,
        hints: Hints,
        own_credential: bool,
    ) -> Option<tokio::task::JoinHandle<bool>> {
        use std::sync::atomic::Ordering;
        let why = reason.as_str();
        // A push webhook's refresh is not counted where anyone may read the count: every
        // holder of the secret could tell from it what is mirrored.
        let count = move |result| {
            if reason != Warming::PushWebhook {
                metrics::warm(result);
            }
        };
        // Warmings any client's listing may start are bounded, and webhooks' (signed, but
        // one secret for every repository) on a count of their own, so that neither crowds
        // the other out; scheduled refreshes (the catalog's) are counted apart, never
        // dropped, and crowd neither out.
        let (counter, bound) = match reason {
            Warming::RefsMoved => (&self.warming, Some(MAX_WARMING)),
            Warming::PushWebhook => (&self.webhook_warming, Some(MAX_WEBHOOK_WARMING)),
            _ => (&self.other_warming, None),
        };
        if counter.fetch_add(1, Ordering::AcqRel) >= bound.unwrap_or(usize::MAX) {
            counter.fetch_sub(1, Ordering::AcqRel);
            count("dropped");
            tracing::info!(
                why,
                "too many warming refreshes under way: this one dropped"
            );
            return None;
        }
        /// Counts a warming as ended however its task ends.
        struct Ended(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let ended = Ended(Arc::clone(counter));
        let mirrors = Arc::clone(self);
        Some(tokio::spawn(
            async move {
                let _ended = ended;
                let counted = reason != Warming::PushWebhook;
                match mirrors
                    .refresh_counted(&key, upstream, create, Vec::new(), hints, counted)
                    .await
                {
                    Ok(done) => {
                        count("ok");
                        // What the upstream answered for and the mirror still lacks, it
                        // refused: not asked for ahead again for a while (a listing the
                        // warming credential does not see alike names it again and again).
                        if own_credential && !done.asked_ahead.is_empty() {
                            let (refused, key) = (Arc::clone(&mirrors), key.clone());
                            let asked = done.asked_ahead.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                refused.note_refused_ahead(&key, &asked);
                            })
                            .await;
                        }
                        tracing::info!(
                            why,
                            refs = done.refs,
                            objects = done.fetched_objects,
                            ahead = done.asked_ahead.len(),
                            "mirror warmed"
                        );
                        true
                    }
                    Err(err) => {
                        count("error");
                        tracing::warn!(why, %err, "warming the mirror failed");
                        false
                    }
                }
            }
            .in_current_span(),
        ))
    }

    /// Whether `key`'s mirror holds `oid` (looked up on a blocking thread); `false` without
    /// a mirror, or when it cannot be read. A webhook's question: the mirror is opened without
    /// taking up its maintenance (see [`refresh_counted`](Self::refresh_counted)).
    pub(crate) async fn holds(self: &Arc<Self>, key: &RepoKey, oid: gix_hash::ObjectId) -> bool {
        let (mirrors, key) = (Arc::clone(self), key.clone());
        tokio::task::spawn_blocking(move || {
            mirrors
                .open_and_check(&key, Opening::Question)
                .ok()
                .flatten()
                .is_some_and(|repo| repo.contains(&oid))
        })
        .await
        .unwrap_or(false)
    }

    /// The mirror of `key` if it has everything `fetch` wants, looked up on a blocking
    /// thread (a request may name many thousands of objects); `fetch` comes back as it was.
    pub(crate) async fn with_wants(
        self: &Arc<Self>,
        key: &RepoKey,
        fetch: Fetch,
    ) -> Result<(Wanted, Fetch), Error> {
        let (mirrors, key) = (Arc::clone(self), key.clone());
        tokio::task::spawn_blocking(move || {
            let wanted = match mirrors.open(&key)? {
                Some(repo) => wanted_in(repo, &fetch),
                None => Wanted::Lacking(Vec::new()),
            };
            Ok((wanted, fetch))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// The mirror of `key` if it holds every one of `wants` now, looked up on a blocking
    /// thread: for a fetch waiting for a refresh that has taken a pack in (see
    /// [`Registry::landed_after`](gitcache_mirror::registry::Registry::landed_after)).
    pub(crate) async fn holding(
        self: &Arc<Self>,
        key: &RepoKey,
        wants: Vec<gix_hash::ObjectId>,
    ) -> Result<Option<Arc<Repository>>, Error> {
        let (mirrors, key) = (Arc::clone(self), key.clone());
        tokio::task::spawn_blocking(move || {
            let repo = mirrors.open(&key)?;
            Ok(repo.filter(|repo| wants.iter().all(|w| repo.contains(w))))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Where the mirror of `key` has the ref `name` now (`None`: no such ref, or no mirror),
    /// looked up on a blocking thread; an error for a name that is no ref name. A webhook's
    /// question, as [`holds`](Self::holds).
    pub(crate) async fn ref_now(
        self: &Arc<Self>,
        key: &RepoKey,
        name: String,
    ) -> Result<Option<gix_hash::ObjectId>, Error> {
        let (mirrors, key) = (Arc::clone(self), key.clone());
        tokio::task::spawn_blocking(move || {
            let Some(repo) = mirrors.open_and_check(&key, Opening::Question)? else {
                return Ok(None);
            };
            Ok(repo.find_ref(&name)?.and_then(|r| r.oid))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// [`open`](Self::open) on a blocking thread.
    pub(crate) async fn open_blocking(
        self: &Arc<Self>,
        key: &RepoKey,
    ) -> Result<Option<Arc<Repository>>, Error> {
        let (mirrors, key) = (Arc::clone(self), key.clone());
        tokio::task::spawn_blocking(move || mirrors.open(&key))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// The mirror of `key`, opened again only when its packs changed.
    pub(crate) fn open(&self, key: &RepoKey) -> Result<Option<Arc<Repository>>, Error> {
        let repo = self.open_and_check(key, Opening::Checked)?;
        if repo.is_some()
            && let Some(known) = (self.open.lock().unwrap_or_else(|p| p.into_inner())).get_mut(key)
        {
            known.requested = true;
        }
        Ok(repo)
    }

    /// [`open`](Self::open), as `how` says: a mirror opened anew (or so far only for a
    /// webhook's questions) has its files checked and its maintenance taken up in the
    /// background, unless maintenance has just run or the opening is a webhook's question.
    fn open_and_check(
        &self,
        key: &RepoKey,
        how: Opening,
    ) -> Result<Option<Arc<Repository>>, Error> {
        let check = how == Opening::Checked;
        let checked = how != Opening::Question;
        let Some(mirror) = self.registry.existing(key) else {
            return Ok(None);
        };
        let packs_changed = std::fs::metadata(mirror.git_dir().join("objects").join("pack"))
            .and_then(|m| m.modified())
            .ok();
        let known = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get_mut(key) {
                Some(known)
                    if known.packs_changed.is_some() && known.packs_changed == packs_changed =>
                {
                    let (repo, take_up) = known.taken(how);
                    drop(open);
                    if take_up {
                        self.registry.check_in_background(key);
                    }
                    return Ok(Some(repo));
                }
                known => known.map(|k| (Arc::clone(&k.repo), k.inherited, k.requested)),
            }
        };
        let requested = known.as_ref().is_some_and(|(_, _, requested)| *requested);
        // Packs that stayed are not read again (a refresh adds one small pack). Not under the
        // table's lock: taking them waits for what the handle before is reading.
        let (repo, inherited) = match &known {
            Some((before, inherited, _)) => (before.reopen()?, *inherited | before.warmth()),
            None => {
                let repo = Repository::open(mirror.git_dir())?;
                // A handle closed while idle passes on what it had made.
                let closed = self.lock_closed_warmth().remove(key);
                (repo, closed.unwrap_or_default())
            }
        };
        let repo = Arc::new(repo);
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if self.registry.existing(key).is_none() {
                // Removed or evicted meanwhile (its folder is moved away before its entry
                // goes): not kept, its files not held.
                return Ok(None);
            }
            if let Some(current) = open.get_mut(key)
                && !known
                    .as_ref()
                    .is_some_and(|(before, _, _)| Arc::ptr_eq(before, &current.repo))
                && current.packs_changed.is_some()
                && current.packs_changed == packs_changed
            {
                // Another request opened the same packs meanwhile (and checks them, unless it
                // was a webhook's question).
                let (repo, take_up) = current.taken(how);
                drop(open);
                if take_up {
                    self.registry.check_in_background(key);
                }
                return Ok(Some(repo));
            }
            open.insert(
                key.clone(),
                OpenRepo {
                    packs_changed,
                    repo: Arc::clone(&repo),
                    inherited,
                    used: Instant::now(),
                    checked,
                    requested,
                },
            );
        }
        // Opened for the first time here, or its packs changed: its bitmap files are checked
        // once, and maintenance cut short (by a restart) is taken up again.
        if check {
            self.registry.check_in_background(key);
        }
        Ok(Some(repo))
    }

    /// Forever: each mirror maintenance consolidated is opened again at once (or opened, if
    /// no request has yet), and what answers read of its new pack is read (its reverse index
    /// and bitmaps), with what the handle it replaces had made (see [`Repository::warm`]),
    /// one mirror at a time on a blocking thread, so that the next fetch does not pay for
    /// it. [`Proxy::maintain`] runs it.
    ///
    /// [`Proxy::maintain`]: crate::Proxy::maintain
    pub(crate) async fn prepare_maintained(self: Arc<Self>) {
        let mut maintained = self.registry.maintained();
        loop {
            let key = match maintained.recv().await {
                Ok(key) => key,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let mirrors = Arc::clone(&self);
            let span = tracing::info_span!("prepare", repo = %key.relative_path().display());
            let prepared = {
                let key = key.clone();
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    mirrors.prepare(&key)
                })
                .await
            };
            match prepared {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%err, "preparing a maintained mirror failed"),
                Err(err) => tracing::warn!(%err, "preparing a maintained mirror failed"),
            }
            // An open mirror is opened again without the check (maintenance has just written
            // and read back what it reads), which would also have taken up maintenance:
            // refreshes that ran while the bitmaps were written may have left packs for
            // another consolidation.
            self.registry.maintain_in_background(&key);
        }
    }

    /// Open `key`'s mirror again (if its packs changed) and read and make what answers will
    /// (see [`Repository::warm`]): what every answer reads, and what the handles it replaces
    /// had made (a request may have opened it again first, between the new pack and its
    /// bitmaps).
    fn prepare(&self, key: &RepoKey) -> Result<(), Error> {
        let started = Instant::now();
        // Taken by a request, not only opened for a webhook's questions (or by a preparing).
        let was_open = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|known| known.requested);
        // A mirror no request opened yet (made or asked about by a webhook, or before a
        // restart) is checked as any first opening checks it.
        let how = match was_open {
            true => Opening::Maintained,
            false => Opening::Checked,
        };
        let Some(repo) = self.open_and_check(key, how)? else {
            return Ok(());
        };
        let inherited = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|known| Arc::ptr_eq(&known.repo, &repo))
            .map(|known| known.inherited)
            .unwrap_or_default();
        // A mirror requests opened, or asked for within `IDLE_FOR` (a clone a mirror's first
        // pack answered as it arrived opens none), gets what shallow clones read and make,
        // whatever the handles before it made: its name hashes (4 bytes an object, held
        // while it is open; the first shallow clone after a mirror's first maintenance read
        // them, about 25 ms at 4 million objects), and for packs of up to a million objects
        // their delta forests and tables (see `Repository::shallow_clone_warmth`). Shallow
        // clones are most of what a CI fleet asks. One not asked for lately (made by a
        // webhook, before a restart, or idle) is warmed like its handles before only.
        let requested = was_open
            || (self.used.lock().unwrap_or_else(|p| p.into_inner()))
                .get(key)
                .is_some_and(|(_, at)| at.elapsed() < IDLE_FOR);
        let shallow = match requested {
            true => repo.shallow_clone_warmth(),
            false => gitcache_pack::Warmth::default(),
        };
        repo.warm(inherited | repo.warmth() | shallow)?;
        // And the directories of its `HEAD`, which shallow clones of it read and fetches of
        // it compare with the client's (kept by the handle, and handed on when it is opened
        // again after a refresh). A tree that cannot be read fails the answer that reads it,
        // not the preparing.
        let trees = match requested {
            true => repo.keep_head_trees().unwrap_or_else(|err| {
                tracing::debug!(%err, "reading the trees of HEAD failed");
                0
            }),
            false => 0,
        };
        // And what a shallow clone of its `HEAD` compresses again (objects whose stored base
        // it does not send): made here, kept in the answers' store, taken from there by the
        // first such clone. What cannot be made fails that clone, not the preparing.
        let made = match self.answers.get() {
            Some(options) if requested && options.remade.is_some() => {
                shallow_clone_of_head(&repo, options).unwrap_or_else(|err| {
                    tracing::debug!(%err, "making a shallow clone of HEAD failed");
                    0
                })
            }
            _ => 0,
        };
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            trees,
            made,
            "maintained mirror opened again and prepared"
        );
        Ok(())
    }

    /// Bring the mirrors this instance serves up to what other instances committed to the
    /// shared store (see [`Registry::catch_up`]), one after another.
    pub(crate) async fn catch_up(&self, window: std::time::Duration) {
        // The mirrors served here: open now, or used within `window` (and closed since when
        // idle), the most recently used first.
        let mut keys: Vec<(Instant, RepoKey)> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, known)| (known.used, key.clone()))
            .collect();
        keys.extend(
            (self.used.lock().unwrap_or_else(|p| p.into_inner()))
                .iter()
                .filter(|(_, (_, at))| at.elapsed() <= window)
                .map(|(key, (_, at))| (*at, key.clone())),
        );
        keys.sort_unstable_by_key(|(at, _)| std::cmp::Reverse(*at));
        let mut done = std::collections::HashSet::new();
        let mut below = false;
        for (_, key) in keys {
            if !done.insert(key.clone()) {
                continue;
            }
            // Packs from the store take disk as a refresh's do (a consolidated pack arrives
            // beside the packs it replaces): none below the floor, where only a purge
            // elsewhere is applied (it frees disk). Nothing is evicted for them here (the
            // upkeep's eviction does that); the copies stay as they are.
            let caught_up = if self.above_the_floor() {
                self.registry.catch_up(&key).await
            } else {
                if !below {
                    below = true;
                    tracing::warn!(
                        keep = self.budget.min_free,
                        "not enough free disk space to take packs from the shared store"
                    );
                }
                self.registry.catch_up_removal(&key).await
            };
            match caught_up {
                Ok(()) => {}
                // A manifest version whose files could not be had, not tried again yet: said
                // once, when it failed.
                Err(gitcache_mirror::mirror::Error::Shared(
                    gitcache_mirror::shared::Error::FailedLately(_),
                )) => {}
                Err(err) => {
                    tracing::warn!(repo = %key.relative_path().display(), %err, "catching up with the shared store failed");
                }
            }
        }
    }

    /// Remove `key`'s mirror (see [`Registry::remove`]) and forget its opened repository;
    /// the next request fetches anew. `false` if there was none.
    pub(crate) async fn remove(&self, key: &RepoKey) -> Result<bool, Error> {
        let removed = self
            .registry
            .remove(key)
            .await
            .map_err(|e| Error::Mirror(Arc::new(e)))?;
        self.forget_opened(key);
        Ok(removed)
    }

    /// Forget `key`'s opened repository and what it had made (its mirror gone).
    pub(crate) fn forget_opened(&self, key: &RepoKey) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.lock_closed_warmth().remove(key);
    }

    /// Whether a response is being generated from `key`'s mirror (someone holds its opened
    /// repository besides this table).
    fn in_use(&self, key: &RepoKey) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|o| Arc::strong_count(&o.repo) > 1)
    }

    /// Keep mirrors within the disk budget: while they hold more than `budget.max_bytes` in
    /// all, or the disk has less than `budget.min_free` free, evict whole mirrors (and their
    /// stored responses), least recently used first, never one being served or refreshed
    /// (nor `spare`, the one room is made for; then nothing is evicted unless evicting can
    /// free what the budget keeps). Reports each mirror's size. Returns how many were
    /// evicted.
    pub(crate) async fn enforce(&self, budget: &Budget, spare: Option<&RepoKey>) -> usize {
        let keys = self.registry.on_disk();
        let registry = Arc::clone(&self.registry);
        let used: HashMap<RepoKey, SystemTime> = {
            let now = (Instant::now(), SystemTime::now());
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, (_, at))| (k.clone(), now.1 - now.0.duration_since(*at)))
                .collect()
        };
        // Sizes and last uses (this instance's, else the mirror's last refresh), off the
        // async workers.
        let measured = tokio::task::spawn_blocking(move || {
            let mut sizes: Vec<(RepoKey, u64, SystemTime)> = keys
                .into_iter()
                .map(|key| {
                    let dir = registry.path(&key);
                    let size = gitcache_storage::fs::tree_size(&dir).unwrap_or(0);
                    let refreshed = std::fs::metadata(dir.join("packed-refs"))
                        .or_else(|_| std::fs::metadata(dir.join("HEAD")))
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let last = used.get(&key).copied().unwrap_or(refreshed);
                    (key, size, last)
                })
                .collect();
            sizes.sort_by_key(|(_, _, last)| *last);
            let free = registry.free_bytes().unwrap_or(u64::MAX);
            (sizes, free)
        })
        .await;
        let Ok((sizes, mut free)) = measured else {
            return 0;
        };
        let mut total: u64 = sizes.iter().map(|(_, size, _)| size).sum();
        // Room made for one refresh: all of it or none, so that a refresh that cannot start
        // anyway (one asking for more than the disk can give) empties nothing.
        let out_of_reach = spare.is_some() && {
            let evictable: u64 = (sizes.iter())
                .filter(|(key, _, _)| {
                    !self.in_use(key) && spare != Some(key) && !self.registry.is_busy(key)
                })
                .map(|(_, size, _)| size)
                .sum();
            free.saturating_add(evictable) < budget.min_free
        };
        let mut evicted: Vec<&RepoKey> = Vec::new();
        for (key, size, _) in sizes.iter().filter(|_| !out_of_reach) {
            let (key, size) = (key, *size);
            let over = budget.max_bytes.is_some_and(|max| total > max);
            if !over && free >= budget.min_free {
                break;
            }
            if self.in_use(key) || spare == Some(key) {
                continue;
            }
            match self.registry.evict_local(key).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    tracing::warn!(%err, "evicting a mirror failed");
                    continue;
                }
            }
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            self.lock_closed_warmth().remove(key);
            if let Some(responses) = &budget.responses
                && let Err(err) = responses.remove_repo(&key.relative_path())
            {
                tracing::warn!(%err, "removing an evicted mirror's stored responses failed");
            }
            total = total.saturating_sub(size);
            free = free.saturating_add(size);
            evicted.push(key);
            metrics::mirror_evicted(budget.labels.get(key.owner(), key.repo()));
            tracing::info!(repo = %key.relative_path().display(), bytes = size, "mirror evicted (disk budget)");
        }
        // Bytes per label: an evicted mirror's go to zero, and repositories past the label
        // bound add up in theirs.
        let evicted: std::collections::HashSet<&RepoKey> = evicted.into_iter().collect();
        let mut by_label: HashMap<(String, String), u64> = HashMap::new();
        for (key, size, _) in &sizes {
            let bytes = by_label
                .entry(budget.labels.get(key.owner(), key.repo()))
                .or_default();
            if !evicted.contains(&key) {
                *bytes += size;
            }
        }
        for (labels, bytes) in by_label {
            metrics::mirror_size(labels, bytes);
        }
        evicted.len()
    }

    /// [`enforce`](Self::enforce) the configured budget.
    pub(crate) async fn enforce_budget(&self) -> usize {
        if self.budget.max_bytes.is_none() && self.budget.min_free == 0 {
            return 0;
        }
        // A refresh making room now does this work: the next tick comes soon.
        let Ok(_one) = self.making_room.try_lock() else {
            return 0;
        };
        self.enforce(&self.budget, None).await
    }
}

/// Answer a shallow clone of `repo`'s `HEAD` (depth 1, as `git clone --depth=1` asks) with
/// `options` into nothing; the objects it compressed again (none without a `HEAD` naming a
/// commit).
fn shallow_clone_of_head(
    repo: &Repository,
    options: &gitcache_pack::Options,
) -> Result<u64, gitcache_pack::Error> {
    let Some(head) = repo.find_ref("HEAD")?.and_then(|r| r.oid) else {
        return Ok(0);
    };
    let fetch = Fetch {
        wants: vec![head],
        deepen: Some(1),
        done: true,
        thin_pack: true,
        ofs_delta: true,
        no_progress: true,
        include_tag: true,
        ..Fetch::default()
    };
    let plan = gitcache_pack::plan(repo, &fetch, repo.object_format(), options)?;
    let stats = plan.write_to(&mut std::io::sink())?;
    Ok(u64::from(stats.objects.saturating_sub(stats.reused)))
}

/// Remove from `map` the entries `eligible` says may go beyond the `keep` of them that come
/// last by `at`, and return them.
fn drop_oldest<V, T: Ord>(
    map: &mut HashMap<RepoKey, V>,
    keep: usize,
    eligible: impl Fn(&RepoKey, &V) -> bool,
    at: impl Fn(&V) -> T,
) -> Vec<(RepoKey, V)> {
    let mut those: Vec<(T, &RepoKey)> = map
        .iter()
        .filter(|(key, value)| eligible(key, value))
        .map(|(key, value)| (at(value), key))
        .collect();
    if those.len() <= keep {
        return Vec::new();
    }
    let count = those.len() - keep;
    if keep > 0 {
        // The `count` oldest first, in no order among themselves.
        those.select_nth_unstable_by(count, |a, b| a.0.cmp(&b.0));
    }
    let dropped: Vec<RepoKey> = those[..count]
        .iter()
        .map(|(_, key)| (*key).clone())
        .collect();
    dropped
        .into_iter()
        .filter_map(|key| map.remove_entry(&key))
        .collect()
}

/// Who asked the upstream for objects by id (see [`Mirrors::refused_lately`]): a client's
/// fetch, with its credential, or a warming refresh, with gitcache's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Asker {
    Client,
    Warming,
}

/// A client's whole `ls-refs` answer passed on: when it was asked for, and whether it was
/// asked for every tag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listed {
    pub(crate) asked: Instant,
    pub(crate) every_tag: bool,
}

/// What a mirror holds of a fetch's wants.
#[derive(Debug)]
pub(crate) enum Wanted {
    /// The mirror has every object and ref the fetch wants.
    Present(Arc<Repository>),
    /// It lacks some: the wanted ids it lacks (none when there is no mirror yet, or when
    /// what it lacks is a ref asked for by name).
    Lacking(Vec<gix_hash::ObjectId>),
}

/// What `repo` holds of what `fetch` wants.
fn wanted_in(repo: Arc<Repository>, fetch: &Fetch) -> Wanted {
    let missing: Vec<gix_hash::ObjectId> = fetch
        .wants
        .iter()
        .filter(|w| !repo.contains(w))
        .copied()
        .collect();
    // Stops at the first it lacks; a symbolic ref naming nothing is lacked, as the plan finds
    // it.
    let refs = || {
        (repo.find_refs(&fetch.want_refs))
            .all(|found| found.is_ok_and(|r| r.is_some_and(|r| r.oid.is_some())))
    };
    if missing.is_empty() && refs() {
        Wanted::Present(repo)
    } else {
        Wanted::Lacking(missing)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use gitcache_mirror::registry::Registry;
    use gitcache_storage::repo::RepoKey;
    use gitcache_testkit::repo::{self, RepoSpec};
    use gitcache_testkit::upstream::{Access, Upstream};

    use super::{Asker, Budget, Listed, Mirrors, RefLine, TAGS_LISTED_FOR};
    use std::time::Instant;

    /// Warmings past [`super::MAX_WARMING`] waiting or running are dropped, not queued: a
    /// listing anyone may ask for starts at most so many refreshes, whole clones included.
    #[tokio::test]
    async fn warmings_past_the_bound_are_dropped() {
        // An upstream that takes the connection and never answers: each refresh waits.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/acme/repo.git", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                streams.push(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let mirrors = Arc::new(Mirrors::new(registry, Vec::new(), unbounded()));
        let client = gitcache_upstream::Upstream::new(&url, None, Duration::from_secs(60)).unwrap();
        for n in 0..super::MAX_WARMING + 6 {
            let key = RepoKey::new("127.0.0.1", "acme", &format!("repo{n}")).unwrap();
            mirrors.warm(
                key,
                client.clone(),
                super::Warming::RefsMoved,
                true,
                Default::default(),
                false,
            );
        }
        let warming = |m: &Mirrors| m.warming.load(std::sync::atomic::Ordering::Acquire);
        assert_eq!(warming(&mirrors), super::MAX_WARMING);
        held.abort();
    }

    /// No disk budget, no stored responses.
    fn unbounded() -> Budget {
        Budget {
            max_bytes: None,
            min_free: 0,
            responses: None,
            labels: Default::default(),
        }
    }

    /// A small repository served by a real upstream, fetched once into a mirror.
    struct Fetched {
        upstream: Upstream,
        source: std::path::PathBuf,
        client: gitcache_upstream::Upstream,
        dir: tempfile::TempDir,
        registry: Arc<Registry>,
        key: RepoKey,
        mirrors: Arc<Mirrors>,
    }

    async fn fetched(seed: u64) -> Fetched {
        let upstream = Upstream::start().unwrap();
        let source = upstream.repo_path("acme/app");
        repo::generate(&source, &RepoSpec::small(seed)).unwrap();
        upstream.adopt_repo("acme/app", Access::Public).unwrap();
        let client = gitcache_upstream::Upstream::new(
            &upstream.repo_url("acme/app"),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let key = RepoKey::new("127.0.0.1", "acme", "app.git").unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
        let mirrors = Arc::new(Mirrors::new(Arc::clone(&registry), Vec::new(), unbounded()));
        Fetched {
            upstream,
            source,
            client,
            dir,
            registry,
            key,
            mirrors,
        }
    }

    /// A listing that shows a ref as the mirror's last refresh left it out has not moved;
    /// one that shows it with another value, or (for `HEAD`) naming another target, has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refs_left_out_as_listed_have_not_moved() {
        let f = fetched(1507).await;
        let repo = super::Repository::open(f.registry.existing(&f.key).unwrap().git_dir()).unwrap();
        let listed: Vec<RefLine> = (repo.refs().unwrap().into_iter())
            .map(|r| RefLine {
                oid: r.oid,
                name: r.name,
                symref_target: r.symref_target,
                peeled: r.peeled,
            })
            .collect();
        let main = listed.iter().find(|r| r.name == "refs/heads/main").unwrap();
        let other = (listed.iter())
            .filter_map(|r| r.oid)
            .find(|oid| Some(*oid) != main.oid)
            .expect("another commit");
        let with = |extra: &[RefLine]| {
            let mut lines: Vec<RefLine> = (listed.iter())
                .filter(|r| !extra.iter().any(|e| e.name == r.name))
                .cloned()
                .collect();
            lines.extend(extra.iter().cloned());
            f.mirrors.moved(&f.key, &lines, None).is_some()
        };
        assert!(!with(&[]), "the mirror's own refs have not moved");
        let odd = RefLine::new(main.oid.unwrap(), "refs/heads/odd..name");
        let head = RefLine {
            oid: Some(other),
            name: "HEAD".into(),
            symref_target: Some("refs/tags/too-deep".into()),
            peeled: None,
        };
        assert!(with(std::slice::from_ref(&odd)));
        assert!(with(std::slice::from_ref(&head)));
        f.mirrors
            .note_left_out(&f.key, &[odd.clone(), head.clone()]);
        assert!(!with(&[odd.clone(), head.clone()]));
        let head_untold = RefLine {
            symref_target: None,
            ..head.clone()
        };
        assert!(
            !with(&[head_untold]),
            "a listing without symrefs says no more"
        );
        let odd_moved = RefLine::new(other, "refs/heads/odd..name");
        assert!(with(&[odd_moved]), "another value");
        let head_moved = RefLine {
            symref_target: Some("refs/heads/main".into()),
            ..head
        };
        assert!(with(&[head_moved]), "another target, the same commit");
        // Many left out (more than the 64 remembered once): still not news.
        let many: Vec<RefLine> = (0..1000)
            .map(|i| RefLine::new(main.oid.unwrap(), format!("refs/heads/odd{i}..name")))
            .collect();
        assert!(with(&many));
        f.mirrors.note_left_out(&f.key, &many);
        assert!(!with(&many));
        assert!(with(&[RefLine::new(other, "refs/heads/odd999..name")]));
    }

    /// A refresh stopped for the disk's floor as its pack arrived (here the registry's floor
    /// is one no disk has, the start's check one any disk has: the disk filled meanwhile) is
    /// a `LowDisk` failure, noted; the next refresh of that mirror starts only with the room
    /// it lacked (twice what had arrived) free above the floor: refused at the start, nothing
    /// downloaded again in part. One that goes through forgets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_stopped_for_the_disk_waits_for_the_room_it_lacked() {
        let f = fetched(1506).await;
        let floor = Budget {
            min_free: 1,
            ..unbounded()
        };
        let tight = Arc::new(Registry::new(f.dir.path()).with_min_free(u64::MAX));
        let mirrors = Arc::new(Mirrors::new(tight, Vec::new(), floor.clone()));
        repo::append_commits(&f.source, "main", 2, 1506).unwrap();
        f.upstream.reset_counts();
        let refresh = |mirrors: &Arc<Mirrors>| {
            let mirrors = Arc::clone(mirrors);
            let (key, client) = (f.key.clone(), f.client.clone());
            async move {
                mirrors
                    .refresh_asking(&key, client, false, Vec::new(), Default::default())
                    .await
            }
        };
        let err = refresh(&mirrors).await.unwrap_err();
        assert!(
            matches!(err, super::Error::LowDisk { keep, .. } if keep == u64::MAX),
            "{err:?}"
        );
        // Stopped at its first read (the floor is checked as the pack starts to arrive), and
        // noted: nothing had arrived (at least a byte is asked for). Had an exabyte arrived
        // by then, the next refresh would need twice that.
        assert_eq!(
            (mirrors.stopped_for_disk.lock().unwrap())
                .get(&f.key)
                .map(|stopped| stopped.needed),
            Some(1)
        );
        // Another mirror beside it, which evicting could take.
        let other = RepoKey::new("127.0.0.1", "acme", "other.git").unwrap();
        f.registry.refresh(&other, &f.client, &[]).await.unwrap();
        let mirrors_before = f.registry.on_disk().len();
        assert_eq!(mirrors_before, 2);
        let needed = 1 << 61;
        mirrors.note_stopped_for_disk(&f.key, Some(needed));
        let asked = |upstream: &Upstream| {
            let counts = upstream.counts();
            counts.ls_refs + counts.fetch
        };
        let before = asked(&f.upstream);
        assert!(before >= 1, "the listing was asked for");
        let err = refresh(&mirrors).await.unwrap_err();
        assert!(
            matches!(err, super::Error::LowDisk { keep, .. } if keep == 1 + needed),
            "{err:?}"
        );
        assert_eq!(asked(&f.upstream), before, "refused at the start");
        assert_eq!(
            f.registry.on_disk().len(),
            mirrors_before,
            "nothing evicted for room no eviction could make"
        );
        // With room (a little asked for above the floor), it goes through and is forgotten.
        let roomy = Arc::new(Mirrors::new(Arc::clone(&f.registry), Vec::new(), floor));
        roomy.note_stopped_for_disk(&f.key, Some(1));
        refresh(&roomy).await.unwrap();
        assert!(roomy.stopped_for_disk.lock().unwrap().is_empty());
    }

    /// The disk's free space as [`free_as_set`] tells it (one test sets it: tests run at once).
    static FREE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

    fn free_as_set(_: &std::path::Path) -> std::io::Result<u64> {
        Ok(FREE.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// A refresh stopped for the floor after its download (its thin pack's bases find no
    /// room) is noted with the room it lacked, and the next one starts only with that room:
    /// a byte less is refused before the upstream is asked, that much goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_stopped_after_its_download_waits_for_the_room_it_named() {
        const KEEP: u64 = 1 << 30;
        let f = fetched(1508).await;
        let floor = Budget {
            min_free: KEEP,
            ..unbounded()
        };
        let tight = Arc::new(
            Registry::new(f.dir.path())
                .with_min_free(KEEP)
                .with_free_space(free_as_set),
        );
        let mirrors = Arc::new(Mirrors::new(Arc::clone(&tight), Vec::new(), floor));
        let tip = repo::append_commits(&f.source, "main", 3, 1508).unwrap();
        let refresh = || {
            let mirrors = Arc::clone(&mirrors);
            let (key, client) = (f.key.clone(), f.client.clone());
            async move {
                mirrors
                    .refresh_asking(&key, client, false, Vec::new(), Default::default())
                    .await
            }
        };
        let asked = || f.upstream.counts().fetch;
        // A byte above the floor: the pack arrives, its first base finds no room.
        FREE.store(KEEP + 1, std::sync::atomic::Ordering::SeqCst);
        let before = asked();
        let err = refresh().await.unwrap_err();
        assert!(
            matches!(err, super::Error::LowDisk { free, keep } if (free, keep) == (KEEP + 1, KEEP)),
            "{err:?}"
        );
        assert_eq!(asked(), before + 1, "stopped after its download");
        let needed = (mirrors.stopped_for_disk.lock().unwrap())
            .get(&f.key)
            .map(|stopped| stopped.needed)
            .unwrap();
        // Twice what arrived and the base (the mirror's tests check the sum itself).
        assert_eq!(needed % 2, 0, "{needed}");
        // A byte short of that room: refused at the start.
        FREE.store(KEEP + needed - 1, std::sync::atomic::Ordering::SeqCst);
        let err = refresh().await.unwrap_err();
        assert!(
            matches!(err, super::Error::LowDisk { keep, .. } if keep == KEEP + needed),
            "{err:?}"
        );
        assert_eq!(asked(), before + 1, "refused before the upstream was asked");
        // That room: it goes through, and is forgotten.
        FREE.store(KEEP + needed, std::sync::atomic::Ordering::SeqCst);
        refresh().await.unwrap();
        assert!(mirrors.stopped_for_disk.lock().unwrap().is_empty());
        let mirror = tight.existing(&f.key).unwrap();
        let main = gitcache_testkit::git::git_stdout(mirror.git_dir(), &["rev-parse", "main"]);
        assert_eq!(main.trim(), tip);
    }

    /// Catching up with the shared store takes disk as a refresh does: below the free-space
    /// floor the copies stay as they are (nothing evicted for it) but for a purge elsewhere,
    /// which is applied; above it they catch up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catching_up_keeps_to_the_free_space_floor() {
        use gitcache_mirror::shared::Shared;
        use gitcache_storage::store::{AnyStore, FsStore};
        let f = fetched(1505).await;
        let bucket = tempfile::tempdir().unwrap();
        let store = AnyStore::Fs(FsStore::new(bucket.path()));
        let shared = || Shared::new(store.clone(), Duration::from_secs(3600));
        let a = Arc::new(Registry::new(f.dir.path().join("a")).with_shared(shared()));
        let b_dir = tempfile::tempdir().unwrap();
        let b = Arc::new(Registry::new(b_dir.path()).with_shared(shared()));
        a.refresh(&f.key, &f.client, &[]).await.unwrap();
        b.refresh(&f.key, &f.client, &[]).await.unwrap();
        let new_tip = repo::append_commits(&f.source, "main", 2, 1505).unwrap();
        a.refresh(&f.key, &f.client, &[]).await.unwrap();
        let b_main = || {
            let mirror = b.existing(&f.key)?;
            let main = gitcache_testkit::git::git_stdout(mirror.git_dir(), &["rev-parse", "main"]);
            Some(main.trim().to_owned())
        };
        assert_ne!(b_main().unwrap(), new_tip);
        let below = Budget {
            min_free: u64::MAX,
            ..unbounded()
        };
        // The mirror as used lately (not opened: a first open starts its maintenance, which
        // takes the store's state on its own before it consolidates).
        let serving = |budget: Budget| {
            let mirrors = Arc::new(Mirrors::new(Arc::clone(&b), Vec::new(), budget));
            mirrors.used(&crate::target::Target {
                host_name: "127.0.0.1".into(),
                url: "http://127.0.0.1:1/acme/app.git".into(),
                name: "acme/app".into(),
                key: f.key.clone(),
                cached: true,
                bypassed: false,
                timeout: Duration::from_secs(30),
            });
            mirrors
        };
        serving(below.clone())
            .catch_up(Duration::from_secs(60))
            .await;
        assert_ne!(b_main().unwrap(), new_tip, "nothing taken below the floor");
        serving(unbounded()).catch_up(Duration::from_secs(60)).await;
        assert_eq!(b_main().unwrap(), new_tip, "caught up above the floor");

        // A purge on A reaches B below the floor too: it frees disk.
        assert!(a.remove(&f.key).await.unwrap());
        serving(below).catch_up(Duration::from_secs(60)).await;
        assert!(b_main().is_none(), "the purged copy goes");
    }

    /// `key`'s mirror opened as a request opens it, on a blocking thread.
    async fn opened(
        mirrors: &Arc<Mirrors>,
        key: &RepoKey,
    ) -> Option<Arc<gitcache_pack::Repository>> {
        let (mirrors, key) = (Arc::clone(mirrors), key.clone());
        tokio::task::spawn_blocking(move || mirrors.open(&key))
            .await
            .unwrap()
            .unwrap()
    }

    /// Where `key`'s mirror has the ref `name`, asked as a webhook asks.
    async fn rev_of(mirrors: &Arc<Mirrors>, key: &RepoKey, name: &str) -> gix_hash::ObjectId {
        mirrors
            .ref_now(key, name.to_owned())
            .await
            .unwrap()
            .expect("the ref")
    }

    /// `key`'s mirror prepared as after its maintenance, on a blocking thread.
    async fn prepared(mirrors: &Arc<Mirrors>, key: &RepoKey) {
        let (mirrors, key) = (Arc::clone(mirrors), key.clone());
        tokio::task::spawn_blocking(move || mirrors.prepare(&key))
            .await
            .unwrap()
            .unwrap();
    }

    /// What `remote`, listed as asked for at `asked` (of every tag or not), says of `key`'s mirror,
    /// noted as a passed-on `ls-refs` answer notes it, on a blocking thread.
    async fn noted(
        mirrors: &Arc<Mirrors>,
        key: &RepoKey,
        remote: &[RefLine],
        every_tag: bool,
        asked: Instant,
    ) {
        let (mirrors, key, remote) = (Arc::clone(mirrors), key.clone(), remote.to_vec());
        let listed = Listed { asked, every_tag };
        tokio::task::spawn_blocking(move || mirrors.moved(&key, &remote, Some(&listed)))
            .await
            .unwrap();
    }

    /// Ids a warming refresh asked for ahead are noted as refused to warming only when the
    /// mirror lacks them after it, and apart from those refused to clients' own fetches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_to_warming_are_what_it_did_not_get_and_kept_apart() {
        let fixture = fetched(1363).await;
        let (source, key, mirrors) = (&fixture.source, &fixture.key, &fixture.mirrors);
        let id = |hex: &str| gix_hash::ObjectId::from_hex(hex.trim().as_bytes()).unwrap();
        let held = id(&gitcache_testkit::git::git_stdout(
            source,
            &["rev-parse", "main"],
        ));
        let lacking = id(&"7".repeat(40));
        let (noting, noted_key) = (Arc::clone(mirrors), key.clone());
        tokio::task::spawn_blocking(move || {
            noting.note_refused_ahead(&noted_key, &[held, lacking])
        })
        .await
        .unwrap();
        assert!(mirrors.refused_to(key, &[lacking], Asker::Warming));
        assert!(!mirrors.refused_to(key, &[held], Asker::Warming));
        assert!(!mirrors.refused_lately(key, &[lacking]), "clients' apart");
        let other = id(&"8".repeat(40));
        mirrors.note_refused(key, &[other]);
        assert!(mirrors.refused_lately(key, &[other]));
        assert!(!mirrors.refused_to(key, &[other], Asker::Warming));
    }

    /// A listing of every tag vouches for the mirror's tags when they are exactly its own;
    /// one on its way, a later one with a tag moved or added (of every tag or not), or time
    /// vouches against them; an earlier listing noted late changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_of_every_tag_vouches_for_the_mirrors_tags_until_another_says_otherwise() {
        let fixture = fetched(1362).await;
        let (source, key, mirrors) = (&fixture.source, &fixture.key, &fixture.mirrors);
        let listing = |source: &std::path::Path| -> Vec<RefLine> {
            let refs = gitcache_testkit::git::git_stdout(
                source,
                &["for-each-ref", "--format=%(objectname) %(refname)"],
            );
            refs.lines()
                .map(|line| {
                    let (oid, name) = line.split_once(' ').unwrap();
                    RefLine::new(gix_hash::ObjectId::from_hex(oid.as_bytes()).unwrap(), name)
                })
                .collect()
        };
        let same = listing(source);
        assert!(same.iter().any(|line| line.name.starts_with(b"refs/tags/")));
        assert!(!mirrors.tags_as_listed_lately(key), "nothing listed yet");
        let first = Instant::now();
        mirrors.tags_listing(key, first);
        assert!(!mirrors.tags_as_listed_lately(key), "on its way");
        noted(mirrors, key, &same, true, first).await;
        assert!(mirrors.tags_as_listed_lately(key));
        // Branches alone say nothing of the tags.
        let branches: Vec<RefLine> = (same.iter())
            .filter(|line| !line.name.starts_with(b"refs/tags/"))
            .cloned()
            .collect();
        noted(mirrors, key, &branches, false, Instant::now()).await;
        assert!(mirrors.tags_as_listed_lately(key));
        // A tag the mirror lacks, in a listing of some tags: against.
        gitcache_testkit::git::git_stdout(source, &["tag", "pushed-now", "main~1"]);
        let added = listing(source);
        let later = Instant::now();
        noted(mirrors, key, &added, false, later).await;
        assert!(!mirrors.tags_as_listed_lately(key));
        // The first listing, noted again after it: older, it changes nothing.
        noted(mirrors, key, &same, true, first).await;
        assert!(!mirrors.tags_as_listed_lately(key));
        // A listing of every tag missing one the mirror has: against.
        let fewer: Vec<RefLine> = (same.iter())
            .filter(|line| line.name != "refs/tags/v1.0")
            .cloned()
            .collect();
        assert!(fewer.len() < same.len());
        noted(mirrors, key, &fewer, true, Instant::now()).await;
        assert!(!mirrors.tags_as_listed_lately(key));
        // The mirror's own again, but too long ago: against.
        let long_ago = Instant::now().checked_sub(TAGS_LISTED_FOR * 2);
        noted(mirrors, key, &same, true, Instant::now()).await;
        assert!(mirrors.tags_as_listed_lately(key));
        if let Some(long_ago) = long_ago {
            mirrors.tags_listed.lock().unwrap().clear();
            noted(mirrors, key, &same, true, long_ago).await;
            assert!(!mirrors.tags_as_listed_lately(key));
        }
    }

    /// A maintained mirror no request has opened yet is opened and prepared; one opened again
    /// carries over what the handles before it made for their answers, also after one was
    /// closed while idle; one removed is not kept, by a request or by preparing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mirrors_opened_again_carry_what_was_made_and_removed_ones_are_not_kept() {
        let Fetched {
            upstream: _upstream,
            source,
            client,
            dir: _dir,
            registry,
            key,
            mirrors,
        } = fetched(1361).await;
        let entry = |mirrors: &Mirrors| {
            let open = mirrors.open.lock().unwrap();
            open.get(&key)
                .map(|known| (Arc::clone(&known.repo), known.inherited))
        };

        // Prepared with no request before: opened, and the reverse index read (written with
        // the pack's index: nothing had to be made of it).
        prepared(&mirrors, &key).await;
        let (first, inherited) = entry(&mirrors).expect("opened");
        assert_eq!(inherited, gitcache_pack::Warmth::default());
        assert_eq!(
            first.warmth(),
            gitcache_pack::Warmth::default(),
            "read, not made"
        );

        // A shallow answer makes more (the delta forest, name hashes); a refresh adds a
        // pack; the handle opened again inherits what the first had made.
        let head = gitcache_testkit::git::git_stdout(&source, &["rev-parse", "HEAD"]);
        let fetch = gitcache_protocol::request::Fetch {
            wants: vec![gix_hash::ObjectId::from_hex(head.trim().as_bytes()).unwrap()],
            deepen: Some(1),
            done: true,
            ofs_delta: true,
            no_progress: true,
            ..Default::default()
        };
        let format = first.object_format();
        gitcache_pack::plan(&first, &fetch, format, &Default::default())
            .unwrap()
            .write_to(std::io::sink())
            .unwrap();
        let made = first.warmth();
        assert_ne!(made, gitcache_pack::Warmth::default());
        repo::append_commits(&source, "main", 2, 7).unwrap();
        // The pack folder's time moves on with the new pack.
        std::thread::sleep(Duration::from_millis(20));
        registry.refresh(&key, &client, &[]).await.unwrap();
        let second = opened(&mirrors, &key).await.expect("opened again");
        assert!(!Arc::ptr_eq(&first, &second));
        let (_, inherited) = entry(&mirrors).unwrap();
        assert_eq!(
            inherited | made,
            inherited,
            "what the first handle made is kept"
        );

        // Closed while idle, opened again: what the handles before had made is still kept.
        drop((first, second));
        let on_disk: std::collections::HashSet<RepoKey> = [key.clone()].into();
        mirrors.close_idle(Some(&on_disk), 0, Duration::ZERO);
        assert!(entry(&mirrors).is_none(), "closed");
        opened(&mirrors, &key).await.expect("opened again");
        let (_, after_idle) = entry(&mirrors).unwrap();
        assert_eq!(after_idle | made, after_idle, "kept through the closing");
        // Kept while its mirror is on disk; closed as gone from disk, nothing is kept.
        let remembered = |mirrors: &Mirrors| mirrors.lock_closed_warmth().contains_key(&key);
        mirrors.close_idle(Some(&on_disk), 0, Duration::ZERO);
        assert!(remembered(&mirrors));
        mirrors.forget_beyond(&on_disk, 0);
        assert!(remembered(&mirrors));
        mirrors.forget_beyond(&Default::default(), 0);
        assert!(!remembered(&mirrors));
        opened(&mirrors, &key).await.expect("opened again");
        mirrors.close_idle(Some(&Default::default()), 10, Duration::from_secs(3600));
        assert!(entry(&mirrors).is_none() && !remembered(&mirrors));
        // Closed while idle, then removed: forgotten with it.
        opened(&mirrors, &key).await.expect("opened again");
        mirrors.close_idle(Some(&on_disk), 0, Duration::ZERO);
        assert!(remembered(&mirrors));
        assert!(mirrors.remove(&key).await.unwrap());
        assert!(!remembered(&mirrors));

        // Removed: neither a request nor preparing keeps it open.
        assert!(entry(&mirrors).is_none());
        prepared(&mirrors, &key).await;
        assert!(entry(&mirrors).is_none());
        assert!(mirrors.open(&key).unwrap().is_none());
    }

    /// A maintained mirror that requests opened is prepared with its name hashes read and
    /// (a small one) its delta forest made, though no answer of the handle before it needed
    /// them: the first shallow clone after maintenance does not pay for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn maintained_mirrors_are_prepared_for_shallow_clones() {
        let Fetched {
            upstream: _upstream,
            dir: _dir,
            registry,
            key,
            mirrors,
            ..
        } = fetched(1362).await;
        let mut maintained = registry.maintained();
        // Opened by a request, before its bitmaps are written: the first opening's check
        // takes up the maintenance a first pack asks for (its bitmaps, with name hashes).
        let before = opened(&mirrors, &key).await.expect("opened");
        assert_eq!(before.warmth(), gitcache_pack::Warmth::default());
        tokio::time::timeout(Duration::from_secs(120), async {
            while maintained.recv().await.unwrap() != key {}
        })
        .await
        .expect("maintained");
        assert!(
            registry
                .path(&key)
                .join("objects/pack")
                .read_dir()
                .unwrap()
                .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "bitmap")),
            "bitmaps written"
        );
        prepared(&mirrors, &key).await;
        let after = Arc::clone(&mirrors.open.lock().unwrap().get(&key).expect("open").repo);
        assert!(!Arc::ptr_eq(&before, &after), "opened again");
        let shallow = after.shallow_clone_warmth();
        assert_ne!(
            shallow | gitcache_pack::Warmth::name_hashes(),
            gitcache_pack::Warmth::name_hashes(),
            "a small mirror's delta forest is named too"
        );
        assert_eq!(
            after.warmth() | shallow,
            after.warmth(),
            "name hashes read, delta forest made"
        );
        assert!(after.kept_trees().bytes > 0, "the trees of HEAD read");
        drop(after);
        // Kept open while idle, it lets go of them.
        mirrors.close_idle(None, 10, Duration::ZERO);
        let open = mirrors.open.lock().unwrap();
        let kept = open.get(&key).expect("kept open").repo.kept_trees();
        assert_eq!(kept.bytes, 0, "idle: trees let go of");
    }

    /// A mirror asked for but never opened (a clone its first pack answered as it arrived)
    /// is prepared for shallow clones as one opened is; one neither asked for nor opened
    /// (made by a webhook) is not.
    /// A mirror requests took stays asked for when a webhook's questions open it again
    /// after a refresh (new packs): it is still prepared for shallow clones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhooks_questions_keep_a_requested_mirror_asked_for() {
        let f = fetched(1364).await;
        opened(&f.mirrors, &f.key)
            .await
            .expect("opened by a request");
        repo::append_commits(&f.source, "main", 3, 1364).unwrap();
        f.registry.refresh(&f.key, &f.client, &[]).await.unwrap();
        let main = rev_of(&f.mirrors, &f.key, "refs/heads/main").await;
        assert!(f.mirrors.holds(&f.key, main).await);
        prepared(&f.mirrors, &f.key).await;
        let open = f.mirrors.open.lock().unwrap();
        let repo = &open.get(&f.key).expect("open").repo;
        assert!(
            repo.kept_trees().bytes > 0,
            "still asked for: the trees of HEAD read"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mirrors_asked_for_are_prepared_for_shallow_clones() {
        let Fetched {
            upstream: _upstream,
            dir: _dir,
            key,
            mirrors,
            ..
        } = fetched(1363).await;
        let warmth = |mirrors: &Mirrors| {
            let open = mirrors.open.lock().unwrap();
            let repo = &open.get(&key).expect("open").repo;
            (
                repo.warmth(),
                repo.shallow_clone_warmth(),
                repo.kept_trees().bytes,
            )
        };
        prepared(&mirrors, &key).await;
        let (made, _, trees) = warmth(&mirrors);
        assert_eq!(made, gitcache_pack::Warmth::default(), "not asked for");
        assert_eq!(trees, 0, "not asked for: no trees read");
        // On another instance of the table, a webhook's questions open it: still not asked
        // for.
        let questioned = Arc::new(Mirrors::new(
            Arc::clone(&mirrors.registry),
            Vec::new(),
            unbounded(),
        ));
        let main = rev_of(&questioned, &key, "refs/heads/main").await;
        assert!(questioned.holds(&key, main).await);
        prepared(&questioned, &key).await;
        let (made, _, trees) = warmth(&questioned);
        assert_eq!(
            (made, trees),
            (gitcache_pack::Warmth::default(), 0),
            "a webhook's questions are no request"
        );

        // Another instance of the table, so that the mirror is not open there yet.
        let asked = Arc::new(Mirrors::new(
            Arc::clone(&mirrors.registry),
            Vec::new(),
            unbounded(),
        ));
        asked.used(&crate::target::Target {
            host_name: "127.0.0.1".into(),
            url: "http://127.0.0.1:1/acme/app.git".into(),
            name: "acme/app".into(),
            key: key.clone(),
            cached: true,
            bypassed: false,
            timeout: Duration::from_secs(30),
        });
        prepared(&asked, &key).await;
        let (made, shallow, trees) = warmth(&asked);
        assert!(trees > 0, "asked for: the trees of HEAD read");
        assert_ne!(shallow, gitcache_pack::Warmth::name_hashes());
        // Its delta forest made; no bitmaps are written yet, so no name hashes to read.
        let names = gitcache_pack::Warmth::name_hashes();
        assert_eq!(
            made | names,
            shallow | names,
            "asked for: made for shallow clones"
        );
    }

    /// Activity and last uses of repositories without a mirror on disk are kept for the
    /// `keep` noted last; those with a mirror on disk are kept however old.
    #[test]
    fn activity_off_disk_is_forgotten_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mirrors = Mirrors::new(Arc::new(Registry::new(dir.path())), Vec::new(), unbounded());
        let key = |i: usize| RepoKey::new("127.0.0.1", "acme", &format!("r{i}.git")).unwrap();
        let target = |i: usize| crate::target::Target {
            host_name: "127.0.0.1".into(),
            url: format!("http://127.0.0.1:1/acme/r{i}.git"),
            name: format!("acme/r{i}"),
            key: key(i),
            cached: true,
            bypassed: false,
            timeout: Duration::from_secs(30),
        };
        for i in 0..8 {
            mirrors.note(&key(i), |s| s.hits += i as u64 + 1);
            mirrors.used(&target(i));
            // Instants apart, whatever the clock's resolution.
            std::thread::sleep(Duration::from_millis(2));
        }
        // r0 is the oldest, and its mirror is on disk.
        let on_disk: std::collections::HashSet<RepoKey> = [key(0)].into_iter().collect();
        // Noted again: r2 is now the newest.
        mirrors.note(&key(2), |s| s.misses += 1);

        let forgotten = mirrors.forget_beyond(&on_disk, 4);
        let mut forgotten: Vec<String> = forgotten.iter().map(|k| k.repo().to_owned()).collect();
        forgotten.sort();
        assert_eq!(forgotten, ["r1", "r3", "r4"]);
        let mut kept: Vec<(String, u64)> = mirrors
            .all_stats()
            .into_iter()
            .map(|(k, s)| (k.repo().to_owned(), s.hits))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                ("r0".to_owned(), 1),
                ("r2".to_owned(), 3),
                ("r5".to_owned(), 6),
                ("r6".to_owned(), 7),
                ("r7".to_owned(), 8)
            ]
        );
        assert_eq!(mirrors.stats(&key(2)).misses, 1);
        assert_eq!(
            mirrors.stats(&key(1)),
            Default::default(),
            "starts from nothing"
        );
        // Last uses: r0 on disk, then the four used last (r2's note was no use).
        let mut used: Vec<String> = mirrors
            .used
            .lock()
            .unwrap()
            .keys()
            .map(|k| k.repo().to_owned())
            .collect();
        used.sort();
        assert_eq!(used, ["r0", "r4", "r5", "r6", "r7"]);

        // Within the bound nothing more goes.
        assert!(mirrors.forget_beyond(&on_disk, 4).is_empty());
        assert_eq!(mirrors.all_stats().len(), 5);
    }

    /// Open mirrors no request holds are closed past the most kept, the least recently used
    /// first, and when gone from disk; one a request holds stays open.
    #[tokio::test]
    async fn idle_open_mirrors_are_closed_past_the_bound_and_when_gone() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(dir.path()));
        let mirrors = Mirrors::new(Arc::clone(&registry), Vec::new(), unbounded());
        let key = |i: usize| RepoKey::new("127.0.0.1", "acme", &format!("r{i}.git")).unwrap();
        for i in 0..3 {
            let path = registry.path(&key(i));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            gitcache_mirror::mirror::Mirror::create(path, gix_hash::Kind::Sha1).unwrap();
        }
        let held = mirrors.open(&key(0)).unwrap().expect("opened");
        for i in 1..3 {
            std::thread::sleep(Duration::from_millis(2));
            mirrors.open(&key(i)).unwrap().expect("opened");
        }
        let open = |mirrors: &Mirrors| {
            let mut keys: Vec<String> = (mirrors.open.lock().unwrap().keys())
                .map(|k| k.repo().to_owned())
                .collect();
            keys.sort();
            keys
        };
        let all: std::collections::HashSet<RepoKey> = (0..3).map(key).collect();

        // One idle kept: the one used last (r0 is held, so not idle).
        let (now, long) = (Duration::ZERO, Duration::from_secs(3600));
        mirrors.close_idle(Some(&all), 1, long);
        assert_eq!(open(&mirrors), ["r0", "r1", "r2"], "none unused for long");
        mirrors.close_idle(Some(&all), 1, now);
        assert_eq!(open(&mirrors), ["r0", "r2"]);
        // Gone from disk: closed when idle, kept while held.
        mirrors.close_idle(None, 0, long);
        assert_eq!(open(&mirrors), ["r0", "r2"], "no listing: none is gone");
        mirrors.close_idle(Some(&Default::default()), 10, long);
        assert_eq!(open(&mirrors), ["r0"]);
        drop(held);
        mirrors.close_idle(Some(&Default::default()), 10, long);
        assert!(open(&mirrors).is_empty());
        // Opened again when asked for.
        assert!(mirrors.open(&key(1)).unwrap().is_some());
        assert_eq!(open(&mirrors), ["r1"]);
    }
}
