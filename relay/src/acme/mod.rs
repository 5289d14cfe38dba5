//! Automatic certificates for the public front (ACME, RFC 8555) with the
//! TLS-ALPN-01 challenge (RFC 8737), answered on the HTTPS port itself: no
//! port 80, no DNS API, no restart.
//!
//! The relay asks for one certificate naming the domain and every site
//! (`<site>.<domain>`), keeps it (reused across restarts, so a restart
//! never costs an issuance: in `state_dir` for a single relay, in the
//! PostgreSQL registry for several nodes, see [`state`]), renews it `renew_before` its expiry and
//! re-issues when a site is added. Until the first certificate arrives the
//! front presents a self-signed placeholder. Failures are retried with
//! backoff and logged; the certificate in use stays until a new one is in
//! hand. The ACME client is `instant-acme` (RFC 8555 done by the rustls
//! maintainers' crate; we only answer the challenge and store the result).

mod follow;
mod http;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use keyway_certs::files::{certs_from_pem, key_from_pem};
use keyway_certs::PublicCert;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Registry, SiteCache};
use state::AcmeState;

/// `[acme]` in `relay.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME directory (default: Let's Encrypt).
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Must be `true`: you accept the CA's terms of service.
    #[serde(default)]
    pub agree_terms: bool,
    /// Contact URIs for expiry notices (`mailto:ops@example.com`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Names to certify; default: the domain and `<site>.<domain>` for
    /// every site, kept up to date as sites are added.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Extra PEM root trusted for the directory's own HTTPS (a private ACME
    /// server such as step-ca or pebble); the web PKI is always trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where the account key and the certificate are kept (0600).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Renew when the certificate has less than this left.
    #[serde(default = "default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
}

fn default_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("acme")
}
fn default_renew_before() -> Duration {
    Duration::from_secs(30 * 86400)
}

impl AcmeConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.agree_terms {
            bail!(
                "acme.agree_terms: set it to true to accept the terms of service of {}",
                self.directory
            );
        }
        if !self.directory.starts_with("https://") {
            bail!("acme.directory: must be an https:// URL");
        }
        for n in self.names.iter().flatten() {
            if n.starts_with("*.") {
                bail!("acme.names: {n:?}: TLS-ALPN-01 cannot validate wildcards; list the names, or use a wildcard certificate in https_cert/https_key");
            }
        }
        Ok(())
    }
}

/// The front's starting certificate: the stored one if there is one, else
/// a self-signed placeholder until the first issuance; and the stored
/// version (see [`follow`]).
pub async fn initial_cert(
    cfg: &AcmeConfig,
    domain: &str,
    shared: Option<&Registry>,
) -> anyhow::Result<(PublicCert, i64)> {
    let state = AcmeState::new(cfg, shared.cloned());
    if let Some(((chain, key), version)) = state.load_cert().await? {
        return Ok((PublicCert::new(chain, key)?, version));
    }
    if shared.is_some() {
        // A relay moving from SQLite to PostgreSQL brings its certificate
        // along rather than ordering another.
        if let Some(imported) = state.import_files(&cfg.state_dir).await? {
            return Ok(imported);
        }
    }
    let (der, key) = keyway_certs::self_signed(&[domain.to_string()])?;
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key).into();
    Ok((PublicCert::new(vec![der], key)?, 0))
}

type Pair = (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// What [`maintain`] works with.
pub struct Maintained {
    /// The front's certificate.
    pub public: PublicCert,
    /// The version [`initial_cert`] installed.
    pub version: i64,
    /// The sites, whose names the certificate covers.
    pub sites: SiteCache,
    /// `Some` when the registry is shared (PostgreSQL): the ACME state lives
    /// there and every node follows it.
    pub shared: Option<Registry>,
}

/// Keeps `public` holding a valid certificate for the wanted names until
/// `stop`.
pub async fn maintain(cfg: AcmeConfig, domain: String, m: Maintained, stop: CancellationToken) {
    let Maintained {
        public,
        version,
        sites,
        shared,
    } = m;
    let state = AcmeState::new(&cfg, shared.clone());
    if let Some(registry) = shared {
        tokio::spawn(follow::follow(registry, public.clone(), version, stop.clone()));
    }
    let mut backoff = Duration::from_secs(30);
    let mut sites_changed = sites.names_changed();
    loop {
        sites_changed.mark_unchanged();
        let wait = match round(&cfg, &domain, &public, &sites, &state, &stop).await {
            Ok(Round::Current) | Ok(Round::Installed) => {
                backoff = Duration::from_secs(30);
                Duration::from_secs(3600)
            }
            // Look again soon: the leader may die before it is done.
            Ok(Round::OtherNodeLeads) => Duration::from_secs(60),
            Ok(Round::Stopped) => return,
            Err(e) => {
                warn!(
                    "could not get a certificate from {}: {e:#}; retrying in {backoff:?}",
                    cfg.directory
                );
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
                wait
            }
        };
        // A new site is certified at once; otherwise look again hourly
        // (renewal) or after the backoff.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = sites_changed.changed(), if backoff == Duration::from_secs(30) => {}
        }
    }
}

enum Round {
    Current,
    Installed,
    OtherNodeLeads,
    Stopped,
}

/// One look: is a certificate due, and if so, order it (as the leader).
async fn round(
    cfg: &AcmeConfig,
    domain: &str,
    public: &PublicCert,
    sites: &SiteCache,
    state: &AcmeState,
    stop: &CancellationToken,
) -> anyhow::Result<Round> {
    let wanted = wanted_names(cfg, domain, sites);
    let Some(why) = due_now(cfg, public, state, &wanted).await? else {
        if let Ok(s) = public.summary() {
            info!(names = ?s.names, expires = s.not_after, "ACME certificate current; next check in an hour or when a site is added");
        }
        return Ok(Round::Current);
    };
    let Some(_lead) = state.lead().await? else {
        info!("another relay node is ordering the certificate; this one follows it");
        return Ok(Round::OtherNodeLeads);
    };
    // Another node may have finished while this one waited for the lock.
    let Some(why) = (match state.load_cert().await? {
        Some(((chain, key), _)) if matches!(state, AcmeState::Shared(_)) => {
            public.replace(chain, key)?;
            due_now(cfg, public, state, &wanted).await?
        }
        _ => Some(why),
    }) else {
        return Ok(Round::Current);
    };
    info!(names = ?wanted, "requesting a certificate from {} ({why})", cfg.directory);
    let summary = tokio::select! {
        _ = stop.cancelled() => return Ok(Round::Stopped),
        r = issue(cfg, public, state, &wanted) => r?,
    };
    info!(names = ?summary.names, expires = summary.not_after, "ACME certificate installed");
    Ok(Round::Installed)
}

/// Why a new certificate is needed now, if it is.
async fn due_now(
    cfg: &AcmeConfig,
    public: &PublicCert,
    state: &AcmeState,
    wanted: &[String],
) -> anyhow::Result<Option<String>> {
    if state.load_cert().await?.is_none() {
        return Ok(Some("no certificate yet".into()));
    }
    Ok(due(cfg, public, wanted))
}

fn wanted_names(cfg: &AcmeConfig, domain: &str, sites: &SiteCache) -> Vec<String> {
    if let Some(names) = &cfg.names {
        return names.iter().map(|n| n.to_ascii_lowercase()).collect();
    }
    let mut names = vec![domain.to_string()];
    names.extend(sites.names().into_iter().map(|s| format!("{s}.{domain}")));
    names
}

/// Why the certificate in use should be replaced, if it should.
fn due(cfg: &AcmeConfig, public: &PublicCert, wanted: &[String]) -> Option<String> {
    let Ok(summary) = public.summary() else {
        return Some("the current certificate is unreadable".into());
    };
    if let Some(missing) = wanted.iter().find(|n| !summary.names.contains(n)) {
        return Some(format!("{missing} is not covered"));
    }
    let left = summary.not_after - crate::registry::now();
    (left < cfg.renew_before.as_secs() as i64).then(|| format!("it expires in {} days", left / 86400))
}

/// One issuance: order, answer every TLS-ALPN-01 challenge, finalize,
/// store, install.
async fn issue(
    cfg: &AcmeConfig,
    public: &PublicCert,
    state: &AcmeState,
    names: &[String],
) -> anyhow::Result<keyway_certs::public::CertSummary> {
    let account = account(cfg, state).await?;
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await.context("new order")?;
    let mut answers = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("an authorization is {other:?}"),
        }
        let challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| anyhow!("the ACME server offers no tls-alpn-01 challenge"))?;
        answers.push((
            challenge.identifier().to_string(),
            challenge.key_authorization().digest().as_ref().to_vec(),
        ));
    }
    // Every answer is up (on every node) before the CA is told to look.
    let validated = async {
        state.publish(public, &answers).await?;
        // Authorizations were fetched above: this pass only says "ready".
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.context("authorization")?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(ChallengeType::TlsAlpn01) {
                challenge.set_ready().await.context("challenge ready")?;
            }
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
        order.poll_ready(&retries).await.context("waiting for validation")
    }
    .await;
    state.withdraw(public, &answers).await;
    let status = validated?;
    if status != OrderStatus::Ready {
        bail!(
            "the order is {status:?}: the CA could not reach this relay's HTTPS port at {} with TLS-ALPN-01 \
             (it must be port 443, reachable from the internet, for each name)",
            names.join(", ")
        );
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
    let key_pem = order.finalize().await.context("finalize")?;
    let chain_pem = order.poll_certificate(&retries).await.context("certificate")?;
    let chain = certs_from_pem("issued certificate", chain_pem.as_bytes())?;
    let key = key_from_pem("issued key", key_pem.as_bytes())?;
    let summary = public.replace(chain, key)?;
    state.store_cert(chain_pem, key_pem).await?;
    Ok(summary)
}

/// The stored account for this directory, or a new one (then stored).
async fn account(cfg: &AcmeConfig, state: &AcmeState) -> anyhow::Result<Account> {
    if let Some(credentials) = state.load_account(&cfg.directory).await? {
        return Account::builder_with_http(Box::new(http::http_client(cfg)?))
            .from_credentials(credentials)
            .await
            .context("ACME account");
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(Box::new(http::http_client(cfg)?))
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: cfg.agree_terms,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .context("creating the ACME account")?;
    state.store_account(&cfg.directory, credentials).await?;
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> AcmeConfig {
        toml::from_str(&format!("agree_terms = true\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let c = cfg("");
        assert!(c.directory.contains("letsencrypt"));
        assert_eq!(c.renew_before, Duration::from_secs(30 * 86400));
        c.validate().unwrap();

        let err = toml::from_str::<AcmeConfig>("")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("agree_terms"), "{err}");
        let err = cfg("names = [\"*.relay.example.com\"]")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("wildcard"), "{err}");
        let err = cfg("directory = \"http://ca.example.com/dir\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn names_follow_the_sites_and_renewal_is_due_when_one_is_missing() {
        let c = cfg("");
        let sites = SiteCache::with_sites(["hq", "annex"]);
        let mut wanted = wanted_names(&c, "relay.example.com", &sites);
        wanted.sort();
        assert_eq!(
            wanted,
            ["annex.relay.example.com", "hq.relay.example.com", "relay.example.com"]
        );

        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (public, version) = rt
            .block_on(initial_cert(
                &cfg("state_dir = \"/nonexistent/keyway\""),
                "relay.example.com",
                None,
            ))
            .unwrap();
        assert_eq!(version, 0);
        let why = due(&c, &public, &wanted).unwrap();
        assert!(why.contains("not covered"), "{why}");
        assert_eq!(due(&c, &public, &["relay.example.com".to_string()]), None);
    }
}
