//! The sites table, live: server-sent events carrying every row whenever
//! something changes (an agent comes or goes on this node, a site is
//! added, or the registry says otherwise at the next two-second look).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use super::Console;

/// How often the registry is read again for changes other nodes made.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// A comment line this often keeps proxies and the browser from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A response body fed by a channel; it ends when the sender goes.
pub struct Events(mpsc::Receiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Starts the stream for one browser tab of session `token`; it stops when
/// the tab goes, the session ends (signed out, or idle too long) or the
/// relay stops.
pub fn stream(console: Arc<Console>, token: String) -> Events {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut agents = console.agents.subscribe();
        let mut names = console.sites.names_changed();
        let mut last = String::new();
        let mut quiet = tokio::time::Instant::now();
        loop {
            if !console.sessions.alive(&token) {
                return;
            }
            if let Ok(rows) = console.rows().await {
                let json = serde_json::to_string(&rows).unwrap_or_default();
                if json != last {
                    if tx
                        .send(Bytes::from(format!("event: sites\ndata: {json}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = json;
                    quiet = tokio::time::Instant::now();
                }
            }
            if quiet.elapsed() >= KEEP_ALIVE {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                quiet = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = console.stop.cancelled() => return,
                _ = console.sessions.some_ended() => {}
                _ = agents.changed() => {}
                _ = names.changed() => {}
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
            }
            // A burst of changes (many agents at once) is one update.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Events(rx)
}
