//! The testkit's upstream serves real clones and behaves like a forge on access.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Counts, Fault, RequestKind, Upstream};

/// A raw HTTP/1.1 GET; returns the status, the head and the body.
fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let len =
            usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        raw = &raw[eol + 2 + len + 2..];
    }
}

fn upstream_with(name: &str, spec: &RepoSpec, access: Access) -> Upstream {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path(name), spec).unwrap();
    upstream.adopt_repo(name, access).unwrap();
    upstream
}

#[test]
fn clone_through_upstream_passes_fsck_and_is_counted() {
    let upstream = upstream_with("acme/widgets", &RepoSpec::small(7), Access::Public);
    let client = GitClient::new().unwrap();
    client
        .run(
            client.home(),
            &["clone", "--quiet", &upstream.repo_url("acme/widgets"), "w"],
        )
        .unwrap()
        .expect_success();
    let work = client.home().join("w");
    client.fsck(&work).unwrap().expect_success();
    let expected = client
        .rev_parse(&upstream.repo_path("acme/widgets"), "refs/heads/main")
        .unwrap();
    assert_eq!(client.rev_parse(&work, "HEAD").unwrap(), expected);
    assert_eq!(
        upstream.counts(),
        Counts {
            info_refs: 1,
            ls_refs: 1,
            fetch: 1,
            other: 0
        }
    );

    // An incremental fetch from a clone with local commits the upstream lacks negotiates over
    // several requests; git gzips those over 1 KiB. All are counted as fetches.
    for i in 0..60 {
        client
            .run(
                &work,
                &[
                    "commit",
                    "--quiet",
                    "--allow-empty",
                    "-m",
                    &format!("local {i}"),
                ],
            )
            .unwrap()
            .expect_success();
    }
    let new_tip = repo::append_commits(&upstream.repo_path("acme/widgets"), "main", 3, 1).unwrap();
    upstream.reset_counts();
    upstream.set_recording(true);
    client
        .run(&work, &["fetch", "--quiet", "origin"])
        .unwrap()
        .expect_success();
    assert_eq!(
        client.rev_parse(&work, "refs/remotes/origin/main").unwrap(),
        new_tip
    );
    client.fsck(&work).unwrap().expect_success();
    let counts = upstream.counts();
    assert_eq!(counts.ls_refs, 1, "{counts:?}");
    assert!(counts.fetch >= 2, "{counts:?}");
    let gzipped = upstream
        .requests()
        .into_iter()
        .find(|r| {
            r.kind == RequestKind::Fetch
                && r.headers
                    .iter()
                    .any(|(k, v)| k == "content-encoding" && v == "gzip")
        })
        .expect("a gzipped fetch");
    let body = String::from_utf8_lossy(&gzipped.body);
    assert!(
        body.contains("command=fetch") && body.matches("have ").count() > 16,
        "{body}"
    );
}

#[test]
fn paths_without_dot_git_reach_the_same_repository() {
    let upstream = upstream_with("acme/plain", &RepoSpec::tiny(1), Access::Public);
    let client = GitClient::new().unwrap();
    let url = format!("{}/acme/plain", upstream.url());
    let out = client
        .run(client.home(), &["ls-remote", &url])
        .unwrap()
        .expect_success();
    assert!(out.stdout.contains("refs/heads/main"), "{out}");
}

#[test]
fn sha256_repository_clones() {
    let upstream = upstream_with("acme/modern", &RepoSpec::tiny(3).sha256(), Access::Public);
    let client = GitClient::new().unwrap();
    client
        .run(
            client.home(),
            &["clone", "--quiet", &upstream.repo_url("acme/modern"), "m"],
        )
        .unwrap()
        .expect_success();
    let work = client.home().join("m");
    client.fsck(&work).unwrap().expect_success();
    assert_eq!(client.rev_parse(&work, "HEAD").unwrap().len(), 64);
}

#[test]
fn private_repository_wants_a_listed_token() {
    let upstream = upstream_with(
        "acme/secret",
        &RepoSpec::tiny(2),
        Access::private(["good-token"]),
    );
    let addr = upstream.addr();
    let path = "/acme/secret.git/info/refs?service=git-upload-pack";
    let v2 = ("Git-Protocol", "version=2");

    let (status, head, _) = http_get(addr, path, &[v2]);
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );

    let basic = |token: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        )
    };
    let (status, _, _) = http_get(addr, path, &[v2, ("Authorization", &basic("bad-token"))]);
    assert_eq!(status, 404);
    let (status, _, body) = http_get(addr, path, &[v2, ("Authorization", &basic("good-token"))]);
    assert_eq!(status, 200);
    assert!(
        body.starts_with(b"000eversion 2\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = http_get(addr, path, &[v2, ("Authorization", "Bearer good-token")]);
    assert_eq!(status, 200);

    // The real client, with the header actions/checkout configures.
    let client = GitClient::new().unwrap();
    let url = upstream.repo_url("acme/secret");
    client
        .run(client.home(), &["ls-remote", &url])
        .unwrap()
        .expect_failure();
    let header = format!("http.extraheader=AUTHORIZATION: {}", basic("good-token"));
    client
        .run(
            client.home(),
            &["-c", &header, "clone", "--quiet", &url, "s"],
        )
        .unwrap()
        .expect_success();
    client
        .fsck(&client.home().join("s"))
        .unwrap()
        .expect_success();

    // Revoked while running: the next request is refused.
    upstream.revoke_token("acme/secret", "good-token");
    let (status, _, _) = http_get(addr, path, &[v2, ("Authorization", &basic("good-token"))]);
    assert_eq!(status, 404);
    let (status, _, _) = http_get(
        addr,
        "/acme/nothing.git/info/refs?service=git-upload-pack",
        &[v2],
    );
    assert_eq!(status, 404);
}

#[test]
fn fault_switches_break_requests_then_recover() {
    let upstream = upstream_with("acme/flaky", &RepoSpec::small(5), Access::Public);
    let client = GitClient::new().unwrap();
    let url = upstream.repo_url("acme/flaky");

    upstream.inject(Fault::Status(500), 1, None);
    let out = client
        .run(client.home(), &["ls-remote", &url])
        .unwrap()
        .expect_failure();
    assert!(out.stderr.contains("500"), "{out}");
    client
        .run(client.home(), &["ls-remote", &url])
        .unwrap()
        .expect_success();

    upstream.inject(Fault::CutAfter(2000), 1, Some(RequestKind::Fetch));
    client
        .run(client.home(), &["clone", "--quiet", &url, "cut"])
        .unwrap()
        .expect_failure();
    upstream.inject(Fault::Garbage, 1, Some(RequestKind::Fetch));
    client
        .run(client.home(), &["clone", "--quiet", &url, "garbage"])
        .unwrap()
        .expect_failure();
    upstream.inject(Fault::Delay(Duration::from_millis(200)), 1, None);
    client
        .run(client.home(), &["clone", "--quiet", &url, "ok"])
        .unwrap()
        .expect_success();
    client
        .fsck(&client.home().join("ok"))
        .unwrap()
        .expect_success();
    let statuses: Vec<u16> = upstream.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses.first(), Some(&500), "{statuses:?}");
}
