//! Webhook capture: credential unlocks (NFC, PIN, face, mobile) reach
//! integrations on the hub's stream.
//!
//! The console sends `access.door.unlock` and the other door events only as
//! webhooks. `keyway-agent events capture-webhooks` registers the agent as
//! a webhook endpoint on the console (a LAN address: nothing is exposed to
//! the internet) and stores the endpoint id and signing secret (0600). The
//! running agent then listens there, checks each delivery's signature
//! (`Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`,
//! within [`MAX_SKEW`]) and publishes the event into the hub.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Hub;

/// The events the agent subscribes to by default: every door event.
pub const DOOR_EVENTS: &[&str] = &[
    "access.door.unlock",
    "access.device.dps_status",
    "access.device.emergency_status",
    "access.doorbell.incoming",
    "access.doorbell.completed",
    "access.doorbell.incoming.REN",
    "access.unlock_schedule.activate",
    "access.unlock_schedule.deactivate",
    "access.temporary_unlock.start",
    "access.temporary_unlock.end",
    "access.visitor.status.changed",
];
/// How far a delivery's timestamp may be from the agent's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
const MAX_BODY: usize = 1 << 20;
const FILE: &str = "webhook.json";

/// A registration, as stored beside the agent's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capture {
    /// The console's id for the endpoint.
    pub id: String,
    /// Where the agent listens (a LAN address).
    pub listen: SocketAddr,
    /// The URL the console posts to.
    pub endpoint: String,
    /// The signing secret the console gave.
    pub secret: String,
}

impl Capture {
    /// The stored registration, if any.
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("invalid {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    /// Stores it (mode 0600: it holds the secret).
    pub fn store(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = state_dir.join(FILE);
        keyway_certs::files::write_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes(), true)
            .with_context(|| format!("could not write {}", path.display()))
    }

    /// Deletes the stored registration.
    pub fn forget(state_dir: &Path) -> anyhow::Result<()> {
        match std::fs::remove_file(state_dir.join(FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Registers `endpoint` on the console for `events`; returns the capture.
pub async fn register(
    console: &crate::console::Console,
    token: &str,
    listen: SocketAddr,
    endpoint: &str,
    events: &[String],
) -> anyhow::Result<Capture> {
    let body = serde_json::json!({"name": "keyway-agent", "endpoint": endpoint, "events": events});
    let (status, reply) = console
        .call(Method::POST, "/api/v1/developer/webhooks/endpoints", token, Some(&body))
        .await?;
    let data = &reply["data"];
    let (Some(id), Some(secret)) = (data["id"].as_str(), data["secret"].as_str()) else {
        bail!(
            "the console did not register the endpoint (HTTP {status}): {}",
            reply["msg"].as_str().unwrap_or("no message")
        );
    };
    Ok(Capture {
        id: id.to_string(),
        listen,
        endpoint: endpoint.to_string(),
        secret: secret.to_string(),
    })
}

/// Serves deliveries on the capture's address until `stop`.
pub async fn serve(hub: Arc<Hub>, capture: Capture, stop: CancellationToken) {
    let listener = match TcpListener::bind(capture.listen).await {
        Ok(l) => l,
        Err(e) => {
            warn!("webhook capture off: could not listen on {}: {e}", capture.listen);
            return;
        }
    };
    info!("capturing the console's webhooks on {}", capture.listen);
    let secret = Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, capture.secret.as_bytes()));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(e) => { debug!("accept: {e}"); continue } },
        };
        let (hub, secret) = (hub.clone(), secret.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (hub, secret) = (hub.clone(), secret.clone());
                async move { Ok::<_, std::convert::Infallible>(deliver(&hub, &secret, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(%peer, "webhook connection: {e}");
            }
        });
    }
}

async fn deliver(hub: &Hub, key: &ring::hmac::Key, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let signature = req
        .headers()
        .get("signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match tokio::time::timeout(
        Duration::from_secs(10),
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken"),
        Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, "body too slow"),
    };
    if let Err(why) = verify(key, signature.as_deref(), &body, now()) {
        warn!("webhook delivery refused: {why}");
        return reply(StatusCode::UNAUTHORIZED, why);
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return reply(StatusCode::BAD_REQUEST, "not UTF-8");
    };
    if !matches!(
        serde_json::from_str::<serde_json::Value>(text),
        Ok(serde_json::Value::Object(_))
    ) {
        return reply(StatusCode::BAD_REQUEST, "not a JSON object");
    }
    let seq = hub.publish(text);
    debug!(seq, "webhook event published");
    reply(StatusCode::OK, "ok")
}

fn reply(status: StatusCode, msg: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Checks `t=<unix>,v1=<hex>` against the body, in constant time.
pub fn verify(key: &ring::hmac::Key, header: Option<&str>, body: &[u8], now: u64) -> Result<(), &'static str> {
    let header = header.ok_or("no Signature header")?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (t, v1) = t.zip(v1).ok_or("Signature header without t= and v1=")?;
    let ts: u64 = t.parse().map_err(|_| "Signature t= is not a Unix time")?;
    if ts.abs_diff(now) > MAX_SKEW.as_secs() {
        return Err("Signature timestamp too far from this clock (replayed, or a clock is off)");
    }
    let tag = decode_hex(v1).ok_or("Signature v1= is not hex")?;
    let mut msg = Vec::with_capacity(t.len() + 1 + body.len());
    msg.extend_from_slice(t.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    ring::hmac::verify(key, &msg, &tag).map_err(|_| "Signature does not match (wrong secret, or altered body)")
}

/// `t=…,v1=…` for `body` (what the console sends; used by tests and the simulator).
pub fn sign(secret: &[u8], body: &[u8], t: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &msg);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let body = br#"{"event":"access.door.unlock"}"#;
        let good = sign(b"s3cret", body, 1_000_000);
        assert_eq!(verify(&key, Some(&good), body, 1_000_100), Ok(()));
        assert!(verify(&key, Some(&good), body, 1_000_000 + 301).is_err(), "stale");
        assert!(verify(&key, Some(&good), b"{}", 1_000_000).is_err(), "altered body");
        let other = sign(b"other", body, 1_000_000);
        assert!(verify(&key, Some(&other), body, 1_000_000).is_err(), "wrong secret");
        assert!(verify(&key, None, body, 1_000_000).is_err());
        assert!(verify(&key, Some("t=1,v1=zz"), body, 1).is_err());
    }
}
