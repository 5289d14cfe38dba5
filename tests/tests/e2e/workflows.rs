//! What a coworking platform does against the console, run through the
//! tunnel exactly as it would run against a console on the internet.

use std::time::Duration;

use http::{Method, StatusCode};
use keyway_tests::client::Api;
use keyway_tests::console::{DOOR_IDS, HELLO_FRAME};
use keyway_tests::stack::Stack;
use serde_json::{json, Value};

const DEV: &str = "/api/v1/developer";

async fn create(api: &Api, path: &str, body: Value) -> Value {
    api.json(Method::POST, &format!("{DEV}{path}"), &body)
        .await
        .unwrap()
        .data()
}

async fn put(api: &Api, path: &str, body: Value) -> Value {
    let r = api.json(Method::PUT, &format!("{DEV}{path}"), &body).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("object has an id").to_string()
}

#[tokio::test]
async fn member_gets_door_groups_through_an_access_policy() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let group = create(
        &api,
        "/door_groups",
        // The spec's form: door ids as strings.
        json!({"group_name": "Hot desks", "resources": [DOOR_IDS[0], DOOR_IDS[1]]}),
    )
    .await;
    assert_eq!(group["name"], "Hot desks");
    assert_eq!(group["resources"][1]["id"], DOOR_IDS[1]);
    assert_eq!(group["resources"][1]["name"], "Back Door");
    let policy = create(&api, "/access_policies", json!({"name": "Flex plan", "resources": [{"id": id(&group), "type": "door_group"}], "schedule_id": "73f15cab-c725-4a76-a419-a4026d131e96"})).await;
    let member = create(&api, "/users", json!({"first_name": "Grace", "last_name": "Hopper", "user_email": "grace@example.com", "employee_number": "CW-0042"})).await;
    put(
        &api,
        &format!("/users/{}/access_policies", id(&member)),
        json!({"access_policy_ids": [id(&policy)]}),
    )
    .await;

    let fetched = api
        .get(&format!("{DEV}/users/{}?expand[]=access_policy", id(&member)))
        .await
        .unwrap()
        .data();
    assert_eq!(fetched["access_policies"][0]["name"], "Flex plan");
    assert_eq!(fetched["access_policies"][0]["resources"][0]["id"], id(&group));
    let policies = api
        .get(&format!("{DEV}/users/{}/access_policies", id(&member)))
        .await
        .unwrap()
        .data();
    assert_eq!(policies.as_array().unwrap().len(), 1);

    // A policy naming a door group that does not exist is the console's 400.
    let bad = api
        .json(
            Method::POST,
            &format!("{DEV}/access_policies"),
            &json!({"name": "Ghost", "resources": [{"id": "nope", "type": "door_group"}]}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn member_is_deactivated_when_the_plan_ends() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let member = create(&api, "/users", json!({"first_name": "Alan", "last_name": "Turing"})).await;
    assert_eq!(member["status"], "ACTIVE");
    put(
        &api,
        &format!("/users/{}", id(&member)),
        json!({"status": "DEACTIVATED"}),
    )
    .await;
    let after = api.get(&format!("{DEV}/users/{}", id(&member))).await.unwrap().data();
    assert_eq!(after["status"], "DEACTIVATED");
    let found = api
        .get(&format!("{DEV}/users/search?keyword=turing"))
        .await
        .unwrap()
        .data();
    assert_eq!(found[0]["status"], "DEACTIVATED");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn visitor_with_a_start_and_end_time() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let visitor = create(
        &api,
        "/visitors",
        json!({"first_name": "Vera", "last_name": "Visitor", "company": "Acme", "visit_reason": "Business",
               "start_time": now + 3600, "end_time": now + 7200, "visit_reason": "Business", "resources": [{"id": DOOR_IDS[0], "type": "door"}]}),
    )
    .await;
    assert_eq!(visitor["status"], "UPCOMING");
    let listed = api
        .get(&format!("{DEV}/visitors?status=1&page_num=1&page_size=10"))
        .await
        .unwrap()
        .json();
    assert_eq!(listed["pagination"]["total"], 1);
    let moved = put(
        &api,
        &format!("/visitors/{}", id(&visitor)),
        json!({"start_time": now - 60, "end_time": now + 600}),
    )
    .await;
    assert_eq!(moved["data"]["status"], "ACTIVE", "within its window");

    let bad = api
        .json(
            Method::POST,
            &format!("{DEV}/visitors"),
            &json!({"first_name": "A", "last_name": "B", "start_time": now, "end_time": now - 1, "visit_reason": "Others"}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["code"], "CODE_PARAMS_INVALID");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn member_gets_a_pin_code() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let member = create(&api, "/users", json!({"first_name": "Pin", "last_name": "Holder"})).await;
    let pin = api
        .json(Method::POST, &format!("{DEV}/credentials/pin_codes"), &json!(null))
        .await
        .unwrap()
        .data();
    let pin = pin.as_str().unwrap().to_string();
    assert_eq!(pin.len(), 8);
    put(
        &api,
        &format!("/users/{}/pin_codes", id(&member)),
        json!({"pin_code": pin}),
    )
    .await;
    let after = api.get(&format!("{DEV}/users/{}", id(&member))).await.unwrap().data();
    assert!(
        after["pin_code"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty() && t != pin),
        "stored as a token, not the PIN"
    );

    // The same PIN for someone else is refused by the console.
    let other = create(&api, "/users", json!({"first_name": "Other", "last_name": "Member"})).await;
    let dup = api
        .json(
            Method::PUT,
            &format!("{DEV}/users/{}/pin_codes", id(&other)),
            &json!({"pin_code": pin}),
        )
        .await
        .unwrap();
    assert_eq!(dup.json()["code"], "CODE_CREDS_PIN_CODE_CREDS_ALREADY_EXIST");
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn remote_unlock_and_check_in_detected_from_the_door_event() {
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    // The platform listens for door events, as it does all day.
    let mut events = stack.listen_events().await.unwrap();
    assert_eq!(events.next_text(Duration::from_secs(10)).await.unwrap(), HELLO_FRAME);

    // A member taps "open" in the platform's app: the platform unlocks remotely.
    let r = put(
        &api,
        &format!("/doors/{}/unlock", DOOR_IDS[1]),
        json!({"actor_id": "member-7", "actor_name": "Member Seven", "extra": {"booking": "B-19"}}),
    )
    .await;
    assert_eq!(r["code"], "SUCCESS");

    // The check-in is detected from the event, matched to the door by id.
    let ev = events.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev["event"], "access.data.device.remote_unlock");
    let door = api
        .get(&format!("{DEV}/doors/{}", ev["data"]["unique_id"].as_str().unwrap()))
        .await
        .unwrap()
        .data();
    assert_eq!(door["name"], "Back Door");

    // And it is in the console's log, which the platform reconciles against.
    let logs = api
        .json(
            Method::POST,
            &format!("{DEV}/system/logs?page_num=1&page_size=10"),
            &json!({"topic": "door_openings"}),
        )
        .await
        .unwrap()
        .data();
    assert_eq!(logs["total"], 1);
    assert_eq!(logs["hits"][0]["_source"]["target"][0]["id"], DOOR_IDS[1]);

    // Half-given actor fields are the console's 400, not a tunnel error.
    let bad = api
        .json(
            Method::PUT,
            &format!("{DEV}/doors/{}/unlock", DOOR_IDS[1]),
            &json!({"actor_id": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    events.close().await;
    stack.shutdown().await.unwrap();
}
