//! `cargo xtask soak [--minutes N] [--clients N] [--still] [--no-faults]`: the server binary
//! (release build) in front of C git's http-backend for N minutes, with 32 clients mixing full
//! clones, depth-1 clones, incremental fetches and `ls-remote` while the upstream moves, is
//! slowed down now and then, and now and then fails a mirror fetch outright (an error status,
//! a cut connection, a hang-up, garbage; `--no-faults` leaves those out). `--still`: the
//! upstream does not move, so that the server's memory can be read apart from the
//! repositories' growth.
//!
//! Reports failures, latency percentiles per kind, and the server's resident memory and open
//! files over time (they must stay flat); then checks every mirror with `git fsck --strict`.
//! A failed mirror fetch is passed on to the clients waiting for it as an upstream error
//! (502, 503 or 504): such failures within a few seconds of an injected fault are counted
//! apart; any other failure, or a mirror that fails the check, fails the run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitcache_testkit::repo::{self, RepoSpec, Rng};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};

const REPOS: [&str; 3] = ["acme/widgets", "acme/gadgets", "acme/tools"];
const KINDS: [&str; 4] = ["clone", "depth-1", "fetch", "ls-remote"];

#[derive(Default)]
struct Results {
    /// Latencies of successful operations, by kind.
    times: [Vec<Duration>; 4],
    /// Failed operations, by kind, with the first few messages.
    failures: [usize; 4],
    /// Operations that failed with an upstream error while an injected fault hit, by kind.
    passed_on: [usize; 4],
    messages: Vec<String>,
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let value = |flag: &str, default: u64| crate::number_flag(args, flag, default);
    let minutes = value("--minutes", 5)?;
    let clients = value("--clients", 32)? as usize;
    let still = args.iter().any(|a| a == "--still");
    let faults = !args.iter().any(|a| a == "--no-faults");
    // The upstream moves for this many minutes only (all of them by default): a plateau
    // after it stops tells memory that follows the repositories' size from a leak.
    let move_minutes = value("--move-minutes", minutes)?;
    crate::build_release_server(root)?;
    let upstream = Upstream::start()?;
    for (i, name) in REPOS.iter().enumerate() {
        repo::generate(&upstream.repo_path(name), &RepoSpec::small(900 + i as u64))?;
        upstream.adopt_repo(name, Access::Public)?;
    }
    let data = tempfile::Builder::new()
        .prefix("gitcache-soak-")
        .tempdir()?;
    let mut server = Command::new(root.join("target/release/gitcache-server"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.url()])
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--log-level",
            "warn",
            "--log-format",
            "plain",
            "--consolidate-after",
            "4",
        ])
        .env_remove("GITCACHE_CONFIG")
        .stderr(Stdio::piped())
        .spawn()?;
    let addr = listening_address(&mut server)?;
    let pid = server.id();
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let results = Arc::new(Mutex::new(Results::default()));
    let work = tempfile::Builder::new()
        .prefix("gitcache-soak-clients-")
        .tempdir()?;
    let stop = Arc::new(AtomicBool::new(false));
    let windows = Arc::new(Mutex::new(Vec::<FaultWindow>::new()));

    // The upstream moves every few seconds; now and then it is slow for a while, or fails a
    // mirror fetch.
    let samples = {
        let paths = REPOS.map(|n| upstream.repo_path(n)).to_vec();
        let upstream = &upstream;
        std::thread::scope(|scope| -> Result<Vec<(u64, Memory, usize)>> {
            let moving = Arc::clone(&stop);
            let moves_until = Instant::now() + Duration::from_secs(move_minutes * 60);
            let hard = Arc::clone(&windows);
            scope.spawn(move || {
                let stop = moving;
                let mut rng = Rng::new(7);
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    // A hard fault has fired once nothing is pending (none other is injected
                    // while one waits).
                    let pending = upstream.pending_faults();
                    if let Some(open) = hard
                        .lock()
                        .expect("windows")
                        .last_mut()
                        .filter(|w| w.fired.is_none())
                    {
                        if pending > 0 && open.injected.elapsed() < Duration::from_secs(60) {
                            continue;
                        }
                        if pending > 0 {
                            // No mirror fetch came for a minute: the fault is withdrawn.
                            upstream.clear_faults();
                            open.withdrawn = true;
                        }
                        open.fired = Some(Instant::now());
                    }
                    if Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + Duration::from_secs(3);
                    if still || Instant::now() > moves_until {
                        continue;
                    }
                    let path = &paths[rng.below(paths.len())];
                    let _ = repo::append_commits(path, "main", 1 + rng.below(3), rng.next_u64());
                    if faults && pending == 0 && rng.chance(20) {
                        let (fault, kind) = hard_fault(&mut rng);
                        // The window opens before the fault can hit.
                        hard.lock().expect("windows").push(FaultWindow {
                            kind,
                            injected: Instant::now(),
                            fired: None,
                            withdrawn: false,
                        });
                        upstream.inject(fault, 1, Some(RequestKind::Fetch));
                    } else if rng.chance(30) {
                        upstream.inject(
                            Fault::Delay(Duration::from_millis(500 + rng.below(1500) as u64)),
                            2,
                            Some(RequestKind::Fetch),
                        );
                    }
                }
            });
            for c in 0..clients {
                let (stop, results) = (Arc::clone(&stop), Arc::clone(&results));
                let windows = Arc::clone(&windows);
                let (addr, dir) = (addr.clone(), work.path().join(format!("c{c}")));
                scope.spawn(move || {
                    client(c, &addr, &dir, deadline, &stop, &results, &windows);
                });
            }
            // The server's memory and open files, every 10 seconds.
            let mut samples = Vec::new();
            let started = Instant::now();
            while Instant::now() < deadline {
                samples.push((started.elapsed().as_secs(), memory(pid), open_files(pid)));
                std::thread::sleep(Duration::from_secs(10).min(deadline - Instant::now()));
            }
            samples.push((started.elapsed().as_secs(), memory(pid), open_files(pid)));
            stop.store(true, Ordering::Relaxed);
            Ok(samples)
        })?
    };
    stop_gracefully(&mut server);
    let windows = windows.lock().expect("windows");
    report(
        (minutes, move_minutes),
        clients,
        still,
        &results.lock().expect("results"),
        &samples,
    );
    let hit: Vec<&str> = windows
        .iter()
        .filter(|w| w.fired.is_some() && !w.withdrawn)
        .map(|w| w.kind)
        .collect();
    let by_kind: Vec<String> = ["503", "cut", "hang-up", "garbage"]
        .iter()
        .map(|kind| format!("{} {kind}", hit.iter().filter(|k| *k == kind).count()))
        .collect();
    println!(
        "mirror fetches failed on purpose: {} injected, {} hit ({}), {} withdrawn unfired",
        windows.len(),
        hit.len(),
        by_kind.join(", "),
        windows.iter().filter(|w| w.withdrawn).count()
    );
    let broken = check_mirrors(&data.path().join("mirrors"))?;
    let failures: usize = results.lock().expect("results").failures.iter().sum();
    if failures > 0 {
        bail!("{failures} operations failed");
    }
    if broken > 0 {
        bail!("{broken} mirrors fail git fsck --strict");
    }
    Ok(())
}

/// An injected fault that fails a mirror fetch: when it was injected, and when it hit.
#[derive(Debug, Clone, Copy)]
struct FaultWindow {
    kind: &'static str,
    injected: Instant,
    fired: Option<Instant>,
    /// No mirror fetch came while it waited: taken back unfired.
    withdrawn: bool,
}

/// How long after a fault hit its failure may still reach clients (those waiting for the
/// same refresh are told when it ends).
const FAULT_REACH: Duration = Duration::from_secs(5);

/// Whether an operation that ran from `started` to `ended` overlapped a fault's reach.
fn overlaps_fault(windows: &[FaultWindow], started: Instant, ended: Instant) -> bool {
    windows.iter().any(|w| {
        if w.withdrawn {
            return false;
        }
        let until = w.fired.map_or(ended, |fired| fired + FAULT_REACH);
        started <= until && ended >= w.injected
    })
}

/// Whether git's message reports an upstream error gitcache passed on (502, 503, 504), in
/// git's own words (a bare number could be part of a port, a path or an object id).
fn upstream_error(message: &str) -> bool {
    ["502", "503", "504"].iter().any(|status| {
        message.contains(&format!("HTTP {status}"))
            || message.contains(&format!("returned error: {status}"))
    })
}

/// A fault that fails the next mirror fetch outright, and its name for the report.
fn hard_fault(rng: &mut Rng) -> (Fault, &'static str) {
    match rng.below(4) {
        0 => (Fault::Status(503), "503"),
        1 => (Fault::CutAfter(1_000 + rng.below(20_000) as u64), "cut"),
        2 => (Fault::Hangup, "hang-up"),
        _ => (Fault::Garbage, "garbage"),
    }
}

/// SIGTERM, then up to a minute for the server to finish what it does (a refresh, a
/// consolidation), then SIGKILL: the mirrors are checked as a stopped server leaves them.
fn stop_gracefully(server: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("the server did not stop within a minute of SIGTERM; killed");
    let _ = server.kill();
    let _ = server.wait();
}

/// `git fsck --strict` on every mirror under `root`; prints each that fails, returns how
/// many did.
fn check_mirrors(root: &Path) -> Result<usize> {
    let mut pending = vec![root.to_owned()];
    let (mut checked, mut broken) = (0, 0);
    while let Some(dir) = pending.pop() {
        if dir.join("HEAD").is_file() && dir.join("objects").is_dir() {
            checked += 1;
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(&dir)
                .args(["fsck", "--strict", "--no-progress", "--no-dangling"])
                .output()?;
            if !out.status.success() {
                broken += 1;
                println!(
                    "mirror {} fails git fsck: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            // Mirrors set aside for removal are not served.
            if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().starts_with('.')
            {
                pending.push(entry.path());
            }
        }
    }
    println!("mirrors checked with git fsck --strict: {checked}, broken: {broken}");
    if checked == 0 {
        bail!("no mirror found under {}", root.display());
    }
    Ok(broken)
}

/// One client: operations of random kinds until the deadline.
fn client(
    id: usize,
    addr: &str,
    dir: &Path,
    deadline: Instant,
    stop: &AtomicBool,
    results: &Mutex<Results>,
    windows: &Mutex<Vec<FaultWindow>>,
) {
    let mut rng = Rng::new(1000 + id as u64);
    let _ = std::fs::create_dir_all(dir);
    let mut n = 0;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        n += 1;
        let repo = REPOS[rng.below(REPOS.len())];
        let url = format!("http://{addr}/{repo}.git");
        let kind = rng.below(KINDS.len());
        let target = dir.join(format!("op{n}"));
        let kept = dir.join(repo.replace('/', "-"));
        let started = Instant::now();
        let outcome = match kind {
            0 => git(dir, &["clone", "-q", "--bare", &url, path(&target)]),
            1 => git(dir, &["clone", "-q", "--depth=1", &url, path(&target)]),
            2 => {
                if kept.exists() {
                    git(&kept, &["fetch", "-q", "origin"])
                } else {
                    git(dir, &["clone", "-q", "--bare", &url, path(&kept)])
                }
            }
            _ => git(dir, &["ls-remote", &url]),
        };
        let took = started.elapsed();
        let _ = std::fs::remove_dir_all(&target);
        let mut results = results.lock().expect("results");
        match outcome {
            Ok(()) => results.times[kind].push(took),
            Err(message)
                if upstream_error(&message)
                    && overlaps_fault(
                        &windows.lock().expect("windows"),
                        started,
                        Instant::now(),
                    ) =>
            {
                results.passed_on[kind] += 1;
            }
            Err(message) => {
                results.failures[kind] += 1;
                if results.messages.len() < 10 {
                    results.messages.push(format!("{}: {message}", KINDS[kind]));
                }
            }
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn git(dir: &Path, args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdout(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn listening_address(server: &mut std::process::Child) -> Result<String> {
    use std::io::BufRead;
    let stderr = server.stderr.take().context("piped stderr")?;
    let mut lines = std::io::BufReader::new(stderr);
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line)? == 0 {
            bail!("the server exited before listening");
        }
        if let Some(addr) = line.trim().strip_prefix("gitcache listening on http://") {
            let addr = addr.to_owned();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut lines, &mut std::io::sink());
            });
            return Ok(addr);
        }
    }
}

/// A process's resident memory in KiB: in all, then the part that is its own (heap,
/// stacks) and the part that maps files (packs, indexes, the binary).
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(PathBuf::from(format!("/proc/{pid}/fd")))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(
    (minutes, move_minutes): (u64, u64),
    clients: usize,
    still: bool,
    results: &Results,
    samples: &[(u64, Memory, usize)],
) {
    println!(
        "soak: {minutes} min, {clients} clients{}",
        if still {
            ", upstream still".to_owned()
        } else if move_minutes < minutes {
            format!(", upstream moving for the first {move_minutes} min")
        } else {
            String::new()
        }
    );
    println!("| operation | done | failed | upstream fault passed on | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, kind) in KINDS.iter().enumerate() {
        let mut times = results.times[i].clone();
        times.sort();
        println!(
            "| {kind} | {} | {} | {} | {:.0?} | {:.0?} |",
            times.len(),
            results.failures[i],
            results.passed_on[i],
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
    for message in &results.messages {
        println!("failure: {message}");
    }
    println!("| minute | RSS (MiB) | of which anonymous | of which files | open files |");
    println!("| --- | --- | --- | --- | --- |");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (secs, memory, files) in samples.iter().filter(|(s, _, _)| s % 60 < 10) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {files} |",
            secs / 60,
            mib(memory.rss),
            mib(memory.anon),
            mib(memory.file)
        );
    }
}
