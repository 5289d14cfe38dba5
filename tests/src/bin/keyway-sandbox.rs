//! `keyway-sandbox`: the whole Keyway path on loopback, ready for curl.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use keyway_tests::stack::{Stack, TOKEN};

/// Starts a simulated UniFi Access console, a Keyway relay and a Keyway agent
/// on loopback (real QUIC over UDP, real HTTPS over TCP, real TLS), writes
/// DIR/sandbox.json when everything is ready, prints a curl command that goes
/// integration → relay → QUIC → agent → console, and runs until SIGINT or
/// SIGTERM.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Folder for keys, configs and sandbox.json (default: a temporary folder,
    /// removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Port for the relay (HTTPS on TCP and QUIC on UDP); default: a free one.
    #[arg(long)]
    relay_port: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEYWAY_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let (_tmp, dir) = match cli.dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("could not create {}", d.display()))?;
            (None, std::fs::canonicalize(&d)?)
        }
        None => {
            let t = tempfile::Builder::new().prefix("keyway-sandbox-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let mut builder = Stack::builder().dir(dir.clone());
    if let Some(p) = cli.relay_port {
        builder = builder.relay_port(p);
    }
    let stack = builder.start().await?;
    let info = serde_json::json!({
        "relay_url": stack.relay_url(),
        "relay_ca": stack.https_ca,
        "site": keyway_tests::stack::SITE,
        "console_url": stack.console.url,
        "console_token": TOKEN,
    });
    let path = dir.join("sandbox.json");
    keyway_certs::files::write_atomic(&path, serde_json::to_string_pretty(&info)?.as_bytes(), false)?;
    println!(
        "Keyway sandbox is up: console {} ← agent ⇄ QUIC ⇄ relay {}",
        stack.console.url,
        stack.relay_url()
    );
    println!("Details: {}", path.display());
    println!("Try it (lists the console's doors through the tunnel):\n");
    println!(
        "  curl --cacert '{}' -H 'Authorization: Bearer {TOKEN}' {}/api/v1/developer/doors\n",
        stack.https_ca.display(),
        stack.relay_url()
    );
    println!("Press Ctrl-C to stop.");
    keyway_tests::wait_for_signal().await;
    stack.shutdown().await?;
    Ok(())
}
