//! The operator's console: a web page on the admin listener where the
//! people running a relay see every site, issue pairing codes and revoke
//! agents, signed in with an account (`keyway-relay operator add`).
//!
//! Server-rendered HTML, one stylesheet and one script compiled into the
//! binary. Every page but the sign-in page needs a session; every form
//! carries the session's CSRF token, and a request whose token is missing
//! or wrong, or whose `Origin` is another site, changes nothing. Actions go
//! through the same code as the CLI ([`crate::admin`]) and are logged with
//! the operator's name (target `keyway_relay::audit`).

pub mod accounts;
mod live;
mod pages;
pub mod session;
pub mod traffic;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agents::AgentTable;
use crate::config::RelayConfig;
use crate::registry::{now, Registry};
use crate::sites::SiteCache;
use accounts::SignIn;
use pages::{SiteRow, Viewer};
use session::{same_token, set_cookie, Sessions, COOKIE, LOGIN_COOKIE};

/// A response of the admin listener.
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// The biggest form the console reads.
const MAX_FORM: usize = 16 * 1024;
/// Sign-ins checked at once (argon2 is slow on purpose: a flood of them
/// must not take the relay's cores from its traffic).
const SIGN_INS_AT_ONCE: usize = 2;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The console's state.
pub struct Console {
    cfg: RelayConfig,
    registry: Registry,
    agents: AgentTable,
    sites: SiteCache,
    sessions: Sessions,
    checking: Semaphore,
    stop: CancellationToken,
}

impl Console {
    /// The console for this relay.
    pub fn new(
        cfg: RelayConfig,
        registry: Registry,
        agents: AgentTable,
        sites: SiteCache,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            registry,
            agents,
            sites,
            sessions: Sessions::default(),
            checking: Semaphore::new(SIGN_INS_AT_ONCE),
            stop,
        })
    }

    /// Answers a request under `/console`.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<AdminBody> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/console/assets/console.css") => return asset(CSS, "text/css; charset=utf-8"),
            (&Method::GET, "/console/assets/console.js") => return asset(JS, "text/javascript; charset=utf-8"),
            (&Method::GET, "/console") => return redirect("/console/", None),
            (&Method::GET, "/console/login") => return self.sign_in_page(StatusCode::OK, None).await,
            (&Method::POST, "/console/login") => {
                let form = match read_form(body).await {
                    Ok(f) => f,
                    Err(resp) => return resp,
                };
                return self.sign_in(&parts.headers, &form, peer).await;
            }
            _ => {}
        }
        let Some((token, session)) = self.sessions.of(&parts.headers) else {
            return if parts.method == Method::GET {
                redirect("/console/login", None)
            } else {
                page(
                    StatusCode::FORBIDDEN,
                    pages::message(None, "Sign in first", "This needs a signed-in operator."),
                )
            };
        };
        let viewer = Viewer {
            operator: &session.operator,
            csrf: &session.csrf,
        };
        let form = if parts.method == Method::POST {
            let form = match read_form(body).await {
                Ok(f) => f,
                Err(resp) => return resp,
            };
            let token_ok = form.get("csrf").is_some_and(|t| same_token(&session.csrf, t));
            if !token_ok || !same_origin(&parts.headers) {
                info!(target: "keyway_relay::audit", operator = %session.operator, %peer, path, "refused: missing or wrong CSRF token, or another origin");
                return page(
                    StatusCode::FORBIDDEN,
                    pages::message(
                        Some(&viewer),
                        "Refused",
                        "This form is stale or came from another page; nothing was changed. Reload and try again.",
                    ),
                );
            }
            form
        } else {
            HashMap::new()
        };
        let site_path = path
            .strip_prefix("/console/sites/")
            .map(|rest| rest.split('/').collect::<Vec<_>>());
        match (&parts.method, path.as_str(), site_path.as_deref()) {
            (&Method::GET, "/console/", _) => self.sites_page(&viewer, None).await,
            (&Method::GET, "/console/live", _) => {
                let mut resp = Response::new(live::stream(self.clone(), token.clone()).boxed_unsync());
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            (&Method::POST, "/console/logout", _) => {
                self.sessions.end(&token);
                info!(target: "keyway_relay::audit", operator = %session.operator, %peer, "signed out");
                redirect(
                    "/console/login",
                    Some(set_cookie(COOKIE, "", "/console", std::time::Duration::ZERO)),
                )
            }
            (&Method::POST, "/console/sites", _) => {
                let name = form
                    .get("name")
                    .map(|n| n.trim().to_ascii_lowercase())
                    .unwrap_or_default();
                self.issue(&viewer, &name, true, peer).await
            }
            (&Method::GET, _, Some([name])) => self.site_page(&viewer, name, StatusCode::OK, None).await,
            (&Method::POST, _, Some([name, "limits"])) => self.set_limits(&viewer, name, &form, peer).await,
            (&Method::POST, _, Some([name, "code"])) => self.issue(&viewer, name, false, peer).await,
            (&Method::POST, _, Some([name, "revoke"])) => {
                let confirmed = form.get("confirm").is_some_and(|c| c.trim() == *name);
                self.revoke(&viewer, name, confirmed, peer).await
            }
            _ => page(
                StatusCode::NOT_FOUND,
                pages::message(Some(&viewer), "Not found", "There is no such page."),
            ),
        }
    }

    async fn sign_in_page(&self, status: StatusCode, problem: Option<&str>) -> Response<AdminBody> {
        let form_token = match session::random_token() {
            Ok(t) => t,
            Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"),
        };
        let none = self.registry.call(|s| s.operators()).await.is_ok_and(|o| o.is_empty());
        let mut resp = page(status, pages::sign_in(&form_token, problem, none));
        let cookie = set_cookie(
            LOGIN_COOKIE,
            &form_token,
            "/console/login",
            std::time::Duration::from_secs(3600),
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp
    }

    async fn sign_in(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let expected = session::cookie(headers, LOGIN_COOKIE).unwrap_or_default();
        let token_ok = form.get("csrf").is_some_and(|t| same_token(&expected, t));
        if !token_ok || !same_origin(headers) {
            info!(target: "keyway_relay::audit", %peer, "sign-in refused: missing or wrong CSRF token");
            return self
                .sign_in_page(StatusCode::FORBIDDEN, Some("This form is stale; try again."))
                .await;
        }
        let name = form
            .get("name")
            .map(|n| n.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let password = form.get("password").cloned().unwrap_or_default();
        let Ok(_turn) = self.checking.try_acquire() else {
            return self
                .sign_in_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    Some("Too many sign-ins at once; try again."),
                )
                .await;
        };
        let who = name.clone();
        let outcome = self
            .registry
            .call(move |s| accounts::sign_in(s, &who, &password, now()))
            .await;
        match outcome {
            Ok(SignIn::Accepted) => match self.sessions.start(&name) {
                Ok(token) => {
                    info!(target: "keyway_relay::audit", operator = %name, %peer, "signed in");
                    let mut resp = redirect("/console/", Some(set_cookie(COOKIE, &token, "/console", session::IDLE)));
                    let gone = set_cookie(LOGIN_COOKIE, "", "/console/login", std::time::Duration::ZERO);
                    if let Ok(v) = HeaderValue::from_str(&gone) {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                    resp
                }
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"),
            },
            Ok(SignIn::Refused) => {
                info!(target: "keyway_relay::audit", operator = %name, %peer, "sign-in refused: wrong name or password");
                self.sign_in_page(StatusCode::UNAUTHORIZED, Some("Wrong name or password."))
                    .await
            }
            Ok(SignIn::Locked { until }) => {
                info!(target: "keyway_relay::audit", operator = %name, %peer, until, "sign-in refused: account locked");
                let minutes = (until - now()).max(60) / 60;
                let text = format!(
                    "Too many failed sign-ins: this account is locked for {minutes} more minutes \
                     (or until `keyway-relay operator password {name}`)."
                );
                self.sign_in_page(StatusCode::TOO_MANY_REQUESTS, Some(&text)).await
            }
            Err(e) => {
                // The cause goes to the log, not to a visitor who has not
                // signed in.
                tracing::warn!(%peer, "sign-in could not be checked: {e}");
                self.sign_in_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("Cannot sign in now: the registry is unavailable. Try again shortly."),
                )
                .await
            }
        }
    }

    /// Brings this relay's site cache up to date after a change made here
    /// (the registry's change counter tells other processes' changes only)
    /// and cuts tunnels whose certificate was just revoked.
    async fn changed(&self) {
        match self.sites.reload(&self.registry).await {
            Ok(()) => crate::sites::enforce(&self.sites, &self.agents),
            Err(e) => tracing::warn!("could not reload sites after a console change: {e}"),
        }
    }

    /// Every site's row, online as the registry or this node's links say.
    async fn rows(&self) -> Result<Vec<SiteRow>, crate::registry::RegistryError> {
        let records = self.registry.call(|s| s.list_sites()).await?;
        let t = now();
        Ok(records
            .into_iter()
            .map(|r| {
                let (requests_hour, errors_hour) = traffic::TRAFFIC.last_hour(&r.name, t);
                SiteRow {
                    requests_hour,
                    errors_hour,
                    online: r.online || self.agents.get(&r.name).is_some(),
                    name: r.name,
                    last_seen: r.last_seen,
                    transport: r.transport,
                    agent_version: r.agent_version,
                    console_ok: r.console_ok,
                    console_problem: r.console_problem,
                    paired: r.paired,
                    code_expires: r.code_expires,
                    duplicate: r.duplicate,
                    cert_expires: r.cert_expires,
                    limits: r.limits,
                }
            })
            .collect())
    }

    async fn sites_page(&self, viewer: &Viewer<'_>, problem: Option<&str>) -> Response<AdminBody> {
        match self.rows().await {
            Ok(rows) => page(StatusCode::OK, pages::sites(viewer, &rows, problem)),
            Err(e) => page(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message(Some(viewer), "Registry unavailable", &e.to_string()),
            ),
        }
    }

    async fn site_page(
        &self,
        viewer: &Viewer<'_>,
        name: &str,
        status: StatusCode,
        notice: Option<pages::Notice<'_>>,
    ) -> Response<AdminBody> {
        let rows = match self.rows().await {
            Ok(rows) => rows,
            Err(e) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message(Some(viewer), "Registry unavailable", &e.to_string()),
                )
            }
        };
        let Some(row) = rows.iter().find(|r| r.name == name) else {
            return page(
                StatusCode::NOT_FOUND,
                pages::message(Some(viewer), "No such site", &format!("There is no site {name:?}.")),
            );
        };
        let link = self.agents.get(name);
        let limits = crate::admin::limits_view(&self.cfg, name, &row.limits);
        let detail = pages::SiteDetail {
            links: link
                .iter()
                .map(|l| {
                    format!(
                        "{} from {}, agent {}",
                        l.conn.kind(),
                        l.conn.remote_address(),
                        l.agent_version
                    )
                })
                .collect(),
            hub: link.as_ref().and_then(|l| l.hub_report()),
            day: traffic::TRAFFIC.day(name, now()),
            errors: traffic::TRAFFIC.recent_errors(name),
            limits: &limits,
        };
        page(status, pages::site(viewer, row, &detail, notice))
    }

    /// `site limits NAME FIELD=VALUE…` from the site page's form: every
    /// field it carries, set or (empty) unset.
    async fn set_limits(
        &self,
        viewer: &Viewer<'_>,
        name: &str,
        form: &HashMap<String, String>,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let changes: Vec<(String, String)> = crate::limits::FIELDS
            .iter()
            .filter_map(|(field, _)| form.get(*field).map(|v| (field.to_string(), v.clone())))
            .collect();
        let (cfg, registry, site) = (self.cfg.clone(), self.registry.clone(), name.to_string());
        let set = {
            let changes = changes.clone();
            tokio::task::spawn_blocking(move || crate::admin::set_site_limits_in(&cfg, &registry, &site, &changes))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r)
        };
        match set {
            Ok(limits) => {
                self.changed().await;
                let set: Vec<String> = limits
                    .limits
                    .iter()
                    .filter_map(|r| r.set.as_ref().map(|v| format!("{}={v}", r.field)))
                    .collect();
                info!(target: "keyway_relay::audit", operator = %viewer.operator, %peer, site = name, action = "site limits", limits = %set.join(" "), "limits set");
                self.site_page(
                    viewer,
                    name,
                    StatusCode::OK,
                    Some(pages::Notice {
                        text: "Limits saved; every relay applies them within a second.",
                        problem: false,
                    }),
                )
                .await
            }
            Err(e) => {
                let text = format!("Limits not changed: {e:#}");
                self.site_page(
                    viewer,
                    name,
                    StatusCode::BAD_REQUEST,
                    Some(pages::Notice {
                        text: &text,
                        problem: true,
                    }),
                )
                .await
            }
        }
    }

    /// `site add` (`new`) or `site code`, as the CLI does them.
    async fn issue(&self, viewer: &Viewer<'_>, name: &str, new: bool, peer: SocketAddr) -> Response<AdminBody> {
        let (cfg, registry, site) = (self.cfg.clone(), self.registry.clone(), name.to_string());
        let issued = tokio::task::spawn_blocking(move || {
            if new {
                crate::admin::add_site_in(&cfg, &registry, &site)
            } else {
                crate::admin::new_code_in(&cfg, &registry, &site)
            }
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        match issued {
            Ok(issued) => {
                self.changed().await;
                let action = if new { "site add" } else { "site code" };
                info!(target: "keyway_relay::audit", operator = %viewer.operator, %peer, site = %issued.site, action, "pairing code issued");
                let qr = qr_svg(&issued.command);
                page(StatusCode::OK, pages::code(viewer, &issued, &qr))
            }
            Err(e) if new => self.sites_page(viewer, Some(&format!("{e:#}"))).await,
            Err(e) => page(
                StatusCode::BAD_REQUEST,
                pages::message(Some(viewer), "No code issued", &format!("{e:#}")),
            ),
        }
    }

    async fn revoke(&self, viewer: &Viewer<'_>, name: &str, confirmed: bool, peer: SocketAddr) -> Response<AdminBody> {
        if !confirmed {
            return page(
                StatusCode::BAD_REQUEST,
                pages::message(
                    Some(viewer),
                    "Not revoked",
                    &format!("Type the site's name, {name}, to confirm; nothing was changed."),
                ),
            );
        }
        let (registry, site) = (self.registry.clone(), name.to_string());
        let revoked = tokio::task::spawn_blocking(move || crate::admin::revoke_in(&registry, &site))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        match revoked {
            Ok(serial) => {
                self.changed().await;
                info!(target: "keyway_relay::audit", operator = %viewer.operator, %peer, site = name, serial = serial.as_deref().unwrap_or("-"), action = "site revoke", "agent revoked");
                let text = match serial {
                    Some(_) => format!("{name}'s agent is refused from now on; its tunnel closes within a second. Issue a new code to pair again."),
                    None => format!("{name} had no paired agent; its pending code, if any, is cancelled."),
                };
                page(StatusCode::OK, pages::message(Some(viewer), "Revoked", &text))
            }
            Err(e) => page(
                StatusCode::BAD_REQUEST,
                pages::message(Some(viewer), "Not revoked", &format!("{e:#}")),
            ),
        }
    }
}

/// The pairing command as an SVG QR code (empty if it cannot be drawn).
fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build();
            // Inline in HTML: no XML declaration.
            svg.find("<svg").map_or(svg.clone(), |i| svg[i..].to_string())
        }
        Err(_) => String::new(),
    }
}

/// The form in a request body (urlencoded), at most [`MAX_FORM`] bytes.
async fn read_form(body: Incoming) -> Result<HashMap<String, String>, Response<AdminBody>> {
    let bytes = match Limited::new(body, MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large")),
    };
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// Whether a browser's `Origin` (when it sends one) is this very host,
/// and its fetch metadata (when sent) is not cross-site.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

fn secured(mut resp: Response<AdminBody>) -> Response<AdminBody> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not no-referrer: with it a browser sends `Origin: null` on a form's
    // POST, and the same-origin check could not tell the console's own
    // forms from a sandboxed page's.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn full(text: impl Into<Bytes>) -> AdminBody {
    Full::new(text.into()).boxed_unsync()
}

fn page(status: StatusCode, html: String) -> Response<AdminBody> {
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secured(resp)
}

fn plain(status: StatusCode, text: &'static str) -> Response<AdminBody> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secured(resp)
}

fn asset(text: &'static str, kind: &'static str) -> Response<AdminBody> {
    let mut resp = Response::new(full(text));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    secured(resp)
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response<AdminBody> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    secured(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_this_host_may_post() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9090")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9090"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn the_qr_code_is_inline_svg() {
        let svg = qr_svg("keyway-agent pair ABC-DEFG --relay relay.example.com");
        assert!(
            svg.starts_with("<svg") && svg.ends_with("</svg>"),
            "{}",
            &svg[..40.min(svg.len())]
        );
    }
}
