//! The published API description, as the simulated console's contract:
//! every JSON request body is checked against its operation's request
//! schema (required fields, types, enums) before a handler sees it, and
//! refused with the console's 400 `CODE_PARAMS_INVALID` naming what is
//! wrong. The description is the vendored copy the conformance test uses
//! (`tests/conformance/unifi-access.openapi.json`).

use std::sync::OnceLock;

use http::Method;
use serde_json::Value;

use super::reply::{invalid, SimBody};

const SPEC: &str = include_str!("../../conformance/unifi-access.openapi.json");

/// One operation: its method, path segments (`None` for a parameter) and
/// the validator of its JSON request body, if it has one.
struct Operation {
    method: Method,
    segments: Vec<Option<String>>,
    body: Option<jsonschema::Validator>,
}

fn operations() -> &'static [Operation] {
    static OPS: OnceLock<Vec<Operation>> = OnceLock::new();
    OPS.get_or_init(|| {
        let spec: Value = serde_json::from_str(SPEC).expect("the vendored description is JSON");
        let mut ops = Vec::new();
        for (template, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else {
                    continue;
                };
                let segments = template
                    .trim_start_matches("/api/v1/developer/")
                    .split('/')
                    .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                    .collect();
                let body = op["requestBody"]["content"]["application/json"]["schema"]
                    .as_object()
                    .map(|schema| {
                        let mut root = Value::Object(schema.clone());
                        root["components"] = spec["components"].clone();
                        jsonschema::draft202012::new(&root).expect("the description's schemas compile")
                    });
                ops.push(Operation { method, segments, body });
            }
        }
        ops
    })
}

/// The operation `method seg…` is, preferring literal segments to parameters.
fn find(method: &Method, seg: &[&str]) -> Option<&'static Operation> {
    operations()
        .iter()
        .filter(|o| o.method == *method && o.segments.len() == seg.len())
        .filter(|o| {
            o.segments
                .iter()
                .zip(seg)
                .all(|(want, got)| want.as_deref().is_none_or(|w| w == *got))
        })
        .max_by_key(|o| o.segments.iter().filter(|s| s.is_some()).count())
}

/// Refuses a JSON body its operation's request schema does not accept.
pub fn check(method: &Method, seg: &[&str], body: &Value) -> Result<(), http::Response<SimBody>> {
    let Some(validator) = find(method, seg).and_then(|o| o.body.as_ref()) else {
        return Ok(());
    };
    // A null in a field the body does not require is the field left out
    // (clients such as unifi-access send every optional field, null).
    let mut body = body.clone();
    if let Value::Object(o) = &mut body {
        o.retain(|_, v| !v.is_null());
    }
    let first = validator.iter_errors(&body).next().map(|e| {
        let at = e.instance_path().to_string();
        let field = if at.is_empty() {
            "the body".to_string()
        } else {
            at.trim_start_matches('/').replace('/', ".")
        };
        format!("{field}: {e}")
    });
    match first {
        None => Ok(()),
        Some(why) => Err(invalid(&why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_held_to_the_description() {
        let users = ["users"];
        assert!(check(&Method::POST, &users, &json!({"first_name": "A", "last_name": "B"})).is_ok());
        let refused = check(&Method::POST, &users, &json!({"first_name": "A"})).unwrap_err();
        assert_eq!(refused.status(), 400);
        let logs = ["system", "logs"];
        assert!(check(&Method::POST, &logs, &json!({"topic": "door_openings"})).is_ok());
        assert!(
            check(&Method::POST, &logs, &json!({"topic": "gossip"})).is_err(),
            "enum"
        );
        // A literal segment wins over a parameter (`users/search`, not `users/{id}`).
        assert!(find(&Method::GET, &["users", "search"]).is_some_and(|o| o.segments[1].as_deref() == Some("search")));
        assert_eq!(operations().len(), 107);
    }
}
