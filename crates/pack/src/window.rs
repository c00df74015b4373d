//! Delta bases by name: the objects of an answer that stand whole in their pack, sorted by
//! kind and by the name hash of their path (git's, from the pack's bitmap file), for an object
//! whose own stored delta tree offers no base to find one among files named alike.
//!
//! git's delta search sorts the objects it writes by kind, name hash and size and tries each
//! against the ten before it: versions of one file and files of similar names (`…-12.txt`,
//! `…-13.txt`, or the same name in other directories) meet there. An answer without
//! `thin-pack` whose objects are stored as deltas against what the client has gets new bases
//! this way in git; with the stored delta tree alone, thousands of them had none and went
//! whole. Only objects stored whole are offered: nothing depends on them, so no two objects
//! are made deltas of each other, and the new delta's chain is one entry long.

/// Positions of one pack's candidate bases, by kind and name hash.
#[derive(Debug, Default)]
pub(crate) struct NameWindow {
    /// `(key, position)`, sorted: the key is the kind in the high half, the name hash in the
    /// low one.
    entries: Vec<(u64, u32)>,
}

/// The sort key of an object of `kind` (1 for trees, 2 for blobs) whose path hashes to `name`.
pub(crate) fn key(kind: u8, name: u32) -> u64 {
    u64::from(kind) << 32 | u64::from(name)
}

impl NameWindow {
    /// The window over `positions`, each with its key (`None`: not a candidate).
    pub(crate) fn new(
        positions: impl Iterator<Item = usize>,
        key_of: impl Fn(usize) -> Option<u64>,
    ) -> NameWindow {
        let mut entries: Vec<(u64, u32)> = positions
            .filter_map(|p| Some((key_of(p)?, u32::try_from(p).ok()?)))
            .collect();
        entries.sort_unstable();
        entries.dedup();
        NameWindow { entries }
    }

    /// How many candidates there are.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Up to `most` positions of the kind `key` names, nearest to it first: by how far their
    /// name hash is from `key`'s, then by how far they lie from `p` in the pack (versions of
    /// one file written together). `p` itself and positions `usable` refuses are passed over.
    pub(crate) fn nearest(
        &self,
        key: u64,
        p: usize,
        most: usize,
        mut usable: impl FnMut(usize) -> bool,
    ) -> Vec<usize> {
        let kind = key >> 32;
        let p32 = u32::try_from(p).unwrap_or(u32::MAX);
        let split = self.entries.partition_point(|&e| e < (key, p32));
        let (mut left, mut right) = (split, split);
        let mut found = Vec::new();
        // How far a candidate is: its name hash's distance, then its position's.
        let distance = |(k, q): (u64, u32)| (k.abs_diff(key), q.abs_diff(p32));
        while found.len() < most {
            let before = left
                .checked_sub(1)
                .map(|i| self.entries[i])
                .filter(|&(k, _)| k >> 32 == kind);
            let after = self
                .entries
                .get(right)
                .copied()
                .filter(|&(k, _)| k >> 32 == kind);
            let take = match (before, after) {
                (None, None) => break,
                (Some(b), Some(a)) if distance(a) < distance(b) => {
                    right += 1;
                    a
                }
                (Some(b), _) => {
                    left -= 1;
                    b
                }
                (None, Some(a)) => {
                    right += 1;
                    a
                }
            };
            let q = take.1 as usize;
            if q != p && usable(q) {
                found.push(q);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::{NameWindow, key};

    #[test]
    fn the_nearest_names_of_one_kind_come_first() {
        // Trees and blobs at positions 0..8 with their names.
        let objects = [
            (1, 100),
            (2, 100),
            (2, 105),
            (2, 100),
            (2, 90),
            (2, 1_000),
            (1, 101),
            (2, 100),
        ];
        let window = NameWindow::new(0..objects.len() + 1, |p| {
            objects.get(p).map(|&(kind, name)| key(kind, name))
        });
        assert_eq!(window.len(), objects.len());
        // A blob named 100 at position 3: the other two named alike (nearest in the pack
        // first), then 105 and 90 by distance, then 1,000; no trees.
        assert_eq!(
            window.nearest(key(2, 100), 3, 8, |_| true),
            vec![1, 7, 2, 4, 5]
        );
        assert_eq!(window.nearest(key(2, 100), 3, 2, |_| true), vec![1, 7]);
        // Refused positions are passed over.
        assert_eq!(window.nearest(key(2, 100), 3, 2, |q| q != 1), vec![7, 2]);
        // An object not in the window finds its neighbours all the same.
        assert_eq!(window.nearest(key(2, 104), 9, 1, |_| true), vec![2]);
        assert_eq!(window.nearest(key(1, 0), 9, 8, |_| true), vec![0, 6]);
        assert!(window.nearest(key(3, 0), 9, 8, |_| true).is_empty());
    }
}
