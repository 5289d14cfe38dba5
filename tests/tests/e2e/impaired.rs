//! The tunnel over a bad network: loss, latency and a silent blackhole,
//! through a userspace UDP impairment proxy between agent and relay.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keyway_tests::console::{DOOR_IDS, HELLO_FRAME};
use keyway_tests::impair::{Impairment, UdpProxy};
use keyway_tests::stack::{Stack, SITE};
use serde_json::json;

/// The round-trip time the impaired path adds (half of it each way).
const RTT: Duration = Duration::from_millis(100);

async fn stack_behind_proxy() -> (Stack, UdpProxy) {
    // The impairments act on UDP: this is the QUIC path, whatever the suite's transport.
    let mut stack = Stack::builder()
        .transport("quic")
        .without_agent()
        .start()
        .await
        .unwrap();
    let proxy = UdpProxy::start(stack.relay_addr).await.unwrap();
    stack.route_agent_via(proxy.addr).unwrap();
    stack.start_agent().await.unwrap();
    (stack, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_and_100_ms_rtt_still_serve_calls_and_events() {
    let (stack, proxy) = stack_behind_proxy().await;
    proxy.set(Impairment {
        loss: 0.05,
        delay: RTT / 2,
        blackhole: false,
    });
    let api = stack.api();
    let mut events = stack.listen_events().await.unwrap();
    assert_eq!(events.next_text(Duration::from_secs(20)).await.unwrap(), HELLO_FRAME);

    let (forwarded0, dropped0) = proxy.counts();
    let t0 = Instant::now();
    for i in 0..30 {
        let r = api.get("/api/v1/developer/doors").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "call {i}");
    }
    let took = t0.elapsed();
    let (forwarded, dropped) = proxy.counts();
    eprintln!(
        "30 calls over 5 % loss / 100 ms RTT: {took:?} ({:?} each); {} datagrams forwarded, {} dropped",
        took / 30,
        forwarded - forwarded0,
        dropped - dropped0
    );
    // Each call is at least one round trip of the impaired path: the
    // impairment really applied (a stubbed proxy answers in ~1 ms a call).
    assert!(took >= 30 * RTT, "30 calls in {took:?}: faster than the path allows");
    assert!(took <= 30 * 5 * RTT, "30 calls in {took:?}: over 5 round trips each");
    assert!(forwarded > forwarded0, "the tunnel's datagrams went through the proxy");
    assert!(dropped > dropped0, "the proxy dropped some of them");
    let door = DOOR_IDS[2];
    let r = api
        .json(
            Method::PUT,
            &format!("/api/v1/developer/doors/{door}/unlock"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let ev = events.next_event(Duration::from_secs(20)).await.unwrap();
    assert_eq!(ev["data"]["unique_id"], door);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_blackhole_is_detected_and_healed_when_it_clears() {
    let (stack, proxy) = stack_behind_proxy().await;
    assert_eq!(
        stack.api().get("/api/v1/developer/doors").await.unwrap().status,
        StatusCode::OK
    );

    proxy.set(Impairment {
        blackhole: true,
        ..Default::default()
    });
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), stack.agents.wait_until(|t| !t.is_online(SITE)))
        .await
        .expect("relay drops the silent agent");
    let detected = t0.elapsed();
    eprintln!("blackhole detected by the relay after {detected:?}");
    super::faults::assert_silence_detected(detected);
    // An honest 503 (or for a zero-knowledge site, a closed connection)
    // while the path is dead.
    stack.assert_offline(stack.api().get("/api/v1/developer/doors").await);

    proxy.set(Impairment::default());
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(45), stack.wait_online())
        .await
        .expect("bounded")
        .unwrap();
    let back = t0.elapsed();
    eprintln!("reconnected {back:?} after the path cleared");
    // The agent retries with backoff (capped) while the path is dead.
    assert!(
        back < Duration::from_secs(3),
        "back only {back:?} after the path cleared"
    );
    assert_eq!(
        stack.api().get("/api/v1/developer/doors").await.unwrap().status,
        StatusCode::OK
    );
    stack.shutdown().await.unwrap();
}
