//! The Keyway agent: runs beside a UniFi Access console, dials out to the
//! relay over QUIC (or TLS over TCP where UDP is blocked) and forwards the
//! requests the relay sends it to the console, whose certificate it pins.
//!
//! [`Agent::new`] checks the configuration and builds the clients;
//! [`Agent::run`] serves until the shutdown token is cancelled.
//!
//! # Map: one request, from the tunnel stream to the console
//!
//! 1. [`uplink::run`] keeps a connection to the relay: `uplink::dial`
//!    (over [`keyway_transport::dial`]) connects, `uplink::session` says
//!    `Hello` and accepts the streams the relay opens.
//! 2. `uplink::stream::serve` reads the stream's preamble and serves
//!    HTTP/1.1 on it with [`handler::Handler::handle`].
//! 3. The handler canonicalises the path, [`access::Access::authorize`]
//!    checks the credential, its route policy and the unlock rates, then
//!    hands the request to the event hub
//!    ([`hub::serve::Subscribers::subscribe`], for the notifications
//!    WebSocket) or to [`console::Console::forward`], which sends it to the
//!    console over a pooled client that trusts only the pinned
//!    certificate. One audit record follows ([`audit`]).
//! 4. Whatever stops a request is an [`error::AgentError`];
//!    [`error::respond`] is the one place it becomes a status and an
//!    envelope code.
// One audited FFI call (`trim::release`) is allowed where it is made.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod audit;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod console;
pub mod console_token;
pub mod doctor;
pub mod edge;
pub mod error;
pub mod handler;
pub mod hub;
pub mod live;
pub mod pair;
pub mod repin;
pub mod state_format;
pub mod status;
pub mod status_socket;
pub mod systemd;
pub mod trim;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use keyway_certs::files::{load_certs, load_key};
use keyway_proto::ALPN_TUNNEL;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, TransportMode};
pub use keyway_transport::TransportKind;
pub use uplink::AgentState;

/// A configured agent, not yet running.
pub struct Agent {
    ctx: Arc<uplink::Uplink>,
    hub: Option<(Arc<hub::Hub>, hub::upstream::Upstream)>,
    webhooks: Option<hub::webhooks::Capture>,
    state: watch::Receiver<AgentState>,
    status_file: std::path::PathBuf,
    status_socket: std::path::PathBuf,
    cert_not_after: Option<i64>,
    site_tls: Option<keyway_certs::public::CertSummary>,
}

impl Agent {
    /// Loads keys and certificates and prepares the tunnel and console clients.
    pub fn new(cfg: &AgentConfig) -> anyhow::Result<Self> {
        let ca = load_certs(&cfg.relay_ca)?.remove(0);
        let chain = load_certs(&cfg.cert)?;
        let cert_not_after = keyway_certs::public::summarize(&chain[0]).ok().map(|s| s.not_after);
        let tls = keyway_certs::tls::tunnel_client(chain, load_key(&cfg.key)?, &ca, &[ALPN_TUNNEL])
            .context("agent certificate")?;
        let tcp_tls = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()));
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("tunnel TLS for QUIC")?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_tls));
        client.transport_config(Arc::new(uplink::transport_config()));
        let relay_is_v6 = cfg.relay.starts_with('[');
        let bind: SocketAddr = if relay_is_v6 { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .expect("constant address");
        let mut endpoint = quinn::Endpoint::client(bind).context("could not open a UDP socket")?;
        endpoint.set_default_client_config(client);

        let console = console::Console::from_config(cfg)?;
        let console_token = console_token::load(&cfg.console_token_path())?;
        let hub = event_hub(cfg, console_token.as_deref(), console.trust_cell())?;
        let console = Arc::new(console);
        let access = access::Access::new(
            access::AccessOptions {
                passthrough: cfg.passthrough,
                passthrough_policy: cfg.passthrough_policy()?,
                unlock_per_minute: cfg.unlock_per_minute,
                unlock_site_per_minute: cfg.unlock_site_per_minute,
            },
            &cfg.state_dir(),
            console_token.as_deref(),
        );
        let audit = match audit::Audit::start(&cfg.state_dir(), cfg.audit_max_bytes) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!("audit log off: {e:#}");
                None
            }
        };
        let sealed = sealed_tls(cfg)?;
        let handler = Arc::new(handler::Handler {
            console: console.clone(),
            events: hub.as_ref().map(|(h, _)| {
                Arc::new(hub::serve::Subscribers::new(
                    h.clone(),
                    cfg.event_ping_interval.max(std::time::Duration::from_millis(100)),
                ))
            }),
            access,
            audit,
            live: Arc::default(),
            sealed: sealed.as_ref().map(|(tls, _)| tls.clone()),
            edge: Default::default(),
        });
        let (state_tx, state) = watch::channel(AgentState::Connecting);
        let ctx = uplink::Uplink {
            endpoint,
            tcp_tls,
            relay: cfg.relay.clone(),
            relay_tcp: cfg.relay_tcp_addr(),
            relay_name: cfg.relay_server_name(),
            mode: cfg.transport,
            quic_deadline: cfg.quic_deadline,
            quic_probe: cfg.quic_probe_interval.max(std::time::Duration::from_millis(100)),
            udp_blocked: Default::default(),
            console,
            handler,
            state: state_tx,
            console_check: cfg.console_check_interval.max(std::time::Duration::from_millis(100)),
            config_path: cfg.source.clone(),
            links: Arc::new(uplink::Links::new(cfg.links)),
            index: 0,
        };
        let webhooks = match &hub {
            Some(_) => hub::webhooks::Capture::load(&cfg.state_dir())?,
            None => None,
        };
        Ok(Self {
            ctx: Arc::new(ctx),
            hub,
            webhooks,
            state,
            status_file: status::path_for(&cfg.key),
            status_socket: status_socket::path_for(&cfg.key),
            cert_not_after,
            site_tls: sealed.map(|(_, summary)| summary),
        })
    }

    /// The event hub, when it is on.
    pub fn hub(&self) -> Option<Arc<hub::Hub>> {
        self.hub.as_ref().map(|(h, _)| h.clone())
    }

    /// The agent's state, as it changes.
    pub fn state(&self) -> watch::Receiver<AgentState> {
        self.state.clone()
    }

    /// Tells the relay this agent is being unpaired, so it revokes the
    /// certificate now rather than when an operator remembers to.
    /// The connection says only that: it does not take the site's tunnel
    /// from a running agent (which would take it back before the relay
    /// heard the request).
    pub async fn notify_unpair(&self) -> anyhow::Result<()> {
        use keyway_proto::control::{write_msg, ControlMsg};
        use keyway_proto::CloseCode;
        let wait = std::time::Duration::from_secs(5);
        let tunnel = uplink::connect(&self.ctx).await?;
        let mut control = tunnel.open_control().await?;
        write_msg(&mut control, &ControlMsg::Unpair).await?;
        let _ = tokio::time::timeout(wait, tunnel.closed()).await;
        match keyway_transport::peer_close(&*tunnel) {
            Some((CloseCode::Revoked, _)) => return Ok(()),
            // A relay from before this: Unpair only inside a session.
            Some((CloseCode::ProtocolError, _)) => {}
            other => anyhow::bail!("the relay did not confirm the revocation ({other:?})"),
        }
        let tunnel = uplink::connect(&self.ctx).await?;
        let (mut control, site, _, _) = uplink::hello(&*tunnel, console::ConsoleHealth::Ok, false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        write_msg(&mut control, &ControlMsg::Unpair).await?;
        let _ = tokio::time::timeout(wait, tunnel.closed()).await;
        match keyway_transport::peer_close(&*tunnel) {
            Some((CloseCode::Revoked, _)) => Ok(()),
            other => anyhow::bail!("the relay did not confirm the revocation of site {site:?} ({other:?})"),
        }
    }

    /// Whether a tunnel handshake over `transport` completes now (QUIC within
    /// the configured deadline), for `doctor`. The connection is closed at once.
    pub async fn probe(
        &self,
        transport: keyway_transport::TransportKind,
    ) -> Result<(), keyway_transport::dial::DialError> {
        let tunnel = uplink::connect_over(&self.ctx, transport).await?;
        tunnel.close(keyway_proto::CloseCode::Normal, "doctor");
        Ok(())
    }

    /// How far the relay's clock is ahead of this machine's, in
    /// milliseconds (negative: this machine is ahead), corrected by half the
    /// round trip, for `doctor`. The connection asks only the time: it does
    /// not replace the running agent's tunnel.
    pub async fn relay_clock_offset_ms(&self, transport: keyway_transport::TransportKind) -> anyhow::Result<i64> {
        use keyway_proto::control::{read_msg, write_msg, ControlMsg};
        use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
        let tunnel = uplink::connect_over(&self.ctx, transport).await?;
        let mut control = tunnel.open_control().await?;
        let (sent, start) = (SystemTime::now(), Instant::now());
        write_msg(&mut control, &ControlMsg::TimeQuery).await?;
        let mut buf = bytes::BytesMut::new();
        let answer = tokio::time::timeout(Duration::from_secs(10), read_msg(&mut control, &mut buf)).await;
        let rtt = start.elapsed();
        tunnel.close(keyway_proto::CloseCode::Normal, "doctor");
        match answer {
            Ok(Ok(ControlMsg::Time { unix_ms })) => {
                let ours = (sent + rtt / 2)
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                Ok(unix_ms as i64 - ours)
            }
            Ok(Ok(other)) => anyhow::bail!("the relay does not tell the time (an older relay?): {other:?}"),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the relay does not tell the time (an older relay?)")),
            Err(_) => anyhow::bail!("the relay did not tell the time within 10 s"),
        }
    }

    /// Serves until `stop` is cancelled, reconnecting as needed.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut hub_tasks = Vec::new();
        if let Some((hub, up)) = self.hub.take() {
            if let Some(capture) = self.webhooks.take() {
                hub_tasks.push(tokio::spawn(hub::webhooks::serve(
                    hub.clone(),
                    capture,
                    stop.child_token(),
                )));
            }
            hub_tasks.push(tokio::spawn(hub::upstream::run(hub, up, stop.child_token())));
        }
        let trim = tokio::spawn({
            let (console, live) = (self.ctx.handler.console.clone(), self.ctx.handler.live.clone());
            trim::run(
                move || console.is_quiet().then(|| live.last_hour().0),
                stop.child_token(),
            )
        });
        let current = status::Current::default();
        let writer = tokio::spawn(status::keep_written(
            self.status_file.clone(),
            self.ctx.relay.clone(),
            self.state.clone(),
            current.clone(),
        ));
        let socket_stop = CancellationToken::new();
        let socket = match status_socket::bind(&self.status_socket).await {
            Ok(listener) => Some(tokio::spawn(status_socket::serve(
                listener,
                self.status_socket.clone(),
                status_socket::Source {
                    current,
                    live: self.ctx.handler.live.clone(),
                    cert_not_after: self.cert_not_after,
                    links: self.ctx.links.clone(),
                    site_tls: self.site_tls.clone(),
                },
                socket_stop.clone(),
            ))),
            Err(e) => {
                tracing::warn!("status socket off: {e:#}");
                None
            }
        };
        uplink::run(self.ctx.clone(), stop).await;
        socket_stop.cancel();
        if let Some(s) = socket {
            let _ = s.await;
        }
        self.ctx
            .endpoint
            .close(keyway_proto::CloseCode::Shutdown.code().into(), b"agent stopping");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.ctx.endpoint.wait_idle()).await;
        for t in hub_tasks {
            let _ = t.await;
        }
        let _ = trim.await;
        // The state channel closes with the context: the file says "stopped".
        drop(self);
        let _ = writer.await;
    }
}

/// A zero-knowledge site's TLS and what its certificate covers.
type SealedTls = (Arc<rustls::ServerConfig>, keyway_certs::public::CertSummary);

/// The TLS this agent terminates for a zero-knowledge site, if configured.
fn sealed_tls(cfg: &AgentConfig) -> anyhow::Result<Option<SealedTls>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let chain = load_certs(cert).with_context(|| format!("tls_cert {}", cert.display()))?;
    let key = load_key(key).with_context(|| format!("tls_key {}", key.display()))?;
    let public = keyway_certs::public::PublicCert::new(chain, key).context("tls_cert and tls_key")?;
    let summary = public.summary().context("tls_cert")?;
    let mut tls = keyway_certs::tls::https_server(public, false).context("tls_cert")?;
    // HTTP/2 and HTTP/1.1, as the relay offers them for the sites it terminates.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some((Arc::new(tls), summary)))
}

/// The event hub, if it is on and the console token is set.
fn event_hub(
    cfg: &AgentConfig,
    token: Option<&str>,
    trust: Arc<std::sync::RwLock<keyway_certs::ConsoleTrust>>,
) -> anyhow::Result<Option<(Arc<hub::Hub>, hub::upstream::Upstream)>> {
    if !cfg.event_hub {
        return Ok(None);
    }
    let token_path = cfg.console_token_path();
    let Some(token) = token.map(str::to_string) else {
        tracing::info!(
            "event hub off: no console token at {} (set one with `keyway-agent console-token set`); \
             each event subscriber gets its own WebSocket to the console",
            token_path.display()
        );
        return Ok(None);
    };
    let opts = hub::HubOptions {
        buffer: cfg.event_buffer,
        max_bytes: cfg.event_buffer_max_bytes,
        retention: cfg.event_retention,
        queue: cfg.event_queue,
    };
    let (loaded, writer) = hub::store::load(&cfg.events_path(), &opts).context("event buffer")?;
    let hub = Arc::new(hub::Hub::new(opts, loaded, Some(writer)));
    let upstream = hub::upstream::Upstream {
        base: cfg.console_uri()?,
        trust,
        token,
    };
    Ok(Some((hub, upstream)))
}
