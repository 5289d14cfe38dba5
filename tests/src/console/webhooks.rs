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

/// The event names an endpoint may subscribe to (the guide's webhook
/// events, `../shared/unifi/events.md` §4).
pub const EVENTS: [&str; 11] = [
    "access.doorbell.incoming",
    "access.doorbell.completed",
    "access.doorbell.incoming.REN",
    "access.device.dps_status",
    "access.door.unlock",
    "access.device.emergency_status",
    "access.unlock_schedule.activate",
    "access.unlock_schedule.deactivate",
    "access.temporary_unlock.start",
    "access.temporary_unlock.end",
    "access.visitor.status.changed",
];

/// Where one delivery goes.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    secret: String,
    headers: Vec<(String, String)>,
}

/// The endpoints subscribed to `event`, with their secrets and custom headers.
pub fn targets(db: &mut Inner, event: &str) -> Vec<Target> {
    db.collection("webhooks")
        .values()
        .filter(|w| w["events"].as_array().is_some_and(|e| e.iter().any(|n| n == event)))
        .filter_map(|w| {
            Some(Target {
                url: w["endpoint"].as_str()?.to_string(),
                secret: w["secret"].as_str()?.to_string(),
                headers: w["headers"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect(),
            })
        })
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

/// Delivers webhooks as a console does: HTTPS (the receiver's certificate
/// verified against the web PKI roots and, for tests, one more CA) or
/// plain HTTP (the guide's samples register `http://` endpoints too), with
/// the endpoint's custom headers and the `Signature` header.
pub struct Sender {
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>,
    log: Arc<Mutex<Vec<u16>>>,
}

impl Sender {
    /// A sender trusting the web PKI and `extra_ca`.
    pub fn new(extra_ca: Option<&rustls_pki_types::CertificateDer<'static>>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = extra_ca {
            roots.add(ca.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(keyway_certs::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            log: Arc::default(),
        })
    }

    /// The HTTP status of each delivery so far (0: not delivered).
    pub fn deliveries(&self) -> Vec<u16> {
        self.log.lock().expect("webhook log lock poisoned").clone()
    }

    /// Posts `event` to each target in the background.
    pub fn deliver(&self, targets: Vec<Target>, event: &Value) {
        let body = Bytes::from(event.to_string());
        for target in targets {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut req = Request::post(target.url.as_str())
                .header(CONTENT_TYPE, "application/json")
                .header("signature", signature(&target.secret, &body, t));
            for (k, v) in &target.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req.body(Full::new(body.clone()));
            let (client, log) = (self.client.clone(), self.log.clone());
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
}
