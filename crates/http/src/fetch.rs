//! The fetch decision: a `fetch` from a client that passed the access gate is answered from
//! the mirror (a hit), from the mirror refreshed first (a miss), from the mirror as it is when
//! the upstream is away (`serve_stale`), or by the upstream (what no refresh brings, and what
//! waited past `first_fetch_wait` for a mirror being made from nothing).

use std::sync::Arc;

use bytes::Bytes;
use gitcache_protocol::request::Fetch;
use gix_hash::Kind as HashKind;
use hyper::{HeaderMap, Response};

use gitcache_mirror::mirror::{ClientFetch, Hints, MAX_CLIENT_HAVES};

use crate::access_log::CacheState;
use crate::body::Body;
use crate::error::Error;
use crate::gate::AccessGate;
use crate::mirrors::{Mirrors, Wanted};
use crate::passthrough::Passthrough;
use crate::proxy::with_state;
use crate::responder::Responder;
use crate::target::Target;

/// The most commits one fetch may have fetched by id and kept; a fetch that lacks more is
/// passed through.
const MAX_KEPT_PER_FETCH: usize = 16;

/// The mirrors, the responder that writes packs from them, and how to reach the upstream.
#[derive(Debug)]
pub(crate) struct Fetches {
    pub(crate) mirrors: Arc<Mirrors>,
    pub(crate) responder: Responder,
    pub(crate) gate: Arc<AccessGate>,
    pub(crate) passthrough: Passthrough,
    /// Serve the mirror as it is when the upstream cannot be reached.
    pub(crate) serve_stale: bool,
    /// How long a fetch waits for a mirror made from nothing before it is passed through.
    pub(crate) first_fetch_wait: Option<std::time::Duration>,
    /// The credentials being asked about again (see [`Fetches::unvouched`]).
    pub(crate) rechecks: Rechecks,
}

/// A turn per repository and credential asked about again, and what the last ask came to
/// and when it was asked: fetches that all waited past their grant (a refresh that took
/// long ends, and wakes them together) ask the upstream one after another, and one asked
/// after another's need arose answers for it too when it was accepted or could not be
/// asked at all (an upstream away is not asked again by each in turn); a refusal answers
/// for nobody else (each gets its own, as the upstream sent it).
#[derive(Debug, Default)]
pub(crate) struct Rechecks {
    turns: std::sync::Mutex<std::collections::HashMap<Turn, Arc<Shared>>>,
}

/// Whose turn: a repository and a credential.
type Turn = (gitcache_storage::repo::RepoKey, crate::access::Fingerprint);

/// A turn, and what its last ask came to and when it was asked.
type Shared = tokio::sync::Mutex<Option<(std::time::Instant, Came)>>;

/// What an ask came to, as others in line take it.
#[derive(Debug, Clone)]
enum Came {
    Accepted,
    Refused,
    /// The upstream could not be asked: how long it was waited for, if that was it, and
    /// why.
    Failed(Option<std::time::Duration>, Arc<str>),
}

impl Came {
    /// What `verified` came to.
    fn of(verified: &Result<crate::gate::Verified, Error>) -> Came {
        match verified {
            Ok(crate::gate::Verified::V2(_)) => Came::Accepted,
            Ok(crate::gate::Verified::Answer(_)) => Came::Refused,
            Err(Error::Upstream(gitcache_upstream::Error::Timeout(waited))) => {
                Came::Failed(Some(*waited), Arc::from(""))
            }
            Err(err) => Came::Failed(None, Arc::from(err.to_string())),
        }
    }
}

/// How a caller's turn went.
#[derive(Debug)]
enum Turned<T> {
    /// It asked, and this is the answer.
    Asked(T),
    /// An acceptance asked for since its need arose answers for it, or it had no need any
    /// more by its turn.
    Covered,
    /// The upstream could not be asked for another caller since its need arose.
    Failed(Option<std::time::Duration>, Arc<str>),
}

impl Rechecks {
    /// `ask` (given when it asks) in `turn`'s turn, unless, once the turn is this caller's,
    /// an acceptance asked for at `needed` or after answers for it, or `needless` says
    /// there is no need any more (`None` then). `ask` says whether it was accepted.
    async fn ask<T, F, Fut>(
        &self,
        turn: &Turn,
        needed: std::time::Instant,
        needless: impl FnOnce() -> bool,
        ask: F,
    ) -> Turned<T>
    where
        F: FnOnce(std::time::Instant) -> Fut,
        Fut: std::future::Future<Output = (T, Came)>,
    {
        // Left however this ends: a caller dropped while it waits (its client gone) leaves
        // no turn behind.
        let held = Held {
            rechecks: self,
            turn,
            shared: Some(self.turn(turn)),
        };
        let mut last = held.shared.as_ref().expect("held").lock().await;
        match &*last {
            Some((at, Came::Accepted)) if *at >= needed => return Turned::Covered,
            Some((at, Came::Failed(waited, why))) if *at >= needed => {
                return Turned::Failed(*waited, Arc::clone(why));
            }
            _ if needless() => return Turned::Covered,
            _ => {}
        }
        let asked = std::time::Instant::now();
        let (answer, came) = ask(asked).await;
        *last = Some((asked, came));
        Turned::Asked(answer)
    }

    /// The turn of `who` for `key`, made if none waits.
    fn turn(&self, turn: &Turn) -> Arc<Shared> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(turns.entry(turn.clone()).or_default())
    }

    /// Done with `held`: its turn is forgotten once nobody else holds or waits for it.
    /// Let go of under the table's lock, so that of callers leaving at once the last one
    /// finds only the table's reference left.
    fn leave(&self, turn: &Turn, held: Arc<Shared>) {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        drop(held);
        if turns
            .get(turn)
            .is_some_and(|left| Arc::strong_count(left) == 1)
        {
            turns.remove(turn);
        }
    }
}

/// A caller's hold on a turn of [`Rechecks`], left when dropped.
struct Held<'a> {
    rechecks: &'a Rechecks,
    turn: &'a Turn,
    /// Taken when left.
    shared: Option<Arc<Shared>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            self.rechecks.leave(self.turn, shared);
        }
    }
}

/// The least time a request waits before its credential is asked about again (when its
/// grant has lapsed meanwhile; see [`Fetches::unvouched`]): with a TTL of zero every request
/// is checked as it comes in, and asked again only after such a wait.
const RECHECKED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long after a miss a clone that a mirror's first pack may answer waits for that pack
/// to be announced, when `first_fetch_wait` is shorter.
const ANNOUNCED_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a miss's wait for the refresh ended with.
enum Waited {
    /// The refresh ended: the ids it asked for ahead of the refs, or its error.
    Refreshed(Result<Vec<gix_hash::ObjectId>, Error>),
    /// The pack the refresh receives answers the fetch.
    Arriving(Arc<gitcache_mirror::live::LivePack>),
    /// The pack the refresh received, whole, answers the fetch with the entries of the kinds
    /// its filter keeps: where each lies.
    ArrivingFiltered(
        Arc<gitcache_mirror::live::LivePack>,
        (Vec<(u64, u64)>, gitcache_mirror::live::Turn),
    ),
    /// The refresh took in a pack that holds every want: the mirror answers now, its refs
    /// still to be written.
    Landed(Arc<gitcache_pack::Repository>),
    /// The mirror is being made from nothing and took longer than the first fetch may wait.
    TooLong,
    /// The mirror is being made from nothing, and the reading of its first pack had no room
    /// to walk the history between the fetch's wants and haves: the mirror would answer only
    /// once indexed, after a walk of that history without bitmaps (seconds, where the
    /// upstream has its bitmaps).
    PastTheWalk,
}

/// The check of an answer from the objects found early in a mirror's first pack, and its
/// start ([`Fetches::answer_early`]), with those objects.
type CheckingEarly<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Arc<gitcache_mirror::live::Early>, Result<Early, Error>)>
            + Send
            + 'a,
    >,
>;

/// What the objects found early in a mirror's first pack made of a fetch (see
/// [`Fetches::answer_early`]).
enum Early {
    /// The client's credential is not vouched for now: its refusal.
    Refused(Response<Body>),
    /// The answer, from those objects.
    Answered(Response<Body>),
    /// They do not answer it.
    Not,
}

/// What a fetch's answer is checked against before it is sent and stored.
#[derive(Debug, Clone, Copy)]
struct Vouched {
    /// Who passed the access gate.
    who: crate::access::Fingerprint,
    /// When the gate let the request in.
    checked: std::time::Instant,
    /// This request, with the repository's stored answers' removals then (see
    /// [`Responder::asked`]).
    ///
    /// [`Responder::asked`]: crate::responder::Responder::asked
    asked: crate::response_cache::Asked,
}

impl Fetches {
    /// A `fetch` from a client that passed the access gate: answered from the mirror,
    /// refreshed first when it lacks a want; what even a refreshed mirror lacks is passed
    /// through.
    pub(crate) async fn fetch(
        &self,
        target: &Target,
        headers: &HeaderMap,
        body: Bytes,
        fetch: Fetch,
        kind: HashKind,
        checked: std::time::Instant,
    ) -> Result<Response<Body>, Error> {
        // Who passed the gate, and when: a refusal since then (while this request waited for
        // a refresh) stops the answer before its first byte. And how often the repository's
        // stored answers were removed, taken before the mirror is opened: an answer made
        // from a handle opened before a purge is not stored after it.
        let vouched = Vouched {
            who: crate::proxy::fingerprint(headers),
            checked,
            asked: self.responder.asked(&target.key.relative_path()),
        };
        // The mirror's background work (the checks when it is first opened, the maintenance
        // a refresh asks for) waits until this answer is handed over.
        let answering = self.mirrors.registry().answering(&target.key);
        // Packs landed so far: one a refresh under way takes in from here on may answer a
        // miss (see below).
        let mut landings = self.mirrors.registry().landings(&target.key);
        let (wanted, fetch) = self.mirrors.with_wants(&target.key, fetch).await?;
        let missing = match wanted {
            Wanted::Present(repo) => {
                tracing::info!(result = "hit", "fetch");
                let response = self
                    .answer(target, headers, repo, fetch, kind, answering, vouched)
                    .await?;
                return Ok(with_state(response, CacheState::Hit));
            }
            Wanted::Lacking(missing) => missing,
        };

        // A miss: bring the mirror up to date with the client's credential, then serve.
        let upstream = self.gate.upstream_for(target, headers)?;
        // A mirror made from nothing may take long: past `first_fetch_wait` (from now), the
        // upstream answers (the refresh goes on in a task of its own either way).
        let creating = self.mirrors.registry().unfetched(&target.key);
        let deadline = self
            .first_fetch_wait
            .filter(|_| creating)
            // A wait past what the clock can hold is no deadline.
            .and_then(|wait| tokio::time::Instant::now().checked_add(wait));
        let too_long = until(deadline);
        // A clone that the first pack may answer waits a little longer for that pack to be
        // announced (the refresh's `ls-refs` and the upstream's start come first): up to
        // `ANNOUNCED_WITHIN`, after which it is passed through too. A refresh that finds
        // the mirror coming from elsewhere (another instance's fetch, the shared store) says
        // so at once (see the wait below).
        let unannounced =
            until(deadline.map(|d| d.max(tokio::time::Instant::now() + ANNOUNCED_WITHIN)));
        // The wants the mirror lacks are fetched by id beside the refresh's `ls-refs` (most
        // often the tip a push just made, which a CI job fetches by id).
        let ids = self
            .worth_keeping(target, &fetch, missing)
            .unwrap_or_default();
        // A fetch whose wants the mirror all lacks (most often the tips a push just made):
        // the pack fetched ahead is asked for as this client asks when it builds on what the
        // mirror holds (see `Mirror::refresh_hinted`), and may answer it as it arrives.
        let client =
            (answered_ahead(&fetch) && fetch.wants.iter().all(|w| ids.contains(w))).then(|| {
                ClientFetch {
                    haves: fetch.haves.clone(),
                    thin_pack: fetch.thin_pack,
                    include_tag: fetch.include_tag,
                }
            });
        let ahead = client.is_some();
        let hints = Hints {
            ids,
            client,
            keep_unreached: true,
        };
        // A fetch that depends on the mirror's objects alone is answered once a pack the
        // refresh takes in holds all it wants (a pack fetched ahead lands before the
        // upstream's refs are listed when that is slower), not once the refs are written;
        // one with `include-tag` too when a client's listing just now showed the mirror's
        // tags (see `answered_once_landed`).
        let early = reads_no_refs_but_tags(&fetch);
        let refresh = self
            .mirrors
            .refresh_asking(&target.key, upstream, true, Vec::new(), hints);
        tokio::pin!(refresh, too_long, unannounced);
        let filtered = arriving_filtered(&fetch);
        let waited = if arriving_answers(&fetch) || filtered.is_some() {
            // A clone of what a mirror made from nothing fetches is that first pack: sent
            // as it arrives, while the mirror takes it in. Faster than the upstream's own
            // answer, and no second pack upstream.
            let registry = self.mirrors.registry();
            let answers = |pack: &gitcache_mirror::live::LivePack| {
                pack.answers(&fetch.wants) && pack.object_format() == kind
            };
            // Waiting for the first pack's announcement (`unannounced` bounds it), then, once
            // it was made or the mirror is said to come from elsewhere, as any fetch waits
            // (`too_long`). A clone told the mirror comes from elsewhere (another instance
            // fetches it, or the shared store holds it) still takes the first pack should
            // this instance fetch it after all (the other instance's fetch failed).
            let (mut live, mut announced) = (true, false);
            // A filtered clone follows the pack until it is whole: then the kinds of its
            // entries are known.
            let mut whole: Option<Arc<gitcache_mirror::live::LivePack>> = None;
            // Made once: a landing it is opening the mirror for is not dropped when another
            // arm ends meanwhile.
            let landed = self.landed(target, &fetch, &mut landings);
            tokio::pin!(landed);
            loop {
                let arrived = async {
                    match &whole {
                        Some(pack) => pack.arrived_past(u64::MAX).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    // First: a pack whole answers, even should the refresh end at once.
                    progress = arrived, if whole.is_some() => {
                        let pack = whole.take().expect("a pack followed");
                        let keep = filtered.expect("a filtered clone");
                        let kinds = matches!(progress, gitcache_mirror::live::Progress::Whole(_))
                            .then(|| pack.entry_kinds())
                            .flatten()
                            .filter(|kinds| kinds.filterable());
                        // A few at a time (each holds where its entries lie), the list
                        // made once a turn is had.
                        let taken = kinds.and_then(|kinds| {
                            let turn = crate::responder::FILTERED.take()?;
                            Some((kinds.taken(keep)?, turn))
                        });
                        // Else (it failed, is not a choice of kinds, or too many are being
                        // sent so), as any fetch waits.
                        if let Some(taken) = taken {
                            break Waited::ArrivingFiltered(pack, taken);
                        }
                    }
                    outcome = &mut refresh => break Waited::Refreshed(outcome.map(|done| done.asked_ahead)),
                    pack = registry.live_pack(&target.key), if live => {
                        live = false;
                        match pack {
                            Some(pack) if answers(&pack) && filtered.is_some() => whole = Some(pack),
                            Some(pack) if answers(&pack) => break Waited::Arriving(pack),
                            Some(_) => {}
                            None => announced = true,
                        }
                    }
                    pack = registry.announced_pack(&target.key), if announced => {
                        announced = false;
                        if answers(&pack) && filtered.is_some() {
                            whole = Some(pack);
                        } else if answers(&pack) {
                            break Waited::Arriving(pack);
                        }
                    }
                    repo = &mut landed, if early => {
                        break Waited::Landed(repo);
                    }
                    // A filtered clone needs the pack whole: it waits as any fetch does.
                    () = &mut unannounced, if live && filtered.is_none() => break Waited::TooLong,
                    () = &mut too_long, if !live || filtered.is_some() => break Waited::TooLong,
                }
            }
        } else if ahead && !creating {
            // (A mirror being made from nothing fetches nothing ahead for a client: a fetch
            // that comes while its first pack arrives waits as the first fetch did, below.)
            // Waiting for the refresh, and meanwhile for a pack announced that answers this
            // fetch (another client's may, or may not). One that answers is followed once it
            // is whole, or has come past `FOLLOWED_PAST`: one that fails before is passed over
            // (the refresh goes on without it, and fetches again).
            let registry = self.mirrors.registry();
            let answers = |pack: &gitcache_mirror::live::LivePack| {
                pack.answers_fetch(
                    &fetch.wants,
                    &fetch.haves,
                    fetch.thin_pack,
                    fetch.include_tag,
                ) && pack.object_format() == kind
            };
            let (mut seen, mut live, mut candidate) = (None, true, None);
            // Made once (see above).
            let landed = self.landed(target, &fetch, &mut landings);
            tokio::pin!(landed);
            loop {
                let next = registry.live_pack_after(&target.key, seen.as_ref());
                let settled = settled(candidate.clone());
                tokio::select! {
                    biased;
                    outcome = &mut refresh => {
                        // The refresh ended (whichever way) as the pack was whole: that pack
                        // answers, as it is.
                        if let Some(pack) = candidate.take_if(|p| followed(&p.progress())) {
                            break Waited::Arriving(pack);
                        }
                        break Waited::Refreshed(outcome.map(|done| done.asked_ahead));
                    }
                    followed = settled, if candidate.is_some() => {
                        let pack = candidate.take().expect("a candidate");
                        if followed {
                            break Waited::Arriving(pack);
                        }
                        seen = Some(pack);
                    }
                    pack = next, if live && candidate.is_none() => match pack {
                        Some(pack) if answers(&pack) => candidate = Some(pack),
                        Some(pack) => seen = Some(pack),
                        None => live = false,
                    },
                    repo = &mut landed, if early => {
                        break Waited::Landed(repo);
                    }
                    () = &mut too_long => break Waited::TooLong,
                }
            }
        } else {
            // Meanwhile, a mirror made from nothing may answer from the objects found in its
            // first pack as it arrived, with the refs it will have: a shallow clone of the
            // tips most often needs nothing else (one that does waits on).
            let registry = self.mirrors.registry();
            let from_early = early && answerable_early(&fetch);
            // An incremental fetch whose history the reading's walks cut before its haves
            // (they had no room for a commit of it) is passed upstream as soon as that is
            // known (once a check of an answer under way said no).
            let walked = from_early && !fetch.haves.is_empty();
            let mut past_the_walk = false;
            let mut seen = None;
            // An answer from them being checked and begun: the refresh ending, or the wait
            // running out, meanwhile still ends the wait (dropping it sends nothing).
            let mut checking: Option<CheckingEarly<'_>> = None;
            let asked = &fetch;
            // Made once: a landing it is opening the mirror for is not dropped when a check
            // ends meanwhile.
            let landed = self.landed(target, asked, &mut landings);
            tokio::pin!(landed);
            loop {
                tokio::select! {
                    biased;
                    outcome = &mut refresh => break Waited::Refreshed(outcome.map(|done| done.asked_ahead)),
                    repo = &mut landed, if early => break Waited::Landed(repo),
                    (found, answer) = async { checking.as_mut().expect("checking").await }, if checking.is_some() => {
                        checking = None;
                        match answer? {
                            Early::Refused(refused) => return Ok(refused),
                            Early::Answered(response) => {
                                // The objects found are held by what writes the answer,
                                // as long as it writes (not by the body, which a slow
                                // client may read long after).
                                drop(found);
                                return Ok(with_state(
                                    response.map(|body| body.holding(answering)),
                                    CacheState::Miss,
                                ));
                            }
                            Early::Not if past_the_walk => break Waited::PastTheWalk,
                            Early::Not => seen = Some(found),
                        }
                    }
                    () = registry.early_past_the_walk(&target.key, &asked.wants, &asked.haves), if walked && !past_the_walk => {
                        past_the_walk = true;
                        if checking.is_none() {
                            break Waited::PastTheWalk;
                        }
                    }
                    found = registry.early_after(&target.key, seen.as_ref(), (&asked.wants, &asked.haves), asked.deepen), if from_early && checking.is_none() => {
                        checking = Some(Box::pin(async move {
                            let answer = self
                                .answer_early(target, headers, &found, asked, kind, &vouched)
                                .await;
                            (found, answer)
                        }));
                    }
                    () = &mut too_long => break Waited::TooLong,
                }
            }
        };
        let mut asked_ahead = Vec::new();
        let failure = match waited {
            Waited::Refreshed(Ok(asked)) => {
                asked_ahead = asked;
                None
            }
            Waited::Refreshed(Err(failure)) => Some(failure),
            Waited::Arriving(pack) => {
                if let Some(refused) = self.unvouched(target, headers, &vouched).await? {
                    return Ok(refused);
                }
                tracing::info!(result = "miss", arriving = true, "fetch");
                // A fetch that did not say `done` is told which of its haves the pack
                // was asked for with, and that it comes.
                let common = (!fetch.done).then(|| pack.haves().to_vec());
                let response = self
                    .responder
                    .serve_arriving(pack, fetch.sideband_all, common)
                    .map(|body| body.holding(answering));
                return Ok(with_state(response, CacheState::Miss));
            }
            Waited::ArrivingFiltered(pack, (taken, turn)) => {
                if let Some(refused) = self.unvouched(target, headers, &vouched).await? {
                    return Ok(refused);
                }
                tracing::info!(result = "miss", arriving = true, filtered = true, "fetch");
                let response = self
                    .responder
                    .serve_arriving_filtered(pack, (taken, turn), fetch.sideband_all)
                    .map(|body| body.holding(answering));
                return Ok(with_state(response, CacheState::Miss));
            }
            Waited::Landed(repo) => {
                tracing::info!(result = "miss", landed = true, "fetch");
                let response = self
                    .answer(target, headers, repo, fetch, kind, answering, vouched)
                    .await?;
                return Ok(with_state(response, CacheState::Miss));
            }
            Waited::TooLong => {
                tracing::info!(result = "passthrough", creating = true, "fetch");
                let response = self.passthrough.forward_body(target, headers, body).await?;
                return Ok(with_state(response, CacheState::Passthrough));
            }
            Waited::PastTheWalk => {
                tracing::info!(
                    result = "passthrough",
                    creating = true,
                    past_the_walk = true,
                    "fetch"
                );
                let response = self.passthrough.forward_body(target, headers, body).await?;
                return Ok(with_state(response, CacheState::Passthrough));
            }
        };
        if let Some(err @ Error::LowDisk { .. }) = &failure {
            // No room for the mirror: the upstream answers this one.
            tracing::warn!(%err, result = "passthrough", "fetch");
            let response = self.passthrough.forward_body(target, headers, body).await?;
            return Ok(with_state(response, CacheState::Passthrough));
        }
        if let Some(err) = failure {
            // The client passed the gate just now or within the TTL.
            if self.serve_stale
                && err.is_upstream_unavailable()
                && let Some(repo) = self.mirrors.open_blocking(&target.key).await?
            {
                if let Some(refused) = self.refused_meanwhile(target, &vouched) {
                    return Ok(refused);
                }
                // The upstream cannot say now whether it still accepts the credential: a
                // grant lapsed while the request waited vouches for nothing.
                if self.lapsed(target, &vouched) {
                    tracing::warn!(%err, result = "error", "fetch: upstream unavailable and the credential's grant lapsed while it waited");
                    return Err(err);
                }
                let mut stale = fetch;
                let present = Arc::clone(&repo);
                let stale = tokio::task::spawn_blocking(move || {
                    stale.wants.retain(|w| present.contains(w));
                    stale
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
                if !stale.wants.is_empty() || !stale.want_refs.is_empty() {
                    tracing::warn!(%err, result = "stale", "upstream unavailable, serving the mirror as it is");
                    let response = self
                        .responder
                        .serve_since(target.key.relative_path(), repo, stale, kind, vouched.asked)
                        .await;
                    return Ok(with_state(response, CacheState::Stale));
                }
            }
            tracing::warn!(%err, result = "error", "fetch");
            return Err(err);
        }
        match self.mirrors.with_wants(&target.key, fetch).await? {
            (Wanted::Present(repo), fetch) => {
                tracing::info!(result = "miss", "fetch");
                let response = self
                    .answer(target, headers, repo, fetch, kind, answering, vouched)
                    .await?;
                Ok(with_state(response, CacheState::Miss))
            }
            (Wanted::Lacking(missing), fetch) => {
                // Wants no mirrored ref reaches (a pull request's merge commit that CI fetches
                // by id): fetched by id into the mirror and kept, so that the next job is a
                // hit; what the upstream will not give by id is passed through.
                let Some(missing) = self.worth_keeping(target, &fetch, missing) else {
                    tracing::info!(result = "passthrough", "fetch");
                    let response = self.passthrough.forward_body(target, headers, body).await?;
                    return Ok(with_state(response, CacheState::Passthrough));
                };
                // Asked for by id ahead of the refs just now, and not given.
                if missing.iter().all(|m| asked_ahead.contains(m)) {
                    tracing::info!(
                        "commits asked for by id not kept: the upstream did not give them"
                    );
                    self.mirrors.note_refused(&target.key, &missing);
                    tracing::info!(result = "passthrough", "fetch");
                    let response = self.passthrough.forward_body(target, headers, body).await?;
                    return Ok(with_state(response, CacheState::Passthrough));
                }
                let upstream = self.gate.upstream_for(target, headers)?;
                let kept = self
                    .mirrors
                    .refresh_asking(
                        &target.key,
                        upstream,
                        false,
                        missing.clone(),
                        Hints::default(),
                    )
                    .await;
                match (kept, self.mirrors.with_wants(&target.key, fetch).await?) {
                    (Ok(_), (Wanted::Present(repo), fetch)) => {
                        tracing::info!(result = "miss", kept = true, "fetch");
                        let response = self
                            .answer(target, headers, repo, fetch, kind, answering, vouched)
                            .await?;
                        Ok(with_state(response, CacheState::Miss))
                    }
                    (kept, _) => {
                        if let Err(err) = &kept {
                            tracing::info!(%err, "commits asked for by id not kept");
                        }
                        // Short of disk, the upstream was not asked, or not to the end.
                        if !matches!(kept, Err(Error::LowDisk { .. })) {
                            self.mirrors.note_refused(&target.key, &missing);
                        }
                        tracing::info!(result = "passthrough", "fetch");
                        let response = self.passthrough.forward_body(target, headers, body).await?;
                        Ok(with_state(response, CacheState::Passthrough))
                    }
                }
            }
        }
    }

    /// Once a refresh of `target`'s mirror has taken in a pack past the `landings`th after
    /// which `fetch` may be answered (see [`landed_holding`](Self::landed_holding)): the
    /// mirror to answer from. Never ends otherwise.
    async fn landed(
        &self,
        target: &Target,
        fetch: &Fetch,
        landings: &mut u64,
    ) -> Arc<gitcache_pack::Repository> {
        let registry = self.mirrors.registry();
        loop {
            *landings = registry.landed_after(&target.key, *landings).await;
            if let Some(repo) = self.landed_holding(target, fetch).await {
                return repo;
            }
        }
    }

    /// The mirror of `target` if `fetch` may be answered now that a refresh took a pack in
    /// (see [`answered_once_landed`]) and it holds every want; `None` also when it cannot be
    /// opened (the fetch waits for the refresh).
    async fn landed_holding(
        &self,
        target: &Target,
        fetch: &Fetch,
    ) -> Option<Arc<gitcache_pack::Repository>> {
        if !answered_once_landed(fetch, || self.mirrors.tags_as_listed_lately(&target.key)) {
            return None;
        }
        match self.mirrors.holding(&target.key, fetch.wants.clone()).await {
            Ok(repo) => repo,
            Err(err) => {
                tracing::debug!(%err, "mirror not opened after a pack landed");
                None
            }
        }
    }

    /// The answer to `fetch` from the objects `found` in the first pack of `target`'s mirror
    /// as it arrived, if it can be planned from them alone and they hold all it sends; a
    /// refusal instead when the client's credential is not vouched for now.
    async fn answer_early(
        &self,
        target: &Target,
        headers: &HeaderMap,
        found: &Arc<gitcache_mirror::live::Early>,
        fetch: &Fetch,
        kind: HashKind,
        vouched: &Vouched,
    ) -> Result<Early, Error> {
        if let Some(refused) = self.unvouched(target, headers, vouched).await? {
            return Ok(Early::Refused(refused));
        }
        // A have the first pack holds and the copy left out would be neither acknowledged nor
        // left out of the answer: the mirror answers that fetch.
        if !fetch.haves.is_empty() && !found.holds_every_have_found(&fetch.haves) {
            tracing::debug!("a have found in the first pack is not among the objects copied");
            return Ok(Early::Not);
        }
        let answer = self
            .responder
            .serve_early(
                target.key.relative_path(),
                found,
                fetch.clone(),
                kind,
                vouched.asked,
            )
            .await;
        Ok(match answer {
            Some(response) => {
                tracing::info!(result = "miss", early = true, "fetch");
                Early::Answered(response)
            }
            None => {
                tracing::debug!(
                    found = found.found(),
                    "not answered from the objects found as the first pack arrived"
                );
                Early::Not
            }
        })
    }

    /// The answer to `fetch` from `repo`, the mirror of `target`, holding its background work
    /// back (`answering`) until it is handed over.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        target: &Target,
        headers: &HeaderMap,
        repo: Arc<gitcache_pack::Repository>,
        fetch: Fetch,
        kind: HashKind,
        answering: gitcache_mirror::registry::Answering,
        vouched: Vouched,
    ) -> Result<Response<Body>, Error> {
        if let Some(refused) = self.unvouched(target, headers, &vouched).await? {
            return Ok(refused);
        }
        Ok(self
            .responder
            .serve_since(target.key.relative_path(), repo, fetch, kind, vouched.asked)
            .await
            .map(|body| body.holding(answering)))
    }

    /// The answer to send instead of the mirror's when the client's credential is not
    /// vouched for now: refused since the gate let the request in (see
    /// [`refused_meanwhile`](Self::refused_meanwhile)), or, for a request whose grant lapsed
    /// while it waited (for a refresh, another client's included; see
    /// [`lapsed`](Self::lapsed)), not accepted again when asked now (in turns with other
    /// requests of the same credential, see [`Rechecks`]). Without this a credential revoked
    /// upstream, and never asked about since, could be answered with what a refresh brought
    /// long after its last acceptance.
    async fn unvouched(
        &self,
        target: &Target,
        headers: &HeaderMap,
        vouched: &Vouched,
    ) -> Result<Option<Response<Body>>, Error> {
        if let Some(refused) = self.refused_meanwhile(target, vouched) {
            return Ok(Some(refused));
        }
        if !self.lapsed(target, vouched) {
            return Ok(None);
        }
        let needed = std::time::Instant::now();
        let turn = (target.key.clone(), vouched.who);
        let verified = self
            .rechecks
            .ask(
                &turn,
                needed,
                // Renewed while it waited for its turn (a listing, the gate for another
                // request of the same credential).
                || !self.lapsed(target, vouched),
                |asked| async move {
                    let verified = self.gate.verify(target, headers).await;
                    let came = Came::of(&verified);
                    ((verified, asked), came)
                },
            )
            .await;
        let (verified, asked) = match verified {
            Turned::Asked(asked) => asked,
            // An acceptance, this request's or one that answers for it, counts for nothing
            // against a refusal that came after it was asked for (see
            // `AccessGrants::grant_at`).
            Turned::Covered => return Ok(self.refused_meanwhile(target, vouched)),
            Turned::Failed(waited, why) => {
                return Err(Error::Upstream(match waited {
                    Some(waited) => gitcache_upstream::Error::Timeout(waited),
                    None => gitcache_upstream::Error::Protocol(format!(
                        "checking the credential again: {why}"
                    )),
                }));
            }
        };
        let verified = verified?;
        let grants = self.gate.grants();
        match verified {
            crate::gate::Verified::V2(format) => {
                grants.grant_at(&target.key, vouched.who, asked, Some(format));
                Ok(self.refused_meanwhile(target, vouched))
            }
            crate::gate::Verified::Answer(response) if !response.status().is_success() => {
                grants.refused(&target.key, vouched.who, response.status().as_u16());
                tracing::info!(
                    result = "rejected",
                    "fetch: the credential was refused when asked again after its wait"
                );
                Ok(Some(with_state(*response, CacheState::Rejected)))
            }
            crate::gate::Verified::Answer(_) => Ok(Some(with_state(
                crate::error::text(
                    hyper::StatusCode::BAD_GATEWAY,
                    "gitcache: the upstream no longer answers this repository in protocol v2",
                ),
                CacheState::Rejected,
            ))),
        }
    }

    /// Whether the grant that let the request in has lapsed since (nothing renewed it) and
    /// the request waited at least [`RECHECKED_AFTER`]: it is to be asked about again before
    /// the mirror answers it.
    fn lapsed(&self, target: &Target, vouched: &Vouched) -> bool {
        vouched.checked.elapsed() >= RECHECKED_AFTER
            && !self.gate.grants().is_fresh(&target.key, vouched.who)
    }

    /// The answer to send instead of the mirror's when the upstream refused `who`'s
    /// credential for `target` since `checked`, when the gate let the request in (while it
    /// waited for a refresh), and the credential was not accepted again since.
    fn refused_meanwhile(&self, target: &Target, vouched: &Vouched) -> Option<Response<Body>> {
        if !(self.gate.grants()).refused_since(&target.key, vouched.who, vouched.checked) {
            return None;
        }
        tracing::info!(
            result = "rejected",
            "fetch: the credential was refused while it waited"
        );
        Some(with_state(
            crate::error::text(
                hyper::StatusCode::FORBIDDEN,
                "gitcache: the upstream refused this credential while the request waited",
            ),
            CacheState::Rejected,
        ))
    }

    /// `missing`, the wants of `fetch` the mirror of `target` lacks, when they are worth
    /// fetching by id and keeping: at most [`MAX_KEPT_PER_FETCH`], none refused lately, and
    /// no `want-ref` (a ref that is not mirrored is the upstream's to resolve).
    fn worth_keeping(
        &self,
        target: &Target,
        fetch: &Fetch,
        missing: Vec<gix_hash::ObjectId>,
    ) -> Option<Vec<gix_hash::ObjectId>> {
        let worth = fetch.want_refs.is_empty()
            && !missing.is_empty()
            && missing.len() <= MAX_KEPT_PER_FETCH
            && !self.mirrors.refused_lately(&target.key, &missing);
        worth.then_some(missing)
    }
}

/// How much of a pack fetched ahead must have arrived before a fetch it answers follows it,
/// when it is not whole yet: a pack that fails before then is passed over, and the refresh's
/// own fetch answers instead. (Most packs after a push are smaller: they are sent once whole
/// and checked, which costs the copy of a few KiB.)
const FOLLOWED_PAST: u64 = 1 << 20;

/// Whether `pack` is to be followed: once it is whole, or past [`FOLLOWED_PAST`]; not once it
/// failed. Never ends without a pack.
async fn settled(pack: Option<Arc<gitcache_mirror::live::LivePack>>) -> bool {
    let Some(pack) = pack else {
        return std::future::pending().await;
    };
    followed(&pack.arrived_past(FOLLOWED_PAST).await)
}

/// Whether a pack that has come as far as `progress` is to be followed (see [`settled`]).
fn followed(progress: &gitcache_mirror::live::Progress) -> bool {
    use gitcache_mirror::live::Progress;
    match progress {
        Progress::Whole(_) => true,
        Progress::Arriving(n) => *n > FOLLOWED_PAST,
        Progress::Failed(_) => false,
    }
}

/// Whether `fetch` could be answered by a mirror's first pack as it arrives: a plain clone
/// (`done`, nothing had), whose wants are then compared with that pack's.
fn arriving_answers(fetch: &Fetch) -> bool {
    fetch.done && fetch.haves.is_empty() && plain(fetch)
}

/// The kinds of objects a clone is sent should a mirror's first pack, once whole, answer it
/// with the entries of those kinds alone: a clone (`done`, nothing had, nothing shallow)
/// with the filter `blob:none` (no blob) or `tree:0` (commits and tags), whose wants are
/// then compared with that pack's. The pack is the closure of those wants, so these are the
/// objects `git upload-pack` sends, unless a want is a tree or a blob, or a tag tags one
/// (see [`EntryKinds::filterable`](gitcache_mirror::live::EntryKinds::filterable)): then it
/// waits, as any fetch does.
fn arriving_filtered(fetch: &Fetch) -> Option<fn(gix_object::Kind) -> bool> {
    use gitcache_protocol::filter::Filter;
    let clone = Fetch {
        filter: None,
        ..fetch.clone()
    };
    if !arriving_answers(&clone) {
        return None;
    }
    match fetch.filter.as_ref()? {
        Filter::BlobNone => Some(|kind| kind != gix_object::Kind::Blob),
        Filter::Tree(0) => {
            Some(|kind| matches!(kind, gix_object::Kind::Commit | gix_object::Kind::Tag))
        }
        _ => None,
    }
}

/// Whether `fetch` could be answered by a pack fetched ahead of the refs as it arrives: a
/// plain fetch with haves (at most [`MAX_CLIENT_HAVES`]) that may be sent a pack now
/// (`done`, or not waiting for it), whose wants and haves are then compared with that
/// pack's.
fn answered_ahead(fetch: &Fetch) -> bool {
    (fetch.done || !fetch.wait_for_done)
        && !fetch.haves.is_empty()
        && fetch.haves.len() <= MAX_CLIENT_HAVES
        && plain(fetch)
}

/// Whether `fetch` may be answered from a mirror whose refresh has taken in its wants but not
/// yet written the refs: its answer must not depend on the refs, so no ref asked for by name,
/// no `deepen-not` (refs named as the history's edge), no `deepen-relative` (counted from the
/// client's shallow commits that refs reach), and no `include-tag` (the tags sent are the
/// mirror's tags that point at what is sent, and a tag the push made comes with the refs)
/// unless `tags_as_listed` (a client's `ls-refs` answer of every tag, just now, listed the
/// mirror's tags as they are: the refresh brings no other).
fn answered_once_landed(fetch: &Fetch, tags_as_listed: impl FnOnce() -> bool) -> bool {
    reads_no_refs_but_tags(fetch) && (!fetch.include_tag || tags_as_listed())
}

/// Whether `fetch` wants objects and reads no refs but the tags of `include-tag` (see
/// [`answered_once_landed`]).
fn reads_no_refs_but_tags(fetch: &Fetch) -> bool {
    !fetch.wants.is_empty()
        && fetch.want_refs.is_empty()
        && fetch.deepen_not.is_empty()
        && !fetch.deepen_relative
}

/// Whether `fetch` is of a shape the objects found as a first pack arrives may answer:
/// - a shallow clone of depth one, which needs each commit wanted, its tree and what is in
///   it (what the reading follows, passing older trees once those are found), or of a
///   depth up to [`MOST_EARLY_DEPTH`](gitcache_mirror::live::MOST_EARLY_DEPTH), which needs
///   the same of each commit within that depth (what the reading walks, within a bound);
/// - an incremental fetch with neither deepening nor filter, which needs the commits from
///   its wants down to its haves and a few below, each with its tree and what is in it
///   (what the reading walks, within a bound), and of its haves found in the pack (one the
///   copy of what was found left out makes it wait for the mirror; one the pack lacks is
///   neither acknowledged there nor by the mirror).
///
/// Anything deeper or wider needs what the reading passed over: it would only start a
/// reading for nothing, on the cores the mirror's own indexing needs. Never with shallow
/// commits: the objects found do not tell where the client's history ends.
fn answerable_early(fetch: &Fetch) -> bool {
    let shallow_clone = fetch
        .deepen
        .is_some_and(|depth| (1..=gitcache_mirror::live::MOST_EARLY_DEPTH).contains(&depth))
        && fetch.deepen_since.is_none()
        && fetch.deepen_not.is_empty()
        && !fetch.deepen_relative
        && fetch.haves.is_empty();
    let incremental = !fetch.haves.is_empty()
        && !fetch.is_deepening()
        && !fetch.deepen_relative
        && fetch.filter.is_none();
    fetch.shallows.is_empty() && (shallow_clone || incremental)
}

/// Whether `fetch` wants objects by id and takes offset deltas, with no shallow, deepening
/// or filter and no ref asked for by name: what a pack fetched by a mirror may answer.
fn plain(fetch: &Fetch) -> bool {
    fetch.ofs_delta
        && !fetch.wants.is_empty()
        && fetch.want_refs.is_empty()
        && fetch.shallows.is_empty()
        && !fetch.is_deepening()
        && !fetch.deepen_relative
        && fetch.filter.is_none()
        && fetch.packfile_uris.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clone with `blob:none` or `tree:0` may be sent the kinds of a first pack's entries
    /// it takes; any other filter, or a fetch that is not a plain clone, may not.
    #[test]
    fn only_a_clone_filtering_out_kinds_is_sent_them_of_the_first_pack() {
        use gitcache_protocol::filter::Filter;
        use gix_object::Kind;
        let id = gix_hash::ObjectId::from_hex(b"ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
        let clone = |filter| Fetch {
            wants: vec![id],
            done: true,
            ofs_delta: true,
            filter: Some(filter),
            ..Fetch::default()
        };
        let blobless = arriving_filtered(&clone(Filter::BlobNone)).unwrap();
        assert!(blobless(Kind::Tree) && blobless(Kind::Commit) && !blobless(Kind::Blob));
        let treeless = arriving_filtered(&clone(Filter::Tree(0))).unwrap();
        assert!(treeless(Kind::Tag) && !treeless(Kind::Tree) && !treeless(Kind::Blob));
        let unfiltered = Fetch {
            filter: None,
            ..clone(Filter::BlobNone)
        };
        assert!(arriving_filtered(&unfiltered).is_none());
        for other in [
            Filter::BlobLimit(10),
            Filter::Tree(1),
            Filter::Combine(vec![Filter::BlobNone, Filter::Tree(0)]),
        ] {
            assert!(arriving_filtered(&clone(other)).is_none());
        }
        for fetch in [
            Fetch {
                haves: vec![id],
                ..clone(Filter::BlobNone)
            },
            Fetch {
                deepen: Some(1),
                ..clone(Filter::BlobNone)
            },
            Fetch {
                done: false,
                ..clone(Filter::BlobNone)
            },
            Fetch {
                want_refs: vec!["refs/heads/main".into()],
                ..clone(Filter::BlobNone)
            },
        ] {
            assert!(arriving_filtered(&fetch).is_none(), "{fetch:?}");
        }
    }

    /// Only a shallow clone of a depth up to `MOST_EARLY_DEPTH`, and an incremental fetch
    /// without deepening or filter, wait for the objects found as a first pack arrives: not
    /// a deeper clone, nor one by date or by refs, nor one counted from the client's shallow
    /// commits, nor a filtered clone of the history, nor a shallow clone with haves, nor a
    /// fetch with shallow commits or a filter.
    #[test]
    fn only_a_shallow_clone_or_a_plain_incremental_fetch_is_answered_early() {
        let id = gix_hash::ObjectId::from_hex(b"ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
        let clone = || Fetch {
            wants: vec![id],
            deepen: Some(1),
            ..Fetch::default()
        };
        assert!(answerable_early(&clone()));
        let filtered = Fetch {
            filter: Some(gitcache_protocol::filter::Filter::BlobNone),
            ..clone()
        };
        assert!(answerable_early(&filtered));
        let incremental = Fetch {
            deepen: None,
            haves: vec![id],
            ..clone()
        };
        assert!(answerable_early(&incremental));
        let most = gitcache_mirror::live::MOST_EARLY_DEPTH;
        for depth in [2, 50, most] {
            assert!(answerable_early(&Fetch {
                deepen: Some(depth),
                ..clone()
            }));
        }
        for fetch in [
            Fetch {
                deepen: Some(most + 1),
                ..clone()
            },
            Fetch {
                deepen: Some(2),
                deepen_not: vec!["refs/heads/old".into()],
                ..clone()
            },
            Fetch {
                deepen: Some(2),
                deepen_relative: true,
                ..clone()
            },
            Fetch {
                filter: Some(gitcache_protocol::filter::Filter::BlobNone),
                ..incremental.clone()
            },
            Fetch {
                shallows: vec![id],
                ..incremental.clone()
            },
            Fetch {
                deepen_since: Some(1),
                ..incremental.clone()
            },
            Fetch {
                deepen_relative: true,
                ..incremental.clone()
            },
            Fetch {
                deepen: None,
                ..filtered
            },
            Fetch {
                deepen_since: Some(1),
                ..clone()
            },
            Fetch {
                haves: vec![id],
                ..clone()
            },
            Fetch {
                shallows: vec![id],
                ..clone()
            },
            Fetch {
                deepen: None,
                ..clone()
            },
        ] {
            assert!(!answerable_early(&fetch), "{fetch:?}");
        }
    }

    /// Fetches that need their credential asked about again at once take turns: one
    /// accepted, or one that could not ask at all, after the others' need arose answers for
    /// them; a refusal answers for nobody else (each asks, and gets its own refusal); one
    /// whose need went while it waited asks nothing; the turn is forgotten after, also when
    /// a caller is dropped.
    #[tokio::test]
    async fn rechecks_of_one_credential_take_turns_and_an_acceptance_answers_for_all() {
        let rechecks = Rechecks::default();
        let key = gitcache_storage::repo::RepoKey::new("h", "o", "r").unwrap();
        let turn = (key, crate::access::Fingerprint::of(None));
        let needful = || false;
        let failed = Came::Failed(None, Arc::from("down"));
        for (came, asked_then) in [(Came::Accepted, 1), (Came::Refused, 4), (failed, 1)] {
            let asked = std::sync::atomic::AtomicUsize::new(0);
            let needed = std::time::Instant::now();
            let ask = |_at| async {
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                ((), came.clone())
            };
            let answers = tokio::join!(
                rechecks.ask(&turn, needed, needful, ask),
                rechecks.ask(&turn, needed, needful, ask),
                rechecks.ask(&turn, needed, needful, ask),
                rechecks.ask(&turn, needed, needful, ask),
            );
            let answers = [answers.0, answers.1, answers.2, answers.3];
            assert_eq!(asked.into_inner(), asked_then, "{came:?}");
            let asking = answers
                .iter()
                .filter(|a| matches!(a, Turned::Asked(())))
                .count();
            assert_eq!(asking, asked_then);
            let told = answers
                .iter()
                .filter(|a| matches!(a, Turned::Failed(None, why) if &**why == "down"));
            assert_eq!(
                told.count(),
                if matches!(came, Came::Failed(..)) {
                    3
                } else {
                    0
                }
            );
            assert!(rechecks.turns.lock().unwrap().is_empty());
        }
        // An answer asked for before a need arose does not answer for it; a need gone by
        // the caller's turn asks nothing.
        let later = std::time::Instant::now() + std::time::Duration::from_millis(1);
        let held = rechecks.turn(&turn);
        *held.lock().await = Some((std::time::Instant::now(), Came::Accepted));
        let after = (rechecks.ask(&turn, later, needful, |_| async { ((), Came::Accepted) })).await;
        assert!(
            matches!(after, Turned::Asked(())),
            "the acceptance came before the need"
        );
        let gone = (rechecks.ask(&turn, later, || true, |_| async { ((), Came::Accepted) })).await;
        assert!(matches!(gone, Turned::Covered), "renewed meanwhile");
        rechecks.leave(&turn, held);
        assert!(rechecks.turns.lock().unwrap().is_empty());
        // A caller dropped while it waits for its turn, or while it asks, leaves nothing.
        let held = rechecks.turn(&turn);
        let guard = held.lock().await;
        let waiting = rechecks.ask(&turn, later, needful, |_| async { ((), Came::Accepted) });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), waiting)
                .await
                .is_err()
        );
        drop(guard);
        rechecks.leave(&turn, held);
        let asking = rechecks.ask(&turn, later, needful, |_| {
            std::future::pending::<((), Came)>()
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), asking)
                .await
                .is_err()
        );
        assert!(rechecks.turns.lock().unwrap().is_empty());
    }

    /// Callers of one turn that end at once on several threads leave no turn behind: the
    /// last to let go of it removes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn callers_ending_together_leave_no_turn_behind() {
        let rechecks = Arc::new(Rechecks::default());
        let key = gitcache_storage::repo::RepoKey::new("h", "o", "r").unwrap();
        let turn = (key, crate::access::Fingerprint::of(None));
        for _ in 0..50 {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (rechecks, turn) = (Arc::clone(&rechecks), turn.clone());
                    tokio::spawn(async move {
                        let needed = std::time::Instant::now();
                        rechecks
                            .ask(&turn, needed, || false, |_| async { ((), Came::Refused) })
                            .await;
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            assert!(rechecks.turns.lock().unwrap().is_empty());
        }
    }

    /// Changes to a fetch that no pack as it arrives answers: no offset deltas, a ref by name,
    /// a shallow or deepening fetch, a filter, packfile URIs.
    const NEITHER: [fn(&mut Fetch); 9] = [
        |f| f.ofs_delta = false,
        |f| f.want_refs.push("refs/heads/main".into()),
        |f| {
            f.shallows
                .push(gix_hash::ObjectId::from_bytes_or_panic(&[3; 20]))
        },
        |f| f.deepen = Some(1),
        |f| f.deepen_since = Some(1),
        |f| f.deepen_not.push("refs/heads/old".into()),
        |f| f.deepen_relative = true,
        |f| f.filter = Some(gitcache_protocol::filter::Filter::BlobNone),
        |f| f.packfile_uris.push("https".into()),
    ];

    #[test]
    fn only_a_plain_clone_is_answered_by_an_arriving_pack() {
        let clone = Fetch {
            wants: vec![gix_hash::ObjectId::from_bytes_or_panic(&[1; 20])],
            done: true,
            ofs_delta: true,
            thin_pack: true,
            no_progress: true,
            include_tag: true,
            ..Fetch::default()
        };
        assert!(arriving_answers(&clone));
        let unlike: [fn(&mut Fetch); 3] = [
            |f| f.done = false,
            |f| f.wants.clear(),
            |f| {
                f.haves
                    .push(gix_hash::ObjectId::from_bytes_or_panic(&[2; 20]))
            },
        ];
        for (i, change) in unlike.iter().chain(&NEITHER).enumerate() {
            let mut fetch = clone.clone();
            change(&mut fetch);
            assert!(!arriving_answers(&fetch), "case {i}");
        }
    }

    /// Every fetch shape but those whose answer reads the mirror's refs (a ref by name,
    /// `deepen-not`, `deepen-relative`, `include-tag`) is answered once a pack holding its
    /// wants is in.
    #[test]
    fn fetches_that_read_no_refs_are_answered_once_their_pack_is_in() {
        let ci = Fetch {
            wants: vec![gix_hash::ObjectId::from_bytes_or_panic(&[1; 20])],
            done: true,
            ofs_delta: true,
            deepen: Some(1),
            no_progress: true,
            ..Fetch::default()
        };
        let neither = || false;
        assert!(answered_once_landed(&ci, neither));
        let objects_alone: [fn(&mut Fetch); 4] = [
            |f| f.deepen = None,
            |f| f.filter = Some(gitcache_protocol::filter::Filter::BlobNone),
            |f| f.thin_pack = true,
            |f| {
                f.haves
                    .push(gix_hash::ObjectId::from_bytes_or_panic(&[2; 20]))
            },
        ];
        for (i, change) in objects_alone.iter().enumerate() {
            let mut fetch = ci.clone();
            change(&mut fetch);
            assert!(answered_once_landed(&fetch, neither), "case {i}");
        }
        // Tags: only when a listing of them just now found the mirror's.
        let tags = Fetch {
            include_tag: true,
            ..ci.clone()
        };
        assert!(answered_once_landed(&tags, || true));
        let reading_refs: [fn(&mut Fetch); 5] = [
            |f| f.include_tag = true,
            |f| f.want_refs.push("refs/heads/main".into()),
            |f| f.deepen_not.push("refs/heads/old".into()),
            |f| f.deepen_relative = true,
            |f| f.wants.clear(),
        ];
        for (i, change) in reading_refs.iter().enumerate() {
            let mut fetch = ci.clone();
            change(&mut fetch);
            assert!(!answered_once_landed(&fetch, neither), "case {i}");
            let refs_beyond_tags = i > 0;
            assert_eq!(
                answered_once_landed(&fetch, || true),
                !refs_beyond_tags,
                "case {i}"
            );
        }
    }

    /// A pack fetched ahead is followed once whole or past `FOLLOWED_PAST`, not once it
    /// failed (a publisher dropped before the end is a failure).
    #[tokio::test]
    async fn a_pack_is_followed_once_whole_or_past_its_first_mib() {
        use gitcache_mirror::live::{Asked, Board};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Board::default();
        let announce = || {
            let file = std::fs::File::open(&path).unwrap();
            let publisher = board.announce(Asked::default(), HashKind::Sha1, file);
            (board.current().unwrap(), publisher)
        };
        let within =
            |pack| tokio::time::timeout(std::time::Duration::from_secs(30), settled(Some(pack)));

        let (pack, publisher) = announce();
        let waiting = tokio::spawn(within(Arc::clone(&pack)));
        publisher.arrived(100);
        publisher.arrived(FOLLOWED_PAST);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "not past its first MiB yet");
        publisher.arrived(FOLLOWED_PAST + 1);
        assert!(waiting.await.unwrap().unwrap());

        let (pack, publisher) = announce();
        publisher.arrived(100);
        publisher.whole(200);
        assert!(within(pack).await.unwrap());

        let (pack, publisher) = announce();
        let waiting = tokio::spawn(within(Arc::clone(&pack)));
        publisher.arrived(100);
        publisher.failed("cut");
        assert!(!waiting.await.unwrap().unwrap());

        let (pack, publisher) = announce();
        drop(publisher);
        assert!(!within(pack).await.unwrap());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), settled(None))
                .await
                .is_err(),
            "no pack: never"
        );
    }

    #[test]
    fn only_a_plain_fetch_with_haves_is_answered_by_a_pack_fetched_ahead() {
        let oid = |n: u8| gix_hash::ObjectId::from_bytes_or_panic(&[n; 20]);
        let fetch = Fetch {
            wants: vec![oid(1)],
            haves: vec![oid(2)],
            ofs_delta: true,
            thin_pack: true,
            ..Fetch::default()
        };
        assert!(answered_ahead(&fetch));
        assert!(answered_ahead(&Fetch {
            done: true,
            wait_for_done: true,
            ..fetch.clone()
        }));
        let unlike: [fn(&mut Fetch); 4] = [
            |f| f.wait_for_done = true,
            |f| f.wants.clear(),
            |f| f.haves.clear(),
            |f| {
                f.haves = (0..=MAX_CLIENT_HAVES)
                    .map(|i| gix_hash::ObjectId::from_bytes_or_panic(&[i as u8; 20]))
                    .collect();
            },
        ];
        for (i, change) in unlike.iter().chain(&NEITHER).enumerate() {
            let mut changed = fetch.clone();
            change(&mut changed);
            assert!(!answered_ahead(&changed), "case {i}");
        }
    }
}
