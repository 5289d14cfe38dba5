//! Every operation of the published UniFi Access API description
//! (`tests/conformance/unifi-access.openapi.json`, vendored from
//! `../shared/unifi/openapi.yaml` by `scripts/openapi-fixture`), called
//! through relay → tunnel → agent → simulated console:
//!
//! * success: HTTP 200, `code: SUCCESS`, and the body valid against the
//!   operation's response schema (a JSON Schema validator, the description
//!   being OpenAPI 3.1), or the documented content type for files;
//! * errors: without a token the console's 401 envelope; with an unknown id
//!   or a body missing a required field, an envelope whose `code` is one of
//!   the guide's documented codes — never a 500, never a 404 page.
//!
//! Requests are built from the description's own examples, with ids of
//! resources the test created substituted in.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use keyway_tests::client::{Api, Reply};
use keyway_tests::conformance::{
    error_schema, fill, follow_the_samples, operations, substitute, validator, Ids, Op, SPEC,
};
use keyway_tests::console::DOOR_IDS;
use keyway_tests::stack::{empty, Stack};
use serde_json::{json, Value};

/// The request body of `op` for a successful call.
fn body_for(op: &Op, ids: &Ids) -> Option<Value> {
    let unique = |prefix: &str| format!("{prefix}-{}", &ids.get("users")[..8]);
    Some(match op.id.as_str() {
        // Names must be unique: the description's example names are taken by
        // the resources the test created from them.
        "createUserGroup" => json!({"name": unique("group")}),
        // On the console's default schedule: the test deletes its own later.
        "createAccessPolicy" => {
            json!({"name": unique("policy"), "resources": [{"id": ids.get("doors"), "type": "door"}],
                                       "schedule_id": "73f15cab-c725-4a76-a419-a4026d131e96"})
        }
        "createSchedule" => json!({"name": unique("schedule"), "week_schedule": {}}),
        "createHolidayGroup" => json!({"name": unique("holidays"), "holidays": []}),
        "createDoorGroup" => json!({"group_name": unique("doors"), "resources": [ids.get("doors")]}),
        "addWebhookEndpoint" => {
            json!({"name": "conformance", "endpoint": "https://127.0.0.1:1/hook", "events": ["access.door.unlock"]})
        }
        "createUser" => {
            json!({"first_name": "Conformance", "last_name": "Second", "user_email": format!("{}@example.com", unique("u"))})
        }
        // Examples the description lacks, or whose values another holder took.
        "assignResourcesToUser" | "assignResourcesToUserGroup" => {
            json!({"resource_type": "wifi", "resource_ids": ["wifi-1"]})
        }
        "assignUserToUserGroup" | "unassignUserFromUserGroup" => json!([ids.get("users")]),
        "batchAssignTouchPasses" => json!({"ids": [ids.get("users")]}),
        "assignNfcCardToVisitor" | "unassignNfcCardFromVisitor" => json!({"token": ids.get("visitor_card")}),
        "assignPinCodeToVisitor" => json!({"pin_code": "80112233"}),
        "sendIdentityInvitations" => json!([{"email": "ada@example.com", "user_id": ids.get("users")}]),
        _ => substitute(op.example.as_ref()?, ids),
    })
}

async fn call(api: &Api, method: &Method, path: &str, body: Option<&Value>) -> Reply {
    match body {
        Some(b) => api.json(method.clone(), path, b).await.unwrap(),
        None => api
            .send(api.request(method.clone(), path).body(empty()).unwrap())
            .await
            .unwrap(),
    }
}

/// A multipart POST of `op`'s fields, each with content that suits it.
async fn upload(api: &Api, op: &Op, path: &str) -> Reply {
    const BOUNDARY: &str = "keyway-conformance";
    let mut body = Vec::new();
    for field in &op.multipart {
        let content: &[u8] = match (op.id.as_str(), field.as_str()) {
            ("importNfcCards", _) => b"nfc_id,token\n100777,5aa2e6a3e6a3e6a3e6a3e6a3e6a3e6a3\n",
            (_, "cert") => b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            (_, "key") => b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
            _ => b"\x89PNG\r\n\x1a\nconformance",
        };
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{field}.bin\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let req = api
        .request(op.method.clone(), path)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(keyway_tests::stack::body(body))
        .unwrap();
    api.send(req).await.unwrap()
}

/// Calls `op` at `path` with `body` (or its multipart fields).
async fn invoke(api: &Api, op: &Op, path: &str, body: Option<&Value>) -> Reply {
    if op.multipart.is_empty() {
        call(api, &op.method, path, body).await
    } else {
        upload(api, op, path).await
    }
}

/// Creates what the operations need, through the tunnel; their ids.
async fn setup(api: &Api) -> Ids {
    let mut ids = Ids::default();
    let data = |r: Reply| {
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        r.data()
    };
    let id = |v: &Value| v["id"].as_str().expect("an id").to_string();
    let user = data(
        api.json(
            Method::POST,
            "/api/v1/developer/users",
            &json!({"first_name": "Ada", "last_name": "Conformance", "user_email": "ada@example.com"}),
        )
        .await
        .unwrap(),
    );
    ids.0.insert("users", id(&user));
    ids.0.insert("doors", DOOR_IDS[0].to_string());
    let devices = data(call(api, &Method::GET, "/api/v1/developer/devices", None).await);
    ids.0.insert("devices", id(&devices[0][1]));
    let dev = "/api/v1/developer";
    for (key, path, body) in [
        ("user_groups", "user_groups", json!({"name": "Members"})),
        (
            "visitors",
            "visitors",
            json!({"first_name": "Vic", "last_name": "Visitor", "start_time": 1_700_000_000u64, "end_time": 4_000_000_000u64, "visit_reason": "Business"}),
        ),
        (
            "schedules",
            "access_policies/schedules",
            json!({"name": "Office hours", "week_schedule": {}}),
        ),
        (
            "holiday_groups",
            "access_policies/holiday_groups",
            json!({"name": "Holidays", "holidays": []}),
        ),
        (
            "door_groups",
            "door_groups",
            json!({"group_name": "Lobby", "resources": [DOOR_IDS[0]]}),
        ),
        (
            "webhooks",
            "webhooks/endpoints",
            json!({"name": "hook", "endpoint": "https://127.0.0.1:1/setup", "events": ["access.door.unlock"]}),
        ),
    ] {
        let v = data(api.json(Method::POST, &format!("{dev}/{path}"), &body).await.unwrap());
        ids.0.insert(key, id(&v));
    }
    let policy = json!({"name": "Members", "resources": [{"id": DOOR_IDS[0], "type": "door"}], "schedule_id": ids.get("schedules")});
    ids.0.insert(
        "access_policies",
        id(&data(
            api.json(Method::POST, &format!("{dev}/access_policies"), &policy)
                .await
                .unwrap(),
        )),
    );
    let session = data(
        api.json(
            Method::POST,
            &format!("{dev}/credentials/nfc_cards/sessions"),
            &json!({"device_id": ids.get("devices")}),
        )
        .await
        .unwrap(),
    );
    ids.0.insert(
        "nfc_sessions",
        session["session_id"].as_str().expect("session_id").to_string(),
    );
    let csv = b"nfc_id,token,alias\n100001,3ee0c4e1c4e1c4e1c4e1c4e1c4e1c4e1,Spare\n100002,4ff1d5f2d5f2d5f2d5f2d5f2d5f2d5f2,Guest\n";
    let cards = data(
        api.upload(&format!("{dev}/credentials/nfc_cards/import"), "file", "cards.csv", csv)
            .await
            .unwrap(),
    );
    ids.0
        .insert("nfc_tokens", cards[0]["token"].as_str().expect("token").to_string());
    ids.0
        .insert("visitor_card", cards[1]["token"].as_str().expect("token").to_string());
    data(
        api.json(
            Method::POST,
            &format!("{dev}/credentials/touch_passes"),
            &json!({"count": 3}),
        )
        .await
        .unwrap(),
    );
    let passes = data(call(api, &Method::GET, &format!("{dev}/credentials/touch_passes"), None).await);
    ids.0.insert("touch_passes", id(&passes[0]));
    data(
        api.json(
            Method::PUT,
            &format!("{dev}/users/{}/license_plates", ids.get("users")),
            &json!(["ABC123"]),
        )
        .await
        .unwrap(),
    );
    let user = data(call(api, &Method::GET, &format!("{dev}/users/{}", ids.get("users")), None).await);
    ids.0.insert("license_plates", id(&user["license_plates"][0]));
    data(
        api.json(
            Method::PUT,
            &format!("{dev}/visitors/{}/license_plates", ids.get("visitors")),
            &json!(["VIS-42"]),
        )
        .await
        .unwrap(),
    );
    let visitor = data(
        call(
            api,
            &Method::GET,
            &format!("{dev}/visitors/{}", ids.get("visitors")),
            None,
        )
        .await,
    );
    ids.0.insert("visitor_plates", id(&visitor["license_plates"][0]));
    let up = api
        .upload(
            &format!("{dev}/users/{}/avatar", ids.get("users")),
            "file",
            "a.png",
            b"\x89PNG\r\n\x1a\nconformance",
        )
        .await
        .unwrap();
    assert_eq!(up.status, StatusCode::OK, "{}", String::from_utf8_lossy(&up.body));
    let user = data(call(api, &Method::GET, &format!("{dev}/users/{}", ids.get("users")), None).await);
    let avatar = user["avatar_relative_path"].as_str().expect("avatar path");
    ids.0.insert("static", avatar.trim_start_matches('/').to_string());
    data(
        api.json(Method::PUT, &format!("{dev}/doors/{}/unlock", DOOR_IDS[0]), &json!({}))
            .await
            .unwrap(),
    );
    let logs = data(
        api.json(Method::POST, &format!("{dev}/system/logs"), &json!({"topic": "all"}))
            .await
            .unwrap(),
    );
    ids.0.insert(
        "log_resources",
        logs["hits"][0]["_id"].as_str().unwrap_or("none").to_string(),
    );
    ids
}

/// Deletes last (the rest need what they delete), and the event stream
/// (a WebSocket, tested in `keepalive.rs` and `events.rs`) not here.
fn order(mut ops: Vec<Op>) -> Vec<Op> {
    ops.retain(|o| o.id != "fetchNotifications");
    // Deletes last, a sub-resource's before its owner's.
    ops.sort_by_key(|o| {
        let depth = o.template.matches('/').count();
        (
            o.method == Method::DELETE,
            std::cmp::Reverse(if o.method == Method::DELETE { depth } else { 0 }),
            o.id.clone(),
        )
    });
    // What others use goes after them: policies use schedules, schedules
    // holiday groups.
    for last in ["deleteSchedule", "deleteHolidayGroup"] {
        if let Some(i) = ops.iter().position(|o| o.id == last) {
            let op = ops.remove(i);
            ops.push(op);
        }
    }
    ops
}

#[tokio::test]
async fn every_operation_answers_as_the_published_description_says() {
    let mut spec: Value = serde_json::from_str(SPEC).unwrap();
    follow_the_samples(&mut spec);
    let ops = order(operations(&spec));
    assert_eq!(ops.len() + 1, 107, "the description has 107 operations");
    let stack = Stack::start().await.unwrap();
    let api = stack.api();
    let ids = setup(&api).await;
    let anonymous = stack.api_with_token("");
    let errors = validator(&spec, &error_schema());
    let mut failures = BTreeMap::new();

    for op in &ops {
        let path = fill(&op.template, &ids, None);
        let body = if !op.multipart.is_empty()
            || op.method == Method::GET
            || op.method == Method::DELETE && op.example.is_none()
        {
            None
        } else {
            body_for(op, &ids).or(Some(json!({})))
        };
        let r = invoke(&api, op, &path, body.as_ref()).await;
        let text = String::from_utf8_lossy(&r.body).to_string();
        let problem = match &op.content {
            _ if r.status != StatusCode::OK => Some(format!("{} {text}", r.status)),
            Some((ct, Some(schema))) if ct == "application/json" => {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let errs: Vec<String> = validator(&spec, schema)
                    .iter_errors(&v)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                if v["code"] != "SUCCESS" {
                    Some(format!("code {} in {text}", v["code"]))
                } else if !errs.is_empty() {
                    Some(errs.join("; "))
                } else {
                    None
                }
            }
            Some((ct, _)) => {
                let got = r
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                (!got.starts_with(ct.as_str())).then(|| format!("content-type {got:?}, the description says {ct:?}"))
            }
            None => None,
        };
        if let Some(p) = problem {
            failures.insert(format!("{} {} ({})", op.method, op.template, op.id), p);
        }

        // The errors: no token; an unknown id; a body missing what it requires.
        let r = invoke(&anonymous, op, &path, body.as_ref()).await;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status != StatusCode::UNAUTHORIZED || !errors.is_valid(&v) {
            failures.insert(
                format!("{} {} ({}) without a token", op.method, op.template, op.id),
                format!("{} {v}", r.status),
            );
        }
        let mut wrong = Vec::new();
        if op.template.contains('{') {
            wrong.push((
                fill(&op.template, &ids, Some("00000000-0000-4000-8000-000000000000")),
                body.clone(),
                "an unknown id",
            ));
        }
        if op.requires_fields {
            wrong.push((path.clone(), Some(json!({})), "no required field"));
        }
        for (path, body, what) in wrong {
            let r = invoke(&api, op, &path, body.as_ref()).await;
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let refused = r.status.is_client_error() && errors.is_valid(&v);
            if !refused {
                failures.insert(
                    format!("{} {} ({}) with {what}", op.method, op.template, op.id),
                    format!("{} {v}", r.status),
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} operations do not conform:\n{}",
        failures.len(),
        ops.len(),
        failures
            .iter()
            .map(|(k, v)| format!("  {k}: {}", v.chars().take(300).collect::<String>()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stack.shutdown().await.unwrap();
}
