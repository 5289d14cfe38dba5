//! The registry on PostgreSQL, for several relays sharing one service
//! (`[registry] url = "postgres://…"` in relay.toml).
//!
//! The store trait is synchronous (the SQLite store blocks on disk), so
//! this store drives an async, pooled client (tokio-postgres with
//! deadpool-postgres) on a small runtime of its own: a call from the
//! relay's blocking pool or from the admin CLI waits on that runtime, and
//! connections live there between calls. Schema changes are versioned
//! migrations applied under an advisory lock, so nodes starting together
//! migrate once. TLS to the database is optional (`tls_ca_file`), with
//! rustls (tokio-postgres-rustls: the connector glue, channel binding
//! included, kept by the people who keep the driver's ecosystem).

use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    AcmeCert, AcmeSnapshot, AgentAdmission, CodeRefusal, Heartbeat, LeaderGuard, OperatorRecord, PeerNode, PendingCode,
    RegistryError, SiteRecord, SiteStore,
};

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
    // 3: ACME state shared by the nodes: whichever node the CA reaches
    // answers the challenge, and every node serves the certificate.
    "CREATE TABLE acme_accounts (
        directory TEXT PRIMARY KEY,
        credentials TEXT NOT NULL
     );
     CREATE TABLE acme_cert (
        id INT PRIMARY KEY CHECK (id = 1),
        chain_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        version BIGINT NOT NULL
     );
     CREATE TABLE acme_challenges (
        name TEXT PRIMARY KEY,
        digest BYTEA NOT NULL,
        expires_at BIGINT NOT NULL
     );",
    // 4: operators of the web console.
    "CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        failures BIGINT NOT NULL DEFAULT 0,
        locked_until BIGINT NOT NULL DEFAULT 0,
        last_sign_in BIGINT
     );",
    // 5: per-site limits over relay.toml's (JSON).
    "ALTER TABLE sites ADD COLUMN limits TEXT;",
    // 6: where the site's TLS ends (zero-knowledge sites: at the agent).
    "ALTER TABLE sites ADD COLUMN terminate TEXT NOT NULL DEFAULT 'relay';",
];

/// How recent a node's heartbeat must be for its links to count a site
/// online in `site list` (three of the slowest heartbeats, 1 s, and slack).
const LINK_LIVE: Duration = Duration::from_secs(5);

/// The advisory lock one node holds while it orders certificates.
const ACME_LOCK: i64 = 0x6b65_7977_6163; // "keywac"

/// The PostgreSQL implementation.
pub struct PgStore {
    pool: Pool,
    /// For connections of their own (the ACME leader's session lock).
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
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
        Self::connect_with(url, None)
    }

    /// [`PgStore::connect`], over TLS verified against `tls_ca` when given
    /// (then required: never a silent fall-back to plain text).
    pub fn connect_with(url: &str, tls_ca: Option<&std::path::Path>) -> Result<Self, RegistryError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| RegistryError::Config(format!("registry url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("keyway-relay");
        let tls = tls_ca.map(tls_connector).transpose()?;
        if tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), recycling()),
            None => Manager::from_config(config.clone(), NoTls, recycling()),
        };
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
        let store = Self {
            pool,
            config,
            tls,
            rt: Some(rt),
        };
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

/// TLS toward the database, trusting only the CA in `ca` (PEM): the
/// ring provider like every other TLS in the relay.
fn tls_connector(ca: &std::path::Path) -> Result<MakeRustlsConnect, RegistryError> {
    let config_error = |e: &dyn std::fmt::Display| RegistryError::Config(format!("registry tls_ca_file: {e}"));
    let pem = std::fs::read(ca).map_err(|e| config_error(&format!("{}: {e}", ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in keyway_certs::files::certs_from_pem(&ca.display().to_string(), &pem).map_err(|e| config_error(&e))? {
        roots.add(cert).map_err(|e| config_error(&e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(keyway_certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
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
        other => RegistryError::Unavailable(with_causes(&other)),
    }
}

/// `e` and every cause under it ("error connecting to server: invalid
/// peer certificate: UnknownIssuer"): the cause is what an operator needs.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
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
                    // Online: as the last link's node recorded it, or
                    // while a live node still holds a link (an agent keeps
                    // two; one dropping leaves the site up).
                    "SELECT s.name, s.cert_serial, s.last_seen,
                            s.online OR EXISTS (
                                SELECT 1 FROM node_links l JOIN nodes n ON n.name = l.node
                                WHERE l.site = s.name AND n.seen_at > now() - make_interval(secs => $1::float8)),
                            s.agent_version,
                            (SELECT MAX(expires_at) FROM codes k WHERE k.site = s.name AND k.used_at IS NULL),
                            s.console_ok, s.transport, s.console_problem, s.duplicate, s.paired_at,
                            s.limits, s.terminate
                     FROM sites s ORDER BY s.name",
                    &[&(LINK_LIVE.as_secs() as f64)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let serial: Option<String> = r.get(1);
                    let paired = serial.is_some();
                    let name: String = r.get(0);
                    let limits = super::parse_limits(&name, r.get::<_, Option<String>>(11).as_deref());
                    SiteRecord {
                        limits,
                        terminate: super::Terminate::parse(&r.get::<_, String>(12)).unwrap_or_default(),
                        name,
                        paired,
                        cert_serial: serial,
                        last_seen: r.get(2),
                        online: r.get(3),
                        agent_version: r.get(4),
                        code_expires: r.get(5),
                        console_ok: r.get(6),
                        transport: r.get(7),
                        console_problem: r.get(8),
                        duplicate: r.get(9),
                        cert_expires: super::cert_expiry(paired, r.get(10)),
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

    fn set_terminate(&self, site: &str, terminate: super::Terminate) -> Result<(), RegistryError> {
        self.run(|c| async move {
            match c
                .execute(
                    "UPDATE sites SET terminate = $2 WHERE name = $1",
                    &[&site, &terminate.as_str()],
                )
                .await?
            {
                0 => Err(RegistryError::NoSuchSite(site.into())),
                _ => Ok(()),
            }
        })
    }

    fn set_limits(&self, site: &str, limits_json: Option<&str>) -> Result<(), RegistryError> {
        self.run(|c| async move {
            match c
                .execute("UPDATE sites SET limits = $2 WHERE name = $1", &[&site, &limits_json])
                .await?
            {
                0 => Err(RegistryError::NoSuchSite(site.into())),
                _ => Ok(()),
            }
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
                    "SELECT n.name, n.peer_addr, n.seen_at > now() - make_interval(secs => $3::float8 / 1000.0)
                     FROM node_links l JOIN nodes n ON n.name = l.node
                     WHERE l.site = $1 AND l.node <> $2
                       AND n.seen_at > now() - make_interval(secs => $4::float8)
                     ORDER BY n.seen_at DESC",
                    &[&site, &except, &fresh_ms, &(super::STALE_LISTED.as_secs() as f64)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| PeerNode {
                    name: r.get(0),
                    peer_addr: r.get(1),
                    fresh: r.get(2),
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

    fn acme_snapshot(&self, now: i64) -> Result<AcmeSnapshot, RegistryError> {
        self.run(|c| async move {
            let row = c
                .query_one(
                    "SELECT COALESCE((SELECT version FROM acme_cert WHERE id = 1), 0),
                            COALESCE(array_agg(name ORDER BY name), '{}'),
                            COALESCE(array_agg(digest ORDER BY name), '{}')
                     FROM acme_challenges WHERE expires_at > $1",
                    &[&now],
                )
                .await?;
            let (names, digests): (Vec<String>, Vec<Vec<u8>>) = (row.get(1), row.get(2));
            Ok(AcmeSnapshot {
                cert_version: row.get(0),
                challenges: names.into_iter().zip(digests).collect(),
            })
        })
    }

    fn acme_cert(&self) -> Result<Option<AcmeCert>, RegistryError> {
        self.run(|c| async move {
            let row = c
                .query_opt("SELECT chain_pem, key_pem, version FROM acme_cert WHERE id = 1", &[])
                .await?;
            Ok(row.map(|r| AcmeCert {
                chain_pem: r.get(0),
                key_pem: r.get(1),
                version: r.get(2),
            }))
        })
    }

    fn acme_store_cert(&self, chain_pem: &str, key_pem: &str) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute(
                "INSERT INTO acme_cert (id, chain_pem, key_pem, version) VALUES (1, $1, $2, 1)
                 ON CONFLICT (id) DO UPDATE SET chain_pem = $1, key_pem = $2, version = acme_cert.version + 1",
                &[&chain_pem, &key_pem],
            )
            .await?;
            Ok(())
        })
    }

    fn acme_account(&self, directory: &str) -> Result<Option<String>, RegistryError> {
        self.run(|c| async move {
            let row = c
                .query_opt(
                    "SELECT credentials FROM acme_accounts WHERE directory = $1",
                    &[&directory],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn acme_store_account(&self, directory: &str, credentials: &str) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute(
                "INSERT INTO acme_accounts (directory, credentials) VALUES ($1, $2)
                 ON CONFLICT (directory) DO UPDATE SET credentials = $2",
                &[&directory, &credentials],
            )
            .await?;
            Ok(())
        })
    }

    fn acme_challenges(&self, names: &[(String, Vec<u8>)], expires_at: Option<i64>) -> Result<(), RegistryError> {
        self.run(|mut c| async move {
            let tx = c.transaction().await?;
            for (name, digest) in names {
                match expires_at {
                    Some(at) => {
                        tx.execute(
                            "INSERT INTO acme_challenges (name, digest, expires_at) VALUES ($1, $2, $3)
                             ON CONFLICT (name) DO UPDATE SET digest = $2, expires_at = $3",
                            &[name, digest, &at],
                        )
                        .await?
                    }
                    None => {
                        tx.execute(
                            "DELETE FROM acme_challenges WHERE name = $1 AND digest = $2",
                            &[name, digest],
                        )
                        .await?
                    }
                };
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// A session-level advisory lock on a connection of its own (not a
    /// pooled one, which would keep the lock after the guard goes): the
    /// lock ends when the guard drops the connection, or when PostgreSQL
    /// sees this node's connection die.
    fn acme_leader(&self) -> Result<Option<LeaderGuard>, RegistryError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| RegistryError::Task("registry closed".into()))?;
        let (config, tls) = (self.config.clone(), self.tls.clone());
        rt.block_on(async move {
            let unavailable = |e: tokio_postgres::Error| RegistryError::Unavailable(with_causes(&e));
            let (client, driver) = match tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls).await.map_err(unavailable)?;
                    (client, tokio::spawn(connection))
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await.map_err(unavailable)?;
                    (client, tokio::spawn(connection))
                }
            };
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&ACME_LOCK])
                .await
                .map_err(|e| unavailable_if_gone(e.into()))?
                .get(0);
            if !got {
                return Ok(None);
            }
            let guard: LeaderGuard = Box::new(SessionLock {
                _client: client,
                driver,
            });
            Ok(Some(guard))
        })
    }

    fn operator_set(&self, name: &str, password_hash: &str, now: i64) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute(
                "INSERT INTO operators (name, password_hash, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET password_hash = $2, failures = 0, locked_until = 0",
                &[&name, &password_hash, &now],
            )
            .await?;
            Ok(())
        })
    }

    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, RegistryError> {
        self.run(|c| async move {
            let row = c
                .query_opt(
                    "SELECT name, password_hash, failures, locked_until, last_sign_in FROM operators WHERE name = $1",
                    &[&name],
                )
                .await?;
            Ok(row.as_ref().map(operator_row))
        })
    }

    fn operators(&self) -> Result<Vec<OperatorRecord>, RegistryError> {
        self.run(|c| async move {
            let rows = c
                .query(
                    "SELECT name, password_hash, failures, locked_until, last_sign_in FROM operators ORDER BY name",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(operator_row).collect())
        })
    }

    fn operator_remove(&self, name: &str) -> Result<bool, RegistryError> {
        self.run(|c| async move { Ok(c.execute("DELETE FROM operators WHERE name = $1", &[&name]).await? > 0) })
    }

    fn operator_failed(&self, name: &str, lock_after: u32, lock_until: i64) -> Result<(), RegistryError> {
        let lock_after = i64::from(lock_after);
        self.run(|c| async move {
            c.execute(
                "UPDATE operators SET failures = failures + 1,
                    locked_until = CASE WHEN failures + 1 >= $2 THEN $3 ELSE locked_until END
                 WHERE name = $1",
                &[&name, &lock_after, &lock_until],
            )
            .await?;
            Ok(())
        })
    }

    fn operator_signed_in(&self, name: &str, now: i64) -> Result<(), RegistryError> {
        self.run(|c| async move {
            c.execute(
                "UPDATE operators SET failures = 0, locked_until = 0, last_sign_in = $2 WHERE name = $1",
                &[&name, &now],
            )
            .await?;
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

fn operator_row(r: &tokio_postgres::Row) -> OperatorRecord {
    OperatorRecord {
        name: r.get(0),
        password_hash: r.get(1),
        failures: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
        locked_until: r.get(3),
        last_sign_in: r.get(4),
    }
}

/// A connection holding a session lock; dropping it closes the session.
struct SessionLock {
    _client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
