//! Mirrors shared through an object store: two registries (two instances, each with its own
//! folder) on one store, the filesystem backend and a real S3-compatible server (moto).
//! What one fetched from the upstream, the other takes from the store without fetching.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gitcache_mirror::registry::Registry;
use gitcache_mirror::shared::{Hydrated, MirrorManifest, Published, Shared};
use gitcache_storage::lease::MemoryLeases;
use gitcache_storage::repo::RepoKey;
use gitcache_storage::s3::{S3Config, S3Store};
use gitcache_storage::store::{AnyStore, FsStore, ObjectKey, ObjectStore};
use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::s3::S3Server;
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};
use gitcache_upstream::Upstream as Client;

fn s3(server: &S3Server) -> AnyStore {
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

struct Fleet {
    upstream: Upstream,
    client: Client,
    key: RepoKey,
    a: Arc<Registry>,
    b: Arc<Registry>,
    store: AnyStore,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn fleet(store: AnyStore, grace: Duration, seed: u64) -> Fleet {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/shared"), &RepoSpec::tiny(seed)).unwrap();
    upstream.adopt_repo("acme/shared", Access::Public).unwrap();
    let client = Client::new(
        &upstream.repo_url("acme/shared"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let registry = |dir: &Path| {
        Arc::new(
            Registry::new(dir)
                .with_consolidate_after(2)
                .with_shared(Shared::new(store.clone(), grace)),
        )
    };
    Fleet {
        key: RepoKey::new("127.0.0.1", "acme", "shared").unwrap(),
        a: registry(dirs.0.path()),
        b: registry(dirs.1.path()),
        upstream,
        client,
        store,
        _dirs: dirs,
    }
}

impl Fleet {
    /// A refresh of the mirror by `registry`, in a task of its own.
    fn refreshing(
        &self,
        registry: &Arc<Registry>,
    ) -> tokio::task::JoinHandle<
        Result<gitcache_mirror::mirror::Refreshed, Arc<gitcache_mirror::mirror::Error>>,
    > {
        let (registry, key, client) = (Arc::clone(registry), self.key.clone(), self.client.clone());
        tokio::spawn(async move { registry.refresh(&key, &client, &[]).await })
    }

    /// The upstream's next fetch answered `chunk` bytes at a time, 40 ms apart.
    fn next_fetch_slow(&self, chunk: usize) {
        let every = Duration::from_millis(40);
        let slow = Fault::Trickle { chunk, every };
        self.upstream.inject(slow, 1, Some(RequestKind::Fetch));
    }

    /// Wait until the upstream has counted `fetches` fetches (as each answer starts).
    async fn until_fetched(&self, fetches: usize) {
        let asked = std::time::Instant::now();
        while self.upstream.counts().fetch < fetches {
            assert!(asked.elapsed() < Duration::from_secs(30), "never fetched");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The two instances again, on the same folders and store, sharing leases.
    fn with_leases(mut self) -> Fleet {
        let (first, second) = MemoryLeases::pair();
        let again = |registry: &Arc<Registry>, leases: MemoryLeases| {
            Arc::new(
                Registry::new(registry.root())
                    .with_shared(Shared::new(self.store.clone(), Duration::from_secs(3600)))
                    .with_leases(Arc::new(leases), Duration::from_secs(30)),
            )
        };
        self.a = again(&self.a, first);
        self.b = again(&self.b, second);
        self
    }

    fn refs(&self, registry: &Registry) -> String {
        let mirror = registry.existing(&self.key).expect("a mirror");
        git(mirror.git_dir(), &["show-ref", "--head"])
    }

    fn fsck(&self, registry: &Registry) {
        let mirror = registry.existing(&self.key).expect("a mirror");
        git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    }

    fn packs(&self, registry: &Registry) -> usize {
        let mirror = registry.existing(&self.key).expect("a mirror");
        MirrorManifest::of_local(mirror.git_dir())
            .unwrap()
            .packs
            .len()
    }

    /// Another repository (`RepoSpec::tiny(seed)`) under the upstream's name.
    fn replace_upstream(&self, seed: u64) {
        (self.upstream)
            .replace_repo("acme/shared", &RepoSpec::tiny(seed), Access::Public)
            .unwrap();
    }

    fn upstream_moves(&self, seed: u64) -> String {
        repo::append_commits(&self.upstream.repo_path("acme/shared"), "main", 2, seed).unwrap()
    }

    /// The upstream moves; A refreshes, then consolidates.
    async fn a_refreshes_and_consolidates(&self, seed: u64) {
        self.upstream_moves(seed);
        self.a.refresh(&self.key, &self.client, &[]).await.unwrap();
        self.a
            .consolidate(&self.key)
            .await
            .unwrap()
            .expect("consolidated");
    }

    async fn manifest(&self) -> MirrorManifest {
        Shared::new(self.store.clone(), Duration::ZERO)
            .read(&self.key)
            .await
            .unwrap()
            .expect("a manifest")
            .0
    }
}

/// How many mirrors `registry` drops from now on for their names meaning other
/// repositories.
fn counting_replacements(registry: &Registry) -> Arc<std::sync::Mutex<usize>> {
    let replaced = Arc::new(std::sync::Mutex::new(0usize));
    let noting = Arc::clone(&replaced);
    assert!(registry.on_replaced(move |_| {
        *noting.lock().unwrap() += 1;
        async {}
    }));
    replaced
}

/// A fetches from the upstream; B takes it from the store; the upstream moves, A refreshes,
/// B follows without fetching; consolidation on A reaches B; a purge on A empties B.
async fn two_instances(store: AnyStore) {
    let f = fleet(store, Duration::ZERO, 1301);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.upstream.counts().fetch, 1);
    let manifest = f.manifest().await;
    assert_eq!(manifest.packs.len(), 1);
    assert_eq!(
        manifest.head.as_ref().map(|h| h.to_vec()),
        Some(b"refs/heads/main".to_vec())
    );

    let done = f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.upstream.counts().fetch, 1, "B fetched nothing upstream");
    assert_eq!(done.fetched_objects, 0);
    assert!(done.changed, "B's copy went from nothing to the mirror");
    assert_eq!(f.refs(&f.b), f.refs(&f.a));
    f.fsck(&f.b);

    let tip = f.upstream_moves(1);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.upstream.counts().fetch, 2);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(
        f.upstream.counts().fetch,
        2,
        "B took the new commits from the store"
    );
    assert!(f.refs(&f.b).contains(&tip), "{}", f.refs(&f.b));
    f.fsck(&f.b);
    assert_eq!(f.packs(&f.b), 2);

    // A third pack makes A consolidate (more than two); B's copy follows to one pack, and
    // the old packs, retired with no grace period, are deleted at the next commit.
    f.a_refreshes_and_consolidates(2).await;
    let manifest = f.manifest().await;
    assert_eq!(manifest.packs.len(), 1, "{manifest:?}");
    assert!(
        manifest.packs[0].files.contains(&"bitmap") && manifest.packs[0].files.contains(&"tips"),
        "{manifest:?}"
    );
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.upstream.counts().fetch, 3);
    assert_eq!(f.packs(&f.b), 1);
    // The commit graph is not shared: B writes its own for the pack it took, as it does when
    // it opens a mirror whose packs changed.
    let b_mirror = f.b.existing(&f.key).expect("a mirror");
    assert_eq!(b_mirror.write_missing_graphs().unwrap().len(), 1);
    let b_repo = gitcache_pack::Repository::open(b_mirror.git_dir()).unwrap();
    assert!(b_repo.commits_in_graphs().unwrap() > 0);
    assert_eq!(f.refs(&f.b), f.refs(&f.a));
    f.fsck(&f.b);
    f.upstream_moves(3);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let manifest = f.manifest().await;
    assert_eq!(manifest.packs.len(), 2);
    assert!(manifest.retired.is_empty(), "deleted: {manifest:?}");
    let base = ObjectKey::new("mirrors/127.0.0.1/acme/shared.git/packs").unwrap();
    let listed = f.store.list(&base).await.unwrap();
    for object in &listed {
        let name = object.key.as_str().rsplit('/').next().unwrap();
        assert!(
            manifest.packs.iter().any(|p| name.starts_with(&p.stem)),
            "{name} is named by no manifest"
        );
    }

    // A purge on A: the manifest becomes a tombstone (its packs retired: written moments
    // ago, they wait for the grace period), B drops its copy and fetches anew, and its
    // commit replaces the tombstone and deletes what it retired.
    assert!(f.a.remove(&f.key).await.unwrap());
    let tombstone = f.manifest().await;
    assert!(tombstone.removed && tombstone.packs.is_empty() && tombstone.refs.is_empty());
    assert_eq!(tombstone.retired.len(), 2, "{tombstone:?}");
    let fetches = f.upstream.counts().fetch;
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.upstream.counts().fetch, fetches + 1, "fetched anew");
    f.fsck(&f.b);
    assert_eq!(f.packs(&f.b), 1);
    let manifest = f.manifest().await;
    assert!(
        !manifest.removed && manifest.retired.is_empty(),
        "{manifest:?}"
    );
    let names: Vec<String> = f
        .store
        .list(&base)
        .await
        .unwrap()
        .iter()
        .map(|o| o.key.as_str().rsplit('/').next().unwrap().to_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with(&manifest.packs[0].stem)),
        "{names:?}"
    );

    // A manifest gone altogether (a bucket emptied, a prefix changed) is no removal: copies
    // stay, and the next commit writes it anew.
    f.store
        .delete(&Shared::manifest_key(&f.key).unwrap())
        .await
        .unwrap();
    let before = f.refs(&f.b);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.refs(&f.b), before);
    assert_eq!(
        f.upstream.counts().fetch,
        fetches + 1,
        "nothing fetched again"
    );
    assert_eq!(f.manifest().await.packs.len(), 1);
}

/// A scenario run on both backends: the filesystem, and a bucket of a real S3 server.
macro_rules! on_both_backends {
    ($scenario:ident: $fs:ident, $s3:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $fs() {
            let dir = tempfile::tempdir().unwrap();
            $scenario(AnyStore::Fs(FsStore::new(dir.path()))).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $s3() {
            let Some(server) = S3Server::start("gitcache-mirrors") else {
                return;
            };
            $scenario(s3(&server)).await;
        }
    };
}

on_both_backends!(two_instances:
    two_instances_share_a_mirror_on_the_filesystem_backend,
    two_instances_share_a_mirror_in_a_bucket);

/// With bundles on, consolidation leaves a bundle of the consolidated pack in the store that
/// git itself verifies and clones from, and its URL is handed out (in a bucket; files on disk
/// have none); the manifest stays as instances without bundles read it. The next
/// consolidation bundles the new pack, and the old bundle goes with its pack.
async fn bundles(store: AnyStore) {
    let mut f = fleet(store.clone(), Duration::ZERO, 1321);
    let dir = tempfile::tempdir().unwrap();
    f.a = Arc::new(
        Registry::new(dir.path())
            .with_consolidate_after(2)
            .with_shared(Shared::new(store.clone(), Duration::ZERO).with_bundles(true)),
    );
    let bundle_key = |stem: &str| {
        let base = Shared::manifest_key(&f.key).unwrap();
        ObjectKey::new(
            &base
                .as_str()
                .replace("/manifest", &format!("/packs/{stem}.bundle")),
        )
        .unwrap()
    };
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    let first = f.manifest().await.packs[0].stem.clone();
    assert_eq!(
        store.size(&bundle_key(&first)).await.unwrap(),
        None,
        "none before consolidation"
    );
    assert_eq!(
        f.a.bundle_url(&f.key, Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    f.a.consolidate(&f.key)
        .await
        .unwrap()
        .expect("consolidated");
    let manifest = f.manifest().await;
    assert_eq!(manifest.packs.len(), 1);
    let stem = manifest.packs[0].stem.clone();
    let encoded = String::from_utf8(manifest.encode()).unwrap();
    assert!(
        !encoded.contains("bundle"),
        "the manifest names no bundle: {encoded}"
    );
    let url =
        f.a.bundle_url(&f.key, Duration::from_secs(60))
            .await
            .unwrap();
    match &store {
        AnyStore::S3(_) => {
            let (listed, url) = url.expect("a URL in a bucket");
            assert_eq!(listed, stem);
            assert!(
                url.contains(&format!("{stem}.bundle")) && url.contains("Signature"),
                "{url}"
            );
        }
        _ => assert_eq!(url, None, "files on disk have no URLs"),
    }

    // git takes the bundle as its own.
    let local = dir.path().join("check.bundle");
    assert!(
        store
            .get_file(&bundle_key(&stem), &local, u64::MAX)
            .await
            .unwrap()
    );
    let mirror = f.a.existing(&f.key).unwrap();
    git(
        mirror.git_dir(),
        &["bundle", "verify", &local.to_string_lossy()],
    );
    let listed = git(
        mirror.git_dir(),
        &["bundle", "list-heads", &local.to_string_lossy()],
    );
    assert!(listed.contains("refs/heads/main"), "{listed}");
    assert!(
        !listed.contains("HEAD\n"),
        "branches and tags only: {listed}"
    );
    let cloned = dir.path().join("from-bundle");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            &local.to_string_lossy(),
            &cloned.to_string_lossy(),
        ],
    );
    git(&cloned, &["fsck", "--strict", "--no-progress"]);
    // Asked again: the same bundle, not written twice.
    let written = |store: &AnyStore| {
        let store = store.clone();
        let object = bundle_key(&stem);
        async move {
            let prefix = ObjectKey::new(object.as_str().rsplit_once('/').unwrap().0).unwrap();
            store
                .list(&prefix)
                .await
                .unwrap()
                .into_iter()
                .find(|o| o.key == object)
                .expect("listed")
                .modified
        }
    };
    let before = written(&store).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        Shared::new(store.clone(), Duration::ZERO)
            .bundle(&f.key, mirror.git_dir())
            .await
            .unwrap(),
        Some(stem.clone())
    );
    assert_eq!(written(&store).await, before, "not written again");

    // A's next consolidation bundles the new pack; the old bundle is retired with its pack
    // and, with no grace period, deleted at the next commit.
    f.upstream_moves(5);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.a_refreshes_and_consolidates(6).await;
    let newer = f.manifest().await.packs[0].stem.clone();
    assert_ne!(newer, stem);
    assert!(store.size(&bundle_key(&newer)).await.unwrap().is_some());
    f.upstream_moves(7);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(
        store.size(&bundle_key(&stem)).await.unwrap(),
        None,
        "the retired pack's bundle was deleted with it"
    );
}

on_both_backends!(bundles:
    bundles_follow_consolidation_on_the_filesystem_backend,
    bundles_follow_consolidation_in_a_bucket);

/// Two instances that took the same manifest both refresh: the second to commit conflicts,
/// takes the first's state and commits on it; no ref is lost.
async fn racing_commits(store: AnyStore) {
    let f = fleet(store.clone(), Duration::from_secs(3600), 1302);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let shared = Shared::new(store, Duration::from_secs(3600));
    let b_dir = f.b.path(&f.key);

    // A commits a new state; B's copy still holds the old manifest.
    let tip = f.upstream_moves(4);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    // B's own commit from the old state is refused…
    std::fs::write(
        b_dir.join("packed-refs"),
        b"# pack-refs with: peeled fully-peeled sorted \n",
    )
    .unwrap();
    assert_eq!(
        shared.publish(&f.key, &b_dir).await.unwrap(),
        Published::Conflict
    );
    assert!(
        f.manifest()
            .await
            .refs
            .windows(tip.len())
            .any(|w| w == tip.as_bytes())
    );
    // …and B's refresh takes A's state, then commits on it.
    let tip = f.upstream_moves(5);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let manifest = f.manifest().await;
    assert!(
        manifest
            .refs
            .windows(tip.len())
            .any(|w| w == tip.as_bytes())
    );
    assert_eq!(
        f.refs(&f.b),
        git(
            &f.upstream.repo_path("acme/shared"),
            &["show-ref", "--head"]
        )
    );
    f.fsck(&f.b);
    // What B committed, A takes.
    assert_eq!(
        shared.hydrate(&f.key, &f.a.path(&f.key)).await.unwrap(),
        Hydrated::Current
    );
    assert_eq!(f.refs(&f.a), f.refs(&f.b));
    f.fsck(&f.a);
}

on_both_backends!(racing_commits:
    racing_commits_on_the_filesystem_backend,
    racing_commits_in_a_bucket);

/// Twenty cold refreshes spread over two instances that share leases: one fetches from the
/// upstream, the others wait for its lease and take its result from the store.
async fn cold_refreshes_with_leases(store: AnyStore) {
    let f = fleet(store.clone(), Duration::from_secs(3600), 1304).with_leases();
    f.upstream.inject(
        Fault::Delay(Duration::from_millis(500)),
        1,
        Some(RequestKind::Fetch),
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let registry = Arc::clone(if i % 2 == 0 { &f.a } else { &f.b });
        let (key, client) = (f.key.clone(), f.client.clone());
        tasks.push(tokio::spawn(async move {
            registry.refresh(&key, &client, &[]).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        f.upstream.counts().fetch,
        1,
        "one upstream fetch for twenty callers"
    );
    assert_eq!(f.refs(&f.a), f.refs(&f.b));
    f.fsck(&f.a);
    f.fsck(&f.b);
}

on_both_backends!(cold_refreshes_with_leases:
    cold_refreshes_with_leases_fetch_once_on_the_filesystem_backend,
    cold_refreshes_with_leases_fetch_once_in_a_bucket);

/// A refresh that brings a new mirror from elsewhere says so on the board where a first pack
/// would be announced (a clone waiting for that pack then waits as any fetch): when another
/// instance holds the refresh lease, and when the store holds the mirror.
async fn a_mirror_from_elsewhere_announces_no_pack(store: AnyStore) {
    let f = fleet(store.clone(), Duration::from_secs(3600), 1305).with_leases();
    let told = |registry: &Arc<Registry>| {
        let (registry, key) = (Arc::clone(registry), f.key.clone());
        async move {
            tokio::time::timeout(Duration::from_secs(30), registry.live_pack(&key))
                .await
                .expect("the board says what comes")
        }
    };

    // A holds the refresh lease while its fetch is on its way: the upstream counts the fetch
    // as its answer starts, then sends it slowly.
    f.next_fetch_slow(256);
    let a = f.refreshing(&f.a);
    f.until_fetched(1).await;
    let b = f.refreshing(&f.b);
    assert!(told(&f.b).await.is_none(), "B waits for A's lease");
    assert!(!a.is_finished(), "told while A held the lease");
    // A's own pack is announced on A's board.
    let pack = told(&f.a).await.expect("A fetches the first pack");
    assert_eq!(pack.object_format(), gix_hash::Kind::Sha1);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(
        f.upstream.counts().fetch,
        1,
        "B took A's mirror from the store"
    );
    assert_eq!(f.refs(&f.a), f.refs(&f.b));

    // A third instance with no lease to wait for finds the mirror in the store (its
    // `ls-refs` after the download is slow, so that the refresh is still under way).
    let third = tempfile::tempdir().unwrap();
    let c = Arc::new(
        Registry::new(third.path()).with_shared(Shared::new(store, Duration::from_secs(3600))),
    );
    f.upstream.inject(
        Fault::Delay(Duration::from_millis(1500)),
        1,
        Some(RequestKind::LsRefs),
    );
    let refresh = tokio::spawn({
        let (registry, key, client) = (Arc::clone(&c), f.key.clone(), f.client.clone());
        async move { registry.refresh(&key, &client, &[]).await }
    });
    assert!(
        told(&c).await.is_none(),
        "C takes the mirror from the store"
    );
    refresh.await.unwrap().unwrap();
    assert_eq!(f.upstream.counts().fetch, 1, "nothing fetched again");
    assert_eq!(f.refs(&c), f.refs(&f.a));
    f.fsck(&c);
}

on_both_backends!(a_mirror_from_elsewhere_announces_no_pack:
    a_mirror_from_elsewhere_announces_no_pack_on_the_filesystem_backend,
    a_mirror_from_elsewhere_announces_no_pack_in_a_bucket);

/// Told that the mirror comes from elsewhere, one waiting for the first pack still gets it
/// when the other instance's fetch fails and this one fetches the mirror itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pack_fetched_here_after_the_other_instance_failed_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(
        AnyStore::Fs(FsStore::new(dir.path())),
        Duration::from_secs(3600),
        1306,
    )
    .with_leases();
    // A's fetch is answered after 2.5 s, with an error: its refresh fails, holding the lease
    // till then. (The upstream counts a request once it answers: A's `ls-refs`, which comes
    // just before its fetch, says A holds the lease.)
    for fault in [
        Fault::Delay(Duration::from_millis(2500)),
        Fault::Status(500),
    ] {
        f.upstream.inject(fault, 1, Some(RequestKind::Fetch));
    }
    let a = f.refreshing(&f.a);
    let asked = std::time::Instant::now();
    while f.upstream.counts().ls_refs == 0 {
        assert!(asked.elapsed() < Duration::from_secs(30), "A never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B's own fetch, after A's, comes slowly too: its pack stays announced a while.
    f.next_fetch_slow(1024);
    let b = f.refreshing(&f.b);
    let within = Duration::from_secs(30);
    let told = tokio::time::timeout(within, f.b.live_pack(&f.key)).await;
    assert!(told.expect("told").is_none(), "B waits for A's lease");
    let pack = tokio::time::timeout(within, f.b.announced_pack(&f.key))
        .await
        .expect("B fetches the mirror itself and announces its first pack");
    assert_eq!(pack.object_format(), gix_hash::Kind::Sha1);
    assert!(a.await.unwrap().is_err(), "A's fetch failed");
    b.await.unwrap().unwrap();
    assert_eq!(f.upstream.counts().fetch, 2);
    f.fsck(&f.b);
}

/// Where the filesystem store keeps the fleet's mirror's pack file `stem.ext`.
fn stored_file(fs: &FsStore, stem: &str, ext: &str) -> std::path::PathBuf {
    let key = format!("mirrors/127.0.0.1/acme/shared.git/packs/{stem}.{ext}");
    fs.path_of(&ObjectKey::new(&key).unwrap())
}

/// What the store holds is checked before it reaches a local copy: a tampered manifest or a
/// pack file that is not its pack's is refused, the copy left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_leaves_the_local_copy_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::new(dir.path());
    let store = AnyStore::Fs(fs.clone());
    let f = fleet(store.clone(), Duration::from_secs(3600), 1303);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let before = f.refs(&f.b);
    f.upstream_moves(6);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    let manifest = f.manifest().await;
    // Each try on an instance of its own: one instance does not try a version whose files
    // it could not have again for a while.
    let shared = || Shared::new(store.clone(), Duration::from_secs(3600));
    let b_dir = f.b.path(&f.key);

    // The newest pack's data replaced by the older pack's: its checksum gives it away.
    let (old, new) = (&manifest.packs[0].stem, &manifest.packs[1].stem);
    let path = |stem: &str, ext: &str| stored_file(&fs, stem, ext);
    let refused = |err: gitcache_mirror::shared::Error| {
        assert!(
            err.to_string().contains("does not belong to its pack"),
            "{err}"
        );
    };
    let saved = std::fs::read(path(new, "pack")).unwrap();
    std::fs::copy(path(old, "pack"), path(new, "pack")).unwrap();
    let once = shared();
    refused(once.hydrate(&f.key, &b_dir).await.unwrap_err());
    // Tried again on the same instance, the same manifest is not downloaded again.
    let again = once.hydrate(&f.key, &b_dir).await.unwrap_err();
    assert!(
        matches!(again, gitcache_mirror::shared::Error::FailedLately(_)),
        "{again}"
    );
    assert_eq!(f.refs(&f.b), before);
    f.fsck(&f.b);
    // The same, with a file of a pack the copy had missing there (its reverse index): the
    // file is fetched, the newest pack refused, and of the pack the copy had only the file
    // fetched goes again.
    let local = b_dir.join("objects/pack");
    let had_rev = local.join(format!("{old}.rev"));
    assert!(
        manifest.packs[0].files.contains(&"rev"),
        "{:?}",
        manifest.packs[0].files
    );
    std::fs::remove_file(&had_rev).unwrap();
    refused(shared().hydrate(&f.key, &b_dir).await.unwrap_err());
    for ext in ["pack", "idx"] {
        assert!(local.join(format!("{old}.{ext}")).is_file(), "{ext} kept");
    }
    assert!(!had_rev.exists());
    assert_eq!(f.refs(&f.b), before);
    f.fsck(&f.b);
    std::fs::write(path(new, "pack"), saved).unwrap();
    // One bit flipped in the middle of the index: its own checksum gives it away.
    let saved = std::fs::read(path(new, "idx")).unwrap();
    let mut flipped = saved.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    std::fs::write(path(new, "idx"), &flipped).unwrap();
    refused(shared().hydrate(&f.key, &b_dir).await.unwrap_err());
    assert_eq!(f.refs(&f.b), before);
    std::fs::write(path(new, "idx"), saved).unwrap();

    // A manifest with a ref name git refuses.
    let key = Shared::manifest_key(&f.key).unwrap();
    let read = store.read_manifest(&key).await.unwrap().unwrap();
    let bad = String::from_utf8(read.bytes)
        .unwrap()
        .replace("refs/heads/main", "refs/heads/ma..in");
    store
        .replace_manifest(&key, bad.as_bytes(), Some(&read.version))
        .await
        .unwrap();
    let err = shared().hydrate(&f.key, &b_dir).await.unwrap_err();
    assert!(err.to_string().contains("invalid mirror manifest"), "{err}");
    assert_eq!(f.refs(&f.b), before);
    let leftovers: Vec<_> = std::fs::read_dir(b_dir.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("incoming-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A refresh goes on with the local copy, and its commit replaces the unreadable
    // manifest: one bad write does not cut the instances off from each other for good.
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert!(!f.manifest().await.refs.is_empty());
    assert_eq!(
        f.refs(&f.b),
        git(
            &f.upstream.repo_path("acme/shared"),
            &["show-ref", "--head"]
        )
    );
    // Once the manifest changes, the instance that failed tries again.
    f.upstream_moves(8);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    once.hydrate(&f.key, &b_dir).await.unwrap();
    assert_eq!(f.refs(&f.b), f.refs(&f.a));
}

/// A reverse index is a shortcut, and bitmaps are written again by maintenance: one the
/// store lacks, or one that is not its pack's, is done without, and the pack is taken all
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_index_bitmap_or_tips_the_store_lacks_or_damaged_is_done_without() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::new(dir.path());
    let store = AnyStore::Fs(fs.clone());
    let f = fleet(store.clone(), Duration::from_secs(3600), 1304);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.a_refreshes_and_consolidates(7).await;
    let manifest = f.manifest().await;
    let stem = &manifest.packs[0].stem;
    let shared = Shared::new(store.clone(), Duration::from_secs(3600));
    let b_dir = f.b.path(&f.key);
    for ext in ["rev", "bitmap", "tips"] {
        assert!(manifest.packs[0].files.contains(&ext), "{ext}");
        let stored = stored_file(&fs, stem, ext);
        let local = b_dir.join(format!("objects/pack/{stem}.{ext}"));
        let written = std::fs::read(&stored).unwrap();
        let mut damaged = written.clone();
        if ext == "tips" {
            // Ids, checked only for their form.
            damaged[0] = b'z';
        } else {
            let middle = damaged.len() / 2;
            damaged[middle] ^= 1;
        }
        for (what, bytes) in [("damaged", Some(damaged)), ("missing", None)] {
            match bytes {
                Some(bytes) => std::fs::write(&stored, bytes).unwrap(),
                None => std::fs::remove_file(&stored).unwrap(),
            }
            let _ = std::fs::remove_dir_all(&b_dir);
            shared.hydrate(&f.key, &b_dir).await.unwrap();
            assert!(!local.exists(), "{ext} {what}: not placed");
            for ext in ["pack", "idx"] {
                assert!(b_dir.join(format!("objects/pack/{stem}.{ext}")).is_file());
            }
            git(&b_dir, &["fsck", "--strict", "--no-progress"]);
            assert_eq!(
                git(&b_dir, &["show-ref", "--head"]),
                f.refs(&f.a),
                "{ext} {what}"
            );
        }
        // The tips stay missing from the store.
        if ext != "tips" {
            std::fs::write(&stored, written).unwrap();
        }
    }
    // Written to the store again by another instance, under the same manifest: taken when
    // the copy is next brought up to date.
    let tips = b_dir.join(format!("objects/pack/{stem}.tips"));
    let stored = stored_file(&fs, stem, "tips");
    shared.hydrate(&f.key, &b_dir).await.unwrap();
    assert!(!tips.exists());
    let a_tips = f.a.path(&f.key).join(format!("objects/pack/{stem}.tips"));
    std::fs::copy(&a_tips, &stored).unwrap();
    // Looked for again only some minutes after the last time.
    shared.hydrate(&f.key, &b_dir).await.unwrap();
    assert!(!tips.exists());
    let listed = std::fs::File::options()
        .write(true)
        .open(b_dir.join("gitcache-unshared"))
        .unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    listed.set_modified(hour_ago).unwrap();
    shared.hydrate(&f.key, &b_dir).await.unwrap();
    assert_eq!(
        std::fs::read(&tips).unwrap(),
        std::fs::read(&a_tips).unwrap()
    );
    assert!(!b_dir.join("gitcache-unshared").exists());
    // Without them again: the copy without its tips is maintained, which consolidates it
    // again: the same pack, marked and with its bitmaps; the tips go to the store again,
    // though its manifest named them all along.
    std::fs::remove_file(&stored).unwrap();
    std::fs::remove_dir_all(&b_dir).unwrap();
    shared.hydrate(&f.key, &b_dir).await.unwrap();
    assert!(!tips.exists());
    // Made again wrong: not shared, not committed, and removed to be made again.
    std::fs::write(&tips, "zz\n").unwrap();
    let version = shared.read(&f.key).await.unwrap().unwrap().1;
    assert_eq!(
        shared.publish(&f.key, &b_dir).await.unwrap(),
        Published::Done
    );
    assert!(!tips.exists() && !stored.exists());
    assert_eq!(shared.read(&f.key).await.unwrap().unwrap().1, version);
    assert!(f.b.needs_consolidation(&f.key));
    f.b.consolidate(&f.key).await.unwrap();
    for ext in ["bitmap", "tips"] {
        assert!(
            b_dir.join(format!("objects/pack/{stem}.{ext}")).is_file(),
            "{ext}"
        );
    }
    assert!(!f.b.needs_consolidation(&f.key));
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&tips).unwrap()
    );
    assert_eq!(f.manifest().await.packs, manifest.packs);
    f.fsck(&f.b);

    // A consolidated pack without its tips beside a newer pack is consolidated too.
    std::fs::remove_file(&tips).unwrap();
    f.upstream_moves(8);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.packs(&f.b), 2);
    assert!(f.b.needs_consolidation(&f.key));
    f.b.consolidate(&f.key).await.unwrap();
    assert_eq!(f.packs(&f.b), 1);
    assert!(!f.b.needs_consolidation(&f.key));
    let manifest = f.manifest().await;
    assert!(manifest.packs[0].files.contains(&"tips"));
    f.fsck(&f.b);
}

#[test]
fn manifests_round_trip_and_refuse_what_gitcache_never_writes() {
    let oid = "1".repeat(40);
    let text = format!(
        "gitcache-mirror 1\nformat sha1\nhead refs/heads/main\npack pack-{oid} pack rev idx\nretired pack-{} 17\nrefs\n{oid} refs/heads/main\n{oid} refs/tags/v1\n^{oid}\n",
        "2".repeat(40)
    );
    let manifest = MirrorManifest::decode(text.as_bytes()).unwrap();
    assert_eq!(manifest.packs[0].files, ["pack", "rev", "idx"]);
    assert_eq!(manifest.retired, [(format!("pack-{}", "2".repeat(40)), 17)]);
    assert_eq!(manifest.encode(), text.as_bytes());
    let tombstone =
        format!("gitcache-mirror 1\nformat sha1\nremoved\nretired pack-{oid} 5\nrefs\n");
    let removed = MirrorManifest::decode(tombstone.as_bytes()).unwrap();
    assert!(removed.removed && removed.packs.is_empty() && removed.removed_at == 0);
    assert_eq!(removed.encode(), tombstone.as_bytes());
    let dated = tombstone.replace("removed\n", "removed 1764979200123\n");
    let removed = MirrorManifest::decode(dated.as_bytes()).unwrap();
    assert_eq!(removed.removed_at, 1_764_979_200_123);
    assert_eq!(removed.encode(), dated.as_bytes());
    // Removals counted, in a state and in a tombstone.
    for counted in [text.clone(), dated.clone()] {
        let counted = counted.replace("format sha1\n", "format sha1\nremovals 12\n");
        let manifest = MirrorManifest::decode(counted.as_bytes()).unwrap();
        assert_eq!(manifest.removals, 12);
        assert_eq!(manifest.encode(), counted.as_bytes());
    }
    for bad in [
        "removals 0",
        "removals 01",
        "removals +1",
        "removals x",
        "removals",
    ] {
        let bad = text.replace("format sha1\n", &format!("format sha1\n{bad}\n"));
        assert!(MirrorManifest::decode(bad.as_bytes()).is_err(), "{bad}");
    }
    for misplaced in [
        text.replace("format sha1\n", "format sha1\nremovals 1\nremovals 2\n"),
        text.replace("\nrefs\n", "\nremovals 1\nrefs\n"),
        dated.replace("retired", "removals 1\nretired"),
    ] {
        assert!(
            MirrorManifest::decode(misplaced.as_bytes()).is_err(),
            "{misplaced}"
        );
    }
    for bad in [
        "removed 0",
        "removed 01",
        "removed +1",
        "removed -1",
        "removed x",
        "removed  1",
    ] {
        let bad = tombstone.replace("removed", bad);
        assert!(MirrorManifest::decode(bad.as_bytes()).is_err(), "{bad}");
    }
    for (from, to) in [
        ("gitcache-mirror 1", "gitcache-mirror 2"),
        ("format sha1", "format md5"),
        (" pack rev idx", " rev idx"),
        (" pack rev idx", " pack idx rev"),
        (" pack rev idx", " pack rev idx idx"),
        (" pack rev idx", " pack ../x idx"),
        ("pack-1111", "pack-../1"),
        ("head refs/heads/main", "head HEAD"),
        ("refs/tags/v1", "refs/heads/a"),
        ("refs/tags/v1\n^", "refs/tags/v1\n^^"),
        ("\nrefs\n", "\nrefz\n"),
        ("retired pack-2222", "retired pack-zzzz"),
        ("refs/tags/v1\n^", "refs/tags/v1\r\n^"),
        ("format sha1\n", "format sha1\nremoved\n"),
    ] {
        let bad = text.replacen(from, to, 1);
        assert_ne!(bad, text, "{from}");
        assert!(MirrorManifest::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}

/// A copy that took no state from the store (made before the store was used, or alone while
/// it was out of reach) and is older than a purge is dropped, never committed over the
/// tombstone: it would bring back what was purged, to every instance. The refresh fetches
/// anew, from nothing, and that new copy replaces the tombstone. A copy without a creation
/// stamp (from an older gitcache) counts as older than any purge that says when it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_older_than_a_purge_is_dropped_not_committed_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(
        AnyStore::Fs(FsStore::new(dir.path())),
        Duration::from_secs(3600),
        1461,
    );
    for unstamped in [false, true] {
        f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
        f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
        // B's copy as one that took nothing from the store.
        let git_dir = f.b.existing(&f.key).unwrap().git_dir().to_owned();
        std::fs::remove_file(git_dir.join("gitcache-manifest")).unwrap();
        if unstamped {
            std::fs::remove_file(git_dir.join("gitcache-created")).unwrap();
        }
        let created = gitcache_mirror::mirror::created_at(&git_dir);
        assert_eq!(created.is_none(), unstamped);
        assert!(f.a.remove(&f.key).await.unwrap());
        let tombstone = f.manifest().await;
        assert!(tombstone.removed && tombstone.removed_at >= created.unwrap_or(0));
        let fetches = f.upstream.counts().fetch;
        f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
        assert_eq!(
            f.upstream.counts().fetch,
            fetches + 1,
            "fetched anew (unstamped: {unstamped})"
        );
        let git_dir = f.b.existing(&f.key).unwrap().git_dir().to_owned();
        let created = gitcache_mirror::mirror::created_at(&git_dir).expect("stamped");
        assert!(created >= tombstone.removed_at, "a new copy");
        let manifest = f.manifest().await;
        assert!(!manifest.removed, "{manifest:?}");
        f.fsck(&f.b);
    }
    // A purge stamped by a clock an hour ahead of B's: B's new copy, made after B dropped the
    // older one for that very tombstone, is newer than it whatever the stamps say, and is
    // committed, not dropped and fetched again and again.
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert!(f.a.remove(&f.key).await.unwrap());
    let manifest_key = Shared::manifest_key(&f.key).unwrap();
    let stored = f.store.read_manifest(&manifest_key).await.unwrap().unwrap();
    let mut ahead = MirrorManifest::decode(&stored.bytes).unwrap();
    ahead.removed_at += 3_600_000;
    f.store
        .replace_manifest(&manifest_key, &ahead.encode(), Some(&stored.version))
        .await
        .unwrap();
    let fetches = f.upstream.counts().fetch;
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(f.upstream.counts().fetch, fetches + 1, "fetched anew, once");
    assert!(!f.manifest().await.removed);
}

/// A copy dropped because the store says its mirror was removed elsewhere (a purge on
/// another instance) is told of, both ways a copy catches up: so that a server drops what
/// else it keeps of it (its stored answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_dropped_for_a_removal_elsewhere_is_told_of() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(
        AnyStore::Fs(FsStore::new(dir.path())),
        Duration::from_secs(3600),
        1462,
    );
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let telling = std::sync::Arc::clone(&told);
    assert!(f.b.on_removed_elsewhere(move |key| telling.lock().unwrap().push(key.clone())));
    for download in [false, true] {
        f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
        f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
        assert!(f.a.remove(&f.key).await.unwrap());
        match download {
            false => f.b.catch_up_removal(&f.key).await.unwrap(),
            true => f.b.catch_up(&f.key).await.unwrap(),
        }
        assert!(
            f.b.existing(&f.key).is_none(),
            "dropped (download: {download})"
        );
        assert_eq!(told.lock().unwrap().pop(), Some(f.key.clone()));
    }
}

/// Files under a mirror's packs that no manifest names (an upload cut short by a crash) are
/// collected once older than the grace period (and the clock margin), not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_files_are_collected_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::new(dir.path());
    let f = fleet(AnyStore::Fs(fs.clone()), Duration::ZERO, 1305);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    let stray = |name: &str| {
        fs.path_of(
            &ObjectKey::new(&format!("mirrors/127.0.0.1/acme/shared.git/packs/{name}")).unwrap(),
        )
    };
    let (old, young) = (
        stray(&format!("pack-{}.pack", "a".repeat(40))),
        stray(&format!("pack-{}.pack", "b".repeat(40))),
    );
    std::fs::write(&old, b"cut short long ago").unwrap();
    // Everything there (the named files too) written long ago, but for one stray.
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3 * 3600);
    for entry in std::fs::read_dir(old.parent().unwrap()).unwrap() {
        std::fs::File::options()
            .write(true)
            .open(entry.unwrap().path())
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    std::fs::write(&young, b"being uploaded now").unwrap();
    let shared = Shared::new(AnyStore::Fs(fs.clone()), Duration::ZERO);
    assert_eq!(shared.collect(&f.key).await.unwrap(), 1);
    assert!(!old.exists());
    assert!(
        young.exists(),
        "within the clock margin: an upload may be under way"
    );
    // Named files are never collected, however old.
    f.fsck(&f.a);
    assert!(
        shared
            .hydrate(&f.key, &f.b.path(&f.key))
            .await
            .is_ok_and(|h| h == Hydrated::Current)
    );
    f.fsck(&f.b);
}

/// A SHA-256 mirror's bundle is a version 3 bundle that names its object format, and git
/// clones a SHA-256 repository from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_mirror_is_bundled_as_version_3() {
    let upstream = Upstream::start().unwrap();
    repo::generate(
        &upstream.repo_path("acme/wide"),
        &RepoSpec::tiny(1322).sha256(),
    )
    .unwrap();
    upstream.adopt_repo("acme/wide", Access::Public).unwrap();
    let client = Client::new(
        &upstream.repo_url("acme/wide"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let (dirs, store_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = AnyStore::Fs(FsStore::new(store_dir.path()));
    let registry = Registry::new(dirs.path())
        .with_shared(Shared::new(store.clone(), Duration::ZERO).with_bundles(true));
    let key = RepoKey::new("127.0.0.1", "acme", "wide").unwrap();
    registry.refresh(&key, &client, &[]).await.unwrap();
    registry
        .consolidate(&key)
        .await
        .unwrap()
        .expect("consolidated");
    let mirror = registry.existing(&key).unwrap();
    let stem = Shared::new(store.clone(), Duration::ZERO)
        .bundle(&key, mirror.git_dir())
        .await
        .unwrap()
        .expect("a bundle");
    let base = Shared::manifest_key(&key).unwrap();
    let object = ObjectKey::new(
        &base
            .as_str()
            .replace("/manifest", &format!("/packs/{stem}.bundle")),
    )
    .unwrap();
    let local = dirs.path().join("wide.bundle");
    assert!(store.get_file(&object, &local, u64::MAX).await.unwrap());
    let bytes = std::fs::read(&local).unwrap();
    assert!(
        bytes.starts_with(b"# v3 git bundle\n@object-format=sha256\n"),
        "{:?}",
        String::from_utf8_lossy(&bytes[..60])
    );
    let cloned = dirs.path().join("from-bundle");
    git(
        dirs.path(),
        &[
            "clone",
            "-q",
            &local.to_string_lossy(),
            &cloned.to_string_lossy(),
        ],
    );
    assert_eq!(
        git(&cloned, &["rev-parse", "--show-object-format"]).trim(),
        "sha256"
    );
    git(&cloned, &["fsck", "--strict", "--no-progress"]);
}

/// One instance at a time maintains a shared mirror: while another holds its maintain
/// lease, consolidation is left to that one (nothing changes here); once the lease is free,
/// consolidation runs. Retired packs stay in the store for the grace period, so that
/// instances still reading the manifest that named them find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_maintainer_at_a_time_and_retired_packs_stay_for_the_grace_period() {
    use gitcache_storage::lease::Held;
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Fs(FsStore::new(dir.path()));
    let grace = Duration::from_secs(3600);
    let mut f = fleet(store.clone(), grace, 1305);
    let (first, second) = MemoryLeases::pair();
    let root = f.a.root().to_owned();
    f.a = Arc::new(
        Registry::new(root)
            .with_consolidate_after(2)
            .with_shared(Shared::new(store.clone(), grace))
            .with_leases(Arc::new(first), Duration::from_secs(30)),
    );
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    for seed in [11, 12] {
        f.upstream_moves(seed);
        f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    }
    let before = f.manifest().await;
    assert_eq!(before.packs.len(), 3);

    // Another instance maintains it: nothing is done here.
    let name = format!("maintain:{}", f.key.relative_path().display());
    let other = Held::try_take(Arc::new(second), name, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the other instance's lease");
    assert!(
        f.a.consolidate(&f.key).await.unwrap().is_none(),
        "left to the holder"
    );
    assert_eq!(f.manifest().await.packs, before.packs);

    // Free again: consolidated, the old packs retired but still in the store.
    other.release().await;
    f.a.consolidate(&f.key)
        .await
        .unwrap()
        .expect("consolidated");
    let after = f.manifest().await;
    assert_eq!(after.packs.len(), 1);
    let retired: Vec<&String> = after.retired.iter().map(|(stem, _)| stem).collect();
    for pack in &before.packs {
        assert!(retired.contains(&&pack.stem), "{} retired", pack.stem);
        let base = Shared::manifest_key(&f.key).unwrap();
        let object = ObjectKey::new(
            &base
                .as_str()
                .replace("/manifest", &format!("/packs/{}.pack", pack.stem)),
        )
        .unwrap();
        assert!(
            store.size(&object).await.unwrap().is_some(),
            "{} kept for the grace period",
            pack.stem
        );
    }
}

/// The upstream's `main` gains a commit holding one file of `len` random bytes (whose pack
/// takes a while to copy and check).
fn commit_big_file(repo: &Path, len: usize, seed: u64) {
    let file = repo.join(format!("big-{seed}.bin"));
    std::fs::write(&file, repo::Rng::new(seed).bytes(len)).unwrap();
    let blob = git(repo, &["hash-object", "-w", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let mut mktree = std::process::Command::new("git")
        .args(["mktree"])
        .current_dir(repo)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let entry = format!("100644 blob {}\tbig-{seed}.bin\n", blob.trim());
    std::io::Write::write_all(&mut mktree.stdin.take().unwrap(), entry.as_bytes()).unwrap();
    let tree = String::from_utf8(mktree.wait_with_output().unwrap().stdout).unwrap();
    let commit = git(
        repo,
        &[
            "commit-tree",
            tree.trim(),
            "-p",
            "main",
            "-m",
            &format!("big {seed}"),
        ],
    );
    git(repo, &["update-ref", "refs/heads/main", commit.trim()]);
}

/// Packs the store brings are found all at once, once every file of each is in place: a
/// pack found (its index in place) while another is still on its way could name history
/// that is not there yet, and a fetch judged a hit would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_from_the_store_are_found_together_once_all_are_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Fs(FsStore::new(dir.path()));
    let f = fleet(store.clone(), Duration::from_secs(3600), 1404);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let upstream = f.upstream.repo_path("acme/shared");
    for seed in [1, 2, 3] {
        commit_big_file(&upstream, 8 << 20, seed);
        f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    }
    let b_dir = f.b.path(&f.key);
    let local = b_dir.join("objects/pack");
    let new: Vec<String> = f
        .manifest()
        .await
        .packs
        .into_iter()
        .map(|p| p.stem)
        .filter(|stem| !local.join(format!("{stem}.idx")).is_file())
        .collect();
    assert_eq!(new.len(), 3, "three packs for B to take");

    // Watch B's pack folder while it takes them: no new pack's index before every new
    // pack's data is in.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, local, new) = (Arc::clone(&stop), local.clone(), new.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                looks += 1;
                let has = |name: String| local.join(name).is_file();
                let found = new.iter().filter(|s| has(format!("{s}.idx"))).count();
                let whole = new.iter().all(|s| has(format!("{s}.pack")));
                if found > 0 && !whole {
                    return Err(format!("{found} found before every pack was in"));
                }
            }
            Ok(looks)
        })
    };
    let hydrated = Shared::new(store.clone(), Duration::from_secs(3600))
        .hydrate(&f.key, &b_dir)
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let looks = watcher.join().unwrap().unwrap();
    assert!(looks > 10, "the folder was looked at while the packs came");
    assert!(matches!(hydrated, Ok(Hydrated::Current)), "{hydrated:?}");
    f.fsck(&f.b);
}

/// The repository behind a shared mirror's name replaced by another (its refs share no
/// history with the mirror's): the instance that finds it drops its copy, leaves a tombstone
/// in the store, is told (`on_replaced`, to drop its stored answers) and fetches the new
/// repository from nothing, committed over the tombstone. The other instance, which never
/// sees the tombstone, finds from the count of removals in the new state that its copy
/// predates one: it drops it, is told as at a removal elsewhere, and takes the new state
/// without fetching. Neither keeps an object of the old repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_replaced_behind_its_name_is_dropped_by_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(
        AnyStore::Fs(FsStore::new(dir.path())),
        Duration::from_secs(3600),
        1481,
    );
    let replaced = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noting = Arc::clone(&replaced);
    assert!(f.a.on_replaced(move |key| {
        let noting = Arc::clone(&noting);
        let key = key.clone();
        async move { noting.lock().unwrap().push(key) }
    }));
    let removed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noting = Arc::clone(&removed);
    assert!(f.b.on_removed_elsewhere(move |key| noting.lock().unwrap().push(key.clone())));
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let source = f.upstream.repo_path("acme/shared");
    let old_main = git(&source, &["rev-parse", "main"]).trim().to_owned();

    f.replace_upstream(1482);
    let fetches = f.upstream.counts().fetch;
    let done = f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert!(done.replaced && done.changed, "{done:?}");
    assert_eq!(
        f.upstream.counts().fetch,
        fetches + 2,
        "the pack refused, then the repository from nothing"
    );
    assert_eq!(*replaced.lock().unwrap(), vec![f.key.clone()]);
    let shown = |registry: &Registry| {
        let mirror = registry.existing(&f.key).expect("a mirror");
        std::process::Command::new("git")
            .args(["cat-file", "-e", &old_main])
            .current_dir(mirror.git_dir())
            .status()
            .unwrap()
            .success()
    };
    assert!(!shown(&f.a), "A keeps nothing of the old repository");
    assert_eq!(
        f.refs(&f.a),
        git(&source, &["show-ref", "--head"]),
        "and mirrors the new one"
    );
    f.fsck(&f.a);
    let manifest = f.manifest().await;
    assert!(!manifest.removed && manifest.removals == 1, "{manifest:?}");

    assert!(shown(&f.b), "B still has its copy");
    f.b.catch_up(&f.key).await.unwrap();
    assert_eq!(*removed.lock().unwrap(), vec![f.key.clone()]);
    assert!(!shown(&f.b), "B dropped it");
    assert_eq!(f.refs(&f.b), f.refs(&f.a), "and took the new state");
    f.fsck(&f.b);
    assert_eq!(f.upstream.counts().fetch, fetches + 2, "without fetching");
    // The next refresh on B finds it current: nothing dropped, nothing fetched.
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert_eq!(removed.lock().unwrap().len(), 1);
    assert_eq!(f.upstream.counts().fetch, fetches + 2);
}

/// A replacement found while the store cannot take the tombstone leaves the copy as it was
/// (dropped alone, it would be made again from the store's state, the old repository's) and
/// fails the refresh; the next one, with the store back, drops it. A tombstone for a found
/// replacement is written only over the state the copy took: over another instance's later
/// commit (perhaps its own replacement's), nothing is written, and the copy takes that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_is_committed_only_over_the_state_the_copy_took() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::new(dir.path());
    let f = fleet(AnyStore::Fs(fs.clone()), Duration::from_secs(3600), 1491);
    let replaced = counting_replacements(&f.a);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let old_refs = f.refs(&f.a);
    f.replace_upstream(1492);

    // The manifest cannot be read (too large), nor replaced.
    let manifest = fs.path_of(&Shared::manifest_key(&f.key).unwrap());
    let kept = std::fs::read(&manifest).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)
        .unwrap();
    file.set_len(gitcache_storage::store::MAX_MANIFEST + 1)
        .unwrap();
    drop(file);
    let err = f.a.refresh(&f.key, &f.client, &[]).await.unwrap_err();
    assert!(
        matches!(*err, gitcache_mirror::mirror::Error::Shared(_)),
        "{err}"
    );
    assert_eq!(f.refs(&f.a), old_refs, "the copy stays as it was");
    assert_eq!(*replaced.lock().unwrap(), 0, "nothing else dropped");
    std::fs::write(&manifest, &kept).unwrap();

    // Another instance's state over the one B took: B's tombstone is not written.
    let b_dir = f.b.path(&f.key);
    let shared = Shared::new(f.store.clone(), Duration::from_secs(3600));
    let done = f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    assert!(done.replaced, "{done:?}");
    assert_eq!(*replaced.lock().unwrap(), 1);
    let committed = f.manifest().await;
    assert!(!committed.removed && committed.removals == 1);
    assert!(shared.remove_taken(&f.key, &b_dir).await.unwrap().is_none());
    assert_eq!(f.manifest().await, committed, "nothing written");
    // Over the state the copy took, it is.
    let a_dir = f.a.path(&f.key);
    assert!(shared.remove_taken(&f.key, &a_dir).await.unwrap().is_some());
    let tombstone = f.manifest().await;
    assert!(
        tombstone.removed && tombstone.removals == 2,
        "{tombstone:?}"
    );
}

/// Another instance commits a state of the old repository while this one finds the
/// replacement: no tombstone is written over that state. The copy is dropped, that state
/// taken and checked in turn, found replaced too, tombstoned, and the repository fetched
/// anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_committed_while_a_replacement_is_found_is_checked_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::new(dir.path());
    let f = fleet(AnyStore::Fs(fs.clone()), Duration::from_secs(3600), 1501);
    let replaced = counting_replacements(&f.a);
    f.a.refresh(&f.key, &f.client, &[]).await.unwrap();
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    // B's later state of the old repository, committed (below) only once A has taken the
    // store's state for its refresh.
    let manifest = fs.path_of(&Shared::manifest_key(&f.key).unwrap());
    let taken_by_a = std::fs::read(&manifest).unwrap();
    let old_main = f.upstream_moves(1502);
    f.b.refresh(&f.key, &f.client, &[]).await.unwrap();
    let later = std::fs::read(&manifest).unwrap();
    assert_ne!(later, taken_by_a);
    std::fs::write(&manifest, &taken_by_a).unwrap();

    let source = f.upstream.repo_path("acme/shared");
    f.replace_upstream(1503);
    // A client that asks for the object format first: once it has its answer, A has taken
    // the store's state; the listing after it waits long enough for B's commit to land.
    let client = Client::new(
        &f.upstream.repo_url("acme/shared"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let advertised = f.upstream.counts().info_refs;
    f.upstream.inject(
        Fault::Delay(Duration::from_secs(3)),
        1,
        Some(RequestKind::LsRefs),
    );
    let refreshing = {
        let (registry, key) = (Arc::clone(&f.a), f.key.clone());
        tokio::spawn(async move { registry.refresh(&key, &client, &[]).await })
    };
    let asked = std::time::Instant::now();
    while f.upstream.counts().info_refs == advertised {
        assert!(asked.elapsed() < Duration::from_secs(30), "never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&manifest, &later).unwrap();
    let done = refreshing.await.unwrap().unwrap();
    assert!(done.replaced, "{done:?}");
    assert_eq!(
        *replaced.lock().unwrap(),
        2,
        "A's copy, then B's state taken"
    );
    let committed = f.manifest().await;
    assert!(
        !committed.removed && committed.removals == 1,
        "{committed:?}"
    );
    assert_eq!(f.refs(&f.a), git(&source, &["show-ref", "--head"]));
    let mirror = f.a.existing(&f.key).unwrap();
    let has_old = std::process::Command::new("git")
        .args(["cat-file", "-e", old_main.trim()])
        .current_dir(mirror.git_dir())
        .status()
        .unwrap()
        .success();
    assert!(
        !has_old,
        "nothing of B's state of the old repository is kept"
    );
    f.fsck(&f.a);
}
