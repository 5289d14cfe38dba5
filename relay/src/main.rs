//! `keyway-relay`: the public relay.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyway_relay::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

/// Keyway relay: gives UniFi Access consoles on private LANs a public HTTPS
/// address. Agents dial in over QUIC; integrations call
/// https://<site>.<domain>/api/v1/developer/... with the console's own token.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve integrations (HTTPS) and agents (QUIC) until SIGTERM or Ctrl-C.
    Serve {
        /// The relay's config file.
        #[arg(long, short, default_value = "/etc/keyway/relay.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEYWAY_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config } => {
            let cfg = match RelayConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keyway-relay: {e:#}");
                    return ExitCode::from(64);
                }
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keyway-relay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(cfg: RelayConfig) -> anyhow::Result<()> {
    let relay = Relay::bind(cfg).await?;
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    relay.run(stop).await
}

async fn shutdown_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining agents and open requests");
    stop.cancel();
}
