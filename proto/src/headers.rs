//! Header rules for forwarding: what is hop-by-hop and how upgrades survive.
//!
//! RFC 9110 §7.6.1: `Connection` and the headers it names, plus the classic
//! hop-by-hop set, belong to one connection and must not be forwarded. An
//! `Upgrade: websocket` request is the one exception we carry across: the
//! upgrade is re-declared on the next hop so the console sees a WebSocket
//! handshake.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};

/// Headers that never cross a hop, whatever `Connection` says.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers; returns the `Upgrade` value if the message
/// asked for one (its `Connection` lists `upgrade`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut named: Vec<HeaderName> = Vec::new();
    let mut wants_upgrade = false;
    for value in headers.get_all(CONNECTION) {
        let Ok(s) = value.to_str() else { continue };
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            } else if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let upgrade = headers.remove(UPGRADE);
    if wants_upgrade {
        upgrade
    } else {
        None
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Re-declares an upgrade on the next hop.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Whoever terminates the client's TLS is the edge (the relay, or the agent
/// of a zero-knowledge site): what the client claims about forwarding is
/// replaced by the address it came from and the request's id.
pub fn set_forwarded(headers: &mut HeaderMap, client: std::net::IpAddr, request_id: &str) {
    headers.remove("forwarded");
    if let Ok(v) = HeaderValue::from_str(&client.to_canonical().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
}

/// A request id unique to this process: a random prefix drawn once
/// and a counter (no system call per request; ids correlate logs, they
/// are not secrets).
pub fn new_request_id() -> String {
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("authorization", "Bearer token"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(strip_hop_by_hop(&mut h), None);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn keeps_websocket_upgrade_only_when_connection_asks() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        assert_eq!(strip_hop_by_hop(&mut h).unwrap(), "websocket");
        assert!(h.get(UPGRADE).is_none());
        set_upgrade(&mut h, HeaderValue::from_static("websocket"));
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");

        let mut h = map(&[("upgrade", "websocket")]);
        assert!(!wants_upgrade(&h));
        assert_eq!(
            strip_hop_by_hop(&mut h),
            None,
            "Upgrade without Connection: upgrade is dropped"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn tolerates_garbage_connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b"\xff, ,bad token").unwrap());
        h.append(CONNECTION, HeaderValue::from_static(" , bad header name ,"));
        assert_eq!(strip_hop_by_hop(&mut h), None);
        assert!(h.is_empty());
    }
}
