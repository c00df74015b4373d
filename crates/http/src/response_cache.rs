//! The response cache: a `fetch` answer stored under a key of everything that shapes its
//! bytes, so that repeated fetches are sent a file, and simultaneous identical fetches share
//! one generation.
//!
//! - The first request for a key *leads*: one pack generation writes the response into a
//!   pending entry, and is published under the key when complete.
//! - Identical requests arriving meanwhile *join*: they read the pending file as it grows,
//!   each at its own pace, so a slow client never holds the writer back and memory does not
//!   grow with the number of joiners. The leader's own client is a reader like the others.
//! - A writer that fails ends every reader with its error (an `ERR` line if nothing was sent
//!   yet); nothing is published.
//! - Later requests are sent the stored file, its checksum verified as it streams.
//!
//! The access gate runs before any of this: a cached answer is given only where a generated
//! one would be.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bstr::ByteSlice;
use gitcache_pack::Repository;
use gitcache_protocol::request::Fetch;
use gitcache_storage::responses::{Entry, PendingEntry, ResponseStore};
use gix_hash::Kind as HashKind;
use tokio::sync::watch;

use crate::body::ChannelWriter;

/// Bumped whenever the bytes gitcache writes for the same key may change.
const FORMAT: &str = "gitcache-response-v1";
/// Bytes read or written at a time.
const CHUNK: usize = 64 << 10;

/// How the response cache behaves.
#[derive(Debug, Clone)]
pub struct ResponseCacheConfig {
    /// Store an entry only the second time its key is asked for within `admission_window`
    /// (most responses are never asked for again); simultaneous requests are coalesced
    /// either way.
    pub admit_on_second_request: bool,
    /// See `admit_on_second_request`.
    pub admission_window: Duration,
    /// Most bytes one repository's entries may hold.
    pub max_repo_bytes: Option<u64>,
    /// Most bytes all entries may hold.
    pub max_total_bytes: Option<u64>,
    /// How often eviction runs.
    pub cleanup_interval: Duration,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        ResponseCacheConfig {
            admit_on_second_request: false,
            admission_window: Duration::from_secs(600),
            max_repo_bytes: None,
            max_total_bytes: Some(10 << 30),
            cleanup_interval: Duration::from_secs(600),
        }
    }
}

/// What the cache did, since the start.
#[derive(Debug, Default)]
pub struct ResponseCacheStats {
    /// Responses generated into the cache (one per coalesced group).
    pub generated: AtomicU64,
    /// Requests that joined a generation in progress.
    pub joined: AtomicU64,
    /// Requests sent a stored entry.
    pub served_stored: AtomicU64,
    /// Entries published.
    pub stored: AtomicU64,
    /// Entries evicted.
    pub evicted: AtomicU64,
    /// Stored entries refused because their checksum did not match.
    pub corrupt: AtomicU64,
}

/// Where a generation is.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// This many bytes are in the file so far.
    Writing(u64),
    /// Complete at this many bytes.
    Done(u64),
    /// Failed after this many bytes, with this message for the client.
    Failed(u64, Arc<str>),
}

#[derive(Debug)]
struct Flight {
    state: watch::Sender<State>,
    /// The pending file, until the flight is taken off the list and the file renamed.
    temp: PathBuf,
}

type FlightKey = (PathBuf, String);

/// What a request gets from the cache.
pub(crate) enum Lookup {
    /// A stored entry.
    Stored(Entry),
    /// A generation to read, with the pending file opened for reading.
    Follow(std::fs::File, watch::Receiver<State>),
    /// This request leads: generate into `Generation`, then follow like the others.
    Lead(Box<Generation>, std::fs::File, watch::Receiver<State>),
    /// Not cached: generate live.
    Live,
}

/// The cache of one proxy.
#[derive(Debug)]
pub(crate) struct ResponseCache {
    store: ResponseStore,
    config: ResponseCacheConfig,
    flights: Mutex<HashMap<FlightKey, Arc<Flight>>>,
    seen: Mutex<HashMap<FlightKey, Instant>>,
    stats: Arc<ResponseCacheStats>,
}

/// The key of the response to `fetch` from `repo`: everything that shapes its bytes. `None`
/// for requests still negotiating (no `done`), which are cheap and rarely repeated.
pub(crate) fn response_key(
    repo: &Repository,
    fetch: &Fetch,
    kind: HashKind,
) -> Result<Option<String>, gitcache_pack::Error> {
    if !fetch.done {
        return Ok(None);
    }
    let mut text = format!("{FORMAT}\nformat {kind}\n");
    let sorted = |ids: &[gix_hash::ObjectId]| {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        ids
    };
    for want in sorted(&fetch.wants) {
        text.push_str(&format!("want {want}\n"));
    }
    let mut want_refs: Vec<String> = Vec::new();
    for name in &fetch.want_refs {
        let oid = name
            .to_str()
            .ok()
            .and_then(|n| repo.find_ref(n).ok().flatten())
            .and_then(|r| r.oid);
        want_refs.push(format!("want-ref {name} {oid:?}\n"));
    }
    want_refs.sort();
    text.extend(want_refs);
    // Only the haves the mirror has shape the answer.
    let present: Vec<_> = fetch
        .haves
        .iter()
        .copied()
        .filter(|h| repo.contains(h))
        .collect();
    for have in sorted(&present) {
        text.push_str(&format!("have {have}\n"));
    }
    for shallow in sorted(&fetch.shallows) {
        text.push_str(&format!("shallow {shallow}\n"));
    }
    text.push_str(&format!(
        "deepen {:?} relative {} since {:?}\nfilter {}\nthin {} ofs {} tags {} sideband-all {} no-progress {} wait-for-done {}\n",
        fetch.deepen,
        fetch.deepen_relative,
        fetch.deepen_since,
        fetch.filter.as_ref().map(ToString::to_string).unwrap_or_default(),
        fetch.thin_pack,
        fetch.ofs_delta,
        fetch.include_tag,
        fetch.sideband_all,
        fetch.no_progress,
        fetch.wait_for_done,
    ));
    // Answers that depend on refs: the refs they read are part of the key.
    if !fetch.deepen_not.is_empty() || fetch.include_tag {
        let mut deepen_not: Vec<String> = fetch.deepen_not.iter().map(|r| r.to_string()).collect();
        deepen_not.sort();
        for name in deepen_not {
            text.push_str(&format!("deepen-not {name}\n"));
        }
        let mut refs: Vec<String> = repo
            .refs()?
            .into_iter()
            .filter(|r| {
                r.name.starts_with(b"refs/tags/")
                    || (!fetch.deepen_not.is_empty() && r.name != "HEAD")
            })
            .map(|r| format!("ref {} {:?}\n", r.name, r.oid))
            .collect();
        refs.sort();
        text.extend(refs);
    }
    Ok(Some(
        crate::access::sha256(text.as_bytes()).to_hex().to_string(),
    ))
}

impl ResponseCache {
    /// A cache storing under `root`; leftovers of a crash are removed.
    pub(crate) fn new(root: PathBuf, config: ResponseCacheConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let store = ResponseStore::new(root);
        let removed = store.remove_leftovers()?;
        if removed > 0 {
            tracing::info!(removed, "removed unfinished responses");
        }
        Ok(ResponseCache {
            store,
            config,
            flights: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        })
    }

    pub(crate) fn stats(&self) -> &Arc<ResponseCacheStats> {
        &self.stats
    }

    /// Join a generation in progress, take a stored entry, or lead a new generation.
    pub(crate) fn lookup(&self, repo: &Path, key: &str) -> Lookup {
        let id: FlightKey = (repo.to_owned(), key.to_owned());
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&id) {
            // The pending file is opened while the flight is listed: it is not renamed yet.
            if let Ok(file) = std::fs::File::open(&flight.temp) {
                self.stats.joined.fetch_add(1, Ordering::Relaxed);
                return Lookup::Follow(file, flight.state.subscribe());
            }
        }
        match self.store.open(repo, key) {
            Ok(Some(entry)) => {
                self.stats.served_stored.fetch_add(1, Ordering::Relaxed);
                return Lookup::Stored(entry);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, "response cache unreadable, generating live");
                return Lookup::Live;
            }
        }
        if self.config.admit_on_second_request {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let window = self.config.admission_window;
            let now = Instant::now();
            if seen.len() > 100_000 {
                seen.retain(|_, at| now.duration_since(*at) < window);
            }
            let admitted = seen
                .insert(id.clone(), now)
                .is_some_and(|at| now.duration_since(at) < window);
            if !admitted {
                return Lookup::Live;
            }
        }
        let pending = match self.store.begin(repo, key) {
            Ok(pending) => pending,
            Err(err) => {
                tracing::warn!(%err, "cannot store a response, generating live");
                return Lookup::Live;
            }
        };
        let Ok(file) = std::fs::File::open(pending.temp_path()) else {
            return Lookup::Live;
        };
        let (state, rx) = watch::channel(State::Writing(0));
        let flight = Arc::new(Flight {
            state,
            temp: pending.temp_path().to_owned(),
        });
        flights.insert(id.clone(), Arc::clone(&flight));
        self.stats.generated.fetch_add(1, Ordering::Relaxed);
        Lookup::Lead(
            Box::new(Generation {
                pending: Some(pending),
                flight,
                id,
                buf: Vec::with_capacity(CHUNK),
            }),
            file,
            rx,
        )
    }

    /// Take a finished generation off the list (and not a newer one under the same key).
    fn land(&self, id: &FlightKey, flight: &Arc<Flight>) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(id).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(id);
        }
    }

    /// Finish `generation`: publish it, or fail every reader with `error`.
    pub(crate) fn finish(&self, mut generation: Box<Generation>, error: Option<String>) {
        let flush = generation.flush_buffer();
        let pending = generation.pending.take().expect("finished once");
        let written = pending.len();
        let error = error.or_else(|| flush.err().map(|e| e.to_string()));
        match error {
            None => {
                // Published while still listed: a request arriving now either opens the
                // pending file before the rename or finds the entry after it.
                match pending.commit() {
                    Ok(_) => {
                        self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        // Readers have every byte already; only publishing failed.
                        tracing::warn!(%err, "publishing a stored response failed");
                    }
                }
                self.land(&generation.id, &generation.flight);
                generation.flight.state.send_replace(State::Done(written));
            }
            Some(message) => {
                drop(pending);
                self.land(&generation.id, &generation.flight);
                generation
                    .flight
                    .state
                    .send_replace(State::Failed(written, message.into()));
            }
        }
    }

    /// Evict entries over the limits.
    /// Evict least recently used entries until each repository is under
    /// `limit(repo folder)` and all under the global cap. `report(repo, Some(entries), _)`
    /// is called for each repository entries were evicted from, then
    /// `report(repo, None, bytes)` with every repository's size.
    pub(crate) fn evict(
        &self,
        limit: impl Fn(&Path) -> Option<u64>,
        mut report: impl FnMut(&Path, Option<usize>, u64),
    ) {
        match self.store.evict(limit, self.config.max_total_bytes) {
            Ok(eviction) => {
                for e in eviction.evicted {
                    self.stats
                        .evicted
                        .fetch_add(e.entries as u64, Ordering::Relaxed);
                    tracing::info!(repo = %e.repo.display(), entries = e.entries, bytes = e.bytes, "responses evicted");
                    report(&e.repo, Some(e.entries), e.bytes);
                }
                for (repo, bytes) in eviction.sizes {
                    report(&repo, None, bytes);
                }
            }
            Err(err) => tracing::warn!(%err, "evicting responses failed"),
        }
    }

    /// Bytes the stored responses of the repository under `repo` take.
    pub(crate) fn repo_size(&self, repo: &Path) -> u64 {
        self.store.repo_size(repo)
    }

    pub(crate) fn cleanup_interval(&self) -> Duration {
        self.config.cleanup_interval
    }

    pub(crate) fn remove(&self, repo: &Path, key: &str) {
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        self.store.remove(repo, key);
    }
}

/// The leader's side: a `Write` into the pending entry that tells readers how far it got.
#[derive(Debug)]
pub(crate) struct Generation {
    pending: Option<PendingEntry>,
    flight: Arc<Flight>,
    id: FlightKey,
    buf: Vec<u8>,
}

impl Generation {
    fn flush_buffer(&mut self) -> std::io::Result<()> {
        let pending = self.pending.as_mut().expect("not finished");
        if !self.buf.is_empty() {
            pending.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.flight
            .state
            .send_replace(State::Writing(pending.len()));
        Ok(())
    }
}

impl Write for Generation {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buffer()
    }
}

/// Send a generation's bytes to one client as they are written (blocking; run on a blocking
/// thread).
pub(crate) fn follow(
    mut file: std::fs::File,
    mut state: watch::Receiver<State>,
    mut out: ChannelWriter,
) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let mut sent = 0u64;
    loop {
        let now = state.borrow_and_update().clone();
        let (limit, end) = match &now {
            State::Writing(n) => (*n, None),
            State::Done(n) => (*n, Some(None)),
            State::Failed(n, message) => (*n, Some(Some(message.clone()))),
        };
        if let Some(Some(message)) = &end {
            if sent == 0 {
                let mut line = Vec::new();
                let _ = gitcache_protocol::pktline::write_error(&mut line, message.as_bytes());
                let _ = out.write_all(&line).and_then(|()| out.flush());
            } else {
                out.abort(std::io::Error::other(message.to_string()));
            }
            return;
        }
        while sent < limit {
            let want = (limit - sent).min(CHUNK as u64) as usize;
            let mut chunk = vec![0u8; want];
            if file.read_exact(&mut chunk).is_err() || out.send_bytes(chunk.into()).is_err() {
                // The file vanished under us or the client left: this reader stops, the
                // writer and the other readers go on.
                return;
            }
            sent += want as u64;
        }
        if end.is_some() {
            let _ = out.flush();
            return;
        }
        let _ = out.flush();
        let changed = match &runtime {
            Some(rt) => rt.block_on(state.changed()),
            None => return,
        };
        if changed.is_err() {
            out.abort(std::io::Error::other("response generation ended abruptly"));
            return;
        }
    }
}

/// Send a stored entry to one client, verifying its checksum on the way; if it does not
/// match, `on_corrupt` runs and the client's response is broken off, never completed with
/// bad bytes (`false`).
pub(crate) fn send_stored(
    mut entry: Entry,
    mut out: ChannelWriter,
    on_corrupt: impl FnOnce(),
) -> bool {
    let mut hasher = gix_hash::hasher(HashKind::Sha256);
    let mut remaining = entry.len();
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64) as usize;
        let mut chunk = vec![0u8; want];
        if entry.file().read_exact(&mut chunk).is_err() {
            out.abort(std::io::Error::other("stored response unreadable"));
            return false;
        }
        hasher.update(&chunk);
        remaining -= want as u64;
        if remaining == 0 {
            // The last chunk waits until the checksum is known.
            let digest = hasher
                .try_finalize()
                .expect("SHA-256 has no collision detection to fail");
            if !entry.verify(digest.as_bytes()) {
                on_corrupt();
                out.abort(std::io::Error::other("stored response corrupt"));
                return false;
            }
            let _ = out.send_bytes(chunk.into());
            return true;
        }
        if out.send_bytes(chunk.into()).is_err() {
            return true;
        }
    }
    true
}
