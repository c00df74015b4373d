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
fn as_the_app(upstream: &Upstream, api: &str) -> (Gitcache, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("app.pem");
    std::fs::write(&key, APP_KEY).unwrap();
    let cache = Gitcache::start(
        upstream,
        &[
            "--github-app-id",
            "4242",
            "--github-app-key",
            &key.to_string_lossy(),
            "--github-api-url",
            api,
            "--webhook-secret",
            "s3cret",
        ],
    );
    (cache, keys)
}

/// A push event moving `acme/app`'s main to `after`, signed, and the answer to it.
fn push_event(cache: &Gitcache, upstream: &Upstream, after: &str) -> common::Answer {
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{after}","repository":{{"full_name":"acme/app","clone_url":"{}"}}}}"#,
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
    let (cache, _keys) = as_the_app(&upstream, &github.url());
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
        let answer = push_event(&cache, &upstream, tip);
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

/// A push event's place among those taken at once is held until all it leads to has ended,
/// the wait for the App's token included: with the GitHub API silent, the events past the
/// bound are left out (told in the log), not each given a task that waits.
#[test]
fn events_waiting_for_a_token_count_against_those_taken_at_once() {
    // An API that takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", silent.local_addr().unwrap());
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/app");
    repo::generate(&source, &RepoSpec::tiny(1363)).unwrap();
    upstream.adopt_repo("acme/app", Access::Public).unwrap();
    let (cache, _keys) = as_the_app(&upstream, &api);
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", "--bare", &cache.url("acme/app"), "c"],
    )
    .unwrap()
    .expect_success();
    let mirror = cache.mirror(&upstream, "acme/app");
    wait_for("the mirror", || mirror.join("packed-refs").is_file());
    let push = |n: usize| {
        let answer = push_event(&cache, &upstream, &format!("{n:040x}"));
        assert_eq!(answer.status, 202, "{}", answer.body_text());
    };
    // Each a push of its own (another commit), paced so that every one is let in.
    for n in 1..=gitcache_http::webhook::EVENTS_AT_ONCE + 1 {
        if n % 32 == 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        push(n);
    }
    wait_for("an event left out", || {
        cache.log().contains("too many events being taken")
    });
}
