//! The answer to `command=bundle-uri`: a list of bundles the client may download before it
//! fetches, so that the bulk of a clone comes from elsewhere (an object store) and only the
//! rest from the server.
//!
//! The answer is `key=value` lines and a flush, in git's bundle-list keys: `bundle.version=1`,
//! `bundle.mode=all` (take every bundle listed), then `bundle.<id>.uri=<uri>` per bundle.
//!
//! ```
//! use gitcache_protocol::bundle_uri::{Bundle, BundleList};
//! let list = BundleList {
//!     bundles: vec![Bundle::new("pack-1a2b", "https://bucket.example/b?sig=1")?],
//! };
//! let mut out = Vec::new();
//! list.write_to(&mut out)?;
//! assert!(out.starts_with(b"0015bundle.version=1\n"));
//! assert_eq!(BundleList::parse(&out)?, list);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Write;

use crate::pktline::{self, Line};

/// One bundle: an id of letters, digits and `-`, and where to download it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    id: String,
    uri: String,
}

/// A bundle list, in the order the bundles are to be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleList {
    /// The bundles.
    pub bundles: Vec<Bundle>,
}

/// A bundle or a bundle list that cannot be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An id with other characters than letters, digits and `-`, or empty.
    #[error("bundle id {0:?}: only letters, digits and '-'")]
    Id(String),
    /// A URI with whitespace or control characters, or empty.
    #[error("bundle uri {0:?}: empty, or with whitespace or control characters")]
    Uri(String),
    /// A line that is not a known `key=value`.
    #[error("bundle list line {0:?}")]
    Line(String),
    /// Framing.
    #[error(transparent)]
    PktLine(#[from] pktline::Error),
}

impl Bundle {
    /// A bundle `id` at `uri`, both checked.
    pub fn new(id: impl Into<String>, uri: impl Into<String>) -> Result<Self, Error> {
        let (id, uri) = (id.into(), uri.into());
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::Id(id));
        }
        if uri.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Uri(uri));
        }
        Ok(Bundle { id, uri })
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where to download it.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl BundleList {
    /// Write the list, flush included. An empty list is the flush alone: nothing to take.
    pub fn write_to(&self, out: &mut impl Write) -> Result<(), Error> {
        if !self.bundles.is_empty() {
            pktline::write_text(out, b"bundle.version=1")?;
            pktline::write_text(out, b"bundle.mode=all")?;
            for bundle in &self.bundles {
                let line = format!("bundle.{}.uri={}", bundle.id, bundle.uri);
                pktline::write_text(out, line.as_bytes())?;
            }
        }
        pktline::write_flush(out)?;
        Ok(())
    }

    /// Read a list as [`write_to`](Self::write_to) writes it (version 1, mode `all`, URIs
    /// only), up to its flush.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut list = BundleList::default();
        for line in pktline::lines(body) {
            let data = match line? {
                Line::Data(data) => pktline::chomp(data),
                Line::Flush => return Ok(list),
                _ => return Err(Error::Line("a delimiter or response end".into())),
            };
            let text = std::str::from_utf8(data).map_err(|_| Error::Line(pktline::shown(data)))?;
            let bad = || Error::Line(pktline::shown(text.as_bytes()));
            let (key, value) = text.split_once('=').ok_or_else(bad)?;
            match key {
                "bundle.version" if value == "1" => {}
                "bundle.mode" if value == "all" => {}
                _ => {
                    let id = key
                        .strip_prefix("bundle.")
                        .and_then(|k| k.strip_suffix(".uri"))
                        .ok_or_else(bad)?;
                    if list.bundles.iter().any(|b| b.id == id) {
                        return Err(bad());
                    }
                    list.bundles.push(Bundle::new(id, value)?);
                }
            }
        }
        Err(Error::Line("no flush at the end".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_is_a_flush() {
        let mut out = Vec::new();
        BundleList::default().write_to(&mut out).unwrap();
        assert_eq!(out, b"0000");
        assert_eq!(BundleList::parse(&out).unwrap(), BundleList::default());
    }

    #[test]
    fn ids_and_uris_are_checked() {
        assert!(matches!(Bundle::new("a.b", "https://x"), Err(Error::Id(_))));
        assert!(matches!(Bundle::new("", "https://x"), Err(Error::Id(_))));
        assert!(matches!(
            Bundle::new("a", "https://x y"),
            Err(Error::Uri(_))
        ));
        assert!(matches!(
            Bundle::new("a", "https://x\n"),
            Err(Error::Uri(_))
        ));
        assert!(matches!(Bundle::new("a", ""), Err(Error::Uri(_))));
    }

    #[test]
    fn lists_round_trip_and_foreign_lines_are_refused() {
        let list = BundleList {
            bundles: vec![
                Bundle::new("one", "https://a/1").unwrap(),
                Bundle::new("two", "https://a/2?x=y&z=w").unwrap(),
            ],
        };
        let mut out = Vec::new();
        list.write_to(&mut out).unwrap();
        assert_eq!(BundleList::parse(&out).unwrap(), list);
        for bad in [
            &b"0015bundle.version=2\n0000"[..],
            b"0013bundle.mode=any\n0000",
            b"000enot-a-key\n0000",
            b"0015bundle.version=1\n",
        ] {
            assert!(
                BundleList::parse(bad).is_err(),
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
    }
}
