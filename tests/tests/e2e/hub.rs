//! The agent's event hub: one WebSocket to the console, every subscriber
//! served from it, numbered events replayed with `?since=`.

use std::time::Duration;

use keyway_tests::client::EventListener;
use keyway_tests::console::{DOOR_IDS, HELLO_FRAME};
use keyway_tests::procs::{cli, cli_stdin};
use keyway_tests::stack::{free_port, Stack, TOKEN};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn ring(i: usize) -> Value {
    json!({"event": "access.remote_view", "receiver_id": "", "event_object_id": format!("ring-{i}"),
           "save_to_history": false, "data": {"request_id": format!("r{i}")}})
}

/// The next Keyway frame (`{"keyway": …}`) of a since-subscriber.
async fn next_keyway(l: &mut EventListener) -> Value {
    let v = l.next_event(WAIT).await.unwrap();
    assert!(v.get("keyway").is_some(), "a since-subscriber gets wrapped frames: {v}");
    v
}

/// Reads the greeting and replay up to the `live` marker; returns the
/// replayed (seq, event_object_id) pairs, any gap frame and the marker.
async fn until_live(l: &mut EventListener) -> (Vec<(u64, String)>, Option<Value>, Value) {
    assert_eq!(
        l.next_text(WAIT).await.unwrap(),
        HELLO_FRAME,
        "the greeting comes first"
    );
    let (mut got, mut gap) = (Vec::new(), None);
    loop {
        let v = next_keyway(l).await;
        match v["keyway"].as_str().unwrap() {
            "event" => got.push((
                v["seq"].as_u64().unwrap(),
                v["event"]["event_object_id"].as_str().unwrap().to_string(),
            )),
            "gap" => gap = Some(v),
            "live" => return (got, gap, v),
            other => panic!("unexpected frame {other}"),
        }
    }
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn fifty_subscribers_share_one_console_websocket_and_get_every_event_in_order() {
    let stack = Stack::start().await.unwrap();
    let mut subs = Vec::new();
    for _ in 0..50 {
        let mut l = stack.listen_events().await.unwrap();
        assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
        subs.push(l);
    }
    assert_eq!(stack.console.listeners(), 1, "the console sees only the hub");
    assert_eq!(stack.console.websockets_accepted(), 1, "one upstream WebSocket, ever");
    for i in 0..20 {
        stack.console.emit(&ring(i));
    }
    for l in &mut subs {
        for i in 0..20 {
            let ev = l.next_event(WAIT).await.unwrap();
            assert_eq!(
                ev,
                ring(i),
                "plain subscribers get the console's events untouched, in order"
            );
        }
    }
    assert_eq!(stack.console.listeners(), 1);
    for l in subs {
        l.close().await;
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_resuming_subscriber_gets_exactly_the_missed_events_once() {
    let stack = Stack::start().await.unwrap();
    let mut watcher = stack.listen_events().await.unwrap();
    assert_eq!(watcher.next_text(WAIT).await.unwrap(), HELLO_FRAME);

    let mut l = stack.listen_events_since("since=0").await.unwrap();
    let (replay, gap, live) = until_live(&mut l).await;
    assert!(replay.is_empty() && gap.is_none());
    let epoch = live["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        stack.console.emit(&ring(i));
        let v = next_keyway(&mut l).await;
        assert_eq!(v["epoch"], epoch.as_str());
        assert_eq!(v["event"], ring(i));
        watcher.next_event(WAIT).await.unwrap();
    }
    let last = 3;
    l.close().await;

    // Missed while away; the plain watcher shows they passed the hub.
    for i in 3..8 {
        stack.console.emit(&ring(i));
        assert_eq!(watcher.next_event(WAIT).await.unwrap(), ring(i));
    }
    let mut l = stack
        .listen_events_since(&format!("since={last}&epoch={epoch}"))
        .await
        .unwrap();
    let (replay, gap, live) = until_live(&mut l).await;
    let want: Vec<_> = (3..8).map(|i| (i as u64 + 1, format!("ring-{i}"))).collect();
    assert_eq!(replay, want, "exactly the missed events, once, in order");
    assert!(gap.is_none());
    assert_eq!(live["seq"], 8);
    stack.console.emit(&ring(8));
    let v = next_keyway(&mut l).await;
    assert_eq!((v["keyway"].as_str(), v["seq"].as_u64()), (Some("event"), Some(9)));
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_since_older_than_the_buffer_is_told_as_a_gap() {
    let stack = Stack::builder().agent_extra("event_buffer = 5").start().await.unwrap();
    let mut watcher = stack.listen_events().await.unwrap();
    assert_eq!(watcher.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    for i in 0..10 {
        stack.console.emit(&ring(i));
        watcher.next_event(WAIT).await.unwrap();
    }
    let mut l = stack.listen_events_since("since=2").await.unwrap();
    let (replay, gap, _) = until_live(&mut l).await;
    let gap = gap.expect("a gap frame");
    assert_eq!((gap["since"].as_u64(), gap["first"].as_u64()), (Some(2), Some(6)));
    assert_eq!(replay.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [6, 7, 8, 9, 10]);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_console_dropping_its_websocket_does_not_disconnect_subscribers() {
    let stack = Stack::start().await.unwrap();
    let mut l = stack.listen_events().await.unwrap();
    assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    stack.console.emit(&ring(0));
    assert_eq!(l.next_event(WAIT).await.unwrap(), ring(0));

    assert_eq!(stack.console.websockets_accepted(), 1);
    stack.console.kick_listeners();
    eventually("the hub reconnects", || {
        stack.console.websockets_accepted() == 2 && stack.console.listeners() == 1
    })
    .await;
    stack.console.emit(&ring(1));
    assert_eq!(
        l.next_event(WAIT).await.unwrap(),
        ring(1),
        "the subscriber stayed connected through the hub's reconnect"
    );
    l.ping(WAIT).await.unwrap();
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_agent_restart_keeps_the_buffer_and_the_numbering() {
    let mut stack = Stack::start().await.unwrap();
    let mut l = stack.listen_events_since("since=0").await.unwrap();
    let (_, _, live) = until_live(&mut l).await;
    let epoch = live["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        stack.console.emit(&ring(i));
        next_keyway(&mut l).await;
    }
    stack.stop_agent().await.unwrap();
    stack.start_agent().await.unwrap();

    let mut l = stack
        .listen_events_since(&format!("since=1&epoch={epoch}"))
        .await
        .unwrap();
    let (replay, gap, live) = until_live(&mut l).await;
    assert_eq!(replay, [(2, "ring-1".to_string()), (3, "ring-2".to_string())]);
    assert!(gap.is_none(), "same epoch after a restart");
    assert_eq!(live["epoch"], epoch.as_str());
    stack.console.emit(&ring(3));
    assert_eq!(next_keyway(&mut l).await["seq"], 4, "numbering continues");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_subscriber_with_an_invalid_token_receives_nothing() {
    let stack = Stack::start().await.unwrap();
    let mut good = stack.listen_events().await.unwrap();
    assert_eq!(good.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    for query in ["", "since=0"] {
        let err = EventListener::connect_to(
            stack.relay_addr,
            &stack.site_tls().0,
            stack.site_tls().1,
            "stolen",
            query,
        )
        .await
        .err()
        .expect("the upgrade is refused");
        assert!(format!("{err:#}").contains("401"), "{err:#}");
    }
    assert_eq!(stack.console.listeners(), 1);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_without_slowing_the_others() {
    let stack = Stack::builder().agent_extra("event_queue = 64").start().await.unwrap();
    let mut stalled = stack.listen_events().await.unwrap();
    let mut fast = stack.listen_events().await.unwrap();
    assert_eq!(fast.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    // 24 MB of events: more than every buffer between the hub and a client
    // that stopped reading (TCP, TLS, the tunnel's 4 MB stream window).
    let pad = "x".repeat(8 * 1024);
    let total = 3000;
    // Emitted in bursts smaller than the queue, each read before the next.
    for batch in 0..total / 10 {
        for i in batch * 10..(batch + 1) * 10 {
            stack.console.emit(
                &json!({"event": "access.remote_view", "event_object_id": format!("e{i}"), "data": {"pad": pad}}),
            );
        }
        for i in batch * 10..(batch + 1) * 10 {
            let ev = fast.next_event(WAIT).await.unwrap();
            assert_eq!(
                ev["event_object_id"],
                format!("e{i}"),
                "the reading subscriber gets everything"
            );
        }
    }
    // The stalled one now reads what had reached it, then the close.
    assert_eq!(stalled.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    let mut received = 0;
    let code = loop {
        match stalled.next_event(WAIT).await {
            Ok(_) => received += 1,
            Err(e) => break format!("{e:#}"),
        }
    };
    assert!(received < total, "the stalled subscriber was cut ({received} events)");
    assert!(code.contains("4008"), "closed as too slow: {code}");
    stack.shutdown().await.unwrap();
}

/// Waits (bounded) until something accepts TCP at `addr`.
async fn listening(addr: std::net::SocketAddr) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens at {addr}");
}

#[tokio::test]
async fn a_credential_unlock_captured_from_webhooks_reaches_subscribers() {
    let mut stack = Stack::start().await.unwrap();
    let listen = std::net::SocketAddr::new([127, 0, 0, 1].into(), free_port([127, 0, 0, 1].into()).unwrap());
    let config = stack.agent_config.to_str().unwrap().to_string();
    let listen_arg = listen.to_string();
    let out = cli(
        "keyway-agent",
        &[
            "events",
            "capture-webhooks",
            "--listen",
            &listen_arg,
            "--config",
            &config,
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Restart the agent"), "{}", out.stdout);
    stack.stop_agent().await.unwrap();
    stack.start_agent().await.unwrap();
    listening(listen).await;

    let mut l = stack.listen_events().await.unwrap();
    assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    // A forged delivery (no valid signature) is refused and never published.
    let forged = reqwest_like_post(
        listen,
        r#"{"event":"access.door.unlock","data":{"actor":{"name":"Mallory"}}}"#,
    )
    .await;
    assert_eq!(forged, 401);

    stack.console.credential_unlock(DOOR_IDS[0], "Grace", "NFC").unwrap();
    let ev = l.next_event(WAIT).await.unwrap();
    assert_eq!(
        ev["event"], "access.door.unlock",
        "webhook-only events arrive on the stream"
    );
    assert_eq!(ev["data"]["actor"]["name"], "Grace");
    assert_eq!(ev["data"]["object"]["authentication_type"], "NFC");
    eventually("the console saw its delivery accepted", || {
        stack.console.webhook_deliveries() == [200]
    })
    .await;

    let out = cli("keyway-agent", &["events", "stop-capture", "--config", &config])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let api = stack.direct_api();
    let left = api.get("/api/v1/developer/webhooks/endpoints").await.unwrap();
    assert_eq!(left.data(), json!([]), "the endpoint is removed from the console");
    stack.shutdown().await.unwrap();
}

/// POSTs `body` unsigned to the agent's webhook listener; the status.
async fn reqwest_like_post(addr: std::net::SocketAddr, body: &'static str) -> u16 {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/keyway/webhook"))
        .header("signature", "t=1,v1=00")
        .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .unwrap();
    client.request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn console_token_set_checks_the_token_and_stores_it_private() {
    let stack = Stack::builder().without_console_token().start().await.unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    let path = keyway_agent::AgentConfig::load(&stack.agent_config)
        .unwrap()
        .console_token_path();
    let args = ["console-token", "set", "--config", config.as_str()];
    let out = cli_stdin("keyway-agent", &args, "not-the-token\n").await.unwrap();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("did not accept"), "{}", out.stderr);
    assert!(!path.exists(), "a refused token is not stored");
    assert!(!out.stderr.contains("not-the-token"), "the token is not echoed");

    let out = cli_stdin("keyway-agent", &args, &format!("{TOKEN}\n")).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN));
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_subscribers_leave_the_request_budget_to_door_unlocks() {
    let stack = Stack::builder()
        .relay_extra("[limits]\nmax_concurrent_requests = 4\nmax_websockets = 400\nmax_websockets_per_client = 400\n")
        .start()
        .await
        .unwrap();
    let mut subscribers = Vec::new();
    for i in 0..300 {
        let l = stack
            .listen_events()
            .await
            .unwrap_or_else(|e| panic!("subscriber {i}: {e:#}"));
        subscribers.push(l);
    }
    // Four request slots, three hundred WebSockets open: the slots are all free.
    let api = stack.api();
    let unlock = format!("/api/v1/developer/doors/{}/unlock", DOOR_IDS[0]);
    let calls = (0..4).map(|_| {
        let (api, unlock) = (api.clone(), unlock.clone());
        tokio::spawn(async move { api.json(http::Method::PUT, &unlock, &json!({})).await.unwrap().status })
    });
    for c in calls {
        assert_eq!(c.await.unwrap(), http::StatusCode::OK);
    }
    stack.shutdown().await.unwrap();
}

/// Opens forty subscribers that never read again (frozen, or gone without
/// a word), then opens forty more as soon as they fit (bounded: 60 s), and
/// asserts the frozen ones' slots came free within two pings plus the
/// linger a frozen client is given for the other half of the close.
async fn freeze_forty_then_fit_forty(stack: &Stack, ping: Duration) -> (Vec<EventListener>, Vec<EventListener>) {
    let mut frozen = Vec::new();
    for _ in 0..40 {
        frozen.push(stack.listen_events().await.unwrap());
    }
    let t0 = std::time::Instant::now();
    let mut fresh = Vec::new();
    while fresh.len() < 40 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "slots still held after {:?}",
            t0.elapsed()
        );
        match stack.listen_events().await {
            Ok(l) => fresh.push(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let freed = t0.elapsed();
    eprintln!("40 silent subscribers closed, slots free after {freed:?} (ping every {ping:?})");
    let bound = 3 * ping + keyway_relay::upgrade::LINGER + Duration::from_secs(2);
    assert!(freed < bound, "took {freed:?}, over {bound:?}");
    (frozen, fresh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_stop_answering_are_closed_and_free_their_slots() {
    let ping = Duration::from_millis(300);
    let stack = Stack::builder()
        .agent_extra(&format!("event_ping_interval = \"{}ms\"", ping.as_millis()))
        .relay_extra("[limits]\nmax_websockets = 45\n")
        .start()
        .await
        .unwrap();
    let (mut frozen, _fresh) = freeze_forty_then_fit_forty(&stack, ping).await;
    // Each was told why.
    let code = frozen[0].close_code(Duration::from_secs(10)).await.unwrap();
    assert_eq!(code, Some(keyway_agent::hub::serve::CLOSE_NO_PONG));
    stack.shutdown().await.unwrap();
}

/// Without the event hub (no console token), the agent passes each
/// subscriber's WebSocket through to the console: the relay pings the
/// subscribers itself, so forty frozen ones are closed and their slots
/// freed, as the hub does for its own.
#[tokio::test]
async fn passthrough_subscribers_that_stop_answering_are_closed_by_the_relay() {
    let ping = Duration::from_millis(300);
    let stack = Stack::builder()
        .without_console_token()
        .relay_extra(&format!(
            "websocket_ping_interval = \"{}ms\"\n[limits]\nmax_websockets = 45\n",
            ping.as_millis()
        ))
        .start()
        .await
        .unwrap();
    let (mut frozen, mut fresh) = freeze_forty_then_fit_forty(&stack, ping).await;
    let code = frozen[0].close_code(WAIT).await.unwrap();
    assert_eq!(code, Some(keyway_relay::upgrade::CLOSE_NO_PONG));
    // A subscriber that reads (and so answers pings) stays, and gets events.
    let mut live = fresh.pop().unwrap();
    let emit_later = async {
        tokio::time::sleep(4 * ping).await;
        stack.console.emit(&ring(7));
    };
    let (_, ev) = tokio::join!(emit_later, live.next_event(WAIT));
    assert_eq!(ev.unwrap()["event_object_id"], "ring-7");
    stack.shutdown().await.unwrap();
}
