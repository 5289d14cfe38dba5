//! Every node of a cluster follows the shared ACME state: it answers the
//! challenges the leader published and installs each certificate the
//! leader stored, without a restart.

use std::collections::HashMap;
use std::time::Duration;

use keyway_certs::files::{certs_from_pem, key_from_pem};
use keyway_certs::PublicCert;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{now, Registry};

/// How often a node reads the shared state (one small query).
pub(super) const POLL: Duration = Duration::from_millis(500);

/// Follows until `stop`; `version` is the certificate version installed at
/// start (0: none).
pub(super) async fn follow(registry: Registry, public: PublicCert, mut version: i64, stop: CancellationToken) {
    let mut answering: HashMap<String, Vec<u8>> = HashMap::new();
    let mut complained = false;
    loop {
        match registry.call(|s| s.acme_snapshot(now())).await {
            Ok(snapshot) => {
                complained = false;
                if snapshot.cert_version != version {
                    match install(&registry, &public).await {
                        Ok(v) => version = v,
                        Err(e) => warn!("could not install the cluster's certificate: {e:#}"),
                    }
                }
                let live: HashMap<String, Vec<u8>> = snapshot.challenges.into_iter().collect();
                answering.retain(|name, digest| {
                    let keep = live.get(name) == Some(digest);
                    if !keep {
                        public.clear_challenge(name);
                    }
                    keep
                });
                for (name, digest) in live {
                    if answering.contains_key(&name) {
                        continue;
                    }
                    match public.set_challenge(&name, &digest) {
                        Ok(()) => {
                            answering.insert(name, digest);
                        }
                        Err(e) => warn!(name, "could not answer a challenge: {e}"),
                    }
                }
            }
            // An outage is logged once, by the registry.
            Err(e) if e.is_unavailable() => {}
            Err(e) if !complained => {
                complained = true;
                warn!("could not read the cluster's certificate state: {e}");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Installs the stored certificate; returns its version.
async fn install(registry: &Registry, public: &PublicCert) -> anyhow::Result<i64> {
    let Some(cert) = registry.call(|s| s.acme_cert()).await? else {
        return Ok(0);
    };
    let chain = certs_from_pem("the cluster's certificate", cert.chain_pem.as_bytes())?;
    let key = key_from_pem("the cluster's key", cert.key_pem.as_bytes())?;
    let summary = public.replace(chain, key)?;
    info!(names = ?summary.names, expires = summary.not_after, version = cert.version, "installed the cluster's ACME certificate");
    Ok(cert.version)
}
