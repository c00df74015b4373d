//! Mirror registry, upstream protocol v2 client and refresh for gitcache.
//!
//! Not built yet; the README's status table says what works.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
