//! Background upkeep, for the server's life: the catalog read again for changes other
//! instances made, Prometheus' own upkeep, the mirror count, stored responses evicted down to
//! their limits, and (with a shared store) mirrors in use brought up to what other instances
//! committed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitcache_catalog::Catalog;

use crate::config::ProxyConfig;
use crate::metrics::{self, RepoLabels};
use crate::mirrors::Mirrors;
use crate::response_cache::ResponseCache;

/// How often an instance writes all of its activity rows to the catalog, changed or not.
const FULL_PUSH_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What upkeep looks after.
#[derive(Debug)]
pub(crate) struct Upkeep {
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) catalog: Option<Arc<Catalog>>,
    pub(crate) prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) mirrors: Arc<Mirrors>,
    pub(crate) responses: Option<Arc<ResponseCache>>,
    pub(crate) labels: Arc<RepoLabels>,
    /// This instance's name among those sharing the catalog.
    pub(crate) instance: String,
    /// The activity last written to the catalog, so that only what changed is written.
    pub(crate) pushed: std::sync::Mutex<HashMap<String, gitcache_catalog::Activity>>,
    /// Purges counted in the catalog by other instances, followed here.
    pub(crate) purges: Arc<crate::purges::Purges>,
    /// Whether purges are being followed now (see [`Upkeep::follow_purges`]).
    pub(crate) following: Arc<std::sync::atomic::AtomicBool>,
    /// Whether an eviction from the bucket runs (see [`Upkeep::evict_shared`]).
    pub(crate) evicting_shared: Arc<std::sync::atomic::AtomicBool>,
}

impl Upkeep {
    /// Run forever.
    pub(crate) async fn run(self: Arc<Self>) {
        // Stops with this.
        let _catching_up = (self.mirrors.registry().shared().is_some()
            && !self.config.storage_poll_interval.is_zero())
        .then(|| {
            let (mirrors, every, window) = (
                Arc::clone(&self.mirrors),
                self.config.storage_poll_interval,
                self.config.active_window,
            );
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    mirrors.catch_up(window).await;
                }
            });
            crate::proxy::AbortOnDrop(task.abort_handle())
        });
        let tick = self
            .config
            .catalog_reload_interval
            .max(Duration::from_millis(100));
        let cleanup = self.responses.as_ref().map(|c| c.cleanup_interval());
        let mut last_cleanup = Instant::now();
        let mut last_full_push = Instant::now();
        // Purges made while this instance was down, from the view read at start.
        self.follow_purges();
        loop {
            tokio::time::sleep(cleanup.map_or(tick, |c| c.min(tick))).await;
            if last_full_push.elapsed() >= FULL_PUSH_EVERY {
                // Rows no instance wrote for 30 days are dropped: a live instance writes all
                // of its own again once a day, changed or not.
                self.pushed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                last_full_push = Instant::now();
            }
            if let Some(catalog) = &self.catalog {
                match catalog.reload().await {
                    Ok(()) => self.follow_purges(),
                    Err(err) => {
                        tracing::warn!(%err, "reading the catalog failed; keeping the last view")
                    }
                }
                // What this instance did, for the other instances' admin pages.
                let activity: Vec<(String, gitcache_catalog::Activity)> = {
                    let pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
                    self.mirrors
                        .all_stats()
                        .into_iter()
                        .map(|(key, stats)| {
                            (
                                crate::shared_responses::repo_text(&key.relative_path()),
                                stats,
                            )
                        })
                        .filter(|(repo, stats)| pushed.get(repo) != Some(stats))
                        .collect()
                };
                if !activity.is_empty() {
                    match catalog.push_activity(&self.instance, &activity).await {
                        Ok(()) => self
                            .pushed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(activity),
                        Err(err) => {
                            tracing::warn!(%err, "writing this instance's activity to the catalog failed")
                        }
                    }
                }
            }
            if let Some(handle) = &self.prometheus {
                handle.run_upkeep();
            }
            // Due at its interval, or sooner when much was stored since the last.
            let due = cleanup.is_some_and(|c| last_cleanup.elapsed() >= c)
                || self.responses.as_ref().is_some_and(|c| c.cleanup_due());
            if due {
                last_cleanup = Instant::now();
            }
            self.mirrors.enforce_budget().await;
            let upkeep = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || upkeep.pass(due)).await;
            if due {
                self.evict_shared();
            }
        }
    }

    /// Evict stored answers from the bucket, in a task of its own: a pass deletes one object
    /// at a time and may take long, which must not hold up the rest of the upkeep (the local
    /// eviction, the disk budget, the catalog). One such task at a time.
    fn evict_shared(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.responses.as_ref().is_some_and(|c| c.is_shared())
            || self.evicting_shared.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let upkeep = Arc::clone(self);
        tokio::spawn(async move {
            let _done = Clears(Arc::clone(&upkeep.evicting_shared));
            if let Some(cache) = &upkeep.responses {
                let evicted = cache.evict_shared(upkeep.response_limits()).await;
                for (repo, entries) in evicted {
                    metrics::evicted(upkeep.rel_labels(std::path::Path::new(&repo)), entries);
                }
            }
        });
    }

    /// Drop the copies of repositories purged on other instances (see [`crate::purges`]), in
    /// a task of its own: a drop waits for the mirror's refresh under way, which must not
    /// hold up the rest of the upkeep. One such task at a time.
    fn follow_purges(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.catalog.is_none() || self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        let upkeep = Arc::clone(self);
        tokio::spawn(async move {
            let _done = Clears(Arc::clone(&upkeep.following));
            if let Some(catalog) = &upkeep.catalog {
                let local = crate::purges::Local {
                    config: &upkeep.config,
                    mirrors: &upkeep.mirrors,
                    responses: upkeep.responses.as_deref(),
                };
                upkeep.purges.follow(catalog, local).await;
            }
        });
    }

    /// One pass of the blocking work: count mirrors, and evict when `evict`. Run once when
    /// the proxy is made too, so that gauges are there at the first scrape.
    pub(crate) fn pass(&self, evict: bool) {
        // A listing that failed (say, out of file handles) does not mean mirrors are gone.
        let (on_disk, listed): (std::collections::HashSet<_>, bool) =
            match self.mirrors.registry().try_on_disk() {
                Ok(keys) => (keys.into_iter().collect(), true),
                Err(err) => {
                    tracing::warn!(%err, "listing the mirrors failed");
                    (
                        self.mirrors.registry().on_disk().into_iter().collect(),
                        false,
                    )
                }
            };
        metrics::mirrors(on_disk.len());
        // Repositories with caching enabled, as the catalog says (a disabled record passes
        // its repository through), and those mirrored under the server-wide settings.
        let mut enabled = on_disk.clone();
        if let Some(catalog) = &self.catalog {
            for record in catalog.records() {
                if let Ok(key) = self.config.key(&record.host, &record.owner, &record.name) {
                    if record.enabled {
                        enabled.insert(key);
                    } else {
                        enabled.remove(&key);
                    }
                }
            }
        }
        metrics::repos_active(enabled.len());
        self.bound_memory(listed.then_some(&on_disk));
        if evict && let Some(cache) = &self.responses {
            cache.evict(self.response_limits(), |rel, entries, bytes| {
                let labels = self.rel_labels(rel);
                match entries {
                    Some(entries) => metrics::evicted(labels, entries),
                    None => metrics::response_size(labels, bytes),
                }
            });
        }
    }

    /// What is remembered of repositories that have no mirror here stays bounded, and so do
    /// the mirrors kept open.
    /// (`on_disk`: the mirrors listed, unless the listing failed; then only the open mirrors
    /// unused for long are closed.)
    fn bound_memory(
        &self,
        on_disk: Option<&std::collections::HashSet<gitcache_storage::repo::RepoKey>>,
    ) {
        self.mirrors.close_idle(
            on_disk,
            crate::mirrors::MAX_IDLE_OPEN,
            crate::mirrors::IDLE_FOR,
        );
        let Some(on_disk) = on_disk else {
            return;
        };
        let forgotten = self
            .mirrors
            .forget_beyond(on_disk, crate::mirrors::MAX_KEPT_OFF_DISK);
        if !forgotten.is_empty() {
            let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
            for key in &forgotten {
                pushed.remove(&crate::shared_responses::repo_text(&key.relative_path()));
            }
        }
    }

    /// The response-cache limit of each repository by folder (its mirror's relative path),
    /// for one eviction pass: [`response_limit`] of its record, else the configured one.
    fn response_limits(&self) -> impl Fn(&Path) -> Option<u64> + use<> {
        let default = self
            .config
            .response_cache
            .as_ref()
            .and_then(|c| c.max_repo_bytes);
        let mut limits = HashMap::new();
        if let Some(catalog) = &self.catalog {
            for record in catalog.records() {
                if let Ok(key) = self.config.key(&record.host, &record.owner, &record.name) {
                    limits.insert(key.relative_path(), response_limit(&self.config, &record));
                }
            }
        }
        move |rel: &Path| limits.get(rel).copied().unwrap_or(default)
    }

    /// Metric labels of the repository stored under `rel` (`<host>/<owner>/<repo>.git`).
    fn rel_labels(&self, rel: &Path) -> (String, String) {
        // Labels are lower case: the `^` that marks an upper-case letter in a folder goes.
        let mut parts = rel
            .iter()
            .rev()
            .map(|p| p.to_string_lossy().replace('^', ""));
        let repo = parts.next().unwrap_or_default();
        let owner = parts.next().unwrap_or_default();
        self.labels
            .get(&owner, repo.strip_suffix(".git").unwrap_or(&repo))
    }
}

/// The bytes the stored responses of `record`'s repository may take (`None`: no limit):
/// its own limit, else the configured one.
pub(crate) fn response_limit(
    config: &ProxyConfig,
    record: &gitcache_catalog::Record,
) -> Option<u64> {
    record.max_cache_size_mb.map_or_else(
        || {
            config
                .response_cache
                .as_ref()
                .and_then(|c| c.max_repo_bytes)
        },
        |mb| Some(mb.saturating_mul(1 << 20)),
    )
}

/// Clears a task's flag however the task ends.
struct Clears(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Clears {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}
