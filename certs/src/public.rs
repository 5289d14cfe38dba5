//! The relay's public certificate, swappable while the relay runs.
//!
//! One [`PublicCert`] serves the HTTPS front and the QUIC pairing handshake.
//! Replacing it (SIGHUP re-reading the files, or an ACME renewal) affects
//! only handshakes that start afterwards: open connections keep the
//! certificate they were made with, so nothing is dropped.
//!
//! It also answers ACME TLS-ALPN-01 challenges (RFC 8737): a ClientHello
//! offering only `acme-tls/1` for a name with a pending challenge gets that
//! challenge's self-signed certificate.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{provider, CertError};

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The relay's current public certificate and any pending ACME challenges.
#[derive(Debug, Clone)]
pub struct PublicCert {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
    challenges: Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>,
}

/// What a certificate covers and until when, for logs and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// DNS names of the leaf.
    pub names: Vec<String>,
    /// Unix seconds after which the leaf is invalid.
    pub not_after: i64,
}

impl PublicCert {
    /// Starts with `chain` and `key`.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, CertError> {
        Ok(Self {
            current: Arc::new(RwLock::new(certified(chain, key)?)),
            challenges: Arc::default(),
        })
    }

    /// Replaces the certificate for handshakes from now on; returns what the
    /// new one covers. On error the old certificate stays.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertSummary, CertError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::Identity("empty certificate chain".into()))?;
        let summary = summarize(leaf)?;
        let ck = certified(chain, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = ck;
        Ok(summary)
    }

    /// What the certificate in use covers.
    pub fn summary(&self) -> Result<CertSummary, CertError> {
        let ck = self.current();
        summarize(ck.end_entity_cert().map_err(CertError::Tls)?)
    }

    /// The certificate in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Answers TLS-ALPN-01 for `name` with `key_authorization_digest`
    /// (SHA-256 of the key authorization) until [`Self::clear_challenge`].
    pub fn set_challenge(&self, name: &str, key_authorization_digest: &[u8]) -> Result<(), CertError> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params
            .custom_extensions
            .push(CustomExtension::new_acme_identifier(key_authorization_digest));
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // Not `certified`: webpki cannot parse a leaf with the critical
        // acmeIdentifier extension to compare keys, and rcgen made this
        // pair itself.
        let signer = provider()
            .key_provider
            .load_private_key(PrivatePkcs8KeyDer::from(key.serialize_der()).into())?;
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_ascii_lowercase(), ck);
        Ok(())
    }

    /// Stops answering the challenge for `name`.
    pub fn clear_challenge(&self, name: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for PublicCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME_TLS));
        if acme {
            // Only a validator asks for acme-tls/1; it gets the challenge
            // certificate or nothing (RFC 8737 §3), never the real one.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
        }
        Some(self.current())
    }
}

fn certified(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<CertifiedKey>, CertError> {
    let signer = provider().key_provider.load_private_key(key)?;
    let ck = CertifiedKey::new(chain, signer);
    // A key that does not match the certificate would fail every handshake.
    ck.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            CertError::Identity("the private key does not match the certificate".into())
        }
        other => CertError::Tls(other),
    })?;
    Ok(Arc::new(ck))
}

/// The DNS names and expiry of a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary, CertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Identity(format!("unparsable certificate: {e}")))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertSummary {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{certs_from_pem, key_from_pem};

    fn pair(name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            certs_from_pem("cert", cert.pem().as_bytes()).unwrap(),
            key_from_pem("key", key.serialize_pem().as_bytes()).unwrap(),
        )
    }

    #[test]
    fn replace_swaps_and_a_mismatched_key_keeps_the_old_certificate() {
        let (chain, key) = pair("a.example.com");
        let public = PublicCert::new(chain, key).unwrap();
        assert_eq!(public.summary().unwrap().names, ["a.example.com"]);

        let (chain, key) = pair("b.example.com");
        let summary = public.replace(chain, key).unwrap();
        assert_eq!(summary.names, ["b.example.com"]);
        assert_eq!(public.summary().unwrap().names, ["b.example.com"]);

        let (chain, _) = pair("c.example.com");
        let (_, other_key) = pair("d.example.com");
        let err = public.replace(chain, other_key).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert_eq!(public.summary().unwrap().names, ["b.example.com"]);
    }
}
