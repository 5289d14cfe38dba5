//! The edge's checks on a request before it may reach a console: the
//! client's address against the site's allow-list, header and body sizes,
//! rates and concurrency. Each refusal is answered in the console's
//! envelope with its own code: 403 (address not allowed), 411 (a long body
//! without a declared length), 413 (body), 429 with `Retry-After` (rate or
//! concurrency), 431 (headers).
//!
//! The relay applies them to every site it terminates TLS for; an agent
//! applies the same [`Limits`], sent by its relay, to its zero-knowledge
//! site, whose TLS it terminates itself. One implementation, so a refusal
//! reads the same whichever end made it.
//!
//! Rates are token buckets (`governor`): `*_rate` requests per second
//! refilled, `*_burst` at once.

pub mod whole;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{HeaderValue, RETRY_AFTER};
use http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::envelope::{ErrorCode, HttpBody};

/// Effective limits for one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Total bytes of request header names and values.
    pub max_header_bytes: usize,
    /// Request header fields.
    pub max_headers: usize,
    /// Request body bytes (uploads). Responses are not limited.
    pub max_body_bytes: u64,
    /// Bytes of a body sent without a declared length (chunked) that the
    /// edge reads whole before forwarding; a longer one gets 411.
    pub max_chunked_body_bytes: u64,
    /// Requests under way at once for a site.
    pub max_concurrent_requests: usize,
    /// WebSockets open at once for a site (their own budget: they never
    /// spend `max_concurrent_requests`).
    pub max_websockets: usize,
    /// WebSockets open at once for a site from one client address; by
    /// default the site's whole budget.
    pub max_websockets_per_client: usize,
    /// Requests per second for a site (refill), and its burst.
    pub site_rate: u32,
    /// See `site_rate`.
    pub site_burst: u32,
    /// Requests per second from one client address, and its burst.
    pub client_rate: u32,
    /// See `client_rate`.
    pub client_burst: u32,
    /// Client addresses allowed (CIDRs); empty: any.
    pub allow: Vec<IpNet>,
    /// Time a request has to get its response head (the relay's
    /// `request_timeout`, one for every site); after it, 504.
    pub request_timeout: Duration,
    /// How often a silent WebSocket client is pinged (the relay's
    /// `websocket_ping_interval`, one for every site).
    pub websocket_ping: Duration,
    /// Time a client has for its TLS handshake and each request head, and
    /// an idle keep-alive connection is kept (the relay's
    /// `header_read_timeout`, one for every site).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            // Avatars and API-server certificates: generous, not unbounded.
            max_body_bytes: 20 * 1024 * 1024,
            // Read whole at the edge; larger uploads declare their length.
            max_chunked_body_bytes: 1024 * 1024,
            max_concurrent_requests: 256,
            max_websockets: 64,
            max_websockets_per_client: 64,
            // A plan change pushes hundreds of users at once: the bursts
            // take that; the rates stop a loop gone wrong or a scraper.
            site_rate: 500,
            site_burst: 2000,
            client_rate: 200,
            client_burst: 1000,
            allow: Vec::new(),
            request_timeout: Duration::from_secs(65),
            websocket_ping: crate::websocket::DEFAULT_PING_EVERY,
            header_read_timeout: Duration::from_secs(20),
        }
    }
}

/// The message of a 504 `CODE_KEYWAY_TIMEOUT`: `site` did not answer
/// within `after` (the relay's, or for a zero-knowledge site its agent's).
pub fn timeout_message(site: &str, after: Duration) -> String {
    format!(
        "site {site:?} did not answer within {}",
        humantime::format_duration(after)
    )
}

impl Limits {
    /// Whether `client` may reach the site at all.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&client))
    }
}

/// Why a request is refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the client's address is not in the allow-list.
    NotAllowed,
    /// 404: the host names another site of the relay's domain than the
    /// one this connection's TLS was for.
    UnknownHost {
        /// The host the request named.
        host: String,
        /// The relay's domain, for the hint.
        domain: String,
    },
    /// 414: the request target is this long (over [`crate::MAX_URI_BYTES`]).
    UriTooLong(usize),
    /// 431: too many header fields, or too many bytes of them.
    Headers(String),
    /// 413: the body is larger than `max_body_bytes` (this many).
    Body(u64),
    /// 411: a body without a declared length, over what the edge reads
    /// whole (this many bytes).
    NeedsLength(u64),
    /// 429: over a rate; retry after this many seconds.
    Rate {
        /// Whose rate: "this client address", "this site".
        scope: &'static str,
        /// Seconds until a retry may pass.
        retry_after: u64,
    },
    /// 429: too many of these under way for the site.
    Busy(&'static str),
    /// 421: the site is zero-knowledge, and the request came to the relay
    /// in plain text (the bare domain, an address): only a connection to
    /// `<site>.<domain>` reaches its agent's TLS.
    ZeroKnowledge {
        /// The relay's domain, for the hint.
        domain: String,
    },
}

impl Refusal {
    /// The envelope code it is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotAllowed => ErrorCode::ClientNotAllowed,
            Self::UnknownHost { .. } => ErrorCode::SiteNotFound,
            Self::UriTooLong(_) => ErrorCode::UriTooLong,
            Self::Headers(_) => ErrorCode::HeadersTooLarge,
            Self::Body(_) => ErrorCode::PayloadTooLarge,
            Self::NeedsLength(_) => ErrorCode::LengthRequired,
            Self::Rate { .. } => ErrorCode::RateLimited,
            Self::Busy(_) => ErrorCode::TooManyConcurrent,
            Self::ZeroKnowledge { .. } => ErrorCode::ZeroKnowledge,
        }
    }

    /// What the client of `site` reads: what was over, and what to do.
    pub fn message(&self, site: &str) -> String {
        match self {
            Self::NotAllowed => format!("this client address may not reach site {site:?} (its allow-list)"),
            Self::UnknownHost { host, domain } => {
                format!("no site is served at {host:?}; use https://<site>.{domain}/")
            }
            Self::UriTooLong(len) => format!(
                "the request target is {len} bytes; at most {} are forwarded",
                crate::MAX_URI_BYTES
            ),
            Self::Headers(why) => format!("request headers too large: {why}"),
            Self::Body(max) => format!("the request body is larger than the {max} bytes site {site:?} accepts"),
            Self::NeedsLength(max) => {
                format!("a request body over {max} bytes must declare its length (send Content-Length, not chunked)")
            }
            Self::Rate { scope, retry_after } => format!("too many requests from {scope}; retry after {retry_after}s"),
            Self::Busy(what) => format!("too many {what} under way for site {site:?}; retry shortly"),
            Self::ZeroKnowledge { domain } => format!(
                "site {site:?} is zero-knowledge: its TLS ends at its own agent, never at the relay, so the relay \
                 does not forward this request; connect to https://{site}.{domain}/"
            ),
        }
    }

    /// Seconds a client should wait before retrying, where that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Rate { retry_after, .. } => Some(*retry_after),
            Self::Busy(_) => Some(1),
            _ => None,
        }
    }

    /// The name `edge_refused` counts it under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAllowed => "allow_list",
            Self::UnknownHost { .. } => "host",
            Self::UriTooLong(_) => "uri",
            Self::Headers(_) => "headers",
            Self::Body(_) => "body",
            Self::NeedsLength(_) => "length",
            Self::Rate { .. } => "rate",
            Self::Busy(_) => "concurrency",
            Self::ZeroKnowledge { .. } => "zero_knowledge",
        }
    }

    /// The response: status, envelope, `Retry-After` for 429s.
    pub fn response(&self, site: &str) -> http::Response<HttpBody> {
        let mut resp = crate::envelope::response(self.code(), &self.message(site));
        if let Some(secs) = self.retry_after() {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The body limits of an admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// `max_body_bytes`: enforced on the declared length, or as it streams.
    pub max: u64,
    /// `max_chunked_body_bytes` (never above `max`): a body without a
    /// declared length is read whole up to this.
    pub whole: u64,
}

impl BodyLimits {
    /// The body limits `l` sets.
    pub fn of(l: &Limits) -> Self {
        Self {
            max: l.max_body_bytes,
            whole: l.max_chunked_body_bytes.min(l.max_body_bytes),
        }
    }
}

/// What an admitted request holds: its slots, freed when it ends, and the
/// body limits to enforce while its body streams.
#[derive(Debug)]
pub struct Admitted {
    /// The request's (or WebSocket's) concurrency slots.
    pub slots: Vec<Slot>,
    /// The body limits of its site.
    pub body: BodyLimits,
}

/// Held while a request (or WebSocket) is under way; frees its slot on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one of `max` places counted by `counter`.
pub fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    let prev = counter.fetch_add(1, Ordering::AcqRel);
    let slot = Slot(counter.clone());
    (prev < max).then_some(slot)
}

/// A token bucket's quota: `rate` a second, `burst` at once (0 reads as 1).
pub fn quota(rate: u32, burst: u32) -> Quota {
    let r = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let b = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(r).allow_burst(b)
}

/// Whole seconds, rounded up (for `Retry-After`).
pub fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A token bucket's check as a refusal naming `scope` and when to retry.
pub fn checked(
    r: Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>>,
    scope: &'static str,
) -> Result<(), Refusal> {
    r.map_err(|not_until| Refusal::Rate {
        scope,
        retry_after: secs(not_until.wait_time_from(DefaultClock::default().now())),
    })
}

/// One site's limits and the live state behind them: buckets and counters.
pub struct SiteEdge {
    limits: Limits,
    bucket: Arc<DefaultDirectRateLimiter>,
    clients: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    requests: Arc<AtomicUsize>,
    websockets: Arc<AtomicUsize>,
    websockets_by_client: Arc<Mutex<HashMap<IpAddr, Arc<AtomicUsize>>>>,
}

impl SiteEdge {
    /// A site's edge with nothing under way.
    pub fn new(limits: Limits) -> Self {
        Self {
            bucket: Arc::new(RateLimiter::direct(quota(limits.site_rate, limits.site_burst))),
            clients: Arc::new(RateLimiter::keyed(quota(limits.client_rate, limits.client_burst))),
            requests: Arc::default(),
            websockets: Arc::default(),
            websockets_by_client: Arc::default(),
            limits,
        }
    }

    /// `old`'s site with new `limits`. A change keeps what is under way:
    /// the counters of open requests and WebSockets, and the buckets whose
    /// rate did not change.
    pub fn after(old: &SiteEdge, limits: Limits) -> Self {
        let o = &old.limits;
        Self {
            bucket: if (o.site_rate, o.site_burst) == (limits.site_rate, limits.site_burst) {
                old.bucket.clone()
            } else {
                Arc::new(RateLimiter::direct(quota(limits.site_rate, limits.site_burst)))
            },
            clients: if (o.client_rate, o.client_burst) == (limits.client_rate, limits.client_burst) {
                old.clients.clone()
            } else {
                Arc::new(RateLimiter::keyed(quota(limits.client_rate, limits.client_burst)))
            },
            requests: old.requests.clone(),
            websockets: old.websockets.clone(),
            websockets_by_client: old.websockets_by_client.clone(),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The checks before a request is forwarded: allow-list, headers,
    /// declared body size, rates, concurrency. On success, the request's
    /// slots and body limits.
    pub fn admit(&self, client: IpAddr, headers: &HeaderMap, websocket: bool) -> Result<Admitted, Refusal> {
        let l = &self.limits;
        let client = client.to_canonical();
        if !l.allows(client) {
            return Err(Refusal::NotAllowed);
        }
        if headers.len() > l.max_headers {
            return Err(Refusal::Headers(format!(
                "{} header fields; at most {} are accepted",
                headers.len(),
                l.max_headers
            )));
        }
        let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        if bytes > l.max_header_bytes {
            return Err(Refusal::Headers(format!(
                "{bytes} bytes of headers; at most {} are accepted",
                l.max_header_bytes
            )));
        }
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > l.max_body_bytes) {
            return Err(Refusal::Body(l.max_body_bytes));
        }
        checked(self.clients.check_key(&client), "this client address")?;
        checked(self.bucket.check(), "this site")?;
        // A WebSocket has a budget of its own: hundreds of event
        // subscribers never leave a door unlock waiting for a slot.
        let slots = if websocket {
            let per_client = self
                .websockets_by_client
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(client)
                .or_default()
                .clone();
            vec![
                take(&self.websockets, l.max_websockets).ok_or(Refusal::Busy("WebSockets"))?,
                take(&per_client, l.max_websockets_per_client)
                    .ok_or(Refusal::Busy("WebSockets from this client address"))?,
            ]
        } else {
            vec![take(&self.requests, l.max_concurrent_requests).ok_or(Refusal::Busy("requests"))?]
        };
        Ok(Admitted {
            slots,
            body: BodyLimits::of(l),
        })
    }

    /// The body limits in force.
    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits::of(&self.limits)
    }

    /// Forgets idle client buckets and counters (call now and then: they
    /// are per address).
    pub fn forget_idle(&self) {
        self.clients.retain_recent();
        self.clients.shrink_to_fit();
        self.websockets_by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, n| n.load(Ordering::Acquire) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

    #[test]
    fn limits_cross_the_wire_and_missing_fields_take_defaults() {
        let l = Limits {
            site_rate: 7,
            allow: vec!["203.0.113.0/24".parse().unwrap()],
            ..Limits::default()
        };
        let back: Limits = serde_json::from_slice(&serde_json::to_vec(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        let older: Limits = serde_json::from_str(r#"{"site_rate":7}"#).unwrap();
        assert_eq!(older.max_headers, Limits::default().max_headers);
    }

    #[test]
    fn a_change_keeps_open_slots_and_unchanged_buckets() {
        let first = SiteEdge::new(Limits {
            max_concurrent_requests: 1,
            client_rate: 1,
            client_burst: 1,
            ..Limits::default()
        });
        let h = HeaderMap::new();
        let open = first.admit(IP, &h, false).unwrap();
        let second = SiteEdge::after(
            &first,
            Limits {
                max_concurrent_requests: 1,
                client_rate: 1,
                client_burst: 1,
                max_headers: 50,
                ..Limits::default()
            },
        );
        // The client's bucket is spent and its request still open.
        assert!(matches!(second.admit(IP, &h, false), Err(Refusal::Rate { .. })));
        let other: IpAddr = "127.0.0.8".parse().unwrap();
        assert_eq!(second.admit(other, &h, false).unwrap_err(), Refusal::Busy("requests"));
        drop(open);
        assert!(second.admit("127.0.0.9".parse().unwrap(), &h, false).is_ok());
    }

    #[tokio::test]
    async fn refusals_answer_in_the_envelope_with_retry_after_for_429() {
        let r = Refusal::Rate {
            scope: "this site",
            retry_after: 3,
        }
        .response("hq");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "3");
        let a = crate::envelope::Answer::read(Refusal::NeedsLength(1024).response("hq"))
            .await
            .unwrap();
        assert!(
            a.is(411, "CODE_KEYWAY_LENGTH_REQUIRED", "must declare its length"),
            "{a:?}"
        );
        assert_eq!(a.retry_after, None);
    }
}
