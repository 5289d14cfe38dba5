//! One connection's life: `Hello`, then serve the relay's streams, answer
//! its control messages and report the console, until something ends it;
//! then retire the connection without cutting requests under way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use keyway_proto::control::{read_msg, write_msg, ControlMsg, HubReport};
use keyway_proto::{CloseCode, PROTOCOL_VERSION};
use keyway_transport::dial::{self, DialError};
use keyway_transport::quic::QuicTunnel;
use keyway_transport::{peer_close, Closed, TransportKind, Tunnel, TunnelStream};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, debug_span, info, warn, Instrument};

use super::{AgentState, End, Reconnect, Uplink, HANDSHAKE_TIMEOUT, STOP_GRACE};
use crate::config::TransportMode;
use crate::console::ConsoleHealth;
use crate::handler::Handler;

/// Serves `tunnel` until it ends; `handover` says it replaces a live one.
pub(super) async fn session(
    tunnel: Arc<dyn Tunnel>,
    ctx: &Uplink,
    stop: &CancellationToken,
    handover: bool,
    console: &mut watch::Receiver<ConsoleHealth>,
) -> End {
    let mut health = *console.borrow_and_update();
    let (control, site, nodes, mut buf) = match timeout(HANDSHAKE_TIMEOUT, hello(&*tunnel, health, handover)).await {
        Ok(Ok(v)) => v,
        Ok(Err(HelloError::Refused(reason))) => return End::Refused(reason),
        Ok(Err(HelloError::Failed(e))) => return ended(&*tunnel, format!("{e:#}")),
        Err(_) => return End::Reconnect(Reconnect::Failed("the relay did not answer Hello in time".into())),
    };
    let transport = tunnel.kind();
    info!(site, relay = %tunnel.remote_address(), %transport, link = ctx.index, "tunnel up");
    // Up before the nodes are told, so no other link takes this node.
    ctx.links.up(ctx.index, tunnel.remote_address(), transport);
    ctx.links.learn(&nodes);
    if ctx.index == 0 {
        ctx.handler.live.set_tunnel(Some(tunnel.clone()));
    }
    ctx.handler.live.set_console(health);
    ctx.state.send_replace(AgentState::Online {
        site: site.clone(),
        transport,
    });
    let (mut recv, mut send) = tokio::io::split(control);

    let requests = TaskTracker::new();
    let leaving = stop.child_token();
    let mut probe = QuicProbe::new(ctx, transport);
    let mut watching_console = true;
    let hub = ctx.handler.events.as_ref().map(|s| s.hub().clone());
    let mut hub_live = hub.as_ref().map(|h| h.upstream_live());
    let mut hub_sent = None;
    let mut hub_sent_at = tokio::time::Instant::now();
    let mut hub_tick = tokio::time::interval(HUB_CHECK);
    hub_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        // The hub's state goes to the relay when its console link comes or
        // goes, within HUB_CHECK when its subscribers change, and with new
        // events at most every HUB_EVENTS_EVERY.
        let hub_changed = async {
            match hub_live.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = hub_changed => {
                if !alive {
                    hub_live = None;
                }
                let now = hub_report(hub.as_deref());
                if now != hub_sent {
                    let status = status_msg(health, now.clone());
                    if let Err(e) = write_msg(&mut send, &status).await {
                        break ended(&*tunnel, format!("control stream: {e}"));
                    }
                    (hub_sent, hub_sent_at) = (now, tokio::time::Instant::now());
                }
            }
            _ = hub_tick.tick(), if hub.is_some() => {
                let now = hub_report(hub.as_deref());
                if hub_due(now.as_ref(), hub_sent.as_ref(), hub_sent_at.elapsed()) {
                    if let Err(e) = write_msg(&mut send, &status_msg(health, now.clone())).await {
                        break ended(&*tunnel, format!("control stream: {e}"));
                    }
                    (hub_sent, hub_sent_at) = (now, tokio::time::Instant::now());
                }
            }
            changed = console.changed(), if watching_console => {
                if changed.is_err() {
                    // The checker stops with the agent: the stop branch
                    // below drains; this one just goes quiet.
                    watching_console = false;
                    continue;
                }
                let now = *console.borrow_and_update();
                if now == health {
                    continue;
                }
                health = now;
                match health.problem() {
                    None => info!("console reachable again"),
                    Some(p) => warn!("console: {p}"),
                }
                // A control stream that cannot take a message is a dead
                // tunnel: the relay would keep routing to it unaware.
                let status = status_msg(health, hub_report(hub.as_deref()));
                if let Err(e) = write_msg(&mut send, &status).await {
                    break ended(&*tunnel, format!("control stream: {e}"));
                }
            }
            quic = probe.next(ctx) => {
                info!("QUIC reaches the relay again; moving the tunnel off TCP");
                ctx.udp_blocked.store(false, Ordering::Relaxed);
                break End::Switch(quic);
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
                Ok(stream) => serve(&requests, stream, &ctx.handler, &leaving),
                Err(e) => break ended(&*tunnel, format!("connection lost: {e}")),
            },
            msg = read_msg(&mut recv, &mut buf) => match msg {
                Ok(ControlMsg::Ping { nonce }) => {
                    if let Err(e) = write_msg(&mut send, &ControlMsg::Pong { nonce }).await {
                        break ended(&*tunnel, format!("control stream: {e}"));
                    }
                }
                Ok(ControlMsg::Pong { .. }) => {}
                Ok(ControlMsg::Nodes { nodes }) => ctx.links.learn(&nodes),
                Ok(ControlMsg::Limits { limits }) => {
                    debug!(?limits, "the relay's edge limits");
                    ctx.handler.edge.set(&site, limits);
                }
                Ok(ControlMsg::Drain { reason }) => {
                    info!(reason, "relay asked to drain; reconnecting");
                    break End::Reconnect(Reconnect::Now);
                }
                Ok(other) => debug!("ignoring control message {other:?}"),
                Err(e) => break ended(&*tunnel, format!("control stream: {e}")),
            },
        }
    };
    probe.abort();
    // The next session (or none) publishes its own tunnel.
    if ctx.index == 0 {
        ctx.handler.live.set_tunnel(None);
    }
    let old = Retiring {
        tunnel,
        recv,
        send,
        buf,
        requests,
        leaving,
    };
    match &end {
        // Until the relay has read the handover Hello it may still send
        // requests here: they are served until it says Drain.
        End::Switch(_) => tokio::spawn(old.retire(Some(ctx.handler.clone()), "moved to a new connection")),
        End::Reconnect(_) => tokio::spawn(old.retire(None, "drained")),
        _ => return end,
    };
    end
}

/// How often the event hub's subscribers are compared with the last report.
const HUB_CHECK: Duration = Duration::from_secs(1);
/// How often, at most, new events alone are reported (a busy building's
/// doors would otherwise send one a second).
const HUB_EVENTS_EVERY: Duration = Duration::from_secs(30);

/// Whether the hub's state `now` is worth a report after `sent`, `since` ago.
fn hub_due(now: Option<&HubReport>, sent: Option<&HubReport>, since: Duration) -> bool {
    match (now, sent) {
        (Some(n), Some(s)) => {
            (n.upstream, n.subscribers) != (s.upstream, s.subscribers)
                || (n.last_seq != s.last_seq && since >= HUB_EVENTS_EVERY)
        }
        (n, s) => n != s,
    }
}

/// The event hub's state for the relay (none without a hub).
fn hub_report(hub: Option<&crate::hub::Hub>) -> Option<HubReport> {
    hub.map(|h| HubReport {
        upstream: *h.upstream_live().borrow(),
        subscribers: u32::try_from(h.subscribers()).unwrap_or(u32::MAX),
        last_seq: h.last_seq(),
    })
}

fn status_msg(health: ConsoleHealth, hub: Option<HubReport>) -> ControlMsg {
    ControlMsg::Status {
        console_ok: health.is_ok(),
        console_problem: health.problem(),
        hub,
    }
}

/// Serves one relay-opened stream in a task of `requests`; a
/// zero-knowledge client's connection takes no new request once `leaving`
/// is cancelled (the agent stops, or this connection is being retired and
/// the client reconnects through the new one).
fn serve(requests: &TaskTracker, stream: TunnelStream, handler: &Arc<Handler>, leaving: &CancellationToken) {
    let span = debug_span!("stream", id = stream.id);
    let leaving = crate::edge::Leaving {
        token: leaving.clone(),
        tasks: requests.clone(),
        ping_every: keyway_proto::websocket::DEFAULT_PING_EVERY,
    };
    requests.spawn(super::stream::serve(stream, handler.clone(), leaving).instrument(span));
}

/// A connection the agent has left, with what is still under way on it.
struct Retiring {
    tunnel: Arc<dyn Tunnel>,
    recv: ReadHalf<TunnelStream>,
    send: WriteHalf<TunnelStream>,
    buf: BytesMut,
    requests: TaskTracker,
    leaving: CancellationToken,
}

impl Retiring {
    /// Lets the requests under way finish (within [`STOP_GRACE`]), then
    /// closes the connection. With a `handler`, streams the relay still
    /// opens are served too, until it says `Drain` and a second passes
    /// without a new one.
    async fn retire(mut self, handler: Option<Arc<Handler>>, reason: &'static str) {
        if let Some(handler) = handler {
            let mut drained = false;
            loop {
                let quiet = if drained { Duration::from_secs(1) } else { STOP_GRACE };
                tokio::select! {
                    stream = self.tunnel.accept() => match stream {
                        Ok(stream) => serve(&self.requests, stream, &handler, &self.leaving),
                        Err(_) => break,
                    },
                    msg = read_msg(&mut self.recv, &mut self.buf), if !drained => {
                        drained = matches!(msg, Ok(ControlMsg::Drain { .. }) | Err(_));
                    }
                    _ = tokio::time::sleep(quiet) => break,
                }
            }
        }
        // The relay sends nothing new here now: zero-knowledge clients'
        // idle connections close, so they reconnect through the new one.
        self.leaving.cancel();
        self.requests.close();
        let _ = timeout(STOP_GRACE, self.requests.wait()).await;
        drop(self.send);
        self.tunnel.close(CloseCode::Normal, reason);
    }
}

/// In `auto` mode on TCP, a QUIC handshake tried every `quic_probe` in the
/// background; one that completes takes the tunnel back to QUIC.
struct QuicProbe {
    on: bool,
    every: tokio::time::Interval,
    task: Option<JoinHandle<Result<Arc<dyn Tunnel>, DialError>>>,
}

impl QuicProbe {
    fn new(ctx: &Uplink, transport: TransportKind) -> Self {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + ctx.quic_probe, ctx.quic_probe);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            on: ctx.mode == TransportMode::Auto && transport == TransportKind::Tcp,
            every,
            task: None,
        }
    }

    /// A QUIC tunnel, once a probe completes a handshake (never, when
    /// probing is off). Dropped mid-way, the probe under way is kept.
    async fn next(&mut self, ctx: &Uplink) -> Arc<dyn Tunnel> {
        if !self.on {
            return std::future::pending().await;
        }
        loop {
            let task = match &mut self.task {
                Some(task) => task,
                None => {
                    self.every.tick().await;
                    let (endpoint, relay, name, deadline) = (
                        ctx.endpoint.clone(),
                        ctx.relay.clone(),
                        ctx.relay_name.clone(),
                        ctx.quic_deadline,
                    );
                    self.task.insert(tokio::spawn(async move {
                        let conn = dial::quic(&endpoint, &relay, &name, deadline).await?;
                        Ok(Arc::new(QuicTunnel(conn)) as Arc<dyn Tunnel>)
                    }))
                }
            };
            let result = task.await;
            self.task = None;
            match result {
                Ok(Ok(quic)) => return quic,
                Ok(Err(e)) => debug!("QUIC still unavailable: {e}"),
                Err(e) => debug!("QUIC probe failed: {e}"),
            }
        }
    }

    fn abort(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Why `Hello` got no `Welcome`.
pub(crate) enum HelloError {
    /// The relay answered `Refused` (its reason).
    Refused(String),
    /// The exchange failed.
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for HelloError {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(reason) => write!(f, "relay refused: {reason}"),
            Self::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// Opens the control stream and exchanges Hello/Welcome; returns the
/// bytes read past the Welcome with the stream.
pub(crate) async fn hello(
    tunnel: &dyn Tunnel,
    console: ConsoleHealth,
    handover: bool,
) -> Result<(TunnelStream, String, Vec<String>, BytesMut), HelloError> {
    let mut control = tunnel.open_control().await?;
    let hello = ControlMsg::Hello {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        console_ok: console.is_ok(),
        console_problem: console.problem(),
        handover,
        nodes: true,
        limits: true,
    };
    write_msg(&mut control, &hello).await?;
    let mut buf = BytesMut::new();
    match read_msg(&mut control, &mut buf).await? {
        // What came with the Welcome (its `Limits`) is the session's to read.
        ControlMsg::Welcome { site, nodes, .. } => Ok((control, site, nodes, buf)),
        ControlMsg::Refused { reason } => {
            tunnel.close(CloseCode::Normal, "refused");
            Err(HelloError::Refused(reason))
        }
        other => Err(anyhow::anyhow!("expected Welcome, got {other:?}").into()),
    }
}

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
        return End::Reconnect(Reconnect::Now);
    }
    match peer_close(tunnel) {
        Some((CloseCode::Replaced, by)) => End::Displaced(by),
        Some((CloseCode::Shutdown, _)) => End::Reconnect(Reconnect::RelayRestarting),
        _ => End::Reconnect(Reconnect::Failed(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_reports_follow_subscribers_at_once_and_events_slowly() {
        let r = |upstream, subscribers, last_seq| HubReport {
            upstream,
            subscribers,
            last_seq,
        };
        let quick = Duration::from_secs(1);
        assert!(hub_due(Some(&r(true, 0, 0)), None, quick), "the first one");
        assert!(!hub_due(Some(&r(true, 0, 0)), Some(&r(true, 0, 0)), HUB_EVENTS_EVERY));
        assert!(hub_due(Some(&r(false, 0, 0)), Some(&r(true, 0, 0)), quick));
        assert!(hub_due(Some(&r(true, 1, 0)), Some(&r(true, 0, 0)), quick));
        assert!(!hub_due(Some(&r(true, 0, 9)), Some(&r(true, 0, 0)), quick));
        assert!(hub_due(Some(&r(true, 0, 9)), Some(&r(true, 0, 0)), HUB_EVENTS_EVERY));
        assert!(!hub_due(None, None, quick));
    }
}
