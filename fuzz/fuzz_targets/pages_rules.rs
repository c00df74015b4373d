#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcache_pages::fuzzing::rules(data));
