//! A bound on the connections one client address holds at once
//! ([`crate::config::Limits::max_connections_per_client`]), so that one client address (or
//! /64) cannot take every connection the server serves; a network given a larger IPv6
//! prefix counts as that many clients. Off by default: a CI fleet behind one NAT address is
//! many clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections over the bound answered at once (each for [`REFUSAL_WITHIN`] at most); more
/// are closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;

/// Of those, the most for one client: one that opens connections it never uses cannot take
/// every other client's answer.
const REFUSALS_PER_CLIENT: usize = 2;

/// The most of a refused request's body read (and dropped) before its answer, so that a
/// client still sending gets the answer rather than a reset.
const REFUSAL_DRAINS: usize = 1 << 20;

/// How long a connection over the bound may take to send its request (and a TLS handshake
/// before it) and read the refusal.
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);

/// The address a client is counted under: an IPv4 address (one written as IPv6 too, mapped
/// or behind the well-known NAT64 prefix `64:ff9b::/96`), or the /64 an IPv6 address is in,
/// since a host is commonly given a whole /64. A network given a larger prefix (a /56, a
/// /48) counts as that many clients.
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., high, low] = segments;
                return IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(high) << 16) | u32::from(low),
                ));
            }
            let mut prefix = segments;
            prefix[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// The connections each client holds, against a bound.
#[derive(Debug)]
pub(crate) struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Refusals being answered, each client's.
    refusing: Mutex<HashMap<IpAddr, usize>>,
    refusals: Arc<Semaphore>,
}

/// One of a client's connections (or refusals), counted until dropped.
#[derive(Debug)]
pub(crate) struct Counted {
    table: Arc<PerClient>,
    client: IpAddr,
    refusal: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let counts = if self.refusal {
            &self.table.refusing
        } else {
            &self.table.open
        };
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

impl PerClient {
    /// At most `max` connections a client (`0`: no bound, and no table).
    pub(crate) fn new(max: usize) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(PerClient {
                max,
                open: Mutex::default(),
                refusing: Mutex::default(),
                refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            })
        })
    }

    /// Count a connection from `peer`, unless its client holds the most already.
    pub(crate) fn enter(self: &Arc<Self>, peer: SocketAddr) -> Option<Counted> {
        self.count(peer, false, self.max)
    }

    /// Count one more of `peer`'s connections (or refusals) against `most`.
    fn count(self: &Arc<Self>, peer: SocketAddr, refusal: bool, most: usize) -> Option<Counted> {
        let client = client_of(peer.ip());
        let counts = if refusal { &self.refusing } else { &self.open };
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(client).or_insert(0);
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(Counted {
            table: Arc::clone(self),
            client,
            refusal,
        })
    }

    /// Answer the connection `stream` from `peer`, over its client's bound, with a `429`
    /// that says so, then close it; close it unanswered when many such answers are under
    /// way already, or a few of its client's. Takes none of the server's connection slots.
    pub(crate) fn refuse(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let unanswered = move || {
            crate::metrics::connection_refused("per_client_unanswered");
            tracing::debug!(%peer, "connection over its client's bound closed unanswered");
        };
        let Some(counted) = self.count(peer, true, REFUSALS_PER_CLIENT) else {
            return unanswered();
        };
        let Ok(permit) = Arc::clone(&self.refusals).try_acquire_owned() else {
            return unanswered();
        };
        let max = self.max;
        tokio::spawn(async move {
            let _permit = permit;
            // The client's count goes, and the refusal is counted, once its answer is ready,
            // before the answer is written: a client that has read it and connects again is
            // not counted twice.
            let counted = Arc::new(Mutex::new(Some(counted)));
            let waiting = Arc::clone(&counted);
            let answer = async move {
                let io: Box<dyn crate::serve::Io> = match acceptor {
                    None => Box::new(stream),
                    Some(acceptor) => Box::new(acceptor.accept(stream).await.ok()?),
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let counted = Arc::clone(&counted);
                    async move {
                        drain(request.into_body()).await;
                        if let Some(counted) =
                            counted.lock().unwrap_or_else(|p| p.into_inner()).take()
                        {
                            drop(counted);
                            crate::metrics::connection_refused("per_client");
                            tracing::debug!(%peer, "connection over its client's bound refused");
                        }
                        Ok::<_, Infallible>(refusal(max))
                    }
                });
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(false)
                    .header_read_timeout(REFUSAL_WITHIN)
                    .serve_connection(TokioIo::new(io), service)
                    .await
                    .ok()
            };
            let _ = tokio::time::timeout(REFUSAL_WITHIN, answer).await;
            if waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .is_some()
            {
                unanswered();
            }
        });
    }
}

/// Read `body` and drop it, up to [`REFUSAL_DRAINS`] bytes.
async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt as _;
    let mut read = 0;
    while read < REFUSAL_DRAINS {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

/// What a connection over its client's bound of `max` is answered.
fn refusal(max: usize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "too many connections from this address: {max} at once; try again later\n"
    ))));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 addresses are counted alone, whichever way they are written; IPv6 ones by /64.
    #[test]
    fn clients_are_addresses_and_ipv6_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            client_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            client_of(ip("2001:db8:1:2::1")),
            client_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_of(ip("::1")), ip("::"));
        assert_eq!(client_of(ip("64:ff9b::c000:207")), ip("192.0.2.7"));
    }

    /// A client holds at most its bound; a connection closed makes room for another, and
    /// clients are counted apart.
    #[test]
    fn a_client_holds_at_most_its_bound() {
        assert!(PerClient::new(0).is_none(), "no bound, no table");
        let table = PerClient::new(2).unwrap();
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        let first = table.enter(peer("192.0.2.7:1000")).unwrap();
        let _second = table.enter(peer("192.0.2.7:1001")).unwrap();
        assert!(table.enter(peer("192.0.2.7:1002")).is_none());
        assert!(table.enter(peer("[::ffff:192.0.2.7]:1003")).is_none());
        let _other = table.enter(peer("192.0.2.8:1000")).unwrap();
        drop(first);
        assert!(table.enter(peer("192.0.2.7:1004")).is_some());
        // Refusals are counted apart, a few a client.
        let refusals: Vec<_> = (0..REFUSALS_PER_CLIENT)
            .map(|n| {
                table.count(
                    peer(&format!("192.0.2.7:{}", 2000 + n)),
                    true,
                    REFUSALS_PER_CLIENT,
                )
            })
            .collect();
        assert!(refusals.iter().all(Option::is_some));
        assert!(
            table
                .count(peer("192.0.2.7:3000"), true, REFUSALS_PER_CLIENT)
                .is_none()
        );
        drop(refusals);
        assert!(
            table
                .count(peer("192.0.2.7:3000"), true, REFUSALS_PER_CLIENT)
                .is_some()
        );
        let open = table.open.lock().unwrap();
        assert_eq!(open.get(&client_of(peer("192.0.2.8:1").ip())), Some(&1));
    }
}
