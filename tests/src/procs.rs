//! The real binaries as separate processes: the Done-when flow of the
//! pairing issue (`init`, `serve`, `site add`, `pair`, `run`) and a handle
//! on each process for memory measurements and signals.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::stack::{free_port, DOMAIN, SITE};
use crate::workspace_bin;

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

impl Proc {
    /// Starts `bin` with `args`, logging to a pipe.
    pub fn spawn(bin: &str, args: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new(workspace_bin(bin))
            .args(args)
            .env("KEYWAY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {bin}"))?;
        Ok(Self(child))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.0.id().expect("running process has a pid")
    }

    /// Waits (bounded) until the process logs a line containing `needle`,
    /// then keeps draining its log so it never blocks on a full pipe.
    pub async fn wait_for_log(&mut self, needle: &str) -> anyhow::Result<()> {
        let stderr = self.0.stderr.take().context("log already taken")?;
        let mut lines = BufReader::new(stderr).lines();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(needle) {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        match found {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => bail!("process exited without logging {needle:?}"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("process did not log {needle:?} within 30 s"),
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(())
    }
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
