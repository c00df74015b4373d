//! `cargo xtask bench-proxy [repo]`: gitcache (release build) in front of C git's
//! http-backend, against that http-backend alone, on the same repository and the same
//! recorded request bodies, over loopback HTTP. Times are until the last response byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitcache_testkit::upstream::{Access, Upstream};

use crate::bench_pack::{body, git, prepare_repo, requests};

const RUNS: usize = 5;
const MISS_RUNS: usize = 3;
const NAME: &str = "bench/large";
const PATH: &str = "/bench/large.git/git-upload-pack";

/// POST `body` and read the whole response: time until the last byte, and the bytes.
fn post(addr: &str, body: &[u8]) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nGit-Protocol: version=2\r\n\
         Content-Type: application/x-git-upload-pack-request\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let elapsed = started.elapsed();
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "{addr}: {}",
            String::from_utf8_lossy(&response[..response.len().min(300)])
        );
    }
    Ok((elapsed, response.len() as u64))
}

fn median(mut runs: Vec<(Duration, u64)>) -> (Duration, u64) {
    runs.sort_by_key(|r| r.0);
    runs[runs.len() / 2]
}

/// The bench server: killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_gitcache(
    root: &Path,
    upstream: &str,
    data: &Path,
    extra: &[&str],
) -> Result<(Server, String)> {
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "-p", "gitcache-server"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("building gitcache-server failed");
    }
    let mut child = Command::new(root.join("target/release/gitcache-server"))
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .args(["--upstream-timeout", "600", "--log-level", "warn"])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().context("stderr")?);
    let server = Server(child);
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line)? == 0 {
            bail!("gitcache exited before listening");
        }
        if let Some(addr) = line.trim().strip_prefix("gitcache listening on http://") {
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return Ok((server, addr.to_owned()));
        }
    }
}

/// Wait until the mirror's background marking is done (its pack has a `.tips` file), so
/// nothing runs behind a measurement.
fn wait_for_mark(mirror: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let marked = std::fs::read_dir(mirror.join("objects/pack"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tips"))
            })
            .unwrap_or(false);
        if marked {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the mirror was never marked");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` identical requests at once: wall time until the last one finished.
fn concurrent(addr: &str, body: &[u8], n: usize) -> Result<Duration> {
    let barrier = std::sync::Barrier::new(n);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    post(addr, body)
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("request thread")?;
        }
        anyhow::Ok(())
    })?;
    Ok(started.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn run(root: &Path, repo: Option<&str>, only_cache: bool) -> Result<()> {
    let (repo, tips) = prepare_repo(root, repo)?;
    let upstream = Upstream::start()?;
    let link = upstream.repo_path(NAME);
    std::fs::create_dir_all(link.parent().context("parent")?)?;
    std::os::unix::fs::symlink(std::fs::canonicalize(&repo)?, &link)?;
    upstream.adopt_repo(NAME, Access::Public)?;
    let backend = upstream.addr().to_string();

    let data = tempfile::Builder::new()
        .prefix("gitcache-bench-")
        .tempdir()?;
    if only_cache {
        let depth1 = requests(&repo, &tips, false)?
            .into_iter()
            .find(|(name, _)| *name == "clone --depth=1")
            .map(|(_, fetch)| body(fetch))
            .context("a depth-1 case")?;
        return response_cache(root, &upstream, &backend, data.path(), &depth1);
    }
    // Pack generation itself: the response cache off.
    let (_server, gitcache) = start_gitcache(
        root,
        &upstream.url(),
        data.path(),
        &["--response-cache", "false"],
    )?;
    let mirror: PathBuf = data
        .path()
        .join("mirrors")
        .join(backend.replace(':', "_"))
        .join("bench/large.git");

    let cases: Vec<(&str, Vec<u8>)> = requests(&repo, &tips, false)?
        .into_iter()
        .map(|(name, fetch)| (name, body(fetch)))
        .collect();
    let depth1 = cases
        .iter()
        .find(|(name, _)| *name == "clone --depth=1")
        .map(|(_, body)| body.clone())
        .context("a depth-1 case")?;

    println!(
        "\nrepository: {} commits; medians of {RUNS} runs ({MISS_RUNS} for misses)\n",
        git(&repo, &["rev-list", "--all", "--count"])?.trim()
    );
    println!(
        "| request | http-backend | gitcache hit | gitcache miss | http-backend bytes | gitcache bytes |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, request) in &cases {
        let theirs = median(
            (0..RUNS)
                .map(|_| post(&backend, request))
                .collect::<Result<_>>()?,
        );
        let mut misses = Vec::new();
        for _ in 0..MISS_RUNS {
            if mirror.exists() {
                wait_for_mark(&mirror)?;
                std::fs::remove_dir_all(&mirror)?;
            }
            misses.push(post(&gitcache, request)?);
        }
        let miss = median(misses);
        wait_for_mark(&mirror)?;
        let hit = median(
            (0..RUNS)
                .map(|_| post(&gitcache, request))
                .collect::<Result<_>>()?,
        );
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(theirs.0),
            ms(hit.0),
            ms(miss.0),
            theirs.1,
            hit.1
        );
    }
    let theirs = concurrent(&backend, &depth1, 8)?;
    let ours = concurrent(&gitcache, &depth1, 8)?;
    println!(
        "| 8 concurrent clone --depth=1 (wall) | {} | {} | | | |",
        ms(theirs),
        ms(ours)
    );
    drop(_server);
    response_cache(root, &upstream, &backend, data.path(), &depth1)
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    Ok(kib / 1024)
}

/// The response cache: depth 1 sent from a stored response, and identical depth-1 fetches
/// of a cold key at once, each on a fresh server (so that its peak memory is theirs).
fn response_cache(
    root: &Path,
    upstream: &Upstream,
    backend: &str,
    data: &Path,
    depth1: &[u8],
) -> Result<()> {
    let responses = data.join("responses");
    let theirs = median(
        (0..RUNS)
            .map(|_| post(backend, depth1))
            .collect::<Result<_>>()?,
    );
    let (server, gitcache) = start_gitcache(root, &upstream.url(), data, &[])?;
    post(&gitcache, depth1)?;
    let stored = median(
        (0..RUNS)
            .map(|_| post(&gitcache, depth1))
            .collect::<Result<_>>()?,
    );
    drop(server);
    println!(
        "
| response cache | time | gitcache peak RSS |"
    );
    println!("| --- | --- | --- |");
    println!("| `clone --depth=1`, http-backend | {} | |", ms(theirs.0));
    println!(
        "| `clone --depth=1`, stored response | {} | |",
        ms(stored.0)
    );
    for n in [1usize, 8, 32] {
        let mut walls = Vec::new();
        let mut peak = 0;
        for _ in 0..RUNS {
            let _ = std::fs::remove_dir_all(&responses);
            let (server, gitcache) = start_gitcache(root, &upstream.url(), data, &[])?;
            // Warm what is not measured: the mirror is there, the access check done.
            post(&gitcache, &body_variant(depth1)?)?;
            walls.push((concurrent(&gitcache, depth1, n)?, 0));
            peak = peak.max(peak_rss_mib(server.0.id())?);
        }
        println!(
            "| {n} identical `clone --depth=1` at once, cold key (wall; median of {RUNS}) | {} | {peak} MiB |",
            ms(median(walls).0),
        );
    }
    Ok(())
}

/// Another request on the same repository (depth 2), to warm a server without storing the
/// measured key.
fn body_variant(depth1: &[u8]) -> Result<Vec<u8>> {
    let text = String::from_utf8_lossy(depth1);
    let variant = text.replace("000ddeepen 1\n", "000ddeepen 2\n");
    if variant == text {
        bail!("the depth-1 request has no `deepen 1` line");
    }
    Ok(variant.into_bytes())
}
