//! Signed-in operators: a random session token in an HttpOnly, Secure,
//! SameSite=Strict cookie, held in this relay's memory (a restart signs
//! everyone out), and a CSRF token per session that every form carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// The session cookie.
pub const COOKIE: &str = "keyway_operator";
/// The sign-in form's own CSRF cookie (double submit: a page on another
/// origin can neither read it nor make the browser send it, SameSite).
pub const LOGIN_COOKIE: &str = "keyway_signin";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most (the oldest goes first): a bound on memory
/// whatever a client does.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub operator: String,
    /// The token every form of this session carries.
    pub csrf: String,
    last_used: Instant,
}

/// The sessions of this relay.
#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    /// Woken whenever sessions end (open live streams check theirs).
    ended: tokio::sync::Notify,
}

impl Sessions {
    /// Starts a session for `operator`: its token (for the cookie).
    pub fn start(&self, operator: &str) -> anyhow::Result<String> {
        let token = random_token()?;
        let session = Session {
            operator: operator.to_string(),
            csrf: random_token()?,
            last_used: Instant::now(),
        };
        let mut all = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| s.last_used.elapsed() < IDLE);
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all.iter().min_by_key(|(_, s)| s.last_used).map(|(t, _)| t.clone()) {
                all.remove(&oldest);
            }
        }
        all.insert(token.clone(), session);
        Ok(token)
    }

    /// The live session the request's cookie names, if any.
    pub fn of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let token = cookie(headers, COOKIE)?;
        let mut all = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        let session = all.get_mut(&token)?;
        if session.last_used.elapsed() >= IDLE {
            all.remove(&token);
            return None;
        }
        session.last_used = Instant::now();
        Some((token, session.clone()))
    }

    /// Ends the session of `token`.
    pub fn end(&self, token: &str) {
        self.by_token.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
        self.ended.notify_waiters();
    }

    /// Ends every session of `operator` (removed, or a new password).
    pub fn end_all_of(&self, operator: &str) {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.operator != operator);
        self.ended.notify_waiters();
    }

    /// Whether the session of `token` is still live (without using it).
    pub fn alive(&self, token: &str) -> bool {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .is_some_and(|s| s.last_used.elapsed() < IDLE)
    }

    /// Resolves when some session ends.
    pub async fn some_ended(&self) {
        self.ended.notified().await
    }
}

/// 32 random bytes, hex.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a submitted token is the expected one (constant time).
pub fn same_token(expected: &str, got: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(got.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A `Set-Cookie` value: HttpOnly, Secure, SameSite=Strict, on `path`,
/// for `max_age` (zero: delete it).
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration) -> String {
    cookie::Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
        .build()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends() {
        let sessions = Sessions::default();
        let token = sessions.start("ada").unwrap();
        let headers = with_cookie(&format!("other=1; {COOKIE}={token}"));
        let (t, s) = sessions.of(&headers).unwrap();
        assert_eq!((t.as_str(), s.operator.as_str()), (token.as_str(), "ada"));
        assert_eq!(s.csrf.len(), 64);
        assert!(sessions.of(&with_cookie(&format!("{COOKIE}=forged"))).is_none());
        assert!(sessions.of(&HeaderMap::new()).is_none());
        sessions.end(&token);
        assert!(sessions.of(&headers).is_none());
        let again = sessions.start("ada").unwrap();
        sessions.end_all_of("ada");
        assert!(sessions.of(&with_cookie(&format!("{COOKIE}={again}"))).is_none());
    }

    #[test]
    fn tokens_compare_whole_and_never_empty() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        assert!(!same_token("", ""));
    }

    #[test]
    fn cookies_are_http_only_secure_and_strict() {
        let c = set_cookie(COOKIE, "t", "/console", IDLE);
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/console",
            "Max-Age=43200",
        ] {
            assert!(c.contains(part), "{c}");
        }
    }
}
