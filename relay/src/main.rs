//! `keyway-relay`: the public relay and its admin commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyway_relay::init::{init, InitOptions};
use keyway_relay::registry::RegistryError;
use keyway_relay::{admin, RelayConfig};

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

/// Keyway relay: gives UniFi Access consoles on private LANs a public HTTPS
/// address. Agents dial in over QUIC; integrations call
/// https://<site>.<domain>/api/v1/developer/... with the console's own token.
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
    /// Create a relay folder: relay.toml, the private tunnel CA, keys and the
    /// site registry.
    Init(InitOptions),
    /// Serve integrations (HTTPS) and agents (QUIC) until SIGTERM or Ctrl-C.
    Serve {
        /// The relay's config file.
        #[arg(long, short, default_value = "/etc/keyway/relay.toml")]
        config: PathBuf,
    },
    /// Manage sites: add, new pairing code, list, revoke.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Manage the operators who sign in to the web console
    /// (http://ADMIN_LISTEN/console/).
    #[command(subcommand)]
    Operator(OperatorCmd),
}

#[derive(Subcommand)]
enum OperatorCmd {
    /// Create an operator; prints a generated password (shown once, kept
    /// only as an argon2 hash) unless --password-stdin gives one.
    Add(OperatorArgs),
    /// Set a new password (generated, or --password-stdin); unlocks the
    /// account and signs its sessions out at the relay's next restart.
    Password(OperatorArgs),
    /// List operators: failed sign-ins in a row, locked until, last sign-in.
    List(CommonArgs),
    /// Remove an operator.
    Remove(OperatorArgs),
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Sign-in name: 1-64 of a-z, 0-9, '.', '_', '-', '@'.
    name: String,
    /// Read the password from the first line of stdin (at least 12
    /// characters) instead of generating one.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Create a site and print its one-time pairing code.
    Add(SiteArgs),
    /// Print a fresh pairing code for a site (the previous code stops working).
    Code(SiteArgs),
    /// List sites: paired, online, last seen, agent version.
    List(CommonArgs),
    /// Revoke a site's agent certificate: its tunnel closes within a second
    /// and it cannot reconnect until paired again (`site code`).
    Revoke(SiteArgs),
    /// Show a site's limits, or set some: `site limits hq site_rate=50
    /// allow=203.0.113.0/24`. An empty value (`site_rate=`) goes back to
    /// relay.toml's; `--reset` clears them all. Running relays apply a
    /// change within a second.
    Limits(LimitsArgs),
    /// Where a site's TLS ends: `relay` (default: the relay terminates it
    /// and applies the edge limits to each request) or `agent`
    /// (zero-knowledge: the relay routes the encrypted bytes by SNI and
    /// never sees a request; the agent needs `tls_cert`/`tls_key`).
    Mode(ModeArgs),
}

#[derive(clap::Args)]
struct ModeArgs {
    /// Site name.
    name: String,
    /// relay or agent.
    mode: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args)]
struct LimitsArgs {
    /// Site name.
    name: String,
    /// FIELD=VALUE pairs: max_header_bytes, max_headers, max_body_bytes,
    /// max_chunked_body_bytes, max_concurrent_requests, max_websockets,
    /// max_websockets_per_client, site_rate, site_burst, client_rate,
    /// client_burst, allow (comma-separated CIDRs).
    settings: Vec<String>,
    /// Clear every limit set for this site (before applying SETTINGS).
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args)]
struct CommonArgs {
    /// The relay's config file.
    #[arg(long, short, default_value = "/etc/keyway/relay.toml")]
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SiteArgs {
    /// Site name: a DNS label (a-z, 0-9, '-'), the <site> of https://<site>.<domain>/.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// Exit codes: 64 bad config or arguments, 3 no such site, 4 site exists.
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.cmd {
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keyway-relay", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Cmd::Init(opts) => run_init(opts),
        Cmd::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(keyway_relay::serve_until_signal(cfg))
        }
        Cmd::Site(cmd) => site(cmd),
        Cmd::Operator(cmd) => operator(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyway-relay: {e:#}");
            ExitCode::from(match e.downcast_ref::<RegistryError>() {
                Some(RegistryError::NoSuchSite(_)) => 3,
                Some(RegistryError::SiteExists(_)) => 4,
                _ => 1,
            })
        }
    }
}

fn load(config: &std::path::Path) -> Result<RelayConfig, ExitCode> {
    RelayConfig::load(config).map_err(|e| {
        eprintln!("keyway-relay: {e:#}");
        ExitCode::from(64)
    })
}

fn run_init(opts: InitOptions) -> anyhow::Result<()> {
    let report = init(&opts)?;
    say!("Created a Keyway relay in {}:", opts.dir.display());
    for f in &report.created {
        say!("  {}", f.display());
    }
    if let Some(ca) = &report.https_ca {
        say!(
            "\nThe HTTPS certificate is a development one; clients must trust {}.",
            ca.display()
        );
    } else {
        say!("\nPut the public certificate chain and key for the domain and *.domain in https.pem and https.key.");
    }
    say!("Next: keyway-relay serve --config {}", report.config.display());
    say!("Then: keyway-relay site add NAME --config {}", report.config.display());
    Ok(())
}

fn operator(cmd: OperatorCmd) -> anyhow::Result<()> {
    let common = match &cmd {
        OperatorCmd::Add(a) | OperatorCmd::Password(a) | OperatorCmd::Remove(a) => &a.common,
        OperatorCmd::List(c) => c,
    };
    let cfg = RelayConfig::load(&common.config)?;
    let json = common.json;
    match &cmd {
        OperatorCmd::Add(a) | OperatorCmd::Password(a) => {
            let given = if a.password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_string())
            } else {
                None
            };
            let replace = matches!(cmd, OperatorCmd::Password(_));
            let generated = admin::set_operator(&cfg, &a.name, given, replace)?;
            if json {
                say!("{}", serde_json::json!({"operator": a.name, "password": generated}));
            } else {
                match generated {
                    Some(p) => say!(
                        "Operator {}: password {p}\n(shown once; sign in at http://{}/console/)",
                        a.name,
                        cfg.admin_listen.map_or("ADMIN_LISTEN".to_string(), |l| l.to_string())
                    ),
                    None => say!("Operator {}: password set.", a.name),
                }
            }
        }
        OperatorCmd::List(_) => {
            let all = admin::operators(&cfg)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                say!("No operators yet: keyway-relay operator add NAME");
            } else {
                for o in all {
                    let locked = if o.locked_until > keyway_relay::registry::now() {
                        " (locked)"
                    } else {
                        ""
                    };
                    say!("{}\tfailed sign-ins: {}{locked}", o.name, o.failures);
                }
            }
        }
        OperatorCmd::Remove(a) => {
            if !admin::remove_operator(&cfg, &a.name)? {
                anyhow::bail!("no operator {}", a.name);
            }
            say!("Removed operator {}.", a.name);
        }
    }
    Ok(())
}

fn site(cmd: SiteCmd) -> anyhow::Result<()> {
    let common = match &cmd {
        SiteCmd::Add(a) | SiteCmd::Code(a) | SiteCmd::Revoke(a) => &a.common,
        SiteCmd::List(c) => c,
        SiteCmd::Limits(a) => &a.common,
        SiteCmd::Mode(a) => &a.common,
    };
    let cfg = RelayConfig::load(&common.config)?;
    let json = common.json;
    match &cmd {
        SiteCmd::Add(a) | SiteCmd::Code(a) => {
            let issued = if matches!(cmd, SiteCmd::Add(_)) {
                admin::add_site(&cfg, &a.name)?
            } else {
                admin::new_code(&cfg, &a.name)?
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                let minutes = cfg.pairing_code_ttl.as_secs() / 60;
                say!("Site {} → {}", issued.site, issued.url);
                say!("Pairing code: {}   (single use, valid {minutes} minutes)", issued.code);
                say!("On the machine next to the console, run:\n\n  {}\n", issued.command);
            }
        }
        SiteCmd::List(_) => {
            let sites = admin::list(&cfg)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&sites)?);
            } else {
                say!("{}", admin::sites_table(&sites));
            }
        }
        SiteCmd::Limits(a) => {
            let mut changes = Vec::new();
            if a.reset {
                changes.extend(
                    keyway_relay::limits::FIELDS
                        .iter()
                        .map(|(f, _)| (f.to_string(), String::new())),
                );
            }
            for s in &a.settings {
                let Some((field, value)) = s.split_once('=') else {
                    anyhow::bail!("{s:?}: expected FIELD=VALUE (e.g. site_rate=50), or FIELD= to unset");
                };
                changes.push((field.trim().to_string(), value.to_string()));
            }
            let limits = if changes.is_empty() {
                admin::site_limits(&cfg, &a.name)?
            } else {
                admin::set_site_limits(&cfg, &a.name, &changes)?
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&limits)?);
            } else {
                say!("{}", admin::limits_table(&limits));
            }
        }
        SiteCmd::Mode(a) => {
            let mode = admin::set_mode(&cfg, &a.name, &a.mode)?;
            if json {
                say!("{}", serde_json::json!({"site": a.name, "terminate": mode.as_str()}));
            } else if mode == keyway_relay::registry::Terminate::Agent {
                say!("{}: zero-knowledge. The relay routes its connections to the agent unopened; the agent must have tls_cert and tls_key for {}.{}.", a.name, a.name, cfg.domain);
            } else {
                say!("{}: the relay terminates its TLS.", a.name);
            }
        }
        SiteCmd::Revoke(a) => {
            let serial = admin::revoke(&cfg, &a.name)?;
            if json {
                say!("{}", serde_json::json!({"site": a.name, "revoked_serial": serial}));
            } else if let Some(serial) = serial {
                say!("Revoked the certificate of {} (serial {serial}); a running relay closes its tunnel within a second.", a.name);
                say!("To pair again: keyway-relay site code {}", a.name);
            } else {
                say!(
                    "{} had no paired agent; its pending code (if any) is cancelled.",
                    a.name
                );
            }
        }
    }
    Ok(())
}
