//! Pairing codes and the SPAKE2 exchange that proves one.
//!
//! A code such as `7KQ4-M2XH-9P` is ten Crockford base-32 symbols (50 bits):
//! the first three name the pending pairing (`code_id`, sent in the clear so
//! the relay can find it), the other seven are the secret. Neither side ever
//! sends the secret: both run SPAKE2 (RustCrypto `spake2`, Ed25519 group)
//! keyed by a slow hash of it, so an eavesdropper, or a relay impostor, gets
//! one online guess per attempt and nothing to test guesses against offline.
//! The relay stores only that hash (PBKDF2-HMAC-SHA256), never the code.
//!
//! The SPAKE2 key is bound to the TLS session through the exporter: the
//! confirmation MACs are keyed by HKDF(SPAKE2 key, salt = TLS exporter), so a
//! man in the middle who terminates TLS on both sides, even relaying every
//! byte, holds two sessions with different exporters and neither side's
//! confirmation verifies.

use std::num::NonZeroU32;

use ring::{hkdf, hmac, pbkdf2};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::CertError;

/// Crockford base-32: no I, L, O or U, so nothing reads as something else.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols in the public part of a code.
const ID_LEN: usize = 3;
/// Symbols in a whole code.
const CODE_LEN: usize = 10;
/// PBKDF2 rounds: cheap once, ruinous for 2^35 guesses within a code's life.
const PBKDF2_ROUNDS: u32 = 100_000;
/// TLS exporter label for the pairing binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-keyway-pair/1";

/// A pairing code.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    symbols: [u8; CODE_LEN],
}

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret part never reaches a log through Debug.
        write!(f, "PairingCode({}-…)", self.id())
    }
}

impl PairingCode {
    /// A fresh random code.
    pub fn generate() -> Self {
        use ring::rand::SecureRandom;
        let mut raw = [0u8; CODE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .expect("the OS random source works");
        Self {
            symbols: raw.map(|b| ALPHABET[(b & 31) as usize]),
        }
    }

    /// Reads a code as a person typed it: any case, dashes and spaces
    /// ignored, O read as 0 and I/L as 1.
    pub fn parse(s: &str) -> Result<Self, CertError> {
        let bad = || {
            CertError::BadCode(format!(
                "{s:?} is not a pairing code (10 letters and digits like 7KQ4-M2XH-9P); check what the relay operator sent"
            ))
        };
        let mut symbols = Vec::with_capacity(CODE_LEN);
        for c in s.chars().filter(|c| !matches!(c, '-' | ' ')) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
                return Err(bad());
            }
            symbols.push(c as u8);
        }
        Ok(Self {
            symbols: symbols.try_into().map_err(|_| bad())?,
        })
    }

    /// The public part, which names the pending pairing.
    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.symbols[..ID_LEN]).expect("alphabet is ASCII")
    }

    /// `XXXX-XXXX-XX`, for people.
    pub fn display(&self) -> String {
        let s = std::str::from_utf8(&self.symbols).expect("alphabet is ASCII");
        format!("{}-{}-{}", &s[..4], &s[4..8], &s[8..])
    }

    /// The slow hash both sides key SPAKE2 with; the relay stores only this.
    pub fn hash(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let salt = [b"keyway-pair/1:".as_slice(), self.id().as_bytes()].concat();
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(PBKDF2_ROUNDS).expect("nonzero"),
            &salt,
            &self.symbols[ID_LEN..],
            &mut out,
        );
        out
    }
}

/// Which side of the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The agent (SPAKE2 side A).
    Agent,
    /// The relay (SPAKE2 side B).
    Relay,
}

/// One side's SPAKE2 state, before the peer's message.
pub struct Pake {
    side: Side,
    state: Spake2<Ed25519Group>,
    msg: Vec<u8>,
}

impl Pake {
    /// Starts the exchange with the code hash; [`Pake::message`] goes to the peer.
    pub fn start(side: Side, code_hash: &[u8; 32]) -> Self {
        let (a, b) = (Identity::new(b"keyway-agent"), Identity::new(b"keyway-relay"));
        let pw = Password::new(code_hash);
        let (state, msg) = match side {
            Side::Agent => Spake2::<Ed25519Group>::start_a(&pw, &a, &b),
            Side::Relay => Spake2::<Ed25519Group>::start_b(&pw, &a, &b),
        };
        Self { side, state, msg }
    }

    /// This side's SPAKE2 message.
    pub fn message(&self) -> &[u8] {
        &self.msg
    }

    /// Finishes with the peer's message and the TLS exporter of this session.
    pub fn finish(self, peer_msg: &[u8], exporter: &[u8]) -> Result<Keys, CertError> {
        let (msg_a, msg_b) = match self.side {
            Side::Agent => (self.msg.clone(), peer_msg.to_vec()),
            Side::Relay => (peer_msg.to_vec(), self.msg.clone()),
        };
        let key = self
            .state
            .finish(peer_msg)
            .map_err(|e| CertError::Identity(format!("pairing exchange: {e:?}")))?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, exporter).extract(&key);
        let derive = |label: &[u8]| -> hmac::Key {
            let info = [label];
            let okm = prk
                .expand(&info, hmac::HMAC_SHA256)
                .expect("HKDF output of one hash length");
            hmac::Key::from(okm)
        };
        let transcript = [msg_a.as_slice(), msg_b.as_slice()].concat();
        Ok(Keys {
            relay_confirm: derive(b"keyway-pair relay confirm"),
            agent_confirm: derive(b"keyway-pair agent confirm"),
            done: derive(b"keyway-pair done"),
            transcript,
        })
    }
}

/// Keys derived from a finished exchange.
pub struct Keys {
    relay_confirm: hmac::Key,
    agent_confirm: hmac::Key,
    done: hmac::Key,
    transcript: Vec<u8>,
}

impl Keys {
    /// The confirmation `side` sends.
    pub fn confirm(&self, side: Side) -> Vec<u8> {
        let key = match side {
            Side::Agent => &self.agent_confirm,
            Side::Relay => &self.relay_confirm,
        };
        hmac::sign(key, &self.transcript).as_ref().to_vec()
    }

    /// Checks the confirmation the peer (`side`) sent, in constant time.
    pub fn verify(&self, side: Side, tag: &[u8]) -> bool {
        let key = match side {
            Side::Agent => &self.agent_confirm,
            Side::Relay => &self.relay_confirm,
        };
        hmac::verify(key, &self.transcript, tag).is_ok()
    }

    /// MAC of the relay's final message.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        hmac::sign(&self.done, payload).as_ref().to_vec()
    }

    /// Checks [`Keys::seal`].
    pub fn open(&self, payload: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.done, payload, mac).is_ok()
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 64 * 1024 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(agent_code: &PairingCode, relay_code: &PairingCode, ex_a: &[u8], ex_r: &[u8]) -> (bool, bool) {
        let a = Pake::start(Side::Agent, &agent_code.hash());
        let r = Pake::start(Side::Relay, &relay_code.hash());
        let (ma, mr) = (a.message().to_vec(), r.message().to_vec());
        let ka = a.finish(&mr, ex_a).unwrap();
        let kr = r.finish(&ma, ex_r).unwrap();
        (
            ka.verify(Side::Relay, &kr.confirm(Side::Relay)),
            kr.verify(Side::Agent, &ka.confirm(Side::Agent)),
        )
    }

    #[test]
    fn same_code_same_session_confirms_both_ways() {
        let c = PairingCode::generate();
        assert_eq!(run(&c, &c, b"tls", b"tls"), (true, true));
    }

    #[test]
    fn wrong_code_or_other_session_confirms_nothing() {
        let c = PairingCode::generate();
        let other = PairingCode::parse(&format!("{}0000000", c.id())).unwrap();
        assert_eq!(run(&c, &other, b"tls", b"tls"), (false, false));
        // A man in the middle has two TLS sessions: different exporters.
        assert_eq!(run(&c, &c, b"tls-agent-side", b"tls-relay-side"), (false, false));
    }

    #[test]
    fn codes_parse_as_people_type_them() {
        let c = PairingCode::parse("7kq4-m2xh-9p").unwrap();
        assert_eq!(c.display(), "7KQ4-M2XH-9P");
        assert_eq!(c.id(), "7KQ");
        assert_eq!(PairingCode::parse("7KQ4 M2XH 9P").unwrap(), c);
        assert_eq!(PairingCode::parse("O1L0-0000-00").unwrap().display(), "0110-0000-00");
        for bad in ["", "7KQ4-M2XH", "7KQ4-M2XH-9PP", "7KQ4-M2XH-9!", "7KQ4-M2XH-9Ü"] {
            assert!(PairingCode::parse(bad).is_err(), "{bad}");
        }
        let g = PairingCode::generate();
        assert_eq!(PairingCode::parse(&g.display()).unwrap(), g);
        assert!(!format!("{g:?}").contains(&g.display()[4..]), "Debug hides the secret");
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])).unwrap(), vec![0, 1, 254, 255]);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}
