//! gitcache-server: reads the configuration, sets up logging, wires the library crates and
//! waits for a signal. No protocol logic lives here.

mod aws;
mod config;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use gitcache_http::catalog::Catalog;
use gitcache_http::tls::TlsFiles;
use gitcache_http::{Face, Services};
use gitcache_storage::store::{AnyStore, FsStore};

use config::{Config, Flags, LogFormat};

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "no SIGTERM handler; stopping on SIGINT only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received, shutting down");
}

/// Read the TLS certificate and key again at every SIGHUP (a renewal), keeping the ones in
/// use when the new files cannot be used. Without TLS a SIGHUP reloads nothing (and, handled,
/// does not stop the server as it would by default). The handler is in place when this
/// returns (within a runtime), not only once the future first runs: a reload sent while the
/// server starts must not stop it.
fn reload_on_hangup(tls: Option<Arc<TlsFiles>>) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(err) => {
                    tracing::warn!(%err, "no SIGHUP handler; the TLS certificate is read once");
                    return;
                }
            };
            reload_each_hangup(&mut hangups, tls.as_deref()).await;
        }
        #[cfg(not(unix))]
        let _ = tls;
    }
}

#[cfg(unix)]
async fn reload_each_hangup(hangups: &mut tokio::signal::unix::Signal, tls: Option<&TlsFiles>) {
    while hangups.recv().await.is_some() {
        match tls.map(TlsFiles::reload) {
            Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
            Some(Err(err)) => {
                tracing::error!(%err, "TLS certificate not reloaded; keeping the one in use");
            }
            None => tracing::info!("SIGHUP: nothing to reload (no TLS)"),
        }
    }
}

fn init_tracing(config: &Config) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(config.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// glibc's allocator gives threads that allocate at once arenas of their own (up to eight per
/// core) and keeps what is freed in each: with a blocking thread per streamed response, peak
/// memory grew with the number of clients reading the same response. One arena per core keeps
/// it flat (measured in `benches/README.md`). `MALLOC_ARENA_MAX` in the environment, if set,
/// is left to decide.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` sets one of glibc's allocator tunables and touches no memory of
    // ours; it runs before any other thread exists, and `M_ARENA_MAX` accepts any positive
    // count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc_arenas() {}

/// glibc returns freed memory to the system only from the top of its main heap: what a
/// mirror's first fetch or a burst of answers freed elsewhere stays resident (about 45 MiB
/// after the bench repository's miss, with nothing in use). A thread asks it every ten
/// seconds to give back every whole free page (`malloc_trim`), a few milliseconds of work
/// (measured in `benches/README.md`), as other allocators do on their own after a delay.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_freed_memory() {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(EVERY);
                let started = std::time::Instant::now();
                // SAFETY: `malloc_trim` only releases pages that glibc's allocator holds
                // free; it takes each arena's lock as any allocation does.
                unsafe {
                    libc::malloc_trim(0);
                }
                // It holds each arena's lock while it walks that arena's free blocks.
                let took = started.elapsed();
                if took > std::time::Duration::from_millis(100) {
                    tracing::warn!(?took, "returning free memory to the system was slow");
                } else {
                    tracing::trace!(?took, "free memory returned");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to return freed memory");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

fn main() -> Result<()> {
    bound_malloc_arenas();
    let config = Config::load(Flags::parse())?;
    init_tracing(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    return_freed_memory();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(gitcache_http::metrics::BUCKETS)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Every response streamed from a mirror holds a blocking thread while its client
        // reads: the pool must not run out before the connection limit does.
        .max_blocking_threads(
            config
                .proxy
                .limits
                .blocking_threads(config.admin_listen.is_some()),
        )
        .build()?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(TlsFiles::load(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = gitcache_http::ServeOptions {
        grace_period: config.shutdown_grace,
        face: if config.admin_listen.is_some() {
            Face::Git
        } else {
            Face::All
        },
        upkeep: true,
        tls: tls.clone(),
    };
    let (listen, admin_listen, pages) = (config.listen, config.admin_listen, config.pages);
    runtime.block_on(async move {
        tokio::spawn(reload_on_hangup(tls.clone()));
        std::fs::create_dir_all(&config.proxy.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.proxy.data_dir.display()
            )
        })?;
        let catalog = Catalog::open(&config.database)
            .await
            .context("cannot open the catalog")?;
        tracing::info!(backend = catalog.backend(), records = catalog.records().len(), "catalog open");
        let services = Services {
            catalog: Some(Arc::new(catalog)),
            prometheus: Some(prometheus),
        };
        let proxy = gitcache_http::Proxy::with_services(config.proxy, services)
            .context("invalid configuration")?;
        if let Some(shared) = proxy.registry().shared() {
            check_bucket(shared.store()).await?;
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin_listener = match admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (admin)"))?,
            ),
            None => None,
        };
        let addr = listener.local_addr()?;
        tracing::info!(%addr, upstream = %proxy.config().upstream, data_dir = %proxy.config().data_dir.display(), "gitcache listening");
        // Also on stderr as plain lines, whatever the log format: scripts wait for them.
        eprintln!("gitcache listening on {scheme}://{addr}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let admin = admin_listener.map(|listener| {
            let admin_addr = listener.local_addr().ok();
            if let Some(admin_addr) = admin_addr {
                tracing::info!(addr = %admin_addr, "admin listening");
                eprintln!("gitcache admin listening on {scheme}://{admin_addr}");
            }
            let admin_options = gitcache_http::ServeOptions {
                face: Face::Admin,
                upkeep: false,
                ..options.clone()
            };
            tokio::spawn(gitcache_http::serve_with(
                listener,
                Arc::clone(&proxy),
                wait(stopped.clone()),
                admin_options,
            ))
        });
        let pages = match pages {
            Some(config) => {
                let store = match &proxy.config().object_store {
                    Some(bucket) => AnyStore::S3(
                        gitcache_storage::s3::S3Store::new(bucket).context("the pages bucket")?,
                    ),
                    None => AnyStore::Fs(FsStore::new(proxy.config().data_dir.join("pages"))),
                };
                // Leftovers of deploys a crash cut short.
                let scratch = proxy.config().data_dir.join("pages-scratch");
                let _ = std::fs::remove_dir_all(&scratch);
                let insecure = config.options.insecure;
                let sites = gitcache_pages::site::Pages::with_cache(store, config.cache_bytes)
                    .with_min_free(config.options.min_free_bytes);
                tokio::spawn(sweep_pages(
                    sites.clone(),
                    config.sweep_interval,
                    config.sweep_grace,
                ));
                let service = gitcache_pages::http::PagesService::with_options(
                    sites,
                    scratch,
                    proxy.config().upstream_timeout,
                    config.options,
                );
                let addr = config.listen;
                let pages_listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (pages)"))?;
                let pages_addr = pages_listener.local_addr()?;
                tracing::info!(addr = %pages_addr, insecure, "pages listening");
                eprintln!("gitcache pages listening on http://{pages_addr}");
                Some(tokio::spawn(gitcache_pages::http::serve(
                    pages_listener,
                    service,
                    proxy.config().limits.header_read_timeout,
                    proxy.config().limits.response_stall_timeout,
                    wait(stopped.clone()),
                )))
            }
            None => None,
        };
        gitcache_http::serve_with(listener, proxy, wait(stopped), options).await;
        if let Some(pages) = pages {
            let _ = pages.await;
        }
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        anyhow::Ok(())
    })?;
    // Blocking work still running after the grace period is abandoned, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    eprintln!("gitcache stopped");
    Ok(())
}

/// Refuse a bucket that ignores conditional writes (instances would overwrite each other's
/// commits); one that cannot be asked now is used anyway, as the instance does while it is
/// out of reach.
async fn check_bucket(store: &AnyStore) -> anyhow::Result<()> {
    use std::hash::BuildHasher as _;
    let nonce = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
    let probe =
        gitcache_storage::store::ObjectKey::new(&format!("health/conditional-{nonce:016x}"))?;
    let checked = tokio::time::timeout(
        Duration::from_secs(30),
        gitcache_storage::store::check_conditional_writes(store, &probe),
    )
    .await;
    match checked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err @ gitcache_storage::store::StoreError::NotConditional(_))) => {
            Err(anyhow::anyhow!(err).context("the object store cannot be shared"))
        }
        Ok(Err(err)) => {
            tracing::warn!(%err, "the object store's conditional writes could not be checked");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("the object store's conditional writes could not be checked in time");
            Ok(())
        }
    }
}

/// Sweep the pages' store every `interval`: blobs no site names and deploys that never
/// finished go once `grace` has passed (see `Pages::collect`).
async fn sweep_pages(
    pages: gitcache_pages::site::Pages<AnyStore>,
    interval: Duration,
    grace: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match pages.collect(grace).await {
            Ok(done) if done.blobs + done.staged + done.stale_writes > 0 => {
                tracing::info!(
                    blobs = done.blobs,
                    staged = done.staged,
                    stale_writes = done.stale_writes,
                    "pages swept"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "sweeping pages failed"),
        }
    }
}
