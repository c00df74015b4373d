//! The catalog of repositories gitcache caches: one [`Record`] per repository (host, owner,
//! name, enabled, upstream timeout, response-cache limit), kept in SQLite (embedded, the
//! default) or PostgreSQL (shared by many instances), with its schema migrated at start.
//!
//! Every change goes to the database; reads on the request path ([`Catalog::lookup`]) use an
//! in-memory view that each change of this process refreshes at once and
//! [`Catalog::reload`] brings up to date with changes made by other instances.
//!
//! # Example
//!
//! ```
//! use gitcache_catalog::{Catalog, Changes, NewRepo};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gitcache_catalog::Error> {
//! let catalog = Catalog::in_memory()?; // or Catalog::open("catalog.db" or "postgres://…")
//! // Names as written (give the folded ones for an upstream that ignores case).
//! let record = catalog.create(&NewRepo::new("GitHub.com", "acme", "Widgets.git")).await?;
//! assert_eq!((record.host.as_str(), record.full_name()), ("github.com", "acme/Widgets".to_owned()));
//!
//! // The proxy's lookup: no database round trip.
//! assert!(catalog.lookup("GITHUB.COM", "acme", "Widgets").unwrap().enabled);
//!
//! let changes = Changes { enabled: Some(false), ..Changes::default() };
//! catalog.update(record.id, &changes).await?;
//! assert!(!catalog.lookup("github.com", "acme", "Widgets").unwrap().enabled);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod db;
pub mod record;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use db::{COLUMNS, Db, Value};
pub use record::{Changes, Invalid, NewRepo, Record};

/// What went wrong with the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field with a value it cannot take.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A record for the same host, owner and name exists.
    #[error("{0} is already in the catalog")]
    Duplicate(String),
    /// No record has this id.
    #[error("no cached repository with id {0}")]
    NotFound(i64),
    /// The database holds a schema newer than this build knows.
    #[error("the catalog's schema version {found} is newer than this gitcache knows ({known})")]
    SchemaTooNew {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// SQLite failed.
    #[error("catalog database (SQLite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed, or could not be reached.
    #[error("catalog database (PostgreSQL): {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A database task ended abnormally.
    #[error("catalog database task: {0}")]
    Task(String),
    /// PostgreSQL did not answer (a connection, or a call on one) within this long. A call
    /// given up has an unknown outcome: its statement may have run.
    #[error("catalog database (PostgreSQL): no answer within {0:?}")]
    Unanswered(std::time::Duration),
    /// Connecting to PostgreSQL failed a moment ago, for this reason; not tried again yet.
    #[error("{0} (a moment ago; not tried again yet)")]
    Unreachable(String),
}

impl Error {
    /// Whether the caller's input was at fault (a bad field, a duplicate, an unknown id).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_) | Error::Duplicate(_) | Error::NotFound(_)
        )
    }

    fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            }
            Error::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

/// tokio-postgres says only "db error" at the top; the server's message is in the source.
fn postgres_message(err: &tokio_postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

/// Records by `(host, owner, name)`, as last read.
#[derive(Debug, Default)]
struct View {
    by_name: HashMap<(String, String, String), Arc<Record>>,
    all: Vec<Arc<Record>>,
}

/// The catalog: the database and the in-memory view of it.
#[derive(Debug)]
pub struct Catalog {
    db: Db,
    view: RwLock<Arc<View>>,
}

impl Catalog {
    /// Open `location`: a `postgres://` or `postgresql://` URL, or the path of a SQLite file
    /// (created when missing). The schema is migrated before this returns.
    pub async fn open(location: &str) -> Result<Self, Error> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Self::with_db(Db::postgres(location).await?).await
        } else {
            Self::with_db(Db::sqlite(Path::new(location)).await?).await
        }
    }

    /// Open (creating) the SQLite catalog at `path`.
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::with_db(Db::sqlite(path.as_ref()).await?).await
    }

    /// A catalog that lives in memory only (tests, embedding).
    pub fn in_memory() -> Result<Self, Error> {
        Ok(Catalog {
            db: Db::sqlite_in_memory()?,
            view: RwLock::new(Arc::default()),
        })
    }

    async fn with_db(db: Db) -> Result<Self, Error> {
        let catalog = Catalog {
            db,
            view: RwLock::new(Arc::default()),
        };
        catalog.reload().await?;
        Ok(catalog)
    }

    /// Leases in this catalog's PostgreSQL for `holder` (a name unique to this instance), so
    /// that instances sharing mirrors take turns (see [`gitcache_storage::lease`]); `None`
    /// for SQLite, which no other instance sees.
    pub fn leases(self: &Arc<Self>, holder: impl Into<String>) -> Option<CatalogLeases> {
        matches!(self.db, Db::Postgres(_)).then(|| CatalogLeases {
            catalog: Arc::clone(self),
            holder: holder.into(),
        })
    }

    /// The index of stored responses shared in a bucket, in this catalog's PostgreSQL (see
    /// [`gitcache_storage::responses::ResponseIndex`]); `None` for SQLite, which no other
    /// instance sees.
    pub fn response_index(self: &Arc<Self>) -> Option<CatalogResponseIndex> {
        matches!(self.db, Db::Postgres(_)).then(|| CatalogResponseIndex {
            catalog: Arc::clone(self),
        })
    }

    /// Write what `instance` did for each repository since it started (its totals, replacing
    /// what it wrote before), so that every instance's admin page shows the fleet's; rows
    /// no instance wrote for 30 days go. Nothing for SQLite, which no other instance sees.
    pub async fn push_activity(
        &self,
        instance: &str,
        rows: &[(String, Activity)],
    ) -> Result<(), Error> {
        match &self.db {
            Db::Postgres(pg) => pg.push_activity(instance, rows, 30).await,
            Db::Sqlite(_) => Ok(()),
        }
    }

    /// What every instance but `except` did for each of the repositories `repos` (folders,
    /// as activity is written), summed (empty for SQLite): only those asked for are read, so
    /// that a page of records costs a page of rows, not the whole table.
    pub async fn fleet_activity(
        &self,
        except: &str,
        repos: &[String],
    ) -> Result<HashMap<String, Activity>, Error> {
        match &self.db {
            Db::Postgres(pg) => pg.fleet_activity(except, repos).await,
            Db::Sqlite(_) => Ok(HashMap::new()),
        }
    }

    /// Whether the database answers (a trivial query; for readiness checks).
    pub async fn ping(&self) -> Result<(), Error> {
        match &self.db {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(pg) => pg.ping().await,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.db.backend()
    }

    /// Every record, by id, read from the database.
    pub async fn list(&self) -> Result<Vec<Record>, Error> {
        self.db
            .records(
                &format!("SELECT {COLUMNS} FROM cached_repos ORDER BY id"),
                vec![],
            )
            .await
    }

    /// At most `limit` records with ids above `after`, by id, read from the database: a page
    /// of the list, the next one after the last id of this one.
    pub async fn list_page(&self, after: i64, limit: u32) -> Result<Vec<Record>, Error> {
        self.db
            .records(
                &format!("SELECT {COLUMNS} FROM cached_repos WHERE id > $1 ORDER BY id LIMIT $2"),
                vec![Value::Int(Some(after)), Value::Int(Some(i64::from(limit)))],
            )
            .await
    }

    /// The record `id`, read from the database.
    pub async fn get(&self, id: i64) -> Result<Record, Error> {
        self.db
            .records(
                &format!("SELECT {COLUMNS} FROM cached_repos WHERE id = $1"),
                vec![Value::Int(Some(id))],
            )
            .await?
            .pop()
            .ok_or(Error::NotFound(id))
    }

    /// Add a repository.
    pub async fn create(&self, new: &NewRepo) -> Result<Record, Error> {
        let new = new.normalized()?;
        let now = now();
        let result = self
            .db
            .records(
                &format!(
                    "INSERT INTO cached_repos \
                     (host, owner, name, enabled, timeout_seconds, max_cache_size_mb, \
                      created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {COLUMNS}"
                ),
                vec![
                    Value::Text(new.host.clone()),
                    Value::Text(new.owner.clone()),
                    Value::Text(new.name.clone()),
                    Value::Bool(new.enabled),
                    Value::Int(Some(i64::from(new.timeout_seconds))),
                    Value::Int(new.max_cache_size_mb.map(saturating_i64)),
                    Value::Int(Some(now)),
                ],
            )
            .await;
        let record = match result {
            Ok(mut rows) => rows
                .pop()
                .ok_or(Error::Task("insert returned no row".into()))?,
            Err(err) if err.is_unique_violation() => {
                return Err(Error::Duplicate(format!(
                    "{}/{}/{}",
                    new.host, new.owner, new.name
                )));
            }
            Err(err) => return Err(err),
        };
        self.reload().await?;
        Ok(record)
    }

    /// Change a record; `max_cache_size_mb: Some(0)` clears its limit.
    pub async fn update(&self, id: i64, changes: &Changes) -> Result<Record, Error> {
        changes.check()?;
        let mut sets = Vec::new();
        let mut params = vec![Value::Int(Some(id)), Value::Int(Some(now()))];
        let mut set = |column: &str, value: Value| {
            params.push(value);
            sets.push(format!("{column} = ${}", params.len()));
        };
        if let Some(enabled) = changes.enabled {
            set("enabled", Value::Bool(enabled));
        }
        if let Some(timeout) = changes.timeout_seconds {
            set("timeout_seconds", Value::Int(Some(i64::from(timeout))));
        }
        if let Some(mb) = changes.max_cache_size_mb {
            set(
                "max_cache_size_mb",
                Value::Int(Some(mb).filter(|&mb| mb > 0).map(saturating_i64)),
            );
        }
        sets.push("updated_at = $2".to_owned());
        let record = self
            .db
            .records(
                &format!(
                    "UPDATE cached_repos SET {} WHERE id = $1 RETURNING {COLUMNS}",
                    sets.join(", ")
                ),
                params,
            )
            .await?
            .pop()
            .ok_or(Error::NotFound(id))?;
        self.reload().await?;
        Ok(record)
    }

    /// Count a purge of record `id`'s cached data (its `purges` go up by one, its
    /// `updated_at` is now); returns it as it is now. Every instance sharing the catalog then
    /// drops its own copy as it reads the record again.
    pub async fn note_purge(&self, id: i64) -> Result<Record, Error> {
        let record = self
            .db
            .records(
                &format!(
                    "UPDATE cached_repos SET purges = purges + 1, updated_at = $2 \
                     WHERE id = $1 RETURNING {COLUMNS}"
                ),
                vec![Value::Int(Some(id)), Value::Int(Some(now()))],
            )
            .await?
            .pop()
            .ok_or(Error::NotFound(id))?;
        // Counted: a view that cannot be read again now is read at the next reload.
        if let Err(err) = self.reload().await {
            tracing::warn!(%err, "reading the catalog again after a purge failed");
        }
        Ok(record)
    }

    /// Remove a record; returns it as it was.
    pub async fn delete(&self, id: i64) -> Result<Record, Error> {
        let record = self
            .db
            .records(
                &format!("DELETE FROM cached_repos WHERE id = $1 RETURNING {COLUMNS}"),
                vec![Value::Int(Some(id))],
            )
            .await?
            .pop()
            .ok_or(Error::NotFound(id))?;
        self.reload().await?;
        Ok(record)
    }

    /// Read every record into the in-memory view (changes made by other instances sharing
    /// the database appear after this).
    pub async fn reload(&self) -> Result<(), Error> {
        let records = self.list().await?;
        let mut view = View::default();
        for record in records {
            let record = Arc::new(record);
            view.by_name.insert(
                (
                    record.host.clone(),
                    record.owner.clone(),
                    record.name.clone(),
                ),
                Arc::clone(&record),
            );
            view.all.push(record);
        }
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        Ok(())
    }

    /// The record of `owner/name` on `host`, from memory: the host compared without case,
    /// the names exactly (give the folded names for an upstream that ignores case, as
    /// records of it hold them).
    pub fn lookup(&self, host: &str, owner: &str, name: &str) -> Option<Arc<Record>> {
        let view = Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()));
        let key = (
            host.to_ascii_lowercase(),
            owner.to_owned(),
            name.strip_suffix(".git").unwrap_or(name).to_owned(),
        );
        view.by_name.get(&key).cloned()
    }

    /// [`lookup`](Self::lookup) of names as a repository key holds them (`.git` taken off the
    /// name once already, as records are): nothing more is taken off, so that a request for
    /// `x.git.git`, the repository `x.git`, does not find the record of `x`.
    pub fn lookup_exact(&self, host: &str, owner: &str, name: &str) -> Option<Arc<Record>> {
        let view = Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()));
        let key = (host.to_ascii_lowercase(), owner.to_owned(), name.to_owned());
        view.by_name.get(&key).cloned()
    }

    /// Every record, from memory, by id.
    pub fn records(&self) -> Vec<Arc<Record>> {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all
            .clone()
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Leases kept in the catalog's PostgreSQL, expiring by the database's clock.
#[derive(Debug, Clone)]
pub struct CatalogLeases {
    catalog: Arc<Catalog>,
    holder: String,
}

impl CatalogLeases {
    /// The name this instance holds leases under.
    pub fn holder(&self) -> &str {
        &self.holder
    }
}

impl gitcache_storage::lease::Leases for CatalogLeases {
    fn try_take<'a>(
        &'a self,
        name: &'a str,
        ttl: std::time::Duration,
    ) -> gitcache_storage::lease::LeaseFuture<'a, bool> {
        Box::pin(async move {
            let Db::Postgres(pg) = &self.catalog.db else {
                return Ok(true);
            };
            pg.try_lease(name, &self.holder, ttl.as_secs_f64())
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn release<'a>(&'a self, name: &'a str) -> gitcache_storage::lease::LeaseFuture<'a, ()> {
        Box::pin(async move {
            let Db::Postgres(pg) = &self.catalog.db else {
                return Ok(());
            };
            pg.release_lease(name, &self.holder)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// What instances did for one repository: fetches answered from the mirror as it was and
/// those that refreshed it first, the last refresh (when, in seconds since the epoch, and
/// whether it succeeded) and the last error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Fetches answered from the mirror as it was.
    pub hits: u64,
    /// Fetches that refreshed the mirror first (or went upstream).
    pub misses: u64,
    /// When the last refresh ended, and whether it succeeded.
    pub last_refresh: Option<(i64, bool)>,
    /// The last error, and when.
    pub last_error: Option<(i64, String)>,
}

impl Activity {
    /// Add `other`'s: counts summed, the later refresh and error kept.
    pub fn add(&mut self, other: &Activity) {
        self.hits += other.hits;
        self.misses += other.misses;
        if other
            .last_refresh
            .is_some_and(|o| self.last_refresh.is_none_or(|s| o.0 > s.0))
        {
            self.last_refresh = other.last_refresh;
        }
        if other
            .last_error
            .as_ref()
            .is_some_and(|o| self.last_error.as_ref().is_none_or(|s| o.0 > s.0))
        {
            self.last_error = other.last_error.clone();
        }
    }
}

/// The index of shared stored responses, in the catalog's PostgreSQL.
#[derive(Debug, Clone)]
pub struct CatalogResponseIndex {
    catalog: Arc<Catalog>,
}

impl CatalogResponseIndex {
    fn pg(&self) -> Result<&db::Postgres, String> {
        match &self.catalog.db {
            Db::Postgres(pg) => Ok(pg),
            Db::Sqlite(_) => Err("no PostgreSQL catalog".into()),
        }
    }
}

impl gitcache_storage::responses::ResponseIndex for CatalogResponseIndex {
    fn touch<'a>(
        &'a self,
        repo: &'a str,
        key: &'a str,
        bytes: u64,
    ) -> gitcache_storage::BoxFuture<'a, ()> {
        Box::pin(async move {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.pg()?
                .touch_response(repo, key, bytes)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn all(&self) -> gitcache_storage::BoxFuture<'_, Vec<gitcache_storage::responses::Indexed>> {
        Box::pin(async move {
            let rows = self.pg()?.responses().await.map_err(|e| e.to_string())?;
            Ok(rows
                .into_iter()
                .map(
                    |(repo, key, bytes, at)| gitcache_storage::responses::Indexed {
                        repo,
                        key,
                        bytes: bytes.max(0) as u64,
                        last_used: std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs_f64(at.max(0.0)),
                    },
                )
                .collect())
        })
    }

    fn forget<'a>(
        &'a self,
        repo: &'a str,
        key: Option<&'a str>,
    ) -> gitcache_storage::BoxFuture<'a, ()> {
        Box::pin(async move {
            self.pg()?
                .forget_responses(repo, key)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
