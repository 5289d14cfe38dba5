//! Many idle agents from one process, to measure what a connected site
//! costs the relay. Sites are registered straight in the relay's registry
//! with certificates from its CA (pairing a thousand sites one by one would
//! measure PBKDF2, not the relay); each connection then says `Hello` and
//! stays idle with the agent's own keep-alive settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use futures_util::stream::{self, StreamExt};
use keyway_certs::PrivateCa;
use keyway_proto::control::{read_msg, write_msg, ControlMsg};
use keyway_proto::{ALPN_TUNNEL, PROTOCOL_VERSION};
use keyway_relay::RelayConfig;

const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// One idle agent connection, kept open while held.
pub struct Idle {
    _conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

/// A registered site's agent identity, ready to dial.
pub struct Identity {
    site: String,
    issued: keyway_certs::ca::Issued,
    key: rcgen::KeyPair,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    name: String,
}

/// Registers sites `{prefix}{from..to}` and connects an idle agent for each.
pub async fn connect(
    cfg: &RelayConfig,
    endpoint: &quinn::Endpoint,
    quic: SocketAddr,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Idle>> {
    let identities = register(cfg, prefix, range).await?;
    dial(endpoint, quic, identities).await
}

/// Registers sites `{prefix}{from..to}`, each paired with a certificate
/// from the relay's CA.
pub async fn register(cfg: &RelayConfig, prefix: &str, range: std::ops::Range<usize>) -> anyhow::Result<Vec<Identity>> {
    let ca = PrivateCa::from_pem(
        &std::fs::read_to_string(&cfg.tunnel_ca)?,
        &std::fs::read_to_string(&cfg.tunnel_ca_key)?,
    )?;
    let registry = keyway_relay::Registry::open_at(&cfg.registry).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    // Off the runtime: the registry's calls block (PostgreSQL's on a
    // runtime of its own).
    let (prefix, range) = (prefix.to_string(), range.clone());
    let (ca, identities) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut identities = Vec::with_capacity(range.len());
        for i in range.clone() {
            let site = format!("{prefix}{i}");
            let key = rcgen::KeyPair::generate()?;
            let issued = ca.issue_agent(&site, &key, keyway_certs::ca::AGENT_VALIDITY)?;
            let store = registry.blocking();
            store.add_site(&site, now)?;
            // A one-off code id (not a usable code: the hash is of nothing).
            let id: String = [i / 1024, (i / 32) % 32, i % 32]
                .iter()
                .map(|&d| CROCKFORD[d % 32] as char)
                .collect();
            store.set_code(&site, &id, &[0u8; 32], now + 600, now)?;
            store.complete_pairing(&id, &issued.serial, now)?;
            identities.push((site, issued, key));
        }
        Ok((ca, identities))
    })
    .await??;
    let ca_der = ca.cert_der().clone();
    Ok(identities
        .into_iter()
        .map(|(site, issued, key)| Identity {
            site,
            issued,
            key,
            ca_der: ca_der.clone(),
            name: cfg.domain.clone(),
        })
        .collect())
}

/// Connects an idle agent for each identity, 32 at a time.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    quic: SocketAddr,
    identities: Vec<Identity>,
) -> anyhow::Result<Vec<Idle>> {
    let conns = stream::iter(identities)
        .map(
            |Identity {
                 site,
                 issued,
                 key,
                 ca_der,
                 name,
             }| {
                async move {
                    let key = keyway_certs::files::key_from_pem("key", key.serialize_pem().as_bytes())?;
                    let tls = keyway_certs::tls::tunnel_client(vec![issued.der], key, &ca_der, &[ALPN_TUNNEL])?;
                    let mut client =
                        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
                    client.transport_config(Arc::new(keyway_agent::uplink::transport_config()));
                    // The relay picks new sites up from the registry within a
                    // second; until then it answers "unknown site".
                    let mut last = None;
                    for _ in 0..20 {
                        match hello(endpoint, client.clone(), quic, &name).await {
                            Ok(idle) => return Ok(idle),
                            Err(e) => last = Some(e),
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(last.expect("tried").context(format!("site {site}")))
                }
            },
        )
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<Idle>>>()
        .await;
    conns.into_iter().collect()
}

async fn hello(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    quic: SocketAddr,
    name: &str,
) -> anyhow::Result<Idle> {
    let conn = endpoint.connect_with(client, quic, name)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = ControlMsg::Hello {
        version: PROTOCOL_VERSION,
        agent_version: "bench".into(),
        console_ok: true,
        console_problem: None,
        handover: false,
        nodes: false,
        limits: false,
    };
    write_msg(&mut send, &hello).await?;
    match read_msg(&mut recv, &mut BytesMut::new()).await? {
        ControlMsg::Welcome { .. } => Ok(Idle {
            _conn: conn,
            _control: (send, recv),
        }),
        other => bail!("relay answered {other:?}"),
    }
}

/// A client endpoint for the swarm.
pub fn endpoint() -> anyhow::Result<quinn::Endpoint> {
    quinn::Endpoint::client("127.0.0.1:0".parse().expect("constant")).context("UDP socket")
}
