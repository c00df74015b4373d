//! Tables that requests add to, kept within bounds: pruned of what is no longer live each
//! time they double (so a prune costs a constant per insertion, not a scan per request),
//! and emptied when even the live entries reach the most they may hold. Counts by key are
//! bounded too, forgotten from above every count they gave out.

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

/// Counts by key (a repository), bounded: past [`Counts::MOST`] repositories they are forgotten,
/// and every repository counts from above any count given out before (the floor), so that a
/// count taken before a bump never equals one read after it.
#[derive(Debug)]
pub(crate) struct Counts<K> {
    counts: HashMap<K, u64>,
    floor: u64,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            counts: HashMap::new(),
            floor: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> Counts<K> {
    /// The most repositories counted at once.
    const MOST: usize = 100_000;

    /// `key`'s count now.
    pub(crate) fn of<Q>(&self, key: &Q) -> u64
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.counts.get(key).copied().unwrap_or(self.floor)
    }

    /// Count one more for `key`.
    pub(crate) fn bump<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.counts.len() >= Self::MOST && !self.counts.contains_key(key) {
            self.floor = self
                .counts
                .values()
                .copied()
                .max()
                .unwrap_or(0)
                .max(self.floor)
                + 1;
            self.counts.clear();
        }
        let floor = self.floor;
        *self.counts.entry(key.to_owned()).or_insert(floor) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{Bounded, Counts};

    /// Counts taken before a bump never equal one read after it, the bound's forgetting
    /// included: forgotten repositories count from above every count given out.
    #[test]
    fn counts_taken_before_a_bump_never_match_after_it() {
        let mut counts: Counts<String> = Counts::default();
        let taken = counts.of("x");
        counts.bump("x");
        assert_ne!(counts.of("x"), taken);
        let before_forgetting = counts.of("x");
        // Other repositories fill the table: it is forgotten, "x" with it.
        for i in 0..Counts::<String>::MOST {
            counts.bump(format!("r{i}").as_str());
        }
        assert!(
            counts.of("x") > before_forgetting,
            "above every count given out"
        );
        let y = counts.of("y");
        counts.bump("y");
        assert_ne!(counts.of("y"), y);
    }

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
