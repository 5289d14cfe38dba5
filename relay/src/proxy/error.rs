//! How a request fails at the relay: every reason the relay answers a
//! request itself, and the one function that turns a reason into the
//! response (status, envelope code, message, `Retry-After`).

use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER};
use http::Response;
use keyway_proto::envelope::{ErrorCode, HttpBody};
use keyway_proto::path::PathError;

use crate::limits::Refusal;
use crate::metrics::METRICS;

/// Why the relay answers a request itself. Each variant is one envelope
/// code; [`respond`] is the only place a variant becomes a response.
#[derive(Debug)]
pub enum ProxyError {
    /// 400 `CODE_KEYWAY_BAD_REQUEST`.
    BadRequest(BadRequest),
    /// 414 `CODE_KEYWAY_URI_TOO_LONG`: the target's length.
    UriTooLong(usize),
    /// 404 `CODE_KEYWAY_SITE_NOT_FOUND`.
    SiteNotFound {
        /// The host the request named.
        host: String,
        /// The relay's domain, for the hint.
        domain: String,
    },
    /// An edge limit: 403, 411, 413, 429 or 431 (see [`Refusal`]).
    Refused {
        /// The site.
        site: String,
        /// Which limit, and by how much.
        why: Refusal,
    },
    /// 503 `CODE_KEYWAY_AGENT_OFFLINE`.
    AgentOffline {
        /// The site.
        site: String,
        /// When the agent was found missing.
        when: Offline,
    },
    /// 504 `CODE_KEYWAY_TIMEOUT`: no response head within `request_timeout`.
    Timeout {
        /// The site.
        site: String,
        /// The time allowed.
        after: Duration,
    },
    /// 502 `CODE_KEYWAY_TUNNEL_FAILED`.
    TunnelFailed(TunnelFailure),
}

/// What made a request malformed.
#[derive(Debug)]
pub enum BadRequest {
    /// No host, one that does not parse, or two that disagree.
    Host(keyway_proto::host::HostError),
    /// The path has no canonical form.
    Path(PathError),
    /// The canonical target does not rebuild into a URI.
    Target,
    /// The client's body was malformed or cut off.
    Body,
}

/// When a site's agent was found missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// Before the request: no link in the table.
    NotConnected,
    /// Opening the request's stream: the link had closed.
    Disconnected,
    /// During the exchange: the link closed under it.
    DuringRequest,
}

/// How a request's tunnel stream failed while the tunnel stayed up.
#[derive(Debug)]
pub enum TunnelFailure {
    /// The stream broke, or the agent answered something that is not HTTP.
    Stream {
        /// The site.
        site: String,
    },
    /// The agent answered `101` to a request that asked for no upgrade.
    UnrequestedSwitch,
}

impl From<(Refusal, &str)> for ProxyError {
    /// An edge refusal for `site`.
    fn from((r, site): (Refusal, &str)) -> Self {
        Self::Refused {
            site: site.to_string(),
            why: r,
        }
    }
}

impl ProxyError {
    /// The envelope code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::UriTooLong(_) => ErrorCode::UriTooLong,
            Self::SiteNotFound { .. } => ErrorCode::SiteNotFound,
            Self::Refused { why, .. } => why.code(),
            Self::AgentOffline { .. } => ErrorCode::AgentOffline,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::TunnelFailed(_) => ErrorCode::TunnelFailed,
        }
    }

    /// The `edge_refused` reason, for the refusals the metric counts.
    fn refusal_reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::Refused { why, .. } => why.reason(),
            Self::BadRequest(BadRequest::Body) => "malformed",
            _ => return None,
        })
    }

    /// What the client reads: what failed and what to do.
    fn message(&self) -> String {
        match self {
            Self::BadRequest(why) => match why {
                BadRequest::Host(e) => e.message().into(),
                BadRequest::Path(e) => format!("{e}; send the path in its plain form"),
                BadRequest::Target => "the request target is not a valid path".into(),
                BadRequest::Body => "the request body is malformed or was cut off".into(),
            },
            Self::UriTooLong(len) => Refusal::UriTooLong(*len).message(""),
            Self::SiteNotFound { host, domain } => Refusal::UnknownHost {
                host: host.clone(),
                domain: domain.clone(),
            }
            .message(""),
            Self::Refused { site, why } => why.message(site),
            Self::AgentOffline { site, when } => match when {
                Offline::NotConnected => format!("the agent of site {site:?} is not connected to the relay"),
                Offline::Disconnected => format!("the agent of site {site:?} disconnected"),
                Offline::DuringRequest => format!("the agent of site {site:?} disconnected during the request"),
            },
            Self::Timeout { site, after } => keyway_proto::edge::timeout_message(site, *after),
            Self::TunnelFailed(TunnelFailure::Stream { site }) => {
                format!("the tunnel to site {site:?} failed during the request")
            }
            Self::TunnelFailed(TunnelFailure::UnrequestedSwitch) => {
                "the console switched protocols without an upgrade request".into()
            }
        }
    }

    /// Seconds a client should wait before retrying, where that is known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Refused { why, .. } => why.retry_after(),
            _ => None,
        }
    }
}

/// The response for `e`: its status and envelope, `Retry-After` for 429s;
/// edge refusals are counted in `edge_refused`.
pub fn respond(e: ProxyError) -> Response<HttpBody> {
    if let Some(reason) = e.refusal_reason() {
        METRICS
            .refused
            .get_or_create(&crate::metrics::Reason { reason: reason.into() })
            .inc();
    }
    let mut resp = keyway_proto::envelope::response(e.code(), &e.message());
    if let Some(secs) = e.retry_after() {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    tracing::debug!(status = resp.status().as_u16(), "answered by the relay: {e:?}");
    resp
}

#[cfg(test)]
mod tests {
    use keyway_proto::envelope::Answer;
    use keyway_proto::host::HostError;

    use super::*;

    fn site() -> String {
        "hq".into()
    }

    /// What a client reads for `e`.
    async fn answer(e: ProxyError) -> Answer {
        let resp = respond(e);
        assert_eq!(resp.headers()[http::header::CONTENT_TYPE], "application/json");
        Answer::read(resp).await.unwrap()
    }

    /// Asserts `e` answers `status` with `code` and a message saying `says`.
    async fn check(e: ProxyError, status: u16, code: &str, says: &str) -> Answer {
        let a = answer(e).await;
        assert!(a.is(status, code, says), "{a:?} is not {status} {code} saying {says:?}");
        a
    }

    #[tokio::test]
    async fn bad_request() {
        for (why, says) in [
            (BadRequest::Host(HostError::Invalid), "not a valid host"),
            (BadRequest::Host(HostError::Conflict), "different hosts"),
            (BadRequest::Host(HostError::Missing), "no Host header"),
            (BadRequest::Path(PathError::EncodedSlash), "plain form"),
            (BadRequest::Target, "not a valid path"),
            (BadRequest::Body, "malformed or was cut off"),
        ] {
            let a = check(ProxyError::BadRequest(why), 400, "CODE_KEYWAY_BAD_REQUEST", says).await;
            assert_eq!(a.retry_after, None);
        }
    }

    #[tokio::test]
    async fn uri_too_long() {
        let says = "20000 bytes; at most 16384";
        check(ProxyError::UriTooLong(20_000), 414, "CODE_KEYWAY_URI_TOO_LONG", says).await;
    }

    #[tokio::test]
    async fn site_not_found() {
        let e = ProxyError::SiteNotFound {
            host: "nope.relay.example".into(),
            domain: "relay.example".into(),
        };
        check(e, 404, "CODE_KEYWAY_SITE_NOT_FOUND", "https://<site>.relay.example/").await;
    }

    #[tokio::test]
    async fn client_not_allowed() {
        let e = ProxyError::from((Refusal::NotAllowed, "hq"));
        check(e, 403, "CODE_KEYWAY_CLIENT_NOT_ALLOWED", "allow-list").await;
    }

    #[tokio::test]
    async fn headers_too_large() {
        let e = ProxyError::from((Refusal::Headers("101 header fields".into()), "hq"));
        check(e, 431, "CODE_KEYWAY_HEADERS_TOO_LARGE", "101 header fields").await;
    }

    #[tokio::test]
    async fn payload_too_large() {
        let e = ProxyError::from((Refusal::Body(1024), "hq"));
        check(e, 413, "CODE_KEYWAY_PAYLOAD_TOO_LARGE", "1024 bytes site \"hq\"").await;
    }

    #[tokio::test]
    async fn length_required() {
        let says = "over 4096 bytes must declare its length";
        check(
            ProxyError::from((Refusal::NeedsLength(4096), "hq")),
            411,
            "CODE_KEYWAY_LENGTH_REQUIRED",
            says,
        )
        .await;
    }

    #[tokio::test]
    async fn rate_limited_says_when_to_retry() {
        let rate = Refusal::Rate {
            scope: "this client address",
            retry_after: 7,
        };
        let says = "this client address; retry after 7s";
        let a = check(ProxyError::from((rate, "hq")), 429, "CODE_KEYWAY_RATE_LIMITED", says).await;
        assert_eq!(a.retry_after.as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn too_many_concurrent_says_retry_in_a_second() {
        let e = ProxyError::from((Refusal::Busy("WebSockets"), "hq"));
        let a = check(
            e,
            429,
            "CODE_KEYWAY_TOO_MANY_CONCURRENT",
            "too many WebSockets under way",
        )
        .await;
        assert_eq!(a.retry_after.as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn agent_offline() {
        for (when, says) in [
            (Offline::NotConnected, "is not connected"),
            (Offline::Disconnected, "disconnected"),
            (Offline::DuringRequest, "disconnected during the request"),
        ] {
            let e = ProxyError::AgentOffline { site: site(), when };
            check(e, 503, "CODE_KEYWAY_AGENT_OFFLINE", says).await;
        }
    }

    #[tokio::test]
    async fn timeout() {
        let after = Duration::from_secs(30);
        let e = ProxyError::Timeout { site: site(), after };
        check(e, 504, "CODE_KEYWAY_TIMEOUT", "did not answer within 30s").await;
    }

    #[tokio::test]
    async fn tunnel_failed() {
        for (why, says) in [
            (TunnelFailure::Stream { site: site() }, "tunnel to site \"hq\" failed"),
            (TunnelFailure::UnrequestedSwitch, "without an upgrade request"),
        ] {
            check(ProxyError::TunnelFailed(why), 502, "CODE_KEYWAY_TUNNEL_FAILED", says).await;
        }
    }
}
