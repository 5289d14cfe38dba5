//! Devices in the shape of the published description and the official
//! samples (`is_online`, `is_adopted`, `is_managed`, `connected_uah_id`,
//! `capabilities`…): a hub and a G2 Pro reader per seeded door; their
//! access-method settings; the doorbell; UniFi Identity resources; and the
//! video resource behind a system-log entry.

use http::StatusCode;
use serde_json::{json, Value};

use super::reply::{err, invalid, not_found, ok, Reply};
use super::state::{Inner, DOOR_IDS, HUB_ID};

/// The reader at door `i` (a G2 Pro, wired to that door's hub).
pub fn reader_id(i: usize) -> String {
    format!("58d61f3096{i:02x}")
}

/// The seeded devices: per door, its hub then its reader.
pub fn seed() -> Vec<Value> {
    let mut out = Vec::new();
    for (i, door) in DOOR_IDS.iter().enumerate() {
        let hub = format!("{HUB_ID}{i}");
        out.push(json!({
            "id": hub, "name": format!("UA-HUB-DOOR-{}", &hub[hub.len() - 4..].to_uppercase()), "alias": "",
            "type": "UAH-DOOR", "capabilities": ["unlock_failure_limit", "emergency_settings", "is_hub", "pin_code"],
            "connected_uah_id": "", "is_adopted": true, "is_connected": true, "is_managed": true,
            "is_online": true, "location_id": door,
        }));
        let reader = reader_id(i);
        out.push(json!({
            "id": reader, "name": format!("UA G2 Pro {}", &reader[reader.len() - 4..]), "alias": "",
            "type": "UA-G2-PRO", "capabilities": ["pin_code", "nfc", "face", "qr_code", "is_reader", "support_reboot"],
            "connected_uah_id": hub, "is_adopted": true, "is_connected": true, "is_managed": true,
            "is_online": true, "location_id": door,
        }));
    }
    out
}

/// `GET /devices`: an array per door (location), as the console groups them.
pub fn list(db: &mut Inner) -> Reply {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for d in db.collection("devices").values() {
        let loc = d["location_id"].as_str().unwrap_or("").to_string();
        match groups.iter_mut().find(|(l, _)| *l == loc) {
            Some((_, g)) => g.push(d.clone()),
            None => groups.push((loc, vec![d.clone()])),
        }
    }
    ok(Value::Array(groups.into_iter().map(|(_, g)| Value::Array(g)).collect()))
}

fn device_not_found() -> http::Response<super::reply::SimBody> {
    err(
        StatusCode::BAD_REQUEST,
        "CODE_DEVICE_DEVICE_NOT_FOUND",
        "The device was not found.",
    )
}

/// The access-method settings a device starts with.
fn default_settings() -> Value {
    let on = json!({"enabled": "true"});
    json!({"nfc": on, "bt_tap": on, "bt_button": on, "bt_shake": {"enabled": "false"},
           "mobile_wave": {"enabled": "false"}, "pin_code": {"enabled": "true", "pin_code_shuffle": "false"},
           "face": {"enabled": "false", "anti_spoofing_level": "medium", "detect_distance": "medium"},
           "wave": {"enabled": "false"}, "qr_code": on, "touch_pass": on})
}

/// `GET`/`PUT /devices/{id}/settings`; a change is returned as the
/// `access.data.v2.device.update` event a console streams.
pub fn settings(
    db: &mut Inner,
    id: &str,
    set: Option<&Value>,
) -> Result<(Reply, Option<Value>), http::Response<super::reply::SimBody>> {
    let device = db.collection("devices").get(id).cloned().ok_or_else(device_not_found)?;
    let current = db
        .collection("device_settings")
        .get(id)
        .cloned()
        .unwrap_or_else(default_settings);
    let Some(body) = set else {
        return Ok((ok(json!({"device_id": id, "access_methods": current})), None));
    };
    let Some(changes) = body.get("access_methods").or(Some(body)).and_then(Value::as_object) else {
        return Err(invalid("the body is an object of access methods"));
    };
    let mut next = current;
    for (method, v) in changes {
        let Some(slot) = next.get_mut(method) else {
            return Err(invalid(&format!("{method:?} is not an access method")));
        };
        let Some(fields) = v.as_object() else {
            return Err(invalid(&format!("{method} must be an object")));
        };
        for (k, x) in fields {
            match (k.as_str(), x.as_str()) {
                ("enabled" | "pin_code_shuffle", Some("true" | "false")) => slot[k] = x.clone(),
                ("anti_spoofing_level", Some("high" | "medium" | "no")) => slot[k] = x.clone(),
                ("detect_distance", Some("near" | "medium" | "far")) => slot[k] = x.clone(),
                _ => return Err(invalid(&format!("{method}.{k}: {x} is not a valid value"))),
            }
        }
    }
    db.collection("device_settings").insert(id.to_string(), next);
    let event = json!({
        "event": "access.data.v2.device.update", "receiver_id": "", "event_object_id": id, "save_to_history": false,
        "data": {"id": id, "name": device["name"], "alias": device["alias"], "online": device["is_online"],
                 "device_type": device["type"], "category": [if device["type"] == "UAH-DOOR" { "hub" } else { "reader" }]},
        "meta": {"object_type": "device", "target_field": ["access_method", "settings"], "all_field": false, "id": id, "source": ""},
    });
    Ok((ok(json!("success")), Some(event)))
}

/// `POST /devices/{id}/doorbell` `{room_name}`: the `access.remote_view`
/// event a ring sends on the WebSocket.
pub fn doorbell(
    db: &mut Inner,
    id: &str,
    body: &Value,
) -> Result<(Reply, Value), http::Response<super::reply::SimBody>> {
    let device = db.collection("devices").get(id).cloned().ok_or_else(device_not_found)?;
    if body.get("room_name").is_none_or(|r| !r.is_string()) {
        return Err(invalid("room_name is required"));
    }
    let door = db
        .collection("doors")
        .get(device["location_id"].as_str().unwrap_or(""))
        .cloned()
        .unwrap_or_default();
    let request_id = format!(
        "{:032x}",
        u128::from(super::state::random_u64()) << 64 | u128::from(super::state::random_u64())
    );
    let event = json!({
        "event": "access.remote_view", "receiver_id": "", "event_object_id": door["id"], "save_to_history": false,
        "data": {"channel": db.new_id(), "token": db.new_id(), "device_id": id, "device_type": device["type"],
                 "device_name": device["name"], "door_name": door["name"], "controller_id": device["connected_uah_id"],
                 "floor_name": "1F", "request_id": request_id, "clear_request_id": "", "in_or_out": "in",
                 "create_time": super::state::now_secs(), "reason_code": 0, "door_guard_ids": [],
                 "connected_uah_id": device["connected_uah_id"], "room_id": format!("WR-{id}-{}", body["room_name"].as_str().unwrap_or("")),
                 "host_device_mac": id.to_uppercase()},
    });
    db.log(
        "door_openings",
        "access.doorbell.incoming",
        &format!("Doorbell at {}", door["name"].as_str().unwrap_or("")),
        door["id"].as_str().unwrap_or(""),
    );
    Ok((ok(json!("success")), event))
}

/// The UniFi Identity resources a site offers.
fn identity_resources() -> Value {
    json!({"ev_station": [{"id": "ev-1", "name": "Car park charger", "deleted": false}],
           "vpn": [{"id": "vpn-1", "name": "Office VPN", "deleted": false}],
           "wifi": [{"id": "wifi-1", "name": "Members Wi-Fi", "deleted": false}]})
}

/// `GET /users/identity/assignments`: what can be assigned.
pub fn identity_available() -> Reply {
    ok(identity_resources())
}

/// `POST /users/identity/invitations`: `[{email, user_id}]`.
pub fn identity_invite(db: &mut Inner, body: &Value) -> Reply {
    let Some(list) = body.as_array().filter(|a| !a.is_empty()) else {
        return Err(invalid("the body is an array of {email, user_id}"));
    };
    for inv in list {
        let user = inv["user_id"].as_str().unwrap_or("");
        if !db.collection("users").contains_key(user) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "CODE_USER_WORKER_NOT_EXISTS",
                "The requested user does not exist.",
            ));
        }
        if !inv["email"].as_str().is_some_and(|e| e.contains('@')) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "CODE_USER_EMAIL_ERROR",
                "The provided email format is invalid.",
            ));
        }
    }
    ok(json!([]))
}

/// `GET`/`POST /{users|user_groups}/{id}/identity/assignments`.
pub fn identity_assign(db: &mut Inner, collection: &str, id: &str, set: Option<&Value>) -> Reply {
    if !db.collection(collection).contains_key(id) {
        return Err(not_found("object"));
    }
    let key = format!("{collection}/{id}");
    let mut current = db
        .collection("identity")
        .get(&key)
        .cloned()
        .unwrap_or_else(|| json!({"ev_station": [], "vpn": [], "wifi": []}));
    let Some(body) = set else {
        return ok(current);
    };
    let kind = body["resource_type"].as_str().unwrap_or("");
    let ids = body["resource_ids"]
        .as_array()
        .ok_or_else(|| invalid("resource_type and resource_ids are required"))?;
    let available = identity_resources();
    let Some(offered) = available[kind].as_array() else {
        return Err(invalid("resource_type must be ev_station, vpn or wifi"));
    };
    let mut chosen = Vec::new();
    for rid in ids {
        let r = offered
            .iter()
            .find(|r| r["id"] == *rid)
            .ok_or_else(|| not_found("identity resource"))?;
        chosen.push(r.clone());
    }
    current[kind] = Value::Array(chosen);
    db.collection("identity").insert(key, current);
    ok(Value::Null)
}

/// `GET /system/logs/resource/{id}`: the video behind a log entry.
pub fn log_resource(db: &mut Inner, id: &str) -> Reply {
    let entry = db
        .logs
        .iter()
        .find(|l| l["_id"] == json!(id))
        .cloned()
        .ok_or_else(|| not_found("log resource"))?;
    let at = entry["@timestamp"].clone();
    ok(json!({"created_at": at, "updated_at": at, "video_record": "", "video_record_thumbnail": ""}))
}
