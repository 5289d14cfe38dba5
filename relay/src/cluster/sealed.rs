//! Zero-knowledge sites across nodes: a sealed connection reaching a node
//! without a link for its site goes, still sealed, to a node with one.
//!
//! On a node-to-node stream, before any HTTP, the forwarding node writes
//! the preamble byte [`StreamKind::Sealed`] (never the first byte of an
//! HTTP/1.1 request), the site's name and the client's address (each
//! length-prefixed), then the bytes it has read from the client. The
//! receiving node answers one byte: [`HELD`] once it has opened a sealed
//! stream to its own agent — the rest of the peer stream is then the
//! client's bytes both ways — or [`NOT_HELD_BYTE`] and the end of the
//! stream, when it has no link for the site (the forwarding node tries the
//! next holder, with the bytes it still has).

use std::net::SocketAddr;
use std::sync::Arc;

use keyway_proto::preamble::{encode_client, read_client, StreamKind};
use tokio::io::AsyncReadExt;
use tracing::{debug, info};

use super::Cluster;
use crate::proxy::ProxyCtx;

/// The receiving node holds the site: bytes follow.
const HELD: u8 = 1;
/// The receiving node holds no link for the site.
const NOT_HELD_BYTE: u8 = 0;

/// A node-to-node stream carrying one sealed connection.
pub type SealedPeer = (quinn::RecvStream, quinn::SendStream);

impl Cluster {
    /// A stream to a node holding `site`'s agent, which has taken the
    /// client's address and the bytes `seen` so far; `None` when no node
    /// does (the client's connection is then closed, as on a single relay).
    pub async fn forward_sealed(&self, site: &str, client: SocketAddr, seen: &[u8]) -> Option<SealedPeer> {
        let mut holders = self.holders(site).await;
        holders.sort_by_key(|h| self.quiet(&h.name));
        let mut head = Vec::with_capacity(seen.len() + 2 + site.len() + 48);
        head.push(StreamKind::Sealed.to_byte());
        head.push(site.len() as u8);
        head.extend_from_slice(site.as_bytes());
        head.extend_from_slice(&encode_client(client));
        head.extend_from_slice(seen);
        for holder in &holders {
            let (mut recv, mut send) = match self.open(holder).await {
                Ok((io, _)) => {
                    let (recv, send) = io.into_inner();
                    (recv, send)
                }
                Err(e) => {
                    info!(peer = %holder.name, "could not reach the node holding {site}: {e:#}");
                    self.forget(site, &holder.name);
                    continue;
                }
            };
            if let Err(e) = send.write_all(&head).await {
                debug!(peer = %holder.name, "sealed forward to the node holding {site}: {e}");
                self.forget(site, &holder.name);
                continue;
            }
            match tokio::time::timeout(super::DIAL_TIMEOUT, recv.read_u8()).await {
                Ok(Ok(HELD)) => return Some((recv, send)),
                answer => {
                    debug!(peer = %holder.name, ?answer, "the peer does not hold {site}; trying the next");
                    self.forget(site, &holder.name);
                }
            }
        }
        None
    }
}

/// Serves a sealed connection a peer forwarded (its preamble byte read):
/// to this node's agent for the site, or [`NOT_HELD_BYTE`].
pub(super) async fn serve(mut recv: quinn::RecvStream, mut send: quinn::SendStream, proxy: Arc<ProxyCtx>) {
    let head = async {
        let len = recv.read_u8().await? as usize;
        let mut site = vec![0u8; len];
        AsyncReadExt::read_exact(&mut recv, &mut site).await?;
        let client = read_client(&mut recv).await?;
        Ok::<_, std::io::Error>((String::from_utf8(site).ok(), client))
    };
    let (site, client) = match tokio::time::timeout(super::DIAL_TIMEOUT, head).await {
        Ok(Ok((Some(site), client))) if crate::config::validate_site_name(&site).is_ok() => (site, client),
        other => return debug!(?other, "a peer's sealed stream without a valid head"),
    };
    let agent = match crate::sealed::open_to_agent(&proxy, &site, client, &[]).await {
        Some(stream) => stream,
        None => {
            let _ = send.write_all(&[NOT_HELD_BYTE]).await;
            let _ = send.finish();
            return;
        }
    };
    if send.write_all(&[HELD]).await.is_err() {
        return;
    }
    match crate::sealed::pipe((recv, send), tokio::io::split(agent)).await {
        Ok((up, down)) => debug!(site, up, down, "forwarded sealed connection ended"),
        Err(e) => debug!(site, "forwarded sealed connection ended: {e}"),
    }
}
