//! Forwarding tunnel requests to the console over a pooled, pinned TLS client.
//!
//! The console answers HTTPS with a self-signed certificate; the client
//! accepts exactly the pinned one (see `keyway_certs::pin`). Connections are
//! kept warm in hyper's pool so a request through the tunnel does not pay a
//! TLS handshake to the console.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyway_certs::pin::find_pin_mismatch;
use keyway_certs::{ConsoleTrust, Fingerprint};
use keyway_proto::causes;
use keyway_proto::envelope::HttpBody;
use keyway_proto::headers::{set_upgrade, strip_hop_by_hop};
use tokio::time::timeout;
use tracing::{debug, warn, Instrument};

use crate::error::{AgentError, BadRequest, Timeout, Unreachable};

/// What the agent asks the console to check a subscriber's token: listing
/// devices needs `view:device`, the permission of the event stream.
const TOKEN_CHECK_PATH: &str = "/api/v1/developer/devices";

/// How long a health check may take (TCP connect and TLS handshake).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one side of an upgraded stream may stay open after the other closed.
const UPGRADE_LINGER: Duration = Duration::from_secs(5);

/// The console as seen from the agent.
pub struct Console {
    clients: std::sync::RwLock<Arc<Clients>>,
    /// The certificate trust the clients use; shared with the event hub's
    /// WebSocket, and replaced by a re-pin ([`Console::repin`]).
    trust: Arc<std::sync::RwLock<ConsoleTrust>>,
    base: Uri,
    host: HeaderValue,
    connect_timeout: Duration,
    head_timeout: Duration,
    /// Requests under way at the console (see [`CONSOLE_CONCURRENCY`]).
    busy: Arc<tokio::sync::Semaphore>,
}

/// Requests the agent has under way at the console at once, each until its
/// response body ends. The console is a small appliance, and each request
/// costs the Pi its buffers (up to [`CONSOLE_READ_BUFFER`] here and
/// [`keyway_proto::STREAM_BUFFER`] toward the relay): 200 concurrent exports
/// would otherwise hold ~100 MB. Beyond this, requests wait their turn (up
/// to the console timeout); door control and WebSockets never wait.
pub const CONSOLE_CONCURRENCY: usize = 64;

/// The pooled clients for one trust.
struct Clients {
    client: Client<HttpsConnector<HttpConnector>, HttpBody>,
    /// For the agent's own calls (token checks), which have no body.
    own: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Clients {
    fn new(trust: ConsoleTrust, connect_timeout: Duration) -> anyhow::Result<Self> {
        let tls = keyway_certs::tls::console_client(trust)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        // A response body is read in pieces of at most CONSOLE_READ_BUFFER:
        // with hundreds of streams at once, the read buffers are what a
        // Pi's memory holds.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(CONSOLE_CONCURRENCY)
            .http1_max_buf_size(CONSOLE_READ_BUFFER)
            .build(https.clone());
        let own = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .http1_max_buf_size(CONSOLE_READ_BUFFER)
            .build(https);
        Ok(Self { client, own })
    }
}

/// The most a console connection buffers (read side, response heads
/// included; a console's heads are a few hundred bytes).
pub const CONSOLE_READ_BUFFER: usize = 32 * 1024;

/// What the agent's console check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleHealth {
    /// A TLS handshake with the pinned certificate completed.
    Ok,
    /// No TCP connection or no TLS handshake in time.
    Unreachable,
    /// The console presents another certificate than the pinned one (as
    /// after a console update); the agent refuses it until re-pinned.
    CertificateChanged {
        /// The fingerprint pinned in `agent.toml`.
        pinned: Fingerprint,
        /// The fingerprint the console presents now.
        seen: Fingerprint,
    },
}

impl ConsoleHealth {
    /// Whether requests can reach the console.
    pub fn is_ok(&self) -> bool {
        *self == Self::Ok
    }

    /// What is wrong, for `status`, `site list` and the logs.
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Ok => None,
            Self::Unreachable => Some("unreachable".into()),
            Self::CertificateChanged { pinned, seen } => Some(format!(
                "certificate changed: pinned {pinned}, the console presents {seen}; if the change is expected \
                 (a console update), run `keyway-agent console pin` on the agent"
            )),
        }
    }
}

impl Console {
    /// A pooled client for the console at `base` (`https://host:port`).
    pub fn new(
        base: Uri,
        trust: ConsoleTrust,
        connect_timeout: Duration,
        head_timeout: Duration,
    ) -> anyhow::Result<Self> {
        if trust == ConsoleTrust::Insecure {
            warn!("console certificate verification is OFF (console_insecure): anyone on the LAN path can impersonate the console");
        }
        let clients = Clients::new(trust, connect_timeout)?;
        let host = HeaderValue::from_str(base.authority().map(|a| a.as_str()).unwrap_or_default())?;
        Ok(Self {
            clients: std::sync::RwLock::new(Arc::new(clients)),
            trust: Arc::new(std::sync::RwLock::new(trust)),
            base,
            host,
            connect_timeout,
            head_timeout,
            busy: Arc::new(tokio::sync::Semaphore::new(CONSOLE_CONCURRENCY)),
        })
    }

    /// The console `agent.toml` names, with its trust and timeouts.
    pub fn from_config(cfg: &crate::config::AgentConfig) -> anyhow::Result<Self> {
        Self::new(
            cfg.console_uri()?,
            cfg.console_trust()?,
            cfg.console_connect_timeout,
            cfg.console_timeout,
        )
    }

    fn clients(&self) -> Arc<Clients> {
        self.clients.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether no request is under way at the console.
    pub fn is_quiet(&self) -> bool {
        self.busy.available_permits() == CONSOLE_CONCURRENCY
    }

    /// The trust in force.
    pub fn trust(&self) -> ConsoleTrust {
        *self.trust.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The trust, shared (the event hub's WebSocket follows a re-pin).
    pub fn trust_cell(&self) -> Arc<std::sync::RwLock<ConsoleTrust>> {
        self.trust.clone()
    }

    /// Trusts `trust` from now on: new connections use it; pooled ones made
    /// under the old pin are dropped with the old clients.
    pub fn repin(&self, trust: ConsoleTrust) -> anyhow::Result<()> {
        let clients = Arc::new(Clients::new(trust, self.connect_timeout)?);
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = clients;
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = trust;
        Ok(())
    }

    /// The console's health: a TLS handshake (no request, no token, nothing
    /// logged on the console), its certificate compared with the pin.
    pub async fn health(&self) -> ConsoleHealth {
        let seen = timeout(HEALTH_TIMEOUT, crate::pair::console_fingerprint(&self.base)).await;
        match (seen, self.trust()) {
            (Ok(Ok(_)), ConsoleTrust::Insecure) => ConsoleHealth::Ok,
            (Ok(Ok(seen)), ConsoleTrust::Pinned(pinned)) if seen == pinned => ConsoleHealth::Ok,
            (Ok(Ok(seen)), ConsoleTrust::Pinned(pinned)) => ConsoleHealth::CertificateChanged { pinned, seen },
            _ => ConsoleHealth::Unreachable,
        }
    }

    /// Forwards one request from the tunnel to the console.
    pub async fn forward(&self, mut req: Request<HttpBody>) -> Result<Response<HttpBody>, AgentError> {
        let wants_upgrade = keyway_proto::headers::wants_upgrade(req.headers());
        let permit = if wants_upgrade || crate::access::is_door_control(req.method(), req.uri().path()) {
            None
        } else {
            match timeout(self.head_timeout, self.busy.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    return Err(AgentError::Timeout(Timeout::Busy {
                        slots: CONSOLE_CONCURRENCY,
                        after: self.head_timeout,
                    }))
                }
            }
        };
        let tunnel_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        // A zero-knowledge WebSocket's edge slots, held while it is open,
        // and the tunnel its client came through.
        let hold = req.extensions().get::<crate::edge::Hold>().cloned();
        let sealed = req.extensions().get::<crate::edge::Leaving>().cloned();
        let (mut parts, body) = req.into_parts();
        if let Some(proto) = strip_hop_by_hop(&mut parts.headers) {
            set_upgrade(&mut parts.headers, proto);
        }
        parts.headers.insert(HOST, self.host.clone());
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).map_err(|_| AgentError::BadRequest(BadRequest::Target))?;
        let mut resp = match timeout(
            self.head_timeout,
            self.clients().client.request(Request::from_parts(parts, body)),
        )
        .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.classify(&e)),
            Err(_) => {
                warn!("console did not answer within {:?}", self.head_timeout);
                return Err(AgentError::Timeout(Timeout::Head(self.head_timeout)));
            }
        };
        let upgrade = strip_hop_by_hop(resp.headers_mut());
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(tunnel), Some(proto)) = (tunnel_upgrade, upgrade) else {
                return Err(AgentError::ConsoleUnreachable(Unreachable::UnrequestedSwitch));
            };
            let websocket = proto.as_bytes().eq_ignore_ascii_case(b"websocket");
            set_upgrade(resp.headers_mut(), proto);
            let console = hyper::upgrade::on(&mut resp);
            match sealed.filter(|_| websocket) {
                // The client is this agent's own (a zero-knowledge site):
                // what the relay does for its WebSockets is done here,
                // pings and 1012 included, in the tunnel's tasks (which it
                // waits for, so the close frame gets out).
                Some(sealed) => {
                    let closing = sealed.token.clone().cancelled_owned();
                    let relayed = async move {
                        relay_websocket(tunnel, console, closing, sealed.ping_every).await;
                        drop(hold);
                    };
                    sealed.tasks.spawn(relayed.in_current_span());
                }
                None => {
                    let spliced = async move {
                        splice(tunnel, console).await;
                        drop(hold);
                    };
                    tokio::spawn(spliced.in_current_span());
                }
            }
        }
        // The turn ends with the body (an export streams for a while).
        Ok(resp.map(|b| match permit {
            Some(permit) => b
                .map_frame(move |f| {
                    let _turn = &permit;
                    f
                })
                .boxed_unsync(),
            None => b.boxed_unsync(),
        }))
    }

    /// Whether the console accepts `authorization` for reading devices (the
    /// permission its event stream needs); a refusal by the console is
    /// [`AgentError::Console`], its own answer.
    pub async fn check_token(&self, authorization: &HeaderValue) -> Result<(), AgentError> {
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static(TOKEN_CHECK_PATH));
        let uri = Uri::from_parts(uri).map_err(|_| AgentError::Internal("the token check's URI"))?;
        let req = Request::get(uri)
            .header(HOST, self.host.clone())
            .header(http::header::AUTHORIZATION, authorization.clone())
            .body(Full::new(Bytes::new()))
            .map_err(|_| AgentError::BadRequest(BadRequest::Authorization))?;
        let resp = match timeout(self.head_timeout, self.clients().own.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.classify(&e)),
            Err(_) => return Err(AgentError::Timeout(Timeout::TokenCheck)),
        };
        if resp.status().is_success() {
            return Ok(());
        }
        let (parts, body) = resp.into_parts();
        let body = match timeout(
            self.head_timeout,
            http_body_util::Limited::new(body, 64 * 1024).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        Err(AgentError::Console(Box::new(Response::from_parts(
            parts,
            Full::new(body).map_err(|never| match never {}).boxed_unsync(),
        ))))
    }

    /// One JSON call of the agent's own (with the stored console token):
    /// the status and the parsed body.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = Some(path.parse()?);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(Uri::from_parts(uri)?)
            .header(HOST, self.host.clone())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = timeout(self.head_timeout, self.clients().own.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("the console did not answer within {:?}", self.head_timeout))?
            .map_err(|e| anyhow::anyhow!("the console could not be reached: {}", causes::chain(&e)))?;
        let status = resp.status();
        let bytes = timeout(
            self.head_timeout,
            http_body_util::Limited::new(resp.into_body(), 1 << 20).collect(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the console's answer was too slow"))?
        .map_err(|e| anyhow::anyhow!("the console's answer: {e}"))?
        .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// What a failed console request means for the client.
    fn classify(&self, e: &hyper_util::client::legacy::Error) -> AgentError {
        if let Some(mismatch) = find_pin_mismatch(e) {
            warn!("refusing the console: {mismatch}");
            return AgentError::ConsoleCertificate(mismatch.to_string());
        }
        let detail = causes::chain(e);
        warn!(console = %self.base, "console request failed: {detail}");
        AgentError::ConsoleUnreachable(if e.is_connect() {
            Unreachable::Connect(detail)
        } else {
            Unreachable::Connection(detail)
        })
    }
}

/// A zero-knowledge site's WebSocket between its client and the console.
async fn relay_websocket(
    client: hyper::upgrade::OnUpgrade,
    console: hyper::upgrade::OnUpgrade,
    closing: impl std::future::Future<Output = ()>,
    ping_every: Duration,
) {
    match tokio::try_join!(client, console) {
        Ok((client, console)) => {
            keyway_proto::websocket::relay(TokioIo::new(client), TokioIo::new(console), closing, ping_every).await
        }
        Err(e) => debug!("upgrade failed: {e}"),
    }
}

async fn splice(tunnel: hyper::upgrade::OnUpgrade, console: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(tunnel, console) {
        Ok((t, c)) => {
            let (up, down) = keyway_proto::io::splice(TokioIo::new(t), TokioIo::new(c), UPGRADE_LINGER).await;
            debug!(up, down, "upgraded stream closed");
        }
        Err(e) => debug!("upgrade failed: {e}"),
    }
}
