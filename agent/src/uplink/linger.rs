//! A zero-knowledge connection's stream that, once this agent has said
//! everything, stays open until the relay has taken it all.
//!
//! The relay copies a sealed stream's bytes to the client and drops the
//! stream when this side ends. Were this side simply finished, a tunnel
//! retiring right after (a move to QUIC, a stop) could close under bytes
//! not yet read by the relay — the response of the last request, the TLS
//! close — and the client would see its connection cut mid-answer. So the
//! shutdown finishes writing, then waits (bounded by [`LINGER`]) for the
//! relay to end its side, which it does once it has read everything.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long the relay has to take the last bytes.
pub const LINGER: Duration = Duration::from_secs(5);

/// `S`, whose shutdown lasts until the peer has ended its side.
pub struct Lingering<S> {
    inner: S,
    linger: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    finished: bool,
}

impl<S> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Self::with_linger(inner, LINGER)
    }

    fn with_linger(inner: S, linger: Duration) -> Self {
        Self {
            inner,
            linger,
            deadline: None,
            finished: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.finished {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.finished = true;
        }
        let linger = this.linger;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        // Whatever the relay still sends (nothing a client may expect an
        // answer to now) is read and dropped until its side ends.
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => continue,
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn shutdown_lasts_until_the_peer_has_read_everything_and_ended() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut near = Lingering::new(near);
        let writer = tokio::spawn(async move {
            near.write_all(&[7u8; 1000]).await.unwrap();
            near.shutdown().await.unwrap();
        });
        // The peer reads slowly; the shutdown waits for it.
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = far.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got.len(), 1000);
        assert!(!writer.is_finished(), "the shutdown waits for the peer's end");
        drop(far);
        tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_never_ends_is_given_the_linger_only() {
        let (near, _far) = tokio::io::duplex(64);
        let linger = Duration::from_millis(100);
        let mut near = Lingering::with_linger(near, linger);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), near.shutdown())
            .await
            .expect("bounded by the linger")
            .unwrap();
        assert!(started.elapsed() >= linger);
    }
}
