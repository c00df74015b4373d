//! Reading the objects of one stored pack across the whole history, every base of a delta
//! chain kept on the way (as git's delta-base cache keeps them).
//!
//! gitoxide's object cache keeps the objects asked for, not the bases resolved to make them.
//! Trees are stored as deltas of their newer versions, so reading a history's trees from
//! older to newer resolved each one's chain from its far end again. Here each link of the
//! chain is decoded once and kept, in a cache bounded in bytes, so the next object whose
//! chain passes through it starts there. [`ChainReader`] reads by pack position for writing
//! bitmaps; [`Resolve`] applies a chain, for it and for every read of a delta in a listed pack.

use gix_pack::cache::DecodeEntry as _;
use gix_pack::data::entry::Header;

use crate::Error;
use crate::forest::DeltaForest;
use crate::packs::{RevIndex, StoredPack};

/// The longest chain followed (git's own limit on what it writes is 4095).
const MAX_CHAIN: usize = 4096;
/// Objects larger than this are left to the object database (and not kept here).
const MAX_OBJECT: u64 = 64 << 20;

/// Bytes read (as [`crate::mapped::LetGo`] counts them) between two lettings go of the
/// pack's pages while writing bitmaps.
pub(crate) const LET_GO_EVERY: u64 = 256 << 20;

/// Reads objects of `pack` by pack position.
pub(crate) struct ChainReader<'a> {
    pack: &'a StoredPack,
    rev: &'a RevIndex,
    hash: gix_hash::Kind,
    /// Read at the first object asked for (a walk of a few new commits may need none).
    forest: Option<Option<&'a DeltaForest>>,
    data: std::sync::Arc<crate::packs::PackData>,
    cache: crate::objects::BoundedCache,
    inflate: gix_zlib::Inflate,
    delta: Vec<u8>,
    chain: Vec<gix_pack::data::Entry>,
    /// What was read since the pack's pages were last let go of.
    read: crate::mapped::LetGo,
}

impl<'a> ChainReader<'a> {
    /// A reader keeping up to `cache_bytes` of decoded objects; `None` when the pack cannot
    /// be opened.
    pub(crate) fn new(
        pack: &'a StoredPack,
        rev: &'a RevIndex,
        hash: gix_hash::Kind,
        cache_bytes: usize,
    ) -> Option<ChainReader<'a>> {
        let data = pack.data(hash).ok()?;
        Some(ChainReader {
            pack,
            rev,
            hash,
            forest: None,
            data,
            cache: crate::objects::BoundedCache::new(cache_bytes),
            inflate: gix_zlib::Inflate::default(),
            delta: Vec::new(),
            chain: Vec::new(),
            read: crate::mapped::LetGo::every(LET_GO_EVERY),
        })
    }

    /// Let go of the pack's pages every `bytes` read (as [`crate::mapped::LetGo`] counts).
    #[cfg(test)]
    fn letting_go_every(mut self, bytes: u64) -> Self {
        self.read = crate::mapped::LetGo::every(bytes);
        self
    }

    /// The object at pack position `p` into `out`, with its kind; `None` if it is not read
    /// this way (too large, or a delta against an object outside the pack), and the caller
    /// reads it from the object database.
    pub(crate) fn read(
        &mut self,
        p: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<gix_object::Kind>, Error> {
        let forest = match self.forest {
            Some(forest) => forest,
            None => *self.forest.insert(self.rev.forest(self.pack, self.hash)),
        };
        let Some(forest) = forest else {
            return Ok(None);
        };
        self.chain.clear();
        // A walk reads most of the pack once: its pages are let go of as it goes, counted by
        // the entries inflated (those the cache did not have).
        let mut inflated = crate::mapped::Inflated::default();
        let mut at = p;
        // Up the chain to an object kept already, or to the whole object at its end.
        let kind = loop {
            if at >= self.rev.len() || self.chain.len() > MAX_CHAIN {
                return Ok(None);
            }
            let offset = self.rev.offset(self.pack, at);
            let entry = self.data.entry(offset).map_err(Error::odb)?;
            if let Some((kind, _)) = self.cache.get(0, entry.data_offset, out) {
                break kind;
            }
            if entry.decompressed_size > MAX_OBJECT {
                return Ok(None);
            }
            match entry.header {
                Header::OfsDelta { .. } | Header::RefDelta { .. } => {
                    let Some(base) = forest.base(at) else {
                        return Ok(None);
                    };
                    // The base the entry names, checked: a wrong one of the same size would
                    // make a plausible wrong object.
                    let named = match entry.header {
                        Header::OfsDelta { base_distance } => {
                            offset.checked_sub(base_distance)
                                == Some(self.rev.offset(self.pack, base))
                        }
                        Header::RefDelta { base_id } => {
                            self.pack.index.oid_at_index(self.rev.at(base)) == base_id
                        }
                        _ => false,
                    };
                    if !named {
                        return Ok(None);
                    }
                    self.chain.push(entry);
                    at = base;
                }
                header => {
                    let Some(kind) = header.as_kind() else {
                        return Ok(None);
                    };
                    let read =
                        crate::objects::inflate_entry(&self.data, &entry, &mut self.inflate, out)?;
                    inflated.add(read);
                    self.cache.put(0, entry.data_offset, out, kind, 0);
                    break kind;
                }
            }
        };
        // Down again, each link applied and kept.
        let mut up = Resolve {
            data: &self.data,
            inflate: &mut self.inflate,
            cache: &mut self.cache,
            slot: 0,
            most: MAX_OBJECT,
            cancel: None,
            inflated: &mut inflated,
        };
        let applied = up.apply_chain(&mut self.chain, kind, out, &mut self.delta);
        if inflated.count(&self.read) {
            self.pack.let_go();
        }
        if !applied? {
            return Ok(None);
        }
        Ok(Some(kind))
    }
}

/// What applying a delta chain needs: the pack's data, an inflater, and the cache that keeps
/// each object made (under `slot` and its entry's data offset), with the largest object a
/// delta may state, and the question asked between links (`None`: none is asked).
pub(crate) struct Resolve<'a> {
    pub(crate) data: &'a crate::packs::PackData,
    pub(crate) inflate: &'a mut gix_zlib::Inflate,
    pub(crate) cache: &'a mut crate::objects::BoundedCache,
    pub(crate) slot: u32,
    pub(crate) most: u64,
    pub(crate) cancel: Option<&'a crate::Cancel>,
    /// The entries inflated, counted on.
    pub(crate) inflated: &'a mut crate::mapped::Inflated,
}

/// Links of a chain applied between two cancellation checks: a chain of 4,096 links of 64 MiB
/// objects is minutes of copying, one read of one object.
const CHECK_LINKS: usize = 16;

impl Resolve<'_> {
    /// The deltas of `chain` applied, its last link first, to `out` (the object of `kind` the
    /// last link is a delta of), each object made kept in the cache; `delta` holds each
    /// delta's instructions on the way. `Ok(false)` when a delta states an object over the
    /// largest (`out` is then no object). [`Error::Cancelled`] once `cancel` says so, asked
    /// every [`CHECK_LINKS`] links (a shorter chain is one read among the reads that ask).
    pub(crate) fn apply_chain(
        &mut self,
        chain: &mut Vec<gix_pack::data::Entry>,
        kind: gix_object::Kind,
        out: &mut Vec<u8>,
        delta: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let mut applied = 0usize;
        while let Some(link) = chain.pop() {
            applied += 1;
            if applied.is_multiple_of(CHECK_LINKS) && self.cancel.is_some_and(|c| c.is_cancelled())
            {
                return Err(Error::Cancelled);
            }
            let read = crate::objects::inflate_entry(self.data, &link, self.inflate, delta)?;
            self.inflated.add(read);
            // What the delta says it makes, before making it: a few bytes of instructions
            // can state gigabytes of copies.
            if crate::delta::target_size(delta).is_none_or(|size| size > self.most) {
                return Ok(false);
            }
            *out = crate::delta::apply(out, delta).map_err(|reason| Error::Odb {
                message: format!(
                    "{}: the delta at offset {}: {reason}",
                    self.data.path().display(),
                    link.pack_offset()
                ),
            })?;
            self.cache.put(self.slot, link.data_offset, out, kind, 0);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::ChainReader;
    use crate::Repository;

    /// Every object of a pack with deep delta chains, read by position in an order that
    /// starts chains in the middle (every third position, from each of the first three), is
    /// the object the object database reads, with a cache small enough to drop bases on the
    /// way: with bases named by offset, and by id; with the pack's pages let go of every
    /// read, and then left.
    #[test]
    fn objects_read_along_their_chains_are_the_stored_objects() {
        for (by_offset, let_go) in [(true, 1), (false, u64::MAX)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.git");
            gitcache_testkit::repo::generate(&path, &gitcache_testkit::repo::RepoSpec::small(7))
                .unwrap();
            let offsets = format!("repack.useDeltaBaseOffset={by_offset}");
            gitcache_testkit::git::git_stdout(
                &path,
                &["-c", &offsets, "repack", "-adfq", "--depth=50"],
            );
            let repo = Repository::open(&path).unwrap();
            let packs = repo.stored_packs().unwrap();
            let pack = &packs[0];
            let hash = repo.object_format();
            let rev = repo.rev_cache().get(pack, hash);
            let mut reader = ChainReader::new(pack, &rev, hash, 64 << 10)
                .unwrap()
                .letting_go_every(let_go);
            // Read the other way through a handle of its own, so that its pages are its own.
            let other = Repository::open(&path).unwrap();
            let mut objects = other.objects();
            let mut out = Vec::new();
            let (mut read, mut deltas) = (0, 0);
            for start in 0..3 {
                for p in (start..rev.len()).step_by(3) {
                    let oid = pack.index.oid_at_index(rev.at(p)).to_owned();
                    let kind = reader.read(p, &mut out).unwrap().expect("read by position");
                    let (expected_kind, expected) = objects.read(&oid).unwrap();
                    assert_eq!((kind, out.as_slice()), (expected_kind, expected), "{oid}");
                    read += 1;
                    deltas += usize::from(rev.forest(pack, hash).unwrap().base(p).is_some());
                }
            }
            assert_eq!(read, rev.len(), "each position once");
            assert!(deltas > read / 4, "{deltas} of {read} are deltas");
            // Let go of at each entry not found decoded, or never: none of the pack resident
            // after the last read, or most of it.
            let said = reader.read.said();
            assert_eq!(said as usize > read / 2, let_go == 1, "{said}");
            #[cfg(target_os = "linux")]
            {
                let data = pack.data(hash).unwrap();
                let (len, at) = (data.data_len(), data.entry_slice(0..1).unwrap().as_ptr());
                let resident = crate::mapped::resident(at);
                assert_eq!(
                    resident < len / 2,
                    let_go == 1,
                    "{resident} of {len} resident"
                );
            }
        }
    }

    /// Letting go of a pack's pages leaves none of them resident, and what is read after
    /// is what was read before.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_pack_whose_pages_were_let_go_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        gitcache_testkit::repo::generate(&path, &gitcache_testkit::repo::RepoSpec::small(3))
            .unwrap();
        gitcache_testkit::git::git_stdout(&path, &["repack", "-adq"]);
        let repo = Repository::open(&path).unwrap();
        let packs = repo.stored_packs().unwrap();
        let pack = &packs[0];
        let data = pack.data(repo.object_format()).unwrap();
        let len = data.data_len() as u64;
        let before = data.entry_slice(0..len).unwrap().to_vec();
        let at = data.entry_slice(0..1).unwrap().as_ptr();
        assert!(crate::mapped::resident(at) > 0);
        pack.let_go();
        assert_eq!(crate::mapped::resident(at), 0);
        assert!(data.entry_slice(0..len).unwrap() == before.as_slice());
        assert!(crate::mapped::resident(at) > 0);
    }
}
