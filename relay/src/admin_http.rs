//! The admin listener: `/healthz` and `/readyz` for load balancers and
//! supervisors, `/metrics` for Prometheus, and the operator's web console
//! under `/console/` ([`crate::operator`]), on a separate address that
//! defaults to loopback (`admin_listen`). Plain HTTP: keep it on loopback
//! (reach it through an SSH tunnel) or behind a TLS-terminating proxy.

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

/// Serves the admin endpoints until `stop`.
pub async fn serve(
    listener: TcpListener,
    agents: AgentTable,
    sites: SiteCache,
    console: Arc<Console>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { warn!("admin accept: {e}"); continue }
            },
        };
        let (agents, sites, console) = (agents.clone(), sites.clone(), console.clone());
        tokio::spawn(async move {
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
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
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

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
