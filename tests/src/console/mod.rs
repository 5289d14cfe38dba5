//! A simulated UniFi Access console, built from the published OpenAPI
//! description (`shared/unifi/openapi.yaml`): HTTPS on a self-signed
//! certificate, Bearer-token auth, the `{code,msg,data}` envelope, pagination,
//! in-memory state, multipart uploads, binary downloads, a streamed log export,
//! an optional 429 throttle and the notification WebSocket.
//!
//! Test hooks (never sent by real clients): `x-sim-delay-ms` delays the
//! answer; `x-sim-export-bytes` sizes the log export.

// A handler's error arm is the finished error response: returning it by value is
// the point, and the console is a test fixture, not a hot path.
#![allow(clippy::result_large_err)]

mod building;
mod credentials;
mod described;
mod devices;
pub mod door;
mod files;
mod people;
mod reply;
mod space;
pub mod state;
pub mod webhooks;
mod ws;

pub use ws::{base_info, DEFAULT_KEEPALIVE, HELLO_FRAME};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use http::header::{HeaderValue, AUTHORIZATION};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyway_certs::Fingerprint;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use door::Presented;
pub use files::{qr_image, EXPORT_BYTES_HEADER, FAIL_AFTER_HEADER};
use reply::{err, read_json, Reply, SimBody};
pub use state::{DOOR_IDS, HUB_ID};

/// Test hook header: milliseconds to wait before answering.
pub const DELAY_HEADER: &str = "x-sim-delay-ms";

/// A fixed-window request limit, answered with 429 like a busy console.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Requests allowed per window.
    pub max_requests: u32,
    /// Window length.
    pub window: Duration,
}

/// The console's certificate and key, so a restarted console keeps its pin.
#[derive(Clone)]
pub struct Identity {
    /// Self-signed certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its PKCS#8 key, DER.
    pub key: Vec<u8>,
}

impl Identity {
    /// A fresh self-signed identity, like a console's factory certificate.
    pub fn generate() -> anyhow::Result<Self> {
        let ck = rcgen_self_signed()?;
        Ok(ck)
    }

    /// SHA-256 fingerprint of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }
}

fn rcgen_self_signed() -> anyhow::Result<Identity> {
    // The real console's certificate names neither the LAN IP nor a DNS name
    // a client would use; pinning is the only way to trust it.
    let ck = keyway_certs::self_signed(&["unifi.local".to_string()])?;
    Ok(Identity { cert: ck.0, key: ck.1 })
}

/// How to start a console.
#[derive(Clone)]
pub struct ConsoleOptions {
    /// Listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// The API token clients must send as `Authorization: Bearer …`.
    pub token: String,
    /// Optional 429 throttle.
    pub throttle: Option<Throttle>,
    /// Certificate to serve; generated when `None`.
    pub identity: Option<Identity>,
    /// How often each event WebSocket gets a keep-alive text frame, as a
    /// real console sends one ([`ws::DEFAULT_KEEPALIVE`]).
    pub keepalive: Duration,
    /// A CA trusted for HTTPS webhook receivers, besides the web PKI.
    pub webhook_ca: Option<rustls_pki_types::CertificateDer<'static>>,
}

impl ConsoleOptions {
    /// Loopback, port 0, the given token.
    pub fn new(token: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("constant"),
            token: token.into(),
            throttle: None,
            identity: None,
            keepalive: ws::DEFAULT_KEEPALIVE,
            webhook_ca: None,
        }
    }
}

/// How many requests [`RunningConsole::requests_seen`] remembers (bounded,
/// so a benchmark's millions of requests cost no memory).
pub const SEEN_KEPT: usize = 4096;

struct Ctx {
    token: String,
    state: state::State,
    events: broadcast::Sender<String>,
    kick: tokio::sync::watch::Sender<u64>,
    webhooks: webhooks::Sender,
    ws_accepted: std::sync::atomic::AtomicUsize,
    /// `METHOD path?query` of the last [`SEEN_KEPT`] requests, as received.
    seen: Mutex<std::collections::VecDeque<String>>,
    /// The same requests' heads, as received.
    heads: Mutex<std::collections::VecDeque<http::request::Parts>>,
    keepalive: Duration,
    webhook_ca: Option<rustls_pki_types::CertificateDer<'static>>,
    throttle: Option<(Throttle, Mutex<(Instant, u32)>)>,
    stop: CancellationToken,
}

/// A running console.
pub struct RunningConsole {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Its certificate and key.
    pub identity: Identity,
    /// The API token.
    pub token: String,
    ctx: Arc<Ctx>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RunningConsole {
    /// Binds and starts serving.
    pub async fn start(opts: ConsoleOptions) -> anyhow::Result<Self> {
        let identity = match opts.identity {
            Some(i) => i,
            None => Identity::generate()?,
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.clone()));
        let mut tls = rustls::ServerConfig::builder_with_provider(keyway_certs::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![identity.cert.clone()], key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("could not bind {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Ctx {
            token: opts.token.clone(),
            state: state::State::new(),
            events: broadcast::channel(256).0,
            kick: tokio::sync::watch::channel(0).0,
            webhooks: webhooks::Sender::new(opts.webhook_ca.as_ref())?,
            ws_accepted: Default::default(),
            seen: Mutex::default(),
            heads: Mutex::default(),
            keepalive: opts.keepalive,
            webhook_ca: opts.webhook_ca.clone(),
            throttle: opts.throttle.map(|t| (t, Mutex::new((Instant::now(), 0)))),
            stop: CancellationToken::new(),
        });
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(tls)), ctx.clone()));
        Ok(Self {
            addr,
            url: format!("https://{addr}"),
            identity,
            token: opts.token,
            ctx,
            task: Mutex::new(Some(task)),
        })
    }

    /// SHA-256 fingerprint of the console's certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// Sends an event to every WebSocket listener.
    pub fn emit(&self, event: &Value) {
        let _ = self.ctx.events.send(event.to_string());
    }

    /// A stored static file (uploaded avatars), by path under `system/static/`.
    pub fn static_file(&self, path: &str) -> Option<bytes::Bytes> {
        self.ctx.state.with(|db| db.static_files.get(path).cloned())
    }

    /// A credential presented at a door's reader (the simulated building):
    /// the door's rules decide, and the outcome is logged and streamed as a
    /// console does (`access.logs.add`, and on opening the location update
    /// and the `access.door.unlock` webhook). `None` for an unknown door;
    /// else whether it opened, and why.
    pub fn present(&self, door_id: &str, presented: door::Presented) -> Option<(bool, String)> {
        building::present(&self.ctx, door_id, &presented)
    }

    /// A doorbell pressed at a reader; `false` for an unknown device.
    pub fn ring(&self, device_id: &str) -> bool {
        building::ring(&self.ctx, device_id)
    }

    /// A door opened or closed by hand; `false` for an unknown door.
    pub fn door_position(&self, door_id: &str, open: bool) -> bool {
        building::door_position(&self.ctx, door_id, open)
    }

    /// A device dropping off the network or coming back.
    pub fn device_online(&self, device_id: &str, online: bool) -> bool {
        building::device_online(&self.ctx, device_id, online)
    }

    /// Serves the building's control listener on `listen` (see
    /// `building`); its address.
    pub async fn control(&self, listen: SocketAddr) -> std::io::Result<SocketAddr> {
        building::start(listen, self.ctx.clone()).await
    }

    /// A credential unlock at the door (NFC, PIN, face, mobile): like a real
    /// console, it is sent only as an `access.door.unlock` webhook, never on
    /// the WebSocket. Returns the payload, or `None` for an unknown door.
    pub fn credential_unlock(&self, door_id: &str, actor_name: &str, auth: &str) -> Option<Value> {
        let (targets, event) = self.ctx.state.with(|db| {
            let door = db.collection("doors").get(door_id).cloned()?;
            let event = webhooks::door_unlock(&door, "u-1", actor_name, auth);
            Some((webhooks::targets(db, "access.door.unlock"), event))
        })?;
        self.ctx.webhooks.deliver(targets, &event);
        Some(event)
    }

    /// The HTTP status of each webhook delivery so far (0: not delivered).
    pub fn webhook_deliveries(&self) -> Vec<u16> {
        self.ctx.webhooks.deliveries()
    }

    /// Drops every WebSocket listener's connection (as a console reboot or
    /// a network blip would); the console keeps serving.
    pub fn kick_listeners(&self) {
        self.ctx.kick.send_modify(|n| *n += 1);
    }

    /// WebSocket upgrades accepted since the console started.
    pub fn websockets_accepted(&self) -> usize {
        self.ctx.ws_accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `METHOD path?query` of the last requests the console received (up
    /// to [`SEEN_KEPT`]), as it received them: what reached the console.
    pub fn requests_seen(&self) -> Vec<String> {
        self.ctx
            .seen
            .lock()
            .expect("request log lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// The heads of the last requests the console received (as
    /// [`RunningConsole::requests_seen`]), the agent's own event stream
    /// left out: what an integration's requests became at the console.
    pub fn heads_seen(&self) -> Vec<http::request::Parts> {
        self.ctx
            .heads
            .lock()
            .expect("request log lock poisoned")
            .iter()
            .filter(|p| p.uri.path() != "/api/v1/developer/devices/notifications")
            .cloned()
            .collect()
    }

    /// Number of WebSocket listeners.
    pub fn listeners(&self) -> usize {
        self.ctx.events.receiver_count()
    }

    /// Stops listening and closes every connection (the port is free after).
    pub async fn stop(&self) {
        self.ctx.stop.cancel();
        let task = self.task.lock().expect("task lock poisoned").take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Options that start an identical console (same port, certificate, token).
    pub fn restart_options(&self) -> ConsoleOptions {
        ConsoleOptions {
            listen: self.addr,
            token: self.token.clone(),
            throttle: self.ctx.throttle.as_ref().map(|(t, _)| *t),
            identity: Some(self.identity.clone()),
            keepalive: self.ctx.keepalive,
            webhook_ca: self.ctx.webhook_ca.clone(),
        }
    }
}

async fn serve(listener: TcpListener, tls: TlsAcceptor, ctx: Arc<Ctx>) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, _) = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let _ = tcp.set_nodelay(true);
        let (tls, ctx) = (tls.clone(), ctx.clone());
        conns.spawn(async move {
            let stop = ctx.stop.clone();
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(req, ctx.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r { debug!("console connection: {e}") },
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<SimBody>, Infallible> {
    {
        let mut seen = ctx.seen.lock().expect("request log lock poisoned");
        if seen.len() == SEEN_KEPT {
            seen.pop_front();
        }
        seen.push_back(format!(
            "{} {}",
            req.method(),
            req.uri().path_and_query().map_or("", |pq| pq.as_str())
        ));
        let mut heads = ctx.heads.lock().expect("request log lock poisoned");
        if heads.len() == SEEN_KEPT {
            heads.pop_front();
        }
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.headers_mut() = req.headers().clone();
        heads.push_back(head.into_parts().0);
    }
    if let Some(ms) = req
        .headers()
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
    }
    if let Some(retry) = throttled(&ctx) {
        let mut r = err(StatusCode::TOO_MANY_REQUESTS, "CODE_SYSTEM_ERROR", "Too many requests.");
        r.headers_mut().insert("retry-after", HeaderValue::from(retry));
        return Ok(r);
    }
    // Compared as digests, so the time taken says nothing about the token.
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| Fingerprint::of(t.as_bytes()) == Fingerprint::of(ctx.token.as_bytes()));
    if !authorized {
        return Ok(err(
            StatusCode::UNAUTHORIZED,
            "CODE_UNAUTHORIZED",
            "You are not allowed to perform this action.",
        ));
    }
    Ok(route(req, &ctx).await.unwrap_or_else(|e| e))
}

impl Ctx {
    /// Sends what an attempt at a door produced: its events to every
    /// listener, its webhooks to their subscribers.
    fn publish(&self, outcome: door::Outcome) {
        for e in &outcome.events {
            let _ = self.events.send(e.to_string());
        }
        for (name, payload) in outcome.hooks {
            let targets = self.state.with(|db| webhooks::targets(db, name));
            self.webhooks.deliver(targets, &payload);
        }
    }
}

/// Seconds to wait if over the limit.
fn throttled(ctx: &Ctx) -> Option<u64> {
    let (t, window) = ctx.throttle.as_ref()?;
    let mut w = window.lock().expect("throttle lock poisoned");
    if w.0.elapsed() >= t.window {
        *w = (Instant::now(), 0);
    }
    w.1 += 1;
    (w.1 > t.max_requests).then(|| t.window.saturating_sub(w.0.elapsed()).as_secs().max(1))
}

async fn route(req: Request<Incoming>, ctx: &Ctx) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let q = query.as_deref();
    let Some(rest) = path.strip_prefix("/api/v1/developer/") else {
        return Err(reply::not_found("API path"));
    };
    let seg: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let st = &ctx.state;

    // Endpoints that take the request itself (upgrade, multipart, streams).
    match (&method, seg.as_slice()) {
        (&Method::GET, ["devices", "notifications"]) => {
            let top_log_count = ctx.state.with(|db| db.logs.len());
            let stream = ws::Stream {
                events: ctx.events.subscribe(),
                kick: ctx.kick.subscribe(),
                stop: ctx.stop.clone(),
                connect_frames: vec![HELLO_FRAME.to_string(), ws::base_info(top_log_count)],
                keepalive: ctx.keepalive,
            };
            let reply = ws::upgrade(req, stream);
            if reply.is_ok() {
                ctx.ws_accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            return reply;
        }
        (&Method::POST, ["users", id, "avatar"]) => {
            let id = id.to_string();
            let (parts, body) = req.into_parts();
            return files::upload_avatar(st, &id, &parts.headers, body).await;
        }
        (&Method::POST, ["api_server", "certificates"]) => {
            let (parts, body) = req.into_parts();
            files::multipart_field(&parts.headers, body, "cert").await?;
            return reply::ok(json!("success"));
        }
        (&Method::POST, ["credentials", "nfc_cards", "import"]) => {
            let (parts, body) = req.into_parts();
            let csv = files::multipart_field(&parts.headers, body, "file").await?;
            let csv = String::from_utf8(csv.to_vec()).map_err(|_| reply::invalid("the file is not UTF-8 text"))?;
            return st.with(|db| credentials::import(db, &csv));
        }
        (&Method::GET, ["system", "static", ..]) => return files::static_file(st, &seg[2..].join("/")),
        (&Method::GET, ["credentials", "qr_codes", "download", id]) => return files::qr_png(st, id),
        _ => {}
    }

    let headers = req.headers().clone();
    let body = read_json(req.into_body()).await?;
    let b = &body;
    // Held to the description's request schema; user registration has a
    // documented code of its own for missing names (people.rs).
    if !(method == Method::POST && seg == ["users"]) {
        described::check(&method, &seg, b)?;
    }
    if matches!((&method, seg.as_slice()), (&Method::POST, ["system", "logs", "export"])) {
        return files::export_logs(&headers, b);
    }
    if matches!((&method, seg.as_slice()), (&Method::POST, ["system", "logs"])) {
        return files::fetch_logs(st, q, b);
    }
    if let (&Method::PUT, ["doors", id, "unlock"]) = (&method, seg.as_slice()) {
        let (reply, outcome) = st.with(|db| space::unlock(db, id, b))?;
        ctx.publish(outcome);
        return reply;
    }

    // Operations that also stream an event, as a console does.
    let evented = st.with(|db| match (&method, seg.as_slice()) {
        (&Method::POST, ["devices", id, "doorbell"]) => Some(devices::doorbell(db, id, b).map(|(r, e)| (r, Some(e)))),
        (&Method::PUT, ["devices", id, "settings"]) => Some(devices::settings(db, id, Some(b))),
        (&Method::PUT, ["doors", "settings", "emergency"]) => Some(space::emergency(db, Some(b))),
        (&Method::PUT, ["doors", id, "lock_rule"]) => Some(space::lock_rule(db, id, Some(b))),
        _ => None,
    });
    if let Some(result) = evented {
        let (reply, event) = result?;
        if let Some(e) = event {
            let _ = ctx.events.send(e.to_string());
        }
        return reply;
    }

    st.with(|db| {
        use people::*;
        use Method as M;
        match (&method, seg.as_slice()) {
            (&M::POST, ["users"]) => create_user(db, b),
            (&M::GET, ["users"]) => list_users(db, q, false),
            (&M::GET, ["users", "search"]) => list_users(db, q, true),
            (&M::GET, ["users", id]) => get_user(db, id, q),
            (&M::PUT, ["users", id]) => update_user(db, id, b),
            (&M::DELETE, ["users", id]) => space::delete(db, "users", id),
            (&M::PUT, ["users", id, "access_policies"]) => assign_policies(db, "users", id, b),
            (&M::GET, ["users", id, "access_policies"]) => fetch_policies(db, "users", id),
            (&M::PUT, ["users", id, "nfc_cards"]) => credentials::bind(db, "users", id, b, false),
            (&M::PUT, ["users", id, "nfc_cards", "delete"]) => credentials::bind(db, "users", id, b, true),
            (&M::PUT, ["users", id, "license_plates"]) => credentials::add_plates(db, "users", id, b),
            (&M::DELETE, ["users", id, "license_plates", plate]) => credentials::remove_plate(db, "users", id, plate),
            (&M::PUT, ["users", "touch_passes", "assign"]) => credentials::batch_assign(db, b),
            (&M::PUT, ["users", user, "touch_passes", id]) => credentials::assign_pass(db, user, id, true),
            (&M::DELETE, ["users", user, "touch_passes", id]) => credentials::assign_pass(db, user, id, false),
            (&M::POST, ["users", "identity", "invitations"]) => devices::identity_invite(db, b),
            (&M::GET, ["users", "identity", "assignments"]) => devices::identity_available(),
            (&M::POST, ["users", id, "identity", "assignments"]) => devices::identity_assign(db, "users", id, Some(b)),
            (&M::GET, ["users", id, "identity", "assignments"]) => devices::identity_assign(db, "users", id, None),
            (&M::POST, ["user_groups", id, "identity", "assignments"]) => {
                devices::identity_assign(db, "user_groups", id, Some(b))
            }
            (&M::GET, ["user_groups", id, "identity", "assignments"]) => {
                devices::identity_assign(db, "user_groups", id, None)
            }
            (&M::PUT, ["users", id, "pin_codes"]) => assign_pin(db, "users", id, b),
            (&M::DELETE, ["users", id, "pin_codes"]) => unassign_pin(db, "users", id),

            (&M::POST, ["user_groups"]) => space::create_named(
                db,
                "user_groups",
                b,
                json!({"up_id": "", "up_ids": [], "users": [], "access_policy_ids": []}),
            ),
            (&M::GET, ["user_groups"]) => space::list(db, "user_groups"),
            (&M::GET, ["user_groups", id]) => space::get(db, "user_groups", id),
            (&M::PUT, ["user_groups", id]) => space::update(db, "user_groups", id, b),
            (&M::DELETE, ["user_groups", id]) => space::delete(db, "user_groups", id),
            (&M::POST, ["user_groups", id, "users"]) => group_members(db, id, b, false),
            (&M::POST, ["user_groups", id, "users", "delete"]) => group_members(db, id, b, true),
            (&M::GET, ["user_groups", id, "users"]) | (&M::GET, ["user_groups", id, "users", "all"]) => {
                list_group_members(db, id)
            }
            (&M::PUT, ["user_groups", id, "access_policies"]) => assign_policies(db, "user_groups", id, b),
            (&M::GET, ["user_groups", id, "access_policies"]) => fetch_policies(db, "user_groups", id),

            (&M::POST, ["visitors"]) => create_visitor(db, b),
            (&M::GET, ["visitors"]) => list_visitors(db, q),
            (&M::GET, ["visitors", id]) => space::get(db, "visitors", id),
            (&M::PUT, ["visitors", id]) => update_visitor(db, id, b),
            (&M::DELETE, ["visitors", id]) => delete_visitor(db, id, q),
            (&M::PUT, ["visitors", id, "pin_codes"]) => assign_pin(db, "visitors", id, b),
            (&M::DELETE, ["visitors", id, "pin_codes"]) => unassign_pin(db, "visitors", id),
            (&M::PUT, ["visitors", id, "nfc_cards"]) => credentials::bind(db, "visitors", id, b, false),
            (&M::PUT, ["visitors", id, "nfc_cards", "delete"]) => credentials::bind(db, "visitors", id, b, true),
            (&M::PUT, ["visitors", id, "license_plates"]) => credentials::add_plates(db, "visitors", id, b),
            (&M::DELETE, ["visitors", id, "license_plates", plate]) => {
                credentials::remove_plate(db, "visitors", id, plate)
            }
            (&M::PUT, ["visitors", id, "qr_codes"]) => visitor_qr(db, id, true),
            (&M::DELETE, ["visitors", id, "qr_codes"]) => visitor_qr(db, id, false),

            (&M::POST, ["access_policies", "holiday_groups"]) => {
                space::create_named(db, "holiday_groups", b, json!({"holidays": [], "is_default": false}))
            }
            (&M::GET, ["access_policies", "holiday_groups"]) => space::list_holiday_groups(db),
            (&M::GET, ["access_policies", "holiday_groups", id]) => space::get(db, "holiday_groups", id),
            (&M::PUT, ["access_policies", "holiday_groups", id]) => space::update(db, "holiday_groups", id, b),
            (&M::DELETE, ["access_policies", "holiday_groups", id]) => space::delete(db, "holiday_groups", id),
            (&M::POST, ["access_policies", "schedules"]) => space::create_named(
                db,
                "schedules",
                b,
                json!({"type": "access", "is_default": false, "week_schedule": {}}),
            ),
            (&M::GET, ["access_policies", "schedules"]) => space::list(db, "schedules"),
            (&M::GET, ["access_policies", "schedules", id]) => space::get(db, "schedules", id),
            (&M::PUT, ["access_policies", "schedules", id]) => space::update(db, "schedules", id, b),
            (&M::DELETE, ["access_policies", "schedules", id]) => space::delete(db, "schedules", id),
            (&M::POST, ["access_policies"]) => {
                space::create_named(db, "access_policies", b, json!({"resources": [], "schedule_id": ""}))
            }
            (&M::GET, ["access_policies"]) => space::list(db, "access_policies"),
            (&M::GET, ["access_policies", id]) => space::get(db, "access_policies", id),
            (&M::PUT, ["access_policies", id]) => space::update(db, "access_policies", id, b),
            (&M::DELETE, ["access_policies", id]) => space::delete(db, "access_policies", id),

            (&M::GET, ["door_groups", "topology"]) => space::topology(db),
            (&M::POST, ["door_groups"]) => {
                space::create_named(db, "door_groups", b, json!({"type": "access", "resources": []}))
            }
            (&M::GET, ["door_groups"]) => space::list(db, "door_groups"),
            (&M::GET, ["door_groups", id]) => space::get(db, "door_groups", id),
            (&M::PUT, ["door_groups", id]) => space::update(db, "door_groups", id, b),
            (&M::DELETE, ["door_groups", id]) => space::delete(db, "door_groups", id),
            (&M::GET, ["doors"]) => space::list(db, "doors"),
            (&M::GET, ["doors", "settings", "emergency"]) => space::emergency(db, None)?.0,
            (&M::GET, ["doors", id]) => space::get(db, "doors", id),
            (&M::GET, ["doors", id, "lock_rule"]) => space::lock_rule(db, id, None)?.0,
            (&M::GET, ["devices"]) => devices::list(db),
            (&M::GET, ["devices", id, "settings"]) => devices::settings(db, id, None).map(|(r, _)| r)?,
            (&M::GET, ["system", "logs", "resource", id]) => devices::log_resource(db, id),

            (&M::POST, ["credentials", "pin_codes"]) => generate_pin(),
            (&M::GET, ["credentials", "nfc_cards", "tokens"]) => credentials::list_cards(db, q),
            (&M::GET, ["credentials", "nfc_cards", "tokens", token]) => credentials::get_card(db, token),
            (&M::PUT, ["credentials", "nfc_cards", "tokens", token]) => credentials::update_card(db, token, b),
            (&M::DELETE, ["credentials", "nfc_cards", "tokens", token]) => credentials::delete_card(db, token),
            (&M::POST, ["credentials", "nfc_cards", "sessions"]) => credentials::start_session(db, b),
            (&M::GET, ["credentials", "nfc_cards", "sessions", id]) => credentials::session(db, id),
            (&M::DELETE, ["credentials", "nfc_cards", "sessions", id]) => credentials::end_session(db, id),
            (&M::GET, ["credentials", "touch_passes"]) => credentials::list_passes(db, q, "page"),
            (&M::POST, ["credentials", "touch_passes"]) => credentials::purchase(db, b),
            (&M::GET, ["credentials", "touch_passes", "search"]) => credentials::list_passes(db, q, "search"),
            (&M::GET, ["credentials", "touch_passes", "assignable"]) => credentials::list_passes(db, q, "assignable"),
            (&M::GET, ["credentials", "touch_passes", id]) => credentials::get_pass(db, id),
            (&M::PUT, ["credentials", "touch_passes", id]) => credentials::update_pass(db, id, b),

            (&M::GET, ["webhooks", "endpoints"]) => space::list(db, "webhooks"),
            (&M::POST, ["webhooks", "endpoints"]) => space::add_webhook(db, b),
            (&M::PUT, ["webhooks", "endpoints", id]) => space::update_webhook(db, id, b),
            (&M::DELETE, ["webhooks", "endpoints", id]) => space::delete(db, "webhooks", id),
            (&M::DELETE, ["api_server", "certificates"]) => reply::ok(json!("success")),
            _ => Err(reply::not_found("API path")),
        }
    })
}
