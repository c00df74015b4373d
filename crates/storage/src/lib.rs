//! Storage backends (filesystem, object storage) for gitcache mirrors.
//!
//! Not built yet; the README's status table says what works.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
