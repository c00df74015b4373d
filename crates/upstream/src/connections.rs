//! Connections kept open between exchanges with an upstream, so that a burst of requests to
//! one forge does not pay a TCP and TLS handshake each.
//!
//! A connection is only ever reused for the same scheme, TLS settings, host, port **and
//! credential**: forges that authenticate a connection rather than a request (NTLM,
//! Negotiate) must never see one client's connection carry another's requests.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::RequestBody;

/// How long a connection is kept idle: under the idle limits of common load balancers (60 s)
/// and servers. One closed meanwhile is found closed, or its request is sent again.
const KEEP_FOR: Duration = Duration::from_secs(30);
/// How long a kept connection may take to be ready for the next request (it is idle: its
/// last answer was read to the end, so this is only its task catching up).
const READY_WITHIN: Duration = Duration::from_millis(100);
/// Kept connections tried for one exchange before a new one is opened.
const TRIES: usize = 3;
/// The most connections kept at once, all upstreams together.
const MAX_KEPT: usize = 64;

/// A set of upstream connections that [`Upstream`](crate::Upstream)s given it share; clones
/// share the same set. Without one, every exchange opens a connection of its own.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    by_key: HashMap<Key, Vec<Entry>>,
}

impl Kept {
    /// Let go of connections closed or kept too long.
    fn sweep(&mut self) {
        self.by_key.retain(|_, entries| {
            entries.retain(|e| !e.sender.is_closed() && e.since.elapsed() < KEEP_FOR);
            !entries.is_empty()
        });
    }
}

struct Entry {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// What a connection may be reused for: the same TLS settings (the very same, held so that
/// their address is not another's later), host, port and credential.
#[derive(Clone)]
pub(crate) struct Key {
    tls: Option<Arc<rustls::ClientConfig>>,
    host: String,
    port: u16,
    credential: Option<String>,
}

impl Key {
    fn tls_address(&self) -> usize {
        self.tls.as_ref().map_or(0, |c| Arc::as_ptr(c) as usize)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.tls_address() == other.tls_address()
            && self.host == other.host
            && self.port == other.port
            && self.credential == other.credential
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.tls_address().hash(state);
        self.host.hash(state);
        self.port.hash(state);
        self.credential.hash(state);
    }
}

impl std::fmt::Debug for Key {
    /// Never shows the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("tls", &self.tls.is_some())
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("kept", &self.kept())
            .finish()
    }
}

impl Connections {
    /// An empty set.
    pub fn new() -> Self {
        Connections::default()
    }

    /// How many idle connections are kept now.
    pub fn kept(&self) -> usize {
        self.lock().by_key.values().map(Vec::len).sum()
    }

    pub(crate) fn key(
        tls: Option<&Arc<rustls::ClientConfig>>,
        host: &str,
        port: u16,
        credential: Option<&str>,
    ) -> Key {
        Key {
            tls: tls.cloned(),
            host: host.to_owned(),
            port,
            credential: credential.map(str::to_owned),
        }
    }

    /// A kept connection for `key`, ready for a request, if there is one.
    pub(crate) async fn take(&self, key: &Key) -> Option<SendRequest<RequestBody>> {
        for _ in 0..TRIES {
            let mut sender = {
                let mut kept = self.lock();
                kept.sweep();
                let entries = kept.by_key.get_mut(key)?;
                let taken = entries.pop().map(|e| e.sender);
                if entries.is_empty() {
                    kept.by_key.remove(key);
                }
                taken?
            };
            if let Ok(Ok(())) = tokio::time::timeout(READY_WITHIN, sender.ready()).await {
                return Some(sender);
            }
        }
        None
    }

    /// Keep `sender`, idle (its last answer read to the end), for later exchanges under `key`.
    fn keep(&self, key: Key, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut kept = self.lock();
        kept.sweep();
        kept.by_key.entry(key).or_default().push(Entry {
            sender,
            since: Instant::now(),
        });
        // Over the bound, the connection kept longest goes.
        while kept.by_key.values().map(Vec::len).sum::<usize>() > MAX_KEPT {
            let oldest = kept
                .by_key
                .iter()
                .flat_map(|(key, entries)| {
                    entries
                        .iter()
                        .enumerate()
                        .map(move |(i, e)| (e.since, key, i))
                })
                .min_by_key(|(since, _, _)| *since)
                .map(|(_, key, i)| (key.clone(), i));
            let Some((key, i)) = oldest else {
                break;
            };
            if let Some(entries) = kept.by_key.get_mut(&key) {
                entries.swap_remove(i);
                if entries.is_empty() {
                    kept.by_key.remove(&key);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // What the lock guards stays consistent at every step: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body of an upstream's answer. Read to its end, it hands its connection back to the
/// [`Connections`] it came from (if any), for the next exchange; dropped before, the
/// connection closes.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    /// Boxed: bodies are moved around in responses, and most never have one.
    keep: Option<Box<(Connections, Key, SendRequest<RequestBody>)>>,
}

impl ResponseBody {
    pub(crate) fn new(
        inner: Incoming,
        keep: Option<(Connections, Key, SendRequest<RequestBody>)>,
    ) -> Self {
        ResponseBody {
            inner,
            keep: keep.map(Box::new),
        }
    }

    fn ended(&mut self) {
        if let Some(kept) = self.keep.take() {
            let (connections, key, sender) = *kept;
            connections.keep(key, sender);
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.ended(),
            Poll::Ready(Some(Err(_))) => this.keep = None,
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
