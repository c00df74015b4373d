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
    let mut reader = ResponseReader::new(kind, most);
    reader.feed(body)?;
    reader.finish()
}

/// An `ls-refs` response read as it arrives, in pieces of any size: only the line under
/// way is held besides the refs read, so a listing never needs to be in memory whole.
///
/// ```
/// use gitcache_protocol::ls_refs::ResponseReader;
/// let id = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
/// let line = format!("{id} refs/heads/main\n");
/// let body = format!("{:04x}{line}0000", line.len() + 4);
/// let mut reader = ResponseReader::new(gix_hash::Kind::Sha1, 10);
/// for piece in body.as_bytes().chunks(7) {
///     reader.feed(piece)?;
/// }
/// let refs = reader.finish()?;
/// assert_eq!(refs[0].name, "refs/heads/main");
/// # Ok::<(), gitcache_protocol::ls_refs::Error>(())
/// ```
#[derive(Debug)]
pub struct ResponseReader {
    kind: Kind,
    most: usize,
    refs: Vec<RefLine>,
    /// The start of a line not yet whole.
    pending: Vec<u8>,
    /// The flush was read: what follows is not looked at.
    done: bool,
    /// A piece failed to read: the response is not read further.
    failed: bool,
}

impl ResponseReader {
    /// A reader of a response whose ids are of `kind`, listing at most `most` refs.
    pub fn new(kind: Kind, most: usize) -> Self {
        ResponseReader {
            kind,
            most,
            refs: Vec::new(),
            pending: Vec::new(),
            done: false,
            failed: false,
        }
    }

    /// Read the next bytes of the response. After an error, every piece is refused.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.failed {
            return Err(malformed(b"<after an earlier error>"));
        }
        let fed = self.feed_on(data);
        self.failed = fed.is_err();
        fed
    }

    fn feed_on(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        if self.pending.is_empty() {
            let used = self.lines(data)?;
            self.pending.extend_from_slice(&data[used..]);
            return Ok(());
        }
        // The line under way first, from as many bytes as it needs, then the rest as it is.
        let mut data = data;
        while !self.pending.is_empty() && !data.is_empty() {
            let needed = match pktline::decode(&self.pending)? {
                pktline::Decoded::Incomplete { needed } => needed,
                pktline::Decoded::Complete { .. } => 0,
            };
            let (take, rest) = data.split_at(needed.min(data.len()));
            self.pending.extend_from_slice(take);
            data = rest;
            let pending = std::mem::take(&mut self.pending);
            let used = self.lines(&pending)?;
            self.pending = pending;
            self.pending.drain(..used);
            if self.done {
                return Ok(());
            }
        }
        if !data.is_empty() {
            let used = self.lines(data)?;
            self.pending.extend_from_slice(&data[used..]);
        }
        Ok(())
    }

    /// The refs read, once the response ended: [`Error::Truncated`] if it did so before its
    /// flush.
    pub fn finish(self) -> Result<Vec<RefLine>, Error> {
        match (self.done, self.failed) {
            (true, false) => Ok(self.refs),
            (_, true) => Err(malformed(b"<after an earlier error>")),
            (false, false) => Err(Error::Truncated),
        }
    }

    /// Read the whole lines at the start of `buf`; how many bytes they took.
    fn lines(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let mut used = 0;
        while !self.done {
            let (line, consumed) = match pktline::decode(&buf[used..])? {
                pktline::Decoded::Complete { line, consumed } => (line, consumed),
                pktline::Decoded::Incomplete { .. } => break,
            };
            used += consumed;
            let data = match line {
                Line::Flush => {
                    self.done = true;
                    break;
                }
                Line::Data(data) => pktline::chomp(data),
                Line::Delimiter | Line::ResponseEnd => {
                    return Err(malformed(b"<special packet>"));
                }
            };
            if let Some(message) = pktline::as_error(data) {
                return Err(Error::Remote {
                    message: pktline::shown(message),
                });
            }
            if self.refs.len() == self.most {
                return Err(Error::TooMany { most: self.most });
            }
            self.refs.push(parse_line(data, self.kind)?);
        }
        Ok(used)
    }
}

/// One ref line of a response (without its newline).
pub(crate) fn parse_line(data: &[u8], kind: Kind) -> Result<RefLine, Error> {
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
        line: pktline::shown(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a piece fails, the reader takes nothing more and gives no refs, whatever comes.
    #[test]
    fn a_reader_stops_at_its_first_error() {
        let id = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
        let good = format!("{id} refs/heads/main\n");
        let good = format!("{:04x}{good}", good.len() + 4);
        let mut reader = ResponseReader::new(Kind::Sha1, 10);
        reader.feed(good.as_bytes()).unwrap();
        assert!(reader.feed(b"0009oops!").is_err());
        assert!(reader.feed(format!("{good}0000").as_bytes()).is_err());
        assert!(reader.finish().is_err());
        // A line cut inside its length, then whole: read as one.
        let mut reader = ResponseReader::new(Kind::Sha1, 10);
        let all = format!("{good}{good}0000");
        for piece in [&all[..2], &all[2..good.len() + 3], &all[good.len() + 3..]] {
            reader.feed(piece.as_bytes()).unwrap();
        }
        assert_eq!(reader.finish().unwrap().len(), 2);
    }
}
