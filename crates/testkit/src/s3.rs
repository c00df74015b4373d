//! A real S3-compatible server for tests: moto's `moto_server` on loopback, with one bucket.
//!
//! moto (from PyPI) applies conditional writes (`If-None-Match: *`, `If-Match`) atomically,
//! which is what manifests rely on. Its path is given by `GITCACHE_TEST_MOTO` (`.ci/moto`
//! installs it and prints the path). Without it, [`S3Server::start`] returns `None` and the
//! tests that need a bucket are skipped, except under CI (`CI` set), where that is an error.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server; stopped when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    bucket: String,
}

impl S3Server {
    /// Start a server with the bucket `bucket`, or `None` when moto is not installed here.
    #[track_caller]
    pub fn start(bucket: &str) -> Option<S3Server> {
        let Some(program) = std::env::var_os("GITCACHE_TEST_MOTO") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "GITCACHE_TEST_MOTO must name moto_server under CI (see .ci/moto)"
            );
            eprintln!("GITCACHE_TEST_MOTO is not set: skipping the S3 part of this test");
            return None;
        };
        // A free port: taken, noted, let go, and given to moto.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.to_string_lossy()));
        let server = S3Server {
            child,
            addr,
            bucket: bucket.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.request("GET", "/").is_some_and(|s| s == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = server.request("PUT", &format!("/{bucket}"));
        assert_eq!(created, Some(200), "creating bucket {bucket}");
        Some(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address (to put a [`crate::relay::Relay`] in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The status of a bodiless request, or `None` if the server does not answer.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        let line = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
