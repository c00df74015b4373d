//! pkt-line framing: decoding from byte buffers and encoding into any [`Write`].
//!
//! A pkt-line is a four-digit hexadecimal length (which counts itself) followed by the payload.
//! `0000` is a flush, `0001` a delimiter and `0002` a response end; lengths 3 and below are
//! otherwise invalid, and a line is at most [`MAX_LINE_LEN`] bytes long.

use std::io::Write;

pub use gix_packetline::{Channel, PacketLineRef as Line};

/// The largest pkt-line, its four length bytes included.
pub const MAX_LINE_LEN: usize = 65520;
/// The largest payload of one pkt-line.
pub const MAX_DATA_LEN: usize = MAX_LINE_LEN - 4;
/// The largest payload of one side-band packet, after its band byte.
pub const MAX_SIDEBAND_DATA: usize = MAX_DATA_LEN - 1;

/// What went wrong while reading or writing pkt-lines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The four length bytes are not hexadecimal.
    #[error("bad pkt-line length prefix {prefix:?}")]
    BadLengthPrefix {
        /// The four bytes as received, lossily shown.
        prefix: String,
    },
    /// The length is 3, which no pkt-line can have.
    #[error("invalid pkt-line length {len}")]
    InvalidLength {
        /// The decoded length.
        len: usize,
    },
    /// The length is larger than [`MAX_LINE_LEN`].
    #[error("pkt-line of {len} bytes exceeds the limit of {MAX_LINE_LEN} bytes")]
    LineTooLong {
        /// The decoded length.
        len: usize,
    },
    /// The input ended inside a pkt-line.
    #[error("stream ended inside a pkt-line: {needed} more bytes were expected")]
    Truncated {
        /// How many more bytes the line needed.
        needed: usize,
    },
    /// A payload to encode does not fit into one pkt-line.
    #[error("payload of {len} bytes does not fit into one pkt-line (at most {MAX_DATA_LEN} bytes)")]
    PayloadTooLong {
        /// The payload's length.
        len: usize,
    },
    /// An empty data line was to be written; git reads it as a flush.
    #[error("an empty data pkt-line cannot be written")]
    EmptyPayload,
    /// The underlying writer failed.
    #[error("writing pkt-lines failed")]
    Io(#[from] std::io::Error),
}

/// The result of decoding the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// One whole line, which took `consumed` bytes of the buffer.
    Complete {
        /// The line.
        line: Line<'a>,
        /// How many bytes of the buffer it occupied.
        consumed: usize,
    },
    /// The buffer holds only part of a line.
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
}

/// Decode the pkt-line at the start of `buf`.
///
/// An empty data line (`0004`) is returned as `Line::Data(&[])`, as git reads it; it is up to
/// the caller whether that is acceptable.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, Error> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(Decoded::Incomplete {
            needed: 4 - buf.len(),
        });
    };
    let len = parse_len(prefix)?;
    let line = match len {
        0 => Line::Flush,
        1 => Line::Delimiter,
        2 => Line::ResponseEnd,
        3 => return Err(Error::InvalidLength { len }),
        len if len > MAX_LINE_LEN => return Err(Error::LineTooLong { len }),
        len => match buf.get(4..len) {
            Some(data) => {
                return Ok(Decoded::Complete {
                    line: Line::Data(data),
                    consumed: len,
                });
            }
            None => {
                return Ok(Decoded::Incomplete {
                    needed: len - buf.len(),
                });
            }
        },
    };
    Ok(Decoded::Complete { line, consumed: 4 })
}

fn parse_len(prefix: &[u8]) -> Result<usize, Error> {
    let mut len = 0usize;
    for &b in prefix {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => {
                return Err(Error::BadLengthPrefix {
                    prefix: String::from_utf8_lossy(prefix).into_owned(),
                });
            }
        };
        len = len * 16 + usize::from(digit);
    }
    Ok(len)
}

/// Iterate over the pkt-lines of a buffer that holds a whole stream.
///
/// Ends with [`Error::Truncated`] if the buffer stops inside a line.
pub fn lines(buf: &[u8]) -> Lines<'_> {
    Lines { buf, failed: false }
}

/// An iterator over the pkt-lines of a complete buffer; see [`lines()`].
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Lines<'a> {
    /// The bytes not yet read.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Line<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let result = match decode(self.buf) {
            Ok(Decoded::Complete { line, consumed }) => {
                self.buf = &self.buf[consumed..];
                Ok(line)
            }
            Ok(Decoded::Incomplete { needed }) => Err(Error::Truncated { needed }),
            Err(err) => Err(err),
        };
        self.failed = result.is_err();
        Some(result)
    }
}

/// The part of `buf` made of whole pkt-lines, up to the first line cut short or unreadable:
/// what can be read of a stream of which only a first part was taken.
pub fn whole_lines(buf: &[u8]) -> &[u8] {
    let mut end = 0;
    while let Ok(Decoded::Complete { consumed, .. }) = decode(&buf[end..]) {
        end += consumed;
    }
    &buf[..end]
}

/// The most bytes of a line shown in an error or a log (see [`shown`]).
pub const SHOWN_MOST: usize = 512;

/// `data` as text to show in an error or a log: at most [`SHOWN_MOST`] bytes of it, `…`
/// marking a cut, control characters escaped (`\n`, `\u{1b}`: a peer's text cannot start a
/// log line of its own or drive a terminal). A peer's line may be 64 KiB; errors carry it
/// into logs and answers.
pub fn shown(data: &[u8]) -> String {
    use bstr::ByteSlice as _;
    let part = &data[..data.len().min(SHOWN_MOST)];
    let mut text = String::with_capacity(part.len());
    for c in part.to_str_lossy().chars() {
        // Bidirectional marks, overrides and isolates reorder what a log shows around them;
        // line and paragraph separators break lines in some viewers; zero-width characters
        // hide.
        let unseen = matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        );
        match c.is_control() || unseen {
            true => text.extend(c.escape_default()),
            false => text.push(c),
        }
    }
    if part.len() < data.len() {
        text.push('…');
    }
    text
}

/// Strip one trailing `\n` from a line's payload, as git does for text lines.
pub fn chomp(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\n").unwrap_or(data)
}

fn check_payload(len: usize) -> Result<(), Error> {
    match len {
        0 => Err(Error::EmptyPayload),
        len if len > MAX_DATA_LEN => Err(Error::PayloadTooLong { len }),
        _ => Ok(()),
    }
}

/// Write `data` as one pkt-line.
pub fn write_data(out: &mut impl Write, data: &[u8]) -> Result<usize, Error> {
    check_payload(data.len())?;
    Ok(gix_packetline::blocking_io::encode::data_to_write(
        data, out,
    )?)
}

/// Write `text` followed by `\n` as one pkt-line.
pub fn write_text(out: &mut impl Write, text: &[u8]) -> Result<usize, Error> {
    check_payload(text.len() + 1)?;
    Ok(gix_packetline::blocking_io::encode::text_to_write(
        text, out,
    )?)
}

/// Write a flush packet, `0000`.
pub fn write_flush(out: &mut impl Write) -> Result<usize, Error> {
    Ok(gix_packetline::blocking_io::encode::flush_to_write(out)?)
}

/// Write a delimiter packet, `0001`.
pub fn write_delim(out: &mut impl Write) -> Result<usize, Error> {
    Ok(gix_packetline::blocking_io::encode::delim_to_write(out)?)
}

/// Write a response-end packet, `0002`.
pub fn write_response_end(out: &mut impl Write) -> Result<usize, Error> {
    Ok(gix_packetline::blocking_io::encode::response_end_to_write(
        out,
    )?)
}

/// Write an `ERR <message>` line, as git does: no trailing newline. A message longer than
/// one line holds is cut to fit (at a character's start, when it is UTF-8), so that the
/// client is told rather than sent nothing.
pub fn write_error(out: &mut impl Write, message: &[u8]) -> Result<usize, Error> {
    let mut end = message.len().min(MAX_DATA_LEN - 4);
    if end < message.len() {
        while end > 0 && (message[end] & 0xc0) == 0x80 {
            end -= 1;
        }
    }
    let message = &message[..end];
    check_payload(message.len() + 4)?;
    Ok(gix_packetline::blocking_io::encode::error_to_write(
        message, out,
    )?)
}

/// Write `data` as one side-band packet on `channel`.
pub fn write_band(out: &mut impl Write, channel: Channel, data: &[u8]) -> Result<usize, Error> {
    if data.len() > MAX_SIDEBAND_DATA {
        return Err(Error::PayloadTooLong {
            len: data.len() + 1,
        });
    }
    Ok(gix_packetline::blocking_io::encode::band_to_write(
        channel, data, out,
    )?)
}

/// If a data line is an `ERR` line, its message.
pub fn as_error(data: &[u8]) -> Option<&[u8]> {
    data.strip_prefix(b"ERR ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_stop_at_the_first_cut() {
        assert_eq!(whole_lines(b"0009hello0000000ahel"), b"0009hello0000");
        assert_eq!(whole_lines(b"00"), b"");
        assert_eq!(whole_lines(b"0009hellozzzz"), b"0009hello");
    }

    #[test]
    fn lines_are_shown_cut() {
        assert_eq!(shown(b"short \xff"), "short \u{fffd}");
        assert_eq!(shown(b"a\nb\x1b[2J\r"), "a\\nb\\u{1b}[2J\\r");
        assert_eq!(shown("x\u{202e}y".as_bytes()), "x\\u{202e}y");
        assert_eq!(shown("x\u{200f}y".as_bytes()), "x\\u{200f}y");
        assert_eq!(shown("x\u{2028}y".as_bytes()), "x\\u{2028}y");
        let long = vec![b'x'; 65_000];
        let text = shown(&long);
        assert_eq!(text.len(), SHOWN_MOST + '…'.len_utf8());
        assert!(text.ends_with('…'));
        assert_eq!(shown(&long[..SHOWN_MOST]).len(), SHOWN_MOST);
    }

    #[test]
    fn special_lines_and_data() {
        let buf = b"0000000100020009hello0004";
        let got: Vec<_> = lines(buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                Line::Flush,
                Line::Delimiter,
                Line::ResponseEnd,
                Line::Data(b"hello"),
                Line::Data(b""),
            ]
        );
    }

    #[test]
    fn incomplete_reports_what_is_missing() {
        assert_eq!(decode(b"00").unwrap(), Decoded::Incomplete { needed: 2 });
        assert_eq!(
            decode(b"000ahel").unwrap(),
            Decoded::Incomplete { needed: 3 }
        );
        assert!(matches!(
            lines(b"000ahel").next(),
            Some(Err(Error::Truncated { needed: 3 }))
        ));
    }

    #[test]
    fn bad_prefixes_are_typed_errors() {
        assert!(matches!(
            decode(b"00zz"),
            Err(Error::BadLengthPrefix { .. })
        ));
        assert!(matches!(
            decode(b"0003"),
            Err(Error::InvalidLength { len: 3 })
        ));
        assert!(matches!(
            decode(b"fff1"),
            Err(Error::LineTooLong { len: 65521 })
        ));
        assert!(matches!(
            decode(b"FFF0").unwrap(),
            Decoded::Incomplete { .. }
        ));
    }

    #[test]
    fn writers_respect_the_limits() {
        let mut out = Vec::new();
        write_text(&mut out, b"version 2").unwrap();
        write_error(&mut out, b"boom").unwrap();
        write_band(&mut out, Channel::Progress, b"50%\r").unwrap();
        write_delim(&mut out).unwrap();
        write_flush(&mut out).unwrap();
        assert_eq!(out, b"000eversion 2\n000cERR boom0009\x0250%\r00010000");
        // An error message longer than a line holds is cut to fit, at a character's start.
        let mut long = vec![b'x'; MAX_DATA_LEN - 6];
        long.extend_from_slice("éé".as_bytes());
        let mut line = Vec::new();
        write_error(&mut line, &long).unwrap();
        let message = as_error(&line[4..]).unwrap();
        assert_eq!(message.len(), MAX_DATA_LEN - 6 + 2);
        assert!(message.ends_with("é".as_bytes()));
        assert!(matches!(
            write_data(&mut out, &vec![0; MAX_DATA_LEN + 1]),
            Err(Error::PayloadTooLong { .. })
        ));
        assert!(matches!(
            write_data(&mut out, b""),
            Err(Error::EmptyPayload)
        ));
        assert!(write_data(&mut Vec::new(), &vec![0; MAX_DATA_LEN]).is_ok());
        assert!(write_band(&mut Vec::new(), Channel::Data, &vec![0; MAX_SIDEBAND_DATA]).is_ok());
        assert!(
            write_band(
                &mut Vec::new(),
                Channel::Data,
                &vec![0; MAX_SIDEBAND_DATA + 1]
            )
            .is_err()
        );
    }
}
