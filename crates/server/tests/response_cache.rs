//! The response cache: repeated fetches are sent a stored file, simultaneous identical ones
//! share one generation, damaged or unfinished entries are never served.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Gitcache, count, fetch_body, fsck, http, wait_for};
use gitcache_protocol::request::{Command, Limits, parse_request};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

const PATH: &str = "/acme/widgets.git/git-upload-pack";

fn setup(seed: u64) -> (Upstream, String) {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    repo::generate(&source, &RepoSpec::small(seed)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    (upstream, main)
}

fn depth1(main: &str) -> Vec<u8> {
    fetch_body(
        main,
        &[
            "thin-pack",
            "ofs-delta",
            "include-tag",
            "no-progress",
            "deepen 1",
        ],
    )
}

/// Make the mirror with a clone of everything (sent the pack as it is, never stored) and wait
/// for its bitmaps, after which the same request gets the same answer.
fn prime(cache: &Gitcache, upstream: &Upstream) {
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/widgets");
    git.run(git.home(), &["clone", "-q", "--bare", &url, "prime.git"])
        .unwrap()
        .expect_success();
    common::wait_for_bitmaps(&cache.mirror(upstream, "acme/widgets"));
    // Answers made before the mirror is opened again after its maintenance may differ in
    // their bytes from those made after (other packs, other deltas).
    cache.log_with("maintained mirror opened again and prepared", 1);
}

fn post(cache: &Gitcache, body: &[u8]) -> Vec<u8> {
    let answer = http(
        &cache.addr,
        "POST",
        PATH,
        &[("Git-Protocol", "version=2")],
        body,
    );
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    answer.content()
}

fn entries(cache: &Gitcache) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![cache.data.path().join("responses")];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = e.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// What gitcache-pack generates for `body` from `mirror`, directly.
fn generated(mirror: &Path, body: &[u8]) -> Vec<u8> {
    let request = parse_request(body, Limits::default()).unwrap().unwrap();
    let Command::Fetch(fetch) = &request.command else {
        panic!("not a fetch")
    };
    let repo = gitcache_pack::Repository::open(mirror).unwrap();
    let plan = gitcache_pack::plan(
        &repo,
        fetch,
        request.capabilities.object_format(),
        &gitcache_pack::Options::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    plan.write_to(&mut out).unwrap();
    out
}

#[test]
fn a_stored_response_is_byte_for_byte_the_generated_one() {
    let (upstream, main) = setup(801);
    let cache = Gitcache::start(&upstream, &[]);
    prime(&cache, &upstream);
    let body = depth1(&main);
    let first = post(&cache, &body);
    let second = post(&cache, &body);
    let third = post(&cache, &body);
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(
        first,
        generated(&cache.mirror(&upstream, "acme/widgets"), &body)
    );
    let log = cache.log_with("cache=\"stored\"", 2);
    assert_eq!(count(&log, "response generated"), 1, "{log}");
    assert_eq!(count(&log, "cache=\"stored\""), 2, "{log}");
    let stored = entries(&cache);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].to_string_lossy().ends_with(".resp"));

    // A different request is a different entry.
    let other = fetch_body(&main, &["ofs-delta", "no-progress", "deepen 2"]);
    assert_ne!(post(&cache, &other), first);
    assert_eq!(entries(&cache).len(), 2);
}

#[test]
fn fifty_concurrent_identical_clones_cost_one_generation() {
    let (upstream, _) = setup(802);
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/widgets");
    std::thread::scope(|scope| {
        let clones: Vec<_> = (0..50)
            .map(|i| {
                let (git, url) = (&git, &url);
                scope.spawn(move || {
                    git.run(
                        git.home(),
                        &["clone", "-q", "--depth=1", url, &format!("c{i}")],
                    )
                    .unwrap()
                })
            })
            .collect();
        for clone in clones {
            clone.join().unwrap().expect_success();
        }
    });
    for i in [0, 17, 49] {
        fsck(&git.home().join(format!("c{i}")));
    }
    let log = cache.log_with("response generated", 1);
    assert_eq!(count(&log, "response generated"), 1, "{log}");
    assert_eq!(upstream.counts().fetch, 1);
}

#[test]
fn unfinished_or_damaged_entries_are_never_served_after_a_crash() {
    let (upstream, main) = setup(803);
    let cache = Gitcache::start(&upstream, &[]);
    prime(&cache, &upstream);
    let body = depth1(&main);
    let original = post(&cache, &body);
    let stored = entries(&cache);
    assert_eq!(stored.len(), 1);

    // As a crash mid-write leaves things: an unfinished temporary, and an entry cut short.
    let entry = stored[0].clone();
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let leftover = entry.with_extension("resp.tmp-999-0");
    std::fs::write(&leftover, &bytes[..100]).unwrap();
    let cache = cache.crash_and_restart(&upstream, &[]);
    assert!(!leftover.exists(), "leftovers are removed at start");
    assert_eq!(post(&cache, &body), original);
    let log = cache.log_with("response generated", 1);
    assert_eq!(count(&log, "response generated"), 1, "regenerated");

    // A restarted server sends the stored entry, right bytes, no generation.
    let cache = cache.crash_and_restart(&upstream, &[]);
    assert_eq!(post(&cache, &body), original);
    let log = cache.log_with("cache=\"stored\"", 1);
    assert_eq!(count(&log, "response generated"), 0, "{log}");

    // A flipped byte: the response is broken off, never completed, and the entry removed.
    let entry = entries(&cache).pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let answer = http(
        &cache.addr,
        "POST",
        PATH,
        &[("Git-Protocol", "version=2")],
        &body,
    );
    assert!(
        !answer.body.ends_with(b"0\r\n\r\n"),
        "a corrupt entry is not completed"
    );
    assert!(!entry.exists());
    assert_eq!(post(&cache, &body), original);
}

#[test]
fn eviction_keeps_repositories_under_their_limit() {
    let (upstream, main) = setup(804);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--response-cache-max-repo-bytes",
            "1",
            "--response-cache-cleanup-interval",
            "1",
        ],
    );
    // Twice: the first answer of a mirror being made may be written live, not stored (an
    // answer begun from the objects found early, given up once the mirror was there first,
    // leaves its readers to finish live); the second is a mirror's, stored.
    post(&cache, &depth1(&main));
    post(&cache, &depth1(&main));
    wait_evicted(&cache, "never evicted");
}

/// Until `cache` has no stored answer left and logged their eviction (30 s at most, else
/// fail with `otherwise`).
fn wait_evicted(cache: &Gitcache, otherwise: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !entries(cache).is_empty() {
        assert!(Instant::now() < deadline, "{otherwise}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cache
            .log_with("responses evicted", 1)
            .contains("responses evicted")
    );
}

/// Stored answers past an eighth of the cache's limit since the last eviction bring the
/// next one forward: the limit holds between cleanups too (here an hour apart).
#[test]
fn storing_much_brings_the_eviction_forward() {
    let (upstream, main) = setup(806);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--response-cache-max-bytes",
            "8",
            "--response-cache-cleanup-interval",
            "3600",
        ],
    );
    post(&cache, &depth1(&main));
    wait_evicted(&cache, "not evicted before the interval");
}

/// Entries past the cap on their number go, least recently used first, and storing an
/// eighth of it since the last eviction brings the next one forward (here the interval is an
/// hour): however small the answers, their count stays bounded.
#[test]
fn entries_past_their_cap_are_evicted() {
    let (upstream, main) = setup(809);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--response-cache-max-entries",
            "1",
            "--response-cache-cleanup-interval",
            "3600",
            "--catalog-reload-interval",
            "1",
        ],
    );
    let first = depth1(&main);
    post(&cache, &first);
    assert_eq!(entries(&cache).len(), 1);
    std::thread::sleep(Duration::from_millis(20));
    // Asked for until stored: past the cap, an answer waits for an eviction to be stored.
    let second = fetch_body(&main, &["ofs-delta", "no-progress", "deepen 2"]);
    let mut kept = Vec::new();
    wait_for("the older entry evicted", || {
        kept = post(&cache, &second);
        cache.log().contains("responses evicted") && entries(&cache).len() == 1
    });
    let log = cache.log();
    assert_eq!(post(&cache, &second), kept);
    assert_eq!(
        count(&cache.log(), "response generated"),
        count(&log, "response generated"),
        "the newer is still stored"
    );
}

#[test]
fn admission_on_the_second_request_and_turning_the_cache_off() {
    let (upstream, main) = setup(805);
    let body = depth1(&main);
    let cache = Gitcache::start(&upstream, &["--response-cache-admit-second"]);
    prime(&cache, &upstream);
    let first = post(&cache, &body);
    assert!(entries(&cache).is_empty(), "not stored the first time");
    assert_eq!(post(&cache, &body), first);
    assert_eq!(entries(&cache).len(), 1, "stored the second time");

    let off = Gitcache::start(&upstream, &["--response-cache", "false"]);
    prime(&off, &upstream);
    assert_eq!(post(&off, &body), post(&off, &body));
    assert!(entries(&off).is_empty());
    assert_eq!(count(&off.log(), "response generated"), 0);
}

/// A clone answered by sending the mirror's marked pack as it is is not stored again: its
/// first answer is already the time of reading that file.
#[test]
fn whole_pack_answers_are_not_stored_again() {
    let (upstream, _) = setup(806);
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/widgets");
    git.run(git.home(), &["clone", "-q", "--bare", &url, "first.git"])
        .unwrap()
        .expect_success();
    common::wait_for_tips_mark(&cache.mirror(&upstream, "acme/widgets"));
    let stored_before = entries(&cache);
    let generated_before = count(&cache.log(), "response generated");
    for name in ["second.git", "third.git"] {
        git.run(git.home(), &["clone", "-q", "--bare", &url, name])
            .unwrap()
            .expect_success();
        fsck(&git.home().join(name));
    }
    let log = cache.log_with("whole_pack=true", 2);
    assert_eq!(count(&log, "response generated"), generated_before, "{log}");
    assert_eq!(entries(&cache), stored_before);
}

/// A request sent on a connection whose client reads nothing (a receive buffer of a few KiB:
/// the response stops once the buffers between are full). Dropping it closes the connection.
fn send_unread(addr: &str, body: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 10).unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nGit-Protocol: version=2\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
}

/// Wait until `/metrics` shows `line`; fails the test after a minute, with the metrics and
/// the server's log.
fn wait_for_metric(cache: &Gitcache, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for '{line}' on /metrics:\n{text}\n{}",
            cache.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first client of a response (its leader) leaves while the generation waits for a pack
/// slot: the client that joined it is still answered, with the one generation.
#[test]
fn a_leader_leaving_while_its_generation_waits_for_a_slot_leaves_followers_answered() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    // Over 10 MB of incompressible files: a whole clone fills every buffer on its way to a
    // client that does not read.
    let spec = RepoSpec {
        large_every: 10,
        ..RepoSpec::small(807)
    };
    repo::generate(&source, &spec).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(
        &upstream,
        &[
            "--max-concurrent-packs",
            "1",
            "--response-cache-admit-second",
            // Nothing spilled: a live generation waits for its client, holding its slot.
            "--max-spilled-bytes",
            "0",
        ],
    );
    let depth1 = depth1(&main);
    // Asked once, read whole: the mirror is made, and the next ask of this body leads a
    // stored generation.
    post(&cache, &depth1);
    // The mirror's first maintenance over, and the first answer's slot given back: the slot
    // seen busy next is the occupant's.
    common::wait_for_bitmaps(&cache.mirror(&upstream, "acme/widgets"));
    cache.log_with("maintained mirror opened again and prepared", 1);
    wait_for_metric(&cache, "gitcache_pack_slots{state=\"busy\"} 0");
    // A whole clone without offset deltas (no stored pack is sent as it is), asked for the
    // first time (generated live), to a client that reads nothing: it holds the only slot.
    let occupant = send_unread(&cache.addr, &fetch_body(&main, &["no-progress"]));
    wait_for_metric(&cache, "gitcache_pack_slots{state=\"busy\"} 1");
    // The leader asks; its generation waits for the slot.
    let leader = send_unread(&cache.addr, &depth1);
    wait_for_metric(&cache, "gitcache_pack_slots{state=\"waiting\"} 1");
    // A second client joins that generation.
    let follower = {
        let (addr, body) = (cache.addr.clone(), depth1.clone());
        std::thread::spawn(move || {
            http(&addr, "POST", PATH, &[("Git-Protocol", "version=2")], &body)
        })
    };
    cache.log_with("cache=\"joined\"", 1);
    // The leader leaves, and the server has seen it go (in flight: the occupant, the
    // follower and the /metrics request asking); then the slot comes free.
    drop(leader);
    wait_for_metric(&cache, "gitcache_http_requests_in_flight 3");
    drop(occupant);
    let answer = follower.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(
        answer.content(),
        generated(&cache.mirror(&upstream, "acme/widgets"), &depth1)
    );
    let log = cache.log_with("response generated", 1);
    assert_eq!(count(&log, "response generated"), 1, "{log}");
    wait_for_metric(&cache, "gitcache_pack_slots{state=\"waiting\"} 0");
}

/// The repository behind a cached name replaced by another (a private repository renamed
/// away and a public one made under its name): the first clone of the new one finds its
/// history shares nothing with the mirror's, and the mirror and the stored answers go before
/// it is answered. Nothing of the old repository is served after: not by id, not as the
/// stored answer of the same request.
#[test]
fn a_repository_replaced_behind_its_name_serves_nothing_of_the_old_one() {
    let (upstream, main) = setup(807);
    let cache = Gitcache::start(&upstream, &["--admin-token", "replaced-test-admin-token"]);
    prime(&cache, &upstream);
    let body = depth1(&main);
    let old_answer = post(&cache, &body);
    assert_eq!(entries(&cache).len(), 1, "the old answer is stored");

    let source = upstream.repo_path("acme/widgets");
    upstream
        .replace_repo("acme/widgets", &RepoSpec::small(808), Access::Public)
        .unwrap();

    let git = GitClient::new().unwrap();
    let url = cache.url("acme/widgets");
    git.run(git.home(), &["clone", "-q", "--bare", &url, "new.git"])
        .unwrap()
        .expect_success();
    let new = git.home().join("new.git");
    fsck(&new);
    let refs = |repo: &Path| git_stdout(repo, &["show-ref"]);
    assert_eq!(refs(&new), refs(&source));
    assert!(entries(&cache).is_empty(), "{:?}", entries(&cache));
    let mirror = cache.mirror(&upstream, "acme/widgets");
    let has_old = std::process::Command::new("git")
        .args(["cat-file", "-e", &main])
        .current_dir(&mirror)
        .status()
        .unwrap()
        .success();
    assert!(!has_old, "the mirror keeps nothing of the old repository");

    let again = http(
        &cache.addr,
        "POST",
        PATH,
        &[("Git-Protocol", "version=2")],
        &body,
    );
    assert!(
        !again.has_pack() && again.content() != old_answer,
        "{}",
        again.body_text()
    );
    let fetched = git.run(&new, &["fetch", "-q", &url, &main]).unwrap();
    assert!(!fetched.success(), "the old commit is not fetched by id");
    let metrics = http(
        &cache.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer replaced-test-admin-token")],
        b"",
    );
    assert!(
        metrics
            .body_text()
            .contains("gitcache_mirrors_replaced_total 1"),
        "{}",
        metrics.body_text()
    );
}
