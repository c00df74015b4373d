//! Seedable repository generators, fed to `git fast-import`.
//!
//! The same [`RepoSpec`] always gives the same object ids: content comes from a seeded
//! generator and every date is fixed. Histories have branches that fork from `main` and merge
//! back, annotated, lightweight and nested tags, edits, renames and deletions, text and binary
//! files (some over 1 MiB).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use crate::git::{git_program, run_git};

/// A small, fast, seedable generator (SplitMix64); plenty for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The shape of a generated repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// Seed of all content.
    pub seed: u64,
    /// Commits in all, merges included.
    pub commits: usize,
    /// Feature branches forked from `main` along the way (kept as `feature/<n>`).
    pub branches: usize,
    /// Merge a feature branch into `main` every this many commits (0: never).
    pub merge_every: usize,
    /// Tag `main` every this many commits, alternating annotated and lightweight (0: never).
    pub tag_every: usize,
    /// Text files in the first commit.
    pub files: usize,
    /// Add or change a binary file every this many commits (0: never).
    pub binary_every: usize,
    /// Size of those binary files.
    pub binary_bytes: usize,
    /// Add a binary file of over 1 MiB every this many commits (0: never).
    pub large_every: usize,
    /// Size of those large files (at least 1 MiB; each is up to a quarter larger).
    pub large_bytes: usize,
    /// Directory levels new text files go down to, each level one of six names (0: a few
    /// fixed directories). Deep levels make deep trees; the shallow ones grow wide.
    pub depth: usize,
    /// Renamed files go to `moved/`, or, when this is not 0, to one of this many
    /// directories under it (chosen by the old path), so that no tree grows with every
    /// rename of a long history.
    pub moved_dirs: usize,
    /// Past this many files in a branch, a commit that would add one deletes one instead
    /// (0: no limit): trees of a long history stop growing.
    pub most_files: usize,
    /// `"sha1"` or `"sha256"`.
    pub object_format: &'static str,
}

impl RepoSpec {
    /// A handful of commits: one branch, two tags, no binaries.
    pub fn tiny(seed: u64) -> Self {
        RepoSpec {
            seed,
            commits: 6,
            branches: 1,
            merge_every: 5,
            tag_every: 3,
            files: 3,
            binary_every: 0,
            binary_bytes: 0,
            large_every: 0,
            large_bytes: 1 << 20,
            depth: 0,
            moved_dirs: 0,
            most_files: 0,
            object_format: "sha1",
        }
    }

    /// About a hundred commits with merges, tags, binaries and one file over 1 MiB.
    pub fn small(seed: u64) -> Self {
        RepoSpec {
            seed,
            commits: 120,
            branches: 4,
            merge_every: 15,
            tag_every: 10,
            files: 20,
            binary_every: 9,
            binary_bytes: 8 << 10,
            large_every: 100,
            large_bytes: 1 << 20,
            depth: 0,
            moved_dirs: 0,
            most_files: 0,
            object_format: "sha1",
        }
    }

    /// A few thousand commits, a few MB of pack.
    pub fn medium(seed: u64) -> Self {
        RepoSpec {
            seed,
            commits: 3000,
            branches: 20,
            merge_every: 60,
            tag_every: 50,
            files: 60,
            binary_every: 25,
            binary_bytes: 16 << 10,
            large_every: 1000,
            large_bytes: 1 << 20,
            depth: 0,
            moved_dirs: 0,
            most_files: 0,
            object_format: "sha1",
        }
    }

    /// Over 20,000 commits and about 50 MB of pack, for benchmarks.
    pub fn large(seed: u64) -> Self {
        RepoSpec {
            seed,
            commits: 22_000,
            branches: 60,
            merge_every: 100,
            tag_every: 200,
            files: 120,
            binary_every: 40,
            binary_bytes: 24 << 10,
            large_every: 600,
            large_bytes: 1 << 20,
            depth: 0,
            moved_dirs: 0,
            most_files: 0,
            object_format: "sha1",
        }
    }

    /// A repository of about `megabytes` of pack for scale benchmarks: 10,000 commits up to
    /// 50 MB, 60,000 up to 300, 100,000 up to 1 GB, 150,000 above; wide and deep trees,
    /// binaries of 32 KiB, and large files of 4–5 MiB making up the rest of the bytes.
    /// (Generating takes `git fast-import` about 20 s, 6 minutes and 20 minutes for the first
    /// three here, and grows with the square of the commits: every commit rewrites trees
    /// that grow wide, so that 200,000 commits took over an hour.)
    pub fn scale(seed: u64, megabytes: usize) -> Self {
        let commits = [(50, 10_000), (300, 60_000), (1000, 100_000)]
            .into_iter()
            .find(|&(most, _)| megabytes <= most)
            .map_or(150_000, |(_, commits)| commits);
        // Measured: about 1.9 KB of pack a commit for the text, trees and commits, and the
        // binaries' bytes as they are (random bytes do not compress).
        let binary_every = 40;
        let binary_bytes = 32 << 10;
        let large_bytes = 4 << 20;
        let text = commits * 1900 + commits / binary_every * binary_bytes;
        let rest = (megabytes << 20).saturating_sub(text).max(large_bytes);
        let large_every = (commits * (large_bytes + large_bytes / 8) / rest).max(1);
        RepoSpec {
            seed,
            commits,
            branches: (commits / 400).min(200),
            merge_every: 100,
            tag_every: 200,
            files: 1000,
            binary_every,
            binary_bytes,
            large_every,
            large_bytes,
            depth: 6,
            moved_dirs: 0,
            most_files: 0,
            object_format: "sha1",
        }
    }

    /// A long history: `commits` commits (500,000 for the scale benchmarks) of small
    /// changes to files three levels deep, 200 branches, a tag every 500 commits and a small
    /// binary every 200. A branch's own changes stop adding files at 2,000 and renames spread
    /// over 64 directories, but merges bring each branch's files into `main`: at 500,000
    /// commits `main` holds 31,550 files, the pack 1.3 GB and 4 million objects, and `git
    /// fast-import` took 31 minutes here (58 s for 60,000 commits).
    pub fn history(seed: u64, commits: usize) -> Self {
        RepoSpec {
            seed,
            commits,
            branches: (commits / 400).min(200),
            merge_every: 100,
            tag_every: 500,
            files: 200,
            binary_every: 200,
            binary_bytes: 16 << 10,
            large_every: 0,
            large_bytes: 1 << 20,
            depth: 3,
            moved_dirs: 64,
            most_files: 2000,
            object_format: "sha1",
        }
    }

    /// The same shape in a SHA-256 repository.
    pub fn sha256(mut self) -> Self {
        self.object_format = "sha256";
        self
    }
}

/// What the generator made.
#[derive(Debug, Clone)]
pub struct GeneratedRepo {
    /// The bare repository.
    pub path: PathBuf,
    /// Every branch, `main` first.
    pub branches: Vec<String>,
    /// Every tag.
    pub tags: Vec<String>,
    /// Commits made.
    pub commits: usize,
}

#[derive(Debug, Clone)]
enum Content {
    /// Shared: branches copy their files at each fork, and merges compare them.
    Text(Rc<[u8]>),
    Binary {
        seed: u64,
        len: usize,
    },
}

#[derive(Debug, Clone)]
struct Branch {
    name: String,
    files: BTreeMap<String, Content>,
    /// The paths of `files` in no order, and each one's place there: a random pick in
    /// constant time for deep layouts, whose file counts grow large.
    paths: Vec<String>,
    slots: HashMap<String, usize>,
    tip: Option<usize>,
    commits_since_merge: usize,
}

impl Branch {
    fn new(name: String, tip: Option<usize>) -> Self {
        Branch {
            name,
            files: BTreeMap::new(),
            paths: Vec::new(),
            slots: HashMap::new(),
            tip,
            commits_since_merge: 0,
        }
    }

    fn insert(&mut self, path: String, content: Content) {
        if self.files.insert(path.clone(), content).is_none() {
            self.slots.insert(path.clone(), self.paths.len());
            self.paths.push(path);
        }
    }

    fn remove(&mut self, path: &str) -> Option<Content> {
        let content = self.files.remove(path)?;
        let slot = self.slots.remove(path).expect("every file has a slot");
        self.paths.swap_remove(slot);
        if let Some(moved) = self.paths.get(slot) {
            self.slots.insert(moved.clone(), slot);
        }
        Some(content)
    }
}

const WORDS: &[&str] = &[
    "cache",
    "mirror",
    "pack",
    "object",
    "tree",
    "blob",
    "commit",
    "fetch",
    "clone",
    "delta",
    "index",
    "proxy",
    "upstream",
    "shallow",
    "filter",
    "tag",
    "branch",
    "merge",
    "stream",
    "frame",
    "client",
    "server",
    "ref",
    "negotiate",
    "have",
    "want",
    "done",
    "ready",
    "band",
    "progress",
];

struct Writer<W: Write> {
    out: W,
    rng: Rng,
    mark: usize,
    time: u64,
    tags: Vec<String>,
    /// [`RepoSpec::depth`].
    depth: usize,
    /// [`RepoSpec::moved_dirs`].
    moved_dirs: usize,
    /// [`RepoSpec::most_files`].
    most_files: usize,
    /// [`RepoSpec::large_bytes`].
    large_bytes: usize,
}

/// The names each level of a deep layout picks from.
const LEVELS: &[&str] = &["core", "net", "io", "util", "api", "gen"];

impl<W: Write> Writer<W> {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        writeln!(self.out, "data {}", bytes.len())?;
        self.out.write_all(bytes)?;
        writeln!(self.out)
    }

    fn text_lines(&mut self, lines: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..lines {
            let words = 3 + self.rng.below(9);
            for w in 0..words {
                if w > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(WORDS[self.rng.below(WORDS.len())].as_bytes());
            }
            out.push(b'\n');
        }
        out
    }

    fn file_data(&mut self, content: &Content) -> io::Result<()> {
        match content {
            Content::Text(bytes) => self.data(bytes),
            Content::Binary { seed, len } => self.data(&Rng::new(*seed).bytes(*len)),
        }
    }

    fn begin_commit(&mut self, branch: &str, message: &str) -> io::Result<usize> {
        self.mark += 1;
        self.time += 3600;
        writeln!(self.out, "commit refs/heads/{branch}\nmark :{}", self.mark)?;
        writeln!(
            self.out,
            "author A U Thor <author@example.com> {} +0000",
            self.time
        )?;
        writeln!(
            self.out,
            "committer C O Mitter <committer@example.com> {} +0000",
            self.time
        )?;
        self.data(message.as_bytes())?;
        Ok(self.mark)
    }

    fn set_file(&mut self, path: &str, content: &Content) -> io::Result<()> {
        let mode = if path.ends_with(".sh") {
            "100755"
        } else {
            "100644"
        };
        writeln!(self.out, "M {mode} inline {path}")?;
        self.file_data(content)
    }

    /// A random file of `branch` (which has some).
    fn pick(&mut self, branch: &Branch) -> String {
        let i = self.rng.below(branch.files.len());
        if self.depth > 0 {
            return branch.paths[i].clone();
        }
        // The flat layout's picks, as they always were (its repositories stay the same).
        branch.files.keys().nth(i).cloned().expect("in range")
    }

    /// The directory of a new text file.
    fn new_dir(&mut self) -> String {
        if self.depth == 0 {
            let dir = ["src", "src/net", "src/store", "docs", "tests", "scripts"];
            return dir[self.rng.below(6)].to_owned();
        }
        let levels = 1 + self.rng.below(self.depth);
        let mut dir = String::from("src");
        for _ in 0..levels {
            dir.push('/');
            dir.push_str(LEVELS[self.rng.below(LEVELS.len())]);
        }
        dir
    }

    /// One to three random changes to `branch`'s files, each written to the stream.
    fn random_changes(
        &mut self,
        branch: &mut Branch,
        binary: Option<usize>,
        large: bool,
    ) -> io::Result<()> {
        let changes = 1 + self.rng.below(3);
        for _ in 0..changes {
            let n = branch.files.len();
            let roll = self.rng.below(100);
            if roll < 55 && n > 0 {
                // Edit a text file: append lines, or rewrite it once it grows big.
                let key = self.pick(branch);
                if let Some(Content::Text(old)) = branch.files.get(&key).cloned() {
                    let mut new = if old.len() > 24 << 10 {
                        old[old.len() / 2..].to_vec()
                    } else {
                        old.to_vec()
                    };
                    let lines = 1 + self.rng.below(6);
                    new.extend(self.text_lines(lines));
                    let content = Content::Text(new.into());
                    self.set_file(&key, &content)?;
                    branch.insert(key, content);
                    continue;
                }
            }
            let full = self.most_files > 0 && n >= self.most_files;
            if (roll < 75 && !full) || n < 4 {
                let dir = self.new_dir();
                let ext = if dir == "scripts" { "sh" } else { "txt" };
                let path = format!("{dir}/f{}-{}.{ext}", self.mark, self.rng.below(1000));
                let lines = 5 + self.rng.below(40);
                let content = Content::Text(self.text_lines(lines).into());
                self.set_file(&path, &content)?;
                branch.insert(path, content);
            } else if roll < 88 {
                let key = self.pick(branch);
                writeln!(self.out, "D {key}")?;
                branch.remove(&key);
            } else {
                let key = self.pick(branch);
                let new = match self.moved_dirs {
                    0 => format!("moved/{}", key.replace('/', "-")),
                    dirs => {
                        let dir = key
                            .bytes()
                            .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize);
                        format!("moved/{}/{}", dir % dirs, key.replace('/', "-"))
                    }
                };
                if branch.files.contains_key(&new) {
                    continue;
                }
                writeln!(self.out, "R {key} {new}")?;
                let content = branch.remove(&key).expect("present");
                branch.insert(new, content);
            }
        }
        if let Some(size) = binary {
            let slot = self.rng.below(4);
            let content = Content::Binary {
                seed: self.rng.next_u64(),
                len: size / 2 + self.rng.below(size.max(1)),
            };
            let path = format!("assets/blob{slot}.bin");
            self.set_file(&path, &content)?;
            branch.insert(path, content);
        }
        if large {
            let content = Content::Binary {
                seed: self.rng.next_u64(),
                len: self.large_bytes + 4096 + self.rng.below(self.large_bytes / 4),
            };
            let path = format!("assets/large-{}.bin", self.mark);
            self.set_file(&path, &content)?;
            branch.insert(path, content);
        }
        Ok(())
    }
}

fn fast_import(
    repo: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut child = Command::new(git_program())
        .arg("-C")
        .arg(repo)
        .args(["fast-import", "--quiet", "--done"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let mut out = BufWriter::with_capacity(1 << 16, stdin);
    let written = write(&mut out)
        .and_then(|()| writeln!(out, "done"))
        .and_then(|()| out.flush());
    drop(out);
    let result = child.wait_with_output()?;
    if !result.status.success() {
        return Err(io::Error::other(format!(
            "git fast-import failed: {}",
            String::from_utf8_lossy(&result.stderr)
        )));
    }
    written
}

/// Create the bare repository `path` shaped by `spec`.
pub fn generate(path: &Path, spec: &RepoSpec) -> io::Result<GeneratedRepo> {
    let git = git_program();
    run_git(
        &git,
        None,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            &format!("--object-format={}", spec.object_format),
        ],
        Some(path),
    )?;
    let mut branch_names = vec!["main".to_owned()];
    let mut tags = Vec::new();
    fast_import(path, |out| {
        let mut w = Writer {
            out,
            rng: Rng::new(spec.seed),
            mark: 0,
            time: 1_600_000_000,
            tags: Vec::new(),
            depth: spec.depth,
            moved_dirs: spec.moved_dirs,
            most_files: spec.most_files,
            large_bytes: spec.large_bytes.max(1 << 20),
        };
        let mut main = Branch::new("main".into(), None);
        // The first commit: the initial files.
        let first = w.begin_commit("main", "Initial import\n")?;
        for i in 0..spec.files.max(1) {
            let lines = 10 + w.rng.below(50);
            let content = Content::Text(w.text_lines(lines).into());
            let path = format!("src/file{i}.txt");
            w.set_file(&path, &content)?;
            main.insert(path, content);
        }
        w.set_file(
            "scripts/build.sh",
            &Content::Text(b"#!/bin/sh\nexit 0\n".as_slice().into()),
        )?;
        main.tip = Some(first);
        let mut features: Vec<Branch> = Vec::new();
        let fork_every = if spec.branches == 0 {
            usize::MAX
        } else {
            (spec.commits / (spec.branches + 1)).max(1)
        };
        let mut main_commits = 1usize;
        let (mut last_tag_at, mut tag_count) = (0usize, 0usize);
        for i in 1..spec.commits {
            let every = |n: usize| n > 0 && i.is_multiple_of(n);
            let binary = |i: usize| {
                (spec.binary_every > 0 && i.is_multiple_of(spec.binary_every))
                    .then_some(spec.binary_bytes)
            };
            if features.len() < spec.branches && i.is_multiple_of(fork_every) {
                let name = format!("feature/{}", features.len() + 1);
                writeln!(
                    w.out,
                    "reset refs/heads/{name}\nfrom :{}",
                    main.tip.expect("main has a tip")
                )?;
                let mut feature = main.clone();
                feature.name = name;
                feature.commits_since_merge = 0;
                features.push(feature);
            }
            let mergeable: Vec<usize> = (0..features.len())
                .filter(|&b| features[b].commits_since_merge > 0)
                .collect();
            if every(spec.merge_every) && !mergeable.is_empty() {
                let b = mergeable[w.rng.below(mergeable.len())];
                let feature = &mut features[b];
                let mark = w.begin_commit("main", &format!("Merge branch '{}'\n", feature.name))?;
                writeln!(w.out, "merge :{}", feature.tip.expect("feature has a tip"))?;
                for (path, content) in &feature.files {
                    let same = match (main.files.get(path), content) {
                        (Some(Content::Text(a)), Content::Text(b)) => Rc::ptr_eq(a, b) || a == b,
                        (
                            Some(Content::Binary { seed: a, .. }),
                            Content::Binary { seed: b, .. },
                        ) => a == b,
                        _ => false,
                    };
                    if !same {
                        w.set_file(path, content)?;
                        main.insert(path.clone(), content.clone());
                    }
                }
                feature.commits_since_merge = 0;
                main.tip = Some(mark);
                main_commits += 1;
            } else if !features.is_empty() && w.rng.chance(30) {
                let b = w.rng.below(features.len());
                let mut feature =
                    std::mem::replace(&mut features[b], Branch::new(String::new(), None));
                let mark = w.begin_commit(
                    &feature.name.clone(),
                    &format!("Work on {} ({i})\n", feature.name),
                )?;
                w.random_changes(&mut feature, binary(i), every(spec.large_every))?;
                feature.tip = Some(mark);
                feature.commits_since_merge += 1;
                features[b] = feature;
            } else {
                let mark =
                    w.begin_commit("main", &format!("Change {i}\n\nDetails of change {i}.\n"))?;
                w.random_changes(&mut main, binary(i), every(spec.large_every))?;
                main.tip = Some(mark);
                main_commits += 1;
                if spec.tag_every > 0 && main_commits - last_tag_at >= spec.tag_every {
                    last_tag_at = main_commits;
                    tag_count += 1;
                    let n = tag_count;
                    if n % 2 == 1 {
                        let name = format!("v{n}.0");
                        w.mark += 1;
                        let tag_mark = w.mark;
                        writeln!(w.out, "tag {name}\nmark :{tag_mark}\nfrom :{mark}")?;
                        writeln!(
                            w.out,
                            "tagger T Agger <tagger@example.com> {} +0000",
                            w.time
                        )?;
                        w.data(format!("Release {name}\n").as_bytes())?;
                        w.tags.push(name.clone());
                        if n % 3 == 0 {
                            // A tag of a tag.
                            let outer = format!("{name}-signed");
                            writeln!(w.out, "tag {outer}\nfrom :{tag_mark}")?;
                            writeln!(
                                w.out,
                                "tagger T Agger <tagger@example.com> {} +0000",
                                w.time
                            )?;
                            w.data(format!("Signed off {name}\n").as_bytes())?;
                            w.tags.push(outer);
                        }
                    } else {
                        let name = format!("light-{n}");
                        writeln!(w.out, "reset refs/tags/{name}\nfrom :{mark}")?;
                        w.tags.push(name);
                    }
                }
            }
        }
        branch_names.extend(features.iter().map(|f| f.name.clone()));
        tags = std::mem::take(&mut w.tags);
        Ok(())
    })?;
    run_git(
        &git,
        Some(path),
        &["symbolic-ref", "HEAD", "refs/heads/main"],
        None,
    )?;
    Ok(GeneratedRepo {
        path: path.to_owned(),
        branches: branch_names,
        tags,
        commits: spec.commits,
    })
}

/// Add `n` commits to `branch` of the bare repository `repo` (each adds a file and changes
/// `n` numbered lines of `word`, alike enough between words to delta well.
pub fn text_lines(word: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{word} line {i}, {}\n", i * 7919 % 10007))
        .collect()
}

/// In the work tree `work`: two commits of `files` files that shrink from the first to the
/// second (a line of their own, a shared text, then lines of their own that the second drops).
/// Packed by git, each new version is a delta against its old one, which a depth-1 clone of the
/// second commit is not sent. Returns the shared text.
#[track_caller]
pub fn commit_shrinking_files(work: &Path, files: usize) -> String {
    let shared = text_lines("shared", 60);
    for i in 0..files {
        let old = format!("{i}\n{shared}{}", text_lines(&format!("old{i}"), 20));
        std::fs::write(work.join(format!("f{i}.txt")), old).unwrap();
    }
    crate::git::commit_all(work, "old");
    for i in 0..files {
        std::fs::write(work.join(format!("f{i}.txt")), format!("{i}\n{shared}")).unwrap();
    }
    crate::git::commit_all(work, "new");
    shared
}

/// another); returns the new tip. Distinct `seed`s give distinct commits.
pub fn append_commits(repo: &Path, branch: &str, n: usize, seed: u64) -> io::Result<String> {
    let tip = crate::git::rev_parse_in(repo, &format!("refs/heads/{branch}"))?;
    fast_import(repo, |out| {
        let mut w = Writer {
            out,
            rng: Rng::new(seed),
            mark: 0,
            time: 1_900_000_000 + seed.wrapping_mul(1_000_000) % 1_000_000_000,
            tags: Vec::new(),
            depth: 0,
            moved_dirs: 0,
            most_files: 0,
            large_bytes: 1 << 20,
        };
        for i in 0..n {
            w.begin_commit(branch, &format!("Appended change {i} (seed {seed})\n"))?;
            if i == 0 {
                writeln!(w.out, "from {tip}")?;
            }
            let lines = 3 + w.rng.below(20);
            let content = Content::Text(w.text_lines(lines).into());
            w.set_file(&format!("appended/{seed}-{i}.txt"), &content)?;
            let log = Content::Text(format!("seed {seed} commit {i}\n").into_bytes().into());
            w.set_file("appended/LAST", &log)?;
        }
        Ok(())
    })?;
    crate::git::rev_parse_in(repo, &format!("refs/heads/{branch}"))
}

/// Every object id in `repo`, sorted.
pub fn list_objects(repo: &Path) -> io::Result<Vec<String>> {
    let out = crate::git::output(
        repo,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname)",
        ],
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Every ref name in `repo`, sorted.
pub fn list_refs(repo: &Path) -> io::Result<Vec<String>> {
    let out = crate::git::output(repo, &["for-each-ref", "--format=%(refname)"])?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The files of `repo`'s pack folder (`objects/pack`) named `pack-*.<ext>` (not
/// temporaries being written), sorted.
pub fn pack_files(repo: &Path, ext: &str) -> io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo.join("objects").join("pack"))? {
        let path = entry?.path();
        let named = path.file_name().and_then(|n| n.to_str());
        if named.is_some_and(|n| n.starts_with("pack-"))
            && path.extension().is_some_and(|x| x == ext)
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
