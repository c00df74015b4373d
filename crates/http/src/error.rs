//! The one place where a failure becomes what the client sees.

use hyper::{Response, StatusCode};

use crate::body::{Body, ReadError};
use crate::route::RouteError;

/// Why a request could not be answered as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path names no repository we serve.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The request body could not be read.
    #[error(transparent)]
    Body(#[from] ReadError),
    /// The protocol v2 request is malformed.
    #[error("bad request: {0}")]
    Request(#[from] gitcache_protocol::request::Error),
    /// The upstream could not be asked.
    #[error(transparent)]
    Upstream(#[from] gitcache_upstream::Error),
    /// Refreshing the mirror failed.
    #[error(transparent)]
    Mirror(std::sync::Arc<gitcache_mirror::mirror::Error>),
    /// The mirror could not be read.
    #[error("reading the mirror failed: {0}")]
    Repository(#[from] gitcache_pack::Error),
    /// Work the request handed to another thread ended abnormally (a bug, logged).
    #[error("internal error: {0}")]
    Internal(String),
    /// A refresh would leave less disk space free than configured, even after evicting
    /// mirrors.
    #[error("not enough free disk space for the mirror: {free} bytes free, {keep} kept free")]
    LowDisk {
        /// Bytes free.
        free: u64,
        /// Bytes to keep free (`--min-free-bytes`).
        keep: u64,
    },
}

impl Error {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        use gitcache_mirror::mirror::Error as MirrorError;
        use gitcache_upstream::Error as UpstreamError;
        let upstream = |e: &UpstreamError| match e {
            UpstreamError::Status { status, .. } if e.is_access_denied() => *status,
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Url { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        match self {
            Error::Route(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            Error::Body(e) => e.status(),
            Error::Request(_) => StatusCode::BAD_REQUEST,
            Error::Upstream(e) => upstream(e),
            Error::Mirror(e) => match &**e {
                MirrorError::Upstream(e) => upstream(e),
                MirrorError::LowDisk { .. } => StatusCode::INSUFFICIENT_STORAGE,
                MirrorError::Io(_) | MirrorError::Repository(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                // The upstream sent something broken (a cut or corrupt pack, a lying ref
                // list).
                _ => StatusCode::BAD_GATEWAY,
            },
            Error::Repository(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::LowDisk { .. } => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// Whether serving stale data could help (the upstream is unreachable or failing, not
    /// refusing).
    pub fn is_upstream_unavailable(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        )
    }

    /// What a client is told of this failure. What failed on the server's side (its
    /// paths, its disk, its bucket) is for its log, which the caller writes; of an
    /// upstream's error answer only the status is told (its body answered a refresh, which
    /// may have asked with another client's credential).
    fn client_message(&self) -> String {
        use gitcache_mirror::mirror::Error as MirrorError;
        use gitcache_upstream::Error as UpstreamError;
        const INTERNAL: &str = "gitcache: internal error (the server's log has the cause)";
        // The upstream's own words (an `ERR` line, a TLS error naming its certificate) stay
        // in the log with the rest.
        let upstream = |e: &UpstreamError| match e {
            UpstreamError::Status { status, .. } => {
                format!("gitcache: the upstream answered {status}")
            }
            UpstreamError::Url { .. } => INTERNAL.to_owned(),
            UpstreamError::Connect(_) | UpstreamError::Http(_) => {
                "gitcache: the upstream could not be reached".to_owned()
            }
            UpstreamError::Protocol(_) => {
                "gitcache: the upstream answered something unexpected".to_owned()
            }
            other => format!("gitcache: {other}"),
        };
        match self {
            Error::Upstream(e) => upstream(e),
            Error::Mirror(e) => match &**e {
                MirrorError::Upstream(e) => upstream(e),
                MirrorError::Response(_) => {
                    "gitcache: the upstream failed the refresh's fetch".to_owned()
                }
                MirrorError::ObjectFormat { .. }
                | MirrorError::Incomplete { .. }
                | MirrorError::InvalidRef { .. } => format!("gitcache: {e}"),
                MirrorError::Ingest(e) if e.is_upstream_fault() => {
                    "gitcache: the upstream sent a pack that cannot be used".to_owned()
                }
                MirrorError::Disconnected(_) => {
                    "gitcache: the upstream's pack is incomplete".to_owned()
                }
                _ => INTERNAL.to_owned(),
            },
            Error::Repository(_) | Error::Internal(_) => INTERNAL.to_owned(),
            _ => format!("gitcache: {self}"),
        }
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let message = match status {
            StatusCode::UNAUTHORIZED => "gitcache: the upstream needs a credential".to_owned(),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND if !matches!(self, Error::Route(_)) => {
                "gitcache: the upstream refused access to this repository".to_owned()
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                "gitcache: the cache is short of disk space for this repository".to_owned()
            }
            _ => self.client_message(),
        };
        let mut response = text(status, &message);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"gitcache\""),
            );
        }
        response
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut body = message.to_owned();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(err: Error) -> (StatusCode, String) {
        let response = err.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn what_failed_on_the_server_stays_in_its_log() {
        let (status, body) = body_of(Error::Internal("/srv/gitcache/mirrors/x: oops".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !body.contains("/srv") && body.contains("internal error"),
            "{body}"
        );
        let (status, body) = body_of(Error::LowDisk {
            free: 123_456_789,
            keep: 987_654_321,
        })
        .await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(!body.contains("123") && !body.contains("987"), "{body}");
        assert!(body.contains("disk space"), "{body}");
        // A local failure while storing a refresh's pack (its path, the disk full) is a
        // 502, told without its cause.
        let stored = gitcache_mirror::mirror::Error::Ingest(gitcache_mirror::ingest::Error::Io(
            std::io::Error::other("/srv/gitcache/mirrors/x.git: No space left on device"),
        ));
        let (status, body) = body_of(Error::Mirror(std::sync::Arc::new(stored))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(!body.contains("/srv") && !body.contains("space"), "{body}");
        // An upstream's error answer: its status, not its body.
        let answered = gitcache_upstream::Error::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "maintenance for org acme-internal".into(),
        };
        let (status, body) = body_of(Error::Upstream(answered)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            body.contains("503") && !body.contains("acme-internal"),
            "{body}"
        );
        // Its `ERR` line, or an answer it could not frame.
        for err in [
            gitcache_mirror::mirror::Error::Response(gitcache_protocol::response::Error::Remote {
                message: "access denied for org acme-internal".into(),
            }),
            gitcache_mirror::mirror::Error::Upstream(gitcache_upstream::Error::Protocol(
                "ERR acme-internal".into(),
            )),
        ] {
            let (status, body) = body_of(Error::Mirror(std::sync::Arc::new(err))).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert!(!body.contains("acme-internal"), "{body}");
        }
    }
}
