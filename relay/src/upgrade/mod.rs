//! Upgraded connections after the `101`.
//!
//! A WebSocket is relayed frame by frame by [`keyway_proto::websocket`]:
//! a client silent for a whole `websocket_ping_interval` is pinged by the
//! relay and closed with `4009` if it stays silent, `1011` when the tunnel
//! under it fails, `1012` when the relay shuts down. (An agent does the
//! same for a zero-knowledge site's clients, whose WebSockets the relay
//! cannot read.) Other upgrades are spliced as bytes.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use keyway_proto::websocket::{
    CLOSE_INTERNAL_ERROR, CLOSE_NO_PONG, CLOSE_PROTOCOL_ERROR, CLOSE_SERVICE_RESTART, DEFAULT_PING_EVERY, LINGER,
};

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
                let (client, tunnel) = (TokioIo::new(client), TokioIo::new(tunnel));
                keyway_proto::websocket::relay(client, tunnel, closing.cancelled(), ping_every).await;
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

/// Bytes both ways for an upgrade that is not a WebSocket.
async fn splice(client: hyper::upgrade::Upgraded, tunnel: hyper::upgrade::Upgraded, closing: CancellationToken) {
    let (up, down) = tokio::select! {
        r = keyway_proto::io::splice(TokioIo::new(client), TokioIo::new(tunnel), LINGER) => r,
        _ = closing.cancelled() => (0, 0),
    };
    debug!(up, down, "upgraded stream closed");
}
