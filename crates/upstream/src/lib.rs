//! A protocol v2 client for an upstream's smart HTTP endpoint: the capability advertisement,
//! `ls-refs`, and `fetch` whose response body is handed over as it arrives.
//!
//! `https://` uses rustls with the system's trusted roots (or a configuration of your own, see
//! [`Upstream::with_tls`]); `http://` is for local forges and tests.
//!
//! The upstream is not trusted to behave: every answer is read within a size bound (error
//! bodies 64 KiB, advertisements 1 MiB, `ls-refs` 256 MiB, packs [`Limits::max_pack_bytes`]),
//! and within time bounds that let a slow but steady download finish: the response head and
//! every gap between body bytes within the idle timeout, the whole exchange within
//! [`Limits::transfer_timeout`].
//!
//! Given a [`Connections`] set, exchanges reuse kept connections (same TLS settings, host,
//! port and credential only) instead of opening one each.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use gitcache_protocol::request::LsRefs;
//! use gitcache_upstream::{Connections, Upstream};
//!
//! # async fn run() -> Result<(), gitcache_upstream::Error> {
//! let connections = Connections::new();
//! let upstream = Upstream::new("https://github.com/rust-lang/log.git", None, Duration::from_secs(30))?
//!     .with_connections(connections.clone());
//! let format = upstream.object_format().await?;
//! // The same connection, once the first answer has been read.
//! for line in upstream.ls_refs(format, LsRefs::default()).await? {
//!     println!("{:?} {}", line.oid, line.name);
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod connections;
pub mod github_app;
pub mod signature;

use std::time::Duration;

use bytes::Bytes;
use gitcache_protocol::advertise::Advertised;
use gitcache_protocol::ls_refs::{self, RefLine};
use gitcache_protocol::request::{Capabilities, Command, Fetch, LsRefs, Request};
use gix_hash::Kind as HashKind;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

pub use connections::{Connections, ResponseBody};

/// The body of every request sent upstream: one type, so that connections can be kept.
pub(crate) type RequestBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why a conversation with the upstream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used.
    #[error("unusable upstream URL '{url}': {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The upstream could not be reached or the connection broke.
    #[error("upstream connection failed: {0}")]
    Connect(#[source] std::io::Error),
    /// HTTP failed.
    #[error("upstream HTTP failed: {0}")]
    Http(#[from] hyper::Error),
    /// The upstream answered with an error status.
    #[error("upstream answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The start of its body.
        message: String,
    },
    /// The upstream took too long.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The upstream's answer is not what the protocol allows.
    #[error("upstream answered something unexpected: {0}")]
    Protocol(String),
    /// The request could not be written (a line longer than a pkt-line holds).
    #[error("the request to upstream could not be written: {0}")]
    Request(String),
    /// The upstream sent its answer slower than [`Limits::min_rate`] allows.
    #[error("upstream sent fewer than {least} bytes in {every:?}")]
    TooSlow {
        /// The least bytes in each window.
        least: u64,
        /// The window.
        every: Duration,
    },
    /// The upstream was to be reached at public addresses only, and its host has none.
    #[error("upstream host '{0}' has no public address")]
    NotPublic(String),
    /// An answer larger than gitcache reads.
    #[error("upstream's {what} exceeds {limit} bytes")]
    TooLarge {
        /// Which answer.
        what: &'static str,
        /// The bound.
        limit: u64,
    },
}

impl Error {
    /// Whether the upstream refused the credential (401, 403) or hides the repository (404).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Error::Status { status, .. } if matches!(status.as_u16(), 401 | 403 | 404))
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) | Error::Http(_) | Error::Timeout(_) | Error::TooSlow { .. } => true,
            Error::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// The most bytes of an error answer's body kept (for its message).
const MAX_ERROR_BODY: u64 = 64 << 10;
/// The most bytes of a capability advertisement read.
const MAX_ADVERTISEMENT: u64 = 1 << 20;
/// The most bytes of an `ls-refs` answer read.
const MAX_LS_REFS: u64 = 256 << 20;

/// The most refs an `ls-refs` answer may list: some 150 MB once read (a listing of minimal
/// lines within [`MAX_LS_REFS`] held 5.8 million, some 1 GB).
const MAX_LISTED_REFS: usize = 1_000_000;

/// The most bytes of a body handed to its reader at once: a frame can be hundreds of KiB,
/// which a listing's reader parses in milliseconds, on the runtime's thread.
const SINK_PIECE: usize = 64 << 10;

/// Hand `data` to `sink` [`SINK_PIECE`] bytes at a time, letting the runtime's other tasks
/// run between pieces.
async fn in_pieces(
    data: &[u8],
    sink: &mut impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut pieces = data.chunks(SINK_PIECE).peekable();
    while let Some(piece) = pieces.next() {
        sink(piece)?;
        if pieces.peek().is_some() {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// Bounds on one upstream exchange besides the idle timeout given to [`Upstream::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a whole exchange may take, a pack download included.
    pub transfer_timeout: Duration,
    /// The longest an exchange whose answer is no pack (an advertisement, a listing) may
    /// take, if shorter than `transfer_timeout`: an upstream sending a byte now and then,
    /// each within the idle timeout, held a refresh for the transfer timeout's hour. Five
    /// minutes by default (a 256 MiB listing at under 1 MB/s).
    pub listing_timeout: Duration,
    /// The most bytes a fetch response (the pack) may have.
    pub max_pack_bytes: u64,
    /// The slowest an answer's body may come: at least `.0` bytes in every `.1` of it, or
    /// the exchange ends ([`Error::TooSlow`]). An upstream that sends a byte now and then
    /// passes the idle timeout; this bounds what it holds (a deploy's slot) by rate too.
    /// `None` (the default): the idle and transfer timeouts alone.
    pub min_rate: Option<(u64, Duration)>,
    /// How long the first window of `min_rate` lasts, when longer than the others: an
    /// upstream that works out its answer before it sends it (a forge counting the objects
    /// of a pack, sending only keep-alives meanwhile) is given that long to start. `None`
    /// (the default): as long as the others.
    pub first_window: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            transfer_timeout: Duration::from_secs(3600),
            listing_timeout: Duration::from_secs(300),
            max_pack_bytes: 64 << 30,
            min_rate: None,
            first_window: None,
        }
    }
}

/// When a request body last gave bytes (or ended), for the idle timeout of a streamed
/// request.
struct Progress {
    since: std::time::Instant,
    /// Milliseconds from `since` to the last frame given.
    last: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            since: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn moved(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the body last moved.
    fn idle(&self) -> Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.since
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }
}

/// A request body whose frames are noted in a [`Progress`].
struct Watched<B> {
    inner: std::pin::Pin<Box<B>>,
    progress: std::sync::Arc<Progress>,
}

impl<B: hyper::body::Body> hyper::body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if polled.is_ready() {
            self.progress.moved();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body's bytes counted against [`Limits::min_rate`], window by window: each window is
/// judged when it ends, whether bytes arrive then or not (the reader waits for the next
/// frame no longer than the window's end), and the next one follows it at once.
struct Pace {
    min_rate: Option<(u64, Duration)>,
    /// The end of the current window.
    ends: std::time::Instant,
    counted: u64,
}

impl Pace {
    fn new(limits: &Limits) -> Self {
        let every = limits.min_rate.map_or(Duration::ZERO, |(_, every)| every);
        let first = limits.first_window.map_or(every, |first| first.max(every));
        Pace {
            min_rate: limits.min_rate,
            ends: std::time::Instant::now() + first,
            counted: 0,
        }
    }

    /// When the current window ends, if there is a least rate.
    fn window_end(&self) -> Option<std::time::Instant> {
        self.min_rate.map(|_| self.ends)
    }

    /// Count `bytes` more, and judge the windows that have ended: an error for one that went
    /// by with fewer bytes than the least.
    fn count(&mut self, bytes: u64) -> Result<(), Error> {
        let Some((least, every)) = self.min_rate else {
            return Ok(());
        };
        self.counted += bytes;
        let now = std::time::Instant::now();
        while now >= self.ends {
            if self.counted < least {
                return Err(Error::TooSlow { least, every });
            }
            self.counted = 0;
            self.ends += every;
        }
        Ok(())
    }

    /// The next frame of `body`, waiting no longer than `idle` nor past the current window's
    /// end (judged then, as it ends without a byte).
    async fn frame(
        &mut self,
        body: &mut ResponseBody,
        idle: Duration,
    ) -> Result<Option<hyper::body::Frame<Bytes>>, Error> {
        let idle_ends = tokio::time::Instant::now() + idle;
        loop {
            let until = self
                .window_end()
                .map_or(idle_ends, |ends| idle_ends.min(ends.into()));
            match tokio::time::timeout_at(until, body.frame()).await {
                Ok(frame) => return frame.transpose().map_err(Error::Http),
                Err(_) if tokio::time::Instant::now() >= idle_ends => {
                    return Err(Error::Timeout(idle));
                }
                Err(_) => self.count(0)?,
            }
        }
    }
}

/// One upstream repository, reached at `<base>/<path>`.
#[derive(Clone)]
pub struct Upstream {
    /// TLS settings for `https://`; `None` for `http://`.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    host: String,
    port: u16,
    /// The repository's path, e.g. `/acme/widgets.git`.
    path: String,
    authorization: Option<String>,
    /// The idle timeout: for the response head, and between body bytes.
    timeout: Duration,
    limits: Limits,
    connections: Option<Connections>,
    /// Connect only to public addresses (see [`Upstream::public_only`]).
    public_only: bool,
    /// The object format, once the upstream advertised it (or the caller knew it).
    format: std::sync::OnceLock<HashKind>,
}

impl std::fmt::Debug for Upstream {
    /// Never shows the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("tls", &self.tls.is_some())
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("connections", &self.connections.is_some())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `url` as it may be shown: with an `@` anywhere, all from the scheme's `://` (or the
/// start) up to the last `@` is replaced by `***`. A password with a `/` in it, or a URL
/// malformed around it, still stays hidden; a path with an `@` is shown cut, which costs
/// nothing in an error.
pub fn without_userinfo(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = url.find("://").map_or(0, |i| i + 3).min(at);
    format!("{}***{}", &url[..start], &url[at..])
}

/// TLS with the system's trusted roots, loaded once.
fn default_tls() -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
    static CONFIG: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            tls_config(roots).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| Error::Protocol(format!("TLS setup: {reason}")))
}

/// A client configuration trusting `roots` (ring crypto, TLS 1.2 and 1.3, HTTP/1.1).
pub fn tls_config(
    roots: rustls::RootCertStore,
) -> Result<std::sync::Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

impl Upstream {
    /// The repository at `url` (e.g. `https://github.com/acme/widgets.git`), sending
    /// `authorization` (an `Authorization` header value) if given. `timeout` is the idle
    /// timeout: the longest the upstream may keep gitcache waiting for the response head or
    /// for the next bytes of a body; the whole exchange is bounded by
    /// [`Limits::transfer_timeout`].
    pub fn new(url: &str, authorization: Option<String>, timeout: Duration) -> Result<Self, Error> {
        let bad = |reason| Error::Url {
            url: without_userinfo(url),
            reason,
        };
        let (rest, tls, default_port) = match url.split_once("://") {
            Some(("http", rest)) => (rest, None, 80),
            Some(("https", rest)) => (rest, Some(default_tls()?), 443),
            _ => return Err(bad("expected http(s)://host[:port]/path")),
        };
        let (authority, path) = rest.split_once('/').ok_or(bad("no repository path"))?;
        // A password in the URL would be in every error and log line naming it, and would
        // not be sent anyway: the credential is `authorization`.
        if authority.contains('@') {
            return Err(bad(
                "user information in the URL (the credential is given on its own)",
            ));
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad("no host"));
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'#' || b == b'?')
        {
            return Err(bad("the path has spaces, control characters, '?' or '#'"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            // An IPv6 address, `[addr]` or `[addr]:port`; the host is the address alone.
            Some(bracketed) => {
                let (address, after) = bracketed.split_once(']').ok_or(bad("no closing ']'"))?;
                if address.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(bad("not an IPv6 address within '[' and ']'"));
                }
                let port = match after.strip_prefix(':') {
                    Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                    None if after.is_empty() => default_port,
                    None => return Err(bad("bad port")),
                };
                (address.to_owned(), port)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_owned(), default_port),
            },
        };
        Ok(Upstream {
            tls,
            host,
            port,
            path: format!("/{}", path.trim_end_matches('/')),
            authorization,
            timeout,
            limits: Limits::default(),
            connections: None,
            public_only: false,
            format: std::sync::OnceLock::new(),
        })
    }

    /// The idle timeout: the longest the upstream may keep gitcache waiting for a response
    /// head or the next bytes of a body.
    pub fn idle_timeout(&self) -> Duration {
        self.timeout
    }

    /// A digest of the credential this upstream is asked with (the same for every upstream
    /// asked with the same one, or with none, in this process; keyed anew in each process):
    /// to tell whether an outcome was another credential's without keeping the secret.
    pub fn credential_digest(&self) -> u64 {
        use std::hash::BuildHasher;
        static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        KEYS.get_or_init(std::hash::RandomState::new)
            .hash_one(&self.authorization)
    }

    /// Take `format` as the upstream's object format, as advertised to this credential a
    /// moment ago (the access check's `info/refs`), instead of asking for it again.
    pub fn with_object_format(self, format: HashKind) -> Self {
        let _ = self.format.set(format);
        self
    }

    /// Take connections from `connections` and keep them there afterwards.
    pub fn with_connections(mut self, connections: Connections) -> Self {
        self.connections = Some(connections);
        self
    }

    /// Use `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Connect only to public addresses: the host's name is resolved at each connection and
    /// those of its addresses that are loopback, private, link-local, shared (CGNAT),
    /// multicast, documentation or otherwise reserved are left out (see [`is_public`]); with
    /// none left, [`Error::NotPublic`]. For URLs that someone other than the operator names
    /// (a pages deploy), so that they cannot reach the server's own network. Checked on the
    /// address connected to, so a name that resolves to another address later gains nothing.
    /// Kept connections are not used.
    pub fn public_only(mut self) -> Self {
        self.public_only = true;
        self
    }

    /// Use `config` for `https://` instead of the system's roots (e.g. a private CA).
    pub fn with_tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        if self.tls.is_some() {
            self.tls = Some(config);
        }
        self
    }

    /// A new HTTP/1.1 connection to the upstream, over TLS for `https://`.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<RequestBody>, Error> {
        let stream = if self.public_only {
            self.connect_public().await?
        } else {
            tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(Error::Connect)?
        };
        match &self.tls {
            None => handshake(stream).await,
            Some(config) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|_| {
                        Error::Url {
                            url: self.host.clone(),
                            reason: "not a valid TLS server name",
                        }
                    })?;
                let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config))
                    .connect(name, stream)
                    .await
                    .map_err(Error::Connect)?;
                handshake(tls).await
            }
        }
    }

    /// A connection to the first of the host's public addresses that takes one.
    async fn connect_public(&self) -> Result<tokio::net::TcpStream, Error> {
        let addresses = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(Error::Connect)?
            .filter(|address| is_public(address.ip()));
        let mut last = None;
        for address in addresses {
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            }
        }
        Err(last.map_or_else(|| Error::NotPublic(self.host.clone()), Error::Connect))
    }

    /// Send `request` and return the answer's head. With `again` (a request whose body is
    /// in memory, made again on demand), on a kept connection if one is ready, else a new
    /// one, kept afterwards. A kept connection can turn out closed by the upstream (its
    /// keep-alive ran out): the request is made again and sent on a new connection.
    /// Without `again` (a body streamed from a client, such as a push), on a connection of
    /// its own, never kept: the upstream may answer before the body is all sent, and a
    /// connection still sending must not serve another request.
    async fn exchange(
        &self,
        mut request: hyper::Request<RequestBody>,
        again: Option<&(dyn Fn() -> Result<hyper::Request<RequestBody>, Error> + Sync)>,
    ) -> Result<hyper::Response<ResponseBody>, Error> {
        let key = match (&self.connections, again) {
            (Some(_), Some(_)) if !self.public_only => Some(Connections::key(
                self.tls.as_ref(),
                &self.host,
                self.port,
                self.authorization.as_deref(),
            )),
            _ => None,
        };
        let kept = |response: hyper::Response<hyper::body::Incoming>, sender| match (
            &self.connections,
            &key,
        ) {
            (Some(connections), Some(key)) => response.map(|body| {
                ResponseBody::new(body, Some((connections.clone(), key.clone(), sender)))
            }),
            _ => response.map(|body| ResponseBody::new(body, None)),
        };
        if let (Some(connections), Some(key)) = (&self.connections, &key)
            && let Some(mut sender) = connections.take(key).await
        {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(kept(response, sender)),
                Err(mut err) => match (err.take_message(), again) {
                    (Some(unsent), _) => request = unsent,
                    (None, Some(again)) => {
                        tracing::debug!(err = %err.into_error(), "kept upstream connection failed");
                        request = again()?;
                    }
                    (None, None) => return Err(Error::Http(err.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        Ok(kept(response, sender))
    }

    /// A request for `<repository path><suffix>` with the host, agent and credential set.
    fn request(&self, method: Method, suffix: &str) -> hyper::http::request::Builder {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{suffix}", self.path))
            .header(hyper::header::HOST, self.authority());
        if let Some(auth) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        request
    }

    fn authority(&self) -> String {
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Pass a request on as it is: `method` on `<repository path><suffix>` (the suffix holds
    /// any query), with `headers` (hop-by-hop, `Host` and `Authorization` are never taken from
    /// them: the credential is this upstream's own) and `body` streamed as it arrives. The
    /// response comes back whatever its status, its body unread. The timeout bounds the wait
    /// for the response head, not the body.
    pub async fn forward<B>(
        &self,
        method: Method,
        suffix: &str,
        headers: &hyper::HeaderMap,
        body: B,
    ) -> Result<hyper::Response<ResponseBody>, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if body.is_end_stream() {
            // Without a body (a GET), it can be made again.
            return self
                .forward_bytes(method, suffix, headers, Bytes::new())
                .await;
        }
        let progress = std::sync::Arc::new(Progress::new());
        let watched = Watched {
            inner: Box::pin(body),
            progress: std::sync::Arc::clone(&progress),
        };
        let request = self
            .forwarded(&method, suffix, headers)
            .body(watched.map_err(Into::into).boxed_unsync())
            .map_err(|e| Error::Protocol(e.to_string()))?;
        // The response head within the idle timeout counted from the body's last bytes (a
        // large push takes its time to go up, and the upstream answers once it has it all);
        // the answer's body is the caller's to bound.
        let exchange = self.exchange(request, None);
        tokio::pin!(exchange);
        // The whole wait within the transfer timeout too: a body trickling a byte now and
        // then holds nothing for longer.
        let total = self.limits.transfer_timeout;
        let ends = tokio::time::Instant::now() + total;
        loop {
            let wait = self.timeout.saturating_sub(progress.idle());
            if wait.is_zero() {
                return Err(Error::Timeout(self.timeout));
            }
            let until = (tokio::time::Instant::now() + wait).min(ends);
            match tokio::time::timeout_at(until, &mut exchange).await {
                Ok(answered) => return answered,
                Err(_) if tokio::time::Instant::now() >= ends => {
                    return Err(Error::Timeout(total));
                }
                Err(_) => {}
            }
        }
    }

    /// [`forward`](Self::forward) with a body held in memory: the request can be made again,
    /// so it may go on a kept connection.
    pub async fn forward_bytes(
        &self,
        method: Method,
        suffix: &str,
        headers: &hyper::HeaderMap,
        body: Bytes,
    ) -> Result<hyper::Response<ResponseBody>, Error> {
        let make = || {
            self.forwarded(&method, suffix, headers)
                .body(
                    Full::new(body.clone())
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .map_err(|e| Error::Protocol(e.to_string()))
        };
        tokio::time::timeout(self.timeout, self.exchange(make()?, Some(&make)))
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }

    /// A passed-on request's head: the client's headers but hop-by-hop ones, `Host` and
    /// `Authorization` (the credential is this upstream's own).
    fn forwarded(
        &self,
        method: &Method,
        suffix: &str,
        headers: &hyper::HeaderMap,
    ) -> hyper::http::request::Builder {
        let mut request = self.request(method.clone(), suffix);
        for (name, value) in headers {
            if !is_hop_by_hop(name)
                && name != hyper::header::HOST
                && name != hyper::header::AUTHORIZATION
            {
                request = request.header(name, value);
            }
        }
        request
    }

    async fn send(
        &self,
        method: Method,
        suffix: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<ResponseBody>, Error> {
        let body = Bytes::from(body.unwrap_or_default());
        let make = || {
            let mut request = self
                .request(method.clone(), suffix)
                .header(
                    hyper::header::USER_AGENT,
                    concat!("gitcache/", env!("CARGO_PKG_VERSION")),
                )
                .header("Git-Protocol", "version=2");
            if !body.is_empty() {
                request = request
                    .header(
                        hyper::header::CONTENT_TYPE,
                        "application/x-git-upload-pack-request",
                    )
                    .header(
                        hyper::header::ACCEPT,
                        "application/x-git-upload-pack-result",
                    );
            }
            request
                .body(
                    Full::new(body.clone())
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .map_err(|e| Error::Protocol(e.to_string()))
        };
        // Connecting and the response head within the idle timeout. Upload-pack requests
        // change nothing upstream: one sent on a connection found closed is sent again.
        let response = tokio::time::timeout(self.timeout, self.exchange(make()?, Some(&make)))
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        if !response.status().is_success() {
            let status = response.status();
            // Only the start of an error body is kept (for the message); the rest is not read.
            // All of it within one idle timeout: an upstream trickling an error body a byte
            // at a time does not hold the caller (a refresh and its lock) for the transfer
            // timeout.
            let mut body = Vec::new();
            let _ = tokio::time::timeout(
                self.timeout,
                self.read_body(
                    response.into_body(),
                    "error answer",
                    MAX_ERROR_BODY,
                    |data| {
                        if body.len() < 200 {
                            body.extend_from_slice(data);
                        }
                        Ok(())
                    },
                ),
            )
            .await;
            let message = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned();
            return Err(Error::Status { status, message });
        }
        Ok(response)
    }

    /// Hand `body`'s bytes to `sink` as they arrive: at most `limit` of them, each frame
    /// within the idle timeout.
    async fn read_body(
        &self,
        mut body: ResponseBody,
        what: &'static str,
        limit: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut read = 0u64;
        let mut pace = Pace::new(&self.limits);
        loop {
            let Some(frame) = pace.frame(&mut body, self.timeout).await? else {
                return Ok(read);
            };
            if let Ok(data) = frame.into_data() {
                read += data.len() as u64;
                if read > limit {
                    return Err(Error::TooLarge { what, limit });
                }
                pace.count(data.len() as u64)?;
                in_pieces(&data, &mut sink).await?;
            }
        }
    }

    /// A whole body of at most `limit` bytes.
    async fn read_whole(
        &self,
        body: ResponseBody,
        what: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.read_body(body, what, limit, |data| {
            out.extend_from_slice(data);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Bound a whole exchange by the transfer timeout.
    async fn with_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.within(self.limits.transfer_timeout, work).await
    }

    /// Bound an exchange whose answer is no pack by [`Limits::listing_timeout`], or the
    /// transfer timeout if shorter.
    async fn listing_within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let total = self
            .limits
            .transfer_timeout
            .min(self.limits.listing_timeout);
        self.within(total, work).await
    }

    async fn within<T>(
        &self,
        total: Duration,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(total, work)
            .await
            .map_err(|_| Error::Timeout(total))?
    }

    /// The upstream's object format, from its v2 capability advertisement: asked for once,
    /// then remembered (see [`with_object_format`](Self::with_object_format)).
    pub async fn object_format(&self) -> Result<HashKind, Error> {
        if let Some(format) = self.format.get() {
            return Ok(*format);
        }
        let format = self
            .listing_within(async {
                let response = self
                    .send(Method::GET, "/info/refs?service=git-upload-pack", None)
                    .await?;
                let body = self
                    .read_whole(response.into_body(), "advertisement", MAX_ADVERTISEMENT)
                    .await?;
                match gitcache_protocol::advertise::read_advertised(&body) {
                    Ok(Advertised::V2(format)) => Ok(format),
                    Ok(Advertised::Other) => Err(Error::Protocol(
                        "the upstream does not speak protocol v2".into(),
                    )),
                    Err(err) => Err(Error::Protocol(err.to_string())),
                }
            })
            .await?;
        Ok(*self.format.get_or_init(|| format))
    }

    /// `ls-refs` with `args`.
    pub async fn ls_refs(&self, format: HashKind, args: LsRefs) -> Result<Vec<RefLine>, Error> {
        self.ls_refs_within(format, args, MAX_LS_REFS).await
    }

    /// [`ls_refs`](Self::ls_refs) whose answer may take at most `max_bytes` (one who asks for
    /// a single ref needs far less than a whole listing's 256 MiB: more is an error).
    pub async fn ls_refs_within(
        &self,
        format: HashKind,
        args: LsRefs,
        max_bytes: u64,
    ) -> Result<Vec<RefLine>, Error> {
        let body = encode(format, Command::LsRefs(args))?;
        self.listing_within(async {
            let response = self
                .send(Method::POST, "/git-upload-pack", Some(body))
                .await?;
            // Read as it arrives, a piece at a time: only the refs are held, never the
            // answer whole (up to 256 MiB).
            let mut reader = ls_refs::ResponseReader::new(format, MAX_LISTED_REFS);
            self.read_body(response.into_body(), "ls-refs answer", max_bytes, |data| {
                reader
                    .feed(data)
                    .map_err(|e| Error::Protocol(e.to_string()))
            })
            .await?;
            reader.finish().map_err(|e| Error::Protocol(e.to_string()))
        })
        .await
    }

    /// Send `fetch` and write the response body, as it arrives, into `out`: at most
    /// [`Limits::max_pack_bytes`], with no gap longer than the idle timeout, all within the
    /// transfer timeout (a large pack on a slow but steady line gets through).
    pub async fn fetch_into(
        &self,
        format: HashKind,
        fetch: Fetch,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let body = encode(format, Command::Fetch(fetch))?;
        self.with_timeout(async {
            let response = self
                .send(Method::POST, "/git-upload-pack", Some(body))
                .await?;
            let mut body = response.into_body();
            let mut written = 0u64;
            let limit = self.limits.max_pack_bytes;
            let mut pace = Pace::new(&self.limits);
            loop {
                let Some(frame) = pace.frame(&mut body, self.timeout).await? else {
                    break;
                };
                if let Ok(data) = frame.into_data() {
                    written += data.len() as u64;
                    if written > limit {
                        return Err(Error::TooLarge {
                            what: "pack",
                            limit,
                        });
                    }
                    pace.count(data.len() as u64)?;
                    out.write_all(&data).await.map_err(Error::Connect)?;
                }
            }
            out.flush().await.map_err(Error::Connect)?;
            Ok(written)
        })
        .await
    }
}

/// Whether `ip` is an address of the public internet: not unspecified, loopback, private
/// (RFC 1918, IPv6 unique local), link-local, shared (RFC 6598), multicast, broadcast,
/// documentation, benchmarking, or otherwise reserved; for an IPv6 address that carries an
/// IPv4 one (mapped, translated, compatible, NAT64's well-known prefix), the IPv4 address
/// decides. A network's own NAT64 prefix is not known here: on an IPv6-only host behind
/// DNS64 with one, a private IPv4 address comes back as a public-looking IPv6 one.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => is_public_v4(v4),
        std::net::IpAddr::V6(v6) => {
            let [a, b, ..] = v6.segments();
            let octets = v6.octets();
            let embedded =
                || std::net::Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
            // IPv4-mapped ::ffff:a.b.c.d, and IPv4-translated ::ffff:0:a.b.c.d.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            if v6.segments()[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return is_public_v4(embedded());
            }
            // IPv4-compatible (::a.b.c.d, deprecated); NAT64's 64:ff9b::/96 (its local-use
            // 64:ff9b:1::/48 is not public).
            if v6.segments()[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
                return is_public_v4(embedded());
            }
            if a == 0x64 && b == 0xff9b {
                return v6.segments()[2..6] == [0; 4] && is_public_v4(embedded());
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
                || (a & 0xfe00) == 0xfc00
                || (a & 0xffc0) == 0xfe80
                || (a & 0xffc0) == 0xfec0
                // Documentation 2001:db8::/32 and 3fff::/20; IETF assignments 2001::/23
                // (Teredo, benchmarking, ORCHID and others).
                || (a == 0x2001 && b == 0x0db8)
                || (a == 0x3fff && b < 0x1000)
                || (a == 0x2001 && b < 0x0200)
                // Discard-only 100::/64 and 6to4 2002::/16 (it carries an IPv4 address).
                || (a == 0x0100 && v6.segments()[1..4] == [0; 3])
                || a == 0x2002)
        }
    }
}

fn is_public_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", and unspecified
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT), 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0.0/24
        || (a == 192 && b == 88 && c == 99) // the former 6to4 relay anycast, 192.88.99.0/24
        || ip.is_documentation()
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || ip.is_multicast()
        || a >= 240) // reserved, and broadcast
}

/// An HTTP/1.1 connection over `io`, driven by a task of its own.
async fn handshake<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<RequestBody>, Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Headers that belong to one connection and are never passed on (RFC 9110, 7.6.1).
pub fn is_hop_by_hop(name: &hyper::header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The request body of `command`; an error when a line would not fit a pkt-line (a ref
/// prefix or name of 65,000 bytes and more).
fn encode(format: HashKind, command: Command) -> Result<Vec<u8>, Error> {
    let request = Request {
        capabilities: Capabilities {
            agent: Some(concat!("gitcache/", env!("CARGO_PKG_VERSION")).into()),
            object_format: Some(format),
            ..Capabilities::default()
        },
        command,
    };
    let mut body = Vec::new();
    request
        .write_to(&mut body)
        .map_err(|e| Error::Request(e.to_string()))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::{Upstream, is_public, without_userinfo};
    use std::time::Duration;

    /// A large frame reaches its reader in pieces of 64 KiB, whole and in order, and the
    /// runtime's other tasks run between pieces (on a runtime of one thread, a task counting
    /// its turns has counted more at each piece).
    #[test]
    fn a_large_frame_is_read_in_pieces_with_other_tasks_between() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let turns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counting = std::sync::Arc::clone(&turns);
            let counter = tokio::spawn(async move {
                loop {
                    counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            });
            let data: Vec<u8> = (0..(1 << 20) + 5).map(|i| (i % 251) as u8).collect();
            let (mut read, mut seen) = (Vec::new(), Vec::new());
            super::in_pieces(&data, &mut |piece: &[u8]| {
                assert!(piece.len() <= super::SINK_PIECE);
                read.extend_from_slice(piece);
                seen.push(turns.load(std::sync::atomic::Ordering::Relaxed));
                Ok(())
            })
            .await
            .unwrap();
            counter.abort();
            assert!(read == data, "whole and in order");
            assert_eq!(seen.len(), data.len().div_ceil(super::SINK_PIECE));
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        });
    }

    /// URLs git would not fetch from, or whose password would be shown with them, are
    /// refused, the password hidden.
    #[test]
    fn urls_with_user_information_or_no_host_are_refused_without_showing_it() {
        let timeout = Duration::from_secs(1);
        for (url, reason) in [
            ("https://user:s3cret@example.com/o/r", "user information"),
            ("http://tok3n@127.0.0.1:8080/o/r", "user information"),
            ("http:///o/r", "no host"),
            ("http://:80/o/r", "no host"),
            ("http://127.0.0.1/o/r x", "spaces"),
            ("http://127.0.0.1/o/r\r\nHost: x", "control characters"),
            ("http://127.0.0.1/o/r?x=1", "'?'"),
            ("ftp://127.0.0.1/o/r", "http(s)"),
        ] {
            let err = Upstream::new(url, None, timeout).unwrap_err().to_string();
            assert!(err.contains(reason), "{url}: {err}");
            assert!(!err.contains("s3cret") && !err.contains("tok3n"), "{err}");
        }
        // A password with a slash reads as a bad port: still not shown.
        let err = Upstream::new("https://u:ab/cd@example.com/o/r", None, timeout)
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("ab/cd") && err.contains("***@example.com"),
            "{err}"
        );
        assert_eq!(
            without_userinfo("https://a:b@example.com/x"),
            "https://***@example.com/x"
        );
        assert_eq!(without_userinfo("https:/u:pw@host/x"), "***@host/x");
        assert_eq!(
            without_userinfo("https://example.com/x"),
            "https://example.com/x"
        );
        let fine = Upstream::new("http://127.0.0.1:8080/o/r.git", None, timeout).unwrap();
        assert_eq!((fine.host.as_str(), fine.port), ("127.0.0.1", 8080));
        assert_eq!(fine.authority(), "127.0.0.1:8080");
        let six = Upstream::new("http://[::1]:8080/o/r.git", None, timeout).unwrap();
        assert_eq!((six.host.as_str(), six.port), ("::1", 8080));
        assert_eq!(six.authority(), "[::1]:8080");
        let six = Upstream::new("http://[::1]/o/r.git", None, timeout).unwrap();
        assert_eq!((six.port, six.authority().as_str()), (80, "[::1]"));
        for bad in [
            "http://[::1/o/r",
            "http://[nothost]/o/r",
            "http://[::1]x/o/r",
        ] {
            assert!(Upstream::new(bad, None, timeout).is_err(), "{bad}");
        }
    }

    /// A request line longer than a pkt-line holds is an error, not a panic.
    #[test]
    fn a_request_too_long_for_a_pkt_line_is_an_error() {
        use super::HashKind;
        use gitcache_protocol::request::{Command, LsRefs};
        let args = |prefix: String| LsRefs {
            ref_prefixes: vec![prefix.into()],
            ..LsRefs::default()
        };
        let short = super::encode(HashKind::Sha1, Command::LsRefs(args("refs/heads/".into())));
        assert!(short.is_ok());
        let long = format!("refs/heads/{}", "b".repeat(70_000));
        let err = super::encode(HashKind::Sha1, Command::LsRefs(args(long))).unwrap_err();
        assert!(matches!(err, super::Error::Request(_)), "{err}");
    }

    #[test]
    fn only_addresses_of_the_public_internet_are_public() {
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "::8.8.8.8",
            "::ffff:0:8.8.8.8",
            "3ff0::1",
        ];
        let not_public = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:10.0.0.1",
            "::ffff:0:127.0.0.1",
            "192.88.99.1",
            "3fff:fff::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::808:808",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "2001:10::1",
            "2002:7f00:1::1",
            "3fff::1",
            "100::1",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in not_public {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
