//! Webhook deliveries: the console POSTs door events to registered endpoints.
//!
//! The signature recipe is the community's reading of the official PDF
//! (`../shared/unifi/events.md` §1): header `Signature: t=<unix>,v1=<hex
//! HMAC-SHA256(secret, "<t>." + body)>`. Written here independently of the
//! agent's checker, so a mistake in one does not hide in the other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::state::Inner;

/// (endpoint URL, secret) of the endpoints subscribed to `event`.
pub fn targets(db: &mut Inner, event: &str) -> Vec<(String, String)> {
    db.collection("webhooks")
        .values()
        .filter(|w| w["events"].as_array().is_some_and(|e| e.iter().any(|n| n == event)))
        .filter_map(|w| Some((w["endpoint"].as_str()?.to_string(), w["secret"].as_str()?.to_string())))
        .collect()
}

/// The `access.door.unlock` payload for `door` (shape per events.md §4).
pub fn door_unlock(door: &Value, actor_id: &str, actor_name: &str, auth: &str) -> Value {
    json!({
        "event": "access.door.unlock", "receiver_id": "", "event_object_id": door["id"],
        "save_to_history": true,
        "data": {
            "location": {"id": door["id"], "location_type": "door", "name": door["name"], "up_id": door["floor_id"],
                         "extras": {}, "device_ids": [door["hub_id"]]},
            "device": {"id": door["hub_id"], "name": format!("UA-Hub-{}", door["name"].as_str().unwrap_or("")),
                       "device_type": "UAH", "online": true},
            "actor": {"id": actor_id, "name": actor_name, "type": "user"},
            "object": {"authentication_type": auth, "authentication_value": "", "policy_id": "", "policy_name": "",
                       "reader_id": "", "result": "ACCESS", "reason_code": 0, "event_type": "access.door.unlock"},
        }
    })
}

/// `t=…,v1=…` for `body`.
pub fn signature(secret: &str, body: &[u8], t: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let hex: String = ctx.sign().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Posts `event` to each target in the background; each answer's status
/// (0: not delivered) is appended to `log`.
pub fn deliver(targets: Vec<(String, String)>, event: &Value, log: Arc<Mutex<Vec<u16>>>) {
    if targets.is_empty() {
        return;
    }
    let body = Bytes::from(event.to_string());
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for (url, secret) in targets {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let req = Request::post(url.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header("signature", signature(&secret, &body, t))
            .body(Full::new(body.clone()));
        let (client, log) = (client.clone(), log.clone());
        tokio::spawn(async move {
            let status = match req {
                Ok(req) => match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(resp)) => resp.status().as_u16(),
                    _ => 0,
                },
                Err(_) => 0,
            };
            log.lock().expect("webhook log lock poisoned").push(status);
        });
    }
}
