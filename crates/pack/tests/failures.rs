//! Failures: a corrupt repository gives a typed error, and a client that goes away stops the
//! writer at once.

use std::io::{self, Write};
use std::path::Path;

use gitcache_pack::{Error, Options, Plan, Repository, plan};
use gitcache_protocol::request::Fetch;
use gitcache_protocol::{ObjectFormat, ObjectId};
use gitcache_testkit::git::git_with_input;
use gitcache_testkit::repo::{self, RepoSpec};

fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> String {
    let out = git_with_input(dir, args, input.unwrap_or_default());
    String::from_utf8(out).unwrap().trim().to_owned()
}

fn fetch(want: ObjectId) -> Fetch {
    Fetch {
        wants: vec![want],
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    }
}

#[test]
fn a_commit_whose_tree_is_missing_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::tiny(51)).unwrap();
    // The empty tree's id: never written to this repository.
    let missing_tree = ObjectId::from_hex(b"4b825dc642cb6eb9a060e54bf8d69288fbee4904").unwrap();
    let parent = git(&path, &["rev-parse", "main"], None);
    let body = format!(
        "tree {missing_tree}\nparent {parent}\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nbroken\n"
    );
    let broken = git(
        &path,
        &[
            "hash-object",
            "-t",
            "commit",
            "-w",
            "--literally",
            "--stdin",
        ],
        Some(body.as_bytes()),
    );
    let repo = Repository::open(&path).unwrap();
    let want = ObjectId::from_hex(broken.as_bytes()).unwrap();
    let err = plan(&repo, &fetch(want), ObjectFormat::Sha1, &Options::default()).unwrap_err();
    assert!(
        matches!(err, Error::MissingObject { oid } if oid == missing_tree),
        "{err:?}"
    );
    assert!(!err.is_client_error());
}

#[test]
fn a_truncated_pack_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::small(52)).unwrap();
    git(&path, &["repack", "-a", "-d", "-q"], None);
    let main = ObjectId::from_hex(git(&path, &["rev-parse", "main"], None).as_bytes()).unwrap();
    let pack = std::fs::read_dir(path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    let len = std::fs::metadata(&pack).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let repo = Repository::open(&path).unwrap();
    // Planning or writing fails with an error; nothing panics.
    let outcome = plan(&repo, &fetch(main), ObjectFormat::Sha1, &Options::default())
        .and_then(|plan| plan.write_to(io::sink()).map(drop));
    assert!(outcome.is_err());
}

/// A writer that accepts `budget` bytes, then fails as a closed connection does.
struct GoesAway {
    budget: usize,
    calls_after: usize,
}

impl Write for GoesAway {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            self.calls_after += 1;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "client went away",
            ));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_writer_stops_when_the_client_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::small(53)).unwrap();
    let main = ObjectId::from_hex(git(&path, &["rev-parse", "main"], None).as_bytes()).unwrap();
    let repo = Repository::open(&path).unwrap();
    let Plan::Pack(p) = plan(&repo, &fetch(main), ObjectFormat::Sha1, &Options::default()).unwrap()
    else {
        panic!()
    };
    let mut sink = GoesAway {
        budget: 100_000,
        calls_after: 0,
    };
    let err = Plan::Pack(p).write_to(&mut sink).unwrap_err();
    assert!(
        matches!(err, Error::Io(ref e) if e.kind() == io::ErrorKind::BrokenPipe),
        "{err:?}"
    );
    assert_eq!(
        sink.calls_after, 1,
        "no write is tried after the first failure"
    );
}

/// A client gone while its many `shallow` lines are read stops the plan there: each line is
/// a checkpoint, as each object read is.
#[test]
fn a_plan_reading_many_shallow_lines_stops_once_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.git");
    repo::generate(&path, &RepoSpec::tiny(52)).unwrap();
    let repo = Repository::open(&path).unwrap();
    let main = ObjectId::from_hex(git(&path, &["rev-parse", "main"], None).as_bytes()).unwrap();
    let parent = ObjectId::from_hex(git(&path, &["rev-parse", "main~1"], None).as_bytes()).unwrap();
    let mut f = fetch(main);
    f.deepen = Some(1);
    f.shallows = vec![parent; 4096];
    let go_on = plan(&repo, &f, ObjectFormat::Sha1, &Options::default());
    assert!(matches!(go_on, Ok(Plan::Pack(_))), "{go_on:?}");
    let cancelled = Options {
        cancel: gitcache_pack::Cancel::when(|| true),
        ..Options::default()
    };
    let stopped = plan(&repo, &f, ObjectFormat::Sha1, &cancelled);
    assert!(matches!(stopped, Err(Error::Cancelled)), "{stopped:?}");
}
