//! Automatic certificates for the public front (ACME, RFC 8555) with the
//! TLS-ALPN-01 challenge (RFC 8737), answered on the HTTPS port itself: no
//! port 80, no DNS API, no restart.
//!
//! The relay asks for one certificate naming the domain and every site
//! (`<site>.<domain>`), keeps it in `state_dir` (reused across restarts, so a
//! restart never costs an issuance), renews it `renew_before` its expiry and
//! re-issues when a site is added. Until the first certificate arrives the
//! front presents a self-signed placeholder. Failures are retried with
//! backoff and logged; the certificate in use stays until a new one is in
//! hand. The ACME client is `instant-acme` (RFC 8555 done by the rustls
//! maintainers' crate; we only answer the challenge and store the result).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use keyway_certs::files::{certs_from_pem, key_from_pem, write_atomic};
use keyway_certs::PublicCert;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::SiteCache;

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

    fn cert_path(&self) -> PathBuf {
        self.state_dir.join("cert.pem")
    }
    fn key_path(&self) -> PathBuf {
        self.state_dir.join("key.pem")
    }
    fn account_path(&self) -> PathBuf {
        self.state_dir.join("account.json")
    }
}

/// The front's starting certificate: the stored one if there is one, else
/// a self-signed placeholder until the first issuance.
pub fn initial_cert(cfg: &AcmeConfig, domain: &str) -> anyhow::Result<PublicCert> {
    if let Some((chain, key)) = load_stored(cfg)? {
        return Ok(PublicCert::new(chain, key)?);
    }
    let (der, key) = keyway_certs::self_signed(&[domain.to_string()])?;
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key).into();
    Ok(PublicCert::new(vec![der], key)?)
}

type Pair = (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

fn load_stored(cfg: &AcmeConfig) -> anyhow::Result<Option<Pair>> {
    let (cert, key) = (cfg.cert_path(), cfg.key_path());
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    let chain = certs_from_pem(&cert.display().to_string(), &std::fs::read(&cert)?)?;
    let key = key_from_pem(&key.display().to_string(), &std::fs::read(&key)?)?;
    Ok(Some((chain, key)))
}

/// Keeps `public` holding a valid certificate for the wanted names until
/// `stop`.
pub async fn maintain(cfg: AcmeConfig, domain: String, public: PublicCert, sites: SiteCache, stop: CancellationToken) {
    let mut issued = load_stored(&cfg).ok().flatten().is_some();
    let mut backoff = Duration::from_secs(30);
    let mut sites_changed = sites.names_changed();
    loop {
        sites_changed.mark_unchanged();
        let wanted = wanted_names(&cfg, &domain, &sites);
        let reason = if issued {
            due(&cfg, &public, &wanted)
        } else {
            Some("no certificate yet".into())
        };
        let wait = match reason {
            None => {
                if let Ok(s) = public.summary() {
                    info!(names = ?s.names, expires = s.not_after, "ACME certificate current; next check in an hour or when a site is added");
                }
                Duration::from_secs(3600)
            }
            Some(why) => {
                info!(names = ?wanted, "requesting a certificate from {} ({why})", cfg.directory);
                match tokio::select! {
                    _ = stop.cancelled() => return,
                    r = issue(&cfg, &public, &wanted) => r,
                } {
                    Ok(summary) => {
                        issued = true;
                        backoff = Duration::from_secs(30);
                        info!(names = ?summary.names, expires = summary.not_after, "ACME certificate installed");
                        Duration::from_secs(3600)
                    }
                    Err(e) => {
                        warn!(
                            "could not get a certificate from {}: {e:#}; retrying in {backoff:?}",
                            cfg.directory
                        );
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(3600));
                        wait
                    }
                }
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
    names: &[String],
) -> anyhow::Result<keyway_certs::public::CertSummary> {
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await.context("new order")?;
    let mut answering = Challenges {
        public,
        names: Vec::new(),
    };
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("an authorization is {other:?}"),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| anyhow!("the ACME server offers no tls-alpn-01 challenge"))?;
        let name = challenge.identifier().to_string();
        public.set_challenge(&name, challenge.key_authorization().digest().as_ref())?;
        answering.names.push(name);
        challenge.set_ready().await.context("challenge ready")?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retries).await.context("waiting for validation")?;
    drop(answering);
    if status != OrderStatus::Ready {
        bail!(
            "the order is {status:?}: the CA could not reach this relay's HTTPS port at {} with TLS-ALPN-01 \
             (it must be port 443, reachable from the internet, for each name)",
            names.join(", ")
        );
    }
    let key_pem = order.finalize().await.context("finalize")?;
    let chain_pem = order.poll_certificate(&retries).await.context("certificate")?;
    let chain = certs_from_pem("issued certificate", chain_pem.as_bytes())?;
    let key = key_from_pem("issued key", key_pem.as_bytes())?;
    let summary = public.replace(chain, key)?;
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("{}", cfg.state_dir.display()))?;
    write_atomic(&cfg.key_path(), key_pem.as_bytes(), true)?;
    write_atomic(&cfg.cert_path(), chain_pem.as_bytes(), false)?;
    Ok(summary)
}

/// Withdraws the challenge certificates however the issuance ends.
struct Challenges<'a> {
    public: &'a PublicCert,
    names: Vec<String>,
}

impl Drop for Challenges<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            self.public.clear_challenge(n);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The stored account for this directory, or a new one (then stored, 0600:
/// it holds the account key).
async fn account(cfg: &AcmeConfig) -> anyhow::Result<Account> {
    let path = cfg.account_path();
    if let Ok(text) = std::fs::read(&path) {
        let stored: StoredAccount =
            serde_json::from_slice(&text).with_context(|| format!("unreadable {}", path.display()))?;
        if stored.directory == cfg.directory {
            return Account::builder_with_http(Box::new(http_client(cfg)?))
                .from_credentials(stored.credentials)
                .await
                .context("ACME account");
        }
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(Box::new(http_client(cfg)?))
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
    let stored = StoredAccount {
        directory: cfg.directory.clone(),
        credentials,
    };
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("{}", cfg.state_dir.display()))?;
    write_atomic(&path, &serde_json::to_vec(&stored)?, true)?;
    Ok(account)
}

/// hyper + rustls (ring) toward the directory, trusting the web PKI and
/// `ca_file`.
struct AcmeHttp(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

fn http_client(cfg: &AcmeConfig) -> anyhow::Result<AcmeHttp> {
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &cfg.ca_file {
        for cert in certs_from_pem(&ca.display().to_string(), &read(ca)?)? {
            roots.add(cert).with_context(|| format!("{}", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(keyway_certs::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(AcmeHttp(Client::builder(TokioExecutor::new()).build(connector)))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("could not read {}", path.display()))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            fut.await
                .map(BytesResponse::from)
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))
        })
    }
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

        let public = initial_cert(&cfg("state_dir = \"/nonexistent/keyway\""), "relay.example.com").unwrap();
        let why = due(&c, &public, &wanted).unwrap();
        assert!(why.contains("not covered"), "{why}");
        assert_eq!(due(&c, &public, &["relay.example.com".to_string()]), None);
    }
}
