//! One access-log line per request, with what the cache did, and never a credential.

mod common;

use common::{Gitcache, basic, count, fetch_body, http};
use gitcache_testkit::git::git_stdout;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

#[test]
fn access_lines_tell_miss_hit_rejected_and_passthrough_without_credentials() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/secret"), &RepoSpec::tiny(901)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["letmein"]))
        .unwrap();
    let sha = git_stdout(&upstream.repo_path("acme/secret"), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &["--log-format", "json"]);
    let good = basic("letmein");
    let post = |auth: Option<&str>, query: &str| {
        let mut headers = vec![("Git-Protocol", "version=2")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        http(
            &cache.addr,
            "POST",
            &format!("/acme/secret.git/git-upload-pack{query}"),
            &headers,
            &fetch_body(&sha, &[]),
        )
    };
    assert_eq!(post(Some(&good), "?token=hidden").status, 200);
    assert_eq!(post(Some(&good), "").status, 200);
    assert_eq!(post(None, "").status, 401);
    // Protocol v0 to the same repository: passed through.
    let answer = http(
        &cache.addr,
        "GET",
        "/acme/secret.git/info/refs?service=git-upload-pack",
        &[("Authorization", &good)],
        b"",
    );
    assert_eq!(answer.status, 200);

    let log = cache.log_with("\"target\":\"gitcache::access\"", 4);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"target\":\"gitcache::access\""))
        .collect();
    let states: Vec<&str> = ["miss", "hit", "rejected", "passthrough"]
        .into_iter()
        .filter(|state| {
            lines
                .iter()
                .any(|l| l.contains(&format!("\"cache_state\":\"{state}\"")))
        })
        .collect();
    assert_eq!(states, ["miss", "hit", "rejected", "passthrough"], "{log}");
    for line in &lines {
        assert!(line.contains("\"cache_repo\":\"acme/secret\""), "{line}");
        assert!(line.contains("\"path\":\"/acme/secret.git/"), "{line}");
        assert!(
            line.contains("\"bytes\":") && line.contains("\"duration_ms\":"),
            "{line}"
        );
    }
    assert_eq!(count(&log, "letmein"), 0);
    assert_eq!(count(&log, &good), 0);
    assert_eq!(count(&log, "token=hidden"), 0, "no query strings");
    let rejected = lines
        .iter()
        .find(|l| l.contains("\"cache_state\":\"rejected\""))
        .unwrap();
    assert!(
        rejected.contains("\"upstream_status\":401") && rejected.contains("\"upstream_ms\":"),
        "{rejected}"
    );
    let hit = lines
        .iter()
        .find(|l| l.contains("\"cache_state\":\"hit\""))
        .unwrap();
    assert!(
        hit.contains("\"status\":200") && hit.contains("\"complete\":true"),
        "{hit}"
    );
}
