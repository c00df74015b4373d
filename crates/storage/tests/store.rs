//! One suite for every storage backend: what mirrors and stored responses rely on. The
//! filesystem backend runs it here; an object-store backend runs the same functions.

use gitcache_storage::s3::{S3Config, S3Store};
use gitcache_storage::store::{FsStore, ObjectKey, ObjectStore, Replaced, StoreError, Version};
use gitcache_testkit::s3::S3Server;

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

/// The check a server runs before it shares a store passes, and leaves nothing behind.
async fn conditional_writes(store: &impl ObjectStore) {
    let probe = key("health/conditional-1");
    gitcache_storage::store::check_conditional_writes(store, &probe)
        .await
        .unwrap();
    assert_eq!(store.read_manifest(&probe).await.unwrap(), None);
}

/// A store that takes every conditional write as if its condition held, as some
/// S3-compatible servers do.
#[derive(Debug)]
struct Unconditional(FsStore);

impl ObjectStore for Unconditional {
    async fn put_file_after(
        &self,
        key: &ObjectKey,
        head: &[u8],
        from: &std::path::Path,
    ) -> Result<(), StoreError> {
        self.0.put_file_after(key, head, from).await
    }
    async fn get_file_admitted(
        &self,
        key: &ObjectKey,
        to: &std::path::Path,
        limit: u64,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<bool, StoreError> {
        self.0.get_file_admitted(key, to, limit, admit).await
    }
    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get_bytes(key, limit).await
    }
    async fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<gitcache_storage::store::ByteStream>, StoreError> {
        self.0.read_range(key, range).await
    }
    async fn size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        self.0.size(key).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    async fn list(
        &self,
        prefix: &ObjectKey,
    ) -> Result<Vec<gitcache_storage::store::Listed>, StoreError> {
        self.0.list(prefix).await
    }
    async fn read_manifest(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<gitcache_storage::store::Manifest>, StoreError> {
        self.0.read_manifest(key).await
    }
    async fn manifest_version(&self, key: &ObjectKey) -> Result<Option<Version>, StoreError> {
        self.0.manifest_version(key).await
    }
    async fn replace_manifest(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        _expected: Option<&Version>,
    ) -> Result<Replaced, StoreError> {
        let current = self.0.manifest_version(key).await?;
        self.0.replace_manifest(key, bytes, current.as_ref()).await
    }
}

/// The check deletes probes an earlier check left behind (cut short) once they are an hour
/// old, and nothing else.
#[tokio::test]
async fn old_probes_are_swept_by_the_next_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    for name in ["conditional-old", "conditional-new", "other"] {
        let probe = key(&format!("health/{name}"));
        store.replace_manifest(&probe, b"x", None).await.unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(store.path_of(&key("health/conditional-old")))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    gitcache_storage::store::check_conditional_writes(&store, &key("health/conditional-2"))
        .await
        .unwrap();
    let left: Vec<String> = store
        .list(&key("health"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key.as_str().to_owned())
        .collect();
    assert_eq!(left, ["health/conditional-new", "health/other"]);
}

/// A store that ignores the conditions of its writes is found out, and the check's object
/// does not stay.
#[tokio::test]
async fn a_store_ignoring_conditions_is_found_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Unconditional(FsStore::new(dir.path()));
    let probe = key("health/conditional-1");
    let err = gitcache_storage::store::check_conditional_writes(&store, &probe)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("If-None-Match"), "{err}");
    assert_eq!(store.read_manifest(&probe).await.unwrap(), None);
}

/// The bytes `range` of `key`, read piece by piece.
async fn read_range(
    store: &impl ObjectStore,
    key: &ObjectKey,
    range: std::ops::Range<u64>,
) -> Vec<u8> {
    let mut pieces = store.read_range(key, range).await.unwrap().unwrap();
    let mut read = Vec::new();
    let mut count = 0;
    while let Some(piece) = futures_util::StreamExt::next(&mut pieces).await {
        read.extend_from_slice(&piece.unwrap());
        count += 1;
    }
    assert!(read.len() <= (count << 20), "pieces of at most a MiB");
    read
}

/// Objects: put from a file, read back whole and into a file, listed by prefix, deleted; a
/// second put of the same key replaces it whole.
async fn objects(store: &impl ObjectStore, scratch: &std::path::Path) {
    let source = scratch.join("pack");
    std::fs::write(&source, b"an earlier version").unwrap();
    let pack = key("mirrors/h/acme/widgets/pack-1.pack");
    store.put_file(&pack, &source).await.unwrap();
    std::fs::write(&source, b"PACK and some bytes").unwrap();
    store.put_file(&pack, &source).await.unwrap();
    assert_eq!(
        store.get_bytes(&pack, 1 << 20).await.unwrap().unwrap(),
        b"PACK and some bytes",
        "written again, whole"
    );
    assert!(matches!(
        store.get_bytes(&pack, 4).await,
        Err(StoreError::TooLarge { .. })
    ));
    let copy = scratch.join("local/copy.pack");
    assert!(store.get_file(&pack, &copy, u64::MAX).await.unwrap());
    assert_eq!(std::fs::read(&copy).unwrap(), b"PACK and some bytes");
    assert!(
        !store
            .get_file(&key("mirrors/none"), &copy, u64::MAX)
            .await
            .unwrap()
    );
    let bundle = key("mirrors/h/acme/bundled/pack-1.bundle");
    store
        .put_file_after(&bundle, b"# v2 git bundle\n\n", &source)
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes(&bundle, 1 << 20).await.unwrap().unwrap(),
        b"# v2 git bundle\n\nPACK and some bytes",
        "the head, then the file"
    );
    assert_eq!(store.size(&bundle).await.unwrap(), Some(36));
    // Parts of it, in pieces; fewer bytes where the object ends first.
    for (range, want) in [
        (0..36, &b"# v2 git bundle\n\nPACK and some bytes"[..]),
        (17..21, b"PACK"),
        (26..100, b"some bytes"),
        (5..5, b""),
    ] {
        let read = read_range(store, &bundle, range.clone()).await;
        assert_eq!(read, want, "{range:?}");
    }
    assert!(
        store
            .read_range(&key("mirrors/none"), 0..4)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.size(&key("mirrors/none")).await.unwrap(), None);
    let refused = scratch.join("local/refused.pack");
    assert!(matches!(
        store.get_file(&pack, &refused, 4).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(
        !refused.exists(),
        "nothing written for an object over the limit"
    );
    // Asked with its size before anything is written: refused, nothing written; admitted,
    // copied.
    let size = store.size(&pack).await.unwrap().unwrap();
    let asked = std::sync::Mutex::new(Vec::new());
    let refuse = |size: u64| {
        asked.lock().unwrap().push(size);
        false
    };
    assert!(matches!(
        store.get_file_admitted(&pack, &refused, u64::MAX, &refuse).await,
        Err(StoreError::NotAdmitted { size: s, .. }) if s == size
    ));
    assert!(
        !refused.exists(),
        "nothing written for an object not admitted"
    );
    assert!(
        store
            .get_file_admitted(&pack, &refused, u64::MAX, &|s| s == size)
            .await
            .unwrap()
    );
    assert_eq!(std::fs::metadata(&refused).unwrap().len(), size);
    assert_eq!(*asked.lock().unwrap(), [size]);
    std::fs::remove_file(&refused).unwrap();
    assert_eq!(
        store.get_bytes(&key("mirrors/none"), 10).await.unwrap(),
        None
    );

    let index = key("mirrors/h/acme/widgets/pack-1.idx");
    store.put_file(&index, &source).await.unwrap();
    let twin = key("mirrors/h/acme/widgets-2/pack-1.pack");
    store.put_file(&twin, &source).await.unwrap();
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let listed = store.list(&key("mirrors/h/acme/widgets")).await.unwrap();
    // When each was written: what collecting unnamed objects after a grace period goes by.
    assert!(listed.iter().all(|l| l.modified > before), "{listed:?}");
    let listed: Vec<(String, u64)> = listed
        .into_iter()
        .map(|l| (l.key.as_str().to_owned(), l.size))
        .collect();
    assert_eq!(
        listed,
        [
            ("mirrors/h/acme/widgets/pack-1.idx".to_owned(), 19),
            ("mirrors/h/acme/widgets/pack-1.pack".to_owned(), 19),
        ],
        "whole segments only: widgets-2 is another prefix"
    );
    assert!(store.list(&key("nothing/here")).await.unwrap().is_empty());
    assert!(
        store.list(&pack).await.unwrap().is_empty(),
        "an object is not its own prefix"
    );

    store.delete(&pack).await.unwrap();
    store.delete(&pack).await.unwrap();
    assert_eq!(store.get_bytes(&pack, 100).await.unwrap(), None);
    assert_eq!(
        store
            .list(&key("mirrors/h/acme/widgets"))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Manifests: created only where there is none, replaced only from the version read.
async fn manifests(store: &impl ObjectStore) {
    let manifest = key("mirrors/h/acme/widgets/manifest");
    assert_eq!(store.read_manifest(&manifest).await.unwrap(), None);
    assert_eq!(store.manifest_version(&manifest).await.unwrap(), None);
    let Replaced::Done(first) = store
        .replace_manifest(&manifest, b"one", None)
        .await
        .unwrap()
    else {
        panic!("created");
    };
    assert_eq!(
        store
            .replace_manifest(&manifest, b"again", None)
            .await
            .unwrap(),
        Replaced::Conflict,
        "created already"
    );
    let read = store.read_manifest(&manifest).await.unwrap().unwrap();
    assert_eq!(
        (read.bytes.as_slice(), &read.version),
        (&b"one"[..], &first)
    );
    // The version alone, without the content, is the same.
    assert_eq!(
        store.manifest_version(&manifest).await.unwrap(),
        Some(first.clone())
    );
    let Replaced::Done(second) = store
        .replace_manifest(&manifest, b"two", Some(&first))
        .await
        .unwrap()
    else {
        panic!("replaced from the version read");
    };
    assert_ne!(first, second);
    assert_eq!(
        store
            .replace_manifest(&manifest, b"stale", Some(&first))
            .await
            .unwrap(),
        Replaced::Conflict
    );
    assert_eq!(
        store
            .replace_manifest(&manifest, b"made up", Some(&Version("x".into())))
            .await
            .unwrap(),
        Replaced::Conflict
    );
    assert_eq!(
        store.read_manifest(&manifest).await.unwrap().unwrap().bytes,
        b"two"
    );
    store.delete(&manifest).await.unwrap();
    assert_eq!(
        store
            .replace_manifest(&manifest, b"three", Some(&second))
            .await
            .unwrap(),
        Replaced::Conflict,
        "removed meanwhile"
    );
}

/// Writers racing from one version: in every round exactly one commits.
/// `n` writers started at once, each replacing `manifest` from `version` in `round`.
fn writers_from<S: ObjectStore + Clone + 'static>(
    store: &S,
    manifest: &ObjectKey,
    version: &gitcache_storage::store::Version,
    round: usize,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Replaced>> {
    (0..n)
        .map(|writer| {
            let (store, manifest, version) = (store.clone(), manifest.clone(), version.clone());
            tokio::spawn(async move {
                let bytes = format!("round {round} by {writer}");
                store
                    .replace_manifest(&manifest, bytes.as_bytes(), Some(&version))
                    .await
                    .unwrap()
            })
        })
        .collect()
}

async fn racing_writers<S: ObjectStore + Clone + 'static>(store: &S) {
    let manifest = key("race/manifest");
    let Replaced::Done(mut version) = store
        .replace_manifest(&manifest, b"round 0", None)
        .await
        .unwrap()
    else {
        panic!("created");
    };
    for round in 1..=20 {
        let tasks = writers_from(store, &manifest, &version, round, 16);
        let mut winners = Vec::new();
        for task in tasks {
            if let Replaced::Done(v) = task.await.unwrap() {
                winners.push(v);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        version = winners.pop().unwrap();
        let read = store.read_manifest(&manifest).await.unwrap().unwrap();
        assert_eq!(read.version, version);
    }
}

/// A manifest deleted while writers replace it from the version they read stays deleted:
/// a replacement either lands before the delete (and goes with it) or finds it gone.
async fn deletes_racing_writers<S: ObjectStore + Clone + 'static>(store: &S) {
    let manifest = key("race/deleted");
    for round in 0..30 {
        let bytes = format!("round {round}");
        let Replaced::Done(version) = store
            .replace_manifest(&manifest, bytes.as_bytes(), None)
            .await
            .unwrap()
        else {
            panic!("created");
        };
        let writers = writers_from(store, &manifest, &version, round, 4);
        store.delete(&manifest).await.unwrap();
        for writer in writers {
            writer.await.unwrap();
        }
        // Whatever the order, nothing put it back after the delete.
        if let Some(left) = store.read_manifest(&manifest).await.unwrap() {
            panic!(
                "round {round}: put back after its delete: {:?}",
                String::from_utf8_lossy(&left.bytes)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path().join("store"));
    objects(&store, dir.path()).await;
    manifests(&store).await;
    racing_writers(&store).await;
    deletes_racing_writers(&store).await;
    conditional_writes(&store).await;
    // Nothing but the objects is left: no temporary file survives a write.
    let leftovers: Vec<_> = walk(&dir.path().join("store"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A file read in a range comes in pieces, and an open read goes on to its end when the file
/// is removed meanwhile (a sweep while a large file is sent).
#[tokio::test]
async fn a_file_read_in_a_range_outlives_its_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path().join("store"));
    let content = gitcache_testkit::repo::Rng::new(5).bytes(3 << 20);
    let source = dir.path().join("big");
    std::fs::write(&source, &content).unwrap();
    let big = key("pages/blob/big");
    store.put_file(&big, &source).await.unwrap();
    assert!(read_range(&store, &big, 7..(3 << 20) - 7).await == content[7..(3 << 20) - 7]);
    let mut pieces = store.read_range(&big, 0..3 << 20).await.unwrap().unwrap();
    let first = futures_util::StreamExt::next(&mut pieces)
        .await
        .unwrap()
        .unwrap();
    assert!(first.len() < content.len(), "in pieces");
    store.delete(&big).await.unwrap();
    assert_eq!(store.size(&big).await.unwrap(), None);
    let mut read = first.to_vec();
    while let Some(piece) = futures_util::StreamExt::next(&mut pieces).await {
        read.extend_from_slice(&piece.unwrap());
    }
    assert!(read == content, "read whole after the removal");
}

fn s3_store(server: &S3Server, prefix: Option<&str>) -> S3Store {
    S3Store::new(&S3Config {
        bucket: server.bucket().to_owned(),
        endpoint: Some(server.endpoint()),
        prefix: prefix.map(str::to_owned),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        ..S3Config::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_backend_passes_the_suite() {
    let Some(server) = S3Server::start("gitcache-suite") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = s3_store(&server, Some("deployment-a"));
    objects(&store, dir.path()).await;
    manifests(&store).await;
    racing_writers(&store).await;
    deletes_racing_writers(&store).await;
    conditional_writes(&store).await;
    // Another prefix in the same bucket sees none of it.
    let other = s3_store(&server, Some("deployment-b"));
    assert!(other.list(&key("mirrors")).await.unwrap().is_empty());
    assert_eq!(
        other.read_manifest(&key("race/manifest")).await.unwrap(),
        None
    );
}

/// Files over the multipart threshold go up in parts and come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_go_up_in_parts() {
    let Some(server) = S3Server::start("gitcache-large") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = s3_store(&server, None);
    let size = gitcache_storage::s3::MULTIPART_FROM as usize + gitcache_storage::s3::PART + 12_345;
    let mut rng = gitcache_testkit::repo::Rng::new(77);
    let content = rng.bytes(size);
    let source = dir.path().join("big.pack");
    std::fs::write(&source, &content).unwrap();
    let big = key("mirrors/h/acme/big/pack-2.pack");
    store.put_file(&big, &source).await.unwrap();
    let back = dir.path().join("back/big.pack");
    assert!(store.get_file(&big, &back, u64::MAX).await.unwrap());
    assert!(
        std::fs::read(&back).unwrap() == content,
        "the same bytes back"
    );
    // Part of it, across the parts it went up in, in one request.
    let middle = 1000..(size - 1000) as u64;
    assert!(read_range(&store, &big, middle.clone()).await == content[1000..size - 1000]);
    // A download dropped midway (the request that waited for it gone) leaves nothing.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let into = cut.join("big.pack");
    let mut download = Box::pin(store.get_file(&big, &into, u64::MAX));
    let midway = loop {
        tokio::select! {
            _ = &mut download => break false,
            _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
                if !walk(&cut).is_empty() {
                    break true;
                }
            }
        }
    };
    assert!(midway, "the download's file was seen before it ended");
    drop(download);
    assert!(walk(&cut).is_empty(), "left behind: {:?}", walk(&cut));
    let listed = store.list(&key("mirrors/h/acme/big")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, size as u64);
    // A head before a file that goes up in parts.
    let bundle = key("mirrors/h/acme/big/pack-2.bundle");
    store
        .put_file_after(&bundle, b"head\n", &source)
        .await
        .unwrap();
    assert!(store.get_file(&bundle, &back, u64::MAX).await.unwrap());
    let got = std::fs::read(&back).unwrap();
    assert!(got.len() == size + 5 && got.starts_with(b"head\n") && got[5..] == content[..]);
    // Downloads go in ranges: one exactly a range long, one a byte over, and an empty one.
    let range = gitcache_storage::s3::DOWNLOAD_RANGE as usize;
    for (name, len) in [("exact", range), ("over", range + 1), ("empty", 0)] {
        let object = key(&format!("mirrors/h/acme/big/{name}"));
        std::fs::write(&source, &content[..len]).unwrap();
        store.put_file(&object, &source).await.unwrap();
        let back = dir.path().join(format!("back/{name}"));
        assert!(
            store.get_file(&object, &back, u64::MAX).await.unwrap(),
            "{name}"
        );
        assert!(
            std::fs::read(&back).unwrap() == content[..len],
            "{name}: the same bytes back"
        );
    }
}

#[test]
fn keys_cannot_leave_the_store() {
    for bad in [
        "", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a\\b", "a/\u{0}", "a\nb",
    ] {
        assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
    }
    assert!(ObjectKey::new(&"a".repeat(1025)).is_err());
    let base = key("mirrors/github.com/acme");
    assert_eq!(
        base.join(".github").unwrap().as_str(),
        "mirrors/github.com/acme/.github"
    );
    assert!(base.join("..").is_err());
    assert!(base.join("a/../../b").is_err());
    let store = FsStore::new("/srv/data");
    assert_eq!(
        store.path_of(&key("a/b.pack")),
        std::path::Path::new("/srv/data/a/b.pack")
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What is in the store's folder but not a file it wrote is not read: a symbolic link to a
/// file elsewhere, and a FIFO (which would hold a reading thread until a writer came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_fifos_in_the_store_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path().join("store"));
    let secret = dir.path().join("elsewhere");
    std::fs::write(&secret, b"not the store's").unwrap();
    let (link, fifo) = (key("responses/link"), key("responses/fifo"));
    std::fs::create_dir_all(store.path_of(&link).parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&secret, store.path_of(&link)).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(store.path_of(&fifo))
        .status()
        .unwrap();
    assert!(made.success());
    let local = dir.path().join("local");
    for object in [&link, &fifo] {
        let read = async {
            // As if nothing were there.
            let bytes = store.get_bytes(object, 1 << 20).await;
            assert!(matches!(bytes, Ok(None)), "{object:?}: {bytes:?}");
            let range = store.read_range(object, 0..10).await;
            assert!(matches!(range, Ok(None)), "{object:?}");
            let copied = store.get_file(object, &local, 1 << 20).await;
            assert!(matches!(copied, Ok(false)), "{object:?}: {copied:?}");
            assert_eq!(store.size(object).await.unwrap(), None, "{object:?}");
            let manifest = store.read_manifest(object).await;
            assert!(matches!(manifest, Ok(None)), "{object:?}: {manifest:?}");
        };
        // A bound on liveness: a FIFO opened for reading waits for a writer forever.
        tokio::time::timeout(std::time::Duration::from_secs(30), read)
            .await
            .expect("not held by what is there");
        assert!(!local.exists());
    }
    // A manifest written where a link was replaces the link, not what it names.
    let written = store.replace_manifest(&link, b"mine", None).await.unwrap();
    assert!(matches!(written, Replaced::Done(_)), "{written:?}");
    assert_eq!(std::fs::read(&secret).unwrap(), b"not the store's");
    assert!(
        std::fs::symlink_metadata(store.path_of(&link))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        store.read_manifest(&link).await.unwrap().unwrap().bytes,
        b"mine"
    );
}

/// The connections a bucket of [`late_bucket`] took, held open.
type Held = std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>;

/// A bucket on loopback that does `on_connection` with each connection it takes and then
/// holds it, saying nothing more; its small requests are given up after a second.
fn late_bucket(
    on_connection: impl Fn(&mut std::net::TcpStream) + Send + 'static,
) -> (S3Store, Held) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = Held::default();
    std::thread::spawn({
        let held = std::sync::Arc::clone(&held);
        move || {
            for mut stream in listener.incoming().flatten() {
                on_connection(&mut stream);
                held.lock().unwrap().push(stream);
            }
        }
    });
    let store = S3Store::new(&S3Config {
        bucket: "late".into(),
        endpoint: Some(endpoint),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        ..S3Config::default()
    })
    .unwrap()
    .with_small_requests_within(std::time::Duration::from_secs(1));
    (store, held)
}

/// An error that says a request of [`late_bucket`]'s bucket was given up.
fn no_answer(err: gitcache_storage::store::StoreError) {
    assert!(err.to_string().contains("no answer within 1 s"), "{err}");
}

/// A bucket that takes requests and never answers: a small request (a `HEAD`, a `DELETE`, a
/// manifest's `PUT`) is given up within its bound, retries included, with an error that
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_bucket_fails_small_requests_within_their_bound() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    // Connections taken and held, nothing said.
    let (store, held) = late_bucket(|_| {});
    let key = ObjectKey::new("pages/sweeping/x").unwrap();
    no_answer(store.delete(&key).await.unwrap_err());
    no_answer(store.size(&key).await.unwrap_err());
    no_answer(store.manifest_version(&key).await.unwrap_err());
    no_answer(
        store
            .replace_manifest(&key, b"sweeping 1\n", None)
            .await
            .unwrap_err(),
    );
    no_answer(store.list(&key).await.unwrap_err());
    no_answer(store.get_bytes(&key, 1 << 20).await.unwrap_err());
    no_answer(store.read_manifest(&key).await.unwrap_err());
    assert!(!held.lock().unwrap().is_empty(), "the requests were sent");
}

/// A bucket that starts each answer and stops: a whole read (bytes, a manifest) and a
/// listing fail within their bound instead of waiting a read timeout at each chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_stalling_mid_answer_fails_reads_and_listings_within_their_bound() {
    use gitcache_storage::store::{ObjectKey, ObjectStore as _};
    use std::io::{BufRead as _, Write as _};
    let (store, held) = late_bucket(|stream| {
        // The request's head read, an answer begun, and held there.
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"v1\"\r\n\
              Last-Modified: Sun, 06 Dec 2026 10:00:00 GMT\r\n\
              Content-Type: application/xml\r\n\r\n<?xml version=",
        );
    });
    let key = ObjectKey::new("pages/site/example.org/.index").unwrap();
    no_answer(store.get_bytes(&key, 1 << 20).await.unwrap_err());
    no_answer(store.read_manifest(&key).await.unwrap_err());
    no_answer(store.list(&key).await.unwrap_err());
    assert!(held.lock().unwrap().len() >= 3, "the answers were begun");
}
