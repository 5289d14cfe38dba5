//! The TLS/TCP transport's framing over an in-memory pipe (TLS is the
//! caller's; the end-to-end suite runs it over real TLS and TCP).

use std::time::Duration;

use keyway_proto::CloseCode;
use keyway_transport::h2::H2Tunnel;
use keyway_transport::{peer_close, Closed, TransportKind, Tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

async fn pair() -> (H2Tunnel, H2Tunnel) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let addr = "127.0.0.1:1".parse().unwrap();
    let (relay, agent) = tokio::join!(
        H2Tunnel::relay(a, addr, Duration::from_millis(200)),
        H2Tunnel::agent(b, addr, Duration::from_millis(200))
    );
    (relay.unwrap(), agent.unwrap())
}

#[tokio::test]
async fn control_and_request_streams_carry_bytes_both_ways() {
    let (relay, agent) = pair().await;
    assert_eq!(relay.kind(), TransportKind::Tcp);
    // The agent's control stream is the relay's first stream.
    let (agent_ctl, relay_ctl) = tokio::join!(agent.open_control(), relay.accept_control());
    let (mut agent_ctl, mut relay_ctl) = (agent_ctl.unwrap(), relay_ctl.unwrap());
    agent_ctl.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    relay_ctl.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    // 3 MB each way on a request stream, then half-closes seen as EOF.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut up = relay.open().await.unwrap();
    let mut down = agent.accept().await.unwrap();
    let (send, recv) = tokio::join!(
        async {
            up.write_all(&big).await.unwrap();
            up.shutdown().await.unwrap();
        },
        async {
            let mut got = vec![];
            down.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    let () = send;
    assert_eq!(recv, big);
    down.write_all(&big).await.unwrap();
    down.shutdown().await.unwrap();
    let mut back = vec![];
    up.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, big);
}

#[tokio::test]
async fn the_relays_close_code_reaches_the_agent() {
    let (relay, agent) = pair().await;
    relay.close(CloseCode::Revoked, "certificate revoked");
    tokio::time::timeout(WAIT, agent.closed()).await.unwrap();
    assert_eq!(
        peer_close(&agent),
        Some((CloseCode::Revoked, "certificate revoked".into()))
    );
    assert!(agent.accept().await.is_err());
    assert_eq!(relay.close_reason(), Some(Closed::Locally));
}

#[tokio::test]
async fn the_agents_close_code_reaches_the_relay() {
    let (relay, agent) = pair().await;
    agent.close(CloseCode::Shutdown, "agent stopping");
    tokio::time::timeout(WAIT, relay.closed()).await.unwrap();
    assert_eq!(
        peer_close(&relay).map(|(c, _)| c),
        Some(CloseCode::Shutdown),
        "{:?}",
        relay.close_reason()
    );
    assert!(relay.open().await.is_err());
}
