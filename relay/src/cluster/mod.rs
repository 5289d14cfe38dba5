//! Several relays, one service (`[cluster]` in relay.toml).
//!
//! Nodes share one PostgreSQL registry. Each records itself there with a
//! heartbeat (its name, where its peers reach it, and the sites whose agent
//! links it holds); a node that misses three heartbeats is out of routing.
//! A request reaching a node that holds no link for its site is forwarded
//! to a node that does, over a node-to-node QUIC connection (mutual TLS:
//! each node's certificate is issued at start by the tunnel CA all nodes
//! share, and names the node, which an agent's certificate from the same CA
//! cannot). A forwarded request is served from the receiving node's own
//! link only: it is never forwarded twice. If no node holds a link, the
//! client gets the usual 503 at once.
//!
//! One request per QUIC stream, as HTTP/1.1 with a [`ForwardHead`] in its
//! headers, bodies streaming both ways with QUIC's flow control.
//! Connections to peers are pooled, one per peer.

mod head;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http::{Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyway_certs::PrivateCa;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use head::ForwardHead;

use crate::agents::AgentTable;
use crate::proxy::body::GiveBack;
use crate::proxy::error::{Offline, ProxyError, TunnelFailure};
use crate::proxy::ProxyCtx;
use crate::registry::{Heartbeat, PeerNode, Registry};
use crate::streams::{Lease, StreamPool};

/// How long a read of a site's holders is used before the registry is asked
/// again (a request per read would put the database on every forwarded
/// request's path).
const ROUTE_TTL: Duration = Duration::from_millis(250);
/// Heartbeats a node may miss before it is out of routing.
const MISSED_HEARTBEATS: u32 = 3;
/// How long a node certificate is valid. It is issued at every start and
/// its key never leaves the process, so this bounds only how long a node
/// may run without a restart: 30 days would cut a node that had simply
/// kept running off from its peers.
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A peer that does not complete its handshake in this long is skipped.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Keep-alive on node-to-node connections: a peer silent for two of these
/// is tried last; one silent for [`PEER_IDLE`] is dead, and requests on its
/// connection fail then (nodes of one cluster are a few milliseconds apart).
const PEER_KEEPALIVE: Duration = Duration::from_millis(250);
/// How long a silent node-to-node connection lives.
const PEER_IDLE: Duration = Duration::from_secs(1);
/// Requests one peer may have in flight on a connection.
const PEER_STREAMS: u32 = 4096;

/// `[cluster]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (a-z, 0-9, '-').
    pub node: String,
    /// UDP address of the node-to-node listener.
    pub peer_listen: SocketAddr,
    /// Where the other nodes reach this one, when not `peer_listen`
    /// (required when `peer_listen` is a wildcard address).
    #[serde(default)]
    pub peer_address: Option<SocketAddr>,
    /// Where agents reach this node (its QUIC and TLS/TCP port), told to
    /// agents so each keeps links to two nodes; defaults to `quic_listen`
    /// unless that is a wildcard address (then agents are not told).
    #[serde(default)]
    pub agent_address: Option<SocketAddr>,
    /// How often the node records itself and its agent links; a node silent
    /// for three of these is out of routing.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

impl ClusterConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::config::validate_site_name(&self.node).context("[cluster] node")?;
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(1) {
            bail!("[cluster] heartbeat: between 100ms and 1s (a node is out of routing after three)");
        }
        if self.advertised().ip().is_unspecified() {
            bail!(
                "[cluster] peer_listen is a wildcard address: set peer_address to where the other nodes reach this one"
            );
        }
        Ok(())
    }

    /// Where peers reach this node.
    pub fn advertised(&self) -> SocketAddr {
        self.peer_address.unwrap_or(self.peer_listen)
    }
}

/// This node's part of the cluster.
pub struct Cluster {
    node: String,
    advertised: String,
    /// Where agents reach this node, if they are told.
    agent_address: Option<String>,
    /// Where agents reach each live node, as of the last heartbeat.
    agent_nodes: watch::Sender<Vec<String>>,
    heartbeat: Duration,
    registry: Registry,
    agents: AgentTable,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    /// One connection per peer, by name.
    peers: Mutex<HashMap<String, quinn::Connection>>,
    /// Requests peers forwarded here, under way.
    streams: TaskTracker,
    /// Cancelled when the listener closes: idle keep-alive streams end,
    /// requests under way finish.
    closing: CancellationToken,
    /// Which nodes hold each site, as last read from the registry.
    routes: Mutex<HashMap<String, Route>>,
    /// When this node left the registry (stopping).
    left_at: Mutex<Option<Instant>>,
    /// Per peer: datagrams received on its connection, and when that count
    /// last grew (a peer killed without a word goes quiet).
    heard: Mutex<HashMap<String, (u64, Instant)>>,
    /// Per peer: idle keep-alive HTTP/1.1 connections on streams, so a
    /// forwarded request skips opening a stream and starting a connection
    /// on both ends.
    pools: Mutex<HashMap<String, Arc<StreamPool<ForwardBody>>>>,
}

/// The nodes holding a site's links, and when the registry said so.
struct Route {
    holders: Vec<PeerNode>,
    /// `None` once one of them failed: read again at the next request.
    read: Option<Instant>,
}

fn peer_transport() -> quinn::TransportConfig {
    let mut t = keyway_transport::quic::transport_config();
    t.keep_alive_interval(Some(PEER_KEEPALIVE));
    t.max_idle_timeout(Some(PEER_IDLE.try_into().expect("a second fits QUIC's varint")));
    t.max_concurrent_bidi_streams(PEER_STREAMS.into());
    t
}

impl Cluster {
    /// Binds the node-to-node listener with a node certificate issued now.
    pub fn bind(
        cfg: &ClusterConfig,
        quic_listen: SocketAddr,
        ca: &PrivateCa,
        registry: Registry,
        agents: AgentTable,
    ) -> anyhow::Result<Self> {
        let agent_address = cfg
            .agent_address
            .or(Some(quic_listen).filter(|a| !a.ip().is_unspecified()))
            .map(|a| a.to_string());
        if agent_address.is_none() {
            warn!("[cluster] agent_address is not set and quic_listen is a wildcard: agents keep one link, to the node DNS gives them");
        }
        let (chain, key) = ca
            .node_identity(&cfg.node, NODE_CERT_VALIDITY)
            .context("node certificate")?;
        let server_tls = keyway_certs::tls::node_server(chain.clone(), key.clone_key(), ca.cert_der())?;
        let client_tls = keyway_certs::tls::node_client(chain, key, ca.cert_der())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        server.transport_config(Arc::new(peer_transport()));
        let endpoint = quinn::Endpoint::server(server, cfg.peer_listen)
            .with_context(|| format!("could not bind the node-to-node listener (UDP) on {}", cfg.peer_listen))?;
        let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
        client.transport_config(Arc::new(peer_transport()));
        Ok(Self {
            node: cfg.node.clone(),
            advertised: cfg.advertised().to_string(),
            agent_address,
            agent_nodes: watch::channel(Vec::new()).0,
            heartbeat: cfg.heartbeat,
            registry,
            agents,
            endpoint,
            client,
            peers: Mutex::new(HashMap::new()),
            streams: TaskTracker::new(),
            closing: CancellationToken::new(),
            routes: Mutex::new(HashMap::new()),
            left_at: Mutex::new(None),
            heard: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Where agents reach each live node (for `Welcome`): as of the last
    /// heartbeat, and at least this node.
    pub fn agent_nodes(&self) -> Vec<String> {
        let known = self.agent_nodes.borrow().clone();
        match &self.agent_address {
            Some(me) if !known.contains(me) => [vec![me.clone()], known].concat(),
            _ => known,
        }
    }

    /// Changes whenever the live nodes do (for `Nodes` to connected agents).
    pub fn agent_nodes_changes(&self) -> watch::Receiver<Vec<String>> {
        self.agent_nodes.subscribe()
    }

    /// Heart-beats and serves peers until `stop`; then leaves the registry,
    /// so peers stop routing here, while the requests they already sent are
    /// still served: the listener stays open until [`Cluster::close`].
    pub async fn run(self: Arc<Self>, proxy: Arc<ProxyCtx>, stop: CancellationToken) {
        info!(node = %self.node, peers_at = %self.advertised, "cluster node up");
        tokio::spawn(self.clone().accept(proxy));
        self.heartbeats(stop).await;
        let node = self.node.clone();
        *self.left_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if let Err(e) = self.registry.call(move |s| s.node_leave(&node)).await {
            warn!("could not leave the cluster registry ({e}); peers drop this node after three heartbeats");
        }
    }

    /// Lets forwarded requests under way finish (within `grace`), then
    /// closes the node-to-node listener. Called once this node's own front
    /// has stopped.
    pub async fn close(&self, grace: Duration) {
        // Peers read routes at most ROUTE_TTL old: past twice that since
        // this node left, none routes here any more.
        let left = *self.left_at.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(left) = left {
            tokio::time::sleep_until((left + 2 * ROUTE_TTL).into()).await;
        }
        self.closing.cancel();
        self.streams.close();
        if tokio::time::timeout(grace, self.streams.wait()).await.is_err() {
            warn!("forwarded requests still open after {grace:?}");
        }
        self.endpoint.close(NODE_STOPPING.into(), b"node stopping");
        // Peers hear the close; the port is free once they have (a restart
        // binds it again).
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Records this node and its links now, at every heartbeat, and soon
    /// after any link comes or goes.
    async fn heartbeats(&self, stop: CancellationToken) {
        let mut changes = self.agents.subscribe();
        loop {
            let beat = Heartbeat {
                node: self.node.clone(),
                peer_addr: self.advertised.clone(),
                agent_addr: self.agent_address.clone(),
                sites: self.agents.all().into_iter().map(|(site, _)| site).collect(),
            };
            let fresh = self.heartbeat * MISSED_HEARTBEATS;
            match self.registry.call(move |s| s.node_heartbeat(&beat, fresh)).await {
                Ok(live) => {
                    self.agent_nodes.send_if_modified(|known| {
                        let changed = *known != live;
                        *known = live;
                        changed
                    });
                }
                Err(e) => debug!("heartbeat not recorded: {e}"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.heartbeat) => {}
                _ = changes.changed() => {}
            }
        }
    }

    async fn accept(self: Arc<Self>, proxy: Arc<ProxyCtx>) {
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
                    streams.spawn(serve_stream(
                        tokio::io::join(recv, send),
                        proxy.clone(),
                        closing.clone(),
                    ));
                }
            });
        }
    }

    /// Forwards a request for `site`, which has no link here, to a node
    /// that holds one; the 503 envelope when none does.
    pub async fn forward(
        &self,
        site: &str,
        req: Request<Incoming>,
        head: ForwardHead,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, Option<GiveBack>), ProxyError> {
        let offline = || ProxyError::AgentOffline {
            site: site.to_string(),
            when: Offline::NotConnected,
        };
        let mut holders = self.holders(site).await;
        // Freshest heartbeat first, but a peer gone quiet last.
        holders.sort_by_key(|h| self.quiet(&h.name));
        // A bodiless GET, HEAD or OPTIONS may go to the next holder when
        // the connection to a peer dies under it; anything else that may
        // have reached a peer (an unlock) is never sent twice.
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        // Nothing is sent until a stream is open, so a peer that cannot be
        // reached is skipped for the next. Once sent, a request stays with
        // that peer, unless the peer says it holds no link for the site (it
        // lost it since its last heartbeat) and the request has no body to
        // send again: then it goes to the next.
        let again = bodiless(&req).then(|| copy_of(&req));
        let mut req = Some(req.map(Either::Left));
        for holder in &holders {
            let pool = self.pool(&holder.name);
            let pooled = pool.take().zip(self.pooled_conn(&holder.name));
            let reused = pooled.is_some();
            let (mut sender, mut conn) = match pooled {
                Some(idle) => idle,
                None => match self.new_stream(holder).await {
                    Ok(fresh) => fresh,
                    Err(e) => {
                        info!(peer = %holder.name, "could not reach the node holding {site}: {e:#}");
                        self.forget(site, &holder.name);
                        continue;
                    }
                },
            };
            let Some(this) = req.take().or_else(|| again.as_ref().map(copy_of)) else {
                break;
            };
            let mut sent = send(&mut sender, head.clone(), this, timeout, site).await;
            // A pooled stream the peer closed before the request went out
            // (it restarted it, or is stopping): nothing was sent, so a new
            // stream may carry it.
            if let (Ok(Sent::Unsent(again)), true) = (&mut sent, reused) {
                let again = std::mem::replace(again, Request::new(Either::Right(Empty::new())));
                match self.new_stream(holder).await {
                    Ok((fresh, c)) => {
                        (sender, conn) = (fresh, c);
                        sent = send(&mut sender, head.clone(), again, timeout, site).await;
                    }
                    Err(e) => {
                        info!(peer = %holder.name, "could not reach the node holding {site}: {e:#}");
                        self.forget(site, &holder.name);
                        continue;
                    }
                }
            }
            let sent = sent.and_then(|s| match s {
                Sent::Answer(resp) => Ok(resp),
                Sent::Unsent(_) => Err(ProxyError::TunnelFailed(TunnelFailure::Stream {
                    site: site.to_string(),
                })),
            });
            let mut resp = match sent {
                Ok(resp) => resp,
                // The peer closed having answered everything it took: this
                // request never reached it.
                Err(_) if again.is_some() && stopped(&conn) => {
                    debug!(peer = %holder.name, "the peer stopped before taking the request; trying the next");
                    self.forget(site, &holder.name);
                    continue;
                }
                Err(_) if again.is_some() && safe && conn.close_reason().is_some() => {
                    info!(peer = %holder.name, "the connection to the node holding {site} died; trying the next");
                    self.forget(site, &holder.name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if resp.headers_mut().remove(NOT_HELD).is_some() {
                self.forget(site, &holder.name);
                if again.is_some() {
                    debug!(peer = %holder.name, "the peer no longer holds {site}; trying the next");
                    continue;
                }
            }
            // The stream carries the next request once this response has
            // ended; an upgraded one is a byte pipe now.
            let lease = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| {
                let lease = Lease::new(sender, pool);
                Box::new(move || lease.give_back()) as GiveBack
            });
            return Ok((resp, lease));
        }
        Err(offline())
    }

    /// The other nodes holding `site`: from the registry, read again once
    /// [`ROUTE_TTL`] old (or sooner, when one failed); while the registry
    /// cannot be reached, the last answer, however old, since sites already
    /// connected keep being served through an outage. A holder whose
    /// heartbeat is stale stays while this node's connection to it is
    /// open and not quiet: right after a database outage every node's
    /// heartbeat is stale until it writes again, and that is no sign of a
    /// node gone.
    async fn holders(&self, site: &str) -> Vec<PeerNode> {
        let cached = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
            .map(|r| (r.holders.clone(), r.read.is_some_and(|t| t.elapsed() < ROUTE_TTL)));
        if let Some((holders, true)) = &cached {
            return holders.clone();
        }
        let (s, me, fresh) = (site.to_string(), self.node.clone(), self.heartbeat * MISSED_HEARTBEATS);
        match self.registry.call(move |st| st.nodes_for_site(&s, &me, fresh)).await {
            Ok(listed) => {
                let holders: Vec<PeerNode> = listed
                    .into_iter()
                    .filter(|h| h.fresh || (self.pooled_conn(&h.name).is_some() && !self.quiet(&h.name)))
                    .collect();
                let route = Route {
                    holders: holders.clone(),
                    read: Some(Instant::now()),
                };
                self.routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(site.to_string(), route);
                holders
            }
            Err(e) => {
                debug!("cluster routing for {site} from memory: {e}");
                cached.map(|(h, _)| h).unwrap_or_default()
            }
        }
    }

    /// `node` failed `site`: it leaves the site's known holders, and the
    /// registry is asked again at the next request.
    fn forget(&self, site: &str, node: &str) {
        if let Some(route) = self.routes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(site) {
            route.holders.retain(|h| h.name != node);
            route.read = None;
        }
    }

    /// Whether `peer`'s pooled connection has received nothing for two
    /// keep-alive intervals (a peer that died without a word).
    fn quiet(&self, peer: &str) -> bool {
        let Some(conn) = self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(peer).cloned() else {
            return false;
        };
        let count = conn.stats().udp_rx.datagrams;
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = heard.get_mut(peer) else {
            heard.insert(peer.to_string(), (count, Instant::now()));
            return false;
        };
        if entry.0 != count {
            *entry = (count, Instant::now());
        }
        entry.1.elapsed() > 2 * PEER_KEEPALIVE
    }

    /// The pool of idle keep-alive streams to `peer`.
    fn pool(&self, peer: &str) -> Arc<StreamPool<ForwardBody>> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(peer) {
            return pool.clone();
        }
        pools.entry(peer.to_string()).or_default().clone()
    }

    /// The connection to `peer`, while it is open.
    fn pooled_conn(&self, peer: &str) -> Option<quinn::Connection> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(peer).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// A new HTTP/1.1 connection to `peer` on a new stream.
    async fn new_stream(&self, peer: &PeerNode) -> anyhow::Result<(Sender, quinn::Connection)> {
        let (io, conn) = self.open(peer).await?;
        let (sender, http) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = http.with_upgrades().await {
                debug!("node-to-node stream ended: {e}");
            }
        });
        Ok((sender, conn))
    }

    /// A new stream to `peer`, on its pooled connection (dialled if needed).
    async fn open(&self, peer: &PeerNode) -> anyhow::Result<(PeerStream, quinn::Connection)> {
        let pooled = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer.name)
            .cloned();
        let same_place = |c: &quinn::Connection| c.remote_address().to_string() == peer.peer_addr;
        if let Some(conn) = pooled.filter(|c| c.close_reason().is_none() && same_place(c)) {
            if let Ok((send, recv)) = conn.open_bi().await {
                return Ok((tokio::io::join(recv, send), conn));
            }
        }
        let addr: SocketAddr = peer
            .peer_addr
            .parse()
            .with_context(|| format!("node {} has the address {:?}", peer.name, peer.peer_addr))?;
        let server_name = keyway_certs::identity::node_server_name(&peer.name);
        let connecting = self.endpoint.connect_with(self.client.clone(), addr, &server_name)?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("no handshake with {addr} within {DIAL_TIMEOUT:?}"))??;
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.name.clone(), conn.clone());
        let (send, recv) = conn.open_bi().await?;
        Ok((tokio::io::join(recv, send), conn))
    }
}

/// The close code of a node's listener once it has answered everything
/// peers sent it (stopping).
const NODE_STOPPING: u32 = 2;

/// Whether `conn`'s peer closed it as a stopping node.
fn stopped(conn: &quinn::Connection) -> bool {
    matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == NODE_STOPPING.into())
}

/// A peer's answer to a request for a site it holds no link for.
pub const NOT_HELD: &str = "keyway-not-held";

/// A request body as forwarded: the client's, or none (sent again).
type ForwardBody = Either<Incoming, Empty<bytes::Bytes>>;

/// Whether a request carries no body (so it can be sent to another peer).
fn bodiless(req: &Request<Incoming>) -> bool {
    hyper::body::Body::is_end_stream(req.body())
        && req.headers().get(http::header::CONTENT_LENGTH).is_none_or(|v| v == "0")
        && !req.headers().contains_key(http::header::TRANSFER_ENCODING)
}

/// The head of `req` again, with no body.
fn copy_of<B>(req: &Request<B>) -> Request<ForwardBody> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// An HTTP/1.1 connection to a peer over one stream.
type Sender = hyper::client::conn::http1::SendRequest<ForwardBody>;

/// One node-to-node stream.
type PeerStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

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

/// What became of a request given to a peer's connection.
enum Sent {
    /// The peer's response head.
    Answer(Response<Incoming>),
    /// The connection closed before the request went out; here it is again.
    Unsent(Request<ForwardBody>),
}

/// Sends `req` to the peer on `sender` and reads its response head.
async fn send(
    sender: &mut Sender,
    head: ForwardHead,
    req: Request<ForwardBody>,
    timeout: Duration,
    site: &str,
) -> Result<Sent, ProxyError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        info!("forwarding to the node holding {site}: {what}: {e}");
        ProxyError::TunnelFailed(TunnelFailure::Stream { site: site.to_string() })
    };
    let (mut parts, body) = req.into_parts();
    // The head as it would enter a tunnel (origin form, HTTP/1.1, the
    // client's host, an upgrade asked again so its `101` makes the stream a
    // byte pipe), then where it comes from.
    crate::proxy::headers::for_tunnel(&mut parts, head.client, &head.request_id);
    head.set(&mut parts.headers);
    let req = Request::from_parts(parts, body);
    let exchange = async {
        if sender.ready().await.is_err() {
            return Ok(Sent::Unsent(req));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(Sent::Answer(resp)),
            Err(mut e) => match e.take_message() {
                Some(req) => Ok(Sent::Unsent(req)),
                None => Err(failed("request", &e.into_error())),
            },
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProxyError::Timeout {
            site: site.to_string(),
            after: timeout,
        })?
}

/// Serves one stream a peer opened: one HTTP/1.1 request, answered from
/// this node's own link for the site its [`ForwardHead`] names.
async fn serve_stream(io: PeerStream, proxy: Arc<ProxyCtx>, closing: CancellationToken) {
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
