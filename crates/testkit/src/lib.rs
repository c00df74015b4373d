//! Test support for gitcache: the real parts its tests run against.
//!
//! - [`upstream::Upstream`]: C git's `git http-backend` behind an HTTP server on `127.0.0.1:0`,
//!   with public and private repositories, request counters, recording and fault switches.
//! - [`repo`]: seedable repository generators (SHA-1 and SHA-256) and appending commits.
//! - [`git::GitClient`]: the real `git` client with its own `HOME` and no machine configuration.
//! - [`fuzz::replay`]: fuzz corpora and saved crashes replayed in ordinary tests.
//! - [`heap::Counting`]: an allocator counting the heap a test holds, at its peak.
//! - [`crash::campaign`]: the server binary killed at random instants and checked after each.
//! - [`s3::S3Server`]: a real S3-compatible server (moto); [`relay::Relay`]: a TCP relay that
//!   can be cut, to take a server away and bring it back.
//!
//! This crate is for tests only: it spawns processes, starts its own runtime thread and panics
//! in helpers whose failure is a test failure.
//!
//! # Example
//!
//! ```no_run
//! use gitcache_testkit::{git::GitClient, repo::{self, RepoSpec}, upstream::{Access, Upstream}};
//!
//! let upstream = Upstream::start()?;
//! repo::generate(&upstream.repo_path("acme/widgets"), &RepoSpec::tiny(1))?;
//! upstream.adopt_repo("acme/widgets", Access::Public)?;
//!
//! let client = GitClient::new()?;
//! client.run(client.home(), &["clone", &upstream.repo_url("acme/widgets"), "w"])?.expect_success();
//! client.fsck(&client.home().join("w"))?.expect_success();
//! assert_eq!(upstream.counts().fetch, 1);
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod crash;
pub mod dns;
pub mod fuzz;
pub mod git;
pub mod github;
pub mod heap;
pub mod packfile;
pub mod relay;
pub mod repo;
pub mod s3;
pub mod tls;
pub mod upstream;
