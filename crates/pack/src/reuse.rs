//! Copying a stored pack's entries in runs (git's pack reuse): when the objects to send are
//! given as positions of one stored pack (from its bitmaps, or from a pack marked with its
//! tips), every selected entry whose delta base is copied too goes out as stored bytes, in
//! pack order, without looking its object up.
//!
//! - Consecutive selected entries are one copy of the pack's bytes.
//! - An offset delta whose base moved nearer (entries between them are not sent) gets a new
//!   header with the shorter distance; its data is copied as stored.
//! - An entry whose base is not copied (not selected, or had by the client), and every
//!   reference delta, is left to the object-by-object writer, which writes it after the
//!   copied entries (as a delta against a copied base where it can).
//!
//! Offsets after gaps move back; the writer records the difference each time it changes, so
//! a copied entry's new offset is its old one less the difference recorded at or before it.

use std::io::Write;

use gix_hash::ObjectId;
use gix_pack::data::entry::Header;

use crate::Error;
use crate::bitmap::Bits;
use crate::packs::{RevIndex, StoredPack};
use crate::write::{MAX_DEPTH, PackStats, Sink};

// A copied entry's depth is kept in a byte.
const _: () = assert!(MAX_DEPTH == u8::MAX as usize);

/// Bytes of a run written at once.
const WRITE_CHUNK: usize = 1 << 20;

/// Objects selected as positions of one stored pack.
#[derive(Debug)]
pub(crate) struct Packed {
    /// Which of the repository's stored packs (as listed for the request).
    pub(crate) pack: usize,
    pub(crate) rev: std::sync::Arc<RevIndex>,
    /// The positions selected.
    pub(crate) bits: Bits,
    /// How many positions are selected.
    pub(crate) count: usize,
}

impl Packed {
    pub(crate) fn new(pack: usize, rev: std::sync::Arc<RevIndex>, bits: Bits) -> Packed {
        let count = bits.count();
        Packed {
            pack,
            rev,
            bits,
            count,
        }
    }

    /// The positions selected, in pack order.
    pub(crate) fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.ones().filter(|&p| p < self.rev.len())
    }
}

/// The entries copied from a stored pack, and where they now are.
pub(crate) struct Copied<'a> {
    pack: &'a StoredPack,
    rev: &'a RevIndex,
    /// Positions copied.
    bits: Bits,
    /// How many.
    pub(crate) count: usize,
    /// From each old offset on (until the next row): old offset less new offset.
    shifts: Vec<(u64, u64)>,
    /// By position: how many deltas lie below each copied entry (up to [`MAX_DEPTH`]); empty
    /// when no delta was copied.
    depths: Vec<u8>,
}

impl Copied<'_> {
    /// The pack position of `oid`, if it was copied.
    fn position(&self, oid: &ObjectId) -> Option<(usize, u64)> {
        let index = crate::packs::lookup(&self.pack.index, oid)?;
        let p = self.rev.pack_position(&self.pack.index, index)?;
        self.bits
            .get(p)
            .then(|| (p, self.pack.index.pack_offset_at_index(index)))
    }

    /// The positions copied, if they are of `pack`.
    pub(crate) fn positions_in(
        &self,
        pack: &StoredPack,
    ) -> Option<impl Iterator<Item = usize> + '_> {
        (self.pack.pack == pack.pack).then(|| self.bits.ones())
    }

    /// Whether `oid` was copied.
    pub(crate) fn contains(&self, oid: &ObjectId) -> bool {
        self.position(oid).is_some()
    }

    /// Where `oid` was written, if it was copied.
    pub(crate) fn offset_of(&self, oid: &ObjectId) -> Option<u64> {
        self.position(oid).map(|(_, old)| old - self.shift_at(old))
    }

    fn shift_at(&self, old: u64) -> u64 {
        shift_at(&self.shifts, old)
    }

    /// How many deltas lie below `oid` in the pack written, if it was copied: its chain as
    /// stored, which was copied with it (an entry is copied only with its base). Chains longer
    /// than [`MAX_DEPTH`] count as that long.
    pub(crate) fn depth_of(&self, oid: &ObjectId) -> Option<u64> {
        let (p, _) = self.position(oid)?;
        Some(self.depths.get(p).map_or(0, |&depth| u64::from(depth)))
    }
}

fn shift_at(shifts: &[(u64, u64)], old: u64) -> u64 {
    match shifts.partition_point(|&(at, _)| at <= old) {
        0 => 0,
        i => shifts[i - 1].1,
    }
}

/// Copy the entries of `packed` that can go as stored into `sink`, in pack order, but those of
/// `held`; the pack's header is already written. Returns what was copied and the positions left
/// for the object-by-object writer (with `held`, every delta whose base is left).
pub(crate) fn copy_runs<'a, W: Write>(
    sink: &mut Sink<W>,
    pack: &'a StoredPack,
    packed: &'a Packed,
    held: Option<&Bits>,
    hash: gix_hash::Kind,
    stats: &mut PackStats,
) -> Result<(Copied<'a>, Vec<usize>), Error> {
    let rev = &*packed.rev;
    let n = rev.len();
    let mut copied = Bits::with_len(n);
    let Ok(data) = pack.data(hash) else {
        // Not mapped (no file handle free, or removed before it was ever mapped): everything
        // is written object by object, from where the object database finds it.
        let left = packed.bits.ones().filter(|&p| p < n).collect();
        let copied = Copied {
            pack,
            rev,
            bits: copied,
            count: 0,
            shifts: Vec::new(),
            depths: Vec::new(),
        };
        return Ok((copied, left));
    };
    let pack_end = data.pack_end() as u64;
    let mut shifts: Vec<(u64, u64)> = Vec::new();
    let mut left = Vec::new();
    let mut count = 0;
    // Stored bytes waiting to be written: one range, grown while entries follow each other.
    let mut run: Option<(u64, u64)> = None;
    let corrupt = |what: &str| Error::Odb {
        message: format!("{}: {what}", pack.pack.display()),
    };
    let mut read = crate::mapped::Forward::default();
    // Writes the run, or with `whole_pieces` only as many whole pieces of it as it holds,
    // the rest left to grow.
    let mut flush = |sink: &mut Sink<W>,
                     run: &mut Option<(u64, u64)>,
                     whole_pieces: bool|
     -> Result<(), Error> {
        let Some((start, end)) = run.take() else {
            return Ok(());
        };
        let cut = if whole_pieces {
            start + (end - start) / WRITE_CHUNK as u64 * WRITE_CHUNK as u64
        } else {
            end
        };
        if cut < end {
            *run = Some((cut, end));
        }
        let bytes = data
            .entry_slice(start..cut)
            .ok_or_else(|| corrupt("entry beyond the pack's end"))?;
        // In pieces, each hashed while its pages are fresh; a run may be most of the pack,
        // so what was copied is let go of as it is copied (with the gaps under a MiB between
        // runs; not the rest of the map, which other answers may be reading).
        let mut at = start;
        for piece in bytes.chunks(WRITE_CHUNK) {
            sink.write_all(piece)?;
            let next = at + piece.len() as u64;
            if let Some(stretch) = read.read(at..next) {
                pack.let_go_of(stretch);
            }
            at = next;
        }
        Ok(())
    };
    // A byte for each position of the pack, once a delta is copied.
    let mut depths: Vec<u8> = Vec::new();
    let mut next = None;
    // Where the last entry copied ends in the stored pack.
    let mut copied_end = 0u64;
    for p in packed.bits.ones() {
        if p >= n {
            break;
        }
        let off = match next {
            Some((q, at)) if q == p => at,
            _ => rev.offset(pack, p),
        };
        let end = if p + 1 < n {
            rev.offset(pack, p + 1)
        } else {
            pack_end
        };
        next = Some((p + 1, end));
        if held.is_some_and(|held| held.get(p)) {
            left.push(p);
            continue;
        }
        // Pack order is offset order: an index whose offsets say otherwise (damaged) must
        // not make copied entries overlap, nor the shifts fall out of order, nor an entry
        // run past the pack's end.
        if off < copied_end || end > pack_end {
            left.push(p);
            continue;
        }
        let Ok(entry) = data.entry(off) else {
            left.push(p);
            continue;
        };
        let header_len = entry.header_size() as u64;
        if end <= off + header_len
            || !crate::packs::entry_ends_at(&data, off, header_len, entry.decompressed_size, end)
        {
            left.push(p);
            continue;
        }
        let pending = run.map_or(0, |(start, end)| end - start);
        let new_off = sink.offset + pending;
        let new_header = match entry.header {
            Header::OfsDelta { base_distance } => {
                let base = off
                    .checked_sub(base_distance)
                    .and_then(|base_off| Some((base_off, rev.position_before(pack, p, base_off)?)));
                let distance = base
                    .filter(|&(_, bp)| copied.get(bp))
                    .and_then(|(base_off, bp)| {
                        let distance = new_off
                            .checked_sub(base_off.checked_sub(shift_at(&shifts, base_off))?)?;
                        Some((distance, bp))
                    });
                match distance {
                    Some((distance, bp)) => {
                        if depths.is_empty() {
                            depths = vec![0; n];
                        }
                        depths[p] = depths[bp].saturating_add(1);
                        (distance != base_distance).then_some(Header::OfsDelta {
                            base_distance: distance,
                        })
                    }
                    None => {
                        left.push(p);
                        continue;
                    }
                }
            }
            Header::RefDelta { .. } => {
                left.push(p);
                continue;
            }
            Header::Commit | Header::Tree | Header::Blob | Header::Tag => None,
        };
        let shift = off
            .checked_sub(new_off)
            .ok_or_else(|| corrupt("entries written past their stored offsets"))?;
        if shifts.last().map_or(0, |&(_, s)| s) != shift {
            shifts.push((off, shift));
        }
        match new_header {
            None => match &mut run {
                Some((_, run_end)) if *run_end == off => *run_end = end,
                _ => {
                    flush(sink, &mut run, false)?;
                    run = Some((off, end));
                }
            },
            Some(header) => {
                flush(sink, &mut run, false)?;
                header.write_to(entry.decompressed_size, sink)?;
                run = Some((off + header_len, end));
            }
        }
        // Written a piece at a time as it grows: reading the entries' headers walks the pack
        // ahead of what is written, and a run of most of the pack held its pages all until
        // its end.
        if run.is_some_and(|(start, end)| end - start >= WRITE_CHUNK as u64) {
            flush(sink, &mut run, true)?;
        }
        copied.set(p);
        copied_end = end;
        count += 1;
        stats.reused += 1;
        stats.pack_reused += 1;
        if entry.header.is_delta() {
            stats.reused_deltas += 1;
            stats.pack_reused_deltas += 1;
            stats.deltas += 1;
        }
    }
    flush(sink, &mut run, false)?;
    if let Some(stretch) = read.rest() {
        pack.let_go_of(stretch);
    }
    Ok((
        Copied {
            pack,
            rev,
            bits: copied,
            count,
            shifts,
            depths,
        },
        left,
    ))
}

#[cfg(test)]
mod tests {
    use super::shift_at;

    #[test]
    fn a_shift_holds_from_its_offset_until_the_next() {
        let shifts = [(100, 10), (500, 40)];
        assert_eq!(shift_at(&shifts, 12), 0);
        assert_eq!(shift_at(&shifts, 99), 0);
        assert_eq!(shift_at(&shifts, 100), 10);
        assert_eq!(shift_at(&shifts, 499), 10);
        assert_eq!(shift_at(&shifts, 500), 40);
        assert_eq!(shift_at(&shifts, u64::MAX), 40);
    }
}
