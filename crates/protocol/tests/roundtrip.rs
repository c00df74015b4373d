//! Property tests: whatever we encode parses back to the same values, however it is split.

use bstr::BString;
use gitcache_protocol::filter::{Filter, ObjectType};
use gitcache_protocol::ls_refs::{self, RefLine};
use gitcache_protocol::pktline::{self, Decoded, Line, MAX_SIDEBAND_DATA};
use gitcache_protocol::request::{
    Capabilities, Command, Fetch, Limits, LsRefs, ObjectInfo, Request, RequestParser, Status,
    parse_request,
};
use gitcache_protocol::response::{ResponseWriter, parse_fetch_response};
use gitcache_protocol::sideband::{SidebandWriter, split_band};
use gitcache_protocol::{ObjectFormat, ObjectId};
use proptest::collection::vec;
use proptest::prelude::*;
use std::io::Write;

fn format() -> impl Strategy<Value = ObjectFormat> {
    prop_oneof![Just(ObjectFormat::Sha1), Just(ObjectFormat::Sha256)]
}

fn oid(kind: ObjectFormat) -> impl Strategy<Value = ObjectId> {
    vec(any::<u8>(), kind.len_in_bytes()).prop_map(|bytes| ObjectId::from_bytes_or_panic(&bytes))
}

/// Names and values as git allows them in lines: no newline, no NUL.
fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._/+-]{1,30}"
}

fn refname() -> impl Strategy<Value = BString> {
    "refs/(heads|tags|pull)/[a-z0-9._/-]{1,40}".prop_map(BString::from)
}

fn filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        Just(Filter::BlobNone),
        any::<u32>().prop_map(|n| Filter::BlobLimit(u64::from(n))),
        (0u64..100).prop_map(Filter::Tree),
        prop_oneof![
            Just(ObjectType::Blob),
            Just(ObjectType::Tree),
            Just(ObjectType::Commit),
            Just(ObjectType::Tag)
        ]
        .prop_map(Filter::ObjectType),
        "[ -~]{1,20}".prop_map(Filter::SparseOid),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| vec(inner, 1..4).prop_map(Filter::Combine))
}

/// The `tree:<n>` filters in `f`, nested ones included (the generated ones stay within the
/// other bounds: at most eight sub-filters, nested two deep).
fn tree_filters(f: &Filter) -> usize {
    match f {
        Filter::Tree(_) => 1,
        Filter::Combine(subs) => subs.iter().map(tree_filters).sum(),
        _ => 0,
    }
}

fn fetch(kind: ObjectFormat) -> impl Strategy<Value = Fetch> {
    (
        (
            vec(oid(kind), 0..20),
            vec(refname(), 0..3),
            vec(oid(kind), 0..40),
            vec(oid(kind), 0..3),
        ),
        vec(any::<bool>(), 9),
        (
            proptest::option::of(1u32..=i32::MAX as u32),
            proptest::option::of(1u64..u64::MAX),
        ),
        vec(refname(), 0..2),
        proptest::option::of(filter()),
        vec("[a-z]{1,8}", 0..3),
    )
        .prop_map(
            |((wants, want_refs, haves, shallows), flags, (deepen, since), not, filter, uris)| {
                // git refuses deepen together with deepen-since or deepen-not.
                let (deepen_since, deepen_not) = if deepen.is_some() {
                    (None, Vec::new())
                } else {
                    (since, not)
                };
                Fetch {
                    wants,
                    want_refs,
                    haves,
                    done: flags[0],
                    thin_pack: flags[1],
                    no_progress: flags[2],
                    include_tag: flags[3],
                    ofs_delta: flags[4],
                    shallows,
                    deepen,
                    deepen_relative: flags[5],
                    deepen_since,
                    deepen_not,
                    filter,
                    sideband_all: flags[6],
                    wait_for_done: flags[7],
                    packfile_uris: uris,
                }
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    format().prop_flat_map(|kind| {
        let command = prop_oneof![
            fetch(kind).prop_map(Command::Fetch),
            (any::<[bool; 3]>(), vec(refname(), 0..5)).prop_map(|(f, prefixes)| Command::LsRefs(
                LsRefs {
                    symrefs: f[0],
                    peel: f[1],
                    unborn: f[2],
                    ref_prefixes: prefixes,
                }
            )),
            (any::<bool>(), vec(oid(kind), 0..5))
                .prop_map(|(size, oids)| Command::ObjectInfo(ObjectInfo { size, oids })),
        ];
        let caps = (
            proptest::option::of(word()),
            any::<bool>(),
            vec(word(), 0..3),
            proptest::option::of(word()),
        )
            .prop_map(
                move |(agent, explicit, server_options, session_id)| Capabilities {
                    agent,
                    // SHA-1 may be implied; SHA-256 must be said.
                    object_format: (explicit || kind == ObjectFormat::Sha256).then_some(kind),
                    server_options,
                    session_id,
                },
            );
        (caps, command).prop_map(|(capabilities, command)| Request {
            capabilities,
            command,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pktlines_round_trip(lines in vec(prop_oneof![
        vec(any::<u8>(), 1..300).prop_map(Some),
        Just(None),
    ], 0..40), split in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        for line in &lines {
            match line {
                Some(data) => { pktline::write_data(&mut bytes, data).unwrap(); }
                None => { pktline::write_delim(&mut bytes).unwrap(); }
            }
        }
        let decoded: Vec<Option<Vec<u8>>> = pktline::lines(&bytes)
            .map(|l| match l.unwrap() { Line::Data(d) => Some(d.to_vec()), Line::Delimiter => None, other => panic!("{other:?}") })
            .collect();
        prop_assert_eq!(&decoded, &lines);
        // A prefix of the stream decodes as complete lines followed by one incomplete line.
        let cut = split.index(bytes.len() + 1);
        let mut rest = &bytes[..cut];
        while let Ok(Decoded::Complete { consumed, .. }) = pktline::decode(rest) {
            rest = &rest[consumed..];
        }
        let incomplete = matches!(pktline::decode(rest), Ok(Decoded::Incomplete { .. }));
        prop_assert!(rest.is_empty() || incomplete, "left {} undecodable bytes", rest.len());
    }

    #[test]
    fn filters_round_trip(f in filter()) {
        let text = f.to_string();
        // More `tree:<n>` than a specification may hold is refused, whatever else it says.
        if tree_filters(&f) > gitcache_protocol::filter::MAX_TREE_FILTERS {
            prop_assert_eq!(text.parse::<Filter>(), Err(gitcache_protocol::filter::Error::TooComplex));
        } else {
            prop_assert_eq!(text.parse::<Filter>().unwrap(), f);
        }
    }

    #[test]
    fn requests_round_trip_in_any_pieces(req in request(), pieces in vec(1usize..200, 1..10)) {
        let mut body = Vec::new();
        req.write_to(&mut body).unwrap();
        prop_assert_eq!(parse_request(&body, Limits::default()).unwrap(), Some(req.clone()));
        let mut parser = RequestParser::new(Limits::default());
        let mut rest = &body[..];
        let mut got = None;
        for size in pieces.iter().cycle() {
            if rest.is_empty() { break; }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            if let Status::Complete(r) = parser.feed(chunk).unwrap() { got = Some(*r); }
        }
        prop_assert_eq!(got, Some(req));
    }

    #[test]
    fn ls_refs_round_trip(kind in format(), seed in vec((refname(), any::<bool>(), any::<bool>()), 0..20), oids in vec(any::<[u8; 32]>(), 40)) {
        let mk = |i: usize| ObjectId::from_bytes_or_panic(&oids[i % 40][..kind.len_in_bytes()]);
        let lines: Vec<RefLine> = seed.iter().enumerate().map(|(i, (name, sym, peeled))| RefLine {
            oid: Some(mk(i)),
            name: name.clone(),
            symref_target: sym.then(|| BString::from("refs/heads/main")),
            peeled: peeled.then(|| mk(i + 1)),
        }).collect();
        let args = LsRefs { symrefs: true, peel: true, unborn: true, ref_prefixes: Vec::new() };
        let mut bytes = Vec::new();
        ls_refs::write_response(&mut bytes, &lines, &args).unwrap();
        prop_assert_eq!(ls_refs::parse_response(&bytes, kind).unwrap(), lines);
    }

    #[test]
    fn fetch_responses_round_trip(
        kind in format(),
        ids in vec(any::<[u8; 32]>(), 1..12),
        sideband_all in any::<bool>(),
        negotiate in any::<bool>(),
        pack in vec(any::<u8>(), 0..200_000),
        progress in "[ -~]{0,40}",
    ) {
        let oids: Vec<ObjectId> = ids.iter().map(|b| ObjectId::from_bytes_or_panic(&b[..kind.len_in_bytes()])).collect();
        let half = oids.len() / 2;
        let wanted: Vec<(ObjectId, BString)> = oids[..half].iter().map(|o| (*o, BString::from(format!("refs/heads/b{o}")))).collect();
        let mut w = ResponseWriter::new(Vec::new(), sideband_all);
        if negotiate {
            w.acknowledgments(&oids[half..], true).unwrap();
        }
        w.wanted_refs(&wanted).unwrap();
        w.shallow_info(&oids[..half], &oids[half..]).unwrap();
        let mut sb = w.packfile().unwrap();
        if !progress.is_empty() {
            sb.progress(progress.as_bytes()).unwrap();
        }
        sb.write_all(&pack).unwrap();
        let bytes = sb.finish().unwrap();
        let parsed = parse_fetch_response(&bytes, kind).unwrap();
        prop_assert_eq!(parsed.has_acknowledgments, negotiate);
        if negotiate {
            prop_assert_eq!(&parsed.acks, &oids[half..].to_vec());
            prop_assert!(parsed.ready);
            prop_assert_eq!(parsed.nak, oids[half..].is_empty());
        }
        prop_assert_eq!(parsed.wanted_refs, wanted);
        prop_assert_eq!(&parsed.shallow, &oids[..half].to_vec());
        prop_assert_eq!(&parsed.unshallow, &oids[half..].to_vec());
        prop_assert_eq!(parsed.pack.unwrap(), pack);
        prop_assert_eq!(parsed.progress, progress.into_bytes());
    }

    #[test]
    fn sideband_keeps_data_whole_and_packets_in_bounds(writes in vec(vec(any::<u8>(), 0..70_000), 0..6)) {
        let mut sb = SidebandWriter::new(Vec::new());
        let mut expected = Vec::new();
        for w in &writes {
            sb.write_all(w).unwrap();
            expected.extend_from_slice(w);
        }
        let bytes = sb.finish().unwrap();
        let mut got = Vec::new();
        let mut lines = pktline::lines(&bytes).peekable();
        while let Some(line) = lines.next() {
            match line.unwrap() {
                Line::Data(d) => {
                    let (channel, data) = split_band(d).unwrap();
                    prop_assert_eq!(channel as u8, 1);
                    prop_assert!(data.len() <= MAX_SIDEBAND_DATA && !data.is_empty());
                    got.extend_from_slice(data);
                }
                Line::Flush => prop_assert!(lines.peek().is_none()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn writing_sections_out_of_order_is_refused() {
    let mut w = ResponseWriter::new(Vec::new(), false);
    w.shallow_info(&[], &[]).unwrap();
    let err = w.wanted_refs(&[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "section 'wanted-refs' cannot follow 'shallow-info'"
    );
    let mut w = ResponseWriter::new(Vec::new(), false);
    w.acknowledgments(&[], false).unwrap();
    assert!(w.is_finished());
    assert_eq!(w.into_inner(), b"0014acknowledgments\n0008NAK\n0000");
}

#[test]
fn pack_stream_reports_errors_as_typed_errors() {
    use gitcache_protocol::response::{Error, PackStream};
    use std::io::Read;
    let mut w = ResponseWriter::new(Vec::new(), false);
    w.shallow_info(&[], &[]).unwrap();
    let mut band = w.packfile().unwrap();
    band.write_all(b"PACK-bytes").unwrap();
    band.error(b"pack-objects died").unwrap();
    let body = band.finish().unwrap();
    let mut stream = PackStream::new(&body[..], ObjectFormat::Sha1);
    let err = stream.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("pack-objects died"), "{err}");

    let mut err_line = Vec::new();
    pktline::write_error(&mut err_line, b"upload-pack: not our ref 1234").unwrap();
    let mut stream = PackStream::new(&err_line[..], ObjectFormat::Sha1);
    assert!(
        matches!(stream.read_sections(), Err(Error::Remote { message }) if message.contains("not our ref"))
    );

    // Cut inside the pack: an error, never a short pack taken for whole.
    let w = ResponseWriter::new(Vec::new(), false);
    let mut band = w.packfile().unwrap();
    band.write_all(&[7u8; 100_000]).unwrap();
    let body = band.finish().unwrap();
    let mut stream = PackStream::new(&body[..body.len() - 30_000], ObjectFormat::Sha1);
    assert!(stream.read_to_end(&mut Vec::new()).is_err());
}

/// Endless lines before the pack (here `packfile-uris`, which nobody asked for, each a pair
/// of strings kept) are cut off at a bound, not kept: the reader stops well before the
/// server does.
#[test]
fn pack_stream_bounds_what_it_keeps_of_the_sections() {
    use gitcache_protocol::response::{Error, MAX_SECTION_BYTES, PackStream};
    struct Endless {
        served: usize,
        header: Vec<u8>,
    }
    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.served < self.header.len() {
                let n = buf.len().min(self.header.len() - self.served);
                buf[..n].copy_from_slice(&self.header[self.served..self.served + n]);
                self.served += n;
                return Ok(n);
            }
            let line = b"0007a b";
            let n = buf.len().min(line.len());
            buf[..n].copy_from_slice(&line[..n]);
            self.served += n;
            Ok(n)
        }
    }
    let mut header = Vec::new();
    pktline::write_data(&mut header, b"packfile-uris\n").unwrap();
    let endless = Endless { served: 0, header };
    let mut stream = PackStream::new(std::io::BufReader::new(endless), ObjectFormat::Sha1);
    let err = stream.read_sections().unwrap_err();
    assert!(matches!(err, Error::SectionsTooLarge { .. }), "{err}");
    assert!(stream.head().packfile_uris.len() * 7 < MAX_SECTION_BYTES);
}
