//! `keyway-relay init`: a relay folder with its config, private CA and keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use keyway_certs::files::write_atomic;
use keyway_certs::PrivateCa;

use crate::registry::Registry;

/// What `init` needs (the arguments of `keyway-relay init`).
// The field docs are also `--help`, where <domain> is not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(clap::Args)]
pub struct InitOptions {
    /// Folder to create (e.g. /etc/keyway).
    #[arg(long)]
    pub dir: PathBuf,
    /// Public domain: sites are served at https://<site>.<domain>/.
    #[arg(long)]
    pub domain: String,
    /// Address for HTTPS (TCP) and QUIC (UDP).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub listen: SocketAddr,
    /// Serve /healthz on this address (plain HTTP; keep it on loopback).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Also create a development CA and a certificate for <domain>,
    /// *.<domain> and loopback (written to https-ca.pem; for testing).
    #[arg(long)]
    pub self_signed: bool,
    /// Overwrite an existing relay folder (unpairs every site).
    #[arg(long)]
    pub force: bool,
}

/// What `init` created.
#[derive(Debug)]
pub struct InitReport {
    /// The config file.
    pub config: PathBuf,
    /// Every file written.
    pub created: Vec<PathBuf>,
    /// The development CA that signs the HTTPS certificate (`--self-signed`).
    pub https_ca: Option<PathBuf>,
}

/// Creates the relay folder.
pub fn init(opts: &InitOptions) -> anyhow::Result<InitReport> {
    let domain = opts.domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.split('.').any(|l| crate::config::validate_site_name(l).is_err()) {
        bail!("--domain {:?} is not a DNS name", opts.domain);
    }
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let config = dir.join("relay.toml");
    if config.exists() && !opts.force {
        bail!(
            "{} exists: this folder holds a relay already (use --force to start over, which unpairs every site)",
            config.display()
        );
    }
    let mut created = vec![];
    let mut write = |name: &str, data: &[u8], secret: bool| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        write_atomic(&p, data, secret)?;
        created.push(p.clone());
        Ok(p)
    };

    let ca = PrivateCa::generate(&format!("Keyway tunnel CA for {domain}"))?;
    write("tunnel-ca.pem", ca.cert_pem().as_bytes(), false)?;
    write("tunnel-ca.key", ca.key_pem().as_bytes(), true)?;
    let tunnel_key = rcgen::KeyPair::generate()?;
    let tunnel = ca.issue_server(
        std::slice::from_ref(&domain),
        &tunnel_key,
        keyway_certs::ca::CA_VALIDITY,
    )?;
    write("tunnel.pem", tunnel.pem.as_bytes(), false)?;
    write("tunnel.key", tunnel_key.serialize_pem().as_bytes(), true)?;

    let https_ca = if opts.self_signed {
        let dev = PrivateCa::generate(&format!("Keyway development HTTPS CA for {domain}"))?;
        let key = rcgen::KeyPair::generate()?;
        // Loopback names too, so a local agent can pair against 127.0.0.1.
        let names = vec![
            domain.clone(),
            format!("*.{domain}"),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        let cert = dev.issue_server(&names, &key, keyway_certs::ca::AGENT_VALIDITY)?;
        write("https.pem", cert.pem.as_bytes(), false)?;
        write("https.key", key.serialize_pem().as_bytes(), true)?;
        Some(write("https-ca.pem", dev.cert_pem().as_bytes(), false)?)
    } else {
        None
    };

    let toml = format!(
        "# Keyway relay, created by `keyway-relay init`.\n\
         domain = {domain:?}\n\
         https_listen = \"{listen}\"   # TCP: integrations\n\
         quic_listen = \"{listen}\"    # UDP: agents\n\
         {https}\
         https_key = \"https.key\"\n\
         tunnel_ca = \"tunnel-ca.pem\"\n\
         tunnel_ca_key = \"tunnel-ca.key\"\n\
         tunnel_cert = \"tunnel.pem\"\n\
         tunnel_key = \"tunnel.key\"\n\
         registry = \"registry.db\"\n\
         pairing_code_ttl = \"15m\"\n\
         pairing_max_tries = 5\n\
         {admin}\
         # default_site = \"hq\"      # serve this site on the bare domain or an IP\n\
         # apt_repository = \"apt\"   # serve packaging/build-repo.sh's output at https://<domain>/apt/\n",
        admin = match opts.admin_listen {
            Some(a) => format!(
                "admin_listen = \"{a}\"  # /healthz, /metrics, /console/; plain HTTP: keep on loopback (or admin_tls = true)\n"
            ),
            None => "# admin_listen = \"127.0.0.1:9090\"  # /healthz, /metrics, /console/; plain HTTP: keep on loopback\n"
                .to_string(),
        },
        listen = opts.listen,
        https = if opts.self_signed {
            "https_cert = \"https.pem\"   # development certificate (signed by https-ca.pem)\n".to_string()
        } else {
            "https_cert = \"https.pem\"   # put the public certificate chain for the domain and *.domain here\n\
             # (or remove https_cert/https_key and add an [acme] section: see the README)\n"
                .to_string()
        },
    );
    write("relay.toml", toml.as_bytes(), false)?;
    let db = dir.join("registry.db");
    if opts.force && db.exists() {
        std::fs::remove_file(&db).with_context(|| format!("could not remove {}", db.display()))?;
    }
    Registry::open(&db).with_context(|| format!("could not create {}", db.display()))?;
    created.push(db);
    Ok(InitReport {
        config,
        created,
        https_ca,
    })
}

/// The folder a config file lives in.
pub fn config_dir(config: &Path) -> &Path {
    config.parent().unwrap_or(Path::new("."))
}
