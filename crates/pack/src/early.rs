//! A pack's objects found while it arrives, before it is indexed: each entry stored whole, and
//! each delta whose base was decoded a little earlier, decoded and hashed as it goes by; an
//! index of those alone then lets a [`Repository`](crate::Repository) answer from the pack
//! whatever needs only them.
//!
//! `git pack-objects` writes a tip's trees and blobs early and mostly whole, and a delta's
//! base right before it, so a shallow clone of the tips usually finds every object it needs
//! here, long before indexing the whole pack (which decodes every delta chain) ends. What is
//! not found is not guessed at: an answer needing it fails to plan, and waits for the index.
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

use crate::{Error, PackEntry};

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
    /// up to eighty times in stretches of them.
    pub decoded_per_byte: u64,
    /// The most objects found: past it, the scan gives up (each costs about 60 bytes).
    pub most_found: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cache_bytes: 64 << 20,
            object_bytes: 8 << 20,
            decoded_per_byte: 64,
            most_found: 2 << 20,
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
    checksum: ObjectId,
    entries: u32,
}

/// An object found, and where its entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FoundEntry {
    pub(crate) id: ObjectId,
    pub(crate) offset: u64,
    /// Where the entry ends.
    pub(crate) end: u64,
    pub(crate) crc32: u32,
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

    /// The pack's checksum, as its trailer says it (the scan does not check it: the reader
    /// that writes the pack does).
    pub fn checksum(&self) -> ObjectId {
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
    /// others, every entry of its pack named by its index. The new pack's checksum.
    pub fn write_pack(
        &self,
        read_at: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
        pack: &Path,
        index: &Path,
    ) -> Result<ObjectId, Error> {
        use std::io::Write;
        let mut out = crate::write::Sink::new(
            std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(pack)?),
            self.hash,
        );
        let count = u32::try_from(self.objects.len())
            .map_err(|_| Error::odb("too many objects for one pack"))?;
        out.write_all(b"PACK")?;
        out.write_all(&2u32.to_be_bytes())?;
        out.write_all(&count.to_be_bytes())?;
        // Where each entry is written, by its place among the objects (sorted by offset).
        let mut written: Vec<u64> = Vec::with_capacity(self.objects.len());
        let mut listed: Vec<(ObjectId, PackEntry)> = Vec::with_capacity(self.objects.len());
        let mut bytes = Vec::new();
        let mut entry = Vec::new();
        for found in &self.objects {
            let len = usize::try_from(found.end - found.offset)
                .map_err(|_| Error::odb("an entry too large to copy"))?;
            bytes.clear();
            bytes.resize(len, 0);
            let mut filled = 0;
            while filled < len {
                let n = read_at(&mut bytes[filled..], found.offset + filled as u64)?;
                if n == 0 {
                    return Err(Error::odb(
                        "the scanned pack ends before an entry found in it",
                    ));
                }
                filled += n;
            }
            let parsed = gix_pack::data::Entry::from_bytes(&bytes, found.offset, self.hash)
                .map_err(Error::odb)?;
            let at = out.offset;
            entry.clear();
            match parsed.header {
                Header::OfsDelta { base_distance } => {
                    // Its base was found before it (a delta is decoded only on a base kept).
                    let base = found
                        .offset
                        .checked_sub(base_distance)
                        .and_then(|base| {
                            self.objects
                                .binary_search_by_key(&base, |found| found.offset)
                                .ok()
                        })
                        .map(|place| written[place])
                        .ok_or_else(|| Error::odb("a delta found without its base"))?;
                    Header::OfsDelta {
                        base_distance: at - base,
                    }
                    .write_to(parsed.decompressed_size, &mut entry)?;
                    entry.extend_from_slice(&bytes[parsed.header_size()..]);
                }
                _ => entry.extend_from_slice(&bytes),
            }
            out.write_all(&entry)?;
            written.push(at);
            listed.push((
                found.id,
                PackEntry {
                    offset: at,
                    crc32: crc32fast::hash(&entry),
                },
            ));
        }
        out.flush()?;
        let (mut file, checksum) = out.finish()?;
        file.write_all(checksum.as_bytes())?;
        file.flush()?;
        crate::indexing::write_index_of(index, &listed, &checksum, self.hash)?;
        Ok(checksum)
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
    // Blobs too large to decode are hashed as they go by, holding nothing.
    let mut incoming =
        crate::incoming::Incoming::new(read, hash, limits.object_bytes.saturating_add(1))?;
    let entries = incoming.count();
    let mut kept = Kept::new(limits.cache_bytes);
    let mut objects: Vec<FoundEntry> = Vec::new();
    let mut out = Vec::new();
    let mut decoded = 0u64;
    // Past the budget nothing more is inflated or decoded; what is read is only followed.
    let mut over_budget = false;
    loop {
        // Only what can be decoded is inflated: an object stored whole, or a delta on a base
        // still kept, of at most `object_bytes` (a delta by id is left to the indexing).
        let keep = |offset: u64, header: &Header, size: u64| {
            !over_budget
                && size <= limits.object_bytes
                && match header {
                    Header::OfsDelta { base_distance } => offset
                        .checked_sub(*base_distance)
                        .is_some_and(|base| kept.has(base)),
                    Header::RefDelta { .. } => false,
                    _ => true,
                }
        };
        let Some((entry, inflated)) = incoming.next_entry_keeping(&keep, &mut out)? else {
            break;
        };
        if stop.load(Ordering::Relaxed) {
            return Err(Error::odb("the scan of an arriving pack was stopped"));
        }
        if objects.len() >= limits.most_found {
            return Err(Error::odb("more objects found than a scan keeps"));
        }
        let found = |id| FoundEntry {
            id,
            offset: entry.offset,
            end: entry.end(),
            crc32: entry.crc32,
        };
        if let Some(id) = entry.id {
            objects.push(found(id));
            continue;
        }
        if !inflated {
            continue;
        }
        decoded = decoded.saturating_add(entry.size);
        let (kind, object) = match entry.header {
            Header::OfsDelta { base_distance } => {
                let Some((kind, base)) =
                    (entry.offset.checked_sub(base_distance)).and_then(|base| kept.get(base))
                else {
                    continue;
                };
                match crate::delta::target_size(&out) {
                    Some(size) if size <= limits.object_bytes => {}
                    _ => continue,
                }
                // A delta that does not apply is the indexing's to refuse.
                let Ok(object) = crate::delta::apply(&base, &out) else {
                    continue;
                };
                decoded = decoded.saturating_add(object.len() as u64);
                (kind, object)
            }
            Header::RefDelta { .. } => continue,
            header => match header.as_kind() {
                Some(kind) => (kind, std::mem::take(&mut out)),
                None => continue,
            },
        };
        let budget = (limits.cache_bytes as u64)
            .saturating_add(entry.end().saturating_mul(limits.decoded_per_byte));
        over_budget = decoded > budget;
        let id = gix_object::compute_hash(hash, kind, &object)
            .map_err(|err| Error::odb(format!("hashing an arriving object: {err}")))?;
        objects.push(found(id));
        kept.put(entry.offset, kind, object);
    }
    let checksum = incoming.trailer()?;
    // Found in pack order. An object the pack holds twice (git writes none, and taking the
    // pack in refuses it) is no early answer.
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
    })
}

/// Decoded objects by offset, within a budget of bytes, the least recently used let go first.
struct Kept {
    budget: usize,
    held: usize,
    objects: HashMap<u64, (gix_object::Kind, std::rc::Rc<[u8]>, u64)>,
    /// Offsets in the order used, each with the use it stands for (a stale one is skipped).
    order: VecDeque<(u64, u64)>,
    uses: u64,
}

impl Kept {
    fn new(budget: usize) -> Self {
        Kept {
            budget,
            held: 0,
            objects: HashMap::new(),
            order: VecDeque::new(),
            uses: 0,
        }
    }

    fn has(&self, offset: u64) -> bool {
        self.objects.contains_key(&offset)
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

    fn put(&mut self, offset: u64, kind: gix_object::Kind, data: Vec<u8>) {
        let cost = data.len() + KEPT_OVERHEAD;
        if cost > self.budget {
            return;
        }
        self.uses += 1;
        self.held += cost;
        if let Some((_, old, _)) = self.objects.insert(offset, (kind, data.into(), self.uses)) {
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

    #[test]
    fn the_least_recently_used_go_first() {
        let budget = 2 * KEPT_OVERHEAD + 10;
        let mut kept = Kept::new(budget);
        kept.put(1, gix_object::Kind::Blob, vec![0; 4]);
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
