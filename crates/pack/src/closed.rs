//! Whether a received pack is closed: every object in it refers only to objects there are.

use std::path::Path;
use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;
use gix_hashtable::{HashMap, HashSet};
use gix_object::Kind;

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
        self.verify_found(found, &members, &others)
    }

    /// What the check's copies found, verified once every object of the pack is read:
    /// references recorded for later are looked up among `members` (the pack's objects) and
    /// in `others`, and every kind expected of an object is the kind it is.
    pub(crate) fn verify_found(
        &self,
        found: Found,
        members: &HashSet<ObjectId>,
        others: &[Arc<gix_pack::index::File>],
    ) -> Result<(), Error> {
        if let Some(oid) = found
            .referred
            .iter()
            .find(|oid| !members.contains(*oid) && others.iter().all(|i| i.lookup(*oid).is_none()))
        {
            return Err(Error::MissingObject { oid: *oid });
        }
        let kinds: HashMap<ObjectId, Kind> = found.kinds.into_iter().collect();
        let objects = self.objects();
        for (oid, want) in found.expected {
            let found = match kinds.get(&oid) {
                Some(kind) => *kind,
                // Only the pack's commits, trees and tags have their kind kept.
                None if members.contains(&oid) => Kind::Blob,
                None => match objects.header(&oid)? {
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
/// The sets keyed by ids the pack names (not yet known to be real hashes) use a seeded
/// hasher: gitoxide's hash tables take an id's first bytes as its hash, and ids chosen to
/// share them would make every insertion a scan.
#[derive(Default)]
pub(crate) struct Found {
    /// Objects referred to, to be looked up once the pack's objects are all known.
    referred: std::collections::HashSet<ObjectId>,
    /// The kind of each commit, tree and tag of the pack.
    kinds: Vec<(ObjectId, Kind)>,
    /// The kind each commit, tree and tag referred to is expected to be, once per object.
    expected: std::collections::HashMap<ObjectId, Kind>,
    /// What stopped the check.
    pub(crate) failure: Option<Error>,
}

impl Found {
    /// `oid` is expected to be a `kind`. Expected as two kinds (none of them a blob), it is
    /// not one of them: refused at once.
    fn expect(&mut self, oid: ObjectId, kind: Kind) -> Result<(), Error> {
        match *self.expected.entry(oid).or_insert(kind) {
            earlier if earlier == kind => Ok(()),
            earlier => Err(Error::Corrupt {
                oid,
                reason: format!("referred to as a {earlier} and as a {kind}"),
            }),
        }
    }

    fn merge(&mut self, other: Found) {
        self.referred.extend(other.referred);
        self.kinds.extend(other.kinds);
        for (oid, kind) in other.expected {
            if let Err(err) = self.expect(oid, kind) {
                self.failure.get_or_insert(err);
            }
        }
        if let Some(err) = other.failure {
            self.failure.get_or_insert(err);
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
        let found = std::mem::take(&mut self.found);
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
            Kind::Tree => self.tree(object).map_err(|err| match err {
                TreeError::Parse(reason) => corrupt(reason),
                TreeError::Check(err) => err,
            })?,
            Kind::Tag => {
                let (target, kind) = objects::parse_tag(object, self.hash).map_err(corrupt)?;
                self.refer(target, kind)?;
            }
        }
        self.found.kinds.push((oid, kind));
        Ok(())
    }

    /// Check the entries of a tree, but for those it shares with the most alike of the trees
    /// this copy checked last (in a delta tree traversal, mostly its delta base or a
    /// sibling): a version of a large directory differs from the one before in a few
    /// entries, and checking each of its entries again made the check's time grow with the
    /// size of the trees, not of the pack. An entry is skipped only when its bytes are those
    /// of a whole entry of the earlier tree (found at the same place in a common prefix or
    /// suffix, or by walking both trees' entries side by side), which is then the same
    /// entry, checked by this copy already. Anything else is checked as it is.
    fn tree(&mut self, data: &[u8]) -> Result<(), TreeError> {
        let alike = (self.recent.iter().enumerate())
            .map(|(i, tree)| (common_prefix(&tree.data, data), i))
            .max();
        let previous = alike
            .and_then(|(_, i)| self.recent.remove(i))
            .unwrap_or_default();
        let (before, bounds) = (&previous.data, &previous.bounds);
        let prefix = common_prefix(before, data);
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
            if !same {
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
            None => {
                self.found.referred.insert(oid);
                if self.found.referred.len() > self.most {
                    return Err(Error::Corrupt {
                        oid,
                        reason: "more objects referred to than there are".into(),
                    });
                }
            }
        }
        if kind != Kind::Blob {
            self.found.expect(oid, kind)?;
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

/// How many bytes `a` and `b` start with alike.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const STEP: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + STEP <= n && a[i..i + STEP] == b[i..i + STEP] {
        i += STEP;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many bytes `a` and `b` end with alike.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const STEP: usize = 64;
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    while i + STEP <= n && a[n - i - STEP..n - i] == b[n - i - STEP..n - i] {
        i += STEP;
    }
    i + a[..n - i]
        .iter()
        .rev()
        .zip(b[..n - i].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
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
        assert!(checker.tree(&before).is_ok());
        assert_eq!(checker.found.expected.get(&oid(1)), None, "named as a blob");
        assert!(checker.tree(&after).is_ok());
        assert_eq!(
            checker.found.expected.get(&oid(1)),
            Some(&Kind::Tree),
            "the later tree's last entry names it as a tree"
        );
    }

    /// With the pack's objects not known yet, references are recorded for later, but no
    /// more different ones than there are objects: past that, one of them is missing.
    #[test]
    fn no_more_references_are_recorded_than_there_are_objects() {
        let entries: Vec<(u8, bool, u8)> = (0..3).map(|i| (i, false, i)).collect();
        for (most, refused) in [(3, false), (2, true)] {
            let mut checker = Checker::new(
                gix_hash::Kind::Sha1,
                None,
                most,
                Arc::default(),
                Arc::default(),
            );
            let got = checker.tree(&tree(&entries));
            assert_eq!(got.is_err(), refused, "at most {most}");
            if !refused {
                assert_eq!(checker.found.referred.len(), 3);
            }
        }
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
                let got = checker.tree(&data);
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
                    prop_assert_eq!(checker.found.expected.get(&entry.oid), Some(&Kind::Tree));
                }
            }
        }
    }

    #[test]
    fn common_ends() {
        let a: Vec<u8> = (0..200u8).collect();
        let mut b = a.clone();
        b[130] = 0;
        assert_eq!(common_prefix(&a, &b), 130);
        assert_eq!(common_suffix(&a, &b), 69);
        assert_eq!(common_prefix(&a, &a[..70]), 70);
        assert_eq!(common_suffix(&a, &a[150..]), 50);
        assert_eq!(common_suffix(&a[..3], &a[150..]), 0);
        assert_eq!(common_prefix(&[], &a), 0);
    }
}
