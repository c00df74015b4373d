//! The admin API, the catalog behind it, and `/metrics`, through the real binary: records
//! decide what is cached, tokens guard the API, and every clone shows in the metrics.

mod common;

use std::time::{Duration, Instant};

use common::{Answer, Gitcache, fetch_body, http};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};
use serde_json::{Value, json};

const TOKEN: &str = "admin-secret-one";

fn upstream_with(names: &[&str], spec: fn(u64) -> RepoSpec) -> Upstream {
    let upstream = Upstream::start().unwrap();
    for (i, name) in names.iter().enumerate() {
        let source = upstream.repo_path(name);
        repo::generate(&source, &spec(900 + i as u64)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
    }
    upstream
}

/// `POST /api/cached-repos` with `record`: the status and the answer.
fn add(cache: &Gitcache, record: Value) -> (u16, Value) {
    let (status, value, _) = api(cache, "POST", "/api/cached-repos", Some(record));
    (status, value)
}

fn api(cache: &Gitcache, method: &str, path: &str, body: Option<Value>) -> (u16, Value, Answer) {
    api_at(&cache.addr, method, path, body, Some(TOKEN))
}

fn api_at(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value, Answer) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = http(addr, method, path, &headers, body.as_bytes());
    let content = answer.content();
    let value = if content.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&content)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", answer.body_text()))
    };
    (answer.status, value, answer)
}

/// `/metrics` as an admin token's holder reads it (with the repositories named).
fn metrics(addr: &str) -> String {
    let bearer = format!("Bearer {TOKEN}");
    let answer = http(addr, "GET", "/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    String::from_utf8(answer.content()).unwrap()
}

/// The value of the series `name{labels}` (labels as rendered, in order), or 0.
fn series(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name_and_labels).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn clone(git: &GitClient, cache: &Gitcache, name: &str, into: &str) -> std::path::PathBuf {
    git.run(git.home(), &["clone", "-q", &cache.url(name), into])
        .unwrap()
        .expect_success();
    git.home().join(into)
}

#[test]
fn without_a_token_the_admin_side_is_off() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &[]);
    for path in ["/api/cached-repos", "/admin", "/api/openapi.json"] {
        let answer = http(&cache.addr, "GET", path, &[], b"");
        assert_eq!(answer.status, 404, "{path}: {}", answer.body_text());
    }
    // Metrics need no token.
    assert!(metrics(&cache.addr).contains("gitcache_build_info{version="));
}

/// The admin page is not to be framed by another site, nor read as another type, and its
/// scripts come from itself only.
#[test]
fn the_admin_page_is_not_framed_or_sniffed() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN]);
    let page = http(&cache.addr, "GET", "/admin", &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(policy.contains("default-src 'self'"), "{policy}");
}

#[test]
fn tokens_guard_the_api() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN]);
    let (status, body, answer) = api_at(&cache.addr, "GET", "/api/cached-repos", None, None);
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("admin token"));
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let (status, ..) = api_at(
        &cache.addr,
        "GET",
        "/api/cached-repos",
        None,
        Some("admin-secret-2"),
    );
    assert_eq!(status, 403);
    let answer = http(
        &cache.addr,
        "GET",
        "/api/cached-repos",
        &[("Authorization", &common::basic(TOKEN))],
        b"",
    );
    assert_eq!(answer.status, 401, "a bearer token is needed, not Basic");
    let (status, body, _) = api(&cache, "GET", "/api/cached-repos", None);
    assert_eq!((status, body), (200, json!([])));
    // The token never reaches the log.
    assert!(!cache.log().contains(TOKEN));
}

#[test]
fn records_are_added_listed_changed_and_removed_with_clear_errors() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN]);
    let host = upstream.addr().to_string();

    let (status, created, answer) = api(
        &cache,
        "POST",
        "/api/cached-repos",
        Some(json!({"owner": "Acme", "name": "Widgets.git", "timeout_seconds": 45})),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        answer.header("location").unwrap(),
        format!("/api/cached-repos/{id}")
    );
    assert_eq!(created["host"], json!(host), "default upstream's host");
    // The testkit upstream tells case apart: names are kept as written.
    assert_eq!(created["owner"], "Acme");
    assert_eq!(created["name"], "Widgets");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["timeout_seconds"], 45);
    assert_eq!(created["max_cache_size_mb"], Value::Null);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["status"]["hits"], 0);
    assert_eq!(created["status"]["mirror_bytes"], Value::Null);

    // Duplicates, bad types, bad values, unknown fields.
    for (body, status, field) in [
        (json!({"owner": "Acme", "name": "Widgets"}), 409, None),
        (json!({"owner": "acme"}), 422, Some("name")),
        (json!({"owner": "acme", "name": 7}), 400, Some("name")),
        (
            json!({"owner": "acme", "name": "x", "timeout_seconds": 0}),
            422,
            Some("timeout_seconds"),
        ),
        (
            json!({"owner": "acme", "name": "x", "timeout_seconds": "5"}),
            400,
            Some("timeout_seconds"),
        ),
        (
            json!({"owner": "acme", "name": "x", "max_cache_size_mb": -1}),
            422,
            Some("max_cache_size_mb"),
        ),
        (json!({"owner": "a/b", "name": "x"}), 422, Some("owner")),
        (
            json!({"host": "evil.example", "owner": "a", "name": "x"}),
            422,
            Some("host"),
        ),
        (
            json!({"owner": "a", "name": "x", "colour": "red"}),
            400,
            Some("colour"),
        ),
        (json!(["not", "an", "object"]), 400, None),
    ] {
        let (got, error, _) = api(&cache, "POST", "/api/cached-repos", Some(body.clone()));
        assert_eq!(got, status, "{body}: {error}");
        assert!(error["error"].is_string(), "{error}");
        assert_eq!(error["field"].as_str(), field, "{body}: {error}");
    }
    let answer = http(
        &cache.addr,
        "POST",
        "/api/cached-repos",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"{not json",
    );
    assert_eq!(answer.status, 400);

    let (status, listed, _) = api(&cache, "GET", "/api/cached-repos", None);
    assert_eq!(status, 200);
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "nothing refused was added"
    );

    let path = format!("/api/cached-repos/{id}");
    let (status, changed, _) = api(
        &cache,
        "PATCH",
        &path,
        Some(json!({"timeout_seconds": 120, "max_cache_size_mb": 64, "enabled": false})),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["timeout_seconds"], 120);
    assert_eq!(changed["max_cache_size_mb"], 64);
    assert_eq!(changed["enabled"], false);
    assert_eq!(
        changed["status"]["response_cache_limit_bytes"],
        64 * 1024 * 1024
    );
    let (_, cleared, _) = api(
        &cache,
        "PATCH",
        &path,
        Some(json!({"max_cache_size_mb": 0})),
    );
    assert_eq!(cleared["max_cache_size_mb"], Value::Null);
    assert_eq!(cleared["timeout_seconds"], 120, "untouched");
    for (body, status, field) in [
        (json!({"timeout_seconds": 4000}), 422, "timeout_seconds"),
        (json!({"name": "other"}), 422, "name"),
        (json!({"enabled": "yes"}), 400, "enabled"),
    ] {
        let (got, error, _) = api(&cache, "PATCH", &path, Some(body.clone()));
        assert_eq!(
            (got, error["field"].as_str()),
            (status, Some(field)),
            "{body}"
        );
    }
    let (status, got, _) = api(&cache, "GET", &path, None);
    assert_eq!((status, &got["timeout_seconds"]), (200, &json!(120)));

    let (status, _, answer) = api(&cache, "PUT", &path, Some(json!({})));
    assert_eq!(status, 405);
    assert_eq!(answer.header("allow").unwrap(), "GET, PATCH, DELETE");

    let (status, body, _) = api(&cache, "DELETE", &path, None);
    assert_eq!((status, body), (204, Value::Null));
    for method in ["GET", "DELETE"] {
        let (status, body, _) = api(&cache, method, &path, None);
        assert_eq!(status, 404, "{method}: {body}");
    }
    let (status, ..) = api(&cache, "PATCH", &path, Some(json!({"enabled": true})));
    assert_eq!(status, 404);
    let (_, listed, _) = api(&cache, "GET", "/api/cached-repos", None);
    assert_eq!(listed, json!([]));
}

/// On an upstream that ignores case, a record holds the folded names (those requests to it
/// are looked up by), and a second spelling is the same record.
#[test]
fn records_of_a_case_insensitive_upstream_hold_folded_names() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let host = upstream.addr().to_string();
    let cache = Gitcache::start(
        &upstream,
        &["--admin-token", TOKEN, "--case-insensitive-host", &host],
    );
    let (status, created) = add(&cache, json!({"owner": "Acme", "name": "Widgets"}));
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (&created["owner"], &created["name"]),
        (&json!("acme"), &json!("widgets"))
    );
    let (status, _) = add(&cache, json!({"owner": "acme", "name": "WIDGETS"}));
    assert_eq!(status, 409, "one repository, one record");
}

/// The list comes a page at a time: a full page names the next in a `Link` header, the
/// last one names none, and a query the list does not take is refused.
#[test]
fn the_list_comes_a_page_at_a_time() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN]);
    let ids: Vec<i64> = ["one", "two", "three"]
        .into_iter()
        .map(|name| {
            let (status, created) = add(&cache, json!({"owner": "acme", "name": name}));
            assert_eq!(status, 201, "{created}");
            created["id"].as_i64().unwrap()
        })
        .collect();
    let (mut seen, mut path) = (Vec::new(), "/api/cached-repos?limit=2".to_owned());
    let mut pages = 0;
    loop {
        let (status, page, answer) = api(&cache, "GET", &path, None);
        assert_eq!(status, 200, "{path}: {page}");
        pages += 1;
        seen.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        let Some(link) = answer.header("link") else {
            break;
        };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(url, _)| url.to_owned())
            .unwrap_or_else(|| panic!("a next link: {link}"));
        assert_eq!(
            next,
            format!("/api/cached-repos?after={}&limit=2", seen.last().unwrap())
        );
        path = next;
    }
    assert_eq!(
        (seen, pages),
        (ids.clone(), 2),
        "two pages, every record once"
    );
    // Without a query, a whole page of up to a thousand: all of them, no link.
    let (_, all, answer) = api(&cache, "GET", "/api/cached-repos", None);
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert!(answer.header("link").is_none());
    for (query, field) in [
        ("limit=0", json!("limit")),
        ("limit=1001", json!("limit")),
        ("after=-4", json!("after")),
        ("page=2", Value::Null),
    ] {
        let (status, error, _) = api(&cache, "GET", &format!("/api/cached-repos?{query}"), None);
        assert_eq!((status, &error["field"]), (400, &field), "{query}: {error}");
    }
}

/// The "done when" walk: a repository added through the API, cloned twice: a miss then a
/// hit, in `/metrics` and in the access log; disabled, it passes through.
#[test]
fn catalog_records_choose_what_is_cached_and_clones_show_in_metrics_and_log() {
    let upstream = upstream_with(&["acme/widgets", "acme/gadgets"], RepoSpec::tiny);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--admin-token",
            TOKEN,
            "--cache-all",
            "false",
            "--log-format",
            "json",
        ],
    );
    let (status, created) = add(&cache, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);

    let git = GitClient::new().unwrap();
    let one = clone(&git, &cache, "acme/widgets", "one");
    // The first clone may be answered as its pack arrives: the second is a hit once the
    // mirror is whole.
    common::wait_for_mirror(
        &cache.mirror(&upstream, "acme/widgets"),
        &upstream.repo_path("acme/widgets"),
    );
    let two = clone(&git, &cache, "acme/widgets", "two");
    common::fsck(&one);
    common::fsck(&two);
    assert!(cache.mirror(&upstream, "acme/widgets").exists());

    let m = metrics(&cache.addr);
    let request = |result: &str| {
        series(
            &m,
            &format!(
                "gitcache_cache_request_total{{owner=\"acme\",repo=\"widgets\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(request("miss"), 1.0, "{m}");
    assert_eq!(request("hit"), 1.0, "{m}");
    assert_eq!(
        series(&m, "gitcache_cache_fetch_total{result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        series(&m, "gitcache_cache_fetch_total{result=\"hit\"}"),
        1.0
    );
    assert!(series(&m, "gitcache_cache_lsrefs_total") >= 2.0, "{m}");
    assert!(series(&m, "gitcache_pack_sent_bytes_total") > 0.0);
    assert!(m.contains("gitcache_proxy_decision_duration_seconds_bucket{stage=\"cache_lookup\""));
    assert!(m.contains(
        "gitcache_upstream_request_duration_seconds_count{kind=\"forward\",status=\"200\"}"
    ));
    assert!(
        series(
            &m,
            "gitcache_mirror_refresh_duration_seconds_count{result=\"ok\"}"
        ) >= 1.0
    );
    assert!(m.contains("# HELP gitcache_cache_fetch_total"));
    assert!(m.contains("gitcache_build_info{version=\""));
    // The first pack's bitmaps are written by background maintenance, which the metrics
    // show under way and then ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let maintained = loop {
        let m = metrics(&cache.addr);
        let consolidated = series(
            &m,
            "gitcache_mirror_maintenance_total{result=\"consolidated\"}",
        );
        if consolidated >= 1.0 && series(&m, "gitcache_mirror_maintenance_running") == 0.0 {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        series(
            &maintained,
            "gitcache_mirror_maintenance_total{result=\"failed\"}"
        ),
        0.0
    );
    assert!(maintained.contains("# HELP gitcache_mirror_maintenance_running"));

    // The access log says the same, one JSON object per line.
    let log = cache.log_with("\"cache_state\":\"hit\"", 1);
    let states: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["target"] == "gitcache::access"
                && v["fields"]["path"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("git-upload-pack")
        })
        .map(|v| v["fields"]["cache_state"].as_str().unwrap_or("").to_owned())
        .filter(|s| s == "hit" || s == "miss")
        .collect();
    assert_eq!(states, ["miss", "hit"], "{log}");

    // The API shows what happened.
    let path = format!("/api/cached-repos/{}", created["id"]);
    let (_, shown, _) = api(&cache, "GET", &path, None);
    let status = &shown["status"];
    assert_eq!(
        (status["hits"].as_u64(), status["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(status["hit_rate"], 0.5);
    assert_eq!(status["last_refresh_ok"], true);
    assert!(status["mirror_bytes"].as_u64().unwrap() > 0);

    // Not in the catalog, and the cache does not take all: passed through, counted apart.
    clone(&git, &cache, "acme/gadgets", "three");
    assert!(!cache.mirror(&upstream, "acme/gadgets").exists());
    // Disabled: bypassed, though mirrored.
    api(&cache, "PATCH", &path, Some(json!({"enabled": false})));
    let fetches_before = upstream_fetches(&upstream);
    clone(&git, &cache, "acme/widgets", "four");
    assert!(
        upstream_fetches(&upstream) > fetches_before,
        "went upstream"
    );
    // Requests not served from a mirror count without their repository's name.
    let m = metrics(&cache.addr);
    assert!(
        series(
            &m,
            "gitcache_cache_request_total{owner=\"_other\",repo=\"_other\",result=\"nocache\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        series(
            &m,
            "gitcache_cache_request_total{owner=\"_other\",repo=\"_other\",result=\"bypass\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(!m.contains("gadgets"), "{m}");
}

fn upstream_fetches(upstream: &Upstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("git-upload-pack"))
        .count()
}

#[test]
fn a_separate_admin_address_serves_only_the_admin_side() {
    let upstream = upstream_with(&["acme/widgets"], RepoSpec::tiny);
    let cache = Gitcache::start(
        &upstream,
        &["--admin-token", TOKEN, "--admin-listen", "127.0.0.1:0"],
    );
    let log = cache.log_with("gitcache admin listening on http://", 1);
    let admin = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("gitcache admin listening on http://"))
        .unwrap()
        .to_owned();
    let (status, ..) = api_at(&admin, "GET", "/api/cached-repos", None, Some(TOKEN));
    assert_eq!(status, 200);
    assert!(metrics(&admin).contains("gitcache_build_info"));
    let auth = format!("Bearer {TOKEN}");
    let answer = http(
        &cache.addr,
        "GET",
        "/api/cached-repos",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(answer.status, 404, "not on the git address");
    assert_eq!(http(&cache.addr, "GET", "/metrics", &[], b"").status, 404);
    // Git on the main address only.
    let refs = "/acme/widgets.git/info/refs?service=git-upload-pack";
    assert_eq!(http(&admin, "GET", refs, &[], b"").status, 404);
    assert_eq!(http(&cache.addr, "GET", refs, &[], b"").status, 200);
    assert_eq!(http(&admin, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn the_openapi_document_describes_what_the_api_returns() {
    let upstream = upstream_with(&[], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN]);
    let answer = http(&cache.addr, "GET", "/api/openapi.json", &[], b"");
    assert_eq!(answer.status, 200);
    let doc: Value = serde_json::from_slice(&answer.content()).unwrap();
    let (_, created) = add(&cache, json!({"owner": "acme", "name": "widgets"}));
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let schemas = &doc["components"]["schemas"];
    assert_eq!(keys(&created), keys(&schemas["CachedRepo"]["properties"]));
    assert_eq!(
        keys(&created["status"]),
        keys(&schemas["Status"]["properties"])
    );
    let mut required: Vec<String> = schemas["Status"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    required.sort();
    assert_eq!(required, keys(&created["status"]));
}

/// Issue: per-repository limits come from the catalog; eviction keeps the repository under
/// its own limit and shows in the metrics.
#[test]
fn a_records_response_cache_limit_is_kept_and_evictions_are_counted() {
    let upstream = upstream_with(&["acme/widgets"], RepoSpec::small);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--admin-token",
            TOKEN,
            "--response-cache-cleanup-interval",
            "1",
            "--catalog-reload-interval",
            "1",
        ],
    );
    let (status, ..) = api(
        &cache,
        "POST",
        "/api/cached-repos",
        Some(json!({"owner": "acme", "name": "widgets", "max_cache_size_mb": 1})),
    );
    assert_eq!(status, 201);
    let source = upstream.repo_path("acme/widgets");
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    // A full clone's answer: over 1 MiB (the repository holds a file larger than that).
    let body = fetch_body(&main, &["ofs-delta", "no-progress"]);
    let answer = http(
        &cache.addr,
        "POST",
        "/acme/widgets.git/git-upload-pack",
        &[("Git-Protocol", "version=2")],
        &body,
    );
    assert_eq!(answer.status, 200);
    assert!(answer.content().len() > 1 << 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(&cache.addr);
        let evicted = series(
            &m,
            "gitcache_cache_eviction_total{owner=\"acme\",repo=\"widgets\"}",
        );
        if evicted >= 1.0 {
            assert_eq!(
                series(
                    &m,
                    "gitcache_cache_response_size_bytes{owner=\"acme\",repo=\"widgets\"}"
                ),
                0.0,
                "{m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never evicted:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let responses = cache.data.path().join("responses");
    assert_eq!(gitcache_storage_size(&responses), 0);
}

fn gitcache_storage_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The flags of an instance caching what the catalog at `url` lists, read again every
/// second.
fn sharing_the_catalog(url: &str) -> [&str; 8] {
    [
        "--admin-token",
        TOKEN,
        "--cache-all",
        "false",
        "--database-url",
        url,
        "--catalog-reload-interval",
        "1",
    ]
}

/// Two instances sharing the PostgreSQL catalog `database` (none without a PostgreSQL for
/// tests), in front of an upstream holding `acme/widgets`: the catalog's URL, the upstream,
/// and the two.
fn two_sharing_a_catalog(database: &str) -> Option<(String, Upstream, Gitcache, Gitcache)> {
    let url = common::postgres_database(database)?;
    let upstream = upstream_with(&["acme/widgets"], RepoSpec::tiny);
    let flags = sharing_the_catalog(&url);
    let first = Gitcache::start(&upstream, &flags);
    let second = Gitcache::start(&upstream, &flags);
    Some((url, upstream, first, second))
}

/// Two instances sharing a PostgreSQL catalog: what one adds, the other serves from its
/// in-memory view after its next reload; each shows the fleet's numbers.
#[test]
fn instances_sharing_a_postgres_catalog_see_each_others_records() {
    let Some((_, upstream, first, second)) = two_sharing_a_catalog("admin") else {
        return;
    };
    assert!(
        first.log().contains("backend=\"postgres\"") || first.log().contains("backend=postgres")
    );
    let (status, ..) = api(
        &first,
        "POST",
        "/api/cached-repos",
        Some(json!({"owner": "acme", "name": "widgets"})),
    );
    assert_eq!(status, 201);
    let (_, listed, _) = api(&second, "GET", "/api/cached-repos", None);
    assert_eq!(listed.as_array().unwrap().len(), 1, "one database");
    // The second instance caches the repository once its view is reloaded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let git = GitClient::new().unwrap();
    let mut n = 0;
    while !second.mirror(&upstream, "acme/widgets").exists() {
        assert!(
            Instant::now() < deadline,
            "the second instance never cached it"
        );
        std::thread::sleep(Duration::from_millis(300));
        n += 1;
        clone(&git, &second, "acme/widgets", &format!("c{n}"));
    }
    // Each instance's page shows the fleet's numbers: two clones through the first, the
    // second's own, summed (each writes its activity to the catalog every reload).
    let fetches = |cache: &Gitcache| {
        let (_, listed, _) = api(cache, "GET", "/api/cached-repos", None);
        let status = &listed[0]["status"];
        status["hits"].as_u64().unwrap() + status["misses"].as_u64().unwrap()
    };
    // At least what the second shows before the first's clones (it may lag behind them).
    let on_second: u64 = fetches(&second);
    clone(&git, &first, "acme/widgets", "f1");
    clone(&git, &first, "acme/widgets", "f2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetches(&second) < on_second + 2 || fetches(&first) != fetches(&second) {
        assert!(
            Instant::now() < deadline,
            "the fleet's numbers never met: {} on the first, {} on the second",
            fetches(&first),
            fetches(&second)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two instances sharing a PostgreSQL catalog but no bucket, each with its own copies: a
/// purge on one drops the other's copy (mirror and stored answers) once it reads the catalog
/// again, and an instance that was down through a purge drops its copy as it starts.
#[test]
fn a_purge_on_one_instance_drops_the_copies_of_the_others() {
    let Some((url, upstream, first, mut second)) = two_sharing_a_catalog("purges") else {
        return;
    };
    let flags = sharing_the_catalog(&url);
    let (status, created) = add(&first, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);
    let id = created["id"].as_i64().unwrap();
    let git = GitClient::new().unwrap();
    clone(&git, &first, "acme/widgets", "on-first");
    // The second caches it once it has read the record, and stores a shallow answer.
    let mut n = 0;
    let cached = |cache: &Gitcache| {
        cache
            .mirror(&upstream, "acme/widgets")
            .join("HEAD")
            .is_file()
    };
    let shallow = |cache: &Gitcache, n: usize| {
        git.run(
            git.home(),
            &[
                "clone",
                "-q",
                "--depth=1",
                &cache.url("acme/widgets"),
                &format!("shallow-{n}"),
            ],
        )
        .unwrap()
        .expect_success();
    };
    common::wait_for("the second instance caches the repository", || {
        n += 1;
        shallow(&second, n);
        cached(&second)
    });
    let stored = |cache: &Gitcache| gitcache_storage_size(&cache.data.path().join("responses")) > 0;
    common::wait_for("the second instance stores an answer", || {
        n += 1;
        shallow(&second, n);
        stored(&second)
    });
    let purge = || {
        let (status, _, _) = api(
            &first,
            "POST",
            &format!("/api/cached-repos/{id}/purge"),
            None,
        );
        assert_eq!(status, 204);
    };
    purge();
    assert!(!cached(&first), "the first's copy goes at once");
    common::wait_for("the second instance drops its copy", || {
        !cached(&second) && !stored(&second)
    });
    // Cached again on the second, it keeps its copy through the reloads that follow (three
    // of them), and through a restart: the purge it followed is noted on its disk.
    common::wait_for("the second instance caches the repository again", || {
        n += 1;
        shallow(&second, n);
        cached(&second)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(cached(&second), "a purge is followed once");
    let data = std::mem::replace(&mut second.data, tempfile::tempdir().unwrap());
    drop(second);
    let mut second = Gitcache::start_in(&upstream, data, &flags);
    std::thread::sleep(Duration::from_secs(3));
    assert!(cached(&second), "nor followed again after a restart");
    // Then it is down while the first purges.
    let data = std::mem::replace(&mut second.data, tempfile::tempdir().unwrap());
    drop(second);
    purge();
    let second = Gitcache::start_in(&upstream, data, &flags);
    // The copy goes first; the log line and the count noted on disk follow it.
    let noted = || std::fs::read_to_string(second.data.path().join("catalog-purges")).ok();
    common::wait_for("the restarted instance drops its copy and notes it", || {
        !cached(&second)
            && second.log().contains("purged on another instance")
            && noted().as_deref() == Some(&format!("{id} 2\n"))
    });
    let (_, record, _) = api(&first, "GET", &format!("/api/cached-repos/{id}"), None);
    assert_eq!(record["purges"], json!(2));
}

/// Two instances sharing a PostgreSQL catalog, each with its own copy: removing the record on
/// one drops the other's copy too once it reads the catalog without it (the settings cache
/// the repository no more).
#[test]
fn a_removal_on_one_instance_drops_the_copies_of_the_others() {
    let Some((_, upstream, first, second)) = two_sharing_a_catalog("removals") else {
        return;
    };
    let (status, created) = add(&first, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);
    let id = created["id"].as_i64().unwrap();
    let git = GitClient::new().unwrap();
    let mirror = second.mirror(&upstream, "acme/widgets");
    let mut n = 0;
    common::wait_for("the second instance caches the repository", || {
        n += 1;
        git.run(
            git.home(),
            &["clone", "-q", &second.url("acme/widgets"), &format!("c{n}")],
        )
        .unwrap()
        .expect_success();
        mirror.join("HEAD").is_file()
    });
    let (status, _, _) = api(&first, "DELETE", &format!("/api/cached-repos/{id}"), None);
    assert_eq!(status, 204);
    common::wait_for("the second instance drops its copy", || {
        !mirror.exists() && second.log().contains("this instance's copy dropped")
    });
}

/// Issue 14: purge drops a repository's mirror and stored responses and keeps its record
/// (the next clone fetches anew); removing the record drops them too, unless the
/// server-wide settings still cache the repository.
#[test]
fn purge_and_removal_drop_a_repositorys_data() {
    let upstream = upstream_with(&["acme/widgets"], RepoSpec::tiny);
    let cache = Gitcache::start(&upstream, &["--admin-token", TOKEN, "--cache-all", "false"]);
    let (status, created) = add(&cache, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);
    let id = created["id"].as_i64().unwrap();
    let git = GitClient::new().unwrap();
    clone(&git, &cache, "acme/widgets", "one");
    let mirror = cache.mirror(&upstream, "acme/widgets");
    assert!(mirror.join("HEAD").is_file());
    let responses = cache.data.path().join("responses");
    let stored = |root: &std::path::Path| gitcache_storage_size(root) > 0;
    // A shallow clone's answer is generated and stored.
    git.run(
        git.home(),
        &[
            "clone",
            "-q",
            "--depth=1",
            &cache.url("acme/widgets"),
            "shallow",
        ],
    )
    .unwrap()
    .expect_success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !stored(&responses) {
        assert!(std::time::Instant::now() < deadline, "no stored response");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    upstream.reset_counts();

    let (status, _, _) = api(
        &cache,
        "POST",
        &format!("/api/cached-repos/{id}/purge"),
        None,
    );
    assert_eq!(status, 204);
    assert!(!mirror.exists(), "the mirror is gone");
    let trash = cache.data.path().join("mirrors/.removed");
    assert_eq!(
        std::fs::read_dir(&trash).map_or(0, |d| d.count()),
        0,
        "and deleted, not only moved aside"
    );
    assert!(!stored(&responses), "and its stored responses");
    let (status, record, _) = api(&cache, "GET", &format!("/api/cached-repos/{id}"), None);
    assert_eq!(
        (status, &record["name"]),
        (200, &json!("widgets")),
        "the record stays"
    );
    let (status, _, _) = api(
        &cache,
        "GET",
        &format!("/api/cached-repos/{id}/purge"),
        None,
    );
    assert_eq!(status, 405);
    let (status, _, _) = api(&cache, "POST", "/api/cached-repos/999/purge", None);
    assert_eq!(status, 404);

    // The next clone fetches anew, and is served.
    let two = clone(&git, &cache, "acme/widgets", "two");
    common::fsck(&two);
    assert_eq!(upstream.counts().fetch, 1);
    assert!(mirror.join("HEAD").is_file());

    // Removing the record of a repository only the catalog caches removes its data.
    let (status, _, _) = api(&cache, "DELETE", &format!("/api/cached-repos/{id}"), None);
    assert_eq!(status, 204);
    assert!(!mirror.exists());

    // Where everything is cached anyway, the record goes and the data stays.
    let everything = Gitcache::start(&upstream, &["--admin-token", TOKEN]);
    let (_, created) = add(&everything, json!({"owner": "acme", "name": "widgets"}));
    clone(&git, &everything, "acme/widgets", "three");
    let kept = everything.mirror(&upstream, "acme/widgets");
    let id = created["id"].as_i64().unwrap();
    let (status, _, _) = api(
        &everything,
        "DELETE",
        &format!("/api/cached-repos/{id}"),
        None,
    );
    assert_eq!(status, 204);
    assert!(
        kept.join("HEAD").is_file(),
        "still cached by the server-wide settings"
    );
}

/// Issue 14: a removal killed at any point loses nothing but what it removes. The mirror
/// goes out of its place in one rename, then is deleted; a server killed in between (here:
/// at once after the API answered, and with a removal's leftovers planted as a crash leaves
/// them) sweeps what is left at its next start, and the repository is fetched anew whole.
#[test]
fn a_removal_killed_midway_is_finished_at_the_next_start() {
    let upstream = upstream_with(&["acme/widgets"], RepoSpec::small);
    let flags = ["--admin-token", TOKEN, "--cache-all", "false"];
    let cache = Gitcache::start(&upstream, &flags);
    let (status, created) = add(&cache, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);
    let id = created["id"].as_i64().unwrap();
    let git = GitClient::new().unwrap();
    clone(&git, &cache, "acme/widgets", "one");
    let mirror = cache.mirror(&upstream, "acme/widgets");
    assert!(mirror.join("HEAD").is_file());

    let (status, _, _) = api(
        &cache,
        "POST",
        &format!("/api/cached-repos/{id}/purge"),
        None,
    );
    assert_eq!(status, 204);
    // A removal cut short by a crash: its folder is in the trash, half deleted.
    let trash = mirror
        .ancestors()
        .find(|p| p.ends_with("mirrors"))
        .unwrap()
        .join(".removed");
    let leftover = trash.join("4242-0");
    std::fs::create_dir_all(leftover.join("objects/pack")).unwrap();
    std::fs::write(leftover.join("objects/pack/pack-1.pack"), b"half deleted").unwrap();
    let mut cache = cache.crash_and_restart(&upstream, &flags);
    assert!(!mirror.exists(), "the purged mirror stays gone");
    assert_eq!(
        std::fs::read_dir(&trash).map(|d| d.count()).unwrap_or(0),
        0,
        "the leftovers were swept at start"
    );

    // Killed right after the removal answered: the mirror is out of its place already.
    clone(&git, &cache, "acme/widgets", "two");
    assert!(mirror.join("HEAD").is_file());
    let (status, _, _) = api(&cache, "DELETE", &format!("/api/cached-repos/{id}"), None);
    assert_eq!(status, 204);
    let _ = cache.child.kill();
    assert!(!mirror.exists());
    cache = cache.crash_and_restart(&upstream, &flags);
    assert_eq!(std::fs::read_dir(&trash).map(|d| d.count()).unwrap_or(0), 0);
    // Cached again, fetched anew, whole.
    let (status, _) = add(&cache, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);
    let three = clone(&git, &cache, "acme/widgets", "three");
    common::fsck(&three);
    common::wait_for_mirror(&mirror, &upstream.repo_path("acme/widgets"));
    common::fsck(&mirror);
}

/// Issue 14: `gitcache_cache_repos_active` counts repositories with caching enabled (enabled
/// records, and mirrors the catalog does not disable); mirrors have their own gauge.
#[test]
fn the_active_gauge_counts_repositories_with_caching_enabled() {
    let upstream = upstream_with(&["acme/widgets", "acme/gadgets"], RepoSpec::tiny);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--admin-token",
            TOKEN,
            "--cache-all",
            "false",
            "--catalog-reload-interval",
            "1",
        ],
    );
    let (status, _) = add(&cache, json!({"owner": "acme", "name": "widgets"}));
    assert_eq!(status, 201);
    let (status, _) = add(
        &cache,
        json!({"owner": "acme", "name": "gadgets", "enabled": false}),
    );
    assert_eq!(status, 201);
    let gauges = |expected: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
            if expected.iter().all(|line| text.lines().any(|l| l == *line)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {expected:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // One record enabled, nothing mirrored yet.
    gauges(&["gitcache_cache_repos_active 1", "gitcache_mirrors 0"]);
    let git = GitClient::new().unwrap();
    clone(&git, &cache, "acme/widgets", "w");
    clone(&git, &cache, "acme/gadgets", "g");
    // The disabled one passed through: one mirror, one repository cached.
    gauges(&["gitcache_cache_repos_active 1", "gitcache_mirrors 1"]);
}
