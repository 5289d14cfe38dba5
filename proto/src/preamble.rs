//! The first byte of every relay-opened stream: what the stream carries.
//!
//! Only one kind exists today (plain HTTP/1.1); the byte leaves room for
//! others (raw TLS in zero-knowledge mode) without a protocol version bump.

use thiserror::Error;

/// What a relay-opened bidirectional stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// One proxied HTTP/1.1 exchange (and, after a `101`, raw upgraded bytes).
    Http = 0x01,
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
    }
}
