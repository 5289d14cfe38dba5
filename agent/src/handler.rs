//! What answers a request that came through the tunnel: the access checks,
//! then the event hub or the console, then one audit record.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use keyway_proto::envelope::HttpBody;

use crate::access::{Access, Credential};
use crate::audit::{template, Audit, Record};
use crate::console::Console;
use crate::error::{respond, AgentError, BadRequest};
use crate::hub::serve::{is_subscription, Subscribers};

/// The agent's side of every tunnel stream.
pub struct Handler {
    /// The console.
    pub console: Arc<Console>,
    /// Door-event subscribers, when the hub is on.
    pub events: Option<Arc<Subscribers>>,
    /// Who may call what.
    pub access: Access,
    /// The audit log, when it could be opened.
    pub audit: Option<Audit>,
    /// Counters and tunnel state for `status`.
    pub live: Arc<crate::live::Live>,
    /// The site's own TLS, for zero-knowledge connections (`tls_cert`).
    pub sealed: Option<Arc<rustls::ServerConfig>>,
    /// The relay's edge limits, applied to zero-knowledge requests.
    pub edge: crate::edge::AgentEdge,
}

impl Handler {
    /// Answers one request.
    pub async fn handle(&self, req: Request<HttpBody>) -> Response<HttpBody> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (request_id, client_ip) = (header("x-request-id"), header("x-forwarded-for"));
        // The relay sends canonical paths; checked again here, since the
        // policy below is the LAN owner's and trusts no one's spelling.
        let canonical = canonicalize(&mut parts.uri);
        let (method, path) = (parts.method.to_string(), template(parts.uri.path()));
        let request_bytes = content_length(&parts.headers);
        let authorized = match canonical {
            Err(refused) => Err((Credential::Anonymous, refused)),
            Ok(()) => self.access.authorize(&mut parts),
        };
        let (credential, resp) = match authorized {
            // The audit names who was refused, not just who got through.
            Err((who, refused)) => (Some(who), respond(refused)),
            Ok(credential) => {
                let req = Request::from_parts(parts, body);
                let resp = match &self.events {
                    Some(events) if is_subscription(&req) => events.subscribe(&self.console, req).await,
                    _ => self.console.forward(req).await,
                };
                (Some(credential), resp.unwrap_or_else(respond))
            }
        };
        self.live.record(resp.status().as_u16());
        if let Some(audit) = &self.audit {
            audit.record(Record {
                time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                request_id,
                credential: credential.unwrap_or(Credential::Anonymous).to_string(),
                client_ip,
                method,
                path,
                status: resp.status().as_u16(),
                request_bytes,
                response_bytes: content_length(resp.headers()),
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        resp
    }
}

/// Rewrites `uri` to its canonical path (see `keyway_proto::path`).
fn canonicalize(uri: &mut http::Uri) -> Result<(), AgentError> {
    let Some(pq) = uri.path_and_query() else {
        return Ok(());
    };
    let target =
        keyway_proto::path::canonical_target(pq.as_str()).map_err(|e| AgentError::BadRequest(BadRequest::Path(e)))?;
    if let Some(target) = target {
        let bad_target = |_| AgentError::BadRequest(BadRequest::Target);
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(target.parse().map_err(bad_target)?);
        *uri = http::Uri::from_parts(parts).map_err(|_| AgentError::BadRequest(BadRequest::Target))?;
    }
    Ok(())
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_canonicalizes_what_it_is_sent() {
        let mut uri: http::Uri = "/api/v1//developer/doors/x/%75nlock/?a=%2F".parse().unwrap();
        assert!(canonicalize(&mut uri).is_ok());
        assert_eq!(uri, "/api/v1/developer/doors/x/unlock?a=%2F");
        for bad in ["/api/v1/developer/doors%2Fx/unlock", "/api/v1/developer/x/../doors"] {
            let mut uri: http::Uri = bad.parse().unwrap();
            let refused = canonicalize(&mut uri).unwrap_err();
            assert!(matches!(refused, AgentError::BadRequest(BadRequest::Path(_))), "{bad}");
        }
    }
}
