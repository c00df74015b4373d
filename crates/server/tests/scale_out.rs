//! Two gitcache processes, each with its own data directory, sharing mirrors through one
//! bucket of a real S3-compatible server (moto) and, for leases, one PostgreSQL: what one
//! fetched from the upstream, the other serves without fetching; cold misses on both fetch
//! once; a killed instance's refresh is taken over. Needs `GITCACHE_TEST_MOTO` (see
//! `.ci/moto`) and `GITCACHE_TEST_DATABASE_URL` (`.ci/postgres`).

mod common;

use std::time::Duration;

use common::{Gitcache, fsck, http, postgres_database};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::relay::Relay;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::s3::S3Server;
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};

fn instance(upstream: &Upstream, server: &S3Server) -> Gitcache {
    instance_with(upstream, server, &[])
}

fn instance_with(upstream: &Upstream, server: &S3Server, extra: &[&str]) -> Gitcache {
    instance_at(upstream, server, &server.endpoint(), extra)
}

/// An instance that reaches the bucket at `endpoint` (the server, or a relay to it).
fn instance_at(upstream: &Upstream, server: &S3Server, endpoint: &str, extra: &[&str]) -> Gitcache {
    let mut flags = vec![
        "--s3-bucket",
        server.bucket(),
        "--s3-endpoint",
        endpoint,
        "--s3-prefix",
        "fleet-a",
        "--aws-access-key-id",
        "test",
        "--aws-secret-access-key",
        "test",
    ];
    flags.extend_from_slice(extra);
    Gitcache::start(upstream, &flags)
}

/// The bucket the instances share, as they see it (under their prefix).
fn bucket(server: &S3Server) -> gitcache_storage::s3::S3Store {
    gitcache_storage::s3::S3Store::new(&gitcache_storage::s3::S3Config {
        bucket: server.bucket().to_owned(),
        endpoint: Some(server.endpoint()),
        prefix: Some("fleet-a".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        ..Default::default()
    })
    .unwrap()
}

/// A bucket named `bucket` and an upstream serving a `small` repository `name` (public), or
/// `None` without moto.
fn setup(bucket: &str, name: &str, seed: u64) -> Option<(S3Server, Upstream, std::path::PathBuf)> {
    let server = S3Server::start(bucket)?;
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path(name);
    repo::generate(&source, &RepoSpec::small(seed)).unwrap();
    upstream.adopt_repo(name, Access::Public).unwrap();
    Some((server, upstream, source))
}

/// The stored answers the bucket holds.
fn answers_in_bucket(server: &S3Server) -> Vec<gitcache_storage::store::Listed> {
    let responses = gitcache_storage::store::ObjectKey::new("responses").unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(gitcache_storage::store::ObjectStore::list(
            &bucket(server),
            &responses,
        ))
        .unwrap()
}

fn tip(repo: &std::path::Path) -> String {
    git_stdout(repo, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn a_clone_through_one_instance_is_a_hit_on_the_other() {
    let Some((server, upstream, source)) = setup("gitcache-fleet", "acme/fleet", 1310) else {
        return;
    };
    let a = instance(&upstream, &server);
    let b = instance_with(&upstream, &server, &["--storage-poll-interval", "1"]);
    let git = GitClient::new().unwrap();

    git.run(git.home(), &["clone", "-q", &a.url("acme/fleet"), "via-a"])
        .unwrap()
        .expect_success();
    // A's clone may be answered as its pack arrives: its mirror is committed after.
    bucket_is_whole(&server, &upstream, "acme/fleet");
    assert_eq!(upstream.counts().fetch, 1, "A's miss fetched once");
    git.run(git.home(), &["clone", "-q", &b.url("acme/fleet"), "via-b"])
        .unwrap()
        .expect_success();
    assert_eq!(upstream.counts().fetch, 1, "B served it from the bucket");
    // Without --bundle-uri, bundle-uri is neither advertised nor answered.
    let advertised = http(
        &a.addr,
        "GET",
        "/acme/fleet.git/info/refs?service=git-upload-pack",
        &[("Git-Protocol", "version=2")],
        b"",
    );
    assert!(
        advertised.body_text().contains("fetch="),
        "{}",
        advertised.body_text()
    );
    assert!(!advertised.body_text().contains("bundle-uri"));
    let asked = http(
        &a.addr,
        "POST",
        "/acme/fleet.git/git-upload-pack",
        &[
            ("Git-Protocol", "version=2"),
            ("Content-Type", "application/x-git-upload-pack-request"),
        ],
        &bare_command("bundle-uri"),
    );
    assert_eq!(asked.status, 200, "{}", asked.body_text());
    assert!(
        asked.refusal().is_some_and(|m| m.contains("bundle-uri")),
        "{}",
        asked.body_text()
    );
    let (via_a, via_b) = (git.home().join("via-a"), git.home().join("via-b"));
    fsck(&via_b);
    assert_eq!(tip(&via_a), tip(&via_b));
    assert_eq!(
        git_stdout(&b.mirror(&upstream, "acme/fleet"), &["show-ref"]),
        git_stdout(&a.mirror(&upstream, "acme/fleet"), &["show-ref"]),
    );

    // The upstream moves; a fetch through A takes the new commits; B then serves them
    // without asking the upstream for objects.
    let new_tip = repo::append_commits(&source, "main", 3, 1310).unwrap();
    git.run(&via_a, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&via_a), new_tip);
    assert_eq!(upstream.counts().fetch, 2);
    // B polls the bucket for the mirrors it uses: its copy catches up with no request.
    let b_mirror = b.mirror(&upstream, "acme/fleet");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !git_stdout(&b_mirror, &["show-ref"]).contains(&new_tip) {
        assert!(std::time::Instant::now() < deadline, "B never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    git.run(&via_b, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&via_b), new_tip);
    assert_eq!(
        upstream.counts().fetch,
        2,
        "B took the new commits from the bucket"
    );
    fsck(&via_b);
}

#[test]
fn twenty_cold_clones_over_two_instances_fetch_once() {
    let Some((server, upstream, _)) = setup("gitcache-cold", "acme/cold", 1311) else {
        return;
    };
    let Some(database) = postgres_database("cold") else {
        return;
    };
    // The one fetch takes a while, so that every clone arrives while it runs.
    upstream.inject(
        Fault::Delay(Duration::from_millis(1500)),
        1,
        Some(RequestKind::Fetch),
    );
    let flags = ["--database-url", database.as_str()];
    let a = instance_with(&upstream, &server, &flags);
    let b = instance_with(&upstream, &server, &flags);
    assert!(a.log().contains("PostgreSQL leases"), "{}", a.log());
    let ready = http(&a.addr, "GET", "/readyz", &[], b"").body_text();
    assert_eq!(ready.trim_end(), "ready\nobject store: ok\ndatabase: ok");
    let git = GitClient::new().unwrap();
    let urls: Vec<String> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                a.url("acme/cold")
            } else {
                b.url("acme/cold")
            }
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, url) in urls.iter().enumerate() {
            let git = &git;
            scope.spawn(move || {
                git.run(git.home(), &["clone", "-q", url, &format!("clone-{i}")])
                    .unwrap()
                    .expect_success();
            });
        }
    });
    assert_eq!(
        upstream.counts().fetch,
        1,
        "one upstream fetch for twenty cold clones"
    );
    let tips: Vec<String> = (0..20)
        .map(|i| tip(&git.home().join(format!("clone-{i}"))))
        .collect();
    assert!(tips.iter().all(|t| *t == tips[0]), "{tips:?}");
    fsck(&git.home().join("clone-1"));
}

/// A first clone on B while A holds the refresh lease is told the mirror comes from A; when
/// A's fetch breaks off, B fetches the mirror itself, and the clone is sent B's first pack
/// as it arrives, not made to wait for B to take it in.
#[test]
fn a_first_clone_waiting_on_another_instance_that_fails_gets_the_pack_fetched_here() {
    let Some((server, upstream, source)) = setup("gitcache-failover", "acme/failover", 1319) else {
        return;
    };
    let Some(database) = postgres_database("failover") else {
        return;
    };
    let flags = ["--database-url", database.as_str()];
    let a = instance_with(&upstream, &server, &flags);
    let b = instance_with(&upstream, &server, &flags);
    // A's fetch is answered after 2.5 s, with an error.
    for fault in [
        Fault::Delay(Duration::from_millis(2500)),
        Fault::Status(500),
    ] {
        upstream.inject(fault, 1, Some(RequestKind::Fetch));
    }
    let git = GitClient::new().unwrap();
    std::thread::scope(|scope| {
        let failing = scope.spawn(|| {
            git.run(
                git.home(),
                &["clone", "-q", &a.url("acme/failover"), "on-a"],
            )
            .unwrap()
        });
        // The upstream counts a request once it answers: the second `ls-refs` (the
        // client's, then A's refresh's, just before its fetch) says A holds the lease.
        let asked = std::time::Instant::now();
        while upstream.counts().ls_refs < 2 {
            assert!(
                asked.elapsed() < Duration::from_secs(60),
                "A never refreshed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        // B's own fetch comes next, at a pace that keeps its pack arriving for a while.
        upstream.inject(
            Fault::Trickle {
                chunk: 64 << 10,
                every: Duration::from_millis(40),
            },
            1,
            Some(RequestKind::Fetch),
        );
        git.run(
            git.home(),
            &["clone", "-q", &b.url("acme/failover"), "on-b"],
        )
        .unwrap()
        .expect_success();
        assert!(!failing.join().unwrap().success(), "A's clone failed");
    });
    fsck(&git.home().join("on-b"));
    assert_eq!(tip(&git.home().join("on-b")), tip(&source));
    assert_eq!(upstream.counts().fetch, 2, "{:?}", upstream.counts());
    b.log_with("arriving=true", 1);
}

#[test]
fn a_killed_instances_refresh_is_taken_over_when_its_lease_lapses() {
    let Some((server, upstream, _)) = setup("gitcache-kill", "acme/kill", 1312) else {
        return;
    };
    let Some(database) = postgres_database("kill") else {
        return;
    };
    // A's fetch hangs long enough to be killed in the middle of it.
    upstream.inject(
        Fault::Delay(Duration::from_secs(30)),
        1,
        Some(RequestKind::Fetch),
    );
    let flags = ["--database-url", database.as_str(), "--lease-ttl", "2"];
    let mut a = instance_with(&upstream, &server, &flags);
    let b = instance_with(&upstream, &server, &flags);
    let git = GitClient::new().unwrap();
    let url = a.url("acme/kill");
    let home = git.home().to_owned();
    let stalled = std::thread::spawn(move || {
        let client = GitClient::new().unwrap();
        client.run(&home, &["clone", "-q", &url, "via-a"]).unwrap()
    });
    // The fetch's answer is being waited for once its request took the delay (a fault is
    // taken as its request arrives).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while upstream.pending_faults() > 0 {
        assert!(std::time::Instant::now() < deadline, "A never fetched");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A holds the refresh lease, mid-download: killed outright. (If its request had not
    // reached the upstream yet, the delay is not left for B's.)
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    upstream.clear_faults();
    assert!(!stalled.join().unwrap().status.success());

    // B waits for A's lease to lapse, then fetches itself.
    git.run(git.home(), &["clone", "-q", &b.url("acme/kill"), "via-b"])
        .unwrap()
        .expect_success();
    let fetches = upstream.counts().fetch;
    fsck(&git.home().join("via-b"));

    // What B committed is whole: a third instance serves it without fetching.
    let c = instance_with(&upstream, &server, &flags);
    git.run(git.home(), &["clone", "-q", &c.url("acme/kill"), "via-c"])
        .unwrap()
        .expect_success();
    assert_eq!(upstream.counts().fetch, fetches, "C fetched nothing");
    assert_eq!(
        tip(&git.home().join("via-b")),
        tip(&git.home().join("via-c"))
    );
}

#[test]
fn without_the_object_store_instances_go_on_alone_and_catch_up_when_it_returns() {
    let Some(server) = S3Server::start("gitcache-outage") else {
        return;
    };
    let relay = Relay::start(server.addr()).unwrap();
    let endpoint = format!("http://{}", relay.addr());
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/outage");
    repo::generate(&source, &RepoSpec::small(1313)).unwrap();
    upstream.adopt_repo("acme/outage", Access::Public).unwrap();
    let a = instance_at(&upstream, &server, &endpoint, &[]);
    let b = instance_at(&upstream, &server, &endpoint, &[]);
    let git = GitClient::new().unwrap();
    git.run(git.home(), &["clone", "-q", &a.url("acme/outage"), "via-a"])
        .unwrap()
        .expect_success();
    bucket_is_whole(&server, &upstream, "acme/outage");
    let via_a = git.home().join("via-a");

    // The bucket goes away; the upstream moves. Both instances still answer, from their own
    // copies refreshed from the upstream, and say why.
    relay.set_up(false);
    let moved = repo::append_commits(&source, "main", 2, 1313).unwrap();
    git.run(&via_a, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&via_a), moved);
    git.run(git.home(), &["clone", "-q", &b.url("acme/outage"), "via-b"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&git.home().join("via-b")), moved);
    a.log_with("object store unavailable", 1);
    b.log_with("object store unavailable", 1);
    // Still ready (it serves), and says what it lacks.
    let ready = http(&b.addr, "GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 200);
    assert!(
        ready.body_text().contains("ready, degraded")
            && ready.body_text().contains("object store: unreachable")
            && !ready.body_text().contains("127.0.0.1"),
        "{}",
        ready.body_text()
    );

    // It comes back: the next refresh commits what the outage kept local, and a new
    // instance serves it without fetching.
    relay.set_up(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !http(&b.addr, "GET", "/readyz", &[], b"")
        .body_text()
        .contains("object store: ok")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never saw the store again"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let latest = repo::append_commits(&source, "main", 1, 1314).unwrap();
    git.run(&via_a, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&via_a), latest);
    let fetches = upstream.counts().fetch;
    let c = instance_at(&upstream, &server, &endpoint, &[]);
    git.run(git.home(), &["clone", "-q", &c.url("acme/outage"), "via-c"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&git.home().join("via-c")), latest);
    assert_eq!(
        upstream.counts().fetch,
        fetches,
        "C served the bucket's state"
    );
    fsck(&git.home().join("via-c"));
}

/// A stored response generated on A is a stored response on B; eviction goes by the fleet's
/// index in PostgreSQL and empties the bucket of what is over the cap.
#[test]
fn a_response_stored_on_one_instance_is_served_stored_by_the_other() {
    let Some((server, upstream, _)) = setup("gitcache-responses", "acme/answers", 1315) else {
        return;
    };
    let Some(database) = postgres_database("responses") else {
        return;
    };
    let flags = ["--database-url", database.as_str()];
    let a = instance_with(&upstream, &server, &flags);
    let b = instance_with(&upstream, &server, &flags);
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", "--depth=1", &a.url("acme/answers"), "via-a"],
    )
    .unwrap()
    .expect_success();
    a.log_with("response generated", 1);
    // The upload runs in the background: wait until the bucket has it.
    let listed = || answers_in_bucket(&server);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while listed().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never uploaded");
        std::thread::sleep(Duration::from_millis(100));
    }

    git.run(
        git.home(),
        &["clone", "-q", "--depth=1", &b.url("acme/answers"), "via-b"],
    )
    .unwrap()
    .expect_success();
    let log = b.log_with("response taken from the shared store", 1);
    assert!(!log.contains("response generated"), "{log}");
    assert_eq!(upstream.counts().fetch, 1);
    fsck(&git.home().join("via-b"));
    assert_eq!(
        tip(&git.home().join("via-a")),
        tip(&git.home().join("via-b"))
    );
    drop((a, b));

    // An instance whose cap is below the entry's size evicts it from the bucket (and the
    // index), going by the fleet's index.
    let c = instance_with(
        &upstream,
        &server,
        &[
            "--database-url",
            database.as_str(),
            "--response-cache-max-bytes",
            "1",
            "--response-cache-cleanup-interval",
            "1",
        ],
    );
    c.log_with("shared responses evicted", 1);
    assert!(listed().is_empty(), "{:?}", listed());
}

/// What the bucket holds for `name` is whole: the manifest reads, and every file it names is
/// there. Returns how many packs it names.
fn bucket_is_whole(server: &S3Server, upstream: &Upstream, name: &str) -> usize {
    use gitcache_storage::store::ObjectStore as _;
    let store = bucket(server);
    let (owner, repo) = name.split_once('/').unwrap();
    let key =
        gitcache_storage::repo::RepoKey::new(&upstream.addr().to_string(), owner, repo).unwrap();
    let shared = gitcache_mirror::shared::Shared::new(
        gitcache_storage::store::AnyStore::S3(store.clone()),
        Duration::from_secs(3600),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A first clone may be answered as its pack arrives, before the mirror it makes is
        // committed: the manifest is waited for.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (manifest, _) = loop {
            match shared.read(&key).await.unwrap() {
                Some(read) => break read,
                None if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => panic!("a manifest"),
            }
        };
        let base = gitcache_mirror::shared::Shared::manifest_key(&key).unwrap();
        let packs =
            gitcache_storage::store::ObjectKey::new(&base.as_str().replace("/manifest", "/packs"))
                .unwrap();
        let listed: Vec<String> = store
            .list(&packs)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.as_str().rsplit('/').next().unwrap().to_owned())
            .collect();
        for pack in &manifest.packs {
            for ext in &pack.files {
                let file = format!("{}.{ext}", pack.stem);
                assert!(
                    listed.contains(&file),
                    "{file} is named but not stored: {listed:?}"
                );
            }
        }
        manifest.packs.len()
    })
}

/// An instance killed at moments spread over a refresh, its commit, consolidation, bitmaps,
/// the bundle and their commits: after each kill the bucket is whole, and the other instance serves the
/// repository, history complete.
#[test]
fn killed_at_any_moment_the_bucket_stays_whole() {
    let Some((server, upstream, source)) = setup("gitcache-kills", "acme/kills", 1316) else {
        return;
    };
    let b = instance(&upstream, &server);
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", "--bare", &b.url("acme/kills"), "seed"],
    )
    .unwrap()
    .expect_success();
    for (round, delay) in [0u64, 80, 180, 240, 280, 310, 340, 370, 400, 450, 550, 800]
        .into_iter()
        .enumerate()
    {
        let mut a = instance_with(
            &upstream,
            &server,
            &["--consolidate-after", "1", "--bundle-uri"],
        );
        repo::append_commits(&source, "main", 2, 1316 + round as u64).unwrap();
        let (url, dest) = (a.url("acme/kills"), git.home().join(format!("a-{round}")));
        let cloning = std::thread::spawn(move || {
            let client = GitClient::new().unwrap();
            client.run(
                client.home(),
                &["clone", "-q", "--bare", &url, &dest.to_string_lossy()],
            )
        });
        std::thread::sleep(Duration::from_millis(delay));
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        let cloned = cloning
            .join()
            .unwrap()
            .is_ok_and(|out| out.status.success());
        let packs = bucket_is_whole(&server, &upstream, "acme/kills");
        assert!(packs >= 1, "round {round}");
        eprintln!(
            "round {round}: killed after {delay} ms; A's clone finished: {cloned}; packs named: {packs}"
        );
        let dest = format!("b-{round}");
        git.run(
            git.home(),
            &["clone", "-q", "--bare", &b.url("acme/kills"), &dest],
        )
        .unwrap()
        .expect_success();
        fsck(&git.home().join(&dest));
        assert_eq!(
            git_stdout(&git.home().join(&dest), &["rev-parse", "main"]).trim(),
            git_stdout(&source, &["rev-parse", "main"]).trim(),
            "round {round}"
        );
    }
}

/// A pkt-line request `command=<command>` with no arguments.
fn bare_command(command: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for line in [
        format!("command={command}\n"),
        "object-format=sha1\n".into(),
    ] {
        body.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
    }
    body.extend_from_slice(b"00010000");
    body
}

/// With `--bundle-uri`, a consolidated mirror's bundle is kept in the bucket and listed (a
/// presigned URL) to clients the upstream accepted: `git clone -c transfer.bundleURI=true`
/// takes the bulk from the bucket, the rest from gitcache, and a client without the
/// credential is refused before anything is listed.
#[test]
fn a_clone_that_asks_for_bundles_takes_the_bulk_from_the_bucket() {
    let Some(server) = S3Server::start("gitcache-bundles") else {
        return;
    };
    let upstream = Upstream::start().unwrap();
    let name = "acme/bundled";
    let source = upstream.repo_path(name);
    repo::generate(&source, &RepoSpec::small(1320)).unwrap();
    upstream
        .adopt_repo(name, Access::private(["token"]))
        .unwrap();
    let other = upstream.repo_path("acme/other");
    repo::generate(&other, &RepoSpec::tiny(1321)).unwrap();
    upstream
        .adopt_repo("acme/other", Access::private(["other-token"]))
        .unwrap();
    let cache = instance_with(&upstream, &server, &["--bundle-uri"]);
    let git = GitClient::new().unwrap();
    // Scoped to gitcache, as CI scopes it to the forge: the bucket's URL is signed itself.
    let auth = common::basic("token");
    let scoped = format!(
        "http.http://{}/.extraheader=Authorization: {auth}",
        cache.addr
    );
    let url = cache.url(name);
    git.run(git.home(), &["-c", &scoped, "clone", "-q", &url, "first"])
        .unwrap()
        .expect_success();

    // The bundle is written when the mirror is consolidated, in the background.
    let key = gitcache_storage::repo::RepoKey::new(&upstream.addr().to_string(), "acme", "bundled")
        .unwrap();
    let shared = gitcache_mirror::shared::Shared::new(
        gitcache_storage::store::AnyStore::S3(bucket(&server)),
        Duration::from_secs(3600),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let bundled = loop {
        use gitcache_storage::store::ObjectStore as _;
        let manifest = runtime.block_on(shared.read(&key)).unwrap().map(|(m, _)| m);
        let stem = manifest.and_then(|m| m.packs.into_iter().find(|p| p.files.contains(&"tips")));
        if let Some(stem) = stem.map(|p| p.stem) {
            let base = gitcache_mirror::shared::Shared::manifest_key(&key).unwrap();
            let object = gitcache_storage::store::ObjectKey::new(
                &base
                    .as_str()
                    .replace("/manifest", &format!("/packs/{stem}.bundle")),
            )
            .unwrap();
            if runtime
                .block_on(shared.store().size(&object))
                .unwrap()
                .is_some()
            {
                break stem;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no bundle was written"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Listed only to a client the upstream accepted.
    let path = format!("/{name}.git/git-upload-pack");
    let request = bare_command("bundle-uri");
    let headers = [
        ("Git-Protocol", "version=2"),
        ("Content-Type", "application/x-git-upload-pack-request"),
    ];
    let anonymous = http(&cache.addr, "POST", &path, &headers, &request);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body_text());
    assert!(!anonymous.body_text().contains("bundle."));
    // A credential the upstream accepts for another repository opens nothing here.
    let elsewhere = common::basic("other-token");
    let mut other_repo = headers.to_vec();
    other_repo.push(("Authorization", &elsewhere));
    let refused = http(&cache.addr, "POST", &path, &other_repo, &request);
    assert!(
        matches!(refused.status, 401 | 403 | 404),
        "{}",
        refused.body_text()
    );
    assert!(!refused.body_text().contains("bundle."));
    let mut with_auth = headers.to_vec();
    with_auth.push(("Authorization", &auth));
    let listed = http(&cache.addr, "POST", &path, &with_auth, &request);
    assert_eq!(listed.status, 200, "{}", listed.body_text());
    let list = gitcache_protocol::bundle_uri::BundleList::parse(&listed.body).unwrap();
    assert_eq!(list.bundles.len(), 1);
    assert_eq!(list.bundles[0].id(), bundled);
    assert!(
        list.bundles[0].uri().starts_with(&server.endpoint())
            && list.bundles[0].uri().contains("Signature"),
        "a presigned URL into the bucket: {}",
        list.bundles[0].uri()
    );

    // git takes the bundle (its branches become `refs/bundles/*`), then fetches what it
    // lacks: nothing yet, then new commits.
    let old_tip = tip(&source);
    let clone = |dir: &str| {
        git.run(
            git.home(),
            &[
                "-c",
                &scoped,
                "-c",
                "transfer.bundleURI=true",
                "clone",
                "-q",
                &url,
                dir,
            ],
        )
        .unwrap()
        .expect_success();
        let dir = git.home().join(dir);
        fsck(&dir);
        dir
    };
    let second = clone("second");
    assert_eq!(tip(&second), old_tip);
    assert_eq!(
        git_stdout(&second, &["rev-parse", "refs/bundles/main"]).trim(),
        old_tip,
        "the bundle was downloaded and unbundled"
    );
    let new_tip = repo::append_commits(&source, "main", 2, 1320).unwrap();
    let third = clone("third");
    assert_eq!(tip(&third), new_tip, "the rest came from gitcache");
    assert_eq!(
        git_stdout(&third, &["rev-parse", "refs/bundles/main"]).trim(),
        old_tip
    );
    // The bulk came from the bundle: gitcache sent only the new commits' objects.
    let mut counts = objects_per_pack(&third);
    counts.sort_unstable();
    assert_eq!(counts.len(), 2, "the bundle's pack and the fetched one");
    assert!(
        counts[0] > 0 && counts[0] * 10 < counts[1],
        "objects per pack: {counts:?}"
    );
    assert_eq!(upstream.counts().fetch, 2, "the miss and the refresh");
}

/// How many objects each pack of the work tree `repo` holds (from its index's fan-out table).
fn objects_per_pack(repo: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir(repo.join(".git/objects/pack"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .map(|idx| {
            let bytes = std::fs::read(idx).unwrap();
            let at = 8 + 255 * 4;
            u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
        })
        .collect()
}

/// With no keys in the environment or the flags, the keys and region come from the shared
/// credentials and config files' profile (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`,
/// `AWS_PROFILE`), as AWS tools take them.
#[test]
fn keys_come_from_the_shared_credentials_files() {
    let Some((server, upstream, _)) = setup("gitcache-profile", "acme/profile", 1370) else {
        return;
    };
    let aws = tempfile::tempdir().unwrap();
    let (credentials, config) = (aws.path().join("credentials"), aws.path().join("config"));
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = wrong\n[ci]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    std::fs::write(&config, "[profile ci]\nregion = us-east-1\n").unwrap();
    let endpoint = server.endpoint();
    let cache = Gitcache::start_with_env(
        &upstream,
        tempfile::tempdir().unwrap(),
        &[
            "--s3-bucket",
            server.bucket(),
            "--s3-endpoint",
            &endpoint,
            "--s3-prefix",
            "fleet-a",
        ],
        &[
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                &credentials.to_string_lossy(),
            ),
            ("AWS_CONFIG_FILE", &config.to_string_lossy()),
            ("AWS_PROFILE", "ci"),
        ],
    );
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", &cache.url("acme/profile"), "p"],
    )
    .unwrap()
    .expect_success();
    assert!(
        bucket_is_whole(&server, &upstream, "acme/profile") >= 1,
        "committed to the bucket"
    );
    assert!(
        !cache.log().contains("object store unavailable"),
        "{}",
        cache.log()
    );
}

/// With polling off, B notices what A committed when a client's `ls-refs` through B shows
/// the upstream moved: B takes A's new pack from the bucket (only that one: the packs it
/// has stay as they are) and fetches nothing upstream.
#[test]
fn an_instance_catches_up_on_ls_refs_taking_only_the_new_packs() {
    let Some((server, upstream, source)) = setup("gitcache-lsrefs", "acme/notice", 1371) else {
        return;
    };
    let a = instance(&upstream, &server);
    let b = instance_with(&upstream, &server, &["--storage-poll-interval", "0"]);
    let git = GitClient::new().unwrap();
    git.run(git.home(), &["clone", "-q", &a.url("acme/notice"), "via-a"])
        .unwrap()
        .expect_success();
    bucket_is_whole(&server, &upstream, "acme/notice");
    git.run(git.home(), &["clone", "-q", &b.url("acme/notice"), "via-b"])
        .unwrap()
        .expect_success();
    let b_mirror = b.mirror(&upstream, "acme/notice");
    let packs = |dir: &std::path::Path| -> Vec<(String, std::time::SystemTime)> {
        let mut found: Vec<_> = std::fs::read_dir(dir.join("objects/pack"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        found.sort();
        found
    };
    // Wait for B's own maintenance to settle before taking its state.
    common::wait_for_tips_mark(&b_mirror);
    let held = packs(&b_mirror);

    let new_tip = repo::append_commits(&source, "main", 2, 1372).unwrap();
    git.run(&git.home().join("via-a"), &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    let fetches = upstream.counts().fetch;
    git.run(&git.home().join("via-b"), &["ls-remote", "origin"])
        .unwrap()
        .expect_success();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !git_stdout(&b_mirror, &["show-ref"]).contains(&new_tip) {
        assert!(std::time::Instant::now() < deadline, "B never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        upstream.counts().fetch,
        fetches,
        "B took it from the bucket"
    );
    let now = packs(&b_mirror);
    for pack in &held {
        assert!(now.contains(pack), "{} kept as it was: {now:?}", pack.0);
    }
    assert!(now.len() > held.len(), "a new pack taken: {now:?}");
}

/// Under a disk budget, a working copy evicted from the local disk is taken from the
/// bucket again when next needed, with nothing fetched upstream.
#[test]
fn an_evicted_working_copy_comes_back_from_the_bucket() {
    let Some((server, upstream, _)) = setup("gitcache-evicted", "acme/first", 1373) else {
        return;
    };
    repo::generate(&upstream.repo_path("acme/second"), &RepoSpec::small(1374)).unwrap();
    upstream.adopt_repo("acme/second", Access::Public).unwrap();
    let cache = instance_with(&upstream, &server, &["--max-mirror-bytes", "1"]);
    let git = GitClient::new().unwrap();
    let clone = |name: &str, dir: &str| {
        git.run(
            git.home(),
            &["clone", "-q", "--bare", &cache.url(name), dir],
        )
        .unwrap()
        .expect_success();
        fsck(&git.home().join(dir));
    };
    clone("acme/first", "f1");
    clone("acme/second", "s1");
    cache.log_with("mirror evicted (disk budget)", 1);
    let fetches = upstream.counts().fetch;
    assert_eq!(fetches, 2, "one miss each");
    clone("acme/first", "f2");
    assert_eq!(
        upstream.counts().fetch,
        fetches,
        "taken from the bucket, not the upstream"
    );
    assert_eq!(
        git_stdout(&git.home().join("f2"), &["rev-parse", "HEAD"]),
        git_stdout(&git.home().join("f1"), &["rev-parse", "HEAD"])
    );
    cache.log_with("mirror taken from the shared store", 1);
}

/// The bucket cut off in the middle of exchanges (uploads, downloads, manifest writes) at
/// moments spread over refreshes: every fetch is still answered, and once it is back the
/// next commit leaves a whole bucket that another instance serves without the upstream.
#[test]
fn cut_mid_exchange_the_bucket_stays_whole() {
    let Some(server) = S3Server::start("gitcache-midcut") else {
        return;
    };
    let relay = Relay::start(server.addr()).unwrap();
    let endpoint = format!("http://{}", relay.addr());
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/midcut");
    repo::generate(&source, &RepoSpec::small(1375)).unwrap();
    upstream.adopt_repo("acme/midcut", Access::Public).unwrap();
    let a = instance_at(&upstream, &server, &endpoint, &[]);
    let git = GitClient::new().unwrap();
    git.run(git.home(), &["clone", "-q", &a.url("acme/midcut"), "via-a"])
        .unwrap()
        .expect_success();
    let via_a = git.home().join("via-a");
    for (round, delay) in [5u64, 20, 60, 120, 250].into_iter().enumerate() {
        let tip_now = repo::append_commits(&source, "main", 2, 1376 + round as u64).unwrap();
        let work = via_a.clone();
        let pulling = std::thread::spawn(move || {
            let client = GitClient::new().unwrap();
            client.run(&work, &["pull", "-q", "--ff-only"])
        });
        std::thread::sleep(Duration::from_millis(delay));
        relay.set_up(false);
        let pulled = pulling.join().unwrap().unwrap();
        assert!(pulled.success(), "round {round}: {pulled}");
        assert_eq!(tip(&via_a), tip_now, "round {round}");
        relay.set_up(true);
    }
    // Back for good: a refresh commits; the bucket is whole and serves another instance.
    let latest = repo::append_commits(&source, "main", 1, 1390).unwrap();
    git.run(&via_a, &["pull", "-q", "--ff-only"])
        .unwrap()
        .expect_success();
    assert!(bucket_is_whole(&server, &upstream, "acme/midcut") >= 1);
    let fetches = upstream.counts().fetch;
    let c = instance(&upstream, &server);
    git.run(git.home(), &["clone", "-q", &c.url("acme/midcut"), "via-c"])
        .unwrap()
        .expect_success();
    assert_eq!(tip(&git.home().join("via-c")), latest);
    assert_eq!(upstream.counts().fetch, fetches, "served from the bucket");
    fsck(&git.home().join("via-c"));
}

/// The repository behind a cached name replaced by another: the instance whose refresh finds
/// it drops its mirror and every stored answer of the old repository, its own and the
/// bucket's; the other instance, at its next refresh, drops its copy and its own stored
/// answers, and takes the new state from the bucket. Neither serves the old repository.
#[test]
fn a_repository_replaced_behind_its_name_is_dropped_by_the_fleet() {
    let Some((server, upstream, source)) = setup("gitcache-replaced", "acme/renamed", 1321) else {
        return;
    };
    let old_main = tip(&source);
    let (a, b) = (instance(&upstream, &server), instance(&upstream, &server));
    let git = GitClient::new().unwrap();
    let clone = |cache: &Gitcache, args: &[&str], into: &str| {
        let url = cache.url("acme/renamed");
        let mut all = vec!["clone", "-q"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[url.as_str(), into]);
        let out = git.run(git.home(), &all).unwrap();
        assert!(out.success(), "{out}\n{}", cache.log());
        git.home().join(into)
    };
    clone(&a, &["--depth=1"], "old-a");
    let listed = || answers_in_bucket(&server);
    common::wait_for("the answer in the bucket", || !listed().is_empty());
    clone(&b, &["--depth=1"], "old-b");
    b.log_with("response taken from the shared store", 1);
    // Stored answers on an instance's disk.
    let stored = |cache: &Gitcache| {
        let mut found = 0;
        let mut pending = vec![cache.data.path().join("responses")];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.to_string_lossy().ends_with(".resp") {
                    found += 1;
                }
            }
        }
        found
    };
    assert!(stored(&b) > 0);

    upstream
        .replace_repo("acme/renamed", &RepoSpec::small(1322), Access::Public)
        .unwrap();
    let new = clone(&a, &["--bare"], "new-a");
    fsck(&new);
    assert_eq!(tip(&new), tip(&source));
    common::wait_for("the bucket emptied of the old answers", || {
        listed().is_empty()
    });
    assert_eq!(stored(&a), 0);
    let has_old = |cache: &Gitcache| {
        std::process::Command::new("git")
            .args(["cat-file", "-e", &old_main])
            .current_dir(cache.mirror(&upstream, "acme/renamed"))
            .status()
            .unwrap()
            .success()
    };
    assert!(!has_old(&a));

    // A commits the new state after answering its client: B takes it from the bucket once
    // it is there.
    common::wait_for("A's new state committed to the bucket", || {
        a.log()
            .split_once("is not the mirror's")
            .is_some_and(|(_, after)| after.contains("mirror committed to the shared store"))
    });
    let fetches = upstream.counts().fetch;
    let new = clone(&b, &["--bare"], "new-b");
    fsck(&new);
    assert_eq!(tip(&new), tip(&source));
    assert!(!has_old(&b), "B dropped its copy");
    assert_eq!(stored(&b), 0, "and its stored answers");
    assert_eq!(
        upstream.counts().fetch,
        fetches,
        "the new state came from the bucket"
    );
}
