//! Which objects a fetch sends.
//!
//! Commits: reachable from the wants, not from the common haves, not past a shallow graft.
//! Trees and blobs: those of the sent commits, minus every object in the trees of the
//! uninteresting commits the walk went through (the client has those commits, so it has their
//! trees), minus what the filter leaves out. Objects named in a `want` are sent whatever the
//! filter says, as git sends them. With `include-tag`, annotated tags whose target is sent go
//! along.
//!
//! For an incremental fetch, the walk also pairs each tree and blob it sends with the object
//! sent before it at the same path and, for a thin pack, with the client's object there in
//! the trees of the first commits at its edge, the client's commits whose children are sent
//! (git's preferred bases): the writer tries a delta against them for an object stored whole.
//! An answer from a pack's bitmaps walks no trees; for a small one in a thin pack, the trees
//! of the wants are compared with those of the haves to find the client's objects at the
//! paths of those sent (see [`client_path_bases`]).

use std::rc::Rc;

use gitcache_protocol::filter::{Filter, ObjectType};
use gix_hash::ObjectId;
use gix_object::Kind;

use crate::Error;
use crate::OidSet;
use crate::bitmap::{Beyond, BeyondTrees};
use crate::filter::{Answer, FilterState, Situation};
use crate::objects::{EntryKind, NamedTree, Names, Objects, TreeEntry};
use crate::repo::Repository;

/// The objects to send, in write order groups, and what the client is known to have.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Commits, newest first (those beyond a bitmapped pack in the order its walk met them).
    pub(crate) commits: Vec<ObjectId>,
    /// Tag objects.
    pub(crate) tags: Vec<ObjectId>,
    /// Trees and blobs, in traversal order.
    pub(crate) others: Vec<ObjectId>,
    /// Objects the client provably has: usable as thin-pack delta bases.
    pub(crate) client_has: Has,
    /// Further objects, as positions of one stored pack (none of them in the lists above).
    pub(crate) packed: Option<crate::reuse::Packed>,
    /// For an incremental fetch answered by a walk, of the trees and blobs sent, objects at
    /// the same path: delta bases to try for one stored whole. For a small thin answer from a
    /// pack's bitmaps, the client's objects only ([`PathBase::client`]).
    pub(crate) path_bases: crate::OidMap<PathBase>,
    /// The content of the client's trees [`PathBase::client`] names for an answer from a
    /// pack's bitmaps, as read to find them: the writer's delta bases, not read again.
    pub(crate) client_read: crate::OidMap<std::sync::Arc<[u8]>>,
    /// For an answer from a pack's bitmaps, the name hash of the path of each of `others`
    /// (the trees and blobs beyond the pack), as the walk met them; else empty.
    pub(crate) others_names: Vec<u32>,
    /// A tag a ref names could not be read for `include-tag` (a repository indexed in part:
    /// it may point at what is sent).
    pub(crate) unread_tags: bool,
}

/// Objects at the path of one sent, as the walk met them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathBase {
    /// The object sent before it at that path (most often a newer commit's: git's window
    /// pairs such versions). The writer takes it only if it comes earlier in the pack and
    /// is stored whole.
    pub(crate) sent: Option<ObjectId>,
    /// For a thin pack, the client's object there, in one of the trees at the edge of the
    /// walk (git's preferred bases).
    pub(crate) client: Option<ObjectId>,
}

/// What the client has: a set, and with bitmaps, the haves' bitmap (not turned into a set:
/// an incremental fetch's haves reach nearly the whole repository).
#[derive(Debug, Default)]
pub(crate) struct Has {
    pub(crate) set: OidSet,
    bits: Option<(std::sync::Arc<crate::bitmap::Loaded>, crate::bitmap::Bits)>,
}

impl Has {
    pub(crate) fn contains(&self, oid: &ObjectId) -> bool {
        self.set.contains(oid)
            || self
                .bits
                .as_ref()
                .is_some_and(|(loaded, bits)| loaded.pos.of(oid).is_some_and(|p| bits.get(p)))
    }

    fn insert(&mut self, oid: ObjectId) -> bool {
        self.set.insert(oid)
    }

    fn extend(&mut self, oids: impl IntoIterator<Item = ObjectId>) {
        self.set.extend(oids);
    }
}

impl Selection {
    /// The objects listed by id (all but [`Selection::packed`]), in write order.
    pub(crate) fn listed(&self) -> impl Iterator<Item = &ObjectId> {
        self.commits.iter().chain(&self.tags).chain(&self.others)
    }

    pub(crate) fn len(&self) -> usize {
        self.commits.len()
            + self.tags.len()
            + self.others.len()
            + self.packed.as_ref().map_or(0, |p| p.count)
    }

    /// The stored pack of `packs` that holds exactly the selected objects, if one does.
    pub(crate) fn exact_pack<'a>(
        &self,
        packs: &'a [crate::packs::StoredPack],
    ) -> Option<&'a crate::packs::StoredPack> {
        match &self.packed {
            Some(packed) => {
                let pack = packs.get(packed.pack)?;
                (self.listed().next().is_none() && packed.count == pack.num_objects())
                    .then_some(pack)
            }
            None => {
                let listed: Vec<&ObjectId> = self.listed().collect();
                crate::packs::exact_match(packs, &listed)
            }
        }
    }
}

/// What selection needs of the request.
#[derive(Debug)]
pub(crate) struct SelectRequest<'a> {
    pub(crate) wants: &'a [ObjectId],
    pub(crate) haves: &'a [ObjectId],
    pub(crate) grafts: &'a OidSet,
    pub(crate) filter: Option<&'a Filter>,
    pub(crate) include_tag: bool,
    /// Whether objects sent are paired with others at their paths ([`Selection::path_bases`]),
    /// when the walk has an edge: for a pack to write, not for a check.
    pub(crate) by_path: bool,
    /// Whether the pack may be thin: the client's objects at the paths of those sent are
    /// looked for too ([`PathBase::client`]).
    pub(crate) thin: bool,
}

pub(crate) fn select(
    repo: &Repository,
    objects: &mut Objects,
    req: &SelectRequest<'_>,
) -> Result<Selection, Error> {
    let mut out = Selection::default();
    let mut emitted: OidSet = OidSet::default();

    // Haves: commits hide history; other objects are simply had.
    let mut hidden = Vec::new();
    let mut had_trees = Vec::new();
    for have in req.haves {
        let (target, kind) = peel_chain(objects, have, |tag| {
            out.client_has.insert(tag);
        })?;
        match kind {
            Kind::Commit => hidden.push(target),
            Kind::Tree => had_trees.push(target),
            Kind::Blob | Kind::Tag => {
                out.client_has.insert(target);
            }
        }
    }

    // Wants: tags are sent with their chain; what they lead to is sent too.
    let mut tips = Vec::new();
    let mut given: Vec<(ObjectId, Kind)> = Vec::new();
    for want in req.wants {
        let mut chain = Vec::new();
        let (target, kind) = peel_chain(objects, want, |tag| chain.push(tag))?;
        for tag in chain {
            if emitted.insert(tag) {
                out.tags.push(tag);
            }
        }
        match kind {
            Kind::Commit => tips.push(target),
            other => given.push((target, other)),
        }
    }

    let walked = crate::walk::limited_walk(objects, &tips, &hidden, req.grafts, None)?;
    // The trees of many commits are read, version after version along the same chains:
    // their bases are kept while the walk reads them.
    if walked.order.len() > WIDE_WALK_COMMITS {
        objects.widen_bases(WALK_BASES_BYTES);
    }
    let selected = select_walked(
        repo,
        objects,
        req,
        (tips, given, had_trees, walked),
        out,
        emitted,
    );
    objects.narrow_bases();
    selected
}

/// Commits past which [`select`] walks with a wider delta-base cache.
const WIDE_WALK_COMMITS: usize = 16;

/// The delta-base cache of [`select`]'s walk of many commits (git's
/// `core.deltaBaseCacheLimit`, for its whole process, is 96 MiB). On the 22,000-commit bench
/// repository without bitmaps, a fetch 2,000 commits behind took 9.8 s with the handle's own
/// 512 KiB, 3.9 s with 8 MiB, 2.0 s with 32 MiB (119 MB at the peak, where git took 1.6–2.5 s
/// and 181 MB) and 1.8 s with 96 MiB (203 MB).
const WALK_BASES_BYTES: usize = 32 << 20;

/// What [`select`] walks from: the commits wanted, the other objects wanted (with their
/// kinds), the trees the client has, and the commits walked.
type Walking = (
    Vec<ObjectId>,
    Vec<(ObjectId, Kind)>,
    Vec<ObjectId>,
    crate::walk::Walked,
);

/// [`select`] once the commits are walked: the trees and blobs of those sent.
fn select_walked(
    repo: &Repository,
    objects: &mut Objects,
    req: &SelectRequest<'_>,
    (tips, given, had_trees, walked): Walking,
    mut out: Selection,
    mut emitted: OidSet,
) -> Result<Selection, Error> {
    let tips: OidSet = tips.into_iter().collect();
    out.client_has.extend(walked.uninteresting.iter().copied());
    let boundary_trees: Vec<ObjectId> = walked
        .boundary()
        .map(|c| objects.commit(c).map(|c| c.tree))
        .collect::<Result<_, _>>()?;
    for tree in boundary_trees.into_iter().chain(had_trees) {
        mark_tree_had(objects, tree, &mut out.client_has.set)?;
    }
    // The edge: the client's commits that are parents of commits sent, in walk order. With
    // one, objects sent are paired with others at their paths (see `PathBase`); in a thin
    // pack, the trees of its first commits are those the client's objects are looked for in.
    let mut paths = PathBases::default();
    let mut edge_trees = Vec::new();
    let mut edge = Vec::new();
    'edge: for commit in walked.interesting().take_while(|_| req.by_path) {
        if req.grafts.contains(commit) {
            continue;
        }
        for parent in objects.commit(commit)?.parents.clone() {
            if edge_trees.len() == PREFERRED_TREES {
                break 'edge;
            }
            if walked.uninteresting.contains(&parent) {
                let tree = objects.commit(&parent)?.tree;
                if !edge_trees.contains(&tree) {
                    edge_trees.push(tree);
                }
            }
        }
        if !req.thin && !edge_trees.is_empty() {
            break;
        }
    }
    // Not under a filter: a partial clone may lack the client's objects at those paths.
    if req.by_path && req.thin && req.filter.is_none() {
        for tree in &edge_trees {
            if let Some(named) = paths.tree(objects, tree) {
                edge.push((*tree, named));
            }
        }
    }

    let mut filter = req.filter.map(FilterState::new).transpose()?;
    let mut trees = Traversal {
        filter: filter.as_mut(),
        seen: OidSet::default(),
        emitted: &mut emitted,
        out: &mut out.others,
        client_has: &out.client_has.set,
        paths: (req.by_path && !edge_trees.is_empty()).then_some(&mut paths),
    };
    let commits: Vec<ObjectId> = walked.interesting().copied().collect();
    // Objects named in a want come first, shown whatever the filter says; then each commit's
    // tree, whose contents the filter judges.
    for (oid, kind) in &given {
        match kind {
            Kind::Tree => trees.tree(objects, *oid, true, Vec::new(), None)?,
            _ => trees.blob(objects, *oid, true)?,
        }
    }
    for commit in &commits {
        let tree = objects.commit(commit)?.tree;
        let against = edge.iter().map(|(_, named)| Rc::clone(named)).collect();
        let client = edge
            .iter()
            .map(|(base, _)| *base)
            .find(|base| *base != tree);
        trees.tree(objects, tree, false, against, Some(ROOT_PATH))?;
        trees.path_base(tree, ROOT_PATH, client);
    }
    // Commits the client named are sent; the filter judges the others.
    for commit in commits {
        let named = tips.contains(&commit);
        let answer = trees.ask(objects, Situation::Commit, &commit, named)?;
        if answer.show && trees.emitted.insert(commit) {
            out.commits.push(commit);
        }
    }

    if req.include_tag {
        include_tags(repo, objects, &mut emitted, |_| false, &mut out)?;
    }
    out.path_bases = paths.found;
    Ok(out)
}

/// Trees at the edge of the walk whose objects are offered as bases by path (git's window,
/// 10, bounds its own preferred bases).
const PREFERRED_TREES: usize = 4;
/// Bytes of the client's trees read to find bases by path: past this, no more are read.
const PATH_TREE_BYTES: usize = 16 << 20;

/// The client's trees read to find bases by path (those at the paths of trees sent), and
/// what was found.
#[derive(Default)]
struct PathBases {
    trees: crate::OidMap<Rc<NamedTree>>,
    bytes: usize,
    /// By path (a hash of it), the object last sent there.
    last: std::collections::HashMap<u64, ObjectId>,
    /// By object sent, objects at its path.
    found: crate::OidMap<PathBase>,
    /// What is left of the bytes reading trees may make (see [`Objects::read_cost`]), for
    /// a look whose gain is bounded; `None`: no bound but [`PATH_TREE_BYTES`].
    work_left: Option<u64>,
    /// Trees not read for that bound (not costed again).
    passed_over: OidSet,
}

/// The hash of the root's path.
const ROOT_PATH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hash of the path of entry `name` of the tree at the path hashed as `parent`, with the
/// entry's kind: a blob replaced by a directory of its name (or the other way round) is no
/// base for it. A collision only offers a base that will not pay.
fn child_path(parent: u64, name: &[u8], kind: EntryKind) -> u64 {
    let kind = match kind {
        EntryKind::Tree => 0x2f,
        EntryKind::Blob | EntryKind::Gitlink => 0x3a,
    };
    name.iter().fold(parent.rotate_left(23) ^ kind, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl PathBases {
    /// Tree `oid`, read once; `None` once the bound of bytes read is reached, when reading it
    /// would make more than what is left of the work allowed, or if it cannot be read (its
    /// entries were read as the client's before: this is not the place to fail a fetch, a
    /// base by path is only worth trying).
    fn tree(&mut self, objects: &mut Objects, oid: &ObjectId) -> Option<Rc<NamedTree>> {
        if let Some(named) = self.trees.get(oid) {
            return Some(Rc::clone(named));
        }
        if self.bytes >= PATH_TREE_BYTES {
            return None;
        }
        if let Some(left) = self.work_left.as_mut() {
            if self.passed_over.contains(oid) {
                return None;
            }
            let cost = objects.read_cost(oid);
            if cost > *left {
                self.passed_over.insert(*oid);
                return None;
            }
            *left -= cost;
        }
        let named = Rc::new(objects.named_tree(oid).ok()?);
        self.bytes += named.bytes();
        self.trees.insert(*oid, Rc::clone(&named));
        Some(named)
    }
}

/// A filter as the type bitmaps answer it (git's `can_filter_bitmap`): types left out but
/// for the objects the wants name, and blobs of a size or more left out.
#[derive(Debug, Default)]
struct BitmapFilter {
    without: Vec<Kind>,
    blob_limit: Option<u64>,
}

impl BitmapFilter {
    /// `None` for filters only a walk answers (`tree:<depth>` but 0, `sparse:oid`).
    fn of(filter: Option<&Filter>) -> Option<BitmapFilter> {
        let mut out = BitmapFilter::default();
        out.add(filter)?;
        Some(out)
    }

    fn add(&mut self, filter: Option<&Filter>) -> Option<()> {
        let mut without = |kind| {
            if !self.without.contains(&kind) {
                self.without.push(kind);
            }
        };
        match filter {
            None => {}
            Some(Filter::BlobNone) => without(Kind::Blob),
            Some(Filter::Tree(0)) => {
                without(Kind::Tree);
                without(Kind::Blob);
            }
            Some(Filter::ObjectType(kept)) => {
                let kept = match kept {
                    ObjectType::Blob => Kind::Blob,
                    ObjectType::Tree => Kind::Tree,
                    ObjectType::Commit => Kind::Commit,
                    ObjectType::Tag => Kind::Tag,
                };
                for kind in [Kind::Commit, Kind::Tree, Kind::Blob, Kind::Tag] {
                    if kind != kept {
                        without(kind);
                    }
                }
            }
            Some(Filter::BlobLimit(limit)) => {
                self.blob_limit = Some(self.blob_limit.map_or(*limit, |l| l.min(*limit)));
            }
            Some(Filter::Combine(all)) => {
                for sub in all {
                    self.add(Some(sub))?;
                }
            }
            Some(Filter::Tree(_) | Filter::SparseOid(_)) => return None,
        }
        Some(())
    }
}

/// The same selection from a pack's reachability bitmaps, when they answer the request: no
/// shallow boundary, and a filter the type bitmaps answer (`blob:none`, `blob:limit`,
/// `tree:0`, `object:type`, and combinations of them, as git's bitmap walk does). The objects
/// sent are exactly those the wants reach and the haves do not (git's answer with bitmaps):
/// those of the bitmapped pack in pack order; those of packs fetched since (a mirror between
/// two consolidations) found by id as the walk meets them, as git keeps them in its bitmap's
/// extended index. `None`: walk instead.
pub(crate) fn select_with_bitmaps(
    repo: &Repository,
    objects: &mut Objects,
    stored: &[crate::packs::StoredPack],
    req: &SelectRequest<'_>,
) -> Result<Option<Selection>, Error> {
    let Some(filter) = BitmapFilter::of(req.filter) else {
        return Ok(None);
    };
    if !req.grafts.is_empty() {
        return Ok(None);
    }
    let Some((k, loaded)) = stored
        .iter()
        .enumerate()
        .find_map(|(k, pack)| Some((k, repo.bitmaps(pack)?)))
    else {
        return Ok(None);
    };
    let (bitmaps, pos) = (&loaded.bitmaps, &loaded.pos);
    // As git does: when every have lies beyond the bitmapped pack (a client that fetched
    // since the consolidation), walking from the wants down to the haves reads fewer commits
    // than the bitmaps' walk from the haves through every commit since the consolidation
    // (a fetch whose have was 100 commits old, 2,000 past the consolidation, took twice as
    // long). Unless little lies beyond the pack (a few pushes since the consolidation): the
    // bitmaps' walk then reads few commits, where the walk reads the whole trees of the
    // haves (the first fetch after a push of 50 commits on a repository of deep trees took
    // 11 ms walked and 4.6 from the bitmaps).
    let beyond: usize = (stored.iter().enumerate())
        .filter(|(j, _)| *j != k)
        .map(|(_, p)| p.num_objects())
        .sum();
    if !req.haves.is_empty()
        && (beyond > FEW_BEYOND_MOST || beyond.saturating_mul(FEW_BEYOND) > stored[k].num_objects())
        && req.haves.iter().all(|have| pos.of(have).is_none())
    {
        return Ok(None);
    }
    // Trees beyond the pack are not walked for an answer that sends neither trees nor blobs
    // (those named by the wants aside, which are sent whatever they are); on the haves' side,
    // only the haves' own.
    let no_trees = filter.without.contains(&Kind::Tree) && filter.without.contains(&Kind::Blob);
    let (had_trees, sent_trees) = match no_trees {
        true => (BeyondTrees::None, BeyondTrees::None),
        false => (BeyondTrees::OfTips, BeyondTrees::All),
    };
    let mut beyond = Beyond::new(had_trees);
    let Some(had) =
        crate::bitmap::reach(objects, pos, &*loaded, req.haves, None, Some(&mut beyond))?
    else {
        return Ok(None);
    };
    // What the client has needs no walking on the wants' side: the same set goes on, and
    // what the wants' walk adds to it is what is sent.
    beyond.walk_on(sent_trees);
    let Some(mut sent) = crate::bitmap::reach(
        objects,
        pos,
        &*loaded,
        req.wants,
        Some(&had),
        Some(&mut beyond),
    )?
    else {
        return Ok(None);
    };
    sent.and_not(&had);
    let mut extra = std::mem::take(&mut beyond.new);
    // What the client has beyond the pack: delta bases in a thin pack, as the bits are.
    let client_has = beyond.into_seen_without(&extra);
    if !filter.without.is_empty() || filter.blob_limit.is_some() {
        let named_ids = named_by(objects, req.wants)?;
        let mut named = crate::bitmap::Bits::with_len(pos.len());
        for oid in &named_ids {
            if let Some(p) = pos.of(oid) {
                named.set(p);
            }
        }
        named.and_not(&had);
        for kind in &filter.without {
            sent.and_not(match kind {
                Kind::Commit => &bitmaps.commits,
                Kind::Tree => &bitmaps.trees,
                Kind::Blob => &bitmaps.blobs,
                Kind::Tag => &bitmaps.tags,
            });
        }
        if let Some(limit) = filter.blob_limit {
            let mut sizes = SizesAt::new(&stored[k], pos, objects.hash());
            let mut drop = crate::bitmap::Bits::with_len(pos.len());
            for p in sent.ones().filter(|p| bitmaps.blobs.get(*p)) {
                if sizes.of(objects, p)?.is_some_and(|size| size >= limit) {
                    drop.set(p);
                }
            }
            sent.and_not(&drop);
        }
        sent.or(&named);
        // The same filter on the objects beyond the pack, those named by the wants kept.
        let named_ids: OidSet = named_ids.into_iter().collect();
        let mut kept = Vec::with_capacity(extra.len());
        for (oid, kind, name) in extra {
            let keep = !filter.without.contains(&kind)
                && match (kind, filter.blob_limit) {
                    // As in the pack: a blob whose size cannot be read is not left out.
                    (Kind::Blob, Some(limit)) => {
                        objects.header(&oid)?.is_none_or(|(_, size)| size < limit)
                    }
                    _ => true,
                };
            if keep || named_ids.contains(&oid) {
                kept.push((oid, kind, name));
            }
        }
        extra = kept;
    }
    let mut out = Selection::default();
    // The objects listed, for `include-tag` to know them sent.
    let mut emitted = OidSet::default();
    for (oid, kind, name) in extra {
        if req.include_tag {
            emitted.insert(oid);
        }
        match kind {
            Kind::Commit => out.commits.push(oid),
            Kind::Tag => out.tags.push(oid),
            Kind::Tree | Kind::Blob => {
                out.others.push(oid);
                out.others_names.push(name);
            }
        }
    }
    out.client_has.extend(client_has);
    out.client_has.bits = Some((std::sync::Arc::clone(&loaded), had));
    let sent_ids = SentIds::default();
    // Not under a filter: a partial clone may lack the client's objects at those paths.
    if req.by_path
        && req.thin
        && req.filter.is_none()
        && !req.haves.is_empty()
        && sent.count() + out.others.len() <= CLIENT_PATHS_ANSWER
        && let whole = match out.others.is_empty() {
            true => whole_to_pair(&stored[k], &pos.rev(), &sent, objects.hash()),
            false => 0,
        }
        && (!out.others.is_empty() || whole > 0)
    {
        let beyond: OidSet = out.others.iter().copied().collect();
        // Objects beyond the pack are in none of its positions.
        let is_sent = |oid: &ObjectId| sent_ids.contains(pos, &sent, oid) || beyond.contains(oid);
        // What pairing may gain is bounded by what the objects stored whole take: the trees
        // read to find their client's versions may make a multiple of it (objects sent from
        // beyond the pack, fetched since its consolidation, are not counted there: no bound).
        let work = match out.others.is_empty() {
            true => Some(whole.saturating_mul(PATH_WORK_PER_BYTE)),
            false => None,
        };
        (out.path_bases, out.client_read) =
            client_path_bases(objects, req, is_sent, &out.client_has, work);
    }
    with_packed(
        repo,
        objects,
        out,
        emitted,
        (k, pos, sent),
        (req.include_tag, sent_ids),
    )
    .map(Some)
}

/// The stored bytes of the trees and blobs of positions `sent` of `pack` stored whole, of a
/// size a delta is made for: what [`client_path_bases`] is looked for for (copied runs send
/// the rest as stored deltas, whatever bases the client has), and the most it can gain.
fn whole_to_pair(
    pack: &crate::packs::StoredPack,
    rev: &crate::packs::RevIndex,
    sent: &crate::bitmap::Bits,
    hash: gix_hash::Kind,
) -> u64 {
    let Ok(data) = pack.data(hash) else {
        return 0;
    };
    let n = rev.len();
    let end = |p: usize| match p + 1 < n {
        true => rev.offset(pack, p + 1),
        false => data.pack_end() as u64,
    };
    sent.ones()
        .filter(|&p| p < n)
        .filter(|&p| crate::write::whole_to_pair(&data, rev.offset(pack, p)).is_some())
        .map(|p| end(p).saturating_sub(rev.offset(pack, p)))
        .sum()
}

/// The bytes reading trees may make in looking for the client's versions of objects stored
/// whole, per byte those take in the pack (see [`Objects::read_cost`]), for an answer sending
/// nothing from beyond the pack (one that does is bounded by [`PATH_TREE_BYTES`] alone: what
/// it sends from beyond is not counted there). Measured on a 50 MB generated repository, a
/// fetch of 50 commits: its 86 objects stored whole took 62 KB, and finding their client's
/// versions read the two widest directories through chains 37 and 42 links deep (4 MB made,
/// half the answer's time) for 46 KB less sent; a consolidated pack keeps the newest versions
/// whole, whose reads make about their size.
const PATH_WORK_PER_BYTE: u64 = 16;

/// A fetch whose haves all lie beyond the bitmapped pack is answered from the bitmaps when the
/// packs beyond it hold at most this fraction of its objects (one part in this many) and at
/// most [`FEW_BEYOND_MOST`] objects, and walked otherwise: the objects beyond bound the
/// commits the bitmaps' walk reads down from the haves.
const FEW_BEYOND: usize = 32;
/// See [`FEW_BEYOND`].
const FEW_BEYOND_MOST: usize = 4096;

/// Answers from a pack's bitmaps of at most this many objects look for the client's objects
/// at the paths of those sent (see [`client_path_bases`]); a larger one is copied as the
/// bitmaps select it, as git's pack reuse copies it.
pub(crate) const CLIENT_PATHS_ANSWER: usize = 1 << 14;

/// For a thin answer from a pack's bitmaps, which reads no trees: the client's object at the
/// path of each tree and blob sent, where there is one (git's preferred bases, the trees at
/// the edge of its walk). The root trees of the first [`PREFERRED_TREES`] wants that are
/// commits are compared with those of as many of the first haves that are (a client lists
/// its newest first), entry by entry, down only the trees that are sent: an entry sent whose
/// name and kind the client's tree there holds with another id is paired with that id. An
/// object stored whole in the runs copied from the pack is then tried as a delta against it
/// (an object of which consolidation keeps the newest version whole, the client's older one
/// stored on it, otherwise goes whole where the upstream, between two repacks, sends a thin
/// delta). No tree is read once [`PATH_TREE_BYTES`] have been, nor one whose reading would
/// make more than what is left of `work` (see [`Objects::read_cost`]): a sent tree not read
/// is passed over with what lies below it, a client's one is neither compared nor offered as
/// a base (this is no place to fail a fetch). Returned with the content of the client's trees
/// paired, as read.
fn client_path_bases(
    objects: &mut Objects,
    req: &SelectRequest<'_>,
    is_sent: impl Fn(&ObjectId) -> bool,
    has: &Has,
    work: Option<u64>,
) -> (crate::OidMap<PathBase>, crate::OidMap<std::sync::Arc<[u8]>>) {
    let mut roots = |ids: &[ObjectId]| -> Vec<ObjectId> {
        ids.iter()
            .filter_map(|id| {
                let (commit, kind) = peel_chain(objects, id, |_| {}).ok()?;
                (kind == Kind::Commit).then_some(())?;
                Some(objects.commit(&commit).ok()?.tree)
            })
            .take(PREFERRED_TREES)
            .collect()
    };
    let (ours, theirs) = (roots(req.wants), roots(req.haves));
    let mut found = crate::OidMap::default();
    let mut pair = |oid: ObjectId, base: Option<ObjectId>| {
        if let Some(base) = base {
            found.entry(oid).or_insert(PathBase {
                sent: None,
                client: Some(base),
            });
        }
    };
    // Trees sent, with the client's trees at their path (read when the tree is walked).
    let mut stack: Vec<(ObjectId, Vec<ObjectId>)> = Vec::new();
    // The trees sent that were paired: their client's versions are read when they are.
    let mut trees_paired = OidSet::default();
    for root in ours.into_iter().filter(|root| is_sent(root)) {
        let base = theirs.iter().find(|t| **t != root && has.contains(t));
        pair(root, base.copied());
        trees_paired.insert(root);
        stack.push((root, theirs.clone()));
    }
    let mut paths = PathBases {
        work_left: work,
        ..PathBases::default()
    };
    let mut walked = OidSet::default();
    while let Some((tree, against)) = stack.pop() {
        if against.is_empty() || !walked.insert(tree) {
            continue;
        }
        let Some(named) = paths.tree(objects, &tree) else {
            continue;
        };
        let against: Vec<Rc<NamedTree>> = against
            .iter()
            .filter_map(|t| paths.tree(objects, t))
            .collect();
        // Both in git's order of entries: each client tree is read once, alongside.
        let mut at = vec![0usize; against.len()];
        for (i, entry) in named.entries.iter().enumerate() {
            if entry.kind == EntryKind::Gitlink {
                continue;
            }
            let name = named.names.get(i);
            let mut theirs: Vec<ObjectId> = Vec::new();
            for (client, next) in against.iter().zip(at.iter_mut()) {
                if let Some(oid) = client.find_from(next, name, entry.kind) {
                    theirs.push(oid);
                }
            }
            // Most entries are the client's as they are: known without looking the id up.
            if theirs.contains(&entry.oid) || !is_sent(&entry.oid) {
                continue;
            }
            pair(
                entry.oid,
                theirs.iter().copied().find(|oid| has.contains(oid)),
            );
            if entry.kind == EntryKind::Tree {
                trees_paired.insert(entry.oid);
                stack.push((entry.oid, theirs));
            }
        }
    }
    // Under a bound, a client's tree not read (passed over, or under a sent tree passed over)
    // is not offered as a base either: the writer would read it, through the chain the bound
    // spared, to make the delta.
    if work.is_some() {
        found.retain(|sent, base| {
            !trees_paired.contains(sent) || base.client.is_none_or(|c| paths.trees.contains_key(&c))
        });
    }
    let read = found
        .values()
        .filter_map(|base| {
            let oid = base.client?;
            Some((oid, std::sync::Arc::from(paths.trees.get(&oid)?.content())))
        })
        .collect();
    (found, read)
}

/// Answers from a pack's bitmaps of at most this many objects list their ids to tell which
/// of them `include-tag`'s tags and the client's paths name (see [`SentIds`]).
const SENT_LISTED_MOST: usize = 4096;

/// Whether an object is at one of an answer's positions in a pack. Looked up in the pack's
/// index, each question read a page of a large index for each probe (two searches a tag for
/// `include-tag`: most of an incremental fetch's index pages at 500,000 commits, for a
/// thousand tags); an answer of at most [`SENT_LISTED_MOST`] objects lists their ids when
/// first asked, and each question is then one of a set.
struct SentIds {
    ids: std::cell::OnceCell<Option<OidSet>>,
    /// The most objects listed: [`SENT_LISTED_MOST`].
    most: usize,
}

impl Default for SentIds {
    fn default() -> Self {
        SentIds {
            ids: std::cell::OnceCell::new(),
            most: SENT_LISTED_MOST,
        }
    }
}

impl SentIds {
    /// Whether `oid` is at one of the positions `sent` of the pack `pos` is of.
    fn contains(
        &self,
        pos: &crate::bitmap::Positions,
        sent: &crate::bitmap::Bits,
        oid: &ObjectId,
    ) -> bool {
        let listed = self.ids.get_or_init(|| {
            (sent.count() <= self.most).then(|| {
                (sent.ones())
                    .take_while(|&p| p < pos.len())
                    .map(|p| pos.oid(p))
                    .collect()
            })
        });
        match listed {
            Some(ids) => ids.contains(oid),
            None => pos.of(oid).is_some_and(|p| sent.get(p)),
        }
    }
}

/// `out` with the objects at positions `sent` of the stored pack `k` whose positions `pos`
/// gives, and with `include_tag` the tags of what they and `emitted` (the objects `out`
/// lists) hold, asked of `sent_ids`.
fn with_packed(
    repo: &Repository,
    objects: &mut Objects,
    mut out: Selection,
    mut emitted: OidSet,
    (k, pos, sent): (usize, &crate::bitmap::Positions, crate::bitmap::Bits),
    (include_tag, sent_ids): (bool, SentIds),
) -> Result<Selection, Error> {
    if include_tag {
        let sent_here = |oid: &ObjectId| sent_ids.contains(pos, &sent, oid);
        include_tags(repo, objects, &mut emitted, sent_here, &mut out)?;
    }
    out.packed = Some(crate::reuse::Packed::new(k, pos.rev(), sent));
    Ok(out)
}

/// The objects of a fetch whose filter the type bitmaps answer, from a stored pack marked as
/// the closure of exactly the wants when there are no bitmaps to read (a mirror's first pack,
/// until its maintenance has written them): the wants reach every object of that pack, so
/// the answer is the pack's objects less the types the filter leaves out (the objects a want
/// names stay), each object's type read from the pack's entry headers. No walk: a
/// `blob:none` clone right after a miss took the time of reading every tree of the history.
/// `None` for any other request.
pub(crate) fn select_from_marked_pack(
    repo: &Repository,
    objects: &mut Objects,
    stored: &[crate::packs::StoredPack],
    req: &SelectRequest<'_>,
) -> Result<Option<Selection>, Error> {
    let Some(filter) = BitmapFilter::of(req.filter) else {
        return Ok(None);
    };
    if !req.grafts.is_empty() || !req.haves.is_empty() || req.wants.is_empty() {
        return Ok(None);
    }
    let wants: OidSet = req.wants.iter().copied().collect();
    let Some((k, pack)) = stored
        .iter()
        .enumerate()
        .find(|(_, p)| p.tips.as_deref() == Some(&wants))
    else {
        return Ok(None);
    };
    let rev = repo.rev_cache().get(pack, repo.object_format());
    let Some(kinds) = crate::packs::kinds(pack, &rev, repo.object_format())? else {
        return Ok(None);
    };
    let pos = crate::bitmap::Positions::new(pack, rev);
    let mut sent = crate::bitmap::Bits::with_len(kinds.len());
    for oid in named_by(objects, req.wants)? {
        if let Some(p) = pos.of(&oid) {
            sent.set(p);
        }
    }
    let mut sizes =
        (filter.blob_limit).map(|limit| (limit, SizesAt::new(pack, &pos, objects.hash())));
    for (p, kind) in kinds.into_iter().enumerate() {
        let mut keep = !filter.without.contains(&kind);
        if keep
            && kind == Kind::Blob
            && let Some((limit, sizes)) = &mut sizes
        {
            keep = sizes.of(objects, p)?.is_none_or(|size| size < *limit);
        }
        if keep {
            sent.set(p);
        }
    }
    let out = Selection::default();
    with_packed(
        repo,
        objects,
        out,
        OidSet::default(),
        (k, &pos, sent),
        (req.include_tag, SentIds::default()),
    )
    .map(Some)
}

/// Sizes of a pack's objects by pack position, for `blob:limit`: as each entry states it,
/// read at its offset (as git reads them: one entry, not its delta chain, nor the index by
/// id); looked up by id only where the entry cannot be read.
struct SizesAt<'a> {
    pack: &'a crate::packs::StoredPack,
    pos: &'a crate::bitmap::Positions,
    rev: std::sync::Arc<crate::packs::RevIndex>,
    data: Option<std::sync::Arc<crate::packs::PackData>>,
    inflate: gix_zlib::Inflate,
}

impl<'a> SizesAt<'a> {
    fn new(
        pack: &'a crate::packs::StoredPack,
        pos: &'a crate::bitmap::Positions,
        hash: gix_hash::Kind,
    ) -> Self {
        SizesAt {
            pack,
            pos,
            rev: pos.rev(),
            data: pack.data(hash).ok(),
            inflate: gix_zlib::Inflate::default(),
        }
    }

    /// The size of the object at pack position `p`, `None` if it cannot be read.
    fn of(&mut self, objects: &Objects, p: usize) -> Result<Option<u64>, Error> {
        let at = self.rev.offset(self.pack, p);
        let stated = (self.data.as_deref())
            .and_then(|data| crate::packs::stated_size(data, at, &mut self.inflate));
        Ok(match stated {
            Some(size) => Some(size),
            None => objects.header(&self.pos.oid(p))?.map(|(_, size)| size),
        })
    }
}

/// The objects `wants` name, sent whatever a filter says of their type or size: each want,
/// the tags of its chain and what they end at.
fn named_by(objects: &mut Objects, wants: &[ObjectId]) -> Result<Vec<ObjectId>, Error> {
    let mut named = Vec::new();
    for want in wants {
        named.push(*want);
        let (target, _) = peel_chain(objects, want, |tag| named.push(tag))?;
        named.push(target);
    }
    Ok(named)
}

/// Follow tags from `oid`, reporting each tag object, to the first non-tag.
fn peel_chain(
    objects: &mut Objects,
    oid: &ObjectId,
    mut on_tag: impl FnMut(ObjectId),
) -> Result<(ObjectId, Kind), Error> {
    let mut current = *oid;
    let Some((mut kind, _)) = objects.header(&current)? else {
        return Err(Error::NotOurRef { oid: *oid });
    };
    for _ in 0..64 {
        if kind != Kind::Tag {
            return Ok((current, kind));
        }
        on_tag(current);
        let (target, target_kind) = objects.tag_target(&current)?;
        current = target;
        kind = target_kind;
        if objects.header(&current)?.is_none() {
            return Err(Error::MissingObject { oid: current });
        }
    }
    Err(Error::Corrupt {
        oid: *oid,
        reason: crate::TAG_CHAIN_TOO_LONG.into(),
    })
}

/// Everything in `tree` is had by the client.
fn mark_tree_had(objects: &mut Objects, tree: ObjectId, had: &mut OidSet) -> Result<(), Error> {
    let mut stack = vec![tree];
    while let Some(t) = stack.pop() {
        if !had.insert(t) {
            continue;
        }
        for entry in objects.tree(&t)? {
            match entry.kind {
                EntryKind::Tree => stack.push(entry.oid),
                EntryKind::Blob => {
                    had.insert(entry.oid);
                }
                EntryKind::Gitlink => {}
            }
        }
    }
    Ok(())
}

struct Traversal<'a> {
    filter: Option<&'a mut FilterState>,
    /// git's SEEN flag for trees and blobs.
    seen: OidSet,
    emitted: &'a mut OidSet,
    out: &'a mut Vec<ObjectId>,
    client_has: &'a OidSet,
    /// For an incremental fetch: bases by path, found as trees are walked.
    paths: Option<&'a mut PathBases>,
}

/// A tree being walked: its entries and how far we are.
struct Frame {
    tree: ObjectId,
    entries: Vec<TreeEntry>,
    next: usize,
    given: bool,
    /// The client's trees at this tree's path, the hash of its path (none for a tree a want
    /// names: its entries' paths are not known), and its names (read when bases by path are
    /// looked for).
    against: Vec<Rc<NamedTree>>,
    path: Option<u64>,
    names: Option<Names>,
}

impl Traversal<'_> {
    /// The filter's answer; objects the client named are shown without asking.
    fn ask(
        &mut self,
        objects: &Objects,
        situation: Situation,
        oid: &ObjectId,
        given: bool,
    ) -> Result<Answer, Error> {
        match self.filter.as_deref_mut() {
            Some(filter) if !given => filter.ask(objects, situation, oid),
            _ if situation == Situation::EndTree => Ok(Answer::default()),
            _ => Ok(Answer {
                show: true,
                mark_seen: true,
                skip_tree: false,
            }),
        }
    }

    fn apply(&mut self, oid: ObjectId, answer: Answer) {
        if answer.mark_seen {
            self.seen.insert(oid);
        }
        if answer.show && self.emitted.insert(oid) {
            self.out.push(oid);
        }
    }

    fn skip(&self, oid: &ObjectId) -> bool {
        self.client_has.contains(oid) || self.seen.contains(oid)
    }

    fn blob(&mut self, objects: &Objects, oid: ObjectId, given: bool) -> Result<(), Error> {
        if self.skip(&oid) {
            return Ok(());
        }
        let answer = self.ask(objects, Situation::Blob, &oid, given)?;
        self.apply(oid, answer);
        Ok(())
    }

    /// Note the objects at the path of `oid` (hashed as `path`), if it is sent: the one sent
    /// before it there, and `client`, the client's.
    fn path_base(&mut self, oid: ObjectId, path: u64, client: Option<ObjectId>) {
        if let Some(paths) = self.paths.as_deref_mut()
            && self.emitted.contains(&oid)
        {
            let sent = paths.last.insert(path, oid).filter(|sent| *sent != oid);
            if sent.is_some() || client.is_some() {
                paths.found.entry(oid).or_insert(PathBase { sent, client });
            }
        }
    }

    /// Begin a tree (`against`: the client's trees at its path, hashed as `path`); returns
    /// the frame to walk, if its contents are to be walked.
    fn begin(
        &mut self,
        objects: &mut Objects,
        tree: ObjectId,
        given: bool,
        against: Vec<Rc<NamedTree>>,
        path: Option<u64>,
    ) -> Result<Option<Frame>, Error> {
        if self.skip(&tree) {
            return Ok(None);
        }
        let answer = self.ask(objects, Situation::BeginTree, &tree, given)?;
        self.apply(tree, answer);
        let (entries, names) = if answer.skip_tree {
            (Vec::new(), None)
        } else if self.paths.is_none() || path.is_none() {
            (objects.tree(&tree)?, None)
        } else {
            let named = objects.named_tree(&tree)?;
            (named.entries, Some(named.names))
        };
        Ok(Some(Frame {
            tree,
            entries,
            next: 0,
            given,
            against,
            path,
            names,
        }))
    }

    /// Walk `root` depth first in entry order, as git's list-objects does (`against`: the
    /// client's trees at the root, hashed as `path`, for bases by path).
    fn tree(
        &mut self,
        objects: &mut Objects,
        root: ObjectId,
        given: bool,
        against: Vec<Rc<NamedTree>>,
        path: Option<u64>,
    ) -> Result<(), Error> {
        let mut stack: Vec<Frame> = self
            .begin(objects, root, given, against, path)?
            .into_iter()
            .collect();
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.get(frame.next).copied() else {
                let frame = stack.pop().expect("non-empty");
                let answer = self.ask(objects, Situation::EndTree, &frame.tree, frame.given)?;
                self.apply(frame.tree, answer);
                continue;
            };
            let at = frame.next;
            frame.next += 1;
            if entry.kind == EntryKind::Gitlink || self.skip(&entry.oid) {
                continue;
            }
            // The path, and the client's objects there of this entry's kind.
            let mut path = None;
            let mut found: Vec<ObjectId> = Vec::new();
            if let (Some(names), Some(parent)) = (&frame.names, frame.path) {
                let name = names.get(at);
                path = Some(child_path(parent, name, entry.kind));
                for e in frame
                    .against
                    .iter()
                    .filter_map(|t| t.find(name, entry.kind))
                {
                    if e.oid != entry.oid && !found.contains(&e.oid) {
                        found.push(e.oid);
                    }
                }
            }
            match entry.kind {
                EntryKind::Tree => {
                    let mut against = Vec::new();
                    if let Some(paths) = self.paths.as_deref_mut() {
                        against.extend(found.iter().filter_map(|t| paths.tree(objects, t)));
                    }
                    if let Some(child) = self.begin(objects, entry.oid, false, against, path)? {
                        stack.push(child);
                    }
                }
                EntryKind::Blob => self.blob(objects, entry.oid, false)?,
                EntryKind::Gitlink => {}
            }
            if let Some(path) = path {
                self.path_base(entry.oid, path, found.first().copied());
            }
        }
        Ok(())
    }
}

/// Add annotated tags (under `refs/tags/`) whose fully peeled target is sent, with the tags of
/// their chain.
fn include_tags(
    repo: &Repository,
    objects: &mut Objects,
    emitted: &mut OidSet,
    also_sent: impl Fn(&ObjectId) -> bool,
    out: &mut Selection,
) -> Result<(), Error> {
    let sent = |oid: &ObjectId, emitted: &OidSet| emitted.contains(oid) || also_sent(oid);
    for r in repo.refs()? {
        let Some(oid) = r.oid else { continue };
        // What the ref store says a tag peels to: most tags point at objects not sent, and
        // are passed over without reading them or looking them up.
        if !r.name.starts_with(b"refs/tags/")
            || sent(&oid, emitted)
            || r.peeled.is_some_and(|peeled| !sent(&peeled, emitted))
            || out.client_has.contains(&oid)
        {
            continue;
        }
        match objects.header(&oid)? {
            Some((Kind::Tag, _)) => {}
            Some(_) => continue,
            None => {
                out.unread_tags = true;
                continue;
            }
        }
        let mut chain = Vec::new();
        let (target, _) = peel_chain(objects, &oid, |tag| chain.push(tag))?;
        if sent(&target, emitted) {
            for tag in chain {
                if !also_sent(&tag) && emitted.insert(tag) {
                    out.tags.push(tag);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{EntryKind, Has, OidSet, PathBases, ROOT_PATH, SelectRequest, SentIds, child_path};

    /// Whether an object is sent is answered alike from the listed ids and from the pack's
    /// index, for every object of the pack and for ids it does not hold.
    #[test]
    fn sent_objects_listed_are_those_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        let spec = gitcache_testkit::repo::RepoSpec::small(73);
        gitcache_testkit::repo::generate(&path, &spec).unwrap();
        gitcache_testkit::git::git_stdout(&path, &["repack", "-adq"]);
        let repo = crate::Repository::open(&path).unwrap();
        let pack = &repo.stored_packs().unwrap()[0];
        let pos =
            crate::bitmap::Positions::new(pack, repo.rev_cache().get(pack, repo.object_format()));
        let mut sent = crate::bitmap::Bits::with_len(pos.len());
        for p in (0..pos.len()).step_by(3) {
            sent.set(p);
        }
        let listed = SentIds::default();
        let looked_up = SentIds {
            most: 0,
            ..SentIds::default()
        };
        let mut ids: Vec<gix_hash::ObjectId> = (0..pos.len()).map(|p| pos.oid(p)).collect();
        ids.push(
            gix_hash::ObjectId::from_hex(b"0123456789012345678901234567890123456789").unwrap(),
        );
        for (p, oid) in ids.iter().enumerate() {
            let expected = p < pos.len() && p % 3 == 0;
            assert_eq!(listed.contains(&pos, &sent, oid), expected, "{p}");
            assert_eq!(looked_up.contains(&pos, &sent, oid), expected, "{p}");
        }
        assert!(matches!(listed.ids.get(), Some(Some(_))), "listed");
        assert!(matches!(looked_up.ids.get(), Some(None)), "looked up");
    }
    use gix_hash::ObjectId;

    /// A new work tree (`w` in a new folder) on branch `main`, and the folder.
    fn work_tree() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        gitcache_testkit::git::git_stdout(
            dir.path(),
            &["init", "-q", "-b", "main", work.to_str().unwrap()],
        );
        (dir, work)
    }

    /// A walk of many commits keeps more delta bases while it reads their trees, and the
    /// handle's own cache after; a walk of a few keeps the handle's own throughout. What is
    /// selected is the same either way (the differential tests compare it with git's).
    #[test]
    fn a_walk_of_many_commits_keeps_more_bases_while_it_reads() {
        let (_dir, work) = work_tree();
        let git = |at: &std::path::Path, args: &[&str]| gitcache_testkit::git::git_stdout(at, args);
        for round in 0..40 {
            std::fs::write(work.join("file"), format!("round {round}\n")).unwrap();
            gitcache_testkit::git::commit_all(&work, &format!("round {round}"));
        }
        let repo = crate::Repository::open(work.join(".git")).unwrap();
        let id = |rev: &str| ObjectId::from_hex(git(&work, &["rev-parse", rev]).trim().as_bytes());
        let tip = id("main").unwrap();
        let grafts = OidSet::default();
        for (have, widened) in [("main~3", 0), ("main~30", 1)] {
            let (wants, haves) = ([tip], [id(have).unwrap()]);
            let req = SelectRequest {
                wants: &wants,
                haves: &haves,
                grafts: &grafts,
                filter: None,
                include_tag: false,
                by_path: false,
                thin: false,
            };
            let mut objects = repo.objects();
            let own = objects.bases_bytes();
            let selected = super::select(&repo, &mut objects, &req).unwrap();
            assert_eq!(selected.commits.len(), have[5..].parse::<usize>().unwrap());
            assert_eq!(objects.widened.get(), widened, "{have}");
            assert_eq!(objects.bases_bytes(), own, "{have}: narrowed again");
        }
    }

    /// The tip's version of a directory, stored whole, is paired with the client's version
    /// at its path; when reading the client's version (91 links deep) would make more than
    /// the work allowed, it is neither read nor offered as a base.
    #[test]
    fn a_clients_tree_too_deep_for_the_work_allowed_is_no_base() {
        let (dir, work) = work_tree();
        let git = |at: &std::path::Path, args: &[&str]| gitcache_testkit::git::git_stdout(at, args);
        std::fs::create_dir(work.join("d")).unwrap();
        for i in 0..300 {
            std::fs::write(work.join(format!("d/{i}.txt")), format!("file {i}\n")).unwrap();
        }
        gitcache_testkit::git::commit_all(&work, "start");
        for round in 0..100 {
            std::fs::write(
                work.join(format!("d/{round}.txt")),
                format!("round {round}\n"),
            )
            .unwrap();
            gitcache_testkit::git::commit_all(&work, &format!("round {round}"));
        }
        let path = dir.path().join("r.git");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        );
        // The oldest version deep in a chain on the newest (one thread: the same layout every
        // time; with a window of one it would be a delta on the newest itself).
        let repack = [
            "-c",
            "pack.threads=1",
            "repack",
            "-adfq",
            "--window=2",
            "--depth=100",
        ];
        git(&path, &repack);
        let id = |rev: &str| ObjectId::from_hex(git(&path, &["rev-parse", rev]).trim().as_bytes());
        let (tip, client) = (id("main").unwrap(), id("main~99").unwrap());
        let (tip_dir, client_dir) = (id("main:d").unwrap(), id("main~99:d").unwrap());
        let (tip_root, client_root) = (id("main^{tree}").unwrap(), id("main~99^{tree}").unwrap());
        let repo = crate::Repository::open(&path).unwrap();
        repo.stored_packs().unwrap();
        let grafts = OidSet::default();
        let (wants, haves) = ([tip], [client]);
        let req = SelectRequest {
            wants: &wants,
            haves: &haves,
            grafts: &grafts,
            filter: None,
            include_tag: false,
            by_path: true,
            thin: true,
        };
        let is_sent = |oid: &ObjectId| [tip_root, tip_dir].contains(oid);
        let has = Has {
            set: [client_root, client_dir].into_iter().collect(),
            ..Has::default()
        };
        let mut objects = repo.objects();
        objects.keep_trees(
            std::sync::Arc::new(crate::trees::TreeCache::new(1 << 20)),
            0,
        );
        let deep = objects.read_cost(&client_dir);
        assert!(deep > 50 * objects.read_cost(&tip_dir), "{deep}");

        let (found, read) = super::client_path_bases(&mut objects, &req, is_sent, &has, None);
        assert_eq!(found[&tip_dir].client, Some(client_dir), "no bound: paired");
        assert!(read.contains_key(&client_dir));
        let (found, read) =
            super::client_path_bases(&mut objects, &req, is_sent, &has, Some(deep - 1));
        assert_eq!(
            found.get(&tip_dir).and_then(|b| b.client),
            None,
            "over the bound"
        );
        assert!(!read.contains_key(&client_dir));
        assert_eq!(
            found[&tip_root].client,
            Some(client_root),
            "the roots within it"
        );
        // Room for the roots alone: the tip's version is passed over, and with it the client's.
        let roots = objects.read_cost(&tip_root) + objects.read_cost(&client_root);
        let (found, read) =
            super::client_path_bases(&mut objects, &req, is_sent, &has, Some(roots));
        assert_eq!(
            found.get(&tip_dir).and_then(|b| b.client),
            None,
            "under one passed over"
        );
        assert!(!read.contains_key(&client_dir));
        assert_eq!(found[&tip_root].client, Some(client_root));
    }

    /// A tree whose read would make more than the work left is not read, nor costed again;
    /// one within it is (to the last byte), and its cost is taken off; one read already
    /// costs nothing more.
    #[test]
    fn trees_are_read_for_bases_by_path_within_the_work_left() {
        let (_dir, repo, roots) = crate::objects::tests::one_file_changed(2);
        repo.stored_packs().unwrap();
        let mut objects = repo.objects();
        // Nothing kept by the handle, which would cost nothing.
        let kept = std::sync::Arc::new(crate::trees::TreeCache::new(1 << 20));
        objects.keep_trees(std::sync::Arc::clone(&kept), 0);
        // The older version is a delta on the newer one: two links' worth.
        let (older, newer) = (objects.read_cost(&roots[0]), objects.read_cost(&roots[1]));
        assert!(older > newer && newer > 0, "{older}, {newer}");
        let mut paths = PathBases {
            work_left: Some(newer + older - 1),
            ..PathBases::default()
        };
        assert!(paths.tree(&mut objects, &roots[1]).is_some(), "within it");
        assert_eq!(paths.work_left, Some(older - 1), "its cost taken off");
        assert!(
            paths.tree(&mut objects, &roots[0]).is_none(),
            "over the work left"
        );
        assert!(paths.passed_over.contains(&roots[0]));
        assert!(paths.tree(&mut objects, &roots[1]).is_some());
        assert_eq!(paths.work_left, Some(older - 1), "read once");
        // To the last byte.
        let mut exact = PathBases {
            work_left: Some(older),
            ..PathBases::default()
        };
        assert!(exact.tree(&mut objects, &roots[0]).is_some());
        assert_eq!(exact.work_left, Some(0));
        // Without a bound (a walked answer's), it is read.
        let mut unbounded = PathBases::default();
        assert!(unbounded.tree(&mut repo.objects(), &roots[0]).is_some());
        assert_eq!(kept.held_bytes(), 0);
    }

    #[test]
    fn a_path_hash_tells_name_parent_and_kind_apart() {
        let path = |names: &[(&[u8], EntryKind)]| {
            names.iter().fold(ROOT_PATH, |parent, (name, kind)| {
                child_path(parent, name, *kind)
            })
        };
        let (tree, blob) = (EntryKind::Tree, EntryKind::Blob);
        let d = path(&[(b"d", tree)]);
        assert_eq!(d, path(&[(b"d", tree)]));
        assert_ne!(
            d,
            path(&[(b"d", blob)]),
            "a directory and a file of one name"
        );
        assert_ne!(path(&[(b"d", tree), (b"a", blob)]), path(&[(b"a", blob)]));
        assert_ne!(
            path(&[(b"a", tree), (b"b", blob)]),
            path(&[(b"ab", blob)]),
            "a/b and ab"
        );
        assert_ne!(
            path(&[(b"a", tree), (b"b", tree), (b"c", blob)]),
            path(&[(b"b", tree), (b"a", tree), (b"c", blob)]),
            "a/b/c and b/a/c"
        );
    }
}
