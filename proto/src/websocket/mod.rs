//! A WebSocket relayed between the client and the far side (the tunnel at
//! the relay; the console, for a zero-knowledge site, at the agent), frame
//! by frame, each frame's bytes as they came (see `frames`).
//!
//! Whoever ends the client's connection keeps it honest: a client that has
//! been silent for a whole ping interval is pinged, and closed with `4009`
//! if the next interval passes without a word from it — a frozen or
//! vanished subscriber would otherwise hold its slot, and the console's
//! connection, for as long as its TCP connection looks open. The client is
//! told how the stream ended: `1011` (internal error) when the far side
//! fails under it, `1012` (service restart) at shutdown — both mean
//! "reconnect" — `1002` when the client broke the framing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
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
/// The default ping interval (the relay's `websocket_ping_interval`).
pub const DEFAULT_PING_EVERY: Duration = Duration::from_secs(30);

/// Relays the WebSocket between `client` and `far` until either ends, the
/// client stops answering pings sent every `ping_every`, or `closing`
/// completes (the client is then told `1012`).
pub async fn relay<C, F>(client: C, far: F, closing: impl Future<Output = ()>, ping_every: Duration)
where
    C: AsyncRead + AsyncWrite,
    F: AsyncRead + AsyncWrite,
{
    let (client_rx, client_tx) = tokio::io::split(client);
    let (far_rx, far_tx) = tokio::io::split(far);
    let heard = AtomicBool::new(true);
    let (say, said) = mpsc::channel(2);
    let up = frames::up(Frames::heard_by(client_rx, &heard), far_tx);
    let down = frames::down(Frames::new(far_rx), client_tx, said, CLOSE_INTERNAL_ERROR);
    tokio::pin!(up, down, closing);
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
            _ = &mut closing => break Some(CLOSE_SERVICE_RESTART),
            _ = lingered => break None,
            _ = ping.tick(), if linger.is_none() => {
                if heard.swap(false, Ordering::Relaxed) {
                    pinged = false;
                } else if pinged {
                    // Unanswered, or not even taken off the socket in an
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
                    // The client's close went on; the far side's answer follows.
                    Ok(()) => linger = Some(tokio::time::Instant::now() + LINGER),
                    Err(Fail::Protocol(why)) => {
                        debug!("WebSocket client broke the framing: {why}");
                        break Some(CLOSE_PROTOCOL_ERROR);
                    }
                    Err(Fail::Write(e)) => {
                        debug!("the far side of the WebSocket failed: {e}");
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
                    Err(e) => debug!("the far side of the WebSocket ended: {e:?}"),
                }
                // The far side's close (or our 1011) is with the client:
                // its answer, if any, goes on within the linger.
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
    // A client that took the close may answer it; the far side is then
    // dropped, which ends the console's side.
    if said && !up_finished {
        let _ = tokio::time::timeout(LINGER, &mut up).await;
    }
}
