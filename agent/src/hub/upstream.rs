//! The hub's one WebSocket to the console.
//!
//! Connects with the agent's stored console token over the pinned TLS
//! client, publishes every event frame, passes the console's other frames
//! (greeting, status, keep-alives) to [`super::frames`], and treats the
//! connection as dead when nothing (event, pong, keep-alive) arrived for
//! [`DEAD_AFTER`]: it pings every [`PING_EVERY`]. A console that sends
//! keep-alives but never answers a ping is alive. Reconnects with jittered
//! backoff.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};
use keyway_certs::ConsoleTrust;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frames::{kind, Kind};
use super::Hub;
use crate::backoff::Backoff;

/// The console's event endpoint.
pub const NOTIFICATIONS: &str = "/api/v1/developer/devices/notifications";
/// How often the hub pings the console.
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// Silence after which the console's WebSocket is taken for dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(25);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const GREETING_WAIT: Duration = Duration::from_secs(2);

/// How to reach the console's event stream.
pub struct Upstream {
    /// The console base (`https://host:port`).
    pub base: Uri,
    /// Certificate trust (the pin), shared with the console client so a
    /// re-pin applies here too.
    pub trust: Arc<std::sync::RwLock<ConsoleTrust>>,
    /// The stored console token.
    pub token: String,
}

/// The longest wait between attempts to reach the console's event stream.
/// The console is on the LAN, so an attempt costs it nothing, while every
/// second the hub is away is a second of door events lost for every
/// subscriber (the console keeps none for a WebSocket that was not there):
/// after a console restart the hub is back within this (it was 30 s, and a
/// 15 s restart could leave the hub away for 25 s more).
const RECONNECT_CAP: Duration = Duration::from_secs(3);

/// Keeps the console's WebSocket connected until `stop`.
pub async fn run(hub: Arc<Hub>, up: Upstream, stop: CancellationToken) {
    tokio::spawn(super::frames::stand_in(hub.clone(), stop.clone()));
    let mut backoff = Backoff::new(Duration::from_millis(200), RECONNECT_CAP);
    let mut was_up = false;
    let mut warned = false;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect(&up) => r,
        };
        match attempt {
            Ok(mut ws) => {
                info!("event hub: connected to the console's event stream");
                backoff.reset();
                warned = false;
                greet(&hub, &mut ws).await;
                hub.set_upstream_live(true);
                let why = tokio::select! {
                    _ = stop.cancelled() => None,
                    why = pump(&hub, ws) => Some(why),
                };
                hub.set_upstream_live(false);
                match why {
                    None => return,
                    Some(why) => warn!("event hub: the console's event stream ended ({why}); reconnecting"),
                }
                was_up = true;
            }
            Err(e) => {
                // Said once an outage outlasts a few quick retries (a
                // console restart), then quiet until it is over.
                if was_up || (!warned && backoff.ceiling() >= RECONNECT_CAP) {
                    warn!("event hub: cannot reach the console's event stream: {e:#}; retrying every few seconds");
                    warned = true;
                } else {
                    debug!("event hub: cannot reach the console's event stream: {e:#}");
                }
                was_up = false;
            }
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect(up: &Upstream) -> anyhow::Result<Ws> {
    let auth = up.base.authority().context("console_url has no host")?;
    let host = auth.host().trim_matches(['[', ']']).to_string();
    let port = auth.port_u16().unwrap_or(443);
    let work = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let trust = *up.trust.read().unwrap_or_else(|p| p.into_inner());
        let mut tls = keyway_certs::tls::console_client(trust)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.clone()).context("console host name")?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .context("TLS to the console")?;
        let mut req = format!("wss://{auth}{NOTIFICATIONS}").into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", up.token)).context("console token")?;
        req.headers_mut().insert(AUTHORIZATION, bearer);
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 401 => {
                bail!("the console refused the stored console token (401); set a valid one with `keyway-agent console-token set`")
            }
            Err(e) => Err(e).context("WebSocket upgrade"),
        }
    };
    timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))?
}

/// Reads the console's first frame: its greeting, which subscribers get too.
async fn greet(hub: &Hub, ws: &mut Ws) {
    match timeout(GREETING_WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => match kind(&t) {
            Kind::KeepAlive => hub.frames().connected(Some(&t)),
            other => {
                hub.frames().connected(None);
                take(hub, &t, other);
            }
        },
        _ => hub.frames().connected(None),
    }
}

/// Publishes an event, or hands any other frame to the hub's frames.
fn take(hub: &Hub, text: &str, kind: Kind) {
    match kind {
        Kind::Event => {
            hub.publish(text);
        }
        other => hub.frames().received(text, other),
    }
}

/// Reads until the connection ends; returns why.
async fn pump(hub: &Hub, ws: Ws) -> String {
    let (mut tx, mut rx) = ws.split();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        tokio::select! {
            msg = rx.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => take(hub, &t, kind(&t)),
                    // tungstenite queued the pong; flushing sends it.
                    Some(Ok(Message::Ping(_))) => {
                        if let Err(e) = tx.flush().await {
                            return e.to_string();
                        }
                    }
                    Some(Ok(Message::Close(f))) => return format!("closed by the console: {f:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e.to_string(),
                    None => return "connection closed".into(),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= DEAD_AFTER {
                    return format!("nothing heard for {DEAD_AFTER:?}");
                }
                if let Err(e) = tx.send(Message::Ping(bytes::Bytes::from_static(b"keyway"))).await {
                    return e.to_string();
                }
            }
        }
    }
}
