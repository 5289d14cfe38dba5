//! Credentials beyond PINs: NFC cards (enrolment sessions, the card
//! registry by token, CSV import), Touch Passes and license plates, in the
//! shapes of the published description.
//!
//! NFC cards live in a registry keyed by token (`nfc_cards`); a holder's
//! `nfc_cards` list refers to them. An enrolment session reads a card at
//! the named device: the simulated reader presents a fresh card at once
//! (a real one waits for a tap), so polling the session finds it.

use http::StatusCode;
use serde_json::{json, Value};

use super::reply::{err, invalid, not_found, ok, page, paging, query_pairs, s, Reply};
use super::state::Inner;

fn holder_type(collection: &str) -> &'static str {
    if collection == "visitors" {
        "VISITOR"
    } else {
        "USER"
    }
}

/// A registry entry for a new card.
fn card(token: &str, display_id: &str) -> Value {
    json!({"token": token, "display_id": display_id, "alias": "", "note": "", "status": "pending",
           "card_type": "UA Card", "user_id": "", "user_type": "USER",
           "user": {"id": "", "name": "", "first_name": "", "last_name": "", "avatar": ""}})
}

fn fresh_token(db: &mut Inner) -> (String, String) {
    let r = super::state::random_u64();
    let token = format!("{:016x}{:016x}", r, r.rotate_left(17) ^ 0x5bd1_e995);
    let display = format!("{:06}", r % 1_000_000);
    let _ = db;
    (token, display)
}

/// `POST /credentials/nfc_cards/sessions`: `{device_id}` → `{session_id}`.
pub fn start_session(db: &mut Inner, body: &Value) -> Reply {
    let device = s(body, "device_id");
    if device.is_empty() {
        return Err(invalid("device_id is required"));
    }
    if !db.collection("devices").contains_key(device) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_DEVICE_DEVICE_NOT_FOUND",
            "The device was not found.",
        ));
    }
    let (token, display) = fresh_token(db);
    db.collection("nfc_cards").insert(token.clone(), card(&token, &display));
    let session = db.new_id();
    db.collection("nfc_sessions").insert(
        session.clone(),
        json!({"id": session, "device_id": device, "card_id": display, "token": token}),
    );
    ok(json!({"session_id": session}))
}

fn session_not_found() -> http::Response<super::reply::SimBody> {
    err(
        StatusCode::BAD_REQUEST,
        "CODE_CREDS_NFC_READ_SESSION_NOT_FOUND",
        "Failed to obtain the NFC read session.",
    )
}

/// `GET /credentials/nfc_cards/sessions/{id}`: the card read, `{card_id, token}`.
pub fn session(db: &mut Inner, id: &str) -> Reply {
    let sess = db.collection("nfc_sessions").get(id).ok_or_else(session_not_found)?;
    ok(json!({"card_id": sess["card_id"], "token": sess["token"]}))
}

/// `DELETE /credentials/nfc_cards/sessions/{id}`.
pub fn end_session(db: &mut Inner, id: &str) -> Reply {
    db.collection("nfc_sessions").remove(id).ok_or_else(session_not_found)?;
    ok(json!("success"))
}

fn card_not_found() -> http::Response<super::reply::SimBody> {
    err(
        StatusCode::BAD_REQUEST,
        "CODE_CREDS_NFC_CARD_INVALID",
        "The NFC card was not found.",
    )
}

/// `GET /credentials/nfc_cards/tokens/{token}`.
pub fn get_card(db: &mut Inner, token: &str) -> Reply {
    ok(db
        .collection("nfc_cards")
        .get(token)
        .cloned()
        .ok_or_else(card_not_found)?)
}

/// `PUT /credentials/nfc_cards/tokens/{token}`: `alias`, `note`.
pub fn update_card(db: &mut Inner, token: &str, body: &Value) -> Reply {
    let c = db.collection("nfc_cards").get_mut(token).ok_or_else(card_not_found)?;
    for key in ["alias", "note"] {
        match body.get(key) {
            Some(Value::String(v)) => c[key] = json!(v),
            Some(Value::Null) | None => {}
            Some(_) => return Err(invalid(&format!("{key} must be a string"))),
        }
    }
    ok(json!("success"))
}

/// `DELETE /credentials/nfc_cards/tokens/{token}`: refused while bound.
pub fn delete_card(db: &mut Inner, token: &str) -> Reply {
    let c = db.collection("nfc_cards").get(token).ok_or_else(card_not_found)?;
    if !s(c, "user_id").is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_CREDS_NFC_HAS_BIND_USER",
            "The NFC card is already registered and assigned to another user.",
        ));
    }
    db.collection("nfc_cards").remove(token);
    ok(json!("success"))
}

/// `GET /credentials/nfc_cards/tokens` (paginated).
pub fn list_cards(db: &mut Inner, query: Option<&str>) -> Reply {
    let (num, size) = paging(query)?;
    page(db.collection("nfc_cards").values().cloned().collect(), num, size)
}

/// `POST /credentials/nfc_cards/import`: a CSV of `nfc_id,token[,alias]`.
pub fn import(db: &mut Inner, csv: &str) -> Reply {
    let mut out = Vec::new();
    for line in csv.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f[0].eq_ignore_ascii_case("nfc_id") {
            continue;
        }
        let (Some(nfc_id), Some(token)) = (f.first(), f.get(1)) else {
            return Err(invalid("each line is nfc_id,token[,alias]"));
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(&format!("{token:?} is not a card token (hex)")));
        }
        let alias = f.get(2).copied().unwrap_or("");
        let mut c = card(token, nfc_id);
        c["alias"] = json!(alias);
        db.collection("nfc_cards").entry(token.to_string()).or_insert(c);
        out.push(json!({"nfc_id": nfc_id, "token": token, "alias": alias}));
    }
    if out.is_empty() {
        return Err(invalid("the file has no cards"));
    }
    ok(Value::Array(out))
}

/// `PUT /{users|visitors}/{id}/nfc_cards` (and `/delete`): binds a card
/// from the registry (registering an unknown token, as a reader would);
/// a card bound to someone else is refused.
pub fn bind(db: &mut Inner, collection: &str, id: &str, body: &Value, remove: bool) -> Reply {
    let token = s(body, "token").to_string();
    if token.is_empty() {
        return Err(invalid("token is required"));
    }
    let holder = db
        .collection(collection)
        .get(id)
        .cloned()
        .ok_or_else(|| not_found("object"))?;
    let entry = db
        .collection("nfc_cards")
        .entry(token.clone())
        .or_insert_with(|| card(&token, &token.chars().take(6).collect::<String>()))
        .clone();
    let bound_to = s(&entry, "user_id");
    if !remove && !bound_to.is_empty() && bound_to != id && !body["force_add"].as_bool().unwrap_or(false) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_CREDS_NFC_HAS_BIND_USER",
            "The NFC card is already registered and assigned to another user.",
        ));
    }
    let display = entry["display_id"].clone();
    let c = db.collection("nfc_cards").get_mut(&token).expect("just inserted");
    if remove {
        c["status"] = json!("pending");
        c["user_id"] = json!("");
        c["user"] = json!({"id": "", "name": "", "first_name": "", "last_name": "", "avatar": ""});
    } else {
        c["status"] = json!("assigned");
        c["user_id"] = json!(id);
        c["user_type"] = json!(holder_type(collection));
        c["user"] = json!({"id": id, "first_name": holder["first_name"], "last_name": holder["last_name"],
                           "name": format!("{} {}", s(&holder, "first_name"), s(&holder, "last_name")), "avatar": ""});
    }
    let obj = db.collection(collection).get_mut(id).expect("checked");
    let cards = obj["nfc_cards"].as_array_mut().expect("nfc_cards is an array");
    cards.retain(|c| c["token"] != json!(token));
    if !remove {
        cards.push(json!({"id": display, "token": token, "type": "ua_card"}));
    }
    ok(Value::Null)
}

/// `PUT /{users|visitors}/{id}/license_plates`: an array of plate numbers.
pub fn add_plates(db: &mut Inner, collection: &str, id: &str, body: &Value) -> Reply {
    let plates: Vec<String> = match body {
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        _ => return Err(invalid("the body is an array of license plate numbers")),
    };
    if !db.collection(collection).contains_key(id) {
        return Err(not_found("object"));
    }
    let ids: Vec<String> = plates.iter().map(|_| db.new_id()).collect();
    let obj = db.collection(collection).get_mut(id).expect("checked");
    let list = obj["license_plates"]
        .as_array_mut()
        .expect("license_plates is an array");
    for (plate, pid) in plates.iter().zip(ids) {
        if !list.iter().any(|p| p["credential"] == json!(plate)) {
            list.push(
                json!({"id": pid, "credential": plate, "credential_type": "license", "credential_status": "active"}),
            );
        }
    }
    ok(Value::Null)
}

/// `DELETE /{users|visitors}/{id}/license_plates/{plate_id}`.
pub fn remove_plate(db: &mut Inner, collection: &str, id: &str, plate: &str) -> Reply {
    let obj = db
        .collection(collection)
        .get_mut(id)
        .ok_or_else(|| not_found("object"))?;
    let list = obj["license_plates"]
        .as_array_mut()
        .expect("license_plates is an array");
    let before = list.len();
    list.retain(|p| p["id"] != json!(plate));
    if list.len() == before {
        return Err(not_found("license plate"));
    }
    ok(Value::Null)
}

fn touch_pass(id: &str, name: &str) -> Value {
    json!({"id": id, "card_id": id.chars().take(8).collect::<String>(), "card_name": name, "status": "INACTIVE",
           "activated_at": {}, "expired_at": {}, "last_activity": "", "bundles": [],
           "user_id": "", "user_name": "", "user_email": "", "user_avatar": "", "user_status": ""})
}

/// `POST /credentials/touch_passes`: `{count}` new passes.
pub fn purchase(db: &mut Inner, body: &Value) -> Reply {
    let n = body["count"]
        .as_u64()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| invalid("count must be 1 to 100"))?;
    let mut out = Vec::new();
    for i in 0..n {
        let id = db.new_id();
        let tp = touch_pass(
            &id,
            &format!("Touch Pass {}", db.collection("touch_passes").len() + 1 + i as usize),
        );
        db.collection("touch_passes").insert(id, tp.clone());
        out.push(tp);
    }
    ok(Value::Array(out))
}

/// `GET /credentials/touch_passes` (paginated), `/search?condition=`, `/assignable`.
pub fn list_passes(db: &mut Inner, query: Option<&str>, filter: &str) -> Reply {
    let needle = query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "condition" || k == "keyword")
        .map(|(_, v)| v.to_lowercase());
    let all: Vec<Value> = db
        .collection("touch_passes")
        .values()
        .filter(|t| filter != "assignable" || s(t, "user_id").is_empty())
        .filter(|t| {
            needle.as_deref().is_none_or(|n| {
                format!("{} {} {}", s(t, "card_name"), s(t, "user_name"), s(t, "user_email"))
                    .to_lowercase()
                    .contains(n)
            })
        })
        .cloned()
        .collect();
    if filter == "page" {
        let (num, size) = paging(query)?;
        page(all, num, size)
    } else {
        ok(Value::Array(all))
    }
}

fn pass_not_found() -> http::Response<super::reply::SimBody> {
    not_found("Touch Pass")
}

/// `GET /credentials/touch_passes/{id}`.
pub fn get_pass(db: &mut Inner, id: &str) -> Reply {
    ok(db
        .collection("touch_passes")
        .get(id)
        .cloned()
        .ok_or_else(pass_not_found)?)
}

/// `PUT /credentials/touch_passes/{id}`: `card_name`, `status`.
pub fn update_pass(db: &mut Inner, id: &str, body: &Value) -> Reply {
    let tp = db.collection("touch_passes").get_mut(id).ok_or_else(pass_not_found)?;
    if let Some(name) = body.get("card_name").and_then(Value::as_str) {
        tp["card_name"] = json!(name);
    }
    if let Some(st) = body.get("status") {
        let valid = ["ACTIVE", "PENDING", "SUSPENDED", "INACTIVE", "EXPIRED"];
        if !st.as_str().is_some_and(|v| valid.contains(&v)) {
            return Err(invalid(&format!("status must be one of {}", valid.join(", "))));
        }
        tp["status"] = st.clone();
    }
    ok(tp.clone())
}

/// `PUT`/`DELETE /users/{user_id}/touch_passes/{id}`: one pass per user.
pub fn assign_pass(db: &mut Inner, user: &str, id: &str, assign: bool) -> Reply {
    let u = db
        .collection("users")
        .get(user)
        .cloned()
        .ok_or_else(|| not_found("user"))?;
    if !db.collection("touch_passes").contains_key(id) {
        return Err(pass_not_found());
    }
    if assign {
        for (other, tp) in db.collection("touch_passes").iter_mut() {
            if other != id && tp["user_id"] == json!(user) {
                tp["user_id"] = json!("");
                tp["status"] = json!("INACTIVE");
            }
        }
    }
    // The user's `touch_pass` is the pass itself (the official samples), or null.
    let shown = if assign {
        db.collection("touch_passes")[id].clone()
    } else {
        Value::Null
    };
    if let Some(u) = db.collection("users").get_mut(user) {
        u["touch_pass"] = shown;
    }
    let tp = db.collection("touch_passes").get_mut(id).expect("checked");
    if assign {
        tp["user_id"] = json!(user);
        tp["user_name"] = json!(format!("{} {}", s(&u, "first_name"), s(&u, "last_name")));
        tp["user_email"] = u["user_email"].clone();
        tp["user_status"] = u["status"].clone();
        tp["status"] = json!("PENDING");
    } else {
        if tp["user_id"] != json!(user) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "CODE_OPERATION_FORBIDDEN",
                "The requested operation is not allowed.",
            ));
        }
        tp["user_id"] = json!("");
        tp["user_name"] = json!("");
        tp["user_email"] = json!("");
        tp["status"] = json!("INACTIVE");
    }
    ok(tp.clone())
}

/// `PUT /users/touch_passes/assign`: `{ids: [user ids]}`, each given a free pass.
pub fn batch_assign(db: &mut Inner, body: &Value) -> Reply {
    let users: Vec<String> = body["ids"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid("ids (user ids) is required"))?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for user in users {
        // A user holds one pass: one already held is kept.
        let held = db
            .collection("touch_passes")
            .values()
            .find(|t| t["user_id"] == json!(user))
            .cloned();
        if let Some(tp) = held {
            out.push(tp);
            continue;
        }
        let free = db
            .collection("touch_passes")
            .iter()
            .find(|(_, t)| s(t, "user_id").is_empty())
            .map(|(k, _)| k.clone());
        let Some(pass) = free else {
            return Err(invalid("not enough unassigned Touch Passes; purchase more"));
        };
        out.push(assign_pass(db, &user, &pass, true).map(|_| db.collection("touch_passes")[&pass].clone())?);
    }
    ok(Value::Array(out))
}
