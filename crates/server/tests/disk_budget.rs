//! Issue 14: mirrors under a disk budget. Beyond `--max-mirror-bytes`, whole mirrors are
//! evicted least recently used first (never one being served), and come back whole on the
//! next request; below `--min-free-bytes` free, a refresh is refused and the fetch passes
//! through to the upstream. And the disk gauges are there at the first scrape.

mod common;

use common::{Gitcache, fsck, wait_for};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

fn upstream_with(names: &[&str]) -> Upstream {
    let upstream = Upstream::start().unwrap();
    for (i, name) in names.iter().enumerate() {
        repo::generate(&upstream.repo_path(name), &RepoSpec::tiny(1410 + i as u64)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
    }
    upstream
}

fn size(dir: &std::path::Path) -> u64 {
    gitcache_storage::fs::tree_size(dir).unwrap_or(0)
}

#[test]
fn beyond_the_budget_the_least_recently_used_mirror_goes() {
    let names = ["acme/one", "acme/two"];
    let upstream = upstream_with(&names);
    let git = GitClient::new().unwrap();
    // How big the two mirrors are, on a server without a budget (maintenance finished).
    let measure = Gitcache::start(&upstream, &[]);
    for name in names {
        git.run(
            git.home(),
            &["clone", "-q", &measure.url(name), &format!("m-{name}")],
        )
        .unwrap()
        .expect_success();
        common::wait_for_tips_mark(&measure.mirror(&upstream, name));
    }
    let sizes: Vec<u64> = names
        .iter()
        .map(|n| size(&measure.mirror(&upstream, n)))
        .collect();
    drop(measure);
    // Room for either, not both.
    let budget = (sizes[0] + sizes[1]) * 9 / 10;
    assert!(sizes.iter().all(|s| *s < budget), "{sizes:?}");
    let cache = Gitcache::start(
        &upstream,
        &[
            "--max-mirror-bytes",
            &budget.to_string(),
            "--catalog-reload-interval",
            "1",
        ],
    );
    let (one, two) = (
        cache.mirror(&upstream, names[0]),
        cache.mirror(&upstream, names[1]),
    );
    git.run(git.home(), &["clone", "-q", &cache.url(names[0]), "one-a"])
        .unwrap()
        .expect_success();
    git.run(git.home(), &["clone", "-q", &cache.url(names[1]), "two-a"])
        .unwrap()
        .expect_success();
    // One was used last: the other goes.
    wait_for("the first mirror's eviction", || !one.exists());
    assert!(two.join("HEAD").is_file());
    cache.log_with("mirror evicted (disk budget)", 1);
    // Asked for again, it is fetched anew, whole, and now the other is the older one.
    git.run(git.home(), &["clone", "-q", &cache.url(names[0]), "one-b"])
        .unwrap()
        .expect_success();
    fsck(&git.home().join("one-b"));
    wait_for("the second mirror's eviction", || !two.exists());
    assert!(one.join("HEAD").is_file());
    common::wait_for_mirror(&one, &upstream.repo_path(names[0]));
    fsck(&one);
    let metrics = common::http(&cache.addr, "GET", "/metrics", &[], b"");
    let text = metrics.body_text();
    assert!(text.contains("gitcache_mirrors_evicted_total"), "{text}");
    assert!(text.contains("gitcache_mirror_bytes"), "{text}");
}

#[test]
fn below_the_free_space_floor_fetches_pass_through() {
    let upstream = upstream_with(&["acme/one"]);
    // No disk has this much free: every refresh is refused.
    let cache = Gitcache::start(&upstream, &["--min-free-bytes", &u64::MAX.to_string()]);
    let git = GitClient::new().unwrap();
    git.run(git.home(), &["clone", "-q", &cache.url("acme/one"), "one"])
        .unwrap()
        .expect_success();
    fsck(&git.home().join("one"));
    let log = cache.log_with("not enough free disk space", 1);
    assert!(
        log.contains("result=\"passthrough\"") || log.contains("result=passthrough"),
        "{log}"
    );
    assert!(!cache.mirror(&upstream, "acme/one").exists());
    assert!(upstream.counts().fetch >= 1, "the upstream answered");
}

/// Issue 14: gauges are there at the first scrape, not after the first upkeep tick.
#[test]
fn gauges_are_there_at_the_first_scrape() {
    let upstream = upstream_with(&["acme/one"]);
    let cache = Gitcache::start(&upstream, &["--catalog-reload-interval", "3600"]);
    let metrics = common::http(&cache.addr, "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body_text()
            .contains("gitcache_cache_repos_active 0"),
        "{}",
        metrics.body_text()
    );
}
