//! Which site a request is for, and the one spelling of its path.

use http::{Request, Uri};
use tracing::debug;

use super::error::{BadRequest, ProxyError};
use super::ProxyCtx;

/// Picks the site from the request's host.
pub(super) fn route<B>(req: &Request<B>, ctx: &ProxyCtx) -> Result<String, ProxyError> {
    let host = host(req)?;
    site_for_host(&host, ctx).ok_or_else(|| ProxyError::SiteNotFound {
        host,
        domain: ctx.domain.clone(),
    })
}

/// Whether the request names the relay itself (the bare domain, an IP
/// address or `localhost`) rather than a site.
pub fn is_for_relay<B>(req: &Request<B>, domain: &str) -> bool {
    host(req).is_ok_and(|h| is_bare(&h, domain))
}

/// The request's host, lowercase, from its target or `Host` (which must agree).
fn host<B>(req: &Request<B>) -> Result<String, ProxyError> {
    keyway_proto::host::request_host(req).map_err(|e| ProxyError::BadRequest(BadRequest::Host(e)))
}

/// Rewrites the request's path to its canonical form, so that every check
/// after this one, on the relay and on the agent, and the console read one
/// spelling; a path with no canonical form is refused with 400 here.
pub(super) fn canonicalize<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(());
    };
    if pq.as_str().len() > keyway_proto::MAX_URI_BYTES {
        return Err(ProxyError::UriTooLong(pq.as_str().len()));
    }
    let target = keyway_proto::path::canonical_target(pq.as_str()).map_err(|e| {
        debug!("refused path: {e}");
        ProxyError::BadRequest(BadRequest::Path(e))
    })?;
    let Some(target) = target else {
        return Ok(());
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(target.parse().map_err(|_| ProxyError::BadRequest(BadRequest::Target))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest(BadRequest::Target))?;
    Ok(())
}

/// `<site>.<domain>` → site; the bare domain, an IP or `localhost` → the default site.
fn site_for_host(host: &str, ctx: &ProxyCtx) -> Option<String> {
    let host = host.trim_end_matches('.');
    if is_bare(host, &ctx.domain) {
        return ctx.default_site.clone();
    }
    let label = host.strip_suffix(ctx.domain.as_str())?.strip_suffix('.')?;
    ctx.sites.contains(label).then(|| label.to_string())
}

/// The bare domain, `localhost` or an IP literal: the relay, not a site.
fn is_bare(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.');
    host == domain || host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::agents::AgentTable;

    fn ctx(default_site: Option<&str>) -> ProxyCtx {
        ProxyCtx {
            domain: "relay.example.com".into(),
            sites: crate::sites::SiteCache::with_sites(["hq", "branch-2"]),
            default_site: default_site.map(str::to_string),
            agents: AgentTable::default(),
            request_timeout: Duration::from_secs(1),
            upgrades: Default::default(),
            edge: Arc::new(crate::limits::Edge::new(Default::default())),
            observer: None,
            apt: None,
            cluster: None,
        }
    }

    #[test]
    fn routes_by_host() {
        let c = ctx(Some("hq"));
        assert_eq!(site_for_host("hq.relay.example.com", &c).as_deref(), Some("hq"));
        assert_eq!(
            site_for_host("branch-2.relay.example.com.", &c).as_deref(),
            Some("branch-2")
        );
        assert_eq!(site_for_host("relay.example.com", &c).as_deref(), Some("hq"));
        assert_eq!(site_for_host("127.0.0.1", &c).as_deref(), Some("hq"));
        assert_eq!(site_for_host("[::1]", &c).as_deref(), Some("hq"));
        assert_eq!(site_for_host("nope.relay.example.com", &c), None);
        assert_eq!(site_for_host("a.hq.relay.example.com", &c), None);
        assert_eq!(site_for_host("hqrelay.example.com", &c), None);
        assert_eq!(site_for_host("hq.evil.com", &c), None);
        assert_eq!(site_for_host("127.0.0.1", &ctx(None)), None);
    }

    fn request(target: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(target);
        if let Some(h) = host {
            b = b.header(http::header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_request_names_its_host_once() {
        let c = ctx(None);
        let site = |r: Request<()>| route(&r, &c).map_err(|e| format!("{e:?}"));
        assert_eq!(site(request("/x", Some("hq.relay.example.com"))).unwrap(), "hq");
        assert_eq!(site(request("https://HQ.relay.example.com/x", None)).unwrap(), "hq");
        assert!(site(request("/x", None)).unwrap_err().contains("Missing"));
        assert!(site(request("/x", Some("a b"))).unwrap_err().contains("Invalid"));
        let conflict = request("https://hq.relay.example.com/x", Some("branch-2.relay.example.com"));
        assert!(site(conflict).unwrap_err().contains("Conflict"));
        assert!(site(request("/x", Some("nope.relay.example.com")))
            .unwrap_err()
            .contains("SiteNotFound"));
    }

    #[test]
    fn paths_are_canonical_or_refused() {
        let mut r = request("/api/v1//developer/%64oors?x=%2F", None);
        canonicalize(&mut r).unwrap();
        assert_eq!(r.uri(), "/api/v1/developer/doors?x=%2F");
        let mut r = request("/api/v1/developer/doors%2Fx", None);
        assert!(matches!(
            canonicalize(&mut r),
            Err(ProxyError::BadRequest(BadRequest::Path(_)))
        ));
        let long = format!("/{}", "a".repeat(keyway_proto::MAX_URI_BYTES));
        let mut r = request(&long, None);
        assert!(matches!(canonicalize(&mut r), Err(ProxyError::UriTooLong(n)) if n == long.len()));
    }
}
