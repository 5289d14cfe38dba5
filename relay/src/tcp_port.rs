//! The public HTTPS listener integrations talk to (hyper over tokio-rustls,
//! HTTP/1.1 and HTTP/2 by ALPN), which also takes agents whose UDP is
//! blocked: a ClientHello offering `keyway/1` (tunnel) or `keyway-pair/1`
//! (pairing) gets the tunnel TLS configuration and is handed over.
//!
//! Deadlines run from accept: a connection that has not completed its TLS
//! handshake and sent a whole request head within `header_read_timeout`
//! is closed, whatever it speaks (HTTP/1.1, or an HTTP/2 preface alone);
//! later idle keep-alive gaps are hyper's `header_read_timeout` (HTTP/1.1)
//! and keep-alive pings (HTTP/2). Accepted sockets get TCP keep-alive, and
//! one client address may hold `max_connections_per_client` at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Either;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use keyway_proto::envelope::HttpBody;
use keyway_proto::{ALPN_PAIR, ALPN_TUNNEL};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::apt::FileBody;
use crate::proxy::{handle, ProxyCtx};
use crate::tunnel::TunnelCtx;

/// TLS settings of the port.
#[derive(Clone)]
pub struct TcpPortTls {
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
    /// Tracks zero-knowledge sites' connections: at shutdown they are
    /// waited for once their agents were told to drain (the agents close
    /// them, WebSockets with 1012), not cut when this listener stops.
    pub sealed: TaskTracker,
}

/// The listener's deadlines and caps (from `relay.toml`).
#[derive(Debug, Clone, Copy)]
pub struct TcpPortOptions {
    /// From accept to a whole request head (and between requests, HTTP/1.1).
    pub header_read_timeout: Duration,
    /// On shutdown, how long open requests may take.
    pub grace: Duration,
    /// Connections open at once from one client address.
    pub max_connections_per_client: usize,
}

/// TCP keep-alive on accepted sockets: the first probe after this idle
/// time, then every `TCP_KEEPALIVE / 3`.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Open connections per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One open connection of a client address; given back on drop.
struct ConnSlot(Arc<PerClient>, IpAddr);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut map = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ConnSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnSlot(self.clone(), ip))
    }
}

/// Serves integrations until `stop` is cancelled, then lets open requests
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: TcpPortTls,
    agents: TcpAgents,
    ctx: Arc<ProxyCtx>,
    opts: TcpPortOptions,
    stop: CancellationToken,
) {
    let TcpPortOptions {
        header_read_timeout,
        grace,
        max_connections_per_client,
    } = opts;
    let per_client = Arc::new(PerClient::default());
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
        .keep_alive_interval(Some(keyway_proto::H2_KEEPALIVE))
        .keep_alive_timeout(keyway_proto::H2_KEEPALIVE)
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
        let deadline = Instant::now() + header_read_timeout;
        let Some(slot) = per_client.take(peer.ip().to_canonical(), max_connections_per_client) else {
            crate::metrics::METRICS
                .refused
                .get_or_create(&crate::metrics::Reason {
                    reason: "connections".into(),
                })
                .inc();
            debug!(%peer, "over max_connections_per_client: closed at accept");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!("TCP_NODELAY: {e}");
        }
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE)
            .with_interval(TCP_KEEPALIVE / 3);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            debug!("TCP keep-alive: {e}");
        }
        let tls = tls.clone();
        let ctx = ctx.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let agents = agents.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                let stream = match timeout_at(deadline, handshake(tcp, &tls, &ctx)).await {
                    Ok(Ok(Opened::Tls(s))) => *s,
                    Ok(Ok(Opened::Sealed { tcp, seen, site })) => {
                        // Not the front's to wait for: a watcher held here
                        // would keep its graceful shutdown waiting out the
                        // grace for a connection only the agent can end.
                        drop(watcher);
                        let route = crate::sealed::route(tcp, seen, site, peer, ctx);
                        return agents.sealed.track_future(route).await;
                    }
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
                // The first request head must arrive by the deadline too.
                let first = Arc::new(tokio::sync::Notify::new());
                let heard = first.clone();
                let service = hyper::service::service_fn(move |req| {
                    heard.notify_one();
                    serve_request(req, ctx.clone(), peer)
                });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = watcher.watch(conn);
                tokio::pin!(conn);
                tokio::select! {
                    r = &mut conn => return if let Err(e) = r { debug!("connection ended: {e}") },
                    got = timeout_at(deadline, first.notified()) => if got.is_err() {
                        return debug!("no request head within {header_read_timeout:?} of accept: closed");
                    },
                }
                if let Err(e) = conn.await {
                    debug!("connection ended: {e}");
                }
            }
            .instrument(info_span!("client", %peer)),
        );
    }
    debug!("HTTPS front closed; open requests have {grace:?}");
    if timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("shutdown grace of {grace:?} ran out with requests still open");
    }
}

/// One request: a file of the apt repository, or the proxy.
async fn serve_request(
    req: http::Request<hyper::body::Incoming>,
    ctx: Arc<ProxyCtx>,
    peer: SocketAddr,
) -> Result<http::Response<Either<HttpBody, FileBody>>, Infallible> {
    if let Some(apt) = ctx.apt.as_ref().filter(|apt| apt.wants(&req, &ctx.domain)) {
        return Ok(apt.serve(&req).await.map(Either::Right));
    }
    let resp = handle(req, ctx, peer).await?;
    Ok(resp.map(Either::Left))
}

/// What a connection turned out to be once its ClientHello was read.
enum Opened {
    /// TLS ended here (integrations of relay-terminated sites, agents).
    Tls(Box<TlsStream<TcpStream>>),
    /// For a zero-knowledge site: the bytes read so far, to be passed on.
    Sealed {
        tcp: TcpStream,
        seen: Vec<u8>,
        site: String,
    },
}

/// Reads the ClientHello; a zero-knowledge site's connection is handed
/// back as it is, any other completes the handshake with the
/// configuration its ALPN offer asks for.
async fn handshake(mut tcp: TcpStream, tls: &TcpPortTls, ctx: &ProxyCtx) -> std::io::Result<Opened> {
    let (accepted, seen) = crate::sealed::read_client_hello(&mut tcp).await?;
    let hello = accepted.client_hello();
    let agent = hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ALPN_TUNNEL || p == ALPN_PAIR));
    if !agent {
        if let Some(site) = crate::sealed::sealed_site(hello.server_name(), ctx) {
            return Ok(Opened::Sealed { tcp, seen, site });
        }
    }
    let cfg = if agent { tls.tunnel.clone() } else { tls.https.clone() };
    let stream = tokio_rustls::StartHandshake::from_parts(accepted, tcp)
        .into_stream(cfg)
        .await?;
    Ok(Opened::Tls(Box::new(stream)))
}

/// Binds the HTTPS listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
