//! Dialing the relay over the configured transport(s), with `auto`'s
//! fallback from QUIC to TLS over TCP; the dialing itself is
//! `keyway_transport::dial`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keyway_proto::ALPN_TUNNEL;
use keyway_transport::dial::{self, DialError};
use keyway_transport::h2::H2Tunnel;
use keyway_transport::quic::QuicTunnel;
use keyway_transport::{TransportKind, Tunnel};
use tracing::{info, warn};

use super::{Uplink, HANDSHAKE_TIMEOUT, KEEPALIVE};
use crate::config::TransportMode;

/// Connects to the relay over the configured transport(s).
pub(crate) async fn connect(ctx: &Uplink) -> Result<Arc<dyn Tunnel>, DialFailed> {
    let one = |e: DialError| DialFailed(vec![e]);
    match ctx.mode {
        TransportMode::Quic => connect_quic(ctx, HANDSHAKE_TIMEOUT).await.map_err(one),
        TransportMode::Tcp => connect_tcp(ctx).await.map_err(one),
        TransportMode::Auto if ctx.udp_blocked.load(Ordering::Relaxed) => match connect_tcp(ctx).await {
            Ok(t) => Ok(t),
            Err(tcp) => connect_quic(ctx, ctx.quic_deadline)
                .await
                .map_err(|quic| DialFailed(vec![tcp, quic])),
        },
        TransportMode::Auto => match connect_quic(ctx, ctx.quic_deadline).await {
            Ok(t) => Ok(t),
            Err(quic) => {
                info!("QUIC failed ({quic}); trying TLS over TCP");
                let t = connect_tcp(ctx).await.map_err(|tcp| DialFailed(vec![quic, tcp]))?;
                // TCP works where QUIC did not: UDP is blocked on this path.
                ctx.udp_blocked.store(true, Ordering::Relaxed);
                warn!(
                    "the relay is reachable over TCP but not over UDP (blocked?); serving over TLS/TCP, \
                     trying QUIC again every {:?}",
                    ctx.quic_probe
                );
                Ok(t)
            }
        },
    }
}

/// Every transport's failure of one connection attempt, in the order tried.
#[derive(Debug)]
pub(crate) struct DialFailed(Vec<DialError>);

impl std::error::Error for DialFailed {}

impl std::fmt::Display for DialFailed {
    /// Each failure, then what to do when a wrong clock explains one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.0.iter().any(DialError::is_clock) {
            write!(f, " ({})", crate::clock::FIX)?;
        }
        Ok(())
    }
}

/// Connects over one transport only (QUIC within the `auto` deadline).
pub(crate) async fn connect_over(ctx: &Uplink, transport: TransportKind) -> Result<Arc<dyn Tunnel>, DialError> {
    match transport {
        TransportKind::Quic => connect_quic(ctx, ctx.quic_deadline).await,
        TransportKind::Tcp => connect_tcp(ctx).await,
    }
}

async fn connect_quic(ctx: &Uplink, deadline: Duration) -> Result<Arc<dyn Tunnel>, DialError> {
    let conn = dial::quic(&ctx.endpoint, &ctx.relay, &ctx.relay_name, deadline).await?;
    Ok(Arc::new(QuicTunnel(conn)))
}

async fn connect_tcp(ctx: &Uplink) -> Result<Arc<dyn Tunnel>, DialError> {
    let alpn = (ALPN_TUNNEL, "Keyway tunnels");
    let (tls, addr) = dial::tls(&ctx.tcp_tls, &ctx.relay_tcp, &ctx.relay_name, alpn, HANDSHAKE_TIMEOUT).await?;
    let tunnel = H2Tunnel::agent(tls, addr, KEEPALIVE)
        .await
        .map_err(|e| DialError::Unreachable {
            addr,
            transport: TransportKind::Tcp,
            detail: format!("HTTP/2 handshake: {e}"),
        })?;
    Ok(Arc::new(tunnel))
}
