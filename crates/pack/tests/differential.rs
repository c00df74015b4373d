//! Differential tests: the same request body goes to our planner and to
//! `git upload-pack --stateless-rpc` on the same repository.
//!
//! For every case:
//! - `acknowledgments`, `wanted-refs` and `shallow-info` equal git's, line for line;
//! - our pack passes `git index-pack --strict` (with `--fix-thin`) in a repository holding
//!   exactly what the client has;
//! - the objects our pack adds to the client equal the objects git's pack adds;
//! - the client, with our pack and the new shallow boundary, passes `git fsck`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::filter::Filter;
use gitcache_protocol::request::{
    Capabilities, Command as V2Command, Fetch, Limits, Request, parse_request,
};
use gitcache_protocol::response::{FetchResponse, parse_fetch_response};
use gitcache_protocol::{ObjectFormat, ObjectId};
use gitcache_testkit::git::GitClient;
use gitcache_testkit::repo::{self, RepoSpec};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A source repository and a scratch folder.
struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    format: ObjectFormat,
    client: GitClient,
}

impl Fixture {
    fn new(spec: RepoSpec) -> Fixture {
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

    fn rev(&self, rev: &str) -> ObjectId {
        ObjectId::from_hex(git(&self.src, &["rev-parse", rev]).trim().as_bytes()).unwrap()
    }

    /// A bare client made by `git clone --bare <args>` from the source as it is now.
    fn clone_client(&self, name: &str, args: &[&str]) -> PathBuf {
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
    fn empty_client(&self, name: &str) -> PathBuf {
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

    fn body(&self, fetch: Fetch) -> Vec<u8> {
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

fn upload_pack(src: &Path, body: &[u8]) -> Vec<u8> {
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

fn ours(src: &Path, body: &[u8]) -> Vec<u8> {
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

fn all_objects(repo: &Path) -> BTreeSet<String> {
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
fn apply(
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
struct Case<'a> {
    name: &'a str,
    fixture: &'a Fixture,
    client: PathBuf,
    fetch: Fetch,
}

fn run(case: Case<'_>) -> (FetchResponse, FetchResponse) {
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

fn fetch(wants: Vec<ObjectId>) -> Fetch {
    Fetch {
        wants,
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    }
}

fn refs_of(repo: &Path, pattern: &str) -> Vec<ObjectId> {
    git(repo, &["for-each-ref", "--format=%(objectname)", pattern])
        .lines()
        .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
        .collect()
}

fn shallow_of(repo: &Path) -> Vec<ObjectId> {
    std::fs::read_to_string(repo.join("shallow"))
        .unwrap_or_default()
        .lines()
        .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
        .collect()
}

fn clone_cases(spec: RepoSpec) {
    let fx = Fixture::new(spec);
    let all_refs = refs_of(&fx.src, "refs/");
    let main = fx.rev("refs/heads/main");
    for (name, thin, ofs, tags) in [
        ("full", true, true, false),
        ("no-ofs", false, false, false),
        ("include-tag", true, true, true),
    ] {
        let mut f = fetch(all_refs.clone());
        (f.thin_pack, f.ofs_delta, f.include_tag) = (thin, ofs, tags);
        run(Case {
            name,
            fixture: &fx,
            client: fx.empty_client(&format!("c-{name}")),
            fetch: f,
        });
    }
    let mut single = fetch(vec![main]);
    single.include_tag = true;
    run(Case {
        name: "single-branch",
        fixture: &fx,
        client: fx.empty_client("c-single"),
        fetch: single,
    });
    for depth in [1, 3] {
        let mut f = fetch(vec![main]);
        f.deepen = Some(depth);
        f.include_tag = true;
        let (m, _) = run(Case {
            name: "depth",
            fixture: &fx,
            client: fx.empty_client(&format!("c-depth{depth}")),
            fetch: f,
        });
        assert!(!m.shallow.is_empty());
    }
    let mut all_depth = fetch(all_refs.clone());
    all_depth.deepen = Some(2);
    run(Case {
        name: "depth-2-all-refs",
        fixture: &fx,
        client: fx.empty_client("c-depth-all"),
        fetch: all_depth,
    });
}

#[test]
fn clones_sha1() {
    clone_cases(RepoSpec::small(21));
}

#[test]
fn clones_sha256() {
    clone_cases(
        RepoSpec {
            commits: 40,
            ..RepoSpec::small(22)
        }
        .sha256(),
    );
}

#[test]
fn shallow_since_and_not() {
    let fx = Fixture::new(RepoSpec::small(23));
    let main = fx.rev("refs/heads/main");
    let since: u64 = git(&fx.src, &["log", "-1", "--format=%ct", "main~10"])
        .trim()
        .parse()
        .unwrap();
    let mut f = fetch(vec![main]);
    f.deepen_since = Some(since);
    run(Case {
        name: "deepen-since",
        fixture: &fx,
        client: fx.empty_client("since"),
        fetch: f,
    });
    let mut f = fetch(vec![main]);
    f.deepen_not = vec!["v1.0".into()];
    run(Case {
        name: "deepen-not",
        fixture: &fx,
        client: fx.empty_client("not"),
        fetch: f,
    });
    let mut f = fetch(vec![main]);
    f.deepen_not = vec!["refs/tags/v3.0".into(), "light-4".into()];
    run(Case {
        name: "deepen-not-two",
        fixture: &fx,
        client: fx.empty_client("not2"),
        fetch: f,
    });
}

#[test]
fn deepening_a_shallow_clone() {
    let fx = Fixture::new(RepoSpec::small(24));
    let main = fx.rev("refs/heads/main");
    let client = fx.clone_client("shallow", &["--depth=2", "--single-branch"]);
    let client_shallow = shallow_of(&client);
    assert!(!client_shallow.is_empty());

    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen, f.deepen_relative) =
        (vec![main], client_shallow.clone(), Some(3), true);
    run(Case {
        name: "deepen-relative",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });

    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen) = (vec![main], client_shallow.clone(), Some(5));
    run(Case {
        name: "deepen-absolute",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });

    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen) = (vec![main], client_shallow.clone(), Some(0x7fff_ffff));
    let (m, _) = run(Case {
        name: "unshallow",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });
    assert_eq!(m.unshallow.len(), client_shallow.len());

    // A shallow client fetching new commits without deepening.
    let new_tip = repo::append_commits(&fx.src, "main", 4, 3).unwrap();
    let new_tip = ObjectId::from_hex(new_tip.as_bytes()).unwrap();
    let mut f = fetch(vec![new_tip]);
    (f.haves, f.shallows, f.thin_pack) = (vec![main], client_shallow, true);
    run(Case {
        name: "shallow-incremental",
        fixture: &fx,
        client,
        fetch: f,
    });
}

#[test]
fn incremental_fetches_and_negotiation() {
    let fx = Fixture::new(RepoSpec::small(25));
    let old_main = fx.rev("refs/heads/main");
    let far = fx.clone_client("far", &[]);
    repo::append_commits(&fx.src, "main", 50, 4).unwrap();
    let mid_main = fx.rev("refs/heads/main");
    let near = fx.clone_client("near", &[]);
    repo::append_commits(&fx.src, "main", 3, 5).unwrap();
    let new_main = fx.rev("refs/heads/main");

    for (name, client, have, thin) in [
        ("near-thin", &near, mid_main, true),
        ("near-fat", &near, mid_main, false),
        ("far-thin", &far, old_main, true),
        ("far-fat", &far, old_main, false),
    ] {
        let mut f = fetch(vec![new_main]);
        f.haves = refs_of(client, "refs/heads/");
        assert!(f.haves.contains(&have));
        f.thin_pack = thin;
        run(Case {
            name,
            fixture: &fx,
            client: client.clone(),
            fetch: f,
        });
    }

    // Haves the server lacks are not acknowledged; the known one is.
    let unknown = ObjectId::from_hex(b"0123456789012345678901234567890123456789").unwrap();
    let mut f = fetch(vec![new_main]);
    f.haves = vec![unknown, mid_main];
    f.thin_pack = true;
    run(Case {
        name: "unknown-have-done",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });

    // Negotiation rounds without done: not ready with only unknown haves, ready with a common one.
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves) = (false, vec![unknown]);
    let (m, _) = run(Case {
        name: "negotiate-unknown",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });
    assert!(m.nak && !m.ready && m.pack.is_none());
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves) = (false, vec![unknown, mid_main]);
    let (m, _) = run(Case {
        name: "negotiate-ready",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });
    assert!(m.ready && m.pack.is_some());
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves, f.wait_for_done) = (false, vec![mid_main], true);
    let (m, _) = run(Case {
        name: "wait-for-done",
        fixture: &fx,
        client: near,
        fetch: f,
    });
    assert!(!m.ready && m.pack.is_none());
}

#[test]
fn filters_tags_and_want_ref() {
    let fx = Fixture::new(RepoSpec::small(26));
    let all_refs = refs_of(&fx.src, "refs/");
    let main = fx.rev("refs/heads/main");
    let filters = [
        Filter::BlobNone,
        Filter::BlobLimit(1000),
        Filter::Tree(0),
        Filter::Tree(1),
        Filter::Tree(2),
        Filter::Combine(vec![Filter::BlobLimit(5000), Filter::Tree(3)]),
        Filter::ObjectType(gitcache_protocol::filter::ObjectType::Blob),
        Filter::ObjectType(gitcache_protocol::filter::ObjectType::Tree),
    ];
    for (i, filter) in filters.into_iter().enumerate() {
        let name = format!("filter {filter}");
        let mut f = fetch(all_refs.clone());
        f.filter = Some(filter);
        run(Case {
            name: &name,
            fixture: &fx,
            client: fx.empty_client(&format!("filter{i}")),
            fetch: f,
        });
    }
    // A blob wanted by id under blob:none (what a partial clone's lazy fetch sends) is sent.
    let blob = ObjectId::from_hex(
        git(&fx.src, &["rev-parse", "main:scripts/build.sh"])
            .trim()
            .as_bytes(),
    )
    .unwrap();
    let mut f = fetch(vec![blob]);
    f.filter = Some(Filter::BlobNone);
    run(Case {
        name: "lazy-blob",
        fixture: &fx,
        client: fx.empty_client("lazy"),
        fetch: f,
    });

    let mut f = fetch(Vec::new());
    f.want_refs = [
        "refs/heads/main",
        "refs/tags/v1.0",
        "refs/heads/feature/1",
        "refs/heads/feature/2",
        "refs/tags/light-2",
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let (m, _) = run(Case {
        name: "want-ref",
        fixture: &fx,
        client: fx.empty_client("wantref"),
        fetch: f,
    });
    assert_eq!(m.wanted_refs.len(), 5);

    // include-tag over an incremental fetch brings the new annotated tag (and a tag of a tag).
    let client = fx.clone_client("tagged", &["--no-tags", "--single-branch"]);
    let mut f = fetch(vec![main]);
    f.include_tag = true;
    f.haves = refs_of(&client, "refs/heads/");
    run(Case {
        name: "include-tag-incremental",
        fixture: &fx,
        client,
        fetch: f,
    });
}

#[test]
fn errors_come_with_gits_wording() {
    let fx = Fixture::new(RepoSpec::tiny(27));
    let repo = Repository::open(&fx.src).unwrap();
    let missing = ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
    let err = plan(
        &repo,
        &fetch(vec![missing]),
        ObjectFormat::Sha1,
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.wire_message(),
        format!("upload-pack: not our ref {missing}")
    );
    assert!(err.is_client_error());
    let mut f = fetch(Vec::new());
    f.want_refs = vec!["refs/heads/nope".into()];
    let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
    assert_eq!(err.wire_message(), "unknown ref refs/heads/nope");
    let mut f = fetch(Vec::new());
    f.want_refs = vec!["refs/heads/main".into(), "refs/heads/main".into()];
    let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
    assert_eq!(err.wire_message(), "duplicate want-ref refs/heads/main");
    let err = plan(
        &repo,
        &fetch(vec![fx.rev("main")]),
        ObjectFormat::Sha256,
        &Options::default(),
    )
    .unwrap_err();
    assert!(err.wire_message().starts_with("mismatched object format"));
    let mut f = fetch(vec![fx.rev("main")]);
    f.filter = Some(Filter::SparseOid("main:sparse".into()));
    let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
    assert_eq!(err.wire_message(), "filter 'sparse:oid' not supported");
    // No wants: git answers nothing.
    assert!(matches!(
        plan(
            &repo,
            &fetch(Vec::new()),
            ObjectFormat::Sha1,
            &Options::default()
        )
        .unwrap(),
        Plan::Nothing
    ));
    assert!(upload_pack(&fx.src, &fx.body(fetch(Vec::new()))).is_empty());
}
