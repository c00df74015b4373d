//! Partial-clone filter specifications, as `git rev-list --filter` and the `filter` argument of
//! `fetch` spell them.
//!
//! ```
//! use gitcache_protocol::filter::{Filter, ObjectType};
//! assert_eq!("blob:limit=1k".parse::<Filter>().unwrap(), Filter::BlobLimit(1024));
//! let combined: Filter = "combine:blob:none+tree:2".parse().unwrap();
//! assert_eq!(combined, Filter::Combine(vec![Filter::BlobNone, Filter::Tree(2)]));
//! assert_eq!("object:type=tag".parse::<Filter>().unwrap(), Filter::ObjectType(ObjectType::Tag));
//! ```

use std::fmt;
use std::str::FromStr;

/// A client's text as an error quotes it: cut and escaped (see [`crate::pktline::shown`]).
fn shown(text: &str) -> String {
    crate::pktline::shown(text.as_bytes())
}

/// A parsed filter specification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `blob:none`: leave out every blob.
    BlobNone,
    /// `blob:limit=<n>[kmg]`: leave out blobs of `n` bytes or more.
    BlobLimit(u64),
    /// `tree:<depth>`: leave out trees and blobs deeper than `depth` (0 sends no tree at all).
    Tree(u64),
    /// `object:type=<type>`: send only objects of this type.
    ObjectType(ObjectType),
    /// `sparse:oid=<blob-ish>`: a sparse-checkout specification stored in the repository.
    SparseOid(String),
    /// `combine:<a>+<b>+…`: the intersection of several filters.
    Combine(Vec<Filter>),
}

/// The object types `object:type=` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    /// `blob`
    Blob,
    /// `tree`
    Tree,
    /// `commit`
    Commit,
    /// `tag`
    Tag,
}

impl ObjectType {
    /// The name git uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Blob => "blob",
            ObjectType::Tree => "tree",
            ObjectType::Commit => "commit",
            ObjectType::Tag => "tag",
        }
    }
}

/// Why a filter specification was refused; the messages follow git's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing git knows.
    #[error("invalid filter-spec '{spec}'")]
    Invalid {
        /// The specification as given.
        spec: String,
    },
    /// `blob:limit=` without a valid size.
    #[error("invalid filter-spec '{spec}': expected 'blob:limit=<n>[kmg]'")]
    BlobLimit {
        /// The specification as given.
        spec: String,
    },
    /// `tree:` without a valid depth.
    #[error("expected 'tree:<depth>'")]
    TreeDepth,
    /// `object:type=` with a name that is no object type.
    #[error("'{name}' for 'object:type=<type>' is not a valid object type")]
    ObjectType {
        /// The name given.
        name: String,
    },
    /// `sparse:path=` is gone from git.
    #[error("sparse:path filters support has been dropped")]
    SparsePath,
    /// `sparse:oid=` with nothing after it.
    #[error("sparse:oid needs a value")]
    SparseOidEmpty,
    /// A sub-filter of `combine:` holds a character that must be %-encoded.
    #[error("must escape char in sub-filter-spec: '{}'", ch.escape_default())]
    MustEscape {
        /// The character.
        ch: char,
    },
    /// `combine:` with an empty sub-filter.
    #[error("expected something after combine:")]
    EmptyCombine,
    /// More sub-filters in all, more `tree:<n>` among them, or `combine:` nested deeper,
    /// than gitcache serves (each sub-filter keeps state for the whole walk; a `tree:<n>`
    /// one a map of every tree it met).
    #[error(
        "filter-spec too complex: at most {MAX_SUB_FILTERS} sub-filters ({MAX_TREE_FILTERS} of them tree:<n>), nested at most {MAX_COMBINE_DEPTH} deep"
    )]
    TooComplex,
    /// A `%` not followed by two hex digits.
    #[error("invalid %-encoding in sub-filter-spec '{spec}'")]
    BadEncoding {
        /// The sub-filter as given.
        spec: String,
    },
}

/// The most sub-filters one specification may hold, counted through every nesting.
pub const MAX_SUB_FILTERS: usize = 32;
/// The deepest `combine:` may be nested (`combine:combine:…`).
pub const MAX_COMBINE_DEPTH: usize = 4;
/// The most `tree:<n>` filters one specification may hold: each keeps git's map of the
/// depth it met every tree at, so the walk's memory grows with their number.
pub const MAX_TREE_FILTERS: usize = 4;

/// Characters git refuses unencoded in a sub-filter of `combine:`, besides space and controls.
const RESERVED: &str = "~`!@#$^&*()[]{}\\;'\",<>?";

impl FromStr for Filter {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let mut budget = Budget {
            subs: MAX_SUB_FILTERS,
            trees: MAX_TREE_FILTERS,
        };
        parse_bounded(spec, MAX_COMBINE_DEPTH, &mut budget)
    }
}

/// What a specification may still hold while it is parsed.
struct Budget {
    /// Sub-filters of `combine:`.
    subs: usize,
    /// `tree:<n>` filters.
    trees: usize,
}

/// Parse `spec` with `combine:` allowed `depth` more levels deep and `budget` left: the
/// recursion is bounded before it starts, however the client nests.
fn parse_bounded(spec: &str, depth: usize, budget: &mut Budget) -> Result<Filter, Error> {
    if spec == "blob:none" {
        Ok(Filter::BlobNone)
    } else if let Some(v) = spec.strip_prefix("blob:limit=") {
        parse_ulong_with_unit(v)
            .map(Filter::BlobLimit)
            .ok_or_else(|| Error::BlobLimit { spec: shown(spec) })
    } else if let Some(v) = spec.strip_prefix("tree:") {
        budget.trees = budget.trees.checked_sub(1).ok_or(Error::TooComplex)?;
        parse_ulong_with_unit(v)
            .map(Filter::Tree)
            .ok_or(Error::TreeDepth)
    } else if let Some(v) = spec.strip_prefix("object:type=") {
        let t = match v {
            "blob" => ObjectType::Blob,
            "tree" => ObjectType::Tree,
            "commit" => ObjectType::Commit,
            "tag" => ObjectType::Tag,
            _ => return Err(Error::ObjectType { name: shown(v) }),
        };
        Ok(Filter::ObjectType(t))
    } else if let Some(v) = spec.strip_prefix("sparse:oid=") {
        if v.is_empty() {
            return Err(Error::SparseOidEmpty);
        }
        Ok(Filter::SparseOid(v.into()))
    } else if spec.starts_with("sparse:path=") {
        Err(Error::SparsePath)
    } else if let Some(v) = spec.strip_prefix("combine:") {
        if depth == 0 {
            return Err(Error::TooComplex);
        }
        let mut subs = Vec::new();
        for raw in v.split('+') {
            budget.subs = budget.subs.checked_sub(1).ok_or(Error::TooComplex)?;
            if raw.is_empty() {
                return Err(Error::EmptyCombine);
            }
            if let Some(ch) = raw.chars().find(|&c| c <= ' ' || RESERVED.contains(c)) {
                return Err(Error::MustEscape { ch });
            }
            let decoded =
                percent_decode(raw).ok_or_else(|| Error::BadEncoding { spec: shown(raw) })?;
            subs.push(parse_bounded(&decoded, depth - 1, budget)?);
        }
        Ok(Filter::Combine(subs))
    } else {
        Err(Error::Invalid { spec: shown(spec) })
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::BlobNone => f.write_str("blob:none"),
            Filter::BlobLimit(n) => write!(f, "blob:limit={n}"),
            Filter::Tree(d) => write!(f, "tree:{d}"),
            Filter::ObjectType(t) => write!(f, "object:type={}", t.as_str()),
            Filter::SparseOid(v) => write!(f, "sparse:oid={v}"),
            Filter::Combine(subs) => {
                f.write_str("combine:")?;
                for (i, sub) in subs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("+")?;
                    }
                    f.write_str(&percent_encode(&sub.to_string()))?;
                }
                Ok(())
            }
        }
    }
}

/// Parse an unsigned number as git's `git_parse_ulong` does: C's base detection (`0x` hex,
/// leading `0` octal) and an optional `k`, `m` or `g` factor of 1024.
pub(crate) fn parse_ulong_with_unit(s: &str) -> Option<u64> {
    let (digits, factor) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    parse_c_unsigned(digits)?.checked_mul(factor)
}

/// Parse an unsigned integer with C's base detection (`strtoul(s, &end, 0)` consuming all of `s`).
pub(crate) fn parse_c_unsigned(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let c = b as char;
        if b <= b' ' || b >= 0x7f || c == '%' || c == '+' || RESERVED.contains(c) {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Filter, Error> {
        s.parse()
    }

    #[test]
    fn sizes_take_units_and_c_bases() {
        assert_eq!(parse("blob:limit=0"), Ok(Filter::BlobLimit(0)));
        assert_eq!(parse("blob:limit=2m"), Ok(Filter::BlobLimit(2 << 20)));
        assert_eq!(parse("blob:limit=1G"), Ok(Filter::BlobLimit(1 << 30)));
        assert_eq!(parse("blob:limit=0x10"), Ok(Filter::BlobLimit(16)));
        assert_eq!(parse("blob:limit=010"), Ok(Filter::BlobLimit(8)));
        assert_eq!(parse("tree:0"), Ok(Filter::Tree(0)));
        assert!(matches!(parse("blob:limit="), Err(Error::BlobLimit { .. })));
        assert!(matches!(
            parse("blob:limit=-1"),
            Err(Error::BlobLimit { .. })
        ));
        assert!(matches!(
            parse("blob:limit=1t"),
            Err(Error::BlobLimit { .. })
        ));
        assert_eq!(parse("tree:x"), Err(Error::TreeDepth));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            parse("object:type=blobby").unwrap_err().to_string(),
            "'blobby' for 'object:type=<type>' is not a valid object type"
        );
        assert_eq!(parse("sparse:path=x"), Err(Error::SparsePath));
        assert_eq!(
            parse("nope").unwrap_err().to_string(),
            "invalid filter-spec 'nope'"
        );
        assert_eq!(parse("combine:blob:none+"), Err(Error::EmptyCombine));
        assert_eq!(
            parse("combine:sparse:oid=a b"),
            Err(Error::MustEscape { ch: ' ' })
        );
        assert!(matches!(
            parse("combine:%zz"),
            Err(Error::BadEncoding { .. })
        ));
        // What an error quotes of the client's text is escaped and cut: a line break
        // decoded from `%0A` cannot start a log line of its own.
        assert_eq!(
            parse("combine:x%0AINFO%20forged").unwrap_err().to_string(),
            "invalid filter-spec 'x\\nINFO forged'"
        );
        assert_eq!(
            parse("combine:a\nb").unwrap_err().to_string(),
            "must escape char in sub-filter-spec: '\\n'"
        );
        let long = format!("object:type={}", "x".repeat(10_000));
        assert!(parse(&long).unwrap_err().to_string().len() < 600);
    }

    /// Issue 12: thousands of sub-filters (each keeps its own state over the walk) or a deep
    /// nesting (recursion) are refused before anything is walked.
    #[test]
    fn combine_is_bounded_in_count_and_depth() {
        let many = format!("combine:{}", vec!["blob:none"; 6000].join("+"));
        assert_eq!(parse(&many), Err(Error::TooComplex));
        let most = format!("combine:{}", vec!["blob:none"; MAX_SUB_FILTERS].join("+"));
        assert!(parse(&most).is_ok());
        let mut nested = Filter::BlobNone;
        for _ in 0..MAX_COMBINE_DEPTH {
            nested = Filter::Combine(vec![nested]);
        }
        assert_eq!(parse(&nested.to_string()), Ok(nested.clone()));
        let deeper = Filter::Combine(vec![nested]);
        assert_eq!(parse(&deeper.to_string()), Err(Error::TooComplex));
        // Unencoded nesting, thousands deep: refused without deep recursion.
        assert_eq!(parse(&"combine:".repeat(8000)), Err(Error::TooComplex));
        // `tree:<n>` filters each keep a map of the trees: a few only.
        let trees = |n: usize| {
            let subs: Vec<String> = (0..n).map(|i| format!("tree:{i}")).collect();
            parse(&format!("combine:{}", subs.join("+")))
        };
        assert!(trees(MAX_TREE_FILTERS).is_ok());
        assert_eq!(trees(MAX_TREE_FILTERS + 1), Err(Error::TooComplex));
        assert!(Error::TooComplex.to_string().contains("too complex"));
    }

    #[test]
    fn combine_decodes_sub_filters() {
        assert_eq!(
            parse("combine:sparse:oid=main%3aspec+blob:limit=1k"),
            Ok(Filter::Combine(vec![
                Filter::SparseOid("main:spec".into()),
                Filter::BlobLimit(1024)
            ]))
        );
        let nested = Filter::Combine(vec![
            Filter::SparseOid("HEAD:a+b c".into()),
            Filter::Combine(vec![Filter::BlobNone, Filter::Tree(1)]),
        ]);
        assert_eq!(parse(&nested.to_string()), Ok(nested));
    }
}
