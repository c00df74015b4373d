//! The repository a request is for, as routing and the catalog decided it.

use std::time::Duration;

use gitcache_storage::repo::RepoKey;

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
