//! Leases: one holder at a time for a named piece of work (a mirror's refresh, its
//! maintenance) among instances that share a store, with an expiry so that the work of a
//! holder that died is taken over once its lease lapses.
//!
//! A lease is an optimisation, never what keeps data whole: a holder that lost its lease (a
//! pause longer than the expiry) still commits through a conditional write
//! ([`crate::store::ObjectStore::replace_manifest`]), which refuses it if another committed
//! first. Holders renew while they work ([`Held`] does it in the background).
//!
//! [`MemoryLeases`] serves instances within one process; the catalog's PostgreSQL
//! implementation serves a fleet.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use gitcache_storage::lease::{Leases, MemoryLeases};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let (a, b) = MemoryLeases::pair();
//! assert!(a.try_take("refresh:acme/widgets", Duration::from_secs(30)).await?);
//! assert!(!b.try_take("refresh:acme/widgets", Duration::from_secs(30)).await?);
//! a.release("refresh:acme/widgets").await?;
//! assert!(b.try_take("refresh:acme/widgets", Duration::from_secs(30)).await?);
//! # Ok::<(), String>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A boxed future, so that leases can be chosen at run time (`dyn Leases`).
pub type LeaseFuture<'a, T> = crate::BoxFuture<'a, T>;

/// Named leases held by this instance among others.
pub trait Leases: Send + Sync + std::fmt::Debug {
    /// Take (or, if this instance holds it, extend) the lease `name` for `ttl`; `false` if
    /// another instance holds it and it has not lapsed.
    fn try_take<'a>(&'a self, name: &'a str, ttl: Duration) -> LeaseFuture<'a, bool>;

    /// Give the lease `name` up, if this instance holds it.
    fn release<'a>(&'a self, name: &'a str) -> LeaseFuture<'a, ()>;
}

/// Leases shared by the instances of one process (tests, several registries in one server).
#[derive(Debug, Clone)]
pub struct MemoryLeases {
    holder: u64,
    table: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

impl MemoryLeases {
    /// Two holders of one table.
    pub fn pair() -> (MemoryLeases, MemoryLeases) {
        let first = MemoryLeases {
            holder: 1,
            table: Arc::default(),
        };
        let second = first.another();
        (first, second)
    }

    /// Another holder of the same table.
    pub fn another(&self) -> MemoryLeases {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(2);
        MemoryLeases {
            holder: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            table: Arc::clone(&self.table),
        }
    }
}

impl Leases for MemoryLeases {
    fn try_take<'a>(&'a self, name: &'a str, ttl: Duration) -> LeaseFuture<'a, bool> {
        Box::pin(async move {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match table.get(name) {
                Some((holder, until)) if *holder != self.holder && *until > now => Ok(false),
                _ => {
                    table.insert(name.to_owned(), (self.holder, now + ttl));
                    Ok(true)
                }
            }
        })
    }

    fn release<'a>(&'a self, name: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if table
                .get(name)
                .is_some_and(|(holder, _)| *holder == self.holder)
            {
                table.remove(name);
            }
            Ok(())
        })
    }
}

/// A lease held: renewed in the background every third of its expiry, released when
/// [`release`](Held::release)d (or, if dropped, left to lapse).
#[derive(Debug)]
pub struct Held {
    leases: Arc<dyn Leases>,
    name: String,
    renewing: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Wait until the lease `name` is taken, polling every `poll` (a holder that died lets it
    /// lapse after `ttl`). `Err`: the leases could not be asked (the caller decides whether to
    /// go on without).
    pub async fn take(
        leases: Arc<dyn Leases>,
        name: String,
        ttl: Duration,
        poll: Duration,
    ) -> Result<Held, String> {
        while !leases.try_take(&name, ttl).await? {
            tokio::time::sleep(poll).await;
        }
        Ok(Self::renewed(leases, name, ttl))
    }

    /// Take the lease `name` if it is free now; `None` if another holds it.
    pub async fn try_take(
        leases: Arc<dyn Leases>,
        name: String,
        ttl: Duration,
    ) -> Result<Option<Held>, String> {
        if leases.try_take(&name, ttl).await? {
            Ok(Some(Self::renewed(leases, name, ttl)))
        } else {
            Ok(None)
        }
    }

    fn renewed(leases: Arc<dyn Leases>, name: String, ttl: Duration) -> Held {
        let (renewer, lease) = (Arc::clone(&leases), name.clone());
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match renewer.try_take(&lease, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lease, "lost a lease to another instance");
                        return;
                    }
                    Err(err) => tracing::warn!(lease, %err, "renewing a lease failed"),
                }
            }
        });
        Held {
            leases,
            name,
            renewing,
        }
    }

    /// Stop renewing and give the lease up.
    pub async fn release(self) {
        self.renewing.abort();
        if let Err(err) = self.leases.release(&self.name).await {
            tracing::warn!(lease = self.name, %err, "releasing a lease failed; it will lapse");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}
