//! The event stream as a real console sends it, through relay and agent:
//! the greeting and `access.base.info` of the hub's current console
//! connection for every subscriber, and a keep-alive at the console's
//! cadence, also while the console is down or restarting.

use std::time::Duration;

use keyway_tests::console::{RunningConsole, DOOR_IDS, HELLO_FRAME};
use keyway_tests::stack::Stack;
use serde_json::{json, Value};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..800 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn base_info(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(|v| v["event"] == "access.base.info")
}

#[tokio::test]
async fn a_quiet_subscriber_gets_a_keep_alive_at_least_every_10s_across_a_console_restart() {
    let mut stack = Stack::start().await.unwrap();
    let mut l = stack.listen_events().await.unwrap();
    let started = Instant::now();
    // Every text frame the subscriber gets for 60 s, with when it came.
    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        while started.elapsed() < Duration::from_secs(60) {
            match l.next_text(WAIT).await {
                Ok(t) => frames.push((started.elapsed(), t)),
                Err(e) => panic!(
                    "no frame for {WAIT:?} at {:?} (after {} frames): {e:#}",
                    started.elapsed(),
                    frames.len()
                ),
            }
        }
        (frames, l)
    });

    // The doors stay quiet; at 20 s the console goes away for 15 s.
    tokio::time::sleep_until(started + Duration::from_secs(20)).await;
    let again = stack.console.restart_options();
    stack.console.stop().await;
    let down = started.elapsed();
    tokio::time::sleep_until(started + Duration::from_secs(35)).await;
    stack.console = RunningConsole::start(again).await.unwrap();
    let up = started.elapsed();
    eventually("the hub is back on the console", || stack.console.listeners() == 1).await;

    let (frames, mut l) = reader.await.unwrap();
    let texts: Vec<&str> = frames.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts[0], HELLO_FRAME, "the greeting comes first");
    assert!(base_info(texts[1]).is_some(), "then the console's status: {}", texts[1]);
    let mut last = Duration::ZERO;
    for (at, text) in &frames {
        assert!(*at - last <= WAIT, "a {:?} silence before {at:?}", *at - last);
        last = *at;
        let is_status = base_info(text).is_some();
        assert!(
            text == HELLO_FRAME || is_status,
            "only keep-alives and status on a quiet stream: {text}"
        );
    }
    let during = frames.iter().filter(|(at, _)| *at > down && *at < up).count();
    assert!(
        during >= 2,
        "the hub stood in with keep-alives while the console was down ({down:?}..{up:?}): {frames:?}"
    );
    // And events flow again on the same subscriber.
    stack
        .console
        .emit(&json!({"event": "access.remote_view", "receiver_id": "",
        "event_object_id": "after-restart", "save_to_history": false, "data": {}}));
    let ev = l.next_event(WAIT).await.unwrap();
    assert_eq!(ev["event_object_id"], "after-restart");
    l.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_subscriber_gets_the_current_connections_greeting_and_status() {
    let stack = Stack::start().await.unwrap();
    let mut first = stack.listen_events().await.unwrap();
    assert_eq!(first.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    let info = base_info(&first.next_text(WAIT).await.unwrap()).expect("access.base.info second");
    assert_eq!(info["data"]["top_log_count"], 0);

    // Events come and go, and subscribers with them; a late one still
    // starts as a direct client of the console would.
    let unlock = format!("/api/v1/developer/doors/{}/unlock", DOOR_IDS[0]);
    let r = stack.api().json(http::Method::PUT, &unlock, &json!({})).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    first.next_event(WAIT).await.unwrap();
    first.close().await;
    for query in ["", "since=0"] {
        let mut late = stack.listen_events_since(query).await.unwrap();
        assert_eq!(late.next_text(WAIT).await.unwrap(), HELLO_FRAME, "{query}");
        let info = base_info(&late.next_text(WAIT).await.unwrap()).expect("access.base.info second");
        assert_eq!(info["data"]["top_log_count"], 0, "the status of the hub's connection");
        late.close().await;
    }

    // The hub's console connection drops and comes back: subscribers from
    // then on get the new connection's status (the unlock is logged now).
    let before = stack.console.websockets_accepted();
    stack.console.kick_listeners();
    eventually("the hub reconnects", || {
        stack.console.websockets_accepted() > before && stack.console.listeners() == 1
    })
    .await;
    let mut fresh = None;
    for _ in 0..200 {
        let mut l = stack.listen_events().await.unwrap();
        assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
        let info = base_info(&l.next_text(WAIT).await.unwrap()).expect("access.base.info second");
        if info["data"]["top_log_count"] == 1 {
            fresh = Some(info);
            break;
        }
        // The hub may not have read the new connection's status yet.
        l.close().await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(fresh.is_some(), "the new connection's status reaches new subscribers");
    stack.shutdown().await.unwrap();
}
