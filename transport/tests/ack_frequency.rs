//! The tunnel's ACK frequency settings, measured in packets over loopback
//! QUIC: one small request and a response in two packets per exchange, as
//! a proxied GET is (the agent sends the response head as soon as the
//! console's arrives, and the body after it).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

const EXCHANGES: u64 = 200;
const MESSAGE: usize = 600;

fn transport(tuned: bool) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    if tuned {
        t.ack_frequency_config(Some(keyway_transport::quic::ack_frequency()));
    }
    Arc::new(t)
}

/// A server and a client endpoint on loopback, both tuned or neither.
fn endpoints(tuned: bool) -> (Endpoint, Endpoint) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());

    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    tls.alpn_protocols = vec![b"test".to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    server.transport_config(transport(tuned));
    let server = Endpoint::server(server, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"test".to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    client.transport_config(transport(tuned));
    let mut endpoint = Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    endpoint.set_default_client_config(client);
    (server, endpoint)
}

/// Datagrams the client sent for `EXCHANGES` request/response exchanges
/// on one stream, after the handshake.
async fn client_datagrams(tuned: bool) -> u64 {
    let (server, client) = endpoints(tuned);
    let addr = server.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut buf = vec![0u8; MESSAGE];
        for _ in 0..EXCHANGES {
            recv.read_exact(&mut buf).await.unwrap();
            let (head, body) = buf.split_at(MESSAGE / 3);
            send.write_all(head).await.unwrap();
            // The connection's driver runs (and sends the head) before the
            // body is written: this test runs on one thread.
            tokio::task::yield_now().await;
            send.write_all(body).await.unwrap();
        }
        send.finish().unwrap();
        conn.closed().await;
    });
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut buf = vec![7u8; MESSAGE];
    // One exchange opens the stream and settles the handshake's packets.
    send.write_all(&buf).await.unwrap();
    recv.read_exact(&mut buf).await.unwrap();
    let before = conn.stats().udp_tx.datagrams;
    for _ in 1..EXCHANGES {
        send.write_all(&buf).await.unwrap();
        recv.read_exact(&mut buf).await.unwrap();
    }
    let sent = conn.stats().udp_tx.datagrams - before;
    conn.close(0u32.into(), b"done");
    echo.await.unwrap();
    sent
}

#[tokio::test]
async fn responses_are_acknowledged_by_the_next_request() {
    let default = client_datagrams(false).await;
    let tuned = client_datagrams(true).await;
    let n = EXCHANGES - 1;
    // Every request is a datagram. The default acknowledges every second
    // packet at once, so each two-packet response costs an ACK-only
    // datagram too; the tuned settings leave ACKs to ride on the next
    // request (an ACK timer that fires in a stall adds one, so allow a few).
    assert!(
        default >= n + n * 3 / 4,
        "default: {default} datagrams for {n} requests"
    );
    assert!(tuned >= n, "tuned: {tuned} datagrams for {n} requests");
    assert!(
        tuned < n + n / 4,
        "tuned: {tuned} datagrams for {n} requests (default: {default})"
    );
    println!("datagrams for {n} request/response exchanges: default {default}, tuned {tuned}");
}
