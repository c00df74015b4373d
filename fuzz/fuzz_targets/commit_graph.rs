#![no_main]
//! Reads the input as a commit graph file (its checksum made to match).

libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcache_pack::fuzzing::commit_graph(data));
