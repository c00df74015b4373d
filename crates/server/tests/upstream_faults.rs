//! An upstream that fails during a miss: the client gets a clear error, the mirror stays
//! whole, the next request succeeds. And a clone in flight survives SIGTERM.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Gitcache, fsck};
use gitcache_testkit::git::{GitClient, GitOutput, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};

/// What actions/checkout does: `info/refs` and one `fetch` of a commit, no `ls-refs`.
fn fetch_commit(git: &GitClient, dir: &Path, url: &str, sha: &str) -> GitOutput {
    if !dir.exists() {
        std::fs::create_dir(dir).unwrap();
        git.run(dir, &["init", "-q"]).unwrap().expect_success();
        git.run(dir, &["remote", "add", "origin", url])
            .unwrap()
            .expect_success();
    }
    git.run(
        dir,
        &[
            "fetch",
            "--no-tags",
            "--depth=1",
            "origin",
            &format!("+{sha}:refs/remotes/origin/main"),
        ],
    )
    .unwrap()
}

#[test]
fn upstream_failures_during_a_miss() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/flaky");
    repo::generate(&source, &RepoSpec::small(501)).unwrap();
    upstream.adopt_repo("acme/flaky", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &["--upstream-timeout", "1"]);
    let git = GitClient::new().unwrap();
    let url = cache.url("acme/flaky");
    let mirror = cache.mirror(&upstream, "acme/flaky");

    // First: a good fetch creates the mirror.
    let first = git_stdout(&source, &["rev-parse", "main~5"])
        .trim()
        .to_owned();
    fetch_commit(&git, &git.home().join("a"), &url, &first).expect_success();
    fsck(&mirror);

    for (seed, (fault, status)) in [
        (Fault::Status(500), "502"),
        (Fault::Delay(Duration::from_secs(3)), "504"),
        (Fault::CutAfter(60), "502"),
    ]
    .into_iter()
    .enumerate()
    {
        let tip = repo::append_commits(&source, "main", 2, seed as u64).unwrap();
        // Both of the refresh's fetches fail: the new tip asked for by id ahead of the refs
        // (a failure there only leaves the refresh as it would have been), then the refs'.
        upstream.inject(fault.clone(), 2, Some(RequestKind::Fetch));
        let dir = git.home().join(format!("b{seed}"));
        let failed = fetch_commit(&git, &dir, &url, &tip);
        assert!(!failed.success(), "{failed}\n{}", cache.log());
        assert!(failed.stderr.contains(status), "{fault:?}: {failed}");
        // The mirror is whole, and does not claim the new tip.
        fsck(&mirror);
        assert_ne!(
            git_stdout(&mirror, &["rev-parse", "main"]).trim(),
            tip,
            "{fault:?}"
        );
        upstream.clear_faults();
        // The next request succeeds.
        fetch_commit(&git, &dir, &url, &tip).expect_success();
        fsck(&dir);
        fsck(&mirror);
    }
    cache.log_with("result=\"error\"", 3);
}

#[test]
fn a_clone_in_flight_finishes_after_sigterm() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/slow");
    repo::generate(&source, &RepoSpec::small(502)).unwrap();
    upstream.adopt_repo("acme/slow", Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &["--shutdown-grace", "20"]);
    let git = GitClient::new().unwrap();
    // The miss's upstream fetch is slow: the clone is in flight when the signal comes.
    upstream.inject(
        Fault::Delay(Duration::from_millis(1500)),
        1,
        Some(RequestKind::Fetch),
    );
    let url = cache.url("acme/slow");
    let clone = std::thread::scope(|scope| {
        let clone = scope.spawn(|| git.run(git.home(), &["clone", "-q", &url, "c"]).unwrap());
        // Wait until the clone's fetch reached the upstream, then stop gitcache.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while upstream.counts().fetch == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        cache.terminate();
        clone.join().unwrap()
    });
    clone.expect_success();
    fsck(&git.home().join("c"));
    let mut cache = cache;
    let status = cache.child.wait().unwrap();
    assert!(status.success(), "{status}");
    // New connections are refused now.
    assert!(std::net::TcpStream::connect(&cache.addr).is_err());
}

/// An upstream holding a new public repository `name`, gitcache in front of it with an idle
/// timeout of one second, and a protocol v0 fetch of the repository's `main` (which gitcache
/// passes on as it arrives).
fn v0_fetch_of_a_new_repository(name: &str, seed: u64) -> (Upstream, Gitcache, String) {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path(name);
    repo::generate(&source, &RepoSpec::tiny(seed)).unwrap();
    upstream.adopt_repo(name, Access::Public).unwrap();
    let cache = Gitcache::start(&upstream, &["--upstream-timeout", "1"]);
    let tip = git_stdout(&source, &["rev-parse", "main"]);
    let want = format!("want {} ofs-delta\n", tip.trim());
    let pkt = |line: &str| format!("{:04x}{line}", line.len() + 4);
    let body = [pkt(&want), "0000".to_owned(), pkt("done\n")].concat();
    (upstream, cache, body)
}

/// A request passed on with its body streamed (a push, a protocol v0 fetch) that takes longer
/// to go up than the upstream's idle timeout, bytes moving all along, is answered: the idle
/// timeout counts from the body's last bytes, not from the request's start.
#[test]
fn a_streamed_request_slower_than_the_idle_timeout_but_moving_gets_through() {
    use std::io::{Read as _, Write as _};
    let (_upstream, cache, body) = v0_fetch_of_a_new_repository("acme/slowpush", 506);
    let mut stream = common::connect(&cache.addr, Duration::from_secs(60));
    write!(
        stream,
        "POST /acme/slowpush.git/git-upload-pack HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/x-git-upload-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n",
        cache.addr
    )
    .unwrap();
    // 2.4 seconds in all, a piece every 0.3 (the body split in bytes-sized chunks).
    let bytes = body.as_bytes();
    let step = bytes.len().div_ceil(8);
    for chunk in bytes.chunks(step) {
        write!(stream, "{:x}\r\n", chunk.len()).unwrap();
        stream.write_all(chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        answer.windows(4).any(|w| w == b"PACK"),
        "a pack came back: {head}"
    );
}

/// An answer passed on from the upstream (here a protocol v0 fetch) whose upstream goes
/// silent halfway is broken off after the idle timeout, not held open for good with the
/// client's connection and its slot.
#[test]
fn a_passed_on_answer_whose_upstream_goes_silent_is_broken_off() {
    use std::io::{Read as _, Write as _};
    let (upstream, cache, body) = v0_fetch_of_a_new_repository("acme/stalls", 507);
    // A first piece, then nothing for longer than the idle timeout, again and again.
    upstream.inject(
        Fault::Trickle {
            chunk: 64,
            every: Duration::from_secs(30),
        },
        1,
        Some(RequestKind::Fetch),
    );
    let mut stream = common::connect(&cache.addr, Duration::from_secs(20));
    write!(
        stream,
        "POST /acme/stalls.git/git-upload-pack HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n{body}",
        cache.addr,
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(
        !matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the answer was held open: {read:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("chunked") && !answer.ends_with(b"0\r\n\r\n"),
        "broken off, not ended: {text}"
    );
}
