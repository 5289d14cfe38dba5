//! The load client: HTTP/1.1 on hyper over tokio-rustls, one connection per
//! worker, `TCP_NODELAY`, bodies read to the end. A small client of our own
//! rather than `oha`, because one tool then covers every workload the same
//! way (keep-alive and new-connection GETs, paging, multipart uploads,
//! WebSocket door events) and needs nothing installed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use keyway_certs::{ConsoleTrust, Fingerprint};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How to trust a path's TLS server.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// The console's own certificate (direct, and the TCP forwarders).
    Pin(String),
    /// A CA file (the relay's and nginx's certificate).
    Ca(std::path::PathBuf),
}

/// One way to reach the console.
#[derive(Debug, Clone, Deserialize)]
pub struct PathSpec {
    /// Row name.
    pub name: String,
    /// Where the client connects.
    pub addr: SocketAddr,
    /// `Host` header to send.
    pub host: String,
    /// TLS server name, when not the address's IP (a relay reached by name).
    #[serde(default)]
    pub sni: Option<String>,
    /// Server certificate trust.
    pub trust: Trust,
    /// Processes that carry this path, by role (`relay`, `agent`), for CPU
    /// and memory figures.
    #[serde(default)]
    pub pids: std::collections::BTreeMap<String, u32>,
}

/// A path with its TLS configs built.
#[derive(Clone)]
pub struct Path {
    /// The spec.
    pub spec: PathSpec,
    tls: Arc<ClientConfig>,
    tls_fresh: Arc<ClientConfig>,
    token: Arc<str>,
}

/// A keep-alive connection.
pub type Conn = SendRequest<Full<Bytes>>;

impl Path {
    /// Builds the TLS configurations for `spec`.
    pub fn new(spec: PathSpec, token: &str) -> anyhow::Result<Self> {
        let mut tls = match &spec.trust {
            Trust::Pin(fp) => keyway_certs::tls::console_client(ConsoleTrust::Pinned(fp.parse::<Fingerprint>()?))?,
            Trust::Ca(file) => keyway_certs::tls::https_client(&keyway_certs::files::load_certs(file)?.remove(0))?,
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut fresh = tls.clone();
        // New-connection rows measure full handshakes, not resumptions.
        fresh.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            spec,
            tls: Arc::new(tls),
            tls_fresh: Arc::new(fresh),
            token: token.into(),
        })
    }

    /// Opens a TLS connection (a full handshake if `fresh`).
    pub async fn tls(&self, fresh: bool) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.spec.addr)
            .await
            .with_context(|| format!("{}: connect {}", self.spec.name, self.spec.addr))?;
        tcp.set_nodelay(true)?;
        let cfg = if fresh { &self.tls_fresh } else { &self.tls };
        let name = match &self.spec.sni {
            Some(n) => ServerName::try_from(n.clone())?,
            None => ServerName::IpAddress(self.spec.addr.ip().into()),
        };
        Ok(tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await?)
    }

    /// Opens an HTTP/1.1 connection.
    pub async fn connect(&self, fresh: bool) -> anyhow::Result<Conn> {
        let io = TokioIo::new(self.tls(fresh).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// A request with the path's `Host` and the console token.
    pub fn request(&self, method: Method, uri: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, &self.spec.host)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    /// `{"…"}` body helper.
    pub fn json(&self, method: Method, uri: &str, v: &serde_json::Value) -> Request<Full<Bytes>> {
        self.request(method, uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("a valid request")
    }

    /// A body-less request.
    pub fn get(&self, uri: &str) -> Request<Full<Bytes>> {
        self.request(Method::GET, uri)
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
    }

    /// The console token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// Sends `req`, reads the body to the end; returns (bytes, elapsed).
pub async fn exchange(conn: &mut Conn, req: Request<Full<Bytes>>) -> anyhow::Result<(Bytes, Duration)> {
    let t0 = Instant::now();
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    Ok((body, t0.elapsed()))
}

/// A multipart body with one file field.
pub fn multipart(field: &str, bytes: &[u8]) -> (String, Bytes) {
    let boundary = "keyway-bench-boundary-5c2e";
    let mut form = Vec::with_capacity(bytes.len() + 256);
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"avatar.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(bytes);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), form.into())
}
