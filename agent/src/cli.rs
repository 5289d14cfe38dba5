//! The command line of `keyway-agent`: what it accepts and its `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keyway_agent::admin::CommandError;
use keyway_agent::pair::{ConsolePin, PairOptions};

/// `--config`, shared by every command.
#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The agent's config file.
    #[arg(long, short, default_value = "/etc/keyway/agent.toml")]
    pub config: PathBuf,
}

/// Keyway agent: makes the UniFi Access console on this LAN reachable through
/// a Keyway relay. It only dials out (QUIC to the relay) and never listens.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Log format on stderr: human (colours on a terminal) or json (one
    /// object per line, for the journal and log shippers). Also
    /// $KEYWAY_LOG_FORMAT; levels with $KEYWAY_LOG (e.g. debug).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written on stderr.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// For people (colours on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr in `format` (or $KEYWAY_LOG_FORMAT), at $KEYWAY_LOG's levels.
pub fn init_logging(format: Option<LogFormat>) {
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
pub enum Cmd {
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
    Pair(PairArgs),
    /// Tell the relay to revoke this agent, then remove its identity (key,
    /// certificates) and config.
    Unpair {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show what the running agent is doing: paired site, relay, transport
    /// (QUIC, or TLS over TCP where UDP is blocked), since when, or why it
    /// is not connected; the round trip to the relay, whether the console
    /// answers, the agent certificate's expiry and the last hour's requests
    /// and errors. Asks the running agent through agent.sock beside its key
    /// (members of the keyway group need no root). Exit code 0 when online,
    /// 3 otherwise.
    Status {
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
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
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List issued tokens (names, policies, expiry; never the tokens).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke an integration's token; the running agent refuses it at once.
    Revoke {
        /// The integration's name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
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
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum EventsAction {
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
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove the webhook endpoint from the console and forget it.
    StopCapture {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum ConsoleAction {
    /// Trust the certificate the console presents now.
    Pin {
        #[command(flatten)]
        config: ConfigArg,
        /// The SHA-256 fingerprint expected (from the console's settings);
        /// without it, asks on the terminal.
        #[arg(long)]
        fingerprint: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Read the token from stdin, check it with the console, store it.
    Set {
        #[command(flatten)]
        config: ConfigArg,
        /// Store it even if the console cannot be asked now.
        #[arg(long)]
        no_verify: bool,
    },
    /// Delete the stored token (the event hub turns off at the next start).
    Clear {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `pair`'s arguments.
#[derive(Args)]
pub struct PairArgs {
    /// The pairing code, e.g. 7KQ4-M2XH-9P.
    pub code: String,
    /// The relay, HOST[:PORT] (UDP; port 443 by default).
    #[arg(long)]
    pub relay: String,
    /// The console's API base, e.g. https://192.168.1.10:12445.
    #[arg(long)]
    pub console: String,
    /// Trust this CA file for the relay's certificate (default: public CAs).
    #[arg(long)]
    pub relay_ca: Option<PathBuf>,
    /// The console certificate's SHA-256 fingerprint; pairing stops if it differs.
    #[arg(long, conflicts_with = "trust_console")]
    pub console_fingerprint: Option<String>,
    /// Pin whatever certificate the console presents now.
    #[arg(long)]
    pub trust_console: bool,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Where to keep the key and certificates.
    #[arg(long, default_value = "/var/lib/keyway")]
    pub state_dir: PathBuf,
    /// Replace an existing pairing.
    #[arg(long)]
    pub force: bool,
}

impl PairArgs {
    /// The pairing to do; a malformed fingerprint is a usage error.
    pub fn options(self) -> Result<PairOptions, CommandError> {
        let console = match (
            fingerprint("--console-fingerprint", self.console_fingerprint)?,
            self.trust_console,
        ) {
            (Some(fp), _) => ConsolePin::Expect(fp),
            (None, true) => ConsolePin::TrustFirstUse,
            (None, false) => ConsolePin::Ask,
        };
        Ok(PairOptions {
            code: self.code,
            relay: self.relay,
            relay_ca: self.relay_ca,
            console_url: self.console,
            console,
            config: self.config.config,
            state_dir: self.state_dir,
            force: self.force,
        })
    }
}

/// A fingerprint argument, or a usage error naming the flag.
pub fn fingerprint(flag: &str, fp: Option<String>) -> Result<Option<keyway_certs::Fingerprint>, CommandError> {
    fp.map(|fp| fp.parse())
        .transpose()
        .map_err(|e| CommandError::Usage(anyhow::anyhow!("{flag}: {e}")))
}
