//! An agent that breaks the protocol on purpose, for tests of what the relay
//! does when a tunnel stream fails while the tunnel itself stays up.
//!
//! It dials the relay over QUIC with a real agent's identity (its
//! `agent.toml`), says `Hello`, answers the relay's pings, and answers every
//! request stream with bytes that are not an HTTP response.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use bytes::BytesMut;
use keyway_proto::control::{read_msg, write_msg, ControlMsg};
use keyway_proto::{ALPN_TUNNEL, PROTOCOL_VERSION};
use keyway_transport::quic::QuicTunnel;
use keyway_transport::Tunnel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What the rogue agent writes back on each request stream.
pub const GARBAGE: &[u8] = b"this is not HTTP\r\n\r\n";

/// A connected rogue agent; it disconnects when dropped.
pub struct RogueAgent {
    streams: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for RogueAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RogueAgent {
    /// Connects with the identity in `agent_config` and serves until dropped.
    pub async fn connect(agent_config: &Path) -> anyhow::Result<Self> {
        let cfg = keyway_agent::AgentConfig::load(agent_config)?;
        let ca = keyway_certs::files::load_certs(&cfg.relay_ca)?.remove(0);
        let chain = keyway_certs::files::load_certs(&cfg.cert)?;
        let key = keyway_certs::files::load_key(&cfg.key)?;
        let tls = keyway_certs::tls::tunnel_client(chain, key, &ca, &[ALPN_TUNNEL])?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(Arc::new(keyway_agent::uplink::transport_config()));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(client);
        let addr = tokio::net::lookup_host(&cfg.relay)
            .await?
            .next()
            .context("relay address")?;
        let conn = endpoint.connect(addr, &cfg.relay_server_name())?.await?;
        let tunnel = Arc::new(QuicTunnel(conn));

        let mut control = tunnel.open_control().await?;
        let hello = ControlMsg::Hello {
            version: PROTOCOL_VERSION,
            agent_version: "rogue".into(),
            console_ok: true,
            console_problem: None,
            handover: false,
            nodes: false,
            limits: false,
        };
        write_msg(&mut control, &hello).await?;
        let mut buf = BytesMut::new();
        match read_msg(&mut control, &mut buf).await? {
            ControlMsg::Welcome { .. } => {}
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        }

        let (streams, stop) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        let (count, done) = (streams.clone(), stop.clone());
        tokio::spawn(async move {
            let _endpoint = endpoint;
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    msg = read_msg(&mut control, &mut buf) => match msg {
                        Ok(ControlMsg::Ping { nonce }) => {
                            if write_msg(&mut control, &ControlMsg::Pong { nonce }).await.is_err() { break }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                    stream = tunnel.accept() => {
                        let Ok(mut s) = stream else { break };
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(async move {
                            // The preamble and some of the request head, then nonsense.
                            let mut head = [0u8; 64];
                            let _ = s.read(&mut head).await;
                            let _ = s.write_all(GARBAGE).await;
                            let _ = s.shutdown().await;
                        });
                    }
                }
            }
            tunnel.close(keyway_proto::CloseCode::Normal, "rogue agent leaving");
        });
        Ok(Self { streams, stop })
    }

    /// Request streams the relay opened to it so far.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}
