//! The generators make the histories they promise, and the same ones every time.

use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};

fn refs(client: &GitClient, repo: &std::path::Path) -> String {
    client
        .run(
            repo,
            &[
                "for-each-ref",
                "--format=%(objectname) %(objecttype) %(refname)",
            ],
        )
        .unwrap()
        .expect_success()
        .stdout
}

#[test]
fn same_seed_same_objects_other_seed_other_objects() {
    let client = GitClient::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = repo::generate(&dir.path().join("a.git"), &RepoSpec::small(11)).unwrap();
    let b = repo::generate(&dir.path().join("b.git"), &RepoSpec::small(11)).unwrap();
    let c = repo::generate(&dir.path().join("c.git"), &RepoSpec::small(12)).unwrap();
    assert_eq!(refs(&client, &a.path), refs(&client, &b.path));
    assert_ne!(refs(&client, &a.path), refs(&client, &c.path));
}

#[test]
fn small_history_has_merges_tags_renames_deletions_and_large_files() {
    let client = GitClient::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = RepoSpec::small(3);
    let made = repo::generate(&dir.path().join("r.git"), &spec).unwrap();
    let path = &made.path;
    client.fsck(path).unwrap().expect_success();
    let count = |args: &[&str]| {
        client
            .run(path, args)
            .unwrap()
            .expect_success()
            .stdout
            .trim()
            .to_owned()
    };
    assert_eq!(
        count(&["rev-list", "--all", "--count"]),
        spec.commits.to_string()
    );
    assert!(
        count(&["rev-list", "--merges", "--count", "main"])
            .parse::<usize>()
            .unwrap()
            > 0
    );
    assert_eq!(made.branches.len(), 1 + spec.branches);
    let all_refs = refs(&client, path);
    assert!(all_refs.contains(" tag refs/tags/v1.0"), "{all_refs}");
    assert!(all_refs.contains(" commit refs/tags/light-"), "{all_refs}");
    assert!(
        all_refs.contains(" tag refs/tags/v3.0-signed"),
        "{all_refs}"
    );
    // The nested tag points at a tag object.
    assert_eq!(count(&["cat-file", "-t", "v3.0-signed^{}"]), "commit");
    let inner = count(&["cat-file", "-p", "v3.0-signed"]);
    assert!(inner.contains("type tag"), "{inner}");
    let log = count(&["log", "--all", "-M", "--name-status", "--format="]);
    assert!(log.lines().any(|l| l.starts_with('R')), "no rename");
    assert!(log.lines().any(|l| l.starts_with('D')), "no deletion");
    let sizes = count(&[
        "cat-file",
        "--batch-all-objects",
        "--batch-check=%(objecttype) %(objectsize)",
    ]);
    assert!(
        sizes
            .lines()
            .any(|l| l.starts_with("blob ") && l[5..].parse::<u64>().unwrap() > 1 << 20)
    );
}

#[test]
fn sha256_generation_and_appending() {
    let client = GitClient::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let made = repo::generate(&dir.path().join("r.git"), &RepoSpec::tiny(9).sha256()).unwrap();
    let before = client.rev_parse(&made.path, "main").unwrap();
    assert_eq!(before.len(), 64);
    let after = repo::append_commits(&made.path, "main", 4, 2).unwrap();
    let range = format!("{before}..{after}");
    let n = client
        .run(&made.path, &["rev-list", "--count", &range])
        .unwrap()
        .expect_success()
        .stdout;
    assert_eq!(n.trim(), "4");
    client.fsck(&made.path).unwrap().expect_success();
}
