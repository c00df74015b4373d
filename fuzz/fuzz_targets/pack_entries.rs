#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcache_pack::fuzzing::incoming(data));
