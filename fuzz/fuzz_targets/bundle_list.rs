#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcache_protocol::fuzzing::bundle_list(data));
