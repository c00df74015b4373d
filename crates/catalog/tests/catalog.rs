//! One suite, run against SQLite and against a real PostgreSQL server.
//!
//! PostgreSQL comes from `GITCACHE_TEST_DATABASE_URL` (a server where the user may create
//! databases; `.ci/postgres` starts one); each test makes its own database. Without the
//! variable the PostgreSQL half is skipped locally and fails under CI.

use std::sync::atomic::{AtomicU32, Ordering};

use gitcache_catalog::{Catalog, Changes, Error, NewRepo};

/// A fresh PostgreSQL database's URL, or `None` when no server is configured.
async fn postgres_database() -> Option<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Ok(admin) = std::env::var("GITCACHE_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests: set GITCACHE_TEST_DATABASE_URL"
        );
        eprintln!("GITCACHE_TEST_DATABASE_URL unset: PostgreSQL half skipped");
        return None;
    };
    let name = format!(
        "gitcache_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        client
            .batch_execute(&statement)
            .await
            .expect("create a test database");
    }
    let base = admin.rsplit_once('/').expect("URL with a database").0;
    Some(format!("{base}/{name}"))
}

/// Run `suite` on a new SQLite catalog, then on a new PostgreSQL one.
macro_rules! both {
    ($name:ident, $suite:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("catalog.db");
                super::$suite(&path.display().to_string()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(url) = super::postgres_database().await {
                    super::$suite(&url).await;
                }
            }
        }
    };
}

both!(records_round_trip, records_round_trip);
async fn records_round_trip(location: &str) {
    let catalog = Catalog::open(location).await.unwrap();
    assert!(catalog.list().await.unwrap().is_empty());
    let mut new = NewRepo::new("GitHub.com", "Acme", "Widgets.git");
    new.timeout_seconds = 90;
    new.max_cache_size_mb = Some(512);
    let created = catalog.create(&new).await.unwrap();
    assert_eq!(
        (
            created.host.as_str(),
            created.owner.as_str(),
            created.name.as_str()
        ),
        ("github.com", "Acme", "Widgets"),
        "the host lower-cased, names kept as written"
    );
    assert!(created.enabled);
    assert_eq!(created.timeout_seconds, 90);
    assert_eq!(created.max_cache_size_mb, Some(512));
    assert!(created.created_at > 1_700_000_000);
    assert_eq!(created.created_at, created.updated_at);

    let second = catalog
        .create(&NewRepo::new("github.com", "acme", "gadgets"))
        .await
        .unwrap();
    assert!(second.id > created.id);
    assert_eq!(second.timeout_seconds, 30);
    assert_eq!(second.max_cache_size_mb, None);
    assert_eq!(catalog.get(created.id).await.unwrap(), created);
    let listed = catalog.list().await.unwrap();
    assert_eq!(listed, vec![created.clone(), second.clone()]);
    // By pages: each from after the last id of the one before.
    let first_page = catalog.list_page(0, 1).await.unwrap();
    assert_eq!(first_page, vec![created.clone()]);
    let next = catalog.list_page(first_page[0].id, 1).await.unwrap();
    assert_eq!(next, vec![second.clone()]);
    assert!(catalog.list_page(second.id, 1).await.unwrap().is_empty());
    assert_eq!(catalog.list_page(0, 10).await.unwrap(), listed);

    // The in-memory view follows every change at once.
    let seen = catalog.lookup("GITHUB.COM", "Acme", "Widgets.git").unwrap();
    assert_eq!(*seen, created);
    assert!(catalog.lookup("github.com", "acme", "other").is_none());
    // Names compare exactly: the caller folds them for upstreams that ignore case.
    assert!(catalog.lookup("github.com", "acme", "widgets").is_none());
    // As a key holds them, `.git` off once already: not taken off again.
    assert_eq!(
        *catalog
            .lookup_exact("github.com", "Acme", "Widgets")
            .unwrap(),
        created
    );
    assert!(
        catalog
            .lookup_exact("github.com", "Acme", "Widgets.git")
            .is_none()
    );
    assert!(
        catalog
            .lookup("gitlab.example", "acme", "widgets")
            .is_none()
    );
    assert_eq!(catalog.records().len(), 2);

    let changed = catalog
        .update(
            created.id,
            &Changes {
                enabled: Some(false),
                timeout_seconds: Some(5),
                ..Changes::default()
            },
        )
        .await
        .unwrap();
    assert!(!changed.enabled);
    assert_eq!(changed.timeout_seconds, 5);
    assert_eq!(changed.max_cache_size_mb, Some(512), "untouched field kept");
    assert!(changed.updated_at >= created.updated_at);
    assert!(
        !catalog
            .lookup("github.com", "Acme", "Widgets")
            .unwrap()
            .enabled
    );

    let cleared = catalog
        .update(
            created.id,
            &Changes {
                max_cache_size_mb: Some(0),
                ..Changes::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.max_cache_size_mb, None);
    assert!(!cleared.enabled, "untouched field kept");

    // Purges are counted, and the view follows.
    assert_eq!(created.purges, 0);
    catalog.note_purge(created.id).await.unwrap();
    let purged = catalog.note_purge(created.id).await.unwrap();
    assert_eq!(purged.purges, 2);
    assert_eq!(purged.max_cache_size_mb, None, "untouched field kept");
    assert_eq!(
        catalog
            .lookup("github.com", "Acme", "Widgets")
            .unwrap()
            .purges,
        2
    );
    assert!(matches!(
        catalog.note_purge(i64::MAX).await,
        Err(gitcache_catalog::Error::NotFound(_))
    ));

    let removed = catalog.delete(created.id).await.unwrap();
    assert_eq!(removed.id, created.id);
    assert!(catalog.lookup("github.com", "Acme", "Widgets").is_none());
    assert_eq!(catalog.list().await.unwrap(), vec![second]);
}

both!(bad_input_is_refused_by_name, bad_input_is_refused_by_name);
async fn bad_input_is_refused_by_name(location: &str) {
    let catalog = Catalog::open(location).await.unwrap();
    let created = catalog
        .create(&NewRepo::new("github.com", "acme", "widgets"))
        .await
        .unwrap();
    let err = catalog
        .create(&NewRepo::new("GitHub.com", "acme", "widgets.git"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Duplicate(ref n) if n == "github.com/acme/widgets"),
        "{err}"
    );
    assert!(err.is_client_error());
    // The same name on another host is another repository.
    catalog
        .create(&NewRepo::new("gitlab.example", "acme", "widgets"))
        .await
        .unwrap();

    let mut new = NewRepo::new("github.com", "acme", "other");
    new.timeout_seconds = 0;
    match catalog.create(&new).await.unwrap_err() {
        Error::Invalid(invalid) => assert_eq!(invalid.field, "timeout_seconds"),
        other => panic!("{other}"),
    }
    match catalog
        .create(&NewRepo::new("github.com", "../etc", "x"))
        .await
        .unwrap_err()
    {
        Error::Invalid(invalid) => assert_eq!(invalid.field, "owner"),
        other => panic!("{other}"),
    }
    let too_long = Changes {
        timeout_seconds: Some(3601),
        ..Changes::default()
    };
    assert!(matches!(
        catalog.update(created.id, &too_long).await.unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(matches!(
        catalog.get(9999).await.unwrap_err(),
        Error::NotFound(9999)
    ));
    assert!(matches!(
        catalog.update(9999, &Changes::default()).await.unwrap_err(),
        Error::NotFound(9999)
    ));
    assert!(matches!(
        catalog.delete(9999).await.unwrap_err(),
        Error::NotFound(9999)
    ));
    // Nothing refused was written.
    assert_eq!(catalog.list().await.unwrap().len(), 2);
}

both!(
    reopening_keeps_records_and_migrates_once,
    reopening_keeps_records_and_migrates_once
);
async fn reopening_keeps_records_and_migrates_once(location: &str) {
    let first = Catalog::open(location).await.unwrap();
    let created = first
        .create(&NewRepo::new("github.com", "acme", "widgets"))
        .await
        .unwrap();
    // A second instance sharing the database (or a restart) sees the record at start.
    let second = Catalog::open(location).await.unwrap();
    assert_eq!(
        *second.lookup("github.com", "acme", "widgets").unwrap(),
        created
    );
    // What one instance changes, the other's view picks up on reload.
    second.delete(created.id).await.unwrap();
    assert!(first.lookup("github.com", "acme", "widgets").is_some());
    first.reload().await.unwrap();
    assert!(first.lookup("github.com", "acme", "widgets").is_none());
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    drop(Catalog::open_sqlite(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO gitcache_schema (version, applied_at) VALUES (999, 0)",
            [],
        )
        .unwrap();
    }
    let err = Catalog::open_sqlite(&path).await.unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let err = Catalog::open("postgres://gitcache@127.0.0.1:1/gitcache")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Postgres(_)), "{err}");
    assert!(
        err.to_string().starts_with("catalog database (PostgreSQL)"),
        "{err}"
    );
}

/// A PostgreSQL that takes the connection and never answers (a host gone half-way, a proxy
/// that hangs) is an error in bounded time, not a catalog that waits for good.
#[tokio::test]
async fn a_postgres_that_never_answers_is_an_error_in_time() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.accept().map(|(stream, _)| stream));
    let err = Catalog::open(&format!(
        "postgres://gitcache@127.0.0.1:{port}/gitcache?connect_timeout=1"
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unanswered(_)), "{err}");
    drop(held.join());
}

/// A PostgreSQL that goes silent on an open connection (a host gone, a proxy that hangs)
/// fails the call once twice its statement timeout has passed, and the next call connects
/// again instead of queueing behind the lost one. The same when the caller stops waiting
/// first (its own bound shorter than the call's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_gone_silent_fails_the_call_in_time_and_is_connected_again() {
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some(url) = postgres_database().await else {
        return;
    };
    let Some((head, rest)) = url.split_once('@') else {
        panic!("the test server's URL names a user and a TCP address: {url}");
    };
    let (server, database) = rest.split_once('/').expect("a database in the URL");
    let server = server.to_owned();
    // A relay in front of the server: the answers on the connections numbered within
    // `silenced` (counting from 0 as they are accepted) can be dropped.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = relay.local_addr().unwrap().port();
    let silenced = Arc::new(std::sync::Mutex::new(0..0));
    let accepted = Arc::new(AtomicU32::new(0));
    let relaying = {
        let (silenced, accepted) = (Arc::clone(&silenced), Arc::clone(&accepted));
        tokio::spawn(async move {
            loop {
                let (mut client, _) = relay.accept().await.unwrap();
                let number = accepted.fetch_add(1, Ordering::SeqCst);
                let mut upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                let silenced = Arc::clone(&silenced);
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = upstream.split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        let mut buf = vec![0; 16 * 1024];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if !silenced.lock().unwrap().contains(&number) {
                                client_write.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        })
    };
    let through = |statement_timeout: &str| {
        format!(
            "{head}@127.0.0.1:{port}/{database}?options=-c%20statement_timeout%3D{statement_timeout}"
        )
    };

    // The call's own bound: 1 s (twice 500 ms is under the floor of a second).
    // Its connection is the one opened meanwhile.
    let silence_what_opens = |open: std::ops::Range<u32>| *silenced.lock().unwrap() = open;
    let before = accepted.load(Ordering::SeqCst);
    let catalog = Catalog::open(&through("500")).await.unwrap();
    catalog.ping().await.unwrap();
    silence_what_opens(before..accepted.load(Ordering::SeqCst));
    let lost = tokio::time::timeout(Duration::from_secs(30), catalog.ping())
        .await
        .expect("the call ends on its own bound")
        .unwrap_err();
    assert!(matches!(lost, Error::Unanswered(_)), "{lost}");
    catalog.ping().await.expect("a new connection answers");
    assert!(catalog.list().await.unwrap().is_empty());

    // The caller's bound (3 s) before the call's (4 s), past the statement timeout (2 s): the
    // connection is given up all the same, and the next call answers on a new one rather
    // than on the silent one.
    let before = accepted.load(Ordering::SeqCst);
    let catalog = Catalog::open(&through("2s")).await.unwrap();
    catalog.ping().await.unwrap();
    silence_what_opens(before..accepted.load(Ordering::SeqCst));
    let waited = tokio::time::timeout(Duration::from_secs(3), catalog.ping()).await;
    assert!(
        waited.is_err(),
        "the silent connection answered: {waited:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), catalog.ping())
        .await
        .expect("the call ends on its own bound")
        .expect("a new connection answers, not the silent one");
    relaying.abort();
}

/// Leases in PostgreSQL: one holder at a time among instances, extended by its holder,
/// free once released or lapsed (by the database's clock); SQLite has none to offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_take_turns_through_postgres_leases() {
    use gitcache_storage::lease::Leases as _;
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        Catalog::open_sqlite(dir.path().join("catalog.db"))
            .await
            .unwrap(),
    );
    assert!(sqlite.leases("a").is_none());
    let Some(url) = postgres_database().await else {
        return;
    };
    let a = Arc::new(Catalog::open(&url).await.unwrap())
        .leases("a")
        .unwrap();
    let b = Arc::new(Catalog::open(&url).await.unwrap())
        .leases("b")
        .unwrap();
    let long = Duration::from_secs(60);
    let name = "refresh:127.0.0.1/acme/widgets.git";
    assert!(a.try_take(name, long).await.unwrap());
    assert!(!b.try_take(name, long).await.unwrap(), "A holds it");
    assert!(
        a.try_take(name, long).await.unwrap(),
        "its holder extends it"
    );
    assert!(
        b.try_take("refresh:other", long).await.unwrap(),
        "names are apart"
    );
    b.release(name).await.unwrap();
    assert!(
        !b.try_take(name, long).await.unwrap(),
        "only the holder releases"
    );
    a.release(name).await.unwrap();
    assert!(b.try_take(name, Duration::from_secs(1)).await.unwrap());
    assert!(!a.try_take(name, long).await.unwrap());
    // B dies without releasing: its lease lapses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        a.try_take(name, long).await.unwrap(),
        "a lapsed lease is taken over"
    );
}

/// The fleet's index of shared stored responses: touched on store and use, listed by last
/// use, forgotten one by one or by repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_index_orders_by_last_use() {
    use gitcache_storage::responses::ResponseIndex as _;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        Catalog::open_sqlite(dir.path().join("catalog.db"))
            .await
            .unwrap(),
    );
    assert!(sqlite.response_index().is_none());
    let Some(url) = postgres_database().await else {
        return;
    };
    let index = Arc::new(Catalog::open(&url).await.unwrap())
        .response_index()
        .unwrap();
    index.touch("h/acme/a.git", "k1", 10).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    index.touch("h/acme/b.git", "k2", 20).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    index.touch("h/acme/a.git", "k3", 30).await.unwrap();
    let keys = |all: Vec<gitcache_storage::responses::Indexed>| {
        all.into_iter().map(|e| e.key).collect::<Vec<_>>()
    };
    assert_eq!(keys(index.all().await.unwrap()), ["k3", "k2", "k1"]);
    // Used again: first.
    index.touch("h/acme/a.git", "k1", 11).await.unwrap();
    let all = index.all().await.unwrap();
    assert_eq!((all[0].key.as_str(), all[0].bytes), ("k1", 11));
    index.forget("h/acme/b.git", Some("k2")).await.unwrap();
    assert_eq!(keys(index.all().await.unwrap()), ["k1", "k3"]);
    index.forget("h/acme/a.git", None).await.unwrap();
    assert!(index.all().await.unwrap().is_empty());
}

/// Each instance writes its own activity; the fleet's is summed by repository without the
/// reader's own rows, the latest refresh and error winning; writing again replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_activity_is_summed_by_repository() {
    use gitcache_catalog::Activity;

    let Some(url) = postgres_database().await else {
        return;
    };
    let catalog = Catalog::open(&url).await.unwrap();
    let activity =
        |hits, misses, refresh: Option<(i64, bool)>, error: Option<(i64, &str)>| Activity {
            hits,
            misses,
            last_refresh: refresh,
            last_error: error.map(|(at, text)| (at, text.to_owned())),
        };
    let repo = "h/acme/a.git".to_owned();
    catalog
        .push_activity(
            "one",
            &[(
                repo.clone(),
                activity(3, 1, Some((100, true)), Some((50, "old"))),
            )],
        )
        .await
        .unwrap();
    catalog
        .push_activity(
            "two",
            &[
                (
                    repo.clone(),
                    activity(4, 2, Some((200, false)), Some((150, "new"))),
                ),
                ("h/acme/b.git".to_owned(), activity(1, 0, None, None)),
            ],
        )
        .await
        .unwrap();
    catalog
        .push_activity(
            "me",
            &[(repo.clone(), activity(100, 100, Some((900, true)), None))],
        )
        .await
        .unwrap();
    let both = [repo.clone(), "h/acme/b.git".to_owned()];
    let fleet = catalog.fleet_activity("me", &both).await.unwrap();
    assert_eq!(fleet.len(), 2);
    // Only the repositories asked for are read.
    let one = catalog
        .fleet_activity("me", std::slice::from_ref(&repo))
        .await
        .unwrap();
    assert_eq!(one.keys().collect::<Vec<_>>(), [&repo]);
    let a = &fleet[&repo];
    assert_eq!((a.hits, a.misses), (7, 3), "mine left out");
    assert_eq!(a.last_refresh, Some((200, false)));
    assert_eq!(a.last_error, Some((150, "new".to_owned())));
    assert_eq!(fleet["h/acme/b.git"].last_refresh, None);
    // An instance's totals replace what it wrote before.
    catalog
        .push_activity(
            "two",
            &[(repo.clone(), activity(5, 2, Some((200, false)), None))],
        )
        .await
        .unwrap();
    let a = &catalog.fleet_activity("me", &both).await.unwrap()[&repo];
    assert_eq!((a.hits, a.misses), (8, 3));
    assert_eq!(a.last_error, Some((50, "old".to_owned())));
}
