//! The relay's side of pairing (ALPN `keyway-pair/1`): prove the code with
//! SPAKE2 bound to this TLS session, then certify the agent's own key.
//!
//! See `keyway_certs::pake` for the cryptographic design. What this module
//! adds: the registry checks (unknown, expired, used, burned codes; every
//! attempt counts), exactly-once completion, and time limits on each step.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use keyway_certs::pake::{hex, unhex, Pake, Side, EXPORTER_LABEL};
use keyway_certs::PrivateCa;
use keyway_proto::control::{read_frame, write_frame};
use keyway_proto::pair::{PairErrorKind, PairMsg};
use keyway_proto::{CloseCode, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::{info, warn};

use crate::registry::{now, Registry, RegistryError};

/// Time allowed for each pairing step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Validity of an agent certificate.
const AGENT_CERT_VALIDITY: Duration = keyway_certs::ca::AGENT_VALIDITY;

/// What pairing needs.
pub struct PairingCtx {
    /// The registry.
    pub registry: Registry,
    /// The relay's site cache, refreshed when a pairing completes (the
    /// watcher sees only other processes' commits).
    pub sites: crate::sites::SiteCache,
    /// Live agents: a new pairing closes the tunnel of the certificate it supersedes.
    pub agents: crate::agents::AgentTable,
    /// The private CA (signs agent certificates).
    pub ca: PrivateCa,
    /// Public domain.
    pub domain: String,
    /// Name on the relay's tunnel certificate.
    pub tunnel_name: String,
    /// Public HTTPS port (for the site URL).
    pub https_port: u16,
    /// Attempts before a code burns.
    pub max_tries: u32,
}

/// Runs one pairing connection (QUIC) to its end.
pub async fn serve(conn: quinn::Connection, ctx: Arc<PairingCtx>) {
    let run = async {
        let (mut send, mut recv) = timeout(STEP_TIMEOUT, conn.accept_bi())
            .await
            .context("no pairing stream")??;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| anyhow!("TLS exporter unavailable"))?;
        exchange(&mut send, &mut recv, &exporter, &ctx).await
    };
    let result = timeout(STEP_TIMEOUT * 3, run).await;
    match result {
        Ok(Ok(site)) => {
            crate::metrics::METRICS.pairing_attempts.inc();
            info!(site, "agent paired");
            // Let the agent read Done and hang up first.
            let _ = timeout(Duration::from_secs(5), conn.closed()).await;
        }
        Ok(Err(e)) => {
            crate::metrics::METRICS.pairing_attempts.inc();
            crate::metrics::METRICS.pairing_failures.inc();
            info!("pairing failed: {e:#}");
            // Closing now would discard the error message on its way: let
            // the agent read it and hang up first.
            let _ = timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(CloseCode::Normal.code().into(), b"pairing failed");
        }
        Err(_) => {
            info!("pairing timed out");
            conn.close(CloseCode::ProtocolError.code().into(), b"pairing timed out");
        }
    }
}

/// Runs one pairing connection (TLS over TCP, for agents whose UDP is
/// blocked) to its end.
pub async fn serve_tls<S>(tls: tokio_rustls::server::TlsStream<S>, ctx: Arc<PairingCtx>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut exporter = [0u8; 32];
    if tls
        .get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, Some(b""))
        .is_err()
    {
        return warn!("TLS exporter unavailable");
    }
    let (mut recv, mut send) = tokio::io::split(tls);
    match timeout(STEP_TIMEOUT * 3, exchange(&mut send, &mut recv, &exporter, &ctx)).await {
        Ok(Ok(site)) => {
            crate::metrics::METRICS.pairing_attempts.inc();
            info!(site, "agent paired (over TCP)")
        }
        Ok(Err(e)) => {
            crate::metrics::METRICS.pairing_attempts.inc();
            crate::metrics::METRICS.pairing_failures.inc();
            info!("pairing failed: {e:#}")
        }
        Err(_) => return info!("pairing timed out"),
    }
    // Let the agent read the last message and hang up first.
    let mut rest = [0u8; 64];
    let _ = timeout(Duration::from_secs(5), async {
        while matches!(recv.read(&mut rest).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn exchange<W, R>(send: &mut W, recv: &mut R, exporter: &[u8; 32], ctx: &PairingCtx) -> anyhow::Result<String>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::new();
    let refuse = |kind: PairErrorKind, message: &str| PairMsg::Error {
        kind,
        message: message.to_string(),
    };

    let (code_id, spake_a, public_key) = match timeout(STEP_TIMEOUT, read_frame(recv, &mut buf)).await?? {
        PairMsg::Start { version, .. } if version != PROTOCOL_VERSION => {
            let msg =
                format!("this relay speaks pairing protocol {PROTOCOL_VERSION}, the agent {version}: update the agent");
            write_frame(send, &refuse(PairErrorKind::Version, &msg)).await?;
            return Err(anyhow!(msg));
        }
        PairMsg::Start {
            code_id,
            spake,
            public_key,
            ..
        } => (code_id, spake, public_key),
        other => return Err(anyhow!("expected Start, got {other:?}")),
    };
    let (Some(spake_a), Some(public_key)) = (unhex(&spake_a), unhex(&public_key)) else {
        write_frame(send, &refuse(PairErrorKind::ProofFailed, "malformed pairing message")).await?;
        return Err(anyhow!("malformed Start"));
    };
    let spki = match rcgen::SubjectPublicKeyInfo::from_der(&public_key) {
        Ok(k) => k,
        Err(_) => {
            write_frame(
                send,
                &refuse(PairErrorKind::ProofFailed, "the public key is not usable"),
            )
            .await?;
            return Err(anyhow!("unusable public key"));
        }
    };

    let (id, max) = (code_id.clone(), ctx.max_tries);
    let pending = match ctx.registry.call(move |s| s.begin_pairing(&id, max, now())).await {
        Ok(p) => p,
        Err(RegistryError::Code(r)) => {
            write_frame(send, &refuse(r.kind(), r.message())).await?;
            return Err(anyhow!("code refused: {r:?}"));
        }
        Err(e) => {
            write_frame(send, &refuse(PairErrorKind::Internal, registry_failed(&e))).await?;
            return Err(e.into());
        }
    };

    let pake = Pake::start(Side::Relay, &pending.hash);
    let spake_b = hex(pake.message());
    let keys = match pake.finish(&spake_a, exporter) {
        Ok(k) => k,
        Err(e) => {
            write_frame(send, &refuse(PairErrorKind::ProofFailed, "malformed pairing message")).await?;
            return Err(e.into());
        }
    };
    write_frame(
        send,
        &PairMsg::Challenge {
            spake: spake_b,
            confirm: hex(&keys.confirm(Side::Relay)),
        },
    )
    .await?;

    let confirm = match timeout(STEP_TIMEOUT, read_frame(recv, &mut buf)).await {
        Ok(Ok(PairMsg::Confirm { confirm })) => confirm,
        // The agent hangs up when the relay's proof fails (wrong code, or an
        // impostor in between): the attempt already counted.
        Ok(Ok(other)) => return Err(anyhow!("expected Confirm, got {other:?}")),
        Ok(Err(e)) => return Err(anyhow!("agent gave up: {e}")),
        Err(_) => return Err(anyhow!("no Confirm in time")),
    };
    if !unhex(&confirm).is_some_and(|t| keys.verify(Side::Agent, &t)) {
        warn!(code = %code_id, "pairing proof failed (wrong code or a man in the middle)");
        write_frame(
            send,
            &refuse(PairErrorKind::ProofFailed, "the pairing code does not match"),
        )
        .await?;
        return Err(anyhow!("agent proof failed"));
    }

    let issued = ctx.ca.issue_agent(&pending.site, &spki, AGENT_CERT_VALIDITY)?;
    let (id, serial) = (code_id.clone(), issued.serial.clone());
    let site = match ctx
        .registry
        .call(move |s| s.complete_pairing(&id, &serial, now()))
        .await
    {
        Ok(site) => site,
        Err(RegistryError::Code(r)) => {
            write_frame(send, &refuse(r.kind(), r.message())).await?;
            return Err(anyhow!("lost the race for the code: {r:?}"));
        }
        Err(e) => {
            write_frame(send, &refuse(PairErrorKind::Internal, registry_failed(&e))).await?;
            return Err(e.into());
        }
    };
    ctx.sites.reload(&ctx.registry).await?;
    crate::sites::enforce(&ctx.sites, &ctx.agents);
    let ca = ctx.ca.cert_pem().to_string();
    let url = if ctx.https_port == 443 {
        format!("https://{site}.{}/", ctx.domain)
    } else {
        format!("https://{site}.{}:{}/", ctx.domain, ctx.https_port)
    };
    let transcript = PairMsg::done_transcript([&site, &ctx.domain, &ctx.tunnel_name, &url, &issued.pem, &ca]);
    let done = PairMsg::Done {
        site: site.clone(),
        domain: ctx.domain.clone(),
        tunnel_name: ctx.tunnel_name.clone(),
        url,
        certificate: issued.pem,
        ca,
        mac: hex(&keys.seal(&transcript)),
    };
    write_frame(send, &done).await?;
    let _ = send.shutdown().await;
    Ok(site)
}

/// What the agent is told when the registry fails under a pairing.
fn registry_failed(e: &RegistryError) -> &'static str {
    if e.is_unavailable() {
        "the relay's registry database is unavailable right now: try again in a minute (the code is still good)"
    } else {
        "the relay could not read its registry"
    }
}
