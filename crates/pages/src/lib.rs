//! Static websites from git trees, stored content-addressed in an object store (the git-pages
//! design): a deployed site is one manifest (`pages/site/<host>/<project>`, `.index` for the
//! domain's root tree) that maps each path of the tree to an entry, a file's content either
//! inline (very small files) or a blob named by the SHA-256 of its content
//! (`pages/blob/<hex>`, shared by every site). A deployment stages its manifest first, then
//! uploads the blobs it lacks, then replaces the site's manifest in one conditional write:
//! readers see the old site or the new one, never a mix.
//!
//! - [`dns`]: TXT lookups for deploy authorization.
//! - [`fetch`]: a branch's tree taken from a repository by one shallow fetch.
//! - [`http`]: the HTTP service: `GET`/`HEAD` by `Host`, `PUT` to deploy.
//! - [`manifest`]: the manifest and its stable, versioned binary encoding.
//! - [`rules`]: a site's own `_redirects` and `_headers` files.
//! - [`encoding`]: `gzip` and `br` answers.
//! - [`body`]: an answer's body, from memory or read from the store as it is sent.
//! - [`cache`]: the byte-bounded memory of manifests and blobs.
//! - [`site`]: deploying a tree and reading a site back ([`site::Pages`]).
//! - [`serve`]: what a `GET` of a path answers: routing by exclusion, `index.html`, redirects
//!   to a directory's slash, symlinks followed inside the tree only, a site's `404.html`,
//!   content types and `ETag`s.
//!
//! The server runs the service on its own listener (`--pages-listen`).
//!
//! # Example
//!
//! ```
//! use gitcache_pages::serve::{Answer, answer};
//! use gitcache_pages::site::{Pages, TreeFile};
//! use gitcache_storage::store::{AnyStore, FsStore};
//!
//! # tokio_test_block(async {
//! let dir = tempfile::tempdir()?;
//! let pages = Pages::new(AnyStore::Fs(FsStore::new(dir.path())));
//! let tree = vec![
//!     TreeFile::file("index.html", b"<h1>hello</h1>".to_vec()),
//!     TreeFile::file("docs/index.html", b"<h1>docs</h1>".to_vec()),
//! ];
//! pages.deploy("example.org", ".index", "0123abcd", "https://forge/acme/site.git", tree).await?;
//! let site = pages.site("example.org", ".index").await?.expect("deployed");
//! match answer(&site, "/docs") {
//!     Answer::Redirect(to) => assert_eq!(to, "/docs/"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # });
//! # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod body;
pub mod cache;
pub mod dns;
pub mod encoding;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod manifest;
pub mod rules;
pub mod serve;
pub mod site;
pub mod stall;
