//! `GET /api/v1/developer/devices/notifications`: the WebSocket event stream.
//!
//! Like a real console it sends, on every connection, a `Hello` text frame,
//! then an `access.base.info` status event, then one JSON text frame per
//! event, and the same `Hello` frame again every few seconds as a
//! keep-alive ([`DEFAULT_KEEPALIVE`]; clients such as aiounifiaccess
//! reconnect when it stops).
//!
//! The greeting is undocumented. Community clients disagree on its exact
//! bytes: py-unifi-access skips any frame starting with `Hello` and ignores
//! JSON that is not an object; aiounifiaccess JSON-decodes every frame and
//! drops the string `"Hello"`. The JSON string `"Hello"` is what both accept,
//! so that is what the simulator sends ([`HELLO_FRAME`]).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::reply::{full, invalid, Reply};

/// The first text frame on every notification WebSocket, and its keep-alive.
pub const HELLO_FRAME: &str = "\"Hello\"";

/// How often a console sends its keep-alive frame.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);

/// The `access.base.info` status event a console sends after its greeting.
pub fn base_info(top_log_count: usize) -> String {
    serde_json::json!({
        "event": "access.base.info", "receiver_id": "", "event_object_id": "",
        "save_to_history": false, "data": {"top_log_count": top_log_count},
    })
    .to_string()
}

/// What one listener's connection is fed from.
pub struct Stream {
    /// Events, as JSON text.
    pub events: broadcast::Receiver<String>,
    /// Changes when every listener is to be dropped.
    pub kick: tokio::sync::watch::Receiver<u64>,
    /// The console is stopping.
    pub stop: CancellationToken,
    /// Sent first, in order.
    pub connect_frames: Vec<String>,
    /// The keep-alive cadence.
    pub keepalive: Duration,
}

/// Accepts the upgrade and spawns the listener's sender.
pub fn upgrade(mut req: Request<Incoming>, stream: Stream) -> Reply {
    let h = req.headers();
    let is_ws = h
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = h.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = h.get(SEC_WEBSOCKET_KEY).filter(|_| is_ws && version_ok) else {
        return Err(invalid(
            "this endpoint speaks WebSocket only (Upgrade: websocket, Sec-WebSocket-Version: 13)",
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let Stream {
        events: mut rx,
        mut kick,
        stop,
        connect_frames,
        keepalive,
    } = stream;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut tx, mut incoming) = ws.split();
        for frame in connect_frames {
            if tx.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(keepalive);
        tick.reset();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tx.send(Message::Close(None)).await;
                    break;
                }
                // Dropped without a close frame, as a lost connection is.
                _ = kick.changed() => break,
                _ = tick.tick() => if tx.send(Message::text(HELLO_FRAME)).await.is_err() { break },
                ev = rx.recv() => match ev {
                    Ok(text) => if tx.send(Message::text(text)).await.is_err() { break },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                msg = incoming.next() => match msg {
                    // tungstenite queues the Pong; flushing sends it.
                    Some(Ok(Message::Ping(_))) => if tx.flush().await.is_err() { break },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    Ok(resp)
}
