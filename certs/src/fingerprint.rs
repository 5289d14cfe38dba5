//! SHA-256 fingerprints of DER certificates.

use std::fmt;
use std::str::FromStr;

use crate::CertError;

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    /// Lowercase hex, no separators: what `--console-fingerprint` takes back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = CertError;

    /// Accepts `ab12…`, `AB:12:…` and an optional `sha256:` prefix, as
    /// browsers and `openssl x509 -fingerprint -sha256` print them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CertError::BadFingerprint(s.to_string());
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let hex: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_spellings() {
        let fp = Fingerprint::of(b"cert");
        let plain = fp.to_string();
        assert_eq!(plain.len(), 64);
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        for s in [
            plain.clone(),
            colons.join(":"),
            format!("sha256:{plain}"),
            format!("  {}  ", plain.to_uppercase()),
        ] {
            assert_eq!(s.parse::<Fingerprint>().unwrap(), fp, "{s}");
        }
    }

    #[test]
    fn refuses_wrong_lengths_and_non_hex() {
        for s in ["", "abcd", &"g".repeat(64), &"a".repeat(66), "é".repeat(32).as_str()] {
            let err = s.parse::<Fingerprint>().unwrap_err();
            assert!(err.to_string().contains("SHA-256"), "{err}");
        }
    }
}
