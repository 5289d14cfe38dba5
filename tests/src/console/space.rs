//! Doors, door groups, access policies, schedules, holiday groups, devices
//! and webhook endpoints.

use http::StatusCode;
use serde_json::{json, Value};

use super::reply::{err, invalid, not_found, ok, s, Reply};
use super::state::Inner;

/// Generic `POST` for the named collections: `name` required, fields kept.
pub fn create_named(db: &mut Inner, collection: &str, body: &Value, defaults: Value) -> Reply {
    // Door groups take `group_name` in the spec (some clients send `name`).
    let name = match (collection, s(body, "group_name")) {
        ("door_groups", g) if !g.is_empty() => g,
        _ => s(body, "name"),
    }
    .to_string();
    if name.is_empty() {
        return Err(invalid("name is required"));
    }
    if db.collection(collection).values().any(|v| s(v, "name") == name) {
        let (code, msg) = match collection {
            "schedules" => (
                "CODE_ACCESS_POLICY_SCHEDULE_NAME_EXIST",
                "The provided schedule name already exists.",
            ),
            "holiday_groups" => (
                "CODE_ACCESS_POLICY_HOLIDAY_GROUP_NAME_EXIST",
                "The provided holiday group name already exists.",
            ),
            _ => ("CODE_USER_NAME_DUPLICATED", "The provided name already exists."),
        };
        return Err(err(StatusCode::BAD_REQUEST, code, msg));
    }
    check_refs(db, collection, body)?;
    let body = &with_resources(db, body)?;
    let id = db.new_id();
    let mut obj = defaults;
    merge(&mut obj, body);
    obj["id"] = json!(id);
    obj["name"] = json!(name);
    if let Some(o) = obj.as_object_mut() {
        o.remove("group_name");
    }
    shape(db, collection, &mut obj);
    db.collection(collection).insert(id, obj.clone());
    ok(obj)
}

const WEEK: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

/// Fills the fields a console derives or always sends, after a create or
/// an update: a group's `full_name`, a schedule's seven days and its
/// holiday group, a holiday group's description and template.
pub fn shape(db: &mut Inner, collection: &str, obj: &mut Value) {
    let set_default = |obj: &mut Value, k: &str, v: Value| {
        if obj.get(k).is_none_or(Value::is_null) {
            obj[k] = v;
        }
    };
    match collection {
        "user_groups" => obj["full_name"] = obj["name"].clone(),
        "holiday_groups" => {
            set_default(obj, "description", json!(""));
            set_default(obj, "template_name", json!(""));
            set_default(obj, "holidays", json!([]));
        }
        "schedules" => {
            set_default(obj, "week_schedule", json!({}));
            for day in WEEK {
                set_default(&mut obj["week_schedule"], day, json!([]));
            }
            set_default(obj, "holiday_group_id", json!(""));
            set_default(obj, "holiday_schedule", json!([]));
            let group = db.collection("holiday_groups").get(s(obj, "holiday_group_id")).cloned();
            match group {
                Some(g) => obj["holiday_group"] = g,
                None => {
                    obj.as_object_mut().map(|o| o.remove("holiday_group"));
                }
            }
        }
        _ => {}
    }
}

/// `GET /access_policies/holiday_groups`: summaries, with their holiday count.
pub fn list_holiday_groups(db: &mut Inner) -> Reply {
    ok(Value::Array(
        db.collection("holiday_groups")
            .values()
            .map(|g| {
                json!({"id": g["id"], "name": g["name"], "description": g["description"], "is_default": g["is_default"],
                       "count": g["holidays"].as_array().map_or(0, Vec::len)})
            })
            .collect(),
    ))
}

/// The schedule a policy names, and the holiday group a schedule names,
/// must exist (the guide's `…_NOT_FOUND` codes).
fn check_refs(db: &mut Inner, collection: &str, body: &Value) -> Result<(), http::Response<super::reply::SimBody>> {
    let missing = |db: &mut Inner, c: &str, id: &str| !id.is_empty() && !db.collection(c).contains_key(id);
    if collection == "access_policies" && missing(db, "schedules", s(body, "schedule_id")) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_ACCESS_POLICY_SCHEDULE_NOT_FOUND",
            "The requested schedule could not be found.",
        ));
    }
    if collection == "schedules" && missing(db, "holiday_groups", s(body, "holiday_group_id")) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_ACCESS_POLICY_HOLIDAY_GROUP_NOT_FOUND",
            "The requested holiday group could not be found.",
        ));
    }
    Ok(())
}

/// Generic `PUT`: merges fields; answers the object.
pub fn update(db: &mut Inner, collection: &str, id: &str, body: &Value) -> Reply {
    check_refs(db, collection, body)?;
    let body = &with_resources(db, body)?;
    let obj = db
        .collection(collection)
        .get_mut(id)
        .ok_or_else(|| not_found(collection.trim_end_matches('s')))?;
    merge(obj, body);
    if let Some(n) = body.get("group_name") {
        obj["name"] = n.clone();
        obj.as_object_mut().map(|o| o.remove("group_name"));
    }
    let mut obj = obj.clone();
    shape(db, collection, &mut obj);
    db.collection(collection).insert(id.to_string(), obj.clone());
    ok(obj)
}

/// Generic `GET` of one object.
pub fn get(db: &mut Inner, collection: &str, id: &str) -> Reply {
    ok(db
        .collection(collection)
        .get(id)
        .cloned()
        .ok_or_else(|| not_found(collection.trim_end_matches('s')))?)
}

/// Generic `GET` of a whole collection (unpaginated).
pub fn list(db: &mut Inner, collection: &str) -> Reply {
    ok(Value::Array(db.collection(collection).values().cloned().collect()))
}

/// Generic `DELETE`; a schedule a policy uses, or a holiday group a
/// schedule uses, cannot be deleted (the guide's `…_CAN_NOT_DELETE`).
pub fn delete(db: &mut Inner, collection: &str, id: &str) -> Reply {
    let used_by = |db: &mut Inner, c: &str, field: &str| db.collection(c).values().any(|v| v[field] == json!(id));
    if collection == "schedules" && used_by(db, "access_policies", "schedule_id") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_ACCESS_POLICY_SCHEDULE_CAN_NOT_DELETE",
            "The schedule could not be deleted: an access policy uses it.",
        ));
    }
    if collection == "holiday_groups" && used_by(db, "schedules", "holiday_group_id") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_ACCESS_POLICY_HOLIDAY_GROUP_CAN_NOT_DELETE",
            "The holiday group could not be deleted: a schedule uses it.",
        ));
    }
    db.collection(collection)
        .remove(id)
        .ok_or_else(|| not_found(collection.trim_end_matches('s')))?;
    if collection == "access_policies" {
        for c in ["users", "user_groups", "visitors"] {
            for v in db.collection(c).values_mut() {
                if let Some(ids) = v["access_policy_ids"].as_array_mut() {
                    ids.retain(|p| p != id);
                }
            }
        }
    }
    // What each delete answers, per the description: `null` for users,
    // groups and webhook endpoints, "success" for the rest.
    ok(if ["users", "user_groups", "webhooks"].contains(&collection) {
        json!(null)
    } else {
        json!("success")
    })
}

fn merge(obj: &mut Value, body: &Value) {
    if let (Some(o), Some(b)) = (obj.as_object_mut(), body.as_object()) {
        for (k, v) in b {
            if k != "id" {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Resources must exist. They come as `[{id, type: door|door_group}]`
/// (policies) or as bare door ids (door groups, per the spec); both are
/// stored in the object form the API answers with.
fn with_resources(db: &mut Inner, body: &Value) -> Result<Value, http::Response<super::reply::SimBody>> {
    let Some(resources) = body.get("resources") else {
        return Ok(body.clone());
    };
    let list = resources
        .as_array()
        .ok_or_else(|| invalid("resources must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let (id, ty) = match r {
            Value::String(id) => (id.as_str(), "door"),
            _ => (s(r, "id"), s(r, "type")),
        };
        let collection = match ty {
            "door" => "doors",
            "door_group" => "door_groups",
            _ => return Err(invalid("resource type must be door or door_group")),
        };
        let name = db.collection(collection).get(id).map(|o| o["name"].clone());
        let Some(name) = name else {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "CODE_NOT_EXISTS",
                &format!("The {ty} {id} does not exist."),
            ));
        };
        out.push(json!({"id": id, "type": ty, "name": name}));
    }
    let mut body = body.clone();
    body["resources"] = Value::Array(out);
    Ok(body)
}

/// `PUT /doors/{id}/unlock`: a remote unlock, decided by the door's rules
/// (`door`); refused with `CODE_OPERATION_FORBIDDEN` when they keep it
/// shut. The outcome (events, webhooks) is for the caller to send, refused
/// or not.
pub fn unlock(
    db: &mut Inner,
    id: &str,
    body: &Value,
) -> Result<(Reply, super::door::Outcome), http::Response<super::reply::SimBody>> {
    if body.get("actor_id").is_some() != body.get("actor_name").is_some() {
        return Err(invalid("actor_id and actor_name must be given together"));
    }
    let presented = super::door::Presented::Remote {
        actor_id: body["actor_id"].as_str().unwrap_or("api").to_string(),
        actor_name: body["actor_name"].as_str().unwrap_or("API").to_string(),
        extra: body.get("extra").cloned().unwrap_or(Value::Null),
    };
    let door = db
        .collection("doors")
        .get(id)
        .cloned()
        .ok_or_else(|| not_found("door"))?;
    let mut outcome =
        super::door::attempt(db, id, &presented, super::state::now_secs()).ok_or_else(|| not_found("door"))?;
    if !outcome.granted {
        let refused = err(
            StatusCode::BAD_REQUEST,
            "CODE_OPERATION_FORBIDDEN",
            &format!("The requested operation is not allowed: {}.", outcome.reason),
        );
        return Ok((Err(refused), outcome));
    }
    let mut data = door.clone();
    if let Some(o) = data.as_object_mut() {
        o.insert("unique_id".into(), json!(id));
        for k in [
            "id",
            "hub_id",
            "door_lock_relay_status",
            "door_position_status",
            "camera_resource_ids",
            "is_bind_hub",
            "floor_id",
            "type",
        ] {
            o.remove(k);
        }
    }
    // The documented WebSocket event of a remote unlock comes first.
    outcome.events.insert(
        0,
        json!({
            "event": "access.data.device.remote_unlock", "receiver_id": "",
            "event_object_id": door["hub_id"], "save_to_history": false, "data": data,
        }),
    );
    Ok((ok(json!("success")), outcome))
}

/// `GET`/`PUT /doors/{id}/lock_rule`; `reset` returns the door to its
/// schedule (a `GET` then says `schedule`). A change is streamed as the
/// door's `access.data.v2.location.update`.
pub fn lock_rule(
    db: &mut Inner,
    id: &str,
    set: Option<&Value>,
) -> Result<(Reply, Option<Value>), http::Response<super::reply::SimBody>> {
    let Some(door) = db.collection("doors").get(id).cloned() else {
        return Err(not_found("door"));
    };
    match set {
        None => Ok((
            ok(db
                .lock_rules
                .get(id)
                .cloned()
                .unwrap_or(json!({"type": "schedule", "ended_time": 0}))),
            None,
        )),
        Some(body) => {
            let ty = s(body, "type");
            if !["keep_lock", "keep_unlock", "custom", "reset", "lock_early", "lock_now"].contains(&ty) {
                return Err(invalid(
                    "type must be keep_lock, keep_unlock, custom, reset, lock_early or lock_now",
                ));
            }
            let minutes = body["interval"].as_i64().unwrap_or(0);
            if ty == "custom" && minutes <= 0 {
                return Err(invalid("interval (minutes) is required for custom"));
            }
            let ended = if ty == "custom" {
                super::state::now_secs() + minutes * 60
            } else {
                0
            };
            if ty == "reset" {
                db.lock_rules.remove(id);
            } else {
                db.lock_rules
                    .insert(id.to_string(), json!({"type": ty, "ended_time": ended}));
            }
            let lock = if matches!(ty, "keep_unlock" | "custom") {
                "unlocked"
            } else {
                "locked"
            };
            let event = super::door::location_update(&door, lock, db);
            Ok((ok(json!("success")), Some(event)))
        }
    }
}

/// `GET`/`PUT /doors/settings/emergency`; a change is streamed as
/// `access.data.setting.update`.
pub fn emergency(
    db: &mut Inner,
    set: Option<&Value>,
) -> Result<(Reply, Option<Value>), http::Response<super::reply::SimBody>> {
    let Some(body) = set else {
        return Ok((ok(db.emergency.clone()), None));
    };
    for k in ["lockdown", "evacuation"] {
        match body.get(k) {
            Some(Value::Bool(b)) => db.emergency[k] = json!(b),
            Some(_) => return Err(invalid(&format!("{k} must be a boolean"))),
            None => {}
        }
    }
    let event = json!({"event": "access.data.setting.update", "receiver_id": "", "event_object_id": "",
                       "save_to_history": false, "data": {"emergency": db.emergency.clone()}});
    Ok((ok(json!("success")), Some(event)))
}

/// `GET /door_groups/topology`.
pub fn topology(db: &mut Inner) -> Reply {
    let doors: Vec<Value> = db
        .collection("doors")
        .values()
        .map(|d| json!({"id": d["id"], "name": d["name"], "type": "door", "is_bind_hub": true}))
        .collect();
    ok(
        json!([{"id": "d5573467-d6b3-4e8f-8e48-8c322b7e1a02", "name": "HQ", "type": "building",
               "resource_topologies": [{"id": "2a6d2ea3-2f3e-4a4e-8e36-1f1b6a3c2b10", "name": "1F", "type": "floor",
                                        "is_bind_hub": true, "resources": doors}]}]),
    )
}

/// Refuses event names a console does not send to webhooks, and an
/// endpoint that is not an http(s) URL.
fn check_webhook(body: &Value) -> Result<(), http::Response<super::reply::SimBody>> {
    for e in body["events"].as_array().into_iter().flatten() {
        let name = e.as_str().unwrap_or("");
        if !super::webhooks::EVENTS.contains(&name) {
            return Err(invalid(&format!(
                "events: {name:?} is not a webhook event (one of {})",
                super::webhooks::EVENTS.join(", ")
            )));
        }
    }
    if let Some(url) = body.get("endpoint").and_then(Value::as_str) {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.parse::<http::Uri>().is_err() {
            return Err(invalid("endpoint must be an https:// (or http://) URL"));
        }
    }
    Ok(())
}

/// `PUT /webhooks/endpoints/{id}`.
pub fn update_webhook(db: &mut Inner, id: &str, body: &Value) -> Reply {
    check_webhook(body)?;
    update(db, "webhooks", id, body)
}

/// `POST /webhooks/endpoints`: requires `endpoint`, `name`, `events`; adds a secret.
pub fn add_webhook(db: &mut Inner, body: &Value) -> Reply {
    if s(body, "endpoint").is_empty() || s(body, "name").is_empty() || !body["events"].is_array() {
        return Err(invalid("endpoint, name and events are required"));
    }
    check_webhook(body)?;
    if db
        .collection("webhooks")
        .values()
        .any(|w| w["endpoint"] == body["endpoint"])
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_DEVICE_WEBHOOK_ENDPOINT_DUPLICATED",
            "The provided endpoint already exists.",
        ));
    }
    let secret = format!("{:016x}", super::state::random_u64());
    create_named(db, "webhooks", body, json!({"headers": {}, "secret": secret}))
}
