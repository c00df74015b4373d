//! Noticing that the upstream moved: every `ls-refs` of a cached repository goes upstream
//! with the client's own credential and its answer is passed on as it arrives; a whole,
//! well-formed answer renews the client's grant, and refs that differ from the mirror's start
//! a background refresh (warming) with the credential gitcache uses for its own refreshes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gix_hash::Kind as HashKind;
use http_body_util::BodyExt as _;
use hyper::header;
use hyper::{HeaderMap, Response};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::access::Fingerprint;
use crate::access_log::CacheState;
use crate::body::Body;
use crate::config::Secret;
use crate::error::Error;
use crate::gate::AccessGate;
use crate::mirrors::Mirrors;
use crate::passthrough::Passthrough;
use crate::proxy::{fingerprint, with_state};
use crate::target::Target;

/// The largest `ls-refs` answer kept to compare with the mirror (it is passed on whatever its
/// size).
const MAX_LS_REFS_COPY: usize = 64 << 20;

/// The `ls-refs` tee, and the credential of the refreshes gitcache starts on its own.
#[derive(Debug)]
pub(crate) struct Warming {
    pub(crate) mirrors: Arc<Mirrors>,
    pub(crate) gate: Arc<AccessGate>,
    pub(crate) passthrough: Passthrough,
    /// How long a client may leave the answer unread.
    pub(crate) stall: std::time::Duration,
    pub(crate) github_app: Option<Arc<gitcache_upstream::github_app::GitHubApp>>,
    pub(crate) service_token: Option<Secret>,
    /// The default upstream's host (the one a GitHub App serves).
    pub(crate) default_host: String,
    /// What the copies of listings kept to compare may take, all together.
    pub(crate) budget: crate::body::BodyBudget,
}

impl Warming {
    pub(crate) async fn ls_refs(
        self: &Arc<Self>,
        target: &Target,
        headers: &HeaderMap,
        body: Bytes,
        kind: HashKind,
        every_tag: bool,
    ) -> Result<Response<Body>, Error> {
        // Ask for the answer unencoded, so that the copy kept for comparison can be read.
        let mut ask = headers.clone();
        ask.remove(header::ACCEPT_ENCODING);
        // The listing counts from when it was asked for (the grant it renews, the tags it
        // vouches for): a refusal that overtook it wins.
        let asked = Instant::now();
        let response = self.passthrough.forward_body(target, &ask, body).await?;
        let who = fingerprint(headers);
        if !response.status().is_success() {
            // Refused now: the grant this request passed on ends here, not at its TTL.
            let status = response.status().as_u16();
            self.gate.grants().refused(&target.key, who, status);
            return Ok(with_state(response, CacheState::Rejected));
        }
        if every_tag {
            // Until this listing is read whole, the mirror's tags are not vouched for: a fetch
            // sent meanwhile waits for the refs (see `Mirrors::moved`).
            self.mirrors.tags_listing(&target.key, asked);
        }
        let idle = target.timeout;
        // Pass the answer on as it arrives, keeping a copy to compare with the mirror.
        let (parts, mut upstream_body) = response.into_parts();
        let (tx, rx) = mpsc::channel(8);
        let stall = self.stall;
        let warming = Arc::clone(self);
        let target = target.clone();
        let warm_credential = self.gate.credential(&target, headers);
        tokio::spawn(
            async move {
                // Within the bound of one and the budget of all: beyond, the listing is passed
                // on all the same, not compared.
                let mut copy =
                    crate::body::BudgetedCopy::new(warming.budget.clone(), MAX_LS_REFS_COPY);
                loop {
                    // An upstream that goes silent is let go too.
                    let Ok(frame) = tokio::time::timeout(idle, upstream_body.frame()).await else {
                        let _ = tx
                            .send(Err(std::io::Error::other("the upstream went silent")))
                            .await;
                        return;
                    };
                    let Some(frame) = frame else {
                        break;
                    };
                    match frame {
                        Ok(frame) => {
                            let Ok(data) = frame.into_data() else {
                                continue;
                            };
                            copy.push(&data);
                            // A client that stops reading is let go, not waited for.
                            let sent = tokio::time::timeout(stall, tx.send(Ok(data))).await;
                            if !matches!(sent, Ok(Ok(()))) {
                                return;
                            }
                        }
                        Err(err) => {
                            let _ = tx.send(Err(std::io::Error::other(err))).await;
                            return;
                        }
                    }
                }
                drop(tx);
                match copy.finish() {
                    Some((copy, _share)) => {
                        // Parsing and comparing with the mirror is CPU and disk work.
                        let _ = tokio::task::spawn_blocking(move || {
                            let listed = crate::mirrors::Listed { asked, every_tag };
                            warming.after_ls_refs(
                                &target,
                                who,
                                listed,
                                &copy,
                                kind,
                                warm_credential,
                            );
                        })
                        .await;
                    }
                    None => tracing::debug!(
                        "a listing too large to keep (or no budget left): passed on, not compared"
                    ),
                }
            }
            .in_current_span(),
        );
        Ok(Response::from_parts(parts, Body::channel(rx)))
    }

    /// After a whole `ls-refs` answer passed through: a well-formed one renews the client's
    /// grant (a success status alone proves nothing: a login page is a 200 too), and a
    /// background refresh starts when its refs differ from the mirror's.
    fn after_ls_refs(
        self: &Arc<Self>,
        target: &Target,
        who: Fingerprint,
        listed: crate::mirrors::Listed,
        ls_refs: &[u8],
        kind: HashKind,
        credential: Option<String>,
    ) {
        let Ok(remote) = gitcache_protocol::ls_refs::parse_response(ls_refs, kind) else {
            tracing::info!("the upstream's ls-refs answer is not protocol v2; no grant");
            return;
        };
        self.gate
            .grants()
            .grant_at(&target.key, who, listed.asked, None);
        // What the refs moved to, fetched ahead of the refresh's own `ls-refs`; what the
        // listing says of the tags noted first (a fetch waiting for that refresh reads it
        // once a pack lands).
        let Some(hints) = self.mirrors.moved(&target.key, &remote, Some(&listed)) else {
            return;
        };
        let (proxy, target) = (Arc::clone(self), target.clone());
        tokio::spawn(
            async move {
                let client = credential.clone();
                let credential = proxy.credential(&target, credential).await;
                // The listing client's own credential, when gitcache has none of its own.
                let own = credential.is_some() && credential != client;
                if let Ok(upstream) = proxy.gate.upstream(&target, credential) {
                    let upstream = proxy.gate.knowing_format(upstream, &target, who);
                    let key = target.key.clone();
                    proxy.mirrors.warm(
                        key,
                        upstream,
                        crate::mirrors::Warming::RefsMoved,
                        true,
                        hints,
                        own,
                    );
                }
            }
            .in_current_span(),
        );
    }

    /// The credential for a refresh gitcache starts on its own: for the default upstream, a
    /// GitHub App installation token when an App is configured, else the service token; else
    /// (and for every other upstream: the token is the default upstream's, never sent to
    /// another host) `fallback`, the credential of the request that noticed the change, or
    /// in `static` mode that host's own token.
    pub(crate) async fn credential(
        &self,
        target: &Target,
        fallback: Option<String>,
    ) -> Option<String> {
        if target.host_name != self.default_host {
            // That host's own credential in `static` mode, else the client's.
            return fallback.or_else(|| self.gate.credential(target, &HeaderMap::new()));
        }
        if let Some(app) = &self.github_app {
            match app
                .authorization(target.key.owner(), target.key.repo())
                .await
            {
                Ok(authorization) => return Some(authorization),
                Err(err) => tracing::warn!(%err, "no GitHub App token; using the service token"),
            }
        }
        self.service_token
            .as_ref()
            .map(|t| t.authorization())
            .or(fallback)
    }
}

/// Whether an `ls-refs` request asks for every tag: no ref prefix, or one that every tag's
/// name starts with.
pub(crate) fn lists_every_tag(args: &gitcache_protocol::request::LsRefs) -> bool {
    args.ref_prefixes.is_empty()
        || (args.ref_prefixes.iter()).any(|p| b"refs/tags/".starts_with(p.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::lists_every_tag;
    use gitcache_protocol::request::LsRefs;

    fn ls_refs(prefixes: &[&str]) -> LsRefs {
        LsRefs {
            symrefs: true,
            peel: true,
            unborn: false,
            ref_prefixes: prefixes.iter().map(|p| (*p).into()).collect(),
        }
    }

    /// As `git clone` and `git fetch` ask, and with no prefix: every tag; a branch's or a
    /// tag's own prefix: not.
    #[test]
    fn a_listing_of_every_tag_is_told_from_one_of_some() {
        for every in [&[][..], &["HEAD", "refs/heads/", "refs/tags/"], &["refs/"]] {
            assert!(lists_every_tag(&ls_refs(every)), "{every:?}");
        }
        for some in [&["refs/heads/"][..], &["refs/tags/v1"], &["HEAD"]] {
            assert!(!lists_every_tag(&ls_refs(some)), "{some:?}");
        }
    }
}
