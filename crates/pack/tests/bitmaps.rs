//! Reachability bitmaps against C git: git's bitmaps read as git means them, ours checked by
//! `git rev-list --test-bitmap`.

mod common;

use std::collections::BTreeSet;

use common::{git, index_ids};
use gitcache_pack::Repository;
use gitcache_protocol::ObjectId;
use gitcache_testkit::repo::{self, RepoSpec};

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.trim().as_bytes()).unwrap()
}

/// What `git rev-list --objects <rev>` lists.
fn reachable(repo: &std::path::Path, rev: &str) -> Vec<ObjectId> {
    let out = git(repo, &["rev-list", "--objects", "--no-object-names", rev]);
    let set: BTreeSet<ObjectId> = out.lines().map(oid).collect();
    set.into_iter().collect()
}

fn tips(repo: &std::path::Path) -> Vec<ObjectId> {
    git(repo, &["for-each-ref", "--format=%(objectname)"])
        .lines()
        .map(oid)
        .collect()
}

/// Git's bitmaps with and without its lookup table (both have its name-hash cache).
#[test]
fn gits_bitmaps_are_read_as_git_means_them() {
    for (spec, table) in [
        (RepoSpec::small(71), "false"),
        (RepoSpec::small(72).sha256(), "false"),
        (RepoSpec::small(71), "true"),
        (RepoSpec::small(72).sha256(), "true"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.git");
        repo::generate(&path, &spec).unwrap();
        let option = format!("pack.writeBitmapLookupTable={table}");
        git(&path, &["-c", &option, "repack", "-adb", "-q"]);
        let file = std::fs::read_dir(path.join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "bitmap"))
            .unwrap();
        let header = std::fs::read(file).unwrap();
        let options = u16::from_be_bytes([header[6], header[7]]);
        assert_eq!(
            options & 0x10 != 0,
            table == "true",
            "lookup table: {table}"
        );
        let repo = Repository::open(&path).unwrap();
        let mut checked = 0;
        for commit in git(&path, &["rev-list", "--all"]).lines().map(oid) {
            if let Some(ours) = repo.bitmap_of(&commit).unwrap() {
                assert_eq!(ours, reachable(&path, &commit.to_string()), "{commit}");
                checked += 1;
            }
        }
        assert!(checked > 0, "git wrote bitmaps for some commits");
    }
}

#[test]
fn our_bitmaps_pass_gits_own_check() {
    for spec in [RepoSpec::small(73), RepoSpec::small(74).sha256()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.git");
        repo::generate(&path, &spec).unwrap();
        git(&path, &["repack", "-ad", "-q"]);
        let repo = Repository::open(&path).unwrap();
        let written = repo.write_bitmaps(&tips(&path)).unwrap();
        let written = written.expect("one pack, the closure of the refs");
        assert!(written.extension().is_some_and(|e| e == "bitmap"));

        // Every stored bitmap is what git's walk finds.
        let mut stored = 0;
        for commit in git(&path, &["rev-list", "--all"]).lines().map(oid) {
            if let Some(ours) = repo.bitmap_of(&commit).unwrap() {
                assert_eq!(ours, reachable(&path, &commit.to_string()), "{commit}");
                stored += 1;
            }
        }
        let commits = git(&path, &["rev-list", "--all", "--count"]);
        let commits: usize = commits.trim().parse().unwrap();
        // Each of the newest hundred commits has one (and each tip); not every commit does.
        assert!(stored > 100 && stored < commits, "{stored} of {commits}");
        // Git reads them and checks them against its own walk (of commits with a bitmap).
        let inner = git(&path, &["rev-list", "main"])
            .lines()
            .map(oid)
            .skip(1)
            .find(|c| repo.bitmap_of(c).unwrap().is_some())
            .expect("a bitmap below the tip")
            .to_string();
        for rev in ["main", "feature/1", inner.as_str()] {
            let out = std::process::Command::new(gitcache_testkit::git::git_program())
                .args(["rev-list", "--test-bitmap", rev])
                .current_dir(&path)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{rev}: {said}");
            assert!(said.contains("OK!"), "{rev}: {said}");
        }
        // And uses them: the same objects with and without.
        let with = git(
            &path,
            &["rev-list", "--objects", "--all", "--use-bitmap-index"],
        );
        let without = git(&path, &["rev-list", "--objects", "--all"]);
        let set = |s: &str| -> BTreeSet<String> {
            s.lines()
                .map(|l| l[..l.find(' ').unwrap_or(l.len())].to_owned())
                .collect()
        };
        assert_eq!(set(&with), set(&without));
    }
}

/// The name hashes at the end of a bitmap file (its hash cache), in index order, if it has
/// them.
fn name_hashes(file: &std::path::Path, objects: usize, hash_len: usize) -> Option<Vec<u32>> {
    let data = std::fs::read(file).unwrap();
    let options = u16::from_be_bytes([data[6], data[7]]);
    if options & 0x4 == 0 {
        return None;
    }
    let end = data.len() - hash_len;
    let names = &data[end - 4 * objects..end];
    Some(
        names
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

/// Every path of every tree and blob in the history of the repository at `path`.
fn all_paths(path: &std::path::Path) -> std::collections::HashMap<ObjectId, BTreeSet<String>> {
    let mut paths: std::collections::HashMap<ObjectId, BTreeSet<String>> = Default::default();
    for commit in git(path, &["rev-list", "--all"]).lines() {
        let root = git(path, &["rev-parse", &format!("{commit}^{{tree}}")]);
        paths.entry(oid(&root)).or_default().insert(String::new());
        for line in git(path, &["ls-tree", "-r", "-t", commit]).lines() {
            let (meta, name) = line.split_once('\t').unwrap();
            let id = meta.split(' ').nth(2).unwrap();
            paths.entry(oid(id)).or_default().insert(name.to_owned());
        }
    }
    paths
}

/// Two bitmap files of the pack whose index lists `ids` are the same but for their name
/// hashes (and so their checksums), and each name either gives is the hash of one of its
/// object's paths.
fn same_but_names(
    a: &[u8],
    b: &[u8],
    ids: &[ObjectId],
    paths: &std::collections::HashMap<ObjectId, BTreeSet<String>>,
    hash_len: usize,
) {
    assert_eq!(a.len(), b.len());
    let names = a.len() - hash_len - 4 * ids.len();
    assert!(a[..names] == b[..names], "the bitmaps differ");
    let name = |file: &[u8], i: usize| {
        u32::from_be_bytes(file[names + 4 * i..names + 4 * i + 4].try_into().unwrap())
    };
    for (i, id) in ids.iter().enumerate() {
        let (x, y) = (name(a, i), name(b, i));
        if x == y {
            continue;
        }
        let at = paths.get(id).expect("a commit or tag has no name");
        let hashes: BTreeSet<u32> = at
            .iter()
            .map(|p| gitcache_pack::path_name_hash(p.as_bytes()))
            .collect();
        assert!(
            at.len() > 1 && hashes.contains(&x) && hashes.contains(&y),
            "{id} at {at:?}: {x:#x} and {y:#x}"
        );
    }
}

/// Our bitmap files carry git's name-hash cache: each tree and blob gets the hash of one of
/// the paths it lies at in the history, which is the hash git's own file gives it wherever
/// there is only one such path (git takes the first it meets, walking newest first).
#[test]
fn our_name_hashes_are_gits() {
    for spec in [RepoSpec::small(81), RepoSpec::small(82).sha256()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.git");
        repo::generate(&path, &spec).unwrap();
        git(&path, &["repack", "-adb", "-q"]);
        let pack_dir = path.join("objects/pack");
        let find = |ext: &str| {
            std::fs::read_dir(&pack_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == ext))
                .unwrap()
        };
        let hash_len = if spec.object_format == "sha256" {
            32
        } else {
            20
        };
        let by_index = index_ids(&find("idx"), spec.object_format);
        let bitmap = find("bitmap");
        let gits = name_hashes(&bitmap, by_index.len(), hash_len).expect("git writes them");
        std::fs::remove_file(&bitmap).unwrap();
        let repo = Repository::open(&path).unwrap();
        let written = repo.write_bitmaps(&tips(&path)).unwrap().expect("bitmaps");
        let ours = name_hashes(&written, by_index.len(), hash_len).expect("ours has them");

        let paths = all_paths(&path);
        let mut alone = 0;
        for (i, id) in by_index.iter().enumerate() {
            let Some(at) = paths.get(id) else {
                // Commits and tags: no path.
                assert_eq!(ours[i], 0, "{id}");
                continue;
            };
            let hashes: BTreeSet<u32> = at
                .iter()
                .map(|p| gitcache_pack::path_name_hash(p.as_bytes()))
                .collect();
            assert!(hashes.contains(&ours[i]), "{id} at {at:?}: {:#x}", ours[i]);
            if at.len() == 1 {
                assert_eq!(ours[i], gits[i], "{id} at {at:?}");
                alone += 1;
            }
        }
        assert!(alone > by_index.len() / 4, "{alone} of {}", by_index.len());
        // The rest of the file reads as before: git checks it.
        let out = std::process::Command::new(gitcache_testkit::git::git_program())
            .args(["rev-list", "--test-bitmap", "main"])
            .current_dir(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn no_bitmaps_for_packs_that_are_not_the_closure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.git");
    repo::generate(&path, &RepoSpec::tiny(75)).unwrap();
    git(&path, &["repack", "-ad", "-q"]);
    let repo = Repository::open(&path).unwrap();
    // Only main: the pack also holds what the other refs reach.
    let main = oid(&git(&path, &["rev-parse", "main"]));
    let all = tips(&path);
    if all.len() > 1 {
        assert!(repo.write_bitmaps(&[main]).unwrap().is_none());
    }
    // Two packs: nothing written.
    let extra = git(&path, &["commit-tree", "-m", "x", "main^{tree}"]);
    git(&path, &["update-ref", "refs/heads/extra", extra.trim()]);
    git(&path, &["repack", "-q"]);
    assert_eq!(repo::pack_files(&path, "pack").unwrap().len(), 2);
    let repo = Repository::open(&path).unwrap();
    assert!(repo.write_bitmaps(&tips(&path)).unwrap().is_none());
}

/// The pack that replaces a bitmapped one (new commits, a deleted branch) gets its bitmaps
/// from the old pack's (its index and bitmap kept aside, its data gone) where they hold: the
/// bitmaps written are byte for byte those written without them (names may differ where an
/// object has several paths), and each bitmap is what git's walk finds. An old file whose checksum does not match, or without name hashes, is not used.
#[test]
fn bitmaps_of_a_replaced_pack_are_reused_as_if_written_anew() {
    for spec in [
        RepoSpec {
            commits: 400,
            ..RepoSpec::small(77)
        },
        RepoSpec::small(78).sha256(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.git");
        repo::generate(&path, &spec).unwrap();
        git(&path, &["repack", "-ad", "-q"]);
        let old_bitmap = Repository::open(&path)
            .unwrap()
            .write_bitmaps(&tips(&path))
            .unwrap()
            .expect("bitmaps of the first pack");
        // History moves on: commits added, a branch gone (its own objects are not in the new
        // pack, so bitmaps of its commits cannot be reused).
        repo::append_commits(&path, "main", 30, 79).unwrap();
        git(&path, &["update-ref", "-d", "refs/heads/feature/1"]);
        let refs = git(&path, &["for-each-ref", "--format=%(objectname)"]);
        let mut pack_objects = std::process::Command::new(gitcache_testkit::git::git_program())
            .args(["pack-objects", "--revs", "--delta-base-offset", "-q"])
            .arg("objects/pack/pack")
            .current_dir(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut pack_objects.stdin.take().unwrap(), refs.as_bytes())
            .unwrap();
        assert!(pack_objects.wait().unwrap().success());
        git(&path, &["prune-packed"]);
        // The old pack leaves the repository; its index and bitmaps are kept aside.
        let aside = dir.path().join("replaced");
        std::fs::create_dir(&aside).unwrap();
        for ext in ["idx", "bitmap", "rev"] {
            let from = old_bitmap.with_extension(ext);
            if from.exists() {
                std::fs::rename(&from, aside.join(from.file_name().unwrap())).unwrap();
            }
        }
        std::fs::remove_file(old_bitmap.with_extension("pack")).unwrap();
        let old_index = aside.join(old_bitmap.with_extension("idx").file_name().unwrap());
        let tips = tips(&path);

        let repo = Repository::open(&path).unwrap();
        let marked = repo.mark_pack_tips(&tips).unwrap().expect("the new pack");
        let write = |reuse: Option<&std::path::Path>| {
            let written = repo
                .write_bitmaps_reusing(&tips, reuse)
                .unwrap()
                .expect("bitmaps");
            assert_eq!(written.path, marked.with_extension("bitmap"));
            let bytes = std::fs::read(&written.path).unwrap();
            std::fs::remove_file(&written.path).unwrap();
            (written.reused, bytes)
        };
        let (none, anew) = write(None);
        assert_eq!(none, 0);
        let (reused, from_old) = write(Some(&old_index));
        assert!(reused > 0, "the old pack's bitmaps were taken");
        // The same bitmaps; an object at several paths may be named by another of them (the
        // walk that first meets it is another one).
        let hash_len = if spec.object_format == "sha256" {
            32
        } else {
            20
        };
        let ids = index_ids(&marked.with_extension("idx"), spec.object_format);
        let paths = all_paths(&path);
        same_but_names(&from_old, &anew, &ids, &paths, hash_len);
        // A reverse index beside it is not trusted (a wrong order would make every
        // translated bitmap name the wrong objects): one with its order reversed changes
        // nothing.
        let rev = old_index.with_extension("rev");
        let mut reversed = std::fs::read(&rev).unwrap_or_default();
        if reversed.len() > 12 {
            let hash_len = if spec.object_format == "sha256" {
                32
            } else {
                20
            };
            let end = reversed.len() - 2 * hash_len;
            let mut order: Vec<[u8; 4]> = reversed[12..end]
                .chunks_exact(4)
                .map(|c| c.try_into().unwrap())
                .collect();
            order.reverse();
            reversed.splice(12..end, order.concat());
        } else {
            reversed = [b"RIDX".as_slice(), &[0, 0, 0, 1, 0, 0, 0, 1]].concat();
        }
        std::fs::write(&rev, &reversed).unwrap();
        let (reused, with_rev) = write(Some(&old_index));
        assert!(reused > 0);
        assert!(
            with_rev == from_old,
            "a reverse index beside the old one was used"
        );
        // Damaged old files are not used; the result is the same.
        let index_bytes = std::fs::read(&old_index).unwrap();
        let mut damaged_index = index_bytes.clone();
        let at = damaged_index.len() / 2;
        damaged_index[at] ^= 0x01;
        std::fs::write(&old_index, &damaged_index).unwrap();
        let (reused, from_damaged) = write(Some(&old_index));
        assert_eq!(reused, 0, "a damaged index is not reused");
        assert!(from_damaged == anew);
        std::fs::write(&old_index, &index_bytes).unwrap();
        let kept = old_index.with_extension("bitmap");
        let mut damaged = std::fs::read(&kept).unwrap();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x01;
        std::fs::write(&kept, &damaged).unwrap();
        let (reused, from_damaged) = write(Some(&old_index));
        assert_eq!(reused, 0, "a damaged file is not reused");
        assert!(from_damaged == anew);
        // Nor is a sound file without name hashes (as older ones were written): the objects its
        // bitmaps cover would not be walked, and would have no name.
        damaged[middle] ^= 0x01;
        let original = damaged;
        let objects = index_ids(&old_index, spec.object_format).len();
        let mut unnamed = original[..original.len() - hash_len - 4 * objects].to_vec();
        unnamed[7] &= !0x4;
        let kind = if hash_len == 32 {
            gix_hash::Kind::Sha256
        } else {
            gix_hash::Kind::Sha1
        };
        let mut hasher = gix_hash::hasher(kind);
        hasher.update(&unnamed);
        let trailer = hasher.try_finalize().unwrap();
        unnamed.extend_from_slice(trailer.as_bytes());
        std::fs::write(&kept, &unnamed).unwrap();
        let (reused, from_unnamed) = write(Some(&old_index));
        assert_eq!(reused, 0, "a file without name hashes is not reused");
        assert!(from_unnamed == anew);
        std::fs::write(&kept, &original).unwrap();
        assert!(
            write(Some(&old_index)).0 > 0,
            "the file as it was is reused again"
        );

        std::fs::write(marked.with_extension("bitmap"), &anew).unwrap();
        let repo = Repository::open(&path).unwrap();
        let mut stored = 0;
        for commit in git(&path, &["rev-list", "--all"]).lines().map(oid) {
            if let Some(ours) = repo.bitmap_of(&commit).unwrap() {
                assert_eq!(ours, reachable(&path, &commit.to_string()), "{commit}");
                stored += 1;
            }
        }
        assert!(stored > 0);
    }
}

/// A damaged bitmap file: a broken structure is not used (fetches walk, correctly); damaged
/// bits are found by the checksum.
#[test]
fn a_damaged_bitmap_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.git");
    repo::generate(&path, &RepoSpec::small(76)).unwrap();
    git(&path, &["repack", "-adb", "-q"]);
    let bitmap = std::fs::read_dir(path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bitmap"))
        .unwrap();
    let main = oid(&git(&path, &["rev-parse", "main"]));
    let fetch = gitcache_protocol::request::Fetch {
        wants: vec![main],
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Default::default()
    };
    let count = |repo: &Repository| {
        let gitcache_pack::Plan::Pack(plan) =
            gitcache_pack::plan(repo, &fetch, repo.object_format(), &Default::default()).unwrap()
        else {
            panic!("a pack");
        };
        (plan.used_bitmaps(), plan.object_count())
    };
    let (used, objects) = count(&Repository::open(&path).unwrap());
    assert!(used);
    assert_eq!(objects, reachable(&path, "main").len());
    let original = std::fs::read(&bitmap).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x10;
    let mut truncated = original.clone();
    truncated.truncate(original.len() / 2);
    // A damaged structure is found as the file is read: the fetch walks instead.
    std::fs::write(&bitmap, &truncated).unwrap();
    let repo = Repository::open(&path).unwrap();
    let (used, walked) = count(&repo);
    assert!(!used, "the truncated file is not trusted");
    assert_eq!(walked, objects);
    assert!(repo.verify_bitmaps().is_err());
    // Damaged bits are found by the checksum, which loads do not read (as in git):
    // `verify_bitmaps` does.
    std::fs::write(&bitmap, &flipped).unwrap();
    let err = Repository::open(&path)
        .unwrap()
        .verify_bitmaps()
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    std::fs::write(&bitmap, &original).unwrap();
    Repository::open(&path).unwrap().verify_bitmaps().unwrap();
}

/// Until a mirror's first pack has bitmaps, a filter the type bitmaps answer is answered from
/// the pack's entry headers when the wants are exactly the tips the pack is marked with: the
/// objects the bitmaps give (themselves git's, `differential::with_reachability_bitmaps`),
/// with no walk. Other wants walk.
#[test]
fn a_marked_pack_answers_type_filters_without_bitmaps() {
    use gitcache_protocol::filter::{Filter, ObjectType};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.git");
    repo::generate(&path, &RepoSpec::small(77)).unwrap();
    git(&path, &["repack", "-adb", "-q"]);
    let all = tips(&path);
    Repository::open(&path)
        .unwrap()
        .mark_pack_tips(&all)
        .unwrap()
        .expect("one pack, the closure of every ref");
    let bitmap = std::fs::read_dir(path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bitmap"))
        .unwrap();
    let aside = dir.path().join("aside.bitmap");
    // The objects of the pack answering `fetch`, and how they were found.
    let answer = |fetch: &gitcache_protocol::request::Fetch| {
        let repo = Repository::open(&path).unwrap();
        let gitcache_pack::Plan::Pack(plan) =
            gitcache_pack::plan(&repo, fetch, repo.object_format(), &Default::default()).unwrap()
        else {
            panic!("a pack");
        };
        let how = (plan.used_bitmaps(), plan.walked());
        let file = dir.path().join("answer.pack");
        plan.write_pack(std::fs::File::create(&file).unwrap())
            .unwrap();
        git(dir.path(), &["index-pack", "answer.pack"]);
        let listed = std::process::Command::new("git")
            .arg("show-index")
            .stdin(std::fs::File::open(dir.path().join("answer.idx")).unwrap())
            .output()
            .unwrap();
        let objects: BTreeSet<ObjectId> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(|l| oid(l.split(' ').nth(1).unwrap()))
            .collect();
        std::fs::remove_file(dir.path().join("answer.idx")).unwrap();
        let warmth = repo.warmth();
        let names_read = warmth | gitcache_pack::Warmth::name_hashes() == warmth;
        (how, objects, names_read)
    };
    let main = oid(&git(&path, &["rev-parse", "main"]));
    for (wants, filter) in [
        (all.clone(), Filter::BlobNone),
        (all.clone(), Filter::Tree(0)),
        (all.clone(), Filter::BlobLimit(1000)),
        (all.clone(), Filter::ObjectType(ObjectType::Tree)),
        (all.clone(), Filter::ObjectType(ObjectType::Tag)),
        (
            all.clone(),
            Filter::Combine(vec![
                Filter::BlobLimit(5000),
                Filter::ObjectType(ObjectType::Blob),
            ]),
        ),
        (vec![main], Filter::BlobNone),
    ] {
        for include_tag in [false, true] {
            let fetch = gitcache_protocol::request::Fetch {
                wants: wants.clone(),
                filter: Some(filter.clone()),
                include_tag,
                done: true,
                ofs_delta: true,
                no_progress: true,
                ..Default::default()
            };
            let (how, bitmapped, names_read) = answer(&fetch);
            assert_eq!(how, (true, false), "{filter:?}: from the bitmaps");
            // Commits and tags alone: nothing to pair with a version by name.
            if matches!(
                filter,
                Filter::Tree(0) | Filter::ObjectType(ObjectType::Tag)
            ) {
                assert!(!names_read, "{filter:?}: name hashes read");
            }
            std::fs::rename(&bitmap, &aside).unwrap();
            let (how, typed, _) = answer(&fetch);
            std::fs::rename(&aside, &bitmap).unwrap();
            let expected = (false, wants.len() == 1);
            assert_eq!(how, expected, "{filter:?}: walked only for other wants");
            assert!(
                typed == bitmapped,
                "{filter:?}, include-tag {include_tag}: {} objects missing, {} extra",
                bitmapped.difference(&typed).count(),
                typed.difference(&bitmapped).count()
            );
        }
    }
}

/// A damaged reverse index (a position past the last, one repeated, one pointing further on
/// or to the last entry, the order reversed or shifted) is not used by a handle that checks
/// it, as a server's does: answers are the same as from the true file, the order built from
/// the index. A handle trusting it unread, as git does, may fail or answer wrongly, but each
/// entry copied as stored is at most twice its content or found to end where it is taken to
/// (each had copied the rest of the pack: up to 80 times the true answer here).
/// Maintenance writes it again.
#[test]
fn a_damaged_reverse_index_is_not_used_or_copies_no_more_than_its_entries() {
    use gitcache_protocol::filter::Filter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.git");
    repo::generate(&path, &RepoSpec::small(78)).unwrap();
    git(
        &path,
        &["-c", "pack.writeReverseIndex=true", "repack", "-adb", "-q"],
    );
    let rev = std::fs::read_dir(path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "rev"))
        .expect("git wrote a reverse index");
    let good = std::fs::read(&rev).unwrap();
    let main = oid(&git(&path, &["rev-parse", "main"]));
    let base = gitcache_protocol::request::Fetch {
        wants: tips(&path),
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Default::default()
    };
    let fetches = [
        base.clone(),
        gitcache_protocol::request::Fetch {
            wants: vec![main],
            deepen: Some(1),
            ..base.clone()
        },
        gitcache_protocol::request::Fetch {
            filter: Some(Filter::BlobNone),
            ..base.clone()
        },
        gitcache_protocol::request::Fetch {
            haves: vec![oid(&git(&path, &["rev-parse", "main~3"]))],
            thin_pack: true,
            ..base.clone()
        },
    ];
    // The answer's bytes, or why there is none, from a handle checking or trusting the file.
    let answer_from =
        |fetch: &gitcache_protocol::request::Fetch, trusting: bool| -> Result<Vec<u8>, String> {
            let repo = Repository::open(&path).unwrap();
            let repo = if trusting {
                repo.trusting_reverse_indexes()
            } else {
                repo
            };
            let plan = gitcache_pack::plan(&repo, fetch, repo.object_format(), &Default::default());
            let gitcache_pack::Plan::Pack(plan) = plan.map_err(|e| e.to_string())? else {
                panic!("a pack");
            };
            let mut out = Vec::new();
            plan.write_pack(&mut out).map_err(|e| e.to_string())?;
            Ok(out)
        };
    let answer = |fetch: &gitcache_protocol::request::Fetch| answer_from(fetch, false);
    let expected: Vec<Vec<u8>> = fetches.iter().map(|f| answer(f).unwrap()).collect();
    for (fetch, expected) in fetches.iter().zip(&expected) {
        assert!(
            &answer_from(fetch, true).unwrap() == expected,
            "trusted, sound"
        );
    }
    // Each entry copied as stored at most its header, twice its content and 64 bytes: the
    // objects' sizes bound what any answer copies (deltas state less than their objects here).
    let sizes = git(
        &path,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectsize)",
        ],
    );
    let (count, content) = sizes.lines().fold((0u64, 0u64), |(n, sum), size| {
        (n + 1, sum + size.trim().parse::<u64>().unwrap())
    });
    let bound = 2 * content + (64 + 32) * count + 1024;
    let (header, trailer) = (12, 2 * 20);
    let n = (good.len() - header - trailer) / 4;
    assert!(n > 100, "{n} objects");
    let positions = |each: &dyn Fn(usize, u32) -> u32| {
        let mut bytes = good.clone();
        for p in 0..n {
            let at = header + 4 * p;
            let was = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            bytes[at..at + 4].copy_from_slice(&each(p, was).to_be_bytes());
        }
        bytes
    };
    let last = n as u32 - 1;
    let at =
        |p: usize| u32::from_be_bytes(good[header + 4 * p..header + 4 * p + 4].try_into().unwrap());
    let (middle, further) = (n / 2, at(n / 2 + 10));
    let damaged = [
        (
            "one past the last",
            positions(&|p, was| if p == middle { last + 1 } else { was }),
        ),
        (
            "one repeated",
            positions(&|p, was| if p == middle { at(0) } else { was }),
        ),
        (
            "one pointing further on",
            positions(&|p, was| if p == middle + 1 { further } else { was }),
        ),
        (
            "one pointing to the last",
            positions(&|p, was| if p == middle + 1 { at(n - 1) } else { was }),
        ),
        ("reversed", positions(&|p, _| last - p as u32)),
        ("shifted", positions(&|_, was| (was + 1) % n as u32)),
    ];
    for (what, bytes) in &damaged {
        // git leaves the file read-only: replaced, as a damaged one would be found.
        std::fs::remove_file(&rev).unwrap();
        std::fs::write(&rev, bytes).unwrap();
        for (fetch, expected) in fetches.iter().zip(&expected) {
            assert!(&answer(fetch).unwrap() == expected, "{what}, checked");
            // Trusted, an answer may fail (a position no entry names), or name other objects,
            // but copies no more than the objects' bound. Where one entry's end moved to the
            // last entry's, that entry is found to end before and sent as stored, not with
            // the rest of the pack: the answer is about the true one.
            match answer_from(fetch, true) {
                Ok(got) => {
                    let len = got.len();
                    assert!(len as u64 <= bound, "{what}: {len}");
                    if *what == "one pointing to the last" {
                        assert!(len < expected.len() + expected.len() / 10, "{what}: {len}");
                    }
                }
                Err(err) => assert!(*what != "one pointing to the last", "{what}: {err}"),
            }
        }
        // Maintenance's check finds it and writes the true one again.
        let repo = Repository::open(&path).unwrap();
        assert_eq!(
            repo.write_reverse_indexes().unwrap(),
            vec![rev.clone()],
            "{what}"
        );
        assert_eq!(std::fs::read(&rev).unwrap(), good, "{what}");
        for (fetch, expected) in fetches.iter().zip(&expected) {
            assert!(&answer(fetch).unwrap() == expected, "{what}, written again");
        }
    }
}
