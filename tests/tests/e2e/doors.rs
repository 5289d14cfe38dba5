//! Rules at the door, seen through the tunnel as an integration sees them:
//! credentials presented at a reader of the simulated building, remote
//! unlocks, and what a console logs and streams for each (`access.logs.add`
//! check-ins, webhooks, system-log entries), granted or refused. The suite
//! runs these over QUIC and again over the TCP fallback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keyway_tests::client::{Api, EventListener};
use keyway_tests::console::{Presented, DOOR_IDS};
use keyway_tests::stack::Stack;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEV: &str = "/api/v1/developer";
const WAIT: Duration = Duration::from_secs(10);
const FRONT: &str = DOOR_IDS[0];

fn data(r: keyway_tests::client::Reply) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    r.data()
}

async fn post(api: &Api, path: &str, body: Value) -> Value {
    data(api.json(Method::POST, &format!("{DEV}{path}"), &body).await.unwrap())
}

async fn put(api: &Api, path: &str, body: Value) -> Value {
    data(api.json(Method::PUT, &format!("{DEV}{path}"), &body).await.unwrap())
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// A member with an access policy to the front door (every day, all day).
async fn member(api: &Api, first: &str) -> String {
    let user = id(&post(api, "/users", json!({"first_name": first, "last_name": "Member"})).await);
    let schedule = id(&post(
        api,
        "/access_policies/schedules",
        json!({"name": format!("{first} hours"), "week_schedule": {}}),
    )
    .await);
    let policy = post(
        api,
        "/access_policies",
        json!({"name": format!("{first} front"), "resources": [{"id": FRONT, "type": "door"}], "schedule_id": schedule}),
    )
    .await;
    put(
        api,
        &format!("/users/{user}/access_policies"),
        json!({"access_policy_ids": [id(&policy)]}),
    )
    .await;
    user
}

/// The next `access.logs.add` event's entry.
async fn next_log(l: &mut EventListener) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ev = l.next_event(left).await.expect("an access.logs.add event");
        if ev["event"] == "access.logs.add" {
            return ev["data"].clone();
        }
    }
}

fn result(entry: &Value) -> &str {
    entry["_source"]["event"]["result"].as_str().unwrap_or("")
}

/// Collects webhook deliveries (bodies) on a loopback port; its URL.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let log = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            if let Ok(v) = serde_json::from_str::<Value>(&body[..len]) {
                                log.lock().unwrap().push(v);
                            }
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            break;
                        }
                    }
                }
            });
        }
    });
    (url, got)
}

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
async fn a_card_tap_is_a_check_in_on_the_stream_with_its_webhook_and_log_entry() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let (hook_url, hooks) = webhook_receiver().await;
    post(
        &api,
        "/webhooks/endpoints",
        json!({"name": "checkins", "endpoint": hook_url, "events": ["access.door.unlock"]}),
    )
    .await;
    let ada = member(&api, "Ada").await;
    // The card is enrolled at the front door's reader, then bound to Ada.
    let devices = data(api.get(&format!("{DEV}/devices")).await.unwrap());
    let reader = devices[0]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "UA-G2-PRO")
        .unwrap()["id"]
        .clone();
    let session = post(&api, "/credentials/nfc_cards/sessions", json!({"device_id": reader})).await;
    let read = data(
        api.get(&format!(
            "{DEV}/credentials/nfc_cards/sessions/{}",
            session["session_id"].as_str().unwrap()
        ))
        .await
        .unwrap(),
    );
    let token = read["token"].as_str().unwrap().to_string();
    put(&api, &format!("/users/{ada}/nfc_cards"), json!({"token": token})).await;

    let mut l = stack.listen_events().await.unwrap();
    let (granted, why) = stack.console.present(FRONT, Presented::Nfc(token.clone())).unwrap();
    assert!(granted, "{why}");
    let entry = next_log(&mut l).await;
    assert_eq!(result(&entry), "ACCESS");
    assert_eq!(entry["_source"]["actor"]["id"], ada.as_str());
    assert_eq!(entry["_source"]["authentication"]["credential_provider"], "NFC");
    assert_eq!(entry["_source"]["target"][0]["id"], FRONT);
    assert!(entry["@timestamp"].is_string());
    // The door's new state follows on the stream.
    let state = l.next_event(WAIT).await.unwrap();
    assert_eq!(state["event"], "access.data.v2.location.update");
    assert_eq!(state["data"]["state"]["lock"], "unlocked");

    // The same entry is in the system log, and the webhook went out.
    let logs = post(&api, "/system/logs", json!({"topic": "door_openings"})).await;
    assert!(
        logs["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["_id"] == entry["_id"]),
        "{logs}"
    );
    eventually("the webhook arrives", || !hooks.lock().unwrap().is_empty()).await;
    let hook = hooks.lock().unwrap()[0].clone();
    assert_eq!(hook["event"], "access.door.unlock");
    assert_eq!(hook["data"]["actor"]["id"], ada.as_str());
    // An unknown card is refused, and logged as such.
    let (granted, _) = stack.console.present(FRONT, Presented::Nfc("00ff".into())).unwrap();
    assert!(!granted);
    assert_eq!(result(&next_log(&mut l).await), "BLOCKED");
    l.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn lockdown_refuses_a_remote_unlock_and_a_tap_until_lifted() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ada = member(&api, "Ada").await;
    put(
        &api,
        &format!("/users/{ada}/pin_codes"),
        json!({"pin_code": "24681357"}),
    )
    .await;
    let mut l = stack.listen_events().await.unwrap();
    put(
        &api,
        "/doors/settings/emergency",
        json!({"lockdown": true, "evacuation": false}),
    )
    .await;
    let setting = l.next_event(WAIT).await.unwrap();
    assert_eq!(setting["event"], "access.data.setting.update");
    assert_eq!(setting["data"]["emergency"]["lockdown"], true);

    let r = api
        .json(Method::PUT, &format!("{DEV}/doors/{FRONT}/unlock"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["code"], "CODE_OPERATION_FORBIDDEN");
    assert!(r.json()["msg"].as_str().unwrap().contains("lockdown"), "{}", r.json());
    assert_eq!(result(&next_log(&mut l).await), "BLOCKED");
    let (granted, why) = stack.console.present(FRONT, Presented::Pin("24681357".into())).unwrap();
    assert!(!granted && why.contains("lockdown"), "{why}");

    put(&api, "/doors/settings/emergency", json!({"lockdown": false})).await;
    let r = api
        .json(Method::PUT, &format!("{DEV}/doors/{FRONT}/unlock"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        stack
            .console
            .present(FRONT, Presented::Pin("24681357".into()))
            .unwrap()
            .0
    );
    l.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn lock_rules_decide_and_reset_returns_to_the_schedule() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ada = member(&api, "Ada").await;
    put(
        &api,
        &format!("/users/{ada}/pin_codes"),
        json!({"pin_code": "11223344"}),
    )
    .await;
    let rule = format!("/doors/{FRONT}/lock_rule");
    put(&api, &rule, json!({"type": "keep_lock"})).await;
    assert!(
        !stack
            .console
            .present(FRONT, Presented::Pin("11223344".into()))
            .unwrap()
            .0
    );
    let r = api
        .json(Method::PUT, &format!("{DEV}/doors/{FRONT}/unlock"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.json()["code"], "CODE_OPERATION_FORBIDDEN");
    put(&api, &rule, json!({"type": "keep_unlock"})).await;
    assert!(
        stack
            .console
            .present(FRONT, Presented::Nfc("unknown".into()))
            .unwrap()
            .0,
        "the door is held open"
    );
    put(&api, &rule, json!({"type": "reset"})).await;
    let now = data(api.get(&format!("{DEV}{rule}")).await.unwrap());
    assert_eq!(now["type"], "schedule", "reset is not a state of its own");
    assert!(
        stack
            .console
            .present(FRONT, Presented::Pin("11223344".into()))
            .unwrap()
            .0
    );
    assert!(
        !stack
            .console
            .present(FRONT, Presented::Nfc("unknown".into()))
            .unwrap()
            .0
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deactivated_members_pin_is_refused_at_the_door() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ada = member(&api, "Ada").await;
    put(
        &api,
        &format!("/users/{ada}/pin_codes"),
        json!({"pin_code": "97531864"}),
    )
    .await;
    assert!(
        stack
            .console
            .present(FRONT, Presented::Pin("97531864".into()))
            .unwrap()
            .0
    );
    put(&api, &format!("/users/{ada}"), json!({"status": "DEACTIVATED"})).await;
    let (granted, why) = stack.console.present(FRONT, Presented::Pin("97531864".into())).unwrap();
    assert!(!granted && why.contains("deactivated"), "{why}");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_guest_pin_opens_within_the_visit_and_not_after_its_end() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let now = keyway_tests::console::state::now_secs();
    let visitor = post(
        &api,
        "/visitors",
        json!({"first_name": "Guest", "last_name": "One", "start_time": now - 60, "end_time": now + 3600,
               "visit_reason": "Business", "resources": [{"id": FRONT, "type": "door"}]}),
    )
    .await;
    let vid = id(&visitor);
    let pin = data(
        api.json(Method::POST, &format!("{DEV}/credentials/pin_codes"), &json!({}))
            .await
            .unwrap(),
    );
    let pin = pin.as_str().unwrap().to_string();
    put(&api, &format!("/visitors/{vid}/pin_codes"), json!({"pin_code": pin})).await;
    assert!(stack.console.present(FRONT, Presented::Pin(pin.clone())).unwrap().0);
    assert!(
        !stack
            .console
            .present(DOOR_IDS[1], Presented::Pin(pin.clone()))
            .unwrap()
            .0,
        "not its door"
    );
    // The visit ends (its end time moves into the past): the PIN no longer opens.
    put(
        &api,
        &format!("/visitors/{vid}"),
        json!({"start_time": now - 7200, "end_time": now - 60}),
    )
    .await;
    let (granted, why) = stack.console.present(FRONT, Presented::Pin(pin.clone())).unwrap();
    assert!(!granted && why.contains("window"), "{why}");
    let after = data(api.get(&format!("{DEV}/visitors/{vid}")).await.unwrap());
    assert_eq!(after["status"], "VISITED", "it came, while its window was open");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_user_groups_policy_opens_for_its_members_only() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ada = id(&post(&api, "/users", json!({"first_name": "Ada", "last_name": "Grouped"})).await);
    put(
        &api,
        &format!("/users/{ada}/pin_codes"),
        json!({"pin_code": "55667788"}),
    )
    .await;
    assert!(
        !stack
            .console
            .present(FRONT, Presented::Pin("55667788".into()))
            .unwrap()
            .0,
        "no policy yet"
    );
    let group = id(&post(&api, "/user_groups", json!({"name": "Members"})).await);
    let policy = id(&post(
        &api,
        "/access_policies",
        json!({"name": "Members front", "resources": [{"id": FRONT, "type": "door"}],
                                                          "schedule_id": "73f15cab-c725-4a76-a419-a4026d131e96"}),
    )
    .await);
    put(
        &api,
        &format!("/user_groups/{group}/access_policies"),
        json!({"access_policy_ids": [policy]}),
    )
    .await;
    post(&api, &format!("/user_groups/{group}/users"), json!([ada])).await;
    assert!(
        stack
            .console
            .present(FRONT, Presented::Pin("55667788".into()))
            .unwrap()
            .0
    );
    post(&api, &format!("/user_groups/{group}/users/delete"), json!([ada])).await;
    assert!(
        !stack
            .console
            .present(FRONT, Presented::Pin("55667788".into()))
            .unwrap()
            .0
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_holiday_in_the_schedules_holiday_group_closes_the_door_for_the_day() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ada = id(&post(&api, "/users", json!({"first_name": "Ada", "last_name": "Office"})).await);
    put(
        &api,
        &format!("/users/{ada}/pin_codes"),
        json!({"pin_code": "12121212"}),
    )
    .await;
    // Office hours: every day, all day (UTC).
    let all_day = json!([{"start_time": "00:00:00", "end_time": "23:59:59"}]);
    let week: serde_json::Map<String, Value> = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ]
    .iter()
    .map(|d| (d.to_string(), all_day.clone()))
    .collect();
    let schedule = id(&post(
        &api,
        "/access_policies/schedules",
        json!({"name": "Office", "week_schedule": week}),
    )
    .await);
    let policy = id(&post(
        &api,
        "/access_policies",
        json!({"name": "Office front", "resources": [{"id": FRONT, "type": "door"}],
                                                          "schedule_id": schedule}),
    )
    .await);
    put(
        &api,
        &format!("/users/{ada}/access_policies"),
        json!({"access_policy_ids": [policy]}),
    )
    .await;
    assert!(
        stack
            .console
            .present(FRONT, Presented::Pin("12121212".into()))
            .unwrap()
            .0
    );

    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let day = &today[..10];
    let holidays = id(&post(
        &api,
        "/access_policies/holiday_groups",
        json!({"name": "Today off", "holidays": [{"name": "Today", "start_time": format!("{day}T00:00:00Z"),
                                                   "end_time": format!("{day}T23:59:59Z")}]}),
    )
    .await);
    put(
        &api,
        &format!("/access_policies/schedules/{schedule}"),
        json!({"name": "Office", "holiday_group_id": holidays}),
    )
    .await;
    let (granted, why) = stack.console.present(FRONT, Presented::Pin("12121212".into())).unwrap();
    assert!(!granted && why.contains("schedule"), "{why}");
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_reaches_fifty_subscribers_as_a_check_in_within_50_ms_p99() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ada = member(&api, "Ada").await;
    put(
        &api,
        &format!("/users/{ada}/pin_codes"),
        json!({"pin_code": "31415926"}),
    )
    .await;
    let mut listeners = Vec::new();
    for _ in 0..50 {
        listeners.push(stack.listen_events().await.unwrap());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for l in listeners {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut l = l;
            for round in 0..20 {
                let _ = next_log(&mut l).await;
                let _ = tx.send((round, Instant::now()));
            }
        });
    }
    drop(tx);
    let mut delays = Vec::new();
    for round in 0..20 {
        let tapped = Instant::now();
        assert!(
            stack
                .console
                .present(FRONT, Presented::Pin("31415926".into()))
                .unwrap()
                .0
        );
        for _ in 0..50 {
            let (r, at) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("every subscriber hears it")
                .unwrap();
            assert_eq!(r, round, "in order, each once");
            delays.push(at - tapped);
        }
    }
    delays.sort();
    let p99 = delays[delays.len() * 99 / 100];
    eprintln!(
        "tap → access.logs.add at 50 subscribers: p50 {:?}, p99 {p99:?}",
        delays[delays.len() / 2]
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    stack.shutdown().await.unwrap();
}

/// POSTs JSON to the simulated building's control listener.
async fn control(base: &str, path: &str, body: Value) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let r = client.request(req).await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn console_sim_serves_the_building_on_its_control_listener_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let _sim = keyway_tests::procs::Proc::spawn(
        "console-sim",
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t0k3n",
            "--control",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    )
    .unwrap();
    eventually("console-sim is ready", || ready.exists()).await;
    let line: Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let base = line["control"]
        .as_str()
        .expect("the control listener's URL")
        .to_string();
    let (status, v) = control(
        &base,
        "/credential",
        json!({"door_id": FRONT, "type": "nfc", "value": "00aa"}),
    )
    .await;
    assert_eq!((status, &v["granted"]), (200, &json!(false)), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("not bound"), "{v}");
    assert_eq!(
        control(&base, "/door", json!({"door_id": FRONT, "position": "open"}))
            .await
            .0,
        200
    );
    assert_eq!(control(&base, "/doorbell", json!({"device_id": "nope"})).await.0, 404);
    assert_eq!(
        control(&base, "/device", json!({"device_id": "e4388384236b0", "online": false}))
            .await
            .0,
        200
    );
    assert_eq!(
        control(&base, "/credential", json!({"door_id": FRONT, "type": "retina"}))
            .await
            .0,
        400
    );

    // Without --control there is no control listener in the ready line.
    let ready2 = dir.path().join("ready2.json");
    let _plain = keyway_tests::procs::Proc::spawn(
        "console-sim",
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t0k3n",
            "--ready-file",
            ready2.to_str().unwrap(),
        ],
    )
    .unwrap();
    eventually("console-sim is ready", || ready2.exists()).await;
    let line: Value = serde_json::from_str(&std::fs::read_to_string(&ready2).unwrap()).unwrap();
    assert!(line.get("control").is_none(), "{line}");
}

/// The agent has at most `CONSOLE_CONCURRENCY` requests under way at the
/// console (each costs a Pi its buffers); one more waits its turn instead
/// of failing, and a door unlock never waits behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_console_queues_requests_but_never_a_door_unlock() {
    use keyway_agent::console::CONSOLE_CONCURRENCY;
    use keyway_tests::console::DELAY_HEADER;
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let slow = |ms: u64| {
        let api = api.clone();
        tokio::spawn(async move {
            let req = api
                .request(http::Method::GET, "/api/v1/developer/doors")
                .header(DELAY_HEADER, ms.to_string());
            let r = api.send(req.body(keyway_tests::stack::empty()).unwrap()).await.unwrap();
            (r.status, std::time::Instant::now())
        })
    };
    // Every turn taken by a request the console holds for 3 s: none can
    // end before `hold` from now.
    let hold = Duration::from_secs(3);
    let sent = std::time::Instant::now();
    let held: Vec<_> = (0..CONSOLE_CONCURRENCY)
        .map(|_| slow(hold.as_millis() as u64))
        .collect();
    let at_console = || {
        let seen = stack.console.requests_seen();
        seen.iter().filter(|r| *r == "GET /api/v1/developer/doors").count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while at_console() < CONSOLE_CONCURRENCY {
        assert!(std::time::Instant::now() < deadline, "the console never got them all");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One more waits for a turn.
    let waiting = slow(0);
    // A door unlock goes straight through, while all the turns are taken.
    let unlock = format!("/api/v1/developer/doors/{}/unlock", DOOR_IDS[0]);
    let r = api.json(http::Method::PUT, &unlock, &json!({})).await.unwrap();
    assert_eq!(r.status, http::StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the unlock was answered while every turn was taken"
    );
    let (status, answered) = waiting.await.unwrap();
    assert_eq!(status, http::StatusCode::OK, "queued, not refused");
    assert!(
        answered >= sent + hold,
        "the extra request was answered {:?} after the held ones were sent, before any turn could be free",
        answered - sent
    );
    for h in futures_util::future::join_all(held).await {
        assert_eq!(h.unwrap().0, http::StatusCode::OK);
    }
    stack.shutdown().await.unwrap();
}
