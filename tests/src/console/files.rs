//! Binary and streamed endpoints: avatar upload (multipart), static files,
//! QR-code images, system logs and the streamed log export.

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};

use super::reply::{err, full, invalid, not_found, ok, paging, s, Reply, SimBody};
use super::state::{now_secs, State};

/// Largest multipart upload accepted (avatars, certificates, CSV imports).
pub const MAX_UPLOAD_BYTES: u64 = 128 * 1024 * 1024;
/// Test hook: how many bytes the log export should produce.
pub const EXPORT_BYTES_HEADER: &str = "x-sim-export-bytes";
/// Test hook: the console breaks the connection after this many bytes of
/// the export (a console that crashes or resets mid-body).
pub const FAIL_AFTER_HEADER: &str = "x-sim-fail-after-bytes";
const DEFAULT_EXPORT_BYTES: u64 = 256 * 1024;
const MAX_EXPORT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Reads the multipart form field `field`, bounded by [`MAX_UPLOAD_BYTES`].
pub async fn multipart_field(headers: &HeaderMap, body: Incoming, field: &str) -> Result<Bytes, Response<SimBody>> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(ct).map_err(|_| invalid("expected multipart/form-data with a boundary"))?;
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(MAX_UPLOAD_BYTES));
    let mut form = multer::Multipart::with_constraints(BodyDataStream::new(body), boundary, constraints);
    loop {
        match form.next_field().await {
            Ok(Some(f)) if f.name() == Some(field) => {
                return f
                    .bytes()
                    .await
                    .map_err(|e| invalid(&format!("could not read field {field}: {e}")))
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Err(invalid(&format!("the form has no {field} field"))),
            Err(multer::Error::StreamSizeExceeded { .. }) => {
                return Err(err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "CODE_PARAMS_INVALID",
                    "The upload is too large.",
                ))
            }
            Err(e) => return Err(invalid(&format!("malformed multipart body: {e}"))),
        }
    }
}

/// `POST /users/{id}/avatar`.
pub async fn upload_avatar(state: &State, id: &str, headers: &HeaderMap, body: Incoming) -> Reply {
    if !state.with(|db| db.collection("users").contains_key(id)) {
        return Err(not_found("user"));
    }
    let bytes = multipart_field(headers, body, "file").await?;
    if bytes.is_empty() {
        return Err(invalid("the file is empty"));
    }
    let path = format!("avatar/{id}");
    state.with(|db| {
        db.static_files.insert(path.clone(), bytes);
        if let Some(u) = db.collection("users").get_mut(id) {
            u["avatar_relative_path"] = json!(format!("/{path}"));
        }
    });
    ok(json!({"avatar_url": format!("/api/v1/developer/system/static/{path}")}))
}

/// `GET /system/static/{path…}`.
pub fn static_file(state: &State, path: &str) -> Reply {
    let bytes = state
        .with(|db| db.static_files.get(path).cloned())
        .ok_or_else(|| not_found("resource"))?;
    Ok(binary(bytes, "application/octet-stream"))
}

/// `GET /credentials/qr_codes/download/{visitor_id}`: a PNG, same bytes every time.
pub fn qr_png(state: &State, visitor_id: &str) -> Reply {
    let has_qr = state.with(|db| {
        db.collection("visitors")
            .get(visitor_id)
            .map(|v| !v["qr_code"].is_null())
    });
    match has_qr {
        None => Err(not_found("visitor")),
        Some(false) => Err(err(
            StatusCode::BAD_REQUEST,
            "CODE_NOT_EXISTS",
            "The visitor has no QR code; assign one first.",
        )),
        Some(true) => Ok(binary(Bytes::from(qr_image(visitor_id)), "image/png")),
    }
}

/// The simulated QR image of a visitor: a PNG signature then 96 KiB of
/// bytes derived from the id (enough to span many QUIC packets).
pub fn qr_image(visitor_id: &str) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut seed = keyway_certs::Fingerprint::of(visitor_id.as_bytes()).0;
    while out.len() < 96 * 1024 {
        seed = keyway_certs::Fingerprint::of(&seed).0;
        out.extend_from_slice(&seed);
    }
    out
}

fn binary(bytes: Bytes, content_type: &'static str) -> Response<SimBody> {
    let mut r = Response::new(full(bytes));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `POST /system/logs` (page info inside `data`).
pub fn fetch_logs(state: &State, query: Option<&str>, body: &Value) -> Reply {
    let (num, size) = paging(query)?;
    let topic = s(body, "topic");
    let topic = if topic.is_empty() { "all" } else { topic };
    let hits: Vec<Value> = state.with(|db| {
        db.logs
            .iter()
            .filter(|l| topic == "all" || l["tag"] == json!(topic))
            .cloned()
            .collect()
    });
    let total = hits.len();
    let hits: Vec<Value> = hits.into_iter().rev().skip((num - 1) * size).take(size).collect();
    ok(json!({"hits": hits, "page": num, "total": total}))
}

/// `POST /system/logs/export`: a CSV streamed in 64 KiB chunks, generated as
/// it is sent (a month of logs is large; nothing is held in memory).
pub fn export_logs(headers: &HeaderMap, body: &Value) -> Reply {
    for k in ["topic", "since", "until", "timezone"] {
        if body.get(k).is_none() {
            return Err(invalid("topic, since, until and timezone are required"));
        }
    }
    let (since, until) = (body["since"].as_i64().unwrap_or(0), body["until"].as_i64().unwrap_or(0));
    if until < since || until - since > 31 * 24 * 3600 {
        return Err(invalid("the since/until span cannot exceed one month"));
    }
    let total = headers
        .get(EXPORT_BYTES_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_EXPORT_BYTES)
        .min(MAX_EXPORT_BYTES);
    let fail_after = headers
        .get(FAIL_AFTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let stream = futures_util::stream::unfold((0u64, 0u64), move |(sent, line)| async move {
        if sent >= total {
            return None;
        }
        if fail_after.is_some_and(|f| sent >= f) {
            // An error in the body makes hyper abort the connection mid-body.
            let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated console reset");
            return Some((Err(err), (total, line)));
        }
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut line_no = line;
        if sent == 0 {
            chunk.extend_from_slice(b"timestamp,actor,event,door,result\n");
        }
        while (chunk.len() as u64) < 64 * 1024 - 128 && sent + (chunk.len() as u64) < total {
            line_no += 1;
            let row = format!(
                "{},member-{},access.door.unlock,Front Door,ACCESS\n",
                now_secs() - line_no as i64,
                line_no % 997
            );
            chunk.extend_from_slice(row.as_bytes());
        }
        chunk.truncate((total - sent).min(chunk.len() as u64) as usize);
        let n = chunk.len() as u64;
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))),
            (sent + n, line_no),
        ))
    });
    let mut r = Response::new(StreamBody::new(stream.boxed()).map_err(Into::into).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(
        "content-disposition",
        HeaderValue::from_static("attachment; filename=\"system_logs.csv\""),
    );
    Ok(r)
}
