//! Answers from the objects found in a pack as it arrived ([`gitcache_pack::early`]): a
//! shallow clone of the tips planned from them alone is what `git upload-pack` sends for the
//! whole repository, and an answer needing what was not found fails to plan.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Fixture, apply, fetch, git, upload_pack};
use gitcache_pack::early::{Found, Limits, Tips, Wants, scan, scan_for};
use gitcache_pack::fuzzing::{Arriving, read_arrived};
use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::request::Fetch;
use gitcache_protocol::response::parse_fetch_response;
use gitcache_testkit::git::{clone_pack, git_with_input};
use gitcache_testkit::repo::RepoSpec;

/// A repository of `pack` alone, indexed by what a scan of it within `limits` found, with the
/// refs and config of `src`.
fn early_repository(src: &Path, dir: &Path, pack: &[u8], limits: Limits) -> (PathBuf, usize) {
    let format = Repository::open(src).unwrap().object_format();
    let mut read = pack;
    let found = scan(&mut read, format, limits, &AtomicBool::new(false)).unwrap();
    assert!(read.is_empty(), "the scan read the pack to its end");
    assert!(found.checksum().is_some());
    early_repository_of(src, dir, pack, &found)
}

/// Reads `pack` at an offset, as `std::os::unix::fs::FileExt::read_at` reads a file.
fn read_at_of(pack: &[u8]) -> impl Fn(&mut [u8], u64) -> std::io::Result<usize> + '_ {
    move |buf: &mut [u8], at: u64| {
        let rest = pack.get(at as usize..).unwrap_or_default();
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// [`early_repository`] of what a scan `found`.
fn early_repository_of(src: &Path, dir: &Path, pack: &[u8], found: &Found) -> (PathBuf, usize) {
    let format = Repository::open(src).unwrap().object_format();
    let early = dir.join("early.git");
    let packs = early.join("objects").join("pack");
    std::fs::create_dir_all(&packs).unwrap();
    let read_at = read_at_of(pack);
    let (new_pack, new_index) = (packs.join("pack-new.pack"), packs.join("pack-new.idx"));
    // The refs' objects too, as a mirror's copy keeps them (its refs are written beside).
    let tips = git(src, &["for-each-ref", "--format=%(objectname)"]);
    let also: Vec<gix_hash::ObjectId> = tips
        .lines()
        .map(|tip| gix_hash::ObjectId::from_hex(tip.as_bytes()).unwrap())
        .collect();
    let written = found
        .write_pack(&read_at, &new_pack, &new_index, &also)
        .unwrap();
    let (checksum, copied) = (written.checksum, written.objects);
    let name = packs.join(format!("pack-{checksum}"));
    std::fs::rename(&new_pack, name.with_extension("pack")).unwrap();
    std::fs::rename(&new_index, name.with_extension("idx")).unwrap();
    // The pack written is whole as git reads it, its index the one git would write.
    let verified = std::process::Command::new(gitcache_testkit::git::git_program())
        .arg("verify-pack")
        .arg(format!("--object-format={format}"))
        .arg(name.with_extension("idx"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    std::fs::copy(src.join("config"), early.join("config")).unwrap();
    std::fs::copy(src.join("HEAD"), early.join("HEAD")).unwrap();
    let refs = git(
        src,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)%(if)%(*objectname)%(then)\n^%(*objectname)%(end)",
        ],
    );
    let packed = format!("# pack-refs with: peeled fully-peeled sorted \n{refs}");
    std::fs::write(early.join("packed-refs"), packed).unwrap();
    (early, copied)
}

/// The commits `found` in `pack` that a copy of it leaves out (see
/// [`gitcache_pack::early::Written`]), the copy written in `dir`.
fn commits_left_out(dir: &Path, pack: &[u8], found: &Found) -> gitcache_pack::early::LeftOut {
    std::fs::create_dir_all(dir).unwrap();
    let read_at = read_at_of(pack);
    let (copy, index) = (dir.join("left-out.pack"), dir.join("left-out.idx"));
    let written = found.write_pack(&read_at, &copy, &index, &[]).unwrap();
    written.commits_left_out
}

/// A bare clone of the work tree `work` at `bare`.
fn bare_clone_of(work: &Path, bare: &Path) -> PathBuf {
    let (work, to) = (work.to_str().unwrap(), bare.to_str().unwrap());
    git(work.as_ref(), &["clone", "-q", "--bare", work, to]);
    bare.to_owned()
}

/// The kind of every object of `repo`, by id.
fn object_kinds(repo: &Path) -> std::collections::HashMap<gix_hash::ObjectId, String> {
    let listed = git(
        repo,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname) %(objecttype)",
        ],
    );
    (listed.lines())
        .filter_map(|line| line.split_once(' '))
        .map(|(id, kind)| {
            (
                gix_hash::ObjectId::from_hex(id.as_bytes()).unwrap(),
                kind.into(),
            )
        })
        .collect()
}

/// Where each object of `pack` lies in it, as git indexes it (in a folder of `dir`).
fn pack_offsets(dir: &Path, pack: &[u8]) -> std::collections::HashMap<gix_hash::ObjectId, u64> {
    let dir = dir.join("offsets");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scanned.pack");
    std::fs::write(&file, pack).unwrap();
    git(&dir, &["index-pack", "scanned.pack"]);
    let index = std::fs::read(dir.join("scanned.idx")).unwrap();
    let listed = String::from_utf8(git_with_input(
        &dir,
        &["show-index", "--object-format=sha1"],
        &index,
    ))
    .unwrap();
    (listed.lines())
        .map(|line| {
            let mut fields = line.split(' ');
            let at = fields.next().unwrap().parse().unwrap();
            let id = gix_hash::ObjectId::from_hex(fields.next().unwrap().as_bytes()).unwrap();
            (id, at)
        })
        .collect()
}

/// What a scan of the SHA-1 `pack` for `tips` found, and how many bytes it read.
fn scanned_for(pack: &[u8], tips: &mut Tips) -> (Found, usize) {
    scanned_within(pack, tips, Limits::default())
}

/// [`scanned_for`] within `limits`.
fn scanned_within(pack: &[u8], tips: &mut Tips, limits: Limits) -> (Found, usize) {
    let mut read = pack;
    let found = scan_for(
        &mut read,
        gix_hash::Kind::Sha1,
        limits,
        &AtomicBool::new(false),
        Some(tips),
    )
    .unwrap();
    (found, pack.len() - read.len())
}

/// `request` answered from `repo` and by `git upload-pack` from the source: the same
/// shallow lines and the same objects. The client given ours.
fn answered_as_git(fixture: &Fixture, repo: &Repository, request: &Fetch) -> PathBuf {
    answered_to_as_git(fixture, repo, request, &fixture.empty_client("client.git"))
}

/// [`answered_as_git`] to `client`: the objects each answer adds to it are the same.
fn answered_to_as_git(
    fixture: &Fixture,
    repo: &Repository,
    request: &Fetch,
    client: &Path,
) -> PathBuf {
    let body = fixture.body(request.clone());
    let theirs = parse_fetch_response(&upload_pack(&fixture.src, &body), fixture.format).unwrap();
    let mut mine = Vec::new();
    plan(repo, request, fixture.format, &Options::default())
        .expect("planned from what was found as the pack arrived")
        .write_to(&mut mine)
        .unwrap();
    let mine = parse_fetch_response(&mine, fixture.format).unwrap();
    assert_eq!(mine.shallow, theirs.shallow);
    assert_eq!(mine.ready, theirs.ready);
    let (with_mine, added_mine) = apply(client, &mine, "ours", false);
    let (_, added_theirs) = apply(client, &theirs, "git", false);
    assert_eq!(added_mine, added_theirs, "the same objects as git's");
    with_mine
}

/// A depth-1 clone of `HEAD` with its tags, planned from the early repository, gives what
/// git gives from the whole one: the same shallow line and objects, a pack `index-pack
/// --strict` takes and a client `fsck --strict` finds whole.
fn shallow_clone_matches_git(spec: RepoSpec) {
    let fixture = Fixture::new(spec);
    let pack = clone_pack(&fixture.src);
    let (early, found) =
        early_repository(&fixture.src, fixture.dir.path(), &pack, Limits::default());
    let all = common::all_objects(&fixture.src).len();
    assert!(
        found < all,
        "a scan finds part of the objects ({found} of {all})"
    );

    let mut request = fetch(vec![fixture.rev("HEAD")]);
    request.deepen = Some(1);
    request.include_tag = true;
    let repo = Repository::open(&early).unwrap();
    let with_mine = answered_as_git(&fixture, &repo, &request);
    git(
        &with_mine,
        &[
            "update-ref",
            "refs/heads/main",
            &fixture.rev("HEAD").to_string(),
        ],
    );
    let out = fixture
        .client
        .run(&with_mine, &["fsck", "--strict", "--no-progress"])
        .unwrap();
    assert!(out.success(), "fsck: {out}");
}

#[test]
fn a_shallow_clone_is_answered_from_what_arrived() {
    shallow_clone_matches_git(RepoSpec::medium(7));
}

#[test]
fn a_shallow_clone_is_answered_from_what_arrived_sha256() {
    shallow_clone_matches_git(RepoSpec::small(8).sha256());
}

/// What was not found is not answered: with nothing decoded but the blobs hashed as they go
/// by, a clone fails to plan, and so does a full clone with too little kept for the deltas.
#[test]
fn an_answer_needing_what_was_not_found_fails_to_plan() {
    let fixture = Fixture::new(RepoSpec::small(9));
    let pack = clone_pack(&fixture.src);
    let nothing = Limits {
        cache_bytes: 0,
        object_bytes: 0,
        decoded_per_byte: 0,
        ..Limits::default()
    };
    let (early, found) = early_repository(&fixture.src, fixture.dir.path(), &pack, nothing);
    assert!(found > 0, "the blobs hashed as they went by");
    let repo = Repository::open(&early).unwrap();
    let mut request = fetch(vec![fixture.rev("HEAD")]);
    request.deepen = Some(1);
    let planned = plan(&repo, &request, fixture.format, &Options::default());
    assert!(planned.is_err(), "a commit not found cannot be answered");

    let dir = tempfile::tempdir().unwrap();
    let small = Limits {
        cache_bytes: 1,
        ..Limits::default()
    };
    let (early, _) = early_repository(&fixture.src, dir.path(), &pack, small);
    let repo = Repository::open(&early).unwrap();
    let planned = plan(
        &repo,
        &fetch(vec![fixture.rev("HEAD")]),
        fixture.format,
        &Options::default(),
    );
    assert!(planned.is_err(), "the deltas' objects were not found");
}

/// A pack cut short, or with a damaged entry, is an error, not a partial find.
#[test]
fn a_damaged_pack_is_an_error() {
    let fixture = Fixture::new(RepoSpec::tiny(10));
    let pack = clone_pack(&fixture.src);
    let format = gix_hash::Kind::Sha1;
    let stop = AtomicBool::new(false);
    let mut cut = &pack[..pack.len() / 2];
    assert!(scan(&mut cut, format, Limits::default(), &stop).is_err());
    let mut damaged = pack.clone();
    // The first entry's zlib stream, past its header.
    damaged[14] ^= 0xff;
    damaged[15] ^= 0xff;
    let mut read = &damaged[..];
    assert!(scan(&mut read, format, Limits::default(), &stop).is_err());
    let mut read = &pack[..];
    let stopped = scan(&mut read, format, Limits::default(), &AtomicBool::new(true));
    assert!(stopped.is_err(), "a stopped scan finds nothing");
}

/// A tip blob stored as a delta on a blob too large to keep is not found, yet planning lists
/// blobs without reading them: the plan is made, and says it is not held whole, so that it
/// is not sent. From a pack holding one entry more than was found (an object nothing
/// reaches, a delta by id), the pack written of what was found holds that entry no more:
/// a full clone sent it as it is gets exactly the objects reached.
#[test]
fn a_plan_sending_what_was_not_found_is_not_held_whole() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["init", "-q", "-b", "main", work.to_str().unwrap()],
    );
    let big: String = (0..2000)
        .map(|i| format!("line {i} of a large file\n"))
        .collect();
    std::fs::write(work.join("file"), &big).unwrap();
    gitcache_testkit::git::commit_all(&work, "large");
    // Smaller: stored as a delta on the larger version, as git prefers.
    let small: String = big.lines().take(1900).map(|l| format!("{l}\n")).collect();
    std::fs::write(work.join("file"), &small).unwrap();
    gitcache_testkit::git::commit_all(&work, "smaller");
    let src = bare_clone_of(&work, &dir.path().join("src.git"));
    let pack = clone_pack(&src);
    let tip_blob = git(&src, &["rev-parse", "main:file"]);
    let format = gix_hash::Kind::Sha1;
    // Objects over 4 KiB are hashed as they go by, not kept.
    let limits = Limits {
        object_bytes: 4 << 10,
        ..Limits::default()
    };
    let (early, _) = early_repository(&src, &dir.path().join("one"), &pack, limits);
    let repo = Repository::open(&early).unwrap();
    let tip =
        gix_hash::ObjectId::from_hex(git(&src, &["rev-parse", "main"]).trim().as_bytes()).unwrap();
    let tip_blob = gix_hash::ObjectId::from_hex(tip_blob.trim().as_bytes()).unwrap();
    assert!(
        !repo.contains(&tip_blob),
        "the tip's blob, a delta on a large one, is not found"
    );
    let mut request = fetch(vec![tip]);
    request.deepen = Some(1);
    let planned = plan(&repo, &request, format, &Options::default()).expect("planned");
    assert!(!planned.held_whole());

    // Every reachable object stored whole, and one entry more: a delta on the tip's blob by
    // id, which a scan leaves to the indexing (an object nothing reaches).
    let whole = git_with_input(
        &src,
        &["pack-objects", "--revs", "--stdout", "--window=0", "-q"],
        b"main\n",
    );
    let base = small.len();
    let mut delta = Vec::new();
    for mut size in [base, base + 2] {
        loop {
            let byte = (size & 0x7f) as u8;
            size >>= 7;
            if size == 0 {
                delta.push(byte);
                break;
            }
            delta.push(byte | 0x80);
        }
    }
    // Copy the whole base (offset 0, three bytes of size), then insert two bytes.
    delta.push(0x80 | 0x70);
    delta.extend_from_slice(&(base as u32).to_le_bytes()[..3]);
    delta.extend_from_slice(&[2, b'x', b'\n']);
    let mut extra = gitcache_testkit::packfile::entry_header(7, delta.len());
    extra.extend_from_slice(tip_blob.as_bytes());
    extra.extend_from_slice(&gitcache_testkit::packfile::zlib_stored(&delta, 0));
    let entries = &whole[12..whole.len() - 20];
    let count = u32::from_be_bytes(whole[8..12].try_into().unwrap()) + 1;
    let mut pack = b"PACK\0\0\0\x02".to_vec();
    pack.extend_from_slice(&count.to_be_bytes());
    pack.extend_from_slice(entries);
    pack.extend_from_slice(&extra);
    let checksum = {
        let mut hasher = gix_hash::hasher(format);
        hasher.update(&pack);
        hasher.try_finalize().unwrap()
    };
    pack.extend_from_slice(checksum.as_bytes());
    let all = count as usize;
    let limits = Limits::default();
    let (early, found) = early_repository(&src, &dir.path().join("two"), &pack, limits);
    let repo = Repository::open(&early).unwrap();
    let planned = plan(&repo, &fetch(vec![tip]), format, &Options::default());
    match planned {
        // Every reachable object found, and written alone: the early pack sent as it is
        // holds them and nothing else.
        Ok(planned) if found == all - 1 => {
            let Plan::Pack(pack_plan) = &planned else {
                panic!("a pack is sent");
            };
            assert!(pack_plan.is_whole_pack(), "sent as it is");
            assert!(planned.held_whole());
            let mut answer = Vec::new();
            planned.write_to(&mut answer).unwrap();
            let answer =
                parse_fetch_response(&answer, gitcache_protocol::ObjectFormat::Sha1).unwrap();
            let sent = answer.pack.expect("a pack");
            assert_eq!(
                u32::from_be_bytes(sent[8..12].try_into().unwrap()) as usize,
                all - 1
            );
        }
        other => panic!("found {found} of {all}: {other:?}"),
    }
}

/// Whatever is found, with less decoded (objects of 12 KiB at most), every
/// answer held whole by it is a pack `index-pack --strict` takes, for the tip of every
/// branch at depths one and two; and some are.
#[test]
fn every_answer_held_whole_is_a_whole_pack() {
    let fixture = Fixture::new(RepoSpec::medium(11));
    let pack = clone_pack(&fixture.src);
    let limits = Limits {
        object_bytes: 12 << 10,
        ..Limits::default()
    };
    let (early, found) = early_repository(&fixture.src, fixture.dir.path(), &pack, limits);
    let all = common::all_objects(&fixture.src).len();
    assert!(found < all, "part of the objects found ({found} of {all})");
    let repo = Repository::open(&early).unwrap();
    let client = fixture.empty_client("client.git");
    let tips = git(
        &fixture.src,
        &["for-each-ref", "--format=%(objectname)", "refs/heads"],
    );
    let mut held = 0;
    for (i, tip) in tips.lines().enumerate() {
        for depth in [1, 2] {
            let mut request = fetch(vec![gix_hash::ObjectId::from_hex(tip.as_bytes()).unwrap()]);
            request.deepen = Some(depth);
            request.include_tag = true;
            let Ok(planned) = plan(&repo, &request, fixture.format, &Options::default()) else {
                continue;
            };
            if !planned.held_whole() {
                continue;
            }
            held += 1;
            let mut answer = Vec::new();
            planned.write_to(&mut answer).unwrap();
            let answer = parse_fetch_response(&answer, fixture.format).unwrap();
            apply(&client, &answer, &format!("{i}-{depth}"), false);
        }
    }
    assert!(held > 0, "some answers are held whole");
}

/// Following the closure of the tip at depth one, a scan stops once it is found, before the
/// end of the pack (the rest of the history): what it found answers a shallow clone of the
/// tip as git does, and a clone of the whole history is not held whole by it.
#[test]
fn a_scan_for_the_tips_stops_once_they_are_found() {
    let fixture = Fixture::new(RepoSpec::medium(12));
    let pack = clone_pack(&fixture.src);
    let head = fixture.rev("HEAD");
    let mut tips = Tips::new([head]);
    let (found, read) = scanned_for(&pack, &mut tips);
    assert!(tips.complete());
    assert!(found.checksum().is_none(), "stopped before the trailer");
    assert!(
        read < pack.len() / 2,
        "stopped in the first half ({read} of {} bytes read)",
        pack.len()
    );
    let (early, _) = early_repository_of(&fixture.src, fixture.dir.path(), &pack, &found);
    let repo = Repository::open(&early).unwrap();
    let mut request = fetch(vec![head]);
    request.deepen = Some(1);
    request.include_tag = true;
    let planned = plan(&repo, &request, fixture.format, &Options::default()).unwrap();
    assert!(planned.held_whole());
    answered_as_git(&fixture, &repo, &request);
    let whole = plan(
        &repo,
        &fetch(vec![head]),
        fixture.format,
        &Options::default(),
    );
    assert!(whole.is_err() || whole.is_ok_and(|plan| !plan.held_whole()));
}

/// In a pack as `git repack -f` writes it (every tree of the history, then every blob), the
/// tip's trees come first among the trees: once they are found, the older trees are read
/// past, neither decoded nor hashed, and no tree after the tip's last is found. What was
/// found answers a shallow clone of the tip as git does.
#[test]
fn trees_after_the_closures_are_read_past() {
    let fixture = Fixture::new(RepoSpec::medium(12));
    git(&fixture.src, &["repack", "-adfq"]);
    let packs = gitcache_testkit::repo::pack_files(&fixture.src, "pack").unwrap();
    let pack = std::fs::read(&packs[0]).unwrap();
    let head = fixture.rev("HEAD");
    let mut tips = Tips::new([head]);
    let (found, _) = scanned_for(&pack, &mut tips);
    assert!(tips.complete());
    let passed = found.passed();
    assert!(passed.unawaited > 1000, "{passed:?}");

    let kinds = object_kinds(&fixture.src);
    let is_tree = |id: &gix_hash::ObjectId| kinds[id] == "tree";
    let offsets = pack_offsets(fixture.dir.path(), &pack);
    let tip = git(
        &fixture.src,
        &["ls-tree", "-r", "-t", "--object-only", "HEAD"],
    );
    let tip_tree = git(&fixture.src, &["rev-parse", "HEAD^{tree}"]);
    let last_tip_tree = (tip.lines().chain([tip_tree.trim()]))
        .map(|id| gix_hash::ObjectId::from_hex(id.as_bytes()).unwrap())
        .filter(is_tree)
        .map(|id| offsets[&id])
        .max()
        .unwrap();
    let last_tree = (offsets.iter())
        .filter(|(id, _)| is_tree(id))
        .map(|(_, at)| *at)
        .max()
        .unwrap();
    assert!(last_tip_tree < last_tree, "older trees follow the tip's");
    let trees_after = (offsets.iter())
        .filter(|(id, at)| **at > last_tip_tree && is_tree(id) && found.contains(id))
        .count();
    assert_eq!(trees_after, 0, "trees found after the tip's last");

    let (early, _) = early_repository_of(&fixture.src, fixture.dir.path(), &pack, &found);
    let repo = Repository::open(&early).unwrap();
    let mut request = fetch(vec![head]);
    request.deepen = Some(1);
    request.include_tag = true;
    answered_as_git(&fixture, &repo, &request);
}

/// A commit wanted once the scan has begun is followed too: the scan does not stop before
/// its closure is found, and what it found answers a shallow clone of it as git does.
/// Without it the scan stops before.
#[test]
fn a_commit_wanted_once_the_scan_began_is_followed() {
    let fixture = Fixture::new(RepoSpec::medium(13));
    let pack = clone_pack(&fixture.src);
    let head = fixture.rev("HEAD");
    let root = git(&fixture.src, &["rev-list", "--max-parents=0", "HEAD"]);
    let root = gix_hash::ObjectId::from_hex(root.trim().as_bytes()).unwrap();
    let shallow = |found: &Found, dir: &str, commit| {
        let dir = fixture.dir.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (early, _) = early_repository_of(&fixture.src, &dir, &pack, found);
        let repo = Repository::open(&early).unwrap();
        let mut request = fetch(vec![commit]);
        request.deepen = Some(1);
        plan(&repo, &request, fixture.format, &Options::default())
            .is_ok_and(|plan| plan.held_whole())
    };

    let mut alone = Tips::new([head]);
    let (found, read_alone) = scanned_for(&pack, &mut alone);
    assert!(alone.complete());
    assert!(
        !shallow(&found, "alone", root),
        "the root's closure lies past where the tip's ends"
    );

    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut later = Tips::new([head]).asking({
        let asked = std::sync::Arc::clone(&asked);
        move || {
            asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![head, root]
        }
    });
    let (found, read) = scanned_for(&pack, &mut later);
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(later.complete());
    assert!(
        read > read_alone,
        "read on for the root ({read} against {read_alone})"
    );
    assert!(shallow(&found, "later", root));
    assert!(shallow(&found, "later-head", head));
    let mut request = fetch(vec![root]);
    request.deepen = Some(1);
    let dir = fixture.dir.path().join("answer");
    std::fs::create_dir_all(&dir).unwrap();
    let (early, _) = early_repository_of(&fixture.src, &dir, &pack, &found);
    answered_as_git(&fixture, &Repository::open(&early).unwrap(), &request);
}

/// A shallow clone deeper than one, its history followed to its depth: what the scan found
/// (the closures alone copied, as a large pack's are) answers it as the whole repository
/// does, the same shallow commits and objects, the scan stopped before the pack's end.
/// Followed one generation less deep, the answer is not held whole.
#[test]
fn a_deeper_shallow_clone_is_answered_from_what_arrived() {
    let fixture = Fixture::new(RepoSpec::medium(17));
    let main = fixture.rev("refs/heads/main");
    let pack = clone_pack(&fixture.src);
    let closures_alone = Limits {
        copy_all_bytes: 0,
        ..Limits::default()
    };
    let mut request = fetch(vec![main]);
    (request.deepen, request.include_tag) = (Some(7), true);
    let answer_of = |repo: &Repository| {
        let planned = plan(repo, &request, fixture.format, &Options::default()).unwrap();
        let held = planned.held_whole();
        let mut body = Vec::new();
        planned.write_to(&mut body).unwrap();
        let answer = parse_fetch_response(&body, fixture.format).unwrap();
        let pack = answer.pack.expect("a pack");
        let count = u32::from_be_bytes(pack[8..12].try_into().unwrap());
        (held, answer.shallow, count)
    };
    let whole = answer_of(&Repository::open(&fixture.src).unwrap());
    for (depth, dir) in [(7, "deep"), (6, "shallower")] {
        let mut tips = Tips::default().wanting(Wants {
            tips: vec![main],
            deep: vec![(main, depth)],
            ..Wants::default()
        });
        let (found, read) = scanned_within(&pack, &mut tips, closures_alone);
        assert!(tips.complete());
        assert!(read < pack.len(), "stopped before the pack's end");
        let dir = fixture.dir.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (early, _) = early_repository_of(&fixture.src, &dir, &pack, &found);
        let repo = Repository::open(&early).unwrap();
        match depth {
            7 => assert_eq!(answer_of(&repo), whole),
            _ => {
                let planned = plan(&repo, &request, fixture.format, &Options::default());
                assert!(planned.is_err() || !planned.unwrap().held_whole());
            }
        }
    }
    assert!(!whole.1.is_empty(), "a shallow boundary");
}

/// An incremental fetch, its history walked from the want down to the client's haves: what
/// the scan found answers it as git does (thin or not, with `done` or negotiating), the
/// client whole after; it acknowledges the have it reached, and is ready. The scan stops
/// before the pack's end, and the copy holds the closures alone. Without the walk, the
/// commits between the want and the have are not there: the answer fails to plan, or is not
/// held whole.
#[test]
fn an_incremental_fetch_is_answered_from_what_arrived() {
    let fixture = Fixture::new(RepoSpec::medium(16));
    let client = fixture.clone_client("old.git", &[]);
    let old_main = fixture.rev("refs/heads/main");
    gitcache_testkit::repo::append_commits(&fixture.src, "main", 50, 9).unwrap();
    let new_main = fixture.rev("refs/heads/main");
    let pack = clone_pack(&fixture.src);
    let haves = common::refs_of(&client, "refs/heads/");
    assert!(haves.contains(&old_main));
    let wants = Wants {
        tips: vec![new_main],
        walked: vec![new_main],
        haves: haves.clone(),
        deep: Vec::new(),
    };
    // The copy holds the closures alone, as a large pack's does.
    let closures_alone = Limits {
        copy_all_bytes: 0,
        ..Limits::default()
    };
    let mut tips = Tips::default().wanting(wants);
    let (found, read) = scanned_within(&pack, &mut tips, closures_alone);
    assert!(tips.complete());
    assert!(
        found.checksum().is_none() && read < pack.len(),
        "stopped before the pack's end ({read} of {} bytes read)",
        pack.len()
    );
    // Every have found is in the copy.
    let left_out = commits_left_out(&fixture.dir.path().join("walked"), &pack, &found);
    assert!(!left_out.is_empty(), "the copy holds the closures alone");
    assert!(haves.iter().all(|have| !left_out.may_hold(have)));
    let (early, _) = early_repository_of(&fixture.src, fixture.dir.path(), &pack, &found);
    let repo = Repository::open(&early).unwrap();
    for (done, thin) in [(true, true), (true, false), (false, true)] {
        let mut request = fetch(vec![new_main]);
        (request.haves, request.done, request.thin_pack) = (haves.clone(), done, thin);
        request.include_tag = true;
        let planned = plan(&repo, &request, fixture.format, &Options::default()).unwrap();
        assert!(planned.held_whole(), "done {done}, thin {thin}");
        let with_mine = answered_to_as_git(&fixture, &repo, &request, &client);
        let mut answer = Vec::new();
        plan(&repo, &request, fixture.format, &Options::default())
            .unwrap()
            .write_to(&mut answer)
            .unwrap();
        let answer = parse_fetch_response(&answer, fixture.format).unwrap();
        if !done {
            assert!(answer.acks.contains(&old_main) && answer.ready);
        }
        git(
            &with_mine,
            &["update-ref", "refs/heads/main", &new_main.to_string()],
        );
        let out = fixture
            .client
            .run(&with_mine, &["fsck", "--strict", "--no-progress"])
            .unwrap();
        assert!(out.success(), "fsck: {out}");
    }

    // No walk: the commits between the want and the have are not followed.
    let mut short = Tips::default().wanting(Wants {
        tips: vec![new_main],
        walked: Vec::new(),
        haves: haves.clone(),
        deep: Vec::new(),
    });
    let (found, _) = scanned_within(&pack, &mut short, closures_alone);
    let dir = fixture.dir.path().join("short");
    std::fs::create_dir_all(&dir).unwrap();
    let (early, _) = early_repository_of(&fixture.src, &dir, &pack, &found);
    let repo = Repository::open(&early).unwrap();
    let mut request = fetch(vec![new_main]);
    request.haves = haves;
    let between = fixture.rev("main~1");
    match plan(&repo, &request, fixture.format, &Options::default()) {
        Err(gitcache_pack::Error::MissingObject { oid }) => assert_eq!(oid, between),
        other => panic!(
            "planned without the commits between: {:?}",
            other.map(|_| ())
        ),
    }
    let left_out = commits_left_out(&dir.join("left-out"), &pack, &found);
    assert!(left_out.may_hold(&between));
    // Copied whole, nothing is left out.
    let (found, _) = scanned_for(&pack, &mut Tips::new([new_main]));
    assert!(commits_left_out(&dir.join("all"), &pack, &found).is_empty());
}

/// A commit wanted that the pack lacks holds the scan to the pack's end; what was found
/// once the closure of the one found was is given meanwhile, once, and answers a shallow
/// clone of it as git does.
#[test]
fn a_want_the_pack_lacks_does_not_hold_back_what_was_found() {
    let fixture = Fixture::new(RepoSpec::medium(14));
    let pack = clone_pack(&fixture.src);
    let head = fixture.rev("HEAD");
    let lacked = gix_hash::ObjectId::from_bytes_or_panic(&[0x5a; 20]);
    let posted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tips = Tips::new([head, lacked]).meanwhile({
        let posted = std::sync::Arc::clone(&posted);
        move |found| posted.lock().unwrap().push(found)
    });
    let (found, read) = scanned_for(&pack, &mut tips);
    assert!(!tips.complete());
    assert_eq!(read, pack.len(), "read to the end for the id lacked");
    assert!(found.checksum().is_some());
    let posted = std::mem::take(&mut *posted.lock().unwrap());
    assert_eq!(posted.len(), 1, "given once");
    let early = &posted[0];
    assert!(early.checksum().is_none(), "before the end");
    assert!(
        early.len() < found.len() / 2,
        "what the tip needs ({} of {} objects)",
        early.len(),
        found.len()
    );
    let (repo, _) = early_repository_of(&fixture.src, fixture.dir.path(), &pack, early);
    let mut request = fetch(vec![head]);
    request.deepen = Some(1);
    request.include_tag = true;
    answered_as_git(&fixture, &Repository::open(&repo).unwrap(), &request);
}

/// A long history's trees are deltas in chains whose bases lie far behind them: with little
/// kept, a scan for the tip finds its trees' bases gone and reads the pack to its end without
/// the tip's closure. Reading those bases back from the pack, it finds the closure before the
/// end, and what it found answers a shallow clone of the tip as git does.
#[test]
fn trees_whose_bases_are_gone_are_read_back() {
    let fixture = Fixture::new(RepoSpec::history(15, 3000));
    let pack = clone_pack(&fixture.src);
    let head = fixture.rev("HEAD");
    // The copy of a closure alone, whatever the size (a long history's way).
    let limits = Limits {
        cache_bytes: 1 << 20,
        copy_all_bytes: 0,
        ..Limits::default()
    };
    let scanned = |tips: &mut Tips| {
        let mut read = &pack[..];
        let stop = AtomicBool::new(false);
        let found = scan_for(&mut read, fixture.format, limits, &stop, Some(tips)).unwrap();
        (found, pack.len() - read.len())
    };

    let mut without = Tips::new([head]);
    let (found, read) = scanned(&mut without);
    assert!(!without.complete(), "{without:?}");
    assert!(found.passed().base_gone > 0, "{:?}", found.passed());
    assert_eq!((read, found.read_back()), (pack.len(), 0));

    // Read back from what has arrived: the bytes the scan has read.
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut with =
        Tips::new([head]).reading_back(read_arrived(pack.clone(), std::sync::Arc::clone(&arrived)));
    let mut arriving = std::io::BufReader::new(Arriving {
        data: &pack,
        arrived: &arrived,
    });
    let stop = AtomicBool::new(false);
    let found = scan_for(
        &mut arriving,
        fixture.format,
        limits,
        &stop,
        Some(&mut with),
    )
    .unwrap();
    let read = arrived.load(std::sync::atomic::Ordering::SeqCst);
    assert!(with.complete(), "{with:?}");
    assert!(found.read_back() > 0);
    assert!(
        read < pack.len(),
        "stopped before the end ({read} of {} bytes)",
        pack.len()
    );
    // The copy holds the tip's closure, not the history found on the way to it.
    let (early, copied) = early_repository_of(&fixture.src, fixture.dir.path(), &pack, &found);
    assert!(
        copied < found.len() / 2,
        "{copied} of {} objects found copied",
        found.len()
    );
    let mut request = fetch(vec![head]);
    request.deepen = Some(1);
    request.include_tag = true;
    answered_as_git(&fixture, &Repository::open(&early).unwrap(), &request);
}

/// Blobs stored whole that the pack's receiving told of (where each ends, its CRC-32, its
/// id) are found without being inflated, and the deltas resting on them are decoded from
/// them read back from the pack: a scan for a deeper shallow clone finds what it finds
/// untold, and what it found answers that clone as git does. A blob told wrongly is an error,
/// and without reading back the deltas on blobs told of are passed over.
#[test]
fn blobs_told_of_are_found_without_being_inflated() {
    use gitcache_pack::incoming::{Incoming, Told};
    use gix_pack::data::entry::Header;

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    // One file grown by each commit: `pack-objects` stores its newest version whole and the
    // older ones as deltas on it. Another, rewritten each time, stays whole.
    let mut grown = String::new();
    for round in 0..6 {
        for line in 0..400 {
            grown.push_str(&format!("round {round} line {line}\n"));
        }
        std::fs::write(work.join("grown.txt"), &grown).unwrap();
        std::fs::write(
            work.join(format!("other-{round}.txt")),
            format!("{round}\n"),
        )
        .unwrap();
        gitcache_testkit::git::commit_all(&work, &format!("round {round}"));
    }
    let src = bare_clone_of(&work, &dir.path().join("src.git"));
    let format = Repository::open(&src).unwrap().object_format();
    let pack = clone_pack(&src);
    let main =
        gix_hash::ObjectId::from_hex(git(&src, &["rev-parse", "main"]).trim().as_bytes()).unwrap();
    // What a receiving hashing every blob stored whole tells, and how many deltas rest on one.
    let mut told = std::collections::HashMap::new();
    let mut on_blobs = 0;
    {
        let mut read = &pack[..];
        let mut incoming = Incoming::new(&mut read, format, 0).unwrap();
        while let Some(entry) = incoming.next_entry().unwrap() {
            match (entry.header, entry.id) {
                (Header::OfsDelta { base_distance }, _)
                    if told.contains_key(&(entry.offset - base_distance)) =>
                {
                    on_blobs += 1;
                }
                (_, Some(id)) => {
                    let (end, crc32) = (entry.end(), entry.crc32);
                    told.insert(entry.offset, Told { end, crc32, id });
                }
                _ => {}
            }
        }
    }
    assert!(on_blobs >= 4, "{on_blobs} deltas on blobs stored whole");
    let told = std::sync::Arc::new(told);
    let wants = || Wants {
        tips: vec![main],
        deep: vec![(main, 6)],
        ..Wants::default()
    };
    let read_back = || {
        let pack = pack.clone();
        move |buf: &mut [u8], at: u64| read_at_of(&pack)(buf, at)
    };
    // Told of with what `tell` says, how many were.
    let telling = |tell: fn(Told) -> Told| {
        let (told, asked) = (told.clone(), std::sync::Arc::new(AtomicUsize::new(0)));
        let counted = std::sync::Arc::clone(&asked);
        let tell = move |at| {
            let blob = told.get(&at).copied().map(tell);
            counted.fetch_add(usize::from(blob.is_some()), Ordering::Relaxed);
            blob
        };
        (tell, asked)
    };
    let scanned = |tips: &mut Tips| {
        let mut read = &pack[..];
        scan_for(
            &mut read,
            format,
            Limits::default(),
            &AtomicBool::new(false),
            Some(tips),
        )
    };

    let mut untold = Tips::default().wanting(wants()).reading_back(read_back());
    let untold_found = scanned(&mut untold).unwrap();
    assert!(untold.complete());
    let (tell, asked) = telling(|blob| blob);
    let mut tips = Tips::default()
        .wanting(wants())
        .reading_back(read_back())
        .told_by(tell);
    let found = scanned(&mut tips).unwrap();
    assert!(tips.complete());
    assert!(asked.load(Ordering::Relaxed) > 0, "blobs told of");
    assert_eq!(found.told(), asked.load(Ordering::Relaxed) as u64);
    // The deltas on them decoded from the blobs read back (the untold scan kept them).
    assert!(
        found.read_back() > untold_found.read_back(),
        "blobs read back"
    );
    assert_eq!(
        (found.len(), found.entries()),
        (untold_found.len(), untold_found.entries())
    );
    for id in object_kinds(&src).keys() {
        assert_eq!(found.contains(id), untold_found.contains(id), "{id}");
    }
    let mut request = fetch(vec![main]);
    (request.deepen, request.include_tag) = (Some(6), true);
    let answer = dir.path().join("answer");
    std::fs::create_dir_all(&answer).unwrap();
    let (early, _) = early_repository_of(&src, &answer, &pack, &found);
    // Held whole by what was found: the same shallow commits and objects as the whole
    // repository's.
    let answer_of = |repo: &Repository| {
        let planned = plan(repo, &request, format, &Options::default()).unwrap();
        let held = planned.held_whole();
        let mut body = Vec::new();
        planned.write_to(&mut body).unwrap();
        let answer = parse_fetch_response(&body, format).unwrap();
        let pack = answer.pack.expect("a pack");
        let count = u32::from_be_bytes(pack[8..12].try_into().unwrap());
        (held, answer.shallow, count)
    };
    let (held, shallow, count) = answer_of(&Repository::open(&early).unwrap());
    assert!(held);
    let (_, whole_shallow, whole_count) = answer_of(&Repository::open(&src).unwrap());
    assert_eq!((shallow, count), (whole_shallow, whole_count));

    // Without reading back, the deltas on blobs told of are passed over.
    let (tell, _) = telling(|blob| blob);
    let mut unread = Tips::default().wanting(wants()).told_by(tell);
    let passed = scanned(&mut unread).unwrap();
    assert!(passed.passed().base_gone > 0, "{:?}", passed.passed());
    assert!(passed.len() < untold_found.len());

    // A blob told wrongly: an error, not a wrong id.
    for wrong in [
        (|blob: Told| Told {
            crc32: !blob.crc32,
            ..blob
        }) as fn(Told) -> Told,
        |blob: Told| Told {
            end: blob.end - 1,
            ..blob
        },
    ] {
        let (tell, _) = telling(wrong);
        let mut tips = Tips::default().wanting(wants()).told_by(tell);
        assert!(scanned(&mut tips).is_err());
    }
}
