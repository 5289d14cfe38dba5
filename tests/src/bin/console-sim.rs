//! `console-sim`: a simulated UniFi Access console for local runs and benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use keyway_tests::console::{ConsoleOptions, RunningConsole, Throttle};

/// Serves a simulated UniFi Access developer API (HTTPS, self-signed
/// certificate, Bearer token) until SIGTERM or Ctrl-C. Once listening it
/// prints one JSON line {"url": …, "fingerprint": …} and writes it to
/// --ready-file.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:12445")]
    listen: SocketAddr,
    /// API token clients must send as "Authorization: Bearer TOKEN".
    #[arg(long, env = "CONSOLE_SIM_TOKEN", hide_env_values = true)]
    token: String,
    /// Write the ready line to this file (atomically) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Answer 429 beyond N requests per window, as "N/SECONDS" (e.g. 100/1).
    #[arg(long, value_parser = parse_throttle)]
    throttle: Option<Throttle>,
    /// Seconds between the keep-alive text frames ("Hello") each event
    /// WebSocket gets, as a real console sends them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive_secs: u64,
    /// Also serve the simulated building's control listener here (plain
    /// HTTP, JSON; keep it on loopback): POST /credential, /doorbell,
    /// /door, /device make the physical world happen (a card at a reader,
    /// a doorbell, a door opened, a device offline), with the events,
    /// webhooks and system-log entries a console produces. Off by default.
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Trust this CA (PEM) for HTTPS webhook receivers, besides the web
    /// PKI (a test receiver's own certificate, say).
    #[arg(long, value_name = "FILE")]
    webhook_ca: Option<PathBuf>,
}

fn parse_throttle(s: &str) -> Result<Throttle, String> {
    let (n, secs) = s.split_once('/').ok_or("expected N/SECONDS, e.g. 100/1")?;
    let max_requests = n.parse().map_err(|_| format!("{n:?} is not a number"))?;
    let secs: u64 = secs
        .parse()
        .map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    if secs == 0 {
        return Err("the window must be at least 1 second".into());
    }
    Ok(Throttle {
        max_requests,
        window: Duration::from_secs(secs),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEYWAY_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let mut opts = ConsoleOptions::new(&cli.token);
    opts.listen = cli.listen;
    opts.throttle = cli.throttle;
    opts.keepalive = Duration::from_secs(cli.keepalive_secs);
    if let Some(path) = &cli.webhook_ca {
        let ca = keyway_certs::files::load_certs(path).with_context(|| format!("--webhook-ca {}", path.display()))?;
        opts.webhook_ca = ca.into_iter().next();
    }
    let console = RunningConsole::start(opts).await?;
    let control = match cli.control {
        Some(addr) => Some(
            console
                .control(addr)
                .await
                .with_context(|| format!("could not bind the control listener {addr}"))?,
        ),
        None => None,
    };
    let mut line = serde_json::json!({"url": console.url, "fingerprint": console.fingerprint().to_string()});
    if let Some(addr) = control {
        line["control"] = serde_json::json!(format!("http://{addr}"));
    }
    let line = line.to_string();
    println!("{line}");
    if let Some(path) = &cli.ready_file {
        keyway_certs::files::write_atomic(path, format!("{line}\n").as_bytes(), false)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    keyway_tests::wait_for_signal().await;
    console.stop().await;
    Ok(())
}
