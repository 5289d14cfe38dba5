//! Connections that say nothing: deadlines run from accept, so a TLS
//! connection that never sends a request head (HTTP/1.1, or only the
//! HTTP/2 preface) is closed at the header timeout, and the relay keeps
//! answering everyone else meanwhile; one client address may hold
//! `max_connections_per_client` at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use keyway_tests::client::Api;
use keyway_tests::console::{ConsoleOptions, RunningConsole};
use keyway_tests::procs::BinaryStack;
use keyway_tests::stack::{https_client, DOMAIN, SITE, TOKEN};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection to `relay` from `source`, offering `alpn`; `None` when
/// the relay closed it before the handshake completed.
async fn open(
    relay: std::net::SocketAddr,
    source: std::net::IpAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let tcp = socket.connect(relay).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.ok()
}

fn tls(ca: &rustls_pki_types::CertificateDer<'static>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut tls = keyway_certs::tls::https_client(ca).unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(tls)
}

/// How many silent connections to open: 10,000 (a debug build opens them
/// in about 2.5 s here, well within the header timeout; the test process
/// and the relay each hold that many descriptors, under this machine's
/// 20,000). `KEYWAY_SILENT_CONNECTIONS` sets another count.
fn how_many() -> usize {
    std::env::var("KEYWAY_SILENT_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_the_header_timeout_while_others_are_served() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = how_many();
    let extra = format!(
        "header_read_timeout = \"{}s\"\nmax_connections_per_client = {}\n",
        HEADER_TIMEOUT.as_secs(),
        n
    );
    let bins = BinaryStack::start_with(dir.path(), &console.url, &extra).await.unwrap();
    let api = Api::with_client(
        https_client(&bins.https_ca_der),
        &format!("https://{}", bins.addr),
        TOKEN,
    );
    let get = || async {
        let req = api
            .request(http::Method::GET, "/api/v1/developer/doors")
            .header("host", format!("{SITE}.{DOMAIN}"))
            .body(keyway_tests::stack::empty())
            .unwrap();
        api.send(req).await.unwrap()
    };
    assert_eq!(get().await.status, StatusCode::OK);

    // n silent HTTP/1.1 connections from 20 source addresses, and a few that
    // send only the HTTP/2 preface; each is watched until the relay closes it.
    let (h1, h2) = (tls(&bins.https_ca_der, b"http/1.1"), tls(&bins.https_ca_der, b"h2"));
    let started = Instant::now();
    let mut watchers = tokio::task::JoinSet::new();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..n + 5 {
        let source = std::net::IpAddr::from([127, 0, 2, 1 + (i % 20) as u8]);
        let (tls, preface) = if i < n { (h1.clone(), false) } else { (h2.clone(), true) };
        let (relay, opened, gate) = (bins.addr, opened.clone(), gate.clone());
        watchers.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let t0 = Instant::now();
            let mut s = open(relay, source, tls).await.expect("the handshake completes");
            if preface {
                s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
            }
            opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(permit);
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(3 * HEADER_TIMEOUT, s.read_to_end(&mut sink)).await;
            t0.elapsed()
        });
    }
    // Bounded: until every connection is open.
    while opened.load(std::sync::atomic::Ordering::SeqCst) < n + 5 {
        assert!(
            started.elapsed() < HEADER_TIMEOUT,
            "opening took too long to test the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_open = started.elapsed();
    // With all of them open, the relay answers at once.
    let mut took = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(get().await.status, StatusCode::OK);
        took.push(t0.elapsed());
    }
    took.sort();
    eprintln!(
        "{} silent connections open after {all_open:?}; requests meanwhile: {took:?}",
        n + 5
    );
    assert!(
        took[2] < Duration::from_millis(50),
        "median request {:?} with the silent ones open",
        took[2]
    );

    let mut lifetimes = Vec::new();
    while let Some(r) = watchers.join_next().await {
        lifetimes.push(r.unwrap());
    }
    lifetimes.sort();
    let (first, last) = (lifetimes[0], lifetimes[lifetimes.len() - 1]);
    eprintln!("closed after {first:?} to {last:?} (header timeout {HEADER_TIMEOUT:?})");
    // Not before the timeout, and not long after it (from the client's own
    // connect, a little before the relay's accept).
    assert!(
        first + Duration::from_millis(500) >= HEADER_TIMEOUT,
        "closed early: {first:?}"
    );
    assert!(
        last < HEADER_TIMEOUT + Duration::from_secs(3),
        "held too long: {last:?}"
    );
}

#[tokio::test]
async fn one_client_address_holds_at_most_its_connection_cap() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bins = BinaryStack::start_with(dir.path(), &console.url, "max_connections_per_client = 20\n")
        .await
        .unwrap();
    let h1 = tls(&bins.https_ca_der, b"http/1.1");
    let one: std::net::IpAddr = "127.0.3.1".parse().unwrap();
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(
            open(bins.addr, one, h1.clone())
                .await
                .unwrap_or_else(|| panic!("connection {i} of 20")),
        );
    }
    assert!(
        open(bins.addr, one, h1.clone()).await.is_none(),
        "the 21st is closed at accept"
    );
    assert!(
        open(bins.addr, "127.0.3.2".parse().unwrap(), h1.clone())
            .await
            .is_some(),
        "another address is not"
    );
    held.pop();
    // Bounded: the relay notices the close and gives the slot back.
    let mut again = None;
    for _ in 0..100 {
        again = open(bins.addr, one, h1.clone()).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed connection gives its slot back");
}
