//! Keyway's certificates: the private CA, agent identities, fingerprints,
//! rustls configurations and the console pinning verifier.
//!
//! This crate knows about keys, certificates and TLS; it does not know about
//! sites beyond the site id written into an agent certificate, nor about HTTP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
pub mod files;
pub mod fingerprint;
pub mod identity;
pub mod pake;
pub mod pin;
pub mod public;
pub mod tls;

pub use ca::{self_signed, Issued, PrivateCa};
pub use fingerprint::Fingerprint;
pub use pin::ConsoleTrust;
pub use public::PublicCert;

use thiserror::Error;

/// Errors of certificate handling.
#[derive(Debug, Error)]
pub enum CertError {
    /// rcgen failed to generate or sign.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected a configuration (bad key, bad chain).
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM file held nothing usable.
    #[error("{what}: {why}")]
    Pem {
        /// Which file or object.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A certificate lacks what Keyway puts in it.
    #[error("certificate: {0}")]
    Identity(String),
    /// A pairing code that is not one (the message says what one looks like).
    #[error("{0}")]
    BadCode(String),
    /// A fingerprint string is not 32 bytes of hex.
    #[error("fingerprint {0:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    BadFingerprint(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The crypto provider used everywhere: ring, as chosen for the project.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
