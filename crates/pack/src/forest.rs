//! The delta forest of a stored pack: which entry each delta is stored against, and back.
//!
//! Objects one delta tree holds are versions of one file or directory, or of files much like
//! each other: git put them there because their deltas were small. When a stored delta's base
//! is not sent (a shallow clone, a client without thin packs), the best bases for a new delta
//! are most often the objects nearest to it in its tree that are sent. The writer looks for
//! them here, a few steps around the object, instead of searching a window of all objects.

use gix_pack::data::entry::Header;

use crate::Error;
use crate::packs::{RevIndex, StoredPack};

/// No base: stored whole, or a base this pack does not hold.
const NONE: u32 = u32::MAX;
/// Depths are counted up to this (git's own limit is 4095).
const MAX_DEPTH: usize = 4096;

/// Entry headers of a pack read in order through its map, the pages read let go of a stretch
/// at a time (see [`crate::mapped::Forward`]): reading every header does not leave the whole
/// pack resident in the process, nor copy it (a read through a buffer copied every byte of the
/// small entries between the headers).
pub(crate) struct Headers<'a> {
    pack: &'a StoredPack,
    data: std::sync::Arc<crate::packs::PackData>,
    read: crate::mapped::Forward,
    /// The least offset the next header may be at: past the last one read.
    past: u64,
}

/// The longest entry header: type and size (at most 10 bytes), then a base's distance (at
/// most 10) or id (at most 32).
const MAX_HEADER: u64 = 64;

impl<'a> Headers<'a> {
    pub(crate) fn new(pack: &'a StoredPack, hash: gix_hash::Kind) -> Result<Headers<'a>, Error> {
        Ok(Headers {
            pack,
            data: pack.data(hash)?,
            read: crate::mapped::Forward::default(),
            past: 0,
        })
    }

    /// The bytes from `offset` on: an entry header's worth, fewer where the file ends.
    /// Offsets are asked in increasing order: one that is not (pack order from a damaged
    /// reverse index) is an error.
    pub(crate) fn at(&mut self, offset: u64) -> Result<&[u8], Error> {
        if offset < self.past {
            return Err(Error::Odb {
                message: format!(
                    "{}: an entry at {offset} read after one further on (a damaged reverse index)",
                    self.pack.pack.display()
                ),
            });
        }
        self.past = offset.saturating_add(1);
        let end = (offset.saturating_add(MAX_HEADER))
            .min(self.data.data_len() as u64)
            .max(offset);
        if let Some(stretch) = self.read.read(offset..end) {
            self.pack.let_go_of(stretch);
        }
        (self.data.entry_slice(offset..end)).ok_or_else(|| Error::Odb {
            message: format!(
                "{}: an entry at {offset}, beyond the end",
                self.pack.pack.display()
            ),
        })
    }
}

impl Drop for Headers<'_> {
    fn drop(&mut self) {
        if let Some(rest) = self.read.rest() {
            self.pack.let_go_of(rest);
        }
    }
}

/// Packs of more objects than this get no forest: it takes 12 bytes per object for the life
/// of the repository handle (48 MiB at this bound), and reading it every header.
pub(crate) const MAX_OBJECTS: usize = 4 << 20;

/// Each entry's stored base and deltas, by pack position.
#[derive(Debug)]
pub(crate) struct DeltaForest {
    base: Vec<u32>,
    /// The deltas of position `p` are `children[first[p]..first[p + 1]]`.
    first: Vec<u32>,
    children: Vec<u32>,
}

impl DeltaForest {
    /// Read every entry header of `pack` (nothing is inflated).
    pub(crate) fn build(
        pack: &StoredPack,
        rev: &RevIndex,
        hash: gix_hash::Kind,
    ) -> Result<DeltaForest, Error> {
        let n = rev.len();
        if n > MAX_OBJECTS {
            return Err(Error::Odb {
                message: format!("{n} objects: too many for a delta forest"),
            });
        }
        let mut base = vec![NONE; n];
        let mut headers = Headers::new(pack, hash)?;
        // Every entry's offset, in pack order, when they fit in four bytes each (a pack under
        // 4 GiB): bases are found by binary search in it. Else from the indexes, searching
        // back from the delta.
        let small = rev.all_offsets(pack);
        let offset_at = |p: usize| match small {
            Some(offsets) => u64::from(offsets[p]),
            None => rev.offset(pack, p),
        };
        for (p, slot) in base.iter_mut().enumerate() {
            let offset = offset_at(p);
            let entry = gix_pack::data::Entry::from_bytes(headers.at(offset)?, offset, hash)
                .map_err(Error::odb)?;
            let found = match entry.header {
                Header::OfsDelta { base_distance } => {
                    offset.checked_sub(base_distance).and_then(|at| {
                        match (small, u32::try_from(at)) {
                            (Some(offsets), Ok(at)) => offsets[..p].binary_search(&at).ok(),
                            _ => rev.position_before(pack, p, at),
                        }
                    })
                }
                Header::RefDelta { base_id } => rev.position_of(pack, &base_id).filter(|&b| b != p),
                _ => None,
            };
            if let Some(b) = found {
                *slot = b as u32;
            }
        }
        // Each position's count of deltas, then where its range ends; then each delta put
        // from the end of its base's range down, which leaves `first[b]` at the range's start
        // (no second table).
        let mut first = vec![0u32; n + 1];
        for &b in &base {
            if b != NONE {
                first[b as usize] += 1;
            }
        }
        let mut total = 0;
        for end in first.iter_mut() {
            total += *end;
            *end = total;
        }
        let mut children = vec![0u32; total as usize];
        for (p, &b) in base.iter().enumerate().rev() {
            if b != NONE {
                let at = &mut first[b as usize];
                *at -= 1;
                children[*at as usize] = p as u32;
            }
        }
        Ok(DeltaForest {
            base,
            first,
            children,
        })
    }

    /// The base of `p` and, if `below`, its deltas.
    fn neighbours(&self, p: usize, below: bool) -> impl Iterator<Item = usize> + '_ {
        let up = self
            .base
            .get(p)
            .filter(|&&b| b != NONE)
            .map(|&b| b as usize);
        let down = self
            .first
            .get(p)
            .zip(self.first.get(p + 1))
            .filter(|_| below)
            .map_or(&[][..], |(&a, &b)| &self.children[a as usize..b as usize]);
        up.into_iter().chain(down.iter().map(|&c| c as usize))
    }

    /// The position of the entry `p` is stored against, if in this pack.
    pub(crate) fn base(&self, p: usize) -> Option<usize> {
        self.base
            .get(p)
            .filter(|&&b| b != NONE)
            .map(|&b| b as usize)
    }

    /// How many deltas lie below position `p`'s entry in its stored chain (0 if whole).
    pub(crate) fn depth(&self, p: usize) -> usize {
        let mut depth = 0;
        let mut at = p;
        while let Some(&b) = self.base.get(at).filter(|&&b| b != NONE) {
            depth += 1;
            at = b as usize;
            // Bases by id could make a cycle in a damaged pack.
            if depth >= MAX_DEPTH {
                break;
            }
        }
        depth
    }

    /// The longest chain of deltas stored below position `p` through positions `keep` accepts
    /// (0: none), or `None` past `visits` positions, `p` and each one below it looked at
    /// counted (a bound on the work, however many deltas one base has, and on a cycle of bases
    /// by id in a damaged pack).
    pub(crate) fn height(
        &self,
        p: usize,
        visits: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut stack = vec![(p, 0usize)];
        let (mut height, mut visited) = (0, 1);
        if visited > visits {
            return None;
        }
        while let Some((at, depth)) = stack.pop() {
            height = height.max(depth);
            for c in self.neighbours(at, true) {
                if self.base(c) != Some(at) {
                    continue;
                }
                visited += 1;
                if visited > visits {
                    return None;
                }
                if keep(c) {
                    stack.push((c, depth + 1));
                }
            }
        }
        Some(height)
    }

    /// Up to `most` positions of `p`'s delta tree that `usable` accepts, nearest first
    /// (breadth first through bases and deltas), looking at no more than `visits` positions;
    /// none stored below `p`.
    pub(crate) fn nearest(
        &self,
        p: usize,
        most: usize,
        visits: usize,
        mut usable: impl FnMut(usize) -> bool,
    ) -> Vec<usize> {
        let mut found = Vec::new();
        let mut queue = std::collections::VecDeque::from([p]);
        let mut seen = vec![p];
        let mut visited = 0;
        while let Some(at) = queue.pop_front() {
            visited += 1;
            if at != p && usable(at) {
                found.push(at);
                if found.len() == most {
                    break;
                }
            }
            if visited >= visits {
                break;
            }
            // Nothing below `p`: an object stored as a delta against it (or against one of
            // those), copied as it is, needs `p` written first, and a new delta of `p` against
            // it would make a cycle that leaves one of them whole.
            // A base with a great many deltas is not walked past the bound.
            for next in self.neighbours(at, at != p) {
                if seen.len() >= visits {
                    break;
                }
                if !seen.contains(&next) {
                    seen.push(next);
                    queue.push_back(next);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::{DeltaForest, NONE};

    /// A forest from each position's base.
    fn forest(base: &[u32]) -> DeltaForest {
        let n = base.len();
        let mut first = vec![0u32; n + 1];
        let mut children = Vec::new();
        for (p, start) in first.iter_mut().take(n).enumerate() {
            *start = children.len() as u32;
            children.extend((0..n as u32).filter(|&c| base[c as usize] == p as u32));
        }
        first[n] = children.len() as u32;
        DeltaForest {
            base: base.to_vec(),
            first,
            children,
        }
    }

    #[test]
    fn the_nearest_usable_positions_come_first() {
        // 0 ← 1 ← 2 ← 3, and 0 ← 4 ← 5; 6 alone.
        let f = forest(&[NONE, 0, 1, 2, 0, 4, NONE]);
        assert_eq!(f.nearest(3, 3, 64, |_| true), vec![2, 1, 0]);
        assert_eq!(f.nearest(3, 3, 64, |q| q >= 4), vec![4, 5]);
        assert_eq!(f.nearest(6, 3, 64, |_| true), Vec::<usize>::new());
        // Bounded: two visits see 3 and 2 only.
        assert_eq!(f.nearest(3, 3, 2, |_| true), vec![2]);
        // Nothing stored below the object: 2 and 3 depend on 1.
        assert_eq!(f.nearest(1, 5, 64, |_| true), vec![0, 4, 5]);
        assert_eq!(f.depth(3), 3);
        assert_eq!(f.depth(0), 0);
        assert_eq!(f.depth(5), 2);
    }

    #[test]
    fn the_longest_chain_below_a_position_through_those_kept() {
        // 0 ← 1 ← 2 ← 3, and 0 ← 4 ← 5; 6 alone.
        let f = forest(&[NONE, 0, 1, 2, 0, 4, NONE]);
        assert_eq!(f.height(0, 64, |_| true), Some(3));
        assert_eq!(f.height(4, 64, |_| true), Some(1));
        assert_eq!(f.height(6, 64, |_| true), Some(0));
        // Not through 2: what lies below it is not counted.
        assert_eq!(f.height(0, 64, |q| q != 2), Some(2));
        // Bounded: the six positions of 0's tree are more than five visits.
        assert_eq!(f.height(0, 6, |_| true), Some(3));
        assert_eq!(f.height(0, 5, |_| true), None);
        // A cycle of bases (a damaged pack's bases by id) ends at the bound.
        let cycle = forest(&[1, 0]);
        assert_eq!(cycle.height(0, 64, |_| true), None);
    }
}
