//! Messages of the pairing protocol (ALPN `keyway-pair/1`).
//!
//! One bidirectional stream, opened by the agent, framed like the control
//! stream ([`crate::control::read_frame`]). The exchange is a SPAKE2 run keyed
//! by the pairing code and bound to the TLS session (see `keyway_certs::pake`):
//!
//! ```text
//! agent → relay  Start    { code_id, spake, public_key }
//! relay → agent  Challenge{ spake, confirm }       or Error
//! agent → relay  Confirm  { confirm }
//! relay → agent  Done     { certificate, ca, site, … , mac }  or Error
//! ```

use serde::{Deserialize, Serialize};

/// Pairing messages. Binary fields are lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PairMsg {
    /// Agent → relay: which code, the agent's SPAKE2 message and its public key.
    Start {
        /// Protocol version ([`crate::PROTOCOL_VERSION`]).
        version: u16,
        /// The public part of the code (identifies the pending pairing).
        code_id: String,
        /// SPAKE2 message A.
        spake: String,
        /// The agent's SubjectPublicKeyInfo (DER), to be certified.
        public_key: String,
    },
    /// Relay → agent: SPAKE2 message B and the relay's key confirmation.
    Challenge {
        /// SPAKE2 message B.
        spake: String,
        /// MAC proving the relay derived the same key on this TLS session.
        confirm: String,
    },
    /// Agent → relay: the agent's key confirmation.
    Confirm {
        /// MAC proving the agent derived the same key on this TLS session.
        confirm: String,
    },
    /// Relay → agent: the agent's identity.
    Done {
        /// The site the agent now serves.
        site: String,
        /// The relay's public domain.
        domain: String,
        /// The name the relay's tunnel certificate is issued for.
        tunnel_name: String,
        /// The site's public URL.
        url: String,
        /// The agent certificate, PEM.
        certificate: String,
        /// The relay's private CA certificate, PEM.
        ca: String,
        /// MAC over the fields above with the pairing key.
        mac: String,
    },
    /// Relay → agent: pairing failed.
    Error {
        /// Why.
        kind: PairErrorKind,
        /// For a human.
        message: String,
    },
}

/// Why the relay refused to pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairErrorKind {
    /// No pending pairing has this code (typo, or a new code was made).
    WrongCode,
    /// The code's time ran out.
    Expired,
    /// The code was already used.
    Used,
    /// Too many wrong tries: the code is dead.
    Burned,
    /// The proof did not match (wrong code or a man in the middle).
    ProofFailed,
    /// Versions differ.
    Version,
    /// The relay failed.
    Internal,
}

impl PairMsg {
    /// The bytes the `Done` MAC covers: site, domain, tunnel name, URL,
    /// certificate, CA, each length-prefixed.
    pub fn done_transcript(fields: [&str; 6]) -> Vec<u8> {
        let mut t = Vec::new();
        for field in fields {
            t.extend_from_slice(&(field.len() as u64).to_be_bytes());
            t.extend_from_slice(field.as_bytes());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{decode_frame, encode_frame};
    use bytes::BytesMut;

    #[test]
    fn pair_messages_round_trip() {
        let msgs = [
            PairMsg::Start {
                version: 1,
                code_id: "7KQ".into(),
                spake: "aa".into(),
                public_key: "bb".into(),
            },
            PairMsg::Error {
                kind: PairErrorKind::Burned,
                message: "x".into(),
            },
        ];
        let mut buf = BytesMut::new();
        for m in &msgs {
            encode_frame(m, &mut buf);
        }
        for m in msgs {
            assert_eq!(decode_frame::<PairMsg>(&mut buf).unwrap(), Some(m));
        }
    }

    #[test]
    fn transcript_is_unambiguous() {
        assert_ne!(
            PairMsg::done_transcript(["ab", "c", "", "", "", ""]),
            PairMsg::done_transcript(["a", "bc", "", "", "", ""])
        );
    }
}
