//! One structured line per request, written when its response body ends (or is dropped): the
//! method, path (never the query), status, bytes sent, duration, remote address, user agent,
//! and for cached repositories what the cache did. Emitted as a `tracing` event with target
//! `gitcache::access`, so the binary's log format (plain or JSON) applies. Credentials never
//! appear.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use crate::body::{Body, BoxError};

/// What the cache did for a request to a cached repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Answered from the mirror as it was.
    Hit,
    /// Answered from the mirror after refreshing it.
    Miss,
    /// Answered from the mirror while the upstream was unavailable.
    Stale,
    /// The upstream refused the client.
    Rejected,
    /// Failed.
    Error,
    /// Passed through to the upstream.
    Passthrough,
}

impl CacheState {
    /// The name logged.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheState::Hit => "hit",
            CacheState::Miss => "miss",
            CacheState::Stale => "stale",
            CacheState::Rejected => "rejected",
            CacheState::Error => "error",
            CacheState::Passthrough => "passthrough",
        }
    }
}

/// The upstream exchange whose answer a response passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamCall {
    /// Its status.
    pub status: u16,
    /// Time until its response head arrived.
    pub duration_ms: u64,
}

/// Attached to a response (as an extension) by the proxy for the access log.
#[derive(Debug, Clone, Default)]
pub struct AccessNote {
    /// What the cache did, if anything.
    pub cache_state: Option<CacheState>,
    /// `owner/repo` of a cached repository.
    pub cache_repo: Option<String>,
    /// The upstream answer passed on, if any.
    pub upstream: Option<UpstreamCall>,
}

/// The request side of an access-log line.
#[derive(Debug)]
pub(crate) struct AccessLine {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) remote: String,
    pub(crate) user_agent: String,
    pub(crate) started: Instant,
    /// Counts the request as in flight until the line is written.
    pub(crate) _in_flight: crate::metrics::InFlight,
}

/// A response body that writes the access-log line when it ends.
#[derive(Debug)]
pub struct Logged {
    inner: Body,
    line: AccessLine,
    status: u16,
    note: AccessNote,
    bytes: u64,
    complete: bool,
}

impl Logged {
    pub(crate) fn new(inner: Body, line: AccessLine, status: u16, note: AccessNote) -> Self {
        Logged {
            inner,
            line,
            status,
            note,
            bytes: 0,
            complete: false,
        }
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let complete = self.complete || hyper::body::Body::is_end_stream(&self.inner);
        tracing::info!(
            target: "gitcache::access",
            method = %self.line.method,
            path = %self.line.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.line.started.elapsed().as_millis() as u64,
            remote = %self.line.remote,
            user_agent = %self.line.user_agent,
            cache_state = self.note.cache_state.map_or("", CacheState::as_str),
            cache_repo = self.note.cache_repo.as_deref().unwrap_or(""),
            upstream_status = self.note.upstream.map(|u| u.status),
            upstream_ms = self.note.upstream.map(|u| u.duration_ms),
            complete,
            "access"
        );
    }
}
