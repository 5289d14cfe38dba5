//! `agent.sock`: the running agent answers each connection with its status
//! as one JSON document, then closes. No request is read, so there is
//! nothing to parse and nothing to abuse; the file is 0660 so members of
//! the state folder's group (`keyway` in the package) can ask without root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::live::Live;
use crate::status::{Current, LiveStatus, Status};

/// Where the agent using `key` listens.
pub fn path_for(key: &Path) -> PathBuf {
    key.parent().unwrap_or(Path::new(".")).join("agent.sock")
}

/// Binds `path`, replacing a stale socket but never a live agent's.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another agent answers on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("could not remove the stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("could not listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("could not set the mode of {}", path.display()))?;
    Ok(listener)
}

/// What the socket serves.
pub struct Source {
    /// The state in effect.
    pub current: Current,
    /// Live counters.
    pub live: Arc<Live>,
    /// Unix seconds when the agent certificate expires.
    pub cert_not_after: Option<i64>,
    /// The agent's links to relay nodes.
    pub links: Arc<crate::uplink::Links>,
    /// The zero-knowledge certificate (`tls_cert`), when there is one.
    pub site_tls: Option<keyway_certs::public::CertSummary>,
}

impl Source {
    fn snapshot(&self) -> Option<Status> {
        let mut s = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let (requests, errors) = self.live.last_hour();
        s.live = Some(LiveStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            rtt_ms: self.live.rtt().map(|d| d.as_secs_f64() * 1000.0),
            console_ok: self.live.console_ok(),
            console_problem: self.live.console().and_then(|h| h.problem()),
            duplicate: self.live.duplicate(),
            cert_not_after: self.cert_not_after,
            site_tls_names: self.site_tls.as_ref().map(|s| s.names.clone()).unwrap_or_default(),
            site_tls_not_after: self.site_tls.as_ref().map(|s| s.not_after),
            links: self.links.describe(),
            requests_last_hour: requests,
            errors_last_hour: errors,
        });
        Some(s)
    }
}

/// Answers until `stop`, then removes the socket.
pub async fn serve(listener: UnixListener, path: PathBuf, source: Source, stop: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!("status socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(status) = source.snapshot() else { continue };
        tokio::spawn(async move {
            let mut json = serde_json::to_vec(&status).expect("status serialises");
            json.push(b'\n');
            let written = tokio::time::timeout(Duration::from_secs(5), async {
                stream.write_all(&json).await?;
                stream.shutdown().await
            });
            if let Ok(Err(e)) = written.await {
                debug!("status socket client: {e}");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// Asks the agent at `path`. `Ok(None)`: no agent answers there.
pub async fn ask(path: &Path) -> anyhow::Result<Option<Status>> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("{}: permission denied (add yourself to the keyway group: sudo adduser $USER keyway, then log in again)", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let mut text = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        (&mut stream).take(1 << 20).read_to_end(&mut text),
    )
    .await
    .context("the agent did not answer within 5 s")??;
    if text.is_empty() {
        // The agent is starting and has no state yet: the file says more.
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_slice(&text).context("the agent's answer is not a status")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        assert!(ask(&path).await.unwrap().is_none(), "no socket: no agent");

        // A crashed agent leaves its socket file behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(ask(&path).await.unwrap().is_none(), "nobody answers a stale socket");
        let live = bind(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);

        let err = bind(&path).await.unwrap_err().to_string();
        assert!(err.contains("another agent answers"), "{err}");
        drop(live);
    }
}
