//! The edge's limits: what an integration may send the relay before any of
//! it reaches a tunnel. The checks themselves are `keyway_proto::edge`'s
//! (an agent terminating a zero-knowledge site's TLS applies them too);
//! this module reads them from relay.toml and the registry and keeps each
//! site's state.
//!
//! `[limits]` in `relay.toml` sets them for every site; `[limits.sites.NAME]`
//! overrides any of them for one site, and the registry's per-site values
//! (`keyway-relay site limits`, or the console) override both, taking
//! effect on every running relay within a second. Each refusal is the console's
//! envelope with its own code: 403 (client address not allowed), 413 (body),
//! 429 with `Retry-After` (rate or concurrency), 431 (headers).
//!
//! Rates are token buckets (`governor`): `*_rate` requests per second
//! refilled, `*_burst` at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use keyway_proto::edge::whole::Held;
use keyway_proto::edge::{checked, quota, take, SiteEdge};
use serde::{Deserialize, Serialize};

use crate::sites::SiteCache;

/// `[limits]`: every field optional; unset ones take the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The relay-wide values.
    #[serde(flatten)]
    pub all: Overrides,
    /// Per-site overrides.
    #[serde(default)]
    pub sites: HashMap<String, Overrides>,
}

/// One set of (partial) limit values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Total bytes of request header names and values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Request header fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    /// Request body bytes (uploads). Responses are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Bytes of a body sent without a declared length (chunked) that the
    /// relay reads whole before forwarding; a longer one gets 411.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunked_body_bytes: Option<u64>,
    /// Requests under way at once for a site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<usize>,
    /// WebSockets open at once for a site (their own budget: they never
    /// spend `max_concurrent_requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_websockets: Option<usize>,
    /// WebSockets open at once for a site from one client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_websockets_per_client: Option<usize>,
    /// Requests per second for a site (refill), and its burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_rate: Option<u32>,
    /// See `site_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_burst: Option<u32>,
    /// Requests per second from one client address, and its burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rate: Option<u32>,
    /// See `client_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_burst: Option<u32>,
    /// Client addresses allowed (CIDRs); empty or unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<IpNet>>,
}

pub use keyway_proto::edge::{Admitted, BodyLimits, Limits, Refusal, Slot};

/// Calls `$m!` with every limit's name: one list for merging, reading and
/// setting them by name.
macro_rules! each_limit {
    ($m:ident) => {
        $m!(
            max_header_bytes,
            max_headers,
            max_body_bytes,
            max_chunked_body_bytes,
            max_concurrent_requests,
            max_websockets,
            max_websockets_per_client,
            site_rate,
            site_burst,
            client_rate,
            client_burst,
            allow
        )
    };
}

/// Every limit's name and what it bounds, in the order the console and
/// `site limits` show them.
pub const FIELDS: &[(&str, &str)] = &[
    ("max_header_bytes", "bytes of request header names and values"),
    ("max_headers", "request header fields"),
    ("max_body_bytes", "request body bytes"),
    (
        "max_chunked_body_bytes",
        "bytes of a body without a declared length, read whole",
    ),
    ("max_concurrent_requests", "requests under way at once"),
    ("max_websockets", "WebSockets open at once"),
    (
        "max_websockets_per_client",
        "WebSockets open at once from one client address",
    ),
    ("site_rate", "requests per second for the site"),
    ("site_burst", "requests at once above the site's rate"),
    ("client_rate", "requests per second from one client address"),
    ("client_burst", "requests at once above a client's rate"),
    ("allow", "client addresses allowed (CIDRs, comma-separated; empty: any)"),
];

/// A limit's value as text, and back.
trait LimitValue: Sized {
    fn parse_limit(text: &str) -> anyhow::Result<Self>;
    fn show(&self) -> String;
}

macro_rules! number_limit {
    ($($t:ty),*) => {$(
        impl LimitValue for $t {
            fn parse_limit(text: &str) -> anyhow::Result<Self> {
                text.replace('_', "")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{text:?} is not a whole number from 0 to {}", <$t>::MAX))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
number_limit!(usize, u64, u32);

impl LimitValue for Vec<IpNet> {
    fn parse_limit(text: &str) -> anyhow::Result<Self> {
        text.split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("{t:?} is not an address or a CIDR (203.0.113.0/24, 2001:db8::/32)"))
            })
            .collect()
    }
    fn show(&self) -> String {
        if self.is_empty() {
            return "any".into();
        }
        self.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
    }
}

impl Overrides {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These values with `over`'s set ones on top.
    pub fn merged(&self, over: &Overrides) -> Overrides {
        let mut out = self.clone();
        macro_rules! merge {
            ($($f:ident),*) => { $( if over.$f.is_some() { out.$f = over.$f.clone(); } )* };
        }
        each_limit!(merge);
        out
    }

    /// The value set for `field`, as text (`None`: not set here).
    pub fn get(&self, field: &str) -> Option<String> {
        macro_rules! get {
            ($($f:ident),*) => { match field { $( stringify!($f) => self.$f.as_ref().map(LimitValue::show), )* _ => None } };
        }
        each_limit!(get)
    }

    /// Sets `field` from text; an empty value unsets it (the relay's value
    /// applies again). The error names the field and what it takes.
    pub fn set(&mut self, field: &str, value: &str) -> anyhow::Result<()> {
        let value = value.trim();
        macro_rules! set {
            ($($f:ident),*) => {
                match field {
                    $( stringify!($f) => {
                        self.$f = if value.is_empty() {
                            None
                        } else {
                            Some(LimitValue::parse_limit(value).map_err(|e| anyhow::anyhow!("{field}: {e}"))?)
                        };
                    } )*
                    _ => {
                        let names: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                        anyhow::bail!("no limit called {field:?}; the limits are {}", names.join(", "))
                    }
                }
            };
        }
        each_limit!(set);
        Ok(())
    }
}

/// Reading and overriding [`Limits`] by name (relay.toml, the registry).
pub trait LimitsExt: Sized {
    /// These limits with `o`'s set values on top.
    fn with(self, o: &Overrides) -> Self;
    /// The value of `field`, as text.
    fn get(&self, field: &str) -> Option<String>;
}

impl LimitsExt for Limits {
    fn with(mut self, o: &Overrides) -> Self {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = o.$f.clone() { self.$f = v; } )* };
        }
        each_limit!(set);
        self
    }

    fn get(&self, field: &str) -> Option<String> {
        macro_rules! get {
            ($($f:ident),*) => { match field { $( stringify!($f) => Some(self.$f.show()), )* _ => None } };
        }
        each_limit!(get)
    }
}

impl LimitsConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, o) in std::iter::once(("limits", &self.all)).chain(self.sites.iter().map(|(k, v)| (k.as_str(), v))) {
            let l = Limits::default().with(&self.all).with(o);
            for (field, v) in [
                ("max_headers", l.max_headers as u64),
                ("max_header_bytes", l.max_header_bytes as u64),
                ("max_body_bytes", l.max_body_bytes),
                ("max_chunked_body_bytes", l.max_chunked_body_bytes),
                ("max_concurrent_requests", l.max_concurrent_requests as u64),
                ("max_websockets", l.max_websockets as u64),
                ("max_websockets_per_client", l.max_websockets_per_client as u64),
                ("site_rate", l.site_rate.into()),
                ("site_burst", l.site_burst.into()),
                ("client_rate", l.client_rate.into()),
                ("client_burst", l.client_burst.into()),
            ] {
                anyhow::ensure!(v > 0, "[{name}] {field}: must be at least 1");
            }
            anyhow::ensure!(
                l.max_header_bytes <= keyway_proto::MAX_HEADER_BYTES_CEILING,
                "[{name}] max_header_bytes: at most {} (what an agent buffers for a request head)",
                keyway_proto::MAX_HEADER_BYTES_CEILING
            );
        }
        Ok(())
    }

    /// The limits of `site` as `relay.toml` sets them.
    pub fn for_site(&self, site: &str) -> Limits {
        self.for_site_with(site, &Overrides::default())
    }

    /// The limits of `site` with the registry's values for it on top.
    pub fn for_site_with(&self, site: &str, registry: &Overrides) -> Limits {
        let base = Limits::default().with(&self.all);
        let base = match self.sites.get(site) {
            Some(o) => base.with(o),
            None => base,
        };
        base.with(registry)
    }

    /// Where `site`'s value of `field` comes from: `site` (the registry),
    /// `relay.toml`, or `default`.
    pub fn source(&self, site: &str, registry: &Overrides, field: &str) -> &'static str {
        if registry.get(field).is_some() {
            "site"
        } else if self.sites.get(site).and_then(|o| o.get(field)).is_some() || self.all.get(field).is_some() {
            "relay.toml"
        } else {
            "default"
        }
    }

    /// Checks `site`'s limits with `registry` on top of this file's.
    pub fn validate_with(&self, site: &str, registry: &Overrides) -> anyhow::Result<()> {
        let mut check = self.clone();
        let file = check.sites.remove(site).unwrap_or_default();
        check.sites.insert(site.to_string(), file.merged(registry));
        check.validate()
    }
}

/// The relay's own timeouts (relay.toml's top level), one for every site.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `request_timeout`.
    pub request: Duration,
    /// `websocket_ping_interval`.
    pub websocket_ping: Duration,
    /// `header_read_timeout`.
    pub header_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            request: l.request_timeout,
            websocket_ping: l.websocket_ping,
            header_read: l.header_read_timeout,
        }
    }
}

/// The live state behind the limits: buckets and counters.
pub struct Edge {
    config: LimitsConfig,
    /// The registry's per-site values, when this edge follows them.
    registry: Option<SiteCache>,
    sites: Mutex<HashMap<String, Arc<SiteState>>>,
    /// `request_timeout`, `websocket_ping_interval` and
    /// `header_read_timeout`, which go with the limits to an agent that
    /// answers its site's requests itself.
    timeouts: Timeouts,
    /// Memory held by bodies being read whole, all sites.
    pub held: Held,
}

struct SiteState {
    edge: SiteEdge,
    /// The registry limits version these limits were computed at.
    version: u64,
    /// A zero-knowledge site's connections (see [`Edge::admit_connection`]).
    conn_bucket: DefaultDirectRateLimiter,
    conn_clients: DefaultKeyedRateLimiter<IpAddr>,
    connections: Arc<AtomicUsize>,
}

impl SiteState {
    /// Connections a zero-knowledge site may have open at once: each
    /// carries one request or one WebSocket at a time, so more can only
    /// wait; twice that leaves room for clients' idle keep-alive pools.
    fn max_connections(l: &Limits) -> usize {
        l.max_concurrent_requests
            .saturating_add(l.max_websockets)
            .saturating_mul(2)
    }

    fn new(edge: SiteEdge, version: u64, connections: Arc<AtomicUsize>) -> Self {
        // New connections at twice the request rates: a client that opens
        // one per request meets the agent's 429, which it can read, before
        // the relay's close, which it cannot.
        let l = edge.limits();
        let twice = |n: u32| n.saturating_mul(2);
        Self {
            conn_bucket: RateLimiter::direct(quota(twice(l.site_rate), twice(l.site_burst))),
            conn_clients: RateLimiter::keyed(quota(twice(l.client_rate), twice(l.client_burst))),
            connections,
            edge,
            version,
        }
    }
}

impl Edge {
    /// Limits from the config (validated by the config loader).
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            registry: None,
            sites: Mutex::new(HashMap::new()),
            timeouts: Timeouts::default(),
            held: Default::default(),
        }
    }

    /// The relay's timeouts, part of every site's limits.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Also applies the registry's per-site limits as `sites` holds them,
    /// from the first request after they change.
    pub fn following(mut self, sites: SiteCache) -> Self {
        self.registry = Some(sites);
        self
    }

    fn site(&self, site: &str) -> Arc<SiteState> {
        let version = self.registry.as_ref().map_or(0, SiteCache::limits_version);
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let old = sites.get(site);
        if let Some(s) = old.filter(|s| s.version == version) {
            return s.clone();
        }
        let limits = self.limits(site);
        // A change keeps what is under way (see `SiteEdge::after`).
        let state = match old {
            Some(old) => SiteState::new(SiteEdge::after(&old.edge, limits), version, old.connections.clone()),
            None => SiteState::new(SiteEdge::new(limits), version, Arc::default()),
        };
        let state = Arc::new(state);
        sites.insert(site.to_string(), state.clone());
        state
    }

    /// The limits of `site` now: relay.toml's, with the registry's on top.
    pub fn limits(&self, site: &str) -> Limits {
        let overrides = self.registry.as_ref().map(|c| c.limits(site)).unwrap_or_default();
        Limits {
            request_timeout: self.timeouts.request,
            websocket_ping: self.timeouts.websocket_ping,
            header_read_timeout: self.timeouts.header_read,
            ..self.config.for_site_with(site, &overrides)
        }
    }

    /// The checks before a request is forwarded to `site` (see
    /// [`SiteEdge::admit`]). On success, the request's slots and body limits.
    pub fn admit_request(
        &self,
        site: &str,
        client: IpAddr,
        headers: &HeaderMap,
        websocket: bool,
    ) -> Result<Admitted, Refusal> {
        self.site(site).edge.admit(client, headers, websocket)
    }

    /// The checks on a connection to a zero-knowledge site, whose requests
    /// the relay cannot read (its agent applies [`Edge::admit_request`]'s
    /// checks to each): the allow-list, new connections per second from
    /// the client and to the site, connections open at once. The slot is
    /// held while the connection is.
    pub fn admit_connection(&self, site: &str, client: IpAddr) -> Result<Slot, Refusal> {
        let s = self.site(site);
        let l = s.edge.limits();
        let client = client.to_canonical();
        if !l.allows(client) {
            return Err(Refusal::NotAllowed);
        }
        checked(s.conn_clients.check_key(&client), "this client address")?;
        checked(s.conn_bucket.check(), "this site")?;
        take(&s.connections, SiteState::max_connections(l)).ok_or(Refusal::Busy("connections"))
    }

    /// The body limits of `site` (for a request another node admitted).
    pub fn body_limits(&self, site: &str) -> BodyLimits {
        self.site(site).edge.body_limits()
    }

    /// Forgets idle client buckets (call now and then: they are per address).
    pub fn forget_idle(&self) {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        for s in sites.values() {
            s.edge.forget_idle();
            s.conn_clients.retain_recent();
            s.conn_clients.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(toml_text: &str) -> Edge {
        let cfg: LimitsConfig = toml::from_str(toml_text).unwrap();
        cfg.validate().unwrap();
        Edge::new(cfg)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

    #[test]
    fn per_site_overrides_apply_to_that_site_only() {
        let c: LimitsConfig = toml::from_str("max_body_bytes = 10\n[sites.hq]\nmax_body_bytes = 99\n").unwrap();
        assert_eq!(c.for_site("hq").max_body_bytes, 99);
        assert_eq!(c.for_site("other").max_body_bytes, 10);
        assert_eq!(c.for_site("other").max_headers, Limits::default().max_headers);
        let bad: LimitsConfig = toml::from_str("[sites.hq]\nsite_rate = 0\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("site_rate"));
    }

    #[test]
    fn slots_are_given_back() {
        let e = edge("max_concurrent_requests = 1");
        let h = HeaderMap::new();
        let slot = e.admit_request("hq", IP, &h, false).unwrap();
        assert_eq!(
            e.admit_request("hq", IP, &h, false).unwrap_err(),
            Refusal::Busy("requests")
        );
        drop(slot);
        assert!(e.admit_request("hq", IP, &h, false).is_ok());
    }

    #[test]
    fn websockets_have_their_own_budget_and_a_per_client_one() {
        let e = edge("max_concurrent_requests = 1\nmax_websockets = 3\nmax_websockets_per_client = 2");
        let h = HeaderMap::new();
        let ws: Vec<_> = (0..2).map(|_| e.admit_request("hq", IP, &h, true).unwrap()).collect();
        assert_eq!(
            e.admit_request("hq", IP, &h, true).unwrap_err(),
            Refusal::Busy("WebSockets from this client address")
        );
        let other = e.admit_request("hq", "127.0.0.8".parse().unwrap(), &h, true).unwrap();
        assert_eq!(
            e.admit_request("hq", "127.0.0.9".parse().unwrap(), &h, true)
                .unwrap_err(),
            Refusal::Busy("WebSockets")
        );
        // Requests have their whole budget still.
        assert!(e.admit_request("hq", IP, &h, false).is_ok());
        drop((ws, other));
        assert!(e.admit_request("hq", IP, &h, true).is_ok());
    }

    #[test]
    fn buckets_refuse_with_a_retry_time() {
        let e = edge("client_rate = 1\nclient_burst = 2");
        let h = HeaderMap::new();
        assert!(e.admit_request("hq", IP, &h, false).is_ok());
        assert!(e.admit_request("hq", IP, &h, false).is_ok());
        match e.admit_request("hq", IP, &h, false) {
            Err(Refusal::Rate { retry_after, .. }) => assert!((1..=1).contains(&retry_after)),
            other => panic!("{other:?}"),
        }
        // Another address has its own bucket.
        assert!(e.admit_request("hq", "127.0.0.8".parse().unwrap(), &h, false).is_ok());
    }

    #[test]
    fn allow_list_matches_cidrs_and_mapped_addresses() {
        let e = edge("allow = [\"127.0.0.0/30\", \"::1/128\"]");
        let h = HeaderMap::new();
        assert!(e.admit_request("hq", "127.0.0.2".parse().unwrap(), &h, false).is_ok());
        assert!(e
            .admit_request("hq", "::ffff:127.0.0.1".parse().unwrap(), &h, false)
            .is_ok());
        assert_eq!(e.admit_request("hq", IP, &h, false).unwrap_err(), Refusal::NotAllowed);
    }

    #[test]
    fn limits_are_set_by_name_from_text() {
        let mut o = Overrides::default();
        o.set("site_rate", " 1_000 ").unwrap();
        o.set("allow", "203.0.113.0/24, 2001:db8::1 10.0.0.0/8").unwrap();
        assert_eq!(o.site_rate, Some(1000));
        assert_eq!(o.get("allow").unwrap(), "203.0.113.0/24, 2001:db8::1/128, 10.0.0.0/8");
        for (field, value, says) in [
            ("site_rate", "-1", "site_rate: \"-1\" is not a whole number"),
            ("max_body_bytes", "lots", "max_body_bytes:"),
            ("allow", "example.com", "\"example.com\" is not an address or a CIDR"),
            (
                "speed",
                "1",
                "no limit called \"speed\"; the limits are max_header_bytes,",
            ),
        ] {
            let err = o.clone().set(field, value).unwrap_err().to_string();
            assert!(err.contains(says), "{field}={value}: {err}");
        }
        o.set("site_rate", "").unwrap();
        assert_eq!((o.site_rate, o.get("site_rate")), (None, None));
        assert_eq!(FIELDS.len(), 12);
        for (field, _) in FIELDS {
            assert!(Limits::default().get(field).is_some(), "{field}");
            assert!(Overrides::default().set(field, "").is_ok(), "{field}");
        }
        let merged = Overrides {
            site_burst: Some(3),
            ..Default::default()
        }
        .merged(&o);
        assert_eq!(
            (merged.site_burst, merged.allow.as_ref().map(Vec::len)),
            (Some(3), Some(3))
        );
    }

    #[test]
    fn registry_values_win_and_say_where_they_come_from() {
        let c: LimitsConfig = toml::from_str("site_rate = 10\n[sites.hq]\nsite_burst = 20\n").unwrap();
        let mut reg = Overrides::default();
        reg.set("client_rate", "5").unwrap();
        let l = c.for_site_with("hq", &reg);
        assert_eq!((l.site_rate, l.site_burst, l.client_rate), (10, 20, 5));
        assert_eq!(c.source("hq", &reg, "client_rate"), "site");
        assert_eq!(c.source("hq", &reg, "site_burst"), "relay.toml");
        assert_eq!(c.source("hq", &reg, "site_rate"), "relay.toml");
        assert_eq!(c.source("hq", &reg, "max_headers"), "default");
        reg.set("site_rate", "0").unwrap();
        assert!(c
            .validate_with("hq", &reg)
            .unwrap_err()
            .to_string()
            .contains("[hq] site_rate"));
    }

    /// A change in the registry reaches a live edge on the next request,
    /// and what is under way keeps its slot.
    #[tokio::test]
    async fn an_edge_follows_the_registry_without_losing_open_slots() {
        let dir = tempfile::tempdir().unwrap();
        let registry = crate::registry::Registry::open(&dir.path().join("r.db")).unwrap();
        registry.blocking().add_site("hq", 0).unwrap();
        let sites = SiteCache::default();
        sites.reload(&registry).await.unwrap();
        let e = Edge::new(toml::from_str("max_concurrent_requests = 2").unwrap()).following(sites.clone());
        let h = HeaderMap::new();
        let held = e.admit_request("hq", IP, &h, false).unwrap();

        let mut o = Overrides::default();
        o.set("max_concurrent_requests", "1").unwrap();
        o.set("allow", "127.0.0.8").unwrap();
        let json = crate::registry::limits_json(&o);
        registry.blocking().set_limits("hq", json.as_deref()).unwrap();
        sites.reload(&registry).await.unwrap();
        assert_eq!(e.admit_request("hq", IP, &h, false).unwrap_err(), Refusal::NotAllowed);
        let other: IpAddr = "127.0.0.8".parse().unwrap();
        assert_eq!(
            e.admit_request("hq", other, &h, false).unwrap_err(),
            Refusal::Busy("requests"),
            "the open request still counts"
        );
        drop(held);
        assert!(e.admit_request("hq", other, &h, false).is_ok());

        registry.blocking().set_limits("hq", None).unwrap();
        sites.reload(&registry).await.unwrap();
        assert!(e.admit_request("hq", IP, &h, false).is_ok(), "back to relay.toml's");
    }
}
