//! The relay's admin listener: `/metrics` (Prometheus), `/readyz`, `/healthz`.

use std::time::Duration;

use http::StatusCode;
use keyway_tests::client::{Api, EventListener};
use keyway_tests::console::{ConsoleOptions, RunningConsole, HELLO_FRAME};
use keyway_tests::procs::BinaryStack;
use keyway_tests::stack::{empty, https_client, DOMAIN, SITE, TOKEN};

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out[9..12].parse().unwrap();
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// The value of the metric line starting with `prefix` (labels included).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_agents_websockets_pairing_and_refusals() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bins = BinaryStack::start_with(dir.path(), &console.url, "[limits]\nmax_headers = 20")
        .await
        .unwrap();
    let host = format!("{SITE}.{DOMAIN}");
    let api = Api::with_client(
        https_client(&bins.https_ca_der),
        &format!("https://{}", bins.addr),
        TOKEN,
    );
    let get = |extra: usize| {
        let mut req = api
            .request(http::Method::GET, "/api/v1/developer/doors")
            .header("host", host.as_str());
        for i in 0..extra {
            req = req.header(format!("x-extra-{i}"), "1");
        }
        req.body(empty()).unwrap()
    };
    for _ in 0..3 {
        assert_eq!(api.send(get(0)).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(api.send(get(30)).await.unwrap().status.as_u16(), 431);
    let mut l = EventListener::connect(bins.addr, &host, &bins.https_ca_der, TOKEN)
        .await
        .unwrap();
    assert_eq!(l.next_text(Duration::from_secs(10)).await.unwrap(), HELLO_FRAME);

    let (status, text) = admin_get(bins.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let site = format!("site=\"{SITE}\"");
    assert_eq!(
        value(&text, &format!("keyway_relay_requests_total{{{site},status=\"200\"}}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("keyway_relay_requests_total{{{site},status=\"431\"}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "keyway_relay_edge_refused_total{reason=\"headers\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "keyway_relay_agents_connected"), Some(1.0), "{text}");
    assert_eq!(value(&text, "keyway_relay_agent_connects_total"), Some(1.0), "{text}");
    assert_eq!(value(&text, "keyway_relay_websockets_active"), Some(1.0), "{text}");
    assert_eq!(value(&text, "keyway_relay_pairing_attempts_total"), Some(1.0), "{text}");
    assert_eq!(value(&text, "keyway_relay_pairing_failures_total"), Some(0.0), "{text}");
    assert!(
        value(&text, &format!("keyway_relay_response_bytes_total{{{site}}}")).unwrap() > 0.0,
        "{text}"
    );
    assert!(text.contains("keyway_relay_request_duration_seconds_bucket"), "{text}");
    assert!(!text.contains(TOKEN));

    l.close().await;
    assert_eq!(admin_get(bins.admin_addr, "/readyz").await.0, 200);
    assert_eq!(admin_get(bins.admin_addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let stack = keyway_tests::stack::Stack::builder()
        .without_agent()
        .start()
        .await
        .unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    let mut agent =
        keyway_tests::procs::Proc::spawn("keyway-agent", &["--log-format", "json", "run", "--config", &config])
            .unwrap();
    agent.wait_for_log("tunnel up").await.unwrap();
    let line = agent.log().into_iter().find(|l| l.contains("tunnel up")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(v["fields"]["message"].as_str().unwrap().contains("tunnel up"), "{line}");
    assert!(v["timestamp"].is_string(), "{line}");
    drop(agent);
    stack.shutdown().await.unwrap();
}

/// Requests reuse the relay's idle tunnel streams (the counter of streams
/// opened shows it); a WebSocket takes a stream of its own and gives it back
/// to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_pooled_tunnel_streams() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bins = BinaryStack::start_with(dir.path(), &console.url, "").await.unwrap();
    let host = format!("{SITE}.{DOMAIN}");
    let api = Api::with_client(
        https_client(&bins.https_ca_der),
        &format!("https://{}", bins.addr),
        TOKEN,
    );
    let get = || {
        api.request(http::Method::GET, "/api/v1/developer/doors")
            .header("host", host.as_str())
            .body(empty())
            .unwrap()
    };
    let opened = || async {
        let (_, text) = admin_get(bins.admin_addr, "/metrics").await;
        value(&text, "keyway_relay_tunnel_streams_opened_total").unwrap_or_else(|| panic!("{text}"))
    };
    for _ in 0..20 {
        assert_eq!(api.send(get()).await.unwrap().status, StatusCode::OK);
    }
    let sequential = opened().await;
    assert!(
        (1.0..=2.0).contains(&sequential),
        "20 requests one after another opened {sequential} streams"
    );

    // A burst opens at most one stream per request in flight, then reuses them.
    for _ in 0..5 {
        let burst = futures_util::future::join_all((0..8).map(|_| api.send(get()))).await;
        assert!(burst.iter().all(|r| r.as_ref().unwrap().status == StatusCode::OK));
    }
    let after_bursts = opened().await;
    assert!(
        after_bursts <= sequential + 8.0 + 2.0,
        "5 bursts of 8 opened {} more streams",
        after_bursts - sequential
    );

    let mut l = EventListener::connect(bins.addr, &host, &bins.https_ca_der, TOKEN)
        .await
        .unwrap();
    assert_eq!(l.next_text(Duration::from_secs(10)).await.unwrap(), HELLO_FRAME);
    assert_eq!(
        opened().await,
        after_bursts + 1.0,
        "the WebSocket has a stream of its own"
    );
    for _ in 0..5 {
        assert_eq!(api.send(get()).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(opened().await, after_bursts + 1.0, "requests still reuse the pool");
    l.close().await;
}
