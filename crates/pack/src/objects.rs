//! Reading objects: commits, trees and tags parsed just as far as selection needs.

use gix_hash::{Kind as HashKind, ObjectId};
use gix_object::{Find as _, FindHeader as _, Kind};

use crate::Error;
use crate::OidMap;

/// What the walks need of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Commit {
    pub(crate) tree: ObjectId,
    pub(crate) parents: Vec<ObjectId>,
    /// Committer time, seconds since the epoch: git's `commit->date`.
    pub(crate) time: i64,
}

/// What a tree entry points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Tree,
    Blob,
    /// A submodule commit: never sent.
    Gitlink,
}

/// One entry of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TreeEntry {
    pub(crate) kind: EntryKind,
    pub(crate) oid: ObjectId,
}

/// Object access for one request: the listed packs read through their own mappings, an
/// object database handle for the rest, and a memo of parsed commits.
pub(crate) struct Objects {
    odb: gix_odb::HandleArc,
    hash: HashKind,
    buf: Vec<u8>,
    /// The repository's packs as last listed, read through the mappings the writer copies
    /// entries from: one mapping of each file in the process, where reading through the
    /// object database mapped each pack and index a second time (and every page read
    /// through both counted twice). Objects not in them (loose, or in a pack added since)
    /// are read through `odb`.
    packs: Packs,
    /// Reads and headers the object database answered (for tests to see which path ran).
    #[cfg(test)]
    from_odb: std::cell::Cell<u32>,
    /// Deltas read along their chains with every base kept (for tests likewise).
    #[cfg(test)]
    chained: std::cell::Cell<u32>,
    /// Objects stored whole inflated, as read or as the base of a chain (likewise).
    #[cfg(test)]
    inflated_whole: std::cell::Cell<u32>,
    /// Times [`Objects::widen_bases`] widened the cache.
    #[cfg(test)]
    pub(crate) widened: std::cell::Cell<usize>,
    commits: OidMap<Commit>,
    /// Commit graphs of the repository's packs: commits found there are not inflated.
    graphs: Graphs,
    /// Checked every [`CHECK_EVERY`] reads: the one checkpoint every walk passes through.
    cancel: crate::Cancel,
    reads: u32,
    /// Set for a walk reading much of a pack: what it read since the pack's pages were let go
    /// of ([`StoredPack::let_go`](crate::packs::StoredPack::let_go)).
    let_go: Option<crate::mapped::LetGo>,
    /// The entries the read under way inflated, counted by `let_go` once it is done.
    inflated: crate::mapped::Inflated,
    /// Trees kept by the repository handle for its answers, with the bytes this handle may
    /// still put there (one answer must not push out all the others kept).
    trees: Option<std::sync::Arc<crate::trees::TreeCache>>,
    may_keep: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Packs {
    /// The listed pack holding `oid`, and the offset of its entry there.
    fn find(&self, oid: &gix_hash::oid) -> Option<(usize, u64)> {
        let recent = self.recent.get();
        if let Some(&(_, k, offset)) = recent.iter().flatten().find(|(id, ..)| id.as_ref() == oid) {
            return Some((k, offset));
        }
        let last = self.last.get();
        let at = |k: usize| {
            let pack = self.listed.get(k)?;
            let i = crate::packs::lookup(&pack.index, oid)?;
            Some((k, pack.index.pack_offset_at_index(i)))
        };
        let found = at(last).or_else(|| (0..self.listed.len()).filter(|&k| k != last).find_map(at));
        if let Some((k, offset)) = found {
            self.last.set(k);
            self.recent
                .set([Some((oid.to_owned(), k, offset)), recent[0]]);
        }
        found
    }

    /// The mapping of listed pack `k`, if it could be made.
    fn data(&self, k: usize, hash: HashKind) -> Option<&std::sync::Arc<crate::packs::PackData>> {
        self.data[k]
            .get_or_init(|| self.listed[k].data(hash).ok())
            .as_ref()
    }
}

/// The entry of `id` in `pack` (mapped as `data`), if the pack holds it.
fn entry_in(
    pack: &crate::packs::StoredPack,
    data: &crate::packs::PackData,
    id: &gix_hash::oid,
) -> gix_error::Result<Option<gix_pack::data::Entry>> {
    crate::packs::lookup(&pack.index, id)
        .map(|i| data.entry(pack.index.pack_offset_at_index(i)))
        .transpose()
}

/// The delta-base cache as one listed pack sees it: entries kept under the pack's place in
/// the listing, not under gitoxide's id of the file (a checksum of its path, which two packs
/// could share, and would then be given each other's objects).
struct PackCache<'a> {
    k: u32,
    inner: &'a mut BoundedCache,
}

/// gitoxide's delta-base cache, given no object of half its size or more. Its map refuses an
/// object as large as itself, and the buffer refused is kept for the next object put, whatever
/// its size: a chain of large objects, each link put, left as many large buffers behind, each
/// weighed later as the small object it came to hold.
pub(crate) struct BoundedCache {
    inner: gix_pack::cache::lru::MemoryCappedHashmap,
    most: usize,
    bytes: usize,
}

impl BoundedCache {
    pub(crate) fn new(bytes: usize) -> Self {
        BoundedCache {
            inner: gix_pack::cache::lru::MemoryCappedHashmap::new(bytes.max(1)),
            most: bytes / 2,
            bytes,
        }
    }
}

impl gix_pack::cache::DecodeEntry for BoundedCache {
    fn put(&mut self, k: u32, offset: u64, data: &[u8], kind: Kind, compressed_size: usize) {
        if data.len() < self.most {
            self.inner.put(k, offset, data, kind, compressed_size);
        }
    }

    fn get(&mut self, k: u32, offset: u64, out: &mut Vec<u8>) -> Option<(Kind, usize)> {
        self.inner.get(k, offset, out)
    }
}

impl gix_pack::cache::DecodeEntry for PackCache<'_> {
    fn put(&mut self, _: u32, offset: u64, data: &[u8], kind: Kind, compressed_size: usize) {
        self.inner.put(self.k, offset, data, kind, compressed_size);
    }

    fn get(&mut self, _: u32, offset: u64, out: &mut Vec<u8>) -> Option<(Kind, usize)> {
        self.inner.get(self.k, offset, out)
    }
}

/// The commit graphs a request reads commits from, first to last.
pub(crate) type Graphs = std::sync::Arc<[std::sync::Arc<crate::graph::Graph>]>;

/// The longest delta chain [`Objects::read_along_chain`] follows (git's own limit on what it
/// writes is 4095).
const MAX_CHAIN: usize = 4096;
/// Objects larger than this are read by gitoxide's resolution, without every base kept.
const MAX_CHAINED_OBJECT: u64 = 64 << 20;

/// Where the base of the delta `entry` of `pack` lies (`Some(None)`: not in the pack), or
/// `None` for an object stored whole.
fn base_offset(
    pack: &crate::packs::StoredPack,
    entry: &gix_pack::data::Entry,
) -> Option<Option<u64>> {
    match entry.header {
        // A base lies before its delta: no cycle.
        gix_pack::data::entry::Header::OfsDelta { base_distance } => Some(
            (entry.pack_offset())
                .checked_sub(base_distance)
                .filter(|_| base_distance > 0),
        ),
        gix_pack::data::entry::Header::RefDelta { base_id } => Some(
            crate::packs::lookup(&pack.index, &base_id).map(|i| pack.index.pack_offset_at_index(i)),
        ),
        _ => None,
    }
}

/// The data of `entry` (a whole object's, or a delta's instructions), inflated into `out`;
/// the compressed bytes read for it.
pub(crate) fn inflate_entry(
    data: &crate::packs::PackData,
    entry: &gix_pack::data::Entry,
    inflate: &mut gix_zlib::Inflate,
    out: &mut Vec<u8>,
) -> Result<u64, Error> {
    let size = usize::try_from(entry.decompressed_size).map_err(|_| Error::Odb {
        message: "an entry too large for memory".into(),
    })?;
    out.clear();
    out.resize(size, 0);
    let read = data
        .decompress_entry(entry, inflate, out)
        .map_err(Error::odb)?;
    Ok(read as u64)
}

/// Object reads between two cancellation checks.
const CHECK_EVERY: u32 = 1024;

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// The packs [`Objects`] reads first, and what decoding their entries needs.
struct Packs {
    listed: std::sync::Arc<[crate::packs::StoredPack]>,
    /// Each listed pack's mapping, taken when first read from (`None`: it could not be,
    /// the file removed since it was listed; its objects are left to the object database).
    data: Vec<std::cell::OnceCell<Option<std::sync::Arc<crate::packs::PackData>>>>,
    inflate: std::cell::RefCell<gix_zlib::Inflate>,
    /// The listed pack the last object was found in, looked in first.
    last: std::cell::Cell<usize>,
    /// The last two objects found, newest first: an object's header is read before the
    /// object, and a delta is tried between two objects read in turn (a lookup in the
    /// large pack's index that misses, before the small pack that has it, is most of a
    /// read of a small object).
    recent: std::cell::Cell<[Option<(ObjectId, usize, u64)>; 2]>,
    /// Delta bases kept decoded, so that reading along a delta chain does not inflate the
    /// whole chain again each time.
    cache: BoundedCache,
    /// The bytes of the handle's own cache while a wider one is kept (see
    /// [`Objects::widen_bases`]).
    own_cache_bytes: Option<usize>,
}

impl Objects {
    /// Objects of `odb`, those of `packs` read through their own mappings, with a delta-base
    /// cache of `cache_bytes` for them.
    pub(crate) fn new(
        odb: gix_odb::HandleArc,
        hash: HashKind,
        packs: std::sync::Arc<[crate::packs::StoredPack]>,
        cache_bytes: usize,
    ) -> Self {
        Objects {
            odb,
            hash,
            buf: Vec::new(),
            #[cfg(test)]
            from_odb: std::cell::Cell::new(0),
            #[cfg(test)]
            chained: std::cell::Cell::new(0),
            #[cfg(test)]
            inflated_whole: std::cell::Cell::new(0),
            #[cfg(test)]
            widened: std::cell::Cell::new(0),
            packs: Packs {
                data: packs.iter().map(|_| std::cell::OnceCell::new()).collect(),
                listed: packs,
                inflate: Default::default(),
                last: std::cell::Cell::new(0),
                recent: std::cell::Cell::new([None; 2]),
                cache: BoundedCache::new(cache_bytes),
                own_cache_bytes: None,
            },
            commits: OidMap::default(),
            graphs: std::sync::Arc::new([]),
            cancel: crate::Cancel::default(),
            reads: 0,
            let_go: None,
            inflated: Default::default(),
            trees: None,
            may_keep: Default::default(),
        }
    }

    /// Read trees from `trees` when it holds them, and keep there the first `bytes` (as
    /// [`crate::trees::weight`] counts) of those read otherwise: a walk reads the
    /// directories of its wants first, which the next answers read again; past them, it
    /// would copy version after version of a wide directory there to push out the others.
    pub(crate) fn keep_trees(
        &mut self,
        trees: std::sync::Arc<crate::trees::TreeCache>,
        bytes: usize,
    ) {
        self.trees = Some(trees);
        self.may_keep = std::sync::Arc::new(bytes.into());
    }

    /// Let go of a pack's pages every `bytes` read from it (as [`crate::mapped::LetGo`]
    /// counts): for a walk that reads much of a large pack.
    pub(crate) fn letting_go_every(&mut self, bytes: u64) {
        self.let_go = Some(crate::mapped::LetGo::every(bytes));
    }

    /// Keep up to `bytes` of delta bases until [`narrow_bases`](Self::narrow_bases), rather
    /// than the handle's own few (what was kept goes): for a walk that reads the trees of
    /// many commits, version after version of the same directories, each along its chain.
    pub(crate) fn widen_bases(&mut self, bytes: usize) {
        if bytes > self.packs.cache.bytes {
            let own = self.packs.cache.bytes;
            self.packs.own_cache_bytes.get_or_insert(own);
            self.packs.cache = BoundedCache::new(bytes);
            #[cfg(test)]
            self.widened.set(self.widened.get() + 1);
        }
    }

    /// Back to the handle's own delta-base cache, after [`widen_bases`](Self::widen_bases)
    /// (what the wider one kept goes).
    pub(crate) fn narrow_bases(&mut self) {
        if let Some(own) = self.packs.own_cache_bytes.take() {
            self.packs.cache = BoundedCache::new(own);
        }
    }

    /// The bytes the delta-base cache may hold now.
    #[cfg(test)]
    pub(crate) fn bases_bytes(&self) -> usize {
        self.packs.cache.bytes
    }

    /// Read commits from `graphs` where they hold them.
    pub(crate) fn set_graphs(&mut self, graphs: Graphs) {
        self.graphs = graphs;
    }

    /// Count a read; every [`CHECK_EVERY`] reads, see whether the work was cancelled.
    pub(crate) fn tick(&mut self) -> Result<(), Error> {
        self.reads = self.reads.wrapping_add(1);
        if self.reads.is_multiple_of(CHECK_EVERY) && self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Stop reading (with [`Error::Cancelled`]) once `cancel` says so.
    pub(crate) fn set_cancel(&mut self, cancel: crate::Cancel) {
        self.cancel = cancel;
    }

    pub(crate) fn odb(&self) -> &gix_odb::HandleArc {
        &self.odb
    }

    pub(crate) fn hash(&self) -> HashKind {
        self.hash
    }

    /// The kind and size of `oid`, or `None` if the repository lacks it.
    pub(crate) fn header(&self, oid: &ObjectId) -> Result<Option<(Kind, u64)>, Error> {
        // A pack whose file can no longer be mapped (removed since it was listed) leaves the
        // object to the object database, as does an entry that cannot be decoded here.
        if let Some((k, offset)) = self.packs.find(oid)
            && let Some(data) = self.packs.data(k, self.hash)
            && let Ok(entry) = data.entry(offset)
        {
            let pack = &self.packs.listed[k];
            let resolve = |id: &gix_hash::oid| -> gix_error::Result<_> {
                // A base named by id: in the same pack (a completed thin pack's), else
                // wherever the object database finds it.
                if let Some(base) = entry_in(pack, data, id)? {
                    return Ok(Some(gix_pack::data::decode::header::ResolvedBase::InPack(
                        base,
                    )));
                }
                Ok(self
                    .odb
                    .try_header(id)
                    .map_err(|err| gix_error::ErrorExt::raise(gix_error::message!("{err}")))?
                    .map(
                        |h| gix_pack::data::decode::header::ResolvedBase::OutOfPack {
                            kind: h.kind,
                            num_deltas: None,
                        },
                    ))
            };
            let mut inflate = self.packs.inflate.borrow_mut();
            if let Ok(outcome) = data.decode_header(entry, &mut inflate, &resolve) {
                return Ok(Some((outcome.kind, outcome.object_size)));
            }
        }
        #[cfg(test)]
        self.from_odb.set(self.from_odb.get() + 1);
        let header = self.odb.try_header(oid).map_err(Error::odb)?;
        Ok(header.map(|h| (h.kind, h.size)))
    }

    /// [`read`](Self::read), the object handed over: its buffer itself when it holds the
    /// object and nothing else (no copy; shrunk to it when it had much more room), and none
    /// larger than a MiB kept for the next read.
    pub(crate) fn read_owned(&mut self, oid: &ObjectId) -> Result<(Kind, Vec<u8>), Error> {
        let (kind, at, len) = {
            let (kind, data) = self.read(oid)?;
            (kind, data.as_ptr() as usize, data.len())
        };
        let data = if at == self.buf.as_ptr() as usize && len == self.buf.len() {
            let mut data = std::mem::take(&mut self.buf);
            // A delta's buffer had room for its base too: not handed on with a small object.
            if data.capacity() > 2 * data.len() + (64 << 10) {
                data.shrink_to_fit();
            }
            data
        } else {
            // Elsewhere (a cache's copy): read again, and copied.
            self.read(oid)?.1.to_vec()
        };
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok((kind, data))
    }

    /// The bytes the read buffer holds on to.
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The whole object, decompressed and resolved.
    pub(crate) fn read(&mut self, oid: &ObjectId) -> Result<(Kind, &[u8]), Error> {
        self.tick()?;
        // Nothing left over from a read cut short.
        self.inflated = Default::default();
        if let Some((k, offset)) = self.packs.find(oid)
            && let Some(data) = self.packs.data(k, self.hash)
            && let Ok(entry) = data.entry(offset)
        {
            let data = std::sync::Arc::clone(data);
            // A whole object kept as the base of a chain read before (a directory's newest
            // version, read again as itself) is not inflated again.
            if !entry.header.is_delta() {
                use gix_pack::cache::DecodeEntry as _;
                let slot = u32::try_from(k).unwrap_or(u32::MAX);
                if let Some((kind, _)) =
                    (self.packs.cache).get(slot, entry.data_offset, &mut self.buf)
                {
                    return Ok((kind, &self.buf[..]));
                }
            }
            // A chain that cannot be read this way (or fails to) is left to gitoxide, then to
            // the object database, which may hold a sound copy elsewhere.
            if entry.header.is_delta()
                && let Some(kind) = self.read_along_chain(k, &data, entry.clone())?
            {
                self.count_inflated(k);
                return Ok((kind, &self.buf[..]));
            }
            let pack = &self.packs.listed[k];
            let odb = &self.odb;
            let resolve = |id: &gix_hash::oid, out: &mut Vec<u8>| -> gix_error::Result<_> {
                if let Some(base) = entry_in(pack, &data, id)? {
                    return Ok(Some(gix_pack::data::decode::entry::ResolvedBase::InPack(
                        base,
                    )));
                }
                let found = odb
                    .try_find(id, out)
                    .map_err(|err| gix_error::ErrorExt::raise(gix_error::message!("{err}")))?;
                Ok(found.map(|object| {
                    let (kind, end) = (object.kind, object.data.len());
                    gix_pack::data::decode::entry::ResolvedBase::OutOfPack { kind, end }
                }))
            };
            let mut cache = PackCache {
                k: u32::try_from(k).unwrap_or(u32::MAX),
                inner: &mut self.packs.cache,
            };
            let delta = entry.header.is_delta();
            let data_offset = entry.data_offset;
            let decoded = data.decode_entry(
                entry,
                &mut self.buf,
                &mut self.packs.inflate.borrow_mut(),
                &resolve,
                &mut cache,
            );
            // The buffer holds the object and nothing else: the outcome's size is a delta's
            // own when the object came whole from the cache. An entry that cannot be decoded
            // here is left to the object database, which reads it or says why not.
            if let Ok(outcome) = decoded {
                // A whole object: its entry's compressed bytes. A delta resolved here (too
                // large or too deep to be read along its chain above, which is rare): gitoxide
                // says only the last delta's compressed bytes, so the object's size stands
                // for the chain read, which lets go sooner rather than later; none at all
                // when the object came whole from the cache.
                if !delta {
                    #[cfg(test)]
                    self.inflated_whole.set(self.inflated_whole.get() + 1);
                    self.inflated.add(outcome.compressed_size as u64);
                    // A tree read whole is the base of its older versions' chains: kept, so
                    // that reading one of them next does not inflate it again.
                    if outcome.kind == Kind::Tree {
                        use gix_pack::cache::DecodeEntry as _;
                        let slot = u32::try_from(k).unwrap_or(u32::MAX);
                        (self.packs.cache).put(slot, data_offset, &self.buf, Kind::Tree, 0);
                    }
                } else if outcome.num_deltas > 0 {
                    self.inflated.bytes = self.inflated.bytes.saturating_add(outcome.object_size);
                    self.inflated.entries =
                        (self.inflated.entries).saturating_add(u64::from(outcome.num_deltas) + 1);
                }
                self.count_inflated(k);
                return Ok((outcome.kind, &self.buf[..]));
            }
        }
        #[cfg(test)]
        self.from_odb.set(self.from_odb.get() + 1);
        match self.odb.try_find(oid, &mut self.buf).map_err(Error::odb)? {
            Some(data) => Ok((data.kind, data.data)),
            None => Err(Error::MissingObject { oid: *oid }),
        }
    }

    /// The entries the read just done inflated counted, and listed pack `k`'s pages let go of
    /// if a walk reading much of it is due to (see [`letting_go_every`](Self::letting_go_every)).
    fn count_inflated(&mut self, k: usize) {
        if let Some(let_go) = &self.let_go
            && self.inflated.count(let_go)
        {
            self.packs.listed[k].let_go();
        }
        self.inflated = Default::default();
    }

    /// The delta `entry` of listed pack `k` (mapped as `data`) resolved into the buffer along
    /// its chain within that pack, each base on the way kept in the delta-base cache, as git's
    /// cache keeps them: gitoxide's keeps only the object asked for. A mirror's fetched packs
    /// hold a wide tree's versions as deltas of their older versions, and a walk reads them
    /// newest first: each read resolved its chain from the whole object at its far end again
    /// (a fetch of 50 commits each adding a file to a directory of 1,750 entries spent a third
    /// of its time inflating that whole object, 50 times). `None` when it is not read this way
    /// (a base outside the pack, a chain too long, an object too large, or one that fails to
    /// read): the caller reads it as before. [`Error::Cancelled`] is the one error returned.
    fn read_along_chain(
        &mut self,
        k: usize,
        data: &crate::packs::PackData,
        entry: gix_pack::data::Entry,
    ) -> Result<Option<Kind>, Error> {
        let mut out = std::mem::take(&mut self.buf);
        let read = self.chain_into(k, data, entry, &mut out);
        self.buf = out;
        let kind = match read {
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Ok(Some(kind)) => kind,
            Ok(None) | Err(_) => return Ok(None),
        };
        #[cfg(test)]
        self.chained.set(self.chained.get() + 1);
        Ok(Some(kind))
    }

    /// [`read_along_chain`](Self::read_along_chain) into `out`.
    fn chain_into(
        &mut self,
        k: usize,
        data: &crate::packs::PackData,
        entry: gix_pack::data::Entry,
        out: &mut Vec<u8>,
    ) -> Result<Option<Kind>, Error> {
        use gix_pack::cache::DecodeEntry as _;
        let pack = &self.packs.listed[k];
        let slot = u32::try_from(k).unwrap_or(u32::MAX);
        let cache = &mut self.packs.cache;
        let mut chain: Vec<gix_pack::data::Entry> = Vec::new();
        let mut at = entry;
        // Down the chain to an object kept already, or to the whole object at its end.
        let kind = loop {
            if chain.len() > MAX_CHAIN || at.decompressed_size > MAX_CHAINED_OBJECT {
                return Ok(None);
            }
            if let Some((kind, _)) = cache.get(slot, at.data_offset, out) {
                break kind;
            }
            let base = match base_offset(pack, &at) {
                Some(base) => base,
                None => {
                    let Some(kind) = at.header.as_kind() else {
                        return Ok(None);
                    };
                    let read = inflate_entry(data, &at, &mut self.packs.inflate.borrow_mut(), out)?;
                    #[cfg(test)]
                    self.inflated_whole.set(self.inflated_whole.get() + 1);
                    self.inflated.add(read);
                    cache.put(slot, at.data_offset, out, kind, 0);
                    break kind;
                }
            };
            let Some(next) = base.and_then(|offset| data.entry(offset).ok()) else {
                return Ok(None);
            };
            chain.push(std::mem::replace(&mut at, next));
        };
        // Up again, each delta applied and its object kept.
        let mut up = crate::chains::Resolve {
            data,
            inflate: &mut self.packs.inflate.borrow_mut(),
            cache,
            slot,
            most: MAX_CHAINED_OBJECT,
            cancel: Some(&self.cancel),
            inflated: &mut self.inflated,
        };
        if !up.apply_chain(&mut chain, kind, out, &mut Vec::new())? {
            return Ok(None);
        }
        Ok(Some(kind))
    }

    /// The commit `oid`, or `None` if it is another kind of object.
    pub(crate) fn try_commit(&mut self, oid: &ObjectId) -> Result<Option<&Commit>, Error> {
        if !self.commits.contains_key(oid)
            && let Some(commit) = self.graphed(oid)?
        {
            self.commits.insert(*oid, commit);
        }
        if !self.commits.contains_key(oid) {
            let hash = self.hash;
            let (kind, data) = self.read(oid)?;
            if kind != Kind::Commit {
                return Ok(None);
            }
            let commit =
                parse_commit(data, hash).map_err(|reason| Error::Corrupt { oid: *oid, reason })?;
            self.commits.insert(*oid, commit);
        }
        Ok(self.commits.get(oid))
    }

    /// The commit `oid` as a commit graph holds it, if one does.
    fn graphed(&mut self, oid: &ObjectId) -> Result<Option<Commit>, Error> {
        if self.graphs.is_empty() {
            return Ok(None);
        }
        self.tick()?;
        for graph in self.graphs.iter() {
            if let Some(position) = graph.position(oid) {
                // An entry that fails its checks fails the request: reading that commit from
                // its object instead would mix a file's parents with the objects' in one
                // walk, which a forged file could make go round in a circle.
                let commit = graph.commit(position).map_err(|reason| Error::Corrupt {
                    oid: *oid,
                    reason: format!("commit graph: {reason}"),
                })?;
                return Ok(Some(commit));
            }
        }
        Ok(None)
    }

    /// The commit `oid`; any other kind of object is an error.
    pub(crate) fn commit(&mut self, oid: &ObjectId) -> Result<&Commit, Error> {
        // Two lookups keep the borrow checker content; the second is a hash-map hit.
        if self.try_commit(oid)?.is_none() {
            return Err(Error::Corrupt {
                oid: *oid,
                reason: "expected a commit".into(),
            });
        }
        Ok(&self.commits[oid])
    }

    /// What the tag `oid` points to, and that object's kind as the tag states it.
    pub(crate) fn tag_target(&mut self, oid: &ObjectId) -> Result<(ObjectId, Kind), Error> {
        let hash = self.hash;
        let (kind, data) = self.read(oid)?;
        if kind != Kind::Tag {
            return Err(Error::Corrupt {
                oid: *oid,
                reason: "expected a tag".into(),
            });
        }
        parse_tag(data, hash).map_err(|reason| Error::Corrupt { oid: *oid, reason })
    }

    /// Follow tags from `oid` to the first object that is not a tag.
    pub(crate) fn peel(&mut self, oid: &ObjectId) -> Result<(ObjectId, Kind), Error> {
        let mut current = *oid;
        let (mut kind, _) = self
            .header(&current)?
            .ok_or(Error::MissingObject { oid: current })?;
        // Bounded, like git's deref_tag, against tag cycles in corrupt repositories.
        for _ in 0..64 {
            if kind != Kind::Tag {
                return Ok((current, kind));
            }
            (current, kind) = self.tag_target(&current)?;
        }
        Err(Error::Corrupt {
            oid: *oid,
            reason: crate::TAG_CHAIN_TOO_LONG.into(),
        })
    }

    /// Peel `oid` to a commit, if it leads to one.
    pub(crate) fn peel_to_commit(&mut self, oid: &ObjectId) -> Result<Option<ObjectId>, Error> {
        let (target, kind) = self.peel(oid)?;
        Ok((kind == Kind::Commit).then_some(target))
    }

    /// About the bytes reading `oid` makes: the length of its delta chain (the object itself
    /// counted) times the size of the object stored whole at the chain's end (each link
    /// applied makes an object of about that size, though a delta may state a larger one),
    /// from entry headers alone. 0 for a tree kept and for an object outside the listed packs
    /// (loose: one inflation); `u64::MAX` for a chain that cannot be followed within its pack
    /// in [`MAX_CHAIN`] links (a base elsewhere costs what cannot be told from here).
    pub(crate) fn read_cost(&mut self, oid: &ObjectId) -> u64 {
        if self.trees.as_ref().is_some_and(|trees| trees.contains(oid)) {
            return 0;
        }
        let Some((k, offset)) = self.packs.find(oid) else {
            return 0;
        };
        let Some(data) = self.packs.data(k, self.hash) else {
            return 0;
        };
        let pack = &self.packs.listed[k];
        let mut at = match data.entry(offset) {
            Ok(entry) => entry,
            Err(_) => return u64::MAX,
        };
        for links in 1..=MAX_CHAIN as u64 {
            let Some(base) = base_offset(pack, &at) else {
                return links.saturating_mul(at.decompressed_size);
            };
            match base.and_then(|offset| data.entry(offset).ok()) {
                Some(entry) => at = entry,
                None => return u64::MAX,
            }
        }
        u64::MAX
    }

    /// Tree `oid` with its entries' names.
    pub(crate) fn named_tree(&mut self, oid: &ObjectId) -> Result<NamedTree, Error> {
        let hash = self.hash;
        let data = self.tree_bytes(oid)?.to_vec();
        NamedTree::parse(data, hash).map_err(|reason| Error::Corrupt { oid: *oid, reason })
    }

    /// The entries of tree `oid`.
    pub(crate) fn tree(&mut self, oid: &ObjectId) -> Result<Vec<TreeEntry>, Error> {
        let hash = self.hash;
        let data = self.tree_bytes(oid)?;
        parse_tree(data, hash).map_err(|reason| Error::Corrupt { oid: *oid, reason })
    }

    /// The content of `oid`, which must be a tree: kept already, or read (and kept, while
    /// this handle may keep more; see [`keep_trees`](Self::keep_trees)).
    fn tree_bytes(&mut self, oid: &ObjectId) -> Result<&[u8], Error> {
        let trees = self.trees.clone();
        if let Some(kept) = trees.as_ref().and_then(|trees| trees.get(oid)) {
            self.tick()?;
            self.buf.clear();
            self.buf.extend_from_slice(&kept);
            return Ok(&self.buf);
        }
        let may_keep = std::sync::Arc::clone(&self.may_keep);
        match self.read(oid)? {
            (Kind::Tree, data) => {
                let weight = crate::trees::weight(data.len());
                let left = may_keep.load(std::sync::atomic::Ordering::Relaxed);
                if let Some(trees) = trees.filter(|_| weight <= left)
                    && trees.put(oid, data)
                {
                    may_keep.store(left - weight, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(data)
            }
            _ => Err(Error::Corrupt {
                oid: *oid,
                reason: "expected a tree".into(),
            }),
        }
    }
}

fn hex_oid(hex: &[u8], hash: HashKind) -> Result<ObjectId, String> {
    if hex.len() != hash.len_in_hex() {
        return Err(format!("object id of {} characters", hex.len()));
    }
    ObjectId::from_hex(hex).map_err(|e| e.to_string())
}

/// The next line of `data` from `at` and where the one after starts, if it ends with a
/// line feed.
fn next_line(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = data.get(at..)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    Some((&rest[..end], at + end + 1))
}

/// Parse the headers of a commit as git's `parse_commit_buffer` reads them: the `tree` on
/// the first line, the `parent`s on the lines right after it (a `tree` or `parent` line
/// further down is no such thing to git, whatever `fsck` says of it), and the committer
/// time from a `committer` line right after the `author` line that follows them (else 0).
pub(crate) fn parse_commit(data: &[u8], hash: HashKind) -> Result<Commit, String> {
    let hex_len = hash.len_in_hex();
    // `tree <id>\n` and at least a byte after it.
    let tree_line = 5 + hex_len;
    if data.len() <= tree_line + 1 || !data.starts_with(b"tree ") || data[tree_line] != b'\n' {
        return Err("commit without tree".into());
    }
    let tree = hex_oid(&data[5..tree_line], hash)?;
    let mut at = tree_line + 1;
    // `parent <id>\n` lines while one fits before the end; one that fits with nothing
    // after it, or is not one, is an error.
    let parent_line = 7 + hex_len;
    let mut parents = Vec::new();
    while at + parent_line < data.len() && data[at..].starts_with(b"parent ") {
        if data.len() <= at + parent_line + 1 || data[at + parent_line] != b'\n' {
            return Err("bad parents".into());
        }
        let hex = &data[at + 7..at + parent_line];
        parents.push(hex_oid(hex, hash).map_err(|e| format!("bad parents: {e}"))?);
        at += parent_line + 1;
    }
    let time = match next_line(data, at) {
        Some((author, next)) if author.starts_with(b"author") => match next_line(data, next) {
            Some((committer, _)) if committer.starts_with(b"committer") => {
                signature_time(committer)
            }
            _ => 0,
        },
        _ => 0,
    };
    Ok(Commit {
        tree,
        parents,
        time,
    })
}

/// The time of `Name <email> 1700000000 +0000`, as git's parse_commit_date reads it
/// (0 when unreadable).
fn signature_time(sig: &[u8]) -> i64 {
    let Some(close) = sig.iter().rposition(|&b| b == b'>') else {
        return 0;
    };
    let rest = &sig[close + 1..];
    // git's own `isspace` (not C's): a tab or a carriage return may stand before the time
    // too, a vertical tab or a form feed may not.
    let digits: Vec<u8> = rest
        .iter()
        .skip_while(|b| matches!(b, b' ' | b'\t' | b'\r'))
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Parse the `object` and `type` headers of a tag as git's `parse_tag_buffer` reads them:
/// the first line and the second (others further down are no such thing to git).
pub(crate) fn parse_tag(data: &[u8], hash: HashKind) -> Result<(ObjectId, Kind), String> {
    // As short as git reads none (`object`, `type` and a `tag` line at the least).
    if data.len() < hash.len_in_hex() + 24 {
        return Err("tag too short".into());
    }
    let (first, at) = next_line(data, 0).ok_or("tag without object")?;
    let hex = first.strip_prefix(b"object ").ok_or("tag without object")?;
    let target = hex_oid(hex, hash)?;
    let (second, _) = next_line(data, at).ok_or("tag without type")?;
    let name = second.strip_prefix(b"type ").ok_or("tag without type")?;
    let kind = Kind::from_bytes(name).map_err(|e| e.to_string())?;
    Ok((target, kind))
}

/// Parse a tree: `<octal mode> <name>\0<raw id>` entries.
pub(crate) fn parse_tree(data: &[u8], hash: HashKind) -> Result<Vec<TreeEntry>, String> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (entry, next) = tree_entry(data, at, hash)?;
        entries.push(entry);
        at = next;
    }
    Ok(entries)
}

/// A tree's entries with their names.
#[derive(Debug)]
pub(crate) struct NamedTree {
    pub(crate) entries: Vec<TreeEntry>,
    pub(crate) names: Names,
}

/// The names of a tree's entries: its bytes, and where each entry starts in them.
#[derive(Debug)]
pub(crate) struct Names {
    data: Vec<u8>,
    starts: Vec<u32>,
}

impl Names {
    /// The name of entry `i`.
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        let at = self
            .starts
            .get(i)
            .map_or(self.data.len(), |&at| at as usize);
        tree_entry_name(&self.data[at..])
    }
}

impl NamedTree {
    fn parse(data: Vec<u8>, hash: HashKind) -> Result<NamedTree, String> {
        let (mut entries, mut starts) = (Vec::new(), Vec::new());
        let mut at = 0;
        while at < data.len() {
            let (entry, next) = tree_entry(&data, at, hash)?;
            entries.push(entry);
            starts.push(u32::try_from(at).map_err(|_| "tree of 4 GiB or more")?);
            at = next;
        }
        Ok(NamedTree {
            entries,
            names: Names { data, starts },
        })
    }

    /// The tree's content, as stored.
    pub(crate) fn content(&self) -> &[u8] {
        &self.names.data
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.names.data.len() + self.entries.len() * (std::mem::size_of::<TreeEntry>() + 4)
    }

    /// The entry named `name` of kind `kind`, found by git's order of entries (see
    /// [`git_order`]). In a tree not in that order, or one whose names hold a `/`, it may be
    /// missed, never another one returned.
    pub(crate) fn find(&self, name: &[u8], kind: EntryKind) -> Option<TreeEntry> {
        let (mut low, mut high) = (0, self.entries.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let entry = self.entries[mid];
            let theirs = self.names.get(mid);
            match git_order(theirs, entry.kind, name, kind) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => {
                    return (entry.kind == kind && theirs == name).then_some(entry);
                }
            }
        }
        None
    }

    /// The id of the entry named `name` of kind `kind`, looked for from entry `*next` on,
    /// which moves past the entries that sort before it: asked for in git's order (another
    /// tree's entries, read alongside), the tree is read through once. As [`Self::find`], an
    /// entry may be missed in a tree out of order, never another one returned.
    pub(crate) fn find_from(
        &self,
        next: &mut usize,
        name: &[u8],
        kind: EntryKind,
    ) -> Option<ObjectId> {
        while let Some(entry) = self.entries.get(*next) {
            let theirs = self.names.get(*next);
            match git_order(theirs, entry.kind, name, kind) {
                std::cmp::Ordering::Less => *next += 1,
                std::cmp::Ordering::Equal => {
                    return (entry.kind == kind && theirs == name).then_some(entry.oid);
                }
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}

/// How two tree entries sort in git's order: by name, a tree's as if it ended in `/`.
pub(crate) fn git_order(
    a: &[u8],
    a_kind: EntryKind,
    b: &[u8],
    b_kind: EntryKind,
) -> std::cmp::Ordering {
    let slash = |k: EntryKind| if k == EntryKind::Tree { &b"/"[..] } else { b"" };
    // The bytes both names have decide, but where one name begins the other.
    let common = a.len().min(b.len());
    match a[..common].cmp(&b[..common]) {
        std::cmp::Ordering::Equal => a
            .iter()
            .chain(slash(a_kind))
            .cmp(b.iter().chain(slash(b_kind))),
        other => other,
    }
}

/// The file type bits of a tree entry's mode (see [`mode_bits`]).
pub(crate) const FILE_TYPE: u32 = 0o170_000;
/// A directory's type bits: a tree.
pub(crate) const DIRECTORY: u32 = 0o040_000;
/// A regular file's type bits: a blob.
pub(crate) const REGULAR: u32 = 0o100_000;
/// A symbolic link's type bits: a blob holding its target.
pub(crate) const SYMLINK: u32 = 0o120_000;

/// A tree entry's mode as git reads it (`get_mode`): octal digits, wrapping as C's
/// `unsigned int` does. Judged by its file type bits ([`FILE_TYPE`]) as git's `canon_mode`
/// judges it: [`DIRECTORY`] is a tree (`40755` too), [`REGULAR`] a file, [`SYMLINK`] a link,
/// anything else a gitlink (`644` too).
pub(crate) fn mode_bits(mode: &[u8]) -> Result<u32, String> {
    if mode.is_empty() {
        return Err("malformed mode in tree entry".into());
    }
    let mut bits: u32 = 0;
    for &digit in mode {
        if !(b'0'..=b'7').contains(&digit) {
            return Err("malformed mode in tree entry".into());
        }
        bits = bits.wrapping_shl(3).wrapping_add(u32::from(digit - b'0'));
    }
    Ok(bits)
}

/// The name in one tree entry's bytes (between its mode and its id), as [`tree_entry`]
/// found them.
pub(crate) fn tree_entry_name(entry: &[u8]) -> &[u8] {
    let start = entry.iter().position(|&b| b == b' ').map_or(0, |s| s + 1);
    let end = entry[start..]
        .iter()
        .position(|&b| b == 0)
        .map_or(entry.len(), |e| start + e);
    &entry[start..end]
}

/// The entry of the tree `data` that starts at `at`, and where the next one starts. An entry
/// is read from its own bytes alone: the same bytes at an entry's start elsewhere are the
/// same entry.
pub(crate) fn tree_entry(
    data: &[u8],
    at: usize,
    hash: HashKind,
) -> Result<(TreeEntry, usize), String> {
    let data = &data[at..];
    let space = data
        .iter()
        .position(|&b| b == b' ')
        .ok_or("tree entry without mode")?;
    let mode = &data[..space];
    let nul = data[space..]
        .iter()
        .position(|&b| b == 0)
        .ok_or("tree entry without name")?
        + space;
    let end = nul + 1 + hash.len_in_bytes();
    let id = data.get(nul + 1..end).ok_or("truncated tree entry")?;
    // The modes git writes, told by their text; any other by its bits.
    let kind = match mode {
        b"100644" | b"100755" | b"120000" => EntryKind::Blob,
        b"40000" => EntryKind::Tree,
        b"160000" => EntryKind::Gitlink,
        _ => match mode_bits(mode)? & FILE_TYPE {
            DIRECTORY => EntryKind::Tree,
            REGULAR | SYMLINK => EntryKind::Blob,
            _ => EntryKind::Gitlink,
        },
    };
    let entry = TreeEntry {
        kind,
        oid: ObjectId::from_bytes_or_panic(id),
    };
    Ok((entry, at + end))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A work tree with a history of shrinking files, packed by `git repack -adq` with
    /// `config` (`-c` options), and the ids of its objects.
    fn packed_history(config: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Vec<ObjectId>) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        std::fs::create_dir(&work).unwrap();
        gitcache_testkit::git::git_stdout(&work, &["init", "-q"]);
        gitcache_testkit::repo::commit_shrinking_files(&work, 8);
        let repack: Vec<&str> = config.iter().chain(&["repack", "-adq"]).copied().collect();
        gitcache_testkit::git::git_stdout(&work, &repack);
        let listed = gitcache_testkit::git::git_stdout(&work, &["rev-list", "--objects", "--all"]);
        let ids = listed
            .lines()
            .map(|line| ObjectId::from_hex(&line.as_bytes()[..40]).unwrap())
            .collect();
        (dir, work, ids)
    }

    #[test]
    fn deltas_on_bases_named_by_id_are_read_from_the_listed_packs() {
        // Deltas whose bases are named by id (`REF_DELTA`), as git writes without
        // `ofs-delta`.
        let (_dir, work, ids) = packed_history(&["-c", "repack.useDeltaBaseOffset=false"]);
        let repo = crate::Repository::open(work.join(".git")).unwrap();
        let mut objects = repo.objects();
        let mut by_id = 0;
        for oid in ids {
            let (k, offset) = objects.packs.find(&oid).expect("in the pack");
            let data = objects.packs.data(k, HashKind::Sha1).expect("mapped");
            let header = data.entry(offset).unwrap().header;
            by_id += usize::from(matches!(
                header,
                gix_pack::data::entry::Header::RefDelta { .. }
            ));
            let size = objects.header(&oid).unwrap().map(|(_, size)| size);
            let (kind, data) = objects.read(&oid).unwrap();
            assert_eq!(size, Some(data.len() as u64));
            let id = gix_object::compute_hash(HashKind::Sha1, kind, data).unwrap();
            assert_eq!(id, oid);
        }
        assert!(by_id > 0, "git wrote no delta on a base named by id");
        assert_eq!(
            objects.from_odb.get(),
            0,
            "all read from the pack's own mapping"
        );
    }

    /// Every object of packs with chains of up to 50 deltas (on bases named by offset, and by
    /// id), read in orders that meet chains from either end and in the middle, with a cache
    /// small enough to drop bases on the way, hashes to its id (with bases named by id, the
    /// pack's pages let go of at every read).
    #[test]
    fn deltas_read_along_their_chains_are_the_stored_objects() {
        for by_offset in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.git");
            let spec = gitcache_testkit::repo::RepoSpec::small(11);
            gitcache_testkit::repo::generate(&path, &spec).unwrap();
            let offsets = format!("repack.useDeltaBaseOffset={by_offset}");
            let repack = [
                "-c",
                &offsets,
                "repack",
                "-adfq",
                "--depth=50",
                "--window=50",
            ];
            gitcache_testkit::git::git_stdout(&path, &repack);
            let repo = crate::Repository::open(&path).unwrap();
            let listed =
                gitcache_testkit::git::git_stdout(&path, &["rev-list", "--objects", "--all"]);
            let ids: Vec<ObjectId> = listed
                .lines()
                .map(|line| ObjectId::from_hex(&line.as_bytes()[..40]).unwrap())
                .collect();
            let mut objects = repo.objects_caching(16 << 10);
            if !by_offset {
                // The pack's pages let go of at every read.
                objects.letting_go_every(1);
            }
            let n = ids.len();
            let orders: [Vec<usize>; 3] = [
                (0..n).collect(),
                (0..n).rev().collect(),
                (0..3).flat_map(|start| (start..n).step_by(3)).collect(),
            ];
            for order in orders {
                for i in order {
                    let oid = ids[i];
                    let (kind, data) = objects.read(&oid).unwrap();
                    let id = gix_object::compute_hash(HashKind::Sha1, kind, data).unwrap();
                    assert_eq!(
                        id, oid,
                        "by offset {by_offset}: {kind} read as something else"
                    );
                }
            }
            assert!(
                objects.chained.get() as usize > n / 2,
                "{} of {}",
                objects.chained.get(),
                3 * n
            );
            assert_eq!(objects.from_odb.get(), 0);
            // Reads that inflated entries said to let go (each one, at every byte), and the
            // pack's pages went: none resident after the last read, where reading it whole
            // three times without letting go leaves most of it.
            let said = objects.let_go.as_ref().map_or(0, |l| l.said());
            assert_eq!(said as usize > n / 2, !by_offset, "{said} of {}", 3 * n);
            #[cfg(target_os = "linux")]
            {
                let data = objects.packs.listed[0].data(HashKind::Sha1).unwrap();
                let (len, at) = (data.data_len(), data.entry_slice(0..1).unwrap().as_ptr());
                let resident = crate::mapped::resident(at);
                assert_eq!(
                    resident < len / 2,
                    !by_offset,
                    "{resident} of {len} resident"
                );
            }
        }
    }

    /// A tree read whole and then an older version stored as a delta on it (a walk reads a
    /// directory's newest version first): the whole one is inflated once, not again as the
    /// base of the other's chain; read again, it comes from the cache, the same.
    #[test]
    fn a_tree_read_whole_is_not_inflated_again_as_a_base() {
        let (_dir, repo, roots) = one_file_changed(4);
        let mut objects = repo.objects();
        let stored = |objects: &Objects, oid: &ObjectId| {
            let (k, offset) = objects.packs.find(oid).expect("in the pack");
            let data = objects.packs.data(k, HashKind::Sha1).expect("mapped");
            data.entry(offset).unwrap().header.is_delta()
        };
        // git keeps the newest version whole and the older ones as deltas on it.
        let newest = *roots.last().unwrap();
        assert!(!stored(&objects, &newest));
        let older = roots[2];
        assert!(stored(&objects, &older));
        let whole = objects.read(&newest).unwrap().1.to_vec();
        assert_eq!(objects.inflated_whole.get(), 1);
        let (kind, data) = objects.read(&older).unwrap();
        let id = gix_object::compute_hash(HashKind::Sha1, kind, data).unwrap();
        assert_eq!(id, older);
        assert_eq!(objects.inflated_whole.get(), 1, "the base inflated again");
        assert_eq!(objects.read(&newest).unwrap(), (Kind::Tree, &whole[..]));
        assert_eq!(objects.inflated_whole.get(), 1);
    }

    /// A repository of `rounds` commits, each made after `write(work tree, round)`, packed
    /// with deltas (`git repack -adf`), with the root tree of each commit, oldest first.
    pub(crate) fn root_versions(
        rounds: usize,
        write: impl Fn(&std::path::Path, usize),
    ) -> (tempfile::TempDir, crate::Repository, Vec<ObjectId>) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        std::fs::create_dir(&work).unwrap();
        let git = |args: &[&str]| gitcache_testkit::git::git_stdout(&work, args);
        git(&["init", "-q"]);
        let roots = (0..rounds)
            .map(|round| {
                write(&work, round);
                git(&["add", "-A"]);
                git(&["commit", "-qm", "c"]);
                ObjectId::from_hex(git(&["rev-parse", "HEAD^{tree}"]).trim().as_bytes()).unwrap()
            })
            .collect();
        git(&["repack", "-adfq"]);
        let repo = crate::Repository::open(work.join(".git")).unwrap();
        (dir, repo, roots)
    }

    /// [`root_versions`] of a directory of 200 files, one of them changed in every commit:
    /// git stores the older roots as deltas.
    pub(crate) fn one_file_changed(
        rounds: usize,
    ) -> (tempfile::TempDir, crate::Repository, Vec<ObjectId>) {
        root_versions(rounds, |work, round| {
            if round == 0 {
                for i in 0..200 {
                    std::fs::write(work.join(format!("f{i:03}")), format!("file {i}\n")).unwrap();
                }
            }
            std::fs::write(work.join("f000"), format!("round {round}\n")).unwrap();
        })
    }

    /// What reading a tree makes, from its headers: its size stored whole, its chain's links
    /// times the size at its end stored as a delta, nothing kept.
    #[test]
    fn the_cost_of_a_read_is_its_chain_times_its_size() {
        let (_dir, repo, roots) = one_file_changed(3);
        repo.stored_packs().unwrap();
        let size = 200 * "100644 f000\0".len() as u64 + 200 * 20;
        let mut objects = repo.objects();
        // git keeps the newest version whole and the older ones as deltas, on it or on each
        // other.
        assert_eq!(objects.read_cost(&roots[2]), size);
        let older = objects.read_cost(&roots[1]);
        assert!(older >= 2 * size && older % size == 0, "{older}");
        assert!(objects.read_cost(&roots[0]) >= 2 * size);
        objects.tree(&roots[1]).unwrap();
        assert_eq!(objects.read_cost(&roots[1]), 0, "kept");
        let absent = ObjectId::from_bytes_or_panic(&[7; 20]);
        assert_eq!(objects.read_cost(&absent), 0);
    }

    /// An object handle keeps the first trees it reads, up to the bytes it may keep, and a
    /// handle reading a kept one takes it from there: the same content, nothing inflated.
    #[test]
    fn trees_read_first_are_kept_up_to_the_handles_share() {
        let (_dir, repo, roots) = root_versions(3, |work, round| {
            for i in 0..100 {
                std::fs::write(work.join(format!("f{i:03}")), format!("{round}\n")).unwrap();
            }
        });
        repo.stored_packs().unwrap();
        // Each root holds 100 entries of the same names: the same size.
        let size = 100 * "100644 f000\0".len() + 100 * 20;
        let trees = std::sync::Arc::new(crate::trees::TreeCache::new(1 << 20));
        let mut objects = repo.objects();
        objects.keep_trees(
            std::sync::Arc::clone(&trees),
            2 * crate::trees::weight(size) + 1,
        );
        let read: Vec<Vec<TreeEntry>> = (roots.iter().rev())
            .map(|root| objects.tree(root).unwrap())
            .collect();
        assert!(trees.held_bytes() <= 2 * crate::trees::weight(size));
        assert!(trees.get(&roots[2]).is_some() && trees.get(&roots[1]).is_some());
        assert!(trees.get(&roots[0]).is_none(), "past the handle's share");

        let mut other = repo.objects();
        other.keep_trees(std::sync::Arc::clone(&trees), 0);
        assert_eq!(other.tree(&roots[2]).unwrap(), read[0]);
        assert_eq!(other.tree(&roots[1]).unwrap(), read[1]);
        assert_eq!(
            (other.inflated_whole.get(), other.chained.get()),
            (0, 0),
            "taken as kept"
        );
        assert_eq!(other.tree(&roots[0]).unwrap(), read[2]);
        assert!(other.inflated_whole.get() + other.chained.get() > 0, "read");
        assert!(
            trees.get(&roots[0]).is_none(),
            "a handle of no share keeps nothing"
        );
    }

    #[test]
    fn objects_are_read_from_the_listed_packs_alike_every_time() {
        let (_dir, work, ids) = packed_history(&[]);
        let repo = crate::Repository::open(work.join(".git")).unwrap();
        let mut objects = repo.objects();
        // Some are stored as deltas, on chains of more than one.
        let depths: Vec<u32> = ids
            .iter()
            .map(|oid| {
                let (k, offset) = objects.packs.find(oid).expect("in the pack");
                let data = objects.packs.data(k, HashKind::Sha1).expect("mapped");
                let mut depth = 0;
                let mut entry = data.entry(offset).unwrap();
                while let gix_pack::data::entry::Header::OfsDelta { base_distance } = entry.header {
                    depth += 1;
                    entry = data
                        .entry(entry.checked_base_pack_offset(base_distance).unwrap())
                        .unwrap();
                }
                depth
            })
            .collect();
        assert!(depths.iter().any(|&d| d > 1), "{depths:?}");
        // Twice: the first time, chains meet bases cached along the way; the second time,
        // objects stored as deltas come whole from the cache (whose outcome states the
        // delta's size, not the object's).
        for _ in 0..2 {
            for oid in &ids {
                assert!(objects.packs.find(oid).is_some(), "{oid} is in the pack");
                let header = objects.header(oid).unwrap();
                let (kind, data) = objects.read(oid).unwrap();
                assert_eq!(header, Some((kind, data.len() as u64)));
                let id = gix_object::compute_hash(HashKind::Sha1, kind, data).unwrap();
                assert_eq!(id, *oid, "{kind} read as something else");
            }
        }
        // Read through the pack's own mapping, not the object database.
        assert!(
            objects
                .packs
                .data
                .iter()
                .all(|d| matches!(d.get(), Some(Some(_))))
        );
        assert_eq!(objects.from_odb.get(), 0);
        // An object written after the listing is read through the object database.
        let loose =
            gitcache_testkit::git::write_blob(&work.join(".git"), b"written after the listing\n");
        let loose = ObjectId::from_hex(loose.as_bytes()).unwrap();
        assert!(objects.packs.find(&loose).is_none());
        assert_eq!(objects.header(&loose).unwrap(), Some((Kind::Blob, 26)));
        assert_eq!(
            objects.read(&loose).unwrap().1,
            b"written after the listing\n"
        );
        assert_eq!(objects.from_odb.get(), 2);
    }

    /// Write a pack of `entries` (an object's id, its entry's header, the entry's data
    /// before compression) and its index into the pack directory of `git_dir`, as a writer
    /// other than git could leave one; the pack's path.
    fn write_pack_by_hand(
        git_dir: &std::path::Path,
        entries: &[(ObjectId, gix_pack::data::entry::Header, Vec<u8>)],
    ) -> std::path::PathBuf {
        use std::io::Write as _;
        let mut pack = b"PACK".to_vec();
        pack.extend(2u32.to_be_bytes());
        pack.extend(u32::try_from(entries.len()).unwrap().to_be_bytes());
        let mut indexed = Vec::new();
        for (oid, header, data) in entries {
            let start = pack.len();
            header.write_to(data.len() as u64, &mut pack).unwrap();
            let mut zlib = flate2::write::ZlibEncoder::new(&mut pack, Default::default());
            zlib.write_all(data).unwrap();
            zlib.finish().unwrap();
            let mut crc = flate2::Crc::new();
            crc.update(&pack[start..]);
            let offset = start as u64;
            let crc32 = crc.sum();
            indexed.push((*oid, crate::PackEntry { offset, crc32 }));
        }
        let digest: [u8; 20] = <sha1::Sha1 as sha1::Digest>::digest(&pack).into();
        pack.extend(digest);
        let checksum = ObjectId::from_bytes_or_panic(&digest);
        let path = git_dir.join(format!("objects/pack/pack-{checksum}.pack"));
        std::fs::write(&path, &pack).unwrap();
        let index = path.with_extension("idx");
        crate::indexing::write_index_of(&index, &indexed, &checksum, HashKind::Sha1).unwrap();
        path
    }

    /// A pack whose deltas name each other as bases (a cycle no writer makes, as damage or a
    /// hostile writer could leave): reading fails with an error, in bounded time, and
    /// nothing is kept as if it were an object.
    #[test]
    fn deltas_whose_chain_is_a_cycle_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        gitcache_testkit::git::git_stdout(dir.path(), &["init", "-q", "--bare", "r.git"]);
        let git_dir = dir.path().join("r.git");
        let base: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let source = crate::delta::SourceIndex::new(base.as_bytes()).unwrap();
        let delta = |extra: &str| {
            let target = format!("{base}{extra}\n");
            let delta = crate::delta::encode(&source, target.as_bytes(), usize::MAX).unwrap();
            (blob_id(target.as_bytes()), delta)
        };
        let (own, own_delta) = delta("its own base");
        let ((a, a_delta), (b, b_delta)) = (delta("a"), delta("b"));
        let by_id = |base_id| gix_pack::data::entry::Header::RefDelta { base_id };
        write_pack_by_hand(
            &git_dir,
            &[
                (own, by_id(own), own_delta),
                (a, by_id(b), a_delta),
                (b, by_id(a), b_delta),
            ],
        );
        let repo = crate::Repository::open(&git_dir).unwrap();
        let mut objects = repo.objects();
        for oid in [own, a, b, own] {
            assert!(objects.packs.find(&oid).is_some());
            assert!(objects.read(&oid).is_err(), "{oid} read");
        }
        assert_eq!(objects.chained.get(), 0);
    }

    /// A read along a long chain asks whether the work was cancelled between its links: a
    /// chain of 4,096 links of large objects is one read, and minutes of copying.
    #[test]
    fn a_read_along_a_long_chain_stops_once_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        gitcache_testkit::git::git_stdout(dir.path(), &["init", "-q", "--bare", "r.git"]);
        let git_dir = dir.path().join("r.git");
        // A blob, then 40 versions each stored as a delta of the one before.
        let version = |n: usize| -> Vec<u8> {
            (0..200 + n)
                .map(|i| format!("line {i}\n"))
                .collect::<String>()
                .into_bytes()
        };
        let mut entries = vec![(
            blob_id(&version(0)),
            gix_pack::data::entry::Header::Blob,
            version(0),
        )];
        for n in 1..=40 {
            let before = version(n - 1);
            let source = crate::delta::SourceIndex::new(&before).unwrap();
            let delta = crate::delta::encode(&source, &version(n), usize::MAX).unwrap();
            let base_id = entries[n - 1].0;
            let header = gix_pack::data::entry::Header::RefDelta { base_id };
            entries.push((blob_id(&version(n)), header, delta));
        }
        write_pack_by_hand(&git_dir, &entries);
        let repo = crate::Repository::open(&git_dir).unwrap();
        let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = |at: usize, cancel: bool| {
            let mut objects = repo.objects_caching(0);
            let flag = std::sync::Arc::clone(&cancelled);
            flag.store(cancel, std::sync::atomic::Ordering::Relaxed);
            objects.set_cancel(crate::Cancel::when(move || {
                flag.load(std::sync::atomic::Ordering::Relaxed)
            }));
            objects.read(&entries[at].0).map(|(_, data)| data.to_vec())
        };
        // Not cancelled: the last version, read along all 40 links.
        assert_eq!(read(40, false).unwrap(), version(40));
        // Cancelled: a chain shorter than the links between two checks is one read among
        // those that ask; a longer one stops on the way, not left to another reader.
        assert_eq!(read(10, true).unwrap(), version(10));
        assert!(matches!(read(40, true), Err(Error::Cancelled)));
    }

    /// The id of a blob of `content`.
    fn blob_id(content: &[u8]) -> ObjectId {
        gix_object::compute_hash(HashKind::Sha1, Kind::Blob, content).unwrap()
    }

    #[test]
    fn a_delta_on_a_base_outside_its_pack_is_decoded_there_with_the_base_from_the_odb() {
        // git never stores such a pack (gitcache completes a thin pack with its bases when
        // taking it in), but a pack left by another writer may hold one.
        let dir = tempfile::tempdir().unwrap();
        gitcache_testkit::git::git_stdout(dir.path(), &["init", "-q", "--bare", "r.git"]);
        let git_dir = dir.path().join("r.git");
        let base: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let base_id = gitcache_testkit::git::write_blob(&git_dir, base.as_bytes());
        let base_id = ObjectId::from_hex(base_id.as_bytes()).unwrap();
        let target = format!("{base}and one line more\n");
        let target_id = blob_id(target.as_bytes());
        let source = crate::delta::SourceIndex::new(base.as_bytes()).unwrap();
        let delta = crate::delta::encode(&source, target.as_bytes(), usize::MAX).unwrap();
        let header = gix_pack::data::entry::Header::RefDelta { base_id };
        write_pack_by_hand(&git_dir, &[(target_id, header, delta)]);

        let repo = crate::Repository::open(&git_dir).unwrap();
        let mut objects = repo.objects();
        assert!(objects.packs.find(&target_id).is_some());
        assert!(objects.packs.find(&base_id).is_none(), "the base is loose");
        let size = target.len() as u64;
        assert_eq!(
            objects.header(&target_id).unwrap(),
            Some((Kind::Blob, size))
        );
        let (kind, data) = objects.read(&target_id).unwrap();
        assert_eq!((kind, data), (Kind::Blob, target.as_bytes()));
        // Decoded through the pack's own mapping: the object database answered for the
        // base alone, which is not counted.
        assert!(matches!(objects.packs.data[0].get(), Some(Some(_))));
        assert_eq!(objects.from_odb.get(), 0);
        // A base found nowhere: the object database cannot read the delta either.
        let missing = blob_id(b"a base this repository lacks\n");
        let orphan = format!("{base}a delta on a base that is nowhere\n");
        let orphan_id = blob_id(orphan.as_bytes());
        let delta = crate::delta::encode(&source, orphan.as_bytes(), usize::MAX).unwrap();
        let header = gix_pack::data::entry::Header::RefDelta { base_id: missing };
        write_pack_by_hand(&git_dir, &[(orphan_id, header, delta)]);
        let repo = crate::Repository::open(&git_dir).unwrap();
        let mut objects = repo.objects();
        let (k, _) = objects.packs.find(&orphan_id).expect("listed");
        let err = objects.read(&orphan_id).unwrap_err();
        assert!(
            matches!(objects.packs.data[k].get(), Some(Some(_))),
            "mapped"
        );
        assert_eq!(
            objects.from_odb.get(),
            1,
            "left to the object database: {err}"
        );
        assert!(
            !matches!(err, Error::MissingObject { .. }),
            "the object is there: {err}"
        );
    }

    #[test]
    fn objects_of_a_pack_removed_before_it_was_mapped_are_read_through_the_odb() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        std::fs::create_dir(&work).unwrap();
        gitcache_testkit::git::git_stdout(&work, &["init", "-q"]);
        gitcache_testkit::repo::commit_shrinking_files(&work, 3);
        let listed = gitcache_testkit::git::git_stdout(&work, &["rev-list", "--objects", "--all"]);
        let ids: Vec<ObjectId> = (listed.lines())
            .map(|line| ObjectId::from_hex(&line.as_bytes()[..40]).unwrap())
            .collect();
        let names: String = ids.iter().map(|id| format!("{id}\n")).collect();
        // Packed, the loose objects kept (`pack-objects` alone removes nothing).
        let args = ["pack-objects", "-q", ".git/objects/pack/pack"];
        let name = gitcache_testkit::git::git_with_input(&work, &args, names.as_bytes());
        let name = String::from_utf8(name).unwrap();
        let repo = crate::Repository::open(work.join(".git")).unwrap();
        let mut objects = repo.objects();
        assert!(ids.iter().all(|id| objects.packs.find(id).is_some()));
        // Removed after the listing, before anything was read from it (as a consolidation
        // removes the packs it replaced).
        for ext in ["pack", "idx"] {
            let file = format!("objects/pack/pack-{}.{ext}", name.trim());
            std::fs::remove_file(work.join(".git").join(file)).unwrap();
        }
        for id in &ids {
            let header = objects.header(id).unwrap();
            let (kind, data) = objects.read(id).unwrap();
            assert_eq!(header, Some((kind, data.len() as u64)));
            let read = gix_object::compute_hash(HashKind::Sha1, kind, data).unwrap();
            assert_eq!(read, *id);
        }
        assert!(
            matches!(objects.packs.data[0].get(), Some(None)),
            "not mapped"
        );
        assert_eq!(objects.from_odb.get() as usize, 2 * ids.len());
    }

    #[test]
    fn objects_at_the_same_offset_of_two_packs_are_each_read_from_their_own() {
        // In each pack, a base and a delta on it: the delta's object is what the delta-base
        // cache keeps, under the pack it was read from and its offset there.
        let dir = tempfile::tempdir().unwrap();
        gitcache_testkit::git::git_stdout(dir.path(), &["init", "-q", "--bare", "r.git"]);
        let git_dir = dir.path().join("r.git");
        let blob = |content: &[u8]| (blob_id(content), content.to_vec());
        let mut deltas = Vec::new();
        for letter in ["a", "b"] {
            let (base_id, base) = blob(letter.repeat(300).as_bytes());
            let (delta_id, target) = blob(format!("{}{letter}\n", letter.repeat(300)).as_bytes());
            let source = crate::delta::SourceIndex::new(&base).unwrap();
            let delta = crate::delta::encode(&source, &target, usize::MAX).unwrap();
            use gix_pack::data::entry::Header;
            write_pack_by_hand(
                &git_dir,
                &[
                    (base_id, Header::Blob, base),
                    (delta_id, Header::RefDelta { base_id }, delta),
                ],
            );
            deltas.push((delta_id, target));
        }
        let repo = crate::Repository::open(&git_dir).unwrap();
        let mut objects = repo.objects();
        let places: Vec<_> = deltas
            .iter()
            .map(|(id, _)| objects.packs.find(id).unwrap())
            .collect();
        assert_ne!(places[0].0, places[1].0, "in two packs");
        assert_eq!(places[0].1, places[1].1, "at the same offset");
        for _ in 0..2 {
            for (id, target) in &deltas {
                let (kind, data) = objects.read(id).unwrap();
                assert_eq!((kind, data), (Kind::Blob, &target[..]));
            }
        }
        assert_eq!(objects.from_odb.get(), 0);
    }

    #[test]
    fn the_delta_base_cache_keeps_no_object_of_half_its_size() {
        use gix_pack::cache::DecodeEntry as _;
        let mut cache = BoundedCache::new(1 << 10);
        let mut out = Vec::new();
        cache.put(0, 12, &[1; 511], Kind::Blob, 5);
        cache.put(0, 24, &[2; 512], Kind::Blob, 5);
        assert_eq!(cache.get(0, 12, &mut out), Some((Kind::Blob, 5)));
        assert_eq!(out, [1; 511]);
        assert_eq!(cache.get(0, 24, &mut out), None);
        // Large and small in turn: the large never reach the map (which would keep each
        // refused buffer for the next object), the small are kept.
        for offset in 0..64 {
            cache.put(0, 100 + offset, &[3; 4 << 10], Kind::Blob, 5);
            cache.put(0, 1000 + offset, &[4; 8], Kind::Blob, 5);
        }
        assert_eq!(cache.get(0, 163, &mut out), None);
        assert_eq!(cache.get(0, 1063, &mut out), Some((Kind::Blob, 5)));
        assert_eq!(out, [4; 8]);
    }

    #[test]
    fn the_delta_base_cache_keeps_each_listed_pack_apart() {
        // gitoxide names a pack by a CRC-32 of its path: two packs could be given the same.
        let mut inner = BoundedCache::new(1 << 20);
        let same = 7;
        let mut first = PackCache {
            k: 0,
            inner: &mut inner,
        };
        gix_pack::cache::DecodeEntry::put(&mut first, same, 12, b"first's", Kind::Blob, 5);
        let mut second = PackCache {
            k: 1,
            inner: &mut inner,
        };
        gix_pack::cache::DecodeEntry::put(&mut second, same, 12, b"second's", Kind::Tree, 6);
        let mut out = Vec::new();
        for (k, kind, data) in [
            (0, Kind::Blob, &b"first's"[..]),
            (1, Kind::Tree, b"second's"),
        ] {
            let mut cache = PackCache {
                k,
                inner: &mut inner,
            };
            let got = gix_pack::cache::DecodeEntry::get(&mut cache, same, 12, &mut out);
            assert_eq!(got.map(|(kind, _)| kind), Some(kind));
            assert_eq!(out, data);
        }
    }

    #[test]
    fn commit_headers() {
        let data = b"tree 1111111111111111111111111111111111111111\n\
            parent 2222222222222222222222222222222222222222\n\
            parent 3333333333333333333333333333333333333333\n\
            author A <a@b> 5 +0000\n\
            committer C <c@d> 1700000000 +0200\n\nparent 4444444444444444444444444444444444444444\n";
        let c = parse_commit(data, HashKind::Sha1).unwrap();
        assert_eq!(
            c.parents.len(),
            2,
            "a 'parent' in the message is not a parent"
        );
        assert_eq!(c.time, 1_700_000_000);
        assert!(parse_commit(b"parent 12\n", HashKind::Sha1).is_err());
        // As git reads them (what `fsck` lets through): `tree` and `parent` lines past the
        // first ones are not the commit's, nor a `committer` line not right after `author`.
        let odd = b"tree 1111111111111111111111111111111111111111\n\
            parent 2222222222222222222222222222222222222222\n\
            author A <a@b> 5 +0000\n\
            committer C <c@d> 1700000000 +0200\n\
            parent 5555555555555555555555555555555555555555\n\
            tree 6666666666666666666666666666666666666666\n\
            committer D <d@e> 9 +0000\n\nmessage\n";
        let c = parse_commit(odd, HashKind::Sha1).unwrap();
        assert_eq!(c.tree, ObjectId::from_hex(&[b'1'; 40]).unwrap());
        assert_eq!(c.parents, [ObjectId::from_hex(&[b'2'; 40]).unwrap()]);
        assert_eq!(c.time, 1_700_000_000);
        let late = b"tree 1111111111111111111111111111111111111111\nencoding x\n\
            author A <a@b> 5 +0000\ncommitter C <c@d> 7 +0000\n\n";
        assert_eq!(parse_commit(late, HashKind::Sha1).unwrap().time, 0);
        let tab = b"tree 1111111111111111111111111111111111111111\n\
            author A <a@b> 5 +0000\ncommitter C <c@d>\t 7 +0000\n\n";
        assert_eq!(parse_commit(tab, HashKind::Sha1).unwrap().time, 7);
        for odd in [b'\x0b', b'\x0c'] {
            let mut spaced = tab.to_vec();
            let at = spaced.iter().position(|&b| b == b'\t').unwrap();
            spaced[at] = odd;
            assert_eq!(parse_commit(&spaced, HashKind::Sha1).unwrap().time, 0);
        }
        // A parent line cut short at the end is none; one that ends the object is an error.
        let tree = "tree 1111111111111111111111111111111111111111\n";
        let parent = format!("parent {}", "2".repeat(40));
        let cut = format!("{tree}{}", &parent[..30]);
        assert!(
            parse_commit(cut.as_bytes(), HashKind::Sha1)
                .unwrap()
                .parents
                .is_empty()
        );
        let unended = format!("{tree}{parent}");
        assert!(
            parse_commit(unended.as_bytes(), HashKind::Sha1)
                .unwrap()
                .parents
                .is_empty()
        );
        let last = format!("{tree}{parent}\n");
        assert!(parse_commit(last.as_bytes(), HashKind::Sha1).is_err());
        assert!(
            parse_commit(tree.as_bytes(), HashKind::Sha1).is_err(),
            "nothing after the tree"
        );
        assert!(
            parse_commit(
                b"tree 1111111111111111111111111111111111111111",
                HashKind::Sha1
            )
            .is_err()
        );
        assert!(
            parse_commit(
                b"author A <a@b> 5 +0000\ntree 1111111111111111111111111111111111111111\n",
                HashKind::Sha1
            )
            .is_err()
        );
    }

    #[test]
    fn tag_headers_as_git_reads_them() {
        let object = "1".repeat(40);
        let tag = format!(
            "object {object}\ntype commit\ntag v1\nobject {}\ntype blob\n\n",
            "2".repeat(40)
        );
        let (target, kind) = parse_tag(tag.as_bytes(), HashKind::Sha1).unwrap();
        assert_eq!(target, ObjectId::from_hex(object.as_bytes()).unwrap());
        assert_eq!(kind, Kind::Commit);
        let swapped = format!("type commit\nobject {object}\ntag v1\n\n");
        assert!(parse_tag(swapped.as_bytes(), HashKind::Sha1).is_err());
        // Shorter than git reads any: none.
        let short = format!("object {object}\ntype commit\n");
        assert_eq!(short.len(), 40 + 20);
        assert!(parse_tag(short.as_bytes(), HashKind::Sha1).is_err());
        assert!(parse_tag(format!("{short}tag\n").as_bytes(), HashKind::Sha1).is_ok());
    }

    #[test]
    fn tree_entries() {
        let mut data = b"100644 a.txt\0".to_vec();
        data.extend_from_slice(&[1; 20]);
        data.extend_from_slice(b"40000 dir\0");
        data.extend_from_slice(&[2; 20]);
        data.extend_from_slice(b"160000 sub\0");
        data.extend_from_slice(&[3; 20]);
        let entries = parse_tree(&data, HashKind::Sha1).unwrap();
        let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EntryKind::Blob, EntryKind::Tree, EntryKind::Gitlink]
        );
        assert!(parse_tree(&data[..data.len() - 1], HashKind::Sha1).is_err());
        // Modes as git judges them, by their file type bits.
        let odd = raw_tree(&[
            ("40755", "d", 1),
            ("040000", "e", 2),
            ("100755", "f", 3),
            ("120000", "l", 4),
            ("644", "g", 5),
            ("100664", "h", 6),
        ]);
        let kinds: Vec<_> = (parse_tree(&odd, HashKind::Sha1).unwrap().iter())
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Tree,
                EntryKind::Tree,
                EntryKind::Blob,
                EntryKind::Blob,
                EntryKind::Gitlink,
                EntryKind::Blob
            ]
        );
        for bad in ["", "10064x", "-1"] {
            let data = raw_tree(&[(bad, "x", 1)]);
            assert!(parse_tree(&data, HashKind::Sha1).is_err(), "{bad:?}");
        }
    }

    /// Raw tree bytes of `(mode, name, id byte)` entries, in the order given.
    fn raw_tree(entries: &[(&str, &str, u8)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (mode, name, id) in entries {
            data.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            data.extend_from_slice(&[*id; 20]);
        }
        data
    }

    #[test]
    fn entries_are_found_by_name_and_kind_in_gits_order() {
        // git's order: a tree's name sorts as if it ended in `/` (after `a.b`, before `ab`).
        let data = raw_tree(&[
            ("100644", "a-b", 1),
            ("100644", "a.b", 2),
            ("40000", "a", 3),
            ("100644", "ab", 4),
            ("160000", "sub", 5),
        ]);
        let tree = NamedTree::parse(data, HashKind::Sha1).unwrap();
        let id = |n: u8| ObjectId::from_bytes_or_panic(&[n; 20]);
        for (name, kind, n) in [
            ("a-b", EntryKind::Blob, 1),
            ("a.b", EntryKind::Blob, 2),
            ("a", EntryKind::Tree, 3),
            ("ab", EntryKind::Blob, 4),
            ("sub", EntryKind::Gitlink, 5),
        ] {
            let found = tree.find(name.as_bytes(), kind).unwrap();
            assert_eq!((found.oid, found.kind), (id(n), kind), "{name}");
        }
        assert_eq!(tree.names.get(2), b"a");
        // Of the other kind, or absent: nothing.
        assert_eq!(tree.find(b"a", EntryKind::Blob), None);
        assert_eq!(tree.find(b"sub", EntryKind::Blob), None);
        assert_eq!(tree.find(b"ab", EntryKind::Tree), None);
        assert_eq!(tree.find(b"b", EntryKind::Blob), None);
        assert_eq!(tree.find(b"", EntryKind::Blob), None);

        // Out of order, or a name holding a `/` (a blob `d/` sorts as the tree `d` does): an
        // entry may be missed, but whatever is found has that name and kind.
        let data = raw_tree(&[
            ("100644", "z", 1),
            ("100644", "a", 2),
            ("100644", "d/", 3),
            ("40000", "d", 4),
            ("160000", "g", 5),
            ("100644", "m", 6),
        ]);
        let tree = NamedTree::parse(data, HashKind::Sha1).unwrap();
        for name in ["z", "a", "d", "d/", "g", "m", "q"] {
            for kind in [EntryKind::Blob, EntryKind::Tree] {
                if let Some(found) = tree.find(name.as_bytes(), kind) {
                    let at = tree.entries.iter().position(|e| *e == found).unwrap();
                    assert_eq!(tree.names.get(at), name.as_bytes());
                    assert_eq!(found.kind, kind, "{name}");
                }
            }
        }
        assert_eq!(
            tree.find(b"g", EntryKind::Blob),
            None,
            "a gitlink is no blob"
        );
    }
}
