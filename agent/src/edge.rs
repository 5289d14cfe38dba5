//! The relay's edge limits, applied by this agent to its zero-knowledge
//! site: the relay routes that site's connections sealed and cannot read
//! a request, so the checks it makes on every other site's requests
//! (allow-list, header and body sizes, rates, concurrency) happen here,
//! after this agent's TLS and before the console, answered in the same
//! envelope. The relay sends the limits in force (`Limits` on the control
//! stream) when the tunnel comes up and whenever they change; until then
//! the defaults apply.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use keyway_proto::edge::whole::{self, Held, Refused};
use keyway_proto::edge::{Limits, Refusal, SiteEdge, Slot};
use keyway_proto::envelope::{ErrorCode, HttpBody};

/// Memory all bodies read whole may hold at once (a Pi has less than a relay).
const WHOLE_BUDGET: u64 = 16 * 1024 * 1024;

/// The slots an admitted request holds until its response (or WebSocket)
/// ends: the response body holds one handle, a WebSocket's task another.
#[derive(Debug)]
pub struct Slots {
    _held: Vec<Slot>,
}

/// A request's hold on its site's concurrency slots.
pub type Hold = Arc<Slots>;

/// A request the edge let through.
pub struct Admitted {
    /// The request, its body ready to forward.
    pub req: Request<HttpBody>,
    /// The slots it holds.
    pub hold: Hold,
    /// The site it is for.
    pub site: Arc<str>,
    /// Time it has to get its response head (the relay's `request_timeout`).
    pub timeout: Duration,
    /// How often a WebSocket client is pinged (see [`Leaving::ping_every`]).
    pub ping_every: Duration,
}

/// The tunnel a zero-knowledge connection came through: `token` is
/// cancelled when it leaves (the agent stops, or the tunnel is retired),
/// and a WebSocket then closes with 1012, as the relay closes those it
/// terminates when it restarts; `tasks` are what the tunnel waits for
/// before it closes (so that close frame gets out).
#[derive(Clone, Debug)]
pub struct Leaving {
    /// Cancelled when the tunnel leaves.
    pub token: tokio_util::sync::CancellationToken,
    /// The tunnel's work under way.
    pub tasks: tokio_util::task::TaskTracker,
    /// How often the client of a WebSocket passed through to the console
    /// is pinged (the relay's `websocket_ping_interval`, from its limits).
    pub ping_every: Duration,
}

/// This agent's edge: the site's limits and the state behind them.
pub struct AgentEdge {
    site: Mutex<(Arc<str>, Arc<SiteEdge>)>,
    held: Held,
}

impl Default for AgentEdge {
    fn default() -> Self {
        Self {
            site: Mutex::new((Arc::from(""), Arc::new(SiteEdge::new(Limits::default())))),
            held: Held::with_budget(WHOLE_BUDGET),
        }
    }
}

impl AgentEdge {
    /// Applies the limits the relay sent for `site`, keeping what is under
    /// way (open requests' slots, buckets whose rate did not change).
    pub fn set(&self, site: &str, limits: Limits) {
        let mut now = self.site.lock().unwrap_or_else(|p| p.into_inner());
        if *now.0 != *site || now.1.limits() != &limits {
            let edge = Arc::new(SiteEdge::after(&now.1, limits));
            *now = (Arc::from(site), edge);
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.site.lock().unwrap_or_else(|p| p.into_inner()).1.limits().clone()
    }

    /// The relay's `header_read_timeout`: a client's time for its TLS
    /// handshake and each request head, and an idle connection's life.
    pub fn header_read_timeout(&self) -> Duration {
        self.site
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .limits()
            .header_read_timeout
    }

    fn current(&self) -> (Arc<str>, Arc<SiteEdge>) {
        self.site.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The relay's checks on a request from `client`: refused with the
    /// envelope, or admitted with its body ready to forward (one without a
    /// declared length read whole first, as the relay does) and the slots
    /// it holds.
    pub async fn admit(&self, req: Request<Incoming>, client: IpAddr) -> Result<Admitted, Response<HttpBody>> {
        let (site, edge) = self.current();
        let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target > keyway_proto::MAX_URI_BYTES {
            return Err(Refusal::UriTooLong(target).response(&site));
        }
        let websocket = keyway_proto::headers::wants_upgrade(req.headers());
        let admitted = edge
            .admit(client, req.headers(), websocket)
            .map_err(|r| r.response(&site))?;
        let hold = Arc::new(Slots { _held: admitted.slots });
        let limits = admitted.body;
        let (timeout, ping_every) = (edge.limits().request_timeout, edge.limits().websocket_ping);
        let admitted = |req| Admitted {
            req,
            hold,
            site: site.clone(),
            timeout,
            ping_every,
        };
        let (mut parts, body) = req.into_parts();
        let undeclared = !parts.headers.contains_key(http::header::CONTENT_LENGTH) && !body.is_end_stream();
        if !undeclared {
            return Ok(admitted(Request::from_parts(parts, body.boxed_unsync())));
        }
        // As the relay: the body's time to arrive whole is the request's.
        match whole::read(body, limits.whole, limits.max, &self.held, timeout).await {
            Ok((bytes, _share)) => {
                parts.headers.remove(http::header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Ok(admitted(Request::from_parts(parts, full(bytes))))
            }
            Err(refused) => Err(match refused {
                Refused::TooLarge(max) => Refusal::Body(max).response(&site),
                Refused::NeedsLength(max) => Refusal::NeedsLength(max).response(&site),
                Refused::Busy => Refusal::Busy("bodies without a declared length").response(&site),
                Refused::Bad(why) => {
                    tracing::debug!("request body failed: {why}");
                    keyway_proto::envelope::response(
                        ErrorCode::BadRequest,
                        "the request body is malformed or was cut off",
                    )
                }
            }),
        }
    }
}

fn full(bytes: Bytes) -> HttpBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// `resp` holding `hold` until its body has been sent.
pub fn holding(resp: Response<HttpBody>, hold: Hold) -> Response<HttpBody> {
    resp.map(|body| Holding { body, _hold: hold }.boxed_unsync())
}

/// A body that holds a request's slots while it lasts. Its size is the
/// body's own, so a response of known length keeps its `Content-Length`
/// (an envelope is not sent chunked because of what it holds).
struct Holding {
    body: HttpBody,
    _hold: Hold,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = <HttpBody as Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_response_keeps_its_length() {
        let resp = keyway_proto::envelope::response(ErrorCode::BadRequest, "refused");
        let length = resp.body().size_hint().exact();
        assert!(length.is_some());
        let held = holding(resp, Arc::new(Slots { _held: Vec::new() }));
        assert_eq!(
            held.body().size_hint().exact(),
            length,
            "sent with Content-Length, not chunked"
        );
    }

    #[test]
    fn new_limits_apply_and_keep_open_slots() {
        let edge = AgentEdge::default();
        edge.set(
            "hq",
            Limits {
                max_concurrent_requests: 1,
                ..Limits::default()
            },
        );
        let (_, site) = edge.current();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let open = site.admit(ip, &http::HeaderMap::new(), false).unwrap();
        edge.set(
            "hq",
            Limits {
                max_concurrent_requests: 1,
                max_headers: 10,
                ..Limits::default()
            },
        );
        assert_eq!(edge.limits().max_headers, 10);
        let (_, site) = edge.current();
        assert_eq!(
            site.admit(ip, &http::HeaderMap::new(), false).unwrap_err(),
            Refusal::Busy("requests")
        );
        drop(open);
        assert!(site.admit(ip, &http::HeaderMap::new(), false).is_ok());
    }
}
