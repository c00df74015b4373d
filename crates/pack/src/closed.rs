//! Whether a received pack is closed: every object in it refers only to objects there are.

use std::path::Path;
use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;
use gix_hashtable::HashSet;
use gix_object::Kind;

use crate::delta::{common_prefix, common_suffix};
use crate::{Error, Repository, objects};

impl Repository {
    /// Whether every object of the pack at `pack` (with its index at `index`, which may
    /// still be in a staging folder) refers only to objects there are: a commit to its tree
    /// and parents, a tree to its entries (gitlinks aside: a submodule's commits live
    /// elsewhere), a tag to its target; each of the kind it is referred to as (blobs
    /// aside: nothing reads them). Objects are read with the same parsers the pack writer's
    /// walk uses, so a reference the check did not see cannot surprise a fetch later; an
    /// object that does not parse fails the check. References are looked up in the pack
    /// itself and, unless `self_contained`, in the repository's packs. `Err` names what is
    /// missing or of the wrong kind.
    ///
    /// When the repository's packs are closed the same way (each was checked so when it
    /// came), the history of everything it has is whole: the check a fetch needs, made by
    /// decoding each object once, in pack order, on several cores, instead of walking
    /// history object by object.
    ///
    /// The pack's own objects are found in a hash set made from its index, and an object
    /// found in one of the repository's other packs is looked up there once per thread: the
    /// same entries recur in every version of a tree, and a lookup per entry in a sorted
    /// index was most of the check's time.
    pub fn check_pack_closed(
        &self,
        pack: &Path,
        index: &Path,
        self_contained: bool,
    ) -> Result<(), Error> {
        let hash = self.object_format();
        let this = gix_pack::index::File::at(index, hash).map_err(Error::odb)?;
        let mut members = HashSet::default();
        members.reserve(this.num_objects() as usize);
        members.extend(this.iter().map(|entry| entry.oid));
        if members.len() != this.num_objects() as usize {
            return Err(twice(this.iter().map(|entry| entry.oid)));
        }
        let others = if self_contained {
            Vec::new()
        } else {
            self.stored_packs()?.into_iter().map(|p| p.index).collect()
        };
        let members = Arc::new(members);
        let data = gix_pack::data::File::at(pack, hash).map_err(Error::odb)?;
        let shared: Arc<Mutex<Found>> = Arc::default();
        let others = Arc::new(others);
        let checker = Checker::new(
            hash,
            Some(Arc::clone(&members)),
            usize::MAX,
            Arc::clone(&others),
            Arc::clone(&shared),
        );
        let processor = {
            let mut checker = checker;
            move |kind: Kind,
                  object: &[u8],
                  entry: &gix_pack::index::Entry,
                  _: &dyn gix_utils::progress::Progress|
                  -> gix_error::Result { checker.read(entry.oid, kind, object) }
        };
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let traversed = this.traverse(
            &data,
            &mut gix_utils::progress::Discard,
            &std::sync::atomic::AtomicBool::new(false),
            processor,
            gix_pack::index::traverse::Options {
                traversal: gix_pack::index::traverse::Algorithm::DeltaTreeLookup,
                thread_limit: Some(threads),
                // Ingestion verified the pack's and every object's checksum already.
                check:
                    gix_pack::index::traverse::SafetyCheck::SkipFileAndObjectChecksumVerification,
                alloc_limit_bytes: Some(crate::MAX_DECODED_BYTES),
                make_pack_lookup_cache: || gix_pack::cache::Never,
            },
        );
        // Every copy of the processor is dropped by now, each having handed its findings over.
        let mut found = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(err) = found.failure.take() {
            return Err(err);
        }
        traversed.map_err(Error::odb)?;
        self.verify_found(found, Members::Set(&members), &others)
    }

    /// What the check's copies found, verified once every object of the pack is read:
    /// references recorded for later are looked up among `members` (the pack's objects) and
    /// in `others`, and every kind expected of an object is the kind it is.
    pub(crate) fn verify_found(
        &self,
        mut found: Found,
        members: Members<'_>,
        others: &[Arc<gix_pack::index::File>],
    ) -> Result<(), Error> {
        found.sort()?;
        let kinds = std::mem::take(&mut found.kinds);
        self.verify_sorted(found, members, kinds.iter(), others)
    }

    /// [`verify_found`](Self::verify_found) of what [`Found::sort`] sorted already, with the
    /// kinds of the pack's commits, trees and tags (`kinds`, sorted by id) kept apart: an
    /// indexing keeps them with the ids it learns.
    pub(crate) fn verify_sorted(
        &self,
        found: Found,
        members: Members<'_>,
        kinds: impl Iterator<Item = (ObjectId, Kind)>,
        others: &[Arc<gix_pack::index::File>],
    ) -> Result<(), Error> {
        let mut among = members.again();
        if let Some(oid) = (found.referred.iter())
            .map(|(oid, ())| oid)
            .find(|oid| !among.contains(oid) && others.iter().all(|i| i.lookup(oid).is_none()))
        {
            return Err(Error::MissingObject { oid });
        }
        let mut kinds = kinds.peekable();
        let mut among = members;
        let objects = self.objects();
        for (oid, want) in found.expected.iter() {
            while kinds.next_if(|(id, _)| *id < oid).is_some() {}
            let found = match kinds.peek() {
                Some((id, kind)) if *id == oid => *kind,
                // Only the pack's commits, trees and tags have their kind kept.
                _ if among.contains(&oid) => Kind::Blob,
                // Elsewhere, only in the packs the check may count on: the repository's
                // object store holds more when the pack must stand alone.
                _ if others.iter().all(|i| i.lookup(oid).is_none()) => {
                    return Err(Error::MissingObject { oid });
                }
                _ => match objects.header(&oid)? {
                    Some((kind, _)) => kind,
                    None => return Err(Error::MissingObject { oid }),
                },
            };
            if found != want {
                return Err(Error::Corrupt {
                    oid,
                    reason: format!("a {found} where a {want} is referred to"),
                });
            }
        }
        Ok(())
    }
}

/// The error for a pack holding an object twice: the first such of `sorted` ids.
pub(crate) fn twice(sorted: impl Iterator<Item = ObjectId>) -> Error {
    let mut last = None;
    for oid in sorted {
        if last == Some(oid) {
            return Error::Corrupt {
                oid,
                reason: "in the pack twice".into(),
            };
        }
        last = Some(oid);
    }
    Error::odb("the pack's index holds an object twice")
}

/// What the check's threads found, handed over as each copy of the processor is dropped.
///
/// References are kept in lists, sorted and rid of repeats whenever a list doubles and when
/// a copy hands them over, and looked up at the end by walking them beside the pack's sorted
/// ids: at 4 million objects, inserting each into a hash set was a sixth of indexing. Sorting
/// needs no trust in the ids (a hash table keyed by ids the pack chose would need a seeded
/// hasher). A copy's lists stay within twice its different references (at most the pack's
/// objects, and for the kinds expected, those it found in the repository's other packs too,
/// or it stops), the merged ones within the copies' different references.
#[derive(Default)]
pub(crate) struct Found {
    /// Objects referred to, to be looked up once the pack's objects are all known.
    referred: Ids<()>,
    /// The kind of each commit, tree and tag of the pack, when its objects are known (an
    /// indexing keeps them itself).
    kinds: Ids<Kind>,
    /// The kind each commit, tree and tag referred to is expected to be.
    expected: Ids<Kind>,
    /// The lengths past which `referred` and `expected` are compacted next.
    referred_room: usize,
    expected_room: usize,
    /// What stopped the check.
    pub(crate) failure: Option<Error>,
}

/// The least length at which a list of references is compacted.
const LEAST_ROOM: usize = 1 << 16;

impl Found {
    /// `oid` is referred to (and may be one of the pack's own objects): at most `most`
    /// different ones.
    fn refer(&mut self, oid: ObjectId, most: usize) -> Result<(), Error> {
        self.referred.push(&oid, ())?;
        if self.referred.len() > self.referred_room.max(LEAST_ROOM) {
            self.referred.sort_dedup();
            self.referred_room = 2 * self.referred.len();
            if self.referred.len() > most {
                return Err(Error::Corrupt {
                    oid,
                    reason: "more objects referred to than there are".into(),
                });
            }
        }
        Ok(())
    }

    /// `oid` is expected to be a `kind`: at most `most` different ones (those of the pack and
    /// those found elsewhere).
    fn expect(&mut self, oid: ObjectId, kind: Kind, most: usize) -> Result<(), Error> {
        self.expected.push(&oid, kind)?;
        if self.expected.len() > self.expected_room.max(LEAST_ROOM) {
            let compacted = self.compact_expected();
            self.expected_room = 2 * self.expected.len();
            compacted?;
            if self.expected.len() > most {
                return Err(Error::Corrupt {
                    oid,
                    reason: "more objects referred to than there are".into(),
                });
            }
        }
        Ok(())
    }

    /// Sort the expected kinds and drop repeats. Expected as two kinds (none of them a
    /// blob), an object is not one of them: refused.
    fn compact_expected(&mut self) -> Result<(), Error> {
        self.expected.sort_dedup();
        match self.expected.repeated() {
            Some((oid, one, other)) => Err(Error::Corrupt {
                oid,
                reason: format!("referred to as a {one} and as a {other}"),
            }),
            None => Ok(()),
        }
    }

    /// A kind expected of `oid` (the last one listed).
    #[cfg(test)]
    fn expected_kind(&self, oid: &ObjectId) -> Option<Kind> {
        (self.expected.iter().rev())
            .find(|(id, _)| id == oid)
            .map(|(_, k)| k)
    }

    /// Sort the lists by id and drop repeats, as [`Repository::verify_sorted`] needs them; an
    /// object expected as two kinds is refused. Its own step, so that it can run beside other
    /// work.
    pub(crate) fn sort(&mut self) -> Result<(), Error> {
        self.referred.sort_dedup();
        self.compact_expected()?;
        self.kinds.sort();
        Ok(())
    }

    fn merge(&mut self, other: Found) {
        let merged = [
            self.referred.append(other.referred),
            self.kinds.append(other.kinds),
            self.expected.append(other.expected),
        ];
        if let Some(err) = other.failure {
            self.failure.get_or_insert(err);
        }
        if let Some(Err(err)) = merged.into_iter().find(Result::is_err) {
            self.failure.get_or_insert(err);
        }
    }
}

/// Object ids listed for the check, each with a `T` beside it, kept as their bytes only: 20
/// for SHA-1, where an [`ObjectId`] takes 33 whatever its format (the lists hold about as
/// many ids as the pack has objects, twice that before their repeats go). Empty until the
/// first id says the format.
#[derive(Default)]
enum Ids<T> {
    #[default]
    Empty,
    Sha1(Vec<([u8; 20], T)>),
    Sha256(Vec<([u8; 32], T)>),
}

/// An id's first eight bytes as a number: ids are ordered by it first (a call comparing whole
/// ids for every step was most of the sorting).
pub(crate) fn head(id: &[u8]) -> u64 {
    id.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b))
}

/// Sort `items` by id, then as a whole: equal items end up side by side.
fn sort_raw<const N: usize, T: Ord>(items: &mut [([u8; N], T)]) {
    items.sort_unstable_by(|a, b| head(&a.0).cmp(&head(&b.0)).then_with(|| a.cmp(b)));
}

/// The first two neighbours of `items` with the same id.
fn repeated_raw<const N: usize, T: Copy>(items: &[([u8; N], T)]) -> Option<(ObjectId, T, T)> {
    let w = items.windows(2).find(|w| w[0].0 == w[1].0)?;
    Some((ObjectId::from_bytes_or_panic(&w[0].0), w[0].1, w[1].1))
}

fn two_formats() -> Error {
    Error::odb("object ids of two formats in one check")
}

impl<T: Copy + Ord> Ids<T> {
    fn push(&mut self, oid: &ObjectId, with: T) -> Result<(), Error> {
        let bytes = oid.as_bytes();
        if let Ids::Empty = self {
            *self = match bytes.len() {
                20 => Ids::Sha1(Vec::new()),
                32 => Ids::Sha256(Vec::new()),
                len => return Err(Error::odb(format!("an object id of {len} bytes"))),
            };
        }
        match self {
            Ids::Sha1(items) => items.push((bytes.try_into().map_err(|_| two_formats())?, with)),
            Ids::Sha256(items) => {
                items.push((bytes.try_into().map_err(|_| two_formats())?, with));
            }
            Ids::Empty => return Err(Error::odb("an id listed nowhere")),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Ids::Empty => 0,
            Ids::Sha1(items) => items.len(),
            Ids::Sha256(items) => items.len(),
        }
    }

    /// The ids listed, in their order, each with what is beside it.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (ObjectId, T)> + '_ {
        (0..self.len()).map(|i| self.at(i))
    }

    /// The `i`th id listed and what is beside it.
    fn at(&self, i: usize) -> (ObjectId, T) {
        let (id, with) = match self {
            Ids::Sha1(items) => (&items[i].0[..], items[i].1),
            Ids::Sha256(items) => (&items[i].0[..], items[i].1),
            Ids::Empty => panic!("no id at {i} of none"),
        };
        (ObjectId::from_bytes_or_panic(id), with)
    }

    fn sort(&mut self) {
        match self {
            Ids::Empty => {}
            Ids::Sha1(items) => sort_raw(items),
            Ids::Sha256(items) => sort_raw(items),
        }
    }

    fn sort_dedup(&mut self) {
        self.sort();
        match self {
            Ids::Empty => {}
            Ids::Sha1(items) => items.dedup(),
            Ids::Sha256(items) => items.dedup(),
        }
    }

    /// Let go of the room past the ids listed.
    fn shrink(&mut self) {
        match self {
            Ids::Empty => {}
            Ids::Sha1(items) => items.shrink_to_fit(),
            Ids::Sha256(items) => items.shrink_to_fit(),
        }
    }

    /// Sorted: the first two neighbours with the same id, and what is beside each.
    fn repeated(&self) -> Option<(ObjectId, T, T)> {
        match self {
            Ids::Empty => None,
            Ids::Sha1(items) => repeated_raw(items),
            Ids::Sha256(items) => repeated_raw(items),
        }
    }

    fn append(&mut self, other: Ids<T>) -> Result<(), Error> {
        match (self, other) {
            (_, Ids::Empty) => {}
            (this @ Ids::Empty, other) => *this = other,
            // Room for exactly both (each copy's lists are shrunk to their ids when handed
            // over): the merged lists are the largest the check holds once decoding ends.
            (Ids::Sha1(items), Ids::Sha1(more)) => {
                items.reserve_exact(more.len());
                items.extend(more);
            }
            (Ids::Sha256(items), Ids::Sha256(more)) => {
                items.reserve_exact(more.len());
                items.extend(more);
            }
            _ => return Err(two_formats()),
        }
        Ok(())
    }
}

/// Whether ids are among the pack's objects: a set, or the sorted ids, asked in ascending
/// order (each answer moves past what is below the id asked).
pub(crate) enum Members<'a> {
    Set(&'a HashSet<ObjectId>),
    Sorted(&'a [ObjectId]),
}

impl Members<'_> {
    fn contains(&mut self, oid: &ObjectId) -> bool {
        match self {
            Members::Set(set) => set.contains(oid),
            Members::Sorted(ids) => {
                // Galloping: the next id asked is mostly near.
                let mut reach = 1;
                while reach < ids.len() && ids[reach] < *oid {
                    reach *= 2;
                }
                let below = ids[..reach.min(ids.len())].partition_point(|id| id < oid);
                *ids = &ids[below..];
                ids.first() == Some(oid)
            }
        }
    }

    fn again(&self) -> Self {
        match self {
            Members::Set(set) => Members::Set(set),
            Members::Sorted(ids) => Members::Sorted(ids),
        }
    }
}

/// One thread's share of the check: the traversal gives each thread its own copy.
pub(crate) struct Checker {
    hash: gix_hash::Kind,
    /// The objects of the checked pack; `None` while they are not known yet (the pack is
    /// being indexed): references not found in `others` are then recorded and looked up at
    /// the end, at most `most` different ones (the pack's objects: more is a reference to one
    /// there is not).
    members: Option<Arc<HashSet<ObjectId>>>,
    most: usize,
    /// The indexes of the repository's packs, when references may point into them.
    others: Arc<Vec<Arc<gix_pack::index::File>>>,
    /// Objects of `others` this copy found already.
    outside: HashSet<ObjectId>,
    /// The trees this copy checked last, the latest last.
    recent: std::collections::VecDeque<Previous>,
    found: Found,
    shared: Arc<Mutex<Found>>,
}

/// How many checked trees each copy of the checker keeps to compare the next with.
const RECENT_TREES: usize = 8;

/// How many bytes of checked trees (and their entries' places) each copy keeps at most.
const RECENT_BYTES: usize = 16 << 20;

/// A tree checked whole, and where each of its entries starts (its length last).
#[derive(Default)]
struct Previous {
    data: Vec<u8>,
    bounds: Vec<usize>,
}

enum TreeError {
    Parse(String),
    Check(Error),
}

impl Clone for Checker {
    fn clone(&self) -> Checker {
        Checker::new(
            self.hash,
            self.members.clone(),
            self.most,
            Arc::clone(&self.others),
            Arc::clone(&self.shared),
        )
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        // Handed over without repeats: the lists merged stay within each copy's different
        // references, not twice them.
        let mut found = std::mem::take(&mut self.found);
        found.referred.sort_dedup();
        if let Err(err) = found.compact_expected() {
            found.failure.get_or_insert(err);
        }
        found.referred.shrink();
        found.expected.shrink();
        found.kinds.shrink();
        self.lock().merge(found);
    }
}

impl Checker {
    /// A checker looking references up in `members` (the pack's objects) and `others`, or
    /// with `members` unknown, recording at most `most` different references for later.
    pub(crate) fn new(
        hash: gix_hash::Kind,
        members: Option<Arc<HashSet<ObjectId>>>,
        most: usize,
        others: Arc<Vec<Arc<gix_pack::index::File>>>,
        shared: Arc<Mutex<Found>>,
    ) -> Checker {
        Checker {
            hash,
            members,
            most,
            others,
            outside: HashSet::default(),
            recent: std::collections::VecDeque::new(),
            found: Found::default(),
            shared,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Found> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Checker::object`] for a traversal's processor: gitoxide's error carries only the
    /// text, so the error itself is kept for the caller.
    pub(crate) fn read(&mut self, oid: ObjectId, kind: Kind, object: &[u8]) -> gix_error::Result {
        self.object(oid, kind, object).map_err(|err| {
            let message = err.to_string();
            self.lock().failure.get_or_insert(err);
            gix_error::ErrorExt::raise(gix_error::message!("{message}"))
        })
    }

    /// Read an object the repository holds already, which completes a thin pack (a base
    /// added at its end): what it refers to was found when it came, and is not looked up
    /// again. A tree is kept to compare the next with, as one checked is: the pack's deltas
    /// on it, read after it, share most of its entries. (Looking up every entry of such a
    /// base, a version of a wide directory, was a fifth of taking a thin pack in.)
    pub(crate) fn read_known(
        &mut self,
        oid: ObjectId,
        kind: Kind,
        object: &[u8],
    ) -> gix_error::Result {
        if kind != Kind::Tree {
            return Ok(());
        }
        self.tree(object, false).map_err(|err| {
            let err = match err {
                TreeError::Parse(reason) => Error::Corrupt { oid, reason },
                TreeError::Check(err) => err,
            };
            let message = err.to_string();
            self.lock().failure.get_or_insert(err);
            gix_error::ErrorExt::raise(gix_error::message!("{message}"))
        })
    }

    /// Read one decoded object of the pack: its references must exist.
    fn object(&mut self, oid: ObjectId, kind: Kind, object: &[u8]) -> Result<(), Error> {
        let corrupt = |reason: String| Error::Corrupt { oid, reason };
        match kind {
            Kind::Blob => return Ok(()),
            Kind::Commit => {
                let commit = objects::parse_commit(object, self.hash).map_err(corrupt)?;
                self.refer(commit.tree, Kind::Tree)?;
                for parent in commit.parents {
                    self.refer(parent, Kind::Commit)?;
                }
            }
            Kind::Tree => self.tree(object, true).map_err(|err| match err {
                TreeError::Parse(reason) => corrupt(reason),
                TreeError::Check(err) => err,
            })?,
            Kind::Tag => {
                let (target, kind) = objects::parse_tag(object, self.hash).map_err(corrupt)?;
                self.refer(target, kind)?;
            }
        }
        // With the pack's objects unknown (it is being indexed), the indexer keeps their
        // kinds with their ids.
        if self.members.is_some() {
            self.found.kinds.push(&oid, kind)?;
        }
        Ok(())
    }

    /// Check the entries of a tree, but for those it shares with the most alike of the trees
    /// this copy checked last (in a delta tree traversal, mostly its delta base or a
    /// sibling): a version of a large directory differs from the one before in a few
    /// entries, and checking each of its entries again made the check's time grow with the
    /// size of the trees, not of the pack. An entry is skipped only when its bytes are those
    /// of a whole entry of the earlier tree (found at the same place in a common prefix or
    /// suffix, or by walking both trees' entries side by side), which is then the same
    /// entry, checked by this copy already. Anything else is checked as it is, unless not
    /// `checking` (a tree known to be whole: only kept for the next).
    fn tree(&mut self, data: &[u8], checking: bool) -> Result<(), TreeError> {
        // The one with the longest common prefix, the latest of those alike. A tree can
        // share more than the best so far only if it shares the byte after it: most are
        // passed over on that byte, not compared from their start again.
        let mut alike: Option<(usize, usize)> = None;
        for (i, tree) in self.recent.iter().enumerate().rev() {
            let best = alike.map_or(0, |(prefix, _)| prefix);
            if alike.is_some() && (best >= data.len() || tree.data.get(best) != data.get(best)) {
                continue;
            }
            let prefix = common_prefix(&tree.data, data);
            if alike.is_none() || prefix > best {
                alike = Some((prefix, i));
            }
        }
        let (prefix, previous) = match alike {
            Some((prefix, i)) => (prefix, self.recent.remove(i).unwrap_or_default()),
            None => (0, Previous::default()),
        };
        let (before, bounds) = (&previous.data, &previous.bounds);
        // The earlier tree's entries that end within the common prefix are this tree's first.
        let kept = bounds.partition_point(|&b| b <= prefix);
        let resume = kept.checked_sub(1).map_or(0, |last| bounds[last]);
        let suffix = common_suffix(&before[resume..], &data[resume..]);
        let tail = data.len() - suffix;
        // Where this tree's entries start, if it is small enough to be kept for the next.
        let keeping = data.len() <= RECENT_BYTES / 2;
        let mut next = Vec::new();
        if keeping {
            next.reserve(bounds.len() + 1);
            next.extend_from_slice(&bounds[..kept.saturating_sub(1)]);
        }
        // The earlier tree's entry that this tree's next is compared with.
        let mut theirs = kept.saturating_sub(1);
        let mut at = resume;
        loop {
            if at >= tail {
                // `data[at..]` is `before[at + shift..]`: the same entries if one starts there.
                let then = at + before.len() - data.len();
                if let Ok(i) = bounds.binary_search(&then) {
                    if keeping {
                        next.extend(bounds[i..].iter().map(|b| b + data.len() - before.len()));
                    }
                    break;
                }
            }
            if keeping {
                next.push(at);
            }
            if at == data.len() {
                break;
            }
            // The bytes from here on as the earlier tree's from the entry compared with next:
            // the whole entries they cover are those entries (parsing from an entry's start
            // reads the same entries from the same bytes), skipped without parsing them. Most
            // entries between a tree's changes are skipped so.
            if let Some(&from) = bounds.get(theirs) {
                let run = common_prefix(&data[at..], &before[from..]);
                let last = bounds.partition_point(|&b| b <= from + run) - 1;
                if last > theirs {
                    if keeping {
                        next.extend(bounds[theirs + 1..last].iter().map(|b| b - from + at));
                    }
                    at += bounds[last] - from;
                    theirs = last;
                    continue;
                }
            }
            let (entry, end) =
                objects::tree_entry(data, at, self.hash).map_err(TreeError::Parse)?;
            let mine = &data[at..end];
            let mut same = false;
            while let Some(&[from, to]) = bounds.get(theirs..theirs + 2) {
                let other = &before[from..to];
                if other == mine {
                    same = true;
                    theirs += 1;
                    break;
                }
                // Entries are sorted by name: step over what this tree removed, and stay on
                // what it added. (Out of order, entries are only checked more.)
                match entry_name(other).cmp(entry_name(mine)) {
                    std::cmp::Ordering::Less => theirs += 1,
                    std::cmp::Ordering::Equal => {
                        theirs += 1;
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            if !same && checking {
                match entry.kind {
                    objects::EntryKind::Tree => self.refer(entry.oid, Kind::Tree),
                    objects::EntryKind::Blob => self.refer(entry.oid, Kind::Blob),
                    objects::EntryKind::Gitlink => Ok(()),
                }
                .map_err(TreeError::Check)?;
            }
            at = end;
        }
        if !keeping {
            if !previous.bounds.is_empty() {
                self.keep(previous);
            }
            return Ok(());
        }
        let mut kept_data = previous.data;
        kept_data.clear();
        kept_data.extend_from_slice(data);
        self.keep(Previous {
            data: kept_data,
            bounds: next,
        });
        Ok(())
    }

    /// Keep a checked tree among the recent ones, within their bounds.
    fn keep(&mut self, tree: Previous) {
        let size = |t: &Previous| t.data.len() + t.bounds.len() * size_of::<usize>();
        if size(&tree) > RECENT_BYTES {
            return;
        }
        let mut total = size(&tree) + self.recent.iter().map(size).sum::<usize>();
        while self.recent.len() >= RECENT_TREES || total > RECENT_BYTES {
            match self.recent.pop_front() {
                Some(old) => total -= size(&old),
                None => break,
            }
        }
        self.recent.push_back(tree);
    }

    /// `oid` is referred to as a `kind`: it must exist, and be one (blobs aside).
    fn refer(&mut self, oid: ObjectId, kind: Kind) -> Result<(), Error> {
        match &self.members {
            Some(members) => {
                let present = members.contains(&oid)
                    || self.outside.contains(&oid)
                    || (self.others.iter().any(|i| i.lookup(oid).is_some())
                        && self.outside.insert(oid));
                if !present {
                    return Err(Error::MissingObject { oid });
                }
            }
            // An object of the repository's other packs is found there at once (and
            // remembered); only what may be the pack's own waits for the end.
            None if self.outside.contains(&oid) => {}
            None if self.others.iter().any(|i| i.lookup(oid).is_some()) => {
                self.outside.insert(oid);
            }
            // A commit, tree or tag is looked up at the end as the kind expected of it
            // (listed below): most references are to trees, each was listed twice.
            None if kind != Kind::Blob => {}
            None => self.found.refer(oid, self.most)?,
        }
        if kind != Kind::Blob {
            // Each different one is the pack's or found elsewhere (and remembered).
            let most = self.most.saturating_add(self.outside.len());
            self.found.expect(oid, kind, most)?;
        }
        Ok(())
    }
}

/// The name of a tree entry that parsed (`<mode> <name>\0<id>`).
fn entry_name(entry: &[u8]) -> &[u8] {
    let start = entry.iter().position(|&b| b == b' ').map_or(0, |i| i + 1);
    let end = start + entry[start..].iter().position(|&b| b == 0).unwrap_or(0);
    &entry[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    fn checker(members: impl IntoIterator<Item = ObjectId>) -> Checker {
        Checker::new(
            gix_hash::Kind::Sha1,
            Some(Arc::new(members.into_iter().collect())),
            usize::MAX,
            Arc::new(Vec::new()),
            Arc::default(),
        )
    }

    /// A tree of `(name, is a tree, object)` entries, in the given order.
    fn tree(entries: &[(u8, bool, u8)]) -> Vec<u8> {
        let mut data = Vec::new();
        for &(name, dir, object) in entries {
            data.extend_from_slice(if dir { b"40000 " } else { b"100644 " });
            data.extend_from_slice(format!("n{name}").as_bytes());
            data.push(0);
            data.extend_from_slice(oid(object).as_bytes());
        }
        data
    }

    /// A version of a tree: entries changed, added or removed, or bytes changed anywhere.
    #[derive(Debug, Clone)]
    enum Edit {
        Point(usize, u8),
        Insert(usize, (u8, bool, u8)),
        Remove(usize),
        Byte(usize, u8),
        Cut(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), 0..12u8).prop_map(|(i, o)| Edit::Point(i, o)),
            (any::<usize>(), (0..40u8, any::<bool>(), 0..12u8))
                .prop_map(|(i, e)| Edit::Insert(i, e)),
            any::<usize>().prop_map(Edit::Remove),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
            any::<usize>().prop_map(Edit::Cut),
        ]
    }

    /// The same bytes at the end of two trees are the same entries only where an entry of
    /// the earlier tree starts: here the later tree's last entry is the tail of the earlier
    /// tree's only entry, whose name holds what reads as another entry's start.
    #[test]
    fn a_shared_tail_is_skipped_only_from_an_entry_start() {
        let mut checker = checker([oid(1), oid(2)]);
        let mut before = b"100644 a 40000 b\0".to_vec();
        before.extend_from_slice(oid(1).as_bytes());
        let mut after = b"100644 c\0".to_vec();
        after.extend_from_slice(oid(2).as_bytes());
        after.extend_from_slice(&before[9..]);
        assert!(checker.tree(&before, true).is_ok());
        assert_eq!(
            checker.found.expected_kind(&oid(1)),
            None,
            "named as a blob"
        );
        assert!(checker.tree(&after, true).is_ok());
        assert_eq!(
            checker.found.expected_kind(&oid(1)),
            Some(Kind::Tree),
            "the later tree's last entry names it as a tree"
        );
    }

    /// A tree the repository holds already (a base added to complete a thin pack) is read
    /// without looking up what it names; a tree of the pack read after it is checked where
    /// it differs from it, and only there.
    #[test]
    fn a_known_tree_is_not_checked_but_compared_with() {
        // Only 3 is the pack's; 1 and 2 are named by the known tree alone.
        let known = tree(&[(1, false, 1), (2, true, 2)]);
        let changed = tree(&[(1, false, 1), (2, true, 2), (3, false, 3)]);
        let wrong = tree(&[(1, false, 1), (2, true, 2), (4, false, 4)]);

        let mut alone = checker([oid(3)]);
        assert!(matches!(
            alone.tree(&changed, true),
            Err(TreeError::Check(Error::MissingObject { .. }))
        ));

        let mut after = checker([oid(3)]);
        assert!(after.read_known(oid(9), Kind::Tree, &known).is_ok());
        assert_eq!(
            after.found.expected_kind(&oid(2)),
            None,
            "nothing looked up"
        );
        assert!(
            after.tree(&changed, true).is_ok(),
            "only the new entry checked"
        );
        assert!(after.read_known(oid(9), Kind::Tree, &known).is_ok());
        assert!(
            matches!(
                after.tree(&wrong, true),
                Err(TreeError::Check(Error::MissingObject { oid })) if oid == super::tests::oid(4)
            ),
            "an entry the known tree lacks is checked"
        );
    }

    /// Ids are listed as their bytes in either format, sorted as [`ObjectId`]s sort, and a
    /// list never mixes formats (an error, not a wrong answer).
    #[test]
    fn ids_are_listed_compactly_in_either_format_and_never_mixed() {
        for kind in [gix_hash::Kind::Sha1, gix_hash::Kind::Sha256] {
            let mut rng = gitcache_testkit::repo::Rng::new(77);
            let mut ids: Vec<ObjectId> = (0..500)
                .map(|i| {
                    let mut id = ObjectId::null(kind);
                    for b in id.as_mut_slice().iter_mut() {
                        *b = rng.next_u64() as u8;
                    }
                    // Some share their first eight bytes.
                    if i % 7 == 0 {
                        id.as_mut_slice()[..8].fill(3);
                    }
                    id
                })
                .collect();
            let mut listed = Ids::default();
            for (i, id) in ids.iter().chain(&ids[..100]).enumerate() {
                let kind = if i == 510 { Kind::Commit } else { Kind::Tree };
                listed.push(id, kind).unwrap();
            }
            // Listed as a tree and as a commit: side by side once sorted.
            let twice = ids[10];
            listed.sort_dedup();
            ids.sort_unstable();
            let got: Vec<ObjectId> = listed.iter().map(|(id, _)| id).collect();
            assert_eq!(listed.repeated(), Some((twice, Kind::Tree, Kind::Commit)));
            let mut deduped = got.clone();
            deduped.dedup();
            assert_eq!(deduped, ids);
            assert_eq!(got.len(), ids.len() + 1);
        }
        let mut one = Ids::default();
        one.push(&oid(1), ()).unwrap();
        let other = ObjectId::null(gix_hash::Kind::Sha256);
        assert!(one.push(&other, ()).is_err());
        let mut two = Ids::default();
        two.push(&other, ()).unwrap();
        assert!(one.append(two).is_err());
        assert_eq!(one.len(), 1);
        // Nothing listed on either side.
        one.append(Ids::default()).unwrap();
        let mut none = Ids::default();
        none.append(one).unwrap();
        assert_eq!(none.at(0), (oid(1), ()));

        // Merged from two copies: a mix of formats is a failure of the check, not dropped.
        let mut found = Found::default();
        found.refer(oid(1), 10).unwrap();
        let mut other_copy = Found::default();
        other_copy.refer(other, 10).unwrap();
        found.merge(other_copy);
        assert!(found.failure.is_some());
    }

    /// With the pack's objects not known yet, references are recorded for later, repeats
    /// dropped as the list grows, and no more different ones than there are objects: past
    /// that, one of them is missing. The lists stay within twice the different entries.
    #[test]
    fn no_more_references_are_recorded_than_there_are_objects() {
        let ids: Vec<ObjectId> = (0..50_000u32)
            .map(|i| {
                let mut id = ObjectId::null(gix_hash::Kind::Sha1);
                id.as_mut_slice()[..4].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        for (most, refused) in [(50_000, false), (40_000, true)] {
            let mut found = Found::default();
            let mut got = Ok(());
            let mut longest = (0, 0);
            'rounds: for _ in 0..4 {
                for (i, id) in ids.iter().enumerate() {
                    let kind = if i % 2 == 0 { Kind::Tree } else { Kind::Commit };
                    got = found
                        .refer(*id, most)
                        .and_then(|()| found.expect(*id, kind, most));
                    if got.is_err() {
                        break 'rounds;
                    }
                    longest.0 = longest.0.max(found.referred.len());
                    longest.1 = longest.1.max(found.expected.len());
                }
            }
            assert_eq!(got.is_err(), refused, "at most {most}");
            if !refused {
                assert!(longest.0 <= 2 * ids.len() + 1 && longest.1 <= 2 * ids.len() + 1);
                found.referred.sort_dedup();
                let referred: Vec<ObjectId> = found.referred.iter().map(|(id, ())| id).collect();
                assert_eq!(referred, ids);
                assert!(found.compact_expected().is_ok());
                assert_eq!(found.expected.len(), ids.len());
            }
        }
        // Commits, trees and tags are expected of a kind only (not listed as referred to as
        // well): no more different ones than there are objects either.
        for (most, refused) in [(50_000, false), (40_000, true)] {
            let mut found = Found::default();
            let got = (ids.iter().cycle().take(2 * ids.len()))
                .try_for_each(|id| found.expect(*id, Kind::Tree, most));
            assert_eq!(got.is_err(), refused, "at most {most}");
            assert!(found.expected.len() <= 2 * ids.len() + 1);
        }
        // Expected as two kinds: refused when the list is compacted.
        let mut found = Found::default();
        found.expect(ids[0], Kind::Tree, 10).unwrap();
        found.expect(ids[0], Kind::Commit, 10).unwrap();
        let err = found.compact_expected().unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("as a tree") && said.contains("as a commit"),
            "{said}"
        );
    }

    /// While a pack is indexed, the trees it refers to in the repository's other packs count
    /// beside its own objects towards the most different kinds expected: a small thin pack
    /// may refer to many of the mirror's trees. As many that are nowhere are refused.
    #[test]
    fn trees_found_in_other_packs_count_towards_the_most_expected() {
        let n = LEAST_ROOM as u32 + 5_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack-other.idx");
        // Spread as real ids are (the set of those found elsewhere hashes by their first
        // bytes): an odd multiplier maps different numbers to different ones.
        let at = |i: u32| {
            let mut id = ObjectId::null(gix_hash::Kind::Sha1);
            let spread = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            id.as_mut_slice()[..8].copy_from_slice(&spread.to_be_bytes());
            id
        };
        let mut objects: Vec<(ObjectId, crate::PackEntry)> = (0..n)
            .map(|i| {
                let entry = crate::PackEntry {
                    offset: 12 + 10 * u64::from(i),
                    crc32: i,
                };
                (at(i), entry)
            })
            .collect();
        objects.sort_by_key(|(id, _)| *id);
        let checksum = ObjectId::from_bytes_or_panic(&[5; 20]);
        crate::indexing::write_index_of(&path, &objects, &checksum, gix_hash::Kind::Sha1).unwrap();
        let other = Arc::new(gix_pack::index::File::at(&path, gix_hash::Kind::Sha1).unwrap());
        let checker = |others: Vec<Arc<gix_pack::index::File>>| {
            Checker::new(
                gix_hash::Kind::Sha1,
                None,
                10,
                Arc::new(others),
                Arc::default(),
            )
        };
        let mut thin = checker(vec![Arc::clone(&other)]);
        for i in 0..n {
            thin.refer(at(i), Kind::Tree).unwrap();
        }
        assert!(thin.found.expected.len() > 10 && thin.outside.len() == n as usize);
        let mut alone = checker(Vec::new());
        let refused = (0..n).try_for_each(|i| alone.refer(at(i), Kind::Tree));
        assert!(
            matches!(&refused, Err(Error::Corrupt { reason, .. }) if reason.contains("more objects")),
            "{refused:?}"
        );
    }

    proptest! {
        /// Whatever trees come, in whatever order, each is refused exactly when checking it
        /// whole would refuse it, and the kinds expected are those of every tree accepted.
        #[test]
        fn skipping_shared_entries_misses_nothing(
            start in proptest::collection::vec((0..40u8, any::<bool>(), 0..12u8), 0..30),
            edits in proptest::collection::vec(proptest::collection::vec(edit(), 0..4), 1..12),
            missing in 0..12u8,
        ) {
            let members: Vec<ObjectId> = (0..12u8).filter(|&n| n != missing).map(oid).collect();
            let mut checker = checker(members.iter().copied());
            let mut entries = start;
            let mut raw: Option<Vec<u8>> = None;
            let mut accepted = Vec::new();
            for version in edits {
                let mut data = raw.take().unwrap_or_else(|| tree(&entries));
                for edit in version {
                    match edit {
                        Edit::Point(i, o) if !entries.is_empty() => {
                            let i = i % entries.len();
                            entries[i].2 = o;
                            data = tree(&entries);
                        }
                        Edit::Insert(i, e) => {
                            entries.insert(i % (entries.len() + 1), e);
                            data = tree(&entries);
                        }
                        Edit::Remove(i) if !entries.is_empty() => {
                            entries.remove(i % entries.len());
                            data = tree(&entries);
                        }
                        Edit::Byte(i, b) if !data.is_empty() => {
                            let i = i % data.len();
                            data[i] = b;
                        }
                        Edit::Cut(i) if !data.is_empty() => data.truncate(i % data.len()),
                        _ => {}
                    }
                }
                let whole = objects::parse_tree(&data, gix_hash::Kind::Sha1);
                let got = checker.tree(&data, true);
                match &whole {
                    Err(_) => prop_assert!(got.is_err(), "a tree that does not parse passed"),
                    Ok(parsed) => {
                        let absent = parsed
                            .iter()
                            .find(|e| e.kind != objects::EntryKind::Gitlink && !members.contains(&e.oid));
                        match (absent, got) {
                            (None, Ok(())) => accepted.push(parsed.clone()),
                            (Some(first), Err(TreeError::Check(Error::MissingObject { oid: m }))) => {
                                prop_assert_eq!(m, first.oid);
                            }
                            (absent, Ok(())) => prop_assert!(false, "{absent:?} passed"),
                            (_, Err(TreeError::Check(err))) => prop_assert!(false, "{err}"),
                            (_, Err(TreeError::Parse(err))) => prop_assert!(false, "{err}"),
                        }
                    }
                }
                raw = Some(data);
            }
            for entry in accepted.iter().flatten() {
                if entry.kind == objects::EntryKind::Tree {
                    prop_assert_eq!(checker.found.expected_kind(&entry.oid), Some(Kind::Tree));
                }
            }
        }
    }
}
