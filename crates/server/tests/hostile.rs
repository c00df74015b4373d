//! The hostile twin of each request: the real binary in front of the testkit upstream, sent
//! what an attacker would send. Each test is named after what broke (or would have).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Gitcache, basic, fetch_body, http, http_on, pkt};
use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

/// The test that measures runs alone (a write lock); the others share (read locks).
static SERIAL: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Hold while a test runs that does not measure.
fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|p| p.into_inner())
}

fn tip(upstream: &Upstream, name: &str) -> String {
    git_stdout(&upstream.repo_path(name), &["rev-parse", "main"])
        .trim()
        .to_owned()
}

/// A generated repository `name` on `upstream`, readable as `access` says.
fn repo_on(upstream: &Upstream, name: &str, seed: u64, access: Access) {
    repo::generate(&upstream.repo_path(name), &RepoSpec::tiny(seed)).unwrap();
    upstream.adopt_repo(name, access).unwrap();
}

/// A v2 request body: `command`, a delimiter, `args`, a flush.
fn v2_body(command: &str, args: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    pkt(&mut body, &format!("command={command}"));
    pkt(&mut body, "object-format=sha1");
    body.extend_from_slice(b"0001");
    for arg in args {
        pkt(&mut body, arg);
    }
    body.extend_from_slice(b"0000");
    body
}

const V2: (&str, &str) = ("Git-Protocol", "version=2");

fn info_refs(cache: &Gitcache, name: &str, auth: Option<&str>) -> common::Answer {
    let mut headers = vec![V2];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    http(
        &cache.addr,
        "GET",
        &format!("/{name}.git/info/refs?service=git-upload-pack"),
        &headers,
        b"",
    )
}

fn upload_pack(cache: &Gitcache, name: &str, body: &[u8]) -> common::Answer {
    http(
        &cache.addr,
        "POST",
        &format!("/{name}.git/git-upload-pack"),
        &[
            V2,
            ("Content-Type", "application/x-git-upload-pack-request"),
        ],
        body,
    )
}

/// `acme/Widgets` (public) and `acme/widgets` (private) are two repositories on a
/// case-sensitive upstream: a grant for one never opens the other's mirror, and `want-ref`,
/// `sideband-all` and `packfile-uris` (not advertised) are refused as git refuses them.
#[test]
fn case_twins_on_a_case_sensitive_upstream_are_two_mirrors() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/Widgets", 1201, Access::Public);
    repo_on(&upstream, "acme/widgets", 1202, Access::private(["secret"]));
    let private_tip = tip(&upstream, "acme/widgets");
    let cache = Gitcache::start(&upstream, &[]);
    let git = GitClient::new().unwrap();

    // The owner of the private twin clones it: its mirror now holds the private objects.
    let header = format!("http.extraheader=Authorization: {}", basic("secret"));
    git.run(
        git.home(),
        &[
            "-c",
            &header,
            "clone",
            "-q",
            &cache.url("acme/widgets"),
            "p",
        ],
    )
    .unwrap()
    .expect_success();

    // An anonymous client gets a grant for the public twin, then asks it for the private
    // history by ref name and by object id.
    assert_eq!(info_refs(&cache, "acme/Widgets", None).status, 200);
    let by_ref = upload_pack(
        &cache,
        "acme/Widgets",
        &v2_body("fetch", &["want-ref refs/heads/main", "done"]),
    );
    assert_eq!(by_ref.status, 200, "{}", by_ref.body_text());
    assert_eq!(
        by_ref.refusal().as_deref(),
        Some("unexpected line: 'want-ref refs/heads/main'"),
        "{}",
        by_ref.body_text()
    );
    assert!(!by_ref.has_pack());
    // The other features this server does not advertise are refused the same way.
    for line in ["sideband-all", "packfile-uris https"] {
        let refused = upload_pack(
            &cache,
            "acme/Widgets",
            &v2_body("fetch", &[&format!("want {private_tip}"), line, "done"]),
        );
        assert_eq!(refused.status, 200, "{line}: {}", refused.body_text());
        assert_eq!(
            refused.refusal(),
            Some(format!("unexpected line: '{line}'")),
            "{line}: {}",
            refused.body_text()
        );
        assert!(!refused.has_pack());
    }
    let by_id = upload_pack(&cache, "acme/Widgets", &fetch_body(&private_tip, &[]));
    assert!(
        !by_id.has_pack(),
        "the private tip was sent through its twin"
    );

    // Two mirrors, each with its own upstream's refs.
    let host = upstream.addr().to_string().replace(':', "_");
    let owner = cache.data.path().join("mirrors").join(host).join("acme");
    let mut mirrors: Vec<String> = std::fs::read_dir(&owner)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    mirrors.sort();
    assert_eq!(mirrors, ["^widgets.git", "widgets.git"]);
    common::wait_for_mirror(
        &owner.join("widgets.git"),
        &upstream.repo_path("acme/widgets"),
    );
    assert!(git_stdout(&owner.join("widgets.git"), &["rev-parse", "main"]).trim() == private_tip);
    assert!(
        git_stdout(&owner.join("^widgets.git"), &["rev-parse", "main"]).trim()
            == tip(&upstream, "acme/Widgets")
    );
    drop(cache);

    // Declared case-insensitive, the upstream is asked with the folded name: the public
    // spelling now reaches the private repository, which wants a credential.
    let folding = format!("--case-insensitive-host={}", upstream.addr());
    let cache = Gitcache::start(&upstream, &[&folding]);
    assert_eq!(info_refs(&cache, "acme/Widgets", None).status, 401);
    assert_eq!(
        info_refs(&cache, "acme/Widgets", Some(&basic("secret"))).status,
        200
    );
}

/// In `static` and `none` modes the server's own credential (or none) must not carry a
/// client's push: only reads pass.
#[test]
fn static_mode_refuses_writes_before_they_go_upstream() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(
        &upstream,
        "acme/widgets",
        1203,
        Access::private(["service"]),
    );
    let token = format!("--static-token={}=service", upstream.addr());
    for mode in [
        &["--credential-mode", "static", &token][..],
        &["--credential-mode", "none"],
    ] {
        let cache = Gitcache::start(&upstream, mode);
        upstream.reset_counts();
        for (method, path) in [
            (
                "GET",
                "/acme/widgets.git/info/refs?service=git-receive-pack",
            ),
            ("POST", "/acme/widgets.git/git-receive-pack"),
            ("PUT", "/acme/widgets.git/objects/info/packs"),
            (
                "POST",
                "/acme/widgets.git/info/refs?service=git-upload-pack",
            ),
            // Not a file git's dumb protocol reads: the server's token reaches no further.
            ("GET", "/acme/widgets.git/config"),
            ("GET", "/acme/widgets.git/info/lfs/objects/batch"),
        ] {
            let answer = http(&cache.addr, method, path, &[], b"");
            assert_eq!(answer.status, 403, "{method} {path}");
            assert!(
                answer
                    .body_text()
                    .contains(&format!("credential mode '{}'", mode[1])),
                "{}",
                answer.body_text()
            );
        }
        assert_eq!(
            upstream.counts(),
            Default::default(),
            "nothing went upstream"
        );

        // A real push is refused too; a clone still works in static mode.
        let git = GitClient::new().unwrap();
        if mode[1] == "static" {
            git.run(
                git.home(),
                &["clone", "-q", &cache.url("acme/widgets"), "w"],
            )
            .unwrap()
            .expect_success();
            let work = git.home().join("w");
            std::fs::write(work.join("new-file"), "x").unwrap();
            git.run(&work, &["add", "new-file"])
                .unwrap()
                .expect_success();
            git.run(&work, &["commit", "-q", "-m", "push attempt"])
                .unwrap()
                .expect_success();
            let out = git
                .run(&work, &["push", "-q", "origin", "HEAD:main"])
                .unwrap()
                .expect_failure();
            assert!(out.stderr.contains("403"), "{out}");
        }
    }
}

/// Paths that an upstream could resolve to another repository never go upstream.
#[test]
fn dot_segments_and_escapes_are_refused_before_the_upstream() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/ripgrep", 1204, Access::Public);
    repo_on(
        &upstream,
        "private/ripgrep",
        1205,
        Access::private(["secret"]),
    );
    for mode in [&[][..], &["--cache-all", "false"][..]] {
        let cache = Gitcache::start(&upstream, mode);
        upstream.reset_counts();
        for path in [
            "/acme/ripgrep.git/info/../../../private/ripgrep.git/HEAD",
            "/acme/ripgrep.git/info/%2e%2e/%2e%2e/%2E%2E/private/ripgrep.git/HEAD",
            "/acme/ripgrep.git/info/..%2f..%2f..%2fprivate/ripgrep.git/HEAD",
            "/acme/ripgrep.git/info\\..\\..\\..\\private\\ripgrep.git\\HEAD",
            "/acme/ripgrep.git//HEAD",
            "/acme/ripgrep.git/./HEAD",
            "/acme/./ripgrep.git/HEAD",
            "/acme/ripgrep.git/info/..;/..;/..;/private/ripgrep.git/HEAD",
        ] {
            let answer = http(&cache.addr, "GET", path, &[], b"");
            assert_eq!(answer.status, 400, "{path}: {}", answer.body_text());
            assert!(answer.body_text().contains("invalid"), "{path}");
        }
        assert_eq!(
            upstream.counts(),
            Default::default(),
            "nothing went upstream"
        );
        // The repository's own file still passes.
        assert_eq!(
            http(&cache.addr, "GET", "/acme/ripgrep.git/HEAD", &[], b"").status,
            200
        );
    }
}

/// A filter of thousands of sub-filters (each would keep its own state over the walk) is
/// refused with a message, and the server goes on serving.
#[test]
fn a_filter_of_thousands_of_sub_filters_is_refused() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/widgets"), &RepoSpec::small(1206)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &[]);
    assert_eq!(info_refs(&cache, "acme/widgets", None).status, 200);
    let many = format!("filter combine:{}", vec!["blob:none"; 6000].join("+"));
    let nested = format!("filter {}blob:none", "combine:".repeat(8000));
    let want = format!("want {}", tip(&upstream, "acme/widgets"));
    for filter in [&many, &nested] {
        let answer = upload_pack(
            &cache,
            "acme/widgets",
            &v2_body("fetch", &[&want, filter, "done"]),
        );
        assert_eq!(answer.status, 200);
        assert!(
            answer.refusal().is_some_and(|m| m.contains("too complex")),
            "{}",
            answer.body_text()
        );
        assert!(!answer.has_pack());
    }
    // Git's own client shows the refusal: it comes as an `ERR` line, not an HTTP status.
    let git = GitClient::new().unwrap();
    let too_many = format!("--filter=combine:{}", vec!["blob:none"; 40].join("+"));
    let refused = git
        .run(
            git.home(),
            &["clone", "-q", &too_many, &cache.url("acme/widgets"), "f"],
        )
        .unwrap()
        .expect_failure();
    assert!(
        refused.stderr.contains("remote error: ") && refused.stderr.contains("too complex"),
        "{refused}"
    );
    // Allowed combinations are served, repeated sub-filters included.
    let repeated = format!("filter combine:{}", vec!["blob:none"; 32].join("+"));
    let answer = upload_pack(
        &cache,
        "acme/widgets",
        &v2_body("fetch", &[&want, &repeated, "done"]),
    );
    assert_eq!(answer.status, 200);
    assert!(answer.has_pack());
}

/// A body of 200,000 repeated `want-ref` lines costs parsing on a blocking thread, not the
/// async workers: `/healthz` keeps answering while 32 such requests are in flight.
#[test]
fn health_answers_while_huge_request_bodies_are_parsed() {
    let _alone = SERIAL.write().unwrap_or_else(|p| p.into_inner());
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/widgets", 1207, Access::Public);
    let cache = Gitcache::start(&upstream, &[]);
    assert_eq!(info_refs(&cache, "acme/widgets", None).status, 200);
    let lines = vec!["want-ref refs/heads/main"; 200_000];
    let body = std::sync::Arc::new(v2_body("fetch", &lines));
    let addr = cache.addr.clone();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (body, addr) = (std::sync::Arc::clone(&body), addr.clone());
            std::thread::spawn(move || {
                let answer = http(
                    &addr,
                    "POST",
                    "/acme/widgets.git/git-upload-pack",
                    &[V2],
                    &body,
                );
                (answer.status, answer.refusal())
            })
        })
        .collect();
    // Counted, not timed (a loaded machine makes any bound on time fail): while the bodies
    // are parsed, `/healthz` keeps being answered.
    let mut answered = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        let answer = http(&cache.addr, "GET", "/healthz", &[], b"");
        assert_eq!(answer.status, 200);
        answered += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for client in clients {
        let (status, refusal) = client.join().unwrap();
        assert_eq!(status, 200);
        assert!(
            refusal.is_some_and(|m| m.starts_with("unexpected line: 'want-ref")),
            "unadvertised want-ref refused"
        );
    }
    assert!(
        answered >= 3,
        "/healthz answered {answered} times while bodies were parsed"
    );
}

/// Only `Authorization` goes upstream with a v2 request gitcache read (it is what the
/// access gate fingerprints); a `Cookie` could make the upstream accept a request the gate
/// never checked.
#[test]
fn cookies_do_not_go_upstream_with_cached_v2_requests() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/widgets", 1208, Access::Public);
    let cache = Gitcache::start(&upstream, &[]);
    upstream.set_recording(true);
    assert_eq!(info_refs(&cache, "acme/widgets", None).status, 200);
    let answer = http(
        &cache.addr,
        "POST",
        "/acme/widgets.git/git-upload-pack",
        &[
            V2,
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Cookie", "session=stolen"),
            ("X-Custom-Token", "t"),
        ],
        &v2_body("ls-refs", &["peel", "symrefs"]),
    );
    assert_eq!(answer.status, 200);
    assert!(answer.body_text().contains("refs/heads/main"));
    let requests = upstream.requests();
    assert!(!requests.is_empty());
    for r in requests {
        assert!(
            r.headers
                .iter()
                .all(|(k, _)| k != "cookie" && k != "x-custom-token"),
            "{} {} {:?}",
            r.method,
            r.path,
            r.headers
        );
    }
}

/// `/metrics` on the git port names no repository to a reader without an admin token: every
/// repository's series are summed under `_other` (a private repository served to its CI
/// would otherwise be named to anyone, with its mirror's size). To an admin token's holder
/// it names only repositories that are cached and were served past the gate: refused and
/// made-up names neither appear nor use up label slots. A metrics token reads the same, and
/// is refused by the admin API.
#[test]
fn metrics_name_repositories_only_to_admins_and_only_those_served() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/widgets", 1209, Access::Public);
    repo_on(
        &upstream,
        "acme/hidden-plans",
        1210,
        Access::private(["secret"]),
    );
    repo_on(&upstream, "acme/private-ci", 1211, Access::private(["ci"]));
    let cache = Gitcache::start(
        &upstream,
        &[
            "--admin-token",
            "metrics-admin-token-0001",
            "--metrics-token",
            "scraper-token-00000001",
        ],
    );
    assert_eq!(info_refs(&cache, "acme/widgets", None).status, 200);
    assert_eq!(info_refs(&cache, "acme/hidden-plans", None).status, 401);
    assert_eq!(info_refs(&cache, "nobody/made-up-name", None).status, 404);
    let ci = common::basic("ci");
    assert_eq!(info_refs(&cache, "acme/private-ci", Some(&ci)).status, 200);
    let anonymous = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
    for name in ["widgets", "private-ci", "hidden-plans", "made-up-name"] {
        assert!(!anonymous.contains(name), "{name}: {anonymous}");
    }
    assert!(anonymous.contains(r#"owner="_other""#), "{anonymous}");
    let admin = http(
        &cache.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer metrics-admin-token-0001")],
        b"",
    )
    .body_text();
    assert!(admin.contains(r#"repo="widgets""#), "{admin}");
    assert!(admin.contains(r#"repo="private-ci""#), "{admin}");
    assert!(!admin.contains("hidden-plans"), "{admin}");
    assert!(!admin.contains("made-up-name"), "{admin}");
    // A wrong token reads what anyone reads.
    let wrong = http(
        &cache.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer guessed")],
        b"",
    )
    .body_text();
    assert!(!wrong.contains("private-ci"), "{wrong}");
    // A scraper's token reads what an admin reads there, and opens nothing else.
    let scraper = [("Authorization", "Bearer scraper-token-00000001")];
    let scraped = http(&cache.addr, "GET", "/metrics", &scraper, b"").body_text();
    assert!(scraped.contains(r#"repo="private-ci""#), "{scraped}");
    assert!(!scraped.contains("hidden-plans"), "{scraped}");
    let api = http(&cache.addr, "GET", "/api/cached-repos", &scraper, b"");
    assert_eq!(api.status, 403, "{}", api.body_text());
}

/// `acme/big` on `upstream`, not adopted yet: one commit of 24 MiB that do not compress, far
/// more than the channel and socket buffers on the way to a client hold.
fn big_repo(upstream: &Upstream, seed: u64) -> std::path::PathBuf {
    let repo = upstream.repo_path("acme/big");
    std::fs::create_dir_all(&repo).unwrap();
    git_stdout(&repo, &["init", "-q", "-b", "main"]);
    let mut rng = gitcache_testkit::repo::Rng::new(seed);
    std::fs::write(repo.join("blob.bin"), rng.bytes(24 << 20)).unwrap();
    gitcache_testkit::git::commit_all(&repo, "big");
    repo
}

/// One pack slot, every answer generated live, and a stall timeout longer than any test.
const ONE_LIVE_SLOT: [&str; 6] = [
    "--max-concurrent-packs",
    "1",
    "--response-cache",
    "false",
    "--response-stall-timeout",
    "600",
];

/// [`big_repo`] with a small commit after the big one, adopted; the tip. A depth-1 fetch of
/// it is generated (the mirror's pack holds both commits), of about 24 MiB.
fn big_repo_past(upstream: &Upstream, seed: u64) -> String {
    let repo = big_repo(upstream, seed);
    std::fs::write(repo.join("small.txt"), "small\n").unwrap();
    gitcache_testkit::git::commit_all(&repo, "small");
    upstream.adopt_repo("acme/big", Access::Public).unwrap();
    git_stdout(&repo, &["rev-parse", "main"]).trim().to_owned()
}

/// A client that stops reading a passed-through answer loses its connection after the
/// stall timeout, so it cannot hold a connection slot forever.
#[test]
fn a_client_that_stops_reading_a_passthrough_answer_frees_its_slot() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    let repo = big_repo(&upstream, 1211);
    git_stdout(&repo, &["repack", "-adq"]);
    upstream.adopt_repo("acme/big", Access::Public).unwrap();
    let pack = std::fs::read_dir(repo.join(".git/objects/pack"))
        .or_else(|_| std::fs::read_dir(repo.join("objects/pack")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".pack"))
        .unwrap();
    let cache = Gitcache::start(
        &upstream,
        &[
            "--cache-all",
            "false",
            "--max-connections",
            "1",
            "--response-stall-timeout",
            "1",
        ],
    );
    // Dumb HTTP: the pack file itself, passed through; read the head and stop.
    let mut stalled = TcpStream::connect(&cache.addr).unwrap();
    write!(
        stalled,
        "GET /acme/big.git/objects/pack/{pack} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = stalled.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // The one connection slot is taken until the stall timeout ends it.
    let mut next = common::connect(&cache.addr, Duration::from_secs(60));
    write!(
        next,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    next.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stalled);
}

/// An upstream whose host cannot name a mirror folder is refused at start, with a message,
/// instead of failing every request.
#[test]
fn an_unusable_default_upstream_is_refused_at_start() {
    let _shared = shared();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .args(["--listen", "127.0.0.1:0", "--upstream", "http://[::1]:9"])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("GITCACHE_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot name mirrors"), "{stderr}");
}

/// Before this layout, one folder held whichever case twin was fetched through it: such
/// mirrors and stored responses of case-sensitive upstreams are removed when the server
/// starts on the old data (fetched again on demand); case-insensitive upstreams' stay.
#[test]
fn an_earlier_layout_drops_what_case_folding_may_have_mixed() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/widgets", 1212, Access::Public);
    let data = tempfile::Builder::new()
        .prefix("gitcache-data-")
        .tempdir()
        .unwrap();
    let host = upstream.addr().to_string().replace(':', "_");
    let mixed = data
        .path()
        .join("mirrors")
        .join(&host)
        .join("acme/widgets.git");
    let stored = data
        .path()
        .join("responses")
        .join(&host)
        .join("acme/widgets.git");
    let folded = data.path().join("mirrors/github.com/acme/tool.git");
    for dir in [&mixed, &stored, &folded] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    }
    let cache = Gitcache::start_in(&upstream, data, &[]);
    assert!(
        !mixed.exists() && !stored.exists(),
        "folded data of a case-sensitive upstream"
    );
    assert!(
        folded.exists(),
        "github.com folds case: its mirrors keep their place"
    );
    assert_eq!(
        std::fs::read_to_string(cache.data.path().join("layout")).unwrap(),
        "2\n"
    );
    // A clone fetches the mirror anew.
    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &["clone", "-q", &cache.url("acme/widgets"), "w"],
    )
    .unwrap()
    .expect_success();
    let mirror = cache.mirror(&upstream, "acme/widgets");
    common::wait_for_mirror(&mirror, &upstream.repo_path("acme/widgets"));
    assert!(mirror.join("packed-refs").is_file());
}

/// A client's `ls-refs` renews its grant only when the upstream's answer is a whole, parsed
/// v2 listing. With a 4 s grant: a fetch at 0 s, an `ls-refs` at 2 s, a fetch at 5 s. After a
/// `200` of garbage the grant has run out and the fetch is verified upstream again; after a
/// good listing it still holds (renewed at 2 s) and the fetch is not.
#[test]
fn a_garbled_ls_refs_answer_renews_no_grant() {
    use gitcache_testkit::upstream::{Fault, RequestKind};
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/vault", 1290, Access::private(["secret"]));
    let sha = tip(&upstream, "acme/vault");
    let cache = Gitcache::start(&upstream, &["--access-ttl", "4"]);
    let auth = basic("secret");
    let post = |body: &[u8]| {
        http(
            &cache.addr,
            "POST",
            "/acme/vault.git/git-upload-pack",
            &[
                V2,
                ("Content-Type", "application/x-git-upload-pack-request"),
                ("Authorization", &auth),
            ],
            body,
        )
    };
    let ls_refs = v2_body("ls-refs", &["ref-prefix refs/heads/"]);
    for garbled in [true, false] {
        // A fetch verified upstream: the grant starts now (a first one also makes the mirror).
        std::thread::sleep(Duration::from_secs(5));
        let verifications = upstream.counts().info_refs;
        assert!(post(&fetch_body(&sha, &[])).has_pack());
        assert!(upstream.counts().info_refs > verifications, "not verified");
        std::thread::sleep(Duration::from_secs(2));
        if garbled {
            upstream.inject(Fault::Garbage, 1, Some(RequestKind::LsRefs));
            post(&ls_refs);
        } else {
            let listed = post(&ls_refs);
            assert!(
                listed.body_text().contains("refs/heads/main"),
                "{}",
                listed.body_text()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
        let verifications = upstream.counts().info_refs;
        assert!(post(&fetch_body(&sha, &[])).has_pack());
        let verified = upstream.counts().info_refs - verifications;
        assert_eq!(
            verified,
            usize::from(garbled),
            "garbled listing: {garbled}; verified again: {verified}"
        );
    }
}

/// A connection to `addr` from the loopback address `source` (127.0.0.0/8 is all this
/// machine's).
fn connect_from(source: &str, addr: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// A client that opens connections and holds them takes no more than its bound
/// (`--max-connections-per-client`): one more is answered 429 and closed, taking none of the
/// server's connections, so that other clients are still served; one closed makes room.
#[test]
fn a_client_holding_connections_takes_no_more_than_its_bound() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    let cache = Gitcache::start(
        &upstream,
        &[
            "--max-connections",
            "3",
            "--max-connections-per-client",
            "2",
        ],
    );
    let addr = cache.addr.as_str();
    let get_from =
        |source: &str, path: &str| http_on(connect_from(source, addr), addr, "GET", path, &[], b"");
    // Two held, nothing said: the server accepts in order, so both count before the next.
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.1", addr)).collect();
    let refused = get_from("127.0.0.1", "/healthz");
    assert_eq!(refused.status, 429, "{}", refused.head);
    assert!(
        refused
            .body_text()
            .contains("too many connections from this address: 2 at once"),
        "{}",
        refused.body_text()
    );
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    // Refused connections that say nothing yet hold none of the server's three: another
    // client is served while they wait, and they are answered after. Two of a client's are
    // answered at once; a third is closed unanswered.
    let waiting: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.1", addr)).collect();
    let third = http_on(
        connect_from("127.0.0.1", addr),
        addr,
        "GET",
        "/healthz",
        &[],
        b"",
    );
    assert_eq!(third.status, 0, "closed unanswered: {}", third.head);
    let other = get_from("127.0.0.2", "/healthz");
    assert_eq!(other.status, 200, "{}", other.head);
    for stream in waiting {
        let answer = http_on(stream, addr, "GET", "/healthz", &[], b"");
        assert_eq!(answer.status, 429, "{}", answer.head);
    }
    // A request with a body is answered alike (its body read, up to a bound, before the
    // answer, so that a client still sending it over a slower path is not reset).
    let body = vec![b'0'; 512 << 10];
    let path = "/acme/widgets/git-upload-pack";
    let posted = http_on(
        connect_from("127.0.0.1", addr),
        addr,
        "POST",
        path,
        &[],
        &body,
    );
    assert_eq!(posted.status, 429, "{}", posted.head);
    // One closed, the client has room again.
    drop(held.pop());
    common::wait_for("the closed connection's place freed", || {
        get_from("127.0.0.1", "/healthz").status == 200
    });
    // Read from the other address: this one's last connections may still be counted.
    let text = get_from("127.0.0.2", "/metrics").body_text();
    let refused = |reason: &str| {
        let series = format!("gitcache_connections_refused_total{{reason=\"{reason}\"}}");
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse::<f64>().ok())
    };
    assert!(refused("per_client").is_some_and(|n| n >= 4.0), "{text}");
    assert!(
        refused("per_client_unanswered").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// The value of the `/metrics` line that starts with `series`, if there is one.
fn metric(cache: &Gitcache, series: &str) -> Option<f64> {
    let text = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Sends `body` as a fetch of `name` and reads only the answer's head: a client that stops
/// reading. Returns the connection and what was read.
fn stalled_fetch(cache: &Gitcache, name: &str, body: &[u8]) -> (TcpStream, Vec<u8>) {
    stalled_fetch_on(TcpStream::connect(&cache.addr).unwrap(), name, body)
}

/// [`stalled_fetch`] on a connection made by the caller.
fn stalled_fetch_on(mut stream: TcpStream, name: &str, body: &[u8]) -> (TcpStream, Vec<u8>) {
    write!(
        stream,
        "POST /{name}.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Git-Protocol: version=2\r\n\
         Content-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    (stream, head[..n].to_vec())
}

/// Clients that stop reading their answers do not hold the pack slots: a stored pack sent as
/// it is needs none while it is read, and a generated answer spills what its client has not
/// taken and frees its slot once generated. With one slot, an answer the next client needs
/// generated is not held up by either; the slow client later gets its whole answer, byte for
/// byte what a fast one gets; a spill file a crash left is gone at the next start.
#[test]
fn clients_that_stop_reading_do_not_hold_the_pack_slots() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    let tip = big_repo_past(&upstream, 4177);
    let flags = ONE_LIVE_SLOT;
    let cache = Gitcache::start(&upstream, &flags);
    let clone = fetch_body(&tip, &["ofs-delta", "no-progress"]);
    assert!(upload_pack(&cache, "acme/big", &clone).has_pack());
    common::wait_for_tips_mark(&cache.mirror(&upstream, "acme/big"));
    let busy = r#"gitcache_pack_slots{state="busy"}"#;
    let spilled = "gitcache_response_spilled_bytes";

    // A clone sent the marked pack as it is, read no further than its head.
    let whole = stalled_fetch(&cache, "acme/big", &clone);
    common::wait_for("the whole-pack answer to give its slot back", || {
        metric(&cache, busy) == Some(0.0)
    });
    assert_eq!(
        metric(&cache, spilled).unwrap_or(0.0),
        0.0,
        "a stored pack is not copied"
    );

    // A depth-1 answer is generated; its client reads its head and stops too.
    let shallow = fetch_body(&tip, &["ofs-delta", "no-progress", "deepen 1"]);
    let (mut slow, mut raw) = stalled_fetch(&cache, "acme/big", &shallow);
    common::wait_for(
        "the generated answer to spill and give its slot back",
        || metric(&cache, spilled) > Some(0.0) && metric(&cache, busy) == Some(0.0),
    );

    // The one slot is free: another answer is generated while both clients hold back.
    let fast = upload_pack(&cache, "acme/big", &shallow);
    assert!(fast.has_pack());
    let expected = fast.content();

    // The slow client reads at last: all of it, the same bytes.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    slow.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let late = common::Answer {
        status: 200,
        head: String::from_utf8_lossy(&raw[..split]).into_owned(),
        body: raw[split + 4..].to_vec(),
    };
    assert_eq!(late.content().len(), expected.len());
    assert!(late.content() == expected, "the spilled answer differs");
    common::wait_for("the spill to be given back", || {
        metric(&cache, spilled) == Some(0.0)
    });
    drop(whole);

    // A name a crash left in the spill area (where unnamed files cannot be made) is removed
    // at the next start.
    let _again = stalled_fetch(&cache, "acme/big", &shallow);
    let left = cache.data.path().join("spill/.tmpLeft");
    std::fs::write(&left, b"spilled").unwrap();
    // A folder there is not the server's (the spill area may be a file system of its own).
    let kept = cache.data.path().join("spill/lost+found");
    std::fs::create_dir(&kept).unwrap();
    let cache = cache.crash_and_restart(&upstream, &flags);
    assert!(!left.exists());
    assert!(kept.is_dir());
    assert!(upload_pack(&cache, "acme/big", &shallow).has_pack());
}

/// Past the spill budget (none here), a generation waits for its client with its slot held,
/// but only while nobody waits for one: the next answer needing the only slot gets it after a
/// grace, and the slow client's answer is given up rather than left to hold it for as long
/// as the client takes.
#[test]
fn a_slow_client_past_the_spill_budget_gives_way_to_waiting_answers() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    let tip = big_repo_past(&upstream, 5309);
    let flags = [&ONE_LIVE_SLOT[..], &["--max-spilled-bytes", "0"]].concat();
    let cache = Gitcache::start(&upstream, &flags);
    let shallow = fetch_body(&tip, &["ofs-delta", "no-progress", "deepen 1"]);
    let expected = upload_pack(&cache, "acme/big", &shallow);
    assert!(expected.has_pack());
    let busy = r#"gitcache_pack_slots{state="busy"}"#;
    let (mut slow, mut raw) = stalled_fetch(&cache, "acme/big", &shallow);
    common::wait_for("the slow client's generation to hold the slot", || {
        metric(&cache, busy) == Some(1.0)
    });
    // Waits for the slot, then gets it: the whole answer, within the client's read timeout
    // (far under the stall timeout).
    let next = upload_pack(&cache, "acme/big", &shallow);
    assert!(next.content() == expected.content(), "the waiting answer");
    // The slow client's answer was given up: it ends short of the whole.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = slow.read_to_end(&mut raw);
    assert!(raw.len() < expected.body.len(), "{}", raw.len());
    cache.log_with("other answers wait for a pack slot", 1);
}

/// A client that keeps reading, but a trickle under `min_read_rate`, loses its connection once
/// it has fallen a stall timeout's worth behind, rather than holding it (and what its answer
/// holds) for as long as it likes; a client reading at full speed gets the whole answer. The
/// connection is reset: what the kernel still held for the client is not sent. (With the rate
/// ignored, the client is not cut off; without the reset, its answer ends in a plain close.)
#[test]
fn a_client_reading_under_the_minimum_rate_loses_its_connection() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    let tip = big_repo_past(&upstream, 6007);
    let cache = Gitcache::start(
        &upstream,
        &[
            "--response-stall-timeout",
            "5",
            "--min-read-rate",
            "4194304",
        ],
    );
    let clone = fetch_body(&tip, &["ofs-delta", "no-progress"]);
    let expected = upload_pack(&cache, "acme/big", &clone);
    assert!(expected.has_pack());
    let cut = |reason: &str| cut_off(&cache, reason);

    // About 640 KB a second against 4 MiB: the client falls behind by 3.5 MB a second, past
    // its 20 MiB of allowance in six seconds. The kernel holds at most 1 MiB unsent for it, so
    // the server's writes are woken for it about every 0.8 s: within the stall timeout, so the
    // client is not taken for one that stopped reading.
    let (mut slow, mut raw) = small_window_fetch(&cache, &clone);
    let seen = read_slowly(&mut slow, &mut raw, 64 << 10, |_| cut("slow") == Some(1.0));
    assert_eq!(cut("stalled"), None);
    reset_after_cut(&mut slow, &mut raw, expected.body.len(), seen);
    cache.log_with(
        "connection closed: the client reads slower than the minimum read rate",
        1,
    );
}

/// The kernel holds little unsent for a client (about what it must take in a stall timeout),
/// so a write waiting for a client that reads steadily is woken often: however short the stall
/// timeout, a client reading well over the rate is not taken for one that stopped. Without
/// that, Linux queues up to a send buffer (4 MiB) and wakes the write once a third of it is
/// free: here, every two seconds, twice the stall timeout. A client that then stops is cut
/// off and reset.
#[test]
fn a_client_reading_steadily_is_not_taken_for_one_that_stopped() {
    // Alone: a one-second stall timeout is not for a machine busy with the other tests.
    let _alone = SERIAL.write().unwrap_or_else(|p| p.into_inner());
    let upstream = Upstream::start().unwrap();
    let tip = big_repo_past(&upstream, 6011);
    let cache = Gitcache::start(
        &upstream,
        &["--response-stall-timeout", "1", "--min-read-rate", "1024"],
    );
    let clone = fetch_body(&tip, &["ofs-delta", "no-progress"]);
    let expected = upload_pack(&cache, "acme/big", &clone);
    assert!(expected.body.len() > 6 << 20, "{}", expected.body.len());

    // About 640 KB a second, 128 KiB held unsent: woken about every tenth of a second.
    let (mut steady, mut raw) = small_window_fetch(&cache, &clone);
    let seen = read_slowly(&mut steady, &mut raw, 64 << 10, |raw| raw.len() > 3 << 20);
    assert!(seen.is_none(), "{seen:?}");
    assert_eq!(cut_off(&cache, "stalled"), None);
    assert_eq!(cut_off(&cache, "slow"), None);

    // It stops reading: cut off, the connection reset. (Which of the two it is counted as
    // depends on how much its last bytes paid for; the unit tests pin that down.)
    common::wait_for("the stopped client to be cut off", || {
        cut_off(&cache, "stalled").unwrap_or(0.0) + cut_off(&cache, "slow").unwrap_or(0.0) == 1.0
    });
    reset_after_cut(&mut steady, &mut raw, expected.body.len(), None);
}

/// `gitcache_clients_cut_off_total` for `reason`.
fn cut_off(cache: &Gitcache, reason: &str) -> Option<f64> {
    metric(
        cache,
        &format!(r#"gitcache_clients_cut_off_total{{reason="{reason}"}}"#),
    )
}

/// A fetch of `acme/big` on a connection whose receive buffer is small, so that what the
/// client has not read waits on the server; read as far as the answer's head.
fn small_window_fetch(cache: &Gitcache, body: &[u8]) -> (TcpStream, Vec<u8>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let addr: std::net::SocketAddr = cache.addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    stalled_fetch_on(socket.into(), "acme/big", body)
}

/// Read up to `chunk` bytes every tenth of a second until `until` says so, within a minute;
/// the answer must not end first. A reset ends the reading too (`until` must hold then): it
/// is returned.
fn read_slowly(
    stream: &mut TcpStream,
    raw: &mut Vec<u8>,
    chunk: usize,
    mut until: impl FnMut(&[u8]) -> bool,
) -> Option<std::io::Error> {
    let mut buf = vec![0u8; chunk];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !until(raw) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes read",
            raw.len()
        );
        std::thread::sleep(Duration::from_millis(100));
        match stream.read(&mut buf) {
            Ok(0) => panic!("the answer ended early, {} bytes read", raw.len()),
            Ok(read) => raw.extend_from_slice(&buf[..read]),
            Err(err) => {
                assert!(until(raw), "{err} before the reading was done");
                return Some(err);
            }
        }
    }
    None
}

/// After a cut: what the client's own buffer holds comes, then the reset (unless the reading
/// met it already, `seen`); the answer short.
fn reset_after_cut(
    stream: &mut TcpStream,
    raw: &mut Vec<u8>,
    whole: usize,
    seen: Option<std::io::Error>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let ended = match seen {
        Some(err) => Err(err),
        None => stream.read_to_end(raw).map(|_| ()),
    };
    assert_eq!(
        ended.map_err(|err| err.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "after {} of {whole} bytes",
        raw.len()
    );
    assert!(raw.len() < whole, "{}", raw.len());
}

/// A credential that could not go upstream as it is (bytes beyond visible ASCII), or two of
/// them, is refused before anything: it would be checked as no credential at all, and
/// granted as itself.
#[test]
fn an_authorization_that_cannot_go_upstream_is_refused() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/open", 1901, Access::Public);
    let cache = Gitcache::start(&upstream, &[]);
    upstream.reset_counts();
    let odd = info_refs(&cache, "acme/open", Some("Basic é"));
    assert_eq!(odd.status, 400, "{}", odd.body_text());
    let twice = http(
        &cache.addr,
        "GET",
        "/acme/open.git/info/refs?service=git-upload-pack",
        &[
            V2,
            ("Authorization", "Basic a"),
            ("Authorization", "Basic b"),
        ],
        b"",
    );
    assert_eq!(twice.status, 400, "{}", twice.body_text());
    let counts = upstream.counts();
    assert_eq!((counts.info_refs, counts.ls_refs, counts.fetch), (0, 0, 0));
    assert_eq!(
        info_refs(&cache, "acme/open", Some("Basic YTpi")).status,
        200
    );
}

/// An upstream answering with both `Transfer-Encoding: chunked` and a `Content-Length` that
/// is not the body's length: the answer passed on must not carry that length (the client
/// would take the rest of the body as the answer to its next request on the connection).
#[test]
fn an_upstream_length_that_is_not_the_bodys_is_not_passed_on() {
    let _shared = shared();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = listener.local_addr().unwrap();
    let oid = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
    // A dumb server's listing, and a v0 advertisement (read whole by the gate).
    let dumb = format!("{oid}\trefs/heads/main\n");
    let mut v0 = Vec::new();
    pkt(&mut v0, "# service=git-upload-pack");
    v0.extend_from_slice(b"0000");
    pkt(&mut v0, &format!("{oid} HEAD\0multi_ack"));
    v0.extend_from_slice(b"0000");
    let v0 = String::from_utf8(v0).unwrap();
    let answers = [
        ("/acme/dumb.git/", "text/plain", dumb.clone()),
        (
            "/acme/v0.git/",
            "application/x-git-upload-pack-advertisement",
            v0.clone(),
        ),
    ];
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let Some((_, kind, body)) = answers.iter().find(|(path, ..)| head.contains(path))
            else {
                continue;
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let upstream = Upstream::start().unwrap();
    let host = format!("raw=http://{raw}");
    let cache = Gitcache::start(&upstream, &["--upstream-host", &host]);
    for (name, body) in [("dumb", dumb), ("v0", v0)] {
        let answer = http(
            &cache.addr,
            "GET",
            &format!("/raw/acme/{name}.git/info/refs?service=git-upload-pack"),
            &[V2],
            b"",
        );
        assert_eq!(answer.status, 200, "{name}: {}", answer.body_text());
        assert_eq!(answer.content(), body.as_bytes(), "{name}");
        if let Some(length) = answer.header("content-length") {
            assert_eq!(length, body.len().to_string(), "{name}: {}", answer.head);
        }
    }
}

/// An `info/refs` answer passed on (here a dumb server's) that trickles a byte now and then,
/// each within the idle timeout, is broken off at the listing timeout, not held open.
#[test]
fn a_trickling_info_refs_passed_on_ends_at_the_listing_timeout() {
    let _shared = shared();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let start = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                             Transfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(start.as_bytes()).is_err() {
                    return;
                }
                // A byte every 200 ms, without end.
                while stream.write_all(b"1\r\nx\r\n").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    let upstream = Upstream::start().unwrap();
    let host = format!("raw=http://{raw}");
    let cache = Gitcache::start(
        &upstream,
        &["--upstream-host", &host, "--upstream-listing-timeout", "2"],
    );
    // Read on a thread of its own: without the bound the answer never ends.
    let addr = cache.addr.clone();
    let (sent, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answer = http(
            &addr,
            "GET",
            "/raw/acme/slow.git/info/refs?service=git-upload-pack",
            &[V2],
            b"",
        );
        let _ = sent.send(answer);
    });
    // A bound on liveness, not on speed: the listing timeout is 2 s.
    let answer = got
        .recv_timeout(Duration::from_secs(60))
        .expect("the answer was broken off");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(
        !answer.body.ends_with(b"0\r\n\r\n"),
        "broken off, not ended: {}",
        answer.body_text()
    );
    common::wait_for("the answer logged as broken off", || {
        cache.log().lines().any(|line| {
            line.contains("path=/raw/acme/slow.git/info/refs") && line.contains("complete=false")
        })
    });
}

/// What an upstream answers is passed on confined: gitcache's address may serve the admin
/// page (its token in the page's storage), and an upstream's answer (a file under a
/// repository's path, an `info/refs` refusal) must run nothing there in a browser.
#[test]
fn answers_passed_on_from_an_upstream_run_nothing_in_a_browser() {
    let _shared = shared();
    let upstream = Upstream::start().unwrap();
    repo_on(&upstream, "acme/widgets", 1213, Access::Public);
    repo_on(&upstream, "acme/private", 1214, Access::private(["secret"]));
    let cache = Gitcache::start(&upstream, &["--admin-token", "confined-admin-token-01"]);
    let file = http(&cache.addr, "GET", "/acme/widgets.git/HEAD", &[], b"");
    let refused = info_refs(&cache, "acme/private", None);
    for (answer, status) in [(file, 200), (refused, 401)] {
        assert_eq!(answer.status, status, "{}", answer.body_text());
        assert_eq!(
            answer.header("content-security-policy").as_deref(),
            Some("sandbox; default-src 'none'"),
            "{}",
            answer.head
        );
        assert_eq!(
            answer.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
}
