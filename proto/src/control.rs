//! The control stream: length-prefixed, versioned messages.
//!
//! The agent opens the first bidirectional stream of a tunnel connection and
//! both sides exchange [`ControlMsg`]s on it for the connection's lifetime.
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON
//! (a tagged object, so a newer peer can add fields without breaking an older
//! one). JSON keeps the control plane debuggable; it carries a few messages
//! a minute, so its cost does not matter.
//!
//! [`decode`] is sans-IO: it looks at a buffer and says "a message", "not
//! yet" or "this peer is broken", never blocking and never panicking.

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;
/// The largest control message accepted; a longer one is a broken peer.
pub const MAX_CONTROL_MSG_BYTES: usize = 64 * 1024;

/// An agent's event hub as it reports it (`Status`), for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubReport {
    /// Whether the hub's WebSocket to the console's notifications is up.
    pub upstream: bool,
    /// Door-event subscribers connected now.
    pub subscribers: u32,
    /// Sequence number of the newest event (0: none yet).
    pub last_seq: u64,
}

/// Messages on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// First message, agent → relay.
    Hello {
        /// The agent's protocol version ([`crate::PROTOCOL_VERSION`]).
        version: u16,
        /// The agent's software version, for `site list` and support.
        agent_version: String,
        /// Whether the agent could reach its console when it connected.
        console_ok: bool,
        /// What is wrong with the console, for `site list` (e.g. its
        /// certificate changed); absent from older agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        console_problem: Option<String>,
        /// This connection takes over from the agent's current one (moving
        /// from TCP back to QUIC): the relay drains the old connection so its
        /// in-flight requests finish, rather than closing it as a duplicate.
        #[serde(default)]
        handover: bool,
        /// The agent takes [`ControlMsg::Nodes`] updates (older agents
        /// would end the connection on a message they do not know).
        #[serde(default)]
        nodes: bool,
        /// The agent takes [`ControlMsg::Limits`] (and applies them to a
        /// zero-knowledge site, whose requests only it can read).
        #[serde(default)]
        limits: bool,
    },
    /// The relay's answer to an acceptable `Hello`.
    Welcome {
        /// The relay's protocol version.
        version: u16,
        /// The relay's software version.
        relay_version: String,
        /// The site this connection serves, as the relay read it from the certificate.
        site: String,
        /// In a cluster: where agents reach each live node (`ip:port`, this
        /// one included), so an agent can keep links to two of them. Empty
        /// for a single relay, and from older relays.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nodes: Vec<String>,
    },
    /// The relay refuses the connection; the reason is for a human.
    Refused {
        /// Why, with what to do next.
        reason: String,
    },
    /// Liveness probe; the peer answers with the same nonce.
    Ping {
        /// Echoed back in `Pong`.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// The sender stops taking new requests on this connection: reconnect now,
    /// in-flight requests finish on the old one.
    Drain {
        /// Why, for the logs.
        reason: String,
    },
    /// Agent → relay: the console's reachability, or its event hub's
    /// state, changed.
    Status {
        /// Whether the console answers.
        console_ok: bool,
        /// What is wrong with it, when something is (see `Hello`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        console_problem: Option<String>,
        /// The agent's event hub, when it runs one (older relays ignore
        /// the field; older agents never send it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hub: Option<HubReport>,
    },
    /// Relay → agent (one that said `nodes` in `Hello`): the cluster's live
    /// nodes changed; where agents reach each, as in `Welcome`.
    Nodes {
        /// `ip:port` of each live node.
        nodes: Vec<String>,
    },
    /// Relay → agent (one that said `limits` in `Hello`): the site's edge
    /// limits, after `Welcome` and whenever they change.
    Limits {
        /// Every limit, as the relay would apply it.
        limits: crate::edge::Limits,
    },
    /// Agent → relay: this agent is being unpaired; revoke its certificate.
    Unpair,
    /// Agent → relay, instead of `Hello` (`doctor`): what time is it? The
    /// relay answers with `Time` and closes; the connection never serves.
    TimeQuery,
    /// Relay → agent: the relay's clock.
    Time {
        /// Milliseconds since the Unix epoch.
        unix_ms: u64,
    },
}

/// Why a control frame could not be decoded. Each one ends the connection.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_CONTROL_MSG_BYTES`].
    #[error("control message of {0} bytes exceeds the {MAX_CONTROL_MSG_BYTES}-byte limit")]
    TooLong(usize),
    /// A zero-length frame carries no message.
    #[error("empty control message")]
    Empty,
    /// The body is not a message this version knows.
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Errors of the async read/write helpers.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The frame itself is bad.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream failed.
    #[error("control stream: {0}")]
    Io(#[from] std::io::Error),
    /// The peer finished the stream between messages.
    #[error("control stream closed by peer")]
    Closed,
    /// The peer finished the stream in the middle of a message.
    #[error("control stream closed in the middle of a message")]
    Truncated,
}

/// Appends one encoded message to `dst`.
pub fn encode(msg: &ControlMsg, dst: &mut BytesMut) {
    encode_frame(msg, dst)
}

/// Appends one frame holding any message type of this protocol.
pub fn encode_frame<T: Serialize>(msg: &T, dst: &mut BytesMut) {
    let body = serde_json::to_vec(msg).expect("protocol messages always serialize");
    debug_assert!(body.len() <= MAX_CONTROL_MSG_BYTES, "we never send oversized messages");
    dst.reserve(LEN_PREFIX + body.len());
    dst.put_u32(body.len() as u32);
    dst.put_slice(&body);
}

/// Takes one message off the front of `buf`: `Ok(None)` means "not yet".
pub fn decode(buf: &mut BytesMut) -> Result<Option<ControlMsg>, DecodeError> {
    decode_frame(buf)
}

/// Takes one frame of any message type off the front of `buf`.
pub fn decode_frame<T: DeserializeOwned>(buf: &mut BytesMut) -> Result<Option<T>, DecodeError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    // Cap before waiting for the body, so a hostile prefix cannot make us buffer.
    if len > MAX_CONTROL_MSG_BYTES {
        return Err(DecodeError::TooLong(len));
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    if buf.len() < LEN_PREFIX + len {
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    let body = buf.split_to(len);
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Reads the next message from `rd`, keeping partial input in `buf`.
///
/// Cancel-safe: bytes already read stay in `buf` for the next call.
pub async fn read_msg<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Result<ControlMsg, ControlError> {
    read_frame(rd, buf).await
}

/// Reads the next frame of any message type (see [`read_msg`]).
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<T, ControlError> {
    loop {
        if let Some(msg) = decode_frame(buf)? {
            return Ok(msg);
        }
        buf.reserve(1024);
        if rd.read_buf(buf).await? == 0 {
            return Err(if buf.is_empty() {
                ControlError::Closed
            } else {
                ControlError::Truncated
            });
        }
    }
}

/// Writes one message to `wr` and flushes it.
pub async fn write_msg<W: AsyncWrite + Unpin>(wr: &mut W, msg: &ControlMsg) -> Result<(), ControlError> {
    write_frame(wr, msg).await
}

/// Writes one frame of any message type and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(wr: &mut W, msg: &T) -> Result<(), ControlError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf);
    wr.write_all(&buf).await?;
    wr.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_kinds() -> Vec<ControlMsg> {
        vec![
            ControlMsg::Hello {
                version: 1,
                agent_version: "0.1.0".into(),
                console_ok: true,
                console_problem: None,
                handover: false,
                nodes: true,
                limits: true,
            },
            ControlMsg::Nodes {
                nodes: vec!["192.0.2.1:443".into()],
            },
            ControlMsg::Welcome {
                version: 1,
                relay_version: "0.1.0".into(),
                site: "hq".into(),
                nodes: Vec::new(),
            },
            ControlMsg::Welcome {
                version: 1,
                relay_version: "0.2.0".into(),
                site: "hq".into(),
                nodes: vec!["192.0.2.1:443".into(), "[2001:db8::1]:443".into()],
            },
            ControlMsg::Refused { reason: "no".into() },
            ControlMsg::Ping { nonce: u64::MAX },
            ControlMsg::Pong { nonce: 0 },
            ControlMsg::Drain {
                reason: "restart".into(),
            },
            ControlMsg::Status {
                console_ok: false,
                console_problem: Some("certificate changed".into()),
                hub: None,
            },
            ControlMsg::Status {
                console_ok: true,
                console_problem: None,
                hub: Some(HubReport {
                    upstream: true,
                    subscribers: 3,
                    last_seq: 42,
                }),
            },
            ControlMsg::Unpair,
            ControlMsg::TimeQuery,
            ControlMsg::Time {
                unix_ms: 1_764_547_200_000,
            },
        ]
    }

    #[test]
    fn round_trips_every_kind_back_to_back() {
        let mut buf = BytesMut::new();
        for m in all_kinds() {
            encode(&m, &mut buf);
        }
        for m in all_kinds() {
            assert_eq!(decode(&mut buf).unwrap(), Some(m));
        }
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn truncated_frame_is_not_yet_at_every_cut() {
        let mut full = BytesMut::new();
        encode(&all_kinds()[0], &mut full);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut part).unwrap(), None, "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed on 'not yet'");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_CONTROL_MSG_BYTES + 1) as u32);
        let err = decode(&mut buf).unwrap_err();
        assert!(matches!(err, DecodeError::TooLong(n) if n == MAX_CONTROL_MSG_BYTES + 1));
        assert!(err.to_string().contains("exceeds"));
    }

    #[test]
    fn empty_and_malformed_frames_are_errors() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(decode(&mut buf), Err(DecodeError::Empty)));

        for body in [
            &b"{"[..],
            b"[]",
            b"{\"type\":\"teleport\"}",
            b"{\"type\":\"ping\"}",
            b"\xff\xfe",
        ] {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.put_slice(body);
            assert!(matches!(decode(&mut buf), Err(DecodeError::Malformed(_))), "{body:?}");
        }
    }

    #[test]
    fn unknown_fields_from_a_newer_peer_are_ignored() {
        let body = br#"{"type":"pong","nonce":7,"added_in_v2":true}"#;
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(body);
        assert_eq!(decode(&mut buf).unwrap(), Some(ControlMsg::Pong { nonce: 7 }));
    }

    #[tokio::test]
    async fn async_helpers_report_clean_close_and_truncation() {
        let mut wire = BytesMut::new();
        encode(&ControlMsg::Ping { nonce: 3 }, &mut wire);
        let mut rd = &wire[..];
        let mut buf = BytesMut::new();
        assert_eq!(
            read_msg(&mut rd, &mut buf).await.unwrap(),
            ControlMsg::Ping { nonce: 3 }
        );
        assert!(matches!(read_msg(&mut rd, &mut buf).await, Err(ControlError::Closed)));

        let mut rd = &wire[..wire.len() - 1];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_msg(&mut rd, &mut buf).await,
            Err(ControlError::Truncated)
        ));

        let mut out = Vec::new();
        write_msg(&mut out, &ControlMsg::Drain { reason: "x".into() })
            .await
            .unwrap();
        let mut rd = &out[..];
        let mut buf = BytesMut::new();
        assert_eq!(
            read_msg(&mut rd, &mut buf).await.unwrap(),
            ControlMsg::Drain { reason: "x".into() }
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Keep decoding until it stops; each step either consumes or stops.
            for _ in 0..64 {
                match decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn decoder_handles_any_framed_body(body in proptest::collection::vec(any::<u8>(), 1..512)) {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.put_slice(&body);
            let _ = decode(&mut buf);
        }

        #[test]
        fn ping_round_trips(nonce in any::<u64>(), reason in ".{0,200}") {
            let mut buf = BytesMut::new();
            encode(&ControlMsg::Ping { nonce }, &mut buf);
            encode(&ControlMsg::Drain { reason: reason.clone() }, &mut buf);
            prop_assert_eq!(decode(&mut buf).unwrap(), Some(ControlMsg::Ping { nonce }));
            prop_assert_eq!(decode(&mut buf).unwrap(), Some(ControlMsg::Drain { reason }));
        }
    }
}
