//! One relay-opened stream: its preamble, then HTTP/1.1 served by the
//! [`Handler`] — straight away, or for a zero-knowledge site (`sealed`)
//! after the client's TLS handshake, which ends here.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};

use keyway_proto::preamble::StreamKind;
use keyway_transport::TunnelStream;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::handler::Handler;

/// Time allowed for the relay to send a stream's preamble and request head.
pub(super) const STREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one relay-opened stream: preamble, then HTTP/1.1 to the console.
/// `leaving` (cancelled when the agent stops or the tunnel is retired) ends
/// keep-alive on zero-knowledge clients' connections. Relay streams never
/// end that way: the relay may have sent a request on a pooled stream that
/// this side has not read yet; it stops using them once told to drain.
pub(super) async fn serve(mut stream: TunnelStream, handler: Arc<Handler>, leaving: crate::edge::Leaving) {
    let mut kind = [0u8; 1];
    match timeout(STREAM_HEAD_TIMEOUT, stream.read_exact(&mut kind)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!("stream closed before its preamble: {e}"),
        Err(_) => return debug!("no preamble within {STREAM_HEAD_TIMEOUT:?}"),
    }
    match StreamKind::from_byte(kind[0]) {
        Ok(StreamKind::Http) => http(stream, handler).await,
        Ok(StreamKind::Sealed) => super::sealed::serve(stream, handler, leaving).await,
        Err(e) => warn!("{e}"),
    }
}

/// HTTP/1.1 on a relay's stream: the relay did the edge's work.
async fn http(io: TunnelStream, handler: Arc<Handler>) {
    let io = TokioIo::new(io);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler.handle(req.map(BodyExt::boxed_unsync)).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STREAM_HEAD_TIMEOUT)
        .max_headers(1000)
        .max_buf_size(keyway_proto::STREAM_BUFFER)
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!("stream ended: {e}");
    }
}
