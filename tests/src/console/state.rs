//! The simulated console's in-memory data: collections of JSON objects in
//! the shapes of the published API, seeded with a small site (doors, a hub,
//! door groups, a schedule) so a fresh console answers like a real one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// One collection: id → object, in insertion order of ids.
pub type Collection = BTreeMap<String, Value>;

/// Everything the console remembers.
pub struct State {
    inner: Mutex<Inner>,
}

/// The data behind the lock.
pub struct Inner {
    /// Collections by API name (`users`, `visitors`, `door_groups`…).
    pub collections: BTreeMap<&'static str, Collection>,
    /// Uploaded avatars and other static files by path under `/system/static/`.
    pub static_files: BTreeMap<String, bytes::Bytes>,
    /// System log entries, newest last.
    pub logs: Vec<Value>,
    /// Door emergency settings.
    pub emergency: Value,
    /// Lock rule per door id.
    pub lock_rules: BTreeMap<String, Value>,
    next_id: u64,
}

/// The collections the console keeps.
pub const COLLECTIONS: [&str; 15] = [
    "users",
    "user_groups",
    "visitors",
    "access_policies",
    "holiday_groups",
    "schedules",
    "door_groups",
    "doors",
    "webhooks",
    "devices",
    "device_settings",
    "nfc_cards",
    "nfc_sessions",
    "touch_passes",
    "identity",
];

/// The seeded doors' ids, so tests can name them.
pub const DOOR_IDS: [&str; 3] = [
    "5d600936-8618-4f2d-a1b7-d786865b70ba",
    "6e711a47-9729-4e3e-b2c8-e897976c81cb",
    "7f822b58-a83a-4f4f-c3d9-f9a8a87d92dc",
];
/// The hub every seeded door is wired to.
pub const HUB_ID: &str = "e4388384236b";

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// A console with a seeded site.
    pub fn new() -> Self {
        let mut inner = Inner {
            collections: COLLECTIONS.iter().map(|c| (*c, Collection::new())).collect(),
            static_files: BTreeMap::new(),
            logs: Vec::new(),
            emergency: json!({"lockdown": false, "evacuation": false}),
            lock_rules: BTreeMap::new(),
            next_id: 1,
        };
        for (i, (id, name)) in DOOR_IDS
            .iter()
            .zip(["Front Door", "Back Door", "Meeting Room"])
            .enumerate()
        {
            inner.collection("doors").insert(
                id.to_string(),
                json!({
                    "id": id, "name": name, "full_name": format!("UDR-ML - 1F - {name}"),
                    "floor_id": "2a6d2ea3-2f3e-4a4e-8e36-1f1b6a3c2b10", "type": "door",
                    "is_bind_hub": true, "door_lock_relay_status": "lock",
                    "door_position_status": "close", "camera_resource_ids": [],
                    "timezone": "", "location_type": "door", "up_id": "913a35bc-66c9-4293-a617-846dd2e285ed",
                    "extra_type": "", "level": 0, "work_time": "[]", "work_time_id": "",
                    "extras": {"uah-input_state_dps": "off", "uah-wiring_state_dps-neg": "off", "uah-wiring_state_dps-pos": "off"},
                    "hub_id": format!("{HUB_ID}{i}"),
                }),
            );
        }
        for d in super::devices::seed() {
            let id = d["id"].as_str().expect("seeded ids").to_string();
            inner.collection("devices").insert(id, d);
        }
        let all_doors: Vec<Value> = DOOR_IDS
            .iter()
            .zip(["Front Door", "Back Door", "Meeting Room"])
            .map(|(id, name)| json!({"id": id, "type": "door", "name": name}))
            .collect();
        inner.collection("door_groups").insert(
            "d5573467-d6b3-4e8f-8e48-8c322b7e1a02".into(),
            json!({"id": "d5573467-d6b3-4e8f-8e48-8c322b7e1a02", "name": "All Doors", "type": "building", "resources": all_doors}),
        );
        inner.collection("schedules").insert(
            "73f15cab-c725-4a76-a419-a4026d131e96".into(),
            json!({"id": "73f15cab-c725-4a76-a419-a4026d131e96", "name": "Always Access", "type": "access",
                   "is_default": true, "week_schedule": {"sunday": [], "monday": [], "tuesday": [], "wednesday": [],
                   "thursday": [], "friday": [], "saturday": []}, "holiday_group_id": "", "holiday_schedule": []}),
        );
        Self {
            inner: Mutex::new(inner),
        }
    }

    /// Runs `f` with the data locked. Never held across an `.await`.
    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("console state lock poisoned"))
    }
}

impl Inner {
    /// A collection by name (all of [`COLLECTIONS`] exist).
    pub fn collection(&mut self, name: &str) -> &mut Collection {
        self.collections.get_mut(name).expect("known collection")
    }

    /// A fresh UUID-shaped id.
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        let n = self.next_id;
        let r = random_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (r >> 32) as u32,
            r as u16,
            n & 0xfff,
            (r >> 16) & 0xfff,
            n
        )
    }

    /// Appends a system log entry for an API action (shape of `fetchSystemLogs` hits).
    pub fn log(&mut self, topic: &str, event_type: &str, display: &str, target_id: &str) {
        let ts = now_secs();
        self.log_entry(
            topic,
            json!({"id": "api", "type": "open_api", "display_name": "API token", "alternate_id": "", "alternate_name": "",
                   "avatar": "", "sso_picture": ""}),
            json!({"type": event_type, "display_message": display, "result": "ACCESS", "published": ts * 1000, "reason": ""}),
            json!({"credential_provider": "API", "issuer": ""}),
            json!([{"type": "door", "id": target_id, "display_name": display, "alternate_id": "", "alternate_name": ""}]),
        );
    }

    /// Appends a system log entry with its parts; returns it (the payload
    /// of the `access.logs.add` event a console streams for it).
    pub fn log_entry(
        &mut self,
        topic: &str,
        actor: Value,
        event: Value,
        authentication: Value,
        target: Value,
    ) -> Value {
        let id = self.new_id();
        // `@timestamp` is a string in the official samples (RFC 3339).
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let entry = json!({
            "@timestamp": at, "_id": id,
            "_source": {"actor": actor, "event": event, "authentication": authentication, "target": target},
            "tag": topic,
        });
        self.logs.push(entry.clone());
        entry
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random 64-bit number.
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the OS random source works");
    u64::from_le_bytes(b)
}
