//! Test support for Keyway: a simulated UniFi Access console, the PKI and
//! config files of a local relay + agent, and an in-process stack builder.
//! Nothing here ships in a package.

pub mod client;
pub mod console;
pub mod pki;
pub mod stack;

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
