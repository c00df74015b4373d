//! Running the proxy on a listener: one task per connection, a bound on connections, header
//! timeouts against slow clients, and a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Proxy;
use crate::access_log::{AccessLine, AccessNote, Logged};

/// What a listener serves (health endpoints are on every listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Face {
    /// Git, the admin API and page, and `/metrics` (one address for everything).
    #[default]
    All,
    /// Git only: the admin API, page and metrics listen elsewhere.
    Git,
    /// The admin API and page and `/metrics` only.
    Admin,
}

impl Face {
    pub(crate) fn serves_git(self) -> bool {
        matches!(self, Face::All | Face::Git)
    }

    pub(crate) fn serves_admin(self) -> bool {
        matches!(self, Face::All | Face::Admin)
    }
}

/// How the server serves and stops.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long requests in flight may take to finish once `shutdown` completed; connections
    /// still open after that are closed.
    pub grace_period: Duration,
    /// What this listener serves.
    pub face: Face,
    /// Whether this listener runs the proxy's background upkeep (one listener per proxy
    /// should).
    pub upkeep: bool,
    /// Serve TLS with this certificate (reloadable) instead of plain HTTP.
    pub tls: Option<Arc<crate::tls::TlsFiles>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            grace_period: Duration::from_secs(30),
            face: Face::All,
            upkeep: true,
            tls: None,
        }
    }
}

/// [`serve_with`] with the default options.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    serve_with(listener, proxy, shutdown, ServeOptions::default()).await;
}

/// Serve connections from `listener` until `shutdown` completes, then stop accepting, let
/// requests in flight finish within the grace period, and return.
pub async fn serve_with(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    let limits = proxy.config().limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let upkeep = options
        .upkeep
        .then(|| tokio::spawn(Arc::clone(&proxy).maintain()));
    let face = options.face;
    let acceptor = options.tls.as_ref().map(crate::tls::TlsFiles::acceptor);
    let max_connections = limits.max_connections.max(1);
    // Counted on the listeners that serve git: the admin side's are an operator's.
    let per_client = crate::per_client::PerClient::new(limits.max_connections_per_client)
        .filter(|_| face.serves_git());
    let unsent = unsent_low_water(limits.min_read_rate, limits.response_stall_timeout);
    tokio::pin!(shutdown);
    // After `shutdown`: until when connections are still taken (`/readyz` answering 503 so
    // that load balancers stop sending), and since when none has been open.
    let mut draining: Option<(Instant, Instant)> = None;
    let idle_exit = DRAIN_IDLE_EXIT.min(options.grace_period);
    loop {
        enum Next {
            Shutdown,
            Tick,
            Permit(tokio::sync::OwnedSemaphorePermit),
            Closed,
        }
        // At the connection limit, wait before accepting: the kernel's backlog queues the rest.
        let next = tokio::select! {
            () = &mut shutdown, if draining.is_none() => Next::Shutdown,
            () = tokio::time::sleep(DRAIN_TICK), if draining.is_some() => Next::Tick,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => Next::Permit(permit),
                Err(_) => Next::Closed,
            },
        };
        let permit = match next {
            Next::Shutdown => {
                draining = Some(start_draining(&proxy, options.grace_period));
                continue;
            }
            Next::Tick => {
                if drained(&mut draining, &connections, max_connections, idle_exit) {
                    break;
                }
                continue;
            }
            Next::Closed => break,
            Next::Permit(permit) => permit,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown, if draining.is_none() => {
                draining = Some(start_draining(&proxy, options.grace_period));
                continue;
            }
            () = tokio::time::sleep(DRAIN_TICK), if draining.is_some() => {
                drop(permit);
                if drained(&mut draining, &connections, max_connections, idle_exit) {
                    break;
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let counted = match &per_client {
            None => None,
            Some(table) => match table.enter(peer) {
                Some(counted) => Some(counted),
                None => {
                    drop(permit);
                    table.refuse(stream, peer, acceptor.clone());
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        hold_little_unsent(&stream, unsent);
        let proxy = Arc::clone(&proxy);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let line = AccessLine {
                method: request.method().to_string(),
                path: request.uri().path().to_owned(),
                remote: peer.to_string(),
                user_agent: request
                    .headers()
                    .get(hyper::header::USER_AGENT)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default(),
                started: std::time::Instant::now(),
                _in_flight: crate::metrics::InFlight::start(),
            };
            async move {
                let (mut parts, body) = proxy.handle_on(face, request).await.into_parts();
                let note = parts.extensions.remove::<AccessNote>().unwrap_or_default();
                let status = parts.status.as_u16();
                Ok::<_, Infallible>(hyper::Response::from_parts(
                    parts,
                    Logged::new(body, line, status, note),
                ))
            }
        });
        let (watcher, acceptor) = (graceful.watcher(), acceptor.clone());
        let (header_timeout, stall) = (limits.header_read_timeout, limits.response_stall_timeout);
        let min_rate = limits.min_read_rate;
        tokio::spawn(async move {
            let (_permit, _counted) = (permit, counted);
            let io: Box<dyn Io> = match acceptor {
                None => Box::new(stream),
                // The handshake is bounded as the headers are: a client that opens a
                // connection and says nothing loses it.
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(
                    TokioIo::new(StallGuard::new(io, stall, min_rate, peer)),
                    service,
                );
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    proxy.start_draining();
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    drop(listener);
    let left = draining.map_or(options.grace_period, |(until, _)| {
        until.saturating_duration_since(Instant::now())
    });
    tracing::info!("stopped accepting; waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(left) => {
            tracing::warn!(grace_period = ?options.grace_period, "grace period over, closing the remaining connections");
        }
    }
}

/// Make `/readyz` answer 503 from now on; the draining state: connections are taken until
/// the grace period is over.
fn start_draining(proxy: &Proxy, grace_period: Duration) -> (Instant, Instant) {
    proxy.start_draining();
    tracing::info!(?grace_period, "draining: /readyz answers 503");
    let now = Instant::now();
    (now + grace_period, now)
}

/// How often a draining server looks at its connections.
const DRAIN_TICK: Duration = Duration::from_millis(200);

/// A draining server stops once no connection has been open for this long (or the grace
/// period, if shorter): nobody is sending any more.
const DRAIN_IDLE_EXIT: Duration = Duration::from_secs(5);

/// Whether draining is over: the grace period has passed, or no connection has been open
/// for `idle_exit`. Notes when a connection was last open.
fn drained(
    draining: &mut Option<(Instant, Instant)>,
    connections: &Semaphore,
    max_connections: usize,
    idle_exit: Duration,
) -> bool {
    let Some((until, idle_since)) = draining.as_mut() else {
        return false;
    };
    let now = Instant::now();
    if now >= *until {
        return true;
    }
    if connections.available_permits() < max_connections {
        *idle_since = now;
        return false;
    }
    now.duration_since(*idle_since) >= idle_exit
}

/// Unsent bytes the kernel keeps for a client before a write waits (Linux's
/// `TCP_NOTSENT_LOWAT`; a waiting write is woken once less than half of it is left): what the
/// client must take in a stall timeout at the minimum read rate, between 128 KiB and 1 MiB
/// (480 KiB with the defaults; 128 KiB without a rate, so that a client taking 64 KiB in each
/// stall timeout keeps its connection).
///
/// Without it a write is taken while the send buffer has room (up to 4 MiB with Linux's
/// defaults) and woken only once a third of that is free: a slow client's waits were
/// megabytes apart, so one reading steadily at the minimum rate could wait longer than the
/// stall timeout and be cut off, and each slow client kept megabytes queued in the kernel.
/// Now a client reading at half the rate or more (and at least 64 KiB in a stall timeout) is
/// woken for within each stall timeout. Bytes already sent and not yet acknowledged are
/// bounded by the send buffer, as before.
fn unsent_low_water(min_rate: u64, stall: Duration) -> u32 {
    const LEAST: u64 = 128 << 10;
    const MOST: u64 = 1 << 20;
    let owed = (min_rate as f64 * stall.as_secs_f64()).min(MOST as f64) as u64;
    let bytes = if min_rate == 0 {
        LEAST
    } else {
        owed.clamp(LEAST, MOST)
    };
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Keep about `bytes` at most unsent for this client (where the system has the option;
/// elsewhere the send buffer alone bounds them).
fn hold_little_unsent(stream: &tokio::net::TcpStream, bytes: u32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(bytes) {
        tracing::debug!(%err, "TCP_NOTSENT_LOWAT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, bytes);
}

/// A client connection, plain or TLS.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// The TCP connection underneath.
    fn tcp(&self) -> Option<&tokio::net::TcpStream>;
}

impl Io for tokio::net::TcpStream {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

impl Io for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self.get_ref().0)
    }
}

impl Io for Box<dyn Io> {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        (**self).tcp()
    }
}

/// Make closing this connection reset it: what the kernel still holds for the client is
/// dropped instead of sent (a client cut off for reading too slowly would otherwise still be
/// sent up to a send buffer's worth, at its own pace, on kernel memory).
fn reset_on_close(io: &impl Io) {
    if let Some(tcp) = io.tcp()
        && let Err(err) = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO))
    {
        tracing::debug!(%err, "SO_LINGER not set");
    }
}

/// A connection whose writes fail once the peer has taken no byte for `stall`, or (with a
/// minimum read rate) once it has fallen behind that rate by what it would take in `stall`:
/// a client that stops reading, or reads a trickle (whatever the response: a pack, a
/// passed-through answer, a page), loses its connection, and its connection slot is free
/// again.
///
/// The rate is owed only while a write waits for the peer: time the server takes to produce
/// its answer costs the client nothing. A client ahead of it banks at most `stall`'s worth.
#[derive(Debug)]
struct StallGuard<S> {
    inner: S,
    stall: Duration,
    /// Bytes a second the peer must take, on average, while writes wait for it (0: none).
    min_rate: u64,
    /// Bytes the peer may still fall behind `min_rate` by: at most `min_rate * stall`.
    allowance: f64,
    /// Since when the write waiting now has waited.
    waiting_since: Option<tokio::time::Instant>,
    /// Armed while a write waits for the peer; reset whenever bytes go out.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// For the log line when the peer is cut off.
    peer: std::net::SocketAddr,
    /// The peer was cut off (counted and logged once).
    cut_off: bool,
}

impl<S: Io> StallGuard<S> {
    fn new(inner: S, stall: Duration, min_rate: u64, peer: std::net::SocketAddr) -> Self {
        StallGuard {
            inner,
            peer,
            cut_off: false,
            stall,
            min_rate,
            allowance: Self::most(stall, min_rate),
            waiting_since: None,
            deadline: None,
        }
    }

    /// The most a peer may bank.
    fn most(stall: Duration, min_rate: u64) -> f64 {
        stall.as_secs_f64() * min_rate as f64
    }

    /// After a write that is still waiting: fail once the wait has lasted `stall`, or once
    /// the peer has used up its allowance.
    fn check_stall(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        let (stall, min_rate, allowance) = (self.stall, self.min_rate, self.allowance);
        self.waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = self.deadline.get_or_insert_with(|| {
            let wait = match min_rate {
                0 => stall,
                rate => Duration::try_from_secs_f64(allowance.max(0.0) / rate as f64)
                    .map_or(stall, |left| stall.min(left)),
            };
            Box::pin(tokio::time::sleep(wait))
        });
        match deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                // The allowance ran out before the stall timeout: the client did take bytes,
                // too few.
                let slow = min_rate > 0
                    && self
                        .waiting_since
                        .is_some_and(|since| since.elapsed() < stall);
                let (reason, message) = if slow {
                    ("slow", "the client reads slower than the minimum read rate")
                } else {
                    ("stalled", "the client stopped reading")
                };
                if !std::mem::replace(&mut self.cut_off, true) {
                    reset_on_close(&self.inner);
                    crate::metrics::cut_off(reason);
                    tracing::info!(peer = %self.peer, reason, "connection closed: {message}");
                }
                std::task::Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    /// Map one attempt's outcome: progress disarms the deadline and settles the allowance
    /// (the wait owed, the bytes taken paid), waiting arms it.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
        taken: impl Fn(&T) -> usize,
    ) -> std::task::Poll<std::io::Result<T>> {
        match polled {
            std::task::Poll::Ready(result) => {
                self.deadline = None;
                // Without a rate nothing is owed, and the allowance stays at its most, zero.
                let waited = self
                    .waiting_since
                    .take()
                    .map_or(0.0, |since| since.elapsed().as_secs_f64());
                let paid = result.as_ref().map_or(0, &taken) as f64;
                self.allowance = (self.allowance - waited * self.min_rate as f64 + paid)
                    .min(Self::most(self.stall, self.min_rate));
                std::task::Poll::Ready(result)
            }
            std::task::Poll::Pending => self.check_stall(cx).map(Err),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallGuard<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: Io> tokio::io::AsyncWrite for StallGuard<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, data);
        this.guard(cx, polled, |n| *n)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, polled, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled, |()| 0)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, polled, |()| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl Io for tokio::io::DuplexStream {
        fn tcp(&self) -> Option<&tokio::net::TcpStream> {
            None
        }
    }

    fn peer() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 9))
    }

    /// Writes `total` bytes through a guard on one end of a small pipe while the other end
    /// takes `chunk` bytes every `every` (time paused: it moves only as the tasks wait); how
    /// many bytes were taken, how the writing ended, and when.
    async fn trickle(
        stall: Duration,
        min_rate: u64,
        total: usize,
        chunk: usize,
        every: Duration,
    ) -> (usize, std::io::Result<()>, Duration) {
        let (near, mut far) = tokio::io::duplex(4 << 10);
        let mut guarded = StallGuard::new(near, stall, min_rate, peer());
        let started = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            let data = vec![7u8; total];
            let written = guarded.write_all(&data).await;
            drop(guarded);
            (written, started.elapsed())
        });
        let mut taken = 0;
        let mut buf = vec![0u8; chunk];
        loop {
            tokio::time::sleep(every).await;
            match far.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => taken += n,
            }
        }
        let (written, ended) = writer.await.unwrap();
        (taken, written, ended)
    }

    #[test]
    fn the_kernel_holds_what_a_client_owes_in_a_stall_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(unsent_low_water(4 << 10, secs(120)), 480 << 10);
        assert_eq!(unsent_low_water(1 << 10, secs(10)), 128 << 10);
        assert_eq!(unsent_low_water(1 << 20, secs(120)), 1 << 20);
        assert_eq!(unsent_low_water(0, secs(120)), 128 << 10);
        assert_eq!(unsent_low_water(u64::MAX, Duration::MAX), 1 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reading_under_the_minimum_rate_is_cut_off() {
        // 1 KiB a second against 4 KiB: 3 KiB a second behind, 40 KiB of allowance.
        let (taken, written, _) = trickle(
            Duration::from_secs(10),
            4 << 10,
            1 << 20,
            1 << 10,
            Duration::from_secs(1),
        )
        .await;
        let err = written.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("minimum read rate"), "{err}");
        assert!(taken < 64 << 10, "{taken}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reading_over_the_minimum_rate_gets_everything() {
        // 8 KiB a second against 4 KiB.
        let (taken, written, _) = trickle(
            Duration::from_secs(10),
            4 << 10,
            256 << 10,
            1 << 10,
            Duration::from_millis(125),
        )
        .await;
        written.unwrap();
        assert_eq!(taken, 256 << 10);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_minimum_rate_a_trickle_within_the_stall_timeout_goes_on() {
        let (taken, written, _) = trickle(
            Duration::from_secs(10),
            0,
            64 << 10,
            1 << 10,
            Duration::from_secs(1),
        )
        .await;
        written.unwrap();
        assert_eq!(taken, 64 << 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_after_the_stall_timeout() {
        for min_rate in [0, 4 << 10] {
            let (taken, written, ended) = trickle(
                Duration::from_secs(10),
                min_rate,
                64 << 10,
                1 << 10,
                Duration::from_secs(3600),
            )
            .await;
            assert_eq!(written.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
            // What the pipe held, no more.
            assert!(taken <= 4 << 10, "{taken}");
            // Cut off at the stall timeout (time is paused: exactly), not when the reader
            // came back an hour later.
            assert!(
                (Duration::from_secs(10)..Duration::from_secs(11)).contains(&ended),
                "{ended:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_server_takes_is_not_owed() {
        // The writer pauses a minute between bursts of 64 KiB (far under the rate on
        // average); each burst waits for the reader (a pipe of 1 KiB), which takes it at once.
        let (near, mut far) = tokio::io::duplex(1 << 10);
        let mut guarded = StallGuard::new(near, Duration::from_secs(10), 4 << 10, peer());
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(60)).await;
                guarded.write_all(&[1u8; 64 << 10]).await?;
            }
            guarded.shutdown().await
        });
        let mut all = Vec::new();
        far.read_to_end(&mut all).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(all.len(), 5 * (64 << 10));
    }
}
