//! The published UniFi Access API description, read for tests: its
//! operations, the ids their paths and examples need, the error codes the
//! official guide documents, and JSON Schema validators for its responses
//! (OpenAPI 3.1: draft 2020-12). The description is the vendored copy in
//! `tests/conformance/` (`scripts/openapi-fixture` refreshes it).

use std::collections::HashMap;

use http::Method;
use serde_json::{json, Value};

/// The description, as vendored.
pub const SPEC: &str = include_str!("../conformance/unifi-access.openapi.json");

/// The error codes the official guide documents (overview: "Error Code").
pub const DOCUMENTED_CODES: &[&str] = &[
    "CODE_PARAMS_INVALID",
    "CODE_SYSTEM_ERROR",
    "CODE_RESOURCE_NOT_FOUND",
    "CODE_OPERATION_FORBIDDEN",
    "CODE_AUTH_FAILED",
    "CODE_ACCESS_TOKEN_INVALID",
    "CODE_UNAUTHORIZED",
    "CODE_NOT_EXISTS",
    "CODE_USER_EMAIL_ERROR",
    "CODE_USER_ACCOUNT_NOT_EXIST",
    "CODE_USER_WORKER_NOT_EXISTS",
    "CODE_USER_NAME_DUPLICATED",
    "CODE_USER_CSV_IMPORT_INCOMPLETE_PROP",
    "CODE_ACCESS_POLICY_USER_TIMEZONE_NOT_FOUND",
    "CODE_ACCESS_POLICY_HOLIDAY_TIMEZONE_NOT_FOUND",
    "CODE_ACCESS_POLICY_HOLIDAY_GROUP_NOT_FOUND",
    "CODE_ACCESS_POLICY_HOLIDAY_NOT_FOUND",
    "CODE_ACCESS_POLICY_SCHEDULE_NOT_FOUND",
    "CODE_ACCESS_POLICY_HOLIDAY_NAME_EXIST",
    "CODE_ACCESS_POLICY_HOLIDAY_GROUP_NAME_EXIST",
    "CODE_ACCESS_POLICY_SCHEDULE_NAME_EXIST",
    "CODE_ACCESS_POLICY_SCHEDULE_CAN_NOT_DELETE",
    "CODE_ACCESS_POLICY_HOLIDAY_GROUP_CAN_NOT_DELETE",
    "CODE_CREDS_NFC_HAS_BIND_USER",
    "CODE_CREDS_DISABLE_TRANSFER_UID_USER_NFC",
    "CODE_CREDS_NFC_READ_SESSION_NOT_FOUND",
    "CODE_CREDS_NFC_READ_POLL_TOKEN_EMPTY",
    "CODE_CREDS_NFC_CARD_IS_PROVISION",
    "CODE_CREDS_NFC_CARD_PROVISION_FAILED",
    "CODE_CREDS_NFC_CARD_INVALID",
    "CODE_CREDS_NFC_CARD_CANNOT_BE_DELETE",
    "CODE_CREDS_PIN_CODE_CREDS_ALREADY_EXIST",
    "CODE_CREDS_PIN_CODE_CREDS_LENGTH_INVALID",
    "CODE_SPACE_DEVICE_BOUND_LOCATION_NOT_FOUND",
    "CODE_DEVICE_DEVICE_VERSION_NOT_FOUND",
    "CODE_DEVICE_DEVICE_VERSION_TOO_OLD",
    "CODE_DEVICE_DEVICE_BUSY",
    "CODE_DEVICE_DEVICE_NOT_FOUND",
    "CODE_DEVICE_DEVICE_OFFLINE",
    "CODE_OTHERS_UID_ADOPTED_NOT_SUPPORTED",
    "CODE_HOLIDAY_GROUP_CAN_NOT_DELETE",
    "CODE_HOLIDAY_GROUP_CAN_NOT_EDIT",
    "CODE_DEVICE_WEBHOOK_ENDPOINT_DUPLICATED",
    "CODE_DEVICE_API_NOT_SUPPORTED",
];

/// One operation of the description.
#[derive(Debug, Clone)]
pub struct Op {
    pub id: String,
    pub method: Method,
    pub template: String,
    /// The request body's JSON example, if it has one.
    pub example: Option<Value>,
    /// Whether its JSON request body has required fields.
    pub requires_fields: bool,
    /// The fields of its multipart request body, if it takes one.
    pub multipart: Vec<String>,
    /// The 200 response's content type and schema.
    pub content: Option<(String, Option<Value>)>,
}

pub fn operations(spec: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (template, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else {
                continue;
            };
            if !matches!(m, Method::GET | Method::POST | Method::PUT | Method::DELETE) {
                continue;
            }
            let body = &op["requestBody"]["content"]["application/json"];
            let content = op["responses"]["200"]["content"]
                .as_object()
                .and_then(|c| c.iter().next().map(|(ct, v)| (ct.clone(), v.get("schema").cloned())));
            ops.push(Op {
                id: op["operationId"].as_str().expect("operationId").to_string(),
                method: m,
                template: template.clone(),
                example: body.get("example").cloned(),
                requires_fields: body["schema"]["required"].as_array().is_some_and(|r| !r.is_empty()),
                multipart: op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
                    .as_object()
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default(),
                content,
            });
        }
    }
    ops
}

/// The ids of what the test created, by collection.
#[derive(Default)]
pub struct Ids(pub HashMap<&'static str, String>);

impl Ids {
    /// The id of `what`; panics naming it if the test created none.
    pub fn get(&self, what: &str) -> String {
        self.0
            .get(what)
            .cloned()
            .unwrap_or_else(|| panic!("the test created no {what} to use"))
    }
}

/// The collection a path parameter names (by its own name, or by the
/// segment before it).
pub fn collection_of(param: &str, before: &str) -> &'static str {
    match (param, before) {
        ("user_id", _) => "users",
        ("visitor_id", _) => "visitors",
        ("device_id", _) => "devices",
        ("touch_pass_id", _) => "touch_passes",
        ("license_plate_id", "visitors") => "visitor_plates",
        ("license_plate_id", _) => "license_plates",
        ("token", _) => "nfc_tokens",
        ("path", _) => "static",
        (_, "users") => "users",
        (_, "user_groups") => "user_groups",
        (_, "visitors") => "visitors",
        (_, "access_policies") => "access_policies",
        (_, "holiday_groups") => "holiday_groups",
        (_, "schedules") => "schedules",
        (_, "door_groups") => "door_groups",
        (_, "doors") => "doors",
        (_, "sessions") => "nfc_sessions",
        (_, "touch_passes") => "touch_passes",
        (_, "resource") => "log_resources",
        (_, "endpoints") => "webhooks",
        (p, b) => panic!("no collection for path parameter {p} after {b}"),
    }
}

/// The path with its parameters filled from `ids` (or with `unknown`).
pub fn fill(template: &str, ids: &Ids, unknown: Option<&str>) -> String {
    let segs: Vec<&str> = template.split('/').collect();
    segs.iter()
        .enumerate()
        .map(|(i, s)| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => match unknown {
                Some(u) => u.to_string(),
                None => ids.get(collection_of(
                    param,
                    if param == "license_plate_id" {
                        segs[i - 3]
                    } else {
                        segs[i - 1]
                    },
                )),
            },
            None => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The example with every id it names replaced by one the test created.
pub fn substitute(v: &Value, ids: &Ids) -> Value {
    let id_for = |key: &str| -> Option<&'static str> {
        let stem = key.strip_suffix("_ids").or_else(|| key.strip_suffix("_id"))?;
        Some(match stem {
            "user" => "users",
            "user_group" => "user_groups",
            "access_policy" => "access_policies",
            "door_group" => "door_groups",
            "door" | "location" => "doors",
            "schedule" => "schedules",
            "holiday_group" => "holiday_groups",
            "device" => "devices",
            "visitor" => "visitors",
            "touch_pass" => "touch_passes",
            _ => return None,
        })
    };
    match v {
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str);
            Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let new = match (k.as_str(), x) {
                            // `resources: [{id, type}]`: by the resource's type.
                            ("id", Value::String(_)) if kind == Some("door") => json!(ids.get("doors")),
                            ("id", Value::String(_)) if kind == Some("door_group") => json!(ids.get("door_groups")),
                            (k, Value::String(_)) if id_for(k).is_some() => json!(ids.get(id_for(k).unwrap())),
                            (k, Value::Array(a)) if id_for(k).is_some() && a.iter().all(Value::is_string) => {
                                json!([ids.get(id_for(k).unwrap())])
                            }
                            _ => substitute(x, ids),
                        };
                        (k.clone(), new)
                    })
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, ids)).collect()),
        other => other.clone(),
    }
}

/// Where the official guide's samples (what a console sends) and the
/// description disagree, the samples win; the README's compatibility table
/// lists these. Applied to the description before validating.
pub fn follow_the_samples(spec: &mut Value) {
    // The description marks nothing required; a console sends every field
    // of an object (the guide's samples), so every declared property is
    // required here, but for those the guide says appear only sometimes.
    const SOMETIMES: &[(&str, &str, &str)] = &[
        ("User", "access_policies", "only with expand[]=access_policy (user.md)"),
        ("Visitor", "schedule", "only for a recurring visit (visitor.md)"),
        (
            "Schedule",
            "holiday_group",
            "only when the schedule has a holiday group (access-policy.md)",
        ),
    ];
    for (name, schema) in spec["components"]["schemas"].as_object_mut().expect("schemas") {
        if let Some(props) = schema["properties"].as_object() {
            let all: Vec<Value> = props
                .keys()
                .filter(|k| !SOMETIMES.iter().any(|(s, p, _)| s == name && p == k))
                .map(|k| json!(k))
                .collect();
            schema["required"] = Value::Array(all);
        }
    }
    let schemas = &mut spec["components"]["schemas"];
    for holder in ["User", "Visitor"] {
        // user.md and visitor.md: `"pin_code": null` for a holder without a PIN.
        schemas[holder]["properties"]["pin_code"] =
            json!({"anyOf": [{"$ref": "#/components/schemas/PinCode"}, {"type": "null"}]});
    }
    // user.md: `touch_pass` is the pass object (the description: an array), null without one.
    schemas["User"]["properties"]["touch_pass"] = json!({"anyOf": [
        {"$ref": "#/components/schemas/TouchPass"}, {"type": "array"}, {"type": "null"}]});
}

/// A validator for `schema`, resolving `#/components/…` in the description.
pub fn validator(spec: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = spec["components"].clone();
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema does not compile: {e}\n{schema}"))
}

/// The console's error envelope with a documented code.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "msg"],
        "properties": {"code": {"enum": DOCUMENTED_CODES}, "msg": {"type": "string"}}
    })
}
