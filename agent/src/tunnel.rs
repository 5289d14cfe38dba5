//! The agent's side of the tunnel: dial out, say `Hello`, serve the streams
//! the relay opens, and come back after every failure.
//!
//! The agent never listens: every byte from the internet arrives on a QUIC
//! connection the agent itself opened to the relay it was paired with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyway_proto::control::{read_msg, write_msg, ControlMsg};
use keyway_proto::preamble::StreamKind;
use keyway_proto::{CloseCode, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::console::Console;

/// Time allowed for the QUIC handshake and the Hello/Welcome exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the relay to send a stream's preamble and request head.
const STREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
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
    /// `host:port` of the relay.
    pub relay: String,
    /// TLS name of the relay.
    pub relay_name: String,
    /// Where requests go.
    pub console: Arc<Console>,
    /// Published state.
    pub state: watch::Sender<AgentState>,
    /// How often console reachability is checked and reported.
    pub console_check: Duration,
}

/// How a session ended.
enum End {
    /// `stop` was cancelled: the agent is exiting.
    Stopped,
    /// The relay asked us to move (or the connection dropped): reconnect now.
    Reconnect(String),
    /// The relay refused us for a reason retrying soon will not fix.
    Refused(String),
}

/// Connects, serves and reconnects until `stop` is cancelled.
pub async fn run(ctx: Arc<TunnelCtx>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        ctx.state.send_replace(AgentState::Connecting);
        let started = Instant::now();
        let end = tokio::select! {
            _ = stop.cancelled() => End::Stopped,
            r = connect(&ctx) => match r {
                Ok(conn) => session(conn, &ctx, &stop).await,
                Err(e) => End::Reconnect(format!("{e:#}")),
            },
        };
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = match end {
            End::Stopped => return,
            End::Reconnect(reason) if reason.is_empty() => {
                backoff.reset();
                Duration::ZERO
            }
            End::Reconnect(reason) => {
                warn!("tunnel down: {reason}");
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

pub(crate) async fn connect(ctx: &TunnelCtx) -> anyhow::Result<quinn::Connection> {
    // Re-resolved on every attempt: the relay may have moved.
    let addr: SocketAddr = tokio::net::lookup_host(&ctx.relay)
        .await
        .with_context(|| format!("could not resolve relay {}", ctx.relay))?
        .next()
        .ok_or_else(|| anyhow!("relay {} resolves to no address", ctx.relay))?;
    let connecting = ctx
        .endpoint
        .connect(addr, &ctx.relay_name)
        .context("could not start QUIC connection")?;
    let conn = timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            anyhow!("relay {addr} did not complete a QUIC handshake within {HANDSHAKE_TIMEOUT:?} (UDP blocked?)")
        })?
        .with_context(|| format!("could not connect to relay {addr}"))?;
    Ok(conn)
}

async fn session(conn: quinn::Connection, ctx: &TunnelCtx, stop: &CancellationToken) -> End {
    let mut console_ok = ctx.console.reachable().await;
    let (mut send, mut recv, site) = match timeout(HANDSHAKE_TIMEOUT, hello(&conn, console_ok)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => match e.downcast::<RelayRefused>() {
            Ok(RelayRefused(reason)) => return End::Refused(reason),
            Err(e) => return ended(&conn, format!("{e:#}")),
        },
        Err(_) => return End::Reconnect("the relay did not answer Hello in time".into()),
    };
    info!(site, relay = %conn.remote_address(), "tunnel up");
    ctx.state.send_replace(AgentState::Online { site });

    let requests = TaskTracker::new();
    let mut buf = BytesMut::new();
    let mut check = tokio::time::interval(ctx.console_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            _ = check.tick() => {
                let now_ok = ctx.console.reachable().await;
                if now_ok != console_ok {
                    console_ok = now_ok;
                    if console_ok { info!("console reachable again") } else { warn!("console unreachable") }
                    let _ = write_msg(&mut send, &ControlMsg::Status { console_ok }).await;
                }
            }
            _ = stop.cancelled() => {
                let _ = write_msg(&mut send, &ControlMsg::Drain { reason: "agent stopping".into() }).await;
                requests.close();
                if timeout(STOP_GRACE, requests.wait()).await.is_err() {
                    warn!("stopping with requests still open after {STOP_GRACE:?}");
                }
                conn.close(CloseCode::Shutdown.code().into(), b"agent stopping");
                break End::Stopped;
            }
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let console = ctx.console.clone();
                    let span = info_span!("stream", id = %send.id());
                    requests.spawn(serve_stream(send, recv, console).instrument(span));
                }
                Err(e) => break ended(&conn, format!("connection lost: {e}")),
            },
            msg = read_msg(&mut recv, &mut buf) => match msg {
                Ok(ControlMsg::Ping { nonce }) => { let _ = write_msg(&mut send, &ControlMsg::Pong { nonce }).await; }
                Ok(ControlMsg::Pong { .. }) => {}
                Ok(ControlMsg::Drain { reason }) => {
                    info!(reason, "relay asked to drain; reconnecting");
                    break End::Reconnect(String::new());
                }
                Ok(other) => debug!("ignoring control message {other:?}"),
                Err(e) => break ended(&conn, format!("control stream: {e}")),
            },
        }
    };
    if matches!(end, End::Reconnect(_)) {
        // Let in-flight requests finish on the old connection, then close it.
        requests.close();
        tokio::spawn(async move {
            let _ = timeout(STOP_GRACE, requests.wait()).await;
            conn.close(CloseCode::Normal.code().into(), b"drained");
        });
    }
    end
}

/// Opens the control stream and exchanges Hello/Welcome.
pub(crate) async fn hello(
    conn: &quinn::Connection,
    console_ok: bool,
) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream, String)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_msg(
        &mut send,
        &ControlMsg::Hello {
            version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            console_ok,
        },
    )
    .await?;
    let mut buf = BytesMut::new();
    match read_msg(&mut recv, &mut buf).await? {
        ControlMsg::Welcome { site, .. } => Ok((send, recv, site)),
        ControlMsg::Refused { reason } => {
            conn.close(CloseCode::Normal.code().into(), b"refused");
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
fn refusal(conn: &quinn::Connection) -> Option<String> {
    match relay_close(conn)? {
        (CloseCode::VersionMismatch, text) => Some(text),
        (CloseCode::UnknownSite, _) => Some("the relay does not serve this agent's site".into()),
        (CloseCode::Revoked, _) => Some("this agent's certificate was revoked; pair again".into()),
        _ => None,
    }
}

/// How a session that ended on `err` should end the loop.
fn ended(conn: &quinn::Connection, err: String) -> End {
    if let Some(reason) = refusal(conn) {
        return End::Refused(reason);
    }
    if matches!(conn.close_reason(), Some(quinn::ConnectionError::Reset)) {
        // The relay restarted and lost our connection: it is up, go now.
        info!("the relay restarted (stateless reset); reconnecting");
        return End::Reconnect(String::new());
    }
    End::Reconnect(match relay_close(conn) {
        Some((CloseCode::Replaced, _)) => {
            "the relay accepted a newer connection for this site (is a second agent running with this identity?)".into()
        }
        Some((CloseCode::Shutdown, _)) => "the relay is shutting down".into(),
        _ => err,
    })
}

/// The relay's close code and reason text, if it closed the connection.
pub(crate) fn relay_close(conn: &quinn::Connection) -> Option<(CloseCode, String)> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => Some((
            CloseCode::from_code(c.error_code.into_inner())?,
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}

/// Serves one relay-opened stream: preamble, then HTTP/1.1 to the console.
async fn serve_stream(send: quinn::SendStream, mut recv: quinn::RecvStream, console: Arc<Console>) {
    let mut kind = [0u8; 1];
    match timeout(STREAM_HEAD_TIMEOUT, recv.read_exact(&mut kind)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!("stream closed before its preamble: {e}"),
        Err(_) => return debug!("no preamble within {STREAM_HEAD_TIMEOUT:?}"),
    }
    if let Err(e) = StreamKind::from_byte(kind[0]) {
        warn!("{e}");
        return;
    }
    let io = TokioIo::new(tokio::io::join(recv, send));
    let service = hyper::service::service_fn(move |req| {
        let console = console.clone();
        async move { Ok::<_, std::convert::Infallible>(console.forward(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STREAM_HEAD_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!("stream ended: {e}");
    }
}

/// QUIC transport settings for the tunnel, agent side.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead path is noticed within the idle timeout; keep-alives keep NAT
    // bindings open and give the idle timer something to see.
    t.max_idle_timeout(Some(
        keyway_proto::IDLE_TIMEOUT
            .try_into()
            .expect("the idle timeout fits QUIC's varint"),
    ));
    // 1 s also bounds how long a restarted relay waits for the packet it
    // answers with a stateless reset, i.e. the heal time after a crash.
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // Each proxied request is one relay-opened stream.
    t.max_concurrent_bidi_streams(1024u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((4u32 * 1024 * 1024).into());
    t.receive_window((16u32 * 1024 * 1024).into());
    t.send_window(16 * 1024 * 1024);
    t
}
