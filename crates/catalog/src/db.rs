//! The two databases behind one interface: statements are written once, with `$1`-style
//! parameters, and run on either; only connecting, migrating and reading a row's columns
//! differ.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::Error;
use crate::record::Record;

/// A [`Record`] from a row holding [`COLUMNS`], read with the driver's getter (`row.get` for
/// rusqlite, `row.try_get` for tokio-postgres: the same shape, different traits).
macro_rules! record_from {
    ($row:ident . $get:ident) => {
        Record {
            id: $row.$get(0)?,
            host: $row.$get(1)?,
            owner: $row.$get(2)?,
            name: $row.$get(3)?,
            enabled: $row.$get(4)?,
            timeout_seconds: to_timeout($row.$get(5)?),
            max_cache_size_mb: $row.$get::<_, Option<i64>>(6)?.map(|mb| mb.max(0) as u64),
            created_at: $row.$get(7)?,
            updated_at: $row.$get(8)?,
            purges: $row.$get(9)?,
        }
    };
}

/// A statement parameter.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Int(Option<i64>),
    Text(String),
    Bool(bool),
}

/// The columns every statement returns, in the order [`Record`]s are read from.
pub(crate) const COLUMNS: &str = "id, host, owner, name, enabled, timeout_seconds, max_cache_size_mb, created_at, updated_at, purges";

/// One schema change, in each dialect. Versions only grow; a released one never changes.
struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: "CREATE TABLE cached_repos (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        timeout_seconds BIGINT NOT NULL DEFAULT 30
            CHECK (timeout_seconds BETWEEN 1 AND 3600),
        max_cache_size_mb BIGINT CHECK (max_cache_size_mb > 0),
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        UNIQUE (host, owner, name)
    )",
        postgres: "CREATE TABLE cached_repos (
        id BIGSERIAL PRIMARY KEY,
        host TEXT NOT NULL,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        timeout_seconds BIGINT NOT NULL DEFAULT 30
            CHECK (timeout_seconds BETWEEN 1 AND 3600),
        max_cache_size_mb BIGINT CHECK (max_cache_size_mb > 0),
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        UNIQUE (host, owner, name)
    )",
    },
    Migration {
        version: 2,
        // Leases coordinate instances that share PostgreSQL; SQLite keeps the table for one
        // schema everywhere.
        sqlite: "CREATE TABLE gitcache_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    )",
        postgres: "CREATE TABLE gitcache_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )",
    },
    Migration {
        version: 3,
        // Stored responses in a shared bucket, by last use across the fleet.
        sqlite: "CREATE TABLE gitcache_responses (
        repo TEXT NOT NULL,
        key TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        last_used BIGINT NOT NULL,
        PRIMARY KEY (repo, key)
    )",
        postgres: "CREATE TABLE gitcache_responses (
        repo TEXT NOT NULL,
        key TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        last_used TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (repo, key)
    )",
    },
    Migration {
        version: 4,
        // What each instance did for each repository, summed for the admin page.
        sqlite: "CREATE TABLE gitcache_repo_activity (
        instance TEXT NOT NULL,
        repo TEXT NOT NULL,
        hits BIGINT NOT NULL,
        misses BIGINT NOT NULL,
        last_refresh BIGINT,
        last_refresh_ok BOOLEAN,
        last_error TEXT,
        last_error_at BIGINT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (instance, repo)
    )",
        postgres: "CREATE TABLE gitcache_repo_activity (
        instance TEXT NOT NULL,
        repo TEXT NOT NULL,
        hits BIGINT NOT NULL,
        misses BIGINT NOT NULL,
        last_refresh BIGINT,
        last_refresh_ok BOOLEAN,
        last_error TEXT,
        last_error_at BIGINT,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (instance, repo)
    )",
    },
    Migration {
        version: 5,
        // The admin page reads a page of repositories' activity, and old rows are deleted
        // by their age: neither scans the table.
        sqlite: "CREATE INDEX gitcache_repo_activity_by_repo ON gitcache_repo_activity (repo);
        CREATE INDEX gitcache_repo_activity_by_age ON gitcache_repo_activity (updated_at)",
        postgres: "CREATE INDEX gitcache_repo_activity_by_repo ON gitcache_repo_activity (repo);
        CREATE INDEX gitcache_repo_activity_by_age ON gitcache_repo_activity (updated_at)",
    },
    Migration {
        version: 6,
        // Purges counted, so that every instance sharing the catalog drops its own copy.
        sqlite: "ALTER TABLE cached_repos ADD COLUMN purges BIGINT NOT NULL DEFAULT 0",
        postgres: "ALTER TABLE cached_repos ADD COLUMN purges BIGINT NOT NULL DEFAULT 0",
    },
];

/// The newest schema this build knows.
pub(crate) fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS gitcache_schema (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// Taken while PostgreSQL migrates, so that instances starting together take turns.
const MIGRATION_LOCK: i64 = 0x6769_7463_6163_6865; // "gitcache"

#[derive(Debug)]
pub(crate) enum Db {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Postgres),
}

pub(crate) struct Postgres {
    url: String,
    client: tokio::sync::Mutex<Slot>,
    /// How long the answer to one call is waited for (see [`answer_bound`]).
    wait: std::time::Duration,
}

impl std::fmt::Debug for Postgres {
    /// Never shows the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Db {
    /// Open (creating) the SQLite file at `path` and bring its schema up to date.
    pub(crate) async fn sqlite(path: &Path) -> Result<Db, Error> {
        let path = path.to_owned();
        blocking(move || {
            let conn = rusqlite::Connection::open(&path)?;
            Self::sqlite_setup(conn)
        })
        .await
    }

    /// A private in-memory SQLite database.
    pub(crate) fn sqlite_in_memory() -> Result<Db, Error> {
        Self::sqlite_setup(rusqlite::Connection::open_in_memory()?)
    }

    fn sqlite_setup(mut conn: rusqlite::Connection) -> Result<Db, Error> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL lets the admin API write while lookups read; `query_row` because the pragma
        // answers with the mode it set (in-memory databases keep their own).
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.execute_batch(SCHEMA_TABLE)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM gitcache_schema",
            [],
            |row| row.get(0),
        )?;
        check_version(current)?;
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            tx.execute_batch(m.sqlite)?;
            tx.execute(
                "INSERT INTO gitcache_schema (version, applied_at) VALUES (?1, ?2)",
                (m.version, crate::now()),
            )?;
            tracing::info!(version = m.version, "catalog schema migrated");
        }
        tx.commit()?;
        Ok(Db::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// Connect to PostgreSQL at `url` and bring its schema up to date.
    pub(crate) async fn postgres(url: &str) -> Result<Db, Error> {
        let mut connection = pg_connect(url).await?;
        let tx = connection.client.transaction().await?;
        // Waiting for another instance's migration, and migrating, may take longer than a
        // statement is otherwise allowed.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(SCHEMA_TABLE).await?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM gitcache_schema", &[])
            .await?
            .try_get(0)?;
        check_version(current)?;
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            tx.batch_execute(m.postgres).await?;
            tx.execute(
                "INSERT INTO gitcache_schema (version, applied_at) VALUES ($1, $2)",
                &[&m.version, &crate::now()],
            )
            .await?;
            tracing::info!(version = m.version, "catalog schema migrated");
        }
        tx.commit().await?;
        Ok(Db::Postgres(Postgres {
            url: url.to_owned(),
            client: tokio::sync::Mutex::new(Slot {
                connection: Some(Arc::new(connection)),
                failed: None,
            }),
            wait: answer_bound(url)?,
        }))
    }

    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Run `sql`, which returns [`COLUMNS`], with `params` bound to `$1`, `$2`, ….
    pub(crate) async fn records(
        &self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Record>, Error> {
        match self {
            Db::Sqlite(conn) => {
                let conn = Arc::clone(conn);
                // SQLite numbers `$NAME` parameters by first appearance; `?N` by N.
                let sql = sql.replace('$', "?");
                blocking(move || {
                    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                    let mut statement = conn.prepare(&sql)?;
                    let params = params.into_iter().map(|v| match v {
                        Value::Int(i) => rusqlite::types::Value::from(i),
                        Value::Text(t) => rusqlite::types::Value::from(t),
                        Value::Bool(b) => rusqlite::types::Value::from(b),
                    });
                    let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
                        Ok(record_from!(row.get))
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await
            }
            Db::Postgres(pg) => {
                pg.run(|client| async move {
                    let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = params
                        .into_iter()
                        .map(|v| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                            match v {
                                Value::Int(i) => Box::new(i),
                                Value::Text(t) => Box::new(t),
                                Value::Bool(b) => Box::new(b),
                            }
                        })
                        .collect();
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    let rows = client.query(sql, &refs).await?;
                    rows.iter()
                        .map(|row| Ok(record_from!(row.try_get)))
                        .collect()
                })
                .await
            }
        }
    }
}

impl Postgres {
    /// A trivial query: the server answers.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        self.run(|client| async move {
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    /// Take or extend the lease `name` for `holder` until `ttl` seconds from the database's
    /// clock (one clock for every instance); `false` if another holder's has not lapsed.
    pub(crate) async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: f64,
    ) -> Result<bool, Error> {
        self.run(|client| async move {
            let taken = client
                .query_opt(
                    "INSERT INTO gitcache_leases (name, holder, expires_at)
                 VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE
                     SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                     WHERE gitcache_leases.expires_at < now()
                         OR gitcache_leases.holder = EXCLUDED.holder
                 RETURNING holder",
                    &[&name, &holder, &ttl],
                )
                .await?;
            Ok(taken.is_some())
        })
        .await
    }

    /// Note `repo`'s response `key` (of `bytes`) as used now.
    pub(crate) async fn touch_response(
        &self,
        repo: &str,
        key: &str,
        bytes: i64,
    ) -> Result<(), Error> {
        self.run(|client| async move {
            client
                .execute(
                    "INSERT INTO gitcache_responses (repo, key, bytes, last_used)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (repo, key) DO UPDATE
                     SET bytes = EXCLUDED.bytes, last_used = EXCLUDED.last_used",
                    &[&repo, &key, &bytes],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Every indexed response, most recently used first: repository, key, bytes, and last
    /// use in seconds since the epoch.
    pub(crate) async fn responses(&self) -> Result<Vec<(String, String, i64, f64)>, Error> {
        self.run(|client| async move {
            let rows = client
                .query(
                    "SELECT repo, key, bytes, EXTRACT(EPOCH FROM last_used)::float8
                 FROM gitcache_responses ORDER BY last_used DESC",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                    ))
                })
                .collect()
        })
        .await
    }

    /// Forget `repo`'s response `key`, or all of `repo`'s.
    pub(crate) async fn forget_responses(
        &self,
        repo: &str,
        key: Option<&str>,
    ) -> Result<(), Error> {
        self.run(|client| async move {
            match key {
                Some(key) => {
                    client
                        .execute(
                            "DELETE FROM gitcache_responses WHERE repo = $1 AND key = $2",
                            &[&repo, &key],
                        )
                        .await?
                }
                None => {
                    client
                        .execute("DELETE FROM gitcache_responses WHERE repo = $1", &[&repo])
                        .await?
                }
            };
            Ok(())
        })
        .await
    }

    /// Write `instance`'s activity for each repository (replacing what it wrote before), and
    /// drop rows no instance wrote for `keep_days` days.
    pub(crate) async fn push_activity(
        &self,
        instance: &str,
        rows: &[(String, crate::Activity)],
        keep_days: i64,
    ) -> Result<(), Error> {
        let mut repos = Vec::with_capacity(rows.len());
        let (mut hits, mut misses) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        let (mut refreshed, mut ok) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        let (mut errors, mut error_at) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for (repo, a) in rows {
            repos.push(repo.as_str());
            hits.push(i64::try_from(a.hits).unwrap_or(i64::MAX));
            misses.push(i64::try_from(a.misses).unwrap_or(i64::MAX));
            refreshed.push(a.last_refresh.map(|r| r.0));
            ok.push(a.last_refresh.map(|r| r.1));
            // An upstream's error text can hold anything; PostgreSQL's text takes no NUL.
            errors.push(a.last_error.as_ref().map(|(_, text)| {
                text.chars()
                    .filter(|c| !c.is_control())
                    .take(1000)
                    .collect::<String>()
            }));
            error_at.push(a.last_error.as_ref().map(|(at, _)| *at));
        }
        self.run(|client| async move {
            // Every row in one statement, however many repositories (keys are unique: the
            // rows come from a map).
            client
                .execute(
                    "INSERT INTO gitcache_repo_activity (instance, repo, hits, misses,
                         last_refresh, last_refresh_ok, last_error, last_error_at, updated_at)
                     SELECT $1, repo, hits, misses, refreshed, ok, error, error_at, now()
                     FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::bool[], $7::text[], $8::bigint[])
                         AS rows (repo, hits, misses, refreshed, ok, error, error_at)
                     ON CONFLICT (instance, repo) DO UPDATE SET hits = EXCLUDED.hits,
                         misses = EXCLUDED.misses, last_refresh = EXCLUDED.last_refresh,
                         last_refresh_ok = EXCLUDED.last_refresh_ok,
                         last_error = EXCLUDED.last_error,
                         last_error_at = EXCLUDED.last_error_at, updated_at = now()",
                    &[
                        &instance, &repos, &hits, &misses, &refreshed, &ok, &errors, &error_at,
                    ],
                )
                .await?;
            client
                .execute(
                    "DELETE FROM gitcache_repo_activity
                     WHERE updated_at < now() - make_interval(days => $1::int)",
                    &[&(keep_days as i32)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Every instance's activity but `except`'s for the repositories `repos`, summed by
    /// repository in the database (one row per repository comes back, however many instances
    /// wrote): the latest refresh and the latest error win.
    pub(crate) async fn fleet_activity(
        &self,
        except: &str,
        repos: &[String],
    ) -> Result<std::collections::HashMap<String, crate::Activity>, Error> {
        self.run(|client| async move {
            let rows = client
                .query(
                    "SELECT repo, sum(hits)::bigint, sum(misses)::bigint,
                     max(last_refresh),
                     (array_agg(last_refresh_ok ORDER BY last_refresh DESC NULLS LAST))[1],
                     (array_agg(last_error ORDER BY last_error_at DESC NULLS LAST))[1],
                     max(last_error_at)
                 FROM gitcache_repo_activity WHERE instance <> $1 AND repo = ANY($2)
                 GROUP BY repo",
                    &[&except, &repos],
                )
                .await?;
            let mut fleet = std::collections::HashMap::with_capacity(rows.len());
            for row in rows {
                let activity = crate::Activity {
                    hits: row.try_get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64,
                    misses: row.try_get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
                    last_refresh: match (
                        row.try_get::<_, Option<i64>>(3)?,
                        row.try_get::<_, Option<bool>>(4)?,
                    ) {
                        (Some(at), Some(ok)) => Some((at, ok)),
                        _ => None,
                    },
                    last_error: match (
                        row.try_get::<_, Option<i64>>(6)?,
                        row.try_get::<_, Option<String>>(5)?,
                    ) {
                        (Some(at), Some(text)) => Some((at, text)),
                        _ => None,
                    },
                };
                fleet.insert(row.try_get::<_, String>(0)?, activity);
            }
            Ok(fleet)
        })
        .await
    }

    /// Give the lease `name` up if `holder` has it.
    pub(crate) async fn release_lease(&self, name: &str, holder: &str) -> Result<(), Error> {
        self.run(|client| async move {
            client
                .execute(
                    "DELETE FROM gitcache_leases WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// `work` on the connection, its answer waited for within [`Postgres::wait`]. A database
    /// that does not answer in time loses the connection: the statement is cancelled on the
    /// server, the connection closed, and the next call connects again rather than queueing
    /// behind a statement that may never come back. The same when the caller stops waiting
    /// (its own bound, shorter than this one) after half of it, the statement timeout the
    /// server keeps: by then a statement that runs has been stopped there, so nothing answers
    /// on that connection. A call given up has an unknown outcome: its statement may have
    /// run.
    async fn run<T, F>(&self, work: impl FnOnce(Arc<Connection>) -> F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let connection = self.client().await?;
        let mut call = Call {
            connection: &connection,
            started: std::time::Instant::now(),
            given_up_after: self.wait / 2,
            over: false,
        };
        let answer = tokio::time::timeout(self.wait, work(Arc::clone(&connection))).await;
        call.over = true;
        match answer {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(wait = ?self.wait, "catalog database did not answer; connecting again next time");
                connection.give_up();
                Err(Error::Unanswered(self.wait))
            }
        }
    }

    /// The connection, made again when the last one broke or was given up. Within
    /// [`RETRY_AFTER`] of a failed attempt, the failure again at once: callers queued behind
    /// an attempt do not each wait for one of their own.
    async fn client(&self) -> Result<Arc<Connection>, Error> {
        let mut slot = self.client.lock().await;
        if let Some(connection) = slot.connection.as_ref()
            && connection.usable()
        {
            return Ok(Arc::clone(connection));
        }
        slot.connection = None;
        if let Some((failed, why)) = &slot.failed
            && failed.elapsed() < RETRY_AFTER
        {
            return Err(Error::Unreachable(why.clone()));
        }
        match pg_connect(&self.url).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                *slot = Slot {
                    connection: Some(Arc::clone(&connection)),
                    failed: None,
                };
                Ok(connection)
            }
            Err(err) => {
                slot.failed = Some((std::time::Instant::now(), err.to_string()));
                Err(err)
            }
        }
    }
}

/// The connection a [`Postgres`] holds, and when connecting last failed, and why.
struct Slot {
    connection: Option<Arc<Connection>>,
    failed: Option<(std::time::Instant, String)>,
}
/// How long a failed connection attempt answers for the callers after it.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the server is given to hear a cancellation.
const CANCEL_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// One connection to PostgreSQL: its client, the task driving it, and whether a call on it
/// was given up.
pub(crate) struct Connection {
    client: tokio_postgres::Client,
    task: tokio::task::AbortHandle,
    given_up: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for Connection {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl Connection {
    fn usable(&self) -> bool {
        !self.client.is_closed() && !self.given_up.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// No more calls on this connection: the statement running is cancelled on the server
    /// (it may hold locks the next connection's would wait for), then the connection ends.
    fn give_up(&self) {
        if self
            .given_up
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let task = self.task.clone();
        // Called from a drop too, which may happen where no runtime is: then the
        // connection's task alone is ended.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            task.abort();
            return;
        };
        let cancel = self.client.cancel_token();
        runtime.spawn(async move {
            if let Ok(Err(err)) =
                tokio::time::timeout(CANCEL_WITHIN, cancel.cancel_query(tokio_postgres::NoTls))
                    .await
            {
                tracing::debug!(%err, "cancelling a statement given up failed");
            }
            task.abort();
        });
    }
}

/// A call under way: its connection given up if its caller stops waiting after
/// `given_up_after`.
struct Call<'a> {
    connection: &'a Connection,
    started: std::time::Instant,
    given_up_after: std::time::Duration,
    over: bool,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.over && self.started.elapsed() >= self.given_up_after {
            tracing::warn!(
                "a catalog database call was given up by its caller; connecting again next time"
            );
            self.connection.give_up();
        }
    }
}

/// How long connecting may take, unless the URL says.
const PG_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long one statement may run on the server, unless the URL's options say.
const PG_STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// A connection to `url`: within [`PG_CONNECT_TIMEOUT`], each statement within
/// [`PG_STATEMENT_TIMEOUT_MS`], and TCP keepalives on, so that a database that stops
/// answering (a host gone, a lock held) fails the catalog's work instead of holding it, and
/// the upkeep and leases behind it, for good.
async fn pg_connect(url: &str) -> Result<Connection, Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(PG_CONNECT_TIMEOUT);
    }
    let options = config.get_options().unwrap_or("").to_owned();
    if !options.contains("statement_timeout") {
        config.options(format!("{options} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}").trim());
    }
    // A server that went silent is found out within about a minute and a half.
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30))
        .keepalives_interval(std::time::Duration::from_secs(10))
        .keepalives_retries(6);
    // The socket's connect is bounded by the setting; the handshake after it by this.
    let within = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(PG_CONNECT_TIMEOUT)
        * 2;
    let (client, connection) = tokio::time::timeout(within, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| Error::Unanswered(within))??;
    let task = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(%err, "catalog database connection lost");
        }
    });
    Ok(Connection {
        client,
        task: task.abort_handle(),
        given_up: std::sync::atomic::AtomicBool::new(false),
    })
}

/// How long a call's answer is waited for: twice the statement timeout, this build's or the
/// one the URL's options set (`-c statement_timeout=N`, milliseconds or with a unit of `ms`,
/// `s`, `min` or `h`). One set as `0` (none), or in a form not read here, leaves a quarter of
/// an hour.
fn answer_bound(url: &str) -> Result<std::time::Duration, Error> {
    let config: tokio_postgres::Config = url.parse()?;
    let fallback = std::time::Duration::from_secs(15 * 60);
    let Some(options) = config.get_options() else {
        return Ok(std::time::Duration::from_millis(
            2 * PG_STATEMENT_TIMEOUT_MS,
        ));
    };
    // The server takes the last setting given.
    let Some((_, setting)) = options.rsplit_once("statement_timeout") else {
        return Ok(std::time::Duration::from_millis(
            2 * PG_STATEMENT_TIMEOUT_MS,
        ));
    };
    let value = setting
        .trim_start()
        .strip_prefix('=')
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("");
    let digits = value.len() - value.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = value.split_at(digits);
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return Ok(fallback),
    };
    Ok(match number.parse::<u64>() {
        // At least a second: a bound of milliseconds would give every call up.
        Ok(n) if n > 0 => {
            std::time::Duration::from_millis(n.saturating_mul(scale).saturating_mul(2).max(1_000))
        }
        _ => fallback,
    })
}

fn check_version(found: i64) -> Result<(), Error> {
    let known = known_version();
    if found > known {
        return Err(Error::SchemaTooNew { found, known });
    }
    Ok(())
}

fn to_timeout(seconds: i64) -> u32 {
    seconds.clamp(1, i64::from(u32::MAX)) as u32
}

/// Run SQLite work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Task(err.to_string()))?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_answer_bound_follows_the_statement_timeout() {
        let bound = |url: &str| super::answer_bound(url).unwrap();
        let base = "postgres://u@127.0.0.1/db";
        assert_eq!(bound(base), Duration::from_secs(60));
        for (options, expected) in [
            ("-c%20statement_timeout%3D300", Duration::from_secs(1)),
            ("-c%20statement_timeout%3D800", Duration::from_millis(1_600)),
            (
                "-c%20statement_timeout%3D1s%20-c%20statement_timeout%3D0",
                Duration::from_secs(900),
            ),
            ("-c%20statement_timeout%3D5s", Duration::from_secs(10)),
            ("-c%20statement_timeout%3D2min", Duration::from_secs(240)),
            ("-c%20statement_timeout%3D0", Duration::from_secs(900)),
            ("-c%20statement_timeout%3D5days", Duration::from_secs(900)),
            ("-c%20search_path%3Dx", Duration::from_secs(60)),
        ] {
            assert_eq!(
                bound(&format!("{base}?options={options}")),
                expected,
                "{options}"
            );
        }
    }
}
