//! `cargo xtask bench-proxy [repo]`: gitcache (release build) in front of C git's
//! http-backend, against that http-backend alone, on the same repository and the same
//! recorded request bodies, over loopback HTTP. Times are until the last response byte.
//!
//! `--misses`: misses alone, `--runs` times each (see [`misses`]).
//!
//! `--moved ROUNDS`: the first fetch after each of ROUNDS pushes (a miss that refreshes the
//! mirror), then hits on the mirror between two consolidations (see [`moved`]).
//!
//! `--two-instances`: two gitcache processes sharing one bucket of a local S3-compatible
//! server (moto, from `GITCACHE_TEST_MOTO`): a miss on A, then the same request on B (its
//! copy hydrated from the bucket), then hits on each.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitcache_testkit::upstream::{Access, Upstream};

use crate::bench_pack::{body, git, prepare_repo, requests};

pub(crate) const RUNS: usize = 5;
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
    // Read into one buffer and count: the bytes themselves are not needed, and collecting
    // every response into memory made the client's work, not the server's, the measure when
    // many ran at once on the same cores.
    let mut buf = vec![0u8; 256 << 10];
    let mut head = Vec::new();
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < 300 {
            head.extend_from_slice(&buf[..n.min(300 - head.len())]);
        }
        total += n as u64;
    }
    let elapsed = started.elapsed();
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("{addr}: {}", String::from_utf8_lossy(&head));
    }
    Ok((elapsed, total))
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
        .args(["--upstream-timeout", "600", "--log-format", "plain"])
        // Its log is kept beside the data directory; `GITCACHE_BENCH_LOG_LEVEL=debug` for more.
        .args([
            "--log-level",
            &std::env::var("GITCACHE_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
        ])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        // `GITCACHE_BENCH_SERVER_ENV="K=V K2=V2"`: variables for the server alone (allocator
        // settings, a heap profiler's preload), not for git or the bench's clients.
        .envs(server_env())
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
            // Keep draining its log so it never blocks on a full pipe, into a file beside
            // the data directory for a look afterwards.
            let mut log = std::fs::File::create(data.with_extension("log"))?;
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut log));
            return Ok((server, addr.to_owned()));
        }
    }
}

/// The variables `GITCACHE_BENCH_SERVER_ENV` names for the server process.
fn server_env() -> Vec<(String, String)> {
    std::env::var("GITCACHE_BENCH_SERVER_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Wait until the mirror's background maintenance is done (its pack is marked with its tips
/// and has bitmaps), so that nothing runs behind a measurement.
fn wait_for_maintenance(mirror: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        // Temporaries being written (`incoming-…`) do not count.
        let names: Vec<String> = std::fs::read_dir(mirror.join("objects/pack"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("incoming-"))
                    .collect()
            })
            .unwrap_or_default();
        let done = names.iter().filter(|n| n.ends_with(".idx")).count() == 1
            && names.iter().any(|n| n.ends_with(".tips"))
            && names.iter().any(|n| n.ends_with(".bitmap"));
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the mirror's maintenance never finished");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The server's background maintenance under way, as its `/metrics` say.
fn maintenance_running(addr: &str) -> Result<f64> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("gitcache_mirror_maintenance_running "))
        .context("no maintenance gauge in /metrics")?
        .trim()
        .parse()
        .context("the maintenance gauge")
}

/// Wait until no maintenance of `mirror` is under way or about to start: none under way on
/// the server at `addr` (counted from when a refresh asks for it), nothing being written
/// (`incoming-…`), every pack marked with its tips with its bitmaps, for a second in a row.
fn wait_for_settled(addr: &str, mirror: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut calm = 0;
    while calm < 5 {
        let names: Vec<String> = std::fs::read_dir(mirror.join("objects/pack"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let has = |name: &str| names.iter().any(|n| n == name);
        // A scrape that fails is no calm second (the deadline below still holds).
        let settled = maintenance_running(addr).is_ok_and(|running| running == 0.0)
            && !names.iter().any(|n| n.starts_with("incoming-"))
            && names
                .iter()
                .filter_map(|n| n.strip_suffix(".tips"))
                .all(|stem| has(&format!("{stem}.bitmap")));
        calm = if settled { calm + 1 } else { 0 };
        if Instant::now() > deadline {
            bail!("the mirror's maintenance never finished");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
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

/// C git's http-backend serving the bench repository as [`NAME`], and its address.
fn serve_upstream(repo: &Path) -> Result<(Upstream, String)> {
    let upstream = Upstream::start()?;
    let link = upstream.repo_path(NAME);
    std::fs::create_dir_all(link.parent().context("parent")?)?;
    std::os::unix::fs::symlink(std::fs::canonicalize(repo)?, &link)?;
    upstream.adopt_repo(NAME, Access::Public)?;
    let backend = upstream.addr().to_string();
    Ok((upstream, backend))
}

/// A response's time until its last byte, and its bytes.
type Timed = (Duration, u64);

/// `request` `runs` times against each: `http-backend`'s median, then gitcache's median and
/// its first run apart (later runs may take objects the first compressed again from the
/// server's store of them).
fn side_by_side(
    backend: &str,
    gitcache: &str,
    request: &[u8],
    runs: usize,
) -> Result<(Timed, Timed, Duration)> {
    let theirs = median(
        (0..runs)
            .map(|_| post(backend, request))
            .collect::<Result<_>>()?,
    );
    let ours: Vec<_> = (0..runs)
        .map(|_| post(gitcache, request))
        .collect::<Result<_>>()?;
    let first = ours[0].0;
    Ok((theirs, median(ours), first))
}

/// One row of the hits table: the request, both medians, the first run, and the ratios.
fn hit_row(name: &str, theirs: Timed, hit: Timed, first: Duration) {
    println!(
        "| {name} | {} | {} | {:.2} | {} | {:.2} | {:.2} |",
        ms(theirs.0),
        ms(hit.0),
        hit.0.as_secs_f64() / theirs.0.as_secs_f64(),
        ms(first),
        first.as_secs_f64() / theirs.0.as_secs_f64(),
        hit.1 as f64 / theirs.1.max(1) as f64
    );
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn run(
    root: &Path,
    repo: Option<&str>,
    only_cache: bool,
    hits_only: bool,
    runs: usize,
) -> Result<()> {
    let (repo, tips) = prepare_repo(root, repo)?;
    let (upstream, backend) = serve_upstream(&repo)?;

    let data = bench_data()?;
    if only_cache {
        let depth1 = requests(&repo, &tips, false)?
            .into_iter()
            .find(|(name, _)| *name == "clone --depth=1")
            .map(|(_, fetch)| body(fetch))
            .context("a depth-1 case")?;
        return response_cache(root, &upstream, &backend, data.path(), &depth1);
    }
    // Pack generation itself: the response cache off.
    let cache_off = ["--response-cache", "false"];
    let (server, gitcache) = start_gitcache(root, &upstream.url(), data.path(), &cache_off)?;
    let mirror = mirror_in(data.path(), &backend);

    let cases: Vec<(&str, Vec<u8>)> = requests(&repo, &tips, hits_only)?
        .into_iter()
        .map(|(name, fetch)| (name, body(fetch)))
        .collect();
    let depth1 = cases
        .iter()
        .find(|(name, _)| *name == "clone --depth=1")
        .map(|(_, body)| body.clone())
        .context("a depth-1 case")?;

    println!(
        "\nrepository: {} commits; medians of {runs} runs ({MISS_RUNS} for misses)\n",
        git(&repo, &["rev-list", "--all", "--count"])?.trim()
    );
    // Hits: one mirror, its background maintenance (tips mark, bitmaps) finished first.
    let (first, _) = post(&gitcache, &cases[0].1)?;
    let started = Instant::now();
    wait_for_maintenance(&mirror)?;
    println!(
        "first {} (a miss): {}; its maintenance finished {} later\n",
        cases[0].0,
        ms(first),
        ms(started.elapsed())
    );
    let (mut rows, mut firsts) = (Vec::new(), Vec::new());
    for (_, request) in &cases {
        let (theirs, ours, first) = side_by_side(&backend, &gitcache, request, runs)?;
        firsts.push(first);
        rows.push((theirs, ours));
    }
    let theirs = concurrent(&backend, &depth1, 8)?;
    let ours = concurrent(&gitcache, &depth1, 8)?;
    drop(server);
    if hits_only {
        println!(
            "| request | http-backend | gitcache hit | ratio | first run | ratio | bytes ratio |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (((name, _), (theirs, hit)), first) in cases.iter().zip(rows).zip(firsts) {
            hit_row(name, theirs, hit, first);
        }
        println!(
            "| 8 concurrent clone --depth=1 (wall) | {} | {} | {:.2} | | | |",
            ms(theirs),
            ms(ours),
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
        return Ok(());
    }
    // Misses: each from no mirror, on a fresh server (no maintenance left running from the
    // run before).
    println!(
        "| request | http-backend | gitcache hit | gitcache miss | http-backend bytes | gitcache bytes |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((name, request), (theirs, hit)) in cases.iter().zip(rows) {
        let mut misses = Vec::new();
        for _ in 0..MISS_RUNS {
            if mirror.exists() {
                std::fs::remove_dir_all(&mirror)?;
            }
            let (_server, gitcache) =
                start_gitcache(root, &upstream.url(), data.path(), &cache_off)?;
            misses.push(post(&gitcache, request)?);
        }
        let miss = median(misses);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(theirs.0),
            ms(hit.0),
            ms(miss.0),
            theirs.1,
            hit.1
        );
    }
    println!(
        "| 8 concurrent clone --depth=1 (wall) | {} | {} | | | |",
        ms(theirs),
        ms(ours)
    );
    // What a miss is measured against: C git making a mirror of the same upstream.
    let clone = clone_mirror(&backend, data.path(), MISS_RUNS)?;
    println!(
        "\n`git clone --mirror` of the same upstream: {} (median of {MISS_RUNS})",
        ms(clone)
    );
    response_cache(root, &upstream, &backend, data.path(), &depth1)
}

/// `--moved ROUNDS [--commits N] [--runs N]`: the hits of a mirror between two
/// consolidations. The mirror is made from a copy of the repository and maintained (one pack
/// with its bitmaps), then the upstream gains `ROUNDS` rounds of `N` commits (50 by default)
/// on `main`, each pushed as a pack of its own, and the first fetch of the new tip after each
/// (timed against `http-backend`: a miss that refreshes the mirror) brings it into the mirror
/// as a pack beside the consolidated one (a mirror is consolidated past
/// eight packs, or when those beside hold more than a 64th of its objects; the next round
/// waits for it). Then the requests of the full run, plus a fetch whose have is the tip of
/// the first consolidation, against `http-backend` on the same packs (git's bitmaps cover its
/// first pack only, as on a forge between repacks). With `ls_refs_delay`, the upstream waits
/// that long before each `ls-refs` answer of the rounds, as a forge listing many refs does.
/// With `keep`, the mirror and the upstream
/// are copied there (`mirror.git`, `upstream.git`, with the first consolidation's tip in
/// `consolidated`) at the end, to be taken apart.
pub(crate) fn moved(
    root: &Path,
    repo: Option<&str>,
    rounds: usize,
    per_round: usize,
    runs: usize,
    ls_refs_delay: Option<Duration>,
    keep: Option<PathBuf>,
) -> Result<()> {
    let (repo, _) = prepare_repo(root, repo)?;
    // A copy the rounds add to (hard links: the bench repository stays as it is).
    let copy = repo.with_extension("moved.git");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    let status = Command::new("cp")
        .arg("-al")
        .arg(&repo)
        .arg(&copy)
        .status()?;
    if !status.success() {
        bail!("copying the repository failed");
    }
    let tips_of = |repo: &Path| -> Result<Vec<gitcache_protocol::ObjectId>> {
        git(repo, &["for-each-ref", "--format=%(objectname)"])?
            .lines()
            .map(crate::bench_pack::oid)
            .collect()
    };
    let consolidated = crate::bench_pack::oid(&git(&copy, &["rev-parse", "main"])?)?;
    let (upstream, backend) = serve_upstream(&copy)?;
    let data = bench_data()?;
    let cache_off = ["--response-cache", "false"];
    let (server, gitcache) = start_gitcache(root, &upstream.url(), data.path(), &cache_off)?;
    let mirror = mirror_in(data.path(), &backend);
    let clone = |tips: Vec<gitcache_protocol::ObjectId>| {
        body(gitcache_protocol::request::Fetch {
            wants: tips,
            done: true,
            thin_pack: true,
            ofs_delta: true,
            no_progress: true,
            ..Default::default()
        })
    };
    post(&gitcache, &clone(tips_of(&copy)?))?;
    wait_for_maintenance(&mirror)?;
    // The first fetch after each push upstream is a miss that refreshes the mirror: in turn
    // a depth-1 fetch of the new tip without tags (a CI job fetching a commit by id sends no
    // `ls-refs`), a fetch of it with the tip before, the same as `git fetch` sends it,
    // `ls-refs` first (whose answer, passed on from the upstream, starts the refresh), and
    // a depth-1 clone of it, `ls-refs` first and tags included, timed against
    // `http-backend` answering the same requests.
    if let Some(delay) = ls_refs_delay {
        upstream.inject(
            gitcache_testkit::upstream::Fault::Delay(delay),
            usize::MAX,
            Some(gitcache_testkit::upstream::RequestKind::LsRefs),
        );
    }
    let mut refreshed = Vec::new();
    for round in 0..rounds {
        let seed = 7_000 + round as u64;
        let before = crate::bench_pack::oid(&git(&copy, &["rev-parse", "main"])?)?;
        gitcache_testkit::repo::append_commits(&copy, "main", per_round, seed)?;
        git(&copy, &["repack", "-dq"])?;
        let tip = crate::bench_pack::oid(&git(&copy, &["rev-parse", "main"])?)?;
        let incremental = body(gitcache_protocol::request::Fetch {
            wants: vec![tip],
            haves: vec![before],
            ..git_fetch()
        });
        let (name, requests) = match round % 4 {
            0 => {
                // As CI's checkout asks (`fetch --no-tags --depth=1 origin <id>`).
                let fetch = gitcache_protocol::request::Fetch {
                    wants: vec![tip],
                    deepen: Some(1),
                    include_tag: false,
                    ..git_fetch()
                };
                (
                    "fetch --depth=1 --no-tags of the new tip",
                    vec![body(fetch)],
                )
            }
            1 => ("fetch, have the tip before", vec![incremental]),
            2 => (
                "`ls-refs`, then that fetch",
                vec![ls_refs_of_branches(), incremental],
            ),
            _ => {
                // As `git clone --depth=1` asks, tags included.
                let fetch = gitcache_protocol::request::Fetch {
                    wants: vec![tip],
                    deepen: Some(1),
                    ..git_fetch()
                };
                (
                    "`ls-refs`, then clone --depth=1 of the new tip",
                    vec![ls_refs_of_branches(), body(fetch)],
                )
            }
        };
        let exchange = |addr: &str| -> Result<Timed> {
            let (mut took, mut bytes) = (Duration::ZERO, 0);
            for request in &requests {
                let (t, b) = post(addr, request)?;
                took += t;
                bytes += b;
            }
            Ok((took, bytes))
        };
        let miss = exchange(&gitcache)?;
        let theirs = exchange(&backend)?;
        refreshed.push((round, name, theirs, miss));
        post(&gitcache, &clone(tips_of(&copy)?))?;
        // A consolidation the refresh called for (past eight packs, or far past the
        // consolidated one) is done before the next round.
        wait_for_settled(&gitcache, &mirror)?;
    }
    upstream.clear_faults();
    let packs = |dir: &Path| -> Result<usize> {
        Ok(std::fs::read_dir(dir.join("objects/pack"))?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count())
    };
    println!(
        "\nrepository: {} commits, {} added since the first consolidation; packs: gitcache's mirror {}, \
         http-backend's {}; medians of {runs} runs\n",
        git(&copy, &["rev-list", "--all", "--count"])?.trim(),
        rounds * per_round,
        packs(&mirror)?,
        packs(&copy)?
    );
    let tips = tips_of(&copy)?;
    let mut cases: Vec<(String, Vec<u8>)> = requests(&copy, &tips, true)?
        .into_iter()
        .filter(|(name, _)| !name.contains("5,000"))
        .map(|(name, fetch)| (name.to_owned(), body(fetch)))
        .collect();
    let main = crate::bench_pack::oid(&git(&copy, &["rev-parse", "main"])?)?;
    cases.push((
        "fetch, have the consolidated tip".into(),
        body(gitcache_protocol::request::Fetch {
            wants: vec![main],
            haves: vec![consolidated],
            ..git_fetch()
        }),
    ));
    println!("| request | http-backend | gitcache | ratio | first run | ratio | bytes ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, request) in &cases {
        let (theirs, hit, first) = side_by_side(&backend, &gitcache, request, runs)?;
        hit_row(name, theirs, hit, first);
    }
    println!(
        "\nthe first fetch after each push ({per_round} commits), a miss refreshing the mirror\n"
    );
    println!(
        "| round | request | http-backend | gitcache (refresh and answer) | ratio | bytes ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (round, name, theirs, miss) in refreshed {
        println!(
            "| {} | {name} | {} | {} | {:.2} | {:.2} |",
            round + 1,
            ms(theirs.0),
            ms(miss.0),
            miss.0.as_secs_f64() / theirs.0.as_secs_f64(),
            miss.1 as f64 / theirs.1.max(1) as f64
        );
    }
    drop(server);
    drop(upstream);
    if let Some(keep) = keep {
        std::fs::create_dir_all(&keep)?;
        for (from, to) in [(&mirror, "mirror.git"), (&copy, "upstream.git")] {
            let to = keep.join(to);
            if to.exists() {
                std::fs::remove_dir_all(&to)?;
            }
            if !Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(&to)
                .status()?
                .success()
            {
                bail!("copying {} failed", from.display());
            }
        }
        std::fs::write(keep.join("consolidated"), format!("{consolidated}\n"))?;
    }
    std::fs::remove_dir_all(&copy)?;
    Ok(())
}

/// The `ls-refs` that `git fetch` of the branches sends.
fn ls_refs_of_branches() -> Vec<u8> {
    let request = gitcache_protocol::request::Request {
        capabilities: gitcache_protocol::request::Capabilities {
            agent: Some("git/2.47.3".into()),
            ..Default::default()
        },
        command: gitcache_protocol::request::Command::LsRefs(gitcache_protocol::request::LsRefs {
            symrefs: true,
            peel: true,
            unborn: false,
            ref_prefixes: vec!["refs/heads/".into(), "refs/tags/".into()],
        }),
    };
    let mut out = Vec::new();
    request.write_to(&mut out).expect("in memory");
    out
}

/// A fetch with the options `git fetch` sends (wants and haves to be filled in).
fn git_fetch() -> gitcache_protocol::request::Fetch {
    gitcache_protocol::request::Fetch {
        done: true,
        thin_pack: true,
        ofs_delta: true,
        no_progress: true,
        include_tag: true,
        ..Default::default()
    }
}

/// `--misses [--runs N] [--only TEXT]`: each request whose name contains `only` (one of
/// `|`-separated texts; the full clone and depth 1 by default), `runs` times from no mirror on
/// a fresh server, against as many `git clone --mirror` of the same upstream: for
/// repositories too large for the full run, which misses every request three times.
pub(crate) fn misses(
    root: &Path,
    repo: Option<&str>,
    only: Option<&str>,
    runs: usize,
) -> Result<()> {
    let (repo, tips) = prepare_repo(root, repo)?;
    let (upstream, backend) = serve_upstream(&repo)?;
    let data = bench_data()?;
    let mirror = mirror_in(data.path(), &backend);
    let only = only.unwrap_or("full clone|clone --depth=1");
    let cases: Vec<(&str, Vec<u8>)> = requests(&repo, &tips, true)?
        .into_iter()
        .filter(|(name, _)| crate::selected(Some(only), name))
        .map(|(name, fetch)| (name, body(fetch)))
        .collect();
    let runs = runs.max(1);
    let clone = clone_mirror(&backend, data.path(), runs)?;
    println!(
        "\nrepository: {} commits; medians of {runs} runs; `git clone --mirror` of the same upstream: {}\n",
        git(&repo, &["rev-list", "--all", "--count"])?.trim(),
        ms(clone)
    );
    println!("| request | gitcache miss | ratio to `git clone --mirror` | server peak RSS |");
    println!("| --- | --- | --- | --- |");
    for (name, request) in &cases {
        let mut misses = Vec::new();
        let mut peak = 0;
        for _ in 0..runs {
            if mirror.exists() {
                std::fs::remove_dir_all(&mirror)?;
            }
            let (server, gitcache) = start_gitcache(
                root,
                &upstream.url(),
                data.path(),
                &["--response-cache", "false"],
            )?;
            misses.push(post(&gitcache, request)?);
            peak = peak.max(peak_rss_mib(server.0.id())?);
        }
        let miss = median(misses).0;
        println!(
            "| {name} | {} | {:.2} | {peak} MiB |",
            ms(miss),
            miss.as_secs_f64() / clone.as_secs_f64()
        );
    }
    Ok(())
}

/// A data directory for a bench server.
fn bench_data() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("gitcache-bench-")
        .tempdir()?)
}

/// Where a server with data directory `data` keeps its mirror of the bench repository served
/// by `backend`.
fn mirror_in(data: &Path, backend: &str) -> PathBuf {
    data.join("mirrors")
        .join(backend.replace(':', "_"))
        .join("bench/large.git")
}

/// The median time of `runs` runs of `git clone --mirror` from `backend` into `data`.
fn clone_mirror(backend: &str, data: &Path, runs: usize) -> Result<Duration> {
    let mut clones = Vec::new();
    for _ in 0..runs {
        let target = data.join("git-clone-mirror.git");
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        let started = Instant::now();
        let status = Command::new("git")
            .args([
                "clone",
                "-q",
                "--mirror",
                &format!("http://{backend}/{NAME}.git"),
            ])
            .arg(&target)
            .status()?;
        if !status.success() {
            bail!("git clone --mirror failed");
        }
        clones.push((started.elapsed(), 0));
    }
    Ok(median(clones).0)
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
    // The mirror's maintenance must not run behind the measurements.
    wait_for_maintenance(&mirror_in(data, backend))?;
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

/// Two instances on one bucket: what a miss on A costs, what the same request costs on B
/// (hydrating its copy from the bucket instead of fetching from the upstream), and hits on
/// each against a single-instance hit.
pub(crate) fn two_instances(root: &Path, repo: Option<&str>, only: Option<&str>) -> Result<()> {
    let Some(s3) = gitcache_testkit::s3::S3Server::start("gitcache-bench") else {
        bail!("set GITCACHE_TEST_MOTO to moto_server's path (bash .ci/moto prints it)");
    };
    let (repo, tips) = prepare_repo(root, repo)?;
    let (upstream, backend) = serve_upstream(&repo)?;
    let endpoint = s3.endpoint();
    let flags = [
        "--response-cache",
        "false",
        "--s3-bucket",
        s3.bucket(),
        "--s3-endpoint",
        endpoint.as_str(),
        "--aws-access-key-id",
        "bench",
        "--aws-secret-access-key",
        "bench",
    ];
    let cases: Vec<(&str, Vec<u8>)> = requests(&repo, &tips, false)?
        .into_iter()
        .filter(|(name, _)| *name == "full clone" || *name == "clone --depth=1")
        .filter(|(name, _)| only.is_none_or(|o| name.contains(o)))
        .map(|(name, fetch)| (name, body(fetch)))
        .collect();
    let mirror_in = |data: &Path| mirror_in(data, &backend);
    println!(
        "\n| request | http-backend | miss on A (upstream) | first on B (bucket) | hit on A | hit on B |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, request) in &cases {
        let theirs = median(
            (0..RUNS)
                .map(|_| post(&backend, request))
                .collect::<Result<_>>()?,
        );
        let (mut miss, mut first) = (Vec::new(), Vec::new());
        let (mut hit_a, mut hit_b) = (Vec::new(), Vec::new());
        for round in 0..MISS_RUNS {
            // Each round on its own prefix: a cold bucket, cold instances.
            let prefix = format!("bench-{name}-{round}").replace([' ', '=', '-'], "_");
            let mut round_flags = flags.to_vec();
            round_flags.extend(["--s3-prefix", prefix.as_str()]);
            let (data_a, data_b) = (
                tempfile::Builder::new()
                    .prefix("gitcache-bench-a-")
                    .tempdir()?,
                tempfile::Builder::new()
                    .prefix("gitcache-bench-b-")
                    .tempdir()?,
            );
            let (_a, a) = start_gitcache(root, &upstream.url(), data_a.path(), &round_flags)?;
            miss.push(post(&a, request)?);
            // A's maintenance (consolidation, bitmaps) committed before B starts.
            wait_for_maintenance(&mirror_in(data_a.path()))?;
            post(&a, request)?;
            let (_b, b) = start_gitcache(root, &upstream.url(), data_b.path(), &round_flags)?;
            first.push(post(&b, request)?);
            wait_for_maintenance(&mirror_in(data_b.path()))?;
            for _ in 0..RUNS {
                hit_a.push(post(&a, request)?);
                hit_b.push(post(&b, request)?);
            }
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(theirs.0),
            ms(median(miss).0),
            ms(median(first).0),
            ms(median(hit_a).0),
            ms(median(hit_b).0),
        );
    }
    Ok(())
}

/// `--concurrency N`: N depth-1 fetches of N different commits at once (nothing to share
/// between them), against http-backend and against gitcache (defaults, response cache on;
/// its mirror made and maintained first). Three rounds, each on commits of its own, so
/// that every gitcache answer is a first one. Reports wall time, p50 and p99 per request,
/// and peak resident memory: gitcache's process, and the sum over http-backend's processes
/// (shared file pages counted once per process).
pub(crate) fn concurrency(root: &Path, repo: Option<&str>, n: usize) -> Result<()> {
    const ROUNDS: usize = 3;
    let (repo, tips) = prepare_repo(root, repo)?;
    let (upstream, backend) = serve_upstream(&repo)?;
    let data = bench_data()?;
    let (server, gitcache) = start_gitcache(root, &upstream.url(), data.path(), &[])?;
    let mirror = mirror_in(data.path(), &backend);
    let clone = gitcache_protocol::request::Fetch {
        wants: tips.clone(),
        done: true,
        thin_pack: true,
        ofs_delta: true,
        no_progress: true,
        ..Default::default()
    };
    post(&gitcache, &body(clone))?;
    wait_for_maintenance(&mirror)?;
    let commits: Vec<String> = git(
        &repo,
        &["rev-list", "--all", "-n", &(n * ROUNDS * 2).to_string()],
    )?
    .lines()
    .step_by(2)
    .map(str::to_owned)
    .collect();
    if commits.len() < n * ROUNDS {
        bail!("the repository has too few commits for {ROUNDS} rounds of {n}");
    }
    let rounds: Vec<Vec<Vec<u8>>> = commits
        .chunks(n)
        .take(ROUNDS)
        .map(|round| {
            round
                .iter()
                .map(|c| {
                    Ok(body(gitcache_protocol::request::Fetch {
                        wants: vec![crate::bench_pack::oid(c)?],
                        deepen: Some(1),
                        done: true,
                        thin_pack: true,
                        ofs_delta: true,
                        include_tag: true,
                        no_progress: true,
                        ..Default::default()
                    }))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let server_pid = server.0.id();
    println!(
        "\n{n} concurrent depth-1 fetches of {n} different commits, {ROUNDS} rounds (each on commits of its own)\n"
    );
    println!(
        "| server | round | wall | p50 | p99 | bytes | peak RSS (MiB) | of it anonymous | anonymous at start |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, addr) in [("http-backend", &backend), ("gitcache", &gitcache)] {
        for (i, bodies) in rounds.iter().enumerate() {
            let measure: Box<dyn Fn() -> (u64, u64) + Sync> = if label == "gitcache" {
                Box::new(move || rss_kib(server_pid))
            } else {
                Box::new(move || descendants_rss_kib(std::process::id(), server_pid))
            };
            let Round {
                wall,
                mut times,
                bytes,
                peak,
                anon_at_start,
            } = at_once(addr, bodies, &*measure)?;
            times.sort();
            let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
            println!(
                "| {label} | {} | {} | {} | {} | {bytes} | {} | {} | {} |",
                i + 1,
                ms(wall),
                ms(at(0.5)),
                ms(at(0.99)),
                peak.0 / 1024,
                peak.1 / 1024,
                anon_at_start / 1024
            );
        }
    }
    Ok(())
}

/// What one round of requests sent at once took.
struct Round {
    wall: Duration,
    /// Each request's time.
    times: Vec<Duration>,
    /// The bytes of all answers.
    bytes: u64,
    /// The peaks of the memory measure (KiB: in all, anonymous) while they ran.
    peak: (u64, u64),
    /// The anonymous memory measured as they started (KiB).
    anon_at_start: u64,
}

/// Every body in `bodies` posted at once, `measure` sampled while they run.
fn at_once(
    addr: &str,
    bodies: &[Vec<u8>],
    measure: &(dyn Fn() -> (u64, u64) + Sync),
) -> Result<Round> {
    let barrier = std::sync::Barrier::new(bodies.len());
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let anon_at_start = measure().1;
        let sampler = scope.spawn(|| {
            let mut peak = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (all, anon) = measure();
                peak = (peak.0.max(all), peak.1.max(anon));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let handles: Vec<_> = bodies
            .iter()
            .map(|body| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    post(addr, body)
                })
            })
            .collect();
        let mut times = Vec::new();
        let mut bytes = 0;
        for handle in handles {
            let (took, sent) = handle.join().expect("request thread")?;
            times.push(took);
            bytes += sent;
        }
        let wall = started.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().expect("sampler");
        Ok(Round {
            wall,
            times,
            bytes,
            peak,
            anon_at_start,
        })
    })
}

/// A process's resident memory in KiB, in all and its anonymous part (heap, stacks: not
/// mapped files such as packs); zeros once it is gone.
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// The resident memory of every process descending from `root`, `except` one (and its
/// own descendants), summed, in KiB.
fn descendants_rss_kib(root: u32, except: u32) -> (u64, u64) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the name may hold spaces, so read after its `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let (mut total, mut anon) = (0, 0);
    let mut pending = vec![root];
    while let Some(parent) = pending.pop() {
        for &(pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            if pid != except {
                let (all, own) = rss_kib(pid);
                total += all;
                anon += own;
                pending.push(pid);
            }
        }
    }
    (total, anon)
}
