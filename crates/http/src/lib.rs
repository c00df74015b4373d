//! HTTP services of gitcache: upload-pack, passthrough, admin, metrics.
//!
//! Not built yet; the README's status table says what works.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
