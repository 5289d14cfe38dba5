//! Two agents with one identity: a cloned SD card, or an old Pi left running
//! after its replacement was paired with a restored backup.
//!
//! Each dials the relay, and each newer connection replaces the older one,
//! so the two take turns holding the site, every request can land on either,
//! and before this module only a log line said so. A single replacement is
//! normal (an agent restarted before the relay noticed its old connection
//! die); [`FLAPS`] of them within [`WINDOW`] is two agents, and the relay
//! says so where an operator looks: `site list`, and the close reason the
//! displaced agent shows in its `status`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far back replacements are counted.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Replacements within [`WINDOW`] that mean two agents.
pub const FLAPS: usize = 3;

/// Recent replacements, per site.
#[derive(Default)]
pub struct Displacements {
    sites: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Displacements {
    /// Notes that a connection from `new` replaced one from `old` at `now`;
    /// returns what to tell the operator when this is the [`FLAPS`]th
    /// replacement within [`WINDOW`].
    pub fn replaced(&self, site: &str, old: SocketAddr, new: SocketAddr, now: Instant) -> Option<String> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let seen = sites.entry(site.to_string()).or_default();
        seen.push_back(now);
        while seen.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
            seen.pop_front();
        }
        while seen.len() > FLAPS {
            seen.pop_front();
        }
        (seen.len() >= FLAPS).then(|| describe(old, new, seen.len()))
    }

    /// Forgets the site's replacements (its connection has held for a
    /// [`WINDOW`]).
    pub fn settled(&self, site: &str) {
        self.sites.lock().unwrap_or_else(|e| e.into_inner()).remove(site);
    }
}

/// The operator's words for two agents at `a` and `b`.
pub fn describe(a: SocketAddr, b: SocketAddr, times: usize) -> String {
    format!(
        "two agents with one identity, at {a} and {b}, took the site from each other {times} times within {} s: \
         stop one (each machine needs its own pairing code)",
        WINDOW.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_restart_is_not_two_agents_but_a_flap_is() {
        let d = Displacements::default();
        let t = Instant::now();
        assert_eq!(d.replaced("hq", addr(1), addr(2), t), None, "one restart");
        assert_eq!(d.replaced("hq", addr(2), addr(1), t + Duration::from_secs(2)), None);
        let said = d.replaced("hq", addr(1), addr(2), t + Duration::from_secs(4)).unwrap();
        assert!(said.contains("127.0.0.1:1") && said.contains("127.0.0.1:2"), "{said}");
        assert_eq!(d.replaced("other", addr(1), addr(2), t), None, "per site");
        d.settled("hq");
        assert_eq!(d.replaced("hq", addr(1), addr(2), t + Duration::from_secs(5)), None);
    }

    #[test]
    fn replacements_a_window_apart_are_restarts() {
        let d = Displacements::default();
        let t = Instant::now();
        for i in 0..10u64 {
            let at = t + (WINDOW + Duration::from_secs(1)) * i as u32 / 2;
            assert_eq!(d.replaced("hq", addr(1), addr(2), at), None, "replacement {i}");
        }
    }
}
