//! Which upstream a request goes to, whether its repository is cached, and which credential
//! goes upstream.

mod common;

use common::{Gitcache, basic, fsck};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, RequestKind, Upstream};

#[test]
fn hosts_in_the_path_and_the_cache_list() {
    let default = Upstream::start().unwrap();
    let other = Upstream::start().unwrap();
    for (upstream, name, seed) in [
        (&default, "acme/cached", 601),
        (&default, "acme/uncached", 602),
        (&other, "team/tool", 603),
    ] {
        repo::generate(&upstream.repo_path(name), &RepoSpec::tiny(seed)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
    }
    let host = format!("--upstream-host=forge.local={}", other.url());
    let cache = Gitcache::start(
        &default,
        &[
            &host,
            "--cache-repo",
            "acme/cached",
            "--cache-repo",
            "forge.local/team/tool",
        ],
    );
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    git.run(&home, &["clone", "-q", &cache.url("acme/cached"), "a"])
        .unwrap()
        .expect_success();
    assert!(cache.mirror(&default, "acme/cached").join("HEAD").is_file());

    // Not on the list: passed through, no mirror.
    default.reset_counts();
    git.run(&home, &["clone", "-q", &cache.url("acme/uncached"), "b"])
        .unwrap()
        .expect_success();
    fsck(&home.join("b"));
    assert!(!cache.mirror(&default, "acme/uncached").exists());
    assert_eq!(
        default.counts().fetch,
        1,
        "the client's own fetch went upstream"
    );

    // Another upstream named in the path.
    git.run(
        &home,
        &["clone", "-q", &cache.url("forge.local/team/tool"), "c"],
    )
    .unwrap()
    .expect_success();
    fsck(&home.join("c"));
    assert!(
        cache
            .data
            .path()
            .join("mirrors/forge.local/team/tool.git/HEAD")
            .is_file()
    );
    assert!(other.counts().fetch >= 1);

    // The default upstream's own host in the path (smart-git-proxy's URL form) is the
    // default upstream: the same mirror, a hit, and the cache list applies as without it.
    default.reset_counts();
    let spelled = format!("{}/acme/cached", default.addr());
    git.run(&home, &["clone", "-q", &cache.url(&spelled), "e"])
        .unwrap()
        .expect_success();
    fsck(&home.join("e"));
    assert_eq!(default.counts().fetch, 0, "a hit on the same mirror");

    // A repository whose name starts with a dot (GitHub's `org/.github`).
    repo::generate(&default.repo_path("org/.github"), &RepoSpec::tiny(604)).unwrap();
    default.adopt_repo("org/.github", Access::Public).unwrap();
    git.run(&home, &["clone", "-q", &cache.url("org/.github"), "f"])
        .unwrap()
        .expect_success();
    fsck(&home.join("f"));

    // A host not on the allow-list is not proxied.
    let out = git
        .run(
            &home,
            &["clone", "-q", &cache.url("evil.example/team/tool"), "d"],
        )
        .unwrap()
        .expect_failure();
    assert!(
        out.stderr.contains("404") || out.stderr.contains("not found"),
        "{out}"
    );
}

#[test]
fn static_credentials_replace_the_clients_and_none_sends_nothing() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/private"), &RepoSpec::tiny(604)).unwrap();
    upstream
        .adopt_repo("acme/private", Access::private(["service"]))
        .unwrap();
    let token = format!("--static-token={}=service", upstream.addr());
    let cache = Gitcache::start(&upstream, &["--credential-mode", "static", &token]);
    let git = GitClient::new().unwrap();
    upstream.set_recording(true);

    // The client's own (wrong) credential never reaches the upstream: gitcache's does.
    let url = cache
        .url("acme/private")
        .replace("http://", "http://x-access-token:client-secret@");
    let header = format!("http.extraheader=Authorization: {}", basic("client-secret"));
    git.run(git.home(), &["-c", &header, "clone", "-q", &url, "a"])
        .unwrap()
        .expect_success();
    fsck(&git.home().join("a"));
    let requests = upstream.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let auth = r
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        assert_eq!(auth, Some(basic("service")), "{} {}", r.method, r.path);
    }
    drop(cache);

    // No credential at all: the private repository stays closed.
    let cache = Gitcache::start(&upstream, &["--credential-mode", "none"]);
    let url = cache
        .url("acme/private")
        .replace("http://", "http://x-access-token:service@");
    let out = git
        .run(git.home(), &["clone", "-q", &url, "b"])
        .unwrap()
        .expect_failure();
    assert!(
        out.stderr.contains("401") || out.stderr.contains("Authentication"),
        "{out}"
    );
    assert!(
        upstream
            .requests()
            .iter()
            .skip(requests.len())
            .filter(|r| r.kind != RequestKind::Other)
            .all(|r| r.headers.iter().all(|(k, _)| k != "authorization"))
    );
}

/// The service token is the default upstream's: a refresh gitcache starts on its own for a
/// repository of another upstream (here warming, after a client's listing showed it moved)
/// asks with the credential of the client that noticed, never with that token.
#[test]
fn the_service_token_goes_to_the_default_upstream_only() {
    let default = Upstream::start().unwrap();
    let other = Upstream::start().unwrap();
    let source = other.repo_path("team/tool");
    repo::generate(&source, &RepoSpec::tiny(604)).unwrap();
    other.adopt_repo("team/tool", Access::Public).unwrap();
    let host = format!("--upstream-host=forge.local={}", other.url());
    let cache = Gitcache::start(&default, &[&host, "--service-token", "warmer"]);
    let git = GitClient::new().unwrap();
    let url = cache.url("forge.local/team/tool");
    git.run(git.home(), &["clone", "-q", &url, "c"])
        .unwrap()
        .expect_success();
    let mirror = cache.data.path().join("mirrors/forge.local/team/tool.git");
    common::wait_for_mirror(&mirror, &source);
    let tip = repo::append_commits(&source, "main", 2, 605).unwrap();
    other.reset_counts();
    git.run(git.home(), &["ls-remote", &url])
        .unwrap()
        .expect_success();
    common::wait_for("the mirror to be warmed", || {
        gitcache_testkit::git::git_stdout(&mirror, &["rev-parse", "main"]).trim() == tip
    });
    let requests = other.requests();
    assert!(
        requests.iter().any(|r| r.kind == RequestKind::Fetch),
        "warmed by a fetch"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.headers.iter().all(|(k, _)| k != "authorization")),
        "no credential went to the other upstream: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.headers.iter().any(|(_, v)| *v == basic("warmer"))),
        "the service token stayed home"
    );
}
