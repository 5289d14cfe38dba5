//! HTTP/1.1 to an agent over tunnel streams, with idle streams kept for the
//! next request (hyper-util's pooled client, with a connector that opens a
//! tunnel stream instead of a TCP connection). A request that finds an idle
//! stream skips the stream open, the preamble and both ends' per-stream
//! setup; the agent keeps serving requests on a stream until it is idle for
//! its header timeout or the relay drops it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyway_proto::preamble::StreamKind;
use keyway_transport::{Tunnel, TunnelStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Idle streams are dropped after this; below the agent's header timeout
/// (30 s), so the relay never picks a stream the agent is closing.
const IDLE: Duration = Duration::from_secs(20);

/// The pooled client of one agent link.
pub type LinkClient = Client<TunnelConnector, Incoming>;

/// A client whose connections are streams of `tunnel`.
pub fn client(tunnel: Arc<dyn Tunnel>) -> LinkClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE)
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(TunnelConnector { tunnel })
}

/// Opens a tunnel stream and writes its preamble.
#[derive(Clone)]
pub struct TunnelConnector {
    tunnel: Arc<dyn Tunnel>,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<StreamIo>>> + Send>>;

impl tower_service::Service<Uri> for TunnelConnector {
    type Response = TokioIo<StreamIo>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let tunnel = self.tunnel.clone();
        Box::pin(async move {
            let mut stream = tunnel.open().await?;
            stream.write_all(&[StreamKind::Http.to_byte()]).await?;
            Ok(TokioIo::new(StreamIo(stream)))
        })
    }
}

/// A tunnel stream as a client connection.
pub struct StreamIo(TunnelStream);

impl Connection for StreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for StreamIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
