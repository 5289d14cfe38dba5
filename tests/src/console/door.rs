//! What happens at a door: whether a remote unlock or a credential
//! presented at a reader opens it, and how a console records the outcome.
//!
//! The rules, in the order a console applies them: emergency settings
//! (evacuation opens every door, lockdown keeps them shut), the door's lock
//! rule (`keep_lock`, `keep_unlock`, an unexpired `custom` window,
//! `lock_early`), then for a credential: who holds it, whether that user is
//! active or that visitor within its window, and whether one of the
//! holder's access policies (its own, or its user groups') or a visitor's
//! resources reach the door, within the policy's schedule (the holiday
//! schedule on a day of its holiday group). Times are UTC.
//!
//! Every attempt, granted or not, becomes a system-log entry (topic
//! `door_openings`) and an `access.logs.add` event with that entry; an
//! opening also sends `access.data.v2.location.update` (the door unlocked)
//! and the `access.door.unlock` webhook.

use serde_json::{json, Value};

use super::reply::s;
use super::state::Inner;

/// What was presented at the door.
#[derive(Debug, Clone)]
pub enum Presented {
    /// An NFC card, by token.
    Nfc(String),
    /// A PIN, as typed.
    Pin(String),
    /// A face, recognised as this user or visitor id.
    Face(String),
    /// A remote unlock through the API, by this actor.
    Remote {
        /// Actor id (`api` when none was given).
        actor_id: String,
        /// Actor name.
        actor_name: String,
        /// The unlock's `extra`, echoed in the webhook.
        extra: Value,
    },
}

impl Presented {
    fn provider(&self) -> &'static str {
        match self {
            Self::Nfc(_) => "NFC",
            Self::Pin(_) => "PIN_CODE",
            Self::Face(_) => "FACE",
            Self::Remote { .. } => "REMOTE_THROUGH_API",
        }
    }
}

/// The outcome of one attempt, and what the console sends about it.
#[derive(Debug)]
pub struct Outcome {
    /// Whether the door opened.
    pub granted: bool,
    /// Why (for a refusal), or what opened it.
    pub reason: String,
    /// WebSocket events, in order.
    pub events: Vec<Value>,
    /// Webhooks: (event name, payload).
    pub hooks: Vec<(&'static str, Value)>,
}

/// Decides and records an attempt at `door_id`; `None` for an unknown door.
pub fn attempt(db: &mut Inner, door_id: &str, presented: &Presented, now: i64) -> Option<Outcome> {
    let door = db.collection("doors").get(door_id).cloned()?;
    let holder = holder_of(db, presented);
    let (granted, reason) = decide(db, &door, presented, holder.as_ref(), now);
    let (actor_id, actor_name, actor_type) = match (presented, &holder) {
        (
            Presented::Remote {
                actor_id, actor_name, ..
            },
            _,
        ) => (actor_id.clone(), actor_name.clone(), "open_api"),
        (_, Some((c, h))) => (
            s(h, "id").to_string(),
            format!("{} {}", s(h, "first_name"), s(h, "last_name")),
            if *c == "visitors" { "visitor" } else { "user" },
        ),
        (_, None) => (String::new(), "Unknown".to_string(), "user"),
    };
    if granted {
        if let Some(("visitors", h)) = &holder {
            let id = s(h, "id").to_string();
            if let Some(v) = db.collection("visitors").get_mut(&id) {
                v["visited"] = json!(true);
            }
        }
    }
    let result = if granted { "ACCESS" } else { "BLOCKED" };
    let display = format!(
        "{} {}: {reason}",
        s(&door, "name"),
        if granted { "opened" } else { "refused" }
    );
    let entry = db.log_entry(
        "door_openings",
        json!({"id": actor_id, "type": actor_type, "display_name": actor_name, "alternate_id": "", "alternate_name": "",
               "avatar": "", "sso_picture": ""}),
        json!({"type": "access.door.unlock", "display_message": display, "result": result,
               "published": now * 1000, "reason": if granted { "" } else { reason.as_str() }}),
        json!({"credential_provider": presented.provider(), "issuer": ""}),
        json!([{"type": "door", "id": door["id"], "display_name": door["name"], "alternate_id": "", "alternate_name": ""}]),
    );
    let mut events = vec![
        json!({"event": "access.logs.add", "receiver_id": "", "event_object_id": entry["_id"],
                                 "save_to_history": false, "data": entry}),
    ];
    let mut hooks = Vec::new();
    if granted {
        events.push(location_update(&door, "unlocked", db));
        let mut hook = super::webhooks::door_unlock(&door, &actor_id, &actor_name, presented.provider());
        if let Presented::Remote { extra, .. } = presented {
            if !extra.is_null() {
                hook["data"]["extra"] = extra.clone();
            }
        }
        hooks.push(("access.door.unlock", hook));
    }
    Some(Outcome {
        granted,
        reason,
        events,
        hooks,
    })
}

/// `access.data.v2.location.update` for `door` with its lock state.
pub fn location_update(door: &Value, lock: &str, db: &Inner) -> Value {
    let emergency = &db.emergency;
    json!({
        "event": "access.data.v2.location.update", "receiver_id": "", "event_object_id": door["id"],
        "save_to_history": false,
        "data": {"id": door["id"], "location_type": "door", "name": door["name"], "up_id": door["up_id"],
                 "device_ids": [door["hub_id"]],
                 "state": {"lock": lock, "dps": door["door_position_status"], "dps_connected": true,
                           "emergency": {"software": if emergency["lockdown"] == true { "lockdown" }
                                         else if emergency["evacuation"] == true { "evacuation" } else { "none" },
                                         "hardware": "none"},
                           "is_unavailable": false}},
        "meta": {"object_type": "location", "target_field": ["state"], "all_field": false, "id": door["id"], "source": ""},
    })
}

/// The user or visitor holding what was presented.
fn holder_of(db: &mut Inner, presented: &Presented) -> Option<(&'static str, Value)> {
    let pin_token = match presented {
        Presented::Pin(pin) => Some(keyway_certs::Fingerprint::of(pin.as_bytes()).to_string()),
        _ => None,
    };
    for c in ["users", "visitors"] {
        for h in db.collection(c).values() {
            let found = match presented {
                Presented::Nfc(token) => h["nfc_cards"]
                    .as_array()
                    .is_some_and(|cards| cards.iter().any(|k| k["token"] == json!(token))),
                Presented::Pin(_) => pin_token.as_deref().is_some_and(|t| h["pin_code"]["token"] == json!(t)),
                Presented::Face(id) => h["id"] == json!(id),
                Presented::Remote { .. } => false,
            };
            if found {
                return Some((c, h.clone()));
            }
        }
    }
    None
}

/// Granted or not, and why.
fn decide(
    db: &mut Inner,
    door: &Value,
    presented: &Presented,
    holder: Option<&(&'static str, Value)>,
    now: i64,
) -> (bool, String) {
    if db.emergency["evacuation"] == true {
        return (true, "evacuation: every door is open".into());
    }
    if db.emergency["lockdown"] == true {
        return (false, "lockdown: every door is kept locked".into());
    }
    let door_id = s(door, "id");
    let rule = db
        .lock_rules
        .get(door_id)
        .cloned()
        .unwrap_or(json!({"type": "schedule"}));
    match s(&rule, "type") {
        "keep_lock" | "lock_early" => return (false, format!("the door's lock rule is {}", s(&rule, "type"))),
        "keep_unlock" => return (true, "the door is kept unlocked".into()),
        "custom" if rule["ended_time"].as_i64().unwrap_or(0) > now => {
            return (true, "the door is unlocked until its custom rule ends".into())
        }
        _ => {}
    }
    if let Presented::Remote { .. } = presented {
        return (true, "remote unlock".into());
    }
    let Some((collection, h)) = holder else {
        return (false, "the credential is not bound to anyone".into());
    };
    if *collection == "visitors" {
        let (start, end) = (
            h["start_time"].as_i64().unwrap_or(0),
            h["end_time"].as_i64().unwrap_or(0),
        );
        if h["status"] == "CANCELLED" {
            return (false, "the visit was cancelled".into());
        }
        if now < start || now > end {
            return (false, "outside the visit's window".into());
        }
        let reach = h["resources"].as_array().cloned().unwrap_or_default();
        if !reaches(db, &reach, door_id) {
            return (false, "none of the visitor's resources is this door".into());
        }
        if h["schedule"].is_object() && !schedule_allows(&h["schedule"], None, now) {
            return (false, "outside the visitor's schedule".into());
        }
        return (true, "visitor within its window".into());
    }
    if h["status"] != "ACTIVE" {
        return (false, format!("the user is {}", s(h, "status").to_lowercase()));
    }
    let uid = s(h, "id").to_string();
    let mut policy_ids: Vec<String> = ids(&h["access_policy_ids"]);
    for g in db.collection("user_groups").values() {
        if g["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|x| x == &json!(uid)))
        {
            policy_ids.extend(ids(&g["access_policy_ids"]));
        }
    }
    let mut reached = false;
    for pid in policy_ids {
        let Some(policy) = db.collection("access_policies").get(&pid).cloned() else {
            continue;
        };
        let resources = policy["resources"].as_array().cloned().unwrap_or_default();
        if !reaches(db, &resources, door_id) {
            continue;
        }
        reached = true;
        let schedule = db.collection("schedules").get(s(&policy, "schedule_id")).cloned();
        let holidays = schedule
            .as_ref()
            .and_then(|sch| db.collection("holiday_groups").get(s(sch, "holiday_group_id")).cloned());
        if schedule
            .as_ref()
            .is_none_or(|sch| schedule_allows(sch, holidays.as_ref(), now))
        {
            return (true, format!("access policy {}", s(&policy, "name")));
        }
    }
    if reached {
        (false, "outside the access policy's schedule".into())
    } else {
        (false, "no access policy of the user reaches this door".into())
    }
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Whether resources (doors, door groups) include `door_id`.
fn reaches(db: &mut Inner, resources: &[Value], door_id: &str) -> bool {
    resources.iter().any(|r| {
        let (id, ty) = match r {
            Value::String(id) => (id.as_str(), "door"),
            _ => (s(r, "id"), s(r, "type")),
        };
        match ty {
            "door" => id == door_id,
            _ => db.collection("door_groups").get(id).is_some_and(|g| {
                g["type"] == "building"
                    || g["resources"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|d| d["id"] == json!(door_id)))
            }),
        }
    })
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

/// Whether `schedule` lets a credential through at `now` (UTC): a week with
/// no periods at all allows every day (the guide); on a day of its holiday
/// group, the holiday schedule applies instead.
pub fn schedule_allows(schedule: &Value, holidays: Option<&Value>, now: i64) -> bool {
    let days = now.div_euclid(86_400);
    let minute = now.rem_euclid(86_400) / 60;
    let is_holiday = holidays.is_some_and(|g| {
        g["holidays"].as_array().into_iter().flatten().any(|h| {
            let (start, end) = (date_days(s(h, "start_time")), date_days(s(h, "end_time")));
            matches!((start, end), (Some(a), Some(b)) if a <= days && days <= b)
        })
    });
    let periods: Vec<Value> = if is_holiday {
        schedule["holiday_schedule"].as_array().cloned().unwrap_or_default()
    } else {
        let week = &schedule["week_schedule"];
        let any = WEEK.iter().any(|d| week[d].as_array().is_some_and(|p| !p.is_empty()));
        if !any {
            return true;
        }
        // 1970-01-01 was a Thursday.
        let day = WEEK[((days + 4).rem_euclid(7)) as usize];
        week[day].as_array().cloned().unwrap_or_default()
    };
    periods.iter().any(
        |p| match (clock_minutes(s(p, "start_time")), clock_minutes(s(p, "end_time"))) {
            (Some(a), Some(b)) => a <= minute && minute <= b,
            _ => false,
        },
    )
}

/// `HH:MM[:SS]` → minutes past midnight.
fn clock_minutes(t: &str) -> Option<i64> {
    let mut it = t.split(':');
    let (h, m) = (it.next()?.parse::<i64>().ok()?, it.next()?.parse::<i64>().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

/// `YYYY-MM-DD…` (RFC 3339 date-time) → days since 1970-01-01.
fn date_days(t: &str) -> Option<i64> {
    let secs = humantime::parse_rfc3339_weak(t.get(..19).unwrap_or(t)).ok()?;
    let secs = secs.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(secs.div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_allow_their_periods_and_holidays_their_own() {
        // 2026-12-07 (a Monday) 10:30 UTC.
        let monday_1030 = 1_796_639_400;
        let office = json!({"week_schedule": {"monday": [{"start_time": "09:00:00", "end_time": "17:00:00"}]},
                            "holiday_schedule": []});
        assert!(schedule_allows(&office, None, monday_1030));
        assert!(!schedule_allows(&office, None, monday_1030 + 8 * 3600), "18:30");
        assert!(!schedule_allows(&office, None, monday_1030 + 86_400), "Tuesday");
        assert!(
            schedule_allows(&json!({"week_schedule": {}}), None, monday_1030),
            "no periods: always"
        );
        let holidays =
            json!({"holidays": [{"start_time": "2026-12-07T00:00:00Z", "end_time": "2026-12-07T23:59:59Z"}]});
        assert!(
            !schedule_allows(&office, Some(&holidays), monday_1030),
            "closed on the holiday"
        );
    }
}
