//! The admin page in a real headless browser (Debian's Chromium driven by playwright-core,
//! from `tests/browser`): sign in, add, edit, disable and remove a repository, checking what
//! the page shows, and purge another; the API then confirms the catalog. A screenshot is kept at
//! `target/tmp/admin-page.png`.
//!
//! Needs `chromium` (or `GITCACHE_TEST_CHROMIUM`) and `npm ci` in `tests/browser`; `.ci/run`
//! sets both up. Without them the test is skipped locally and fails under CI.

mod common;

use std::path::Path;

use common::{Gitcache, http};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

const TOKEN: &str = "page-test-token-one";

#[test]
fn the_admin_page_adds_edits_disables_and_removes_a_repository() {
    let Some(chromium) = common::browser() else {
        return;
    };

    let upstream = Upstream::start().unwrap();
    for (i, name) in ["acme/widgets", "acme/gadgets"].iter().enumerate() {
        repo::generate(&upstream.repo_path(name), &RepoSpec::tiny(950 + i as u64)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
    }
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN, "--cache-all", "false"]);
    // A repository with some history for the page to show: one miss, one hit.
    let auth = format!("Bearer {TOKEN}");
    let added = http(
        &cache.addr,
        "POST",
        "/api/cached-repos",
        &[("Authorization", &auth)],
        br#"{"owner": "acme", "name": "gadgets", "max_cache_size_mb": 100}"#,
    );
    assert_eq!(added.status, 201, "{}", added.body_text());
    let git = GitClient::new().unwrap();
    for dir in ["one", "two"] {
        git.run(
            git.home(),
            &["clone", "-q", &cache.url("acme/gadgets"), dir],
        )
        .unwrap()
        .expect_success();
        // The first clone may be answered as its pack arrives: the second is a hit once
        // the mirror is whole.
        common::wait_for_mirror(
            &cache.mirror(&upstream, "acme/gadgets"),
            &upstream.repo_path("acme/gadgets"),
        );
    }

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let base = format!("http://{}", cache.addr);
    common::run_browser_script(
        "admin_page.mjs",
        &[base.as_ref(), TOKEN.as_ref(), screenshot.as_ref()],
        &chromium,
        &screenshot,
        "admin page: ok",
    );

    // What the page did reached the catalog.
    let listed = http(
        &cache.addr,
        "GET",
        "/api/cached-repos",
        &[("Authorization", &auth)],
        b"",
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.content()).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gadgets"]);
    // The purge dropped the mirror; the next clone fetches it anew from the upstream.
    assert!(listed[0]["status"]["mirror_bytes"].is_null(), "{listed}");
    git.run(
        git.home(),
        &["clone", "-q", &cache.url("acme/gadgets"), "three"],
    )
    .unwrap()
    .expect_success();
    git.run(&git.home().join("three"), &["fsck", "--strict"])
        .unwrap()
        .expect_success();
    let log = cache.log_with("cached repository removed", 1);
    assert!(log.contains("cached repository added"));
    assert!(log.contains("timeout_seconds=90"), "{log}");
    assert!(log.contains("enabled=false"), "{log}");
}
