//! The registry on PostgreSQL, for several relays sharing one service
//! (`[registry] url = "postgres://…"` in relay.toml).
//!
//! The store trait is synchronous (the SQLite store blocks on disk), so
//! this store drives an async, pooled client (tokio-postgres with
//! deadpool-postgres) on a small runtime of its own: a call from the
//! relay's blocking pool or from the admin CLI waits on that runtime, and
//! connections live there between calls. Schema changes are versioned
//! migrations applied under an advisory lock, so nodes starting together
//! migrate once.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{AgentAdmission, CodeRefusal, Heartbeat, PeerNode, PendingCode, RegistryError, SiteRecord, SiteStore};

/// Connections kept per relay.
const POOL_SIZE: usize = 8;

/// How long a call waits for a connection (PostgreSQL away: fail fast,
/// the relay keeps serving what it holds).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// An arbitrary, fixed key for the migration lock.
const MIGRATION_LOCK: i64 = 0x6b65_7977_6179; // "keyway"

const MIGRATIONS: &[&str] = &[
    // 1: the schema SQLite reached in five steps.
    "CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        cert_serial TEXT,
        paired_at BIGINT,
        agent_version TEXT,
        last_seen BIGINT,
        online BOOLEAN NOT NULL DEFAULT FALSE,
        console_ok BOOLEAN,
        transport TEXT,
        console_problem TEXT,
        duplicate TEXT
     );
     CREATE TABLE codes (
        code_id TEXT PRIMARY KEY,
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        hash BYTEA NOT NULL,
        expires_at BIGINT NOT NULL,
        tries BIGINT NOT NULL DEFAULT 0,
        used_at BIGINT
     );
     CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        issued_at BIGINT NOT NULL,
        revoked_at BIGINT
     );
     -- Bumped by every change, so each relay knows when to reload.
     CREATE TABLE registry_version (
        id INT PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
     );
     INSERT INTO registry_version VALUES (1, 0);
     CREATE FUNCTION keyway_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
        UPDATE registry_version SET version = version + 1 WHERE id = 1;
        RETURN NULL;
     END $$;
     CREATE TRIGGER sites_changed AFTER INSERT OR UPDATE OR DELETE ON sites
        FOR EACH STATEMENT EXECUTE FUNCTION keyway_bump_version();
     CREATE TRIGGER codes_changed AFTER INSERT OR UPDATE OR DELETE ON codes
        FOR EACH STATEMENT EXECUTE FUNCTION keyway_bump_version();
     CREATE TRIGGER certs_changed AFTER INSERT OR UPDATE OR DELETE ON certs
        FOR EACH STATEMENT EXECUTE FUNCTION keyway_bump_version();",
    // 2: relay nodes and the agent links each holds (`[cluster]`).
    "CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        peer_addr TEXT NOT NULL,
        agent_addr TEXT,
        seen_at TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE node_links (
        site TEXT NOT NULL,
        node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
        PRIMARY KEY (site, node)
     );
     CREATE INDEX node_links_by_node ON node_links (node);",
];

/// The PostgreSQL implementation.
pub struct PgStore {
    pool: Pool,
    /// Drives the connections; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for PgStore {
    /// The last handle may go inside the relay's runtime, where a runtime
    /// may not block to shut down: this one stops in the background.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or any
    /// libpq-style string) and applies the migrations it lacks.
    pub fn connect(url: &str) -> Result<Self, RegistryError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| RegistryError::Config(format!("registry url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("keyway-relay");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("registry-pg")
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Task(format!("registry runtime: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| RegistryError::Config(format!("registry pool: {e}")))?;
        let store = Self { pool, rt: Some(rt) };
        store.run(|mut c| async move { migrate(&mut c).await })?;
        Ok(store)
    }

    /// Runs `f` with a pooled connection, on this store's runtime.
    fn run<R, F>(&self, f: impl FnOnce(deadpool_postgres::Object) -> F) -> Result<R, RegistryError>
    where
        F: std::future::Future<Output = Result<R, RegistryError>>,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| RegistryError::Task("registry closed".into()))?;
        rt.block_on(async {
            let conn = self.pool.get().await.map_err(pool_error)?;
            f(conn).await.map_err(unavailable_if_gone)
        })
    }
}

/// A connection-level failure (the server went away mid-call) is the
/// database being unavailable, not a refusal.
fn unavailable_if_gone(e: RegistryError) -> RegistryError {
    match e {
        RegistryError::Postgres(pg) if gone(&pg) => RegistryError::Unavailable(pg.to_string()),
        other => other,
    }
}

/// The connection closed or broke (as opposed to the server refusing the
/// statement, or our side failing to encode a parameter: a bug to report,
/// not an outage to ride out).
fn gone(pg: &tokio_postgres::Error) -> bool {
    pg.is_closed() || std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>())
}

fn pool_error(e: deadpool_postgres::PoolError) -> RegistryError {
    match e {
        deadpool_postgres::PoolError::Backend(e) if e.code().is_some() => e.into(),
        other => RegistryError::Unavailable(other.to_string()),
    }
}

async fn migrate(c: &mut deadpool_postgres::Object) -> Result<(), RegistryError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS keyway_migrations (version INT PRIMARY KEY)")
        .await?;
    let done: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM keyway_migrations", &[])
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO keyway_migrations VALUES ($1)", &[&(i as i32 + 1)])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

async fn site_exists(c: &impl GenericClient, site: &str) -> Result<bool, RegistryError> {
    Ok(c.query_opt("SELECT 1 FROM sites WHERE name = $1", &[&site])
        .await?
        .is_some())
}

impl SiteStore for PgStore {
    fn add_site(&self, name: &str, now: i64) -> Result<(), RegistryError> {
        self.run(|c| async move {
            match c
                .execute("INSERT INTO sites (name, created_at) VALUES ($1, $2)", &[&name, &now])
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(RegistryError::SiteExists(name.into())),
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
        self.run(|mut c| async move {
            let tx = c.transaction().await?;
            if !site_exists(&tx, site).await? {
                return Err(RegistryError::NoSuchSite(site.into()));
            }
            tx.execute("DELETE FROM codes WHERE site = $1", &[&site]).await?;
            tx.execute(
                "DELETE FROM codes WHERE code_id = $1 AND (used_at IS NOT NULL OR expires_at <= $2)",
                &[&code_id, &now],
            )
            .await?;
            let inserted = tx
                .execute(
                    "INSERT INTO codes (code_id, site, hash, expires_at) VALUES ($1, $2, $3, $4)",
                    &[&code_id, &site, &&hash[..], &expires_at],
                )
                .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Err(RegistryError::CodeIdTaken),
                Err(e) => return Err(e.into()),
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn begin_pairing(&self, code_id: &str, max_tries: u32, now: i64) -> Result<PendingCode, RegistryError> {
        self.run(|mut c| async move {
            let tx = c.transaction().await?;
            // FOR UPDATE: concurrent attempts at one code, through any
            // relay, count one after the other in one counter.
            let row = tx
                .query_opt(
                    "SELECT site, hash, expires_at, tries, used_at FROM codes WHERE code_id = $1 FOR UPDATE",
                    &[&code_id],
                )
                .await?;
            let Some(row) = row else {
                return Err(RegistryError::Code(CodeRefusal::Unknown));
            };
            let (site, hash, expires_at, tries, used_at): (String, Vec<u8>, i64, i64, Option<i64>) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let refusal = if used_at.is_some() {
                Some(CodeRefusal::Used)
            } else if tries >= i64::from(max_tries) {
                Some(CodeRefusal::Burned)
            } else if now >= expires_at {
                Some(CodeRefusal::Expired)
            } else {
                None
            };
            if let Some(r) = refusal {
                return Err(RegistryError::Code(r));
            }
            tx.execute("UPDATE codes SET tries = tries + 1 WHERE code_id = $1", &[&code_id])
                .await?;
            tx.commit().await?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| RegistryError::Task("corrupt code hash".into()))?;
            Ok(PendingCode { site, hash })
        })
    }

    fn complete_pairing(&self, code_id: &str, serial: &str, now: i64) -> Result<String, RegistryError> {
        self.run(|mut c| async move {
            let tx = c.transaction().await?;
            let won = tx
                .query_opt(
                    "UPDATE codes SET used_at = $2 WHERE code_id = $1 AND used_at IS NULL RETURNING site",
                    &[&code_id, &now],
                )
                .await?;
            let Some(won) = won else {
                return Err(RegistryError::Code(CodeRefusal::Used));
            };
            let site: String = won.get(0);
            // A new pairing supersedes the site's previous certificate.
            tx.execute(
                "UPDATE certs SET revoked_at = $2 WHERE site = $1 AND revoked_at IS NULL",
                &[&site, &now],
            )
            .await?;
            tx.execute(
                "INSERT INTO certs (serial, site, issued_at) VALUES ($1, $2, $3)",
                &[&serial, &site, &now],
            )
            .await?;
            tx.execute(
                "UPDATE sites SET cert_serial = $2, paired_at = $3 WHERE name = $1",
                &[&site, &serial, &now],
            )
            .await?;
            tx.commit().await?;
            Ok(site)
        })
    }

    fn list_sites(&self) -> Result<Vec<SiteRecord>, RegistryError> {
        self.run(|c| async move {
            let rows = c
                .query(
                    "SELECT s.name, s.cert_serial, s.last_seen, s.online, s.agent_version,
                            (SELECT MAX(expires_at) FROM codes k WHERE k.site = s.name AND k.used_at IS NULL),
                            s.console_ok, s.transport, s.console_problem, s.duplicate
                     FROM sites s ORDER BY s.name",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let serial: Option<String> = r.get(1);
                    SiteRecord {
                        name: r.get(0),
                        paired: serial.is_some(),
                        cert_serial: serial,
                        last_seen: r.get(2),
                        online: r.get(3),
                        agent_version: r.get(4),
                        code_expires: r.get(5),
                        console_ok: r.get(6),
                        transport: r.get(7),
                        console_problem: r.get(8),
                        duplicate: r.get(9),
                    }
                })
                .collect())
        })
    }

    fn revoke(&self, site: &str, now: i64) -> Result<Option<String>, RegistryError> {
        self.run(|mut c| async move {
            let tx = c.transaction().await?;
            let Some(row) = tx
                .query_opt("SELECT cert_serial FROM sites WHERE name = $1 FOR UPDATE", &[&site])
                .await?
            else {
                return Err(RegistryError::NoSuchSite(site.into()));
            };
            let serial: Option<String> = row.get(0);
            tx.execute(
                "UPDATE certs SET revoked_at = $2 WHERE site = $1 AND revoked_at IS NULL",
                &[&site, &now],
            )
            .await?;
            tx.execute(
                "UPDATE sites SET cert_serial = NULL, online = FALSE WHERE name = $1",
                &[&site],
            )
            .await?;
            tx.execute("DELETE FROM codes WHERE site = $1", &[&site]).await?;
            tx.commit().await?;
            Ok(serial)
        })
    }

    fn agent_admission(&self, site: &str, serial: &str) -> Result<AgentAdmission, RegistryError> {
        self.run(|c| async move {
            let row = c
                .query_opt("SELECT cert_serial FROM sites WHERE name = $1", &[&site])
                .await?;
            Ok(match row.map(|r| r.get::<_, Option<String>>(0)) {
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
        self.run(|c| async move {
            c.execute(
                "UPDATE sites SET last_seen = $2, agent_version = $3, online = $4, transport = $5 WHERE name = $1",
                &[&site, &now, &agent_version, &transport.is_some(), &transport],
            )
            .await?;
            Ok(())
        })
    }

    fn record_console(&self, site: &str, ok: bool, problem: Option<&str>) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute(
                "UPDATE sites SET console_ok = $2, console_problem = $3 WHERE name = $1",
                &[&site, &ok, &problem],
            )
            .await?;
            Ok(())
        })
    }

    fn record_duplicate(&self, site: &str, duplicate: Option<&str>) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute("UPDATE sites SET duplicate = $2 WHERE name = $1", &[&site, &duplicate])
                .await?;
            Ok(())
        })
    }

    fn node_heartbeat(&self, beat: &Heartbeat, fresh: Duration) -> Result<Vec<String>, RegistryError> {
        let fresh_ms = fresh.as_millis() as f64;
        let (node, sites) = (&beat.node, &beat.sites);
        self.run(|mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO nodes (name, peer_addr, agent_addr, seen_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (name) DO UPDATE SET peer_addr = $2, agent_addr = $3, seen_at = now()",
                &[node, &beat.peer_addr, &beat.agent_addr],
            )
            .await?;
            tx.execute(
                "DELETE FROM node_links WHERE node = $1 AND NOT (site = ANY($2))",
                &[node, sites],
            )
            .await?;
            tx.execute(
                "INSERT INTO node_links (site, node) SELECT s, $1 FROM unnest($2::text[]) AS s
                 ON CONFLICT DO NOTHING",
                &[node, sites],
            )
            .await?;
            let live = tx
                .query(
                    "SELECT agent_addr FROM nodes
                     WHERE agent_addr IS NOT NULL AND seen_at > now() - make_interval(secs => $1::float8 / 1000.0)
                     ORDER BY name",
                    &[&fresh_ms],
                )
                .await?;
            tx.commit().await?;
            Ok(live.iter().map(|r| r.get(0)).collect())
        })
    }

    fn nodes_for_site(&self, site: &str, except: &str, fresh: Duration) -> Result<Vec<PeerNode>, RegistryError> {
        let fresh_ms = fresh.as_millis() as f64;
        self.run(|c| async move {
            let rows = c
                .query(
                    "SELECT n.name, n.peer_addr FROM node_links l JOIN nodes n ON n.name = l.node
                     WHERE l.site = $1 AND l.node <> $2
                       AND n.seen_at > now() - make_interval(secs => $3::float8 / 1000.0)
                     ORDER BY n.seen_at DESC",
                    &[&site, &except, &fresh_ms],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| PeerNode {
                    name: r.get(0),
                    peer_addr: r.get(1),
                })
                .collect())
        })
    }

    fn node_leave(&self, node: &str) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute("DELETE FROM nodes WHERE name = $1", &[&node]).await?;
            Ok(())
        })
    }

    fn data_version(&self) -> Result<i64, RegistryError> {
        self.run(|c| async move {
            Ok(c.query_one("SELECT version FROM registry_version WHERE id = 1", &[])
                .await?
                .get(0))
        })
    }
}
