//! `cargo xtask bench-pages [--files N] [--large N] [--seconds S]`: the pages listener of the release
//! binary against the reference's approach and a plain static file server, on one site.
//!
//! - **Deploy**: a site of N files (10,000 by default, in 100 folders, 1–6 KiB each) on a
//!   branch of the testkit upstream (C git's http-backend). gitcache's `PUT` (a first deploy,
//!   and the same tree deployed to another host, whose blobs are stored already) against
//!   `git clone --depth 1` of the branch followed by copying its tree (`cp -r`), and the
//!   server's anonymous memory during the first deploy (`--large N` adds N incompressible files
//!   of 8 MiB).
//! - **Requests per second**: a small file (about 1 KiB) and a 1 MiB file, over 8 keep-alive
//!   connections for S seconds, from gitcache against `python3 -m http.server` serving the
//!   checked-out tree.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitcache_testkit::repo::{self, RepoSpec, Rng};
use gitcache_testkit::upstream::{Access, Upstream};

const CONNECTIONS: usize = 8;

fn run_ok(command: &mut Command) -> Result<()> {
    let out = command.output()?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Write the site's files under `dir`: `files` text files in folders of 100, plus `small.txt`,
/// `large.bin` (1 MiB, incompressible) and `large` more incompressible files of 8 MiB.
fn write_site(dir: &Path, files: usize, large: usize) -> Result<()> {
    let mut rng = Rng::new(4242);
    for i in 0..files {
        let folder = dir.join(format!("section-{:03}", i / 100));
        std::fs::create_dir_all(&folder)?;
        let lines = 16 + rng.below(80);
        let body: String = (0..lines)
            .map(|l| format!("<p>page {i} line {l} value {}</p>\n", rng.below(1_000_000)))
            .collect();
        std::fs::write(folder.join(format!("page-{i:05}.html")), body)?;
    }
    std::fs::write(dir.join("small.txt"), "x".repeat(1000))?;
    std::fs::write(dir.join("large.bin"), rng.bytes(1 << 20))?;
    for i in 0..large {
        std::fs::write(dir.join(format!("large-{i:03}.bin")), rng.bytes(8 << 20))?;
    }
    std::fs::write(dir.join("index.html"), "<h1>bench</h1>\n")?;
    Ok(())
}

/// One `PUT` deploying `url` to `host`, and how long it took.
fn deploy(addr: &str, host: &str, url: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "PUT / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{url}",
        url.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 201") {
        bail!("deploy failed: {answer}");
    }
    Ok(started.elapsed())
}

/// Requests per second for `path` at `addr` (as `host`), over [`CONNECTIONS`] keep-alive
/// connections for `seconds`, each answer read whole and checked to be `expected` bytes.
fn requests_per_second(
    addr: &str,
    host: &str,
    path: &str,
    expected: usize,
    seconds: u64,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            let (addr, host, path) = (addr.to_owned(), host.to_owned(), path.to_owned());
            std::thread::spawn(move || {
                let mut connection: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) {
                    match one_request(&mut connection, &addr, &host, &path) {
                        Ok(n) if n == expected => done.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            connection = None;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} requests for {path} failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// One `GET` on `connection` (opened when there is none; dropped when the server closes it):
/// the body's length.
fn one_request(
    connection: &mut Option<BufReader<TcpStream>>,
    addr: &str,
    host: &str,
    path: &str,
) -> Result<usize> {
    if connection.is_none() {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        *connection = Some(BufReader::with_capacity(1 << 16, stream));
    }
    let reader = connection.as_mut().context("connected")?;
    write!(
        reader.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
    )?;
    let mut length = None;
    let mut close = false;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("closed");
        }
        let trimmed = line.trim_end();
        if first {
            close = trimmed.starts_with("HTTP/1.0");
            first = false;
        }
        if trimmed.is_empty() {
            break;
        }
        let lower = trimmed.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = Some(value.trim().parse::<usize>()?);
        } else if lower == "connection: close" {
            close = true;
        } else if lower == "connection: keep-alive" {
            close = false;
        }
    }
    let length = length.context("no Content-Length")?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if close {
        *connection = None;
    }
    Ok(length)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let files = crate::number_flag(args, "--files", 10_000)? as usize;
    let seconds = crate::number_flag(args, "--seconds", 5)?;
    let large = crate::number_flag(args, "--large", 0)? as usize;
    crate::build_release_server(root)?;
    let upstream = Upstream::start()?;
    let bare = upstream.repo_path("acme/site");
    repo::generate(&bare, &RepoSpec::tiny(77))?;
    upstream.adopt_repo("acme/site", Access::Public)?;
    let work = tempfile::Builder::new()
        .prefix("gitcache-bench-pages-")
        .tempdir()?;
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree)?;
    write_site(&tree, files, large)?;
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
                .args(args)
                .current_dir(&tree),
        )
    };
    git(&["init", "-q", "-b", "pages"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "site"])?;
    git(&[
        "push",
        "-q",
        bare.to_str().context("path")?,
        "pages:refs/heads/pages",
    ])?;
    let url = format!("{}#pages", upstream.repo_url("acme/site"));

    let data = work.path().join("data");
    let mut server = Command::new(root.join("target/release/gitcache-server"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.url()])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--pages-listen",
            "127.0.0.1:0",
            "--pages-insecure",
            "--pages-private-sources",
        ])
        .args([
            "--log-level",
            "warn",
            "--log-format",
            "plain",
            "--min-free-bytes",
            "0",
        ])
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<()> {
        let addr = pages_address(&mut server)?;
        // Deploys: the first stores every blob; later ones (other hosts) find them stored.
        // The server's anonymous memory (its heap: not the packs it maps), sampled as the
        // first deploy runs.
        let (pid, sampling) = (server.id(), Arc::new(AtomicBool::new(true)));
        let sampler = std::thread::spawn({
            let sampling = Arc::clone(&sampling);
            move || {
                let mut most = 0;
                while sampling.load(Ordering::Relaxed) {
                    most = most.max(crate::bench_proxy::rss_kib(pid).1);
                    std::thread::sleep(Duration::from_millis(20));
                }
                most
            }
        });
        let first = deploy(&addr, "site0.example", &url);
        sampling.store(false, Ordering::Relaxed);
        let first_anon = sampler.join().map_err(|_| anyhow::anyhow!("sampler"))? / 1024;
        let first = first?;
        let again = median(
            (1..=3)
                .map(|i| deploy(&addr, &format!("site{i}.example"), &url))
                .collect::<Result<_>>()?,
        );
        let reference = median(
            (0..3)
                .map(|i| -> Result<Duration> {
                    let started = Instant::now();
                    let clone = work.path().join(format!("clone-{i}"));
                    let out = work.path().join(format!("copy-{i}"));
                    run_ok(
                        Command::new("git")
                            .args([
                                "clone",
                                "-q",
                                "--depth",
                                "1",
                                "--branch",
                                "pages",
                                &upstream.repo_url("acme/site"),
                            ])
                            .arg(&clone),
                    )?;
                    std::fs::remove_dir_all(clone.join(".git"))?;
                    run_ok(Command::new("cp").arg("-r").arg(&clone).arg(&out))?;
                    Ok(started.elapsed())
                })
                .collect::<Result<_>>()?,
        );
        println!("## Deploying a site of {files} files and {large} of 8 MiB\n");
        println!("| approach | time |\n| --- | --- |");
        println!(
            "| gitcache `PUT`, first deploy (every blob stored) | {:.2} s |",
            first.as_secs_f64()
        );
        println!("| server's anonymous memory at most during it | {first_anon} MiB |");
        println!(
            "| gitcache `PUT`, the same tree to another host (median of 3) | {:.2} s |",
            again.as_secs_f64()
        );
        println!(
            "| `git clone --depth 1` + `cp -r` (median of 3) | {:.2} s |",
            reference.as_secs_f64()
        );

        // A plain static file server on the same files.
        let python_port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let mut python = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &python_port.to_string(),
            ])
            .current_dir(&tree)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let python_addr = format!("127.0.0.1:{python_port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&python_addr).is_err() {
            if Instant::now() > deadline {
                bail!("python3 -m http.server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let rows = (|| -> Result<Vec<(String, f64, f64)>> {
            let mut rows = Vec::new();
            for (name, path, size) in [
                ("small file (1,000 bytes)", "/small.txt", 1000),
                ("1 MiB file", "/large.bin", 1 << 20),
            ] {
                let ours = requests_per_second(&addr, "site0.example", path, size, seconds)?;
                let theirs = requests_per_second(&python_addr, "localhost", path, size, seconds)?;
                rows.push((name.to_owned(), ours, theirs));
            }
            Ok(rows)
        })();
        let _ = python.kill();
        let _ = python.wait();
        println!(
            "\n## Requests per second ({CONNECTIONS} keep-alive connections, {seconds} s each)\n"
        );
        println!(
            "| file | gitcache pages | `python3 -m http.server` | ratio |\n| --- | --- | --- | --- |"
        );
        for (name, ours, theirs) in rows? {
            println!(
                "| {name} | {ours:.0} | {theirs:.0} | {:.1}x |",
                ours / theirs
            );
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The pages listener's address, from the server's first lines; the rest of its output is
/// drained.
fn pages_address(server: &mut std::process::Child) -> Result<String> {
    let stderr = server.stderr.take().context("piped stderr")?;
    let mut lines = BufReader::new(stderr);
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line)? == 0 {
            bail!("the server exited before listening");
        }
        if let Some(addr) = line
            .trim()
            .strip_prefix("gitcache pages listening on http://")
        {
            let addr = addr.to_owned();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut lines, &mut std::io::sink());
            });
            return Ok(addr);
        }
    }
}
