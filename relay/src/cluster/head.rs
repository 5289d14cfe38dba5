//! What a node tells its peer with a forwarded request: the site, the
//! client's address (for `X-Forwarded-For`) and the request id, as request
//! headers. The sending node removes any the client sent before setting
//! its own; the receiving node believes them only on a node-to-node stream
//! (mutual TLS with a node certificate) and takes them off the request.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue};

/// The site routed to by the node the client reached.
pub const SITE: &str = "keyway-forward-site";
/// The integration's address.
pub const CLIENT: &str = "keyway-forward-client";
/// The request id that node gave it.
pub const REQUEST_ID: &str = "keyway-forward-id";

/// The head of one forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardHead {
    /// The site routed to by the node the client reached.
    pub site: String,
    /// The integration's address.
    pub client: SocketAddr,
    /// The request id that node gave it.
    pub request_id: String,
}

impl ForwardHead {
    /// Replaces whatever forwarding headers `headers` has with these.
    pub fn set(&self, headers: &mut HeaderMap) {
        Self::strip(headers);
        for (name, value) in [
            (SITE, self.site.clone()),
            (CLIENT, self.client.to_string()),
            (REQUEST_ID, self.request_id.clone()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// Takes the forwarding headers off a peer's request; `None` when one is
    /// missing or malformed (the peer is not speaking this protocol).
    pub fn take(headers: &mut HeaderMap) -> Option<Self> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let head = Self {
            site: get(SITE).filter(|s| crate::config::validate_site_name(s).is_ok())?,
            client: get(CLIENT)?.parse().ok()?,
            request_id: get(REQUEST_ID)?,
        };
        Self::strip(headers);
        Some(head)
    }

    /// Removes every forwarding header.
    pub fn strip(headers: &mut HeaderMap) {
        for name in [SITE, CLIENT, REQUEST_ID] {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_reads_back_replaces_a_clients_and_garbage_is_refused() {
        let head = ForwardHead {
            site: "hq".into(),
            client: "[2001:db8::1]:4431".parse().unwrap(),
            request_id: "r-1".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(SITE, HeaderValue::from_static("branch-2"));
        headers.append(SITE, HeaderValue::from_static("other"));
        head.set(&mut headers);
        assert_eq!(headers.get_all(SITE).iter().count(), 1, "the client's are gone");
        assert_eq!(ForwardHead::take(&mut headers), Some(head));
        assert!(headers.is_empty(), "taken off the request");

        let mut bad = HeaderMap::new();
        bad.insert(SITE, HeaderValue::from_static("../hq"));
        bad.insert(CLIENT, HeaderValue::from_static("127.0.0.1:1"));
        bad.insert(REQUEST_ID, HeaderValue::from_static("x"));
        assert_eq!(ForwardHead::take(&mut bad), None);
        let mut partial = HeaderMap::new();
        partial.insert(SITE, HeaderValue::from_static("hq"));
        assert_eq!(ForwardHead::take(&mut partial), None);
    }
}
