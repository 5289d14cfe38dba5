//! The table of live agent connections, one per site.
//!
//! Readers (every proxied request) take a short read lock to clone an `Arc`;
//! writers (connect, disconnect) are rare. A newer connection for a site
//! replaces the older one at once, so requests always go to the newest link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One connected agent.
#[derive(Clone, Debug)]
pub struct AgentLink {
    /// Unique per connection, so a late disconnect cannot remove a newer link.
    pub id: u64,
    /// The tunnel to the agent (QUIC or TLS/TCP).
    pub conn: Arc<dyn keyway_transport::Tunnel>,
    /// Serial of the agent's certificate (checked against revocations).
    pub serial: String,
    /// The agent's software version from `Hello`.
    pub agent_version: String,
    /// When it connected.
    pub since: SystemTime,
    /// Cancelled to make the control task send `Drain` to this agent.
    pub drain: CancellationToken,
    /// Idle request streams to this agent, ready for the next request.
    pub pool: Arc<crate::streams::StreamPool>,
    /// The agent's event hub as it last reported it (none: no hub, or an
    /// agent too old to say).
    pub hub: Arc<std::sync::Mutex<Option<keyway_proto::control::HubReport>>>,
}

impl AgentLink {
    /// The event hub's last report.
    pub fn hub_report(&self) -> Option<keyway_proto::control::HubReport> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Live agents by site, with a change counter to wait on.
#[derive(Clone, Default)]
pub struct AgentTable {
    inner: Arc<RwLock<HashMap<String, Arc<AgentLink>>>>,
    changes: Arc<watch::Sender<u64>>,
    next_id: Arc<AtomicU64>,
    /// Recent replacements, to tell two agents with one identity apart
    /// from a restart.
    pub displacements: Arc<crate::duplicates::Displacements>,
}

impl AgentTable {
    /// A fresh id for a new link.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The live link of `site`, if any.
    pub fn get(&self, site: &str) -> Option<Arc<AgentLink>> {
        self.inner.read().expect("agent table lock poisoned").get(site).cloned()
    }

    /// Whether `site` has a live agent.
    pub fn is_online(&self, site: &str) -> bool {
        self.get(site).is_some()
    }

    /// Installs `link` for `site`; returns the link it replaced.
    pub fn insert(&self, site: &str, link: AgentLink) -> Option<Arc<AgentLink>> {
        let old = self
            .inner
            .write()
            .expect("agent table lock poisoned")
            .insert(site.to_string(), Arc::new(link));
        self.changes.send_modify(|n| *n += 1);
        old
    }

    /// Removes `site`'s link only if it is still the one with `id`.
    pub fn remove_if(&self, site: &str, id: u64) {
        let mut map = self.inner.write().expect("agent table lock poisoned");
        if map.get(site).is_some_and(|l| l.id == id) {
            map.remove(site);
            drop(map);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// All live links (for drain and status).
    pub fn all(&self) -> Vec<(String, Arc<AgentLink>)> {
        let map = self.inner.read().expect("agent table lock poisoned");
        map.iter().map(|(s, l)| (s.clone(), l.clone())).collect()
    }

    /// A receiver that changes whenever a link comes or goes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until `pred` holds for the table (tests, sandbox readiness).
    pub async fn wait_until(&self, mut pred: impl FnMut(&Self) -> bool) {
        let mut rx = self.subscribe();
        loop {
            if pred(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
