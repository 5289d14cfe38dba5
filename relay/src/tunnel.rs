//! The QUIC listener agents dial into, the TLS/TCP tunnels the HTTPS front
//! hands over, and each agent's control stream (the same for both).
//!
//! An agent connection is accepted only with a client certificate from the
//! relay's CA naming a site this relay serves, and only after a `Hello` of the
//! same protocol version. It then sits in the [`AgentTable`] until it closes,
//! is replaced by a newer connection of the same site, or is drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use keyway_proto::control::{read_msg, write_msg, ControlMsg};
use keyway_proto::edge::Limits;
use keyway_proto::{CloseCode, ALPN_PAIR, PROTOCOL_VERSION, SILENT_LIMIT};
use keyway_transport::h2::H2Tunnel;
use keyway_transport::quic::QuicTunnel;
use keyway_transport::{TransportKind, Tunnel, TunnelStream};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::agents::{AgentLink, AgentTable};
use crate::pairing::PairingCtx;
use crate::registry::{now, Registry};
use crate::sites::SiteCache;

/// Time allowed for the QUIC handshake and the `Hello` exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping interval of TCP tunnels (QUIC tunnels use the transport's keep-alive).
const KEEPALIVE: Duration = Duration::from_secs(3);

/// What the tunnel listener needs.
pub struct TunnelCtx {
    /// The edge's limits: an agent terminating its site's TLS applies them
    /// itself, as this relay reads them (sent as `Limits`).
    pub edge: Arc<crate::limits::Edge>,
    /// Sites and their current certificates.
    pub sites: SiteCache,
    /// The registry (connection records).
    pub registry: Registry,
    /// Live agents.
    pub agents: AgentTable,
    /// Pairing, for `keyway-pair/1` connections.
    pub pairing: Arc<PairingCtx>,
    /// The cluster this relay is a node of, if any (its live nodes go to
    /// agents in `Welcome`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Accepts agent connections until `stop` is cancelled.
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<TunnelCtx>, stop: CancellationToken, tracker: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        let stop = stop.clone();
        tracker.spawn(
            async move {
                if let Err(e) = handle(incoming, ctx, stop).await {
                    info!("agent connection ended: {e:#}");
                }
            }
            .instrument(info_span!("agent", %remote, site = tracing::field::Empty)),
        );
    }
    // Shutting down: turn newcomers away at once (until the endpoint closes),
    // so an agent told to drain finds the replacement process quickly
    // instead of waiting out a handshake with this one.
    while let Some(incoming) = endpoint.accept().await {
        incoming.refuse();
    }
}

async fn handle(incoming: quinn::Incoming, ctx: Arc<TunnelCtx>, stop: CancellationToken) -> anyhow::Result<()> {
    let conn = timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| anyhow::anyhow!("QUIC handshake timed out"))??;
    if alpn(&conn).as_deref() == Some(ALPN_PAIR) {
        crate::pairing::serve(conn, ctx.pairing.clone()).await;
        return Ok(());
    }
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|c| *c);
    handle_tunnel(Arc::new(QuicTunnel(conn)), certs, ctx, stop).await
}

/// Serves an agent that connected over TLS/TCP (ALPN `keyway/1` on the
/// HTTPS port) until it goes away.
pub async fn handle_tcp<S>(
    tls: tokio_rustls::server::TlsStream<S>,
    peer: SocketAddr,
    ctx: Arc<TunnelCtx>,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let certs = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
    let tunnel = timeout(HANDSHAKE_TIMEOUT, H2Tunnel::relay(tls, peer, KEEPALIVE))
        .await
        .map_err(|_| anyhow::anyhow!("HTTP/2 handshake timed out"))??;
    handle_tunnel(Arc::new(tunnel), certs, ctx, stop).await
}

async fn handle_tunnel(
    tunnel: Arc<dyn Tunnel>,
    certs: Option<Vec<CertificateDer<'static>>>,
    ctx: Arc<TunnelCtx>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (site, serial) = match certs.as_deref().and_then(<[_]>::first) {
        Some(leaf) => (
            keyway_certs::identity::site_from_cert(leaf)?,
            keyway_certs::identity::serial_hex(leaf)?,
        ),
        None => {
            tunnel.close(CloseCode::ProtocolError, "a tunnel needs an agent certificate");
            anyhow::bail!("agent presented no certificate");
        }
    };
    let transport = tunnel.kind();
    tracing::Span::current().record("site", site.as_str());
    if ctx.sites.current_serial(&site).as_deref() != Some(serial.as_str()) {
        // The cache trails the registry by up to a poll (a pairing by
        // another process): ask the registry before refusing anyone.
        ctx.sites.reload(&ctx.registry).await?;
    }
    if !ctx.sites.contains(&site) {
        tunnel.close(CloseCode::UnknownSite, "unknown site");
        anyhow::bail!("certificate names site {site:?}, which this relay does not serve");
    }
    if ctx.sites.current_serial(&site).as_deref() != Some(serial.as_str()) {
        tunnel.close(CloseCode::Revoked, "certificate revoked");
        anyhow::bail!("site {site:?} presented a revoked or superseded certificate ({serial})");
    }

    let control = timeout(HANDSHAKE_TIMEOUT, tunnel.accept_control())
        .await
        .map_err(|_| anyhow::anyhow!("no control stream within {HANDSHAKE_TIMEOUT:?}"))??;
    let (mut recv, mut send) = tokio::io::split(control);
    let mut buf = BytesMut::new();
    let hello = timeout(HANDSHAKE_TIMEOUT, read_msg(&mut recv, &mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("no Hello within {HANDSHAKE_TIMEOUT:?}"))??;
    let (agent_version, console_ok, console_problem, handover, takes_nodes, takes_limits) = match hello {
        ControlMsg::Hello {
            version,
            agent_version,
            console_ok,
            console_problem,
            handover,
            nodes,
            limits,
        } if version == PROTOCOL_VERSION => (agent_version, console_ok, console_problem, handover, nodes, limits),
        ControlMsg::Hello {
            version, agent_version, ..
        } => {
            let reason = format!(
                "agent {agent_version} speaks protocol {version}, this relay ({}) speaks {PROTOCOL_VERSION}: update the agent",
                env!("CARGO_PKG_VERSION")
            );
            let _ = write_msg(&mut send, &ControlMsg::Refused { reason: reason.clone() }).await;
            let _ = send.shutdown().await;
            // Give the agent a moment to read the refusal and hang up itself;
            // closing at once would discard the unsent message (the close
            // frame repeats the reason for an agent that misses it).
            let _ = timeout(Duration::from_secs(2), tunnel.closed()).await;
            tunnel.close(CloseCode::VersionMismatch, &reason);
            anyhow::bail!(reason);
        }
        ControlMsg::TimeQuery => {
            // `keyway-agent doctor` checking its clock: answer, then let the
            // agent hang up; this connection is not the site's tunnel.
            let unix_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            write_msg(&mut send, &ControlMsg::Time { unix_ms }).await?;
            let _ = send.shutdown().await;
            let _ = timeout(Duration::from_secs(2), tunnel.closed()).await;
            return Ok(());
        }
        ControlMsg::Unpair => {
            // `keyway-agent unpair` on its own connection: revoke without
            // taking the site's tunnel (the running agent would take it
            // back first, and the unpair would never be confirmed); the
            // running agent's tunnel is closed by `enforce`.
            revoke_unpaired(&ctx, &site).await?;
            tunnel.close(CloseCode::Revoked, "certificate revoked");
            return Ok(());
        }
        other => {
            tunnel.close(CloseCode::ProtocolError, "expected Hello");
            anyhow::bail!("expected Hello, got {other:?}");
        }
    };
    // Subscribed before the nodes are read for the Welcome: a change
    // between the two (a heartbeat while this handshake runs) is then sent
    // as `Nodes`, not lost until the next one.
    let mut node_changes = ctx
        .cluster
        .as_ref()
        .filter(|_| takes_nodes)
        .map(|c| c.agent_nodes_changes());
    let nodes = match &mut node_changes {
        Some(rx) => rx.borrow_and_update().clone(),
        None => ctx.cluster.as_ref().map(|c| c.agent_nodes()).unwrap_or_default(),
    };
    write_msg(
        &mut send,
        &ControlMsg::Welcome {
            version: PROTOCOL_VERSION,
            relay_version: env!("CARGO_PKG_VERSION").into(),
            site: site.clone(),
            nodes,
        },
    )
    .await?;
    // Subscribed before the limits are read, as the nodes are.
    let limits_changes = takes_limits.then(|| ctx.sites.limits_changed());
    let mut limits = None;
    if takes_limits {
        limits = Some(send_limits(&mut send, &ctx.edge, &site, None).await?);
    }

    let drain = stop.child_token();
    let hub = Arc::<std::sync::Mutex<Option<keyway_proto::control::HubReport>>>::default();
    let link = AgentLink {
        hub: hub.clone(),
        id: ctx.agents.next_id(),
        conn: tunnel.clone(),
        serial,
        agent_version: agent_version.clone(),
        since: SystemTime::now(),
        drain: drain.clone(),
        pool: Default::default(),
    };
    let id = link.id;
    if let Some(old) = ctx.agents.insert(&site, link) {
        if handover {
            // The same agent moving to a better transport: new requests go
            // to the new connection from now on; the old one finishes its
            // in-flight requests and is closed by the agent.
            info!(old = old.id, %transport, "the agent moved its tunnel to a new connection");
            old.drain.cancel();
        } else {
            // The agent only dials again once it has given up on its previous
            // connection (or was told to drain, which already took that one out
            // of the table), so the old one is stale or belongs to a second agent
            // with the same identity: close it rather than let it linger.
            let (was, now_at) = (old.conn.remote_address(), tunnel.remote_address());
            info!(
                old = old.id,
                %was,
                "a newer connection for this site, from {now_at}, replaces the previous one"
            );
            old.conn.close(
                CloseCode::Replaced,
                &format!("replaced by a newer connection for this site from {now_at}"),
            );
            let flap = (ctx.agents.displacements).replaced(&site, was, now_at, tokio::time::Instant::now());
            if let Some(said) = flap {
                warn!(site, "{said}");
                record_duplicate(&ctx.registry, &site, Some(said)).await;
            }
        }
    }
    info!(site, agent_version, %transport, "agent online");
    crate::metrics::METRICS.agent_connects.inc();
    crate::metrics::METRICS.agents.inc();
    record_seen(&ctx.registry, &site, &agent_version, Some(transport)).await;
    record_console(&ctx.registry, &site, console_ok, console_problem.clone()).await;
    let reports = Reports {
        console: (console_ok, console_problem),
        hub,
        limits,
        limits_changes,
    };

    // A connection that holds for a window settles any suspicion of a
    // second agent.
    let settle = async {
        tokio::time::sleep(crate::duplicates::WINDOW).await;
        if ctx.agents.get(&site).is_some_and(|l| l.id == id) {
            ctx.agents.displacements.settled(&site);
            record_duplicate(&ctx.registry, &site, None).await;
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    let result = tokio::select! {
        never = settle => match never {},
        r = control_loop(&mut send, &mut recv, &mut buf, &drain, &ctx, &site, node_changes, reports) => r,
        silent = watch_silence(&*tunnel) => {
            // Requests waiting on it fail now with a 503, not at the idle timeout.
            warn!(site, "agent silent for {silent:?}: dropping its tunnel");
            tunnel.close(CloseCode::Silent, "the relay heard nothing from the agent");
            Err(anyhow::anyhow!("agent silent for {silent:?}"))
        }
    };
    if ctx.agents.get(&site).is_none_or(|l| l.id == id) {
        record_seen(&ctx.registry, &site, &agent_version, None).await;
    }
    ctx.agents.remove_if(&site, id);
    info!(site, "agent offline");
    crate::metrics::METRICS.agents.dec();
    // In-flight requests on a drained connection finish before it closes.
    if drain.is_cancelled() {
        let _ = send.shutdown().await;
        tunnel.closed().await;
    }
    result
}

/// Resolves once nothing has arrived from the agent for [`SILENT_LIMIT`]
/// (the agent sends a keep-alive every [`keyway_proto::AGENT_KEEPALIVE`]).
async fn watch_silence(tunnel: &dyn keyway_transport::Tunnel) -> Duration {
    let mut tick = tokio::time::interval(SILENCE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last, mut since) = (tunnel.heard(), tokio::time::Instant::now());
    loop {
        tick.tick().await;
        let now = tunnel.heard();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= SILENT_LIMIT {
            return since.elapsed();
        }
    }
}

/// How often each link's silence is checked.
const SILENCE_CHECK: Duration = Duration::from_millis(200);

/// What the agent last reported on this link.
struct Reports {
    /// The console's state as last recorded in the registry.
    console: (bool, Option<String>),
    /// The event hub's, kept on the link.
    hub: Arc<std::sync::Mutex<Option<keyway_proto::control::HubReport>>>,
    /// The limits last sent, when the agent takes them.
    limits: Option<Limits>,
    /// Registry limit changes, when the agent takes them.
    limits_changes: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Sends `site`'s limits as the edge reads them now, unless they are
/// `sent` already; returns what the agent holds.
async fn send_limits(
    send: &mut WriteHalf<TunnelStream>,
    edge: &crate::limits::Edge,
    site: &str,
    sent: Option<Limits>,
) -> anyhow::Result<Limits> {
    let limits = edge.limits(site);
    if sent.as_ref() != Some(&limits) {
        write_msg(send, &ControlMsg::Limits { limits: limits.clone() }).await?;
    }
    Ok(limits)
}

#[allow(clippy::too_many_arguments)]
async fn control_loop(
    send: &mut WriteHalf<TunnelStream>,
    recv: &mut ReadHalf<TunnelStream>,
    buf: &mut BytesMut,
    drain: &CancellationToken,
    ctx: &TunnelCtx,
    site: &str,
    mut changes: Option<tokio::sync::watch::Receiver<Vec<String>>>,
    mut reports: Reports,
) -> anyhow::Result<()> {
    let registry = &ctx.registry;
    // In a cluster, an agent that takes them hears of every change of nodes.
    let cluster = ctx.cluster.as_ref().filter(|_| changes.is_some());
    let nodes_changed = async |rx: &mut Option<tokio::sync::watch::Receiver<Vec<String>>>| match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    };
    let limits_changed = async |rx: &mut Option<tokio::sync::watch::Receiver<u64>>| match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            true = limits_changed(&mut reports.limits_changes) => {
                reports.limits = Some(send_limits(send, &ctx.edge, site, reports.limits.take()).await?);
            }
            true = nodes_changed(&mut changes) => {
                let nodes = cluster.map(|c| c.agent_nodes()).unwrap_or_default();
                write_msg(send, &ControlMsg::Nodes { nodes }).await?;
            }
            _ = drain.cancelled() => {
                write_msg(send, &ControlMsg::Drain { reason: "relay is draining this connection".into() }).await?;
                return Ok(());
            }
            // Cancel-safe: partial frames stay in `buf`.
            msg = read_msg(recv, buf) => match msg? {
                ControlMsg::Ping { nonce } => write_msg(send, &ControlMsg::Pong { nonce }).await?,
                ControlMsg::Pong { .. } => {}
                ControlMsg::Status { console_ok, console_problem, hub } => {
                    if let Some(hub) = hub {
                        debug!(upstream = hub.upstream, subscribers = hub.subscribers, "agent reports its event hub");
                        *reports.hub.lock().unwrap_or_else(|p| p.into_inner()) = Some(hub);
                    }
                    // The registry hears of the console only when it changes
                    // (hub reports come more often).
                    let console = (console_ok, console_problem);
                    if console != reports.console {
                        info!(console_ok, problem = console.1.as_deref().unwrap_or(""), "agent reports the console's state");
                        record_console(registry, site, console.0, console.1.clone()).await;
                        reports.console = console;
                    }
                }
                ControlMsg::Drain { reason } => {
                    info!(reason, "agent is draining");
                    return Ok(());
                }
                ControlMsg::Unpair => {
                    revoke_unpaired(ctx, site).await?;
                    return Ok(());
                }
                other => warn!("ignoring unexpected control message {other:?}"),
            }
        }
    }
}

/// The ALPN the connection negotiated.
fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Notes whether the agent can reach its console, and what is wrong with
/// it if something is (best effort).
async fn record_console(registry: &Registry, site: &str, ok: bool, problem: Option<String>) {
    let site = site.to_string();
    if let Err(e) = registry
        .call(move |s| s.record_console(&site, ok, problem.as_deref()))
        .await
    {
        // An outage is logged once, by the registry.
        if !e.is_unavailable() {
            warn!("could not record the console's state: {e}");
        }
    }
}

/// An agent unpaired itself: its certificate is revoked now, and any
/// tunnel it still holds is closed.
async fn revoke_unpaired(ctx: &TunnelCtx, site: &str) -> anyhow::Result<()> {
    info!(site, "agent unpaired itself: revoking its certificate");
    let s = site.to_string();
    ctx.registry.call(move |r| r.revoke(&s, now())).await?;
    ctx.sites.reload(&ctx.registry).await?;
    crate::sites::enforce(&ctx.sites, &ctx.agents);
    Ok(())
}

/// Records (or clears) two agents seen with one identity (best effort).
async fn record_duplicate(registry: &Registry, site: &str, duplicate: Option<String>) {
    let site = site.to_string();
    if let Err(e) = registry
        .call(move |s| s.record_duplicate(&site, duplicate.as_deref()))
        .await
    {
        // An outage is logged once, by the registry.
        if !e.is_unavailable() {
            warn!("could not record the duplicate agent: {e}");
        }
    }
}

/// Notes an agent's connection state (online over a transport, or offline)
/// in the registry (best effort).
async fn record_seen(registry: &Registry, site: &str, version: &str, online: Option<TransportKind>) {
    let (site, version) = (site.to_string(), version.to_string());
    let transport = online.map(TransportKind::as_str);
    if let Err(e) = registry
        .call(move |s| s.record_seen(&site, &version, transport, now()))
        .await
    {
        // An outage is logged once, by the registry.
        if !e.is_unavailable() {
            warn!("could not record the agent's state: {e}");
        }
    }
}

/// QUIC transport settings for agent connections.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = keyway_transport::quic::transport_config();
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    // Agents open only the control stream; requests are relay-opened.
    t.max_concurrent_bidi_streams(4u32.into());
    // What an agent sends on one stream (an export, a response) waits here
    // only while the integration reads slower than the agent writes: 1 MB
    // a stream bounds what the relay holds per response (quinn keeps the
    // received datagrams' buffers, so 4 MB of window cost the relay up to
    // 12 MB of RSS in the memory test; 1 MB costs 0-3 MB) and still allows
    // ~25 MB/s a stream at 40 ms RTT, above a Pi's uplink.
    t.stream_receive_window(STREAM_WINDOW.into());
    t
}

/// The relay's receive window on each tunnel stream.
const STREAM_WINDOW: u32 = 1024 * 1024;
