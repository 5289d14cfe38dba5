//! The Keyway relay: a public HTTPS front for integrations and a QUIC
//! listener for agents, joined by the table of live agent connections.
//!
//! [`Relay::bind`] binds both listeners (port 0 works, for tests) and
//! [`Relay::run`] serves until the shutdown token is cancelled, then tells
//! every agent to `Drain` and lets open requests finish within the grace.
#![forbid(unsafe_code)]

pub mod agents;
pub mod config;
pub mod front;
pub mod proxy;
pub mod respond;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use keyway_certs::files::{load_certs, load_key};
use keyway_proto::ALPN_TUNNEL;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use agents::AgentTable;
pub use config::RelayConfig;

/// A relay with its listeners bound.
pub struct Relay {
    cfg: RelayConfig,
    https: TcpListener,
    tls: TlsAcceptor,
    endpoint: quinn::Endpoint,
    agents: AgentTable,
}

impl Relay {
    /// Loads certificates and binds the HTTPS (TCP) and QUIC (UDP) listeners.
    pub async fn bind(cfg: RelayConfig) -> anyhow::Result<Self> {
        let https_cfg = keyway_certs::tls::https_server(load_certs(&cfg.https_cert)?, load_key(&cfg.https_key)?)
            .context("public HTTPS certificate")?;
        let ca = load_certs(&cfg.tunnel_ca)?.remove(0);
        let tunnel_cfg = keyway_certs::tls::tunnel_server(
            load_certs(&cfg.tunnel_cert)?,
            load_key(&cfg.tunnel_key)?,
            &ca,
            &[ALPN_TUNNEL],
        )
        .context("tunnel certificate")?;
        let quic_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tunnel_cfg).context("tunnel TLS for QUIC")?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server.transport_config(Arc::new(tunnel::transport_config()));
        let endpoint = quinn::Endpoint::server(server, cfg.quic_listen)
            .with_context(|| format!("could not bind QUIC (UDP) on {}", cfg.quic_listen))?;
        let https = front::bind(cfg.https_listen)
            .await
            .with_context(|| format!("could not bind HTTPS (TCP) on {}", cfg.https_listen))?;
        Ok(Self {
            cfg,
            https,
            tls: TlsAcceptor::from(Arc::new(https_cfg)),
            endpoint,
            agents: AgentTable::default(),
        })
    }

    /// Where integrations connect.
    pub fn https_addr(&self) -> SocketAddr {
        self.https.local_addr().expect("bound listener has an address")
    }

    /// Where agents connect.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint has an address")
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
        } = self;
        let tracker = TaskTracker::new();
        let tunnel_ctx = Arc::new(tunnel::TunnelCtx {
            sites: cfg.sites.clone(),
            agents: agents.clone(),
        });
        let proxy_ctx = Arc::new(proxy::ProxyCtx {
            domain: cfg.domain.clone(),
            sites: cfg.sites.clone(),
            default_site: cfg.default_site.clone(),
            agents: agents.clone(),
            request_timeout: cfg.request_timeout,
        });
        tracing::info!(https = %https.local_addr()?, quic = %endpoint.local_addr()?, domain = cfg.domain, "relay serving");
        let quic_stop = CancellationToken::new();
        let quic = tokio::spawn(tunnel::serve(
            endpoint.clone(),
            tunnel_ctx,
            quic_stop.clone(),
            tracker.clone(),
        ));
        front::serve(https, tls, proxy_ctx, cfg.header_read_timeout, cfg.shutdown_grace, stop).await;

        // The front has stopped and its requests are done (or out of grace):
        // tell agents to move on, then close.
        for (_, link) in agents.all() {
            link.drain.cancel();
        }
        quic_stop.cancel();
        let _ = quic.await;
        endpoint.close(keyway_proto::CloseCode::Shutdown.code().into(), b"relay shutting down");
        tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        Ok(())
    }
}
