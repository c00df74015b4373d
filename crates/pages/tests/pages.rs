//! Sites deployed to and served from both storage backends: the filesystem, and a bucket of
//! a real S3-compatible server (moto).

use gitcache_pages::manifest::Content;
use gitcache_pages::serve::{Answer, answer, route};
use gitcache_pages::site::{CONCURRENT_UPLOADS, Error, MAX_FILES, Pages, SweepTimes, TreeFile};
use gitcache_storage::s3::{S3Config, S3Store};
use gitcache_storage::store::{AnyStore, FsStore};
use gitcache_testkit::s3::S3Server;
use std::sync::atomic::Ordering;
use std::time::Duration;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const NEXT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// The key under `prefix` named by the SHA-256 of `bytes` (a blob's, a staged manifest's).
fn keyed_by_hash(prefix: &str, bytes: &[u8]) -> gitcache_storage::store::ObjectKey {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    gitcache_storage::store::ObjectKey::new(&format!("{prefix}/{hex}")).unwrap()
}

/// Make the file at `path` look last written `seconds` ago.
fn made_ago(path: &std::path::Path, seconds: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(seconds))
        .unwrap();
}

fn tree(script: &[u8]) -> Vec<TreeFile> {
    vec![
        TreeFile::file("index.html", b"<h1>home</h1>".to_vec()),
        TreeFile::file("app.js", script.to_vec()),
        TreeFile::file("docs/index.html", b"<h1>docs</h1>".to_vec()),
        TreeFile::file("docs/guide.html", b"<h1>guide</h1>".to_vec()),
        TreeFile::file("404.html", b"<h1>not here</h1>".to_vec()),
        TreeFile::symlink("latest", "docs"),
        TreeFile::symlink("escape", "../../etc/passwd"),
        TreeFile::symlink("loop", "loop"),
        TreeFile::symlink("docs/up", "../index.html"),
    ]
}

async fn body(pages: &Pages<AnyStore>, answer: &Answer<'_>) -> Vec<u8> {
    let file = match answer {
        Answer::Found(file) => file,
        Answer::NotFound(Some(file)) => file,
        other => panic!("no file: {other:?}"),
    };
    match file.content {
        Content::Inline(bytes) => bytes.clone(),
        Content::Blob { hash, .. } => pages.blob(hash).await.unwrap().expect("the blob").to_vec(),
    }
}

/// Deploy `tree(script)` from `commit` as example.org's root site.
async fn deploy<S: gitcache_storage::store::ObjectStore>(
    pages: &Pages<S>,
    commit: &str,
    script: &[u8],
) -> gitcache_pages::site::Deployed {
    pages
        .deploy(
            "example.org",
            ".index",
            commit,
            "https://forge/acme/site.git#pages",
            tree(script),
        )
        .await
        .unwrap()
}

async fn suite(store: AnyStore) {
    let pages = Pages::new(store.clone());
    // Another instance on the same store, with its own memory of sites.
    let other = Pages::new(store);
    let script = vec![b'x'; 5000];
    assert!(other.site("example.org", ".index").await.unwrap().is_none());
    let first = deploy(&pages, COMMIT, &script).await;
    assert!(!first.unchanged);
    assert_eq!(
        (first.files, first.uploaded),
        (5, 1),
        "one file large enough for a blob"
    );
    let site = pages
        .site("example.org", ".index")
        .await
        .unwrap()
        .expect("deployed");

    let found = |path: &str| match answer(&site, path) {
        Answer::Found(file) => file.path,
        other => panic!("{path}: {other:?}"),
    };
    assert_eq!(found("/"), "index.html");
    assert_eq!(found("/docs/"), "docs/index.html");
    assert_eq!(
        found("/latest/guide.html"),
        "docs/guide.html",
        "a symlink inside the tree"
    );
    assert_eq!(found("/docs/up"), "index.html");
    assert_eq!(found("/app.js"), "app.js");
    assert_eq!(answer(&site, "/docs"), Answer::Redirect("/docs/".into()));
    // Never a redirect to another host (`//docs/` would be one).
    assert_eq!(answer(&site, "//docs"), Answer::Redirect("/docs/".into()));
    for outside in ["/escape", "/loop", "/missing", "/index.html/x"] {
        match answer(&site, outside) {
            Answer::NotFound(Some(page)) => assert_eq!(page.path, "404.html", "{outside}"),
            other => panic!("{outside}: {other:?}"),
        }
    }
    for bad in [
        "/../secret",
        "/%2e%2e/secret",
        "/docs/%2E%2E/%2e%2e/x",
        "/a\\b",
        "/%00",
        "/%ff",
    ] {
        assert_eq!(answer(&site, bad), Answer::BadPath, "{bad}");
    }
    let js = answer(&site, "/app.js");
    assert_eq!(body(&pages, &js).await, script);
    let Answer::Found(file) = &js else {
        unreachable!()
    };
    assert_eq!(file.content_type, "text/javascript; charset=utf-8");
    let etag = file.etag.clone();

    // The same commit again: nothing written. Another: only the changed file's blob.
    let again = deploy(&pages, COMMIT, &script).await;
    assert!(again.unchanged);
    let changed = vec![b'y'; 5000];
    let next = deploy(&pages, NEXT, &changed).await;
    assert_eq!((next.unchanged, next.uploaded), (false, 1));
    let site = pages.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(site.manifest.commit, NEXT);
    let js = answer(&site, "/app.js");
    assert_eq!(body(&pages, &js).await, changed);
    let Answer::Found(file) = &js else {
        unreachable!()
    };
    assert_ne!(file.etag, etag, "a new ETag for new content");
    // The other instance remembered "nothing deployed", then sees each deploy once its
    // memory is due for a check.
    tokio::time::sleep(gitcache_pages::site::MANIFEST_FRESH).await;
    let seen = other.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(seen.manifest.commit, NEXT);
    let held = other.site("example.org", ".index").await.unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&seen, &held), "kept in memory");
    deploy(&pages, COMMIT, &script).await;
    tokio::time::sleep(gitcache_pages::site::MANIFEST_FRESH).await;
    let seen = other.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(seen.manifest.commit, COMMIT, "a redeploy elsewhere is seen");
    // Other hosts and projects are not this one.
    assert!(pages.site("example.org", "docs").await.unwrap().is_none());
    assert!(
        pages
            .site("other.example", ".index")
            .await
            .unwrap()
            .is_none()
    );
}

/// A store in `server`'s bucket.
fn bucket(server: &S3Server) -> AnyStore {
    AnyStore::S3(
        S3Store::new(&S3Config {
            bucket: server.bucket().to_owned(),
            endpoint: Some(server.endpoint()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            ..S3Config::default()
        })
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_deploy_and_serve_on_the_filesystem_backend() {
    let dir = tempfile::tempdir().unwrap();
    suite(AnyStore::Fs(FsStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_deploy_and_serve_in_a_bucket() {
    let Some(server) = S3Server::start("gitcache-pages") else {
        return;
    };
    suite(bucket(&server)).await;
}

/// A file larger than the memory keeps is read from the store in pieces as it is sent: whole,
/// and in ranges, with the right bytes and lengths; one the memory keeps is still read whole.
async fn large_files(store: AnyStore) {
    let dir = tempfile::tempdir().unwrap();
    // A MiB of memory keeps blobs of at most 48 KiB.
    let pages = Pages::with_cache(store.clone(), 1 << 20);
    let big = gitcache_testkit::repo::Rng::new(3).bytes(700 << 10);
    let small = gitcache_testkit::repo::Rng::new(4).bytes(20 << 10);
    assert!(!pages.reads_whole(big.len() as u64) && pages.reads_whole(small.len() as u64));
    let text = "<p>the same paragraph, again and again</p>\n"
        .repeat(20_000)
        .into_bytes();
    assert!(!pages.reads_whole(text.len() as u64));
    let tree = vec![
        TreeFile::file("big.bin", big.clone()),
        TreeFile::file("small.bin", small.clone()),
        TreeFile::file("big.txt", text.clone()),
    ];
    pages
        .deploy(
            "example.org",
            ".index",
            COMMIT,
            "https://forge/a.git#pages",
            tree,
        )
        .await
        .unwrap();
    let service = gitcache_pages::http::PagesService::new(
        pages,
        dir.path().join("scratch"),
        std::time::Duration::from_secs(10),
        false,
    );
    let get = async |path: &str, headers: &[(&str, &str)]| {
        let mut request = hyper::Request::get(path).header("host", "example.org");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = service
            .handle(
                request
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await;
        let status = response.status().as_u16();
        let head = response.headers().clone();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        if status != 416 {
            let length: u64 = head["content-length"].to_str().unwrap().parse().unwrap();
            assert_eq!(body.len() as u64, length, "{path} {headers:?}");
        }
        (status, head, body.to_vec())
    };
    for (file, content) in [("/big.bin", &big), ("/small.bin", &small)] {
        let whole = get(file, &[]).await;
        assert!(whole.0 == 200 && whole.2 == *content, "{file}");
        let middle = get(file, &[("range", "bytes=1000-17999")]).await;
        assert!(
            middle.0 == 206 && middle.2 == content[1000..18000],
            "{file}"
        );
        let tail = get(file, &[("range", "bytes=-10")]).await;
        assert!(
            tail.0 == 206 && tail.2 == content[content.len() - 10..],
            "{file}"
        );
        let past = get(file, &[("range", &format!("bytes={}-", content.len() + 1))]).await;
        assert_eq!(past.0, 416, "{file}");
        // A range of another version of the file (`If-Range`): the whole file instead.
        let etag = whole.1["etag"].to_str().unwrap().to_owned();
        for (if_range, status) in [(etag.as_str(), 206), ("\"another\"", 200)] {
            let resumed = get(
                file,
                &[("range", "bytes=1000-17999"), ("if-range", if_range)],
            )
            .await;
            assert_eq!(resumed.0, status, "{file} {if_range}");
        }
    }
    // Too large to keep whole, but sent compressed: read whole once to compress, then the
    // compressed copy the memory keeps is sent without reading the file (gone from the store
    // for the second round).
    let text_key = keyed_by_hash("pages/blob", &text);
    for round in 0..2 {
        if round == 1 {
            gitcache_storage::store::ObjectStore::delete(&store, &text_key)
                .await
                .unwrap();
        }
        let (status, head, body) = get("/big.txt", &[("accept-encoding", "gzip")]).await;
        assert_eq!(status, 200);
        assert_eq!(head["content-encoding"], "gzip", "round {round}");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut back)
            .unwrap();
        assert!(back == text, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_are_sent_in_pieces_from_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    large_files(AnyStore::Fs(FsStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_are_sent_in_pieces_from_a_bucket() {
    let Some(server) = S3Server::start("gitcache-pages-large") else {
        return;
    };
    large_files(bucket(&server)).await;
}

/// A host holds at most so many projects: one more is refused, a redeploy of one of them is
/// not, and another host has its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holds_a_bounded_number_of_projects() {
    let dir = tempfile::tempdir().unwrap();
    let pages = Pages::new(AnyStore::Fs(FsStore::new(dir.path()))).with_max_projects(3);
    let one = || vec![TreeFile::file("index.html", b"x".to_vec())];
    let deploy = async |host: &str, project: &str, commit: &str| {
        pages.deploy(host, project, commit, "src", one()).await
    };
    for project in [".index", "a", "b"] {
        deploy("example.org", project, COMMIT).await.unwrap();
    }
    let refused = deploy("example.org", "c", COMMIT).await;
    assert!(
        matches!(refused, Err(Error::TooLarge { limit: 3, .. })),
        "{refused:?}"
    );
    assert!(!deploy("example.org", "a", NEXT).await.unwrap().unchanged);
    deploy("example.net", "c", COMMIT).await.unwrap();
    assert!(pages.site("example.org", "c").await.unwrap().is_none());
}

/// Trees that cannot be a site are refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trees_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pages = Pages::new(AnyStore::Fs(FsStore::new(dir.path())));
    let deploy = |host: &'static str, project: &'static str, tree: Vec<TreeFile>| {
        let pages = pages.clone();
        async move { pages.deploy(host, project, COMMIT, "src", tree).await }
    };
    let one = || vec![TreeFile::file("index.html", b"x".to_vec())];
    assert!(matches!(
        deploy("Example.org", ".index", one()).await,
        Err(Error::Name(_))
    ));
    assert!(matches!(
        deploy("example.org", "a/b", one()).await,
        Err(Error::Name(_))
    ));
    assert!(matches!(
        deploy("example.org", "..", one()).await,
        Err(Error::Name(_))
    ));
    // Names the filesystem store takes for a write in progress: its listing, and so a
    // sweep's reading of what the sites name, would pass over them.
    for (host, project) in [("example.tmp-1", ".index"), ("example.org", "blog.tmp-2-3")] {
        assert!(
            matches!(deploy(host, project, one()).await, Err(Error::Name(_))),
            "{host} {project}"
        );
    }
    for path in ["../x", "a//b", "/abs"] {
        let tree = vec![TreeFile::file(path, b"x".to_vec())];
        assert!(
            matches!(
                deploy("example.org", ".index", tree).await,
                Err(Error::Path(_))
            ),
            "{path}"
        );
    }
    let clash = vec![
        TreeFile::file("a", b"x".to_vec()),
        TreeFile::file("a/b", b"x".to_vec()),
    ];
    assert!(matches!(
        deploy("example.org", ".index", clash).await,
        Err(Error::Path(_))
    ));
    let many: Vec<TreeFile> = (0..=MAX_FILES)
        .map(|i| TreeFile::file(format!("f{i}"), Vec::new()))
        .collect();
    assert!(matches!(
        deploy("example.org", ".index", many).await,
        Err(Error::TooLarge { .. })
    ));
    assert!(
        pages.site("example.org", ".index").await.unwrap().is_none(),
        "nothing deployed"
    );
    // A site memory could not hold (a quarter of the cache, here 256 KiB), which would be
    // read and decoded again for every request: 3,000 inline files of 200 bytes.
    let small = Pages::with_cache(AnyStore::Fs(FsStore::new(dir.path())), 1 << 20);
    let inline: Vec<TreeFile> = (0..3_000)
        .map(|i| TreeFile::file(format!("f{i}.html"), vec![b'x'; 200]))
        .collect();
    let refused = small
        .deploy("example.org", ".index", COMMIT, "src", inline.clone())
        .await;
    assert!(
        matches!(refused, Err(Error::TooLarge { what, .. }) if what.contains("held in memory")),
        "{refused:?}"
    );
    // The same with room for it.
    let roomy = Pages::with_cache(AnyStore::Fs(FsStore::new(dir.path())), 8 << 20);
    roomy
        .deploy("example.org", ".index", COMMIT, "src", inline)
        .await
        .unwrap();
}

#[test]
fn projects_are_routed_by_exclusion() {
    let deployed = |name: &str| name == "blog";
    assert_eq!(
        route("/blog/post.html", deployed),
        ("blog".into(), "/post.html")
    );
    assert_eq!(route("/blog/", deployed), ("blog".into(), "/"));
    assert_eq!(route("/blog", deployed), ("blog".into(), ""));
    assert_eq!(route("/other/x", deployed), (".index".into(), "/other/x"));
    assert_eq!(route("/", deployed), (".index".into(), "/"));
    assert_eq!(route("/.index/x", |_| true), (".index".into(), "/.index/x"));
    // The first segment decoded, as files' paths are: one URL, one site.
    assert_eq!(route("/%62log/x", deployed), ("blog".into(), "/x"));
    assert_eq!(
        route("/%2Eindex/x", |_| true),
        (".index".into(), "/%2Eindex/x")
    );
    assert_eq!(route("/a%2Fb/x", |_| true), (".index".into(), "/a%2Fb/x"));
}

/// The fuzz corpus of site manifests, replayed: every input is refused or reads back as
/// itself, and answers stay inside the tree.
#[test]
fn manifest_fuzz_corpus() {
    let n = gitcache_testkit::fuzz::replay("pages_manifest", gitcache_pages::fuzzing::manifest);
    assert!(n >= 5, "only {n} inputs replayed");
}

/// The blobs of the deployed site as the store holds them: (named by the site, in the store).
async fn blobs(pages: &Pages<AnyStore>, store: &AnyStore) -> (usize, usize) {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let site = pages.site("example.org", ".index").await.unwrap().unwrap();
    let mut named = 0;
    for entry in site.manifest.entries.values() {
        if let gitcache_pages::manifest::Entry::File(Content::Blob { hash, .. }) = entry {
            assert!(
                pages.blob(hash).await.unwrap().is_some(),
                "a named blob is there"
            );
            named += 1;
        }
    }
    let stored = store
        .list(&ObjectKey::new("pages/blob").unwrap())
        .await
        .unwrap()
        .len();
    (named, stored)
}

/// Sweeps delete the blobs no site names (once unnamed for the grace period), the staged
/// manifests of deployments that never finished and what writes a crash cut short left on
/// disk; deployments racing the sweeps lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_collect_garbage_and_race_deployments_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Fs(FsStore::new(dir.path()));
    let pages = Pages::new(store.clone());
    let grace = std::time::Duration::from_millis(300);
    deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    deploy(&pages, NEXT, &[b'b'; 1000]).await;
    assert_eq!(
        blobs(&pages, &store).await,
        (1, 2),
        "the first site's blob is garbage"
    );
    // A sweep marks it; one a grace period later deletes it.
    assert_eq!(pages.collect(grace).await.unwrap().blobs, 0);
    tokio::time::sleep(grace).await;
    assert_eq!(pages.collect(grace).await.unwrap().blobs, 1);
    assert_eq!(blobs(&pages, &store).await, (1, 1));
    // A deployment that never finished leaves a staged manifest: gone after the grace period.
    {
        use gitcache_storage::store::{ObjectKey, ObjectStore as _};
        let staged = ObjectKey::new("pages/staged/crashed").unwrap();
        store
            .replace_manifest(&staged, b"gcpages1", None)
            .await
            .unwrap();
        assert_eq!(pages.collect(grace).await.unwrap().staged, 0, "young: kept");
        tokio::time::sleep(grace).await;
        assert_eq!(pages.collect(grace).await.unwrap().staged, 1);
        assert!(store.size(&staged).await.unwrap().is_none());
    }
    // A write a crash cut short left its file beside its place: gone after the grace period,
    // a file of another name kept.
    {
        let blob_dir = dir.path().join("pages/blob");
        let cut = blob_dir.join("00ff.tmp-4242-7");
        let other = dir.path().join("pages/notes.txt");
        std::fs::write(&cut, b"half a blob").unwrap();
        std::fs::write(&other, b"not a write").unwrap();
        assert_eq!(
            pages.collect(grace).await.unwrap().stale_writes,
            0,
            "young: kept"
        );
        tokio::time::sleep(grace).await;
        assert_eq!(pages.collect(grace).await.unwrap().stale_writes, 1);
        assert!(!cut.exists() && other.exists());
        std::fs::remove_file(&other).unwrap();
    }

    // Deployments of new content, one after another, while sweeps run all along.
    let sweeping = {
        let pages = pages.clone();
        tokio::spawn(async move {
            let mut deleted = 0;
            for _ in 0..40 {
                deleted += pages.collect(grace).await.unwrap().blobs;
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            deleted
        })
    };
    for round in 0..30u8 {
        let commit = format!("{round:02x}{}", &COMMIT[2..]);
        deploy(&pages, &commit, &[round; 2000]).await;
        let (named, _) = blobs(&pages, &store).await;
        assert_eq!(named, 1, "round {round}: the site's blob is there");
    }
    let deleted = sweeping.await.unwrap();
    assert!(deleted > 0, "the sweeps deleted earlier sites' blobs");
    tokio::time::sleep(grace).await;
    pages.collect(grace).await.unwrap();
    tokio::time::sleep(grace).await;
    pages.collect(grace).await.unwrap();
    assert_eq!(
        blobs(&pages, &store).await,
        (1, 1),
        "only the deployed site's blob is left"
    );
}

/// The fuzz corpus of DNS answers, replayed: records or an error, never a panic.
#[test]
fn dns_answer_fuzz_corpus() {
    let n = gitcache_testkit::fuzz::replay("dns_answer", gitcache_pages::fuzzing::dns_answer);
    assert!(n >= 3, "only {n} inputs replayed");
}

/// The fuzz corpus of rules files, replayed: parsed or refused with a line, never a panic,
/// never a target or header that leaves the site's bounds.
#[test]
fn rules_fuzz_corpus() {
    let n = gitcache_testkit::fuzz::replay("pages_rules", gitcache_pages::fuzzing::rules);
    assert!(n >= 3, "only {n} inputs replayed");
}

/// A store that, once armed, runs a hook when a sweep lists the blobs: what a deployment
/// does while the sweep goes through the rest.
#[derive(Debug, Clone)]
struct Interleaved {
    inner: FsStore,
    on_blob_listing: std::sync::Arc<std::sync::Mutex<Option<SiteWrite>>>,
    /// Done as a blob is first looked for (as a deployment uploads its blobs).
    on_blob_size: std::sync::Arc<std::sync::Mutex<Option<SiteWrite>>>,
    /// As a blob is first deleted: says so on the first channel, then deletes it once the
    /// second says to.
    on_blob_delete: std::sync::Arc<std::sync::Mutex<Option<HeldDelete>>>,
    /// Listings of the sweeps under way.
    sweeping_lists: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Blobs looked for.
    blob_sizes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// While set, listings of the sweeps under way fail.
    fail_sweeping_lists: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Deletes of blobs started.
    blob_deletes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Writes of a sweep's marker that found it changed or gone.
    marker_conflicts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Once set, each delete of a blob waits for a permit of it.
    delete_gate: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<tokio::sync::Semaphore>>>>,
}

/// Says a delete has come, then waits for leave to go on.
type HeldDelete = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

impl Interleaved {
    /// A store under `dir`, with no hooks set.
    fn new(dir: &std::path::Path) -> Self {
        Interleaved {
            inner: FsStore::new(dir),
            on_blob_listing: Default::default(),
            on_blob_size: Default::default(),
            on_blob_delete: Default::default(),
            sweeping_lists: Default::default(),
            blob_sizes: Default::default(),
            fail_sweeping_lists: Default::default(),
            blob_deletes: Default::default(),
            marker_conflicts: Default::default(),
            delete_gate: Default::default(),
        }
    }

    /// Commit the site write `hook` holds, if any, once.
    async fn commit(
        &self,
        hook: &std::sync::Mutex<Option<SiteWrite>>,
    ) -> Result<(), gitcache_storage::store::StoreError> {
        use gitcache_storage::store::ObjectStore as _;
        let write = hook.lock().unwrap().take();
        if let Some((site, bytes)) = write {
            let key = gitcache_storage::store::ObjectKey::new(&site).unwrap();
            let version = self.inner.manifest_version(&key).await?;
            self.inner
                .replace_manifest(&key, &bytes, version.as_ref())
                .await?;
        }
        Ok(())
    }
}

/// A site manifest's key and the bytes a deployment commits there.
type SiteWrite = (String, Vec<u8>);

impl gitcache_storage::store::ObjectStore for Interleaved {
    async fn put_file_after(
        &self,
        key: &gitcache_storage::store::ObjectKey,
        head: &[u8],
        from: &std::path::Path,
    ) -> Result<(), gitcache_storage::store::StoreError> {
        self.inner.put_file_after(key, head, from).await
    }
    async fn get_file_admitted(
        &self,
        key: &gitcache_storage::store::ObjectKey,
        to: &std::path::Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<bool, gitcache_storage::store::StoreError> {
        self.inner.get_file_admitted(key, to, limit, admit).await
    }
    async fn get_bytes(
        &self,
        key: &gitcache_storage::store::ObjectKey,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, gitcache_storage::store::StoreError> {
        self.inner.get_bytes(key, limit).await
    }
    async fn read_range(
        &self,
        key: &gitcache_storage::store::ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<gitcache_storage::store::ByteStream>, gitcache_storage::store::StoreError>
    {
        self.inner.read_range(key, range).await
    }
    async fn size(
        &self,
        key: &gitcache_storage::store::ObjectKey,
    ) -> Result<Option<u64>, gitcache_storage::store::StoreError> {
        if key.as_str().starts_with("pages/blob/") {
            self.blob_sizes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.commit(&self.on_blob_size).await?;
        }
        self.inner.size(key).await
    }
    async fn delete(
        &self,
        key: &gitcache_storage::store::ObjectKey,
    ) -> Result<(), gitcache_storage::store::StoreError> {
        let held = key
            .as_str()
            .starts_with("pages/blob/")
            .then(|| self.on_blob_delete.lock().unwrap().take())
            .flatten();
        if let Some((come, go)) = held {
            let _ = come.send(());
            let _ = go.await;
        }
        if key.as_str().starts_with("pages/blob/") {
            self.blob_deletes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let gate = self.delete_gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
        }
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        prefix: &gitcache_storage::store::ObjectKey,
    ) -> Result<Vec<gitcache_storage::store::Listed>, gitcache_storage::store::StoreError> {
        if prefix.as_str() == "pages/blob" {
            self.commit(&self.on_blob_listing).await?;
        }
        if prefix.as_str() == "pages/sweeping" {
            self.sweeping_lists
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self
                .fail_sweeping_lists
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(gitcache_storage::store::StoreError::Backend(
                    "the listing failed".into(),
                ));
            }
        }
        self.inner.list(prefix).await
    }
    async fn read_manifest(
        &self,
        key: &gitcache_storage::store::ObjectKey,
    ) -> Result<Option<gitcache_storage::store::Manifest>, gitcache_storage::store::StoreError>
    {
        self.inner.read_manifest(key).await
    }
    async fn manifest_version(
        &self,
        key: &gitcache_storage::store::ObjectKey,
    ) -> Result<Option<gitcache_storage::store::Version>, gitcache_storage::store::StoreError> {
        self.inner.manifest_version(key).await
    }
    async fn replace_manifest(
        &self,
        key: &gitcache_storage::store::ObjectKey,
        bytes: &[u8],
        expected: Option<&gitcache_storage::store::Version>,
    ) -> Result<gitcache_storage::store::Replaced, gitcache_storage::store::StoreError> {
        let replaced = self.inner.replace_manifest(key, bytes, expected).await?;
        if key.as_str().starts_with("pages/sweeping/")
            && replaced == gitcache_storage::store::Replaced::Conflict
        {
            self.marker_conflicts.fetch_add(1, Ordering::SeqCst);
        }
        Ok(replaced)
    }
}

/// A blob unnamed long enough to go, named again by a site committed while the sweep read
/// the other manifests (a deployment of old content that found it in the store and so did
/// not write it), is not deleted: the sweep names the blobs again just before it deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_named_again_while_a_sweep_runs_is_kept() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let pages = Pages::new(store.clone());
    let grace = std::time::Duration::from_millis(200);
    let site = "pages/site/example.org/.index";
    deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    let old = store
        .read_manifest(&ObjectKey::new(site).unwrap())
        .await
        .unwrap()
        .unwrap()
        .bytes;
    deploy(&pages, NEXT, &[b'b'; 1000]).await;
    let blobs = || async {
        store
            .list(&ObjectKey::new("pages/blob").unwrap())
            .await
            .unwrap()
            .len()
    };
    assert_eq!(blobs().await, 2);
    // Marked unnamed, then past the grace period.
    assert_eq!(pages.collect(grace).await.unwrap().blobs, 0);
    tokio::time::sleep(grace).await;
    // The old content is deployed again as the sweep reads the manifests.
    *store.on_blob_listing.lock().unwrap() = Some((site.to_owned(), old));
    assert_eq!(
        pages.collect(grace).await.unwrap().blobs,
        0,
        "nothing deleted"
    );
    assert_eq!(blobs().await, 2);
    let served = pages.site("example.org", ".index").await.unwrap().unwrap();
    for entry in served.manifest.entries.values() {
        if let gitcache_pages::manifest::Entry::File(Content::Blob { hash, .. }) = entry {
            assert!(
                pages.blob(hash).await.unwrap().is_some(),
                "a named blob is there"
            );
        }
    }
}

/// A blob a sweep is about to delete (unnamed long enough, and still unnamed when the sweep
/// read the manifests again) is found in the store by a deployment of old content staged
/// after that read, which therefore does not write it, and commits before the delete: the
/// deployment waits for the sweep under way before it checks its blobs again, and writes
/// back the one deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_found_by_a_deployment_as_a_sweep_deletes_it_is_written_back() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let pages = Pages::new(store.clone());
    let grace = std::time::Duration::from_millis(200);
    let site = ObjectKey::new("pages/site/example.org/.index").unwrap();
    deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    let old = store.read_manifest(&site).await.unwrap().unwrap().bytes;
    deploy(&pages, NEXT, &[b'b'; 1000]).await;
    assert_eq!(pages.collect(grace).await.unwrap().blobs, 0);
    tokio::time::sleep(grace).await;
    let (come, reached) = tokio::sync::oneshot::channel();
    let (release, go) = tokio::sync::oneshot::channel();
    *store.on_blob_delete.lock().unwrap() = Some((come, go));
    let sweep = tokio::spawn({
        let pages = pages.clone();
        async move { pages.collect(grace).await.unwrap().blobs }
    });
    // The sweep has read the manifests again and is deleting the old content's blob.
    reached.await.unwrap();
    let counted = |count: &std::sync::atomic::AtomicUsize| {
        count.swap(0, std::sync::atomic::Ordering::SeqCst);
    };
    counted(&store.sweeping_lists);
    counted(&store.blob_sizes);
    let redeploy = tokio::spawn({
        let pages = pages.clone();
        async move { deploy(&pages, COMMIT, &[b'a'; 1000]).await }
    });
    // The blob goes once the deployment, committed, either looks for sweeps under way a
    // second time (the first is as it stages) or checks its blob a second time (as it did
    // before it waited for sweeps).
    let load =
        |count: &std::sync::atomic::AtomicUsize| count.load(std::sync::atomic::Ordering::SeqCst);
    while load(&store.sweeping_lists) < 2 && load(&store.blob_sizes) < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        store.read_manifest(&site).await.unwrap().unwrap().bytes,
        old,
        "the old content is the site again"
    );
    release.send(()).unwrap();
    assert_eq!(sweep.await.unwrap(), 1, "the sweep deleted the blob");
    let deployed = redeploy.await.unwrap();
    assert!(!deployed.unchanged);
    let served = pages.site("example.org", ".index").await.unwrap().unwrap();
    let mut blobs = 0;
    for entry in served.manifest.entries.values() {
        if let gitcache_pages::manifest::Entry::File(Content::Blob { hash, .. }) = entry {
            blobs += 1;
            assert!(
                pages.blob(hash).await.unwrap().is_some(),
                "a blob the site names is there"
            );
        }
    }
    assert_eq!(blobs, 1);
    // Its marker went with the sweep.
    let markers = store
        .list(&ObjectKey::new("pages/sweeping").unwrap())
        .await
        .unwrap();
    assert!(markers.is_empty(), "{markers:?}");
}

/// A site committed by a deployment that did not see its blobs through (its staged manifest
/// still there, a blob gone: the re-check after the commit failed) is seen through by the next
/// deployment of its commit, which otherwise changes nothing.
#[tokio::test]
async fn a_deployment_cut_short_after_its_commit_is_seen_through_by_the_next() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let pages = Pages::new(store.clone());
    deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    assert!(!pages.unfinished("example.org", ".index").await.unwrap());
    let site = ObjectKey::new("pages/site/example.org/.index").unwrap();
    let bytes = store.read_manifest(&site).await.unwrap().unwrap().bytes;
    let staged = keyed_by_hash("pages/staged", &bytes);
    store.replace_manifest(&staged, &bytes, None).await.unwrap();
    let blobs = store
        .list(&ObjectKey::new("pages/blob").unwrap())
        .await
        .unwrap();
    assert_eq!(blobs.len(), 1);
    store.delete(&blobs[0].key).await.unwrap();
    assert!(pages.unfinished("example.org", ".index").await.unwrap());
    let again = deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    assert!(again.unchanged);
    assert!(
        store.size(&blobs[0].key).await.unwrap().is_some(),
        "written back"
    );
    assert!(
        store.size(&staged).await.unwrap().is_none(),
        "and seen through"
    );
    assert!(!pages.unfinished("example.org", ".index").await.unwrap());
    // Left unfinished past the grace period, its staged manifest is kept by the sweeps
    // (those of deployments that never committed go).
    store.replace_manifest(&staged, &bytes, None).await.unwrap();
    let never = ObjectKey::new(&format!("pages/staged/{}", "0".repeat(64))).unwrap();
    store.replace_manifest(&never, b"x", None).await.unwrap();
    for key in [&staged, &never] {
        made_ago(&store.path_of(key), 7200);
    }
    let swept = pages
        .collect(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(swept.staged, 1);
    assert!(store.size(&never).await.unwrap().is_none());
    assert!(pages.unfinished("example.org", ".index").await.unwrap());
}

/// A marker last written well before a deployment staged its manifest (by the store's clock)
/// is a dead sweep's: the deployment looks at it as it stages and after its commit, and does
/// not wait on it.
#[tokio::test]
async fn a_marker_silent_since_before_a_deployment_staged_holds_nothing_up() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let pages = Pages::new(store.clone());
    let dead = ObjectKey::new("pages/sweeping/dead").unwrap();
    store
        .replace_manifest(&dead, b"sweeping 3\n", None)
        .await
        .unwrap();
    made_ago(&dir.path().join("pages/sweeping/dead"), 300);
    deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    assert_eq!(
        store
            .sweeping_lists
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "looked at as it staged, and once after its commit"
    );
    assert!(
        store.size(&dead).await.unwrap().is_some(),
        "left to a sweep"
    );
}

/// A deployment that finds its staged manifest there already (left by one that failed; a
/// sweep may be deleting it as old) does not take the sweeps under way as it staged for all
/// there are: it waits on a marker written after that too.
#[tokio::test]
async fn a_deployment_staged_again_waits_on_every_sweep() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let pages = Pages::new(store.clone());
    let site = ObjectKey::new("pages/site/example.org/.index").unwrap();
    deploy(&pages, COMMIT, &[b'a'; 1000]).await;
    let bytes = store.read_manifest(&site).await.unwrap().unwrap().bytes;
    deploy(&pages, NEXT, &[b'b'; 1000]).await;
    // What a failed deployment of the first tree left.
    let staged = keyed_by_hash("pages/staged", &bytes);
    store.replace_manifest(&staged, &bytes, None).await.unwrap();
    // A sweep marks itself as the deployment uploads.
    let marker = "pages/sweeping/late";
    *store.on_blob_size.lock().unwrap() = Some((marker.to_owned(), b"sweeping 0\n".to_vec()));
    store
        .sweeping_lists
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let redeploy = tokio::spawn({
        let pages = pages.clone();
        async move { deploy(&pages, COMMIT, &[b'a'; 1000]).await }
    });
    let lists = || {
        store
            .sweeping_lists
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    while lists() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The sweep ends.
    store
        .delete(&ObjectKey::new(marker).unwrap())
        .await
        .unwrap();
    redeploy.await.unwrap();
    assert!(
        lists() >= 2,
        "looked again once the sweep had ended: {}",
        lists()
    );
}

/// The marker of a sweep that died is deleted by the next sweep once it is stale; the marker
/// of one under way is left to it.
#[tokio::test]
async fn a_dead_sweeps_marker_goes_with_the_next_sweep() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let pages = Pages::new(store.clone());
    let dead = ObjectKey::new("pages/sweeping/dead").unwrap();
    let live = ObjectKey::new("pages/sweeping/live").unwrap();
    for key in [&dead, &live] {
        store
            .replace_manifest(key, b"sweeping\n", None)
            .await
            .unwrap();
    }
    made_ago(&store.path_of(&dead), 2 * 3600);
    pages
        .collect(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let left: Vec<String> = store
        .list(&ObjectKey::new("pages/sweeping").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|listed| listed.key.as_str().to_owned())
        .collect();
    assert_eq!(left, ["pages/sweeping/live"]);
}

/// The sweeps' times with a deployment's polls frequent, changed by `change`.
fn sweep_times(change: impl FnOnce(&mut SweepTimes)) -> SweepTimes {
    let mut times = SweepTimes::default();
    times.poll = Duration::from_millis(20);
    change(&mut times);
    times
}

/// Deploy `n` files as example.org's root site, then a tree that names none of them, and
/// sweep once so that they are found unnamed; past `grace` after that, a sweep deletes them.
async fn blobs_to_delete(pages: &Pages<Interleaved>, n: usize, grace: Duration) {
    let files: Vec<TreeFile> = (0..n)
        .map(|i| TreeFile::file(format!("file-{i}.txt"), format!("{i:0>1000}").into_bytes()))
        .collect();
    pages
        .deploy(
            "example.org",
            ".index",
            COMMIT,
            "https://forge/acme/site.git#pages",
            files,
        )
        .await
        .unwrap();
    deploy(pages, NEXT, &[b'b'; 1000]).await;
    assert_eq!(pages.collect(grace).await.unwrap().blobs, 0);
    tokio::time::sleep(grace).await;
}

/// A sweep of `pages` whose blob deletes wait for the permits of the gate returned: returned
/// once it has started as many as it starts at once.
async fn sweep_held(
    pages: &Pages<Interleaved>,
    grace: Duration,
) -> (
    tokio::task::JoinHandle<usize>,
    std::sync::Arc<tokio::sync::Semaphore>,
) {
    let store = pages.store();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    *store.delete_gate.lock().unwrap() = Some(gate.clone());
    store.blob_deletes.store(0, Ordering::SeqCst);
    let sweep = tokio::spawn({
        let pages = pages.clone();
        async move { pages.collect(grace).await.unwrap().blobs }
    });
    while store.blob_deletes.load(Ordering::SeqCst) < CONCURRENT_UPLOADS {
        assert!(
            !sweep.is_finished(),
            "the sweep deletes {CONCURRENT_UPLOADS} at once"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sweep, gate)
}

/// Let the deletes of the sweep `held` go: it deleted only those it had started, and the
/// next sweep deletes the rest of the `many`.
async fn only_those_started_went(
    pages: &Pages<Interleaved>,
    grace: Duration,
    held: (
        tokio::task::JoinHandle<usize>,
        std::sync::Arc<tokio::sync::Semaphore>,
    ),
    many: usize,
) {
    let (sweep, gate) = held;
    gate.add_permits(many);
    assert_eq!(
        sweep.await.unwrap(),
        CONCURRENT_UPLOADS,
        "only those started"
    );
    pages.store().delete_gate.lock().unwrap().take();
    assert_eq!(
        pages.collect(grace).await.unwrap().blobs,
        many - CONCURRENT_UPLOADS,
        "the rest go with the next sweep"
    );
}

/// A deployment committed while a sweep's marker changes waits as long as it changes, and
/// goes on once it has not changed for `silent`: a sweep that died holds nothing up for
/// longer (its marker is left to the next sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_waits_while_a_sweeps_marker_changes_and_no_longer_once_it_is_silent() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let silent = Duration::from_secs(2);
    let pages = Pages::new(store.clone()).with_sweep_times(sweep_times(|times| {
        times.silent = silent;
        times.deletes_within = Duration::from_secs(600);
    }));
    let marker = ObjectKey::new("pages/sweeping/live").unwrap();
    store
        .replace_manifest(&marker, b"sweeping 0\n", None)
        .await
        .unwrap();
    // The sweep's beat, ten times as often as `silent`.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let beat = tokio::spawn({
        let (store, marker, beating) = (store.clone(), marker.clone(), beating.clone());
        async move {
            for n in 1.. {
                tokio::time::sleep(silent / 10).await;
                if !beating.load(Ordering::SeqCst) {
                    break;
                }
                let version = store.manifest_version(&marker).await.unwrap();
                let content = format!("sweeping {n}\n");
                store
                    .replace_manifest(&marker, content.as_bytes(), version.as_ref())
                    .await
                    .unwrap();
            }
        }
    });
    let deployment = tokio::spawn({
        let pages = pages.clone();
        async move { deploy(&pages, COMMIT, &[b'a'; 1000]).await }
    });
    // Once it looks at the markers after its commit (the first look is as it stages)...
    while store.sweeping_lists.load(Ordering::SeqCst) < 3 {
        assert!(
            !deployment.is_finished(),
            "it waits while the marker changes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(2 * silent).await;
    assert!(
        !deployment.is_finished(),
        "it waits while the marker changes"
    );
    beating.store(false, Ordering::SeqCst);
    beat.await.unwrap();
    let deployed = tokio::time::timeout(Duration::from_secs(60), deployment)
        .await
        .expect("it goes on once the marker is silent")
        .unwrap();
    assert!(!deployed.unchanged);
    assert!(
        store.size(&marker).await.unwrap().is_some(),
        "left to a sweep"
    );
}

/// Markers that cannot be listed are taken to be there: a deployment committed meanwhile
/// waits until they can be (and then for the sweeps they show, none here), or gives up
/// after as long as a sweep could delete (`deletes_within` and `silent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_waits_on_markers_it_cannot_list_for_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let waiting = |deletes_within| {
        Pages::new(store.clone()).with_sweep_times(sweep_times(|times| {
            times.deletes_within = deletes_within;
            times.silent = Duration::from_millis(500);
        }))
    };
    let lists = || store.sweeping_lists.load(Ordering::SeqCst);
    store.fail_sweeping_lists.store(true, Ordering::SeqCst);
    let deployment = tokio::spawn({
        let pages = waiting(Duration::from_secs(600));
        async move { deploy(&pages, COMMIT, &[b'a'; 1000]).await }
    });
    while lists() < 10 && !deployment.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !deployment.is_finished(),
        "it waits while the markers cannot be listed"
    );
    store.fail_sweeping_lists.store(false, Ordering::SeqCst);
    let deployed = tokio::time::timeout(Duration::from_secs(60), deployment)
        .await
        .expect("it goes on once they can be listed, and none is there")
        .unwrap();
    assert!(!deployed.unchanged);
    // Never listed: it waits no longer than a sweep could delete.
    store.fail_sweeping_lists.store(true, Ordering::SeqCst);
    store.sweeping_lists.store(0, Ordering::SeqCst);
    let pages = waiting(Duration::from_secs(1));
    let deployed =
        tokio::time::timeout(Duration::from_secs(60), deploy(&pages, NEXT, &[b'b'; 1000]))
            .await
            .expect("it gives up");
    assert!(!deployed.unchanged);
    assert!(lists() > 3, "it listed again and again: {}", lists());
}

/// A sweep starts no delete later than `deletes_within` after it read the manifests again:
/// those started before are waited for, the rest go with the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_starts_no_delete_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let within = Duration::from_secs(3);
    let pages = Pages::new(store.clone()).with_sweep_times(sweep_times(|times| {
        times.deletes_within = within;
    }));
    let (grace, many) = (Duration::from_millis(200), CONCURRENT_UPLOADS + 4);
    blobs_to_delete(&pages, many, grace).await;
    let held = sweep_held(&pages, grace).await;
    // Held until past the deadline.
    tokio::time::sleep(within + Duration::from_millis(500)).await;
    only_those_started_went(&pages, grace, held, many).await;
}

/// A sweep whose marker is changed or deleted under it (deployments may no longer see it)
/// starts no more deletes: those under way are waited for, the rest go with the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_whose_marker_goes_starts_no_more_deletes() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let beat = Duration::from_millis(50);
    let pages = Pages::new(store.clone()).with_sweep_times(sweep_times(|times| {
        times.beat = beat;
    }));
    let (grace, many) = (Duration::from_millis(200), CONCURRENT_UPLOADS + 4);
    blobs_to_delete(&pages, many, grace).await;
    let held = sweep_held(&pages, grace).await;
    let markers = store
        .list(&ObjectKey::new("pages/sweeping").unwrap())
        .await
        .unwrap();
    assert_eq!(markers.len(), 1);
    store.delete(&markers[0].key).await.unwrap();
    // Its next write finds it gone.
    for waited in 0.. {
        if store.marker_conflicts.load(Ordering::SeqCst) > 0 {
            break;
        }
        assert!(
            waited < 1200,
            "no write of the sweep's found its marker gone"
        );
        tokio::time::sleep(beat).await;
    }
    only_those_started_went(&pages, grace, held, many).await;
}

/// Two deploys of one site that race (two pushes in quick succession): a deploy commits only
/// while its commit is still the branch's tip, asked before each try, and the one that finds
/// the site committed by the other while it ran (while its tree was fetched, or its blobs
/// went up) goes over it only then. Otherwise it commits nothing and the site stays as the
/// other left it: an older tip committed last would roll the site back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_overtaken_by_another_commits_only_while_it_is_the_tip() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    const THIRD: &str = "fedcba9876543210fedcba9876543210fedcba98";
    let dir = tempfile::tempdir().unwrap();
    let store = Interleaved::new(dir.path());
    let pages = Pages::new(store.clone());
    let site = "pages/site/example.org/.index";
    let manifest = async || {
        store
            .read_manifest(&ObjectKey::new(site).unwrap())
            .await
            .unwrap()
            .unwrap()
            .bytes
    };
    deploy(&pages, NEXT, b"newer").await;
    let newer = manifest().await;
    deploy(&pages, THIRD, b"third").await;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked_times = || asked.load(std::sync::atomic::Ordering::SeqCst);
    // A deploy of COMMIT from the site as it is now; `during_upload` is committed by another
    // as its blobs go up, `during_fetch` deploys another commit before it starts (as while
    // its tree was fetched); `tip` is what asking the branch's tip again says.
    let deploy_racing = async |during_upload: Option<Vec<u8>>,
                               during_fetch: Option<&str>,
                               tip: Result<bool, String>| {
        let since = pages.site_version("example.org", ".index").await.unwrap();
        if let Some(commit) = during_fetch {
            deploy(&pages, commit, commit.as_bytes()).await;
        }
        *store.on_blob_size.lock().unwrap() = during_upload.map(|other| (site.to_owned(), other));
        let asked = std::sync::Arc::clone(&asked);
        pages
            .deploy_unless_superseded(
                "example.org",
                ".index",
                COMMIT,
                "https://forge/acme/site.git#pages",
                tree(&[b'o'; 1000]),
                since,
                move || {
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let tip = tip.clone();
                    Box::pin(async move { tip })
                },
            )
            .await
    };
    // Overtaken by the newer tip's deploy as its blobs went up: nothing committed.
    let superseded = deploy_racing(Some(newer.clone()), None, Ok(false)).await;
    assert!(
        matches!(superseded, Err(Error::Superseded)),
        "{superseded:?}"
    );
    assert_eq!(asked_times(), 1);
    let served = pages.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(served.manifest.commit, NEXT, "the newer tip stays");
    // Overtaken while its tree was fetched, long before its upload: the same.
    deploy(&pages, THIRD, b"third").await;
    let superseded = deploy_racing(None, Some(NEXT), Ok(false)).await;
    assert!(
        matches!(superseded, Err(Error::Superseded)),
        "{superseded:?}"
    );
    assert_eq!(asked_times(), 2);
    let served = pages.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(served.manifest.commit, NEXT, "the newer tip stays");
    // The tip cannot be asked again: nothing committed, and not said to be superseded.
    deploy(&pages, THIRD, b"third").await;
    let unknown = deploy_racing(Some(newer.clone()), None, Err("down".into())).await;
    assert!(matches!(unknown, Err(Error::TipUnknown(_))), "{unknown:?}");
    assert_eq!(asked_times(), 3);
    // Not overtaken, but the branch was pushed back meanwhile to what is deployed (which
    // another deploy then found deployed, and left as it was): nothing committed.
    deploy(&pages, THIRD, b"third").await;
    let pushed_back = deploy_racing(None, None, Ok(false)).await;
    assert!(
        matches!(pushed_back, Err(Error::Superseded)),
        "{pushed_back:?}"
    );
    assert_eq!(asked_times(), 4);
    let served = pages.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(
        served.manifest.commit, THIRD,
        "what the branch is back to stays"
    );
    // Overtaken, but still the tip (the other deploy was of an older one): committed, the
    // tip asked before each try.
    let deployed = deploy_racing(Some(newer), None, Ok(true)).await.unwrap();
    assert!(!deployed.unchanged);
    assert_eq!(asked_times(), 6);
    let served = pages.site("example.org", ".index").await.unwrap().unwrap();
    assert_eq!(served.manifest.commit, COMMIT);
    // Nothing staged is left behind either way.
    let staged = store
        .list(&ObjectKey::new("pages/staged").unwrap())
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
}

/// A tree that counts how often each file is read, and reads its last file otherwise the
/// second time when `fickle`.
#[derive(Debug, Clone)]
struct Counted {
    files: std::sync::Arc<Vec<TreeFile>>,
    reads: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    fickle: bool,
}

impl Counted {
    fn new(files: Vec<TreeFile>, fickle: bool) -> Self {
        Counted {
            reads: std::sync::Arc::new(std::sync::Mutex::new(vec![0; files.len()])),
            files: std::sync::Arc::new(files),
            fickle,
        }
    }

    fn reads(&self) -> Vec<usize> {
        self.reads.lock().unwrap().clone()
    }
}

impl gitcache_pages::site::TreeSource for Counted {
    fn count(&self) -> usize {
        self.files.count()
    }

    fn item(&self, index: usize) -> (&str, gitcache_pages::site::SourceKind<'_>) {
        self.files.item(index)
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, String> {
        let times = {
            let mut reads = self.reads.lock().unwrap();
            reads[index] += 1;
            reads[index]
        };
        let mut content = self.files.read(index)?;
        if self.fickle && index + 1 == self.files.len() && times > 1 {
            content[0] ^= 1;
        }
        Ok(content)
    }
}

/// A deployment reads each file when it needs it and lets it go: once to hash it (a small
/// file, inlined, only then), once more to upload a blob the store lacks, not at all again
/// for one the store has. The site it makes serves every file.
#[tokio::test]
async fn a_deployment_reads_its_files_as_it_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let pages = Pages::new(FsStore::new(dir.path()));
    let files = vec![
        TreeFile::file("a.bin", vec![b'a'; 5000]),
        TreeFile::file("b.bin", vec![b'b'; 7000]),
        TreeFile::file("index.html", b"<h1>home</h1>".to_vec()),
    ];
    let first = Counted::new(files.clone(), false);
    let done = pages
        .deploy("example.org", ".index", COMMIT, "src", first.clone())
        .await
        .unwrap();
    assert_eq!(done.uploaded, 2);
    assert_eq!(first.reads(), [2, 2, 1]);
    let again = Counted::new(files, false);
    let done = pages
        .deploy("example.org", ".index", NEXT, "src", again.clone())
        .await
        .unwrap();
    assert_eq!(done.uploaded, 0);
    assert_eq!(
        again.reads(),
        [1, 1, 1],
        "blobs in the store are not read again"
    );
    let site = pages.site("example.org", ".index").await.unwrap().unwrap();
    for (path, expected) in [("a.bin", vec![b'a'; 5000]), ("b.bin", vec![b'b'; 7000])] {
        let Some(gitcache_pages::manifest::Entry::File(Content::Blob { hash, .. })) =
            site.manifest.entries.get(path)
        else {
            panic!("{path} is a blob");
        };
        assert_eq!(pages.blob(hash).await.unwrap().unwrap().to_vec(), expected);
    }
}

/// A file that reads otherwise when it is uploaded than when it was hashed is not stored
/// under the hash, and nothing is committed.
#[tokio::test]
async fn a_file_read_otherwise_than_hashed_is_not_stored_under_the_hash() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let pages = Pages::new(store.clone());
    let fickle = Counted::new(
        vec![
            TreeFile::file("a.bin", vec![b'a'; 5000]),
            TreeFile::file("b.bin", vec![b'b'; 7000]),
        ],
        true,
    );
    let err = pages
        .deploy("example.org", ".index", COMMIT, "src", fickle)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tree(why) if why.contains("b.bin: changed since it was hashed")),
        "{err}"
    );
    let blobs = store
        .list(&ObjectKey::new("pages/blob").unwrap())
        .await
        .unwrap();
    assert!(blobs.len() <= 1, "only a.bin's blob, if any: {blobs:?}");
    assert!(pages.site("example.org", ".index").await.unwrap().is_none());
}

/// A deployment that would take the store's disk below the free space kept fails before
/// it writes a blob, and commits nothing; a site of inline files only writes its manifest.
#[tokio::test]
async fn a_deployment_keeps_the_free_space_of_the_stores_disk() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    let pages = Pages::new(store.clone()).with_min_free(u64::MAX / 2);
    let err = pages
        .deploy("example.org", ".index", COMMIT, "src", tree(&[b'x'; 5000]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LowDisk {
                needs: 67_108_864,
                ..
            }
        ),
        "{err}"
    );
    let blobs = store
        .list(&ObjectKey::new("pages/blob").unwrap())
        .await
        .unwrap();
    assert!(blobs.is_empty(), "{blobs:?}");
    assert!(pages.site("example.org", ".index").await.unwrap().is_none());
    let done = pages
        .deploy("example.org", ".index", COMMIT, "src", tree(b"small"))
        .await
        .unwrap();
    assert_eq!(done.uploaded, 0);
}
