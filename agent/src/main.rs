//! `keyway-agent`: the LAN side of a Keyway tunnel.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyway_agent::{Agent, AgentConfig};
use tokio_util::sync::CancellationToken;

/// Keyway agent: makes the UniFi Access console on this LAN reachable through
/// a Keyway relay. It only dials out (QUIC to the relay) and never listens.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect to the relay and forward requests to the console until SIGTERM
    /// or Ctrl-C. Reconnects by itself after any failure.
    Run {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
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
        Cmd::Run { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keyway-agent: {e:#}");
                    return ExitCode::from(64);
                }
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keyway-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let agent = Agent::new(&cfg)?;
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    agent.run(stop).await;
    Ok(())
}

async fn shutdown_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: draining open requests");
    stop.cancel();
}
