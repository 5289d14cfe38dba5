//! rustls configurations for each TLS hop.
//!
//! * tunnel (agent ↔ relay): TLS 1.3 only, mutual authentication, both ends
//!   trusting only the relay's private CA, ALPN `keyway/1`;
//! * the relay's public HTTPS front: TLS 1.2 and 1.3, ALPN h2 and http/1.1;
//! * agent → console: the pinning verifier of [`crate::pin`].

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::pin::ConsoleVerifier;
use crate::public::PublicCert;
use crate::{provider, CertError, ConsoleTrust};

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The agent's tunnel client: presents its certificate, trusts only `ca`.
pub fn tunnel_client(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, CertError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// The relay's public HTTPS front, presenting whatever `public` holds at
/// each handshake; with `acme`, it also answers TLS-ALPN-01 validations.
pub fn https_server(public: PublicCert, acme: bool) -> Result<ServerConfig, CertError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(public));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        cfg.alpn_protocols.push(crate::public::ALPN_ACME_TLS.to_vec());
    }
    Ok(cfg)
}

/// An HTTPS client trusting only `ca` (tests, the sandbox, `doctor`).
pub fn https_client(ca: &CertificateDer<'static>) -> Result<ClientConfig, CertError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth())
}

/// The agent's client toward the console.
pub fn console_client(trust: ConsoleTrust) -> Result<ClientConfig, CertError> {
    // ALPN is left to the HTTP connector that uses this config.
    let provider = provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ConsoleVerifier::new(trust, provider)))
        .with_no_client_auth())
}

/// The relay's QUIC endpoint, which serves two protocols on one port:
///
/// * `keyway/1` (tunnel): presents the tunnel certificate (private CA);
///   agents must present a certificate from that CA — the relay checks that
///   one was presented, since pairing agents have none;
/// * `keyway-pair/1` (pairing): presents the public HTTPS certificate, which a
///   new agent can verify before it has the private CA.
pub fn relay_quic_server(
    tunnel: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    public: PublicCert,
    ca: &CertificateDer<'static>,
) -> Result<ServerConfig, CertError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| CertError::Identity(format!("client verifier: {e}")))?;
    let load = |(chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)| {
        let signer = provider.key_provider.load_private_key(key)?;
        Ok::<_, CertError>(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)))
    };
    let resolver = ByAlpn {
        tunnel: load(tunnel)?,
        pairing: public,
    };
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![keyway_proto::ALPN_TUNNEL.to_vec(), keyway_proto::ALPN_PAIR.to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct ByAlpn {
    tunnel: Arc<rustls::sign::CertifiedKey>,
    pairing: PublicCert,
}

impl rustls::server::ResolvesServerCert for ByAlpn {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let pairing = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == keyway_proto::ALPN_PAIR));
        Some(if pairing {
            self.pairing.current()
        } else {
            self.tunnel.clone()
        })
    }
}

/// A relay node's listener for its peers (cluster): TLS 1.3, ALPN
/// `keyway-node/1`, a client certificate from `ca` required. The caller
/// still checks that the certificate names a node
/// ([`crate::identity::node_from_cert`]): agents' certificates chain to
/// the same CA.
pub fn node_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: &CertificateDer<'static>,
) -> Result<ServerConfig, CertError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| CertError::Identity(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![keyway_proto::ALPN_NODE.to_vec()];
    Ok(cfg)
}

/// A relay node dialling a peer (cluster): presents its node certificate,
/// trusts only `ca`, ALPN `keyway-node/1`.
pub fn node_client(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: &CertificateDer<'static>,
) -> Result<ClientConfig, CertError> {
    tunnel_client(chain, key, ca, &[keyway_proto::ALPN_NODE])
}

/// The agent's pairing client: verifies the relay's public certificate with
/// `roots` (a given CA file, or the web PKI).
pub fn pairing_client(roots: RootCertStore) -> Result<ClientConfig, CertError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![keyway_proto::ALPN_PAIR.to_vec()];
    Ok(cfg)
}
