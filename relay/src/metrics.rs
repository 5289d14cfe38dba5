//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! One registry per process ([`METRICS`]): the relay binary runs one relay.
//! Labels are bounded: `site` is a site of this relay's registry (or `-`
//! when the host named none), `status` an HTTP status, `reason` one of the
//! edge's refusal kinds.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `site`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    /// The site (or `-`).
    pub site: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// `site`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Site {
    /// The site (or `-`).
    pub site: String,
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// Every metric of the relay.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<Request, Counter>,
    /// Seconds to the response head.
    pub duration: Family<Site, Histogram>,
    /// Response body bytes sent to integrations.
    pub response_bytes: Family<Site, Counter>,
    /// Request body bytes received from integrations (declared).
    pub request_bytes: Family<Site, Counter>,
    /// Agents connected now.
    pub agents: Gauge,
    /// Agent connections accepted (first connections and reconnects).
    pub agent_connects: Counter,
    /// WebSockets open now.
    pub websockets: Gauge,
    /// Pairing attempts, and those that failed.
    pub pairing_attempts: Counter,
    /// See `pairing_attempts`.
    pub pairing_failures: Counter,
    /// Requests refused at the edge, by reason.
    pub refused: Family<Reason, Counter>,
    /// Request streams opened into tunnels (requests not counted here
    /// reused a pooled one).
    pub tunnel_streams: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("keyway_relay");
    let m = Metrics {
        requests: Family::default(),
        duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        response_bytes: Family::default(),
        request_bytes: Family::default(),
        agents: Gauge::default(),
        agent_connects: Counter::default(),
        websockets: Gauge::default(),
        pairing_attempts: Counter::default(),
        pairing_failures: Counter::default(),
        refused: Family::default(),
        tunnel_streams: Counter::default(),
        registry: Registry::default(),
    };
    registry.register("requests", "Requests answered, by site and status", m.requests.clone());
    registry.register(
        "request_duration_seconds",
        "Time from the request to the response head, by site",
        m.duration.clone(),
    );
    registry.register(
        "response_bytes",
        "Response body bytes sent, by site",
        m.response_bytes.clone(),
    );
    registry.register(
        "request_bytes",
        "Request body bytes received (as declared), by site",
        m.request_bytes.clone(),
    );
    registry.register("agents_connected", "Agents connected now", m.agents.clone());
    registry.register(
        "agent_connects",
        "Agent connections accepted (reconnects included)",
        m.agent_connects.clone(),
    );
    registry.register("websockets_active", "WebSockets open now", m.websockets.clone());
    registry.register("pairing_attempts", "Pairing attempts", m.pairing_attempts.clone());
    registry.register(
        "pairing_failures",
        "Pairing attempts that failed",
        m.pairing_failures.clone(),
    );
    registry.register(
        "edge_refused",
        "Requests refused at the edge (rate, concurrency, size, allow-list), by reason",
        m.refused.clone(),
    );
    registry.register(
        "tunnel_streams_opened",
        "Request streams opened into agent tunnels (the other requests reused a pooled stream)",
        m.tunnel_streams.clone(),
    );
    Metrics { registry, ..m }
});

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The `site` label value.
pub fn site(s: Option<&str>) -> Site {
    Site {
        site: s.unwrap_or("-").to_string(),
    }
}
