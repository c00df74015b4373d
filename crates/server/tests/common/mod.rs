//! The real binary in front of the testkit upstream, and a raw HTTP client for what `git`
//! cannot show (statuses, headers, whether pack bytes were sent).

#![allow(dead_code, unreachable_pub)] // Reason: each test binary uses a different part.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gitcache_testkit::upstream::Upstream;

/// A running `gitcache-server`; killed when dropped.
pub struct Gitcache {
    pub child: Child,
    pub addr: String,
    /// `http`, or `https` when started with a certificate.
    pub scheme: &'static str,
    pub data: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Gitcache {
    /// Start in front of `upstream` (the default upstream) with `extra` flags.
    pub fn start(upstream: &Upstream, extra: &[&str]) -> Gitcache {
        let data = tempfile::Builder::new()
            .prefix("gitcache-data-")
            .tempdir()
            .unwrap();
        Gitcache::start_in(upstream, data, extra)
    }

    /// Kill the server outright (as a crash would) and start a new one on the same data.
    pub fn crash_and_restart(mut self, upstream: &Upstream, extra: &[&str]) -> Gitcache {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap());
        drop(self);
        Gitcache::start_in(upstream, data, extra)
    }

    /// Start on an existing data directory.
    pub fn start_in(upstream: &Upstream, data: tempfile::TempDir, extra: &[&str]) -> Gitcache {
        Gitcache::start_with_env(upstream, data, extra, &[])
    }

    /// [`start_in`](Self::start_in), with `env` set for the server.
    pub fn start_with_env(
        upstream: &Upstream,
        data: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gitcache {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gitcache-server"));
        // Nothing of the machine's AWS settings: the tests say where the bucket is.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            command.env_remove(key);
        }
        let mut child = command
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.url()])
            .arg("--data-dir")
            .arg(data.path())
            .args(["--log-level", "debug"])
            // Plain lines unless the test asks for another format.
            .args(if extra.contains(&"--log-format") {
                &[][..]
            } else {
                &["--log-format", "plain"][..]
            })
            // The test machine's disk may be nearly full: no free-space floor unless the
            // test sets one.
            .args(if extra.contains(&"--min-free-bytes") {
                &[][..]
            } else {
                &["--min-free-bytes", "0"][..]
            })
            .args(extra)
            .env_remove("GITCACHE_CONFIG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        let (scheme, addr) = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("gitcache exited before listening:\n{log}");
            }
            log.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix("gitcache listening on http://") {
                break ("http", addr.to_owned());
            }
            if let Some(addr) = line.trim().strip_prefix("gitcache listening on https://") {
                break ("https", addr.to_owned());
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(log));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Gitcache {
            child,
            addr,
            scheme,
            data,
            log,
        }
    }

    /// The URL `git` uses for `owner/repo`.
    pub fn url(&self, name: &str) -> String {
        format!("{}://{}/{name}.git", self.scheme, self.addr)
    }

    /// The mirror of `owner/repo` of the default upstream (`127.0.0.1:<port>` as host).
    pub fn mirror(&self, upstream: &Upstream, name: &str) -> PathBuf {
        let host = upstream.addr().to_string().replace(':', "_");
        self.data
            .path()
            .join("mirrors")
            .join(host)
            .join(format!("{name}.git"))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `n` lines containing `needle` (the server writes it
    /// asynchronously); panics after a minute, as [`wait_for`] does (background work, such
    /// as a mirror's first maintenance, may take that long on a loaded machine).
    pub fn log_with(&self, needle: &str, n: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if count(&log, needle) >= n {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expected {n} lines with {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Gitcache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP exchange's outcome.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    /// The body as sent (chunk framing included, which these checks do not mind).
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The message of the `ERR` line that is the whole body: how upload-pack refuses a
    /// request.
    pub fn refusal(&self) -> Option<String> {
        let content = self.content();
        let len = usize::from_str_radix(std::str::from_utf8(content.get(..4)?).ok()?, 16).ok()?;
        if len != content.len() {
            return None;
        }
        let message = content[4..].strip_prefix(b"ERR ")?;
        String::from_utf8(message.to_vec()).ok()
    }

    pub fn has_pack(&self) -> bool {
        self.body.windows(4).any(|w| w == b"PACK")
    }
}

/// A connection to `addr` whose reads give up after `within` (a test that hangs fails).
pub fn connect(addr: &str, within: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    stream
}

/// One request on its own connection.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    http_on(
        connect(addr, Duration::from_secs(60)),
        addr,
        method,
        path,
        headers,
        body,
    )
}

/// One request on `stream`, a connection of its own to `addr`.
pub fn http_on(
    mut stream: TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head,
        body: raw[(split + 4).min(raw.len())..].to_vec(),
    }
}

/// Poll `done` until it holds; fails the test after a minute, naming `what`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A protocol v2 `fetch` request body wanting `oid`.
pub fn fetch_body(oid: &str, extra: &[&str]) -> Vec<u8> {
    let mut lines = vec![
        "command=fetch".to_owned(),
        "agent=git/test".to_owned(),
        "object-format=sha1".to_owned(),
    ];
    let mut body = Vec::new();
    for l in lines.drain(..) {
        pkt(&mut body, &l);
    }
    body.extend_from_slice(b"0001");
    pkt(&mut body, &format!("want {oid}"));
    for l in extra {
        pkt(&mut body, l);
    }
    pkt(&mut body, "done");
    body.extend_from_slice(b"0000");
    body
}

/// Append `line` (and a newline) as one pkt-line.
pub fn pkt(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(format!("{:04x}{line}\n", line.len() + 5).as_bytes());
}

/// `Authorization: Basic` for `x-access-token:<token>`, as actions/checkout sends it.
pub fn basic(token: &str) -> String {
    use base64::Engine;
    let pair = format!("x-access-token:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `git fsck --strict` must pass in `repo`.
#[track_caller]
pub fn fsck(repo: &Path) {
    gitcache_testkit::git::git_stdout(repo, &["fsck", "--strict", "--no-progress"]);
}

impl Answer {
    /// The body with HTTP/1.1 chunked framing undone.
    pub fn content(&self) -> Vec<u8> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if !chunked {
            return self.body.clone();
        }
        let mut out = Vec::new();
        let mut rest = &self.body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
}

/// How many lines of `log` contain `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Wait until the first pack of `mirror` is marked with its tips (by the refresh that made
/// the mirror, before it writes the refs: see [`wait_for_mirror`] for those), so that
/// clones are sent that pack as it is.
pub fn wait_for_tips_mark(mirror: &std::path::Path) {
    wait_for_pack_file(mirror, ".tips");
}

/// Wait until `mirror` holds every ref of `source` as `source` has it: a first clone may be
/// answered as its pack arrives, before the mirror it makes is whole.
pub fn wait_for_mirror(mirror: &std::path::Path, source: &std::path::Path) {
    let refs = |repo: &std::path::Path| {
        if !repo.join("HEAD").is_file() {
            return String::new();
        }
        gitcache_testkit::git::git_stdout(
            repo,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
        )
    };
    let want = refs(source);
    wait_for("the mirror to be whole", || refs(mirror) == want);
}

/// Wait until a pack of `mirror` has bitmaps (written in the background after a mirror's
/// first fetch): answers made before may choose other delta bases (the bitmaps' name hashes
/// guide that choice), so a test comparing answers takes them after.
pub fn wait_for_bitmaps(mirror: &std::path::Path) {
    wait_for_pack_file(mirror, ".bitmap");
}

fn wait_for_pack_file(mirror: &std::path::Path, suffix: &str) {
    let packs = mirror.join("objects/pack");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&packs)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(suffix))
    {
        assert!(std::time::Instant::now() < deadline, "no {suffix} file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new, empty PostgreSQL database on the server `GITCACHE_TEST_DATABASE_URL` names (made
/// with `psql`), its URL; `None` without the variable (which CI must set).
pub fn postgres_database(tag: &str) -> Option<String> {
    let Ok(server) = std::env::var("GITCACHE_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests: set GITCACHE_TEST_DATABASE_URL"
        );
        return None;
    };
    let name = format!("gitcache_server_{tag}_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        let out = Command::new("psql")
            .args([server.as_str(), "-q", "-c", &sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(format!("{}/{name}", server.rsplit_once('/').unwrap().0))
}

/// The server started on `data` with `args` stops at once, saying `message`.
pub fn fails_to_start<S: AsRef<std::ffi::OsStr>>(data: &Path, args: &[S], message: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .env_remove("GITCACHE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(stderr.contains(message), "{message}: {stderr}");
}

/// Chromium and the `tests/browser` scripts' `node_modules`, when both are here. Without them
/// a browser test is skipped locally; under CI (`CI` set) it fails instead.
pub fn browser() -> Option<PathBuf> {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("GITCACHE_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if chromium.exists() && script_dir.join("node_modules/playwright-core").is_dir() {
        return Some(chromium);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the browser tests: install chromium and run npm ci in {}",
        script_dir.display()
    );
    eprintln!("chromium or playwright-core missing: browser test skipped");
    None
}

/// Run the browser script `script` of `tests/browser` with `args`, then `chromium`'s path,
/// and check that it printed `done` and wrote the PNG `screenshot` (one of `args`).
pub fn run_browser_script(
    script: &str,
    args: &[&std::ffi::OsStr],
    chromium: &Path,
    screenshot: &Path,
    done: &str,
) {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let _ = std::fs::remove_file(screenshot);
    let out = Command::new("node")
        .arg(script_dir.join(script))
        .args(args)
        .arg(chromium)
        .current_dir(&script_dir)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(done),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(screenshot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
