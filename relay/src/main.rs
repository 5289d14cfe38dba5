//! `keyway-relay`: the public relay and its admin commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyway_relay::init::{init, InitOptions};
use keyway_relay::registry::RegistryError;
use keyway_relay::{admin, Relay, RelayConfig};
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
    Init {
        /// Folder to create (e.g. /etc/keyway).
        #[arg(long)]
        dir: PathBuf,
        /// Public domain: sites are served at https://<site>.<domain>/.
        #[arg(long)]
        domain: String,
        /// Address for HTTPS (TCP) and QUIC (UDP).
        #[arg(long, default_value = "0.0.0.0:443")]
        listen: SocketAddr,
        /// Serve /healthz on this address (plain HTTP; keep it on loopback).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Also create a development CA and a certificate for <domain>,
        /// *.<domain> and loopback (written to https-ca.pem; for testing).
        #[arg(long)]
        self_signed: bool,
        /// Overwrite an existing relay folder (unpairs every site).
        #[arg(long)]
        force: bool,
    },
    /// Serve integrations (HTTPS) and agents (QUIC) until SIGTERM or Ctrl-C.
    Serve {
        /// The relay's config file.
        #[arg(long, short, default_value = "/etc/keyway/relay.toml")]
        config: PathBuf,
    },
    /// Manage sites: add, new pairing code, list, revoke.
    #[command(subcommand)]
    Site(SiteCmd),
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
        Cmd::Init {
            dir,
            domain,
            listen,
            admin_listen,
            self_signed,
            force,
        } => run_init(InitOptions {
            dir,
            domain,
            listen,
            admin_listen,
            self_signed,
            force,
        }),
        Cmd::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(serve(cfg))
        }
        Cmd::Site(cmd) => site(cmd),
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

fn site(cmd: SiteCmd) -> anyhow::Result<()> {
    let common = match &cmd {
        SiteCmd::Add(a) | SiteCmd::Code(a) | SiteCmd::Revoke(a) => &a.common,
        SiteCmd::List(c) => c,
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
            } else if sites.is_empty() {
                say!("No sites yet: keyway-relay site add NAME");
            } else {
                say!(
                    "{:<24} {:<7} {:<7} {:<8} {:<20} AGENT",
                    "SITE",
                    "PAIRED",
                    "ONLINE",
                    "CONSOLE",
                    "LAST SEEN (UTC)"
                );
                for s in sites {
                    let seen = s.last_seen.map(format_time).unwrap_or_else(|| "never".into());
                    let yn = |b: bool| if b { "yes" } else { "no" };
                    let version = s.agent_version.unwrap_or_else(|| "-".into());
                    // Online shows what carries the tunnel: quic, or tcp
                    // where the agent's network blocks UDP.
                    let online = match (s.online, s.transport.as_deref()) {
                        (true, Some(t)) => t,
                        (online, _) => yn(online),
                    };
                    let console = match (s.console_ok, s.console_problem.as_deref()) {
                        (_, Some(p)) if p.starts_with("certificate changed") => "CERT",
                        (Some(true), _) => "ok",
                        (Some(false), _) => "DOWN",
                        (None, _) => "-",
                    };
                    say!(
                        "{:<24} {:<7} {:<7} {:<8} {:<20} {version}",
                        s.name,
                        yn(s.paired),
                        online,
                        console,
                        seen
                    );
                    if let Some(p) = &s.console_problem {
                        say!("  {}: console {p}", s.name);
                    }
                    if let Some(d) = &s.duplicate {
                        say!("  {}: DUPLICATE: {d}", s.name);
                    }
                }
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

fn format_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

async fn serve(cfg: RelayConfig) -> anyhow::Result<()> {
    let relay = Relay::bind(cfg.clone()).await?;
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    tokio::spawn(reload_on_sighup(cfg, relay.public_cert()));
    relay.run(stop).await
}

/// SIGHUP (`systemctl reload keyway-relay`): re-read the public certificate
/// files, e.g. after certbot renewed them. New handshakes get the new one;
/// open connections are untouched. A bad file keeps the old certificate.
async fn reload_on_sighup(cfg: RelayConfig, public: keyway_certs::PublicCert) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return tracing::warn!("no SIGHUP handler: certificate reload is unavailable");
    };
    while hup.recv().await.is_some() {
        match Relay::reload_public_cert(&cfg, &public) {
            Ok(s) => tracing::info!(names = ?s.names, not_after = s.not_after, "public certificate reloaded"),
            Err(e) => tracing::error!("public certificate not reloaded, the old one stays in use: {e:#}"),
        }
    }
}

async fn shutdown_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining agents and open requests");
    stop.cancel();
}
