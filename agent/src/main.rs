//! `keyway-agent`: the LAN side of a Keyway tunnel. This file parses the
//! command line ([`cli`]), calls the library (`keyway_agent::admin` and
//! friends) on one runtime, prints, and maps failures to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{AuditCmd, Cli, Cmd, ConsoleAction, EventsAction, TokenAction, TokenCmd};
use keyway_agent::admin::{self, CommandError, NewToken};
use keyway_agent::AgentConfig;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyway-agent: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyway-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The config at `path`, or a usage error.
fn load(path: &std::path::Path) -> Result<AgentConfig, CommandError> {
    AgentConfig::load(path).map_err(CommandError::Usage)
}

async fn command(cmd: Cmd) -> Result<ExitCode, CommandError> {
    match cmd {
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keyway-agent", &mut std::io::stdout());
        }
        Cmd::Pair(args) => {
            let p = keyway_agent::pair::pair(&args.options()?).await?;
            say!("Paired: site {} is served at {}", p.site, p.url);
            say!("Console certificate pinned: {}", p.console_fingerprint);
            say!("Config written to {}", p.config.display());
            say!(
                "Start it: keyway-agent run --config {}  (or: systemctl enable --now keyway-agent)",
                p.config.display()
            );
        }
        Cmd::Unpair { config } => {
            for p in admin::unpair(&config.config).await? {
                say!("removed {}", p.display());
            }
            say!("Unpaired: the relay revoked this agent's certificate.");
        }
        Cmd::Status { config, json } => {
            let cfg = load(&config.config)?;
            let (s, running) = keyway_agent::status::query(&cfg.key)
                .await
                .map_err(CommandError::Usage)?;
            if json {
                let mut v = serde_json::to_value(&s).map_err(anyhow::Error::from)?;
                v["running"] = running.into();
                say!("{v}");
            } else {
                say!("{}", keyway_agent::status::describe(&s, running));
            }
            if !(running && s.state == "online") {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Doctor { config } => {
            let checks = keyway_agent::doctor::run(&config.config).await;
            let (text, failed) = keyway_agent::doctor::report(&checks);
            say!("{}", text.trim_end_matches('\n'));
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Token { action } => token(action)?,
        Cmd::Audit {
            action:
                AuditCmd::Tail {
                    n,
                    follow,
                    json,
                    config,
                },
        } => {
            let dir = load(&config.config)?.state_dir();
            let show = |line: &str| match json {
                true => say!("{line}"),
                false => say!("{}", keyway_agent::audit::describe(line)),
            };
            keyway_agent::audit::tail(&dir, n)?.iter().for_each(|l| show(l));
            if follow {
                admin::follow_audit(&dir, show).await?;
            }
        }
        Cmd::Events { action } => match action {
            EventsAction::CaptureWebhooks { listen, url, config } => {
                let capture = admin::capture_webhooks(&load(&config.config)?, listen, url).await?;
                say!(
                    "The console will post door events to {} (endpoint {}). Restart the agent to start listening.",
                    capture.endpoint,
                    capture.id
                );
            }
            EventsAction::StopCapture { config } => match admin::stop_capture(&load(&config.config)?).await? {
                Some(id) => say!("Removed webhook endpoint {id} from the console."),
                None => say!("Webhooks are not captured."),
            },
        },
        Cmd::Console {
            action: ConsoleAction::Pin {
                config,
                fingerprint: fp,
            },
        } => console_pin(&config.config, cli::fingerprint("--fingerprint", fp)?).await?,
        Cmd::ConsoleToken { action } => match action {
            TokenAction::Set { config, no_verify } => {
                let cfg = load(&config.config)?;
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).map_err(anyhow::Error::from)?;
                let path = admin::set_console_token(&cfg, &text, !no_verify).await?;
                say!(
                    "Console token stored in {} (mode 0600). Restart the agent to start its event hub.",
                    path.display()
                );
            }
            TokenAction::Clear { config } => match admin::clear_console_token(&load(&config.config)?)? {
                Some(path) => say!("Removed {}.", path.display()),
                None => say!("No console token was stored."),
            },
        },
        Cmd::Run { config } => admin::run_until_signal(&load(&config.config)?).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn token(action: TokenCmd) -> Result<(), CommandError> {
    match action {
        TokenCmd::Add {
            name,
            preset,
            allow,
            deny,
            expires,
            config,
        } => {
            let new = NewToken {
                name: name.clone(),
                preset,
                allow,
                deny,
                expires,
            };
            let issued = admin::issue_token(&load(&config.config)?, new)?;
            say!("{}\n", issued.token);
            say!("The token of integration {name:?}: give it to the integration as its API token (Authorization: Bearer …). It is shown only this once.");
            if issued.no_console_token {
                say!("Note: no console token is stored yet; calls with this token fail until `keyway-agent console-token set`.");
            }
        }
        TokenCmd::List { json, config } => {
            let entries = admin::tokens(&load(&config.config)?)?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&entries).map_err(anyhow::Error::from)?
                );
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                say!("{}", admin::token_table(&entries, now));
            }
        }
        TokenCmd::Revoke { name, config } => {
            admin::revoke_token(&load(&config.config)?, &name)?;
            say!("Revoked the token of {name:?}; the agent refuses it from now on.");
        }
    }
    Ok(())
}

/// `console pin`: the logic is `keyway_agent::repin`; this prints and asks.
async fn console_pin(
    config: &std::path::Path,
    expected: Option<keyway_certs::Fingerprint>,
) -> Result<(), CommandError> {
    use keyway_agent::repin::{pin, Pinned};
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
    match pin(config, expected, ask).await? {
        Pinned::Unchanged(fp) => say!("The console presents the pinned certificate ({fp}); nothing to do."),
        Pinned::Changed { old, new } => say!(
            "Pinned {new} (was {old}) in {}.\nThe running agent trusts it from its next console check; no restart needed.",
            config.display()
        ),
    }
    Ok(())
}
