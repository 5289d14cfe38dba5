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
    Registry::at(&cfg.registry).with_context(|| format!("could not open the registry {}", cfg.registry))
}

/// `site add NAME`: creates the site and its first code.
pub fn add_site(cfg: &RelayConfig, name: &str) -> anyhow::Result<CodeIssued> {
    add_site_in(cfg, &open(cfg)?, name)
}

/// [`add_site`] on an open registry (the relay's web console).
pub fn add_site_in(cfg: &RelayConfig, reg: &Registry, name: &str) -> anyhow::Result<CodeIssued> {
    let name = name.to_ascii_lowercase();
    validate_site_name(&name).with_context(|| format!("site name {name:?}"))?;
    reg.blocking().add_site(&name, now())?;
    issue_code(cfg, reg, &name)
}

/// `site code NAME`: a fresh code; the previous one dies.
pub fn new_code(cfg: &RelayConfig, name: &str) -> anyhow::Result<CodeIssued> {
    new_code_in(cfg, &open(cfg)?, name)
}

/// [`new_code`] on an open registry.
pub fn new_code_in(cfg: &RelayConfig, reg: &Registry, name: &str) -> anyhow::Result<CodeIssued> {
    issue_code(cfg, reg, &name.to_ascii_lowercase())
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
    revoke_in(&open(cfg)?, name)
}

/// [`revoke`] on an open registry.
pub fn revoke_in(reg: &Registry, name: &str) -> anyhow::Result<Option<String>> {
    Ok(reg.blocking().revoke(&name.to_ascii_lowercase(), now())?)
}

/// `site mode NAME relay|agent`: where the site's TLS ends. With `agent`
/// (zero-knowledge) the relay routes the site's connections by SNI without
/// decrypting them, and the agent must hold a certificate for the site's
/// name. Running relays apply it within a second, to new connections.
pub fn set_mode(cfg: &RelayConfig, name: &str, mode: &str) -> anyhow::Result<crate::registry::Terminate> {
    let terminate = crate::registry::Terminate::parse(mode.trim())
        .ok_or_else(|| anyhow::anyhow!("mode {mode:?}: relay (the relay terminates TLS) or agent (zero-knowledge)"))?;
    open(cfg)?
        .blocking()
        .set_terminate(&name.to_ascii_lowercase(), terminate)?;
    Ok(terminate)
}

/// One of a site's limits, as `site limits` and the console show it.
#[derive(Debug, Serialize)]
pub struct LimitRow {
    /// The limit's name (as in `[limits]`).
    pub field: &'static str,
    /// What it bounds.
    pub about: &'static str,
    /// The value in force.
    pub value: String,
    /// Where it comes from: `site` (the registry), `relay.toml`, `default`.
    pub source: &'static str,
    /// The value set for this site in the registry, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}

/// A site's limits.
#[derive(Debug, Serialize)]
pub struct SiteLimits {
    /// The site.
    pub site: String,
    /// Every limit, in [`crate::limits::FIELDS`] order.
    pub limits: Vec<LimitRow>,
}

/// `site limits NAME`: the limits in force and where each comes from.
pub fn site_limits(cfg: &RelayConfig, name: &str) -> anyhow::Result<SiteLimits> {
    site_limits_in(cfg, &open(cfg)?, name)
}

/// [`site_limits`] on an open registry.
pub fn site_limits_in(cfg: &RelayConfig, reg: &Registry, name: &str) -> anyhow::Result<SiteLimits> {
    let site = find_site(reg, name)?;
    Ok(limits_view(cfg, &site.name, &site.limits))
}

/// `site limits NAME FIELD=VALUE…`: sets (an empty value: unsets) some of
/// the site's limits in the registry, after checking the result as the
/// relay checks `relay.toml`. Every running relay applies them within a
/// second; requests under way keep their slots.
pub fn set_site_limits(cfg: &RelayConfig, name: &str, changes: &[(String, String)]) -> anyhow::Result<SiteLimits> {
    set_site_limits_in(cfg, &open(cfg)?, name, changes)
}

/// [`set_site_limits`] on an open registry.
pub fn set_site_limits_in(
    cfg: &RelayConfig,
    reg: &Registry,
    name: &str,
    changes: &[(String, String)],
) -> anyhow::Result<SiteLimits> {
    let site = find_site(reg, name)?;
    let mut limits = site.limits.clone();
    for (field, value) in changes {
        limits.set(field, value)?;
    }
    cfg.limits.validate_with(&site.name, &limits)?;
    reg.blocking()
        .set_limits(&site.name, crate::registry::limits_json(&limits).as_deref())?;
    Ok(limits_view(cfg, &site.name, &limits))
}

fn find_site(reg: &Registry, name: &str) -> anyhow::Result<SiteRecord> {
    let name = name.to_ascii_lowercase();
    reg.blocking()
        .list_sites()?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| RegistryError::NoSuchSite(name).into())
}

/// A site's limits in force, given those set for it in the registry.
pub fn limits_view(cfg: &RelayConfig, site: &str, set: &crate::limits::Overrides) -> SiteLimits {
    let effective = cfg.limits.for_site_with(site, set);
    let limits = crate::limits::FIELDS
        .iter()
        .map(|&(field, about)| LimitRow {
            field,
            about,
            value: crate::limits::LimitsExt::get(&effective, field).unwrap_or_default(),
            source: cfg.limits.source(site, set, field),
            set: set.get(field),
        })
        .collect();
    SiteLimits {
        site: site.to_string(),
        limits,
    }
}

/// The table `site limits` prints.
pub fn limits_table(limits: &SiteLimits) -> String {
    let mut out = format!("{:<26} {:<20} FROM\n", "LIMIT", "VALUE");
    for row in &limits.limits {
        out.push_str(&format!("{:<26} {:<20} {}\n", row.field, row.value, row.source));
    }
    out.push_str(&format!(
        "\nSet one: keyway-relay site limits {} FIELD=VALUE (FIELD= goes back to relay.toml's)",
        limits.site
    ));
    out
}

/// `operator add NAME` (`replace`: `operator password NAME`): sets the
/// operator's password, the one given or a generated one; returns the
/// password when it was generated (shown once, stored only as a hash).
pub fn set_operator(
    cfg: &RelayConfig,
    name: &str,
    password: Option<String>,
    replace: bool,
) -> anyhow::Result<Option<String>> {
    use crate::operator::accounts;
    let name = name.trim().to_ascii_lowercase();
    accounts::validate_name(&name)?;
    let reg = open(cfg)?;
    let exists = reg.blocking().operator(&name)?.is_some();
    if exists && !replace {
        anyhow::bail!("operator {name} exists; to set a new password: keyway-relay operator password {name}");
    }
    if !exists && replace {
        anyhow::bail!("no operator {name}; to create one: keyway-relay operator add {name}");
    }
    let (password, generated) = match password {
        Some(p) => {
            accounts::validate_password(&p)?;
            (p, false)
        }
        None => (accounts::generate_password()?, true),
    };
    reg.blocking()
        .operator_set(&name, &accounts::hash_password(&password)?, now())?;
    Ok(generated.then_some(password))
}

/// `operator list`.
pub fn operators(cfg: &RelayConfig) -> anyhow::Result<Vec<crate::registry::OperatorRecord>> {
    Ok(open(cfg)?.blocking().operators()?)
}

/// `operator remove NAME`: whether there was one.
pub fn remove_operator(cfg: &RelayConfig, name: &str) -> anyhow::Result<bool> {
    Ok(open(cfg)?
        .blocking()
        .operator_remove(&name.trim().to_ascii_lowercase())?)
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

/// The table `site list` prints.
pub fn sites_table(sites: &[SiteRecord]) -> String {
    if sites.is_empty() {
        return "No sites yet: keyway-relay site add NAME".into();
    }
    let mut out = format!(
        "{:<24} {:<7} {:<7} {:<8} {:<20} AGENT\n",
        "SITE", "PAIRED", "ONLINE", "CONSOLE", "LAST SEEN (UTC)"
    );
    let yn = |b: bool| if b { "yes" } else { "no" };
    for s in sites {
        let seen = s.last_seen.map(format_time).unwrap_or_else(|| "never".into());
        // Online shows what carries the tunnel: quic, or tcp where the
        // agent's network blocks UDP.
        let online = match (s.online, s.transport.as_deref()) {
            (true, Some(t)) => t,
            (online, _) => yn(online),
        };
        let console = match (s.console_ok, s.console_problem.as_deref()) {
            (_, Some(p)) if p.starts_with("certificate changed") => "CERT",
            (Some(true), _) => "ok",
            (Some(false), _) => "DOWN",
            (None, _) => "-",
        };
        let version = s.agent_version.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "{:<24} {:<7} {:<7} {:<8} {:<20} {version}\n",
            s.name,
            yn(s.paired),
            online,
            console,
            seen
        ));
        if let Some(p) = &s.console_problem {
            out.push_str(&format!("  {}: console {p}\n", s.name));
        }
        if let Some(d) = &s.duplicate {
            out.push_str(&format!("  {}: DUPLICATE: {d}\n", s.name));
        }
        let set: Vec<String> = crate::limits::FIELDS
            .iter()
            .filter_map(|(f, _)| s.limits.get(f).map(|v| format!("{f}={v}")))
            .collect();
        if !set.is_empty() {
            out.push_str(&format!("  {}: limits {}\n", s.name, set.join(" ")));
        }
        if s.terminate == crate::registry::Terminate::Agent {
            out.push_str(&format!("  {}: zero-knowledge: TLS ends on the agent\n", s.name));
        }
    }
    out.trim_end().to_string()
}

/// `2026-12-07 06:30:00` for Unix seconds (UTC).
fn format_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_table_shows_transport_console_and_problems() {
        assert!(sites_table(&[]).starts_with("No sites yet"));
        let site = SiteRecord {
            name: "hq".into(),
            paired: true,
            cert_serial: Some("01".into()),
            last_seen: Some(1_796_000_000),
            online: true,
            agent_version: Some("0.1.0".into()),
            console_ok: Some(false),
            console_problem: Some("certificate changed: pinned A, the console presents B".into()),
            duplicate: Some("two machines use this identity".into()),
            code_expires: None,
            transport: Some("tcp".into()),
            cert_expires: None,
            limits: toml::from_str("site_rate = 5").unwrap(),
            terminate: crate::registry::Terminate::Agent,
        };
        let table = sites_table(&[site]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SITE"), "{table}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(row, ["hq", "yes", "tcp", "CERT", "2026-11-30", "00:53:20", "0.1.0"]);
        assert_eq!(
            lines[2],
            "  hq: console certificate changed: pinned A, the console presents B"
        );
        assert_eq!(lines[3], "  hq: DUPLICATE: two machines use this identity");
        assert_eq!(lines[4], "  hq: limits site_rate=5");
        assert_eq!(lines[5], "  hq: zero-knowledge: TLS ends on the agent");
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }
}
