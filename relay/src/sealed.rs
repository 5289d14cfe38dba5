//! Zero-knowledge sites (`site mode NAME agent`): the relay reads a
//! connection's ClientHello with rustls' own acceptor, and when its SNI
//! names such a site, hands the connection to the site's agent unopened —
//! a tunnel stream marked [`StreamKind::Sealed`], the client's address,
//! the bytes read so far, then bytes both ways until either side ends.
//! The agent terminates the TLS with its own key; the relay never holds a
//! request, a header or a token of that site.
//!
//! What needs no plaintext stays here: the site's allow-list, its rates
//! and concurrency (one connection counts as one request), the
//! per-address connection cap and the handshake deadline at accept.

use std::net::SocketAddr;
use std::sync::Arc;

use keyway_proto::preamble::{encode_client, StreamKind};
use keyway_transport::TunnelStream;
use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::metrics::METRICS;
use crate::proxy::ProxyCtx;

/// The most bytes read looking for a whole ClientHello.
const MAX_HELLO_BYTES: usize = 64 * 1024;

/// Reads until rustls has a whole ClientHello; returns it with every byte
/// read (to replay to the agent of a zero-knowledge site).
pub async fn read_client_hello(tcp: &mut TcpStream) -> std::io::Result<(Accepted, Vec<u8>)> {
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > MAX_HELLO_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        let mut fed = &buf[..n];
        while !fed.is_empty() {
            acceptor.read_tls(&mut fed)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted, seen)),
            Ok(None) => continue,
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write(&mut out);
                let _ = tcp.write_all(&out).await;
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// The zero-knowledge site the SNI names, if it names one.
pub fn sealed_site(sni: Option<&str>, ctx: &ProxyCtx) -> Option<String> {
    let host = sni?.trim_end_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(ctx.domain.as_str())?.strip_suffix('.')?;
    ctx.sites.is_sealed(label).then(|| label.to_string())
}

/// Carries a zero-knowledge site's connection to its agent: the edge's
/// checks, a sealed stream, then bytes both ways.
pub async fn route(tcp: TcpStream, seen: Vec<u8>, site: String, peer: SocketAddr, ctx: Arc<ProxyCtx>) {
    let admitted = match ctx.edge.admit_connection(&site, peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            // Without the TLS there is no envelope to send: the client sees
            // the connection close.
            return debug!(site, ?refusal, "sealed connection refused at the edge");
        }
    };
    let piped = match open_to_agent(&ctx, &site, peer, &seen).await {
        Some(stream) => pipe(tcp.into_split(), tokio::io::split(stream)).await,
        // Another node of the cluster may hold the site's agent.
        None => match ctx.cluster.as_ref() {
            Some(cluster) => match cluster.forward_sealed(&site, peer, &seen).await {
                Some(peer_stream) => pipe(tcp.into_split(), peer_stream).await,
                None => return debug!(site, "sealed connection for a site no node holds: closed"),
            },
            None => return debug!(site, "sealed connection for a site with no agent link: closed"),
        },
    };
    match piped {
        Ok((up, down)) => debug!(site, up, down, "sealed connection ended"),
        Err(e) => debug!(site, "sealed connection ended: {e}"),
    }
    drop(admitted);
}

/// A sealed stream to this node's agent for `site`, its preamble (kind,
/// client address) and the client's bytes `seen` so far written; `None`
/// when this node holds no link for it.
pub(crate) async fn open_to_agent(ctx: &ProxyCtx, site: &str, client: SocketAddr, seen: &[u8]) -> Option<TunnelStream> {
    let link = ctx.agents.get(site)?;
    let mut stream = match link.conn.open().await {
        Ok(s) => s,
        Err(e) => {
            debug!(site, "could not open a sealed stream: {e}");
            return None;
        }
    };
    METRICS.tunnel_streams.inc();
    let mut head = Vec::with_capacity(seen.len() + 66);
    head.push(StreamKind::Sealed.to_byte());
    head.extend_from_slice(&encode_client(client));
    head.extend_from_slice(seen);
    if let Err(e) = stream.write_all(&head).await {
        debug!(site, "sealed stream: {e}");
        return None;
    }
    Some(stream)
}

/// Copies bytes both ways until the agent's side ends. A client's
/// half-close goes on to the agent, which may still answer; once the agent
/// has finished, the connection is over (its TLS with it) and the client's
/// socket closes, whatever the client still holds open: a byte pipe that
/// waited for the client too would keep the tunnel busy for nothing.
/// Returns the bytes carried up (as far as counted) and down.
pub(crate) async fn pipe<CR, CW, AR, AW>(client: (CR, CW), agent: (AR, AW)) -> std::io::Result<(u64, u64)>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
{
    let (mut client_rx, mut client_tx) = client;
    let (mut agent_rx, mut agent_tx) = agent;
    let up = async {
        let n = tokio::io::copy(&mut client_rx, &mut agent_tx).await?;
        agent_tx.shutdown().await?;
        Ok::<_, std::io::Error>(n)
    };
    let down = async {
        let n = tokio::io::copy(&mut agent_rx, &mut client_tx).await?;
        client_tx.shutdown().await?;
        Ok::<_, std::io::Error>(n)
    };
    tokio::pin!(up, down);
    tokio::select! {
        d = &mut down => Ok((0, d?)),
        u = &mut up => {
            // The agent may stop reading (its server closing the connection
            // after the response under way): what it still sends goes on.
            let u = u.unwrap_or_else(|e| {
                debug!("client to agent ended: {e}");
                0
            });
            Ok((u, down.await?))
        }
    }
}
