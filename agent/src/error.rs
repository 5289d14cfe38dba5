//! How a request fails at the agent: every reason the agent answers a
//! tunnel request itself instead of the console, and the one function that
//! turns a reason into the response (status, envelope code, message,
//! `Retry-After`). The relay's counterpart is `keyway_relay::proxy::error`.

use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER};
use http::Response;
use keyway_proto::envelope::{ErrorCode, HttpBody};
use keyway_proto::path::PathError;

/// Why the agent answers a request itself. Each variant but [`Console`]
/// is one envelope code; [`respond`] is the only place a variant becomes
/// a response.
///
/// [`Console`]: AgentError::Console
pub enum AgentError {
    /// 400 `CODE_KEYWAY_BAD_REQUEST`.
    BadRequest(BadRequest),
    /// 401 `CODE_KEYWAY_TOKEN_INVALID`.
    TokenInvalid(TokenInvalid),
    /// 403 `CODE_KEYWAY_POLICY_DENIED`.
    PolicyDenied {
        /// `METHOD /path`.
        call: String,
        /// The credential refused.
        credential: String,
        /// The rule that refuses it.
        why: String,
    },
    /// 429 `CODE_KEYWAY_RATE_LIMITED`: door control over its rate.
    RateLimited {
        /// Whose rate: "this credential", "this site".
        scope: &'static str,
        /// Seconds until a retry may pass.
        retry_after: u64,
    },
    /// 502 `CODE_KEYWAY_CONSOLE_UNREACHABLE`.
    ConsoleUnreachable(Unreachable),
    /// 502 `CODE_KEYWAY_CONSOLE_CERTIFICATE`: the mismatch, both fingerprints.
    ConsoleCertificate(String),
    /// 504 `CODE_KEYWAY_TIMEOUT`.
    Timeout(Timeout),
    /// 500 `CODE_KEYWAY_INTERNAL`: the agent could not build its own
    /// request to the console (what it was).
    Internal(&'static str),
    /// The console's own refusal (of a subscriber's token), passed on as is.
    Console(Box<Response<HttpBody>>),
}

/// What made a request malformed.
#[derive(Debug)]
pub enum BadRequest {
    /// The path has no canonical form.
    Path(PathError),
    /// The canonical target does not rebuild into a URI.
    Target,
    /// The event stream was asked for without a WebSocket upgrade.
    NotWebSocket,
    /// The event stream's `since` query is malformed.
    Since(String),
    /// The `Authorization` header is not a valid header value.
    Authorization,
}

/// Which token was refused.
#[derive(Debug)]
pub enum TokenInvalid {
    /// No `Authorization: Bearer` at all (the event stream needs one).
    Missing,
    /// A `kw_` token this agent does not know, or has revoked.
    Unknown,
    /// The `kw_` token of this integration has expired.
    Expired(String),
    /// The console's own token, where `passthrough = false`.
    PassthroughOff,
}

/// Why the console could not be reached.
#[derive(Debug)]
pub enum Unreachable {
    /// No TCP connection or TLS handshake (the cause chain).
    Connect(String),
    /// The connection failed during the exchange (the cause chain).
    Connection(String),
    /// An integration token was accepted but no console token is stored.
    NoConsoleToken,
    /// The agent's own subscription to the console's events is down.
    NoEventStream,
    /// The console answered `101` to a request that asked for no upgrade.
    UnrequestedSwitch,
}

/// What took too long.
#[derive(Debug)]
pub enum Timeout {
    /// Waiting for a turn at the console (all its slots busy).
    Busy {
        /// Requests the console may have under way.
        slots: usize,
        /// The time waited.
        after: Duration,
    },
    /// The console's response head.
    Head(Duration),
    /// The console's answer to a subscriber's token check.
    TokenCheck,
}

impl AgentError {
    /// The envelope code, or `None` for the console's own answer.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::TokenInvalid(_) => ErrorCode::TokenInvalid,
            Self::PolicyDenied { .. } => ErrorCode::PolicyDenied,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::ConsoleUnreachable(_) => ErrorCode::ConsoleUnreachable,
            Self::ConsoleCertificate(_) => ErrorCode::ConsoleCertificate,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Console(_) => return None,
        })
    }

    /// The HTTP status the client gets.
    pub fn status(&self) -> http::StatusCode {
        match (self, self.code()) {
            (Self::Console(resp), _) => resp.status(),
            (_, Some(code)) => code.status(),
            (_, None) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client reads: what failed and what to do.
    fn message(&self) -> String {
        match self {
            Self::BadRequest(why) => match why {
                BadRequest::Path(e) => format!("{e}; send the path in its plain form"),
                BadRequest::Target => "the request target is not valid".into(),
                BadRequest::NotWebSocket => {
                    "this endpoint speaks WebSocket only (Upgrade: websocket, Sec-WebSocket-Version: 13)".into()
                }
                BadRequest::Since(msg) => msg.clone(),
                BadRequest::Authorization => "invalid Authorization header".into(),
            },
            Self::TokenInvalid(which) => match which {
                TokenInvalid::Missing => "missing Authorization: Bearer <API token>".into(),
                TokenInvalid::Unknown => "this Keyway integration token is not valid here (unknown or revoked)".into(),
                TokenInvalid::Expired(name) => {
                    format!("the Keyway token of integration {name:?} has expired; issue a new one")
                }
                TokenInvalid::PassthroughOff => {
                    "this site accepts only Keyway integration tokens (passthrough is off)".into()
                }
            },
            Self::PolicyDenied { call, credential, why } => {
                format!("{call} is not allowed for {credential} on this site: {why}")
            }
            Self::RateLimited { scope, retry_after } => {
                format!("too many door unlocks or emergency changes from {scope}; retry after {retry_after}s")
            }
            Self::ConsoleUnreachable(why) => match why {
                Unreachable::Connect(detail) => format!("the agent could not connect to the console: {detail}"),
                Unreachable::Connection(detail) => format!("the console connection failed: {detail}"),
                Unreachable::NoConsoleToken => {
                    "the agent has no console token to call the console with (keyway-agent console-token set)".into()
                }
                Unreachable::NoEventStream => {
                    "the agent is not connected to the console's event stream; retry shortly".into()
                }
                Unreachable::UnrequestedSwitch => "the console switched protocols without an upgrade request".into(),
            },
            Self::ConsoleCertificate(mismatch) => {
                format!("the agent refused the console's certificate: {mismatch}")
            }
            Self::Timeout(what) => match what {
                Timeout::Busy { slots, after } => format!(
                    "the console had {slots} requests under way for {}; try again",
                    humantime::format_duration(*after)
                ),
                Timeout::Head(after) => format!(
                    "the console did not answer within {}",
                    humantime::format_duration(*after)
                ),
                Timeout::TokenCheck => "the console did not answer the token check".into(),
            },
            Self::Internal(what) => format!("the agent could not build {what}; this is a bug in Keyway"),
            Self::Console(_) => String::new(),
        }
    }
}

/// The response for `e`: its status and envelope (`Retry-After` for 429s),
/// or the console's own answer.
pub fn respond(e: AgentError) -> Response<HttpBody> {
    if let AgentError::Console(resp) = e {
        return *resp;
    }
    let code = e.code().unwrap_or(ErrorCode::Internal);
    let mut resp = keyway_proto::envelope::response(code, &e.message());
    if let AgentError::RateLimited { retry_after, .. } = e {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
    }
    resp
}

#[cfg(test)]
mod tests {
    use keyway_proto::envelope::{Answer, ErrorCode};

    use super::*;

    /// Asserts `e` answers `status` with `code` and a message saying `says`.
    async fn check(e: AgentError, status: u16, code: &str, says: &str) -> Answer {
        let resp = respond(e);
        assert_eq!(resp.headers()[http::header::CONTENT_TYPE], "application/json");
        let a = Answer::read(resp).await.unwrap();
        assert!(a.is(status, code, says), "{a:?} is not {status} {code} saying {says:?}");
        a
    }

    #[tokio::test]
    async fn bad_request() {
        for (why, says) in [
            (BadRequest::Path(PathError::DotSegment), "dot-segment"),
            (BadRequest::Target, "not valid"),
            (BadRequest::NotWebSocket, "WebSocket only"),
            (BadRequest::Since("since must be a number".into()), "since must be"),
            (BadRequest::Authorization, "Authorization header"),
        ] {
            check(AgentError::BadRequest(why), 400, "CODE_KEYWAY_BAD_REQUEST", says).await;
        }
    }

    #[tokio::test]
    async fn token_invalid() {
        for (which, says) in [
            (TokenInvalid::Missing, "missing Authorization"),
            (TokenInvalid::Unknown, "unknown or revoked"),
            (TokenInvalid::Expired("crm".into()), "\"crm\" has expired"),
            (TokenInvalid::PassthroughOff, "passthrough is off"),
        ] {
            check(AgentError::TokenInvalid(which), 401, "CODE_KEYWAY_TOKEN_INVALID", says).await;
        }
    }

    #[tokio::test]
    async fn policy_denied() {
        let e = AgentError::PolicyDenied {
            call: "DELETE /api/v1/developer/users/1".into(),
            credential: "integration:crm".into(),
            why: "rule 2 denies DELETE".into(),
        };
        let says = "DELETE /api/v1/developer/users/1 is not allowed for integration:crm on this site: rule 2";
        check(e, 403, "CODE_KEYWAY_POLICY_DENIED", says).await;
    }

    #[tokio::test]
    async fn rate_limited_says_when_to_retry() {
        let (scope, retry_after) = ("this credential", 12);
        let says = "from this credential; retry after 12s";
        let a = check(
            AgentError::RateLimited { scope, retry_after },
            429,
            "CODE_KEYWAY_RATE_LIMITED",
            says,
        )
        .await;
        assert_eq!(a.retry_after.as_deref(), Some("12"));
    }

    #[tokio::test]
    async fn console_unreachable() {
        for (why, says) in [
            (
                Unreachable::Connect("refused".into()),
                "could not connect to the console: refused",
            ),
            (Unreachable::Connection("reset".into()), "connection failed: reset"),
            (Unreachable::NoConsoleToken, "console-token set"),
            (Unreachable::NoEventStream, "event stream"),
            (Unreachable::UnrequestedSwitch, "without an upgrade request"),
        ] {
            check(
                AgentError::ConsoleUnreachable(why),
                502,
                "CODE_KEYWAY_CONSOLE_UNREACHABLE",
                says,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn console_certificate() {
        let e = AgentError::ConsoleCertificate("pinned AA, presented BB".into());
        check(
            e,
            502,
            "CODE_KEYWAY_CONSOLE_CERTIFICATE",
            "refused the console's certificate: pinned AA",
        )
        .await;
    }

    #[tokio::test]
    async fn timeout() {
        let (slots, after) = (64, Duration::from_secs(30));
        for (what, says) in [
            (Timeout::Busy { slots, after }, "64 requests under way for 30s"),
            (Timeout::Head(after), "did not answer within 30s"),
            (Timeout::TokenCheck, "token check"),
        ] {
            check(AgentError::Timeout(what), 504, "CODE_KEYWAY_TIMEOUT", says).await;
        }
    }

    #[tokio::test]
    async fn internal() {
        let e = AgentError::Internal("the token check");
        check(e, 500, "CODE_KEYWAY_INTERNAL", "could not build the token check").await;
    }

    #[tokio::test]
    async fn the_consoles_own_refusal_passes_unchanged() {
        let mut refusal = keyway_proto::envelope::response(ErrorCode::BadRequest, "x");
        *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
        refusal.headers_mut().insert("x-console", HeaderValue::from_static("1"));
        let resp = respond(AgentError::Console(Box::new(refusal)));
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["x-console"], "1");
    }
}
