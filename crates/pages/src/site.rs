//! Deploying a tree as a site, and reading sites back.
//!
//! ```text
//! pages/blob/<sha256 hex>            file contents, shared by every site
//! pages/site/<host>/<project>        the deployed manifest (`.index`: the domain's root tree)
//! pages/staged/<sha256 of manifest>  manifests of deployments under way
//! pages/sweeping/<id>                sweeps deleting blobs (see [`Pages::collect`])
//! ```
//!
//! A deployment writes its staged manifest first (so that a garbage sweep sees its blobs as
//! named), then the blobs the store lacks, then replaces the site's manifest with one
//! conditional write, then drops the staged one. A crash leaves the old site whole, perhaps
//! with blobs and a staged manifest no site names yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gitcache_storage::store::{ObjectKey, ObjectStore, Replaced, StoreError, Version};
use sha2::Digest as _;

use crate::cache::Lru;
use crate::encoding::Encoding;
use crate::manifest::{Content, Entry, INLINE_MAX, Invalid, SiteManifest, valid_path};
use crate::rules::{HEADERS_FILE, MAX_RULES_BYTES, REDIRECTS_FILE, RuleError, Rules};

/// The most files a site may hold.
pub const MAX_FILES: usize = 100_000;
/// Blobs a deployment writes (or looks for) at once.
pub const CONCURRENT_UPLOADS: usize = 16;
/// The most bytes of files a deployment holds at once as it uploads them, in KiB (a larger
/// file is held alone).
const UPLOAD_KIB: u64 = 64 << 10;
/// The largest file.
pub const MAX_FILE_BYTES: u64 = 100 << 20;
/// The most bytes a site's files may take together.
pub const MAX_SITE_BYTES: u64 = 1 << 30;

/// How sweeps, and the deployments that wait for them, keep time. The defaults are what the
/// bounds in the docs rest on; tests shorten them to see each rule at work. Keep
/// `beat < beat_trusted < beat_gap` and `silent` at least `beat_trusted` and 40 s (what a
/// bucket's marker write and a delete after it may take) above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepTimes {
    /// A sweep starts no delete later than this after it began to read the manifests again
    /// (its marker under `pages/sweeping/` written before); what is left goes with the next
    /// sweep. Bounds how long a deployment waits for a sweep. 180 s.
    pub deletes_within: Duration,
    /// How often a sweep writes its marker again while it deletes, to show it is alive. 5 s.
    pub beat: Duration,
    /// A sweep starts a delete only this soon after a write of its marker last returned...
    /// 10 s.
    pub beat_trusted: Duration,
    /// ...and none at all once two of those writes returned further apart than this (it may
    /// have been taken for dead meanwhile, see `silent`). 15 s.
    pub beat_gap: Duration,
    /// A marker a deployment has seen unchanged this long (or written twice this long before
    /// the deployment's own staged manifest, by the store's clock) is a dead sweep's: a write
    /// of it takes 20 s at most (a bucket's retries), a delete after it as long, and the
    /// sweep trusts it for 10 s, which leaves 40 s to spare. 90 s.
    pub silent: Duration,
    /// How often a deployment waiting for sweeps lists their markers. 1 s.
    pub poll: Duration,
}

impl Default for SweepTimes {
    fn default() -> Self {
        SweepTimes {
            deletes_within: Duration::from_secs(180),
            beat: Duration::from_secs(5),
            beat_trusted: Duration::from_secs(10),
            beat_gap: Duration::from_secs(15),
            silent: Duration::from_secs(90),
            poll: Duration::from_secs(1),
        }
    }
}

/// Manifests a sweep reads at once (each up to the manifests' bound in memory).
const MANIFESTS_AT_ONCE: usize = 4;
/// A sweep's marker this old is one a sweep that died left: the next sweep deletes it.
/// Judged by the store's time against this machine's: a bucket refuses requests signed more
/// than 15 minutes off its clock, so a live marker never looks this old.
const SWEEP_MARKER_STALE: Duration = Duration::from_secs(3600);

/// The most projects (the root tree counted) deployed under one host, by default (see
/// [`Pages::with_max_projects`]): a deployer authorized for a host cannot fill the store
/// with sites of their own.
pub const MAX_PROJECTS: usize = 1_000;

/// One path of a tree to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path in the tree (`/`-separated, relative).
    pub path: String,
    /// A file's content, or a symlink's target.
    pub kind: TreeKind,
}

/// What a [`TreeFile`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeKind {
    /// A file and its content.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
}

impl TreeFile {
    /// A file at `path` holding `content`.
    pub fn file(path: impl Into<String>, content: Vec<u8>) -> Self {
        TreeFile {
            path: path.into(),
            kind: TreeKind::File(content),
        }
    }

    /// A symlink at `path` pointing at `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        TreeFile {
            path: path.into(),
            kind: TreeKind::Symlink(target.into()),
        }
    }
}

/// A tree to deploy, read a file at a time: its paths and sizes first, then each file's
/// bytes when it is hashed and again when it is uploaded, so that a deployment holds a few
/// files at once rather than its site. A `Vec<TreeFile>` is one held in memory;
/// [`crate::fetch::FetchedTree`] reads one from the repository fetched for it.
pub trait TreeSource: Send + Sync + 'static {
    /// How many files and symlinks it holds.
    fn count(&self) -> usize;
    /// The `index`th (below [`TreeSource::count`]): its path, and what it is.
    fn item(&self, index: usize) -> (&str, SourceKind<'_>);
    /// The bytes of the file at `index`. It may block: it is called on a blocking thread.
    fn read(&self, index: usize) -> Result<Vec<u8>, String>;
}

/// What an item of a [`TreeSource`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind<'a> {
    /// A file of this many bytes.
    File(u64),
    /// A symlink and its target.
    Symlink(&'a str),
}

impl TreeSource for Vec<TreeFile> {
    fn count(&self) -> usize {
        self.len()
    }

    fn item(&self, index: usize) -> (&str, SourceKind<'_>) {
        let file = &self[index];
        let kind = match &file.kind {
            TreeKind::File(content) => SourceKind::File(content.len() as u64),
            TreeKind::Symlink(target) => SourceKind::Symlink(target),
        };
        (&file.path, kind)
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, String> {
        match &self[index].kind {
            TreeKind::File(content) => Ok(content.clone()),
            TreeKind::Symlink(_) => Err(format!("{} is a symlink", self[index].path)),
        }
    }
}

/// Why a deployment or a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error("pages storage: {0}")]
    Store(#[from] StoreError),
    /// A stored manifest is not one gitcache wrote.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A host or project name that cannot name a site.
    #[error("not a site name: {0:?}")]
    Name(String),
    /// A path of the tree that cannot be served (`..`, empty segments, control characters),
    /// or given twice.
    #[error("not a tree path: {0:?}")]
    Path(String),
    /// Over a limit (the client's `413`).
    #[error("{what}: {got} is more than the {limit} allowed")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// How much there was.
        got: u64,
        /// The limit.
        limit: u64,
    },
    /// The tree could not be read (or a file read again was not what it was when hashed).
    #[error("reading the tree to deploy: {0}")]
    Tree(String),
    /// Writing a blob would take the store's disk below the free space kept.
    #[error("the disk has {free} bytes free, {floor} are kept free, and the upload needs {needs}")]
    LowDisk {
        /// Bytes free.
        free: u64,
        /// Bytes kept free.
        floor: u64,
        /// The room the upload asked for: the file, or the uploads held at once.
        needs: u64,
    },
    /// The site's manifest kept changing under this deployment.
    #[error("the site kept changing during the deployment")]
    Contended,
    /// Another deployment committed the site while this one ran, and this one's commit is no
    /// longer its branch's tip: nothing was committed (an older tip would roll the site
    /// back).
    #[error("the site was deployed meanwhile, and this commit is no longer its branch's tip")]
    Superseded,
    /// Another deployment committed the site while this one ran, and the branch's tip could
    /// not be asked again to tell which is newer: nothing was committed.
    #[error("the site was deployed meanwhile, and the branch's tip could not be asked: {0}")]
    TipUnknown(String),
    /// The site's `_redirects` or `_headers` file does not parse.
    #[error(transparent)]
    Rules(#[from] RuleError),
}

/// A deployed site as read.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// The manifest.
    pub manifest: SiteManifest,
    /// Its `_redirects` and `_headers` rules.
    pub rules: Rules,
}

/// A site's manifest is used for this long after it was read or checked; then its version
/// is asked of the store again (a `HEAD` in a bucket) before it is used.
pub const MANIFEST_FRESH: Duration = Duration::from_secs(1);
/// What [`Pages::new`] keeps in memory of manifests and blobs.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// A site as last read: `None` when none was deployed.
#[derive(Debug, Clone)]
struct Held {
    site: Option<Arc<Site>>,
    version: Option<Version>,
    checked: Instant,
}

/// A blob's hash, and the encoding of a compressed copy of it.
type BlobKey = ([u8; 32], Option<Encoding>);

/// Manifests and blobs kept between requests.
#[derive(Debug)]
struct Memory {
    sites: Mutex<Lru<ObjectKey, Held>>,
    /// Sites found not deployed, apart: a flood of names that are no site cannot push the
    /// deployed ones out.
    absent: Mutex<Lru<ObjectKey, Held>>,
    /// Blobs, and their compressed copies, by hash and encoding.
    blobs: Mutex<Lru<BlobKey, Bytes>>,
    /// The largest blob kept.
    blob_max: usize,
    /// The most a site held may take (all of its share: a site that could not be held would
    /// be read and decoded again for every request).
    site_max: usize,
    /// Compressions run at once (on half the cores); a file that finds none free goes out as
    /// it is. A slot is held by the compression's own thread, which a client that leaves does
    /// not stop.
    compressing: Arc<tokio::sync::Semaphore>,
}

/// Hits and misses of the in-memory cache, by `kind` (`manifest`, `blob`, `compressed`) and
/// `result` (`hit`, `miss`).
pub const CACHE: &str = "gitcache_pages_cache_total";

fn count(kind: &'static str, hit: bool) {
    metrics::counter!(CACHE, "kind" => kind, "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The commit now deployed.
    pub commit: String,
    /// The same commit from the same source was deployed already: nothing was written.
    pub unchanged: bool,
    /// Files in the site.
    pub files: usize,
    /// Bytes of its files.
    pub bytes: u64,
    /// Blobs uploaded (those the store lacked).
    pub uploaded: usize,
}

/// Sites in an object store.
#[derive(Debug, Clone)]
pub struct Pages<S> {
    store: S,
    memory: Arc<Memory>,
    /// Blobs a sweep found unnamed, and when first: deleted only once still unnamed a grace
    /// period later (see [`Pages::collect`]).
    unnamed:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<ObjectKey, std::time::Instant>>>,
    /// The most projects under one host.
    max_projects: usize,
    /// Bytes a blob's write must leave free on a store's local disk (`0`: no floor).
    min_free: u64,
    sweep_times: SweepTimes,
}

/// What a garbage sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs deleted.
    pub blobs: usize,
    /// Staged manifests of deployments that never finished, deleted.
    pub staged: usize,
    /// What writes a crash cut short left in the store (its files written beside their
    /// place, on disk), older than the grace period, removed.
    pub stale_writes: usize,
}

/// When a sweep's marker was last written, as the sweep knows it.
#[derive(Debug)]
struct Beat {
    /// When the last write returned.
    last: Instant,
    /// Two writes returned further apart than [`SweepTimes::beat_gap`].
    broken: bool,
    /// [`SweepTimes::beat_trusted`].
    trusted: Duration,
}

impl Beat {
    /// Whether a delete may start now.
    fn alive(&self) -> bool {
        !self.broken && self.last.elapsed() < self.trusted
    }
}

/// A name for a sweep's marker that no other sweep draws.
fn sweep_id() -> String {
    use std::hash::BuildHasher as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let state = std::hash::RandomState::new();
    format!(
        "{:016x}{:016x}",
        state.hash_one((nanos, std::process::id())),
        state.hash_one(nanos ^ 0x5eed)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `host` can name a site: a DNS name of letters, digits, `-` and `.`, lower case.
pub(crate) fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether `project` can name a site under a host: `.index`, or one path segment.
pub(crate) fn valid_project(project: &str) -> bool {
    project == ".index" || (valid_path(project) && !project.contains('/') && project.len() <= 255)
}

impl<S: ObjectStore> Pages<S> {
    /// Sites in `store`, with [`DEFAULT_CACHE_BYTES`] of them kept in memory.
    pub fn new(store: S) -> Self {
        Self::with_cache(store, DEFAULT_CACHE_BYTES)
    }

    /// Sites in `store`, at most `cache_bytes` of manifests and blobs kept in memory (split
    /// between the two; a blob larger than a sixteenth of its share is always read).
    pub fn with_cache(store: S, cache_bytes: usize) -> Self {
        Pages {
            store,
            memory: Arc::new(Memory {
                sites: Mutex::new(Lru::new(cache_bytes / 4)),
                absent: Mutex::new(Lru::new((cache_bytes / 64).max(1 << 16))),
                // Half the cores at most: a client asking again and again for large files
                // whose compressed copies are not kept leaves the rest to the git proxy
                // beside.
                compressing: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
                )),
                blobs: Mutex::new(Lru::new(cache_bytes - cache_bytes / 4)),
                blob_max: (cache_bytes - cache_bytes / 4) / 16,
                site_max: cache_bytes / 4,
            }),
            unnamed: Default::default(),
            max_projects: MAX_PROJECTS,
            min_free: 0,
            sweep_times: SweepTimes::default(),
        }
    }

    /// At most `max` projects under one host (the root tree counted); a deployment of one
    /// more is refused ([`Error::TooLarge`]).
    pub fn with_max_projects(mut self, max: usize) -> Self {
        self.max_projects = max;
        self
    }

    /// Keep `bytes` free on the store's local disk, if it writes to one (the filesystem
    /// store): a deployment whose next blob would take the disk below fails with
    /// [`Error::LowDisk`] before it writes it (`0`, the default: no floor).
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Sweeps and deployments keep `times` instead of the defaults, each taken between a
    /// millisecond (none spins) and a day (no deadline overflows).
    pub fn with_sweep_times(mut self, times: SweepTimes) -> Self {
        let within = |d: Duration| d.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self.sweep_times = SweepTimes {
            deletes_within: within(times.deletes_within),
            beat: within(times.beat),
            beat_trusted: within(times.beat_trusted),
            beat_gap: within(times.beat_gap),
            silent: within(times.silent),
            poll: within(times.poll),
        };
        self
    }

    /// The store the sites are kept in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Sweep the store: delete the blobs no site and no staged deployment names, once they
    /// have been found unnamed by sweeps at least `grace` apart, and the staged manifests
    /// older than `grace` (deployments that never finished). Blobs a deployment relies on are
    /// named by its staged manifest before it looks for them, and by its site afterwards;
    /// a sweep marks itself under way (`pages/sweeping/`) before it reads the manifests it
    /// deletes by and keeps that marker alive while it deletes, and a deployment checks its
    /// blobs once every marker is gone or silent (see `after_sweeps`). Deployments shorter
    /// than `grace` lose nothing to a sweep, however they interleave, as long as the store
    /// answers within its bounds and the sweeping process is not stopped, between its check
    /// of its marker and a delete, for longer than the deployments wait.
    pub async fn collect(&self, grace: std::time::Duration) -> Result<Collected, Error> {
        // Leftovers of writes a crash cut short: a failure here leaves them for the next
        // sweep, and this one goes on.
        let stale_writes = match (self.store)
            .remove_stale_writes(&ObjectKey::new("pages")?, grace)
            .await
        {
            Ok(removed) => removed,
            Err(err) => {
                tracing::warn!(%err, "pages: removing what cut-short writes left failed");
                0
            }
        };
        if let Err(err) = self.remove_dead_markers().await {
            tracing::warn!(%err, "pages: the markers of sweeps that died could not be deleted");
        }
        let mut done = Collected {
            stale_writes,
            ..Collected::default()
        };
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        let named = self.named_blobs(Some((cutoff, &mut done))).await?;
        let now = std::time::Instant::now();
        let blobs = self.store.list(&ObjectKey::new("pages/blob")?).await?;
        let mut doomed = Vec::new();
        {
            let mut unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
            let listed: std::collections::HashSet<&ObjectKey> =
                blobs.iter().map(|b| &b.key).collect();
            unnamed.retain(|key, _| listed.contains(key));
            for blob in &blobs {
                let hash = blob.key.as_str().rsplit('/').next().and_then(parse_hex);
                if hash.is_some_and(|h| named.contains(&h)) {
                    unnamed.remove(&blob.key);
                    continue;
                }
                let since = *unnamed.entry(blob.key.clone()).or_insert(now);
                if now.duration_since(since) >= grace && blob.modified < cutoff {
                    doomed.push((blob.key.clone(), hash));
                }
            }
        }
        if doomed.is_empty() {
            return Ok(done);
        }
        // Announced before the manifests are read again, and kept alive while the deletes go
        // on: a deployment staged after that read finds the marker once it has committed, and
        // checks its blobs only once the marker is gone or has stopped changing (see
        // `after_sweeps`), so one it found in the store and did not write is written again
        // if it went here.
        let marker = ObjectKey::new(&format!("pages/sweeping/{}", sweep_id()))?;
        let version = match self
            .store
            .replace_manifest(&marker, b"sweeping 0\n", None)
            .await?
        {
            Replaced::Done(version) => version,
            Replaced::Conflict => return Err(Error::Contended),
        };
        let beat = Mutex::new(Beat {
            last: Instant::now(),
            broken: false,
            trusted: self.sweep_times.beat_trusted,
        });
        let over = tokio::sync::Notify::new();
        let deleting = async {
            let deleted = self.delete_unnamed(doomed, &beat).await;
            over.notify_one();
            deleted
        };
        let (deleted, ()) = tokio::join!(deleting, self.beat(&marker, version, &beat, &over));
        if let Err(err) = self.store.delete(&marker).await {
            // Deployments take it for a dead sweep's once it stops changing.
            tracing::warn!(%err, "pages: a sweep's marker could not be deleted");
        }
        done.blobs = deleted?;
        Ok(done)
    }

    /// Write `marker` again every [`SweepTimes::beat`], from `version`, noting in `beat` when each
    /// write returned, until `over`.
    async fn beat(
        &self,
        marker: &ObjectKey,
        mut version: Version,
        beat: &Mutex<Beat>,
        over: &tokio::sync::Notify,
    ) {
        for n in 1u64.. {
            tokio::select! {
                () = over.notified() => return,
                () = tokio::time::sleep(self.sweep_times.beat) => {}
            }
            // Not cut short: a write left running (the filesystem's, on its own thread) could
            // land after the sweep deleted the marker, and bring it back.
            let content = format!("sweeping {n}\n");
            let written = (self.store)
                .replace_manifest(marker, content.as_bytes(), Some(&version))
                .await;
            match written {
                Ok(Replaced::Done(next)) => {
                    version = next;
                    let mut beat = beat.lock().unwrap_or_else(|p| p.into_inner());
                    if beat.last.elapsed() > self.sweep_times.beat_gap {
                        beat.broken = true;
                    }
                    beat.last = Instant::now();
                }
                // Gone or changed under it: deployments may no longer see it.
                Ok(Replaced::Conflict) => {
                    beat.lock().unwrap_or_else(|p| p.into_inner()).broken = true;
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "pages: a sweep's marker could not be written");
                    let mut beat = beat.lock().unwrap_or_else(|p| p.into_inner());
                    if beat.last.elapsed() > self.sweep_times.beat_gap {
                        beat.broken = true;
                    }
                }
            }
        }
    }

    /// Delete the `doomed` blobs no manifest names when read again now, starting each only
    /// while `beat` says the sweep's marker is alive, and none later than
    /// [`SweepTimes::deletes_within`]: how many went. Every delete started is waited for, an
    /// error's too.
    async fn delete_unnamed(
        &self,
        doomed: Vec<(ObjectKey, Option<[u8; 32]>)>,
        beat: &Mutex<Beat>,
    ) -> Result<usize, Error> {
        use futures_util::StreamExt as _;
        // Named again just before they go: a deployment that staged, found one of them in
        // the store (so did not write it), committed and dropped its staged manifest while
        // this sweep read the others would otherwise lose it for good.
        // From before the read: a deployment staged after the read began waits from later
        // still, for this long and its silence after.
        let deadline = Instant::now() + self.sweep_times.deletes_within;
        let named = self.named_blobs(None).await?;
        let unnamed: Vec<ObjectKey> = doomed
            .into_iter()
            .filter(|(_, hash)| !hash.is_some_and(|h| named.contains(&h)))
            .map(|(key, _)| key)
            .collect();
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut keys = unnamed.iter();
        let (mut started_deletes, mut deleted, mut first_error) = (0, 0, None);
        loop {
            // Checked as each is about to start: none starts past the deadline or after one
            // failed; those under way are waited for.
            while pending.len() < CONCURRENT_UPLOADS
                && first_error.is_none()
                && Instant::now() < deadline
                && beat.lock().unwrap_or_else(|p| p.into_inner()).alive()
                && let Some(key) = keys.next()
            {
                started_deletes += 1;
                pending.push(async move { self.store.delete(key).await.map(|()| key) });
            }
            match pending.next().await {
                Some(Ok(key)) => {
                    self.unnamed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(key);
                    deleted += 1;
                }
                Some(Err(err)) => {
                    first_error.get_or_insert(err);
                }
                // None under way: done, or waiting for the marker's next write (a slow one
                // holds the deletes back; after a gap, there are none).
                None => {
                    let broken = beat.lock().unwrap_or_else(|p| p.into_inner()).broken;
                    let more = !keys.as_slice().is_empty()
                        && first_error.is_none()
                        && Instant::now() < deadline;
                    if broken || !more {
                        break;
                    }
                    tokio::time::sleep((self.sweep_times.beat / 10).max(Duration::from_millis(1)))
                        .await;
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err.into());
        }
        let left = unnamed.len() - started_deletes;
        if left > 0 {
            tracing::warn!(
                deleted,
                left,
                "pages: a sweep's time to delete ran out, or its marker could not be kept alive; the rest go with the next sweep"
            );
        }
        Ok(deleted)
    }

    /// Delete the markers sweeps that died left (see [`SWEEP_MARKER_STALE`]).
    async fn remove_dead_markers(&self) -> Result<(), Error> {
        let stale = std::time::SystemTime::now()
            .checked_sub(SWEEP_MARKER_STALE)
            .unwrap_or(std::time::UNIX_EPOCH);
        for marker in self.store.list(&ObjectKey::new("pages/sweeping")?).await? {
            if marker.modified < stale {
                self.store.delete(&marker.key).await?;
            }
        }
        Ok(())
    }

    /// The markers of the sweeps under way now (`None`: they could not be listed): once a
    /// deployment has staged its manifest, those are the only sweeps it waits for, since any
    /// later sweep reads that manifest before it deletes.
    async fn sweeps_now(&self) -> Option<std::collections::HashSet<ObjectKey>> {
        let listed = self
            .store
            .list(&ObjectKey::new("pages/sweeping").ok()?)
            .await;
        match listed {
            Ok(markers) => Some(markers.into_iter().map(|m| m.key).collect()),
            Err(err) => {
                tracing::warn!(%err, "pages: sweeps under way could not be listed");
                None
            }
        }
    }

    /// Wait until none of the sweeps `under_way` (every one when `None`) could still delete:
    /// each marker is gone, or has not changed for [`SweepTimes::silent`] (its sweep died, or
    /// stopped deleting), or was last written well before `staged` (this deployment's staged
    /// manifest, by the store's clock). At most [`SweepTimes::deletes_within`] and `silent`;
    /// markers that cannot be listed are taken to be there.
    async fn after_sweeps(
        &self,
        staged: &ObjectKey,
        under_way: Option<std::collections::HashSet<ObjectKey>>,
    ) {
        if under_way.as_ref().is_some_and(|markers| markers.is_empty()) {
            return;
        }
        let times = self.sweep_times;
        let give_up = Instant::now() + times.deletes_within + times.silent;
        let (Ok(sweeping), Ok(all_staged)) = (
            ObjectKey::new("pages/sweeping"),
            ObjectKey::new("pages/staged"),
        ) else {
            return;
        };
        // Each marker's last write as seen, and since when here.
        let mut seen: std::collections::HashMap<ObjectKey, (std::time::SystemTime, Instant)> =
            Default::default();
        let mut staged_at = None;
        loop {
            if Instant::now() >= give_up {
                tracing::warn!("pages: gave up waiting for a sweep under way");
                return;
            }
            let markers = match self.store.list(&sweeping).await {
                Ok(markers) => markers,
                Err(err) => {
                    tracing::warn!(%err, "pages: sweeps under way could not be listed");
                    tokio::time::sleep(times.poll).await;
                    continue;
                }
            };
            let markers: Vec<_> = markers
                .into_iter()
                .filter(|m| under_way.as_ref().is_none_or(|set| set.contains(&m.key)))
                .collect();
            if markers.is_empty() {
                return;
            }
            if staged_at.is_none() {
                staged_at = match self.store.list(&all_staged).await {
                    Ok(listed) => listed
                        .into_iter()
                        .find(|l| &l.key == staged)
                        .map(|l| l.modified),
                    Err(_) => None,
                }
                .or(Some(std::time::UNIX_EPOCH));
            }
            let now = Instant::now();
            let mut live = false;
            for marker in &markers {
                // Twice the silence, by the store's clock: a clock that steps forward is not
                // taken for one.
                if staged_at.is_some_and(|at| marker.modified + 2 * times.silent < at) {
                    continue;
                }
                let since = seen
                    .entry(marker.key.clone())
                    .and_modify(|(modified, since)| {
                        if *modified != marker.modified {
                            (*modified, *since) = (marker.modified, now);
                        }
                    })
                    .or_insert((marker.modified, now))
                    .1;
                live |= now.duration_since(since) < times.silent;
            }
            if !live {
                return;
            }
            tokio::time::sleep(times.poll).await;
        }
    }

    /// The blobs the sites and the staged deployments name. With a cutoff, staged manifests
    /// older than it (deployments that never finished) are deleted instead, and counted.
    async fn named_blobs(
        &self,
        mut stale: Option<(std::time::SystemTime, &mut Collected)>,
    ) -> Result<std::collections::HashSet<[u8; 32]>, Error> {
        let mut named = std::collections::HashSet::new();
        let mut name_all = |manifest: &SiteManifest| {
            for entry in manifest.entries.values() {
                if let Entry::File(Content::Blob { hash, .. }) = entry {
                    named.insert(*hash);
                }
            }
        };
        // The staged manifests are all read before the sites are listed: a deployment that
        // dropped its staged manifest before it was read had committed its site by then.
        let (mut staged, mut old) = (Vec::new(), Vec::new());
        for listed in self.store.list(&ObjectKey::new("pages/staged")?).await? {
            match &stale {
                Some((cutoff, _)) if listed.modified < *cutoff => old.push(listed.key),
                _ => staged.push(listed.key),
            }
        }
        self.read_manifests(&staged, |read| {
            if let Ok(manifest) = SiteManifest::decode(read) {
                name_all(&manifest);
            }
            Ok(())
        })
        .await?;
        let sites: Vec<ObjectKey> = (self.store.list(&ObjectKey::new("pages/site")?).await?)
            .into_iter()
            .map(|listed| listed.key)
            .collect();
        let mut deployed = std::collections::HashSet::new();
        self.read_manifests(&sites, |read| {
            name_all(&SiteManifest::decode(read)?);
            deployed.insert(Self::staged_key(read)?);
            Ok(())
        })
        .await?;
        if let Some((_, done)) = &mut stale {
            for key in old {
                // The staged manifest of a site that is deployed: its deployment committed
                // but did not see its blobs through, and the next deployment of its commit
                // does (see `unfinished`). Kept until then.
                if deployed.contains(&key) {
                    tracing::warn!(staged = %key, "pages: a site's deployment did not finish its check after its commit; deploy its commit again");
                    continue;
                }
                self.store.delete(&key).await?;
                done.staged += 1;
            }
        }
        Ok(named)
    }

    /// Hand each manifest `keys` name that is there to `each`, as it is read:
    /// [`MANIFESTS_AT_ONCE`] read at a time.
    async fn read_manifests(
        &self,
        keys: &[ObjectKey],
        mut each: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        use futures_util::StreamExt as _;
        let mut reads = futures_util::stream::FuturesUnordered::new();
        let mut keys = keys.iter();
        loop {
            while reads.len() < MANIFESTS_AT_ONCE
                && let Some(key) = keys.next()
            {
                reads.push(self.store.read_manifest(key));
            }
            match reads.next().await {
                Some(read) => {
                    if let Some(manifest) = read? {
                        each(&manifest.bytes)?;
                    }
                }
                None => return Ok(()),
            }
        }
    }

    fn site_key(host: &str, project: &str) -> Result<ObjectKey, Error> {
        // A name the filesystem store takes for a write in progress is not listed: a sweep
        // would not see what that site names.
        let temporary = gitcache_storage::fs::is_leftover_temp;
        if !valid_host(host) || temporary(host) {
            return Err(Error::Name(host.to_owned()));
        }
        if !valid_project(project) || temporary(project) {
            return Err(Error::Name(project.to_owned()));
        }
        Ok(ObjectKey::new(&format!("pages/site/{host}/{project}"))?)
    }

    /// Where a deployment stages the manifest `encoded`.
    fn staged_key(encoded: &[u8]) -> Result<ObjectKey, Error> {
        Ok(ObjectKey::new(&format!(
            "pages/staged/{}",
            hex(&sha2::Sha256::digest(encoded))
        ))?)
    }

    /// Whether the site `project` of `host` was committed by a deployment that did not see
    /// its blobs through (its staged manifest is still there): deploying its commit again
    /// does. `false` when no site is deployed.
    pub async fn unfinished(&self, host: &str, project: &str) -> Result<bool, Error> {
        let Some(current) = self
            .store
            .read_manifest(&Self::site_key(host, project)?)
            .await?
        else {
            return Ok(false);
        };
        Ok(self
            .store
            .size(&Self::staged_key(&current.bytes)?)
            .await?
            .is_some())
    }

    fn blob_key(hash: &[u8; 32]) -> Result<ObjectKey, Error> {
        Ok(ObjectKey::new(&format!("pages/blob/{}", hex(hash)))?)
    }

    /// Deploy `tree` (from `commit` of `source`) as the site `project` of `host`: checked
    /// against the limits, staged, its blobs uploaded, then made the site at once. The same
    /// commit from the same source deployed again is a no-op.
    pub async fn deploy(
        &self,
        host: &str,
        project: &str,
        commit: &str,
        source: &str,
        tree: impl TreeSource,
    ) -> Result<Deployed, Error> {
        let since = self.site_version(host, project).await?;
        self.deploy_unless_superseded(host, project, commit, source, tree, since, || {
            Box::pin(async { Ok(true) })
        })
        .await
    }

    /// The version of the site `project` of `host` in the store now (`None`: none is
    /// deployed): what [`Pages::deploy_unless_superseded`] takes, read before the tree is.
    pub async fn site_version(&self, host: &str, project: &str) -> Result<Option<Version>, Error> {
        Ok(self
            .store
            .manifest_version(&Self::site_key(host, project)?)
            .await?)
    }

    /// [`Pages::deploy`] of a tree that was its branch's tip when it was read, the site then
    /// at version `since` ([`Pages::site_version`], read before the tree): it commits only
    /// while `still_tip` says its commit is still the branch's tip (asked before each try,
    /// after the version it replaces was read), and only over that version or one read
    /// after another deployment committed meanwhile. Otherwise it ends with
    /// [`Error::Superseded`] (or [`Error::TipUnknown`] when the tip could not be asked). Two
    /// pushes in quick succession make two deployments; the one of the older tip must not
    /// commit last, however long its fetch took, nor one of a tip the branch was pushed back
    /// from.
    #[allow(clippy::too_many_arguments)]
    pub async fn deploy_unless_superseded(
        &self,
        host: &str,
        project: &str,
        commit: &str,
        source: &str,
        tree: impl TreeSource,
        since: Option<Version>,
        mut still_tip: impl FnMut() -> futures_util::future::BoxFuture<'static, Result<bool, String>>
        + Send,
    ) -> Result<Deployed, Error> {
        let site_key = Self::site_key(host, project)?;
        let tree: Arc<dyn TreeSource> = Arc::new(tree);
        let (manifest, blobs, rules) = {
            let (tree, commit, source) = (Arc::clone(&tree), commit.to_owned(), source.to_owned());
            tokio::task::spawn_blocking(move || build(&commit, &source, &*tree))
                .await
                .map_err(|err| Error::Tree(err.to_string()))??
        };
        // A site that memory could not hold would be read from the store and decoded again
        // for every request it answers.
        let held = Self::site_cost(&manifest, &rules) + 2 * site_key.as_str().len();
        if held > self.memory.site_max {
            return Err(Error::TooLarge {
                what: "the site as held in memory (a quarter of the pages cache)",
                got: held as u64,
                limit: self.memory.site_max as u64,
            });
        }
        let current = self.store.read_manifest(&site_key).await?;
        if let Some(current) = &current
            && let Ok(deployed) = SiteManifest::decode(&current.bytes)
            && deployed.commit == manifest.commit
            && deployed.source == manifest.source
        {
            // A deployment of this tree that committed but did not see its blobs through
            // (its staged manifest is still there): seen through now.
            let staged = Self::staged_key(&current.bytes)?;
            if self.store.size(&staged).await?.is_some() && current.bytes == manifest.encode() {
                // Staged long before: any sweep that started since has read it.
                let under_way = self.sweeps_now().await;
                self.after_sweeps(&staged, under_way).await;
                self.store_blobs(&blobs, &tree, false).await?;
                if let Err(err) = self.store.delete(&staged).await {
                    tracing::warn!(%err, "a staged manifest could not be deleted");
                }
            }
            return Ok(Deployed {
                files: deployed.files(),
                bytes: deployed.size(),
                commit: deployed.commit,
                unchanged: true,
                uploaded: 0,
            });
        }
        if current.is_none() {
            let host_key = ObjectKey::new(&format!("pages/site/{host}"))?;
            let projects = self.store.list(&host_key).await?.len();
            if projects >= self.max_projects {
                return Err(Error::TooLarge {
                    what: "projects under the host",
                    got: projects as u64 + 1,
                    limit: self.max_projects as u64,
                });
            }
        }
        let encoded = manifest.encode();
        // What is committed must read back: never a site that answers nothing.
        if encoded.len() as u64 > gitcache_storage::store::MAX_MANIFEST
            || manifest.entries.len() > crate::manifest::MAX_ENTRIES
        {
            return Err(Error::TooLarge {
                what: "the site's manifest",
                got: encoded.len() as u64,
                limit: gitcache_storage::store::MAX_MANIFEST,
            });
        }
        SiteManifest::decode(&encoded)?;
        let staged = Self::staged_key(&encoded)?;
        // Created, or there already (the same deployment under way): either way staged.
        let created = self.store.replace_manifest(&staged, &encoded, None).await?;
        // The sweeps that may not have read it (those later do, before they delete). One
        // found there already may be one a sweep listed as old and deletes: then every sweep
        // is waited for.
        let under_way = match created {
            Replaced::Done(_) => self.sweeps_now().await,
            Replaced::Conflict => None,
        };
        let uploaded = self.store_blobs(&blobs, &tree, true).await?;
        // From the version before the tree was read: a deployment committed during the fetch
        // is a conflict as much as one committed during the upload.
        let mut expected = since;
        let mut committed = false;
        for _ in 0..4 {
            // Asked before each commit, after the version it commits over was read: the
            // branch may have moved on since its tree was read (or back, to what another
            // deploy found deployed and so left as it was).
            let tip = still_tip().await;
            if tip != Ok(true) {
                let _ = self.store.delete(&staged).await;
                return Err(tip.map_or_else(Error::TipUnknown, |_| Error::Superseded));
            }
            match self
                .store
                .replace_manifest(&site_key, &encoded, expected.as_ref())
                .await?
            {
                Replaced::Done(_) => {
                    committed = true;
                    break;
                }
                // Another deployment committed meanwhile: this one goes over it only while
                // its commit is still the tip (asked again, next round).
                Replaced::Conflict => {
                    expected = self.store.manifest_version(&site_key).await?;
                }
            }
        }
        if !committed {
            let _ = self.store.delete(&staged).await;
            return Err(Error::Contended);
        }
        // A blob found in the store before the commit may have been swept meanwhile (it was
        // unnamed then): each is there now, or written again, while the staged manifest still
        // names it. A sweep that read the manifests before this one was staged may still be
        // deleting: its marker was there before this deployment staged, and is until its
        // deletes are over.
        // Past the commit the site is live: what it names is written back whatever the disk
        // floor, and should this fail, the staged manifest stays, so that the next deployment
        // of this commit sees it through (and the sweeps keep its blobs meanwhile).
        self.after_sweeps(&staged, under_way).await;
        self.store_blobs(&blobs, &tree, false).await?;
        for memory in [&self.memory.sites, &self.memory.absent] {
            memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&site_key);
        }
        if let Err(err) = self.store.delete(&staged).await {
            // The site is live; the staged manifest goes with the next sweep.
            tracing::warn!(%err, "a staged manifest could not be deleted");
        }
        Ok(Deployed {
            commit: manifest.commit.clone(),
            unchanged: false,
            files: manifest.files(),
            bytes: manifest.size(),
            uploaded,
        })
    }

    /// Write each of `blobs` the store lacks, read again from `tree`: [`CONCURRENT_UPLOADS`]
    /// at a time, holding at most 64 MiB of them (or one larger file) at once, and each held
    /// to the disk floor when `floor`. How many were written.
    async fn store_blobs(
        &self,
        blobs: &Blobs,
        tree: &Arc<dyn TreeSource>,
        floor: bool,
    ) -> Result<usize, Error> {
        use futures_util::StreamExt as _;
        let held = tokio::sync::Semaphore::new(UPLOAD_KIB as usize);
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let mut items = blobs.iter();
        let mut written = 0;
        loop {
            while pending.len() < CONCURRENT_UPLOADS
                && let Some((hash, &(index, size))) = items.next()
            {
                pending.push(self.store_blob(hash, index, size, tree, &held, floor));
            }
            match pending.next().await {
                Some(stored) => written += usize::from(stored?),
                None => return Ok(written),
            }
        }
    }

    /// Write the blob `hash` of `size` bytes, the file `index` of `tree`, unless the store
    /// has it: whether it was written. Its bytes are read into `held` (KiB of them); with
    /// `floor`, the store's disk must have room for it and the others held above the floor.
    async fn store_blob(
        &self,
        hash: &[u8; 32],
        index: usize,
        size: u64,
        tree: &Arc<dyn TreeSource>,
        held: &tokio::sync::Semaphore,
        floor: bool,
    ) -> Result<bool, Error> {
        let key = Self::blob_key(hash)?;
        if self.store.size(&key).await?.is_some() {
            return Ok(false);
        }
        let kib = size.div_ceil(1024).clamp(1, UPLOAD_KIB) as u32;
        let _held = held
            .acquire_many(kib)
            .await
            .map_err(|err| Error::Tree(err.to_string()))?;
        // Room for this one and the others held with it (they take the rest of the budget at
        // most), asked once its turn has come.
        let needs = size.max(UPLOAD_KIB << 10);
        if floor
            && self.min_free > 0
            && let Some(free) = self.store.free_bytes()
            && free < self.min_free.saturating_add(needs)
        {
            return Err(Error::LowDisk {
                free,
                floor: self.min_free,
                needs,
            });
        }
        let (tree, expected) = (Arc::clone(tree), *hash);
        let content = tokio::task::spawn_blocking(move || {
            let content = tree.read(index)?;
            // Named by what was hashed: a file that read otherwise now is not written under it.
            if <[u8; 32]>::from(sha2::Sha256::digest(&content)) != expected {
                return Err(format!(
                    "{}: changed since it was hashed",
                    tree.item(index).0
                ));
            }
            Ok(content)
        })
        .await
        .map_err(|err| Error::Tree(err.to_string()))?
        .map_err(Error::Tree)?;
        // Create-only: a blob is its content, so one written meanwhile is this one.
        self.store.replace_manifest(&key, &content, None).await?;
        Ok(true)
    }

    /// The site `project` of `host`, if one is deployed: from memory when it was read or
    /// checked within [`MANIFEST_FRESH`], or its version is still the one read.
    pub async fn site(&self, host: &str, project: &str) -> Result<Option<Arc<Site>>, Error> {
        let key = Self::site_key(host, project)?;
        let held = self
            .memory
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .or_else(|| {
                self.memory
                    .absent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
            });
        if let Some(held) = held {
            if held.checked.elapsed() < MANIFEST_FRESH {
                count("manifest", true);
                return Ok(held.site);
            }
            let version = self.store.manifest_version(&key).await?;
            if version == held.version {
                count("manifest", true);
                let renewed = Held {
                    checked: Instant::now(),
                    ..held.clone()
                };
                self.hold(key, renewed);
                return Ok(held.site);
            }
        }
        count("manifest", false);
        let checked = Instant::now();
        let (site, version) = match self.store.read_manifest(&key).await? {
            Some(read) => {
                let manifest = SiteManifest::decode(&read.bytes)?;
                let rules = self.rules_of(&manifest).await?;
                (Some(Arc::new(Site { manifest, rules })), Some(read.version))
            }
            None => (None, None),
        };
        let held = Held {
            site: site.clone(),
            version,
            checked,
        };
        self.hold(key, held);
        Ok(site)
    }

    /// Keep `held` in memory as `key`: a deployed site with the others, an absent one apart.
    fn hold(&self, key: ObjectKey, held: Held) {
        // The key is held twice: by the entry and in the order of use.
        let cost = Self::cost(&held) + 2 * key.as_str().len();
        let (into, out) = if held.site.is_some() {
            (&self.memory.sites, &self.memory.absent)
        } else {
            (&self.memory.absent, &self.memory.sites)
        };
        out.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        into.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, held, cost);
    }

    /// About the memory a held site takes.
    fn cost(held: &Held) -> usize {
        held.site
            .as_ref()
            .map_or(256, |site| Self::site_cost(&site.manifest, &site.rules))
    }

    /// About the memory a site with `manifest` and `rules` takes when held.
    fn site_cost(manifest: &SiteManifest, rules: &Rules) -> usize {
        let entries: usize = (manifest.entries.iter())
            .map(|(path, entry)| {
                path.len()
                    + 64
                    + match entry {
                        Entry::File(Content::Inline(bytes)) => bytes.len(),
                        Entry::Symlink(target) => target.len(),
                        _ => 0,
                    }
            })
            .sum();
        256 + entries + rules.cost()
    }

    /// The rules of a deployed site. Deployments check them, so rules that do not parse
    /// (written by another version of gitcache) are left out, with a warning.
    async fn rules_of(&self, manifest: &SiteManifest) -> Result<Rules, Error> {
        let mut texts = [None, None];
        for (text, name) in texts.iter_mut().zip([REDIRECTS_FILE, HEADERS_FILE]) {
            let bytes = match manifest.entries.get(name) {
                Some(Entry::File(Content::Inline(bytes))) => Bytes::from(bytes.clone()),
                Some(Entry::File(Content::Blob { hash, size })) if *size <= MAX_RULES_BYTES => {
                    // Never a site served without its rules (its headers may be its
                    // security): one whose rules cannot be read cannot be read.
                    self.blob(hash)
                        .await?
                        .ok_or_else(|| Invalid(format!("the blob of {name} is missing")))?
                }
                _ => continue,
            };
            *text = Some(String::from_utf8_lossy(&bytes).into_owned());
        }
        match Rules::parse_deployed(texts[0].as_deref(), texts[1].as_deref()) {
            Ok(rules) => Ok(rules),
            Err(err) => {
                tracing::warn!(%err, commit = manifest.commit, "a deployed site's rules do not parse");
                Ok(Rules::default())
            }
        }
    }

    /// The content of the blob `hash`, if the store has it (at most [`MAX_FILE_BYTES`]), from
    /// memory when it is there.
    pub async fn blob(&self, hash: &[u8; 32]) -> Result<Option<Bytes>, Error> {
        let held = self
            .memory
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(*hash, None));
        if let Some(bytes) = held {
            count("blob", true);
            return Ok(Some(bytes));
        }
        count("blob", false);
        let key = Self::blob_key(hash)?;
        let Some(bytes) = self.store.get_bytes(&key, MAX_FILE_BYTES).await? else {
            return Ok(None);
        };
        let bytes = Bytes::from(bytes);
        if bytes.len() <= self.memory.blob_max {
            self.memory
                .blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((*hash, None), bytes.clone(), bytes.len());
        }
        Ok(Some(bytes))
    }

    /// Whether a blob of `size` bytes is read whole to be sent (and kept in memory): one no
    /// larger than the largest the memory keeps. Larger ones are read in pieces as they are
    /// sent ([`Pages::blob_pieces`]), so that many requests for large files take no more
    /// memory than their connections' buffers.
    pub fn reads_whole(&self, size: u64) -> bool {
        size <= self.memory.blob_max as u64
    }

    /// The bytes `range` of the blob `hash`, read from the store in pieces as they are taken,
    /// if the store has it. Never kept in memory.
    pub async fn blob_pieces(
        &self,
        hash: &[u8; 32],
        range: std::ops::Range<u64>,
    ) -> Result<Option<gitcache_storage::store::ByteStream>, Error> {
        count("blob", false);
        let key = Self::blob_key(hash)?;
        Ok(self.store.read_range(&key, range).await?)
    }

    /// `content` (whose SHA-256 is `hash`) compressed with `encoding`: from memory when it was
    /// compressed before, else compressed on a blocking thread and kept. `None` (send it as it
    /// is) when every compression that may run at once runs already, or that thread failed.
    pub async fn compressed(
        &self,
        hash: &[u8; 32],
        content: Bytes,
        encoding: Encoding,
    ) -> Option<Bytes> {
        if let Some(bytes) = self.held_compressed(hash, encoding) {
            return Some(bytes);
        }
        let slot = self.compression_slot()?;
        self.compress(hash, content, encoding, slot).await
    }

    /// The copy of the blob `hash` compressed with `encoding`, if the memory holds one.
    pub fn held_compressed(&self, hash: &[u8; 32], encoding: Encoding) -> Option<Bytes> {
        let held = self
            .memory
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(*hash, Some(encoding)));
        count("compressed", held.is_some());
        held
    }

    /// One of the compressions that may run at once (on half the cores), if one is free:
    /// taken before a blob too large to keep is read whole to be compressed, so that it is
    /// not read whole for nothing.
    pub fn compression_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.memory.compressing)
            .try_acquire_owned()
            .ok()
    }

    /// `content` (the blob `hash`) compressed with `encoding` on a blocking thread, in
    /// `slot`, and kept when it is small enough. `None` when that thread failed.
    pub async fn compress(
        &self,
        hash: &[u8; 32],
        content: Bytes,
        encoding: Encoding,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<Bytes> {
        // The slot goes with the thread: one whose client left still holds it to its end.
        let compressing = move || {
            let compressed = encoding.compress(&content);
            drop(slot);
            compressed
        };
        let compressed = match tokio::task::spawn_blocking(compressing).await {
            Ok(compressed) => Bytes::from(compressed),
            Err(_) => return None,
        };
        if compressed.len() <= self.memory.blob_max {
            self.memory
                .blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    (*hash, Some(encoding)),
                    compressed.clone(),
                    compressed.len(),
                );
        }
        Some(compressed)
    }
}

/// The 32 bytes of a 64-character hex name.
fn parse_hex(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `source` (a deploy's `url#branch`) can be a manifest's: at most
/// [`MAX_PATH`](crate::manifest::MAX_PATH) bytes, without control characters.
pub fn source_fits(source: &str) -> bool {
    source.len() <= crate::manifest::MAX_PATH && !source.chars().any(char::is_control)
}

/// The blobs a manifest names, by their SHA-256: the index of a file of the tree holding
/// each, and its size.
type Blobs = BTreeMap<[u8; 32], (usize, u64)>;

/// The manifest of `tree`, and the blobs it names. Each file is read once here (hashed, or
/// inlined when small) and let go; it blocks.
fn build(
    commit: &str,
    source: &str,
    tree: &dyn TreeSource,
) -> Result<(SiteManifest, Blobs, Rules), Error> {
    if commit.is_empty() || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Name(commit.to_owned()));
    }
    if !source_fits(source) {
        return Err(Error::Name(source.to_owned()));
    }
    let files = (0..tree.count())
        .filter(|&i| matches!(tree.item(i).1, SourceKind::File(_)))
        .count();
    if files > MAX_FILES {
        return Err(Error::TooLarge {
            what: "files in the site",
            got: files as u64,
            limit: MAX_FILES as u64,
        });
    }
    // Sized before any is read.
    let mut total = 0u64;
    for index in 0..tree.count() {
        if let SourceKind::File(size) = tree.item(index).1 {
            if size > MAX_FILE_BYTES {
                return Err(Error::TooLarge {
                    what: "a file's bytes",
                    got: size,
                    limit: MAX_FILE_BYTES,
                });
            }
            total += size;
            if total > MAX_SITE_BYTES {
                return Err(Error::TooLarge {
                    what: "the site's bytes",
                    got: total,
                    limit: MAX_SITE_BYTES,
                });
            }
        }
    }
    let mut entries = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    let mut rules: [Option<String>; 2] = [None, None];
    for index in 0..tree.count() {
        let (path, kind) = tree.item(index);
        if let SourceKind::File(size) = kind
            && [REDIRECTS_FILE, HEADERS_FILE].contains(&path)
            && size > MAX_RULES_BYTES
        {
            return Err(Error::TooLarge {
                what: "a rules file's bytes",
                got: size,
                limit: MAX_RULES_BYTES,
            });
        }
        if !valid_path(path) || entries.contains_key(path) {
            return Err(Error::Path(path.to_owned()));
        }
        // Every directory on the way is an entry.
        let mut at = 0;
        while let Some(slash) = path[at..].find('/') {
            let dir = &path[..at + slash];
            match entries.get(dir) {
                None => {
                    entries.insert(dir.to_owned(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => return Err(Error::Path(path.to_owned())),
            }
            at += slash + 1;
        }
        let entry = match kind {
            SourceKind::Symlink(target) => {
                if target.is_empty()
                    || target.len() > crate::manifest::MAX_PATH
                    || target.chars().any(char::is_control)
                {
                    return Err(Error::Path(path.to_owned()));
                }
                Entry::Symlink(target.to_owned())
            }
            SourceKind::File(size) => {
                let content = tree.read(index).map_err(Error::Tree)?;
                if content.len() as u64 != size {
                    return Err(Error::Tree(format!(
                        "{path}: {} bytes read of {size}",
                        content.len()
                    )));
                }
                if let Some(at) = [REDIRECTS_FILE, HEADERS_FILE]
                    .iter()
                    .position(|name| path == *name)
                {
                    rules[at] = Some(String::from_utf8_lossy(&content).into_owned());
                }
                if content.len() <= INLINE_MAX {
                    Entry::File(Content::Inline(content))
                } else {
                    let hash: [u8; 32] = sha2::Sha256::digest(&content).into();
                    blobs.insert(hash, (index, size));
                    Entry::File(Content::Blob { hash, size })
                }
            }
        };
        if entries.get(path) == Some(&Entry::Dir) {
            return Err(Error::Path(path.to_owned()));
        }
        entries.insert(path.to_owned(), entry);
    }
    let rules = Rules::parse(rules[0].as_deref(), rules[1].as_deref())?;
    Ok((
        SiteManifest {
            commit: commit.to_owned(),
            source: source.to_owned(),
            entries,
        },
        blobs,
        rules,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep deletes only while its marker's last write is recent, and never again once two
    /// writes returned too far apart (deployments may have taken it for dead between them).
    #[test]
    fn a_sweep_deletes_only_while_its_marker_is_kept_alive() {
        let now = Instant::now();
        let times = SweepTimes::default();
        let beat = |ago: Duration, broken| Beat {
            last: now.checked_sub(ago).unwrap_or(now),
            broken,
            trusted: times.beat_trusted,
        };
        assert!(beat(Duration::from_secs(1), false).alive());
        assert!(!beat(times.beat_trusted + Duration::from_secs(1), false).alive());
        assert!(!beat(Duration::ZERO, true).alive());
        // The margins the deployments' wait rests on.
        assert!(times.beat < times.beat_trusted && times.beat_trusted < times.beat_gap);
        assert!(times.silent >= times.beat_trusted + Duration::from_secs(40));
    }
}
