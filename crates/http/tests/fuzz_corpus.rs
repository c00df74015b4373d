//! Replays the routing and gzip fuzz corpora and saved crashes through the fuzz targets'
//! entry points, so a plain `cargo test` exercises them.

use gitcache_testkit::fuzz::replay;

#[test]
fn route_corpus() {
    let n = replay("route", gitcache_http::fuzzing::route);
    assert!(n >= 10, "only {n} inputs replayed");
}

#[test]
fn gunzip_corpus() {
    let n = replay("gunzip", gitcache_http::fuzzing::gunzip);
    assert!(n >= 4, "only {n} inputs replayed");
}

#[test]
fn webhook_corpus() {
    let n = replay("webhook", gitcache_http::fuzzing::webhook);
    assert!(n >= 4, "only {n} inputs replayed");
}
