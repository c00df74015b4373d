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
use std::io::{Read, Seek, Write};
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
    /// Generations whose store failed midway (their readers finished live).
    pub abandoned: AtomicU64,
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
    /// The store failed (disk full, I/O error): the generation stopped, and readers finish
    /// by generating live.
    Abandoned,
}

/// Writes a whole response into the writer given, from the same mirror snapshot as the
/// generation it stands in for (its output is byte for byte the same); the message of a
/// failure is for the client.
pub(crate) type Regenerate = Arc<dyn Fn(&mut dyn Write) -> Result<(), String> + Send + Sync>;

/// Bytes a reader keeps of what it sent, to check a regenerated answer against.
const CHECKED_TAIL: usize = 4096;

/// Chunks a generation keeps in memory for its readers.
const RECENT_CHUNKS: usize = 8;

/// The last chunks a generation wrote, by offset: readers that keep up send these shared
/// buffers, so memory does not grow with their number; readers that fall behind read the
/// file.
#[derive(Debug, Default)]
pub(crate) struct Recent(Mutex<std::collections::VecDeque<(u64, bytes::Bytes)>>);

impl Recent {
    fn push(&self, offset: u64, chunk: bytes::Bytes) {
        let mut chunks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if chunks.len() == RECENT_CHUNKS {
            chunks.pop_front();
        }
        chunks.push_back((offset, chunk));
    }

    /// The bytes from `offset` to the end of the chunk holding it, if still kept.
    fn from(&self, offset: u64) -> Option<bytes::Bytes> {
        let chunks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        chunks.iter().find_map(|(start, chunk)| {
            (*start <= offset && offset < start + chunk.len() as u64)
                .then(|| chunk.slice((offset - start) as usize..))
        })
    }
}

/// What one reader of a generation needs.
pub(crate) struct Reader {
    file: std::fs::File,
    state: watch::Receiver<State>,
    recent: Arc<Recent>,
    regenerate: Regenerate,
}

struct Flight {
    state: watch::Sender<State>,
    /// The chunks written last, shared by every reader that keeps up (no copy each).
    recent: Arc<Recent>,
    /// How readers finish if the store fails midway.
    regenerate: Regenerate,
    /// The pending file, until the flight is taken off the list and the file renamed.
    temp: PathBuf,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("state", &*self.state.borrow())
            .field("temp", &self.temp)
            .finish_non_exhaustive()
    }
}

type FlightKey = (PathBuf, String);

/// Generations in progress, by key; shared with each [`Generation`] so that one dropped
/// unfinished can take itself off the list.
type Flights = Arc<Mutex<HashMap<FlightKey, Arc<Flight>>>>;

/// Take a finished generation off the list (and not a newer one under the same key).
fn land(flights: &Flights, id: &FlightKey, flight: &Arc<Flight>) {
    let mut flights = flights.lock().unwrap_or_else(|p| p.into_inner());
    if flights.get(id).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        flights.remove(id);
    }
}

/// What a request gets from the cache.
pub(crate) enum Lookup {
    /// A stored entry.
    Stored(Entry),
    /// A generation to read.
    Follow(Reader),
    /// This request leads: generate into `Generation`, then read like the others.
    Lead(Box<Generation>, Reader),
    /// Not cached: generate live.
    Live,
}

/// The cache of one proxy.
#[derive(Debug)]
pub(crate) struct ResponseCache {
    store: ResponseStore,
    config: ResponseCacheConfig,
    flights: Flights,
    seen: Mutex<HashMap<FlightKey, Instant>>,
    stats: Arc<ResponseCacheStats>,
    /// Tests: the store fails once an entry would exceed this many bytes.
    fail_store_after: Option<u64>,
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
            flights: Flights::default(),
            seen: Mutex::new(HashMap::new()),
            stats: Arc::default(),
            fail_store_after: None,
        })
    }

    pub(crate) fn stats(&self) -> &Arc<ResponseCacheStats> {
        &self.stats
    }

    /// Join a generation in progress, take a stored entry, or lead a new generation;
    /// `regenerate` is how readers of a new generation finish if the store fails.
    pub(crate) fn lookup(&self, repo: &Path, key: &str, regenerate: Regenerate) -> Lookup {
        let id: FlightKey = (repo.to_owned(), key.to_owned());
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&id) {
            // The pending file is opened while the flight is listed: it is not renamed yet.
            if let Ok(file) = std::fs::File::open(&flight.temp) {
                self.stats.joined.fetch_add(1, Ordering::Relaxed);
                return Lookup::Follow(Reader {
                    file,
                    state: flight.state.subscribe(),
                    recent: Arc::clone(&flight.recent),
                    regenerate: Arc::clone(&flight.regenerate),
                });
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
        let recent = Arc::new(Recent::default());
        let flight = Arc::new(Flight {
            state,
            recent: Arc::clone(&recent),
            regenerate: Arc::clone(&regenerate),
            temp: pending.temp_path().to_owned(),
        });
        flights.insert(id.clone(), Arc::clone(&flight));
        self.stats.generated.fetch_add(1, Ordering::Relaxed);
        Lookup::Lead(
            Box::new(Generation {
                pending: Some(pending),
                flight,
                flights: Arc::clone(&self.flights),
                id,
                buf: Vec::with_capacity(CHUNK),
                store_failed: false,
                fail_after: self.fail_store_after,
            }),
            Reader {
                file,
                state: rx,
                recent,
                regenerate,
            },
        )
    }

    /// Finish `generation`: publish it, or fail every reader with `error`.
    pub(crate) fn finish(&self, mut generation: Box<Generation>, error: Option<String>) {
        let flush = generation.flush_buffer();
        let pending = generation.pending.take().expect("finished once");
        let written = pending.len();
        if generation.store_failed || flush.is_err() {
            // The bytes in the file are good but end early: readers go on live.
            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                written,
                "storing the response failed; its readers finish live"
            );
            drop(pending);
            land(&self.flights, &generation.id, &generation.flight);
            generation.flight.state.send_replace(State::Abandoned);
            return;
        }
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
                land(&self.flights, &generation.id, &generation.flight);
                generation.flight.state.send_replace(State::Done(written));
            }
            Some(message) => {
                drop(pending);
                land(&self.flights, &generation.id, &generation.flight);
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

    /// Drop every stored response of `repo`.
    pub(crate) fn remove_repo(&self, repo: &Path) -> std::io::Result<()> {
        self.store.remove_repo(repo)
    }

    pub(crate) fn remove(&self, repo: &Path, key: &str) {
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        self.store.remove(repo, key);
    }
}

/// The leader's side: a `Write` into the pending entry that tells readers how far it got.
///
/// Dropped unfinished (its task panicked, or never started), it gives its readers up to live
/// generation, as a failed store does: nobody waits on a generation that will never end.
#[derive(Debug)]
pub(crate) struct Generation {
    pending: Option<PendingEntry>,
    flight: Arc<Flight>,
    flights: Flights,
    id: FlightKey,
    buf: Vec<u8>,
    /// A write to the store failed: the entry is given up.
    store_failed: bool,
    fail_after: Option<u64>,
}

impl Generation {
    fn flush_buffer(&mut self) -> std::io::Result<()> {
        if self.store_failed {
            return Err(std::io::Error::other("the response store failed"));
        }
        if !self.has_readers() {
            // Also where no cancellation checkpoint is passed (a stored pack copied whole).
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "nobody reads this response any more",
            ));
        }
        let pending = self.pending.as_mut().expect("not finished");
        if !self.buf.is_empty() {
            let stored = if self
                .fail_after
                .is_some_and(|limit| pending.len() + self.buf.len() as u64 > limit)
            {
                Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left (test fault)",
                ))
            } else {
                pending.write_all(&self.buf)
            };
            if let Err(err) = stored {
                self.store_failed = true;
                return Err(err);
            }
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.flight.recent.push(
                pending.len() - chunk.len() as u64,
                bytes::Bytes::from(chunk),
            );
        }
        self.flight
            .state
            .send_replace(State::Writing(pending.len()));
        Ok(())
    }
}

impl Generation {
    /// Whether any client still reads this generation.
    pub(crate) fn has_readers(&self) -> bool {
        self.flight.state.receiver_count() > 0
    }

    /// Cancels the generation's work once no client reads it any more.
    pub(crate) fn cancel_when_unread(&self) -> gitcache_pack::Cancel {
        let flight = Arc::clone(&self.flight);
        gitcache_pack::Cancel::when(move || flight.state.receiver_count() == 0)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            if self.has_readers() {
                tracing::warn!("a response generation ended unfinished; its readers finish live");
            }
            drop(pending);
            land(&self.flights, &self.id, &self.flight);
            self.flight.state.send_replace(State::Abandoned);
        }
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
pub(crate) fn follow(reader: Reader, mut out: ChannelWriter) {
    let Reader {
        mut file,
        mut state,
        recent,
        regenerate,
    } = reader;
    let runtime = tokio::runtime::Handle::try_current().ok();
    let mut sent = 0u64;
    let mut file_pos = 0u64;
    let mut tail: Vec<u8> = Vec::with_capacity(CHECKED_TAIL);
    loop {
        let now = state.borrow_and_update().clone();
        let (limit, end) = match &now {
            State::Writing(n) => (*n, None),
            State::Done(n) => (*n, Some(None)),
            State::Failed(n, message) => (*n, Some(Some(message.clone()))),
            State::Abandoned => {
                resume_live(&regenerate, sent, &tail, out);
                return;
            }
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
            let chunk = match recent.from(sent) {
                Some(shared) => shared.slice(..shared.len().min((limit - sent) as usize)),
                None => {
                    // Shared chunks stood in for file reads: the file is behind.
                    if file_pos != sent {
                        if file.seek(std::io::SeekFrom::Start(sent)).is_err() {
                            return;
                        }
                        file_pos = sent;
                    }
                    let want = (limit - sent).min(CHUNK as u64);
                    file_pos += want;
                    let mut chunk = Vec::with_capacity(want as usize);
                    let read = std::io::Read::by_ref(&mut file)
                        .take(want)
                        .read_to_end(&mut chunk);
                    if !matches!(read, Ok(n) if n as u64 == want) {
                        // The file vanished under us: this reader stops, the writer and the
                        // other readers go on.
                        return;
                    }
                    bytes::Bytes::from(chunk)
                }
            };
            let want = chunk.len();
            let keep = chunk.len().min(CHECKED_TAIL);
            if tail.len() + keep > CHECKED_TAIL {
                tail.drain(..(tail.len() + keep - CHECKED_TAIL));
            }
            tail.extend_from_slice(&chunk[chunk.len() - keep..]);
            if out.send_bytes(chunk).is_err() {
                // The client left.
                return;
            }
            sent += want as u64;
        }
        if end.is_some() {
            let _ = out.flush();
            return;
        }
        let _ = out.flush();
        // Wait for more bytes, or for the client to leave (then this thread is free at once,
        // and a generation nobody reads any more is not started).
        let changed = match &runtime {
            Some(rt) => rt.block_on(async {
                tokio::select! {
                    changed = state.changed() => Some(changed),
                    () = out.closed() => None,
                }
            }),
            None => return,
        };
        let Some(changed) = changed else {
            return;
        };
        if changed.is_err() {
            out.abort(std::io::Error::other("response generation ended abruptly"));
            return;
        }
    }
}

/// Finish a response of which `sent` bytes (ending with `tail`) went out, by generating it
/// again and sending what follows them. The regenerated bytes that overlap `tail` must match
/// it, or the response is broken off.
fn resume_live(regenerate: &Regenerate, sent: u64, tail: &[u8], mut out: ChannelWriter) {
    let mut resume = Resume {
        out: &mut out,
        skip: sent,
        tail,
        pos: 0,
    };
    let result = regenerate(&mut resume);
    let pos = resume.pos;
    match result {
        Ok(()) if pos >= sent => {
            let _ = out.flush();
        }
        Ok(()) => out.abort(std::io::Error::other(
            "the response generated again is shorter than what was sent",
        )),
        Err(message) if sent == 0 && out.sent() == 0 => {
            out.discard_buffered();
            let mut line = Vec::new();
            let _ = gitcache_protocol::pktline::write_error(&mut line, message.as_bytes());
            let _ = out.write_all(&line).and_then(|()| out.flush());
        }
        Err(message) => out.abort(std::io::Error::other(message)),
    }
}

/// Passes on what a regenerated response holds past `skip` bytes, checking the bytes
/// before it against `tail`.
struct Resume<'a> {
    out: &'a mut ChannelWriter,
    skip: u64,
    tail: &'a [u8],
    pos: u64,
}

impl Write for Resume<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let start = self.pos;
        let end = start + data.len() as u64;
        let tail_start = self.skip - self.tail.len() as u64;
        let (lo, hi) = (start.max(tail_start), end.min(self.skip));
        if lo < hi {
            let ours = &data[(lo - start) as usize..(hi - start) as usize];
            let sent = &self.tail[(lo - tail_start) as usize..(hi - tail_start) as usize];
            if ours != sent {
                return Err(std::io::Error::other(
                    "the response generated again differs from what was sent",
                ));
            }
        }
        if end > self.skip {
            let from = (self.skip.max(start) - start) as usize;
            self.out.write_all(&data[from..])?;
        }
        self.pos = end;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
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
        let mut chunk = Vec::with_capacity(want);
        let read = std::io::Read::by_ref(entry.file())
            .take(want as u64)
            .read_to_end(&mut chunk);
        if !matches!(read, Ok(n) if n == want) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn writer_of(bytes: Vec<u8>) -> Regenerate {
        Arc::new(move |out: &mut dyn Write| {
            for chunk in bytes.chunks(10_000) {
                out.write_all(chunk).map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())
        })
    }

    /// Each reader followed on a blocking thread, into a channel of `capacity` chunks.
    fn read_all(
        readers: Vec<Reader>,
        capacity: usize,
    ) -> Vec<tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>> {
        readers
            .into_iter()
            .map(|reader| {
                let (tx, rx) = tokio::sync::mpsc::channel(capacity);
                tokio::task::spawn_blocking(move || {
                    follow(reader, ChannelWriter::new(tx, Duration::from_secs(30)))
                });
                rx
            })
            .collect()
    }

    /// Write the first `n` bytes into `generation` (one chunk reaches the file); the rest to
    /// write later.
    async fn write_first(
        mut generation: Box<Generation>,
        bytes: &[u8],
        n: usize,
    ) -> (Box<Generation>, Vec<u8>) {
        let first = bytes[..n].to_vec();
        let generation = tokio::task::spawn_blocking(move || {
            generation.write_all(&first).unwrap();
            generation
        })
        .await
        .unwrap();
        (generation, bytes[n..].to_vec())
    }

    /// Lead one generation of `bytes` into a store that fails after 100 kB, with two
    /// readers; returns what each reader's client received (`Err` when it was broken off).
    async fn failing_store(
        bytes: Vec<u8>,
        regenerate: Regenerate,
    ) -> (Vec<Result<Vec<u8>, String>>, Arc<ResponseCache>) {
        let root = tempfile::tempdir().unwrap();
        let mut cache =
            ResponseCache::new(root.path().join("r"), ResponseCacheConfig::default()).unwrap();
        cache.fail_store_after = Some(100_000);
        let cache = Arc::new(cache);
        let repo = Path::new("h/o/r.git");
        let Lookup::Lead(generation, first_reader) =
            cache.lookup(repo, "k", Arc::clone(&regenerate))
        else {
            panic!("the first request leads");
        };
        let Lookup::Follow(second_reader) = cache.lookup(repo, "k", writer_of(Vec::new())) else {
            panic!("the second request follows");
        };
        let mut bodies = read_all(vec![first_reader, second_reader], 4);
        // The first 70 kB: one chunk reaches the file, and both readers send it on before
        // the rest is written and the store fails.
        let (mut generation, rest) = write_first(generation, &bytes, 70_000).await;
        let mut received = Vec::new();
        for rx in &mut bodies {
            let mut body = Vec::new();
            while body.len() < CHUNK {
                body.extend_from_slice(&rx.recv().await.unwrap().unwrap());
            }
            received.push(Ok(body));
        }
        let leader = Arc::clone(&cache);
        tokio::task::spawn_blocking(move || {
            let result = generation.write_all(&rest);
            leader.finish(generation, result.err().map(|e| e.to_string()));
        })
        .await
        .unwrap();
        for (mut rx, body) in bodies.into_iter().zip(&mut received) {
            while let Some(chunk) = rx.recv().await {
                match chunk {
                    Ok(data) => body.as_mut().unwrap().extend_from_slice(&data),
                    Err(err) => {
                        *body = Err(err.to_string());
                        break;
                    }
                }
            }
        }
        assert!(
            cache.store.open(repo, "k").unwrap().is_none(),
            "nothing stored"
        );
        drop(root);
        (received, cache)
    }

    /// Issue 6: a disk-full error midway falls back to generating live, for the leader's
    /// client and for those who joined it, with the same bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_failing_midway_falls_back_to_live_generation() {
        let bytes = content(300_000);
        let (received, cache) = failing_store(bytes.clone(), writer_of(bytes.clone())).await;
        for body in received {
            assert!(
                body.as_ref().unwrap() == &bytes,
                "{:?}",
                body.map(|b| b.len())
            );
        }
        assert_eq!(cache.stats().abandoned.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats().stored.load(Ordering::Relaxed), 0);
    }

    /// A regenerated answer that does not continue what was sent is broken off, never
    /// spliced onto it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_regenerated_answer_that_differs_is_broken_off() {
        let bytes = content(300_000);
        let mut other = bytes.clone();
        // Inside the last bytes the readers sent before the store failed (65,536 or 70,000,
        // as they happened to read).
        other[65_000] ^= 1;
        other[69_000] ^= 1;
        let (received, _) = failing_store(bytes.clone(), writer_of(other)).await;
        for body in received {
            let Err(message) = body else {
                panic!("the response was completed, not broken off");
            };
            assert!(message.contains("differs"), "{message}");
        }
    }

    /// Readers that keep up send the generation's own buffers: however many join, the
    /// bytes in memory are the same ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_that_keep_up_share_the_writers_buffers() {
        let root = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            ResponseCache::new(root.path().join("r"), ResponseCacheConfig::default()).unwrap(),
        );
        let repo = Path::new("h/o/r.git");
        let bytes = content(200_000);
        let Lookup::Lead(generation, first) = cache.lookup(repo, "k", writer_of(Vec::new())) else {
            panic!("the first request leads");
        };
        let mut readers = vec![first];
        for _ in 0..3 {
            let Lookup::Follow(reader) = cache.lookup(repo, "k", writer_of(Vec::new())) else {
                panic!("later requests follow");
            };
            readers.push(reader);
        }
        let recent = Arc::clone(&readers[0].recent);
        let mut bodies = read_all(readers, 64);
        // One chunk, then wait until every reader sent it on.
        let (mut generation, rest) = write_first(generation, &bytes, 70_000).await;
        let shared = recent.from(0).expect("the first chunk is kept").as_ptr();
        for rx in &mut bodies {
            let chunk = rx.recv().await.unwrap().unwrap();
            assert_eq!(chunk.as_ptr(), shared, "a shared buffer, not a copy");
        }
        let leader = Arc::clone(&cache);
        tokio::task::spawn_blocking(move || {
            generation.write_all(&rest).unwrap();
            leader.finish(generation, None);
        })
        .await
        .unwrap();
        for mut rx in bodies {
            let mut body = bytes[..70_000].to_vec();
            while let Some(chunk) = rx.recv().await {
                body.extend_from_slice(&chunk.unwrap());
            }
            assert!(body == bytes, "every reader gets every byte");
        }
        assert!(cache.store.open(repo, "k").unwrap().is_some(), "stored");
    }

    #[test]
    fn resuming_checks_the_overlap_and_skips_what_was_sent() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut out = ChannelWriter::new(tx, Duration::from_secs(1));
        let bytes = content(1000);
        let mut resume = Resume {
            out: &mut out,
            skip: 600,
            tail: &bytes[500..600],
            pos: 0,
        };
        for chunk in bytes.chunks(77) {
            resume.write_all(chunk).unwrap();
        }
        resume.flush().unwrap();
        let mut got = Vec::new();
        while let Ok(Ok(chunk)) = rx.try_recv() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, &bytes[600..]);

        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let mut out = ChannelWriter::new(tx, Duration::from_secs(1));
        let mut tail = bytes[500..600].to_vec();
        tail[99] ^= 0xff;
        let mut resume = Resume {
            out: &mut out,
            skip: 600,
            tail: &tail,
            pos: 0,
        };
        assert!(resume.write_all(&bytes).is_err());
    }

    /// Issue 12: a leader whose generation never runs (its client left while it waited for a
    /// pack slot, or its task panicked) hands its readers over to live generation instead of
    /// leaving them waiting forever; the next request leads anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_of_a_leader_dropped_unfinished_finish_live() {
        let root = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            ResponseCache::new(root.path().join("r"), ResponseCacheConfig::default()).unwrap(),
        );
        let repo = Path::new("h/o/r.git");
        let bytes = content(150_000);
        let Lookup::Lead(generation, first) = cache.lookup(repo, "k", writer_of(bytes.clone()))
        else {
            panic!("the first request leads");
        };
        let Lookup::Follow(second) = cache.lookup(repo, "k", writer_of(Vec::new())) else {
            panic!("the second request follows");
        };
        // The leader's client stays (its reader is followed) but its generation is dropped
        // before writing a byte, as when the task awaiting its pack slot is cancelled.
        let bodies = read_all(vec![first, second], 4);
        drop(generation);
        for mut rx in bodies {
            let mut body = Vec::new();
            let got = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(chunk) = rx.recv().await {
                    body.extend_from_slice(&chunk.unwrap());
                }
            })
            .await;
            assert!(got.is_ok(), "a reader was left waiting");
            assert!(body == bytes, "{} bytes", body.len());
        }
        assert!(cache.flights.lock().unwrap().is_empty(), "off the list");
        assert!(
            matches!(
                cache.lookup(repo, "k", writer_of(Vec::new())),
                Lookup::Lead(..)
            ),
            "the next request leads a new generation"
        );
    }
}
