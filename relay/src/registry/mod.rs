//! The site registry: sites, pairing-code hashes, issued certificates and
//! revocations, in SQLite (WAL, migrations by `user_version`).
//!
//! [`SiteStore`] is the small synchronous trait a PostgreSQL registry can
//! implement later; [`Registry`] runs its calls on tokio's blocking pool so
//! the async runtime never waits on disk. Every method takes `now` (Unix
//! seconds) from the caller, so expiry is testable without a real clock.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use thiserror::Error;

use keyway_proto::pair::PairErrorKind;

/// Registry failures.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The database failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A site with that name exists.
    #[error("site {0:?} already exists")]
    SiteExists(String),
    /// No site with that name.
    #[error("no site named {0:?}; `keyway-relay site list` shows the sites")]
    NoSuchSite(String),
    /// Another live code has this public id (the caller draws a new code).
    #[error("code id collision")]
    CodeIdTaken,
    /// A pairing code was refused.
    #[error("{}", .0.message())]
    Code(CodeRefusal),
    /// The blocking task died.
    #[error("registry task failed: {0}")]
    Task(String),
}

/// Why a pairing code cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefusal {
    /// No pending pairing has this code.
    Unknown,
    /// Its time ran out.
    Expired,
    /// It was used already.
    Used,
    /// Too many tries.
    Burned,
}

impl CodeRefusal {
    /// The wire error kind.
    pub fn kind(self) -> PairErrorKind {
        match self {
            Self::Unknown => PairErrorKind::WrongCode,
            Self::Expired => PairErrorKind::Expired,
            Self::Used => PairErrorKind::Used,
            Self::Burned => PairErrorKind::Burned,
        }
    }

    /// What to tell the person holding the code.
    pub fn message(self) -> &'static str {
        match self {
            Self::Unknown => "no pairing is waiting for this code: check it, or ask the relay operator for a new one",
            Self::Expired => {
                "this pairing code has expired: ask the relay operator for a new one (keyway-relay site code NAME)"
            }
            Self::Used => "this pairing code was already used: ask the relay operator for a new one",
            Self::Burned => {
                "this pairing code was tried too many times and is dead: ask the relay operator for a new one"
            }
        }
    }
}

/// A pending code, found by its public id.
#[derive(Debug, Clone)]
pub struct PendingCode {
    /// The site it pairs.
    pub site: String,
    /// PBKDF2 hash of the code (the SPAKE2 password).
    pub hash: [u8; 32],
}

/// A site as `site list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SiteRecord {
    /// Name.
    pub name: String,
    /// Whether an agent holds a valid certificate.
    pub paired: bool,
    /// Serial of the current certificate.
    pub cert_serial: Option<String>,
    /// When the agent last connected or reported (Unix seconds).
    pub last_seen: Option<i64>,
    /// Whether the relay lists the agent as connected.
    pub online: bool,
    /// The agent's version at its last connection.
    pub agent_version: Option<String>,
    /// Whether the agent reached the console at its last report.
    pub console_ok: Option<bool>,
    /// What the agent last said is wrong with the console (e.g. its
    /// certificate changed, with both fingerprints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_problem: Option<String>,
    /// Two agents with one identity were seen taking the site from each
    /// other, with both addresses (cleared once one connection holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<String>,
    /// A pending pairing code expires at (Unix seconds).
    pub code_expires: Option<i64>,
    /// `quic` or `tcp` while the agent is connected.
    pub transport: Option<String>,
}

/// Whether a certificate may open a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAdmission {
    /// Current and not revoked.
    Allowed,
    /// No such site.
    UnknownSite,
    /// The certificate was revoked or replaced by a later pairing.
    Revoked,
}

/// Storage behind the registry. Blocking; call through [`Registry`].
pub trait SiteStore: Send + Sync + 'static {
    /// Creates a site.
    fn add_site(&self, name: &str, now: i64) -> Result<(), RegistryError>;
    /// Sets the site's pairing code (the previous one dies). Fails with
    /// [`RegistryError::CodeIdTaken`] if another site's live code has the same id.
    fn set_code(
        &self,
        site: &str,
        code_id: &str,
        hash: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<(), RegistryError>;
    /// Looks a code up for a pairing attempt and counts the try.
    fn begin_pairing(&self, code_id: &str, max_tries: u32, now: i64) -> Result<PendingCode, RegistryError>;
    /// Marks the code used and records the new certificate. Exactly one of
    /// concurrent callers for a code succeeds.
    fn complete_pairing(&self, code_id: &str, serial: &str, now: i64) -> Result<String, RegistryError>;
    /// All sites.
    fn list_sites(&self) -> Result<Vec<SiteRecord>, RegistryError>;
    /// Revokes the site's certificate; returns its serial if it had one.
    fn revoke(&self, site: &str, now: i64) -> Result<Option<String>, RegistryError>;
    /// Whether this site's certificate `serial` may connect.
    fn agent_admission(&self, site: &str, serial: &str) -> Result<AgentAdmission, RegistryError>;
    /// Records an agent's connection state.
    /// `transport` is `Some("quic" | "tcp")` while connected, `None` once gone.
    fn record_seen(
        &self,
        site: &str,
        agent_version: &str,
        transport: Option<&str>,
        now: i64,
    ) -> Result<(), RegistryError>;
    /// Records whether the site's agent reaches its console, and what is
    /// wrong with it if something is.
    fn record_console(&self, site: &str, ok: bool, problem: Option<&str>) -> Result<(), RegistryError>;
    /// Records (or, with `None`, clears) two agents seen with one identity.
    fn record_duplicate(&self, site: &str, duplicate: Option<&str>) -> Result<(), RegistryError>;
    /// Changes whenever another process commits (for cache refresh).
    fn data_version(&self) -> Result<i64, RegistryError>;
}

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        cert_serial TEXT,
        paired_at INTEGER,
        agent_version TEXT,
        last_seen INTEGER,
        online INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE codes (
        code_id TEXT PRIMARY KEY,
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        hash BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        used_at INTEGER
     );
     CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER
     );",
    // 2: console reachability as the agent last reported it.
    "ALTER TABLE sites ADD COLUMN console_ok INTEGER;",
    // 3: which transport carries the agent's tunnel.
    "ALTER TABLE sites ADD COLUMN transport TEXT;",
    // 4: what the agent last said is wrong with its console.
    "ALTER TABLE sites ADD COLUMN console_problem TEXT;",
    // 5: two agents seen with one identity.
    "ALTER TABLE sites ADD COLUMN duplicate TEXT;",
];

/// site, hash, expires_at, tries, used_at.
type CodeRow = (String, Vec<u8>, i64, i64, Option<i64>);

/// The SQLite implementation.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R, RegistryError>) -> Result<R, RegistryError> {
        f(&mut self.conn.lock().expect("registry lock poisoned"))
    }
}

/// A UNIQUE/PRIMARY KEY violation: the row exists already.
fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn site_exists(c: &Connection, site: &str) -> Result<bool, RegistryError> {
    Ok(c.query_row("SELECT 1 FROM sites WHERE name = ?1", [site], |_| Ok(()))
        .optional()?
        .is_some())
}

impl SiteStore for SqliteStore {
    fn add_site(&self, name: &str, now: i64) -> Result<(), RegistryError> {
        self.with(|c| {
            match c.execute(
                "INSERT INTO sites (name, created_at) VALUES (?1, ?2)",
                params![name, now],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(RegistryError::SiteExists(name.into())),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn set_code(
        &self,
        site: &str,
        code_id: &str,
        hash: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<(), RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !site_exists(&tx, site)? {
                return Err(RegistryError::NoSuchSite(site.into()));
            }
            tx.execute("DELETE FROM codes WHERE site = ?1", [site])?;
            tx.execute(
                "DELETE FROM codes WHERE code_id = ?1 AND (used_at IS NOT NULL OR expires_at <= ?2)",
                params![code_id, now],
            )?;
            match tx.execute(
                "INSERT INTO codes (code_id, site, hash, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![code_id, site, &hash[..], expires_at],
            ) {
                Ok(_) => {}
                Err(e) if is_constraint(&e) => return Err(RegistryError::CodeIdTaken),
                Err(e) => return Err(e.into()),
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn begin_pairing(&self, code_id: &str, max_tries: u32, now: i64) -> Result<PendingCode, RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<CodeRow> = tx
                .query_row(
                    "SELECT site, hash, expires_at, tries, used_at FROM codes WHERE code_id = ?1",
                    [code_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((site, hash, expires_at, tries, used_at)) = row else {
                return Err(RegistryError::Code(CodeRefusal::Unknown));
            };
            let refusal = if used_at.is_some() {
                Some(CodeRefusal::Used)
            } else if tries >= max_tries as i64 {
                Some(CodeRefusal::Burned)
            } else if now >= expires_at {
                Some(CodeRefusal::Expired)
            } else {
                None
            };
            if let Some(r) = refusal {
                return Err(RegistryError::Code(r));
            }
            // Every attempt counts as a try until one succeeds: a wrong code
            // shows only as a failed proof, which the relay may never see.
            tx.execute("UPDATE codes SET tries = tries + 1 WHERE code_id = ?1", [code_id])?;
            tx.commit()?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| RegistryError::Task("corrupt code hash".into()))?;
            Ok(PendingCode { site, hash })
        })
    }

    fn complete_pairing(&self, code_id: &str, serial: &str, now: i64) -> Result<String, RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let won = tx.execute(
                "UPDATE codes SET used_at = ?2 WHERE code_id = ?1 AND used_at IS NULL",
                params![code_id, now],
            )?;
            if won != 1 {
                return Err(RegistryError::Code(CodeRefusal::Used));
            }
            let site: String = tx.query_row("SELECT site FROM codes WHERE code_id = ?1", [code_id], |r| r.get(0))?;
            // A new pairing supersedes the site's previous certificate.
            tx.execute(
                "UPDATE certs SET revoked_at = ?2 WHERE site = ?1 AND revoked_at IS NULL",
                params![site, now],
            )?;
            tx.execute(
                "INSERT INTO certs (serial, site, issued_at) VALUES (?1, ?2, ?3)",
                params![serial, site, now],
            )?;
            tx.execute(
                "UPDATE sites SET cert_serial = ?2, paired_at = ?3 WHERE name = ?1",
                params![site, serial, now],
            )?;
            tx.commit()?;
            Ok(site)
        })
    }

    fn list_sites(&self) -> Result<Vec<SiteRecord>, RegistryError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT s.name, s.cert_serial, s.last_seen, s.online, s.agent_version,
                        (SELECT MAX(expires_at) FROM codes k WHERE k.site = s.name AND k.used_at IS NULL),
                        s.console_ok, s.transport, s.console_problem, s.duplicate
                 FROM sites s ORDER BY s.name",
            )?;
            let rows = stmt.query_map([], |r| {
                let serial: Option<String> = r.get(1)?;
                Ok(SiteRecord {
                    name: r.get(0)?,
                    paired: serial.is_some(),
                    cert_serial: serial,
                    last_seen: r.get(2)?,
                    online: r.get::<_, i64>(3)? != 0,
                    agent_version: r.get(4)?,
                    code_expires: r.get(5)?,
                    console_ok: r.get::<_, Option<i64>>(6)?.map(|v| v != 0),
                    transport: r.get(7)?,
                    console_problem: r.get(8)?,
                    duplicate: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke(&self, site: &str, now: i64) -> Result<Option<String>, RegistryError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !site_exists(&tx, site)? {
                return Err(RegistryError::NoSuchSite(site.into()));
            }
            let serial: Option<String> =
                tx.query_row("SELECT cert_serial FROM sites WHERE name = ?1", [site], |r| r.get(0))?;
            tx.execute(
                "UPDATE certs SET revoked_at = ?2 WHERE site = ?1 AND revoked_at IS NULL",
                params![site, now],
            )?;
            tx.execute(
                "UPDATE sites SET cert_serial = NULL, online = 0 WHERE name = ?1",
                [site],
            )?;
            tx.execute("DELETE FROM codes WHERE site = ?1", [site])?;
            tx.commit()?;
            Ok(serial)
        })
    }

    fn agent_admission(&self, site: &str, serial: &str) -> Result<AgentAdmission, RegistryError> {
        self.with(|c| {
            let current: Option<Option<String>> = c
                .query_row("SELECT cert_serial FROM sites WHERE name = ?1", [site], |r| r.get(0))
                .optional()?;
            Ok(match current {
                None => AgentAdmission::UnknownSite,
                Some(Some(s)) if s == serial => AgentAdmission::Allowed,
                Some(_) => AgentAdmission::Revoked,
            })
        })
    }

    fn record_seen(
        &self,
        site: &str,
        agent_version: &str,
        transport: Option<&str>,
        now: i64,
    ) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "UPDATE sites SET last_seen = ?2, agent_version = ?3, online = ?4, transport = ?5 WHERE name = ?1",
                params![site, now, agent_version, transport.is_some() as i64, transport],
            )?;
            Ok(())
        })
    }

    fn record_console(&self, site: &str, ok: bool, problem: Option<&str>) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "UPDATE sites SET console_ok = ?2, console_problem = ?3 WHERE name = ?1",
                params![site, ok as i64, problem],
            )?;
            Ok(())
        })
    }

    fn record_duplicate(&self, site: &str, duplicate: Option<&str>) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "UPDATE sites SET duplicate = ?2 WHERE name = ?1",
                params![site, duplicate],
            )?;
            Ok(())
        })
    }

    fn data_version(&self) -> Result<i64, RegistryError> {
        self.with(|c| Ok(c.query_row("PRAGMA data_version", [], |r| r.get(0))?))
    }
}

/// Async access to a [`SiteStore`]: every call runs on the blocking pool.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn SiteStore>,
}

impl Registry {
    /// Opens the SQLite registry at `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        Ok(Self {
            store: Arc::new(SqliteStore::open(path)?),
        })
    }

    /// Runs `f` against the store off the async runtime.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn SiteStore) -> Result<R, RegistryError> + Send + 'static,
    ) -> Result<R, RegistryError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))?
    }

    /// The store, for synchronous callers (the admin CLI).
    pub fn blocking(&self) -> &dyn SiteStore {
        self.store.as_ref()
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("r.db")).unwrap();
        (dir, s)
    }

    fn code_err(r: Result<impl std::fmt::Debug, RegistryError>) -> CodeRefusal {
        match r {
            Err(RegistryError::Code(c)) => c,
            other => panic!("expected a code refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_code_pairs_once_then_is_used() {
        let (_d, s) = store();
        s.add_site("hq", 0).unwrap();
        assert!(matches!(s.add_site("hq", 0), Err(RegistryError::SiteExists(_))));
        s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
        assert_eq!(s.begin_pairing("ABC", 5, 10).unwrap().site, "hq");
        assert_eq!(s.complete_pairing("ABC", "serial-1", 11).unwrap(), "hq");
        assert_eq!(code_err(s.begin_pairing("ABC", 5, 12)), CodeRefusal::Used);
        assert_eq!(code_err(s.complete_pairing("ABC", "serial-2", 12)), CodeRefusal::Used);
        assert_eq!(s.agent_admission("hq", "serial-1").unwrap(), AgentAdmission::Allowed);
        assert_eq!(s.agent_admission("hq", "serial-2").unwrap(), AgentAdmission::Revoked);
        assert_eq!(
            s.agent_admission("nope", "serial-1").unwrap(),
            AgentAdmission::UnknownSite
        );
        let list = s.list_sites().unwrap();
        assert!(list[0].paired && list[0].code_expires.is_none());
    }

    #[test]
    fn codes_expire_burn_and_die_when_replaced() {
        let (_d, s) = store();
        s.add_site("hq", 0).unwrap();
        s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
        assert_eq!(code_err(s.begin_pairing("ABC", 5, 900)), CodeRefusal::Expired);
        assert_eq!(code_err(s.begin_pairing("XYZ", 5, 1)), CodeRefusal::Unknown);

        s.set_code("hq", "DEF", &[2; 32], 900, 0).unwrap();
        assert_eq!(
            code_err(s.begin_pairing("ABC", 5, 1)),
            CodeRefusal::Unknown,
            "the old code died"
        );
        for _ in 0..5 {
            s.begin_pairing("DEF", 5, 1).unwrap();
        }
        assert_eq!(code_err(s.begin_pairing("DEF", 5, 1)), CodeRefusal::Burned);
        assert!(matches!(
            s.set_code("ghost", "GGG", &[0; 32], 9, 0),
            Err(RegistryError::NoSuchSite(_))
        ));
        // Another site's live code with the same public id blocks the id.
        s.add_site("branch", 0).unwrap();
        assert!(matches!(
            s.set_code("branch", "DEF", &[3; 32], 900, 1),
            Err(RegistryError::CodeIdTaken)
        ));
    }

    #[test]
    fn concurrent_completions_have_exactly_one_winner() {
        let (d, s) = store();
        s.add_site("hq", 0).unwrap();
        s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
        drop(s);
        let path = d.path().join("r.db");
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = path.clone();
                    scope.spawn(move || {
                        SqliteStore::open(&path)
                            .unwrap()
                            .complete_pairing("ABC", &format!("s{i}"), 5)
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap() as usize).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn revoke_refuses_the_certificate_and_survives_reopen() {
        let (d, s) = store();
        s.add_site("hq", 0).unwrap();
        s.set_code("hq", "ABC", &[1; 32], 900, 0).unwrap();
        s.begin_pairing("ABC", 5, 1).unwrap();
        s.complete_pairing("ABC", "serial-1", 1).unwrap();
        let v0 = s.data_version().unwrap();
        let other = SqliteStore::open(&d.path().join("r.db")).unwrap();
        assert_eq!(other.revoke("hq", 2).unwrap().as_deref(), Some("serial-1"));
        assert_ne!(s.data_version().unwrap(), v0, "the relay sees another process's change");
        assert_eq!(s.agent_admission("hq", "serial-1").unwrap(), AgentAdmission::Revoked);
        drop(s);
        let reopened = SqliteStore::open(&d.path().join("r.db")).unwrap();
        assert!(!reopened.list_sites().unwrap()[0].paired);
    }
}
