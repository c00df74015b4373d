//! Replays the fuzz corpora and saved crashes through the fuzz targets' entry points: every
//! pack is taken in whole or refused leaving nothing behind; every manifest is refused or
//! reads back as itself.

use std::path::Path;

/// Every saved input of `target` through `entry`; how many there were.
fn replay(target: &str, mut entry: impl FnMut(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut replayed = 0;
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else {
            continue;
        };
        for entry_path in entries {
            let path = entry_path.unwrap().path();
            if path.file_name().is_some_and(|n| n != ".gitkeep") {
                entry(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
    }
    replayed
}

#[test]
fn pack_ingest_corpus() {
    let replayed = replay("pack_ingest", gitcache_mirror::fuzzing::ingest);
    assert!(replayed >= 5, "only {replayed} inputs replayed");
}

/// The corpus offered as later fetches' packs: some thin packs on the seed's objects are
/// taken in (their bases added from the mirror), some refused.
#[test]
fn pack_ingest_corpus_as_later_fetches() {
    let (mut taken, mut refused) = (0, 0);
    replay("pack_ingest", |data| {
        if gitcache_mirror::fuzzing::ingest_later(data) {
            taken += 1;
        } else {
            refused += 1;
        }
    });
    assert!(
        taken >= 1 && refused >= 1,
        "{taken} taken, {refused} refused"
    );
}

#[test]
fn mirror_manifest_corpus() {
    let replayed = replay("mirror_manifest", gitcache_mirror::fuzzing::manifest);
    assert!(replayed >= 3, "only {replayed} inputs replayed");
}
