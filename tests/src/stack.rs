//! The whole path in one process, over real sockets: simulated console,
//! relay and agent, each a real component on loopback (UDP for QUIC, TCP for
//! HTTPS, real TLS). Tests and the sandbox build it with [`StackBuilder`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyway_agent::{Agent, AgentConfig, AgentState};
use keyway_certs::Fingerprint;
use keyway_relay::{AgentTable, Relay, RelayConfig};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::console::{ConsoleOptions, RunningConsole};
use keyway_agent::pair::{pair, ConsolePin, PairOptions};
use keyway_relay::init::{init, InitOptions};

/// Error type of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of the test client.
pub type ClientBody = BoxBody<Bytes, BoxError>;
/// An HTTPS client trusting the relay's development CA.
pub type HttpsClient = Client<HttpsConnector<HttpConnector<Resolver>>, ClientBody>;

/// The site every stack serves.
pub const SITE: &str = "hq";
/// The relay's domain in tests.
pub const DOMAIN: &str = "relay.keyway.test";
/// The console token in tests and the sandbox.
pub const TOKEN: &str = "sim-api-token-7f3a9c";

/// How to build a stack.
pub struct StackBuilder {
    console: ConsoleOptions,
    start_agent: bool,
    pin: Option<Fingerprint>,
    relay_extra: String,
    agent_extra: String,
    relay_port: Option<u16>,
    dir: Option<PathBuf>,
    transport: Option<String>,
    udp_blocked: bool,
    console_token: bool,
    observer: Option<keyway_relay::proxy::Observer>,
    registry_url: Option<String>,
    registry_tls_ca: Option<PathBuf>,
    sealed: bool,
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self {
            console: ConsoleOptions::new(TOKEN),
            start_agent: true,
            pin: None,
            relay_extra: String::new(),
            agent_extra: String::new(),
            relay_port: None,
            dir: None,
            transport: None,
            udp_blocked: false,
            console_token: true,
            observer: None,
            registry_url: None,
            registry_tls_ca: None,
            // KEYWAY_TEST_TERMINATE=agent runs a suite against a
            // zero-knowledge site.
            sealed: std::env::var("KEYWAY_TEST_TERMINATE").is_ok_and(|v| v == "agent"),
        }
    }
}

impl StackBuilder {
    /// Console options (throttle, identity).
    pub fn console(mut self, opts: ConsoleOptions) -> Self {
        self.console = opts;
        self
    }
    /// Do not start the agent (agent-offline tests).
    pub fn without_agent(mut self) -> Self {
        self.start_agent = false;
        self
    }
    /// Pin this fingerprint instead of the console's own.
    pub fn pin(mut self, fp: Fingerprint) -> Self {
        self.pin = Some(fp);
        self
    }
    /// Extra relay.toml lines.
    pub fn relay_extra(mut self, extra: &str) -> Self {
        self.relay_extra = extra.to_string();
        self
    }
    /// Extra agent.toml lines.
    /// A zero-knowledge site (`site mode hq agent`): the agent presents its
    /// own certificate for `hq.<DOMAIN>`, from a CA of its own
    /// ([`Stack::sealed_api`] trusts it), and the relay routes by SNI.
    pub fn sealed(mut self) -> Self {
        self.sealed = true;
        self
    }

    /// More settings appended to `agent.toml`.
    pub fn agent_extra(mut self, extra: &str) -> Self {
        self.agent_extra = extra.to_string();
        self
    }
    /// Fix the relay's port (TCP and UDP).
    pub fn relay_port(mut self, port: u16) -> Self {
        self.relay_port = Some(port);
        self
    }
    /// Write files here instead of a temporary folder.
    pub fn dir(mut self, dir: PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }

    /// The agent's `transport` setting (`auto`, `quic`, `tcp`). Unset, it is
    /// `$KEYWAY_TEST_TRANSPORT` if set (how the end-to-end suite runs over
    /// each transport), else the default (`auto`).
    pub fn transport(mut self, transport: &str) -> Self {
        self.transport = Some(transport.to_string());
        self
    }

    /// Nothing answers UDP at the relay's address: its QUIC listener is
    /// moved to another port ([`Stack::quic_addr`]), so pairing and the
    /// agent find only TCP there, as behind a firewall that drops UDP.
    pub fn udp_blocked(mut self) -> Self {
        self.udp_blocked = true;
        self
    }

    /// Keep the registry in the PostgreSQL database at `url` instead of
    /// the SQLite file `init` creates.
    pub fn registry_url(mut self, url: &str) -> Self {
        self.registry_url = Some(url.to_string());
        self
    }

    /// Connects the registry with TLS, verified against this CA.
    pub fn registry_tls_ca(mut self, ca: &Path) -> Self {
        self.registry_tls_ca = Some(ca.to_path_buf());
        self
    }

    /// Have the relay call `f` with each request head it sends into a tunnel.
    pub fn observe_relay(mut self, f: keyway_relay::proxy::Observer) -> Self {
        self.observer = Some(f);
        self
    }

    /// Do not store the console token on the agent: no event hub, each
    /// event subscriber gets its own WebSocket to the console.
    pub fn without_console_token(mut self) -> Self {
        self.console_token = false;
        self
    }

    /// Starts everything; returns once the agent is online (if started).
    pub async fn start(self) -> anyhow::Result<Stack> {
        // KEYWAY_TEST_LOG=info (or a filter) shows relay and agent logs.
        if let Ok(filter) = std::env::var("KEYWAY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let console = RunningConsole::start(self.console).await?;
        let (tmp, dir) = match self.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let ip: IpAddr = "127.0.0.1".parse().expect("constant");
        let port = match self.relay_port {
            Some(p) => p,
            None => free_port(ip)?,
        };
        let addr = SocketAddr::new(ip, port);

        // The relay, as `keyway-relay init --self-signed` makes it.
        let relay_dir = dir.join("relay");
        let report = init(&InitOptions {
            dir: relay_dir.clone(),
            domain: DOMAIN.into(),
            listen: addr,
            admin_listen: None,
            self_signed: true,
            force: false,
        })?;
        let mut extra = format!("default_site = {SITE:?}\n");
        extra.push_str(&self.relay_extra);
        // scripts/test's PostgreSQL pass puts every registry on its server.
        let registry_url = self.registry_url.clone().or_else(crate::postgres::shared_database);
        if let Some(url) = &registry_url {
            let text = std::fs::read_to_string(&report.config)?;
            let file = "registry = \"registry.db\"\n";
            anyhow::ensure!(text.contains(file), "relay config has no registry line to replace");
            std::fs::write(&report.config, text.replace(file, ""))?;
            extra.push_str(&format!("\n[registry]\nurl = {url:?}\n"));
            if let Some(ca) = &self.registry_tls_ca {
                extra.push_str(&format!("tls_ca_file = {ca:?}\n"));
            }
        }
        append(&report.config, &extra)?;
        let quic_addr = if self.udp_blocked {
            let elsewhere = SocketAddr::new(ip, free_port(ip)?);
            let text = std::fs::read_to_string(&report.config)?;
            let moved = text.replace(
                &format!("quic_listen = \"{addr}\""),
                &format!("quic_listen = \"{elsewhere}\""),
            );
            anyhow::ensure!(moved != text, "relay config has no quic_listen line to move");
            std::fs::write(&report.config, moved)?;
            elsewhere
        } else {
            addr
        };
        let relay_cfg = RelayConfig::load(&report.config)?;
        // The admin commands block (a PostgreSQL registry runs its own
        // runtime): off this one, as the CLI runs them.
        let admin_cfg = relay_cfg.clone();
        let sealed = self.sealed;
        let issued = tokio::task::spawn_blocking(move || {
            let issued = keyway_relay::admin::add_site(&admin_cfg, SITE)?;
            if sealed {
                keyway_relay::admin::set_mode(&admin_cfg, SITE, "agent")?;
            }
            anyhow::Ok(issued)
        })
        .await??;
        let mut relay = Relay::bind(relay_cfg).await?;
        if let Some(f) = self.observer {
            relay.observe_forwarded(f);
        }
        let agents = relay.agents();
        let relay_stop = CancellationToken::new();
        let relay_task = tokio::spawn(relay.run(relay_stop.clone()));
        let https_ca = report.https_ca.clone().expect("self-signed relay has a dev CA");
        let https_ca_der = keyway_certs::files::load_certs(&https_ca)?.remove(0);

        // The agent, enrolled with the code exactly as `keyway-agent pair` does.
        let agent_dir = dir.join("agent");
        let paired = pair(&PairOptions {
            code: issued.code,
            relay: addr.to_string(),
            relay_ca: Some(https_ca.clone()),
            console_url: console.url.clone(),
            console: ConsolePin::Expect(console.fingerprint()),
            config: agent_dir.join("agent.toml"),
            state_dir: agent_dir.clone(),
            force: false,
        })
        .await
        .context("pairing the agent")?;
        if let Some(pin) = self.pin {
            let text = std::fs::read_to_string(&paired.config)?;
            let text = text.replace(&console.fingerprint().to_string(), &pin.to_string());
            std::fs::write(&paired.config, text)?;
        }
        let transport = self.transport.or_else(|| std::env::var("KEYWAY_TEST_TRANSPORT").ok());
        let mut agent_extra = self.agent_extra;
        let sealed_ca_der = if self.sealed {
            let ca = keyway_certs::ca::PrivateCa::generate("Keyway test site CA")?;
            let key = rcgen::KeyPair::generate()?;
            let leaf = ca.issue_server(&[format!("{SITE}.{DOMAIN}")], &key, Duration::from_secs(86_400))?;
            std::fs::write(agent_dir.join("site.pem"), leaf.pem.as_bytes())?;
            keyway_certs::files::write_atomic(&agent_dir.join("site.key"), key.serialize_pem().as_bytes(), true)?;
            agent_extra.push_str("\ntls_cert = \"site.pem\"\ntls_key = \"site.key\"\n");
            Some(ca.cert_der().clone())
        } else {
            None
        };
        if let Some(t) = transport {
            agent_extra.push_str(&format!("\ntransport = {t:?}\n"));
        }
        append(&paired.config, &agent_extra)?;
        if self.console_token {
            // As `keyway-agent console-token set` does: the hub is on.
            let cfg = keyway_agent::AgentConfig::load(&paired.config)?;
            keyway_agent::console_token::store(&cfg.console_token_path(), &console.token)?;
        }

        let mut stack = Stack {
            console,
            relay_addr: addr,
            quic_addr,
            agents,
            agent_config: paired.config,
            relay_config: report.config,
            https_ca,
            https_ca_der,
            sealed_ca_der,
            relay_stop,
            relay_task: Some(relay_task),
            agent: None,
            _tmp: tmp,
        };
        if self.start_agent {
            stack.start_agent().await?;
        }
        Ok(stack)
    }
}

struct RunningAgent {
    stop: CancellationToken,
    task: JoinHandle<()>,
    state: watch::Receiver<AgentState>,
}

/// A running console + relay (+ agent).
pub struct Stack {
    /// The simulated console.
    pub console: RunningConsole,
    /// Relay address (HTTPS and TCP tunnels on TCP, QUIC on UDP).
    pub relay_addr: SocketAddr,
    /// Where the relay's QUIC listener is (`relay_addr` unless `udp_blocked`).
    pub quic_addr: SocketAddr,
    /// The relay's live agents.
    pub agents: AgentTable,
    /// The agent's config file.
    pub agent_config: PathBuf,
    /// The relay's config file.
    pub relay_config: PathBuf,
    /// PEM of the CA that signs the relay's HTTPS certificate.
    pub https_ca: PathBuf,
    /// The same, DER.
    pub https_ca_der: CertificateDer<'static>,
    /// A zero-knowledge stack's site CA (the agent's certificate).
    pub sealed_ca_der: Option<CertificateDer<'static>>,
    relay_stop: CancellationToken,
    relay_task: Option<JoinHandle<anyhow::Result<()>>>,
    agent: Option<RunningAgent>,
    _tmp: Option<tempfile::TempDir>,
}

impl Stack {
    /// Default stack, agent online.
    pub async fn start() -> anyhow::Result<Self> {
        StackBuilder::default().start().await
    }

    /// A builder.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn relay_url(&self) -> String {
        format!("https://{}", self.relay_addr)
    }

    /// `https://hq.<DOMAIN>:port`: the site by its own name (SNI), as a
    /// zero-knowledge site must be called.
    pub fn site_url(&self) -> String {
        format!("https://{SITE}.{DOMAIN}:{}", self.relay_addr.port())
    }

    /// Whether the site is zero-knowledge (its agent terminates TLS).
    pub fn is_sealed(&self) -> bool {
        self.sealed_ca_der.is_some()
    }

    /// Asserts `r` is what a client of a site whose agent is offline gets:
    /// 503 `CODE_KEYWAY_AGENT_OFFLINE`, or for a zero-knowledge site (only
    /// its agent can end the client's TLS, so there is no one to answer)
    /// the connection closed at once.
    pub fn assert_offline(&self, r: anyhow::Result<crate::client::Reply>) {
        if self.is_sealed() {
            let err = format!("{:#}", r.expect_err("no agent to end the TLS: no answer"));
            assert!(
                !err.contains("timed out"),
                "closed at once, not left to time out: {err}"
            );
            return;
        }
        let r = r.expect("the relay answers itself");
        assert_eq!(
            r.status,
            http::StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.json()["code"],
            "CODE_KEYWAY_AGENT_OFFLINE",
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// Whether `r` is what [`Stack::assert_offline`] accepts.
    pub fn is_offline(&self, r: &anyhow::Result<crate::client::Reply>) -> bool {
        match r {
            Err(e) if self.is_sealed() => !format!("{e:#}").contains("timed out"),
            Ok(r) if !self.is_sealed() => {
                r.status == http::StatusCode::SERVICE_UNAVAILABLE
                    && serde_json::from_slice::<serde_json::Value>(&r.body)
                        .is_ok_and(|v| v["code"] == "CODE_KEYWAY_AGENT_OFFLINE")
            }
            _ => false,
        }
    }

    /// Asks for the doors every 50 ms until the answer is that the site is
    /// offline (see [`Stack::assert_offline`]); panics with the last answer
    /// after `within`. Returns how long it took.
    pub async fn until_offline(&self, within: Duration) -> Duration {
        let t0 = std::time::Instant::now();
        loop {
            let r = self.api().get("/api/v1/developer/doors").await;
            if self.is_offline(&r) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < within, "still not offline after {within:?}: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API through another relay of this stack's cluster, listening at
    /// `addr`: the site by name through that node's address (for a
    /// zero-knowledge site, its agent answers), or the relay's bare domain.
    pub fn api_at(&self, addr: SocketAddr) -> crate::client::Api {
        match &self.sealed_ca_der {
            Some(ca) => crate::client::Api::with_client(
                https_client_at(ca, addr.ip()),
                &format!("https://{SITE}.{DOMAIN}:{}", addr.port()),
                &self.console.token,
            ),
            None => crate::client::Api::with_client(
                https_client_at(&self.https_ca_der, addr.ip()),
                &format!("https://{DOMAIN}:{}", addr.port()),
                &self.console.token,
            ),
        }
    }

    /// The relay's own HTTPS (its address and CA), whatever the site's
    /// mode: for what the relay serves itself (the apt repository, health).
    pub fn relay_api(&self) -> crate::client::Api {
        crate::client::Api::new(&self.relay_url(), &self.https_ca_der, &self.console.token)
    }

    /// The API through the relay with `token` instead of the console's.
    pub fn api_with_token(&self, token: &str) -> crate::client::Api {
        match &self.sealed_ca_der {
            Some(ca) => {
                crate::client::Api::with_client(https_client_at(ca, self.relay_addr.ip()), &self.site_url(), token)
            }
            None => crate::client::Api::with_client(self.client(), &self.relay_url(), token),
        }
    }

    /// A TLS connection through the relay to whoever ends the site's TLS
    /// (HTTP/1.1 offered), for raw exchanges.
    pub async fn raw_tls(&self) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let (name, ca) = self.site_tls();
        let mut tls = keyway_certs::tls::https_client(ca)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.relay_addr).await?;
        let name = rustls_pki_types::ServerName::try_from(name)?;
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await?)
    }

    /// An API client for a zero-knowledge stack: the site by name, trusting
    /// the agent's CA only.
    pub fn sealed_api(&self) -> crate::client::Api {
        let ca = self.sealed_ca_der.as_ref().expect("a sealed stack");
        crate::client::Api::with_client(
            https_client_at(ca, self.relay_addr.ip()),
            &self.site_url(),
            &self.console.token,
        )
    }

    /// Starts the agent from its config and waits until the relay sees it.
    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        let cfg = AgentConfig::load(&self.agent_config)?;
        let agent = Agent::new(&cfg)?;
        let state = agent.state();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        self.agent = Some(RunningAgent { stop, task, state });
        self.wait_online().await
    }

    /// Points the agent's config at `addr` instead of the relay (a proxy).
    /// Fails when the config names no such relay line, so a test cannot
    /// run unimpaired believing it goes through the proxy.
    pub fn route_agent_via(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.agent_config)?;
        let line = format!("relay = \"{}\"", self.relay_addr);
        anyhow::ensure!(
            text.matches(&line).count() == 1,
            "{} has no single line {line:?} to point at the proxy:\n{text}",
            self.agent_config.display()
        );
        let text = text.replace(&line, &format!("relay = \"{addr}\""));
        std::fs::write(&self.agent_config, text)?;
        Ok(())
    }

    /// Waits (bounded) until the relay has a live agent for the site.
    pub async fn wait_online(&self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(20), self.agents.wait_until(|t| t.is_online(SITE)))
            .await
            .with_context(|| format!("agent did not come online; last state {:?}", self.agent_state()))
    }

    /// Waits (bounded by `limit`) until the agent is online over `transport`.
    pub async fn wait_transport(&self, transport: keyway_agent::TransportKind, limit: Duration) -> anyhow::Result<()> {
        let mut state = self.agent.as_ref().context("no agent running")?.state.clone();
        let want = |s: &AgentState| matches!(s, AgentState::Online { transport: t, .. } if *t == transport);
        tokio::time::timeout(limit, state.wait_for(want))
            .await
            .with_context(|| {
                format!(
                    "agent not online over {transport} within {limit:?}; state {:?}",
                    self.agent_state()
                )
            })??;
        Ok(())
    }

    /// The agent's state as it changes (every attempt to reach the relay
    /// publishes `Connecting`).
    pub fn agent_states(&self) -> Option<watch::Receiver<AgentState>> {
        self.agent.as_ref().map(|a| a.state.clone())
    }

    /// The agent's last published state.
    pub fn agent_state(&self) -> Option<AgentState> {
        self.agent.as_ref().map(|a| a.state.borrow().clone())
    }

    /// Stops the agent (gracefully) and waits until the relay has dropped it.
    pub async fn stop_agent(&mut self) -> anyhow::Result<()> {
        if let Some(a) = self.agent.take() {
            a.stop.cancel();
            a.task.await?;
        }
        tokio::time::timeout(Duration::from_secs(20), self.agents.wait_until(|t| !t.is_online(SITE)))
            .await
            .context("relay still lists the agent")
    }

    /// Stops the relay (SIGTERM path: drain, then close) and starts a new one
    /// from the same config on the same port; the agent must find it alone.
    pub async fn restart_relay(&mut self) -> anyhow::Result<()> {
        self.relay_stop.cancel();
        if let Some(t) = self.relay_task.take() {
            t.await??;
        }
        let relay = rebind_relay(&self.relay_config).await?;
        self.agents = relay.agents();
        self.relay_stop = CancellationToken::new();
        self.relay_task = Some(tokio::spawn(relay.run(self.relay_stop.clone())));
        Ok(())
    }

    /// Stops the relay (its ports close) without starting it again.
    pub async fn stop_relay(&mut self) -> anyhow::Result<()> {
        self.relay_stop.cancel();
        if let Some(t) = self.relay_task.take() {
            t.await??;
        }
        Ok(())
    }

    /// Stops everything.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(a) = self.agent.take() {
            a.stop.cancel();
            a.task.await?;
        }
        self.relay_stop.cancel();
        if let Some(t) = self.relay_task.take() {
            t.await??;
        }
        Ok(())
    }

    /// A pooled HTTPS client that trusts only the relay's CA (HTTP/1.1 and h2).
    pub fn client(&self) -> HttpsClient {
        https_client(&self.https_ca_der)
    }
}

/// Binds the relay of `config` again on the ports a stopped one held.
///
/// A process restart frees its UDP ports at exit. In process, quinn's
/// endpoint driver lets its socket go a moment after the last handle is
/// dropped, which can be just after `Relay::run` returned: wait (bounded)
/// until the QUIC and node-to-node ports bind, as a new process would find them.
pub async fn rebind_relay(config: &Path) -> anyhow::Result<Relay> {
    let cfg = RelayConfig::load(config)?;
    let mut ports = vec![cfg.quic_listen];
    ports.extend(cfg.cluster.as_ref().map(|c| c.peer_listen));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ports.iter().any(|a| std::net::UdpSocket::bind(a).is_err()) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the stopped relay's UDP ports {ports:?} are still bound after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Relay::bind(cfg).await
}

/// A pooled HTTPS/1.1 client trusting `ca`.
pub fn https_client(ca: &CertificateDer<'static>) -> HttpsClient {
    build_client(ca, false)
}

/// A pooled client trusting `ca` that speaks HTTP/2 when the server offers it.
pub fn h2_client(ca: &CertificateDer<'static>) -> HttpsClient {
    build_client(ca, true)
}

/// [`h2_client`] with every name resolving to `ip`.
pub fn h2_client_at(ca: &CertificateDer<'static>, ip: IpAddr) -> HttpsClient {
    connector_client_at(
        keyway_certs::tls::https_client(ca).expect("CA is valid"),
        true,
        Resolver(Some(ip)),
    )
}

/// A client for the console itself, trusting only its pinned certificate
/// (what an integration on the LAN does).
pub fn pinned_client(fp: Fingerprint) -> HttpsClient {
    connector_client(
        keyway_certs::tls::console_client(keyway_certs::ConsoleTrust::Pinned(fp)).expect("valid config"),
        false,
    )
}

/// A pooled client trusting `ca` that connects to `ip` whatever the URL's
/// host: a relay node on 127.0.0.2 is asked for by the names its
/// certificate carries.
pub fn https_client_at(ca: &CertificateDer<'static>, ip: IpAddr) -> HttpsClient {
    connector_client_at(
        keyway_certs::tls::https_client(ca).expect("CA is valid"),
        false,
        Resolver(Some(ip)),
    )
}

fn build_client(ca: &CertificateDer<'static>, h2: bool) -> HttpsClient {
    connector_client(keyway_certs::tls::https_client(ca).expect("CA is valid"), h2)
}

/// Name resolution for test clients: the system's, or one fixed address.
#[derive(Clone)]
pub struct Resolver(Option<IpAddr>);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let fixed = self.0;
        Box::pin(async move {
            match fixed {
                Some(ip) => Ok(vec![SocketAddr::new(ip, 0)].into_iter()),
                None => {
                    let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
                    Ok(addrs.collect::<Vec<_>>().into_iter())
                }
            }
        })
    }
}

fn connector_client(tls: rustls::ClientConfig, h2: bool) -> HttpsClient {
    connector_client_at(tls, h2, Resolver(None))
}

fn connector_client_at(tls: rustls::ClientConfig, h2: bool, resolver: Resolver) -> HttpsClient {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let https = if h2 {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new()).build(https)
}

/// A request body from bytes.
pub fn body(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty request body.
pub fn empty() -> ClientBody {
    body(Bytes::new())
}

impl Stack {
    /// The API through the relay (default site via the bare IP; a
    /// zero-knowledge site by its name), with the console token.
    pub fn api(&self) -> crate::client::Api {
        if self.sealed_ca_der.is_some() {
            return self.sealed_api();
        }
        crate::client::Api::new(&self.relay_url(), &self.https_ca_der, &self.console.token)
    }

    /// The API through the relay offering HTTP/2 (for a zero-knowledge
    /// site, its agent answers it).
    pub fn api_h2(&self) -> crate::client::Api {
        match &self.sealed_ca_der {
            Some(ca) => crate::client::Api::with_client(
                h2_client_at(ca, self.relay_addr.ip()),
                &self.site_url(),
                &self.console.token,
            ),
            None => {
                crate::client::Api::with_client(h2_client(&self.https_ca_der), &self.relay_url(), &self.console.token)
            }
        }
    }

    /// The name and CA a client checks the site's certificate against.
    /// The name to ask the relay for and the CA to trust for the site's
    /// TLS: its own name and the agent's CA for a zero-knowledge site, the
    /// relay's address and CA otherwise.
    pub fn site_tls(&self) -> (String, &CertificateDer<'static>) {
        match &self.sealed_ca_der {
            Some(ca) => (format!("{SITE}.{DOMAIN}"), ca),
            None => ("127.0.0.1".into(), &self.https_ca_der),
        }
    }

    /// The console directly (no tunnel), for comparisons.
    pub fn direct_api(&self) -> crate::client::Api {
        crate::client::Api::with_client(
            pinned_client(self.console.fingerprint()),
            &self.console.url,
            &self.console.token,
        )
    }

    /// A Keyway-aware door-event listener (`?since=…`) through the relay.
    pub async fn listen_events_since(&self, query: &str) -> anyhow::Result<crate::client::EventListener> {
        let (name, ca) = self.site_tls();
        crate::client::EventListener::connect_to(self.relay_addr, &name, ca, &self.console.token, query).await
    }

    /// A door-event listener through the relay.
    pub async fn listen_events(&self) -> anyhow::Result<crate::client::EventListener> {
        self.listen_events_at(self.relay_addr).await
    }

    /// A door-event listener through another relay of the cluster, at `addr`.
    pub async fn listen_events_at(&self, addr: SocketAddr) -> anyhow::Result<crate::client::EventListener> {
        let (name, ca) = self.site_tls();
        crate::client::EventListener::connect(addr, &name, ca, &self.console.token).await
    }
}

fn append(path: &std::path::Path, extra: &str) -> anyhow::Result<()> {
    if extra.is_empty() {
        return Ok(());
    }
    let mut text = std::fs::read_to_string(path)?;
    text.push('\n');
    text.push_str(extra);
    text.push('\n');
    std::fs::write(path, text)?;
    Ok(())
}

/// A port free on both TCP and UDP at `ip` right now (the relay serves HTTPS
/// and QUIC on the same number, like 443/tcp + 443/udp in production).
pub fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on both TCP and UDP at {ip}")
}

/// Runs `f` on a thread of its own, as the CLI runs the admin commands: a
/// PostgreSQL registry blocks on a runtime of its own, which may not be
/// started inside the test's runtime.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the admin call panicked"))
}
