//! Test support for Keyway: a simulated UniFi Access console, the PKI and
//! config files of a local relay + agent, and an in-process stack builder.
//! Nothing here ships in a package.

pub mod acme;
pub mod browser;
pub mod client;
pub mod conformance;
pub mod console;
pub mod impair;
pub mod postgres;
pub mod procs;
pub mod readme;
pub mod rogue;
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

/// Path of a binary of this workspace (`keyway-relay`, `keyway-agent`), built
/// beside the running test executable. The relay and agent crates have
/// integration tests of their own, so `cargo test --workspace` (and nextest)
/// builds their binaries before any test runs.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) })
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Resident memory of a process in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
