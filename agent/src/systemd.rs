//! What the service manager hears from `keyway-agent run` (the unit is
//! `Type=notify` with `WatchdogSec=`): `READY=1` once the config and keys
//! have loaded, `WATCHDOG=1` fed from the async runtime at half the
//! watchdog period — an agent whose runtime stops making progress (hung,
//! stopped, starved) stops feeding it and systemd restarts it — a `STATUS=`
//! line with the tunnel's state for `systemctl status`, and `STOPPING=1` on
//! the way out. Outside systemd (no `NOTIFY_SOCKET`) each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::AgentState;

/// Config and keys are loaded: the service has started.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Shutting down (SIGTERM): systemd waits for the exit, no restart.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Feeds the watchdog, when systemd set one for this process, until
/// `stop`; keeps the status line current with `state`.
pub fn spawn(state: watch::Receiver<AgentState>, stop: CancellationToken) {
    if let Some(every) = watchdog_period().map(|p| p / 2) {
        tracing::debug!("feeding the systemd watchdog every {every:?}");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => send(&[NotifyState::Watchdog]),
                }
            }
        });
    }
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        tokio::spawn(report_state(state, stop));
    }
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, for this pid).
fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

async fn report_state(mut state: watch::Receiver<AgentState>, stop: CancellationToken) {
    loop {
        let line = status_line(&state.borrow_and_update());
        send(&[NotifyState::Status(&line)]);
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// What `systemctl status keyway-agent` shows under the unit.
fn status_line(state: &AgentState) -> String {
    match state {
        AgentState::Connecting => "connecting to the relay".into(),
        AgentState::Online { site, transport } => format!("tunnel up for site {site} ({transport})"),
        AgentState::Retrying { reason } => {
            // One line: the protocol is a line per assignment.
            let reason: String = reason
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            format!("retrying: {reason}")
        }
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!("could not notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_one_short_line() {
        let long = AgentState::Retrying {
            reason: "x".repeat(5_000),
        };
        assert!(status_line(&long).len() < 220);
        let two_lines = AgentState::Retrying {
            reason: "a\nREADY=1".into(),
        };
        assert_eq!(status_line(&two_lines), "retrying: a READY=1");
    }
}
