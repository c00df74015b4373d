//! `ingest <pack> [sha1|sha256]`: take a pack file into a new empty mirror as a first fetch
//! does (index, verify, check that its history is whole within the pack) and print how long
//! each step took. Used to measure the miss path without an upstream (benches/README.md).
//!
//! ```sh
//! cargo run --release -p gitcache-mirror --example ingest -- repo.git/objects/pack/pack-*.pack
//! ```

use std::io::BufReader;
use std::time::Instant;

use gix_hash::Kind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pack = args.next().ok_or("usage: ingest <pack> [sha1|sha256]")?;
    let format = match args.next().as_deref() {
        None | Some("sha1") => Kind::Sha1,
        Some("sha256") => Kind::Sha256,
        Some(other) => return Err(format!("unknown object format {other}").into()),
    };
    let dir = tempfile::tempdir()?;
    let git_dir = dir.path().join("mirror.git");
    gitcache_mirror::mirror::Mirror::create(&git_dir, format)?;
    let started = Instant::now();
    let checked = std::cell::Cell::new(None);
    let check = |pack: &std::path::Path, index: &std::path::Path| {
        let indexed = started.elapsed();
        let result =
            gitcache_pack::Repository::open(&git_dir)?.check_pack_closed(pack, index, true);
        checked.set(Some((indexed, started.elapsed() - indexed)));
        result
    };
    let mut input = BufReader::new(std::fs::File::open(&pack)?);
    let ingested =
        gitcache_mirror::ingest::ingest_pack_checked(&git_dir, format, &mut input, &check)?;
    let total = started.elapsed();
    let (indexed, check) = checked.get().ok_or("the check did not run")?;
    println!(
        "{} objects: indexed in {:.3} s, checked in {:.3} s, {:.3} s in all",
        ingested.objects,
        indexed.as_secs_f64(),
        check.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}
