//! Project tasks that run things: `cargo xtask <task>`.
//!
//! - `transcripts`: record what the real `git` client sends, and what C git answers, for the
//!   protocol fixtures (`crates/protocol/tests/fixtures/transcripts`) and seed the fuzz corpora.
//! - `gen-repo <tiny|small|medium|large> <seed> <path> [sha256]`: generate a test repository
//!   (the benches use `large`: 22,000 commits, about 50 MB of pack).
//! - `bench-pack [repo] [--only TEXT|TEXT] [--dump DIR]`: time our pack generation against `git upload-pack` on
//!   the same repository and requests (default: the `large` generated repository; `--only`
//!   runs the requests whose name contains one of the TEXTs; `--dump` writes each request's
//!   body into DIR first).
//! - `bench-proxy [repo] [--hits [--runs N] | --misses [--runs N] [--only TEXT] | --response-cache |
//!   --two-instances [--only TEXT] | --moved ROUNDS [--commits N] [--runs N] [--ls-refs-ms MS] [--keep DIR] |
//!   --concurrency N]`: time gitcache (hits and misses) in front of C git's http-backend
//!   (with `--hits`, hits alone: for repositories too large to miss five times; with
//!   `--misses`, misses alone, `--runs` of each (1 by default); with `--response-cache`, only the response-cache table; with `--moved ROUNDS`, the first fetch after each of ROUNDS pushes of `--commits` commits (50 by default), then hits on the mirror between two consolidations, ROUNDS packs past its consolidated one, the upstream's `ls-refs` answers of the rounds slowed down by `--ls-refs-ms` MS (a forge listing many refs), the mirror and the upstream copied into `--keep` DIR at the end to be taken apart; with `--concurrency`, N depth-1
//!   fetches of different commits at once) against http-backend alone, over HTTP, on the
//!   same repository and requests.
//! - `bench-scale [--sizes MB,MB,...] [--history THOUSANDS,...] [--runs N] [--only TEXT] [--prepare] [--dump DIR]`: the same on
//!   generated repositories of those sizes of pack, with bitmap writing and indexing, against
//!   git (see `bench_scale`).
//! - `bench-pages [--files N] [--large N] [--seconds S]`: the pages listener (release build): deploy time
//!   of a site of N files against `git clone --depth 1` + `cp -r`, and requests per second
//!   for a small and a 1 MiB file against `python3 -m http.server`.
//! - `fuzz-smoke [seconds]`: run each fuzz target briefly (needs cargo-fuzz and a nightly or
//!   `RUSTC_BOOTSTRAP=1`).
//! - `crash [--kills N] [--seed S]`: the crash-consistency campaign (`gitcache_testkit::crash`)
//!   with N kills of the debug server binary (default 200; `cargo build` first).
//! - `soak [--minutes N] [--clients N] [--still] [--no-faults]`: the release binary under
//!   mixed load for N minutes while the upstream moves, slows down and fails mirror fetches,
//!   with failures, latency percentiles, memory and open files reported, mirrors checked.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod bench_pack;
mod bench_pages;
mod bench_proxy;
mod bench_scale;
mod soak;
mod transcripts;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("transcripts") => transcripts::record(&workspace_root()?),
        Some("gen-repo") => gen_repo(&args[1..]),
        Some("bench-pack") => bench_pack::run(
            &workspace_root()?,
            repo_arg(&args[1..]),
            flag_value(&args, "--only"),
            flag_value(&args, "--dump"),
        ),
        Some("bench-proxy") => {
            let (root, repo) = (workspace_root()?, repo_arg(&args[1..]));
            if args.iter().any(|a| a == "--two-instances") {
                return bench_proxy::two_instances(&root, repo, flag_value(&args, "--only"));
            }
            if args.iter().any(|a| a == "--concurrency") {
                let n = number_flag(&args, "--concurrency", 64)? as usize;
                return bench_proxy::concurrency(&root, repo, n);
            }
            if args.iter().any(|a| a == "--moved") {
                let rounds = number_flag(&args, "--moved", 4)? as usize;
                let per_round = number_flag(&args, "--commits", 50)? as usize;
                let runs = number_flag(&args, "--runs", bench_proxy::RUNS as u64)? as usize;
                let (rounds, per_round) = (rounds.clamp(1, 8), per_round.clamp(1, 5_000));
                let keep = flag_value(&args, "--keep").map(std::path::PathBuf::from);
                let ls_refs_delay = args
                    .iter()
                    .any(|a| a == "--ls-refs-ms")
                    .then(|| number_flag(&args, "--ls-refs-ms", 0))
                    .transpose()?
                    .map(std::time::Duration::from_millis);
                return bench_proxy::moved(
                    &root,
                    repo,
                    rounds,
                    per_round,
                    runs.max(1),
                    ls_refs_delay,
                    keep,
                );
            }
            if args.iter().any(|a| a == "--misses") {
                let runs = number_flag(&args, "--runs", 1)? as usize;
                return bench_proxy::misses(&root, repo, flag_value(&args, "--only"), runs);
            }
            let only_cache = args.iter().any(|a| a == "--response-cache");
            let hits_only = args.iter().any(|a| a == "--hits");
            let runs = number_flag(&args, "--runs", bench_proxy::RUNS as u64)? as usize;
            bench_proxy::run(&root, repo, only_cache, hits_only, runs.max(1))
        }
        Some("bench-scale") => bench_scale::run(&workspace_root()?, &args[1..]),
        Some("bench-pages") => bench_pages::run(&workspace_root()?, &args[1..]),
        Some("crash") => crash(&workspace_root()?, &args[1..]),
        Some("soak") => soak::run(&workspace_root()?, &args[1..]),
        Some("fuzz-smoke") => {
            let seconds = args.get(1).map(String::as_str).unwrap_or("30");
            fuzz_smoke(&workspace_root()?, seconds)
        }
        _ => bail!(
            "usage: cargo xtask <transcripts | gen-repo PRESET SEED PATH [sha256] | bench-pack [REPO] [--only TEXT|TEXT] [--dump DIR] | bench-proxy [REPO] [--hits [--runs N] | --misses [--runs N] [--only TEXT] | --moved ROUNDS [--commits N] [--runs N] [--ls-refs-ms MS] [--keep DIR] | --response-cache | --two-instances [--only TEXT]] | bench-scale [--sizes MB,MB,...] [--history THOUSANDS,...] [--runs N] [--only TEXT] [--prepare] [--dump DIR] | bench-pages [--files N] [--large N] [--seconds S] | fuzz-smoke [seconds] | crash [--kills N] [--seed S] | soak [--minutes N] [--clients N]>"
        ),
    }
}

fn gen_repo(args: &[String]) -> Result<()> {
    use gitcache_testkit::repo::{self, RepoSpec};
    let [preset, seed, path, rest @ ..] = args else {
        bail!("usage: cargo xtask gen-repo <tiny|small|medium|large> <seed> <path> [sha256]");
    };
    let seed: u64 = seed.parse().context("seed must be a number")?;
    let mut spec = match preset.as_str() {
        "tiny" => RepoSpec::tiny(seed),
        "small" => RepoSpec::small(seed),
        "medium" => RepoSpec::medium(seed),
        "large" => RepoSpec::large(seed),
        other => bail!("unknown preset '{other}'"),
    };
    if rest.first().map(String::as_str) == Some("sha256") {
        spec = spec.sha256();
    }
    let started = std::time::Instant::now();
    let made = repo::generate(Path::new(path), &spec)?;
    println!(
        "{}: {} commits, {} branches, {} tags in {:.1?}",
        made.path.display(),
        made.commits,
        made.branches.len(),
        made.tags.len(),
        started.elapsed()
    );
    Ok(())
}

/// Whether the case `name` is one `--only` names (any of its non-empty `|`-separated parts;
/// all cases without `--only`).
pub(crate) fn selected(only: Option<&str>, name: &str) -> bool {
    only.is_none_or(|o| {
        o.split('|')
            .any(|part| !part.is_empty() && name.contains(part))
    })
}

/// The value after `flag`, if given.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The first argument that is neither a flag nor the value of `--only`: a repository path.
fn repo_arg(args: &[String]) -> Option<&str> {
    args.iter()
        .enumerate()
        .find(|(i, a)| {
            !a.starts_with("--")
                && (*i == 0
                    || ![
                        "--only",
                        "--dump",
                        "--concurrency",
                        "--runs",
                        "--moved",
                        "--commits",
                        "--keep",
                        "--ls-refs-ms",
                    ]
                    .contains(&args[i - 1].as_str()))
        })
        .map(|(_, a)| a.as_str())
}

pub(crate) fn number_flag(args: &[String], flag: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args
            .get(i + 1)
            .context("a value after the flag")?
            .parse()
            .context("a number"),
        None => Ok(default),
    }
}

fn crash(root: &Path, args: &[String]) -> Result<()> {
    let value = |flag: &str, default: u64| number_flag(args, flag, default);
    let kills = value("--kills", 200)? as usize;
    let seed = value("--seed", 1)?;
    // The binary of the workspace's debug build (`cargo build` first).
    let server = root.join("target/debug/gitcache-server");
    if !server.is_file() {
        bail!("no {}: run cargo build first", server.display());
    }
    let started = std::time::Instant::now();
    let report = gitcache_testkit::crash::campaign(&server, kills, seed, |r| {
        if r.kills % 10 == 0 {
            println!("{} kills, {:.0?}", r.kills, started.elapsed());
        }
    })?;
    println!(
        "{} kills in {:.0?}: {} mirror checks (git fsck --strict), {} stored responses verified, {} clones compared with the upstream, {} client requests cut off by kills; no violation",
        report.kills,
        started.elapsed(),
        report.mirrors_checked,
        report.responses_checked,
        report.clones_checked,
        report.cut_requests
    );
    Ok(())
}

/// Build the server binary with the release profile (`target/release/gitcache-server`).
pub(crate) fn build_release_server(root: &Path) -> Result<()> {
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--quiet", "-p", "gitcache-server"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("building the server failed");
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lives in the workspace")?
        .to_owned())
}

fn fuzz_smoke(root: &Path, seconds: &str) -> Result<()> {
    let fuzz = root.join("fuzz");
    let list = std::process::Command::new("cargo")
        .args(["fuzz", "list"])
        .current_dir(&fuzz)
        .output()?;
    if !list.status.success() {
        bail!("cargo fuzz is not installed: cargo install cargo-fuzz");
    }
    for target in String::from_utf8_lossy(&list.stdout).lines() {
        let status = std::process::Command::new("cargo")
            .args([
                "fuzz",
                "run",
                target,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&fuzz)
            .status()?;
        if !status.success() {
            bail!("fuzz target {target} failed");
        }
    }
    Ok(())
}
