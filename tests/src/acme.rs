//! A local ACME CA for tests: Debian's `pebble`, with `pebble-challtestsrv`
//! as its DNS server answering every name with 127.0.0.1, so a relay on
//! loopback can be validated over TLS-ALPN-01 for any test domain.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::BodyExt;

use crate::procs::Proc;
use crate::stack::{empty, free_port, https_client};

/// Running pebble and its DNS.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA behind pebble's own HTTPS (the relay's `acme.ca_file`).
    pub https_ca: PathBuf,
    https_ca_der: rustls_pki_types::CertificateDer<'static>,
    management: SocketAddr,
    /// pebble itself (its log names each validation).
    pub pebble: Proc,
    _dns: Proc,
    dns_management: SocketAddr,
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on `tls_port` at 127.0.0.1.
    pub async fn start(dir: &Path, tls_port: u16) -> anyhow::Result<Self> {
        if which("pebble").is_none() || which("pebble-challtestsrv").is_none() {
            bail!("pebble is not installed: apt-get install pebble (scripts/test does)");
        }
        let ip: IpAddr = "127.0.0.1".parse().expect("constant");
        let port = || free_port(ip).map(|p| SocketAddr::new(ip, p));
        let (dns, dns_mgmt, listen, management, unused_http) = (port()?, port()?, port()?, port()?, port()?);

        let dns_proc = Proc::spawn_program(
            "pebble-challtestsrv",
            &[
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &dns.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &dns_mgmt.to_string(),
            ],
            &[],
        )?;
        wait_listening(dns_mgmt).await.context("pebble-challtestsrv")?;

        // pebble's HTTPS certificate, from a CA made for this run.
        let ca = keyway_certs::PrivateCa::generate("pebble test https ca")?;
        let key = rcgen::KeyPair::generate()?;
        let cert = ca.issue_server(
            &["127.0.0.1".to_string(), "localhost".to_string()],
            &key,
            Duration::from_secs(86400),
        )?;
        let https_ca = dir.join("pebble-https-ca.pem");
        std::fs::write(&https_ca, ca.cert_pem())?;
        std::fs::write(dir.join("pebble.pem"), &cert.pem)?;
        std::fs::write(dir.join("pebble.key"), key.serialize_pem())?;
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.join("pebble.pem"),
                "privateKey": dir.join("pebble.key"),
                "httpPort": unused_http.port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let pebble = Proc::spawn_program(
            "pebble",
            &[
                "-config",
                config_path.to_str().context("UTF-8 path")?,
                "-dnsserver",
                &dns.to_string(),
            ],
            // No artificial validation delays nor random bad-nonce replies:
            // the test measures the relay, not its retry of pebble's chaos.
            // Every order validates again (no reuse of earlier authorizations).
            &[
                ("PEBBLE_VA_NOSLEEP", "1"),
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                ("PEBBLE_AUTHZREUSE", "0"),
            ],
        )?;
        wait_listening(listen).await.context("pebble")?;
        Ok(Self {
            directory: format!("https://{listen}/dir"),
            https_ca_der: keyway_certs::files::load_certs(&https_ca)?.remove(0),
            https_ca,
            management,
            pebble,
            _dns: dns_proc,
            dns_management: dns_mgmt,
        })
    }

    /// Makes pebble's DNS answer `host` with `ip` (a loopback address):
    /// the CA then validates that name at that address.
    pub async fn resolve(&self, host: &str, ip: IpAddr) -> anyhow::Result<()> {
        anyhow::ensure!(ip.is_loopback(), "tests only validate at loopback addresses");
        let body = serde_json::json!({"host": host, "addresses": [ip.to_string()]});
        let stream = tokio::net::TcpStream::connect(self.dns_management).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::post("/add-a")
            .header(http::header::HOST, self.dns_management.to_string())
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))?;
        let resp = sender.send_request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "challtestsrv /add-a: {}", resp.status());
        Ok(())
    }

    /// The root that pebble's issued chains lead to (generated per run).
    pub async fn root_der(&self) -> anyhow::Result<rustls_pki_types::CertificateDer<'static>> {
        let client = https_client(&self.https_ca_der);
        let uri: http::Uri = format!("https://{}/roots/0", self.management).parse()?;
        let req = http::Request::get(uri).body(empty())?;
        let resp = client.request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "pebble /roots/0: {}", resp.status());
        let pem = resp.into_body().collect().await?.to_bytes();
        Ok(keyway_certs::files::certs_from_pem("pebble root", &pem)?.remove(0))
    }
}

/// Waits (bounded) until something accepts TCP connections at `addr`.
async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listens on {addr} after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
