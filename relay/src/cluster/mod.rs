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
//! headers, bodies streaming both ways with QUIC's flow control. A
//! zero-knowledge site's connection goes to the node holding its agent
//! still sealed, on a stream of its own (see `sealed`).
//! Connections to peers are pooled, one per peer.

mod forward;
mod head;
mod sealed;
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keyway_certs::PrivateCa;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use forward::ForwardBody;
pub use head::ForwardHead;

use crate::agents::AgentTable;
use crate::proxy::ProxyCtx;
use crate::registry::{Heartbeat, PeerNode, Registry};
use crate::streams::StreamPool;

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
}

/// The close code of a node's listener once it has answered everything
/// peers sent it (stopping).
const NODE_STOPPING: u32 = 2;

/// A peer's answer to a request for a site it holds no link for.
pub const NOT_HELD: &str = "keyway-not-held";
