//! The entry points shared by the fuzz targets and the tests that replay their corpora:
//! arbitrary bytes offered as a received pack, and as a shared mirror's manifest.

use crate::ingest::{Error, ingest_hashing_from};

/// Offer `data` as a first fetch's pack to an empty object directory, checked as one (its
/// history whole within it). It is taken in whole (a `.pack`, its `.idx` and, unless it has
/// deltas on bases named by id, its `.rev`; nothing else) or refused with a typed error
/// leaving the directory empty. It is offered twice, blobs hashed as they are read from the
/// usual size on and then every one, announced as it arrives (see `announced`): both end
/// alike, with the same index. Then it is offered as a later fetch's pack
/// ([`ingest_later`]).
pub fn ingest(data: &[u8]) {
    let usual = ingest_hashing(data, crate::ingest::HASHED_ON_ARRIVAL, None);
    // The announced offer wants the first object of the index the first one wrote.
    let wanted = usual.as_deref().and_then(first_in_index);
    let board = std::sync::Arc::new(crate::live::Board::default());
    let want = wanted.map_or(gix_hash::ObjectId::null(gix_hash::Kind::Sha1), |(id, _)| id);
    let every = ingest_hashing(data, 0, Some((&board, want)));
    if every.is_some() {
        announced(&board, wanted.map(|(_, at)| at));
    }
    assert_eq!(
        usual, every,
        "hashing every blob on arrival, the pack announced, changed the outcome"
    );
    ingest_later(data);
}

/// The objects of the mirror a later fetch's pack is offered to (see [`ingest`]), with their
/// ids: a blob, a tree naming it (`b`), a root tree naming the blob (`a`) and that tree
/// (`d`), and a commit of the root tree. A thin pack of the corpus names them as bases.
pub fn seed() -> Vec<(gix_hash::ObjectId, gix_object::Kind, Vec<u8>)> {
    use gix_object::Kind;
    let id = |kind: Kind, data: &[u8]| {
        gix_object::compute_hash(gix_hash::Kind::Sha1, kind, data).expect("SHA-1 is supported")
    };
    let blob = b"seed\n".to_vec();
    let blob_id = id(Kind::Blob, &blob);
    let mut sub = b"100644 b\0".to_vec();
    sub.extend_from_slice(blob_id.as_bytes());
    let sub_id = id(Kind::Tree, &sub);
    let mut root = b"100644 a\0".to_vec();
    root.extend_from_slice(blob_id.as_bytes());
    root.extend_from_slice(b"40000 d\0");
    root.extend_from_slice(sub_id.as_bytes());
    let root_id = id(Kind::Tree, &root);
    let commit = format!(
        "tree {root_id}\nauthor S <s@example.com> 1 +0000\ncommitter S <s@example.com> 1 +0000\n\nseed\n"
    )
    .into_bytes();
    let commit_id = id(Kind::Commit, &commit);
    vec![
        (blob_id, Kind::Blob, blob),
        (sub_id, Kind::Tree, sub),
        (root_id, Kind::Tree, root),
        (commit_id, Kind::Commit, commit),
    ]
}

/// A pack's checksum, and the files it left in a mirror's pack folder (names and bytes).
type Seeded = (gix_hash::ObjectId, Vec<(String, Vec<u8>)>);

/// The files [`seed`]'s pack leaves in a mirror's pack folder once taken in, and its
/// checksum: taken in once per process (its files written and synced), then written as they
/// are into each mirror an input is offered to.
fn seeded() -> &'static Seeded {
    static SEEDED: std::sync::OnceLock<Seeded> = std::sync::OnceLock::new();
    SEEDED.get_or_init(|| {
        let dir = empty_mirror("seed");
        let seeded = offer(
            &dir,
            &seed_pack(),
            true,
            crate::ingest::HASHED_ON_ARRIVAL,
            None,
        )
        .expect("the seed is taken in");
        let pack_dir = dir.join("objects").join("pack");
        let files = files_in(&pack_dir)
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(pack_dir.join(&name)).expect("a file of the seed");
                (name, bytes)
            })
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        (seeded.checksum, files)
    })
}

/// [`seed`]'s objects as a pack.
fn seed_pack() -> Vec<u8> {
    let objects = seed();
    let mut pack = b"PACK\0\0\0\x02".to_vec();
    pack.extend_from_slice(&(objects.len() as u32).to_be_bytes());
    for (_, kind, data) in &objects {
        let object = gix_object::Data::new(data, *kind, gix_hash::Kind::Sha1);
        let entry = gix_pack::data::input::Entry::from_data_obj(
            &object,
            pack.len() as u64,
            gix_pack::bundle::write::Options::default().compression,
        )
        .expect("an entry of the seed");
        entry
            .header
            .write_to(entry.decompressed_size, &mut pack)
            .expect("writing to memory");
        pack.extend_from_slice(entry.compressed.as_deref().unwrap_or_default());
    }
    let mut hasher = gix_hash::hasher(gix_hash::Kind::Sha1);
    hasher.update(&pack);
    pack.extend_from_slice(hasher.try_finalize().expect("SHA-1").as_bytes());
    pack
}

/// Offer `data` as a later fetch's pack to a mirror holding [`seed`]'s objects, which a thin
/// pack's deltas may name as bases: it is taken in whole beside the seed's pack, and then
/// closed with the mirror's objects as a check reading every object whole finds it, or
/// refused with a typed error leaving only the seed's pack. Whether it was taken in.
pub fn ingest_later(data: &[u8]) -> bool {
    let dir = empty_mirror("seeded");
    let pack_dir = dir.join("objects").join("pack");
    let (seed_checksum, seed_files) = seeded();
    for (name, bytes) in seed_files {
        std::fs::write(pack_dir.join(name), bytes).expect("the seed's files");
    }
    let listing = || files_in(&pack_dir);
    let before = listing();
    let outcome = offer(&dir, data, false, crate::ingest::HASHED_ON_ARRIVAL, None);
    let taken = outcome.is_ok();
    match outcome {
        Ok(ingested) if ingested.checksum == *seed_checksum => {
            assert_eq!(listing(), before, "the seed's pack sent again");
        }
        Ok(ingested) => {
            let added: Vec<String> = listing()
                .into_iter()
                .filter(|name| !before.contains(name))
                .collect();
            assert_pack_files(&added, &ingested.checksum);
            // Every object it names is there: the mirror stays whole.
            let repo = gitcache_pack::Repository::open(&dir).expect("the mirror opens");
            let (pack, index) = (ingested.pack, ingested.index);
            repo.check_pack_closed(&pack, &index, false)
                .expect("a pack taken in is closed with the mirror's objects");
        }
        Err(Error::InvalidPack { .. } | Error::Refused(_)) => {
            assert_eq!(listing(), before, "left behind");
        }
        Err(err) => panic!("a local failure on fuzz input: {err}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    taken
}

/// The first id of the SHA-1 version 2 index `index`, and where its object lies in the pack.
fn first_in_index(index: &[u8]) -> Option<(gix_hash::ObjectId, u64)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(index.get(at..at + 4)?.try_into().ok()?))
    };
    let count = word(8 + 255 * 4)? as usize;
    let ids = 8 + 256 * 4;
    let id =
        gix_hash::ObjectId::from_bytes_or_panic(index.get(ids..ids + 20).filter(|_| count > 0)?);
    let offset = word(ids + count * 24)?;
    let offset = if offset & 0x8000_0000 == 0 {
        u64::from(offset)
    } else {
        let at = ids + count * 28 + (offset & 0x7fff_ffff) as usize * 8;
        u64::from_be_bytes(index.get(at..at + 8)?.try_into().ok()?)
    };
    Some((id, offset))
}

/// A first pack taken in as it was announced on `board`: should the kinds of its entries be
/// noted, the entries of every kind but blobs, and of commits and tags alone, copied as a
/// filtered clone is sent them, make a pack whose every entry reads (each delta's base
/// among them) and whose checksum is its trailer; and should its want be said to be a
/// commit or a tag, the entry at `wanted` (the want's) is one.
fn announced(board: &crate::live::Board, wanted: Option<u64>) {
    let Some(pack) = board.current() else {
        return;
    };
    let Some(kinds) = pack.entry_kinds() else {
        return;
    };
    assert!(kinds.offsets.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(kinds.offsets.len(), kinds.kinds.len());
    if kinds.wants_commits_or_tags
        && let Some(at) = wanted
    {
        let place = kinds.offsets.binary_search(&at).expect("the want's entry");
        assert!(
            matches!(
                kinds.kinds[place],
                Some(gix_object::Kind::Commit | gix_object::Kind::Tag)
            ),
            "a want said to be a commit or a tag is a {:?}",
            kinds.kinds[place]
        );
    }
    let kept: [fn(gix_object::Kind) -> bool; 2] = [
        |kind| kind != gix_object::Kind::Blob,
        |kind| matches!(kind, gix_object::Kind::Commit | gix_object::Kind::Tag),
    ];
    for keep in kept {
        let Some(taken) = kinds.taken(keep) else {
            continue;
        };
        let read_at = |buf: &mut [u8], at: u64| pack.read_at(buf, at);
        let (copy, checksum) = gitcache_pack::copy::copy_entries(
            &read_at,
            &taken,
            gix_hash::Kind::Sha1,
            Vec::new(),
            |_, _| Ok(()),
        )
        .expect("the entries of kinds kept copy");
        let mut read = &copy[..];
        let mut entries =
            gitcache_pack::incoming::Incoming::new(&mut read, gix_hash::Kind::Sha1, u64::MAX)
                .expect("the copy's header");
        let mut count = 0;
        while entries
            .next_entry()
            .expect("each entry copied reads")
            .is_some()
        {
            count += 1;
        }
        assert_eq!(count, taken.len());
        assert_eq!(entries.trailer().expect("a trailer"), checksum);
    }
}

/// What [`ingest`] left with blobs from `hash_from` bytes on hashed as they are read
/// (announced on `board`, if given, as fetched for its want): the index's bytes, or the
/// refusal.
fn ingest_hashing(
    data: &[u8],
    hash_from: u64,
    board: Option<(&std::sync::Arc<crate::live::Board>, gix_hash::ObjectId)>,
) -> Option<Vec<u8>> {
    let dir = empty_mirror("first");
    let announce = board.map(|(board, want)| crate::ingest::Announce {
        board: std::sync::Arc::clone(board),
        asked: crate::live::Asked::first(vec![want]),
    });
    let outcome = offer(&dir, data, true, hash_from, announce);
    let left = files_in(&dir.join("objects").join("pack"));
    let index = match outcome {
        Ok(ingested) => {
            assert_pack_files(&left, &ingested.checksum);
            Some(std::fs::read(&ingested.index).expect("the index written"))
        }
        Err(Error::InvalidPack { .. } | Error::Refused(_)) => {
            assert!(left.is_empty(), "left behind: {left:?}");
            None
        }
        Err(err) => panic!("a local failure on fuzz input: {err}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    index
}

/// An empty SHA-1 mirror in a temporary folder of this thread's, `name` telling the uses
/// apart (one left by a run cut short is removed first).
fn empty_mirror(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gitcache-ingest-fuzz-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    crate::mirror::Mirror::create(&dir, gix_hash::Kind::Sha1).expect("temporary mirror");
    std::fs::create_dir_all(dir.join("objects").join("pack")).expect("temporary folder");
    dir
}

/// `data` offered to the mirror at `dir` as a received pack, checked closed (within itself
/// when `alone`), blobs from `hash_from` bytes on hashed as they arrive.
fn offer(
    dir: &std::path::Path,
    data: &[u8],
    alone: bool,
    hash_from: u64,
    announce: Option<crate::ingest::Announce>,
) -> Result<crate::ingest::Ingested, Error> {
    let closure = gitcache_pack::Closure::Closed {
        self_contained: alone,
    };
    ingest_hashing_from(
        dir,
        gix_hash::Kind::Sha1,
        &mut &data[..],
        closure,
        announce,
        hash_from,
        crate::ingest::Guards {
            stop: &std::sync::atomic::AtomicBool::new(false),
            room: &|_| Ok(()),
        },
    )
}

/// The names in `dir`, sorted.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("pack folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `files` are those of one pack taken in, of checksum `checksum`: its `.idx` and `.pack`,
/// and its `.rev` unless it has deltas on bases named by id.
fn assert_pack_files(files: &[String], checksum: &gix_hash::ObjectId) {
    let stem = format!("pack-{checksum}");
    let whole = [format!("{stem}.idx"), format!("{stem}.pack")];
    let with_rev = [whole[0].clone(), whole[1].clone(), format!("{stem}.rev")];
    assert!(files == whole || files == with_rev, "{files:?}");
}

/// Offer `data` as a mirror manifest read from a shared store: refused with a typed error, or
/// taken, and then what it encodes to reads back as the same manifest.
pub fn manifest(data: &[u8]) {
    use crate::shared::MirrorManifest;
    if let Ok(manifest) = MirrorManifest::decode(data) {
        let encoded = manifest.encode();
        let again = MirrorManifest::decode(&encoded).expect("an encoded manifest reads back");
        assert_eq!(again, manifest);
    }
}
