//! The relay's configuration file (`relay.toml`).
//!
//! Relative paths are resolved against the file's folder, so a relay folder
//! made by the sandbox or by `init` can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// `relay.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The public domain: sites are reached at `<site>.<domain>`.
    pub domain: String,
    /// Public HTTPS listener for integrations (TCP).
    #[serde(default = "default_listen")]
    pub https_listen: SocketAddr,
    /// QUIC listener for agents (UDP).
    #[serde(default = "default_listen")]
    pub quic_listen: SocketAddr,
    /// Admin listener (`/healthz`, `/metrics`, the operator's console);
    /// off when absent. Keep it on loopback, or set `admin_tls`.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Serve the admin listener over TLS with the relay's public
    /// certificate (files or ACME), to reach the console from elsewhere
    /// than the relay itself.
    #[serde(default)]
    pub admin_tls: bool,
    /// PEM certificate chain of the public HTTPS front; re-read on SIGHUP
    /// (`systemctl reload keyway-relay`). Absent with `[acme]`.
    #[serde(default)]
    pub https_cert: Option<PathBuf>,
    /// PEM private key of the public HTTPS front.
    #[serde(default)]
    pub https_key: Option<PathBuf>,
    /// `[acme]`: automatic certificates instead of `https_cert`/`https_key`.
    #[serde(default)]
    pub acme: Option<crate::acme::AcmeConfig>,
    /// PEM certificate of the private tunnel CA (agents' certificates chain to it).
    pub tunnel_ca: PathBuf,
    /// PEM certificate the relay presents to agents (signed by the tunnel CA).
    pub tunnel_cert: PathBuf,
    /// PEM private key for `tunnel_cert`.
    pub tunnel_key: PathBuf,
    /// PEM private key of the tunnel CA (signs agents' certificates at pairing).
    pub tunnel_ca_key: PathBuf,
    /// The site registry: a SQLite file (`registry = "registry.db"`), or a
    /// PostgreSQL database several relays share (`[registry] url = …`).
    #[serde(default = "default_registry")]
    pub registry: RegistryLocation,
    /// How long a pairing code stays valid.
    #[serde(default = "default_code_ttl", with = "humantime_serde")]
    pub pairing_code_ttl: Duration,
    /// Attempts after which a pairing code is burned.
    #[serde(default = "default_max_tries")]
    pub pairing_max_tries: u32,
    /// Site served when the `Host` is the bare domain or an IP address.
    #[serde(default)]
    pub default_site: Option<String>,
    /// How long to wait for a response head through the tunnel.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A WebSocket client (event subscriber) silent this long is pinged; one
    /// still silent an interval later is closed (4009).
    #[serde(default = "default_websocket_ping", with = "humantime_serde")]
    pub websocket_ping_interval: Duration,
    /// How long an integration may take to send its request headers.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections open at once from one client address (any site); past
    /// it, a new connection is closed at accept.
    #[serde(default = "default_connections_per_client")]
    pub max_connections_per_client: usize,
    /// `[limits]`: the edge's limits, with `[limits.sites.NAME]` overrides.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// A folder holding an apt repository (`packaging/build-repo.sh --out`),
    /// served read-only at `https://<domain>/apt/` so Pis fetch updates from
    /// the relay they already trust. Off when absent.
    #[serde(default)]
    pub apt_repository: Option<PathBuf>,
    /// `[cluster]`: this relay is one node of several sharing a PostgreSQL
    /// registry; requests for a site whose agent is on another node are
    /// forwarded there. Off when absent.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:443".parse().expect("constant address")
}
/// Where the site registry lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RegistryLocation {
    /// A SQLite file: one relay, nothing else to run (the default).
    File(PathBuf),
    /// A PostgreSQL database, by URL (`postgres://user:password@host/db`).
    Database {
        /// The connection URL (or libpq `key=value` string).
        url: String,
        /// TLS to the database, verifying its certificate against this CA
        /// (PEM). Absent: a plain connection (a private network or a
        /// local socket).
        #[serde(default)]
        tls_ca_file: Option<PathBuf>,
    },
}

impl RegistryLocation {
    /// Whether several relays can share it (PostgreSQL): then it also
    /// holds what a single relay keeps in files (the ACME state).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Database { .. })
    }
}

impl std::fmt::Display for RegistryLocation {
    /// The file, or the database URL with its password hidden (logs and
    /// errors name the registry; they never show the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Database { url, .. } => f.write_str(&redact_password(url)),
        }
    }
}

/// `url` with any password replaced by `***`: the `user:password@` of a
/// URL, or a `password=…` of a libpq string.
pub fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn default_registry() -> RegistryLocation {
    RegistryLocation::File(PathBuf::from("registry.db"))
}
fn default_code_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max_tries() -> u32 {
    5
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(65)
}
fn default_websocket_ping() -> Duration {
    crate::upgrade::DEFAULT_PING_EVERY
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_connections_per_client() -> usize {
    1024
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl RelayConfig {
    /// Reads, resolves and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
        let mut cfg: Self = toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (state_dir, ca_file) = match cfg.acme.as_mut() {
            Some(a) => (Some(&mut a.state_dir), a.ca_file.as_mut()),
            None => (None, None),
        };
        let optional = [
            cfg.https_cert.as_mut(),
            cfg.https_key.as_mut(),
            state_dir,
            ca_file,
            cfg.apt_repository.as_mut(),
        ];
        for p in [
            &mut cfg.tunnel_ca,
            &mut cfg.tunnel_cert,
            &mut cfg.tunnel_key,
            &mut cfg.tunnel_ca_key,
        ]
        .into_iter()
        .chain(optional.into_iter().flatten())
        .chain(match &mut cfg.registry {
            RegistryLocation::File(p) => Some(p),
            RegistryLocation::Database { tls_ca_file, .. } => tls_ca_file.as_mut(),
        }) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&mut self) -> anyhow::Result<()> {
        self.domain = self.domain.trim_end_matches('.').to_ascii_lowercase();
        if self.domain.is_empty() {
            bail!("domain: must not be empty");
        }
        if let Some(d) = &mut self.default_site {
            *d = d.to_ascii_lowercase();
            validate_site_name(d).context("default_site")?;
        }
        self.limits.validate()?;
        match (&self.https_cert, &self.https_key, &self.acme) {
            (Some(_), Some(_), None) => {}
            (None, None, Some(acme)) => acme.validate()?,
            (_, _, Some(_)) => bail!("https_cert/https_key and [acme] exclude each other: choose files or ACME"),
            (None, None, None) => bail!("no public certificate: set https_cert and https_key, or configure [acme]"),
            _ => bail!("https_cert and https_key go together"),
        }
        if self.pairing_max_tries == 0 {
            bail!("pairing_max_tries: must be at least 1");
        }
        if self.request_timeout.is_zero() {
            bail!("request_timeout: must be more than 0s");
        }
        if self.websocket_ping_interval < Duration::from_millis(100) {
            bail!("websocket_ping_interval: must be at least 100ms");
        }
        if let Some(cluster) = &self.cluster {
            if matches!(self.registry, RegistryLocation::File(_)) {
                bail!(
                    "[cluster] needs the nodes to share a PostgreSQL registry: set [registry] url = \"postgres://…\""
                );
            }
            cluster.validate()?;
        }
        Ok(())
    }
}

/// Site names are single DNS labels: they become `<site>.<domain>`.
pub fn validate_site_name(name: &str) -> anyhow::Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 || !ok_chars || name.starts_with('-') || name.ends_with('-') {
        bail!("a site name is 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        domain = "Relay.Example.COM."
        https_cert = "https.pem"
        https_key = "https.key"
        tunnel_ca = "ca.pem"
        tunnel_cert = "tunnel.pem"
        tunnel_key = "tunnel.key"
        tunnel_ca_key = "ca.key"
        default_site = "HQ"
        request_timeout = "5s"
    "#;

    #[test]
    fn loads_resolves_paths_and_normalises_names() {
        let dir = std::env::temp_dir().join(format!("kw-relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let cfg = RelayConfig::load(&path).unwrap();
        assert_eq!(cfg.domain, "relay.example.com");
        assert_eq!(cfg.default_site.as_deref(), Some("hq"));
        assert_eq!(cfg.https_cert, Some(dir.join("https.pem")));
        assert_eq!(cfg.registry, RegistryLocation::File(dir.join("registry.db")));
        assert_eq!(cfg.pairing_code_ttl, Duration::from_secs(900));
        assert_eq!(cfg.request_timeout, Duration::from_secs(5));
        // A database CA beside the config, like every other file.
        std::fs::write(
            &path,
            format!("{MINIMAL}\n[registry]\nurl = \"postgres://k@db/k\"\ntls_ca_file = \"db-ca.pem\"\n"),
        )
        .unwrap();
        let cfg = RelayConfig::load(&path).unwrap();
        assert_eq!(
            cfg.registry,
            RegistryLocation::Database {
                url: "postgres://k@db/k".into(),
                tls_ca_file: Some(dir.join("db-ca.pem")),
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cluster_needs_postgres_a_name_and_a_reachable_peer_address() {
        let parse = |extra: &str| -> anyhow::Result<RelayConfig> {
            let mut cfg: RelayConfig = toml::from_str(&format!("{MINIMAL}\n{extra}"))?;
            cfg.validate()?;
            Ok(cfg)
        };
        let pg = "[registry]\nurl = \"postgres://k@db/k\"\n";
        let ok = parse(&format!(
            "{pg}[cluster]\nnode = \"edge-1\"\npeer_listen = \"10.0.0.5:7443\"\n"
        ))
        .unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!((c.node.as_str(), c.heartbeat), ("edge-1", Duration::from_secs(1)));
        let err = |extra: &str| format!("{:#}", parse(extra).unwrap_err());
        assert!(err("[cluster]\nnode = \"a\"\npeer_listen = \"10.0.0.5:7443\"\n").contains("PostgreSQL"));
        assert!(err(&format!(
            "{pg}[cluster]\nnode = \"a\"\npeer_listen = \"0.0.0.0:7443\"\n"
        ))
        .contains("peer_address"));
        assert!(err(&format!(
            "{pg}[cluster]\nnode = \"A B\"\npeer_listen = \"10.0.0.5:7443\"\n"
        ))
        .contains("node"));
        assert!(err(&format!(
            "{pg}[cluster]\nnode = \"a\"\npeer_listen = \"10.0.0.5:7443\"\nheartbeat = \"5s\"\n"
        ))
        .contains("heartbeat"));
        let wild =
            format!("{pg}[cluster]\nnode = \"a\"\npeer_listen = \"0.0.0.0:7443\"\npeer_address = \"10.0.0.5:7443\"\n");
        assert_eq!(
            parse(&wild).unwrap().cluster.unwrap().advertised().to_string(),
            "10.0.0.5:7443"
        );
    }

    #[test]
    fn the_registry_is_a_file_or_a_database_whose_password_is_never_shown() {
        let db = format!("{MINIMAL}\n[registry]\nurl = \"postgres://keyway:s3cret@db.internal:5432/keyway\"\n");
        let cfg: RelayConfig = toml::from_str(&db).unwrap();
        let shown = cfg.registry.to_string();
        assert_eq!(shown, "postgres://keyway:***@db.internal:5432/keyway");
        let file: RelayConfig = toml::from_str(&format!("{MINIMAL}\nregistry = \"/var/lib/keyway/r.db\"\n")).unwrap();
        assert_eq!(file.registry, RegistryLocation::File("/var/lib/keyway/r.db".into()));
        for (given, shown) in [
            (
                "host=db user=k password=s3cret dbname=k",
                "host=db user=k password=*** dbname=k",
            ),
            ("postgres://k@db/k", "postgres://k@db/k"),
            (
                "postgres://k:p@ss@db/k?sslmode=require",
                "postgres://k:***@db/k?sslmode=require",
            ),
        ] {
            assert_eq!(redact_password(given), shown);
        }
    }

    #[test]
    fn rejects_typos_and_bad_names() {
        let typo = format!("{MINIMAL}\nrequest_timout = \"1s\"");
        let err = toml::from_str::<RelayConfig>(&typo).unwrap_err().to_string();
        assert!(err.contains("request_timout"), "{err}");

        let mut cfg: RelayConfig =
            toml::from_str(&MINIMAL.replace("default_site = \"HQ\"", "default_site = \"h q\"")).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("default_site"));

        for bad in ["", "-a", "a-", "a.b", &"a".repeat(64), "A_B"] {
            assert!(validate_site_name(bad).is_err(), "{bad}");
        }
        validate_site_name("branch-2").unwrap();
    }

    #[test]
    fn files_or_acme_not_both_nor_neither() {
        let acme = "\n[acme]\nagree_terms = true\n";
        let mut both: RelayConfig = toml::from_str(&format!("{MINIMAL}{acme}")).unwrap();
        assert!(both.validate().unwrap_err().to_string().contains("exclude"));
        let files_gone = MINIMAL
            .replace("https_cert = \"https.pem\"", "")
            .replace("https_key = \"https.key\"", "");
        let mut neither: RelayConfig = toml::from_str(&files_gone).unwrap();
        assert!(neither
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no public certificate"));
        let mut acme_only: RelayConfig = toml::from_str(&format!("{files_gone}{acme}")).unwrap();
        acme_only.validate().unwrap();
    }
}
