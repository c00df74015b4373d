//! Writing a pack: stored entries reused byte for byte wherever git's rules allow.
//!
//! - A whole stored object is copied as it is.
//! - A stored delta whose base is also sent is copied, its base written first so that it can
//!   go out as an ofs-delta (or as a ref-delta when the client did not ask for ofs-delta).
//! - A stored delta whose base the client provably has is sent as a ref-delta in a thin pack.
//! - Anything else is resolved and compressed again, once, as a whole object.

use std::collections::HashMap;
use std::io::{self, Write};

use gix_hash::ObjectId;
use gix_object::Kind;
use gix_pack::Find as _;
use gix_pack::data::entry::Header;

use crate::Error;
use crate::objects::Objects;
use crate::packs::{RevCache, StoredPack};
use crate::{OidMap, OidSet};

/// How the pack may be written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteOptions {
    pub(crate) ofs_delta: bool,
    pub(crate) thin: bool,
    /// zlib level for objects compressed again (0–9).
    pub(crate) compression: u32,
}

/// What the writer did, for the `Total` progress line and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Objects in the pack.
    pub objects: u32,
    /// Of those, written as deltas.
    pub deltas: u32,
    /// Entries copied from a stored pack (whole or delta).
    pub reused: u32,
    /// Of those, deltas.
    pub reused_deltas: u32,
    /// Whether a stored pack was sent as it is.
    pub whole_pack: bool,
    /// Bytes of pack data written.
    pub bytes: u64,
}

/// A stored entry and what it is.
enum Stored {
    /// Not in a pack, or unreadable as an entry: write from the full object.
    Full,
    /// A whole object's entry, header included.
    Base(Vec<u8>),
    /// A delta entry: its base, its decompressed delta size, and the compressed delta bytes
    /// (after `header_len`).
    Delta {
        base: ObjectId,
        size: u64,
        entry: Vec<u8>,
        header_len: usize,
    },
}

/// Hashes and counts everything written.
struct Sink<W: Write> {
    out: W,
    hasher: gix_hash::Hasher,
    offset: u64,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub(crate) struct PackWriter<'a> {
    objects: &'a mut Objects,
    opts: WriteOptions,
    /// The stored packs, to find the base of an offset delta.
    packs: &'a [StoredPack],
    rev: &'a RevCache,
    /// Which of `packs` each odb pack id is.
    pack_of_id: HashMap<u32, Option<usize>>,
    buf: Vec<u8>,
}

impl<'a> PackWriter<'a> {
    pub(crate) fn new(
        objects: &'a mut Objects,
        opts: WriteOptions,
        packs: &'a [StoredPack],
        rev: &'a RevCache,
    ) -> Self {
        PackWriter {
            objects,
            opts,
            packs,
            rev,
            pack_of_id: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Write a complete pack of `order` (each object once) into `out`.
    pub(crate) fn write<W: Write>(
        &mut self,
        order: &[ObjectId],
        client_has: &OidSet,
        out: W,
    ) -> Result<PackStats, Error> {
        let count = u32::try_from(order.len()).map_err(|_| Error::Odb {
            message: "more than 2^32 objects".into(),
        })?;
        let in_pack: OidSet = order.iter().copied().collect();
        let mut sink = Sink {
            out,
            hasher: gix_hash::hasher(self.objects.hash()),
            offset: 0,
        };
        sink.write_all(b"PACK")?;
        sink.write_all(&2u32.to_be_bytes())?;
        sink.write_all(&count.to_be_bytes())?;
        let mut stats = PackStats {
            objects: count,
            ..PackStats::default()
        };
        let mut written: OidMap<u64> =
            OidMap::with_capacity_and_hasher(order.len(), Default::default());
        let mut chain: Vec<(ObjectId, Stored)> = Vec::new();
        for oid in order {
            if written.contains_key(oid) {
                continue;
            }
            // Collect the chain of stored bases that are sent but not yet written.
            let mut current = *oid;
            loop {
                let stored = self.stored(&current)?;
                let next = match &stored {
                    Stored::Delta { base, .. }
                        if in_pack.contains(base)
                            && !written.contains_key(base)
                            && !chain.iter().any(|(c, _)| c == base)
                            && *base != current =>
                    {
                        Some(*base)
                    }
                    _ => None,
                };
                chain.push((current, stored));
                match next {
                    Some(base) => current = base,
                    None => break,
                }
            }
            while let Some((id, stored)) = chain.pop() {
                let start = sink.offset;
                self.entry(
                    &mut sink, &id, stored, &written, client_has, &in_pack, &mut stats,
                )?;
                written.insert(id, start);
            }
        }
        if written.len() != order.len() {
            return Err(Error::Odb {
                message: format!("wrote {} of {} objects", written.len(), order.len()),
            });
        }
        let checksum = sink.hasher.clone().try_finalize().map_err(Error::odb)?;
        sink.out.write_all(checksum.as_bytes())?;
        stats.bytes = sink.offset + checksum.as_bytes().len() as u64;
        Ok(stats)
    }

    #[allow(clippy::too_many_arguments)] // Reason: the writer's state, passed apart to keep borrows simple.
    fn entry<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        oid: &ObjectId,
        stored: Stored,
        written: &OidMap<u64>,
        client_has: &OidSet,
        in_pack: &OidSet,
        stats: &mut PackStats,
    ) -> Result<(), Error> {
        match stored {
            Stored::Base(entry) => {
                sink.write_all(&entry)?;
                stats.reused += 1;
                return Ok(());
            }
            Stored::Delta {
                base,
                size,
                entry,
                header_len,
            } => {
                let header = if let Some(&base_offset) = written.get(&base) {
                    Some(if self.opts.ofs_delta {
                        Header::OfsDelta {
                            base_distance: sink.offset - base_offset,
                        }
                    } else {
                        Header::RefDelta { base_id: base }
                    })
                } else if self.opts.thin && !in_pack.contains(&base) && client_has.contains(&base) {
                    Some(Header::RefDelta { base_id: base })
                } else {
                    None
                };
                if let Some(header) = header {
                    header.write_to(size, sink)?;
                    sink.write_all(&entry[header_len..])?;
                    stats.reused += 1;
                    stats.reused_deltas += 1;
                    stats.deltas += 1;
                    return Ok(());
                }
            }
            Stored::Full => {}
        }
        self.full(sink, oid)
    }

    /// Write `oid` as a whole object, compressed again.
    fn full<W: Write>(&mut self, sink: &mut Sink<W>, oid: &ObjectId) -> Result<(), Error> {
        let (kind, data) = self.objects.read(oid)?;
        let header = match kind {
            Kind::Commit => Header::Commit,
            Kind::Tree => Header::Tree,
            Kind::Blob => Header::Blob,
            Kind::Tag => Header::Tag,
        };
        let size = data.len() as u64;
        self.buf.clear();
        let mut encoder = flate2::write::ZlibEncoder::new(
            std::mem::take(&mut self.buf),
            flate2::Compression::new(self.opts.compression),
        );
        encoder.write_all(data)?;
        self.buf = encoder.finish()?;
        header.write_to(size, sink)?;
        sink.write_all(&self.buf)?;
        Ok(())
    }

    /// How `oid` is stored.
    fn stored(&mut self, oid: &ObjectId) -> Result<Stored, Error> {
        let odb = self.objects.odb();
        let Some(location) = odb
            .location_by_oid(oid, &mut self.buf)
            .map_err(Error::odb)?
        else {
            return Ok(Stored::Full);
        };
        let Some(entry) = odb.entry_by_location(&location) else {
            return Ok(Stored::Full);
        };
        let parsed = match gix_pack::data::Entry::from_bytes(
            &entry.data,
            location.pack_offset,
            self.objects.hash(),
        ) {
            Ok(parsed) => parsed,
            Err(_) => return Ok(Stored::Full),
        };
        let header_len = parsed.header_size();
        Ok(match parsed.header {
            Header::Commit | Header::Tree | Header::Blob | Header::Tag => Stored::Base(entry.data),
            Header::RefDelta { base_id } => Stored::Delta {
                base: base_id,
                size: parsed.decompressed_size,
                entry: entry.data,
                header_len,
            },
            Header::OfsDelta { base_distance } => {
                let Some(base_offset) = location.pack_offset.checked_sub(base_distance) else {
                    return Ok(Stored::Full);
                };
                match self.base_at(oid, &location, base_offset) {
                    Some(base) => Stored::Delta {
                        base,
                        size: parsed.decompressed_size,
                        entry: entry.data,
                        header_len,
                    },
                    None => Stored::Full,
                }
            }
        })
    }

    /// The object at `offset` of the pack that holds `known` at `location`.
    fn base_at(
        &mut self,
        known: &ObjectId,
        location: &gix_pack::data::entry::Location,
        offset: u64,
    ) -> Option<ObjectId> {
        let packs = self.packs;
        let index = *self.pack_of_id.entry(location.pack_id).or_insert_with(|| {
            packs.iter().position(|p| {
                p.index
                    .lookup(known)
                    .map(|i| p.index.pack_offset_at_index(i))
                    == Some(location.pack_offset)
            })
        });
        let pack = &packs[index?];
        self.rev
            .get(pack, self.objects.hash())
            .object_at(pack, offset)
    }
}
