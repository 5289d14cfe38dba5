//! The relay's public certificate: re-read on SIGHUP without dropping open
//! connections, or issued and renewed by ACME (pebble, TLS-ALPN-01).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use keyway_tests::acme::Pebble;
use keyway_tests::console::{ConsoleOptions, RunningConsole};
use keyway_tests::procs::BinaryStack;
use keyway_tests::stack::{empty, DOMAIN, SITE, TOKEN};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A TLS connection to `addr` for `name`, trusting only `roots`.
pub(crate) async fn tls(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<TlsStream<tokio::net::TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(keyway_certs::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await?)
}

/// The leaf a new handshake for `name` is shown.
pub(crate) async fn presented(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<Vec<u8>> {
    let s = tls(addr, name, roots).await?;
    Ok(s.get_ref().1.peer_certificates().context("no certificate")?[0].to_vec())
}

type Sender = hyper::client::conn::http1::SendRequest<keyway_tests::stack::ClientBody>;

/// One HTTP/1.1 connection kept open across the test.
async fn keep_alive(addr: SocketAddr, name: &str, roots: &[CertificateDer<'static>]) -> Sender {
    let stream = tls(addr, name, roots).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn doors(sender: &mut Sender, host: &str) -> StatusCode {
    let req = http::Request::get("/api/v1/developer/doors")
        .header("host", host)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// Polls (bounded) until a new handshake presents `want`.
async fn until_presented(addr: SocketAddr, name: &str, roots: &[CertificateDer<'static>], want: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if presented(addr, name, roots).await.ok().as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never presented the expected certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_files_and_keeps_open_connections() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let host = format!("{SITE}.{DOMAIN}");
    let old_ca = bins.https_ca_der.clone();
    let mut open = keep_alive(bins.addr, &host, std::slice::from_ref(&old_ca)).await;
    assert_eq!(doors(&mut open, &host).await, StatusCode::OK);

    // certbot renewed: a new chain (from another CA) lands in the files.
    let relay_dir = bins.relay_config.parent().unwrap().to_path_buf();
    let ca = keyway_certs::PrivateCa::generate("renewed ca").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = [DOMAIN.to_string(), format!("*.{DOMAIN}")];
    let renewed = ca.issue_server(&names, &key, Duration::from_secs(86400)).unwrap();
    std::fs::write(relay_dir.join("https.pem"), &renewed.pem).unwrap();
    std::fs::write(relay_dir.join("https.key"), key.serialize_pem()).unwrap();
    BinaryStack::signal(bins.relay.pid(), "HUP").await.unwrap();
    bins.relay.wait_for_log("public certificate reloaded").await.unwrap();

    let new_roots = [ca.cert_der().clone()];
    until_presented(bins.addr, &host, &new_roots, &renewed.der).await;
    assert!(
        presented(bins.addr, &host, &[old_ca]).await.is_err(),
        "new handshakes no longer get the old certificate"
    );
    // The connection made before the reload still serves.
    assert_eq!(doors(&mut open, &host).await, StatusCode::OK);
    let mut fresh = keep_alive(bins.addr, &host, &new_roots).await;
    assert_eq!(doors(&mut fresh, &host).await, StatusCode::OK);

    // A broken key file is refused and the renewed certificate stays.
    std::fs::write(relay_dir.join("https.key"), "not a key").unwrap();
    BinaryStack::signal(bins.relay.pid(), "HUP").await.unwrap();
    bins.relay.wait_for_log("the old one stays in use").await.unwrap();
    assert_eq!(
        presented(bins.addr, &host, &new_roots).await.unwrap(),
        renewed.der.to_vec()
    );
    assert!(bins.relay.0.try_wait().unwrap().is_none(), "the relay still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificate_from_pebble_serves_the_site_and_follows_new_sites() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Paired with the development certificate first: pairing a relay by
    // name needs DNS, which this machine does not have for test domains.
    let mut bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let pebble = Pebble::start(dir.path(), bins.addr.port()).await.unwrap();

    // Switch the relay to ACME and restart it on the same port.
    let text = std::fs::read_to_string(&bins.relay_config).unwrap();
    let files_gone: String = text
        .lines()
        .filter(|l| !l.starts_with("https_cert") && !l.starts_with("https_key"))
        .map(|l| format!("{l}\n"))
        .collect();
    let acme = format!(
        "\n[acme]\ndirectory = {:?}\nagree_terms = true\ncontact = [\"mailto:ops@keyway.test\"]\nca_file = {:?}\n",
        pebble.directory, pebble.https_ca
    );
    std::fs::write(&bins.relay_config, format!("{files_gone}{acme}")).unwrap();
    BinaryStack::signal(bins.relay.pid(), "TERM").await.unwrap();
    bins.relay.0.wait().await.unwrap();
    bins.start_relay().await.unwrap();
    if let Err(e) = bins.relay.wait_for_log("ACME certificate installed").await {
        panic!(
            "{e}\nrelay: {:#?}\npebble: {:#?}",
            bins.relay.log(),
            pebble.pebble.log()
        );
    }
    bins.agent.wait_for_logs("tunnel up", 2).await.unwrap();

    let root = pebble.root_der().await.unwrap();
    let host = format!("{SITE}.{DOMAIN}");
    let mut sender = keep_alive(bins.addr, &host, std::slice::from_ref(&root)).await;
    assert_eq!(
        doors(&mut sender, &host).await,
        StatusCode::OK,
        "the site is served under the ACME certificate"
    );
    // The stored account and key are private.
    let state = bins.relay_config.parent().unwrap().join("acme");
    for f in ["account.json", "key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is private");
    }

    // A new site is certified without a restart.
    let config = bins.relay_config.to_str().unwrap().to_string();
    let add = keyway_tests::procs::cli("keyway-relay", &["site", "add", "annex", "--config", &config])
        .await
        .unwrap();
    assert_eq!(add.code, 0, "{}", add.stderr);
    bins.relay.wait_for_logs("ACME certificate installed", 2).await.unwrap();
    let annex = format!("annex.{DOMAIN}");
    let leaf = presented(bins.addr, &annex, std::slice::from_ref(&root)).await.unwrap();
    let names = keyway_certs::public::summarize(&leaf).unwrap().names;
    assert!(names.contains(&annex) && names.contains(&host), "{names:?}");

    // A restart reuses the stored certificate: no second order.
    BinaryStack::signal(bins.relay.pid(), "TERM").await.unwrap();
    bins.relay.0.wait().await.unwrap();
    bins.start_relay().await.unwrap();
    bins.relay.wait_for_log("ACME certificate current").await.unwrap();
    assert_eq!(presented(bins.addr, &annex, &[root]).await.unwrap(), leaf);
    assert!(
        !bins.relay.log().iter().any(|l| l.contains("requesting a certificate")),
        "{:?}",
        bins.relay.log()
    );
}
