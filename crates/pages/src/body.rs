//! The body of a pages answer: bytes in memory, or part of a stored file read in pieces as the
//! connection takes them (so a large file costs a piece of memory, not its size).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt as _;
use gitcache_storage::store::ByteStream;
use hyper::body::{Frame, SizeHint};

/// An answer's body, of a length known before it is sent (its `Content-Length`).
pub struct Body(Inner);

enum Inner {
    Full(Option<Bytes>),
    Pieces {
        pieces: ByteStream,
        left: u64,
        /// The file's path in its site, for the log.
        path: String,
    },
}

impl Body {
    /// `bytes`, from memory.
    pub fn full(bytes: Bytes) -> Self {
        Body(Inner::Full(Some(bytes).filter(|b| !b.is_empty())))
    }

    /// `len` bytes from `pieces` (the file `path` of a site). Should the pieces end short of
    /// `len`, or fail, the body fails there, logged (the connection is closed: the client sees
    /// an answer cut short, never another file's bytes). Bytes past `len` are not sent.
    pub fn pieces(pieces: ByteStream, len: u64, path: &str) -> Self {
        Body(Inner::Pieces {
            pieces,
            left: len,
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Full(bytes) => f
                .debug_tuple("Full")
                .field(&bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Pieces { left, path, .. } => f
                .debug_struct("Pieces")
                .field("left", left)
                .field("path", path)
                .finish(),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Pieces { pieces, left, path } => loop {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let Poll::Ready(next) = pieces.poll_next_unpin(cx) else {
                    return Poll::Pending;
                };
                match next {
                    Some(Ok(piece)) if piece.is_empty() => continue,
                    Some(Ok(mut piece)) => {
                        if piece.len() as u64 > *left {
                            piece.truncate(*left as usize);
                        }
                        *left -= piece.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(piece))));
                    }
                    Some(Err(err)) => {
                        tracing::warn!(%err, path, left, "reading a file being sent failed");
                        *left = 0;
                        return Poll::Ready(Some(Err(Box::new(err))));
                    }
                    None => {
                        let short = std::mem::take(left);
                        tracing::warn!(path, short, "a file being sent ended short of its length");
                        return Poll::Ready(Some(Err(format!(
                            "the stored file ended {short} bytes short"
                        )
                        .into())));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Pieces { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(match &self.0 {
            Inner::Full(bytes) => bytes.as_ref().map_or(0, |b| b.len() as u64),
            Inner::Pieces { left, .. } => *left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Body;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    fn pieces(parts: &[&'static [u8]]) -> gitcache_storage::store::ByteStream {
        let parts: Vec<_> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(parts))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn pieces_make_exactly_the_length_or_fail() {
        block_on(async {
            let body = Body::pieces(pieces(&[b"abc", b"", b"defgh"]), 6, "a");
            assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(6));
            let got = body.collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], b"abcdef", "cut at the length");
            let short = Body::pieces(pieces(&[b"abc"]), 4, "b").collect().await;
            assert!(short.unwrap_err().to_string().contains("1 bytes short"));
            let full = Body::full(Bytes::from_static(b"xyz"));
            assert_eq!(&full.collect().await.unwrap().to_bytes()[..], b"xyz");
            assert!(hyper::body::Body::is_end_stream(&Body::full(Bytes::new())));
        });
    }
}
