//! The Keyway relay: a public HTTPS front for integrations and a QUIC
//! listener for agents, joined by the table of live agent connections.
//!
//! [`Relay::bind`] binds both listeners (port 0 works, for tests) and
//! [`Relay::run`] serves until the shutdown token is cancelled, then tells
//! every agent to `Drain` and lets open requests finish within the grace.
//!
//! # Map: one request, from accept to the console
//!
//! 1. [`tcp_port::serve`] accepts the integration's TCP connection and
//!    reads its TLS ClientHello: `h2`/`http/1.1` is an integration (below);
//!    `keyway/1` and `keyway-pair/1` are agents whose UDP is blocked,
//!    handed to [`tunnel::handle_tcp`] and [`pairing`].
//! 2. hyper calls [`proxy::handle`], which runs `proxy::serve` and
//!    answers whatever stops it with [`proxy::error::respond`] — the one
//!    place a [`proxy::ProxyError`] becomes a status and an envelope code.
//! 3. `proxy::route` picks the site from the host and canonicalises the
//!    path; [`limits::Edge::admit_request`] applies the site's allow-list,
//!    header and body limits, rates and concurrency; [`AgentTable::get`]
//!    finds the site's live agent link (registered by [`tunnel::serve`]
//!    when the agent dialled in and said `Hello`).
//! 4. `proxy::forward::Forward::send` rewrites the head for the tunnel
//!    (`proxy::headers::for_tunnel`), reads a body of unknown length whole
//!    ([`keyway_proto::edge::whole::read`]), takes an idle stream from the link's
//!    [`streams::StreamPool`] or opens one (`Tunnel::open`, a one-byte
//!    [`keyway_proto::preamble`], an HTTP/1.1 client handshake), and sends
//!    the request; the response body streams back inside `proxy::body`'s
//!    `Tracked`, which frees the request's slots and gives the stream back
//!    to the pool when it ends. A `101` hands both ends to [`upgrade::Upgrades`].
//! 5. On the agent (`keyway_agent`'s crate doc goes on from here): the
//!    uplink accepts the stream, serves HTTP/1.1 on it, checks access, and
//!    calls the console.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod admin_http;
pub mod agents;
pub mod apt;
pub mod cluster;
pub mod config;
pub mod duplicates;
pub mod init;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod pairing;
pub mod proxy;
pub mod registry;
pub mod sealed;
pub mod sites;
pub mod streams;
pub mod tcp_port;
pub mod tunnel;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use keyway_certs::files::{load_certs, load_key};
use keyway_certs::{PrivateCa, PublicCert};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use agents::AgentTable;
pub use config::RelayConfig;
pub use registry::Registry;
pub use sites::SiteCache;

/// A relay with its listeners bound.
pub struct Relay {
    cfg: RelayConfig,
    https: TcpListener,
    tls: tcp_port::TcpPortTls,
    endpoint: quinn::Endpoint,
    agents: AgentTable,
    registry: Registry,
    sites: SiteCache,
    pairing: Arc<pairing::PairingCtx>,
    admin: Option<TcpListener>,
    observer: Option<proxy::Observer>,
    public: PublicCert,
    /// The stored ACME certificate's version (see `acme::follow`).
    acme_version: i64,
    cluster: Option<Arc<cluster::Cluster>>,
}

impl Relay {
    /// Loads certificates and binds the HTTPS (TCP) and QUIC (UDP) listeners.
    pub async fn bind(cfg: RelayConfig) -> anyhow::Result<Self> {
        let registry = Registry::open_at(&cfg.registry)
            .await
            .with_context(|| format!("registry {}", cfg.registry))?;
        let shared = cfg.registry.is_shared().then(|| registry.clone());
        let (public, acme_version) = match (&cfg.https_cert, &cfg.https_key, &cfg.acme) {
            (Some(cert), Some(key), _) => (
                PublicCert::new(load_certs(cert)?, load_key(key)?).context("public HTTPS certificate")?,
                0,
            ),
            (_, _, Some(acme)) => acme::initial_cert(acme, &cfg.domain, shared.as_ref()).await?,
            _ => anyhow::bail!("no public certificate configured"),
        };
        let https_cfg =
            keyway_certs::tls::https_server(public.clone(), cfg.acme.is_some()).context("public HTTPS certificate")?;
        let ca_pem = std::fs::read_to_string(&cfg.tunnel_ca).with_context(|| format!("{}", cfg.tunnel_ca.display()))?;
        let ca_key =
            std::fs::read_to_string(&cfg.tunnel_ca_key).with_context(|| format!("{}", cfg.tunnel_ca_key.display()))?;
        let ca = PrivateCa::from_pem(&ca_pem, &ca_key).context("tunnel CA")?;
        let tunnel = (load_certs(&cfg.tunnel_cert)?, load_key(&cfg.tunnel_key)?);
        let quic_tls = keyway_certs::tls::relay_quic_server(tunnel, public.clone(), ca.cert_der())
            .context("tunnel certificate")?;
        let tls = tcp_port::TcpPortTls {
            https: Arc::new(https_cfg),
            tunnel: Arc::new(quic_tls.clone()),
        };
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls).context("tunnel TLS for QUIC")?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server.transport_config(Arc::new(tunnel::transport_config()));

        let sites = SiteCache::default();
        sites.reload(&registry).await?;
        if let Some(d) = cfg.default_site.as_deref().filter(|d| !sites.contains(d)) {
            tracing::warn!("default_site {d:?} is not a site yet (keyway-relay site add {d})");
        }
        let agents = AgentTable::default();
        let cluster = match &cfg.cluster {
            Some(c) => Some(Arc::new(cluster::Cluster::bind(
                c,
                cfg.quic_listen,
                &ca,
                registry.clone(),
                agents.clone(),
            )?)),
            None => None,
        };
        let pairing = Arc::new(pairing::PairingCtx {
            registry: registry.clone(),
            sites: sites.clone(),
            agents: agents.clone(),
            ca,
            domain: cfg.domain.clone(),
            tunnel_name: cfg.domain.clone(),
            https_port: cfg.https_listen.port(),
            max_tries: cfg.pairing_max_tries,
        });

        let endpoint = bind_quic(&cfg, server)?;
        let https = tcp_port::bind(cfg.https_listen)
            .await
            .with_context(|| format!("could not bind HTTPS (TCP) on {}", cfg.https_listen))?;
        let admin = match cfg.admin_listen {
            Some(a) => Some(
                admin_http::bind(a)
                    .await
                    .with_context(|| format!("could not bind the admin listener on {a}"))?,
            ),
            None => None,
        };
        Ok(Self {
            admin,
            cfg,
            https,
            tls,
            endpoint,
            agents,
            registry,
            sites,
            pairing,
            observer: None,
            public,
            acme_version,
            cluster,
        })
    }

    /// Calls `f` with each request head as it is sent into a tunnel (tests
    /// use it to check what crosses the tunnel).
    pub fn observe_forwarded(&mut self, f: proxy::Observer) {
        self.observer = Some(f);
    }

    /// The public certificate (to reload it on SIGHUP).
    pub fn public_cert(&self) -> PublicCert {
        self.public.clone()
    }

    /// Re-reads `https_cert` and `https_key` for new handshakes; open
    /// connections keep theirs. With `[acme]` there is nothing to re-read.
    pub fn reload_public_cert(
        cfg: &RelayConfig,
        public: &PublicCert,
    ) -> anyhow::Result<keyway_certs::public::CertSummary> {
        let (Some(cert), Some(key)) = (&cfg.https_cert, &cfg.https_key) else {
            anyhow::bail!("the certificate is managed by ACME; nothing to reload");
        };
        Ok(public.replace(load_certs(cert)?, load_key(key)?)?)
    }

    /// Where integrations connect.
    pub fn https_addr(&self) -> SocketAddr {
        self.https.local_addr().expect("bound listener has an address")
    }

    /// Where agents connect.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint has an address")
    }

    /// Where the admin listener is bound, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The live agent table (to wait for a site to come online).
    pub fn agents(&self) -> AgentTable {
        self.agents.clone()
    }

    /// Serves until `stop` is cancelled; then drains agents and requests.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            cfg,
            https,
            tls,
            endpoint,
            agents,
            registry,
            sites,
            pairing,
            admin,
            observer,
            public,
            acme_version,
            cluster,
        } = self;
        if let Some(acme) = cfg.acme.clone() {
            let shared = cfg.registry.is_shared().then(|| registry.clone());
            let maintained = acme::Maintained {
                public: public.clone(),
                version: acme_version,
                sites: sites.clone(),
                shared,
            };
            tokio::spawn(acme::maintain(acme, cfg.domain.clone(), maintained, stop.clone()));
        }
        if let Some(listener) = admin {
            let console = operator::Console::new(
                cfg.clone(),
                registry.clone(),
                agents.clone(),
                sites.clone(),
                stop.clone(),
            );
            let tls = if cfg.admin_tls {
                Some(admin_http::tls_config(public.clone())?)
            } else {
                if !listener.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
                    tracing::warn!(
                        "the admin listener is plain HTTP on a non-loopback address: set admin_tls = true, \
                         or keep it on 127.0.0.1 and reach the console through an SSH tunnel"
                    );
                }
                None
            };
            tokio::spawn(admin_http::serve(
                listener,
                tls,
                agents.clone(),
                sites.clone(),
                console,
                stop.clone(),
            ));
        }
        let tracker = TaskTracker::new();
        let edge = Arc::new(
            limits::Edge::new(cfg.limits.clone())
                .with_timeouts(limits::Timeouts {
                    request: cfg.request_timeout,
                    websocket_ping: cfg.websocket_ping_interval,
                    header_read: cfg.header_read_timeout,
                })
                .following(sites.clone()),
        );
        let tunnel_ctx = Arc::new(tunnel::TunnelCtx {
            edge: edge.clone(),
            sites: sites.clone(),
            registry: registry.clone(),
            agents: agents.clone(),
            pairing,
            cluster: cluster.clone(),
        });
        let upgrades = upgrade::Upgrades {
            ping_every: cfg.websocket_ping_interval,
            ..Default::default()
        };
        // At shutdown, WebSockets get "service restart" (1012) at once: an
        // event stream never finishes by itself, and its client should
        // reconnect to the relay that replaces this one.
        tokio::spawn({
            let (stop, closing) = (stop.clone(), upgrades.closing.clone());
            async move {
                stop.cancelled().await;
                closing.cancel();
            }
        });
        let watch_stop = CancellationToken::new();
        let watcher = tokio::spawn(sites::watch(
            registry,
            sites.clone(),
            agents.clone(),
            watch_stop.clone(),
        ));
        let proxy_ctx = Arc::new(proxy::ProxyCtx {
            domain: cfg.domain.clone(),
            sites,
            default_site: cfg.default_site.clone(),
            agents: agents.clone(),
            request_timeout: cfg.request_timeout,
            upgrades: upgrades.clone(),
            edge,
            observer,
            apt: cfg.apt_repository.clone().map(apt::AptRepository::new),
            cluster: cluster.clone(),
        });
        let cluster_task = cluster
            .clone()
            .map(|c| tokio::spawn(c.run(proxy_ctx.clone(), stop.clone())));
        // Per-address buckets are forgotten once refilled and idle.
        let (edge, edge_stop) = (proxy_ctx.edge.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = edge_stop.cancelled() => return,
                    _ = tick.tick() => edge.forget_idle(),
                }
            }
        });
        tracing::info!(https = %https.local_addr()?, quic = %endpoint.local_addr()?, domain = cfg.domain, "relay serving");
        let quic_stop = CancellationToken::new();
        let sealed = TaskTracker::new();
        let tcp_agents = tcp_port::TcpAgents {
            ctx: tunnel_ctx.clone(),
            stop: quic_stop.clone(),
            tracker: tracker.clone(),
            sealed: sealed.clone(),
        };
        let quic = tokio::spawn(tunnel::serve(
            endpoint.clone(),
            tunnel_ctx,
            quic_stop.clone(),
            tracker.clone(),
        ));
        let port_opts = tcp_port::TcpPortOptions {
            header_read_timeout: cfg.header_read_timeout,
            grace: cfg.shutdown_grace,
            max_connections_per_client: cfg.max_connections_per_client.max(1),
        };
        tcp_port::serve(https, tls, tcp_agents, proxy_ctx, port_opts, stop).await;
        tracing::debug!("HTTPS front stopped");

        // The front has stopped and its requests are done (or out of grace);
        // WebSockets have their close frames. Then tell agents to move on.
        upgrades.tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), upgrades.tracker.wait()).await;
        // A cluster node left the registry when told to stop; what peers
        // sent before they knew is answered (from the agents' links, still
        // up) before the links drain.
        if let Some(task) = cluster_task {
            let _ = task.await;
        }
        if let Some(c) = &cluster {
            c.close(cfg.shutdown_grace).await;
        }
        let links = agents.all();
        tracing::info!(
            agents = links.len(),
            zero_knowledge_connections = sealed.len(),
            "front closed; telling agents to drain"
        );
        for (_, link) in links {
            link.drain.cancel();
        }
        // Zero-knowledge connections end when their agents close them, as
        // told to drain; the tunnels stay up until then (within the grace).
        sealed.close();
        if tokio::time::timeout(cfg.shutdown_grace, sealed.wait()).await.is_err() {
            tracing::warn!("zero-knowledge connections still open after {:?}", cfg.shutdown_grace);
        }
        quic_stop.cancel();
        watch_stop.cancel();
        let _ = watcher.await;
        endpoint.close(keyway_proto::CloseCode::Shutdown.code().into(), b"relay shutting down");
        let _ = quic.await;
        tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        Ok(())
    }
}

/// Binds the QUIC endpoint with a stateless-reset key that survives restarts.
///
/// After a crash (kill -9, power loss) agents still hold the old connection.
/// The restarted relay answers their next packet with a stateless reset, and
/// because the reset key is derived from the relay's tunnel key (not drawn at
/// random per process) the agent accepts it and reconnects at once, instead
/// of waiting out its idle timeout. The secret is derived from the tunnel
/// key, which only the relay holds.
fn bind_quic(cfg: &RelayConfig, server: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    use ring::hmac;
    let secret = std::fs::read(&cfg.tunnel_key).with_context(|| format!("{}", cfg.tunnel_key.display()))?;
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, b"keyway stateless reset v1"),
        &secret,
    );
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    // The connection-id generator signs the ids it hands out and drops
    // packets whose id it did not sign; a per-process key would make a
    // restarted relay drop the agents' packets silently instead of resetting.
    let cid_key = u64::from_le_bytes(derived.as_ref()[..8].try_into().expect("HMAC output is 32 bytes"));
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_cfg.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let socket = std::net::UdpSocket::bind(cfg.quic_listen)
        .with_context(|| format!("could not bind QUIC (UDP) on {}", cfg.quic_listen))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    Ok(quinn::Endpoint::new(endpoint_cfg, Some(server), socket, runtime)?)
}

/// `keyway-relay serve`: serves until SIGTERM or Ctrl-C, then drains;
/// SIGHUP reloads the public certificate.
pub async fn serve_until_signal(cfg: RelayConfig) -> anyhow::Result<()> {
    let relay = Relay::bind(cfg.clone()).await?;
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    tokio::spawn(reload_on_sighup(cfg, relay.public_cert()));
    relay.run(stop).await
}

/// SIGHUP (`systemctl reload keyway-relay`): re-read the public certificate
/// files, e.g. after certbot renewed them. New handshakes get the new one;
/// open connections are untouched. A bad file keeps the old certificate.
async fn reload_on_sighup(cfg: RelayConfig, public: keyway_certs::PublicCert) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return tracing::warn!("no SIGHUP handler: certificate reload is unavailable");
    };
    while hup.recv().await.is_some() {
        match Relay::reload_public_cert(&cfg, &public) {
            Ok(s) => tracing::info!(names = ?s.names, not_after = s.not_after, "public certificate reloaded"),
            Err(e) => tracing::error!("public certificate not reloaded, the old one stays in use: {e:#}"),
        }
    }
}

async fn shutdown_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining agents and open requests");
    stop.cancel();
}
