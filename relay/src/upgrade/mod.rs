//! Upgraded connections after the `101`.
//!
//! A WebSocket is relayed frame by frame, each frame's bytes as they came
//! (see `frames`). A client that has been silent for a whole
//! `websocket_ping_interval` is pinged by the relay, and closed with `4009`
//! if the next interval passes without a word from it: a frozen or
//! vanished subscriber would otherwise hold its slot, and the console's
//! connection, for as long as its TCP connection looks open. The relay
//! tells the client how the stream ended: `1011` (internal error) when the
//! tunnel under it fails, `1012` (service restart) when the relay shuts
//! down — both mean "reconnect" — `1002` when the client broke the
//! framing. Other upgrades are spliced as bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use frames::{Fail, Frames, Say};

mod frames;

/// WebSocket close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// WebSocket close code: the server hit an unexpected condition.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// WebSocket close code: the service is restarting.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// WebSocket close code: the client did not answer pings (as the agent's
/// event hub says it).
pub const CLOSE_NO_PONG: u16 = 4009;
/// How long one side may linger after the other has closed.
pub const LINGER: Duration = Duration::from_secs(5);
/// The default `websocket_ping_interval`.
pub const DEFAULT_PING_EVERY: Duration = Duration::from_secs(30);

/// The upgraded connections of a relay.
#[derive(Clone)]
pub struct Upgrades {
    /// Every relaying task.
    pub tracker: TaskTracker,
    /// Cancelled at shutdown: WebSockets are closed with 1012.
    pub closing: CancellationToken,
    /// How often WebSocket clients are pinged.
    pub ping_every: Duration,
}

impl Default for Upgrades {
    fn default() -> Self {
        Self {
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            ping_every: DEFAULT_PING_EVERY,
        }
    }
}

impl Upgrades {
    /// Relays between `client` and `tunnel` once both upgrades complete.
    /// `slots` (the edge's counters for the site) are held until it ends.
    pub fn spawn(&self, client: OnUpgrade, tunnel: OnUpgrade, websocket: bool, slots: Vec<crate::limits::Slot>) {
        let (closing, ping_every) = (self.closing.clone(), self.ping_every);
        self.tracker.spawn(tracing::Instrument::in_current_span(async move {
            let (client, tunnel) = match tokio::try_join!(client, tunnel) {
                Ok(pair) => pair,
                Err(e) => return debug!("upgrade failed: {e}"),
            };
            let _open = OpenUpgrade::new();
            if websocket {
                relay_websocket(client, tunnel, closing, ping_every).await;
            } else {
                splice(client, tunnel, closing).await;
            }
            drop(slots);
        }));
    }
}

/// Counts an open upgraded connection in the metrics while it lives.
struct OpenUpgrade;

impl OpenUpgrade {
    fn new() -> Self {
        crate::metrics::METRICS.websockets.inc();
        Self
    }
}

impl Drop for OpenUpgrade {
    fn drop(&mut self) {
        crate::metrics::METRICS.websockets.dec();
    }
}

async fn relay_websocket(client: Upgraded, tunnel: Upgraded, closing: CancellationToken, ping_every: Duration) {
    let (client_rx, client_tx) = tokio::io::split(TokioIo::new(client));
    let (tunnel_rx, tunnel_tx) = tokio::io::split(TokioIo::new(tunnel));
    let heard = AtomicBool::new(true);
    let (say, said) = mpsc::channel(2);
    let up = frames::up(Frames::heard_by(client_rx, &heard), tunnel_tx);
    let down = frames::down(Frames::new(tunnel_rx), client_tx, said, CLOSE_INTERNAL_ERROR);
    tokio::pin!(up, down);
    let mut ping = tokio::time::interval(ping_every);
    ping.reset();
    let mut pinged = false;
    let mut up_finished = false;
    // Set once one side has closed: the other's close may follow until then.
    let mut linger = None;
    let told = loop {
        let lingered = async {
            match linger {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = closing.cancelled() => break Some(CLOSE_SERVICE_RESTART),
            _ = lingered => break None,
            _ = ping.tick(), if linger.is_none() => {
                if heard.swap(false, Ordering::Relaxed) {
                    pinged = false;
                } else if pinged {
                    // Unanswered, or not even taken off the relay in an
                    // interval: either way the client is gone.
                    tracing::info!("WebSocket client closed: no answer to a ping in {ping_every:?}");
                    break Some(CLOSE_NO_PONG);
                } else {
                    let _ = say.try_send(Say::Ping);
                    pinged = true;
                }
            }
            end = &mut up, if !up_finished => {
                up_finished = true;
                match end {
                    // The client's close went on; the console's answer follows.
                    Ok(()) => linger = Some(tokio::time::Instant::now() + LINGER),
                    Err(Fail::Protocol(why)) => {
                        debug!("WebSocket client broke the framing: {why}");
                        break Some(CLOSE_PROTOCOL_ERROR);
                    }
                    Err(Fail::Write(e)) => {
                        debug!("tunnel under the WebSocket failed: {e}");
                        break Some(CLOSE_INTERNAL_ERROR);
                    }
                    Err(Fail::Read(e)) => {
                        debug!("WebSocket client left: {e:?}");
                        return;
                    }
                }
            }
            end = &mut down => {
                match end {
                    Ok(()) => {}
                    Err(Fail::Write(e)) => debug!("WebSocket client failed: {e}"),
                    Err(e) => debug!("tunnel under the WebSocket ended: {e:?}"),
                }
                // The tunnel's close (or the relay's 1011) is with the
                // client: its answer, if any, goes on within the linger.
                if !up_finished {
                    let _ = tokio::time::timeout(LINGER, &mut up).await;
                }
                return;
            }
        }
    };
    let Some(code) = told else { return };
    let said =
        say.try_send(Say::Close(code)).is_ok() && tokio::time::timeout(Duration::from_secs(1), &mut down).await.is_ok();
    // A client that took the close may answer it; the tunnel is dropped,
    // which ends the console's side at the agent.
    if said && !up_finished {
        let _ = tokio::time::timeout(LINGER, &mut up).await;
    }
}

/// Bytes both ways for an upgrade that is not a WebSocket.
async fn splice(client: Upgraded, tunnel: Upgraded, closing: CancellationToken) {
    let (up, down) = tokio::select! {
        r = keyway_proto::io::splice(TokioIo::new(client), TokioIo::new(tunnel), LINGER) => r,
        _ = closing.cancelled() => (0, 0),
    };
    debug!(up, down, "upgraded stream closed");
}
