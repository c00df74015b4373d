#![no_main]
//! Plans and writes a fetch built from the input against a fixed generated repository.

use std::sync::OnceLock;

use bstr::BString;
use gitcache_pack::Repository;
use gitcache_pack::fuzzing::{fetch_from_bytes, options_from_bytes, plan_and_write_with};
use gitcache_protocol::ObjectId;
use gitcache_testkit::repo::{self, RepoSpec};

struct Fixture {
    _dir: tempfile_free::Dir,
    repo: Repository,
    /// A copy of it with gitcache's bitmaps (answers from bitmaps: runs copied, pairs made).
    bitmapped: Repository,
    objects: Vec<ObjectId>,
    refs: Vec<BString>,
}

/// The fixture's folder, removed when the process ends normally.
mod tempfile_free {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gitcache-fuzz-{}", std::process::id()));
        let path = dir.join("fixture.git");
        repo::generate(&path, &RepoSpec::small(7)).expect("fixture repository");
        let objects = repo::list_objects(&path).unwrap().iter().map(|h| ObjectId::from_hex(h.as_bytes()).unwrap()).collect();
        let refs = repo::list_refs(&path).unwrap().into_iter().map(BString::from).collect();
        let copy = dir.join("bitmapped.git");
        assert!(std::process::Command::new("cp").arg("-a").arg(&path).arg(&copy).status().unwrap().success());
        let bitmapped = gitcache_pack::fuzzing::bitmapped_fixture(&copy);
        Fixture { repo: Repository::open(&path).unwrap(), bitmapped, _dir: tempfile_free::Dir(dir), objects, refs }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let fetch = fetch_from_bytes(&f.objects, &f.refs, data);
    let options = options_from_bytes(data);
    let _ = plan_and_write_with(&f.repo, &fetch, &options);
    let _ = plan_and_write_with(&f.bitmapped, &fetch, &options);
});
