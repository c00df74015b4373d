//! `cargo xtask bench-pack [repo]`: our pack generation against `git upload-pack`, both as
//! processes on the same repository and the same request bodies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitcache_protocol::ObjectId;
use gitcache_protocol::filter::Filter;
use gitcache_protocol::request::{Capabilities, Command as V2, Fetch, Request};

const RUNS: usize = 5;

pub(crate) fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub(crate) fn oid(hex: &str) -> Result<ObjectId> {
    Ok(ObjectId::from_hex(hex.trim().as_bytes())?)
}

pub(crate) fn body(fetch: Fetch) -> Vec<u8> {
    let request = Request {
        capabilities: Capabilities {
            agent: Some("git/2.47.3".into()),
            ..Capabilities::default()
        },
        command: V2::Fetch(fetch),
    };
    let mut out = Vec::new();
    request.write_to(&mut out).expect("in memory");
    out
}

/// One timed run: wall time, response bytes, peak RSS in KiB.
pub(crate) fn run_once(program: &[String], repo: &Path, input: &[u8]) -> Result<Run> {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .args(program)
        .arg(repo)
        .env("GIT_PROTOCOL", "version=2");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    // Counted, not kept: a clone of a large repository is gigabytes.
    let mut stdout = child.stdout.take().context("stdout")?;
    let counter = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match std::io::Read::read(&mut stdout, &mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    feeder.join().expect("feeder")?;
    let bytes = counter.join().expect("counter")?;
    if !out.status.success() {
        bail!(
            "{program:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((elapsed, bytes, peak_rss(&out.stderr)))
}

/// The peak RSS in KiB that `/usr/bin/time -f %M` printed last on `stderr`.
pub(crate) fn peak_rss(stderr: &[u8]) -> u64 {
    String::from_utf8_lossy(stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// One run or a summary of runs: wall time, response bytes, peak RSS in KiB.
pub(crate) type Run = (Duration, u64, u64);

/// Median time (and its bytes) and highest peak RSS of some runs.
fn summary(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.0);
    let rss = runs.iter().map(|r| r.2).max().unwrap_or(0);
    let middle = runs.len() / 2;
    (runs[middle].0, runs[middle].1, rss)
}

/// Both programs on the same input, `runs` runs each, alternating (so that the shared
/// machine's ups and downs fall on both alike): each one's summary.
pub(crate) fn paired(
    a: (&[String], &Path),
    b: (&[String], &Path),
    input: &[u8],
    runs: usize,
) -> Result<(Run, Run)> {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        first.push(run_once(a.0, a.1, input)?);
        second.push(run_once(b.0, b.1, input)?);
    }
    Ok((summary(first), summary(second)))
}

/// The bench repository (default: the generated `large` one), packed as a well-run server
/// keeps it, and its tips.
pub(crate) fn prepare_repo(root: &Path, repo: Option<&str>) -> Result<(PathBuf, Vec<ObjectId>)> {
    let repo: PathBuf = match repo {
        Some(path) => PathBuf::from(path),
        None => {
            let path = root.join("target/bench-repos/large.git");
            if !path.exists() {
                println!("generating the large repository (about a minute)...");
                let spec = gitcache_testkit::repo::RepoSpec::large(1);
                gitcache_testkit::repo::generate(&path, &spec)?;
            }
            path
        }
    };
    // As a well-run server keeps it: one pack with a bitmap, and a commit-graph.
    if !repo.join("objects/info/commit-graph").exists() {
        println!("repacking with bitmaps and writing a commit-graph...");
        git(
            &repo,
            &[
                "repack",
                "-a",
                "-d",
                "-f",
                "-q",
                "--write-bitmap-index",
                "--depth=50",
                "--window=250",
            ],
        )?;
        git(&repo, &["commit-graph", "write", "--reachable"])?;
    }
    let tips: Vec<ObjectId> = git(&repo, &["for-each-ref", "--format=%(objectname)"])?
        .lines()
        .map(oid)
        .collect::<Result<_>>()?;
    Ok((repo, tips))
}

/// The same repository as a consolidated mirror keeps it: the same pack (hard links), marked
/// with its tips, with gitcache's own bitmaps instead of git's.
fn as_mirror(repo: &Path, tips: &[ObjectId]) -> Result<PathBuf> {
    let mirror = linked_copy(repo, "mirror.git")?;
    let repo = gitcache_pack::Repository::open(&mirror)?;
    let marked = repo.mark_pack_tips(tips)?;
    let started = std::time::Instant::now();
    let bitmaps = repo.write_bitmaps(tips)?;
    println!(
        "mirror copy: pack marked with its tips: {}, bitmaps written: {} ({:.1} s)",
        marked.is_some(),
        bitmaps.is_some(),
        started.elapsed().as_secs_f64()
    );
    Ok(mirror)
}

/// A copy of `repo` beside it (its extension `extension`) sharing its pack by hard links,
/// without bitmaps or tips marks.
pub(crate) fn linked_copy(repo: &Path, extension: &str) -> Result<PathBuf> {
    let mirror = repo.with_extension(extension);
    if mirror.exists() {
        std::fs::remove_dir_all(&mirror)?;
    }
    let status = Command::new("cp")
        .arg("-al")
        .arg(repo)
        .arg(&mirror)
        .status()?;
    if !status.success() {
        bail!("copying the repository failed");
    }
    for entry in std::fs::read_dir(mirror.join("objects/pack"))? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|e| e == "bitmap" || e == "tips")
        {
            std::fs::remove_file(&path)?;
        }
    }
    // Files that are written anew must not be links into git's copy.
    for name in ["packed-refs", "config", "HEAD"] {
        let path = mirror.join(name);
        if path.exists() {
            let data = std::fs::read(&path)?;
            std::fs::remove_file(&path)?;
            std::fs::write(&path, data)?;
        }
    }
    Ok(mirror)
}

/// The benched requests on `repo` (the walked all-branches clone only when `walked`): full
/// clone, depth 1, incremental fetch, `blob:none`, by name.
pub(crate) fn requests(
    repo: &Path,
    tips: &[ObjectId],
    walked: bool,
) -> Result<Vec<(&'static str, Fetch)>> {
    let main = oid(&git(repo, &["rev-parse", "main"])?)?;
    let old = oid(&git(repo, &["rev-parse", "main~50"])?)?;
    let base = Fetch {
        done: true,
        thin_pack: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    };
    let mut cases = vec![(
        "full clone",
        Fetch {
            wants: tips.to_vec(),
            ..base.clone()
        },
    )];
    if walked {
        let heads: Vec<ObjectId> = git(
            repo,
            &["for-each-ref", "--format=%(objectname)", "refs/heads/"],
        )?
        .lines()
        .map(oid)
        .collect::<Result<_>>()?;
        cases.push((
            "clone of all branches, no tags (walked)",
            Fetch {
                wants: heads,
                ..base.clone()
            },
        ));
    }
    cases.push((
        "clone --depth=1",
        Fetch {
            wants: vec![main],
            deepen: Some(1),
            include_tag: true,
            ..base.clone()
        },
    ));
    // A CI job's deeper shallow clone (GitLab's default depth is 20 or 50).
    cases.push((
        "clone --depth=50",
        Fetch {
            wants: vec![main],
            deepen: Some(50),
            include_tag: true,
            ..base.clone()
        },
    ));
    cases.push((
        "fetch, have main~50",
        Fetch {
            wants: vec![main],
            haves: vec![old],
            include_tag: true,
            ..base.clone()
        },
    ));
    // A client long away (a history past the reading of a new mirror's first pack walks).
    if let Ok(far) = git(repo, &["rev-parse", "--verify", "-q", "main~2000"]) {
        cases.push((
            "fetch, have main~2000",
            Fetch {
                wants: vec![main],
                haves: vec![oid(&far)?],
                include_tag: true,
                ..base.clone()
            },
        ));
    }
    if walked {
        // Negotiation against a hostile shape: wants along one first-parent chain, newest
        // first, one old have, no done (each want's walk started over when it was quadratic).
        let chain: Vec<ObjectId> =
            git(repo, &["rev-list", "--first-parent", "-n", "5001", "main"])?
                .lines()
                .map(oid)
                .collect::<Result<_>>()?;
        if let Some((have, wants)) = chain.split_last() {
            cases.push((
                "negotiate: 5,000 chained wants, one old have, no done",
                Fetch {
                    wants: wants.to_vec(),
                    haves: vec![*have],
                    done: false,
                    ..base.clone()
                },
            ));
            // The same objects for a client that takes no thin pack: objects whose stored
            // base it has need new bases among those sent.
            cases.push((
                "5,000 chained wants, one old have, no thin-pack",
                Fetch {
                    wants: wants.to_vec(),
                    haves: vec![*have],
                    thin_pack: false,
                    ..base.clone()
                },
            ));
        }
    }
    cases.push((
        "clone --filter=blob:none",
        Fetch {
            wants: tips.to_vec(),
            filter: Some(Filter::BlobNone),
            ..base.clone()
        },
    ));
    if walked {
        // Answered from the type bitmaps, as git answers them.
        for (name, filter) in [
            ("clone --filter=tree:0", Filter::Tree(0)),
            ("clone --filter=blob:limit=10k", Filter::BlobLimit(10 << 10)),
        ] {
            cases.push((
                name,
                Fetch {
                    wants: tips.to_vec(),
                    filter: Some(filter),
                    ..base.clone()
                },
            ));
        }
    }
    Ok(cases)
}

pub(crate) fn run(
    root: &Path,
    repo: Option<&str>,
    only: Option<&str>,
    dump: Option<&str>,
) -> Result<()> {
    let (theirs_repo, tips) = prepare_repo(root, repo)?;
    let repo = as_mirror(&theirs_repo, &tips)?;

    build_examples(root, &["gitcache-pack"], &["upload_pack"])?;
    let ours = vec![
        root.join("target/release/examples/upload_pack")
            .display()
            .to_string(),
    ];
    let theirs = git_upload_pack();

    let cases: Vec<_> = requests(&repo, &tips, true)?
        .into_iter()
        .filter(|(name, _)| crate::selected(only, name))
        .collect();
    if let Some(dir) = dump {
        let name = theirs_repo
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("repo");
        self::dump(dir, name, &cases)?;
    }
    let commits = git(&repo, &["rev-list", "--all", "--count"])?;
    println!(
        "\nrepository: {} commits, {}",
        commits.trim(),
        git(&repo, &["count-objects", "-vH"])?
            .lines()
            .find(|l| l.starts_with("size-pack"))
            .unwrap_or("")
    );
    table((&theirs, &theirs_repo), (&ours, &repo), &cases, RUNS)
}

/// Each case's request body written into `dir` as `<name>-<i>.req`, to replay by hand
/// (`upload_pack <mirror> < body`).
pub(crate) fn dump(dir: &str, name: &str, cases: &[(&str, Fetch)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, (case, fetch)) in cases.iter().enumerate() {
        let file = format!("{dir}/{name}-{i}.req");
        std::fs::write(&file, body(fetch.clone()))?;
        println!("{file}: {case}");
    }
    Ok(())
}

/// Build the release `examples` of `packages`.
pub(crate) fn build_examples(root: &Path, packages: &[&str], examples: &[&str]) -> Result<()> {
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--release", "--quiet"]);
    for package in packages {
        cargo.args(["-p", package]);
    }
    for example in examples {
        cargo.args(["--example", example]);
    }
    if !cargo.current_dir(root).status()?.success() {
        bail!("building the examples {examples:?} failed");
    }
    Ok(())
}

/// `git upload-pack` as a forge runs it: filters allowed.
pub(crate) fn git_upload_pack() -> Vec<String> {
    [
        "git",
        "-c",
        "uploadpack.allowFilter=true",
        "upload-pack",
        "--stateless-rpc",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The table of `cases`, git (`theirs`) against gitcache (`ours`), `runs` runs of each.
pub(crate) fn table(
    theirs: (&[String], &Path),
    ours: (&[String], &Path),
    cases: &[(&str, Fetch)],
    runs: usize,
) -> Result<()> {
    println!(
        "\n| request | git time | gitcache time | gitcache / git | git bytes | gitcache bytes | bytes ratio | git peak RSS | gitcache peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, fetch) in cases {
        let input = body(fetch.clone());
        let ((gt, gb, gm), (ot, ob, om)) = paired(theirs, ours, &input, runs)?;
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.2} | {gb} | {ob} | {:.2} | {} MiB | {} MiB |",
            gt.as_secs_f64() * 1e3,
            ot.as_secs_f64() * 1e3,
            ot.as_secs_f64() / gt.as_secs_f64(),
            ob as f64 / gb as f64,
            gm / 1024,
            om / 1024
        );
    }
    Ok(())
}
