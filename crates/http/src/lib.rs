//! HTTP services of gitcache: the routes `git` and operators reach.
//!
//! Built so far: [`route`], which tells which repository and git service a request is for
//! (default upstream or an allowed host in the path) and refuses bad names with a 400 before
//! anything touches the disk; and the health endpoints. Git traffic is refused with a clear
//! message: the proxy itself (serving from mirrors, the access gate, passthrough) is not built
//! yet, and the README's status table says so.
//!
//! # Example
//!
//! ```
//! use gitcache_http::respond;
//! let resp = respond(&hyper::Method::GET, "/healthz");
//! assert_eq!(resp.status(), 200);
//! let resp = respond(&hyper::Method::GET, "/acme/widgets.git/info/refs");
//! assert_eq!(resp.status(), 501);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod route;

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Answer a request by method and path alone.
pub fn respond(method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => (StatusCode::OK, "ready\n"),
        _ if path.contains("/info/refs")
            || path.ends_with("/git-upload-pack")
            || path.ends_with("/git-receive-pack") =>
        {
            (
                StatusCode::NOT_IMPLEMENTED,
                "gitcache: serving git is not implemented yet in this build\n",
            )
        }
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serve connections from `listener` until `shutdown` completes; connections in progress are
/// left to finish on their own tasks.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(respond(req.method(), req.uri().path()))
                });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}
