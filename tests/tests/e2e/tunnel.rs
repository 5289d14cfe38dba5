//! The tunnel itself: who may connect, what a relay says to a wrong agent,
//! replacement of stale sessions and healing after a relay restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::StatusCode;
use keyway_agent::{Agent, AgentConfig};
use keyway_certs::files::{load_certs, load_key};
use keyway_certs::PrivateCa;
use keyway_proto::control::{read_msg, write_msg, ControlMsg};
use keyway_proto::{CloseCode, ALPN_TUNNEL, PROTOCOL_VERSION};
use keyway_tests::stack::{Stack, SITE};
use tokio_util::sync::CancellationToken;

const DOORS: &str = "/api/v1/developer/doors";

/// A raw QUIC client with the given identity, as a hand-rolled agent.
async fn dial(stack: &Stack, chain_pem: &[u8], key_pem: &[u8]) -> Result<quinn::Connection, quinn::ConnectionError> {
    let cfg = AgentConfig::load(&stack.agent_config).unwrap();
    let ca = load_certs(&cfg.relay_ca).unwrap().remove(0);
    let chain = keyway_certs::files::certs_from_pem("cert", chain_pem).unwrap();
    let key = keyway_certs::files::key_from_pem("key", key_pem).unwrap();
    let tls = keyway_certs::tls::tunnel_client(chain, key, &ca, &[ALPN_TUNNEL]).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep.connect(stack.relay_addr, keyway_tests::stack::DOMAIN).unwrap().await
}

fn agent_identity(stack: &Stack) -> (Vec<u8>, Vec<u8>) {
    let cfg = AgentConfig::load(&stack.agent_config).unwrap();
    (std::fs::read(&cfg.cert).unwrap(), std::fs::read(&cfg.key).unwrap())
}

fn close_code(conn: &quinn::Connection) -> Option<CloseCode> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => CloseCode::from_code(c.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test]
async fn a_newer_protocol_version_is_refused_with_both_versions_named() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let (cert, key) = agent_identity(&stack);
    let conn = dial(&stack, &cert, &key).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = ControlMsg::Hello {
        version: PROTOCOL_VERSION + 1,
        agent_version: "9.9.9".into(),
        console_ok: true,
        console_problem: None,
        handover: false,
        nodes: false,
        limits: false,
    };
    write_msg(&mut send, &hello).await.unwrap();
    let mut buf = BytesMut::new();
    match read_msg(&mut recv, &mut buf).await.unwrap() {
        ControlMsg::Refused { reason } => {
            assert!(
                reason.contains(&format!("protocol {}", PROTOCOL_VERSION + 1)),
                "{reason}"
            );
            assert!(reason.contains("update the agent"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    conn.closed().await;
    assert_eq!(close_code(&conn), Some(CloseCode::VersionMismatch));
    assert!(!stack.agents.is_online(SITE));
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_on_the_control_stream_closes_only_that_connection() {
    let stack = Stack::start().await.unwrap();
    let (cert, key) = agent_identity(&stack);
    let conn = dial(&stack, &cert, &key).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // An oversized length prefix, then junk.
    send.write_all(&[0xff, 0xff, 0xff, 0xff, b'{']).await.unwrap();
    conn.closed().await;
    // The real agent was replaced by nothing: it is still the one online.
    assert_eq!(stack.api().get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn certificates_from_another_ca_or_for_another_site_get_nothing() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    // Another CA entirely: the TLS handshake fails.
    let rogue = PrivateCa::generate("rogue").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rogue.issue_agent(SITE, &key, Duration::from_secs(3600)).unwrap();
    let err = dial(&stack, cert.pem.as_bytes(), key.serialize_pem().as_bytes()).await;
    let refused = match err {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server checks its certificate.
        Ok(conn) => matches!(conn.closed().await, quinn::ConnectionError::ConnectionClosed(_)),
    };
    assert!(refused, "a certificate from another CA must not connect");

    // The relay's own CA, but a site it does not serve.
    let relay_dir = stack.relay_config.parent().unwrap();
    let ca = PrivateCa::from_pem(
        &std::fs::read_to_string(relay_dir.join("tunnel-ca.pem")).unwrap(),
        &std::fs::read_to_string(relay_dir.join("tunnel-ca.key")).unwrap(),
    )
    .unwrap();
    let ghost = ca.issue_agent("ghost", &key, Duration::from_secs(3600)).unwrap();
    let conn = dial(&stack, ghost.pem.as_bytes(), key.serialize_pem().as_bytes())
        .await
        .unwrap();
    conn.closed().await;
    assert_eq!(close_code(&conn), Some(CloseCode::UnknownSite));
    assert!(stack.agents.all().is_empty());
    let _ = load_key(&AgentConfig::load(&stack.agent_config).unwrap().key).unwrap();
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_newer_connection_replaces_the_old_one_and_requests_follow_it() {
    let stack = Stack::start().await.unwrap();
    let first = stack.agents.get(SITE).unwrap().id;

    // A second agent with the same identity (a re-imaged Pi, a restarted
    // process whose old connection the relay still holds).
    let second = Agent::new(&AgentConfig::load(&stack.agent_config).unwrap()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(second.run(stop.clone()));
    tokio::time::timeout(
        Duration::from_secs(20),
        stack.agents.wait_until(|t| t.get(SITE).is_some_and(|l| l.id != first)),
    )
    .await
    .expect("the newer connection takes over");
    let r = stack.api().get(DOORS).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let second_id = stack.agents.get(SITE).unwrap().id;

    // When the second one leaves, the first comes back by itself. While
    // both ran they replaced each other, each backing off further every
    // time, so the first may be asleep for up to the backoff's cap.
    stop.cancel();
    task.await.unwrap();
    tokio::time::timeout(
        keyway_agent::uplink::RECONNECT_CAP + Duration::from_secs(10),
        stack
            .agents
            .wait_until(|t| t.get(SITE).is_some_and(|l| l.id > second_id)),
    )
    .await
    .expect("the first agent reconnects");
    assert_eq!(stack.api().get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_agent_finds_a_restarted_relay_by_itself() {
    let mut stack = Stack::start().await.unwrap();
    let api = stack.api();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    let t0 = Instant::now();
    stack.restart_relay().await.unwrap();
    stack.wait_online().await.unwrap();
    eprintln!("relay restart healed in {:?}", t0.elapsed());
    assert_eq!(stack.api().get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revoked_agent_does_not_hammer_the_relay() {
    let stack = Stack::start().await.unwrap();
    let mut states = stack.agent_states().unwrap();
    let config = stack.relay_config.to_str().unwrap();
    let out = keyway_tests::procs::cli("keyway-relay", &["site", "revoke", SITE, "--config", config])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let refused = |s: &keyway_agent::AgentState| matches!(s, keyway_agent::AgentState::Retrying { reason } if reason.contains("revoked"));
    tokio::time::timeout(Duration::from_secs(10), states.wait_for(refused))
        .await
        .expect("the agent learns it was revoked")
        .unwrap();
    // A refusal that retrying cannot fix waits 5 minutes before the next
    // attempt; every attempt publishes `Connecting`, so none may follow now.
    let attempt = tokio::time::timeout(Duration::from_secs(5), states.changed()).await;
    assert!(
        attempt.is_err(),
        "the agent tried again within 5 s: {:?}",
        *states.borrow()
    );
    stack.shutdown().await.unwrap();
}
