//! Dialing the relay, over either transport: the one place an agent opens a
//! connection to its relay (to run, to pair, for `doctor`) and the one place
//! a failure to do so is told apart, by type, into a [`DialError`].

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::TransportKind;

/// Why the relay could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The relay's name does not resolve.
    #[error("could not resolve relay {target}: {detail}")]
    Resolve {
        /// `host:port` as configured.
        target: String,
        /// What the resolver said.
        detail: String,
    },
    /// No connection: refused, no route, reset, or a handshake that failed
    /// for a reason other than the certificate.
    #[error("could not connect to relay {addr} over {transport}: {detail}")]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// The transport tried.
        transport: TransportKind,
        /// What failed.
        detail: String,
    },
    /// The relay's certificate is not one this agent trusts (unknown
    /// issuer, another name).
    #[error("relay {addr} presented a certificate this agent does not trust: {detail}")]
    Untrusted {
        /// The address tried.
        addr: SocketAddr,
        /// What the TLS library said.
        detail: String,
    },
    /// A certificate is outside its validity dates at this machine's time:
    /// the clock is probably wrong (a Pi before NTP answers).
    #[error("relay {addr}: {detail}")]
    ClockWrong {
        /// The address tried.
        addr: SocketAddr,
        /// What the TLS library said.
        detail: String,
    },
    /// No handshake within the time allowed.
    #[error("relay {addr} did not complete a {} handshake within {after:?}{}", handshake(*transport), hint(*transport))]
    Timeout {
        /// The address tried.
        addr: SocketAddr,
        /// The transport tried.
        transport: TransportKind,
        /// The time allowed.
        after: Duration,
    },
    /// This machine could not make the connection (no UDP socket, a TLS
    /// configuration QUIC cannot use, a connection that closed at once).
    #[error("{0}")]
    Local(String),
    /// TLS completed, but the server does not speak the protocol asked for
    /// (another service on the port).
    #[error(
        "{addr} does not serve {wanted} over TCP (no {} in its TLS handshake)",
        String::from_utf8_lossy(alpn)
    )]
    WrongAlpn {
        /// The address tried.
        addr: SocketAddr,
        /// The ALPN asked for.
        alpn: &'static [u8],
        /// What that protocol is, in words.
        wanted: &'static str,
    },
}

fn handshake(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Quic => "QUIC",
        TransportKind::Tcp => "TLS",
    }
}

fn hint(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Quic => " (UDP blocked?)",
        TransportKind::Tcp => "",
    }
}

/// Resolves `target` (`host:port`) now: the relay may have moved since
/// the last attempt.
pub async fn resolve(target: &str) -> Result<SocketAddr, DialError> {
    let resolve_error = |detail: String| DialError::Resolve {
        target: target.into(),
        detail,
    };
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no address".into()))
}

/// A QUIC connection to `target`, whose certificate must name `name`, with
/// `endpoint`'s default client config, within `deadline`.
pub async fn quic(
    endpoint: &quinn::Endpoint,
    target: &str,
    name: &str,
    deadline: Duration,
) -> Result<quinn::Connection, DialError> {
    let addr = resolve(target).await?;
    let unreachable = |detail: String| DialError::Unreachable {
        addr,
        transport: TransportKind::Quic,
        detail,
    };
    let connecting = endpoint.connect(addr, name).map_err(|e| unreachable(e.to_string()))?;
    match tokio::time::timeout(deadline, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(quic_failure(addr, e)),
        Err(_) => Err(DialError::Timeout {
            addr,
            transport: TransportKind::Quic,
            after: deadline,
        }),
    }
}

/// TLS over TCP to `target`, whose certificate must name `name` and which
/// must agree to `alpn` (`wanted` says what that is, for the error), all
/// within `deadline`; with the address it reached.
pub async fn tls(
    connector: &TlsConnector,
    target: &str,
    name: &str,
    (alpn, wanted): (&'static [u8], &'static str),
    deadline: Duration,
) -> Result<(TlsStream<TcpStream>, SocketAddr), DialError> {
    let addr = resolve(target).await?;
    let unreachable = |detail: String| DialError::Unreachable {
        addr,
        transport: TransportKind::Tcp,
        detail,
    };
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| unreachable(format!("relay name: {e}")))?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| tls_failure(addr, &e, (alpn, wanted)))
    };
    let stream = tokio::time::timeout(deadline, attempt)
        .await
        .map_err(|_| DialError::Timeout {
            addr,
            transport: TransportKind::Tcp,
            after: deadline,
        })??;
    if stream.get_ref().1.alpn_protocol() != Some(alpn) {
        return Err(DialError::WrongAlpn { addr, alpn, wanted });
    }
    Ok((stream, addr))
}

/// The TLS alert (RFC 8446 §6.2) rustls sends for a certificate outside
/// its dates.
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
/// Alerts that say this side refused the relay's certificate: bad,
/// unsupported, revoked, unknown, unknown CA, access denied, and a chain
/// whose signature does not verify (decrypt_error).
const ALERTS_UNTRUSTED: [u8; 7] = [42, 43, 44, 46, 48, 49, 51];

/// A failed QUIC handshake: a certificate this side refused shows as the
/// TLS alert quinn closed the connection with.
fn quic_failure(addr: SocketAddr, e: quinn::ConnectionError) -> DialError {
    let crypto = |alert: u8| quinn::TransportErrorCode::crypto(alert);
    if let quinn::ConnectionError::TransportError(t) = &e {
        if t.code == crypto(ALERT_CERTIFICATE_EXPIRED) {
            return DialError::ClockWrong {
                addr,
                detail: t.reason.clone(),
            };
        }
        if ALERTS_UNTRUSTED.iter().any(|a| t.code == crypto(*a)) {
            return DialError::Untrusted {
                addr,
                detail: t.reason.clone(),
            };
        }
    }
    DialError::Unreachable {
        addr,
        transport: TransportKind::Quic,
        detail: e.to_string(),
    }
}

/// A failed TLS handshake over TCP: the rustls error inside the I/O error.
fn tls_failure(addr: SocketAddr, e: &std::io::Error, (alpn, wanted): (&'static [u8], &'static str)) -> DialError {
    use rustls::CertificateError as C;
    match keyway_proto::causes::find::<rustls::Error>(e) {
        // The server speaks ALPN, but none of ours (RFC 7301 §3.2).
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            DialError::WrongAlpn { addr, alpn, wanted }
        }
        Some(rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        )) => DialError::ClockWrong {
            addr,
            detail: e.to_string(),
        },
        Some(rustls::Error::InvalidCertificate(_)) => DialError::Untrusted {
            addr,
            detail: e.to_string(),
        },
        _ => DialError::Unreachable {
            addr,
            transport: TransportKind::Tcp,
            detail: format!("TLS failed: {e}"),
        },
    }
}

impl DialError {
    /// Whether a wrong clock on this machine explains the failure.
    pub fn is_clock(&self) -> bool {
        matches!(self, Self::ClockWrong { .. })
    }
}
