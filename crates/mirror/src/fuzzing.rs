//! The entry point shared by the pack-ingestion fuzz target and the test that replays its
//! corpus: arbitrary bytes offered as a received pack.

use crate::ingest::{Error, ingest_pack};

/// Offer `data` as a pack to an empty object directory. It is taken in whole (a `.pack` and
/// its `.idx`, nothing else) or refused with a typed error leaving the directory empty.
pub fn ingest(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!(
        "gitcache-ingest-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("objects").join("pack")).expect("temporary folder");
    let outcome = ingest_pack(&dir, gix_hash::Kind::Sha1, &mut &data[..]);
    let mut left: Vec<String> = std::fs::read_dir(dir.join("objects").join("pack"))
        .expect("pack folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    match outcome {
        Ok(ingested) => {
            let stem = format!("pack-{}", ingested.checksum);
            assert_eq!(left, [format!("{stem}.idx"), format!("{stem}.pack")]);
        }
        Err(Error::InvalidPack { .. }) => assert!(left.is_empty(), "left behind: {left:?}"),
        Err(err) => panic!("a local failure on fuzz input: {err}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
