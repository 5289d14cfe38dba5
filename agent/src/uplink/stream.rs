//! One relay-opened stream: its preamble, then HTTP/1.1 served by the
//! [`Handler`].

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use keyway_proto::preamble::StreamKind;
use keyway_transport::TunnelStream;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::handler::Handler;

/// Time allowed for the relay to send a stream's preamble and request head.
const STREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one relay-opened stream: preamble, then HTTP/1.1 to the console.
pub(super) async fn serve(mut stream: TunnelStream, handler: Arc<Handler>) {
    let mut kind = [0u8; 1];
    match timeout(STREAM_HEAD_TIMEOUT, stream.read_exact(&mut kind)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!("stream closed before its preamble: {e}"),
        Err(_) => return debug!("no preamble within {STREAM_HEAD_TIMEOUT:?}"),
    }
    if let Err(e) = StreamKind::from_byte(kind[0]) {
        warn!("{e}");
        return;
    }
    let io = TokioIo::new(stream);
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STREAM_HEAD_TIMEOUT)
        .max_buf_size(keyway_proto::STREAM_BUFFER)
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!("stream ended: {e}");
    }
}
