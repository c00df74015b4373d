//! One upstream fetch per mirror at a time, and names checked before they touch the disk.

use std::sync::Arc;
use std::time::Duration;

use gitcache_mirror::registry::Registry;
use gitcache_storage::repo::RepoKey;
use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};
use gitcache_upstream::Upstream as Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_refreshes_of_a_cold_mirror_fetch_once() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/popular"), &RepoSpec::small(81)).unwrap();
    upstream.adopt_repo("acme/popular", Access::Public).unwrap();
    // Slow the fetch down so that every caller arrives while it runs.
    upstream.inject(
        Fault::Delay(Duration::from_millis(500)),
        1,
        Some(RequestKind::Fetch),
    );
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new(dir.path()));
    let key = RepoKey::new("127.0.0.1", "acme", "popular.git").unwrap();
    let client = Client::new(
        &upstream.repo_url("acme/popular"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (registry, key, client) = (Arc::clone(&registry), key.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            registry.refresh(&key, &client, &[]).await
        }));
    }
    for task in tasks {
        let outcome = task.await.unwrap().unwrap();
        assert!(outcome.refs > 0);
    }
    assert_eq!(
        upstream.counts().fetch,
        1,
        "one upstream fetch for twenty callers"
    );
    let mirror = registry.existing(&key).unwrap();
    assert!(mirror.git_dir().ends_with("127.0.0.1/acme/popular.git"));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);

    // Later, a caller starts a new refresh; nothing new upstream, nothing fetched.
    registry.refresh(&key, &client, &[]).await.unwrap();
    assert_eq!(upstream.counts().fetch, 1);
}

/// Callers that waited for a refresh share its outcome, but not a refusal of its credential:
/// a client whose credential was revoked must not have its refusal handed to a client with a
/// good one whose refresh waited behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_is_not_shared_with_the_refreshes_that_waited() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/secret"), &RepoSpec::tiny(82)).unwrap();
    upstream
        .adopt_repo("acme/secret", Access::private(["t0k3n"]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new(dir.path()));
    let key = RepoKey::new("127.0.0.1", "acme", "secret.git").unwrap();
    let client = |auth: &str| {
        Client::new(
            &upstream.repo_url("acme/secret"),
            Some(auth.to_owned()),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let (good, revoked) = (client("Bearer t0k3n"), client("Bearer revoked"));
    registry.refresh(&key, &good, &[]).await.unwrap();
    let requests = || {
        let c = upstream.counts();
        c.info_refs + c.ls_refs + c.fetch + c.other
    };
    // What one refused refresh asks upstream.
    let before = requests();
    assert!(registry.refresh(&key, &revoked, &[]).await.is_err());
    let one_refusal = requests() - before;

    // The revoked credential's refresh holds the lock (its first request is slow, then
    // refused) while `waiting`'s waits for it.
    let behind = |waiting: Client| {
        upstream.inject(Fault::Delay(Duration::from_millis(800)), 1, None);
        let refused = {
            let (registry, key, revoked) = (Arc::clone(&registry), key.clone(), revoked.clone());
            tokio::spawn(async move { registry.refresh(&key, &revoked, &[]).await })
        };
        let (registry, key, upstream) = (Arc::clone(&registry), key.clone(), &upstream);
        async move {
            while upstream.pending_faults() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let waited = registry.refresh(&key, &waiting, &[]).await;
            let err = refused.await.unwrap().unwrap_err();
            assert!(err.is_access_denied(), "{err}");
            waited
        }
    };
    let waited = behind(good.clone()).await;
    assert!(
        waited.is_ok(),
        "the good credential's own refresh: {waited:?}"
    );
    // The same credential waiting behind it shares the refusal: asked once, not twice.
    let before = requests();
    let waited = behind(revoked.clone()).await;
    assert!(waited.unwrap_err().is_access_denied());
    assert_eq!(
        requests() - before,
        one_refusal,
        "one refresh asked upstream"
    );
}

#[test]
fn names_are_checked_before_they_touch_the_disk() {
    for (owner, repo) in [
        ("..", "x"),
        ("acme", ".."),
        (".", "x"),
        ("ac/me", "x"),
        ("acme", "x y"),
        ("", "x"),
        ("acme", ""),
    ] {
        let err = RepoKey::new("github.com", owner, repo).unwrap_err();
        assert!(err.to_string().starts_with("invalid "), "{err}");
    }
    assert!(RepoKey::new("evil/../host", "a", "b").is_err());
    // GitHub has them: `org/.github`.
    assert!(RepoKey::new("github.com", "org", ".github").is_ok());
    assert!(RepoKey::new("127.0.0.1:notaport", "a", "b").is_err());
    // Names that differ in case are two repositories unless the upstream folds them.
    let exact = RepoKey::new("GitHub.com", "Acme", "Widgets.git").unwrap();
    assert_ne!(
        exact,
        RepoKey::new("github.com", "acme", "widgets").unwrap()
    );
    assert_eq!((exact.owner(), exact.repo()), ("Acme", "Widgets"));
    assert_eq!(
        exact.relative_path(),
        std::path::Path::new("github.com/^acme/^widgets.git")
    );
    let folded = RepoKey::folded("GitHub.com", "Acme", "Widgets.git").unwrap();
    assert_eq!(
        folded,
        RepoKey::folded("github.com", "acme", "widgets").unwrap()
    );
    assert_eq!((folded.owner(), folded.repo()), ("acme", "widgets"));
    assert_eq!(
        folded.relative_path(),
        std::path::Path::new("github.com/acme/widgets.git")
    );
}

/// The leftovers of a crash are removed when a mirror is first opened, but never what an
/// ingestion under way is writing: the removal waits for the refresh running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_leftovers_waits_for_the_ingestion_under_way() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/big"), &RepoSpec::small(82)).unwrap();
    upstream.adopt_repo("acme/big", Access::Public).unwrap();
    // The pack comes slowly, so the staging file lives for a while.
    upstream.inject(
        Fault::Trickle {
            chunk: 16 << 10,
            every: Duration::from_millis(15),
        },
        1,
        Some(RequestKind::Fetch),
    );
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new(dir.path()));
    let key = RepoKey::new("127.0.0.1", "acme", "big.git").unwrap();
    let client = Client::new(
        &upstream.repo_url("acme/big"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let refresh = {
        let (registry, key) = (Arc::clone(&registry), key.clone());
        tokio::spawn(async move { registry.refresh(&key, &client, &[]).await })
    };
    let pack_dir = registry.path(&key).join("objects/pack");
    let staging = |dir: &std::path::Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
        })
    };
    let started = std::time::Instant::now();
    while !staging(&pack_dir) {
        assert!(
            !refresh.is_finished(),
            "the refresh ended before staging was seen"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no staging seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A crash's leftover appears beside the staging file, and the mirror is "opened".
    let orphan = pack_dir.join(format!("pack-{}.pack", "0".repeat(40)));
    std::fs::write(&orphan, b"PACK left by a crash").unwrap();
    registry.check_in_background(&key);

    let outcome = refresh.await.unwrap().unwrap();
    assert!(outcome.refs > 0);
    let mirror = registry.existing(&key).unwrap();
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    // The leftover went once the refresh was done.
    let started = std::time::Instant::now();
    while orphan.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the leftover stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing staged stays (the maintenance the opening started may still be writing its
    // own temporaries for a moment).
    let started = std::time::Instant::now();
    while staging(&pack_dir) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "staging left behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A mirror folder a crash left half-created (no `HEAD`, a config cut short, stray files) is
/// not taken for a mirror, and the next refresh makes it again from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_cut_short_while_being_created_is_made_again() {
    let upstream = Upstream::start().unwrap();
    repo::generate(&upstream.repo_path("acme/cut"), &RepoSpec::tiny(83)).unwrap();
    upstream.adopt_repo("acme/cut", Access::Public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new(dir.path()));
    let key = RepoKey::new("127.0.0.1", "acme", "cut.git").unwrap();
    let path = registry.path(&key);
    std::fs::create_dir_all(path.join("objects/pack")).unwrap();
    std::fs::write(path.join("config"), b"[core]\n\trepositoryformatv").unwrap();
    std::fs::write(path.join("objects/pack/incoming-1"), b"PACK\0\0").unwrap();
    assert!(registry.existing(&key).is_none(), "no HEAD: not a mirror");

    let client = Client::new(
        &upstream.repo_url("acme/cut"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let outcome = registry.refresh(&key, &client, &[]).await.unwrap();
    assert!(outcome.refs > 0);
    let mirror = registry.existing(&key).unwrap();
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    assert!(!path.join("objects/pack/incoming-1").exists());
    assert_eq!(
        git(mirror.git_dir(), &["rev-parse", "main"]),
        git(&upstream.repo_path("acme/cut"), &["rev-parse", "main"])
    );
}

/// A name that comes to mean a repository of another object format means another
/// repository: the mirror is dropped (its hook told) and made anew in the new format, not
/// kept failing every refresh while it serves the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_now_meaning_a_repository_of_another_object_format_is_fetched_anew() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/moved");
    repo::generate(&source, &RepoSpec::tiny(1511)).unwrap();
    upstream.adopt_repo("acme/moved", Access::Public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path());
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noting = Arc::clone(&told);
    assert!(registry.on_replaced(move |key| {
        noting.lock().unwrap().push(key.clone());
        async {}
    }));
    let key = RepoKey::new("127.0.0.1", "acme", "moved").unwrap();
    let client = || {
        Client::new(
            &upstream.repo_url("acme/moved"),
            None,
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let first = registry.refresh(&key, &client(), &[]).await.unwrap();
    assert!(!first.replaced);

    let sha256 = RepoSpec::tiny(1512).sha256();
    upstream
        .replace_repo("acme/moved", &sha256, Access::Public)
        .unwrap();
    let done = registry.refresh(&key, &client(), &[]).await.unwrap();
    assert!(done.replaced && done.changed, "{done:?}");
    assert_eq!(*told.lock().unwrap(), vec![key.clone()]);
    let mirror = registry.existing(&key).unwrap();
    assert_eq!(
        git(mirror.git_dir(), &["rev-parse", "--show-object-format"]).trim(),
        "sha256"
    );
    assert_eq!(
        git(mirror.git_dir(), &["show-ref"]),
        git(&source, &["show-ref"])
    );
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}
