//! The console check, in a task of its own, and the re-pin it picks up.

use std::sync::Arc;

use keyway_certs::ConsoleTrust;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Uplink;
use crate::console::ConsoleHealth;

/// Checks the console every `console_check` in a task of its own (a check
/// of a dark console takes seconds, and must not hold up the tunnel's
/// streams and pings); the first result is in before this returns.
pub(super) async fn watch(ctx: Arc<Uplink>, stop: CancellationToken) -> watch::Receiver<ConsoleHealth> {
    let first = check_console(&ctx).await;
    ctx.handler.live.set_console(first);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut check = tokio::time::interval(ctx.console_check);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = check.tick() => {}
            }
            let health = check_console(&ctx).await;
            ctx.handler.live.set_console(health);
            tx.send_if_modified(|was| std::mem::replace(was, health) != health);
        }
    });
    rx
}

/// One console check. When the console presents another certificate than
/// the pin, the pin in `agent.toml` is read again: if it now names the
/// certificate the console presents (`keyway-agent console pin` wrote it),
/// the agent trusts it from now on, with no restart.
async fn check_console(ctx: &Uplink) -> ConsoleHealth {
    let health = ctx.console.health().await;
    let (ConsoleHealth::CertificateChanged { seen, .. }, Some(path)) = (health, &ctx.config_path) else {
        return health;
    };
    let pinned = crate::AgentConfig::load(path).ok().and_then(|c| c.console_trust().ok());
    if pinned != Some(ConsoleTrust::Pinned(seen)) {
        return health;
    }
    match ctx.console.repin(ConsoleTrust::Pinned(seen)) {
        Ok(()) => {
            info!(fingerprint = %seen, "the console's new certificate is pinned in {}; trusting it", path.display());
            ConsoleHealth::Ok
        }
        Err(e) => {
            warn!("could not trust the console's new certificate: {e:#}");
            health
        }
    }
}
