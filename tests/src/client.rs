//! An integration's view of the API for tests: JSON calls with the console
//! token, raw responses, and a WebSocket listener for door events.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stack::{body, empty, https_client, ClientBody, HttpsClient};

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// `data` of a SUCCESS envelope; panics with the body otherwise.
    pub fn data(&self) -> Value {
        let v = self.json();
        assert_eq!(self.status, StatusCode::OK, "{v}");
        assert_eq!(v["code"], "SUCCESS", "{v}");
        v["data"].clone()
    }
}

/// Calls an API base URL (`https://host:port`) with a token.
#[derive(Clone)]
pub struct Api {
    client: HttpsClient,
    base: String,
    token: String,
}

impl Api {
    /// An API client for `base`, trusting `ca`, sending `token`.
    pub fn new(base: &str, ca: &CertificateDer<'static>, token: &str) -> Self {
        Self {
            client: https_client(ca),
            base: base.trim_end_matches('/').to_string(),
            token: token.into(),
        }
    }

    /// The same, over another client (HTTP/2, other CA).
    pub fn with_client(client: HttpsClient, base: &str, token: &str) -> Self {
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            token: token.into(),
        }
    }

    /// A request builder with the token set.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    /// Sends a request, reads the whole response.
    pub async fn send(&self, req: Request<ClientBody>) -> anyhow::Result<Reply> {
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .context("no response in 60s")??;
        let (parts, b) = resp.into_parts();
        let body = b.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.request(Method::GET, path).body(empty())?).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.request(Method::DELETE, path).body(empty())?).await
    }

    /// `method path` with a JSON body.
    pub async fn json(&self, method: Method, path: &str, v: &Value) -> anyhow::Result<Reply> {
        let req = self
            .request(method, path)
            .header(CONTENT_TYPE, "application/json")
            .body(body(serde_json::to_vec(v)?))?;
        self.send(req).await
    }

    /// `POST path` with one multipart file field.
    pub async fn upload(&self, path: &str, field: &str, filename: &str, bytes: &[u8]) -> anyhow::Result<Reply> {
        let boundary = "keyway-test-boundary-8d1f";
        let mut form = Vec::with_capacity(bytes.len() + 256);
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        form.extend_from_slice(bytes);
        form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let req = self
            .request(Method::POST, path)
            .header(CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(body(form))?;
        self.send(req).await
    }
}

/// A WebSocket listener on `/api/v1/developer/devices/notifications`.
pub struct EventListener {
    ws: WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl EventListener {
    /// Connects to `addr` over TLS (trusting `ca`, checking `server_name`)
    /// with `token`, and returns after the upgrade.
    pub async fn connect(
        addr: std::net::SocketAddr,
        server_name: &str,
        ca: &CertificateDer<'static>,
        token: &str,
    ) -> anyhow::Result<Self> {
        Self::connect_to(addr, server_name, ca, token, "").await
    }

    /// As [`EventListener::connect`], with a query (`since=…`) on the path.
    pub async fn connect_to(
        addr: std::net::SocketAddr,
        server_name: &str,
        ca: &CertificateDer<'static>,
        token: &str,
        query: &str,
    ) -> anyhow::Result<Self> {
        let mut tls = keyway_certs::tls::https_client(ca)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await?;
        let sep = if query.is_empty() { "" } else { "?" };
        let mut req =
            format!("wss://{server_name}/api/v1/developer/devices/notifications{sep}{query}").into_client_request()?;
        req.headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse()?);
        let (ws, resp) = tokio_tungstenite::client_async(req, stream)
            .await
            .context("WebSocket upgrade")?;
        anyhow::ensure!(
            resp.status() == StatusCode::SWITCHING_PROTOCOLS,
            "upgrade answered {}",
            resp.status()
        );
        Ok(Self { ws })
    }

    /// The next text frame, within `wait`.
    pub async fn next_text(&mut self, wait: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("no WebSocket message in time")?
                .context("WebSocket closed")??;
            match msg {
                Message::Text(t) => return Ok(t.to_string()),
                Message::Close(f) => anyhow::bail!("WebSocket closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// The next JSON event, skipping what a client dispatching on `event`
    /// passes over: the greeting and keep-alives (`Hello`, not objects) and
    /// the console's `access.base.info` status frames.
    pub async fn next_event(&mut self, wait: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self.next_text(left).await?;
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&text) {
                if v["event"] != "access.base.info" {
                    return Ok(v);
                }
            }
        }
    }

    /// Sends a ping and waits for its pong (the path is alive both ways).
    pub async fn ping(&mut self, wait: Duration) -> anyhow::Result<()> {
        self.ws.send(Message::Ping(Bytes::from_static(b"kw"))).await?;
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .context("no pong in time")?
                .context("closed")??;
            if let Message::Pong(p) = msg {
                anyhow::ensure!(&p[..] == b"kw", "wrong pong payload");
                return Ok(());
            }
        }
    }

    /// Waits (bounded) for the server's close frame, skipping other
    /// messages; returns its code (None: closed without a frame).
    pub async fn close_code(&mut self, wait: Duration) -> anyhow::Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("no close in time")?
            {
                Some(Ok(Message::Close(f))) => return Ok(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => anyhow::bail!("connection failed without a close frame: {e}"),
                None => return Ok(None),
            }
        }
    }

    /// Closes cleanly.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
