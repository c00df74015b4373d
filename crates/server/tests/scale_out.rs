//! Two gitcache processes, each with its own data directory, sharing mirrors through one
//! bucket of a real S3-compatible server (moto): what one fetched from the upstream, the
//! other serves without fetching. Needs `GITCACHE_TEST_MOTO` (see `.ci/moto`).

mod common;

use common::{Gitcache, fsck};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::s3::S3Server;
use gitcache_testkit::upstream::{Access, Upstream};

fn instance(upstream: &Upstream, server: &S3Server) -> Gitcache {
    let endpoint = server.endpoint();
    Gitcache::start(
        upstream,
        &[
            "--s3-bucket",
            server.bucket(),
            "--s3-endpoint",
            &endpoint,
            "--s3-prefix",
            "fleet-a",
            "--aws-access-key-id",
            "test",
            "--aws-secret-access-key",
            "test",
        ],
    )
}

fn tip(repo: &std::path::Path) -> String {
    git_stdout(repo, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn a_clone_through_one_instance_is_a_hit_on_the_other() {
    let Some(server) = S3Server::start("gitcache-fleet") else {
        return;
    };
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/fleet");
    repo::generate(&source, &RepoSpec::small(1310)).unwrap();
    upstream.adopt_repo("acme/fleet", Access::Public).unwrap();
    let a = instance(&upstream, &server);
    let b = instance(&upstream, &server);
    let git = GitClient::new().unwrap();

    git.run(git.home(), &["clone", "-q", &a.url("acme/fleet"), "via-a"])
        .unwrap()
        .expect_success();
    assert_eq!(upstream.counts().fetch, 1, "A's miss fetched once");
    git.run(git.home(), &["clone", "-q", &b.url("acme/fleet"), "via-b"])
        .unwrap()
        .expect_success();
    assert_eq!(upstream.counts().fetch, 1, "B served it from the bucket");
    let (via_a, via_b) = (git.home().join("via-a"), git.home().join("via-b"));
    fsck(&via_b);
    assert_eq!(tip(&via_a), tip(&via_b));
    assert_eq!(
        git_stdout(&b.mirror(&upstream, "acme/fleet"), &["show-ref"]),
        git_stdout(&a.mirror(&upstream, "acme/fleet"), &["show-ref"]),
    );

    // The upstream moves; a fetch through A takes the new commits; B then serves them
    // without asking the upstream for objects.
    let new_tip = repo::append_commits(&source, "main", 3, 1310).unwrap();
    git.run(&via_a, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&via_a), new_tip);
    assert_eq!(upstream.counts().fetch, 2);
    git.run(&via_b, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&via_b), new_tip);
    assert_eq!(
        upstream.counts().fetch,
        2,
        "B took the new commits from the bucket"
    );
    fsck(&via_b);
}
