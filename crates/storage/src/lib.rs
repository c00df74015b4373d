//! Storage for gitcache's mirrors.
//!
//! The filesystem backend ([`fs`]) is what mirrors live on today: a data directory that one
//! process owns at a time, files replaced atomically and durably, and sizes measured for
//! operators; stored fetch responses ([`responses`]) with atomic publication, checksums
//! and least-recently-used eviction; a repository's identity ([`repo::RepoKey`]), its names
//! checked by one set of rules; and the seam to object storage ([`store::ObjectStore`]):
//! immutable objects and conditionally replaced manifests, with [`store::FsStore`] as the
//! filesystem backend and [`s3::S3Store`] for S3-compatible buckets shared by instances; and
//! [`lease::Leases`], one holder at a time for a piece of work among instances.
//!
//! # Example
//!
//! ```
//! use gitcache_storage::fs::{DataDir, replace_file};
//!
//! let root = tempfile::tempdir()?;
//! let data = DataDir::open(root.path())?;
//! // A second owner of the same directory is refused while the first lives.
//! assert!(DataDir::open(root.path()).is_err());
//! let mirror = data.path().join("mirrors");
//! std::fs::create_dir(&mirror)?;
//! replace_file(&mirror.join("packed-refs"), b"# pack-refs with: peeled fully-peeled sorted \n")?;
//! assert_eq!(gitcache_storage::fs::tree_size(&mirror)?, 46);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// A boxed future with a message for its error, for traits whose implementation is chosen at
/// run time (`dyn`): leases, the index of shared responses.
pub type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
pub mod repo;
pub mod responses;
pub mod s3;
pub mod store;
