//! The admin commands (`keyway-relay site …`).
//!
//! They open the registry file directly rather than calling the running
//! relay: they work whether or not the relay runs, SQLite (WAL) serialises
//! writers, and the relay picks every change up within half a second (see
//! [`crate::sites`]), which is how a revocation reaches a live tunnel.

use anyhow::Context;
use keyway_certs::pake::PairingCode;
use serde::Serialize;

use crate::config::{validate_site_name, RelayConfig};
use crate::registry::{now, Registry, RegistryError, SiteRecord};

/// A code just issued, as the operator sees it.
#[derive(Debug, Serialize)]
pub struct CodeIssued {
    /// The site.
    pub site: String,
    /// The one-time pairing code.
    pub code: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The command to run on the agent's machine.
    pub command: String,
    /// The site's public URL.
    pub url: String,
}

fn open(cfg: &RelayConfig) -> anyhow::Result<Registry> {
    Registry::open(&cfg.registry).with_context(|| format!("could not open the registry {}", cfg.registry.display()))
}

/// `site add NAME`: creates the site and its first code.
pub fn add_site(cfg: &RelayConfig, name: &str) -> anyhow::Result<CodeIssued> {
    let name = name.to_ascii_lowercase();
    validate_site_name(&name).with_context(|| format!("site name {name:?}"))?;
    let reg = open(cfg)?;
    reg.blocking().add_site(&name, now())?;
    issue_code(cfg, &reg, &name)
}

/// `site code NAME`: a fresh code; the previous one dies.
pub fn new_code(cfg: &RelayConfig, name: &str) -> anyhow::Result<CodeIssued> {
    issue_code(cfg, &open(cfg)?, &name.to_ascii_lowercase())
}

fn issue_code(cfg: &RelayConfig, reg: &Registry, site: &str) -> anyhow::Result<CodeIssued> {
    let t = now();
    let expires_at = t + cfg.pairing_code_ttl.as_secs() as i64;
    // Another site's live code may hold the same 3-symbol id: draw again.
    for _ in 0..64 {
        let code = PairingCode::generate();
        match reg.blocking().set_code(site, code.id(), &code.hash(), expires_at, t) {
            Ok(()) => {
                return Ok(CodeIssued {
                    site: site.to_string(),
                    code: code.display(),
                    expires_at,
                    command: pair_command(cfg, &code.display()),
                    url: public_url(cfg, site),
                })
            }
            Err(RegistryError::CodeIdTaken) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not draw an unused pairing code; try again")
}

/// `site list`.
pub fn list(cfg: &RelayConfig) -> anyhow::Result<Vec<SiteRecord>> {
    Ok(open(cfg)?.blocking().list_sites()?)
}

/// `site revoke NAME`: the agent's certificate is refused from now on.
pub fn revoke(cfg: &RelayConfig, name: &str) -> anyhow::Result<Option<String>> {
    Ok(open(cfg)?.blocking().revoke(&name.to_ascii_lowercase(), now())?)
}

/// The command the site owner runs on the Pi.
fn pair_command(cfg: &RelayConfig, code: &str) -> String {
    let port = cfg.quic_listen.port();
    let relay = if port == 443 {
        cfg.domain.clone()
    } else {
        format!("{}:{port}", cfg.domain)
    };
    let dev_ca = crate::init::config_dir(&cfg.tunnel_ca).join("https-ca.pem");
    let ca = if dev_ca.exists() {
        format!(" --relay-ca {}", dev_ca.display())
    } else {
        String::new()
    };
    format!("keyway-agent pair {code} --relay {relay}{ca} --console https://CONSOLE-IP:12445")
}

/// `https://<site>.<domain>[:port]/`.
pub fn public_url(cfg: &RelayConfig, site: &str) -> String {
    let port = cfg.https_listen.port();
    if port == 443 {
        format!("https://{site}.{}/", cfg.domain)
    } else {
        format!("https://{site}.{}:{port}/", cfg.domain)
    }
}
