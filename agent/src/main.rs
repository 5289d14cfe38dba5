//! `keyway-agent`: the LAN side of a Keyway tunnel.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyway_agent::pair::{pair, ConsolePin, PairOptions};
use keyway_agent::{Agent, AgentConfig};
use tokio_util::sync::CancellationToken;

/// `println!`, except that a reader that went away (`| head -1`) ends the
/// program quietly, as other command-line tools do, instead of a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe { std::process::exit(0) }
        }
    }};
}

/// Keyway agent: makes the UniFi Access console on this LAN reachable through
/// a Keyway relay. It only dials out (QUIC to the relay) and never listens.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format on stderr: human (colours on a terminal) or json (one
    /// object per line, for the journal and log shippers). Also
    /// $KEYWAY_LOG_FORMAT; levels with $KEYWAY_LOG (e.g. debug).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: Option<LogFormat>) {
    let format = format.unwrap_or_else(|| match std::env::var("KEYWAY_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Human,
    });
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWAY_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => {
            use std::io::IsTerminal;
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Enrol this machine with a relay using the one-time code from
    /// `keyway-relay site add`. Generates this agent's key locally (it never
    /// leaves this machine), proves the code, pins the console's certificate
    /// and writes the config. Exit codes: 10 wrong code, 11 expired, 12 used,
    /// 13 burned, 14 proof failed, 15 relay unreachable, 16 relay not
    /// trusted, 17 console unreachable, 18 console fingerprint mismatch,
    /// 19 already paired, 20 console not pinned, 21 relay speaks another
    /// protocol version, 65 malformed code.
    Pair {
        /// The pairing code, e.g. 7KQ4-M2XH-9P.
        code: String,
        /// The relay, HOST[:PORT] (UDP; port 443 by default).
        #[arg(long)]
        relay: String,
        /// The console's API base, e.g. https://192.168.1.10:12445.
        #[arg(long)]
        console: String,
        /// Trust this CA file for the relay's certificate (default: public CAs).
        #[arg(long)]
        relay_ca: Option<PathBuf>,
        /// The console certificate's SHA-256 fingerprint; pairing stops if it differs.
        #[arg(long, conflicts_with = "trust_console")]
        console_fingerprint: Option<String>,
        /// Pin whatever certificate the console presents now.
        #[arg(long)]
        trust_console: bool,
        /// Where to write the agent config.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
        /// Where to keep the key and certificates.
        #[arg(long, default_value = "/var/lib/keyway")]
        state_dir: PathBuf,
        /// Replace an existing pairing.
        #[arg(long)]
        force: bool,
    },
    /// Tell the relay to revoke this agent, then remove its identity (key,
    /// certificates) and config.
    Unpair {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
    /// Show what the running agent is doing: paired site, relay, transport
    /// (QUIC, or TLS over TCP where UDP is blocked), since when, or why it
    /// is not connected; the round trip to the relay, whether the console
    /// answers, the agent certificate's expiry and the last hour's requests
    /// and errors. Asks the running agent through agent.sock beside its key
    /// (members of the keyway group need no root). Exit code 0 when online,
    /// 3 otherwise.
    Status {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check what this agent needs and say what to fix: the config, the agent
    /// certificate's expiry, the relay's name in DNS, the relay over UDP
    /// (QUIC) and over TCP (says plainly when UDP is blocked), this machine's
    /// clock against the relay's, UDP buffer sizes, the console and its
    /// pinned certificate. Exit code 1 if any check fails.
    Doctor {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
    /// The console's certificate: `pin` trusts the one it presents now, after
    /// it changed (a console update regenerates it), without a new pairing
    /// code. Shows the pinned fingerprint and the new one and asks (or takes
    /// --fingerprint); the running agent picks the new pin up at its next
    /// console check, with no restart. Exit codes: 17 console unreachable,
    /// 18 not the --fingerprint given, 20 not confirmed.
    Console {
        #[command(subcommand)]
        action: ConsoleAction,
    },
    /// Store the console's API token on this machine (mode 0600), read from
    /// stdin so it stays out of shell history and `ps`. With it, the agent
    /// holds one WebSocket to the console and serves every door-event
    /// subscriber from its event hub (numbered, resumable with ?since=).
    /// The token never crosses the tunnel. Restart the agent to apply.
    ConsoleToken {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The event hub's webhook capture: credential unlocks (NFC, PIN, face,
    /// mobile) are sent by the console only as webhooks; captured, they
    /// reach integrations on the same event stream as everything else.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Keyway integration tokens: one per integration, so a leak is revoked
    /// without touching the console, each with its own route policy. The
    /// integration sends it instead of the console token; the agent checks
    /// it and calls the console with the console token (`console-token set`),
    /// which never crosses the internet.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
    },
    /// The audit log: one line per request through the tunnel (who, what,
    /// status, time; never tokens or bodies).
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Connect to the relay and forward requests to the console until SIGTERM
    /// or Ctrl-C. Reconnects by itself after any failure.
    Run {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a token for an integration; it is printed once and only its
    /// hash is kept. Rules are 'METHOD /path/pattern' (`*` = one segment,
    /// a final `**` = the rest); deny wins; with any --allow, a call must
    /// match one.
    Add {
        /// The integration's name, e.g. coworks.
        name: String,
        /// A preset policy: full, read-only, members-and-visitors.
        #[arg(long, default_value = "full")]
        preset: String,
        /// Allow only calls matching (repeatable), e.g. 'GET /api/v1/developer/**'.
        #[arg(long)]
        allow: Vec<String>,
        /// Refuse calls matching (repeatable), e.g. 'PUT /api/v1/developer/doors/*/unlock'.
        #[arg(long)]
        deny: Vec<String>,
        /// Expire after this long, e.g. 90d.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
    /// List issued tokens (names, policies, expiry; never the tokens).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
    /// Revoke an integration's token; the running agent refuses it at once.
    Revoke {
        /// The integration's name.
        name: String,
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Show the newest records.
    Tail {
        /// How many.
        #[arg(short, default_value_t = 20)]
        n: usize,
        /// Keep printing new records as they come.
        #[arg(long)]
        follow: bool,
        /// Print the JSON lines as stored.
        #[arg(long)]
        json: bool,
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum EventsAction {
    /// Register this agent as a webhook endpoint on the console for every
    /// door event, listening on a LAN address of this machine (the console
    /// must reach it; nothing is exposed to the internet). Needs the console
    /// token (`console-token set`). Restart the agent to start listening.
    CaptureWebhooks {
        /// Where to listen, a LAN address of this machine, e.g. 192.168.1.20:12446.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The URL the console posts to (default: http://LISTEN/keyway/webhook).
        #[arg(long)]
        url: Option<String>,
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
    /// Remove the webhook endpoint from the console and forget it.
    StopCapture {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConsoleAction {
    /// Trust the certificate the console presents now.
    Pin {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
        /// The SHA-256 fingerprint expected (from the console's settings);
        /// without it, asks on the terminal.
        #[arg(long)]
        fingerprint: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Read the token from stdin, check it with the console, store it.
    Set {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
        /// Store it even if the console cannot be asked now.
        #[arg(long)]
        no_verify: bool,
    },
    /// Delete the stored token (the event hub turns off at the next start).
    Clear {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.cmd {
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keyway-agent", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Pair {
            code,
            relay,
            console,
            relay_ca,
            console_fingerprint,
            trust_console,
            config,
            state_dir,
            force,
        } => {
            let pin = match (console_fingerprint, trust_console) {
                (Some(fp), _) => match fp.parse() {
                    Ok(fp) => ConsolePin::Expect(fp),
                    Err(e) => {
                        eprintln!("keyway-agent: --console-fingerprint: {e}");
                        return ExitCode::from(64);
                    }
                },
                (None, true) => ConsolePin::TrustFirstUse,
                (None, false) => ConsolePin::Ask,
            };
            let opts = PairOptions {
                code,
                relay,
                relay_ca,
                console_url: console,
                console: pin,
                config,
                state_dir,
                force,
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(pair(&opts)) {
                Ok(p) => {
                    say!("Paired: site {} is served at {}", p.site, p.url);
                    say!("Console certificate pinned: {}", p.console_fingerprint);
                    say!("Config written to {}", p.config.display());
                    say!(
                        "Start it: keyway-agent run --config {}  (or: systemctl enable --now keyway-agent)",
                        p.config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keyway-agent: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Cmd::Unpair { config } => match tell_relay(&config).and_then(|()| keyway_agent::pair::unpair(&config)) {
            Ok(removed) => {
                for p in removed {
                    say!("removed {}", p.display());
                }
                say!("Unpaired: the relay revoked this agent's certificate.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyway-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Status { config, json } => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let read = AgentConfig::load(&config).and_then(|cfg| rt.block_on(keyway_agent::status::query(&cfg.key)));
            match read {
                Ok((s, running)) => {
                    if json {
                        let mut v = serde_json::to_value(&s).expect("status serialises");
                        v["running"] = running.into();
                        say!("{v}");
                    } else {
                        say!("{}", keyway_agent::status::describe(&s, running));
                    }
                    if running && s.state == "online" {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    }
                }
                Err(e) => {
                    eprintln!("keyway-agent: {e:#}");
                    ExitCode::from(64)
                }
            }
        }
        Cmd::Doctor { config } => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let checks = rt.block_on(keyway_agent::doctor::run(&config));
            let (text, failed) = keyway_agent::doctor::report(&checks);
            say!("{}", text.trim_end_matches('\n'));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::Token { action } => match token(action) {
            Ok(msg) => {
                say!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyway-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Audit {
            action:
                AuditCmd::Tail {
                    n,
                    follow,
                    json,
                    config,
                },
        } => match audit_tail(&config, n, follow, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keyway-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Events { action } => match events(action) {
            Ok(msg) => {
                say!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyway-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Console {
            action: ConsoleAction::Pin { config, fingerprint },
        } => console_pin(&config, fingerprint.as_deref()),
        Cmd::ConsoleToken { action } => match console_token(action) {
            Ok(msg) => {
                say!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyway-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keyway-agent: {e:#}");
                    return ExitCode::from(64);
                }
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keyway-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Asks the relay to revoke this agent before its identity is deleted; if
/// the relay cannot be told, nothing is deleted (run again, or have the
/// operator revoke the site and delete the files by hand).
fn tell_relay(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(config)?;
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async { Agent::new(&cfg)?.notify_unpair().await })
        .map_err(|e| e.context("could not tell the relay; nothing was removed (keyway-relay site revoke SITE does it from the relay side)"))
}

fn token(action: TokenCmd) -> anyhow::Result<String> {
    use keyway_agent::access::policy::{Policy, Rule};
    use keyway_agent::access::tokens::TokenStore;
    let config = match &action {
        TokenCmd::Add { config, .. } | TokenCmd::List { config, .. } | TokenCmd::Revoke { config, .. } => config,
    };
    let cfg = AgentConfig::load(config)?;
    let store = TokenStore::new(&cfg.state_dir());
    match action {
        TokenCmd::Add {
            name,
            preset,
            allow,
            deny,
            expires,
            ..
        } => {
            let parse = |v: Vec<String>| v.iter().map(|r| r.parse::<Rule>()).collect::<Result<Vec<_>, _>>();
            let extra = Policy {
                allow: parse(allow).map_err(anyhow::Error::msg)?,
                deny: parse(deny).map_err(anyhow::Error::msg)?,
            };
            let policy = Policy::preset(&preset).map_err(anyhow::Error::msg)?.with(extra);
            let token = store.add(&name, policy, Some(preset), expires)?;
            let mut msg = format!(
                "{token}\n\nThe token of integration {name:?}: give it to the integration as its API token \
                 (Authorization: Bearer …). It is shown only this once."
            );
            if keyway_agent::console_token::load(&cfg.console_token_path())?.is_none() {
                msg.push_str("\nNote: no console token is stored yet; calls with this token fail until `keyway-agent console-token set`.");
            }
            Ok(msg)
        }
        TokenCmd::List { json, .. } => {
            let entries = store.load()?;
            if json {
                return Ok(serde_json::to_string_pretty(&entries)?);
            }
            if entries.is_empty() {
                return Ok("No integration tokens (integrations use the console token: passthrough).".into());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
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
                let rules: Vec<String> = e
                    .policy
                    .allow
                    .iter()
                    .map(|r| format!("allow {r}"))
                    .chain(e.policy.deny.iter().map(|r| format!("deny {r}")))
                    .collect();
                out.push_str(&format!(
                    "{:<20} {:<12} {:<22} {:<10} {}\n",
                    e.name,
                    format!("{}…", e.hint),
                    e.preset.unwrap_or_default(),
                    expires,
                    rules.join("; ")
                ));
            }
            Ok(out.trim_end().to_string())
        }
        TokenCmd::Revoke { name, .. } => {
            store.revoke(&name)?;
            Ok(format!(
                "Revoked the token of {name:?}; the agent refuses it from now on."
            ))
        }
    }
}

fn audit_tail(config: &std::path::Path, n: usize, follow: bool, json: bool) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(config)?;
    let dir = cfg.state_dir();
    let show = |line: &str| {
        if json {
            say!("{line}");
        } else {
            say!("{}", keyway_agent::audit::describe(line));
        }
    };
    keyway_agent::audit::tail(&dir, n)?.iter().for_each(|l| show(l));
    if !follow {
        return Ok(());
    }
    let path = keyway_agent::audit::path_in(&dir);
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated
        }
        if len > offset {
            let text = std::fs::read(&path)?;
            let new = String::from_utf8_lossy(&text[offset as usize..]).into_owned();
            new.lines().for_each(&show);
            offset = len;
        }
    }
}

fn events(action: EventsAction) -> anyhow::Result<String> {
    use keyway_agent::hub::webhooks::{self, Capture};
    let config = match &action {
        EventsAction::CaptureWebhooks { config, .. } | EventsAction::StopCapture { config } => config,
    };
    let cfg = AgentConfig::load(config)?;
    let token = keyway_agent::console_token::load(&cfg.console_token_path())?
        .ok_or_else(|| anyhow::anyhow!("no console token: run `keyway-agent console-token set` first"))?;
    let console = keyway_agent::console::Console::new(
        cfg.console_uri()?,
        cfg.console_trust()?,
        cfg.console_connect_timeout,
        cfg.console_timeout,
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    match action {
        EventsAction::CaptureWebhooks { listen, url, .. } => {
            if Capture::load(&cfg.state_dir())?.is_some() {
                anyhow::bail!("webhooks are already captured; `keyway-agent events stop-capture` first");
            }
            if url.is_none() && listen.ip().is_unspecified() {
                anyhow::bail!("--listen {listen} is not an address the console can post to: give --url too");
            }
            let url = url.unwrap_or_else(|| format!("http://{listen}/keyway/webhook"));
            let events: Vec<String> = webhooks::DOOR_EVENTS.iter().map(|s| s.to_string()).collect();
            let capture = rt.block_on(webhooks::register(&console, &token, listen, &url, &events))?;
            capture.store(&cfg.state_dir())?;
            Ok(format!(
                "The console will post door events to {url} (endpoint {}). Restart the agent to start listening.",
                capture.id
            ))
        }
        EventsAction::StopCapture { .. } => {
            let Some(capture) = Capture::load(&cfg.state_dir())? else {
                return Ok("Webhooks are not captured.".into());
            };
            let path = format!("/api/v1/developer/webhooks/endpoints/{}", capture.id);
            let (status, _) = rt.block_on(console.call(http::Method::DELETE, &path, &token, None))?;
            if !status.is_success() && status != http::StatusCode::NOT_FOUND {
                anyhow::bail!("the console refused to delete endpoint {} (HTTP {status})", capture.id);
            }
            Capture::forget(&cfg.state_dir())?;
            Ok(format!("Removed webhook endpoint {} from the console.", capture.id))
        }
    }
}

/// `console pin`: the logic is `keyway_agent::repin`; this prints and asks.
fn console_pin(config: &std::path::Path, fingerprint: Option<&str>) -> ExitCode {
    use keyway_agent::repin::{pin, Pinned};
    let expected = match fingerprint.map(str::parse::<keyway_certs::Fingerprint>).transpose() {
        Ok(fp) => fp,
        Err(e) => {
            eprintln!("keyway-agent: --fingerprint: {e}");
            return ExitCode::from(64);
        }
    };
    let ask = |old: &keyway_certs::Fingerprint, new: &keyway_certs::Fingerprint| {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return false;
        }
        say!("The console's certificate changed.\n  pinned:   {old}\n  presents: {new}");
        print!("Trust the new one? Compare with the console's settings if you can. [y/N] ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(pin(config, expected, ask)) {
        Ok(Pinned::Unchanged(fp)) => {
            say!("The console presents the pinned certificate ({fp}); nothing to do.");
            ExitCode::SUCCESS
        }
        Ok(Pinned::Changed { old, new }) => {
            say!(
                "Pinned {new} (was {old}) in {}.\nThe running agent trusts it from its next console check; no restart needed.",
                config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keyway-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn console_token(action: TokenAction) -> anyhow::Result<String> {
    use keyway_agent::console_token;
    match action {
        TokenAction::Set { config, no_verify } => {
            let cfg = AgentConfig::load(&config)?;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)?;
            let token = console_token::parse(&text)?;
            if !no_verify {
                let console = keyway_agent::console::Console::new(
                    cfg.console_uri()?,
                    cfg.console_trust()?,
                    cfg.console_connect_timeout,
                    cfg.console_timeout,
                )?;
                let rt = tokio::runtime::Runtime::new()?;
                let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"))?;
                if let Err(resp) = rt.block_on(console.check_token(&bearer)) {
                    anyhow::bail!(
                        "the console did not accept this token (HTTP {}); nothing was stored \
                         (--no-verify stores it anyway)",
                        resp.status()
                    );
                }
            }
            let path = cfg.console_token_path();
            console_token::store(&path, &token)?;
            Ok(format!(
                "Console token stored in {} (mode 0600). Restart the agent to start its event hub.",
                path.display()
            ))
        }
        TokenAction::Clear { config } => {
            let path = AgentConfig::load(&config)?.console_token_path();
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(format!("Removed {}.", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("No console token was stored.".into()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let agent = Agent::new(&cfg)?;
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    agent.run(stop).await;
    Ok(())
}

async fn shutdown_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: draining open requests");
    stop.cancel();
}
