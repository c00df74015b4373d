//! Golden transcripts: what the real `git` client sent, and what C git answered, recorded by
//! `cargo xtask transcripts`. Every request must parse into the values the scenario implies, and
//! our writers must produce C git's bytes for the same content.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use bstr::BString;
use gitcache_protocol::advertise::{Advertised, Advertisement, read_advertised};
use gitcache_protocol::filter::Filter;
use gitcache_protocol::ls_refs;
use gitcache_protocol::request::{Command, Fetch, Limits, LsRefs, Request, parse_request};
use gitcache_protocol::response::parse_fetch_response;
use gitcache_protocol::{ObjectFormat, ObjectId};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transcripts")
}

/// The upstream's refs when the transcripts were recorded, and the `--shallow-since` time used.
struct Manifest {
    refs: HashMap<String, ObjectId>,
    since: u64,
}

impl Manifest {
    fn load() -> Manifest {
        let text = fs::read_to_string(dir().join("manifest.txt")).unwrap();
        let mut refs = HashMap::new();
        let mut since = 0;
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["ref", name, oid, ..] => {
                    refs.insert(
                        (*name).to_owned(),
                        ObjectId::from_hex(oid.as_bytes()).unwrap(),
                    );
                }
                ["since", t] => since = t.parse().unwrap(),
                _ => {}
            }
        }
        Manifest { refs, since }
    }

    fn oid(&self, name: &str) -> ObjectId {
        self.refs[name]
    }

    fn oids(&self, prefix: &str) -> BTreeSet<ObjectId> {
        self.refs
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, o)| *o)
            .collect()
    }
}

/// One recorded exchange: `NN-kind.request` (absent for GETs) and `NN-kind.response`.
struct Exchange {
    kind: String,
    request: Option<Vec<u8>>,
    response: Vec<u8>,
}

fn scenario(name: &str) -> Vec<Exchange> {
    let mut stems: Vec<String> = fs::read_dir(dir().join(name))
        .unwrap_or_else(|e| panic!("scenario {name}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|f| f.strip_suffix(".response").map(str::to_owned))
        .collect();
    stems.sort();
    stems
        .into_iter()
        .map(|stem| {
            let base = dir().join(name).join(&stem);
            Exchange {
                kind: stem[3..].to_owned(),
                request: fs::read(base.with_extension("request")).ok(),
                response: fs::read(base.with_extension("response")).unwrap(),
            }
        })
        .collect()
}

fn all_scenarios() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn parse(body: &[u8]) -> Request {
    parse_request(body, Limits::default())
        .unwrap()
        .expect("not an empty request")
}

fn fetches(name: &str) -> Vec<Fetch> {
    scenario(name)
        .into_iter()
        .filter(|e| e.kind == "fetch")
        .map(|e| match parse(e.request.as_deref().unwrap()).command {
            Command::Fetch(f) => f,
            other => panic!("{name}: not a fetch: {other:?}"),
        })
        .collect()
}

fn ls_refs(name: &str) -> LsRefs {
    let e = scenario(name)
        .into_iter()
        .find(|e| e.kind == "ls-refs")
        .unwrap();
    match parse(e.request.as_deref().unwrap()).command {
        Command::LsRefs(args) => args,
        other => panic!("{name}: not ls-refs: {other:?}"),
    }
}

fn set(oids: &[ObjectId]) -> BTreeSet<ObjectId> {
    oids.iter().copied().collect()
}

fn prefixes(args: &LsRefs) -> Vec<&str> {
    args.ref_prefixes
        .iter()
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect()
}

#[test]
fn every_recorded_request_parses_and_re_encodes() {
    let mut seen = 0;
    for name in all_scenarios() {
        for e in scenario(&name) {
            let Some(body) = &e.request else { continue };
            let request = parse(body);
            assert_eq!(request.command.name(), e.kind, "{name}");
            assert_eq!(
                request
                    .capabilities
                    .agent
                    .as_deref()
                    .map(|a| a.starts_with("git/")),
                Some(true)
            );
            let mut encoded = Vec::new();
            request.write_to(&mut encoded).unwrap();
            assert_eq!(
                parse(&encoded),
                request,
                "{name}: re-encoded request differs"
            );
            seen += 1;
        }
    }
    assert!(seen >= 25, "only {seen} requests recorded");
}

#[test]
fn a_v0_advertisement_is_not_v2() {
    let v0 = b"001e# service=git-upload-pack\n0000003f0123456789012345678901234567890123456789 HEAD\0side-band\n0000";
    assert_eq!(read_advertised(v0).unwrap(), Advertised::Other);
    // v2 after the v0 preamble, as some front ends send it (git reads past it).
    let preamble =
        b"001e# service=git-upload-pack\n0000000eversion 2\n0019object-format=sha256\n0000";
    assert_eq!(
        read_advertised(preamble).unwrap(),
        Advertised::V2(gix_hash::Kind::Sha256)
    );
    let with_lines = b"001e# service=git-upload-pack\n000aextra\n0000000eversion 2\n0000";
    assert_eq!(
        read_advertised(with_lines).unwrap(),
        Advertised::V2(gix_hash::Kind::Sha1)
    );
    // Only before the answer, and only to its flush: a preamble with no flush is no v2.
    let unflushed = b"001e# service=git-upload-pack\n000eversion 2\n0000";
    assert_eq!(read_advertised(unflushed).unwrap(), Advertised::Other);
    // Only one, only first, only for upload-pack.
    let twice = b"001e# service=git-upload-pack\n0000001e# service=git-upload-pack\n0000000eversion 2\n0000";
    assert_eq!(read_advertised(twice).unwrap(), Advertised::Other);
    let receive = b"001f# service=git-receive-pack\n0000000eversion 2\n0000";
    assert_eq!(read_advertised(receive).unwrap(), Advertised::Other);
    assert_eq!(read_advertised(b"").unwrap(), Advertised::Other);
    assert!(read_advertised(b"000eversion 2\n0019object-format=md5\n0000").is_err());
    assert!(read_advertised(b"zzzz").is_err());
}

#[test]
fn our_advertisement_is_byte_for_byte_what_http_backend_sends() {
    let mut compared = 0;
    for name in all_scenarios() {
        for e in scenario(&name)
            .into_iter()
            .filter(|e| e.kind == "info-refs")
        {
            let lines: Vec<&[u8]> = e.response.split(|&b| b == b'\n').collect();
            let agent = std::str::from_utf8(&lines[1][4..])
                .unwrap()
                .strip_prefix("agent=")
                .unwrap();
            let format = if name.starts_with("sha256") {
                ObjectFormat::Sha256
            } else {
                ObjectFormat::Sha1
            };
            let mut ad = Advertisement::new(agent, format);
            ad.fetch_ref_in_want = false; // the upstream enables uploadpack.allowFilter only
            let mut ours = Vec::new();
            ad.write_to(&mut ours).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&e.response),
                "{name}"
            );
            assert_eq!(
                read_advertised(&e.response).unwrap(),
                Advertised::V2(format),
                "{name}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 14, "compared {compared}");
}

#[test]
fn our_ls_refs_output_is_byte_for_byte_what_git_sends() {
    let manifest = Manifest::load();
    let mut compared = 0;
    for name in all_scenarios() {
        let exchanges = scenario(&name);
        for e in exchanges.iter().filter(|e| e.kind == "ls-refs") {
            let Command::LsRefs(args) = parse(e.request.as_deref().unwrap()).command else {
                unreachable!()
            };
            let format = if name.starts_with("sha256") {
                ObjectFormat::Sha256
            } else {
                ObjectFormat::Sha1
            };
            let lines = ls_refs::parse_response(&e.response, format).unwrap();
            // Read as it arrives, in pieces of every size from one byte: the same refs.
            for piece in [1, 2, 3, 5, 64, 1000] {
                let mut reader = ls_refs::ResponseReader::new(format, usize::MAX);
                for part in e.response.chunks(piece) {
                    reader.feed(part).unwrap();
                }
                assert_eq!(reader.finish().unwrap(), lines, "{name}, pieces of {piece}");
            }
            let mut ours = Vec::new();
            ls_refs::write_response(&mut ours, &lines, &args).unwrap();
            assert_eq!(ours, e.response, "{name}");
            compared += 1;
            if name == "ls-remote" {
                let head = &lines[0];
                assert_eq!(head.name, "HEAD");
                assert_eq!(head.symref_target.as_ref().unwrap(), "refs/heads/main");
                for line in &lines[1..] {
                    let name = std::str::from_utf8(&line.name).unwrap();
                    assert_eq!(line.oid, Some(manifest.oid(name)), "{name}");
                }
                let v1 = lines.iter().find(|l| l.name == "refs/tags/v1.0").unwrap();
                assert!(v1.peeled.is_some(), "annotated tags are peeled");
                assert_eq!(lines.len(), manifest.refs.len() + 1);
            }
        }
    }
    assert!(compared >= 14, "compared {compared}");
}

#[test]
fn every_recorded_fetch_response_reads_back() {
    for name in all_scenarios() {
        let format = if name.starts_with("sha256") {
            ObjectFormat::Sha256
        } else {
            ObjectFormat::Sha1
        };
        for e in scenario(&name).into_iter().filter(|e| e.kind == "fetch") {
            let Command::Fetch(args) = parse(e.request.as_deref().unwrap()).command else {
                unreachable!()
            };
            let resp = parse_fetch_response(&e.response, format)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            // With `done` there is no negotiation; without it, acknowledgments come first.
            assert_eq!(resp.has_acknowledgments, !args.done, "{name}");
            if let Some(pack) = &resp.pack {
                assert!(pack.starts_with(b"PACK\0\0\0\x02"), "{name}");
                assert!(
                    args.done || resp.ready,
                    "{name}: pack without done or ready"
                );
            } else {
                assert!(
                    !args.done && !resp.ready,
                    "{name}: no pack although the client was done"
                );
            }
            assert_eq!(
                !resp.shallow.is_empty() || !resp.unshallow.is_empty(),
                args.is_deepening(),
                "{name}"
            );
            assert!(resp.progress.is_empty(), "{name}: no-progress was asked");
        }
    }
}

#[test]
fn clone_sends_ls_refs_then_one_fetch_of_every_tip() {
    let manifest = Manifest::load();
    let args = ls_refs("clone");
    assert!(args.peel && args.symrefs && args.unborn);
    assert_eq!(prefixes(&args), ["HEAD", "refs/heads/", "refs/tags/"]);
    let [fetch] = fetches("clone").try_into().unwrap();
    assert_eq!(set(&fetch.wants), manifest.oids("refs/"));
    assert!(fetch.done && fetch.thin_pack && fetch.ofs_delta && fetch.no_progress);
    assert!(
        !fetch.include_tag
            && fetch.haves.is_empty()
            && fetch.filter.is_none()
            && !fetch.is_deepening()
    );
}

#[test]
fn ls_remote_asks_for_every_ref() {
    assert!(ls_refs("ls-remote").ref_prefixes.is_empty());
    assert!(fetches("ls-remote").is_empty());
}

#[test]
fn depth_one_clone() {
    let manifest = Manifest::load();
    let [fetch] = fetches("depth-1").try_into().unwrap();
    assert_eq!(fetch.deepen, Some(1));
    assert_eq!(set(&fetch.wants), set(&[manifest.oid("refs/heads/main")]));
    assert!(fetch.include_tag && fetch.done && !fetch.deepen_relative);
    let e = scenario("depth-1")
        .into_iter()
        .find(|e| e.kind == "fetch")
        .unwrap();
    let resp = parse_fetch_response(&e.response, ObjectFormat::Sha1).unwrap();
    assert_eq!(resp.shallow, vec![manifest.oid("refs/heads/main")]);
}

#[test]
fn deepen_relative_and_unshallow() {
    let manifest = Manifest::load();
    let main = manifest.oid("refs/heads/main");
    let [fetch] = fetches("deepen-relative").try_into().unwrap();
    assert_eq!((fetch.deepen, fetch.deepen_relative), (Some(2), true));
    assert_eq!(fetch.shallows, vec![main]);
    assert_eq!(fetch.haves, vec![main]);
    assert!(!fetch.done);

    let unshallow = fetches("unshallow");
    let first = &unshallow[0];
    assert_eq!(
        first.deepen,
        Some(i32::MAX as u32),
        "git unshallows with the largest depth"
    );
    assert_eq!(first.shallows.len(), 2);
    assert!(!first.deepen_relative);
}

#[test]
fn shallow_since_and_exclude() {
    let manifest = Manifest::load();
    let [since] = fetches("shallow-since").try_into().unwrap();
    assert_eq!(since.deepen_since, Some(manifest.since));
    assert_eq!(since.deepen, None);
    let [exclude] = fetches("shallow-exclude").try_into().unwrap();
    assert_eq!(exclude.deepen_not, vec![BString::from("v1.0")]);
}

#[test]
fn filters() {
    let blobless = fetches("filter-blob-none");
    assert_eq!(blobless[0].filter, Some(Filter::BlobNone));
    // The checkout then fetches the blobs it needs, lazily, with the same filter.
    assert_eq!(blobless.len(), 2);
    assert!(blobless[1].wants.len() > 1 && blobless[1].done);
    assert_eq!(blobless[1].filter, Some(Filter::BlobNone));
    let [tree] = fetches("filter-tree-0").try_into().unwrap();
    assert_eq!(tree.filter, Some(Filter::Tree(0)));
    let [combined] = fetches("filter-combine").try_into().unwrap();
    assert_eq!(
        combined.filter,
        Some(Filter::Combine(vec![
            Filter::BlobLimit(1024),
            Filter::Tree(3)
        ]))
    );
}

#[test]
fn tags_are_fetched_by_prefix_and_want() {
    let manifest = Manifest::load();
    assert_eq!(prefixes(&ls_refs("tags")), ["HEAD", "refs/heads/"]);
    let [notags] = fetches("tags").try_into().unwrap();
    assert_eq!(set(&notags.wants), manifest.oids("refs/heads/"));
    let tag_fetches = fetches("tags-fetch");
    let last = tag_fetches.last().unwrap();
    assert_eq!(set(&last.wants), manifest.oids("refs/tags/"));
    assert_eq!(set(&last.haves), manifest.oids("refs/heads/"));
    assert!(last.done);
}

#[test]
fn actions_checkout_fetch_is_info_refs_then_one_fetch() {
    let manifest = Manifest::load();
    let kinds: Vec<String> = scenario("fetch-sha").into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["info-refs", "fetch"]);
    let [fetch] = fetches("fetch-sha").try_into().unwrap();
    assert_eq!(fetch.wants, vec![manifest.oid("refs/heads/main")]);
    assert_eq!(fetch.deepen, Some(1));
    assert!(
        fetch.done && fetch.thin_pack && fetch.no_progress && fetch.ofs_delta && !fetch.include_tag
    );
}

#[test]
fn negotiation_rounds_grow_and_are_answered_with_acknowledgments() {
    let rounds = fetches("fetch-negotiation");
    assert!(rounds.len() >= 2);
    assert_eq!(
        rounds[0].haves.len(),
        16,
        "git's first round sends 16 haves"
    );
    assert!(rounds[1].haves.len() > rounds[0].haves.len());
    assert!(rounds.iter().all(|r| r.wants.len() == 1));
    let first = scenario("fetch-negotiation")
        .into_iter()
        .find(|e| e.kind == "fetch")
        .unwrap();
    let resp = parse_fetch_response(&first.response, ObjectFormat::Sha1).unwrap();
    assert!(resp.has_acknowledgments && resp.nak && !resp.ready && resp.pack.is_none());
}

#[test]
fn sha256_requests_carry_long_ids() {
    let [fetch] = fetches("sha256-clone").try_into().unwrap();
    assert!(fetch.wants.iter().all(|w| w.kind() == ObjectFormat::Sha256));
    let e = scenario("sha256-clone")
        .into_iter()
        .find(|e| e.kind == "fetch")
        .unwrap();
    let request = parse(e.request.as_deref().unwrap());
    assert_eq!(
        request.capabilities.object_format,
        Some(ObjectFormat::Sha256)
    );
}

#[test]
fn recorded_packs_stream_out_of_their_responses() {
    use gitcache_protocol::response::PackStream;
    use std::io::Read;
    let mut streamed = 0;
    for name in all_scenarios() {
        let format = if name.starts_with("sha256") {
            ObjectFormat::Sha256
        } else {
            ObjectFormat::Sha1
        };
        for e in scenario(&name).into_iter().filter(|e| e.kind == "fetch") {
            let whole = parse_fetch_response(&e.response, format).unwrap();
            let mut stream = PackStream::new(
                std::io::BufReader::with_capacity(100, &e.response[..]),
                format,
            );
            match &whole.pack {
                Some(pack) => {
                    let mut got = Vec::new();
                    stream.read_to_end(&mut got).unwrap();
                    assert_eq!(&got, pack, "{name}");
                    assert_eq!(stream.head().shallow, whole.shallow, "{name}");
                    streamed += 1;
                }
                None => {
                    stream.read_sections().unwrap();
                    assert!(!stream.has_pack(), "{name}: no pack, so no stream");
                    assert!(
                        stream.read(&mut [0u8; 8]).is_err(),
                        "{name}: reading a pack that is not there fails"
                    );
                }
            }
        }
    }
    assert!(streamed >= 15, "streamed {streamed}");
}

/// A listing of more refs than the reader takes is an error, not millions of lines in memory.
#[test]
fn a_listing_of_more_refs_than_taken_is_refused() {
    let oid = "1111111111111111111111111111111111111111";
    let mut body = Vec::new();
    for name in ["refs/heads/a", "refs/heads/b", "refs/tags/c"] {
        let line = format!("{oid} {name}\n");
        body.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b"0000");
    let kind = gix_hash::Kind::Sha1;
    assert_eq!(
        ls_refs::parse_response_within(&body, kind, 3)
            .unwrap()
            .len(),
        3
    );
    let err = ls_refs::parse_response_within(&body, kind, 2).unwrap_err();
    assert!(matches!(err, ls_refs::Error::TooMany { most: 2 }), "{err}");
    assert_eq!(ls_refs::parse_response(&body, kind).unwrap().len(), 3);
}
