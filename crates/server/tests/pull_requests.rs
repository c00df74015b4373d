//! Commits no mirrored ref reaches, fetched by id as `actions/checkout` fetches a pull
//! request's merge commit: the first job's fetch brings the commit into the mirror (by id,
//! as the client asked) and keeps it under `refs/gitcache/kept/`; the next job with the
//! same commit is a hit, also after consolidation.

mod common;

use std::time::{Duration, Instant};

use common::{Gitcache, fsck};
use gitcache_testkit::git::{CHECKOUT_FETCH, GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

/// A merge of `main` and a pull request's branch, under `refs/pull/1/merge` only (as GitHub
/// keeps it): no branch or tag reaches it.
fn pull_request_merge(source: &std::path::Path) -> String {
    let main = git_stdout(source, &["rev-parse", "refs/heads/main"])
        .trim()
        .to_owned();
    let head = repo::append_commits(source, "main", 2, 1351).unwrap();
    // The pull request's head is a branch that goes away again; main goes back.
    git_stdout(source, &["update-ref", "refs/pull/1/head", &head]);
    git_stdout(source, &["update-ref", "refs/heads/main", &main]);
    let tree = git_stdout(source, &["rev-parse", &format!("{head}^{{tree}}")])
        .trim()
        .to_owned();
    let merge = git_stdout(
        source,
        &[
            "commit-tree",
            &tree,
            "-p",
            &main,
            "-p",
            &head,
            "-m",
            "Merge pull request #1",
        ],
    )
    .trim()
    .to_owned();
    git_stdout(source, &["update-ref", "refs/pull/1/merge", &merge]);
    merge
}

/// What `actions/checkout` runs for a pull request build: a new repository, the remote, and
/// one shallow fetch of the merge commit by id.
fn checkout(git: &GitClient, url: &str, dir: &str, merge: &str) -> std::path::PathBuf {
    let work = git.home().join(dir);
    std::fs::create_dir_all(&work).unwrap();
    git.run(&work, &["init", "-q"]).unwrap().expect_success();
    git.run(&work, &["remote", "add", "origin", url])
        .unwrap()
        .expect_success();
    let refspec = format!("+{merge}:refs/remotes/pull/1/merge");
    let mut fetch = CHECKOUT_FETCH.to_vec();
    fetch.push(&refspec);
    git.run(&work, &fetch).unwrap().expect_success();
    git.run(
        &work,
        &[
            "checkout",
            "-q",
            "--force",
            "-B",
            "pr",
            "refs/remotes/pull/1/merge",
        ],
    )
    .unwrap()
    .expect_success();
    work
}

#[test]
fn a_pull_requests_merge_commit_is_kept_and_the_next_job_is_a_hit() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/app");
    repo::generate(&source, &RepoSpec::small(1350)).unwrap();
    upstream.adopt_repo("acme/app", Access::Public).unwrap();
    let merge = pull_request_merge(&source);
    let cache = Gitcache::start(&upstream, &["--consolidate-after", "1"]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/app");

    let first = checkout(&git, &url, "job-1", &merge);
    assert_eq!(git_stdout(&first, &["rev-parse", "HEAD"]).trim(), merge);
    fsck(&first);
    let fetches = upstream.counts().fetch;
    let mirror = cache.mirror(&upstream, "acme/app");
    let kept = git_stdout(
        &mirror,
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/gitcache/kept/",
        ],
    );
    assert!(
        kept.trim().ends_with(&format!("/{merge} {merge}")),
        "kept under its id: {kept}"
    );
    assert!(
        !git_stdout(&mirror, &["for-each-ref", "refs/pull/"]).contains("refs/pull"),
        "no pull request ref is mirrored"
    );

    // Maintenance leaves the branches' and tags' pack marked with exactly their tips (with
    // its bitmaps), the kept commit in a pack beside it: a clone is still the whole
    // consolidated pack sent as it is.
    let deadline = Instant::now() + Duration::from_secs(30);
    let marked = loop {
        let names: Vec<String> = std::fs::read_dir(mirror.join("objects/pack"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let marked = names
            .iter()
            .find_map(|n| n.strip_suffix(".tips"))
            .filter(|stem| names.contains(&format!("{stem}.bitmap")));
        if let Some(stem) = marked {
            break stem.to_owned();
        }
        assert!(Instant::now() < deadline, "never consolidated: {names:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The proxy had the mirror open: it opens it again as maintenance ends, before a fetch
    // asks.
    cache.log_with("maintained mirror opened again and prepared", 1);
    let tips = std::fs::read_to_string(mirror.join(format!("objects/pack/{marked}.tips"))).unwrap();
    assert!(
        !tips.contains(&merge),
        "the kept commit is no tip of the consolidated pack"
    );
    git_stdout(&mirror, &["cat-file", "-e", &format!("{merge}^{{commit}}")]);
    git.run(git.home(), &["clone", "-q", "--bare", &url, "full"])
        .unwrap()
        .expect_success();
    cache.log_with("whole_pack=true", 1);

    // The next job with the same merge commit: a hit, nothing fetched upstream.
    let second = checkout(&git, &url, "job-2", &merge);
    assert_eq!(git_stdout(&second, &["rev-parse", "HEAD"]).trim(), merge);
    fsck(&second);
    assert_eq!(upstream.counts().fetch, fetches, "the second job was a hit");
    let hits = cache.log();
    assert!(
        hits.contains("result=\"hit\"") || hits.contains("result=hit"),
        "{hits}"
    );
}

/// An id the upstream does not give out is not kept: the fetch is passed through, and the
/// upstream's own refusal reaches the client.
#[test]
fn an_id_the_upstream_refuses_is_passed_through() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/app");
    repo::generate(&source, &RepoSpec::tiny(1352)).unwrap();
    upstream.adopt_repo("acme/app", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", "--bare", &cache.url("acme/app"), "warm"],
    )
    .unwrap()
    .expect_success();
    let work = git.home().join("job");
    std::fs::create_dir_all(&work).unwrap();
    git.run(&work, &["init", "-q"]).unwrap().expect_success();
    let nowhere = "1234567890123456789012345678901234567890";
    let attempt = || {
        let before = upstream.counts().fetch;
        let out = git
            .run(
                &work,
                &[
                    "fetch",
                    "--depth=1",
                    &cache.url("acme/app"),
                    &format!("+{nowhere}:refs/x"),
                ],
            )
            .unwrap();
        assert!(!out.success(), "{out}");
        upstream.counts().fetch - before
    };
    assert_eq!(attempt(), 2, "asked by id, then passed through");
    assert_eq!(attempt(), 1, "remembered as refused: passed through only");
    let mirror = cache.mirror(&upstream, "acme/app");
    assert_eq!(
        git_stdout(&mirror, &["for-each-ref", "refs/gitcache/"]),
        "",
        "nothing kept"
    );
    cache.log_with("commits asked for by id not kept", 1);
}
