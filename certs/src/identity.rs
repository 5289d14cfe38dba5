//! The site id inside an agent certificate.
//!
//! The CA writes it as a URI subject-alternative name `keyway://site/<id>`;
//! the relay reads it back from the verified client certificate, so a site's
//! identity is exactly what the CA signed.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::CertError;

const SITE_URI_PREFIX: &str = "keyway://site/";
const NODE_URI_PREFIX: &str = "keyway://node/";

/// The SAN URI of a relay node (cluster).
pub fn node_uri(node: &str) -> String {
    format!("{NODE_URI_PREFIX}{node}")
}

/// The DNS name a node's certificate carries and its peers dial it by
/// (never resolved: the address comes from the registry).
pub fn node_server_name(node: &str) -> String {
    format!("{node}.node.keyway.invalid")
}

/// Reads the node name from a relay node's certificate (DER); an agent's
/// certificate, from the same CA, has none.
pub fn node_from_cert(der: &[u8]) -> Result<String, CertError> {
    uri_with_prefix(der, NODE_URI_PREFIX).map_err(|e| match e {
        CertError::Identity(m) => CertError::Identity(m.replace("keyway site id", "keyway node name")),
        other => other,
    })
}

/// The SAN URI for a site.
pub fn site_uri(site: &str) -> String {
    format!("{SITE_URI_PREFIX}{site}")
}

/// Reads the site id from an agent certificate (DER).
pub fn site_from_cert(der: &[u8]) -> Result<String, CertError> {
    uri_with_prefix(der, SITE_URI_PREFIX)
}

fn uri_with_prefix(der: &[u8], prefix: &str) -> Result<String, CertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Identity(format!("unparsable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Identity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| CertError::Identity("no subjectAltName: not a Keyway agent certificate".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix(prefix).map(str::to_string),
            _ => None,
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CertError::Identity("no keyway site id in subjectAltName".into()))
}

/// The certificate's serial number, lowercase hex (as the CA records it).
pub fn serial_hex(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Identity(format!("unparsable certificate: {e}")))?;
    Ok(cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_certs_without_a_site() {
        let plain = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let err = site_from_cert(plain.cert.der()).unwrap_err();
        assert!(err.to_string().contains("no keyway site id"), "{err}");
        assert!(site_from_cert(b"garbage")
            .unwrap_err()
            .to_string()
            .contains("unparsable"));
        assert!(!serial_hex(plain.cert.der()).unwrap().is_empty());
    }
}
