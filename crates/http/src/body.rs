//! Bodies: the one response body type (bytes, a stream fed by a blocking writer, or an
//! upstream response passed on), and reading request bodies within limits.

use std::io::{Read, Write};
use std::pin::Pin;
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
pub struct Body(Kind);

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    Upstream(ResponseBody),
}

impl Body {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Body(Kind::Full(None))
    }

    /// A body of the chunks sent into the other end of `rx`; an `Err` ends it abruptly, so
    /// the client sees a broken response rather than a short one.
    pub fn channel(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Self {
        Body(Kind::Channel(rx))
    }

    /// An upstream response body, passed on as it arrives.
    pub fn upstream(body: ResponseBody) -> Self {
        Body(Kind::Upstream(body))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data).map_err(Into::into))),
            Kind::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Channel(_) => false,
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Channel(_) => SizeHint::default(),
            Kind::Upstream(body) => body.size_hint(),
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
}

impl Received {
    /// The body as sent by the client, gunzipped when it was compressed, refused past `limit`
    /// bytes. CPU work: run it off the async workers.
    pub fn decode(self, limit: usize) -> Result<Bytes, ReadError> {
        if self.gzip {
            gunzip(&self.raw, limit)
        } else {
            Ok(self.raw)
        }
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
    let raw = tokio::time::timeout(timeout, collect_limited(body, limit))
        .await
        .map_err(|_| ReadError::Timeout(timeout))??;
    Ok(Received { raw, gzip })
}

async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Receive(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ReadError::TooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
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

/// A blocking [`Write`] that hands its bytes, in chunks, to a [`Body::channel`]. It fails
/// with `BrokenPipe` once the response is dropped (the client went away), and with `TimedOut`
/// when the client stops reading for longer than the stall timeout; either stops the writer
/// promptly, so a client cannot hold a pack generation slot by not reading.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    sent: u64,
    stall: Duration,
    /// The runtime whose timer bounds a stalled send (none outside a runtime: no bound).
    runtime: Option<tokio::runtime::Handle>,
}

/// Bytes gathered before a chunk is handed over.
const CHUNK: usize = 64 << 10;

impl ChannelWriter {
    /// A writer into `tx`, giving up when a chunk waits longer than `stall` to be taken.
    pub fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>, stall: Duration) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::new(),
            sent: 0,
            stall,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
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

    /// End the body abruptly with `err`.
    pub fn abort(self, err: std::io::Error) {
        let _ = self.tx.blocking_send(Err(err));
    }

    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
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
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away");
        match &self.runtime {
            Some(runtime) => {
                let sent =
                    runtime.block_on(tokio::time::timeout(self.stall, self.tx.send(Ok(chunk))));
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(gone()),
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "client stopped reading",
                        ));
                    }
                }
            }
            None => self.tx.blocking_send(Ok(chunk)).map_err(|_| gone())?,
        }
        self.sent += len;
        crate::metrics::pack_sent(len);
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.tx.is_closed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client went away",
            ));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
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
) -> hyper::Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions.insert(crate::access_log::UpstreamCall {
        status: parts.status.as_u16(),
        duration_ms: started.elapsed().as_millis() as u64,
    });
    hyper::Response::from_parts(parts, Body::upstream(body))
}

/// Drop the headers that belong to one connection.
pub(crate) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|name| gitcache_upstream::is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

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
