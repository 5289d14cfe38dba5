//! The agent's uplink to its relay: dial out (`dial`), say `Hello` and
//! serve the streams the relay opens (`session`, `stream`), keep the
//! relay told about the console (`console_watch`), and come back after
//! every failure ([`run`]).
//!
//! The agent never listens: every byte from the internet arrives on a
//! connection the agent itself opened to the relay it was paired with, over
//! QUIC or, where UDP is blocked, TLS over TCP.

mod console_watch;
mod dial;
mod linger;
mod links;
mod sealed;
mod session;
mod stream;

pub use links::Links;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyway_transport::{TransportKind, Tunnel};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::config::TransportMode;
use crate::console::Console;
use crate::handler::Handler;

pub(crate) use dial::{connect, connect_over};
pub(crate) use session::hello;

/// Time allowed for the QUIC handshake and the Hello/Welcome exchange.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive interval, both transports.
pub(crate) const KEEPALIVE: Duration = keyway_proto::AGENT_KEEPALIVE;
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// The longest wait between reconnect attempts (full jitter below it).
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// How long in-flight requests may run when the agent stops.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(20);

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

/// The agent's link up to its relay: what every connection needs.
pub struct Uplink {
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
    pub handler: Arc<Handler>,
    /// Published state.
    pub state: watch::Sender<AgentState>,
    /// How often console reachability is checked and reported.
    pub console_check: Duration,
    /// The agent's config file, where a re-pin is read from.
    pub config_path: Option<std::path::PathBuf>,
    /// All of the agent's links, shared by each link's `Uplink`.
    pub links: Arc<Links>,
    /// Which link this is (0: the one dialling `relay` as configured).
    pub index: usize,
}

impl Uplink {
    /// Link `index`'s uplink, aimed at the cluster node `node` (its QUIC and
    /// TLS/TCP port); its state is its own.
    fn toward(&self, node: std::net::SocketAddr, index: usize) -> Self {
        Self {
            endpoint: self.endpoint.clone(),
            tcp_tls: self.tcp_tls.clone(),
            relay: node.to_string(),
            relay_tcp: node.to_string(),
            relay_name: self.relay_name.clone(),
            mode: self.mode,
            quic_deadline: self.quic_deadline,
            quic_probe: self.quic_probe,
            udp_blocked: AtomicBool::new(self.udp_blocked.load(std::sync::atomic::Ordering::Relaxed)),
            console: self.console.clone(),
            handler: self.handler.clone(),
            state: watch::channel(AgentState::Connecting).0,
            console_check: self.console_check,
            config_path: self.config_path.clone(),
            links: self.links.clone(),
            index,
        }
    }
}

/// How a session ended.
enum End {
    /// `stop` was cancelled: the agent is exiting.
    Stopped,
    /// Dial again (see [`Reconnect`] for how soon).
    Reconnect(Reconnect),
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

/// Why the agent dials again, which decides how soon.
enum Reconnect {
    /// The relay asked this agent to move (`Drain`) or restarted and lost
    /// the connection: it is up, so at once.
    Now,
    /// The relay closed the connection shutting down: within
    /// [`RESTART_RETRY_CAP`] while it restarts.
    RelayRestarting,
    /// The connection failed, or could not be made: with backoff.
    Failed(String),
}

impl std::fmt::Display for Reconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Now => f.write_str("the relay asked this agent to reconnect"),
            Self::RelayRestarting => f.write_str("the relay is shutting down"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

/// Connects, serves and reconnects until `stop` is cancelled.
pub async fn run(ctx: Arc<Uplink>, stop: CancellationToken) {
    let mut console = console_watch::watch(ctx.clone(), stop.clone()).await;
    let extra: Vec<_> = (1..ctx.links.wanted)
        .map(|i| tokio::spawn(links::run_extra(ctx.clone(), i, console.clone(), stop.clone())))
        .collect();
    primary(&ctx, &mut console, &stop).await;
    for task in extra {
        let _ = task.await;
    }
}

/// Link 0: dials the relay as configured, serves, reconnects.
async fn primary(
    ctx: &Arc<Uplink>,
    console: &mut watch::Receiver<crate::console::ConsoleHealth>,
    stop: &CancellationToken,
) {
    let (ctx, stop) = (ctx.clone(), stop.clone());
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
                Ok(tunnel) => session::session(tunnel, &ctx, &stop, handover, console).await,
                Err(e) => End::Reconnect(Reconnect::Failed(e.to_string())),
            },
        };
        ctx.links.down(0);
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = match end {
            End::Stopped => return,
            End::Switch(tunnel) => {
                next = Some(tunnel);
                continue;
            }
            End::Reconnect(Reconnect::Now) => {
                backoff.reset();
                restarting_until = Some(Instant::now() + RESTART_WINDOW);
                Duration::ZERO
            }
            End::Reconnect(why) => {
                if matches!(why, Reconnect::RelayRestarting) {
                    restarting_until = Some(Instant::now() + RESTART_WINDOW);
                }
                let reason = why.to_string();
                warn!("tunnel down: {reason}");
                ctx.state.send_replace(AgentState::Retrying { reason });
                match restarting_until {
                    Some(until) if Instant::now() < until => crate::backoff::jitter(RESTART_RETRY_CAP),
                    _ => backoff.next_delay(),
                }
            }
            End::Displaced(by) => {
                let reason = ctx.handler.live.displaced(by);
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
