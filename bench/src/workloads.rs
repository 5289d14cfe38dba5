//! The workloads, each run against one path for a number of rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::Method;
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{exchange, multipart, Path};
use crate::procs::{cpu_seconds, rss_bytes};
use crate::stats::{Latency, Rounds};

/// How long and how often.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Rounds of every workload.
    pub rounds: usize,
    /// Warm-up before each timed round.
    pub warmup: Duration,
    /// Timed part of a load round.
    pub duration: Duration,
    /// Full user listings per round.
    pub listings: usize,
    /// 10 MB transfers per round.
    pub transfers: usize,
    /// New connections per round.
    pub new_conns: usize,
    /// Door events per round.
    pub events: usize,
}

impl Settings {
    /// `--quick` or the full run.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 3,
                warmup: Duration::from_millis(300),
                duration: Duration::from_secs(1),
                listings: 1,
                transfers: 2,
                new_conns: 20,
                events: 30,
            }
        } else {
            Self {
                rounds: 3,
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(8),
                listings: 5,
                transfers: 8,
                new_conns: 400,
                events: 300,
            }
        }
    }
}

/// One workload's outcome on one path.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Unit of `value`.
    pub unit: &'static str,
    /// Whether more is better.
    pub higher_is_better: bool,
    /// The headline per round.
    pub value: Rounds,
    /// Latency over all rounds, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// CPU seconds per 10,000 requests, by process role.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_per_10k: BTreeMap<String, f64>,
    /// Peak resident memory during the workload, by process role (bytes).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub peak_rss: BTreeMap<String, u64>,
    /// `value` relative to direct access (same unit direction: >1 is better).
    pub ratio_to_direct: Option<f64>,
    /// `value` relative to the best of nginx, rathole and bore.
    pub ratio_to_best_peer: Option<f64>,
    /// Latency curve of the first round: [percentile, ms] pairs, for the plot.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub curve: Vec<[f64; 2]>,
}

impl Outcome {
    fn new(unit: &'static str, higher_is_better: bool, values: Vec<f64>) -> Self {
        Self {
            unit,
            higher_is_better,
            value: Rounds::of(values),
            latency: None,
            cpu_per_10k: BTreeMap::new(),
            peak_rss: BTreeMap::new(),
            ratio_to_direct: None,
            ratio_to_best_peer: None,
            curve: vec![],
        }
    }
}

/// What the console holds for the workloads.
pub struct Fixture {
    /// A door to unlock.
    pub door: String,
    /// A user whose avatar is uploaded.
    pub user: String,
}

/// Fills the console with 10,000 users (if `fill`), and finds a door.
pub async fn prepare(direct: &Path, fill: bool) -> anyhow::Result<Fixture> {
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(direct.connect(false).await?);
    }
    let existing = {
        let (body, _) = exchange(
            &mut conns[0],
            direct.get("/api/v1/developer/users?page_num=1&page_size=1"),
        )
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        v["pagination"]["total"].as_u64().unwrap_or(0) as usize
    };
    let missing = if fill { 10_000usize.saturating_sub(existing) } else { 0 };
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, mut conn)| {
            let direct = direct.clone();
            tokio::spawn(async move {
                for i in (w..missing).step_by(16) {
                    let body = json!({"first_name": format!("Member{i}"), "last_name": "Bench",
                                      "user_email": format!("member{i}@example.com")});
                    exchange(&mut conn, direct.json(Method::POST, "/api/v1/developer/users", &body)).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let mut conn = direct.connect(false).await?;
    let (body, _) = exchange(&mut conn, direct.get("/api/v1/developer/doors")).await?;
    let doors: serde_json::Value = serde_json::from_slice(&body)?;
    let door = doors["data"][0]["id"].as_str().context("no door")?.to_string();
    let (body, _) = exchange(&mut conn, direct.get("/api/v1/developer/users?page_num=1&page_size=1")).await?;
    let users: serde_json::Value = serde_json::from_slice(&body)?;
    let user = users["data"][0]["id"].as_str().unwrap_or_default().to_string();
    Ok(Fixture { door, user })
}

/// Samples the path's processes' RSS until `stop`, keeping the peak.
fn rss_sampler(
    path: &Path,
) -> (
    tokio::task::JoinHandle<BTreeMap<String, u64>>,
    tokio::sync::watch::Sender<bool>,
) {
    let pids = path.spec.pids.clone();
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut peak: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            for (role, pid) in &pids {
                if let Some(r) = rss_bytes(*pid) {
                    let e = peak.entry(role.clone()).or_default();
                    *e = (*e).max(r);
                }
            }
            tokio::select! {
                _ = rx.changed() => return peak,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    (task, tx)
}

fn cpu_of(path: &Path) -> BTreeMap<String, f64> {
    path.spec
        .pids
        .iter()
        .filter_map(|(role, pid)| Some((role.clone(), cpu_seconds(*pid)?)))
        .collect()
}

/// Small JSON GETs over `concurrency` keep-alive connections, on every path.
///
/// The rounds take turns between the paths (round 1 on each path, then
/// round 2 on each…), so a slow spell on this shared machine lands on
/// every path alike instead of on whichever path ran during it: the ratios
/// between paths, the headline, hold still where the bare figures drift.
pub async fn small_gets(paths: &[Path], concurrency: usize, s: &Settings) -> Vec<anyhow::Result<Outcome>> {
    let mut runs: Vec<anyhow::Result<GetRuns>> = paths.iter().map(|p| Ok(GetRuns::start(p))).collect();
    for _ in 0..s.rounds {
        for (path, run) in paths.iter().zip(runs.iter_mut()) {
            let Ok(acc) = run else { continue };
            match get_round(path, concurrency, s).await {
                Ok(round) => acc.add(round, s.duration),
                Err(e) => *run = Err(e),
            }
        }
    }
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        out.push(match run {
            Ok(acc) => acc.finish().await,
            Err(e) => Err(e),
        });
    }
    out
}

/// One path's rounds of small GETs so far.
struct GetRuns {
    per_round: Vec<f64>,
    all: Vec<Duration>,
    first_round: Vec<Duration>,
    cpu_total: BTreeMap<String, f64>,
    requests_total: u64,
    sampler: tokio::task::JoinHandle<BTreeMap<String, u64>>,
    stop_sampler: tokio::sync::watch::Sender<bool>,
}

/// What one round of small GETs measured.
struct GetRound {
    samples: Vec<Duration>,
    cpu: BTreeMap<String, f64>,
}

impl GetRuns {
    fn start(path: &Path) -> Self {
        let (sampler, stop_sampler) = rss_sampler(path);
        Self {
            per_round: vec![],
            all: vec![],
            first_round: vec![],
            cpu_total: BTreeMap::new(),
            requests_total: 0,
            sampler,
            stop_sampler,
        }
    }

    fn add(&mut self, round: GetRound, duration: Duration) {
        for (role, c) in round.cpu {
            *self.cpu_total.entry(role).or_default() += c;
        }
        self.requests_total += round.samples.len() as u64;
        self.per_round.push(round.samples.len() as f64 / duration.as_secs_f64());
        if self.first_round.is_empty() {
            self.first_round = round.samples.clone();
        }
        self.all.extend(round.samples);
    }

    async fn finish(mut self) -> anyhow::Result<Outcome> {
        let _ = self.stop_sampler.send(true);
        let mut o = Outcome::new("req/s", true, self.per_round);
        self.first_round.sort();
        o.curve = crate::stats::curve(&self.first_round);
        o.latency = Some(Latency::of(&mut self.all));
        if self.requests_total > 0 {
            let n = self.requests_total as f64;
            o.cpu_per_10k = self.cpu_total.into_iter().map(|(r, c)| (r, c * 10_000.0 / n)).collect();
        }
        o.peak_rss = self.sampler.await?;
        Ok(o)
    }
}

/// One warmed-up, timed round of small GETs on `path`.
async fn get_round(path: &Path, concurrency: usize, s: &Settings) -> anyhow::Result<GetRound> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(path.connect(false).await?);
    }
    let start_at = Instant::now() + s.warmup;
    let end_at = start_at + s.duration;
    let cpu_before = Arc::new(tokio::sync::OnceCell::new());
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let path = path.clone();
            let cpu_before = cpu_before.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(4096);
                loop {
                    let now = Instant::now();
                    if now >= end_at {
                        break;
                    }
                    if now >= start_at {
                        cpu_before.get_or_init(|| async { cpu_of(&path) }).await;
                    }
                    if conn.is_closed() {
                        // The server ended keep-alive (nginx after N requests): reconnect.
                        conn = path.connect(false).await?;
                    }
                    let (_, took) = exchange(&mut conn, path.get("/api/v1/developer/doors")).await?;
                    if now >= start_at {
                        samples.push(took);
                    }
                }
                Ok::<_, anyhow::Error>(samples)
            })
        })
        .collect();
    let mut samples = vec![];
    for w in workers {
        samples.extend(w.await??);
    }
    let cpu_after = cpu_of(path);
    let cpu = match cpu_before.get() {
        Some(before) => cpu_after
            .iter()
            .filter_map(|(role, after)| Some((role.clone(), after - before.get(role)?)))
            .collect(),
        None => BTreeMap::new(),
    };
    Ok(GetRound { samples, cpu })
}

/// Pages through all 10,000 users, 100 per page, on one connection.
pub async fn user_listing(path: &Path, s: &Settings) -> anyhow::Result<Outcome> {
    let mut per_round = vec![];
    let mut conn = path.connect(false).await?;
    list_all(path, &mut conn).await?; // warm-up
    for _ in 0..s.rounds {
        let t0 = Instant::now();
        for _ in 0..s.listings {
            list_all(path, &mut conn).await?;
        }
        per_round.push(t0.elapsed().as_secs_f64() * 1000.0 / s.listings as f64);
    }
    Ok(Outcome::new("ms per 10,000-user listing", false, per_round))
}

async fn list_all(path: &Path, conn: &mut crate::client::Conn) -> anyhow::Result<()> {
    let mut seen = 0;
    for page in 1..=100 {
        let uri = format!("/api/v1/developer/users?page_num={page}&page_size=100");
        let (body, _) = exchange(conn, path.get(&uri)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        seen += v["data"].as_array().map_or(0, Vec::len);
    }
    if seen < 10_000 {
        bail!("listed {seen} users, expected 10,000");
    }
    Ok(())
}

const TEN_MB: usize = 10 * 1024 * 1024;

/// 10 MB log exports (download).
pub async fn download(path: &Path, s: &Settings) -> anyhow::Result<Outcome> {
    let body = json!({"topic": "door_openings", "since": 0, "until": 3600, "timezone": "UTC"});
    let req = || {
        let mut r = path.json(Method::POST, "/api/v1/developer/system/logs/export", &body);
        r.headers_mut()
            .insert("x-sim-export-bytes", TEN_MB.to_string().parse().expect("a number"));
        r
    };
    transfer(path, s, req, |got| got.len() >= TEN_MB).await
}

/// 10 MB multipart avatar uploads.
pub async fn upload(path: &Path, s: &Settings, user: &str) -> anyhow::Result<Outcome> {
    let data: Vec<u8> = (0..TEN_MB).map(|i| (i % 251) as u8).collect();
    let (content_type, form) = multipart("file", &data);
    let uri = format!("/api/v1/developer/users/{user}/avatar");
    let req = || {
        path.request(Method::POST, &uri)
            .header(CONTENT_TYPE, &content_type)
            .body(Full::new(form.clone()))
            .expect("a valid request")
    };
    transfer(path, s, req, |_| true).await
}

async fn transfer(
    path: &Path,
    s: &Settings,
    req: impl Fn() -> http::Request<Full<bytes::Bytes>>,
    check: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<Outcome> {
    let mut conn = path.connect(false).await?;
    exchange(&mut conn, req()).await?; // warm-up
    let mut per_round = vec![];
    for _ in 0..s.rounds {
        let t0 = Instant::now();
        for _ in 0..s.transfers {
            let (got, _) = exchange(&mut conn, req()).await?;
            if !check(&got) {
                bail!("short transfer: {} bytes", got.len());
            }
        }
        let mb = (TEN_MB * s.transfers) as f64 / (1024.0 * 1024.0);
        per_round.push(mb / t0.elapsed().as_secs_f64());
    }
    Ok(Outcome::new("MB/s", true, per_round))
}

/// A new connection (TCP + full TLS handshake) for every request.
pub async fn new_connections(path: &Path, s: &Settings) -> anyhow::Result<Outcome> {
    let mut per_round = vec![];
    let mut all = vec![];
    let mut conn = path.connect(true).await?;
    exchange(&mut conn, path.get("/api/v1/developer/doors")).await?; // warm-up
    drop(conn);
    for _ in 0..s.rounds {
        let mut samples = Vec::with_capacity(s.new_conns);
        let t0 = Instant::now();
        for _ in 0..s.new_conns {
            let t = Instant::now();
            let mut conn = path.connect(true).await?;
            exchange(&mut conn, path.get("/api/v1/developer/doors")).await?;
            samples.push(t.elapsed());
        }
        per_round.push(s.new_conns as f64 / t0.elapsed().as_secs_f64());
        all.extend(samples);
    }
    let mut o = Outcome::new(
        "new connections/s (c=1, full TLS handshake + first request)",
        true,
        per_round,
    );
    o.latency = Some(Latency::of(&mut all));
    Ok(o)
}

/// Unlock call through the path → the door event at a listener on the path.
pub async fn door_events(path: &Path, s: &Settings, door: &str) -> anyhow::Result<Outcome> {
    let tls = path.tls(false).await?;
    let mut req = format!("wss://{}/api/v1/developer/devices/notifications", path.spec.host).into_client_request()?;
    req.headers_mut()
        .insert(AUTHORIZATION, format!("Bearer {}", path.token()).parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .context("WebSocket upgrade")?;
    let mut conn = path.connect(false).await?;
    let uri = format!("/api/v1/developer/doors/{door}/unlock");
    let body = json!({"actor_id": "bench", "actor_name": "Bench"});
    let mut per_round = vec![];
    let mut all = vec![];
    for _ in 0..s.rounds {
        let mut samples = Vec::with_capacity(s.events);
        for _ in 0..s.events {
            let t0 = Instant::now();
            exchange(&mut conn, path.json(Method::PUT, &uri, &body)).await?;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .context("no door event within 10 s")?
                    .context("the WebSocket closed")??;
                match msg {
                    Message::Text(t) if t.contains("remote_unlock") => break,
                    Message::Ping(p) => ws.send(Message::Pong(p)).await?,
                    _ => {}
                }
            }
            samples.push(t0.elapsed());
        }
        let mut sorted = samples.clone();
        per_round.push(Latency::of(&mut sorted).p50_ms);
        all.extend(samples);
    }
    let _ = ws.close(None).await;
    let mut o = Outcome::new("ms p50, unlock call → event at listener", false, per_round);
    o.latency = Some(Latency::of(&mut all));
    Ok(o)
}

/// As [`door_events`] with `n` listeners on the path at once: each event's
/// latency is measured at every listener (fan-out: the console's own
/// WebSocket per listener, or Keyway's hub serving all from one).
pub async fn door_events_fanout(path: &Path, s: &Settings, door: &str, n: usize) -> anyhow::Result<Outcome> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let tls = path.tls(false).await?;
        let mut req =
            format!("wss://{}/api/v1/developer/devices/notifications", path.spec.host).into_client_request()?;
        req.headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {}", path.token()).parse()?);
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .context("WebSocket upgrade")?;
        let tx = tx.clone();
        listeners.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let ok = match msg {
                    Message::Text(t) if t.contains("remote_unlock") => tx.send(Instant::now()).is_ok(),
                    Message::Ping(p) => ws.send(Message::Pong(p)).await.is_ok(),
                    _ => true,
                };
                if !ok {
                    break;
                }
            }
        }));
    }
    let mut conn = path.connect(false).await?;
    let uri = format!("/api/v1/developer/doors/{door}/unlock");
    let body = json!({"actor_id": "bench", "actor_name": "Bench"});
    let (mut per_round, mut all) = (vec![], vec![]);
    for _ in 0..s.rounds {
        let mut samples = Vec::with_capacity(s.events * n);
        for _ in 0..s.events {
            let t0 = Instant::now();
            exchange(&mut conn, path.json(Method::PUT, &uri, &body)).await?;
            for _ in 0..n {
                let at = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .context("a listener got no door event within 10 s")?
                    .context("listeners ended")?;
                samples.push(at.saturating_duration_since(t0));
            }
        }
        let mut sorted = samples.clone();
        per_round.push(Latency::of(&mut sorted).p50_ms);
        all.extend(samples);
    }
    for l in listeners {
        l.abort();
    }
    let mut o = Outcome::new("ms p50, unlock call → event at each listener", false, per_round);
    o.latency = Some(Latency::of(&mut all));
    Ok(o)
}
