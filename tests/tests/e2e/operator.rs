//! The operator's web console on the admin listener, over real sockets
//! against a real relay and agents: nothing but the sign-in page without a
//! session; a wrong password, a missing or forged CSRF token and another
//! origin change nothing; a site added on the page pairs a real agent with
//! the code it shows, and the live stream sees it come online and go when
//! revoked; repeated failures lock the account.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyway_relay::RelayConfig;
use keyway_tests::stack::{free_port, off_runtime, Stack};
use tokio_util::sync::CancellationToken;

/// One answer of the admin listener.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    /// The value a `Set-Cookie` gives `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(|c| c[name.len() + 1..].split(';').next().unwrap_or("").to_string())
    }

    /// The value of the form field `csrf` on the page.
    fn csrf(&self) -> String {
        between(&self.body, r#"name="csrf" value=""#, "\"").expect("a CSRF field")
    }
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_string())
}

/// A browser-ish client: one connection per request, a cookie header.
struct Browser {
    admin: SocketAddr,
    cookies: HashMap<String, String>,
}

impl Browser {
    async fn send(&mut self, method: Method, path: &str, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().copied())
            .finish();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.admin.to_string())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, jar.join("; "));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).to_string();
        let answer = Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        for name in ["keyway_operator", "keyway_signin"] {
            match answer.cookie(name) {
                Some(v) if v.is_empty() => {
                    self.cookies.remove(name);
                }
                Some(v) => {
                    self.cookies.insert(name.to_string(), v);
                }
                None => {}
            }
        }
        answer
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], &[]).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(Method::POST, path, form, &[]).await
    }

    async fn sign_in(&mut self, name: &str, password: &str) -> Answer {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = page.csrf();
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("name", name), ("password", password)],
        )
        .await
    }
}

/// The live stream of the sites table, read event by event.
struct Live {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Live {
    async fn open(browser: &Browser) -> Self {
        let tcp = tokio::net::TcpStream::connect(browser.admin).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let jar: Vec<String> = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let req = Request::get("/console/live")
            .header(header::HOST, browser.admin.to_string())
            .header(header::COOKIE, jar.join("; "))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        Self {
            body: resp.into_body(),
            buffer: String::new(),
        }
    }

    /// Waits (bounded) until the server ends the stream.
    async fn until_closed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.frame()).await {
                Ok(None) | Ok(Some(Err(_))) => return,
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("the live stream still runs 10 s after its session ended"),
            }
        }
    }

    /// Waits (bounded) for a `sites` event whose rows satisfy `want`.
    async fn until(&mut self, what: &str, want: impl Fn(&[serde_json::Value]) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = event.strip_prefix("event: sites\ndata: ") {
                    let rows: Vec<serde_json::Value> = serde_json::from_str(data.trim()).unwrap();
                    if want(&rows) {
                        return start.elapsed();
                    }
                }
            }
            let left = Duration::from_secs(15).saturating_sub(start.elapsed());
            assert!(!left.is_zero(), "no live update saying {what} within 15 s");
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no live update saying {what} within 15 s"))
                .expect("the stream ends only when asked")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

/// Pairs a new agent with `code` as `keyway-agent pair` does, and runs it
/// until the token is cancelled.
pub(crate) async fn pair_and_run(
    stack: &Stack,
    code: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = keyway_agent::pair::PairOptions {
        code: code.to_string(),
        relay: stack.relay_addr.to_string(),
        relay_ca: Some(stack.https_ca.clone()),
        console_url: stack.console.url.clone(),
        console: keyway_agent::pair::ConsolePin::Expect(stack.console.fingerprint()),
        config: dir.path().join("agent.toml"),
        state_dir: dir.path().to_path_buf(),
        force: true,
    };
    keyway_agent::pair::pair(&options).await.unwrap();
    let mut text = std::fs::read_to_string(&options.config).unwrap();
    if let Ok(t) = std::env::var("KEYWAY_TEST_TRANSPORT") {
        text.push_str(&format!("\ntransport = {t:?}\n"));
        std::fs::write(&options.config, text).unwrap();
    }
    let cfg = keyway_agent::AgentConfig::load(&options.config).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(keyway_agent::Agent::new(&cfg).unwrap().run(stop.clone()));
    (stop, task, dir)
}

/// A stack whose relay serves the console on its own admin address
/// (`extra`: more top-level settings), with its config.
pub(crate) async fn console_stack(extra: &str) -> (Stack, SocketAddr, RelayConfig) {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let admin = SocketAddr::new(ip, free_port(ip).unwrap());
    let stack = Stack::builder()
        .relay_extra(&format!("admin_listen = \"{admin}\"\n{extra}"))
        .start()
        .await
        .unwrap();
    let cfg = RelayConfig::load(&stack.relay_config).unwrap();
    (stack, admin, cfg)
}

/// Creates operator `name` as `keyway-relay operator add` does: its
/// generated password.
pub(crate) fn add_operator(cfg: &RelayConfig, name: &str) -> String {
    let cfg = cfg.clone();
    off_runtime(move || keyway_relay::admin::set_operator(&cfg, name, None, false))
        .unwrap()
        .expect("a generated password")
}

fn row<'a>(rows: &'a [serde_json::Value], site: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["name"] == site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_pairs_a_site_from_the_page_and_revokes_it() {
    let (stack, admin, cfg) = console_stack("").await;
    let password = add_operator(&cfg, "ada");
    let sites = |cfg: &RelayConfig| {
        let cfg = cfg.clone();
        off_runtime(move || keyway_relay::admin::list(&cfg)).unwrap()
    };
    let mut browser = Browser {
        admin,
        cookies: HashMap::new(),
    };

    // Without a session: the sign-in page, and nothing else.
    for path in ["/console/", "/console/live", "/console/sites/hq", "/console/nope"] {
        let r = browser.get(path).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers[header::LOCATION], "/console/login", "{path}");
        assert!(!r.body.contains("hq"), "{path}: {}", r.body);
    }
    for path in [
        "/console/sites",
        "/console/sites/hq/revoke",
        "/console/sites/hq/code",
        "/console/logout",
    ] {
        let r = browser.post(path, &[("name", "evil"), ("confirm", "hq")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(sites(&cfg).len(), 1, "nothing was added");
    assert!(sites(&cfg)[0].paired, "nothing was revoked");

    // Wrong password, missing sign-in token: refused.
    let wrong = browser.sign_in("ada", "not the password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong name or password"));
    assert!(wrong.cookie("keyway_operator").is_none());
    let tokenless = browser
        .post("/console/login", &[("name", "ada"), ("password", &password)])
        .await;
    assert_eq!(tokenless.status, StatusCode::FORBIDDEN);
    assert!(tokenless.cookie("keyway_operator").is_none());

    // Signed in: an HttpOnly, Secure, SameSite=Strict cookie.
    let ok = browser.sign_in("ada", &password).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let set = ok
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("keyway_operator="))
        .unwrap();
    for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(part), "{set}");
    }
    let page = browser.get("/console/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(r#"data-site="hq" class="online""#), "{}", page.body);
    assert!(page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let csrf = page.csrf();
    let mut live = Live::open(&browser).await;
    live.until("hq online", |rows| row(rows, "hq").is_some_and(|r| r["online"] == true))
        .await;

    // A form without the token, with a forged one, or from another origin
    // changes nothing.
    for (form, extra) in [
        (vec![("name", "annex")], vec![]),
        (vec![("name", "annex"), ("csrf", "0000")], vec![]),
        (
            vec![("name", "annex"), ("csrf", csrf.as_str())],
            vec![("origin", "https://evil.example")],
        ),
    ] {
        let r = browser.send(Method::POST, "/console/sites", &form, &extra).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{form:?} {extra:?}");
    }
    assert_eq!(sites(&cfg).len(), 1, "no site was added by a refused form");

    // Add a site on the page: its code, the command, a QR code.
    let added = browser
        .post("/console/sites", &[("name", "annex"), ("csrf", &csrf)])
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let code = between(&added.body, r#"<b id="code">"#, "</b>").unwrap();
    assert!(added.body.contains("keyway-agent pair ") && added.body.contains("<svg"));
    live.until("annex waiting for its agent", |rows| {
        row(rows, "annex").is_some_and(|r| r["online"] == false && r["code_expires"].is_number())
    })
    .await;

    // Pair a real agent with the code the page showed: the stream sees it
    // come online without a reload.
    let (agent_stop, agent, _dir) = pair_and_run(&stack, &code).await;
    let took = live
        .until("annex online", |rows| {
            row(rows, "annex").is_some_and(|r| r["online"] == true)
        })
        .await;
    eprintln!("annex shown online {took:?} after pairing");

    // Revocation asks for the name; then the agent is cut and shown offline.
    let unconfirmed = browser
        .post("/console/sites/annex/revoke", &[("csrf", &csrf), ("confirm", "hq")])
        .await;
    assert_eq!(unconfirmed.status, StatusCode::BAD_REQUEST);
    assert!(sites(&cfg).iter().any(|s| s.name == "annex" && s.paired));
    let revoked = browser
        .post("/console/sites/annex/revoke", &[("csrf", &csrf), ("confirm", "annex")])
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    live.until("annex offline", |rows| {
        row(rows, "annex").is_some_and(|r| r["online"] == false)
    })
    .await;
    assert!(sites(&cfg).iter().any(|s| s.name == "annex" && !s.paired));
    agent_stop.cancel();
    let _ = agent.await;

    // Signed out: the cookie no longer opens anything.
    let old = browser.cookies.clone();
    let out = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    // The page left open stops receiving rows.
    live.until_closed().await;
    browser.cookies = old;
    assert_eq!(browser.get("/console/").await.status, StatusCode::SEE_OTHER);

    // Five wrong passwords lock the account, even against the right one.
    for _ in 0..keyway_relay::operator::accounts::LOCK_AFTER {
        browser.sign_in("ada", "still not the password").await;
    }
    let locked = browser.sign_in("ada", &password).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{}", locked.body);
    assert!(locked.body.contains("locked"));
    // A new password unlocks it.
    let fresh = {
        let cfg = cfg.clone();
        off_runtime(move || keyway_relay::admin::set_operator(&cfg, "ada", None, true))
            .unwrap()
            .unwrap()
    };
    assert_eq!(browser.sign_in("ada", &fresh).await.status, StatusCode::SEE_OTHER);
    stack.shutdown().await.unwrap();
}

/// `admin_tls = true`: the console (and /healthz) over TLS with the
/// relay's own certificate, for operators who reach it from elsewhere;
/// plain HTTP to that port gets no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_over_tls_with_the_relays_certificate() {
    let (stack, admin, _) = console_stack("admin_tls = true\n").await;
    let api = keyway_tests::client::Api::new(&format!("https://{admin}"), &stack.https_ca_der, "unused");
    let login = api.get("/console/login").await.unwrap();
    assert_eq!(login.status, 200);
    assert!(String::from_utf8_lossy(&login.body).contains("Sign in"));
    assert!(login.headers.contains_key(header::SET_COOKIE));
    assert_eq!(api.get("/healthz").await.unwrap().status, 200);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("/console/login")
            .header(header::HOST, admin.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await
    })
    .await
    .unwrap();
    assert!(refused.is_err(), "plain HTTP got an answer: {refused:?}");
    stack.shutdown().await.unwrap();
}

/// The site page's limits form: the values in force and where they come
/// from; a change applies at once through the same code as `site limits`;
/// a bad value or a form without its token changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_on_the_site_page_apply_at_once() {
    let (stack, admin, cfg) = console_stack("[limits]\nsite_rate = 1000\n").await;
    let password = add_operator(&cfg, "ada");
    let mut browser = Browser {
        admin,
        cookies: HashMap::new(),
    };
    let stored = |cfg: &RelayConfig| {
        let cfg = cfg.clone();
        off_runtime(move || keyway_relay::admin::list(&cfg)).unwrap()[0]
            .limits
            .clone()
    };
    assert_eq!(browser.sign_in("ada", &password).await.status, StatusCode::SEE_OTHER);
    let page = browser.get("/console/sites/hq").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(r#"action="/console/sites/hq/limits""#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#">site_rate</label></td><td>1000</td><td>relay.toml</td>"#),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let api = stack.api();
    assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, StatusCode::OK);

    // Without the token: refused, nothing stored.
    let r = browser
        .post("/console/sites/hq/limits", &[("allow", "192.0.2.1")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(stored(&cfg).is_empty());

    // A bad value: the page says which, nothing stored.
    let r = browser
        .post(
            "/console/sites/hq/limits",
            &[("csrf", &csrf), ("allow", "192.0.2.1"), ("site_rate", "0")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body.contains("Limits not changed") && r.body.contains("site_rate: must be at least 1"),
        "{}",
        r.body
    );
    assert!(stored(&cfg).is_empty());

    // Saved: applied on the next request, shown with its source.
    let r = browser
        .post(
            "/console/sites/hq/limits",
            &[
                ("csrf", &csrf),
                ("allow", "192.0.2.1"),
                ("site_rate", ""),
                ("max_headers", ""),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Limits saved"), "{}", r.body);
    assert!(
        r.body
            .contains(r#">allow</label></td><td>192.0.2.1/32</td><td>site</td>"#),
        "{}",
        r.body
    );
    assert_eq!(stored(&cfg).get("allow").as_deref(), Some("192.0.2.1/32"));
    let refused = api.get("/api/v1/developer/doors").await.unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["code"], "CODE_KEYWAY_CLIENT_NOT_ALLOWED");

    // Cleared: anyone again, at once.
    let r = browser
        .post("/console/sites/hq/limits", &[("csrf", &csrf), ("allow", "")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(stored(&cfg).is_empty());
    assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, StatusCode::OK);
    stack.shutdown().await.unwrap();
}

/// Reloads `path` until its page contains `want` (bounded); how long it took.
async fn until_page(browser: &mut Browser, path: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let page = browser.get(path).await;
        if page.body.contains(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{path} never showed {want:?}: {}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent reports its event hub to the relay: the site page shows it
/// connected to the console's events, its subscribers and events, and when
/// the console's WebSocket goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_page_shows_the_agents_event_hub() {
    let (stack, admin, cfg) = console_stack("").await;
    let password = add_operator(&cfg, "ada");
    let mut browser = Browser {
        admin,
        cookies: HashMap::new(),
    };
    assert_eq!(browser.sign_in("ada", &password).await.status, StatusCode::SEE_OTHER);
    let site = "/console/sites/hq";
    until_page(
        &mut browser,
        site,
        "receiving the console&#39;s events; 0 subscribers; 0 events",
    )
    .await;

    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut l = stack.listen_events().await.unwrap();
        assert_eq!(
            l.next_text(Duration::from_secs(10)).await.unwrap(),
            keyway_tests::console::HELLO_FRAME
        );
        subscribers.push(l);
    }
    for i in 0..3 {
        stack
            .console
            .emit(&serde_json::json!({"event": "access.remote_view", "event_object_id": format!("ring-{i}")}));
        for l in &mut subscribers {
            l.next_event(Duration::from_secs(10)).await.unwrap();
        }
    }
    // Subscribers are reported within a second or two; events ride along.
    let took = until_page(&mut browser, site, "2 subscribers; 3 events").await;
    eprintln!("subscribers shown {took:?} after they joined");

    stack.console.stop().await;
    let took = until_page(&mut browser, site, "NOT connected to the console&#39;s events").await;
    eprintln!("the lost console WebSocket shown after {took:?}");
    for l in subscribers {
        l.close().await;
    }
    stack.shutdown().await.unwrap();
}
