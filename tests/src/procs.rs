//! The real binaries as separate processes: the Done-when flow of the
//! pairing issue (`init`, `serve`, `site add`, `pair`, `run`) and a handle
//! on each process for memory measurements and signals.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::stack::{free_port, DOMAIN, SITE};
use crate::workspace_bin;

/// A child process, killed when dropped; its log (stderr) is kept.
pub struct Proc(pub Child, Log);

type Log = Arc<(std::sync::Mutex<Vec<String>>, tokio::sync::Notify)>;

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

impl Proc {
    /// Starts `bin` with `args`, logging to a pipe that is read at once
    /// (`$KEYWAY_TEST_BIN_LOG`, default `info`).
    pub fn spawn(bin: &str, args: &[&str]) -> anyhow::Result<Self> {
        let level = std::env::var("KEYWAY_TEST_BIN_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new(workspace_bin(bin));
        // As the packaged units run them (packaging/systemd).
        cmd.args(args)
            .env("KEYWAY_LOG", level)
            .env("NO_COLOR", "1")
            .env("MALLOC_ARENA_MAX", "2");
        Self::start(cmd, bin)
    }

    /// Starts a program from `$PATH` (a test peer such as pebble), keeping
    /// what it prints on stdout and stderr as its log.
    pub fn spawn_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env.iter().copied());
        Self::start(cmd, program)
    }

    fn start(mut cmd: Command, name: &str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        let log: Log = Arc::default();
        let stderr = child.stderr.take().context("stderr is piped")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        tokio::spawn(collect(BufReader::new(stderr).lines(), log.clone()));
        tokio::spawn(collect(BufReader::new(stdout).lines(), log.clone()));
        Ok(Self(child, log))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.0.id().expect("running process has a pid")
    }

    /// Every line it logged so far.
    pub fn log(&self) -> Vec<String> {
        self.1 .0.lock().expect("log lock poisoned").clone()
    }

    /// Waits (bounded) until the process logs a line containing `needle`
    /// (since it started).
    pub async fn wait_for_log(&mut self, needle: &str) -> anyhow::Result<()> {
        self.wait_for_logs(needle, 1).await
    }

    /// Waits (bounded) until `count` lines contain `needle`.
    pub async fn wait_for_logs(&mut self, needle: &str, count: usize) -> anyhow::Result<()> {
        let log = self.1.clone();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let notified = log.1.notified();
                if log
                    .0
                    .lock()
                    .expect("log lock poisoned")
                    .iter()
                    .filter(|l| l.contains(needle))
                    .count()
                    >= count
                {
                    return Ok(());
                }
                if self.0.try_wait()?.is_some() {
                    bail!("process exited without logging {needle:?}");
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            }
        })
        .await;
        match found {
            Ok(r) => r,
            Err(_) => bail!("process did not log {needle:?} within 30 s"),
        }
    }
}

async fn collect<R: tokio::io::AsyncBufRead + Unpin>(mut lines: tokio::io::Lines<R>, sink: Log) {
    while let Ok(Some(line)) = lines.next_line().await {
        sink.0.lock().expect("log lock poisoned").push(line);
        sink.1.notify_waiters();
    }
    sink.1.notify_waiters();
}

/// Output of a CLI run.
pub struct CliOutput {
    /// Exit code.
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

/// Runs a CLI to completion.
pub async fn cli(bin: &str, args: &[&str]) -> anyhow::Result<CliOutput> {
    let out = Command::new(workspace_bin(bin))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a workspace CLI with `input` on its stdin.
pub async fn cli_stdin(bin: &str, args: &[&str], input: &str) -> anyhow::Result<CliOutput> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(workspace_bin(bin))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Relay and agent as processes, enrolled through the CLIs.
pub struct BinaryStack {
    /// The one-time code the agent paired with (used: for log scans).
    pub pairing_code: String,
    /// `keyway-relay serve`.
    pub relay: Proc,
    /// `keyway-agent run`.
    pub agent: Proc,
    /// Relay address (TCP and UDP).
    pub addr: SocketAddr,
    /// The relay's admin listener (`/healthz`).
    pub admin_addr: SocketAddr,
    /// The development HTTPS CA (DER).
    pub https_ca_der: CertificateDer<'static>,
    /// Its PEM path.
    pub https_ca: PathBuf,
    /// relay.toml.
    pub relay_config: PathBuf,
    /// agent.toml.
    pub agent_config: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

impl BinaryStack {
    /// `init --self-signed`, `serve`, `site add`, `pair --trust-console`, `run`.
    pub async fn start(dir: &Path, console_url: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, console_url, "").await
    }

    /// As [`BinaryStack::start`], with `relay_extra` appended to relay.toml.
    pub async fn start_with(dir: &Path, console_url: &str, relay_extra: &str) -> anyhow::Result<Self> {
        let ip: IpAddr = "127.0.0.1".parse().expect("constant");
        let addr = SocketAddr::new(ip, free_port(ip)?);
        let relay_dir = dir.join("relay");
        let listen = addr.to_string();
        let admin_addr = SocketAddr::new(ip, free_port(ip)?);
        let admin = admin_addr.to_string();
        let init = cli(
            "keyway-relay",
            &[
                "init",
                "--admin-listen",
                &admin,
                "--dir",
                s(&relay_dir),
                "--domain",
                DOMAIN,
                "--listen",
                &listen,
                "--self-signed",
            ],
        )
        .await?;
        anyhow::ensure!(init.code == 0, "init failed: {}", init.stderr);
        let relay_config = relay_dir.join("relay.toml");
        if !relay_extra.is_empty() {
            let text = std::fs::read_to_string(&relay_config)?;
            std::fs::write(&relay_config, format!("{text}\n{relay_extra}\n"))?;
        }
        let https_ca = relay_dir.join("https-ca.pem");
        let mut relay = Proc::spawn("keyway-relay", &["serve", "--config", s(&relay_config)])?;
        relay.wait_for_log("relay serving").await?;

        let add = cli(
            "keyway-relay",
            &["site", "add", SITE, "--config", s(&relay_config), "--json"],
        )
        .await?;
        anyhow::ensure!(add.code == 0, "site add failed: {}", add.stderr);
        let code = serde_json::from_str::<serde_json::Value>(&add.stdout)?["code"]
            .as_str()
            .context("code")?
            .to_string();

        let agent_dir = dir.join("agent");
        let agent_config = agent_dir.join("agent.toml");
        let pair = cli(
            "keyway-agent",
            &[
                "pair",
                &code,
                "--relay",
                &listen,
                "--relay-ca",
                s(&https_ca),
                "--console",
                console_url,
                "--trust-console",
                "--config",
                s(&agent_config),
                "--state-dir",
                s(&agent_dir),
            ],
        )
        .await?;
        anyhow::ensure!(pair.code == 0, "pair failed ({}): {}", pair.code, pair.stderr);
        if let Ok(t) = std::env::var("KEYWAY_TEST_TRANSPORT") {
            // As `StackBuilder` does: the suite runs once per transport.
            let text = std::fs::read_to_string(&agent_config)?;
            std::fs::write(&agent_config, format!("{text}\ntransport = {t:?}\n"))?;
        }
        let mut agent = Proc::spawn("keyway-agent", &["run", "--config", s(&agent_config)])?;
        agent.wait_for_log("tunnel up").await?;
        let https_ca_der = keyway_certs::files::load_certs(&https_ca)?.remove(0);
        Ok(Self {
            pairing_code: code,
            relay,
            agent,
            addr,
            admin_addr,
            https_ca_der,
            https_ca,
            relay_config,
            agent_config,
        })
    }
}

impl BinaryStack {
    /// Starts the relay again from its config (same port); returns when it
    /// logs that it serves.
    pub async fn start_relay(&mut self) -> anyhow::Result<()> {
        let mut relay = Proc::spawn("keyway-relay", &["serve", "--config", s(&self.relay_config)])?;
        relay.wait_for_log("relay serving").await?;
        self.relay = relay;
        Ok(())
    }

    /// Starts the agent again; returns once it is spawned (not yet connected).
    pub fn spawn_agent(&mut self) -> anyhow::Result<()> {
        self.agent = Proc::spawn("keyway-agent", &["run", "--config", s(&self.agent_config)])?;
        Ok(())
    }

    /// Sends `signal` (e.g. "KILL", "TERM", "STOP", "CONT") to a process.
    pub async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(st.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGKILLs the relay and waits until it is gone.
    pub async fn kill_relay(&mut self) -> anyhow::Result<()> {
        Self::signal(self.relay.pid(), "KILL").await?;
        self.relay.0.wait().await?;
        Ok(())
    }

    /// SIGKILLs the agent and waits until it is gone.
    pub async fn kill_agent(&mut self) -> anyhow::Result<()> {
        Self::signal(self.agent.pid(), "KILL").await?;
        self.agent.0.wait().await?;
        Ok(())
    }
}
