//! Every category of the console API through relay → QUIC → agent → console.

use std::time::Duration;

use http::{Method, StatusCode};
use keyway_tests::console::{ConsoleOptions, Throttle, DOOR_IDS, EXPORT_BYTES_HEADER};
use keyway_tests::stack::{empty, Stack, TOKEN};
use serde_json::json;

const DEV: &str = "/api/v1/developer";

#[tokio::test]
async fn json_crud_round_trips_through_the_tunnel() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();

    let doors = api.get(&format!("{DEV}/doors")).await.unwrap();
    assert_eq!(doors.data().as_array().unwrap().len(), DOOR_IDS.len());
    assert_eq!(doors.headers["content-type"], "application/json");
    assert!(
        doors.headers.contains_key("x-request-id"),
        "the relay tags every response"
    );

    let created = api
        .json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": "Ada", "last_name": "Lovelace", "user_email": "ada@example.com"}),
        )
        .await
        .unwrap()
        .data();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["full_name"], "Ada Lovelace");

    let upd = api
        .json(
            Method::PUT,
            &format!("{DEV}/users/{id}"),
            &json!({"last_name": "Byron"}),
        )
        .await
        .unwrap();
    assert_eq!(upd.status, StatusCode::OK);
    let got = api.get(&format!("{DEV}/users/{id}")).await.unwrap().data();
    assert_eq!(got["full_name"], "Ada Byron");

    // Errors of the console itself pass through untouched.
    let bad = api
        .json(Method::POST, &format!("{DEV}/users"), &json!({"first_name": "NoLast"}))
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["code"], "CODE_USER_CSV_IMPORT_INCOMPLETE_PROP");

    let del = api.delete(&format!("{DEV}/users/{id}")).await.unwrap();
    assert_eq!(del.status, StatusCode::OK);
    let gone = api.get(&format!("{DEV}/users/{id}")).await.unwrap();
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.json()["code"], "CODE_RESOURCE_NOT_FOUND");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_or_missing_token_is_the_consoles_401() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api_with_token("not-the-token");
    let r = api.get(&format!("{DEV}/doors")).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "CODE_UNAUTHORIZED");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn pagination_pages_through_every_user() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    const N: usize = 230;
    for i in 0..N {
        api.json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": format!("M{i}"), "last_name": "Member"}),
        )
        .await
        .unwrap()
        .data();
    }
    let mut seen = std::collections::HashSet::new();
    let mut page = 1;
    loop {
        let r = api
            .get(&format!("{DEV}/users?page_num={page}&page_size=50"))
            .await
            .unwrap();
        let v = r.json();
        assert_eq!(v["pagination"]["total"], N);
        assert_eq!(v["pagination"]["page_num"], page);
        let items = v["data"].as_array().unwrap();
        for u in items {
            assert!(
                seen.insert(u["id"].as_str().unwrap().to_string()),
                "duplicate across pages"
            );
        }
        if items.len() < 50 {
            break;
        }
        page += 1;
    }
    assert_eq!(seen.len(), N);
    assert_eq!(page, 5);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn multipart_upload_and_binary_downloads_are_byte_exact() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let direct = stack.direct_api();
    let user = api
        .json(
            Method::POST,
            &format!("{DEV}/users"),
            &json!({"first_name": "Pic", "last_name": "Ture"}),
        )
        .await
        .unwrap()
        .data();
    let id = user["id"].as_str().unwrap();

    // 3 MiB of every byte value, with a near-miss of the form's boundary
    // (one byte off) that a buffering or re-framing hop would trip over.
    let mut avatar: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    avatar[1000..1030].copy_from_slice(b"\r\n--keyway-test-boundary-8d1e\r");
    let up = api
        .upload(&format!("{DEV}/users/{id}/avatar"), "file", "me.png", &avatar)
        .await
        .unwrap()
        .data();
    let url = up["avatar_url"].as_str().unwrap();
    let through = api.get(url).await.unwrap();
    assert_eq!(through.status, StatusCode::OK);
    assert_eq!(through.headers["content-type"], "application/octet-stream");
    assert!(
        through.body == avatar,
        "avatar changed on the way ({} bytes back)",
        through.body.len()
    );

    let visitor = api
        .json(Method::POST, &format!("{DEV}/visitors"), &json!({"first_name": "Vi", "last_name": "Sitor", "start_time": 1_900_000_000i64, "end_time": 1_900_003_600i64, "visit_reason": "Business"}))
        .await
        .unwrap()
        .data();
    let vid = visitor["id"].as_str().unwrap();
    api.send(
        api.request(Method::PUT, &format!("{DEV}/visitors/{vid}/qr_codes"))
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap()
    .data();
    let qr = api
        .get(&format!("{DEV}/credentials/qr_codes/download/{vid}"))
        .await
        .unwrap();
    assert_eq!(qr.headers["content-type"], "image/png");
    assert!(qr.body.starts_with(b"\x89PNG\r\n\x1a\n"));
    let qr_direct = direct
        .get(&format!("{DEV}/credentials/qr_codes/download/{vid}"))
        .await
        .unwrap();
    assert!(qr.body == qr_direct.body && qr.body.len() == keyway_tests::console::qr_image(vid).len());
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn streamed_export_arrives_whole() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let size = 8 * 1024 * 1024 + 17;
    let req = api
        .request(Method::POST, &format!("{DEV}/system/logs/export"))
        .header(EXPORT_BYTES_HEADER, size.to_string())
        .header("content-type", "application/json")
        .body(keyway_tests::stack::body(
            r#"{"topic":"door_openings","since":1700000000,"until":1700086400,"timezone":"Europe/Paris"}"#,
        ))
        .unwrap();
    let r = api.send(req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert_eq!(r.body.len(), size);
    assert!(r.body.starts_with(b"timestamp,actor,event,door,result\n"));
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn throttle_429_passes_through_with_retry_after() {
    let mut opts = ConsoleOptions::new(TOKEN);
    opts.throttle = Some(Throttle {
        max_requests: 3,
        window: Duration::from_secs(600),
    });
    // Without the event hub, whose own WebSocket would count as a request.
    let stack = Stack::builder()
        .console(opts)
        .without_console_token()
        .start()
        .await
        .unwrap();
    let api = stack.api();
    let mut statuses = vec![];
    let mut retry_after = None;
    for _ in 0..5 {
        let r = api.get(&format!("{DEV}/doors")).await.unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(r.json()["code"], "CODE_SYSTEM_ERROR");
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let retry_after = retry_after.expect("Retry-After passed through");
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn http2_integrations_are_served_and_hosts_route_to_sites() {
    let stack = Stack::start().await.unwrap();
    let h2 = stack.api_h2();
    let r = h2.get(&format!("{DEV}/doors/{}", DOOR_IDS[1])).await.unwrap();
    assert_eq!(r.data()["name"], "Back Door");

    // Many requests at once share one connection and one tunnel.
    let mut tasks = vec![];
    for _ in 0..64 {
        let h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            h2.get(&format!("{DEV}/door_groups")).await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }

    // Host-based routing: <site>.<domain> reaches the site, other names 404.
    let api = stack.api();
    let ok = api
        .send(
            api.request(Method::GET, &format!("{DEV}/doors"))
                .header("host", "hq.relay.keyway.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let unknown = api
        .send(
            api.request(Method::GET, &format!("{DEV}/doors"))
                .header("host", "other.relay.keyway.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["code"], "CODE_KEYWAY_SITE_NOT_FOUND");
    stack.shutdown().await.unwrap();
}
