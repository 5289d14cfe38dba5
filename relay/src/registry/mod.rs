//! The site registry: sites, pairing-code hashes, issued certificates and
//! revocations.
//!
//! [`SiteStore`] is the small synchronous trait both stores implement:
//! [`sqlite::SqliteStore`] (a file beside the relay, the default) and
//! [`postgres::PgStore`] (one database shared by several relays).
//! [`Registry`] runs its calls on tokio's blocking pool so the async
//! runtime never waits on disk or network. Every method takes `now` (Unix
//! seconds) from the caller, so expiry is testable without a real clock.

pub mod conformance;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::limits::Overrides;
use thiserror::Error;

use keyway_proto::pair::PairErrorKind;

/// Registry failures.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The SQLite database failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL database failed.
    #[error("registry database: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL database cannot be reached now.
    #[error("the registry database is unavailable: {0}")]
    Unavailable(String),
    /// The registry setting is not usable.
    #[error("{0}")]
    Config(String),
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

impl RegistryError {
    /// Whether the database cannot be reached (rather than refusing the
    /// call): the relay keeps serving what it holds and tries again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
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
    /// When the agent's current certificate expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires: Option<i64>,
    /// Limits set for this site in the registry (`site limits`), over
    /// `relay.toml`'s.
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub limits: Overrides,
    /// Where the integrations' TLS ends.
    pub terminate: Terminate,
}

/// Where a site's TLS ends (`site mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Terminate {
    /// At the relay, which then applies the edge limits to each request.
    #[default]
    Relay,
    /// At the agent (zero-knowledge): the relay routes the sealed bytes by SNI.
    Agent,
}

impl Terminate {
    /// As stored and typed: `relay` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Agent => "agent",
        }
    }

    /// From the stored text (anything unknown: `relay`, today's behaviour).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "relay" => Some(Self::Relay),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

/// A site's stored limits (JSON); unreadable ones are reported and ignored
/// rather than taking the site list down with them.
pub fn parse_limits(site: &str, json: Option<&str>) -> Overrides {
    match json.map(serde_json::from_str::<Overrides>) {
        None => Overrides::default(),
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            tracing::warn!(site, "ignoring the site's stored limits: {e}");
            Overrides::default()
        }
    }
}

/// A site's limits as stored (`None`: none set).
pub fn limits_json(limits: &Overrides) -> Option<String> {
    (!limits.is_empty()).then(|| serde_json::to_string(limits).unwrap_or_default())
}

/// When a certificate issued at `paired_at` expires (pairing issues them
/// for [`keyway_certs::ca::AGENT_VALIDITY`]).
pub fn cert_expiry(paired: bool, paired_at: Option<i64>) -> Option<i64> {
    let validity = keyway_certs::ca::AGENT_VALIDITY.as_secs() as i64;
    paired_at.filter(|_| paired).map(|t| t + validity)
}

/// An operator of the web console, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorRecord {
    /// The sign-in name.
    pub name: String,
    /// The argon2 hash (PHC string) of the password.
    #[serde(skip)]
    pub password_hash: String,
    /// Failed sign-ins in a row.
    pub failures: u32,
    /// Unix seconds until which sign-in is refused (0: not locked).
    pub locked_until: i64,
    /// Unix seconds of the last successful sign-in.
    pub last_sign_in: Option<i64>,
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

/// What PostgreSQL said: its own message (`tokio_postgres::Error` shows
/// only "db error" and keeps the server's words in its source).
fn postgres_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
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
    /// Sets where the site's TLS ends.
    fn set_terminate(&self, site: &str, terminate: Terminate) -> Result<(), RegistryError>;
    /// Replaces the site's registry limits (`None`: back to `relay.toml`'s).
    fn set_limits(&self, site: &str, limits_json: Option<&str>) -> Result<(), RegistryError>;
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

    /// Operators (the web console): creates `name`, or sets its password
    /// and unlocks it when it exists.
    fn operator_set(&self, name: &str, password_hash: &str, now: i64) -> Result<(), RegistryError>;
    /// Operators: the sign-in record of `name`.
    fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, RegistryError>;
    /// Operators: all of them, by name.
    fn operators(&self) -> Result<Vec<OperatorRecord>, RegistryError>;
    /// Operators: removes `name`; whether it existed.
    fn operator_remove(&self, name: &str) -> Result<bool, RegistryError>;
    /// Operators: counts a failed sign-in, and locks the account until
    /// `lock_until` when that makes `lock_after` failures in a row.
    fn operator_failed(&self, name: &str, lock_after: u32, lock_until: i64) -> Result<(), RegistryError>;
    /// Operators: a sign-in succeeded: the failure count starts again.
    fn operator_signed_in(&self, name: &str, now: i64) -> Result<(), RegistryError>;

    /// Cluster: records `beat.node` alive now, holding agent links for
    /// exactly `beat.sites`; answers where agents reach every node whose
    /// heartbeat is at most `fresh` old (this one included).
    fn node_heartbeat(&self, beat: &Heartbeat, fresh: Duration) -> Result<Vec<String>, RegistryError> {
        let _ = (beat, fresh);
        Err(not_clustered())
    }
    /// Cluster: the other nodes holding a link for `site`, freshest first,
    /// each marked fresh when its last heartbeat is at most `fresh` old
    /// (stale ones are listed for [`STALE_LISTED`], then dropped).
    fn nodes_for_site(&self, site: &str, except: &str, fresh: Duration) -> Result<Vec<PeerNode>, RegistryError> {
        let _ = (site, except, fresh);
        Err(not_clustered())
    }
    /// Cluster: `node` leaves (it stops; its links go with it).
    fn node_leave(&self, node: &str) -> Result<(), RegistryError> {
        let _ = node;
        Err(not_clustered())
    }

    /// Shared ACME state: the certificate's version and the TLS-ALPN-01
    /// answers not yet expired at `now`, in one read (every node polls it).
    fn acme_snapshot(&self, now: i64) -> Result<AcmeSnapshot, RegistryError> {
        let _ = now;
        Err(not_clustered())
    }
    /// Shared ACME state: the certificate every node serves, if one was issued.
    fn acme_cert(&self) -> Result<Option<AcmeCert>, RegistryError> {
        Err(not_clustered())
    }
    /// Shared ACME state: replaces the certificate (its version goes up).
    fn acme_store_cert(&self, chain_pem: &str, key_pem: &str) -> Result<(), RegistryError> {
        let _ = (chain_pem, key_pem);
        Err(not_clustered())
    }
    /// Shared ACME state: the account credentials (JSON) for `directory`.
    fn acme_account(&self, directory: &str) -> Result<Option<String>, RegistryError> {
        let _ = directory;
        Err(not_clustered())
    }
    /// Shared ACME state: stores the account credentials for `directory`.
    fn acme_store_account(&self, directory: &str, credentials: &str) -> Result<(), RegistryError> {
        let _ = (directory, credentials);
        Err(not_clustered())
    }
    /// Shared ACME state: publishes challenge answers (name, key
    /// authorization digest) until `expires_at`, or withdraws them (`None`).
    fn acme_challenges(&self, names: &[(String, Vec<u8>)], expires_at: Option<i64>) -> Result<(), RegistryError> {
        let _ = (names, expires_at);
        Err(not_clustered())
    }
    /// Shared ACME state: the right to order certificates, held by one node
    /// at a time until the guard drops (or the node dies); `None` while
    /// another node holds it.
    fn acme_leader(&self) -> Result<Option<LeaderGuard>, RegistryError> {
        Err(not_clustered())
    }
}

/// Held while one node orders certificates for the cluster.
pub type LeaderGuard = Box<dyn Send + Sync>;

/// What every node follows of the shared ACME state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeSnapshot {
    /// Goes up with every new certificate (0: none yet).
    pub cert_version: i64,
    /// Live TLS-ALPN-01 answers: name and key authorization digest.
    pub challenges: Vec<(String, Vec<u8>)>,
}

/// The shared certificate and its key, as PEM.
#[derive(Clone)]
pub struct AcmeCert {
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The private key.
    pub key_pem: String,
    /// See [`AcmeSnapshot::cert_version`].
    pub version: i64,
}

/// How long a node that stopped heart-beating is still listed (stale) as
/// holding its sites: a peer still connected to it may keep using it.
pub const STALE_LISTED: Duration = Duration::from_secs(300);

/// One node's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Its `[cluster] node` name.
    pub node: String,
    /// Where the other nodes reach it.
    pub peer_addr: String,
    /// Where agents reach it (`None`: not offered to agents).
    pub agent_addr: Option<String>,
    /// The sites whose agents it holds a link for.
    pub sites: Vec<String>,
}

/// Another relay node, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    /// Its `[cluster] node` name.
    pub name: String,
    /// Where its node-to-node listener is.
    pub peer_addr: String,
    /// Whether its last heartbeat is within the freshness window. A stale
    /// one may be dead, or only unable to write (the database was away).
    pub fresh: bool,
}

fn not_clustered() -> RegistryError {
    RegistryError::Config("a cluster needs a PostgreSQL registry".into())
}

/// Async access to a [`SiteStore`]: every call runs on the blocking pool.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn SiteStore>,
    /// Whether the last call found the database unreachable (an outage is
    /// logged once, when it starts, and once when it ends).
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Registry {
    /// Opens the SQLite registry at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, RegistryError> {
        Ok(Self::with_store(Arc::new(sqlite::SqliteStore::open(path)?)))
    }

    /// Opens the registry `location` names: a SQLite file, or a PostgreSQL
    /// database by URL.
    pub fn at(location: &crate::config::RegistryLocation) -> Result<Self, RegistryError> {
        use crate::config::RegistryLocation;
        Ok(Self::with_store(match location {
            RegistryLocation::File(path) => Arc::new(sqlite::SqliteStore::open(path)?),
            RegistryLocation::Database { url, tls_ca_file } => {
                Arc::new(postgres::PgStore::connect_with(url, tls_ca_file.as_deref())?)
            }
        }))
    }

    /// [`Registry::at`], from async code: opening blocks (a file, or a
    /// database connection and its migrations), so it runs on the
    /// blocking pool.
    pub async fn open_at(location: &crate::config::RegistryLocation) -> Result<Self, RegistryError> {
        let location = location.clone();
        tokio::task::spawn_blocking(move || Self::at(&location))
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))?
    }

    /// The store behind this registry.
    pub fn with_store(store: Arc<dyn SiteStore>) -> Self {
        Self {
            store,
            down: Arc::default(),
        }
    }

    /// Runs `f` against the store off the async runtime.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn SiteStore) -> Result<R, RegistryError> + Send + 'static,
    ) -> Result<R, RegistryError> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))?;
        use std::sync::atomic::Ordering;
        match &result {
            Err(e) if e.is_unavailable() => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "{e}: serving the sites already connected; pairings and changes wait until it is back"
                    );
                }
            }
            _ => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("the registry database is reachable again");
                }
            }
        }
        result
    }

    /// Whether the last call found the database unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
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
