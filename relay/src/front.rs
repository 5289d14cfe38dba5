//! The public HTTPS listener integrations talk to (hyper over tokio-rustls,
//! HTTP/1.1 and HTTP/2 by ALPN).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::proxy::{handle, ProxyCtx};

/// Serves integrations until `stop` is cancelled, then lets open requests
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    ctx: Arc<ProxyCtx>,
    header_read_timeout: Duration,
    grace: Duration,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!("accept failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!("TCP_NODELAY: {e}");
        }
        let tls = tls.clone();
        let ctx = ctx.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let stream = match timeout(header_read_timeout, tls.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return debug!("TLS handshake failed: {e}"),
                    Err(_) => return debug!("TLS handshake timed out"),
                };
                let service = hyper::service::service_fn(move |req| handle(req, ctx.clone(), peer));
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    debug!("connection ended: {e}");
                }
            }
            .instrument(info_span!("client", %peer)),
        );
    }
    if timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("shutdown grace of {grace:?} ran out with requests still open");
    }
}

/// Binds the HTTPS listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
