//! The console's frames that are not numbered events: its greeting, its
//! `access.base.info` status and its keep-alives.
//!
//! A console sends, on every WebSocket, a greeting (`"Hello"`), then an
//! `access.base.info` event, then the same greeting again every few seconds
//! as a keep-alive; some clients reconnect when the keep-alives stop. The
//! hub stands in for that one connection towards many subscribers, so:
//!
//! * every subscriber starts with the connect-time frames of the hub's
//!   *current* console connection ([`Frames::connect_frames`]), however
//!   long after that connection it joins;
//! * the keep-alives and status frames go to every subscriber as the
//!   console sends them ([`Frames::subscribe`]), untouched and unnumbered;
//! * while the console's socket is down, the hub sends the same keep-alive
//!   at the cadence the console used ([`stand_in`]), so clients stay
//!   connected and pick up again with `?since=`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Hub;

/// The greeting and keep-alive frame, until the console's own was seen (both
/// community clients accept it; see `../shared/unifi/events.md`).
pub const DEFAULT_GREETING: &str = "\"Hello\"";
/// The keep-alive cadence assumed until the console's is measured.
pub const DEFAULT_CADENCE: Duration = Duration::from_secs(5);
/// The cadence measured from the console is held within these bounds.
const CADENCE_BOUNDS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// Frames queued per subscriber; a subscriber that lags loses keep-alives
/// only (a newer one follows), never events.
const QUEUE: usize = 16;
/// The status event a console sends after its greeting.
pub const BASE_INFO: &str = "access.base.info";

/// What one text frame from the console is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// An event: numbered, kept and replayed.
    Event,
    /// The console's status (`access.base.info`): a connect-time frame.
    BaseInfo,
    /// Not a JSON object: the greeting or a keep-alive.
    KeepAlive,
}

/// Classifies a text frame (one JSON parse).
pub fn kind(text: &str) -> Kind {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(default, borrow)]
        event: Option<std::borrow::Cow<'a, str>>,
    }
    if !text.trim_start().starts_with('{') {
        return Kind::KeepAlive;
    }
    match serde_json::from_str::<Named<'_>>(text) {
        Ok(n) if n.event.as_deref() == Some(BASE_INFO) => Kind::BaseInfo,
        Ok(_) => Kind::Event,
        Err(_) => Kind::KeepAlive,
    }
}

struct State {
    greeting: Option<String>,
    base_info: Option<String>,
    keepalive: Option<String>,
    last_keepalive: Option<Instant>,
    cadence: Duration,
}

/// The hub's record of the console's own frames.
pub struct Frames {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<str>>,
}

impl Default for Frames {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                greeting: None,
                base_info: None,
                keepalive: None,
                last_keepalive: None,
                cadence: DEFAULT_CADENCE,
            }),
            tx: broadcast::channel(QUEUE).0,
        }
    }
}

impl Frames {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new console connection: its greeting (if it sent one) replaces the
    /// last connection's frames.
    pub fn connected(&self, greeting: Option<&str>) {
        let mut s = self.state();
        s.greeting = greeting.map(str::to_string);
        s.base_info = None;
        s.last_keepalive = None;
        drop(s);
        if let Some(g) = greeting {
            let _ = self.tx.send(g.into());
        }
    }

    /// A frame that is not an event, passed to every subscriber as it is.
    pub fn received(&self, text: &str, kind: Kind) {
        self.received_at(text, kind, Instant::now());
    }

    fn received_at(&self, text: &str, kind: Kind, now: Instant) {
        let mut s = self.state();
        match kind {
            Kind::BaseInfo => s.base_info = Some(text.to_string()),
            Kind::KeepAlive => {
                if let Some(last) = s.last_keepalive {
                    s.cadence = (now - last).clamp(CADENCE_BOUNDS.0, CADENCE_BOUNDS.1);
                }
                s.last_keepalive = Some(now);
                s.keepalive = Some(text.to_string());
            }
            Kind::Event => return,
        }
        drop(s);
        let _ = self.tx.send(text.into());
    }

    /// What a new subscriber gets first: the current connection's greeting
    /// and status, as the console sent them.
    pub fn connect_frames(&self) -> Vec<String> {
        let s = self.state();
        let greeting = s.greeting.clone().unwrap_or_else(|| DEFAULT_GREETING.to_string());
        std::iter::once(greeting).chain(s.base_info.clone()).collect()
    }

    /// The console's frames from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    /// The keep-alive cadence the console uses (measured), or the default.
    pub fn cadence(&self) -> Duration {
        self.state().cadence
    }

    /// Sends the console's keep-alive frame on its behalf.
    fn stand_in_once(&self) {
        let s = self.state();
        let text = s
            .keepalive
            .clone()
            .or_else(|| s.greeting.clone())
            .unwrap_or_else(|| DEFAULT_GREETING.to_string());
        drop(s);
        let _ = self.tx.send(text.into());
    }
}

/// While the console's socket is down, sends subscribers its keep-alive at
/// its cadence, until `stop`.
pub async fn stand_in(hub: Arc<Hub>, stop: CancellationToken) {
    let mut live = hub.upstream_live();
    loop {
        if *live.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = live.changed() => if r.is_err() { return },
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = live.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(hub.frames().cadence()) => hub.frames().stand_in_once(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart() {
        assert_eq!(kind("{\"event\":\"access.logs.add\",\"data\":{}}"), Kind::Event);
        assert_eq!(kind("{\"event\":\"access.base.info\",\"data\":{}}"), Kind::BaseInfo);
        assert_eq!(kind(" {\"event\": \"access.base.info\"}"), Kind::BaseInfo);
        assert_eq!(kind("{\"no_event_field\":1}"), Kind::Event);
        assert_eq!(kind("\"Hello\""), Kind::KeepAlive);
        assert_eq!(kind("Hello"), Kind::KeepAlive);
        assert_eq!(kind("{broken"), Kind::KeepAlive);
    }

    #[test]
    fn a_new_connection_replaces_the_connect_frames_and_the_cadence_is_learned() {
        let f = Frames::default();
        assert_eq!(f.connect_frames(), [DEFAULT_GREETING]);
        let mut rx = f.subscribe();
        f.connected(Some("Hello"));
        f.received(
            "{\"event\":\"access.base.info\",\"data\":{\"top_log_count\":3}}",
            Kind::BaseInfo,
        );
        assert_eq!(f.connect_frames().len(), 2);
        let t0 = Instant::now();
        f.received_at("Hello", Kind::KeepAlive, t0);
        f.received_at("Hello", Kind::KeepAlive, t0 + Duration::from_secs(3));
        assert_eq!(f.cadence(), Duration::from_secs(3));
        let got: Vec<Arc<str>> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        f.connected(Some("Hi again"));
        assert_eq!(f.connect_frames(), ["Hi again"]);
    }
}
