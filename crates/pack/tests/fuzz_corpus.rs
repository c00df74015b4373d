//! Replays the plan-and-write fuzz corpus and saved crashes through the fuzz target's entry
//! point, against the same fixed repository; every pack written must also pass
//! `git index-pack` in a copy of that repository (which holds any thin-pack bases).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bstr::BString;
use gitcache_pack::Repository;
use gitcache_pack::fuzzing::{fetch_from_bytes, options_from_bytes, plan_and_write_with};
use gitcache_protocol::ObjectId;
use gitcache_testkit::repo::{self, RepoSpec};

#[test]
fn plan_write_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.git");
    repo::generate(&path, &RepoSpec::small(7)).unwrap();
    let objects: Vec<ObjectId> = repo::list_objects(&path)
        .unwrap()
        .iter()
        .map(|h| ObjectId::from_hex(h.as_bytes()).unwrap())
        .collect();
    let refs: Vec<BString> = repo::list_refs(&path)
        .unwrap()
        .into_iter()
        .map(BString::from)
        .collect();
    let repo = Repository::open(&path).unwrap();
    // A copy with gitcache's bitmaps: each input is planned against it too, its pack checked
    // by `plan_and_write_with` alone.
    let bitmapped = dir.path().join("bitmapped.git");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&path)
            .arg(&bitmapped)
            .status()
            .unwrap()
            .success()
    );
    let bitmapped = gitcache_pack::fuzzing::bitmapped_fixture(&bitmapped);

    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let (mut replayed, mut packs) = (0, 0);
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join("plan_write")) else {
            continue;
        };
        for entry in entries {
            let file = entry.unwrap().path();
            if file.file_name().is_some_and(|n| n == ".gitkeep") {
                continue;
            }
            let data = std::fs::read(&file).unwrap();
            let fetch = fetch_from_bytes(&objects, &refs, &data);
            replayed += 1;
            let options = options_from_bytes(&data);
            let _ = plan_and_write_with(&bitmapped, &fetch, &options);
            let Ok(Some(pack)) = plan_and_write_with(&repo, &fetch, &options) else {
                continue;
            };
            packs += 1;
            let copy = dir.path().join(format!("check-{packs}.git"));
            assert!(
                Command::new("cp")
                    .arg("-a")
                    .arg(&path)
                    .arg(&copy)
                    .status()
                    .unwrap()
                    .success()
            );
            let mut child = Command::new("git")
                .arg("-C")
                .arg(&copy)
                .args(["index-pack", "--fix-thin", "--stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&pack).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }
    assert!(
        replayed >= 10 && packs >= 5,
        "replayed {replayed}, packs {packs}"
    );
}

#[test]
fn bitmap_load_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.git");
    repo::generate(&path, &RepoSpec::small(7)).unwrap();
    gitcache_testkit::git::git_stdout(&path, &["repack", "-adq"]);
    let repo = Repository::open(&path).unwrap();
    let n = gitcache_testkit::fuzz::replay("bitmap_load", |data| {
        gitcache_pack::fuzzing::bitmap_load(&repo, data)
    });
    assert!(n >= 3, "only {n} inputs replayed");
}

#[test]
fn delta_corpus() {
    let n = gitcache_testkit::fuzz::replay("delta", gitcache_pack::fuzzing::delta);
    assert!(n >= 5, "only {n} inputs replayed");
}

#[test]
fn commit_graph_corpus() {
    let n = gitcache_testkit::fuzz::replay("commit_graph", gitcache_pack::fuzzing::commit_graph);
    assert!(n >= 4, "only {n} inputs replayed");
}

#[test]
fn pack_entries_corpus() {
    let n = gitcache_testkit::fuzz::replay("pack_entries", gitcache_pack::fuzzing::incoming);
    assert!(n >= 20, "only {n} inputs replayed");
}
