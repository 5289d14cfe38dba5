//! The relay's edge limits (`[limits]` in relay.toml): each refusal is the
//! console's envelope with its own code, and nothing refused reaches the
//! tunnel.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use keyway_tests::client::{EventListener, Reply};
use keyway_tests::console::DELAY_HEADER;
use keyway_tests::stack::{empty, Stack, TOKEN};
use serde_json::json;

use super::errors::raw_exchange;

const DOORS: &str = "/api/v1/developer/doors";
const USERS: &str = "/api/v1/developer/users";

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], code, "{}", String::from_utf8_lossy(&r.body));
}

async fn with_limits(limits: &str) -> Stack {
    Stack::builder()
        .relay_extra(&format!("[limits]\n{limits}\n"))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let stack = with_limits("max_body_bytes = 4096").await;
    let api = stack.api();
    let small = api
        .upload(&format!("{USERS}/x/avatar"), "file", "a.png", &[7; 1000])
        .await
        .unwrap();
    assert_ne!(small.status, StatusCode::PAYLOAD_TOO_LARGE);
    let big = api
        .upload(&format!("{USERS}/x/avatar"), "file", "a.png", &[7; 8000])
        .await
        .unwrap();
    assert_refused(&big, 413, "CODE_KEYWAY_PAYLOAD_TOO_LARGE");

    // Chunked: no Content-Length, counted while it streams.
    let chunks =
        (0..8).map(|_| Ok::<_, keyway_tests::stack::BoxError>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 1024]))));
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = api.request(Method::POST, USERS).body(streamed).unwrap();
    let r = api.send(req).await.unwrap();
    assert_refused(&r, 413, "CODE_KEYWAY_PAYLOAD_TOO_LARGE");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let stack = with_limits("max_headers = 20\nmax_header_bytes = 2048").await;
    let api = stack.api();
    let mut req = api.request(Method::GET, DOORS);
    for i in 0..30 {
        req = req.header(format!("x-extra-{i}"), "1");
    }
    assert_refused(
        &api.send(req.body(empty()).unwrap()).await.unwrap(),
        431,
        "CODE_KEYWAY_HEADERS_TOO_LARGE",
    );
    let req = api.request(Method::GET, DOORS).header("x-big", "y".repeat(4096));
    assert_refused(
        &api.send(req.body(empty()).unwrap()).await.unwrap(),
        431,
        "CODE_KEYWAY_HEADERS_TOO_LARGE",
    );
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let stack = with_limits("client_rate = 1\nclient_burst = 3").await;
    let api = stack.api();
    for _ in 0..3 {
        assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    }
    let r = api.get(DOORS).await.unwrap();
    assert_refused(&r, 429, "CODE_KEYWAY_RATE_LIMITED");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_per_site_override_sets_that_sites_rate() {
    let stack =
        with_limits("site_rate = 1000\nsite_burst = 1000\n[limits.sites.hq]\nsite_rate = 1\nsite_burst = 2").await;
    let api = stack.api();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    assert_refused(&api.get(DOORS).await.unwrap(), 429, "CODE_KEYWAY_RATE_LIMITED");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_over_the_limit_get_429_until_one_ends() {
    let stack = with_limits("max_concurrent_requests = 1").await;
    let api = stack.api();
    let slow = {
        let api = stack.api();
        tokio::spawn(async move {
            let req = api.request(Method::GET, DOORS).header(DELAY_HEADER, "2000");
            api.send(req.body(empty()).unwrap()).await.unwrap().status
        })
    };
    // Bounded: the slow request takes 2 s; once it is admitted, others wait.
    let mut refused = None;
    for _ in 0..200 {
        let r = api.get(DOORS).await.unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = refused.expect("a second request while the first is under way is refused");
    assert_refused(&r, 429, "CODE_KEYWAY_TOO_MANY_CONCURRENT");
    assert_eq!(
        r.headers["retry-after"], "1",
        "the README's promise for concurrency refusals"
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(
        api.get(DOORS).await.unwrap().status,
        StatusCode::OK,
        "the slot is given back"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn websockets_over_the_limit_are_refused_until_one_closes() {
    let stack = with_limits("max_websockets = 1").await;
    let first = stack.listen_events().await.unwrap();
    let err = stack
        .listen_events()
        .await
        .err()
        .expect("a second WebSocket is refused");
    assert!(format!("{err:#}").contains("429"), "{err:#}");
    first.close().await;
    let mut again = None;
    for _ in 0..200 {
        if let Ok(l) = stack.listen_events().await {
            again = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    again.expect("the slot is given back when the WebSocket closes");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_allow_list_refuses_other_addresses_with_403() {
    let stack = with_limits("allow = [\"192.0.2.0/24\"]").await;
    let r = stack.api().get(DOORS).await;
    if stack.is_sealed() {
        // A zero-knowledge site's connection is closed at the relay, before
        // its TLS reaches the agent (refused.rs: nothing reaches the console).
        assert!(r.is_err(), "{r:?}");
    } else {
        assert_refused(&r.unwrap(), 403, "CODE_KEYWAY_CLIENT_NOT_ALLOWED");
    }
    let err = EventListener::connect(
        stack.relay_addr,
        &stack.site_tls().0,
        stack.site_tls().1,
        &stack.console.token,
    )
    .await
    .err()
    .expect("WebSockets too");
    // (For a zero-knowledge site: closed before its TLS, as above.)
    assert!(stack.is_sealed() || format!("{err:#}").contains("403"), "{err:#}");
    stack.shutdown().await.unwrap();

    let stack = with_limits("allow = [\"192.0.2.0/24\"]\n[limits.sites.hq]\nallow = [\"127.0.0.0/8\"]").await;
    assert_eq!(stack.api().get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn smuggling_and_malformed_framing_never_reach_the_console() {
    let stack = Stack::start().await.unwrap();
    let user = r#"{"first_name":"Smuggled","last_name":"Request"}"#;
    let n = user.len();
    let auth = format!("Authorization: Bearer {TOKEN}\r\nConnection: close\r\n");
    // Framing hyper's parser refuses gets its bare 400 (no envelope: the
    // request never became one); what the relay refuses gets the envelope.
    let cases: Vec<(&str, String, bool)> = vec![
        ("two Content-Lengths", format!("POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {n}\r\nContent-Length: {}\r\n\r\n{user}", n + 1), false),
        ("obs-fold", format!("POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Folded: a\r\n b\r\nContent-Length: {n}\r\n\r\n{user}"), false),
        ("invalid header byte", format!("POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x01b\r\nContent-Length: {n}\r\n\r\n{user}"), false),
        ("space before colon", format!("POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length : {n}\r\n\r\n{user}"), false),
        ("absolute-form for another host", format!("POST https://evil.example/{USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {n}\r\n\r\n{user}"), true),
        ("bad chunk size", format!("POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{user}\r\n0\r\n\r\n"), true),
    ];
    for (name, raw, envelope) in &cases {
        // Authorized, so a request that got through would create the user.
        let raw = raw.replacen("\r\n", &format!("\r\n{auth}"), 1);
        let answer = raw_exchange(&stack, raw.as_bytes()).await;
        let status_line = answer.lines().next().unwrap_or_default();
        assert!(status_line.starts_with("HTTP/1.1 400"), "{name}: {answer:?}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if *envelope {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {answer:?}"));
            assert_eq!(v["code"], "CODE_KEYWAY_BAD_REQUEST", "{name}: {answer:?}");
        } else {
            assert_eq!(body, "", "{name}: hyper's own 400 has no body: {answer:?}");
        }
    }
    let users = stack.direct_api().get(&format!("{USERS}?page_size=100")).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&users.body).contains("Smuggled"),
        "no refused request reached the console"
    );
    // Content-Length with Transfer-Encoding: hyper reads the chunked body
    // (RFC 9112 §6.3: Transfer-Encoding wins), drops the length and closes
    // the connection after one answer, so nothing can ride behind the body.
    // (It removes Content-Length before the relay sees the request, so the
    // relay cannot refuse it with 400 itself.)
    for order in [
        "Content-Length: 3\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 3",
    ] {
        let raw = format!(
            "POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{order}\r\n\r\n0\r\n\r\nGET {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"
        );
        let answer = raw_exchange(&stack, raw.as_bytes()).await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer only: {answer:?}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer:?}");
    }
    // And a well-formed one does, on the same relay.
    let r = stack
        .api()
        .json(Method::POST, USERS, &json!({"first_name": "Ok", "last_name": "Fine"}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_in_the_config_are_checked_at_start() {
    let bad = Stack::builder()
        .relay_extra("[limits]\nmax_body_bytes = 0\n")
        .start()
        .await;
    let err = format!("{:#}", bad.err().expect("refused"));
    assert!(err.contains("max_body_bytes"), "{err}");
}

/// Opens a TLS connection to the relay, sends `bytes`, and returns how long
/// until the relay closed it (bounded: 10 s).
async fn closed_after(stack: &Stack, bytes: &[u8]) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = stack.raw_tls().await.unwrap();
    s.write_all(bytes).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink))
        .await
        .expect("the relay closes the connection");
    t0.elapsed()
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let stack = Stack::builder()
        .relay_extra("header_read_timeout = \"1s\"")
        .start()
        .await
        .unwrap();
    // Slowloris: a head that never ends.
    let t = closed_after(
        &stack,
        b"GET /api/v1/developer/doors HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    )
    .await;
    // Closed by the timeout, not at once and not much later (the timer runs
    // from the head's first byte, sent just before `t` starts).
    let (limit, slack) = (Duration::from_secs(1), Duration::from_millis(100));
    assert!(
        t + slack >= limit && t < 2 * limit,
        "closed after {t:?}, the limit is {limit:?}"
    );
    // Idle after a complete exchange on a keep-alive connection: kept open
    // (keep-alive works) until the same limit, then closed.
    let req = format!("GET {DOORS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let t = closed_after(&stack, req.as_bytes()).await;
    assert!(
        t >= limit && t < 2 * limit,
        "closed after {t:?}, the limit is {limit:?}"
    );
    stack.shutdown().await.unwrap();
}

/// `keyway-relay site limits` changes a running relay's limits for one
/// site, from another process (the registry), within a second; an empty
/// value goes back to relay.toml's, and a bad one changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_limits_set_from_the_cli_apply_to_a_running_relay() {
    let stack = with_limits("site_rate = 1000").await;
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    let set = |changes: &[(&str, &str)]| {
        let (cfg, changes): (_, Vec<(String, String)>) = (
            cfg.clone(),
            changes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        );
        keyway_tests::stack::off_runtime(move || keyway_relay::admin::set_site_limits(&cfg, "hq", &changes))
    };
    let api = stack.api();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);

    // Only a documentation address may call: the test's 127.0.0.1 is refused.
    let shown = set(&[("allow", "192.0.2.1"), ("max_headers", "50")]).unwrap();
    let allow = shown.limits.iter().find(|r| r.field == "allow").unwrap();
    assert_eq!((allow.value.as_str(), allow.source), ("192.0.2.1/32", "site"));
    let rate = shown.limits.iter().find(|r| r.field == "site_rate").unwrap();
    assert_eq!((rate.value.as_str(), rate.source), ("1000", "relay.toml"));
    let changed = std::time::Instant::now();
    let deadline = changed + Duration::from_secs(5);
    loop {
        let r = api.get(DOORS).await.unwrap();
        if r.status == StatusCode::FORBIDDEN {
            assert_refused(&r, 403, "CODE_KEYWAY_CLIENT_NOT_ALLOWED");
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never applied the limits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("applied {:?} after the change", changed.elapsed());

    // A bad value is refused whole: the allow-list stays.
    let err = set(&[("allow", ""), ("site_rate", "0")]).unwrap_err().to_string();
    assert!(err.contains("site_rate: must be at least 1"), "{err}");
    let err = set(&[("sped", "1")]).unwrap_err().to_string();
    assert!(err.contains("no limit called \"sped\""), "{err}");
    let cfg2 = cfg.clone();
    let listed = keyway_tests::stack::off_runtime(move || keyway_relay::admin::list(&cfg2)).unwrap();
    assert_eq!(listed[0].limits.get("allow").as_deref(), Some("192.0.2.1/32"));

    // Unset: relay.toml's (anyone) again.
    set(&[("allow", "")]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while api.get(DOORS).await.unwrap().status != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the allow-list stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = {
        let cfg = cfg.clone();
        keyway_tests::stack::off_runtime(move || keyway_relay::admin::site_limits(&cfg, "ghost"))
            .unwrap_err()
            .to_string()
    };
    assert!(err.contains("ghost"), "{err}");
    stack.shutdown().await.unwrap();
}
