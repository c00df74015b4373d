//! GitHub App credentials for gitcache's own refreshes: with `--github-app-id` and
//! `--github-app-key`, a push webhook's refresh of a private repository uses an installation
//! token minted through the (fake) GitHub API, kept while it is fresh, minted again once it
//! nears its expiry; the installation is looked up once.

mod common;

use std::time::Duration;

use common::{Gitcache, basic, http, wait_for};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::github::{APP_KEY, FakeGitHub};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, RequestKind, Upstream};

/// The credentials the upstream's fetches came with since `from` (of all its requests).
fn fetch_credentials(upstream: &Upstream, from: usize) -> Vec<String> {
    upstream.requests()[from..]
        .iter()
        .filter(|r| r.kind == RequestKind::Fetch)
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(name, _)| name == "authorization")
                .map(|(_, value)| value.clone())
        })
        .collect()
}

/// gitcache on `upstream` as the App 4242 (its key in the folder returned, kept while it
/// is), the GitHub API at `api`, push webhooks signed with `s3cret`.
fn as_the_app(upstream: &Upstream, api: &str, more: &[&str]) -> (Gitcache, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("app.pem");
    std::fs::write(&key, APP_KEY).unwrap();
    let key = key.to_string_lossy();
    let mut flags = vec![
        "--github-app-id",
        "4242",
        "--github-app-key",
        &key,
        "--github-api-url",
        api,
        "--webhook-secret",
        "s3cret",
    ];
    flags.extend_from_slice(more);
    let cache = Gitcache::start(upstream, &flags);
    (cache, keys)
}

/// A push event moving `acme/app`'s `branch` to `after`, signed, and the answer to it.
fn push_event(cache: &Gitcache, upstream: &Upstream, branch: &str, after: &str) -> common::Answer {
    let body = format!(
        r#"{{"ref":"refs/heads/{branch}","after":"{after}","repository":{{"full_name":"acme/app","clone_url":"{}"}}}}"#,
        upstream.repo_url("acme/app")
    );
    let signature = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", body.as_bytes())
    );
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    http(
        &cache.addr,
        "POST",
        "/api/hooks/push",
        &headers,
        body.as_bytes(),
    )
}

#[test]
fn refreshes_gitcache_starts_use_installation_tokens_renewed_before_they_expire() {
    // Tokens that live five seconds past the renewal margin: fresh at first, due soon after.
    let lifetime = gitcache_http::github_app::RENEW_BEFORE + Duration::from_secs(5);
    let github = FakeGitHub::start(
        "4242",
        &["ghs_first", "ghs_second"],
        lifetime,
        gitcache_http::catalog::record::rfc3339,
    )
    .unwrap();
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/app");
    repo::generate(&source, &RepoSpec::tiny(1360)).unwrap();
    upstream
        .adopt_repo("acme/app", Access::private(["client", "ghs_first"]))
        .unwrap();
    let (cache, _keys) = as_the_app(&upstream, &github.url(), &[]);
    let git = GitClient::new().unwrap();
    let header = format!("http.extraheader=Authorization: {}", basic("client"));
    git.run(
        git.home(),
        &[
            "-c",
            &header,
            "clone",
            "-q",
            "--bare",
            &cache.url("acme/app"),
            "c",
        ],
    )
    .unwrap()
    .expect_success();
    // (The clone's ls-refs found no mirror yet and started warming: that refresh is
    // gitcache's own, with the App's token.)
    let mirror = cache.mirror(&upstream, "acme/app");
    common::wait_for_mirror(&mirror, &source);

    let push = |tip: &str| {
        let answer = push_event(&cache, &upstream, "main", tip);
        assert_eq!(answer.status, 202, "{}", answer.body_text());
        wait_for("the mirror to take the push", || {
            git_stdout(&mirror, &["rev-parse", "main"]).trim() == tip
        });
    };
    let first_token = basic("ghs_first").replace("Basic ", "");
    let second_token = basic("ghs_second").replace("Basic ", "");

    // The first push: a token is minted and the refresh fetches with it.
    let seen = upstream.requests().len();
    push(&repo::append_commits(&source, "main", 1, 1361).unwrap());
    assert_eq!(github.minted(), ["ghs_first"]);
    assert_eq!(github.lookups(), 1);
    let used = fetch_credentials(&upstream, seen);
    assert!(
        !used.is_empty() && used.iter().all(|c| c.ends_with(&first_token)),
        "{used:?}"
    );

    // Nearing its expiry, the token is minted again; the old one no longer opens the
    // repository, and the next refresh works with the new one. The installation is known.
    std::thread::sleep(Duration::from_millis(5500));
    upstream.set_access("acme/app", Access::private(["client", "ghs_second"]));
    let seen = upstream.requests().len();
    push(&repo::append_commits(&source, "main", 1, 1362).unwrap());
    assert_eq!(github.minted(), ["ghs_first", "ghs_second"]);
    assert_eq!(github.lookups(), 1, "the installation is remembered");
    assert_eq!(github.refused(), 0, "every JWT was valid");
    let used = fetch_credentials(&upstream, seen);
    assert!(
        !used.is_empty() && used.iter().all(|c| c.ends_with(&second_token)),
        "{used:?}"
    );
}

/// A key that is not an RSA key in PEM stops the start with a message, as does an App id
/// without its key.
#[test]
fn a_github_app_needs_its_id_and_a_readable_key() {
    let keys = tempfile::tempdir().unwrap();
    let bad = keys.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    for (args, message) in [
        (
            vec![
                "--github-app-id",
                "1",
                "--github-app-key",
                bad.to_str().unwrap(),
            ],
            "GitHub App key",
        ),
        (
            vec!["--github-app-id", "1"],
            "needs both --github-app-id and --github-app-key",
        ),
    ] {
        common::fails_to_start(&keys.path().join("data"), &args, message);
    }
}

/// An API that takes connections and never answers: what it holds stays open.
fn silent_api() -> (String, std::net::TcpListener) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (format!("http://{}", silent.local_addr().unwrap()), silent)
}

/// An upstream with `acme/app`, public, generated from `seed`.
fn public_app(seed: u64) -> Upstream {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/app");
    repo::generate(&source, &RepoSpec::tiny(seed)).unwrap();
    upstream.adopt_repo("acme/app", Access::Public).unwrap();
    upstream
}

/// `acme/app` mirrored through `cache`.
fn mirrored(cache: &Gitcache, upstream: &Upstream) {
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", "--bare", &cache.url("acme/app"), "c"],
    )
    .unwrap()
    .expect_success();
    let mirror = cache.mirror(upstream, "acme/app");
    wait_for("the mirror", || mirror.join("packed-refs").is_file());
}

/// Push events of `branches` moving each to a commit of its own, each accepted; paced so
/// that every one is let in.
fn pushes(cache: &Gitcache, upstream: &Upstream, branches: impl Iterator<Item = usize>) {
    for n in branches {
        if n % 32 == 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        let answer = push_event(cache, upstream, &format!("b{n}"), &format!("{n:040x}"));
        assert_eq!(answer.status, 202, "{}", answer.body_text());
    }
}

/// A push event's place among those taken at once is held until all it leads to has ended,
/// the wait for the App's token included; events past them wait their turn and are taken
/// once places free (here, once the silent API's requests time out).
#[test]
fn events_past_those_taken_at_once_wait_their_turn() {
    let (api, _silent) = silent_api();
    let upstream = public_app(1364);
    let (cache, _keys) = as_the_app(&upstream, &api, &["--upstream-timeout", "2"]);
    mirrored(&cache, &upstream);
    let past = 2;
    pushes(
        &cache,
        &upstream,
        1..=gitcache_http::webhook::EVENTS_TAKEN_AT_ONCE + past,
    );
    // Each taken says so as it starts its refresh (those that waited too), and each of
    // those refreshes ends, or is dropped.
    let events = gitcache_http::webhook::EVENTS_TAKEN_AT_ONCE + past;
    wait_for("every event taken and its refresh over", || {
        let log = cache.log();
        let over = log
            .lines()
            .filter(|line| line.contains("why=\"push webhook\""))
            .filter(|line| {
                [
                    "mirror warmed",
                    "warming the mirror failed",
                    "this one dropped",
                ]
                .iter()
                .any(|said| line.contains(said))
            })
            .count();
        common::count(&log, "refreshing the mirror") == events && over == events
    });
    // None left out, and none of their refreshes dropped for want of a place.
    let log = cache.log();
    assert!(!log.contains("too many events waiting"), "{log}");
    assert!(!log.contains("too many warming refreshes"), "{log}");
}

/// With every place held (the GitHub API silent), events wait in line up to its bound; one
/// past it is left out, told in the log, not each given a task that waits.
#[test]
fn events_past_those_waiting_are_left_out() {
    let (api, _silent) = silent_api();
    let upstream = public_app(1363);
    // Every place held for the whole test.
    let (cache, _keys) = as_the_app(&upstream, &api, &["--upstream-timeout", "3600"]);
    mirrored(&cache, &upstream);
    let places =
        gitcache_http::webhook::EVENTS_TAKEN_AT_ONCE + gitcache_http::webhook::EVENTS_WAITING;
    pushes(&cache, &upstream, 1..=places);
    assert!(
        !cache.log().contains("too many events waiting"),
        "{}",
        cache.log()
    );
    pushes(&cache, &upstream, places + 1..=places + 1);
    wait_for("an event left out", || {
        cache.log().contains("too many events waiting")
    });
}
