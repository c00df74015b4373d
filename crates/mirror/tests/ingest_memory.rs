//! The memory a received pack takes in does not grow with its largest file stored whole: such
//! a blob is hashed as it is read, never decoded whole. Its own test binary: the heap is
//! counted for the whole process.

use gitcache_testkit::git::{git_stdout as git, git_with_input};
use gitcache_testkit::heap::{Counting, Peak};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A pack of one 24 MiB blob of random bytes (stored whole: nothing to delta against) is
/// taken in, checked, with a few MiB of heap at most; decoded whole, the blob alone took 24.
#[test]
fn a_large_blob_stored_whole_is_taken_in_without_being_whole_in_memory() {
    const SIZE: usize = 24 << 20;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.git");
    git(
        dir.path(),
        &["init", "-q", "--bare", source.to_str().unwrap()],
    );
    let blob = gitcache_testkit::repo::Rng::new(3).bytes(SIZE);
    let id = git_with_input(&source, &["hash-object", "-w", "--stdin"], &blob);
    drop(blob);
    let pack = git_with_input(&source, &["pack-objects", "--stdout", "-q"], &id);
    let mirror = dir.path().join("mirror.git");
    git(
        dir.path(),
        &["init", "-q", "--bare", mirror.to_str().unwrap()],
    );
    // The pack is read from a file, as from the network: not held in memory here either.
    let file = dir.path().join("received.pack");
    std::fs::write(&file, &pack).unwrap();
    drop(pack);

    let peak = Peak::start();
    let mut input = std::io::BufReader::new(std::fs::File::open(&file).unwrap());
    let closed = gitcache_pack::Closure::Closed {
        self_contained: true,
    };
    let ingested = gitcache_mirror::ingest::ingest_pack_checked(
        &mirror,
        gix_hash::Kind::Sha1,
        &mut input,
        closed,
    )
    .unwrap();
    let grown = peak.grown();
    assert_eq!(ingested.objects, 1);
    assert!(
        grown < 4 << 20,
        "taking in a pack of one {SIZE}-byte blob took {grown} bytes of heap"
    );
    // And the blob is there under its id, whole.
    let size = git(
        &mirror,
        &["cat-file", "-s", std::str::from_utf8(&id).unwrap().trim()],
    );
    assert_eq!(size.trim(), SIZE.to_string());
    git(&mirror, &["fsck", "--strict", "--no-progress"]);
}
