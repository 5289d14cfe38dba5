//! The QUIC transport (quinn).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use keyway_proto::CloseCode;

use crate::{BoxFut, Closed, TransportKind, Tunnel, TunnelStream};

/// How often each end asks the other to acknowledge, with QUIC's ACK
/// frequency extension (both ends must offer it, or neither uses it).
///
/// By default a QUIC receiver acknowledges every second packet at once. The
/// agent writes a proxied response as its head and then its body, so even a
/// small GET's response is often two packets, and the relay answered each
/// with an ACK-only datagram: a send on the relay, a wake-up and receive
/// calls on the agent, for an ACK the next request could carry. Asking for
/// an immediate ACK only after 8 unacknowledged packets (or after the
/// peer's max ACK delay, 25 ms) leaves ACKs to ride on data; packets that
/// arrive out of order past quinn's reordering threshold still get one at
/// once, so loss is still noticed promptly. `transport/tests/ack_frequency.rs`
/// counts the datagrams.
pub fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(8));
    ack
}

/// The QUIC settings both ends of a tunnel share: the idle timeout that
/// notices a dead path, no unidirectional streams, flow-control windows
/// (4 MB a stream and 16 MB a connection: about 100 MB/s a stream at 40 ms
/// RTT), and ACK frequency, which works only when both ends offer it. Each end adds its keep-alive
/// interval and how many streams its peer may open.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        keyway_proto::IDLE_TIMEOUT
            .try_into()
            .expect("the idle timeout fits QUIC's varint"),
    ));
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((4u32 * 1024 * 1024).into());
    t.receive_window((16u32 * 1024 * 1024).into());
    t.send_window(16 * 1024 * 1024);
    t.ack_frequency_config(Some(ack_frequency()));
    t
}

/// A tunnel over a QUIC connection.
#[derive(Clone, Debug)]
pub struct QuicTunnel(pub quinn::Connection);

impl QuicTunnel {
    async fn bi(conn: &quinn::Connection, open: bool) -> io::Result<TunnelStream> {
        let (send, recv) = if open {
            conn.open_bi().await
        } else {
            conn.accept_bi().await
        }
        .map_err(io::Error::other)?;
        Ok(TunnelStream::new(send.id().index(), tokio::io::join(recv, send)))
    }
}

impl Tunnel for QuicTunnel {
    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    fn rtt(&self) -> Duration {
        self.0.rtt()
    }

    fn open_control(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(Self::bi(&self.0, true))
    }

    fn accept_control(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(Self::bi(&self.0, false))
    }

    fn open(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(Self::bi(&self.0, true))
    }

    fn accept(&self) -> BoxFut<'_, io::Result<TunnelStream>> {
        Box::pin(Self::bi(&self.0, false))
    }

    fn close(&self, code: CloseCode, reason: &str) {
        self.0.close(code.code().into(), reason.as_bytes());
    }

    fn closed(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            self.0.closed().await;
        })
    }

    fn heard(&self) -> u64 {
        self.0.stats().udp_rx.datagrams
    }

    fn close_reason(&self) -> Option<Closed> {
        Some(match self.0.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(c) => Closed::ByPeer {
                code: CloseCode::from_code(c.error_code.into_inner()),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            quinn::ConnectionError::Reset => Closed::Reset,
            quinn::ConnectionError::LocallyClosed => Closed::Locally,
            e => Closed::Lost(e.to_string()),
        })
    }
}
