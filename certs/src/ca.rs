//! A private certificate authority (rcgen) that issues tunnel certificates.
//!
//! The relay owns one: it signs the relay's own QUIC server certificate and
//! every agent's client certificate, and both ends trust only it for the
//! tunnel, so no public PKI sits between agent and relay.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::{identity, CertError};

/// How long the CA itself is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Default validity of an agent certificate (renewal is the agent's job later).
pub const AGENT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Clock skew tolerated on a freshly issued certificate.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate just issued, with its serial number for the registry.
#[derive(Debug, Clone)]
pub struct Issued {
    /// DER bytes.
    pub der: CertificateDer<'static>,
    /// PEM text.
    pub pem: String,
    /// Serial number, hex.
    pub serial: String,
}

/// The relay's private CA.
pub struct PrivateCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for PrivateCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateCa")
            .field("fingerprint", &crate::Fingerprint::of(&self.cert_der))
            .finish()
    }
}

impl PrivateCa {
    /// Generates a new CA with a fresh ECDSA P-256 key.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = crate::files::certs_from_pem("CA certificate", cert_pem.as_bytes())?
            .into_iter()
            .next()
            .expect("certs_from_pem returns at least one");
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (write it 0600).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues an agent's client certificate for `site` over the agent's own
    /// public key: the private key never leaves the agent.
    pub fn issue_agent(
        &self,
        site: &str,
        agent_key: &impl PublicKeyData,
        validity: Duration,
    ) -> Result<Issued, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("keyway agent {site}"));
        params.subject_alt_names = vec![SanType::URI(
            identity::site_uri(site)
                .try_into()
                .map_err(|_| CertError::Identity(format!("bad site id {site:?}")))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, agent_key, validity)
    }

    /// Issues a relay node's certificate for node-to-node links (both client
    /// and server): the URI `keyway://node/<name>` that peers check, and
    /// the DNS name they dial it by ([`identity::node_server_name`]).
    pub fn issue_node(&self, name: &str, key: &impl PublicKeyData, validity: Duration) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(vec![identity::node_server_name(name)])?;
        params.distinguished_name = dn(&format!("keyway relay node {name}"));
        params.subject_alt_names.push(SanType::URI(
            identity::node_uri(name)
                .try_into()
                .map_err(|_| CertError::Identity(format!("bad node name {name:?}")))?,
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, key, validity)
    }

    /// A fresh key and its node certificate ([`Self::issue_node`]), as
    /// rustls takes them; the key never leaves the process.
    pub fn node_identity(
        &self,
        name: &str,
        validity: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
        let key = KeyPair::generate()?;
        let issued = self.issue_node(name, &key, validity)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((vec![issued.der], der))
    }

    /// Issues a server certificate (the relay's QUIC endpoint) for DNS names
    /// and IP addresses.
    pub fn issue_server(
        &self,
        names: &[String],
        server_key: &impl PublicKeyData,
        validity: Duration,
    ) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = dn(names.first().map(String::as_str).unwrap_or("keyway relay"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, server_key, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        key: &impl PublicKeyData,
        validity: Duration,
    ) -> Result<Issued, CertError> {
        set_validity(&mut params, validity);
        let serial = random_serial();
        let serial_hex: String = serial.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            pem: cert.pem(),
            der: cert.der().clone(),
            serial: serial_hex,
        })
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source works");
    // Positive, and no leading zero byte for DER to strip: the serial the
    // registry records is exactly what the certificate carries.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A self-signed leaf certificate for `names` and its PKCS#8 key (DER), as
/// a UniFi console or a development HTTPS front would have.
pub fn self_signed(names: &[String]) -> Result<(CertificateDer<'static>, Vec<u8>), CertError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())?;
    Ok((ck.cert.der().clone(), ck.signing_key.serialize_der()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_agent_cert_with_site_and_reloads_from_pem() {
        let ca = PrivateCa::generate("test ca").unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let issued = ca.issue_agent("hq", &agent_key, AGENT_VALIDITY).unwrap();
        assert_eq!(identity::site_from_cert(&issued.der).unwrap(), "hq");
        assert_eq!(issued.serial.len(), 32);

        let again = PrivateCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let second = again.issue_agent("branch-2", &agent_key, AGENT_VALIDITY).unwrap();
        assert_eq!(identity::site_from_cert(&second.der).unwrap(), "branch-2");
        assert_ne!(issued.serial, second.serial);
        assert_eq!(
            identity::serial_hex(&issued.der).unwrap(),
            issued.serial,
            "the registry's serial is the certificate's"
        );
    }
}
