#![no_main]
//! Reads the input as the bitmap file of a fixed generated repository's one pack.

use std::sync::OnceLock;

use gitcache_pack::Repository;
use gitcache_testkit::repo::{self, RepoSpec};

struct Fixture {
    _dir: Dir,
    repo: Repository,
}

/// The fixture's folder, removed when the process ends normally.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gitcache-fuzz-bitmap-{}", std::process::id()));
        let path = dir.join("fixture.git");
        repo::generate(&path, &RepoSpec::small(7)).expect("fixture repository");
        gitcache_testkit::git::git_stdout(&path, &["repack", "-adq"]);
        Fixture { repo: Repository::open(&path).unwrap(), _dir: Dir(dir) }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcache_pack::fuzzing::bitmap_load(&fixture().repo, data));
