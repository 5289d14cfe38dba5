//! Keep-alive HTTP/1.1 connections over tunnel streams, pooled per agent link.
//!
//! Each tunnel stream carries plain HTTP/1.1 (after its one-byte preamble),
//! and the agent serves it as a keep-alive connection. A request that finds
//! an idle connection in its link's pool skips opening a stream, writing the
//! preamble and starting a hyper client connection: on each end a task
//! spawned and several cross-thread wake-ups. In bench/run (small GETs at
//! concurrency 16) that took Keyway from 0.41–0.50× rathole's requests/s to
//! 0.50–0.63×.
//!
//! A connection goes back to the pool only once its response body has ended
//! cleanly; a body dropped half-read takes its connection with it. The agent
//! closes a stream that waits longer than its header-read timeout (30 s) for
//! the next request, so the pool forgets connections idle for half that and
//! a request never races the agent's close. Upgrades (WebSockets) always get
//! a stream of their own, which becomes a byte pipe after the `101`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// The body of a request going into the tunnel: the client's, streamed
/// and size-limited, or read whole at the edge (see [`keyway_proto::edge::whole`]).
pub type OutBody = http_body_util::Either<Limited<Incoming>, http_body_util::Full<bytes::Bytes>>;

/// One HTTP/1.1 client connection over a tunnel stream.
pub type Sender = SendRequest<OutBody>;

/// How long a connection may sit idle in the pool: half the agent's
/// header-read timeout.
pub const IDLE_FOR: Duration = Duration::from_secs(15);

/// Idle connections kept per link; a burst beyond this closes its extra
/// streams when it ends instead of holding them.
pub const MAX_IDLE: usize = 64;

/// Idle connections to one agent link, most recently used last.
pub struct StreamPool<B = OutBody> {
    idle: Mutex<Vec<(SendRequest<B>, Instant)>>,
}

impl<B> Default for StreamPool<B> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<B> StreamPool<B> {
    /// An idle connection ready for a request, if the pool has one. Closed
    /// and expired connections are dropped on the way.
    pub fn take(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        idle.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_FOR);
        // The warmest first; one still finishing its last exchange stays.
        let i = idle.iter().rposition(|(s, _)| s.is_ready())?;
        Some(idle.remove(i).0)
    }

    /// Gives back a connection whose exchange ended cleanly.
    pub fn put(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    /// Connections in the pool now.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl<B> std::fmt::Debug for StreamPool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPool").field("idle", &self.idle()).finish()
    }
}

/// A connection lent to one request, and the pool it goes back to.
pub struct Lease<B = OutBody> {
    sender: SendRequest<B>,
    pool: Arc<StreamPool<B>>,
}

impl<B> Lease<B> {
    /// Lends `sender`, which belongs to `pool`.
    pub fn new(sender: SendRequest<B>, pool: Arc<StreamPool<B>>) -> Self {
        Self { sender, pool }
    }

    /// The exchange ended cleanly: the connection can carry another.
    pub fn give_back(self) {
        self.pool.put(self.sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Plain = SendRequest<Empty<Bytes>>;

    /// A client connection to an in-memory HTTP/1.1 server that answers
    /// "ok"; `seen` counts the connections made.
    async fn connect(seen: &AtomicUsize) -> Plain {
        let (client, server) = tokio::io::duplex(64 * 1024);
        seen.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    async fn exchange(sender: &mut Plain) -> Bytes {
        let req = Request::builder()
            .uri("/")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_returned_connection_carries_the_next_request() {
        let seen = AtomicUsize::new(0);
        let pool = Arc::new(StreamPool::default());
        assert!(pool.take().is_none());
        let mut s = connect(&seen).await;
        assert_eq!(exchange(&mut s).await, "ok");
        Lease::new(s, pool.clone()).give_back();
        assert_eq!(pool.idle(), 1);
        // Ready once the client connection's task has seen the exchange end.
        let mut s = loop {
            if let Some(s) = pool.take() {
                break s;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(exchange(&mut s).await, "ok");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "the second request reused the connection"
        );
    }

    #[tokio::test]
    async fn closed_connections_are_not_lent() {
        let pool = StreamPool::default();
        let (client, server) = tokio::io::duplex(1024);
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        pool.put(sender);
        assert_eq!(pool.idle(), 1);
        drop(server);
        let _ = task.await;
        assert!(pool.take().is_none());
        assert_eq!(pool.idle(), 0, "the closed connection was dropped");
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_idle() {
        let seen = AtomicUsize::new(0);
        let pool = StreamPool::default();
        for _ in 0..MAX_IDLE + 3 {
            pool.put(connect(&seen).await);
        }
        assert_eq!(pool.idle(), MAX_IDLE);
    }
}
