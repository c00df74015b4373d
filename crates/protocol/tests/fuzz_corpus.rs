//! Replays the fuzz corpora and every saved crash through the fuzz targets' entry points, so a
//! plain `cargo test` on stable Rust exercises them.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut replayed = 0;
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(fuzz.join(folder).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                let data = fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{} panics", path.display());
                replayed += 1;
            }
        }
    }
    replayed
}

#[test]
fn pktline_decode_corpus() {
    let n = replay("pktline_decode", gitcache_protocol::fuzzing::pktline_decode);
    assert!(n >= 20, "only {n} inputs replayed");
}

#[test]
fn request_parse_corpus() {
    let n = replay("request_parse", gitcache_protocol::fuzzing::request_parse);
    assert!(n >= 20, "only {n} inputs replayed");
}

#[test]
fn pack_stream_corpus() {
    // Seeded from the recorded fetch responses, which it shares with pktline_decode.
    let n = replay("pack_stream", gitcache_protocol::fuzzing::pack_stream);
    assert!(n >= 10, "only {n} inputs replayed");
}
