//! A pack's objects found while it arrives, before it is indexed: each entry stored whole, and
//! each delta whose base was decoded a little earlier, decoded and hashed as it goes by; an
//! index of those alone then lets a [`Repository`](crate::Repository) answer from the pack
//! whatever needs only them.
//!
//! `git pack-objects` writes a tip's trees and blobs early and mostly whole, and a delta's
//! base right before it, so a shallow clone of the tips usually finds every object it needs
//! here, long before indexing the whole pack (which decodes every delta chain) ends. A long
//! history's trees are the exception: chains of small deltas whose bases were written many
//! megabytes before, which a scan for tips reads back from the pack written so far
//! ([`Tips::reading_back`]). What is not found is not guessed at: an answer needing it fails
//! to plan, and waits for the index.
//!
//! ```
//! use gitcache_pack::early::{Limits, scan};
//! use std::sync::atomic::AtomicBool;
//!
//! // A pack of one blob, "hello\n", as `git pack-objects` writes it; then its trailer (the
//! // scan leaves checking it to whoever writes the pack down).
//! let mut pack = vec![
//!     b'P', b'A', b'C', b'K', 0, 0, 0, 2, 0, 0, 0, 1, 0x36, 0x78, 0x9c, 0xcb, 0x48, 0xcd,
//!     0xc9, 0xc9, 0xe7, 0x02, 0x00, 0x08, 0x4b, 0x02, 0x1f,
//! ];
//! pack.extend([0; 20]);
//! let mut read = &pack[..];
//! let found = scan(&mut read, gix_hash::Kind::Sha1, Limits::default(), &AtomicBool::new(false))?;
//! assert_eq!((found.entries(), found.len()), (1, 1));
//! let blob = gix_hash::ObjectId::from_hex(b"ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
//! assert!(found.contains(&blob));
//! # Ok::<(), gitcache_pack::Error>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gix_hash::ObjectId;
use gix_pack::data::entry::Header;

use crate::incoming::Told;
use crate::{Error, PackEntry};

/// Sets and maps of ids named by what arrives, hashed under a secret key: a tree or a commit
/// may name any ids, made alike (unlike the ids of a mirror's objects, each the hash of an
/// object in it) to fall together under a hash of their own bytes.
type IdSet = std::collections::HashSet<ObjectId, Keyed>;
type IdMap<V> = HashMap<ObjectId, V, Keyed>;

/// `foldhash` (as fast as hashing an id by its bytes here, measured), keyed (see
/// [`crate::ids::keyed_state`]).
#[derive(Clone)]
struct Keyed(foldhash::fast::SeedableRandomState);

impl Default for Keyed {
    fn default() -> Self {
        Keyed(crate::ids::keyed_state())
    }
}

impl std::hash::BuildHasher for Keyed {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// How much a [`scan`] keeps and decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of decoded objects kept for the deltas that follow them (the oldest let go
    /// first).
    pub cache_bytes: usize,
    /// The largest object (or delta) decoded; larger ones are passed over (a blob stored
    /// whole is hashed as it goes by instead, whatever its size).
    pub object_bytes: u64,
    /// Bytes inflated and decoded for each byte of the pack read so far, beyond
    /// `cache_bytes`: past it, nothing more is (a hostile pack of small deltas each copying
    /// a large base would otherwise cost far more than its size). A pack's trees decode to
    /// ten times its size and more (a tree's delta of a few bytes makes the whole tree), and
    /// up to eighty times in stretches of them. Objects read back count too
    /// ([`Tips::reading_back`]).
    pub decoded_per_byte: u64,
    /// The most objects found: past it, the scan gives up (each costs about 160 bytes with
    /// the closures followed).
    pub most_found: usize,
    /// Up to this many bytes of entries found, [`Found::write_pack`] copies them all,
    /// closures or not: a small copy also answers what needs more than the closures followed
    /// (a deeper shallow clone, a filter), for a fraction of the time the pack takes to
    /// arrive.
    pub copy_all_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cache_bytes: 64 << 20,
            object_bytes: 8 << 20,
            decoded_per_byte: 64,
            most_found: 2 << 20,
            copy_all_bytes: 32 << 20,
        }
    }
}

/// What each object kept costs beside its bytes (its entry in the map and the queue, its
/// allocation): counted against [`Limits::cache_bytes`], so that many tiny objects are
/// bounded as much as a few large ones.
const KEPT_OVERHEAD: usize = 96;

/// The objects a [`scan`] found, with the pack's checksum and entry count.
#[derive(Debug, Clone)]
pub struct Found {
    hash: gix_hash::Kind,
    /// Sorted by offset, each once: the entries of the objects found.
    pub(crate) objects: Vec<FoundEntry>,
    /// The trailer, once the pack was read to its end ([`scan_for`] may stop before).
    checksum: Option<ObjectId>,
    entries: u32,
    passed: Passed,
    /// Objects read back (see [`Found::read_back`]).
    read_back: u64,
    /// Blobs found told of (see [`Found::told`]).
    told: u64,
    /// What the closures followed are made of, when the scan followed [`Tips`] and found
    /// more than [`Limits::copy_all_bytes`] of entries (see [`write_pack`](Found::write_pack)).
    closure: Option<std::sync::Arc<IdSet>>,
}

/// What [`Found::write_pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The new pack's checksum.
    pub checksum: ObjectId,
    /// How many objects it holds.
    pub objects: usize,
    /// The commits found that the copy does not hold (it holds the closures alone): a have
    /// among them would be taken for one the repository of the copy lacks, neither
    /// acknowledged nor left out of an answer, where the mirror will hold it.
    pub commits_left_out: LeftOut,
}

/// Commits a copy of what was found left out (see [`Written::commits_left_out`]), by the
/// first eight bytes of their ids: eight bytes each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftOut(Vec<u64>);

impl FromIterator<ObjectId> for LeftOut {
    fn from_iter<I: IntoIterator<Item = ObjectId>>(ids: I) -> LeftOut {
        let mut heads: Vec<u64> = (ids.into_iter())
            .map(|id| crate::closed::head(id.as_bytes()))
            .collect();
        heads.sort_unstable();
        LeftOut(heads)
    }
}

impl LeftOut {
    /// Whether `id` may be one of them: never `false` of one that is, and `true` of one that
    /// is not only when eight bytes of their ids are the same.
    pub fn may_hold(&self, id: &ObjectId) -> bool {
        self.0
            .binary_search(&crate::closed::head(id.as_bytes()))
            .is_ok()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Entries a [`scan`] read without decoding them, by why: their objects are not found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passed {
    /// Past [`Limits::decoded_per_byte`].
    pub budget: u64,
    /// Deltas whose base was not decoded, or no longer kept.
    pub base_gone: u64,
    /// Objects or deltas larger than [`Limits::object_bytes`] (other than blobs stored
    /// whole, hashed as they go by).
    pub large: u64,
    /// Deltas naming their base by id (left to the indexing), and deltas that did not
    /// apply (the indexing's to refuse).
    pub other: u64,
    /// Trees stored whole, and deltas on a tree kept, read while [`Tips`] awaited no tree:
    /// every commit wanted was found, and every tree of their closures. (A delta on a tree
    /// read past so is counted in `base_gone`.)
    pub unawaited: u64,
}

/// What fetches waiting for a pack's objects want of it: for [`Tips::wanting`] and
/// [`Tips::asking`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// Commits (or tags of them) whose closures at depth one are followed.
    pub tips: Vec<ObjectId>,
    /// Commits (or tags of them) whose history is followed too, commit by commit, down to
    /// `haves`: what an incremental fetch needs, each commit with its closure at depth one.
    /// Walks take at most [`MOST_WALKED`] commits in all. A commit's parents are known when
    /// it is found after a walk took it (`git pack-objects` writes a commit before its
    /// parents), or when it is among the first [`MOST_PARENTS_AHEAD`] commits found (the
    /// newest: a walk asked for once they went by goes through them), with [`MOST_PARENTS`]
    /// parents at most: a walk stops at any other.
    pub walked: Vec<ObjectId>,
    /// Commits (or tags of them) a client has: a walk that reaches one stops there. Each
    /// found once it was asked for (or before, among the commits whose parents are kept
    /// ahead, see [`MOST_PARENTS_AHEAD`]), reached or not, has the trees of its closure
    /// followed (not the blobs: those are the client's), and so have the commits up to
    /// [`BELOW_HAVES`] generations below it, within three quarters of the walks' room: what
    /// the client is not sent is told from those trees, and the walk of an answer goes a few
    /// commits past its haves. One not found is not waited for (a client's own commits are
    /// in no pack of the upstream's).
    pub haves: Vec<ObjectId>,
    /// Commits (or tags of them) whose history is followed to a depth, each with it (1: the
    /// commit alone, as in `tips`): what a shallow clone of that depth needs, each commit
    /// within it with its closure at depth one. They take their commits from the walks' room
    /// ([`MOST_WALKED`]), half of it at most, leaving its last quarter to walks from wants, as
    /// walks below haves do; one there is no room for is not followed (an answer that needs
    /// it waits for the mirror). A commit's parents are known as for walks.
    pub deep: Vec<(ObjectId, u32)>,
}

impl From<Vec<ObjectId>> for Wants {
    /// Tips alone: nothing walked.
    fn from(tips: Vec<ObjectId>) -> Wants {
        Wants {
            tips,
            ..Wants::default()
        }
    }
}

/// The most commits walks take, in all (see [`Wants`]): the wants walked, the commits
/// between them and the haves, the haves and the commits below them. An incremental fetch
/// of a longer history waits for the index instead.
pub const MOST_WALKED: usize = 1024;

/// The most parents of a commit a walk goes through (a commit with more stops it).
pub const MOST_PARENTS: usize = 64;

/// The most commits found before any walk took them whose parents are kept (the first
/// found, the newest: `git pack-objects` writes commits newest first): a walk asked for once
/// they went by (a fetch that started waiting later) goes through them.
pub const MOST_PARENTS_AHEAD: usize = 4096;

/// How many generations below a have a walk goes on (see [`Wants::haves`]): an answer's
/// walk takes five commits after its last wanted one, as git's does.
pub const BELOW_HAVES: u8 = 8;

/// The most haves a [`Tips`] stops walks at.
const MOST_HAVES: usize = 256;

/// Commits whose closures at depth one (each commit, its tree and everything in it) are
/// followed as a pack's objects are found, in pack order: [`scan_for`] stops once all of
/// them are found. `git pack-objects` writes commits first, then each tip's trees and
/// blobs, a tree before what is in it (a delta's base before the delta): a shallow clone's
/// objects come in the first part of the pack.
///
/// Commits wanted once the scan has begun are taken from [`asking`](Tips::asking) now and
/// then, and before the scan stops. A tag wanted is followed to what it tags; an id found
/// to be neither a commit nor a tag is not followed. Each tree is followed once, however
/// many trees name it. Which objects were found (and copied, see [`Found::write_pack`]), not
/// this, decides what can be answered.
///
/// A commit wanted that the pack lacks holds the scan to the pack's end; what was found
/// before, once the closures of the commits found are, can be had meanwhile
/// ([`meanwhile`](Tips::meanwhile)).
pub struct Tips {
    /// Commits not found yet.
    commits: IdSet,
    /// Every commit ever wanted.
    wanted: IdSet,
    /// Those of `wanted` whose closures are followed whole (see [`Tips::want`]).
    whole_wanted: IdSet,
    /// Trees and blobs needed and not found yet.
    pending: IdSet,
    /// Those of `pending` named as trees.
    pending_trees: IdSet,
    /// Those of `pending_trees` to be followed whole (their blobs too); the others are
    /// followed for their subtrees alone.
    pending_whole: IdSet,
    /// Trees needed once trees were read past (see [`Tips::trees_settled`]), not found yet:
    /// followed should they come before the scan ends, not waited for (one read past does
    /// not come again); so are their subtrees.
    hoped: IdSet,
    /// Those of `hoped` to be followed whole.
    hoped_whole: IdSet,
    /// Trees were read past, undecoded.
    trees_read_past: bool,
    /// Every tree and blob ever needed (`None` past [`Limits::most_found`]): with the
    /// commits and tags wanted, and the tags found, what the closures are made of.
    needed: Option<IdSet>,
    /// Everything found so far, with what a later need of it takes.
    seen: IdMap<Seen>,
    /// Where the trees needed after they were found are (a tree pulled ahead as the base of
    /// a delta written earlier, or a tree of a commit wanted late), to follow from the
    /// objects kept: whole or not, and whether it was followed for its subtrees before.
    revisit: Vec<(ObjectId, u64, bool, bool)>,
    /// A tree needed after it was found could not be read again, or more objects were
    /// needed than are followed: the closure cannot be told complete.
    lost: bool,
    /// The most objects waited for at once (see [`Limits::most_found`]).
    most_pending: usize,
    /// Where commits wanted later come from.
    more: Option<Box<dyn FnMut() -> Wants + Send>>,
    /// Commits wanted and found (as commits) so far.
    commits_found: usize,
    /// Given what was found so far, once (see [`meanwhile`](Tips::meanwhile)).
    meanwhile: Option<Box<dyn FnOnce(Found) + Send>>,
    /// Reads what was written of the pack (see [`reading_back`](Tips::reading_back)).
    read_back: Option<Box<ReadAt>>,
    /// What the pack's receiving learned of blobs stored whole (see [`told_by`](Tips::told_by)).
    tell: Option<Box<TellAt>>,
    /// Trees followed.
    pub(crate) followed: usize,
    /// Commits whose parents are followed (see [`Wants::walked`]), each with how many
    /// generations below a have it is (`None`: above every have).
    walks: IdMap<Option<u8>>,
    /// Commits clients have (see [`Wants::haves`]).
    haves: IdSet,
    /// The parents of the commits walks took, and of the haves, found since, and of the
    /// first commits found (see [`MOST_PARENTS_AHEAD`]).
    parents: IdMap<Box<[ObjectId]>>,
    /// Commits walks may still add (see [`MOST_WALKED`]).
    walk_left: usize,
    /// Commits no walk took yet whose parents may still be kept (see
    /// [`MOST_PARENTS_AHEAD`]).
    ahead_left: usize,
    /// What walks below haves leave of `walk_left` for walks from wants: a quarter of the
    /// room (the haves of many fetches, each walked a few generations down, would otherwise
    /// take it all before a want's walk).
    walk_reserve: usize,
    /// Told each time a walk from a want is refused a commit for want of room (see
    /// [`when_walks_run_out`](Tips::when_walks_run_out)).
    ran_out: Option<Box<dyn FnMut() + Send>>,
    /// Commits walks from wants were refused for want of room (the first
    /// [`MOST_REFUSED`]).
    refused: IdSet,
    /// Where the walks are shared (see [`sharing_walks`](Tips::sharing_walks)).
    shared: Option<std::sync::Arc<Walks>>,
    /// Walks were refused a commit, or went on once one was, since `ran_out` was last
    /// called (see [`tell`](Tips::tell)).
    untold: bool,
    /// Walks from wants asked for once the want was found (see [`walked_late`](Tips::walked_late)).
    walked_late: usize,
    /// Commits followed to a depth (see [`Wants::deep`]), each with the most generations
    /// followed from it (itself included).
    deep: IdMap<u32>,
}

/// The most commits refused to walks a [`Tips`] remembers (and tells of).
const MOST_REFUSED: usize = 1024;

/// What the walks of a [`Tips`] went through, shared while it reads (see
/// [`Tips::sharing_walks`]): the parents of the commits walked, once found, and the commits
/// walks from wants had no room for. From those, whether the history of a fetch is cut
/// before its haves ([`cut`](Walks::cut)).
#[derive(Debug, Default)]
pub struct Walks(std::sync::Mutex<WalkState>);

#[derive(Debug, Default)]
struct WalkState {
    /// Commits (and tags) walked, and found: their parents (a tag's target).
    parents: IdMap<Box<[ObjectId]>>,
    /// Commits a walk from a want had no room for.
    refused: IdSet,
    /// How many times `parents` or `refused` grew.
    changes: u64,
}

impl Walks {
    /// Walks that went through `parents` (each commit with its parents) and were refused
    /// `refused`: what a [`Tips`] sharing them records as it reads.
    pub fn new(
        parents: impl IntoIterator<Item = (ObjectId, Vec<ObjectId>)>,
        refused: impl IntoIterator<Item = ObjectId>,
    ) -> Walks {
        Walks(std::sync::Mutex::new(WalkState {
            parents: (parents.into_iter())
                .map(|(id, parents)| (id, parents.into_boxed_slice()))
                .collect(),
            refused: refused.into_iter().collect(),
            changes: 0,
        }))
    }

    /// How many commits walks were refused, as recorded.
    pub(crate) fn refused_count(&self) -> usize {
        self.state().refused.len()
    }

    /// How many times what the walks went through grew: [`cut`](Self::cut) says the same
    /// until this changes.
    pub fn changes(&self) -> u64 {
        self.state().changes
    }

    /// Whether the history from `wants` down to `haves`, as walked so far, reaches a commit
    /// a walk had no room for (a have too, whose trees are then not followed), not counting
    /// those below the haves: then the closures followed cannot answer a fetch of `wants`
    /// that has `haves`, whatever is found later. `false` while that cannot be told yet, or
    /// where the walks went down to the haves. It costs a walk of what was recorded (at
    /// most [`MOST_WALKED`] commits and the haves of the [`Tips`], with their parents) and a
    /// set of `haves`: the caller bounds those.
    pub fn cut(&self, wants: &[ObjectId], haves: &[ObjectId]) -> bool {
        let state = self.state();
        if state.refused.is_empty() {
            return false;
        }
        // What the client has as far as the walks know: a walk from a want may go round a
        // have (a merge of a branch from below it) and on below it.
        let mut had: IdSet = IdSet::default();
        let mut stack = haves.to_vec();
        while let Some(id) = stack.pop() {
            if had.insert(id)
                && let Some(parents) = state.parents.get(&id)
            {
                stack.extend(parents.iter().copied());
            }
        }
        let is_have: std::collections::HashSet<&ObjectId> = haves.iter().collect();
        let mut seen = IdSet::default();
        let mut stack = wants.to_vec();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if state.refused.contains(&id) && (is_have.contains(&id) || !had.contains(&id)) {
                return true;
            }
            if had.contains(&id) {
                continue;
            }
            if let Some(parents) = state.parents.get(&id) {
                stack.extend(parents.iter().copied());
            }
        }
        false
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WalkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What [`Tips`] remembers of an object found.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// A tree not followed yet, and where its entry is.
    Tree(u64),
    /// A tree followed for its subtrees alone (in the closure of a commit a walk took below
    /// a have), and where its entry is: followed whole should it be needed so.
    Listed(u64),
    /// A commit, and its tree.
    Commit(ObjectId),
    /// A tag, and what it tags.
    Tag(ObjectId),
    /// Anything else, or a tree followed already.
    Done,
}

impl std::fmt::Debug for Tips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tips")
            .field("commits", &self.commits.len())
            .field("pending", &self.pending.len())
            .field("seen", &self.seen.len())
            .field("lost", &self.lost)
            .field("commits_found", &self.commits_found)
            .field("followed", &self.followed)
            .field("walked", &self.walks.len())
            .field("refused", &self.refused.len())
            .finish_non_exhaustive()
    }
}

impl Default for Tips {
    /// Nothing to follow (see [`asking`](Tips::asking)).
    fn default() -> Self {
        Tips::new([])
    }
}

/// Entries a [`scan_for`] reads between two askings of [`Tips::asking`].
const ASK_EVERY: usize = 1024;

impl Tips {
    /// Follow the closures of `commits`.
    pub fn new(commits: impl IntoIterator<Item = ObjectId>) -> Tips {
        let commits: IdSet = commits.into_iter().collect();
        Tips {
            wanted: commits.clone(),
            whole_wanted: commits.clone(),
            commits,
            pending: IdSet::default(),
            pending_trees: IdSet::default(),
            pending_whole: IdSet::default(),
            hoped: IdSet::default(),
            hoped_whole: IdSet::default(),
            trees_read_past: false,
            needed: Some(IdSet::default()),
            seen: Default::default(),
            revisit: Vec::new(),
            lost: false,
            most_pending: Limits::default().most_found,
            more: None,
            commits_found: 0,
            meanwhile: None,
            read_back: None,
            tell: None,
            followed: 0,
            walks: Default::default(),
            haves: IdSet::default(),
            parents: Default::default(),
            walk_left: MOST_WALKED,
            ahead_left: MOST_PARENTS_AHEAD,
            walk_reserve: MOST_WALKED / 4,
            ran_out: None,
            refused: IdSet::default(),
            shared: None,
            untold: false,
            walked_late: 0,
            deep: IdMap::default(),
        }
    }

    /// Also follow what `wants` says (its tips, its walks), from now on.
    pub fn wanting(mut self, wants: Wants) -> Tips {
        self.add(wants);
        self
    }

    /// Also follow what `more` returns (all wanted so far, or what was wanted since it was
    /// last asked: commits, or [`Wants`] with walks and haves), asked every thousand entries
    /// or so and before the scan stops. One
    /// already gone by is followed from its tree on; a tree of it gone by and no longer
    /// kept is not waited for (it may come again later in the pack), nor, once trees were
    /// read past undecoded, a tree of it not found yet (followed should it come before the
    /// scan ends).
    pub fn asking<W: Into<Wants>>(mut self, mut more: impl FnMut() -> W + Send + 'static) -> Tips {
        self.more = Some(Box::new(move || more().into()));
        self
    }

    /// Give `post` what was found so far, once, should the scan go on only for commits wanted
    /// and not found yet, or for closures it lost (see [`complete`](Self::complete)), with
    /// nothing else waited for: an id the pack lacks (a client may want anything) reads it
    /// to its end, and the closures found meanwhile need not wait for that. The scan goes
    /// on. What was found is all a closure can be answered from; it is not told complete.
    pub fn meanwhile(mut self, post: impl FnOnce(Found) + Send + 'static) -> Tips {
        self.meanwhile = Some(Box::new(post));
        self
    }

    /// Read the bases of trees no longer kept again with `read_at` (as
    /// `std::os::unix::fs::FileExt::read_at` reads a file), from the pack as it was written so
    /// far, while a tree is awaited: a long history's trees are deltas in chains whose bases
    /// lie many megabytes behind them, long gone from the objects kept (at 200,000 commits,
    /// nearly all of the tip's). Each base read again is kept, so a chain is read again once.
    /// A blob [told of](Self::told_by) that a delta rests on is read back so too.
    pub fn reading_back(
        mut self,
        read_at: impl Fn(&mut [u8], u64) -> std::io::Result<usize> + Send + 'static,
    ) -> Tips {
        self.read_back = Some(Box::new(read_at));
        self
    }

    /// Take the ids of blobs stored whole from `tell`, told an entry's offset, instead of
    /// inflating and hashing them (see [`Told`]): the pack's receiving
    /// inflates every entry to find where it ends, and can hash its blobs as it does. Such a
    /// blob is then not kept for the deltas on it: one of them decoded reads it back from the
    /// pack (with [`reading_back`](Self::reading_back); without, the delta is passed over).
    pub fn told_by(mut self, tell: impl Fn(u64) -> Option<Told> + Send + 'static) -> Tips {
        self.tell = Some(Box::new(tell));
        self
    }

    /// Whether nothing is waited for but commits not found yet, or the closures were lost,
    /// with some commit found (see [`meanwhile`](Self::meanwhile)).
    fn settled(&self) -> bool {
        self.pending.is_empty()
            && self.revisit.is_empty()
            && self.commits_found > 0
            && (self.lost || !self.commits.is_empty())
    }

    /// Call `then` each time walks from wants are refused commits for want of room
    /// ([`MOST_WALKED`] commits taken; at once if one was already), and, with the walks
    /// shared ([`sharing_walks`](Self::sharing_walks)), each time they record more once one
    /// was (a commit walked found, with its parents): an incremental fetch whose
    /// history goes through such a commit needs more than this reading follows, and cannot
    /// be answered from what it finds (see [`Walks::cut`]). Once for each object found or
    /// asking at most, as soon as it happens, while the scan goes on: the commits come first
    /// in a pack, so walks run out within its first part. (Walks below a have are not told
    /// of: they only read trees a few generations further.)
    pub fn when_walks_run_out(mut self, mut then: impl FnMut() + Send + 'static) -> Tips {
        if !self.refused.is_empty() {
            self.untold = false;
            then();
        }
        self.ran_out = Some(Box::new(then));
        self
    }

    /// Record in `walks`, as they go, the parents of the commits walked and the commits
    /// walks from wants had no room for (see [`Walks::cut`]).
    pub fn sharing_walks(mut self, walks: std::sync::Arc<Walks>) -> Tips {
        {
            let mut state = walks.state();
            // Those of commits walked and haves: not those kept ahead of any walk.
            let shared = (self.parents.iter())
                .filter(|(id, _)| self.walks.contains_key(*id) || self.haves.contains(*id));
            state.parents.extend(shared.map(|(id, p)| (*id, p.clone())));
            state.refused.extend(self.refused.iter().copied());
            state.changes += 1;
        }
        self.shared = Some(walks);
        self
    }

    /// How many walks from wants were asked for once their want was found (a fetch that
    /// started waiting after its commits went by): walked through the parents kept of the
    /// first commits found (see [`MOST_PARENTS_AHEAD`]).
    pub fn walked_late(&self) -> usize {
        self.walked_late
    }

    /// Whether a walk from a want was refused a commit for want of room (see
    /// [`when_walks_run_out`](Self::when_walks_run_out)).
    pub fn walks_ran_out(&self) -> bool {
        !self.refused.is_empty()
    }

    /// Whether a commit walks were refused was taken by one after all (never, as walks
    /// only take fewer as they go).
    pub(crate) fn took_a_refused_commit(&self) -> bool {
        self.refused.iter().any(|id| self.walks.contains_key(id))
    }

    /// How many commits' parents are kept (bounded by the walks, the haves and
    /// [`MOST_PARENTS_AHEAD`]).
    pub(crate) fn parents_kept(&self) -> usize {
        self.parents.len()
    }

    /// How many commits walks from wants were refused (see
    /// [`when_walks_run_out`](Self::when_walks_run_out)).
    pub(crate) fn refused_count(&self) -> usize {
        self.refused.len()
    }

    /// A walk from a want had no room for `id` (see
    /// [`when_walks_run_out`](Self::when_walks_run_out)).
    fn refuse(&mut self, id: ObjectId) {
        if self.refused.len() >= MOST_REFUSED || !self.refused.insert(id) {
            return;
        }
        if let Some(shared) = &self.shared {
            let mut state = shared.state();
            state.refused.insert(id);
            state.changes += 1;
        }
        self.untold = true;
    }

    /// The parents of `id`, walked and found.
    fn found_parents(&mut self, id: ObjectId, parents: Box<[ObjectId]>) {
        self.share_parents(id, &parents);
        self.parents.insert(id, parents);
    }

    /// Record the parents of `id` (a tag's target) where walks are shared, once.
    fn share_parents(&mut self, id: ObjectId, parents: &[ObjectId]) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut state = shared.state();
        if let std::collections::hash_map::Entry::Vacant(entry) = state.parents.entry(id) {
            entry.insert(parents.into());
            state.changes += 1;
            // Where a walk goes once one was refused may lead to that commit.
            self.untold |= !self.refused.is_empty();
        }
    }

    /// Call `ran_out` if walks were refused a commit, or went on once one was, since it was
    /// last called.
    fn tell(&mut self) {
        if std::mem::take(&mut self.untold)
            && let Some(then) = self.ran_out.as_mut()
        {
            then();
        }
    }

    /// Walks take `most` commits at most, not [`MOST_WALKED`].
    pub(crate) fn walking_at_most(mut self, most: usize) -> Tips {
        self.walk_left = most.saturating_sub(self.walks.len());
        self.walk_reserve = most / 4;
        self
    }

    /// How many commits walks took (see [`Wants::walked`]), and depths (see
    /// [`Wants::deep`]): each once, from the same room.
    pub(crate) fn walked(&self) -> usize {
        self.walks.len()
            + (self.deep.keys())
                .filter(|id| !self.walks.contains_key(*id))
                .count()
    }

    /// Whether a closure was lost (see [`complete`](Self::complete)).
    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    /// Whether what was found is to be posted now, once what is wanted meanwhile is
    /// followed too (see [`meanwhile`](Self::meanwhile)).
    fn posts_now(&self) -> bool {
        self.meanwhile.is_some() && self.settled()
    }

    /// Follow what [`asking`](Self::asking) wants now.
    fn ask(&mut self, kept: &mut Kept, hash: gix_hash::Kind) {
        let Some(more) = self.more.as_mut() else {
            return;
        };
        let wants = more();
        self.add(wants);
        self.revisit(kept, hash, false);
    }

    /// Follow the tips of `wants`, and walk down from those it walks (see [`Wants`]).
    fn add(&mut self, wants: Wants) {
        for id in wants.tips {
            self.want(id, true);
        }
        // The haves first known (walks stop there), then walked below once the wants were:
        // what was found already is walked at once, and the wants come first.
        let haves: Vec<ObjectId> = (wants.haves.into_iter())
            .filter(|have| self.haves.len() < MOST_HAVES && self.haves.insert(*have))
            .collect();
        for id in wants.walked {
            let late = matches!(self.seen.get(&id), Some(Seen::Commit(_)));
            if self.take_walk(id, None, true) {
                self.walked_late += usize::from(late);
                self.walk(id);
            } else if !self.walks.contains_key(&id) {
                self.refuse(id);
            }
        }
        for have in haves {
            self.below_have(have);
        }
        for (id, depth) in wants.deep {
            self.deepen(id, depth);
        }
        self.tell();
    }

    /// Follow `id` and its history to `depth` generations (see [`Wants::deep`]): each commit
    /// within it wanted whole, from the walks' room, and its parents followed once they are
    /// known (at once if they are).
    fn deepen(&mut self, id: ObjectId, depth: u32) {
        let mut stack = vec![(id, depth)];
        while let Some((id, depth)) = stack.pop() {
            let had = self.deep.get(&id).copied();
            if depth == 0 || had.is_some_and(|had| had >= depth) {
                continue;
            }
            if had.is_none() && !self.walks.contains_key(&id) {
                // The last of the room is for walks from wants, as below haves; and depths
                // take half of it at most.
                if self.walk_left == 0
                    || self.walk_left <= self.walk_reserve
                    || self.deep.len() >= MOST_WALKED / 2
                {
                    continue;
                }
                self.walk_left -= 1;
            }
            self.deep.insert(id, depth);
            self.want(id, true);
            stack.extend(self.deeper(id, depth));
        }
    }

    /// What is followed below `id`, followed to `depth` generations, as far as known: a
    /// tag's target as deep, a commit's parents one less deep.
    fn deeper(&self, id: ObjectId, depth: u32) -> Vec<(ObjectId, u32)> {
        match self.seen.get(&id) {
            Some(Seen::Tag(target)) => vec![(*target, depth)],
            Some(Seen::Commit(_)) if depth > 1 => (self.parents.get(&id))
                .map_or_else(Vec::new, |parents| {
                    parents.iter().map(|parent| (*parent, depth - 1)).collect()
                }),
            _ => Vec::new(),
        }
    }

    /// `id` taken by a walk `below` a have (see [`walks`](Self::walks)): wanted, and paid for
    /// from what walks may take, unless a walk took it already; or its walk goes on from it
    /// again when this one goes further below it (a walk from a want through a commit a
    /// walk below another client's have took first). Whether it is to be walked from. A walk
    /// `from_want` (a want, or what a want's walk reaches, its haves included) may take the
    /// last quarter of the room too.
    fn take_walk(&mut self, id: ObjectId, below: Option<u8>, from_want: bool) -> bool {
        // How many generations further down a walk so labelled goes.
        let reach = |below: Option<u8>| below.map_or(u16::MAX, |g| u16::from(BELOW_HAVES - g));
        match self.walks.get(&id) {
            Some(&known) if reach(below) <= reach(known) => false,
            Some(_) => {
                self.walks.insert(id, below);
                // Wanted whole now, from a want's walk.
                if below.is_none() {
                    self.want(id, true);
                }
                true
            }
            // Taken by a shallow clone's depth already: its room is paid for.
            None if self.deep.contains_key(&id) => {
                self.walks.insert(id, below);
                self.want(id, below.is_none());
                true
            }
            None if self.walk_left == 0 => false,
            // The last of the room is for walks from wants.
            None if !from_want && self.walk_left <= self.walk_reserve => false,
            None => {
                self.walk_left -= 1;
                self.walks.insert(id, below);
                self.want(id, below.is_none());
                true
            }
        }
    }

    /// Follow the have `id`, if it was found since it was asked for, or before with its
    /// parents kept ahead (or is a tag), and walk below it (see [`Wants::haves`]).
    fn below_have(&mut self, id: ObjectId) {
        let known = match self.seen.get(&id) {
            Some(Seen::Commit(_)) => self.parents.contains_key(&id),
            Some(Seen::Tag(_)) => true,
            _ => false,
        };
        if !known {
            return;
        }
        // What is below it, as far as known, is the client's, walked or not.
        if let Some(parents) = self.parents.get(&id).cloned() {
            self.share_parents(id, &parents);
        }
        if self.take_walk(id, Some(0), false) {
            self.walk(id);
        }
    }

    /// Walk down from `from` (see [`Wants::walked`]), as far as the commits found tell:
    /// each parent is followed (wanted, with its closure), and walked on from once it is
    /// found. A tag walked is walked on from what it tags.
    fn walk(&mut self, from: ObjectId) {
        let mut stack = vec![from];
        while let Some(id) = stack.pop() {
            let Some(&below) = self.walks.get(&id) else {
                continue;
            };
            let parents = match self.seen.get(&id) {
                // What it tags, as far below.
                Some(Seen::Tag(target)) => {
                    let target = *target;
                    self.share_parents(id, &[target]);
                    if self.take_walk(target, below, below.is_none()) {
                        stack.push(target);
                    } else if below.is_none() && !self.walks.contains_key(&target) {
                        self.refuse(target);
                    }
                    continue;
                }
                Some(Seen::Commit(_)) => match self.parents.get(&id).cloned() {
                    Some(parents) => {
                        // Shared once a walk goes through it (found before a walk took it,
                        // its parents kept ahead: shared now; else shared already).
                        self.share_parents(id, &parents);
                        parents
                    }
                    // Found before a walk took it, past those whose parents are kept ahead,
                    // or of more than `MOST_PARENTS` parents.
                    None => continue,
                },
                // Not found yet (walked on once it is), or not a commit.
                _ => continue,
            };
            for parent in parents.iter().copied() {
                let label = match below {
                    _ if self.haves.contains(&parent) => Some(0),
                    None => None,
                    Some(generations) if generations < BELOW_HAVES => Some(generations + 1),
                    Some(_) => continue,
                };
                if self.take_walk(parent, label, below.is_none()) {
                    stack.push(parent);
                } else if below.is_none() && !self.walks.contains_key(&parent) {
                    // Refused from a want's walk (a have too: its trees are then not
                    // followed).
                    self.refuse(parent);
                }
            }
        }
    }

    /// Follow `id` from now on: from its tree, if it was found already (to be read again,
    /// see [`revisit`](Self::revisit)); `whole`, or for the trees alone (a commit a walk
    /// took below a have: what is in those trees is the client's, and only their trees are
    /// read to tell it).
    fn want(&mut self, mut id: ObjectId, whole: bool) {
        // A tag of a tag of ...: each followed once, and once more should it be wanted whole
        // after it was wanted for its trees alone.
        loop {
            let new = self.wanted.insert(id);
            let newly_whole = whole && self.whole_wanted.insert(id);
            if !new && !newly_whole {
                return;
            }
            match self.seen.get(&id).copied() {
                None if new => {
                    self.commits.insert(id);
                }
                // Followed as [`whole`](Self::whole) says once found.
                None => {}
                Some(Seen::Commit(tree)) => {
                    if new {
                        self.commits_found += 1;
                    }
                    self.need(tree, true, whole);
                }
                Some(Seen::Tag(target)) => {
                    id = target;
                    continue;
                }
                Some(Seen::Tree(_) | Seen::Listed(_) | Seen::Done) => {}
            }
            return;
        }
    }

    /// Whether the closure of the commit `id`, wanted, is followed whole: not when only walks
    /// below a have wanted it.
    fn whole(&self, id: &ObjectId) -> bool {
        self.whole_wanted.contains(id)
    }

    /// Whether every commit and everything in its tree was found.
    pub fn complete(&self) -> bool {
        !self.lost && self.commits.is_empty() && self.pending.is_empty()
    }

    /// The objects the closures are made of, as far as they were followed: the commits and
    /// tags wanted, the trees and blobs needed, and every tag found with what it tags (for
    /// the refs); `None` when a closure was lost, or more was needed than is remembered.
    fn closure(&self) -> Option<IdSet> {
        let needed = self.needed.as_ref().filter(|_| !self.lost)?;
        let mut closure = needed.clone();
        closure.extend(self.wanted.iter().copied());
        for (id, seen) in &self.seen {
            if let Seen::Tag(target) = seen {
                closure.extend([*id, *target]);
            }
        }
        Some(closure)
    }

    /// Whether a tree named is not found yet.
    fn awaits_trees(&self) -> bool {
        !self.pending_trees.is_empty()
    }

    /// Whether no tree can be needed unless more commits are wanted: every commit wanted was
    /// found, and every tree of their closures (nothing is left to read again). Trees are
    /// then read past, undecoded: in a long history, nearly all of a pack's decoding and
    /// hashing is its trees' older versions.
    fn trees_settled(&self) -> bool {
        self.commits.is_empty()
            && self.pending_trees.is_empty()
            && self.hoped.is_empty()
            && self.revisit.is_empty()
            && !self.lost
            && self.commits_found > 0
    }

    /// A tree was read past, undecoded: a tree needed from now on and not found yet may
    /// have been that one.
    fn read_past_trees(&mut self) {
        self.trees_read_past = true;
    }

    /// `id` is needed (named as a tree when `tree`; a tree followed `whole`, or for its
    /// subtrees alone).
    fn need(&mut self, id: ObjectId, tree: bool, whole: bool) {
        if let Some(needed) = self.needed.as_mut() {
            if needed.len() < self.most_pending {
                needed.insert(id);
            } else {
                self.needed = None;
            }
        }
        match self.seen.get_mut(&id) {
            Some(seen @ Seen::Tree(_)) => {
                if let Seen::Tree(offset) = *seen {
                    *seen = if whole {
                        Seen::Done
                    } else {
                        Seen::Listed(offset)
                    };
                    self.revisit.push((id, offset, whole, false));
                }
            }
            Some(seen @ Seen::Listed(_)) if whole => {
                if let Seen::Listed(offset) = std::mem::replace(seen, Seen::Done) {
                    self.revisit.push((id, offset, true, true));
                }
            }
            Some(_) => {}
            None if self.pending.len() + self.hoped.len() >= self.most_pending => {
                self.lost = true;
            }
            // Of a commit wanted late: the closures wanted before do not wait for it.
            None if tree && self.trees_read_past => {
                self.hoped.insert(id);
                if whole {
                    self.hoped_whole.insert(id);
                }
            }
            None => {
                if self.pending.insert(id) && tree {
                    self.pending_trees.insert(id);
                }
                if tree && whole {
                    self.pending_whole.insert(id);
                }
            }
        }
    }

    /// What is in the tree `data`, needed: followed (its subtrees alone, unless `whole`).
    fn follow(&mut self, data: &[u8], hash: gix_hash::Kind, whole: bool) {
        self.followed += 1;
        match crate::objects::parse_tree(data, hash) {
            Ok(entries) => {
                for entry in entries {
                    match entry.kind {
                        crate::objects::EntryKind::Gitlink => {}
                        crate::objects::EntryKind::Tree => self.need(entry.oid, true, whole),
                        crate::objects::EntryKind::Blob if whole => {
                            self.need(entry.oid, false, true);
                        }
                        crate::objects::EntryKind::Blob => {}
                    }
                }
            }
            Err(_) => self.lost = true,
        }
    }

    /// `id`, of `kind`, found at `offset`: whatever it makes needed is followed, trees found
    /// before they were needed read again from `kept` (or the closure is lost).
    fn found(
        &mut self,
        (id, offset): (ObjectId, u64),
        kind: gix_object::Kind,
        data: &[u8],
        hash: gix_hash::Kind,
        kept: &mut Kept,
    ) {
        let hoped = kind == gix_object::Kind::Tree && self.hoped.remove(&id);
        let needed = self.pending.remove(&id) || hoped;
        self.pending_trees.remove(&id);
        let whole = self.pending_whole.remove(&id) | self.hoped_whole.remove(&id);
        let seen = match kind {
            gix_object::Kind::Tree if needed && whole => Seen::Done,
            gix_object::Kind::Tree if needed => Seen::Listed(offset),
            gix_object::Kind::Tree => Seen::Tree(offset),
            gix_object::Kind::Commit => match crate::objects::parse_commit(data, hash) {
                Ok(commit) => {
                    // Kept for walks, and bounded by them, and for the first commits found
                    // (a walk asked for later goes through them).
                    let walked = self.walks.contains_key(&id)
                        || self.haves.contains(&id)
                        || self.deep.contains_key(&id);
                    if commit.parents.len() <= MOST_PARENTS && !self.seen.contains_key(&id) {
                        if walked {
                            self.found_parents(id, commit.parents.into_boxed_slice());
                        } else if self.ahead_left > 0 {
                            self.ahead_left -= 1;
                            self.parents.insert(id, commit.parents.into_boxed_slice());
                        }
                    }
                    Seen::Commit(commit.tree)
                }
                Err(_) => Seen::Done,
            },
            gix_object::Kind::Tag => crate::objects::parse_tag(data, hash)
                .map_or(Seen::Done, |(target, _)| Seen::Tag(target)),
            gix_object::Kind::Blob => Seen::Done,
        };
        // Found once: an entry of the same object again (a pack taking it in refuses) is
        // not followed again.
        let seen = *self.seen.entry(id).or_insert(seen);
        if self.commits.remove(&id) {
            let whole = self.whole(&id);
            match seen {
                Seen::Commit(tree) => {
                    self.commits_found += 1;
                    self.need(tree, true, whole);
                }
                Seen::Tag(target) => self.want(target, whole),
                // Not a commit: nothing to follow.
                Seen::Tree(_) | Seen::Listed(_) | Seen::Done => {}
            }
        }
        if self.haves.contains(&id) {
            self.below_have(id);
        }
        if self.walks.contains_key(&id) {
            self.walk(id);
        }
        if let Some(&depth) = self.deep.get(&id) {
            // Now that what is below it is known.
            for (below, depth) in self.deeper(id, depth) {
                self.deepen(below, depth);
            }
        }
        if needed && kind == gix_object::Kind::Tree {
            self.follow(data, hash, whole);
        }
        self.revisit(kept, hash, true);
        self.tell();
    }

    /// Follow the trees needed after they were found from the objects kept. One no longer
    /// kept loses the closure when `strict`; else it is not followed now, and a later need
    /// of it tries again (strictly, for a commit wanted from the start).
    fn revisit(&mut self, kept: &mut Kept, hash: gix_hash::Kind, strict: bool) {
        while let Some((id, offset, whole, listed)) = self.revisit.pop() {
            match kept.get(offset).or_else(|| kept.read_tree_back(offset)) {
                Some((gix_object::Kind::Tree, data)) => self.follow(&data, hash, whole),
                _ if strict => self.lost = true,
                _ => {
                    let before = if listed {
                        Seen::Listed(offset)
                    } else {
                        Seen::Tree(offset)
                    };
                    self.seen.insert(id, before);
                }
            }
        }
    }
}

/// An object found, and where its entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FoundEntry {
    pub(crate) id: ObjectId,
    pub(crate) offset: u64,
    /// Where the entry ends.
    pub(crate) end: u64,
    pub(crate) crc32: u32,
    pub(crate) kind: gix_object::Kind,
    /// How far before it its base starts, a delta's (0: stored whole).
    pub(crate) base_distance: u64,
}

impl Found {
    /// How many objects were found.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// How many entries the pack holds.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The entries read and not decoded, by why.
    pub fn passed(&self) -> Passed {
        self.passed
    }

    /// How many objects were decoded again, read back (see [`Tips::reading_back`]): trees,
    /// and blobs told of that deltas rest on (see [`Tips::told_by`]).
    pub fn read_back(&self) -> u64 {
        self.read_back
    }

    /// How many blobs stored whole were found without being inflated, told of (see
    /// [`Tips::told_by`]).
    pub fn told(&self) -> u64 {
        self.told
    }

    /// The pack's checksum, as its trailer says it (the scan does not check it: the reader
    /// that writes the pack does); `None` when the scan stopped before the end.
    pub fn checksum(&self) -> Option<ObjectId> {
        self.checksum
    }

    /// The bytes of the entries of the objects found, in the pack scanned.
    pub fn bytes(&self) -> u64 {
        self.objects
            .iter()
            .map(|found| found.end - found.offset)
            .sum()
    }

    /// Whether `id` was found.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects.iter().any(|found| found.id == *id)
    }

    /// Write a pack of the objects found alone to `pack`, their entries copied from the pack
    /// scanned (read with `read_at`, as `std::os::unix::fs::FileExt::read_at` reads a file;
    /// an offset delta's distance to its base written anew), and its version 2 index to
    /// `index`: a repository whose pack folder holds the two reads those objects, and no
    /// others, every entry of its pack named by its index. When the scan followed [`Tips`]
    /// and found more than [`Limits::copy_all_bytes`] of entries, only the objects of their
    /// closures are (the commits and tags wanted, the trees and blobs in them, the tags
    /// found and what they tag), `also` and the delta bases of all those: not every commit of
    /// a long history, found as it went by. The new pack's checksum and how many objects it
    /// holds.
    pub fn write_pack(
        &self,
        read_at: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
        pack: &Path,
        index: &Path,
        also: &[ObjectId],
    ) -> Result<Written, Error> {
        let copied = self.to_copy(also)?;
        let commits_left_out: LeftOut = (self.objects.iter().zip(&copied))
            .filter(|(found, copied)| !**copied && found.kind == gix_object::Kind::Commit)
            .map(|(found, _)| found.id)
            .collect();
        let taken: Vec<&FoundEntry> = (self.objects.iter().zip(copied))
            .filter_map(|(found, copied)| copied.then_some(found))
            .collect();
        let entries: Vec<(u64, u64)> = taken.iter().map(|f| (f.offset, f.end)).collect();
        let mut listed: Vec<(ObjectId, PackEntry)> = Vec::with_capacity(taken.len());
        let out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(pack)?);
        let (out, checksum) =
            crate::copy::copy_entries(read_at, &entries, self.hash, out, |i, copy| {
                let found = taken[i];
                // The bytes copied are those scanned: their CRC-32 is the one taken then.
                if copy.source_crc32 != found.crc32 {
                    return Err(Error::odb("an entry found changed before it was copied"));
                }
                listed.push((
                    found.id,
                    PackEntry {
                        offset: copy.offset,
                        crc32: copy.crc32,
                    },
                ));
                Ok(())
            })?;
        drop(out);
        crate::indexing::write_index_of(index, &listed, &checksum, self.hash)?;
        Ok(Written {
            checksum,
            objects: listed.len(),
            commits_left_out,
        })
    }

    /// Which of the objects found [`write_pack`](Self::write_pack) copies: all, or those of
    /// the closures and `also`, each delta's base with it.
    fn to_copy(&self, also: &[ObjectId]) -> Result<Vec<bool>, Error> {
        // Made only past `Limits::copy_all_bytes` (see `found_once`).
        let Some(closure) = self.closure.as_deref() else {
            return Ok(vec![true; self.objects.len()]);
        };
        let also: std::collections::HashSet<&ObjectId> = also.iter().collect();
        let mut copied = vec![false; self.objects.len()];
        let mut bases = std::collections::HashSet::new();
        // Last first: a delta's base is found before it.
        for (found, copied) in self.objects.iter().zip(&mut copied).rev() {
            if !(bases.remove(&found.offset)
                || closure.contains(&found.id)
                || also.contains(&found.id))
            {
                continue;
            }
            *copied = true;
            if found.base_distance > 0 {
                let base = found
                    .offset
                    .checked_sub(found.base_distance)
                    .ok_or_else(|| Error::odb("a delta found without its base"))?;
                bases.insert(base);
            }
        }
        if !bases.is_empty() {
            return Err(Error::odb("a delta found without its base"));
        }
        Ok(copied)
    }
}

/// Read a pack from `read` as it arrives, decoding and hashing every entry stored whole and
/// every offset delta whose base is still among the decoded objects kept, within `limits`;
/// given up once `stop` is set. An error is the pack's (or the reading's): nothing found is
/// kept then.
pub fn scan(
    read: &mut dyn BufRead,
    hash: gix_hash::Kind,
    limits: Limits,
    stop: &AtomicBool,
) -> Result<Found, Error> {
    scan_for(read, hash, limits, stop, None)
}

/// [`scan`], stopping as soon as `tips` are [complete](Tips::complete): what was found by
/// then, before the rest of the pack has even arrived. Should only commits not found yet be
/// left, what was found by then is given to [`Tips::meanwhile`] first.
pub fn scan_for(
    read: &mut dyn BufRead,
    hash: gix_hash::Kind,
    limits: Limits,
    stop: &AtomicBool,
    mut tips: Option<&mut Tips>,
) -> Result<Found, Error> {
    // Blobs too large to decode are hashed as they go by, holding nothing.
    let mut incoming =
        crate::incoming::Incoming::new(read, hash, limits.object_bytes.saturating_add(1))?;
    let entries = incoming.count();
    let mut kept = Kept::new(limits.cache_bytes);
    let mut objects: Vec<FoundEntry> = Vec::new();
    let mut out = Vec::new();
    let mut decoded = 0u64;
    // Past the budget nothing more is inflated or decoded (what is read is only followed),
    // until the bytes read make room again.
    let budget = |offset: u64| {
        (limits.cache_bytes as u64).saturating_add(offset.saturating_mul(limits.decoded_per_byte))
    };
    let mut tell = None;
    if let Some(tips) = tips.as_deref_mut() {
        tips.most_pending = limits.most_found;
        kept.back = tips.read_back.take().map(|read_at| Back {
            read_at,
            hash,
            most: limits.object_bytes,
            allowed: 0,
            spent: std::cell::Cell::new(0),
            read: std::cell::Cell::new(0),
            listed: Vec::new(),
            blobs: Vec::new(),
        });
        tell = tips.tell.take();
    }
    let mut read_entries = 0usize;
    let mut passed = Passed::default();
    let mut told = 0u64;
    loop {
        read_entries += 1;
        if read_entries.is_multiple_of(ASK_EVERY)
            && let Some(tips) = tips.as_deref_mut()
        {
            tips.ask(&mut kept, hash);
        }
        // Only what can be decoded is inflated: an object stored whole, or a delta on a base
        // still kept, of at most `object_bytes` (a delta by id is left to the indexing).
        // A delta whose base is no longer kept is decoded all the same while a tree is
        // awaited, should its base be a tree that can be read back from what was written of
        // the pack: a long history's trees come in long chains whose bases lie far behind.
        decoded = decoded.saturating_add(kept.take_spent());
        let reread = kept.back.is_some() && tips.as_deref().is_some_and(Tips::awaits_trees);
        let trees_settled = tips.as_deref().is_some_and(Tips::trees_settled);
        kept.allow(budget(incoming.offset()).saturating_sub(decoded));
        let (why, chain) = (std::cell::Cell::new(None), std::cell::Cell::new(None));
        let keep = |offset: u64, header: &Header, size: u64| {
            let passed = if decoded > budget(offset) {
                Some(Why::Budget)
            } else if size > limits.object_bytes {
                Some(Why::Large)
            } else {
                match header {
                    Header::Tree if trees_settled => Some(Why::Unawaited),
                    Header::OfsDelta { base_distance } => {
                        match offset.checked_sub(*base_distance) {
                            Some(base)
                                if trees_settled
                                    && kept.kind(base) == Some(gix_object::Kind::Tree) =>
                            {
                                Some(Why::Unawaited)
                            }
                            Some(base) if kept.has(base) => None,
                            // A blob told of, not inflated then: read back for it.
                            Some(base) if kept.passed_blob(base) => {
                                let blob = kept.blob_back(base);
                                let gone = blob.is_none();
                                chain.set(blob);
                                gone.then_some(Why::BaseGone)
                            }
                            Some(base) if reread => {
                                let trees = kept.tree_chain(base);
                                let gone = trees.is_none();
                                chain.set(trees);
                                gone.then_some(Why::BaseGone)
                            }
                            _ => Some(Why::BaseGone),
                        }
                    }
                    Header::RefDelta { .. } => Some(Why::Other),
                    _ => None,
                }
            };
            why.set(passed);
            passed.is_none()
        };
        // Where the blob last told of is.
        let told_here = std::cell::Cell::new(None);
        let next = match tell.as_deref() {
            Some(tell) => {
                let telling = |at| {
                    let blob = tell(at);
                    told_here.set(blob.map(|_| at));
                    blob
                };
                incoming.next_entry_told(&telling, &keep, &mut out)?
            }
            None => incoming.next_entry_keeping(&keep, &mut out)?,
        };
        let Some((entry, inflated)) = next else {
            break;
        };
        if stop.load(Ordering::Relaxed) {
            return Err(Error::odb("the scan of an arriving pack was stopped"));
        }
        if objects.len() >= limits.most_found {
            return Err(Error::odb("more objects found than a scan keeps"));
        }
        let found = |id, kind| FoundEntry {
            id,
            offset: entry.offset,
            end: entry.end(),
            crc32: entry.crc32,
            kind,
            base_distance: match entry.header {
                Header::OfsDelta { base_distance } => base_distance,
                _ => 0,
            },
        };
        // A blob hashed as it went by (not kept), or an object decoded here.
        let (id, kind, object) = match entry.id {
            Some(id) => (id, gix_object::Kind::Blob, None),
            None if !inflated => {
                if let (Some(Why::Unawaited), Some(tips)) = (why.get(), tips.as_deref_mut()) {
                    tips.read_past_trees();
                }
                passed.count(why.get());
                continue;
            }
            None => {
                decoded = decoded.saturating_add(entry.size);
                let (kind, object) = match entry.header {
                    Header::OfsDelta { base_distance } => {
                        let base = entry.offset.checked_sub(base_distance).and_then(|base| {
                            kept.get(base)
                                .or_else(|| chain.take().and_then(|chain| kept.decode_chain(chain)))
                        });
                        let Some((kind, base)) = base else {
                            passed.base_gone += 1;
                            continue;
                        };
                        match crate::delta::target_size(&out) {
                            Some(size) if size <= limits.object_bytes => {}
                            _ => {
                                passed.large += 1;
                                continue;
                            }
                        }
                        // A delta that does not apply is the indexing's to refuse.
                        let Ok(object) = crate::delta::apply(&base, &out) else {
                            passed.other += 1;
                            continue;
                        };
                        decoded = decoded.saturating_add(object.len() as u64);
                        (kind, object)
                    }
                    Header::RefDelta { .. } => {
                        passed.other += 1;
                        continue;
                    }
                    header => match header.as_kind() {
                        Some(kind) => (kind, std::mem::take(&mut out)),
                        None => {
                            passed.other += 1;
                            continue;
                        }
                    },
                };
                let id = gix_object::compute_hash(hash, kind, &object)
                    .map_err(|err| Error::odb(format!("hashing an arriving object: {err}")))?;
                (id, kind, Some(object))
            }
        };
        objects.push(found(id, kind));
        kept.list(entry.offset, kind);
        if told_here.get() == Some(entry.offset) {
            // Not inflated: read back should a delta rest on it.
            told += 1;
            kept.pass_blob(entry.offset, entry.size);
        }
        // Kept before it is followed: a commit wanted meanwhile may need it (a tree) now.
        let object: Option<std::rc::Rc<[u8]>> = object.map(Into::into);
        if let Some(object) = &object {
            kept.put(entry.offset, kind, std::rc::Rc::clone(object));
        }
        if let Some(tips) = tips.as_deref_mut() {
            let data = object.as_deref().unwrap_or_default();
            tips.found((id, entry.offset), kind, data, hash, &mut kept);
            if tips.complete() || tips.posts_now() {
                // What was wanted meanwhile is looked for too.
                tips.ask(&mut kept, hash);
            }
            if tips.complete() {
                let counts = (passed, kept.read_back_count(), told);
                return found_once(
                    hash,
                    objects,
                    None,
                    entries,
                    counts,
                    (|| tips.closure(), limits.copy_all_bytes),
                );
            }
            if tips.posts_now()
                && let Some(post) = tips.meanwhile.take()
                // Twice found: the scan's own end says so.
                && let Ok(found) = found_once(
                    hash,
                    objects.clone(),
                    None,
                    entries,
                    (passed, kept.read_back_count(), told),
                    (|| tips.closure(), limits.copy_all_bytes),
                )
            {
                post(found);
            }
        }
    }
    let checksum = incoming.trailer()?;
    let counts = (passed, kept.read_back_count(), told);
    found_once(
        hash,
        objects,
        Some(checksum),
        entries,
        counts,
        (
            || tips.and_then(|tips| tips.closure()),
            limits.copy_all_bytes,
        ),
    )
}

/// `objects`, found in pack order, each once: an object the pack holds twice (git writes
/// none, and taking the pack in refuses it) is no early answer.
fn found_once(
    hash: gix_hash::Kind,
    objects: Vec<FoundEntry>,
    checksum: Option<ObjectId>,
    entries: u32,
    (passed, read_back, told): (Passed, u64, u64),
    (closure, copy_all_bytes): (impl FnOnce() -> Option<IdSet>, u64),
) -> Result<Found, Error> {
    // The closures are only made when the copy is to hold them alone (a set of up to two
    // million ids).
    let bytes: u64 = objects.iter().map(|found| found.end - found.offset).sum();
    let closure = if bytes > copy_all_bytes {
        closure()
    } else {
        None
    };
    let mut ids: Vec<ObjectId> = objects.iter().map(|found| found.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(crate::closed::twice(ids.into_iter()));
    }
    Ok(Found {
        hash,
        objects,
        checksum,
        entries,
        passed,
        read_back,
        told,
        closure: closure.map(std::sync::Arc::new),
    })
}

/// Reads a pack's bytes at an offset (see [`Tips::reading_back`]).
type ReadAt = dyn Fn(&mut [u8], u64) -> std::io::Result<usize> + Send;

/// Tells what is known of the blob stored whole at an offset (see [`Tips::told_by`]).
type TellAt = dyn Fn(u64) -> Option<Told> + Send;

/// The most links of a chain read back (git writes 50 at most by default).
const MOST_READ_BACK: usize = 128;

/// How [`Kept`] reads trees, and blobs told of, back (see [`Tips::reading_back`]).
struct Back {
    read_at: Box<ReadAt>,
    hash: gix_hash::Kind,
    /// [`Limits::object_bytes`].
    most: u64,
    /// Bytes that may be decoded, counted from `spent`'s last taking.
    allowed: u64,
    /// Bytes inflated and decoded reading back, and [`HEADER_COST`] a header read.
    spent: std::cell::Cell<u64>,
    /// Objects read back (trees, and blobs told of).
    read: std::cell::Cell<u64>,
    /// Where the trees found are, in pack order.
    listed: Vec<u64>,
    /// Where the blobs found without inflating them are (see [`Tips::told_by`]), in pack
    /// order, and their sizes.
    blobs: Vec<(u64, u64)>,
}

/// A chain of trees to read back (see [`Kept::tree_chain`]), or a blob (see
/// [`Kept::blob_back`]): each link's offset and inflated size, from the top down, and where
/// the object kept it starts on is (`None`: its last link is stored whole), and its kind.
struct Chain {
    links: Vec<(u64, u64)>,
    bottom: Option<u64>,
    kind: gix_object::Kind,
}

/// What reading a header back counts against the bytes allowed (see [`Kept::tree_chain`]).
const HEADER_COST: u64 = 64;

/// A pack's bytes read from an offset on (see [`Kept::read_tree_back`]).
struct ReadBack<'a> {
    read_at: &'a ReadAt,
    at: u64,
}

impl std::io::Read for ReadBack<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = (self.read_at)(buf, self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// Why an entry was not decoded (see [`Passed`]).
#[derive(Debug, Clone, Copy)]
enum Why {
    Budget,
    Large,
    BaseGone,
    Other,
    Unawaited,
}

impl Passed {
    fn count(&mut self, why: Option<Why>) {
        match why {
            Some(Why::Budget) => self.budget += 1,
            Some(Why::Large) => self.large += 1,
            Some(Why::BaseGone) => self.base_gone += 1,
            Some(Why::Unawaited) => self.unawaited += 1,
            Some(Why::Other) | None => self.other += 1,
        }
    }
}

/// Decoded objects by offset, within a budget of bytes, the least recently used let go first;
/// trees no longer kept, and blobs told of, read back from the pack, when it can be read (see
/// [`Tips::reading_back`]).
struct Kept {
    back: Option<Back>,
    budget: usize,
    held: usize,
    objects: HashMap<u64, (gix_object::Kind, std::rc::Rc<[u8]>, u64), Keyed>,
    /// Offsets in the order used, each with the use it stands for (a stale one is skipped).
    order: VecDeque<(u64, u64)>,
    uses: u64,
}

impl Kept {
    fn new(budget: usize) -> Self {
        Kept {
            back: None,
            budget,
            held: 0,
            objects: HashMap::default(),
            order: VecDeque::new(),
            uses: 0,
        }
    }

    fn has(&self, offset: u64) -> bool {
        self.objects.contains_key(&offset)
    }

    /// The kind of the object kept at `offset`.
    fn kind(&self, offset: u64) -> Option<gix_object::Kind> {
        self.objects.get(&offset).map(|(kind, ..)| *kind)
    }

    /// At most `bytes` may be decoded reading back from now on.
    fn allow(&mut self, bytes: u64) {
        if let Some(back) = self.back.as_mut() {
            back.allowed = bytes;
        }
    }

    /// How many objects were read back.
    fn read_back_count(&self) -> u64 {
        self.back.as_ref().map_or(0, |back| back.read.get())
    }

    /// The bytes decoded reading back since last asked.
    fn take_spent(&mut self) -> u64 {
        self.back.as_ref().map_or(0, |back| back.spent.take())
    }

    /// Record that an object of `kind` at `offset` (after those recorded before) was found:
    /// a chain read back goes through trees found alone.
    fn list(&mut self, offset: u64, kind: gix_object::Kind) {
        if let Some(back) = self.back.as_mut()
            && kind == gix_object::Kind::Tree
        {
            back.listed.push(offset);
        }
    }

    /// The object at `offset` of the pack scanned, decoded again from what was written of it,
    /// should it be a tree (see [`tree_chain`](Self::tree_chain)), each link kept.
    fn read_tree_back(&mut self, offset: u64) -> Option<(gix_object::Kind, std::rc::Rc<[u8]>)> {
        let chain = self.tree_chain(offset)?;
        self.decode_chain(chain)
    }

    /// The chain of trees ending at `offset`, read down from its headers alone to a tree kept
    /// or stored whole, through trees found (entries decoded and hashed, each before the
    /// one naming it as its base); `None` when it is no such chain, is longer than
    /// [`MOST_READ_BACK`] links, or nothing can be read back. Each header read counts
    /// [`HEADER_COST`] bytes against the bytes allowed.
    fn tree_chain(&self, offset: u64) -> Option<Chain> {
        let back = self.back.as_ref()?;
        let mut links = Vec::new();
        let mut at = offset;
        let whole = loop {
            if self.kind(at) == Some(gix_object::Kind::Tree) {
                break false;
            }
            let spent = back.spent.get();
            if links.len() == MOST_READ_BACK
                || self.has(at)
                || back.listed.binary_search(&at).is_err()
                || spent >= back.allowed
            {
                return None;
            }
            back.spent.set(spent.saturating_add(HEADER_COST));
            let mut head = [0; crate::incoming::LONGEST_HEADER];
            let read = (back.read_at)(&mut head, at).ok()?;
            let entry = gix_pack::data::Entry::from_bytes(head.get(..read)?, at, back.hash).ok()?;
            links.push((at, entry.decompressed_size));
            match entry.header {
                Header::OfsDelta { base_distance } => {
                    at = at.checked_sub(base_distance).filter(|base| *base < at)?;
                }
                Header::Tree => break true,
                _ => return None,
            }
        };
        Some(Chain {
            links,
            bottom: (!whole).then_some(at),
            kind: gix_object::Kind::Tree,
        })
    }

    /// Record that the blob of `size` bytes at `offset` (after those recorded before) was
    /// found without being inflated: read back should a delta rest on it.
    fn pass_blob(&mut self, offset: u64, size: u64) {
        if let Some(back) = self.back.as_mut() {
            back.blobs.push((offset, size));
        }
    }

    /// The size of the blob at `offset` found without being inflated.
    fn blob_passed_at(&self, offset: u64) -> Option<u64> {
        let blobs = &self.back.as_ref()?.blobs;
        let at = blobs.binary_search_by_key(&offset, |&(at, _)| at).ok()?;
        Some(blobs[at].1)
    }

    /// Whether the blob at `offset` was found without being inflated, and is not kept since.
    fn passed_blob(&self, offset: u64) -> bool {
        self.blob_passed_at(offset).is_some() && !self.has(offset)
    }

    /// The blob at `offset`, found without being inflated, as a chain of one link to read
    /// back (its size as the scan read it, checked again as it is inflated); `None` when it
    /// was not so found or nothing more may be decoded.
    fn blob_back(&self, offset: u64) -> Option<Chain> {
        let back = self.back.as_ref()?;
        let size = self.blob_passed_at(offset)?;
        (back.spent.get() < back.allowed).then(|| Chain {
            links: vec![(offset, size)],
            bottom: None,
            kind: gix_object::Kind::Blob,
        })
    }

    /// The tree (or blob) `chain` ends with, each link inflated and applied from the bottom
    /// up, and kept: what each would decode to counted before it is (a link that then fails
    /// is paid for all the same).
    fn decode_chain(&mut self, chain: Chain) -> Option<(gix_object::Kind, std::rc::Rc<[u8]>)> {
        let mut object = match chain.bottom {
            Some(at) => Some(self.get(at)?.1),
            None => None,
        };
        let back = self.back.take()?;
        let decoded = (|| {
            let charge = |bytes: u64| {
                let spent = back.spent.get().saturating_add(bytes);
                back.spent.set(spent);
                (bytes <= back.most && spent <= back.allowed).then_some(())
            };
            let mut made_here = Vec::new();
            let mut out = Vec::new();
            for &(link, size) in chain.links.iter().rev() {
                charge(size)?;
                let mut read = std::io::BufReader::with_capacity(
                    1 << 12,
                    ReadBack {
                        read_at: back.read_at.as_ref(),
                        at: link,
                    },
                );
                let mut incoming = crate::incoming::Incoming::one_at(&mut read, back.hash, link);
                let keep = |_: u64, _: &Header, claimed: u64| claimed == size;
                let (entry, true) = incoming.next_entry_keeping(&keep, &mut out).ok()?? else {
                    return None;
                };
                let made: std::rc::Rc<[u8]> = match (entry.header, object.take()) {
                    (Header::Tree, None) if chain.kind == gix_object::Kind::Tree => {
                        std::mem::take(&mut out).into()
                    }
                    (Header::Blob, None) if chain.kind == gix_object::Kind::Blob => {
                        std::mem::take(&mut out).into()
                    }
                    (Header::OfsDelta { .. }, Some(base)) => {
                        charge(crate::delta::target_size(&out)?)?;
                        crate::delta::apply(&base, &out).ok()?.into()
                    }
                    _ => return None,
                };
                made_here.push((link, std::rc::Rc::clone(&made)));
                object = Some(made);
            }
            Some((object?, made_here))
        })();
        let read = back.read.get();
        back.read
            .set(read + decoded.as_ref().map_or(0, |(_, made)| made.len() as u64));
        self.back = Some(back);
        let (object, made) = decoded?;
        for (link, decoded) in made {
            self.put(link, chain.kind, decoded);
        }
        Some((chain.kind, object))
    }

    fn get(&mut self, offset: u64) -> Option<(gix_object::Kind, std::rc::Rc<[u8]>)> {
        self.uses += 1;
        let uses = self.uses;
        let (kind, data, used) = self.objects.get_mut(&offset)?;
        *used = uses;
        let found = (*kind, std::rc::Rc::clone(data));
        self.order.push_back((offset, uses));
        self.compact();
        Some(found)
    }

    /// Stale uses are let go of once they outnumber the objects: the queue stays within a
    /// few times the objects held, however often they are read.
    fn compact(&mut self) {
        if self.order.len() > 4 * self.objects.len() + 1024 {
            let objects = &self.objects;
            self.order
                .retain(|(offset, uses)| objects.get(offset).is_some_and(|(_, _, u)| u == uses));
        }
    }

    fn put(&mut self, offset: u64, kind: gix_object::Kind, data: impl Into<std::rc::Rc<[u8]>>) {
        let data = data.into();
        let cost = data.len() + KEPT_OVERHEAD;
        if cost > self.budget {
            return;
        }
        self.uses += 1;
        self.held += cost;
        if let Some((_, old, _)) = self.objects.insert(offset, (kind, data, self.uses)) {
            self.held -= old.len() + KEPT_OVERHEAD;
        }
        self.order.push_back((offset, self.uses));
        while self.held > self.budget {
            let Some((offset, uses)) = self.order.pop_front() else {
                break;
            };
            if self
                .objects
                .get(&offset)
                .is_some_and(|(_, _, used)| *used == uses)
                && let Some((_, data, _)) = self.objects.remove(&offset)
            {
                self.held -= data.len() + KEPT_OVERHEAD;
            }
        }
        self.compact();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use gix_object::Kind;

    const HASH: gix_hash::Kind = gix_hash::Kind::Sha1;

    /// An object of `kind` holding `data`, and its id.
    fn object(kind: Kind, data: Vec<u8>) -> (ObjectId, Vec<u8>) {
        (gix_object::compute_hash(HASH, kind, &data).unwrap(), data)
    }

    /// A tree of `entries` (mode, name, id).
    fn tree(entries: &[(&str, &str, ObjectId)]) -> (ObjectId, Vec<u8>) {
        let mut data = Vec::new();
        for (mode, name, id) in entries {
            data.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            data.extend_from_slice(id.as_bytes());
        }
        object(Kind::Tree, data)
    }

    /// A commit of `tree`.
    fn commit(tree: ObjectId) -> (ObjectId, Vec<u8>) {
        let data = format!("tree {tree}\nauthor a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\nm\n");
        object(Kind::Commit, data.into_bytes())
    }

    /// A blob, a tree holding it as `file`, and a commit of that tree.
    fn one_file() -> [(ObjectId, Vec<u8>); 3] {
        let blob = object(Kind::Blob, b"x\n".to_vec());
        let tree = tree(&[("100644", "file", blob.0)]);
        let commit = commit(tree.0);
        [blob, tree, commit]
    }

    /// A commit's closure is complete once its tree and all in it are found, also when a
    /// subtree came first (read again from the objects kept); one that was not kept loses
    /// the closure.
    #[test]
    fn tips_follow_a_commit_to_everything_in_its_tree() {
        let [(blob_id, blob), (sub_id, sub), _] = one_file();
        let (root_id, root) = tree(&[("40000", "dir", sub_id)]);
        let (commit_id, commit) = commit(root_id);
        for keep_sub in [true, false] {
            let mut kept = Kept::new(1 << 20);
            let mut tips = Tips::new([commit_id]);
            // The subtree first (the base of a delta written earlier), then the rest.
            tips.found((sub_id, 10), Kind::Tree, &sub, HASH, &mut kept);
            if keep_sub {
                kept.put(10, Kind::Tree, sub.clone());
            }
            tips.found((commit_id, 20), Kind::Commit, &commit, HASH, &mut kept);
            assert!(!tips.complete());
            tips.found((root_id, 30), Kind::Tree, &root, HASH, &mut kept);
            assert!(!tips.complete());
            tips.found((blob_id, 40), Kind::Blob, &blob, HASH, &mut kept);
            assert_eq!(tips.complete(), keep_sub);
        }
    }

    /// What was found is to be given meanwhile once nothing else is waited for: a commit
    /// not found yet (an id the pack may lack) or a closure lost does not hold it back, a
    /// tree still to come does.
    #[test]
    fn what_was_found_is_given_once_only_the_unfindable_is_waited_for() {
        let [(blob_id, blob), (sub_id, sub), _] = one_file();
        let (root_id, root) = tree(&[("40000", "dir", sub_id)]);
        let (commit_id, commit) = commit(root_id);
        let lacked = ObjectId::from_bytes_or_panic(&[0x5a; 20]);
        let tips = |wants: &[ObjectId]| Tips::new(wants.iter().copied()).meanwhile(|_| {});

        // A want the pack lacks.
        let mut kept = Kept::new(1 << 20);
        let mut waiting = tips(&[commit_id, lacked]);
        waiting.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
        assert!(!waiting.posts_now(), "its tree still to come");
        waiting.found((root_id, 20), Kind::Tree, &root, HASH, &mut kept);
        waiting.found((sub_id, 30), Kind::Tree, &sub, HASH, &mut kept);
        assert!(!waiting.posts_now(), "a blob still to come");
        waiting.found((blob_id, 40), Kind::Blob, &blob, HASH, &mut kept);
        assert!(waiting.posts_now() && !waiting.complete());

        // A subtree found first and no longer kept: the closure is lost.
        let mut kept = Kept::new(1 << 20);
        let mut lost = tips(&[commit_id]);
        lost.found((sub_id, 10), Kind::Tree, &sub, HASH, &mut kept);
        lost.found((commit_id, 20), Kind::Commit, &commit, HASH, &mut kept);
        lost.found((root_id, 30), Kind::Tree, &root, HASH, &mut kept);
        assert!(lost.lost() && !lost.complete());
        assert!(lost.posts_now());

        // Nothing found: nothing to give.
        assert!(!tips(&[lacked]).posts_now());
    }

    /// A commit wanted after its entry went by is followed from its tree on, read again
    /// from the objects kept; a tree no longer kept is not waited for, and does not keep
    /// the others from being complete.
    #[test]
    fn a_commit_wanted_after_it_went_by_is_followed_from_what_is_kept() {
        let [(blob_id, blob), (tree_id, tree), (commit_id, commit)] = one_file();
        for kept_tree in [true, false] {
            let mut kept = Kept::new(1 << 20);
            let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tips = Tips::new([]).asking({
                let later = std::sync::Arc::clone(&later);
                move || later.lock().unwrap().clone()
            });
            tips.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
            tips.found((tree_id, 20), Kind::Tree, &tree, HASH, &mut kept);
            if kept_tree {
                kept.put(20, Kind::Tree, tree.clone());
            }
            tips.ask(&mut kept, HASH);
            assert!(tips.complete(), "nothing wanted yet");
            later.lock().unwrap().push(commit_id);
            tips.ask(&mut kept, HASH);
            // Followed, its blob not found yet; or gone, and not waited for.
            assert_eq!(tips.complete(), !kept_tree);
            tips.found((blob_id, 30), Kind::Blob, &blob, HASH, &mut kept);
            assert!(tips.complete());
        }
    }

    /// A subtree gone from the objects kept when a commit wanted late needed it is needed
    /// again by a commit wanted from the start: the closure of that one is lost, not told
    /// complete without it.
    #[test]
    fn a_tree_gone_for_a_late_commit_is_still_missed_by_the_others() {
        let [_, (sub_id, sub), _] = one_file();
        let (late_tree_id, late_tree) = tree(&[("40000", "dir", sub_id)]);
        let (tree_id, tree) = tree(&[("40000", "other", sub_id)]);
        let (late_id, late) = commit(late_tree_id);
        let (wanted_id, wanted) = commit(tree_id);
        let mut kept = Kept::new(1 << 20);
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tips = Tips::new([wanted_id]).asking({
            let later = std::sync::Arc::clone(&later);
            move || later.lock().unwrap().clone()
        });
        // The subtree went by, and is no longer kept; the late commit's tree is.
        tips.found((sub_id, 10), Kind::Tree, &sub, HASH, &mut kept);
        tips.found((late_tree_id, 20), Kind::Tree, &late_tree, HASH, &mut kept);
        kept.put(20, Kind::Tree, late_tree.clone());
        tips.found((late_id, 30), Kind::Commit, &late, HASH, &mut kept);
        tips.found((wanted_id, 40), Kind::Commit, &wanted, HASH, &mut kept);
        later.lock().unwrap().push(late_id);
        tips.ask(&mut kept, HASH);
        assert!(
            !tips.complete(),
            "the wanted commit's tree is still to come"
        );
        tips.found((tree_id, 50), Kind::Tree, &tree, HASH, &mut kept);
        assert!(
            !tips.complete(),
            "its subtree cannot be read again: {tips:?}"
        );
    }

    /// Trees are settled once every commit wanted and every tree of their closures is found,
    /// blobs still to come or not: not before the commit, nor while a subtree is awaited,
    /// and no longer once a commit not found yet is wanted.
    #[test]
    fn trees_settle_once_the_closures_trees_are_found() {
        let [(blob_id, blob), (sub_id, sub), _] = one_file();
        let (root_id, root) = tree(&[("40000", "dir", sub_id)]);
        let (commit_id, commit) = commit(root_id);
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tips = Tips::new([commit_id]).asking({
            let later = std::sync::Arc::clone(&later);
            move || later.lock().unwrap().clone()
        });
        let mut kept = Kept::new(1 << 20);
        assert!(!tips.trees_settled(), "the commit is still to come");
        tips.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
        assert!(!tips.trees_settled(), "its tree is awaited");
        tips.found((root_id, 20), Kind::Tree, &root, HASH, &mut kept);
        assert!(!tips.trees_settled(), "a subtree is awaited");
        tips.found((sub_id, 30), Kind::Tree, &sub, HASH, &mut kept);
        assert!(tips.trees_settled(), "only a blob is awaited");
        assert!(!tips.complete());
        later
            .lock()
            .unwrap()
            .push(ObjectId::from_bytes_or_panic(&[0x5a; 20]));
        tips.ask(&mut kept, HASH);
        assert!(
            !tips.trees_settled(),
            "a commit wanted late is still to come"
        );
        tips.found((blob_id, 40), Kind::Blob, &blob, HASH, &mut kept);
        assert!(!tips.trees_settled());
    }

    /// A commit wanted late, once trees were read past, does not hold back the closures
    /// wanted before: its tree, not found yet, may have been read past, and is not waited
    /// for. Should it come all the same, it is followed (and trees are decoded meanwhile).
    #[test]
    fn a_late_commit_whose_tree_may_be_read_past_holds_nothing_back() {
        let [(blob_id, blob), (tree_id, tree), (commit_id, commit)] = one_file();
        let (late_blob_id, late_blob) = object(Kind::Blob, b"late\n".to_vec());
        let (late_tree_id, late_tree) = self::tree(&[("100644", "late", late_blob_id)]);
        let (late_id, late) = self::commit(late_tree_id);
        for comes in [false, true] {
            let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tips = Tips::new([commit_id]).asking({
                let later = std::sync::Arc::clone(&later);
                move || later.lock().unwrap().clone()
            });
            let mut kept = Kept::new(1 << 20);
            tips.found((late_id, 5), Kind::Commit, &late, HASH, &mut kept);
            tips.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
            tips.found((tree_id, 20), Kind::Tree, &tree, HASH, &mut kept);
            assert!(tips.trees_settled());
            tips.read_past_trees();
            later.lock().unwrap().push(late_id);
            tips.ask(&mut kept, HASH);
            assert!(!tips.trees_settled(), "the late tree is hoped for");
            if comes {
                tips.found((late_tree_id, 30), Kind::Tree, &late_tree, HASH, &mut kept);
                assert!(tips.trees_settled());
            }
            tips.found((blob_id, 40), Kind::Blob, &blob, HASH, &mut kept);
            assert_eq!(
                tips.complete(),
                !comes,
                "the late blob is waited for once named"
            );
            if comes {
                tips.found((late_blob_id, 50), Kind::Blob, &late_blob, HASH, &mut kept);
                assert!(tips.complete());
                let closure = tips.closure().unwrap();
                assert!(
                    [late_tree_id, late_blob_id]
                        .iter()
                        .all(|id| closure.contains(id))
                );
            }
        }
    }

    /// Past the most objects waited for at once, the closure is lost rather than more
    /// remembered.
    #[test]
    fn what_is_waited_for_is_bounded() {
        let [(blob_id, _), ..] = one_file();
        let (other_id, _) = object(Kind::Blob, b"y\n".to_vec());
        let (tree_id, tree) = tree(&[("100644", "a", blob_id), ("100644", "b", other_id)]);
        let (commit_id, commit) = commit(tree_id);
        for most in [2, 1] {
            let mut kept = Kept::new(1 << 20);
            let mut tips = Tips::new([commit_id]);
            tips.most_pending = most;
            tips.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
            tips.found((tree_id, 20), Kind::Tree, &tree, HASH, &mut kept);
            assert_eq!(tips.pending.len(), 2.min(most));
            assert_eq!(tips.lost, most < 2);
        }
    }

    /// A tree named by many (each level of a "git bomb" names the one below twice, found
    /// before any is needed) is followed once: linear, not exponential, in the trees.
    #[test]
    fn a_tree_named_by_many_is_followed_once() {
        let mut kept = Kept::new(1 << 20);
        let mut tips = Tips::default();
        let [(blob_id, blob), ..] = one_file();
        tips.found((blob_id, 1), Kind::Blob, &blob, HASH, &mut kept);
        let mut below = (blob_id, "100644");
        let levels = 40u64;
        for level in 0..levels {
            let (tree_id, tree) = tree(&[(below.1, "a", below.0), (below.1, "b", below.0)]);
            let offset = 10 + level;
            tips.found((tree_id, offset), Kind::Tree, &tree, HASH, &mut kept);
            kept.put(offset, Kind::Tree, tree);
            below = (tree_id, "40000");
        }
        let (commit_id, commit) = commit(below.0);
        tips.want(commit_id, true);
        tips.found((commit_id, 100), Kind::Commit, &commit, HASH, &mut kept);
        assert!(tips.complete());
        assert_eq!(tips.followed, levels as usize);
    }

    /// A tag wanted is followed to the commit it tags, found before or after it; an id
    /// found to be a blob is followed no further.
    #[test]
    fn a_tag_wanted_is_followed_to_its_commit() {
        let [(blob_id, blob), (tree_id, tree), (commit_id, commit)] = one_file();
        let tag =
            format!("object {commit_id}\ntype commit\ntag v1\ntagger a <a@b> 1 +0000\n\nv1\n");
        let (tag_id, tag) = object(Kind::Tag, tag.into_bytes());
        for commit_first in [false, true] {
            let mut kept = Kept::new(1 << 20);
            let mut tips = Tips::new([tag_id, blob_id]);
            // A blob wanted: found, nothing to follow.
            tips.found((blob_id, 5), Kind::Blob, &blob, HASH, &mut kept);
            if commit_first {
                tips.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
                tips.found((tag_id, 20), Kind::Tag, &tag, HASH, &mut kept);
            } else {
                tips.found((tag_id, 20), Kind::Tag, &tag, HASH, &mut kept);
                assert!(!tips.complete(), "the tagged commit is waited for");
                tips.found((commit_id, 10), Kind::Commit, &commit, HASH, &mut kept);
            }
            assert!(!tips.complete(), "its tree is waited for");
            tips.found((tree_id, 30), Kind::Tree, &tree, HASH, &mut kept);
            assert!(tips.complete(), "{tips:?}");
        }
        // The tagged commit's tree went by before the tag, and is no longer kept: lost.
        let mut kept = Kept::new(1 << 20);
        let mut tips = Tips::new([tag_id]);
        tips.found((tree_id, 10), Kind::Tree, &tree, HASH, &mut kept);
        tips.found((commit_id, 20), Kind::Commit, &commit, HASH, &mut kept);
        tips.found((tag_id, 30), Kind::Tag, &tag, HASH, &mut kept);
        tips.found((blob_id, 40), Kind::Blob, &blob, HASH, &mut kept);
        assert!(!tips.complete(), "{tips:?}");
    }

    /// An object of a pack: its id, kind and data.
    type Entry = (ObjectId, Kind, Vec<u8>);

    /// A history of `n` commits, oldest first, each of its own tree of its own blob: the
    /// objects of each, in the order `git pack-objects` writes them (all commits, newest
    /// first, then each one's tree and blob).
    fn history(n: usize) -> (Vec<ObjectId>, Vec<Entry>) {
        let mut commits: Vec<(ObjectId, Vec<u8>)> = Vec::new();
        let mut rest = Vec::new();
        for i in 0..n {
            let blob = object(Kind::Blob, format!("{i}\n").into_bytes());
            let tree = tree(&[("100644", "file", blob.0)]);
            let parent = (commits.last()).map_or(String::new(), |(id, _)| format!("parent {id}\n"));
            let data = format!(
                "tree {}\n{parent}author a <a@b> {i} +0000\ncommitter a <a@b> {i} +0000\n\nm\n",
                tree.0
            );
            commits.push(object(Kind::Commit, data.into_bytes()));
            rest.push((tree.0, Kind::Tree, tree.1));
            rest.push((blob.0, Kind::Blob, blob.1));
        }
        let ids = commits.iter().map(|(id, _)| *id).collect();
        let mut order: Vec<_> = (commits.into_iter().rev())
            .map(|(id, data)| (id, Kind::Commit, data))
            .collect();
        order.extend(rest.into_iter().rev());
        (ids, order)
    }

    /// Each of `objects` found by `tips`, in order.
    fn found_all(tips: &mut Tips, objects: &[Entry]) {
        let mut kept = Kept::new(1 << 20);
        for (at, (id, kind, data)) in objects.iter().enumerate() {
            tips.found((*id, at as u64 * 10), *kind, data, HASH, &mut kept);
        }
    }

    /// A walk from a want follows each commit down to the have, and [`BELOW_HAVES`]
    /// generations below it, each with its closure: the closures hold those commits and
    /// their trees and blobs, and none below. A walk of too many commits stops.
    #[test]
    fn a_walk_follows_the_history_down_to_the_haves_and_a_few_below() {
        let (commits, objects) = history(14);
        let (tip, have) = (commits[13], commits[11]);
        let below = usize::from(BELOW_HAVES);
        let closure_of = |tips: &Tips| -> Vec<usize> {
            let closure = tips.closure().expect("not lost");
            (0..commits.len())
                .filter(|i| closure.contains(&commits[*i]))
                .collect()
        };
        let wants = Wants {
            tips: vec![tip],
            walked: vec![tip],
            haves: vec![have],
            deep: Vec::new(),
        };
        let mut tips = Tips::default().wanting(wants.clone());
        found_all(&mut tips, &objects);
        assert!(tips.complete(), "{tips:?}");
        let expected: Vec<usize> = (11 - below..14).collect();
        assert_eq!(closure_of(&tips), expected);
        // The trees of those commits; the blobs of those above the have alone (below, what
        // is in the trees is the client's).
        let closure = tips.closure().unwrap();
        for (i, (id, kind, _)) in objects[commits.len()..].iter().enumerate() {
            // Trees and blobs newest first: the `i / 2`th newest commit's.
            let of = commits.len() - 1 - i / 2;
            let taken = match kind {
                Kind::Tree => expected.contains(&of),
                _ => of > 11,
            };
            assert_eq!(closure.contains(id), taken, "commit {of}'s {kind}");
        }

        // Nothing walked from the tip: the have is followed all the same, and below it, not
        // the commit between.
        let mut alone = Tips::default().wanting(Wants {
            walked: Vec::new(),
            ..wants.clone()
        });
        found_all(&mut alone, &objects);
        assert!(alone.complete());
        let unwalked: Vec<usize> = (11 - below..12).chain([13]).collect();
        assert_eq!(closure_of(&alone), unwalked);
        // Nor any have: the tip alone.
        let mut tip_alone = Tips::new([tip]);
        found_all(&mut tip_alone, &objects);
        assert_eq!(closure_of(&tip_alone), [13]);

        // Asked for once the scan began, before the commits went by: the same.
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Wants::default()));
        let mut late = Tips::default().asking({
            let asked = std::sync::Arc::clone(&asked);
            move || asked.lock().unwrap().clone()
        });
        *asked.lock().unwrap() = wants.clone();
        late.ask(&mut Kept::new(1 << 20), HASH);
        found_all(&mut late, &objects);
        assert_eq!(closure_of(&late), expected);

        // Walks of three commits at most: the want and two commits below it.
        let mut bounded = Tips::default().walking_at_most(3).wanting(wants.clone());
        found_all(&mut bounded, &objects);
        assert!(bounded.complete());
        assert_eq!(closure_of(&bounded), [11, 12, 13]);
        // Room enough to reach the have, not to go below it: no want's walk ran out (the
        // answer reads those trees should they be found, and walks on without them).
        assert!(!bounded.walks_ran_out());
        // A have further down than the walks go: told as soon as the walk from the want
        // is refused a commit, and the walks shared say the history to that have is cut,
        // not the history to a have above the commit refused.
        let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let walks = std::sync::Arc::new(Walks::default());
        let mut far = Tips::default()
            .walking_at_most(3)
            .wanting(Wants {
                haves: vec![commits[5]],
                ..wants.clone()
            })
            .sharing_walks(std::sync::Arc::clone(&walks))
            .when_walks_run_out({
                let told = std::sync::Arc::clone(&told);
                move || {
                    told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        let mut kept = Kept::new(1 << 20);
        for (at, (id, kind, data)) in objects.iter().enumerate() {
            far.found((*id, at as u64 * 10), *kind, data, HASH, &mut kept);
            // Within the commits, before any tree: once the third commit down is found,
            // its parent is the first the walk has no room for, and the last. Told then,
            // and again only when the walks record more (the have found, with its parents).
            let ran_out = at >= 2;
            assert_eq!(far.walks_ran_out(), ran_out, "after entry {at}");
            let expected = match at {
                0 | 1 => 0,
                2..8 => 1,
                _ => 2,
            };
            assert_eq!(
                told.load(std::sync::atomic::Ordering::Relaxed),
                expected,
                "after entry {at}"
            );
            assert_eq!(
                walks.cut(&[tip], &[commits[5]]),
                ran_out,
                "after entry {at}"
            );
            assert!(!walks.cut(&[tip], &[commits[12]]));
        }
        assert!(far.complete());
        assert_eq!(closure_of(&far), [11, 12, 13]);
        // The commit refused is the have: cut too (its trees are not followed).
        assert!(walks.cut(&[tip], &[commits[10]]));
        assert!(!walks.cut(&[tip], &[commits[11]]));
        // Told at once when one was refused before.
        let again = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let far = far.when_walks_run_out({
            let again = std::sync::Arc::clone(&again);
            move || {
                again.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        assert_eq!(
            again.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{far:?}"
        );
        // With room for it all, none ran out.
        assert!(!tips.walks_ran_out());
    }

    /// What a want's walk has no room for is told once for each object found that refuses
    /// commits (a merge whose two parents are refused), and again when the walks record more
    /// (a have found, with its parents); a fetch is cut by either parent refused; a want that
    /// arrives with no room left at all is refused itself.
    #[test]
    fn what_a_walk_has_no_room_for_is_told() {
        let commit_of = |parents: &[ObjectId], time: usize| {
            let parents: String = parents.iter().map(|p| format!("parent {p}\n")).collect();
            let data = format!(
                "tree {}\n{parents}author a <a@b> {time} +0000\ncommitter a <a@b> {time} +0000\n\nm\n",
                tree(&[]).0
            );
            object(Kind::Commit, data.into_bytes())
        };
        let base = commit_of(&[], 1);
        let (left, right) = (commit_of(&[base.0], 2), commit_of(&[base.0], 3));
        let merge = commit_of(&[left.0, right.0], 4);
        let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || told.load(std::sync::atomic::Ordering::Relaxed);
        let walks = std::sync::Arc::new(Walks::default());
        let mut tips = Tips::default()
            .walking_at_most(1)
            .sharing_walks(std::sync::Arc::clone(&walks))
            .when_walks_run_out({
                let told = std::sync::Arc::clone(&told);
                move || {
                    told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .wanting(Wants {
                tips: vec![merge.0],
                walked: vec![merge.0],
                haves: vec![base.0],
                deep: Vec::new(),
            });
        let mut kept = Kept::new(1 << 20);
        let changes = walks.changes();
        for (at, (id, data)) in [&merge, &right, &left, &base].into_iter().enumerate() {
            tips.found((*id, at as u64 * 10), Kind::Commit, data, HASH, &mut kept);
            // Asked for again: nothing more to tell.
            tips.add(Wants {
                walked: vec![merge.0],
                ..Wants::default()
            });
            let expected = match at {
                0..3 => 1,
                _ => 2,
            };
            assert_eq!(count(), expected, "after entry {at}");
        }
        assert!(walks.changes() > changes);
        assert!(walks.cut(&[merge.0], &[base.0]));
        assert!(walks.cut(&[merge.0], &[left.0]), "through the right parent");
        assert!(!walks.cut(&[base.0], &[]), "nothing walked from there");
        // No room left for another want: it is refused as it is asked for.
        let other = commit_of(&[base.0], 5);
        tips.add(Wants {
            walked: vec![other.0],
            ..Wants::default()
        });
        assert_eq!(count(), 3);
        assert!(walks.cut(&[other.0], &[base.0]));
    }

    /// A walk from a want that goes round its own have (a merge of a branch from below it)
    /// and on below it, where it has no room left, does not cut that fetch: what is below
    /// the have, as far as the walks know, is the client's. The same commit refused cuts a
    /// fetch whose have is elsewhere.
    #[test]
    fn a_commit_refused_below_a_fetch_s_own_have_does_not_cut_it() {
        // tip merges have and side; side forks from fork, fork's parent was refused.
        let oid = |n: u8| ObjectId::from_bytes_or_panic(&[n; 20]);
        let (tip, have, side, fork, refused, root) =
            (oid(1), oid(2), oid(3), oid(4), oid(5), oid(6));
        let walks = Walks::new(
            [
                (tip, vec![have, side]),
                (have, vec![fork]),
                (side, vec![fork]),
                (fork, vec![refused]),
                (refused, vec![root]),
            ],
            [refused],
        );
        assert!(!walks.cut(&[tip], &[have]));
        assert!(walks.cut(&[tip], &[oid(9)]));
        // The have itself refused: its trees are not followed, cut.
        let at_the_have = Walks::new([(tip, vec![have])], [have]);
        assert!(at_the_have.cut(&[tip], &[have]));
    }

    /// A walk from a want that reaches a commit a walk below another client's have took
    /// first goes on below it, down to its own have: a merge of that have and of a branch
    /// from further down, in date order as `git pack-objects` writes commits (the branch's
    /// commit between the line's).
    #[test]
    fn a_walk_from_a_want_goes_on_where_a_walk_below_a_have_stopped() {
        let commit_of = |tree: ObjectId, parents: &[ObjectId], time: usize| {
            let parents: String = parents.iter().map(|p| format!("parent {p}\n")).collect();
            let data = format!(
                "tree {tree}\n{parents}author a <a@b> {time} +0000\ncommitter a <a@b> {time} +0000\n\nm\n"
            );
            object(Kind::Commit, data.into_bytes())
        };
        let (empty, empty_data) = tree(&[]);
        let mut line: Vec<(ObjectId, Vec<u8>)> = Vec::new();
        for i in 0..21 {
            let parents: Vec<ObjectId> = line.last().map(|(id, _)| *id).into_iter().collect();
            line.push(commit_of(empty, &parents, i * 10));
        }
        // The side branch from 8 generations below the other client's have (line[20]).
        let side = commit_of(empty, &[line[12].0], 125);
        let merge = commit_of(empty, &[line[20].0, side.0], 300);
        let mut kept = Kept::new(1 << 20);
        let mut tips = Tips::default().wanting(Wants {
            tips: vec![merge.0],
            walked: vec![merge.0],
            haves: vec![line[20].0, line[2].0],
            deep: Vec::new(),
        });
        let mut at = 0;
        let mut found = |tips: &mut Tips, (id, data): &(ObjectId, Vec<u8>), kind| {
            at += 10;
            tips.found((*id, at), kind, data, HASH, &mut kept);
        };
        found(&mut tips, &merge, Kind::Commit);
        for commit in line[13..].iter().rev() {
            found(&mut tips, commit, Kind::Commit);
        }
        found(&mut tips, &side, Kind::Commit);
        for commit in line[..13].iter().rev() {
            found(&mut tips, commit, Kind::Commit);
        }
        found(&mut tips, &(empty, empty_data), Kind::Tree);
        assert!(tips.complete(), "{tips:?}");
        let closure = tips.closure().unwrap();
        let walked: Vec<usize> = (0..line.len())
            .filter(|i| closure.contains(&line[*i].0))
            .collect();
        // From the want's walk through the side branch: every commit down to its own have,
        // and 8 below it (to the root).
        assert_eq!(walked, (0..21).collect::<Vec<_>>());
    }

    /// A have's closure is followed for its trees alone; a tree of it a want's closure needs
    /// too is followed again, whole, from the objects kept (or the closure is lost).
    #[test]
    fn a_tree_followed_for_a_have_is_followed_whole_for_a_want() {
        let [(blob_id, blob), (sub_id, sub), _] = one_file();
        let (have_root, have_root_data) = tree(&[("40000", "dir", sub_id)]);
        let other = object(Kind::Blob, b"other\n".to_vec());
        let (want_root, want_root_data) =
            tree(&[("40000", "dir", sub_id), ("100644", "other", other.0)]);
        let (have_id, have) = commit(have_root);
        let (want_id, want) = commit(want_root);
        for kept_sub in [true, false] {
            let mut kept = Kept::new(1 << 20);
            let mut tips = Tips::default().wanting(Wants {
                haves: vec![have_id],
                ..Wants::default()
            });
            tips.found((have_id, 10), Kind::Commit, &have, HASH, &mut kept);
            tips.found(
                (have_root, 20),
                Kind::Tree,
                &have_root_data,
                HASH,
                &mut kept,
            );
            tips.found((sub_id, 30), Kind::Tree, &sub, HASH, &mut kept);
            if kept_sub {
                kept.put(30, Kind::Tree, sub.clone());
            }
            assert!(tips.complete(), "the have's blob is not waited for");
            assert!(!tips.closure().unwrap().contains(&blob_id));
            tips.add(Wants::from(vec![want_id]));
            tips.found((want_id, 40), Kind::Commit, &want, HASH, &mut kept);
            tips.found(
                (want_root, 50),
                Kind::Tree,
                &want_root_data,
                HASH,
                &mut kept,
            );
            tips.found((other.0, 60), Kind::Blob, &other.1, HASH, &mut kept);
            if !kept_sub {
                assert!(tips.lost(), "{tips:?}");
                continue;
            }
            assert!(
                !tips.complete(),
                "the blob in the shared tree is waited for"
            );
            tips.found((blob_id, 70), Kind::Blob, &blob, HASH, &mut kept);
            assert!(tips.complete());
            assert!(tips.closure().unwrap().contains(&blob_id));
        }
    }

    /// A commit a walk below a have took is followed for its trees alone; wanted as a tip
    /// after it was found (a shallow clone of it), its closure is followed whole.
    #[test]
    fn a_commit_below_a_have_wanted_as_a_tip_is_followed_whole() {
        let (commits, objects) = history(4);
        let mut kept = Kept::new(1 << 20);
        let mut tips = Tips::default().wanting(Wants {
            haves: vec![commits[3]],
            ..Wants::default()
        });
        // The commits come first, newest first: the have, then those below it.
        for (at, (id, kind, data)) in objects[..4].iter().enumerate() {
            tips.found((*id, at as u64 * 10), *kind, data, HASH, &mut kept);
        }
        tips.add(Wants::from(vec![commits[2]]));
        for (at, (id, kind, data)) in objects[4..].iter().enumerate() {
            tips.found((*id, 100 + at as u64 * 10), *kind, data, HASH, &mut kept);
        }
        assert!(tips.complete(), "{tips:?}");
        let closure = tips.closure().unwrap();
        let blob_of = |i: usize| {
            // Trees and blobs newest first, each commit's blob before its tree.
            objects[4 + 2 * (3 - i)].0
        };
        assert!(closure.contains(&blob_of(2)), "the tip's blob");
        assert!(
            !closure.contains(&blob_of(1)),
            "not the blob below the have"
        );
        assert!(!closure.contains(&blob_of(3)), "nor the have's");
    }

    /// A shallow clone deeper than one follows its want's history to its depth, each commit
    /// with its closure, whether asked for before the commits come or once they went by
    /// (through the parents kept ahead), and no further; within the walks' room only.
    #[test]
    fn a_deeper_shallow_clone_follows_the_history_to_its_depth() {
        let (commits, objects) = history(10);
        let tip = commits[9];
        let deep = |depth: u32| Wants {
            deep: vec![(tip, depth)],
            ..Wants::default()
        };
        let followed = |tips: &Tips| -> Vec<usize> {
            let closure = tips.closure().expect("not lost");
            (0..commits.len())
                .filter(|i| closure.contains(&commits[*i]))
                .collect()
        };
        let trees = |tips: &Tips| {
            let closure = tips.closure().expect("not lost");
            (objects.iter())
                .filter(|(id, kind, _)| *kind == Kind::Tree && closure.contains(id))
                .count()
        };
        // Asked for before the pack is read.
        let mut early = Tips::default().wanting(deep(3));
        found_all(&mut early, &objects);
        assert!(early.complete());
        assert_eq!(followed(&early), vec![7, 8, 9]);
        assert_eq!(trees(&early), 3);
        // Depth one is the commit alone, as a tip is.
        let mut one = Tips::default().wanting(deep(1));
        found_all(&mut one, &objects);
        assert_eq!((followed(&one), trees(&one)), (vec![9], 1));
        // Asked for once the commits went by: through the parents kept of the first found.
        let mut late = Tips::default();
        let (commits_first, rest) = objects.split_at(commits.len());
        found_all(&mut late, commits_first);
        late.add(deep(4));
        let mut kept = Kept::new(1 << 20);
        for (at, (id, kind, data)) in rest.iter().enumerate() {
            late.found((*id, (at + 100) as u64 * 10), *kind, data, HASH, &mut kept);
        }
        assert!(late.complete());
        assert_eq!(followed(&late), vec![6, 7, 8, 9]);
        assert_eq!(trees(&late), 4);
        // Deeper again later: followed further, the commits taken once.
        late.add(deep(5));
        assert_eq!(followed(&late), vec![5, 6, 7, 8, 9]);
        assert_eq!(late.walk_left, MOST_WALKED - 5);
        // Room for two commits: the third is not followed (the answer needing it waits).
        let mut narrow = Tips::default().walking_at_most(2).wanting(deep(3));
        found_all(&mut narrow, &objects);
        assert_eq!(followed(&narrow), vec![8, 9]);
        // Room for eight: the last two are left to walks from wants.
        let mut reserved = Tips::default().walking_at_most(8).wanting(deep(10));
        found_all(&mut reserved, &objects);
        assert_eq!(followed(&reserved), vec![4, 5, 6, 7, 8, 9]);
        // A walk from a want down to the root, two commits: in that last quarter.
        reserved.add(Wants {
            tips: vec![commits[1]],
            walked: vec![commits[1]],
            ..Wants::default()
        });
        assert_eq!(reserved.walked(), 8);
        assert!(!reserved.walks_ran_out());
        // A want's walk through the depth's commits (paid for already) to its have, once the
        // depths left only the last quarter: the have is taken from that quarter, nothing
        // is refused, the fetch's history is not cut.
        let walks = std::sync::Arc::new(Walks::default());
        let mut both = Tips::default()
            .walking_at_most(8)
            .sharing_walks(std::sync::Arc::clone(&walks))
            .wanting(deep(10));
        found_all(&mut both, &objects);
        both.add(Wants {
            tips: vec![tip],
            walked: vec![tip],
            haves: vec![commits[3]],
            ..Wants::default()
        });
        assert_eq!(both.walked(), 7);
        assert!(!both.walks_ran_out());
        assert!(!walks.cut(&[tip], &[commits[3]]));
    }

    /// A walk asked for once every commit went by goes through the parents kept ahead, as
    /// far as they were kept, and shares what it goes through: run out of room, it cuts a
    /// fetch whose have lies further down; with the parents of the newest commit alone kept,
    /// it stops silently below it. The haves known by then are walked below too, leaving a
    /// quarter of the room to walks from wants.
    #[test]
    fn a_walk_asked_for_late_goes_through_the_parents_kept_ahead() {
        let (commits, objects) = history(14);
        let tip = commits[13];
        // The tip walked down to a have far below it.
        let far = || Wants {
            tips: vec![tip],
            walked: vec![tip],
            haves: vec![commits[5]],
            ..Wants::default()
        };
        let closure_of = |tips: &Tips| -> Vec<usize> {
            let closure = tips.closure().expect("not lost");
            (0..commits.len())
                .filter(|i| closure.contains(&commits[*i]))
                .collect()
        };
        let commits_found = |tips: &mut Tips| {
            let mut kept = Kept::new(1 << 20);
            for (at, (id, kind, data)) in objects.iter().enumerate() {
                if *kind == Kind::Commit {
                    tips.found((*id, at as u64 * 10), *kind, data, HASH, &mut kept);
                }
            }
        };
        // Room for three commits, the have far below: cut, as soon as it is asked for.
        let walks = std::sync::Arc::new(Walks::default());
        let mut late = Tips::default()
            .walking_at_most(3)
            .sharing_walks(std::sync::Arc::clone(&walks));
        commits_found(&mut late);
        assert!(!walks.cut(&[tip], &[commits[5]]), "nothing walked yet");
        late.add(far());
        assert!(late.walks_ran_out());
        assert!(walks.cut(&[tip], &[commits[5]]));
        assert!(!walks.cut(&[tip], &[commits[12]]));

        // The parents of the newest alone kept: through it, then no further, nothing refused.
        let mut edge = Tips {
            ahead_left: 1,
            ..Tips::default()
        };
        commits_found(&mut edge);
        edge.add(far());
        assert_eq!(edge.walked(), 2);
        assert!(!edge.walks_ran_out());
        assert_eq!((late.walked_late(), edge.walked_late()), (1, 1));
        // Asked for again: not a walk of its own.
        edge.add(far());
        assert_eq!(edge.walked_late(), 1);

        // The have found before it was asked for is walked below, within what the walks
        // from wants leave: of eight, two are theirs.
        let mut below = Tips::default().walking_at_most(8);
        commits_found(&mut below);
        below.add(Wants {
            tips: vec![tip],
            walked: vec![tip],
            haves: vec![commits[11]],
            deep: Vec::new(),
        });
        let mut kept = Kept::new(1 << 20);
        for (at, (id, kind, data)) in objects.iter().enumerate() {
            if *kind != Kind::Commit {
                below.found((*id, at as u64 * 10), *kind, data, HASH, &mut kept);
            }
        }
        assert!(below.complete(), "{below:?}");
        assert_eq!(below.walked(), 6);
        assert_eq!(closure_of(&below), [8, 9, 10, 11, 12, 13]);
    }

    /// Commits found before a walk was first asked for are walked through, their parents
    /// kept for the first commits found; past those, they are not walked from. A walked tag
    /// is walked on from the commit it tags.
    #[test]
    fn a_walk_goes_through_what_was_found_before_it_was_asked_for() {
        let (commits, objects) = history(4);
        let tag = format!(
            "object {}\ntype commit\ntag v1\ntagger a <a@b> 1 +0000\n\nv1\n",
            commits[3]
        );
        let (tag_id, tag) = object(Kind::Tag, tag.into_bytes());
        let wants = Wants {
            tips: vec![tag_id],
            walked: vec![tag_id],
            haves: vec![commits[1]],
            deep: Vec::new(),
        };
        let mut kept = Kept::new(1 << 20);
        let mut tips = Tips::default().wanting(wants.clone());
        tips.found((tag_id, 5), Kind::Tag, &tag, HASH, &mut kept);
        found_all(&mut tips, &objects);
        let closure = tips.closure().unwrap();
        assert!(commits.iter().all(|id| closure.contains(id)), "{tips:?}");

        // Asked for once the newest went by: walked through it, its parents kept.
        let late_by = |ahead: usize| {
            let mut late = Tips {
                ahead_left: ahead,
                ..Tips::default()
            };
            let mut kept = Kept::new(1 << 20);
            for (at, (id, kind, data)) in objects.iter().enumerate() {
                if at == 1 {
                    late.add(wants.clone());
                    late.found((tag_id, 5), Kind::Tag, &tag, HASH, &mut kept);
                }
                late.found((*id, at as u64 * 10), *kind, data, HASH, &mut kept);
            }
            assert!(late.complete(), "{late:?}");
            late.closure().unwrap()
        };
        let closure = late_by(MOST_PARENTS_AHEAD);
        assert!(commits.iter().all(|id| closure.contains(id)));
        // No parents kept ahead: nothing below the newest is walked.
        let closure = late_by(0);
        assert!(closure.contains(&commits[3]) && !closure.contains(&commits[2]));
    }

    #[test]
    fn the_least_recently_used_go_first() {
        let budget = 2 * KEPT_OVERHEAD + 10;
        let mut kept = Kept::new(budget);
        kept.put(1, Kind::Blob, vec![0; 4]);
        kept.put(2, gix_object::Kind::Blob, vec![0; 4]);
        assert!(kept.get(1).is_some());
        kept.put(3, gix_object::Kind::Blob, vec![0; 4]);
        assert!(kept.get(2).is_none(), "the least recently used went");
        assert!(kept.has(1) && kept.has(3) && !kept.has(2));
        assert!(kept.get(1).is_some() && kept.get(3).is_some());
        kept.put(4, gix_object::Kind::Blob, vec![0; budget]);
        assert!(kept.get(4).is_none(), "larger than the budget: not kept");
        assert!(kept.held <= budget);
        // Empty objects cost their overhead: two at most.
        for offset in 0..10_000 {
            kept.get(1);
            kept.put(offset + 10, gix_object::Kind::Blob, Vec::new());
        }
        assert!(kept.held <= budget && kept.objects.len() <= 2);
        assert!(kept.order.len() <= 4 * kept.objects.len() + 1024 + 1);
        // Read and read again, nothing put: the queue stays bounded too.
        for _ in 0..10_000 {
            kept.get(9_999 + 10);
        }
        assert!(kept.order.len() <= 4 * kept.objects.len() + 1024 + 1);
    }
}
