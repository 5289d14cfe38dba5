//! The forwarding side: a request for a site held on another node goes to
//! that node over a pooled keep-alive stream, and to the next holder when
//! it safely can.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use super::serve::PeerStream;
use super::{
    Cluster, ForwardHead, Route, DIAL_TIMEOUT, MISSED_HEARTBEATS, NODE_STOPPING, NOT_HELD, PEER_KEEPALIVE, ROUTE_TTL,
};
use crate::proxy::body::GiveBack;
use crate::proxy::error::{Offline, ProxyError, TunnelFailure};
use crate::registry::PeerNode;
use crate::streams::{Lease, StreamPool};

impl Cluster {
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
    pub(super) async fn holders(&self, site: &str) -> Vec<PeerNode> {
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
    pub(super) fn forget(&self, site: &str, node: &str) {
        if let Some(route) = self.routes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(site) {
            route.holders.retain(|h| h.name != node);
            route.read = None;
        }
    }

    /// Whether `peer`'s pooled connection has received nothing for two
    /// keep-alive intervals (a peer that died without a word).
    pub(super) fn quiet(&self, peer: &str) -> bool {
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
    pub(super) async fn open(&self, peer: &PeerNode) -> anyhow::Result<(PeerStream, quinn::Connection)> {
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

/// Whether `conn`'s peer closed it as a stopping node.
fn stopped(conn: &quinn::Connection) -> bool {
    matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == NODE_STOPPING.into())
}

/// A request body as forwarded: the client's, or none (sent again).
pub(super) type ForwardBody = Either<Incoming, Empty<bytes::Bytes>>;

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
