//! The agent's commands other than `run` (`keyway-agent token …`, `audit`,
//! `events`, `console-token`, `unpair`): the logic, with typed results;
//! `main.rs` only parses arguments and prints. Pairing and re-pinning have
//! modules of their own ([`crate::pair`], [`crate::repin`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::access::policy::{Policy, Rule};
use crate::access::tokens::{Entry, TokenStore};
use crate::config::AgentConfig;
use crate::console::Console;
use crate::hub::webhooks::{self, Capture};
use crate::pair::PairError;

/// A command's failure, with the exit code it ends the program with.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad arguments or an unreadable config: exit 64 (`EX_USAGE`).
    #[error("{0:#}")]
    Usage(anyhow::Error),
    /// Pairing or pinning: its own exit codes (see `keyway-agent pair --help`).
    #[error("{0}")]
    Pair(#[from] PairError),
    /// Anything else: exit 1.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CommandError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 64,
            Self::Pair(e) => e.exit_code(),
            Self::Other(_) => 1,
        }
    }
}

/// `token add`: what to issue.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The integration's name.
    pub name: String,
    /// A preset policy (`full`, `read-only`, `members-and-visitors`).
    pub preset: String,
    /// Extra allow rules, `METHOD /path/pattern`.
    pub allow: Vec<String>,
    /// Extra deny rules.
    pub deny: Vec<String>,
    /// Expiry from now.
    pub expires: Option<Duration>,
}

/// `token add`: the token, shown once.
#[derive(Debug)]
pub struct Issued {
    /// The token itself (only its hash is kept).
    pub token: String,
    /// Whether calls with it will fail for want of a stored console token.
    pub no_console_token: bool,
}

/// Issues an integration token.
pub fn issue_token(cfg: &AgentConfig, new: NewToken) -> anyhow::Result<Issued> {
    let parse = |v: &[String]| v.iter().map(|r| r.parse::<Rule>()).collect::<Result<Vec<_>, _>>();
    let extra = Policy {
        allow: parse(&new.allow).map_err(anyhow::Error::msg)?,
        deny: parse(&new.deny).map_err(anyhow::Error::msg)?,
    };
    let policy = Policy::preset(&new.preset).map_err(anyhow::Error::msg)?.with(extra);
    let store = TokenStore::new(&cfg.state_dir());
    let token = store.add(&new.name, policy, Some(new.preset), new.expires)?;
    let no_console_token = crate::console_token::load(&cfg.console_token_path())?.is_none();
    Ok(Issued {
        token,
        no_console_token,
    })
}

/// `token list`: the issued tokens.
pub fn tokens(cfg: &AgentConfig) -> anyhow::Result<Vec<Entry>> {
    TokenStore::new(&cfg.state_dir()).load()
}

/// `token revoke`.
pub fn revoke_token(cfg: &AgentConfig, name: &str) -> anyhow::Result<()> {
    TokenStore::new(&cfg.state_dir()).revoke(name)
}

/// The table `token list` prints (`now` in Unix seconds).
pub fn token_table(entries: &[Entry], now: u64) -> String {
    if entries.is_empty() {
        return "No integration tokens (integrations use the console token: passthrough).".into();
    }
    let mut out = format!(
        "{:<20} {:<12} {:<22} {:<10} RULES\n",
        "NAME", "TOKEN", "PRESET", "EXPIRES"
    );
    for e in entries {
        let expires = match e.expires {
            None => "never".to_string(),
            Some(t) if t <= now => "EXPIRED".to_string(),
            Some(t) => format!("in {}d", (t - now) / 86_400),
        };
        let rules: Vec<String> = (e.policy.allow.iter().map(|r| format!("allow {r}")))
            .chain(e.policy.deny.iter().map(|r| format!("deny {r}")))
            .collect();
        out.push_str(&format!(
            "{:<20} {:<12} {:<22} {:<10} {}\n",
            e.name,
            format!("{}…", e.hint),
            e.preset.as_deref().unwrap_or_default(),
            expires,
            rules.join("; ")
        ));
    }
    out.trim_end().to_string()
}

/// `audit tail --follow`: calls `show` with each record appended to the
/// audit log from now on, following rotation; returns only on an error.
pub async fn follow_audit(state_dir: &Path, mut show: impl FnMut(&str)) -> anyhow::Result<()> {
    let path = crate::audit::path_in(state_dir);
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut offset = len(&path);
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let now = len(&path);
        if now < offset {
            offset = 0; // rotated
        }
        if now > offset {
            let text = std::fs::read(&path)?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
            String::from_utf8_lossy(&text[start..]).lines().for_each(&mut show);
            offset = text.len() as u64;
        }
    }
}

/// The stored console token, or the command that stores one.
fn stored_console_token(cfg: &AgentConfig) -> anyhow::Result<String> {
    crate::console_token::load(&cfg.console_token_path())?
        .ok_or_else(|| anyhow::anyhow!("no console token: run `keyway-agent console-token set` first"))
}

/// `events capture-webhooks`: registers a webhook endpoint on the console
/// for every door event, posting to `url` (default `http://LISTEN/keyway/webhook`).
pub async fn capture_webhooks(cfg: &AgentConfig, listen: SocketAddr, url: Option<String>) -> anyhow::Result<Capture> {
    let token = stored_console_token(cfg)?;
    if Capture::load(&cfg.state_dir())?.is_some() {
        anyhow::bail!("webhooks are already captured; `keyway-agent events stop-capture` first");
    }
    if url.is_none() && listen.ip().is_unspecified() {
        anyhow::bail!("--listen {listen} is not an address the console can post to: give --url too");
    }
    let url = url.unwrap_or_else(|| format!("http://{listen}/keyway/webhook"));
    let events: Vec<String> = webhooks::DOOR_EVENTS.iter().map(|s| s.to_string()).collect();
    let console = Console::from_config(cfg)?;
    let capture = webhooks::register(&console, &token, listen, &url, &events).await?;
    capture.store(&cfg.state_dir())?;
    Ok(capture)
}

/// `events stop-capture`: the endpoint removed from the console, if one was.
pub async fn stop_capture(cfg: &AgentConfig) -> anyhow::Result<Option<String>> {
    let token = stored_console_token(cfg)?;
    let Some(capture) = Capture::load(&cfg.state_dir())? else {
        return Ok(None);
    };
    let path = format!("/api/v1/developer/webhooks/endpoints/{}", capture.id);
    let console = Console::from_config(cfg)?;
    let (status, _) = console.call(http::Method::DELETE, &path, &token, None).await?;
    if !status.is_success() && status != http::StatusCode::NOT_FOUND {
        anyhow::bail!("the console refused to delete endpoint {} (HTTP {status})", capture.id);
    }
    Capture::forget(&cfg.state_dir())?;
    Ok(Some(capture.id))
}

/// `console-token set`: stores the token in `text` (checked with the
/// console first unless `verify` is off); the file it went to.
pub async fn set_console_token(cfg: &AgentConfig, text: &str, verify: bool) -> anyhow::Result<PathBuf> {
    let token = crate::console_token::parse(text)?;
    if verify {
        let console = Console::from_config(cfg)?;
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"))?;
        if let Err(refused) = console.check_token(&bearer).await {
            anyhow::bail!(
                "the console did not accept this token (HTTP {}); nothing was stored \
                 (--no-verify stores it anyway)",
                refused.status()
            );
        }
    }
    let path = cfg.console_token_path();
    crate::console_token::store(&path, &token)?;
    Ok(path)
}

/// `console-token clear`: the file removed, if there was one.
pub fn clear_console_token(cfg: &AgentConfig) -> anyhow::Result<Option<PathBuf>> {
    let path = cfg.console_token_path();
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `unpair`: asks the relay to revoke this agent, then removes its identity
/// and config; if the relay cannot be told, nothing is removed.
pub async fn unpair(config: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let cfg = AgentConfig::load(config)?;
    crate::Agent::new(&cfg)?.notify_unpair().await.context(
        "could not tell the relay; nothing was removed (keyway-relay site revoke SITE does it from the relay side)",
    )?;
    crate::pair::unpair(config)
}

/// `run`: serves until SIGTERM or Ctrl-C, then drains open requests.
pub async fn run_until_signal(cfg: &AgentConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let agent = crate::Agent::new(cfg)?;
    let mut term = signal(SignalKind::terminate()).context("could not handle SIGTERM")?;
    let stop = tokio_util::sync::CancellationToken::new();
    crate::systemd::ready();
    crate::systemd::spawn(agent.state(), stop.clone());
    let on_signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: draining open requests");
        crate::systemd::stopping();
        on_signal.cancel();
    });
    agent.run(stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_table_names_expiry_and_rules_never_the_token() {
        assert!(token_table(&[], 0).starts_with("No integration tokens"));
        let entry = |name: &str, expires| Entry {
            name: name.into(),
            hash: "secret-hash".into(),
            hint: "kw_ab".into(),
            created: 0,
            expires,
            policy: Policy::preset("read-only").unwrap(),
            preset: Some("read-only".into()),
        };
        let now = 1_000_000;
        let table = token_table(
            &[
                entry("crm", None),
                entry("old", Some(now)),
                entry("new", Some(now + 3 * 86_400)),
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("crm") && lines[1].contains("never") && lines[1].contains("allow GET"));
        assert!(lines[2].contains("EXPIRED"));
        assert!(lines[3].contains("in 3d"));
        assert!(!table.contains("secret-hash"));
    }

    #[test]
    fn every_failure_has_its_exit_code() {
        assert_eq!(CommandError::Usage(anyhow::anyhow!("x")).exit_code(), 64);
        assert_eq!(CommandError::Other(anyhow::anyhow!("x")).exit_code(), 1);
        let pair = PairError::BadCode("x".into());
        let code = pair.exit_code();
        assert_eq!(CommandError::from(pair).exit_code(), code);
    }
}
