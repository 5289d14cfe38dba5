//! More than one link (a relay cluster): the first link dials the relay as
//! configured; once a `Welcome` names the cluster's nodes, each further
//! link (`links` in agent.toml, 2 by default) keeps a tunnel to a node no
//! other link uses, so losing one node leaves the site served through the
//! other while the lost link finds another node. A single relay names no
//! nodes, and the agent keeps one link, as always.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyway_transport::TransportKind;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{connect, session, End, Uplink, RECONNECT_CAP, RESTART_RETRY_CAP};
use crate::backoff::Backoff;
use crate::console::ConsoleHealth;

/// A node a link just lost is tried again only after the others, for this long.
const AVOID_FOR: Duration = Duration::from_secs(10);

/// The agent's links: which nodes the cluster has and which each link uses.
pub struct Links {
    /// Links wanted (at least 1).
    pub wanted: usize,
    nodes: watch::Sender<Vec<SocketAddr>>,
    /// Link index → the node it is connected to (or dialling).
    in_use: Mutex<BTreeMap<usize, (SocketAddr, Option<TransportKind>)>>,
    /// Where the first link was last connected: it dials the relay as
    /// configured again, so no other link takes that node even while the
    /// first is down (the relay would let the newer link replace it).
    first: Mutex<Option<SocketAddr>>,
}

impl Links {
    /// `wanted` links (1 for a single relay).
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted: wanted.max(1),
            nodes: watch::channel(Vec::new()).0,
            in_use: Mutex::new(BTreeMap::new()),
            first: Mutex::new(None),
        }
    }

    fn in_use(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, (SocketAddr, Option<TransportKind>)>> {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a `Welcome` said about the cluster's nodes (unparsable entries
    /// are skipped; an empty list from a single relay changes nothing).
    pub fn learn(&self, nodes: &[String]) {
        let parsed: Vec<SocketAddr> = nodes.iter().filter_map(|n| n.parse().ok()).collect();
        if parsed.is_empty() {
            return;
        }
        self.nodes.send_if_modified(|known| {
            let changed = *known != parsed;
            *known = parsed;
            changed
        });
    }

    /// Link `index` is up on `remote`.
    pub fn up(&self, index: usize, remote: SocketAddr, transport: TransportKind) {
        if index == 0 {
            *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(remote);
        }
        self.in_use().insert(index, (remote, Some(transport)));
    }

    /// Link `index` is down.
    pub fn down(&self, index: usize) {
        self.in_use().remove(&index);
    }

    /// Claims, for link `index`, a node no other link uses (a node in
    /// `avoid` only when there is no other).
    fn claim(&self, index: usize, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let nodes = self.nodes.borrow().clone();
        let first = *self.first.lock().unwrap_or_else(|p| p.into_inner());
        let mut in_use = self.in_use();
        let mut taken: Vec<SocketAddr> = in_use
            .iter()
            .filter(|(i, _)| **i != index)
            .map(|(_, (a, _))| *a)
            .collect();
        taken.extend(first.filter(|_| index != 0));
        let free: Vec<SocketAddr> = nodes.into_iter().filter(|n| !taken.contains(n)).collect();
        let pick = free.iter().find(|n| Some(**n) != avoid).or(free.first()).copied()?;
        in_use.insert(index, (pick, None));
        Some(pick)
    }

    /// One line per link, for `status`: `quic 192.0.2.1:443`.
    pub fn describe(&self) -> Vec<String> {
        self.in_use()
            .values()
            .filter_map(|(addr, t)| t.map(|t| format!("{t} {addr}")))
            .collect()
    }
}

/// Runs link `index` (> 0) until `stop`: waits for the cluster's nodes,
/// claims one, serves a tunnel to it, and claims again when it ends.
pub(super) async fn run_extra(
    ctx: Arc<Uplink>,
    index: usize,
    mut console: watch::Receiver<ConsoleHealth>,
    stop: CancellationToken,
) {
    let mut nodes = ctx.links.nodes.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(200), RECONNECT_CAP);
    let mut avoid: Option<(SocketAddr, Instant)> = None;
    loop {
        let avoiding = avoid.filter(|(_, until)| Instant::now() < *until).map(|(a, _)| a);
        let Some(node) = ctx.links.claim(index, avoiding) else {
            // No node free yet (a single relay, or every node taken).
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = nodes.changed() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        let link = ctx.toward(node, index);
        let started = Instant::now();
        let mut next = None;
        let end = loop {
            let dialled = tokio::select! {
                _ = stop.cancelled() => break End::Stopped,
                r = async { match next.take() { Some(t) => Ok(t), None => connect(&link).await } } => r,
            };
            let end = match dialled {
                Ok(tunnel) => session::session(tunnel, &link, &stop, false, &mut console).await,
                Err(e) => End::Reconnect(super::Reconnect::Failed(e.to_string())),
            };
            match end {
                End::Switch(tunnel) => next = Some(tunnel),
                other => break other,
            }
        };
        ctx.links.down(index);
        if matches!(end, End::Stopped) {
            return;
        }
        if started.elapsed() >= Duration::from_secs(60) {
            backoff.reset();
        }
        info!(link = index, %node, "link ended; finding a node for it");
        avoid = Some((node, Instant::now() + AVOID_FOR));
        // Another node is usually there: try it soon; the same one, back off.
        let delay = match end {
            End::Reconnect(super::Reconnect::Now) => Duration::ZERO,
            _ => crate::backoff::jitter(RESTART_RETRY_CAP).max(backoff.next_delay() / 4),
        };
        debug!("link {index}: next try in {delay:?}");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_claims_a_node_no_other_link_uses() {
        let links = Links::new(3);
        assert_eq!(links.claim(1, None), None, "no nodes known: wait");
        links.learn(&["127.0.0.1:1".into(), "127.0.0.2:1".into(), "bad".into()]);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        links.up(0, a, TransportKind::Quic);
        assert_eq!(links.claim(1, None), Some(b));
        assert_eq!(links.claim(2, None), None, "two nodes, two links");
        links.down(0);
        assert_eq!(
            links.claim(2, None),
            None,
            "the first link's node stays its own while it redials"
        );
        links.up(0, a, TransportKind::Quic);
        // Link 1 lost b: with a taken, b is all there is, avoided or not.
        links.down(1);
        assert_eq!(links.claim(1, Some(b)), Some(b));
        links.learn(&["127.0.0.1:1".into(), "127.0.0.2:1".into(), "127.0.0.3:1".into()]);
        links.down(1);
        assert_eq!(links.claim(1, Some(b)), Some("127.0.0.3:1".parse().unwrap()));
        links.up(1, "127.0.0.3:1".parse().unwrap(), TransportKind::Tcp);
        assert_eq!(links.describe(), ["quic 127.0.0.1:1", "tcp 127.0.0.3:1"]);
        links.learn(&[]);
        assert_eq!(
            links.nodes.borrow().len(),
            3,
            "a single relay's empty list changes nothing"
        );
    }
}
