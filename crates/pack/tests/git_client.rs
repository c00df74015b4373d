//! The real `git` client against a minimal HTTP server that answers from this crate:
//! capability advertisement, `ls-refs` and `fetch`, nothing else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use gitcache_pack::{Options, Repository, plan};
use gitcache_protocol::advertise::Advertisement;
use gitcache_protocol::request::{Command, Limits, parse_request};
use gitcache_protocol::{ls_refs, pktline};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl Server {
    /// Serve the bare repositories under `root` on 127.0.0.1.
    fn start(root: PathBuf) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (stop2, fetches2) = (Arc::clone(&stop), Arc::clone(&fetches));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let (root, fetches) = (root.clone(), Arc::clone(&fetches2));
                std::thread::spawn(move || {
                    if let Ok(stream) = stream {
                        let _ = handle(&root, stream, &fetches);
                    }
                });
            }
        });
        Server {
            addr,
            stop,
            fetches,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }
}

fn handle(root: &Path, stream: TcpStream, fetches: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        body.resize(len.parse().unwrap_or(0), 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    if header("content-encoding").is_some_and(|v| v == "gzip") {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain)?;
        body = plain;
    }
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, payload) =
        route(root, &method, path, header("git-protocol"), &body, fetches);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    stream.write_all(&payload)?;
    stream.flush()
}

fn route(
    root: &Path,
    method: &str,
    path: &str,
    protocol: Option<String>,
    body: &[u8],
    fetches: &AtomicUsize,
) -> (&'static str, &'static str, Vec<u8>) {
    let (repo_path, service) = match path.rsplit_once(".git/") {
        Some((repo, rest)) => (
            root.join(format!("{}.git", repo.trim_start_matches('/'))),
            rest,
        ),
        None => return ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    let Ok(repo) = Repository::open(&repo_path) else {
        return (
            "404 Not Found",
            "text/plain",
            b"no such repository\n".to_vec(),
        );
    };
    let mut out = Vec::new();
    match (method, service) {
        ("GET", "info/refs") => {
            if !protocol.is_some_and(|p| p.contains("version=2")) {
                return (
                    "400 Bad Request",
                    "text/plain",
                    b"this server speaks protocol v2 only\n".to_vec(),
                );
            }
            Advertisement::new("gitcache-test/1", repo.object_format())
                .write_to(&mut out)
                .unwrap();
            ("200 OK", "application/x-git-upload-pack-advertisement", out)
        }
        ("POST", "git-upload-pack") => {
            let result = parse_request(body, Limits::default())
                .map_err(|e| e.to_string())
                .and_then(|request| {
                    let request = request.ok_or("empty request")?;
                    match &request.command {
                        Command::LsRefs(args) => {
                            let lines = repo.ls_refs(args).map_err(|e| e.to_string())?;
                            ls_refs::write_response(&mut out, &lines, args)
                                .map_err(|e| e.to_string())
                        }
                        Command::Fetch(fetch) => {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            let plan = plan(
                                &repo,
                                fetch,
                                request.capabilities.object_format(),
                                &Options::default(),
                            )
                            .map_err(|e| e.wire_message())?;
                            plan.write_to(&mut out)
                                .map(drop)
                                .map_err(|e| e.wire_message())
                        }
                        Command::ObjectInfo(_) | Command::BundleUri => {
                            Err(format!("{} is not served", request.command.name()))
                        }
                    }
                });
            if let Err(message) = result {
                out.clear();
                pktline::write_error(&mut out, message.as_bytes()).unwrap();
            }
            ("200 OK", "application/x-git-upload-pack-result", out)
        }
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    }
}

struct Setup {
    _root: tempfile::TempDir,
    src: PathBuf,
    server: Server,
    client: GitClient,
}

fn setup(spec: RepoSpec) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("acme/widgets.git");
    repo::generate(&src, &spec).unwrap();
    let server = Server::start(root.path().to_owned());
    Setup {
        _root: root,
        src,
        server,
        client: GitClient::new().unwrap(),
    }
}

impl Setup {
    fn git(&self, dir: &Path, args: &[&str]) -> gitcache_testkit::git::GitOutput {
        self.client.run(dir, args).unwrap().expect_success()
    }

    fn home(&self) -> PathBuf {
        self.client.home().to_owned()
    }

    fn src_rev(&self, rev: &str) -> String {
        self.client.rev_parse(&self.src, rev).unwrap()
    }
}

#[test]
fn clone_then_fetch_new_commits() {
    let s = setup(RepoSpec::small(41));
    let url = s.server.url("acme/widgets");
    let out = s.git(&s.home(), &["clone", "--progress", &url, "w"]);
    assert!(
        out.stderr.contains("Enumerating objects"),
        "git shows our progress: {out}"
    );
    let work = s.home().join("w");
    s.client.fsck(&work).unwrap().expect_success();
    assert_eq!(
        s.client.rev_parse(&work, "HEAD").unwrap(),
        s.src_rev("main")
    );
    let tags = s.git(&work, &["tag", "-l"]).stdout;
    assert!(tags.contains("v1.0") && tags.contains("light-"), "{tags}");

    let new_tip = repo::append_commits(&s.src, "main", 7, 9).unwrap();
    s.git(&s.src, &["tag", "-a", "-m", "new release", "v99", &new_tip]);
    let out = s.git(&work, &["fetch", "--progress", "origin"]);
    assert!(out.stderr.contains("Total"), "{out}");
    assert_eq!(
        s.client
            .rev_parse(&work, "refs/remotes/origin/main")
            .unwrap(),
        new_tip
    );
    assert!(
        s.git(&work, &["tag", "-l"]).stdout.contains("v99"),
        "include-tag brought the new tag"
    );
    s.client.fsck(&work).unwrap().expect_success();
}

#[test]
fn shallow_clone_deepen_and_unshallow() {
    let s = setup(RepoSpec::small(42));
    let url = s.server.url("acme/widgets");
    s.git(&s.home(), &["clone", "--quiet", "--depth=1", &url, "d"]);
    let work = s.home().join("d");
    s.client.fsck(&work).unwrap().expect_success();
    assert_eq!(
        s.git(&work, &["rev-list", "--count", "HEAD"]).stdout.trim(),
        "1"
    );
    s.git(&work, &["fetch", "--quiet", "--deepen=3"]);
    assert_eq!(
        s.git(&work, &["rev-list", "--count", "--first-parent", "HEAD"])
            .stdout
            .trim(),
        "4"
    );
    s.client.fsck(&work).unwrap().expect_success();
    s.git(&work, &["fetch", "--quiet", "--unshallow"]);
    assert!(!work.join(".git/shallow").exists());
    s.client.fsck(&work).unwrap().expect_success();
    let total = s.git(&s.src, &["rev-list", "--count", "main"]).stdout;
    assert_eq!(s.git(&work, &["rev-list", "--count", "HEAD"]).stdout, total);

    let since = s
        .git(&s.src, &["log", "-1", "--format=%ct", "main~5"])
        .stdout;
    s.git(
        &s.home(),
        &[
            "clone",
            "--quiet",
            &format!("--shallow-since={}", since.trim()),
            &url,
            "since",
        ],
    );
    s.client
        .fsck(&s.home().join("since"))
        .unwrap()
        .expect_success();
    s.git(
        &s.home(),
        &[
            "clone",
            "--quiet",
            "--shallow-exclude=v1.0",
            &url,
            "exclude",
        ],
    );
    s.client
        .fsck(&s.home().join("exclude"))
        .unwrap()
        .expect_success();
}

#[test]
fn partial_clone_fetches_blobs_lazily() {
    let s = setup(RepoSpec::small(43));
    let url = s.server.url("acme/widgets");
    let before = s.server.fetches.load(Ordering::SeqCst);
    s.git(
        &s.home(),
        &["clone", "--quiet", "--filter=blob:none", &url, "p"],
    );
    let work = s.home().join("p");
    // The checkout needed blobs: at least one lazy fetch after the clone's own.
    assert!(s.server.fetches.load(Ordering::SeqCst) >= before + 2);
    s.client.fsck_connectivity(&work).unwrap().expect_success();
    let file = s.git(&work, &["show", "HEAD~3:scripts/build.sh"]).stdout;
    assert!(file.starts_with("#!/bin/sh"), "{file}");
    s.git(
        &s.home(),
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            "--filter=tree:0",
            &url,
            "t",
        ],
    );
    s.client
        .fsck_connectivity(&s.home().join("t"))
        .unwrap()
        .expect_success();
}

#[test]
fn ci_fetch_of_one_commit_at_depth_one() {
    let s = setup(RepoSpec::small(44));
    let url = s.server.url("acme/widgets");
    let sha = s.src_rev("main~2");
    let work = s.home().join("ci");
    std::fs::create_dir_all(&work).unwrap();
    s.git(&work, &["init", "--quiet"]);
    s.git(&work, &["remote", "add", "origin", &url]);
    let refspec = format!("+{sha}:refs/remotes/origin/main");
    let mut fetch = gitcache_testkit::git::CHECKOUT_FETCH.to_vec();
    fetch.push(&refspec);
    s.git(&work, &fetch);
    s.git(
        &work,
        &["checkout", "--quiet", "--force", "refs/remotes/origin/main"],
    );
    assert_eq!(s.client.rev_parse(&work, "HEAD").unwrap(), sha);
    s.client.fsck(&work).unwrap().expect_success();
}

#[test]
fn sha256_repository() {
    let s = setup(RepoSpec::small(45).sha256());
    let url = s.server.url("acme/widgets");
    s.git(&s.home(), &["clone", "--quiet", &url, "s"]);
    let work = s.home().join("s");
    s.client.fsck(&work).unwrap().expect_success();
    assert_eq!(
        s.client.rev_parse(&work, "HEAD").unwrap(),
        s.src_rev("main")
    );
    s.git(&s.home(), &["clone", "--quiet", "--depth=2", &url, "s2"]);
    s.client
        .fsck(&s.home().join("s2"))
        .unwrap()
        .expect_success();
}

#[test]
fn a_missing_object_is_an_err_line_the_client_shows() {
    let s = setup(RepoSpec::tiny(46));
    let url = s.server.url("acme/widgets");
    let work = s.home().join("e");
    std::fs::create_dir_all(&work).unwrap();
    s.git(&work, &["init", "--quiet"]);
    let missing = "1234567890123456789012345678901234567890";
    let out = s
        .client
        .run(&work, &["fetch", &url, missing])
        .unwrap()
        .expect_failure();
    assert!(
        out.stderr
            .contains(&format!("upload-pack: not our ref {missing}")),
        "{out}"
    );
}
