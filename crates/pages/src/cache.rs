//! A least-recently-used map bounded in bytes: what [`crate::site::Pages`] keeps of manifests,
//! blobs and compressed blobs between requests.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Entries by key, each with its cost in bytes; the least recently used go first when the
/// total passes the bound. An entry larger than the bound is not kept at all.
#[derive(Debug)]
pub struct Lru<K, V> {
    entries: HashMap<K, (V, usize, u64)>,
    /// Keys by when they were last used.
    order: BTreeMap<u64, K>,
    tick: u64,
    used: usize,
    bound: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty map holding at most `bound` bytes.
    pub fn new(bound: usize) -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            used: 0,
            bound,
        }
    }

    /// The bytes held.
    pub fn used(&self) -> usize {
        self.used
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry `key`, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let (value, _, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, key.clone());
        Some(value.clone())
    }

    /// Keep `value` as `key`, costing `cost` bytes, dropping the least recently used entries
    /// until the total is within the bound.
    pub fn insert(&mut self, key: K, value: V, cost: usize) {
        self.remove(&key);
        if cost > self.bound {
            return;
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, cost, self.tick));
        self.used += cost;
        while self.used > self.bound {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, cost, _)) = self.entries.remove(&oldest) {
                self.used -= cost;
            }
        }
    }

    /// Drop the entry `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some((_, cost, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.used -= cost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let mut lru = Lru::new(10);
        lru.insert("a", 1, 4);
        lru.insert("b", 2, 4);
        assert_eq!(lru.get(&"a"), Some(1));
        lru.insert("c", 3, 4);
        assert_eq!(lru.get(&"b"), None, "b was the least recently used");
        assert_eq!(lru.get(&"a"), Some(1));
        assert_eq!(lru.get(&"c"), Some(3));
        assert_eq!(lru.used(), 8);
        lru.insert("huge", 4, 11);
        assert_eq!(lru.get(&"huge"), None, "larger than the bound: not kept");
        assert_eq!(lru.len(), 2);
        lru.insert("a", 5, 2);
        assert_eq!((lru.get(&"a"), lru.used()), (Some(5), 6));
        lru.remove(&"a");
        lru.remove(&"c");
        assert!(lru.is_empty());
        assert_eq!(lru.used(), 0);
    }
}
