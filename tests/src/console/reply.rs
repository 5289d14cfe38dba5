//! Responses in the console's envelope, and request-body helpers.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

/// Boxed error of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every console response.
pub type SimBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// A handler's result: the error arm is a finished error response.
pub type Reply = Result<Response<SimBody>, Response<SimBody>>;

/// Largest JSON body the console accepts.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// A full body.
pub fn full(bytes: impl Into<Bytes>) -> SimBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, v: &Value) -> Response<SimBody> {
    let mut r = Response::new(full(serde_json::to_vec(v).expect("json values serialize")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"code":"SUCCESS","msg":"success","data":…}`.
pub fn ok(data: Value) -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &json!({"code": "SUCCESS", "msg": "success", "data": data}),
    ))
}

/// A page of a list, with top-level `pagination`.
pub fn page(items: Vec<Value>, page_num: usize, page_size: usize) -> Reply {
    let total = items.len();
    let data: Vec<Value> = items
        .into_iter()
        .skip((page_num - 1) * page_size)
        .take(page_size)
        .collect();
    page_window(data, page_num, page_size, total)
}

/// An already cut page of a list of `total` items, with `pagination`.
pub fn page_window(data: Vec<Value>, page_num: usize, page_size: usize, total: usize) -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &json!({"code": "SUCCESS", "msg": "success", "data": data,
                "pagination": {"page_num": page_num, "page_size": page_size, "total": total}}),
    ))
}

/// An error envelope.
pub fn err(status: StatusCode, code: &str, msg: &str) -> Response<SimBody> {
    json_response(status, &json!({"code": code, "msg": msg, "data": null}))
}

/// 400 `CODE_PARAMS_INVALID`.
pub fn invalid(msg: &str) -> Response<SimBody> {
    err(StatusCode::BAD_REQUEST, "CODE_PARAMS_INVALID", msg)
}

/// 404 `CODE_RESOURCE_NOT_FOUND`.
pub fn not_found(what: &str) -> Response<SimBody> {
    err(
        StatusCode::NOT_FOUND,
        "CODE_RESOURCE_NOT_FOUND",
        &format!("The requested {what} was not found."),
    )
}

/// Reads a JSON body (empty → `null`), bounded by [`MAX_JSON_BYTES`].
pub async fn read_json(body: Incoming) -> Result<Value, Response<SimBody>> {
    let bytes = Limited::new(body, MAX_JSON_BYTES)
        .collect()
        .await
        .map_err(|_| {
            err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "CODE_PARAMS_INVALID",
                "The request body is too large.",
            )
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(&format!("The request body is not valid JSON: {e}")))
}

/// `page_num`/`page_size` from a query string (strings in the spec; defaults 1 and 25).
pub fn paging(query: Option<&str>) -> Result<(usize, usize), Response<SimBody>> {
    let mut num = 1usize;
    let mut size = 25usize;
    // An empty value is the parameter left out (`page_num=`, as clients
    // that send every optional parameter do).
    for (k, v) in query_pairs(query).into_iter().filter(|(_, v)| !v.is_empty()) {
        let parsed = || {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(&format!("{k} must be a positive integer")))
        };
        match k.as_str() {
            "page_num" => num = parsed()?,
            "page_size" => size = parsed()?.min(100_000),
            _ => {}
        }
    }
    Ok((num, size))
}

/// Decoded `key=value` pairs of a query string.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A string field of a JSON object, or "".
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_paging() {
        assert_eq!(paging(Some("page_num=2&page_size=10")).unwrap(), (2, 10));
        assert_eq!(paging(None).unwrap(), (1, 25));
        assert!(paging(Some("page_num=0")).is_err());
        assert!(paging(Some("page_size=x")).is_err());
        assert_eq!(
            query_pairs(Some("expand%5B%5D=access_policy&k=a+b%2")),
            vec![
                ("expand[]".to_string(), "access_policy".to_string()),
                ("k".to_string(), "a b%2".to_string())
            ]
        );
    }
}
