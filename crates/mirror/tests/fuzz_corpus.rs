//! Replays the pack-ingestion fuzz corpus and saved crashes through the fuzz target's entry
//! point: every input is taken in whole or refused leaving nothing behind.

use std::path::Path;

#[test]
fn pack_ingest_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut replayed = 0;
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join("pack_ingest")) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n != ".gitkeep") {
                gitcache_mirror::fuzzing::ingest(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 5, "only {replayed} inputs replayed");
}
