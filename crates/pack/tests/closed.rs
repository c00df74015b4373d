//! `Repository::check_pack_closed`: a pack is taken only if every object in it refers to
//! objects there are, each of the kind it is referred to as, read as the pack writer's walk
//! reads them. Packs are made by `git pack-objects` from objects written with
//! `git hash-object --literally` (what a hostile upstream can send). Also
//! `Repository::newest_commits`, which a mirror's refresh reads its tips with.

use std::path::{Path, PathBuf};

use gitcache_pack::{Error, Repository};
use gitcache_testkit::git::{git_stdout, git_with_input};

const PEOPLE: &str =
    "author A <a@example.com> 1700000000 +0000\ncommitter A <a@example.com> 1700000000 +0000\n";

struct Scratch {
    _dir: tempfile::TempDir,
    git_dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let git_dir = dir.path().join("repo.git");
        git_stdout(dir.path(), &["init", "-q", "--bare", "repo.git"]);
        Scratch { _dir: dir, git_dir }
    }

    fn object(&self, kind: &str, body: &[u8]) -> String {
        let out = git_with_input(
            &self.git_dir,
            &["hash-object", "-t", kind, "--literally", "-w", "--stdin"],
            body,
        );
        String::from_utf8(out).unwrap().trim().to_owned()
    }

    fn tree(&self, entries: &[(&str, &str, &str)]) -> String {
        let mut body = Vec::new();
        for (mode, name, oid) in entries {
            body.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            body.extend_from_slice(&hex(oid));
        }
        self.object("tree", &body)
    }

    fn commit(&self, tree: &str, parents: &[&str], extra: &str) -> String {
        let mut text = format!("tree {tree}\n");
        for p in parents {
            text.push_str(&format!("parent {p}\n"));
        }
        text.push_str(PEOPLE);
        text.push_str(extra);
        text.push_str("\nmessage\n");
        self.object("commit", text.as_bytes())
    }

    /// A pack of exactly `objects` (no walk), its data and index files.
    fn pack(&self, objects: &[&str]) -> (PathBuf, PathBuf) {
        let base = self.git_dir.join("objects/pack/pack");
        let input = objects.join("\n") + "\n";
        let out = git_with_input(
            &self.git_dir,
            &["pack-objects", "-q", base.to_str().unwrap()],
            input.as_bytes(),
        );
        let name = String::from_utf8(out).unwrap().trim().to_owned();
        let stem = self.git_dir.join(format!("objects/pack/pack-{name}"));
        (stem.with_extension("pack"), stem.with_extension("idx"))
    }

    fn check(&self, objects: &[&str]) -> Result<(), Error> {
        let (pack, index) = self.pack(objects);
        Repository::open(&self.git_dir)
            .unwrap()
            .check_pack_closed(&pack, &index, true)
    }
}

fn hex(oid: &str) -> Vec<u8> {
    (0..oid.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&oid[i..i + 2], 16).unwrap())
        .collect()
}

fn missing(result: Result<(), Error>, oid: &str) {
    match result {
        Err(Error::MissingObject { oid: found }) => assert_eq!(found.to_string(), oid),
        other => panic!("expected {oid} missing, got {other:?}"),
    }
}

#[test]
fn a_whole_history_is_closed() {
    let s = Scratch::new();
    let blob = s.object("blob", b"content\n");
    let sub = s.tree(&[("100644", "file", &blob)]);
    let root = s.tree(&[("40000", "dir", &sub), ("100644", "top", &blob)]);
    let first = s.commit(&root, &[], "");
    let second = s.commit(&root, &[&first], "");
    let tag = s.object(
        "tag",
        format!("object {second}\ntype commit\ntag v1\ntagger A <a@example.com> 1700000000 +0000\n\nv1\n")
            .as_bytes(),
    );
    // A gitlink names a commit of another repository: not looked for.
    let gitlink = s.tree(&[("160000", "sub", &"1".repeat(40)), ("100644", "top", &blob)]);
    let third = s.commit(&gitlink, &[&second], "");
    s.check(&[&blob, &sub, &root, &first, &second, &tag, &gitlink, &third])
        .unwrap();
}

#[test]
fn a_missing_parent_tree_entry_or_tag_target_is_named() {
    let s = Scratch::new();
    let blob = s.object("blob", b"content\n");
    let root = s.tree(&[("100644", "top", &blob)]);
    let lost = "2".repeat(40);
    let orphan = s.commit(&root, &[&lost], "");
    missing(s.check(&[&blob, &root, &orphan]), &lost);
    let holey = s.tree(&[("100644", "top", &blob), ("100644", "gone", &lost)]);
    missing(s.check(&[&blob, &holey]), &lost);
    let tag = s.object(
        "tag",
        format!(
            "object {lost}\ntype commit\ntag v1\ntagger A <a@example.com> 1700000000 +0000\n\nv1\n"
        )
        .as_bytes(),
    );
    missing(s.check(&[&tag]), &lost);
}

#[test]
fn objects_of_the_wrong_kind_and_headers_the_walk_reads_are_refused() {
    let s = Scratch::new();
    let blob = s.object("blob", b"content\n");
    let root = s.tree(&[("100644", "top", &blob)]);
    // A commit whose tree is a blob: the walk would fail on it later.
    let liar = s.commit(&blob, &[], "");
    match s.check(&[&blob, &liar]) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("blob"), "{reason}"),
        other => panic!("expected a kind mismatch, got {other:?}"),
    }
    // A `parent` header after the committer is no parent to git, nor to the walk: the check
    // does not look for it (a pushed commit with one, which `fsck` lets through, would
    // otherwise stop every refresh).
    let lost = "3".repeat(40);
    let sneaky = s.commit(&root, &[], &format!("parent {lost}\n"));
    s.check(&[&blob, &root, &sneaky]).unwrap();
    // An object the walk cannot parse.
    let garbage = s.object("commit", b"not a commit at all\n");
    assert!(matches!(s.check(&[&garbage]), Err(Error::Corrupt { .. })));
}

/// Unless the pack must be whole by itself (a first fetch), objects the repository has
/// already count.
#[test]
fn objects_already_in_the_repository_count_unless_the_pack_must_stand_alone() {
    let s = Scratch::new();
    let blob = s.object("blob", b"content\n");
    let root = s.tree(&[("100644", "top", &blob)]);
    let first = s.commit(&root, &[], "");
    s.pack(&[&blob, &root, &first]);
    let second = s.commit(&root, &[&first], "");
    let (pack, index) = s.pack(&[&second]);
    let repo = Repository::open(&s.git_dir).unwrap();
    repo.check_pack_closed(&pack, &index, false).unwrap();
    missing(repo.check_pack_closed(&pack, &index, true), &root);
    assert!(Path::new(&pack).is_file());
}

/// Each reference is checked against the kind it names, wherever the object is and however
/// often it is referred to: the check looks an object up once, not its kind once.
#[test]
fn every_kind_an_object_is_referred_to_as_is_checked() {
    let s = Scratch::new();
    let blob = s.object("blob", b"content\n");
    let root = s.tree(&[("100644", "top", &blob)]);
    let first = s.commit(&root, &[], "");
    // `root` is this commit's tree and the other's parent.
    let confused = s.commit(&root, &[&root], "");
    match s.check(&[&blob, &root, &first, &confused]) {
        Err(Error::Corrupt { oid, reason }) => {
            assert_eq!(oid.to_string(), root);
            assert!(
                reason.contains("tree") && reason.contains("commit"),
                "{reason}"
            );
        }
        other => panic!("expected a kind mismatch, got {other:?}"),
    }
    // The same with the object in the repository's other pack, referred to from the new one
    // once rightly and then wrongly.
    s.pack(&[&blob, &root, &first]);
    let right = s.commit(&root, &[&first], "");
    let wrong = s.tree(&[("40000", "dir", &root), ("40000", "file", &blob)]);
    let (pack, index) = s.pack(&[&right, &wrong]);
    let repo = Repository::open(&s.git_dir).unwrap();
    match repo.check_pack_closed(&pack, &index, false) {
        Err(Error::Corrupt { oid, reason }) => {
            assert_eq!(oid.to_string(), blob);
            assert!(reason.contains("a blob where a tree"), "{reason}");
        }
        other => panic!("expected a kind mismatch, got {other:?}"),
    }
    // Named as a blob, a tree is not looked at further (nothing reads a blob's content).
    let lenient = s.tree(&[("100644", "file", &root)]);
    let (pack, index) = s.pack(&[&lenient]);
    repo.check_pack_closed(&pack, &index, false).unwrap();
}

#[test]
fn the_newest_commits_are_picked_and_other_objects_passed_over() {
    let s = Scratch::new();
    let blob = s.object("blob", b"content\n");
    let root = s.tree(&[("100644", "top", &blob)]);
    let at = |time: u64, message: &str| {
        let text = format!(
            "tree {root}\nauthor A <a@example.com> {time} +0000\n\
             committer A <a@example.com> {time} +0000\n\n{message}\n"
        );
        s.object("commit", text.as_bytes())
    };
    let (old, newest, middle, tied) = (at(100, "a"), at(300, "b"), at(200, "c"), at(200, "d"));
    // The newest of all, but too large to be read to be compared.
    let huge = at(400, &"x".repeat(64 << 10));
    let tag = s.object(
        "tag",
        format!("object {newest}\ntype commit\ntag v1\ntagger A <a@example.com> 500 +0000\n\nv1\n")
            .as_bytes(),
    );
    let oid = |hex: &str| gitcache_protocol::ObjectId::from_hex(hex.as_bytes()).unwrap();
    let ids: Vec<_> = [
        &blob,
        &root,
        &tag,
        &old,
        &middle,
        &huge,
        &newest,
        &tied,
        &old,
        &"5".repeat(40),
    ]
    .into_iter()
    .map(|hex| oid(hex))
    .collect();
    // Read from a pack, as a mirror holds them.
    s.pack(&[&blob, &root, &old, &newest, &middle, &tied, &huge, &tag]);
    let repo = Repository::open(&s.git_dir).unwrap();
    let picked = |n| -> Vec<String> {
        repo.newest_commits(&ids, n)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    // Ties in the order given; each commit once.
    assert_eq!(picked(10), [&*newest, &*middle, &*tied, &*old]);
    assert_eq!(picked(2), [&*newest, &*middle]);
    assert!(picked(0).is_empty());
    // Repeats count once against the ids looked at.
    let mut repeated = vec![oid(&old); gitcache_pack::NEWEST_OF_AT_MOST];
    repeated.push(oid(&newest));
    let picked: Vec<String> = repo
        .newest_commits(&repeated, 2)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(picked, [newest, old]);
}
