//! A forge on loopback: C git's `git http-backend` behind an HTTP server in the test process.
//!
//! Each request runs `git http-backend` as a CGI program over a project root in a temporary
//! folder. Repositories are public or private; a private one wants a token from its allow-list,
//! sent as `Authorization: Basic` (any user, the token as password, as actions/checkout sends
//! `x-access-token:<token>`) or `Authorization: Bearer <token>`. Missing credentials get 401
//! with `WWW-Authenticate`, a wrong token 404, as GitHub answers.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

type Body = BoxBody<Bytes, io::Error>;
/// A response body copied as it is sent.
type SharedBytes = Arc<Mutex<Vec<u8>>>;

/// Who may read a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials.
    Public,
    /// Only requests carrying one of these tokens.
    Private(HashSet<String>),
}

impl Access {
    /// A private repository readable with `tokens`.
    pub fn private<I: IntoIterator<Item = S>, S: Into<String>>(tokens: I) -> Self {
        Access::Private(tokens.into_iter().map(Into::into).collect())
    }
}

/// What a request asked for, as the upstream counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `GET …/info/refs` (any service).
    InfoRefs,
    /// A `git-upload-pack` POST whose command is `ls-refs`.
    LsRefs,
    /// A `git-upload-pack` POST that fetches (protocol v2 `fetch`, or a v0/v1 negotiation).
    Fetch,
    /// Anything else: pushes, dumb HTTP, other v2 commands.
    Other,
}

/// Requests seen, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `info/refs` requests.
    pub info_refs: usize,
    /// `ls-refs` requests.
    pub ls_refs: usize,
    /// `fetch` requests.
    pub fetch: usize,
    /// Other requests.
    pub other: usize,
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Its kind.
    pub kind: RequestKind,
    /// `GET`, `POST`, …
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Request headers, lower-case names, `authorization` included.
    pub headers: Vec<(String, String)>,
    /// The request body, gzip already undone; empty unless recording is on.
    pub body: Vec<u8>,
    /// The status the upstream answered.
    pub status: u16,
    /// The response body as sent (after any injected cut); empty unless recording is on.
    pub response: Vec<u8>,
    /// Which TCP connection it came on (1 for the first accepted, and so on).
    pub connection: usize,
}

#[derive(Debug)]
struct LogEntry {
    record: RecordedRequest,
    response: Option<SharedBytes>,
}

/// A misbehaviour to inject into upcoming requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short text body instead of serving.
    Status(u16),
    /// Answer with this status and a text body that never ends, a byte each `every`.
    TricklingStatus {
        /// The status.
        status: u16,
        /// The wait between bytes.
        every: Duration,
    },
    /// Wait this long before serving.
    Delay(Duration),
    /// Serve, but break the connection after this many response-body bytes.
    CutAfter(u64),
    /// Answer 200 with bytes that are no git protocol at all.
    Garbage,
    /// Answer 200 with a body that never ends (pkt-lines of filler, as fast as they are
    /// read), until the client gives up.
    Endless,
    /// Answer 200 with an `ls-refs` listing that never ends (well-formed ref lines, as fast
    /// as they are read), until the client gives up.
    EndlessRefs,
    /// Answer a fetch with a pack that never ends: a well-formed start (a `packfile`
    /// section, a pack header claiming a million objects) and then empty blobs on band 1,
    /// as fast as they are read, until the client gives up.
    EndlessPack,
    /// Serve, sending the response body `chunk` bytes at a time with `every` between pieces:
    /// a slow but steady line.
    Trickle {
        /// Bytes per piece.
        chunk: usize,
        /// The wait between pieces.
        every: Duration,
    },
    /// Serve, the response's head at once and its body after this long (an upstream working
    /// out a pack before it sends any).
    PauseBody(Duration),
    /// Serve, sending this many bytes of the response body, then nothing more until
    /// [`Upstream::release_held`] is called (a download stalled at a point of the test's
    /// choosing).
    HoldAfter(u64),
    /// Serve, with this pkt-line payload added before the final flush of the answer (an
    /// `ls-refs` listing a ref that does not exist, or one no git would write).
    ExtraLine(Vec<u8>),
    /// Serve, the answer preceded by git's v0 preamble (`# service=git-upload-pack` and a
    /// flush), as some forges' front ends send it before a v2 advertisement too.
    ServicePreamble,
    /// Answer 200 with these bytes as an upload-pack result (an answer recorded earlier,
    /// sent again for another request).
    Replay(Vec<u8>),
    /// Answer 200 with these bytes and this `Content-Type` (a dumb server's `info/refs`, a
    /// v0 advertisement).
    ReplayAs {
        /// The `Content-Type`.
        content_type: &'static str,
        /// The body.
        body: Vec<u8>,
    },
    /// Close the connection without answering (as a server does whose keep-alive ran out
    /// just as the request arrived).
    Hangup,
    /// Serve, but in place of the answer's final flush send a progress line (side band 2)
    /// this often, without end (an upstream that goes on after its pack); with no wait,
    /// frames of 4,096 lines as fast as they go.
    TrailingProgress(Duration),
}

/// Marks a response that is not to be sent: the connection is closed instead.
#[derive(Debug, Clone, Copy)]
struct HangUp;

#[derive(Debug)]
struct FaultRule {
    fault: Fault,
    remaining: usize,
    kind: Option<RequestKind>,
}

#[derive(Debug, Default)]
struct State {
    repos: HashMap<String, Access>,
    faults: Vec<FaultRule>,
    log: Vec<LogEntry>,
    stderr: Vec<u8>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    git: PathBuf,
    recording: AtomicBool,
    /// TCP connections accepted so far.
    connections: std::sync::atomic::AtomicUsize,
    /// Closes every open connection when notified.
    close: tokio::sync::Notify,
    /// Set, and its waiters woken, once the bodies held by [`Fault::HoldAfter`] may go on.
    released: (AtomicBool, tokio::sync::Notify),
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The running upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    /// The certificate served, for `start_tls` upstreams (DER).
    certificate: Option<Vec<u8>>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _root: tempfile::TempDir,
}

impl Upstream {
    /// Start serving on `127.0.0.1:0` over an empty project root.
    pub fn start() -> io::Result<Upstream> {
        Upstream::start_with(None)
    }

    /// Like [`start`](Self::start), but over TLS with a self-signed certificate for
    /// `127.0.0.1` and `localhost`; clients trust [`certificate_der`](Self::certificate_der).
    pub fn start_tls() -> io::Result<Upstream> {
        let generated = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(io::Error::other)?;
        let cert = generated.cert.der().to_vec();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone().into()], key)
            .map_err(io::Error::other)?;
        Upstream::start_with(Some((Arc::new(config), cert)))
    }

    fn start_with(tls: Option<(Arc<rustls::ServerConfig>, Vec<u8>)>) -> io::Result<Upstream> {
        let root = tempfile::Builder::new()
            .prefix("gitcache-upstream-")
            .tempdir()?;
        let shared = Arc::new(Shared {
            root: root.path().to_owned(),
            git: PathBuf::from(
                std::env::var_os("GITCACHE_TEST_GIT").unwrap_or_else(|| "git".into()),
            ),
            recording: AtomicBool::new(false),
            connections: std::sync::atomic::AtomicUsize::new(0),
            close: tokio::sync::Notify::new(),
            released: (AtomicBool::new(false), tokio::sync::Notify::new()),
            state: Mutex::new(State::default()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upstream")
            .enable_all()
            .build()?;
        let served = Arc::clone(&shared);
        let certificate = tls.as_ref().map(|(_, cert)| cert.clone());
        let acceptor = tls.map(|(config, _)| tokio_rustls::TlsAcceptor::from(config));
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(err) => return eprintln!("upstream: cannot listen: {err}"),
                    };
                    tokio::select! {
                        () = accept_loop(listener, served, acceptor) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Upstream {
            addr,
            certificate,
            shared,
            stop: Some(stop),
            thread: Some(thread),
            _root: root,
        })
    }

    /// `http://127.0.0.1:<port>` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.certificate.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The TLS certificate served (DER), for upstreams started with [`start_tls`](Self::start_tls).
    pub fn certificate_der(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of a repository, e.g. `repo_url("acme/widgets")` ends in `/acme/widgets.git`.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{}.git", self.url(), name.trim_end_matches(".git"))
    }

    /// The project root that holds the bare repositories.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Where the bare repository `owner/name` lives (`<root>/owner/name.git`).
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.shared
            .root
            .join(format!("{}.git", name.trim_end_matches(".git")))
    }

    /// Create an empty bare repository `owner/name` of `format` (`"sha1"` or `"sha256"`),
    /// configured as forges configure them, and register it with `access`.
    pub fn create_repo(&self, name: &str, access: Access, format: &str) -> io::Result<PathBuf> {
        let path = self.repo_path(name);
        crate::git::run_git(
            &self.shared.git,
            None,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                &format!("--object-format={format}"),
            ],
            Some(&path),
        )?;
        self.adopt_repo(name, access)?;
        Ok(path)
    }

    /// Register an existing bare repository at [`repo_path`](Self::repo_path) with `access`,
    /// and configure it as forges configure theirs for v2 fetches.
    pub fn adopt_repo(&self, name: &str, access: Access) -> io::Result<()> {
        let path = self.repo_path(name);
        for (key, value) in [
            ("uploadpack.allowFilter", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("uploadpack.allowReachableSHA1InWant", "true"),
            ("http.receivepack", "true"),
        ] {
            crate::git::run_git(&self.shared.git, Some(&path), &["config", key, value], None)?;
        }
        self.set_access(name, access);
        Ok(())
    }

    /// Put a repository generated from `spec` in the place of `name`, readable as `access`:
    /// the name now means another repository (the one it meant renamed away, another made
    /// under its name).
    pub fn replace_repo(
        &self,
        name: &str,
        spec: &crate::repo::RepoSpec,
        access: Access,
    ) -> io::Result<()> {
        let path = self.repo_path(name);
        let parent = path.parent().unwrap_or(&path);
        let made = tempfile::tempdir_in(parent)?;
        crate::repo::generate(&made.path().join("new.git"), spec)?;
        std::fs::remove_dir_all(&path)?;
        std::fs::rename(made.path().join("new.git"), &path)?;
        self.adopt_repo(name, access)
    }

    /// Change who may read `name`.
    pub fn set_access(&self, name: &str, access: Access) {
        self.shared.state().repos.insert(repo_key(name), access);
    }

    /// Allow `token` to read the private repository `name` (making it private if it was not).
    pub fn allow_token(&self, name: &str, token: &str) {
        let mut state = self.shared.state();
        let access = state
            .repos
            .entry(repo_key(name))
            .or_insert(Access::Private(HashSet::new()));
        match access {
            Access::Private(tokens) => {
                tokens.insert(token.to_owned());
            }
            Access::Public => *access = Access::private([token]),
        }
    }

    /// Withdraw `token` from `name`'s allow-list, effective for the next request.
    pub fn revoke_token(&self, name: &str, token: &str) {
        if let Some(Access::Private(tokens)) = self.shared.state().repos.get_mut(&repo_key(name)) {
            tokens.remove(token);
        }
    }

    /// Requests seen so far, by kind.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for entry in &self.shared.state().log {
            match entry.record.kind {
                RequestKind::InfoRefs => counts.info_refs += 1,
                RequestKind::LsRefs => counts.ls_refs += 1,
                RequestKind::Fetch => counts.fetch += 1,
                RequestKind::Other => counts.other += 1,
            }
        }
        counts
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let state = self.shared.state();
        state
            .log
            .iter()
            .map(|entry| {
                let mut record = entry.record.clone();
                if let Some(response) = &entry.response {
                    record.response = response.lock().unwrap_or_else(|p| p.into_inner()).clone();
                }
                record
            })
            .collect()
    }

    /// TCP connections accepted so far (requests on a kept-alive connection share one).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The `Authorization` values seen on each connection (by [`RecordedRequest::connection`];
    /// `None` for requests without one).
    pub fn credentials_by_connection(
        &self,
    ) -> std::collections::BTreeMap<usize, std::collections::BTreeSet<Option<String>>> {
        let mut seen = std::collections::BTreeMap::<usize, std::collections::BTreeSet<_>>::new();
        for request in self.requests() {
            let credential = request
                .headers
                .iter()
                .find(|(name, _)| name == "authorization")
                .map(|(_, value)| value.clone());
            seen.entry(request.connection)
                .or_default()
                .insert(credential);
        }
        seen
    }

    /// Close every open connection, as a server whose keep-alive ran out does.
    pub fn close_connections(&self) {
        self.shared.close.notify_waiters();
    }

    /// Forget the requests seen so far.
    pub fn reset_counts(&self) {
        self.shared.state().log.clear();
    }

    /// Keep request bodies in [`requests`](Self::requests) from now on (off by default).
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::SeqCst);
    }

    /// Apply `fault` to the next `times` requests (of `kind` only, when given).
    pub fn inject(&self, fault: Fault, times: usize, kind: Option<RequestKind>) {
        self.shared.state().faults.push(FaultRule {
            fault,
            remaining: times,
            kind,
        });
    }

    /// Requests still to be hit by injected faults (a fault given `times` counts `times`).
    pub fn pending_faults(&self) -> usize {
        self.shared.state().faults.iter().map(|r| r.remaining).sum()
    }

    /// Drop every pending fault.
    pub fn clear_faults(&self) {
        self.shared.state().faults.clear();
    }

    /// Let the bodies held by [`Fault::HoldAfter`] go on, and those held from now on too.
    pub fn release_held(&self) {
        let (released, woken) = &self.shared.released;
        released.store(true, Ordering::SeqCst);
        woken.notify_waiters();
    }

    /// What `git http-backend` wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.shared.state().stderr).into_owned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `owner/name` without a `.git` suffix, lower-cased as forges match names.
/// A repository's name as access rules know it: case kept, as http-backend (and cgit, Gerrit,
/// a plain file server) tell `acme/Widgets` from `acme/widgets`.
fn repo_key(name: &str) -> String {
    name.trim_matches('/').trim_end_matches(".git").to_owned()
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // As forges' front ends do (nginx's `tcp_nodelay` is on by default): without it, an
        // answer's head and body go in two segments, the second held back until the client
        // acknowledges the first, which on a kept-alive connection it delays by 40 ms.
        let _ = stream.set_nodelay(true);
        let connection = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let (shared, tls) = (Arc::clone(&shared), tls.clone());
        tokio::spawn(async move {
            let closed = Arc::clone(&shared);
            let closed = closed.close.notified();
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move {
                    let response = handle(shared, req, connection).await;
                    // A service error makes hyper close the connection, nothing answered.
                    match response.extensions().get::<HangUp>() {
                        Some(_) => Err(io::Error::other("hung up")),
                        None => Ok(response),
                    }
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let serve = async move {
                let _ = match tls {
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                };
            };
            // Dropping the connection closes it.
            tokio::select! {
                () = serve => {}
                () = closed => {}
            }
        });
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "text/plain".parse().expect("static header"));
    resp
}

/// The repository a URL path names: the two segments before `/info/refs`, `/git-upload-pack`,
/// `/git-receive-pack`, `/HEAD` or `/objects/…`.
fn split_repo_path(path: &str) -> Option<(String, String)> {
    let trimmed = path.trim_start_matches('/');
    let mut parts = trimmed.splitn(3, '/');
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    let rest = parts.next().unwrap_or("");
    let name = name.trim_end_matches(".git");
    Some((format!("{owner}/{name}"), rest.to_owned()))
}

fn credential(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(rest.trim().to_owned()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (_user, password) = decoded.split_once(':')?;
            Some(password.to_owned())
        }
        _ => None,
    }
}

fn take_fault(shared: &Shared, kind: RequestKind) -> Vec<Fault> {
    let mut state = shared.state();
    let mut hit = Vec::new();
    for rule in &mut state.faults {
        if rule.remaining > 0 && rule.kind.is_none_or(|k| k == kind) {
            rule.remaining -= 1;
            hit.push(rule.fault.clone());
        }
    }
    state.faults.retain(|r| r.remaining > 0);
    hit
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, connection: usize) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip") || v.as_bytes() == b"x-gzip");
    let token = credential(&req);

    // Read the start of the body, enough to tell ls-refs from fetch.
    let (parts, mut body) = req.into_parts();
    let mut head = Vec::new();
    let mut body_done = false;
    let is_upload_pack = path.ends_with("/git-upload-pack") && method == "POST";
    if is_upload_pack {
        while sniff_command(&head, gzip).is_none() {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        head.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "broken request body"),
                None => {
                    body_done = true;
                    break;
                }
            }
        }
    }
    let kind = if path.ends_with("/info/refs") {
        RequestKind::InfoRefs
    } else if is_upload_pack {
        match sniff_command(&head, gzip).as_deref() {
            Some("ls-refs") => RequestKind::LsRefs,
            Some("fetch") | Some("v0") => RequestKind::Fetch,
            _ => RequestKind::Other,
        }
    } else {
        RequestKind::Other
    };

    let mut record = RecordedRequest {
        kind,
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        headers,
        body: Vec::new(),
        status: 0,
        response: Vec::new(),
        connection,
    };
    let recording = shared.recording.load(Ordering::SeqCst);
    let finish = |shared: &Shared, mut record: RecordedRequest, resp: Response<Body>| {
        record.status = resp.status().as_u16();
        let (resp, response) = if recording {
            tee_body(resp)
        } else {
            (resp, None)
        };
        shared.state().log.push(LogEntry { record, response });
        resp
    };

    let mut cut_after = None;
    let mut trickle = None;
    let mut pause = None;
    let mut hold_after = None;
    let mut extra_line = None;
    let mut preamble = false;
    let mut trailing = None;
    for fault in take_fault(&shared, kind) {
        match fault {
            Fault::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return finish(&shared, record, text(status, "injected failure"));
            }
            Fault::TricklingStatus { status, every } => {
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(1);
                tokio::spawn(async move {
                    while tx
                        .send(Ok(Frame::data(Bytes::from_static(b"."))))
                        .await
                        .is_ok()
                    {
                        tokio::time::sleep(every).await;
                    }
                });
                let resp = Response::builder()
                    .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
                    .header("content-type", "text/plain")
                    .body(BodyExt::boxed(ChannelBody(rx)))
                    .expect("static response");
                return finish(&shared, record, resp);
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::CutAfter(n) => cut_after = Some(n),
            Fault::Trickle { chunk, every } => trickle = Some((chunk.max(1), every)),
            Fault::PauseBody(wait) => pause = Some(wait),
            Fault::HoldAfter(bytes) => hold_after = Some(bytes),
            Fault::ExtraLine(line) => extra_line = Some(line),
            Fault::ServicePreamble => preamble = true,
            Fault::TrailingProgress(every) => trailing = Some(every),
            Fault::Endless | Fault::EndlessRefs => {
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(2);
                let refs = matches!(fault, Fault::EndlessRefs);
                tokio::spawn(async move {
                    let filler = Bytes::from(format!("{:04x}{}\n", 1005, "x".repeat(1000)));
                    let mut n = 0u64;
                    loop {
                        let frame = if refs {
                            // A thousand ref lines at a time.
                            let mut lines = String::new();
                            for _ in 0..1000 {
                                let line = format!("{:040x} refs/heads/b{n}\n", n);
                                lines.push_str(&format!("{:04x}{line}", line.len() + 4));
                                n += 1;
                            }
                            Bytes::from(lines)
                        } else {
                            filler.clone()
                        };
                        if tx.send(Ok(Frame::data(frame))).await.is_err() {
                            break;
                        }
                    }
                });
                let resp = Response::builder()
                    .status(StatusCode::OK)
                    .header(
                        "content-type",
                        "application/x-git-upload-pack-advertisement",
                    )
                    .body(BodyExt::boxed(ChannelBody(rx)))
                    .expect("static response");
                return finish(&shared, record, resp);
            }
            Fault::EndlessPack => {
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(2);
                tokio::spawn(async move {
                    let mut start = b"000dpackfile\n".to_vec();
                    let mut header = b"\x01PACK\0\0\0\x02".to_vec();
                    header.extend_from_slice(&1_000_000u32.to_be_bytes());
                    start.extend_from_slice(format!("{:04x}", header.len() + 4).as_bytes());
                    start.extend_from_slice(&header);
                    // An empty blob: its entry header, then zlib's stream of nothing.
                    let blob = b"\x30\x78\x9c\x03\x00\x00\x00\x00\x01";
                    let mut band = vec![1u8];
                    for _ in 0..100 {
                        band.extend_from_slice(blob);
                    }
                    let mut filler = format!("{:04x}", band.len() + 4).into_bytes();
                    filler.extend_from_slice(&band);
                    let filler = Bytes::from(filler);
                    if tx.send(Ok(Frame::data(Bytes::from(start)))).await.is_ok() {
                        while tx.send(Ok(Frame::data(filler.clone()))).await.is_ok() {}
                    }
                });
                let resp = Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/x-git-upload-pack-result")
                    .body(BodyExt::boxed(ChannelBody(rx)))
                    .expect("static response");
                return finish(&shared, record, resp);
            }
            Fault::Replay(body) => {
                let content_type = "application/x-git-upload-pack-result";
                return finish(&shared, record, replayed(content_type, body));
            }
            Fault::ReplayAs { content_type, body } => {
                return finish(&shared, record, replayed(content_type, body));
            }
            Fault::Hangup => {
                let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, "hung up");
                resp.extensions_mut().insert(HangUp);
                return finish(&shared, record, resp);
            }
            Fault::Garbage => {
                let mut resp = text(StatusCode::OK, "\u{1}\u{2}this is not git\u{0}ffff");
                resp.headers_mut().insert(
                    "content-type",
                    "application/x-git-upload-pack-result"
                        .parse()
                        .expect("static header"),
                );
                return finish(&shared, record, resp);
            }
        }
    }

    let Some((repo, rest)) = split_repo_path(&path) else {
        return finish(&shared, record, text(StatusCode::NOT_FOUND, "Not Found"));
    };
    let access = shared.state().repos.get(&repo_key(&repo)).cloned();
    match access {
        None => {
            return finish(
                &shared,
                record,
                text(StatusCode::NOT_FOUND, "Repository not found."),
            );
        }
        Some(Access::Public) => {}
        Some(Access::Private(tokens)) => match token {
            None => {
                let mut resp = text(StatusCode::UNAUTHORIZED, "Authentication required");
                resp.headers_mut().insert(
                    "www-authenticate",
                    "Basic realm=\"gitcache-testkit\""
                        .parse()
                        .expect("static header"),
                );
                return finish(&shared, record, resp);
            }
            Some(t) if !tokens.contains(&t) => {
                return finish(
                    &shared,
                    record,
                    text(StatusCode::NOT_FOUND, "Repository not found."),
                );
            }
            Some(_) => {}
        },
    }

    let path_info = format!("/{repo}.git/{rest}");
    let resp = match run_cgi(
        &shared,
        &parts,
        &path_info,
        query.as_deref(),
        head,
        body,
        body_done,
        recording,
        Shaping {
            cut_after,
            trickle,
            pause,
            hold_after,
        },
    )
    .await
    {
        Ok((resp, recorded)) => {
            if recording {
                record.body = if gzip { gunzip(&recorded) } else { recorded };
            }
            let resp = match extra_line {
                Some(line) => with_extra_line(resp, &line).await,
                None => resp,
            };
            let resp = match trailing {
                Some(every) => with_trailing_progress(resp, every).await,
                None => resp,
            };
            match preamble {
                true => with_preamble(resp).await,
                false => resp,
            }
        }
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("http-backend failed: {err}"),
        ),
    };
    finish(&shared, record, resp)
}

/// A 200 answer of `body` with this `Content-Type`.
fn replayed(content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

/// `resp` preceded by git's v0 preamble for upload-pack.
async fn with_preamble(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let mut bytes = b"001e# service=git-upload-pack\n0000".to_vec();
    bytes.extend_from_slice(
        &body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default(),
    );
    Response::from_parts(
        parts,
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// The body of `resp`, whole, and where its final flush starts (its length without one).
async fn before_final_flush(
    resp: Response<Body>,
) -> (hyper::http::response::Parts, Vec<u8>, usize) {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let at = bytes.len() - if bytes.ends_with(b"0000") { 4 } else { 0 };
    (parts, bytes, at)
}

/// `resp` with a pkt-line of `payload` inserted before its final flush.
async fn with_extra_line(resp: Response<Body>, payload: &[u8]) -> Response<Body> {
    let (parts, mut bytes, at) = before_final_flush(resp).await;
    let mut line = format!("{:04x}", payload.len() + 4).into_bytes();
    line.extend_from_slice(payload);
    bytes.splice(at..at, line);
    Response::from_parts(
        parts,
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// `resp` without its final flush, progress lines following it every `every` until the
/// client hangs up.
async fn with_trailing_progress(resp: Response<Body>, every: Duration) -> Response<Body> {
    let (parts, mut bytes, at) = before_final_flush(resp).await;
    bytes.truncate(at);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(2);
    tokio::spawn(async move {
        // Without a wait, as fast as it goes: many lines to a frame.
        let lines = if every.is_zero() { 4096 } else { 1 };
        let line = Bytes::from(b"0011\x02still going\n".repeat(lines));
        if tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            if tx.send(Ok(Frame::data(line.clone()))).await.is_err() {
                return;
            }
        }
    });
    Response::from_parts(parts, BodyExt::boxed(ChannelBody(rx)))
}

/// How a served response body is bent on its way out.
#[derive(Debug, Clone, Copy, Default)]
struct Shaping {
    /// Break the connection after this many bytes.
    cut_after: Option<u64>,
    /// Send pieces of this many bytes with this wait between them.
    trickle: Option<(usize, Duration)>,
    /// Wait this long before the body's first bytes.
    pause: Option<Duration>,
    /// Send this many bytes, then wait for [`Upstream::release_held`].
    hold_after: Option<u64>,
}

/// Copy a response body into a shared buffer as it is sent.
fn tee_body(resp: Response<Body>) -> (Response<Body>, Option<SharedBytes>) {
    let copy = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&copy);
    let (parts, body) = resp.into_parts();
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(data);
            }
            frame
        })
        .boxed();
    (Response::from_parts(parts, body), Some(copy))
}

/// The v2 command of a request body's first pkt-line, `"v0"` for a v0/v1 negotiation, or
/// `None` if more bytes are needed.
fn sniff_command(head: &[u8], gzip: bool) -> Option<String> {
    let plain;
    let data = if gzip {
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let _ = decoder.write_all(head);
        let _ = decoder.flush();
        plain = decoder.get_ref().clone();
        &plain[..]
    } else {
        head
    };
    let len = usize::from_str_radix(std::str::from_utf8(data.get(..4)?).ok()?, 16).ok()?;
    if len < 4 {
        return Some(String::new());
    }
    let line = data.get(4..len)?;
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    Some(match line.strip_prefix("command=") {
        Some(command) => command.to_owned(),
        None if line.starts_with("want ") => "v0".to_owned(),
        None => String::new(),
    })
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let _ = decoder.write_all(data);
    let _ = decoder.try_finish();
    decoder.get_ref().clone()
}

#[allow(clippy::too_many_arguments)] // Reason: one call site; a struct would only rename the list.
async fn run_cgi(
    shared: &Arc<Shared>,
    parts: &hyper::http::request::Parts,
    path_info: &str,
    query: Option<&str>,
    head: Vec<u8>,
    mut body: Incoming,
    body_done: bool,
    recording: bool,
    shaping: Shaping,
) -> io::Result<(Response<Body>, Vec<u8>)> {
    let Shaping {
        cut_after,
        trickle,
        mut pause,
        mut hold_after,
    } = shaping;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut cmd = tokio::process::Command::new(&shared.git);
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &shared.root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query.unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", "testkit")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(v) = header("content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header("content-length") {
        cmd.env("CONTENT_LENGTH", v);
    }
    if let Some(v) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");

    // Feed the body while the response is read; record it if asked. Once the program stops
    // reading, the rest of the body is only drained.
    let feeder = tokio::spawn(async move {
        let mut recorded = Vec::new();
        let mut stdin = Some(stdin);
        let mut chunk = Some(Bytes::from(head));
        loop {
            let Some(data) = chunk.take() else { break };
            if recording {
                recorded.extend_from_slice(&data);
            }
            if let Some(pipe) = stdin.as_mut()
                && pipe.write_all(&data).await.is_err()
            {
                stdin = None;
            }
            if body_done {
                break;
            }
            chunk = match body.frame().await {
                Some(Ok(frame)) => Some(frame.into_data().unwrap_or_default()),
                _ => None,
            };
        }
        drop(stdin);
        recorded
    });
    let errors = Arc::clone(shared);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        if !buf.is_empty() {
            errors.state().stderr.extend_from_slice(&buf);
        }
    });

    // CGI headers end with an empty line.
    let mut head_buf = Vec::new();
    let header_end = loop {
        if let Some(end) = find_header_end(&head_buf) {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let n = stdout.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "http-backend wrote no headers",
            ));
        }
        head_buf.extend_from_slice(&chunk[..n]);
    };
    let (header_text, sep_len) = header_end;
    let rest = head_buf.split_off(header_text + sep_len);
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&head_buf[..header_text]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            builder = builder.status(code);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }

    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(8);
    let shared_released = Arc::clone(shared);
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut pending = Bytes::from(rest);
        loop {
            if !pending.is_empty() {
                if let Some(wait) = pause.take() {
                    tokio::time::sleep(wait).await;
                }
                let mut data = pending;
                if let Some(limit) = hold_after.filter(|&l| sent + data.len() as u64 > l) {
                    let head = data.split_to(usize::try_from(limit - sent).unwrap_or(usize::MAX));
                    sent += head.len() as u64;
                    if !head.is_empty() && tx.send(Ok(Frame::data(head))).await.is_err() {
                        return;
                    }
                    let (released, woken) = &shared_released.released;
                    loop {
                        let notified = woken.notified();
                        if released.load(Ordering::SeqCst) {
                            break;
                        }
                        notified.await;
                    }
                    hold_after = None;
                }
                if let Some(limit) = cut_after {
                    let room = limit.saturating_sub(sent) as usize;
                    if data.len() >= room {
                        data.truncate(room);
                        if !data.is_empty() {
                            let _ = tx.send(Ok(Frame::data(data))).await;
                        }
                        let _ = tx.send(Err(io::Error::other("injected cut"))).await;
                        return;
                    }
                }
                sent += data.len() as u64;
                match trickle {
                    None => {
                        if tx.send(Ok(Frame::data(data))).await.is_err() {
                            return;
                        }
                    }
                    Some((chunk, every)) => {
                        let mut rest = data;
                        while !rest.is_empty() {
                            let piece = rest.split_to(chunk.min(rest.len()));
                            if tx.send(Ok(Frame::data(piece))).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(every).await;
                        }
                    }
                }
            }
            let mut chunk = vec![0u8; 65536];
            match stdout.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    pending = Bytes::from(chunk);
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        }
        let _ = child.wait().await;
    });
    let resp = builder
        .body(BodyExt::boxed(ChannelBody(rx)))
        .map_err(io::Error::other)?;
    // Waiting for the whole body is only needed to record it.
    let recorded = if recording {
        feeder.await.unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok((resp, recorded))
}

fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, 4));
    }
    buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2))
}

/// A response body fed from a channel: the producer task decides when it ends, or breaks it.
#[derive(Debug)]
pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Result<Frame<Bytes>, io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx)
    }
}
