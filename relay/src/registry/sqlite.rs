//! The registry in SQLite (WAL, migrations by `user_version`): one relay,
//! nothing else to run.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{AgentAdmission, CodeRefusal, OperatorRecord, PendingCode, RegistryError, SiteRecord, SiteStore};

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
    // 6: operators of the web console.
    "CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until INTEGER NOT NULL DEFAULT 0,
        last_sign_in INTEGER
     );",
    // 7: per-site limits over relay.toml's (JSON).
    "ALTER TABLE sites ADD COLUMN limits TEXT;",
    // 8: where the site's TLS ends (zero-knowledge sites: at the agent).
    "ALTER TABLE sites ADD COLUMN terminate TEXT NOT NULL DEFAULT 'relay';",
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
                        s.console_ok, s.transport, s.console_problem, s.duplicate, s.paired_at,
                        s.limits, s.terminate
                 FROM sites s ORDER BY s.name",
            )?;
            let rows = stmt.query_map([], |r| {
                let serial: Option<String> = r.get(1)?;
                let paired = serial.is_some();
                let name: String = r.get(0)?;
                let limits = super::parse_limits(&name, r.get::<_, Option<String>>(11)?.as_deref());
                Ok(SiteRecord {
                    limits,
                    terminate: super::Terminate::parse(&r.get::<_, String>(12)?).unwrap_or_default(),
                    name,
                    paired,
                    cert_serial: serial,
                    last_seen: r.get(2)?,
                    online: r.get::<_, i64>(3)? != 0,
                    agent_version: r.get(4)?,
                    code_expires: r.get(5)?,
                    console_ok: r.get::<_, Option<i64>>(6)?.map(|v| v != 0),
                    transport: r.get(7)?,
                    console_problem: r.get(8)?,
                    duplicate: r.get(9)?,
                    cert_expires: super::cert_expiry(paired, r.get(10)?),
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

    fn set_terminate(&self, site: &str, terminate: super::Terminate) -> Result<(), RegistryError> {
        self.with(|c| {
            match c.execute(
                "UPDATE sites SET terminate = ?2 WHERE name = ?1",
                params![site, terminate.as_str()],
            )? {
                0 => Err(RegistryError::NoSuchSite(site.into())),
                _ => Ok(()),
            }
        })
    }

    fn set_limits(&self, site: &str, limits_json: Option<&str>) -> Result<(), RegistryError> {
        self.with(|c| {
            match c.execute(
                "UPDATE sites SET limits = ?2 WHERE name = ?1",
                params![site, limits_json],
            )? {
                0 => Err(RegistryError::NoSuchSite(site.into())),
                _ => Ok(()),
            }
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

    fn operator_set(&self, name: &str, password_hash: &str, now: i64) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO operators (name, password_hash, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET password_hash = ?2, failures = 0, locked_until = 0",
                params![name, password_hash, now],
            )?;
            Ok(())
        })
    }

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, RegistryError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT name, password_hash, failures, locked_until, last_sign_in FROM operators WHERE name = ?1",
                params![name],
                operator_row,
            )
            .optional()?)
        })
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, RegistryError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, password_hash, failures, locked_until, last_sign_in FROM operators ORDER BY name",
            )?;
            let rows = stmt.query_map([], operator_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn operator_remove(&self, name: &str) -> Result<bool, RegistryError> {
        self.with(|c| Ok(c.execute("DELETE FROM operators WHERE name = ?1", params![name])? > 0))
    }

    fn operator_failed(&self, name: &str, lock_after: u32, lock_until: i64) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "UPDATE operators SET failures = failures + 1,
                    locked_until = CASE WHEN failures + 1 >= ?2 THEN ?3 ELSE locked_until END
                 WHERE name = ?1",
                params![name, lock_after, lock_until],
            )?;
            Ok(())
        })
    }

    fn operator_signed_in(&self, name: &str, now: i64) -> Result<(), RegistryError> {
        self.with(|c| {
            c.execute(
                "UPDATE operators SET failures = 0, locked_until = 0, last_sign_in = ?2 WHERE name = ?1",
                params![name, now],
            )?;
            Ok(())
        })
    }
}

fn operator_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRecord> {
    Ok(OperatorRecord {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        failures: r.get(2)?,
        locked_until: r.get(3)?,
        last_sign_in: r.get(4)?,
    })
}
