//! Forwarding one integration request through the tunnel.
//!
//! [`handle`] is the hyper service of the TCP port. `serve` walks a
//! request downhill: `route` picks the site from the host and
//! canonicalises the path, [`crate::limits::Edge::admit_request`] applies
//! the site's limits, and `forward` sends it on a tunnel stream to the
//! site's agent and reads the response. Any step may stop the request with a
//! [`ProxyError`], which [`error::respond`] turns into the response — the one
//! place the relay decides how a request fails.
//!
//! Each request rides a relay-opened tunnel stream: a one-byte preamble,
//! then plain HTTP/1.1 spoken by hyper on both ends, so bodies stream in both
//! directions with the transport's flow control as back-pressure, and an
//! `Upgrade: websocket` exchange becomes a raw byte pipe after the `101`.

pub(crate) mod body;
pub mod error;
mod forward;
pub(crate) mod headers;
mod route;

pub use route::is_for_relay;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::{debug_span, Instrument};

pub use error::ProxyError;
use keyway_proto::envelope::HttpBody;

use crate::agents::AgentTable;
use crate::metrics::METRICS;
use error::{respond, Offline};

/// What the proxy needs per request.
pub struct ProxyCtx {
    /// The public domain (lowercase).
    pub domain: String,
    /// Sites served.
    pub sites: crate::sites::SiteCache,
    /// Site for bare-domain or IP hosts.
    pub default_site: Option<String>,
    /// Live agents.
    pub agents: AgentTable,
    /// Time allowed for the response head.
    pub request_timeout: Duration,
    /// Upgraded connections.
    pub upgrades: crate::upgrade::Upgrades,
    /// The edge's limits.
    pub edge: Arc<crate::limits::Edge>,
    /// Sees each request head as it is sent into a tunnel (for tests that
    /// check what crosses it); `None` in the binary.
    pub observer: Option<Observer>,
    /// The apt repository at `https://<domain>/apt/`, when configured.
    pub apt: Option<crate::apt::AptRepository>,
    /// The other relay nodes, when this one is part of a cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A callback given each request head the relay sends into a tunnel.
pub type Observer = Arc<dyn Fn(&http::request::Parts) + Send + Sync>;

/// The hyper service: serve the request, or answer why not; count it.
/// Never fails at the HTTP level.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ProxyCtx>,
    peer: SocketAddr,
) -> Result<Response<HttpBody>, Infallible> {
    let started = std::time::Instant::now();
    let request_id = keyway_proto::headers::new_request_id();
    // A debug span: at info, formatting its fields cost every request an
    // allocation and a few microseconds; the info lines name the request.
    let span = debug_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path(), site = tracing::field::Empty);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut site = None;
    let mut code = None;
    let mut resp = serve(req, &ctx, peer, &request_id, &mut site)
        .instrument(span)
        .await
        .unwrap_or_else(|e| {
            code = Some(e.code().as_str());
            respond(e)
        });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if let Some(site) = site.as_deref() {
        crate::operator::traffic::TRAFFIC.record(
            site,
            resp.status().as_u16(),
            started.elapsed(),
            code,
            crate::registry::now(),
        );
    }
    let label = crate::metrics::site(site.as_deref());
    METRICS
        .requests
        .get_or_create(&crate::metrics::Request {
            site: label.site.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    METRICS
        .duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    if let Some(n) = declared {
        METRICS.request_bytes.get_or_create(&label).inc_by(n);
    }
    let bytes = METRICS.response_bytes.get_or_create(&label).clone();
    Ok(resp.map(|b| body::Tracked::counted(b, bytes).boxed_unsync()))
}

/// Routes, admits and forwards one request; `site` is set once routed.
async fn serve(
    mut req: Request<Incoming>,
    ctx: &ProxyCtx,
    peer: SocketAddr,
    request_id: &str,
    site: &mut Option<String>,
) -> Result<Response<HttpBody>, ProxyError> {
    let routed = site.insert(route::route(&req, ctx)?);
    tracing::Span::current().record("site", routed.as_str());
    if ctx.sites.is_sealed(routed) {
        // Reached in plain text (the bare domain, an address): forwarding
        // it would show the relay what the site's mode keeps from it.
        let why = keyway_proto::edge::Refusal::ZeroKnowledge {
            domain: ctx.domain.clone(),
        };
        return Err(ProxyError::from((why, routed.as_str())));
    }
    route::canonicalize(&mut req)?;
    let websocket = keyway_proto::headers::wants_upgrade(req.headers());
    let admitted = ctx
        .edge
        .admit_request(routed, peer.ip(), req.headers(), websocket)
        .map_err(|r| ProxyError::from((r, routed.as_str())))?;
    let Some(link) = ctx.agents.get(routed) else {
        // Another node may hold the site's agent.
        if let Some(cluster) = &ctx.cluster {
            let head = crate::cluster::ForwardHead {
                site: routed.clone(),
                client: peer,
                request_id: request_id.to_string(),
            };
            let client_upgrade = forward::client_upgrade(&mut req);
            let (resp, lease) = cluster.forward(routed, req, head, ctx.request_timeout).await?;
            return forward::answer(ctx, resp, client_upgrade, admitted.slots, lease);
        }
        return Err(ProxyError::AgentOffline {
            site: routed.clone(),
            when: Offline::NotConnected,
        });
    };
    let forward = forward::Forward {
        ctx,
        site: routed,
        link,
        peer,
        request_id,
        limits: admitted.body,
    };
    forward.send(req, admitted.slots).await
}

/// Serves a request another relay node forwarded (cluster): from this
/// node's own link for the site, never forwarded again; the edge's checks
/// were made where the client connected.
pub async fn serve_forwarded(
    req: Request<Incoming>,
    ctx: &ProxyCtx,
    head: &crate::cluster::ForwardHead,
) -> Response<HttpBody> {
    let site = head.site.as_str();
    let Some(link) = ctx.agents.get(site) else {
        // Lost since the last heartbeat: the sender may try another node.
        let mut resp = respond(ProxyError::AgentOffline {
            site: site.to_string(),
            when: Offline::NotConnected,
        });
        resp.headers_mut()
            .insert(crate::cluster::NOT_HELD, HeaderValue::from_static("1"));
        return resp;
    };
    let forward = forward::Forward {
        ctx,
        site,
        link,
        peer: head.client,
        request_id: &head.request_id,
        limits: ctx.edge.body_limits(site),
    };
    let mut resp = forward.send(req, Vec::new()).await.unwrap_or_else(respond);
    // Only this node says "not held"; a console's header of that name is not it.
    resp.headers_mut().remove(crate::cluster::NOT_HELD);
    resp
}
