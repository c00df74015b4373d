//! Answering a protocol v2 `fetch` from a local bare repository, as `git upload-pack` would.
//!
//! [`plan`] does all the deciding — negotiation, shallow boundaries, object selection with
//! filters and `include-tag` — and knows the object count before a byte is written;
//! [`Plan::write_to`] then streams the whole response (sections, side-band, pack) into any
//! [`std::io::Write`], reusing stored pack entries wherever git's rules allow.
//!
//! gitoxide has no server side: negotiation, shallow and selection here are this crate's own,
//! built on gix-odb and gix-pack for reading objects and pack entries.
//!
//! What makes answers fast is written beside a pack, in git's formats, by
//! [`Repository::write_commit_graph`] (each commit's tree, parents and time, read by every walk
//! instead of the commit) and [`Repository::write_bitmaps`] (what each sampled commit
//! reaches); both are read when present, git's own files included.
//!
//! A [`Repository`] is meant to be kept open between answers: it keeps what they read and
//! made (indexes, reverse indexes, bitmaps, delta forests, and the trees they read first, see
//! [`Repository::keep_head_trees`]), and [`Repository::reopen`] hands it on when the packs
//! change.
//!
//! # Example
//!
//! ```no_run
//! use gitcache_pack::{Options, Repository, plan};
//! use gitcache_protocol::request::{Command, Limits, parse_request};
//!
//! let repo = Repository::open("/srv/mirrors/acme/widgets.git")?;
//! let body = std::fs::read("request.bin")?; // what the client POSTed
//! let request = parse_request(&body, Limits::default())?.expect("a request");
//! let Command::Fetch(fetch) = &request.command else { panic!("not a fetch") };
//! let plan = plan(&repo, fetch, request.capabilities.object_format(), &Options::default())?;
//! println!("sending {:?} objects", plan.object_count());
//! plan.write_to(std::io::stdout().lock())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// One reviewed exception, file maps: see `mapped`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod bitmap;
mod chains;
pub mod checkout;
mod closed;
pub mod copy;
mod delta;
pub mod early;
mod error;
mod filter;
mod forest;
mod graph;
mod ids;
pub mod incoming;
mod indexing;
mod mapped;
mod negotiate;
mod objects;
mod packs;
mod remade;
mod repo;
mod reuse;
mod select;
mod shallow;
mod trees;
mod walk;
mod window;
mod write;

#[doc(hidden)]
pub mod fuzzing;

use std::io::Write;

use bstr::BString;
use gitcache_protocol::request::Fetch;
use gitcache_protocol::response::ResponseWriter;
use gix_hash::ObjectId;

pub use error::Error;
pub use indexing::{Closure, PackEntry, ReadPack, ThinBases};
pub use packs::MAX_TIPS_FILE_BYTES;
pub use remade::Remade;
pub use repo::{Ref, Repository, WARM_FOREST_MOST, Warmth};
pub use trees::KeptTrees;
pub use write::{Checksum, PackStats};

/// What the annotated tag `data` (of a repository whose ids are `hash`) tags, and of what
/// kind that is, as git reads its `object` and `type` lines; `None` for what is not a tag.
///
/// ```
/// let tag = format!("object {}\ntype commit\ntag v1\n\nv1\n", "1".repeat(40));
/// let (_, kind) = gitcache_pack::tagged(tag.as_bytes(), gix_hash::Kind::Sha1).unwrap();
/// assert_eq!(kind, gix_object::Kind::Commit);
/// ```
pub fn tagged(data: &[u8], hash: gix_hash::Kind) -> Option<(gix_hash::ObjectId, gix_object::Kind)> {
    objects::parse_tag(data, hash).ok()
}

use objects::Objects;

pub(crate) use ids::{OidMap, OidSet};
use select::Selection;
use write::{PackWriter, WriteOptions};

/// Server-side choices that are not part of the request.
#[derive(Debug, Clone)]
pub struct Options {
    /// zlib level (0–9) for objects that must be compressed again (those whose stored delta
    /// base is not sent). Most entries are copied as stored.
    pub compression_level: u32,
    /// Threads that compress such objects, the writing thread counted (1: only it, between
    /// planning and writing each batch; more: all but one beside it, compressing the next
    /// batch while the writing thread plans it and writes this one, which then takes what is
    /// left of that batch's queue rather than wait).
    pub compression_threads: usize,
    /// The longest chain of deltas an object of a written pack may sit at the end of, counted
    /// over the objects written one by one (git's `pack.depth`, 50 by default): an object
    /// whose base is at this depth is written whole instead. Long chains cost the client
    /// every time it reads such an object. Runs of a stored pack copied as they are keep
    /// their chains as stored (as git's pack reuse does); an object written after them
    /// against a copied entry counts that entry's stored chain.
    pub max_delta_depth: usize,
    /// Asked now and then while planning and writing: once it says so, the work stops with
    /// [`Error::Cancelled`] (the client went away).
    pub cancel: Cancel,
    /// Where objects compressed again are kept for later answers, and looked for first
    /// (none: every answer makes its own). Shared by the answers of a process.
    pub remade: Option<std::sync::Arc<Remade>>,
    /// Bytes of stored entries and of objects to compress again that a batch of the writer
    /// takes before it closes (16 MiB by default; 0 counts as 1). An answer holds two
    /// batches: the one written and the next, planned and compressed meanwhile; when those
    /// two are over twice this, the next batch's compressing waits until it is the one
    /// written. Each batch holds at least one object, however large, and at most 512.
    pub lookahead_bytes: u64,
}

/// A question planning and writing ask at checkpoints: has the work become pointless?
#[derive(Clone, Default)]
pub struct Cancel(Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>);

impl Cancel {
    /// Work is cancelled once `cancelled` returns true.
    pub fn when(cancelled: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Cancel(Some(std::sync::Arc::new(cancelled)))
    }

    /// Whether the work should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f())
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Cancel(set)"
        } else {
            "Cancel(none)"
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression_level: 3,
            compression_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            max_delta_depth: 50,
            cancel: Cancel::default(),
            remade: None,
            lookahead_bytes: 16 << 20,
        }
    }
}

/// The decided response to one `fetch` request.
#[derive(Debug)]
pub enum Plan {
    /// No `want`: git answers nothing at all.
    Nothing,
    /// Negotiation goes on: an `acknowledgments` section, then the end of the response.
    Acknowledge {
        /// The common objects, for `ACK` lines (`NAK` when empty).
        common: Vec<ObjectId>,
    },
    /// The response that carries a pack.
    Pack(Box<PackPlan>),
}

/// Everything needed to write a response with a pack.
pub struct PackPlan {
    acks: Option<Vec<ObjectId>>,
    wanted_refs: Vec<(ObjectId, BString)>,
    shallow_info: Option<(Vec<ObjectId>, Vec<ObjectId>)>,
    source: Source,
    objects: Objects,
    spawn_objects: Box<dyn Fn() -> Objects + Send + Sync>,
    packs: Vec<packs::StoredPack>,
    rev: std::sync::Arc<packs::RevCache>,
    /// The packs' bitmaps, for the name hashes new deltas look for bases by.
    bitmap_cache: std::sync::Arc<bitmap::BitmapCache>,
    write: WriteOptions,
    progress: bool,
    sideband_all: bool,
    /// The objects were found with reachability bitmaps, not a walk.
    bitmaps: bool,
    /// The objects were found by walking the history.
    walked: bool,
    /// Planned on a repository whose objects were not checked: its pack is written in an
    /// [`ids::Unchecked`] scope (the sections before it make no sets).
    unchecked: bool,
}

impl std::fmt::Debug for PackPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackPlan")
            .field("objects", &self.object_count())
            .field("whole_pack", &self.is_whole_pack())
            .field("bitmaps", &self.bitmaps)
            .field("walked", &self.walked)
            .field("shallow_info", &self.shallow_info)
            .finish_non_exhaustive()
    }
}

/// Where the pack's bytes come from.
#[derive(Debug)]
enum Source {
    /// Written object by object.
    Selected(Box<Selection>),
    /// A stored pack sent as it is.
    WholePack {
        path: std::path::PathBuf,
        count: usize,
    },
}

impl PackPlan {
    /// Whether the objects were found with reachability bitmaps rather than a walk.
    pub fn used_bitmaps(&self) -> bool {
        self.bitmaps
    }
    /// Whether the objects were found by walking the history (not from bitmaps, nor from a
    /// stored pack that holds exactly what the wants reach).
    pub fn walked(&self) -> bool {
        self.walked
    }

    /// How many objects the pack holds.
    pub fn object_count(&self) -> usize {
        match &self.source {
            Source::Selected(selection) => selection.len(),
            Source::WholePack { count, .. } => *count,
        }
    }

    /// Whether a stored pack will be sent as it is.
    pub fn is_whole_pack(&self) -> bool {
        matches!(self.source, Source::WholePack { .. })
    }

    /// The stored pack sent as it is, if one is (its `.pack` path).
    pub fn whole_pack_path(&self) -> Option<&std::path::Path> {
        match &self.source {
            Source::WholePack { path, .. } => Some(path),
            Source::Selected(_) => None,
        }
    }

    /// Whether every object the pack would hold is named by the index of a pack it is
    /// written from (every tag `include-tag` looked at read too), and a stored pack sent as
    /// it is holds no entry beyond those its index names. Planning reads the commits, trees and tags it sends but only lists the blobs:
    /// a repository indexed in part ([`early`]) may answer only when this holds.
    pub fn held_whole(&self) -> bool {
        match &self.source {
            Source::WholePack { path, count } => {
                packs::header_count(path).is_some_and(|entries| entries as usize == *count)
            }
            Source::Selected(selection) => {
                selection.packed.is_none()
                    && !selection.unread_tags
                    && selection
                        .listed()
                        .all(|oid| self.packs.iter().any(|pack| pack.contains(oid)))
            }
        }
    }

    /// The `shallow` and `unshallow` lines, if a `shallow-info` section is sent.
    pub fn shallow_info(&self) -> Option<(&[ObjectId], &[ObjectId])> {
        self.shallow_info
            .as_ref()
            .map(|(s, u)| (s.as_slice(), u.as_slice()))
    }
}

impl Plan {
    /// Whether the objects of the pack sent, if any, are all in the repository's indexes (see
    /// [`PackPlan::held_whole`]).
    pub fn held_whole(&self) -> bool {
        match self {
            Plan::Pack(pack) => pack.held_whole(),
            Plan::Nothing | Plan::Acknowledge { .. } => true,
        }
    }

    /// Objects in the pack, if a pack is sent.
    pub fn object_count(&self) -> Option<usize> {
        match self {
            Plan::Pack(p) => Some(p.object_count()),
            _ => None,
        }
    }

    /// Write the whole response into `out` (no trailing `0002`: over HTTP git ends with the
    /// flush). Errors after the pack started go to the client on band 3 before returning.
    pub fn write_to<W: Write>(self, mut out: W) -> Result<PackStats, Error> {
        match self {
            Plan::Nothing => Ok(PackStats::default()),
            Plan::Acknowledge { common } => {
                let mut w = ResponseWriter::new(&mut out, false);
                w.acknowledgments(&common, false)?;
                out.flush()?;
                Ok(PackStats::default())
            }
            Plan::Pack(plan) => plan.write_to(out),
        }
    }
}

impl PackPlan {
    /// Write only the pack (no response sections, no side-band): what consolidating a
    /// repository's packs, or storing a pack, needs.
    pub fn write_pack<W: Write>(mut self, mut out: W) -> Result<PackStats, Error> {
        let stats = self.pack_bytes(&mut out)?;
        out.flush()?;
        Ok(stats)
    }

    /// The pack itself, from the stored file or object by object.
    fn pack_bytes(&mut self, out: &mut impl Write) -> Result<PackStats, Error> {
        let _keyed = self.unchecked.then(ids::Unchecked::enter);
        match &self.source {
            Source::WholePack { path, count } => {
                let bytes = std::io::copy(&mut std::fs::File::open(path)?, out)?;
                Ok(PackStats {
                    objects: u32::try_from(*count).unwrap_or(u32::MAX),
                    reused: u32::try_from(*count).unwrap_or(u32::MAX),
                    whole_pack: true,
                    bytes,
                    ..PackStats::default()
                })
            }
            Source::Selected(selection) => {
                let order: Vec<ObjectId> = selection.listed().copied().collect();
                let mut writer = PackWriter::new(
                    &mut self.objects,
                    &*self.spawn_objects,
                    self.write.clone(),
                    &self.packs,
                    &self.rev,
                    Some(&self.bitmap_cache),
                );
                writer.write(&order, selection, out)
            }
        }
    }

    fn write_to<W: Write>(mut self, out: W) -> Result<PackStats, Error> {
        let mut w = ResponseWriter::new(out, self.sideband_all);
        if let Some(common) = &self.acks {
            w.acknowledgments(common, true)?;
        }
        if !self.wanted_refs.is_empty() {
            w.wanted_refs(&self.wanted_refs)?;
        }
        if let Some((shallow, unshallow)) = &self.shallow_info {
            w.shallow_info(shallow, unshallow)?;
        }
        let mut band = w.packfile()?;
        let count = self.object_count();
        if self.progress {
            band.progress(format!("Enumerating objects: {count}, done.\n").as_bytes())?;
        }
        if self.progress && matches!(self.source, Source::Selected(_)) {
            band.progress(format!("Counting objects: 100% ({count}/{count}), done.\n").as_bytes())?;
        }
        let result = self.pack_bytes(&mut band);
        let stats = match result {
            Ok(stats) => stats,
            Err(Error::Io(err)) => return Err(Error::Io(err)),
            Err(err) => {
                // The client has part of a pack: tell it why it will not get the rest.
                let _ = band.error(err.wire_message().as_bytes());
                let _ = band.finish();
                return Err(err);
            }
        };
        if self.progress {
            // As git counts: objects copied in runs of a stored pack are "pack-reused", not
            // "reused".
            let (reused, reused_deltas, pack_reused, packs) = if stats.whole_pack {
                (0, 0, stats.objects, 1)
            } else {
                (
                    stats.reused - stats.pack_reused,
                    stats.reused_deltas - stats.pack_reused_deltas,
                    stats.pack_reused,
                    u32::from(stats.pack_reused > 0),
                )
            };
            band.progress(
                format!(
                    "Total {} (delta {}), reused {} (delta {}), pack-reused {} (from {})\n",
                    stats.objects, stats.deltas, reused, reused_deltas, pack_reused, packs
                )
                .as_bytes(),
            )?;
        }
        band.finish()?;
        Ok(stats)
    }
}

/// Decide the response to `fetch` from `repo`; `client_format` is the request's object format.
pub fn plan(
    repo: &Repository,
    fetch: &Fetch,
    client_format: gix_hash::Kind,
    options: &Options,
) -> Result<Plan, Error> {
    if client_format != repo.object_format() {
        return Err(Error::ObjectFormatMismatch {
            server: repo.object_format(),
            client: client_format,
        });
    }
    let _keyed = repo.unchecked_scope();
    // Listed first: the object handles read commits from the graphs of the packs listed.
    let stored = repo.stored_packs()?;
    let graphs = repo::graphs_of(&stored);
    let mut objects = repo.objects();
    objects.set_graphs(std::sync::Arc::clone(&graphs));
    objects.set_cancel(options.cancel.clone());
    let write = WriteOptions {
        ofs_delta: fetch.ofs_delta,
        thin: fetch.thin_pack,
        compression: options.compression_level.min(9),
        threads: options.compression_threads.max(1),
        max_depth: options.max_delta_depth.min(write::MAX_DEPTH) as u64,
        remade: options.remade.clone(),
        batch_bytes: options.lookahead_bytes.max(1),
    };
    if let Some(pack) = marked_pack_for(repo, &mut objects, &stored, fetch)? {
        return Ok(Plan::Pack(Box::new(PackPlan {
            acks: None,
            wanted_refs: Vec::new(),
            shallow_info: None,
            source: Source::WholePack {
                path: pack.pack.clone(),
                count: pack.num_objects(),
            },
            objects,
            spawn_objects: Box::new(repo.objects_factory(graphs, options.cancel.clone())),
            packs: Vec::new(),
            rev: repo.rev_cache(),
            bitmap_cache: repo.bitmap_cache(),
            write,
            progress: !fetch.no_progress,
            sideband_all: fetch.sideband_all,
            bitmaps: false,
            walked: false,
            unchecked: repo.is_unchecked(),
        })));
    }

    // Wants, each once, in request order; want-refs resolve to their current value.
    let mut wants: Vec<ObjectId> = Vec::new();
    let mut seen = OidSet::default();
    for oid in &fetch.wants {
        if objects.header(oid)?.is_none() {
            return Err(Error::NotOurRef { oid: *oid });
        }
        if seen.insert(*oid) {
            wants.push(*oid);
        }
    }
    let mut wanted_refs: Vec<(ObjectId, BString)> = Vec::new();
    let mut named: std::collections::HashSet<&BString> =
        std::collections::HashSet::with_capacity(fetch.want_refs.len());
    for (name, found) in fetch.want_refs.iter().zip(repo.find_refs(&fetch.want_refs)) {
        let Some(oid) = found?.and_then(|r| r.oid) else {
            return Err(Error::UnknownRef { name: name.clone() });
        };
        if !named.insert(name) {
            return Err(Error::DuplicateWantRef { name: name.clone() });
        }
        wanted_refs.push((oid, name.clone()));
        if seen.insert(oid) {
            wants.push(oid);
        }
    }
    let wanted_refs = git_strmap_order(wanted_refs);
    if wants.is_empty() && !fetch.wait_for_done {
        return Ok(Plan::Nothing);
    }

    let negotiation = negotiate::process_haves(&mut objects, &fetch.haves)?;
    let acks = if fetch.haves.is_empty() || fetch.done {
        None
    } else {
        let ready =
            !fetch.wait_for_done && negotiate::ok_to_give_up(&mut objects, &wants, &negotiation)?;
        if !ready {
            return Ok(Plan::Acknowledge {
                common: negotiation.common,
            });
        }
        Some(negotiation.common.clone())
    };

    let shallow_req = shallow::ShallowRequest {
        shallows: &fetch.shallows,
        depth: fetch.deepen,
        deepen_relative: fetch.deepen_relative,
        deepen_since: fetch.deepen_since,
        deepen_not: &fetch.deepen_not,
    };
    let shallow = shallow::plan(repo, &mut objects, &shallow_req, &wants)?;
    let mut all_wants = wants.clone();
    all_wants.extend(shallow.extra_wants.iter().copied());
    let mut haves = negotiation.have_objects.clone();
    haves.extend(shallow.extra_haves.iter().copied());
    let request = select::SelectRequest {
        wants: &all_wants,
        haves: &haves,
        grafts: &shallow.grafts,
        filter: fetch.filter.as_ref(),
        include_tag: fetch.include_tag,
        by_path: true,
        thin: fetch.thin_pack,
    };
    let bitmapped = if shallow.section || !fetch.shallows.is_empty() {
        None
    } else {
        select::select_with_bitmaps(repo, &mut objects, &stored, &request)?
    };
    let used_bitmaps = bitmapped.is_some();
    let unwalked = match bitmapped {
        Some(selection) => Some(selection),
        None if shallow.section || !fetch.shallows.is_empty() => None,
        None => select::select_from_marked_pack(repo, &mut objects, &stored, &request)?,
    };
    let walked = unwalked.is_none();
    let selection = match unwalked {
        Some(selection) => selection,
        None => select::select(repo, &mut objects, &request)?,
    };
    // A stored pack holding exactly these objects goes out as it is (it may hold ofs-deltas),
    // unless objects of it stored whole are to be tried as deltas against others at their
    // paths.
    let source = match selection.exact_pack(&stored).filter(|pack| {
        fetch.ofs_delta
            && !pack.tries_by_path(&selection.path_bases, fetch.thin_pack, objects.hash())
    }) {
        Some(pack) => Source::WholePack {
            path: pack.pack.clone(),
            count: pack.num_objects(),
        },
        None => Source::Selected(Box::new(selection)),
    };
    Ok(Plan::Pack(Box::new(PackPlan {
        acks,
        wanted_refs,
        shallow_info: shallow
            .section
            .then_some((shallow.shallow, shallow.unshallow)),
        source,
        objects,
        spawn_objects: Box::new(repo.objects_factory(graphs, options.cancel.clone())),
        packs: stored,
        rev: repo.rev_cache(),
        bitmap_cache: repo.bitmap_cache(),
        write,
        progress: !fetch.no_progress,
        sideband_all: fetch.sideband_all,
        bitmaps: used_bitmaps,
        walked,
        unchecked: repo.is_unchecked(),
    })))
}

/// Whether [`plan`] answers `fetch` with a stored pack sent as it is, decided without a walk
/// (a plain clone of exactly the tips a pack is marked with). Such an answer costs what
/// reading the file costs: keeping a copy of it elsewhere gains nothing.
pub fn answered_by_marked_pack(repo: &Repository, fetch: &Fetch) -> Result<bool, Error> {
    let stored = repo.stored_packs()?;
    let mut objects = repo.objects();
    Ok(marked_pack_for(repo, &mut objects, &stored, fetch)?.is_some())
}

/// The pack marked as the closure of exactly `tips` (other packs, such as one of commits
/// kept by id, may lie beside it), or the only pack.
fn closure_pack<'a>(
    stored: &'a [packs::StoredPack],
    tips: &[ObjectId],
) -> Option<&'a packs::StoredPack> {
    let wanted: OidSet = tips.iter().copied().collect();
    match stored {
        [pack] => Some(pack),
        _ => stored.iter().find(|p| p.tips.as_deref() == Some(&wanted)),
    }
}

/// A pack marked as the closure of exactly the wanted tips, when the request is a plain clone
/// that such a pack answers: no haves, no shallow, no filter, ofs-delta, and (with include-tag)
/// no annotated tag outside the pack pointing into it.
fn marked_pack_for<'a>(
    repo: &Repository,
    objects: &mut Objects,
    stored: &'a [packs::StoredPack],
    fetch: &Fetch,
) -> Result<Option<&'a packs::StoredPack>, Error> {
    let plain = fetch.haves.is_empty()
        && fetch.shallows.is_empty()
        && !fetch.is_deepening()
        && fetch.filter.is_none()
        && fetch.want_refs.is_empty()
        && fetch.ofs_delta
        && !fetch.wants.is_empty();
    if !plain {
        return Ok(None);
    }
    let wants: OidSet = fetch.wants.iter().copied().collect();
    let Some(pack) = stored.iter().find(|p| p.tips.as_deref() == Some(&wants)) else {
        return Ok(None);
    };
    if fetch.include_tag {
        for r in repo.refs()? {
            let Some(oid) = r.oid else { continue };
            if !r.name.starts_with(b"refs/tags/") || pack.contains(&oid) {
                continue;
            }
            let (target, _) = objects.peel(&oid)?;
            if target != oid && pack.contains(&target) {
                return Ok(None);
            }
        }
    }
    Ok(Some(pack))
}

/// Mark `pack` (its `.pack` path) as holding exactly the objects reachable from `tips`,
/// without checking. For a pack an upstream sent in answer to a fetch of exactly these wants
/// with no haves, no shallow and no filter: `git upload-pack` answers that with the closure
/// of the wants. When in doubt, [`Repository::mark_pack_tips`] checks first. `None` when
/// there are too many tips to mark with ([`MAX_TIPS_FILE_BYTES`]).
pub fn vouch_pack_tips(
    pack: &std::path::Path,
    tips: &[ObjectId],
) -> Result<Option<std::path::PathBuf>, Error> {
    let tips: OidSet = tips.iter().copied().collect();
    packs::write_tips(pack, &tips)
}

impl Repository {
    /// Mark the stored pack that holds exactly the objects reachable from `tips` (as a clone
    /// of them would select), so that such clones are answered from it with no walk. Returns
    /// the pack, or `None` when no single pack matches (or there are too many tips to mark
    /// it with, [`MAX_TIPS_FILE_BYTES`]).
    pub fn mark_pack_tips(&self, tips: &[ObjectId]) -> Result<Option<std::path::PathBuf>, Error> {
        let fetch = Fetch {
            wants: tips.to_vec(),
            done: true,
            ofs_delta: true,
            no_progress: true,
            ..Fetch::default()
        };
        let Plan::Pack(plan) = plan(self, &fetch, self.object_format(), &Options::default())?
        else {
            return Ok(None);
        };
        let Source::WholePack { path, .. } = &plan.source else {
            return Ok(None);
        };
        let tips: OidSet = tips.iter().copied().collect();
        Ok(packs::write_tips(path, &tips)?.map(|_| path.clone()))
    }

    /// Mark the repository's pack `pack` (its `.pack` path) with `tips`, as
    /// [`mark_pack_tips`](Self::mark_pack_tips) does but without its walk of the history:
    /// for a pack its caller has just written from a plan of exactly `tips` (no haves, no
    /// filter, no shallow boundary) that held `objects` objects. Returns the pack, or `None`
    /// (nothing marked) when the repository has no such pack, its object count differs, or
    /// it lacks a tip.
    pub fn mark_written_pack(
        &self,
        pack: &std::path::Path,
        tips: &[ObjectId],
        objects: usize,
    ) -> Result<Option<std::path::PathBuf>, Error> {
        let stored = self.stored_packs()?;
        let Some(found) = stored
            .iter()
            .find(|p| p.pack.file_name().is_some() && p.pack.file_name() == pack.file_name())
        else {
            return Ok(None);
        };
        if found.num_objects() != objects || tips.iter().any(|t| found.index.lookup(t).is_none()) {
            return Ok(None);
        }
        let tips: OidSet = tips.iter().copied().collect();
        Ok(packs::write_tips(&found.pack, &tips)?.map(|_| found.pack.clone()))
    }
}

impl Repository {
    /// Check that every object `tips` reach is present, walking down to what `known` (tips
    /// whose history is known to be complete) reaches: what git's connectivity check after
    /// a fetch does. A missing commit, tree, tag target or blob is an
    /// [`Error::MissingObject`].
    pub fn check_connected(&self, tips: &[ObjectId], known: &[ObjectId]) -> Result<(), Error> {
        let _keyed = self.unchecked_scope();
        let mut objects = self.objects();
        let known: Vec<ObjectId> = known.iter().copied().filter(|k| self.contains(k)).collect();
        let grafts = OidSet::default();
        let selection = select::select(
            self,
            &mut objects,
            &select::SelectRequest {
                wants: tips,
                haves: &known,
                grafts: &grafts,
                filter: None,
                include_tag: false,
                by_path: false,
                thin: false,
            },
        )
        .map_err(|err| match err {
            // A want the repository lacks is missing here, not the client's mistake.
            Error::NotOurRef { oid } => Error::MissingObject { oid },
            other => other,
        })?;
        // Commits and trees were read by the walk; blobs only named.
        match selection.listed().find(|oid| !self.contains(oid)) {
            Some(oid) => Err(Error::MissingObject { oid: *oid }),
            None => Ok(()),
        }
    }

    /// Of the commits `among`, those that the commits `tips` reach without going through
    /// what the commits `known` reach (commits the repository has; others are left out),
    /// each once: the history between two states of a repository's refs, walked commit by
    /// commit (no trees read).
    pub fn reached_by(
        &self,
        tips: &[ObjectId],
        known: &[ObjectId],
        among: &[ObjectId],
    ) -> Result<Vec<ObjectId>, Error> {
        let _keyed = self.unchecked_scope();
        let commits = |ids: &[ObjectId]| -> Vec<ObjectId> {
            ids.iter()
                .copied()
                .filter(|id| self.is_commit(id).unwrap_or(false))
                .collect()
        };
        let (tips, known) = (commits(tips), commits(known));
        if tips.is_empty() || among.is_empty() {
            return Ok(Vec::new());
        }
        let mut objects = self.objects();
        let walked = walk::limited_walk(&mut objects, &tips, &known, &OidSet::default(), None)?;
        let reached: OidSet = walked.interesting().copied().collect();
        let mut out: Vec<ObjectId> = Vec::new();
        for oid in among {
            if reached.contains(oid) && !out.contains(oid) {
                out.push(*oid);
            }
        }
        Ok(out)
    }

    /// Whether the history of the commits `tips` and that of the commits `known` have a
    /// commit in common (annotated tags are peeled; ids that are not commits the repository
    /// has, or tags of them, are left out; `false` when either side has none left). Walked from `tips` down to where the two meet, commit
    /// by commit: cheap when they meet soon (a branch moved on), the whole of `tips`'
    /// history when they never do. Commit dates skewed beyond what the walk tolerates (as
    /// git's `rev-list` does) can hide a meeting: the answer then errs towards `false`, never
    /// the other way.
    pub fn shares_history(&self, tips: &[ObjectId], known: &[ObjectId]) -> Result<bool, Error> {
        let _keyed = self.unchecked_scope();
        let commits = |ids: &[ObjectId]| -> Vec<ObjectId> {
            let mut seen = OidSet::default();
            let commit = |id: &ObjectId| match self.is_commit(id) {
                Ok(true) => Some(*id),
                _ => (self.peeled(id).ok().flatten())
                    .filter(|peeled| self.is_commit(peeled).unwrap_or(false)),
            };
            ids.iter()
                .filter_map(commit)
                .filter(|id| seen.insert(*id))
                .collect::<Vec<_>>()
        };
        let (tips, known) = (commits(tips), commits(known));
        if tips.is_empty() || known.is_empty() {
            return Ok(false);
        }
        let known_set: OidSet = known.iter().copied().collect();
        if tips.iter().any(|tip| known_set.contains(tip)) {
            return Ok(true);
        }
        let mut objects = self.objects();
        let walked = walk::limited_walk(&mut objects, &tips, &known, &OidSet::default(), None)?;
        if tips.iter().any(|tip| walked.uninteresting.contains(tip)) {
            return Ok(true);
        }
        // Only what `known` reaches is uninteresting: an interesting commit with such a
        // parent is where the two histories meet.
        for commit in walked.interesting() {
            let parents = &objects.commit(commit)?.parents;
            if parents.iter().any(|p| walked.uninteresting.contains(p)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `oid` is a commit the repository has.
    pub fn is_commit(&self, oid: &ObjectId) -> Result<bool, Error> {
        Ok(matches!(
            self.objects().header(oid)?,
            Some((gix_object::Kind::Commit, _))
        ))
    }

    /// Of `ids`, the `n` commits with the newest committer times, newest first (ties in the
    /// order given). Ids that are no commit here, or a commit of over 64 KiB, are passed over
    /// unread; at most [`NEWEST_OF_AT_MOST`] different ids are looked at (commits or not),
    /// the first ones given.
    pub fn newest_commits(&self, ids: &[ObjectId], n: usize) -> Vec<ObjectId> {
        /// Larger commits are not read to be compared (a commit is a few hundred bytes): a
        /// call reads 64 MiB of commits at most, the delta bases they are stored against
        /// aside.
        const MOST_COMMIT_BYTES: u64 = 64 << 10;
        let mut objects = self.objects();
        let mut seen = std::collections::HashSet::new();
        let mut timed: Vec<(i64, usize, ObjectId)> = ids
            .iter()
            .filter(|oid| seen.insert(**oid))
            .take(NEWEST_OF_AT_MOST)
            .enumerate()
            .filter_map(|(i, oid)| {
                let header = objects.header(oid).ok().flatten();
                if !matches!(header, Some((gix_object::Kind::Commit, size)) if size <= MOST_COMMIT_BYTES)
                {
                    return None;
                }
                let time = objects.try_commit(oid).ok().flatten()?.time;
                Some((time, i, *oid))
            })
            .collect();
        timed.sort_by_key(|&(time, i, _)| (std::cmp::Reverse(time), i));
        timed.into_iter().take(n).map(|(_, _, oid)| oid).collect()
    }

    /// What `oid` peels to when it is an annotated tag (followed through tags of tags), or
    /// `None` when it is not a tag.
    pub fn peeled(&self, oid: &ObjectId) -> Result<Option<ObjectId>, Error> {
        let mut objects = self.objects();
        match objects.header(oid)? {
            Some((gix_object::Kind::Tag, _)) => Ok(Some(objects.peel(oid)?.0)),
            Some(_) => Ok(None),
            None => Err(Error::MissingObject { oid: *oid }),
        }
    }
}

/// The reason of the [`Error::Corrupt`] a chain of 64 annotated tags or more gives when
/// peeled (git peels any depth; this bound keeps the work of a hostile chain small).
pub const TAG_CHAIN_TOO_LONG: &str = "tag chain too long";

/// The most ids [`Repository::newest_commits`] looks at: a mirror of a hundred thousand refs
/// is not read whole to pick a few.
pub const NEWEST_OF_AT_MOST: usize = 1_000;

/// Bitmaps written by [`Repository::write_bitmaps_reusing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapsWritten {
    /// The file, beside its pack.
    pub path: std::path::PathBuf,
    /// How many bitmaps of the replaced pack the walks took instead of walking on.
    pub reused: usize,
}

/// The largest buffer decoding one object of a pack may take when a pack is checked (as
/// ingestion bounds it).
const MAX_DECODED_BYTES: usize = 2 << 30;

/// git's name hash of a path (`pack_name_hash`), as a bitmap file's hash cache holds it for
/// each object: the hash of the path the object was first met at. Pack writing sorts
/// candidate delta bases by it (the last sixteen or so characters decide it, so files named
/// alike sort together).
pub fn path_name_hash(path: &[u8]) -> u32 {
    bitmap::name_hash(0, path)
}

impl Repository {
    /// Write reachability bitmaps in git's format (`pack-<hash>.bitmap`) for the
    /// repository's pack that is the closure of `tips` (its only pack, or the one marked with
    /// exactly these tips, as a consolidated mirror's is). Returns the file, or `None` when
    /// that does not apply. Fetches then find their objects with a few bitmap operations
    /// instead of a walk.
    ///
    /// Which commits get one follows git's choice: the commits are taken newest first (by
    /// committer time); each of the newest hundred gets a bitmap, then one in about every
    /// hundred up to the 20,000th, then one in a gap that grows with the distance up to one
    /// in 5,000 (a tip in the gap if there is one, else a merge); and every tip (up to 2,000,
    /// the newest), with one in ten of the last hundred commits and one in a hundred of the
    /// last 2,000 on the newest hundred tips' first-parent lines. Walks from recent commits, which fetches mostly want and have,
    /// meet a bitmap within a hundred commits; the file holds a few hundred bitmaps and about
    /// one per tip however long the history.
    pub fn write_bitmaps(&self, tips: &[ObjectId]) -> Result<Option<std::path::PathBuf>, Error> {
        Ok(self.write_bitmaps_reusing(tips, None)?.map(|w| w.path))
    }

    /// [`write_bitmaps`](Self::write_bitmaps), reusing the bitmaps of a pack the repository
    /// no longer holds (the one a consolidation replaced; `old_index` is its `.idx`, with its
    /// `.bitmap` beside it; its data and reverse index are not used): a walk that
    /// meets one of its commits takes that commit's bitmap, translated to the new pack's
    /// order, instead of walking the history below it, as `git repack -b` reuses the old
    /// pack's. A bitmap naming an object the new pack lacks is not taken; an old file whose
    /// checksum does not match, that cannot be read, or that has no name hashes (which the
    /// objects its bitmaps cover would then lack) is not used at all. The bitmaps written
    /// are those written without them; an object at several paths may be named (its name
    /// hash) by another of its paths.
    ///
    /// The walk reads most of the pack, and lets go of the pages it read every 256 MiB or so,
    /// so that the pack does not stay resident whole: other readers of this handle map them
    /// again from the page cache (a mirror writes its bitmaps on a handle of its own).
    pub fn write_bitmaps_reusing(
        &self,
        tips: &[ObjectId],
        old_index: Option<&std::path::Path>,
    ) -> Result<Option<BitmapsWritten>, Error> {
        let stored = self.stored_packs()?;
        let Some(pack) = closure_pack(&stored, tips) else {
            return Ok(None);
        };
        let rev = self.rev_cache().get_checked(pack, self.object_format());
        // A file without name hashes is not reused: the objects its bitmaps cover would not
        // be walked, and would keep no name from one consolidation to the next.
        let reuse = old_index
            .and_then(|path| bitmap::Loaded::replaced(path, self.object_format()))
            .filter(|old| matches!(old.bitmaps.names(), Ok(Some(_))));
        // Trees are read along their chains with a cache of their own unless the pack is too
        // large for its delta tree; then the object handle's cache is the one that helps.
        let mut objects = if pack.num_objects() > forest::MAX_OBJECTS {
            self.objects_for_history()
        } else {
            self.objects()
        };
        // The walk reads most of the pack: through the chain reader, or through the object
        // handle when the pack has no delta forest. Either lets go of its pages as it goes.
        objects.letting_go_every(chains::LET_GO_EVERY);
        // Bitmaps are kept for good: commits come from this pack's graph only, its checksum
        // checked (the file is read whole by the walk anyway), or from the objects.
        let graph = graph::Graph::open(&pack.pack.with_extension("graph"), self.object_format());
        objects.set_graphs(match graph {
            Ok(graph) => std::sync::Arc::new([std::sync::Arc::new(graph)]),
            Err(_) => std::sync::Arc::new([]),
        });
        let written = bitmap::write(&mut objects, pack, rev, self.object_format(), tips, reuse)?;
        // Loads trust the file (as git's do): it is read back once here, where it is made.
        if let Some(written) = &written
            && let Err(err) = bitmap::verify_checksum(&written.path, self.object_format())
        {
            let _ = std::fs::remove_file(&written.path);
            return Err(err);
        }
        Ok(written)
    }

    /// The pack that is the closure of `tips`, as [`write_bitmaps`](Self::write_bitmaps)
    /// finds it: the repository's only pack, or the one marked with exactly these tips.
    pub fn pack_marked_with(&self, tips: &[ObjectId]) -> Result<Option<std::path::PathBuf>, Error> {
        let stored = self.stored_packs()?;
        Ok(closure_pack(&stored, tips).map(|p| p.pack.clone()))
    }

    /// Write git's reverse index (`pack-<checksum>.rev` beside the pack) of every pack that
    /// lacks a sound one: packs indexed by gitcache get one with their index, this gives one
    /// to those indexed before, or by gitoxide's indexer. A damaged file is written again.
    /// Returns the files written; none when git has no reverse index for the object format.
    /// A pack whose file cannot be written does not stop the others: the first such error
    /// is returned after them.
    pub fn write_reverse_indexes(&self) -> Result<Vec<std::path::PathBuf>, Error> {
        let hash = self.object_format();
        if packs::rev_format_id(hash).is_none() {
            return Ok(Vec::new());
        }
        let (mut written, mut failed) = (Vec::new(), None);
        for pack in self.stored_packs()? {
            let path = pack.pack.with_extension("rev");
            // A damaged one is replaced by the rename (a reader mapping it keeps its file).
            if path.is_file() && packs::RevIndex::file_sound(&pack, hash) {
                continue;
            }
            let index = &pack.index;
            let offset_at = |i: u32| index.pack_offset_at_index(i);
            let (checksum, n) = (index.pack_checksum(), index.num_objects() as usize);
            match packs::write_beside_pack_with(&path, |file| {
                packs::write_rev(file, n, offset_at, &checksum, hash).map(drop)
            }) {
                Ok(()) => written.push(path),
                Err(err) => failed = failed.or(Some(err)),
            }
        }
        failed.map_or(Ok(written), Err)
    }

    /// Write the commit graph of the pack `pack` (its path; `pack-<checksum>.graph` beside
    /// it, in git's `commit-graph` format) unless it has one: every commit of the pack, with
    /// its tree, parents, committer time and topological level, so that walks read them from
    /// a table instead of inflating each commit. Returns the file, or `None` when the pack is
    /// not the repository's or git's format cannot hold its commits (a parent outside the
    /// pack, a time past 34 bits, an entry whose type its pack does not tell): then the file
    /// is left empty, so that it is not tried again, and is not read. A damaged file is
    /// written again.
    pub fn write_commit_graph(
        &self,
        pack: &std::path::Path,
    ) -> Result<Option<std::path::PathBuf>, Error> {
        let path = pack.with_extension("graph");
        match std::fs::metadata(&path) {
            // Left empty where the format could not hold the pack's commits: not tried again.
            Ok(meta) if meta.len() == 0 => return Ok(None),
            Ok(_) if graph::Graph::open(&path, self.object_format()).is_ok() => {
                return Ok(Some(path));
            }
            // Damaged: written again.
            Ok(_) => std::fs::remove_file(&path)?,
            Err(_) => {}
        }
        let stored = self.stored_packs()?;
        let Some(pack) = stored.iter().find(|p| p.pack == pack) else {
            return Ok(None);
        };
        let cannot = || -> Result<Option<std::path::PathBuf>, Error> {
            packs::write_beside_pack(&path, &[])?;
            Ok(None)
        };
        let rev = self.rev_cache().get_checked(pack, self.object_format());
        let Some(kinds) = packs::kinds(pack, &rev, self.object_format())? else {
            return cannot();
        };
        // Read from the objects themselves, never from another graph.
        let mut objects = repo::objects_without_graphs(self);
        let mut commits = Vec::new();
        for (position, kind) in kinds.iter().enumerate() {
            if *kind != gix_object::Kind::Commit {
                continue;
            }
            let oid = pack.index.oid_at_index(rev.at(position)).to_owned();
            let (_, data) = objects.read(&oid)?;
            let commit = objects::parse_commit(data, self.object_format())
                .map_err(|reason| Error::Corrupt { oid, reason })?;
            commits.push((oid, commit));
        }
        if graph::write(&path, self.object_format(), commits)? {
            Ok(Some(path))
        } else {
            cannot()
        }
    }

    /// Commits the commit graphs of the repository's packs hold (each sound graph counted;
    /// a damaged one is not read). For tests and diagnostics.
    #[doc(hidden)]
    pub fn commits_in_graphs(&self) -> Result<usize, Error> {
        let stored = self.stored_packs()?;
        Ok(stored
            .iter()
            .filter_map(|p| p.graph.as_ref())
            .map(|g| g.len() as usize)
            .sum())
    }

    /// Check the trailing checksum of every bitmap file beside the repository's packs (each
    /// read whole). Fetches do not (as in git, a load checks only the file's structure): this
    /// is for maintenance and for files that did not come from
    /// [`write_bitmaps`](Self::write_bitmaps), which checks what it writes.
    pub fn verify_bitmaps(&self) -> Result<(), Error> {
        for pack in self.stored_packs()? {
            let path = pack.pack.with_extension("bitmap");
            if path.is_file() {
                bitmap::verify_checksum(&path, self.object_format())?;
            }
        }
        Ok(())
    }

    /// The bitmap files beside the repository's packs whose checksum does not match (see
    /// [`verify_bitmaps`](Self::verify_bitmaps)).
    pub fn damaged_bitmaps(&self) -> Result<Vec<std::path::PathBuf>, Error> {
        self.damaged_bitmaps_except(&|_| false)
    }

    /// [`damaged_bitmaps`](Self::damaged_bitmaps), not reading the files `vouched` vouches for
    /// (a caller that wrote and read back a file, and finds it unchanged since).
    pub fn damaged_bitmaps_except(
        &self,
        vouched: &dyn Fn(&std::path::Path) -> bool,
    ) -> Result<Vec<std::path::PathBuf>, Error> {
        let mut damaged = Vec::new();
        for pack in self.stored_packs()? {
            let path = pack.pack.with_extension("bitmap");
            if path.is_file()
                && !vouched(&path)
                && bitmap::verify_checksum(&path, self.object_format()).is_err()
            {
                damaged.push(path);
            }
        }
        Ok(damaged)
    }

    /// The objects the stored bitmap of `commit` says it reaches, sorted; `None` without
    /// one. For tests that hold bitmaps against `git rev-list`.
    #[doc(hidden)]
    pub fn bitmap_of(&self, commit: &ObjectId) -> Result<Option<Vec<ObjectId>>, Error> {
        let stored = self.stored_packs()?;
        for pack in &stored {
            let Some(loaded) = self.bitmaps(pack) else {
                continue;
            };
            let Some(bits) = crate::bitmap::Known::bitmap(&*loaded, commit)? else {
                continue;
            };
            let mut oids: Vec<ObjectId> = bits.ones().map(|p| loaded.pos.oid(p)).collect();
            oids.sort();
            return Ok(Some(oids));
        }
        Ok(None)
    }
}

/// Order entries as git (2.44 and later) iterates its `strmap` of wanted refs: FNV-1 hashes of
/// the names into a table of 64 buckets that grows fourfold past 80% load, newest entry first
/// in each bucket.
fn git_strmap_order(entries: Vec<(ObjectId, BString)>) -> Vec<(ObjectId, BString)> {
    fn strhash(key: &[u8]) -> u32 {
        key.iter().fold(0x811c_9dc5u32, |h, &c| {
            h.wrapping_mul(0x0100_0193) ^ u32::from(c)
        })
    }
    let mut size = 64usize;
    let mut table: Vec<Vec<usize>> = vec![Vec::new(); size];
    for (i, (_, name)) in entries.iter().enumerate() {
        let bucket = strhash(name) as usize & (size - 1);
        table[bucket].insert(0, i);
        if i + 1 > size * 80 / 100 {
            size <<= 2;
            let mut grown: Vec<Vec<usize>> = vec![Vec::new(); size];
            for chain in &table {
                for &e in chain {
                    let b = strhash(&entries[e].1) as usize & (size - 1);
                    grown[b].insert(0, e);
                }
            }
            table = grown;
        }
    }
    let mut slots: Vec<Option<(ObjectId, BString)>> = entries.into_iter().map(Some).collect();
    table
        .into_iter()
        .flatten()
        .filter_map(|i| slots[i].take())
        .collect()
}
