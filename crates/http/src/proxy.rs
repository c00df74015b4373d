//! The proxy: what each git request becomes.
//!
//! For a cached repository spoken to in protocol v2:
//! - `GET info/refs` asks the upstream with the client's credential (a refusal reaches the
//!   client as the upstream sent it), records an access grant, and answers with gitcache's
//!   own advertisement in the upstream's object format;
//! - `ls-refs` goes upstream with the client's credential and comes back unchanged; when the
//!   refs differ from the mirror's, a refresh starts in the background;
//! - `fetch` needs a fresh grant (or is verified upstream now), then is answered from the
//!   mirror, refreshed first when it lacks a want; what even a refreshed mirror lacks is
//!   passed through.
//!
//! Everything else (protocol v0/v1, dumb HTTP, push, repositories not cached) passes through,
//! streamed both ways.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bstr::ByteSlice;
use bytes::Bytes;
use gitcache_catalog::Catalog;
use gitcache_mirror::registry::Registry;
use gitcache_mirror::shared::{DEFAULT_GRACE, Shared};
use gitcache_storage::lease::Leases;
use gitcache_storage::responses::ResponseIndex;

use crate::shared_responses::SharedResponses;
use gitcache_protocol::advertise::{self, Advertisement};
use gitcache_protocol::bundle_uri::{Bundle, BundleList};
use gitcache_protocol::request::{
    Command, Limits as RequestLimits, Request as GitRequest, parse_request,
};
use gitcache_storage::fs::DataDir;
use gitcache_storage::repo::RepoKey;
use gitcache_storage::s3::S3Store;
use gitcache_storage::store::AnyStore;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::access::Fingerprint;
use crate::access_log::{AccessNote, CacheState, UpstreamCall};
use crate::admin::Admin;
use crate::body::{Body, Spill};
use crate::config::{CredentialMode, ProxyConfig, url_host};
use crate::error::{Error, text};
use crate::fetch::Fetches;
use crate::gate::{AccessGate, Verified};
use crate::metrics::{self, RepoLabels};
use crate::mirrors::{Budget, Mirrors};
use crate::passthrough::Passthrough;
use crate::responder::{RESULT_TYPE, Responder, refusal, set_git_headers};
use crate::response_cache::{ResponseCache, ResponseCacheStats};
use crate::route::{Route, Service, route};
use crate::serve::Face;
use crate::target::{Target, Targets};
use crate::upkeep::Upkeep;
use crate::warming::Warming;

/// How long a bundle URL handed to a client stays valid: long enough to download a large
/// bundle, short enough that a URL that leaks soon stops working.
const BUNDLE_URL_LIFETIME: Duration = Duration::from_secs(600);

/// The caching proxy; one per server, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<ProxyConfig>,
    targets: Targets,
    mirrors: Arc<Mirrors>,
    gate: Arc<AccessGate>,
    passthrough: Passthrough,
    fetches: Fetches,
    warming: Arc<Warming>,
    /// Request bodies decoded and parsed at once (CPU work): one per core but one, the rest
    /// wait without holding a thread.
    parse_slots: Arc<Semaphore>,
    /// What webhook events being read may hold (see [`crate::webhook::EVENT_BYTES_HELD`]).
    webhook_budget: crate::body::BodyBudget,
    /// Pushes that refreshed a mirror lately (see [`crate::webhook::Seen`]).
    webhook_seen: crate::webhook::Seen,
    /// Turns of signed events let in (see `push_hook`).
    webhook_turns: Arc<tokio::sync::Semaphore>,
    /// Signed events being taken in the background (see `push_hook`).
    webhook_work: Arc<tokio::sync::Semaphore>,
    /// Pushes waiting for a place among those taken at once.
    webhook_waiting: Arc<crate::webhook::Waiting>,
    /// What fetch request bodies may hold at once, all together.
    body_budget: crate::body::BodyBudget,
    draining: AtomicBool,
    catalog: Option<Arc<Catalog>>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    labels: Arc<RepoLabels>,
    upkeep: Arc<Upkeep>,
    admin: Admin,
    /// Held for the proxy's life: one process per data directory.
    _data_dir: DataDir,
    dependencies: Dependencies,
}

/// How the shared dependencies answered when last asked.
type Checks = Arc<Vec<(&'static str, Result<(), String>)>>;

/// The shared dependencies' state for `/readyz`, asked at most every [`Dependencies::EVERY`].
#[derive(Debug, Default)]
struct Dependencies {
    last: tokio::sync::Mutex<Option<(Instant, Checks)>>,
}

impl Dependencies {
    const EVERY: Duration = Duration::from_secs(5);
    const WITHIN: Duration = Duration::from_secs(3);

    async fn check(&self, proxy: &Proxy) -> Checks {
        let mut last = self.last.lock().await;
        if let Some((at, checks)) = last.as_ref()
            && at.elapsed() < Self::EVERY
        {
            return Arc::clone(checks);
        }
        let bounded = |outcome: Result<Result<(), String>, tokio::time::error::Elapsed>| {
            outcome.unwrap_or_else(|_| Err(format!("no answer within {:?}", Self::WITHIN)))
        };
        let mut checks = Vec::new();
        if let Some(shared) = proxy.mirrors.registry().shared() {
            let probe = async {
                use gitcache_storage::store::ObjectStore as _;
                let key = gitcache_storage::store::ObjectKey::new("health/probe")
                    .map_err(|e| e.to_string())?;
                shared
                    .store()
                    .read_manifest(&key)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            checks.push((
                "object store",
                bounded(tokio::time::timeout(Self::WITHIN, probe).await),
            ));
        }
        if let Some(catalog) = proxy.catalog().filter(|c| c.backend() == "postgres") {
            let ping = async { catalog.ping().await.map_err(|e| e.to_string()) };
            checks.push((
                "database",
                bounded(tokio::time::timeout(Self::WITHIN, ping).await),
            ));
        }
        for (name, outcome) in &checks {
            metrics::dependency(name, outcome.is_ok());
        }
        let checks = Arc::new(checks);
        *last = Some((Instant::now(), Arc::clone(&checks)));
        checks
    }
}

/// What a proxy is built with besides its configuration.
#[derive(Debug, Default)]
pub struct Services {
    /// The catalog of cached repositories (records choose what is cached, their timeouts
    /// and response-cache limits; the admin API edits it). Without one, only
    /// [`ProxyConfig::cache`] decides.
    pub catalog: Option<Arc<Catalog>>,
    /// The installed Prometheus recorder's handle, rendered at `/metrics`. Without one,
    /// `/metrics` is a 404.
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// A name for this process among instances: its id and a random part (ids repeat across
/// machines and restarts).
fn instance_name() -> String {
    use std::hash::BuildHasher as _;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("gitcache-{}-{random:016x}", std::process::id())
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An upstream URL is unusable.
    #[error("{0}")]
    Upstream(String),
    /// An extra ref prefix cannot be mirrored.
    #[error("{0}")]
    RefPrefix(String),
    /// The object store is configured wrongly.
    #[error("object store: {0}")]
    ObjectStore(#[from] gitcache_storage::store::StoreError),
    /// The data directory is taken by another process, or cannot be locked.
    #[error(transparent)]
    Locked(#[from] gitcache_storage::fs::Error),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A task aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    /// A proxy with `config` and no catalog or metrics; creates the data directory.
    pub fn new(config: ProxyConfig) -> Result<Arc<Self>, ConfigError> {
        Self::with_services(config, Services::default())
    }

    /// A proxy with `config` and `services`; creates the data directory.
    pub fn with_services(
        config: ProxyConfig,
        services: Services,
    ) -> Result<Arc<Self>, ConfigError> {
        metrics::describe();
        let default_host = url_host(&config.upstream).map_err(ConfigError::Upstream)?;
        let body_budget = crate::body::BodyBudget::new(body_budget_bytes(&config.limits));
        for url in config.hosts.values() {
            url_host(url).map_err(ConfigError::Upstream)?;
        }
        crate::config::check_extra_ref_prefixes(&config.extra_ref_prefixes)
            .map_err(ConfigError::RefPrefix)?;
        // Every upstream name becomes the first folder of its mirrors' keys: each must be
        // one, and two upstreams must not share one (their grants and mirrors would mix).
        let mut folders: HashMap<PathBuf, &str> = HashMap::new();
        for (host, url) in config
            .hosts
            .iter()
            .map(|(h, u)| (h.as_str(), u.as_str()))
            .chain([(default_host.as_str(), config.upstream.as_str())])
        {
            let key = RepoKey::new(host, "owner", "repo").map_err(|err| {
                ConfigError::Upstream(format!("upstream host '{host}' cannot name mirrors: {err}"))
            })?;
            if let Some(other) = folders.insert(key.relative_path(), url)
                && other.trim_end_matches('/') != url.trim_end_matches('/')
            {
                return Err(ConfigError::Upstream(format!(
                    "upstream host '{host}' names the same mirrors as another upstream ({other})"
                )));
            }
        }
        let data_dir = DataDir::open(&config.data_dir)?;
        let mirrors = config.data_dir.join("mirrors");
        std::fs::create_dir_all(&mirrors).map_err(|source| ConfigError::DataDir {
            path: mirrors.clone(),
            source,
        })?;
        upgrade_layout(&config).map_err(|source| ConfigError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let instance = instance_name();
        let mut registry = Registry::new(mirrors)
            .with_consolidate_after(config.consolidate_after)
            .with_min_free(config.min_free_bytes)
            .with_max_concurrent_refreshes(config.limits.max_concurrent_refreshes);
        if let Some(bucket) = &config.object_store {
            let store = S3Store::new(bucket)?;
            registry = registry.with_shared(
                Shared::new(AnyStore::S3(store), DEFAULT_GRACE).with_bundles(config.bundle_uri),
            );
            match services
                .catalog
                .as_ref()
                .and_then(|c| c.leases(instance.clone()))
            {
                Some(leases) => {
                    tracing::info!(
                        holder = leases.holder(),
                        "shared mirrors coordinated through PostgreSQL leases"
                    );
                    registry = registry.with_leases(Arc::new(leases), config.lease_ttl);
                }
                None => tracing::warn!(
                    "shared mirrors without a PostgreSQL catalog: instances that miss a repository together each fetch it"
                ),
            }
        }
        let registry = Arc::new(registry);
        // Mirrors whose removal a crash cut short: their data goes now.
        registry
            .sweep_removed()
            .map_err(|err| ConfigError::DataDir {
                path: registry.root().to_owned(),
                source: std::io::Error::other(err.to_string()),
            })?;
        let spill = open_spill(&config)?;
        let responses = match &config.response_cache {
            Some(cache) => {
                let root = config.data_dir.join("responses");
                let mut responses = ResponseCache::new(root.clone(), cache.clone())
                    .map_err(|source| ConfigError::DataDir { path: root, source })?
                    .with_min_free(config.min_free_bytes);
                if let Some(store) = registry.shared().map(|s| s.store().clone()) {
                    let catalog = services.catalog.as_ref();
                    let index = catalog
                        .and_then(|c| c.response_index())
                        .map(|i| Arc::new(i) as Arc<dyn ResponseIndex>);
                    let leases = catalog
                        .and_then(|c| c.leases(instance.clone()))
                        .map(|l| (Arc::new(l) as Arc<dyn Leases>, config.lease_ttl));
                    responses = responses.with_shared(SharedResponses::new(store, index, leases));
                }
                Some(Arc::new(responses))
            }
            None => None,
        };
        let config = Arc::new(config);
        let labels = Arc::new(RepoLabels::default());
        let budget = Budget {
            max_bytes: config.max_mirror_bytes,
            min_free: config.min_free_bytes,
            responses: responses.clone(),
            labels: Arc::clone(&labels),
        };
        let mirrors = Arc::new(Mirrors::new(
            registry,
            config.extra_ref_prefixes.clone(),
            budget,
        ));
        // Purges follow from the catalog only where it is shared and the bucket does not
        // carry them (its tombstones do).
        let purges = Arc::new(crate::purges::Purges::open(
            &config.data_dir,
            mirrors.registry().shared().is_none()
                && services
                    .catalog
                    .as_ref()
                    .is_some_and(|c| c.backend() == "postgres"),
        ));
        let upkeep = Arc::new(Upkeep {
            config: Arc::clone(&config),
            catalog: services.catalog.clone(),
            prometheus: services.prometheus.clone(),
            mirrors: Arc::clone(&mirrors),
            responses: responses.clone(),
            labels: Arc::clone(&labels),
            instance: instance.clone(),
            pushed: std::sync::Mutex::default(),
            purges: Arc::clone(&purges),
            following: Arc::default(),
            evicting_shared: Arc::default(),
        });
        // Gauges are there at the first scrape, not after the first upkeep tick.
        upkeep.pass(false);
        // The opened repository and stored answers of a mirror the shared store says was
        // removed elsewhere (a purge on another instance, a repository found replaced) go with
        // its local copy: what the removal dropped is not sent from here.
        let dropped = {
            let (mirrors, responses) = (Arc::downgrade(&mirrors), responses.clone());
            Arc::new(move |key: &RepoKey| {
                if let Some(mirrors) = mirrors.upgrade() {
                    mirrors.forget_opened(key);
                }
                if let Some(responses) = &responses {
                    responses.drop_repo(&key.relative_path());
                }
            })
        };
        let removed = Arc::clone(&dropped);
        mirrors
            .registry()
            .on_removed_elsewhere(move |key| removed(key));
        // A mirror found replaced behind its name (see `Registry::on_replaced`): nothing kept
        // of the old repository answers for the new one, here or in the bucket.
        let replaced_responses = responses.clone();
        mirrors.registry().on_replaced(move |key| {
            metrics::mirror_replaced();
            // Here at once; in the bucket in the background, the mirror's refresh not held up
            // by as many deletions as there are answers: an answer of the old repository is
            // found by its wants, which the mirror made anew lacks, so no fetch looks one up
            // meanwhile.
            dropped(key);
            let (responses, repo) = (replaced_responses.clone(), key.relative_path());
            async move {
                if let Some(responses) = responses {
                    tokio::spawn(async move {
                        if let Err(err) = responses.remove_shared_repo(&repo).await {
                            tracing::warn!(%err, repo = %repo.display(), "dropping the bucket's stored responses of a replaced repository failed");
                        }
                    }.in_current_span());
                }
            }
        });
        let admin = Admin::new(
            Arc::clone(&config),
            services.catalog.clone(),
            Arc::clone(&mirrors),
            responses.clone(),
            default_host.clone(),
            instance,
            purges,
        );
        let gate = Arc::new(AccessGate::new(&config));
        let passthrough = Passthrough::new(Arc::clone(&gate));
        let responder = Responder::new(
            config.pack.clone(),
            config.limits.response_stall_timeout,
            config.limits.max_concurrent_packs,
            spill,
            responses,
        );
        mirrors.answer_with(responder.options().clone());
        Ok(Arc::new(Proxy {
            targets: Targets::new(
                Arc::clone(&config),
                default_host.clone(),
                services.catalog.clone(),
            ),
            fetches: Fetches {
                mirrors: Arc::clone(&mirrors),
                responder,
                gate: Arc::clone(&gate),
                passthrough: passthrough.clone(),
                serve_stale: config.serve_stale,
                first_fetch_wait: config.first_fetch_wait,
                rechecks: Default::default(),
            },
            warming: Arc::new(Warming {
                mirrors: Arc::clone(&mirrors),
                gate: Arc::clone(&gate),
                passthrough: passthrough.clone(),
                stall: config.limits.response_stall_timeout,
                github_app: config.github_app.clone(),
                service_token: config.service_token.clone(),
                default_host: default_host.clone(),
                budget: crate::body::BodyBudget::new(LISTING_COPIES_BYTES),
            }),
            mirrors,
            passthrough,
            gate,
            // One core stays free for the async workers (health checks, every other request).
            parse_slots: Arc::new(Semaphore::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1))
                    .max(1),
            )),
            webhook_budget: crate::body::BodyBudget::new(crate::webhook::EVENT_BYTES_HELD),
            webhook_seen: Default::default(),
            webhook_turns: Arc::new(tokio::sync::Semaphore::new(crate::webhook::EVENTS_AT_ONCE)),
            webhook_work: Arc::new(tokio::sync::Semaphore::new(
                crate::webhook::EVENTS_TAKEN_AT_ONCE,
            )),
            webhook_waiting: Default::default(),
            body_budget,
            draining: AtomicBool::new(false),
            catalog: services.catalog,
            prometheus: services.prometheus,
            labels,
            upkeep,
            admin,
            _data_dir: data_dir,
            dependencies: Dependencies::default(),
            config,
        }))
    }

    /// The catalog, if the proxy has one.
    pub fn catalog(&self) -> Option<&Arc<Catalog>> {
        self.catalog.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The mirrors.
    pub fn registry(&self) -> &Arc<Registry> {
        self.mirrors.registry()
    }

    /// What the response cache did so far (`None` when it is off).
    pub fn response_cache_stats(&self) -> Option<Arc<ResponseCacheStats>> {
        self.fetches
            .responder
            .cache()
            .map(|c| Arc::clone(c.stats()))
    }

    /// Background upkeep, forever: the catalog read again, evicting stored responses over
    /// their limits, mirrors opened again and prepared after their maintenance. [`serve`]
    /// runs it for the server's life. Dropping it (aborting its task) stops the tasks it
    /// started that schedule or wait; refreshes and blocking work already under way finish.
    ///
    /// [`serve`]: crate::serve
    pub async fn maintain(self: Arc<Self>) {
        // Its tasks are aborted when it is dropped.
        let mut tasks = tokio::task::JoinSet::new();
        if !self.config.refresh_interval.is_zero() {
            tasks.spawn(Arc::clone(&self).refresh_on_schedule());
        }
        tasks.spawn(Arc::clone(&self.mirrors).prepare_maintained());
        Arc::clone(&self.upkeep).run().await;
    }

    /// Forever: mirrors fetched within the active window are refreshed in the background
    /// once older than the refresh interval (with the service token, if any), each after a
    /// random delay of up to a tenth of the interval (at most a minute) so that mirrors used
    /// together are not refreshed together; a mirror's refreshes never overlap (the
    /// registry's), and none is created (one removed meanwhile stays removed).
    async fn refresh_on_schedule(self: Arc<Self>) {
        use std::hash::BuildHasher as _;
        let interval = self.config.refresh_interval;
        let tick = (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let spread = (interval / 10).min(Duration::from_secs(60));
        // Aborted with this task.
        let mut scheduled: HashMap<RepoKey, AbortOnDrop> = HashMap::new();
        loop {
            tokio::time::sleep(tick).await;
            scheduled.retain(|_, task| !task.0.is_finished());
            for used in self.mirrors.due(interval, self.config.active_window) {
                if scheduled.contains_key(&used.key)
                    || self.mirrors.registry().existing(&used.key).is_none()
                {
                    continue;
                }
                // As the catalog and the policy serve it now, not as when it was last used:
                // a record disabled since is not refreshed, one changed since has its timeout.
                let Some(target) = self.targets.again(&used).filter(|t| t.cached) else {
                    continue;
                };
                let random = std::collections::hash_map::RandomState::new().hash_one(&target.key);
                let delay = spread.mul_f64((random % 1000) as f64 / 1000.0);
                let (proxy, due) = (Arc::clone(&self), target.clone());
                let task = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // Had when it is used (an App's token is renewed as it nears expiry).
                    let credential = proxy.warming.credential(&due, None).await;
                    if let Ok(upstream) = proxy.gate.upstream(&due, credential) {
                        proxy.mirrors.warm(
                            due.key,
                            upstream,
                            crate::mirrors::Warming::Scheduled,
                            false,
                            Default::default(),
                            true,
                        );
                    }
                });
                scheduled.insert(target.key, AbortOnDrop(task.abort_handle()));
            }
        }
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending new work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Answer one request: git's, the admin API's and page's, `/metrics` and health.
    pub async fn handle<B>(self: &Arc<Self>, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        self.handle_on(Face::All, request).await
    }

    /// Answer one request arriving on a listener that serves `face`.
    pub async fn handle_on<B>(self: &Arc<Self>, face: Face, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok"),
            (&Method::GET, "/readyz") => return self.readiness().await,
            (&Method::GET, "/metrics") if face.serves_admin() => {
                // On the listener git clients use, the repositories cached are named only to
                // the holder of an admin token or of a metrics token.
                let metrics_token = (parts.headers.get(hyper::header::AUTHORIZATION))
                    .and_then(crate::admin::bearer)
                    .is_some_and(|token| self.config.metrics_tokens.accepts(token));
                let named =
                    face == Face::Admin || metrics_token || self.admin.accepts(&parts.headers);
                return self.render_metrics(named);
            }
            (&Method::POST, "/api/hooks/push") if self.config.webhook_secret.is_some() => {
                return self
                    .push_hook(&parts.headers, body)
                    .await
                    .unwrap_or_else(Error::into_response);
            }
            _ if face.serves_admin() && crate::admin::is_admin_path(&path) => {
                return self.admin.handle(parts, body).await;
            }
            _ if !face.serves_git() => return text(StatusCode::NOT_FOUND, "not found"),
            _ => {}
        }
        // A credential that cannot go upstream as it is (not visible ASCII) would be checked as
        // no credential and granted as itself.
        if parts
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .any(|v| v.to_str().is_err())
            || parts.headers.get_all(header::AUTHORIZATION).iter().count() > 1
        {
            return text(
                StatusCode::BAD_REQUEST,
                "gitcache: one Authorization header, in visible ASCII",
            );
        }
        let route = match route(&path, parts.uri.query(), self.targets.path_hosts()) {
            Ok(route) => route,
            Err(err) => return Error::from(err).into_response(),
        };
        let started = Instant::now();
        let target = match self.targets.resolve(&route) {
            Ok(target) => target,
            Err(err) => {
                tracing::warn!(%err, status = %err.status(), "request failed");
                return err.into_response();
            }
        };
        metrics::decision("cache_lookup", started.elapsed());
        if self.config.credentials != CredentialMode::PassThrough
            && !is_read(&parts.method, &route.service)
        {
            // The server's own credential (or none) must not carry a client's push.
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "gitcache: credential mode '{}' serves only reads (clone and fetch)",
                    self.config.credentials
                ),
            );
        }
        let v2 = parts.headers.get_all("git-protocol").iter().any(|v| {
            v.as_bytes()
                .split_str(":")
                .any(|p| p.trim() == b"version=2")
        });
        let span = tracing::info_span!("git", repo = %target.name, host = %target.host_name);
        let work = async {
            match &route.service {
                Service::InfoRefs(Some(service))
                    if service == "git-upload-pack"
                        && parts.method == Method::GET
                        && target.cached
                        && v2 =>
                {
                    self.info_refs(&target, &parts.headers).await
                }
                Service::UploadPack if parts.method == Method::POST && target.cached && v2 => {
                    match self.upload_pack(&target, &parts.headers, body).await {
                        Err(Error::Request(err)) => {
                            tracing::info!(%err, "request refused");
                            Ok(with_state(refusal(&err.to_string()), CacheState::Error))
                        }
                        answer => answer,
                    }
                }
                _ => {
                    tracing::debug!(service = ?route.service, cached = target.cached, v2, "passthrough");
                    let suffix = suffix(&route, parts.uri.query());
                    self.passthrough.forward(&target, parts.method.clone(), &suffix, &parts.headers, body)
                        .await
                        .map(|r| with_state(r, CacheState::Passthrough))
                }
            }
            .unwrap_or_else(|err| {
                tracing::warn!(%err, status = %err.status(), "request failed");
                let state = error_state(&err);
                with_state(err.into_response(), state)
            })
        };
        let mut response = work.instrument(span).await;
        let succeeded = response.status().is_success();
        let extensions = response.extensions_mut();
        let cache_state = extensions.remove::<CacheState>();
        let result = if target.bypassed {
            "bypass"
        } else if !target.cached {
            "nocache"
        } else {
            match cache_state {
                Some(CacheState::Hit | CacheState::Stale) => "hit",
                Some(CacheState::Miss) => "miss",
                Some(CacheState::Rejected) => "rejected",
                Some(CacheState::Error) => "error",
                Some(CacheState::Passthrough) | None => "passthrough",
            }
        };
        // Names are shown only for cached repositories whose request got past the gate: a
        // refused or made-up name must neither appear on /metrics nor use up label slots.
        let admitted = target.cached
            && succeeded
            && matches!(
                cache_state,
                Some(CacheState::Hit | CacheState::Miss | CacheState::Stale) | None
            );
        let labels = if admitted {
            self.labels.get(target.key.owner(), target.key.repo())
        } else {
            RepoLabels::other()
        };
        metrics::request(labels, result);
        let upstream = extensions.remove::<UpstreamCall>();
        extensions.insert(AccessNote {
            cache_state: cache_state.filter(|_| target.cached),
            cache_repo: target.cached.then(|| target.name.clone()),
            upstream,
        });
        response
    }

    /// `/metrics`, with the repositories' labels (`owner`, `repo`) unless `named` is false:
    /// then every repository's series are summed under `_other`.
    fn render_metrics(&self, named: bool) -> Response<Body> {
        let Some(handle) = &self.prometheus else {
            return text(StatusCode::NOT_FOUND, "metrics are off");
        };
        if let Some(remade) = self.fetches.responder.remade() {
            metrics::remade(remade);
        }
        metrics::maintenance(self.fetches.mirrors.registry().maintenance());
        metrics::kept_trees(self.fetches.mirrors.kept_tree_bytes());
        let rendered = handle.render();
        let rendered = if named {
            rendered
        } else {
            metrics::without_repositories(&rendered)
        };
        let mut response = Response::new(Body::full(rendered));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// 503 while shutting down or without a usable data directory; else 200, with a line per
    /// shared dependency (the object store, the PostgreSQL catalog). A dependency out of
    /// reach does not make the instance unready: it goes on with its local copies (see
    /// `docs/scale-out.md`), and taking every instance out of the balancer at once would
    /// be worse. Dependencies are asked at most every few seconds, each within a bound.
    async fn readiness(&self) -> Response<Body> {
        if self.draining.load(Ordering::SeqCst) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        if !self.config.data_dir.join("mirrors").is_dir() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "data directory missing");
        }
        let checks = self.dependencies.check(self).await;
        let mut body = String::from(if checks.iter().all(|(_, ok)| ok.is_ok()) {
            "ready\n"
        } else {
            "ready, degraded\n"
        });
        for (name, outcome) in checks.iter() {
            match outcome {
                Ok(()) => body.push_str(&format!("{name}: ok\n")),
                Err(err) => {
                    // The cause (addresses, users, bucket URLs) goes to the log: the probe
                    // answers on every listener.
                    tracing::warn!(dependency = %name, %err, "readiness: unreachable");
                    body.push_str(&format!("{name}: unreachable\n"));
                }
            }
        }
        text(StatusCode::OK, body.trim_end())
    }

    /// A forge's push webhook (see [`crate::webhook`]): 401 unless signed with the secret;
    /// else 202, and the mirror of the repository it names, if there is one, is refreshed in
    /// the background (with the service token, if any). Nothing is created for a repository
    /// gitcache does not mirror.
    async fn push_hook<B>(
        self: &Arc<Self>,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Response<Body>, Error>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let Some(secret) = &self.config.webhook_secret else {
            return Ok(text(StatusCode::NOT_FOUND, "not found"));
        };
        // Events come signed as sent: no compressed bodies (nor a gunzip before the check).
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Ok(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "webhook events are read uncompressed",
            ));
        }
        // Within a few seconds, and within the events' budget: anyone may hold a share of it
        // until the body is read.
        let body = match crate::body::receive_body_within(
            headers,
            body,
            crate::webhook::MAX_EVENT_BYTES,
            self.config
                .limits
                .body_read_timeout
                .min(crate::webhook::EVENT_READ_TIMEOUT),
            Some(&self.webhook_budget),
        )
        .await
        {
            Err(crate::body::ReadError::Busy) => {
                return Ok(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many webhook events at once",
                ));
            }
            received => received?.decode(crate::webhook::MAX_EVENT_BYTES)?,
        };
        if let Err(refused) =
            gitcache_upstream::signature::verify(secret.as_bytes(), headers, &body)
        {
            tracing::warn!(%refused, "webhook refused");
            return Ok(text(StatusCode::UNAUTHORIZED, &refused.to_string()));
        }
        // One answer, given at once whatever happens next: the secret's holders (every
        // repository's hook) learn nothing of what is mirrored here, not even from how long
        // the answer took (reading the mirror's ref, looking for the pushed commit). Events
        // are let in at a bounded pace: each takes a turn, given back a fixed while later
        // whatever it leads to, so that free turns tell nothing either.
        let Ok(turn) = Arc::clone(&self.webhook_turns).try_acquire_owned() else {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many webhook events at once",
            ));
        };
        tokio::spawn(async move {
            tokio::time::sleep(crate::webhook::TURN_HELD).await;
            drop(turn);
        });
        // What the event says is read now: its body goes (with its share of the events'
        // budget) before the event is taken.
        let is_push = crate::webhook::is_push(headers);
        let pushed = is_push.then(|| crate::webhook::pushed(&body)).flatten();
        drop(body);
        match (is_push, pushed) {
            (false, _) => tracing::info!(why = "not a push event: nothing to do", "webhook"),
            (true, None) => {
                tracing::info!(why = "no repository in the event: nothing to do", "webhook");
            }
            // Put in line off the answer's path: the answer waits on nothing the line holds.
            (true, Some(pushed)) => {
                let proxy = Arc::clone(self);
                tokio::spawn(async move { proxy.take_in_turn(pushed) }.in_current_span());
            }
        }
        Ok(text(StatusCode::ACCEPTED, "accepted"))
    }

    /// Take `pushed` in the background, a bounded number of events at once: at once if a
    /// place is free and none waits, else once its turn comes among those waiting (a later
    /// push of the same ref takes its place); left out, told in the log only, when too many
    /// wait.
    fn take_in_turn(self: &Arc<Self>, pushed: crate::webhook::Pushed) {
        let waiting = &self.webhook_waiting;
        if waiting.is_empty()
            && let Ok(work) = Arc::clone(&self.webhook_work).try_acquire_owned()
        {
            self.spawn_take_push(pushed, work);
            return;
        }
        if !waiting.push(pushed, tracing::Span::current()) {
            tracing::warn!("webhook: too many events waiting: this one is left out");
            return;
        }
        if waiting.first_taker() {
            // One task hands out the places as they free, in order; it keeps no hold on the
            // proxy between events.
            let (proxy, waiting) = (Arc::downgrade(self), Arc::clone(waiting));
            let work = Arc::clone(&self.webhook_work);
            tokio::spawn(async move {
                /// Should this task end, the next push starts another.
                struct Gone(Arc<crate::webhook::Waiting>);
                impl Drop for Gone {
                    fn drop(&mut self) {
                        self.0.taker_gone();
                    }
                }
                let _gone = Gone(Arc::clone(&waiting));
                loop {
                    waiting.arrival().await;
                    while !waiting.is_empty() {
                        let Ok(place) = Arc::clone(&work).acquire_owned().await else {
                            return;
                        };
                        let Some(proxy) = proxy.upgrade() else {
                            return;
                        };
                        if let Some((pushed, span)) = waiting.next() {
                            let _entered = span.enter();
                            proxy.spawn_take_push(pushed, place);
                        }
                    }
                }
            });
        }
    }

    /// Take `pushed` in the background, holding `work`, and log what it led to.
    fn spawn_take_push(
        self: &Arc<Self>,
        pushed: crate::webhook::Pushed,
        work: tokio::sync::OwnedSemaphorePermit,
    ) {
        let proxy = Arc::clone(self);
        tokio::spawn(
            async move {
                let why = proxy.take_push(pushed, work).await;
                tracing::info!(why, "webhook");
            }
            .in_current_span(),
        );
    }

    /// What a signed push event asks for, done: a refresh of the mirror its push moved,
    /// when there is one to make. Says why, for the log.
    /// `work`, the event's place among those taken at once, is held until all it leads to has
    /// ended (the refresh it starts, and the credential that refresh waits for, included).
    async fn take_push(
        self: &Arc<Self>,
        pushed: crate::webhook::Pushed,
        work: tokio::sync::OwnedSemaphorePermit,
    ) -> &'static str {
        // The upstream the clone URL names: the default one or one allowed in paths.
        let Some(host) = self.targets.named(&pushed.host) else {
            return "not an upstream of this cache: nothing to do";
        };
        let route = Route {
            host,
            owner: pushed.owner,
            repo: pushed.repo,
            service: Service::UploadPack,
        };
        let Ok(target) = self.targets.resolve(&route) else {
            return "not a repository name: nothing to do";
        };
        if !target.cached || self.mirrors.registry().existing(&target.key).is_none() {
            return "not mirrored here: nothing to do";
        }
        // What was pushed: a replayed event, or one whose push the mirror has already, moves
        // nothing (every holder of one signed event could otherwise keep refreshes running).
        let Some((name, after)) = pushed.moved else {
            return "no pushed ref in the event: nothing to do";
        };
        if !self.mirrors.is_mirrored(name.as_bytes()) {
            return "not a ref the mirror keeps: nothing to do";
        }
        if self.webhook_seen.again(&target.key, &name, after) {
            return "the same push again: nothing to do";
        }
        let deleted = after.is_null();
        let before = match self.mirrors.ref_now(&target.key, name.clone()).await {
            Ok(now) if now == Some(after) || (deleted && now.is_none()) => {
                return "the mirror has the push already: nothing to do";
            }
            Ok(now) => Some(now),
            // Not readable now: the refresh tells.
            Err(err) => {
                tracing::debug!(%err, "push webhook: the mirror's ref not read");
                None
            }
        };
        // A commit the mirror holds already (an old push sent again, or a branch made at a
        // commit it has): no refresh brings it, so it does not tell whether one did.
        let held_before = !deleted && self.mirrors.holds(&target.key, after).await;
        let Some(token) = self.webhook_seen.refreshed(&target.key, &name, after) else {
            return "the same push again: nothing to do";
        };
        tracing::info!(repo = %target.name, "push webhook");
        // The credential is had in the background too (an App's token may need the API):
        // the forge gets its answer at once.
        let proxy = Arc::clone(self);
        tokio::spawn(
            async move {
                let _work = work;
                let credential = proxy.warming.credential(&target, None).await;
                let refreshed = match proxy.gate.upstream(&target, credential) {
                    // Never a new mirror: one removed since the check above stays removed.
                    Ok(upstream) => match proxy.mirrors.warm(
                        target.key.clone(),
                        upstream,
                        crate::mirrors::Warming::PushWebhook,
                        false,
                        Default::default(),
                        true,
                    ) {
                        Some(warming) => warming.await.unwrap_or(false),
                        None => false,
                    },
                    Err(err) => {
                        tracing::warn!(%err, "push webhook: no upstream");
                        false
                    }
                };
                // A refresh that ended well may still not have brought the push (one under way
                // before it, whose outcome this one shared). It did when the ref is where the
                // push put it, or moved on from where it was (a later push) with what was
                // pushed now held; a commit held before counts as brought (its push is old,
                // or only names what the mirror has).
                let now = proxy.mirrors.ref_now(&target.key, name).await.ok();
                let moved = before.is_some() && now.is_some() && now != before;
                let brought = refreshed
                    && match now {
                        Some(now) if now == Some(after) || (deleted && now.is_none()) => true,
                        _ if deleted => false,
                        _ if held_before => true,
                        _ => moved && proxy.mirrors.holds(&target.key, after).await,
                    };
                // A push whose refresh failed counts as seen for a short while only: a
                // forge's redelivery refreshes then, a replay not back to back.
                if !brought {
                    proxy
                        .webhook_seen
                        .failed(&target.key, token, crate::webhook::RETRY_FAILED_AFTER);
                    tracing::info!("push webhook: the refresh did not bring the push; a redelivery in a minute refreshes");
                }
            }
            .in_current_span(),
        );
        "refreshing the mirror"
    }

    async fn info_refs(
        self: &Arc<Self>,
        target: &Target,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, Error> {
        // A grant counts from when it was asked for: a refusal that overtook it wins.
        let asked = Instant::now();
        let who = fingerprint(headers);
        let kind = match self.gate.verify(target, headers).await? {
            Verified::V2(kind) => kind,
            Verified::Answer(response) if !response.status().is_success() => {
                let status = response.status().as_u16();
                self.gate.grants().refused(&target.key, who, status);
                return Ok(with_state(*response, CacheState::Rejected));
            }
            Verified::Answer(response) => {
                return Ok(with_state(*response, CacheState::Passthrough));
            }
        };
        self.gate
            .grants()
            .grant_at(&target.key, who, asked, Some(kind));
        let mut body = Vec::new();
        let mut advertised =
            Advertisement::new(concat!("git/gitcache-", env!("CARGO_PKG_VERSION")), kind);
        advertised.bundle_uri = self.mirrors.registry().bundles();
        advertised.write_to(&mut body).expect("writing to memory");
        let mut response = Response::new(Body::full(body));
        set_git_headers(response.headers_mut(), advertise::CONTENT_TYPE);
        Ok(response)
    }

    /// A `POST git-upload-pack` of a cached repository. The access gate comes first: it
    /// needs only the route and the headers, so nothing a client sends is read, decoded or
    /// parsed before the upstream accepted its credential for this repository (a fresh grant,
    /// or a check now). The body is then received within its limits, and decoded and parsed
    /// on a blocking thread.
    async fn upload_pack<B>(
        self: &Arc<Self>,
        target: &Target,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Response<Body>, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        let who = fingerprint(headers);
        // When the gate let this request in: a refusal from then on stops its answer.
        let checked = Instant::now();
        if !self.gate.grants().is_fresh(&target.key, who) {
            let asked = checked;
            match self.gate.verify(target, headers).await? {
                Verified::V2(kind) => {
                    self.gate
                        .grants()
                        .grant_at(&target.key, who, asked, Some(kind));
                }
                Verified::Answer(response) if !response.status().is_success() => {
                    let status = response.status().as_u16();
                    self.gate.grants().refused(&target.key, who, status);
                    return Ok(with_state(*response, CacheState::Rejected));
                }
                // The upstream stopped speaking v2: let it answer the request itself.
                Verified::Answer(unread) => {
                    // Its connection goes before the request is forwarded.
                    drop(unread);
                    let response = self
                        .passthrough
                        .forward(target, Method::POST, "/git-upload-pack", headers, body)
                        .await?;
                    return Ok(with_state(response, CacheState::Passthrough));
                }
            }
        }
        let limits = &self.config.limits;
        let received = crate::body::receive_body_within(
            headers,
            body,
            limits.max_body_bytes,
            limits.body_read_timeout,
            Some(&self.body_budget),
        )
        .await?;
        let max_body_bytes = limits.max_body_bytes;
        let permit = Arc::clone(&self.parse_slots).acquire_owned().await;
        let parsed = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let _permit = permit;
            let body = received.decode(max_body_bytes)?;
            let request_limits = RequestLimits {
                max_body_bytes,
                ..RequestLimits::default()
            };
            let mut request = parse_request(&body, request_limits)?;
            if let Some(GitRequest {
                command: Command::Fetch(fetch),
                capabilities,
            }) = &mut request
            {
                fetch.collapse_duplicates();
                Advertisement::new("", capabilities.object_format()).check_fetch(fetch)?;
            }
            Ok((body, request))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
        let (body, request) = parsed?;
        let Some(request) = request else {
            // A lone flush: upload-pack answers nothing.
            let mut response = Response::new(Body::empty());
            set_git_headers(response.headers_mut(), RESULT_TYPE);
            return Ok(response);
        };
        let kind = request.capabilities.object_format();
        match request.command {
            Command::LsRefs(args) => {
                metrics::ls_refs();
                let every_tag = crate::warming::lists_every_tag(&args);
                self.warming
                    .ls_refs(target, headers, body, kind, every_tag)
                    .await
            }
            Command::Fetch(fetch) => {
                let result = self
                    .fetches
                    .fetch(target, headers, body, fetch, kind, checked)
                    .await;
                let state = match &result {
                    Ok(response) => response.extensions().get::<CacheState>().copied(),
                    Err(err) => Some(error_state(err)),
                };
                let label = match state {
                    Some(CacheState::Hit | CacheState::Stale) => "hit",
                    Some(CacheState::Rejected) => "rejected",
                    Some(CacheState::Error) | None => "error",
                    Some(CacheState::Miss | CacheState::Passthrough) => "miss",
                };
                metrics::fetch(label);
                match label {
                    "hit" => self.mirrors.note(&target.key, |s| s.hits += 1),
                    "miss" => self.mirrors.note(&target.key, |s| s.misses += 1),
                    _ => {}
                }
                if matches!(label, "hit" | "miss") {
                    self.mirrors.used(target);
                }
                if let Err(err) = &result {
                    let message = err.to_string();
                    self.mirrors
                        .note(&target.key, |s| s.last_error = Some((unix_now(), message)));
                }
                result
            }
            Command::ObjectInfo(_) => self.passthrough.forward_body(target, headers, body).await,
            Command::BundleUri => self.bundle_uri(target).await,
        }
    }

    /// The answer to `command=bundle-uri` (asked after the access gate, like a fetch): the
    /// bundle of the mirror's consolidated pack in the shared store, as a presigned URL, when
    /// there is one; an empty list otherwise, or when the store cannot be asked (the client
    /// then fetches everything from here).
    async fn bundle_uri(&self, target: &Target) -> Result<Response<Body>, Error> {
        // Only from this instance's copy (no store request for a repository it has not
        // served): a clone that asks first is answered in full, the next ones in bulk.
        let registry = self.mirrors.registry();
        if !registry.bundles() {
            // Not advertised: refused as git refuses a command it does not offer.
            return Err(Error::Request(
                gitcache_protocol::request::Error::UnknownCommand {
                    name: "bundle-uri".into(),
                },
            ));
        }
        let mut list = BundleList::default();
        match registry.bundle_url(&target.key, BUNDLE_URL_LIFETIME).await {
            Ok(Some((stem, url))) => match Bundle::new(stem, url) {
                Ok(bundle) => list.bundles.push(bundle),
                Err(err) => tracing::warn!(%err, "the bundle's URL cannot be listed"),
            },
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "the bundle list could not be read; listing none"),
        }
        let mut body = Vec::new();
        list.write_to(&mut body)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut response = Response::new(Body::full(body));
        set_git_headers(response.headers_mut(), RESULT_TYPE);
        Ok(response)
    }
}

/// The spill area of slow clients' responses, `<data_dir>/spill` (it may be a file system of
/// its own): its files are unnamed, but where the file system cannot make those, a name lives
/// for a moment; what a crash left there is removed. One response spills at most a share of
/// the budget as large as one pack slot's.
fn open_spill(config: &ProxyConfig) -> Result<Spill, ConfigError> {
    let dir = config.data_dir.join("spill");
    let error = |source| ConfigError::DataDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(error)?;
    // Files only: a file system of its own has folders of its own (`lost+found`).
    for entry in std::fs::read_dir(&dir).map_err(error)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file())
            && let Err(err) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(%err, path = %entry.path().display(), "cannot remove a spill file left behind");
        }
    }
    let limits = &config.limits;
    Ok(Spill::new(
        dir,
        limits.max_spilled_bytes,
        limits.max_spilled_bytes / limits.max_concurrent_packs.max(1) as u64,
        config.min_free_bytes,
    ))
}

/// The data directory's layout version, in `<data-dir>/layout`.
const LAYOUT: &str = "2";

/// Bring a data directory written by an earlier version up to [`LAYOUT`]. Before version 2,
/// names were lower-cased for every upstream: one folder held whichever of two case twins
/// was fetched through it, so the mirrors and stored responses of upstreams that tell case
/// apart are removed (they are fetched again); those of case-insensitive upstreams keep
/// their place.
fn upgrade_layout(config: &ProxyConfig) -> std::io::Result<()> {
    let marker = config.data_dir.join("layout");
    if std::fs::read_to_string(&marker).is_ok_and(|v| v.trim() == LAYOUT) {
        return Ok(());
    }
    let kept: Vec<String> = config
        .case_insensitive_hosts
        .iter()
        .map(|h| h.to_ascii_lowercase().replace(':', "_"))
        .collect();
    for area in ["mirrors", "responses"] {
        let Ok(hosts) = std::fs::read_dir(config.data_dir.join(area)) else {
            continue;
        };
        for host in hosts {
            let host = host?;
            let name = host.file_name().to_string_lossy().into_owned();
            if host.file_type()?.is_dir() && !kept.contains(&name) {
                tracing::warn!(area, host = %name, "removing data of an earlier layout (names were folded to lower case)");
                std::fs::remove_dir_all(host.path())?;
            }
        }
    }
    gitcache_storage::fs::replace_file(&marker, format!("{LAYOUT}\n").as_bytes())
}

/// Whether `service` only reads the repository's git data: what static and no-credential
/// modes allow (the server's own credential reaches nothing else on the host).
fn is_read(method: &Method, service: &Service) -> bool {
    match service {
        Service::InfoRefs(Some(name)) => method == Method::GET && name == "git-upload-pack",
        Service::UploadPack => method == Method::POST,
        Service::InfoRefs(None) => method == Method::GET || method == Method::HEAD,
        Service::Other(_) => {
            (method == Method::GET || method == Method::HEAD) && service.is_dumb_http_file()
        }
        Service::ReceivePack => false,
    }
}

/// How a failed request counts.
fn error_state(err: &Error) -> CacheState {
    if matches!(err.status().as_u16(), 401 | 403 | 404) && !matches!(err, Error::Route(_)) {
        CacheState::Rejected
    } else {
        CacheState::Error
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Note what the cache did, for the access log.
pub(crate) fn with_state(mut response: Response<Body>, state: CacheState) -> Response<Body> {
    response.extensions_mut().insert(state);
    response
}

pub(crate) fn fingerprint(headers: &HeaderMap) -> Fingerprint {
    Fingerprint::of(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )
}

/// What the copies of `ls-refs` answers kept to compare with the mirror may hold at once, all
/// together (apart from request bodies, which they must not crowd out).
const LISTING_COPIES_BYTES: u64 = 256 << 20;

/// What fetch request bodies may hold at once, all together: 1 GiB, or four of the largest
/// body if that is more (so that one always fits).
pub(crate) fn body_budget_bytes(limits: &crate::config::Limits) -> u64 {
    (1u64 << 30).max(4 * limits.max_body_bytes as u64)
}

/// The part of the upstream URL after the repository, query included: for `info/refs` only
/// the `service` gitcache routed on (a client's second `service=` never reaches the upstream,
/// which might read that one instead).
fn suffix(route: &Route, query: Option<&str>) -> String {
    let query = match &route.service {
        Service::InfoRefs(_) => None,
        _ => query,
    };
    let mut suffix = match &route.service {
        Service::InfoRefs(Some(service)) => format!("/info/refs?service={service}"),
        Service::InfoRefs(None) => "/info/refs".to_owned(),
        Service::UploadPack => "/git-upload-pack".to_owned(),
        Service::ReceivePack => "/git-receive-pack".to_owned(),
        Service::Other(rest) => format!("/{rest}"),
    };
    if let Some(query) = query {
        suffix.push('?');
        suffix.push_str(query);
    }
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task the upkeep started (the refresh scheduler, the preparing of maintained
    /// mirrors, the shared store's catching up) holds the proxy or its mirrors: once the
    /// upkeep is aborted (as a server stopping does), none is left holding them.
    #[tokio::test]
    async fn aborting_the_upkeep_stops_every_task_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::ProxyConfig::new(dir.path(), "http://127.0.0.1:9");
        config.refresh_interval = Duration::from_millis(50);
        // A shared store (never reached: nothing listens there) adds the catching up.
        config.object_store = Some(gitcache_storage::s3::S3Config {
            bucket: "mirrors".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            ..Default::default()
        });
        config.storage_poll_interval = Duration::from_millis(50);
        let proxy = Proxy::new(config).unwrap();
        let held = |p: &Arc<Proxy>| (Arc::strong_count(p), Arc::strong_count(&p.mirrors));
        let before = held(&proxy);
        let upkeep = tokio::spawn(Arc::clone(&proxy).maintain());
        let mut started = false;
        for _ in 0..200 {
            let (proxies, mirrors) = held(&proxy);
            if proxies > before.0 + 1 && mirrors > before.1 {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            started,
            "the scheduler and the preparing task hold the proxy and mirrors"
        );
        upkeep.abort();
        assert!(upkeep.await.unwrap_err().is_cancelled());
        for _ in 0..200 {
            if held(&proxy) == before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(held(&proxy), before, "no task of the upkeep is left");
    }

    /// The upkeep's pass keeps what is remembered of repositories without a mirror within
    /// its bound, the last noted kept.
    #[tokio::test]
    async fn the_upkeep_forgets_the_oldest_activity_beyond_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::new(crate::ProxyConfig::new(dir.path(), "http://127.0.0.1:9")).unwrap();
        let most = crate::mirrors::MAX_KEPT_OFF_DISK;
        let key = |i: usize| RepoKey::new("127.0.0.1", "acme", &format!("r{i}.git")).unwrap();
        for i in 0..most + 3 {
            proxy.mirrors.note(&key(i), |s| s.misses += 1);
        }
        // The first is noted again: the newest now.
        proxy.mirrors.note(&key(0), |s| s.hits += 1);
        proxy.upkeep.pass(false);
        let stats = proxy.mirrors.all_stats();
        assert_eq!(stats.len(), most);
        assert_eq!(proxy.mirrors.stats(&key(0)).hits, 1);
        assert_eq!(proxy.mirrors.stats(&key(most + 2)).misses, 1);
        let gone = (1..4)
            .filter(|&i| proxy.mirrors.stats(&key(i)).misses == 0)
            .count();
        assert_eq!(gone, 3, "the three noted first, but the one noted again");
    }
}
