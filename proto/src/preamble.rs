//! The first byte of every relay-opened stream: what the stream carries.
//!
//! `Http`: one proxied HTTP/1.1 exchange (pooled for more). `Sealed`: a
//! client's TLS connection to a zero-knowledge site, byte for byte; the
//! byte is followed by the client's address ([`encode_client`]) so the
//! agent, which terminates that TLS, knows who called.

use std::net::SocketAddr;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a relay-opened bidirectional stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// One proxied HTTP/1.1 exchange (and, after a `101`, raw upgraded bytes).
    Http = 0x01,
    /// A client's TLS bytes, untouched, after the client's address.
    Sealed = 0x02,
}

/// The longest client address on the wire (`[v6%scope]:port` fits).
const MAX_CLIENT_LEN: usize = 64;

/// The client's address after a `Sealed` byte: a length byte, then
/// `ip:port` in ASCII.
pub fn encode_client(client: SocketAddr) -> Vec<u8> {
    let text = SocketAddr::new(client.ip().to_canonical(), client.port()).to_string();
    let mut out = Vec::with_capacity(text.len() + 1);
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Reads what [`encode_client`] wrote.
pub async fn read_client(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<SocketAddr> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("client address: {why}"));
    let len = io.read_u8().await? as usize;
    if len == 0 || len > MAX_CLIENT_LEN {
        return Err(bad("bad length"));
    }
    let mut text = [0u8; MAX_CLIENT_LEN];
    io.read_exact(&mut text[..len]).await?;
    std::str::from_utf8(&text[..len])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("not ip:port"))
}

/// A preamble byte this version does not know.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown stream kind 0x{0:02x}: the relay is newer than this agent; update the agent")]
pub struct UnknownKind(pub u8);

impl StreamKind {
    /// The byte sent on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses the preamble byte.
    pub fn from_byte(b: u8) -> Result<Self, UnknownKind> {
        match b {
            0x01 => Ok(Self::Http),
            0x02 => Ok(Self::Sealed),
            other => Err(UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown() {
        assert_eq!(StreamKind::from_byte(StreamKind::Http.to_byte()), Ok(StreamKind::Http));
        assert_eq!(StreamKind::from_byte(0), Err(UnknownKind(0)));
        assert!(UnknownKind(0xff).to_string().contains("0xff"));
        assert_eq!(StreamKind::from_byte(2), Ok(StreamKind::Sealed));
    }

    #[tokio::test]
    async fn client_addresses_round_trip_and_garbage_is_refused() {
        for a in ["127.0.0.9:443", "[::1]:65535", "[::ffff:127.0.0.1]:1"] {
            let addr: SocketAddr = a.parse().unwrap();
            let wire = encode_client(addr);
            let back = read_client(&mut &wire[..]).await.unwrap();
            assert_eq!(back.ip(), addr.ip().to_canonical());
            assert_eq!(back.port(), addr.port());
        }
        for wire in [&b"\x00"[..], b"\x05hello", b"\xffxx", b"\x09127.0.0.1", b""] {
            assert!(read_client(&mut &wire[..]).await.is_err(), "{wire:?}");
        }
    }
}
