//! The responder: answers a `fetch` from a mirror, through the response cache when it
//! applies, with pack generation on blocking threads limited by its pack slots and streamed
//! to the client through a bounded channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gitcache_pack::Repository;
use gitcache_protocol::request::Fetch;
use gix_hash::Kind as HashKind;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::{Semaphore, mpsc};

use crate::body::{Body, ChannelWriter, GiveWay, Spill};
use crate::metrics;
use crate::response_cache::{
    Asked, Lookup, Regenerate, ResponseCache, ResponseKey, Resume, follow, response_key,
    send_stored, still_keyed,
};

/// The content type of upload-pack results.
pub(crate) const RESULT_TYPE: &str = "application/x-git-upload-pack-result";

/// What answers fetches from mirrors: the pack slots, the response cache and the settings
/// generation needs. One per proxy.
#[derive(Debug)]
pub(crate) struct Responder {
    /// Pack generation settings.
    pack: gitcache_pack::Options,
    /// How long a response waits for a client that stopped reading.
    stall: Duration,
    /// Pack responses generated at once.
    pack_slots: PackSlots,
    /// Where live generations put what their clients have not taken yet.
    spill: Spill,
    /// The response cache, if it is on.
    cache: Option<Arc<ResponseCache>>,
    /// Requests keyed at once (one per core): a key may read every ref of the mirror (an
    /// `include-tag` fetch's tags, a clone's tips against the marked pack), a million of
    /// them in some 150 MB, before any pack slot is asked for.
    keying: Arc<tokio::sync::Semaphore>,
}

/// Bytes of objects compressed again kept for later answers, unless the configuration gives
/// a store of its own.
const REMADE_BYTES: usize = 64 << 20;

impl Responder {
    /// A responder generating with `pack` settings, at most `slots` packs at once, spilling
    /// what slow clients have not taken into `spill`.
    pub(crate) fn new(
        mut pack: gitcache_pack::Options,
        stall: Duration,
        slots: usize,
        spill: Spill,
        cache: Option<Arc<ResponseCache>>,
    ) -> Self {
        // Objects one answer compresses again are kept for the next (shallow clones of
        // nearby commits make most of the same ones).
        pack.remade
            .get_or_insert_with(|| Arc::new(gitcache_pack::Remade::new(REMADE_BYTES)));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Responder {
            pack,
            stall,
            pack_slots: PackSlots::new(slots),
            spill,
            cache,
            keying: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    /// The settings answers are written with (their store of objects compressed again
    /// included).
    pub(crate) fn options(&self) -> &gitcache_pack::Options {
        &self.pack
    }

    /// The store of objects compressed again that answers share.
    pub(crate) fn remade(&self) -> Option<&Arc<gitcache_pack::Remade>> {
        self.pack.remade.as_ref()
    }

    /// The response cache, if it is on.
    pub(crate) fn cache(&self) -> Option<&Arc<ResponseCache>> {
        self.cache.as_ref()
    }

    /// A new request for the repository at `rel`, with how many times its stored answers
    /// were removed, here and from the bucket: taken before its mirror is opened, an answer
    /// made from that handle is not stored after a removal (a purge) since
    /// ([`serve_since`](Self::serve_since)).
    pub(crate) fn asked(&self, rel: &std::path::Path) -> Asked {
        Asked::new(self.cache.as_ref().map_or((0, 0), |cache| {
            (cache.removals_of(rel), cache.shared_deletions_of(rel))
        }))
    }

    /// Answer `fetch` from `repo`, through the response cache when it applies: a stored
    /// answer, a generation in progress to follow, or a new one that others may follow.
    #[cfg(test)]
    pub(crate) async fn serve(
        &self,
        rel: PathBuf,
        repo: Arc<Repository>,
        fetch: Fetch,
        kind: HashKind,
    ) -> Response<Body> {
        let asked = self.asked(&rel);
        self.serve_since(rel, repo, fetch, kind, asked).await
    }

    /// [`serve`](Self::serve) for the request `asked`, with `repo` opened after the
    /// repository's stored answers had been removed `asked.removals` times
    /// ([`asked`](Self::asked)).
    pub(crate) async fn serve_since(
        &self,
        rel: PathBuf,
        repo: Arc<Repository>,
        fetch: Fetch,
        kind: HashKind,
        asked: Asked,
    ) -> Response<Body> {
        let Some(cache) = &self.cache else {
            return self
                .live(repo, fetch, kind, Beforehand::Nothing, None)
                .await;
        };
        let Ok((key, fetch)) = self.key(&repo, fetch, kind, None).await else {
            return crate::error::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gitcache: internal error",
            );
        };
        let keyed = match key {
            Ok(Some(keyed)) => keyed,
            Ok(None) => {
                return self
                    .live(repo, fetch, kind, Beforehand::Nothing, None)
                    .await;
            }
            Err(err) => {
                tracing::warn!(%err, "no response key, generating live");
                return self
                    .live(repo, fetch, kind, Beforehand::Nothing, None)
                    .await;
            }
        };
        let answer = Answer {
            rel,
            repo,
            fetch,
            kind,
            asked,
            held: None,
        };
        self.serve_keyed(cache, answer, keyed, None).await
    }

    /// `key` run on a blocking thread in a turn of its own: requests are keyed a few at a
    /// time (a key may read every ref).
    async fn keying<T: Send + 'static>(
        &self,
        key: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        // Never closed.
        let turn = Arc::clone(&self.keying).acquire_owned().await;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            key()
        })
        .await
    }

    /// The response key of `fetch` to `repo` (keyed on a blocking thread, see
    /// [`keying`](Self::keying)), with `fetch` as the key pinned it (its haves those `repo`
    /// holds); no key for an answer not stored (a stored pack sent as it is). `held` is kept
    /// while the key is made (it goes on should the caller stop waiting for it).
    async fn key(
        &self,
        repo: &Arc<Repository>,
        mut fetch: Fetch,
        kind: HashKind,
        held: Option<Held>,
    ) -> Result<(Keyed, Fetch), tokio::task::JoinError> {
        let repo = Arc::clone(repo);
        self.keying(move || {
            let _held = held;
            // Keyed first: the key pins the haves the answer is made with.
            let key = response_key(&repo, &mut fetch, kind);
            // A stored pack sent as it is (a clone of the marked tips) is not stored
            // again: its first answer is already the time of reading the file.
            if gitcache_pack::answered_by_marked_pack(&repo, &fetch).unwrap_or(false) {
                return (Ok(None), fetch);
            }
            (key, fetch)
        })
        .await
    }

    /// [`serve_since`](Self::serve_since) of `answer`, keyed `keyed`, keeping `answer.held`
    /// until every generation and writing it starts (its own, or one it leads for others)
    /// has ended. The generation it leads, if it does, writes the plan `planned` still holds
    /// (made for `answer` and held whole, see [`serve_early`](Self::serve_early)), taking
    /// it, rather than plan again.
    async fn serve_keyed(
        &self,
        cache: &Arc<ResponseCache>,
        answer: Answer,
        keyed: ResponseKey,
        planned: Option<SharedPlan>,
    ) -> Response<Body> {
        let Answer {
            rel,
            repo,
            fetch,
            kind,
            asked,
            held,
        } = answer;
        let key = keyed.key.clone();
        let (tx, rx) = mpsc::channel(4);
        let stall = self.stall;
        let span = tracing::Span::current();
        let regenerate: Regenerate = {
            let (repo, fetch, held) = (Arc::clone(&repo), fetch.clone(), held.clone());
            let options = self.pack.clone();
            let slots = self.pack_slots.clone();
            let runtime = tokio::runtime::Handle::current();
            let spill = self.spill.clone();
            Arc::new(move |out: &mut Resume<'_>| {
                let _held = &held;
                let mut slot = runtime.block_on(slots.take());
                let options = shared(&options, slot.as_ref());
                let written = gitcache_pack::plan(&repo, &fetch, kind, &options)
                    .and_then(|plan| {
                        if copies_a_file(&plan) {
                            drop(slot.take());
                        } else {
                            out.spill_to(spill.clone(), slots.give_way());
                        }
                        plan.write_to(&mut *out)
                    })
                    .map(|_| ())
                    .map_err(|err| {
                        // The client is told only what `wire_message` lets through.
                        if !err.is_client_error() {
                            tracing::error!(%err, "generating a stored response again failed");
                        }
                        err.wire_message()
                    });
                out.slot_given_back();
                written
            })
        };
        // A plan made holds its slot: written, not held while the bucket is asked.
        if !planned.as_ref().is_some_and(SharedPlan::is_there)
            && cache.take_shared(&rel, &key).await
        {
            tracing::debug!(
                cache = "shared",
                key,
                "response taken from the shared store"
            );
        }
        // Files opened, read and made: off the async workers.
        let looked = {
            let (cache, rel, key) = (Arc::clone(cache), rel.clone(), key.clone());
            let regenerate = Arc::clone(&regenerate);
            // A plan made earlier goes to the generation as it is listed: the request that
            // made it, joining it, then lets go of nothing it needs.
            let shared = planned.clone();
            tokio::task::spawn_blocking(move || {
                cache.lookup_since(&rel, &key, regenerate, asked, move || {
                    shared.and_then(|shared| shared.take())
                })
            })
            .await
        };
        // A lookup that panicked (a bug) is answered live, not stored.
        let (looked, led) = looked.unwrap_or((Lookup::Live, None));
        match looked {
            Lookup::Live => {
                // Written live from the check's plan, in its slot, should it still be there
                // (one that waited for another slot while holding this one could wait for
                // ever).
                let beforehand = match planned.and_then(|shared| shared.take()) {
                    Some(planned) => Beforehand::Planned(planned),
                    None => Beforehand::Nothing,
                };
                return self.live(repo, fetch, kind, beforehand, held).await;
            }
            Lookup::Stored(entry) => {
                tracing::debug!(cache = "stored", "response");
                let cache = Arc::clone(cache);
                tokio::task::spawn_blocking(move || {
                    let _enter = span.enter();
                    send_stored(entry, ChannelWriter::new(tx, stall), || {
                        tracing::warn!(key, "stored response corrupt, removed");
                        cache.remove(&rel, &key);
                    });
                });
            }
            Lookup::Follow(reader) => {
                tracing::debug!(cache = "joined", "response");
                tokio::task::spawn_blocking(move || follow(reader, ChannelWriter::new(tx, stall)));
            }
            Lookup::Lead(mut generation, reader) => {
                // The generation belongs to everyone who follows it, not to this client: it
                // waits for its pack slot and runs in tasks of its own, so a leader that
                // leaves changes nothing for the others (and a generation that ends
                // unfinished hands its readers over to live generation).
                let slots = self.pack_slots.clone();
                let options = gitcache_pack::Options {
                    cancel: generation.cancel_when_unread(),
                    ..self.pack.clone()
                };
                let unread = generation.cancel_when_unread();
                // A plan made before stops once this generation's readers are gone, as its
                // own would, and is written in the slot it was made in.
                let (planned, slot) = match led.flatten() {
                    Some(Planned {
                        plan,
                        relay,
                        slot,
                        took,
                    }) => {
                        relay.hand_to(unread.clone());
                        (Some((plan, took)), Some(slot))
                    }
                    None => (None, None),
                };
                let cache = Arc::clone(cache);
                let generate = move |slot: Option<Slot>| {
                    let _held = held;
                    let options = shared(&options, slot.as_ref());
                    let _enter = span.enter();
                    if !generation.has_readers() {
                        // Every client left while it waited: nothing to do (dropping it
                        // takes the flight off the list).
                        return;
                    }
                    let started = Instant::now();
                    let planned_earlier = planned.is_some();
                    let (planned, took) = plan_unless_made(planned, &repo, &fetch, kind, &options);
                    let result = planned.and_then(|plan| plan.write_to(&mut *generation));
                    metrics::pack_generated(started.elapsed() + took);
                    match result {
                        Ok(stats) => {
                            tracing::info!(
                                key,
                                objects = stats.objects,
                                bytes = stats.bytes,
                                whole_pack = stats.whole_pack,
                                planned_earlier,
                                "response generated"
                            );
                            // The plan read the refs again: stored only if they are still
                            // those the key names (a refresh may have moved them since).
                            if still_keyed(&repo, &fetch, &keyed) {
                                cache.finish(generation, None);
                            } else {
                                tracing::debug!(key, "refs moved while generating: not stored");
                                cache.finish_unstored(generation);
                            }
                        }
                        // Nobody reads it any more (cancelled): given up, not failed, so
                        // that nobody joining now is told of an error that is not theirs. By
                        // the error's kind too: a reader that joined after the cancellation
                        // finishes live rather than get it.
                        Err(err) if gave_up(&err) || !generation.has_readers() => drop(generation),
                        Err(err) => {
                            // A store that failed says so itself as the generation ends.
                            if !generation.store_failed() {
                                tracing::warn!(%err, "response generation failed");
                            }
                            cache.finish(generation, Some(err.wire_message()));
                        }
                    }
                };
                tokio::spawn(async move {
                    // Given up as soon as nobody reads it any more, not once a slot is free:
                    // a generation waiting holds its file, its request and its mirror, and
                    // counts among those that wait for a slot.
                    let slot = match slot {
                        Some(slot) => slot,
                        None => tokio::select! {
                            slot = slots.take() => slot,
                            () = until_cancelled(&unread) => return,
                        },
                    };
                    let _ = tokio::task::spawn_blocking(move || generate(slot)).await;
                });
                tokio::task::spawn_blocking(move || follow(reader, ChannelWriter::new(tx, stall)));
            }
        }
        let mut response = Response::new(Body::channel(rx));
        set_git_headers(response.headers_mut(), RESULT_TYPE);
        response
    }

    /// [`serve_since`](Self::serve_since) from the objects found early in a mirror's first
    /// pack (`early`'s repository), when the answer to `fetch` is held whole by them (see
    /// [`serve_if_planned`](Self::serve_if_planned)): checked once for each response key
    /// (identical requests arriving together then share one generation, and the answer is
    /// stored under the key the mirror's own answer would have: the refs are those the
    /// mirror will have). The check's plan is the one the generation writes, whichever of
    /// those requests leads it. `None` when it is not held whole.
    pub(crate) async fn serve_early(
        &self,
        rel: PathBuf,
        early: &Arc<gitcache_mirror::live::Early>,
        fetch: Fetch,
        kind: HashKind,
        asked: Asked,
    ) -> Option<Response<Body>> {
        let repo = early.repository();
        let hold: Held = Arc::clone(early) as Held;
        let Some(cache) = &self.cache else {
            return self.serve_if_planned(repo, fetch, kind, Some(hold)).await;
        };
        let Ok((Ok(Some(keyed)), fetch)) = self
            .key(&repo, fetch.clone(), kind, Some(Arc::clone(&hold)))
            .await
        else {
            return self.serve_if_planned(repo, fetch, kind, Some(hold)).await;
        };
        // This request's hold on the plan its check made (not one it waited for): the plan
        // goes once this request has looked its answer up, unless a generation took it.
        let mut own = None;
        let checked = early
            .checked::<Option<SharedPlan>>(&keyed.key)
            .get_or_init(|| async {
                let slot = self.pack_slots.take().await;
                // The plan stops once this check is dropped (its fetch stopped waiting).
                let relay = Relay::default();
                let abandoned = relay.abandon_on_drop();
                let options = gitcache_pack::Options {
                    cancel: relay.cancel(),
                    ..shared(&self.pack, slot.as_ref())
                };
                let (repo, fetch, held) = (Arc::clone(&repo), fetch.clone(), Arc::clone(&hold));
                let span = tracing::Span::current();
                let made = tokio::task::spawn_blocking(move || {
                    let _held = held;
                    let _enter = span.enter();
                    let started = Instant::now();
                    let plan = match gitcache_pack::plan(&repo, &fetch, kind, &options) {
                        Ok(plan) if plan.held_whole() => plan,
                        Ok(_) => {
                            tracing::debug!("the answer sends objects not found early");
                            return None;
                        }
                        Err(err) => {
                            tracing::debug!(%err, "no answer from the objects found early");
                            return None;
                        }
                    };
                    Some((plan, slot, started.elapsed()))
                })
                .await
                .ok()
                .flatten();
                abandoned.disarm();
                let shared = made.map(|(plan, slot, took)| {
                    SharedPlan::new(Planned {
                        plan,
                        relay,
                        slot,
                        took,
                    })
                });
                own = shared.clone().map(OwnPlan);
                shared
            })
            .await
            .clone();
        // Not held whole: nothing.
        let shared = checked?;
        let answer = Answer {
            rel,
            repo,
            fetch,
            kind,
            asked,
            held: Some(hold),
        };
        let response = self.serve_keyed(cache, answer, keyed, Some(shared)).await;
        drop(own);
        Some(response)
    }

    /// [`live`](Self::live), when `fetch` can be planned from `repo` and every
    /// object the answer sends is in its indexes ([`gitcache_pack::Plan::held_whole`]);
    /// `None` otherwise, whatever the reason (nothing is sent then: the caller answers
    /// otherwise). Never stored: for a repository that holds part of the mirror's objects
    /// (see [`gitcache_mirror::live::Early`]).
    pub(crate) async fn serve_if_planned(
        &self,
        repo: Arc<Repository>,
        fetch: Fetch,
        kind: HashKind,
        held: Option<Held>,
    ) -> Option<Response<Body>> {
        let (told, planned) = tokio::sync::oneshot::channel();
        let response = self
            .live(repo, fetch, kind, Beforehand::Tell(told), held)
            .await;
        planned.await.unwrap_or(false).then_some(response)
    }

    /// Answer `fetch` from `repo`: planned and written on a blocking thread, streamed to the
    /// client through a bounded channel; see [`Beforehand`] for a plan told about or made
    /// already. `held` is kept until the pack is written (what the client has not read yet
    /// is spilled, see `ChannelWriter::spill_to`).
    async fn live(
        &self,
        repo: Arc<Repository>,
        fetch: Fetch,
        kind: HashKind,
        beforehand: Beforehand,
        held: Option<Held>,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::channel(4);
        let probe = tx.clone();
        // Planning and writing stop once the client is gone.
        let cancel = gitcache_pack::Cancel::when(move || probe.is_closed());
        let (mut slot, mut told, made) = match beforehand {
            Beforehand::Nothing => (self.pack_slots.take().await, None, None),
            Beforehand::Tell(told) => (self.pack_slots.take().await, Some(told), None),
            Beforehand::Planned(Planned {
                plan,
                relay,
                slot,
                took,
            }) => {
                relay.hand_to(cancel.clone());
                (slot, None, Some((plan, took)))
            }
        };
        let options = gitcache_pack::Options {
            cancel,
            ..self.pack.clone()
        };
        let stall = self.stall;
        let spill = self.spill.clone();
        let give_way = self.pack_slots.give_way();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let options = shared(&options, slot.as_ref());
            let _enter = span.enter();
            let mut out = ChannelWriter::new(tx, stall);
            let started = Instant::now();
            let mut planned = Duration::ZERO;
            let planned_earlier = made.is_some();
            let (made, took) = plan_unless_made(made, &repo, &fetch, kind, &options);
            if let Some(told) = told.take() {
                // Planned, and every object it sends is there to be read.
                let made = made.as_ref().is_ok_and(gitcache_pack::Plan::held_whole);
                let _ = told.send(made);
                if !made {
                    return;
                }
            }
            let result = made.and_then(|plan| {
                planned = started.elapsed();
                if copies_a_file(&plan) {
                    // Sending a stored pack as it is takes no CPU to speak of: the slot is
                    // free for others while the client reads it, however slowly.
                    drop(slot.take());
                } else {
                    // What the client cannot take yet is spilled, so that the slot is
                    // free once generation ends, not once the client has read it all;
                    // past the spill budget, a slow client keeps it only while nobody
                    // waits.
                    out.spill_to(spill);
                    out.give_way(Some(give_way));
                }
                plan.write_to(&mut out)
            });
            // Written: what was read goes now, not once a slow client has read what was
            // spilled.
            drop((repo, held));
            let generated = started.elapsed();
            // A plan made earlier counts the time it took.
            metrics::pack_generated(generated + took);
            drop(slot);
            out.give_way(None);
            match result {
                Ok(stats) => {
                    if let Err(err) = out.finish() {
                        tracing::info!(%err, "pack response abandoned");
                        return;
                    }
                    tracing::debug!(
                        objects = stats.objects,
                        reused = stats.reused,
                        whole_pack = stats.whole_pack,
                        bytes = stats.bytes,
                        plan_ms = (planned + took).as_secs_f64() * 1e3,
                        write_ms = (generated - planned).as_secs_f64() * 1e3,
                        planned_earlier,
                        "pack sent"
                    );
                }
                Err(gitcache_pack::Error::Io(err))
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    tracing::info!(%err, "pack response abandoned");
                }
                Err(_) if out.is_closed() => tracing::debug!("client went away"),
                Err(err) if out.sent() == 0 => {
                    // Nothing reached the client yet: tell it why, as upload-pack would.
                    if err.is_client_error() {
                        tracing::info!(%err, "fetch refused");
                    } else {
                        tracing::error!(%err, "generating the pack failed");
                    }
                    out.discard_buffered();
                    let mut message = Vec::new();
                    let _ = gitcache_protocol::pktline::write_error(
                        &mut message,
                        err.wire_message().as_bytes(),
                    );
                    let _ =
                        std::io::Write::write_all(&mut out, &message).and_then(|()| out.finish());
                }
                Err(err) => {
                    tracing::error!(%err, "generating the pack failed midway");
                    // What was spilled goes first: it ends with the message on the error band.
                    let _ = out.finish();
                    out.abort(std::io::Error::other(err.wire_message()));
                }
            }
        });
        let mut response = Response::new(Body::channel(rx));
        set_git_headers(response.headers_mut(), RESULT_TYPE);
        response
    }
}

/// What an answer keeps until it has been generated and written (see
/// [`Responder::serve_early`]).
type Held = Arc<dyn std::any::Any + Send + Sync>;

/// What an answer is made of, and from (see [`Responder::serve_keyed`]).
struct Answer {
    /// The repository's path relative to the mirrors' root: what its stored answers are
    /// filed under.
    rel: PathBuf,
    repo: Arc<Repository>,
    fetch: Fetch,
    kind: HashKind,
    /// See [`Responder::asked`].
    asked: Asked,
    /// What `repo`'s files need to stay (see [`gitcache_mirror::live::Early`]).
    held: Option<Held>,
}

/// What a request's response key came to (see [`Responder::key`]).
type Keyed = Result<Option<ResponseKey>, gitcache_pack::Error>;

/// A plan made by a check (see [`Responder::serve_early`]), with what it was made under:
/// written by the generation its request leads, if it leads one, and dropped otherwise.
struct Planned {
    plan: gitcache_pack::Plan,
    /// What the plan asks whether to stop.
    relay: Relay,
    /// The pack slot it was made in (its threads are that slot's share), kept until it is
    /// written: a plan made waits for no other slot, and plans made are never more than
    /// the slots.
    slot: Option<Slot>,
    /// How long it took to make.
    took: Duration,
}

/// The plan `made` earlier (and the time it took), or else one made now.
fn plan_unless_made(
    made: Option<(gitcache_pack::Plan, Duration)>,
    repo: &Repository,
    fetch: &Fetch,
    kind: HashKind,
    options: &gitcache_pack::Options,
) -> (Result<gitcache_pack::Plan, gitcache_pack::Error>, Duration) {
    match made {
        Some((plan, took)) => (Ok(plan), took),
        None => (
            gitcache_pack::plan(repo, fetch, kind, options),
            Duration::ZERO,
        ),
    }
}

/// What a live answer has before it is written (see [`Responder::live`]).
enum Beforehand {
    /// Nothing: it is planned.
    Nothing,
    /// It is planned, and the sender told whether every object it sends is there to be
    /// read (nothing is sent otherwise).
    Tell(tokio::sync::oneshot::Sender<bool>),
    /// Its plan, made for a check, written in the slot it was made in.
    Planned(Planned),
}

/// A plan an early check made, for whichever request answering from what was found leads
/// the generation of that answer first (identical requests checked together resume in any
/// order); `None` in the check's cell when the answer is not held whole there.
#[derive(Clone)]
struct SharedPlan(Arc<std::sync::Mutex<Option<Planned>>>);

impl SharedPlan {
    fn new(planned: Planned) -> SharedPlan {
        SharedPlan(Arc::new(std::sync::Mutex::new(Some(planned))))
    }

    /// The plan, unless taken.
    fn take(&self) -> Option<Planned> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the plan is still there to take.
    fn is_there(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// The checking request's hold on its [`SharedPlan`]: the plan holds a pack slot, and goes
/// once dropped (that request has looked its answer up) unless a generation took it.
struct OwnPlan(SharedPlan);

impl Drop for OwnPlan {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

/// A [`gitcache_pack::Cancel`] whose question is handed on: a plan made for a check stops
/// once the check is dropped, and, handed to a generation, once nobody reads that
/// generation any more.
#[derive(Clone, Default)]
struct Relay(Arc<std::sync::Mutex<gitcache_pack::Cancel>>);

impl Relay {
    /// The cancel to plan with: it asks whatever it was last handed to.
    fn cancel(&self) -> gitcache_pack::Cancel {
        let relay = Arc::clone(&self.0);
        gitcache_pack::Cancel::when(move || {
            // Asked outside the lock: the question may take locks of its own.
            let now = relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
            now.is_cancelled()
        })
    }

    /// Asks `cancel` from now on.
    fn hand_to(&self, cancel: gitcache_pack::Cancel) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = cancel;
    }

    /// Cancels once dropped, unless [disarmed](Abandoned::disarm) first.
    fn abandon_on_drop(&self) -> Abandoned {
        Abandoned(Some(self.clone()))
    }
}

/// See [`Relay::abandon_on_drop`].
struct Abandoned(Option<Relay>);

impl Abandoned {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(relay) = self.0.take() {
            relay.hand_to(gitcache_pack::Cancel::when(|| true));
        }
    }
}

/// How long a reader of an arriving pack waits for more bytes before it looks again (the
/// refresh's own timeouts decide when the pack has failed).
const ARRIVING_WAIT: Duration = Duration::from_secs(1);

impl Responder {
    /// Answer a fetch with a pack a mirror fetches while it arrives (see
    /// [`gitcache_mirror::live`]): the `acknowledgments` section when there are `common`
    /// haves to tell (a fetch that did not say `done`), with `ready`; then the `packfile`
    /// section, the pack's bytes on band 1 as they are written, the end once it is whole. A pack that fails midway ends the answer with
    /// the reason on the error band. Nothing is generated: no pack slot is taken, and a
    /// client that reads slowly only holds its own thread.
    pub(crate) fn serve_arriving(
        &self,
        pack: Arc<gitcache_mirror::live::LivePack>,
        sideband_all: bool,
        common: Option<Vec<gix_hash::ObjectId>>,
    ) -> Response<Body> {
        self.written_beside(move |out| {
            match send_arriving(&pack, out, sideband_all, common.as_deref()) {
                Ok(bytes) => tracing::debug!(bytes, "arriving pack sent"),
                Err(err) => tracing::info!(%err, "arriving pack not sent whole"),
            }
        })
    }

    /// A response whose body `write` writes, on a blocking thread of its own.
    fn written_beside(&self, write: impl FnOnce(ChannelWriter) + Send + 'static) -> Response<Body> {
        let (tx, rx) = mpsc::channel(4);
        let stall = self.stall;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            write(ChannelWriter::new(tx, stall));
        });
        let mut response = Response::new(Body::channel(rx));
        set_git_headers(response.headers_mut(), RESULT_TYPE);
        response
    }

    /// Answer a clone with the entries of a mirror's first pack at `taken` (where each lies:
    /// those of the kinds its filter keeps), the pack whole: a pack of those copied as they
    /// are, in the `packfile` section. Nothing is decoded, and no pack slot is taken.
    pub(crate) fn serve_arriving_filtered(
        &self,
        pack: Arc<gitcache_mirror::live::LivePack>,
        (taken, turn): (Vec<(u64, u64)>, gitcache_mirror::live::Turn),
        sideband_all: bool,
    ) -> Response<Body> {
        self.written_beside(move |out| {
            // Held while it writes.
            let _turn = turn;
            match send_filtered(&pack, &taken, out, sideband_all) {
                Ok(()) => tracing::debug!(objects = taken.len(), "arriving pack sent filtered"),
                Err(err) => tracing::info!(%err, "arriving pack not sent filtered"),
            }
        })
    }
}

/// The filtered clones sent a first pack's entries at once (see
/// [`Responder::serve_arriving_filtered`]): four at most, each holding where its entries lie
/// and where it wrote each (up to 24 bytes an entry).
pub(crate) static FILTERED: gitcache_mirror::live::Turns = gitcache_mirror::live::Turns::new(4);

/// Write the entries of `pack` at `taken` into `out` as a fetch response's pack; a file that
/// cannot be read ends the answer with the reason on the error band.
fn send_filtered(
    pack: &gitcache_mirror::live::LivePack,
    taken: &[(u64, u64)],
    out: ChannelWriter,
    sideband_all: bool,
) -> std::io::Result<()> {
    let response = gitcache_protocol::response::ResponseWriter::new(out, sideband_all);
    let mut band = response
        .packfile()
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    let read_at = |buf: &mut [u8], at: u64| pack.read_at(buf, at);
    let format = pack.object_format();
    let copied =
        gitcache_pack::copy::copy_entries(&read_at, taken, format, &mut band, |_, _| Ok(()));
    if let Err(err) = copied {
        // The pack is whole and checked by then: a file that cannot be read, or a client
        // gone.
        let message = format!("gitcache: {err}");
        let _ = band.error(message.as_bytes());
        let _ = band.finish().map(|mut out| out.finish());
        return Err(std::io::Error::other(err.to_string()));
    }
    let mut out = band
        .finish()
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    out.finish()?;
    Ok(())
}

/// Write `pack` into `out` as a fetch response while it arrives, after acknowledging
/// `common` if given; the pack's bytes sent. A
/// pack that fails, or a file that cannot be read, ends the answer with the reason on the
/// error band; a client that has gone is noticed within [`ARRIVING_WAIT`].
fn send_arriving(
    pack: &gitcache_mirror::live::LivePack,
    out: ChannelWriter,
    sideband_all: bool,
    common: Option<&[gix_hash::ObjectId]>,
) -> std::io::Result<u64> {
    use gitcache_mirror::live::Progress;
    use std::io::Write;
    let mut response = gitcache_protocol::response::ResponseWriter::new(out, sideband_all);
    if let Some(common) = common {
        response
            .acknowledgments(common, true)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
    }
    let mut band = response
        .packfile()
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    let failure = 'follow: loop {
        let upto = match pack.wait_past(sent, ARRIVING_WAIT) {
            Progress::Arriving(n) | Progress::Whole(n) if n > sent => n,
            Progress::Arriving(_) if band.get_mut().is_closed() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the client went away",
                ));
            }
            Progress::Arriving(_) => continue,
            Progress::Whole(_) => break None,
            Progress::Failed(why) => break Some(why),
        };
        while sent < upto {
            let want = buf.len().min((upto - sent) as usize);
            let read = match pack.read_at(&mut buf[..want], sent) {
                Ok(0) => break 'follow Some("the arriving pack's file ended early".into()),
                Ok(read) => read,
                Err(err) => break 'follow Some(format!("reading the arriving pack: {err}")),
            };
            band.write_all(&buf[..read])?;
            sent += read as u64;
        }
    };
    if let Some(why) = failure {
        tracing::warn!(why, sent, "the arriving pack failed midway");
        let message = format!("gitcache: {why}");
        let _ = band.error(message.as_bytes());
        let _ = band.finish().map(|mut out| out.finish());
        return Err(std::io::Error::other(why));
    }
    let mut out = band
        .finish()
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    out.finish()?;
    Ok(sent)
}

/// Whether writing `plan` only copies a stored file (or sends a few lines): no pack slot is
/// needed for it.
fn copies_a_file(plan: &gitcache_pack::Plan) -> bool {
    match plan {
        gitcache_pack::Plan::Pack(pack) => pack.is_whole_pack(),
        gitcache_pack::Plan::Nothing | gitcache_pack::Plan::Acknowledge { .. } => true,
    }
}

/// The pack slots: how many packs are generated at once.
#[derive(Debug, Clone)]
struct PackSlots {
    semaphore: Arc<Semaphore>,
    total: usize,
    /// Generations waiting for a slot.
    waiting: Arc<AtomicUsize>,
}

impl PackSlots {
    fn new(total: usize) -> Self {
        PackSlots {
            semaphore: Arc::new(Semaphore::new(total.max(1))),
            total: total.max(1),
            waiting: Arc::default(),
        }
    }

    /// One slot, waited for (and counted as waiting) when all are busy; `None` only if the
    /// semaphore was closed, which this server never does.
    async fn take(&self) -> Option<Slot> {
        let permit = match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::debug!("waiting for a pack slot");
                let _waiting = metrics::PackSlot::enter("waiting");
                // Counted until the wait ends, also when it is given up (the request dropped).
                let _counted = Waiting::enter(&self.waiting);
                Arc::clone(&self.semaphore).acquire_owned().await.ok()?
            }
        };
        let held = self
            .total
            .saturating_sub(self.semaphore.available_permits());
        Some(Slot {
            _permit: permit,
            _busy: metrics::PackSlot::enter("busy"),
            held: held.max(1),
        })
    }
}

impl PackSlots {
    /// For a generation holding a slot and waiting for its client: it gives the slot up
    /// (abandoning its answer) once others have waited [`GIVE_WAY_GRACE`] for one.
    fn give_way(&self) -> GiveWay {
        let waiting = Arc::clone(&self.waiting);
        GiveWay::new(
            Arc::new(move || waiting.load(Ordering::Relaxed) > 0),
            GIVE_WAY_GRACE,
        )
    }
}

/// How long in all a generation may wait for its client while others wait for a pack slot
/// before it gives its own up (only once the spill budget is used up does a generation wait
/// for its client).
const GIVE_WAY_GRACE: Duration = Duration::from_secs(10);

/// One generation counted as waiting for a slot, until dropped.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(Arc::clone(count))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pack slot held, counted on `/metrics` as busy while it is.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _busy: metrics::PackSlot,
    /// Slots held when this one was taken, this one included.
    held: usize,
}

/// Whether a generation's `err` says only that it was given up for want of readers (its
/// cancellation, or a write told nobody reads it), not that it failed.
fn gave_up(err: &gitcache_pack::Error) -> bool {
    use gitcache_protocol::{pktline, response};
    match err {
        gitcache_pack::Error::Cancelled => true,
        // Written straight, or through the pkt-line framing (sections, progress, the end).
        gitcache_pack::Error::Io(io)
        | gitcache_pack::Error::Response(response::Error::PktLine(pktline::Error::Io(io))) => {
            io.kind() == std::io::ErrorKind::BrokenPipe
        }
        _ => false,
    }
}

/// Once `cancel` says so (looked at four times a second).
async fn until_cancelled(cancel: &gitcache_pack::Cancel) {
    while !cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `options` for a generation in `slot`: the compression threads shared with the other
/// generations under way when it started (more threads than cores only take turns).
fn shared(options: &gitcache_pack::Options, slot: Option<&Slot>) -> gitcache_pack::Options {
    let held = slot.map_or(1, |s| s.held);
    gitcache_pack::Options {
        compression_threads: (options.compression_threads / held).max(1),
        ..options.clone()
    }
}

/// The answer to a request git's own upload-pack refuses: one `ERR` line, which git's
/// client shows as `remote error: <message>` (over a 4xx status it would show only the
/// status).
pub(crate) fn refusal(message: &str) -> Response<Body> {
    // A message quoting a long line of the request is cut: the line is the client's own.
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut line = Vec::new();
    let _ = gitcache_protocol::pktline::write_error(&mut line, &message.as_bytes()[..end]);
    let mut response = Response::new(Body::full(line));
    set_git_headers(response.headers_mut(), RESULT_TYPE);
    response
}

/// The headers of a git response that must not be cached by intermediaries.
pub(crate) fn set_git_headers(headers: &mut HeaderMap, content_type: &'static str) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitcache_mirror::live::{Asked, Board, Publisher};

    /// A pack announced on a board of its own, its file holding `bytes` so far.
    fn arriving(
        dir: &std::path::Path,
        bytes: &[u8],
    ) -> (Arc<gitcache_mirror::live::LivePack>, Publisher) {
        let path = dir.join("received.pack");
        std::fs::write(&path, bytes).unwrap();
        let board = Board::default();
        let publisher = board.announce(
            Asked::default(),
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        publisher.arrived(bytes.len() as u64);
        (board.current().unwrap(), publisher)
    }

    /// Follow `pack` on a blocking thread; the response's bytes and how it ended.
    async fn follow(pack: Arc<gitcache_mirror::live::LivePack>) -> (Vec<u8>, std::io::Result<u64>) {
        let (tx, mut rx) = mpsc::channel(4);
        let sending = tokio::task::spawn_blocking(move || {
            send_arriving(
                &pack,
                ChannelWriter::new(tx, Duration::from_secs(30)),
                false,
                None,
            )
        });
        let mut got = Vec::new();
        while let Some(Ok(chunk)) = rx.recv().await {
            got.extend_from_slice(&chunk);
        }
        (got, sending.await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_of_an_arriving_pack_get_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (pack, publisher) = arriving(dir.path(), &bytes[..70_000]);
        let (a, b) = (
            tokio::spawn(follow(Arc::clone(&pack))),
            tokio::spawn(follow(pack)),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The rest arrives, then the pack is whole.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("received.pack"))
            .unwrap();
        std::io::Write::write_all(&mut file, &bytes[70_000..]).unwrap();
        publisher.whole(bytes.len() as u64);
        for follower in [a, b] {
            let (got, sent) = follower.await.unwrap();
            assert_eq!(sent.unwrap(), bytes.len() as u64);
            let answer =
                gitcache_protocol::response::parse_fetch_response(&got, HashKind::Sha1).unwrap();
            assert!(answer.pack.unwrap() == bytes);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_that_fails_midway_ends_on_the_error_band() {
        let dir = tempfile::tempdir().unwrap();
        let (pack, publisher) = arriving(dir.path(), b"PACK\0\0\0\x02");
        let following = tokio::spawn(follow(pack));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(publisher);
        let (got, sent) = following.await.unwrap();
        assert!(sent.is_err());
        let text = String::from_utf8_lossy(&got);
        // What arrived went first, then the reason on band 3.
        assert!(text.contains("packfile\n"), "{text:?}");
        assert!(text.contains("\u{1}PACK"), "{text:?}");
        assert!(
            text.contains("\u{3}gitcache: the upstream's pack was not received whole"),
            "{text:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_whose_client_left_stops_while_the_pack_still_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (pack, _publisher) = arriving(dir.path(), b"PACK");
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let sending = tokio::task::spawn_blocking(move || {
            send_arriving(
                &pack,
                ChannelWriter::new(tx, Duration::from_secs(30)),
                false,
                None,
            )
        });
        let ended = tokio::time::timeout(Duration::from_secs(30), sending)
            .await
            .expect("the follower noticed")
            .unwrap();
        assert!(ended.is_err());
    }

    #[tokio::test]
    async fn generations_at_once_share_the_compression_threads() {
        let slots = PackSlots::new(3);
        let options = gitcache_pack::Options {
            compression_threads: 4,
            ..gitcache_pack::Options::default()
        };
        let first = slots.take().await.unwrap();
        assert_eq!(shared(&options, Some(&first)).compression_threads, 4);
        let second = slots.take().await.unwrap();
        assert_eq!(shared(&options, Some(&second)).compression_threads, 2);
        let third = slots.take().await.unwrap();
        assert_eq!(shared(&options, Some(&third)).compression_threads, 1);
        // A slot freed is counted free for the next generation.
        drop((first, second));
        let next = slots.take().await.unwrap();
        assert_eq!(shared(&options, Some(&next)).compression_threads, 2);
        assert_eq!(shared(&options, None).compression_threads, 4);
    }

    /// A generated repository `r.git` (from `seed`) in a folder of its own, a response cache
    /// beside it, a responder with one pack slot storing into that cache, and a fetch of the
    /// repository's `main`.
    fn cached_repo(seed: u64) -> (tempfile::TempDir, Arc<ResponseCache>, Responder, Fetch) {
        use gitcache_testkit::repo::{self, RepoSpec};
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("r.git");
        repo::generate(&git_dir, &RepoSpec::tiny(seed)).unwrap();
        let tip = gitcache_testkit::git::git_stdout(&git_dir, &["rev-parse", "main"]);
        let cache = Arc::new(
            ResponseCache::new(
                dir.path().join("responses"),
                crate::response_cache::ResponseCacheConfig::default(),
            )
            .unwrap(),
        );
        let responder = Responder::new(
            gitcache_pack::Options::default(),
            Duration::from_secs(30),
            1,
            Spill::new(dir.path().join("spill"), 64 << 20, 64 << 20, 0),
            Some(Arc::clone(&cache)),
        );
        let fetch = Fetch {
            wants: vec![gix_hash::ObjectId::from_hex(tip.trim().as_bytes()).unwrap()],
            done: true,
            ofs_delta: true,
            ..Fetch::default()
        };
        (dir, cache, responder, fetch)
    }

    /// A live answer lets go of what it read once the pack is written, while its client has
    /// not read it yet (what it has not taken is spilled): a slow client holds no
    /// repository, nor objects found early in a first pack.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_answer_lets_go_of_what_it_read_once_written() {
        use gitcache_testkit::repo::{self, RepoSpec};
        use http_body_util::BodyExt as _;
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("r.git");
        repo::generate(&git_dir, &RepoSpec::medium(45)).unwrap();
        let tip = gitcache_testkit::git::git_stdout(&git_dir, &["rev-parse", "main"]);
        std::fs::create_dir(dir.path().join("spill")).unwrap();
        let responder = Responder::new(
            gitcache_pack::Options::default(),
            Duration::from_secs(60),
            1,
            Spill::new(dir.path().join("spill"), 64 << 20, 64 << 20, 0),
            None,
        );
        // A shallow clone: written object by object (a stored pack sent as it is reads
        // its file as the client takes it).
        let fetch = Fetch {
            wants: vec![gix_hash::ObjectId::from_hex(tip.trim().as_bytes()).unwrap()],
            deepen: Some(1),
            done: true,
            ofs_delta: true,
            ..Fetch::default()
        };
        let repo = Arc::new(Repository::open(&git_dir).unwrap());
        let held = Arc::new(());
        let response = responder
            .live(
                Arc::clone(&repo),
                fetch,
                HashKind::Sha1,
                Beforehand::Nothing,
                Some(Arc::clone(&held) as Held),
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&held) > 1 || Arc::strong_count(&repo) > 1 {
            assert!(
                Instant::now() < deadline,
                "still held, the answer unread: {} {}",
                Arc::strong_count(&held),
                Arc::strong_count(&repo)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        // Channels hold four chunks of 64 KiB.
        assert!(
            body.len() > 1 << 20,
            "more than the channel holds: {} bytes",
            body.len()
        );
        assert!(body.windows(4).any(|w| w == b"PACK"));
    }

    /// Requests are keyed a few at a time (each may read every ref of the mirror): one
    /// waits for a turn while all are taken, and is answered once one is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_keyed_a_few_at_a_time() {
        let (dir, _cache, responder, fetch) = cached_repo(43);
        let repo = Arc::new(Repository::open(dir.path().join("r.git")).unwrap());
        let turns = responder.keying.available_permits();
        assert!(turns >= 1);
        let held = Arc::clone(&responder.keying)
            .acquire_many_owned(turns as u32)
            .await
            .unwrap();
        let serving = responder.serve("r.git".into(), repo, fetch, HashKind::Sha1);
        tokio::pin!(serving);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut serving)
                .await
                .is_err(),
            "keyed without a turn"
        );
        drop(held);
        let response = tokio::time::timeout(Duration::from_secs(60), serving)
            .await
            .expect("keyed once a turn is free");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// A generation for the response cache that waits for a pack slot is given up once
    /// nobody reads it any more (its client left), not only once a slot is free: it no
    /// longer counts among those waiting, so slots are not contested for nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generation_nobody_reads_stops_waiting_for_a_slot() {
        let (dir, _cache, responder, fetch) = cached_repo(41);
        let repo = Arc::new(Repository::open(dir.path().join("r.git")).unwrap());
        let way = responder.pack_slots.give_way();
        let held = responder.pack_slots.take().await.unwrap();
        let response = responder
            .serve("r.git".into(), repo, fetch, HashKind::Sha1)
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !way.is_contested() {
            assert!(Instant::now() < deadline, "the generation waits for a slot");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The client leaves before a byte was sent.
        drop(response);
        while way.is_contested() {
            assert!(Instant::now() < deadline, "the wait was not given up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
    }

    /// An answer from a mirror handle opened before the repository's stored answers were
    /// removed (a purge) is sent, not stored; one opened after is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_from_a_handle_opened_before_a_purge_is_not_stored() {
        use http_body_util::BodyExt as _;
        let (dir, cache, responder, fetch) = cached_repo(42);
        let git_dir = dir.path().join("r.git");
        let rel = PathBuf::from("r.git");
        let stored = || {
            cache
                .stats()
                .stored
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let answer = |asked| {
            let repo = Arc::new(Repository::open(&git_dir).unwrap());
            let response =
                responder.serve_since(rel.clone(), repo, fetch.clone(), HashKind::Sha1, asked);
            async move {
                let body = response.await.into_body().collect().await.unwrap();
                body.to_bytes()
            }
        };
        let before = responder.asked(&rel);
        cache.remove_repo(&rel).unwrap();
        let sent = answer(before).await;
        assert!(sent.windows(4).any(|w| w == b"PACK"), "the answer is sent");
        assert_eq!(stored(), 0, "not stored after the purge");
        let again = answer(responder.asked(&rel)).await;
        assert_eq!(again, sent);
        assert_eq!(stored(), 1);
    }

    /// A generation given up for want of readers ends as abandoned (its late joiners finish
    /// live), one that failed as failed: told apart by the error, not by a reader count a
    /// joiner may change meanwhile.
    #[test]
    fn a_generation_given_up_is_told_from_one_that_failed() {
        use gitcache_pack::Error;
        assert!(gave_up(&Error::Cancelled));
        let pipe = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "nobody reads");
        assert!(gave_up(&Error::Io(pipe)));
        let framed = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "nobody reads");
        assert!(gave_up(&Error::from(
            gitcache_protocol::pktline::Error::Io(framed)
        )));
        assert!(!gave_up(&Error::Io(std::io::Error::other("disk"))));
        assert!(!gave_up(&Error::Odb {
            message: "broken".into()
        }));
    }

    /// A check's plan stops once the check is dropped midway, not once it ends as it
    /// should; handed to a generation, it stops once that generation's readers are gone.
    #[test]
    fn a_plan_made_for_a_check_stops_with_whoever_holds_it_now() {
        let relay = Relay::default();
        let cancel = relay.cancel();
        relay.abandon_on_drop().disarm();
        assert!(!cancel.is_cancelled(), "a check that ended cancels nothing");
        let readers = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let unread = {
            let readers = Arc::clone(&readers);
            gitcache_pack::Cancel::when(move || !readers.load(Ordering::Relaxed))
        };
        relay.hand_to(unread);
        assert!(!cancel.is_cancelled());
        readers.store(false, Ordering::Relaxed);
        assert!(
            cancel.is_cancelled(),
            "nobody reads the generation any more"
        );

        let relay = Relay::default();
        let cancel = relay.cancel();
        let abandoned = relay.abandon_on_drop();
        assert!(!cancel.is_cancelled());
        drop(abandoned);
        assert!(cancel.is_cancelled(), "the check was dropped midway");
    }

    #[tokio::test]
    async fn a_slot_is_contested_while_a_generation_waits_for_one() {
        let slots = PackSlots::new(1);
        let way = slots.give_way();
        let held = slots.take().await.unwrap();
        assert!(!way.is_contested());
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take().await.is_some() })
        };
        while !way.is_contested() {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert!(waiter.await.unwrap());
        assert!(!way.is_contested());

        // A wait given up (its request dropped) is no longer counted.
        let held = slots.take().await.unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take().await.is_some() })
        };
        while !way.is_contested() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert!(!way.is_contested());
        drop(held);
    }
}
