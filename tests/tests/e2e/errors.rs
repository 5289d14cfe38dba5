//! What an integration sees when a hop fails: the console's own envelope
//! with a Keyway code and the right status, and a relay that keeps serving.

use std::time::{Duration, Instant};

use http::StatusCode;
use keyway_certs::Fingerprint;
use keyway_tests::console::{RunningConsole, DELAY_HEADER};
use keyway_tests::stack::{empty, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOORS: &str = "/api/v1/developer/doors";

fn assert_envelope(r: &keyway_tests::client::Reply, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["code"], code, "{v}");
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(r.headers["content-type"], "application/json");
    v["msg"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn wrong_console_fingerprint_is_refused_and_named() {
    let stack = Stack::builder().pin(Fingerprint([7; 32])).start().await.unwrap();
    let r = stack.api().get(DOORS).await.unwrap();
    let msg = assert_envelope(&r, StatusCode::BAD_GATEWAY, "CODE_KEYWAY_CONSOLE_CERTIFICATE");
    let seen = stack.console.fingerprint().to_string();
    assert!(msg.contains(&seen), "the error names the fingerprint it saw: {msg}");
    assert!(
        msg.contains(&Fingerprint([7; 32]).to_string()),
        "and the pinned one: {msg}"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn agent_offline_is_503_before_and_after_it_was_online() {
    let mut stack = Stack::builder().without_agent().start().await.unwrap();
    let api = stack.api();
    stack.assert_offline(api.get(DOORS).await);

    stack.start_agent().await.unwrap();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.stop_agent().await.unwrap();
    stack.assert_offline(api.get(DOORS).await);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn console_down_is_a_fast_502_and_recovers_without_restarting_the_agent() {
    let mut stack = Stack::start().await.unwrap();
    let api = stack.api();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);

    let again = stack.console.restart_options();
    stack.console.stop().await;
    let t0 = Instant::now();
    let r = api.get(DOORS).await.unwrap();
    assert_envelope(&r, StatusCode::BAD_GATEWAY, "CODE_KEYWAY_CONSOLE_UNREACHABLE");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "connection refused should answer at once, took {:?}",
        t0.elapsed()
    );

    stack.console = RunningConsole::start(again).await.unwrap();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_console_is_504_from_the_agent() {
    let stack = Stack::builder()
        .agent_extra("console_timeout = \"300ms\"")
        .start()
        .await
        .unwrap();
    let api = stack.api();
    let req = api
        .request(http::Method::GET, DOORS)
        .header(DELAY_HEADER, "3000")
        .body(empty())
        .unwrap();
    let r = api.send(req).await.unwrap();
    let msg = assert_envelope(&r, StatusCode::GATEWAY_TIMEOUT, "CODE_KEYWAY_TIMEOUT");
    assert!(msg.contains("within 300ms"), "the message names the limit: {msg}");
    // The tunnel is fine afterwards.
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn relay_gives_up_with_504_when_the_tunnel_is_too_slow() {
    let stack = Stack::builder()
        .relay_extra("request_timeout = \"300ms\"")
        .start()
        .await
        .unwrap();
    let api = stack.api();
    let req = api
        .request(http::Method::GET, DOORS)
        .header(DELAY_HEADER, "3000")
        .body(empty())
        .unwrap();
    let msg = assert_envelope(
        &api.send(req).await.unwrap(),
        StatusCode::GATEWAY_TIMEOUT,
        "CODE_KEYWAY_TIMEOUT",
    );
    assert!(msg.contains("hq"), "{msg}");
    assert!(msg.contains("within 300ms"), "the message names the limit: {msg}");
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

/// Sends raw bytes over TLS to the relay and returns what comes back.
pub(crate) async fn raw_exchange(stack: &Stack, bytes: &[u8]) -> String {
    let mut s = stack.raw_tls().await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("relay answers and closes");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_relay_keeps_serving() {
    let stack = Stack::start().await.unwrap();
    let cases: [&[u8]; 3] = [
        b"GET /api/v1/developer/doors HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n",
        b"BLAH\x01\x02 / HTTP/1.1\r\n\r\n",
        b"GET /api/v1/developer/doors HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ];
    for case in cases {
        let answer = raw_exchange(&stack, case).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} → {answer:?}",
            String::from_utf8_lossy(case)
        );
    }
    // Well-formed HTTP the relay refuses itself: its envelope, with the reason.
    let refused: [(&[u8], &str); 3] = [
        (
            b"GET /api/v1/developer/doors HTTP/1.1\r\nHost: not a host!\r\nConnection: close\r\n\r\n",
            "not a valid host",
        ),
        (b"GET /api/v1/developer/doors HTTP/1.0\r\n\r\n", "no Host header"),
        (
            b"GET /api/v1/developer/../doors HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "dot-segment",
        ),
    ];
    for (case, why) in refused {
        let answer = raw_exchange(&stack, case).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.0 400"),
            "{answer:?}"
        );
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
        assert_eq!(v["code"], "CODE_KEYWAY_BAD_REQUEST", "{answer:?}");
        assert!(v["msg"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    let r = stack.api().get(DOORS).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "still serving after malformed input");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn conflicting_framing_cannot_smuggle_a_second_request() {
    let stack = Stack::start().await.unwrap();
    // Read by Content-Length, the body would hide a second request; read by
    // Transfer-Encoding (as RFC 9112 requires), the "body" is empty and the
    // rest is a second request. Either way only one request may reach the
    // console, and the relay must close the connection after answering.
    let smuggle = b"POST /api/v1/developer/doors HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Transfer-Encoding: chunked\r\nContent-Length: 62\r\n\r\n0\r\n\r\n\
        GET /api/v1/developer/users HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let answer = raw_exchange(&stack, smuggle).await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {answer:?}"
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer:?}");
    assert_eq!(stack.api().get(DOORS).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

/// Polls the registry (bounded) until the site's reported console state is `want`.
async fn console_state_becomes(stack: &Stack, want: bool) -> Duration {
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let sites = keyway_tests::stack::off_runtime(|| keyway_relay::admin::list(&cfg)).unwrap();
        if sites[0].online && sites[0].console_ok == Some(want) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("site list never showed console_ok = {want}");
}

#[tokio::test]
async fn the_agent_reports_console_reachability_to_the_relay() {
    let mut stack = Stack::builder()
        .agent_extra("console_check_interval = \"100ms\"")
        .start()
        .await
        .unwrap();
    console_state_becomes(&stack, true).await;
    let again = stack.console.restart_options();
    stack.console.stop().await;
    let t = console_state_becomes(&stack, false).await;
    eprintln!("console down reported in {t:?}");
    // Agent online, console down: 502, not 503.
    let r = stack.api().get(DOORS).await.unwrap();
    assert_envelope(&r, StatusCode::BAD_GATEWAY, "CODE_KEYWAY_CONSOLE_UNREACHABLE");
    stack.console = RunningConsole::start(again).await.unwrap();
    console_state_becomes(&stack, true).await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_console_reset_mid_body_is_a_clean_error_and_the_tunnel_stays_up() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let req = api
        .request(http::Method::POST, "/api/v1/developer/system/logs/export")
        .header(
            keyway_tests::console::EXPORT_BYTES_HEADER,
            (4 * 1024 * 1024).to_string(),
        )
        .header(keyway_tests::console::FAIL_AFTER_HEADER, (512 * 1024).to_string())
        .header("content-type", "application/json")
        .body(keyway_tests::stack::body(
            r#"{"topic":"all","since":1700000000,"until":1700086400,"timezone":"UTC"}"#,
        ))
        .unwrap();
    // The head arrived (200), then the body breaks: the client sees an
    // error, not a truncated body passed off as complete, and not a hang.
    let outcome = api.send(req).await;
    match outcome {
        Err(e) => assert!(!format!("{e:#}").contains("no response in 60s"), "{e:#}"),
        Ok(r) => panic!(
            "a reset body must not read as complete ({} bytes, {})",
            r.body.len(),
            r.status
        ),
    }
    assert_eq!(
        api.get(DOORS).await.unwrap().status,
        StatusCode::OK,
        "the tunnel is still up"
    );
    assert!(stack.agents.is_online(keyway_tests::stack::SITE));
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tunnel_stream_that_breaks_while_the_tunnel_stays_up_is_502_tunnel_failed() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let rogue = keyway_tests::rogue::RogueAgent::connect(&stack.agent_config)
        .await
        .unwrap();
    stack.wait_online().await.unwrap();
    let api = stack.api();
    for _ in 0..2 {
        let r = api.get(DOORS).await;
        if stack.is_sealed() {
            // The relay only carries a zero-knowledge site's bytes: the
            // broken stream breaks the client's TLS, at once.
            let err = format!("{:#}", r.expect_err("garbage is not TLS"));
            assert!(!err.contains("timed out"), "{err}");
            continue;
        }
        let msg = assert_envelope(&r.unwrap(), StatusCode::BAD_GATEWAY, "CODE_KEYWAY_TUNNEL_FAILED");
        assert!(msg.contains("hq"), "{msg}");
    }
    assert!(rogue.streams() >= 2, "each request reached the agent");
    assert!(
        stack.agents.is_online(keyway_tests::stack::SITE),
        "one broken stream does not take the tunnel down"
    );
    stack.shutdown().await.unwrap();
}

/// A loopback listener whose accept queue is full, so a new connection's
/// handshake is never answered (a console that went dark mid-route).
async fn unanswered_port() -> (
    std::net::SocketAddr,
    Vec<tokio::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (never accepted), then check a further connect hangs.
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("connect failed instead of hanging: {e}"),
            Err(_) => return (addr, held, listener),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn a_console_that_never_answers_a_connect_is_502_after_console_connect_timeout() {
    let (addr, _held, _listener) = unanswered_port().await;
    let mut stack = Stack::builder()
        .agent_extra("console_connect_timeout = \"400ms\"\nconsole_timeout = \"10s\"")
        .without_agent()
        .start()
        .await
        .unwrap();
    let text = std::fs::read_to_string(&stack.agent_config).unwrap();
    let line = format!("console_url = \"{}\"", stack.console.url);
    assert_eq!(text.matches(&line).count(), 1, "{text}");
    std::fs::write(
        &stack.agent_config,
        text.replace(&line, &format!("console_url = \"https://{addr}\"")),
    )
    .unwrap();
    stack.start_agent().await.unwrap();

    let t0 = Instant::now();
    let r = stack.api().get(DOORS).await.unwrap();
    let took = t0.elapsed();
    eprintln!(
        "console connect timed out: {} after {took:?}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert_envelope(&r, StatusCode::BAD_GATEWAY, "CODE_KEYWAY_CONSOLE_UNREACHABLE");
    // The connect timeout, not console_timeout (10 s) nor an immediate
    // refusal; nor held up by the agent's periodic console check, which
    // takes 3 s against a dark console and once stalled the tunnel.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    stack.shutdown().await.unwrap();
}
