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
    /// The records of the catalog's view last followed, and those missing from it that an
    /// earlier view had (see [`Purges::follow`]).
    known: Mutex<Option<Known<std::sync::Arc<Record>>>>,
}

/// What [`Purges::follow`] remembers of the views it followed: the records of the last, by
/// id, and those the one before had that the last lacks.
#[derive(Debug)]
struct Known<T> {
    records: HashMap<i64, T>,
    missing_once: HashMap<i64, T>,
}

impl<T> Known<T> {
    /// Take in the view `now` after those `known` remembers (none yet: the first): the records
    /// removed, those that two views in a row lacked after one that had them.
    fn removed(known: &mut Option<Self>, now: HashMap<i64, T>) -> Vec<T> {
        let Some(before) = known.take() else {
            *known = Some(Known {
                records: now,
                missing_once: HashMap::new(),
            });
            return Vec::new();
        };
        let gone = (before.missing_once.into_iter())
            .filter(|(id, _)| !now.contains_key(id))
            .map(|(_, record)| record)
            .collect();
        let missing_once = (before.records.into_iter())
            .filter(|(id, _)| !now.contains_key(id))
            .collect();
        *known = Some(Known {
            records: now,
            missing_once,
        });
        gone
    }
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
        // (unless the server-wide settings still cache the repository, or a record listed
        // now names it again). A record counts as removed once two views in a row, after one
        // with it, lack it: a view read out of order (an older reload installed after a
        // newer one) drops nothing. A drop that fails is tried again at the next follow.
        let records = catalog.records();
        let listed: std::collections::HashSet<i64> = records.iter().map(|r| r.id).collect();
        let named_now: std::collections::HashSet<_> = records
            .iter()
            .filter_map(|r| local.config.key(&r.host, &r.owner, &r.name).ok())
            .collect();
        let gone = Known::removed(
            &mut self.known.lock().unwrap_or_else(|p| p.into_inner()),
            records.into_iter().map(|r| (r.id, r)).collect(),
        );
        for record in gone {
            let named_again = (local
                .config
                .key(&record.host, &record.owner, &record.name)
                .ok())
            .is_some_and(|key| named_now.contains(&key));
            if named_again || local.still_cached(&record) {
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
                    tracing::warn!(%err, repo = %record.full_name(), "dropping the copy of a removed repository failed; tried again at the next reload");
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(known) = known.as_mut() {
                        known.missing_once.insert(record.id, record);
                    }
                }
            }
        }
        let _turn = self.turn.lock().await;
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
        let had = self.mirrors.remove(&key).await.map_err(|e| e.to_string())?;
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

    /// A record counts as removed once two views in a row lack it after one that had it:
    /// missing from one view only (read out of order), it is not; back, it is forgotten.
    #[test]
    fn a_record_is_removed_once_two_views_in_a_row_lack_it() {
        let view = |ids: &[i64]| ids.iter().map(|&id| (id, id)).collect::<HashMap<_, _>>();
        let mut known = None;
        assert!(Known::removed(&mut known, view(&[1, 2, 3])).is_empty());
        assert!(Known::removed(&mut known, view(&[1, 3])).is_empty(), "once");
        assert!(
            Known::removed(&mut known, view(&[1, 2, 3])).is_empty(),
            "back: forgotten"
        );
        assert!(Known::removed(&mut known, view(&[1, 3])).is_empty());
        assert_eq!(Known::removed(&mut known, view(&[1, 3])), [2], "twice");
        assert!(
            Known::removed(&mut known, view(&[1, 3])).is_empty(),
            "told once"
        );
        let mut gone = Known::removed(&mut known, view(&[]));
        assert!(gone.is_empty());
        gone = Known::removed(&mut known, view(&[]));
        gone.sort_unstable();
        assert_eq!(gone, [1, 3]);
    }

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
