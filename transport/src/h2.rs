//! The TLS-over-TCP transport: HTTP/2 framing (the `h2` crate) inside a TLS
//! 1.3 connection the agent opened to the relay's HTTPS port.
//!
//! Why HTTP/2 rather than yamux: `h2` is the HTTP/2 implementation under
//! hyper, already built into both binaries, maintained with it and hardened
//! against hostile peers (flow-control, reset-flood and header-size limits),
//! and its frames on port 443 look like the HTTPS the port serves.
//!
//! HTTP/2 only lets the client open streams, and the relay opens one per
//! request, so the relay is the HTTP/2 client and the agent the server (TLS
//! roles are the other way round, which HTTP/2 does not mind). The agent's
//! control stream is therefore the first stream the relay opens. Each stream
//! is a `POST` whose request and response bodies are the two directions of a
//! byte pipe. Liveness: each side pings on its own schedule and declares the
//! tunnel lost when a ping goes unanswered for [`IDLE_TIMEOUT`] (as QUIC's
//! idle timeout does). Close codes: the agent sends them in GOAWAY; the
//! relay, which as a client cannot, sends a last stream carrying the code in
//! a header.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{HeaderValue, Request, Response};
use keyway_proto::{CloseCode, IDLE_TIMEOUT};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{BoxFut, Closed, TransportKind, Tunnel, TunnelStream};

/// Flow-control window per stream (as the QUIC transport's).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Flow-control window per connection.
const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Concurrent request streams the agent accepts.
const MAX_STREAMS: u32 = 1024;
/// Largest frame either side sends.
const MAX_FRAME: u32 = 64 * 1024;
/// Header carrying the relay's close code on its last stream.
const CLOSE_CODE: &str = "keyway-close";
/// Header carrying the relay's close reason.
const CLOSE_REASON: &str = "keyway-close-reason";
/// How long a closing side keeps the connection to deliver its close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

type Incoming = (Request<RecvStream>, h2::server::SendResponse<Bytes>);

struct Shared {
    remote: SocketAddr,
    /// When the connection was set up, and milliseconds since then at which
    /// the last bytes arrived from the peer.
    born: Instant,
    last_rx: Arc<AtomicU64>,
    rtt_micros: AtomicU64,
    reason: OnceLock<Closed>,
    done: CancellationToken,
    close_req: CancellationToken,
    close_cmd: Mutex<Option<(CloseCode, String)>>,
}

impl Shared {
    fn new(remote: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            remote,
            born: Instant::now(),
            last_rx: Arc::new(AtomicU64::new(0)),
            rtt_micros: AtomicU64::new(0),
            reason: OnceLock::new(),
            done: CancellationToken::new(),
            close_req: CancellationToken::new(),
            close_cmd: Mutex::new(None),
        })
    }

    fn finish(&self, why: Closed) {
        if self.reason.set(why).is_ok() {
            debug!(remote = %self.remote, reason = %self.reason.get().expect("just set"), "tunnel closed");
        }
        self.done.cancel();
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_rx.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    fn watch<T>(&self, io: T) -> Watched<T> {
        Watched {
            io,
            born: self.born,
            last_rx: self.last_rx.clone(),
        }
    }

    fn close_cmd(&self) -> (CloseCode, String) {
        self.close_cmd
            .lock()
            .expect("close command lock poisoned")
            .clone()
            .unwrap_or((CloseCode::Normal, String::new()))
    }
}

enum Role {
    Relay(h2::client::SendRequest<Bytes>),
    Agent(tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>),
}

/// A tunnel over one TLS/TCP connection with HTTP/2 framing.
pub struct H2Tunnel {
    shared: Arc<Shared>,
    role: Role,
}

impl H2Tunnel {
    /// The relay's end, over an accepted TLS stream that negotiated
    /// `keyway/1`. Pings every `keepalive`.
    pub async fn relay<T>(io: T, remote: SocketAddr, keepalive: Duration) -> io::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = Shared::new(remote);
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME)
            .enable_push(false)
            .handshake::<_, Bytes>(shared.watch(io))
            .await
            .map_err(h2_io)?;
        let pings = conn.ping_pong().expect("the ping handle is taken once");
        tokio::spawn(drive_relay(conn, pings, send.clone(), shared.clone(), keepalive));
        Ok(Self {
            shared,
            role: Role::Relay(send),
        })
    }

    /// The agent's end, over a TLS stream to the relay that negotiated
    /// `keyway/1`. Pings every `keepalive`.
    pub async fn agent<T>(io: T, remote: SocketAddr, keepalive: Duration) -> io::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = Shared::new(remote);
        let mut conn = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_STREAMS)
            .handshake::<_, Bytes>(shared.watch(io))
            .await
            .map_err(h2_io)?;
        let pings = conn.ping_pong().expect("the ping handle is taken once");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive_agent(conn, pings, tx, shared.clone(), keepalive));
        Ok(Self {
            shared,
            role: Role::Agent(tokio::sync::Mutex::new(rx)),
        })
    }

    async fn open_stream(&self) -> io::Result<TunnelStream> {
        let Role::Relay(send) = &self.role else {
            return Err(io::Error::other("only the relay opens streams"));
        };
        if let Some(why) = self.shared.reason.get() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, why.to_string()));
        }
        let mut send = send.clone().ready().await.map_err(h2_io)?;
        let req = Request::post("https://keyway.tunnel/")
            .body(())
            .expect("a constant request");
        let (response, tx) = send.send_request(req, false).map_err(h2_io)?;
        let id = u64::from(u32::from(tx.stream_id()));
        Ok(TunnelStream::new(id, H2Stream::new(tx, Recv::Head(response))))
    }

    async fn accept_stream(&self) -> io::Result<TunnelStream> {
        let Role::Agent(incoming) = &self.role else {
            return Err(io::Error::other("only the agent accepts streams"));
        };
        let mut incoming = incoming.lock().await;
        loop {
            let Some((req, mut respond)) = incoming.recv().await else {
                let why = self.shared.reason.get().map(ToString::to_string).unwrap_or_default();
                return Err(io::Error::new(io::ErrorKind::NotConnected, why));
            };
            let id = u64::from(u32::from(respond.stream_id()));
            match respond.send_response(Response::new(()), false) {
                Ok(tx) => return Ok(TunnelStream::new(id, H2Stream::new(tx, Recv::Body(req.into_body())))),
                // The relay gave this stream up before it was accepted (its
                // client's body failed, say): that stream only, not the tunnel.
                Err(e) => tracing::debug!(id, "stream reset before it was accepted: {e}"),
            }
        }
    }
}

impl Tunnel for H2Tunnel {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn remote_address(&self) -> SocketAddr {
        self.shared.remote
    }

    fn rtt(&self) -> Duration {
        Duration::from_micros(self.shared.rtt_micros.load(Ordering::Relaxed))
    }

    fn open_control(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(self.accept_stream())
    }

    fn accept_control(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(self.open_stream())
    }

    fn open(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(self.open_stream())
    }

    fn accept(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(self.accept_stream())
    }

    fn close(&self, code: CloseCode, reason: &str) {
        if self.shared.reason.get().is_some() {
            return;
        }
        *self.shared.close_cmd.lock().expect("close command lock poisoned") = Some((code, reason.to_string()));
        self.shared.finish(Closed::Locally);
        self.shared.close_req.cancel();
    }

    fn closed(&self) -> BoxFut<'_, ()> {
        Box::pin(self.shared.done.cancelled())
    }

    fn heard(&self) -> u64 {
        self.shared.last_rx.load(Ordering::Relaxed)
    }

    fn close_reason(&self) -> Option<Closed> {
        self.shared.reason.get().cloned()
    }
}

impl Drop for H2Tunnel {
    fn drop(&mut self) {
        // Like a dropped QUIC connection: the peer hears an orderly close.
        self.shared.close_req.cancel();
    }
}

async fn drive_relay<T>(
    mut conn: h2::client::Connection<T, Bytes>,
    pings: PingPong,
    send: h2::client::SendRequest<Bytes>,
    shared: Arc<Shared>,
    every: Duration,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin,
{
    let why = tokio::select! {
        r = &mut conn => match r {
            Ok(()) => Closed::ByPeer { code: Some(CloseCode::Normal), reason: String::new() },
            Err(e) => closed_by(e),
        },
        why = keepalive(pings, every, &shared) => why,
        _ = shared.close_req.cancelled() => {
            let (code, reason) = shared.close_cmd();
            let deliver = async {
                let mut req = Request::post("https://keyway.tunnel/close").body(()).expect("a constant request");
                req.headers_mut().insert(CLOSE_CODE, HeaderValue::from(code.code()));
                if let Ok(v) = HeaderValue::from_str(&printable(&reason)) {
                    req.headers_mut().insert(CLOSE_REASON, v);
                }
                // Hold the handle and the stream: with neither, h2 would end
                // the connection before the close stream is on the wire.
                let _held = match send.ready().await {
                    Ok(mut s) => {
                        let stream = s.send_request(req, true);
                        Some((s, stream))
                    }
                    Err(_) => None,
                };
                // The agent hangs up once it has read the close.
                std::future::pending::<()>().await;
            };
            // A peer closed for its silence would not read it: waiting
            // would only hold its in-flight requests past their 503.
            let linger = if code == CloseCode::Silent { Duration::ZERO } else { CLOSE_LINGER };
            let _ = timeout(linger, async { tokio::select! { _ = &mut conn => {}, _ = deliver => {} } }).await;
            Closed::Locally
        }
    };
    shared.finish(why);
}

async fn drive_agent<T>(
    mut conn: h2::server::Connection<T, Bytes>,
    pings: PingPong,
    tx: mpsc::UnboundedSender<Incoming>,
    shared: Arc<Shared>,
    every: Duration,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin,
{
    let alive = keepalive(pings, every, &shared);
    tokio::pin!(alive);
    let why = loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    if let Some(code) = req.headers().get(CLOSE_CODE) {
                        let code = code.to_str().ok().and_then(|c| c.parse::<u64>().ok());
                        let reason = req
                            .headers()
                            .get(CLOSE_REASON)
                            .and_then(|r| r.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        break Closed::ByPeer { code: code.and_then(CloseCode::from_code), reason };
                    }
                    if tx.send((req, respond)).is_err() {
                        break Closed::Locally;
                    }
                }
                Some(Err(e)) => break closed_by(e),
                // The relay always says why before it closes; a connection
                // that just ends means the relay process is gone.
                None => break Closed::Reset,
            },
            why = &mut alive => break why,
            _ = shared.close_req.cancelled() => {
                let (code, _) = shared.close_cmd();
                conn.abrupt_shutdown(h2::Reason::from(code.code()));
                let _ = timeout(CLOSE_LINGER, std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
                // The GOAWAY is written; hold the socket open (unread) a
                // moment so the relay reads it before it sees the connection
                // end, rather than a broken pipe on its next write.
                tokio::time::sleep(CLOSE_LINGER).await;
                break Closed::Locally;
            }
        }
    };
    shared.finish(why);
}

/// Pings every `every` (for the RTT, and so an idle tunnel carries
/// something); returns once nothing at all has arrived from the peer for the
/// idle timeout, as QUIC's idle timer does. Any received byte counts, so a
/// pong queued behind a large transfer on a slow link is not mistaken for a
/// dead peer.
async fn keepalive(mut pings: PingPong, every: Duration, shared: &Shared) -> Closed {
    let check = every.min(Duration::from_millis(500));
    loop {
        let sent = Instant::now();
        let ping = pings.ping(Ping::opaque());
        tokio::pin!(ping);
        loop {
            tokio::select! {
                pong = &mut ping => match pong {
                    Ok(_) => {
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        shared.rtt_micros.store(micros, Ordering::Relaxed);
                        break;
                    }
                    // The connection is failing; its own future says why.
                    Err(_) => std::future::pending::<()>().await,
                },
                _ = tokio::time::sleep(check) => {
                    if shared.silent_for() >= IDLE_TIMEOUT {
                        return Closed::Lost(format!("nothing received for {IDLE_TIMEOUT:?}"));
                    }
                }
            }
        }
        let next = tokio::time::Instant::now() + every;
        while tokio::time::Instant::now() < next {
            tokio::time::sleep(check.min(next - tokio::time::Instant::now())).await;
            if shared.silent_for() >= IDLE_TIMEOUT {
                return Closed::Lost(format!("nothing received for {IDLE_TIMEOUT:?}"));
            }
        }
    }
}

fn closed_by(e: h2::Error) -> Closed {
    if e.is_go_away() && e.is_remote() {
        let code = e.reason().map(u32::from).map(u64::from).and_then(CloseCode::from_code);
        return Closed::ByPeer {
            code,
            reason: String::new(),
        };
    }
    if e.is_io() {
        if let Some(io) = e.get_io() {
            if io.kind() == io::ErrorKind::ConnectionReset {
                return Closed::Reset;
            }
        }
    }
    Closed::Lost(e.to_string())
}

fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

enum Recv {
    /// The relay's side, before the agent's response head.
    Head(h2::client::ResponseFuture),
    Body(RecvStream),
}

/// One HTTP/2 stream as a byte pipe.
struct H2Stream {
    tx: SendStream<Bytes>,
    rx: Recv,
    buf: Bytes,
    finished: bool,
}

impl H2Stream {
    fn new(tx: SendStream<Bytes>, rx: Recv) -> Self {
        Self {
            tx,
            rx,
            buf: Bytes::new(),
            finished: false,
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        while me.buf.is_empty() {
            match &mut me.rx {
                Recv::Head(head) => match ready!(Pin::new(head).poll(cx)) {
                    Ok(resp) if resp.status().is_success() => me.rx = Recv::Body(resp.into_body()),
                    Ok(resp) => {
                        return Poll::Ready(Err(io::Error::other(format!("stream refused: {}", resp.status()))))
                    }
                    Err(e) => return Poll::Ready(Err(read_error(e))),
                },
                Recv::Body(body) => match ready!(body.poll_data(cx)) {
                    None => return Poll::Ready(Ok(())),
                    Some(Ok(data)) => me.buf = data,
                    Some(Err(e)) => return Poll::Ready(read_error_eof(e)),
                },
            }
        }
        let n = me.buf.len().min(out.remaining());
        out.put_slice(&me.buf[..n]);
        me.buf.advance(n);
        if let Recv::Body(body) = &mut me.rx {
            let _ = body.flow_control().release_capacity(n);
        }
        Poll::Ready(Ok(()))
    }
}

fn read_error(e: h2::Error) -> io::Error {
    if e.reason() == Some(h2::Reason::STREAM_CLOSED) {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    } else {
        h2_io(e)
    }
}

fn read_error_eof(e: h2::Error) -> io::Result<()> {
    match e.reason() {
        Some(h2::Reason::NO_ERROR) => Ok(()),
        _ => Err(read_error(e)),
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // As a dropped QUIC send stream does (quinn finishes it): what was
        // written is delivered, then the end. h2 would otherwise reset the
        // stream, and the peer could lose bytes it had not read yet (a
        // WebSocket's close frame behind a slow reader).
        if !self.finished {
            self.finished = true;
            let _ = self.tx.send_data(Bytes::new(), true);
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let tx = &mut self.tx;
        // Ask for room for this write only; h2 counts it against the
        // windows, so a slow reader pushes back here.
        tx.reserve_capacity(buf.len().min(STREAM_WINDOW as usize));
        loop {
            let room = tx.capacity();
            if room > 0 {
                let n = room.min(buf.len());
                tx.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(tx.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes what was handed to it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.finished {
            self.finished = true;
            self.tx.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The TLS stream, noting when bytes arrive (for the idle timeout).
struct Watched<T> {
    io: T,
    born: Instant,
    last_rx: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_rx.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
