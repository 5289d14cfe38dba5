//! The agent's side of the tunnel: dial out, say `Hello`, serve the streams
//! the relay opens, and come back after every failure.
//!
//! The agent never listens: every byte from the internet arrives on a
//! connection the agent itself opened to the relay it was paired with, over
//! QUIC or, where UDP is blocked, TLS over TCP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyway_proto::control::{read_msg, write_msg, ControlMsg};
use keyway_proto::preamble::StreamKind;
use keyway_proto::{CloseCode, ALPN_TUNNEL, PROTOCOL_VERSION};
use keyway_transport::h2::H2Tunnel;
use keyway_transport::quic::QuicTunnel;
use keyway_transport::{peer_close, Closed, TransportKind, Tunnel, TunnelStream};
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::console::ConsoleHealth;
use keyway_certs::ConsoleTrust;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, debug_span, info, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::TransportMode;
use crate::console::Console;
use crate::local::Local;

/// Time allowed for the QUIC handshake and the Hello/Welcome exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the relay to send a stream's preamble and request head.
const STREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, both transports.
const KEEPALIVE: Duration = keyway_proto::AGENT_KEEPALIVE;
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// The longest wait between reconnect attempts (full jitter below it).
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// How long in-flight requests may run when the agent stops.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What the agent is doing, for `status`, tests and the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Trying to reach the relay.
    Connecting,
    /// Serving requests for `site`.
    Online {
        /// The site the relay says this connection serves.
        site: String,
        /// What carries the tunnel.
        transport: TransportKind,
    },
    /// The last attempt failed for this reason; retrying.
    Retrying {
        /// Why.
        reason: String,
    },
}

/// Everything a tunnel session needs.
pub struct TunnelCtx {
    /// QUIC client endpoint (with the client config installed).
    pub endpoint: quinn::Endpoint,
    /// TLS client for the TCP transport (ALPN `keyway/1`).
    pub tcp_tls: tokio_rustls::TlsConnector,
    /// `host:port` of the relay (QUIC).
    pub relay: String,
    /// `host:port` of the relay (TLS over TCP).
    pub relay_tcp: String,
    /// TLS name of the relay.
    pub relay_name: String,
    /// Which transports to use.
    pub mode: TransportMode,
    /// In `auto`: time a QUIC handshake gets before TCP is tried.
    pub quic_deadline: Duration,
    /// In `auto` on TCP: how often QUIC is tried again.
    pub quic_probe: Duration,
    /// In `auto`: QUIC failed last time and TCP worked, so start with TCP.
    pub udp_blocked: AtomicBool,
    /// Where requests go.
    pub console: Arc<Console>,
    /// What answers the requests that come through the tunnel.
    pub local: Arc<Local>,
    /// Published state.
    pub state: watch::Sender<AgentState>,
    /// How often console reachability is checked and reported.
    pub console_check: Duration,
    /// The agent's config file, where a re-pin is read from.
    pub config_path: Option<std::path::PathBuf>,
}

/// How a session ended.
enum End {
    /// `stop` was cancelled: the agent is exiting.
    Stopped,
    /// The relay asked us to move (or the connection dropped): reconnect now.
    Reconnect(String),
    /// The relay refused us for a reason retrying soon will not fix.
    Refused(String),
    /// The relay gave the site to a newer connection (its words).
    Displaced(String),
    /// A background QUIC probe connected while on TCP: hand over to it.
    Switch(Arc<dyn Tunnel>),
}

/// How long after a relay drains or shuts down the agent keeps retrying at
/// [`RESTART_RETRY_CAP`] (a restart takes seconds; an outage longer than
/// this falls back to the doubling backoff).
pub const RESTART_WINDOW: Duration = Duration::from_secs(10);

/// The most a retry waits while the relay restarts (full jitter below it,
/// so a thousand agents do not return in the same millisecond).
pub const RESTART_RETRY_CAP: Duration = Duration::from_millis(300);

const RELAY_SHUTTING_DOWN: &str = "the relay is shutting down";

/// Connects, serves and reconnects until `stop` is cancelled.
pub async fn run(ctx: Arc<TunnelCtx>, stop: CancellationToken) {
    let mut console = watch_console(ctx.clone(), stop.clone()).await;
    let mut backoff = Backoff::new(Duration::from_millis(200), RECONNECT_CAP);
    let mut next: Option<Arc<dyn Tunnel>> = None;
    // Until when the relay is taken to be restarting (it drained us, shut
    // down, or lost our connection): retries stay within RESTART_RETRY_CAP
    // instead of doubling while the old process exits and the new one
    // starts, so a routine restart heals in well under a second.
    let mut restarting_until: Option<Instant> = None;
    loop {
        let handover = next.is_some();
        if !handover {
            ctx.state.send_replace(AgentState::Connecting);
        }
        let started = Instant::now();
        let end = tokio::select! {
            _ = stop.cancelled() => End::Stopped,
            r = async { match next.take() { Some(t) => Ok(t), None => connect(&ctx).await } } => match r {
                Ok(tunnel) => session(tunnel, &ctx, &stop, handover, &mut console).await,
                Err(e) => End::Reconnect(format!("{e:#}")),
            },
        };
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = match end {
            End::Stopped => return,
            End::Switch(tunnel) => {
                next = Some(tunnel);
                continue;
            }
            End::Reconnect(reason) if reason.is_empty() => {
                backoff.reset();
                restarting_until = Some(Instant::now() + RESTART_WINDOW);
                Duration::ZERO
            }
            End::Reconnect(reason) => {
                if reason == RELAY_SHUTTING_DOWN {
                    restarting_until = Some(Instant::now() + RESTART_WINDOW);
                }
                let reason = crate::clock::annotate(reason);
                warn!("tunnel down: {reason}");
                ctx.state.send_replace(AgentState::Retrying { reason });
                match restarting_until {
                    Some(until) if Instant::now() < until => crate::backoff::jitter(RESTART_RETRY_CAP),
                    _ => backoff.next_delay(),
                }
            }
            End::Displaced(by) => {
                let reason = ctx.local.live.displaced(by);
                warn!("{reason}");
                ctx.state.send_replace(AgentState::Retrying { reason });
                backoff.next_delay()
            }
            End::Refused(reason) => {
                warn!("relay refused this agent: {reason}");
                ctx.state.send_replace(AgentState::Retrying { reason });
                Duration::from_secs(300)
            }
        };
        if !delay.is_zero() {
            debug!("reconnecting in {delay:?}");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Connects to the relay over the configured transport(s).
pub(crate) async fn connect(ctx: &TunnelCtx) -> anyhow::Result<Arc<dyn Tunnel>> {
    match ctx.mode {
        TransportMode::Quic => connect_quic(ctx, HANDSHAKE_TIMEOUT).await,
        TransportMode::Tcp => connect_tcp(ctx).await,
        TransportMode::Auto if ctx.udp_blocked.load(Ordering::Relaxed) => match connect_tcp(ctx).await {
            Ok(t) => Ok(t),
            Err(tcp) => connect_quic(ctx, ctx.quic_deadline)
                .await
                .map_err(|quic| anyhow!("{tcp:#}; over QUIC: {quic:#}")),
        },
        TransportMode::Auto => match connect_quic(ctx, ctx.quic_deadline).await {
            Ok(t) => Ok(t),
            Err(quic) => {
                info!("QUIC failed ({quic:#}); trying TLS over TCP");
                let t = connect_tcp(ctx)
                    .await
                    .map_err(|tcp| anyhow!("{quic:#}; over TCP: {tcp:#}"))?;
                // TCP works where QUIC did not: UDP is blocked on this path.
                ctx.udp_blocked.store(true, Ordering::Relaxed);
                warn!(
                    "the relay is reachable over TCP but not over UDP (blocked?); serving over TLS/TCP, \
                     trying QUIC again every {:?}",
                    ctx.quic_probe
                );
                Ok(t)
            }
        },
    }
}

/// Connects over one transport only (QUIC within the `auto` deadline).
pub(crate) async fn connect_over(ctx: &TunnelCtx, transport: TransportKind) -> anyhow::Result<Arc<dyn Tunnel>> {
    match transport {
        TransportKind::Quic => connect_quic(ctx, ctx.quic_deadline).await,
        TransportKind::Tcp => connect_tcp(ctx).await,
    }
}

async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    // Re-resolved on every attempt: the relay may have moved.
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("could not resolve relay {target}"))?
        .next()
        .ok_or_else(|| anyhow!("relay {target} resolves to no address"))
}

async fn connect_quic(ctx: &TunnelCtx, deadline: Duration) -> anyhow::Result<Arc<dyn Tunnel>> {
    let addr = resolve(&ctx.relay).await?;
    let connecting = ctx
        .endpoint
        .connect(addr, &ctx.relay_name)
        .context("could not start QUIC connection")?;
    let conn = timeout(deadline, connecting)
        .await
        .map_err(|_| anyhow!("relay {addr} did not complete a QUIC handshake within {deadline:?} (UDP blocked?)"))?
        .with_context(|| format!("could not connect to relay {addr} over QUIC"))?;
    Ok(Arc::new(QuicTunnel(conn)))
}

async fn connect_tcp(ctx: &TunnelCtx) -> anyhow::Result<Arc<dyn Tunnel>> {
    let addr = resolve(&ctx.relay_tcp).await?;
    let name = ServerName::try_from(ctx.relay_name.clone()).context("relay name")?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("could not connect to relay {addr} over TCP"))?;
        let _ = tcp.set_nodelay(true);
        let tls = ctx
            .tcp_tls
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with relay {addr} failed"))?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_TUNNEL) {
            bail!("{addr} does not serve Keyway tunnels over TCP (no keyway/1 in its TLS handshake)");
        }
        let tunnel = H2Tunnel::agent(tls, addr, KEEPALIVE).await?;
        Ok::<_, anyhow::Error>(Arc::new(tunnel) as Arc<dyn Tunnel>)
    };
    timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("relay {addr} did not complete a TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
}

/// Checks the console every `console_check` in a task of its own (a check
/// of a dark console takes seconds, and must not hold up the tunnel's
/// streams and pings); the first result is in before this returns.
async fn watch_console(ctx: Arc<TunnelCtx>, stop: CancellationToken) -> watch::Receiver<ConsoleHealth> {
    let first = check_console(&ctx).await;
    ctx.local.live.set_console(first);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut check = tokio::time::interval(ctx.console_check);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = check.tick() => {}
            }
            let health = check_console(&ctx).await;
            ctx.local.live.set_console(health);
            tx.send_if_modified(|was| std::mem::replace(was, health) != health);
        }
    });
    rx
}

/// One console check. When the console presents another certificate than
/// the pin, the pin in `agent.toml` is read again: if it now names the
/// certificate the console presents (`keyway-agent console pin` wrote it),
/// the agent trusts it from now on, with no restart.
async fn check_console(ctx: &TunnelCtx) -> ConsoleHealth {
    let health = ctx.console.health().await;
    let (ConsoleHealth::CertificateChanged { seen, .. }, Some(path)) = (health, &ctx.config_path) else {
        return health;
    };
    let pinned = crate::AgentConfig::load(path).ok().and_then(|c| c.console_trust().ok());
    if pinned != Some(ConsoleTrust::Pinned(seen)) {
        return health;
    }
    match ctx.console.repin(ConsoleTrust::Pinned(seen)) {
        Ok(()) => {
            info!(fingerprint = %seen, "the console's new certificate is pinned in {}; trusting it", path.display());
            ConsoleHealth::Ok
        }
        Err(e) => {
            warn!("could not trust the console's new certificate: {e:#}");
            health
        }
    }
}

async fn session(
    tunnel: Arc<dyn Tunnel>,
    ctx: &TunnelCtx,
    stop: &CancellationToken,
    handover: bool,
    console: &mut watch::Receiver<ConsoleHealth>,
) -> End {
    let mut health = *console.borrow_and_update();
    let hello = hello(&*tunnel, health.is_ok(), health.problem(), handover);
    let (control, site) = match timeout(HANDSHAKE_TIMEOUT, hello).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => match e.downcast::<RelayRefused>() {
            Ok(RelayRefused(reason)) => return End::Refused(reason),
            Err(e) => return ended(&*tunnel, format!("{e:#}")),
        },
        Err(_) => return End::Reconnect("the relay did not answer Hello in time".into()),
    };
    let transport = tunnel.kind();
    info!(site, relay = %tunnel.remote_address(), %transport, "tunnel up");
    ctx.local.live.set_tunnel(Some(tunnel.clone()));
    ctx.local.live.set_console(health);
    ctx.state.send_replace(AgentState::Online { site, transport });
    let (mut recv, mut send) = tokio::io::split(control);

    let requests = TaskTracker::new();
    let mut buf = BytesMut::new();
    let probing = ctx.mode == TransportMode::Auto && transport == TransportKind::Tcp;
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + ctx.quic_probe, ctx.quic_probe);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_task: Option<tokio::task::JoinHandle<anyhow::Result<Arc<dyn Tunnel>>>> = None;
    let mut watching_console = true;
    let end = loop {
        tokio::select! {
            changed = console.changed(), if watching_console => {
                if changed.is_err() {
                    // The checker stops with the agent: the stop branch
                    // below drains; this one just goes quiet.
                    watching_console = false;
                    continue;
                }
                let now = *console.borrow_and_update();
                if now != health {
                    health = now;
                    match health.problem() {
                        None => info!("console reachable again"),
                        Some(p) => warn!("console: {p}"),
                    }
                    // A control stream that cannot take a message is a dead
                    // tunnel: the relay would keep routing to it unaware.
                    let status = ControlMsg::Status { console_ok: health.is_ok(), console_problem: health.problem() };
                    if let Err(e) = write_msg(&mut send, &status).await {
                        break ended(&*tunnel, format!("control stream: {e}"));
                    }
                }
            }
            _ = probe.tick(), if probing && probe_task.is_none() => {
                let (endpoint, relay, name, deadline) =
                    (ctx.endpoint.clone(), ctx.relay.clone(), ctx.relay_name.clone(), ctx.quic_deadline);
                probe_task = Some(tokio::spawn(async move { probe_quic(endpoint, relay, name, deadline).await }));
            }
            done = async { probe_task.as_mut().expect("guarded").await }, if probe_task.is_some() => {
                probe_task = None;
                match done {
                    Ok(Ok(quic)) => {
                        info!("QUIC reaches the relay again; moving the tunnel off TCP");
                        ctx.udp_blocked.store(false, Ordering::Relaxed);
                        break End::Switch(quic);
                    }
                    Ok(Err(e)) => debug!("QUIC still unavailable: {e:#}"),
                    Err(e) => debug!("QUIC probe failed: {e}"),
                }
            }
            _ = stop.cancelled() => {
                // Best effort: a relay that cannot hear it learns from the close.
                if let Err(e) = write_msg(&mut send, &ControlMsg::Drain { reason: "agent stopping".into() }).await {
                    debug!("could not tell the relay we drain: {e}");
                }
                requests.close();
                if timeout(STOP_GRACE, requests.wait()).await.is_err() {
                    warn!("stopping with requests still open after {STOP_GRACE:?}");
                }
                tunnel.close(CloseCode::Shutdown, "agent stopping");
                break End::Stopped;
            }
            stream = tunnel.accept() => match stream {
                Ok(stream) => {
                    let span = debug_span!("stream", id = stream.id);
                    requests.spawn(serve_stream(stream, ctx.local.clone()).instrument(span));
                }
                Err(e) => break ended(&*tunnel, format!("connection lost: {e}")),
            },
            msg = read_msg(&mut recv, &mut buf) => match msg {
                Ok(ControlMsg::Ping { nonce }) => {
                    if let Err(e) = write_msg(&mut send, &ControlMsg::Pong { nonce }).await {
                        break ended(&*tunnel, format!("control stream: {e}"));
                    }
                }
                Ok(ControlMsg::Pong { .. }) => {}
                Ok(ControlMsg::Drain { reason }) => {
                    info!(reason, "relay asked to drain; reconnecting");
                    break End::Reconnect(String::new());
                }
                Ok(other) => debug!("ignoring control message {other:?}"),
                Err(e) => break ended(&*tunnel, format!("control stream: {e}")),
            },
        }
    };
    if let Some(p) = probe_task {
        p.abort();
    }
    // The next session (or none) publishes its own tunnel.
    ctx.local.live.set_tunnel(None);
    match end {
        End::Switch(_) => {
            // Until the relay has read the handover Hello it may still send
            // requests here: keep serving this connection until it says
            // Drain and a moment passes without a new stream.
            let local = ctx.local.clone();
            tokio::spawn(async move {
                let mut drained = false;
                loop {
                    let quiet = if drained { Duration::from_secs(1) } else { STOP_GRACE };
                    tokio::select! {
                        stream = tunnel.accept() => match stream {
                            Ok(stream) => {
                                let span = debug_span!("stream", id = stream.id);
                                requests.spawn(serve_stream(stream, local.clone()).instrument(span));
                            }
                            Err(_) => break,
                        },
                        msg = read_msg(&mut recv, &mut buf), if !drained => {
                            drained = matches!(msg, Ok(ControlMsg::Drain { .. }) | Err(_));
                        }
                        _ = tokio::time::sleep(quiet) => break,
                    }
                }
                requests.close();
                let _ = timeout(STOP_GRACE, requests.wait()).await;
                drop(send);
                tunnel.close(CloseCode::Normal, "moved to a new connection");
            });
        }
        End::Reconnect(_) => {
            // Let in-flight requests finish on the old connection, then close it.
            requests.close();
            tokio::spawn(async move {
                let _ = timeout(STOP_GRACE, requests.wait()).await;
                drop(send);
                tunnel.close(CloseCode::Normal, "drained");
            });
        }
        _ => {}
    }
    end
}

async fn probe_quic(
    endpoint: quinn::Endpoint,
    relay: String,
    name: String,
    deadline: Duration,
) -> anyhow::Result<Arc<dyn Tunnel>> {
    let addr = resolve(&relay).await?;
    let conn = timeout(deadline, endpoint.connect(addr, &name)?)
        .await
        .map_err(|_| anyhow!("no QUIC handshake within {deadline:?}"))??;
    Ok(Arc::new(QuicTunnel(conn)))
}

/// Opens the control stream and exchanges Hello/Welcome.
pub(crate) async fn hello(
    tunnel: &dyn Tunnel,
    console_ok: bool,
    console_problem: Option<String>,
    handover: bool,
) -> anyhow::Result<(TunnelStream, String)> {
    let mut control = tunnel.open_control().await?;
    write_msg(
        &mut control,
        &ControlMsg::Hello {
            version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            console_ok,
            console_problem,
            handover,
        },
    )
    .await?;
    let mut buf = BytesMut::new();
    match read_msg(&mut control, &mut buf).await? {
        ControlMsg::Welcome { site, .. } => Ok((control, site)),
        ControlMsg::Refused { reason } => {
            tunnel.close(CloseCode::Normal, "refused");
            Err(RelayRefused(reason).into())
        }
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// The relay answered `Hello` with `Refused`.
#[derive(Debug)]
struct RelayRefused(String);

impl std::fmt::Display for RelayRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "relay refused: {}", self.0)
    }
}

impl std::error::Error for RelayRefused {}

/// A reason the relay gave for closing, if it was one retrying soon won't fix.
fn refusal(tunnel: &dyn Tunnel) -> Option<String> {
    match peer_close(tunnel)? {
        (CloseCode::VersionMismatch, text) => Some(text),
        (CloseCode::UnknownSite, _) => Some("the relay does not serve this agent's site".into()),
        (CloseCode::Revoked, _) => Some("this agent's certificate was revoked; pair again".into()),
        _ => None,
    }
}

/// How a session that ended on `err` should end the loop.
fn ended(tunnel: &dyn Tunnel, err: String) -> End {
    if let Some(reason) = refusal(tunnel) {
        return End::Refused(reason);
    }
    if tunnel.close_reason() == Some(Closed::Reset) {
        // The relay restarted and lost our connection: it is up, go now.
        info!("the relay restarted (connection reset); reconnecting");
        return End::Reconnect(String::new());
    }
    End::Reconnect(match peer_close(tunnel) {
        Some((CloseCode::Replaced, by)) => return End::Displaced(by),
        Some((CloseCode::Shutdown, _)) => RELAY_SHUTTING_DOWN.into(),
        _ => err,
    })
}

/// Serves one relay-opened stream: preamble, then HTTP/1.1 to the console.
async fn serve_stream(mut stream: TunnelStream, local: Arc<Local>) {
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
        let local = local.clone();
        async move { Ok::<_, std::convert::Infallible>(local.handle(req).await) }
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

/// What the agent's QUIC connection holds unacknowledged.
pub const AGENT_SEND_WINDOW: u64 = 4 * 1024 * 1024;

/// QUIC transport settings for the tunnel, agent side.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = keyway_transport::quic::transport_config();
    // A dead path is noticed within the idle timeout; keep-alives keep NAT
    // bindings open and give the idle timer something to see.
    // The interval also bounds how long a restarted relay waits for the
    // packet it answers with a stateless reset, i.e. the heal time after a
    // crash (interval + one handshake). Two small packets a second cost
    // nothing next to a door that stays unreachable.
    t.keep_alive_interval(Some(KEEPALIVE));
    // Each proxied request is one relay-opened stream.
    t.max_concurrent_bidi_streams(1024u32.into());
    // Unacknowledged bytes held for the relay, all streams together: 4 MiB
    // is 80 MB/s at 50 ms of round trip (more than a site's uplink) and
    // bounds what a Pi holds when the relay's side reads slowly.
    t.send_window(AGENT_SEND_WINDOW);
    t
}
