//! The agent's configuration file (`agent.toml`).
//!
//! Relative paths are resolved against the file's folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use http::Uri;
use keyway_certs::{ConsoleTrust, Fingerprint};
use serde::Deserialize;

/// `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The file this config was read from (for a re-pin written there).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The file layout this config and its state folder are in (absent: 1,
    /// as 0.1.0 wrote them); see `state_format`.
    #[serde(default)]
    pub format: Option<u32>,
    /// The relay's QUIC address, `host:port` (re-resolved on every connect).
    pub relay: String,
    /// The name the relay's tunnel certificate is checked against; defaults
    /// to the host part of `relay`.
    #[serde(default)]
    pub relay_name: Option<String>,
    /// PEM certificate of the relay's private CA: the only tunnel trust anchor.
    pub relay_ca: PathBuf,
    /// This agent's certificate (PEM), issued at pairing.
    pub cert: PathBuf,
    /// This agent's private key (PEM, mode 0600). Never leaves the machine.
    pub key: PathBuf,
    /// The console's API base, e.g. `https://192.168.1.10:12445`.
    pub console_url: String,
    /// SHA-256 fingerprint of the console's certificate.
    #[serde(default)]
    pub console_fingerprint: Option<String>,
    /// Accept any console certificate. Off by default; logs a warning.
    #[serde(default)]
    pub console_insecure: bool,
    /// Time allowed to open a connection to the console.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub console_connect_timeout: Duration,
    /// Time allowed for the console's response head.
    #[serde(default = "default_console_timeout", with = "humantime_serde")]
    pub console_timeout: Duration,
    /// How often the console's reachability is checked and reported to the relay.
    #[serde(default = "default_console_check", with = "humantime_serde")]
    pub console_check_interval: Duration,
    /// How to reach the relay: `auto` (QUIC, falling back to TLS over TCP
    /// when UDP is blocked), `quic` or `tcp`.
    #[serde(default)]
    pub transport: TransportMode,
    /// The relay's TLS/TCP address, `host:port`; defaults to `relay` (the
    /// relay serves QUIC on UDP and HTTPS + tunnels on TCP at one port).
    #[serde(default)]
    pub relay_tcp: Option<String>,
    /// Tunnels kept at once, each to a different relay node, when the relay
    /// is a cluster that names its nodes (1 to 4; a single relay gets one).
    #[serde(default = "default_links")]
    pub links: usize,
    /// In `auto`, how long a QUIC handshake may take before TCP is tried.
    #[serde(default = "default_quic_deadline", with = "humantime_serde")]
    pub quic_deadline: Duration,
    /// In `auto` while on TCP, how often QUIC is tried again in the background.
    #[serde(default = "default_quic_probe", with = "humantime_serde")]
    pub quic_probe_interval: Duration,
    /// The console's API token, kept on this machine only (mode 0600, set
    /// with `keyway-agent console-token set`). Defaults to `console-token`
    /// beside the key. With it, the agent's event hub holds the one
    /// WebSocket to the console; without it, each subscriber gets its own.
    #[serde(default)]
    pub console_token_file: Option<PathBuf>,
    /// Serve door-event subscribers from the hub (when a console token is set).
    #[serde(default = "default_true")]
    pub event_hub: bool,
    /// Events the hub keeps for `?since=` replay (also on disk).
    #[serde(default = "default_event_buffer")]
    pub event_buffer: usize,
    /// Bytes of event text the hub keeps for replay, in memory and on disk
    /// (the disk may hold one more segment, an eighth of this, while it
    /// rotates). The newest event is always kept.
    #[serde(default = "default_event_buffer_max_bytes")]
    pub event_buffer_max_bytes: u64,
    /// How long the hub keeps events for replay.
    #[serde(default = "default_event_retention", with = "humantime_serde")]
    pub event_retention: Duration,
    /// Events queued for one subscriber before it is cut as too slow.
    #[serde(default = "default_event_queue")]
    pub event_queue: usize,
    /// How often the hub pings each event subscriber; one silent until the
    /// next ping is closed (a frozen client frees its slot).
    #[serde(default = "default_event_ping", with = "humantime_serde")]
    pub event_ping_interval: Duration,
    /// Where the event buffer is persisted; defaults to `events/` beside the key.
    #[serde(default)]
    pub events_dir: Option<PathBuf>,
    /// Accept the console's own token from integrations (passthrough).
    #[serde(default = "default_true")]
    pub passthrough: bool,
    /// Route policy for passthrough calls: a preset (`full`, `read-only`,
    /// `members-and-visitors`).
    #[serde(default = "default_preset")]
    pub passthrough_policy: String,
    /// Extra allow rules for passthrough calls (`METHOD /path/pattern`).
    #[serde(default)]
    pub passthrough_allow: Vec<crate::access::policy::Rule>,
    /// Extra deny rules for passthrough calls.
    #[serde(default)]
    pub passthrough_deny: Vec<crate::access::policy::Rule>,
    /// Door unlocks and emergency changes per minute, per credential.
    #[serde(default = "default_unlock_per_minute")]
    pub unlock_per_minute: u32,
    /// Door unlocks and emergency changes per minute, for the whole site.
    #[serde(default = "default_unlock_site_per_minute")]
    pub unlock_site_per_minute: u32,
    /// Size at which `audit.log` is rotated (3 older files are kept).
    #[serde(default = "default_audit_max_bytes")]
    pub audit_max_bytes: u64,
    /// Zero-knowledge sites (`keyway-relay site mode NAME agent`): the
    /// certificate chain (PEM) this agent presents for `<site>.<domain>`;
    /// integrations' TLS ends here, not at the relay.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM, kept 0600).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_preset() -> String {
    "full".into()
}
fn default_unlock_per_minute() -> u32 {
    20
}
fn default_unlock_site_per_minute() -> u32 {
    60
}
fn default_audit_max_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_true() -> bool {
    true
}
fn default_event_buffer() -> usize {
    10_000
}
fn default_event_buffer_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_event_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_event_ping() -> Duration {
    crate::hub::serve::DEFAULT_PING_EVERY
}
fn default_event_queue() -> usize {
    1024
}

/// `transport` in `agent.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// QUIC first; TLS over TCP if no QUIC handshake completes in time.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

fn default_links() -> usize {
    2
}
fn default_quic_deadline() -> Duration {
    Duration::from_secs(3)
}
fn default_quic_probe() -> Duration {
    Duration::from_secs(300)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_console_check() -> Duration {
    Duration::from_secs(15)
}
fn default_console_timeout() -> Duration {
    Duration::from_secs(60)
}

impl AgentConfig {
    /// Reads, resolves and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
        let mut cfg: Self = toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        cfg.source = Some(path.to_path_buf());
        crate::state_format::check_config(cfg.format).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.relay_ca, &mut cfg.cert, &mut cfg.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            bail!("invalid config {}: tls_cert and tls_key go together", path.display());
        }
        for p in [
            &mut cfg.console_token_file,
            &mut cfg.events_dir,
            &mut cfg.tls_cert,
            &mut cfg.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.passthrough_policy()
            .with_context(|| format!("invalid config {}", path.display()))?;
        if cfg.unlock_per_minute == 0 || cfg.unlock_site_per_minute == 0 {
            bail!(
                "invalid config {}: unlock_per_minute and unlock_site_per_minute must be at least 1",
                path.display()
            );
        }
        if !(1..=4).contains(&cfg.links) {
            bail!("invalid config {}: links must be 1 to 4", path.display());
        }
        if cfg.event_buffer == 0 || cfg.event_queue == 0 {
            bail!(
                "invalid config {}: event_buffer and event_queue must be at least 1",
                path.display()
            );
        }
        cfg.console_trust()
            .with_context(|| format!("invalid config {}", path.display()))?;
        cfg.console_uri()
            .with_context(|| format!("invalid config {}", path.display()))?;
        crate::state_format::check_state(&cfg.state_dir())?;
        Ok(cfg)
    }

    /// How the console's certificate is trusted.
    pub fn console_trust(&self) -> anyhow::Result<ConsoleTrust> {
        match (&self.console_fingerprint, self.console_insecure) {
            (Some(_), true) => bail!("console_fingerprint and console_insecure: set one, not both"),
            (Some(fp), false) => Ok(ConsoleTrust::Pinned(
                fp.parse::<Fingerprint>().context("console_fingerprint")?,
            )),
            (None, true) => Ok(ConsoleTrust::Insecure),
            (None, false) => bail!(
                "console_fingerprint: missing; pin the console's certificate (its SHA-256 fingerprint) \
                 or set console_insecure = true to skip verification"
            ),
        }
    }

    /// The console base URL, checked.
    pub fn console_uri(&self) -> anyhow::Result<Uri> {
        let uri: Uri = self.console_url.parse().context("console_url")?;
        if uri.scheme_str() != Some("https") || uri.authority().is_none() {
            bail!("console_url: must look like https://HOST:12445");
        }
        Ok(uri)
    }

    /// The passthrough policy: the preset plus the extra rules.
    pub fn passthrough_policy(&self) -> anyhow::Result<crate::access::policy::Policy> {
        let preset = crate::access::policy::Policy::preset(&self.passthrough_policy)
            .map_err(|e| anyhow::anyhow!("passthrough_policy: {e}"))?;
        Ok(preset.with(crate::access::policy::Policy {
            allow: self.passthrough_allow.clone(),
            deny: self.passthrough_deny.clone(),
        }))
    }

    /// Where the console token is (or would be) stored.
    pub fn console_token_path(&self) -> PathBuf {
        self.console_token_file
            .clone()
            .unwrap_or_else(|| self.state_dir().join("console-token"))
    }

    /// Where the event buffer is persisted.
    pub fn events_path(&self) -> PathBuf {
        self.events_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("events"))
    }

    /// The folder holding the agent's key (its state directory).
    pub fn state_dir(&self) -> PathBuf {
        self.key
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The relay's TLS/TCP address.
    pub fn relay_tcp_addr(&self) -> String {
        self.relay_tcp.clone().unwrap_or_else(|| self.relay.clone())
    }

    /// The TLS name for the relay.
    pub fn relay_server_name(&self) -> String {
        self.relay_name.clone().unwrap_or_else(|| {
            let host = self.relay.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.relay);
            host.trim_matches(['[', ']']).to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AgentConfig {
        toml::from_str(
            r#"
            relay = "relay.example.com:443"
            relay_ca = "ca.pem"
            cert = "agent.pem"
            key = "agent.key"
            console_url = "https://192.0.2.10:12445"
            console_fingerprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn trust_requires_exactly_one_choice() {
        let mut c = base();
        assert!(matches!(c.console_trust().unwrap(), ConsoleTrust::Pinned(_)));
        c.console_insecure = true;
        assert!(c.console_trust().unwrap_err().to_string().contains("not both"));
        c.console_fingerprint = None;
        assert_eq!(c.console_trust().unwrap(), ConsoleTrust::Insecure);
        c.console_insecure = false;
        assert!(c.console_trust().unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn names_and_urls() {
        let mut c = base();
        assert_eq!(c.relay_server_name(), "relay.example.com");
        c.relay = "[::1]:4433".into();
        assert_eq!(c.relay_server_name(), "::1");
        c.console_url = "http://192.0.2.10:12445".into();
        assert!(c.console_uri().is_err());
    }
}
