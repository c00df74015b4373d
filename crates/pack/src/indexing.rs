//! Indexing a received pack: each object read once, on all cores, to learn its id and (when
//! asked) to check that the pack is closed, then the pack's index written.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;

use crate::closed::{Checker, Found, Members};
use crate::{Error, Repository};

/// An entry of a pack being indexed: where it starts and the CRC-32 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Offset of the entry in the pack.
    pub offset: u64,
    /// CRC-32 of the entry's bytes (header and compressed data), as the index keeps it.
    pub crc32: u32,
}

/// What [`Repository::index_pack`] checks of the pack's objects as it reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closure {
    /// Nothing: the pack comes from a trusted writer.
    Unchecked,
    /// That it is closed, as [`Repository::check_pack_closed`] checks: every reference
    /// within the pack, or (unless `self_contained`) in the repository's packs.
    Closed {
        /// Only the pack's own objects count.
        self_contained: bool,
    },
}

/// One object while the pack is indexed: its entry, by position among the pack's entries,
/// and once read, its id and kind. The delta tree holds one for every object of the pack (64
/// bytes an object with SHA-1 ids, where a node holding its entry and an [`ObjectId`] took
/// 96). The kind is in the two bits above the entry's position: as a list of the pack's
/// commits, trees and tags beside their ids, kept for the closed-pack check, it took 73 MB
/// at 4 million objects, at the peak.
#[derive(Debug, Clone, Copy)]
struct Node<const N: usize> {
    entry_and_kind: u32,
    oid: [u8; N],
}

/// Bits of [`Node::entry_and_kind`] below the kind: the most entries a pack may have.
const ENTRY_BITS: u32 = 30;

impl<const N: usize> Node<N> {
    /// The node of the `entry`th entry (below `1 << ENTRY_BITS`), not read yet.
    fn new(entry: u32, oid: [u8; N]) -> Self {
        debug_assert!(entry >> ENTRY_BITS == 0);
        Node {
            entry_and_kind: entry,
            oid,
        }
    }

    fn id(&self) -> ObjectId {
        ObjectId::from_bytes_or_panic(&self.oid)
    }

    /// Its entry's position among the pack's entries.
    fn entry(&self) -> usize {
        (self.entry_and_kind & ((1 << ENTRY_BITS) - 1)) as usize
    }

    /// The object's kind, once read (a blob before).
    fn kind(&self) -> gix_object::Kind {
        match self.entry_and_kind >> ENTRY_BITS {
            0 => gix_object::Kind::Blob,
            1 => gix_object::Kind::Tree,
            2 => gix_object::Kind::Commit,
            _ => gix_object::Kind::Tag,
        }
    }

    fn set_kind(&mut self, kind: gix_object::Kind) {
        let code = match kind {
            gix_object::Kind::Blob => 0,
            gix_object::Kind::Tree => 1,
            gix_object::Kind::Commit => 2,
            gix_object::Kind::Tag => 3,
        };
        self.entry_and_kind = self.entry() as u32 | (code << ENTRY_BITS);
    }
}

/// What reading a received pack as it arrived learned of it, for [`Repository::index_pack`].
#[derive(Debug, Clone, Copy)]
pub struct ReadPack<'a> {
    /// All of its entries, in pack order.
    pub entries: &'a [PackEntry],
    /// The offsets of the bases added at its end to complete a thin pack, by id (an id is only
    /// known once its object is read): a `REF_DELTA`'s base must be among them.
    pub bases: &'a std::collections::HashMap<ObjectId, u64>,
    /// Blobs stored whole on which no delta rests, hashed as the pack was read
    /// ([`Incoming`](crate::incoming::Incoming)): their entries, by position in ascending
    /// order, and ids. They are not decoded again: a 40 MB blob decoded whole cost 40 MB of
    /// memory beside its 40 MB of mapped pages.
    pub hashed: &'a [(u32, ObjectId)],
    /// The pack's checksum, checked as it was received.
    pub checksum: &'a ObjectId,
    /// Set to stop decoding (its caller's deadline passed): the pack is refused.
    pub stop: &'a std::sync::atomic::AtomicBool,
}

/// The entries that complete a thin pack ([`Repository::thin_bases`]): each object its
/// deltas name by id as a base, from the repository, to be added at the pack's end as
/// `git index-pack --fix-thin` adds them.
pub struct ThinBases {
    hash: gix_hash::Kind,
    packs: Arc<[crate::packs::StoredPack]>,
    revs: Arc<crate::packs::RevCache>,
    objects: crate::objects::Objects,
    zlib: Option<flate2::Compress>,
}

impl std::fmt::Debug for ThinBases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThinBases")
            .field("packs", &self.packs.len())
            .finish_non_exhaustive()
    }
}

impl ThinBases {
    /// Append the pack entry of `oid` (its header and compressed bytes) to `out`, and return
    /// the entry's CRC-32; `None` if the repository's packs lack it (nothing else is looked
    /// for: a pack may name many ids that are nowhere, each costing a look at the disk). An
    /// object stored whole is copied as it is stored: inflating a base and compressing it
    /// again (a zlib compressor set up for each) was most of taking a thin pack of a few
    /// hundred objects in. Any other is read whole and compressed at zlib's fastest level.
    pub fn entry(&mut self, oid: &ObjectId, out: &mut Vec<u8>) -> Result<Option<u32>, Error> {
        let Some((pack, i)) = (self.packs.iter())
            .find_map(|pack| Some((pack, crate::packs::lookup(&pack.index, oid)?)))
        else {
            return Ok(None);
        };
        let start = out.len();
        if !copy_whole(pack, i, &self.revs, self.hash, out) {
            let (kind, data) = self.objects.read(oid)?;
            let zlib = self.zlib.get_or_insert_with(|| crate::write::compressor(1));
            out.extend_from_slice(&crate::write::whole_entry(kind, data, zlib)?);
        }
        Ok(Some(crc32fast::hash(&out[start..])))
    }
}

/// Append the `i`th object of `pack`'s index to `out` as its entry is stored, header
/// included, if it is stored whole.
fn copy_whole(
    pack: &crate::packs::StoredPack,
    i: u32,
    revs: &crate::packs::RevCache,
    hash: gix_hash::Kind,
    out: &mut Vec<u8>,
) -> bool {
    let offset = pack.index.pack_offset_at_index(i);
    let Ok(data) = pack.data(hash) else {
        return false;
    };
    if !crate::packs::stored_whole_at(&data, offset) {
        return false;
    }
    let rev = revs.get(pack, hash);
    let Some(p) = rev.pack_position(&pack.index, i) else {
        return false;
    };
    let end = match p + 1 {
        next if next < rev.len() => rev.offset(pack, next),
        _ => data.pack_end() as u64,
    };
    // The bytes found are the entry the index names only if they have its CRC-32: a
    // reverse index out of step with the pack, or damaged bytes, are not copied. An end far
    // past the entry is found wrong before the CRC-32 of all the bytes up to it is taken.
    let Ok(entry) = data.entry(offset) else {
        return false;
    };
    let header_len = entry.header_size() as u64;
    if !crate::packs::entry_ends_at(&data, offset, header_len, entry.decompressed_size, end) {
        return false;
    }
    match data.entry_slice(offset..end) {
        Some(entry) if pack.index.crc32_at_index(i) == Some(crc32fast::hash(entry)) => {
            out.extend_from_slice(entry);
            true
        }
        _ => false,
    }
}

impl Repository {
    /// What completes a thin pack from this repository's packs as they are now (see
    /// [`ThinBases`]); an error if they cannot be listed.
    pub fn thin_bases(&self) -> Result<ThinBases, Error> {
        let packs = self.stored_packs()?.into();
        Ok(ThinBases {
            hash: self.object_format(),
            packs,
            revs: self.rev_cache(),
            objects: self.objects(),
            zlib: None,
        })
    }

    /// Write the version 2 index of the pack at `pack` to `index`. The pack is complete and
    /// its checksum checked (as receiving it does); `read` says what reading it as it arrived
    /// learned. Every object is decoded once, its deltas resolved on all cores, to compute its
    /// id and, with [`Closure::Closed`], to check what it refers to in the same reading
    /// (before, a received pack was indexed and then read whole a second time for the
    /// check); the blobs of [`ReadPack::hashed`] are known already. Beside the index, git's
    /// reverse index (`.rev`) is written, so that no process opening the pack has to order
    /// its entries by offset again. Returns the number of objects.
    pub fn index_pack(
        &self,
        pack: &Path,
        read: ReadPack<'_>,
        index: &Path,
        closure: Closure,
    ) -> Result<u32, Error> {
        let hash = self.object_format();
        match hash.len_in_bytes() {
            20 => self.index_pack_as::<20>(pack, read, index, closure),
            32 => self.index_pack_as::<32>(pack, read, index, closure),
            len => Err(Error::odb(format!("object ids of {len} bytes"))),
        }
    }

    /// [`index_pack`](Self::index_pack) for ids of `N` bytes.
    fn index_pack_as<const N: usize>(
        &self,
        pack: &Path,
        read: ReadPack<'_>,
        index: &Path,
        closure: Closure,
    ) -> Result<u32, Error> {
        let ReadPack {
            entries,
            bases,
            hashed,
            checksum,
            stop: interrupt,
        } = read;
        let hash = self.object_format();
        let count = u32::try_from(entries.len())
            .ok()
            .filter(|count| count >> ENTRY_BITS == 0)
            .ok_or_else(|| Error::odb("too many objects for one pack"))?;
        if hashed.windows(2).any(|pair| pair[0].0 >= pair[1].0)
            || hashed.last().is_some_and(|&(last, _)| last >= count)
        {
            return Err(Error::odb(
                "the blobs hashed are not entries of the pack in order",
            ));
        }
        let data = crate::mapped::ReadOnce::open(pack)?;
        let end = (data.bytes().len() as u64)
            .checked_sub(hash.len_in_bytes() as u64)
            .ok_or_else(|| Error::odb("pack shorter than its checksum"))?;
        let hashed: Vec<Node<N>> = (hashed.iter())
            .map(|(entry, id)| {
                let oid = <[u8; N]>::try_from(id.as_bytes())
                    .map_err(|_| Error::odb("an id of another length"))?;
                Ok(Node::new(*entry, oid))
            })
            .collect::<Result<_, Error>>()?;
        // The blobs hashed are left out of the delta tree: no delta rests on them (were one
        // to, its base would not be found, and the pack refused).
        let mut left_out = hashed.iter().map(Node::entry).peekable();
        let in_tree = (0..count).filter(|&entry| left_out.next_if_eq(&(entry as usize)).is_none());
        let tree = gix_pack::cache::delta::Tree::from_offsets_in_pack(
            pack,
            in_tree.map(|entry| Node::new(entry, [0; N])),
            &|node: &Node<N>| entries[node.entry()].offset,
            &|id| Ok(bases.get(&id.to_owned()).copied()),
            &mut gix_utils::progress::Discard,
            interrupt,
            hash,
        )
        .map_err(Error::odb)?;
        let shared: Arc<Mutex<Found>> = Arc::default();
        let others: Vec<_> = match closure {
            Closure::Closed {
                self_contained: false,
            } => self.stored_packs()?.into_iter().map(|p| p.index).collect(),
            _ => Vec::new(),
        };
        // More different objects referred to than the pack holds (those of other packs
        // aside): one of them is not there.
        let most = entries.len();
        let others = Arc::new(others);
        let mut checker = match closure {
            Closure::Unchecked => None,
            Closure::Closed { .. } => Some(Checker::new(
                hash,
                None,
                most,
                Arc::clone(&others),
                Arc::clone(&shared),
            )),
        };
        // The bases added to complete a thin pack come last; they are the repository's, whose
        // packs are closed, and count as read when the repository's objects count. A pack
        // that must stand alone (a first fetch, vouched for as its tips' whole history) has
        // every object checked against its own.
        let added_from = match closure {
            Closure::Closed {
                self_contained: false,
            } => bases.values().min().copied().unwrap_or(u64::MAX),
            _ => u64::MAX,
        };
        let processor = move |node: &mut Node<N>,
                              _: &dyn gix_utils::progress::Progress,
                              context: gix_pack::cache::delta::traverse::Context<'_>|
              -> gix_error::Result {
            let kind = context.entry.header.as_kind().ok_or_else(|| {
                gix_error::ErrorExt::raise(gix_error::message!("a delta where an object was due"))
            })?;
            let oid = gix_object::compute_hash(hash, kind, context.decompressed)?;
            node.oid = <[u8; N]>::try_from(oid.as_bytes()).map_err(|_| {
                gix_error::ErrorExt::raise(gix_error::message!("an id of another length"))
            })?;
            node.set_kind(kind);
            if let Some(checker) = &mut checker {
                if entries[node.entry()].offset >= added_from {
                    checker.read_known(oid, kind, context.decompressed)?;
                } else {
                    checker.read(oid, kind, context.decompressed)?;
                }
            }
            Ok(())
        };
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let traversed = tree.traverse(
            |range: gix_pack::data::EntryRange, data: &crate::mapped::ReadOnce| data.read(range),
            &data,
            end,
            processor,
            gix_pack::cache::delta::traverse::Options {
                object_progress: Box::new(gix_utils::progress::Discard),
                size_progress: &mut gix_utils::progress::Discard,
                thread_limit: Some(threads),
                should_interrupt: interrupt,
                object_hash: hash,
                alloc_limit_bytes: Some(crate::MAX_DECODED_BYTES),
            },
        );
        // Every copy of the processor is dropped by now, each having handed its findings over.
        let mut found = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(err) = found.failure.take() {
            return Err(err);
        }
        let outcome = traversed.map_err(Error::odb)?;
        let mut nodes: Vec<Node<N>> = (outcome.roots.into_iter())
            .chain(outcome.children)
            .map(|item| item.data)
            .chain(hashed)
            .collect();
        if nodes.len() != entries.len() {
            return Err(Error::odb("not every object of the pack was read"));
        }
        // The check's lists are sorted beside the objects (both a serial second at 4 million
        // objects, after the decoding that used both cores).
        let checked = match closure {
            Closure::Unchecked => {
                sort_by_id(&mut nodes);
                None
            }
            Closure::Closed { .. } => {
                let beside = std::thread::scope(|scope| {
                    let sorting = std::thread::Builder::new()
                        .spawn_scoped(scope, || found.sort())
                        .ok();
                    sort_by_id(&mut nodes);
                    sorting.map(|sorting| {
                        sorting
                            .join()
                            .unwrap_or_else(|p| std::panic::resume_unwind(p))
                    })
                });
                // No thread to be had: one after the other.
                Some(beside.unwrap_or_else(|| found.sort()))
            }
        };
        if nodes.windows(2).any(|pair| pair[0].oid == pair[1].oid) {
            return Err(crate::closed::twice(nodes.iter().map(Node::id)));
        }
        if let Some(sorted) = checked {
            sorted?;
            let members: Vec<ObjectId> = nodes.iter().map(Node::id).collect();
            let kinds = (nodes.iter())
                .filter(|node| node.kind() != gix_object::Kind::Blob)
                .map(|node| (node.id(), node.kind()));
            self.verify_sorted(found, Members::Sorted(&members), kinds, &others)?;
        }
        // The reverse index beside the index: both are ready for the pack's first reader.
        let reverse = index.with_extension("rev");
        std::thread::scope(|scope| {
            let rev = std::thread::Builder::new()
                .spawn_scoped(scope, || {
                    write_rev(&reverse, entries, &nodes, checksum, hash)
                })
                .ok();
            write_index(index, entries, &nodes, checksum, hash)?;
            match rev {
                Some(rev) => rev.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                None => write_rev(&reverse, entries, &nodes, checksum, hash),
            }
        })?;
        Ok(count)
    }
}

/// Sort `nodes` by id: by the ids' first eight bytes as a number first (comparing whole ids at
/// every step was most of the sorting), on two threads when there are many (halves split by
/// the ids' first bit, sorted each on its own).
fn sort_by_id<const N: usize>(nodes: &mut [Node<N>]) {
    use crate::closed::head;
    let sort = |nodes: &mut [Node<N>]| {
        nodes.sort_unstable_by(|a, b| {
            head(&a.oid)
                .cmp(&head(&b.oid))
                .then_with(|| a.oid.cmp(&b.oid))
        });
    };
    if nodes.len() < 1 << 16 {
        return sort(nodes);
    }
    // Those whose id starts with a 0 bit first.
    let mut low = 0;
    for i in 0..nodes.len() {
        if nodes[i].oid.first().is_some_and(|b| b & 0x80 == 0) {
            nodes.swap(low, i);
            low += 1;
        }
    }
    let halves = std::thread::scope(|scope| {
        let (first, second) = nodes.split_at_mut(low);
        let Ok(sorting) = std::thread::Builder::new().spawn_scoped(scope, || sort(first)) else {
            return false;
        };
        sort(second);
        if let Err(panic) = sorting.join() {
            std::panic::resume_unwind(panic);
        }
        true
    });
    if !halves {
        // No thread to be had: one after the other.
        sort(&mut nodes[..low]);
        sort(&mut nodes[low..]);
    }
}

/// Write the index of the objects of a pack whose ids are known (a test's pack written by
/// hand, or the objects found in a pack as it arrived, see [`crate::early`]), each once.
pub(crate) fn write_index_of(
    path: &Path,
    objects: &[(ObjectId, PackEntry)],
    checksum: &ObjectId,
    hash: gix_hash::Kind,
) -> Result<(), Error> {
    match hash.len_in_bytes() {
        20 => write_index_of_as::<20>(path, objects, checksum, hash),
        32 => write_index_of_as::<32>(path, objects, checksum, hash),
        len => Err(Error::odb(format!("object ids of {len} bytes"))),
    }
}

fn write_index_of_as<const N: usize>(
    path: &Path,
    objects: &[(ObjectId, PackEntry)],
    checksum: &ObjectId,
    hash: gix_hash::Kind,
) -> Result<(), Error> {
    let count = u32::try_from(objects.len())
        .ok()
        .filter(|count| count >> ENTRY_BITS == 0)
        .ok_or_else(|| Error::odb("too many objects for one pack"))?;
    let entries: Vec<PackEntry> = objects.iter().map(|&(_, entry)| entry).collect();
    let mut nodes: Vec<Node<N>> = (objects.iter().zip(0..count))
        .map(|(&(oid, _), entry)| {
            let oid = <[u8; N]>::try_from(oid.as_bytes())
                .map_err(|_| Error::odb("an id of another length"))?;
            Ok(Node::new(entry, oid))
        })
        .collect::<Result<_, Error>>()?;
    sort_by_id(&mut nodes);
    if nodes.windows(2).any(|pair| pair[0].oid == pair[1].oid) {
        return Err(crate::closed::twice(nodes.iter().map(Node::id)));
    }
    write_index(path, &entries, &nodes, checksum, hash)
}

/// Write a version 2 pack index of `nodes` (sorted by id; their entries among `entries`), as
/// git's `index-pack` writes it.
fn write_index<const N: usize>(
    path: &Path,
    entries: &[PackEntry],
    nodes: &[Node<N>],
    checksum: &ObjectId,
    hash: gix_hash::Kind,
) -> Result<(), Error> {
    debug_assert_eq!(N, hash.len_in_bytes());
    let mut out = crate::write::Sink::new(
        std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?),
        hash,
    );
    out.write_all(b"\xfftOc")?;
    out.write_all(&2u32.to_be_bytes())?;
    let mut fanout = [0u32; 256];
    for node in nodes {
        fanout[usize::from(node.oid.first().copied().unwrap_or_default())] += 1;
    }
    let mut total = 0u32;
    for count in fanout {
        total += count;
        out.write_all(&total.to_be_bytes())?;
    }
    for node in nodes {
        out.write_all(&node.oid)?;
    }
    for node in nodes {
        out.write_all(&entries[node.entry()].crc32.to_be_bytes())?;
    }
    // Offsets past 31 bits go to a table of 64-bit offsets, referred to by position.
    let mut large: Vec<u64> = Vec::new();
    for node in nodes {
        let offset = entries[node.entry()].offset;
        let small = match u32::try_from(offset) {
            Ok(small) if small < 0x8000_0000 => small,
            _ => {
                let at = u32::try_from(large.len())
                    .ok()
                    .filter(|at| *at < 0x8000_0000)
                    .ok_or_else(|| Error::odb("too many large offsets"))?;
                large.push(offset);
                0x8000_0000 | at
            }
        };
        out.write_all(&small.to_be_bytes())?;
    }
    for offset in large {
        out.write_all(&offset.to_be_bytes())?;
    }
    out.write_all(checksum.as_bytes())?;
    out.flush()?;
    let (mut file, own) = out.finish()?;
    file.write_all(own.as_bytes())?;
    file.flush()?;
    Ok(())
}

/// Write git's reverse index of the pack of `nodes` (sorted by id; their entries among
/// `entries`) to `path`, unless git has none for the object format (readers then build the
/// order).
fn write_rev<const N: usize>(
    path: &Path,
    entries: &[PackEntry],
    nodes: &[Node<N>],
    checksum: &ObjectId,
    hash: gix_hash::Kind,
) -> Result<(), Error> {
    debug_assert_eq!(N, hash.len_in_bytes());
    if crate::packs::rev_format_id(hash).is_none() {
        return Ok(());
    }
    let file = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?);
    let offset_at = |i: u32| entries[nodes[i as usize].entry()].offset;
    crate::packs::write_rev(file, nodes.len(), offset_at, checksum, hash)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes sorted by id on two threads, or on one when few, are in the order of their ids,
    /// each with its own entry; equal ids end up side by side (a pack holding an object
    /// twice is found so).
    #[test]
    fn nodes_are_sorted_by_id_on_two_threads_as_on_one() {
        let mut rng = gitcache_testkit::repo::Rng::new(291);
        let mut next = move || rng.next_u64();
        for n in [0usize, 1, 1000, (1 << 16) + 7, 150_000] {
            let mut nodes: Vec<Node<20>> = (0..n)
                .map(|i| {
                    let mut id = [0u8; 20];
                    for chunk in id.chunks_mut(8) {
                        let bytes = next().to_be_bytes();
                        chunk.copy_from_slice(&bytes[..chunk.len()]);
                    }
                    // Some share their first eight bytes, some are the same id.
                    if i % 97 == 1 {
                        id[..8].fill(7);
                    }
                    if i % 1009 == 2 {
                        id = [9; 20];
                    }
                    Node::new(i as u32, id)
                })
                .collect();
            let mut expected: Vec<(ObjectId, usize)> =
                nodes.iter().map(|n| (n.id(), n.entry())).collect();
            expected.sort_unstable();
            sort_by_id(&mut nodes);
            let ids: Vec<ObjectId> = nodes.iter().map(Node::id).collect();
            assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{n} sorted");
            let mut got: Vec<(ObjectId, usize)> =
                nodes.iter().map(|n| (n.id(), n.entry())).collect();
            got.sort_unstable();
            assert_eq!(got, expected, "{n}: the same nodes");
            if n > 1011 {
                assert!(ids.windows(2).any(|w| w[0] == w[1]), "repeats side by side");
            }
        }
    }

    /// A node keeps its entry's position whole beside any kind, the last position a pack may
    /// have included, and a kind set again replaces the one before.
    #[test]
    fn a_node_keeps_its_entry_beside_its_kind() {
        use gix_object::Kind;
        let kinds = [Kind::Blob, Kind::Tree, Kind::Commit, Kind::Tag];
        for entry in [0, 1, 0x1234_5678 >> 2, (1 << ENTRY_BITS) - 1] {
            let mut node = Node::new(entry, [3u8; 20]);
            assert_eq!((node.entry(), node.kind()), (entry as usize, Kind::Blob));
            for kind in kinds.into_iter().chain(kinds.into_iter().rev()) {
                node.set_kind(kind);
                assert_eq!((node.entry(), node.kind()), (entry as usize, kind));
            }
            assert_eq!(node.oid, [3u8; 20]);
        }
    }

    /// Offsets past 31 bits are kept in the table of 64-bit offsets, as git reads them.
    #[test]
    fn large_offsets_go_to_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack-0.idx");
        let offsets = [12, 0x7fff_ffff, 0x8000_0000, 5 << 30, 12 << 40];
        let entries: Vec<PackEntry> = (offsets.iter().zip(0..))
            .map(|(&offset, crc32)| PackEntry { offset, crc32 })
            .collect();
        let mut nodes: Vec<Node<20>> = (0..offsets.len() as u32)
            .map(|entry| Node::new(entry, [entry as u8 * 40; 20]))
            .collect();
        nodes.sort_unstable_by_key(|n| n.oid);
        let checksum = ObjectId::from_bytes_or_panic(&[7; 20]);
        write_index(&path, &entries, &nodes, &checksum, gix_hash::Kind::Sha1).unwrap();
        let index = gix_pack::index::File::at(&path, gix_hash::Kind::Sha1).unwrap();
        assert_eq!(index.num_objects(), 5);
        assert_eq!(index.pack_checksum(), checksum);
        assert!(
            index
                .verify_checksum(&mut gix_utils::progress::Discard, &Default::default())
                .is_ok()
        );
        for node in &nodes {
            let at = index.lookup(node.id()).unwrap();
            let entry = entries[node.entry()];
            assert_eq!(index.pack_offset_at_index(at), entry.offset);
            assert_eq!(index.crc32_at_index(at), Some(entry.crc32));
        }
    }
}
