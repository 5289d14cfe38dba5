//! The receiving side: peers' connections (node certificates only) and the
//! requests they forward, answered from this node's own links.

use std::sync::Arc;

use anyhow::Context;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyway_proto::preamble::StreamKind;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Cluster, ForwardHead};
use crate::proxy::error::ProxyError;
use crate::proxy::ProxyCtx;

impl Cluster {
    pub(super) async fn accept(self: Arc<Self>, proxy: Arc<ProxyCtx>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let (proxy, streams, closing) = (proxy.clone(), self.streams.clone(), self.closing.clone());
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return debug!("node-to-node handshake failed: {e}"),
                };
                let peer = match peer_node(&conn) {
                    Ok(name) => name,
                    Err(e) => {
                        warn!(remote = %conn.remote_address(), "refused a node-to-node connection: {e}");
                        return conn.close(1u32.into(), b"not a relay node");
                    }
                };
                debug!(%peer, "peer connected");
                while let Ok((send, recv)) = conn.accept_bi().await {
                    streams.spawn(serve_peer_stream(send, recv, proxy.clone(), closing.clone()));
                }
            });
        }
    }
}

/// One node-to-node stream.
pub(super) type PeerStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// The node a peer's certificate names (its chain was verified by TLS;
/// an agent's certificate from the same CA names a site, not a node).
fn peer_node(conn: &quinn::Connection) -> anyhow::Result<String> {
    let chain = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
        .context("no client certificate")?;
    let first = chain.first().context("an empty certificate chain")?;
    Ok(keyway_certs::identity::node_from_cert(first)?)
}

/// Serves one stream a peer opened: a sealed connection (see
/// [`super::sealed`]) or HTTP/1.1 requests, told apart by the first byte.
async fn serve_peer_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    proxy: Arc<ProxyCtx>,
    closing: CancellationToken,
) {
    let Ok(first) = recv.read_u8().await else { return };
    if first == StreamKind::Sealed.to_byte() {
        return super::sealed::serve(recv, send, proxy).await;
    }
    let io = tokio::io::join(std::io::Cursor::new([first]).chain(recv), send);
    serve_stream(io, proxy, closing).await
}

/// Serves HTTP/1.1 requests on a stream a peer opened, each answered from
/// this node's own link for the site its [`ForwardHead`] names.
async fn serve_stream<IO>(io: IO, proxy: Arc<ProxyCtx>, closing: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let proxy = proxy.clone();
        async move {
            let resp = match ForwardHead::take(req.headers_mut()) {
                Some(head) => crate::proxy::serve_forwarded(req, &proxy, &head).await,
                None => {
                    debug!("a peer's request without a forward head");
                    crate::proxy::error::respond(ProxyError::BadRequest(crate::proxy::error::BadRequest::Target))
                }
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!("forwarded request stream ended: {e}");
    }
}
