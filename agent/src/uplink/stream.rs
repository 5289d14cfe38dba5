//! One relay-opened stream: its preamble, then HTTP/1.1 served by the
//! [`Handler`] — straight away, or for a zero-knowledge site after the
//! client's TLS handshake, which ends here.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;

use keyway_proto::headers::{new_request_id, set_forwarded, set_upgrade, strip_hop_by_hop};
use keyway_proto::preamble::{read_client, StreamKind};
use keyway_transport::TunnelStream;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::handler::Handler;

/// Time allowed for the relay to send a stream's preamble and request head.
const STREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one relay-opened stream: preamble, then HTTP/1.1 to the console.
/// `leaving` (cancelled when the agent stops or the tunnel is retired) ends
/// keep-alive on zero-knowledge clients' connections. Relay streams never
/// end that way: the relay may have sent a request on a pooled stream that
/// this side has not read yet; it stops using them once told to drain.
pub(super) async fn serve(mut stream: TunnelStream, handler: Arc<Handler>, leaving: CancellationToken) {
    let mut kind = [0u8; 1];
    match timeout(STREAM_HEAD_TIMEOUT, stream.read_exact(&mut kind)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!("stream closed before its preamble: {e}"),
        Err(_) => return debug!("no preamble within {STREAM_HEAD_TIMEOUT:?}"),
    }
    match StreamKind::from_byte(kind[0]) {
        Ok(StreamKind::Http) => http(stream, handler, None, None).await,
        Ok(StreamKind::Sealed) => sealed(stream, handler, leaving).await,
        Err(e) => warn!("{e}"),
    }
}

/// A zero-knowledge site's connection: the client's address, then its TLS.
async fn sealed(mut stream: TunnelStream, handler: Arc<Handler>, leaving: CancellationToken) {
    let client = match timeout(STREAM_HEAD_TIMEOUT, read_client(&mut stream)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!("sealed stream without a client address: {e}"),
        Err(_) => return debug!("no client address within {STREAM_HEAD_TIMEOUT:?}"),
    };
    let Some(tls) = handler.sealed.clone() else {
        return warn!(
            %client,
            "the relay sent a zero-knowledge connection but this agent has no tls_cert/tls_key: \
             closed (set them in agent.toml, or `keyway-relay site mode SITE relay`)"
        );
    };
    let tls = match timeout(STREAM_HEAD_TIMEOUT, tokio_rustls::TlsAcceptor::from(tls).accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return debug!(%client, "client TLS handshake failed: {e}"),
        Err(_) => return debug!(%client, "client TLS handshake timed out"),
    };
    http(tls, handler, Some(client), Some(leaving)).await
}

/// HTTP/1.1 on `io`; with `client`, this agent is the edge (zero-knowledge)
/// and states the client's address and the request's id itself.
async fn http<IO>(io: IO, handler: Arc<Handler>, client: Option<SocketAddr>, leaving: Option<CancellationToken>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        async move {
            let Some(client) = client else {
                return Ok(handler.handle(req.map(BodyExt::boxed_unsync)).await);
            };
            // The relay's edge checks, on the client's own head; then the
            // relay's header work; then what every request gets.
            let request_id = new_request_id();
            let mut resp = match handler.edge.admit(req, client.ip()).await {
                Ok((mut req, hold)) => {
                    as_edge(&mut req, client, &request_id);
                    // A WebSocket's task holds the slots as long as it lives.
                    req.extensions_mut().insert(hold.clone());
                    crate::edge::holding(handler.handle(req).await, hold)
                }
                Err(refused) => refused,
            };
            // As the relay tags every response it terminates.
            if let Ok(id) = http::HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert("x-request-id", id);
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STREAM_HEAD_TIMEOUT)
        // hyper's ceilings above the edge's configurable limits, as at the relay.
        .max_headers(1000)
        .max_buf_size(keyway_proto::STREAM_BUFFER)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let leaving = async {
        match leaving {
            Some(token) => token.cancelled_owned().await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        r = &mut conn => r,
        _ = leaving => {
            // An idle keep-alive connection closes now; one mid-request
            // finishes that request (a client of a zero-knowledge site
            // holds its connection to this agent).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!("stream ended: {e}");
    }
}

/// What the relay does to a request it terminates, done here for a
/// zero-knowledge one: hop-by-hop headers gone (an upgrade re-declared),
/// the client's forwarding claims replaced (the request tagged with
/// `request_id`), an origin-form target.
fn as_edge<B>(req: &mut http::Request<B>, client: SocketAddr, request_id: &str) {
    let headers = req.headers_mut();
    if let Some(proto) = strip_hop_by_hop(headers) {
        set_upgrade(headers, proto);
    }
    set_forwarded(headers, client.ip(), request_id);
    if req.uri().authority().is_some() {
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| http::Uri::from(pq.clone()))
            .unwrap_or_else(|| http::Uri::from_static("/"));
        *req.uri_mut() = target;
    }
}
