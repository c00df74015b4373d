//! Git's protocol v2 as a caching proxy speaks it: pkt-line framing, request parsing and response
//! writing, with no I/O of its own.
//!
//! Parsers take byte slices and report whether they saw a whole message; writers write into any
//! [`std::io::Write`]. That keeps every piece usable from blocking or async code, fuzzable and
//! benchmarkable on its own.
//!
//! - [`pktline`]: framing (`0000` flush, `0001` delimiter, `0002` response end, 65520-byte lines).
//! - [`request`]: the body `git` POSTs to `git-upload-pack` (`ls-refs`, `fetch`, `object-info`,
//!   `bundle-uri`),
//!   parsed incrementally under [`request::Limits`].
//! - [`filter`]: partial-clone filter specifications.
//! - [`advertise`]: the v2 capability advertisement for `GET info/refs`.
//! - [`bundle_uri`]: the `bundle-uri` answer, a list of bundles to take before fetching.
//! - [`ls_refs`]: the `ls-refs` response, written and read.
//! - [`response`]: the `fetch` response sections, written and read.
//! - [`sideband`]: side-band framing of pack data, progress and errors.
//!
//! # Example
//!
//! Parse a fetch request as it arrives, then answer with a pack on side-band:
//!
//! ```
//! use gitcache_protocol::request::{Command, Limits, RequestParser, Status};
//! use gitcache_protocol::response::ResponseWriter;
//! use std::io::Write;
//!
//! let body = b"0012command=fetch\n0001\
//!              0032want 1111111111111111111111111111111111111111\n\
//!              000ddeepen 1\n0009done\n0000";
//! let mut parser = RequestParser::new(Limits::default());
//! let (head, tail) = body.split_at(20);
//! assert_eq!(parser.feed(head).unwrap(), Status::Incomplete);
//! let Status::Complete(request) = parser.feed(tail).unwrap() else { panic!("incomplete") };
//! let Command::Fetch(fetch) = request.command else { panic!("not a fetch") };
//! assert_eq!((fetch.wants.len(), fetch.deepen, fetch.done), (1, Some(1), true));
//!
//! let mut response = ResponseWriter::new(Vec::new(), false);
//! response.shallow_info(&fetch.wants, &[]).unwrap();
//! let mut pack = response.packfile().unwrap();
//! pack.write_all(b"PACK").unwrap();
//! let bytes = pack.finish().unwrap();
//! assert!(bytes.starts_with(b"0011shallow-info\n"));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod advertise;
pub mod bundle_uri;
pub mod filter;
pub mod ls_refs;
pub mod pktline;
pub mod request;
pub mod response;
pub mod sideband;

#[doc(hidden)]
pub mod fuzzing;

pub use gix_hash::{Kind as ObjectFormat, ObjectId};
