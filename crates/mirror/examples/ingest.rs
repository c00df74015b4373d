//! `ingest <pack> [sha1|sha256]`: take a pack file into a new empty mirror as a first fetch
//! does (index, verify, check that its history is whole within the pack) and print how long
//! it took. Used to measure the miss path without an upstream (benches/README.md).
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
    let mut input = BufReader::new(std::fs::File::open(&pack)?);
    let closure = gitcache_pack::Closure::Closed {
        self_contained: true,
    };
    let ingested =
        gitcache_mirror::ingest::ingest_pack_checked(&git_dir, format, &mut input, closure)?;
    println!(
        "{} objects: read, indexed and checked in {:.3} s",
        ingested.objects,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
