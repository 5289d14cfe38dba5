//! The error envelope Keyway answers with, in the console's own format.
//!
//! UniFi Access answers `{"code":"CODE_…","msg":"…","data":null}`; integrations
//! already parse that, so errors produced by the relay or the agent use it too,
//! with codes of our own (`CODE_KEYWAY_…`) that say which hop failed.

use http::StatusCode;
use serde::Serialize;

/// The errors Keyway itself answers with, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The `Host` names no site this relay knows.
    SiteNotFound,
    /// The site exists but its agent is not connected.
    AgentOffline,
    /// The agent could not connect to the console.
    ConsoleUnreachable,
    /// The console's certificate does not match the pinned fingerprint.
    ConsoleCertificate,
    /// The tunnel failed while the request was under way.
    TunnelFailed,
    /// No response in time (from the console, or through the tunnel).
    Timeout,
    /// The request is malformed or not allowed at the edge.
    BadRequest,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// A body sent without a declared length is larger than the edge reads
    /// whole; large uploads must send `Content-Length`.
    LengthRequired,
    /// The request's headers are too many or too large.
    HeadersTooLarge,
    /// The request target (path and query) is longer than the relay
    /// forwards ([`crate::MAX_URI_BYTES`]).
    UriTooLong,
    /// The client's address is not in the site's allow-list.
    ClientNotAllowed,
    /// Over a request rate (per site or per client address).
    RateLimited,
    /// Too many requests or WebSockets under way for the site.
    TooManyConcurrent,
    /// The agent's route policy refuses this call.
    PolicyDenied,
    /// A Keyway integration token that is unknown, revoked or expired.
    TokenInvalid,
    /// Something inside Keyway failed.
    Internal,
    /// A zero-knowledge site's request reached the relay in plain text
    /// (its TLS ends at its own agent, reached by the site's own name).
    ZeroKnowledge,
}

impl ErrorCode {
    /// Every code, for tests and docs.
    pub const ALL: [ErrorCode; 18] = [
        Self::SiteNotFound,
        Self::AgentOffline,
        Self::ConsoleUnreachable,
        Self::ConsoleCertificate,
        Self::TunnelFailed,
        Self::Timeout,
        Self::BadRequest,
        Self::PayloadTooLarge,
        Self::LengthRequired,
        Self::HeadersTooLarge,
        Self::UriTooLong,
        Self::ClientNotAllowed,
        Self::RateLimited,
        Self::TooManyConcurrent,
        Self::PolicyDenied,
        Self::TokenInvalid,
        Self::Internal,
        Self::ZeroKnowledge,
    ];

    /// The HTTP status for this error.
    pub fn status(self) -> StatusCode {
        match self {
            Self::SiteNotFound => StatusCode::NOT_FOUND,
            Self::AgentOffline => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConsoleUnreachable | Self::ConsoleCertificate | Self::TunnelFailed => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::ClientNotAllowed | Self::PolicyDenied => StatusCode::FORBIDDEN,
            Self::RateLimited | Self::TooManyConcurrent => StatusCode::TOO_MANY_REQUESTS,
            Self::TokenInvalid => StatusCode::UNAUTHORIZED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ZeroKnowledge => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// The envelope's `code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SiteNotFound => "CODE_KEYWAY_SITE_NOT_FOUND",
            Self::AgentOffline => "CODE_KEYWAY_AGENT_OFFLINE",
            Self::ConsoleUnreachable => "CODE_KEYWAY_CONSOLE_UNREACHABLE",
            Self::ConsoleCertificate => "CODE_KEYWAY_CONSOLE_CERTIFICATE",
            Self::TunnelFailed => "CODE_KEYWAY_TUNNEL_FAILED",
            Self::Timeout => "CODE_KEYWAY_TIMEOUT",
            Self::BadRequest => "CODE_KEYWAY_BAD_REQUEST",
            Self::PayloadTooLarge => "CODE_KEYWAY_PAYLOAD_TOO_LARGE",
            Self::LengthRequired => "CODE_KEYWAY_LENGTH_REQUIRED",
            Self::HeadersTooLarge => "CODE_KEYWAY_HEADERS_TOO_LARGE",
            Self::UriTooLong => "CODE_KEYWAY_URI_TOO_LONG",
            Self::ClientNotAllowed => "CODE_KEYWAY_CLIENT_NOT_ALLOWED",
            Self::RateLimited => "CODE_KEYWAY_RATE_LIMITED",
            Self::TooManyConcurrent => "CODE_KEYWAY_TOO_MANY_CONCURRENT",
            Self::PolicyDenied => "CODE_KEYWAY_POLICY_DENIED",
            Self::TokenInvalid => "CODE_KEYWAY_TOKEN_INVALID",
            Self::Internal => "CODE_KEYWAY_INTERNAL",
            Self::ZeroKnowledge => "CODE_KEYWAY_ZERO_KNOWLEDGE",
        }
    }
}

/// `{"code": …, "msg": …, "data": null}`.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// Machine-readable code.
    pub code: &'a str,
    /// Human-readable message: what failed and what to do.
    pub msg: &'a str,
    /// Always `null` for errors.
    pub data: Option<()>,
}

impl<'a> Envelope<'a> {
    /// An error envelope for `code` with message `msg`.
    pub fn error(code: ErrorCode, msg: &'a str) -> Self {
        Self {
            code: code.as_str(),
            msg,
            data: None,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelope always serializes")
    }
}

/// The body of every response either end sends: streamed from the other
/// hop, or an envelope of its own.
pub type HttpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

/// A complete error response: status, `Content-Type: application/json` and
/// the envelope body.
pub fn response(code: ErrorCode, msg: &str) -> http::Response<HttpBody> {
    use http_body_util::BodyExt;
    let body = bytes::Bytes::from(Envelope::error(code, msg).to_json());
    let body = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = http::Response::new(body);
    *resp.status_mut() = code.status();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error response read back: what a client of either end sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The envelope's `code` (empty if the body is not an envelope).
    pub code: String,
    /// The envelope's `msg`.
    pub msg: String,
    /// `Retry-After`, if sent.
    pub retry_after: Option<String>,
}

impl Answer {
    /// Reads `resp` whole (an envelope is small).
    pub async fn read(resp: http::Response<HttpBody>) -> Result<Self, hyper::Error> {
        use http_body_util::BodyExt;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok(Self {
            status: parts.status.as_u16(),
            code: field("code"),
            msg: field("msg"),
            retry_after: (parts.headers.get(http::header::RETRY_AFTER))
                .and_then(|r| r.to_str().ok())
                .map(str::to_string),
        })
    }

    /// Whether this is `status` with `code` and a message saying `says`.
    pub fn is(&self, status: u16, code: &str, says: &str) -> bool {
        self.status == status && self.code == code && self.msg.contains(says)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_lists_every_code_with_its_status() {
        let readme = include_str!("../../README.md");
        let table = readme.split("## Error codes").nth(1).expect("the README has the table");
        let rows: Vec<&str> = (table.lines().skip_while(|l| !l.starts_with('|')))
            .take_while(|l| l.starts_with('|'))
            .filter(|l| l.contains("`CODE_KEYWAY_"))
            .collect();
        assert_eq!(rows.len(), ErrorCode::ALL.len(), "one row per code");
        for code in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", code.status().as_u16(), code.as_str());
            assert!(rows.iter().any(|r| r.starts_with(&row)), "the README lacks {row}");
        }
    }

    #[test]
    fn envelope_matches_the_consoles_format() {
        let body = Envelope::error(ErrorCode::AgentOffline, "agent \"hq\" is offline").to_json();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "CODE_KEYWAY_AGENT_OFFLINE");
        assert_eq!(v["msg"], "agent \"hq\" is offline");
        assert!(v["data"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn statuses_follow_design() {
        assert_eq!(ErrorCode::SiteNotFound.status(), 404);
        assert_eq!(ErrorCode::AgentOffline.status(), 503);
        assert_eq!(ErrorCode::ConsoleUnreachable.status(), 502);
        assert_eq!(ErrorCode::ConsoleCertificate.status(), 502);
        assert_eq!(ErrorCode::Timeout.status(), 504);
        assert_eq!(ErrorCode::BadRequest.status(), 400);
    }
}
