//! Programs that use the gitcache crates as libraries; see `examples/*.rs`. The logic of
//! `mirror_and_serve` lives here so that a test runs it against a real upstream.

use std::io::Write;
use std::time::Duration;

use gitcache_mirror::registry::Registry;
use gitcache_pack::{Options, Repository, plan};
use gitcache_protocol::request::{Command, Limits, parse_request};
use gitcache_storage::repo::RepoKey;
use gitcache_upstream::Upstream;

/// Refresh the mirror of the repository at `url` under `root`, then answer the protocol v2
/// request `body` from the mirror into `out`.
pub fn mirror_and_serve(
    url: &str,
    root: &std::path::Path,
    authorization: Option<String>,
    body: &[u8],
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    // host/owner/repo from the URL, checked before they become a path.
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let parts: Vec<&str> = rest.split('/').collect();
    let [host, owner, repo] = parts[..] else {
        return Err("expected http://host/owner/repo".into());
    };
    let key = RepoKey::new(host, owner, repo)?;

    // Refresh, creating the mirror on first use; one refresh per mirror at a time.
    let registry = Registry::new(root);
    let upstream = Upstream::new(url, authorization, Duration::from_secs(60))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(registry.refresh(&key, &upstream, &[]))
        .map_err(|e| e.to_string())?;

    // Answer from the mirror.
    let Some(request) = parse_request(body, Limits::default())? else {
        return Ok(());
    };
    let repo = Repository::open(registry.path(&key))?;
    match &request.command {
        Command::LsRefs(args) => {
            gitcache_protocol::ls_refs::write_response(out, &repo.ls_refs(args)?, args)?
        }
        Command::Fetch(fetch) => {
            plan(
                &repo,
                fetch,
                request.capabilities.object_format(),
                &Options::default(),
            )?
            .write_to(&mut *out)?;
        }
        Command::ObjectInfo(_) => return Err("object-info is not served".into()),
        // No bundles here: an empty list, and the client fetches everything.
        Command::BundleUri => gitcache_protocol::bundle_uri::BundleList::default().write_to(out)?,
    }
    out.flush()?;
    Ok(())
}

/// A caching proxy for `upstream` (e.g. `https://github.com`) with mirrors under `data_dir`,
/// serving on `listener` until `shutdown` completes: every repository cached, the client's
/// credential checked upstream, access grants kept for 30 seconds.
pub async fn embedded_proxy(
    listener: tokio::net::TcpListener,
    upstream: &str,
    data_dir: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = gitcache_http::ProxyConfig::new(data_dir, upstream);
    config.access_ttl = Duration::from_secs(30);
    config.extra_ref_prefixes = vec!["refs/pull/".to_owned()];
    let proxy = gitcache_http::Proxy::new(config)?;
    gitcache_http::serve(listener, proxy, shutdown).await;
    Ok(())
}
