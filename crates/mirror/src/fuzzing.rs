//! The entry points shared by the fuzz targets and the tests that replay their corpora:
//! arbitrary bytes offered as a received pack, and as a shared mirror's manifest.

use crate::ingest::{Error, ingest_pack_checked};

/// Offer `data` as a first fetch's pack to an empty object directory, checked as one (its
/// history whole within it). It is taken in whole (a `.pack`, its `.idx` and, unless it has
/// deltas on bases named by id, its `.rev`; nothing else) or refused with a typed error
/// leaving the directory empty.
pub fn ingest(data: &[u8]) {
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
    let outcome = ingest_pack_checked(&dir, gix_hash::Kind::Sha1, &mut &data[..], closure);
    let mut left: Vec<String> = std::fs::read_dir(dir.join("objects").join("pack"))
        .expect("pack folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    match outcome {
        Ok(ingested) => {
            let stem = format!("pack-{}", ingested.checksum);
            let whole = [format!("{stem}.idx"), format!("{stem}.pack")];
            let with_rev = [whole[0].clone(), whole[1].clone(), format!("{stem}.rev")];
            assert!(left == whole || left == with_rev, "{left:?}");
        }
        Err(Error::InvalidPack { .. } | Error::Refused(_)) => {
            assert!(left.is_empty(), "left behind: {left:?}")
        }
        Err(err) => panic!("a local failure on fuzz input: {err}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
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
