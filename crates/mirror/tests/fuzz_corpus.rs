//! Replays the fuzz corpora and saved crashes through the fuzz targets' entry points: every
//! pack is taken in whole or refused leaving nothing behind; every manifest is refused or
//! reads back as itself.

use std::path::Path;

/// Every saved input of `target` through `entry`; how many there were.
fn replay(target: &str, entry: fn(&[u8])) -> usize {
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

/// The hand-made thin packs on the seed's objects, offered as later fetches' packs: the one
/// whole with the seed's objects is taken in (its base added from the mirror); the one naming
/// an object that is nowhere, and the one with a delta on the wrong base, are refused.
#[test]
fn thin_packs_on_the_seed_as_later_fetches() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/pack_ingest");
    for (name, taken) in [
        ("838b542aca32a8a89fd3ccc602ecbc31807def58", true),
        ("37339881e61c3247b0e52ed3b4edd7b9bc1cab72", false),
        ("dbef2cb0336df7deeb598da179bd0df913e4a996", false),
    ] {
        let data = std::fs::read(corpus.join(name)).unwrap();
        assert_eq!(
            gitcache_mirror::fuzzing::ingest_later(&data),
            taken,
            "{name}"
        );
    }
}

#[test]
fn mirror_manifest_corpus() {
    let replayed = replay("mirror_manifest", gitcache_mirror::fuzzing::manifest);
    assert!(replayed >= 3, "only {replayed} inputs replayed");
}
