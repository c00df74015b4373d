//! The `ls-refs` response: writing it, and reading one that an upstream sent.
//!
//! ```text
//! <oid> <refname>[ symref-target:<target>][ peeled:<oid>]
//! unborn <refname>[ symref-target:<target>]
//! 0000
//! ```

use std::io::Write;

use bstr::{BStr, BString, ByteSlice};
use gix_hash::{Kind, ObjectId};

use crate::pktline::{self, Line};
use crate::request::LsRefs;

/// One line of an `ls-refs` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefLine {
    /// The object the ref points to; `None` for an unborn ref (only `HEAD` can be).
    pub oid: Option<ObjectId>,
    /// The ref's full name.
    pub name: BString,
    /// Where a symbolic ref points, when `symrefs` was asked for.
    pub symref_target: Option<BString>,
    /// What an annotated tag peels to, when `peel` was asked for.
    pub peeled: Option<ObjectId>,
}

impl RefLine {
    /// A plain ref.
    pub fn new(oid: ObjectId, name: impl Into<BString>) -> Self {
        RefLine {
            oid: Some(oid),
            name: name.into(),
            symref_target: None,
            peeled: None,
        }
    }
}

/// Whether `name` passes the `ref-prefix` arguments (literal prefixes; none means all).
pub fn matches_prefixes(args: &LsRefs, name: &BStr) -> bool {
    args.ref_prefixes.is_empty() || args.ref_prefixes.iter().any(|p| name.starts_with(p))
}

/// Write one line, keeping only what `args` asked for.
pub fn write_ref(
    out: &mut impl Write,
    line: &RefLine,
    args: &LsRefs,
) -> Result<(), pktline::Error> {
    let mut text = Vec::with_capacity(128);
    match line.oid {
        Some(oid) => write!(text, "{oid} ")?,
        None => text.extend_from_slice(b"unborn "),
    }
    text.extend_from_slice(&line.name);
    if let (true, Some(target)) = (args.symrefs, &line.symref_target) {
        text.extend_from_slice(b" symref-target:");
        text.extend_from_slice(target);
    }
    if let (true, Some(peeled)) = (args.peel, line.peeled) {
        write!(text, " peeled:{peeled}")?;
    }
    pktline::write_text(out, &text)?;
    Ok(())
}

/// Write a whole response: the lines that pass `args` (unborn ones only if asked), then a flush.
pub fn write_response<'a>(
    out: &mut impl Write,
    lines: impl IntoIterator<Item = &'a RefLine>,
    args: &LsRefs,
) -> Result<(), pktline::Error> {
    for line in lines {
        if (line.oid.is_some() || args.unborn) && matches_prefixes(args, line.name.as_bstr()) {
            write_ref(out, line, args)?;
        }
    }
    pktline::write_flush(out)?;
    Ok(())
}

/// Why an `ls-refs` response could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Broken framing.
    #[error(transparent)]
    PktLine(#[from] pktline::Error),
    /// The server answered with an `ERR` line.
    #[error("remote error: {message}")]
    Remote {
        /// The message.
        message: String,
    },
    /// A line that is no ref line.
    #[error("malformed ls-refs line '{line}'")]
    Malformed {
        /// The line.
        line: String,
    },
    /// The response ended before its flush.
    #[error("ls-refs response ended before its flush")]
    Truncated,
    /// The response lists more refs than the reader takes.
    #[error("ls-refs response lists more than {most} refs")]
    TooMany {
        /// The most refs taken.
        most: usize,
    },
}

/// Read a complete `ls-refs` response whose object ids are of `kind`.
pub fn parse_response(body: &[u8], kind: Kind) -> Result<Vec<RefLine>, Error> {
    parse_response_within(body, kind, usize::MAX)
}

/// [`parse_response`] of a response listing at most `most` refs; more is
/// [`Error::TooMany`]. A ref line takes some 150 bytes once read, where it may take 46 in the
/// response: a listing of minimal lines grows threefold in memory.
pub fn parse_response_within(body: &[u8], kind: Kind, most: usize) -> Result<Vec<RefLine>, Error> {
    let mut refs = Vec::new();
    for line in pktline::lines(body) {
        let data = match line? {
            Line::Flush => return Ok(refs),
            Line::Data(data) => pktline::chomp(data),
            Line::Delimiter | Line::ResponseEnd => return Err(malformed(b"<special packet>")),
        };
        if let Some(message) = pktline::as_error(data) {
            return Err(Error::Remote {
                message: message.to_str_lossy().into_owned(),
            });
        }
        if refs.len() == most {
            return Err(Error::TooMany { most });
        }
        refs.push(parse_line(data, kind)?);
    }
    Err(Error::Truncated)
}

fn parse_line(data: &[u8], kind: Kind) -> Result<RefLine, Error> {
    let mut fields = data.split_str(" ");
    let first = fields.next().ok_or_else(|| malformed(data))?;
    let oid = if first == b"unborn" {
        None
    } else {
        Some(parse_oid(first, kind).ok_or_else(|| malformed(data))?)
    };
    let name = fields
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| malformed(data))?;
    let mut line = RefLine {
        oid,
        name: name.into(),
        symref_target: None,
        peeled: None,
    };
    for field in fields {
        if let Some(target) = field.strip_prefix(b"symref-target:") {
            line.symref_target = Some(target.into());
        } else if let Some(hex) = field.strip_prefix(b"peeled:") {
            line.peeled = Some(parse_oid(hex, kind).ok_or_else(|| malformed(data))?);
        } else {
            return Err(malformed(data));
        }
    }
    Ok(line)
}

fn parse_oid(hex: &[u8], kind: Kind) -> Option<ObjectId> {
    (hex.len() == kind.len_in_hex())
        .then(|| ObjectId::from_hex(hex).ok())
        .flatten()
}

fn malformed(data: &[u8]) -> Error {
    Error::Malformed {
        line: data.to_str_lossy().into_owned(),
    }
}
