//! Objects compressed again, kept for the next answer that needs them.
//!
//! An object whose stored delta base a client is not sent is compressed again: a new delta
//! against one of the objects the answer offers as bases, or whole. One stored whole may be
//! tried against objects at its path in an incremental fetch: a new delta, or none (it
//! goes as stored). Answers for nearby commits of one repository (shallow clones of a
//! branch's recent tips, as CI fleets make) make most of the same objects again against the
//! same bases. What is made depends only on the object, the bases offered, in order, the zlib
//! level and whether the object is stored whole, all named by the key, so an object taken
//! from here is byte for byte what making it would give.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gix_hash::ObjectId;

/// What an object made again is: whole (its entry, header included), a delta against
/// `base` (its size and zlib bytes; the entry's header depends on where the base goes), or,
/// for one stored whole that no base paid for, its stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Made {
    Whole(Vec<u8>),
    Delta {
        base: ObjectId,
        size: u64,
        data: Vec<u8>,
    },
    AsStored,
}

impl Made {
    fn bytes(&self) -> usize {
        match self {
            Made::Whole(data) | Made::Delta { data, .. } => data.len(),
            Made::AsStored => 0,
        }
    }
}

/// What was made: this object, against these bases in this order, at this zlib level, and
/// whether it was stored whole (then [`Made::AsStored`] stands for no delta that pays).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    oid: ObjectId,
    level: u32,
    against: Box<[ObjectId]>,
    stored_whole: bool,
}

impl Key {
    /// Bytes an entry is counted for beyond its data.
    fn overhead(&self) -> usize {
        std::mem::size_of::<Key>() * 2 + self.against.len() * std::mem::size_of::<ObjectId>() + 64
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Made>,
    /// Keys in the order they came in: the oldest goes first.
    order: VecDeque<Key>,
    bytes: usize,
}

/// A bounded store of objects compressed again, shared by the answers of one process (give
/// the same one to every [`Options`](crate::Options) through
/// [`Options::remade`](crate::Options::remade)). The oldest entries go once it holds `max_bytes`;
/// entries larger than a sixteenth of it are not kept.
///
/// ```
/// let remade = std::sync::Arc::new(gitcache_pack::Remade::new(64 << 20));
/// let options = gitcache_pack::Options {
///     remade: Some(remade.clone()),
///     ..gitcache_pack::Options::default()
/// };
/// # let _ = options;
/// assert_eq!(remade.hits(), 0);
/// ```
#[derive(Debug)]
pub struct Remade {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Remade {
    /// A store of at most `max_bytes` (data and keys counted).
    pub fn new(max_bytes: usize) -> Self {
        Remade {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Objects taken from the store instead of being made again, so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Objects looked for and not found (made again, then kept if small enough), so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes held now (data and keys).
    pub fn held_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing is left half-changed by a panic under the lock: every change is whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `oid` made against `against` at `level` before (as stored whole or not), if it is
    /// still here.
    pub(crate) fn get(
        &self,
        oid: &ObjectId,
        level: u32,
        against: &[ObjectId],
        stored_whole: bool,
    ) -> Option<Made> {
        let key = Key {
            oid: *oid,
            level,
            against: against.into(),
            stored_whole,
        };
        let found = self.lock().map.get(&key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keep `made`, `oid` made against `against` at `level` (as stored whole or not), making
    /// room for it.
    pub(crate) fn put(
        &self,
        oid: &ObjectId,
        level: u32,
        against: &[ObjectId],
        stored_whole: bool,
        made: &Made,
    ) {
        let key = Key {
            oid: *oid,
            level,
            against: against.into(),
            stored_whole,
        };
        let size = made.bytes() + key.overhead();
        if size > self.max_bytes / 16 {
            return;
        }
        let mut inner = self.lock();
        if inner.map.contains_key(&key) {
            return;
        }
        while inner.bytes + size > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.map.remove(&oldest) {
                inner.bytes -= gone.bytes() + oldest.overhead();
            }
        }
        inner.bytes += size;
        inner.order.push_back(key.clone());
        inner.map.insert(key, made.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn an_object_is_found_only_for_the_same_bases_and_level() {
        let remade = Remade::new(1 << 20);
        let made = Made::Delta {
            base: id(2),
            size: 40,
            data: vec![1; 30],
        };
        remade.put(&id(1), 3, &[id(2), id(3)], false, &made);
        assert_eq!(remade.get(&id(1), 3, &[id(2), id(3)], false), Some(made));
        assert_eq!(remade.get(&id(1), 3, &[id(3), id(2)], false), None);
        assert_eq!(remade.get(&id(1), 3, &[id(2)], false), None);
        assert_eq!(remade.get(&id(1), 4, &[id(2), id(3)], false), None);
        assert_eq!(remade.get(&id(9), 3, &[id(2), id(3)], false), None);
        // Tried as stored whole, against the same bases: another key.
        assert_eq!(remade.get(&id(1), 3, &[id(2), id(3)], true), None);
        remade.put(&id(1), 3, &[id(2), id(3)], true, &Made::AsStored);
        assert_eq!(
            remade.get(&id(1), 3, &[id(2), id(3)], true),
            Some(Made::AsStored)
        );
        assert_eq!((remade.hits(), remade.misses()), (2, 5));
    }

    #[test]
    fn the_oldest_go_first_and_the_bound_holds() {
        let max = 64 << 10;
        let remade = Remade::new(max);
        for n in 0..200u8 {
            remade.put(&id(n), 1, &[], false, &Made::Whole(vec![n; 1000]));
            assert!(remade.held_bytes() <= max, "{}", remade.held_bytes());
        }
        assert_eq!(remade.get(&id(0), 1, &[], false), None);
        assert_eq!(
            remade.get(&id(199), 1, &[], false),
            Some(Made::Whole(vec![199; 1000]))
        );
        // Too large a share of the store: not kept.
        remade.put(&id(250), 1, &[], false, &Made::Whole(vec![0; max / 8]));
        assert_eq!(remade.get(&id(250), 1, &[], false), None);
    }
}
