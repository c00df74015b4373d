//! Shared by the differential tests: run one request through our planner and through
//! `git upload-pack --stateless-rpc`, and compare what each gives the client.
#![allow(dead_code)] // Reason: each test binary uses part of the helpers.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gitcache_pack::{Options, Repository, plan};
use gitcache_protocol::request::{
    Capabilities, Command as V2Command, Fetch, Limits, Request, parse_request,
};
use gitcache_protocol::response::{FetchResponse, parse_fetch_response};
use gitcache_protocol::{ObjectFormat, ObjectId};
use gitcache_testkit::git::GitClient;
pub(crate) use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::repo::{self, RepoSpec};

/// A source repository and a scratch folder.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) src: PathBuf,
    pub(crate) format: ObjectFormat,
    pub(crate) client: GitClient,
}

impl Fixture {
    pub(crate) fn new(spec: RepoSpec) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.git");
        repo::generate(&src, &spec).unwrap();
        // ref-in-want only for upload-pack runs: git's own client breaks on it with --depth.
        for (k, v) in [
            ("uploadpack.allowFilter", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
        ] {
            git(&src, &["config", k, v]);
        }
        let format = if spec.object_format == "sha256" {
            ObjectFormat::Sha256
        } else {
            ObjectFormat::Sha1
        };
        Fixture {
            dir,
            src,
            format,
            client: GitClient::new().unwrap(),
        }
    }

    pub(crate) fn rev(&self, rev: &str) -> ObjectId {
        ObjectId::from_hex(git(&self.src, &["rev-parse", rev]).trim().as_bytes()).unwrap()
    }

    /// A bare client made by `git clone --bare <args>` from the source as it is now.
    pub(crate) fn clone_client(&self, name: &str, args: &[&str]) -> PathBuf {
        let path = self.dir.path().join(name);
        let url = format!("file://{}", self.src.display());
        let mut all = vec!["clone", "--quiet", "--bare"];
        all.extend_from_slice(args);
        all.push(&url);
        let path_str = path.to_str().unwrap().to_owned();
        all.push(&path_str);
        self.client
            .run(self.dir.path(), &all)
            .unwrap()
            .expect_success();
        path
    }

    /// An empty client of the right object format.
    pub(crate) fn empty_client(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let format = format!(
            "--object-format={}",
            if self.format == ObjectFormat::Sha256 {
                "sha256"
            } else {
                "sha1"
            }
        );
        git(
            self.dir.path(),
            &["init", "--quiet", "--bare", &format, path.to_str().unwrap()],
        );
        path
    }

    pub(crate) fn body(&self, fetch: Fetch) -> Vec<u8> {
        let request = Request {
            capabilities: Capabilities {
                agent: Some("git/test".into()),
                object_format: Some(self.format),
                ..Capabilities::default()
            },
            command: V2Command::Fetch(fetch),
        };
        let mut body = Vec::new();
        request.write_to(&mut body).unwrap();
        body
    }
}

pub(crate) fn upload_pack(src: &Path, body: &[u8]) -> Vec<u8> {
    let mut child = Command::new("git")
        .args([
            "-c",
            "uploadpack.allowRefInWant=true",
            "upload-pack",
            "--stateless-rpc",
        ])
        .arg(src)
        .env("GIT_PROTOCOL", "version=2")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git upload-pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub(crate) fn ours(src: &Path, body: &[u8]) -> Vec<u8> {
    let request = parse_request(body, Limits::default()).unwrap().unwrap();
    let V2Command::Fetch(fetch) = &request.command else {
        unreachable!()
    };
    let repo = Repository::open(src).unwrap();
    let plan = plan(
        &repo,
        fetch,
        request.capabilities.object_format(),
        &Options::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    plan.write_to(&mut out).unwrap();
    out
}

pub(crate) fn all_objects(repo: &Path) -> BTreeSet<String> {
    git(
        repo,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname)",
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Index `pack` into a copy of `client`; return the copy and the objects the pack added.
/// The response's shallow boundary is put in place first, as fetch-pack does.
pub(crate) fn apply(
    client: &Path,
    resp: &FetchResponse,
    label: &str,
    promisor: bool,
) -> (PathBuf, BTreeSet<String>) {
    let pack = resp.pack.as_deref().unwrap();
    let copy = client.with_file_name(format!(
        "{}-{label}",
        client.file_name().unwrap().to_str().unwrap()
    ));
    let _ = std::fs::remove_dir_all(&copy);
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(client)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    let before = all_objects(&copy);
    let shallow_file = copy.join("shallow");
    let mut shallow: BTreeSet<String> = std::fs::read_to_string(&shallow_file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    shallow.extend(resp.shallow.iter().map(|o| o.to_string()));
    for o in &resp.unshallow {
        shallow.remove(&o.to_string());
    }
    if shallow.is_empty() {
        let _ = std::fs::remove_file(&shallow_file);
    } else {
        std::fs::write(
            &shallow_file,
            shallow.iter().map(|s| format!("{s}\n")).collect::<String>(),
        )
        .unwrap();
    }
    if promisor {
        // A partial clone: objects its filtered pack leaves out are promised by "origin".
        git(&copy, &["config", "core.repositoryformatversion", "1"]);
        git(&copy, &["config", "extensions.partialClone", "origin"]);
        git(
            &copy,
            &["config", "remote.origin.url", "file:///nonexistent"],
        );
        git(&copy, &["config", "remote.origin.promisor", "true"]);
    }
    // As fetch-pack: a promisor pack is checked for broken objects, not for links it omits.
    let args = if promisor {
        vec![
            "index-pack",
            "--fsck-objects",
            "--promisor",
            "--fix-thin",
            "--stdin",
        ]
    } else {
        vec!["index-pack", "--strict", "--fix-thin", "--stdin"]
    };
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&copy)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pack).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{label}: index-pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = all_objects(&copy).difference(&before).cloned().collect();
    (copy, added)
}

/// One differential case.
pub(crate) struct Case<'a> {
    pub(crate) name: &'a str,
    pub(crate) fixture: &'a Fixture,
    pub(crate) client: PathBuf,
    pub(crate) fetch: Fetch,
}

pub(crate) fn run(case: Case<'_>) -> (FetchResponse, FetchResponse) {
    let Case {
        name,
        fixture,
        client,
        fetch,
    } = case;
    let filtered = fetch.filter.is_some();
    let wants = fetch.wants.clone();
    let body = fixture.body(fetch);
    let theirs = upload_pack(&fixture.src, &body);
    let mine = ours(&fixture.src, &body);
    let t = parse_fetch_response(&theirs, fixture.format)
        .unwrap_or_else(|e| panic!("{name}: git's response: {e}"));
    let m = parse_fetch_response(&mine, fixture.format)
        .unwrap_or_else(|e| panic!("{name}: our response: {e}"));
    assert_eq!(
        m.has_acknowledgments, t.has_acknowledgments,
        "{name}: acknowledgments section"
    );
    assert_eq!(m.acks, t.acks, "{name}: ACK lines");
    assert_eq!((m.nak, m.ready), (t.nak, t.ready), "{name}: NAK/ready");
    assert_eq!(m.wanted_refs, t.wanted_refs, "{name}: wanted-refs");
    assert_eq!(m.shallow, t.shallow, "{name}: shallow lines");
    assert_eq!(m.unshallow, t.unshallow, "{name}: unshallow lines");
    assert_eq!(m.pack.is_some(), t.pack.is_some(), "{name}: pack presence");
    if m.pack.is_some() && t.pack.is_some() {
        let (my_repo, my_added) = apply(&client, &m, "ours", filtered);
        let (_, their_added) = apply(&client, &t, "git", filtered);
        let missing: Vec<_> = their_added.difference(&my_added).collect();
        let extra: Vec<_> = my_added.difference(&their_added).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: objects differ: git adds {} we lack {missing:?}; we add {} git does not {extra:?}",
            their_added.len(),
            my_added.len()
        );
        // The client with our pack is whole.
        for (i, want) in wants.iter().enumerate() {
            git(
                &my_repo,
                &["update-ref", &format!("refs/want/{i}"), &want.to_string()],
            );
        }
        let fsck_args: &[&str] = if filtered {
            &["fsck", "--connectivity-only", "--no-progress"]
        } else {
            &["fsck", "--strict", "--no-progress"]
        };
        let out = fixture.client.run(&my_repo, fsck_args).unwrap();
        assert!(out.success(), "{name}: fsck after our pack: {out}");
    }
    (m, t)
}

pub(crate) fn fetch(wants: Vec<ObjectId>) -> Fetch {
    Fetch {
        wants,
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    }
}

/// The ids of a pack's index, in index order.
pub(crate) fn index_ids(idx: &Path, object_format: &str) -> Vec<ObjectId> {
    let listed = std::process::Command::new(gitcache_testkit::git::git_program())
        .arg("show-index")
        .arg(format!("--object-format={object_format}"))
        .stdin(std::fs::File::open(idx).unwrap())
        .output()
        .unwrap();
    String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| ObjectId::from_hex(l.split(' ').nth(1).unwrap().as_bytes()).unwrap())
        .collect()
}

pub(crate) fn refs_of(repo: &Path, pattern: &str) -> Vec<ObjectId> {
    git(repo, &["for-each-ref", "--format=%(objectname)", pattern])
        .lines()
        .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
        .collect()
}

pub(crate) fn shallow_of(repo: &Path) -> Vec<ObjectId> {
    std::fs::read_to_string(repo.join("shallow"))
        .unwrap_or_default()
        .lines()
        .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
        .collect()
}
