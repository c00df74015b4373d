//! `ingest <pack> [--then <thin pack>] [sha1|sha256]`: take a pack file into a new empty
//! mirror as a first fetch does (index, verify, check that its history is whole within the
//! pack), then optionally a thin pack as a later fetch does, and print how long each took.
//! Used to measure the miss path without an upstream (benches/README.md).
//!
//! ```sh
//! cargo run --release -p gitcache-mirror --example ingest -- repo.git/objects/pack/pack-*.pack
//! ```

use std::io::BufReader;
use std::time::Instant;

use gix_hash::Kind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: ingest <pack> [--then <thin pack>] [sha1|sha256]";
    let mut args = std::env::args().skip(1).peekable();
    let pack = args.next().ok_or(USAGE)?;
    let then = if args.peek().is_some_and(|a| a == "--then") {
        args.next();
        Some(args.next().ok_or(USAGE)?)
    } else {
        None
    };
    let format = match args.next().as_deref() {
        None | Some("sha1") => Kind::Sha1,
        Some("sha256") => Kind::Sha256,
        Some(other) => return Err(format!("unknown object format {other}").into()),
    };
    let dir = tempfile::tempdir()?;
    let git_dir = dir.path().join("mirror.git");
    gitcache_mirror::mirror::Mirror::create(&git_dir, format)?;
    // The first pack stands alone; a pack taken `--then` (a fetch's, thin) builds on it.
    for (pack, self_contained) in std::iter::once((pack, true)).chain(then.map(|p| (p, false))) {
        let started = Instant::now();
        let mut input = BufReader::new(std::fs::File::open(&pack)?);
        let closure = gitcache_pack::Closure::Closed { self_contained };
        let ingested =
            gitcache_mirror::ingest::ingest_pack_checked(&git_dir, format, &mut input, closure)?;
        println!(
            "{pack}: {} objects, read, indexed and checked in {:.3} s",
            ingested.objects,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
