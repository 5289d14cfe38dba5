//! What `keyway-agent status` shows, from two places beside the agent's key:
//!
//! * `agent.sock`, a Unix socket the running agent answers with one JSON
//!   document (live figures: round trip, console, requests in the last hour)
//!   and closes; mode 0660, so members of the `keyway` group need no root;
//! * `status.json`, rewritten (atomically) on every state change, which
//!   still tells the last state once the agent has stopped.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::uplink::AgentState;

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
    /// Live figures, from the socket only.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveStatus>,
}

/// What only the running agent knows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveStatus {
    /// The agent's version.
    pub version: String,
    /// Smoothed round trip to the relay, while online.
    pub rtt_ms: Option<f64>,
    /// Whether the console answered its last check.
    pub console_ok: Option<bool>,
    /// What is wrong with the console, when something is (its certificate
    /// changed, with both fingerprints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_problem: Option<String>,
    /// Another agent with this identity keeps taking the site, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<String>,
    /// Unix seconds when the agent certificate expires.
    pub cert_not_after: Option<i64>,
    /// Zero-knowledge: the names of the certificate this agent presents
    /// to integrations (`tls_cert`), when it has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_tls_names: Vec<String>,
    /// Unix seconds when that certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_tls_not_after: Option<i64>,
    /// The tunnels up, one per relay node (`quic 192.0.2.1:443`); one
    /// for a single relay, two in a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// Requests answered in the last hour.
    pub requests_last_hour: u64,
    /// Of which 5xx.
    pub errors_last_hour: u64,
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
        live: None,
    }
}

/// Replaces the file (write + rename, so readers never see half of it; no
/// fsync: it is rewritten on the next change and must not stall the agent
/// on a busy SD card). Mode 0640: the `keyway` group reads it despite the
/// service's umask.
fn write(path: &Path, s: &Status) {
    use std::os::unix::fs::PermissionsExt;
    let json = serde_json::to_vec_pretty(s).expect("status serialises");
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::write(&tmp, &json)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!("could not write {}: {e}", path.display());
    }
}

/// The state in effect, shared with the status socket.
pub type Current = std::sync::Arc<std::sync::Mutex<Option<Status>>>;

/// Writes `status.json` (and `current`) whenever the state changes, until
/// the channel closes; then marks it stopped.
pub async fn keep_written(path: PathBuf, relay: String, mut state: watch::Receiver<AgentState>, shared: Current) {
    loop {
        let current = status(&state.borrow_and_update().clone(), &relay);
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(current.clone());
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

/// Asks the running agent using `key` through its socket; when none
/// answers, reads the last state it wrote. Also says whether it runs.
pub async fn query(key: &Path) -> anyhow::Result<(Status, bool)> {
    match crate::status_socket::ask(&crate::status_socket::path_for(key)).await? {
        Some(s) => Ok((s, true)),
        None => read(key),
    }
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
    let mut text = headline(s, &since);
    if let Some(live) = &s.live {
        if let Some(rtt) = live.rtt_ms {
            text.push_str(&format!("\nRound trip to the relay: {rtt:.1} ms"));
        }
        if live.links.len() > 1 {
            text.push_str(&format!("\nLinks to relay nodes: {}", live.links.join(", ")));
        }
        match (live.console_ok, &live.console_problem) {
            (_, Some(p)) if p.starts_with("certificate changed") => {
                text.push_str(&format!("\nConsole: CERTIFICATE CHANGED: {p}"))
            }
            (Some(true), _) => text.push_str("\nConsole: reachable, certificate as pinned"),
            (Some(false), _) => text.push_str("\nConsole: NOT reachable (keyway-agent doctor says why)"),
            (None, _) => text.push_str("\nConsole: not checked yet"),
        }
        if let Some(d) = &live.duplicate {
            text.push_str(&format!("\nDUPLICATE: {d}"));
        }
        if let Some(t) = live.cert_not_after {
            let days = (t - now() as i64) / 86400;
            text.push_str(&format!("\nAgent certificate: valid for {days} more days"));
        }
        if let Some(t) = live.site_tls_not_after {
            let days = (t - now() as i64) / 86400;
            text.push_str(&format!(
                "\nZero-knowledge: integrations' TLS ends here ({}), certificate valid for {days} more days",
                live.site_tls_names.join(", ")
            ));
        }
        text.push_str(&format!(
            "\nLast hour: {} requests, {} errors (5xx)\nAgent version: {}",
            live.requests_last_hour, live.errors_last_hour, live.version
        ));
    }
    text
}

fn headline(s: &Status, since: &str) -> String {
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
