//! The crash-consistency campaign: the real server binary driven through refreshes,
//! consolidation, bitmap writes and response stores, killed with SIGKILL at random instants
//! and started again on the same data, with every on-disk state checked after each kill.
//!
//! After every kill and restart:
//! - `git fsck --strict` passes in every mirror;
//! - every stored response's trailer is present and its checksum is its content's;
//! - a clone through the restarted server has exactly the upstream's refs.
//!
//! `cargo xtask crash --kills N` runs a long campaign; a test in the server crate runs a
//! short one.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::git::{GitClient, git_stdout};
use crate::repo::{self, RepoSpec, Rng};
use crate::upstream::{Access, Upstream};

/// What a campaign did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Kills made (each followed by a restart and the checks).
    pub kills: usize,
    /// Mirrors checked with `git fsck --strict`, summed over all kills.
    pub mirrors_checked: usize,
    /// Stored responses verified, summed over all kills.
    pub responses_checked: usize,
    /// Clones made and compared with the upstream after a restart.
    pub clones_checked: usize,
    /// Requests in flight when a kill came that failed (expected: they were cut off).
    pub cut_requests: usize,
}

/// The repositories the campaign serves.
const REPOS: [&str; 2] = ["acme/widgets", "acme/gadgets"];

/// Run `kills` kill-and-restart rounds of the server binary at `server`, seeded by `seed`.
/// Panics with what broke at the first violated invariant; `progress` hears about each round.
pub fn campaign(
    server: &Path,
    kills: usize,
    seed: u64,
    mut progress: impl FnMut(&Report),
) -> io::Result<Report> {
    let upstream = Upstream::start()?;
    for (i, name) in REPOS.iter().enumerate() {
        repo::generate(&upstream.repo_path(name), &RepoSpec::small(seed + i as u64))?;
        upstream.adopt_repo(name, Access::Public)?;
    }
    let data = tempfile::Builder::new()
        .prefix("gitcache-crash-")
        .tempdir()?;
    let git = GitClient::new()?;
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    for round in 0..kills {
        let mut server_process = Server::start(server, &upstream, data.path())?;
        if round > 0 {
            // The restarted server is whole: every mirror, every stored response, and clones
            // that match the upstream (before anything moves again).
            check_data(data.path(), &mut report);
            check_clones(&git, &server_process, &upstream, round, &mut report)?;
        }
        // Move the upstream now and then, so that refreshes fetch and consolidation runs.
        if rng.chance(60) {
            let name = REPOS[rng.below(REPOS.len())];
            repo::append_commits(
                &upstream.repo_path(name),
                "main",
                1 + rng.below(3),
                rng.next_u64(),
            )?;
        }
        // Clients: clones (misses, hits and stored responses), shallow and incremental
        // fetches, each on its own thread; then a kill at a random instant.
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let url = server_process.url(REPOS[(round + c) % REPOS.len()]);
                let home = git.home().join(format!("r{round}-c{c}"));
                let depth = c == 1;
                std::thread::spawn(move || client_work(&url, &home, depth))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + rng.below(1200) as u64));
        server_process.kill();
        for client in clients {
            if !client.join().unwrap_or(false) {
                report.cut_requests += 1;
            }
        }
        report.kills += 1;
        progress(&report);
    }
    // One last start: the data the last kill left is checked too.
    let server_process = Server::start(server, &upstream, data.path())?;
    check_data(data.path(), &mut report);
    check_clones(&git, &server_process, &upstream, kills, &mut report)?;
    Ok(report)
}

/// A clone (shallow if `depth`) and, if it worked, a fetch; whether both succeeded.
fn client_work(url: &str, dir: &Path, depth: bool) -> bool {
    let mut clone = Command::new(crate::git::git_program());
    clone.args(["clone", "-q", "--bare"]);
    if depth {
        clone.arg("--depth=1");
    }
    let cloned = clone
        .arg(url)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    cloned
        && Command::new(crate::git::git_program())
            .args(["fetch", "-q", "origin"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Every mirror passes `git fsck --strict`; every stored response verifies.
fn check_data(data: &Path, report: &mut Report) {
    for mirror in dirs_with(&data.join("mirrors"), |p| {
        p.extension().is_some_and(|e| e == "git") && p.join("HEAD").is_file()
    }) {
        git_stdout(&mirror, &["fsck", "--strict", "--no-progress"]);
        report.mirrors_checked += 1;
    }
    for file in files_with(&data.join("responses"), |p| {
        p.extension().is_some_and(|e| e == "resp")
    }) {
        let bytes = std::fs::read(&file).expect("a stored response reads");
        assert!(
            response_is_whole(&bytes),
            "a published response does not verify: {}",
            file.display()
        );
        report.responses_checked += 1;
    }
}

/// A stored response: content, its SHA-256, the magic.
fn response_is_whole(bytes: &[u8]) -> bool {
    use sha2::Digest;
    let Some(content_len) = bytes.len().checked_sub(40) else {
        return false;
    };
    &bytes[content_len + 32..] == b"GCRESP01"
        && sha2::Sha256::digest(&bytes[..content_len])[..] == bytes[content_len..content_len + 32]
}

/// A clone of each repository through `server` has the upstream's refs.
fn check_clones(
    git: &GitClient,
    server: &Server,
    upstream: &Upstream,
    round: usize,
    report: &mut Report,
) -> io::Result<()> {
    for name in REPOS {
        let dir = format!("check-{round}-{}", name.replace('/', "-"));
        git.run(
            git.home(),
            &["clone", "-q", "--mirror", &server.url(name), &dir],
        )?
        .expect_success();
        let refs = |repo: &Path| {
            let mut lines: Vec<String> = git_stdout(
                repo,
                &[
                    "for-each-ref",
                    "--format=%(objectname) %(refname)",
                    "refs/heads",
                    "refs/tags",
                ],
            )
            .lines()
            .map(str::to_owned)
            .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            refs(&git.home().join(&dir)),
            refs(&upstream.repo_path(name)),
            "a clone of {name} after a restart differs from the upstream"
        );
        git_stdout(
            &git.home().join(&dir),
            &["fsck", "--strict", "--no-progress"],
        );
        std::fs::remove_dir_all(git.home().join(&dir))?;
        report.clones_checked += 1;
    }
    Ok(())
}

fn dirs_with(root: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    walk(root, true, &keep)
}

fn files_with(root: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    walk(root, false, &keep)
}

fn walk(root: &Path, dirs: bool, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir == dirs && keep(&path) {
                found.push(path.clone());
            } else if is_dir {
                pending.push(path);
            }
        }
    }
    found
}

/// The server binary, running on a data directory.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(binary: &Path, upstream: &Upstream, data: &Path) -> io::Result<Server> {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.url()])
            .arg("--data-dir")
            .arg(data)
            // Consolidation and bitmap writing soon and often; every response stored.
            .args(["--consolidate-after", "2", "--log-format", "plain"])
            .args(["--min-free-bytes", "0"])
            .args(["--log-level", "warn"])
            .env_remove("GITCACHE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = String::new();
        let addr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line)? == 0 || Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other(format!(
                    "the server did not start:\n{said}"
                )));
            }
            said.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix("gitcache listening on http://") {
                break addr.to_owned();
            }
        };
        // Keep reading its stderr, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr.get_mut().by_ref(), &mut std::io::sink());
        });
        Ok(Server { child, addr })
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    /// SIGKILL, as a crash or the OOM killer would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
