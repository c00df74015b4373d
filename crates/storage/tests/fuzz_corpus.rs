//! Replays the stored-response fuzz corpus and saved crashes through the fuzz target's entry
//! point, so a plain `cargo test` exercises it.

use gitcache_testkit::fuzz::replay;

#[test]
fn response_entry_corpus() {
    let n = replay("response_entry", gitcache_storage::fuzzing::response_entry);
    assert!(n >= 4, "only {n} inputs replayed");
}
