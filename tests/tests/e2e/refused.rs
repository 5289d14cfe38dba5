//! Nothing refused at the edge reaches the tunnel: for each kind of refusal
//! (declared or chunked body, a chunked body too long to read whole,
//! malformed chunks, headers, rate, concurrency, allow-list), the relay's
//! observer sees no request head enter a tunnel. For a zero-knowledge site
//! the edge is its agent, after the tunnel: there the console sees no
//! refused request's head.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use keyway_tests::client::{Api, Reply};
use keyway_tests::console::DELAY_HEADER;
use keyway_tests::stack::{empty, Stack, TOKEN};

use super::errors::raw_exchange;

const USERS: &str = "/api/v1/developer/users";
const DOORS: &str = "/api/v1/developer/doors";

/// A stack with `[limits]` and a log of every request head sent into the tunnel.
async fn observed(limits: &str) -> (Stack, Arc<Mutex<Vec<http::request::Parts>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let stack = Stack::builder()
        .relay_extra(&format!("[limits]\n{limits}\n"))
        .observe_relay(Arc::new(move |parts: &http::request::Parts| {
            log.lock().unwrap().push(parts.clone())
        }))
        .start()
        .await
        .unwrap();
    (stack, seen)
}

/// Request heads past the edge: into the tunnel, or (zero-knowledge) to
/// the console.
fn passed(stack: &Stack, seen: &Mutex<Vec<http::request::Parts>>) -> Vec<http::request::Parts> {
    if stack.is_sealed() {
        stack.console.heads_seen()
    } else {
        seen.lock().unwrap().clone()
    }
}

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], code, "{}", String::from_utf8_lossy(&r.body));
}

/// A POST whose body streams in `chunks` of 1 KiB with no declared length.
async fn chunked(api: &Api, chunks: usize) -> Reply {
    let frames = (0..chunks)
        .map(|_| Ok::<_, keyway_tests::stack::BoxError>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 1024]))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
    api.send(api.request(Method::POST, USERS).body(body).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn bodies_and_headers_refused_at_the_edge_never_enter_the_tunnel() {
    let (stack, seen) = observed("max_body_bytes = 4096\nmax_chunked_body_bytes = 2048\nmax_headers = 20").await;
    let api = stack.api();

    let big = api
        .upload(&format!("{USERS}/x/avatar"), "file", "a.png", &[7; 8000])
        .await
        .unwrap();
    assert_refused(&big, 413, "CODE_KEYWAY_PAYLOAD_TOO_LARGE");
    // Chunked, past what the edge reads whole (under or over max_body_bytes:
    // it cannot know which); `edge.rs` has the 413 when both limits agree.
    assert_refused(&chunked(&api, 8).await, 411, "CODE_KEYWAY_LENGTH_REQUIRED");
    let r = chunked(&api, 3).await;
    assert_refused(&r, 411, "CODE_KEYWAY_LENGTH_REQUIRED");
    assert!(
        r.json()["msg"].as_str().unwrap().contains("Content-Length"),
        "{}",
        r.json()
    );
    let mut req = api.request(Method::GET, DOORS);
    for i in 0..25 {
        req = req.header(format!("x-extra-{i}"), "1");
    }
    assert_refused(
        &api.send(req.body(empty()).unwrap()).await.unwrap(),
        431,
        "CODE_KEYWAY_HEADERS_TOO_LARGE",
    );
    let raw = format!(
        "POST {USERS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(&stack, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("CODE_KEYWAY_BAD_REQUEST"), "{answer:?}");
    assert_eq!(
        passed(&stack, &seen).len(),
        0,
        "a refused request's head entered the tunnel"
    );

    // A short chunked body goes through, read whole and sent with its length.
    let r = chunked(&api, 1).await;
    assert_ne!(r.status.as_u16(), 411, "{}", String::from_utf8_lossy(&r.body));
    let sent = passed(&stack, &seen);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["content-length"], "1024");
    assert!(sent[0].headers.get("transfer-encoding").is_none());
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_concurrency_and_allow_list_refusals_never_enter_the_tunnel() {
    let (stack, seen) = observed("client_rate = 1\nclient_burst = 1").await;
    let api = stack.api();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    assert_refused(&api.get(DOORS).await.unwrap(), 429, "CODE_KEYWAY_RATE_LIMITED");
    assert_eq!(passed(&stack, &seen).len(), 1, "only the admitted request crossed");
    stack.shutdown().await.unwrap();

    let (stack, seen) = observed("max_concurrent_requests = 1").await;
    let api = stack.api();
    let slow = {
        let api = stack.api();
        tokio::spawn(async move {
            let req = api.request(Method::GET, DOORS).header(DELAY_HEADER, "1500");
            api.send(req.body(empty()).unwrap()).await.unwrap().status
        })
    };
    // Bounded: once the slow one crossed, the next is refused.
    for _ in 0..400 {
        if passed(&stack, &seen).len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(passed(&stack, &seen).len(), 1, "the slow request crossed");
    assert_refused(&api.get(DOORS).await.unwrap(), 429, "CODE_KEYWAY_TOO_MANY_CONCURRENT");
    assert_eq!(passed(&stack, &seen).len(), 1, "the refused one did not");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    stack.shutdown().await.unwrap();

    let (stack, seen) = observed("allow = [\"192.0.2.0/24\"]").await;
    let r = stack.api().get(DOORS).await;
    if stack.is_sealed() {
        // The relay closes a sealed connection it may not pass: no bytes
        // reach the agent, so there is no envelope to send.
        assert!(r.is_err(), "{r:?}");
    } else {
        assert_refused(&r.unwrap(), 403, "CODE_KEYWAY_CLIENT_NOT_ALLOWED");
    }
    assert_eq!(passed(&stack, &seen).len(), 0);
    stack.shutdown().await.unwrap();
}

/// A request target over 16 KiB is refused at the edge with 414; a head at
/// the ceilings (16 KiB of target, 64 KiB of headers) crosses the tunnel
/// whole and reaches the console, whose agent buffers only 128 KiB per
/// stream.
#[tokio::test]
async fn a_head_at_the_ceilings_crosses_and_one_past_them_is_refused() {
    let too_big = Stack::builder()
        .relay_extra("[limits]\nmax_header_bytes = 65537\n")
        .start()
        .await;
    let err = format!("{:#}", too_big.err().expect("refused at start"));
    assert!(err.contains("max_header_bytes: at most 65536"), "{err}");

    let (stack, seen) = observed("max_header_bytes = 65536").await;
    let api = stack.api();
    let target = |len: usize| {
        let head = format!("{DOORS}?q=");
        format!("{head}{}", "x".repeat(len - head.len()))
    };
    let r = api.get(&target(16 * 1024 + 1)).await.unwrap();
    assert_refused(&r, 414, "CODE_KEYWAY_URI_TOO_LONG");
    assert_eq!(
        passed(&stack, &seen).len(),
        0,
        "a refused request's head entered the tunnel"
    );

    let mut req = api.request(Method::GET, &target(16 * 1024));
    let fill = "y".repeat(6_000);
    for i in 0..10 {
        req = req.header(format!("x-fill-{i}"), &fill);
    }
    let r = api.send(req.body(empty()).unwrap()).await.unwrap();
    assert_eq!(passed(&stack, &seen).len(), 1, "the head crossed");
    let code = r.json()["code"].as_str().unwrap_or_default().to_string();
    assert!(
        !code.starts_with("CODE_KEYWAY") && r.status != StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "answered by the console, not refused on the way: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    stack.shutdown().await.unwrap();
}
