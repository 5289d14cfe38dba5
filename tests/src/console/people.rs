//! Users, user groups, visitors and their credentials.

use http::StatusCode;
use serde_json::{json, Value};

use super::reply::{err, invalid, not_found, ok, page, page_window, paging, query_pairs, s, Reply};
use super::state::{now_secs, Inner};

/// `POST /users`.
pub fn create_user(db: &mut Inner, body: &Value) -> Reply {
    let (first, last) = (s(body, "first_name"), s(body, "last_name"));
    if first.is_empty() || last.is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_USER_CSV_IMPORT_INCOMPLETE_PROP",
            "Please provide both first name and last name.",
        ));
    }
    let email = s(body, "user_email");
    if !email.is_empty() && !email.contains('@') {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_USER_EMAIL_ERROR",
            "The provided email format is invalid.",
        ));
    }
    let id = db.new_id();
    let user = json!({
        "id": id, "first_name": first, "last_name": last, "full_name": format!("{first} {last}"),
        "alias": "", "user_email": email, "email": email, "username": "",
        "email_status": if email.is_empty() { "" } else { "UNVERIFIED" },
        "phone": "", "employee_number": s(body, "employee_number"),
        "onboard_time": body.get("onboard_time").cloned().unwrap_or(json!(now_secs())),
        "status": "ACTIVE", "nfc_cards": [], "license_plates": [], "pin_code": null, "touch_pass": null,
        "access_policy_ids": [], "avatar_relative_path": "",
    });
    db.collection("users").insert(id, user.clone());
    ok(user)
}

/// `PUT /users/{id}`: partial update; `status` may deactivate.
pub fn update_user(db: &mut Inner, id: &str, body: &Value) -> Reply {
    if let Some(status) = body.get("status").and_then(Value::as_str) {
        if !["ACTIVE", "DEACTIVATED"].contains(&status) {
            return Err(invalid("status must be ACTIVE or DEACTIVATED"));
        }
    }
    let user = db.collection("users").get_mut(id).ok_or_else(|| not_found("user"))?;
    for key in [
        "first_name",
        "last_name",
        "user_email",
        "employee_number",
        "onboard_time",
        "status",
    ] {
        if let Some(v) = body.get(key) {
            user[key] = v.clone();
        }
    }
    user["full_name"] = json!(format!("{} {}", s(user, "first_name"), s(user, "last_name")));
    user["email"] = user["user_email"].clone();
    ok(Value::Null)
}

/// `GET /users` (paginated) and `GET /users/search`.
pub fn list_users(db: &mut Inner, query: Option<&str>, search: bool) -> Reply {
    let (num, size) = paging(query)?;
    let params = query_pairs(query);
    let keyword = params
        .iter()
        .find(|(k, _)| k == "keyword")
        .map(|(_, v)| v.to_lowercase());
    let expand = params.iter().any(|(k, v)| k == "expand[]" && v == "access_policy");
    let policies = db.collection("access_policies").clone();
    let matching: Vec<&Value> = db
        .collection("users")
        .values()
        .filter(|u| {
            keyword.as_deref().is_none_or(|k| {
                s(u, "full_name").to_lowercase().contains(k) || s(u, "user_email").to_lowercase().contains(k)
            })
        })
        .collect();
    let total = matching.len();
    // Only the requested page is built (10,000 members page quickly).
    let window: Vec<Value> = matching
        .into_iter()
        .skip((num - 1) * size)
        .take(size)
        .map(|u| with_policies(u, &policies, expand))
        .collect();
    if search {
        return ok(Value::Array(window));
    }
    page_window(window, num, size, total)
}

/// `GET /users/{id}`.
pub fn get_user(db: &mut Inner, id: &str, query: Option<&str>) -> Reply {
    let expand = query_pairs(query)
        .iter()
        .any(|(k, v)| k == "expand[]" && v == "access_policy");
    let policies = db.collection("access_policies").clone();
    let user = db.collection("users").get(id).ok_or_else(|| not_found("user"))?;
    ok(with_policies(user, &policies, expand))
}

fn with_policies(user: &Value, policies: &super::state::Collection, expand: bool) -> Value {
    let mut u = user.clone();
    if expand {
        let ids = u["access_policy_ids"].as_array().cloned().unwrap_or_default();
        u["access_policies"] = Value::Array(
            ids.iter()
                .filter_map(|id| id.as_str().and_then(|id| policies.get(id)).cloned())
                .collect(),
        );
    }
    u
}

/// `PUT /users/{id}/access_policies` and the user-group twin.
pub fn assign_policies(db: &mut Inner, collection: &str, id: &str, body: &Value) -> Reply {
    let ids = body
        .get("access_policy_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("access_policy_ids is required"))?;
    for pid in ids {
        let pid = pid.as_str().unwrap_or_default();
        if !db.collection("access_policies").contains_key(pid) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "CODE_NOT_EXISTS",
                &format!("Access policy {pid} does not exist."),
            ));
        }
    }
    let obj = db
        .collection(collection)
        .get_mut(id)
        .ok_or_else(|| not_found("object"))?;
    obj["access_policy_ids"] = Value::Array(ids.clone());
    ok(Value::Null)
}

/// `GET /users/{id}/access_policies` and the user-group twin.
pub fn fetch_policies(db: &mut Inner, collection: &str, id: &str) -> Reply {
    let ids = db.collection(collection).get(id).ok_or_else(|| not_found("object"))?["access_policy_ids"].clone();
    let policies = db.collection("access_policies");
    let list: Vec<Value> = ids
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().and_then(|p| policies.get(p)).cloned())
        .collect();
    ok(Value::Array(list))
}

/// `PUT /{users|visitors}/{id}/pin_codes`.
pub fn assign_pin(db: &mut Inner, collection: &str, id: &str, body: &Value) -> Reply {
    let pin = s(body, "pin_code");
    if pin.len() < 4 || pin.len() > 12 || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_CREDS_PIN_CODE_CREDS_LENGTH_INVALID",
            "The PIN code length does not meet the preset requirements.",
        ));
    }
    let token = keyway_certs::Fingerprint::of(pin.as_bytes()).to_string();
    let taken = ["users", "visitors"].iter().any(|c| {
        db.collection(c)
            .iter()
            .any(|(other, v)| other != id && v["pin_code"]["token"] == json!(token))
    });
    if taken {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_CREDS_PIN_CODE_CREDS_ALREADY_EXIST",
            "The PIN code already exists.",
        ));
    }
    let obj = db
        .collection(collection)
        .get_mut(id)
        .ok_or_else(|| not_found("object"))?;
    obj["pin_code"] = json!({"token": token});
    ok(Value::Null)
}

/// `DELETE /{users|visitors}/{id}/pin_codes`.
pub fn unassign_pin(db: &mut Inner, collection: &str, id: &str) -> Reply {
    let obj = db
        .collection(collection)
        .get_mut(id)
        .ok_or_else(|| not_found("object"))?;
    obj["pin_code"] = Value::Null;
    ok(Value::Null)
}

/// `POST /user_groups/{id}/users` (and `/delete`): body is an array of ids
/// (as the spec says) or `{"user_ids": […]}` (as some clients send).
pub fn group_members(db: &mut Inner, id: &str, body: &Value, remove: bool) -> Reply {
    let ids = body
        .as_array()
        .or_else(|| body.get("user_ids").and_then(Value::as_array))
        .ok_or_else(|| invalid("expected an array of user ids"))?
        .clone();
    let users = db.collection("users").clone();
    let group = db
        .collection("user_groups")
        .get_mut(id)
        .ok_or_else(|| not_found("user group"))?;
    let members = group["users"].as_array_mut().expect("users is an array");
    for uid in ids {
        if !users.contains_key(uid.as_str().unwrap_or_default()) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "CODE_USER_WORKER_NOT_EXISTS",
                "The requested user does not exist.",
            ));
        }
        members.retain(|m| *m != uid);
        if !remove {
            members.push(uid);
        }
    }
    ok(Value::Null)
}

/// `GET /user_groups/{id}/users`.
pub fn list_group_members(db: &mut Inner, id: &str) -> Reply {
    let ids = db
        .collection("user_groups")
        .get(id)
        .ok_or_else(|| not_found("user group"))?["users"]
        .clone();
    let users = db.collection("users");
    ok(Value::Array(
        ids.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().and_then(|u| users.get(u)).cloned())
            .collect(),
    ))
}

/// `POST /visitors`.
pub fn create_visitor(db: &mut Inner, body: &Value) -> Reply {
    let (first, last) = (s(body, "first_name"), s(body, "last_name"));
    let (start, end) = (body["start_time"].as_i64(), body["end_time"].as_i64());
    let (Some(start), Some(end)) = (start, end) else {
        return Err(invalid("start_time and end_time (unix seconds) are required"));
    };
    if first.is_empty() || last.is_empty() || end <= start {
        return Err(invalid(
            "first_name, last_name and a start_time before end_time are required",
        ));
    }
    let id = db.new_id();
    let visitor = json!({
        "id": id, "first_name": first, "last_name": last, "avatar": "",
        "mobile_phone": s(body, "mobile_phone"), "email": s(body, "email"), "company": s(body, "company"),
        "status": "UPCOMING", "start_time": start, "end_time": end, "visitor_company": s(body, "visitor_company"),
        "inviter_id": s(body, "inviter_id"), "inviter_name": s(body, "inviter_name"),
        "schedule_id": s(body, "schedule_id"),
        "visit_reason": body.get("visit_reason").cloned().unwrap_or(json!("Others")),
        "nfc_cards": [], "pin_code": null, "qr_code": null, "license_plates": [],
        "resources": body.get("resources").cloned().unwrap_or(json!([])), "remarks": s(body, "remarks"),
        "access_policy_ids": [],
    });
    let mut visitor = visitor;
    // A recurring visit has a schedule; a one-time one has none (visitor.md).
    if let Some(sched) = body.get("schedule").filter(|v| v.is_object()) {
        visitor["schedule"] = sched.clone();
    }
    visitor["status"] = json!(visitor_status(&visitor));
    db.collection("visitors").insert(id, visitor.clone());
    ok(visitor)
}

/// The visitor statuses, numbered from 1 as the list filter takes them.
pub const VISITOR_STATUSES: [&str; 6] = ["UPCOMING", "VISITED", "VISITING", "CANCELLED", "NO_VISIT", "ACTIVE"];

/// `DELETE /visitors/{id}`: cancels the visit (its status becomes
/// `CANCELLED`); with `is_force=true` the visitor is deleted outright.
pub fn delete_visitor(db: &mut Inner, id: &str, query: Option<&str>) -> Reply {
    let force = query_pairs(query).iter().any(|(k, v)| k == "is_force" && v == "true");
    if force {
        db.collection("visitors")
            .remove(id)
            .ok_or_else(|| not_found("visitor"))?;
    } else {
        let v = db
            .collection("visitors")
            .get_mut(id)
            .ok_or_else(|| not_found("visitor"))?;
        v["status"] = json!("CANCELLED");
    }
    ok(Value::Null)
}

/// The description's visitor status: `UPCOMING` before its window,
/// `ACTIVE` within it, `VISITED` after it if a credential of the visitor
/// opened a door, `NO_VISIT` otherwise; `CANCELLED` stays.
pub fn visitor_status(v: &Value) -> &'static str {
    let (start, end) = (
        v["start_time"].as_i64().unwrap_or(0),
        v["end_time"].as_i64().unwrap_or(0),
    );
    let now = now_secs();
    match () {
        _ if v["status"] == "CANCELLED" => "CANCELLED",
        _ if now < start => "UPCOMING",
        _ if now <= end => "ACTIVE",
        _ if v["visited"] == true => "VISITED",
        _ => "NO_VISIT",
    }
}

/// `PUT /visitors/{id}`.
pub fn update_visitor(db: &mut Inner, id: &str, body: &Value) -> Reply {
    let v = db
        .collection("visitors")
        .get_mut(id)
        .ok_or_else(|| not_found("visitor"))?;
    for key in [
        "first_name",
        "last_name",
        "mobile_phone",
        "email",
        "company",
        "visitor_company",
        "schedule_id",
        "schedule",
        "start_time",
        "end_time",
        "visit_reason",
        "remarks",
        "resources",
    ] {
        if let Some(x) = body.get(key) {
            v[key] = x.clone();
        }
    }
    let (start, end) = (
        v["start_time"].as_i64().unwrap_or(0),
        v["end_time"].as_i64().unwrap_or(0),
    );
    if end <= start {
        return Err(invalid("start_time must be before end_time"));
    }
    v["status"] = json!(visitor_status(v));
    ok(v.clone())
}

/// `GET /visitors` (paginated, `status` and `keyword` filters).
pub fn list_visitors(db: &mut Inner, query: Option<&str>) -> Reply {
    let (num, size) = paging(query)?;
    let params = query_pairs(query);
    let keyword = params
        .iter()
        .find(|(k, _)| k == "keyword")
        .map(|(_, v)| v.to_lowercase());
    // The filter takes the enum's number (UPCOMING=1 … ACTIVE=6); the
    // guide: "status filtering is disabled when searching with keyword".
    let status = match params.iter().find(|(k, _)| k == "status") {
        Some((_, v)) if keyword.is_none() => Some(
            v.parse::<usize>()
                .ok()
                .and_then(|n| VISITOR_STATUSES.get(n.wrapping_sub(1)))
                .ok_or_else(|| invalid("status must be 1 to 6"))?,
        ),
        _ => None,
    };
    let items: Vec<Value> = db
        .collection("visitors")
        .values()
        .filter(|v| status.is_none_or(|st| v["status"] == json!(st)))
        .filter(|v| {
            keyword.as_deref().is_none_or(|k| {
                format!("{} {}", s(v, "first_name"), s(v, "last_name"))
                    .to_lowercase()
                    .contains(k)
            })
        })
        .cloned()
        .collect();
    page(items, num, size)
}

/// `PUT`/`DELETE /visitors/{id}/qr_codes`.
pub fn visitor_qr(db: &mut Inner, id: &str, assign: bool) -> Reply {
    let v = db
        .collection("visitors")
        .get_mut(id)
        .ok_or_else(|| not_found("visitor"))?;
    v["qr_code"] = if assign {
        json!({"id": format!("qr-{id}"), "token": format!("qr-{id}")})
    } else {
        Value::Null
    };
    ok(Value::Null)
}

/// `POST /credentials/pin_codes`: a fresh 8-digit PIN.
pub fn generate_pin() -> Reply {
    ok(json!(format!("{:08}", super::state::random_u64() % 100_000_000)))
}
