//! Request bodies sent without a declared length, read whole at the edge.
//!
//! A body with `Content-Length` is checked against `max_body_bytes` before
//! anything enters a tunnel, then streams. A chunked body (or an HTTP/2 body
//! without `content-length`) has no size until it ends: forwarded as it
//! came, its request head would reach the agent, its audit log and the
//! console before the relay could find it too large. So the relay reads such
//! a body whole first, up to `max_chunked_body_bytes` (1 MiB by default),
//! and forwards it with a `Content-Length`; a longer one is refused with 411
//! (send a length) or 413 (over `max_body_bytes`) and never enters the
//! tunnel. A budget ([`BUDGET`] at the relay, less on a Pi) bounds the
//! memory all such bodies hold at once; past it a request gets 429 and
//! `Retry-After: 1`. An agent terminating a zero-knowledge site's TLS does
//! the same before the console sees the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;

/// Bytes of undeclared-length bodies a relay holds at once, all sites.
pub const BUDGET: u64 = 64 * 1024 * 1024;

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum Refused {
    /// Longer than the site reads whole (and within `max_body_bytes`):
    /// the client must declare its length.
    NeedsLength(u64),
    /// Longer than `max_body_bytes`.
    TooLarge(u64),
    /// The relay-wide budget is spent.
    Busy,
    /// Malformed, cut off, or too slow.
    Bad(String),
}

/// The memory held by bodies being read whole, process-wide, and its budget.
#[derive(Debug)]
pub struct Held {
    now: AtomicU64,
    budget: u64,
}

impl Default for Held {
    fn default() -> Self {
        Self::with_budget(BUDGET)
    }
}

/// A share of the budget, given back on drop.
#[derive(Debug)]
pub struct Share<'a> {
    held: &'a Held,
    bytes: u64,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.held.now.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Held {
    /// Nothing held yet; at most `budget` bytes at once.
    pub fn with_budget(budget: u64) -> Self {
        Self {
            now: AtomicU64::new(0),
            budget,
        }
    }

    fn grow(&self, share: &mut Share<'_>, by: u64) -> bool {
        let before = self.now.fetch_add(by, Ordering::AcqRel);
        share.bytes += by;
        before + by <= self.budget
    }

    /// Bytes held now (for tests and metrics).
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

/// Reads `body` whole: at most `whole_max` bytes (and never more than
/// `body_max`), within `deadline`.
pub async fn read<B>(
    mut body: B,
    whole_max: u64,
    body_max: u64,
    held: &Held,
    deadline: Duration,
) -> Result<(Bytes, Share<'_>), Refused>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut share = Share { held, bytes: 0 };
    let mut buf = BytesMut::new();
    let work = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Refused::Bad(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            let len = (buf.len() + data.len()) as u64;
            if len > body_max {
                return Err(Refused::TooLarge(body_max));
            }
            if len > whole_max {
                return Err(Refused::NeedsLength(whole_max));
            }
            if !held.grow(&mut share, data.len() as u64) {
                return Err(Refused::Busy);
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(())) => Ok((buf.freeze(), share)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Refused::Bad(format!(
            "the request body did not arrive within {}",
            humantime::format_duration(deadline)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_given_back() {
        let held = Held::default();
        {
            let mut a = Share { held: &held, bytes: 0 };
            assert!(held.grow(&mut a, BUDGET - 1));
            let mut b = Share { held: &held, bytes: 0 };
            assert!(!held.grow(&mut b, 2), "over the budget");
            assert_eq!(held.now(), BUDGET + 1);
        }
        assert_eq!(held.now(), 0);
    }
}
