//! Writes the key material and config files of a local relay and agent,
//! as pairing and `keyway-relay init` would (those commands come later; the
//! layout is the same).
//!
//! ```text
//! DIR/relay/relay.toml  https.pem https.key https-ca.pem  tunnel-ca.pem tunnel-ca.key tunnel.pem tunnel.key
//! DIR/agent/agent.toml  agent.pem agent.key relay-ca.pem
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use keyway_certs::files::write_atomic;
use keyway_certs::{Fingerprint, PrivateCa};
use rustls_pki_types::CertificateDer;

/// What to write.
pub struct Spec<'a> {
    /// The relay's public domain.
    pub domain: &'a str,
    /// The one site.
    pub site: &'a str,
    /// Relay HTTPS listener.
    pub https_listen: SocketAddr,
    /// Relay QUIC listener.
    pub quic_listen: SocketAddr,
    /// The console's base URL as the agent reaches it.
    pub console_url: &'a str,
    /// The pinned console fingerprint.
    pub console_fingerprint: Fingerprint,
    /// Extra lines for relay.toml (timeouts in tests).
    pub relay_extra: &'a str,
    /// Extra lines for agent.toml.
    pub agent_extra: &'a str,
}

/// Where things were written.
pub struct Layout {
    /// `DIR/relay/relay.toml`.
    pub relay_config: PathBuf,
    /// `DIR/agent/agent.toml`.
    pub agent_config: PathBuf,
    /// The PEM that signs the relay's HTTPS certificate (for `curl --cacert`).
    pub https_ca: PathBuf,
    /// The same, DER, for in-process clients.
    pub https_ca_der: CertificateDer<'static>,
}

/// Generates CAs, certificates and keys and writes both config files.
pub fn write(dir: &Path, spec: &Spec<'_>) -> anyhow::Result<Layout> {
    let relay_dir = dir.join("relay");
    let agent_dir = dir.join("agent");
    for d in [&relay_dir, &agent_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("could not create {}", d.display()))?;
    }
    let ip = spec.https_listen.ip().to_string();

    // A development CA for the public HTTPS front (production uses ACME or files).
    let https_ca = PrivateCa::generate("Keyway development HTTPS CA")?;
    let https_key = rcgen::KeyPair::generate()?;
    let names = vec![
        spec.domain.to_string(),
        format!("*.{}", spec.domain),
        ip.clone(),
        "localhost".into(),
    ];
    let https = https_ca.issue_server(&names, &https_key, keyway_certs::ca::AGENT_VALIDITY)?;
    write_atomic(&relay_dir.join("https.pem"), https.pem.as_bytes(), false)?;
    write_atomic(&relay_dir.join("https.key"), https_key.serialize_pem().as_bytes(), true)?;
    write_atomic(&relay_dir.join("https-ca.pem"), https_ca.cert_pem().as_bytes(), false)?;

    // The private tunnel CA: signs the relay's QUIC certificate and the agent's.
    let ca = PrivateCa::generate("Keyway relay tunnel CA")?;
    write_atomic(&relay_dir.join("tunnel-ca.pem"), ca.cert_pem().as_bytes(), false)?;
    write_atomic(&relay_dir.join("tunnel-ca.key"), ca.key_pem().as_bytes(), true)?;
    let tunnel_key = rcgen::KeyPair::generate()?;
    let tunnel = ca.issue_server(
        &[spec.domain.to_string(), ip.clone()],
        &tunnel_key,
        keyway_certs::ca::AGENT_VALIDITY,
    )?;
    write_atomic(&relay_dir.join("tunnel.pem"), tunnel.pem.as_bytes(), false)?;
    write_atomic(
        &relay_dir.join("tunnel.key"),
        tunnel_key.serialize_pem().as_bytes(),
        true,
    )?;

    // The agent's key is generated "on the Pi": only its public half is signed.
    let agent_key = rcgen::KeyPair::generate()?;
    let agent = ca.issue_agent(spec.site, &agent_key, keyway_certs::ca::AGENT_VALIDITY)?;
    write_atomic(&agent_dir.join("agent.pem"), agent.pem.as_bytes(), false)?;
    write_atomic(&agent_dir.join("agent.key"), agent_key.serialize_pem().as_bytes(), true)?;
    write_atomic(&agent_dir.join("relay-ca.pem"), ca.cert_pem().as_bytes(), false)?;

    let relay_toml = format!(
        "# Keyway relay (written by keyway-tests)\n\
         domain = {domain:?}\nhttps_listen = \"{https}\"\nquic_listen = \"{quic}\"\n\
         https_cert = \"https.pem\"\nhttps_key = \"https.key\"\n\
         tunnel_ca = \"tunnel-ca.pem\"\ntunnel_cert = \"tunnel.pem\"\ntunnel_key = \"tunnel.key\"\n\
         sites = [{site:?}]\ndefault_site = {site:?}\n{extra}\n",
        domain = spec.domain,
        https = spec.https_listen,
        quic = spec.quic_listen,
        site = spec.site,
        extra = spec.relay_extra,
    );
    let agent_toml = format!(
        "# Keyway agent (written by keyway-tests)\n\
         relay = \"{quic}\"\nrelay_name = {ip:?}\nrelay_ca = \"relay-ca.pem\"\n\
         cert = \"agent.pem\"\nkey = \"agent.key\"\n\
         console_url = {console:?}\nconsole_fingerprint = \"{fp}\"\n{extra}\n",
        extra = spec.agent_extra,
        quic = spec.quic_listen,
        console = spec.console_url,
        fp = spec.console_fingerprint,
    );
    let relay_config = relay_dir.join("relay.toml");
    let agent_config = agent_dir.join("agent.toml");
    write_atomic(&relay_config, relay_toml.as_bytes(), false)?;
    write_atomic(&agent_config, agent_toml.as_bytes(), false)?;
    Ok(Layout {
        relay_config,
        agent_config,
        https_ca: relay_dir.join("https-ca.pem"),
        https_ca_der: https_ca.cert_der().clone(),
    })
}

/// A port free on both TCP and UDP at `ip` right now (the relay serves HTTPS
/// and QUIC on the same number, like 443/tcp + 443/udp in production).
pub fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on both TCP and UDP at {ip}")
}
