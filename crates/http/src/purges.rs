//! Purges across instances that share a PostgreSQL catalog but no bucket. Each such instance
//! keeps copies of its own, which a purge made on another would not reach: a purge is
//! therefore counted in its record (`purges`), and every instance drops its own copy (mirror
//! and stored answers) once it reads a count above the one its copies are up to. Those counts
//! are kept in `<data-dir>/catalog-purges`, so that an instance that was down through a purge
//! drops its copy as it starts. A record removed elsewhere drops this instance's copy too
//! once a view without it follows one with it (unless the settings still cache its
//! repository). With a bucket, the bucket's tombstones carry purges and removals instead;
//! with SQLite, no other instance reads the catalog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gitcache_catalog::{Catalog, Record};

use crate::config::ProxyConfig;
use crate::mirrors::Mirrors;
use crate::response_cache::ResponseCache;

/// The purge counts this instance's copies are up to, by record.
#[derive(Debug)]
pub(crate) struct Purges {
    file: PathBuf,
    seen: Mutex<HashMap<i64, i64>>,
    /// Held while a purge is made and counted, or purges counted elsewhere are applied: an
    /// instance does not drop its copy twice for one purge.
    turn: tokio::sync::Mutex<()>,
    /// Whether purges counted elsewhere are applied here.
    follow: bool,
    /// The records of the catalog's view last followed: one gone from the next view was
    /// removed (here or elsewhere), and this instance's copy goes as a removal's does.
    known: Mutex<Option<HashMap<i64, std::sync::Arc<Record>>>>,
}

/// Where the counts are kept, in the data directory.
const FILE: &str = "catalog-purges";

impl Purges {
    /// The counts kept under `data_dir` (none yet: every copy counts as up to no purge);
    /// purges counted elsewhere are applied when `follow`.
    pub(crate) fn open(data_dir: &Path, follow: bool) -> Self {
        let file = data_dir.join(FILE);
        let seen = std::fs::read_to_string(&file)
            .map(|text| parse(&text))
            .unwrap_or_default();
        Purges {
            file,
            seen: Mutex::new(seen),
            turn: tokio::sync::Mutex::new(()),
            follow,
            known: Mutex::new(None),
        }
    }

    /// Purge `record`: drop this instance's copy, then count the purge in the catalog, which
    /// the other instances sharing it follow.
    pub(crate) async fn purge(
        &self,
        catalog: &Catalog,
        local: Local<'_>,
        record: &Record,
    ) -> Result<(), String> {
        let _turn = self.turn.lock().await;
        local.drop_copy(record).await?;
        let counted = catalog
            .note_purge(record.id)
            .await
            .map_err(|err| format!("the purge could not be counted in the catalog: {err}"))?;
        self.noted(|seen| {
            seen.insert(counted.id, counted.purges);
        });
        Ok(())
    }

    /// Drop the copies of records purged elsewhere since this instance's copies were made, as
    /// the catalog's view read last says. A copy that cannot be dropped now is tried again
    /// next time.
    pub(crate) async fn follow(&self, catalog: &Catalog, local: Local<'_>) {
        if !self.follow {
            return;
        }
        let behind = |record: &Record| {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            // Above the one noted: a view read before a purge made here (a reload that
            // finished after the purge's own) is not taken for another purge.
            record.purges > seen.get(&record.id).copied().unwrap_or(0)
        };
        let records = catalog.records();
        for id in records.iter().filter(|r| behind(r)).map(|r| r.id) {
            // One at a time, each as the view has it now (a purge made here meanwhile is
            // noted already): an admin purge here waits for one drop at most (a drop waits
            // for the mirror's refresh under way, if any).
            let _turn = self.turn.lock().await;
            let Some(record) = catalog.records().into_iter().find(|r| r.id == id) else {
                continue;
            };
            if !behind(&record) {
                continue;
            }
            match local.drop_copy(&record).await {
                Ok(_) => {
                    tracing::info!(
                        id = record.id,
                        repo = %record.full_name(),
                        host = %record.host,
                        "cached repository purged on another instance: this copy dropped"
                    );
                    self.noted(|seen| {
                        seen.insert(record.id, record.purges);
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, repo = %record.full_name(), "dropping a copy purged on another instance failed");
                }
            }
        }
        // Removed records: this instance's copy goes, as a removal's does where it is made
        // (unless the server-wide settings still cache the repository), and their counts
        // are forgotten (the file stays as small as the catalog).
        let _turn = self.turn.lock().await;
        let records = catalog.records();
        let listed: std::collections::HashSet<i64> = records.iter().map(|r| r.id).collect();
        let gone: Vec<std::sync::Arc<Record>> = {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let gone = known
                .as_ref()
                .map(|known| {
                    known
                        .values()
                        .filter(|r| !listed.contains(&r.id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            *known = Some(records.into_iter().map(|r| (r.id, r)).collect());
            gone
        };
        for record in gone {
            if local.still_cached(&record) {
                continue;
            }
            match local.drop_copy(&record).await {
                Ok(true) => tracing::info!(
                    id = record.id,
                    repo = %record.full_name(),
                    host = %record.host,
                    "cached repository removed: this instance's copy dropped"
                ),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, repo = %record.full_name(), "dropping the copy of a removed repository failed");
                }
            }
        }
        self.noted(|seen| seen.retain(|id, _| listed.contains(id)));
    }

    /// Change the counts with `change`, and write them down if they changed.
    fn noted(&self, change: impl FnOnce(&mut HashMap<i64, i64>)) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.clone();
        change(&mut seen);
        if *seen == before {
            return;
        }
        let mut text: Vec<(i64, i64)> = seen.iter().map(|(&id, &n)| (id, n)).collect();
        text.sort_unstable();
        let text: String = text.iter().map(|(id, n)| format!("{id} {n}\n")).collect();
        // Written beside and renamed: a crash leaves the old counts or the new ones. Should
        // the write fail, the counts in memory still hold until a restart, which would drop
        // some copies again (a fetch anew each), never keep one.
        let temporary = self.file.with_extension("tmp");
        if let Err(err) =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &self.file))
        {
            tracing::warn!(%err, "writing the purge counts failed");
        }
    }
}

/// `id purges` lines; others passed over (they count as no purge, so at worst a copy is
/// dropped again).
fn parse(text: &str) -> HashMap<i64, i64> {
    text.lines()
        .filter_map(|line| {
            let (id, n) = line.split_once(' ')?;
            Some((id.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// What an instance holds of a repository: its mirror and its stored answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Local<'a> {
    pub(crate) config: &'a ProxyConfig,
    pub(crate) mirrors: &'a Mirrors,
    pub(crate) responses: Option<&'a ResponseCache>,
}

impl Local<'_> {
    /// Drop `record`'s mirror and stored answers here: whether it had a mirror.
    pub(crate) async fn drop_copy(&self, record: &Record) -> Result<bool, String> {
        let Ok(key) = self.config.key(&record.host, &record.owner, &record.name) else {
            return Ok(false);
        };
        let had = self.mirrors.registry().path(&key).is_dir();
        self.mirrors.remove(&key).await.map_err(|e| e.to_string())?;
        if let Some(responses) = self.responses {
            responses.purge_repo(&key.relative_path()).await?;
        }
        Ok(had)
    }

    /// Whether the server-wide settings cache `record`'s repository without it.
    pub(crate) fn still_cached(&self, record: &Record) -> bool {
        let default = crate::config::url_host(&self.config.upstream).unwrap_or_default();
        let named = (!record.host.eq_ignore_ascii_case(&default)).then_some(record.host.as_str());
        self.config
            .cache
            .is_cached(named, &record.owner, &record.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts read back as written; lines that are not a count pass for none.
    #[test]
    fn counts_are_read_as_written_and_bad_lines_count_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let purges = Purges::open(dir.path(), true);
        purges.noted(|seen| {
            seen.insert(7, 2);
            seen.insert(3, 1);
        });
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text, "3 1\n7 2\n");
        let again = Purges::open(dir.path(), true);
        assert_eq!(*again.seen.lock().unwrap(), HashMap::from([(3, 1), (7, 2)]));
        assert_eq!(
            parse("1 2\nx 3\n4\n5 y\n6 7 8\n9 10"),
            HashMap::from([(1, 2), (9, 10)])
        );
    }
}
