//! Tables that requests add to, kept within bounds: pruned of what is no longer live each
//! time they double (so a prune costs a constant per insertion, not a scan per request),
//! and emptied when even the live entries reach the most they may hold.

use std::collections::HashMap;
use std::hash::Hash;

/// A map pruned as it grows (see the module's docs).
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V>,
    /// The size at which the next prune runs.
    prune_at: usize,
    /// The size of the first prune.
    first: usize,
    /// The most entries kept, live or not.
    most: usize,
}

impl<K: Eq + Hash, V> Bounded<K, V> {
    /// A table pruned first at `first` entries and holding at most `most`.
    pub(crate) fn new(first: usize, most: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            prune_at: first.min(most),
            first,
            most,
        }
    }

    /// Make room for an entry: when the table is due, keep only the entries `live` says
    /// are, and empty it if they are still the most it may hold. Call before inserting.
    pub(crate) fn make_room(&mut self, live: impl FnMut(&K, &mut V) -> bool) {
        if self.map.len() < self.prune_at {
            return;
        }
        self.map.retain(live);
        if self.map.len() >= self.most / 2 {
            // What each entry saves (a check upstream, an admission) is cheaper to lose
            // than a table that every request scans.
            self.map.clear();
        }
        self.prune_at = (self.map.len() * 2).clamp(self.first.min(self.most), self.most);
    }
}

impl<K, V> std::ops::Deref for Bounded<K, V> {
    type Target = HashMap<K, V>;

    fn deref(&self) -> &HashMap<K, V> {
        &self.map
    }
}

impl<K, V> std::ops::DerefMut for Bounded<K, V> {
    fn deref_mut(&mut self) -> &mut HashMap<K, V> {
        &mut self.map
    }
}

#[cfg(test)]
mod tests {
    use super::Bounded;

    #[test]
    fn pruned_when_doubled_and_emptied_when_live_entries_fill_it() {
        let mut table: Bounded<u32, bool> = Bounded::new(4, 64);
        let mut prunes = 0;
        // Every other entry live: each prune halves the table, the next comes at twice
        // what was kept.
        for i in 0..32u32 {
            let before = table.len();
            table.make_room(|_, live| *live);
            prunes += usize::from(table.len() < before);
            table.insert(i, i % 2 == 0);
            assert!(table.len() < 64);
        }
        assert!((3..=6).contains(&prunes), "{prunes}");
        assert!(table.values().filter(|live| !**live).count() < 16);

        // All live: the table is emptied once they are half the most it may hold.
        let mut table: Bounded<u32, ()> = Bounded::new(4, 64);
        let mut most = 0;
        for i in 0..1000u32 {
            table.make_room(|_, _| true);
            table.insert(i, ());
            most = most.max(table.len());
        }
        assert!(most <= 64, "{most}");
        assert!(table.len() < 32, "emptied at half the most");
    }
}
