//! The request as it enters the tunnel: hop-by-hop headers gone, the host
//! and the client's address stated by the relay, an origin-form target.

use std::net::SocketAddr;

use http::header::{HeaderValue, HOST};
use http::{Uri, Version};
use keyway_proto::headers::{set_forwarded, set_upgrade, strip_hop_by_hop};

/// Rewrites `parts` for the tunnel; the protocol the client asked to
/// upgrade to, if any, stays asked for.
pub(crate) fn for_tunnel(parts: &mut http::request::Parts, peer: SocketAddr, request_id: &str) -> Option<HeaderValue> {
    let host = parts.uri.authority().map(|a| a.as_str().to_string());
    let upgrade = strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = &upgrade {
        set_upgrade(&mut parts.headers, proto.clone());
    }
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        parts.headers.insert(HOST, h);
    }
    set_forwarded(&mut parts.headers, peer.ip(), request_id);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn forwarded_headers_replace_client_claims() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        set_forwarded(&mut h, "127.0.0.9".parse().unwrap(), "abc");
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "abc");
        assert!(h.get("forwarded").is_none());
        assert_eq!(keyway_proto::headers::new_request_id().len(), 24);
    }

    #[test]
    fn the_tunnel_gets_an_origin_form_target_and_the_clients_host() {
        let (mut parts, ()) = http::Request::get("https://hq.relay.example/api?x=1")
            .header("connection", "upgrade, x-secret")
            .header("x-secret", "1")
            .header("upgrade", "websocket")
            .body(())
            .unwrap()
            .into_parts();
        let upgrade = for_tunnel(&mut parts, "127.0.0.9:5000".parse().unwrap(), "id");
        assert_eq!(upgrade.as_ref().map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(parts.uri, "/api?x=1");
        assert_eq!(parts.headers[HOST], "hq.relay.example");
        assert!(parts.headers.get("x-secret").is_none());
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.version, Version::HTTP_11);
    }
}
