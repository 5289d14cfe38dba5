//! `status.json` beside the agent's key: what the running agent is doing,
//! rewritten (atomically) on every change, read by `keyway-agent status`.
//! A file rather than a socket: nothing listens, and members of the
//! `keyway` group can read it without root.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::tunnel::AgentState;

/// The file's contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `connecting`, `online`, `retrying` or `stopped`.
    pub state: String,
    /// The site, once online.
    pub site: Option<String>,
    /// `quic` or `tcp`, while online.
    pub transport: Option<String>,
    /// Why the last attempt failed, while retrying.
    pub reason: Option<String>,
    /// The relay, as configured.
    pub relay: String,
    /// Unix seconds when this state began.
    pub since: u64,
    /// The agent's process id.
    pub pid: u32,
}

/// Where the running agent of `key` writes its status.
pub fn path_for(key: &Path) -> PathBuf {
    key.parent().unwrap_or(Path::new(".")).join("status.json")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn status(state: &AgentState, relay: &str) -> Status {
    let (name, site, transport, reason) = match state {
        AgentState::Connecting => ("connecting", None, None, None),
        AgentState::Online { site, transport } => ("online", Some(site.clone()), Some(transport.to_string()), None),
        AgentState::Retrying { reason } => ("retrying", None, None, Some(reason.clone())),
    };
    Status {
        state: name.into(),
        site,
        transport,
        reason,
        relay: relay.into(),
        since: now(),
        pid: std::process::id(),
    }
}

/// Replaces the file (write + rename, so readers never see half of it; no
/// fsync: it is rewritten on the next change and must not stall the agent
/// on a busy SD card).
fn write(path: &Path, s: &Status) {
    let json = serde_json::to_vec_pretty(s).expect("status serialises");
    let tmp = path.with_extension("json.tmp");
    if let Err(e) = std::fs::write(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!("could not write {}: {e}", path.display());
    }
}

/// Writes `status.json` whenever the state changes, until the channel closes;
/// then marks it stopped.
pub async fn keep_written(path: PathBuf, relay: String, mut state: watch::Receiver<AgentState>) {
    loop {
        let current = status(&state.borrow_and_update().clone(), &relay);
        let p = path.clone();
        let _ = tokio::task::spawn_blocking(move || write(&p, &current)).await;
        if state.changed().await.is_err() {
            break;
        }
    }
    let mut stopped = status(&AgentState::Connecting, &relay);
    stopped.state = "stopped".into();
    let _ = tokio::task::spawn_blocking(move || write(&path, &stopped)).await;
}

/// Reads the status of the agent using `key`, noting whether it still runs.
pub fn read(key: &Path) -> anyhow::Result<(Status, bool)> {
    let path = path_for(key);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no status at {} (has the agent run yet?)", path.display()))?;
    let s: Status = serde_json::from_str(&text).with_context(|| format!("unreadable {}", path.display()))?;
    let running = s.state != "stopped" && Path::new(&format!("/proc/{}", s.pid)).exists();
    Ok((s, running))
}

/// The human form.
pub fn describe(s: &Status, running: bool) -> String {
    let ago = now().saturating_sub(s.since);
    let since = format!("for {}", human(ago));
    if !running {
        return format!(
            "The agent is not running (last state: {}).\nRelay: {}",
            s.state, s.relay
        );
    }
    match s.state.as_str() {
        "online" => {
            let transport = match s.transport.as_deref() {
                Some("tcp") => "TLS over TCP (UDP to the relay is blocked or was; QUIC is retried in the background)",
                Some("quic") => "QUIC",
                _ => "unknown transport",
            };
            format!(
                "Online {since}: serving site {:?} through {} over {transport}.",
                s.site.as_deref().unwrap_or("?"),
                s.relay
            )
        }
        "retrying" => format!(
            "Not connected {since}: {}.\nRelay: {}",
            s.reason.as_deref().unwrap_or("unknown reason"),
            s.relay
        ),
        other => format!("{other} {since}; relay {}", s.relay),
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_transport::TransportKind;

    #[test]
    fn written_status_reads_back_and_describes_the_transport() {
        let dir = std::env::temp_dir().join(format!("keyway-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("agent.key");
        let online = AgentState::Online {
            site: "hq".into(),
            transport: TransportKind::Tcp,
        };
        write(&path_for(&key), &status(&online, "relay.example.com:443"));
        let (s, running) = read(&key).unwrap();
        assert!(running, "this process is alive");
        assert_eq!(s.transport.as_deref(), Some("tcp"));
        assert!(
            describe(&s, running).contains("TLS over TCP"),
            "{}",
            describe(&s, running)
        );
        assert!(describe(&s, false).contains("not running"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
