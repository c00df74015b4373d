//! Trees kept between the answers of one repository handle.
//!
//! Most answers read the directories of the repository's tips: a shallow clone reads every
//! one of them, and an incremental fetch compares those it sends with the client's versions
//! at their paths. A directory that changes often is stored deep in a delta chain, so each
//! read of it inflates and applies its whole chain again (on a generated repository of 50 MB,
//! its two widest directories sit 37 and 42 links deep: half of such a fetch's planning).
//! A tree's content is named by its id, so one kept is exactly the one read. The least
//! recently used go first once the bound is reached.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;

/// What a kept tree weighs beyond its content: its id, the map's slot, the count of its
/// shared buffer.
const OVERHEAD: usize = 64;

/// What a tree of `len` bytes weighs kept (the bound also counts one for each kept).
pub(crate) fn weight(len: usize) -> usize {
    len + OVERHEAD + 1
}

/// Weighs a kept tree by its bytes.
struct Weight;

impl clru::WeightScale<ObjectId, Arc<[u8]>> for Weight {
    fn weight(&self, _: &ObjectId, data: &Arc<[u8]>) -> usize {
        data.len() + OVERHEAD
    }
}

type Lru = clru::CLruCache<ObjectId, Arc<[u8]>, std::collections::hash_map::RandomState, Weight>;

/// Tree contents by id, at most a bound of bytes, shared by the object handles of a
/// repository handle's answers.
pub(crate) struct TreeCache {
    kept: Mutex<Lru>,
    /// The largest tree kept: a larger one would push out most of the others.
    largest: usize,
    /// Trees taken from here so far.
    hits: AtomicU64,
}

/// What a repository handle keeps of the trees its answers read (see
/// [`Repository::keep_head_trees`](crate::Repository::keep_head_trees)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptTrees {
    /// Bytes held now (contents and their overhead).
    pub bytes: usize,
    /// Tree reads that found them there, so far.
    pub hits: u64,
}

impl std::fmt::Debug for TreeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeCache")
            .field("held_bytes", &self.held_bytes())
            .finish()
    }
}

impl TreeCache {
    /// A cache of at most `bytes` (contents and their overhead counted).
    pub(crate) fn new(bytes: usize) -> TreeCache {
        let capacity = NonZeroUsize::new(bytes).unwrap_or(NonZeroUsize::MIN);
        TreeCache {
            kept: Mutex::new(clru::CLruCache::with_config(
                clru::CLruCacheConfig::new(capacity).with_scale(Weight),
            )),
            largest: bytes / 8,
            hits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Every change under the lock is whole: a panic elsewhere leaves nothing half-done.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The content of tree `oid`, if kept.
    pub(crate) fn get(&self, oid: &ObjectId) -> Option<Arc<[u8]>> {
        let found = self.lock().get(oid).cloned();
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Whether tree `oid` is kept (not counted as a hit, nor made the most recently used).
    pub(crate) fn contains(&self, oid: &ObjectId) -> bool {
        self.lock().peek(oid).is_some()
    }

    /// Keep `data`, the content of tree `oid`, unless it is too large. Returns whether it
    /// was put.
    pub(crate) fn put(&self, oid: &ObjectId, data: &[u8]) -> bool {
        if data.len() > self.largest {
            return false;
        }
        let mut kept = self.lock();
        // Refused only when heavier than the whole cache, which `largest` rules out.
        kept.peek(oid).is_none() && kept.put_with_weight(*oid, Arc::from(data)).is_ok()
    }

    /// Keep nothing (for a handle gone idle).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Bytes held now (contents and their overhead).
    pub(crate) fn held_bytes(&self) -> usize {
        self.lock().weight()
    }

    /// What is held, and how often it was taken.
    pub(crate) fn kept(&self) -> KeptTrees {
        KeptTrees {
            bytes: self.held_bytes(),
            hits: self.hits.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn trees_are_kept_within_the_bound_the_least_recently_used_going_first() {
        // Room for eight (the bound also counts a byte for each kept).
        let bound = 8 * (1000 + OVERHEAD + 1) + 1;
        let cache = TreeCache::new(bound);
        for n in 0..8 {
            cache.put(&id(n), &[n; 1000]);
        }
        assert_eq!(cache.held_bytes(), 8 * (1000 + OVERHEAD));
        // Read, the first is now the most recently used: the second goes for the next one.
        assert_eq!(cache.get(&id(0)).as_deref(), Some(&[0u8; 1000][..]));
        cache.put(&id(8), &[8; 1000]);
        assert!(cache.get(&id(1)).is_none());
        assert!(cache.get(&id(0)).is_some() && cache.get(&id(8)).is_some());
        assert!(cache.held_bytes() < bound);
        // Too large to keep: nothing is pushed out for it.
        cache.put(&id(9), &vec![9; 1500]);
        assert!(cache.get(&id(9)).is_none());
        assert!(cache.get(&id(8)).is_some());
    }
}
