//! The access gate: whether the upstream accepts a client's credential for a repository,
//! and which credential goes upstream on a client's behalf.
//!
//! A grant ([`AccessGrants`]) is recorded when the upstream answers `info/refs` for a
//! credential with a protocol v2 advertisement; a request without a fresh grant is checked
//! upstream ([`AccessGate::verify`]) before anything cached is touched.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use gitcache_protocol::advertise::{self, Advertised};
use gitcache_upstream::{Connections, Upstream};
use gix_hash::Kind as HashKind;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response};

use crate::access::{AccessGrants, Fingerprint};
use crate::body::{Body, passed_on_within, strip_hop_by_hop};
use crate::config::{CredentialMode, ProxyConfig, Secret};
use crate::error::Error;
use crate::metrics;
use crate::proxy::fingerprint;
use crate::target::Target;

/// The largest advertisement read from upstream to learn its object format.
const MAX_ADVERTISEMENT: usize = 1 << 20;

/// What the upstream said to a credential check.
pub(crate) enum Verified {
    /// Accepted; protocol v2 in this object format.
    V2(HashKind),
    /// Refused, or not protocol v2: the client gets the upstream's answer as it is.
    Answer(Box<Response<Body>>),
}

/// The grants, and what is needed to ask the upstream.
#[derive(Debug)]
pub(crate) struct AccessGate {
    grants: AccessGrants,
    credentials: CredentialMode,
    static_tokens: BTreeMap<String, Secret>,
    transfer_timeout: Duration,
    listing_timeout: Duration,
    /// Upstream connections kept between requests (per host and credential).
    connections: Connections,
}

impl AccessGate {
    pub(crate) fn new(config: &ProxyConfig) -> Self {
        AccessGate {
            grants: AccessGrants::new(config.access_ttl),
            credentials: config.credentials,
            static_tokens: config.static_tokens.clone(),
            transfer_timeout: config.upstream_transfer_timeout,
            listing_timeout: config.upstream_listing_timeout,
            connections: Connections::new(),
        }
    }

    /// Who the upstream accepted, for which repository, and when.
    pub(crate) fn grants(&self) -> &AccessGrants {
        &self.grants
    }

    /// The credential sent upstream for a client sending `headers`.
    pub(crate) fn credential(&self, target: &Target, headers: &HeaderMap) -> Option<String> {
        match self.credentials {
            CredentialMode::PassThrough => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            CredentialMode::Static => self
                .static_tokens
                .get(&target.host_name)
                .map(|t| t.authorization()),
            CredentialMode::None => None,
        }
    }

    pub(crate) fn upstream(
        &self,
        target: &Target,
        credential: Option<String>,
    ) -> Result<Upstream, Error> {
        let limits = gitcache_upstream::Limits {
            transfer_timeout: self.transfer_timeout,
            listing_timeout: self.listing_timeout,
            ..Default::default()
        };
        Ok(Upstream::new(&target.url, credential, target.timeout)?
            .with_limits(limits)
            .with_connections(self.connections.clone()))
    }

    /// The upstream as reached on behalf of the client sending `headers`: with its credential,
    /// and knowing the object format (see [`knowing_format`](Self::knowing_format)).
    pub(crate) fn upstream_for(
        &self,
        target: &Target,
        headers: &HeaderMap,
    ) -> Result<Upstream, Error> {
        let upstream = self.upstream(target, self.credential(target, headers))?;
        Ok(self.knowing_format(upstream, target, fingerprint(headers)))
    }

    /// `upstream`, told the object format the upstream advertised `target` in when it last
    /// granted `who` access, if that grant is fresh: a refresh then need not ask for it
    /// again. A repository's format is its own, whichever credential reaches it.
    pub(crate) fn knowing_format(
        &self,
        upstream: Upstream,
        target: &Target,
        who: Fingerprint,
    ) -> Upstream {
        match self.grants.format(&target.key, who) {
            Some(format) => upstream.with_object_format(format),
            None => upstream,
        }
    }

    /// Ask the upstream whether the client's credential may read the repository.
    pub(crate) async fn verify(
        &self,
        target: &Target,
        headers: &HeaderMap,
    ) -> Result<Verified, Error> {
        let upstream = self.upstream(target, self.credential(target, headers))?;
        let mut ask = HeaderMap::new();
        ask.insert("git-protocol", HeaderValue::from_static("version=2"));
        if let Some(agent) = headers.get(header::USER_AGENT) {
            ask.insert(header::USER_AGENT, agent.clone());
        }
        let started = std::time::Instant::now();
        let response = upstream
            .forward(
                Method::GET,
                "/info/refs?service=git-upload-pack",
                &ask,
                Empty::<Bytes>::new(),
            )
            .await?;
        metrics::upstream("verify", response.status().as_u16(), started.elapsed());
        if !response.status().is_success() {
            tracing::info!(status = %response.status(), "upstream refused access");
            return Ok(Verified::Answer(Box::new(passed_on_within(
                response,
                started,
                target.timeout,
                self.listing_timeout,
            ))));
        }
        // As git's client reads it: without smart HTTP's type the answer is a dumb server's
        // (or anything else), no advertisement to read; the client gets it as it is.
        if !is_advertisement(response.headers()) {
            tracing::info!("upstream answered without an advertisement's type: passed on");
            return Ok(Verified::Answer(Box::new(passed_on_within(
                response,
                started,
                target.timeout,
                self.listing_timeout,
            ))));
        }
        let (parts, mut body) = response.into_parts();
        let read = tokio::time::timeout(target.timeout, async {
            let mut read = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    read.extend_from_slice(&data);
                    if read.len() > MAX_ADVERTISEMENT {
                        return Ok((read, false));
                    }
                }
            }
            Ok::<_, hyper::Error>((read, true))
        })
        .await
        .map_err(|_| gitcache_upstream::Error::Timeout(target.timeout))?
        .map_err(|e| gitcache_upstream::Error::Protocol(format!("advertisement: {e}")))?;
        let (read, whole) = read;
        // Past the bound, what its whole lines say: the first tells v2 from v0.
        let lines = match whole {
            true => &read[..],
            false => gitcache_protocol::pktline::whole_lines(&read),
        };
        match (advertise::read_advertised(lines), whole) {
            (Ok(Advertised::V2(kind)), true) => Ok(Verified::V2(kind)),
            (Ok(Advertised::V2(_)), false) => Err(gitcache_upstream::Error::Protocol(format!(
                "advertisement: a v2 advertisement over {MAX_ADVERTISEMENT} bytes"
            ))
            .into()),
            (Ok(Advertised::Other), _) => {
                // Not v2 after all (its first line tells): the client gets the upstream's own
                // answer, what was read of it and then the rest as it comes.
                let answer = match whole {
                    true => Body::full(read),
                    false => Body::after(
                        read,
                        Body::upstream_within(body, target.timeout, self.listing_timeout),
                    ),
                };
                let mut response = Response::from_parts(parts, answer);
                strip_hop_by_hop(response.headers_mut());
                if whole {
                    // Its length is what was read, whatever the upstream said.
                    response.headers_mut().remove(header::CONTENT_LENGTH);
                }
                Ok(Verified::Answer(Box::new(response)))
            }
            (Err(err), _) => {
                Err(gitcache_upstream::Error::Protocol(format!("advertisement: {err}")).into())
            }
        }
    }
}

/// Whether `headers` give smart HTTP's type of an upload-pack advertisement.
fn is_advertisement(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-git-upload-pack-advertisement")
        })
}
