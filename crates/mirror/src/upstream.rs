//! A protocol v2 client for an upstream's smart HTTP endpoint: the capability advertisement,
//! `ls-refs`, and `fetch` whose response body is handed over as it arrives.
//!
//! Plain `http://` only for now (tests and local forges); `https://` needs the TLS layer that is
//! still to come, and is refused with a clear error.

use std::time::Duration;

use bytes::Bytes;
use gitcache_protocol::ls_refs::{self, RefLine};
use gitcache_protocol::request::{Capabilities, Command, Fetch, LsRefs, Request};
use gix_hash::Kind as HashKind;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

/// Why a conversation with the upstream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used.
    #[error("unusable upstream URL '{url}': {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The upstream could not be reached or the connection broke.
    #[error("upstream connection failed: {0}")]
    Connect(#[source] std::io::Error),
    /// HTTP failed.
    #[error("upstream HTTP failed: {0}")]
    Http(#[from] hyper::Error),
    /// The upstream answered with an error status.
    #[error("upstream answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The start of its body.
        message: String,
    },
    /// The upstream took too long.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The upstream's answer is not what the protocol allows.
    #[error("upstream answered something unexpected: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether the upstream refused the credential (401, 403) or hides the repository (404).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Error::Status { status, .. } if matches!(status.as_u16(), 401 | 403 | 404))
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(_) | Error::Http(_) | Error::Timeout(_) => true,
            Error::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// One upstream repository, reached at `<base>/<path>`.
#[derive(Debug, Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    /// The repository's path, e.g. `/acme/widgets.git`.
    path: String,
    authorization: Option<String>,
    timeout: Duration,
}

impl Upstream {
    /// The repository at `url` (e.g. `http://127.0.0.1:8080/acme/widgets.git`), sending
    /// `authorization` (an `Authorization` header value) if given.
    pub fn new(url: &str, authorization: Option<String>, timeout: Duration) -> Result<Self, Error> {
        let bad = |reason| Error::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(bad("https is not supported yet")),
            _ => return Err(bad("expected http://host[:port]/path")),
        };
        let (authority, path) = rest.split_once('/').ok_or(bad("no repository path"))?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_owned(), 80),
        };
        Ok(Upstream {
            host,
            port,
            path: format!("/{}", path.trim_end_matches('/')),
            authorization,
            timeout,
        })
    }

    async fn send(
        &self,
        method: Method,
        suffix: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(Error::Connect)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "upstream connection ended");
            }
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{suffix}", self.path))
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(
                hyper::header::USER_AGENT,
                concat!("gitcache/", env!("CARGO_PKG_VERSION")),
            )
            .header("Git-Protocol", "version=2");
        if let Some(auth) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        let has_body = body.is_some();
        if has_body {
            request = request
                .header(
                    hyper::header::CONTENT_TYPE,
                    "application/x-git-upload-pack-request",
                )
                .header(
                    hyper::header::ACCEPT,
                    "application/x-git-upload-pack-result",
                );
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned();
            return Err(Error::Status { status, message });
        }
        Ok(response)
    }

    async fn with_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }

    /// The upstream's object format, from its v2 capability advertisement.
    pub async fn object_format(&self) -> Result<HashKind, Error> {
        self.with_timeout(async {
            let response = self
                .send(Method::GET, "/info/refs?service=git-upload-pack", None)
                .await?;
            let body = response.into_body().collect().await?.to_bytes();
            let mut format = HashKind::Sha1;
            let mut v2 = false;
            for line in gitcache_protocol::pktline::lines(&body) {
                let line = line.map_err(|e| Error::Protocol(e.to_string()))?;
                let Some(data) = line.as_slice() else {
                    continue;
                };
                let text =
                    String::from_utf8_lossy(gitcache_protocol::pktline::chomp(data)).into_owned();
                v2 |= text == "version 2";
                if let Some(name) = text.strip_prefix("object-format=") {
                    format = name
                        .parse()
                        .map_err(|_| Error::Protocol(format!("object format {name}")))?;
                }
            }
            if !v2 {
                return Err(Error::Protocol(
                    "the upstream does not speak protocol v2".into(),
                ));
            }
            Ok(format)
        })
        .await
    }

    /// `ls-refs` with `args`.
    pub async fn ls_refs(&self, format: HashKind, args: LsRefs) -> Result<Vec<RefLine>, Error> {
        let body = encode(format, Command::LsRefs(args));
        self.with_timeout(async {
            let response = self
                .send(Method::POST, "/git-upload-pack", Some(body))
                .await?;
            let body = response.into_body().collect().await?.to_bytes();
            ls_refs::parse_response(&body, format).map_err(|e| Error::Protocol(e.to_string()))
        })
        .await
    }

    /// Send `fetch` and write the response body, as it arrives, into `out`. The whole exchange
    /// is bounded by the timeout.
    pub async fn fetch_into(
        &self,
        format: HashKind,
        fetch: Fetch,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let body = encode(format, Command::Fetch(fetch));
        self.with_timeout(async {
            let response = self
                .send(Method::POST, "/git-upload-pack", Some(body))
                .await?;
            let mut body = response.into_body();
            let mut written = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    out.write_all(&data).await.map_err(Error::Connect)?;
                    written += data.len() as u64;
                }
            }
            out.flush().await.map_err(Error::Connect)?;
            Ok(written)
        })
        .await
    }
}

fn encode(format: HashKind, command: Command) -> Vec<u8> {
    let request = Request {
        capabilities: Capabilities {
            agent: Some(concat!("gitcache/", env!("CARGO_PKG_VERSION")).into()),
            object_format: Some(format),
            ..Capabilities::default()
        },
        command,
    };
    let mut body = Vec::new();
    request.write_to(&mut body).expect("writing to memory");
    body
}
