//! Keyway integration tokens: one per integration, issued on the agent.
//!
//! `keyway-agent token add NAME` prints a token (`kw_` + 48 hex digits) once;
//! the agent keeps only its SHA-256 (`tokens.json`, mode 0600), with the
//! integration's name, expiry and route policy. The running agent re-reads
//! the file when it changes, so `token revoke` takes effect at once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::policy::Policy;

/// Prefix that tells an integration token from a console token.
pub const PREFIX: &str = "kw_";
const FILE: &str = "tokens.json";

/// One issued token, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The integration's name (unique).
    pub name: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// The first characters of the token, to recognise it in a list.
    pub hint: String,
    /// When it was issued (Unix seconds).
    pub created: u64,
    /// When it stops working (Unix seconds), if ever.
    pub expires: Option<u64>,
    /// Its route policy.
    pub policy: Policy,
    /// The preset it was issued with, if any (for display).
    #[serde(default)]
    pub preset: Option<String>,
}

/// The token file, re-read when it changes.
pub struct TokenStore {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<Entry>)>,
}

/// Why a token is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not issued here, or revoked.
    Unknown,
    /// Past its expiry.
    Expired(String),
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenStore {
    /// The store in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
            cache: Mutex::new((None, Vec::new())),
        }
    }

    /// Every entry on disk.
    pub fn load(&self) -> anyhow::Result<Vec<Entry>> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("invalid {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("could not read {}", self.path.display())),
        }
    }

    fn save(&self, entries: &[Entry]) -> anyhow::Result<()> {
        keyway_certs::files::write_atomic(&self.path, serde_json::to_string_pretty(entries)?.as_bytes(), true)
            .with_context(|| format!("could not write {}", self.path.display()))
    }

    /// Issues a token for `name`; returns it (shown once, never stored).
    pub fn add(
        &self,
        name: &str,
        policy: Policy,
        preset: Option<String>,
        ttl: Option<Duration>,
    ) -> anyhow::Result<String> {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!("integration name {name:?}: use 1-64 letters, digits, '-', '_' or '.'");
        }
        let mut entries = self.load()?;
        if entries.iter().any(|e| e.name == name) {
            bail!("an integration named {name:?} already has a token; revoke it first");
        }
        let mut raw = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| anyhow::anyhow!("no randomness for the token"))?;
        let token = format!("{PREFIX}{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let created = now();
        entries.push(Entry {
            name: name.to_string(),
            hash: hash(&token),
            hint: token[..PREFIX.len() + 6].to_string(),
            created,
            expires: ttl.map(|t| created + t.as_secs()),
            policy,
            preset,
        });
        self.save(&entries)?;
        Ok(token)
    }

    /// Revokes `name`'s token.
    pub fn revoke(&self, name: &str) -> anyhow::Result<()> {
        let mut entries = self.load()?;
        let before = entries.len();
        entries.retain(|e| e.name != name);
        if entries.len() == before {
            bail!("no integration named {name:?} has a token");
        }
        self.save(&entries)
    }

    /// The entry `token` belongs to, if it is valid now.
    pub fn verify(&self, token: &str) -> Result<Entry, Rejected> {
        let h = hash(token);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime != cache.0 || mtime.is_none() {
            match self.load() {
                Ok(entries) => *cache = (mtime, entries),
                Err(e) => {
                    tracing::warn!("integration tokens unreadable, refusing them: {e:#}");
                    *cache = (None, Vec::new());
                }
            }
        }
        let entry = cache.1.iter().find(|e| e.hash == h).ok_or(Rejected::Unknown)?;
        if entry.expires.is_some_and(|t| t <= now()) {
            return Err(Rejected::Expired(entry.name.clone()));
        }
        Ok(entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_revoke_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let t = store.add("coworks", Policy::default(), None, None).unwrap();
        assert!(t.starts_with(PREFIX) && t.len() == PREFIX.len() + 48);
        assert_eq!(store.verify(&t).unwrap().name, "coworks");
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains(&t), "only the hash is stored");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            store.add("coworks", Policy::default(), None, None).is_err(),
            "names are unique"
        );
        assert_eq!(store.verify("kw_nope"), Err(Rejected::Unknown));
        store.revoke("coworks").unwrap();
        assert_eq!(store.verify(&t), Err(Rejected::Unknown));
        let e = store.add("old", Policy::default(), None, Some(Duration::ZERO)).unwrap();
        assert_eq!(store.verify(&e), Err(Rejected::Expired("old".into())));
        assert!(store.add("bad name", Policy::default(), None, None).is_err());
    }
}
