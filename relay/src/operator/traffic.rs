//! Per-site traffic for the console: requests, 5xx answers and latency in
//! 15-minute buckets over the last 24 hours, and the latest errors by
//! envelope code. Kept in this node's memory (a restart starts again) and
//! bounded: 96 buckets and 20 errors per site, sites of the registry only.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde::Serialize;

/// The bucket width, seconds.
pub const BUCKET: i64 = 900;
/// Buckets kept: 24 hours.
pub const BUCKETS: usize = 96;
/// Errors kept per site.
const RECENT_ERRORS: usize = 20;

/// One 15-minute slice of a site's traffic.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Bucket {
    /// Its first second (unix).
    pub start: i64,
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Sum of times to the response head, milliseconds.
    pub latency_ms_sum: u64,
}

/// A recent failed request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecentError {
    /// Unix seconds.
    pub at: i64,
    /// The status answered.
    pub status: u16,
    /// The envelope code when the relay answered it, or what the status says.
    pub code: String,
}

#[derive(Default)]
struct SiteTraffic {
    buckets: VecDeque<Bucket>,
    errors: VecDeque<RecentError>,
}

/// All sites' traffic on this node.
#[derive(Default)]
pub struct Traffic {
    by_site: Mutex<HashMap<String, SiteTraffic>>,
}

/// This process's traffic.
pub static TRAFFIC: LazyLock<Traffic> = LazyLock::new(Traffic::default);

impl Traffic {
    /// Counts one answered request of `site` at `now` (unix seconds). An
    /// error (4xx from the relay's edge, any 5xx) is remembered with its
    /// envelope `code` when the relay made the answer.
    pub fn record(&self, site: &str, status: u16, took: Duration, code: Option<&str>, now: i64) {
        let start = now - now.rem_euclid(BUCKET);
        let mut all = self.by_site.lock().unwrap_or_else(|p| p.into_inner());
        let t = match all.get_mut(site) {
            Some(t) => t,
            None => all.entry(site.to_string()).or_default(),
        };
        if t.buckets.back().is_none_or(|b| b.start != start) {
            t.buckets.push_back(Bucket {
                start,
                ..Bucket::default()
            });
            while t.buckets.len() > BUCKETS {
                t.buckets.pop_front();
            }
        }
        let b = t.buckets.back_mut().expect("pushed above");
        b.requests += 1;
        b.latency_ms_sum += took.as_millis() as u64;
        if status >= 500 {
            b.errors += 1;
        }
        if status >= 500 || code.is_some() {
            t.errors.push_back(RecentError {
                at: now,
                status,
                code: code.map_or_else(|| format!("HTTP {status} from the console"), str::to_string),
            });
            while t.errors.len() > RECENT_ERRORS {
                t.errors.pop_front();
            }
        }
    }

    /// Requests and 5xx answers of `site` in the hour before `now`.
    pub fn last_hour(&self, site: &str, now: i64) -> (u64, u64) {
        let all = self.by_site.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = all.get(site) else { return (0, 0) };
        t.buckets
            .iter()
            .filter(|b| b.start + BUCKET > now - 3600)
            .fold((0, 0), |(r, e), b| (r + b.requests, e + b.errors))
    }

    /// The 96 buckets of the 24 hours before `now`, oldest first, empty
    /// ones included.
    pub fn day(&self, site: &str, now: i64) -> Vec<Bucket> {
        let last = now - now.rem_euclid(BUCKET);
        let all = self.by_site.lock().unwrap_or_else(|p| p.into_inner());
        let kept: HashMap<i64, Bucket> = all
            .get(site)
            .map(|t| t.buckets.iter().map(|b| (b.start, *b)).collect())
            .unwrap_or_default();
        (0..BUCKETS as i64)
            .rev()
            .map(|k| {
                let start = last - k * BUCKET;
                kept.get(&start).copied().unwrap_or(Bucket {
                    start,
                    ..Bucket::default()
                })
            })
            .collect()
    }

    /// The latest errors of `site`, newest first.
    pub fn recent_errors(&self, site: &str) -> Vec<RecentError> {
        let all = self.by_site.lock().unwrap_or_else(|p| p.into_inner());
        all.get(site)
            .map(|t| t.errors.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_roll_and_stay_bounded() {
        let t = Traffic::default();
        let ms = Duration::from_millis;
        let day0 = 1_000 * BUCKET;
        t.record("hq", 200, ms(10), None, day0);
        t.record("hq", 502, ms(30), Some("CODE_KEYWAY_TUNNEL_FAILED"), day0 + 5);
        t.record("hq", 503, ms(1), None, day0 + BUCKET);
        t.record("hq", 429, ms(0), Some("CODE_KEYWAY_RATE_LIMITED"), day0 + BUCKET);
        assert_eq!(t.last_hour("hq", day0 + BUCKET), (4, 2));
        assert_eq!(t.last_hour("annex", day0), (0, 0));
        let day = t.day("hq", day0 + BUCKET + 1);
        assert_eq!(day.len(), BUCKETS);
        assert_eq!(
            day[BUCKETS - 2],
            Bucket {
                start: day0,
                requests: 2,
                errors: 1,
                latency_ms_sum: 40
            }
        );
        assert_eq!(day[BUCKETS - 1].requests, 2);
        let errors = t.recent_errors("hq");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].code, "CODE_KEYWAY_RATE_LIMITED");
        assert_eq!(errors[1].code, "HTTP 503 from the console");
        // A day and more later: old buckets fall out, the hour is empty.
        for k in 0..200 {
            t.record("hq", 200, ms(1), None, day0 + k * BUCKET);
        }
        assert!(t.by_site.lock().unwrap()["hq"].buckets.len() <= BUCKETS);
        assert_eq!(t.last_hour("hq", day0 + 400 * BUCKET), (0, 0));
        for _ in 0..100 {
            t.record("hq", 500, ms(1), None, day0);
        }
        assert_eq!(t.recent_errors("hq").len(), RECENT_ERRORS);
    }
}
