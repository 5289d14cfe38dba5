//! Door-event subscribers arriving through the tunnel.
//!
//! `GET /api/v1/developer/devices/notifications` with a WebSocket upgrade is
//! answered here instead of by the console: the subscriber's token is
//! checked first (against the console with a cheap call needing the same
//! `view:device` permission, remembered by fingerprint for
//! [`TOKEN_CACHE_TTL`]), then it gets the console's connect-time frames
//! (greeting, status), the console's events and its keep-alives, untouched,
//! from the hub.
//!
//! With `?since=SEQ[&epoch=EPOCH]` the subscriber is Keyway-aware: each event
//! comes wrapped with its sequence number, preceded by the buffered events
//! after `SEQ` (and a `gap` message if some are gone), then a `live` marker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use keyway_certs::Fingerprint;
use keyway_proto::envelope::HttpBody;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use super::upstream::NOTIFICATIONS;
use super::{Event, Hub, Since, Subscription, CUT_TOO_SLOW};
use crate::console::Console;
use crate::error::{AgentError, BadRequest, TokenInvalid, Unreachable};

/// How long a token the console accepted is trusted without asking again.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long a subscriber waits for the console's stream to be connected.
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 4096;
/// How long a cut subscriber has to take its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Serves subscribers from a hub.
pub struct Subscribers {
    hub: Arc<Hub>,
    accepted: Mutex<HashMap<Fingerprint, Instant>>,
    ping_every: Duration,
}

/// How often each subscriber is pinged; one that has sent nothing (not
/// even the pong) by the next ping is closed, so a frozen or vanished
/// subscriber is closed within two intervals (50 s), and its relay slot
/// is free once the relay's linger for its half of the close has passed
/// (55 s): within the minute.
pub const DEFAULT_PING_EVERY: Duration = Duration::from_secs(25);

/// WebSocket close code for a subscriber that stopped answering pings.
pub const CLOSE_NO_PONG: u16 = 4009;

/// Whether `req` is a subscription the hub answers.
pub fn is_subscription<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.uri().path() == NOTIFICATIONS
        && keyway_proto::headers::wants_upgrade(req.headers())
}

impl Subscribers {
    /// Subscribers of `hub`, each pinged every `ping_every`.
    pub fn new(hub: Arc<Hub>, ping_every: Duration) -> Self {
        Self {
            hub,
            accepted: Mutex::new(HashMap::new()),
            ping_every,
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Answers one upgrade request: refusal, or 101 and a subscriber task.
    pub async fn subscribe(
        &self,
        console: &Console,
        mut req: Request<HttpBody>,
    ) -> Result<Response<HttpBody>, AgentError> {
        let h = req.headers();
        let is_ws = h
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let version_ok = h.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let Some(key) = h.get(SEC_WEBSOCKET_KEY).filter(|_| is_ws && version_ok) else {
            return Err(AgentError::BadRequest(BadRequest::NotWebSocket));
        };
        let accept = derive_accept_key(key.as_bytes());
        let since = parse_since(req.uri().query()).map_err(|msg| AgentError::BadRequest(BadRequest::Since(msg)))?;
        let auth = h
            .get(AUTHORIZATION)
            .cloned()
            .ok_or(AgentError::TokenInvalid(TokenInvalid::Missing))?;
        self.check(console, &auth).await?;
        if !self.wait_upstream().await {
            return Err(AgentError::ConsoleUnreachable(Unreachable::NoEventStream));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        // A zero-knowledge subscriber's edge slots, held while it listens.
        let hold = req.extensions().get::<crate::edge::Hold>().cloned();
        let leaving = req.extensions().get::<crate::edge::Leaving>().cloned();
        let tasks = leaving.as_ref().map(|l| l.tasks.clone());
        let leaving = leaving.map(|l| l.token);
        let sub = self.hub.subscribe(since.clone());
        let (hub, wrapped, ping_every) = (self.hub.clone(), since.is_some(), self.ping_every);
        let span = tracing::info_span!("subscriber", id = sub.id, since = since.as_ref().map(|s| s.seq));
        let task = async move {
            let id = sub.id;
            match on_upgrade.await {
                Ok(io) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                    let why = feed(&hub, ws, sub, wrapped, ping_every, leaving).await;
                    debug!("subscriber left: {why}");
                }
                Err(e) => debug!("upgrade failed: {e}"),
            }
            hub.unsubscribe(id);
            drop(hold);
        }
        .instrument(span);
        // A zero-knowledge subscriber's tunnel waits for its close frame.
        match tasks {
            Some(tasks) => drop(tasks.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        Ok(resp)
    }

    /// Whether the console accepts this token for events (cached).
    async fn check(&self, console: &Console, auth: &HeaderValue) -> Result<(), AgentError> {
        let fp = Fingerprint::of(auth.as_bytes());
        let fresh = |t: &Instant| t.elapsed() < TOKEN_CACHE_TTL;
        if self.cache().get(&fp).is_some_and(fresh) {
            return Ok(());
        }
        console.check_token(auth).await?;
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, t| fresh(t));
        }
        if cache.len() < CACHE_MAX {
            cache.insert(fp, Instant::now());
        }
        Ok(())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Instant>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn wait_upstream(&self) -> bool {
        let mut live = self.hub.upstream_live();
        let up = tokio::time::timeout(UPSTREAM_WAIT, live.wait_for(|up| *up)).await;
        matches!(up, Ok(Ok(_)))
    }
}

/// `since=SEQ[&epoch=EPOCH]`; `Ok(None)` for a plain subscriber.
pub fn parse_since(query: Option<&str>) -> Result<Option<Since>, String> {
    let (mut seq, mut epoch) = (None, None);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => {
                seq = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("since: expected the last sequence number received, got {v:?}"))?,
                )
            }
            "epoch" if v.is_empty() => {}
            "epoch" if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) => epoch = Some(v.to_string()),
            "epoch" => return Err(format!("epoch: expected the epoch of the events received, got {v:?}")),
            _ => {}
        }
    }
    match (seq, epoch) {
        (Some(seq), epoch) => Ok(Some(Since { seq, epoch })),
        (None, Some(_)) => Err("epoch is only meaningful with since".into()),
        (None, None) => Ok(None),
    }
}

/// Sends the greeting, the replay and live events until the subscriber
/// leaves or is cut; returns why it ended.
async fn feed<S>(
    hub: &Hub,
    ws: WebSocketStream<S>,
    sub: Subscription,
    wrapped: bool,
    ping_every: Duration,
    leaving: Option<CancellationToken>,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let Subscription {
        replay,
        gap,
        mut live,
        cut,
        position,
        connect_frames,
        mut frames,
        ..
    } = sub;
    let epoch = hub.epoch();
    let mut first: Vec<Message> = connect_frames.into_iter().map(Message::text).collect();
    if wrapped {
        if let Some(g) = gap {
            first.push(Message::text(
                serde_json::json!({
                    "keyway": "gap", "epoch": epoch, "since": g.since, "first": g.first,
                    "message": if g.since >= g.first {
                        format!("this hub never handed out #{} in this epoch (it is at #{}): what came after #{} is lost to this subscriber", g.since, g.first - 1, g.first - 1)
                    } else {
                        format!("events after #{} before #{} are no longer buffered; they are lost to this subscriber", g.since, g.first)
                    },
                })
                .to_string(),
            ));
        }
        first.extend(replay.iter().map(|e| Message::text(wrap(epoch, e))));
        first.push(Message::text(
            serde_json::json!({"keyway": "live", "epoch": epoch, "seq": position}).to_string(),
        ));
    }
    for m in first {
        if let Err(e) = tx.feed(m).await {
            return e.to_string();
        }
    }
    if let Err(e) = tx.flush().await {
        return e.to_string();
    }
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    let mut heard = true;
    loop {
        tokio::select! {
            biased;
            _ = cut.cancelled() => break,
            _ = async { match &leaving { Some(l) => l.cancelled().await, None => std::future::pending().await } } => {
                // A zero-knowledge subscriber whose tunnel retires: "service
                // restart", so it reconnects (through the next tunnel).
                let frame = CloseFrame { code: CloseCode::Restart, reason: "the agent's tunnel is moving".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(frame)))).await;
                return "tunnel retired".into();
            }
            _ = ping.tick() => {
                if !heard {
                    info!("subscriber closed: no answer to a ping in {ping_every:?}");
                    let frame = CloseFrame { code: CloseCode::from(CLOSE_NO_PONG), reason: "no answer to pings".into() };
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(frame)))).await;
                    return "no pong".into();
                }
                heard = false;
                let sent = tokio::time::timeout(ping_every, tx.send(Message::Ping(bytes::Bytes::from_static(b"keyway")))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return "a ping could not be sent".into();
                }
            }
            ev = live.recv() => {
                let Some(ev) = ev else { return "hub closed".into() };
                let text = if wrapped { wrap(epoch, &ev) } else { ev.text.to_string() };
                tokio::select! {
                    sent = tx.send(Message::text(text)) => if let Err(e) = sent { return e.to_string() },
                    // A send blocked on a subscriber that stopped reading.
                    _ = cut.cancelled() => break,
                }
            }
            frame = frames.recv() => match frame {
                Ok(text) => {
                    tokio::select! {
                        sent = tx.send(Message::text(&*text)) => if let Err(e) = sent { return e.to_string() },
                        _ = cut.cancelled() => break,
                    }
                }
                // Only keep-alives and status frames are lost; newer ones follow.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return "hub closed".into(),
            },
            msg = rx.next() => {
                // Anything from the subscriber (a pong, its own ping) shows it is there.
                heard = true;
                match msg {
                    Some(Ok(Message::Ping(_))) => if let Err(e) = tx.flush().await { return e.to_string() },
                    Some(Ok(Message::Close(_))) | None => return "closed".into(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    // Cut: the close frame goes after what is already queued; a subscriber
    // that never reads again is dropped when the wait ends.
    info!("subscriber cut: its queue of events was full (it reads too slowly)");
    let frame = CloseFrame {
        code: CloseCode::from(CUT_TOO_SLOW),
        reason: "too slow: events queued past the limit; resume with ?since=".into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        tx.send(Message::Close(Some(frame))).await?;
        tx.close().await
    })
    .await;
    "cut".into()
}

fn wrap(epoch: &str, e: &Event) -> String {
    format!(
        "{{\"keyway\":\"event\",\"epoch\":\"{epoch}\",\"seq\":{},\"event\":{}}}",
        e.seq, e.text
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_epoch() {
        assert_eq!(parse_since(None).unwrap(), None);
        assert_eq!(parse_since(Some("x=1")).unwrap(), None);
        assert_eq!(
            parse_since(Some("since=42&epoch=ab12")).unwrap(),
            Some(Since {
                seq: 42,
                epoch: Some("ab12".into())
            })
        );
        assert!(parse_since(Some("since=-1")).is_err());
        assert!(parse_since(Some("since=1&epoch=a%20b")).is_err());
        assert!(parse_since(Some("epoch=ab")).is_err());
        assert_eq!(parse_since(Some("since=3&epoch=")).unwrap().unwrap().epoch, None);
    }
}
