//! Bodies: the one response body type (bytes, a stream fed by a blocking writer, or an
//! upstream response passed on), and reading request bodies within limits.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gitcache_upstream::ResponseBody;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
#[derive(Debug)]
pub struct Body(Kind, Option<Held>);

/// What a body keeps until it is sent or dropped.
struct Held {
    _kept: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    /// An upstream's body, and the longest it may keep the client waiting for its next
    /// bytes (with the deadline of the wait under way, if one is), and when it must have
    /// ended, if it must.
    Upstream(
        ResponseBody,
        std::time::Duration,
        Option<Pin<Box<tokio::time::Sleep>>>,
        Option<Box<Deadline>>,
    ),
    /// These bytes, then that body.
    After(Option<Bytes>, Box<Body>),
}

impl Body {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body(Kind::Full((!bytes.is_empty()).then_some(bytes)), None)
    }

    /// An empty body.
    pub fn empty() -> Self {
        Body(Kind::Full(None), None)
    }

    /// A body of the chunks sent into the other end of `rx`; an `Err` ends it abruptly, so
    /// the client sees a broken response rather than a short one.
    pub fn channel(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Self {
        Body(Kind::Channel(rx), None)
    }

    /// An upstream response body, passed on as it arrives; an upstream that keeps the
    /// client waiting longer than `idle` for its next bytes breaks it off (the time a slow
    /// client takes to read does not count: only waits for the upstream do).
    pub fn upstream(body: ResponseBody, idle: std::time::Duration) -> Self {
        Body(Kind::Upstream(body, idle, None, None), None)
    }

    /// [`upstream`](Self::upstream), broken off if it has not ended `total` from now (a
    /// client reading slowly counts here too).
    pub fn upstream_within(
        body: ResponseBody,
        idle: std::time::Duration,
        total: std::time::Duration,
    ) -> Self {
        let deadline = Box::new(Deadline {
            total,
            sleep: Box::pin(tokio::time::sleep(total)),
        });
        Body(Kind::Upstream(body, idle, None, Some(deadline)), None)
    }

    /// `first`, then `rest`: a body of which the first bytes were read already.
    pub fn after(first: impl Into<Bytes>, rest: Body) -> Self {
        let first = first.into();
        Body(
            Kind::After((!first.is_empty()).then_some(first), Box::new(rest)),
            None,
        )
    }

    /// This body, keeping `held` until it is sent whole or dropped (a client gone).
    pub fn holding(mut self, held: impl Send + Sync + 'static) -> Self {
        self.1 = Some(Held {
            _kept: Box::new(held),
        });
        self
    }
}

/// When an upstream's body must have ended (see [`Body::upstream_within`]).
#[derive(Debug)]
struct Deadline {
    total: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// The next frame of an upstream's body, or an error once it kept the client waiting longer
/// than `idle` (the deadline of the wait under way in `waiting`).
fn poll_upstream(
    body: &mut ResponseBody,
    idle: std::time::Duration,
    waiting: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    match hyper::body::Body::poll_frame(Pin::new(body), cx) {
        Poll::Ready(frame) => {
            *waiting = None;
            Poll::Ready(frame.map(|f| f.map_err(Into::into)))
        }
        Poll::Pending => {
            let deadline = waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "the upstream sent nothing for {idle:?}"
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match &mut this.0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data).map_err(Into::into))),
            Kind::Upstream(body, idle, waiting, total) => {
                let mut over = None;
                if let Some(deadline) = total
                    && deadline.sleep.as_mut().poll(cx).is_ready()
                {
                    over = Some(deadline.total);
                }
                match over {
                    Some(total) => Poll::Ready(Some(Err(format!(
                        "the upstream's answer did not end within {total:?}"
                    )
                    .into()))),
                    None => poll_upstream(body, *idle, waiting, cx),
                }
            }
            Kind::After(first, rest) => match first.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        };
        if let Poll::Ready(None | Some(Err(_))) = frame {
            // Sent whole (or broken off): what it held is let go now, whenever the server
            // drops the body.
            this.1 = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Channel(_) => false,
            Kind::Upstream(body, ..) => body.is_end_stream(),
            Kind::After(first, rest) => first.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Channel(_) => SizeHint::default(),
            Kind::Upstream(body, ..) => body.size_hint(),
            Kind::After(first, rest) => {
                let first = first.as_ref().map_or(0, |b| b.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(first));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(first));
                }
                hint
            }
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Larger than allowed (before or after decoding).
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The client stopped sending.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed while reading.
    #[error("reading the request body failed: {0}")]
    Receive(String),
    /// A `Content-Encoding` that is not `gzip` or `identity`.
    #[error("unsupported content encoding '{0}'")]
    Encoding(String),
    /// The gzip stream is broken.
    #[error("request body is not valid gzip: {0}")]
    Gzip(std::io::Error),
    /// The bytes request bodies may hold at once are taken: try again shortly.
    #[error("too many request bodies held at once; try again shortly")]
    Busy,
}

impl ReadError {
    /// The HTTP status for this error.
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            ReadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ReadError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ReadError::Receive(_) | ReadError::Gzip(_) => StatusCode::BAD_REQUEST,
            ReadError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Read a whole request body of at most `limit` bytes (also after gzip decoding), within
/// `timeout`. The decoding runs where this is awaited; the proxy uses [`receive_body`] and
/// decodes on a blocking thread instead.
pub async fn read_request_body<B>(
    headers: &hyper::HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    receive_body(headers, body, limit, timeout)
        .await?
        .decode(limit)
}

/// A request body as received, not yet decoded.
#[derive(Debug)]
pub struct Received {
    raw: Bytes,
    gzip: bool,
    /// Its share of a [`BodyBudget`], if it is read within one.
    held: Option<(BodyBudget, tokio::sync::OwnedSemaphorePermit)>,
}

impl Received {
    /// The body as sent by the client, gunzipped when it was compressed, refused past `limit`
    /// bytes. CPU work: run it off the async workers. Read within a [`BodyBudget`], the bytes
    /// returned keep their share of it until the last of them is dropped (a gunzipped body
    /// takes its own share, [`ReadError::Busy`] when there is none).
    pub fn decode(self, limit: usize) -> Result<Bytes, ReadError> {
        let Some((budget, mut permit)) = self.held else {
            return if self.gzip {
                gunzip(&self.raw, limit)
            } else {
                Ok(self.raw)
            };
        };
        if self.gzip {
            // The share covers the raw bytes and the decoded ones' allocation as it grows,
            // so a small body inflating to the limit takes its size of the budget while it
            // is decoded, not after.
            let raw = self.raw.len();
            let mut decoded = gunzip_counted(&self.raw, limit, |capacity| {
                budget.top_up(&mut permit, raw + capacity)
            })?;
            drop(self.raw);
            decoded.shrink_to_fit();
            budget.shrink(&mut permit, decoded.capacity());
            Ok(Bytes::from_owner(Budgeted {
                bytes: Bytes::from(decoded),
                _share: permit,
            }))
        } else {
            Ok(Bytes::from_owner(Budgeted {
                bytes: self.raw,
                _share: permit,
            }))
        }
    }
}

/// Bytes and their share of a [`BodyBudget`], let go together.
struct Budgeted {
    bytes: Bytes,
    _share: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A byte budget that request bodies share while they are read and held, so that many
/// clients sending large bodies at once cannot take more memory than it allows, whatever the
/// number of connections: a body that finds it spent is refused ([`ReadError::Busy`], `503`).
/// Counted in units of [`BodyBudget::UNIT`] bytes.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<tokio::sync::Semaphore>);

impl BodyBudget {
    /// The unit of account.
    pub const UNIT: usize = 64 << 10;

    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let units =
            (bytes / Self::UNIT as u64).clamp(1, tokio::sync::Semaphore::MAX_PERMITS as u64);
        BodyBudget(Arc::new(tokio::sync::Semaphore::new(units as usize)))
    }

    /// Bytes of the budget not held now.
    pub fn available(&self) -> u64 {
        self.0.available_permits() as u64 * Self::UNIT as u64
    }

    /// Make `permit` stand for `bytes`, taking more of the budget if it must.
    fn top_up(
        &self,
        permit: &mut tokio::sync::OwnedSemaphorePermit,
        bytes: usize,
    ) -> Result<(), ReadError> {
        let need = bytes.div_ceil(Self::UNIT).max(1);
        let have = permit.num_permits();
        if need > have {
            let more = u32::try_from(need - have).map_err(|_| ReadError::Busy)?;
            let more = Arc::clone(&self.0)
                .try_acquire_many_owned(more)
                .map_err(|_| ReadError::Busy)?;
            permit.merge(more);
        }
        Ok(())
    }

    /// Give back what `permit` holds beyond `bytes` (at least one unit stays).
    fn shrink(&self, permit: &mut tokio::sync::OwnedSemaphorePermit, bytes: usize) {
        let keep = bytes.div_ceil(Self::UNIT).max(1);
        if permit.num_permits() > keep {
            drop(permit.split(permit.num_permits() - keep));
        }
    }

    /// A first share, of one unit.
    fn first(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ReadError> {
        Arc::clone(&self.0)
            .try_acquire_owned()
            .map_err(|_| ReadError::Busy)
    }
}

/// A copy of bytes passing through (an answer passed on), kept within a [`BodyBudget`] and a
/// bound of its own: once either says no, the copy is given up, and its share with it.
#[derive(Debug)]
pub(crate) struct BudgetedCopy {
    budget: BodyBudget,
    limit: usize,
    kept: Option<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>)>,
}

impl BudgetedCopy {
    pub(crate) fn new(budget: BodyBudget, limit: usize) -> Self {
        BudgetedCopy {
            budget,
            limit,
            kept: Some((Vec::new(), None)),
        }
    }

    /// Keep `data` too; `false` when the copy is given up (now or before).
    pub(crate) fn push(&mut self, data: &[u8]) -> bool {
        let Some((copy, share)) = self.kept.as_mut() else {
            return false;
        };
        if copy.len() + data.len() > self.limit {
            self.kept = None;
            return false;
        }
        let budget = &self.budget;
        let grown = grow(copy, data.len(), self.limit, |capacity| {
            let permit = match share {
                Some(permit) => permit,
                None => share.insert(budget.first()?),
            };
            budget.top_up(permit, capacity)
        });
        if grown.is_err() {
            self.kept = None;
            return false;
        }
        copy.extend_from_slice(data);
        true
    }

    /// The bytes kept, with their share of the budget (held until both are dropped); `None`
    /// if the copy was given up.
    pub(crate) fn finish(self) -> Option<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>)> {
        self.kept
    }
}

/// Receive a whole request body of at most `limit` bytes within `timeout`, checking its
/// `Content-Encoding` (gzip or none) but not decoding it yet.
pub async fn receive_body<B>(
    headers: &hyper::HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Received, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    receive_body_within(headers, body, limit, timeout, None).await
}

/// [`receive_body`], the bytes held counted against `budget` as they arrive.
pub async fn receive_body_within<B>(
    headers: &hyper::HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
    budget: Option<&BodyBudget>,
) -> Result<Received, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let encoding = headers.get(hyper::header::CONTENT_ENCODING).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .trim()
            .to_ascii_lowercase()
    });
    let gzip = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => return Err(ReadError::Encoding(other.to_owned())),
    };
    let mut held = match budget {
        Some(budget) => Some((budget.clone(), budget.first()?)),
        None => None,
    };
    let raw = tokio::time::timeout(timeout, collect_limited(body, limit, &mut held))
        .await
        .map_err(|_| ReadError::Timeout(timeout))??;
    Ok(Received { raw, gzip, held })
}

async fn collect_limited<B>(
    body: B,
    limit: usize,
    held: &mut Option<(BodyBudget, tokio::sync::OwnedSemaphorePermit)>,
) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Receive(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ReadError::TooLarge { limit });
            }
            // What is allocated is counted, not what is filled: the buffer doubles, within
            // the limit.
            grow(&mut out, data.len(), limit, |capacity| {
                match held.as_mut() {
                    Some((budget, permit)) => budget.top_up(permit, capacity),
                    None => Ok(()),
                }
            })?;
            out.extend_from_slice(&data);
        }
    }
    if out.capacity() > out.len()
        && let Some((budget, permit)) = held.as_mut()
    {
        out.shrink_to_fit();
        budget.shrink(permit, out.capacity());
    }
    Ok(Bytes::from(out))
}

/// Make room in `out` for `more` bytes, doubling its allocation (at most to `limit`), after
/// `account` agreed to the new capacity.
fn grow(
    out: &mut Vec<u8>,
    more: usize,
    limit: usize,
    account: impl FnOnce(usize) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let need = out.len() + more;
    if need > out.capacity() {
        let capacity = need.max(out.capacity().saturating_mul(2).max(1024).min(limit));
        account(capacity)?;
        out.reserve_exact(capacity - out.len());
    }
    Ok(())
}

/// Decode a gzip body, refusing to inflate past `limit`, with `account` asked before the
/// decoded bytes' allocation grows (to the capacity it grows to).
fn gunzip_counted(
    raw: &[u8],
    limit: usize,
    mut account: impl FnMut(usize) -> Result<(), ReadError>,
) -> Result<Vec<u8>, ReadError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut decoded = Vec::new();
    let mut chunk = vec![0; 64 << 10];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ReadError::Gzip(err)),
        };
        if decoded.len() + n > limit {
            return Err(ReadError::TooLarge { limit });
        }
        grow(&mut decoded, n, limit, &mut account)?;
        decoded.extend_from_slice(&chunk[..n]);
    }
    Ok(decoded)
}

/// Decode a gzip body, refusing to inflate past `limit`.
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, ReadError> {
    let mut decoded = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(ReadError::Gzip)?;
    if decoded.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(decoded.into())
}

/// Where responses put what their clients have not taken yet, so that a writer need not wait
/// for a slow reader: a byte budget all of them share, a cap for each, and free space kept on
/// the disk. Each response that falls behind gets an unnamed file in the directory (nothing is
/// left behind if the process dies), emptied whenever its client catches up.
#[derive(Debug, Clone)]
pub struct Spill(Arc<SpillArea>);

#[derive(Debug)]
struct SpillArea {
    dir: PathBuf,
    limit: u64,
    per_response: u64,
    min_free: u64,
    used: AtomicU64,
}

/// Spilled bytes between two looks at the disk's free space.
const FREE_SPACE_EVERY: u64 = 16 << 20;

impl Spill {
    /// Spill files in `dir`, at most `limit` bytes in all and `per_response` in one, written
    /// only while the disk keeps `min_free` bytes free; past any of these, a writer waits for
    /// its client again. A `limit` of 0 spills nothing.
    pub fn new(dir: impl Into<PathBuf>, limit: u64, per_response: u64, min_free: u64) -> Self {
        Spill(Arc::new(SpillArea {
            dir: dir.into(),
            limit,
            per_response,
            min_free,
            used: AtomicU64::new(0),
        }))
    }

    /// Bytes in spill files (a file's bytes count until its client has taken all of them).
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: u64) -> bool {
        let reserved = self
            .0
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= self.0.limit)
            })
            .is_ok();
        if reserved {
            crate::metrics::spilled(bytes as f64);
        }
        reserved
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.0.used.fetch_sub(bytes, Ordering::Relaxed);
            crate::metrics::spilled(-(bytes as f64));
        }
    }

    /// Whether the disk keeps its free space with `bytes` more written.
    fn has_room(&self, bytes: u64) -> bool {
        gitcache_storage::fs::free_bytes(&self.0.dir)
            .is_ok_and(|free| free >= self.0.min_free.saturating_add(bytes))
    }
}

/// What a writer spilled and has not handed over yet: `file` from `forwarded` to `written`.
/// The space of what was handed over is given back as it goes (up to `punched`), so the
/// budget holds what clients have yet to take, not what they took.
#[derive(Debug)]
struct Backlog {
    spill: Spill,
    file: Option<std::fs::File>,
    written: u64,
    forwarded: u64,
    /// Handed-over bytes before this offset are given back to the disk and the budget.
    punched: u64,
    /// Where the disk's free space is looked at next.
    look_at: u64,
    /// The spill file could not be made or written: the writer waits for its client.
    failed: bool,
    /// The file system keeps what is handed over until the file is emptied.
    no_holes: bool,
}

/// Handed-over bytes given back to the disk at a time.
const PUNCH_EVERY: u64 = 1 << 20;

impl Backlog {
    fn new(spill: Spill) -> Self {
        Backlog {
            spill,
            file: None,
            written: 0,
            forwarded: 0,
            punched: 0,
            look_at: 0,
            failed: false,
            no_holes: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.forwarded == self.written
    }

    /// Bytes counted against the budget: in the file and not given back.
    fn held(&self) -> u64 {
        self.written - self.punched
    }

    /// Put `chunk` at the end of the file; `false` if a budget or the disk has no room.
    fn append(&mut self, chunk: &[u8]) -> bool {
        let len = chunk.len() as u64;
        if self.failed || self.held() + len > self.spill.0.per_response {
            return false;
        }
        if self.held() + len > self.look_at {
            if !self.spill.has_room(FREE_SPACE_EVERY) {
                return false;
            }
            self.look_at = self.held() + FREE_SPACE_EVERY;
        }
        if !self.spill.reserve(len) {
            return false;
        }
        let file = match &self.file {
            Some(file) => Ok(file),
            None => tempfile::tempfile_in(&self.spill.0.dir).map(|f| &*self.file.insert(f)),
        };
        match file.and_then(|f| f.write_all_at(chunk, self.written)) {
            Ok(()) => {
                self.written += len;
                true
            }
            Err(err) => {
                tracing::warn!(%err, "cannot spill a response; it waits for its client");
                self.spill.release(len);
                self.failed = true;
                false
            }
        }
    }

    /// The next chunk of the file to hand over; [`handed_over`](Self::handed_over) once it is.
    fn next_chunk(&self) -> std::io::Result<Bytes> {
        let len = (self.written - self.forwarded).min(CHUNK as u64) as usize;
        let mut chunk = vec![0; len];
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("spilled bytes without a spill file"))?;
        file.read_exact_at(&mut chunk, self.forwarded)?;
        Ok(Bytes::from(chunk))
    }

    /// `len` more bytes reached the channel: the file is emptied once all did, and the space
    /// of what did is given back every [`PUNCH_EVERY`] bytes.
    fn handed_over(&mut self, len: u64) {
        self.forwarded += len;
        if self.is_empty() {
            if let Some(file) = &self.file
                && file.set_len(0).is_err()
            {
                self.file = None;
            }
            self.spill.release(self.held());
            self.written = 0;
            self.forwarded = 0;
            self.punched = 0;
            self.look_at = 0;
        } else if !self.no_holes && self.forwarded - self.punched >= PUNCH_EVERY {
            let Some(file) = &self.file else { return };
            match gitcache_storage::fs::punch_hole(
                file,
                self.punched,
                self.forwarded - self.punched,
            ) {
                Ok(()) => {
                    self.spill.release(self.forwarded - self.punched);
                    self.look_at = self.look_at.saturating_sub(self.forwarded - self.punched);
                    self.punched = self.forwarded;
                }
                Err(_) => self.no_holes = true,
            }
        }
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.spill.release(self.held());
    }
}

/// A blocking [`Write`] that hands its bytes, in chunks, to a [`Body::channel`]. It fails
/// with `BrokenPipe` once the response is dropped (the client went away), and with `TimedOut`
/// when the client stops reading for longer than the stall timeout; either stops the writer
/// promptly, so a client cannot hold a pack generation slot by not reading. After such a
/// failure every later write or [`finish`](Self::finish) fails at once.
///
/// A writer that [spills](Self::spill_to) does not wait for its client while writing: what
/// the client has not taken goes to a spill file, and [`finish`](Self::finish) hands it over
/// once the writer is done (and its pack slot free).
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    sent: u64,
    stall: Duration,
    /// The runtime whose timer bounds a stalled send (none outside a runtime: no bound).
    runtime: Option<tokio::runtime::Handle>,
    backlog: Option<Backlog>,
    /// A send failed: the client is gone or stopped reading.
    broken: Option<std::io::ErrorKind>,
    /// When waiting for the client, give up once others have waited this long.
    give_way: Option<GiveWay>,
    /// How long, in all, this writer waited for its client while others waited for a slot.
    contested_wait: std::cell::Cell<Duration>,
}

/// What a writer holding a pack slot checks while it waits for its client: whether others
/// wait for a slot, and how long it keeps its own then.
#[derive(Clone)]
pub struct GiveWay {
    contested: Arc<dyn Fn() -> bool + Send + Sync>,
    grace: Duration,
}

impl GiveWay {
    /// Give way once `contested` has held for `grace` while the writer waited.
    pub fn new(contested: Arc<dyn Fn() -> bool + Send + Sync>, grace: Duration) -> Self {
        GiveWay { contested, grace }
    }

    /// Whether others wait now.
    pub fn is_contested(&self) -> bool {
        (self.contested)()
    }
}

impl std::fmt::Debug for GiveWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiveWay")
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// How often a writer that may have to give way looks again while it waits.
const GIVE_WAY_POLL: Duration = Duration::from_millis(200);

/// Bytes gathered before a chunk is handed over.
const CHUNK: usize = 64 << 10;

impl ChannelWriter {
    /// A writer into `tx`, giving up when a chunk waits longer than `stall` to be taken.
    pub fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>, stall: Duration) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            sent: 0,
            stall,
            runtime: tokio::runtime::Handle::try_current().ok(),
            backlog: None,
            broken: None,
            give_way: None,
            contested_wait: std::cell::Cell::new(Duration::ZERO),
        }
    }

    /// While `give_way` is set, waiting for the client ends in `TimedOut` once others have
    /// waited for a pack slot for its grace: for a writer holding a slot, so that a client
    /// reading slowly cannot keep it while others wait. `None` once the slot is given back.
    pub fn give_way(&mut self, give_way: Option<GiveWay>) {
        self.give_way = give_way;
    }

    /// From now on, put what the client has not taken into `spill` rather than wait for it
    /// (while the budget lasts); [`finish`](Self::finish) hands it all over.
    pub fn spill_to(&mut self, spill: Spill) {
        if self.backlog.is_none() {
            self.backlog = Some(Backlog::new(spill));
        }
    }

    /// Hand over everything written, waiting for the client as long as it keeps reading
    /// (each chunk within the stall timeout).
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.send_buffered()?;
        self.drain()
    }

    /// Bytes spilled and not yet handed over.
    pub fn backlog(&self) -> u64 {
        self.backlog.as_ref().map_or(0, |b| b.written - b.forwarded)
    }

    /// Bytes handed over so far (not counting what is still buffered).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Drop what is buffered and not yet handed over.
    pub fn discard_buffered(&mut self) {
        self.buf.clear();
    }

    /// Whether the receiving response is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the receiving response is gone (the client left).
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// End the body abruptly with `err` (at once if the client already stopped reading).
    pub fn abort(self, err: std::io::Error) {
        if self.broken.is_some() {
            let _ = self.tx.try_send(Err(err));
        } else {
            let _ = self.wait_to_send_result(Err(err));
        }
    }

    fn check(&self) -> std::io::Result<()> {
        match self.broken {
            Some(kind) => Err(std::io::Error::new(kind, "the response was given up")),
            None if self.tx.is_closed() => Err(gone()),
            None => Ok(()),
        }
    }

    fn send_buffered(&mut self) -> std::io::Result<()> {
        self.check()?;
        if self.buf.is_empty() {
            return self.forward().map(|_| ());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.send(chunk)
    }

    /// Hand `chunk` over as it is (after anything buffered), without copying it.
    pub fn send_bytes(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.send_buffered()?;
        self.send(chunk)
    }

    fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        let len = chunk.len() as u64;
        if self.backlog.is_some() {
            if self.forward()? {
                match self.tx.try_reserve() {
                    Ok(permit) => {
                        permit.send(Ok(chunk));
                        self.sent += len;
                        crate::metrics::pack_sent(len);
                        return Ok(());
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return Err(gone()),
                    Err(mpsc::error::TrySendError::Full(())) => {}
                }
            }
            if self.backlog.as_mut().is_some_and(|b| b.append(&chunk)) {
                self.sent += len;
                return Ok(());
            }
            // No room to spill: the client's backlog first, then this chunk, waiting for it.
            self.drain()?;
        }
        self.wait_to_send(chunk)?;
        self.sent += len;
        Ok(())
    }

    /// Hand over spilled chunks while the channel has room; `true` once none are left.
    fn forward(&mut self) -> std::io::Result<bool> {
        let Some(backlog) = &mut self.backlog else {
            return Ok(true);
        };
        while !backlog.is_empty() {
            let permit = match self.tx.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => return Ok(false),
                Err(mpsc::error::TrySendError::Closed(())) => return Err(gone()),
            };
            let chunk = backlog.next_chunk()?;
            let len = chunk.len() as u64;
            permit.send(Ok(chunk));
            crate::metrics::pack_sent(len);
            backlog.handed_over(len);
        }
        Ok(true)
    }

    /// Hand over every spilled chunk, waiting for the client.
    fn drain(&mut self) -> std::io::Result<()> {
        while let Some(backlog) = self.backlog.as_ref().filter(|b| !b.is_empty()) {
            let chunk = backlog.next_chunk()?;
            let len = chunk.len() as u64;
            self.wait_to_send(chunk)?;
            if let Some(backlog) = &mut self.backlog {
                backlog.handed_over(len);
            }
        }
        Ok(())
    }

    /// Hand `chunk` over, waiting for room at most the stall timeout.
    fn wait_to_send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        let len = chunk.len() as u64;
        match self.wait_to_send_result(Ok(chunk)) {
            Ok(()) => {
                crate::metrics::pack_sent(len);
                Ok(())
            }
            Err(err) => {
                self.broken = Some(err.kind());
                Err(err)
            }
        }
    }

    fn wait_to_send_result(&self, item: Result<Bytes, std::io::Error>) -> std::io::Result<()> {
        let Some(runtime) = &self.runtime else {
            return self.tx.blocking_send(item).map_err(|_| gone());
        };
        let started = std::time::Instant::now();
        // Whether others wait for a slot: asked before the first step, then after each.
        let mut contested = self.give_way.as_ref().is_some_and(GiveWay::is_contested);
        loop {
            let left = self.stall.saturating_sub(started.elapsed());
            let step = match &self.give_way {
                Some(_) => left.min(GIVE_WAY_POLL),
                None => left,
            };
            // The time waited counts over every chunk, while someone waits for a slot.
            if let Some(way) = &self.give_way {
                if !contested {
                    self.contested_wait.set(Duration::ZERO);
                } else if self.contested_wait.get() >= way.grace {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "client too slow while other answers wait for a pack slot",
                    ));
                }
            }
            let tried = std::time::Instant::now();
            // `reserve` loses nothing when its wait ends unfinished.
            let reserved = runtime.block_on(tokio::time::timeout(step, self.tx.reserve()));
            contested = self.give_way.as_ref().is_some_and(GiveWay::is_contested);
            if contested {
                self.contested_wait
                    .set(self.contested_wait.get() + tried.elapsed());
            }
            match reserved {
                Ok(Ok(permit)) => {
                    permit.send(item);
                    return Ok(());
                }
                Ok(Err(_)) => return Err(gone()),
                Err(_) => {}
            }
            if started.elapsed() >= self.stall {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client stopped reading",
                ));
            }
        }
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        // What is gathered goes before it would have to grow: growing copied it again (a
        // side-band line of 64 KiB after a few bytes did so for nearly every chunk).
        if !self.buf.is_empty() && self.buf.len() + data.len() > self.buf.capacity() {
            self.send_buffered()?;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        } else if self.backlog.as_ref().is_some_and(|b| !b.is_empty()) {
            // Spilled bytes go on to a client that has room, between chunks too.
            self.forward()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()
    }
}

/// An upstream response for the client: status, headers (minus hop-by-hop) and body as they
/// come.
pub(crate) fn passed_on(
    response: hyper::Response<ResponseBody>,
    started: std::time::Instant,
    idle: std::time::Duration,
) -> hyper::Response<Body> {
    passed_on_as(response, started, |body| Body::upstream(body, idle))
}

/// [`passed_on`], its body broken off if it has not ended within `total`.
pub(crate) fn passed_on_within(
    response: hyper::Response<ResponseBody>,
    started: std::time::Instant,
    idle: std::time::Duration,
    total: std::time::Duration,
) -> hyper::Response<Body> {
    passed_on_as(response, started, |body| {
        Body::upstream_within(body, idle, total)
    })
}

fn passed_on_as(
    response: hyper::Response<ResponseBody>,
    started: std::time::Instant,
    body_of: impl FnOnce(ResponseBody) -> Body,
) -> hyper::Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions.insert(crate::access_log::UpstreamCall {
        status: parts.status.as_u16(),
        duration_ms: started.elapsed().as_millis() as u64,
    });
    hyper::Response::from_parts(parts, body_of(body))
}

/// Drop the headers that belong to one connection, or that would apply to gitcache's own
/// address, and confine what a browser does with the answer (see [`confine`]).
pub(crate) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // A body sent in chunks has no length but what its chunks add up to: a `Content-Length`
    // beside `Transfer-Encoding` is not its length (RFC 9112, 6.3), and passed on without
    // the chunking it would frame the answer wrongly.
    if headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        headers.remove(hyper::header::CONTENT_LENGTH);
    }
    // Those a `Connection` header names are hop-by-hop too.
    let named: Vec<hyper::header::HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let names: Vec<_> = headers
        .keys()
        .filter(|name| {
            gitcache_upstream::is_hop_by_hop(name) || not_ours(name) || named.contains(name)
        })
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
    confine(headers);
}

/// Headers of an upstream's answer that would apply to gitcache's own address, which serves
/// several upstreams (and clients that keep them send them back, to whatever host a path
/// names): cookies, HSTS, alternative services, a service worker's scope, the clearing of
/// the address's storage, a timed redirect; and those that tell a proxy in front of gitcache
/// what to serve instead (nginx's `X-Accel-*`, `X-Sendfile` and its kind).
fn not_ours(name: &hyper::header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "set-cookie"
            | "set-cookie2"
            | "strict-transport-security"
            | "alt-svc"
            | "service-worker-allowed"
            | "clear-site-data"
            | "refresh"
            | "x-sendfile"
            | "x-sendfile2"
            | "x-lighttpd-send-file"
            | "x-litespeed-location"
    ) || name.as_str().starts_with("x-accel-")
}

/// What a browser may do with an upstream's answer passed on: nothing but show it. Such an
/// answer comes from gitcache's address, which may serve the admin page too (its token kept
/// in the page's storage): an upstream's page run there as a script would read it. A
/// sandboxed answer runs no script and loads nothing, its type is not guessed, and the
/// upstream's own policy is replaced. Git reads none of these.
fn confine(headers: &mut hyper::HeaderMap) {
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    headers.remove("content-security-policy-report-only");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// Bodies read within a budget hold their share while their bytes live, and one that
    /// finds it spent is refused, not read; a gzipped one holds the share of what it inflates
    /// to.
    #[tokio::test]
    async fn request_bodies_share_a_byte_budget() {
        let unit = BodyBudget::UNIT;
        let budget = BodyBudget::new(4 * unit as u64);
        let headers = hyper::HeaderMap::new();
        let read = |len: usize, headers: hyper::HeaderMap, budget: BodyBudget| async move {
            let body = Full::new(Bytes::from(vec![b'x'; len]));
            receive_body_within(
                &headers,
                body,
                1 << 30,
                Duration::from_secs(5),
                Some(&budget),
            )
            .await
        };
        let first = read(3 * unit, headers.clone(), budget.clone())
            .await
            .unwrap()
            .decode(1 << 30)
            .unwrap();
        assert_eq!(first.len(), 3 * unit);
        assert_eq!(budget.available(), unit as u64);
        let refused = read(2 * unit, headers.clone(), budget.clone()).await;
        assert!(matches!(refused, Err(ReadError::Busy)), "{refused:?}");
        assert_eq!(
            refused.unwrap_err().status(),
            hyper::StatusCode::SERVICE_UNAVAILABLE
        );
        let kept = first.slice(..10);
        drop(first);
        assert_eq!(budget.available(), unit as u64, "a slice keeps the share");
        drop(kept);
        assert_eq!(budget.available(), 4 * unit as u64);
        // Small on the wire, five units once inflated.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![b'y'; 5 * unit]).unwrap();
        let gz = gz.finish().unwrap();
        let mut gzipped = hyper::HeaderMap::new();
        gzipped.insert(
            hyper::header::CONTENT_ENCODING,
            hyper::header::HeaderValue::from_static("gzip"),
        );
        let received = receive_body_within(
            &gzipped,
            Full::new(Bytes::from(gz)),
            1 << 30,
            Duration::from_secs(5),
            Some(&budget),
        )
        .await
        .unwrap();
        assert!(matches!(received.decode(1 << 30), Err(ReadError::Busy)));
        assert_eq!(budget.available(), 4 * unit as u64);
    }

    /// What a body's bytes take is counted as they are allocated: a body read in small
    /// pieces holds its allocation's share while it is read, and a gzip body is refused as
    /// soon as its decoded bytes would outgrow what the budget agrees to, not after.
    #[tokio::test]
    async fn the_budget_counts_allocations_as_they_grow() {
        let unit = BodyBudget::UNIT;
        // A body of 2.5 units in 100-byte frames: read whole, it holds three units (its
        // length, the doubled allocation given back).
        let budget = BodyBudget::new(8 * unit as u64);
        let pieces = (5 * unit / 2) / 100;
        let (tx, rx) = mpsc::channel(pieces);
        for _ in 0..pieces {
            tx.try_send(Ok(Bytes::from(vec![b'z'; 100]))).unwrap();
        }
        drop(tx);
        let body = Body::channel(rx);
        let received = receive_body_within(
            &hyper::HeaderMap::new(),
            body,
            1 << 30,
            Duration::from_secs(5),
            Some(&budget),
        )
        .await
        .unwrap();
        assert_eq!(budget.available(), 5 * unit as u64);
        let bytes = received.decode(1 << 30).unwrap();
        assert_eq!(bytes.len(), (5 * unit / 2) / 100 * 100);
        drop(bytes);
        assert_eq!(budget.available(), 8 * unit as u64);

        // 64 MiB of zeros in about 64 KiB of gzip: the decoding stops at the first growth
        // past what is agreed.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![0; 64 << 20]).unwrap();
        let gz = gz.finish().unwrap();
        let mut asked = Vec::new();
        let refused = gunzip_counted(&gz, 1 << 30, |capacity| {
            asked.push(capacity);
            if capacity > 1 << 20 {
                Err(ReadError::Busy)
            } else {
                Ok(())
            }
        });
        assert!(matches!(refused, Err(ReadError::Busy)), "{refused:?}");
        assert!(asked.iter().all(|&c| c <= 2 << 20), "{asked:?}");
        // Agreed to, the same bytes decode whole within the limit, and not past it.
        let whole = gunzip_counted(&gz, 64 << 20, |_| Ok(())).unwrap();
        assert_eq!(whole.len(), 64 << 20);
        assert!(whole.capacity() <= 64 << 20);
        let over = gunzip_counted(&gz, (64 << 20) - 1, |_| Ok(()));
        assert!(matches!(over, Err(ReadError::TooLarge { .. })), "{over:?}");
    }

    /// A copy of an answer passed on holds its share of the budget while it lives, and is
    /// given up (its share with it) past its own bound or when the budget is spent.
    #[test]
    fn copies_kept_of_answers_share_the_budget() {
        let unit = BodyBudget::UNIT;
        let budget = BodyBudget::new(4 * unit as u64);
        let piece = vec![b'r'; unit / 2];
        let mut first = BudgetedCopy::new(budget.clone(), 1 << 30);
        for _ in 0..5 {
            assert!(first.push(&piece));
        }
        // 2.5 units kept, in a buffer of at most twice that.
        let held = 4 * unit as u64 - budget.available();
        assert!(
            (3 * unit as u64..=5 * unit as u64).contains(&held),
            "{held}"
        );
        // Another copy finds too little left: given up, and stays so.
        let mut second = BudgetedCopy::new(budget.clone(), 1 << 30);
        let mut kept = true;
        for _ in 0..8 {
            kept &= second.push(&piece);
        }
        assert!(!kept && !second.push(b"more"));
        assert!(second.finish().is_none());
        assert_eq!(
            4 * unit as u64 - budget.available(),
            held,
            "its share went back"
        );
        // The first one's bytes, with the share they hold until dropped.
        let (bytes, share) = first.finish().unwrap();
        assert_eq!(bytes.len(), 5 * piece.len());
        drop((bytes, share));
        assert_eq!(budget.available(), 4 * unit as u64);
        // Past its own bound, whatever the budget.
        let mut bounded = BudgetedCopy::new(budget.clone(), 10);
        assert!(bounded.push(b"0123456789"));
        assert!(!bounded.push(b"!"));
        assert!(bounded.finish().is_none());
        assert_eq!(budget.available(), 4 * unit as u64);
    }

    /// An upstream's answer reaches the client without hop-by-hop headers, those its
    /// `Connection` header names, and those that would apply to gitcache's own address.
    #[test]
    fn headers_of_the_hop_and_of_the_upstream_site_are_not_passed_on_and_browsers_run_nothing() {
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("set-cookie", "session=1; Path=/"),
            ("strict-transport-security", "max-age=31536000"),
            ("alt-svc", "h3=\":443\""),
            ("content-type", "application/x-git-upload-pack-result"),
            ("www-authenticate", "Basic realm=\"GitHub\""),
            ("service-worker-allowed", "/"),
            ("clear-site-data", "\"storage\""),
            ("refresh", "0; url=/admin"),
            ("x-accel-redirect", "/internal/"),
            ("x-sendfile", "/etc/passwd"),
            ("content-security-policy", "script-src *"),
            ("content-security-policy-report-only", "default-src 'none'"),
        ] {
            headers.append(
                hyper::header::HeaderName::from_static(name),
                value.parse().unwrap(),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "content-security-policy",
                "content-type",
                "www-authenticate",
                "x-content-type-options"
            ]
        );
        // The upstream's answer runs nothing in a browser, whatever it said.
        assert_eq!(
            headers[hyper::header::CONTENT_SECURITY_POLICY],
            "sandbox; default-src 'none'"
        );
        assert_eq!(headers[hyper::header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    /// What a body holds is let go once its last chunk is taken, before the body is dropped;
    /// a body dropped unsent lets it go too.
    #[tokio::test]
    async fn what_a_body_holds_goes_when_it_is_sent() {
        let held = Arc::new(());
        let (tx, rx) = mpsc::channel(2);
        let mut body = Body::channel(rx).holding(Arc::clone(&held));
        tx.send(Ok(Bytes::from_static(b"pack"))).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), &b"pack"[..]);
        assert_eq!(Arc::strong_count(&held), 2, "let go before the end");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(Arc::strong_count(&held), 1, "kept after the end");

        let unsent = Body::full("x").holding(Arc::clone(&held));
        assert_eq!(Arc::strong_count(&held), 2);
        drop(unsent);
        assert_eq!(Arc::strong_count(&held), 1);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn headers(encoding: Option<&str>) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        if let Some(e) = encoding {
            h.insert(hyper::header::CONTENT_ENCODING, e.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn bodies_are_read_within_their_limit_also_after_gunzip() {
        let t = Duration::from_secs(5);
        let plain = Full::new(Bytes::from_static(b"0000"));
        assert_eq!(
            read_request_body(&headers(None), plain, 4, t)
                .await
                .unwrap(),
            &b"0000"[..]
        );
        let big = Full::new(Bytes::from(vec![b'a'; 10]));
        let err = read_request_body(&headers(None), big, 4, t)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 413);

        let packed = Full::new(Bytes::from(gzip(b"0009done\n0000")));
        let body = read_request_body(&headers(Some("gzip")), packed, 100, t)
            .await
            .unwrap();
        assert_eq!(body, &b"0009done\n0000"[..]);

        // A small gzip body that inflates past the limit: a bomb is refused, not inflated.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 65536);
        let err = read_request_body(
            &headers(Some("gzip")),
            Full::new(Bytes::from(bomb)),
            65536,
            t,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 65536 }), "{err}");

        let err = read_request_body(
            &headers(Some("gzip")),
            Full::new(Bytes::from_static(b"not gzip")),
            100,
            t,
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), 400);
        let err = read_request_body(
            &headers(Some("br")),
            Full::new(Bytes::from_static(b"x")),
            100,
            t,
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), 415);
    }

    #[tokio::test]
    async fn a_slow_body_times_out() {
        let (_tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        let err = read_request_body(&headers(None), body, 100, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 408);
    }

    /// What is gathered is handed over before a write would make it grow: a few bytes, then a
    /// whole chunk's worth, go as two chunks in their order, each within a chunk's capacity.
    #[tokio::test]
    async fn a_chunk_is_handed_over_before_it_would_grow() {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_secs(5));
            w.write_all(b"0005\x01").unwrap();
            w.write_all(&vec![9u8; CHUNK]).unwrap();
            w.write_all(b"end").unwrap();
            w.flush().unwrap();
        })
        .await
        .unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk.unwrap());
        }
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [5, CHUNK, 3]);
        assert_eq!(&chunks[0][..], b"0005\x01");
        assert!(chunks[1].iter().all(|&b| b == 9));
        assert_eq!(&chunks[2][..], b"end");
    }

    #[tokio::test]
    async fn the_channel_writer_gives_up_on_a_client_that_stops_reading() {
        let (tx, rx) = mpsc::channel(1);
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_millis(100));
            let chunk = vec![7u8; CHUNK];
            loop {
                if let Err(err) = w.write_all(&chunk) {
                    return err.kind();
                }
            }
        });
        // The response exists but nobody reads it.
        assert_eq!(writer.await.unwrap(), std::io::ErrorKind::TimedOut);
        drop(rx);
    }

    /// Reads the whole body of `rx`.
    async fn read_all(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Vec<u8> {
        let mut body = Box::pin(Body::channel(rx));
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            all.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        all
    }

    /// Whole chunks written into a writer spilling into `spill` whose reader takes nothing,
    /// until it gives up: how many it took, and why it stopped.
    async fn chunks_taken_unread(spill: &Spill) -> (usize, std::io::ErrorKind) {
        let (tx, rx) = mpsc::channel(1);
        let area = spill.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_millis(300));
            w.spill_to(area);
            let chunk = vec![7u8; CHUNK];
            let mut written = 0;
            loop {
                if let Err(err) = w.write_all(&chunk) {
                    return (written, err.kind());
                }
                written += 1;
            }
        });
        let stopped = writer.await.unwrap();
        drop(rx);
        stopped
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spilling_writer_finishes_writing_without_its_reader_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 64 << 20, 64 << 20, 0);
        let (tx, rx) = mpsc::channel(2);
        let data: Vec<u8> = (0..(3 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let area = spill.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_millis(200));
            w.spill_to(area);
            // Uneven writes, with a flush among them, as a pack writer makes them.
            for (i, piece) in data.chunks(7919).enumerate() {
                w.write_all(piece).unwrap();
                if i == 100 {
                    w.flush().unwrap();
                }
            }
            // Nobody has read a byte, yet every write returned: the rest was spilled.
            let backlog = w.backlog();
            assert!(backlog >= (3 << 20) - 3 * CHUNK as u64, "{backlog}");
            w
        });
        let mut w = writer.await.unwrap();
        assert_eq!(spill.used(), w.backlog());
        let reader = tokio::spawn(read_all(rx));
        tokio::task::spawn_blocking(move || {
            w.finish().unwrap();
            assert_eq!(w.backlog(), 0);
        })
        .await
        .unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        // Everything handed over: the budget is whole again, and no file has a name.
        assert_eq!(spill.used(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_spill_budget_a_writer_waits_for_its_reader_again() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 4 * CHUNK as u64, u64::MAX, 0);
        // Another response holds half of the budget.
        let (other_tx, _other_rx) = mpsc::channel(1);
        let area = spill.clone();
        let other = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(other_tx, Duration::from_secs(30));
            w.spill_to(area);
            for _ in 0..3 {
                w.write_all(&vec![1u8; CHUNK]).unwrap();
            }
            w
        })
        .await
        .unwrap();
        assert_eq!(spill.used(), 2 * CHUNK as u64);

        // One chunk in the channel, two spilled, then the writer waits and gives up.
        let stopped = chunks_taken_unread(&spill).await;
        assert_eq!(stopped, (3, std::io::ErrorKind::TimedOut));
        // A writer gone gives its bytes back.
        assert_eq!(spill.used(), 2 * CHUNK as u64);
        drop(other);
        assert_eq!(spill.used(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_keeps_up_now_and_then_gets_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 64 << 20, 64 << 20, 0);
        let (tx, rx) = mpsc::channel(1);
        let mut rng = gitcache_testkit::repo::Rng::new(31);
        let data = rng.bytes((2 << 20) + 777);
        let expected = data.clone();
        let area = spill.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_secs(30));
            w.spill_to(area.clone());
            let mut most = 0;
            for (i, piece) in data.chunks(CHUNK / 3 + 1).enumerate() {
                w.write_all(piece).unwrap();
                most = most.max(area.used());
                if i % 7 == 0 {
                    // Now and then the writer is slower than the reader.
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
            w.finish().unwrap();
            most
        });
        // A reader that pauses between chunks, at uneven lengths.
        let mut body = Box::pin(Body::channel(rx));
        let mut got = Vec::new();
        let mut pauses = [0u64, 3, 0, 9, 1, 0, 0, 5].iter().cycle();
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            tokio::time::sleep(Duration::from_millis(*pauses.next().unwrap())).await;
        }
        let most = writer.await.unwrap();
        assert!(got == expected, "bytes lost, repeated or out of order");
        // The writer did fall behind and spill.
        assert!(most > 0);
        assert_eq!(spill.used(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spill_file_is_emptied_and_reused_when_its_reader_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 64 << 20, 64 << 20, 0);
        let (tx, mut rx) = mpsc::channel(2);
        // The two sides take turns: each waits for the other's step to end.
        let (go, mut steps) = mpsc::channel::<()>(1);
        let (done, mut stepped) = mpsc::channel::<u64>(1);
        let area = spill.clone();
        let chunk = |n: u8| vec![n; CHUNK];
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_secs(30));
            w.spill_to(area.clone());
            // Two chunks in the channel, two spilled.
            for n in 1..=4 {
                w.write_all(&chunk(n)).unwrap();
            }
            done.blocking_send(area.used()).unwrap();
            steps.blocking_recv().unwrap();
            // The reader took both: the next write hands over the spilled two, which empties
            // the file, and spills itself into it again.
            w.write_all(&chunk(5)).unwrap();
            done.blocking_send(area.used()).unwrap();
            steps.blocking_recv().unwrap();
            w.finish().unwrap();
            area.used()
        });
        let mut got = Vec::new();
        let first = stepped.recv().await.unwrap();
        for _ in 0..2 {
            got.push(rx.recv().await.unwrap().unwrap());
        }
        go.send(()).await.unwrap();
        let second = stepped.recv().await.unwrap();
        for _ in 0..2 {
            got.push(rx.recv().await.unwrap().unwrap());
        }
        go.send(()).await.unwrap();
        while let Some(chunk) = rx.recv().await {
            got.push(chunk.unwrap());
        }
        let last = writer.await.unwrap();
        assert_eq!(first, 2 * CHUNK as u64);
        assert_eq!(
            second, CHUNK as u64,
            "the emptied file's bytes were not given back"
        );
        assert_eq!(last, 0, "finished, yet bytes are counted");
        let firsts: Vec<u8> = got.iter().map(|c| c[0]).collect();
        assert_eq!(firsts, [1, 2, 3, 4, 5]);
        assert!(
            got.iter()
                .all(|c| c.len() == CHUNK && c.iter().all(|&b| b == c[0]))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_reader_took_leaves_the_budget_before_it_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 64 << 20, 64 << 20, 0);
        let (tx, mut rx) = mpsc::channel(1);
        let area = spill.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_secs(30));
            w.spill_to(area);
            for n in 0..40u8 {
                w.write_all(&vec![n; CHUNK]).unwrap();
            }
            w
        });
        let mut w = writer.await.unwrap();
        // The first chunk is in the channel, the other 39 in the file.
        assert_eq!(spill.used(), 39 * CHUNK as u64);
        let finishing = tokio::task::spawn_blocking(move || w.finish());
        for n in 0..20u8 {
            let chunk = rx.recv().await.unwrap().unwrap();
            assert_eq!(chunk[0], n);
        }
        // At least eighteen spilled chunks were handed over: the first mebibyte of the file
        // is given back though the reader is still nineteen chunks behind.
        let used = spill.used();
        assert!(used <= 23 * CHUNK as u64, "{used}");
        assert!(used > 0);
        for n in 20..40u8 {
            let chunk = rx.recv().await.unwrap().unwrap();
            assert_eq!(chunk[0], n);
        }
        finishing.await.unwrap().unwrap();
        assert_eq!(spill.used(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_gave_up_on_its_reader_sends_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 64 << 20, 64 << 20, 0);
        let (tx, mut rx) = mpsc::channel(1);
        let (go, mut steps) = mpsc::channel::<()>(1);
        let (done, mut stepped) = mpsc::channel::<std::io::ErrorKind>(1);
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_millis(100));
            w.spill_to(spill);
            for n in 0..3u8 {
                w.write_all(&vec![n; CHUNK]).unwrap();
            }
            // Nobody reads: handing over the spilled chunks times out.
            done.blocking_send(w.finish().unwrap_err().kind()).unwrap();
            steps.blocking_recv().unwrap();
            // The reader came back, too late: nothing more goes out, not a chunk after the
            // one that was given up.
            let again = w.finish().unwrap_err().kind();
            assert_eq!(w.write_all(b"more").unwrap_err().kind(), again);
            w.abort(std::io::Error::other("given up"));
        });
        assert_eq!(stepped.recv().await.unwrap(), std::io::ErrorKind::TimedOut);
        assert_eq!(rx.recv().await.unwrap().unwrap()[0], 0);
        go.send(()).await.unwrap();
        writer.await.unwrap();
        assert!(rx.recv().await.unwrap().is_err(), "a chunk after a gap");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_waiting_for_a_slow_reader_gives_way_only_while_others_wait() {
        let contested = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&contested);
        let way = GiveWay::new(
            Arc::new(move || flag.load(Ordering::Relaxed)),
            Duration::from_millis(300),
        );
        let (tx, mut rx) = mpsc::channel(1);
        let writer = tokio::task::spawn_blocking(move || {
            // A stall timeout far longer than the test: only giving way ends a wait early.
            let mut w = ChannelWriter::new(tx, Duration::from_secs(600));
            w.give_way(Some(way));
            let mut written = 0u32;
            loop {
                if let Err(err) = w.write_all(&vec![1u8; CHUNK]) {
                    return (written, err);
                }
                written += 1;
            }
        });
        // A reader slower than the grace, while nobody else waits: nothing is given up.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(rx.recv().await.unwrap().is_ok());
        }
        // Someone waits for a slot, and the reader takes a chunk within every grace: the
        // writer's waits add up over the chunks, and it gives up after a few.
        contested.store(true, Ordering::Relaxed);
        let mut after = 0;
        while let Some(Ok(_)) = rx.recv().await {
            after += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let (written, err) = writer.await.unwrap();
        assert!(written >= 3, "{written}");
        assert!(
            after < 12,
            "{after} chunks taken at a trickle while others waited"
        );
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("pack slot"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_response_spills_no_more_than_its_share() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path(), 64 << 20, 2 * CHUNK as u64, 0);
        // One chunk in the channel, two spilled, then the writer waits for its reader.
        let stopped = chunks_taken_unread(&spill).await;
        assert_eq!(stopped, (3, std::io::ErrorKind::TimedOut));
        assert_eq!(spill.used(), 0);
    }

    #[tokio::test]
    async fn the_channel_writer_stops_when_the_body_is_dropped() {
        let (tx, rx) = mpsc::channel(1);
        let body = Body::channel(rx);
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter::new(tx, Duration::from_secs(30));
            let chunk = vec![7u8; CHUNK];
            let mut written = 0u64;
            loop {
                if let Err(err) = w.write_all(&chunk) {
                    return (written, err.kind());
                }
                written += chunk.len() as u64;
            }
        });
        let mut body = Box::pin(body);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), CHUNK);
        drop(body);
        let (written, kind) = writer.await.unwrap();
        assert!(written >= CHUNK as u64);
        assert_eq!(kind, std::io::ErrorKind::BrokenPipe);
    }
}
