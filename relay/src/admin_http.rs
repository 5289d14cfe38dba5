//! The admin listener: `/healthz` and `/readyz` for load balancers and
//! supervisors, `/metrics` for Prometheus, and the operator's web console
//! under `/console/` ([`crate::operator`]), on a separate address that
//! defaults to loopback (`admin_listen`). Plain HTTP there (reach it
//! through an SSH tunnel), or TLS with the relay's public certificate
//! (`admin_tls`) to reach it from elsewhere.

use std::convert::Infallible;
use std::net::SocketAddr;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agents::AgentTable;
use crate::operator::{AdminBody, Console};
use crate::sites::SiteCache;

/// How long a TLS client of the admin listener may take to say hello.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin endpoints until `stop`; over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    agents: AgentTable,
    sites: SiteCache,
    console: Arc<Console>,
    stop: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { warn!("admin accept: {e}"); continue }
            },
        };
        let (agents, sites, console) = (agents.clone(), sites.clone(), console.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let io = match acceptor {
                None => Io::Plain(tcp),
                Some(a) => match tokio::time::timeout(TLS_HANDSHAKE, a.accept(tcp)).await {
                    Ok(Ok(tls)) => Io::Tls(Box::new(tls)),
                    Ok(Err(e)) => return debug!(%peer, "admin TLS handshake: {e}"),
                    Err(_) => return debug!(%peer, "admin TLS handshake timed out"),
                },
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (agents, sites, console) = (agents.clone(), sites.clone(), console.clone());
                async move {
                    let path = req.uri().path();
                    let resp = if path == "/console" || path.starts_with("/console/") {
                        console.handle(req, peer).await
                    } else {
                        handle(&req, &agents, &sites)
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let served = match io {
                Io::Plain(tcp) => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await
                }
                Io::Tls(tls) => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                }
            };
            if let Err(e) = served {
                debug!(%peer, "admin connection: {e}");
            }
        });
    }
}

fn handle(req: &Request<Incoming>, agents: &AgentTable, sites: &SiteCache) -> Response<AdminBody> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "sites": sites.len(), "agents_online": agents.all().len()}).to_string(),
        ),
        // Serving means the listeners are bound and the registry loaded.
        (&Method::GET, "/readyz") => (StatusCode::OK, r#"{"status":"ready"}"#.to_string()),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::METRICS.encode())).boxed_unsync());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            return resp;
        }
        _ => (StatusCode::NOT_FOUND, r#"{"status":"not found"}"#.to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An admin connection, plain or TLS.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// The admin listener's TLS: the public front's certificate, HTTP/1.1.
pub fn tls_config(public: keyway_certs::PublicCert) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = keyway_certs::tls::https_server(public, false)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
