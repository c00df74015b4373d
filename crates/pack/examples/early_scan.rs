//! `early_scan <pack> [--no-read-back] [--told] [sha256] <commit>... [walk=<commit>]... [have=<commit>]... [deep=<commit>:<depth>]... [copy=<dir>]`:
//! read a pack file as a mirror reads its first pack while it arrives (reading trees' bases no
//! longer kept back from the file, unless told not to), looking for the depth-one closures of
//! the commits, walking the history of those given as `walk=` down to those given as `have=`
//! (as for an incremental fetch), following those given as `deep=` to their depth (as for a
//! shallow clone), and print how long it took, how many objects were found,
//! whether the closures were, and which entries were passed over undecoded and why; with
//! `copy=<dir>`, then copy what was found to a pack and index in that folder as a mirror does
//! (`Found::write_pack`), and print how long that took. With `--told`, every blob stored
//! whole is hashed in a pass before (timed apart) and told to the reading (`Tips::told_by`):
//! the most a mirror's receiving tells (it tells only those arriving past where the reading
//! has come). Used to see where an early answer's time goes (benches/README.md).
//!
//! ```sh
//! tip=$(git -C repo.git rev-parse HEAD)
//! cargo run --release -p gitcache-pack --example early_scan -- \
//!     repo.git/objects/pack/pack-*.pack $tip walk=$tip have=$(git -C repo.git rev-parse HEAD~50)
//! ```

use std::io::BufReader;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use gitcache_pack::early::{Limits, Tips, scan_for};
use gitcache_pack::incoming::{Incoming, Told};
use gix_hash::ObjectId;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: early_scan <pack> [--no-read-back] [--told] [sha256] <commit>... \
        [walk=<commit>]... [have=<commit>]... [deep=<commit>:<depth>]... [copy=<dir>]";
    let mut args = std::env::args().skip(1).peekable();
    let pack = args.next().ok_or(USAGE)?;
    let read_back = args.next_if(|a| a == "--no-read-back").is_none();
    let told = args.next_if(|a| a == "--told").is_some();
    let hash = match args.next_if(|a| a == "sha256") {
        Some(_) => gix_hash::Kind::Sha256,
        None => gix_hash::Kind::Sha1,
    };
    let mut wants = gitcache_pack::early::Wants::default();
    let mut copy_to = None;
    for arg in args {
        if let Some(dir) = arg.strip_prefix("copy=") {
            copy_to = Some(std::path::PathBuf::from(dir));
            continue;
        }
        if let Some(deep) = arg.strip_prefix("deep=") {
            let (hex, depth) = deep.split_once(':').ok_or(USAGE)?;
            wants
                .deep
                .push((ObjectId::from_hex(hex.as_bytes())?, depth.parse()?));
            continue;
        }
        let (list, hex) = match arg.split_once('=') {
            Some(("walk", hex)) => (&mut wants.walked, hex),
            Some(("have", hex)) => (&mut wants.haves, hex),
            _ => (&mut wants.tips, arg.as_str()),
        };
        list.push(ObjectId::from_hex(hex.as_bytes())?);
    }
    let mut tips = Tips::default().wanting(wants);
    if told {
        let started = Instant::now();
        let told = blobs_told(&pack, hash)?;
        println!(
            "{:.3} s: {} blobs stored whole hashed beforehand",
            started.elapsed().as_secs_f64(),
            told.len()
        );
        tips = tips.told_by(move |at| told.get(&at).copied());
    }
    let started = Instant::now();
    let mut read = BufReader::with_capacity(1 << 16, std::fs::File::open(&pack)?);
    if read_back {
        let file = std::fs::File::open(&pack)?;
        tips =
            tips.reading_back(move |buf, at| std::os::unix::fs::FileExt::read_at(&file, buf, at));
    }
    let found = scan_for(
        &mut read,
        hash,
        Limits::default(),
        &AtomicBool::new(false),
        Some(&mut tips),
    )?;
    println!(
        "{:.3} s: {} of {} objects found ({} bytes of entries), to the end: {}, closures \
         complete: {}; objects read back: {}; passed over: {:?}; {tips:?}",
        started.elapsed().as_secs_f64(),
        found.len(),
        found.entries(),
        found.bytes(),
        found.checksum().is_some(),
        tips.complete(),
        found.read_back(),
        found.passed(),
    );
    if let Some(dir) = copy_to {
        let file = std::fs::File::open(&pack)?;
        let read_at = |buf: &mut [u8], at| std::os::unix::fs::FileExt::read_at(&file, buf, at);
        let started = Instant::now();
        let written = found.write_pack(
            &read_at,
            &dir.join("early.pack"),
            &dir.join("early.idx"),
            &[],
        )?;
        println!(
            "{:.3} s: {} objects copied, {} bytes",
            started.elapsed().as_secs_f64(),
            written.objects,
            std::fs::metadata(dir.join("early.pack"))?.len(),
        );
    }
    Ok(())
}

/// Every blob stored whole in `pack`, as a receiving hashing every one would tell of it.
fn blobs_told(
    pack: &str,
    hash: gix_hash::Kind,
) -> Result<std::collections::HashMap<u64, Told>, Box<dyn std::error::Error>> {
    let mut read = BufReader::with_capacity(1 << 16, std::fs::File::open(pack)?);
    let mut incoming = Incoming::new(&mut read, hash, 0)?;
    let mut told = std::collections::HashMap::new();
    while let Some(entry) = incoming.next_entry()? {
        if let Some(id) = entry.id {
            let (end, crc32) = (entry.end(), entry.crc32);
            told.insert(entry.offset, Told { end, crc32, id });
        }
    }
    Ok(told)
}
