//! Passing requests through to the upstream: what gitcache does not serve from a mirror goes
//! upstream with the credential the access gate chose, the answer streamed back.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{HeaderMap, Method, Response};

use crate::body::{Body, passed_on};
use crate::error::Error;
use crate::gate::AccessGate;
use crate::metrics;
use crate::target::Target;

/// The headers of a git v2 request passed upstream with a body gitcache read
/// (`Authorization` only as the source of [`AccessGate::credential`]: the upstream client sends
/// the credential that chooses, never the header itself).
const GIT_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "accept",
    "accept-encoding",
    "accept-language",
    "git-protocol",
    "user-agent",
];
/// Requests passed to the upstream.
#[derive(Debug, Clone)]
pub(crate) struct Passthrough {
    gate: Arc<AccessGate>,
}

impl Passthrough {
    pub(crate) fn new(gate: Arc<AccessGate>) -> Self {
        Passthrough { gate }
    }

    /// Send a request body already read (and decoded) upstream. Only the headers of git's
    /// own request go with it: the one credential is the `Authorization` that
    /// [`AccessGate::credential`] chooses, the same one the access gate fingerprints
    /// (a `Cookie` or a forge's token header would let the upstream accept a request for a
    /// credential the gate never saw).
    pub(crate) async fn forward_body(
        &self,
        target: &Target,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, Error> {
        let headers: HeaderMap = headers
            .iter()
            .filter(|(name, _)| GIT_REQUEST_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let upstream = self
            .gate
            .upstream(target, self.gate.credential(target, &headers))?;
        let started = std::time::Instant::now();
        let response = upstream
            .forward_bytes(Method::POST, "/git-upload-pack", &headers, body)
            .await?;
        metrics::upstream("forward", response.status().as_u16(), started.elapsed());
        Ok(passed_on(response, started, target.timeout))
    }

    /// Pass a request through to the upstream, streamed both ways.
    pub(crate) async fn forward<B>(
        &self,
        target: &Target,
        method: Method,
        suffix: &str,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Response<Body>, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let upstream = self
            .gate
            .upstream(target, self.gate.credential(target, headers))?;
        let started = std::time::Instant::now();
        let response = upstream.forward(method, suffix, headers, body).await?;
        metrics::upstream("forward", response.status().as_u16(), started.elapsed());
        Ok(passed_on(response, started, target.timeout))
    }
}
