//! The event hub: one WebSocket to the console, every subscriber served
//! from it, each event numbered and kept for replay.
//!
//! * [`upstream`] holds the console connection (reconnecting, with ping
//!   liveness) and [`Hub::publish`]es the events it receives; [`frames`]
//!   keeps and passes on the console's other frames (greeting, status,
//!   keep-alives), and stands in with keep-alives while it is down.
//! * [`Hub::subscribe`] registers a subscriber and hands it the buffered
//!   events after its `since` in the same critical section as its
//!   registration, so replay and live events meet without a gap or a
//!   duplicate.
//! * A subscriber's queue is bounded: publishing never waits for anyone;
//!   one that falls behind is cut ([`CUT_TOO_SLOW`]) and can resume.
//! * [`store`] persists the ring on disk from its own thread.
//! * [`serve`] answers the WebSocket upgrades that come through the tunnel.
//! * [`webhooks`] feeds the console's webhook deliveries into the hub.

pub mod frames;
pub mod serve;
pub mod store;
pub mod upstream;
pub mod webhooks;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// WebSocket close code for a subscriber cut because it fell behind.
pub const CUT_TOO_SLOW: u16 = 4008;

/// One event as the hub keeps it.
#[derive(Debug)]
pub struct Event {
    /// Its number within the hub's epoch (1, 2, …).
    pub seq: u64,
    /// When the hub received it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The JSON object text, as the console sent it.
    pub text: Box<str>,
}

/// The hub's settings.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Events kept for replay.
    pub buffer: usize,
    /// Bytes of event text kept for replay (the newest event always is).
    pub max_bytes: u64,
    /// How long events are kept for replay.
    pub retention: Duration,
    /// Events queued per subscriber before it is cut.
    pub queue: usize,
}

/// What a new subscriber starts with.
pub struct Subscription {
    /// Its id, for [`Hub::unsubscribe`].
    pub id: u64,
    /// Buffered events to replay first (empty for plain subscribers).
    pub replay: Vec<Arc<Event>>,
    /// The `since` asked for is older than the buffer: events between it
    /// and the first replayed one are lost.
    pub gap: Option<Gap>,
    /// Live events, in order.
    pub live: mpsc::Receiver<Arc<Event>>,
    /// Cancelled when the subscriber is cut for being too slow.
    pub cut: CancellationToken,
    /// The newest sequence number at registration: live events follow it.
    pub position: u64,
    /// The console's connect-time frames, sent before anything else.
    pub connect_frames: Vec<String>,
    /// The console's keep-alives and status frames from registration on.
    pub frames: tokio::sync::broadcast::Receiver<Arc<str>>,
}

/// Events a resuming subscriber asked for that the hub no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The `since` asked for.
    pub since: u64,
    /// The first event the hub still has (or will have).
    pub first: u64,
}

struct Subscriber {
    tx: mpsc::Sender<Arc<Event>>,
    cut: CancellationToken,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Text bytes of `events`.
    bytes: u64,
    next_seq: u64,
    subscribers: HashMap<u64, Subscriber>,
    next_id: u64,
}

/// The hub. Cheap to share (`Arc`).
pub struct Hub {
    epoch: String,
    opts: HubOptions,
    ring: Mutex<Ring>,
    persist: Option<store::Writer>,
    upstream_live: watch::Sender<bool>,
    frames: frames::Frames,
}

pub use frames::DEFAULT_GREETING;

impl Hub {
    /// A hub starting from `loaded` (events restored from disk) and
    /// persisting to `persist`.
    pub fn new(opts: HubOptions, loaded: store::Loaded, persist: Option<store::Writer>) -> Self {
        let next_seq = loaded.events.back().map_or(loaded.next_seq, |e| e.seq + 1).max(1);
        let bytes = loaded.events.iter().map(|e| e.text.len() as u64).sum();
        Self {
            epoch: loaded.epoch,
            opts,
            ring: Mutex::new(Ring {
                events: loaded.events,
                bytes,
                next_seq,
                subscribers: HashMap::new(),
                next_id: 0,
            }),
            persist,
            upstream_live: watch::channel(false).0,
            frames: frames::Frames::default(),
        }
    }

    /// This install's epoch: sequence numbers are unique within it.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers, keeps and fans out one event. Never waits on a subscriber.
    pub fn publish(&self, text: &str) -> u64 {
        let at_ms = now_ms();
        let mut ring = self.ring();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let event = Arc::new(Event {
            seq,
            at_ms,
            text: text.into(),
        });
        ring.bytes += text.len() as u64;
        ring.events.push_back(event.clone());
        let oldest_kept = at_ms.saturating_sub(self.opts.retention.as_millis() as u64);
        while ring.events.len() > self.opts.buffer
            || (ring.events.len() > 1 && ring.bytes > self.opts.max_bytes)
            || ring.events.front().is_some_and(|e| e.at_ms < oldest_kept)
        {
            if let Some(old) = ring.events.pop_front() {
                ring.bytes -= old.text.len() as u64;
            }
        }
        ring.subscribers.retain(|_, s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.cut.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        drop(ring);
        if let Some(w) = &self.persist {
            w.append(&event);
        }
        seq
    }

    /// Registers a subscriber. With `since`, it first gets every kept event
    /// after that sequence number (all kept ones if `since` is from another
    /// epoch), then live ones.
    pub fn subscribe(&self, since: Option<Since>) -> Subscription {
        let (tx, live) = mpsc::channel(self.opts.queue);
        let cut = CancellationToken::new();
        let mut ring = self.ring();
        let mut replay = Vec::new();
        let mut gap = None;
        if let Some(since) = since {
            let after = if since.epoch.as_deref().is_some_and(|e| e != self.epoch) {
                0
            } else {
                since.seq
            };
            replay.extend(ring.events.iter().filter(|e| e.seq > after).cloned());
            let first = ring.events.front().map_or(ring.next_seq, |e| e.seq);
            let wrong_epoch = after != since.seq;
            // Ahead of the hub: numbers it never handed out in this epoch.
            let ahead = after >= ring.next_seq;
            if wrong_epoch || ahead || (after > 0 && after + 1 < first) {
                gap = Some(Gap {
                    since: since.seq,
                    first: if ahead && !wrong_epoch { ring.next_seq } else { first },
                });
            }
        }
        let id = ring.next_id;
        ring.next_id += 1;
        ring.subscribers.insert(id, Subscriber { tx, cut: cut.clone() });
        Subscription {
            id,
            replay,
            gap,
            live,
            cut,
            position: ring.next_seq - 1,
            connect_frames: self.frames.connect_frames(),
            frames: self.frames.subscribe(),
        }
    }

    /// Forgets a subscriber that went away.
    pub fn unsubscribe(&self, id: u64) {
        self.ring().subscribers.remove(&id);
    }

    /// Subscribers now connected.
    pub fn subscribers(&self) -> usize {
        self.ring().subscribers.len()
    }

    /// The newest sequence number handed out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.ring().next_seq - 1
    }

    /// Whether the console's WebSocket is connected, as it changes.
    pub fn upstream_live(&self) -> watch::Receiver<bool> {
        self.upstream_live.subscribe()
    }

    /// The console's frames that are not events.
    pub fn frames(&self) -> &frames::Frames {
        &self.frames
    }

    pub(crate) fn set_upstream_live(&self, live: bool) {
        self.upstream_live.send_replace(live);
    }
}

/// Where a resuming subscriber left off: `?since=SEQ[&epoch=EPOCH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The last sequence number it received (0: every kept event, no gap).
    pub seq: u64,
    /// The epoch that number belongs to, if the subscriber sent it.
    pub epoch: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize, queue: usize) -> Hub {
        let opts = HubOptions {
            buffer,
            max_bytes: 64 * 1024 * 1024,
            retention: Duration::from_secs(3600),
            queue,
        };
        Hub::new(opts, store::Loaded::fresh("e1".into()), None)
    }

    fn since(seq: u64) -> Option<Since> {
        Some(Since { seq, epoch: None })
    }

    #[test]
    fn replay_then_live_without_gap_or_duplicate() {
        let h = hub(100, 10);
        for i in 0..5 {
            h.publish(&format!("{{\"n\":{i}}}"));
        }
        let mut s = h.subscribe(since(2));
        assert_eq!(s.replay.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(s.gap, None);
        h.publish("{\"n\":5}");
        assert_eq!(s.live.try_recv().unwrap().seq, 6);
        assert!(s.live.try_recv().is_err());
    }

    #[test]
    fn a_since_older_than_the_buffer_is_a_gap() {
        let h = hub(3, 10);
        for _ in 0..10 {
            h.publish("{}");
        }
        let s = h.subscribe(since(2));
        assert_eq!(s.replay.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 9, 10]);
        assert_eq!(s.gap, Some(Gap { since: 2, first: 8 }));
        // Up to date: nothing to replay, no gap.
        let s = h.subscribe(since(10));
        assert!(s.replay.is_empty() && s.gap.is_none());
        // Ahead of the hub: a gap, not a silent wait for numbers it never gave.
        let s = h.subscribe(since(12));
        assert_eq!(s.gap, Some(Gap { since: 12, first: 11 }));
        // Another epoch: everything kept, and a gap.
        let s = h.subscribe(Some(Since {
            seq: 9,
            epoch: Some("old".into()),
        }));
        assert_eq!(s.replay.len(), 3);
        assert_eq!(s.gap, Some(Gap { since: 9, first: 8 }));
    }

    #[test]
    fn a_full_queue_cuts_only_that_subscriber() {
        let h = hub(100, 2);
        let slow = h.subscribe(None);
        let mut fast = h.subscribe(None);
        for i in 0..3 {
            h.publish("{}");
            assert_eq!(fast.live.try_recv().unwrap().seq, i + 1);
        }
        assert!(slow.cut.is_cancelled());
        assert!(!fast.cut.is_cancelled());
        assert_eq!(h.subscribers(), 1);
    }

    #[test]
    fn old_events_expire() {
        let opts = HubOptions {
            buffer: 100,
            max_bytes: 64 * 1024 * 1024,
            retention: Duration::ZERO,
            queue: 10,
        };
        let h = Hub::new(opts, store::Loaded::fresh("e".into()), None);
        h.publish("{}");
        std::thread::sleep(Duration::from_millis(2));
        h.publish("{}");
        let s = h.subscribe(since(0));
        assert_eq!(s.replay.len(), 1, "expired events are not replayed");
    }
}
