//! Reuse of stored data: whole packs sent as they are, stored deltas copied.

use std::path::Path;

use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::request::Fetch;
use gitcache_protocol::response::parse_fetch_response;
use gitcache_protocol::{ObjectFormat, ObjectId};
use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::packfile;
use gitcache_testkit::repo::{self, RepoSpec, text_lines};

fn oids(text: &str) -> Vec<ObjectId> {
    text.lines()
        .map(|l| ObjectId::from_hex(l.trim().as_bytes()).unwrap())
        .collect()
}

fn clone_request(wants: Vec<ObjectId>) -> Fetch {
    Fetch {
        wants,
        done: true,
        ofs_delta: true,
        thin_pack: true,
        no_progress: true,
        ..Fetch::default()
    }
}

fn pack_file(repo: &Path) -> std::path::PathBuf {
    let dir = repo.join("objects/pack");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap()
}

/// A repository packed into one pack with deltas, as a consolidated mirror is.
fn packed_repo(seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::small(seed)).unwrap();
    git(
        &path,
        &[
            "repack",
            "-a",
            "-d",
            "-f",
            "--depth=50",
            "--window=50",
            "-q",
        ],
    );
    (dir, path)
}

/// `client` holds the whole history of `tip`, as `git fsck --strict` sees it from a branch
/// there.
fn assert_complete_at(client: &Path, tip: &ObjectId) {
    git(client, &["update-ref", "refs/heads/main", &tip.to_string()]);
    git(client, &["fsck", "--strict", "--no-progress"]);
}

/// A new bare repository `c.git` in `dir` holding the objects `revs` (lines for `git
/// pack-objects --revs`, empty for none) reach in `repo`: a client that has them.
fn client_holding(dir: &Path, repo: &Path, revs: &[u8]) -> std::path::PathBuf {
    let client = dir.join("c.git");
    git(dir, &["init", "-q", "--bare", client.to_str().unwrap()]);
    if !revs.is_empty() {
        let held = gitcache_testkit::git::git_with_input(
            repo,
            &["pack-objects", "--revs", "--stdout"],
            revs,
        );
        gitcache_testkit::git::git_with_input(&client, &["index-pack", "--stdin"], &held);
    }
    client
}

/// A new work tree (on `main`), and where its bare copy goes.
fn work_tree() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["init", "-q", "-b", "main", work.to_str().unwrap()],
    );
    let path = dir.path().join("r.git");
    (dir, work, path)
}

/// A bare copy of `work` at `path`, in one pack with deltas searched afresh.
fn bare_packed_copy(work: &Path, path: &Path) {
    git(
        work,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
    git(path, &["repack", "-adfq", "--window=10", "--depth=50"]);
}

fn send(repo: &Repository, fetch: &Fetch) -> (bool, gitcache_pack::PackStats, Vec<u8>) {
    send_with(repo, fetch, &Options::default())
}

fn send_with(
    repo: &Repository,
    fetch: &Fetch,
    options: &Options,
) -> (bool, gitcache_pack::PackStats, Vec<u8>) {
    let Plan::Pack(p) = plan(repo, fetch, ObjectFormat::Sha1, options).unwrap() else {
        panic!("no pack")
    };
    let whole = p.is_whole_pack();
    let mut out = Vec::new();
    let stats = Plan::Pack(p).write_to(&mut out).unwrap();
    let pack = parse_fetch_response(&out, ObjectFormat::Sha1)
        .unwrap()
        .pack
        .unwrap();
    (whole, stats, pack)
}

#[test]
fn a_clone_of_everything_sends_the_stored_pack_as_it_is() {
    let (_dir, path) = packed_repo(31);
    let repo = Repository::open(&path).unwrap();
    let all = oids(&git(&path, &["for-each-ref", "--format=%(objectname)"]));
    let (whole, stats, pack) = send(&repo, &clone_request(all.clone()));
    assert!(whole && stats.whole_pack);
    assert_eq!(
        pack,
        std::fs::read(pack_file(&path)).unwrap(),
        "byte for byte the stored pack"
    );

    // Without ofs-delta the stored pack (which has ofs-deltas) cannot go as it is.
    let mut no_ofs = clone_request(all);
    no_ofs.ofs_delta = false;
    let (whole, stats, _) = send(&repo, &no_ofs);
    assert!(!whole);
    assert_eq!(
        stats.reused, stats.objects,
        "every entry still copied, deltas as ref-deltas"
    );
}

#[test]
fn marked_tips_skip_the_walk_and_stay_correct() {
    let (_dir, path) = packed_repo(32);
    let repo = Repository::open(&path).unwrap();
    let all = oids(&git(&path, &["for-each-ref", "--format=%(objectname)"]));
    let marked = repo
        .mark_pack_tips(&all)
        .unwrap()
        .expect("one pack holds exactly the closure");
    assert_eq!(marked, pack_file(&path));
    assert!(marked.with_extension("tips").is_file());
    // git still reads the repository (it ignores the extra file).
    git(&path, &["fsck", "--strict", "--no-progress"]);
    // A subset of the tips is not the closure: no mark.
    assert_eq!(repo.mark_pack_tips(&all[..1]).unwrap(), None);

    let mut tagged = clone_request(all.clone());
    tagged.include_tag = true;
    let (whole, _, pack) = send(&repo, &tagged);
    assert!(whole);
    assert_eq!(pack, std::fs::read(&marked).unwrap());

    // A new annotated tag outside the pack, pointing into it: include-tag must bring it, so the
    // marked pack alone no longer answers.
    git(&path, &["tag", "-a", "-m", "late", "late-tag", "main~3"]);
    let repo = Repository::open(&path).unwrap();
    let (whole, stats, _) = send(&repo, &tagged);
    assert!(!whole);
    assert_eq!(
        stats.objects as usize,
        git(&path, &["rev-list", "--objects", "--all"])
            .lines()
            .count(),
        "the late tag is included"
    );
}

/// A pack its caller wrote from the plan of the tips is marked without a walk, but only
/// when its count and the tips agree with it.
#[test]
fn a_written_pack_is_marked_without_a_walk_when_it_agrees() {
    let (_dir, path) = packed_repo(34);
    let repo = Repository::open(&path).unwrap();
    let all = oids(&git(&path, &["for-each-ref", "--format=%(objectname)"]));
    let pack = pack_file(&path);
    let count = git(&path, &["rev-list", "--objects", "--all"])
        .lines()
        .count();
    let elsewhere = path.join("objects/pack/pack-0000.pack");
    let stranger = oids("0123456789abcdef0123456789abcdef01234567");
    for (what, at, tips, objects) in [
        ("another count", &pack, all.clone(), count + 1),
        ("a pack it does not have", &elsewhere, all.clone(), count),
        (
            "a tip outside it",
            &pack,
            [all.clone(), stranger].concat(),
            count,
        ),
    ] {
        assert_eq!(
            repo.mark_written_pack(at, &tips, objects).unwrap(),
            None,
            "{what}"
        );
        assert!(!pack.with_extension("tips").exists(), "{what}");
    }
    assert_eq!(
        repo.mark_written_pack(&pack, &all, count).unwrap(),
        Some(pack.clone())
    );
    // The mark is the one the walk would have made: a clone of the tips is the pack.
    let repo = Repository::open(&path).unwrap();
    let (whole, _, sent) = send(&repo, &clone_request(all));
    assert!(whole);
    assert_eq!(sent, std::fs::read(&pack).unwrap());
}

#[test]
fn stored_deltas_are_copied_not_recomputed() {
    let (_dir, path) = packed_repo(33);
    let repo = Repository::open(&path).unwrap();
    let main = oids(&git(&path, &["rev-parse", "main"]));
    // main alone is a strict subset of the pack: written object by object.
    let (whole, stats, pack) = send(&repo, &clone_request(main.clone()));
    assert!(!whole);
    assert!(stats.reused_deltas > 0, "{stats:?}");
    let recompressed = stats.objects - stats.reused;
    assert!(
        recompressed * 20 <= stats.objects,
        "at most 5% recompressed: {stats:?}"
    );
    // The pack is valid and complete for main.
    let check = tempfile::tempdir().unwrap();
    let client = check.path().join("c.git");
    git(
        check.path(),
        &["init", "-q", "--bare", client.to_str().unwrap()],
    );
    gitcache_testkit::git::git_with_input(&client, &["index-pack", "--strict", "--stdin"], &pack);
    assert_complete_at(&client, &main[0]);
}

/// Issue 12: the writer plans ahead by bytes as well as by entries: a repository of large
/// incompressible files does not hold 512 of them in memory per request. Issue 16: large
/// entries sent as they are stored are not held at all, but read when written.
#[test]
fn the_writers_look_ahead_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.git");
    git(
        dir.path(),
        &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()],
    );
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["init", "-q", "-b", "main", work.to_str().unwrap()],
    );
    let mut rng = repo::Rng::new(1241);
    let mut add = |name: &str, count: usize| {
        for i in 0..count {
            std::fs::write(work.join(format!("{name}-{i}.bin")), rng.bytes(1 << 20)).unwrap();
        }
        gitcache_testkit::git::commit_all(&work, name);
        git(&work, &["push", "-q", path.to_str().unwrap(), "main"]);
    };
    // Two packs of large files: a clone is sent object by object, not as a stored pack.
    for half in ["first", "second"] {
        add(half, 20);
        git(&path, &["repack", "-dq", "--window=0"]);
    }
    let clone = |path: &std::path::Path| {
        let repo = Repository::open(path).unwrap();
        let fetch = clone_request(oids(&git(path, &["rev-parse", "main"])));
        let (whole, stats, pack) = send(&repo, &fetch);
        assert!(!whole);
        let check = tempfile::tempdir().unwrap();
        let client = check.path().join("c.git");
        git(
            check.path(),
            &["init", "-q", "--bare", client.to_str().unwrap()],
        );
        gitcache_testkit::git::git_with_input(
            &client,
            &["index-pack", "--strict", "--stdin"],
            &pack,
        );
        (stats, pack.len())
    };
    let (stats, len) = clone(&path);
    assert_eq!(stats.objects, 44, "40 blobs, two trees, two commits");
    assert!(len > 40 << 20);
    assert_eq!(stats.reused, 44);
    assert!(
        stats.lookahead_bytes < 64 << 10,
        "{} bytes of stored entries held ahead",
        stats.lookahead_bytes
    );
    // Each read once: its header alone while planning, the whole entry when written.
    assert!(
        stats.stored_read_bytes < len as u64 + (64 << 10),
        "{} bytes of stored entries read for {len} sent",
        stats.stored_read_bytes
    );
    // Forty more, left loose (a push of so few objects is not kept as a pack): each is
    // compressed anew, and the compressed objects held ahead are bounded (the stored entries
    // passed on the way count towards the same bound, so that planning reads no further
    // ahead than it may hold).
    add("loose", 40);
    let (stats, len) = clone(&path);
    assert_eq!(stats.objects, 86);
    assert!(len > 80 << 20);
    assert!(
        stats.lookahead_bytes <= (32 << 20) + (2 << 20),
        "{} bytes planned ahead",
        stats.lookahead_bytes
    );
    assert!(
        stats.lookahead_bytes >= 24 << 20,
        "batches are still large: {}",
        stats.lookahead_bytes
    );
}

/// Issue 16: a stored delta whose base is not sent gets a new delta against an object further
/// down its stored chain that is sent (or, in a thin pack, that the client has), instead of
/// going whole.
#[test]
fn a_delta_whose_base_is_not_sent_is_made_again_against_one_that_is() {
    let (_dir, work, path) = work_tree();
    let shared: String = (0..400)
        .map(|i| {
            format!(
                "line {i} of the part all versions share, {}\n",
                i * 7919 % 10007
            )
        })
        .collect();
    let lines = |word: &str, n: usize| -> String {
        (0..n)
            .map(|i| format!("{word} {i} {}\n", i * 31 % 97))
            .collect()
    };
    let beta = lines("beta", 60);
    // By size, git makes the largest the base: the side branch's version (`side`) is a
    // delta against main's first, and main's second a delta against `side`, which a clone
    // of main does not send.
    let first = format!("{shared}{}", lines("alpha", 80));
    let side = format!("{shared}{beta}");
    let second = format!("{shared}{}", &beta[..beta.len() - 12]);
    let commit = |content: &str, message: &str| {
        std::fs::write(work.join("f.txt"), content).unwrap();
        gitcache_testkit::git::commit_all(&work, message);
    };
    commit(&first, "first");
    git(&work, &["checkout", "-q", "-b", "side"]);
    commit(&side, "side");
    git(&work, &["checkout", "-q", "main"]);
    commit(&second, "second");
    bare_packed_copy(&work, &path);

    let blob = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (first_id, side_id, second_id) =
        (blob("main~1:f.txt"), blob("side:f.txt"), blob("main:f.txt"));
    let idx = pack_file(&path).with_extension("idx");
    let listing = git(&path, &["verify-pack", "-v", idx.to_str().unwrap()]);
    let base_of = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(6))
            .map(str::to_owned)
    };
    assert_eq!(base_of(&second_id), Some(side_id.clone()), "{listing}");
    assert_eq!(base_of(&side_id), Some(first_id.clone()), "{listing}");

    let repo = Repository::open(&path).unwrap();
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let first_commit = oids(&git(&path, &["rev-parse", "main~1"]));
    let mut thin_fetch = clone_request(main.clone());
    thin_fetch.haves = first_commit;
    for (fetch, has_first) in [
        (clone_request(main.clone()), false),
        (
            Fetch {
                ofs_delta: false,
                ..clone_request(main.clone())
            },
            false,
        ),
        (thin_fetch, true),
    ] {
        let (_, stats, pack) = send(&repo, &fetch);
        assert_eq!(stats.new_deltas, 1, "{stats:?}");
        let check = tempfile::tempdir().unwrap();
        // What the client has: the first commit's objects, or nothing.
        let held: &[u8] = if has_first { b"main~1\n" } else { b"" };
        let client = client_holding(check.path(), &path, held);
        let args: &[&str] = if has_first {
            &["index-pack", "--strict", "--stdin", "--fix-thin"]
        } else {
            &["index-pack", "--strict", "--stdin"]
        };
        gitcache_testkit::git::git_with_input(&client, args, &pack);
        assert_complete_at(&client, &main[0]);
        let content = git(&client, &["cat-file", "blob", &second_id]);
        assert_eq!(content, second);
    }
}

/// A new bare repository `name` in `dir` holding `pack`, a depth-1 answer, its objects
/// checked (`--strict` would also want the commit's parent, which a depth-1 clone leaves
/// out).
fn shallow_client(dir: &Path, name: &str, pack: &[u8]) -> std::path::PathBuf {
    let client = dir.join(name);
    git(dir, &["init", "-q", "--bare", client.to_str().unwrap()]);
    gitcache_testkit::git::git_with_input(
        &client,
        &["index-pack", "--fsck-objects", "--stdin"],
        pack,
    );
    client
}

/// Objects made again (their stored bases not sent) in batches of hundreds: compressed on the
/// writing thread alone, or on lanes beside it while the next batch is planned, the pack is
/// the same, and whole.
/// `files` files that all shrink in the second of two commits: git makes the larger, older
/// versions the bases, and a depth-1 clone does not send them. The repository's work tree,
/// its bare packed copy, and the text all files share.
fn shrinking_files(files: usize) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let (dir, work, path) = work_tree();
    let shared = gitcache_testkit::repo::commit_shrinking_files(&work, files);
    bare_packed_copy(&work, &path);
    (dir, path, shared)
}

#[test]
fn objects_made_again_give_one_pack_on_any_number_of_threads() {
    let files = 1_200;
    let (dir, path, shared) = shrinking_files(files);
    let repo = Repository::open(&path).unwrap();
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let mut fetch = clone_request(main.clone());
    fetch.deepen = Some(1);
    let answers: Vec<_> = [1, 2, 4]
        .into_iter()
        .map(|threads| {
            let options = Options {
                compression_threads: threads,
                ..Options::default()
            };
            let (_, stats, pack) = send_with(&repo, &fetch, &options);
            (threads, stats, pack)
        })
        .collect();
    let (_, one_stats, one_pack) = &answers[0];
    assert_eq!(one_stats.objects as usize, files + 2, "{one_stats:?}");
    // All but a few of the files are made again: deltas against each other, or whole.
    let reused_files = one_stats.reused as usize - 2;
    assert!(reused_files < files / 10, "{one_stats:?}");
    assert!(one_stats.new_deltas > 0, "{one_stats:?}");
    for (threads, stats, pack) in &answers[1..] {
        assert_eq!(stats, one_stats, "{threads} threads");
        assert!(pack == one_pack, "{threads} threads: another pack");
    }
    let client = shallow_client(dir.path(), "c.git", one_pack);
    let listed = git(&client, &["ls-tree", &main[0].to_string()]);
    assert_eq!(listed.lines().count(), files);
    for line in listed.lines().step_by(97) {
        let (id, name) = line.split_once('\t').unwrap();
        let i: usize = name
            .trim_start_matches('f')
            .trim_end_matches(".txt")
            .parse()
            .unwrap();
        let id = id.rsplit(' ').next().unwrap();
        assert_eq!(
            git(&client, &["cat-file", "blob", id]),
            format!("{i}\n{shared}")
        );
    }

    // A second pack holding both versions of half the files again (the new ones stored as
    // deltas of the old, which are not sent): objects found in two packs, made again from
    // either. The answer is the same each time.
    let both: String = (0..files / 2)
        .flat_map(|i| {
            let name = format!("f{i}.txt");
            [format!("main~1:{name}"), format!("main:{name}")]
        })
        .map(|rev| git(&path, &["rev-parse", &rev]))
        .collect();
    gitcache_testkit::git::git_with_input(
        &path,
        &["pack-objects", "-q", "objects/pack/pack"],
        both.as_bytes(),
    );
    let repo = Repository::open(&path).unwrap();
    let (_, first_stats, first) = send(&repo, &fetch);
    assert_eq!(first_stats.objects as usize, files + 2, "{first_stats:?}");
    for _ in 0..3 {
        let repo = Repository::open(&path).unwrap();
        let (_, stats, again) = send(&repo, &fetch);
        assert_eq!(stats, first_stats);
        assert!(again == first, "another pack from the same two packs");
    }
    let client = shallow_client(dir.path(), "d.git", &first);
    let listed = git(&client, &["ls-tree", "-r", &main[0].to_string()]);
    assert_eq!(listed.lines().count(), files);

    // A client gone while lanes are making the next batch: an error, the lanes stopped and
    // waited for, nothing left running.
    struct GoneAfter(usize);
    impl std::io::Write for GoneAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Plan::Pack(p) = plan(&repo, &fetch, ObjectFormat::Sha1, &Options::default()).unwrap()
    else {
        panic!("no pack")
    };
    assert!(Plan::Pack(p).write_to(GoneAfter(4096)).is_err());
}

/// Offset and delta base of each object of a pack, from `git verify-pack -v`.
fn layout(repo: &Path, idx: &Path) -> std::collections::HashMap<String, (u64, Option<String>)> {
    git(repo, &["verify-pack", "-v", idx.to_str().unwrap()])
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 5 && f[0].len() == 40).then(|| {
                (
                    f[0].to_owned(),
                    (f[4].parse().unwrap(), f.get(6).map(|b| (*b).to_owned())),
                )
            })
        })
        .collect()
}

/// `path`'s packs without their bitmaps: fetches are walked, as git walks a fetch whose
/// haves lie beyond its bitmapped pack.
fn without_bitmaps(path: &Path) {
    for file in std::fs::read_dir(path.join("objects/pack")).unwrap() {
        let file = file.unwrap().path();
        if file.extension().is_some_and(|e| e == "bitmap") {
            std::fs::remove_file(file).unwrap();
        }
    }
}

/// `work` packed at `path` without bitmaps, so that fetches are walked (as git walks a fetch
/// whose haves lie beyond its bitmapped pack: with bitmaps, git reads no trees at the edge and
/// sends objects stored whole as they are), and a client's bare clone of it, in `dir`.
fn walked_copy_with_client(work: &Path, path: &Path, dir: &Path) -> std::path::PathBuf {
    bare_packed_copy(work, path);
    without_bitmaps(path);
    let client = dir.join("client.git");
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            path.to_str().unwrap(),
            client.to_str().unwrap(),
        ],
    );
    client
}

/// The layout of every pack of `path`, together.
fn stored_layout(path: &Path) -> std::collections::HashMap<String, (u64, Option<String>)> {
    std::fs::read_dir(path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .flat_map(|idx| layout(path, &idx))
        .collect()
}

/// A new bare repository `name` in `dir` holding `pack` (checked object by object, no base
/// outside it), and the layout of that pack there.
fn received_alone(
    dir: &Path,
    name: &str,
    pack: &[u8],
) -> (
    std::path::PathBuf,
    std::collections::HashMap<String, (u64, Option<String>)>,
) {
    let client = dir.join(name);
    git(dir, &["init", "-q", "--bare", client.to_str().unwrap()]);
    let received = taken_in(&client, pack, false);
    (client, received)
}

/// `pack` taken into `client`, every object checked (with `thin`, its missing bases appended
/// from the client's objects), and the layout of that pack there.
fn taken_in(
    client: &Path,
    pack: &[u8],
    thin: bool,
) -> std::collections::HashMap<String, (u64, Option<String>)> {
    let mut args = vec!["index-pack", "--fsck-objects"];
    if thin {
        args.push("--fix-thin");
    }
    args.extend(["--stdin", "objects/pack/pack-received.pack"]);
    gitcache_testkit::git::git_with_input(client, &args, pack);
    layout(client, &client.join("objects/pack/pack-received.idx"))
}

/// Issue 16: an answer the bitmaps select is written by copying runs of the stored pack
/// (git's pack reuse), offset deltas whose base moved nearer across left-out entries given
/// the shorter distance; entries whose base is not copied are written after, one by one.
#[test]
fn bitmap_answers_copy_runs_of_the_stored_pack() {
    let (dir, path) = packed_repo(34);
    git(&path, &["repack", "-adbq"]);
    let repo = Repository::open(&path).unwrap();
    let all = oids(&git(&path, &["for-each-ref", "--format=%(objectname)"]));
    let stored = layout(&path, &pack_file(&path).with_extension("idx"));

    let receive = |name: &str, pack: &[u8], args: &[&str]| {
        let client = dir.path().join(name);
        git(
            dir.path(),
            &["init", "-q", "--bare", client.to_str().unwrap()],
        );
        let mut index = vec!["index-pack"];
        index.extend_from_slice(args);
        index.extend(["--stdin", "objects/pack/pack-received.pack"]);
        gitcache_testkit::git::git_with_input(&client, &index, pack);
        (
            client.clone(),
            layout(&client, &client.join("objects/pack/pack-received.idx")),
        )
    };

    // Trees without blobs: the blobs between them in the stored pack are gaps.
    let mut no_blobs = clone_request(all.clone());
    no_blobs.filter = Some(gitcache_protocol::filter::Filter::BlobNone);
    let (whole, stats, pack) = send(&repo, &no_blobs);
    assert!(!whole);
    assert!(
        stats.pack_reused > 0 && stats.reused_deltas > 0,
        "{stats:?}"
    );
    let (_, received) = receive("no-blobs.git", &pack, &["--fsck-objects"]);
    let expected = git(
        &path,
        &["rev-list", "--objects", "--all", "--filter=blob:none"],
    )
    .lines()
    .count();
    assert_eq!(received.len(), expected);
    let distance = |objects: &std::collections::HashMap<String, (u64, Option<String>)>,
                    id: &str| {
        let (offset, base) = &objects[id];
        base.as_ref().map(|b| offset - objects[b].0)
    };
    let (mut same, mut nearer) = (0, 0);
    for id in received.keys() {
        if let (Some(now), Some(before)) = (distance(&received, id), distance(&stored, id))
            && received[id].1 == stored[id].1
        {
            assert!(
                now <= before,
                "{id}: a copied delta moved away from its base"
            );
            if now == before {
                same += 1
            } else {
                nearer += 1
            }
        }
    }
    assert!(
        nearer > 0 && same > 0,
        "{nearer} deltas moved nearer, {same} kept"
    );

    // One branch after some of its history: what the client has is left out, and deltas on
    // it go after the copied runs, against bases the client has (a thin pack).
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let mut fetch = clone_request(main.clone());
    fetch.haves = oids(&git(&path, &["rev-parse", "main~5"]));
    let (_, stats, pack) = send(&repo, &fetch);
    assert!(stats.pack_reused > 0, "{stats:?}");
    let client = dir.path().join("has.git");
    git(&path, &["branch", "old", "main~5"]);
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "--no-local",
            "--single-branch",
            "--branch",
            "old",
            path.to_str().unwrap(),
            client.to_str().unwrap(),
        ],
    );
    gitcache_testkit::git::git_with_input(
        &client,
        &["index-pack", "--strict", "--fix-thin", "--stdin"],
        &pack,
    );
    assert_complete_at(&client, &main[0]);
    assert_eq!(
        git(&client, &["rev-list", "--objects", "main"])
            .lines()
            .count(),
        git(&path, &["rev-list", "--objects", "main"])
            .lines()
            .count()
    );

    // A client that takes no offset deltas is sent object by object.
    let mut by_ref = clone_request(main.clone());
    by_ref.ofs_delta = false;
    let (_, stats, pack) = send(&repo, &by_ref);
    assert_eq!(stats.pack_reused, 0, "{stats:?}");
    let (client, received) = receive("by-ref.git", &pack, &["--strict"]);
    assert_eq!(
        received.len(),
        git(&path, &["rev-list", "--objects", "main"])
            .lines()
            .count()
    );
    assert_complete_at(&client, &main[0]);
}

/// Issue 16: when nothing down a stored delta's chain is sent (a depth-1 clone of a file whose
/// base version is only in history), the new delta is made against a sent object of the same
/// stored delta tree: here a sibling stored against the same base.
#[test]
fn a_delta_with_nothing_sent_down_its_chain_is_made_against_a_sibling() {
    let (dir, work, path) = work_tree();
    let shared = text_lines("shared", 400);
    let (a, b) = (text_lines("alpha", 40), text_lines("beta", 40));
    // The old version holds both parts, so git makes it the base of both new files, and
    // neither new file a delta against the other (each lacks the other's part).
    let old = format!("{shared}{a}{b}");
    let x = format!("{shared}{a}x\n");
    let y = format!("{shared}{b}y\n");
    std::fs::write(work.join("old.txt"), &old).unwrap();
    gitcache_testkit::git::commit_all(&work, "old");
    std::fs::remove_file(work.join("old.txt")).unwrap();
    std::fs::write(work.join("x.txt"), &x).unwrap();
    std::fs::write(work.join("y.txt"), &y).unwrap();
    gitcache_testkit::git::commit_all(&work, "new");
    bare_packed_copy(&work, &path);

    let blob = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (old_id, x_id, y_id) = (
        blob("main~1:old.txt"),
        blob("main:x.txt"),
        blob("main:y.txt"),
    );
    let stored = layout(&path, &pack_file(&path).with_extension("idx"));
    assert_eq!(stored[&x_id].1.as_ref(), Some(&old_id), "{stored:?}");
    assert_eq!(stored[&y_id].1.as_ref(), Some(&old_id), "{stored:?}");
    assert_eq!(stored[&old_id].1, None, "{stored:?}");

    let repo = Repository::open(&path).unwrap();
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let mut fetch = clone_request(main.clone());
    fetch.deepen = Some(1);
    let (_, stats, pack) = send(&repo, &fetch);
    assert_eq!(stats.objects, 4, "{stats:?}");
    assert_eq!(stats.new_deltas, 1, "{stats:?}");
    let (client, received) = received_alone(dir.path(), "c.git", &pack);
    let based: Vec<_> = [&x_id, &y_id]
        .into_iter()
        .filter_map(|id| Some((id.clone(), received[id].1.clone()?)))
        .collect();
    assert!(
        based == [(x_id.clone(), y_id.clone())] || based == [(y_id.clone(), x_id.clone())],
        "one file a delta against the other: {received:?}"
    );
    assert_eq!(git(&client, &["cat-file", "blob", &x_id]), x);
    assert_eq!(git(&client, &["cat-file", "blob", &y_id]), y);
}

/// Without `thin-pack`, an object stored as a delta against one the client has, with nothing
/// sent in its stored delta tree, gets a new delta against an object sent whole whose path's
/// name hash lies near its own (a file named alike, as git's delta search finds it), when
/// the pack's bitmap file carries name hashes (not against objects as like it but named
/// otherwise), whether or not the pack's delta forest is read. Without them it goes whole.
#[test]
fn a_delta_with_nothing_sent_in_its_tree_is_made_against_a_file_named_alike() {
    for junk in [0, 300] {
        let (dir, work, path) = work_tree();
        let shared = text_lines("shared", 400);
        // The old version is the larger: git makes it the base of the new one.
        let old = format!("{shared}{}", text_lines("old", 80));
        let new = format!("{shared}new\n");
        let alike = format!("{shared}alike\n");
        std::fs::create_dir(work.join("a")).unwrap();
        std::fs::write(work.join("a/notes-1.txt"), &old).unwrap();
        // Files the client has, enough to make the answer too small a part of the pack for its
        // delta forest to be read: which objects are stored whole then comes from their entries.
        if junk > 0 {
            std::fs::create_dir(work.join("junk")).unwrap();
            for i in 0..junk {
                std::fs::write(work.join(format!("junk/{i}.dat")), format!("junk {i}\n")).unwrap();
            }
        }
        gitcache_testkit::git::commit_all(&work, "old");
        std::fs::write(work.join("a/notes-1.txt"), &new).unwrap();
        gitcache_testkit::git::commit_all(&work, "new");
        bare_packed_copy(&work, &path);
        // A file named alike in another directory, packed whole beside the deltas above, and
        // files as like it in content but named otherwise: the name decides which is tried first.
        std::fs::create_dir(work.join("b")).unwrap();
        std::fs::write(work.join("b/notes-2.txt"), &alike).unwrap();
        for i in 0..4 {
            let decoy = format!("{shared}decoy {i}\n");
            std::fs::write(work.join(format!("b/decoy-{i}.md")), decoy).unwrap();
        }
        gitcache_testkit::git::commit_all(&work, "alike");
        git(&work, &["push", "-q", path.to_str().unwrap(), "main"]);
        git(&path, &["repack", "-adq", "--window=0"]);

        let blob = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
        let (old_id, new_id, alike_id) = (
            blob("main~2:a/notes-1.txt"),
            blob("main:a/notes-1.txt"),
            blob("main:b/notes-2.txt"),
        );
        let stored = layout(&path, &pack_file(&path).with_extension("idx"));
        assert_eq!(stored[&new_id].1.as_ref(), Some(&old_id), "{stored:?}");
        assert_eq!(stored[&alike_id].1, None, "{stored:?}");

        let tips = oids(&git(&path, &["for-each-ref", "--format=%(objectname)"]));
        let main = oids(&git(&path, &["rev-parse", "main"]));
        let mut fetch = clone_request(main.clone());
        fetch.thin_pack = false;
        fetch.haves = oids(&git(&path, &["rev-parse", "main~2"]));
        let answer = |with_names: bool| {
            let repo = Repository::open(&path).unwrap();
            let bitmap = repo.write_bitmaps(&tips).unwrap().expect("bitmaps");
            if !with_names {
                std::fs::remove_file(&bitmap).unwrap();
            }
            let repo = Repository::open(&path).unwrap();
            send(&repo, &fetch)
        };
        let (_, without, _) = answer(false);
        assert_eq!(without.new_deltas, 0, "{without:?}");
        let (_, stats, pack) = answer(true);
        assert_eq!(stats.new_deltas, 1, "{stats:?}");
        assert!(stats.bytes < without.bytes, "{stats:?} against {without:?}");

        let client = client_holding(dir.path(), &path, b"main~2\n");
        gitcache_testkit::git::git_with_input(
            &client,
            &[
                "index-pack",
                "--strict",
                "--stdin",
                "objects/pack/pack-received.pack",
            ],
            &pack,
        );
        let received = layout(&client, &client.join("objects/pack/pack-received.idx"));
        assert_eq!(
            received[&new_id].1.as_ref(),
            Some(&alike_id),
            "{received:?}"
        );
        assert_complete_at(&client, &main[0]);
        assert_eq!(git(&client, &["cat-file", "blob", &new_id]), new);
    }
}

/// The longest delta chain of the pack `pack` taken into a new repository, checked with
/// `index-pack --strict`; the repository is complete at `tip`.
fn longest_chain(pack: &[u8], tip: &ObjectId) -> usize {
    let check = tempfile::tempdir().unwrap();
    let client = check.path().join("c.git");
    git(
        check.path(),
        &["init", "-q", "--bare", client.to_str().unwrap()],
    );
    gitcache_testkit::git::git_with_input(&client, &["index-pack", "--strict", "--stdin"], pack);
    assert_complete_at(&client, tip);
    let idx = gitcache_testkit::repo::pack_files(&client, "idx").unwrap();
    git(&client, &["verify-pack", "-v", idx[0].to_str().unwrap()])
        .lines()
        .filter_map(|l| l.strip_prefix("chain length = "))
        .map(|l| l.split(':').next().unwrap().parse::<usize>().unwrap())
        .max()
        .unwrap_or(0)
}

/// Delta chains are cut at `max_delta_depth` (git's `pack.depth`): an object whose base ends
/// a chain that long is written whole, so no object costs the client more than that many
/// deltas to read. (Without offset deltas, so that no run of the stored pack is copied as it
/// is, chains and all: every object is written one by one.)
#[test]
fn delta_chains_are_no_longer_than_allowed() {
    let (_dir, path) = packed_repo(35);
    let repo = Repository::open(&path).unwrap();
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let request = Fetch {
        ofs_delta: false,
        ..clone_request(main.clone())
    };
    let (_, stats, pack) = send(&repo, &request);
    assert_eq!(stats.pack_reused, 0, "{stats:?}");
    let stored = longest_chain(&pack, &main[0]);
    assert!(stored > 2, "the stored chains are copied: {stored} long");
    let options = Options {
        max_delta_depth: 2,
        ..Options::default()
    };
    let (_, cut, pack) = send_with(&repo, &request, &options);
    assert_eq!(longest_chain(&pack, &main[0]), 2);
    assert!(
        cut.deltas > 0 && cut.deltas < stats.deltas,
        "{cut:?} {stats:?}"
    );
}

/// The layout of `pack` taken into a new repository that borrows `source`'s objects (a thin
/// pack's bases are appended whole, as a client's `index-pack --fix-thin` does).
fn received_over(
    source: &Path,
    pack: &[u8],
) -> std::collections::HashMap<String, (u64, Option<String>)> {
    let check = tempfile::tempdir().unwrap();
    let client = check.path().join("c.git");
    git(
        check.path(),
        &["init", "-q", "--bare", client.to_str().unwrap()],
    );
    std::fs::write(
        client.join("objects/info/alternates"),
        format!("{}\n", source.join("objects").display()),
    )
    .unwrap();
    gitcache_testkit::git::git_with_input(
        &client,
        &["index-pack", "--strict", "--stdin", "--fix-thin"],
        pack,
    );
    let idx = gitcache_testkit::repo::pack_files(&client, "idx").unwrap();
    layout(&client, &idx[0])
}

/// A bare repository of 300 commits packed with chains up to 50 deltas long (`git` options
/// `before` the `repack`).
fn deep_chains(seed: u64, before: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    let spec = RepoSpec {
        commits: 300,
        ..RepoSpec::small(seed)
    };
    repo::generate(&path, &spec).unwrap();
    let repack = ["repack", "-adfq", "--depth=50", "--window=50"];
    git(&path, &[before, &repack[..]].concat());
    (dir, path)
}

/// The objects of a received pack (its layout) that were copied in runs from the stored pack:
/// copied runs come first (thin bases the client appends come last).
fn copied<'a>(
    received: &'a std::collections::HashMap<String, (u64, Option<String>)>,
    stats: &gitcache_pack::PackStats,
) -> std::collections::HashSet<&'a String> {
    let mut by_offset: Vec<(&u64, &String)> =
        received.iter().map(|(oid, (at, _))| (at, oid)).collect();
    by_offset.sort();
    by_offset[..stats.pack_reused as usize]
        .iter()
        .map(|(_, oid)| *oid)
        .collect()
}

/// Runs copied from the stored pack keep their chains as stored (as git's pack reuse does),
/// and what is written one by one after them counts those chains: under a limit shorter than
/// the stored chains, only copied entries lie deeper than the limit. (Copied entries counted
/// as depth 0 once: objects given new deltas against them, and what went as stored on those,
/// lay deeper.)
#[test]
fn chains_of_copied_runs_count_for_what_is_written_after_them() {
    let (_dir, path) = deep_chains(0, &[]);
    let (repo, _) = with_bitmaps(&path);
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let limit = 3;
    for (have, thin) in [("main~30", false), ("main~100", true), ("main~100", false)] {
        let mut fetch = clone_request(main.clone());
        fetch.haves = oids(&git(&path, &["rev-parse", have]));
        fetch.thin_pack = thin;
        let options = Options {
            max_delta_depth: limit,
            ..Options::default()
        };
        let case = format!("{have}, thin {thin}");
        let (_, stats, pack) = send_with(&repo, &fetch, &options);
        assert!(stats.pack_reused > 0, "{case}: runs copied {stats:?}");
        let received = received_over(&path, &pack);
        let copied = copied(&received, &stats);
        let deepest = received
            .keys()
            .map(|oid| chain_length(&received, oid))
            .max();
        assert!(deepest > Some(limit), "{case}: stored chains copied");
        for oid in received.keys() {
            let depth = chain_length(&received, oid);
            assert!(
                depth <= limit || copied.contains(oid),
                "{case}: {oid}, written one by one, at {depth}"
            );
        }
    }
}

/// An object written one by one whose stored delta base was sent, in a batch before it, at
/// the depth limit is made again (against a base further down that chain, or another), not
/// sent whole as stored deltas on a base too deep are when the base's depth is known only
/// as they are written. One-object batches make every base's depth known when what rests on
/// it is planned (at the default batch size this 2.9 MB answer is one batch). Some such
/// objects go as deltas; with the base's depth ignored when planning, none did.
#[test]
fn objects_on_a_base_sent_at_the_limit_are_made_deltas_again() {
    // One thread: the same stored pack every time.
    let (_dir, path) = deep_chains(2, &["-c", "pack.threads=1"]);
    let (repo, _) = with_bitmaps(&path);
    let stored = layout(&path, &repo::pack_files(&path, "idx").unwrap()[0]);
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let limit = 2;
    let options = Options {
        max_delta_depth: limit,
        lookahead_bytes: 0,
        ..Options::default()
    };
    let (_, stats, pack) = send_with(&repo, &clone_request(main), &options);
    let received = received_over(&path, &pack);
    let copied = copied(&received, &stats);
    assert!(!copied.is_empty(), "{stats:?}");
    let (mut whole, mut deltas) = (0, 0);
    for (oid, (at, base)) in &received {
        if copied.contains(oid) {
            continue;
        }
        assert!(chain_length(&received, oid) <= limit, "{oid} too deep");
        let Some((_, Some(stored_base))) = stored.get(oid) else {
            continue;
        };
        let Some((base_at, _)) = received.get(stored_base) else {
            continue;
        };
        if base_at < at && chain_length(&received, stored_base) >= limit {
            match base {
                Some(_) => deltas += 1,
                None => whole += 1,
            }
        }
    }
    assert!(
        deltas > 0,
        "{whole} on a base sent at the limit, all whole: {stats:?}"
    );
}

/// Objects made again for one answer are taken from the store by the next answer that makes
/// them against the same bases at the same level: the same pack, byte for byte, as without
/// the store.
#[test]
fn objects_made_again_are_taken_from_the_store_by_the_next_answer() {
    let files = 300;
    let (dir, path, _) = shrinking_files(files);
    let repo = Repository::open(&path).unwrap();
    let main = oids(&git(&path, &["rev-parse", "main"]));
    let mut fetch = clone_request(main.clone());
    fetch.deepen = Some(1);
    let (_, plain_stats, plain) = send_with(&repo, &fetch, &Options::default());
    let made = u64::from(plain_stats.objects - plain_stats.reused);
    assert!(made as usize > files / 2, "{plain_stats:?}");

    let remade = std::sync::Arc::new(gitcache_pack::Remade::new(64 << 20));
    let options = Options {
        remade: Some(std::sync::Arc::clone(&remade)),
        ..Options::default()
    };
    let (_, first_stats, first) = send_with(&repo, &fetch, &options);
    assert_eq!(first_stats, plain_stats);
    assert!(first == plain, "the first answer with the store differs");
    assert_eq!(remade.hits(), 0);
    assert!(remade.held_bytes() > 0);

    for threads in [1, 2] {
        let before = remade.hits();
        let (_, stats, again) = send_with(
            &repo,
            &fetch,
            &Options {
                compression_threads: threads,
                ..options.clone()
            },
        );
        assert_eq!(stats, plain_stats);
        assert!(again == plain, "an answer from the store differs");
        assert_eq!(remade.hits() - before, made, "{threads} threads");
    }
    shallow_client(dir.path(), "c.git", &plain);

    // Another zlib level makes other bytes: nothing is taken.
    let before = remade.hits();
    let (_, _, other) = send_with(
        &repo,
        &fetch,
        &Options {
            compression_level: 9,
            ..options.clone()
        },
    );
    assert_eq!(remade.hits(), before);
    shallow_client(dir.path(), "d.git", &other);
}

/// Issue 16: in a thin pack, an object stored whole (a pack fetched after the client's
/// commit, whose new versions had their bases in another pack) goes as a delta against the
/// client's object at the same path, as git's walk finds it among the trees at the edge of
/// the client's history (its preferred bases); not without `thin-pack`, and not against an
/// object at another path. The client resolves the pack with what it has.
#[test]
fn an_object_stored_whole_goes_as_a_delta_against_the_clients_at_its_path() {
    let (dir, work, path) = work_tree();
    let shared = text_lines("shared", 400);
    std::fs::create_dir(work.join("dir")).unwrap();
    let version = |n: u32| format!("{shared}version {n}\n");
    std::fs::write(work.join("dir/a.txt"), version(1)).unwrap();
    // As like the new version as the old one is, but at another path: not a base by path.
    std::fs::write(work.join("b.txt"), version(3)).unwrap();
    // Rewritten whole: tried against the old version at its path, and sent as stored.
    std::fs::write(work.join("e.txt"), text_lines("epsilon", 300)).unwrap();
    gitcache_testkit::git::commit_all(&work, "old");
    let client = walked_copy_with_client(&work, &path, dir.path());
    std::fs::write(work.join("dir/a.txt"), version(2)).unwrap();
    std::fs::write(work.join("e.txt"), text_lines("zeta", 300)).unwrap();
    // New, at a path the client has nothing at.
    std::fs::write(work.join("c.txt"), text_lines("gamma", 400)).unwrap();
    gitcache_testkit::git::commit_all(&work, "new");
    // The new objects in a pack of their own, each stored whole (their bases by content lie
    // in the other pack), as a mirror keeps a pack fetched without thin deltas.
    git(&path, &["fetch", "-q", work.to_str().unwrap(), "main:main"]);
    git(&path, &["repack", "-dq"]);
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (new_a, old_a, new_c) = (
        id("main:dir/a.txt"),
        id("main~1:dir/a.txt"),
        id("main:c.txt"),
    );
    let new_e = id("main:e.txt");
    let stored = stored_layout(&path);
    assert_eq!(stored[&new_a].1, None, "stored whole: {stored:?}");
    assert_eq!(stored[&new_c].1, None, "stored whole: {stored:?}");
    assert_eq!(stored[&new_e].1, None, "stored whole: {stored:?}");

    let repo = Repository::open(&path).unwrap();
    let mut fetch = clone_request(oids(&id("main")));
    fetch.haves = oids(&id("main~1"));
    let remade = std::sync::Arc::new(gitcache_pack::Remade::new(1 << 20));
    let options = Options {
        remade: Some(std::sync::Arc::clone(&remade)),
        ..Options::default()
    };
    let (whole, stats, pack) = send_with(&repo, &fetch, &options);
    assert!(!whole, "the stored pack is not sent as it is");
    assert_eq!(stats.new_deltas, 1, "{stats:?}");
    assert_eq!(
        stats.reused,
        stats.objects - 1,
        "the rest as stored: {stats:?}"
    );
    // The next answer takes what was tried from the store, a delta and a miss alike, and is
    // the same pack.
    let hits = remade.hits();
    assert_eq!(send_with(&repo, &fetch, &options).2, pack);
    assert!(remade.hits() >= hits + 2, "{} {hits}", remade.hits());
    let received = taken_in(&client, &pack, true);
    assert_eq!(received[&new_a].1.as_ref(), Some(&old_a), "{received:?}");
    assert_eq!(
        received[&new_c].1, None,
        "no base at its path: {received:?}"
    );
    assert_eq!(received[&new_e].1, None, "no delta pays: {received:?}");
    assert_complete_at(&client, &oids(&id("main"))[0]);
    assert_eq!(git(&client, &["cat-file", "blob", &new_a]), version(2));

    // Without thin-pack: the stored pack as it is.
    fetch.thin_pack = false;
    let (whole, stats, plain) = send(&repo, &fetch);
    assert!(whole && stats.new_deltas == 0, "{stats:?}");
    assert!(
        plain.len() > pack.len() + 500,
        "{} {}",
        plain.len(),
        pack.len()
    );
}

/// Issue 16: an object stored whole goes as a delta against the version of its path sent
/// before it (a newer commit's), when that one is stored whole too, as git's window pairs
/// versions of a file both sent; with or without `thin-pack`. Fetched packs of a mirror hold
/// each refresh's version of a file whole.
#[test]
fn versions_of_a_path_sent_together_are_made_deltas_of_each_other() {
    let (dir, work, path) = work_tree();
    let shared = text_lines("shared", 400);
    let version = |n: u32| format!("{shared}version {n}\n");
    std::fs::write(work.join("a.txt"), text_lines("unrelated", 300)).unwrap();
    gitcache_testkit::git::commit_all(&work, "old");
    bare_packed_copy(&work, &path);
    without_bitmaps(&path);
    // Two refreshes, each a pack of its own in which the new version is stored whole.
    for n in [2, 3] {
        std::fs::write(work.join("a.txt"), version(n)).unwrap();
        gitcache_testkit::git::commit_all(&work, &format!("v{n}"));
        git(&path, &["fetch", "-q", work.to_str().unwrap(), "main:main"]);
        git(&path, &["repack", "-dq"]);
    }
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (v2, v3) = (id("main~1:a.txt"), id("main:a.txt"));
    let stored = stored_layout(&path);
    assert_eq!(
        (&stored[&v2].1, &stored[&v3].1),
        (&None, &None),
        "{stored:?}"
    );

    let repo = Repository::open(&path).unwrap();
    // As offset deltas and as deltas naming their base by id.
    for (thin, ofs) in [(false, true), (true, true), (false, false)] {
        let mut fetch = clone_request(oids(&id("main")));
        fetch.haves = oids(&id("main~2"));
        fetch.thin_pack = thin;
        fetch.ofs_delta = ofs;
        let (whole, stats, pack) = send(&repo, &fetch);
        assert!(!whole && stats.new_deltas == 1, "thin {thin}: {stats:?}");
        let name = format!("client-{thin}-{ofs}.git");
        let (client, received) = received_alone(dir.path(), &name, &pack);
        // The older version against the newer: the newer's base (the client's old file)
        // is unlike it.
        assert_eq!(
            received[&v2].1.as_ref(),
            Some(&v3),
            "thin {thin}: {received:?}"
        );
        assert_eq!(received[&v3].1, None, "thin {thin}: {received:?}");
        assert_eq!(git(&client, &["cat-file", "blob", &v2]), version(2));
    }
}

/// `lines` lines of 32 hexadecimal digits, a different text for each seed: no two share a run
/// long enough for a delta.
fn noise(seed: u64, lines: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..lines)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}{:016x}\n", x.rotate_left(29) ^ seed)
        })
        .collect()
}

/// Issue 16: tries by path that keep failing stop. Files rewritten whole at every change give
/// no delta against the client's versions: once the answer's first 32 blobs tried gave none,
/// the rest are sent as stored untried (each try inflates the object and its base). Where
/// tries pay, every one is made. Either way the same request is the same pack, with or without
/// the store of objects made again, and the client resolves it.
#[test]
fn tries_by_path_that_keep_failing_stop() {
    let (dir, work, path) = work_tree();
    // Edited files sort before the rewritten ones, so their tries come first.
    let rewrite = |round: u64| {
        for i in 0..80 {
            let text = noise(round * 1000 + i, 60);
            std::fs::write(work.join(format!("f{i:02}.txt")), text).unwrap();
        }
    };
    rewrite(0);
    for i in 0..40 {
        std::fs::write(work.join(format!("e{i:02}.txt")), noise(5000 + i, 60)).unwrap();
    }
    gitcache_testkit::git::commit_all(&work, "old");
    let client = walked_copy_with_client(&work, &path, dir.path());
    // Unpacked loose, then packed alone: nothing is a delta against an object outside.
    let refresh = || {
        let from = work.to_str().unwrap();
        let unpack = ["-c", "transfer.unpackLimit=100000"];
        git(
            &path,
            &[&unpack[..], &["fetch", "-q", from, "main:main"]].concat(),
        );
        git(&path, &["repack", "-dq"]);
    };
    // Two refreshes, each a pack of its own holding its new objects whole: the first edits
    // the forty files and rewrites the eighty, the second rewrites the eighty only.
    rewrite(1);
    for i in 0..40 {
        let text = format!("{}edited\n", noise(5000 + i, 60));
        std::fs::write(work.join(format!("e{i:02}.txt")), text).unwrap();
    }
    gitcache_testkit::git::commit_all(&work, "edit and rewrite");
    refresh();
    rewrite(2);
    gitcache_testkit::git::commit_all(&work, "rewrite");
    refresh();
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let stored = stored_layout(&path);
    let files = (0..40).map(|i| format!("main~1:e{i:02}.txt"));
    let files = files.chain((0..80).flat_map(|i| [1, 0].map(|n| format!("main~{n}:f{i:02}.txt"))));
    for rev in files {
        assert_eq!(stored[&id(&rev)].1, None, "{rev} stored whole");
    }

    let repo = Repository::open(&path).unwrap();
    let remade = std::sync::Arc::new(gitcache_pack::Remade::new(1 << 20));
    let with_store = Options {
        remade: Some(std::sync::Arc::clone(&remade)),
        ..Options::default()
    };
    // The same pack however many threads make it, and from the store of objects made again
    // as when made.
    let sent = |fetch: &Fetch| {
        let (_, stats, pack) = send(&repo, fetch);
        for threads in [1, 4] {
            let options = Options {
                compression_threads: threads,
                ..Options::default()
            };
            assert_eq!(
                send_with(&repo, fetch, &options).2,
                pack,
                "{threads} threads"
            );
        }
        assert_eq!(send_with(&repo, fetch, &with_store).2, pack);
        assert_eq!(
            send_with(&repo, fetch, &with_store).2,
            pack,
            "from the store"
        );
        (stats, pack)
    };
    let receive = |pack: &[u8], tip: &str| {
        gitcache_testkit::git::git_with_input(
            &client,
            &["index-pack", "--fsck-objects", "--fix-thin", "--stdin"],
            pack,
        );
        assert_complete_at(&client, &oids(&id(tip))[0]);
    };

    // The edits pay from the first try: all 120 blobs are tried.
    let mut fetch = clone_request(oids(&id("main~1")));
    fetch.haves = oids(&id("main~2"));
    let (stats, pack) = sent(&fetch);
    assert_eq!(stats.untried, 0, "{stats:?}");
    assert!(stats.new_deltas >= 40, "the edited files: {stats:?}");
    receive(&pack, "main~1");

    // Only rewrites: 32 blobs tried, 48 left.
    fetch.wants = oids(&id("main"));
    fetch.haves = oids(&id("main~1"));
    let hits = remade.hits();
    let (stats, pack) = sent(&fetch);
    assert_eq!(stats.untried, 48, "{stats:?}");
    assert!(stats.new_deltas <= 1, "the root tree at most: {stats:?}");
    // The second answer from the store finds the first's 32 tries there.
    assert!(remade.hits() >= hits + 32, "{} {hits}", remade.hits());
    receive(&pack, "main");
    assert_eq!(
        git(&client, &["cat-file", "blob", &id("main:f00.txt")]),
        noise(2000, 60)
    );
}

/// A first commit in `work` of 300 small files in `junk/` (for a client to have: answers of
/// a few files' changes are then a small part of the pack) and `f.txt`, whose text it returns.
fn junk_and_a_file(work: &Path) -> String {
    junk_files_and_a_file(work, 300)
}

/// [`junk_and_a_file`] with `junk` junk files.
fn junk_files_and_a_file(work: &Path, junk: usize) -> String {
    std::fs::create_dir(work.join("junk")).unwrap();
    for i in 0..junk {
        std::fs::write(work.join(format!("junk/{i}.dat")), format!("junk {i}\n")).unwrap();
    }
    let text = text_lines("shared", 300);
    std::fs::write(work.join("f.txt"), &text).unwrap();
    gitcache_testkit::git::commit_all(work, "start");
    text
}

/// A work tree with junk and five versions of `f.txt` (a line more each), its bare copy in one
/// pack with gitcache's bitmaps, and the text of the last version.
fn five_versions_bitmapped() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    let (dir, work, path) = work_tree();
    let mut text = junk_and_a_file(&work);
    for n in 0..5 {
        add_a_line(&work, &mut text, n);
    }
    bare_packed_copy(&work, &path);
    let _ = with_bitmaps(&path);
    (dir, work, path, text)
}

/// `text` with a line for `n` added, written to `work`'s `f.txt` and committed.
fn add_a_line(work: &Path, text: &mut String, n: usize) {
    text.push_str(&format!("line {n}\n"));
    std::fs::write(work.join("f.txt"), &*text).unwrap();
    gitcache_testkit::git::commit_all(work, &format!("v{n}"));
}

/// `path` opened with gitcache's bitmaps written for its refs, and their objects.
fn with_bitmaps(path: &Path) -> (Repository, Vec<ObjectId>) {
    let tips = oids(&git(path, &["for-each-ref", "--format=%(objectname)"]));
    Repository::open(path)
        .unwrap()
        .write_bitmaps(&tips)
        .unwrap()
        .expect("bitmaps");
    (Repository::open(path).unwrap(), tips)
}

/// The answer without `thin-pack` to a fetch of `want` from `have` in `repo`, with offset
/// deltas or not, under `max_delta_depth`: the same pack on one compression thread and on
/// four. Returns whether it is the stored pack, the stats and the pack.
fn paired_answer(
    repo: &Repository,
    (want, have): (&str, &str),
    ofs: bool,
    max_delta_depth: usize,
) -> (bool, gitcache_pack::PackStats, Vec<u8>) {
    let mut fetch = clone_request(oids(want));
    fetch.haves = oids(have);
    fetch.thin_pack = false;
    fetch.ofs_delta = ofs;
    let answer = |threads: usize| {
        let options = Options {
            max_delta_depth,
            compression_threads: threads,
            ..Options::default()
        };
        send_with(repo, &fetch, &options)
    };
    let (whole, stats, pack) = answer(1);
    let (_, _, on_four) = answer(4);
    assert!(pack == on_four, "ofs {ofs}: one thread or four, one pack");
    (whole, stats, pack)
}

/// Of `versions`, none `stored` as a delta went whole in the `received` pack, and none lies
/// deeper than `max_delta_depth` there.
fn no_delta_lost_and_none_too_deep(
    versions: &[String],
    stored: &std::collections::HashMap<String, (u64, Option<String>)>,
    received: &std::collections::HashMap<String, (u64, Option<String>)>,
    max_delta_depth: usize,
) {
    for v in versions {
        assert!(
            stored[v].1.is_none() || received[v].1.is_some(),
            "{v} went whole"
        );
        let depth = chain_length(received, v);
        assert!(depth <= max_delta_depth, "{v} at {depth}");
    }
}

/// How many deltas lie below `oid` in a received pack's `layout`.
fn chain_length(
    layout: &std::collections::HashMap<String, (u64, Option<String>)>,
    oid: &str,
) -> usize {
    let (mut at, mut links) = (oid, 0);
    while let Some(base) = &layout[at].1 {
        (at, links) = (base.as_str(), links + 1);
    }
    links
}

/// Issue 16: an answer the bitmaps select sends the versions of a file stored whole (as packs
/// fetched one after the other leave them, and consolidation keeps them) as deltas of each
/// other, as git's delta search does for what it does not send as stored deltas: each
/// version against the one next larger of its name, within the allowed depth. An answer of
/// most of the pack (a clone) is copied as stored.
#[test]
fn whole_versions_sent_from_the_bitmaps_are_made_deltas_of_each_other() {
    let (dir, path, versions, fetch) = whole_versions(300);
    let (repo, tips) = with_bitmaps(&path);
    for (depth, name) in [(50, "deep.git"), (4, "shallow.git")] {
        let options = Options {
            max_delta_depth: depth,
            ..Options::default()
        };
        let (whole, stats, pack) = send_with(&repo, &fetch, &options);
        assert!(
            !whole && stats.pack_reused > 0,
            "from the bitmaps: {stats:?}"
        );
        assert!(stats.new_deltas >= 15, "{stats:?}");
        let (client, received) = received_alone(dir.path(), name, &pack);
        // The largest (newest) version whole, each other one a delta of the next larger
        // unless its chain would leave no room under the allowed depth for one more link (a
        // new delta made against it): then whole, and the next one's base.
        assert_eq!(received[&versions[0]].1, None, "{received:?}");
        for (n, v) in versions.iter().enumerate().skip(1) {
            let expected = (n % depth != 0).then(|| &versions[n - 1]);
            assert_eq!(
                received[v].1.as_ref(),
                expected,
                "version {n}: {received:?}"
            );
        }
        let longest = versions.iter().map(|v| chain_length(&received, v)).max();
        assert_eq!(longest, Some((depth - 1).min(19)), "{received:?}");
        assert_eq!(git(&client, &["cat-file", "blob", &versions[19]]), {
            let mut text = text_lines("shared", 300);
            text.push_str("line 0\n");
            text
        });
    }
    // A clone of every tip is the stored pack, copied as it is.
    let (whole, stats, _) = send(&repo, &clone_request(tips));
    assert!(whole && stats.new_deltas == 0, "{stats:?}");
}

/// A work tree's bare copy with `junk` junk files and 20 versions of `f.txt` after the first,
/// every object stored whole in one pack; the versions' ids, newest first, and the fetch of
/// them (without `thin-pack`) by a client holding the first.
fn whole_versions(junk: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<String>, Fetch) {
    let (dir, work, path) = work_tree();
    let mut text = junk_files_and_a_file(&work, junk);
    for n in 0..20 {
        text.push_str(&format!("line {n}\n"));
        std::fs::write(work.join("f.txt"), &text).unwrap();
        gitcache_testkit::git::commit_all(&work, &format!("v{n}"));
    }
    bare_packed_copy(&work, &path);
    git(&path, &["repack", "-adfq", "--window=0"]);
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let versions: Vec<String> = (0..20).map(|n| id(&format!("main~{n}:f.txt"))).collect();
    let mut fetch = clone_request(oids(&id("main")));
    fetch.haves = oids(&id("main~20"));
    fetch.thin_pack = false;
    (dir, path, versions, fetch)
}

/// The same with versions stored in chains (as `git repack` leaves them, a whole version at
/// the root of each): a root is paired only when what is stored below it, one link longer,
/// still leaves room for one more link under the allowed depth, so that nothing below it has
/// to go whole; as offset
/// deltas or naming their bases by id, and the same pack with one compression thread or
/// four.
#[test]
fn whole_versions_with_chains_below_are_paired_within_the_depth() {
    let (dir, work, path) = work_tree();
    let mut text = junk_and_a_file(&work);
    bare_packed_copy(&work, &path);
    // Six refreshes of three versions each, a pack of its own with the newest whole and the
    // two before it a chain below it; then one pack of them all, as stored.
    for round in 0..6 {
        for n in 0..3 {
            text.push_str(&format!("line {round} {n}\n"));
            std::fs::write(work.join("f.txt"), &text).unwrap();
            gitcache_testkit::git::commit_all(&work, &format!("v{round}.{n}"));
        }
        git(&path, &["fetch", "-q", work.to_str().unwrap(), "main:main"]);
        git(&path, &["repack", "-dq"]);
    }
    git(&path, &["repack", "-adq", "--window=0"]);
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let versions: Vec<String> = (0..18).map(|n| id(&format!("main~{n}:f.txt"))).collect();
    let stored = stored_layout(&path);
    let stored_whole: Vec<&String> = versions.iter().filter(|v| stored[*v].1.is_none()).collect();
    let has_below = |v: &String| versions.iter().any(|d| stored[d].1.as_ref() == Some(v));
    let roots = stored_whole.iter().filter(|v| has_below(v)).count();
    assert!(
        stored_whole.len() >= 4 && roots >= 3,
        "{} whole, {roots} with chains below",
        stored_whole.len()
    );
    let (repo, _) = with_bitmaps(&path);
    let max_delta_depth = 5;
    let (want, have) = (id("main"), id("main~18"));
    for ofs in [true, false] {
        let (_, stats, pack) = paired_answer(&repo, (&want, &have), ofs, max_delta_depth);
        assert!(stats.new_deltas > 0, "ofs {ofs}: {stats:?}");
        let name = format!("client-{ofs}.git");
        let (_, received) = received_alone(dir.path(), &name, &pack);
        let whole_now = versions.iter().filter(|v| received[*v].1.is_none()).count();
        assert!(
            whole_now < stored_whole.len(),
            "ofs {ofs}: {whole_now} whole, {} stored whole",
            stored_whole.len()
        );
        no_delta_lost_and_none_too_deep(&versions, &stored, &received, max_delta_depth);
    }
}

/// The same beyond the bitmapped pack: packs fetched since the consolidation, as `git
/// fast-import` writes them (the oldest version of each file in a pack whole, the newer ones
/// a chain of deltas on it), whose objects the bitmaps' walk finds by id and names by the
/// paths it meets them at. Each whole version is paired with the one of its name written
/// before it (moved ahead of the newer versions stored on it, which come first and would
/// otherwise write it whole first), within the allowed depth; nothing stored as a delta goes
/// whole, and no delta is made for an object already written.
#[test]
fn whole_versions_beyond_the_bitmapped_pack_are_paired_by_name() {
    let (dir, work, path) = work_tree();
    // The versions are those of directory `d` (`fast-import` stores a tree as a delta of its
    // version before, a blob as one of the blob before it in the stream). Each commit also
    // rewrites files enough to put a version's older ones in later batches of the writer
    // than its own.
    std::fs::create_dir(work.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(work.join(format!("d/{i}.txt")), format!("{i}\n")).unwrap();
    }
    junk_and_a_file(&work);
    let mut commits = 0;
    let mut edit = || {
        let file = work.join(format!("d/{}.txt", commits % 20));
        std::fs::write(file, format!("edit {commits}\n")).unwrap();
        std::fs::create_dir_all(work.join("many")).unwrap();
        for i in 0..300 {
            let file = work.join(format!("many/{i}"));
            std::fs::write(file, format!("{commits} {i}\n")).unwrap();
        }
        commits += 1;
        gitcache_testkit::git::commit_all(&work, &format!("edit {commits}"));
    };
    edit();
    bare_packed_copy(&work, &path);
    let _ = with_bitmaps(&path);
    // Five versions a round: the newest, written first, is more than two of the writer's
    // batches before the oldest, stored whole, that it is stored on.
    let (rounds, per_round) = (3, 5);
    for _ in 0..rounds {
        for _ in 0..per_round {
            edit();
        }
        fetched_as_a_pack(&work, &path, per_round);
    }
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    assert_eq!(id("main"), git(&work, &["rev-parse", "main"]).trim());
    let versions: Vec<String> = (0..per_round * rounds)
        .map(|n| id(&format!("main~{n}:d")))
        .collect();
    let stored = stored_layout(&path);
    let stored_whole: Vec<&String> = versions.iter().filter(|v| stored[*v].1.is_none()).collect();
    let has_below = |v: &String| versions.iter().any(|d| stored[d].1.as_ref() == Some(v));
    assert!(
        stored_whole.len() == rounds && stored_whole.iter().all(|v| has_below(v)),
        "each pack's oldest version whole, with the newer ones on it: {stored:?}"
    );
    let repo = Repository::open(&path).unwrap();
    // Each whole one has four links below it: under a depth of 8, the first stays whole and
    // the two after it are paired at depths 1 and 2 (2 + 2 + 4 <= 8); under 6, the second is
    // paired at depth 1 and the third stays whole (1 + 2 + 4 > 6).
    let have = id(&format!("main~{}", per_round * rounds + 1));
    for (max_delta_depth, whole_after) in [(8, 1), (6, 2)] {
        for ofs in [true, false] {
            let case = format!("depth {max_delta_depth}, ofs {ofs}");
            let (whole, stats, pack) =
                paired_answer(&repo, (&id("main"), &have), ofs, max_delta_depth);
            // Runs are copied for a client that takes offset deltas.
            assert!(
                !whole && (stats.pack_reused > 0 || !ofs),
                "{case}: from the bitmaps: {stats:?}"
            );
            assert!(
                stats.new_deltas > 0 && stats.lost_deltas == 0,
                "{case}: {stats:?}"
            );
            let name = format!("client-{max_delta_depth}-{ofs}.git");
            let (client, received) = received_alone(dir.path(), &name, &pack);
            let whole_now = versions.iter().filter(|v| received[*v].1.is_none()).count();
            assert_eq!(whole_now, whole_after, "{case}: {received:?}");
            no_delta_lost_and_none_too_deep(&versions, &stored, &received, max_delta_depth);
            assert_eq!(
                git(&client, &["ls-tree", &versions[0]]),
                git(&path, &["ls-tree", &versions[0]]),
                "{case}"
            );
        }
    }
}

/// The largest version of a name that an answer sends from the bitmapped pack, stored whole
/// there with older versions on it, goes as a delta of a version of its name from beyond the
/// pack stored whole (git's window pairs them), when the chain below it, one link longer,
/// leaves room for one more: the newer version a refresh brought whole. That one gets no base
/// of its own among the pairs beyond the pack, and is the base of the one there after it.
#[test]
fn the_largest_of_a_name_in_the_pack_is_paired_with_one_beyond_it() {
    // The newest version in the pack whole, the older ones in a chain on it.
    let (dir, work, path, mut text) = five_versions_bitmapped();
    let edit = |text: &mut String, n: usize| add_a_line(&work, text, n);
    // Two refreshes of three versions, as `fast-import` writes them: the oldest of each whole.
    for round in 0..2 {
        for n in 0..3 {
            edit(&mut text, 5 + 3 * round + n);
        }
        let stream = git(
            &work,
            &[
                "fast-export",
                "--reference-excluded-parents",
                "main~3..main",
            ],
        );
        gitcache_testkit::git::git_with_input(
            &path,
            &["-c", "fastimport.unpackLimit=0", "fast-import", "--quiet"],
            stream.as_bytes(),
        );
    }
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let version = |back: usize| id(&format!("main~{back}:f.txt"));
    // main~0..=main~5 beyond the pack (main~2 and main~5 whole), main~6 the largest in it.
    let versions: Vec<String> = (0..10).map(version).collect();
    let stored = stored_layout(&path);
    for back in [2, 5, 6] {
        assert_eq!(stored[&versions[back]].1, None, "main~{back}: {stored:?}");
    }
    // The longest chains stored on the largest in the pack, and on main~5 beyond it.
    let depth = |backs: std::ops::Range<usize>| {
        backs
            .map(|back| chain_length(&stored, &versions[back]))
            .max()
            .unwrap()
    };
    let (below, below_beyond) = (depth(7..10), depth(3..5));
    assert!(below >= 1 && below_beyond >= 1, "chains: {stored:?}");
    let repo = Repository::open(&path).unwrap();
    // Sent: main~9 (v1) and up; the client has main~10 (v0).
    let (want, have) = (id("main"), id("main~10"));
    // Room for the pair at `below + 2`, none at `below + 1`.
    for (max_delta_depth, paired) in [(below + 2, true), (below + 1, false), (50, true)] {
        for ofs in [true, false] {
            let case = format!("depth {max_delta_depth}, ofs {ofs}");
            let (whole, stats, pack) = paired_answer(&repo, (&want, &have), ofs, max_delta_depth);
            assert!(!whole && stats.lost_deltas == 0, "{case}: {stats:?}");
            let name = format!("client-{max_delta_depth}-{ofs}.git");
            let (_, received) = received_alone(dir.path(), &name, &pack);
            let expected = paired.then(|| versions[2].clone());
            assert_eq!(received[&versions[6]].1, expected, "{case}: {received:?}");
            // The one it is paired with goes as stored (whole), and is the base of the other
            // version beyond the pack stored whole where that one's chain leaves room.
            assert_eq!(received[&versions[2]].1, None, "{case}");
            let expected = (2 + below_beyond <= max_delta_depth).then_some(&versions[2]);
            assert_eq!(received[&versions[5]].1.as_ref(), expected, "{case}");
            no_delta_lost_and_none_too_deep(&versions, &stored, &received, max_delta_depth);
        }
    }
}

/// The object beyond the bitmapped pack that the largest of a name in the pack is paired with
/// is written first (the delta on it writes it ahead of its place) and gets no base of its
/// own, even when another whole one of its name would come before it: here `w`, the stored
/// base of a delta `d` met before `b` (at another path), while `b` is the one paired with.
/// `w` is then paired with `b` instead, and nothing goes whole that was to be a delta.
#[test]
fn the_object_paired_with_from_the_pack_is_written_first_and_given_no_base() {
    let (dir, work, path, text) = five_versions_bitmapped();

    // Beyond the pack: `w` (a larger f.txt), then `b` (f.txt again) with `d` (at a.txt, `w`
    // but its last lines).
    let w_text = format!("{text}{}", text_lines("w", 40));
    std::fs::write(work.join("f.txt"), &w_text).unwrap();
    gitcache_testkit::git::commit_all(&work, "w");
    let d_text: String = w_text
        .lines()
        .take(w_text.lines().count() - 3)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(work.join("a.txt"), &d_text).unwrap();
    std::fs::write(work.join("f.txt"), format!("{text}{}", text_lines("b", 20))).unwrap();
    gitcache_testkit::git::commit_all(&work, "b and d");
    // Fetched loose, then packed as wanted: `d` a delta on `w`, `b` whole in a pack of its
    // own, the commits and trees in a third.
    git(
        &path,
        &[
            "-c",
            "fetch.unpackLimit=100000",
            "fetch",
            "-q",
            work.to_str().unwrap(),
            "main:main",
        ],
    );
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (w, b, d) = (id("main~1:f.txt"), id("main:f.txt"), id("main:a.txt"));
    let pack = |objects: String| {
        gitcache_testkit::git::git_with_input(
            &path,
            &["pack-objects", "-q", "--window=10", "objects/pack/pack"],
            objects.as_bytes(),
        );
    };
    pack(format!("{w} f.txt\n{d} f.txt\n"));
    pack(format!("{b} f.txt\n"));
    let commits_and_trees: String = ["main", "main~1", "main^{tree}", "main~1^{tree}"]
        .iter()
        .map(|rev| format!("{}\n", id(rev)))
        .collect();
    pack(commits_and_trees);
    git(&path, &["prune-packed"]);
    assert_eq!(
        git(&path, &["count-objects"]).trim(),
        "0 objects, 0 kilobytes"
    );
    let stored = stored_layout(&path);
    assert_eq!(stored[&d].1.as_deref(), Some(w.as_str()), "{stored:?}");
    assert_eq!((stored[&w].1.as_ref(), stored[&b].1.as_ref()), (None, None));
    // The largest f.txt in the pack, whole there, with the older ones below it.
    let largest = id("main~2:f.txt");
    assert_eq!(stored[&largest].1, None);

    let repo = Repository::open(&path).unwrap();
    let (want, have) = (id("main"), id("main~7"));
    for ofs in [true, false] {
        let (whole, stats, pack) = paired_answer(&repo, (&want, &have), ofs, 50);
        assert!(!whole, "ofs {ofs}");
        assert_eq!(
            (stats.lost_deltas, stats.pulled_forward),
            (0, 0),
            "ofs {ofs}: {stats:?}"
        );
        let (_, received) = received_alone(dir.path(), &format!("client-{ofs}.git"), &pack);
        // The pair from the pack, on `b`; `b` whole; `w` on `b`; `d` still on `w`.
        assert_eq!(
            received[&largest].1.as_ref(),
            Some(&b),
            "ofs {ofs}: {received:?}"
        );
        assert_eq!(received[&b].1, None, "ofs {ofs}");
        assert_eq!(received[&w].1.as_ref(), Some(&b), "ofs {ofs}");
        assert_eq!(received[&d].1.as_ref(), Some(&w), "ofs {ofs}");
    }
}

/// An object planned to be made again is not pulled forward, as the base of an object written
/// before it, ahead of its own making (it would then go whole): a new delta's base taken from
/// the stored delta tree is one written before it, or one that goes as stored whatever comes
/// first (copied in runs, or stored whole), never a delta written after it whose own base is
/// made again. Without `thin-pack`, on answers from the bitmaps.
///
/// Where the stored deltas still make the writing of a batch write an object of the next one
/// first (as git's `--window=5` packs this repository), that object is not made meanwhile
/// (`pulled_forward`): made on a lane, its delta was lost or not as the lanes' timing went.
/// The answer is the same pack on one compression thread and on four.
#[test]
fn no_delta_is_lost_to_a_base_pulled_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::medium(41)).unwrap();
    let mut pulled = Vec::new();
    for window in ["10", "5"] {
        // One thread: the same stored deltas on every run.
        let window_flag = format!("pack.window={window}");
        git(
            &path,
            &[
                "-c",
                "pack.threads=1",
                "-c",
                &window_flag,
                "repack",
                "-adfq",
            ],
        );
        let (repo, _) = with_bitmaps(&path);
        let commits = git(&path, &["rev-list", "--count", "main"]);
        let commits: usize = commits.trim().parse().unwrap();
        let main = oids(&git(&path, &["rev-parse", "main"]));
        for back in [commits / 8, commits / 4, commits / 2] {
            let mut fetch = clone_request(main.clone());
            fetch.haves = oids(&git(&path, &["rev-parse", &format!("main~{back}")]));
            fetch.thin_pack = false;
            let answer = |threads: usize| {
                let options = Options {
                    compression_threads: threads,
                    ..Options::default()
                };
                let (_, stats, pack) = send_with(&repo, &fetch, &options);
                assert!(stats.pack_reused > 0 && stats.new_deltas > 0, "{stats:?}");
                assert_eq!(
                    stats.lost_deltas, 0,
                    "window {window}, {threads}: {stats:?}"
                );
                (stats, pack)
            };
            let (stats, pack) = answer(4);
            let (_, one_pack) = answer(1);
            assert!(
                pack == one_pack,
                "window {window}, main~{back}: another pack"
            );
            pulled.push(stats.pulled_forward);
        }
    }
    assert!(pulled.iter().any(|&p| p > 0), "{pulled:?}");
}

/// With a small lookahead, the writer defers the next batch's compressing whenever the two
/// batches held are over their bound, and an object of that batch may then be written
/// early, as the base of an object of the batch before, ahead of its try (`pulled_forward`).
/// The answer is still whole and holds the same objects: every object once, every delta on
/// a base in the pack, nothing lost.
#[test]
fn an_object_pulled_forward_before_its_batch_is_still_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::medium(41)).unwrap();
    // One thread: the same deltas on every run.
    git(&path, &["-c", "pack.threads=1", "repack", "-adfq"]);
    let repo = Repository::open(&path).unwrap();
    let mut fetch = clone_request(oids(&git(&path, &["rev-parse", "main"])));
    fetch.deepen = Some(1);
    let (_, stats, pack) = send(&repo, &fetch);
    assert_eq!(stats.pulled_forward, 0, "{stats:?}");
    let options = Options {
        lookahead_bytes: 64 << 10,
        ..Options::default()
    };
    let (_, small, small_pack) = send_with(&repo, &fetch, &options);
    assert!(small.pulled_forward > 0, "{small:?}");
    assert!(small.lookahead_bytes < stats.lookahead_bytes, "{small:?}");
    assert_eq!(
        (small.objects, small.lost_deltas),
        (stats.objects, 0),
        "{small:?}"
    );
    // Checked by `git index-pack --strict` as received: the same objects, and no base
    // appended to complete it (a shallow clone's pack is not thin).
    let (received, small_received) = (
        received_over(&path, &pack),
        received_over(&path, &small_pack),
    );
    let ids = |r: &std::collections::HashMap<String, (u64, Option<String>)>| {
        r.keys().cloned().collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(small_received.len(), small.objects as usize);
    assert_eq!(ids(&small_received), ids(&received));
}

/// Stored entries of a MiB or more are written from the pack's map in pieces: a large blob
/// stored as a delta against another (each version 1.25 MiB of its own random bytes after
/// 2 MiB they share) and the one stored whole, on two unrelated branches, are each sent to a
/// client holding the other branch: the delta as stored against the client's blob in a thin
/// pack, entry by entry; the whole one as a new delta against the client's version at its
/// path in a thin pack, and as stored in a run of the pack without `thin-pack`. The client's
/// `index-pack --strict --fix-thin` takes them, with the right bytes.
#[test]
fn large_stored_entries_are_sent_from_the_map() {
    let (_dir, work, path) = work_tree();
    let mut rng = repo::Rng::new(77);
    let shared = rng.bytes(2 << 20);
    let who = ["-c", "user.name=A", "-c", "user.email=a@example.com"];
    let mut versions = Vec::new();
    for branch in ["one", "two"] {
        git(&work, &["checkout", "-q", "--orphan", branch]);
        let content = [shared.clone(), rng.bytes(5 << 18)].concat();
        std::fs::write(work.join("big.bin"), &content).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &[&who[..], &["commit", "-qm", branch]].concat());
        let blob = git(&work, &["rev-parse", "HEAD:big.bin"]).trim().to_owned();
        let commit = ObjectId::from_hex(git(&work, &["rev-parse", "HEAD"]).trim().as_bytes());
        versions.push((branch, commit.unwrap(), blob, content));
    }
    bare_packed_copy(&work, &path);
    let repo = Repository::open(&path).unwrap();
    let received = |pack: &[u8], have: usize, commit: &ObjectId, blob: &str| {
        let check = tempfile::tempdir().unwrap();
        let held = format!("{}\n", versions[have].0);
        let client = client_holding(check.path(), &path, held.as_bytes());
        gitcache_testkit::git::git_with_input(
            &client,
            &["index-pack", "--strict", "--stdin", "--fix-thin"],
            pack,
        );
        assert_complete_at(&client, commit);
        let sent = std::process::Command::new("git")
            .arg("-C")
            .arg(&client)
            .args(["cat-file", "blob", blob])
            .output()
            .unwrap();
        sent.stdout
    };
    let (mut deltas, mut made) = (0, 0);
    for (want, have) in [(0, 1), (1, 0)] {
        let (branch, commit, blob, content) = &versions[want];
        let mut fetch = Fetch {
            haves: vec![versions[have].1],
            ..clone_request(vec![*commit])
        };
        let (_, stats, pack) = send(&repo, &fetch);
        // The blob stored whole goes as a new delta against the client's version at its
        // path, the other as its stored delta; the rest as stored.
        assert_eq!(stats.reused + stats.new_deltas, 3, "{branch}: {stats:?}");
        made += stats.new_deltas;
        deltas += stats.reused_deltas;
        if stats.reused_deltas > 0 {
            // The delta against the client's blob, read whole from the stored pack.
            assert!(stats.stored_read_bytes > 5 << 18, "{branch}: {stats:?}");
        }
        assert!(received(&pack, have, commit, blob) == *content, "{branch}");
        if stats.new_deltas > 0 {
            assert!(pack.len() < content.len() / 2, "{branch}: {}", pack.len());
            // Without thin-pack it goes as stored, in a run of the pack.
            fetch.thin_pack = false;
            let (_, stats, pack) = send(&repo, &fetch);
            assert_eq!(
                (stats.reused, stats.pack_reused),
                (3, 3),
                "{branch}: {stats:?}"
            );
            assert!(pack.len() > content.len() / 2, "{branch}: {}", pack.len());
            assert!(received(&pack, have, commit, blob) == *content, "{branch}");
        }
    }
    // One of the two is stored as a delta of the other, and went as stored; the other went
    // as a new delta against it.
    assert_eq!((deltas, made), (1, 1));
}

/// Issue 16: in an answer the bitmaps select, an object stored whole in the runs copied goes
/// in a thin pack as a delta against the client's object at its path. Consolidation stores
/// the newest version of a directory whole and the older ones as deltas on it; the upstream,
/// between two repacks, has the new version as a delta on the client's and sends that.
#[test]
fn an_object_stored_whole_in_the_bitmapped_pack_goes_as_a_delta_against_the_clients() {
    let (dir, work, path) = work_tree();
    std::fs::create_dir(work.join("dir")).unwrap();
    for i in 0..300 {
        std::fs::write(work.join(format!("dir/{i}.txt")), format!("file {i}\n")).unwrap();
    }
    // Rewritten whole at every commit: its try against the client's version does not pay.
    std::fs::write(work.join("noise.txt"), noise(1, 200)).unwrap();
    gitcache_testkit::git::commit_all(&work, "start");
    for n in 0..3 {
        std::fs::write(work.join(format!("dir/{n}.txt")), format!("changed {n}\n")).unwrap();
        std::fs::write(work.join("noise.txt"), noise(n + 2, 200)).unwrap();
        gitcache_testkit::git::commit_all(&work, &format!("change {n}"));
    }
    bare_packed_copy(&work, &path);
    let (repo, _) = with_bitmaps(&path);
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (new_dir, old_dir) = (id("main:dir"), id("main~1:dir"));
    let (new_noise, old_noise) = (id("main:noise.txt"), id("main~1:noise.txt"));
    let stored = stored_layout(&path);
    assert_eq!(stored[&new_dir].1, None, "stored whole: {stored:?}");
    assert!(stored[&old_dir].1.is_some(), "a delta: {stored:?}");
    assert_eq!(stored[&new_noise].1, None, "stored whole: {stored:?}");

    let mut fetch = clone_request(oids(&id("main")));
    fetch.haves = oids(&id("main~1"));
    let (whole, stats, pack) = send(&repo, &fetch);
    assert!(!whole);
    assert_eq!(stats.new_deltas, 1, "{stats:?}");
    let (client, received) = received_thin(dir.path(), &path, "main~1", &pack);
    assert_eq!(
        received[&new_dir].1.as_ref(),
        Some(&old_dir),
        "{received:?}"
    );
    assert_eq!(received[&new_noise].1, None, "no delta pays: {received:?}");
    assert_ne!(old_noise, new_noise);
    assert_complete_at(&client, &oids(&id("main"))[0]);

    // git's own answer from the same repository, with its bitmaps, copies the tree whole
    // (its pack reuse); from a copy without bitmaps, its walk offers the client's trees as
    // preferred bases and it sends the delta. Ours is within 5% of the latter.
    let git_answer = |repo: &Path| {
        let pkt = |line: String| format!("{:04x}{line}", line.len() + 4);
        let mut request = pkt("command=fetch\n".into()) + "0001";
        for line in ["thin-pack", "no-progress", "ofs-delta"] {
            request += &pkt(format!("{line}\n"));
        }
        request += &pkt(format!("want {}\n", id("main")));
        request += &pkt(format!("have {}\n", id("main~1")));
        request += &(pkt("done\n".into()) + "0000");
        let out = std::process::Command::new(gitcache_testkit::git::git_program())
            .args(["upload-pack", "--stateless-rpc"])
            .arg(repo)
            .env("GIT_PROTOCOL", "version=2")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(request.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success());
        parse_fetch_response(&out.stdout, ObjectFormat::Sha1)
            .unwrap()
            .pack
            .unwrap()
    };
    let split = dir.path().join("split.git");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "--no-local",
            work.to_str().unwrap(),
            split.to_str().unwrap(),
        ],
    );
    let upstream = git_answer(&split);
    assert!(
        pack.len() <= upstream.len() * 105 / 100,
        "{} against {}",
        pack.len(),
        upstream.len()
    );
    let consolidated = git_answer(&path);
    assert!(
        pack.len() + 1000 < consolidated.len(),
        "{} against {}",
        pack.len(),
        consolidated.len()
    );

    // Under a filter (a partial clone, which may lack objects its commits reach), no base
    // the client is only supposed to have.
    fetch.filter = Some(gitcache_protocol::filter::Filter::BlobLimit(1 << 20));
    let (_, stats, _) = send(&repo, &fetch);
    assert_eq!(stats.new_deltas, 0, "{stats:?}");
    fetch.filter = None;

    // Without offset deltas (no runs copied), the same.
    fetch.ofs_delta = false;
    let (_, stats, refs) = send(&repo, &fetch);
    assert_eq!(stats.new_deltas, 1, "{stats:?}");
    let check = tempfile::tempdir().unwrap();
    let (client, received) = received_thin(check.path(), &path, "main~1", &refs);
    assert_eq!(
        received[&new_dir].1.as_ref(),
        Some(&old_dir),
        "{received:?}"
    );
    assert_complete_at(&client, &oids(&id("main"))[0]);
    fetch.ofs_delta = true;

    // Without thin-pack the tree goes as stored.
    fetch.thin_pack = false;
    let (_, stats, plain) = send(&repo, &fetch);
    assert_eq!(stats.new_deltas, 0, "{stats:?}");
    assert!(plain.len() > pack.len() + 1000);
}

/// A client in `dir` holding what `have` reaches in `repo`, with the thin `pack` taken in
/// (`--fix-thin`, every object checked), and the layout of that pack there.
fn received_thin(
    dir: &Path,
    repo: &Path,
    have: &str,
    pack: &[u8],
) -> (
    std::path::PathBuf,
    std::collections::HashMap<String, (u64, Option<String>)>,
) {
    let client = client_holding(dir, repo, format!("{have}\n").as_bytes());
    let received = taken_in(&client, pack, true);
    (client, received)
}

/// Issue 16: the other versions sent of a path whose client's object the trees of the wants
/// and haves give are tried against it too, by kind and name hash, as git's window pairs them
/// with its preferred bases: here the largest version of a directory, between the client's
/// and the tip's, is what the stored pack keeps whole.
#[test]
fn a_version_stored_whole_between_the_clients_and_the_tip_goes_as_a_delta_against_the_clients() {
    let (dir, work, path) = work_tree();
    std::fs::create_dir(work.join("dir")).unwrap();
    let files = |range: std::ops::Range<u32>| {
        for i in range {
            std::fs::write(work.join(format!("dir/{i}.txt")), format!("file {i}\n")).unwrap();
        }
    };
    files(0..300);
    gitcache_testkit::git::commit_all(&work, "start");
    files(300..400);
    gitcache_testkit::git::commit_all(&work, "more");
    for i in 100..250 {
        std::fs::remove_file(work.join(format!("dir/{i}.txt"))).unwrap();
    }
    gitcache_testkit::git::commit_all(&work, "fewer");
    bare_packed_copy(&work, &path);
    let (repo, _) = with_bitmaps(&path);
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let (tip_dir, between, client_dir) = (id("main:dir"), id("main~1:dir"), id("main~2:dir"));
    let stored = stored_layout(&path);
    assert_eq!(
        stored[&between].1, None,
        "the largest stored whole: {stored:?}"
    );
    assert!(stored[&tip_dir].1.is_some(), "{stored:?}");

    let mut fetch = clone_request(oids(&id("main")));
    fetch.haves = oids(&id("main~2"));
    let (_, stats, pack) = send(&repo, &fetch);
    assert!(stats.new_deltas >= 1, "{stats:?}");
    let (client, received) = received_thin(dir.path(), &path, "main~2", &pack);
    assert_eq!(
        received[&between].1.as_ref(),
        Some(&client_dir),
        "{received:?}"
    );
    assert!(received[&tip_dir].1.is_some(), "{received:?}");
    assert_complete_at(&client, &oids(&id("main"))[0]);
}

/// Issue 16: the same pairing for an answer too small a share of its pack to read the pack's
/// delta forest for (one object in 64 or more): what is stored below each version is read from
/// the entries the answer sends. Before, such an answer (an incremental fetch of a large
/// repository in a server that had not read the forest) sent every version whole.
#[test]
fn whole_versions_of_a_small_answer_are_paired_without_the_delta_forest() {
    let (dir, path, versions, fetch) = whole_versions(5000);
    let (repo, _) = with_bitmaps(&path);
    let (whole, stats, pack) = send(&repo, &fetch);
    assert!(!whole && stats.pack_reused > 0, "{stats:?}");
    assert!(stats.objects * 64 < 5000, "{stats:?}");
    assert!(stats.new_deltas >= 19, "{stats:?}");
    let (_, received) = received_alone(dir.path(), "small.git", &pack);
    assert_eq!(received[&versions[0]].1, None, "{received:?}");
    for (n, v) in versions.iter().enumerate().skip(1) {
        assert_eq!(received[v].1.as_ref(), Some(&versions[n - 1]), "{n}");
    }
}

/// The last `n` commits of `work`'s `main` taken into the bare `path` as a pack of their own
/// (`fast-import`: the first version of each tree and blob in it stored whole, each later
/// one as a delta of the one before), as a refresh fetches a push.
fn fetched_as_a_pack(work: &Path, path: &Path, n: usize) {
    let range = format!("main~{n}..main");
    let stream = git(
        work,
        &["fast-export", "--reference-excluded-parents", &range],
    );
    gitcache_testkit::git::git_with_input(
        path,
        &["-c", "fastimport.unpackLimit=0", "fast-import", "--quiet"],
        stream.as_bytes(),
    );
}

/// Issue 16: a client a push past the bitmapped pack (its have and what the next push
/// brought both in packs fetched since): the other versions of a directory the next push
/// sends, the oldest stored whole in the pack that push came in, go as deltas against the
/// client's version at their path, as git's walk offers it, not whole.
#[test]
fn versions_beyond_the_bitmapped_pack_go_as_deltas_against_the_clients() {
    let (dir, work, path) = work_tree();
    std::fs::create_dir(work.join("d")).unwrap();
    for i in 0..200 {
        let file = work.join(format!("d/{i}.txt"));
        std::fs::write(file, format!("file {i} of a directory\n")).unwrap();
    }
    // Much in the bitmapped pack, little beyond it: the bitmaps answer.
    junk_files_and_a_file(&work, 2000);
    bare_packed_copy(&work, &path);
    let _ = with_bitmaps(&path);
    let mut commits = 0;
    let mut push = |n: usize| {
        for _ in 0..n {
            let file = work.join(format!("d/{}.txt", commits % 200));
            std::fs::write(file, format!("edit {commits}\n")).unwrap();
            commits += 1;
            gitcache_testkit::git::commit_all(&work, &format!("edit {commits}"));
        }
        fetched_as_a_pack(&work, &path, n);
    };
    push(1);
    push(3);
    let id = |rev: &str| git(&path, &["rev-parse", rev]).trim().to_owned();
    let client_dir = id("main~3:d");
    let versions: Vec<String> = (0..3).map(|n| id(&format!("main~{n}:d"))).collect();
    let stored = stored_layout(&path);
    let oldest = &versions[2];
    assert_eq!(stored[oldest].1, None, "stored whole: {stored:?}");
    let repo = Repository::open(&path).unwrap();
    let mut fetch = clone_request(oids(&id("main")));
    fetch.haves = oids(&id("main~3"));
    let (whole, stats, pack) = send(&repo, &fetch);
    assert!(!whole && stats.new_deltas > 0, "{stats:?}");
    let (client, received) = received_thin(dir.path(), &path, "main~3", &pack);
    assert_eq!(
        received[oldest].1.as_ref(),
        Some(&client_dir),
        "{received:?}"
    );
    assert_complete_at(&client, &oids(&id("main"))[0]);
}

/// The trees of `HEAD` read ahead, as a server prepares a mirror asked for lately, are the
/// ones a shallow clone of it then reads: its answer takes them from the handle and is byte
/// for byte the answer of a handle that read them from the pack (which keeps them too); a
/// handle opened again (after a refresh) keeps them.
#[test]
fn trees_of_head_read_ahead_serve_a_shallow_clone() {
    let (_dir, path) = packed_repo(37);
    let head = oids(&git(&path, &["rev-parse", "HEAD"]));
    let mut fetch = clone_request(head);
    fetch.deepen = Some(1);
    let walked = Repository::open(&path).unwrap();
    let (_, _, expected) = send(&walked, &fetch);
    assert!(
        walked.kept_trees().bytes > 0,
        "the walk keeps its want's trees"
    );

    let prepared = Repository::open(&path).unwrap();
    assert_eq!(prepared.kept_trees(), gitcache_pack::KeptTrees::default());
    let read = prepared.keep_head_trees().unwrap();
    let trees = git(&path, &["ls-tree", "-r", "-d", "HEAD"]).lines().count() + 1;
    assert_eq!(read, trees, "the root and every directory below it");
    let kept = prepared.kept_trees();
    assert!(kept.bytes > 0 && kept.hits == 0, "{kept:?}");
    let (_, _, pack) = send(&prepared, &fetch);
    assert_eq!(pack, expected);
    let after = prepared.kept_trees();
    assert!(after.hits >= read as u64, "{after:?}, {read} trees");

    let reopened = prepared.reopen().unwrap();
    assert_eq!(reopened.kept_trees(), after, "handed on");
    let (_, _, pack) = send(&reopened, &fetch);
    assert_eq!(pack, expected);
    assert!(reopened.kept_trees().hits >= after.hits + read as u64);
}

/// A pack (as an upstream may send) whose entry of one blob is a zlib stream padded to far
/// more than twice the blob: valid, but longer than an entry's end taken from the reverse
/// index is trusted to be. Its end is found by inflating it, and answers holding the blob
/// send it as it is stored, read once and not found again through the object database (which
/// holds the whole entry in memory): from the pack as taken in, and in a run of entries
/// from git's repack of it with bitmaps.
#[test]
fn an_entry_stored_far_longer_than_its_content_is_still_sent() {
    let (dir, work, path) = work_tree();
    std::fs::write(work.join("a.txt"), text_lines("first", 50)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    let blob = text_lines("second", 40);
    std::fs::write(work.join("b.txt"), &blob).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "two"]);
    let (one, two) = (
        oids(&git(&work, &["rev-parse", "HEAD~1"]))[0],
        oids(&git(&work, &["rev-parse", "HEAD"]))[0],
    );
    let padded_id = git(&work, &["rev-parse", "HEAD:b.txt"]).trim().to_owned();
    // Every object whole, the blob's stream padded by 100,000 bytes.
    let listed = git(&work, &["rev-list", "--objects", "--all"]);
    let ids: Vec<&str> = listed.lines().map(|l| &l[..40]).collect();
    let entries: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let kind = git(&work, &["cat-file", "-t", id]);
            let content =
                gitcache_testkit::git::git_with_input(&work, &["cat-file", kind.trim(), id], b"");
            let code = match kind.trim() {
                "commit" => 1,
                "tree" => 2,
                _ => 3,
            };
            let padding = if *id == padded_id { 20_000 } else { 0 };
            packfile::whole_entry(code, &content, padding)
        })
        .collect();
    let pack = packfile::pack_of(&entries.iter().map(Vec::as_slice).collect::<Vec<_>>());
    git(
        dir.path(),
        &["init", "-q", "--bare", path.to_str().unwrap()],
    );
    gitcache_testkit::git::git_with_input(&path, &["index-pack", "--stdin"], &pack);
    git(&path, &["update-ref", "refs/heads/main", &two.to_string()]);
    let fetch = Fetch {
        haves: vec![one],
        thin_pack: false,
        ..clone_request(vec![two])
    };
    for bitmaps in [false, true] {
        if bitmaps {
            // git copies the stored entry as it is into its new pack.
            git(&path, &["repack", "-adbq"]);
            let repacked = std::fs::metadata(pack_file(&path)).unwrap().len();
            assert!(repacked > 100_000, "the padding kept: {repacked}");
        }
        let repo = Repository::open(&path).unwrap();
        let (_, stats, answer) = send(&repo, &fetch);
        let as_stored = match bitmaps {
            true => stats.pack_reused == 3,
            false => stats.stored_read_bytes < 150_000,
        };
        assert!(
            answer.len() > 100_000 && stats.reused == 3 && as_stored,
            "bitmaps {bitmaps}: {} bytes, {stats:?}",
            answer.len()
        );
        let client = client_holding(dir.path(), &path, format!("{one}\n").as_bytes());
        gitcache_testkit::git::git_with_input(
            &client,
            &["index-pack", "--strict", "--stdin"],
            &answer,
        );
        assert_complete_at(&client, &two);
        std::fs::remove_dir_all(&client).unwrap();
    }
}
