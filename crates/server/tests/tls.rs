//! HTTPS on gitcache's own listener (`--tls-cert`, `--tls-key`): the real git client clones
//! over `https://`, trusting a test certificate authority; a renewed certificate is served
//! after SIGHUP without a restart; a renewal that cannot be used keeps the one in use.

mod common;

use common::{Gitcache, fsck, http};
use gitcache_testkit::git::{GitClient, GitOutput};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::tls::TestCa;
use gitcache_testkit::upstream::{Access, Upstream};

fn hang_up(cache: &Gitcache) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &cache.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn git_clones_over_https_and_a_renewed_certificate_is_served_after_sighup() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/tls"), &RepoSpec::tiny(1330)).unwrap();
    upstream.adopt_repo("acme/tls", Access::Public).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let first = TestCa::new(certs.path(), "first").unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let cache = Gitcache::start(
        &upstream,
        &[
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ],
    );
    assert_eq!(cache.scheme, "https");
    let git = GitClient::new().unwrap();
    let clone = |ca: &TestCa, dir: &str| -> GitOutput {
        let [file, folder] = ca.git_trust();
        let url = cache.url("acme/tls");
        git.run(
            git.home(),
            &["-c", &file, "-c", &folder, "clone", "-q", &url, dir],
        )
        .unwrap()
    };
    clone(&first, "one").expect_success();
    fsck(&git.home().join("one"));
    // Plain HTTP on the TLS port gets no answer.
    let plain = http(&cache.addr, "GET", "/healthz", &[], b"");
    assert_ne!(plain.status, 200, "{}", plain.head);

    // A renewal by another authority: served after SIGHUP; the old one no longer is.
    let second = TestCa::new(certs.path(), "second").unwrap();
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    hang_up(&cache);
    cache.log_with("TLS certificate reloaded", 1);
    clone(&second, "two").expect_success();
    fsck(&git.home().join("two"));
    let refused = clone(&first, "three");
    assert!(
        !refused.success() && refused.stderr.contains("certificate"),
        "{refused}"
    );

    // A renewal that cannot be used (a key half-written) keeps the certificate in use.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    hang_up(&cache);
    cache.log_with("TLS certificate not reloaded", 1);
    clone(&second, "four").expect_success();
}

#[test]
fn a_certificate_that_cannot_be_read_stops_the_start_with_a_message() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "only").unwrap();
    let other = TestCa::new(certs.path(), "other").unwrap();
    for (cert, key, message) in [
        (&ca.cert, &other.key, "does not match the certificate"),
        (&ca.key, &ca.key, "no certificate in the file"),
        (&ca.cert, &certs.path().join("missing.pem"), "TLS key"),
    ] {
        let args = [
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ];
        common::fails_to_start(&certs.path().join("data"), &args, message);
    }
}

/// Without TLS, SIGHUP (a `systemctl reload`) reloads nothing and stops nothing.
#[test]
fn a_plain_server_survives_sighup() {
    let upstream = Upstream::start().unwrap();
    let cache = Gitcache::start(&upstream, &[]);
    assert_eq!(cache.scheme, "http");
    hang_up(&cache);
    cache.log_with("nothing to reload", 1);
    assert_eq!(http(&cache.addr, "GET", "/healthz", &[], b"").status, 200);
}
