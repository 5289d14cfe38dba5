//! A zero-knowledge site's connection: the relay routed the client's TLS
//! here unopened, with the client's address in front. This agent ends the
//! TLS with the site's own certificate and does what the relay does for a
//! site it terminates: routing by host, the edge's limits, the header
//! work; then every request goes to the [`Handler`] as a relay's would.
//! HTTP/1.1 and HTTP/2 (by ALPN), as the relay serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use keyway_proto::edge::Refusal;
use keyway_proto::envelope::{ErrorCode, HttpBody};
use keyway_proto::headers::{new_request_id, set_forwarded, set_upgrade, strip_hop_by_hop};
use keyway_proto::preamble::read_client;
use keyway_transport::TunnelStream;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::stream::STREAM_HEAD_TIMEOUT;
use crate::edge::{Admitted, Leaving};
use crate::handler::Handler;

/// Serves one sealed stream. `leaving` (the agent stops, or the tunnel is
/// retired) closes the connection once its requests under way are done:
/// the client reconnects through the relay to the next tunnel.
pub(super) async fn serve(mut stream: TunnelStream, handler: Arc<Handler>, leaving: Leaving) {
    let client = match timeout(STREAM_HEAD_TIMEOUT, read_client(&mut stream)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!("sealed stream without a client address: {e}"),
        Err(_) => return debug!("no client address within {STREAM_HEAD_TIMEOUT:?}"),
    };
    let Some(tls) = handler.sealed.clone() else {
        return warn!(
            %client,
            "the relay sent a zero-knowledge connection but this agent has no tls_cert/tls_key: \
             closed (set them in agent.toml, or `keyway-relay site mode SITE relay`)"
        );
    };
    let stream = super::linger::Lingering::new(stream);
    // The relay's deadline for a handshake and a head, as at its front.
    let read_head = handler.edge.header_read_timeout();
    let tls = match timeout(read_head, tokio_rustls::TlsAcceptor::from(tls).accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return debug!(%client, "client TLS handshake failed: {e}"),
        Err(_) => return debug!(%client, "client TLS handshake timed out"),
    };
    let sni: Option<Arc<str>> = tls.get_ref().1.server_name().map(|n| n.to_ascii_lowercase().into());
    let service = hyper::service::service_fn({
        let leaving = leaving.clone();
        move |req: Request<Incoming>| {
            let (handler, sni) = (handler.clone(), sni.clone());
            let leaving = leaving.clone();
            async move {
                let resp = request(req, &handler, client, sni.as_deref(), leaving).await;
                Ok::<_, std::convert::Infallible>(resp)
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_head)
        // hyper's ceilings above the edge's configurable limits, as at the relay.
        .max_headers(1000)
        .max_buf_size(keyway_proto::STREAM_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(keyway_proto::H2_KEEPALIVE))
        .keep_alive_timeout(keyway_proto::H2_KEEPALIVE)
        .max_header_list_size(keyway_proto::STREAM_BUFFER as u32);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = &mut conn => r,
        _ = leaving.token.cancelled() => {
            // An idle keep-alive connection closes now; one mid-request
            // finishes that request.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(%client, "zero-knowledge connection ended: {e}");
    }
}

/// One request: routed, admitted, given the relay's header work, answered.
async fn request(
    req: Request<Incoming>,
    handler: &Handler,
    client: SocketAddr,
    sni: Option<&str>,
    leaving: Leaving,
) -> Response<HttpBody> {
    let request_id = new_request_id();
    let mut resp = match misrouted(&req, sni) {
        Some(refused) => refused,
        // The relay's edge checks, on the client's own head.
        None => match handler.edge.admit(req, client.ip()).await {
            Ok(Admitted {
                mut req,
                hold,
                site,
                timeout: within,
                ping_every,
            }) => {
                as_edge(&mut req, client, &request_id);
                // A WebSocket's task holds the slots as long as it lives,
                // pings its client as the relay would, and closes with 1012
                // when this connection's tunnel retires.
                req.extensions_mut().insert(hold.clone());
                req.extensions_mut().insert(Leaving { ping_every, ..leaving });
                // The relay's `request_timeout`, as the relay would apply it.
                match timeout(within, handler.handle(req)).await {
                    Ok(resp) => crate::edge::holding(resp, hold),
                    Err(_) => {
                        debug!(%client, "no response head within {within:?}: 504");
                        keyway_proto::envelope::response(
                            ErrorCode::Timeout,
                            &keyway_proto::edge::timeout_message(&site, within),
                        )
                    }
                }
            }
            Err(refused) => refused,
        },
    };
    // As the relay tags every response it terminates.
    if let Ok(id) = http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

/// The relay's routing checks on a request whose TLS was for `sni`: a
/// host it cannot read (none, unparsable, or target and `Host` naming
/// different hosts) is 400, as at the relay; one naming another site of
/// the relay's domain gets the relay's 404. Other hosts (an address, the
/// bare domain) are this site's, as the relay's default site would be.
fn misrouted<B>(req: &Request<B>, sni: Option<&str>) -> Option<Response<HttpBody>> {
    let named = match keyway_proto::host::request_host(req) {
        Ok(host) => host,
        Err(e) => return Some(keyway_proto::envelope::response(ErrorCode::BadRequest, e.message())),
    };
    let (_, domain) = sni?.split_once('.')?;
    let named = named.trim_end_matches('.');
    let other_site = named != sni? && named.strip_suffix(domain).is_some_and(|s| s.ends_with('.'));
    other_site.then(|| {
        let refusal = Refusal::UnknownHost {
            host: named.to_string(),
            domain: domain.to_string(),
        };
        refusal.response("")
    })
}

/// What the relay does to a request it terminates, done here: hop-by-hop
/// headers gone (an upgrade re-declared), the client's forwarding claims
/// replaced (the request tagged with `request_id`), an origin-form target.
fn as_edge<B>(req: &mut Request<B>, client: SocketAddr, request_id: &str) {
    let headers = req.headers_mut();
    if let Some(proto) = strip_hop_by_hop(headers) {
        set_upgrade(headers, proto);
    }
    set_forwarded(headers, client.ip(), request_id);
    // The console is spoken to in HTTP/1.1, whatever the client spoke.
    *req.version_mut() = http::Version::HTTP_11;
    if req.uri().authority().is_some() {
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| http::Uri::from(pq.clone()))
            .unwrap_or_else(|| http::Uri::from_static("/"));
        *req.uri_mut() = target;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(host: &str) -> Request<()> {
        Request::get("/api/v1/developer/doors")
            .header("host", host)
            .body(())
            .unwrap()
    }

    #[test]
    fn another_sites_name_is_refused_and_other_hosts_are_this_sites() {
        let sni = Some("hq.relay.example");
        for host in [
            "hq.relay.example",
            "HQ.relay.example.:443",
            "127.0.0.1:8443",
            "relay.example",
            "[::1]:443",
        ] {
            assert!(misrouted(&to(host), sni).is_none(), "{host}");
        }
        let r = misrouted(&to("annex.relay.example:443"), sni).unwrap();
        assert_eq!(r.status(), 404);
        let h2 = Request::get("https://annex.relay.example/x").body(()).unwrap();
        assert_eq!(misrouted(&h2, sni).unwrap().status(), 404);
        assert!(misrouted(&to("annex.relay.example"), None).is_none());
        // What the relay refuses before routing, this agent refuses too.
        for bad in [
            to("not a host!"),
            Request::get("https://evil.example/x")
                .header("host", "hq.relay.example")
                .body(())
                .unwrap(),
            Request::get("/x").body(()).unwrap(),
        ] {
            assert_eq!(misrouted(&bad, sni).unwrap().status(), 400);
        }
    }
}
