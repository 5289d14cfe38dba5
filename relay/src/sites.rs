//! The relay's in-memory view of the registry's sites, kept fresh.
//!
//! Requests and agent connections consult this cache, never the database.
//! A watcher notices commits from other processes (the admin CLI) through
//! SQLite's `data_version` every [`POLL`], reloads, and closes the tunnel of
//! any agent whose certificate is no longer the site's current one: that is
//! how `site revoke` takes effect on a running relay within a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyway_proto::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agents::AgentTable;
use crate::limits::Overrides;
use crate::registry::Registry;

/// How often the registry is checked for outside changes.
pub const POLL: Duration = Duration::from_millis(500);

/// What the relay keeps of one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    /// Serial of its current certificate (if paired).
    serial: Option<String>,
    /// Its limits set in the registry (`site limits`).
    limits: Overrides,
    /// Zero-knowledge: its TLS ends at the agent.
    sealed: bool,
}

/// Every site by name, as the registry last said.
#[derive(Clone, Default)]
pub struct SiteCache {
    inner: Arc<RwLock<HashMap<String, Entry>>>,
    /// Bumped when any site's registry limits change (the edge follows it).
    limits_version: Arc<AtomicU64>,
    /// The same, for those who wait on it (links tell their agents).
    limits_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped when the set of names changes (the ACME task follows it).
    names_version: Arc<tokio::sync::watch::Sender<u64>>,
    /// One reload at a time, read and write together: two racing reloads
    /// (the watcher's poll and a pairing's) could otherwise store the older
    /// read last, and a freshly paired agent would be refused as revoked,
    /// or its new tunnel closed by `enforce`.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl SiteCache {
    /// Whether the site exists.
    pub fn contains(&self, site: &str) -> bool {
        self.inner.read().expect("site cache lock poisoned").contains_key(site)
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.inner.read().expect("site cache lock poisoned").len()
    }

    /// Whether there are no sites.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every site's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .read()
            .expect("site cache lock poisoned")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The site's current certificate serial.
    pub fn current_serial(&self, site: &str) -> Option<String> {
        self.inner
            .read()
            .expect("site cache lock poisoned")
            .get(site)
            .and_then(|e| e.serial.clone())
    }

    /// The site's limits set in the registry (none set: empty).
    pub fn limits(&self, site: &str) -> Overrides {
        self.inner
            .read()
            .expect("site cache lock poisoned")
            .get(site)
            .map(|e| e.limits.clone())
            .unwrap_or_default()
    }

    /// Whether the site is zero-knowledge (`site mode NAME agent`): its
    /// connections go to the agent sealed, routed by SNI.
    pub fn is_sealed(&self, site: &str) -> bool {
        self.inner
            .read()
            .expect("site cache lock poisoned")
            .get(site)
            .is_some_and(|e| e.sealed)
    }

    /// Changes whenever some site's registry limits change.
    pub fn limits_version(&self) -> u64 {
        self.limits_version.load(Ordering::Acquire)
    }

    /// Changes whenever some site's registry limits change.
    pub fn limits_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.limits_changes.subscribe()
    }

    /// A cache holding these unpaired sites (tests).
    pub fn with_sites<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let map = names.into_iter().map(|n| (n.to_string(), Entry::default())).collect();
        Self {
            inner: Arc::new(RwLock::new(map)),
            ..Default::default()
        }
    }

    /// Changes whenever a site is added or removed.
    pub fn names_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.names_version.subscribe()
    }

    /// Reloads from the registry.
    pub async fn reload(&self, registry: &Registry) -> Result<(), crate::registry::RegistryError> {
        let _one_at_a_time = self.reloading.lock().await;
        let sites = registry.call(|s| s.list_sites()).await?;
        let map: HashMap<_, _> = sites
            .into_iter()
            .map(|s| {
                let entry = Entry {
                    serial: s.cert_serial,
                    limits: s.limits,
                    sealed: s.terminate == crate::registry::Terminate::Agent,
                };
                (s.name, entry)
            })
            .collect();
        let (renamed, limits_changed) = {
            let mut inner = self.inner.write().expect("site cache lock poisoned");
            let renamed = inner.len() != map.len() || map.keys().any(|k| !inner.contains_key(k));
            let limits_changed = renamed
                || map
                    .iter()
                    .any(|(k, e)| inner.get(k).map_or(!e.limits.is_empty(), |old| old.limits != e.limits));
            *inner = map;
            (renamed, limits_changed)
        };
        if limits_changed {
            self.limits_version.fetch_add(1, Ordering::AcqRel);
            self.limits_changes.send_modify(|v| *v += 1);
        }
        if renamed {
            self.names_version.send_modify(|v| *v += 1);
        }
        Ok(())
    }
}

/// Keeps `cache` in step with the registry and enforces revocations, until `stop`.
pub async fn watch(registry: Registry, cache: SiteCache, agents: AgentTable, stop: CancellationToken) {
    let mut seen = None;
    loop {
        match registry.call(|s| s.data_version()).await {
            Ok(v) if Some(v) != seen => {
                seen = Some(v);
                match cache.reload(&registry).await {
                    Ok(()) => enforce(&cache, &agents),
                    // An outage is logged once, by the registry.
                    Err(e) if e.is_unavailable() => seen = None,
                    Err(e) => warn!("could not reload sites: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) if e.is_unavailable() => {}
            Err(e) => warn!("could not check the registry: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Closes live tunnels whose certificate is no longer current.
pub fn enforce(cache: &SiteCache, agents: &AgentTable) {
    for (site, link) in agents.all() {
        if cache.current_serial(&site).as_deref() != Some(link.serial.as_str()) {
            info!(site, "certificate revoked or superseded: closing the tunnel");
            link.conn.close(CloseCode::Revoked, "certificate revoked");
            agents.remove_if(&site, link.id);
        }
    }
}
