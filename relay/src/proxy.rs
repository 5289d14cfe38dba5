//! Forwarding one integration request through the tunnel.
//!
//! Each request rides its own relay-opened tunnel stream: a one-byte preamble,
//! then plain HTTP/1.1 spoken by hyper on both ends, so bodies stream in both
//! directions with the transport's flow control as back-pressure, and an
//! `Upgrade: websocket` exchange becomes a raw byte pipe after the `101`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyway_proto::envelope::ErrorCode;
use keyway_proto::headers::{set_upgrade, strip_hop_by_hop};
use keyway_proto::preamble::StreamKind;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::{debug, debug_span, info, Instrument};

use crate::agents::{AgentLink, AgentTable};
use crate::limits::{BodyLimits, Refusal, Slot};
use crate::metrics::METRICS;
use crate::respond::{error, ProxyBody};
use crate::streams::{Lease, Sender, StreamPool};
use keyway_transport::TunnelStream;

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
}

/// A callback given each request head the relay sends into a tunnel.
pub type Observer = Arc<dyn Fn(&http::request::Parts) + Send + Sync>;

/// The hyper service: route, forward, answer. Never fails at the HTTP level.
pub async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ProxyCtx>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = std::time::Instant::now();
    let request_id = new_request_id();
    // A debug span: at info, formatting its fields cost every request an
    // allocation and a few microseconds; the info lines below name the
    // request themselves.
    let span = debug_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path(), site = tracing::field::Empty);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (site, mut resp) = async {
        let site = match route(&req, &ctx) {
            Ok(site) => site,
            Err(resp) => return (None, resp),
        };
        tracing::Span::current().record("site", site.as_str());
        if let Err(resp) = canonicalize(&mut req) {
            return (Some(site), resp);
        }
        let websocket = keyway_proto::headers::wants_upgrade(req.headers());
        let (slots, body_limits) = match ctx.edge.admit(&site, peer.ip(), req.headers(), websocket) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                METRICS.refused.get_or_create(&reason(&refusal)).inc();
                let resp = refused(refusal, &site);
                return (Some(site), resp);
            }
        };
        let Some(link) = ctx.agents.get(&site) else {
            let resp = error(
                ErrorCode::AgentOffline,
                &format!("the agent of site {site:?} is not connected to the relay"),
            );
            return (Some(site), resp);
        };
        let resp = forward(req, &site, link, &ctx, peer, &request_id, (slots, body_limits)).await;
        debug!(status = resp.status().as_u16(), "response head");
        (Some(site), resp)
    }
    .instrument(span)
    .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
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
    Ok(resp.map(|b| Counted { body: b, bytes }.boxed_unsync()))
}

/// A response body that counts the bytes it sends.
struct Counted<B> {
    body: B,
    bytes: prometheus_client::metrics::counter::Counter,
}

impl<B: hyper::body::Body<Data = bytes::Bytes> + Unpin> hyper::body::Body for Counted<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn reason(r: &Refusal) -> crate::metrics::Reason {
    let reason = match r {
        Refusal::NotAllowed => "allow_list",
        Refusal::Headers(_) => "headers",
        Refusal::Body(_) => "body",
        Refusal::Rate { .. } => "rate",
        Refusal::Busy(_) => "concurrency",
    };
    crate::metrics::Reason { reason: reason.into() }
}

/// Picks the site from the request's host, or answers the error.
#[allow(clippy::result_large_err)]
fn route(req: &Request<Incoming>, ctx: &ProxyCtx) -> Result<String, Response<ProxyBody>> {
    let header_host = req
        .headers()
        .get(HOST)
        .map(|h| h.to_str().ok().and_then(|s| s.parse::<http::uri::Authority>().ok()));
    let header_host = match header_host {
        Some(None) => return Err(error(ErrorCode::BadRequest, "the Host header is not a valid host")),
        Some(Some(a)) => Some(a),
        None => None,
    };
    let host = match (req.uri().authority(), &header_host) {
        (Some(target), Some(h)) if !target.host().eq_ignore_ascii_case(h.host()) => {
            return Err(error(
                ErrorCode::BadRequest,
                "the request target and the Host header name different hosts",
            ))
        }
        (Some(a), _) => a.host().to_ascii_lowercase(),
        (None, Some(h)) => h.host().to_ascii_lowercase(),
        (None, None) => return Err(error(ErrorCode::BadRequest, "the request has no Host header")),
    };
    site_for_host(&host, ctx).ok_or_else(|| {
        error(
            ErrorCode::SiteNotFound,
            &format!("no site is served at {host:?}; use https://<site>.{}/", ctx.domain),
        )
    })
}

/// Rewrites the request's path to its canonical form, so that every check
/// after this one, on the relay and on the agent, and the console read one
/// spelling; a path with no canonical form is refused with 400 here.
#[allow(clippy::result_large_err)]
fn canonicalize(req: &mut Request<Incoming>) -> Result<(), Response<ProxyBody>> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(());
    };
    if pq.as_str().len() > keyway_proto::MAX_URI_BYTES {
        return Err(error(
            ErrorCode::UriTooLong,
            &format!(
                "the request target is {} bytes; at most {} are forwarded",
                pq.as_str().len(),
                keyway_proto::MAX_URI_BYTES
            ),
        ));
    }
    let refuse = |e: keyway_proto::path::PathError| {
        debug!("refused path: {e}");
        error(ErrorCode::BadRequest, &format!("{e}; send the path in its plain form"))
    };
    let Some(target) = keyway_proto::path::canonical_target(pq.as_str()).map_err(refuse)? else {
        return Ok(());
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| error(ErrorCode::BadRequest, "the request target is not a valid path"))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| error(ErrorCode::BadRequest, "the request target is not valid"))?;
    Ok(())
}

/// `<site>.<domain>` → site; the bare domain, an IP or `localhost` → the default site.
fn site_for_host(host: &str, ctx: &ProxyCtx) -> Option<String> {
    let host = host.trim_end_matches('.');
    let bare =
        host == ctx.domain || host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok();
    if bare {
        return ctx.default_site.clone();
    }
    let label = host.strip_suffix(ctx.domain.as_str())?.strip_suffix('.')?;
    ctx.sites.contains(label).then(|| label.to_string())
}

/// The edge's refusal, as the envelope (with `Retry-After` for 429s).
fn refused(r: Refusal, site: &str) -> Response<ProxyBody> {
    let (mut resp, retry) = match r {
        Refusal::NotAllowed => (
            error(
                ErrorCode::ClientNotAllowed,
                &format!("this client address may not reach site {site:?} (its allow-list)"),
            ),
            None,
        ),
        Refusal::Headers(why) => (
            error(ErrorCode::HeadersTooLarge, &format!("request headers too large: {why}")),
            None,
        ),
        Refusal::Body(max) => (
            error(
                ErrorCode::PayloadTooLarge,
                &format!("the request body is larger than the {max} bytes site {site:?} accepts"),
            ),
            None,
        ),
        Refusal::Rate { scope, retry_after } => (
            error(
                ErrorCode::RateLimited,
                &format!("too many requests from {scope}; retry after {retry_after}s"),
            ),
            Some(retry_after),
        ),
        Refusal::Busy(what) => (
            error(
                ErrorCode::TooManyConcurrent,
                &format!("too many {what} under way for site {site:?}; retry shortly"),
            ),
            Some(1),
        ),
    };
    if let Some(secs) = retry {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    debug!(status = resp.status().as_u16(), "refused at the edge");
    resp
}

async fn forward(
    mut req: Request<Incoming>,
    site: &str,
    link: Arc<AgentLink>,
    ctx: &ProxyCtx,
    peer: SocketAddr,
    request_id: &str,
    (slots, limits): (Vec<Slot>, BodyLimits),
) -> Response<ProxyBody> {
    let max_body = limits.max;
    let client_upgrade = (req.version() == Version::HTTP_11 && keyway_proto::headers::wants_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.uri.authority().map(|a| a.as_str().to_string());
    let upgrade = strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = &upgrade {
        set_upgrade(&mut parts.headers, proto.clone());
    }
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        parts.headers.insert(HOST, h);
    }
    set_forwarded(&mut parts.headers, peer, request_id);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    // A body of unknown length is read whole before its head may enter the
    // tunnel (see `whole`); a declared one streams, limited as it goes.
    let unsized_body =
        upgrade.is_none() && !parts.headers.contains_key(CONTENT_LENGTH) && !hyper::body::Body::is_end_stream(&body);
    let (body, _share) = if unsized_body {
        match crate::whole::read(body, limits.whole, max_body, &ctx.edge.held, ctx.request_timeout).await {
            Ok((bytes, share)) => {
                parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                (Either::Right(Full::new(bytes)), Some(share))
            }
            Err(refusal) => return refused_whole(refusal, site),
        }
    } else {
        let limited = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX));
        (Either::Left(limited), None)
    };
    if let Some(observe) = &ctx.observer {
        observe(&parts);
    }
    let out = Request::from_parts(parts, body);

    // An upgrade turns its stream into a byte pipe: never one from the pool.
    let upgrading = upgrade.is_some();
    let exchange = async {
        let mut out = out;
        let mut pooled = if upgrading { None } else { link.pool.take() };
        loop {
            let reused = pooled.is_some();
            let (mut sender, pool) = match pooled.take() {
                Some(sender) => (sender, link.pool.clone()),
                None => connect(&ctx.agents, site, link.clone()).await?,
            };
            match sender.try_send_request(out).await {
                Ok(resp) => return Ok((resp, Lease::new(sender, pool))),
                Err(mut e) => match e.take_message() {
                    // A pooled stream that closed before the request went
                    // out (the agent restarted it, the link moved): nothing
                    // was sent, so a fresh stream may carry it.
                    Some(req) if reused => {
                        debug!("pooled tunnel stream unusable ({}); opening a new one", e.error());
                        out = req;
                    }
                    _ => return Err(failure(e.into_error())),
                },
            }
        }
    };
    let (mut resp, lease) = match timeout(ctx.request_timeout, exchange).await {
        Ok(Ok(v)) => v,
        Err(_) => {
            return error(
                ErrorCode::Timeout,
                &format!(
                    "site {site:?} did not answer within {}",
                    humantime::format_duration(ctx.request_timeout)
                ),
            )
        }
        Ok(Err(Failure::Offline(e))) => {
            info!(request = request_id, site, "agent connection lost: {e}");
            return error(
                ErrorCode::AgentOffline,
                &format!("the agent of site {site:?} disconnected"),
            );
        }
        Ok(Err(Failure::TooLarge)) => return refused(Refusal::Body(max_body), site),
        Ok(Err(Failure::BadBody(e))) => {
            debug!("request body failed: {e}");
            return error(ErrorCode::BadRequest, "the request body is malformed or was cut off");
        }
        Ok(Err(Failure::Tunnel(e))) => {
            if link.conn.close_reason().is_some() {
                return error(
                    ErrorCode::AgentOffline,
                    &format!("the agent of site {site:?} disconnected during the request"),
                );
            }
            info!(request = request_id, site, "tunnel stream failed: {e}");
            return error(
                ErrorCode::TunnelFailed,
                &format!("the tunnel to site {site:?} failed during the request"),
            );
        }
    };

    let resp_upgrade = strip_hop_by_hop(resp.headers_mut());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        match (client_upgrade, resp_upgrade) {
            (Some(client), Some(proto)) => {
                let websocket = proto.as_bytes().eq_ignore_ascii_case(b"websocket");
                set_upgrade(resp.headers_mut(), proto);
                let tunnel = hyper::upgrade::on(&mut resp);
                ctx.upgrades.spawn(client, tunnel, websocket, slots);
                return resp.map(|b| b.boxed_unsync());
            }
            _ => {
                return error(
                    ErrorCode::TunnelFailed,
                    "the console switched protocols without an upgrade request",
                )
            }
        }
    }
    // The request holds its slot until its response body is done; the
    // stream goes back to the pool then, if the body ended cleanly.
    let lease = (!upgrading).then_some(lease);
    resp.map(|body| {
        Held {
            body,
            _slots: slots,
            lease,
            ended: false,
        }
        .boxed_unsync()
    })
}

/// A body that could not be read whole, as the envelope.
fn refused_whole(r: crate::whole::Refused, site: &str) -> Response<ProxyBody> {
    use crate::whole::Refused;
    let (metric, resp) = match r {
        Refused::TooLarge(max) => ("body", refused(Refusal::Body(max), site)),
        Refused::Busy => (
            "concurrency",
            refused(Refusal::Busy("bodies without a declared length"), site),
        ),
        Refused::NeedsLength(max) => (
            "length",
            error(
                ErrorCode::LengthRequired,
                &format!("a request body over {max} bytes must declare its length (send Content-Length, not chunked)"),
            ),
        ),
        Refused::Bad(why) => {
            debug!("request body failed: {why}");
            (
                "malformed",
                error(ErrorCode::BadRequest, "the request body is malformed or was cut off"),
            )
        }
    };
    METRICS
        .refused
        .get_or_create(&crate::metrics::Reason { reason: metric.into() })
        .inc();
    resp
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// Whether a failed exchange failed because the request body went over the limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A response body from the tunnel: it keeps the request's edge slots until
/// it is dropped, and gives its stream back to the pool once it has ended.
struct Held<B: hyper::body::Body> {
    body: B,
    _slots: Vec<Slot>,
    lease: Option<Lease>,
    ended: bool,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => self.ended = true,
            // A broken body leaves its connection mid-message: never reused.
            std::task::Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<B: hyper::body::Body> Drop for Held<B> {
    fn drop(&mut self) {
        // hyper stops polling a body whose declared length has been sent, so
        // the end shows in `is_end_stream` as often as in a final `None`.
        if self.ended || self.body.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
        }
    }
}

/// A new HTTP/1.1 connection over a new stream to the site's agent, with the
/// pool of the link it was opened on.
async fn connect(agents: &AgentTable, site: &str, link: Arc<AgentLink>) -> Result<(Sender, Arc<StreamPool>), Failure> {
    let (mut stream, link) = open_stream(agents, site, link).await?;
    METRICS.tunnel_streams.inc();
    stream
        .write_all(&[StreamKind::Http.to_byte()])
        .await
        .map_err(|e| Failure::Tunnel(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Tunnel(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!("tunnel stream ended: {e}");
        }
    });
    Ok((sender, link.pool.clone()))
}

/// What a failed exchange means for the client.
fn failure(e: hyper::Error) -> Failure {
    if is_length_limit(&e) {
        Failure::TooLarge
    } else if e.is_user() {
        // The client's own body failed: malformed chunks, or cut off.
        Failure::BadBody(error_chain(&e))
    } else {
        Failure::Tunnel(e.to_string())
    }
}

/// Opens a stream on `link`; if that link closed a moment ago and the agent
/// has a newer one (a reconnect, a move from TCP to QUIC), on the newer one.
/// Nothing of the request was sent yet, so moving it is safe.
async fn open_stream(
    agents: &AgentTable,
    site: &str,
    link: Arc<AgentLink>,
) -> Result<(TunnelStream, Arc<AgentLink>), Failure> {
    match link.conn.open().await {
        Ok(s) => Ok((s, link)),
        Err(e) => match agents.get(site).filter(|newer| newer.id != link.id) {
            Some(newer) => {
                debug!("link {} closed ({e}); using the newer link {}", link.id, newer.id);
                let s = newer.conn.open().await.map_err(Failure::Offline)?;
                Ok((s, newer))
            }
            None => Err(Failure::Offline(e)),
        },
    }
}

enum Failure {
    TooLarge,
    BadBody(String),
    Offline(std::io::Error),
    Tunnel(String),
}

/// The relay is the edge: what the client claims about forwarding is replaced.
fn set_forwarded(headers: &mut HeaderMap, peer: SocketAddr, request_id: &str) {
    headers.remove("forwarded");
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
}

/// A request id unique to this relay process: a random prefix drawn once
/// and a counter (no system call per request; ids correlate logs, they
/// are not secrets).
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .expect("the OS random source works");
        u64::from_le_bytes(b)
    });
    format!(
        "{:012x}{:012x}",
        prefix >> 16,
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(default_site: Option<&str>) -> ProxyCtx {
        ProxyCtx {
            domain: "relay.example.com".into(),
            sites: crate::sites::SiteCache::with_sites(["hq", "branch-2"]),
            default_site: default_site.map(str::to_string),
            agents: AgentTable::default(),
            request_timeout: Duration::from_secs(1),
            upgrades: Default::default(),
            edge: Arc::new(crate::limits::Edge::new(Default::default())),
            observer: None,
        }
    }

    #[test]
    fn routes_by_host() {
        let c = ctx(Some("hq"));
        assert_eq!(site_for_host("hq.relay.example.com", &c).as_deref(), Some("hq"));
        assert_eq!(
            site_for_host("branch-2.relay.example.com.", &c).as_deref(),
            Some("branch-2")
        );
        assert_eq!(site_for_host("relay.example.com", &c).as_deref(), Some("hq"));
        assert_eq!(site_for_host("127.0.0.1", &c).as_deref(), Some("hq"));
        assert_eq!(site_for_host("[::1]", &c).as_deref(), Some("hq"));
        assert_eq!(site_for_host("nope.relay.example.com", &c), None);
        assert_eq!(site_for_host("a.hq.relay.example.com", &c), None);
        assert_eq!(site_for_host("hqrelay.example.com", &c), None);
        assert_eq!(site_for_host("hq.evil.com", &c), None);
        assert_eq!(site_for_host("127.0.0.1", &ctx(None)), None);
    }

    #[test]
    fn forwarded_headers_replace_client_claims() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        set_forwarded(&mut h, "127.0.0.9:5000".parse().unwrap(), "abc");
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "abc");
        assert!(h.get("forwarded").is_none());
        assert_eq!(new_request_id().len(), 24);
    }
}
