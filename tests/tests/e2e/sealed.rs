//! Zero-knowledge sites (`site mode hq agent`): the relay routes the
//! client's TLS to the agent by SNI, unopened; the agent terminates it with
//! its own certificate and does the edge's work on the request (one
//! canonical path, the client's address from the stream preamble, its
//! claims replaced). Over QUIC, and over TCP in scripts/test's TCP pass.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keyway_tests::client::{Api, EventListener};
use keyway_tests::console::{DOOR_IDS, HELLO_FRAME};
use keyway_tests::procs::cli;
use keyway_tests::stack::{https_client_at, off_runtime, Stack, DOMAIN, TOKEN};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEV: &str = "/api/v1/developer";
const WAIT: Duration = Duration::from_secs(10);

async fn sealed_stack() -> Stack {
    Stack::builder().sealed().start().await.unwrap()
}

/// The site by name, trusting the relay's own CA (as in relay mode).
fn relay_terminated(stack: &Stack) -> Api {
    Api::with_client(
        https_client_at(&stack.https_ca_der, stack.relay_addr.ip()),
        &stack.site_url(),
        TOKEN,
    )
}

fn set_mode(stack: &Stack, mode: &'static str) {
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    off_runtime(move || keyway_relay::admin::set_mode(&cfg, "hq", mode)).unwrap();
}

/// Retries `call` (bounded) until it gives `want`.
async fn until<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !call().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_terminates_a_zero_knowledge_sites_tls() {
    let stack = sealed_stack().await;
    let api = stack.sealed_api();
    let doors = api.get(&format!("{DEV}/doors")).await.unwrap();
    assert_eq!(doors.status, StatusCode::OK, "{}", String::from_utf8_lossy(&doors.body));
    assert_eq!(doors.json()["code"], "SUCCESS");
    let unlock = api
        .json(Method::PUT, &format!("{DEV}/doors/{}/unlock", DOOR_IDS[0]), &json!({}))
        .await
        .unwrap();
    assert_eq!(
        unlock.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&unlock.body)
    );
    let users = api.get(&format!("{DEV}/users?page_num=1&page_size=25")).await.unwrap();
    assert_eq!(users.status, StatusCode::OK);

    // The relay has no certificate for the site's name: a client trusting
    // only the relay's CA cannot even complete the handshake.
    let err = relay_terminated(&stack).get(&format!("{DEV}/doors")).await.unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");

    // The agent is the edge: a path with no canonical form is refused
    // there, and a forged X-Forwarded-For does not become the client.
    let odd = api.get(&format!("{DEV}/doors/x/../{}", DOOR_IDS[0])).await.unwrap();
    assert_eq!(
        odd.status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&odd.body)
    );
    let req = api
        .request(Method::GET, &format!("{DEV}/doors?who=forged"))
        .header("x-forwarded-for", "203.0.113.66")
        .body(keyway_tests::stack::empty())
        .unwrap();
    assert_eq!(api.send(req).await.unwrap().status, StatusCode::OK);
    let config = stack.agent_config.to_str().unwrap();
    let start = Instant::now();
    let forged = loop {
        let out = cli(
            "keyway-agent",
            &["audit", "tail", "--json", "-n", "20", "--config", config],
        )
        .await
        .unwrap();
        let found = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["path"] == format!("{DEV}/doors") && r["status"] == 200);
        if let Some(r) = found {
            break Some(r);
        }
        assert!(start.elapsed() < WAIT, "no audit record: {}", out.stdout);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rec = forged.unwrap();
    assert_eq!(rec["client_ip"], "127.0.0.1", "{rec}");
    assert_eq!(rec["request_id"].as_str().unwrap().len(), 24, "{rec}");

    // `keyway-agent status` says where the site's TLS ends.
    let status = cli("keyway-agent", &["status", "--json", "--config", config])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["site_tls_names"], json!([format!("hq.{DOMAIN}")]), "{v}");
    let human = cli("keyway-agent", &["status", "--config", config]).await.unwrap();
    assert!(
        human
            .stdout
            .contains(&format!("Zero-knowledge: integrations' TLS ends here (hq.{DOMAIN})")),
        "{}",
        human.stdout
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_events_stream_through_a_zero_knowledge_site() {
    let stack = sealed_stack().await;
    let ca = stack.sealed_ca_der.clone().unwrap();
    let mut l = EventListener::connect(stack.relay_addr, &format!("hq.{DOMAIN}"), &ca, TOKEN)
        .await
        .unwrap();
    assert_eq!(l.next_text(WAIT).await.unwrap(), HELLO_FRAME);
    for i in 0..5 {
        let ev = json!({"event": "access.remote_view", "event_object_id": format!("ring-{i}")});
        stack.console.emit(&ev);
        assert_eq!(l.next_event(WAIT).await.unwrap(), ev);
    }
    l.close().await;
    stack.shutdown().await.unwrap();
}

/// `site mode` switches a live site both ways for new connections; the
/// agent stays paired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_keeps_the_pairing() {
    let stack = sealed_stack().await;
    let (sealed, relay) = (stack.sealed_api(), relay_terminated(&stack));
    let doors = format!("{DEV}/doors");
    assert_eq!(sealed.get(&doors).await.unwrap().status, StatusCode::OK);
    set_mode(&stack, "relay");
    until("the relay terminating again", || async {
        relay.get(&doors).await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    // New connections, that is: one already open stays with the agent.
    assert!(
        stack.sealed_api().get(&doors).await.is_err(),
        "the agent's certificate is no longer shown"
    );
    set_mode(&stack, "agent");
    until("the agent terminating again", || async {
        stack
            .sealed_api()
            .get(&doors)
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    stack.shutdown().await.unwrap();
}

/// A request for a zero-knowledge site that reaches the relay in plain
/// text (the bare domain, an address: the relay's own TLS) is refused with
/// 421 naming the site's URL, and never forwarded: the token it carried
/// does not cross the tunnel, and the console sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_text_request_for_a_zero_knowledge_site_is_refused_not_forwarded() {
    let stack = sealed_stack().await;
    let doors = format!("{DEV}/doors");
    let before = stack.console.heads_seen().len();
    for host in [DOMAIN.to_string(), "127.0.0.1".to_string()] {
        let api = stack.relay_api();
        let req = api
            .request(Method::GET, &doors)
            .header(http::header::HOST, host.as_str())
            .body(keyway_tests::stack::empty())
            .unwrap();
        let r = api.send(req).await.unwrap();
        assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        let v = r.json();
        assert_eq!(v["code"], "CODE_KEYWAY_ZERO_KNOWLEDGE", "{v}");
        assert!(
            v["msg"].as_str().unwrap().contains(&format!("https://hq.{DOMAIN}/")),
            "{v}"
        );
    }
    assert_eq!(stack.console.heads_seen().len(), before, "nothing reached the console");
    // The site by its own name still answers.
    assert_eq!(stack.sealed_api().get(&doors).await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

/// With no agent online, a sealed connection is closed at once (there is
/// no TLS at the relay to answer with an envelope), not left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_connection_without_an_agent_is_closed_at_once() {
    let mut stack = sealed_stack().await;
    stack.stop_agent().await.unwrap();
    let start = Instant::now();
    let r = tokio::time::timeout(WAIT, stack.sealed_api().get(&format!("{DEV}/doors")))
        .await
        .expect("closed, not left hanging");
    assert!(r.is_err(), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    stack.shutdown().await.unwrap();
}

/// Everything that crosses the relay's public port for a zero-knowledge
/// site, both ways: no request line, header, token or body in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_public_side_carries_no_plaintext() {
    let stack = sealed_stack().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tap = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay = stack.relay_addr;
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let upstream = tokio::net::TcpStream::connect(relay).await.unwrap();
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let up = {
                        let seen = seen.clone();
                        async move {
                            let mut buf = [0u8; 16384];
                            while let Ok(n) = cr.read(&mut buf).await {
                                if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                            let _ = uw.shutdown().await;
                        }
                    };
                    let down = async move {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = ur.read(&mut buf).await {
                            if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        })
    };
    let ca = stack.sealed_ca_der.clone().unwrap();
    let api = Api::with_client(
        https_client_at(&ca, tap.ip()),
        &format!("https://hq.{DOMAIN}:{}", tap.port()),
        TOKEN,
    );
    let body = json!({"first_name": "Plaintext-Canary", "last_name": "Zk"});
    let made = api.json(Method::POST, &format!("{DEV}/users"), &body).await.unwrap();
    assert_eq!(made.status, StatusCode::OK, "{}", String::from_utf8_lossy(&made.body));
    let doors = api.get(&format!("{DEV}/doors")).await.unwrap();
    assert_eq!(doors.status, StatusCode::OK);
    let all = seen.lock().unwrap().clone();
    assert!(all.len() > 1000, "the tap saw the exchange ({} bytes)", all.len());
    for clear in [
        TOKEN,
        "Bearer",
        "Plaintext-Canary",
        "GET /api",
        "POST /api",
        "HTTP/1.1",
        "SUCCESS",
        DOOR_IDS[0],
    ] {
        assert!(
            !all.windows(clear.len()).any(|w| w == clear.as_bytes()),
            "{clear:?} crossed the relay in clear"
        );
    }
    recorder.abort();
    stack.shutdown().await.unwrap();
}

/// The relay cannot read a zero-knowledge site's requests, so it sends the
/// site's limits to the agent, which refuses in the relay's envelope; a
/// limit set in the registry reaches the running agent within a second,
/// and unsetting it lifts the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_limits_reach_the_agent_and_follow_the_registry() {
    let stack = sealed_stack().await;
    let api = stack.sealed_api();
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    let set = move |field: &'static str, value: &'static str| {
        let cfg = cfg.clone();
        off_runtime(move || keyway_relay::admin::set_site_limits(&cfg, "hq", &[(field.into(), value.into())])).unwrap();
    };
    let wide = || {
        let mut req = api.request(Method::GET, &format!("{DEV}/doors"));
        for i in 0..30 {
            req = req.header(format!("x-extra-{i}"), "1");
        }
        req.body(keyway_tests::stack::empty()).unwrap()
    };
    let wide_heads = || {
        stack
            .console
            .heads_seen()
            .iter()
            .filter(|h| h.headers.contains_key("x-extra-29"))
            .count()
    };
    assert_eq!(api.send(wide()).await.unwrap().status, StatusCode::OK);

    set("max_headers", "20");
    let changed = Instant::now();
    let passed = std::sync::atomic::AtomicUsize::new(1);
    until("the agent to apply max_headers = 20", || async {
        let r = api.send(wide()).await.unwrap();
        if r.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
            assert_eq!(r.json()["code"], "CODE_KEYWAY_HEADERS_TOO_LARGE", "{}", r.json());
            assert!(r.json()["msg"].as_str().unwrap().contains("at most 20"), "{}", r.json());
            assert!(
                r.headers.contains_key("x-request-id"),
                "tagged like the relay's answers"
            );
            return true;
        }
        assert_eq!(r.status, StatusCode::OK);
        passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        false
    })
    .await;
    eprintln!("applied by the agent {:?} after the change", changed.elapsed());
    assert_eq!(
        wide_heads(),
        passed.load(std::sync::atomic::Ordering::SeqCst),
        "only the heads answered 200 reached the console, not the refused one"
    );

    set("max_headers", "");
    until("the agent to lift the limit", || async {
        api.send(wide()).await.unwrap().status == StatusCode::OK
    })
    .await;
    stack.shutdown().await.unwrap();
}
