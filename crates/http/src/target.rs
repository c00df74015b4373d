//! The repository a request is for, as routing and the catalog decided it.

use std::sync::Arc;
use std::time::Duration;

use gitcache_catalog::Catalog;
use gitcache_storage::repo::RepoKey;

use crate::config::ProxyConfig;
use crate::error::Error;
use crate::route::Route;

/// A repository a request is for, and where its upstream is.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The upstream's name: the default upstream's host, or the host named in the path.
    pub(crate) host_name: String,
    /// Where the repository lives upstream, e.g. `https://github.com/acme/widgets.git`.
    pub(crate) url: String,
    /// `owner/repo` as the client wrote it (for logs).
    pub(crate) name: String,
    pub(crate) key: RepoKey,
    /// Served from the mirror (v2 fetches).
    pub(crate) cached: bool,
    /// The catalog's record says "disabled": everything passes through.
    pub(crate) bypassed: bool,
    /// How long an upstream exchange may take for this repository.
    pub(crate) timeout: Duration,
}

/// Which repository and upstream a route names, and whether it is served from a mirror: the
/// configured upstreams, the cache policy and the catalog's records.
#[derive(Debug)]
pub(crate) struct Targets {
    config: Arc<ProxyConfig>,
    default_host: String,
    /// Hosts a path may name: the configured ones and the default upstream's own (as
    /// smart-git-proxy's `/{host}/{owner}/{repo}` form spells it).
    path_hosts: Vec<String>,
    catalog: Option<Arc<Catalog>>,
}

impl Targets {
    pub(crate) fn new(
        config: Arc<ProxyConfig>,
        default_host: String,
        catalog: Option<Arc<Catalog>>,
    ) -> Self {
        let path_hosts = config
            .hosts
            .keys()
            .cloned()
            .chain((!config.hosts.contains_key(&default_host)).then_some(default_host.clone()))
            .collect();
        Targets {
            config,
            default_host,
            path_hosts,
            catalog,
        }
    }

    /// The hosts a path may name.
    pub(crate) fn path_hosts(&self) -> &[String] {
        &self.path_hosts
    }

    /// How a path names the upstream at `host` (a clone URL's): `Some(None)` for the default
    /// upstream, `Some(Some(name))` for one a path may name, `None` when it is none of this
    /// cache's.
    pub(crate) fn named(&self, host: &str) -> Option<Option<String>> {
        if host.eq_ignore_ascii_case(&self.default_host) {
            Some(None)
        } else if self.path_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            Some(Some(host.to_owned()))
        } else {
            None
        }
    }

    /// `target` resolved again, as the catalog and the policy serve it now; `None` when its
    /// upstream is no longer one of this cache's.
    pub(crate) fn again(&self, target: &Target) -> Option<Target> {
        let route = Route {
            host: self.named(&target.host_name)?,
            owner: target.key.owner().to_owned(),
            repo: target.key.repo().to_owned(),
            service: crate::route::Service::UploadPack,
        };
        self.resolve(&route)
            .ok()
            .filter(|again| again.key == target.key)
    }

    /// The repository and upstream `route` names, and how it is served (the catalog's record,
    /// else the configured policy).
    pub(crate) fn resolve(&self, route: &Route) -> Result<Target, Error> {
        // The default upstream named in the path is the default upstream.
        let named = route.host.as_deref().filter(|host| {
            !host.eq_ignore_ascii_case(&self.default_host) || self.config.hosts.contains_key(*host)
        });
        let (host_name, base) = match named {
            None => (self.default_host.clone(), self.config.upstream.as_str()),
            Some(host) => {
                let base = self
                    .config
                    .hosts
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(host))
                    .map_or("", |(_, url)| url.as_str());
                (host.to_owned(), base)
            }
        };
        let key = self
            .config
            .key(&host_name, &route.owner, &route.repo)
            .map_err(crate::route::RouteError::from)?;
        let record = self
            .catalog
            .as_ref()
            .and_then(|c| c.lookup_exact(&host_name, key.owner(), key.repo()));
        let (cached, bypassed) = match &record {
            Some(record) => (record.enabled, !record.enabled),
            None => (
                self.config.cache.is_cached(named, key.owner(), key.repo()),
                false,
            ),
        };
        Ok(Target {
            // The upstream is asked for exactly the repository the key names.
            url: format!(
                "{}/{}/{}.git",
                base.trim_end_matches('/'),
                key.owner(),
                key.repo()
            ),
            name: format!("{}/{}", route.owner, route.repo),
            cached,
            bypassed,
            timeout: record.map_or(self.config.upstream_timeout, |r| {
                Duration::from_secs(u64::from(r.timeout_seconds))
            }),
            host_name,
            key,
        })
    }
}
