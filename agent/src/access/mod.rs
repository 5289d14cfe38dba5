//! Who may call what, decided on the agent (the LAN owner's side).
//!
//! * Passthrough (the default): the integration sends the console's own
//!   token, as coworking platforms do today; `passthrough_policy` limits
//!   what it may call, `passthrough = false` refuses it outright.
//! * Integration tokens ([`tokens`]): a `kw_…` token issued on the agent is
//!   checked here, its policy applied, and it is replaced by the console
//!   token kept on this machine: the console token never crosses the
//!   internet, and a leaked integration token is revoked without touching
//!   the console.
//! * Unlock safety: door unlocks and emergency settings have their own,
//!   stricter rate per credential and per site, so a compromised
//!   integration cannot strobe doors.

pub mod policy;
pub mod tokens;

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{HeaderValue, AUTHORIZATION};
use http::Method;
use keyway_certs::Fingerprint;

use crate::error::{AgentError, TokenInvalid, Unreachable};
use policy::Policy;
use tokens::{Rejected, TokenStore};

/// Who made a request, for policy, limits and the audit log (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A Keyway integration token, by integration name.
    Integration(String),
    /// The console's token sent by the integration, by fingerprint prefix.
    Passthrough(String),
    /// No token at all (the console will answer 401).
    Anonymous,
    /// A `kw_` token this agent does not know (or has revoked).
    UnknownIntegration,
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Integration(n) => write!(f, "integration:{n}"),
            Self::Passthrough(fp) => write!(f, "passthrough:{fp}"),
            Self::Anonymous => f.write_str("anonymous"),
            Self::UnknownIntegration => f.write_str("integration:unknown"),
        }
    }
}

/// The access settings (from `agent.toml`).
#[derive(Debug, Clone)]
pub struct AccessOptions {
    /// Whether the console's own token is accepted from integrations.
    pub passthrough: bool,
    /// The policy for passthrough calls.
    pub passthrough_policy: Policy,
    /// Unlock/emergency calls per minute per credential.
    pub unlock_per_minute: u32,
    /// Unlock/emergency calls per minute for the site.
    pub unlock_site_per_minute: u32,
}

/// The checks, with the token store and the unlock buckets.
pub struct Access {
    opts: AccessOptions,
    tokens: TokenStore,
    console_token: Option<HeaderValue>,
    unlock_site: DefaultDirectRateLimiter,
    unlock_by: DefaultKeyedRateLimiter<Credential>,
}

/// Whether a call opens doors or changes emergency state.
/// `path` is canonical (`keyway_proto::path`); literals compare without
/// regard to ASCII case, as the route policy's do.
pub fn is_door_control(method: &Method, path: &str) -> bool {
    if method != Method::PUT {
        return false;
    }
    let Some(rest) = path
        .get(..DOORS.len())
        .filter(|p| p.eq_ignore_ascii_case(DOORS))
        .map(|_| &path[DOORS.len()..])
    else {
        return false;
    };
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [id, action] => {
            action.eq_ignore_ascii_case("unlock")
                || (id.eq_ignore_ascii_case("settings") && action.eq_ignore_ascii_case("emergency"))
        }
        _ => false,
    }
}

const DOORS: &str = "/api/v1/developer/doors/";

fn per_minute(n: u32) -> Quota {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl Access {
    /// Checks with `opts`, tokens in `state_dir`, and the stored console token.
    pub fn new(opts: AccessOptions, state_dir: &std::path::Path, console_token: Option<&str>) -> Self {
        Self {
            unlock_site: RateLimiter::direct(per_minute(opts.unlock_site_per_minute)),
            unlock_by: RateLimiter::keyed(per_minute(opts.unlock_per_minute)),
            tokens: TokenStore::new(state_dir),
            console_token: console_token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
            opts,
        }
    }

    /// Decides on a request; on success it may carry the console token now.
    /// A refusal names the credential refused (for the audit log).
    pub fn authorize(&self, parts: &mut http::request::Parts) -> Result<Credential, (Credential, AgentError)> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let path = parts.uri.path().to_string();
        let (credential, policy) = match bearer {
            Some(t) if t.starts_with(tokens::PREFIX) => {
                let entry = self.tokens.verify(t).map_err(|r| match r {
                    Rejected::Unknown => (
                        Credential::UnknownIntegration,
                        AgentError::TokenInvalid(TokenInvalid::Unknown),
                    ),
                    Rejected::Expired(name) => (
                        Credential::Integration(name.clone()),
                        AgentError::TokenInvalid(TokenInvalid::Expired(name)),
                    ),
                })?;
                let Some(console) = &self.console_token else {
                    return Err((
                        Credential::Integration(entry.name),
                        AgentError::ConsoleUnreachable(Unreachable::NoConsoleToken),
                    ));
                };
                parts.headers.insert(AUTHORIZATION, console.clone());
                (Credential::Integration(entry.name), entry.policy)
            }
            Some(t) => {
                let fp = Fingerprint::of(t.as_bytes()).to_string();
                let short: String = fp.chars().filter(|c| *c != ':').take(12).collect();
                let credential = Credential::Passthrough(short.to_ascii_lowercase());
                if !self.opts.passthrough {
                    return Err((credential, AgentError::TokenInvalid(TokenInvalid::PassthroughOff)));
                }
                (credential, self.opts.passthrough_policy.clone())
            }
            None => (Credential::Anonymous, self.opts.passthrough_policy.clone()),
        };
        if let Err(why) = policy.check(&parts.method, &path) {
            let refused = AgentError::PolicyDenied {
                call: format!("{} {path}", parts.method),
                credential: credential.to_string(),
                why,
            };
            return Err((credential, refused));
        }
        if is_door_control(&parts.method, &path) {
            let clock = DefaultClock::default();
            let refused = self
                .unlock_by
                .check_key(&credential)
                .map_err(|n| ("this credential", n))
                .and_then(|()| self.unlock_site.check().map_err(|n| ("this site", n)));
            if let Err((scope, n)) = refused {
                let wait = n.wait_time_from(clock.now());
                let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err((credential, AgentError::RateLimited { scope, retry_after }));
            }
        }
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_control_is_recognised_in_any_case() {
        let put = Method::PUT;
        assert!(is_door_control(&put, "/api/v1/developer/doors/abc/unlock"));
        assert!(is_door_control(&put, "/API/v1/developer/Doors/abc/UNLOCK"));
        assert!(is_door_control(&put, "/api/v1/developer/doors/settings/emergency"));
        assert!(!is_door_control(&Method::GET, "/api/v1/developer/doors/abc/unlock"));
        assert!(!is_door_control(&put, "/api/v1/developer/doors/abc"));
        assert!(!is_door_control(&put, "/api/v1/developer/doors/abc/unlock/x"));
        assert!(!is_door_control(&put, "/api/v1/developer/doorsx/abc/unlock"));
    }
}
