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

/// The scale layout: new files go down to `depth` levels (the trees are deep), the top of
/// `src/` grows wide, large files have the size asked for, the same seed gives the same
/// history, and the sizes the scale specs promise grow with the megabytes asked for.
#[test]
fn deep_layouts_make_deep_and_wide_trees() {
    let client = GitClient::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = RepoSpec {
        commits: 400,
        files: 300,
        large_every: 70,
        large_bytes: 2 << 20,
        depth: 6,
        ..RepoSpec::small(5)
    };
    let a = repo::generate(&dir.path().join("a.git"), &spec).unwrap();
    let b = repo::generate(&dir.path().join("b.git"), &spec).unwrap();
    assert_eq!(refs(&client, &a.path), refs(&client, &b.path));
    client.fsck(&a.path).unwrap().expect_success();
    let out = |args: &[&str]| client.run(&a.path, args).unwrap().expect_success().stdout;
    let files = out(&["ls-tree", "-r", "--name-only", "main"]);
    let deepest = files.lines().map(|f| f.matches('/').count()).max().unwrap();
    assert!(deepest >= 6, "deepest file {deepest} directories down");
    let top = out(&["ls-tree", "--name-only", "main", "src/"]);
    assert!(
        top.lines().count() >= 200,
        "src/ holds {}",
        top.lines().count()
    );
    let sizes = out(&[
        "cat-file",
        "--batch-all-objects",
        "--batch-check=%(objecttype) %(objectsize)",
    ]);
    assert!(sizes.lines().any(|l| {
        l.strip_prefix("blob ")
            .is_some_and(|n| n.parse::<u64>().unwrap() >= 2 << 20)
    }));
    let (small, large) = (RepoSpec::scale(1, 50), RepoSpec::scale(1, 1000));
    assert!(small.commits < large.commits && large.commits <= 500_000);
    assert!(small.depth > 0 && small.large_bytes > 1 << 20);
}
