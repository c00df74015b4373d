//! A connection whose writes fail once the peer has taken nothing for a while: a client that
//! stops reading a large file lets its connection slot go then, not at the connection's
//! lifetime.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`WriteStall`] does once as it cuts its peer off.
type OnCutOff = Box<dyn FnOnce() + Send + Sync>;

/// `inner`, its writes failing once one has waited `stall` for the peer to take a byte.
pub struct WriteStall<S> {
    inner: S,
    stall: Duration,
    /// Armed while a write waits for the peer; dropped whenever bytes go out.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Called once, when the peer is cut off.
    on_cut_off: Option<OnCutOff>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for WriteStall<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteStall")
            .field("inner", &self.inner)
            .field("stall", &self.stall)
            .finish_non_exhaustive()
    }
}

impl<S> WriteStall<S> {
    /// `inner`, whose writes fail after `stall` without progress.
    pub fn new(inner: S, stall: Duration) -> Self {
        WriteStall {
            inner,
            stall,
            deadline: None,
            on_cut_off: None,
        }
    }

    /// This, calling `then` once as the peer is cut off (a TCP connection made to reset
    /// when closed, so that what the kernel still holds for the peer is dropped).
    pub fn on_cut_off(mut self, then: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_cut_off = Some(Box::new(then));
        self
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
                    Poll::Ready(()) => {
                        if let Some(then) = self.on_cut_off.take() {
                            then();
                        }
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client stopped reading",
                        )))
                    }
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
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let told = std::sync::Arc::clone(&cut);
        let mut guarded = WriteStall::new(client, Duration::from_secs(1)).on_cut_off(move || {
            told.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
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
        assert_eq!(cut.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Nobody reads now: the buffer fills, then the write waits and fails (bounded, so
        // that a guard that never fires fails the test rather than hangs it).
        let mut written = 0usize;
        let err = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match guarded.write(&chunk).await {
                    Ok(n) => written += n,
                    Err(err) => break err,
                }
            }
        })
        .await
        .expect("cut off within the stall timeout");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(written <= 1024, "{written}");
        assert_eq!(
            cut.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "told once"
        );
        // Every write after fails at once.
        let again = guarded.write(&chunk).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
        assert_eq!(cut.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
