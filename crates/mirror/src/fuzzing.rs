//! The entry points shared by the fuzz targets and the tests that replay their corpora:
//! arbitrary bytes offered as a received pack, and as a shared mirror's manifest.

use crate::ingest::{Error, ingest_hashing_from};

/// Offer `data` as a first fetch's pack to an empty object directory, checked as one (its
/// history whole within it). It is taken in whole (a `.pack`, its `.idx` and, unless it has
/// deltas on bases named by id, its `.rev`; nothing else) or refused with a typed error
/// leaving the directory empty. It is offered twice, blobs hashed as they are read from the
/// usual size on and then every one: both end alike, with the same index.
pub fn ingest(data: &[u8]) {
    let usual = ingest_hashing(data, crate::ingest::HASHED_ON_ARRIVAL);
    let every = ingest_hashing(data, 0);
    assert_eq!(
        usual, every,
        "hashing every blob on arrival changed the outcome"
    );
}

/// What [`ingest`] left with blobs from `hash_from` bytes on hashed as they are read:
/// the index's bytes, or the refusal.
fn ingest_hashing(data: &[u8], hash_from: u64) -> Option<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!(
        "gitcache-ingest-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    crate::mirror::Mirror::create(&dir, gix_hash::Kind::Sha1).expect("temporary mirror");
    std::fs::create_dir_all(dir.join("objects").join("pack")).expect("temporary folder");
    let closure = gitcache_pack::Closure::Closed {
        self_contained: true,
    };
    let outcome = ingest_hashing_from(
        &dir,
        gix_hash::Kind::Sha1,
        &mut &data[..],
        closure,
        None,
        hash_from,
    );
    let mut left: Vec<String> = std::fs::read_dir(dir.join("objects").join("pack"))
        .expect("pack folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let index = match outcome {
        Ok(ingested) => {
            let stem = format!("pack-{}", ingested.checksum);
            let whole = [format!("{stem}.idx"), format!("{stem}.pack")];
            let with_rev = [whole[0].clone(), whole[1].clone(), format!("{stem}.rev")];
            assert!(left == whole || left == with_rev, "{left:?}");
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
