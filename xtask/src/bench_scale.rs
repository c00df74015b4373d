//! `cargo xtask bench-scale [--sizes 50,300,1000,3000] [--history 500] [--runs N]
//! [--only TEXT|TEXT] [--prepare] [--dump DIR]`: how time and peak memory grow with the repository, for
//! gitcache and for git. For each size (megabytes of pack), a generated repository
//! (`RepoSpec::scale`), and for each `--history` (thousands of commits) one of a long history
//! of small changes (`RepoSpec::history`), packed as a forge keeps it (with `--prepare`, only
//! that: the generation of the largest takes an hour), then:
//!
//! - bitmaps: gitcache's written from nothing (a mirror's first consolidation) against git's
//!   written for the same pack alone (`git multi-pack-index write --bitmap`), and git's whole
//!   `repack -adb` that prepared the repository;
//! - taking the pack in (a miss's indexing): gitcache's `ingest` against `git index-pack`, alone
//!   and with the check a clone asks of it;
//! - the `bench-pack` table of requests, gitcache's `upload_pack` against `git upload-pack`
//!   (with `--dump`, each request's body written into that folder first).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitcache_protocol::ObjectId;
use gitcache_testkit::repo::RepoSpec;

use crate::bench_pack::{
    build_examples, git, git_upload_pack, linked_copy, oid, peak_rss, requests, table,
};

pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let numbers = |flag: &str, default: &str| -> Result<Vec<usize>> {
        let list = crate::flag_value(args, flag).unwrap_or(default);
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().context(format!("{flag}: comma separated")))
            .collect()
    };
    let history = numbers("--history", "")?;
    let default_sizes = if history.is_empty() { "50,300" } else { "" };
    let mut repos: Vec<(String, String, RepoSpec)> = numbers("--sizes", default_sizes)?
        .into_iter()
        .map(|megabytes| {
            let about = format!("About {megabytes} MB of pack");
            (
                about,
                format!("scale-{megabytes}"),
                RepoSpec::scale(1, megabytes),
            )
        })
        .collect();
    repos.extend(history.into_iter().map(|thousands| {
        let about = format!("A history of {thousands},000 commits");
        let spec = RepoSpec::history(1, thousands * 1000);
        (about, format!("history-{thousands}k"), spec)
    }));
    let runs = crate::number_flag(args, "--runs", 3)? as usize;
    build_examples(
        root,
        &["gitcache-pack", "gitcache-mirror"],
        &["upload_pack", "write_bitmaps", "ingest"],
    )?;
    let example = |name: &str| {
        root.join("target/release/examples")
            .join(name)
            .display()
            .to_string()
    };
    for (about, name, spec) in repos {
        let repo = root.join(format!("target/bench-repos/{name}.git"));
        println!("\n## {about}\n");
        prepare(&repo, &spec)?;
        if args.iter().any(|a| a == "--prepare") {
            continue;
        }
        let tips: Vec<ObjectId> = git(&repo, &["for-each-ref", "--format=%(objectname)"])?
            .lines()
            .map(oid)
            .collect::<Result<_>>()?;
        let pack = only_pack(&repo)?;
        let objects = git(&repo, &["count-objects", "-v"])?
            .lines()
            .find_map(|l| l.strip_prefix("in-pack: ").map(|n| n.trim().to_owned()))
            .unwrap_or_default();
        println!(
            "{} commits, {} objects, {} refs, pack of {:.0} MB",
            git(&repo, &["rev-list", "--all", "--count"])?.trim(),
            objects,
            tips.len(),
            std::fs::metadata(&pack)?.len() as f64 / 1e6
        );

        // Bitmaps: git's for this pack alone, then gitcache's from nothing.
        let midx = linked_copy(&repo, "midx.git")?;
        let (took, rss) = timed(Command::new("git").arg("-C").arg(&midx).args([
            "multi-pack-index",
            "write",
            "--bitmap",
        ]))?;
        std::fs::remove_dir_all(&midx)?;
        let git_bitmaps = seconds_and_rss(took, rss);
        let mirror = linked_copy(&repo, "mirror.git")?;
        // Marked first, untimed: a consolidation marks the pack it writes without a walk,
        // where marking a pack found on disk plans a clone of every tip (in the release
        // example: this debug build took over ten minutes at 1 GB).
        let mut mark = Command::new(example("write_bitmaps"));
        mark.arg(&mirror).arg("--mark-only");
        mark.args(tips.iter().map(ToString::to_string));
        timed(&mut mark)?;
        let mut write = Command::new(example("write_bitmaps"));
        write.arg(&mirror);
        write.args(tips.iter().map(ToString::to_string));
        let (took, rss) = timed(&mut write)?;
        let our_bitmaps = seconds_and_rss(took, rss);

        // Taking the pack in: as a miss does, against git's indexing of it, alone and with
        // the check a clone asks of it.
        let git_index_pack = |check: &[&str]| -> Result<String> {
            let scratch = tempfile::tempdir()?;
            git(scratch.path(), &["init", "--quiet", "--bare", "theirs.git"])?;
            let (took, rss) = timed_with(
                Command::new("git")
                    .arg("-C")
                    .arg(scratch.path().join("theirs.git"))
                    .args(["index-pack", "--stdin"])
                    .args(check),
                Some(std::fs::File::open(&pack)?),
            )?;
            Ok(seconds_and_rss(took, rss))
        };
        let git_index = git_index_pack(&[])?;
        let git_checked = git_index_pack(&["--check-self-contained-and-connected"])?;
        let (took, rss) = timed(Command::new(example("ingest")).arg(&pack))?;
        let our_index = seconds_and_rss(took, rss);
        println!(
            "\n| step | git | gitcache |\n| --- | --- | --- |\n\
             | bitmaps from nothing (git: `multi-pack-index write --bitmap`) | {git_bitmaps} | {our_bitmaps} |\n\
             | taking the pack in (git: `index-pack --stdin`; gitcache's checks it closed too) | {git_index} | {our_index} |\n\
             | the same, git checking it closed too (`--check-self-contained-and-connected`, as a clone does) | {git_checked} | {our_index} |"
        );
        println!(
            "\n`git repack -adb` that packed it: {}",
            std::fs::read_to_string(repo.join("repack-took"))
                .unwrap_or_default()
                .trim()
        );

        let only = crate::flag_value(args, "--only");
        let cases: Vec<_> = requests(&mirror, &tips, true)?
            .into_iter()
            .filter(|(name, _)| crate::selected(only, name))
            .collect();
        if let Some(dir) = crate::flag_value(args, "--dump") {
            crate::bench_pack::dump(dir, &name, &cases)?;
        }
        table(
            (&git_upload_pack(), &repo),
            (&[example("upload_pack")], &mirror),
            &cases,
            runs,
        )?;
    }
    Ok(())
}

/// Generate the repository `spec` describes unless it is there, then pack it as
/// a forge keeps it: one pack with a bitmap (`git repack -adb`, its time kept in the file
/// `repack-took`), a commit-graph, packed refs.
fn prepare(repo: &Path, spec: &RepoSpec) -> Result<()> {
    if !repo.exists() {
        println!(
            "generating {} ({} commits)...",
            repo.display(),
            spec.commits
        );
        let started = Instant::now();
        let partial = repo.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        gitcache_testkit::repo::generate(&partial, spec)?;
        std::fs::rename(&partial, repo)?;
        println!("generated in {:.0?}", started.elapsed());
    }
    if !repo.join("objects/info/commit-graph").exists() {
        println!("git repack -adb, commit-graph...");
        let (took, rss) = timed(Command::new("git").arg("-C").arg(repo).args([
            "repack",
            "-a",
            "-d",
            "-q",
            "--write-bitmap-index",
        ]))?;
        std::fs::write(repo.join("repack-took"), seconds_and_rss(took, rss))?;
        git(repo, &["commit-graph", "write", "--reachable"])?;
    }
    // Refs packed, as a forge's housekeeping and a mirror's refresh leave them (each request
    // reads them all, on both sides, for `include-tag`).
    git(repo, &["pack-refs", "--all"])?;
    Ok(())
}

/// The repository's one pack file.
fn only_pack(repo: &Path) -> Result<PathBuf> {
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(repo.join("objects/pack"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pack") {
            packs.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(packs) {
        Ok([pack]) => Ok(pack),
        Err(packs) => bail!("{} packs in {}, not one", packs.len(), repo.display()),
    }
}

/// Run `command` to its end under `/usr/bin/time`, `stdin` its input (none if `None`): wall
/// time and peak RSS in KiB.
fn timed_with(command: &mut Command, stdin: Option<std::fs::File>) -> Result<(Duration, u64)> {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    let started = Instant::now();
    let out = timed
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            timed.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, peak_rss(&out.stderr)))
}

fn timed(command: &mut Command) -> Result<(Duration, u64)> {
    timed_with(command, None)
}

fn seconds_and_rss(took: Duration, rss_kib: u64) -> String {
    format!("{:.2} s, {} MiB", took.as_secs_f64(), rss_kib / 1024)
}
