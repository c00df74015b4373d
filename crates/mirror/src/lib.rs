//! Mirrors of upstream repositories: taking in what upstream sends, so that the pack crate can
//! serve from it.
//!
//! Built so far: [`ingest`], which indexes and verifies a received pack and moves it into a
//! bare repository atomically. The upstream client, refresh and warming are still to come (see
//! the README's status table).
//!
//! # Example
//!
//! ```no_run
//! use gitcache_mirror::ingest::ingest_pack;
//! let pack = std::fs::read("received.pack")?;
//! let ingested = ingest_pack("mirror.git".as_ref(), gix_hash::Kind::Sha1, &mut &pack[..])?;
//! println!("{} objects in {}", ingested.objects, ingested.pack.display());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ingest;

#[doc(hidden)]
pub mod fuzzing;
