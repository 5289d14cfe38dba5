//! Sending one admitted request through its site's tunnel and reading the
//! response head, with one retry rule: a request moves to another stream
//! only while none of it has been sent.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyway_proto::headers::{set_upgrade, strip_hop_by_hop, wants_upgrade};
use keyway_proto::preamble::StreamKind;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::body::{GiveBack, Tracked};
use super::error::{BadRequest, Offline, ProxyError, TunnelFailure};
use super::ProxyCtx;
use crate::agents::AgentLink;
use crate::limits::{BodyLimits, Refusal, Slot};
use crate::metrics::METRICS;
use crate::streams::{Lease, OutBody, Sender};
use keyway_proto::edge::whole::Refused;
use keyway_proto::envelope::HttpBody;

/// The client's side of an upgrade it asks for (HTTP/1.1 only), taken
/// before the request is sent on.
pub(super) fn client_upgrade(req: &mut Request<Incoming>) -> Option<hyper::upgrade::OnUpgrade> {
    (req.version() == Version::HTTP_11 && wants_upgrade(req.headers())).then(|| hyper::upgrade::on(req))
}

/// The response to send the client: a `101` hands both ends to
/// [`crate::upgrade`] (holding `slots` while it lasts); any other holds
/// `slots` until its body is done, and gives `lease`'s stream back to its
/// pool then, if the body ended cleanly.
pub(super) fn answer(
    ctx: &ProxyCtx,
    mut resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    slots: Vec<Slot>,
    lease: Option<GiveBack>,
) -> Result<Response<HttpBody>, ProxyError> {
    let resp_upgrade = strip_hop_by_hop(resp.headers_mut());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client), Some(proto)) = (client_upgrade, resp_upgrade) else {
            return Err(ProxyError::TunnelFailed(TunnelFailure::UnrequestedSwitch));
        };
        let websocket = proto.as_bytes().eq_ignore_ascii_case(b"websocket");
        set_upgrade(resp.headers_mut(), proto);
        let far = hyper::upgrade::on(&mut resp);
        ctx.upgrades.spawn(client, far, websocket, slots);
        return Ok(resp.map(|b| b.boxed_unsync()));
    }
    Ok(resp.map(|body| Tracked::holding(body, slots, lease).boxed_unsync()))
}

/// Links a request may try before its agent counts as offline: the one it
/// was routed to and the newer one an agent that just reconnected has.
const MAX_LINKS: usize = 2;

/// One request on its way to a site's agent.
pub(super) struct Forward<'a> {
    /// The relay's shared state.
    pub ctx: &'a ProxyCtx,
    /// The site routed to.
    pub site: &'a str,
    /// The site's agent link when the request was routed.
    pub link: Arc<AgentLink>,
    /// The client's address, for `X-Forwarded-For`.
    pub peer: SocketAddr,
    /// The request's id, for `X-Request-Id` and the logs.
    pub request_id: &'a str,
    /// The body limits the edge set for the request.
    pub limits: BodyLimits,
}

impl Forward<'_> {
    /// Forwards `req`, holding `slots` until its response ends, and answers
    /// with the site's response (a `101` hands both ends to [`crate::upgrade`]).
    pub(super) async fn send(
        self,
        mut req: Request<Incoming>,
        slots: Vec<Slot>,
    ) -> Result<Response<HttpBody>, ProxyError> {
        let limits = self.limits;
        let client_upgrade = client_upgrade(&mut req);
        let (mut parts, body) = req.into_parts();
        let upgrade = super::headers::for_tunnel(&mut parts, self.peer, self.request_id);
        // A body of unknown length is read whole before its head may enter
        // the tunnel (see `whole`); a declared one streams, limited as it goes.
        let unsized_body = upgrade.is_none()
            && !parts.headers.contains_key(CONTENT_LENGTH)
            && !hyper::body::Body::is_end_stream(&body);
        let (body, _share) = if unsized_body {
            let ctx = self.ctx;
            let (bytes, share) =
                keyway_proto::edge::whole::read(body, limits.whole, limits.max, &ctx.edge.held, ctx.request_timeout)
                    .await
                    .map_err(|r| self.refused_whole(r))?;
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            (Either::Right(Full::new(bytes)), Some(share))
        } else {
            let limited = Limited::new(body, usize::try_from(limits.max).unwrap_or(usize::MAX));
            (Either::Left(limited), None)
        };
        if let Some(observe) = &self.ctx.observer {
            observe(&parts);
        }
        let out = Request::from_parts(parts, body);

        // An upgrade turns its stream into a byte pipe: never one from the pool.
        let upgrading = upgrade.is_some();
        let (resp, lease) = match tokio::time::timeout(self.ctx.request_timeout, self.exchange(out, upgrading)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ProxyError::Timeout {
                    site: self.site.into(),
                    after: self.ctx.request_timeout,
                })
            }
        };
        debug!(status = resp.status().as_u16(), "response head");
        let lease = (!upgrading).then(|| Box::new(move || lease.give_back()) as GiveBack);
        answer(self.ctx, resp, client_upgrade, slots, lease)
    }

    /// Sends the request on a tunnel stream and reads the response head.
    /// A pooled stream found closed before the request went out, or a link
    /// that closed while the agent already has a newer one, gets the
    /// request again on a fresh stream; nothing else is retried.
    async fn exchange(
        &self,
        mut req: Request<OutBody>,
        upgrading: bool,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let mut link = self.link.clone();
        let mut links = 1;
        let mut pooled = if upgrading { None } else { link.pool.take() };
        loop {
            let reused = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(sender) => sender,
                None => match connect(&link).await {
                    Ok(sender) => sender,
                    Err(Connect::Closed(e)) => match self.ctx.agents.get(self.site).filter(|n| n.id != link.id) {
                        Some(newer) if links < MAX_LINKS => {
                            debug!("link {} closed ({e}); using the newer link {}", link.id, newer.id);
                            (link, links) = (newer, links + 1);
                            continue;
                        }
                        _ => return Err(self.offline(Offline::Disconnected, &e)),
                    },
                    Err(Connect::Failed(e)) => return Err(self.tunnel_failed(&link, &e)),
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease::new(sender, link.pool.clone()))),
                Err(mut e) => match e.take_message() {
                    // A pooled stream that closed before the request went
                    // out (the agent restarted it, the link moved): nothing
                    // was sent, so a fresh stream may carry it.
                    Some(again) if reused => {
                        debug!("pooled tunnel stream unusable ({}); opening a new one", e.error());
                        req = again;
                    }
                    _ => return Err(self.failed(&link, e.into_error())),
                },
            }
        }
    }

    /// What a failed exchange means for the client.
    fn failed(&self, link: &AgentLink, e: hyper::Error) -> ProxyError {
        if keyway_proto::causes::find::<http_body_util::LengthLimitError>(&e).is_some() {
            ProxyError::from((Refusal::Body(self.limits.max), self.site))
        } else if e.is_user() {
            // The client's own body failed: malformed chunks, or cut off.
            debug!("request body failed: {}", keyway_proto::causes::chain(&e));
            ProxyError::BadRequest(BadRequest::Body)
        } else {
            self.tunnel_failed(link, &e)
        }
    }

    /// A stream that broke: the agent left, or only this stream failed.
    fn tunnel_failed(&self, link: &AgentLink, e: &dyn std::fmt::Display) -> ProxyError {
        if link.conn.close_reason().is_some() {
            return ProxyError::AgentOffline {
                site: self.site.into(),
                when: Offline::DuringRequest,
            };
        }
        info!(request = self.request_id, site = self.site, "tunnel stream failed: {e}");
        ProxyError::TunnelFailed(TunnelFailure::Stream { site: self.site.into() })
    }

    fn offline(&self, when: Offline, e: &std::io::Error) -> ProxyError {
        info!(
            request = self.request_id,
            site = self.site,
            "agent connection lost: {e}"
        );
        ProxyError::AgentOffline {
            site: self.site.into(),
            when,
        }
    }

    /// A body that could not be read whole.
    fn refused_whole(&self, r: Refused) -> ProxyError {
        match r {
            Refused::TooLarge(max) => ProxyError::from((Refusal::Body(max), self.site)),
            Refused::Busy => ProxyError::from((Refusal::Busy("bodies without a declared length"), self.site)),
            Refused::NeedsLength(whole) => ProxyError::from((Refusal::NeedsLength(whole), self.site)),
            Refused::Bad(why) => {
                debug!("request body failed: {why}");
                ProxyError::BadRequest(BadRequest::Body)
            }
        }
    }
}

/// Why no HTTP connection could be started on a link.
enum Connect {
    /// The link is closed: no stream opens on it.
    Closed(std::io::Error),
    /// A stream opened but the connection on it failed.
    Failed(String),
}

/// A new HTTP/1.1 connection over a new stream on `link`.
async fn connect(link: &AgentLink) -> Result<Sender, Connect> {
    let mut stream = link.conn.open().await.map_err(Connect::Closed)?;
    METRICS.tunnel_streams.inc();
    stream
        .write_all(&[StreamKind::Http.to_byte()])
        .await
        .map_err(|e| Connect::Failed(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Connect::Failed(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!("tunnel stream ended: {e}");
        }
    });
    Ok(sender)
}
