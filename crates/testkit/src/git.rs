//! Running the real `git` client, isolated from the machine's configuration.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The fetch `actions/checkout` runs for one commit (a push's, or a pull request's merge
/// commit), before its refspec `+<sha>:<ref>`: protocol v2, no tags, depth 1, from `origin`.
pub const CHECKOUT_FETCH: [&str; 8] = [
    "-c",
    "protocol.version=2",
    "fetch",
    "--no-tags",
    "--prune",
    "--no-recurse-submodules",
    "--depth=1",
    "origin",
];

/// The `git` program tests run: `$GITCACHE_TEST_GIT`, else `git` from `PATH`.
pub fn git_program() -> PathBuf {
    PathBuf::from(std::env::var_os("GITCACHE_TEST_GIT").unwrap_or_else(|| "git".into()))
}

/// A `git` client with its own temporary `HOME` and a global config that holds only what the
/// tests need: protocol v2, an identity, `main` as the initial branch.
#[derive(Debug)]
pub struct GitClient {
    home: tempfile::TempDir,
    program: PathBuf,
}

/// What one `git` run printed, and how it ended.
#[derive(Debug, Clone)]
pub struct GitOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The arguments, for messages.
    pub args: Vec<String>,
}

impl GitOutput {
    /// Whether git exited with 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// This output if git succeeded; otherwise panic with everything git said.
    #[track_caller]
    pub fn expect_success(self) -> Self {
        assert!(self.success(), "{self}");
        self
    }

    /// This output if git failed; otherwise panic.
    #[track_caller]
    pub fn expect_failure(self) -> Self {
        assert!(!self.success(), "expected failure: {self}");
        self
    }
}

impl fmt::Display for GitOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "git {} -> {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

impl GitClient {
    /// A client with a fresh `HOME`.
    pub fn new() -> io::Result<GitClient> {
        let home = tempfile::Builder::new()
            .prefix("gitcache-client-")
            .tempdir()?;
        std::fs::write(
            home.path().join(".gitconfig"),
            "[protocol]\n\tversion = 2\n\
             [user]\n\tname = Test Client\n\temail = client@example.com\n\
             [init]\n\tdefaultBranch = main\n\
             [advice]\n\tdetachedHead = false\n\
             [safe]\n\tdirectory = *\n",
        )?;
        Ok(GitClient {
            home,
            program: git_program(),
        })
    }

    /// The client's `HOME`; a handy place for clones.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A `git` command in `dir`, with the client's environment and nothing of the machine's.
    pub fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.current_dir(dir);
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_PROTOCOL",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.path().join(".gitconfig"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_DATE", "1700000000 +0000")
            .env("GIT_COMMITTER_DATE", "1700000000 +0000")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `git args…` in `dir` and capture what it says.
    pub fn run(&self, dir: &Path, args: &[&str]) -> io::Result<GitOutput> {
        let out = self.command(dir).args(args).output()?;
        Ok(GitOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        })
    }

    /// `git fsck --strict` of `repo` (a work tree or a bare repository).
    pub fn fsck(&self, repo: &Path) -> io::Result<GitOutput> {
        self.run(repo, &["fsck", "--strict", "--no-progress"])
    }

    /// `git fsck --connectivity-only` of `repo`, for partial clones whose filtered objects are
    /// promised rather than present.
    pub fn fsck_connectivity(&self, repo: &Path) -> io::Result<GitOutput> {
        self.run(repo, &["fsck", "--connectivity-only", "--no-progress"])
    }

    /// `git rev-parse <rev>` in `repo`.
    pub fn rev_parse(&self, repo: &Path, rev: &str) -> io::Result<String> {
        let out = self.run(repo, &["rev-parse", "--verify", rev])?;
        if !out.success() {
            return Err(io::Error::other(out.to_string()));
        }
        Ok(out.stdout.trim().to_owned())
    }
}

/// Run `program [-C dir] args… [last]` and fail with its stderr if it fails.
pub(crate) fn run_git(
    program: &Path,
    dir: Option<&Path>,
    args: &[&str],
    last: Option<&Path>,
) -> io::Result<()> {
    let mut cmd = Command::new(program);
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null());
    if let Some(last) = last {
        cmd.arg(last);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Run `git args…` in `dir` with no machine configuration; its standard output.
pub(crate) fn output(dir: &Path, args: &[&str]) -> io::Result<String> {
    let out = Command::new(git_program())
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `git args…` in `dir` (no machine configuration) and return what it printed; panics
/// with git's error output if it fails. For tests and benches.
#[track_caller]
pub fn git_stdout(dir: &Path, args: &[&str]) -> String {
    match output(dir, args) {
        Ok(stdout) => stdout,
        Err(err) => panic!("{err}"),
    }
}

/// In the work tree `work`: stage everything and commit it as a test author, with `message`.
#[track_caller]
pub fn commit_all(work: &Path, message: &str) {
    git_stdout(work, &["add", "-A"]);
    git_stdout(
        work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
}

/// `git rev-parse --verify <rev>` in `repo`, with no client configuration.
pub(crate) fn rev_parse_in(repo: &Path, rev: &str) -> io::Result<String> {
    Ok(output(repo, &["rev-parse", "--verify", rev])?
        .trim()
        .to_owned())
}

/// Write `content` as a blob (a loose object) of the repository at `dir`; its id in hex.
#[track_caller]
pub fn write_blob(dir: &Path, content: &[u8]) -> String {
    let out = git_with_input(dir, &["hash-object", "-w", "--stdin"], content);
    String::from_utf8(out).expect("an id").trim().to_owned()
}

/// Run `git args…` in `dir` (no machine configuration) with `input` on its standard input;
/// what it printed, or a panic with git's error output. For tests and benches.
#[track_caller]
pub fn git_with_input(dir: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new(git_program())
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // Fed from a thread, so a git that writes much before reading all cannot deadlock.
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    let _ = feeder.join();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The pack a clone of every ref of the repository at `src` is sent, as `git pack-objects`
/// writes it (offset deltas).
#[track_caller]
pub fn clone_pack(src: &Path) -> Vec<u8> {
    let tips = git_stdout(src, &["for-each-ref", "--format=%(objectname)"]);
    git_with_input(
        src,
        &[
            "pack-objects",
            "--revs",
            "--stdout",
            "--delta-base-offset",
            "-q",
        ],
        tips.as_bytes(),
    )
}
