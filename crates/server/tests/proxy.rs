//! The real `git` client through the real binary in front of the testkit upstream (C git's
//! http-backend): clones and fetches served from mirrors, the access gate, passthrough.

mod common;

use std::path::{Path, PathBuf};

use common::{Gitcache, basic, fetch_body, fsck, http, pkt};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};

fn refs(repo: &Path) -> String {
    git_stdout(repo, &["for-each-ref", "--format=%(objectname) %(refname)"])
}

/// The upstream's next pack comes slowly: a clone's `ls-refs` starts the mirror's refresh,
/// and the clone's fetch then finds it running and joins it, as it does for a large
/// repository (not a refresh already over).
fn slow_next_pack(upstream: &Upstream) {
    upstream.inject(
        Fault::Delay(std::time::Duration::from_millis(800)),
        1,
        Some(RequestKind::Fetch),
    );
}

/// The upstream's next pack comes `chunk` bytes at a time, `every_ms` apart.
fn trickle_next_pack(upstream: &Upstream, chunk: usize, every_ms: u64) {
    let every = std::time::Duration::from_millis(every_ms);
    upstream.inject(Fault::Trickle { chunk, every }, 1, Some(RequestKind::Fetch));
}

/// After a fetch of `tip` into `work`'s `origin/main` (whole): the answers sent as their
/// packs arrived are `arrived` now, and the mirror of `acme/app`, whole, took that pack in
/// and moved its refs, one pack fetched upstream in all.
fn followed_and_taken_in(
    cache: &Gitcache,
    upstream: &Upstream,
    (work, tip): (&Path, &str),
    arrived: usize,
) {
    let origin = git_stdout(work, &["rev-parse", "refs/remotes/origin/main"]);
    assert_eq!(origin.trim(), tip);
    fsck(work);
    cache.log_with("arriving=true", arrived);
    mirrored(cache, upstream, "acme/app");
    fsck(&cache.mirror(upstream, "acme/app"));
    assert_eq!(upstream.counts().fetch, 1, "one pack fetched upstream");
}

/// How many answers the cache has sent as their packs arrived, so far.
fn arrived(cache: &Gitcache) -> usize {
    common::count(&cache.log(), "arriving=true")
}

/// `name`'s source upstream and its mirror, once the mirror holds the same refs.
fn mirrored(cache: &Gitcache, upstream: &Upstream, name: &str) -> (PathBuf, PathBuf) {
    let source = upstream.repo_path(name);
    let mirror = cache.mirror(upstream, name);
    common::wait_for_mirror(&mirror, &source);
    (source, mirror)
}

fn public_repo(upstream: &Upstream, name: &str, spec: &RepoSpec) {
    repo::generate(&upstream.repo_path(name), spec).unwrap();
    upstream.adopt_repo(name, Access::Public).unwrap();
}

#[test]
fn clones_are_served_from_the_mirror_and_a_second_clone_is_a_hit() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::small(401));
    let source = upstream.repo_path("acme/widgets");
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    git.run(&home, &["clone", "-q", &cache.url("acme/widgets"), "one"])
        .unwrap()
        .expect_success();
    fsck(&home.join("one"));
    assert_eq!(
        git.rev_parse(&home.join("one"), "HEAD").unwrap(),
        git.rev_parse(&source, "main").unwrap()
    );
    // Tags came along (annotated ones included).
    assert_eq!(
        git_stdout(&home.join("one"), &["tag"]),
        git_stdout(&source, &["tag"])
    );
    let mirror = cache.mirror(&upstream, "acme/widgets");
    // The mirror's first pack gets marked with its tips, so that clones are sent it as it
    // is (the clone may have been answered as that pack arrived, before).
    common::wait_for_tips_mark(&mirror);
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);

    upstream.reset_counts();
    git.run(
        &home,
        &[
            "clone",
            "-q",
            "--bare",
            &cache.url("acme/widgets"),
            "two.git",
        ],
    )
    .unwrap()
    .expect_success();
    fsck(&home.join("two.git"));
    assert_eq!(refs(&home.join("two.git")), refs(&source));
    cache.log_with("whole_pack=true", 1);
    let counts = upstream.counts();
    assert_eq!(
        counts.fetch, 0,
        "a hit asks upstream for no pack: {counts:?}"
    );
    assert!(counts.info_refs >= 1 && counts.ls_refs >= 1, "{counts:?}");

    // New commits upstream: a fetch through the cache brings them.
    let tip = repo::append_commits(&source, "main", 3, 9).unwrap();
    git.run(&home.join("one"), &["fetch", "-q", "origin"])
        .unwrap()
        .expect_success();
    assert_eq!(
        git.rev_parse(&home.join("one"), "origin/main").unwrap(),
        tip
    );
    fsck(&home.join("one"));

    // ls-remote lists what upstream has.
    let listed = git
        .run(&home, &["ls-remote", &cache.url("acme/widgets")])
        .unwrap()
        .expect_success()
        .stdout;
    assert!(
        listed.contains(&format!("{tip}\trefs/heads/main")),
        "{listed}"
    );
}

/// An upstream whose front end puts git's v0 preamble (`# service=git-upload-pack` and a
/// flush) before its v2 advertisement, as git's own client accepts, is cached: the clone is
/// answered from a mirror, not passed through as an upstream that speaks no v2.
#[test]
fn an_upstream_sending_the_v0_preamble_before_v2_is_cached() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/preamble", &RepoSpec::small(402));
    upstream.inject(Fault::ServicePreamble, 1000, Some(RequestKind::InfoRefs));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    git.run(&home, &["clone", "-q", &cache.url("acme/preamble"), "one"])
        .unwrap()
        .expect_success();
    fsck(&home.join("one"));
    let (source, _mirror) = mirrored(&cache, &upstream, "acme/preamble");
    assert_eq!(
        git.rev_parse(&home.join("one"), "HEAD").unwrap(),
        git.rev_parse(&source, "main").unwrap()
    );
    upstream.reset_counts();
    git.run(&home, &["clone", "-q", &cache.url("acme/preamble"), "two"])
        .unwrap()
        .expect_success();
    let counts = upstream.counts();
    assert_eq!(counts.fetch, 0, "answered from the mirror: {counts:?}");
    assert!(
        counts.info_refs >= 1,
        "the preamble was still sent: {counts:?}"
    );
}

/// An upstream whose `info/refs` is no v2 advertisement is passed on as it answered: a dumb
/// server's listing (not smart HTTP's type, as git's client tells them apart) and a v0
/// advertisement longer than the gate reads of one, whole. A v2 advertisement that long is
/// refused.
#[test]
fn info_refs_that_is_no_v2_advertisement_is_passed_on_whole() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/old", &RepoSpec::tiny(403));
    let cache = Gitcache::start(&upstream, &[]);
    let oid = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
    let get = || {
        http(
            &cache.addr,
            "GET",
            "/acme/old.git/info/refs?service=git-upload-pack",
            &[("Git-Protocol", "version=2")],
            b"",
        )
    };

    // The upstream's next answer to `info/refs`.
    let next_info_refs = |content_type, body: Vec<u8>| {
        upstream.inject(
            Fault::ReplayAs { content_type, body },
            1,
            Some(RequestKind::InfoRefs),
        )
    };
    let dumb = format!("{oid}\trefs/heads/main\n").into_bytes();
    next_info_refs("text/plain", dumb.clone());
    let answer = get();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(answer.content(), dumb);
    assert_eq!(answer.header("content-type").as_deref(), Some("text/plain"));
    // It granted nothing: a v2 request after it is checked upstream again, and with the
    // upstream still answering so, goes to the upstream as it came.
    next_info_refs("text/plain", dumb.clone());
    upstream.reset_counts();
    let mut ls_refs = Vec::new();
    pkt(&mut ls_refs, "command=ls-refs");
    pkt(&mut ls_refs, "object-format=sha1");
    ls_refs.extend_from_slice(b"0001");
    pkt(&mut ls_refs, "ref-prefix refs/heads/");
    ls_refs.extend_from_slice(b"0000");
    let listed = http(
        &cache.addr,
        "POST",
        "/acme/old.git/git-upload-pack",
        &[
            ("Git-Protocol", "version=2"),
            ("Content-Type", "application/x-git-upload-pack-request"),
        ],
        &ls_refs,
    );
    assert_eq!(listed.status, 200, "{}", listed.body_text());
    let counts = upstream.counts();
    assert_eq!((counts.info_refs, counts.ls_refs), (1, 1), "{counts:?}");
    common::wait_for("the request logged as passed through", || {
        cache.log().lines().any(|line| {
            line.contains("method=POST") && line.contains("cache_state=\"passthrough\"")
        })
    });

    let mut v0 = Vec::new();
    pkt(&mut v0, "# service=git-upload-pack");
    v0.extend_from_slice(b"0000");
    pkt(
        &mut v0,
        &format!("{oid} HEAD\0multi_ack side-band-64k ofs-delta"),
    );
    let mut branch = 0;
    while v0.len() <= 1_200_000 {
        pkt(&mut v0, &format!("{oid} refs/heads/branch-{branch}"));
        branch += 1;
    }
    v0.extend_from_slice(b"0000");
    let advertisement = "application/x-git-upload-pack-advertisement";
    next_info_refs(advertisement, v0.clone());
    let answer = get();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert!(answer.content() == v0, "the v0 advertisement, whole");

    let mut v2 = Vec::new();
    pkt(&mut v2, "version 2");
    while v2.len() <= 1_200_000 {
        pkt(&mut v2, &format!("agent=git/{}", "x".repeat(1000)));
    }
    v2.extend_from_slice(b"0000");
    next_info_refs(advertisement, v2);
    let answer = get();
    assert_eq!(answer.status, 502, "{}", answer.body_text());
    // The log is read as the server writes it.
    common::wait_for("the cause logged", || {
        cache
            .log()
            .contains("a v2 advertisement over 1048576 bytes")
    });
}

#[test]
fn the_actions_checkout_fetch_with_an_extraheader_credential() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/private"), &RepoSpec::small(402)).unwrap();
    upstream
        .adopt_repo("acme/private", Access::private(["ghs_token"]))
        .unwrap();
    let sha = git_stdout(&upstream.repo_path("acme/private"), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let work = git.home().join("work");
    std::fs::create_dir(&work).unwrap();

    let checkout = |dir: &Path| {
        git.run(dir, &["init", "-q"]).unwrap().expect_success();
        git.run(
            dir,
            &["remote", "add", "origin", &cache.url("acme/private")],
        )
        .unwrap()
        .expect_success();
        let header = format!("http.extraheader=AUTHORIZATION: {}", basic("ghs_token"));
        let refspec = format!("+{sha}:refs/remotes/origin/main");
        let mut fetch = vec!["-c", &header];
        fetch.extend(gitcache_testkit::git::CHECKOUT_FETCH);
        fetch.push(&refspec);
        git.run(dir, &fetch).unwrap().expect_success();
        git.run(dir, &["checkout", "-q", "refs/remotes/origin/main"])
            .unwrap()
            .expect_success();
        fsck(dir);
        assert_eq!(
            git_stdout(dir, &["rev-list", "--count", "HEAD"]).trim(),
            "1"
        );
    };
    checkout(&work);
    // The client sent no ls-refs (the mirror's own refresh did, as gitcache).
    let client_ls_refs = upstream
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::LsRefs)
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "user-agent" && v.starts_with("git/"))
        })
        .count();
    assert_eq!(client_ls_refs, 0, "actions/checkout sends no ls-refs");

    // Again, from scratch: a hit.
    upstream.reset_counts();
    let again = git.home().join("again");
    std::fs::create_dir(&again).unwrap();
    checkout(&again);
    assert_eq!(upstream.counts().fetch, 0);
}

#[test]
fn partial_clone_lazy_fetch_shallow_since_and_sha256() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::small(403));
    public_repo(&upstream, "acme/modern", &RepoSpec::tiny(404).sha256());
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    // blob:none, no checkout; the checkout afterwards fetches the blobs lazily.
    git.run(
        &home,
        &[
            "clone",
            "-q",
            "--filter=blob:none",
            "--no-checkout",
            &cache.url("acme/widgets"),
            "partial",
        ],
    )
    .unwrap()
    .expect_success();
    let partial = home.join("partial");
    let missing = git_stdout(
        &partial,
        &["rev-list", "--objects", "--missing=print", "HEAD"],
    );
    assert!(
        missing.lines().any(|l| l.starts_with('?')),
        "blobs were left out"
    );
    upstream.reset_counts();
    git.run(&partial, &["checkout", "-q", "main"])
        .unwrap()
        .expect_success();
    assert_eq!(upstream.counts().fetch, 0, "lazy blob fetches are hits");
    git.run(&partial, &["fsck", "--no-progress"])
        .unwrap()
        .expect_success();

    // --shallow-since: only commits after the date.
    let source = upstream.repo_path("acme/widgets");
    let dates = git_stdout(&source, &["log", "--format=%ct", "main"]);
    let dates: Vec<u64> = dates.lines().map(|l| l.parse().unwrap()).collect();
    let since = dates[dates.len() / 2];
    git.run(
        &home,
        &[
            "clone",
            "-q",
            &format!("--shallow-since={since}"),
            &cache.url("acme/widgets"),
            "since",
        ],
    )
    .unwrap()
    .expect_success();
    let count: usize = git_stdout(&home.join("since"), &["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        count > 0 && count < dates.len(),
        "{count} of {}",
        dates.len()
    );
    assert!(home.join("since/.git/shallow").is_file());
    fsck(&home.join("since"));

    // A SHA-256 repository.
    git.run(&home, &["clone", "-q", &cache.url("acme/modern"), "modern"])
        .unwrap()
        .expect_success();
    assert_eq!(
        git_stdout(&home.join("modern"), &["rev-parse", "--show-object-format"]).trim(),
        "sha256"
    );
    fsck(&home.join("modern"));
    let modern = upstream.repo_path("acme/modern");
    assert_eq!(
        git.rev_parse(&home.join("modern"), "HEAD").unwrap(),
        git.rev_parse(&modern, "main").unwrap()
    );
    assert_eq!(
        git_stdout(&home.join("modern"), &["tag"]),
        git_stdout(&modern, &["tag"])
    );
}

#[test]
fn the_access_gate() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/secret"), &RepoSpec::tiny(405)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["good"]))
        .unwrap();
    let sha = git_stdout(&upstream.repo_path("acme/secret"), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &["--access-ttl", "1"]);
    let v2 = ("Git-Protocol", "version=2");
    let good = basic("good");
    let wrong = basic("wrong");
    // A fetch exactly as CI sends it, with no info/refs or ls-refs before it.
    let fetch = |authorization: Option<&str>| {
        let mut headers = vec![
            v2,
            ("Content-Type", "application/x-git-upload-pack-request"),
        ];
        if let Some(value) = authorization {
            headers.push(("Authorization", value));
        }
        http(
            &cache.addr,
            "POST",
            "/acme/secret.git/git-upload-pack",
            &headers,
            &fetch_body(&sha, &[]),
        )
    };

    // No credential: the upstream's 401 and its challenge, as they are.
    let answer = http(
        &cache.addr,
        "GET",
        "/acme/secret.git/info/refs?service=git-upload-pack",
        &[v2],
        b"",
    );
    assert_eq!(answer.status, 401, "{}", answer.head);
    assert!(
        answer.header("www-authenticate").is_some(),
        "{}",
        answer.head
    );

    // Warm the mirror with the right credential.
    let answer = fetch(Some(&good));
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(answer.has_pack());

    // With the mirror warm, a fetch without a credential, or with a wrong one, gets not one
    // cached byte.
    let answer = fetch(None);
    assert_eq!(answer.status, 401);
    assert!(!answer.has_pack());
    let answer = fetch(Some(&wrong));
    assert_eq!(answer.status, 404);
    assert!(!answer.has_pack());

    // The git client sees the same: a wrong token cannot clone.
    let git = GitClient::new().unwrap();
    let url = cache
        .url("acme/secret")
        .replace("http://", "http://x-access-token:wrong@");
    let out = git
        .run(git.home(), &["clone", "-q", &url, "denied"])
        .unwrap()
        .expect_failure();
    assert!(
        out.stderr.contains("not found") || out.stderr.contains("404"),
        "{out}"
    );
    let url = cache
        .url("acme/secret")
        .replace("http://", "http://x-access-token:good@");
    git.run(git.home(), &["clone", "-q", &url, "granted"])
        .unwrap()
        .expect_success();
    fsck(&git.home().join("granted"));

    // A revoked token works until its grant is older than the TTL, then no more.
    upstream.revoke_token("acme/secret", "good");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let answer = fetch(Some(&good));
    assert_eq!(answer.status, 404, "{}", answer.body_text());
    assert!(!answer.has_pack());

    // Path traversal: 400 before anything touches the disk.
    for path in [
        "/acme/..%2f..%2fetc/info/refs?service=git-upload-pack",
        "/../secret/info/refs?service=git-upload-pack",
        "/acme/./git-upload-pack",
    ] {
        let answer = http(&cache.addr, "GET", path, &[v2], b"");
        assert!(
            answer.status == 400 || answer.status == 404,
            "{path}: {}",
            answer.head
        );
    }
    let answer = http(
        &cache.addr,
        "GET",
        "/acme/wid@gets/info/refs?service=git-upload-pack",
        &[v2],
        b"",
    );
    assert_eq!(answer.status, 400);
    assert!(
        answer.body_text().contains("invalid repository"),
        "{}",
        answer.body_text()
    );
}

/// A protocol v2 `git-upload-pack` POST of `body` to `repo` with `token` as its credential.
fn upload_pack_as(addr: &str, repo: &str, token: &str, body: &[u8]) -> common::Answer {
    let authorization = basic(token);
    http(
        addr,
        "POST",
        &format!("/{repo}.git/git-upload-pack"),
        &[
            ("Git-Protocol", "version=2"),
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Authorization", &authorization),
        ],
        body,
    )
}

/// A credential the upstream refuses is refused from then on, not only once its grant is
/// older than the TTL: a listing or an advertisement the upstream refuses ends the grant.
#[test]
fn a_refusal_ends_the_grant_before_its_ttl() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/secret"), &RepoSpec::tiny(406)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["good", "other"]))
        .unwrap();
    let sha = git_stdout(&upstream.repo_path("acme/secret"), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &["--access-ttl", "600"]);
    let post = |token: &str, body: &[u8]| upload_pack_as(&cache.addr, "acme/secret", token, body);
    let fetch = |token: &str| post(token, &fetch_body(&sha, &[]));
    let mut ls_refs = Vec::new();
    pkt(&mut ls_refs, "command=ls-refs");
    pkt(&mut ls_refs, "object-format=sha1");
    ls_refs.extend_from_slice(b"0001");
    pkt(&mut ls_refs, "ref-prefix refs/heads/");
    ls_refs.extend_from_slice(b"0000");

    for token in ["good", "other"] {
        let answer = fetch(token);
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert!(answer.has_pack());
    }
    upstream.revoke_token("acme/secret", "good");
    // Within the TTL the grant still stands: a fetch is served without asking.
    let answer = fetch("good");
    assert!(answer.has_pack(), "{}", answer.head);
    // Its listing, always asked upstream, is refused: the grant ends there.
    let answer = post("good", &ls_refs);
    assert_eq!(answer.status, 404, "{}", answer.head);
    let answer = fetch("good");
    assert_eq!(answer.status, 404, "{}", answer.body_text());
    assert!(!answer.has_pack());
    // Another credential's grant is its own.
    let answer = fetch("other");
    assert!(answer.has_pack(), "{}", answer.head);

    // The same through an advertisement the upstream refuses.
    upstream.revoke_token("acme/secret", "other");
    let authorization = basic("other");
    let answer = http(
        &cache.addr,
        "GET",
        "/acme/secret.git/info/refs?service=git-upload-pack",
        &[
            ("Git-Protocol", "version=2"),
            ("Authorization", &authorization),
        ],
        b"",
    );
    assert_eq!(answer.status, 404, "{}", answer.head);
    let answer = fetch("other");
    assert_eq!(answer.status, 404, "{}", answer.body_text());
    assert!(!answer.has_pack());
}

/// `acme/secret`, readable by the tokens `good` and `other`, mirrored by a cache started
/// with `--access-ttl <ttl>` (`other` fetched it), then given a new commit (returned) whose
/// refresh's fetch the upstream holds up for `held`.
fn secret_with_a_held_refresh(
    seed: u64,
    ttl: &str,
    held: std::time::Duration,
) -> (Upstream, Gitcache, std::path::PathBuf, String) {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/secret");
    repo::generate(&source, &RepoSpec::tiny(seed)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["good", "other"]))
        .unwrap();
    let first = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &["--access-ttl", ttl]);
    let answer = upload_pack_as(
        &cache.addr,
        "acme/secret",
        "other",
        &fetch_body(&first, &[]),
    );
    assert!(answer.has_pack(), "{}", answer.head);
    let mirror = cache.mirror(&upstream, "acme/secret");
    common::wait_for_mirror(&mirror, &source);
    let tip = repo::append_commits(&source, "main", 2, seed + 1).unwrap();
    upstream.inject(Fault::Delay(held), 1, Some(RequestKind::Fetch));
    (upstream, cache, mirror, tip)
}

/// How many requests reached `upstream` with the token `token`.
fn asked_with(upstream: &Upstream, token: &str) -> usize {
    let authorization = basic(token);
    upstream
        .requests()
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "authorization" && *v == authorization)
        })
        .count()
}

/// A plain `ls-refs` request body.
fn ls_refs_body() -> Vec<u8> {
    let mut ls_refs = Vec::new();
    pkt(&mut ls_refs, "command=ls-refs");
    pkt(&mut ls_refs, "object-format=sha1");
    ls_refs.extend_from_slice(b"0000");
    ls_refs
}

/// With `acme/secret`'s refresh held up (see [`secret_with_a_held_refresh`]): `other`
/// fetches `tip` (its refresh), then `good` does, let in by the gate's check of its
/// credential and joining that refresh; then `good` loses the repository upstream and
/// `meanwhile` runs. The answers of `good` and `other`.
fn good_joins_and_is_revoked(
    upstream: &Upstream,
    cache: &Gitcache,
    tip: &str,
    meanwhile: impl FnOnce(),
) -> (common::Answer, common::Answer) {
    let post =
        |token: &str| upload_pack_as(&cache.addr, "acme/secret", token, &fetch_body(tip, &[]));
    std::thread::scope(|scope| {
        let refreshing = scope.spawn(|| post("other"));
        common::wait_for("the refresh's fetch to reach the upstream", || {
            upstream.pending_faults() == 0
        });
        let waiting = scope.spawn(|| post("good"));
        common::wait_for("the gate's check of the credential", || {
            asked_with(upstream, "good") > 0
        });
        upstream.revoke_token("acme/secret", "good");
        meanwhile();
        (waiting.join().unwrap(), refreshing.join().unwrap())
    })
}

/// A fetch that passed the gate and then waited for a refresh is not answered from the
/// mirror when the upstream refused its credential meanwhile: the refresh (another
/// client's, which it joined) succeeds, the refused credential gets a 403 and no pack.
#[test]
fn a_credential_refused_while_its_fetch_waits_gets_nothing_from_the_mirror() {
    // The refresh's fetch is held up long enough for the steps below on a loaded machine (a
    // few requests to the upstream).
    let (upstream, cache, mirror, tip) =
        secret_with_a_held_refresh(407, "600", std::time::Duration::from_secs(6));
    // A credential with no grant yet: the gate asks the upstream, which accepts it, and the
    // fetch joins the refresh under way. Then the credential loses the repository, and a
    // listing finds out.
    let (answer, refreshed) = good_joins_and_is_revoked(&upstream, &cache, &tip, || {
        let listed = upload_pack_as(&cache.addr, "acme/secret", "good", &ls_refs_body());
        assert_eq!(listed.status, 404);
    });
    assert_eq!(
        answer.status,
        403,
        "{}\n{}",
        answer.body_text(),
        cache.log()
    );
    assert!(
        answer
            .body_text()
            .contains("refused this credential while the request waited"),
        "{}",
        answer.body_text()
    );
    assert!(!answer.has_pack());
    assert!(refreshed.has_pack(), "{}", refreshed.head);
    assert_eq!(
        git_stdout(&mirror, &["cat-file", "-t", &tip]).trim(),
        "commit"
    );
}

/// A fetch that waited (for another client's refresh) past its grant's TTL is not answered
/// from the mirror on the gate's old check: its credential is asked about again first. One
/// revoked upstream meanwhile, and never asked about since, gets the upstream's refusal, not
/// the commit the refresh brought.
#[test]
fn a_fetch_that_waited_past_its_grant_is_asked_about_again() {
    // The refresh's fetch is held up well past the TTL.
    let (upstream, cache, _mirror, tip) =
        secret_with_a_held_refresh(409, "2", std::time::Duration::from_secs(10));
    // The gate asks about the credential, which the upstream accepts; the fetch joins the
    // refresh under way. Then the credential loses the repository, and no request of its own
    // tells gitcache so.
    let (answer, refreshed) = good_joins_and_is_revoked(&upstream, &cache, &tip, || {});
    assert!(
        matches!(answer.status, 401 | 403 | 404),
        "{} {}\n{}",
        answer.status,
        answer.body_text(),
        cache.log()
    );
    assert!(!answer.has_pack());
    assert_eq!(
        asked_with(&upstream, "good"),
        2,
        "the gate's check, then once more"
    );
    // The client whose refresh it was waited as long, and is still accepted.
    assert!(refreshed.has_pack(), "{}", refreshed.head);
}

/// An acceptance asked for before a refusal and read after it vouches for nothing: a fetch
/// asked about again once its grant lapsed (here while its body came slowly), whose upstream
/// accepts the credential and, before that answer has come in whole, refuses it to the same
/// client's listing, gets nothing from the mirror.
#[test]
fn an_acceptance_read_after_a_refusal_vouches_for_nothing() {
    use std::io::{Read as _, Write as _};
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/secret");
    repo::generate(&source, &RepoSpec::tiny(411)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["good"]))
        .unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &["--access-ttl", "2"]);
    let answer = upload_pack_as(&cache.addr, "acme/secret", "good", &fetch_body(&main, &[]));
    assert!(answer.has_pack(), "{}", answer.head);

    // A fetch let in on a fresh grant (its headers), its body sent once the grant lapsed.
    let body = fetch_body(&main, &[]);
    let mut stream = std::net::TcpStream::connect(&cache.addr).unwrap();
    write!(
        stream,
        "POST /acme/secret.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Git-Protocol: version=2\r\nContent-Type: application/x-git-upload-pack-request\r\n\
         Authorization: {}\r\nContent-Length: {}\r\n\r\n",
        basic("good"),
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // The check made then is accepted at once, its advertisement held back a while.
    upstream.inject(
        Fault::PauseBody(std::time::Duration::from_secs(3)),
        1,
        Some(RequestKind::InfoRefs),
    );
    stream.write_all(&body).unwrap();
    common::wait_for("the check to reach the upstream", || {
        upstream.pending_faults() == 0
    });
    // Meanwhile the credential loses the repository, and its listing is refused.
    upstream.revoke_token("acme/secret", "good");
    assert_eq!(
        upload_pack_as(&cache.addr, "acme/secret", "good", &ls_refs_body()).status,
        404
    );
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}\n{}", cache.log());
    assert!(!text.contains("packfile"), "{text}");
}

#[test]
fn twenty_concurrent_cold_clones_make_one_upstream_fetch() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/popular", &RepoSpec::small(406));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/popular");
    std::thread::scope(|scope| {
        let clones: Vec<_> = (0..20)
            .map(|i| {
                let (git, url) = (&git, &url);
                scope.spawn(move || {
                    git.run(git.home(), &["clone", "-q", url, &format!("c{i}")])
                        .unwrap()
                })
            })
            .collect();
        for clone in clones {
            clone.join().unwrap().expect_success();
        }
    });
    assert_eq!(upstream.counts().fetch, 1, "{}", cache.log());
    fsck(&git.home().join("c7"));
}

/// A clone of a repository with no mirror yet is sent the upstream's pack as it arrives,
/// while the mirror takes it in: the mirror is made and checked as before, and the next clone
/// is a hit. A clone asking for less than the mirror fetches waits for the mirror, and a pack
/// cut short ends the answer with the reason.
#[test]
fn a_first_clone_is_sent_the_pack_as_it_arrives() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/fresh", &RepoSpec::small(409));
    public_repo(&upstream, "acme/narrow", &RepoSpec::small(410));
    public_repo(&upstream, "acme/cut", &RepoSpec::small(411));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    let slow_pack = || slow_next_pack(&upstream);

    slow_pack();
    git.run(&home, &["clone", "-q", &cache.url("acme/fresh"), "fresh"])
        .unwrap()
        .expect_success();
    fsck(&home.join("fresh"));
    let source = upstream.repo_path("acme/fresh");
    assert_eq!(
        git_stdout(&home.join("fresh"), &["tag"]),
        git_stdout(&source, &["tag"])
    );
    cache.log_with("arriving=true", 1);
    // The mirror, taken in after (or while) the answer went out, is whole and marked.
    let mirror = cache.mirror(&upstream, "acme/fresh");
    common::wait_for_tips_mark(&mirror);
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    upstream.reset_counts();
    git.run(&home, &["clone", "-q", &cache.url("acme/fresh"), "again"])
        .unwrap()
        .expect_success();
    assert_eq!(upstream.counts().fetch, 0, "the second clone is a hit");
    assert_eq!(arrived(&cache), 1);

    // One branch, no tags: not the mirror's first pack, which holds more.
    slow_pack();
    git.run(
        &home,
        &[
            "clone",
            "-q",
            "--single-branch",
            "--no-tags",
            &cache.url("acme/narrow"),
            "narrow",
        ],
    )
    .unwrap()
    .expect_success();
    fsck(&home.join("narrow"));
    cache.log_with("result=\"miss\"", 2);
    assert_eq!(arrived(&cache), 1, "{}", cache.log());

    // The upstream's pack cut short, under a fetch with no ls-refs before it (as CI sends):
    // the answer ends with the reason, no mirror claims the pack, the next fetch works.
    let source = upstream.repo_path("acme/cut");
    let tips = git_stdout(&source, &["for-each-ref", "--format=want %(objectname)"]);
    let mut wants: Vec<&str> = tips.lines().collect();
    wants.push("ofs-delta");
    let head = git_stdout(&source, &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let fetch = || {
        http(
            &cache.addr,
            "POST",
            "/acme/cut.git/git-upload-pack",
            &[
                ("Git-Protocol", "version=2"),
                ("Content-Type", "application/x-git-upload-pack-request"),
            ],
            &fetch_body(&head, &wants),
        )
    };
    upstream.inject(Fault::CutAfter(20_000), 1, Some(RequestKind::Fetch));
    let cut = fetch();
    let told = String::from_utf8_lossy(&cut.body).contains("gitcache: the upstream's pack");
    assert!(
        told || cut.status == 502,
        "{} {}",
        cut.head,
        cut.body_text()
    );
    // The answer may end before the refresh behind it does: a fetch arriving meanwhile
    // would share its failure. The next one starts after.
    cache.log_with("refresh failed", 1);
    let mirror = cache.mirror(&upstream, "acme/cut");
    assert!(
        !mirror.join("packed-refs").exists() && !mirror.join("refs/heads/main").exists(),
        "a failed first fetch leaves no refs"
    );
    upstream.clear_faults();
    let before = arrived(&cache);
    upstream.inject(
        Fault::Trickle {
            chunk: 4096,
            every: std::time::Duration::from_millis(5),
        },
        1,
        Some(RequestKind::Fetch),
    );
    let whole = fetch();
    assert!(
        whole.has_pack(),
        "{}{}\n{}",
        whole.head,
        whole.body_text(),
        cache.log()
    );
    cache.log_with("arriving=true", before + 1);
    common::wait_for_tips_mark(&mirror);
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    // The answer is the pack the mirror took in, byte for byte.
    let answer = gitcache_protocol::response::parse_fetch_response(
        &whole.content(),
        gitcache_protocol::ObjectFormat::Sha1,
    )
    .unwrap();
    let packs = gitcache_testkit::repo::pack_files(&mirror, "pack").unwrap();
    assert_eq!(packs.len(), 1, "{packs:?}");
    assert!(answer.pack.unwrap() == std::fs::read(&packs[0]).unwrap());
}

/// A fetch of a commit a push just made, by id with no `ls-refs` before it (as CI fetches a
/// new tip), from a client holding the mirror's tips: the pack fetched ahead of the refs is
/// asked for as this client asks and sent to it as it arrives (acknowledging its haves
/// first), while the mirror takes it in; one pack is fetched upstream in all, and the same
/// fetch from another clone is a hit.
#[test]
fn a_fetch_after_a_push_is_sent_the_pack_fetched_for_it_as_it_arrives() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/app", &RepoSpec::small(412));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    let url = cache.url("acme/app");
    for work in ["work", "other"] {
        git.run(&home, &["clone", "-q", &url, work])
            .unwrap()
            .expect_success();
    }
    let (source, mirror) = mirrored(&cache, &upstream, "acme/app");
    let before = arrived(&cache);

    let tip = repo::append_commits(&source, "main", 3, 4120).unwrap();
    upstream.reset_counts();
    // The pack comes slowly: the answer follows it as it arrives.
    trickle_next_pack(&upstream, 512, 5);
    let by_id = format!("{tip}:refs/remotes/origin/main");
    let fetch = [
        "-c",
        "protocol.version=2",
        "fetch",
        "--no-tags",
        "origin",
        &by_id,
    ];
    let work = home.join("work");
    git.run(&work, &fetch).unwrap().expect_success();
    followed_and_taken_in(&cache, &upstream, (&work, &tip), before + 1);

    let other = home.join("other");
    git.run(&other, &fetch).unwrap().expect_success();
    fsck(&other);
    assert_eq!(upstream.counts().fetch, 1, "the second fetch is a hit");
    assert_eq!(arrived(&cache), before + 1);

    // The same after two more pushes, as other clients ask: with `done` and no `thin-pack`
    // (a pack that stands alone beside what the client has), then without `done` (its have
    // acknowledged, `ready`, then a thin pack).
    for (round, done) in [(1, true), (2, false)] {
        let had = git_stdout(&source, &["rev-parse", "main"])
            .trim()
            .to_owned();
        let tip = repo::append_commits(&source, "main", 3, 4120 + round).unwrap();
        trickle_next_pack(&upstream, 512, 5);
        let mut body = Vec::new();
        for line in ["command=fetch", "object-format=sha1"] {
            pkt(&mut body, line);
        }
        body.extend_from_slice(b"0001");
        let options: &[&str] = if done { &[] } else { &["thin-pack"] };
        let lines = [
            format!("want {tip}"),
            format!("have {had}"),
            "ofs-delta".into(),
        ];
        for line in lines
            .iter()
            .map(String::as_str)
            .chain(options.iter().copied())
        {
            pkt(&mut body, line);
        }
        if done {
            pkt(&mut body, "done");
        }
        body.extend_from_slice(b"0000");
        let answer = http(
            &cache.addr,
            "POST",
            "/acme/app.git/git-upload-pack",
            &[
                ("Git-Protocol", "version=2"),
                ("Content-Type", "application/x-git-upload-pack-request"),
            ],
            &body,
        );
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        cache.log_with("arriving=true", before + 1 + round as usize);
        let answer = gitcache_protocol::response::parse_fetch_response(
            &answer.content(),
            gitcache_protocol::ObjectFormat::Sha1,
        )
        .unwrap();
        let had = gitcache_protocol::ObjectId::from_hex(had.as_bytes()).unwrap();
        if done {
            assert!(!answer.has_acknowledgments);
        } else {
            assert_eq!((answer.acks, answer.ready), (vec![had], true));
        }
        let pack = answer.pack.expect("a pack");
        let index = if done {
            vec!["index-pack", "--strict", "--stdin"]
        } else {
            vec!["index-pack", "--strict", "--stdin", "--fix-thin"]
        };
        let indexed = gitcache_testkit::git::git_with_input(&other, &index, &pack);
        assert!(!indexed.is_empty());
        git_stdout(&other, &["cat-file", "-e", &format!("{tip}^{{commit}}")]);
        common::wait_for_mirror(&mirror, &source);
    }

    // The pack fetched ahead is cut short before it is whole: the fetch is not sent it, but
    // answered from the mirror once the refresh's own fetch brought the commits.
    git.run(&work, &["fetch", "-q", "origin"])
        .unwrap()
        .expect_success();
    let tip = repo::append_commits(&source, "main", 3, 4129).unwrap();
    upstream.reset_counts();
    upstream.inject(Fault::CutAfter(600), 1, Some(RequestKind::Fetch));
    let by_id = format!("{tip}:refs/remotes/origin/main");
    let fetch = ["-c", "protocol.version=2", "fetch", "origin", &by_id];
    git.run(&work, &fetch).unwrap().expect_success();
    fsck(&work);
    assert_eq!(upstream.counts().fetch, 2, "fetched again by the refresh");
    assert_eq!(arrived(&cache), before + 3);
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
}

/// A `git fetch` after a push, whose `ls-refs` (or another client's) starts the refresh:
/// what the moved refs point at is fetched ahead, with what they pointed at as haves, as
/// `git fetch` then asks for it; the fetch that joins that refresh is sent its pack as it
/// arrives, and nothing else is fetched upstream.
#[test]
fn a_git_fetch_after_a_push_follows_the_pack_its_ls_refs_had_fetched() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/app", &RepoSpec::small(413));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    let url = cache.url("acme/app");
    let clone = ["clone", "-q", "--single-branch", "--no-tags", &url, "work"];
    git.run(&home, &clone).unwrap().expect_success();
    let work = home.join("work");
    let (source, _) = mirrored(&cache, &upstream, "acme/app");
    let before = arrived(&cache);

    let tip = repo::append_commits(&source, "main", 3, 4130).unwrap();
    upstream.reset_counts();
    // Listed by another client first; that refresh's pack comes slowly.
    trickle_next_pack(&upstream, 32, 50);
    git.run(&home, &["ls-remote", &url])
        .unwrap()
        .expect_success();
    // Its pack is on its way before the fetch starts.
    common::wait_for("the refresh's fetch", || upstream.counts().fetch == 1);
    git.run(
        &work,
        &["-c", "protocol.version=2", "fetch", "-q", "origin"],
    )
    .unwrap()
    .expect_success();
    followed_and_taken_in(&cache, &upstream, (&work, &tip), before + 1);
    // The refresh says what it fetched ahead.
    cache.log_with("ahead=1", 1);
}

/// `git clone --depth=1` right after a push, its `ls-refs` and the refresh's both slow (a
/// forge listing many refs): when the client's listing shows the mirror's tags as they are,
/// the clone's fetch (`include-tag`) is answered once the pack fetched ahead is in, before
/// the refresh's own listing; when the push made a tag, it waits for the refs and the tag
/// comes with the clone.
#[test]
fn a_shallow_clone_after_a_push_waits_for_the_refs_only_when_tags_moved() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/app", &RepoSpec::small(415));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    let url = cache.url("acme/app");
    git.run(&home, &["clone", "-q", &url, "work"])
        .unwrap()
        .expect_success();
    let (source, mirror) = mirrored(&cache, &upstream, "acme/app");
    let slow = |ms| Fault::Delay(std::time::Duration::from_millis(ms));

    for (round, tagged) in [(0, false), (1, true)] {
        let before = git_stdout(&mirror, &["rev-parse", "main"]);
        let tip = repo::append_commits(&source, "main", 3, 4150 + round).unwrap();
        let tag = format!("pushed-{round}");
        if tagged {
            git_stdout(&source, &["tag", "-a", "-m", "release", &tag, "main"]);
        }
        // The client's listing and the refresh's, then the pack fetched ahead.
        upstream.inject(slow(5000), 2, Some(RequestKind::LsRefs));
        upstream.inject(slow(300), 1, Some(RequestKind::Fetch));
        let shallow = format!("shallow-{round}");
        git.run(&home, &["clone", "-q", "--depth=1", &url, &shallow])
            .unwrap()
            .expect_success();
        let shallow = home.join(&shallow);
        assert_eq!(
            git_stdout(&shallow, &["rev-parse", "HEAD"]),
            format!("{tip}\n")
        );
        fsck(&shallow);
        let refs_then = git_stdout(&mirror, &["rev-parse", "main"]);
        if tagged {
            // Waited for the refs: the tag the push made came along.
            assert_ne!(refs_then, before);
            let tags = git_stdout(&shallow, &["tag"]);
            assert!(tags.lines().any(|t| t == tag), "{tags}");
        } else {
            assert_eq!(refs_then, before, "answered before the refs were written");
            cache.log_with("landed=true", 1);
        }
        common::wait_for_mirror(&mirror, &source);
        upstream.clear_faults();
    }
    assert_eq!(common::count(&cache.log(), "landed=true"), 1);
}

/// A fetch of a commit a push just made whose answer reads no refs (by id, without tags:
/// a shallow one as CI's checkout asks, then a whole one into an empty repository): once the
/// pack the refresh fetches ahead for it is in the mirror and checked, the fetch is answered,
/// while the refresh still waits for the upstream's refs (here slowed down, as a forge's
/// listing of many refs is slow). The refs come after, as before.
#[test]
fn a_fetch_after_a_push_reading_no_refs_is_answered_once_its_pack_is_in() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/app", &RepoSpec::small(414));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    git.run(&home, &["clone", "-q", &cache.url("acme/app"), "work"])
        .unwrap()
        .expect_success();
    let (source, mirror) = mirrored(&cache, &upstream, "acme/app");

    let cases: [(&str, &[&str]); 2] = [
        ("shallow.git", &["deepen 1", "ofs-delta", "no-progress"]),
        ("whole.git", &["ofs-delta", "no-progress"]),
    ];
    for (round, (client, options)) in cases.into_iter().enumerate() {
        let before = git_stdout(&mirror, &["rev-parse", "main"]);
        let tip = repo::append_commits(&source, "main", 3, 4140 + round as u64).unwrap();
        upstream.reset_counts();
        upstream.inject(
            Fault::Delay(std::time::Duration::from_secs(8)),
            1,
            Some(RequestKind::LsRefs),
        );
        let answer = http(
            &cache.addr,
            "POST",
            "/acme/app.git/git-upload-pack",
            &[
                ("Git-Protocol", "version=2"),
                ("Content-Type", "application/x-git-upload-pack-request"),
            ],
            &fetch_body(&tip, options),
        );
        // Answered before the refs were written: the mirror's `main` is where it was.
        assert_eq!(git_stdout(&mirror, &["rev-parse", "main"]), before);
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        cache.log_with("landed=true", round + 1);
        let answer = gitcache_protocol::response::parse_fetch_response(
            &answer.content(),
            gitcache_protocol::ObjectFormat::Sha1,
        )
        .unwrap();
        git.run(&home, &["init", "-q", "--bare", client])
            .unwrap()
            .expect_success();
        let client = home.join(client);
        if options.contains(&"deepen 1") {
            let tip_id = gitcache_protocol::ObjectId::from_hex(tip.as_bytes()).unwrap();
            assert_eq!(answer.shallow, vec![tip_id]);
            // The pack stands alone but for the parents of the shallow tip.
            std::fs::write(client.join("shallow"), format!("{tip}\n")).unwrap();
        }
        let pack = answer.pack.expect("a pack");
        let index = ["index-pack", "--strict", "--stdin"];
        gitcache_testkit::git::git_with_input(&client, &index, &pack);
        git_stdout(&client, &["update-ref", "refs/heads/main", &tip]);
        fsck(&client);
        // The refresh goes on: the refs come once the upstream lists them.
        common::wait_for_mirror(&mirror, &source);
        fsck(&mirror);
        assert_eq!(upstream.counts().fetch, 1, "one pack fetched upstream");
    }
}

#[test]
fn push_and_protocol_v0_pass_through() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::tiny(407));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    git.run(
        &home,
        &[
            "-c",
            "protocol.version=0",
            "clone",
            "-q",
            &cache.url("acme/widgets"),
            "v0",
        ],
    )
    .unwrap()
    .expect_success();
    fsck(&home.join("v0"));
    assert!(
        !cache.mirror(&upstream, "acme/widgets").exists(),
        "v0 is passed through, not mirrored"
    );

    let work = home.join("v0");
    std::fs::write(work.join("pushed.txt"), "through the proxy\n").unwrap();
    git.run(&work, &["add", "pushed.txt"])
        .unwrap()
        .expect_success();
    git.run(&work, &["commit", "-q", "-m", "pushed"])
        .unwrap()
        .expect_success();
    git.run(&work, &["push", "-q", "origin", "HEAD:main"])
        .unwrap()
        .expect_success();
    assert_eq!(
        git_stdout(&upstream.repo_path("acme/widgets"), &["rev-parse", "main"]).trim(),
        git.rev_parse(&work, "HEAD").unwrap()
    ); // A request whose body was streamed from the client (the push) had its connection to
    // itself: the upstream may answer before the body is all sent.
    let requests = upstream.requests();
    for push in requests.iter().filter(|r| r.method == "POST") {
        let sharing = requests
            .iter()
            .filter(|r| r.connection == push.connection)
            .count();
        assert_eq!(sharing, 1, "{} shared its connection", push.path);
    }
}

/// A miss asks the upstream for its advertisement once: the access check's answer names the
/// repository's object format, and the refresh that makes the mirror takes it from there
/// instead of asking twice more (once to create the mirror, once to refresh it).
#[test]
fn a_miss_asks_for_the_advertisement_only_at_the_gate() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::tiny(406));
    public_repo(&upstream, "acme/gadgets", &RepoSpec::tiny(407));
    public_repo(&upstream, "acme/modern", &RepoSpec::tiny(408).sha256());
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    // A clone: the client's handshake is the check; its ls-refs and the refresh's are two.
    for (name, format) in [("acme/widgets", "sha1"), ("acme/modern", "sha256")] {
        upstream.reset_counts();
        slow_next_pack(&upstream);
        let dir = name.replace('/', "-");
        git.run(&home, &["clone", "-q", &cache.url(name), &dir])
            .unwrap()
            .expect_success();
        fsck(&home.join(&dir));
        assert_eq!(
            git_stdout(&home.join(&dir), &["rev-parse", "--show-object-format"]).trim(),
            format
        );
        cache.log_with("result=\"miss\"", 1 + usize::from(format == "sha256"));
        let counts = upstream.counts();
        assert_eq!(
            (counts.info_refs, counts.ls_refs, counts.fetch),
            (1, 2, 1),
            "{name}: {counts:?}"
        );
    }

    // Both clones were sent the first pack as it arrived, SHA-256 as SHA-1.
    cache.log_with("arriving=true", 2);

    // A fetch with no handshake before it (as CI sends): the gate asks, and only the gate.
    upstream.reset_counts();
    let sha = git_stdout(&upstream.repo_path("acme/gadgets"), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let answer = http(
        &cache.addr,
        "POST",
        "/acme/gadgets.git/git-upload-pack",
        &[
            ("Git-Protocol", "version=2"),
            ("Content-Type", "application/x-git-upload-pack-request"),
        ],
        &fetch_body(&sha, &[]),
    );
    assert!(answer.has_pack(), "{}", answer.head);
    let counts = upstream.counts();
    assert_eq!(
        (counts.info_refs, counts.ls_refs, counts.fetch),
        (1, 1, 1),
        "{counts:?}"
    );
    fsck(&cache.mirror(&upstream, "acme/gadgets"));
}

/// Lets the bodies an upstream holds go on when dropped (a test that fails while they are
/// held leaves nothing waiting).
struct ReleaseHeld<'a>(&'a Upstream);

/// Lets go of what the upstream holds back only when dropped while panicking.
struct ReleaseOnPanic<'a>(&'a Upstream);

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.release_held();
        }
    }
}

impl Drop for ReleaseHeld<'_> {
    fn drop(&mut self) {
        self.0.release_held();
    }
}

/// The next pack `upstream` sends (a clone of all of `source`) comes as over a network, not
/// all at once, and its last tenth is held until the upstream is told to release it.
fn hold_the_last_tenth_of_the_next_pack(upstream: &Upstream, source: &Path) {
    let pack = gitcache_testkit::git::git_with_input(
        source,
        &["pack-objects", "--revs", "--all", "--stdout", "-q"],
        b"",
    );
    upstream.inject(
        Fault::HoldAfter(pack.len() as u64 / 10 * 9),
        1,
        Some(RequestKind::Fetch),
    );
    trickle_next_pack(upstream, 256 << 10, 30);
}

/// `clone`, run while `upstream` holds back the last tenth of its next pack (a clone of all
/// of `source`, its counts reset first), once `cache` logged its early answer: the mirror
/// cannot be made first, however slowly the reading goes (what is held is let go should
/// the line not come).
fn answered_early_while_held(
    (upstream, source): (&Upstream, &Path),
    cache: &Gitcache,
    clone: impl FnOnce() -> String + Send,
) {
    upstream.reset_counts();
    hold_the_last_tenth_of_the_next_pack(upstream, source);
    std::thread::scope(|scope| {
        let _release = ReleaseHeld(upstream);
        let clone = scope.spawn(clone);
        cache.log_with("early=true", 1);
        clone.join().unwrap();
    });
}

/// A shallow clone of a mirror being made from nothing is answered from the objects found in
/// the mirror's first pack as it arrived, before that pack is indexed and checked: the same
/// commit and tags as a shallow clone from the upstream, one pack fetched upstream, and the
/// mirror made all the same, with nothing of the early answer left in it.
#[test]
fn a_shallow_clone_of_a_new_mirror_is_answered_before_its_pack_is_taken_in() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(412));
    let source = upstream.repo_path("acme/widgets");
    // An annotated tag on the tip, which `include-tag` brings.
    git_stdout(&source, &["tag", "-a", "-m", "the tip", "tip", "main"]);
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    answered_early_while_held((&upstream, &source), &cache, || {
        shallow_clone(&git, &cache.url("acme/widgets"), "early")
    });
    let early = home.join("early");
    // Planned once: the check's plan is the one written.
    cache.log_with("planned_earlier=true", 1);
    shallow_clone(&git, &format!("file://{}", source.display()), "direct");
    let direct = home.join("direct");
    assert_eq!(
        git.rev_parse(&early, "HEAD").unwrap(),
        git.rev_parse(&source, "main").unwrap()
    );
    let tags = |repo: &Path| {
        git_stdout(
            repo,
            &[
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/tags",
            ],
        )
    };
    assert!(!tags(&direct).is_empty(), "the tip is tagged");
    assert_eq!(
        tags(&early),
        tags(&direct),
        "the tags a shallow clone follows"
    );
    assert_eq!(
        std::fs::read_to_string(early.join(".git/shallow")).unwrap(),
        std::fs::read_to_string(direct.join(".git/shallow")).unwrap()
    );

    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    assert_eq!(upstream.counts().fetch, 1, "{:?}", upstream.counts());
    // The same clone again, of the mirror made: the answer stored under its key is whole.
    shallow_clone(&git, &cache.url("acme/widgets"), "again");
    assert_eq!(tags(&home.join("again")), tags(&direct));
    cache.log_with("result=\"hit\"", 1);
    let packs = mirror.join("objects").join("pack");
    common::wait_for("the early index removed", || {
        std::fs::read_dir(&packs).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("early-")
        })
    });
}

/// A shallow clone deeper than one of a mirror being made from nothing is answered from the
/// objects found in its first pack as it arrived (the history from the tip followed to the
/// clone's depth as the commits came), before that pack is taken in: the same commits,
/// shallow boundary and tags as such a clone from the upstream, one pack fetched upstream,
/// and the mirror made all the same.
#[test]
fn a_deeper_shallow_clone_of_a_new_mirror_is_answered_before_its_pack_is_taken_in() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(422));
    let source = upstream.repo_path("acme/widgets");
    // Within the depth: a merge of a side line off `main~3`, and an annotated tag.
    let side = git_stdout(
        &source,
        &["commit-tree", "main~2^{tree}", "-p", "main~3", "-m", "side"],
    );
    let merge = git_stdout(
        &source,
        &[
            "commit-tree",
            "main^{tree}",
            "-p",
            "main",
            "-p",
            side.trim(),
            "-m",
            "merge",
        ],
    );
    git_stdout(&source, &["update-ref", "refs/heads/main", merge.trim()]);
    git_stdout(&source, &["tag", "-a", "-m", "within", "within", "main~2"]);
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    answered_early_while_held((&upstream, &source), &cache, || {
        clone_at_depth(&git, &cache.url("acme/widgets"), "early", 5)
    });
    cache.log_with("haves=0 deep=1", 1);
    clone_at_depth(&git, &format!("file://{}", source.display()), "direct", 5);
    let (early, direct) = (home.join("early"), home.join("direct"));
    let history = |repo: &Path| git_stdout(repo, &["rev-list", "HEAD"]);
    assert!(history(&early).lines().count() > 5, "through the merge");
    assert_eq!(history(&early), history(&direct));
    assert_eq!(
        std::fs::read_to_string(early.join(".git/shallow")).unwrap(),
        std::fs::read_to_string(direct.join(".git/shallow")).unwrap()
    );
    let tags = |repo: &Path| git_stdout(repo, &["for-each-ref", "refs/tags"]);
    assert!(
        tags(&direct).contains("refs/tags/within"),
        "the tag within the depth"
    );
    assert_eq!(tags(&early), tags(&direct));

    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    assert_eq!(upstream.counts().fetch, 1, "{:?}", upstream.counts());
}

/// A medium repository `acme/widgets` made from `seed` on `upstream`, and a client with
/// clones of it in `dirs` of its home, made from the repository's folder.
fn clones_of(upstream: &Upstream, seed: u64, dirs: &[&str]) -> (GitClient, PathBuf) {
    public_repo(upstream, "acme/widgets", &RepoSpec::medium(seed));
    let source = upstream.repo_path("acme/widgets");
    let git = GitClient::new().unwrap();
    let direct = format!("file://{}", source.display());
    for dir in dirs {
        git.run(git.home(), &["clone", "-q", &direct, dir])
            .unwrap()
            .expect_success();
    }
    (git, source)
}

/// `git fetch` in `work`, once `cache` logged `line` while it waited: the log then. Should
/// the line not come, what `upstream` holds back is let go (the fetch then ends, and the
/// test fails there rather than hangs).
fn fetched_once_logged(
    (git, upstream): (&GitClient, &Upstream),
    work: &Path,
    cache: &Gitcache,
    line: &str,
) -> String {
    std::thread::scope(|scope| {
        let _release = ReleaseOnPanic(upstream);
        let fetch = scope.spawn(|| {
            git.run(work, &["fetch", "-q", "origin"])
                .unwrap()
                .expect_success();
        });
        let log = cache.log_with(line, 1);
        fetch.join().unwrap();
        log
    })
}

/// The clones in `dirs` fetch `acme/widgets` through `cache` from now on.
fn point_at(git: &GitClient, cache: &Gitcache, dirs: &[&str]) {
    for dir in dirs {
        git.run(
            &git.home().join(dir),
            &["remote", "set-url", "origin", &cache.url("acme/widgets")],
        )
        .unwrap()
        .expect_success();
    }
}

/// `work`'s `origin/main` is `main`, the clone whole; the mirror of `acme/widgets` is made
/// from `source`, whole, one pack fetched upstream in all.
fn one_pack_fetched(
    (git, work, main): (&GitClient, &Path, &str),
    (cache, upstream, source): (&Gitcache, &Upstream, &Path),
) {
    assert_eq!(git.rev_parse(work, "origin/main").unwrap(), main);
    fsck(work);
    let mirror = cache.mirror(upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, source);
    fsck(&mirror);
    assert_eq!(upstream.counts().fetch, 1, "{:?}", upstream.counts());
}

/// A fetch into a clone made before a push, through a mirror being made from nothing, is
/// answered from the objects found in the mirror's first pack as it arrived (the history
/// from the new tip down to the clone's walked as it came): the clone gets the new tip and
/// is whole, with one pack fetched upstream, and the mirror made all the same.
#[test]
fn an_incremental_fetch_of_a_new_mirror_is_answered_before_its_pack_is_taken_in() {
    let upstream = Upstream::start().unwrap();
    let (git, source) = clones_of(&upstream, 418, &["work"]);
    let work = git.home().join("work");
    let before = git.rev_parse(&work, "origin/main").unwrap();
    repo::append_commits(&source, "main", 30, 418).unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    assert_ne!(before, main);
    let cache = Gitcache::start(&upstream, &[]);
    point_at(&git, &cache, &["work"]);

    upstream.reset_counts();
    hold_the_last_tenth_of_the_next_pack(&upstream, &source);
    {
        let _release = ReleaseHeld(&upstream);
        fetched_once_logged((&git, &upstream), &work, &cache, "early=true");
    }
    one_pack_fetched((&git, &work, &main), (&cache, &upstream, &source));
}

/// An incremental fetch of a mirror being made from nothing whose history is longer than the
/// reading of the first pack walks (its haves further down than
/// [`MOST_WALKED`](gitcache_pack::early::MOST_WALKED) commits) is passed upstream as soon as
/// the walk runs out, while that pack still arrives: the mirror would answer it only once
/// indexed, after a walk of that history without bitmaps. A fetch that comes after it,
/// whose history that walk went through, is still answered from the objects found. The
/// mirror is made all the same, and answers the next far fetch.
#[test]
fn a_fetch_further_behind_than_the_walk_of_a_new_mirror_is_passed_upstream() {
    let upstream = Upstream::start().unwrap();
    let (git, source) = clones_of(&upstream, 419, &["work", "later"]);
    let home = git.home().to_owned();
    let far = gitcache_pack::early::MOST_WALKED + 64;
    repo::append_commits(&source, "main", far, 419).unwrap();
    let direct = format!("file://{}", source.display());
    git.run(&home, &["clone", "-q", &direct, "near"])
        .unwrap()
        .expect_success();
    repo::append_commits(&source, "main", 30, 420).unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &[]);
    point_at(&git, &cache, &["work", "later", "near"]);

    upstream.reset_counts();
    hold_the_last_tenth_of_the_next_pack(&upstream, &source);
    let work = home.join("work");
    {
        let _release = ReleaseHeld(&upstream);
        // Answered while the mirror's pack is held back: not by the mirror.
        let log = fetched_once_logged((&git, &upstream), &work, &cache, "past_the_walk=true");
        assert!(!log.contains("early=true"), "{log}");
        assert_eq!(
            upstream.counts().fetch,
            2,
            "the mirror's and the client's: {:?}",
            upstream.counts()
        );
        // 30 commits behind, asked for once the walk ran out: answered from the objects
        // found, the pack still held back.
        git.run(&home.join("near"), &["fetch", "-q", "origin"])
            .unwrap()
            .expect_success();
        let log = cache.log_with("early=true", 1);
        assert_eq!(log.matches("past_the_walk=true").count(), 1, "{log}");
        assert_eq!(upstream.counts().fetch, 2, "{:?}", upstream.counts());
    }
    for clone in ["work", "near"] {
        assert_eq!(
            git.rev_parse(&home.join(clone), "origin/main").unwrap(),
            main
        );
        fsck(&home.join(clone));
    }

    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    assert_eq!(upstream.counts().fetch, 2, "{:?}", upstream.counts());

    // Made: the same fetch from another clone is the mirror's.
    upstream.reset_counts();
    let later = home.join("later");
    git.run(&later, &["fetch", "-q", "origin"])
        .unwrap()
        .expect_success();
    assert_eq!(git.rev_parse(&later, "origin/main").unwrap(), main);
    fsck(&later);
    cache.log_with("result=\"hit\"", 1);
    assert_eq!(upstream.counts().fetch, 0, "{:?}", upstream.counts());
}

/// An incremental fetch of a mirror being made from nothing that asks once the reading of
/// the first pack went by its want and its have (the newest commits, first in the pack) is
/// walked through the parents the reading kept of the pack's first commits, and answered
/// from the objects found as that pack arrives, as one asking before them is: the clone gets
/// the new tip and is whole, one pack fetched upstream.
#[test]
fn an_incremental_fetch_asking_once_its_commits_went_by_is_answered_from_the_arriving_pack() {
    let upstream = Upstream::start().unwrap();
    let (git, source) = clones_of(&upstream, 421, &["work"]);
    let work = git.home().join("work");
    repo::append_commits(&source, "main", 30, 421).unwrap();
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &[]);
    point_at(&git, &cache, &["work"]);

    upstream.reset_counts();
    // The pack stops after its first 64 KiB (its newest commits, the fetch's want and have
    // among them) until the fetch waits too, then comes as over a network.
    upstream.inject(Fault::HoldAfter(64 << 10), 1, Some(RequestKind::Fetch));
    trickle_next_pack(&upstream, 32 << 10, 30);
    std::thread::scope(|scope| {
        let release = ReleaseHeld(&upstream);
        let first = scope.spawn(|| shallow_clone(&git, &cache.url("acme/widgets"), "first"));
        cache.log_with("looked for as it arrives wanted=1", 1);
        // What it wants reaches the reading when that asks next (every thousand entries or
        // so): well past the newest commits, which come first.
        let fetch = scope.spawn(|| {
            git.run(&work, &["fetch", "-q", "origin"])
                .unwrap()
                .expect_success();
        });
        // Its haves too (`git fetch` sends those of every ref).
        cache.log_with("walked=1 haves=", 1);
        drop(release);
        fetch.join().unwrap();
        first.join().unwrap();
    });
    // Walked late, and every answer (the clone's, and each of the fetch's rounds) from the
    // objects found: none waited for the mirror.
    cache.log_with("walked_late=1", 1);
    let log = cache.log_with("early=true", 2);
    let answers: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("fetch result="))
        .collect();
    assert!(
        answers.len() >= 2 && answers.iter().all(|line| line.contains("early=true")),
        "{log}"
    );
    one_pack_fetched((&git, &work, &main), (&cache, &upstream, &source));
}

/// Two shallow clones of different branches of a mirror being made, the second asked for
/// once the first pack is being read for the first: both are answered from the objects
/// found as it arrived, each with its branch's tip as a shallow clone from the upstream
/// has it, one pack fetched upstream.
#[test]
fn shallow_clones_asked_for_while_the_first_pack_is_read_are_answered_from_it() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(414));
    let source = upstream.repo_path("acme/widgets");
    let branch = git_stdout(
        &source,
        &[
            "for-each-ref",
            "--count=1",
            "--format=%(refname:short)",
            "refs/heads/feature",
        ],
    )
    .trim()
    .to_owned();
    assert!(!branch.is_empty(), "the repository has feature branches");
    let tip = git_stdout(&source, &["rev-parse", &format!("refs/heads/{branch}")])
        .trim()
        .to_owned();
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    upstream.reset_counts();
    // The pack stops after its first 64 KiB (some of its commits) until the second clone
    // waits too, then comes as over a network (about 4 MB in some 4 s): the first tip's
    // objects come first.
    upstream.inject(Fault::HoldAfter(64 << 10), 1, Some(RequestKind::Fetch));
    trickle_next_pack(&upstream, 32 << 10, 30);
    let first = std::thread::scope(|scope| {
        let release = ReleaseHeld(&upstream);
        let first = scope.spawn(|| shallow_clone(&git, &cache.url("acme/widgets"), "first"));
        cache.log_with("looked for as it arrives wanted=1", 1);
        let second = scope.spawn(|| {
            git.run(
                git.home(),
                &[
                    "clone",
                    "-q",
                    "--depth=1",
                    "--branch",
                    &branch,
                    &cache.url("acme/widgets"),
                    "second",
                ],
            )
            .unwrap()
            .expect_success();
        });
        cache.log_with("first pack arrives wanted=2", 1);
        drop(release);
        second.join().unwrap();
        first.join().unwrap()
    });
    fsck(&home.join("second"));
    cache.log_with("early=true", 2);
    assert_eq!(first, git_stdout(&source, &["rev-parse", "main"]).trim());
    assert_eq!(git.rev_parse(&home.join("second"), "HEAD").unwrap(), tip);
    assert_eq!(
        std::fs::read_to_string(home.join("second/.git/shallow")).unwrap(),
        format!("{tip}\n")
    );
    assert_eq!(upstream.counts().fetch, 1, "{:?}", upstream.counts());
}

/// Identical shallow clones of a mirror being made from nothing, all answered from the
/// objects found as its first pack arrives: one generation for all of them, writing the
/// plan their one check made, whichever of them leads it.
#[test]
fn identical_shallow_clones_of_a_new_mirror_share_one_plan() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(416));
    let source = upstream.repo_path("acme/widgets");
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let clones = 6;
    upstream.reset_counts();
    hold_the_last_tenth_of_the_next_pack(&upstream, &source);
    let tips = std::thread::scope(|scope| {
        let _release = ReleaseHeld(&upstream);
        let clones: Vec<_> = (0..clones)
            .map(|n| {
                let (git, url) = (&git, cache.url("acme/widgets"));
                scope.spawn(move || shallow_clone(git, &url, &format!("clone-{n}")))
            })
            .collect();
        clones
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    assert!(tips.iter().all(|tip| *tip == main), "{tips:?}");
    cache.log_with("early=true", clones);
    // Logged by the generation's own task, which may end after its readers.
    let log = cache.log_with("response generated", 1);
    assert_eq!(common::count(&log, "response generated"), 1, "{log}");
    assert_eq!(common::count(&log, "planned_earlier=true"), 1, "{log}");
    assert_eq!(upstream.counts().fetch, 1, "{:?}", upstream.counts());
}

/// With answers stored only the second time they are asked for, a shallow clone of a mirror
/// being made, answered from the objects found as its first pack arrives, is written live
/// from the plan its check made (in that plan's pack slot, the only one here), not planned
/// again.
#[test]
fn an_early_answer_written_live_writes_the_plan_its_check_made() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(417));
    let source = upstream.repo_path("acme/widgets");
    let cache = Gitcache::start(
        &upstream,
        &[
            "--response-cache-admit-second",
            "--max-concurrent-packs",
            "1",
        ],
    );
    let git = GitClient::new().unwrap();
    hold_the_last_tenth_of_the_next_pack(&upstream, &source);
    let tip = std::thread::scope(|scope| {
        let _release = ReleaseHeld(&upstream);
        let clone = scope.spawn(|| shallow_clone(&git, &cache.url("acme/widgets"), "early"));
        clone.join().unwrap()
    });
    assert_eq!(tip, git_stdout(&source, &["rev-parse", "main"]).trim());
    fsck(&git.home().join("early"));
    let log = cache.log_with("early=true", 1);
    // Made live (the cache stores it only the second time): no generation of its own.
    assert_eq!(common::count(&log, "response generated"), 0, "{log}");
    // Its "pack sent" line says the plan was the check's.
    cache.log_with("planned_earlier=true", 1);
}

/// A fetch of an id the upstream does not hold, waiting for a mirror being made from nothing
/// with a shallow clone of its tip: the clone is answered from the objects found as the
/// first pack arrives all the same (the reading for the id lacked goes on to the pack's
/// end, the clone does not wait for it), and the fetch is told the id is not there.
#[test]
fn a_want_the_first_pack_lacks_does_not_hold_back_a_shallow_clone() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(415));
    let source = upstream.repo_path("acme/widgets");
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    upstream.reset_counts();
    // Its last part held until the clone was answered.
    hold_the_last_tenth_of_the_next_pack(&upstream, &source);
    let lacked = "5a".repeat(20);
    let lacking = std::thread::scope(|scope| {
        let release = ReleaseHeld(&upstream);
        let lacking = scope.spawn(|| {
            http(
                &cache.addr,
                "POST",
                "/acme/widgets.git/git-upload-pack",
                &[
                    ("Git-Protocol", "version=2"),
                    ("Content-Type", "application/x-git-upload-pack-request"),
                ],
                &fetch_body(&lacked, &["deepen 1"]),
            )
        });
        cache.log_with("first pack arrives wanted=1", 1);
        let clone = scope.spawn(|| shallow_clone(&git, &cache.url("acme/widgets"), "early"));
        cache.log_with("first pack arrives wanted=2", 1);
        // Answered while the pack's last part is held.
        cache.log_with("early=true", 1);
        cache.log_with("found so far, while wants not found yet are looked for", 1);
        clone.join().unwrap();
        drop(release);
        lacking.join().unwrap()
    });
    assert_eq!(
        git.rev_parse(&home.join("early"), "HEAD").unwrap(),
        git.rev_parse(&source, "main").unwrap()
    );
    fsck(&home.join("early"));
    assert!(!lacking.has_pack(), "{}", lacking.head);
    let refusal = lacking.refusal().unwrap_or_else(|| lacking.body_text());
    assert!(refusal.contains(&lacked), "{refusal}");
    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
}

/// Killed while a mirror's first pack arrives, with the objects found in it so far on disk:
/// started again, nothing of them is left once the mirror is made (the half-made mirror is
/// made anew; the tidying of a mirror's leftovers removes such folders too, see the mirror
/// crate's tests), and a clone is whole.
#[test]
fn objects_found_early_are_not_left_by_a_crash() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::medium(413));
    let source = upstream.repo_path("acme/widgets");
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    trickle_next_pack(&upstream, 64 << 10, 50);
    let url = cache.url("acme/widgets");
    let cut = {
        let (git, home) = (GitClient::new().unwrap(), home.clone());
        std::thread::spawn(move || git.run(&home, &["clone", "-q", "--depth=1", &url, "cut"]))
    };
    let packs = cache
        .mirror(&upstream, "acme/widgets")
        .join("objects")
        .join("pack");
    let early = || {
        std::fs::read_dir(&packs).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("early-"))
        })
    };
    common::wait_for("objects found early on disk", early);
    let cache = cache.crash_and_restart(&upstream, &[]);
    let _ = cut.join();

    shallow_clone(&git, &cache.url("acme/widgets"), "whole");
    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    common::wait_for("what the crash left removed", || !early());
}

/// With `--first-fetch-wait`, a fetch that finds its mirror still being made from nothing
/// is answered by the upstream once that wait is over, and the mirror is made all the same;
/// a clone the arriving pack answers is still sent that pack.
#[test]
fn a_first_fetch_passes_through_while_its_mirror_is_made() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::small(409));
    public_repo(&upstream, "acme/gadgets", &RepoSpec::tiny(410));
    public_repo(&upstream, "acme/tools", &RepoSpec::small(411));
    let source = upstream.repo_path("acme/widgets");
    let cache = Gitcache::start(&upstream, &["--first-fetch-wait", "0"]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();

    // The client's ls-refs and then the mirror's are slow: the mirror cannot be there when
    // the clone's fetch comes.
    upstream.reset_counts();
    upstream.inject(
        Fault::Delay(std::time::Duration::from_millis(1500)),
        2,
        Some(RequestKind::LsRefs),
    );
    let shallow_clone = |dir: &str| {
        git.run(
            &home,
            &["clone", "-q", "--depth=1", &cache.url("acme/widgets"), dir],
        )
        .unwrap()
        .expect_success();
        fsck(&home.join(dir));
    };
    shallow_clone("shallow");
    assert_eq!(
        git.rev_parse(&home.join("shallow"), "HEAD").unwrap(),
        git.rev_parse(&source, "main").unwrap()
    );
    let log = cache.log_with("creating=true", 1);
    assert_eq!(log.matches("result=\"passthrough\"").count(), 1, "{log}");
    // The mirror is made all the same: its own fetch upstream, beside the client's.
    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &source);
    fsck(&mirror);
    assert_eq!(upstream.counts().fetch, 2, "{:?}", upstream.counts());

    // Made: the same clone again is answered by the mirror.
    upstream.reset_counts();
    shallow_clone("again");
    cache.log_with("result=\"hit\"", 1);
    assert_eq!(upstream.counts().fetch, 0, "{:?}", upstream.counts());

    // A clone of one branch waits for the first pack to be announced, which does not
    // answer it: passed through.
    slow_next_pack(&upstream);
    git.run(
        &home,
        &[
            "clone",
            "-q",
            "--single-branch",
            &cache.url("acme/tools"),
            "one",
        ],
    )
    .unwrap()
    .expect_success();
    fsck(&home.join("one"));
    cache.log_with("creating=true", 2);
    common::wait_for_mirror(
        &cache.mirror(&upstream, "acme/tools"),
        &upstream.repo_path("acme/tools"),
    );

    // A whole clone of a new mirror is sent the pack as it arrives, not passed through.
    upstream.reset_counts();
    slow_next_pack(&upstream);
    git.run(&home, &["clone", "-q", &cache.url("acme/gadgets"), "whole"])
        .unwrap()
        .expect_success();
    fsck(&home.join("whole"));
    cache.log_with("arriving=true", 1);
    assert_eq!(upstream.counts().fetch, 1, "{:?}", upstream.counts());
    assert_eq!(cache.log().matches("creating=true").count(), 2);

    // A wait longer than the mirror takes: the fetch is answered by the mirror.
    let patient = Gitcache::start(&upstream, &["--first-fetch-wait", "60"]);
    upstream.inject(
        Fault::Delay(std::time::Duration::from_millis(1500)),
        2,
        Some(RequestKind::LsRefs),
    );
    git.run(
        &home,
        &[
            "clone",
            "-q",
            "--depth=1",
            &patient.url("acme/widgets"),
            "patient",
        ],
    )
    .unwrap()
    .expect_success();
    fsck(&home.join("patient"));
    let log = patient.log_with("result=\"miss\"", 1);
    assert!(!log.contains("creating=true"), "{log}");
}

/// Requests upstream on behalf of clients reuse kept connections (per credential): six
/// `ls-remote`s (an advertisement and an `ls-refs` each) do not open twelve connections.
#[test]
fn upstream_connections_are_kept_between_requests() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/widgets", &RepoSpec::small(402));
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    // Anonymous and with a credential, in turns: never on one connection.
    for i in 0..6 {
        let header = "http.extraheader=Authorization: Bearer alice";
        let args: &[&str] = if i % 2 == 0 {
            &["ls-remote"]
        } else {
            &["-c", header, "ls-remote"]
        };
        let url = cache.url("acme/widgets");
        git.run(&home, &[args, &[url.as_str()]].concat())
            .unwrap()
            .expect_success();
    }
    for (connection, credentials) in upstream.credentials_by_connection() {
        assert_eq!(
            credentials.len(),
            1,
            "connection {connection}: {credentials:?}"
        );
    }
    let counts = upstream.counts();
    let requests = counts.info_refs + counts.ls_refs + counts.fetch + counts.other;
    assert!(requests >= 10, "{counts:?}");
    assert!(
        upstream.connections() * 3 <= requests,
        "{} connections for {requests} requests",
        upstream.connections()
    );
}

/// Objects a depth-1 answer compresses again (their stored delta base is not sent) are kept
/// for the next answer, which takes them instead of making them again; `/metrics` shows it,
/// and the trees the mirror's handle keeps.
#[test]
fn objects_compressed_again_are_kept_for_the_next_answer_and_counted() {
    let upstream = Upstream::start().unwrap();
    let files = 150;
    shrinking_repo(&upstream, "acme/shrinking", files);
    let cache = Gitcache::start(&upstream, &["--response-cache", "false"]);
    let series = |name: &str| metric(&cache, name);
    let git = GitClient::new().unwrap();
    let clone = |into: &str| shallow_clone(&git, &cache.url("acme/shrinking"), into);
    // The first clone, and the preparing after the mirror's first maintenance (which answers
    // a shallow clone of `HEAD` too), whichever comes first, make each object once.
    let first = clone("one");
    cache.log_with("maintained mirror opened again and prepared", 1);
    let made = series(REMADE_MISSES);
    assert!(made >= files as f64, "{made}");
    assert!(series("gitcache_pack_remade_bytes") > 0.0);
    // The walk's first trees are kept by the mirror's handle for the next answers.
    assert!(series("gitcache_pack_kept_tree_bytes") > 0.0);

    // The same answer again: every object made again is taken from the store.
    let hits = series(REMADE_HITS);
    assert_eq!(clone("two"), first);
    assert_eq!(series(REMADE_HITS) - hits, made);
    assert_eq!(series(REMADE_MISSES), made);
}

/// Lookups in the store of objects compressed again that found what they looked for.
const REMADE_HITS: &str = r#"gitcache_pack_remade_lookups_total{result="hit"}"#;
/// Lookups in the store of objects compressed again that made the object.
const REMADE_MISSES: &str = r#"gitcache_pack_remade_lookups_total{result="miss"}"#;

/// The value of the series `name` (its name and labels) on `cache`'s `/metrics`; 0 if absent.
fn metric(cache: &Gitcache, name: &str) -> f64 {
    let text = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `git clone --depth=1` of `url` into `into` under `git`'s home, checked; its `HEAD`.
fn shallow_clone(git: &GitClient, url: &str, into: &str) -> String {
    clone_at_depth(git, url, into, 1)
}

/// `git clone --depth=<depth>` of `url` into `into` under `git`'s home, checked; its `HEAD`.
fn clone_at_depth(git: &GitClient, url: &str, into: &str, depth: u32) -> String {
    let home = git.home().to_owned();
    let depth = format!("--depth={depth}");
    git.run(&home, &["clone", "-q", &depth, url, into])
        .unwrap()
        .expect_success();
    fsck(&home.join(into));
    git.rev_parse(&home.join(into), "HEAD").unwrap()
}

/// A repository whose files each shrink in its last commit, served at `name`: the
/// upstream's pack stores the new versions as deltas against the old, which a depth-1 clone
/// is not sent, so that such a clone compresses them again.
fn shrinking_repo(upstream: &Upstream, name: &str, files: usize) {
    let work = upstream.repo_path(name);
    std::fs::create_dir_all(&work).unwrap();
    git_stdout(&work, &["init", "-q", "-b", "main"]);
    repo::commit_shrinking_files(&work, files);
    upstream.adopt_repo(name, Access::Public).unwrap();
}

/// A mirror asked for lately is prepared after its maintenance with what a shallow clone of
/// its `HEAD` compresses again: the first such clone takes every one of them from the store.
#[test]
fn a_maintained_mirror_is_prepared_with_what_a_shallow_clone_of_head_makes() {
    let upstream = Upstream::start().unwrap();
    let files = 150;
    shrinking_repo(&upstream, "acme/shrinking", files);
    let cache = Gitcache::start(&upstream, &["--response-cache", "false"]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/shrinking");
    git.run(git.home(), &["clone", "-q", &url, "full"])
        .unwrap()
        .expect_success();
    let log = cache.log_with("maintained mirror opened again and prepared", 1);
    let made = metric(&cache, REMADE_MISSES);
    assert!(made >= files as f64, "{made}: {log}");
    assert_eq!(metric(&cache, REMADE_HITS), 0.0);

    shallow_clone(&git, &url, "shallow");
    assert_eq!(metric(&cache, REMADE_HITS), made);
    assert_eq!(metric(&cache, REMADE_MISSES), made, "nothing made again");
}

/// A filtered clone (`blob:none`, `tree:0`) of a mirror being made from nothing is sent, once
/// the first pack is whole, that pack's entries of the kinds it takes, before the pack is
/// indexed: the same objects as the same clone of the upstream, in a repository `fsck`
/// finds whole. One whose upstream has a tag of a blob, or a ref of a blob or of a tree (a
/// want the filter does not leave out), waits for the mirror, as any fetch does, and gets
/// the same objects as from the upstream too.
#[test]
fn a_filtered_clone_of_a_new_mirror_is_sent_the_kinds_it_takes_of_the_first_pack() {
    let upstream = Upstream::start().unwrap();
    public_repo(&upstream, "acme/blobless", &RepoSpec::small(431));
    public_repo(&upstream, "acme/treeless", &RepoSpec::small(432));
    public_repo(&upstream, "acme/tagged", &RepoSpec::small(433));
    let tagged = upstream.repo_path("acme/tagged");
    let blobs = git_stdout(&tagged, &["ls-tree", "-r", "--object-only", "HEAD"]);
    let blob = blobs.lines().next().unwrap();
    git_stdout(&tagged, &["tag", "-a", "-m", "a blob", "a-blob", blob]);
    for (name, seed, target) in [
        ("acme/light-blob", 434, "HEAD:"),
        ("acme/light-tree", 435, "HEAD^{tree}"),
    ] {
        public_repo(&upstream, name, &RepoSpec::small(seed));
        let repo = upstream.repo_path(name);
        let target = match target {
            "HEAD:" => {
                let blobs = git_stdout(&repo, &["ls-tree", "-r", "--object-only", "HEAD"]);
                blobs.lines().next().unwrap().to_owned()
            }
            tree => git_stdout(&repo, &["rev-parse", tree]).trim().to_owned(),
        };
        git_stdout(&repo, &["tag", "light", &target]);
    }
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();
    let home = git.home().to_owned();
    let objects = |dir: &Path| {
        let listed = git_stdout(
            dir,
            &[
                "cat-file",
                "--batch-all-objects",
                "--batch-check=%(objectname) %(objecttype)",
            ],
        );
        let mut lines: Vec<String> = listed.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    for (name, filter, filtered) in [
        ("acme/blobless", "blob:none", 1),
        ("acme/treeless", "tree:0", 2),
        ("acme/tagged", "blob:none", 2),
        ("acme/light-blob", "blob:none", 2),
        // (`git upload-pack` itself leaves a tree wanted out of a `tree:0` clone.)
        ("acme/light-tree", "blob:none", 2),
    ] {
        let dir = name.replace('/', "-");
        let filter = format!("--filter={filter}");
        for (url, into) in [
            (cache.url(name), format!("{dir}-cache")),
            (upstream.repo_url(name), format!("{dir}-upstream")),
        ] {
            git.run(&home, &["clone", "-q", "--bare", &filter, &url, &into])
                .unwrap()
                .expect_success();
        }
        let (ours, theirs) = (
            home.join(format!("{dir}-cache")),
            home.join(format!("{dir}-upstream")),
        );
        let sent = objects(&ours);
        assert!(!sent.is_empty());
        assert_eq!(sent, objects(&theirs), "{name} {filter}");
        fsck(&ours);
        cache.log_with("filtered=true", filtered);
        assert_eq!(
            common::count(&cache.log(), "filtered=true"),
            filtered,
            "{name}"
        );
    }
}
