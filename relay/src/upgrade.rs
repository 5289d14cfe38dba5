//! Upgraded connections (WebSockets) after the `101`: bytes both ways, and
//! an honest close when the relay cannot carry them any more.
//!
//! A WebSocket client whose TCP connection just stops, or is cut without a
//! close frame, often waits for a timeout before its reconnect logic runs.
//! So when the tunnel under a WebSocket fails, the relay sends the client a
//! close frame `1011` (internal error), and when the relay shuts down,
//! `1012` (service restart): both mean "reconnect".

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// WebSocket close code: the server hit an unexpected condition.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// WebSocket close code: the service is restarting.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// How long one side may linger after the other has closed.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// The upgraded connections of a relay.
#[derive(Clone, Default)]
pub struct Upgrades {
    /// Every splice task.
    pub tracker: TaskTracker,
    /// Cancelled at shutdown: WebSockets are closed with 1012.
    pub closing: CancellationToken,
}

impl Upgrades {
    /// Splices `client` and `tunnel` once both upgrades complete.
    /// `slots` (the edge's counters for the site) are held until it ends.
    pub fn spawn(&self, client: OnUpgrade, tunnel: OnUpgrade, websocket: bool, slots: Vec<crate::limits::Slot>) {
        let closing = self.closing.clone();
        self.tracker.spawn(tracing::Instrument::in_current_span(async move {
            splice(client, tunnel, websocket, closing).await;
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

/// An unmasked (server → client) WebSocket close frame with `code`.
pub fn close_frame(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

async fn splice(client: OnUpgrade, tunnel: OnUpgrade, websocket: bool, closing: CancellationToken) {
    let (client, tunnel) = match tokio::try_join!(client, tunnel) {
        Ok(pair) => pair,
        Err(e) => return debug!("upgrade failed: {e}"),
    };
    let _open = OpenUpgrade::new();
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut tr, mut tw) = tokio::io::split(TokioIo::new(tunnel));
    let up = async move {
        let r = tokio::io::copy(&mut cr, &mut tw).await;
        let _ = tw.shutdown().await;
        r
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let ended = loop {
            tokio::select! {
                _ = closing.cancelled() => break Some(CLOSE_SERVICE_RESTART),
                // Cancel-safe: a read that loses the race consumed nothing.
                r = tr.read(&mut buf) => match r {
                    Ok(0) => break None,
                    Ok(n) => if cw.write_all(&buf[..n]).await.is_err() { return true },
                    Err(e) => {
                        debug!("tunnel under the upgraded stream failed: {e}");
                        break Some(CLOSE_INTERNAL_ERROR);
                    }
                },
            }
        };
        if let (true, Some(code)) = (websocket, ended) {
            let _ = cw.write_all(&close_frame(code)).await;
        }
        let _ = cw.shutdown().await;
        // Broken (or shutting down): nothing more will cross; don't linger.
        ended.is_some()
    };
    tokio::pin!(up, down);
    tokio::select! {
        broken = &mut down => if !broken {
            // The console ended cleanly: let the client finish its side.
            let _ = tokio::time::timeout(LINGER, up).await;
        },
        r = &mut up => {
            debug!("client side of the upgraded stream ended: {r:?}");
            let _ = tokio::time::timeout(LINGER, down).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_are_well_formed() {
        assert_eq!(close_frame(1011), [0x88, 0x02, 0x03, 0xf3]);
        assert_eq!(close_frame(1012), [0x88, 0x02, 0x03, 0xf4]);
    }
}
