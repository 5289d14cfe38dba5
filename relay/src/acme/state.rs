//! Where the ACME account, the certificate and the challenge answers live.
//!
//! A single relay keeps them in `state_dir` and answers challenges from
//! memory. Nodes sharing a PostgreSQL registry keep them in the database:
//! one node at a time orders (a session advisory lock), every node answers
//! the TLS-ALPN-01 challenges (the CA may reach any of them behind one DNS
//! name) and installs the certificate the leader stored ([`super::follow`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use instant_acme::AccountCredentials;
use keyway_certs::files::{certs_from_pem, key_from_pem, write_atomic};
use keyway_certs::PublicCert;
use serde::{Deserialize, Serialize};

use super::{AcmeConfig, Pair};
use crate::registry::{now, LeaderGuard, Registry};

/// How long a published challenge answer stays valid if its node dies
/// before withdrawing it.
const CHALLENGE_TTL: i64 = 600;

/// How long the leader lets the other nodes pick a new challenge answer up
/// before telling the CA to validate: their poll ([`super::follow::POLL`])
/// three times over.
const PROPAGATION: Duration = Duration::from_millis(1500);

/// The ACME state of one relay, or of the cluster it belongs to.
#[derive(Clone)]
pub(super) enum AcmeState {
    /// Files in `state_dir`.
    Files(PathBuf),
    /// The shared registry.
    Shared(Registry),
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl AcmeState {
    /// Files for a SQLite registry, the database for PostgreSQL.
    pub fn new(cfg: &AcmeConfig, shared: Option<Registry>) -> Self {
        match shared {
            Some(r) => Self::Shared(r),
            None => Self::Files(cfg.state_dir.clone()),
        }
    }

    /// The stored certificate and its version (files: always 0), if any.
    pub async fn load_cert(&self) -> anyhow::Result<Option<(Pair, i64)>> {
        let (chain, key, version) = match self {
            Self::Files(dir) => {
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                if !cert.exists() || !key.exists() {
                    return Ok(None);
                }
                let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("{}", p.display()));
                (read(&cert)?, read(&key)?, 0)
            }
            Self::Shared(registry) => match registry.call(|s| s.acme_cert()).await? {
                None => return Ok(None),
                Some(c) => (c.chain_pem.into_bytes(), c.key_pem.into_bytes(), c.version),
            },
        };
        let chain = certs_from_pem("stored ACME certificate", &chain)?;
        let key = key_from_pem("stored ACME key", &key)?;
        Ok(Some(((chain, key), version)))
    }

    /// Copies a certificate a single relay kept in `dir` into the shared
    /// registry, when it has none; returns it installed.
    pub async fn import_files(&self, dir: &std::path::Path) -> anyhow::Result<Option<(PublicCert, i64)>> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (Ok(chain_pem), Ok(key_pem)) = (std::fs::read_to_string(&cert), std::fs::read_to_string(&key)) else {
            return Ok(None);
        };
        let public = PublicCert::new(
            certs_from_pem(&cert.display().to_string(), chain_pem.as_bytes())?,
            key_from_pem(&key.display().to_string(), key_pem.as_bytes())?,
        )?;
        self.store_cert(chain_pem, key_pem).await?;
        tracing::info!("moved the ACME certificate in {} into the registry", dir.display());
        let version = self.load_cert().await?.map_or(0, |(_, v)| v);
        Ok(Some((public, version)))
    }

    /// Keeps a newly issued certificate (the key 0600 on disk).
    pub async fn store_cert(&self, chain_pem: String, key_pem: String) -> anyhow::Result<()> {
        match self {
            Self::Files(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
                write_atomic(&dir.join("key.pem"), key_pem.as_bytes(), true)?;
                write_atomic(&dir.join("cert.pem"), chain_pem.as_bytes(), false)?;
            }
            Self::Shared(registry) => {
                registry
                    .call(move |s| s.acme_store_cert(&chain_pem, &key_pem))
                    .await
                    .context("storing the certificate in the registry")?;
            }
        }
        Ok(())
    }

    /// The account made earlier with `directory`, if any.
    pub async fn load_account(&self, directory: &str) -> anyhow::Result<Option<AccountCredentials>> {
        match self {
            Self::Files(dir) => {
                let path = dir.join("account.json");
                let Ok(text) = std::fs::read(&path) else {
                    return Ok(None);
                };
                let stored: StoredAccount =
                    serde_json::from_slice(&text).with_context(|| format!("unreadable {}", path.display()))?;
                Ok((stored.directory == directory).then_some(stored.credentials))
            }
            Self::Shared(registry) => {
                let d = directory.to_string();
                match registry.call(move |s| s.acme_account(&d)).await? {
                    None => Ok(None),
                    Some(json) => Ok(Some(
                        serde_json::from_str(&json).context("unreadable ACME account in the registry")?,
                    )),
                }
            }
        }
    }

    /// Keeps a new account (it holds the account key: 0600 on disk).
    pub async fn store_account(&self, directory: &str, credentials: AccountCredentials) -> anyhow::Result<()> {
        match self {
            Self::Files(dir) => {
                let stored = StoredAccount {
                    directory: directory.to_string(),
                    credentials,
                };
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
                write_atomic(&dir.join("account.json"), &serde_json::to_vec(&stored)?, true)?;
            }
            Self::Shared(registry) => {
                let (d, json) = (directory.to_string(), serde_json::to_string(&credentials)?);
                registry
                    .call(move |s| s.acme_store_account(&d, &json))
                    .await
                    .context("storing the ACME account in the registry")?;
            }
        }
        Ok(())
    }

    /// The right to order: always for a single relay; for a cluster, while
    /// the guard lives, and `None` when another node has it.
    pub async fn lead(&self) -> anyhow::Result<Option<Option<LeaderGuard>>> {
        match self {
            Self::Files(_) => Ok(Some(None)),
            Self::Shared(registry) => Ok(registry.call(|s| s.acme_leader()).await?.map(Some)),
        }
    }

    /// Answers the challenges from this node at once and, in a cluster,
    /// from every node once they have read them.
    pub async fn publish(&self, public: &PublicCert, answers: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        for (name, digest) in answers {
            public.set_challenge(name, digest)?;
        }
        if let Self::Shared(registry) = self {
            let a = answers.to_vec();
            let until = now() + CHALLENGE_TTL;
            registry
                .call(move |s| s.acme_challenges(&a, Some(until)))
                .await
                .context("publishing the challenge answers")?;
            tokio::time::sleep(PROPAGATION).await;
        }
        Ok(())
    }

    /// Withdraws the answers (they would expire by themselves).
    pub async fn withdraw(&self, public: &PublicCert, answers: &[(String, Vec<u8>)]) {
        for (name, _) in answers {
            public.clear_challenge(name);
        }
        if let Self::Shared(registry) = self {
            let a = answers.to_vec();
            if let Err(e) = registry.call(move |s| s.acme_challenges(&a, None)).await {
                tracing::warn!("could not withdraw the challenge answers (they expire in {CHALLENGE_TTL} s): {e}");
            }
        }
    }
}
