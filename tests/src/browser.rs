//! A real browser for tests: Debian's Chromium, headless, driven over the
//! Chrome DevTools Protocol (JSON messages on its WebSocket, the same
//! protocol Playwright and Puppeteer speak) with the WebSocket client the
//! tests already use. Pages run their own script, forms submit, cookies
//! and server-sent events behave as for an operator.
//!
//! It reaches loopback only: every other address goes to a proxy on
//! 127.0.0.1:9 where nothing listens, names do not resolve, and Chromium's
//! own background traffic (updates, sync, safe browsing) is switched off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::procs::Proc;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A running headless Chromium.
pub struct Browser {
    _process: Proc,
    _profile: tempfile::TempDir,
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    next: Arc<AtomicU64>,
}

/// One tab of it.
pub struct Tab<'a> {
    browser: &'a Browser,
    session: String,
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Browser {
    /// Starts Chromium (`apt-get install chromium`; scripts/test does).
    pub async fn start() -> anyhow::Result<Self> {
        let exe = chromium().context("Chromium is not installed: apt-get install chromium (scripts/test does)")?;
        let profile = tempfile::tempdir()?;
        let user_data = format!("--user-data-dir={}", profile.path().display());
        let args = [
            "--headless=new",
            // CI runs as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
            "--no-pings",
            "--metrics-recording-only",
            "--password-store=basic",
            // Loopback only: anything else goes to a port where nothing
            // listens, and no name is looked up.
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            "--window-size=1280,860",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            &user_data,
            "about:blank",
        ];
        let process = Proc::spawn_program(exe.to_str().context("UTF-8 path")?, &args, &[])?;
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_string(), path.to_string());
                }
            }
            if Instant::now() > deadline {
                bail!("Chromium did not open its DevTools port in 30 s: {:?}", process.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let url = format!("ws://127.0.0.1:{port}{path}");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>()?)).await?;
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .with_context(|| format!("DevTools at {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let answers = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                let Some(id) = v.get("id").and_then(Value::as_u64) else {
                    continue; // an event
                };
                let reply = match v.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                };
                if let Some(tx) = answers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                    let _ = tx.send(reply);
                }
            }
        });
        Ok(Self {
            _process: process,
            _profile: profile,
            out,
            pending,
            next: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        self.out
            .send(msg.to_string())
            .map_err(|_| anyhow!("the browser connection closed"))?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| anyhow!("{method}: no answer in 30 s"))?
            .map_err(|_| anyhow!("the browser connection closed"))?
            .map_err(|e| anyhow!("{method}: {e}"))
    }

    /// A new tab at `url`.
    pub async fn tab(&self, url: &str) -> anyhow::Result<Tab<'_>> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().context("no targetId")?.to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"].as_str().context("no sessionId")?.to_string();
        let tab = Tab { browser: self, session };
        tab.call("Page.enable", json!({})).await?;
        tab.call("Runtime.enable", json!({})).await?;
        tab.goto(url).await?;
        Ok(tab)
    }
}

impl Tab<'_> {
    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Opens `url` and waits until the page has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = nav.get("errorText").and_then(Value::as_str) {
            bail!("{url}: {e}");
        }
        self.wait_loaded().await
    }

    /// Waits (bounded) until the document in the tab has loaded.
    pub async fn wait_loaded(&self) -> anyhow::Result<()> {
        self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            Duration::from_secs(15),
        )
        .await
        .map(|_| ())
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `condition` (JavaScript, truthy when done) until it holds or
    /// `within` passes; how long it took.
    pub async fn wait_for(&self, condition: &str, within: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            // A navigation may destroy the context mid-evaluation: try again.
            if let Ok(v) = self.eval(condition).await {
                if v.as_bool() == Some(true) {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > within {
                let url = self.eval("location.href").await.unwrap_or_default();
                bail!("{condition} still false after {within:?} (at {url})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the field `selector` (as the page sees a user's input).
    pub async fn fill(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.focus(); e.value = {text}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
            sel = json!(selector),
            text = json!(text)
        );
        match self.eval(&js).await?.as_bool() {
            Some(true) => Ok(()),
            _ => bail!("no field {selector}"),
        }
    }

    /// Clicks the element `selector` and, as a click on a submit button
    /// does, waits for the page it leads to.
    pub async fn click_and_wait(&self, selector: &str) -> anyhow::Result<()> {
        let marker = format!("keyway-{}", self.browser.next.fetch_add(1, Ordering::Relaxed));
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; window.name = {m}; \
             e.click(); return true; }})()",
            sel = json!(selector),
            m = json!(marker)
        );
        let before = self.eval("performance.timeOrigin").await?;
        if self.eval(&js).await?.as_bool() != Some(true) {
            bail!("nothing to click at {selector}");
        }
        // A new document has a new time origin.
        self.wait_for(
            &format!("performance.timeOrigin !== {before} && document.readyState === 'complete'"),
            Duration::from_secs(15),
        )
        .await
        .map(|_| ())
    }

    /// Saves a PNG of the whole page.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = shot["data"].as_str().context("no image")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("{}", path.display()))
    }
}
