//! Counting the heap a test holds: [`Counting`], the system allocator with a count beside.
//!
//! A test binary makes it its global allocator; the count is then the whole process's, so
//! such a binary holds one test on purpose, with nothing else running beside it.
//!
//! ```no_run
//! use gitcache_testkit::heap::{Counting, Peak};
//!
//! #[global_allocator]
//! static ALLOCATOR: Counting = Counting;
//!
//! let peak = Peak::start();
//! let bytes = vec![0u8; 1 << 20];
//! drop(bytes);
//! assert!(peak.grown() >= 1 << 20);
//! ```
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, keeping count of the bytes held now and the most held since the
/// last [`Peak::start`].
#[derive(Debug)]
pub struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: a global allocator can only be written with `unsafe`; this one passes every call
// to the system's unchanged and only counts beside.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(held, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// A measurement under way: the bytes held when it started.
#[derive(Debug)]
pub struct Peak {
    start: usize,
}

impl Peak {
    /// Start measuring from the bytes held now (only meaningful with [`Counting`] as the
    /// global allocator).
    pub fn start() -> Peak {
        let start = HELD.load(Ordering::Relaxed);
        PEAK.store(start, Ordering::Relaxed);
        Peak { start }
    }

    /// The most bytes held above the start since.
    pub fn grown(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.start)
    }
}
