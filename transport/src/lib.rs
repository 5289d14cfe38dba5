//! The tunnel transport: one connection between an agent and its relay that
//! carries the agent's control stream and one byte stream per proxied
//! request, plus the peer's address, round-trip time and close reason.
//!
//! Two implementations sit behind [`Tunnel`]:
//!
//! * [`quic::QuicTunnel`] — QUIC (quinn), the default: no head-of-line
//!   blocking between requests, connection migration, one round trip to
//!   connect;
//! * [`h2::H2Tunnel`] — TLS 1.3 over TCP with HTTP/2 framing (the `h2`
//!   crate), for networks that block outbound UDP. It shares the relay's
//!   HTTPS port, told apart by ALPN `keyway/1`.
//!
//! Roles are fixed, whatever the transport: the agent dials and opens the
//! control stream; the relay opens one stream per request.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dial;
pub mod h2;
pub mod quic;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use keyway_proto::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite};

/// A boxed future, so the trait stays object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which transport carries a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP, HTTP/2 framing.
    Tcp,
}

impl TransportKind {
    /// `"quic"` or `"tcp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tunnel closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed it, with a Keyway close code if it sent a known one.
    ByPeer {
        /// The code.
        code: Option<CloseCode>,
        /// The peer's reason text (may be empty).
        reason: String,
    },
    /// The peer lost the connection's state (it restarted and reset it, or
    /// its process vanished and the connection just ended, without a close).
    Reset,
    /// This side closed it.
    Locally,
    /// The path failed: timeout, I/O error, protocol error.
    Lost(String),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ByPeer { code, reason } => write!(f, "closed by peer ({code:?}) {reason}"),
            Self::Reset => f.write_str("reset by peer"),
            Self::Locally => f.write_str("closed locally"),
            Self::Lost(e) => write!(f, "connection lost: {e}"),
        }
    }
}

/// A byte stream inside a tunnel.
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> StreamIo for T {}

/// One bidirectional stream of a tunnel. Shutting down the write half ends
/// the peer's read half; dropping the stream abandons it.
pub struct TunnelStream {
    /// A number unique within the tunnel, for logs.
    pub id: u64,
    io: Box<dyn StreamIo>,
}

impl TunnelStream {
    /// Wraps a stream.
    pub fn new(id: u64, io: impl StreamIo + 'static) -> Self {
        Self { id, io: Box::new(io) }
    }
}

impl fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelStream").field("id", &self.id).finish()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    /// Writes the slices in order until one would block. hyper queues the
    /// pieces of a body for a writer that takes slices, instead of copying
    /// them into one growing buffer per connection: with hundreds of
    /// streams, that buffer was most of the agent's memory.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        let mut written = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            match Pin::new(&mut self.io).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if n < buf.len() {
                        break;
                    }
                }
                // What was written counts; the error (or the wait) comes
                // back on the next call.
                Poll::Ready(Err(_)) | Poll::Pending if written > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A tunnel connection between an agent and its relay.
pub trait Tunnel: Send + Sync + 'static {
    /// What carries it.
    fn kind(&self) -> TransportKind;
    /// The peer's address.
    fn remote_address(&self) -> SocketAddr;
    /// The current round-trip estimate.
    fn rtt(&self) -> Duration;
    /// Agent: opens the control stream (the first stream of a tunnel).
    fn open_control(&self) -> BoxFut<'_, io::Result<TunnelStream>>;
    /// Relay: the agent's control stream.
    fn accept_control(&self) -> BoxFut<'_, io::Result<TunnelStream>>;
    /// Relay: opens a stream for one request.
    fn open(&self) -> BoxFut<'_, io::Result<TunnelStream>>;
    /// Agent: the next request stream the relay opened.
    fn accept(&self) -> BoxFut<'_, io::Result<TunnelStream>>;
    /// Closes the tunnel with a code the peer can read; open streams fail.
    fn close(&self, code: CloseCode, reason: &str);
    /// Resolves once the tunnel is closed, for whatever reason.
    fn closed(&self) -> BoxFut<'_, ()>;
    /// Why it closed, once it has.
    fn close_reason(&self) -> Option<Closed>;
    /// A count that grows whenever anything arrives from the peer (QUIC:
    /// datagrams; TCP: the time of the last read). A watchdog that sees it
    /// stand still knows the peer went silent, long before an idle timeout.
    fn heard(&self) -> u64;
}

impl fmt::Debug for dyn Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("kind", &self.kind())
            .field("remote", &self.remote_address())
            .finish()
    }
}

/// The close code a closed tunnel carried from its peer, with its text.
pub fn peer_close(t: &dyn Tunnel) -> Option<(CloseCode, String)> {
    match t.close_reason()? {
        Closed::ByPeer { code: Some(c), reason } => Some((c, reason)),
        _ => None,
    }
}
