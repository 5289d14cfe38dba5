//! Dialing a relay over loopback, and each way it fails told apart by type:
//! an untrusted certificate, one outside its dates (a wrong clock), another
//! protocol on the port, nobody listening, nobody answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyway_transport::dial::{self, DialError};
use keyway_transport::TransportKind;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

const NAME: &str = "relay.test";
const ALPN: &[u8] = b"keyway/1";
const DEADLINE: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and a server certificate for [`NAME`] it signed, valid from
/// `days.0` to `days.1` days from now.
struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn pki(days: (i64, i64)) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let serial: u64 = rand_serial();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {serial:x}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![NAME.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.0);
    params.not_after = now + time::Duration::days(days.1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca: ca.der().clone(),
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// A distinct number per CA, so two test CAs never share a name.
fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    u64::from(std::process::id()) << 32 | NEXT.fetch_add(1, Ordering::Relaxed)
}

fn valid() -> Pki {
    pki((-1, 30))
}

fn server_config(p: &Pki, alpn: &[u8]) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(p.chain.clone(), PrivateKeyDer::Pkcs8(p.key.clone_key()))
        .unwrap();
    if !alpn.is_empty() {
        cfg.alpn_protocols = vec![alpn.to_vec()];
    }
    cfg
}

fn client_config(trusted: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg
}

/// A TLS server on loopback that completes handshakes and holds them open.
async fn tls_server(p: &Pki, alpn: &[u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(p, alpn)));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    tokio::time::sleep(DEADLINE).await;
                    drop(tls);
                }
            });
        }
    });
    addr
}

/// A QUIC server on loopback that accepts connections and holds them open.
fn quic_server(p: &Pki) -> (quinn::Endpoint, SocketAddr) {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_config(p, ALPN)).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    (endpoint, addr)
}

fn quic_client(trusted: &CertificateDer<'static>) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_config(trusted)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

fn connector(trusted: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(client_config(trusted)))
}

async fn tls(trusted: &CertificateDer<'static>, addr: SocketAddr) -> Result<(), DialError> {
    let target = addr.to_string();
    dial::tls(&connector(trusted), &target, NAME, (ALPN, "Keyway tunnels"), DEADLINE)
        .await
        .map(drop)
}

async fn quic(trusted: &CertificateDer<'static>, addr: SocketAddr, deadline: Duration) -> Result<(), DialError> {
    let client = quic_client(trusted);
    dial::quic(&client, &addr.to_string(), NAME, deadline).await.map(drop)
}

#[tokio::test]
async fn a_trusted_relay_is_reached_over_both_transports() {
    let p = valid();
    let addr = tls_server(&p, ALPN).await;
    tls(&p.ca, addr).await.unwrap();
    let (_server, addr) = quic_server(&p);
    quic(&p.ca, addr, DEADLINE).await.unwrap();
}

#[tokio::test]
async fn another_ca_is_untrusted_over_both_transports() {
    let (p, stranger) = (valid(), valid());
    let addr = tls_server(&p, ALPN).await;
    assert!(matches!(
        tls(&stranger.ca, addr).await,
        Err(DialError::Untrusted { .. })
    ));
    let (_server, addr) = quic_server(&p);
    let e = quic(&stranger.ca, addr, DEADLINE).await.unwrap_err();
    assert!(matches!(e, DialError::Untrusted { .. }), "{e:?}");
}

#[tokio::test]
async fn a_certificate_outside_its_dates_blames_the_clock_over_both_transports() {
    for days in [(-30, -1), (1, 30)] {
        let p = pki(days);
        let addr = tls_server(&p, ALPN).await;
        let e = tls(&p.ca, addr).await.unwrap_err();
        assert!(e.is_clock(), "{days:?}: {e:?}");
        let (_server, addr) = quic_server(&p);
        let e = quic(&p.ca, addr, DEADLINE).await.unwrap_err();
        assert!(e.is_clock(), "{days:?}: {e:?}");
    }
}

#[tokio::test]
async fn another_protocol_on_the_port_is_named() {
    let p = valid();
    // A server with ALPN refuses ours; one without completes TLS without it.
    for offers in [&b"h2"[..], b""] {
        let addr = tls_server(&p, offers).await;
        let e = tls(&p.ca, addr).await.unwrap_err();
        assert!(matches!(e, DialError::WrongAlpn { alpn: ALPN, .. }), "{e:?}");
        assert!(e.to_string().contains("does not serve Keyway tunnels"), "{e}");
    }
}

#[tokio::test]
async fn nobody_listening_is_unreachable_and_nobody_answering_times_out() {
    let p = valid();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = tls(&p.ca, closed).await.unwrap_err();
    assert!(
        matches!(
            e,
            DialError::Unreachable {
                transport: TransportKind::Tcp,
                ..
            }
        ),
        "{e:?}"
    );
    // A UDP port with no QUIC server: no answer at all.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let e = quic(&p.ca, addr, Duration::from_millis(300)).await.unwrap_err();
    assert!(
        matches!(
            e,
            DialError::Timeout {
                transport: TransportKind::Quic,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("UDP blocked?"), "{e}");
}

#[tokio::test]
async fn a_target_without_a_port_does_not_resolve() {
    let e = dial::resolve("relay-without-port").await.unwrap_err();
    assert!(matches!(e, DialError::Resolve { .. }), "{e:?}");
}
