//! The Grafana dashboard in `contrib/grafana` queries only series the server exports: a
//! server is driven through every event its metrics count (misses and hits, warming, mirror
//! and stored-response evictions, a database for the dependency gauge), and every metric
//! name the dashboard's queries use must then be in `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::{Gitcache, http, postgres_database};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

/// The metric names the dashboard's queries use (histograms by their base name).
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/grafana/gitcache.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("an expression").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let mut names: Vec<String> = Vec::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("gitcache_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = name.strip_suffix("_bucket").unwrap_or(&name).to_owned();
            if !names.contains(&base) {
                names.push(base);
            }
        }
    }
    names
}

#[test]
fn every_series_the_dashboard_queries_is_exported() {
    let names = dashboard_metrics();
    assert!(names.len() >= 15, "{names:?}");
    let Some(database) = postgres_database("dashboard") else {
        return;
    };
    let upstream = Upstream::start().unwrap();
    for (name, seed) in [("acme/one", 1340), ("acme/two", 1341)] {
        repo::generate(&upstream.repo_path(name), &RepoSpec::tiny(seed)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
    }
    // One server with a disk budget of one byte: each mirror is evicted once it is no
    // longer in use.
    let budget = Gitcache::start(&upstream, &["--max-mirror-bytes", "1"]);
    // One with a database, and stored responses evicted at each cleanup (every second).
    let cache = Gitcache::start(
        &upstream,
        &[
            "--database-url",
            &database,
            "--response-cache-max-repo-bytes",
            "1",
            "--response-cache-cleanup-interval",
            "1",
        ],
    );
    let git = GitClient::new().unwrap();
    let clone = |url: String, args: &[&str], dir: &str| {
        let mut all = vec!["clone", "-q", "--bare"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&url, dir]);
        git.run(git.home(), &all).unwrap().expect_success();
    };
    clone(budget.url("acme/one"), &[], "b1");
    clone(budget.url("acme/two"), &[], "b2");
    clone(cache.url("acme/one"), &[], "c1");
    clone(cache.url("acme/one"), &[], "c2");
    clone(cache.url("acme/one"), &["--depth=1"], "c3");
    clone(cache.url("acme/one"), &["--depth=1"], "c4");
    common::wait_for_mirror(
        &cache.mirror(&upstream, "acme/one"),
        &upstream.repo_path("acme/one"),
    );
    // The upstream moves: an ls-refs through gitcache starts warming.
    repo::append_commits(&upstream.repo_path("acme/one"), "main", 1, 1342).unwrap();
    git.run(git.home(), &["ls-remote", &cache.url("acme/one")])
        .unwrap()
        .expect_success();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The dependency gauge follows readiness checks.
        assert_eq!(http(&cache.addr, "GET", "/readyz", &[], b"").status, 200);
        let text = [&budget, &cache]
            .map(|c| http(&c.addr, "GET", "/metrics", &[], b"").body_text())
            .join("\n");
        // The name itself, or a histogram's series: never a longer name that starts alike
        // (`gitcache_mirrors` is not `gitcache_mirrors_evicted_total`).
        let exported = |name: &str| {
            text.lines().any(|line| {
                let rest = line.strip_prefix(name).unwrap_or("#");
                let rest = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| rest.strip_prefix(suffix))
                    .unwrap_or(rest);
                rest.starts_with(['{', ' '])
            })
        };
        let missing: Vec<&String> = names.iter().filter(|n| !exported(n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard queries series /metrics does not have: {missing:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
