//! Trusting the console: exactly one pinned certificate, or an explicit opt-out.
//!
//! A UniFi Access console serves a self-signed certificate, so web PKI cannot
//! vouch for it. The agent pins the SHA-256 of the console's leaf certificate
//! at pairing and accepts that certificate and nothing else, whatever name or
//! date it carries; the handshake signature is still verified against it, so
//! only the holder of the console's key passes.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::Fingerprint;

/// How the agent trusts its console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleTrust {
    /// Accept only the certificate with this SHA-256 fingerprint.
    Pinned(Fingerprint),
    /// Accept any certificate. Explicit opt-in only; the agent warns.
    Insecure,
}

/// The console presented a certificate other than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// The fingerprint the console presented.
    pub seen: Fingerprint,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "console certificate fingerprint {} does not match the pinned {}; if the console's certificate \
             was replaced on purpose, re-pin it with --console-fingerprint {}",
            self.seen, self.expected, self.seen
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Finds a [`PinMismatch`] anywhere in an error's cause chain (through
/// `io::Error` wrappers, which hide their inner error from `source()`).
pub fn find_pin_mismatch<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a PinMismatch> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|inner| find_pin_mismatch(inner)) {
                return Some(found);
            }
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
        {
            if let Some(m) = other.0.downcast_ref::<PinMismatch>() {
                return Some(m);
            }
        }
        cur = e.source();
    }
    None
}

/// The rustls verifier behind [`ConsoleTrust`].
#[derive(Debug)]
pub struct ConsoleVerifier {
    trust: ConsoleTrust,
    provider: Arc<CryptoProvider>,
}

impl ConsoleVerifier {
    /// A verifier for `trust`.
    pub fn new(trust: ConsoleTrust, provider: Arc<CryptoProvider>) -> Self {
        Self { trust, provider }
    }
}

impl ServerCertVerifier for ConsoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.trust {
            ConsoleTrust::Insecure => Ok(ServerCertVerified::assertion()),
            ConsoleTrust::Pinned(expected) => {
                let seen = Fingerprint::of(end_entity);
                if seen == expected {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(PinMismatch { expected, seen }),
                    ))))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
