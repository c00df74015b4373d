//! The server's one configuration: a TOML file, then `GITCACHE_*` environment variables,
//! then flags, each overriding the one before; validated before any port is bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use gitcache_http::{AdminTokens, CachePolicy, CredentialMode, Limits, ProxyConfig, Secret};
use gitcache_storage::s3::S3Config;
use serde::Deserialize;

/// gitcache: a caching proxy for git's smart HTTP protocol.
///
/// Every option can also be set as the environment variable shown, or in the TOML file given
/// with --config (keys as in docs/configuration.md). Flags override the environment, which
/// overrides the file.
#[derive(Debug, Default, Parser)]
#[command(name = "gitcache-server", version, about, long_about)]
pub(crate) struct Flags {
    /// A TOML configuration file.
    #[arg(long, env = "GITCACHE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "GITCACHE_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// The default upstream's base URL [default: https://github.com].
    #[arg(long, env = "GITCACHE_UPSTREAM", value_name = "URL")]
    pub(crate) upstream: Option<String>,
    /// Where mirrors are kept [default: ./gitcache-data].
    #[arg(long, env = "GITCACHE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Another upstream, reachable as /NAME/owner/repo (repeatable).
    #[arg(
        long = "upstream-host",
        env = "GITCACHE_UPSTREAM_HOSTS",
        value_name = "NAME=URL",
        value_delimiter = ','
    )]
    pub(crate) upstream_hosts: Vec<String>,
    /// Cache every repository seen [default: true unless --cache-repo is given].
    #[arg(long, env = "GITCACHE_CACHE_ALL", value_name = "BOOL")]
    pub(crate) cache_all: Option<bool>,
    /// A repository to cache, owner/repo or host/owner/repo (repeatable).
    #[arg(
        long = "cache-repo",
        env = "GITCACHE_CACHE_REPOS",
        value_name = "REPO",
        value_delimiter = ','
    )]
    pub(crate) cache_repos: Vec<String>,
    /// Seconds a verified access lets fetches through; 0 verifies every fetch [default: 60].
    #[arg(long, env = "GITCACHE_ACCESS_TTL", value_name = "SECONDS")]
    pub(crate) access_ttl: Option<u64>,
    /// Serve what the mirror has when upstream is down, to clients verified within the TTL.
    #[arg(long, env = "GITCACHE_SERVE_STALE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) serve_stale: Option<bool>,
    /// Credential sent upstream: pass-through, static or none [default: pass-through].
    #[arg(long, env = "GITCACHE_CREDENTIAL_MODE", value_name = "MODE")]
    pub(crate) credential_mode: Option<String>,
    /// Token for an upstream host in static mode (repeatable).
    #[arg(
        long = "static-token",
        env = "GITCACHE_STATIC_TOKENS",
        value_name = "HOST=TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) static_tokens: Vec<String>,
    /// Token for refreshes gitcache starts on its own (cache warming).
    #[arg(
        long,
        env = "GITCACHE_SERVICE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) service_token: Option<String>,
    /// A GitHub App's id: its installation tokens serve the refreshes gitcache starts on its
    /// own for the default upstream (with --github-app-key).
    #[arg(long, env = "GITCACHE_GITHUB_APP_ID", value_name = "ID")]
    pub(crate) github_app_id: Option<String>,
    /// The GitHub App's private key (PEM, as GitHub hands it out).
    #[arg(long, env = "GITCACHE_GITHUB_APP_KEY", value_name = "FILE")]
    pub(crate) github_app_key: Option<PathBuf>,
    /// The GitHub REST API the App's tokens come from [default: https://api.github.com; a
    /// GitHub Enterprise Server's is https://HOST/api/v3].
    #[arg(long, env = "GITCACHE_GITHUB_API_URL", value_name = "URL")]
    pub(crate) github_api_url: Option<String>,
    /// The secret push webhooks (GitHub, Gitea, Forgejo) are signed with; enables
    /// POST /api/hooks/push, which refreshes the mirror of the repository pushed to.
    #[arg(
        long,
        env = "GITCACHE_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) webhook_secret: Option<String>,
    /// An S3-compatible bucket that instances share mirrors in; this instance's data
    /// directory then holds working copies [default: none, mirrors on local disk only].
    #[arg(long, env = "GITCACHE_S3_BUCKET", value_name = "BUCKET")]
    pub(crate) s3_bucket: Option<String>,
    /// The bucket's endpoint, for S3-compatible servers [default: AWS].
    #[arg(long, env = "GITCACHE_S3_ENDPOINT", value_name = "URL")]
    pub(crate) s3_endpoint: Option<String>,
    /// The bucket's region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "GITCACHE_S3_REGION", value_name = "REGION")]
    pub(crate) s3_region: Option<String>,
    /// A key prefix inside the bucket, so deployments can share one.
    #[arg(long, env = "GITCACHE_S3_PREFIX", value_name = "PREFIX")]
    pub(crate) s3_prefix: Option<String>,
    /// Keep a git bundle of each consolidated mirror in the bucket and advertise
    /// `bundle-uri`: clients that ask (`git clone -c transfer.bundleURI=true`) download the
    /// bulk of a clone from the bucket by a presigned URL [needs --s3-bucket].
    #[arg(long, env = "GITCACHE_BUNDLE_URI")]
    pub(crate) bundle_uri: bool,
    /// Seconds a lease on a shared mirror's refresh lasts unless renewed: a killed
    /// instance's refresh is taken over after this [default: 30].
    #[arg(long, env = "GITCACHE_LEASE_TTL", value_name = "SECONDS")]
    pub(crate) lease_ttl: Option<u64>,
    /// Seconds between checks of the shared store for what other instances committed to
    /// the mirrors this one uses; 0: only when a request finds a mirror behind [default: 30].
    #[arg(long, env = "GITCACHE_STORAGE_POLL_INTERVAL", value_name = "SECONDS")]
    pub(crate) storage_poll_interval: Option<u64>,
    /// Refresh mirrors fetched within the active window in the background once older than
    /// this many seconds; 0: only when requests find them behind [default: 0].
    #[arg(long, env = "GITCACHE_REFRESH_INTERVAL", value_name = "SECONDS")]
    pub(crate) refresh_interval: Option<u64>,
    /// Seconds since its last fetch within which a mirror counts as in use for scheduled
    /// refreshes [default: 86400].
    #[arg(long, env = "GITCACHE_ACTIVE_WINDOW", value_name = "SECONDS")]
    pub(crate) active_window: Option<u64>,
    /// Seconds a fetch waits for a mirror being made from nothing before the upstream
    /// answers it instead (a clone that the arriving pack answers is not passed through);
    /// unset: it waits for the mirror [default: unset].
    #[arg(long, env = "GITCACHE_FIRST_FETCH_WAIT", value_name = "SECONDS")]
    pub(crate) first_fetch_wait: Option<u64>,
    /// The most bytes mirrors may hold together; beyond, whole mirrors are evicted, least
    /// recently used first [default: no cap].
    #[arg(long, env = "GITCACHE_MAX_MIRROR_BYTES", value_name = "BYTES")]
    pub(crate) max_mirror_bytes: Option<u64>,
    /// Bytes to keep free on the data directory's disk: mirrors are evicted to keep them,
    /// and a refresh below is refused (the fetch passes through) [default: 1073741824].
    #[arg(long, env = "GITCACHE_MIN_FREE_BYTES", value_name = "BYTES")]
    pub(crate) min_free_bytes: Option<u64>,
    #[arg(long, env = "AWS_REGION", hide = true)]
    pub(crate) aws_region: Option<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide = true, hide_env_values = true)]
    pub(crate) aws_access_key_id: Option<String>,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) aws_secret_access_key: Option<String>,
    #[arg(long, env = "AWS_SESSION_TOKEN", hide = true, hide_env_values = true)]
    pub(crate) aws_session_token: Option<String>,
    /// An upstream host that compares owner and repository names without case, where
    /// Acme/Widgets and acme/widgets share one mirror (repeatable; replaces the default)
    /// [default: github.com].
    #[arg(
        long = "case-insensitive-host",
        env = "GITCACHE_CASE_INSENSITIVE_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub(crate) case_insensitive_hosts: Vec<String>,
    /// Refs to mirror besides HEAD, branches and tags, e.g. refs/pull/ (repeatable).
    #[arg(
        long = "extra-ref-prefix",
        env = "GITCACHE_EXTRA_REF_PREFIXES",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    pub(crate) extra_ref_prefixes: Vec<String>,
    /// Seconds the upstream may keep gitcache waiting for an answer to start or for its next
    /// bytes (an idle timeout) [default: 30].
    #[arg(long, env = "GITCACHE_UPSTREAM_TIMEOUT", value_name = "SECONDS")]
    pub(crate) upstream_timeout: Option<u64>,
    /// Seconds one upstream exchange may take in all, a first pack download included
    /// [default: 3600].
    #[arg(
        long,
        env = "GITCACHE_UPSTREAM_TRANSFER_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub(crate) upstream_transfer_timeout: Option<u64>,
    /// Seconds one upstream exchange whose answer is no pack (`info/refs`, `ls-refs`) may
    /// take in all, if shorter than the transfer timeout [default: 300].
    #[arg(
        long,
        env = "GITCACHE_UPSTREAM_LISTING_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub(crate) upstream_listing_timeout: Option<u64>,
    /// Packs a mirror may gather before it is consolidated [default: 8].
    #[arg(long, env = "GITCACHE_CONSOLIDATE_AFTER", value_name = "N")]
    pub(crate) consolidate_after: Option<usize>,
    /// zlib level (0-9) for objects compressed again [default: 3].
    #[arg(long, env = "GITCACHE_COMPRESSION_LEVEL", value_name = "LEVEL")]
    pub(crate) compression_level: Option<u32>,
    /// Largest request body read, after gzip decoding [default: 67108864].
    #[arg(long, env = "GITCACHE_MAX_BODY_BYTES", value_name = "BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
    /// Seconds a client may take to send a request body [default: 60].
    #[arg(long, env = "GITCACHE_BODY_READ_TIMEOUT", value_name = "SECONDS")]
    pub(crate) body_read_timeout: Option<u64>,
    /// Seconds a client may take to send request headers, and the longest idle keep-alive
    /// [default: 30].
    #[arg(long, env = "GITCACHE_HEADER_READ_TIMEOUT", value_name = "SECONDS")]
    pub(crate) header_read_timeout: Option<u64>,
    /// Seconds a response waits for a client that stopped reading before it is abandoned
    /// [default: 120].
    #[arg(long, env = "GITCACHE_RESPONSE_STALL_TIMEOUT", value_name = "SECONDS")]
    pub(crate) response_stall_timeout: Option<u64>,
    /// Bytes a second a client must take, on average, while a response waits for it; one
    /// that falls behind by a stall timeout's worth loses its connection (0: none)
    /// [default: 4096].
    #[arg(long, env = "GITCACHE_MIN_READ_RATE", value_name = "BYTES")]
    pub(crate) min_read_rate: Option<u64>,
    /// Connections served at once [default: 1024].
    #[arg(long, env = "GITCACHE_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Connections one client address (an IPv4 address, an IPv6 /64) may hold at once on the
    /// git port; more are answered 429. 0: no bound [default: 0].
    #[arg(long, env = "GITCACHE_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    pub(crate) max_connections_per_client: Option<usize>,
    /// Pack responses generated at once [default: the CPUs, at least 2].
    #[arg(long, env = "GITCACHE_MAX_CONCURRENT_PACKS", value_name = "N")]
    pub(crate) max_concurrent_packs: Option<usize>,
    /// Most bytes of generated responses kept on disk for clients that read slower than
    /// their answers are generated [default: 4294967296].
    #[arg(long, env = "GITCACHE_MAX_SPILLED_BYTES", value_name = "BYTES")]
    pub(crate) max_spilled_bytes: Option<u64>,
    /// Mirror refreshes (upstream fetches) running at once [default: 16].
    #[arg(long, env = "GITCACHE_MAX_CONCURRENT_REFRESHES", value_name = "N")]
    pub(crate) max_concurrent_refreshes: Option<usize>,
    /// Store fetch responses and share simultaneous identical ones [default: true].
    #[arg(long, env = "GITCACHE_RESPONSE_CACHE", value_name = "BOOL")]
    pub(crate) response_cache: Option<bool>,
    /// Most bytes of stored responses in all [default: 10737418240; 0: no cap].
    #[arg(long, env = "GITCACHE_RESPONSE_CACHE_MAX_BYTES", value_name = "BYTES")]
    pub(crate) response_cache_max_bytes: Option<u64>,
    /// Most bytes of stored responses per repository [default: no cap].
    #[arg(
        long,
        env = "GITCACHE_RESPONSE_CACHE_MAX_REPO_BYTES",
        value_name = "BYTES"
    )]
    pub(crate) response_cache_max_repo_bytes: Option<u64>,
    /// Most stored responses in all [default: 200000; 0: no cap].
    #[arg(long, env = "GITCACHE_RESPONSE_CACHE_MAX_ENTRIES", value_name = "N")]
    pub(crate) response_cache_max_entries: Option<u64>,
    /// Store a response only the second time it is asked for within 10 minutes.
    #[arg(long, env = "GITCACHE_RESPONSE_CACHE_ADMIT_SECOND", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) response_cache_admit_second: Option<bool>,
    /// Seconds between evictions of stored responses [default: 600].
    #[arg(
        long,
        env = "GITCACHE_RESPONSE_CACHE_CLEANUP_INTERVAL",
        value_name = "SECONDS"
    )]
    pub(crate) response_cache_cleanup_interval: Option<u64>,
    /// The catalog: a postgres:// URL or a SQLite file [default: DATA_DIR/catalog.db].
    #[arg(
        long,
        env = "GITCACHE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    /// Seconds between reads of the catalog into memory (changes made by other instances)
    /// [default: 10].
    #[arg(long, env = "GITCACHE_CATALOG_RELOAD_INTERVAL", value_name = "SECONDS")]
    pub(crate) catalog_reload_interval: Option<u64>,
    /// A bearer token for the admin API and page (repeatable); with none they are off.
    #[arg(
        long = "admin-token",
        env = "GITCACHE_ADMIN_TOKENS",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) admin_tokens: Vec<String>,
    /// A bearer token that may read `/metrics` on the git listener with the repositories
    /// named, and nothing else (a scraper's; at least 16 characters); repeat or separate with
    /// commas for several [default: none, an admin token's holder only].
    #[arg(
        long = "metrics-token",
        env = "GITCACHE_METRICS_TOKENS",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) metrics_tokens: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); read again on SIGHUP
    /// [default: plain HTTP].
    #[arg(long, env = "GITCACHE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert; read again on SIGHUP.
    #[arg(long, env = "GITCACHE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve static sites deployed from git (pages) on this address [default: off].
    #[arg(long, env = "GITCACHE_PAGES_LISTEN", value_name = "ADDR")]
    pub(crate) pages_listen: Option<String>,
    /// Deploy pages without authorization, logged at every deploy (for development).
    #[arg(long, env = "GITCACHE_PAGES_INSECURE")]
    pub(crate) pages_insecure: bool,
    /// The DNS server asked for pages' `_git-pages-challenge` TXT records [default: the
    /// first nameserver of /etc/resolv.conf].
    #[arg(long, env = "GITCACHE_PAGES_DNS_SERVER", value_name = "ADDR")]
    pub(crate) pages_dns_server: Option<String>,
    /// Pages' wildcard domain: each `<user>.<domain>` is a forge user's site, its push events
    /// authorized by their repository (with --pages-wildcard-clone-url).
    #[arg(long, env = "GITCACHE_PAGES_WILDCARD_DOMAIN", value_name = "DOMAIN")]
    pub(crate) pages_wildcard_domain: Option<String>,
    /// The repository of a wildcard site's project, with `<user>` and `<project>` in it
    /// (`https://forge.example/<user>/<project>.git`).
    #[arg(
        long,
        env = "GITCACHE_PAGES_WILDCARD_CLONE_URL",
        value_name = "TEMPLATE"
    )]
    pub(crate) pages_wildcard_clone_url: Option<String>,
    /// The secret the forge signs push events for the wildcard with: every such event must
    /// be signed, and one sent to the domain itself (a forge-wide webhook) deploys the site
    /// its repository names.
    #[arg(
        long,
        env = "GITCACHE_PAGES_WILDCARD_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) pages_wildcard_webhook_secret: Option<String>,
    /// A URL prefix pages may be deployed from (repeatable; replaces the config file's): a
    /// deploy fetches only repositories under one, at any address [default: any repository
    /// at a public address].
    #[arg(
        long = "pages-source",
        env = "GITCACHE_PAGES_SOURCES",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    pub(crate) pages_sources: Vec<String>,
    /// Without --pages-source, let deploys reach private and loopback addresses too (for a
    /// development server beside a local forge).
    #[arg(long, env = "GITCACHE_PAGES_PRIVATE_SOURCES")]
    pub(crate) pages_private_sources: bool,
    /// Bytes of pages' manifests and files kept in memory [default: 64 MiB].
    #[arg(long, env = "GITCACHE_PAGES_CACHE_BYTES", value_name = "BYTES")]
    pub(crate) pages_cache_bytes: Option<u64>,
    /// A separate address for the admin API, page and /metrics [default: the main one].
    #[arg(long, env = "GITCACHE_ADMIN_LISTEN", value_name = "ADDR")]
    pub(crate) admin_listen: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "GITCACHE_SHUTDOWN_GRACE", value_name = "SECONDS")]
    pub(crate) shutdown_grace: Option<u64>,
    /// Log format: json or plain [default: json].
    #[arg(long, env = "GITCACHE_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<String>,
    /// Log level: error, warn, info, debug or trace [default: info].
    #[arg(long, env = "GITCACHE_LOG_LEVEL", value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// The file's layout.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    upstream: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    cache: FileCache,
    access_ttl: Option<u64>,
    serve_stale: Option<bool>,
    credential_mode: Option<String>,
    #[serde(default)]
    static_tokens: BTreeMap<String, String>,
    service_token: Option<String>,
    #[serde(default)]
    github_app: FileGitHubApp,
    case_insensitive_hosts: Option<Vec<String>>,
    #[serde(default)]
    extra_ref_prefixes: Vec<String>,
    upstream_timeout: Option<u64>,
    upstream_transfer_timeout: Option<u64>,
    upstream_listing_timeout: Option<u64>,
    consolidate_after: Option<usize>,
    compression_level: Option<u32>,
    shutdown_grace: Option<u64>,
    log_format: Option<String>,
    log_level: Option<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    response_cache: FileResponseCache,
    database_url: Option<String>,
    catalog_reload_interval: Option<u64>,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    webhook: FileWebhook,
    #[serde(default)]
    storage: FileStorage,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    pages: FilePages,
    #[serde(default)]
    mirrors: FileMirrors,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMirrors {
    refresh_interval: Option<u64>,
    active_window: Option<u64>,
    first_fetch_wait: Option<u64>,
    max_bytes: Option<u64>,
    min_free_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    s3_bucket: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_prefix: Option<String>,
    bundle_uri: Option<bool>,
    lease_ttl: Option<u64>,
    poll_interval: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGitHubApp {
    id: Option<String>,
    key_file: Option<PathBuf>,
    api_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePages {
    listen: Option<String>,
    insecure: Option<bool>,
    dns_server: Option<String>,
    cache_bytes: Option<u64>,
    sources: Option<Vec<String>>,
    private_sources: Option<bool>,
    /// Seconds between garbage sweeps of the pages' store.
    sweep_interval: Option<u64>,
    /// Seconds a blob stays unnamed, or a deploy staged, before a sweep removes it.
    sweep_grace: Option<u64>,
    wildcard: Option<FileWildcard>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWildcard {
    domain: Option<String>,
    clone_url: Option<String>,
    index_repos: Option<Vec<String>>,
    branch: Option<String>,
    webhook_secret: Option<String>,
}

/// The shortest `pages.sweep_grace` taken, in seconds.
const MIN_SWEEP_GRACE: u64 = 10;

/// The shortest admin or metrics token (and webhook secret) taken, in characters.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// `tokens` of `kind` (admin, metrics) as configured, empty entries (a stray comma) left out:
/// one short enough to guess is refused, and one no `Authorization` header can carry (a
/// placeholder left as written).
fn checked_tokens<'a>(kind: &str, tokens: &'a [String]) -> anyhow::Result<Vec<&'a str>> {
    let tokens: Vec<&str> = tokens
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    for token in &tokens {
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("{kind} tokens are visible ASCII without spaces: one is not");
        }
        if token.len() < MIN_ADMIN_TOKEN_CHARS {
            bail!(
                "{kind} tokens must be at least {MIN_ADMIN_TOKEN_CHARS} characters (one is {}); \
                 make one with `openssl rand -hex 32`",
                token.len()
            );
        }
    }
    Ok(tokens)
}

/// How pages are served.
#[derive(Debug)]
pub(crate) struct PagesConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) options: gitcache_pages::http::Options,
    pub(crate) cache_bytes: usize,
    pub(crate) sweep_interval: Duration,
    pub(crate) sweep_grace: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    #[serde(default)]
    tokens: Vec<String>,
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    #[serde(default)]
    tokens: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileResponseCache {
    enabled: Option<bool>,
    max_bytes: Option<u64>,
    max_repo_bytes: Option<u64>,
    max_entries: Option<u64>,
    admit_on_second_request: Option<bool>,
    admission_window: Option<u64>,
    cleanup_interval: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    all: Option<bool>,
    #[serde(default)]
    repos: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<usize>,
    body_read_timeout: Option<u64>,
    header_read_timeout: Option<u64>,
    response_stall_timeout: Option<u64>,
    min_read_rate: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    max_concurrent_packs: Option<usize>,
    max_spilled_bytes: Option<u64>,
    max_concurrent_refreshes: Option<usize>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Everything the binary runs with.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    /// Where the admin API, page and metrics listen when not on `listen`.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// The certificate chain and key files to serve HTTPS with, on every listener.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// Where and how pages are served.
    pub(crate) pages: Option<PagesConfig>,
    /// The catalog's location: a PostgreSQL URL or a SQLite file.
    pub(crate) database: String,
    pub(crate) proxy: ProxyConfig,
    pub(crate) shutdown_grace: Duration,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: tracing::Level,
    /// What the settings leave open, logged at start.
    pub(crate) warnings: Vec<String>,
}

/// The longest span any setting in seconds may name: a year. Larger values added to a
/// clock overflowed it, a panic at start (the shutdown grace) or on the first request
/// that used the span.
const MAX_SETTING_SECS: u64 = 366 * 24 * 3600;

/// A setting in seconds as a span, refused when over [`MAX_SETTING_SECS`].
fn seconds(what: &str, secs: u64) -> Result<Duration> {
    if secs > MAX_SETTING_SECS {
        bail!("{what} must be at most {MAX_SETTING_SECS} seconds (a year), not {secs}");
    }
    Ok(Duration::from_secs(secs))
}

fn pairs(what: &str, entries: &[String]) -> Result<BTreeMap<String, String>> {
    entries
        .iter()
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("{what} '{e}' is not NAME=VALUE"))?;
            Ok((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

impl Config {
    /// Load and validate: the file named by the flags (or the environment), then the
    /// environment and flags over it.
    pub(crate) fn load(flags: Flags) -> Result<Config> {
        let file: File = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => File::default(),
        };
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("invalid listen address '{listen}'"))?;
        let upstream = flags
            .upstream
            .or(file.upstream)
            .unwrap_or_else(|| "https://github.com".to_owned());
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./gitcache-data"));

        let mut proxy = ProxyConfig::new(data_dir, upstream.trim_end_matches('/'));
        proxy.hosts = file
            .hosts
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        proxy
            .hosts
            .extend(pairs("--upstream-host", &flags.upstream_hosts)?);
        for (name, url) in &mut proxy.hosts {
            if name.contains('/') || name.is_empty() {
                bail!("upstream host name '{name}' cannot contain '/'");
            }
            *url = url.trim_end_matches('/').to_owned();
        }

        let repos = if flags.cache_repos.is_empty() {
            file.cache.repos
        } else {
            flags.cache_repos
        };
        for repo in &repos {
            let parts = repo.trim().trim_matches('/').split('/').count();
            if !(2..=3).contains(&parts) {
                bail!("cached repository '{repo}' must be owner/repo or host/owner/repo");
            }
        }
        let all = flags
            .cache_all
            .or(file.cache.all)
            .unwrap_or(repos.is_empty());
        proxy.cache = if all {
            CachePolicy::All
        } else {
            CachePolicy::only(&repos)
        };

        if let Some(ttl) = flags.access_ttl.or(file.access_ttl) {
            proxy.access_ttl = seconds("access TTL", ttl)?;
        }
        proxy.serve_stale = flags.serve_stale.or(file.serve_stale).unwrap_or(false);
        if let Some(mode) = flags.credential_mode.or(file.credential_mode) {
            proxy.credentials = mode.parse::<CredentialMode>().map_err(anyhow::Error::msg)?;
        }
        let mut tokens = file.static_tokens;
        tokens.extend(pairs("--static-token", &flags.static_tokens)?);
        // An empty token would be sent as an empty credential: a typo, not a choice.
        if let Some((host, _)) = tokens
            .iter()
            .find(|(host, token)| host.is_empty() || token.trim().is_empty())
        {
            bail!("a static token needs a host and a token (HOST=TOKEN): '{host}' has none");
        }
        proxy.static_tokens = tokens
            .into_iter()
            .map(|(host, token)| (host.to_ascii_lowercase(), Secret::new(token)))
            .collect();
        if proxy.credentials == CredentialMode::Static && proxy.static_tokens.is_empty() {
            bail!("credential mode 'static' needs at least one --static-token HOST=TOKEN");
        }
        // An empty one set anywhere (a blank environment variable) is none: it hides no other.
        let set = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        proxy.service_token = set(flags.service_token)
            .or(set(file.service_token))
            .map(Secret::new);
        let webhook_secret = set(flags.webhook_secret).or(set(file.webhook.secret));
        let mut warnings = Vec::new();
        // A forge's secret is chosen there, so a short one is taken, with a word: one
        // captured event lets it be guessed offline.
        if webhook_secret
            .as_ref()
            .is_some_and(|s| s.chars().count() < MIN_ADMIN_TOKEN_CHARS)
        {
            warnings.push(format!(
                "the webhook secret is shorter than {MIN_ADMIN_TOKEN_CHARS} characters: one \
                 signed event lets it be guessed offline (`openssl rand -hex 32` makes one)"
            ));
        }
        proxy.webhook_secret = webhook_secret.map(Secret::new);
        let bucket = flags.s3_bucket.or(file.storage.s3_bucket);
        proxy.object_store = bucket.filter(|b| !b.is_empty()).map(|bucket| {
            // Keys from the environment, else from the shared credentials file's profile
            // (as AWS tools look for them); then web identity, container or instance
            // credentials, by the object store client.
            let profile = crate::aws::profile_from_environment();
            let (access_key_id, secret_access_key, session_token) =
                match (flags.aws_access_key_id, flags.aws_secret_access_key) {
                    (Some(id), Some(secret)) => (Some(id), Some(secret), flags.aws_session_token),
                    _ => (
                        profile.access_key_id,
                        profile.secret_access_key,
                        profile.session_token,
                    ),
                };
            S3Config {
                bucket,
                endpoint: flags.s3_endpoint.or(file.storage.s3_endpoint),
                region: flags
                    .s3_region
                    .or(file.storage.s3_region)
                    .or(flags.aws_region)
                    .or(profile.region),
                prefix: flags.s3_prefix.or(file.storage.s3_prefix),
                access_key_id,
                secret_access_key,
                session_token,
                options: crate::aws::options_from_environment(),
            }
        });
        proxy.bundle_uri = flags.bundle_uri || file.storage.bundle_uri.unwrap_or(false);
        if proxy.bundle_uri && proxy.object_store.is_none() {
            anyhow::bail!("--bundle-uri needs a bucket (--s3-bucket): bundles are served from it");
        }
        if let Some(secs) = flags.storage_poll_interval.or(file.storage.poll_interval) {
            proxy.storage_poll_interval = seconds("storage poll interval", secs)?;
        }
        proxy.max_mirror_bytes = flags
            .max_mirror_bytes
            .or(file.mirrors.max_bytes)
            .filter(|b| *b > 0);
        if let Some(bytes) = flags.min_free_bytes.or(file.mirrors.min_free_bytes) {
            proxy.min_free_bytes = bytes;
        }
        if let Some(secs) = flags.refresh_interval.or(file.mirrors.refresh_interval) {
            proxy.refresh_interval = seconds("refresh interval", secs)?;
        }
        if let Some(secs) = flags.active_window.or(file.mirrors.active_window) {
            proxy.active_window = seconds("active window", secs.max(1))?;
        }
        proxy.first_fetch_wait = flags
            .first_fetch_wait
            .or(file.mirrors.first_fetch_wait)
            .map(|secs| seconds("first fetch wait", secs))
            .transpose()?;
        if let Some(secs) = flags.lease_ttl.or(file.storage.lease_ttl) {
            proxy.lease_ttl = Duration::from_secs(secs.clamp(1, 3600));
        }
        let folding = if flags.case_insensitive_hosts.is_empty() {
            file.case_insensitive_hosts
        } else {
            Some(flags.case_insensitive_hosts)
        };
        if let Some(hosts) = folding {
            proxy.case_insensitive_hosts = hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
        }
        proxy.extra_ref_prefixes = if flags.extra_ref_prefixes.is_empty() {
            file.extra_ref_prefixes
        } else {
            flags.extra_ref_prefixes
        };
        for prefix in &proxy.extra_ref_prefixes {
            if !prefix.starts_with("refs/") {
                bail!("extra ref prefix '{prefix}' must start with refs/");
            }
        }
        if let Some(secs) = flags.upstream_timeout.or(file.upstream_timeout) {
            if secs == 0 || secs > 3600 {
                bail!("upstream timeout must be 1 to 3600 seconds, not {secs}");
            }
            proxy.upstream_timeout = Duration::from_secs(secs);
        }
        match (
            flags.github_app_id.or(file.github_app.id),
            flags.github_app_key.or(file.github_app.key_file),
        ) {
            (None, None) => {}
            (Some(id), Some(key)) => {
                let pem = std::fs::read(&key)
                    .with_context(|| format!("cannot read the GitHub App key {}", key.display()))?;
                let api = flags
                    .github_api_url
                    .or(file.github_app.api_url)
                    .unwrap_or_else(|| "https://api.github.com".to_owned());
                let app = gitcache_http::github_app::GitHubApp::new(
                    &id,
                    &pem,
                    &api,
                    proxy.upstream_timeout,
                )
                .with_context(|| format!("GitHub App {id}"))?;
                proxy.github_app = Some(std::sync::Arc::new(app));
            }
            _ => bail!("a GitHub App needs both --github-app-id and --github-app-key"),
        }
        if let Some(secs) = flags
            .upstream_transfer_timeout
            .or(file.upstream_transfer_timeout)
        {
            if secs == 0 {
                bail!("upstream transfer timeout must be at least 1 second");
            }
            proxy.upstream_transfer_timeout = seconds("upstream transfer timeout", secs)?;
        }
        if let Some(secs) = flags
            .upstream_listing_timeout
            .or(file.upstream_listing_timeout)
        {
            if secs == 0 {
                bail!("upstream listing timeout must be at least 1 second");
            }
            proxy.upstream_listing_timeout = seconds("upstream listing timeout", secs)?;
        }
        if let Some(n) = flags.consolidate_after.or(file.consolidate_after) {
            proxy.consolidate_after = n.max(1);
        }
        if let Some(level) = flags.compression_level.or(file.compression_level) {
            if level > 9 {
                bail!("compression level must be 0 to 9, not {level}");
            }
            proxy.pack.compression_level = level;
        }
        let defaults = Limits::default();
        let fl = file.limits;
        proxy.limits = Limits {
            max_body_bytes: flags
                .max_body_bytes
                .or(fl.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            body_read_timeout: flags
                .body_read_timeout
                .or(fl.body_read_timeout)
                .map_or(Ok(defaults.body_read_timeout), |s| {
                    seconds("body read timeout", s)
                })?,
            header_read_timeout: flags
                .header_read_timeout
                .or(fl.header_read_timeout)
                .map_or(Ok(defaults.header_read_timeout), |s| {
                    seconds("header read timeout", s)
                })?,
            response_stall_timeout: flags
                .response_stall_timeout
                .or(fl.response_stall_timeout)
                .map_or(Ok(defaults.response_stall_timeout), |s| {
                    seconds("response stall timeout", s)
                })?,
            min_read_rate: flags
                .min_read_rate
                .or(fl.min_read_rate)
                .unwrap_or(defaults.min_read_rate),
            max_connections: flags
                .max_connections
                .or(fl.max_connections)
                .unwrap_or(defaults.max_connections)
                .max(1),
            max_connections_per_client: flags
                .max_connections_per_client
                .or(fl.max_connections_per_client)
                .unwrap_or(defaults.max_connections_per_client),
            max_concurrent_packs: flags
                .max_concurrent_packs
                .or(fl.max_concurrent_packs)
                .unwrap_or(defaults.max_concurrent_packs)
                .max(1),
            max_spilled_bytes: flags
                .max_spilled_bytes
                .or(fl.max_spilled_bytes)
                .unwrap_or(defaults.max_spilled_bytes),
            max_concurrent_refreshes: flags
                .max_concurrent_refreshes
                .or(fl.max_concurrent_refreshes)
                .unwrap_or(defaults.max_concurrent_refreshes)
                .max(1),
        };

        let rc = file.response_cache;
        proxy.response_cache = if flags.response_cache.or(rc.enabled).unwrap_or(true) {
            let defaults = gitcache_http::ResponseCacheConfig::default();
            let max_total = flags.response_cache_max_bytes.or(rc.max_bytes);
            Some(gitcache_http::ResponseCacheConfig {
                admit_on_second_request: flags
                    .response_cache_admit_second
                    .or(rc.admit_on_second_request)
                    .unwrap_or(defaults.admit_on_second_request),
                admission_window: rc
                    .admission_window
                    .map_or(Ok(defaults.admission_window), |s| {
                        seconds("response cache admission window", s)
                    })?,
                max_repo_bytes: flags
                    .response_cache_max_repo_bytes
                    .or(rc.max_repo_bytes)
                    .or(defaults.max_repo_bytes),
                max_total_bytes: match max_total {
                    Some(0) => None,
                    Some(n) => Some(n),
                    None => defaults.max_total_bytes,
                },
                max_entries: match flags.response_cache_max_entries.or(rc.max_entries) {
                    Some(0) => None,
                    Some(n) => Some(n),
                    None => defaults.max_entries,
                },
                cleanup_interval: flags
                    .response_cache_cleanup_interval
                    .or(rc.cleanup_interval)
                    .map_or(Ok(defaults.cleanup_interval), |s| {
                        seconds("response cache cleanup interval", s.max(1))
                    })?,
            })
        } else {
            None
        };

        let log_format = match flags
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("json")
        {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => bail!("unknown log format '{other}' (plain or json)"),
        };
        let level = flags.log_level.or(file.log_level);
        let log_level =
            level.as_deref().unwrap_or("info").parse().map_err(|_| {
                anyhow::anyhow!("unknown log level '{}'", level.unwrap_or_default())
            })?;
        // Flags (or the environment) replace the file's list, unless they hold only blanks
        // (an empty variable): those hide nothing.
        let blank = |tokens: &[String]| tokens.iter().all(|t| t.trim().is_empty());
        let admin_tokens = if blank(&flags.admin_tokens) {
            file.admin.tokens
        } else {
            flags.admin_tokens
        };
        let metrics_tokens = checked_tokens(
            "metrics",
            if blank(&flags.metrics_tokens) {
                &file.metrics.tokens
            } else {
                &flags.metrics_tokens
            },
        )?;
        let admin_tokens = checked_tokens("admin", &admin_tokens)?;
        // A scraper's token that is also an admin token would open the admin API to it.
        if metrics_tokens.iter().any(|t| admin_tokens.contains(t)) {
            bail!("a metrics token is also an admin token: give the scraper a token of its own");
        }
        proxy.metrics_tokens = AdminTokens::new(metrics_tokens);
        proxy.admin_tokens = AdminTokens::new(admin_tokens);
        let admin_listen = match flags.admin_listen.or(file.admin.listen) {
            Some(addr) => Some(
                addr.parse::<SocketAddr>()
                    .with_context(|| format!("invalid admin listen address '{addr}'"))?,
            ),
            None => None,
        };
        if admin_listen.is_some() && proxy.admin_tokens.is_empty() {
            bail!("an admin listen address needs at least one --admin-token");
        }
        if admin_listen.is_some() && !proxy.metrics_tokens.is_empty() {
            bail!(
                "metrics tokens do nothing with an admin listen address: /metrics is served there \
                 only, to anyone who reaches it"
            );
        }
        let pages = match flags.pages_listen.or(file.pages.listen) {
            Some(addr) => {
                let dns = match flags.pages_dns_server.or(file.pages.dns_server) {
                    Some(server) => Some(
                        server
                            .parse::<SocketAddr>()
                            .or_else(|_| {
                                server.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into())
                            })
                            .with_context(|| format!("invalid pages DNS server '{server}'"))?,
                    ),
                    None => std::fs::read_to_string("/etc/resolv.conf")
                        .ok()
                        .and_then(|conf| {
                            conf.lines()
                                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                                .find_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
                        })
                        .map(|ip| (ip, 53).into()),
                };
                let wildcard = file.pages.wildcard.unwrap_or_default();
                let wildcard = match (
                    flags.pages_wildcard_domain.or(wildcard.domain),
                    flags.pages_wildcard_clone_url.or(wildcard.clone_url),
                ) {
                    (Some(domain), Some(clone_url)) => {
                        let domain = domain.trim_matches('.').to_ascii_lowercase();
                        // Without <user>, every user's site would take every user's pushes.
                        if domain.is_empty()
                            || !clone_url.contains("<project>")
                            || !clone_url.contains("<user>")
                        {
                            bail!(
                                "a pages wildcard needs a domain and a clone URL with <user> and <project> in it"
                            );
                        }
                        let wildcard = gitcache_pages::http::Wildcard {
                            index_repos: wildcard.index_repos.unwrap_or_else(|| {
                                vec![format!("<user>.{domain}"), "pages".to_owned()]
                            }),
                            domain,
                            clone_url,
                            branch: wildcard.branch.unwrap_or_else(|| "pages".to_owned()),
                            webhook_secret: set(flags.pages_wildcard_webhook_secret)
                                .or(set(wildcard.webhook_secret))
                                .map(|secret| {
                                    if secret.chars().count() < MIN_ADMIN_TOKEN_CHARS {
                                        warnings.push(format!(
                                            "the pages wildcard's webhook secret is shorter than \
                                             {MIN_ADMIN_TOKEN_CHARS} characters: one signed event \
                                             lets it be guessed offline"
                                        ));
                                    }
                                    gitcache_pages::http::WebhookSecret::new(secret)
                                }),
                        };
                        wildcard.check().map_err(anyhow::Error::msg)?;
                        Some(wildcard)
                    }
                    (None, None) => None,
                    _ => bail!("a pages wildcard needs both its domain and its clone URL"),
                };
                Some(PagesConfig {
                    listen: addr
                        .parse::<SocketAddr>()
                        .with_context(|| format!("invalid pages listen address '{addr}'"))?,
                    options: gitcache_pages::http::Options {
                        insecure: flags.pages_insecure || file.pages.insecure.unwrap_or(false),
                        dns,
                        wildcard,
                        sources: gitcache_pages::http::Sources {
                            prefixes: if flags.pages_sources.is_empty() {
                                file.pages.sources.unwrap_or_default()
                            } else {
                                flags.pages_sources
                            },
                            private: flags.pages_private_sources
                                || file.pages.private_sources.unwrap_or(false),
                        },
                        // The mirrors' floor holds for deploys too.
                        min_free_bytes: proxy.min_free_bytes,
                    },
                    cache_bytes: usize::try_from(
                        flags
                            .pages_cache_bytes
                            .or(file.pages.cache_bytes)
                            .unwrap_or(gitcache_pages::site::DEFAULT_CACHE_BYTES as u64),
                    )
                    .unwrap_or(usize::MAX),
                    sweep_interval: seconds(
                        "pages.sweep_interval",
                        file.pages.sweep_interval.unwrap_or(3600).max(1),
                    )?,
                    sweep_grace: match file.pages.sweep_grace.unwrap_or(3600) {
                        // Shorter than a deploy, a sweep could take the blobs of one under way.
                        grace if grace < MIN_SWEEP_GRACE => bail!(
                            "pages.sweep_grace must be at least {MIN_SWEEP_GRACE} seconds (longer than a deploy takes)"
                        ),
                        grace => seconds("pages.sweep_grace", grace)?,
                    },
                })
            }
            None => None,
        };
        let tls = match (
            flags.tls_cert.or(file.tls.cert),
            flags.tls_key.or(file.tls.key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
        };
        if let Some(secs) = flags
            .catalog_reload_interval
            .or(file.catalog_reload_interval)
        {
            proxy.catalog_reload_interval = seconds("catalog reload interval", secs.max(1))?;
        }
        let database = flags
            .database_url
            .or(file.database_url)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| proxy.data_dir.join("catalog.db").display().to_string());
        Ok(Config {
            listen,
            admin_listen,
            tls,
            pages,
            database,
            proxy,
            shutdown_grace: seconds(
                "shutdown grace",
                flags.shutdown_grace.or(file.shutdown_grace).unwrap_or(30),
            )?,
            log_format,
            log_level,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut all = vec!["gitcache-server"];
        all.extend_from_slice(args);
        Config::load(Flags::try_parse_from(all)?)
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.proxy.upstream, "https://github.com");
        assert_eq!(config.proxy.data_dir, PathBuf::from("./gitcache-data"));
        assert_eq!(config.proxy.cache, CachePolicy::All);
        assert_eq!(config.proxy.access_ttl, Duration::from_secs(60));
        assert_eq!(config.proxy.credentials, CredentialMode::PassThrough);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.database, "./gitcache-data/catalog.db");
        assert!(config.proxy.admin_tokens.is_empty());
        assert_eq!(config.admin_listen, None);
    }

    #[test]
    fn a_short_webhook_secret_is_taken_with_a_warning() {
        let config = parse(&["--webhook-secret", "s3cret"]).unwrap();
        assert!(config.proxy.webhook_secret.is_some());
        assert!(
            config.warnings.iter().any(|w| w.contains("webhook secret")),
            "{:?}",
            config.warnings
        );
        let config = parse(&["--webhook-secret", "0123456789abcdef0123"]).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        // A blank one (an empty environment variable) hides none from the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(&path, "[webhook]\nsecret = \"0123456789abcdef0123\"\n").unwrap();
        let config = parse(&["--config", path.to_str().unwrap(), "--webhook-secret", " "]).unwrap();
        assert!(config.proxy.webhook_secret.is_some());
    }

    /// The pages wildcard's webhook secret: from the file or a flag, a short one with a
    /// warning, and an empty one set anywhere (a blank environment variable) none that hides
    /// the other.
    #[test]
    fn a_wildcard_webhook_secret_from_the_file_is_not_hidden_by_an_empty_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(
            &path,
            "[pages]\nlisten = \"127.0.0.1:0\"\n[pages.wildcard]\ndomain = \"example.page\"\n\
             clone_url = \"https://forge.example/<user>/<project>.git\"\n\
             webhook_secret = \"short\"\n",
        )
        .unwrap();
        let wildcard = |config: &Config| {
            let pages = config.pages.as_ref().unwrap();
            pages.options.wildcard.clone().unwrap()
        };
        let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            wildcard(&config).webhook_secret,
            Some(gitcache_pages::http::WebhookSecret::new("short"))
        );
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.contains("wildcard's webhook secret")),
            "{:?}",
            config.warnings
        );
        let config = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--pages-wildcard-webhook-secret",
            "",
        ])
        .unwrap();
        assert!(
            wildcard(&config).webhook_secret.is_some(),
            "an empty flag hides nothing"
        );
        let config = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--pages-wildcard-webhook-secret",
            "0123456789abcdef0123",
        ])
        .unwrap();
        assert_eq!(
            wildcard(&config).webhook_secret,
            Some(gitcache_pages::http::WebhookSecret::new(
                "0123456789abcdef0123"
            ))
        );
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn admin_tokens_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://db.invalid/gitcache\"\n[admin]\ntokens = [\"from-the-config-file\"]\nlisten = \"127.0.0.1:9091\"\n",
        )
        .unwrap();
        let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert!(config.proxy.admin_tokens.accepts("from-the-config-file"));
        let config = parse(&["--config", path.to_str().unwrap(), "--admin-token", ""]).unwrap();
        assert!(
            config.proxy.admin_tokens.accepts("from-the-config-file"),
            "a blank flag hides none"
        );
        assert_eq!(config.admin_listen.unwrap().port(), 9091);
        assert_eq!(config.database, "postgres://db.invalid/gitcache");
        let config = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--admin-token",
            "the-first-admin-token",
            "--admin-token",
            "the-second-admin-token",
        ])
        .unwrap();
        assert!(
            config.proxy.admin_tokens.accepts("the-first-admin-token")
                && config.proxy.admin_tokens.accepts("the-second-admin-token")
        );
        assert!(!config.proxy.admin_tokens.accepts("from-the-config-file"));
        assert!(format!("{:?}", config.proxy).contains("AdminTokens(2 configured)"));
    }

    #[test]
    fn the_cap_on_stored_answers_defaults_and_zero_is_none() {
        let most = |args: &[&str]| {
            parse(args)
                .unwrap()
                .proxy
                .response_cache
                .unwrap()
                .max_entries
        };
        assert_eq!(most(&[]), Some(200_000));
        assert_eq!(most(&["--response-cache-max-entries", "5"]), Some(5));
        assert_eq!(most(&["--response-cache-max-entries", "0"]), None);
    }

    #[test]
    fn metrics_tokens_from_flags_or_the_file_as_long_as_admin_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(&path, "[metrics]\ntokens = [\"a-scraper-from-the-file\"]\n").unwrap();
        let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert!(
            config
                .proxy
                .metrics_tokens
                .accepts("a-scraper-from-the-file")
        );
        assert!(config.proxy.admin_tokens.is_empty());
        let flags = ["--config", path.to_str().unwrap(), "--metrics-token"];
        let config = parse(&[&flags[..], &["a-scraper-from-the-flags"]].concat()).unwrap();
        assert!(
            config
                .proxy
                .metrics_tokens
                .accepts("a-scraper-from-the-flags")
        );
        assert!(
            !config
                .proxy
                .metrics_tokens
                .accepts("a-scraper-from-the-file")
        );
        for bad in ["too-short", "has a space in it, long"] {
            let err = parse(&[&flags[..], &[bad]].concat()).unwrap_err();
            assert!(err.to_string().starts_with("metrics tokens"), "{err}");
        }
        let shared = [
            &flags[..],
            &["one-token-for-both", "--admin-token", "one-token-for-both"],
        ];
        let err = parse(&shared.concat()).unwrap_err();
        assert!(err.to_string().contains("also an admin token"), "{err}");
        let apart = [
            &flags[..],
            &[
                "a-scraper-from-the-flags",
                "--admin-token",
                "an-admin-token-0001",
            ],
            &["--admin-listen", "127.0.0.1:0"],
        ];
        let err = parse(&apart.concat()).unwrap_err();
        assert!(err.to_string().contains("do nothing"), "{err}");
    }

    #[test]
    fn pages_sources_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(
            &path,
            "[pages]\nlisten = \"127.0.0.1:0\"\nsources = [\"https://forge.example/\"]\nprivate_sources = true\n",
        )
        .unwrap();
        let sources = |args: &[&str]| parse(args).unwrap().pages.unwrap().options.sources;
        let from_file = sources(&["--config", path.to_str().unwrap()]);
        assert_eq!(from_file.prefixes, ["https://forge.example/"]);
        assert!(from_file.private);
        let from_flags = sources(&[
            "--config",
            path.to_str().unwrap(),
            "--pages-source",
            "https://a.example/,https://b.example/",
        ]);
        assert_eq!(
            from_flags.prefixes,
            ["https://a.example/", "https://b.example/"]
        );
        let default = sources(&["--pages-listen", "127.0.0.1:0"]);
        assert!(default.prefixes.is_empty() && !default.private);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9999"
upstream = "https://git.example/"
access_ttl = 5
serve_stale = true
upstream_listing_timeout = 120
extra_ref_prefixes = ["refs/pull/"]
[hosts]
"GitLab.example" = "https://gitlab.example/"
[cache]
repos = ["acme/widgets"]
[limits]
max_connections = 7
max_connections_per_client = 3
[mirrors]
refresh_interval = 300
active_window = 7200
first_fetch_wait = 9
max_bytes = 5000000000
min_free_bytes = 0
"#,
        )
        .unwrap();
        let config = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--access-ttl",
            "0",
            "--first-fetch-wait",
            "2",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.proxy.first_fetch_wait, Some(Duration::from_secs(2)));
        assert_eq!(config.proxy.upstream, "https://git.example");
        assert_eq!(config.proxy.access_ttl, Duration::ZERO);
        assert!(config.proxy.serve_stale);
        assert_eq!(
            config.proxy.hosts.get("gitlab.example").map(String::as_str),
            Some("https://gitlab.example")
        );
        assert!(config.proxy.cache.is_cached(None, "acme", "widgets"));
        assert!(!config.proxy.cache.is_cached(None, "acme", "other"));
        assert_eq!(config.proxy.extra_ref_prefixes, ["refs/pull/"]);
        assert_eq!(config.proxy.limits.max_connections, 7);
        assert_eq!(config.proxy.limits.max_connections_per_client, 3);
        assert_eq!(config.proxy.refresh_interval, Duration::from_secs(300));
        assert_eq!(config.proxy.active_window, Duration::from_secs(7200));
        assert_eq!(config.proxy.max_mirror_bytes, Some(5_000_000_000));
        assert_eq!(config.proxy.min_free_bytes, 0);
        assert_eq!(
            config.proxy.upstream_listing_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(
            parse(&[]).unwrap().proxy.upstream_listing_timeout,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_bucket_comes_from_the_file_and_the_flags() {
        assert!(parse(&[]).unwrap().proxy.object_store.is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(
            &path,
            "[storage]\ns3_bucket = \"mirrors\"\ns3_region = \"eu-west-1\"\ns3_prefix = \"prod\"\n",
        )
        .unwrap();
        let config = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-prefix",
            "staging",
        ])
        .unwrap();
        assert!(!config.proxy.bundle_uri);
        let bucket = config.proxy.object_store.expect("a bucket");
        assert_eq!(bucket.bucket, "mirrors");
        assert_eq!(bucket.region.as_deref(), Some("eu-west-1"));
        assert_eq!(bucket.prefix.as_deref(), Some("staging"));
        assert_eq!(bucket.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn bundles_need_a_bucket() {
        let err = parse(&["--bundle-uri"]).unwrap_err().to_string();
        assert!(err.contains("--bundle-uri needs a bucket"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(&path, "[storage]\ns3_bucket = \"m\"\nbundle_uri = true\n").unwrap();
        assert!(
            parse(&["--config", path.to_str().unwrap()])
                .unwrap()
                .proxy
                .bundle_uri
        );
    }

    #[test]
    fn tls_needs_a_certificate_and_a_key() {
        assert!(parse(&[]).unwrap().tls.is_none());
        assert!(
            parse(&["--tls-cert", "c.pem"]).is_err(),
            "clap wants the key too"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitcache.toml");
        std::fs::write(&path, "[tls]\ncert = \"c.pem\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("both a certificate and a key"), "{err}");
        let config = parse(&["--config", path.to_str().unwrap(), "--tls-key", "k.pem"]).unwrap();
        let (cert, key) = config.tls.expect("TLS");
        assert_eq!(
            (cert.to_str(), key.to_str()),
            (Some("c.pem"), Some("k.pem"))
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        for (args, message) in [
            (
                &["--listen", "nowhere"][..],
                "invalid listen address 'nowhere'",
            ),
            (
                &["--credential-mode", "open"],
                "unknown credential mode 'open'",
            ),
            (
                &["--credential-mode", "static"],
                "needs at least one --static-token",
            ),
            (
                &["--compression-level", "12"],
                "compression level must be 0 to 9",
            ),
            (&["--upstream-host", "nohost"], "is not NAME=VALUE"),
            (&["--static-token", "github.com="], "'github.com' has none"),
            (&["--cache-repo", "justone"], "must be owner/repo"),
            (&["--extra-ref-prefix", "pull/"], "must start with refs/"),
            (&["--log-format", "xml"], "unknown log format"),
            (
                &["--shutdown-grace", "18446744073709551615"],
                "shutdown grace must be at most 31622400 seconds",
            ),
            (
                &["--upstream-transfer-timeout", "31622401"],
                "upstream transfer timeout must be at most",
            ),
            (
                &["--refresh-interval", "99999999999"],
                "refresh interval must be",
            ),
            (&["--access-ttl", "99999999999"], "access TTL must be"),
            (
                &[
                    "--pages-listen",
                    "127.0.0.1:0",
                    "--pages-wildcard-domain",
                    "example.page",
                    "--pages-wildcard-clone-url",
                    "https://tok:s3cret@forge.example/<user>/<project>.git",
                ],
                "pages wildcard clone URL: unusable upstream URL 'https://***@forge.example",
            ),
            (
                &["--admin-listen", "127.0.0.1:9091"],
                "needs at least one --admin-token",
            ),
            (
                &["--admin-token", "0123456789abcdef", "--admin-listen", "x"],
                "invalid admin listen address",
            ),
            (
                &["--admin-token", "0123456789abcde"],
                "at least 16 characters (one is 15)",
            ),
            (
                &["--admin-token", "<output of openssl rand -hex 32>"],
                "visible ASCII without spaces",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(format!("{err:#}").contains(message), "{args:?}: {err:#}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `listn`"),
            "{err:#}"
        );
    }
}
