//! A mirror: a bare repository that follows one upstream repository.
//!
//! A refresh asks upstream for its refs, fetches in one round whatever tips the mirror lacks
//! (at most 16 of its own tips as haves, those new commits most likely build on), takes the
//! pack in (see [`crate::ingest`]), and only then replaces all refs at once by renaming a new
//! `packed-refs` into place. Readers see the old refs or the new ones, never a mix; refs
//! upstream deleted are gone after the rename. `HEAD`, a symbolic ref, is replaced right
//! after (a crash between the two leaves the old `HEAD` beside the new refs until the next
//! refresh that writes refs). A failure at any step leaves the previous state whole.
//!
//! The upstream is not trusted: ref names and symbolic ref targets must pass git's
//! `check-ref-format` rules and lie under the prefixes asked for; peeled values are computed
//! from the objects, not taken from the answer; and every object the new tips reach must be
//! present (git's connectivity check) before the refs are published. A pack that fails the
//! check is removed again.

use std::collections::HashSet;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use bstr::{BString, ByteSlice};
use gitcache_pack::Closure;
use gitcache_protocol::ls_refs::RefLine;
use gitcache_protocol::request::{Fetch, LsRefs};
use gitcache_protocol::response::PackStream;
use gix_hash::{Kind as HashKind, ObjectId};

use crate::ingest;
use crate::live::{Asked, Board};
use gitcache_upstream::{self as upstream, Upstream};

/// What a refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Refs the mirror has now.
    pub refs: usize,
    /// Whether any ref changed.
    pub changed: bool,
    /// Objects in the packs fetched (0 when nothing was missing).
    pub fetched_objects: u32,
    /// The ids asked for by id ahead of the refs (see [`Mirror::refresh_hinted`]) when the
    /// upstream answered that fetch: with them, or refusing them (an `ERR` of its own, such
    /// as `not our ref`); one of them still missing was refused. Empty when that fetch failed
    /// otherwise (a timeout, a broken connection), which says nothing about the ids.
    pub asked_ahead: Vec<ObjectId>,
    /// The refs the upstream listed that the mirror did not take, as listed (a name git
    /// refuses, a chain of tags too deep to peel, a `HEAD` naming such a ref or a target git
    /// refuses), [`MAX_LEFT_OUT`] at most, names of up to [`MAX_LEFT_OUT_NAME`] bytes; `None`
    /// when no listing was read (a refresh joined that had nothing to do). Listings that
    /// show them alike have not moved.
    pub left_out: Option<Vec<RefLine>>,
    /// Whether the mirror was dropped and fetched again from nothing because the upstream's
    /// history shared nothing with it (see [`Error::Replaced`]; only a
    /// [`crate::registry::Registry`] does this).
    pub replaced: bool,
}

/// Refs left out of a listing that are logged one by one (the rest are counted).
const REFUSED_LOGGED: usize = 16;

/// The most refs left out that a refresh reports (see [`Refreshed::left_out`]): an upstream
/// listing more that gitcache does not take has each listing seen as news.
pub const MAX_LEFT_OUT: usize = 2048;
/// The longest name (with its symbolic target) of a ref left out that a refresh reports.
pub const MAX_LEFT_OUT_NAME: usize = 1024;

/// Whether a ref left out is reported (see [`Refreshed::left_out`]): one with a value, its
/// name and target within [`MAX_LEFT_OUT_NAME`].
fn reported_left_out(line: &RefLine) -> bool {
    let target = line.symref_target.as_ref().map_or(0, |t| t.len());
    line.oid.is_some() && line.name.len().saturating_add(target) <= MAX_LEFT_OUT_NAME
}

/// Why a refresh failed; the mirror is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Talking to upstream failed.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// Upstream's response could not be read.
    #[error("upstream response: {0}")]
    Response(#[from] gitcache_protocol::response::Error),
    /// The pack could not be taken in.
    #[error(transparent)]
    Ingest(#[from] ingest::Error),
    /// Reading the mirror failed.
    #[error(transparent)]
    Repository(#[from] gitcache_pack::Error),
    /// The mirror's files could not be written.
    #[error("mirror I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The shared object store failed, or holds something invalid.
    #[error(transparent)]
    Shared(#[from] crate::shared::Error),
    /// Another instance kept committing first.
    #[error("the shared manifest kept changing under this refresh; gave up after {0} tries")]
    Contended(usize),
    /// Asked to refresh only an existing mirror, and there is none (removed meanwhile).
    #[error("no mirror to refresh")]
    NoMirror,
    /// The upstream's object format is not the mirror's.
    #[error("upstream uses {upstream}, the mirror {mirror}")]
    ObjectFormat {
        /// The upstream's.
        upstream: HashKind,
        /// The mirror's.
        mirror: HashKind,
    },
    /// After the fetch, a ref's object is still missing.
    #[error("upstream's pack lacks {oid}, the tip of {name}")]
    Incomplete {
        /// The object.
        oid: ObjectId,
        /// The ref.
        name: BString,
    },
    /// After the fetch, something the new tips reach is missing (the pack was removed).
    #[error("upstream's pack is incomplete: {0}")]
    Disconnected(gitcache_pack::Error),
    /// The upstream listed a ref gitcache does not take.
    #[error("upstream listed an invalid ref {name:?}: {reason}")]
    InvalidRef {
        /// The name (or symbolic target) as listed.
        name: BString,
        /// Why it is refused.
        reason: String,
    },
    /// The mirror had commits, and the history of every ref the upstream lists now shares
    /// none of them: the name has come to mean another repository (one renamed away and
    /// another made under its name, an account's name taken by someone else), or the whole
    /// history was rewritten from its first commit. Nothing the mirror holds may answer for
    /// the new one; its refs were not written. [`crate::registry::Registry`] drops such a
    /// mirror and fetches the repository again from nothing.
    #[error(
        "the upstream's refs share no history with the mirror's: the repository behind the name was replaced, or its history rewritten whole"
    )]
    Replaced,
    /// The disk fell below the free space kept (see [`Mirror::keeping_free`]) while a pack
    /// arrived, or would have as it was taken in (its indexes written, the pack written again
    /// by gitoxide's indexer, or completed with a thin pack's bases): the refresh was
    /// stopped, its staging removed.
    #[error(
        "not enough free disk space for the pack: {free} bytes free, {keep} kept free, {received} bytes received, {needed} needed"
    )]
    LowDisk {
        /// Bytes free when it was stopped.
        free: u64,
        /// Bytes to keep free.
        keep: u64,
        /// Bytes of the upstream's pack received by then.
        received: u64,
        /// Room beyond the floor a next try needs: twice what had arrived when the download
        /// was stopped (how much more was to come is not known); when taking the whole pack in
        /// was, what arrived, what was written after it and what was to be, and an eighth more
        /// (see [`with_margin`]; twice that when stopped among a thin pack's bases, more of
        /// them and the indexes to follow).
        needed: u64,
    },
}

impl Error {
    /// Whether upstream refused the credential or hides the repository.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Error::Upstream(e) if e.is_access_denied())
    }
}

/// The file in a mirror that says when it was created (milliseconds since the epoch).
const CREATED: &str = "gitcache-created";

/// When the mirror at `git_dir` was created (milliseconds since the epoch), if it says: one
/// created by an older gitcache does not.
pub fn created_at(git_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(git_dir.join(CREATED))
        .ok()?
        .trim_end()
        .parse()
        .ok()
}

/// How the free space of a disk is told: the bytes still free to take on the file system
/// holding a path ([`gitcache_storage::fs::free_bytes`] unless told otherwise).
pub type FreeSpace = fn(&Path) -> std::io::Result<u64>;

/// A bare repository kept in step with an upstream.
#[derive(Debug, Clone)]
pub struct Mirror {
    git_dir: PathBuf,
    /// Where a first fetch's pack is announced while it arrives.
    board: Option<std::sync::Arc<Board>>,
    /// Bytes of the disk kept free while a pack arrives (0: none).
    keep_free: u64,
    /// How the free space is told.
    free_space: FreeSpace,
}

impl Mirror {
    /// Create an empty bare repository of `format` at `git_dir` (its parent must exist).
    pub fn create(git_dir: impl Into<PathBuf>, format: HashKind) -> std::io::Result<Mirror> {
        let git_dir = git_dir.into();
        std::fs::create_dir(&git_dir)?;
        for dir in ["objects/pack", "objects/info", "refs/heads", "refs/tags"] {
            std::fs::create_dir_all(git_dir.join(dir))?;
        }
        let config = match format {
            HashKind::Sha256 => {
                "[core]\n\trepositoryformatversion = 1\n\tbare = true\n[extensions]\n\tobjectformat = sha256\n"
            }
            _ => "[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        };
        // Each file whole and on disk before the next; HEAD last: a folder without it is an
        // unfinished mirror, replaced by the next refresh.
        gitcache_storage::fs::replace_file(&git_dir.join("config"), config.as_bytes())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        gitcache_storage::fs::replace_file(&git_dir.join(CREATED), format!("{now}\n").as_bytes())?;
        gitcache_storage::fs::replace_file(&git_dir.join("HEAD"), b"ref: refs/heads/main\n")?;
        Ok(Mirror {
            git_dir,
            board: None,
            keep_free: 0,
            free_space: gitcache_storage::fs::free_bytes,
        })
    }

    /// The mirror at `git_dir`.
    pub fn open(git_dir: impl Into<PathBuf>) -> Mirror {
        Mirror {
            git_dir: git_dir.into(),
            board: None,
            keep_free: 0,
            free_space: gitcache_storage::fs::free_bytes,
        }
    }

    /// Stop a refresh whose pack, as it arrives, leaves less than `bytes` of the mirror's disk
    /// free (checked as it starts and every [`FLOOR_CHECKED_EVERY`] bytes received): a pack
    /// is staged up to the upstream's `max_pack_bytes`, far more than a check before the
    /// refresh can allow for. What taking it in writes after the download is held to it too
    /// (its indexes, the pack written again, a thin pack's bases: see
    /// [`ingest::ingest_pack_guarded`]). 0: no floor.
    pub fn keeping_free(mut self, bytes: u64) -> Mirror {
        self.keep_free = bytes;
        self
    }

    /// Tell the disk's free space with `free` instead of the file system's (see
    /// [`keeping_free`](Self::keeping_free)): for tests, which cannot set a disk's free
    /// space. Spilled and stored answers measure their own disks.
    pub fn measuring_free_space(mut self, free: FreeSpace) -> Mirror {
        self.free_space = free;
        self
    }

    /// Announce the pack of a first fetch (a mirror with nothing yet) on `board` while it
    /// arrives, so that a clone of the same tips can be answered with its bytes as they come
    /// (see [`crate::live`]).
    pub fn announcing_on(mut self, board: std::sync::Arc<Board>) -> Mirror {
        self.board = Some(board);
        self
    }

    /// The repository folder.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Bring the mirror up to date with `upstream`: its `HEAD`, branches, tags, and refs under
    /// `extra_prefixes` (such as `refs/pull/`).
    pub async fn refresh(
        &self,
        upstream: &Upstream,
        extra_prefixes: &[&str],
    ) -> Result<Refreshed, Error> {
        self.refresh_keeping(upstream, extra_prefixes, &[]).await
    }

    /// [`refresh`](Self::refresh), and also fetch the objects `keep` (commits asked for by id
    /// that no mirrored ref reaches, such as a pull request's merge commit), by id as a
    /// client asked for them, and keep them reachable under [`KEPT_PREFIX`] for
    /// [`KEEP_DAYS`] days, so that the next fetch of them is a hit and consolidation keeps
    /// them. Ids the upstream points a listed ref at need no kept ref. The upstream decides
    /// what it gives out by id; an id it refuses fails the refresh (nothing is written).
    pub async fn refresh_keeping(
        &self,
        upstream: &Upstream,
        extra_prefixes: &[&str],
        keep: &[ObjectId],
    ) -> Result<Refreshed, Error> {
        self.refresh_hinted(upstream, extra_prefixes, keep, &Hints::default())
            .await
    }

    /// [`refresh_keeping`](Self::refresh_keeping), with `hints`: objects a client asked for
    /// that the mirror lacks (most often the tip the upstream just moved a branch to). A
    /// refresh asks the upstream for its refs, then fetches what they point at; the hints are
    /// fetched by id beside the first exchange (with the mirror's `HEAD` and newest tips as
    /// haves), so that when the refs point at nothing else new, the second has nothing to
    /// fetch. What comes ahead is checked as any pack is; a hint the new refs do not reach is
    /// kept as [`refresh_keeping`](Self::refresh_keeping) keeps ids when
    /// `hints.keep_unreached` says so; a hint the upstream
    /// refuses, or a fetch ahead that fails, leaves the refresh as it would have been. Only
    /// for a mirror with tips (a first fetch is the whole repository anyway), at most
    /// [`MAX_HINTS`].
    ///
    /// When the hints are a client's wants (`hints.client`), the pack fetched ahead is asked
    /// for with that client's haves the mirror holds and its options, and announced on the
    /// mirror's board while it arrives, so that it may answer that client as the upstream
    /// sends it (see [`crate::live`]): when the client sent at most [`MAX_CLIENT_HAVES`]
    /// haves and they include one the mirror would offer itself (its `HEAD`, its newest
    /// tips), so that the pack is about what the mirror lacks.
    pub async fn refresh_hinted(
        &self,
        upstream: &Upstream,
        extra_prefixes: &[&str],
        keep: &[ObjectId],
        hints: &Hints,
    ) -> Result<Refreshed, Error> {
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        let format = upstream.object_format().await?;
        if format != repo.object_format() {
            return Err(Error::ObjectFormat {
                upstream: format,
                mirror: repo.object_format(),
            });
        }
        let mut prefixes: Vec<BString> = ["HEAD", "refs/heads/", "refs/tags/"]
            .into_iter()
            .map(BString::from)
            .collect();
        // Never from the upstream: gitcache's own namespace.
        let extra_prefixes: Vec<&str> = extra_prefixes
            .iter()
            .copied()
            .filter(|p| !reaches_own_refs(p))
            .collect();
        prefixes.extend(extra_prefixes.iter().map(|p| BString::from(*p)));
        let local = repo.refs()?;
        let mut hinted: Vec<ObjectId> = Vec::new();
        if local.iter().any(|r| r.oid.is_some()) {
            for hint in &hints.ids {
                if hinted.len() < MAX_HINTS && !hinted.contains(hint) && !repo.contains(hint) {
                    hinted.push(*hint);
                }
            }
        }
        let listing = upstream.ls_refs(
            format,
            LsRefs {
                symrefs: true,
                peel: true,
                unborn: false,
                ref_prefixes: prefixes.clone(),
            },
        );
        let ahead = async {
            if hinted.is_empty() {
                return None;
            }
            let pack = self
                .fetch_ahead(
                    upstream,
                    format,
                    &local,
                    hinted.clone(),
                    hints.client.as_ref(),
                )
                .await;
            // In the mirror and checked, while the refs are still being listed: fetches
            // waiting for this refresh that it answers need not wait for the rest. Only once
            // what came shares history with the mirror: a repository replaced behind its
            // name is dropped when the listing shows it, and nothing may be answered from a
            // mirror being dropped.
            let seen = match &pack {
                Ok(_) => self.shares_history_with(&hinted, &local).await,
                Err(_) => None,
            };
            let told = seen.is_some() && self.landed();
            Some((pack, told, seen))
        };
        let (remote, ahead) = tokio::join!(listing, ahead);
        // The ids the upstream answered for, with a pack or a refusal of its own.
        let mut asked_ahead = Vec::new();
        // Said to have landed, a pack may be read by answers already: it stays should the
        // refresh fail (its objects are checked; the next consolidation drops what no ref
        // reaches).
        let mut landed = false;
        // The handle that checked the pack fetched ahead, which sees it.
        let mut seen_ahead = None;
        let ahead = match ahead {
            Some((Ok(pack), told, seen)) => {
                asked_ahead.clone_from(&hinted);
                landed = told;
                seen_ahead = seen;
                Some(pack)
            }
            Some((Err(err), _, _)) => {
                if matches!(
                    err,
                    Error::Response(gitcache_protocol::response::Error::Remote { .. })
                ) {
                    asked_ahead.clone_from(&hinted);
                }
                tracing::debug!(%err, "objects asked for by id not fetched ahead");
                None
            }
            None => None,
        };
        // Until the refs are written, nothing refers to a pack fetched ahead: on any failure
        // it goes, and the mirror is as it was (a pack the mirror had already stays).
        let mut unpublished = Unpublished(
            ahead
                .iter()
                .filter(|pack| pack.fresh && !landed)
                .map(|pack| pack.pack.clone())
                .collect(),
        );
        let remote = remote?;
        // What came ahead is seen from here on.
        let repo = match (&ahead, seen_ahead) {
            (Some(_), Some(seen)) => seen,
            (Some(_), None) => gitcache_pack::Repository::open(&self.git_dir)?,
            (None, _) => repo,
        };
        let fetched_ahead: Vec<ObjectId> = match ahead {
            Some(_) => hinted
                .iter()
                .copied()
                .filter(|h| repo.contains(h))
                .collect(),
            None => Vec::new(),
        };
        // As git does with a remote ref it cannot take: left out, with a warning; the
        // other refs are mirrored.
        let mut remote = remote;
        remote.retain(|line| !line.name.starts_with(KEPT_PREFIX.as_bytes()));
        // Unborn refs were not asked for (an upstream that sends one anyway would point the
        // mirror's `HEAD` at a branch it does not have).
        remote.retain(|line| line.oid.is_some());
        let mut left_out: Vec<RefLine> = Vec::new();
        let mut leave_out = |line: &RefLine| {
            if left_out.len() < MAX_LEFT_OUT && reported_left_out(line) {
                left_out.push(line.clone());
            }
        };
        let mut refused = 0usize;
        remote.retain_mut(|line| match check_ref(line, &prefixes) {
            Ok(()) => true,
            Err(err) if line.name == "HEAD" => {
                tracing::warn!(%err, "upstream's HEAD points at a ref gitcache does not take; kept as it was");
                leave_out(line);
                line.symref_target = None;
                true
            }
            Err(err) => {
                // The first few named; a listing of millions is not a million log lines.
                refused += 1;
                if refused <= REFUSED_LOGGED {
                    tracing::warn!(%err, "upstream listed a ref gitcache does not take; left out");
                }
                leave_out(line);
                false
            }
        });
        if refused > REFUSED_LOGGED {
            tracing::warn!(
                refused,
                "upstream listed refs gitcache does not take; left out (the first {REFUSED_LOGGED} logged)"
            );
        }

        // Kept refs: those still young enough, then the new ones (under today's date).
        let today = unix_now() / 86_400;
        let mut kept: Vec<(u64, RefLine)> = local
            .iter()
            .filter_map(|r| {
                let day = kept_day(r.name.as_ref())?;
                let young = day.saturating_add(KEEP_DAYS) >= today && day <= today;
                young.then(|| Some((day, RefLine::new(r.oid?, r.name.clone()))))?
            })
            .collect();
        for oid in keep {
            let listed = remote.iter().any(|line| line.oid == Some(*oid));
            let held = kept.iter().any(|(_, line)| line.oid == Some(*oid));
            if !listed && !held {
                let line = RefLine::new(*oid, format!("{KEPT_PREFIX}{today}/{oid}"));
                kept.push((today, line));
            }
        }
        // The most recent ones, when there are too many.
        kept.sort_by_key(|(day, _)| std::cmp::Reverse(*day));
        kept.truncate(MAX_KEPT);
        let kept: Vec<RefLine> = kept.into_iter().map(|(_, line)| line).collect();
        // In the order listed, each once; the sets keep this linear in the number of refs
        // (an upstream may list millions).
        let mut wants: Vec<ObjectId> = Vec::new();
        let mut wanted: HashSet<ObjectId> = HashSet::new();
        for line in remote.iter().chain(&kept) {
            if let Some(oid) = line.oid
                && !repo.contains(&oid)
                && wanted.insert(oid)
            {
                wants.push(oid);
            }
        }
        let mut haves: Vec<ObjectId> = Vec::new();
        let mut had: HashSet<ObjectId> = HashSet::new();
        for r in &local {
            if let Some(oid) = r.oid
                && had.insert(oid)
            {
                haves.push(oid);
            }
        }
        // Every new tip is checked after the fetch, also one whose object is on disk already
        // (a stray object of an earlier pack proves nothing about its history). Such a tip
        // whose history is not whole here is asked for too, or the mirror could never take
        // it.
        let mut new_tips: Vec<ObjectId> = Vec::new();
        let mut tips_seen: HashSet<ObjectId> = HashSet::new();
        for oid in remote.iter().chain(&kept).filter_map(|line| line.oid) {
            if !had.contains(&oid) && tips_seen.insert(oid) {
                new_tips.push(oid);
            }
        }
        // Those fetched ahead came in a pack checked as any: their history is whole.
        let ahead_set: HashSet<ObjectId> = fetched_ahead.iter().copied().collect();
        let present: Vec<ObjectId> = new_tips
            .iter()
            .copied()
            .filter(|t| !wanted.contains(t) && !ahead_set.contains(t))
            .collect();
        // Tips on disk whose history was not whole: fetched again, then walked again.
        let mut rewalk: Vec<ObjectId> = Vec::new();
        if !present.is_empty() {
            // One walk for them all; only when it fails, one per tip (a failure must name
            // which tips to fetch), on one handle.
            let (git_dir, haves) = (self.git_dir.clone(), haves.clone());
            let broken = tokio::task::spawn_blocking(move || {
                let repo = gitcache_pack::Repository::open(git_dir)?;
                // A tag chain too deep to peel is left out of the refs written (see
                // `write_refs`), not walked: walked, it would fail every refresh.
                let present: Vec<ObjectId> = present
                    .into_iter()
                    .filter(|tip| !too_deep_to_peel(&repo, tip))
                    .collect();
                if repo.check_connected(&present, &haves).is_ok() {
                    return Ok(Vec::new());
                }
                Ok::<_, gitcache_pack::Error>(
                    present
                        .into_iter()
                        .filter(|tip| repo.check_connected(&[*tip], &haves).is_err())
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            rewalk.clone_from(&broken);
            wants.extend(broken);
        }

        let mut fetched_objects = ahead.as_ref().map_or(0, |pack| pack.objects);
        let mut ingested = None;
        if !wants.is_empty() {
            let first = haves.is_empty();
            let offered = {
                let (git_dir, local, remote) =
                    (self.git_dir.clone(), local.clone(), remote.clone());
                tokio::task::spawn_blocking(move || {
                    let repo = gitcache_pack::Repository::open(git_dir)?;
                    Ok::<_, gitcache_pack::Error>(offered_haves(&repo, &local, &remote))
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??
            };
            // What came ahead is the mirror's too.
            let offered = fetched_ahead.iter().copied().chain(offered).collect();
            let pack = self
                .fetch(
                    upstream,
                    format,
                    asking(wants.clone(), offered),
                    first,
                    first.then_some(&remote[..]),
                )
                .await?;
            fetched_objects += pack.objects;
            ingested = Some((pack, first));
        }
        let repo = std::sync::Arc::new(gitcache_pack::Repository::open(&self.git_dir)?);
        let checking = std::time::Instant::now();
        // What the upstream lists, and what the mirror had: whether the name still means the
        // mirror's repository. Tags are peeled here, not as the upstream says they peel.
        let listed: Vec<ObjectId> = remote.iter().filter_map(|line| line.oid).collect();
        let known: Vec<ObjectId> = local.iter().filter_map(|r| r.oid).collect();
        let same = same_repository(&repo, listed, known).await;
        // Its refs are written next, or the refresh fails and it stays as a pack no ref
        // needs; said to have landed only in a mirror that stays (see the pack fetched
        // ahead).
        let main_landed = same.is_ok() && matches!(ingested, Some((_, false))) && self.landed();
        // Commits fetched ahead that the new refs do not reach are kept, as ids asked for by id
        // are: a pull request's merge commit, which the next job fetches again. (Not those
        // another `ls-refs` answer named: a ref moved again or dropped since, which the next
        // consolidation lets go.)
        let mut kept = kept;
        let unlisted: Vec<ObjectId> = fetched_ahead
            .iter()
            .copied()
            .filter(|_| hints.keep_unreached)
            .filter(|oid| !remote.iter().any(|line| line.oid == Some(*oid)))
            .filter(|oid| !kept.iter().any(|line| line.oid == Some(*oid)))
            .collect();
        if !unlisted.is_empty() {
            // Walked from the refs that moved down to the commits the old ones peel to.
            let moved: Vec<ObjectId> = remote
                .iter()
                .filter(|line| line.oid.is_some_and(|oid| !had.contains(&oid)))
                .filter_map(|line| line.peeled.or(line.oid))
                .collect();
            let known: Vec<ObjectId> = local.iter().filter_map(|r| r.peeled.or(r.oid)).collect();
            let (repo, unlisted) = (std::sync::Arc::clone(&repo), unlisted);
            let unreached = tokio::task::spawn_blocking(move || {
                // A history that cannot be walked keeps nothing here: the check below says
                // what is wrong with it.
                let reached = repo
                    .reached_by(&moved, &known, &unlisted)
                    .unwrap_or_else(|_| unlisted.clone());
                unlisted
                    .into_iter()
                    .filter(|oid| !reached.contains(oid))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            for oid in unreached.into_iter().rev() {
                kept.insert(0, RefLine::new(oid, format!("{KEPT_PREFIX}{today}/{oid}")));
            }
            kept.truncate(MAX_KEPT);
        }
        // Only commits are kept (an id of a tree or blob fetched by id stays unreferenced, and
        // goes at the next consolidation).
        let kept: Vec<RefLine> = kept
            .into_iter()
            .filter(|line| {
                line.oid
                    .is_some_and(|oid| repo.is_commit(&oid).unwrap_or(false))
            })
            .collect();
        remote.extend(kept);
        let fetched_pack = ingested
            .as_ref()
            .map(|(pack, _)| pack.pack.clone())
            .or_else(|| ahead.as_ref().map(|pack| pack.pack.clone()));
        let mut checked = self
            .check_fetched(&repo, &remote, &new_tips, &haves, fetched_pack, &rewalk)
            .await;
        if checked.is_ok() {
            checked = same;
        }
        tracing::debug!(
            tips = new_tips.len(),
            ms = checking.elapsed().as_millis() as u64,
            "fetched history checked"
        );
        if let Err(err) = checked {
            // Nothing refers to it: it goes, and the mirror is as it was (a pack the mirror
            // had already, sent again, stays; so does one said to have landed, which answers
            // may be reading).
            if let Some((pack, _)) =
                (ingested.as_ref()).filter(|(pack, _)| pack.fresh && !main_landed)
            {
                let _ = remove_pack_file(&pack.pack);
            }
            return Err(err);
        }
        if let Some((pack, true)) = &ingested {
            // A first fetch, no haves: upstream sent the closure of the wants, which a clone
            // of the same refs can be sent as it is.
            if gitcache_pack::vouch_pack_tips(&pack.pack, &wants)?.is_none() {
                tracing::warn!(
                    tips = wants.len(),
                    "too many tips to mark the pack with: clones of them are generated"
                );
            }
        }
        let before: Vec<(BString, Option<ObjectId>)> =
            local.into_iter().map(|r| (r.name, r.oid)).collect();
        // From here the refs may need what came ahead, even when writing them fails half-way.
        unpublished.0.clear();
        let too_deep = write_refs(&self.git_dir, &repo, &remote)?;
        let after: Vec<(BString, Option<ObjectId>)> =
            repo.refs()?.into_iter().map(|r| (r.name, r.oid)).collect();
        let room = MAX_LEFT_OUT.saturating_sub(left_out.len());
        left_out.extend(too_deep.into_iter().filter(reported_left_out).take(room));
        Ok(Refreshed {
            refs: after.iter().filter(|(n, _)| n != "HEAD").count(),
            changed: before != after,
            fetched_objects,
            asked_ahead,
            left_out: Some(left_out),
            replaced: false,
        })
    }

    /// Every listed ref's object is present, and everything the new tips (`wants`) reach,
    /// down to what the old tips (`haves`) reach, on a blocking thread.
    ///
    /// With a pack fetched, every object of the pack was found to refer only to objects the
    /// mirror has before the pack joined it
    /// ([`gitcache_pack::Repository::check_pack_closed`]; the packs already there were
    /// checked so when they came): only the tips that were on disk with their history
    /// incomplete (`rewalk`) are walked again. Without one, the new tips (all on disk) are
    /// walked.
    async fn check_fetched(
        &self,
        repo: &std::sync::Arc<gitcache_pack::Repository>,
        remote: &[RefLine],
        wants: &[ObjectId],
        haves: &[ObjectId],
        fetched: Option<PathBuf>,
        rewalk: &[ObjectId],
    ) -> Result<(), Error> {
        for line in remote {
            if let Some(oid) = line.oid
                && !repo.contains(&oid)
            {
                return Err(Error::Incomplete {
                    oid,
                    name: line.name.clone(),
                });
            }
        }
        if wants.is_empty() {
            return Ok(());
        }
        let (repo, haves) = (std::sync::Arc::clone(repo), haves.to_vec());
        let walk = match &fetched {
            Some(_) => rewalk.to_vec(),
            None => wants.to_vec(),
        };
        tokio::task::spawn_blocking(move || {
            if walk.is_empty() {
                return Ok(());
            }
            repo.check_connected(&walk, &haves)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .map_err(|err| match err {
            err @ gitcache_pack::Error::MissingObject { .. } => Error::Disconnected(err),
            other => Error::Repository(other),
        })
    }

    /// Fetch `hints` by id, ahead of knowing the upstream's refs: with the mirror's `HEAD`
    /// and newest tips (of `local`) as haves, or as `client` asks (see
    /// [`refresh_hinted`](Self::refresh_hinted)).
    async fn fetch_ahead(
        &self,
        upstream: &Upstream,
        format: HashKind,
        local: &[gitcache_pack::Ref],
        hints: Vec<ObjectId>,
        client: Option<&ClientFetch>,
    ) -> Result<ingest::Ingested, Error> {
        let (offered, client) = {
            let (git_dir, local, client) = (self.git_dir.clone(), local.to_vec(), client.cloned());
            tokio::task::spawn_blocking(move || {
                let repo = gitcache_pack::Repository::open(git_dir)?;
                // Every tip as the upstream lists it, as far as the mirror knows.
                let listed: Vec<RefLine> = local
                    .iter()
                    .filter_map(|r| Some(RefLine::new(r.oid?, r.name.clone())))
                    .collect();
                let offered = offered_haves(&repo, &local, &listed);
                let client = client.and_then(|c| client_haves(&repo, &offered, c));
                Ok::<_, gitcache_pack::Error>((offered, client))
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??
        };
        let (request, announce) = match client {
            Some(client) => {
                let request = Fetch {
                    thin_pack: client.thin_pack,
                    include_tag: client.include_tag,
                    ..asking(hints, client.haves)
                };
                (request, true)
            }
            None => (asking(hints, offered), false),
        };
        self.fetch(
            upstream,
            format,
            request,
            false,
            announce.then_some(&[][..]),
        )
        .await
    }

    /// Tell those waiting on the board that a pack is in (see [`Board::landed`]); whether
    /// there was a board to tell.
    fn landed(&self) -> bool {
        if let Some(board) = &self.board {
            board.landed();
        }
        self.board.is_some()
    }

    /// Fetch what `fetch` asks for in one round and take the pack in, as it arrives: the
    /// response is read, its pack indexed as far as that can go in one pass, while the rest
    /// is still on its way (deltas are resolved on all cores once the whole pack is there).
    /// `first`: the mirror has no tips (and `fetch` no haves), so the pack must hold all it
    /// needs. `announce`: the pack is announced on the mirror's board while it arrives, with
    /// the refs the refresh will write; for a first pack, the objects found in it as it
    /// arrives are posted too, with those refs (see [`crate::live::Early`]).
    async fn fetch(
        &self,
        upstream: &Upstream,
        format: HashKind,
        fetch: Fetch,
        first: bool,
        announce: Option<&[RefLine]>,
    ) -> Result<ingest::Ingested, Error> {
        let started = std::time::Instant::now();
        let asked = Asked {
            wants: fetch.wants.clone(),
            haves: fetch.haves.clone(),
            thin_pack: fetch.thin_pack,
            include_tag: fetch.include_tag,
        };
        // Stops the scan of the objects found early once the pack is taken in (or not).
        let early_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _stop_early = StopOnDrop(std::sync::Arc::clone(&early_stop));
        if let (Some(board), Some(refs), true) = (&self.board, announce, first) {
            self.find_early(board, &asked, refs, &early_stop);
        }
        let announce = (self.board.clone())
            .filter(|_| announce.is_some())
            .map(|board| ingest::Announce { board, asked });
        let (mut sender, receiver) = tokio::io::duplex(RECEIVE_BUFFER);
        // Once the pack is whole, what follows it (the response's end) must come within one
        // idle timeout in all: an upstream sending progress now and then after its pack
        // held the refresh, and every fetch waiting for it, for the transfer timeout.
        let after_pack = std::sync::Arc::new(std::sync::OnceLock::new());
        let after_pack_within = upstream.idle_timeout();
        let deadline = std::sync::Arc::clone(&after_pack);
        let download = async move {
            let result = upstream.fetch_into(format, fetch, &mut sender).await;
            // The reader sees the end of the response here, or its cut when the fetch failed.
            drop(sender);
            (result, started.elapsed())
        };
        let git_dir = self.git_dir.clone();
        // Set when the disk fell below its floor while the pack arrived, or would have
        // as it was taken in.
        let below = std::sync::Arc::new(std::sync::OnceLock::new());
        let floor = Floor {
            dir: self.git_dir.clone(),
            free: self.free_space,
            keep: self.keep_free,
            read: Default::default(),
            granted: Default::default(),
            below: std::sync::Arc::clone(&below),
        };
        let reader = BlockingRead {
            inner: receiver,
            runtime: tokio::runtime::Handle::current(),
            deadline: std::sync::Arc::clone(&after_pack),
            after: 0,
        };
        // Set when taking the pack in outlasts its deadline after the download (see below).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let take_in = tokio::task::spawn_blocking(move || -> Result<ingest::Ingested, Error> {
            let taken = (move || -> Result<ingest::Ingested, Error> {
                let mut stream =
                    PackStream::new(BufReader::with_capacity(RECEIVE_BUFFER, reader), format);
                stream.read_sections()?;
                if !stream.has_pack() {
                    return Err(gitcache_protocol::response::Error::Unexpected {
                        line: "upstream answered a fetch with done but sent no pack".into(),
                    }
                    .into());
                }
                // Checked before it joins the mirror: every object of the pack refers only to
                // objects there are (within the pack alone for a first fetch, whose pack is then
                // vouched for as the whole history of its tips).
                let closure = Closure::Closed {
                    self_contained: first,
                };
                // The pack's bytes (not the progress beside them, which is not written) are
                // held to the floor as they arrive.
                let mut pack = BufReader::new(AboveFloor {
                    inner: stream,
                    floor: floor.clone(),
                    unchecked: FLOOR_CHECKED_EVERY,
                });
                // What is written after the download is held to the floor too: the pack
                // again (gitoxide's indexer), a thin pack's bases.
                let room = |ask: ingest::Ask| floor.after(ask);
                let ingested = ingest::ingest_pack_guarded(
                    &git_dir, format, &mut pack, closure, announce, &stopping, &room,
                )
                .map_err(|err| match err {
                    ingest::Error::Refused(err) => Error::Disconnected(err),
                    other => Error::Ingest(other),
                })?;
                // Read what follows the pack (the response's end), so that the download finishes
                // as it would have unread. The pack is in place, whole and checked, by now: what
                // comes after it cannot make it a failed fetch. At most a MiB of it, within one
                // idle timeout; past either the response is dropped (its connection with it).
                let _ = deadline.set(tokio::time::Instant::now() + after_pack_within);
                // Past the floor's counter: the pack is in, and what follows it is not written.
                let buffered = pack.buffer().len() as u64;
                let drained = std::io::copy(&mut pack.into_inner().inner, &mut std::io::sink())
                    .map(|bytes| bytes + buffered);
                match drained {
                    Ok(0) => {}
                    Ok(bytes) => {
                        tracing::warn!(
                            bytes,
                            "the upstream sent pack data after a whole pack: ignored"
                        );
                    }
                    Err(err) => {
                        tracing::warn!(%err, "the upstream's response failed after a whole pack");
                    }
                }
                Ok(ingested)
            })();
            // Stopped for the disk: that is the cause, whatever the reading made of it.
            match (taken, below.get()) {
                (Err(_), Some(&(free, keep, received, needed))) => Err(Error::LowDisk {
                    free,
                    keep,
                    received,
                    needed,
                }),
                (taken, _) => taken,
            }
        });
        // The download ends first, or taking the pack in does: when that fails, its error is
        // the cause and the download is dropped (an upstream that stalls after bad bytes is
        // not waited for); when it succeeds, the pack is whole and checked, and what the
        // download does after it (the response's end) cannot spoil it.
        tokio::pin!(download);
        let mut take_in = take_in;
        let (downloaded, ingested) = tokio::select! {
            biased;
            downloaded = &mut download => {
                // Decoding what arrived may take a while (deltas resolved on all cores), but
                // not without end: a hostile pack of small deltas each copying one large base
                // again would cost terabytes of copying and hashing. Given a deadline that
                // grows with the pack, it is stopped and refused.
                let received = downloaded.0.as_ref().map_or(0, |bytes| *bytes);
                let within = decoding_deadline(received);
                match tokio::time::timeout(within, &mut take_in).await {
                    Ok(ingested) => (downloaded, ingested),
                    Err(_) => {
                        tracing::warn!(?within, received, "taking the pack in outlasted its deadline: stopped");
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        (downloaded, take_in.await)
                    }
                }
            }
            ingested = &mut take_in => match ingested {
                Ok(Ok(ingested)) => {
                    // The pack is in: the download's end is not waited for past the deadline
                    // of what follows the pack.
                    let downloaded = match after_pack.get() {
                        Some(&deadline) => tokio::time::timeout_at(deadline, &mut download)
                            .await
                            .unwrap_or_else(|_| {
                                (Err(upstream::Error::Timeout(after_pack_within)), started.elapsed())
                            }),
                        None => download.await,
                    };
                    (downloaded, Ok(Ok(ingested)))
                }
                Ok(Err(err)) => return Err(err),
                Err(join) => return Err(Error::Io(std::io::Error::other(join))),
            },
        };
        let ingested = ingested.map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let ((bytes, download_time), ingested) = match (downloaded, ingested) {
            ((Ok(bytes), took), Ok(ingested)) => ((bytes, took), ingested),
            ((Err(err), took), Ok(ingested)) => {
                tracing::warn!(%err, "the upstream's response failed after a whole pack");
                ((0, took), ingested)
            }
            // Taking the pack in stopped reading first: its error is the cause.
            ((Err(upstream::Error::Connect(err)), _), Err(taking))
                if err.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Err(taking);
            }
            // Stopped for the disk: that is the cause, whatever the download made of it.
            ((Err(_), _), Err(err @ Error::LowDisk { .. })) => return Err(err),
            ((Err(err), _), Err(_)) => return Err(err.into()),
            ((Ok(_), _), Err(err)) => return Err(err),
        };
        tracing::debug!(
            bytes,
            objects = ingested.objects,
            download_ms = download_time.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "pack fetched"
        );
        Ok(ingested)
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Mirror {
    /// Start finding the objects of the first pack, `asked` of the upstream, as it arrives,
    /// on a thread of its own once a fetch waits for them (from the pack's first byte
    /// whenever that is), and post them on `board` with `refs` once the pack is whole (see
    /// [`crate::live::Early`]); stopped once `stop` is set. Nothing is written unless a fetch
    /// waits.
    fn find_early(
        &self,
        board: &std::sync::Arc<crate::live::Board>,
        asked: &Asked,
        refs: &[RefLine],
        stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (board, wants, refs, stop, git_dir) = (
            std::sync::Arc::clone(board),
            asked.wants.clone(),
            refs.to_vec(),
            std::sync::Arc::clone(stop),
            self.git_dir.clone(),
        );
        let floor = (self.free_space, self.keep_free);
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("early-index".into())
            .spawn(move || {
                let _enter = span.enter();
                // This fetch's pack (announced by the ingestion before its first byte), once
                // a fetch waits for what is found in it.
                let pack = loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if let Some(pack) = board.current().filter(|pack| pack.answers(&wants))
                        && board.early_wanted()
                    {
                        break pack;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                };
                let started = std::time::Instant::now();
                // A few at a time: each holds up to 64 MiB of decoded objects. One waiting
                // for its turn reads the pack from its start once it has it.
                let _turn = loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if let Some(turn) = crate::early::SCANS.take() {
                        break turn;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                };
                // Its receiving steps behind answers from here on (see `ingest`).
                let _reading = pack.read_early();
                // What the fetches waiting want, now and while the pack is read: found
                // first, the rest of the pack not waited for.
                let wanted = board.early_wants();
                tracing::debug!(
                    wanted = wanted.tips.len(),
                    walked = wanted.walked.len(),
                    "objects of the first pack looked for as it arrives"
                );
                let more = {
                    let board = std::sync::Arc::clone(&board);
                    move || board.early_wants()
                };
                let meanwhile = {
                    let (board, pack) = (std::sync::Arc::clone(&board), std::sync::Arc::clone(&pack));
                    move |early: crate::live::Early| {
                        tracing::debug!(
                            found = early.found(),
                            ms = started.elapsed().as_millis() as u64,
                            "objects of the first pack found so far, while wants not found yet are looked for"
                        );
                        board.early(&pack, std::sync::Arc::new(early));
                    }
                };
                // What its walks go through, for fetches to tell whether their history is
                // cut; each commit they have no room for tells those waiting to look again.
                let walks = std::sync::Arc::new(gitcache_pack::early::Walks::default());
                board.walking(&pack, std::sync::Arc::clone(&walks));
                let ran_out = {
                    let (board, pack) = (std::sync::Arc::clone(&board), std::sync::Arc::clone(&pack));
                    let mut told = 0u64;
                    move || {
                        told += 1;
                        if told == 1 {
                            tracing::debug!(
                                most = gitcache_pack::early::MOST_WALKED,
                                ms = started.elapsed().as_millis() as u64,
                                "the first pack's reading ran out of room to walk the history"
                            );
                        }
                        board.walks_ran_out(&pack);
                    }
                };
                let built = crate::early::build(
                    &git_dir,
                    &pack,
                    &refs,
                    (wanted, more),
                    floor,
                    &stop,
                    (meanwhile, (walks, ran_out)),
                );
                match built {
                    Ok(early) => {
                        tracing::debug!(
                            found = early.found(),
                            ms = started.elapsed().as_millis() as u64,
                            "objects of the first pack found as it arrived"
                        );
                        board.early(&pack, std::sync::Arc::new(early));
                    }
                    Err(err) => tracing::debug!(%err, "no early index of the first pack"),
                }
            });
        if let Err(err) = spawned {
            tracing::debug!(%err, "no early index of the first pack");
        }
    }
}

impl Mirror {
    /// The mirror as it is now, if the commits `new` share history with its refs `local`
    /// (see [`same_repository`]); `None` when they do not, or that cannot be told.
    async fn shares_history_with(
        &self,
        new: &[ObjectId],
        local: &[gitcache_pack::Ref],
    ) -> Option<gitcache_pack::Repository> {
        let known: Vec<ObjectId> = local.iter().filter_map(|r| r.oid).collect();
        let repo = std::sync::Arc::new(gitcache_pack::Repository::open(&self.git_dir).ok()?);
        same_repository(&repo, new.to_vec(), known).await.ok()?;
        // The walk's handle is gone with its thread (else the mirror is opened again).
        std::sync::Arc::try_unwrap(repo)
            .or_else(|_| gitcache_pack::Repository::open(&self.git_dir))
            .ok()
    }
}

/// Packs fetched ahead of a refresh's refs, removed when dropped (the refresh failed) unless
/// the refs were written and the list emptied (a pack said to have landed is not listed).
struct Unpublished(Vec<PathBuf>);

impl Drop for Unpublished {
    fn drop(&mut self) {
        for pack in &self.0 {
            // Failing to remove leaves a closed pack no ref needs, for consolidation to drop.
            let _ = remove_pack_file(pack);
        }
    }
}

/// The most hints a refresh fetches ahead (see [`Mirror::refresh_hinted`]).
pub const MAX_HINTS: usize = 16;

/// What a refresh fetches by id ahead of the upstream's refs (see
/// [`Mirror::refresh_hinted`]).
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// Objects the mirror lacks: most often the tip a push just made.
    pub ids: Vec<ObjectId>,
    /// The fetch of a client that wants exactly `ids`, which the pack fetched ahead is to
    /// answer as it arrives.
    pub client: Option<ClientFetch>,
    /// Whether ids the upstream's refs do not reach are kept (see
    /// [`Mirror::refresh_keeping`]): those a client asked for by id; not what an `ls-refs`
    /// answer named, which the refresh's own refs may no longer list.
    pub keep_unreached: bool,
}

impl From<Vec<ObjectId>> for Hints {
    /// Ids a client asked for by id: kept when no ref reaches them.
    fn from(ids: Vec<ObjectId>) -> Hints {
        Hints {
            ids,
            client: None,
            keep_unreached: true,
        }
    }
}

/// A client's fetch, as far as a pack fetched ahead for it is concerned.
#[derive(Debug, Clone, Default)]
pub struct ClientFetch {
    /// The client's haves (only those the mirror holds are offered the upstream).
    pub haves: Vec<ObjectId>,
    /// The client takes thin packs.
    pub thin_pack: bool,
    /// The client wants the tags pointing into the pack.
    pub include_tag: bool,
}

/// The most haves of a client a pack fetched ahead is asked for with (a fetch with more has
/// negotiated at length: it waits for the refreshed mirror).
pub const MAX_CLIENT_HAVES: usize = 64;

/// `client` with only its haves that `repo` holds, when it sent at most
/// [`MAX_CLIENT_HAVES`] and they include one of the haves the mirror offers itself
/// (`offered`: its `HEAD`, its newest tips): the pack the upstream then sends is about what
/// the mirror lacks, as its own would be.
fn client_haves(
    repo: &gitcache_pack::Repository,
    offered: &[ObjectId],
    client: ClientFetch,
) -> Option<ClientFetch> {
    if client.haves.len() > MAX_CLIENT_HAVES {
        return None;
    }
    let mut haves: Vec<ObjectId> = Vec::new();
    for have in client.haves {
        if !haves.contains(&have) && repo.contains(&have) {
            haves.push(have);
        }
    }
    let shared = haves.iter().any(|h| offered.contains(h));
    shared.then_some(ClientFetch { haves, ..client })
}

/// A fetch of `wants` with `haves` in one round, as a mirror asks: a thin pack with offset
/// deltas, no progress.
fn asking(wants: Vec<ObjectId>, haves: Vec<ObjectId>) -> Fetch {
    Fetch {
        wants,
        haves,
        done: true,
        thin_pack: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    }
}

/// The most haves a refresh offers the upstream. Every have the upstream cannot find in its
/// bitmaps it walks (`git upload-pack` with the 151 tips of the bench repository as haves
/// took 0.12 s to answer a fetch of 50 new commits, with one have 0.01 s, for 0.2% fewer
/// bytes), so a refresh offers what the upstream most likely builds on, as `git fetch`'s
/// first round of 16 haves does.
const MAX_OFFERED_HAVES: usize = 16;

/// The haves a refresh of the mirror whose refs are `local` offers the upstream whose refs
/// are `remote`, [`MAX_OFFERED_HAVES`] at most: the mirror's `HEAD` (new branches mostly
/// start from it), what the refs the upstream moved pointed at here (new commits mostly
/// build on them), newest first, then the newest of the tips the upstream still lists as
/// they are here (which it surely has); an annotated tag counts as the commit it peels to.
/// At least one when the mirror has any tip. What the upstream then sends that the mirror
/// has anyway costs bytes, and disk until the next consolidation; a pack is checked against
/// all of the mirror's objects either way.
fn offered_haves(
    repo: &gitcache_pack::Repository,
    local: &[gitcache_pack::Ref],
    remote: &[RefLine],
) -> Vec<ObjectId> {
    let listed: std::collections::HashMap<&[u8], Option<ObjectId>> = remote
        .iter()
        .map(|line| (line.name.as_slice(), line.oid))
        .collect();
    let (mut moved, mut unchanged) = (Vec::new(), Vec::new());
    let mut head = None;
    // Branches and tags first: `gitcache_pack::NEWEST_OF_AT_MOST` tips are compared at
    // most, and extra prefixes (`refs/pull/`) may list thousands.
    let rank = |r: &&gitcache_pack::Ref| {
        !(r.name.starts_with(b"refs/heads/") || r.name.starts_with(b"refs/tags/"))
    };
    let mut ranked: Vec<&gitcache_pack::Ref> = local.iter().collect();
    ranked.sort_by_key(rank);
    for r in ranked {
        let Some(commit) = r.peeled.or(r.oid) else {
            continue;
        };
        if r.name == "HEAD" {
            head = Some(commit);
        } else if let Some(now) = listed.get(r.name.as_slice()) {
            if *now == r.oid {
                unchanged.push(commit);
            } else {
                moved.push(commit);
            }
        }
    }
    let mut offered: Vec<ObjectId> = Vec::new();
    let picked = head.into_iter().chain(
        repo.newest_commits(&moved, MAX_OFFERED_HAVES)
            .into_iter()
            .chain(repo.newest_commits(&unchanged, MAX_OFFERED_HAVES)),
    );
    for oid in picked {
        if offered.len() < MAX_OFFERED_HAVES && !offered.contains(&oid) {
            offered.push(oid);
        }
    }
    if offered.is_empty() {
        // No commit among them (tips of trees, or only refs the upstream dropped): one tip
        // rather than none, so that the upstream sends no more than it must.
        offered.extend(local.iter().find_map(|r| r.oid));
    }
    offered
}

/// How many bytes of a response may wait between the download and the indexer.
const RECEIVE_BUFFER: usize = 1 << 20;

/// The receiving end of a download, read on a blocking thread.
struct BlockingRead {
    inner: tokio::io::DuplexStream,
    runtime: tokio::runtime::Handle,
    /// Once set, reads end at this instant with [`std::io::ErrorKind::TimedOut`], and at most
    /// [`MAX_AFTER_PACK`] bytes are read from then on.
    deadline: std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>,
    /// Bytes read since the deadline was set.
    after: u64,
}

impl std::io::Read for BlockingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let Some(&deadline) = self.deadline.get() else {
            return self.runtime.block_on(self.inner.read(buf));
        };
        let cut = |what: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the upstream's response went on after its pack ({what})"),
            ))
        };
        // Checked before reading: data always waiting would otherwise never let the timer
        // fire.
        if tokio::time::Instant::now() >= deadline {
            return cut("past the deadline");
        }
        if self.after >= MAX_AFTER_PACK {
            return cut("over a MiB");
        }
        let room = (MAX_AFTER_PACK - self.after).min(buf.len() as u64) as usize;
        let read = self.runtime.block_on(async {
            tokio::time::timeout_at(deadline, self.inner.read(&mut buf[..room])).await
        });
        match read {
            Ok(Ok(n)) => {
                self.after += n as u64;
                Ok(n)
            }
            Ok(Err(err)) => Err(err),
            Err(_) => cut("past the deadline"),
        }
    }
}

/// The most bytes read after a whole pack (progress and the final flush) before the
/// response is dropped.
const MAX_AFTER_PACK: u64 = 1 << 20;

/// `pack-<checksum>` of a pack's path.
fn pack_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What consolidation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consolidated {
    /// Packs before.
    pub packs_before: usize,
    /// Objects in the one pack after.
    pub objects: u32,
    /// The pack, marked with its tips.
    pub pack: Option<PathBuf>,
    /// Its reachability bitmaps, if written (see [`Mirror::write_bitmaps`]).
    pub bitmap: Option<PathBuf>,
    /// The tips the pack is the closure of.
    pub tips: Vec<ObjectId>,
}

impl Mirror {
    /// Merge every pack into one that holds exactly the objects the refs reach (stored deltas
    /// reused, unreachable objects dropped), mark it with its tips so that clones of all refs
    /// are sent it as it is, and remove the old packs. Blocking; the registry runs it so that
    /// it never overlaps a refresh of the same mirror, then writes the pack's reachability
    /// bitmaps ([`write_bitmaps`](Self::write_bitmaps)) without holding refreshes back.
    ///
    /// The new pack is in place before an old one goes, and an old pack's index goes before
    /// its data: readers always find every object. A reader that already has an old pack
    /// open keeps reading it (its file lives until closed).
    pub fn consolidate(&self) -> Result<Consolidated, Error> {
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        // Branches, tags and the like make the consolidated pack; commits kept by id go in a
        // pack of their own beside it, so that a clone of the refs is still the whole
        // consolidated pack as it is.
        let (mut tips, mut kept): (Vec<ObjectId>, Vec<ObjectId>) = (Vec::new(), Vec::new());
        for r in repo.refs()? {
            let Some(oid) = r.oid.filter(|_| r.name != "HEAD") else {
                continue;
            };
            let list = if kept_day(r.name.as_ref()).is_some() {
                &mut kept
            } else {
                &mut tips
            };
            if !list.contains(&oid) {
                list.push(oid);
            }
        }
        kept.retain(|oid| !tips.contains(oid));
        let pack_dir = self.git_dir.join("objects").join("pack");
        let old = pack_names(&pack_dir)?;
        if tips.is_empty() {
            return Ok(Consolidated {
                packs_before: old.len(),
                objects: 0,
                pack: None,
                bitmap: None,
                tips,
            });
        }
        let planned = |wants: Vec<ObjectId>, haves: Vec<ObjectId>| {
            let fetch = Fetch {
                wants,
                haves,
                done: true,
                ofs_delta: true,
                no_progress: true,
                ..Fetch::default()
            };
            match gitcache_pack::plan(
                &repo,
                &fetch,
                repo.object_format(),
                &gitcache_pack::Options::default(),
            )? {
                gitcache_pack::Plan::Pack(plan) => Ok::<_, Error>(plan),
                _ => unreachable!("wants are the refs' own objects"),
            }
        };
        let plan = planned(tips.clone(), Vec::new())?;
        let object_count = plan.object_count();
        let objects = u32::try_from(object_count).unwrap_or(u32::MAX);
        let (keep, written) = match plan.whole_pack_path() {
            // A pack marked with exactly these tips holds their closure already.
            Some(path) => (pack_stem(path), false),
            None => (self.write_consolidated(plan, "consolidate")?, true),
        };
        // Kept commits: what they reach beyond the refs, in a pack (none when nothing).
        let mut kept_pack = None;
        if !kept.is_empty() {
            let extra = planned(kept, tips.clone())?;
            if extra.object_count() > 0 {
                kept_pack = Some(self.write_consolidated(extra, "kept")?);
            }
        }
        // The index and bitmaps of the pack this one replaces (the newest old pack with
        // bitmaps) are kept aside, out of the object store's sight, until the new pack's
        // bitmaps are written from them (`write_bitmaps`; `remove_replaced` then removes
        // them): the history they map is not walked again. When the new pack has bitmaps
        // already, any kept aside are stale; when no old pack has any, those kept aside by a
        // consolidation cut short serve the one that takes it up.
        let has_bitmap = |name: &str| pack_dir.join(format!("{name}.bitmap")).is_file();
        let aside = self.replaced_dir();
        let donor = if has_bitmap(&keep) {
            None
        } else {
            old.iter()
                .filter(|n| **n != keep && Some(*n) != kept_pack.as_ref())
                .filter_map(|n| {
                    let modified = std::fs::metadata(pack_dir.join(format!("{n}.bitmap")))
                        .and_then(|m| m.modified())
                        .ok()?;
                    Some((modified, n))
                })
                .max()
                .map(|(_, n)| n.clone())
        };
        if donor.is_some() || has_bitmap(&keep) {
            remove_dir_if_there(&aside)?;
        }
        if let Some(donor) = &donor {
            std::fs::create_dir_all(&aside)?;
            // Not its `.rev`: the writer builds the order from the index, checked whole.
            for ext in ["idx", "bitmap"] {
                let from = pack_dir.join(format!("{donor}.{ext}"));
                let to = aside.join(format!("{donor}.{ext}"));
                // A second name for the file (a copy where links are not possible): the pack
                // stays whole until removed below.
                match std::fs::hard_link(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => {
                        std::fs::copy(&from, &to)?;
                    }
                }
            }
        }
        for name in old
            .iter()
            .filter(|n| **n != keep && Some(*n) != kept_pack.as_ref())
        {
            remove_pack(&pack_dir, name)?;
        }
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        // A pack written here from the plan of the tips is their closure: marked without a
        // second walk of the history (seconds on big ones, with refreshes held back).
        let marked = if written {
            let pack = pack_dir.join(format!("{keep}.pack"));
            repo.mark_written_pack(&pack, &tips, object_count)?
        } else {
            repo.mark_pack_tips(&tips)?
        };
        debug_assert!(
            marked
                .as_ref()
                .is_none_or(|p| p.ends_with(format!("{keep}.pack")))
        );
        let bitmap = pack_dir.join(format!("{keep}.bitmap"));
        Ok(Consolidated {
            packs_before: old.len(),
            objects,
            pack: marked,
            bitmap: bitmap.is_file().then_some(bitmap),
            tips,
        })
    }

    /// Write `plan`'s pack and take it in (indexed, beside the others); its stem.
    fn write_consolidated(
        &self,
        plan: Box<gitcache_pack::PackPlan>,
        what: &str,
    ) -> Result<String, Error> {
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        let pack_dir = self.git_dir.join("objects").join("pack");
        let staging = pack_dir.join(format!("incoming-{}-{what}", std::process::id()));
        let written = (|| -> Result<ingest::Ingested, Error> {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&staging)?);
            plan.write_pack(&mut file)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            let mut reader = BufReader::new(std::fs::File::open(&staging)?);
            Ok(ingest::ingest_pack(
                &self.git_dir,
                repo.object_format(),
                &mut reader,
            )?)
        })();
        let _ = std::fs::remove_file(&staging);
        Ok(format!("pack-{}", written?.checksum))
    }

    /// Write the commit graph and reachability bitmaps for the consolidated pack `pack` (the
    /// closure of `tips`), so that fetches other than whole clones need no walk; `None` if
    /// the mirror holds other packs too. This takes long on big histories, so it runs apart from consolidation:
    /// refreshes go on meanwhile. A pack never changes, so its bitmaps stay true; if the pack
    /// was consolidated away meanwhile, the file written for it is removed.
    pub fn write_bitmaps(&self, pack: &Path, tips: &[ObjectId]) -> Result<Option<PathBuf>, Error> {
        let bitmap = pack.with_extension("bitmap");
        if bitmap.is_file() {
            return Ok(Some(bitmap));
        }
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        // The pack's commit graph first: the walk that writes the bitmaps, and every fetch
        // after, read commits from it. Without one (git's format cannot hold every history)
        // commits are read from their objects.
        match repo.write_commit_graph(pack) {
            Ok(Some(graph)) if !pack.with_extension("idx").is_file() => {
                let _ = std::fs::remove_file(graph);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "writing the commit graph failed"),
        }
        // The replaced pack's index and bitmaps, if kept aside.
        let old_index = std::fs::read_dir(self.replaced_dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "idx"));
        let written = match repo.write_bitmaps_reusing(tips, old_index.as_deref()) {
            Ok(Some(written)) => Some(written),
            // Whatever went wrong with what was kept aside must not keep the mirror from
            // bitmaps: written again from nothing, and the folder goes.
            result if old_index.is_some() => {
                if let Err(err) = &result {
                    tracing::warn!(%err, "bitmaps from the replaced pack's failed; writing them anew");
                }
                remove_dir_if_there(&self.replaced_dir())?;
                repo.write_bitmaps_reusing(tips, None)?
            }
            result => result?,
        };
        let Some(written) = written else {
            return Ok(None);
        };
        if written.reused > 0 {
            tracing::debug!(
                reused = written.reused,
                "bitmaps written from the replaced pack's"
            );
        }
        let written = written.path;
        if written != bitmap || !pack.with_extension("idx").is_file() {
            let _ = std::fs::remove_file(&written);
            return Ok(None);
        }
        Ok(Some(written))
    }

    /// Where the index and bitmaps of the pack a consolidation replaced are kept until the
    /// new pack's bitmaps are written from them: a folder the object store does not read.
    fn replaced_dir(&self) -> PathBuf {
        self.git_dir.join("objects").join("pack").join("replaced")
    }

    /// Once `pack` (the consolidated pack) has its bitmaps, remove what was kept aside of
    /// the pack it replaced. Returns whether there was anything.
    pub fn remove_replaced(&self, pack: &Path) -> Result<bool, Error> {
        let aside = self.replaced_dir();
        if !pack.with_extension("bitmap").is_file() || !aside.exists() {
            return Ok(false);
        }
        remove_dir_if_there(&aside)?;
        Ok(true)
    }

    /// Write the commit graph of each consolidated pack (one marked with its tips) that has
    /// none, or a damaged one: a copy that took its packs from a shared store, or made before
    /// commit graphs. Every pack without a sound reverse index gets one too. Returns the
    /// graphs the consolidated packs now have.
    pub fn write_missing_graphs(&self) -> Result<Vec<PathBuf>, Error> {
        let pack_dir = self.git_dir.join("objects").join("pack");
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        let mut graphs = Vec::new();
        // Packs taken in before reverse indexes were written lack one (only a shortcut for
        // readers: not writing it stops nothing else).
        if let Err(err) = repo.write_reverse_indexes() {
            tracing::warn!(%err, git_dir = %self.git_dir.display(), "writing a reverse index failed");
        }
        for stem in pack_names(&pack_dir)? {
            let pack = pack_dir.join(format!("{stem}.pack"));
            if pack.with_extension("tips").is_file()
                && let Some(graph) = repo.write_commit_graph(&pack)?
            {
                graphs.push(graph);
            }
        }
        Ok(graphs)
    }

    /// Check the checksum of each bitmap file (each read whole) and remove those that do not
    /// match, so that maintenance writes them again; fetches never read a checksum. Returns
    /// the files removed.
    pub fn remove_damaged_bitmaps(&self) -> Result<Vec<PathBuf>, Error> {
        self.remove_damaged_bitmaps_except(&|_| false)
    }

    /// [`remove_damaged_bitmaps`](Self::remove_damaged_bitmaps), not reading the files
    /// `vouched` vouches for (written and read back by this process, unchanged since).
    pub fn remove_damaged_bitmaps_except(
        &self,
        vouched: &dyn Fn(&Path) -> bool,
    ) -> Result<Vec<PathBuf>, Error> {
        let repo = gitcache_pack::Repository::open(&self.git_dir)?;
        let damaged = repo.damaged_bitmaps_except(vouched)?;
        for path in &damaged {
            std::fs::remove_file(path)?;
        }
        Ok(damaged)
    }
}

/// Remove `dir` and what it holds, if it is there.
fn remove_dir_if_there(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The `pack-<checksum>` stems of the packs (with an index) in `dir`.
fn pack_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".idx") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Remove the pack whose `.pack` file is `pack`, and everything beside it.
fn remove_pack_file(pack: &Path) -> std::io::Result<()> {
    let (Some(dir), Some(stem)) = (pack.parent(), pack.file_stem()) else {
        return Ok(());
    };
    remove_pack(dir, &stem.to_string_lossy())
}

/// Remove a pack: its index first (so no new reader finds it), then everything else.
pub(crate) fn remove_pack(dir: &Path, stem: &str) -> std::io::Result<()> {
    std::fs::remove_file(dir.join(format!("{stem}.idx")))?;
    for ext in [
        "pack", "rev", "bitmap", "graph", "tips", "keep", "promisor", "mtimes",
    ] {
        match std::fs::remove_file(dir.join(format!("{stem}.{ext}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Where commits fetched by id are kept: `refs/gitcache/kept/<day>/<id>`, `<day>` the day
/// (since the epoch) they were fetched. Never advertised (ls-refs is the upstream's), but
/// reachable, so that consolidation keeps them and every instance gets them.
pub const KEPT_PREFIX: &str = "refs/gitcache/kept/";

/// Where gitcache's own refs are (see [`KEPT_PREFIX`]): no upstream's ref is mirrored there
/// and no upstream's symbolic ref may point there.
pub const OWN_PREFIX: &str = "refs/gitcache/";

/// Whether refs named with `prefix` can include gitcache's own ([`OWN_PREFIX`]): such a
/// prefix is never asked of an upstream (`refs/` among them).
pub fn reaches_own_refs(prefix: &str) -> bool {
    OWN_PREFIX.starts_with(prefix) || prefix.starts_with(OWN_PREFIX)
}

/// How many days a kept commit stays after the day it was fetched.
pub const KEEP_DAYS: u64 = 7;

/// The most kept commits a mirror holds (the most recent stay).
pub const MAX_KEPT: usize = 1000;

/// The day of a kept ref's name, if it is one.
fn kept_day(name: &[u8]) -> Option<u64> {
    let rest = name.strip_prefix(KEPT_PREFIX.as_bytes())?;
    let day = rest.split(|b| *b == b'/').next()?;
    std::str::from_utf8(day).ok()?.parse().ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Refuse a ref line whose name (or symbolic target) git would refuse, or that lies outside
/// what was asked for: it would corrupt `packed-refs` or `HEAD`, or add refs nobody wanted.
fn check_ref(line: &RefLine, prefixes: &[BString]) -> Result<(), Error> {
    let refuse = |name: &BString, reason: String| Error::InvalidRef {
        name: name.clone(),
        reason,
    };
    let valid = |name: &BString| {
        gix_validate::reference::name(name.as_bstr())
            .map(|_| ())
            .map_err(|e| refuse(name, e.to_string()))
    };
    if line.name != "HEAD" {
        valid(&line.name)?;
        if !prefixes
            .iter()
            .any(|p| p != "HEAD" && line.name.starts_with(p.as_slice()))
        {
            return Err(refuse(&line.name, "not under a prefix asked for".into()));
        }
    }
    if let Some(target) = &line.symref_target {
        valid(target)?;
        if !target.starts_with(b"refs/") {
            return Err(refuse(
                target,
                "a symbolic ref must point under refs/".into(),
            ));
        }
        // gitcache's own refs (those it keeps for ids asked for) are not the upstream's,
        // whatever the upstream saw of their names.
        if target.starts_with(OWN_PREFIX.as_bytes()) {
            return Err(refuse(
                target,
                "gitcache's own refs are not the upstream's".into(),
            ));
        }
    }
    Ok(())
}

/// [`Error::Replaced`] when the mirror had commits (among `known`, its refs' ids before the
/// refresh, tags peeled here) and the history of the commits the upstream lists now
/// (`listed`, likewise) shares none of them; on a blocking thread. A commit in both ends it at once (a
/// ref that did not move, a tag moved back); else the walk goes from the listed commits down
/// to the mirror's, which is short when a branch moved on. A listing without commits (a
/// repository made anew under the name is empty before its first push) shares nothing.
async fn same_repository(
    repo: &std::sync::Arc<gitcache_pack::Repository>,
    listed: Vec<ObjectId>,
    known: Vec<ObjectId>,
) -> Result<(), Error> {
    if known.is_empty() {
        return Ok(());
    }
    let repo = std::sync::Arc::clone(repo);
    let shares = tokio::task::spawn_blocking(move || {
        // The commit `oid` is or peels to.
        let commit = |oid: &ObjectId| -> Option<ObjectId> {
            match repo.is_commit(oid) {
                Ok(true) => Some(*oid),
                _ => repo
                    .peeled(oid)
                    .ok()
                    .flatten()
                    .filter(|peeled| repo.is_commit(peeled).unwrap_or(false)),
            }
        };
        let known_set: HashSet<ObjectId> = known.iter().copied().collect();
        if (listed.iter())
            .filter(|oid| known_set.contains(*oid))
            .any(|oid| commit(oid).is_some())
        {
            return Ok(true);
        }
        let known: Vec<ObjectId> = known.iter().filter_map(commit).collect();
        if known.is_empty() {
            return Ok(true);
        }
        // Peeled there; a listing without commits shares nothing.
        repo.shares_history(&listed, &known)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    match shares {
        true => Ok(()),
        false => Err(Error::Replaced),
    }
}

/// Whether `oid` starts a chain of annotated tags too long to peel.
fn too_deep_to_peel(repo: &gitcache_pack::Repository, oid: &ObjectId) -> bool {
    matches!(
        repo.peeled(oid),
        Err(gitcache_pack::Error::Corrupt { ref reason, .. }) if reason == gitcache_pack::TAG_CHAIN_TOO_LONG
    )
}

/// How often the free space is checked while a pack arrives (see [`Mirror::keeping_free`]).
pub const FLOOR_CHECKED_EVERY: u64 = 16 << 20;

/// The pack of the upstream's answer as it is read (its side-band's progress and errors
/// apart), with the disk of the floor's `dir` checked to keep `keep` bytes free as the
/// reading starts and every [`FLOOR_CHECKED_EVERY`] bytes: below it, reading fails, and the
/// floor's `below` says how much was free, the floor, and how much of the pack had been
/// read.
struct AboveFloor<R> {
    inner: R,
    floor: Floor,
    /// Bytes read since the last check.
    unchecked: u64,
}

/// A refresh's floor of free space on the disk of `dir`: what fell below it, and when.
#[derive(Clone)]
struct Floor {
    dir: PathBuf,
    free: FreeSpace,
    keep: u64,
    /// Bytes of the pack read in all.
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes taking the pack in was given room for after the download.
    granted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set when the disk fell below the floor: what was free, the floor, what had been read,
    /// and the room a next try needs (see [`Error::LowDisk`]).
    below: std::sync::Arc<std::sync::OnceLock<(u64, u64, u64, u64)>>,
}

impl Floor {
    /// An error, noted, unless the disk is still at or above the floor as the pack arrives
    /// (a disk that cannot be told about is not held against the refresh).
    fn arriving(&self) -> std::io::Result<()> {
        self.room(0, None)
    }

    /// An error, noted, unless the bytes `ask` names, written after the download, still
    /// leave the disk at or above the floor; counted as given if so.
    fn after(&self, ask: ingest::Ask) -> std::io::Result<()> {
        if self.keep == 0 {
            return Ok(());
        }
        // Written already: counted, not checked.
        if !matches!(ask, ingest::Ask::Written(_)) {
            self.room(ask.bytes(), Some(ask))?;
        }
        self.granted
            .fetch_add(ask.bytes(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn room(&self, more: u64, after: Option<ingest::Ask>) -> std::io::Result<()> {
        if self.keep == 0 {
            return Ok(());
        }
        let free = (self.free)(&self.dir).unwrap_or(u64::MAX);
        if free < self.keep.saturating_add(more) {
            let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
            let known = read
                .saturating_add(self.granted.load(std::sync::atomic::Ordering::Relaxed))
                .saturating_add(more);
            let needed = match after {
                // The last writes: the pack, what was written after it, and what was to be,
                // with a margin for a pack that grows before the next try.
                Some(ingest::Ask::Last(_)) => with_margin(known),
                // More bases and the indexes were to follow, how many is not known.
                Some(ingest::Ask::Bases(_) | ingest::Ask::Written(_)) => known.saturating_mul(2),
                // How much more of the pack was to come is not known either.
                None => read.saturating_mul(2),
            };
            let _ = self.below.set((free, self.keep, read, needed));
            return Err(std::io::Error::other(match after {
                Some(_) => "the disk would fall below the free space kept as the pack was taken in",
                None => "the disk fell below the free space kept while the pack arrived",
            }));
        }
        Ok(())
    }
}

/// `bytes` and an eighth more (a MiB at least): the room asked for a next try whose pack
/// may have grown meanwhile (a push between two tries), which would otherwise find exactly
/// the room the last one lacked, and be stopped again.
pub fn with_margin(bytes: u64) -> u64 {
    bytes.saturating_add((bytes / 8).max(1 << 20))
}

impl<R: std::io::Read> std::io::Read for AboveFloor<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.unchecked >= FLOOR_CHECKED_EVERY {
            self.floor.arriving()?;
            self.unchecked = 0;
        }
        let read = self.inner.read(buf)?;
        self.unchecked += read as u64;
        self.floor
            .read
            .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(read)
    }
}

/// How long taking a pack of `bytes` in may go on after its download: two minutes, and a
/// second more for each MiB (the `large` generated repository's 29 MB pack takes 1.4 s, a
/// 3 GB one a few minutes on two cores).
fn decoding_deadline(bytes: u64) -> std::time::Duration {
    std::time::Duration::from_secs(120 + bytes / (1 << 20))
}

/// Replace every ref with `remote`'s: one `packed-refs` renamed into place, then `HEAD`.
/// Peeled values come from `repo`'s objects, not from the upstream's answer. Returns the
/// refs left out (a chain of tags too deep to peel), with their values.
pub(crate) fn write_refs(
    git_dir: &Path,
    repo: &gitcache_pack::Repository,
    remote: &[RefLine],
) -> Result<Vec<RefLine>, Error> {
    let mut lines: Vec<&RefLine> = remote
        .iter()
        .filter(|r| r.name != "HEAD" && r.oid.is_some())
        .collect();
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    lines.dedup_by(|a, b| a.name == b.name);
    let mut text = b"# pack-refs with: peeled fully-peeled sorted \n".to_vec();
    let mut left_out: Vec<RefLine> = Vec::new();
    let mut written: std::collections::HashSet<&BString> = std::collections::HashSet::new();
    for line in lines {
        let oid = line.oid.expect("filtered");
        let peeled = match repo.peeled(&oid) {
            Ok(peeled) => peeled,
            // A chain of tags deeper than gitcache peels (git peels any depth): that ref is
            // left out, as one with an invalid name is, rather than every refresh failing.
            Err(gitcache_pack::Error::Corrupt { reason, .. })
                if reason == gitcache_pack::TAG_CHAIN_TOO_LONG =>
            {
                tracing::warn!(name = %line.name, %oid, "a ref whose tag chain is too long to peel: left out");
                left_out.push((*line).clone());
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        text.extend_from_slice(format!("{oid} ").as_bytes());
        text.extend_from_slice(&line.name);
        text.push(b'\n');
        written.insert(&line.name);
        if let Some(peeled) = peeled {
            text.extend_from_slice(format!("^{peeled}\n").as_bytes());
        }
    }
    // Loose refs would hide packed ones; a mirror keeps none.
    remove_loose_refs(&git_dir.join("refs"))?;
    gitcache_storage::fs::replace_file_if_changed(&git_dir.join("packed-refs"), &text)?;
    let head = remote.iter().find(|r| r.name == "HEAD");
    if let Some((head, target)) = head.and_then(|h| Some((h, h.symref_target.as_ref()?))) {
        if head.oid.is_some() && !written.contains(target) {
            // Not onto a ref not written (left out, or outside the prefixes mirrored):
            // `HEAD` would name nothing. It stays as it was, and is left out as listed.
            left_out.push(head.clone());
        } else {
            let mut head = b"ref: ".to_vec();
            head.extend_from_slice(target.as_bytes());
            head.push(b'\n');
            gitcache_storage::fs::replace_file_if_changed(&git_dir.join("HEAD"), &head)?;
        }
    }
    Ok(left_out)
}

fn remove_loose_refs(dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            remove_loose_refs(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Floor, with_margin};

    /// A floor refuses what would take the disk below it, noting what was free, the floor,
    /// what had arrived and the room a next try needs: twice what arrived while the pack
    /// arrived; once it had, what arrived and what was and would be written after it (with a
    /// margin when nothing was to follow, twice that when more bases and the indexes were to
    /// follow). Without a floor nothing is refused.
    #[test]
    fn a_floor_refuses_what_would_take_the_disk_below_it() {
        use crate::ingest::Ask;
        let dir = tempfile::tempdir().unwrap();
        let floor = |keep: u64| Floor {
            dir: dir.path().to_owned(),
            free: gitcache_storage::fs::free_bytes,
            keep,
            read: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(42)),
            granted: Default::default(),
            below: Default::default(),
        };
        let none = floor(0);
        none.after(Ask::Last(u64::MAX)).unwrap();
        none.arriving().unwrap();
        assert!(none.below.get().is_none());
        let needed = |ask: Ask| {
            let kept = floor(1);
            kept.arriving().unwrap();
            kept.after(Ask::Bases(10)).unwrap();
            kept.after(Ask::Bases(5)).unwrap();
            assert!(kept.below.get().is_none());
            let err = kept.after(ask).unwrap_err();
            assert!(err.to_string().contains("taken in"), "{err}");
            let &(free, keep, read, needed) = kept.below.get().expect("noted");
            assert!(free > 0 && free < u64::MAX, "{free}");
            assert_eq!((keep, read), (1, 42));
            needed
        };
        let more = u64::MAX / 4;
        // Told of, not checked, and counted.
        let told = floor(u64::MAX);
        told.after(Ask::Written(7)).unwrap();
        assert_eq!(told.granted.load(std::sync::atomic::Ordering::Relaxed), 7);
        assert_eq!(needed(Ask::Last(more)), with_margin(42 + 15 + more));
        assert_eq!(with_margin(8 << 20), 9 << 20);
        assert_eq!(with_margin(57), 57 + (1 << 20), "a MiB at least");
        assert_eq!(needed(Ask::Bases(more)), 2 * (42 + 15 + more));
        assert_eq!(needed(Ask::Last(u64::MAX)), u64::MAX, "saturated");
        let arriving = floor(u64::MAX);
        let err = arriving.arriving().unwrap_err();
        assert!(err.to_string().contains("arrived"), "{err}");
        assert_eq!(arriving.below.get().map(|b| (b.2, b.3)), Some((42, 84)));
    }
}
