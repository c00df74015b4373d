//! Background warming after `ls-refs` shows new refs or a push webhook, serving stale data
//! when the upstream is down, and requests the proxy must bound: gzip bodies, oversized
//! bodies, slow clients.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Gitcache, basic, fetch_body, fsck, http, wait_for};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};

#[test]
fn ls_refs_showing_new_refs_warms_the_mirror_with_the_service_token() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/busy");
    repo::generate(&source, &RepoSpec::small(701)).unwrap();
    upstream
        .adopt_repo("acme/busy", Access::private(["client", "warmer"]))
        .unwrap();
    let cache = Gitcache::start(&upstream, &["--service-token", "warmer"]);
    let git = GitClient::new().unwrap();
    let url = cache
        .url("acme/busy")
        .replace("http://", "http://x-access-token:client@");
    git.run(git.home(), &["clone", "-q", &url, "work"])
        .unwrap()
        .expect_success();
    let mirror = cache.mirror(&upstream, "acme/busy");
    common::wait_for_mirror(&mirror, &source);

    // New commits upstream; an ls-remote through gitcache notices and warms the mirror.
    let tip = repo::append_commits(&source, "main", 4, 7).unwrap();
    upstream.reset_counts();
    git.run(git.home(), &["ls-remote", &url])
        .unwrap()
        .expect_success();
    wait_for("the mirror to be warmed", || {
        git_stdout(
            &mirror,
            &["for-each-ref", "--format=%(objectname)", "refs/heads/main"],
        )
        .trim()
            == tip
    });
    fsck(&mirror);
    let warming_fetches: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Fetch)
        .collect();
    assert_eq!(warming_fetches.len(), 1, "{}", cache.log());
    assert!(
        warming_fetches[0]
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == basic("warmer")),
        "warming uses the service token"
    );
    // The new tip the answer showed was fetched ahead of the refresh's own `ls-refs`: that
    // fetch was the only one.
    cache.log_with("ahead=1", 1);

    // The client's fetch is now a hit.
    upstream.reset_counts();
    git.run(&git.home().join("work"), &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(
        git.rev_parse(&git.home().join("work"), "HEAD").unwrap(),
        tip
    );
    assert_eq!(upstream.counts().fetch, 0);

    // A branch the client sees and the warming credential is refused (here, an id no object
    // has): asked for ahead once, and not again while the refusal is remembered, however
    // often listings name it.
    let ahead_before = common::count(&cache.log(), "ahead=1");
    for asked in [1, 0] {
        let warm = warmed_after_a_ghost_listing(&cache, &upstream, &git, &url);
        assert!(warm.contains(&format!("ahead={asked}")), "{warm}");
    }
    assert_eq!(common::count(&cache.log(), "ahead=1"), ahead_before + 1);
    assert_eq!(
        upstream.counts().fetch,
        1,
        "the refused id was asked for once: {}",
        cache.log()
    );
}

/// Without a credential of its own, warming asks with the listing client's: what the
/// upstream refuses that credential is not remembered for other clients' warmings (each
/// listing naming the id has it asked for ahead again).
#[test]
fn refusals_to_a_clients_credential_are_not_remembered_for_warming() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/plain");
    repo::generate(&source, &RepoSpec::tiny(703)).unwrap();
    upstream.adopt_repo("acme/plain", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/plain");
    git.run(git.home(), &["clone", "-q", &url, "work"])
        .unwrap()
        .expect_success();
    common::wait_for_mirror(&cache.mirror(&upstream, "acme/plain"), &source);
    upstream.reset_counts();
    for _ in 0..2 {
        let warm = warmed_after_a_ghost_listing(&cache, &upstream, &git, &url);
        assert!(warm.contains("ahead=1"), "{warm}");
    }
    assert_eq!(upstream.counts().fetch, 2, "{}", cache.log());
}

/// `git ls-remote url` through the cache, the upstream's answer naming a branch no object
/// is (as a listing shows a ref that the warming credential may not see): the log line of
/// the warming it starts, once it is done.
fn warmed_after_a_ghost_listing(
    cache: &Gitcache,
    upstream: &Upstream,
    git: &GitClient,
    url: &str,
) -> String {
    let warmed = "why=\"refs moved\"";
    let before = common::count(&cache.log(), warmed);
    let ghost = format!("{} refs/heads/ghost", "7".repeat(40)).into_bytes();
    upstream.inject(Fault::ExtraLine(ghost), 1, Some(RequestKind::LsRefs));
    git.run(git.home(), &["ls-remote", url])
        .unwrap()
        .expect_success();
    let log = cache.log_with(warmed, before + 1);
    let last = log.lines().rfind(|l| l.contains(warmed));
    last.expect("a warming logged").to_owned()
}

/// A ref the mirror does not take (here a name git refuses, listed by every `ls-refs` answer
/// of the upstream) is left out by the refresh the first listing showing it starts; later
/// listings that show it alike start none.
#[test]
fn a_ref_left_out_is_not_seen_as_moved_by_every_listing() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/odd");
    repo::generate(&source, &RepoSpec::tiny(705)).unwrap();
    upstream.adopt_repo("acme/odd", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/odd");
    git.run(git.home(), &["clone", "-q", &url, "work"])
        .unwrap()
        .expect_success();
    let mirror = cache.mirror(&upstream, "acme/odd");
    common::wait_for_mirror(&mirror, &source);
    let main = git_stdout(&source, &["rev-parse", "main"]);
    let odd = format!("{} refs/heads/odd..name", main.trim()).into_bytes();
    upstream.inject(Fault::ExtraLine(odd), 1_000, Some(RequestKind::LsRefs));

    // The first listing that shows it starts a refresh, which leaves it out.
    let warmed = "why=\"refs moved\"";
    let before = common::count(&cache.log(), warmed);
    git.run(git.home(), &["ls-remote", &url])
        .unwrap()
        .expect_success();
    cache.log_with(warmed, before + 1);
    assert!(
        cache
            .log()
            .contains("upstream listed a ref gitcache does not take"),
        "{}",
        cache.log()
    );
    assert!(
        !git_stdout(&mirror, &["for-each-ref"]).contains("odd"),
        "left out of the mirror"
    );

    // Later listings show it alike: no refresh asks the upstream for its refs again.
    upstream.reset_counts();
    for _ in 0..3 {
        let listed = git
            .run(git.home(), &["ls-remote", &url])
            .unwrap()
            .expect_success()
            .stdout;
        assert!(listed.contains("refs/heads/odd..name"), "{listed}");
    }
    // A refresh would have asked within this (a warming starts as the answer is passed on).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        upstream.counts().ls_refs,
        3,
        "the clients' listings only: {}",
        cache.log()
    );
    assert_eq!(common::count(&cache.log(), warmed), before + 1);
}

#[test]
fn serve_stale_answers_from_the_mirror_while_upstream_is_down() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/stale");
    repo::generate(&source, &RepoSpec::tiny(702)).unwrap();
    upstream.adopt_repo("acme/stale", Access::Public).unwrap();
    let old = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let v2 = ("Git-Protocol", "version=2");
    let fetch = |cache: &Gitcache, body: &[u8]| {
        http(
            &cache.addr,
            "POST",
            "/acme/stale.git/git-upload-pack",
            &[v2],
            body,
        )
    };

    for stale in [false, true] {
        let flags: &[&str] = if stale { &["--serve-stale"] } else { &[] };
        let cache = Gitcache::start(&upstream, flags);
        assert!(fetch(&cache, &fetch_body(&old, &[])).has_pack());
        // A new commit the mirror lacks, and the upstream failing from now on.
        let new = repo::append_commits(&source, "main", 1, 70 + u64::from(stale)).unwrap();
        upstream.inject(Fault::Status(503), 100, Some(RequestKind::Fetch));
        let both = fetch_body(&old, &[&format!("want {new}")]);
        let answer = fetch(&cache, &both);
        if stale {
            // What the mirror has is served; the missing want is left out.
            assert_eq!(answer.status, 200, "{}", answer.body_text());
            assert!(answer.has_pack());
        } else {
            assert_eq!(answer.status, 502, "{}", answer.body_text());
            assert!(!answer.has_pack());
        }
        upstream.clear_faults();
    }
}

#[test]
fn request_bodies_gzip_limits_and_slow_clients() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/widgets"), &RepoSpec::tiny(703)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let sha = git_stdout(&upstream.repo_path("acme/widgets"), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(
        &upstream,
        &["--max-body-bytes", "4096", "--header-read-timeout", "1"],
    );
    let v2 = ("Git-Protocol", "version=2");
    let path = "/acme/widgets.git/git-upload-pack";

    // git gzips large requests: decoded for local parsing.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&fetch_body(&sha, &[])).unwrap();
    let answer = http(
        &cache.addr,
        "POST",
        path,
        &[v2, ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert!(answer.has_pack());

    // Too large (as sent, or once inflated): 413 with a message.
    let haves: Vec<String> = (0..200).map(|i| format!("have {:040x}", i + 1)).collect();
    let haves: Vec<&str> = haves.iter().map(String::as_str).collect();
    let big = fetch_body(&sha, &haves);
    assert!(big.len() > 4096);
    let answer = http(&cache.addr, "POST", path, &[v2], &big);
    assert_eq!(answer.status, 413);
    assert!(answer.body_text().contains("exceeds 4096 bytes"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&big).unwrap();
    let answer = http(
        &cache.addr,
        "POST",
        path,
        &[v2, ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(answer.status, 413);

    // A malformed request: refused with the parser's message in an `ERR` line.
    let answer = http(&cache.addr, "POST", path, &[v2], b"zzzz");
    assert_eq!(answer.status, 200);
    assert!(
        answer.refusal().is_some_and(|m| m.contains("zzzz")),
        "{}",
        answer.body_text()
    );

    // A client that never finishes its headers is cut off.
    let mut slow = common::connect(&cache.addr, Duration::from_secs(20));
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let started = Instant::now();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the connection was closed by the server"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(text.is_empty() || text.contains("408"), "{text}");
    // The server is fine.
    assert_eq!(http(&cache.addr, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn connections_beyond_the_limit_wait_their_turn() {
    let upstream = Upstream::start().unwrap();
    let cache = Gitcache::start(&upstream, &["--max-connections", "1"]);
    // The one allowed connection, kept open.
    let mut first = std::net::TcpStream::connect(&cache.addr).unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(first.read(&mut buf).unwrap() > 0);
    // A second one is not served while the first is open...
    let mut second = std::net::TcpStream::connect(&cache.addr).unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let waiting = second.read(&mut buf);
    assert!(waiting.is_err(), "served beyond the limit: {waiting:?}");
    // ...and is once it closes.
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    second.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Issue 14: a signed push webhook refreshes the mirror, so the next fetch of the new commit
/// is a hit; unsigned or wrongly signed events are refused, events for repositories not
/// mirrored here create nothing, and an event replayed (or of a push the mirror has, or
/// saying nothing was pushed) refreshes nothing.
#[test]
fn a_signed_push_webhook_refreshes_the_mirror() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    repo::generate(&source, &RepoSpec::tiny(1401)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &["--webhook-secret", "s3cret"]);
    let git = GitClient::new().unwrap();
    let clone = git.home().join("w");
    git.run(
        git.home(),
        &[
            "clone",
            "-q",
            &cache.url("acme/widgets"),
            clone.to_str().unwrap(),
        ],
    )
    .unwrap()
    .expect_success();
    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    // Enough to need a consolidation after (over a thousand objects beside the mirror's
    // consolidated pack).
    let tip = repo::append_commits(&source, "main", 250, 1402).unwrap();

    let event = |name: &str| {
        format!(
            r#"{{"ref":"refs/heads/main","after":"{tip}","repository":{{"full_name":"{name}","clone_url":"{}"}}}}"#,
            upstream.repo_url(name)
        )
    };
    let body = event("acme/widgets");
    let post = |headers: &[(&str, &str)], body: &str| {
        http(
            &cache.addr,
            "POST",
            "/api/hooks/push",
            headers,
            body.as_bytes(),
        )
        .status
    };
    let github = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", body.as_bytes())
    );
    let forged = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"guess", body.as_bytes())
    );
    upstream.reset_counts();
    assert_eq!(post(&[("X-GitHub-Event", "push")], &body), 401, "unsigned");
    assert_eq!(
        post(
            &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &forged)],
            &body
        ),
        401,
        "signed with another secret"
    );
    assert_eq!(
        upstream.counts().fetch,
        0,
        "refused events ask nothing upstream"
    );

    // The metrics anyone may read on this port say nothing of the webhook's refresh: the
    // secret's holders could tell from them what is mirrored here.
    let warm_lines = || {
        let metrics = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("gitcache_cache_warm_total")
                    || l.starts_with("gitcache_mirror_refresh_duration_seconds_count")
                    || l.starts_with("gitcache_mirror_maintenance")
            })
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
    };
    // A delivery whose refresh fails (the upstream's listing fails) counts as seen for a
    // minute only (a redelivery then refreshes; `a_push_seen_lately_is_seen_again`): one
    // sent again at once refreshes nothing. A push of another branch, so that the one above
    // stays new.
    let side = body.replace("refs/heads/main", "refs/heads/side");
    let side_signed = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", side.as_bytes())
    );
    upstream.inject(Fault::Status(500), 1, Some(RequestKind::LsRefs));
    for _ in 0..2 {
        assert_eq!(
            post(
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", &side_signed)
                ],
                &side
            ),
            202
        );
        cache.log_with("a redelivery in a minute refreshes", 1);
    }
    assert_eq!(
        upstream.counts().ls_refs,
        1,
        "one refresh, failed: {}",
        cache.log()
    );
    upstream.reset_counts();

    let warmed_before = warm_lines();
    let logged_before = common::count(&cache.log(), "mirror warmed");
    assert_eq!(
        post(
            &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &github)],
            &body
        ),
        202
    );
    wait_for("the mirror to hold the pushed commit", || {
        git_stdout(&mirror, &["rev-parse", "main"]).trim() == tip
    });
    // Once the refresh has ended (and would have been counted), and the consolidation its
    // commits would start has had time to end (it would be counted too).
    cache.log_with("mirror warmed", logged_before + 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(warm_lines(), warmed_before);
    assert_eq!(upstream.counts().fetch, 1, "one refresh");
    upstream.reset_counts();
    git.run(&clone, &["fetch", "-q", "origin"])
        .unwrap()
        .expect_success();
    assert_eq!(git.rev_parse(&clone, "origin/main").unwrap(), tip);
    fsck(&clone);
    assert_eq!(
        upstream.counts().fetch,
        0,
        "the fetch after the push is a hit"
    );
    // That request opened the mirror, and took up the maintenance the webhook left.
    let consolidated = |lines: &std::collections::BTreeSet<String>| {
        lines
            .iter()
            .find_map(|l| {
                l.strip_prefix("gitcache_mirror_maintenance_total{result=\"consolidated\"} ")
            })
            .map(|n| n.parse::<f64>().unwrap())
    };
    let before = consolidated(&warmed_before).unwrap();
    wait_for("the mirror to be consolidated", || {
        consolidated(&warm_lines()) == Some(before + 1.0)
    });

    // The same event again (replayed, or redelivered), and one saying of another ref what
    // the mirror has already: accepted, and nothing asked upstream.
    let head_moved = body.replace("refs/heads/main", "HEAD");
    let head_signed = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", head_moved.as_bytes())
    );
    // A signed event of another kind relabelled as a push: it says nothing was pushed.
    let star = format!(
        r#"{{"action":"created","repository":{{"full_name":"acme/widgets","clone_url":"{}"}}}}"#,
        upstream.repo_url("acme/widgets")
    );
    let star_signed = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", star.as_bytes())
    );
    upstream.reset_counts();
    for (event, signature) in [
        (&body, &github),
        (&head_moved, &head_signed),
        (&star, &star_signed),
    ] {
        assert_eq!(
            post(
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", signature)
                ],
                event
            ),
            202
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let counts = upstream.counts();
    assert_eq!(
        (counts.info_refs, counts.ls_refs, counts.fetch),
        (0, 0, 0),
        "nothing refreshed"
    );

    // A push overtaken by a later one before its event came: the refresh brings the later
    // push, which holds the first; the first is seen for the full while, so its replays
    // refresh nothing.
    let later = repo::append_commits(&source, "main", 1, 1404).unwrap();
    let overtaken = repo::append_commits(&source, "main", 1, 1405).unwrap();
    let old_event = body.replace(&tip, &later);
    let old_signed = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", old_event.as_bytes())
    );
    let warmed = common::count(&cache.log(), "mirror warmed");
    let push_old = || {
        post(
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &old_signed),
            ],
            &old_event,
        )
    };
    assert_eq!(push_old(), 202);
    cache.log_with("mirror warmed", warmed + 1);
    wait_for("the mirror to hold the later push", || {
        git_stdout(&mirror, &["rev-parse", "main"]).trim() == overtaken
    });
    std::thread::sleep(Duration::from_millis(200));
    upstream.reset_counts();
    assert_eq!(push_old(), 202);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(upstream.counts().ls_refs, 0, "the replay refreshed nothing");
    assert_eq!(common::count(&cache.log(), "a redelivery in a minute"), 1);

    // Gitea's signature header; a repository the upstream has and the cache does not mirror:
    // nothing is created, nothing asked upstream.
    repo::generate(&upstream.repo_path("acme/elsewhere"), &RepoSpec::tiny(1403)).unwrap();
    upstream
        .adopt_repo("acme/elsewhere", Access::Public)
        .unwrap();
    upstream.reset_counts();
    let other = event("acme/elsewhere");
    let gitea = gitcache_http::webhook::sign(b"s3cret", other.as_bytes());
    assert_eq!(
        post(
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &gitea)],
            &other
        ),
        202
    );
    // A signed event that is not a push (GitHub's ping) is accepted and does nothing.
    let ping = r#"{"zen":"Keep it logically awesome."}"#;
    let signed = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret", ping.as_bytes())
    );
    assert_eq!(
        post(
            &[("X-GitHub-Event", "ping"), ("X-Hub-Signature-256", &signed)],
            ping
        ),
        202
    );
    // A compressed event is refused before it is read.
    assert_eq!(
        post(
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &github),
                ("Content-Encoding", "gzip")
            ],
            &body
        ),
        415
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!cache.mirror(&upstream, "acme/elsewhere").exists());
    let counts = upstream.counts();
    assert_eq!(
        counts.info_refs + counts.ls_refs + counts.fetch + counts.other,
        0,
        "nothing asked upstream: {counts:?}"
    );
}

/// Webhook events being read hold shares of a byte budget, not a few slots: senders that
/// trickle their bodies do not keep a forge's events out; bodies that hold the whole budget
/// do, until they are gone.
#[test]
fn slow_webhook_senders_hold_shares_not_the_intake() {
    let upstream = Upstream::start().unwrap();
    let cache = Gitcache::start(&upstream, &["--webhook-secret", "s3cret-for-the-hooks"]);
    let ping = r#"{"zen":"Keep it logically awesome."}"#;
    let signed = format!(
        "sha256={}",
        gitcache_http::webhook::sign(b"s3cret-for-the-hooks", ping.as_bytes())
    );
    let post_ping = || {
        http(
            &cache.addr,
            "POST",
            "/api/hooks/push",
            &[("X-GitHub-Event", "ping"), ("X-Hub-Signature-256", &signed)],
            ping.as_bytes(),
        )
        .status
    };
    // Senders that stop after a few bytes of a body they said was longer.
    let holding = |count: usize, sent: usize| {
        (0..count)
            .map(|_| {
                let mut stream = common::connect(&cache.addr, Duration::from_secs(20));
                let head = format!(
                    "POST /api/hooks/push HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: {}\r\n\r\n",
                    1 << 20
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&vec![b'{'; sent]).unwrap();
                stream
            })
            .collect::<Vec<_>>()
    };
    let trickling = holding(8, 10);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(post_ping(), 202, "eight trickling senders keep nothing out");
    drop(trickling);
    // Sixty-four nearly whole bodies of 1 MiB hold the 64 MiB.
    let filling = holding(64, (1 << 20) - 100);
    wait_for("the events' budget to be held", || post_ping() == 503);
    drop(filling);
    wait_for("the budget to be given back", || post_ping() == 202);
}

/// Issue 14: with a refresh interval, mirrors in use are refreshed in the background (no
/// client asking), and nothing else is.
#[test]
fn scheduled_refreshes_keep_mirrors_in_use_fresh() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/busy");
    repo::generate(&source, &RepoSpec::tiny(1401)).unwrap();
    upstream.adopt_repo("acme/busy", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &["--refresh-interval", "1"]);
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", &cache.url("acme/busy"), "work"],
    )
    .unwrap()
    .expect_success();
    let mirror = cache.mirror(&upstream, "acme/busy");
    common::wait_for_mirror(&mirror, &source);
    let tip = repo::append_commits(&source, "main", 2, 1402).unwrap();
    wait_for("the scheduled refresh", || {
        git_stdout(
            &mirror,
            &["for-each-ref", "--format=%(objectname)", "refs/heads/main"],
        )
        .trim()
            == tip
    });
    fsck(&mirror);
    cache.log_with("scheduled refresh", 1);
    // The client's next fetch is a hit: the new commits are there already.
    upstream.reset_counts();
    git.run(&git.home().join("work"), &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(
        git_stdout(&git.home().join("work"), &["rev-parse", "HEAD"]).trim(),
        tip
    );
    let fetches_for_the_client: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Fetch)
        .collect();
    // Scheduled refreshes go on meanwhile, but find nothing new to fetch.
    assert!(
        fetches_for_the_client.is_empty(),
        "{fetches_for_the_client:?}"
    );
}

/// A repository whose catalog record was disabled after it was last used is not refreshed
/// on schedule any more: the schedule goes by the record as it is now.
#[test]
fn a_disabled_record_stops_its_scheduled_refreshes() {
    const TOKEN: &str = "scheduled-admin-token";
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/paused");
    repo::generate(&source, &RepoSpec::tiny(1403)).unwrap();
    upstream.adopt_repo("acme/paused", Access::Public).unwrap();
    let flags = ["--refresh-interval", "1", "--admin-token", TOKEN];
    let cache = Gitcache::start(&upstream, &flags);
    let api = |method: &str, path: &str, body: &str| {
        let auth = format!("Bearer {TOKEN}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        http(&cache.addr, method, path, &headers, body.as_bytes())
    };
    let created = api(
        "POST",
        "/api/cached-repos",
        r#"{"owner":"acme","name":"paused"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body_text());
    let id = serde_json::from_slice::<serde_json::Value>(&created.content()).unwrap()["id"]
        .as_i64()
        .unwrap();
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", &cache.url("acme/paused"), "work"],
    )
    .unwrap()
    .expect_success();
    let mirror = cache.mirror(&upstream, "acme/paused");
    common::wait_for_mirror(&mirror, &source);
    let main = || {
        git_stdout(
            &mirror,
            &["for-each-ref", "--format=%(objectname)", "refs/heads/main"],
        )
        .trim()
        .to_owned()
    };
    // Scheduled while enabled.
    let tip = repo::append_commits(&source, "main", 1, 1404).unwrap();
    wait_for("the scheduled refresh", || main() == tip);

    let disabled = api(
        "PATCH",
        &format!("/api/cached-repos/{id}"),
        r#"{"enabled":false}"#,
    );
    assert_eq!(disabled.status, 200, "{}", disabled.body_text());
    upstream.reset_counts();
    repo::append_commits(&source, "main", 1, 1405).unwrap();
    // Several intervals: a schedule going by the record as it was would have fetched.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(main(), tip, "not refreshed");
    assert_eq!(upstream.counts().ls_refs, 0);
}

/// A client still being sent the answer its fetch waited for (a miss) holds the new mirror's
/// maintenance back, which would take the cores that answer needs: the first pack gets its
/// bitmaps once the answer is handed over.
#[test]
fn a_miss_still_being_sent_holds_the_mirrors_maintenance_back() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/heavy");
    // Files of 4-5 MiB at the tip: an answer far larger than the sockets hold.
    let spec = RepoSpec {
        large_every: 24,
        large_bytes: 4 << 20,
        ..RepoSpec::small(703)
    };
    repo::generate(&source, &spec).unwrap();
    upstream.adopt_repo("acme/heavy", Access::Public).unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &[]);
    let mirror = cache.mirror(&upstream, "acme/heavy");
    let bitmaps = || {
        std::fs::read_dir(mirror.join("objects/pack"))
            .unwrap()
            .any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".bitmap")
            })
    };

    // The history of main, read no further than its first bytes.
    let body = fetch_body(&main, &["ofs-delta", "no-progress"]);
    let mut stream = common::connect(&cache.addr, Duration::from_secs(60));
    write!(
        stream,
        "POST /acme/heavy.git/git-upload-pack HTTP/1.1\r\nHost: {}\r\nGit-Protocol: version=2\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        cache.addr,
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The answer has begun, so the mirror is made (its first pack marked with its tips);
    // its bitmaps wait, for longer than writing them takes.
    common::wait_for_tips_mark(&mirror);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!bitmaps(), "maintained while the answer was being sent");

    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        n + rest.len() > 16 << 20,
        "the answer: {} bytes",
        n + rest.len()
    );
    common::wait_for_bitmaps(&mirror);
}
