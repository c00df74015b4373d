//! Replays the fuzz corpora and every saved crash through the fuzz targets' entry points, so a
//! plain `cargo test` on stable Rust exercises them.

use gitcache_testkit::fuzz::replay;

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

#[test]
fn advertisement_corpus() {
    let n = replay("advertisement", gitcache_protocol::fuzzing::advertisement);
    assert!(n >= 5, "only {n} inputs replayed");
}

#[test]
fn ls_refs_response_corpus() {
    let n = replay(
        "ls_refs_response",
        gitcache_protocol::fuzzing::ls_refs_response,
    );
    assert!(n >= 5, "only {n} inputs replayed");
}

#[test]
fn bundle_list_corpus() {
    let n = replay("bundle_list", gitcache_protocol::fuzzing::bundle_list);
    assert!(n >= 5, "only {n} inputs replayed");
}
