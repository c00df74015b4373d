//! Recording protocol transcripts from the real `git` client against C git's http-backend.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, RecordedRequest, RequestKind, Upstream};

/// The repository the transcripts are recorded against: small, with branches, merges and
/// tags, no large files, so fixtures stay small.
fn fixture_spec() -> RepoSpec {
    RepoSpec {
        commits: 40,
        branches: 2,
        merge_every: 12,
        tag_every: 6,
        files: 8,
        binary_every: 0,
        binary_bytes: 0,
        large_every: 0,
        ..RepoSpec::small(42)
    }
}

struct Recorder<'a> {
    upstream: &'a Upstream,
    client: &'a GitClient,
    out: &'a Path,
    manifest: String,
}

impl Recorder<'_> {
    /// Run `git args` in `dir` and save every request it made as scenario `name`.
    fn scenario(&mut self, name: &str, dir: &Path, args: &[&str]) -> Result<()> {
        self.upstream.reset_counts();
        let out = self.client.run(dir, args)?;
        ensure!(out.success(), "{name}: {out}");
        self.save(name, &args.join(" "))
    }

    fn save(&mut self, name: &str, command: &str) -> Result<()> {
        let requests = self.upstream.requests();
        let dir = self.out.join(name);
        fs::create_dir_all(&dir)?;
        let url = self.upstream.url();
        writeln!(
            self.manifest,
            "scenario {name}: git {}",
            command.replace(&url, "$UPSTREAM")
        )?;
        for (i, r) in requests.iter().enumerate() {
            ensure!(
                r.status == 200,
                "{name}: {} {} answered {}",
                r.method,
                r.path,
                r.status
            );
            let stem = format!("{:02}-{}", i + 1, kind_name(r));
            if !r.body.is_empty() {
                fs::write(dir.join(format!("{stem}.request")), &r.body)?;
            }
            fs::write(dir.join(format!("{stem}.response")), &r.response)?;
        }
        Ok(())
    }
}

fn kind_name(r: &RecordedRequest) -> &'static str {
    match r.kind {
        RequestKind::InfoRefs => "info-refs",
        RequestKind::LsRefs => "ls-refs",
        RequestKind::Fetch => "fetch",
        RequestKind::Other => "other",
    }
}

pub(crate) fn record(root: &Path) -> Result<()> {
    let out = root.join("crates/protocol/tests/fixtures/transcripts");
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    let upstream = Upstream::start()?;
    repo::generate(&upstream.repo_path("acme/fixture"), &fixture_spec())?;
    upstream.adopt_repo("acme/fixture", Access::Public)?;
    repo::generate(
        &upstream.repo_path("acme/fixture256"),
        &RepoSpec::tiny(42).sha256(),
    )?;
    upstream.adopt_repo("acme/fixture256", Access::Public)?;
    upstream.set_recording(true);

    let client = GitClient::new()?;
    let home = client.home().to_owned();
    let url = upstream.repo_url("acme/fixture");
    let bare = upstream.repo_path("acme/fixture");
    let version = client.run(&home, &["version"])?.expect_success().stdout;
    let mut manifest = format!(
        "# Recorded by `cargo xtask transcripts` with {}# Upstream refs at the start:\n",
        version
    );
    let refs = client.run(
        &bare,
        &[
            "for-each-ref",
            "--format=ref %(refname) %(objectname) %(*objectname)",
        ],
    )?;
    manifest.push_str(&refs.expect_success().stdout);
    let timestamp = client
        .run(&bare, &["log", "-1", "--format=%ct", "main~6"])?
        .expect_success()
        .stdout;
    let since = timestamp.trim().parse::<u64>().context("commit time")?;
    writeln!(manifest, "since {since}")?;
    let main_tip = client.rev_parse(&bare, "refs/heads/main")?;

    let mut rec = Recorder {
        upstream: &upstream,
        client: &client,
        out: &out,
        manifest,
    };
    rec.scenario("ls-remote", &home, &["ls-remote", &url])?;
    rec.scenario("clone", &home, &["clone", "--quiet", &url, "clone"])?;
    rec.scenario(
        "depth-1",
        &home,
        &["clone", "--quiet", "--depth=1", &url, "shallow"],
    )?;
    let shallow = home.join("shallow");
    rec.scenario(
        "deepen-relative",
        &shallow,
        &["fetch", "--quiet", "--deepen=2"],
    )?;
    rec.scenario("unshallow", &shallow, &["fetch", "--quiet", "--unshallow"])?;
    rec.scenario(
        "shallow-since",
        &home,
        &[
            "clone",
            "--quiet",
            &format!("--shallow-since={since}"),
            &url,
            "since",
        ],
    )?;
    rec.scenario(
        "shallow-exclude",
        &home,
        &[
            "clone",
            "--quiet",
            "--shallow-exclude=v1.0",
            &url,
            "exclude",
        ],
    )?;
    rec.scenario(
        "filter-blob-none",
        &home,
        &["clone", "--quiet", "--filter=blob:none", &url, "blobless"],
    )?;
    rec.scenario(
        "filter-tree-0",
        &home,
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            "--filter=tree:0",
            &url,
            "treeless",
        ],
    )?;
    rec.scenario(
        "filter-combine",
        &home,
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            "--filter=combine:blob:limit=1k+tree:3",
            &url,
            "combined",
        ],
    )?;
    rec.scenario(
        "tags",
        &home,
        &["clone", "--quiet", "--no-tags", &url, "notags"],
    )?;
    rec.scenario(
        "tags-fetch",
        &home.join("notags"),
        &["fetch", "--quiet", "--tags"],
    )?;

    // actions/checkout: init, then one fetch of a commit id at depth 1, with its header.
    let checkout = home.join("checkout");
    fs::create_dir_all(&checkout)?;
    client
        .run(&checkout, &["init", "--quiet"])?
        .expect_success();
    client
        .run(&checkout, &["remote", "add", "origin", &url])?
        .expect_success();
    let header = "http.extraheader=AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46ZmFrZQ==";
    let refspec = format!("+{main_tip}:refs/remotes/origin/main");
    let mut fetch = vec!["-c", header];
    fetch.extend(gitcache_testkit::git::CHECKOUT_FETCH);
    fetch.push(&refspec);
    rec.scenario("fetch-sha", &checkout, &fetch)?;

    // Negotiation: the upstream moves on and the clone has local commits it lacks.
    let clone = home.join("clone");
    for i in 0..40 {
        client
            .run(
                &clone,
                &[
                    "commit",
                    "--quiet",
                    "--allow-empty",
                    "-m",
                    &format!("local {i}"),
                ],
            )?
            .expect_success();
    }
    repo::append_commits(&bare, "main", 5, 7)?;
    rec.scenario("fetch-negotiation", &clone, &["fetch", "--quiet", "origin"])?;

    let url256 = upstream.repo_url("acme/fixture256");
    rec.scenario(
        "sha256-clone",
        &home,
        &["clone", "--quiet", &url256, "clone256"],
    )?;

    fs::write(out.join("manifest.txt"), &rec.manifest)?;
    seed_fuzz_corpora(root, &out)?;
    println!("transcripts written to {}", out.display());
    Ok(())
}

/// Seed the fuzz corpora from the transcripts: request bodies for the request parser (after a
/// split byte), every body for the pkt-line decoder, `info/refs` and `ls-refs` answers for
/// the readers of upstream answers.
fn seed_fuzz_corpora(root: &Path, transcripts: &Path) -> Result<()> {
    let requests = root.join("fuzz/corpus/request_parse");
    let pktlines = root.join("fuzz/corpus/pktline_decode");
    let adverts = root.join("fuzz/corpus/advertisement");
    let ls_refs = root.join("fuzz/corpus/ls_refs_response");
    for dir in [&requests, &pktlines, &adverts, &ls_refs] {
        fs::create_dir_all(dir)?;
    }
    for scenario in fs::read_dir(transcripts)? {
        let scenario = scenario?.path();
        if !scenario.is_dir() {
            continue;
        }
        let name = scenario
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .to_owned();
        for file in fs::read_dir(&scenario)? {
            let file = file?.path();
            let stem = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .to_owned();
            let bytes = fs::read(&file)?;
            if bytes.len() > 64 << 10 {
                continue;
            }
            let seed_name = format!("{name}-{stem}");
            fs::write(pktlines.join(&seed_name), &bytes)?;
            if let Some(kind) = stem.split_once('-').map(|(_, k)| k) {
                match kind {
                    "info-refs.response" => {
                        fs::write(adverts.join(format!("{name}-info-refs")), &bytes)?
                    }
                    "ls-refs.response" => {
                        fs::write(ls_refs.join(format!("{name}-ls-refs")), &bytes)?
                    }
                    _ => {}
                }
            }
            if stem.ends_with(".request") {
                let mut seeded = vec![(bytes.len() / 2) as u8];
                seeded.extend_from_slice(&bytes);
                fs::write(requests.join(&seed_name), seeded)?;
            }
        }
    }
    Ok(())
}
