//! The admin listener: `/healthz` and `/readyz` for load balancers and
//! supervisors, `/metrics` for Prometheus, on a
//! separate address that defaults to loopback (`admin_listen`). Plain HTTP:
//! it carries no secrets and must not be exposed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agents::AgentTable;
use crate::sites::SiteCache;

/// Serves the admin endpoints until `stop`.
pub async fn serve(listener: TcpListener, agents: AgentTable, sites: SiteCache, stop: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { warn!("admin accept: {e}"); continue }
            },
        };
        let (agents, sites) = (agents.clone(), sites.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (agents, sites) = (agents.clone(), sites.clone());
                async move { Ok::<_, Infallible>(handle(&req, &agents, &sites)) }
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

fn handle(req: &Request<Incoming>, agents: &AgentTable, sites: &SiteCache) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "sites": sites.len(), "agents_online": agents.all().len()}).to_string(),
        ),
        // Serving means the listeners are bound and the registry loaded.
        (&Method::GET, "/readyz") => (StatusCode::OK, r#"{"status":"ready"}"#.to_string()),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::METRICS.encode())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            return resp;
        }
        _ => (StatusCode::NOT_FOUND, r#"{"status":"not found"}"#.to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
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
