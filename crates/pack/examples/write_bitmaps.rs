//! `write_bitmaps <repo> [--mark-only | --graph-only | --no-graph | --reuse <old.idx>] <tip>...`: mark the
//! repository's pack that is the closure of the tips with them, write its commit graph and
//! then gitcache's reachability bitmaps for it (as a mirror's consolidation does; with
//! `--reuse`, from the bitmaps of a replaced pack whose index and bitmap are at that path) and
//! print how long each took; with `--mark-only`, only mark it; with `--graph-only`, write no
//! bitmaps; with `--no-graph`, write no commit graph. Used to set it beside `git repack -adb` (benches/README.md).
//!
//! ```sh
//! cargo run --release -p gitcache-pack --example write_bitmaps -- repo.git $(git -C repo.git for-each-ref --format='%(objectname)')
//! ```

use gitcache_pack::Repository;
use gix_hash::ObjectId;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or(
        "usage: write_bitmaps <repo> [--mark-only | --no-graph | --reuse <old.idx>] <tip>...",
    )?;
    let mut args = args.peekable();
    let mark_only = args.next_if(|a| a == "--mark-only").is_some();
    let graph_only = args.next_if(|a| a == "--graph-only").is_some();
    let no_graph = args.next_if(|a| a == "--no-graph").is_some();
    let reuse = if args.peek().is_some_and(|a| a == "--reuse") {
        args.next();
        Some(std::path::PathBuf::from(
            args.next().ok_or("--reuse needs a path")?,
        ))
    } else {
        None
    };
    let tips = args
        .map(|t| ObjectId::from_hex(t.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let repo = Repository::open(path)?;
    let marked = repo.mark_pack_tips(&tips)?;
    if mark_only {
        println!("marked: {}", marked.is_some());
        return Ok(());
    }
    let pack = repo.pack_marked_with(&tips)?;
    if let Some(pack) = pack.filter(|_| !no_graph) {
        let started = std::time::Instant::now();
        let graph = repo.write_commit_graph(&pack)?;
        let took = started.elapsed().as_secs_f64();
        match graph {
            Some(graph) => println!("{took:.3} s: {}", graph.display()),
            None => println!("{took:.3} s: no commit graph (git's format cannot hold it)"),
        }
    }
    if graph_only {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let written = repo.write_bitmaps_reusing(&tips, reuse.as_deref())?;
    let took = started.elapsed().as_secs_f64();
    match written {
        Some(w) => println!(
            "{took:.3} s: {} ({} bitmaps of the replaced pack reused)",
            w.path.display(),
            w.reused
        ),
        None => println!("{took:.3} s: nothing written (no pack is the closure of the tips)"),
    }
    Ok(())
}
