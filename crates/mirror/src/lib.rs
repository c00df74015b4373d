//! Mirrors of upstream repositories: taking in what upstream sends (through
//! [`gitcache_upstream`]), so that the pack crate can serve from it.
//!
//! - [`mirror`]: creating a mirror and refreshing it from upstream in one fetch, refs replaced
//!   atomically.
//! - [`ingest`]: indexing and verifying a received pack and moving it into place atomically.
//! - [`registry`]: where mirrors live, one refresh per mirror at a time (singleflight), and
//!   maintenance (consolidation, reachability bitmaps, a crash's leftovers) in the background.
//! - [`shared`]: mirrors kept in an object store shared by instances, the local folder a
//!   working copy (a manifest of refs and packs, committed by a conditional write).
//!
//! The upstream is not trusted: answers are read within size and time bounds, ref names are
//! checked, and nothing is published before the fetched history is complete.
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

mod behind;
mod early;
pub mod ingest;
pub mod live;
pub mod mirror;
pub mod registry;
pub mod shared;

#[doc(hidden)]
pub mod fuzzing;
