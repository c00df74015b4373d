//! The catalog of repositories gitcache caches.
//!
//! Not built yet; the README's status table says what works.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
