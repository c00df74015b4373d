//! What the proxy needs to know: where mirrors live, which upstreams exist, what is cached,
//! how access is checked and which credential goes upstream. Built by the caller (the server
//! reads it from a file, the environment and flags); nothing here reads the environment.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// Which repositories are served from mirrors; the rest pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachePolicy {
    /// Every repository seen.
    All,
    /// Only these, as `owner/repo` (default upstream) or `host/owner/repo`, compared without
    /// case.
    Only(HashSet<String>),
}

impl CachePolicy {
    /// A list policy from entries such as `acme/widgets` or `gitlab.example/acme/widgets`.
    pub fn only<I: IntoIterator<Item = S>, S: AsRef<str>>(entries: I) -> Self {
        CachePolicy::Only(
            entries
                .into_iter()
                .map(|e| {
                    let e = e.as_ref().trim().trim_end_matches('/');
                    e.strip_suffix(".git").unwrap_or(e).to_ascii_lowercase()
                })
                .collect(),
        )
    }

    /// Whether `owner/repo` on `host` (`None`: the default upstream) is cached.
    pub fn is_cached(&self, host: Option<&str>, owner: &str, repo: &str) -> bool {
        match self {
            CachePolicy::All => true,
            CachePolicy::Only(list) => {
                let name = match host {
                    None => format!("{owner}/{repo}"),
                    Some(host) => format!("{host}/{owner}/{repo}"),
                };
                list.contains(&name.to_ascii_lowercase())
            }
        }
    }
}

/// Which credential gitcache sends upstream on a client's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialMode {
    /// The client's own `Authorization` header, unchanged (the default).
    #[default]
    PassThrough,
    /// The token configured for the upstream host (see [`ProxyConfig::static_tokens`]); the
    /// client's header never leaves gitcache.
    Static,
    /// No credential at all (public repositories only).
    None,
}

impl std::fmt::Display for CredentialMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CredentialMode::PassThrough => "pass-through",
            CredentialMode::Static => "static",
            CredentialMode::None => "none",
        })
    }
}

impl std::str::FromStr for CredentialMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pass-through" => Ok(CredentialMode::PassThrough),
            "static" => Ok(CredentialMode::Static),
            "none" => Ok(CredentialMode::None),
            other => Err(format!(
                "unknown credential mode '{other}' (pass-through, static or none)"
            )),
        }
    }
}

/// A token that is sent upstream by gitcache itself, never shown in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Secret(token.into())
    }

    /// The `Authorization` value for this token, as git sends a token over HTTPS (Basic,
    /// `x-access-token` as the user, which GitHub and most forges accept).
    pub fn authorization(&self) -> String {
        use base64::Engine;
        let pair = format!("x-access-token:{}", self.0);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

impl Secret {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Bounds on what one client may make the proxy do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body read for local parsing, after gzip decoding.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request body that gitcache reads.
    pub body_read_timeout: Duration,
    /// How long a client may take to send request headers, also the longest a kept-alive
    /// connection may sit idle.
    pub header_read_timeout: Duration,
    /// How long a response may wait for a client that stopped reading before it is
    /// abandoned (its pack generation stops, freeing the slot).
    pub response_stall_timeout: Duration,
    /// Bytes a second a client must take, on average, while a response waits for it (time
    /// the server takes to produce the answer does not count); a client that falls behind by
    /// what it would take in `response_stall_timeout` loses its connection. `0`: only the
    /// stall timeout applies, and a client may take one chunk per timeout.
    pub min_read_rate: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Connections one client address (an IPv4 address, an IPv6 /64) may hold at once on
    /// the listeners that serve git; one more is answered `429` and closed, taking none of
    /// `max_connections`. `0`, the default: no bound (clients behind one NAT address, or
    /// behind a load balancer that does not keep their addresses, count as one).
    pub max_connections_per_client: usize,
    /// Pack responses generated at once; more wait their turn.
    pub max_concurrent_packs: usize,
    /// The most bytes of generated responses kept on disk, all together, for clients that
    /// read slower than their answers are generated (`<data_dir>/spill`, in unnamed files).
    /// A generation whose client falls behind goes on into its spill file and frees its pack
    /// slot when done; once the budget is used up, generations wait for their clients again.
    pub max_spilled_bytes: u64,
    /// Mirror refreshes (upstream fetches) running at once; more wait their turn. A refresh
    /// goes on when the client that started it leaves, so this also bounds what clients can
    /// start and abandon.
    pub max_concurrent_refreshes: usize,
}

impl Limits {
    /// The blocking threads a runtime serving with these limits needs so that its pool never
    /// runs out first: one per connection (a response streamed from a mirror holds one while
    /// its client reads; `two_listeners` when the admin side has its own), one per pack
    /// generation, and some for parsing, refreshes and maintenance.
    pub fn blocking_threads(&self, two_listeners: bool) -> usize {
        let listeners = if two_listeners { 2 } else { 1 };
        self.max_connections
            .saturating_mul(listeners)
            .saturating_add(self.max_concurrent_packs)
            .saturating_add(64)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            body_read_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            response_stall_timeout: Duration::from_secs(120),
            // 32 kbit/s: far under any link a clone is taken over, far over a trickle.
            min_read_rate: 4 << 10,
            max_connections: 1024,
            max_connections_per_client: 0,
            // One a core (at least two): generation is CPU-bound (eight depth-1 answers at once
            // on two cores took 0.66 s with four slots, 0.47 s with two). A slot is held while
            // a pack is generated, not while its client reads it: a stored pack sent as it is
            // takes none, and what a slow client has not taken is spilled.
            max_concurrent_packs: std::thread::available_parallelism()
                .map_or(2, |n| n.get().max(2)),
            max_spilled_bytes: 4 << 30,
            max_concurrent_refreshes: gitcache_mirror::registry::DEFAULT_CONCURRENT_REFRESHES,
        }
    }
}

/// Everything the proxy is configured with.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where mirrors are kept (`<data_dir>/mirrors/<host>/<owner>/<repo>.git`).
    pub data_dir: PathBuf,
    /// The default upstream's base URL, e.g. `https://github.com`.
    pub upstream: String,
    /// Upstreams that may be named in the path (`/{host}/{owner}/{repo}/…`): name to base
    /// URL.
    pub hosts: BTreeMap<String, String>,
    /// Which repositories are cached.
    pub cache: CachePolicy,
    /// How long a verified access lets fetches through without asking upstream again; zero
    /// verifies every fetch.
    pub access_ttl: Duration,
    /// When a miss cannot reach upstream, serve what the mirror has to clients verified
    /// within `access_ttl`.
    pub serve_stale: bool,
    /// Which credential goes upstream.
    pub credentials: CredentialMode,
    /// Tokens for [`CredentialMode::Static`], by upstream host name (the default upstream's
    /// host, or a name in [`hosts`](Self::hosts)).
    pub static_tokens: BTreeMap<String, Secret>,
    /// A token for refreshes gitcache starts on its own (warming); without one, warming uses
    /// the credential of the request that noticed the change.
    pub service_token: Option<Secret>,
    /// A GitHub App whose installation tokens serve the refreshes gitcache starts on its own
    /// for the default upstream, before [`service_token`](Self::service_token).
    pub github_app: Option<std::sync::Arc<gitcache_upstream::github_app::GitHubApp>>,
    /// The secret push webhooks are signed with; with one, `POST /api/hooks/push` refreshes
    /// the mirror of the repository a push event names.
    pub webhook_secret: Option<Secret>,
    /// An S3-compatible bucket that instances share mirrors in (see
    /// [`gitcache_mirror::shared`]); the data directory then holds working copies.
    pub object_store: Option<gitcache_storage::s3::S3Config>,
    /// Keep a git bundle of each consolidated mirror in the bucket and advertise
    /// `bundle-uri`, so that clients that ask (`git clone -c transfer.bundleURI=true`) take
    /// the bulk of a clone straight from the bucket (needs [`object_store`]).
    ///
    /// [`object_store`]: Self::object_store
    pub bundle_uri: bool,
    /// How long a lease on a shared mirror's refresh or maintenance lasts unless its holder
    /// renews it (a killed instance's work is taken over after this). Leases live in the
    /// catalog's PostgreSQL; with a SQLite catalog there are none.
    pub lease_ttl: Duration,
    /// How often mirrors this instance uses are brought up to what other instances committed
    /// to the shared store (zero: only when a request finds them behind).
    pub storage_poll_interval: Duration,
    /// Mirrors fetched within `active_window` are refreshed in the background once older
    /// than this (zero: only when requests find them behind).
    pub refresh_interval: Duration,
    /// See `refresh_interval`.
    pub active_window: Duration,
    /// How long a fetch waits for a mirror being made from nothing (its first fetch not
    /// ended) before the upstream answers it instead, with the client's credential; the
    /// mirror is made all the same. A clone that the arriving pack answers is sent that pack
    /// (see the proxy's docs). `None`: every fetch waits for the mirror, and the upstream
    /// makes one pack for all of them.
    pub first_fetch_wait: Option<Duration>,
    /// The most bytes mirrors may hold together; beyond, whole mirrors are evicted, least
    /// recently used first (`None`: no cap).
    pub max_mirror_bytes: Option<u64>,
    /// The bytes to keep free on the data directory's disk: mirrors are evicted to keep
    /// them, and a refresh that would start below is refused (the fetch is passed through).
    pub min_free_bytes: u64,
    /// Upstream hosts that compare owner and repository names without case (`github.com`
    /// by default): there `acme/Widgets` and `acme/widgets` share one mirror and the upstream
    /// is asked with the lower-cased names. Everywhere else names are kept as written and
    /// two spellings are two repositories.
    pub case_insensitive_hosts: BTreeSet<String>,
    /// Refs mirrored besides `HEAD`, branches and tags, e.g. `refs/pull/`.
    pub extra_ref_prefixes: Vec<String>,
    /// How long the upstream may keep gitcache waiting: for an answer to start, and between
    /// the bytes of one (an idle timeout: a slow but steady download goes on).
    pub upstream_timeout: Duration,
    /// How long one upstream exchange may take in all, a mirror's first pack download
    /// included.
    pub upstream_transfer_timeout: Duration,
    /// How long one upstream exchange whose answer is no pack (`info/refs`, `ls-refs`) may
    /// take in all, if shorter than `upstream_transfer_timeout`.
    pub upstream_listing_timeout: Duration,
    /// Packs a mirror may gather before it is consolidated.
    pub consolidate_after: usize,
    /// Pack generation settings. Without a store of objects compressed again
    /// ([`gitcache_pack::Options::remade`]), the proxy makes one of 64 MiB.
    pub pack: gitcache_pack::Options,
    /// Request limits.
    pub limits: Limits,
    /// The response cache; `None` turns it off.
    pub response_cache: Option<crate::response_cache::ResponseCacheConfig>,
    /// Who may use the admin API; with no token the admin API and page are off (404).
    pub admin_tokens: AdminTokens,
    /// Who may read `/metrics` on the git listener with the repositories named, and nothing
    /// else (a scraper's token; an admin token may too).
    pub metrics_tokens: AdminTokens,
    /// How often the catalog's in-memory view is read again (changes made by other
    /// instances sharing a PostgreSQL catalog show up within this).
    pub catalog_reload_interval: Duration,
}

/// Admin bearer tokens, held only as SHA-256 hashes and compared in constant time.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminTokens(Vec<[u8; 32]>);

impl AdminTokens {
    /// Hash `tokens` (empty ones are ignored).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(tokens: I) -> Self {
        AdminTokens(
            tokens
                .into_iter()
                .filter(|t| !t.as_ref().is_empty())
                .map(|t| hash_token(t.as_ref()))
                .collect(),
        )
    }

    /// Whether no token is configured (the admin API is off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` is one of them. Every configured hash is compared, each in constant
    /// time, so the answer's timing tells nothing about the tokens.
    pub fn accepts(&self, token: &str) -> bool {
        let hash = hash_token(token);
        self.0.iter().fold(false, |found, known| {
            let diff = known.iter().zip(&hash).fold(0u8, |d, (a, b)| d | (a ^ b));
            found | (diff == 0)
        })
    }
}

fn hash_token(token: &str) -> [u8; 32] {
    let mut hash = [0; 32];
    hash.copy_from_slice(crate::access::sha256(token.as_bytes()).as_bytes());
    hash
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured)", self.0.len())
    }
}

impl ProxyConfig {
    /// Defaults for a proxy of `upstream` keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, upstream: impl Into<String>) -> Self {
        ProxyConfig {
            data_dir: data_dir.into(),
            upstream: upstream.into(),
            hosts: BTreeMap::new(),
            cache: CachePolicy::All,
            access_ttl: Duration::from_secs(60),
            serve_stale: false,
            credentials: CredentialMode::PassThrough,
            static_tokens: BTreeMap::new(),
            service_token: None,
            github_app: None,
            webhook_secret: None,
            object_store: None,
            bundle_uri: false,
            lease_ttl: Duration::from_secs(30),
            storage_poll_interval: Duration::from_secs(30),
            refresh_interval: Duration::ZERO,
            active_window: Duration::from_secs(24 * 3600),
            first_fetch_wait: None,
            max_mirror_bytes: None,
            min_free_bytes: 1 << 30,
            case_insensitive_hosts: BTreeSet::from(["github.com".to_owned()]),
            extra_ref_prefixes: Vec::new(),
            upstream_timeout: Duration::from_secs(30),
            upstream_transfer_timeout: Duration::from_secs(3600),
            upstream_listing_timeout: gitcache_upstream::Limits::default().listing_timeout,
            consolidate_after: gitcache_mirror::registry::DEFAULT_CONSOLIDATE_AFTER,
            pack: gitcache_pack::Options::default(),
            limits: Limits::default(),
            response_cache: Some(crate::response_cache::ResponseCacheConfig::default()),
            admin_tokens: AdminTokens::default(),
            metrics_tokens: AdminTokens::default(),
            catalog_reload_interval: Duration::from_secs(10),
        }
    }
}

impl ProxyConfig {
    /// The mirror key of `owner/repo` on `host`: names folded to lower case when the host
    /// [compares them without case](Self::case_insensitive_hosts), kept as written otherwise.
    pub fn key(
        &self,
        host: &str,
        owner: &str,
        repo: &str,
    ) -> Result<gitcache_storage::repo::RepoKey, gitcache_storage::repo::InvalidName> {
        use gitcache_storage::repo::RepoKey;
        if self
            .case_insensitive_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
        {
            RepoKey::folded(host, owner, repo)
        } else {
            RepoKey::new(host, owner, repo)
        }
    }
}

/// The host part of a base URL (`https://github.com` -> `github.com`), or why not.
pub(crate) fn url_host(url: &str) -> Result<String, String> {
    let shown = gitcache_upstream::without_userinfo(url);
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("upstream URL '{shown}' must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || url.contains('@') {
        return Err(format!(
            "upstream URL '{shown}' needs a host (and no user information)"
        ));
    }
    // As requests will reach it: a repository's URL under it must be one.
    let repository = format!("{}/owner/repo", url.trim_end_matches('/'));
    gitcache_upstream::Upstream::new(&repository, None, std::time::Duration::from_secs(1))
        .map_err(|err| format!("upstream URL '{shown}': {err}"))?;
    Ok(authority.to_ascii_lowercase())
}

/// The most extra ref prefixes mirrored, and the longest one, in bytes: each is a line of
/// every refresh's `ls-refs`.
const MAX_EXTRA_REF_PREFIXES: usize = 64;
const MAX_EXTRA_REF_PREFIX_BYTES: usize = 256;

/// Whether `prefixes` can be mirrored besides branches and tags: each under `refs/`, short,
/// of characters a ref name may have, and apart from gitcache's own refs.
pub(crate) fn check_extra_ref_prefixes(prefixes: &[String]) -> Result<(), String> {
    if prefixes.len() > MAX_EXTRA_REF_PREFIXES {
        return Err(format!(
            "at most {MAX_EXTRA_REF_PREFIXES} extra ref prefixes, not {}",
            prefixes.len()
        ));
    }
    for prefix in prefixes {
        let shown = prefix.escape_debug();
        if !prefix.starts_with("refs/") {
            return Err(format!("extra ref prefix '{shown}' must start with refs/"));
        }
        if prefix.len() > MAX_EXTRA_REF_PREFIX_BYTES {
            return Err(format!(
                "extra ref prefix '{shown}' is over {MAX_EXTRA_REF_PREFIX_BYTES} bytes"
            ));
        }
        if prefix
            .bytes()
            .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
            || prefix.contains("..")
            || prefix.contains("//")
        {
            return Err(format!(
                "extra ref prefix '{shown}' has characters no ref name has"
            ));
        }
        if gitcache_mirror::mirror::reaches_own_refs(prefix) {
            return Err(format!(
                "extra ref prefix '{shown}' would take in gitcache's own refs ({}); name the \
                 namespaces wanted instead, such as refs/pull/",
                gitcache_mirror::mirror::OWN_PREFIX
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_ref_prefixes_are_checked() {
        let ok = |p: &[&str]| {
            check_extra_ref_prefixes(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            ok(&["refs/pull/", "refs/merge-requests/", "refs/notes/"]),
            Ok(())
        );
        for (prefix, message) in [
            ("refs/", "gitcache's own refs"),
            ("refs/gi", "gitcache's own refs"),
            ("refs/gitcache/kept/", "gitcache's own refs"),
            ("pull/", "must start with refs/"),
            ("refs/pull/\n", "characters"),
            ("refs/a b", "characters"),
            ("refs/../x", "characters"),
        ] {
            let err = ok(&[prefix]).unwrap_err();
            assert!(err.contains(message), "{prefix:?}: {err}");
        }
        let long = format!("refs/{}", "x".repeat(MAX_EXTRA_REF_PREFIX_BYTES));
        assert!(ok(&[long.as_str()]).unwrap_err().contains("over 256 bytes"));
        let many: Vec<String> = (0..=MAX_EXTRA_REF_PREFIXES)
            .map(|i| format!("refs/n{i}/"))
            .collect();
        assert!(
            check_extra_ref_prefixes(&many)
                .unwrap_err()
                .contains("at most 64")
        );
    }

    #[test]
    fn cache_lists_match_without_case_and_suffix() {
        let policy = CachePolicy::only(["Acme/Widgets.git", "gitlab.example/team/tool"]);
        assert!(policy.is_cached(None, "acme", "widgets"));
        assert!(policy.is_cached(Some("gitlab.example"), "Team", "TOOL"));
        assert!(!policy.is_cached(Some("gitlab.example"), "acme", "widgets"));
        assert!(!policy.is_cached(None, "team", "tool"));
        assert!(CachePolicy::All.is_cached(None, "x", "y"));
    }

    #[test]
    fn secrets_never_show_and_become_basic_credentials() {
        let secret = Secret::new("s3cret");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        // base64("x-access-token:s3cret")
        assert_eq!(secret.authorization(), "Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0");
    }

    #[test]
    fn admin_tokens_are_hashed_and_compared_whole() {
        let tokens = AdminTokens::new(["first-token", "", "second-token"]);
        assert!(!tokens.is_empty());
        assert_eq!(format!("{tokens:?}"), "AdminTokens(2 configured)");
        assert!(tokens.accepts("first-token") && tokens.accepts("second-token"));
        for wrong in ["", "first", "first-token ", "First-token", "second-token2"] {
            assert!(!tokens.accepts(wrong), "{wrong:?}");
        }
        assert!(AdminTokens::new([""]).is_empty());
        assert!(!AdminTokens::default().accepts(""));
    }

    #[test]
    fn upstream_hosts() {
        assert_eq!(url_host("https://github.com").unwrap(), "github.com");
        assert_eq!(
            url_host("http://127.0.0.1:9000/base").unwrap(),
            "127.0.0.1:9000"
        );
        assert!(url_host("ftp://x").is_err());
        let err = url_host("https://user:s3cret@host").unwrap_err();
        assert!(
            err.contains("no user information") && !err.contains("s3cret"),
            "{err}"
        );
        for bad in [
            "http://:80",
            "https://h/x?y",
            "http://h/a b",
            "http://h:port",
        ] {
            assert!(url_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "static".parse::<CredentialMode>().unwrap(),
            CredentialMode::Static
        );
        assert!("open".parse::<CredentialMode>().is_err());
    }
}
