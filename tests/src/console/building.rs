//! The simulated building: the physical world a console hears about. A
//! credential presented at a reader, a doorbell pressed, a door opened or
//! closed, a device dropping off the network and coming back, each with the
//! events, webhooks and system-log entries a console produces.
//!
//! In-process, tests call [`super::RunningConsole`]'s methods. The
//! `console-sim` binary offers the same on a control listener of its own,
//! separate from the API and off unless asked for (`--control ADDR`,
//! loopback by default): plain HTTP, JSON in and out.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /credential` | `{"door_id", "type": "nfc"\|"pin_code"\|"face", "value"}` | `{"granted", "reason"}` |
//! | `POST /doorbell` | `{"device_id"}` | `{"rang": true}` |
//! | `POST /door` | `{"door_id", "position": "open"\|"close"}` | `{"position"}` |
//! | `POST /device` | `{"device_id", "online": true\|false}` | `{"online"}` |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::door::{self, Presented};
use super::reply::s;
use super::state::{now_secs, Inner};
use super::Ctx;

/// A credential at `door_id`: `None` for an unknown door.
pub fn present(ctx: &Ctx, door_id: &str, presented: &Presented) -> Option<(bool, String)> {
    let outcome = ctx.state.with(|db| door::attempt(db, door_id, presented, now_secs()))?;
    let answer = (outcome.granted, outcome.reason.clone());
    ctx.publish(outcome);
    Some(answer)
}

/// A doorbell pressed at a reader: `access.hw.door_bell`, then the
/// `access.remote_view` ring; `false` for an unknown device.
pub fn ring(ctx: &Ctx, device_id: &str) -> bool {
    let rung = ctx.state.with(|db| {
        let device = db.collection("devices").get(device_id).cloned()?;
        let hw = json!({"event": "access.hw.door_bell", "receiver_id": "", "event_object_id": device["location_id"],
                        "save_to_history": false,
                        "data": {"device_id": device_id, "device_name": device["name"], "door_id": device["location_id"]}});
        let (_, view) = super::devices::doorbell(db, device_id, &json!({"room_name": ""})).ok()?;
        Some([hw, view])
    });
    for e in rung.iter().flatten() {
        let _ = ctx.events.send(e.to_string());
    }
    rung.is_some()
}

/// A door opened or closed by hand: its position, and the location update.
pub fn door_position(ctx: &Ctx, door_id: &str, open: bool) -> bool {
    let event = ctx.state.with(|db: &mut Inner| {
        let door = db.collection("doors").get_mut(door_id)?;
        door["door_position_status"] = json!(if open { "open" } else { "close" });
        let door = door.clone();
        let lock = if db.lock_rules.contains_key(door_id) {
            "unlocked"
        } else {
            "locked"
        };
        db.log(
            "door_openings",
            "access.door.position",
            &format!("{} {}", s(&door, "name"), if open { "opened" } else { "closed" }),
            door_id,
        );
        Some(door::location_update(&door, lock, db))
    });
    if let Some(e) = &event {
        let _ = ctx.events.send(e.to_string());
    }
    event.is_some()
}

/// A device dropping off the network or back: `is_online`, and the device update.
pub fn device_online(ctx: &Ctx, device_id: &str, online: bool) -> bool {
    let event = ctx.state.with(|db| {
        let d = db.collection("devices").get_mut(device_id)?;
        d["is_online"] = json!(online);
        d["is_connected"] = json!(online);
        let d = d.clone();
        Some(json!({
            "event": "access.data.v2.device.update", "receiver_id": "", "event_object_id": device_id,
            "save_to_history": false,
            "data": {"id": device_id, "name": d["name"], "alias": d["alias"], "online": online,
                     "device_type": d["type"], "category": [if d["type"] == "UAH-DOOR" { "hub" } else { "reader" }]},
            "meta": {"object_type": "device", "target_field": ["online"], "all_field": false, "id": device_id, "source": ""},
        }))
    });
    if let Some(e) = &event {
        let _ = ctx.events.send(e.to_string());
    }
    event.is_some()
}

/// Serves the control listener until the console stops.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, ctx.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "the body could not be read (64 KiB at most)"}),
            ))
        }
    };
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "the body is not JSON"}),
        ));
    };
    let unknown = |what: &str| answer(StatusCode::NOT_FOUND, json!({"error": format!("no such {what}")}));
    Ok(match (method, path.as_str()) {
        (Method::POST, "/credential") => {
            let value = s(&b, "value").to_string();
            let presented = match s(&b, "type") {
                "nfc" => Presented::Nfc(value),
                "pin_code" => Presented::Pin(value),
                "face" => Presented::Face(value),
                _ => {
                    return Ok(answer(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "type is nfc, pin_code or face"}),
                    ))
                }
            };
            match present(&ctx, s(&b, "door_id"), &presented) {
                Some((granted, reason)) => answer(StatusCode::OK, json!({"granted": granted, "reason": reason})),
                None => unknown("door"),
            }
        }
        (Method::POST, "/doorbell") if ring(&ctx, s(&b, "device_id")) => answer(StatusCode::OK, json!({"rang": true})),
        (Method::POST, "/doorbell") => unknown("device"),
        (Method::POST, "/door") => match s(&b, "position") {
            p @ ("open" | "close") if door_position(&ctx, s(&b, "door_id"), p == "open") => {
                answer(StatusCode::OK, json!({"position": p}))
            }
            "open" | "close" => unknown("door"),
            _ => answer(StatusCode::BAD_REQUEST, json!({"error": "position is open or close"})),
        },
        (Method::POST, "/device") => match b["online"].as_bool() {
            Some(online) if device_online(&ctx, s(&b, "device_id"), online) => {
                answer(StatusCode::OK, json!({"online": online}))
            }
            Some(_) => unknown("device"),
            None => answer(StatusCode::BAD_REQUEST, json!({"error": "online is true or false"})),
        },
        _ => answer(
            StatusCode::NOT_FOUND,
            json!({"error": "POST /credential, /doorbell, /door or /device"}),
        ),
    })
}

/// Binds `listen` and serves the control listener in the background.
pub async fn start(listen: SocketAddr, ctx: Arc<Ctx>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, ctx));
    Ok(addr)
}
