//! The host a request names, as the relay reads it for routing (and an
//! agent for its zero-knowledge site): from the target in absolute form or
//! the `Host` header, which must agree, lowercase. A request naming no
//! host, or one that does not parse, or two that disagree (a classic
//! smuggling and cache-poisoning shape), is refused with 400.

use http::header::HOST;
use http::Request;

/// Why a request's host could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The `Host` header does not parse as a host.
    Invalid,
    /// The request target (absolute form) and `Host` disagree.
    Conflict,
    /// No `Host` header and no absolute target.
    Missing,
}

impl HostError {
    /// What the client reads.
    pub fn message(self) -> &'static str {
        match self {
            Self::Invalid => "the Host header is not a valid host",
            Self::Conflict => "the request target and the Host header name different hosts",
            Self::Missing => "the request has no Host header",
        }
    }
}

/// The request's host, lowercase, without its port.
pub fn request_host<B>(req: &Request<B>) -> Result<String, HostError> {
    let header_host = req
        .headers()
        .get(HOST)
        .map(|h| h.to_str().ok().and_then(|s| s.parse::<http::uri::Authority>().ok()));
    let header_host = match header_host {
        Some(None) => return Err(HostError::Invalid),
        Some(Some(a)) => Some(a),
        None => None,
    };
    match (req.uri().authority(), &header_host) {
        (Some(target), Some(h)) if !target.host().eq_ignore_ascii_case(h.host()) => Err(HostError::Conflict),
        (Some(a), _) => Ok(a.host().to_ascii_lowercase()),
        (None, Some(h)) => Ok(h.host().to_ascii_lowercase()),
        (None, None) => Err(HostError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(target);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_host_comes_from_the_target_or_the_header_and_they_must_agree() {
        assert_eq!(
            request_host(&req("/x", Some("HQ.Example.com:443"))),
            Ok("hq.example.com".into())
        );
        assert_eq!(
            request_host(&req("https://hq.example.com/x", None)),
            Ok("hq.example.com".into())
        );
        assert_eq!(
            request_host(&req("https://evil.example/x", Some("hq.example.com"))),
            Err(HostError::Conflict)
        );
        assert_eq!(request_host(&req("/x", Some("not a host!"))), Err(HostError::Invalid));
        assert_eq!(request_host(&req("/x", None)), Err(HostError::Missing));
    }
}
