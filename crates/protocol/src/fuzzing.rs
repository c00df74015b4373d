//! Entry points shared by the fuzz targets and by the tests that replay their corpora.
//!
//! Each takes arbitrary bytes, must never panic, and checks what must hold for any input.

use crate::pktline::{self, Decoded};
use crate::request::{Limits, RequestParser, Status};

/// Decode pkt-lines until the input ends or breaks; re-encoding a decoded data line must give
/// back its bytes (the length prefix compared without case: git accepts `000E` as `000e`).
pub fn pktline_decode(data: &[u8]) {
    let mut rest = data;
    while let Ok(Decoded::Complete { line, consumed }) = pktline::decode(rest) {
        assert!(consumed <= rest.len());
        if let pktline::Line::Data(payload) = line
            && !payload.is_empty()
        {
            let mut again = Vec::new();
            pktline::write_data(&mut again, payload).expect("a decoded line fits");
            let original = &rest[..consumed];
            assert!(again[..4].eq_ignore_ascii_case(&original[..4]));
            assert_eq!(again[4..], original[4..]);
        }
        rest = &rest[consumed..];
    }
}

/// Parse a request body whole and in two pieces split by the first byte; both must agree, and
/// a request that parses must encode to bytes that parse to the same request.
pub fn request_parse(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_body_bytes: 1 << 20,
        max_wants: 1000,
        max_haves: 1000,
        max_other_lines: 1000,
    };
    let whole = crate::request::parse_request(body, limits);
    let mut parser = RequestParser::new(limits);
    let at = usize::from(split).min(body.len());
    let pieces = parser
        .feed(&body[..at])
        .and_then(|first| match first {
            Status::Incomplete => parser.feed(&body[at..]),
            done => parser.feed(&body[at..]).map(|_| done),
        })
        .and_then(|status| match status {
            Status::Complete(r) => Ok(Some(*r)),
            Status::Empty => Ok(None),
            Status::Incomplete => parser.finish().map(|()| None),
        });
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole and split parses disagree: {a:?} vs {b:?}"),
    }
    if let Ok(Some(request)) = whole {
        let mut encoded = Vec::new();
        request
            .write_to(&mut encoded)
            .expect("a parsed request encodes");
        let again =
            crate::request::parse_request(&encoded, limits).expect("encoded request parses");
        assert_eq!(again.as_ref(), Some(&request));
    }
}

/// Read a fetch response as a stream (in small reads) and whole; when the stream yields a
/// complete pack, the whole-response reader must agree on its bytes and sections.
pub fn pack_stream(data: &[u8]) {
    use std::io::Read;
    let kind = gix_hash::Kind::Sha1;
    let mut stream =
        crate::response::PackStream::new(std::io::BufReader::with_capacity(7, data), kind);
    let mut pack = Vec::new();
    let mut chunk = [0u8; 13];
    let streamed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => pack.extend_from_slice(&chunk[..n]),
            Err(err) => break Err(err),
        }
    };
    if streamed.is_ok() {
        let whole = crate::response::parse_fetch_response(data, kind)
            .expect("what streams completely parses whole");
        assert_eq!(whole.pack.as_deref(), Some(&pack[..]));
        assert_eq!(whole.shallow, stream.head().shallow);
        assert_eq!(whole.wanted_refs, stream.head().wanted_refs);
    }
}

/// Read an upstream's answer to `GET info/refs` (the mirror client and the access gate both
/// do); whatever it says, reading it must not panic, and a v2 advertisement gitcache writes
/// for the format read must read back the same.
pub fn advertisement(data: &[u8]) {
    if let Ok(crate::advertise::Advertised::V2(kind)) = crate::advertise::read_advertised(data) {
        let mut ours = Vec::new();
        crate::advertise::Advertisement::new("fuzz", kind)
            .write_to(&mut ours)
            .expect("writing to memory");
        assert_eq!(
            crate::advertise::read_advertised(&ours).expect("our own advertisement reads"),
            crate::advertise::Advertised::V2(kind)
        );
    }
}

/// Read a bundle list; what reads must write back to bytes that read the same.
pub fn bundle_list(data: &[u8]) {
    if let Ok(list) = crate::bundle_uri::BundleList::parse(data) {
        let mut again = Vec::new();
        list.write_to(&mut again).expect("a list read writes");
        assert_eq!(
            crate::bundle_uri::BundleList::parse(&again).expect("our own list reads"),
            list
        );
    }
}

/// The refs of a whole `ls-refs` answer, read line by line from the buffer: the reference
/// [`crate::ls_refs::ResponseReader`] is checked against. `None` where it is no answer.
fn ls_refs_whole(data: &[u8], kind: gix_hash::Kind) -> Option<Vec<crate::ls_refs::RefLine>> {
    use crate::pktline::Line;
    let mut refs = Vec::new();
    for line in crate::pktline::lines(data) {
        match line.ok()? {
            Line::Flush => return Some(refs),
            Line::Data(data) => {
                let data = crate::pktline::chomp(data);
                if crate::pktline::as_error(data).is_some() {
                    return None;
                }
                refs.push(crate::ls_refs::parse_line(data, kind).ok()?);
            }
            Line::Delimiter | Line::ResponseEnd => return None,
        }
    }
    None
}

/// Read an upstream's `ls-refs` answer in both object formats; what reads must write back
/// (with symrefs and peeled values asked for) to bytes that read the same.
pub fn ls_refs_response(data: &[u8]) {
    for kind in [gix_hash::Kind::Sha1, gix_hash::Kind::Sha256] {
        let whole = crate::ls_refs::parse_response(data, kind);
        // As a plain reading of the whole buffer, line by line, makes it.
        assert_eq!(
            whole.as_ref().ok(),
            ls_refs_whole(data, kind).as_ref(),
            "as read whole"
        );
        // Read as it arrives, in pieces of a size the input picks: the same outcome.
        let piece = usize::from(data.first().copied().unwrap_or(0) % 19) + 1;
        let mut reader = crate::ls_refs::ResponseReader::new(kind, usize::MAX);
        let pieces = data
            .chunks(piece)
            .try_for_each(|p| reader.feed(p))
            .and_then(|()| reader.finish());
        assert_eq!(
            pieces.as_ref().ok(),
            whole.as_ref().ok(),
            "in pieces of {piece}"
        );
        let Ok(refs) = whole else {
            continue;
        };
        let args = crate::request::LsRefs {
            symrefs: true,
            peel: true,
            unborn: true,
            ref_prefixes: Vec::new(),
        };
        let mut again = Vec::new();
        if crate::ls_refs::write_response(&mut again, &refs, &args).is_err() {
            // A line too long to write again (a name near the pkt-line limit): not ours.
            continue;
        }
        let reread = crate::ls_refs::parse_response(&again, kind).expect("what we write reads");
        assert_eq!(reread, refs);
    }
}
