//! The entry point shared by the plan-and-write fuzz target and the test that replays its
//! corpus: arbitrary bytes become a `fetch` against a fixed repository, which is planned and
//! written; any outcome but a panic is fine, and a written pack must be valid.

use gitcache_protocol::filter::{Filter, ObjectType};
use gitcache_protocol::request::Fetch;
use gix_hash::ObjectId;

use crate::{Error, Options, Plan, Repository, plan};

/// Build a fetch from `data`: object choices index into `objects` (or name absent ones),
/// flags and depths come from bits.
pub fn fetch_from_bytes(objects: &[ObjectId], refs: &[bstr::BString], data: &[u8]) -> Fetch {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next().unwrap_or(0);
    let mut pick = |n: u8| -> Vec<ObjectId> {
        (0..n % 5)
            .map(|_| {
                let i = usize::from(next()) * 256 + usize::from(next());
                objects
                    .get(i % (objects.len() + 1))
                    .copied()
                    .unwrap_or_else(|| ObjectId::null(objects[0].kind()))
            })
            .collect()
    };
    let flags = data.first().copied().unwrap_or(0);
    let counts = data.get(1).copied().unwrap_or(0);
    let mut fetch = Fetch {
        wants: pick(counts),
        haves: pick(counts >> 3),
        shallows: pick(counts >> 5),
        done: flags & 1 != 0,
        thin_pack: flags & 2 != 0,
        ofs_delta: flags & 4 != 0,
        include_tag: flags & 8 != 0,
        no_progress: flags & 16 != 0,
        wait_for_done: flags & 32 != 0,
        sideband_all: flags & 64 != 0,
        deepen_relative: flags & 128 != 0,
        ..Fetch::default()
    };
    let extra = data.get(2).copied().unwrap_or(0);
    match extra % 4 {
        1 => fetch.deepen = Some(u32::from(extra >> 2).max(1)),
        2 => fetch.deepen_since = Some(1_600_000_000 + u64::from(extra) * 36_000),
        3 if !refs.is_empty() => {
            fetch.deepen_not = vec![refs[usize::from(extra) % refs.len()].clone()]
        }
        _ => {}
    }
    let filter = data.get(3).copied().unwrap_or(0);
    fetch.filter = match filter % 8 {
        1 => Some(Filter::BlobNone),
        2 => Some(Filter::BlobLimit(u64::from(filter) * 64)),
        3 => Some(Filter::Tree(u64::from(filter >> 3) % 4)),
        4 => Some(Filter::ObjectType(ObjectType::Blob)),
        5 => Some(Filter::Combine(vec![Filter::BlobNone, Filter::Tree(2)])),
        _ => None,
    };
    if filter & 0x80 != 0 && !refs.is_empty() {
        fetch.want_refs = vec![refs[usize::from(filter) % refs.len()].clone()];
    }
    fetch
}

/// The writer's options for `data`: its length (which no byte of the fetch depends on) sets
/// a limit on delta chains for half the inputs: one link for a quarter and two links for
/// another, both under the bitmapped fixture's stored chains of up to four; else the default.
pub fn options_from_bytes(data: &[u8]) -> Options {
    let max_delta_depth = match data.len() % 4 {
        1 => 1,
        2 => 2,
        _ => Options::default().max_delta_depth,
    };
    Options {
        max_delta_depth,
        ..Options::default()
    }
}

/// [`plan_and_write_with`] the default options.
pub fn plan_and_write(repo: &Repository, fetch: &Fetch) -> Result<Option<Vec<u8>>, Error> {
    plan_and_write_with(repo, fetch, &Options::default())
}

/// Plan and write `fetch` with `options`; returns the pack bytes, if a pack was sent. A
/// written pack is read back entry by entry (each offset delta's base an entry before it) and
/// its checksum verified, then every object resolved as a delta chain allows; anything else is a
/// bug and panics.
pub fn plan_and_write_with(
    repo: &Repository,
    fetch: &Fetch,
    options: &Options,
) -> Result<Option<Vec<u8>>, Error> {
    let plan = plan(repo, fetch, repo.object_format(), options)?;
    let is_pack = matches!(plan, Plan::Pack(_));
    let nothing = matches!(plan, Plan::Nothing);
    let mut out = Vec::new();
    let stats = plan.write_to(&mut out)?;
    if nothing {
        // No want: git answers with no bytes at all.
        assert!(out.is_empty());
        return Ok(None);
    }
    let response = gitcache_protocol::response::parse_fetch_response(&out, repo.object_format())
        .expect("our own response parses");
    assert_eq!(response.pack.is_some(), is_pack);
    let Some(pack) = response.pack else {
        return Ok(None);
    };
    let entries = gix_pack::data::input::BytesToEntriesIter::new_from_header(
        std::io::BufReader::new(&pack[..]),
        gix_pack::data::input::Mode::Verify,
        gix_pack::data::input::EntryDataMode::Keep,
        repo.object_format(),
    )
    .expect("pack header");
    let mut read = Vec::new();
    // Where entries start: an offset delta's base must be one of those before it.
    let mut starts = std::collections::HashMap::new();
    for entry in entries {
        let entry = entry.expect("every entry decodes and the checksum matches");
        if let gix_pack::data::entry::Header::OfsDelta { base_distance } = entry.header {
            let base = entry.pack_offset.checked_sub(base_distance);
            assert!(
                base.is_some_and(|base| starts.contains_key(&base)),
                "an offset delta's base is an entry before it"
            );
        }
        starts.insert(entry.pack_offset, read.len());
        let mut data = Vec::new();
        let compressed = entry.compressed.expect("kept");
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&compressed[..]),
            &mut data,
        )
        .expect("every entry inflates");
        assert_eq!(
            data.len() as u64,
            entry.decompressed_size,
            "the stated size"
        );
        read.push((entry.pack_offset, entry.header, data));
    }
    assert_eq!(
        u32::from_be_bytes(pack[8..12].try_into().expect("header")),
        read.len() as u32
    );
    let depths = resolve_all(repo, &read, &starts, fetch.thin_pack);
    // Runs copied from a stored pack come first and keep their chains as stored (a whole
    // stored pack sent as it is, all of them); whatever is written after them lies within the
    // limit, counting the chains of copied bases.
    let copied = match stats.whole_pack {
        true => depths.len(),
        false => stats.pack_reused as usize,
    };
    for (i, depth) in depths.into_iter().enumerate().skip(copied) {
        assert!(
            depth <= options.max_delta_depth,
            "entry {i} (after {copied} copied) at depth {depth}, over {}",
            options.max_delta_depth
        );
    }
    Ok(Some(pack))
}

/// Resolve every entry of a written pack (its offset, header and inflated data; `starts`:
/// the entry at each offset) and check what it is: a delta's base is in the pack, or in a
/// thin pack an object of the repository; no chain within the pack is a cycle; each object
/// is one of the repository's objects (its id hashed from what the deltas make), and none is
/// sent twice. Returns each entry's depth: the deltas in its chain within the pack.
fn resolve_all(
    repo: &Repository,
    read: &[(u64, gix_pack::data::entry::Header, Vec<u8>)],
    starts: &std::collections::HashMap<u64, usize>,
    thin: bool,
) -> Vec<usize> {
    use gix_pack::data::entry::Header;
    let hash = repo.object_format();
    let mut objects = repo.objects();
    let mut made: Vec<Option<(gix_object::Kind, Vec<u8>)>> = vec![None; read.len()];
    let mut at_id: crate::OidMap<usize> = crate::OidMap::default();
    let mut left = read.len();
    // Bases taken from the repository (a thin pack's).
    let mut from_repo: crate::OidMap<(gix_object::Kind, Vec<u8>)> = crate::OidMap::default();
    // Passes over what is left until all is made: a delta named by id may come before its
    // base; offset deltas come after theirs.
    while left > 0 {
        let before = left;
        for (i, (offset, header, data)) in read.iter().enumerate() {
            if made[i].is_some() {
                continue;
            }
            let base = match header {
                Header::OfsDelta { base_distance } => {
                    made[starts[&(offset - base_distance)]].clone()
                }
                Header::RefDelta { base_id } => match at_id.get(base_id) {
                    Some(&b) => made[b].clone(),
                    None => from_repo.get(base_id).cloned(),
                },
                _ => Some((header.as_kind().expect("a whole object"), Vec::new())),
            };
            let Some((kind, base)) = base else {
                continue;
            };
            let object = match header.is_delta() {
                true => crate::delta::apply(&base, data).expect("a delta applies to its base"),
                false => data.clone(),
            };
            let id = gix_object::compute_hash(hash, kind, &object).expect("hashed");
            assert!(
                repo.contains(&id),
                "{id} is not an object of the repository"
            );
            assert!(at_id.insert(id, i).is_none(), "{id} is sent twice");
            made[i] = Some((kind, object));
            left -= 1;
        }
        if left == before {
            // What is left names bases by id that are not in the pack: only a thin pack may,
            // and only objects of the repository.
            let header = read
                .iter()
                .zip(&made)
                .find_map(|((_, header, _), made)| made.is_none().then_some(header))
                .expect("an entry left");
            let Header::RefDelta { base_id } = header else {
                panic!("an offset delta whose base cannot be made");
            };
            assert!(thin, "a delta on {base_id}, not in a pack that is not thin");
            let (kind, data) = objects.read(base_id).expect("a thin pack's base is had");
            from_repo.insert(*base_id, (kind, data.to_vec()));
        }
    }
    // No chain within the pack is a cycle (taking a base from the repository above would
    // have made one resolve).
    let mut depths = Vec::with_capacity(read.len());
    for (offset, header, _) in read {
        let mut at = (*offset, *header);
        let mut depth = 0;
        loop {
            let next = match at.1 {
                Header::OfsDelta { base_distance } => Some(starts[&(at.0 - base_distance)]),
                Header::RefDelta { base_id } => at_id.get(&base_id).copied(),
                _ => None,
            };
            // A thin pack's base from the repository is one more link for the client, once
            // it appended it.
            if at.1.is_delta() {
                depth += 1;
            }
            let Some(next) = next else {
                break;
            };
            assert!(
                depth <= read.len(),
                "a chain of deltas within the pack is a cycle"
            );
            at = (read[next].0, read[next].1);
        }
        depths.push(depth);
    }
    depths
}

/// The repository at `path`, packed in one pack with short delta chains (`git repack -adq
/// --window=4 --depth=4`: longer than the writer's limits [`options_from_bytes`] sets, many
/// objects stored whole), with gitcache's bitmaps for the objects
/// of its refs; then `main` moved on by two packs of three commits each, as `git fast-import`
/// writes them (a mirror between two consolidations; each file's oldest version in a pack
/// whole, the newer ones deltas on it). Fetches planned against it take the paths of answers
/// from bitmaps (runs of the stored pack copied, objects stored whole paired by name, in the
/// pack and beyond it), which a repository without bitmaps never reaches. Runs `git`: for
/// fuzzing and tests only.
pub fn bitmapped_fixture(path: &std::path::Path) -> Repository {
    let run = |args: &[&str], input: &[u8]| {
        use std::io::Write as _;
        let mut child = std::process::Command::new("git")
            .arg("-C")
            .arg(path)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("input written");
        let out = child.wait_with_output().expect("git runs");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let git = |args: &[&str]| run(args, b"");
    git(&["repack", "-adq", "--window=4", "--depth=4"]);
    let tips: Vec<ObjectId> = git(&["for-each-ref", "--format=%(objectname)"])
        .lines()
        .map(|line| ObjectId::from_hex(line.trim().as_bytes()).expect("an id"))
        .collect();
    let repo = Repository::open(path).expect("opens");
    repo.write_bitmaps(&tips)
        .expect("bitmaps written")
        .expect("a pack");
    for round in 0..2 {
        let mut stream = String::new();
        for n in 0..3 {
            stream.push_str("commit refs/heads/main\ncommitter t <t@e> 1700000000 +0000\n");
            let message = format!("beyond {round} {n}\n");
            stream.push_str(&format!("data {}\n{message}", message.len()));
            if n == 0 {
                stream.push_str("from refs/heads/main^0\n");
            }
            for file in ["a", "b"] {
                let text: String = (0..40 + 10 * n)
                    .map(|line| format!("{file} {round} {line}\n"))
                    .collect();
                stream.push_str(&format!(
                    "M 100644 inline beyond/{file}.txt\ndata {}\n{text}",
                    text.len()
                ));
            }
        }
        run(
            &["-c", "fastimport.unpackLimit=0", "fast-import", "--quiet"],
            stream.as_bytes(),
        );
    }
    Repository::open(path).expect("opens")
}

/// Read `data` as the bitmap file of `repo`'s first pack (its pack checksum written over
/// bytes 12.. so that inputs reach past that check), decode up to 64 of its bitmaps, alone
/// and together, and read its name hashes: a damaged file is an error, never a panic or an allocation the file's size
/// does not bound.
pub fn bitmap_load(repo: &Repository, data: &[u8]) {
    let Ok(packs) = repo.stored_packs() else {
        return;
    };
    let Some(pack) = packs.first() else {
        return;
    };
    let mut data = data.to_vec();
    let checksum = pack.index.pack_checksum();
    let hash_len = checksum.as_bytes().len();
    if data.len() >= 12 + hash_len {
        data[12..12 + hash_len].copy_from_slice(checksum.as_bytes());
    }
    let hash = repo.object_format();
    let objects = pack.num_objects();
    // Up to 64 decoded together, from nothing decoded.
    if let Ok(bitmaps) = crate::bitmap::PackBitmaps::parse_bytes(data.clone(), pack, hash) {
        let count = bitmaps.commit_positions().count().min(64);
        // Positions of the pack, as the walk gives them (not checked against the entries).
        let wanted: Vec<(usize, usize)> = (0..count).map(|i| (i, i * 7 % objects.max(1))).collect();
        let mut union = crate::bitmap::Bits::default();
        if bitmaps.union_into(&wanted, &mut union).is_ok() {
            assert!(union.ones().all(|b| b < objects), "a bit past the pack");
        }
    }
    let Ok(bitmaps) = crate::bitmap::PackBitmaps::parse_bytes(data, pack, hash) else {
        return;
    };
    assert!(bitmaps.commits.count() <= objects && bitmaps.blobs.count() <= objects);
    if let Ok(Some(names)) = bitmaps.names() {
        assert_eq!(names.len(), objects, "a name hash per object");
    }
    let positions: Vec<u32> = bitmaps.commit_positions().take(64).collect();
    for position in positions {
        if let Ok(Some(bits)) = bitmaps.get(position) {
            assert!(bits.ones().all(|b| b < objects), "a bit past the pack");
        }
    }
}

/// The delta encoder against a target made from `data`: the first byte splits the rest into
/// a source and a list of edits (three bytes each: where, what, and whether to replace,
/// insert or delete), applied to a copy of the source. A delta written must apply back to
/// the target exactly; one refused must have been over its limit.
pub fn delta(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (source, edits) = rest.split_at(rest.len() * usize::from(split) / 256);
    // Repeated so that sources are long enough to hold blocks worth copying.
    let source = source.repeat(1 + 4096 / (source.len() + 1));
    let mut target = source.clone();
    for edit in edits.chunks_exact(3) {
        let at = usize::from(edit[0]) * 16 % (target.len() + 1);
        match edit[2] % 3 {
            0 if at < target.len() => target[at] = edit[1],
            1 => target.insert(at, edit[1]),
            _ if at < target.len() => drop(target.remove(at)),
            _ => {}
        }
    }
    let Some(index) = crate::delta::SourceIndex::new(&source) else {
        return;
    };
    let unlimited = crate::delta::encode(&index, &target, usize::MAX).expect("no limit");
    let applied = crate::delta::apply(&source, &unlimited).expect("our delta applies");
    assert!(applied == target, "the delta makes another target");
    let limit = target.len() / 2;
    match crate::delta::encode(&index, &target, limit) {
        Some(limited) => assert!(limited == unlimited && limited.len() <= limit),
        None => assert!(unlimited.len() > limit),
    }
}

/// Read `data` as a commit graph, of SHA-1 ids and of SHA-256 ids, its trailing checksum
/// written over its last bytes so that inputs reach past that check; look up and read up
/// to 256 of its commits, and walk down first parents from 16: a damaged file is an error,
/// never a panic, what a lookup finds is the id looked up, and every walk ends.
pub fn commit_graph(data: &[u8]) {
    for hash in [gix_hash::Kind::Sha1, gix_hash::Kind::Sha256] {
        let h = hash.len_in_bytes();
        let mut bytes = data.to_vec();
        if bytes.len() >= h {
            let body = bytes.len() - h;
            let mut hasher = gix_hash::hasher(hash);
            hasher.update(&bytes[..body]);
            let Ok(sum) = hasher.try_finalize() else {
                return;
            };
            bytes[body..].copy_from_slice(sum.as_bytes());
        }
        let Ok(graph) = crate::graph::Graph::parse(Box::new(bytes), hash) else {
            continue;
        };
        for position in 0..graph.len().min(256) {
            let oid = graph.oid(position);
            if let Some(found) = graph.position(&oid) {
                assert_eq!(graph.oid(found), oid, "a lookup found another id");
            }
            let _ = graph.commit(position);
        }
        // Any walk down parents ends: levels fall from every child to its parents.
        for start in 0..graph.len().min(16) {
            let mut at = Some(start);
            let mut steps = 0;
            while let Some(position) = at {
                steps += 1;
                assert!(steps <= graph.len(), "a walk that does not end");
                at = graph
                    .commit(position)
                    .ok()
                    .and_then(|c| c.parents.first().and_then(|p| graph.position(p)));
            }
        }
    }
}

/// Bytes handed out as they are asked for, saying how many were: a pack as it arrives, for
/// [`crate::early::scan_for`] (here and in the tests).
#[derive(Debug)]
pub struct Arriving<'a> {
    /// The pack.
    pub data: &'a [u8],
    /// How many of its bytes were handed out.
    pub arrived: &'a std::sync::atomic::AtomicUsize,
}

impl std::io::Read for Arriving<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.arrived.load(std::sync::atomic::Ordering::SeqCst);
        let rest = self.data.get(at..).unwrap_or_default();
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.arrived
            .store(at + n, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
}

/// Reads of `data` at an offset, of the bytes an [`Arriving`] counting into `arrived` handed
/// out so far only (as [`crate::early::Tips::reading_back`] reads).
pub fn read_arrived(
    data: Vec<u8>,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(&mut [u8], u64) -> std::io::Result<usize> + Send + 'static {
    move |buf, at| {
        let arrived = arrived.load(std::sync::atomic::Ordering::SeqCst);
        let rest = usize::try_from(at)
            .ok()
            .and_then(|at| data.get(at..arrived))
            .unwrap_or_default();
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Read `data` as a pack arriving, entry by entry ([`crate::incoming::Incoming`]). Hashing
/// no blob, it reads the entries gitoxide's reader reads, field for field (the CRC-32 where
/// the header is in its shortest form: gitoxide takes it of that form), or fails where that
/// fails (or on a header longer than any in its shortest form, which gitoxide takes). Hashing
/// every blob stored whole, through a reader handing out 7 bytes at a time (headers and
/// streams split across reads), it reads the same or fails (a stream whose Adler-32 is wrong,
/// which only inflating checks), and each id is that of the blob inflated whole here. The
/// objects found early in it ([`crate::early::scan`]; trees read back from the bytes or not,
/// told of the blobs stored whole or not) are found only in a pack that reads, each at one of
/// its entries. Never a panic, and nothing is sized by what the bytes claim.
pub fn incoming(data: &[u8]) {
    use crate::incoming::{Incoming, IncomingEntry, LONGEST_HEADER};
    use gix_pack::data::input;
    let hash = gix_hash::Kind::Sha1;
    let ours = |read: &mut dyn std::io::BufRead,
                hash_from: u64|
     -> Result<(Vec<IncomingEntry>, Option<ObjectId>), Error> {
        let mut incoming = Incoming::new(read, hash, hash_from)?;
        let mut entries = Vec::new();
        while let Some(entry) = incoming.next_entry()? {
            entries.push(entry);
        }
        let trailer = (incoming.count() > 0)
            .then(|| incoming.trailer())
            .transpose()?;
        Ok((entries, trailer))
    };
    let plain = ours(&mut &data[..], u64::MAX);
    // What a receiving hashing every blob stored whole would tell a reading of them.
    let blobs_told: std::collections::HashMap<u64, crate::incoming::Told> = ours(&mut &data[..], 0)
        .map(|(entries, _)| {
            (entries.into_iter())
                .filter_map(|entry| {
                    let (end, crc32) = (entry.end(), entry.crc32);
                    Some((
                        entry.offset,
                        crate::incoming::Told {
                            end,
                            crc32,
                            id: entry.id?,
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let blobs_told = std::sync::Arc::new(blobs_told);
    let theirs = input::BytesToEntriesIter::new_from_header(
        &mut &data[..],
        input::Mode::AsIs,
        input::EntryDataMode::Crc32,
        hash,
    )
    .map_err(|err| err.to_string())
    .and_then(|entries| {
        entries
            .map(|entry| entry.map_err(|err| err.to_string()))
            .collect::<Result<Vec<_>, _>>()
    });
    match (&plain, &theirs) {
        (Ok((ours, trailer)), Ok(theirs)) => {
            assert_eq!(ours.len(), theirs.len(), "as many entries");
            for (ours, theirs) in ours.iter().zip(theirs) {
                assert_eq!(
                    (ours.offset, &ours.header, ours.size, ours.compressed_size),
                    (
                        theirs.pack_offset,
                        &theirs.header,
                        theirs.decompressed_size,
                        theirs.compressed_size
                    )
                );
                assert_eq!(ours.header_size, theirs.header_size);
                if usize::from(ours.header_size) == ours.header.size(ours.size) {
                    assert_eq!(Some(ours.crc32), theirs.crc32);
                }
            }
            assert_eq!(*trailer, theirs.last().and_then(|entry| entry.trailer));
        }
        (Err(_), Err(_)) => {}
        (Err(_), Ok(theirs))
            if theirs
                .iter()
                .any(|entry| usize::from(entry.header_size) > LONGEST_HEADER) => {}
        (ours, theirs) => panic!("gitcache read {ours:?}, gitoxide {theirs:?}"),
    }
    // The objects found as the pack arrives: only in a pack that reads, each at one of its
    // entries, a whole one's id that of its object inflated here.
    let limits = crate::early::Limits {
        cache_bytes: 1 << 20,
        object_bytes: 1 << 20,
        decoded_per_byte: 8,
        most_found: 1 << 16,
        copy_all_bytes: 0,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let check = |found: &crate::early::Found| {
        let Ok((entries, _)) = &plain else {
            panic!("objects found in a pack that does not read: {plain:?}");
        };
        for at in &found.objects {
            let id = &at.id;
            let entry = (entries.iter())
                .find(|entry| entry.offset == at.offset)
                .expect("found at an entry");
            assert_eq!((entry.crc32, entry.end()), (at.crc32, at.end));
            // A delta is found on a base found before it: a pack of those alone is whole.
            if let gix_pack::data::entry::Header::OfsDelta { base_distance } = entry.header {
                let base = entry.offset - base_distance;
                assert!(
                    found.objects.iter().any(|found| found.offset == base),
                    "a delta found without its base"
                );
            }
            if let Some(kind) = entry.header.as_kind() {
                let start = usize::try_from(entry.offset + u64::from(entry.header_size)).unwrap();
                let end = usize::try_from(entry.end()).unwrap();
                let mut object = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::ZlibDecoder::new(&data[start..end]),
                    &mut object,
                )
                .expect("a stream read whole once inflates again");
                assert_eq!(*id, gix_object::compute_hash(hash, kind, &object).unwrap());
            }
        }
    };
    // The object stored whole at `offset`, inflated.
    let whole_object = |offset: u64| {
        let (entries, _) = plain.as_ref().ok()?;
        let entry = entries.iter().find(|entry| entry.offset == offset)?;
        let kind = entry.header.as_kind()?;
        let start = usize::try_from(entry.offset + u64::from(entry.header_size)).ok()?;
        let end = usize::try_from(entry.end()).ok()?;
        let mut object = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(data.get(start..end)?),
            &mut object,
        )
        .ok()?;
        Some((kind, object))
    };
    // Few, so that fuzzed packs run walks out.
    const WALKED: usize = 6;
    let mut pieces = std::io::BufReader::with_capacity(7, data);
    if let Ok(found) = crate::early::scan(&mut pieces, hash, limits, &stop) {
        check(&found);
        // Followed as tips, wanted from the start and later: the same holds of what a scan
        // for them finds (whatever the objects are: trees naming each other, tags of tags).
        let wanted: Vec<ObjectId> = found.objects.iter().map(|at| at.id).take(64).collect();
        let (first, later) = wanted.split_at(wanted.len() / 2);
        let later = later.to_vec();
        // With an id no pack holds too: what was found meanwhile is given.
        for lacked in [None, Some(ObjectId::null(hash))] {
            let later = later.clone();
            let posted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            // With the id no pack holds, the history of the first is walked down to the
            // last few found (as an incremental fetch's is); and the history of the first two
            // is followed four deep (as a deeper shallow clone's is).
            let walks = crate::early::Wants {
                tips: Vec::new(),
                walked: lacked.map_or_else(Vec::new, |_| first.to_vec()),
                haves: lacked
                    .map_or_else(Vec::new, |_| later.iter().rev().take(4).copied().collect()),
                deep: first.iter().take(2).map(|id| (*id, 4)).collect(),
            };
            let haves = walks.haves.clone();
            let shared = std::sync::Arc::new(crate::early::Walks::default());
            let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tips = crate::early::Tips::new(first.iter().copied().chain(lacked))
                .walking_at_most(WALKED)
                .sharing_walks(std::sync::Arc::clone(&shared))
                .when_walks_run_out({
                    let told = std::sync::Arc::clone(&told);
                    move || {
                        told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
                .wanting(walks)
                .asking(move || later.clone())
                .meanwhile({
                    let posted = std::sync::Arc::clone(&posted);
                    move |found| posted.lock().unwrap().push(found)
                });
            // Trees no longer kept read back, in one of the two, from the bytes arrived so
            // far (those the scan asked for).
            let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // And told of the blobs stored whole there (read back for the deltas on them):
            // each id found is still checked against its blob inflated here.
            if lacked.is_none() {
                let blobs_told = std::sync::Arc::clone(&blobs_told);
                tips = tips
                    .reading_back(read_arrived(data.to_vec(), std::sync::Arc::clone(&arrived)))
                    .told_by(move |at| blobs_told.get(&at).copied());
            }
            // Reading back, with room for hardly any object kept: each base is read back.
            let limits = match lacked {
                None => crate::early::Limits {
                    cache_bytes: 512,
                    ..limits
                },
                Some(_) => limits,
            };
            let mut pieces = std::io::BufReader::with_capacity(
                7,
                Arriving {
                    data,
                    arrived: &arrived,
                },
            );
            if let Ok(found) =
                crate::early::scan_for(&mut pieces, hash, limits, &stop, Some(&mut tips))
            {
                check(&found);
                // Each tree followed once at most, however many trees name it (twice: for
                // its subtrees, then whole).
                assert!(tips.followed <= 2 * found.objects.len(), "{tips:?}");
                // Walks take no more commits than they may, and are refused one only once
                // they took all they may; a history is cut only by a commit refused.
                assert!(tips.walked() <= WALKED, "{tips:?}");
                let told = told.load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(told > 0, tips.walks_ran_out(), "{tips:?}");
                if tips.walks_ran_out() {
                    assert_eq!(tips.walked(), WALKED, "{tips:?}");
                }
                // A commit refused was never taken; what is shared is what was recorded.
                assert!(!tips.took_a_refused_commit(), "{tips:?}");
                // Parents are kept for walks, haves and the first commits alone.
                assert!(
                    tips.parents_kept() <= WALKED + haves.len() + crate::early::MOST_PARENTS_AHEAD,
                    "{tips:?}"
                );
                assert_eq!(shared.refused_count(), tips.refused_count(), "{tips:?}");
                // Looked at for what this pack made of them: bounded, whatever it says.
                shared.cut(first, &haves);
                let posted = posted.lock().unwrap();
                assert!(posted.len() <= 1, "given once");
                for early in posted.iter() {
                    check(early);
                    assert!(early.checksum().is_none());
                    assert!(
                        found.objects.starts_with(&early.objects),
                        "what was found meanwhile is what the scan found by then"
                    );
                    // Given once nothing else was waited for: the tree of each commit wanted
                    // from the start and found (stored whole, to be read here) was found by
                    // then, unless a closure was lost.
                    if tips.lost() {
                        continue;
                    }
                    for at in &early.objects {
                        if !first.contains(&at.id) {
                            continue;
                        }
                        let Some(tree) = whole_object(at.offset)
                            .filter(|(kind, _)| *kind == gix_object::Kind::Commit)
                            .and_then(|(_, data)| crate::objects::parse_commit(&data, hash).ok())
                            .map(|commit| commit.tree)
                        else {
                            continue;
                        };
                        assert!(
                            early.objects.iter().any(|at| at.id == tree),
                            "the tree of a commit found was found before what was found was given"
                        );
                    }
                }
            }
        }
    }
    let mut small = std::io::BufReader::with_capacity(7, data);
    let (Ok((plain, _)), Ok((hashed, _))) = (plain, ours(&mut small, 0)) else {
        return;
    };
    assert_eq!(plain.len(), hashed.len(), "as many entries");
    for (plain, hashed) in plain.iter().zip(&hashed) {
        assert_eq!(
            plain,
            &IncomingEntry {
                id: None,
                ..hashed.clone()
            }
        );
        let start = usize::try_from(plain.offset + u64::from(plain.header_size)).unwrap();
        let end = usize::try_from(plain.end()).unwrap();
        match (&plain.header, hashed.id) {
            (gix_pack::data::entry::Header::Blob, Some(id)) => {
                let mut blob = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::ZlibDecoder::new(&data[start..end]),
                    &mut blob,
                )
                .expect("a stream read whole once inflates again");
                assert_eq!(
                    id,
                    gix_object::compute_hash(hash, gix_object::Kind::Blob, &blob).unwrap()
                );
            }
            (_, None) => {}
            (header, Some(_)) => panic!("a {header:?} hashed"),
        }
    }
}
