//! `keyway-agent doctor`: one line per check, with a fix for each problem.
//!
//! Checks what an IT person cannot see: the relay's name in DNS, whether the
//! relay is reachable over UDP (QUIC) and over TCP, this machine's clock
//! against the relay's, the agent certificate's expiry, the UDP buffers,
//! whether the console answers with the pinned certificate. UDP blocked
//! while TCP works is a warning: the agent serves over TLS/TCP, slower on
//! lossy links.

mod host;

use std::path::Path;
use std::time::Duration;

use keyway_certs::ConsoleTrust;

use crate::{Agent, AgentConfig};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Broken.
    Fail,
}

/// One check's line.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its outcome.
    pub verdict: Verdict,
    /// What was checked and what was seen.
    pub what: String,
    /// What to do, for a warning or failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(what: String) -> Self {
        Self {
            verdict: Verdict::Ok,
            what,
            fix: None,
        }
    }

    fn bad(verdict: Verdict, what: String, fix: &str) -> Self {
        Self {
            verdict,
            what,
            fix: Some(fix.to_string()),
        }
    }
}

/// Runs every check against the config at `path`.
pub async fn run(path: &Path) -> Vec<Check> {
    let cfg = match AgentConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::bad(
                Verdict::Fail,
                format!("config {}: {e:#}", path.display()),
                "pair this machine (keyway-agent pair CODE …) or fix the named field",
            )]
        }
    };
    let mut out = vec![Check::ok(format!("config {} loads", path.display()))];
    let agent = match Agent::new(&cfg) {
        Ok(a) => a,
        Err(e) => {
            out.push(Check::bad(
                Verdict::Fail,
                format!("identity: {e:#}"),
                "the key or certificates are missing or damaged: pair again with keyway-agent pair --force",
            ));
            return out;
        }
    };
    out.push(host::agent_cert(&cfg.cert));
    // The running agent knows whether another one keeps taking its site.
    if let Ok((status, true)) = crate::status::query(&cfg.key).await {
        if let Some(d) = status.live.and_then(|l| l.duplicate) {
            out.push(Check::bad(
                Verdict::Fail,
                format!("the relay keeps giving this site to another agent: {d}"),
                "find the other machine paired as this site (a cloned SD card, an old Pi left running) and stop it, or pair it with its own site",
            ));
        }
    }
    out.push(host::dns(&cfg.relay).await);
    let udp = agent.probe(keyway_transport::TransportKind::Quic).await;
    let tcp = agent.probe(keyway_transport::TransportKind::Tcp).await;
    let clock_hint = [&udp, &tcp].iter().any(|r| r.as_ref().is_err_and(|e| e.is_clock()));
    match (&udp, &tcp) {
        (Ok(()), _) => out.push(Check::ok(format!("relay {} reachable over UDP (QUIC)", cfg.relay))),
        (Err(e), Ok(())) => out.push(Check::bad(
            Verdict::Warn,
            format!("UDP to the relay {} is blocked ({e}); TLS over TCP to {} works", cfg.relay, cfg.relay_tcp_addr()),
            "the agent serves over TCP by itself; to use QUIC, allow outbound UDP to the relay's port on this network's firewall",
        )),
        (Err(e), Err(_)) => out.push(Check::bad(
            Verdict::Fail,
            format!("relay {} unreachable over UDP: {e}", cfg.relay),
            if clock_hint {
                crate::clock::FIX
            } else {
                "check this machine's internet connection, DNS, and the relay address in the config"
            },
        )),
    }
    match &tcp {
        Ok(()) => out.push(Check::ok(format!("relay {} reachable over TLS/TCP", cfg.relay_tcp_addr()))),
        Err(e) => out.push(Check::bad(
            if udp.is_ok() { Verdict::Warn } else { Verdict::Fail },
            format!("relay {} unreachable over TLS/TCP: {e}", cfg.relay_tcp_addr()),
            if e.is_clock() {
                crate::clock::FIX
            } else {
                "if UDP works this only removes the fallback; otherwise check the firewall allows outbound TCP to the relay's port"
            },
        )),
    }
    let reachable_over = match (&udp, &tcp) {
        (Ok(()), _) => Some(keyway_transport::TransportKind::Quic),
        (_, Ok(())) => Some(keyway_transport::TransportKind::Tcp),
        _ => None,
    };
    if let Some(transport) = reachable_over {
        out.push(match agent.relay_clock_offset_ms(transport).await {
            Ok(offset) => host::clock(offset),
            Err(e) => Check::bad(
                Verdict::Warn,
                format!("clock not compared with the relay's: {e:#}"),
                "update the relay; meanwhile check this machine's time with timedatectl",
            ),
        });
    }
    out.push(host::udp_buffers());
    let console_ok = console(&cfg).await;
    let reachable = console_ok.verdict != Verdict::Fail;
    out.push(console_ok);
    out.push(event_hub(&cfg, reachable).await);
    out
}

/// The console token behind the event hub: present, and accepted.
async fn event_hub(cfg: &AgentConfig, console_reachable: bool) -> Check {
    let path = cfg.console_token_path();
    let token = match crate::console_token::load(&path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Check::bad(
                Verdict::Warn,
                "no console token: door events pass through per subscriber, without replay or webhook capture".into(),
                "store the console's API token on this machine: keyway-agent console-token set < token.txt",
            )
        }
        Err(e) => {
            return Check::bad(
                Verdict::Fail,
                format!("console token: {e:#}"),
                "store it again: keyway-agent console-token set < token.txt",
            )
        }
    };
    if !cfg.event_hub {
        return Check::ok("console token stored; the event hub is off (event_hub = false)".into());
    }
    if !console_reachable {
        return Check::ok("console token stored (not checked: the console does not answer)".into());
    }
    let checked = async {
        let console = crate::console::Console::from_config(cfg)?;
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"))?;
        anyhow::Ok(console.check_token(&bearer).await.map_err(|r| r.status()))
    };
    match checked.await {
        Ok(Ok(())) => Check::ok("console token accepted by the console; the event hub is on".into()),
        Ok(Err(status)) => Check::bad(
            Verdict::Fail,
            format!("the console refuses the stored console token (HTTP {status}): door events stop"),
            "create a token with device permissions in the console and run: keyway-agent console-token set < token.txt",
        ),
        Err(e) => Check::bad(
            Verdict::Fail,
            format!("console token: {e:#}"),
            "store it again: keyway-agent console-token set < token.txt",
        ),
    }
}

async fn console(cfg: &AgentConfig) -> Check {
    let uri = match cfg.console_uri() {
        Ok(u) => u,
        Err(e) => {
            return Check::bad(
                Verdict::Fail,
                format!("console_url: {e:#}"),
                "set console_url = \"https://IP:12445\"",
            )
        }
    };
    let seen = match tokio::time::timeout(Duration::from_secs(10), crate::pair::console_fingerprint(&uri)).await {
        Ok(Ok(fp)) => fp,
        _ => {
            return Check::bad(
                Verdict::Fail,
                format!("console {uri} does not answer over HTTPS"),
                "check the console is powered and on this LAN, and that console_url has its current IP address",
            )
        }
    };
    match cfg.console_trust() {
        Ok(ConsoleTrust::Pinned(fp)) if fp == seen => Check::ok(format!("console {uri} answers with the pinned certificate")),
        Ok(ConsoleTrust::Pinned(fp)) => Check::bad(
            Verdict::Fail,
            format!("console {uri} presents certificate {seen}, not the pinned {fp}"),
            "if the console's certificate was renewed, compare it in the console's settings, then run keyway-agent pair --force with --console-fingerprint",
        ),
        _ => Check::bad(
            Verdict::Warn,
            format!("console {uri} answers; its certificate is not pinned (console_insecure)"),
            format!("pin it: console_fingerprint = \"{seen}\" in the config").as_str(),
        ),
    }
}

/// The report, one line per check; and whether any check failed.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut text = String::new();
    for c in checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        text.push_str(&format!("{mark} {}\n", c.what));
        if let Some(fix) = &c.fix {
            text.push_str(&format!("     fix: {fix}\n"));
        }
    }
    (text, checks.iter().any(|c| c.verdict == Verdict::Fail))
}
