//! Stored responses shared with other instances through the object store: an answer
//! generated on one instance is a stored answer on the others.
//!
//! - Each entry the response cache publishes locally is uploaded, as the same file (content,
//!   checksum, magic), to `responses/<host>/<owner>/<repo>.git/<key>.resp`.
//! - A request whose key has no local entry (and no generation under way here) looks in the
//!   bucket first; an entry found there is downloaded beside its local place and renamed
//!   into it, then served as any stored entry (its checksum verified as it streams). Keys not
//!   found are remembered for a minute, so that a cold key costs one request to the bucket.
//! - Eviction goes by last use across the fleet: the catalog's PostgreSQL index (each upload
//!   and download notes its time) when there is one, else the bucket's own listing (upload
//!   times). One instance at a time evicts (a lease, when leases exist).
//!
//! The access gate runs before any of this, as for local entries.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitcache_storage::lease::{Held, Leases};
use gitcache_storage::responses::{ByLimit, Indexed, ResponseIndex, block_bytes};
use gitcache_storage::store::{AnyStore, ObjectKey, ObjectStore as _, StoreError};

/// How long a key found missing in the bucket is not asked for again.
const MISSING_FOR: Duration = Duration::from_secs(60);
/// The most keys remembered missing.
const MOST_MISSING: usize = 100_000;
/// Stored responses written to the bucket at once: each may hold up to the store's
/// multipart threshold (32 MiB) in memory while it goes.
const UPLOADS_AT_ONCE: usize = 2;
/// Uploads waiting their turn, at most: past that, a new entry is not shared (it stays this
/// instance's; the others generate their own).
const UPLOADS_WAITING_MOST: usize = 64;

/// The bucket side of the response cache.
#[derive(Debug)]
pub(crate) struct SharedResponses {
    store: AnyStore,
    index: Option<Arc<dyn ResponseIndex>>,
    leases: Option<(Arc<dyn Leases>, Duration)>,
    missing: Mutex<crate::bounded::Bounded<Entry, Instant>>,
    /// Downloads under way, one per key: simultaneous misses of one key wait for the first
    /// and take its file.
    downloading: Mutex<HashMap<Entry, Arc<tokio::sync::Mutex<()>>>>,
    /// Turns to upload ([`UPLOADS_AT_ONCE`]), and the uploads holding or awaiting one.
    uploads: tokio::sync::Semaphore,
    uploading: std::sync::atomic::AtomicUsize,
    /// Deletions of each repository's entries so far (a purge): an upload queued before one
    /// is not made after it, and one made meanwhile is deleted again.
    deletions: Mutex<crate::bounded::Counts<String>>,
}

/// A stored response: its repository folder and key.
type Entry = (String, String);

/// A request's share in the download of one entry: the last to leave (done, or dropped with
/// its request when the client went away) removes the entry's lock from the table.
struct Turn<'a> {
    shared: &'a SharedResponses,
    id: Entry,
    /// Taken when the turn ends, under the table's lock.
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Turn<'_> {
    fn lock(&self) -> &tokio::sync::Mutex<()> {
        self.lock.as_deref().expect("held until dropped")
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut downloading = (self.shared.downloading)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Shares are taken and given back under the table's lock: the last to leave sees
        // the table's alone.
        drop(self.lock.take());
        if downloading
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            downloading.remove(&self.id);
        }
    }
}

/// A repository folder (`host/owner/repo.git`) as `/`-separated text.
pub(crate) fn repo_text(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn repo_prefix(repo: &str) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(&format!("responses/{repo}"))
}

fn object(repo: &str, key: &str) -> Result<ObjectKey, StoreError> {
    repo_prefix(repo)?.join(&format!("{key}.resp"))
}

impl SharedResponses {
    pub(crate) fn new(
        store: AnyStore,
        index: Option<Arc<dyn ResponseIndex>>,
        leases: Option<(Arc<dyn Leases>, Duration)>,
    ) -> Self {
        SharedResponses {
            store,
            index,
            leases,
            missing: Mutex::new(crate::bounded::Bounded::new(MOST_MISSING, MOST_MISSING)),
            downloading: Mutex::new(HashMap::new()),
            uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
            uploading: std::sync::atomic::AtomicUsize::new(0),
            deletions: Mutex::new(Default::default()),
        }
    }

    fn recently_missing(&self, repo: &str, key: &str) -> bool {
        let missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        missing
            .get(&(repo.to_owned(), key.to_owned()))
            .is_some_and(|at| now.duration_since(*at) < MISSING_FOR)
    }

    /// Remember that the bucket has no entry `key` of `repo`, for [`MISSING_FOR`]. Clients
    /// mint keys freely: past [`MOST_MISSING`] the memory is pruned (see [`Bounded`]), and
    /// forgetting costs a request to the bucket each.
    ///
    /// [`Bounded`]: crate::bounded::Bounded
    fn note_missing(&self, repo: &str, key: &str) {
        let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        missing.make_room(|_, at| now.duration_since(*at) < MISSING_FOR);
        missing.insert((repo.to_owned(), key.to_owned()), now);
    }

    /// Whether [`download_counted`](Self::download_counted) found the entry.
    #[cfg(test)]
    pub(crate) async fn download(&self, repo: &str, key: &str, to: &Path, limit: u64) -> bool {
        (self.download_counted(repo, key, to, limit, &|_| true).await).is_some()
    }

    /// Copy `repo`'s entry `key` from the bucket to `to` (its local place): `Some(true)` when
    /// this call fetched it, `Some(false)` when another request's download placed it
    /// meanwhile; `None` if the bucket has none, or one larger than `limit` bytes, or could
    /// not be asked (logged; the caller generates), and when `admit`, asked with its size
    /// before anything is written, refuses it (no room above the disk's floor): that one not
    /// noted as missing, as the disk may have room again soon.
    pub(crate) async fn download_counted(
        &self,
        repo: &str,
        key: &str,
        to: &Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Option<bool> {
        if self.recently_missing(repo, key) {
            return None;
        }
        let turn = self.turn((repo.to_owned(), key.to_owned()));
        let _held = turn.lock().lock().await;
        // Another request's download may have placed it (or found it missing) meanwhile.
        if to.exists() {
            Some(false)
        } else if self.recently_missing(repo, key) {
            None
        } else {
            self.fetch(repo, key, to, limit, admit)
                .await
                .then_some(true)
        }
    }

    /// The turn to download `id`, shared by the requests that want it at once.
    fn turn(&self, id: Entry) -> Turn<'_> {
        let lock = Arc::clone(
            self.downloading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.clone())
                .or_default(),
        );
        Turn {
            shared: self,
            id,
            lock: Some(lock),
        }
    }

    async fn fetch(
        &self,
        repo: &str,
        key: &str,
        to: &Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> bool {
        let found = match object(repo, key) {
            Ok(object) => {
                self.store
                    .get_file_admitted(&object, to, limit, admit)
                    .await
            }
            Err(err) => Err(err),
        };
        match found {
            Ok(true) => {
                // Counted as blocks, as the local store counts it (see `block_bytes`).
                let bytes = std::fs::metadata(to).map_or(0, |m| block_bytes(m.len()));
                if let Some(index) = &self.index
                    && let Err(err) = index.touch(repo, key, bytes).await
                {
                    tracing::warn!(%err, "noting a shared response's use failed");
                }
                true
            }
            Ok(false) => {
                self.note_missing(repo, key);
                false
            }
            Err(StoreError::NotAdmitted { size, .. }) => {
                tracing::debug!(
                    key,
                    size,
                    "a shared response larger than the disk's room above its floor"
                );
                false
            }
            Err(err) => {
                // Not asked again for a while: a store that does not answer must not hold
                // every miss up for its timeout.
                if matches!(err, StoreError::TooLarge { .. }) {
                    tracing::warn!(%err, "a shared response over the cache's limits; generating it here");
                } else {
                    tracing::warn!(%err, "object store unavailable; generating the response here");
                }
                self.note_missing(repo, key);
                false
            }
        }
    }

    /// Upload the local entry at `from` as `repo`'s entry `key`.
    #[cfg(test)]
    pub(crate) async fn upload(&self, repo: &str, key: &str, from: &Path) {
        self.upload_since(repo, key, from, self.deletions_of(repo))
            .await;
    }

    /// Share the stored entry `key` of `repo` (the file `from`), stored when `repo`'s entries
    /// had been deleted `deletions` times ([`SharedResponses::deletions_of`]): a few at a
    /// time, and not if they were deleted (purged) since.
    pub(crate) async fn upload_since(&self, repo: &str, key: &str, from: &Path, deletions: u64) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Counts one upload from its start to its end, however it ends.
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let before = self.uploading.fetch_add(1, Ordering::AcqRel);
        let _counted = Counted(&self.uploading);
        if before >= UPLOADS_AT_ONCE + UPLOADS_WAITING_MOST {
            tracing::debug!(key, "too many responses waiting to be shared: not shared");
            return;
        }
        let _turn = self.uploads.acquire().await;
        // The repository's entries were deleted (purged) while this one waited: not shared.
        if self.deletions_of(repo) != deletions {
            return;
        }
        self.upload_now(repo, key, from).await;
        // Deleted while it was uploaded: it goes too.
        if self.deletions_of(repo) != deletions
            && let Err(err) = self.delete(repo, Some(key)).await
        {
            tracing::warn!(%err, "deleting a response shared during a purge failed");
        }
    }

    /// How many times `repo`'s entries were deleted so far.
    pub(crate) fn deletions_of(&self, repo: &str) -> u64 {
        (self.deletions.lock().unwrap_or_else(|p| p.into_inner())).of(repo)
    }

    /// Count a deletion of `repo`'s entries made elsewhere (see
    /// [`upload_since`](Self::upload_since)).
    pub(crate) fn note_deletion(&self, repo: &str) {
        (self.deletions.lock().unwrap_or_else(|p| p.into_inner())).bump(repo);
    }

    async fn upload_now(&self, repo: &str, key: &str, from: &Path) {
        let uploaded = match object(repo, key) {
            Ok(object) => self.store.put_file(&object, from).await,
            Err(err) => Err(err),
        };
        match uploaded {
            Ok(()) => {
                self.missing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(repo.to_owned(), key.to_owned()));
                let bytes = std::fs::metadata(from).map_or(0, |m| block_bytes(m.len()));
                if let Some(index) = &self.index
                    && let Err(err) = index.touch(repo, key, bytes).await
                {
                    tracing::warn!(%err, "indexing a shared response failed");
                }
            }
            Err(err) => tracing::warn!(%err, "sharing a stored response failed"),
        }
    }

    /// Delete `repo`'s entry `key` (found corrupt), or all of `repo`'s entries.
    pub(crate) async fn delete(&self, repo: &str, key: Option<&str>) -> Result<(), StoreError> {
        if key.is_none() {
            self.note_deletion(repo);
        }
        match key {
            Some(key) => self.store.delete(&object(repo, key)?).await?,
            None => {
                for listed in self.store.list(&repo_prefix(repo)?).await? {
                    self.store.delete(&listed.key).await?;
                }
                // Counted again at its end: an upload made while the deletion ran (of an
                // answer of the repository as it is now) takes itself back, rather than
                // stay unindexed (out of the eviction's sight) once the rows go below.
                self.note_deletion(repo);
            }
        }
        if let Some(index) = &self.index
            && let Err(err) = index.forget(repo, key).await
        {
            tracing::warn!(%err, "unindexing shared responses failed");
        }
        Ok(())
    }

    /// What the bucket holds, most recently used first.
    async fn entries(&self) -> Result<Vec<Indexed>, String> {
        if let Some(index) = &self.index {
            // Rows written before answers counted as blocks (or while an instance that did
            // not yet count them so ran beside) hold lengths: counted as blocks here.
            let mut all = index.all().await?;
            for entry in &mut all {
                entry.bytes = block_bytes(entry.bytes);
            }
            return Ok(all);
        }
        let prefix = ObjectKey::new("responses").map_err(|e| e.to_string())?;
        let mut found: Vec<Indexed> = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|listed| {
                let rest = listed.key.as_str().strip_prefix("responses/")?;
                let (repo, name) = rest.rsplit_once('/')?;
                Some(Indexed {
                    repo: repo.to_owned(),
                    key: name.strip_suffix(".resp")?.to_owned(),
                    bytes: block_bytes(listed.size),
                    last_used: listed.modified,
                })
            })
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        Ok(found)
    }

    /// Delete least recently used entries until each repository is under `limit(repo)` and
    /// all under `total`; one instance at a time. Returns the entries deleted by repository,
    /// and by the limit they were over.
    pub(crate) async fn evict(
        &self,
        limit: impl Fn(&str) -> Option<u64>,
        total: Option<u64>,
        most_entries: Option<u64>,
    ) -> Result<(HashMap<String, usize>, ByLimit), String> {
        let lease = match &self.leases {
            Some((leases, ttl)) => {
                match Held::try_take(Arc::clone(leases), "evict:responses".into(), *ttl).await? {
                    Some(held) => Some(held),
                    None => return Ok(Default::default()),
                }
            }
            None => None,
        };
        let outcome = self.evict_held(limit, total, most_entries).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        outcome
    }

    async fn evict_held(
        &self,
        limit: impl Fn(&str) -> Option<u64>,
        total: Option<u64>,
        most_entries: Option<u64>,
    ) -> Result<(HashMap<String, usize>, ByLimit), String> {
        let mut kept_total = 0u64;
        let mut kept_entries = 0u64;
        let mut kept: HashMap<String, u64> = HashMap::new();
        let mut evicted: HashMap<String, usize> = HashMap::new();
        let mut by = ByLimit::default();
        for entry in self.entries().await? {
            let repo_kept = kept.entry(entry.repo.clone()).or_default();
            let over_repo =
                limit(&entry.repo).is_some_and(|l| repo_kept.saturating_add(entry.bytes) > l);
            let over_bytes = total.is_some_and(|t| kept_total.saturating_add(entry.bytes) > t);
            let over_entries = most_entries.is_some_and(|most| kept_entries >= most);
            if over_repo || over_bytes || over_entries {
                // One that cannot be deleted now is passed over, as a local one is: the pass
                // goes on with the others.
                match self.delete(&entry.repo, Some(&entry.key)).await {
                    Ok(()) => {
                        *evicted.entry(entry.repo).or_default() += 1;
                        if over_repo {
                            by.repository += 1;
                        } else if over_bytes {
                            by.bytes += 1;
                        } else {
                            by.entries += 1;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, repo = entry.repo, "evicting a shared response failed")
                    }
                }
            } else {
                *repo_kept = repo_kept.saturating_add(entry.bytes);
                kept_total = kept_total.saturating_add(entry.bytes);
                kept_entries += 1;
            }
        }
        Ok((evicted, by))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(dir: &Path) -> SharedResponses {
        SharedResponses::new(
            AnyStore::Fs(gitcache_storage::store::FsStore::new(dir)),
            None,
            None,
        )
    }

    /// The repository folder these tests share entries of.
    const REPO: &str = "h/o/r.git";

    /// A bucket under `dir`, and a stored response there to upload.
    fn uploading(dir: &Path) -> (Arc<SharedResponses>, std::path::PathBuf) {
        let shared = Arc::new(shared(&dir.join("bucket")));
        let from = dir.join("local.resp");
        std::fs::write(&from, b"a stored response").unwrap();
        (shared, from)
    }

    /// Every upload turn, held until dropped: uploads wait.
    async fn every_turn(shared: &SharedResponses) -> tokio::sync::SemaphorePermit<'_> {
        shared
            .uploads
            .acquire_many(UPLOADS_AT_ONCE as u32)
            .await
            .unwrap()
    }

    /// Whether the bucket holds `REPO`'s entry `key`.
    async fn in_bucket(shared: &SharedResponses, key: &str) -> bool {
        let object = object(REPO, key).unwrap();
        shared.store.size(&object).await.unwrap().is_some()
    }

    /// Tiny answers in the bucket count as the blocks they take, as the local store counts
    /// them: six of a few bytes under a total of four blocks keep four. A cap on their number
    /// holds with none on bytes.
    #[tokio::test]
    async fn tiny_answers_in_the_bucket_count_as_blocks_and_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, from) = uploading(dir.path());
        for i in 0..6 {
            shared.upload_now(REPO, &format!("k{i}"), &from).await;
        }
        let (evicted, by) = shared
            .evict(
                |_| None,
                Some(4 * gitcache_storage::responses::BLOCK_BYTES),
                None,
            )
            .await
            .unwrap();
        assert_eq!(evicted.get(REPO), Some(&2), "{evicted:?}");
        assert_eq!((by.repository, by.bytes, by.entries), (0, 2, 0));
        // And a cap on their number, with none on bytes.
        let (evicted, by) = shared.evict(|_| None, None, Some(1)).await.unwrap();
        assert_eq!(evicted.get(REPO), Some(&3), "{evicted:?}");
        assert_eq!((by.repository, by.bytes, by.entries), (0, 0, 3));
        let mut left = 0;
        for i in 0..6 {
            left += usize::from(in_bucket(&shared, &format!("k{i}")).await);
        }
        assert_eq!(left, 1);
        // And a repository's bytes.
        shared.upload_now(REPO, "k9", &from).await;
        let (_, by) = shared.evict(|_| Some(0), None, None).await.unwrap();
        assert_eq!((by.repository, by.bytes, by.entries), (2, 0, 0));
    }

    /// An upload that waited for its turn while the repository's entries were deleted (a
    /// purge) is not made after it; one queued after the deletion is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_queued_before_a_purge_is_not_made_after_it() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (shared, from) = uploading(dir.path());
        let repo = REPO;
        let turns = every_turn(&shared).await;
        // Stored before the purge, its upload queued behind the turns taken.
        let since = shared.deletions_of(repo);
        let queued = {
            let (shared, from) = (Arc::clone(&shared), from.clone());
            tokio::spawn(async move { shared.upload_since(repo, "before", &from, since).await })
        };
        while shared.uploading.load(Ordering::Acquire) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shared.delete(repo, None).await.unwrap();
        drop(turns);
        queued.await.unwrap();
        assert!(
            !in_bucket(&shared, "before").await,
            "queued before the purge: not shared"
        );
        shared.upload(repo, "after", &from).await;
        assert!(in_bucket(&shared, "after").await);
    }

    /// Uploads go a few at a time; past a bound on those waiting, an entry is not shared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_wait_their_turn_and_past_a_bound_are_not_shared() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (shared, from) = uploading(dir.path());
        let repo = REPO;
        // Every turn taken: uploads wait, up to the bound.
        let turns = every_turn(&shared).await;
        let most = UPLOADS_AT_ONCE + UPLOADS_WAITING_MOST;
        let waiting: Vec<_> = (0..most)
            .map(|i| {
                let (shared, from) = (Arc::clone(&shared), from.clone());
                tokio::spawn(async move { shared.upload(repo, &format!("k{i}"), &from).await })
            })
            .collect();
        while shared.uploading.load(Ordering::Acquire) < most {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // One more is not shared: it returns at once, and nothing of it reaches the bucket.
        tokio::time::timeout(Duration::from_secs(10), shared.upload(repo, "over", &from))
            .await
            .expect("not kept waiting");
        assert!(
            !in_bucket(&shared, "k0").await,
            "none went before a turn was free"
        );
        drop(turns);
        for task in waiting {
            task.await.unwrap();
        }
        for i in 0..most {
            assert!(in_bucket(&shared, &format!("k{i}")).await, "k{i} shared");
        }
        assert!(!in_bucket(&shared, "over").await);
        assert_eq!(shared.uploading.load(Ordering::Acquire), 0);
    }

    /// A download whose request goes away while it waits for another's leaves nothing in
    /// the table once the other is done; one that ends leaves nothing either.
    #[tokio::test]
    async fn downloads_given_up_leave_no_turn_behind() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let to = dir.path().join("local.resp");
        let held = |shared: &SharedResponses| shared.downloading.lock().unwrap().len();

        // Another request holds the turn; this one waits for it, and its client leaves.
        let other = shared.turn(("h/o/r.git".into(), "k".into()));
        let guard = other.lock().lock().await;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            shared.download("h/o/r.git", "k", &to, 1 << 20),
        )
        .await;
        assert!(waiting.is_err(), "it waited for the turn");
        assert_eq!(held(&shared), 1, "the other still holds it");
        drop(guard);
        drop(other);
        assert_eq!(held(&shared), 0);

        // Two shares of one turn, left in either order: the last removes it.
        for first_leaves in [0, 1] {
            let mut turns = vec![
                shared.turn(("h/o/r.git".into(), "k".into())),
                shared.turn(("h/o/r.git".into(), "k".into())),
            ];
            assert_eq!(held(&shared), 1, "one turn a key");
            drop(turns.remove(first_leaves));
            assert_eq!(held(&shared), 1, "the other still holds it");
            drop(turns);
            assert_eq!(held(&shared), 0);
        }

        // One that runs to its end (nothing in the store) leaves nothing either.
        assert!(!shared.download("h/o/r.git", "k2", &to, 1 << 20).await);
        assert_eq!(held(&shared), 0);
        assert!(!to.exists());
    }
}
