#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcache_protocol::fuzzing::ls_refs_response(data));
