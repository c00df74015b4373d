//! A connection whose writes fail once the peer has taken nothing for a while: a client that
//! stops reading a large file lets its connection slot go then, not at the connection's
//! lifetime.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, its writes failing once one has waited `stall` for the peer to take a byte.
#[derive(Debug)]
pub struct WriteStall<S> {
    inner: S,
    stall: Duration,
    /// Armed while a write waits for the peer; dropped whenever bytes go out.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    /// `inner`, whose writes fail after `stall` without progress.
    pub fn new(inner: S, stall: Duration) -> Self {
        WriteStall {
            inner,
            stall,
            deadline: None,
        }
    }

    /// Progress disarms the deadline; waiting arms it, and fails once it has passed.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let stall = self.stall;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Writes to a peer that reads nothing fail once one has waited the stall timeout;
    /// writes that make progress go on however long it all takes.
    #[tokio::test]
    async fn a_write_waiting_past_the_stall_fails() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut guarded = WriteStall::new(client, Duration::from_secs(1));
        let chunk = vec![7u8; 512];
        // Read as it goes: never stalled.
        let reader = tokio::spawn(async move {
            let mut taken = 0;
            let mut buf = vec![0u8; 256];
            while taken < 8 * 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                taken += tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                    .await
                    .unwrap();
            }
            server
        });
        for _ in 0..16 {
            guarded.write_all(&chunk).await.unwrap();
        }
        let _server = reader.await.unwrap();
        // Nobody reads now: the buffer fills, then the write waits and fails.
        let mut written = 0usize;
        let err = loop {
            match guarded.write(&chunk).await {
                Ok(n) => written += n,
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(written <= 1024, "{written}");
    }
}
