//! Percentiles, medians and spread.

use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Latency {
    /// From samples (any order).
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        Self {
            n: samples.len(),
            p50_ms: ms(percentile(samples, 0.50)),
            p99_ms: ms(percentile(samples, 0.99)),
            p999_ms: ms(percentile(samples, 0.999)),
        }
    }
}

/// The `q` quantile of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// [percentile, ms] points of sorted samples, dense in the tail.
pub fn curve(sorted: &[Duration]) -> Vec<[f64; 2]> {
    let mut qs: Vec<f64> = (1..=95).map(f64::from).collect();
    qs.extend([96.0, 97.0, 98.0, 99.0, 99.5, 99.9]);
    qs.into_iter().map(|q| [q, ms(percentile(sorted, q / 100.0))]).collect()
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and spread (min, max) of per-round values.
#[derive(Debug, Clone, Serialize)]
pub struct Rounds {
    /// Median over rounds.
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
    /// Every round.
    pub rounds: Vec<f64>,
}

impl Rounds {
    /// From per-round values.
    pub fn of(values: Vec<f64>) -> Self {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
            rounds: values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let mut s: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let l = Latency::of(&mut s);
        assert_eq!((l.p50_ms, l.p99_ms, l.p999_ms), (500.0, 990.0, 999.0));
        assert_eq!(Rounds::of(vec![3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Rounds::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Latency::of(&mut []).p50_ms, 0.0);
    }
}
