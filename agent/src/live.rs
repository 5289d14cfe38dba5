//! What the running agent knows about itself, for `status`: the tunnel in
//! use (for its round-trip time), whether the console answers, and requests
//! and errors per minute over the last hour.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyway_transport::Tunnel;

use crate::console::ConsoleHealth;

/// Shared by the tunnel sessions, the request path and the status socket.
pub struct Live {
    tunnel: Mutex<Option<Arc<dyn Tunnel>>>,
    /// The console's last check (none yet: `None`).
    console: Mutex<Option<ConsoleHealth>>,
    minutes: Mutex<[Minute; 60]>,
    /// When the relay last gave the site to another connection.
    displaced: Mutex<VecDeque<Instant>>,
}

/// How far back displacements count towards [`Live::duplicate`].
pub const DISPLACED_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    at: u64,
    requests: u64,
    errors: u64,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            tunnel: Mutex::default(),
            console: Mutex::new(None),
            minutes: Mutex::new([Minute::default(); 60]),
            displaced: Mutex::default(),
        }
    }
}

impl Live {
    /// The tunnel now serving, or none.
    pub fn set_tunnel(&self, tunnel: Option<Arc<dyn Tunnel>>) {
        *self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = tunnel;
    }

    /// The serving tunnel's smoothed round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.tunnel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|t| t.rtt())
    }

    /// Notes that the relay gave the site to another connection (`by`, the
    /// relay's words, name its address); returns the reason to show.
    pub fn displaced(&self, by: String) -> String {
        let mut seen = self.displaced.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        seen.push_back(now);
        seen.retain(|t| now.duration_since(*t) <= DISPLACED_WINDOW);
        drop(seen);
        let by = if by.is_empty() {
            "replaced by a newer connection for this site".into()
        } else {
            by
        };
        match self.duplicate() {
            Some(d) => format!("{by}: {d}"),
            None => format!("{by} (a restart of this agent, or a second agent with its identity?)"),
        }
    }

    /// When the relay gave the site away twice within [`DISPLACED_WINDOW`]:
    /// another agent with this identity is running; what to do about it.
    pub fn duplicate(&self) -> Option<String> {
        let mut seen = self.displaced.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        seen.retain(|t| now.duration_since(*t) <= DISPLACED_WINDOW);
        (seen.len() >= 2).then(|| {
            format!(
                "another agent with this identity took the site from this one {} times in {} s: \
                 stop one of them (each machine needs its own pairing)",
                seen.len(),
                DISPLACED_WINDOW.as_secs()
            )
        })
    }

    /// Records the console's last check.
    pub fn set_console(&self, health: ConsoleHealth) {
        *self.console.lock().unwrap_or_else(|e| e.into_inner()) = Some(health);
    }

    /// The console's last check, once there was one.
    pub fn console(&self) -> Option<ConsoleHealth> {
        *self.console.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the console answered its last check.
    pub fn console_ok(&self) -> Option<bool> {
        self.console().map(|h| h.is_ok())
    }

    /// Counts one answered request; 5xx statuses count as errors.
    pub fn record(&self, status: u16) {
        self.record_at(minute_now(), status);
    }

    fn record_at(&self, minute: u64, status: u16) {
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut minutes[(minute % 60) as usize];
        if slot.at != minute {
            *slot = Minute {
                at: minute,
                ..Minute::default()
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(status >= 500);
    }

    /// Requests and errors in the last 60 minutes.
    pub fn last_hour(&self) -> (u64, u64) {
        self.last_hour_at(minute_now())
    }

    fn last_hour_at(&self, now: u64) -> (u64, u64) {
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        minutes
            .iter()
            .filter(|m| m.requests > 0 && now.saturating_sub(m.at) < 60)
            .fold((0, 0), |(r, e), m| (r + m.requests, e + m.errors))
    }
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_hour_and_forgets_older_minutes() {
        let live = Live::default();
        live.record_at(1000, 200);
        live.record_at(1000, 502);
        live.record_at(1030, 404);
        assert_eq!(live.last_hour_at(1030), (3, 1));
        // Minute 1060 reuses minute 1000's slot; 1000 is an hour old.
        live.record_at(1060, 200);
        assert_eq!(live.last_hour_at(1060), (2, 0));
        assert_eq!(live.last_hour_at(1200), (0, 0));
        assert_eq!(live.console_ok(), None);
        live.set_console(crate::console::ConsoleHealth::Unreachable);
        assert_eq!(live.console_ok(), Some(false));
        assert_eq!(live.rtt(), None);
    }
}
