//! Mirrors refreshed from a real upstream (C git's http-backend through the testkit).

use std::path::Path;
use std::time::Duration;

use gitcache_mirror::mirror::Mirror;
use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};
use gitcache_upstream::Upstream as Client;
use gix_hash::{Kind, ObjectId};

fn refs(repo: &Path) -> String {
    git(repo, &["for-each-ref", "--format=%(objectname) %(refname)"])
}

/// A real upstream serving `acme/widgets`, generated from `spec`, to anyone; and its path.
fn public_repo(spec: RepoSpec) -> (Upstream, std::path::PathBuf) {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    repo::generate(&source, &spec).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    (upstream, source)
}

/// [`public_repo`], an empty mirror in a folder of its own (kept while the folder is), and
/// a client of the repository without a credential.
fn with_empty_mirror(
    spec: RepoSpec,
) -> (
    Upstream,
    std::path::PathBuf,
    tempfile::TempDir,
    Mirror,
    Client,
) {
    let (upstream, source) = public_repo(spec);
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/widgets", None);
    (upstream, source, dir, mirror, up)
}

fn client(upstream: &Upstream, name: &str, auth: Option<&str>) -> Client {
    Client::new(
        &upstream.repo_url(name),
        auth.map(str::to_owned),
        Duration::from_secs(30),
    )
    .unwrap()
}

/// A client of `acme/widgets` without a credential, silent at most `idle`.
fn silent_at_most(upstream: &Upstream, idle: Duration) -> Client {
    Client::new(&upstream.repo_url("acme/widgets"), None, idle).unwrap()
}

/// A client of `acme/widgets` that wants at least 16 KiB every 500 ms of an answer (the
/// first window `first_window` long, if given), silent at most 5 s.
fn rated_client(upstream: &Upstream, first_window: Option<Duration>) -> Client {
    Client::new(
        &upstream.repo_url("acme/widgets"),
        None,
        Duration::from_secs(5),
    )
    .unwrap()
    .with_limits(gitcache_upstream::Limits {
        min_rate: Some((16 << 10, Duration::from_millis(500))),
        first_window,
        ..Default::default()
    })
}

/// A small repository (`RepoSpec::small(seed)`) served by `upstream` as `name`, and a SHA-1
/// mirror of it refreshed once in a temporary folder: the source, the folder, the mirror and
/// its client.
async fn refreshed(
    upstream: &Upstream,
    name: &str,
    seed: u64,
) -> (std::path::PathBuf, tempfile::TempDir, Mirror, Client) {
    let source = upstream.repo_path(name);
    repo::generate(&source, &RepoSpec::small(seed)).unwrap();
    upstream.adopt_repo(name, Access::Public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(upstream, name, None);
    mirror.refresh(&up, &[]).await.unwrap();
    (source, dir, mirror, up)
}

/// The object id `hex` names (a line of `git` output, its newline aside).
fn oid(hex: &str) -> gix_hash::ObjectId {
    gix_hash::ObjectId::from_hex(hex.trim().as_bytes()).unwrap()
}

fn pack_files(mirror: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(mirror.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_its_upstream() {
    let (upstream, source, dir, mirror, up) = with_empty_mirror(RepoSpec::small(71));

    let first = mirror.refresh(&up, &[]).await.unwrap();
    assert!(first.changed && first.fetched_objects > 0);
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    // The first pack is marked with the tips it was fetched for, and rightly so: the checked
    // marking finds the same pack to be exactly their closure.
    let marked: Vec<String> = pack_files(mirror.git_dir())
        .into_iter()
        .filter(|n| n.ends_with(".tips"))
        .collect();
    assert_eq!(marked.len(), 1, "{marked:?}");
    let tips: Vec<gix_hash::ObjectId> = git(
        mirror.git_dir(),
        &["for-each-ref", "--format=%(objectname)"],
    )
    .lines()
    .map(|l| gix_hash::ObjectId::from_hex(l.as_bytes()).unwrap())
    .collect();
    let checked = gitcache_pack::Repository::open(mirror.git_dir())
        .unwrap()
        .mark_pack_tips(&tips)
        .unwrap()
        .expect("one pack is the closure of the refs");
    assert!(
        checked
            .to_string_lossy()
            .ends_with(&marked[0].replace(".tips", ".pack"))
    );
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    assert_eq!(
        git(mirror.git_dir(), &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );

    // Nothing changed upstream: refs are asked for, nothing is fetched, and neither
    // `packed-refs` nor `HEAD` is written again.
    let inode = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(mirror.git_dir().join(name))
            .unwrap()
            .ino()
    };
    let (packed, head) = (inode("packed-refs"), inode("HEAD"));
    upstream.reset_counts();
    let same = mirror.refresh(&up, &[]).await.unwrap();
    assert!(!same.changed);
    assert_eq!(same.fetched_objects, 0);
    assert_eq!(upstream.counts().fetch, 0);
    assert_eq!((inode("packed-refs"), inode("HEAD")), (packed, head));

    // New commits, a new annotated tag, a deleted branch: one fetch, refs replaced, prune.
    let tip = repo::append_commits(&source, "main", 6, 2).unwrap();
    git(&source, &["tag", "-a", "-m", "r", "v-new", &tip]);
    git(&source, &["branch", "-D", "feature/1"]);
    upstream.reset_counts();
    let next = mirror.refresh(&up, &[]).await.unwrap();
    assert!(next.changed && next.fetched_objects > 0);
    assert_eq!(upstream.counts().fetch, 1);
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    assert!(!refs(mirror.git_dir()).contains("refs/heads/feature/1"));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    assert_ne!(inode("packed-refs"), packed);
    assert_eq!(inode("HEAD"), head);

    // The upstream's default branch changes: the mirror's `HEAD` follows.
    git(&source, &["symbolic-ref", "HEAD", "refs/heads/feature/2"]);
    let moved = mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(moved.fetched_objects, 0);
    assert_eq!(
        git(mirror.git_dir(), &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/feature/2"
    );

    // The mirror serves: a real clone from it passes fsck.
    let clone_dir = dir.path().join("clone");
    let url = format!("file://{}", mirror.git_dir().display());
    git(
        dir.path(),
        &["clone", "-q", &url, clone_dir.to_str().unwrap()],
    );
    git(&clone_dir, &["fsck", "--strict", "--no-progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_upstream_needs_the_token_and_refusal_changes_nothing() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/secret"), &RepoSpec::tiny(72)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["t0k3n"]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let before = pack_files(mirror.git_dir());

    let err = mirror
        .refresh(&client(&upstream, "acme/secret", None), &[])
        .await
        .unwrap_err();
    assert!(err.is_access_denied(), "{err}");
    let err = mirror
        .refresh(&client(&upstream, "acme/secret", Some("Bearer wrong")), &[])
        .await
        .unwrap_err();
    assert!(err.is_access_denied(), "{err}");
    assert_eq!(pack_files(mirror.git_dir()), before);
    assert!(refs(mirror.git_dir()).is_empty());

    mirror
        .refresh(&client(&upstream, "acme/secret", Some("Bearer t0k3n")), &[])
        .await
        .unwrap();
    assert_eq!(
        refs(mirror.git_dir()),
        refs(&upstream.repo_path("acme/secret"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_leave_the_mirror_whole() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/flaky");
    repo::generate(&source, &RepoSpec::small(73)).unwrap();
    upstream.adopt_repo("acme/flaky", Access::Public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/flaky", None);
    mirror.refresh(&up, &[]).await.unwrap();
    repo::append_commits(&source, "main", 3, 4).unwrap();
    let (refs_before, packs_before) = (refs(mirror.git_dir()), pack_files(mirror.git_dir()));

    for (fault, kind) in [
        (Fault::Status(500), Some(RequestKind::Fetch)),
        // The incremental response is small: cut inside its pack.
        (Fault::CutAfter(300), Some(RequestKind::Fetch)),
        (Fault::Garbage, Some(RequestKind::Fetch)),
        (Fault::Status(503), Some(RequestKind::LsRefs)),
    ] {
        upstream.inject(fault.clone(), 1, kind);
        let err = mirror.refresh(&up, &[]).await.unwrap_err();
        assert_eq!(refs(mirror.git_dir()), refs_before, "{fault:?}: {err}");
        assert_eq!(
            pack_files(mirror.git_dir()),
            packs_before,
            "{fault:?}: nothing left behind"
        );
        git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    }
    let slow = Client::new(
        &upstream.repo_url("acme/flaky"),
        None,
        Duration::from_millis(300),
    )
    .unwrap();
    upstream.inject(
        Fault::Delay(Duration::from_secs(2)),
        1,
        Some(RequestKind::Fetch),
    );
    let err = mirror.refresh(&slow, &[]).await.unwrap_err();
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert_eq!(refs(mirror.git_dir()), refs_before);

    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_upstream_and_mismatched_formats() {
    let upstream = Upstream::start().unwrap();
    repo::generate(
        &upstream.repo_path("acme/modern"),
        &RepoSpec::small(74).sha256(),
    )
    .unwrap();
    upstream.adopt_repo("acme/modern", Access::Public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = Mirror::create(dir.path().join("sha1.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/modern", None);
    let err = wrong.refresh(&up, &[]).await.unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha256).unwrap();
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(
        refs(mirror.git_dir()),
        refs(&upstream.repo_path("acme/modern"))
    );
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_upstream_is_followed() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/rewritten");
    repo::generate(&source, &RepoSpec::small(75)).unwrap();
    upstream
        .adopt_repo("acme/rewritten", Access::Public)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/rewritten", None);
    repo::append_commits(&source, "main", 5, 1).unwrap();
    mirror.refresh(&up, &[]).await.unwrap();

    // Rewrite main: drop the last five commits and build others on the older base.
    git(&source, &["update-ref", "refs/heads/main", "main~5"]);
    let rewritten = repo::append_commits(&source, "main", 3, 2).unwrap();
    // And move a tag backwards.
    git(&source, &["tag", "-f", "v1.0", "main~6"]);
    let refreshed = mirror.refresh(&up, &[]).await.unwrap();
    assert!(refreshed.changed);
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    assert_eq!(
        git(mirror.git_dir(), &["rev-parse", "main"]).trim(),
        rewritten
    );
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified() {
    let upstream = Upstream::start_tls().unwrap();
    repo::generate(&upstream.repo_path("acme/secure"), &RepoSpec::small(76)).unwrap();
    upstream.adopt_repo("acme/secure", Access::Public).unwrap();
    let url = upstream.repo_url("acme/secure");
    assert!(url.starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();

    // The system's roots do not know this certificate: refused, mirror untouched.
    let untrusted = Client::new(&url, None, Duration::from_secs(30)).unwrap();
    let err = mirror.refresh(&untrusted, &[]).await.unwrap_err();
    assert!(err.to_string().contains("connection failed"), "{err}");
    assert!(refs(mirror.git_dir()).is_empty());

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(upstream.certificate_der().unwrap().to_vec().into())
        .unwrap();
    let trusted = Client::new(&url, None, Duration::from_secs(30))
        .unwrap()
        .with_tls(gitcache_upstream::tls_config(roots).unwrap());
    mirror.refresh(&trusted, &[]).await.unwrap();
    assert_eq!(
        refs(mirror.git_dir()),
        refs(&upstream.repo_path("acme/secure"))
    );
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Issue 12: what a hostile upstream lists never reaches `packed-refs` or `HEAD`: a ref no
/// git would write is left out (as git leaves it out, with a warning), the rest mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_no_git_would_write_are_left_out() {
    let (upstream, source) = public_repo(RepoSpec::tiny(1221));
    let tip = git(&source, &["rev-parse", "main"]).trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/widgets", None);
    mirror.refresh(&up, &[]).await.unwrap();
    let before = std::fs::read(mirror.git_dir().join("packed-refs")).unwrap();
    let head = std::fs::read(mirror.git_dir().join("HEAD")).unwrap();

    for line in [
        format!("{tip} refs/heads/evil\nline"),
        format!("{tip} refs/heads/a..b"),
        format!("{tip} refs/heads/x.lock"),
        format!("{tip} refs/notes/unasked"),
        format!("{tip} HEAD symref-target:../../config"),
        format!("{tip} HEAD symref-target:HEAD"),
        // Unborn lines, not asked for: none is taken.
        "unborn HEAD symref-target:refs/heads/unborn".to_owned(),
        "unborn refs/heads/unborn".to_owned(),
    ] {
        upstream.inject(
            Fault::ExtraLine(line.clone().into_bytes()),
            1,
            Some(RequestKind::LsRefs),
        );
        mirror.refresh(&up, &[]).await.unwrap();
        assert_eq!(
            std::fs::read(mirror.git_dir().join("packed-refs")).unwrap(),
            before,
            "{line:?}"
        );
        assert_eq!(std::fs::read(mirror.git_dir().join("HEAD")).unwrap(), head);
    }
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    // A listing whose `HEAD` is unborn, not asked for: the mirror's `HEAD` stays.
    let mut listing = Vec::new();
    for line in [
        "unborn HEAD symref-target:refs/heads/unborn\n".to_owned(),
        format!("{tip} refs/heads/main\n"),
    ] {
        listing.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
    }
    listing.extend_from_slice(b"0000");
    upstream.inject(Fault::Replay(listing), 1, Some(RequestKind::LsRefs));
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(std::fs::read(mirror.git_dir().join("HEAD")).unwrap(), head);

    // Many more left out than 64: each is reported, so that listings showing them alike are
    // not news.
    let mut listing = Vec::new();
    let lines = std::iter::once(format!("{tip} refs/heads/main\n"))
        .chain((0..1000).map(|i| format!("{tip} refs/heads/odd{i}..name\n")));
    for line in lines {
        listing.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
    }
    listing.extend_from_slice(b"0000");
    upstream.inject(Fault::Replay(listing), 1, Some(RequestKind::LsRefs));
    let done = mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(done.left_out.unwrap().len(), 1000);

    // The upstream's `HEAD` names a ref outside the prefixes mirrored: the mirror's stays as
    // it was, naming a ref it has.
    git(&source, &["update-ref", "refs/notes/elsewhere", &tip]);
    git(&source, &["symbolic-ref", "HEAD", "refs/notes/elsewhere"]);
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(std::fs::read(mirror.git_dir().join("HEAD")).unwrap(), head);
    git(&source, &["symbolic-ref", "HEAD", "refs/heads/main"]);

    // A lying peeled value is not written: packed-refs says what the objects say.
    let tags: Vec<String> = git(&source, &["tag"]).lines().map(str::to_owned).collect();
    let annotated = tags
        .iter()
        .find(|t| git(&source, &["cat-file", "-t", t]).trim() == "tag")
        .expect("an annotated tag");
    let tag_oid = git(&source, &["rev-parse", annotated]).trim().to_owned();
    let lie = "1111111111111111111111111111111111111111";
    upstream.inject(
        Fault::ExtraLine(format!("{tag_oid} refs/tags/lying peeled:{lie}").into_bytes()),
        1,
        Some(RequestKind::LsRefs),
    );
    mirror.refresh(&up, &[]).await.unwrap();
    let packed = std::fs::read_to_string(mirror.git_dir().join("packed-refs")).unwrap();
    assert!(!packed.contains(lie), "{packed}");
    let peeled = git(&source, &["rev-parse", &format!("{annotated}^{{}}")]);
    assert!(
        packed.contains(&format!("{tag_oid} refs/tags/lying\n^{}", peeled.trim())),
        "{packed}"
    );
}

/// A chain of annotated tags deeper than gitcache peels (anyone who may push a tag can make
/// one): that ref is left out, the others are written, and the refresh does not fail (it
/// would again at every refresh, the mirror stuck at its old refs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_chain_too_deep_to_peel_leaves_out_its_ref_only() {
    let (_upstream, source, _dir, mirror, up) = with_empty_mirror(RepoSpec::tiny(1222));
    mirror.refresh(&up, &[]).await.unwrap();
    let mut below = "main".to_owned();
    for n in 1..=66 {
        let name = format!("deep-{n}");
        git(&source, &["tag", "-a", "-m", &name, &name, &below]);
        below = name;
    }
    // The upstream's `HEAD` names it too: the mirror's keeps what it named.
    let head = std::fs::read(mirror.git_dir().join("HEAD")).unwrap();
    git(&source, &["symbolic-ref", "HEAD", "refs/tags/deep-66"]);
    // The refresh that fetches the chain, and the ones after it (the chain then on disk,
    // its ref still listed and not written).
    for seed in [1223, 1224, 1225] {
        let moved = repo::append_commits(&source, "main", 1, seed).unwrap();
        let done = mirror.refresh(&up, &[]).await.unwrap();
        // The tags past the depth peeled, said with the values listed, so that listings
        // showing them alike are not news.
        let left_out: Vec<(String, ObjectId, Option<String>)> = done
            .left_out
            .unwrap()
            .into_iter()
            .map(|r| {
                let target = r.symref_target.map(|t| t.to_string());
                (r.name.to_string(), r.oid.unwrap(), target)
            })
            .collect();
        let mut expected: Vec<(String, ObjectId, Option<String>)> = (64..=66)
            .map(|n| {
                let name = format!("refs/tags/deep-{n}");
                let oid = git(&source, &["rev-parse", &name]);
                (
                    name,
                    ObjectId::from_hex(oid.trim().as_bytes()).unwrap(),
                    None,
                )
            })
            .collect();
        // And `HEAD`, which names the last of them: not pointed at it, left out as listed.
        let deepest = expected[2].1;
        expected.push(("HEAD".into(), deepest, Some("refs/tags/deep-66".into())));
        assert_eq!(left_out, expected);
        let packed = std::fs::read_to_string(mirror.git_dir().join("packed-refs")).unwrap();
        assert!(
            packed.contains(&format!("{moved} refs/heads/main\n")),
            "{packed}"
        );
        assert!(packed.contains(" refs/tags/deep-1\n"), "{packed}");
        assert!(!packed.contains(" refs/tags/deep-66\n"), "{packed}");
        assert_eq!(std::fs::read(mirror.git_dir().join("HEAD")).unwrap(), head);
    }
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Objects read as git reads them, not as a line-by-line scan would: a commit with
/// `parent` and `tree` lines past its headers (which `fsck` lets through, and git ignores),
/// a tree entry of mode `40755` (a directory to git), a tag with a second `object` line.
/// The mirror takes them in, holds every object git's walk reaches, and keeps them through
/// a consolidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_read_as_git_reads_them() {
    let (_upstream, source, _dir, mirror, up) = with_empty_mirror(RepoSpec::tiny(1226));
    mirror.refresh(&up, &[]).await.unwrap();
    let hash_object = |kind: &str, data: &[u8]| {
        let out = gitcache_testkit::git::git_with_input(
            &source,
            &["hash-object", "-t", kind, "-w", "--literally", "--stdin"],
            data,
        );
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    let main = git(&source, &["rev-parse", "main"]).trim().to_owned();
    let root = git(&source, &["rev-parse", "main^{tree}"])
        .trim()
        .to_owned();
    let bogus = "1".repeat(40);
    let signature = "A U Thor <a@example.com> 1700000000 +0000";
    // A directory written as `40755`, holding a blob no other tree names.
    let blob = hash_object("blob", b"only under the odd directory\n");
    let mut inner = b"100644 file\0".to_vec();
    inner.extend_from_slice(ObjectId::from_hex(blob.as_bytes()).unwrap().as_bytes());
    let inner = hash_object("tree", &inner);
    let mut outer = b"40755 odd\0".to_vec();
    outer.extend_from_slice(ObjectId::from_hex(inner.as_bytes()).unwrap().as_bytes());
    let outer = hash_object("tree", &outer);
    let commit = format!(
        "tree {outer}\nparent {main}\nauthor {signature}\ncommitter {signature}\n\
         parent {bogus}\ntree {root}\n\nheaders past the first ones\n"
    );
    let commit = hash_object("commit", commit.as_bytes());
    git(&source, &["update-ref", "refs/heads/main", &commit]);
    let tag = format!(
        "object {commit}\ntype commit\ntag odd\ntagger {signature}\nobject {bogus}\n\nodd\n"
    );
    let tag = hash_object("tag", tag.as_bytes());
    git(&source, &["update-ref", "refs/tags/odd", &tag]);

    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    let objects = |repo: &Path| {
        let mut listed: Vec<String> = git(repo, &["rev-list", "--objects", "--all"])
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        listed.sort();
        listed
    };
    assert!(objects(&source).contains(&blob));
    assert_eq!(objects(mirror.git_dir()), objects(&source));
    let packed = std::fs::read_to_string(mirror.git_dir().join("packed-refs")).unwrap();
    assert!(
        packed.contains(&format!("^{commit}\n")),
        "peeled as git peels: {packed}"
    );
    let done = mirror.consolidate().unwrap();
    assert_eq!((done.packs_before, done.pack.is_some()), (2, true));
    assert_eq!(objects(mirror.git_dir()), objects(&source));
    git(
        mirror.git_dir(),
        &["fsck", "--no-progress", "--connectivity-only"],
    );
}

/// Issue 12: a first pack that lacks history its tips reach (here: a shallow upstream that
/// does not say so) is not published, and the mirror stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_missing_history_is_not_published() {
    let (upstream, source) = public_repo(RepoSpec::small(1222));
    // The upstream pretends main~3 has no parents.
    let graft = git(&source, &["rev-parse", "main~3"]);
    std::fs::write(source.join("shallow"), graft).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/widgets", None);

    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
    assert!(
        pack_files(mirror.git_dir()).is_empty(),
        "the pack is gone: {:?}",
        pack_files(mirror.git_dir())
    );
    assert!(refs(mirror.git_dir()).is_empty(), "no refs published");
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    // The upstream repaired: the next refresh succeeds.
    std::fs::remove_file(source.join("shallow")).unwrap();
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Issue 12: answers are read within bounds; an upstream that never stops sending is cut
/// off with an error, not read into memory or onto the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_answers_are_cut_off() {
    let (upstream, source) = public_repo(RepoSpec::tiny(1223));
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/widgets", None).with_limits(gitcache_upstream::Limits {
        max_pack_bytes: 4 << 20,
        ..Default::default()
    });
    for kind in [
        RequestKind::InfoRefs,
        RequestKind::LsRefs,
        RequestKind::Fetch,
    ] {
        upstream.inject(Fault::Endless, 1, Some(kind));
        let err = mirror.refresh(&up, &[]).await.unwrap_err().to_string();
        // The pack and the listing are read as they arrive: filler is refused at its first
        // line.
        let expected = match kind {
            RequestKind::Fetch => "unexpected line",
            RequestKind::LsRefs => "malformed ls-refs line 'xxxxxxxx",
            _ => "exceeds",
        };
        assert!(err.contains(expected), "{kind:?}: {err}");
        assert!(err.len() < 700, "the line is not shown whole: {err}");
        upstream.clear_faults();
    }
    // A listing that reads well but never ends is cut off at the most refs taken.
    upstream.inject(Fault::EndlessRefs, 1, Some(RequestKind::LsRefs));
    let err = mirror.refresh(&up, &[]).await.unwrap_err().to_string();
    assert!(err.contains("lists more than 1000000 refs"), "{err}");
    upstream.clear_faults();
    // A pack that reads well but never ends is cut off at the limit.
    upstream.inject(Fault::EndlessPack, 1, Some(RequestKind::Fetch));
    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    upstream.clear_faults();
    assert!(pack_files(mirror.git_dir()).is_empty());
    assert!(refs(mirror.git_dir()).is_empty());
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
}

/// A listing that trickles, a byte now and then within the idle timeout, is cut off at the
/// listing timeout, not held for the transfer timeout's hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_listing_is_cut_off_at_the_listing_timeout() {
    let (upstream, _source) = public_repo(RepoSpec::tiny(1224));
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/widgets", None).with_limits(gitcache_upstream::Limits {
        listing_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    for kind in [RequestKind::InfoRefs, RequestKind::LsRefs] {
        upstream.inject(
            Fault::Trickle {
                chunk: 1,
                every: Duration::from_millis(200),
            },
            1,
            Some(kind),
        );
        let err = mirror.refresh(&up, &[]).await.unwrap_err();
        assert!(err.to_string().contains("within 1s"), "{kind:?}: {err}");
        upstream.clear_faults();
    }
    assert!(refs(mirror.git_dir()).is_empty());
    mirror.refresh(&up, &[]).await.unwrap();
    assert!(!refs(mirror.git_dir()).is_empty());
}

/// An error answer that trickles, a byte now and then within the idle timeout, is read for
/// its message within one idle timeout: the refresh fails with the upstream's status, not
/// held for the transfer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_error_answer_is_read_within_an_idle_timeout() {
    let (upstream, _source, _dir, mirror, _) = with_empty_mirror(RepoSpec::tiny(1227));
    // A transfer timeout far past the idle one, so that the two bounds are told apart.
    let up =
        silent_at_most(&upstream, Duration::from_secs(2)).with_limits(gitcache_upstream::Limits {
            transfer_timeout: Duration::from_secs(120),
            ..Default::default()
        });
    upstream.inject(
        Fault::TricklingStatus {
            status: 500,
            every: Duration::from_millis(200),
        },
        1,
        Some(RequestKind::Fetch),
    );
    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(
        matches!(
            &err,
            gitcache_mirror::mirror::Error::Upstream(gitcache_upstream::Error::Status { status, message })
                if status.as_u16() == 500 && message.starts_with("...")
        ),
        "{err:?}"
    );
    assert!(refs(mirror.git_dir()).is_empty());
}

/// An upstream that goes on after its pack, progress now and then within the idle timeout,
/// is given one idle timeout and a MiB for the rest of its answer: the pack, whole and
/// checked, is taken, and the refresh ends, not held for the transfer timeout's hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_after_a_whole_pack_ends_within_an_idle_timeout() {
    let (upstream, source, _dir, mirror, _) = with_empty_mirror(RepoSpec::tiny(1226));
    let up = silent_at_most(&upstream, Duration::from_secs(2));
    upstream.inject(
        Fault::TrailingProgress(Duration::from_millis(100)),
        1,
        Some(RequestKind::Fetch),
    );
    // A bound on liveness, not on speed: without the idle timeout's bound the refresh
    // waits for the transfer timeout, an hour.
    tokio::time::timeout(Duration::from_secs(120), mirror.refresh(&up, &[]))
        .await
        .expect("the refresh ends after the pack")
        .unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    // Progress as fast as it can go after the pack: cut after a MiB, long before the idle
    // timeout (here longer than the bound on the test).
    repo::append_commits(&source, "main", 2, 1227).unwrap();
    upstream.inject(
        Fault::TrailingProgress(Duration::ZERO),
        1,
        Some(RequestKind::Fetch),
    );
    let patient = Client::new(
        &upstream.repo_url("acme/widgets"),
        None,
        Duration::from_secs(600),
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(120), mirror.refresh(&patient, &[]))
        .await
        .expect("the refresh ends after the pack")
        .unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Issue 12: the timeout is for silence, not for the whole download: an upstream that is
/// slow but steady gets a large pack through although it takes longer than the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_upstream_gets_through() {
    let (upstream, source) = public_repo(RepoSpec::small(1224));
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let timeout = Duration::from_millis(500);
    let up = Client::new(&upstream.repo_url("acme/widgets"), None, timeout).unwrap();
    upstream.inject(
        Fault::Trickle {
            chunk: 16 << 10,
            every: Duration::from_millis(50),
        },
        1,
        Some(RequestKind::Fetch),
    );
    let started = std::time::Instant::now();
    mirror.refresh(&up, &[]).await.unwrap();
    assert!(
        started.elapsed() > timeout * 2,
        "the download took {:?}: the case needs one longer than the timeout",
        started.elapsed()
    );
    assert_eq!(refs(mirror.git_dir()), refs(&source));

    // Silence longer than the timeout is still an error.
    repo::append_commits(&source, "main", 2, 1225).unwrap();
    upstream.inject(Fault::Delay(timeout * 3), 1, Some(RequestKind::Fetch));
    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(err.to_string().contains("within"), "{err}");
}

/// An upstream that works out its pack before it sends any (a forge counting objects) is
/// given `first_window` to start, where the windows after it are judged as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_window_gives_an_upstream_time_to_start() {
    let (upstream, source) = public_repo(RepoSpec::small(1227));
    let client = |first_window| rated_client(&upstream, first_window);
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let pause = Fault::PauseBody(Duration::from_millis(1500));
    upstream.inject(pause.clone(), 1, Some(RequestKind::Fetch));
    let err = mirror.refresh(&client(None), &[]).await.unwrap_err();
    assert!(err.to_string().contains("fewer than 16384 bytes"), "{err}");
    upstream.inject(pause, 1, Some(RequestKind::Fetch));
    mirror
        .refresh(&client(Some(Duration::from_secs(3))), &[])
        .await
        .unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
}

/// An upstream that sends a little now and then, never silent for the idle timeout, is cut
/// off once a window of `min_rate` goes by with fewer bytes than its least (judged as it
/// ends, bytes or not); one that is slow but well above it gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_below_the_least_rate_is_cut_off() {
    let (upstream, source) = public_repo(RepoSpec::small(1226));
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = rated_client(&upstream, None);
    // 2 KB/s, a piece every 50 ms: never idle, far below 32 KiB/s.
    let trickle = Fault::Trickle {
        chunk: 100,
        every: Duration::from_millis(50),
    };
    upstream.inject(trickle, 1, Some(RequestKind::Fetch));
    let err = mirror.refresh(&up, &[]).await.unwrap_err().to_string();
    assert!(err.contains("fewer than 16384 bytes"), "{err}");
    assert!(pack_files(mirror.git_dir()).is_empty());
    // Bursts, each enough for a window, then silence under the idle timeout: a window that
    // ends without a byte is judged as it ends, not when the next burst comes.
    let bursts = Fault::Trickle {
        chunk: 20 << 10,
        every: Duration::from_secs(2),
    };
    upstream.inject(bursts, 1, Some(RequestKind::Fetch));
    let err = mirror.refresh(&up, &[]).await.unwrap_err().to_string();
    assert!(err.contains("fewer than 16384 bytes"), "{err}");
    assert!(pack_files(mirror.git_dir()).is_empty());
    // 320 KiB/s: ten times the least.
    let steady = Fault::Trickle {
        chunk: 16 << 10,
        every: Duration::from_millis(50),
    };
    upstream.inject(steady, 1, Some(RequestKind::Fetch));
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
}

/// Review of issue 12: an upstream that lists a ref to an object it does not have and sends
/// again the very pack the mirror holds already: the refresh fails, and the pack the
/// mirror's refs need stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_sent_again_is_not_removed_when_a_refresh_fails() {
    let (upstream, source, _dir, mirror, up) = with_empty_mirror(RepoSpec::tiny(1226));
    upstream.set_recording(true);
    mirror.refresh(&up, &[]).await.unwrap();
    let first_answer = upstream
        .requests()
        .into_iter()
        .find(|r| r.kind == RequestKind::Fetch)
        .unwrap()
        .response;
    let packs = pack_files(mirror.git_dir());

    let ghost = "2222222222222222222222222222222222222222";
    upstream.inject(
        Fault::ExtraLine(format!("{ghost} refs/heads/ghost").into_bytes()),
        1,
        Some(RequestKind::LsRefs),
    );
    upstream.inject(Fault::Replay(first_answer), 1, Some(RequestKind::Fetch));
    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(err.to_string().contains(ghost), "{err}");
    assert_eq!(
        pack_files(mirror.git_dir()),
        packs,
        "the mirror's own pack stays"
    );
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Review of issue 12: a new ref to an object the mirror holds already, but without its
/// history (a stray object of an earlier pack), is fetched whole, not published as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tip_on_disk_without_its_history_is_fetched_whole() {
    let (_upstream, source, _dir, mirror, up) = with_empty_mirror(RepoSpec::tiny(1227));
    mirror.refresh(&up, &[]).await.unwrap();

    // A new branch upstream; its commit alone (no tree) is already in the mirror.
    git(&source, &["branch", "stray", "main"]);
    let stray = repo::append_commits(&source, "stray", 1, 1228).unwrap();
    let pack = gitcache_testkit::git::git_with_input(
        &source,
        &["pack-objects", "--stdout", "-q"],
        format!("{stray}\n").as_bytes(),
    );
    gitcache_mirror::ingest::ingest_pack(mirror.git_dir(), Kind::Sha1, &mut &pack[..]).unwrap();

    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Commits fetched by id are kept under `refs/gitcache/kept/<day>/<id>` (one the upstream
/// lists a ref for needs none); later refreshes keep them until they are older than
/// `KEEP_DAYS`, then drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_fetched_by_id_are_kept_for_a_while() {
    use gitcache_mirror::mirror::{KEEP_DAYS, KEPT_PREFIX};
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/kept");
    repo::generate(&source, &RepoSpec::tiny(1353)).unwrap();
    upstream.adopt_repo("acme/kept", Access::Public).unwrap();
    let main = git(&source, &["rev-parse", "refs/heads/main"])
        .trim()
        .to_owned();
    // A commit only a ref outside what mirrors take reaches.
    let tree = git(&source, &["rev-parse", "main^{tree}"])
        .trim()
        .to_owned();
    let hidden = git(
        &source,
        &["commit-tree", &tree, "-p", &main, "-m", "hidden"],
    )
    .trim()
    .to_owned();
    git(&source, &["update-ref", "refs/pull/7/merge", &hidden]);
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/kept", None);
    mirror.refresh(&up, &[]).await.unwrap();
    let oid = |hex: &str| gix_hash::ObjectId::from_hex(hex.as_bytes()).unwrap();
    mirror
        .refresh_keeping(&up, &[], &[oid(&hidden), oid(&main)])
        .await
        .unwrap();
    let kept = git(
        mirror.git_dir(),
        &["for-each-ref", "--format=%(refname)", KEPT_PREFIX],
    );
    // The day it was kept: today, or yesterday if the day turned during the test.
    let today = kept
        .trim()
        .strip_prefix(KEPT_PREFIX)
        .and_then(|rest| rest.split('/').next())
        .and_then(|d| d.parse::<u64>().ok())
        .expect("a kept ref's day");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    assert!(today == now || today + 1 == now, "kept today: {kept}");
    assert_eq!(
        kept.trim(),
        format!("{KEPT_PREFIX}{today}/{hidden}"),
        "main is listed: not kept"
    );
    git(
        mirror.git_dir(),
        &["cat-file", "-e", &format!("{hidden}^{{commit}}")],
    );
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    // A plain refresh keeps it; one kept longer ago than KEEP_DAYS goes.
    mirror.refresh(&up, &[]).await.unwrap();
    assert!(git(mirror.git_dir(), &["for-each-ref", KEPT_PREFIX]).contains(&hidden));
    // An upstream whose HEAD names the kept ref (it saw the id asked for): the mirror's HEAD
    // stays on a ref of the upstream's.
    let head = std::fs::read(mirror.git_dir().join("HEAD")).unwrap();
    let kept_name = format!("{KEPT_PREFIX}{today}/{hidden}");
    git(&source, &["update-ref", &kept_name, &hidden]);
    git(&source, &["symbolic-ref", "HEAD", &kept_name]);
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(std::fs::read(mirror.git_dir().join("HEAD")).unwrap(), head);
    git(&source, &["symbolic-ref", "HEAD", "refs/heads/main"]);
    git(&source, &["update-ref", "-d", &kept_name]);
    let old_day = today - KEEP_DAYS - 1;
    let packed = std::fs::read_to_string(mirror.git_dir().join("packed-refs")).unwrap();
    std::fs::write(
        mirror.git_dir().join("packed-refs"),
        packed.replace(&format!("/{today}/"), &format!("/{old_day}/")),
    )
    .unwrap();
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(git(mirror.git_dir(), &["for-each-ref", KEPT_PREFIX]), "");
}

/// Consolidation keeps commits kept by id in a pack of their own: the consolidated pack is
/// the closure of the branches and tags alone (marked so, with bitmaps), so that a clone of
/// them is still that pack as it is; the kept commit and its history stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidation_keeps_kept_commits_beside_the_refs_pack() {
    use gitcache_mirror::mirror::KEPT_PREFIX;
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/twopacks");
    repo::generate(&source, &RepoSpec::tiny(1354)).unwrap();
    upstream
        .adopt_repo("acme/twopacks", Access::Public)
        .unwrap();
    let main = git(&source, &["rev-parse", "refs/heads/main"])
        .trim()
        .to_owned();
    let head = repo::append_commits(&source, "main", 2, 1355).unwrap();
    git(&source, &["update-ref", "refs/pull/9/head", &head]);
    git(&source, &["update-ref", "refs/heads/main", &main]);
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/twopacks", None);
    mirror.refresh(&up, &[]).await.unwrap();
    let oid = gix_hash::ObjectId::from_hex(head.as_bytes()).unwrap();
    mirror.refresh_keeping(&up, &[], &[oid]).await.unwrap();
    repo::append_commits(&source, "main", 1, 1356).unwrap();
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(
        pack_files(mirror.git_dir())
            .iter()
            .filter(|n| n.ends_with(".idx"))
            .count(),
        3
    );

    for round in 0..2 {
        let done = mirror.consolidate().unwrap();
        assert!(
            !done.tips.contains(&oid),
            "round {round}: the kept commit is no tip"
        );
        let files = pack_files(mirror.git_dir());
        assert_eq!(
            files.iter().filter(|n| n.ends_with(".idx")).count(),
            2,
            "{files:?}"
        );
        let pack = done.pack.expect("marked");
        mirror
            .write_bitmaps(&pack, &done.tips)
            .unwrap()
            .expect("bitmaps beside a kept pack");
        git(
            mirror.git_dir(),
            &["cat-file", "-e", &format!("{head}^{{commit}}")],
        );
        git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
        assert!(git(mirror.git_dir(), &["for-each-ref", KEPT_PREFIX]).contains(&head));
    }
}

/// A refresh offers the upstream its `HEAD`, what the moved refs pointed at and a few of the
/// newest tips, not every tip: each have the upstream's bitmaps lack costs it a walk. The
/// mirror still ends up whole, also for a branch made from a tip it did not offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_offers_few_haves_and_still_ends_up_whole() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    repo::generate(&source, &RepoSpec::small(1301)).unwrap();
    for i in 1..=40 {
        git(
            &source,
            &["branch", &format!("old/{i}"), &format!("main~{i}")],
        );
    }
    // `git` at a given time (seconds since the epoch) for what it writes.
    let git_client = gitcache_testkit::git::GitClient::new().unwrap();
    let dated = |args: &[&str], time: u64| {
        let date = format!("{time} +0000");
        let out = git_client
            .command(&source)
            .args(args)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let commit_on = |base: &str, message: &str, time: u64| {
        let tree = format!("{base}^{{tree}}");
        dated(&["commit-tree", &tree, "-p", base, "-m", message], time)
    };
    // Branches of a commit of their own each, older than any other (2001): never among the
    // newest tips, so never offered.
    let mut sides = Vec::new();
    for i in 0..20 {
        let side = commit_on(
            &format!("main~{}", 20 + i),
            &format!("side {i}"),
            978_307_200 + i,
        );
        git(&source, &["branch", &format!("side/{i}"), &side]);
        sides.push(side);
    }
    // The newest commits of all (2036): one only an annotated tag points at (offered as the
    // commit, not the tag), one on a branch the upstream will delete (not offered).
    let tagged = commit_on("main", "tagged", 2_100_000_000);
    dated(
        &["tag", "-a", "-m", "newest", "newest", &tagged],
        2_100_000_000,
    );
    let tag = git(&source, &["rev-parse", "refs/tags/newest"])
        .trim()
        .to_owned();
    let doomed = commit_on("main", "doomed", 2_100_000_001);
    git(&source, &["branch", "doomed", &doomed]);
    // A thousand pull-request refs on commits older than the tagged one, listed by name
    // before the tags: branches and tags are compared first, so the tag's commit is still
    // found among the newest.
    git(&source, &["branch", "pulls", "main"]);
    repo::append_commits(&source, "pulls", 1_000, 1_000).unwrap();
    let pulls = git(&source, &["rev-list", "--max-count=1000", "pulls"]);
    let updates: String = pulls
        .lines()
        .enumerate()
        .map(|(i, oid)| format!("create refs/pull/{i}/head {oid}\n"))
        .collect();
    gitcache_testkit::git::git_with_input(&source, &["update-ref", "--stdin"], updates.as_bytes());
    git(&source, &["branch", "-D", "pulls"]);
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::create(dir.path().join("m.git"), Kind::Sha1).unwrap();
    let up = client(&upstream, "acme/widgets", None);
    mirror.refresh(&up, &["refs/pull/"]).await.unwrap();
    // Every tip, and what the tags among them peel to.
    let tips = git(
        mirror.git_dir(),
        &["for-each-ref", "--format=%(objectname)%0a%(*objectname)"],
    );
    let tips: std::collections::BTreeSet<&str> = tips.lines().filter(|l| !l.is_empty()).collect();
    assert!(tips.len() > 60, "{}", tips.len());
    let rev = |name: &str| git(&source, &["rev-parse", name]).trim().to_owned();
    let (old_main, old_3) = (rev("main"), rev("old/3"));

    // HEAD moves, and so does another branch; a new branch starts from a side branch.
    repo::append_commits(&source, "main", 3, 1302).unwrap();
    repo::append_commits(&source, "old/3", 1, 1303).unwrap();
    git(&source, &["branch", "topic", "side/0"]);
    repo::append_commits(&source, "topic", 2, 1304).unwrap();
    git(&source, &["branch", "-D", "doomed"]);
    upstream.set_recording(true);
    let refreshed = mirror.refresh(&up, &["refs/pull/"]).await.unwrap();
    assert!(refreshed.changed);
    let fetch = upstream
        .requests()
        .into_iter()
        .rfind(|r| r.kind == RequestKind::Fetch)
        .expect("a fetch");
    let body = String::from_utf8_lossy(&fetch.body).into_owned();
    let haves: Vec<&str> = body
        .split("have ")
        .skip(1)
        .map(|rest| &rest[..40])
        .collect();
    assert!(
        !haves.is_empty() && haves.len() <= 16,
        "{haves:?} in {body:?}"
    );
    assert_eq!(haves[0], old_main, "HEAD first: {body}");
    assert!(haves.contains(&old_3.as_str()), "a moved ref's old value");
    assert!(
        !haves.iter().any(|h| sides.iter().any(|s| s == h)),
        "no side branch is among the newest"
    );
    assert!(
        haves.contains(&tagged.as_str()),
        "a tag counts as its commit"
    );
    assert!(!haves.contains(&tag.as_str()), "not as the tag");
    assert!(
        !haves.contains(&doomed.as_str()),
        "a ref the upstream dropped"
    );
    assert!(
        haves.iter().all(|h| tips.contains(h)),
        "only the mirror's tips"
    );
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// A fetch ahead for a client is asked as the client asks (its haves the mirror holds, its
/// options) only when those haves include one the mirror would offer itself; hints not to
/// be kept are not, when no ref reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_ahead_is_asked_as_the_client_asks_when_it_builds_on_the_mirror() {
    use gitcache_mirror::mirror::{ClientFetch, Hints, KEPT_PREFIX};
    let upstream = Upstream::start().unwrap();
    let (source, _dir, mirror, up) = refreshed(&upstream, "acme/asked", 1718).await;
    let (old_main, older) = (
        git(&source, &["rev-parse", "main"]),
        git(&source, &["rev-parse", "main~2"]),
    );
    let absent = oid(&"7".repeat(40));
    upstream.set_recording(true);
    // The haves of the fetch ahead.
    let asked = |upstream: &Upstream| -> (Vec<String>, String) {
        let fetch = upstream
            .requests()
            .into_iter()
            .find(|r| r.kind == RequestKind::Fetch)
            .expect("a fetch");
        let body = String::from_utf8_lossy(&fetch.body).into_owned();
        let haves = body
            .split("have ")
            .skip(1)
            .map(|rest| rest[..40].to_owned())
            .collect();
        (haves, body)
    };

    // Building on the mirror's HEAD: the client's haves it holds, and its options.
    let tip = repo::append_commits(&source, "main", 2, 11).unwrap();
    upstream.reset_counts();
    let hints = Hints {
        ids: vec![oid(&tip)],
        client: Some(ClientFetch {
            haves: vec![absent, oid(&older), oid(&old_main)],
            thin_pack: false,
            include_tag: true,
        }),
        keep_unreached: true,
    };
    mirror.refresh_hinted(&up, &[], &[], &hints).await.unwrap();
    let (haves, body) = asked(&upstream);
    assert_eq!(haves, [older.trim(), old_main.trim()], "{body}");
    assert!(
        body.contains("include-tag") && !body.contains("thin-pack"),
        "{body}"
    );
    assert_eq!(upstream.counts().fetch, 1);

    // Building only on an older commit: the mirror's own haves, as it would ask.
    let old_main = tip;
    let tip = repo::append_commits(&source, "main", 2, 12).unwrap();
    upstream.reset_counts();
    let hints = Hints {
        ids: vec![oid(&tip)],
        client: Some(ClientFetch {
            haves: vec![oid(&older)],
            thin_pack: true,
            include_tag: false,
        }),
        keep_unreached: true,
    };
    mirror.refresh_hinted(&up, &[], &[], &hints).await.unwrap();
    let (haves, body) = asked(&upstream);
    assert_eq!(haves[0], old_main.trim(), "HEAD first: {body}");
    assert!(!haves.contains(&older.trim().to_owned()), "{body}");
    assert!(body.contains("thin-pack"), "{body}");

    // Named by an `ls-refs` answer, not asked for by id: not kept when no ref reaches it.
    let hidden = git(
        &source,
        &["commit-tree", "main^{tree}", "-p", "main", "-m", "hidden"],
    );
    let hints = Hints {
        ids: vec![oid(&hidden)],
        client: None,
        keep_unreached: false,
    };
    let done = mirror.refresh_hinted(&up, &[], &[], &hints).await.unwrap();
    assert_eq!(done.asked_ahead, [oid(&hidden)]);
    let fetched = format!("{}^{{commit}}", hidden.trim());
    git(mirror.git_dir(), &["cat-file", "-e", &fetched]);
    let kept = git(mirror.git_dir(), &["for-each-ref", KEPT_PREFIX]);
    assert!(kept.trim().is_empty(), "{kept}");
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Objects a client asked for that the mirror lacks (most often the tip a push just made,
/// which a CI job fetches by id) are fetched by id beside the refresh's `ls-refs`: when the
/// upstream's refs point at nothing else new, that fetch is the only one. A hint no mirrored
/// ref reaches is kept, as ids fetched by id are; a hint the upstream refuses leaves the
/// refresh as it would have been; one more branch moved is fetched after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_asked_for_are_fetched_beside_the_refs() {
    use gitcache_mirror::mirror::KEPT_PREFIX;
    let upstream = Upstream::start().unwrap();
    let (source, _dir, mirror, up) = refreshed(&upstream, "acme/hinted", 1717).await;

    // A push to main, and a commit only a ref mirrors do not take reaches.
    let new_main = repo::append_commits(&source, "main", 3, 1).unwrap();
    let hidden = git(
        &source,
        &["commit-tree", "main^{tree}", "-p", "main", "-m", "hidden"],
    );
    git(&source, &["update-ref", "refs/pull/9/merge", hidden.trim()]);
    upstream.reset_counts();
    let done = mirror
        .refresh_hinted(&up, &[], &[], &vec![oid(&new_main), oid(&hidden)].into())
        .await
        .unwrap();
    assert!(done.changed && done.fetched_objects > 0);
    let counts = upstream.counts();
    assert_eq!((counts.ls_refs, counts.fetch), (1, 1), "{counts:?}");
    let kept = git(
        mirror.git_dir(),
        &["for-each-ref", "--format=%(objectname)", KEPT_PREFIX],
    );
    assert_eq!(
        kept.trim(),
        hidden.trim(),
        "the hint no listed ref points at is kept"
    );
    let listed = |repo: &Path| {
        refs(repo)
            .lines()
            .filter(|l| !l.contains("refs/pull/") && !l.contains(KEPT_PREFIX))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(listed(mirror.git_dir()), listed(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    assert_eq!(done.asked_ahead.len(), 2);

    // A hint the upstream refuses (no such object): the refresh goes on as without it, and
    // says the upstream answered for it.
    let newer = repo::append_commits(&source, "main", 2, 2).unwrap();
    upstream.reset_counts();
    let bogus = oid(&"5".repeat(40));
    let done = mirror
        .refresh_hinted(&up, &[], &[], &vec![bogus, oid(&newer)].into())
        .await
        .unwrap();
    assert_eq!(
        upstream.counts().fetch,
        2,
        "the refused fetch, then the refs'"
    );
    assert_eq!(done.asked_ahead, vec![bogus, oid(&newer)]);
    assert_eq!(listed(mirror.git_dir()), listed(&source));
    assert!(!refs(mirror.git_dir()).contains(&bogus.to_string()));

    // A fetch ahead that fails otherwise says nothing about the ids: none reported, and the
    // refs' own fetch follows. A hint the new refs reach (not the tip) is not kept.
    let tip = repo::append_commits(&source, "main", 1, 6).unwrap();
    upstream.inject(Fault::Status(500), 1, Some(RequestKind::Fetch));
    let done = mirror
        .refresh_hinted(&up, &[], &[], &vec![oid(&tip)].into())
        .await
        .unwrap();
    assert!(done.asked_ahead.is_empty());
    assert_eq!(listed(mirror.git_dir()), listed(&source));
    let later = repo::append_commits(&source, "main", 2, 7).unwrap();
    let below_tip = git(&source, &["rev-parse", "main~1"]);
    mirror
        .refresh_hinted(&up, &[], &[], &vec![oid(&below_tip)].into())
        .await
        .unwrap();
    let kept_now = git(
        mirror.git_dir(),
        &["for-each-ref", "--format=%(objectname)", KEPT_PREFIX],
    );
    assert_eq!(
        kept_now.trim(),
        hidden.trim(),
        "only the unreachable hint is kept"
    );
    assert!(refs(mirror.git_dir()).contains(later.trim()));

    // The refs not listed after a fetch ahead: the refresh fails, and its pack goes.
    let packs = pack_files(mirror.git_dir());
    let orphan = repo::append_commits(&source, "main", 2, 8).unwrap();
    upstream.inject(Fault::Status(500), 1, Some(RequestKind::LsRefs));
    let failed = mirror
        .refresh_hinted(&up, &[], &[], &vec![oid(&orphan)].into())
        .await;
    assert!(failed.is_err());
    assert_eq!(
        pack_files(mirror.git_dir()),
        packs,
        "nothing left of the fetch ahead"
    );
    // The same on a mirror that tells a board of packs landing: once told, answers may be
    // reading the pack, and it stays (checked; no ref needs it).
    let board = std::sync::Arc::new(gitcache_mirror::live::Board::default());
    let told = Mirror::open(mirror.git_dir()).announcing_on(std::sync::Arc::clone(&board));
    upstream.inject(Fault::Status(500), 1, Some(RequestKind::LsRefs));
    let failed = told
        .refresh_hinted(&up, &[], &[], &vec![oid(&orphan)].into())
        .await;
    assert!(failed.is_err());
    assert_eq!(board.landings(), 1);
    let now = pack_files(mirror.git_dir());
    assert!(packs.iter().all(|name| now.contains(name)), "{now:?}");
    assert!(
        (now.iter()).any(|name| name.ends_with(".pack") && !packs.contains(name)),
        "the pack that landed stays: {now:?}"
    );
    git(mirror.git_dir(), &["cat-file", "-e", orphan.trim()]);
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    upstream.clear_faults();

    // Another branch moved too: fetched after, with what came ahead as a have.
    let tip = repo::append_commits(&source, "main", 2, 3).unwrap();
    git(&source, &["branch", "-f", "side", "main~1"]);
    let side = repo::append_commits(&source, "side", 2, 4).unwrap();
    upstream.reset_counts();
    mirror
        .refresh_hinted(&up, &[], &[], &vec![oid(&tip)].into())
        .await
        .unwrap();
    assert_eq!(upstream.counts().fetch, 2);
    assert_eq!(listed(mirror.git_dir()), listed(&source));
    assert!(refs(mirror.git_dir()).contains(side.trim()));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// A name that comes to mean another repository (the one mirrored renamed away and another
/// made under its name): a refresh that finds the upstream's refs share no history with the
/// mirror's writes nothing (`Error::Replaced`) and leaves the mirror as it was, its packs
/// included. A branch that moved on while every listed ref moved is followed, and so is an
/// upstream whose history was replaced only in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_replaced_behind_its_name_is_not_taken_for_it() {
    let (upstream, source, _dir, mirror, up) = with_empty_mirror(RepoSpec::small(1471));
    mirror.refresh(&up, &[]).await.unwrap();
    // One branch left, and it moves on: every listed ref moved, and the walk finds the
    // histories meet.
    for name in git(&source, &["for-each-ref", "--format=%(refname)"]).lines() {
        if name != "refs/heads/main" {
            git(&source, &["update-ref", "-d", name]);
        }
    }
    repo::append_commits(&source, "main", 3, 1472).unwrap();
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    let (before_refs, before_packs) = (refs(mirror.git_dir()), pack_files(mirror.git_dir()));

    // Another repository under the same name, its own refs named alike.
    upstream
        .replace_repo("acme/widgets", &RepoSpec::small(1473), Access::Public)
        .unwrap();
    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(
        matches!(err, gitcache_mirror::mirror::Error::Replaced),
        "{err}"
    );
    assert_eq!(refs(mirror.git_dir()), before_refs, "no ref written");
    assert_eq!(
        pack_files(mirror.git_dir()),
        before_packs,
        "the new repository's pack is not kept"
    );
    // Nothing of it is said to have landed, fetched with the refs or ahead of them (by the
    // id a client asks for): answers read a pack said to have landed, and the mirror goes.
    let board = std::sync::Arc::new(gitcache_mirror::live::Board::default());
    let told = Mirror::open(mirror.git_dir()).announcing_on(std::sync::Arc::clone(&board));
    let new_main = git(&source, &["rev-parse", "main"]);
    for hints in [Vec::new(), vec![oid(&new_main)]] {
        let err = told
            .refresh_hinted(&up, &[], &[], &hints.into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, gitcache_mirror::mirror::Error::Replaced),
            "{err}"
        );
        assert_eq!(board.landings(), 0);
    }
    assert_eq!(refs(mirror.git_dir()), before_refs, "no ref written");
    let replaced_main = git(&source, &["rev-parse", "main"]);
    assert!(
        std::process::Command::new("git")
            .args(["cat-file", "-e", replaced_main.trim()])
            .current_dir(mirror.git_dir())
            .status()
            .map(|s| !s.success())
            .unwrap(),
        "none of its objects either"
    );
    // Every ref gone, as a repository made anew is before its first push: nothing listed
    // shares the mirror's history either.
    for name in git(&source, &["for-each-ref", "--format=%(refname)"]).lines() {
        git(&source, &["update-ref", "-d", name]);
    }
    let err = mirror.refresh(&up, &[]).await.unwrap_err();
    assert!(
        matches!(err, gitcache_mirror::mirror::Error::Replaced),
        "{err}"
    );
    assert_eq!(refs(mirror.git_dir()), before_refs, "no ref written");
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    // One ref of the old history among the new repository's refs: the same repository.
    let old_main = before_refs
        .lines()
        .find(|line| line.ends_with(" refs/heads/main"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let packed = tempfile::tempdir().unwrap();
    let old = packed.path().join("old.git");
    git(
        packed.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            &mirror.git_dir().display().to_string(),
            "old.git",
        ],
    );
    std::fs::remove_dir_all(&source).unwrap();
    repo::generate(&source, &RepoSpec::small(1474)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    git(
        &source,
        &[
            "fetch",
            "-q",
            &old.display().to_string(),
            &format!("{old_main}:refs/heads/kept"),
        ],
    );
    mirror.refresh(&up, &[]).await.unwrap();
    assert_eq!(refs(mirror.git_dir()), refs(&source));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}
