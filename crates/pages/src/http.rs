//! The pages HTTP service: `GET`/`HEAD` serve deployed sites by `Host`, `PUT` deploys one.
//!
//! - `PUT /` (the domain's root tree) or `PUT /<project>/` with the repository URL as the
//!   body (`#<branch>` at its end, or an `X-Pages-Branch` header; `pages` otherwise) fetches
//!   the branch's tree and deploys it: `201 Created` with `Content-Location` and the commit
//!   id, `200` when that commit is deployed already.
//! - `GET`/`HEAD`: the site the path routes to ([`crate::serve::route`]), answered as
//!   [`crate::serve::answer`] decides, with `ETag`, `304 Not Modified`, `301` to a
//!   directory's slash and the site's `404.html`.
//!
//! A deploy is authorized as git-pages authorizes it: the request's password
//! (`Authorization: Pages <password>`, or `Basic` for the user `Pages`) hashed with the host,
//! `SHA256("<host> <password>")` in hex, must be a TXT record at
//! `_git-pages-challenge.<host>`, asked of the configured DNS server. Run insecure
//! (`--pages-insecure`), deploys go unchecked, logged at each. Whoever deploys names the
//! URL, so a deploy reaches public addresses only, or the repositories under the prefixes
//! [`Sources`] names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::{Method, Request, Response, StatusCode, header};

use crate::body::Body;
use crate::encoding::{Encoding, negotiate, worth_compressing};
use crate::fetch::FetchError;
use crate::manifest::Content;
use crate::rules::RuleKind;
use crate::serve::{Answer, File, answer, route};
use crate::site::{Error as SiteError, Pages};
use gitcache_storage::store::AnyStore;

/// Deploys by result (`deployed`, `unchanged`, `refused`).
pub const DEPLOYS: &str = "gitcache_pages_deploys_total";
/// Requests by status.
pub const REQUESTS: &str = "gitcache_pages_requests_total";
/// Bytes of answers to `GET`.
pub const SENT_BYTES: &str = "gitcache_pages_sent_bytes_total";

/// The longest push event read.
const MAX_EVENT_BODY: usize = 1 << 20;
/// A push event's body comes within this (forges send it at once).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a push event (GitHub, Gitea, Forgejo) says: the ref pushed and the repository.
#[derive(serde::Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    branch: String,
    repository: EventRepository,
}

#[derive(serde::Deserialize)]
struct EventRepository {
    clone_url: String,
    /// `<owner>/<name>`: what names the site of an event sent to a wildcard's domain.
    #[serde(default)]
    full_name: Option<String>,
}

/// The project a deploy path names: `.index` for `/`, else its one segment.
fn project_of(path: &str) -> Option<String> {
    match path.trim_matches('/') {
        "" => Some(".index".to_owned()),
        // Decoded, as a request's first segment is when it is served: `PUT /a%20b/` deploys
        // the project that `/a%20b/` is routed to.
        name if !name.contains('/') => {
            crate::serve::decode(name).filter(|name| crate::site::valid_project(name))
        }
        _ => None,
    }
}

/// The headers forges sign webhook events in.
const SIGNATURE_HEADERS: [&str; 3] = [
    "x-hub-signature-256",
    "x-gitea-signature",
    "x-forgejo-signature",
];

/// The site a signed event sent to `wildcard`'s domain deploys: its host
/// (`<owner>.<domain>`, lower-cased), its user and repository as the forge spells them, and
/// its project (the root tree for one of the index repositories, else the repository's
/// name). `None` when the event names no repository, or one whose owner makes no host name.
fn named_site(wildcard: &Wildcard, event: &PushEvent) -> Option<(String, String, String, String)> {
    let (owner, name) = event.repository.full_name.as_deref()?.split_once('/')?;
    let host = format!("{}.{}", owner.to_ascii_lowercase(), wildcard.domain);
    if wildcard.user_of(&host).is_none() || !crate::site::valid_host(&host) {
        return None;
    }
    let index = wildcard
        .index_repos
        .iter()
        .any(|repo| repo.replace("<user>", owner).eq_ignore_ascii_case(name));
    let project = if index { ".index" } else { name };
    Some((host, owner.to_owned(), name.to_owned(), project.to_owned()))
}

/// The longest `PUT` body (a repository URL).
const MAX_PUT_BODY: usize = 4096;

/// A wildcard domain, as git-pages configures one: each `<user>.<domain>` is the site of the
/// forge user `<user>`, whose projects come from the repositories the template names. A push
/// event for such a host is authorized by its repository alone: it must be the one the
/// template computes for the host and project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    /// The domain (`example.page`): hosts one label under it are users' sites.
    pub domain: String,
    /// The repository URL of a project, with `<user>` and `<project>` in it
    /// (`https://forge.example/<user>/<project>.git`).
    pub clone_url: String,
    /// The repositories (`<project>` values, `<user>` replaced) whose push deploys the user's
    /// root tree (`<user>.example.page`, `pages`).
    pub index_repos: Vec<String>,
    /// The branch deployed from each repository (`pages`).
    pub branch: String,
    /// The secret a forge signs push events with (`X-Hub-Signature-256: sha256=<hex>`,
    /// `X-Gitea-Signature`, `X-Forgejo-Signature`). When set, every event for the wildcard
    /// must be signed with it, and one sent to the domain itself (the one address of a
    /// forge-wide webhook) deploys the site its repository names: the host
    /// `<owner>.<domain>`, the root tree for one of `index_repos`, else the project named
    /// as the repository. Without it, anyone may send an event naming a user's repository.
    pub webhook_secret: Option<WebhookSecret>,
}

/// A webhook secret: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// The secret `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        WebhookSecret(secret.into())
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl Wildcard {
    /// Whether the clone URL, its placeholders filled, is one deploys can fetch from (no
    /// user information: deploys send no credential, and the URL is shown in errors).
    pub fn check(&self) -> Result<(), String> {
        let url = self
            .clone_url
            .replace("<user>", "user")
            .replace("<project>", "project");
        gitcache_upstream::Upstream::new(&url, None, std::time::Duration::from_secs(1))
            .map(|_| ())
            .map_err(|err| format!("pages wildcard clone URL: {err}"))
    }

    /// The user whose site `host` is, when it is one label under the domain.
    pub fn user_of<'h>(&self, host: &'h str) -> Option<&'h str> {
        let user = host.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        (!user.is_empty() && !user.contains('.')).then_some(user)
    }

    /// The repository URLs whose pushes deploy `project` of `user`'s site: none for a
    /// project named with more than letters, digits, `.`, `_` and `-` (`%2F`, `?`, `#`, `@`
    /// would reach the forge's URL as whatever it makes of them), or with dots alone.
    pub fn sources(&self, user: &str, project: &str) -> Vec<String> {
        let plain = |name: &str| {
            !name.is_empty()
                && !name.bytes().all(|b| b == b'.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !plain(user) || (project != ".index" && !plain(project)) {
            return Vec::new();
        }
        let url = |repo: &str| {
            self.clone_url
                .replace("<user>", user)
                .replace("<project>", repo)
        };
        if project == ".index" {
            self.index_repos
                .iter()
                .map(|repo| url(&repo.replace("<user>", user)))
                .collect()
        } else {
            vec![url(project)]
        }
    }
}

/// How a [`PagesService`] authorizes deploys.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Deploys without authorization (logged at each).
    pub insecure: bool,
    /// The DNS server asked for `_git-pages-challenge` TXT records.
    pub dns: Option<std::net::SocketAddr>,
    /// A wildcard domain whose push events are authorized by their repository.
    pub wildcard: Option<Wildcard>,
    /// Where deploys may fetch from. The wildcard's own repositories are fetched whatever
    /// this says.
    pub sources: Sources,
    /// Bytes a deploy keeps free on the scratch folder's disk (`0`: no floor): one that
    /// finds less is refused with `507`, and its pack may take half of what is free above
    /// (taking it in writes it again). The store's own disk is held to it by
    /// [`Pages::with_min_free`](crate::site::Pages::with_min_free).
    pub min_free_bytes: u64,
}

/// Where deploys may fetch from: a deployer names the repository URL, so by default only
/// hosts of the public internet are reached (a name is resolved at each connection and its
/// loopback, private, link-local and reserved addresses are left out), never the server's
/// own network.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// URL prefixes (`https://forge.example/`): when there are any, a deploy fetches only a
    /// repository under one of them, at whatever address its host has. A prefix is compared
    /// byte for byte and ends at a `/`: `https://forge.example` does not take
    /// `https://forge.example.evil/`. What follows it must be plain path segments (see
    /// [`Sources::names`]).
    pub prefixes: Vec<String>,
    /// Without prefixes, reach any address, private ones included (for a development server
    /// beside a local forge).
    pub private: bool,
}

impl Sources {
    /// Whether `url` is under one of the prefixes: what follows the prefix is plain path
    /// segments (letters, digits, `-`, `.`, `_`, `~`), none of them `.` or `..`. Nothing a
    /// server in front of the forge could read as another path passes: no `%` escapes
    /// (`..%2F`), no `;` parameters (`..;/`), no backslash, `?` or `#`.
    pub fn names(&self, url: &str) -> bool {
        self.prefixes.iter().any(|prefix| {
            url.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                let rest = if prefix.ends_with('/') {
                    rest
                } else if let Some(rest) = rest.strip_prefix('/') {
                    rest
                } else {
                    return false;
                };
                // One slash may end it, as in a URL copied from a browser.
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                !rest.is_empty()
                    && rest.split('/').all(|segment| {
                        !matches!(segment, "" | "." | "..")
                            && segment.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
                            })
                    })
            })
        })
    }
}

/// The most push events for a wildcard host read at once (before they are authorized).
const CONCURRENT_EVENT_READS: usize = 8;

/// What the service needs.
#[derive(Debug, Clone)]
pub struct PagesService {
    pages: Pages<AnyStore>,
    /// Where fetched packs are indexed for a moment.
    scratch: PathBuf,
    /// Each upstream exchange of a deploy within this.
    timeout: Duration,
    /// Bytes kept free on the scratch folder's disk.
    min_free: u64,
    /// Deploys without authorization (logged at each).
    insecure: bool,
    /// The DNS server asked for `_git-pages-challenge` TXT records.
    dns: Option<std::net::SocketAddr>,
    /// A wildcard domain.
    wildcard: Option<Wildcard>,
    /// Where deploys may fetch from.
    sources: Sources,
    /// Deploys run at once (each a fetch and a pack to index).
    deploys: Arc<tokio::sync::Semaphore>,
    /// Each host's turn: one deploy of a host at a time, so that one host's deployer cannot
    /// hold every slot; the next waits for it (see [`PagesService::deploy_slot`]).
    turns: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    /// Push events for wildcard hosts read at once.
    event_reads: Arc<tokio::sync::Semaphore>,
}

/// The most deploys run at once; more are told to come back.
const CONCURRENT_DEPLOYS: usize = 2;

/// The most deploys of one host that wait for its turn; more are told to come back. Each
/// deploy reads the branch's tip when its turn comes, so a push that finds one waiting
/// loses nothing by being told so.
const WAITING_PER_HOST: usize = 2;
/// The longest a deploy waits for its host's turn (a deploy's exchanges are bounded: its
/// listing by a minute, its fetch by five, its wait for a sweep under way by under five; its
/// uploads by the store's own bounds).
const HOST_TURN_WAIT: Duration = Duration::from_secs(600);
/// The longest a deploy that waited for its host's turn then waits for a slot.
const SLOT_WAIT: Duration = Duration::from_secs(60);

type Turns = Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>>;

/// A deploy's turn: one of the slots, and its host's, given back when dropped.
struct DeploySlot {
    permits: Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    )>,
    host: String,
    turns: Turns,
}

impl Drop for DeploySlot {
    fn drop(&mut self) {
        drop(self.permits.take());
        forget_idle_turn(&self.turns, &self.host);
    }
}

/// Forgets a host's turn, if idle, when dropped.
struct Leaving<'a> {
    turns: &'a Turns,
    host: &'a str,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        forget_idle_turn(self.turns, self.host);
    }
}

/// Forget `host`'s turn when nobody holds or waits for it.
fn forget_idle_turn(turns: &Turns, host: &str) {
    let mut turns = turns.lock().unwrap_or_else(|p| p.into_inner());
    if turns
        .get(host)
        .is_some_and(|turn| Arc::strong_count(turn) == 1)
    {
        turns.remove(host);
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `Host` of a request, lower-cased, without a port or a final dot; none for a request
/// with two, or in absolute form naming another host (which a cache in front could key on
/// instead).
fn host_of<B>(request: &Request<B>) -> Option<String> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next()?.to_str().ok()?;
    if hosts.next().is_some() {
        return None;
    }
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    // `example.org.` is `example.org`: one site, one host's turn.
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = name.to_ascii_lowercase();
    if let Some(authority) = request.uri().authority() {
        let named = authority.host();
        let named = named.strip_suffix('.').unwrap_or(named);
        if !named.eq_ignore_ascii_case(&name) {
            return None;
        }
    }
    (!name.is_empty()).then_some(name)
}

impl PagesService {
    /// Sites in `pages`; fetches indexed under `scratch`; each upstream exchange within
    /// `timeout`; deploys authorized without checks when `insecure`.
    pub fn new(
        pages: Pages<AnyStore>,
        scratch: PathBuf,
        timeout: Duration,
        insecure: bool,
    ) -> Arc<Self> {
        Self::with_dns(pages, scratch, timeout, insecure, None)
    }

    /// [`new`](Self::new), authorizing deploys by the TXT records `dns` holds.
    pub fn with_dns(
        pages: Pages<AnyStore>,
        scratch: PathBuf,
        timeout: Duration,
        insecure: bool,
        dns: Option<std::net::SocketAddr>,
    ) -> Arc<Self> {
        Self::with_options(
            pages,
            scratch,
            timeout,
            Options {
                insecure,
                dns,
                wildcard: None,
                sources: Sources::default(),
                min_free_bytes: 0,
            },
        )
    }

    /// [`new`](Self::new), authorizing deploys as `options` say.
    pub fn with_options(
        pages: Pages<AnyStore>,
        scratch: PathBuf,
        timeout: Duration,
        options: Options,
    ) -> Arc<Self> {
        Arc::new(PagesService {
            pages,
            scratch,
            timeout,
            min_free: options.min_free_bytes,
            insecure: options.insecure,
            dns: options.dns,
            wildcard: options.wildcard,
            sources: options.sources,
            deploys: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DEPLOYS)),
            turns: Arc::default(),
            event_reads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_EVENT_READS)),
        })
    }

    /// The sites served.
    pub fn pages(&self) -> &Pages<AnyStore> {
        &self.pages
    }

    /// Answer `request`.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.handle_from(request, None).await
    }

    /// Answer `request` from `remote`, with an access log line as the proxy writes them
    /// (target `gitcache::access`, `service` `pages`).
    pub async fn handle_from<B>(
        &self,
        request: Request<B>,
        remote: Option<std::net::SocketAddr>,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let host = host_of(&request);
        let user_agent = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let response = match host.as_deref() {
            Some(host) => self.answer(host, request).await,
            None => text(StatusCode::BAD_REQUEST, "no single Host header"),
        };
        let bytes = hyper::body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        tracing::info!(
            target: "gitcache::access",
            service = "pages",
            method = %method,
            host = host.as_deref().unwrap_or(""),
            path = %path,
            status = response.status().as_u16(),
            bytes,
            duration_ms = started.elapsed().as_millis() as u64,
            remote = %remote.map(|r| r.to_string()).unwrap_or_default(),
            user_agent = %user_agent,
            content_encoding = response
                .headers()
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            "access"
        );
        response
    }

    async fn answer<B>(&self, host: &str, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = request.method().clone();
        let response = match method {
            Method::GET | Method::HEAD => self.get(host, request).await,
            Method::PUT | Method::POST => {
                let response = if method == Method::PUT {
                    self.put(host, request).await
                } else {
                    self.post(host, request).await
                };
                let result = match response.status() {
                    StatusCode::CREATED => "deployed",
                    StatusCode::OK => "unchanged",
                    StatusCode::ACCEPTED => "ignored",
                    _ => "refused",
                };
                metrics::counter!(DEPLOYS, "result" => result).increment(1);
                response
            }
            _ => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD, PUT or POST");
                response.headers_mut().insert(
                    header::ALLOW,
                    header::HeaderValue::from_static("GET, HEAD, PUT, POST"),
                );
                response
            }
        };
        metrics::counter!(REQUESTS, "status" => response.status().as_str().to_owned()).increment(1);
        if method == Method::GET
            && let Some(length) = hyper::body::Body::size_hint(response.body()).exact()
        {
            metrics::counter!(SENT_BYTES).increment(length);
        }
        response
    }

    async fn get<B>(&self, host: &str, request: Request<B>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        // Routing by exclusion: a project of the first segment's name, if deployed.
        let first = crate::serve::first_segment(&path).unwrap_or_default();
        let project_site = if first.is_empty() {
            None
        } else {
            match self.pages.site(host, &first).await {
                Ok(site) => site,
                Err(SiteError::Name(_)) => None,
                Err(err) => {
                    tracing::warn!(%err, "reading a site failed");
                    return text(StatusCode::SERVICE_UNAVAILABLE, "the site cannot be read");
                }
            }
        };
        let (project, rest) = route(&path, |name| project_site.is_some() && name == first);
        if project != ".index" && rest.is_empty() {
            let named = crate::serve::percent_encode(&project, b"-._~!$&'()*+,;=:@");
            return redirect(StatusCode::MOVED_PERMANENTLY, &format!("/{named}/"));
        }
        let site = match project_site {
            Some(site) if project != ".index" => site,
            _ => match self.pages.site(host, ".index").await {
                Ok(Some(site)) => site,
                Ok(None) | Err(SiteError::Name(_)) => {
                    return text(StatusCode::NOT_FOUND, "no site here");
                }
                Err(err) => {
                    tracing::warn!(%err, "reading a site failed");
                    return text(StatusCode::SERVICE_UNAVAILABLE, "the site cannot be read");
                }
            },
        };
        // As it goes in a URL: the project's name encoded again.
        let base = if project == ".index" {
            String::new()
        } else {
            let named = crate::serve::percent_encode(&project, b"-._~!$&'()*+,;=:@");
            format!("/{named}")
        };
        let mut found = answer(&site, rest);
        if found == Answer::BadPath {
            return text(StatusCode::BAD_REQUEST, "not a path of the site");
        }
        // The site's `_redirects` and `_headers`, matched on the decoded path (as files are).
        let rest = crate::serve::decode(rest).unwrap_or_default();
        let rest = rest.as_str();
        let exists = matches!(found, Answer::Found(_) | Answer::Redirect(_));
        let mut status = StatusCode::OK;
        if let Some(applied) = site.rules.redirect(rest, exists) {
            match applied.kind {
                RuleKind::Redirect(code) => {
                    let to = if applied.to.starts_with('/') {
                        format!("{base}{}", applied.to)
                    } else {
                        applied.to
                    };
                    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
                    return self.with_rules(&site, rest, redirect(code, &to));
                }
                RuleKind::Rewrite | RuleKind::NotFound => {
                    let target = applied.to.split(['?', '#']).next().unwrap_or("/");
                    match answer(&site, target) {
                        Answer::Found(file) => {
                            found = Answer::Found(file);
                            if applied.kind == RuleKind::NotFound {
                                status = StatusCode::NOT_FOUND;
                            }
                        }
                        other => found = other,
                    }
                }
            }
        }
        let file = match found {
            Answer::Found(file) => file,
            Answer::NotFound(Some(file)) => {
                status = StatusCode::NOT_FOUND;
                file
            }
            Answer::NotFound(None) => {
                return self.with_rules(&site, rest, text(StatusCode::NOT_FOUND, "not found"));
            }
            Answer::Redirect(to) => {
                return redirect(StatusCode::MOVED_PERMANENTLY, &format!("{base}{to}"));
            }
            Answer::BadPath => return text(StatusCode::BAD_REQUEST, "not a path of the site"),
        };
        let response = self.send_file(&request, status, &file).await;
        self.with_rules(&site, rest, response)
    }

    /// `response` with the headers `site`'s `_headers` sets for `path`.
    fn with_rules(
        &self,
        site: &crate::site::Site,
        path: &str,
        mut response: Response<Body>,
    ) -> Response<Body> {
        let mut set_type = false;
        for (name, value) in site.rules.headers(path) {
            if let (Ok(name), Ok(value)) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                header::HeaderValue::from_str(value),
            ) {
                let headers = response.headers_mut();
                // The site's `Content-Type` replaces the server's (the first block's wins),
                // not beside it: two would be read differently by a cache and a browser.
                let added = if name == header::CONTENT_TYPE {
                    let first = !set_type;
                    set_type = true;
                    if first {
                        headers.try_insert(name, value).map(|_| ())
                    } else {
                        Ok(())
                    }
                } else {
                    headers.try_append(name, value).map(|_| ())
                };
                // A header map holds a bounded number of headers: past it, the rest are not
                // added, rather than fail.
                if added.is_err() {
                    break;
                }
            }
        }
        response
    }

    /// The answer sending `file` with `status`: `304` when the client holds it, its length
    /// only for `HEAD`, one byte range when one is asked, compressed when the client takes
    /// `br` or `gzip` and the file is worth it.
    async fn send_file<B>(
        &self,
        request: &Request<B>,
        status: StatusCode,
        file: &File<'_>,
    ) -> Response<Body> {
        let headers = request.headers();
        let length = match file.content {
            Content::Inline(bytes) => bytes.len() as u64,
            Content::Blob { size, .. } => *size,
        };
        let compressible = worth_compressing(file.content_type, length);
        let encoding = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .and_then(negotiate)
            .filter(|_| compressible && !headers.contains_key(header::RANGE));
        let etag = match encoding {
            Some(encoding) => variant_etag(&file.etag, encoding),
            None => file.etag.clone(),
        };
        let not_modified = status == StatusCode::OK
            && headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|tags| {
                    // Compared weakly, as `If-None-Match` is: `W/"x"` matches `"x"`.
                    tags.split(',').any(|t| {
                        let t = t.trim();
                        t.strip_prefix("W/").unwrap_or(t) == etag || t == "*"
                    })
                });
        let response = if not_modified {
            let mut response = Response::new(Body::full(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else if request.method() == Method::HEAD {
            // The manifest knows the length: no blob is read (nor compressed).
            let mut response = sized(status, Body::full(Bytes::new()), length, file.content_type);
            response.headers_mut().insert(
                header::ACCEPT_RANGES,
                header::HeaderValue::from_static("bytes"),
            );
            return with_etag(response, &file.etag, compressible);
        } else {
            // A compressed copy the memory holds goes without reading the blob; otherwise one
            // is made when a compression is free. For a blob too large to keep, that is known
            // before it is read whole (the compression taken then): without one, it goes as
            // it is, in pieces.
            let mut compression = None;
            let mut encoding = encoding;
            if let (Some(chosen), Content::Blob { hash, size }) = (encoding, file.content) {
                if let Some(bytes) = self.pages.held_compressed(hash, chosen) {
                    return compressed_answer(status, bytes, chosen, file.content_type, &etag);
                }
                if !self.pages.reads_whole(*size) {
                    compression = self.pages.compression_slot();
                    if compression.is_none() {
                        encoding = None;
                    }
                }
            }
            // A large blob that goes as it is: read in pieces as it is sent.
            let stored = match file.content {
                Content::Blob { hash, size }
                    if encoding.is_none() && !self.pages.reads_whole(*size) =>
                {
                    Some((hash, *size))
                }
                _ => None,
            };
            let content = match (stored, file.content) {
                (Some(_), _) => Bytes::new(),
                (None, Content::Inline(bytes)) => Bytes::from(bytes.clone()),
                (None, Content::Blob { hash, .. }) => match self.pages.blob(hash).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return missing_blob(&file.path),
                    Err(err) => return unreadable_blob(&err),
                },
            };
            if let (Some(chosen), Content::Blob { hash, .. }) = (encoding, file.content)
                && let Some(slot) = compression.or_else(|| self.pages.compression_slot())
                && let Some(bytes) = self
                    .pages
                    .compress(hash, content.clone(), chosen, slot)
                    .await
            {
                return compressed_answer(status, bytes, chosen, file.content_type, &etag);
            }
            // A range of the file the client holds part of: with `If-Range` naming another
            // version (or a date: none is sent), the whole file instead.
            let same_version = headers
                .get(header::IF_RANGE)
                .is_none_or(|tag| tag.as_bytes() == file.etag.as_bytes());
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .filter(|_| status == StatusCode::OK && same_version);
            let length = stored.map_or(content.len() as u64, |(_, size)| size);
            // The bytes `part` of the file.
            let body = async |part: std::ops::Range<u64>| match stored {
                None => Ok(Body::full(
                    content.slice(part.start as usize..part.end as usize),
                )),
                Some((hash, _)) => match self.pages.blob_pieces(hash, part.clone()).await {
                    Ok(Some(pieces)) => Ok(Body::pieces(pieces, part.end - part.start, &file.path)),
                    Ok(None) => Err(missing_blob(&file.path)),
                    Err(err) => Err(unreadable_blob(&err)),
                },
            };
            match range.map(|r| byte_range(r, length)) {
                // One satisfiable range: that part (`206`).
                Some(Some(Some((start, end)))) => {
                    let part = match body(start..end + 1).await {
                        Ok(part) => part,
                        Err(refused) => return refused,
                    };
                    let mut response = sized(
                        StatusCode::PARTIAL_CONTENT,
                        part,
                        end - start + 1,
                        file.content_type,
                    );
                    if let Ok(value) =
                        header::HeaderValue::from_str(&format!("bytes {start}-{end}/{length}"))
                    {
                        response.headers_mut().insert(header::CONTENT_RANGE, value);
                    }
                    response
                }
                // A range past the end: `416`, with the length.
                Some(Some(None)) => {
                    let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "no such range");
                    if let Ok(value) = header::HeaderValue::from_str(&format!("bytes */{length}")) {
                        response.headers_mut().insert(header::CONTENT_RANGE, value);
                    }
                    return response;
                }
                // No range, or one this server does not read (several): the whole file.
                _ => {
                    let whole = match body(0..length).await {
                        Ok(whole) => whole,
                        Err(refused) => return refused,
                    };
                    let mut response = sized(status, whole, length, file.content_type);
                    response.headers_mut().insert(
                        header::ACCEPT_RANGES,
                        header::HeaderValue::from_static("bytes"),
                    );
                    response
                }
            }
        };
        // A 304 names the copy the client holds; the identity answers name the file.
        with_etag(
            response,
            if not_modified { &etag } else { &file.etag },
            compressible,
        )
    }

    async fn put<B>(&self, host: &str, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let project = match self.admit(host, &request).await {
            Ok(project) => project,
            Err(refused) => return refused,
        };
        let branch_header = request
            .headers()
            .get("x-pages-branch")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // The body (a URL) is read before the deploy waits for its turn: a client that
        // leaves meanwhile has sent it whole.
        let body = match self.read_body(request, MAX_PUT_BODY, self.timeout).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let Ok(url) = std::str::from_utf8(&body).map(str::trim) else {
            return text(StatusCode::BAD_REQUEST, "the body is the repository URL");
        };
        let (url, branch) = match url.split_once('#') {
            Some((url, branch)) => (url, branch.to_owned()),
            None => (url, branch_header.unwrap_or_else(|| "pages".to_owned())),
        };
        let _deploying = match self.deploy_slot(host).await {
            Ok(slot) => slot,
            Err(busy) => return busy,
        };
        self.deploy(host, &project, url, &branch, false).await
    }

    /// A forge's push event (GitHub's, Gitea's or Forgejo's) at `/` or `/<project>/`,
    /// authorized as a `PUT` is, or for a host under the wildcard domain by its repository
    /// (the one the wildcard's template computes, its branch the wildcard's): the pushed
    /// branch of the event's repository is deployed when it is the one deployed there (or
    /// nothing is deployed there yet); other pushes are answered `202`, nothing done.
    async fn post<B>(&self, host: &str, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // An event for a user's host, or (signed) for the domain itself: the site it deploys
        // is then the one its repository names.
        // Only a signed one without a deploy password takes the second way: the domain's own
        // site is still deployed as any other host's, by the DNS challenge, its webhook
        // signed with a secret of its own or not.
        let signed = SIGNATURE_HEADERS.iter().any(|name| {
            request
                .headers()
                .get(*name)
                .is_some_and(|value| !value.is_empty())
        }) && password(request.headers()).is_none();
        let wildcard = self.wildcard.as_ref().and_then(|w| match w.user_of(host) {
            Some(user) => Some((w, Some(user))),
            None if host == w.domain && w.webhook_secret.is_some() && signed => Some((w, None)),
            None => None,
        });
        let mut host = host.to_owned();
        // The repository is the one the wildcard's template names (not only authorized by
        // the DNS challenge or unchecked): fetched from wherever it is.
        let mut configured = false;
        let (project, event, wanted_branch) = if let Some((wildcard, user)) = wildcard {
            // Authorized by the event's repository (and its signature, with a secret): the
            // body is read first, a few at a time.
            let Ok(_reading) = self.event_reads.try_acquire() else {
                return busy();
            };
            let project = match user {
                Some(_) => project_of(request.uri().path()),
                None => (request.uri().path() == "/").then(String::new),
            };
            let Some(project) = project else {
                return text(StatusCode::BAD_REQUEST, "POST / or /<project>/");
            };
            let signatures: hyper::HeaderMap = SIGNATURE_HEADERS
                .iter()
                .filter_map(|name| {
                    let value = request.headers().get(*name)?.clone();
                    Some((header::HeaderName::from_static(name), value))
                })
                .collect();
            let body = match self
                .read_body(request, MAX_EVENT_BODY, EVENT_TIMEOUT.min(self.timeout))
                .await
            {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            if let Some(secret) = wildcard.webhook_secret.as_ref().filter(|_| !self.insecure) {
                let signed =
                    gitcache_upstream::signature::verify(secret.as_bytes(), &signatures, &body);
                if let Err(refused) = signed {
                    return text(StatusCode::UNAUTHORIZED, &refused.to_string());
                }
            }
            let event = match serde_json::from_slice::<PushEvent>(&body) {
                Ok(event) => event,
                Err(_) => return text(StatusCode::BAD_REQUEST, "not a push event"),
            };
            drop((_reading, body));
            // The repository as the template names it (with the name as the forge spells
            // it, for an index repository too), and the project it deploys.
            let (user, repository, project) = match user {
                Some(user) => (user.to_owned(), project.clone(), project),
                None => match named_site(wildcard, &event) {
                    Some((named, user, repository, project)) => {
                        host = named;
                        (user, repository, project)
                    }
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "the event's repository names no site under the domain",
                        );
                    }
                },
            };
            let sources = wildcard.sources(&user, &repository);
            if sources.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a project is named with letters, digits, '.', '_' and '-'",
                );
            }
            if self.insecure {
                tracing::warn!(host, "deploy without authorization (--pages-insecure)");
            } else if !sources.contains(&event.repository.clone_url) {
                return text(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "not authorized: {host} is deployed from {}",
                        sources.join(" or ")
                    ),
                );
            }
            configured = sources.contains(&event.repository.clone_url);
            (project, event, Some(wildcard.branch.clone()))
        } else {
            let project = match self.admit(&host, &request).await {
                Ok(project) => project,
                Err(refused) => return refused,
            };
            match self.read_event(request).await {
                Ok(event) => (project, event, None),
                Err(refused) => return refused,
            }
        };
        let host = host.as_str();
        // What is answered without a deploy is answered before the turn is waited for: an
        // event that deploys nothing takes no place of a host's.
        let Some(branch) = event.branch.strip_prefix("refs/heads/") else {
            return text(StatusCode::ACCEPTED, "not a branch: nothing to deploy");
        };
        if wanted_branch.is_some_and(|wanted| wanted != branch) {
            return text(
                StatusCode::ACCEPTED,
                "not the deployed branch: nothing to deploy",
            );
        }
        let _deploying = match self.deploy_slot(host).await {
            Ok(slot) => slot,
            Err(busy) => return busy,
        };
        let source = format!("{}#{branch}", event.repository.clone_url);
        match self.pages.site(host, &project).await {
            Ok(Some(site)) if site.manifest.source != source => {
                return text(
                    StatusCode::ACCEPTED,
                    "not the deployed repository and branch: nothing to deploy",
                );
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "reading a site failed");
                return text(StatusCode::SERVICE_UNAVAILABLE, "the site cannot be read");
            }
        }
        self.deploy(
            host,
            &project,
            &event.repository.clone_url,
            branch,
            configured,
        )
        .await
    }

    /// The push event `request` carries, or the refusal to send.
    async fn read_event<B>(&self, request: Request<B>) -> Result<PushEvent, Response<Body>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let body = self
            .read_body(request, MAX_EVENT_BODY, EVENT_TIMEOUT.min(self.timeout))
            .await?;
        serde_json::from_slice::<PushEvent>(&body)
            .map_err(|_| text(StatusCode::BAD_REQUEST, "not a push event"))
    }

    /// A deploy to `host` may go ahead: authorized (or insecure, logged), one of the deploys
    /// that may run at once, to the project its path names. Its slot while it runs, and the
    /// project; otherwise the refusal to send.
    async fn admit<B>(&self, host: &str, request: &Request<B>) -> Result<String, Response<Body>> {
        if self.insecure {
            tracing::warn!(host, "deploy without authorization (--pages-insecure)");
        } else if let Some(refused) = self.authorize(host, request.headers()).await {
            return Err(refused);
        }
        project_of(request.uri().path())
            .ok_or_else(|| text(StatusCode::BAD_REQUEST, "PUT or POST / or /<project>/"))
    }

    /// `host`'s turn, then one of the deploys that may run at once, held while it runs. A
    /// deploy of the same host waits for the one running (at most [`WAITING_PER_HOST`] wait,
    /// each up to [`HOST_TURN_WAIT`]), then for a slot (up to [`SLOT_WAIT`]: its client may
    /// have left, and it would be lost); one that found its turn free is refused at once
    /// when other hosts hold every slot, as when too many wait.
    async fn deploy_slot(&self, host: &str) -> Result<DeploySlot, Response<Body>> {
        // However this ends (a refusal, a wait given up or dropped), the host's turn is
        // forgotten if nobody holds or waits for it: dropped last, after the turn's
        // references below.
        let _leaving = Leaving {
            turns: &self.turns,
            host,
        };
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            let turn = Arc::clone(
                turns
                    .entry(host.to_owned())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1))),
            );
            // The map's reference, this one, the running deploy's permit's and each waiting
            // one's (its wait holds it).
            if Arc::strong_count(&turn) > 2 + WAITING_PER_HOST {
                return Err(busy());
            }
            // Taken here if free, under the lock: no other deploy of the host can take it
            // between the look and the taking.
            match Arc::clone(&turn).try_acquire_owned() {
                Ok(own) => (turn, Some(own)),
                Err(_) => (turn, None),
            }
        };
        let free = turn.1.is_some();
        let own = match turn {
            (_, Some(own)) => own,
            (turn, None) => {
                match tokio::time::timeout(HOST_TURN_WAIT, turn.acquire_owned()).await {
                    Ok(Ok(own)) => own,
                    _ => return Err(busy()),
                }
            }
        };
        let slot = match Arc::clone(&self.deploys).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if !free => {
                tokio::time::timeout(SLOT_WAIT, Arc::clone(&self.deploys).acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        match slot {
            Some(slot) => Ok(DeploySlot {
                permits: Some((slot, own)),
                host: host.to_owned(),
                turns: Arc::clone(&self.turns),
            }),
            None => {
                drop(own);
                Err(busy())
            }
        }
    }

    /// The body of `request`, at most `limit` bytes, `within` that long; otherwise the
    /// refusal to send.
    async fn read_body<B>(
        &self,
        request: Request<B>,
        limit: usize,
        within: Duration,
    ) -> Result<Bytes, Response<Body>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match tokio::time::timeout(within, Limited::new(request.into_body(), limit).collect()).await
        {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {limit} bytes"),
            )),
            // The client's connection broke, or its body was malformed.
            Ok(Err(err)) => Err(text(StatusCode::BAD_REQUEST, &format!("body: {err}"))),
            Err(_) => Err(text(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not come in time",
            )),
        }
    }

    /// Fetch `branch` of the repository at `url` and deploy its tree as `project` of `host`:
    /// a URL the configuration names (`configured`: the wildcard's) from wherever it is,
    /// others as [`Sources`] allow.
    async fn deploy(
        &self,
        host: &str,
        project: &str,
        url: &str,
        branch: &str,
        configured: bool,
    ) -> Response<Body> {
        // One repository with or without a slash at its end: one source.
        let url = url.strip_suffix('/').unwrap_or(url);
        let upstream = match gitcache_upstream::Upstream::new(url, None, self.timeout) {
            Ok(upstream) => upstream.with_limits(crate::fetch::listing_limits()),
            Err(err) => return text(StatusCode::BAD_REQUEST, &format!("repository URL: {err}")),
        };
        let upstream = if configured || self.sources.names(url) {
            upstream
        } else if !self.sources.prefixes.is_empty() {
            return text(
                StatusCode::FORBIDDEN,
                "not a repository this server deploys from",
            );
        } else if self.sources.private {
            upstream
        } else {
            upstream.public_only()
        };
        let source = format!("{url}#{branch}");
        // Checked again when the site is built; here, before anything is fetched.
        if !crate::site::source_fits(&source) {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the repository URL and branch are over {} bytes or have control characters",
                    crate::manifest::MAX_PATH
                ),
            );
        }
        // The site's version before its tree is read: a deploy committed from here on, during
        // the fetch as during the upload, is one this deploy must not go over blindly.
        let since = match self.pages.site_version(host, project).await {
            Ok(since) => since,
            Err(err) => {
                tracing::warn!(%err, "reading a site failed");
                return text(StatusCode::SERVICE_UNAVAILABLE, "the site cannot be read");
            }
        };
        // The commit deployed from this source, if any: a push or PUT that changes nothing
        // costs one `ls-refs`, not a fetch.
        // Unless its deployment did not see its blobs through: then it is fetched again, and
        // the deployment of the same commit finishes the job.
        let deployed = match self.pages.site(host, project).await {
            Ok(Some(site)) if site.manifest.source == source => Some(site.manifest.commit.clone()),
            _ => None,
        };
        let deployed = match deployed {
            Some(_) if matches!(self.pages.unfinished(host, project).await, Ok(true)) => None,
            deployed => deployed,
        };
        // The pack may take a share of the room above the floor: taking it in writes it again,
        // and the other deploys under way may take as much (none when there is no room).
        let most = match gitcache_storage::fs::free_bytes_near(&self.scratch) {
            Some(free) if self.min_free > 0 => {
                free.saturating_sub(self.min_free) / (2 * CONCURRENT_DEPLOYS as u64)
            }
            _ => crate::fetch::MOST_PACK_BYTES,
        };
        let fetched = crate::fetch::branch_tree_unless(
            &upstream,
            branch,
            &self.scratch,
            deployed.as_deref(),
            most,
        )
        .await;
        let (commit, tree) = match fetched {
            Ok(crate::fetch::Changed::Tree(commit, tree)) => (commit, *tree),
            Ok(crate::fetch::Changed::No) => {
                let commit = deployed.unwrap_or_default();
                tracing::info!(host, project, commit, "site unchanged: nothing fetched");
                let mut response = text(StatusCode::OK, &commit);
                if let Ok(location) = header::HeaderValue::from_str(&location_of(project)) {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LOCATION, location);
                }
                return response;
            }
            Err(err @ (FetchError::NoBranch(_) | FetchError::BadBranch(_))) => {
                return text(StatusCode::BAD_REQUEST, &err.to_string());
            }
            Err(FetchError::NoRoom) => {
                tracing::warn!(floor = self.min_free, "deploy refused: disk low");
                return text(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the server's disk is below the free space it keeps",
                );
            }
            Err(FetchError::Upstream(gitcache_upstream::Error::TooLarge {
                what: "pack", ..
            })) if most < crate::fetch::MOST_PACK_BYTES => {
                tracing::warn!(most, "deploy refused: its pack would take the disk low");
                return text(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the repository's pack would take the server's disk below the free space it keeps",
                );
            }
            Err(FetchError::Tree(err)) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the site's tree: {err}"),
                );
            }
            Err(err) => {
                // The upstream's own words stay in the log: the URL may name anything.
                tracing::warn!(%err, url, "deploy: the repository could not be read");
                return text(StatusCode::BAD_GATEWAY, "the repository could not be read");
            }
        };
        // Should another deploy commit the site meanwhile, this one goes over it only while
        // its commit is still the branch's tip.
        let still_tip = || -> futures_util::future::BoxFuture<'static, Result<bool, String>> {
            let (upstream, branch, commit) = (upstream.clone(), branch.to_owned(), commit.clone());
            Box::pin(async move {
                match crate::fetch::branch_tip(&upstream, &branch).await {
                    Ok(tip) => Ok(tip.to_string().eq_ignore_ascii_case(&commit)),
                    Err(err) => {
                        // The upstream's own words stay in the log.
                        tracing::warn!(%err, "deploy: the branch's tip could not be asked again");
                        Err("the repository could not be read".to_owned())
                    }
                }
            })
        };
        match self
            .pages
            .deploy_unless_superseded(host, project, &commit, &source, tree, since, still_tip)
            .await
        {
            Ok(done) => {
                tracing::info!(
                    host,
                    project,
                    commit,
                    files = done.files,
                    bytes = done.bytes,
                    unchanged = done.unchanged,
                    "site deployed"
                );
                let status = if done.unchanged {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                let mut response = text(status, &done.commit);
                if let Ok(location) = header::HeaderValue::from_str(&location_of(project)) {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LOCATION, location);
                }
                response
            }
            Err(err @ SiteError::TooLarge { .. }) => {
                text(StatusCode::PAYLOAD_TOO_LARGE, &err.to_string())
            }
            Err(err @ (SiteError::Name(_) | SiteError::Path(_) | SiteError::Rules(_))) => {
                text(StatusCode::BAD_REQUEST, &err.to_string())
            }
            Err(err @ SiteError::Superseded) => {
                tracing::info!(
                    host,
                    project,
                    commit,
                    "deploy superseded: nothing committed"
                );
                text(StatusCode::CONFLICT, &err.to_string())
            }
            Err(err @ (SiteError::TipUnknown(_) | SiteError::Tree(_))) => {
                text(StatusCode::BAD_GATEWAY, &err.to_string())
            }
            Err(err @ SiteError::LowDisk { .. }) => {
                tracing::warn!(%err, "deploy refused: disk low");
                text(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the server's disk is below the free space it keeps",
                )
            }
            Err(err) => {
                tracing::warn!(%err, "deploy failed");
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("gitcache: {err}"))
            }
        }
    }
}

/// The answer when deploys are busy.
fn busy() -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "deploys are busy (or this host's is running): try again shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

/// Where a deployed project is served: `/` for the root tree, else `/<project>/`.
fn location_of(project: &str) -> String {
    if project == ".index" {
        "/".to_owned()
    } else {
        let named = crate::serve::percent_encode(project, b"-._~!$&'()*+,;=:@");
        format!("/{named}/")
    }
}

/// A `status` answer of `bytes`, the file compressed with `encoding`, named `etag`.
fn compressed_answer(
    status: StatusCode,
    bytes: Bytes,
    encoding: Encoding,
    content_type: &'static str,
    etag: &str,
) -> Response<Body> {
    let length = bytes.len() as u64;
    let mut response = sized(status, Body::full(bytes), length, content_type);
    response.headers_mut().insert(
        header::CONTENT_ENCODING,
        header::HeaderValue::from_static(encoding.token()),
    );
    with_etag(response, etag, true)
}

/// The answer when a blob a site names is not in the store.
fn missing_blob(path: &str) -> Response<Body> {
    tracing::error!(path, "a blob the site names is missing");
    text(StatusCode::INTERNAL_SERVER_ERROR, "the site is damaged")
}

/// The answer when the store could not be read.
fn unreadable_blob(err: &crate::site::Error) -> Response<Body> {
    tracing::warn!(%err, "reading a blob failed");
    text(StatusCode::SERVICE_UNAVAILABLE, "the site cannot be read")
}

/// A `status` answer of `body` (empty for `HEAD`) said to be `length` bytes of `content_type`.
fn sized(
    status: StatusCode,
    body: Body,
    length: u64,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

impl PagesService {
    /// `None` when the request may deploy to `host`: its password (`Authorization: Pages
    /// <password>`, or `Basic` for the user `Pages`) hashed with the host as git-pages does,
    /// `SHA256("<host> <password>")` in hex, is one of the TXT records at
    /// `_git-pages-challenge.<host>`. Otherwise the refusal to send.
    async fn authorize(&self, host: &str, headers: &hyper::HeaderMap) -> Option<Response<Body>> {
        let Some(password) = password(headers) else {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "deploys need Authorization: Pages <password>",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Pages"),
            );
            return Some(response);
        };
        let Some(server) = self.dns else {
            return Some(text(
                StatusCode::FORBIDDEN,
                "no DNS server to check the challenge with (--pages-dns-server)",
            ));
        };
        let name = format!("_git-pages-challenge.{host}");
        let expected = challenge(host, &password);
        match crate::dns::lookup_txt(server, &name, Duration::from_secs(5)).await {
            Ok(records) if records.iter().any(|r| r.trim() == expected) => None,
            Ok(_) => Some(text(
                StatusCode::FORBIDDEN,
                &format!("not authorized: no TXT record at {name} matches"),
            )),
            Err(err) => {
                tracing::warn!(%err, name, "the challenge could not be looked up");
                Some(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the DNS challenge could not be looked up",
                ))
            }
        }
    }
}

/// `SHA256("<host> <password>")` in hex: the TXT record that authorizes deploys to `host`.
pub fn challenge(host: &str, password: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(format!("{host} {password}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The deploy password a request carries: `Authorization: Pages <password>`, else `Basic`
/// for the user `Pages`.
fn password(headers: &hyper::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let password = if scheme.eq_ignore_ascii_case("pages") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        if !user.eq_ignore_ascii_case("pages") {
            return None;
        }
        password.to_owned()
    } else {
        return None;
    };
    (!password.is_empty()).then_some(password)
}

/// A `Range: bytes=…` of one range over `length` bytes: `None` when it is not one this
/// server reads (another unit, several ranges, bad numbers: the whole file is sent), `Some(None)`
/// when it is past the end, else the first and last byte.
fn byte_range(value: &str, length: u64) -> Option<Option<(u64, u64)>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // The last n bytes.
        let n: u64 = last.parse().ok()?;
        (n > 0 && length > 0).then(|| (length.saturating_sub(n), length - 1))
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            length.checked_sub(1)
        } else {
            let end: u64 = last.parse().ok()?;
            if end < start {
                return None;
            }
            Some(end.min(length.saturating_sub(1)))
        };
        end.filter(|_| start < length).map(|end| (start, end))
    };
    Some(range)
}

fn redirect(status: StatusCode, to: &str) -> Response<Body> {
    let Ok(location) = header::HeaderValue::from_str(to) else {
        return text(StatusCode::BAD_REQUEST, "not a path of the site");
    };
    let mut response = text(status, to);
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The `ETag` of a file's copy compressed with `encoding`: the file's, marked.
fn variant_etag(etag: &str, encoding: Encoding) -> String {
    format!("{}-{}\"", etag.trim_end_matches('"'), encoding.token())
}

/// `response` with `etag`, and `Vary: Accept-Encoding` when the file may be sent compressed.
fn with_etag(mut response: Response<Body>, etag: &str, compressible: bool) -> Response<Body> {
    if let Ok(etag) = header::HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if compressible {
        response.headers_mut().insert(
            header::VARY,
            header::HeaderValue::from_static("accept-encoding"),
        );
    }
    response
}

/// What the kernel may hold unsent for a pages client: a write waiting for a slow client is
/// woken once this little is left, so that one that reads steadily makes progress within each
/// stall timeout (Linux would otherwise wait for a large part of a send buffer of up to
/// 4 MiB to drain).
const UNSENT_LOW_WATER: u32 = 128 << 10;

/// `stream`, its writes failing after `stall` without progress (see [`crate::stall`]), and
/// reset as it is cut off: what the kernel still holds for that client is dropped, not sent
/// on at its pace.
fn guarded(
    stream: tokio::net::TcpStream,
    stall: Duration,
) -> crate::stall::WriteStall<tokio::net::TcpStream> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LOW_WATER) {
        tracing::debug!(%err, "pages: TCP_NOTSENT_LOWAT not set");
    }
    // The same socket, for its options as it is cut off.
    let socket = std::os::fd::AsFd::as_fd(&stream)
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from);
    crate::stall::WriteStall::new(stream, stall).on_cut_off(move || {
        if let Some(socket) = socket {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
        tracing::info!("pages: connection closed: the client stopped reading");
    })
}

/// The most connections served at once; the kernel's backlog holds the rest.
const MAX_CONNECTIONS: usize = 256;
/// The longest a connection is kept, whatever it does: a client that reads a large file
/// slowly, or never, lets its slot and its buffered answer go after this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// Serve `service` on `listener` until `shutdown` completes (then stop accepting and let the
/// connections open finish): HTTP/1.1, headers within `header_timeout`, a connection whose
/// client takes no byte of its answer for `stall` closed (see [`crate::stall`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<PagesService>,
    header_timeout: Duration,
    stall: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "pages: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            // The connection's slot, held by a deploy it started until that ends too.
            let permit = Arc::new(permit);
            let handler =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let service = Arc::clone(&service);
                    let permit = Arc::clone(&permit);
                    async move {
                        // A deploy goes on if its client leaves (a forge gives up on a webhook
                        // after ten seconds): it runs in a task of its own.
                        let deploys = matches!(*request.method(), Method::PUT | Method::POST);
                        let response = if deploys {
                            let run = tokio::spawn(async move {
                                let _slot = permit;
                                service.handle_from(request, Some(peer)).await
                            });
                            run.await.unwrap_or_else(|err| {
                                tracing::error!(%err, "a deploy's task failed");
                                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                            })
                        } else {
                            service.handle_from(request, Some(peer)).await
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(guarded(stream, stall)),
                    handler,
                );
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "pages connection ended with an error")
                }
                Err(_) => tracing::info!(%peer, "pages connection closed after its lifetime"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{
        PushEvent, Sources, WebhookSecret, Wildcard, byte_range, host_of, location_of, named_site,
        project_of,
    };

    /// A deploy names its project as a request's first segment is routed: decoded, and
    /// encoded again in its `Content-Location`.
    #[test]
    fn a_deploy_names_its_project_as_requests_are_routed() {
        assert_eq!(project_of("/").as_deref(), Some(".index"));
        assert_eq!(project_of("/blog/").as_deref(), Some("blog"));
        assert_eq!(project_of("/a%20b/").as_deref(), Some("a b"));
        assert_eq!(project_of("/a%2Fb/"), None);
        // Names no project may have are no project, refused as a bad name (not a store
        // failure).
        for bad in ["/%00/", "/%2E%2E/", "/a%5Cb/"] {
            assert_eq!(project_of(bad), None, "{bad}");
        }
        assert_eq!(project_of("/a/b/"), None);
        assert_eq!(location_of("a b"), "/a%20b/");
        assert_eq!(
            crate::serve::route("/a%20b/x", |name| name == "a b"),
            ("a b".into(), "/x")
        );
    }

    #[test]
    fn a_request_with_two_hosts_names_no_site() {
        let request = |hosts: &[&str]| {
            let mut request = hyper::Request::builder().uri("/");
            for host in hosts {
                request = request.header(hyper::header::HOST, *host);
            }
            request.body(()).unwrap()
        };
        assert_eq!(
            host_of(&request(&["Site.Example:8080"])).as_deref(),
            Some("site.example")
        );
        assert_eq!(
            host_of(&request(&["Site.Example.:8080"])).as_deref(),
            Some("site.example")
        );
        assert_eq!(host_of(&request(&["."])), None);
        assert_eq!(host_of(&request(&["a.example", "b.example"])), None);
        assert_eq!(host_of(&request(&[])), None);
        // In absolute form, the request names its host twice: both must agree.
        let absolute = |uri: &str, host: &str| {
            let request = hyper::Request::builder()
                .uri(uri)
                .header(hyper::header::HOST, host)
                .body(())
                .unwrap();
            host_of(&request)
        };
        assert_eq!(absolute("http://victim.example/", "attacker.example"), None);
        assert_eq!(
            absolute("http://Site.Example./x", "site.example:80").as_deref(),
            Some("site.example")
        );
    }

    /// A signed event sent to the domain names its site by its repository: the owner's host
    /// (lower-cased), the root for an index repository, else the repository's own name.
    #[test]
    fn a_forge_wide_event_names_its_site_by_its_repository() {
        let wildcard = Wildcard {
            domain: "example.page".into(),
            clone_url: "https://forge.example/<user>/<project>.git".into(),
            index_repos: vec!["<user>.example.page".into(), "pages".into()],
            branch: "pages".into(),
            webhook_secret: Some(WebhookSecret::new("s3cret")),
        };
        let named = |full_name: &str| {
            let event: PushEvent = serde_json::from_str(&format!(
                r#"{{"ref":"refs/heads/pages","repository":{{"clone_url":"x","full_name":"{full_name}"}}}}"#
            ))
            .unwrap();
            named_site(&wildcard, &event)
        };
        let site = |host: &str, user: &str, repository: &str, project: &str| {
            Some((
                host.to_owned(),
                user.to_owned(),
                repository.to_owned(),
                project.to_owned(),
            ))
        };
        assert_eq!(
            named("Alice/Blog"),
            site("alice.example.page", "Alice", "Blog", "Blog")
        );
        assert_eq!(
            named("alice/Pages"),
            site("alice.example.page", "alice", "Pages", ".index")
        );
        assert_eq!(
            named("Bob/bob.example.page"),
            site("bob.example.page", "Bob", "bob.example.page", ".index")
        );
        // The repository is named as spelled, as the forge's clone URL has it.
        assert_eq!(
            wildcard.sources("Alice", "Pages"),
            ["https://forge.example/Alice/Pages.git"]
        );
        for none in ["al_ice/blog", "a.b/blog", "/blog", "noslash", "a b/x"] {
            assert_eq!(named(none), None, "{none}");
        }
        assert!(!format!("{wildcard:?}").contains("s3cret"), "never shown");
    }

    #[test]
    fn wildcard_projects_are_plain_names() {
        let wildcard = Wildcard {
            domain: "example.page".into(),
            clone_url: "https://forge.example/<user>/<project>.git".into(),
            index_repos: vec!["<user>.example.page".into()],
            branch: "pages".into(),
            webhook_secret: None,
        };
        assert_eq!(
            wildcard.sources("alice", "blog"),
            ["https://forge.example/alice/blog.git"]
        );
        assert_eq!(
            wildcard.sources("alice", ".index"),
            ["https://forge.example/alice/alice.example.page.git"]
        );
        for odd in ["a%2Fb", "x?y", "x#y", "u@h", "%2e%2e", "a b", "", ".", ".."] {
            assert!(wildcard.sources("alice", odd).is_empty(), "{odd:?}");
        }
    }

    #[test]
    fn sources_are_prefixes_ending_at_a_slash() {
        let sources = Sources {
            prefixes: vec![
                "https://forge.example".into(),
                "https://git.example/team/".into(),
            ],
            private: false,
        };
        for url in [
            "https://forge.example/acme/site.git",
            "https://git.example/team/site.git",
            "https://git.example/team/a.b/..c.git",
            "https://git.example/team/site.git/",
            "https://git.example/team/~user/site",
        ] {
            assert!(sources.names(url), "{url}");
        }
        for url in [
            "https://forge.example.evil/acme/site.git",
            "https://forge.example@evil.example/acme/site.git",
            "https://forge.example:8443/acme/site.git",
            "http://forge.example/acme/site.git",
            "https://git.example/teammate/site.git",
            "https://git.example/team/../other/site.git",
            "https://git.example/team/%2E%2e/other/site.git",
            "https://git.example/team/.%2e/other/site.git",
            "https://git.example/team/./site.git",
            "https://git.example/team/..\\other/site.git",
            "https://git.example/team/..",
            "https://git.example/team/..%2Fother/site.git",
            "https://git.example/team/%2e%2e%2fother/site.git",
            "https://git.example/team/..;/other/site.git",
            "https://git.example/team/..%5cother/site.git",
            "https://git.example/team/site.git?x=/../../other",
            "https://git.example/team/site.git#main",
            "https://git.example/team/",
            "https://git.example/team//site.git",
            "https://git.example/team/site.git//",
            "https://git.example/",
        ] {
            assert!(!sources.names(url), "{url}");
        }
        assert!(!Sources::default().names("https://forge.example/acme/site.git"));
    }

    #[test]
    fn byte_ranges_are_read_as_http_says() {
        assert_eq!(byte_range("bytes=0-0", 10), Some(Some((0, 0))));
        assert_eq!(byte_range("bytes=2-", 10), Some(Some((2, 9))));
        assert_eq!(byte_range("bytes=5-100", 10), Some(Some((5, 9))));
        assert_eq!(byte_range("bytes=-3", 10), Some(Some((7, 9))));
        assert_eq!(byte_range("bytes=-30", 10), Some(Some((0, 9))));
        assert_eq!(byte_range("bytes=10-", 10), Some(None));
        assert_eq!(byte_range("bytes=-0", 10), Some(None));
        assert_eq!(byte_range("bytes=0-", 0), Some(None));
        assert_eq!(
            byte_range("bytes=0-18446744073709551615", 10),
            Some(Some((0, 9)))
        );
        for ignored in [
            "items=0-1",
            "bytes=5-2",
            "bytes=0-1,3-4",
            "bytes=x-",
            "bytes=1",
            "",
        ] {
            assert_eq!(byte_range(ignored, 10), None, "{ignored}");
        }
    }
}
