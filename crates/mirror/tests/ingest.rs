//! Received packs go into a mirror whole, or not at all.

use std::path::Path;

use gitcache_mirror::ingest::{Error, ingest_pack, ingest_pack_checked, remove_leftovers};
use gitcache_pack::Closure;
use gitcache_testkit::git::{git_stdout as git, git_with_input};
use gitcache_testkit::packfile::{entry_header, pack_of, whole_entry, zlib_stored};
use gitcache_testkit::repo::{self, RepoSpec};
use gix_hash::Kind;

/// `git pack-objects --stdout <args>` in `repo` with `revs` on stdin.
/// The object format named `format` (`sha1` or `sha256`).
fn hash_kind(format: &str) -> Kind {
    if format == "sha1" {
        Kind::Sha1
    } else {
        Kind::Sha256
    }
}

fn pack_objects(repo: &Path, args: &[&str], revs: &str) -> Vec<u8> {
    // What an upstream sends when asked for ofs-delta, as the mirror always asks.
    let mut all = vec!["pack-objects", "--delta-base-offset", "--stdout", "-q"];
    all.extend_from_slice(args);
    git_with_input(repo, &all, revs.as_bytes())
}

/// A repository generated from `spec` at `dir/src.git`, and a pack of all its objects.
fn source_and_pack(dir: &Path, spec: &RepoSpec) -> (std::path::PathBuf, Vec<u8>) {
    let source = repo::generate(&dir.join("src.git"), spec).unwrap().path;
    let pack = pack_objects(&source, &["--revs", "--all"], "");
    (source, pack)
}

fn pack_dir_listing(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join("objects/pack"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn empty_mirror(dir: &Path, format: &str) -> std::path::PathBuf {
    let path = dir.join("mirror.git");
    git(
        dir,
        &[
            "init",
            "-q",
            "--bare",
            &format!("--object-format={format}"),
            path.to_str().unwrap(),
        ],
    );
    path
}

fn set_refs_like(mirror: &Path, source: &Path) {
    for line in git(
        source,
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    )
    .lines()
    {
        let (name, oid) = line.split_once(' ').unwrap();
        git(mirror, &["update-ref", name, oid]);
    }
}

#[test]
fn a_full_pack_lands_whole_and_fsck_passes() {
    for format in ["sha1", "sha256"] {
        let dir = tempfile::tempdir().unwrap();
        let spec = if format == "sha1" {
            RepoSpec::small(61)
        } else {
            RepoSpec::small(61).sha256()
        };
        let source = repo::generate(&dir.path().join("src.git"), &spec)
            .unwrap()
            .path;
        let pack = pack_objects(&source, &["--revs", "--all"], "");
        let mirror = empty_mirror(dir.path(), format);
        let kind = hash_kind(format);
        let ingested = ingest_pack(&mirror, kind, &mut &pack[..]).unwrap();
        assert!(ingested.pack.is_file() && ingested.index.is_file());
        assert_eq!(
            ingested.pack.file_name().unwrap().to_string_lossy(),
            format!("pack-{}.pack", ingested.checksum)
        );
        let reachable = git(&source, &["rev-list", "--objects", "--all"])
            .lines()
            .count();
        assert_eq!(ingested.objects as usize, reachable);
        assert!(
            pack_dir_listing(&mirror)
                .iter()
                .all(|n| !n.starts_with("incoming-"))
        );
        set_refs_like(&mirror, &source);
        git(&mirror, &["fsck", "--strict", "--no-progress"]);
        // The same pack again changes nothing.
        let again = ingest_pack(&mirror, kind, &mut &pack[..]).unwrap();
        assert_eq!(again.checksum, ingested.checksum);
        assert_eq!(
            pack_dir_listing(&mirror).len(),
            3,
            "pack, index, reverse index"
        );
        // A pack taken in before reverse indexes were written gets one when it comes again.
        let rev = ingested.index.with_extension("rev");
        let written = std::fs::read(&rev).unwrap();
        std::fs::remove_file(&rev).unwrap();
        let again = ingest_pack(&mirror, kind, &mut &pack[..]).unwrap();
        assert!(!again.fresh);
        assert!(std::fs::read(&rev).unwrap() == written);
    }
}

/// Each object of the pack at `idx` as `git verify-pack -v` lists it: its offset, the size
/// of its entry, and whether it is stored whole.
fn entries_of(idx: &Path) -> std::collections::HashMap<String, (usize, usize, bool)> {
    let listed = git(
        idx.parent().unwrap(),
        &["verify-pack", "-v", idx.to_str().unwrap()],
    );
    listed
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [oid, _kind, _size, len, offset, rest @ ..] = &fields[..] else {
                return None;
            };
            Some((
                oid.to_string(),
                (offset.parse().ok()?, len.parse().ok()?, rest.is_empty()),
            ))
        })
        .collect()
}

/// A repository generated from `RepoSpec::small(seed)` at `dir/src.git`, and a SHA-1 mirror
/// of it beside it that took a pack of all its objects in and has its refs: the source, the
/// mirror, and that first pack.
fn mirrored_source(
    dir: &Path,
    seed: u64,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    gitcache_mirror::ingest::Ingested,
) {
    let source = repo::generate(&dir.join("src.git"), &RepoSpec::small(seed))
        .unwrap()
        .path;
    let mirror = empty_mirror(dir, "sha1");
    let first = ingest_pack(
        &mirror,
        Kind::Sha1,
        &mut &pack_objects(&source, &["--revs", "--all"], "")[..],
    )
    .unwrap();
    set_refs_like(&mirror, &source);
    (source, mirror, first)
}

#[test]
fn a_thin_pack_is_completed_from_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let (source, mirror, first) = mirrored_source(dir.path(), 62);
    // The client's side a few commits back: its versions of the files changed since are
    // stored as deltas of newer ones in the mirror's pack, the others whole.
    let old = git(&source, &["rev-parse", "main~3"]).trim().to_owned();

    let new = repo::append_commits(&source, "main", 5, 3).unwrap();
    let thin = pack_objects(&source, &["--revs", "--thin"], &format!("{new}\n^{old}\n"));
    // Read one byte at a time: the file is still exactly the bytes the entries came from.
    let mut bytewise = std::io::BufReader::with_capacity(1, &thin[..]);
    let ingested = ingest_pack(&mirror, Kind::Sha1, &mut bytewise).unwrap();
    let stored = std::fs::read(&ingested.pack).unwrap();
    assert!(
        stored[12..thin.len() - 20] == thin[12..thin.len() - 20],
        "the entries received are kept as they came"
    );
    let sent = u32::from_be_bytes(thin[8..12].try_into().unwrap());
    assert!(
        ingested.objects > sent,
        "bases added to the {sent} objects sent"
    );
    git(&mirror, &["update-ref", "refs/heads/main", &new]);
    git(&mirror, &["fsck", "--strict", "--no-progress"]);
    // The bases were added at the end, the deltas still naming them by id: the pack stands
    // alone, and its index is the one git writes for it.
    let theirs = dir.path().join("theirs.idx");
    git(
        dir.path(),
        &[
            "index-pack",
            "-o",
            theirs.to_str().unwrap(),
            ingested.pack.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&ingested.index).unwrap() == std::fs::read(&theirs).unwrap());
    // A base the mirror stores whole is added as it is stored, byte for byte; one stored as
    // a delta is added whole (index-pack and fsck above read both).
    let (before, after) = (entries_of(&first.index), entries_of(&ingested.index));
    let (old_pack, new_pack) = (std::fs::read(&first.pack).unwrap(), stored);
    let (mut copied, mut made) = (0, 0);
    for (oid, &(at, len, whole)) in &after {
        if at < thin.len() - 20 {
            continue;
        }
        assert!(whole, "{oid}: a base is added whole");
        let (there, there_len, stored_whole) = before[oid];
        if stored_whole {
            assert!(
                new_pack[at..at + len] == old_pack[there..there + there_len],
                "{oid}"
            );
            copied += 1;
        } else {
            made += 1;
        }
    }
    assert!(copied > 0 && made > 0, "{copied} copied, {made} made whole");
    let verified = git(
        dir.path(),
        &["verify-pack", "-v", ingested.index.to_str().unwrap()],
    );
    assert!(
        verified.contains(" ok") || verified.contains(": ok"),
        "{verified}"
    );
}

/// A thin pack is completed from the mirror whatever it is taken in as, but the bases added
/// count as the mirror's only when the mirror's objects do: a pack that must stand alone (a
/// first fetch, vouched for as its tips' whole history) with deltas on bases it lacks is
/// refused. And a delta on a base added is checked where it differs from it: an entry
/// naming an object there is not refuses the pack.
#[test]
fn bases_added_count_as_the_mirrors_only_where_its_objects_count() {
    let dir = tempfile::tempdir().unwrap();
    let (source, mirror, _) = mirrored_source(dir.path(), 63);
    let old = git(&source, &["rev-parse", "main"]).trim().to_owned();
    let before = pack_dir_listing(&mirror);

    // A root commit whose tree is the mirror's root tree and one new file: the commit, the
    // new blob, and the tree as a delta on the mirror's root tree (named by id). Everything
    // it names but the files it shares with the mirror's tree is in the pack. (Written by
    // hand: git makes no delta on an unrelated history's tree.)
    let root = git(&source, &["rev-parse", &format!("{old}^{{tree}}")])
        .trim()
        .to_owned();
    let base = git_with_input(&source, &["cat-file", "tree", &root], b"");
    let content = b"new file\n";
    let blob = git_with_input(&source, &["hash-object", "--stdin"], content);
    let blob =
        gix_hash::ObjectId::from_hex(String::from_utf8(blob).unwrap().trim().as_bytes()).unwrap();
    let mut added = b"100644 zz-new\0".to_vec();
    added.extend_from_slice(blob.as_bytes());
    let mut grown = base.clone();
    grown.extend_from_slice(&added);
    let grown = git_with_input(&source, &["hash-object", "-t", "tree", "--stdin"], &grown);
    let grown = String::from_utf8(grown).unwrap().trim().to_owned();
    let commit = format!(
        "tree {grown}\nauthor A <a@example.com> 1 +0000\ncommitter A <a@example.com> 1 +0000\n\nalone\n"
    );
    let root_id = gix_hash::ObjectId::from_hex(root.as_bytes()).unwrap();
    let thin = pack_of(&[
        &whole_entry(1, commit.as_bytes(), 0),
        &whole_entry(3, content, 0),
        &tree_grown(&root_id, base.len(), &added),
    ]);
    let alone = Closure::Closed {
        self_contained: true,
    };
    let err = ingest_pack_checked(&mirror, Kind::Sha1, &mut &thin[..], alone).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refused(gitcache_pack::Error::MissingObject { .. })
        ),
        "{err}"
    );
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    // Taken in as a later fetch, the same pack is whole with the mirror's objects.
    let closed = Closure::Closed {
        self_contained: false,
    };
    ingest_pack_checked(&mirror, Kind::Sha1, &mut &thin[..], closed).unwrap();
    let before = pack_dir_listing(&mirror);

    // The mirror's root tree with one more entry, naming a blob that is nowhere: sent as a
    // delta on the root tree the mirror has (a thin pack's base, added).
    let mut listing = git(&source, &["ls-tree", &root]);
    let nowhere = "5".repeat(old.len());
    listing.push_str(&format!("100644 blob {nowhere}\tzz-nowhere\n"));
    let holey = git_with_input(&source, &["mktree", "--missing"], listing.as_bytes());
    let holey = String::from_utf8(holey).unwrap().trim().to_owned();
    let commit = git(&source, &["commit-tree", &holey, "-p", &old, "-m", "holey"])
        .trim()
        .to_owned();
    let thin = pack_objects(
        &source,
        &["--revs", "--thin", "--missing=allow-any"],
        &format!("{commit}\n^{old}\n"),
    );
    let sent = u32::from_be_bytes(thin[8..12].try_into().unwrap());
    assert_eq!(sent, 2, "the commit and its tree, a delta on the mirror's");
    assert!(
        thin.windows(root_id.as_bytes().len())
            .any(|w| w == root_id.as_bytes()),
        "the tree's delta names the mirror's root tree as its base"
    );
    let err = ingest_pack_checked(&mirror, Kind::Sha1, &mut &thin[..], closed).unwrap_err();
    assert_refused_missing(&err, &nowhere);
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
}

/// A pack without its reverse index (taken in before they were written), or with a damaged
/// one, gets it when the mirror is opened: the same bytes as written with its index.
#[test]
fn reverse_indexes_packs_lack_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pack) = source_and_pack(dir.path(), &RepoSpec::small(65));
    let mirror = empty_mirror(dir.path(), "sha1");
    let ingested = ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap();
    let rev = ingested.index.with_extension("rev");
    let written = std::fs::read(&rev).unwrap();
    let opened = gitcache_mirror::mirror::Mirror::open(&mirror);
    let mut damaged = written.clone();
    damaged[20] ^= 1;
    for (what, bytes) in [("lacking", None), ("damaged", Some(damaged))] {
        std::fs::remove_file(&rev).unwrap();
        if let Some(bytes) = bytes {
            std::fs::write(&rev, bytes).unwrap();
        }
        opened.write_missing_graphs().unwrap();
        assert!(std::fs::read(&rev).unwrap() == written, "{what}");
    }
    let listing = pack_dir_listing(&mirror);
    assert!(
        listing.iter().all(|n| !n.starts_with("incoming-")),
        "{listing:?}"
    );
}

#[test]
fn broken_packs_leave_the_mirror_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pack) = source_and_pack(dir.path(), &RepoSpec::small(63));
    let mirror = empty_mirror(dir.path(), "sha1");
    let before = pack_dir_listing(&mirror);

    let mut corrupt = pack.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x55;
    let mut bad_checksum = pack.clone();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", pack[..pack.len() / 3].to_vec()),
        ("corrupt", corrupt),
        ("bad checksum", bad_checksum),
        (
            "garbage",
            b"this is not a pack at all, but long enough to be read".to_vec(),
        ),
        ("empty", Vec::new()),
        ("header only", pack[..12].to_vec()),
    ];
    for (name, bytes) in cases {
        // Read at once, and in pieces shorter than the trailer.
        for piece in [1 << 16, 7] {
            let mut reader = std::io::BufReader::with_capacity(piece, &bytes[..]);
            let err = ingest_pack(&mirror, Kind::Sha1, &mut reader).unwrap_err();
            assert!(matches!(err, Error::InvalidPack { .. }), "{name}: {err:?}");
            assert!(err.is_upstream_fault());
            assert_eq!(
                pack_dir_listing(&mirror),
                before,
                "{name}: nothing left behind"
            );
        }
    }
}

#[test]
fn a_pack_named_as_one_there_with_other_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pack) = source_and_pack(dir.path(), &RepoSpec::small(64));
    let mirror = empty_mirror(dir.path(), "sha1");
    let ingested = ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap();
    assert!(ingested.fresh);
    // As a collision of checksums would have it: the same name, other bytes.
    let mut perms = std::fs::metadata(&ingested.pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&ingested.pack, perms).unwrap();
    let mut stored = std::fs::read(&ingested.pack).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 1;
    std::fs::write(&ingested.pack, &stored).unwrap();
    let before = pack_dir_listing(&mirror);

    let err = ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap_err();
    assert!(err.to_string().contains("with other bytes"), "{err}");
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    assert!(std::fs::read(&ingested.pack).unwrap() == stored, "kept");
    // The very same bytes again are the pack there.
    stored[middle] ^= 1;
    std::fs::write(&ingested.pack, &stored).unwrap();
    let again = ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap();
    assert!(!again.fresh);
    assert_eq!(again.checksum, ingested.checksum);
}

#[test]
fn leftovers_of_a_crash_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = empty_mirror(dir.path(), "sha1");
    std::fs::create_dir_all(mirror.join("objects/pack/incoming-1-2")).unwrap();
    std::fs::write(mirror.join("objects/pack/incoming-1-2/tmp_pack_x"), b"half").unwrap();
    std::fs::write(mirror.join("objects/pack/incoming-7-response"), b"half").unwrap();
    std::fs::write(mirror.join("packed-refs.tmp-7-3"), b"half").unwrap();
    // The objects found early in a first pack by a process that is gone.
    std::fs::create_dir_all(mirror.join("objects/pack/early-1-0/objects/pack")).unwrap();
    std::fs::write(
        mirror.join("objects/pack/early-1-0/objects/pack/received"),
        b"half",
    )
    .unwrap();
    assert_eq!(remove_leftovers(&mirror, true).unwrap(), 4);
    assert!(pack_dir_listing(&mirror).is_empty());
    assert!(!mirror.join("packed-refs.tmp-7-3").exists());
    assert!(mirror.join("HEAD").is_file());
}

/// Issue 12: a crash between moving a pack's data and its index into place, or while a pack
/// is removed (index first), leaves files no index names: they go too. A temporary a writer
/// of this process may hold is kept when the caller says so.
#[test]
fn files_of_packs_without_an_index_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = empty_mirror(dir.path(), "sha1");
    let (source, pack) = source_and_pack(dir.path(), &RepoSpec::tiny(1231));
    ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap();
    set_refs_like(&mirror, &source);
    let kept = pack_dir_listing(&mirror);
    let pack_dir = mirror.join("objects/pack");
    for orphan in [
        "pack-1234.pack",
        "pack-5678.bitmap",
        "pack-5678.tips",
        "pack-5678.rev",
    ] {
        std::fs::write(pack_dir.join(orphan), b"left by a crash").unwrap();
    }
    std::fs::write(pack_dir.join("incoming-9-bitmap"), b"being written").unwrap();
    assert_eq!(remove_leftovers(&mirror, false).unwrap(), 4);
    let mut listing = kept.clone();
    listing.push("incoming-9-bitmap".to_owned());
    listing.sort();
    assert_eq!(pack_dir_listing(&mirror), listing);
    assert_eq!(remove_leftovers(&mirror, true).unwrap(), 1);
    assert_eq!(pack_dir_listing(&mirror), kept);
    gitcache_testkit::git::git_stdout(&mirror, &["fsck", "--strict", "--no-progress"]);
}

/// Regression (found by fuzzing): a header claiming ~a billion objects made indexing allocate
/// tens of gigabytes up front and abort the process.
#[test]
fn a_header_claiming_a_billion_objects_is_refused_without_allocating_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = empty_mirror(dir.path(), "sha1");
    let mut pack = b"PACK\0\0\0\x02".to_vec();
    pack.extend_from_slice(&0x3a00_0000u32.to_be_bytes());
    pack.extend_from_slice(&[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    let err = ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap_err();
    assert!(matches!(err, Error::InvalidPack { .. }), "{err:?}");
    assert!(pack_dir_listing(&mirror).is_empty());
}

/// Each base a pack names by id is held while the pack is read: past what the count its
/// header claims leaves of the bound, the pack is refused as it names one more, not read on
/// (a hostile upstream's deltas on made-up bases are 30 bytes each and cost a hundred).
#[test]
fn bases_named_by_id_count_against_the_bound() {
    use gitcache_mirror::ingest::{CLAIMED_OBJECT_BYTES, MAX_ALLOCATION, NAMED_BASE_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let mirror = empty_mirror(dir.path(), "sha1");
    // A count that leaves room for 1,000 bases named, and 2,000 deltas on distinct ones.
    let claimed = (MAX_ALLOCATION - 1_000 * NAMED_BASE_BYTES) / CLAIMED_OBJECT_BYTES;
    let mut pack = b"PACK\0\0\0\x02".to_vec();
    pack.extend_from_slice(&u32::try_from(claimed).unwrap().to_be_bytes());
    for n in 0..2_000u32 {
        let mut id = [0x5a; 20];
        id[..4].copy_from_slice(&n.to_be_bytes());
        pack.extend_from_slice(&tree_grown(&gix_hash::ObjectId::from(id), 10, b"x"));
    }
    let err = ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap_err();
    assert!(
        err.to_string()
            .contains("bases by id, more than can be held"),
        "{err}"
    );
    assert!(pack_dir_listing(&mirror).is_empty());
}

/// The index written for a received pack is byte for byte the one `git index-pack` writes
/// for it, with deltas on offsets (as the mirror asks for) and on bases named by id within
/// the pack (as an upstream may still send them).
#[test]
fn the_index_is_the_one_git_writes() {
    for (format, ofs_delta) in [("sha1", true), ("sha256", true), ("sha1", false)] {
        let dir = tempfile::tempdir().unwrap();
        let spec = match format {
            "sha1" => RepoSpec::small(64),
            _ => RepoSpec::small(64).sha256(),
        };
        let source = repo::generate(&dir.path().join("src.git"), &spec)
            .unwrap()
            .path;
        let pack = if ofs_delta {
            pack_objects(&source, &["--revs", "--all"], "")
        } else {
            git_with_input(
                &source,
                &["pack-objects", "--stdout", "-q", "--revs", "--all"],
                b"",
            )
        };
        let mirror = empty_mirror(dir.path(), format);
        let kind = hash_kind(format);
        let ingested = ingest_pack(&mirror, kind, &mut &pack[..]).unwrap();
        let theirs = index_as_git_writes_it(dir.path(), format, &ingested.pack);
        assert!(
            std::fs::read(&ingested.index).unwrap() == std::fs::read(&theirs).unwrap(),
            "{format}, ofs-delta {ofs_delta}: the index differs from git's"
        );
        // The reverse index too, when gitcache indexed the pack (gitoxide's indexer, for
        // deltas on bases named by id, writes none).
        let rev = ingested.index.with_extension("rev");
        if ofs_delta {
            assert!(
                std::fs::read(&rev).unwrap()
                    == std::fs::read(theirs.with_extension("rev")).unwrap(),
                "{format}: the reverse index differs from git's"
            );
        }
        set_refs_like(&mirror, &source);
        git(&mirror, &["fsck", "--strict", "--no-progress"]);
    }
}

/// The index `git index-pack` writes for `pack` (in `format`), with its reverse index
/// beside: `dir/theirs.idx`.
fn index_as_git_writes_it(dir: &Path, format: &str, pack: &Path) -> std::path::PathBuf {
    let theirs = dir.join("theirs.idx");
    git(
        dir,
        &[
            "index-pack",
            "--rev-index",
            &format!("--object-format={format}"),
            "-o",
            theirs.to_str().unwrap(),
            pack.to_str().unwrap(),
        ],
    );
    theirs
}

/// A pack of one small blob as git writes it, and where its only entry starts and ends.
fn one_blob_pack(dir: &Path) -> (Vec<u8>, std::ops::Range<usize>) {
    let (pack, entry) = blob_pack(dir, b"hello\n");
    assert_eq!(pack[12], 0x36, "a blob of 6 bytes, its header in one byte");
    (pack, entry)
}

/// A SHA-1 pack of one blob of `content` as git writes it, and where its only entry starts and
/// ends.
fn blob_pack(dir: &Path, content: &[u8]) -> (Vec<u8>, std::ops::Range<usize>) {
    let source = dir.join("blob.git");
    if !source.exists() {
        git(dir, &["init", "-q", "--bare", source.to_str().unwrap()]);
    }
    let blob = git_with_input(&source, &["hash-object", "-w", "--stdin"], content);
    let pack = git_with_input(&source, &["pack-objects", "--stdout", "-q"], &blob);
    let end = pack.len() - 20;
    (pack, 12..end)
}

/// `err` refuses a pack for the object of id `missing` (hex) it refers to and is not there.
fn assert_refused_missing(err: &Error, missing: &str) {
    let missing = gix_hash::ObjectId::from_hex(missing.as_bytes()).unwrap();
    assert!(
        matches!(
            err,
            Error::Refused(gitcache_pack::Error::MissingObject { oid }) if *oid == missing
        ),
        "{err}"
    );
}

/// `n` as a delta's size: seven bits a byte, least significant first.
fn delta_size(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// The entry of a delta on the object `base` (of `base_len` bytes, named by id) that
/// appends `added` (at most 127 bytes) to it.
fn tree_grown(base: &gix_hash::ObjectId, base_len: usize, added: &[u8]) -> Vec<u8> {
    assert!(base_len < 1 << 16 && !added.is_empty() && added.len() < 128);
    let mut delta = Vec::new();
    delta_size(base_len, &mut delta);
    delta_size(base_len + added.len(), &mut delta);
    // Copy the whole base (offset 0, two size bytes), then insert.
    delta.extend_from_slice(&[0x80 | 0x10 | 0x20, base_len as u8, (base_len >> 8) as u8]);
    delta.push(added.len() as u8);
    delta.extend_from_slice(added);
    let mut entry = entry_header(7, delta.len());
    entry.extend_from_slice(base.as_bytes());
    entry.extend_from_slice(&zlib_stored(&delta, 0));
    entry
}

/// A pack of `copies` deltas each copying one base of 64 MiB of zeros again, with a byte of
/// its own (no two objects alike): a few KB per copy, 64 MiB each to decode and hash.
fn copies_of_one_large_base(dir: &Path, copies: u8) -> Vec<u8> {
    let base_len = 64 << 20;
    let (git_pack, base_entry) = blob_pack(dir, &vec![0u8; base_len]);
    let base = &git_pack[base_entry];
    let mut entries: Vec<Vec<u8>> = vec![base.to_vec()];
    let mut offset = 12 + base.len();
    for i in 0..copies {
        let mut delta = Vec::new();
        delta_size(base_len, &mut delta);
        delta_size(base_len + 1, &mut delta);
        let piece = 0xff_0000;
        for start in (0..base_len).step_by(piece) {
            let len = piece.min(base_len - start);
            delta.push(0xff);
            delta.extend_from_slice(&(start as u32).to_le_bytes());
            delta.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
        }
        delta.extend_from_slice(&[1, i]);
        // An offset delta on the base: its distance back, in git's form.
        let mut distance = offset - 12;
        let mut back = vec![(distance & 0x7f) as u8];
        distance >>= 7;
        while distance > 0 {
            distance -= 1;
            back.push(0x80 | (distance & 0x7f) as u8);
            distance >>= 7;
        }
        back.reverse();
        let mut entry = entry_header(6, delta.len());
        entry.extend_from_slice(&back);
        entry.extend_from_slice(&zlib_stored(&delta, 0));
        offset += entry.len();
        entries.push(entry);
    }
    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    pack_of(&refs)
}

/// Taking a pack in stops when its caller says (a deadline after the download: a small
/// hostile pack can cost terabytes to decode), refusing it and leaving nothing behind.
#[test]
fn taking_a_pack_in_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let pack = copies_of_one_large_base(dir.path(), 200);
    assert!(pack.len() < 1 << 20, "{}", pack.len());
    let mirror = empty_mirror(dir.path(), "sha1");
    let before = pack_dir_listing(&mirror);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        gitcache_mirror::ingest::ingest_pack_guarded(
            &mirror,
            Kind::Sha1,
            &mut &pack[..],
            Closure::Unchecked,
            None,
            &stop,
            &|_| Ok(()),
        )
    });
    // Not stopped, the 200 copies (12.5 GiB) are decoded and the pack taken in.
    let err = result.unwrap_err();
    assert!(err.is_upstream_fault(), "{err}");
    assert_eq!(pack_dir_listing(&mirror), before);
}

/// An entry header in a longer form than needed (git never writes one) would move every
/// offset after it in the file written, which holds headers in their shortest form; an
/// object twice would be sent twice. Both are refused, leaving nothing behind.
#[test]
fn headers_in_a_longer_form_and_objects_twice_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pack, entry) = one_blob_pack(dir.path());
    let entry = &pack[entry];
    let mirror = empty_mirror(dir.path(), "sha1");
    // The blob as git wrote it is taken.
    ingest_pack(&mirror, Kind::Sha1, &mut &pack_of(&[entry])[..]).unwrap();
    let before = pack_dir_listing(&mirror);

    let mut longer = vec![0x36 | 0x80, 0x00];
    longer.extend_from_slice(&entry[1..]);
    let err = ingest_pack(&mirror, Kind::Sha1, &mut &pack_of(&[&longer])[..]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidPack { .. }) && err.to_string().contains("shortest form"),
        "{err}"
    );
    for closure in [
        Closure::Unchecked,
        Closure::Closed {
            self_contained: true,
        },
    ] {
        let twice = pack_of(&[entry, entry]);
        let err = ingest_pack_checked(&mirror, Kind::Sha1, &mut &twice[..], closure).unwrap_err();
        assert!(err.to_string().contains("twice"), "{closure:?}: {err}");
        assert!(err.is_upstream_fault());
    }
    assert_eq!(pack_dir_listing(&mirror), before);
}

/// A received pack is checked as it is indexed: an object referred to as two kinds, or as a
/// kind it is not, refuses the pack, and an object referred to from many trees is one
/// reference (the check's lists drop repeats as they grow). In either object format.
#[test]
fn kinds_are_checked_while_a_pack_is_indexed() {
    for (format, kind) in [("sha1", Kind::Sha1), ("sha256", Kind::Sha256)] {
        kinds_are_checked_in(format, kind);
    }
}

fn kinds_are_checked_in(format: &str, kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.git");
    git(
        dir.path(),
        &[
            "init",
            "-q",
            "--bare",
            &format!("--object-format={format}"),
            source.to_str().unwrap(),
        ],
    );
    let write = |kind: &str, body: &[u8]| -> String {
        let out = git_with_input(
            &source,
            &["hash-object", "-t", kind, "--literally", "-w", "--stdin"],
            body,
        );
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    let tree_of = |entries: &[(&str, &str, &str)]| -> String {
        let mut body = Vec::new();
        for (mode, name, id) in entries {
            body.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            body.extend(
                (0..id.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&id[i..i + 2], 16).unwrap()),
            );
        }
        write("tree", &body)
    };
    let commit_of = |tree: &str, parents: &[&str], n: usize| -> String {
        let mut body = format!("tree {tree}\n");
        for parent in parents {
            body.push_str(&format!("parent {parent}\n"));
        }
        body.push_str(&format!(
            "author A <a@example.com> {n} +0000\ncommitter A <a@example.com> {n} +0000\n\nc{n}\n"
        ));
        write("commit", body.as_bytes())
    };
    let pack = |objects: &[&str]| -> Vec<u8> {
        git_with_input(
            &source,
            &["pack-objects", "--stdout", "-q"],
            objects.join("\n").as_bytes(),
        )
    };
    let closed = Closure::Closed {
        self_contained: true,
    };
    let blob = write("blob", b"content\n");
    let root = tree_of(&[("100644", "top", &blob)]);
    let first = commit_of(&root, &[], 1);
    // A commit whose parent is a tree.
    let confused = commit_of(&root, &[&root], 2);
    let mirror = empty_mirror(dir.path(), format);
    // Refused by the upstream's fault, saying `what` of `object`.
    let refused_as = |objects: &[&str], object: &str, what: &str| {
        let err = ingest_pack_checked(&mirror, kind, &mut &pack(objects)[..], closed).unwrap_err();
        assert!(err.is_upstream_fault(), "{err}");
        let said = err.to_string();
        assert!(said.contains(object) && said.contains(what), "{said}");
    };
    refused_as(
        &[&blob, &root, &first, &confused],
        &root,
        "as a tree and as a commit",
    );
    // A commit whose parent is a tree of the pack that nothing names as a tree: the kind the
    // indexing found for it.
    let other = tree_of(&[("100644", "other", &blob)]);
    let odd = commit_of(&root, &[&other], 7);
    refused_as(
        &[&blob, &root, &other, &odd],
        &other,
        "a tree where a commit",
    );
    // A tree naming a blob as a tree.
    let wrong = tree_of(&[("40000", "dir", &blob)]);
    let over = commit_of(&wrong, &[], 3);
    refused_as(&[&blob, &wrong, &over], &blob, "a blob where a tree");
    assert!(
        pack_dir_listing(&mirror)
            .iter()
            .all(|f| !f.ends_with(".idx"))
    );

    // A commit, tree or tag referred to and not there, whatever refers to it: missing.
    let refused_missing = |objects: &[&str], missing: &str| {
        let err = ingest_pack_checked(&mirror, kind, &mut &pack(objects)[..], closed).unwrap_err();
        assert!(err.is_upstream_fault(), "{err}");
        assert_refused_missing(&err, missing);
    };
    let lost = "2".repeat(blob.len());
    let holey = tree_of(&[("40000", "gone", &lost), ("100644", "top", &blob)]);
    let orphan = commit_of(&root, &[&lost], 4);
    let treeless = commit_of(&lost, &[], 5);
    let tag = write(
        "tag",
        format!("object {lost}\ntype tree\ntag v1\ntagger A <a@example.com> 1 +0000\n\nv1\n")
            .as_bytes(),
    );
    for objects in [
        [blob.as_str(), &holey].as_slice(),
        &[&blob, &root, &orphan],
        &[&treeless],
        &[&tag],
    ] {
        refused_missing(objects, &lost);
    }
    // The same tree found in the mirror instead, for a pack that need not stand alone: taken.
    ingest_pack_checked(
        &mirror,
        kind,
        &mut &pack(&[&blob, &root, &first])[..],
        closed,
    )
    .unwrap();
    let later = commit_of(&root, &[], 6);
    refused_missing(&[&later], &root);
    ingest_pack_checked(
        &mirror,
        kind,
        &mut &pack(&[&later])[..],
        Closure::Closed {
            self_contained: false,
        },
    )
    .unwrap();

    // Trees naming the same blob and tree under many names: each a reference of its own,
    // a few different ones. Taken.
    let mut objects = vec![blob.clone(), root.clone()];
    for n in 0..300 {
        let names: Vec<(String, String)> = (0..50)
            .map(|k| (format!("a{k}-{n}"), format!("d{k}-{n}")))
            .collect();
        let mut entries: Vec<(&str, &str, &str)> = Vec::new();
        for (file, dir) in &names {
            entries.push(("100644", file, &blob));
            entries.push(("40000", dir, &root));
        }
        entries.sort_by_key(|e| e.1);
        objects.push(tree_of(&entries));
    }
    let refs: Vec<&str> = objects.iter().map(String::as_str).collect();
    let ingested = ingest_pack_checked(&mirror, kind, &mut &pack(&refs)[..], closed).unwrap();
    assert_eq!(ingested.objects as usize, objects.len());
}

/// An entry whose zlib stream ends with a wrong Adler-32 is refused even when the pack's own
/// checksum is right (made so after the damage), as `git index-pack` refuses it; nothing is
/// left behind.
#[test]
fn an_entry_with_a_wrong_zlib_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pack, entry) = one_blob_pack(dir.path());
    let mirror = empty_mirror(dir.path(), "sha1");
    let before = pack_dir_listing(&mirror);
    // The entry's last four bytes are its stream's Adler-32.
    let mut wrong = pack[entry].to_vec();
    *wrong.last_mut().unwrap() ^= 1;
    let wrong = pack_of(&[&wrong]);
    for piece in [1 << 16, 7] {
        let mut reader = std::io::BufReader::with_capacity(piece, &wrong[..]);
        let err = ingest_pack(&mirror, Kind::Sha1, &mut reader).unwrap_err();
        assert!(err.is_upstream_fault(), "{err:?}");
        assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    }
    let probe = dir.path().join("probe.git");
    git(
        dir.path(),
        &["init", "-q", "--bare", probe.to_str().unwrap()],
    );
    let refused = std::process::Command::new("git")
        .args(["-C", probe.to_str().unwrap(), "index-pack", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(&wrong)?;
            child.wait()
        })
        .unwrap();
    assert!(!refused.success(), "git takes it");
}

/// Bytes read with a pause before each read, as a slow download comes.
struct Slow<'a>(&'a [u8]);

impl std::io::Read for Slow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.0.read(buf)
    }
}

/// The pack announced on `board`, once one is (within a minute).
fn announced_on(
    board: &gitcache_mirror::live::Board,
) -> std::sync::Arc<gitcache_mirror::live::LivePack> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(live) = board.current() {
            return live;
        }
        assert!(std::time::Instant::now() < deadline, "never announced");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A first pack announced while it is taken in: a reader following it is only ever told of
/// bytes already in the file and exactly as received (large entries, written past the
/// buffer, and small ones alike), and the whole pack once its trailer is checked.
#[test]
fn an_announced_pack_is_followed_as_it_is_written() {
    use gitcache_mirror::ingest::{Announce, ingest_pack_announced};
    use gitcache_mirror::live::{Board, Progress};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let source = repo::generate(&dir.path().join("src.git"), &RepoSpec::small(63))
        .unwrap()
        .path;
    // A blob larger than the file's write buffer, which goes past it in one write.
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = git_with_input(&source, &["hash-object", "-w", "--stdin"], &noise);
    let big = String::from_utf8(big).unwrap();
    let mut objects = git(&source, &["rev-list", "--objects", "--all"]);
    objects.push_str(&big);
    let pack = pack_objects(&source, &[], &objects);
    let mirror = empty_mirror(dir.path(), "sha1");

    let board = std::sync::Arc::new(Board::default());
    let follower = std::thread::spawn({
        let (board, pack) = (std::sync::Arc::clone(&board), pack.clone());
        move || {
            let live = announced_on(&board);
            let (mut seen, mut steps) = (0u64, 0);
            loop {
                let (upto, whole) = match live.wait_past(seen, Duration::from_secs(60)) {
                    Progress::Arriving(n) => (n, false),
                    Progress::Whole(n) => (n, true),
                    Progress::Failed(why) => panic!("{why}"),
                };
                let mut got = vec![0; upto as usize];
                let mut at = 0;
                while at < got.len() {
                    let read = live.read_at(&mut got[at..], at as u64).unwrap();
                    assert!(read > 0, "told of {upto} bytes, the file has {at}");
                    at += read;
                }
                assert!(got[..] == pack[..got.len()], "bytes as received, to {upto}");
                if whole {
                    assert_eq!(upto, pack.len() as u64);
                    return steps;
                }
                assert!(upto + 20 <= pack.len() as u64, "the trailer is held back");
                (seen, steps) = (upto, steps + 1);
            }
        }
    });
    // Read in pieces smaller than the entries, as a slow download comes.
    let mut slow = std::io::BufReader::with_capacity(7_000, Slow(&pack[..]));
    let announce = Announce {
        board: std::sync::Arc::clone(&board),
        asked: gitcache_mirror::live::Asked::default(),
    };
    let ingested = ingest_pack_announced(
        &mirror,
        Kind::Sha1,
        &mut slow,
        Closure::Unchecked,
        Some(announce),
    )
    .unwrap();
    let steps = follower.join().unwrap();
    assert!(steps > 1, "followed in {steps} steps");
    assert!(std::fs::read(&ingested.pack).unwrap() == pack);
}

/// A first pack announced is received on a thread of its own, behind answers while it is
/// read for the objects found early, and not when no reading runs (none started, or one
/// over before the pack came); a reading that ends midway hands the rest back to the
/// caller's thread, at its priority. The caller's own priority is left as it was, and the
/// pack is taken in whole every time.
#[test]
fn a_first_pack_read_early_is_received_behind_answers() {
    use gitcache_mirror::ingest::{Announce, ingest_pack_announced};
    use gitcache_mirror::live::{Asked, Board};
    use std::sync::mpsc::{Receiver, Sender, channel};

    /// One read of the pack: where it ended, the reading thread's priority, and whether it
    /// was the thread that called the ingestion.
    #[derive(Debug, Clone, Copy)]
    struct Read {
        to: usize,
        priority: i32,
        by_caller: bool,
    }
    /// The pack's bytes, from when `open` says so, with a pause at `pause_at` (told on
    /// `paused`, until `resume` says so), each read noted.
    struct Gated<'a> {
        pack: &'a [u8],
        at: usize,
        open: Option<Receiver<()>>,
        pause_at: usize,
        paused: Option<(Sender<()>, Receiver<()>)>,
        caller: std::thread::ThreadId,
        reads: Vec<Read>,
    }
    impl std::io::Read for Gated<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if let Some(open) = self.open.take() {
                open.recv().map_err(std::io::Error::other)?;
            }
            if self.at >= self.pause_at
                && let Some((paused, resume)) = self.paused.take()
            {
                paused.send(()).map_err(std::io::Error::other)?;
                resume.recv().map_err(std::io::Error::other)?;
            }
            #[cfg(target_os = "linux")]
            let priority = rustix::process::getpriority_process(None).unwrap();
            #[cfg(not(target_os = "linux"))]
            let priority = 0;
            // Nothing past the pause before it.
            let until = match self.paused {
                Some(_) => self.pause_at,
                None => self.pack.len(),
            };
            let end = until.min(self.at + buf.len());
            let n = end - self.at;
            buf[..n].copy_from_slice(&self.pack[self.at..end]);
            self.at = end;
            self.reads.push(Read {
                to: end,
                priority,
                by_caller: std::thread::current().id() == self.caller,
            });
            Ok(n)
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let (tip, pack) = small_tip_and_pack(dir.path(), 29);
    // The pause at the start of the middle entry: entries follow it, whatever the pack.
    let starts: Vec<usize> = {
        let mut bytes = &pack[..];
        let mut read =
            gitcache_pack::incoming::Incoming::new(&mut bytes, Kind::Sha1, u64::MAX).unwrap();
        std::iter::from_fn(|| read.next_entry().unwrap().map(|e| e.offset as usize)).collect()
    };
    assert!(starts.len() > 8, "{} entries", starts.len());
    let pause_at = starts[starts.len() / 2];
    // Reads past this may be the trailer's, which the caller reads.
    let entries_end = pack.len() - 20;
    #[cfg(target_os = "linux")]
    let priority = rustix::process::getpriority_process(None).unwrap();
    #[cfg(not(target_os = "linux"))]
    let priority = 0;
    // A thread's priority is its own only on Linux, and lowered only above the lowest.
    let lowers = cfg!(target_os = "linux") && priority < 19;
    let lowered = if lowers {
        (priority + 10).min(19)
    } else {
        priority
    };
    for (case, reading) in ["none", "under way", "over", "ends midway"]
        .into_iter()
        .enumerate()
    {
        let home = dir.path().join(format!("case-{case}"));
        std::fs::create_dir_all(&home).unwrap();
        let mirror = empty_mirror(&home, "sha1");
        let board = std::sync::Arc::new(Board::default());
        let (open, gate) = channel();
        let (paused, pause) = channel();
        let (resume, resumed) = channel();
        let (done, ingested) = channel::<()>();
        // A reading of the pack as the early-index thread holds one, from its announcement
        // on (before any of its bytes come), to the ingestion's end, to its middle, or not
        // at all.
        let reader = std::thread::spawn({
            let board = std::sync::Arc::clone(&board);
            move || {
                let live = announced_on(&board);
                let held = (reading != "none").then(|| live.read_early());
                assert_eq!(live.is_read_early(), held.is_some());
                match reading {
                    "over" => {
                        drop(held);
                        assert!(!live.is_read_early());
                        open.send(()).unwrap();
                    }
                    "ends midway" => {
                        open.send(()).unwrap();
                        pause.recv().unwrap();
                        drop(held);
                        resume.send(()).unwrap();
                    }
                    _ => {
                        open.send(()).unwrap();
                        let _ = ingested.recv();
                    }
                }
            }
        });
        let announce = Announce {
            board: std::sync::Arc::clone(&board),
            asked: Asked::first(vec![tip]),
        };
        let mut gated = Gated {
            pack: &pack,
            at: 0,
            open: Some(gate),
            pause_at,
            paused: (reading == "ends midway").then_some((paused, resumed)),
            caller: std::thread::current().id(),
            reads: Vec::new(),
        };
        let taken = ingest_pack_announced(
            &mirror,
            Kind::Sha1,
            &mut std::io::BufReader::with_capacity(512, &mut gated),
            Closure::Unchecked,
            Some(announce),
        );
        drop(done);
        // The ingestion's own error first, should it fail.
        let taken = taken.unwrap();
        reader.join().unwrap();
        let behind = lowers && matches!(reading, "under way" | "ends midway");
        assert_eq!(taken.received_behind, behind, "reading: {reading}");
        // Who read each piece, at which priority: the caller the header (before the first
        // entry), then the thread of its own, behind from the first entry while the reading
        // ran; once it ended midway, the caller again from the entry after the one being
        // read then.
        let reads = &gated.reads;
        assert!(
            reads[0].by_caller && reads[0].priority == priority,
            "{reading}: {reads:?}"
        );
        let own = |r: &Read, by: i32| !r.by_caller && r.priority == by;
        let entries: Vec<&Read> = (reads[1..].iter())
            .filter(|r| r.to <= entries_end)
            .collect();
        let (before, after): (Vec<&Read>, Vec<&Read>) =
            entries.iter().partition(|r| r.to <= pause_at);
        let by = if behind { lowered } else { priority };
        assert!(before.iter().all(|r| own(r, by)), "{reading}: {before:?}");
        match reading {
            // Handed back only by a thread that stepped behind.
            "ends midway" if behind => {
                let back = (after.iter())
                    .position(|r| r.by_caller)
                    .expect("handed back");
                assert!(
                    after[..back].iter().all(|r| own(r, by)),
                    "{reading}: {after:?}"
                );
                assert!(
                    after[back..]
                        .iter()
                        .all(|r| r.by_caller && r.priority == priority),
                    "{reading}: {after:?}"
                );
            }
            _ => assert!(after.iter().all(|r| own(r, by)), "{reading}: {after:?}"),
        }
        #[cfg(target_os = "linux")]
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            priority
        );
        assert!(std::fs::read(&taken.pack).unwrap() == pack);
        assert_eq!(
            git(&mirror, &["cat-file", "-t", &tip.to_string()]).trim(),
            "commit"
        );
    }
}

/// A pack fetched for a client (asked for with haves) announced while it is taken in: thin,
/// it is whole as received once its trailer is checked, and readers, early or late, are given
/// the bytes the upstream sent, while the file is completed with bases under them (another
/// count in its header, bases where the trailer was).
#[test]
fn an_announced_thin_pack_is_read_as_received_while_it_is_completed() {
    use gitcache_mirror::ingest::{Announce, ingest_pack_announced};
    use gitcache_mirror::live::{Asked, Board, LivePack, Progress};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (source, mirror, _) = mirrored_source(dir.path(), 64);
    let old = gix_hash::ObjectId::from_hex(git(&source, &["rev-parse", "main"]).trim().as_bytes())
        .unwrap();
    let new = repo::append_commits(&source, "main", 5, 4).unwrap();
    let new = gix_hash::ObjectId::from_hex(new.as_bytes()).unwrap();
    // A blob that compresses to more than the file's write buffer, so that readers are told
    // of bytes before the pack is whole.
    let noise = repo::Rng::new(11).bytes(300_000);
    let big = git_with_input(&source, &["hash-object", "-w", "--stdin"], &noise);
    let big = String::from_utf8(big).unwrap();
    let tree = git_with_input(
        &source,
        &["mktree"],
        format!("100644 blob {}\tbig.bin\n", big.trim()).as_bytes(),
    );
    let tree = String::from_utf8(tree).unwrap();
    let new = git(
        &source,
        &[
            "commit-tree",
            tree.trim(),
            "-p",
            &new.to_string(),
            "-m",
            "big",
        ],
    );
    let new = gix_hash::ObjectId::from_hex(new.trim().as_bytes()).unwrap();
    let revs = format!("{new}\n^{old}\n");
    let thin = pack_objects(&source, &["--revs", "--thin"], &revs);

    /// Every byte of `live` up to its end, as it is told of them, and how many times it was
    /// told of bytes before the end.
    fn follow(live: &LivePack) -> (Vec<u8>, usize) {
        let (mut got, mut steps) = (Vec::new(), 0);
        loop {
            let (upto, whole) = match live.wait_past(got.len() as u64, Duration::from_secs(60)) {
                Progress::Arriving(n) => (n, false),
                Progress::Whole(n) => (n, true),
                Progress::Failed(why) => panic!("{why}"),
            };
            while (got.len() as u64) < upto {
                let mut buf = vec![0; 1000.min(upto as usize - got.len())];
                let read = live.read_at(&mut buf, got.len() as u64).unwrap();
                assert!(read > 0, "told of {upto} bytes, read {}", got.len());
                got.extend_from_slice(&buf[..read]);
            }
            if whole {
                return (got, steps);
            }
            steps += 1;
        }
    }
    let board = std::sync::Arc::new(Board::default());
    let follower = std::thread::spawn({
        let board = std::sync::Arc::clone(&board);
        move || {
            let live = announced_on(&board);
            (follow(&live), live)
        }
    });
    let announce = Announce {
        board: std::sync::Arc::clone(&board),
        asked: Asked {
            wants: vec![new],
            haves: vec![old],
            thin_pack: true,
            include_tag: false,
        },
    };
    // Read in small pieces, as a slow download comes.
    let mut slow = std::io::BufReader::with_capacity(1_000, Slow(&thin[..]));
    let ingested = ingest_pack_announced(
        &mirror,
        Kind::Sha1,
        &mut slow,
        Closure::Closed {
            self_contained: false,
        },
        Some(announce),
    )
    .unwrap();
    let ((followed, steps), live) = follower.join().unwrap();
    assert!(followed == thin, "the reader had the pack as sent");
    assert!(steps > 1, "followed in {steps} steps");
    let stored = std::fs::read(&ingested.pack).unwrap();
    assert!(
        stored[8..12] != thin[8..12] && stored.len() > thin.len(),
        "the file was completed with bases"
    );
    assert!(
        follow(&live).0 == thin,
        "a late reader has the pack as sent"
    );
    // It answers a client with those haves (or more) taking thin packs, nothing else.
    let other = gix_hash::ObjectId::from_bytes_or_panic(&[9; 20]);
    assert!(live.answers_fetch(&[new], &[other, old], true, false));
    assert!(!live.answers_fetch(&[new], &[other], true, false));
    assert!(!live.answers_fetch(&[new], &[old], false, false));
    assert!(!live.answers_fetch(&[new], &[old], true, true));
    assert!(!live.answers_fetch(&[new, other], &[old], true, false));
    assert!(!live.answers(&[new]), "no clone's");
    assert_eq!(live.haves(), &[old]);
}

/// A pack whose deltas name bases by id that neither it nor the mirror holds (a thin pack
/// sent to a mirror that lacks what it was made against): a reader that takes no thin pack
/// is told it failed, not that it is whole, since it cannot be resolved.
#[test]
fn a_pack_naming_bases_nobody_holds_is_not_announced_whole() {
    use gitcache_mirror::ingest::{Announce, ingest_pack_announced};
    use gitcache_mirror::live::{Asked, Board, Progress};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let source = repo::generate(&dir.path().join("src.git"), &RepoSpec::small(65))
        .unwrap()
        .path;
    let old = git(&source, &["rev-parse", "main"]).trim().to_owned();
    let new = repo::append_commits(&source, "main", 5, 5).unwrap();
    let thin = pack_objects(&source, &["--revs", "--thin"], &format!("{new}\n^{old}\n"));
    let mirror = empty_mirror(dir.path(), "sha1");
    let new = gix_hash::ObjectId::from_hex(new.as_bytes()).unwrap();
    let board = std::sync::Arc::new(Board::default());
    let follower = std::thread::spawn({
        let board = std::sync::Arc::clone(&board);
        move || {
            let live = announced_on(&board);
            let mut seen = 0;
            loop {
                match live.wait_past(seen, Duration::from_secs(60)) {
                    Progress::Arriving(n) => seen = n,
                    Progress::Whole(_) => return None,
                    Progress::Failed(why) => return Some(why),
                }
            }
        }
    });
    let announce = Announce {
        board: std::sync::Arc::clone(&board),
        asked: Asked {
            wants: vec![new],
            haves: Vec::new(),
            thin_pack: false,
            include_tag: false,
        },
    };
    let ingested = ingest_pack_announced(
        &mirror,
        Kind::Sha1,
        &mut &thin[..],
        Closure::Closed {
            self_contained: false,
        },
        Some(announce),
    );
    assert!(ingested.is_err(), "its deltas cannot be resolved");
    let told = follower.join().unwrap();
    assert!(told.is_some(), "the reader was told the pack is whole");
}

/// A repository in `format` at `dir/large.git` with large files (over
/// [`gitcache_mirror::ingest::HASHED_ON_ARRIVAL`]): one stored whole that nothing rests on, one
/// changed in a few bytes (one version a delta on the other), and small files beside.
fn large_files_repo(dir: &Path, format: &str) -> std::path::PathBuf {
    let work = dir.join("large");
    git(
        dir,
        &[
            "init",
            "-q",
            &format!("--object-format={format}"),
            work.to_str().unwrap(),
        ],
    );
    let mut rng = repo::Rng::new(7);
    let lone = rng.bytes(3 << 20);
    let mut changed = rng.bytes(2 << 20);
    std::fs::write(work.join("lone.bin"), &lone).unwrap();
    std::fs::write(work.join("changed.bin"), &changed).unwrap();
    std::fs::write(work.join("README"), "large files\n").unwrap();
    let commit = |message: &str| {
        git(&work, &["add", "-A"]);
        git(
            &work,
            &[
                "-c",
                "user.name=A",
                "-c",
                "user.email=a@example.com",
                "commit",
                "-q",
                "-m",
                message,
            ],
        );
    };
    commit("first");
    changed[1 << 20] ^= 0xff;
    changed.extend_from_slice(b"more");
    std::fs::write(work.join("changed.bin"), &changed).unwrap();
    std::fs::write(work.join("README"), "large files, changed\n").unwrap();
    commit("second");
    let bare = dir.join("large.git");
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    bare
}

/// Blobs stored whole from the size hashed on arrival are hashed as they are read (the memory test
/// shows they are never whole in memory), one a delta rests on is decoded as any base: the
/// index is byte for byte git's, the pack checked closed, the mirror whole, in either format.
#[test]
fn large_blobs_stored_whole_are_indexed_as_git_does() {
    use gitcache_mirror::ingest::HASHED_ON_ARRIVAL;
    for format in ["sha1", "sha256"] {
        let dir = tempfile::tempdir().unwrap();
        let source = large_files_repo(dir.path(), format);
        let pack = pack_objects(&source, &["--revs", "--all"], "");
        let mirror = empty_mirror(dir.path(), format);
        let closed = Closure::Closed {
            self_contained: true,
        };
        let ingested =
            ingest_pack_checked(&mirror, hash_kind(format), &mut &pack[..], closed).unwrap();
        // The pack holds both shapes: a large blob stored whole that no delta rests on, and
        // one that is a delta's base.
        let listing = git(
            dir.path(),
            &[
                "verify-pack",
                "-v",
                &format!("--object-format={format}"),
                ingested.index.to_str().unwrap(),
            ],
        );
        let rows: Vec<Vec<&str>> = (listing.lines())
            .map(|line| line.split_whitespace().collect())
            .filter(|row: &Vec<&str>| row.len() >= 5 && row[1] == "blob")
            .collect();
        let bases: Vec<&str> = rows.iter().filter(|r| r.len() == 7).map(|r| r[6]).collect();
        let large_whole = |based: bool| {
            rows.iter().any(|r| {
                r.len() == 5
                    && r[2].parse::<u64>().unwrap() >= HASHED_ON_ARRIVAL
                    && bases.contains(&r[0]) == based
            })
        };
        assert!(
            large_whole(false),
            "{format}: no large blob alone\n{listing}"
        );
        assert!(large_whole(true), "{format}: no large base\n{listing}");
        let theirs = index_as_git_writes_it(dir.path(), format, &ingested.pack);
        assert!(
            std::fs::read(&ingested.index).unwrap() == std::fs::read(&theirs).unwrap(),
            "{format}: the index differs from git's"
        );
        set_refs_like(&mirror, &source);
        git(&mirror, &["fsck", "--strict", "--no-progress"]);
    }
}

/// A large blob, hashed as it arrives rather than decoded, is refused as any entry is when its
/// stream is damaged: its Adler-32 wrong, its size not the header's, cut short. Nothing is
/// left behind.
#[test]
fn a_large_blob_with_a_damaged_stream_is_refused() {
    use gitcache_mirror::ingest::HASHED_ON_ARRIVAL;
    use gix_pack::data::entry::Header;
    let dir = tempfile::tempdir().unwrap();
    let size = HASHED_ON_ARRIVAL as usize + 4096;
    let (pack, entry) = blob_pack(dir.path(), &repo::Rng::new(11).bytes(size));
    let mirror = empty_mirror(dir.path(), "sha1");
    let entry = &pack[entry];
    let header_size = Header::Blob.size(size as u64);
    let stream = &entry[header_size..];
    // The stream's last four bytes are its Adler-32.
    let mut adler = entry.to_vec();
    *adler.last_mut().unwrap() ^= 1;
    // The same stream under a header one byte longer.
    let mut longer = Vec::new();
    Header::Blob.write_to(size as u64 + 1, &mut longer).unwrap();
    longer.extend_from_slice(stream);
    // Cut inside the stream: no trailer either.
    let cut = pack[..pack.len() / 2].to_vec();
    for (what, bad) in [
        ("a wrong Adler-32", pack_of(&[&adler])),
        ("a size not the header's", pack_of(&[&longer])),
        ("cut short", cut),
    ] {
        for piece in [1 << 16, 7] {
            let mut reader = std::io::BufReader::with_capacity(piece, &bad[..]);
            let err = ingest_pack(&mirror, Kind::Sha1, &mut reader).unwrap_err();
            assert!(err.is_upstream_fault(), "{what}: {err:?}");
            assert!(pack_dir_listing(&mirror).is_empty(), "{what}: left behind");
        }
    }
    // The pack as git wrote it is taken.
    ingest_pack(&mirror, Kind::Sha1, &mut &pack[..]).unwrap();
}

/// After the download, the disk is asked before it takes more: for the index and reverse index
/// a pack is given (their size, exactly), for the pack written again by gitoxide's indexer
/// when its deltas name their bases within it by id (the size received and its indexes'),
/// and for the bases added to complete a thin pack (the first's size, before it is written;
/// the others told of once written). Refused, the pack is not taken in and nothing is left
/// behind; allowed, it is taken in as before.
#[test]
fn room_is_asked_for_before_a_pack_is_written_again_or_completed() {
    use gitcache_mirror::ingest::{Ask, ROOM_ASKED_EVERY, ingest_pack_guarded};
    let stop = std::sync::atomic::AtomicBool::new(false);
    let asked = std::sync::Mutex::new(Vec::new());
    let refuse = |ask: Ask| {
        asked.lock().unwrap().push(ask);
        Err(std::io::Error::other("no room"))
    };
    let allow = |ask: Ask| {
        asked.lock().unwrap().push(ask);
        Ok(())
    };
    let taken_in = |mirror: &Path, pack: &[u8], room: &dyn Fn(Ask) -> std::io::Result<()>| {
        ingest_pack_guarded(
            mirror,
            Kind::Sha1,
            &mut &pack[..],
            Closure::Unchecked,
            None,
            &stop,
            room,
        )
    };
    let asks = || std::mem::take(&mut *asked.lock().unwrap());
    // What taking a pack in wrote beside it.
    let indexes = |ingested: &gitcache_mirror::ingest::Ingested| {
        let size = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().len();
        size(ingested.index.clone()) + size(ingested.index.with_extension("rev"))
    };

    // Deltas on bases by offset: the indexes asked for.
    let dir = tempfile::tempdir().unwrap();
    let (source, pack) = source_and_pack(dir.path(), &RepoSpec::small(73));
    let mirror = empty_mirror(dir.path(), "sha1");
    let before = pack_dir_listing(&mirror);
    let err = taken_in(&mirror, &pack, &refuse).unwrap_err();
    assert!(!err.is_upstream_fault(), "{err}");
    assert!(matches!(asks()[..], [Ask::Last(_)]));
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    let ingested = taken_in(&mirror, &pack, &allow).unwrap();
    assert_eq!(
        asks(),
        vec![Ask::Last(indexes(&ingested))],
        "the indexes' size"
    );

    // Deltas naming their bases by id, what git sends without `ofs-delta`: the pack again.
    let by_id = git_with_input(
        &source,
        &["pack-objects", "--stdout", "-q", "--revs", "--all"],
        b"",
    );
    std::fs::create_dir(dir.path().join("by-id")).unwrap();
    let mirror = empty_mirror(&dir.path().join("by-id"), "sha1");
    let before = pack_dir_listing(&mirror);
    let err = taken_in(&mirror, &by_id, &refuse).unwrap_err();
    assert!(!err.is_upstream_fault(), "{err}");
    assert!(matches!(asks()[..], [Ask::Last(_)]));
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    let ingested = taken_in(&mirror, &by_id, &allow).unwrap();
    // The pack again, its index, and a reverse index gitoxide's indexer does not write.
    let index = std::fs::metadata(&ingested.index).unwrap().len();
    let reverse = 12 + 4 * u64::from(ingested.objects) + 40;
    assert_eq!(
        asks(),
        vec![Ask::Last(by_id.len() as u64 + index + reverse)]
    );
    set_refs_like(&mirror, &source);
    git(&mirror, &["fsck", "--strict", "--no-progress"]);

    // A thin pack, completed from the mirror: the first base asked for before it is written.
    let other = tempfile::tempdir().unwrap();
    let (source, mirror, _) = mirrored_source(other.path(), 74);
    let old = git(&source, &["rev-parse", "main~3"]).trim().to_owned();
    let new = repo::append_commits(&source, "main", 5, 3).unwrap();
    let thin = pack_objects(&source, &["--revs", "--thin"], &format!("{new}\n^{old}\n"));
    let before = pack_dir_listing(&mirror);
    let err = taken_in(&mirror, &thin, &refuse).unwrap_err();
    assert!(!err.is_upstream_fault(), "{err}");
    let first = match asks()[..] {
        [Ask::Bases(first)] if first > 0 && first < ROOM_ASKED_EVERY => first,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    let ingested = taken_in(&mirror, &thin, &allow).unwrap();
    // The first base asked for, the others (less than ROOM_ASKED_EVERY here) told of once
    // written, the indexes asked for.
    let bases = std::fs::metadata(&ingested.pack).unwrap().len() - thin.len() as u64;
    assert!(bases > first, "more than one base");
    assert_eq!(
        asks(),
        vec![
            Ask::Bases(first),
            Ask::Written(bases - first),
            Ask::Last(indexes(&ingested))
        ]
    );
    let sent = u32::from_be_bytes(thin[8..12].try_into().unwrap());
    assert!(ingested.objects > sent, "bases added");
    git(&mirror, &["update-ref", "refs/heads/main", &new]);
    git(&mirror, &["fsck", "--strict", "--no-progress"]);
}

#[test]
fn bases_are_asked_for_before_more_than_the_interval_is_written_unasked() {
    use gitcache_mirror::ingest::{Ask, ROOM_ASKED_EVERY, ingest_pack_guarded};
    // Files of random bytes, two a little over half the interval and one over all of it,
    // then each changed a little: a thin pack of deltas, completed with bases stored whole.
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    let half = usize::try_from(ROOM_ASKED_EVERY / 2).unwrap() + 4096;
    let whole = usize::try_from(ROOM_ASKED_EVERY).unwrap() + 4096;
    let mut rng = repo::Rng::new(7);
    let files: Vec<Vec<u8>> = [half, half, whole].map(|size| rng.bytes(size)).into();
    for (i, content) in files.iter().enumerate() {
        std::fs::write(work.join(format!("f{i}")), content).unwrap();
    }
    gitcache_testkit::git::commit_all(&work, "old");
    let old = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    for (i, content) in files.iter().enumerate() {
        let mut changed = content.clone();
        changed.extend_from_slice(format!("changed {i}\n").as_bytes());
        std::fs::write(work.join(format!("f{i}")), changed).unwrap();
    }
    gitcache_testkit::git::commit_all(&work, "new");
    let new = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    let mirror = empty_mirror(dir.path(), "sha1");
    let first = ingest_pack(
        &mirror,
        Kind::Sha1,
        &mut &pack_objects(&work, &["--revs"], &format!("{old}\n"))[..],
    )
    .unwrap();
    // The mirror's entries of the three files, stored whole: the bases.
    let entries: Vec<u64> = git(
        &mirror,
        &["verify-pack", "-v", first.index.to_str().unwrap()],
    )
    .lines()
    .map(|line| line.split_whitespace().collect::<Vec<_>>())
    .filter(|fields| fields.len() >= 5 && fields[1] == "blob")
    .map(|fields| fields[3].parse::<u64>().unwrap())
    .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let thin = pack_objects(&work, &["--revs", "--thin"], &format!("{new}\n^{old}\n"));
    assert!(thin.len() < 1 << 20, "deltas, not whole files");

    let stop = std::sync::atomic::AtomicBool::new(false);
    let asked = std::sync::Mutex::new(Vec::new());
    let taken_in = |room: &dyn Fn(Ask) -> std::io::Result<()>| {
        ingest_pack_guarded(
            &mirror,
            Kind::Sha1,
            &mut &thin[..],
            Closure::Unchecked,
            None,
            &stop,
            room,
        )
    };
    // Refused at the second ask for a base: nothing left behind.
    let before = pack_dir_listing(&mirror);
    let err = taken_in(&|ask| {
        let mut asked = asked.lock().unwrap();
        asked.push(ask);
        match asked.iter().filter(|a| matches!(a, Ask::Bases(_))).count() {
            2 => Err(std::io::Error::other("no room")),
            _ => Ok(()),
        }
    })
    .unwrap_err();
    assert!(!err.is_upstream_fault(), "{err}");
    assert_eq!(pack_dir_listing(&mirror), before, "nothing left behind");
    asked.lock().unwrap().clear();

    let ingested = taken_in(&|ask| {
        asked.lock().unwrap().push(ask);
        Ok(())
    })
    .unwrap();
    let asks = std::mem::take(&mut *asked.lock().unwrap());
    // Whatever the bases' order: the first asked for before it is written; each base asked
    // for is one base, never bytes on the disk already; less than the interval written
    // between asks, so the base larger than it is asked for; the indexes last.
    assert!(matches!(asks.first(), Some(Ask::Bases(_))), "{asks:?}");
    assert!(matches!(asks.last(), Some(Ask::Last(_))), "{asks:?}");
    let mut asked_for: Vec<u64> = (asks.iter())
        .filter_map(|ask| match ask {
            Ask::Bases(bytes) => Some(*bytes),
            _ => None,
        })
        .collect();
    asked_for.sort();
    assert!(
        asked_for.len() >= 2 && asked_for.iter().all(|bytes| entries.contains(bytes)),
        "{asks:?} {entries:?}"
    );
    assert!(
        asked_for.iter().any(|bytes| *bytes > ROOM_ASKED_EVERY),
        "{asks:?}"
    );
    for ask in &asks {
        if let Ask::Written(bytes) = ask {
            assert!(*bytes <= ROOM_ASKED_EVERY, "{asks:?}");
        }
    }
    let bases = std::fs::metadata(&ingested.pack).unwrap().len() - thin.len() as u64;
    let counted: u64 = (asks.iter())
        .filter(|ask| !matches!(ask, Ask::Last(_)))
        .map(|ask| ask.bytes())
        .sum();
    assert_eq!(counted, bases, "each base counted once");
    assert_eq!(entries.iter().sum::<u64>(), bases);
    git(&mirror, &["update-ref", "refs/heads/main", &new]);
    git(&mirror, &["fsck", "--strict", "--no-progress"]);
}

/// The tip of `main` of a small repository generated in `dir` from `seed`, and the pack of
/// all its objects.
fn small_tip_and_pack(dir: &Path, seed: u64) -> (gix_hash::ObjectId, Vec<u8>) {
    let source = repo::generate(&dir.join("src.git"), &RepoSpec::small(seed))
        .unwrap()
        .path;
    let tip = git(&source, &["rev-parse", "main"]);
    let tip = gix_hash::ObjectId::from_hex(tip.trim().as_bytes()).unwrap();
    let objects = git(&source, &["rev-list", "--objects", "--all"]);
    (tip, pack_objects(&source, &[], &objects))
}

/// A pack's bytes, from when the receiver says so.
struct OpenedLater<'a>(&'a [u8], Option<std::sync::mpsc::Receiver<()>>);

impl std::io::Read for OpenedLater<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(start) = self.1.take() {
            start.recv().map_err(std::io::Error::other)?;
        }
        self.0.read(buf)
    }
}

/// While a first pack is read for the objects found early, its receiving hashes the blobs
/// stored whole as they arrive and tells that reading of each (where it ends, its CRC-32, its
/// id), in pack order, past where the reading has come; a reading over, or none, is told
/// nothing. The pack is taken in whole every time.
#[test]
fn a_first_pack_read_early_tells_its_reading_of_its_blobs() {
    use gitcache_mirror::ingest::{Announce, ingest_pack_announced};
    use gitcache_mirror::live::{Asked, Board};
    use gitcache_pack::incoming::{Incoming, Told};

    let dir = tempfile::tempdir().unwrap();
    let (tip, pack) = small_tip_and_pack(dir.path(), 31);
    // Each blob stored whole as a reading would be told of it.
    let blobs: Vec<(u64, Told)> = {
        let mut bytes = &pack[..];
        let mut read = Incoming::new(&mut bytes, Kind::Sha1, 0).unwrap();
        std::iter::from_fn(|| read.next_entry().unwrap())
            .filter_map(|e| {
                let (end, crc32) = (e.end(), e.crc32);
                Some((
                    e.offset,
                    Told {
                        end,
                        crc32,
                        id: e.id?,
                    },
                ))
            })
            .collect()
    };
    assert!(blobs.len() > 4, "{} blobs stored whole", blobs.len());
    // Where a reading midway has come: the middle blob's start.
    let midway = blobs[blobs.len() / 2].0;
    for reading in ["at the start", "midway", "over", "none"] {
        let home = dir.path().join(reading.replace(' ', "-"));
        std::fs::create_dir_all(&home).unwrap();
        let mirror = empty_mirror(&home, "sha1");
        let board = std::sync::Arc::new(Board::default());
        let (started, start) = std::sync::mpsc::channel();
        let (done, ingested) = std::sync::mpsc::channel::<()>();
        // A reading from the pack's announcement on (before any of its bytes come) to the
        // ingestion's end, then taking what it was told: one that never came further than
        // the pack's start, one that came to its middle blob, one over, or none.
        let offsets: Vec<u64> = blobs.iter().map(|(at, _)| *at).collect();
        let reader = std::thread::spawn({
            let board = std::sync::Arc::clone(&board);
            move || {
                let live = announced_on(&board);
                let _held = (reading != "none").then(|| live.read_early());
                match reading {
                    "midway" => live.reading_reached(midway),
                    "over" => live.reading_reached(u64::MAX),
                    _ => {}
                }
                started.send(()).unwrap();
                let _ = ingested.recv();
                let told: Vec<Option<Told>> = offsets.iter().map(|at| live.told_at(*at)).collect();
                (told, live.told_count())
            }
        });
        let mut gated = OpenedLater(&pack, Some(start));
        let taken = ingest_pack_announced(
            &mirror,
            Kind::Sha1,
            &mut std::io::BufReader::with_capacity(512, &mut gated),
            Closure::Unchecked,
            Some(Announce {
                board: std::sync::Arc::clone(&board),
                asked: Asked::first(vec![tip]),
            }),
        );
        drop(done);
        let taken = taken.unwrap();
        let (told, count) = reader.join().unwrap();
        let from = match reading {
            "at the start" => 0,
            "midway" => midway,
            _ => u64::MAX,
        };
        let expected: Vec<Option<Told>> = (blobs.iter())
            .map(|(at, blob)| (*at > from).then_some(*blob))
            .collect();
        assert_eq!(told, expected, "{reading}");
        assert_eq!(count, expected.iter().flatten().count(), "{reading}");
        assert!(std::fs::read(&taken.pack).unwrap() == pack);
        git(&mirror, &["fsck", "--strict", "--no-progress"]);
    }
}

/// A first pack is indexed behind answers only when a fetch waits for the objects found early
/// in it and a reading of it for them began by the end of its download: with every turn to
/// read taken elsewhere (no reading), that fetch waits for the indexing, which then runs at
/// the server's priority.
#[test]
fn the_indexing_steps_behind_only_once_a_reading_began() {
    use gitcache_mirror::ingest::{Announce, ingest_pack_announced};
    use gitcache_mirror::live::{Asked, Board};

    let dir = tempfile::tempdir().unwrap();
    let (tip, pack) = small_tip_and_pack(dir.path(), 37);
    #[cfg(target_os = "linux")]
    let lowers = rustix::process::getpriority_process(None).unwrap() < 19;
    #[cfg(not(target_os = "linux"))]
    let lowers = false;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (wanted, reading) in [(true, true), (true, false), (false, true)] {
        let home = dir.path().join(format!("{wanted}-{reading}"));
        std::fs::create_dir_all(&home).unwrap();
        let mirror = empty_mirror(&home, "sha1");
        let board = std::sync::Arc::new(Board::default());
        // A fetch waiting for what is found early (it stops waiting at once; the board
        // remembers it was asked).
        if wanted {
            runtime.block_on(async {
                let wants = [tip];
                let waiting = board.next_early(None, &wants, &[], Some(1));
                let _ = tokio::time::timeout(std::time::Duration::from_millis(1), waiting).await;
            });
            assert!(board.early_wanted());
        }
        // The bytes come once the reading is under way (or not).
        let (started, start) = std::sync::mpsc::channel();
        let (done, ingested) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn({
            let board = std::sync::Arc::clone(&board);
            move || {
                let live = announced_on(&board);
                let _held = reading.then(|| live.read_early());
                started.send(()).unwrap();
                let _ = ingested.recv();
            }
        });
        let taken = ingest_pack_announced(
            &mirror,
            Kind::Sha1,
            &mut std::io::BufReader::new(OpenedLater(&pack, Some(start))),
            Closure::Unchecked,
            Some(Announce {
                board: std::sync::Arc::clone(&board),
                asked: Asked::first(vec![tip]),
            }),
        );
        drop(done);
        reader.join().unwrap();
        let taken = taken.unwrap();
        assert_eq!(
            taken.indexed_behind,
            wanted && reading && lowers,
            "wanted: {wanted}, reading: {reading}"
        );
        git(&mirror, &["fsck", "--strict", "--no-progress"]);
    }
}
