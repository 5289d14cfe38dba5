//! The Keyway tunnel protocol, without sockets.
//!
//! This crate owns what both ends of a tunnel must agree on: the ALPN ids, the
//! control-stream messages and their codec, the one-byte preamble of each
//! proxied-request stream, the QUIC close codes, the hop-by-hop header rules,
//! the canonical request path, the UniFi-style error envelope and the edge's
//! limits (applied by the relay, or by an agent terminating its own TLS). It does no I/O of its own beyond thin
//! `AsyncRead`/`AsyncWrite` helpers around the sans-IO codec.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod causes;
pub mod control;
pub mod edge;
pub mod envelope;
pub mod headers;
pub mod host;
pub mod io;
pub mod pair;
pub mod path;
pub mod preamble;
pub mod websocket;

/// ALPN id of the tunnel protocol (agent ↔ relay).
pub const ALPN_TUNNEL: &[u8] = b"keyway/1";
/// ALPN id of the pairing protocol.
pub const ALPN_PAIR: &[u8] = b"keyway-pair/1";
/// ALPN of node-to-node links between relays of one cluster.
pub const ALPN_NODE: &[u8] = b"keyway-node/1";
/// QUIC idle timeout of a tunnel, both ends: a silent path is declared dead
/// after this (keep-alives keep a healthy idle tunnel well inside it).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// Version carried in `Hello`; bumped on incompatible control-stream changes.
pub const PROTOCOL_VERSION: u16 = 1;

/// QUIC application close codes, so each side can say why it closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close.
    Normal = 0,
    /// The peers speak different protocol versions.
    VersionMismatch = 1,
    /// The peer broke the protocol (bad frame, unexpected message).
    ProtocolError = 2,
    /// The agent's certificate was revoked.
    Revoked = 3,
    /// A newer connection for the same site replaced this one.
    Replaced = 4,
    /// The process is shutting down; reconnect (to its replacement).
    Shutdown = 5,
    /// The site is not known to the relay.
    UnknownSite = 6,
    /// The relay heard nothing from the agent for [`SILENT_LIMIT`].
    Silent = 7,
}

/// The agent's keep-alive interval (QUIC keep-alive, or a TCP tunnel's
/// ping): an idle healthy agent is heard at least this often.
pub const AGENT_KEEPALIVE: std::time::Duration = std::time::Duration::from_millis(500);

/// The longest request target (path and query) the relay forwards; a
/// longer one is answered 414 at the edge.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// The most the relay's `max_header_bytes` may be set to.
pub const MAX_HEADER_BYTES_CEILING: usize = 64 * 1024;

/// What the agent buffers per tunnel stream, each way. A request head at
/// the relay's ceilings ([`MAX_URI_BYTES`], [`MAX_HEADER_BYTES_CEILING`]
/// and framing) fits; a response is written in pieces no larger, so 200
/// concurrent downloads hold tens of megabytes, not one each.
pub const STREAM_BUFFER: usize = 128 * 1024;

/// HTTP/2 keep-alive where a client's connection ends (the relay's front,
/// or a zero-knowledge site's agent): a ping this often, the connection
/// dropped when one is not answered within the same time, so a client that
/// vanished without a word does not hold its connection and streams.
pub const H2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// Silence after which the relay takes an agent for gone (four of its
/// keep-alives missed): requests waiting on it get their 503 then, long
/// before the transport's [`IDLE_TIMEOUT`]. The relay checks every 200 ms,
/// so a vanished agent is dropped within 2.4 s of its last packet.
pub const SILENT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

impl CloseCode {
    /// The code as a QUIC varint value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Maps a received close code back, if known.
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Normal,
            1 => Self::VersionMismatch,
            2 => Self::ProtocolError,
            3 => Self::Revoked,
            4 => Self::Replaced,
            5 => Self::Shutdown,
            6 => Self::UnknownSite,
            7 => Self::Silent,
            _ => return None,
        })
    }
}
