//! `cargo xtask soak [--minutes N] [--clients N] [--still]`: the server binary (release build)
//! in front of C git's http-backend for N minutes, with 32 clients mixing full clones, depth-1
//! clones, incremental fetches and `ls-remote` while the upstream moves and is slowed down now
//! and then (`--still`: the upstream does not move, so that the server's memory can be read
//! apart from the repositories' growth). Reports failures (there must be none), latency percentiles per kind, and the
//! server's resident memory and open files over time (they must stay flat).

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
    messages: Vec<String>,
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let value = |flag: &str, default: u64| crate::number_flag(args, flag, default);
    let minutes = value("--minutes", 5)?;
    let clients = value("--clients", 32)? as usize;
    let still = args.iter().any(|a| a == "--still");
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

    // The upstream moves every few seconds; now and then it is slow for a while.
    let samples = {
        let paths = REPOS.map(|n| upstream.repo_path(n)).to_vec();
        let upstream = &upstream;
        std::thread::scope(|scope| -> Result<Vec<(u64, Memory, usize)>> {
            let moving = Arc::clone(&stop);
            let moves_until = Instant::now() + Duration::from_secs(move_minutes * 60);
            scope.spawn(move || {
                let stop = moving;
                let mut rng = Rng::new(7);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(3));
                    if still || Instant::now() > moves_until {
                        continue;
                    }
                    let path = &paths[rng.below(paths.len())];
                    let _ = repo::append_commits(path, "main", 1 + rng.below(3), rng.next_u64());
                    if rng.chance(30) {
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
                let (addr, dir) = (addr.clone(), work.path().join(format!("c{c}")));
                scope.spawn(move || client(c, &addr, &dir, deadline, &stop, &results));
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
    let _ = server.kill();
    let _ = server.wait();
    report(
        (minutes, move_minutes),
        clients,
        still,
        &results.lock().expect("results"),
        &samples,
    );
    let failures: usize = results.lock().expect("results").failures.iter().sum();
    if failures > 0 {
        bail!("{failures} operations failed");
    }
    Ok(())
}

/// One client: operations of random kinds until the deadline.
fn client(
    id: usize,
    addr: &str,
    dir: &Path,
    deadline: Instant,
    stop: &AtomicBool,
    results: &Mutex<Results>,
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
    println!("| operation | done | failed | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, kind) in KINDS.iter().enumerate() {
        let mut times = results.times[i].clone();
        times.sort();
        println!(
            "| {kind} | {} | {} | {:.0?} | {:.0?} |",
            times.len(),
            results.failures[i],
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
