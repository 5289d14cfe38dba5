//! `keyway-agent pair`: enrol this machine with a relay using a one-time code.
//!
//! The key pair is generated here and only its public half is sent; the code
//! is proven with SPAKE2 bound to the TLS session (`keyway_certs::pake`), so
//! neither an eavesdropper nor a relay impostor learns anything to test
//! guesses with. Before spending the code, the console is contacted and its
//! certificate fingerprint shown and pinned.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use keyway_certs::files::write_atomic;
use keyway_certs::pake::{hex, unhex, PairingCode, Pake, Side, EXPORTER_LABEL};
use keyway_certs::{ConsoleTrust, Fingerprint};
use keyway_proto::control::{read_frame, write_frame};
use keyway_proto::pair::{PairErrorKind, PairMsg};
use keyway_proto::PROTOCOL_VERSION;
use keyway_transport::dial::{self, DialError};
use rcgen::PublicKeyData;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::time::timeout;

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How to decide on the console's certificate.
#[derive(Debug, Clone)]
pub enum ConsolePin {
    /// It must have this fingerprint.
    Expect(Fingerprint),
    /// Pin whatever the console presents now.
    TrustFirstUse,
    /// Show the fingerprint and ask on the terminal.
    Ask,
}

/// What `pair` needs.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The code as typed.
    pub code: String,
    /// `HOST[:PORT]` of the relay (port 443 by default).
    pub relay: String,
    /// A CA file to trust for the relay's public certificate (else the web PKI).
    pub relay_ca: Option<PathBuf>,
    /// `https://IP:12445`.
    pub console_url: String,
    /// Console certificate decision.
    pub console: ConsolePin,
    /// Where to write the agent config.
    pub config: PathBuf,
    /// Where to keep the key and certificates.
    pub state_dir: PathBuf,
    /// Replace an existing pairing.
    pub force: bool,
}

/// A successful pairing.
#[derive(Debug, Clone)]
pub struct Paired {
    /// The site.
    pub site: String,
    /// Its public URL.
    pub url: String,
    /// The config written.
    pub config: PathBuf,
    /// The pinned console fingerprint.
    pub console_fingerprint: Fingerprint,
}

/// Why pairing failed; each has its own exit code and a next step.
#[derive(Debug, Error)]
pub enum PairError {
    /// The code is not a code.
    #[error("{0}")]
    BadCode(String),
    /// The relay refused the code.
    #[error("{message}")]
    Refused {
        /// Why.
        kind: PairErrorKind,
        /// The relay's words.
        message: String,
    },
    /// The proof did not verify.
    #[error("the pairing code does not match (mistyped, or something between you and the relay is not the relay); check the code and try again")]
    ProofFailed,
    /// No relay answered.
    #[error("could not reach the relay ({0}): check the address, and that UDP or TCP to its port is allowed")]
    RelayUnreachable(String),
    /// The relay's certificate was not trusted.
    #[error("the relay's certificate is not trusted ({0}); pass the right --relay-ca, or check the relay address")]
    RelayUntrusted(String),
    /// The relay's certificate is outside its dates at this machine's time.
    #[error("the relay's certificate is not valid at this machine's time ({0}); {fix}", fix = crate::clock::FIX)]
    ClockWrong(String),
    /// The console did not answer.
    #[error(
        "could not reach the console at {0}; check --console (https://IP:12445) and that this machine is on its LAN"
    )]
    ConsoleUnreachable(String),
    /// The console presented another certificate than expected.
    #[error(
        "the console's certificate fingerprint is {seen}, not the expected {expected}; check --console-fingerprint"
    )]
    ConsoleMismatch {
        /// Expected.
        expected: Fingerprint,
        /// Seen.
        seen: Fingerprint,
    },
    /// A pairing exists.
    #[error("this machine is already paired ({0} exists); use --force to replace the pairing")]
    AlreadyPaired(PathBuf),
    /// The person said no to the fingerprint, or could not be asked.
    #[error("{0}")]
    NotPinned(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl PairError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadCode(_) => 65,
            Self::Refused { kind, .. } => match kind {
                PairErrorKind::WrongCode => 10,
                PairErrorKind::Expired => 11,
                PairErrorKind::Used => 12,
                PairErrorKind::Burned => 13,
                PairErrorKind::ProofFailed => 14,
                PairErrorKind::Version => 21,
                PairErrorKind::Internal => 1,
            },
            Self::ProofFailed => 14,
            Self::RelayUnreachable(_) => 15,
            Self::RelayUntrusted(_) => 16,
            Self::ConsoleUnreachable(_) => 17,
            Self::ConsoleMismatch { .. } => 18,
            Self::AlreadyPaired(_) => 19,
            Self::NotPinned(_) => 20,
            Self::ClockWrong(_) => 22,
            Self::Other(_) => 1,
        }
    }
}

/// Pairs this machine. Writes the key (0600), certificates and config.
pub async fn pair(opts: &PairOptions) -> Result<Paired, PairError> {
    if opts.config.exists() && !opts.force {
        return Err(PairError::AlreadyPaired(opts.config.clone()));
    }
    let code = PairingCode::parse(&opts.code).map_err(|e| PairError::BadCode(e.to_string()))?;
    let console_uri: http::Uri = opts
        .console_url
        .parse()
        .map_err(|_| PairError::ConsoleUnreachable(opts.console_url.clone()))?;
    let fingerprint = pin_console(&console_uri, &opts.console).await?;

    let (host, port) = split_host_port(&opts.relay).map_err(|e| PairError::RelayUnreachable(e.to_string()))?;
    let roots = relay_roots(opts.relay_ca.as_deref())?;
    let key = rcgen::KeyPair::generate().map_err(anyhow::Error::from)?;
    let mut link = connect(&host, port, roots).await?;
    let done = exchange(&mut link, &code, &key).await;
    link.close().await;
    let issued = done?;

    let state = &opts.state_dir;
    std::fs::create_dir_all(state).map_err(|e| anyhow::anyhow!("could not create {}: {e}", state.display()))?;
    let key_path = abs(&state.join("agent.key"));
    let cert_path = abs(&state.join("agent.pem"));
    let ca_path = abs(&state.join("relay-ca.pem"));
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true).map_err(anyhow::Error::from)?;
    write_atomic(&cert_path, issued.certificate.as_bytes(), false).map_err(anyhow::Error::from)?;
    write_atomic(&ca_path, issued.ca.as_bytes(), false).map_err(anyhow::Error::from)?;
    let config = PairedConfig {
        format: crate::state_format::CURRENT,
        relay: host_port(&host, port),
        relay_name: &issued.tunnel_name,
        relay_ca: ca_path.display().to_string(),
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        console_url: &opts.console_url,
        console_fingerprint: fingerprint.to_string(),
    };
    let toml = format!(
        "# Keyway agent for site {:?}, written by `keyway-agent pair`.\n{}",
        issued.site,
        toml::to_string(&config).map_err(anyhow::Error::from)?
    );
    if let Some(dir) = opts.config.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("could not create {}: {e}", dir.display()))?;
    }
    write_atomic(&opts.config, toml.as_bytes(), false).map_err(anyhow::Error::from)?;
    if let Some(state) = key_path.parent() {
        crate::state_format::check_state(state)?;
    }
    Ok(Paired {
        url: issued.url,
        site: issued.site,
        config: opts.config.clone(),
        console_fingerprint: fingerprint,
    })
}

/// Connects to the console, reads its certificate, decides whether to pin it.
async fn pin_console(uri: &http::Uri, choice: &ConsolePin) -> Result<Fingerprint, PairError> {
    let seen = console_fingerprint(uri).await?;
    match choice {
        ConsolePin::Expect(expected) if *expected == seen => Ok(seen),
        ConsolePin::Expect(expected) => Err(PairError::ConsoleMismatch {
            expected: *expected,
            seen,
        }),
        ConsolePin::TrustFirstUse => Ok(seen),
        ConsolePin::Ask => {
            if !std::io::stdin().is_terminal() {
                return Err(PairError::NotPinned(format!(
                    "the console's certificate fingerprint is {seen}; confirm it with --console-fingerprint {seen} \
                     (or --trust-console to pin what this machine sees)"
                )));
            }
            println!("The console at {uri} presents a certificate with SHA-256 fingerprint\n  {seen}");
            print!("Pin it? Compare with the console's settings if you can. [y/N] ");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer).map_err(anyhow::Error::from)?;
            if matches!(answer.trim(), "y" | "Y" | "yes") {
                Ok(seen)
            } else {
                Err(PairError::NotPinned("not pinned; nothing was changed".into()))
            }
        }
    }
}

/// The SHA-256 fingerprint of the certificate the console presents.
pub async fn console_fingerprint(uri: &http::Uri) -> Result<Fingerprint, PairError> {
    let unreachable = || PairError::ConsoleUnreachable(uri.to_string());
    let host = uri.host().ok_or_else(unreachable)?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tls = keyway_certs::tls::console_client(ConsoleTrust::Insecure).map_err(anyhow::Error::from)?;
    let tcp = timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| unreachable())?
    .map_err(|_| unreachable())?;
    let name = ServerName::try_from(host.clone()).map_err(|_| unreachable())?;
    let stream = timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable())?
    .map_err(|_| unreachable())?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(unreachable)?;
    Ok(Fingerprint::of(leaf))
}

fn relay_roots(ca: Option<&Path>) -> Result<RootCertStore, PairError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in keyway_certs::files::load_certs(path).map_err(anyhow::Error::from)? {
                roots
                    .add(cert)
                    .map_err(|e| PairError::RelayUntrusted(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// `host[:port]`, `[v6]:port` → host and port (443 by default).
pub fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("bad address {s:?}"))?;
        let port = p.strip_prefix(':').map(str::parse).transpose()?.unwrap_or(443);
        return Ok((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse()?)),
        _ => Ok((s.to_string(), 443)),
    }
}

/// How long a QUIC handshake may take before pairing tries TLS over TCP.
const QUIC_DEADLINE: Duration = Duration::from_secs(3);
/// How long TCP and TLS may take.
const TCP_DEADLINE: Duration = Duration::from_secs(10);

/// A pairing connection: one byte stream and the TLS session's exporter.
struct PairLink {
    stream: Box<dyn keyway_transport::StreamIo>,
    exporter: [u8; 32],
    quic: Option<quinn::Connection>,
}

impl PairLink {
    async fn close(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.shutdown().await;
        if let Some(conn) = self.quic {
            conn.close(0u32.into(), b"pairing over");
        }
    }
}

/// `host:port`, with an IPv6 literal in brackets (`[::1]:443`, not `::1:443`).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects over QUIC, or over TLS/TCP to the same port when no QUIC
/// handshake completes within [`QUIC_DEADLINE`] (UDP blocked).
async fn connect(host: &str, port: u16, roots: RootCertStore) -> Result<PairLink, PairError> {
    let target = host_port(host, port);
    let tls = keyway_certs::tls::pairing_client(roots).map_err(anyhow::Error::from)?;
    let quic_err = match connect_quic(&target, host, tls.clone()).await {
        Ok(link) => return Ok(link),
        // A certificate refused over QUIC is refused over TCP too.
        Err(e @ (DialError::Untrusted { .. } | DialError::ClockWrong { .. })) => return Err(e.into()),
        Err(e) => e,
    };
    connect_tcp(&target, host, tls).await.map_err(|tcp| match tcp {
        DialError::Untrusted { .. } | DialError::ClockWrong { .. } => tcp.into(),
        _ => PairError::RelayUnreachable(format!("{target}: over QUIC: {quic_err}; over TCP: {tcp}")),
    })
}

impl From<DialError> for PairError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::ClockWrong { .. } => Self::ClockWrong(e.to_string()),
            DialError::Untrusted { .. } => Self::RelayUntrusted(e.to_string()),
            _ => Self::RelayUnreachable(e.to_string()),
        }
    }
}

async fn connect_quic(target: &str, host: &str, tls: rustls::ClientConfig) -> Result<PairLink, DialError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| local_failure(target, e))?;
    let v6 = target.starts_with('[');
    let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("constant");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| local_failure(target, e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = dial::quic(&endpoint, target, host, QUIC_DEADLINE).await?;
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| local_failure(target, "TLS exporter unavailable"))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| local_failure(target, e))?;
    Ok(PairLink {
        stream: Box::new(tokio::io::join(recv, send)),
        exporter,
        quic: Some(conn),
    })
}

async fn connect_tcp(target: &str, host: &str, tls: rustls::ClientConfig) -> Result<PairLink, DialError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let alpn = (keyway_proto::ALPN_PAIR, "Keyway pairing");
    let (stream, _) = dial::tls(&connector, target, host, alpn, TCP_DEADLINE).await?;
    let exporter = stream
        .get_ref()
        .1
        .export_keying_material([0u8; 32], EXPORTER_LABEL, Some(b""))
        .map_err(|_| local_failure(target, "TLS exporter unavailable"))?;
    Ok(PairLink {
        stream: Box::new(stream),
        exporter,
        quic: None,
    })
}

/// A failure on this machine's side of the connection.
fn local_failure(target: &str, e: impl std::fmt::Display) -> DialError {
    DialError::Local(format!("{target}: {e}"))
}

/// What the relay issued this agent, proven with the pairing code.
struct Issued {
    site: String,
    url: String,
    /// The name the relay's tunnel certificate carries.
    tunnel_name: String,
    /// This agent's certificate (PEM).
    certificate: String,
    /// The relay's tunnel CA (PEM).
    ca: String,
}

/// The `agent.toml` pairing writes (the rest of the settings default).
#[derive(serde::Serialize)]
struct PairedConfig<'a> {
    format: u32,
    relay: String,
    relay_name: &'a str,
    relay_ca: String,
    cert: String,
    key: String,
    console_url: &'a str,
    console_fingerprint: String,
}

async fn exchange(link: &mut PairLink, code: &PairingCode, key: &rcgen::KeyPair) -> Result<Issued, PairError> {
    let io = |e: keyway_proto::control::ControlError| anyhow::anyhow!("pairing connection: {e}");
    let exporter = link.exporter;
    let stream = &mut link.stream;
    let pake = Pake::start(Side::Agent, &code.hash());
    let start = PairMsg::Start {
        version: PROTOCOL_VERSION,
        code_id: code.id().to_string(),
        spake: hex(pake.message()),
        public_key: hex(&key.subject_public_key_info()),
    };
    write_frame(stream, &start).await.map_err(io)?;
    let mut buf = BytesMut::new();
    let (spake_b, relay_confirm) = match step(stream, &mut buf).await? {
        PairMsg::Challenge { spake, confirm } => (spake, confirm),
        PairMsg::Error { kind, message } => return Err(PairError::Refused { kind, message }),
        other => return Err(anyhow::anyhow!("unexpected pairing message {other:?}").into()),
    };
    let spake_b = unhex(&spake_b).ok_or(PairError::ProofFailed)?;
    let keys = pake.finish(&spake_b, &exporter).map_err(|_| PairError::ProofFailed)?;
    if !unhex(&relay_confirm).is_some_and(|t| keys.verify(Side::Relay, &t)) {
        return Err(PairError::ProofFailed);
    }
    write_frame(
        stream,
        &PairMsg::Confirm {
            confirm: hex(&keys.confirm(Side::Agent)),
        },
    )
    .await
    .map_err(io)?;
    match step(stream, &mut buf).await? {
        PairMsg::Done {
            site,
            domain,
            tunnel_name,
            url,
            certificate,
            ca,
            mac,
        } => {
            let transcript = PairMsg::done_transcript([&site, &domain, &tunnel_name, &url, &certificate, &ca]);
            if !unhex(&mac).is_some_and(|m| keys.open(&transcript, &m)) {
                return Err(PairError::ProofFailed);
            }
            let cert_der = keyway_certs::files::certs_from_pem("certificate", certificate.as_bytes())
                .map_err(anyhow::Error::from)?
                .remove(0);
            let named = keyway_certs::identity::site_from_cert(&cert_der).map_err(anyhow::Error::from)?;
            if named != site {
                return Err(anyhow::anyhow!("the relay issued a certificate for {named:?}, not {site:?}").into());
            }
            Ok(Issued {
                site,
                url,
                tunnel_name,
                certificate,
                ca,
            })
        }
        PairMsg::Error { kind, message } => Err(PairError::Refused { kind, message }),
        other => Err(anyhow::anyhow!("unexpected pairing message {other:?}").into()),
    }
}

async fn step(recv: &mut Box<dyn keyway_transport::StreamIo>, buf: &mut BytesMut) -> Result<PairMsg, PairError> {
    match timeout(STEP_TIMEOUT, read_frame(recv, buf)).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(anyhow::anyhow!("the relay hung up during pairing: {e}").into()),
        Err(_) => Err(anyhow::anyhow!("the relay did not answer in time").into()),
    }
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `keyway-agent unpair`: removes the local identity and the config.
pub fn unpair(config: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let cfg = crate::AgentConfig::load(config)?;
    let mut removed = vec![];
    for p in [cfg.key, cfg.cert, cfg.relay_ca, config.to_path_buf()] {
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("could not remove {}: {e}", p.display()),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_loads_back_whatever_the_paths_hold() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a \"quoted\" dir\\x");
        let fp = Fingerprint::of(b"console");
        let config = PairedConfig {
            format: crate::state_format::CURRENT,
            relay: "[::1]:4433".into(),
            relay_name: "tunnel.relay.test",
            relay_ca: odd.join("relay-ca.pem").display().to_string(),
            cert: odd.join("agent.pem").display().to_string(),
            key: odd.join("agent.key").display().to_string(),
            console_url: "https://127.0.0.1:12445",
            console_fingerprint: fp.to_string(),
        };
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let loaded = crate::AgentConfig::load(&path).unwrap();
        assert_eq!(loaded.relay, "[::1]:4433");
        assert_eq!(loaded.relay_name.as_deref(), Some("tunnel.relay.test"));
        assert_eq!(loaded.key, odd.join("agent.key"));
        assert_eq!(loaded.console_trust().unwrap(), ConsoleTrust::Pinned(fp));
    }

    #[test]
    fn relay_addresses() {
        assert_eq!(
            split_host_port("relay.example.com").unwrap(),
            ("relay.example.com".into(), 443)
        );
        assert_eq!(
            split_host_port("relay.example.com:8443").unwrap(),
            ("relay.example.com".into(), 8443)
        );
        assert_eq!(split_host_port("127.0.0.1:4433").unwrap(), ("127.0.0.1".into(), 4433));
        assert_eq!(split_host_port("[::1]:4433").unwrap(), ("::1".into(), 4433));
        assert_eq!(split_host_port("[::1]").unwrap(), ("::1".into(), 443));
        assert_eq!(host_port("::1", 443), "[::1]:443");
        assert_eq!(host_port("relay.example.com", 8443), "relay.example.com:8443");
        assert_eq!(host_port("127.0.0.1", 443), "127.0.0.1:443");
        assert!(split_host_port("host:notaport").is_err());
    }

    #[test]
    fn every_error_has_a_distinct_exit_code() {
        let fp = Fingerprint([0; 32]);
        let errs = [
            PairError::BadCode(String::new()),
            PairError::Refused {
                kind: PairErrorKind::WrongCode,
                message: String::new(),
            },
            PairError::Refused {
                kind: PairErrorKind::Expired,
                message: String::new(),
            },
            PairError::Refused {
                kind: PairErrorKind::Used,
                message: String::new(),
            },
            PairError::Refused {
                kind: PairErrorKind::Burned,
                message: String::new(),
            },
            PairError::ProofFailed,
            PairError::RelayUnreachable(String::new()),
            PairError::RelayUntrusted(String::new()),
            PairError::ConsoleUnreachable(String::new()),
            PairError::ConsoleMismatch { expected: fp, seen: fp },
            PairError::AlreadyPaired(PathBuf::new()),
            PairError::NotPinned(String::new()),
            PairError::ClockWrong(String::new()),
        ];
        let mut codes: Vec<u8> = errs.iter().map(PairError::exit_code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), errs.len());
        assert!(!codes.contains(&0) && !codes.contains(&1));
    }
}
