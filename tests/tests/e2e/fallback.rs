//! When UDP to the relay is blocked: pairing and the tunnel fall back to TLS
//! over TCP on the relay's HTTPS port, serve there, and move back to QUIC
//! when UDP returns, without failing a request in flight.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keyway_agent::TransportKind;
use keyway_tests::console::{DELAY_HEADER, DOOR_IDS, HELLO_FRAME};
use keyway_tests::impair::UdpProxy;
use keyway_tests::procs::cli;
use keyway_tests::stack::{empty, Stack, SITE};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_blocked_a_fresh_agent_pairs_and_serves_over_tcp_within_five_seconds() {
    // Pairing itself finds no QUIC at the relay's address and uses TCP.
    let mut stack = Stack::builder()
        .udp_blocked()
        .transport("auto")
        .without_agent()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    stack.start_agent().await.unwrap();
    stack.wait_transport(TransportKind::Tcp, WAIT).await.unwrap();
    let mut events = stack.listen_events().await.unwrap();
    assert_eq!(events.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    let r = stack
        .api()
        .json(
            Method::PUT,
            &format!("/api/v1/developer/doors/{}/unlock", DOOR_IDS[0]),
            &json!({"actor_id": "m-1", "actor_name": "Ada"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let ev = events.next_event(WAIT).await.unwrap();
    assert_eq!(ev["event"], "access.data.device.remote_unlock");
    let serving = started.elapsed();
    eprintln!("agent start → API call and door event served over TCP: {serving:?}");
    assert!(serving < Duration::from_secs(5), "took {serving:?}");
    assert_eq!(
        stack.agents.get(SITE).unwrap().conn.kind(),
        TransportKind::Tcp,
        "the relay sees the TCP tunnel"
    );
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    let sites = keyway_tests::stack::off_runtime(|| keyway_relay::admin::list(&cfg)).unwrap();
    assert_eq!(
        sites[0].transport.as_deref(),
        Some("tcp"),
        "site list shows the transport"
    );
    let config = stack.agent_config.to_str().unwrap();
    // status.json follows the agent's state a moment after it changes.
    let mut status = cli("keyway-agent", &["status", "--config", config]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while status.code != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = cli("keyway-agent", &["status", "--config", config]).await.unwrap();
    }
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("TLS over TCP"), "{}", status.stdout);
    let json = cli("keyway-agent", &["status", "--config", config, "--json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["transport"].as_str()),
        (Some("online"), Some("tcp"))
    );
    events.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_returns_the_agent_moves_back_to_quic_without_failing_a_request() {
    let stack = Stack::builder()
        .udp_blocked()
        .transport("auto")
        .agent_extra("quic_probe_interval = \"1s\"")
        .start()
        .await
        .unwrap();
    stack.wait_transport(TransportKind::Tcp, WAIT).await.unwrap();

    // A slow request is in flight on the TCP tunnel when UDP comes back.
    let api = stack.api();
    let slow = tokio::spawn(async move {
        let req = api
            .request(Method::GET, "/api/v1/developer/doors")
            .header(DELAY_HEADER, "2500")
            .body(empty())
            .unwrap();
        let r = api.send(req).await;
        (r, Instant::now())
    });
    // When its head reached the console, through the TCP tunnel (for a
    // zero-knowledge site the relay cannot see it).
    let mut sent = None;
    for _ in 0..400 {
        if stack
            .console
            .heads_seen()
            .iter()
            .any(|h| h.headers.contains_key(DELAY_HEADER))
        {
            sent = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = sent.expect("the slow request crossed the TCP tunnel");

    // UDP at the relay's address answers again (a forwarder to its QUIC port).
    let udp_back = Instant::now();
    let _udp = UdpProxy::start_on(stack.relay_addr, stack.quic_addr).await.unwrap();
    stack.wait_transport(TransportKind::Quic, WAIT).await.unwrap();
    let switched = Instant::now();
    eprintln!("UDP back → tunnel on QUIC: {:?} (probe every 1 s)", switched - udp_back);
    assert_eq!(stack.agents.get(SITE).unwrap().conn.kind(), TransportKind::Quic);

    let (slow, answered) = slow.await.unwrap();
    let slow = slow.unwrap();
    assert_eq!(slow.status, StatusCode::OK, "{}", String::from_utf8_lossy(&slow.body));
    // It really was in flight across the switch: sent on TCP before UDP
    // came back, answered after the tunnel had moved to QUIC.
    assert!(
        sent < udp_back && answered > switched,
        "not in flight during the switch"
    );
    for _ in 0..20 {
        assert_eq!(
            stack.api().get("/api/v1/developer/doors").await.unwrap().status,
            StatusCode::OK
        );
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn transport_tcp_connects_over_tcp_at_once() {
    let started = Instant::now();
    let stack = Stack::builder().transport("tcp").start().await.unwrap();
    stack.wait_transport(TransportKind::Tcp, WAIT).await.unwrap();
    assert_eq!(
        stack.api().get("/api/v1/developer/doors").await.unwrap().status,
        StatusCode::OK
    );
    eprintln!("stack up with transport = tcp in {:?}", started.elapsed());
    stack.shutdown().await.unwrap();
}
