//! `keyway-bench console`: the operator console of a relay (started by
//! `bench/console`) with 1,000 sites: how long the sites page takes with
//! all of them listed, and whether it stays quick while 1,000 agents come
//! online at once and the live stream carries them to an open page.
//! Everything on loopback; the time measured is the whole exchange on a
//! new connection, an upper bound of the server's time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::stats::Latency;

/// What `bench/console` set up.
#[derive(Debug, Deserialize)]
pub struct ConsoleTargets {
    /// The relay's config.
    pub relay_config: PathBuf,
    /// Its QUIC (and HTTPS) address.
    pub relay: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    /// An operator and its password.
    pub operator: String,
    /// …
    pub password: String,
    /// Sites (and agents) to register and connect.
    pub sites: usize,
}

struct Admin {
    addr: SocketAddr,
    cookies: HashMap<String, String>,
}

impl Admin {
    async fn send(&mut self, method: http::Method, path: &str, form: &str) -> anyhow::Result<(StatusCode, String)> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::COOKIE, jar.join("; "))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_string())))?;
        let resp = sender.send_request(req).await?;
        for v in resp.headers().get_all(header::SET_COOKIE) {
            if let Some((name, rest)) = v.to_str()?.split_once('=') {
                let value = rest.split(';').next().unwrap_or("");
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn sign_in(&mut self, name: &str, password: &str) -> anyhow::Result<()> {
        let (_, page) = self.send(http::Method::GET, "/console/login", "").await?;
        let csrf = page
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .ok_or_else(|| anyhow::anyhow!("no CSRF field on the sign-in page"))?
            .to_string();
        let form = format!("csrf={csrf}&name={name}&password={password}");
        let (status, _) = self.send(http::Method::POST, "/console/login", &form).await?;
        anyhow::ensure!(status == StatusCode::SEE_OTHER, "sign-in answered {status}");
        Ok(())
    }

    /// One load of the sites page: how long, and how many rows.
    async fn sites_page(&mut self) -> anyhow::Result<(Duration, usize)> {
        let start = Instant::now();
        let (status, body) = self.send(http::Method::GET, "/console/", "").await?;
        let took = start.elapsed();
        anyhow::ensure!(status == StatusCode::OK, "sites page answered {status}");
        Ok((took, body.matches("<tr data-site=").count()))
    }
}

/// Runs the console measurement; returns the results document.
pub async fn run(t: &ConsoleTargets) -> anyhow::Result<serde_json::Value> {
    let cfg = keyway_relay::RelayConfig::load(&t.relay_config)?;
    eprintln!("bench: registering {} sites…", t.sites);
    let identities = crate::swarm::register(&cfg, "site-", 0..t.sites).await?;
    let mut admin = Admin {
        addr: t.admin,
        cookies: HashMap::new(),
    };
    admin.sign_in(&t.operator, &t.password).await?;
    // The relay reads new sites within half a second.
    let mut rows = 0;
    for _ in 0..50 {
        rows = admin.sites_page().await?.1;
        if rows >= t.sites {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(rows >= t.sites, "the page lists {rows} sites, not {}", t.sites);

    let mut idle_times = Vec::new();
    for _ in 0..30 {
        idle_times.push(admin.sites_page().await?.0);
    }
    let idle = Latency::of(&mut idle_times);
    eprintln!(
        "bench: sites page with {} sites: p50 {:.1} ms, p99 {:.1} ms",
        t.sites, idle.p50_ms, idle.p99_ms
    );

    // The live stream, as an open page has it: when does it say all online?
    let all_online: Arc<Mutex<Option<Instant>>> = Arc::default();
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream_task = {
        let (addr, cookies) = (t.admin, admin.cookies.clone());
        let (all_online, events, want) = (all_online.clone(), events.clone(), t.sites);
        tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let req = Request::get("/console/live")
                .header(header::HOST, addr.to_string())
                .header(header::COOKIE, jar.join("; "))
                .body(Full::new(Bytes::new()))?;
            let mut body = sender.send_request(req).await?.into_body();
            let mut buffer = String::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    buffer.push_str(&String::from_utf8_lossy(&data));
                }
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    if let Some(data) = event.strip_prefix("event: sites\ndata: ") {
                        events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let online = data.matches(r#""online":true"#).count();
                        if online >= want {
                            *all_online.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                            return anyhow::Ok(());
                        }
                    }
                }
            }
            anyhow::bail!("the live stream ended")
        })
    };

    // 1,000 agents at once, while the page is loaded every 200 ms.
    eprintln!("bench: {} agents connecting…", t.sites);
    let endpoint = crate::swarm::endpoint()?;
    let started = Instant::now();
    let dialing = tokio::spawn({
        let endpoint = endpoint.clone();
        let relay = t.relay;
        async move { crate::swarm::dial(&endpoint, relay, identities).await }
    });
    let mut busy_times = Vec::new();
    while all_online.lock().unwrap_or_else(|p| p.into_inner()).is_none() && started.elapsed() < Duration::from_secs(120)
    {
        busy_times.push(admin.sites_page().await?.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = dialing.await??;
    let shown = all_online
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|t| t - started)
        .ok_or_else(|| anyhow::anyhow!("the live stream never showed every agent online"))?;
    let connected = held.len();
    let _ = stream_task.await;
    let busy = Latency::of(&mut busy_times);
    eprintln!(
        "bench: {connected} agents online on the live page {:.2} s after they started connecting; \
         {} updates; the sites page meanwhile: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        shown.as_secs_f64(),
        events.load(std::sync::atomic::Ordering::Relaxed),
        busy.p50_ms,
        busy.p99_ms,
        busy.p999_ms
    );
    let mut online_times = Vec::new();
    for _ in 0..30 {
        online_times.push(admin.sites_page().await?.0);
    }
    let online = Latency::of(&mut online_times);
    eprintln!(
        "bench: sites page with {} sites online: p50 {:.1} ms, p99 {:.1} ms",
        t.sites, online.p50_ms, online.p99_ms
    );
    drop(held);
    endpoint.close(0u32.into(), b"bench over");
    Ok(serde_json::json!({
        "sites": t.sites,
        "sites_page_offline": idle,
        "sites_page_while_agents_connect": busy,
        "sites_page_all_online": online,
        "agents_online_shown_after_s": shown.as_secs_f64(),
        "live_updates": events.load(std::sync::atomic::Ordering::Relaxed),
    }))
}
