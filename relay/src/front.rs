//! The public HTTPS listener integrations talk to (hyper over tokio-rustls,
//! HTTP/1.1 and HTTP/2 by ALPN), which also takes agents whose UDP is
//! blocked: a ClientHello offering `keyway/1` (tunnel) or `keyway-pair/1`
//! (pairing) gets the tunnel TLS configuration and is handed over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use keyway_proto::{ALPN_PAIR, ALPN_TUNNEL};
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::proxy::{handle, ProxyCtx};
use crate::tunnel::TunnelCtx;

/// TLS settings of the port.
#[derive(Clone)]
pub struct FrontTls {
    /// For integrations.
    pub https: Arc<rustls::ServerConfig>,
    /// For agents (`keyway/1`, `keyway-pair/1`).
    pub tunnel: Arc<rustls::ServerConfig>,
}

/// Where agents connecting over TCP go.
#[derive(Clone)]
pub struct TcpAgents {
    /// The tunnel listener's context.
    pub ctx: Arc<TunnelCtx>,
    /// Cancelled when agent connections should drain.
    pub stop: CancellationToken,
    /// Tracks agent connection tasks.
    pub tracker: TaskTracker,
}

/// Serves integrations until `stop` is cancelled, then lets open requests
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: FrontTls,
    agents: TcpAgents,
    ctx: Arc<ProxyCtx>,
    header_read_timeout: Duration,
    grace: Duration,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own ceilings sit above the configurable limits (see
    // `limits`), which answer with the envelope instead of a bare 431.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(1000)
        .max_buf_size(1024 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(1024 * 1024);
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
        let agents = agents.clone();
        tokio::spawn(
            async move {
                let stream = match timeout(header_read_timeout, handshake(tcp, &tls)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return debug!("TLS handshake failed: {e}"),
                    Err(_) => return debug!("TLS handshake timed out"),
                };
                match stream.get_ref().1.alpn_protocol() {
                    Some(ALPN_TUNNEL) => {
                        let task = crate::tunnel::handle_tcp(stream, peer, agents.ctx, agents.stop);
                        let span = info_span!("agent", remote = %peer, site = tracing::field::Empty, transport = "tcp");
                        agents.tracker.spawn(
                            async move {
                                if let Err(e) = task.await {
                                    info!("agent connection ended: {e:#}");
                                }
                            }
                            .instrument(span),
                        );
                        return;
                    }
                    Some(ALPN_PAIR) => return crate::pairing::serve_tls(stream, agents.ctx.pairing.clone()).await,
                    // A TLS-ALPN-01 validation ends with the handshake.
                    Some(keyway_certs::public::ALPN_ACME_TLS) => return debug!("answered an ACME validation"),
                    _ => {}
                }
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

/// Reads the ClientHello and completes the handshake with the configuration
/// its ALPN offer asks for.
async fn handshake(tcp: TcpStream, tls: &FrontTls) -> std::io::Result<TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
    let agent = start
        .client_hello()
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ALPN_TUNNEL || p == ALPN_PAIR));
    let cfg = if agent { tls.tunnel.clone() } else { tls.https.clone() };
    start.into_stream(cfg).await
}

/// Binds the HTTPS listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
