//! The door-event WebSocket through the tunnel.

use std::time::Duration;

use http::{Method, StatusCode};
use keyway_tests::console::{DOOR_IDS, HELLO_FRAME};
use keyway_tests::stack::Stack;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn remote_unlock_event_reaches_every_listener_through_the_tunnel() {
    let stack = Stack::start().await.unwrap();
    let mut a = stack.listen_events().await.unwrap();
    let mut b = stack.listen_events().await.unwrap();
    for l in [&mut a, &mut b] {
        assert_eq!(
            l.next_text(WAIT).await.unwrap(),
            HELLO_FRAME,
            "the console's greeting arrives first"
        );
    }
    assert_eq!(stack.console.listeners(), 1, "one upstream: the agent's event hub");

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
    for l in [&mut a, &mut b] {
        let ev = l.next_event(WAIT).await.unwrap();
        assert_eq!(ev["event"], "access.data.device.remote_unlock");
        assert_eq!(ev["data"]["unique_id"], DOOR_IDS[0]);
        assert_eq!(ev["data"]["name"], "Front Door");
        assert_eq!(ev["save_to_history"], false);
    }
    // Both directions stay live: a ping through relay and agent gets its pong.
    a.ping(WAIT).await.unwrap();
    a.close().await;
    b.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn fifty_events_in_a_row_arrive_in_order_on_one_listener() {
    let stack = Stack::start().await.unwrap();
    let mut l = stack.listen_events().await.unwrap();
    assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    for i in 0..50 {
        stack.console.emit(
            &json!({"event": "access.remote_view", "receiver_id": "", "event_object_id": format!("ring-{i}"),
                                   "save_to_history": false, "data": {"request_id": format!("r{i}")}}),
        );
        let ev = l.next_event(WAIT).await.unwrap();
        assert_eq!(ev["event_object_id"], format!("ring-{i}"), "events arrive in order");
    }
    l.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn websocket_without_the_token_is_refused_by_the_console() {
    let stack = Stack::start().await.unwrap();
    let err = keyway_tests::client::EventListener::connect(
        stack.relay_addr,
        &stack.site_tls().0,
        stack.site_tls().1,
        "wrong",
    )
    .await
    .err()
    .expect("upgrade refused");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dropped_tunnel_closes_the_websocket_with_1011() {
    let stack = Stack::start().await.unwrap();
    let mut l = stack.listen_events().await.unwrap();
    assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    // Revoking the site cuts its tunnel under the open WebSocket.
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    keyway_tests::stack::off_runtime(|| keyway_relay::admin::revoke(&cfg, keyway_tests::stack::SITE)).unwrap();
    let closed = l.close_code(WAIT).await;
    if stack.is_sealed() {
        // The relay cannot write into a zero-knowledge site's TLS, and the
        // agent is cut off: the connection ends at once, with no frame.
        let err = format!("{:#}", closed.expect_err("no close frame can be sent"));
        assert!(!err.contains("no close in time"), "left hanging: {err}");
    } else {
        assert_eq!(
            closed.unwrap(),
            Some(1011),
            "the client is told to reconnect, not left hanging"
        );
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn relay_shutdown_closes_websockets_with_1012() {
    let mut stack = Stack::start().await.unwrap();
    let mut l = stack.listen_events().await.unwrap();
    assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    let restart = tokio::spawn(async move {
        stack.restart_relay().await.unwrap();
        stack
    });
    assert_eq!(l.close_code(WAIT).await.unwrap(), Some(1012));
    let stack = restart.await.unwrap();
    stack.wait_online().await.unwrap();
    stack.shutdown().await.unwrap();
}
