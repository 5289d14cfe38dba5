//! Route policy: allow/deny rules by method and path pattern.
//!
//! A rule is `METHOD PATTERN`: `METHOD` is an HTTP method or `*`; `PATTERN`
//! is a path whose segments are literals, `*` (any one segment) or a final
//! `**` (any rest, including nothing). Deny rules win; if any allow rule is
//! given, a call must match one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One `METHOD PATTERN` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    method: Option<http::Method>,
    segments: Vec<String>,
    text: String,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (m, p) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("rule {s:?}: expected 'METHOD /path/pattern', e.g. 'GET /api/v1/developer/**'"))?;
        let method = match m {
            "*" => None,
            m => Some(
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("rule {s:?}: {m:?} is not an HTTP method"))?,
            ),
        };
        let p = p.trim();
        if !p.starts_with('/') {
            return Err(format!("rule {s:?}: the path pattern must start with /"));
        }
        let segments: Vec<String> = p.split('/').skip(1).map(str::to_string).collect();
        if let Some(i) = segments.iter().position(|s| s == "**") {
            if i + 1 != segments.len() {
                return Err(format!("rule {s:?}: ** may only end a pattern"));
            }
        }
        Ok(Self {
            method,
            segments,
            text: format!("{} {p}", m.to_ascii_uppercase()),
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Rule {
    /// Whether `method path` matches.
    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let mut got = path.split('/').skip(1);
        for want in &self.segments {
            if want == "**" {
                return true;
            }
            match got.next() {
                // Literals match without regard to ASCII case: a console
                // that routes case-blind must not let `/DOORS/x/UNLOCK`
                // past a rule written in lower case.
                Some(seg) if want == "*" || want.eq_ignore_ascii_case(seg) => {}
                _ => return false,
            }
        }
        got.next().is_none()
    }
}

/// Allow and deny rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// If not empty, a call must match one of these.
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// A call matching one of these is refused.
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// The named presets.
pub const PRESETS: &[&str] = &["full", "read-only", "members-and-visitors"];

fn rules(list: &[&str]) -> Vec<Rule> {
    list.iter()
        .map(|r| r.parse().expect("preset rules are valid"))
        .collect()
}

impl Policy {
    /// A preset: `full` (everything), `read-only` (GET only, incl. the event
    /// stream), `members-and-visitors` (everything except emergency
    /// lockdown/evacuation, the API server's certificate and webhooks).
    pub fn preset(name: &str) -> Result<Self, String> {
        Ok(match name {
            "full" => Self::default(),
            "read-only" => Self {
                allow: rules(&["GET /**"]),
                deny: vec![],
            },
            "members-and-visitors" => Self {
                allow: vec![],
                deny: rules(&[
                    "* /api/v1/developer/doors/settings/emergency",
                    "* /api/v1/developer/api_server/**",
                    "* /api/v1/developer/webhooks/**",
                ]),
            },
            other => return Err(format!("no preset {other:?}; presets: {}", PRESETS.join(", "))),
        })
    }

    /// This policy with `extra` rules added.
    pub fn with(mut self, extra: Policy) -> Self {
        self.allow.extend(extra.allow);
        self.deny.extend(extra.deny);
        self
    }

    /// `Err(rule)`: the rule that refuses the call (or a note that none allows it).
    pub fn check(&self, method: &http::Method, path: &str) -> Result<(), String> {
        if let Some(r) = self.deny.iter().find(|r| r.matches(method, path)) {
            return Err(format!("denied by rule '{r}'"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.matches(method, path)) {
            return Err("no allow rule matches".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn patterns() {
        let r: Rule = "PUT /api/v1/developer/doors/*/unlock".parse().unwrap();
        assert!(r.matches(&Method::PUT, "/api/v1/developer/doors/abc/unlock"));
        assert!(!r.matches(&Method::GET, "/api/v1/developer/doors/abc/unlock"));
        assert!(!r.matches(&Method::PUT, "/api/v1/developer/doors/abc/unlock/x"));
        assert!(!r.matches(&Method::PUT, "/api/v1/developer/doors/unlock"));
        assert!(r.matches(&Method::PUT, "/API/v1/Developer/DOORS/abc/UnLock"));
        let r: Rule = "* /api/v1/developer/webhooks/**".parse().unwrap();
        assert!(r.matches(&Method::DELETE, "/api/v1/developer/webhooks/endpoints/1"));
        assert!(r.matches(&Method::GET, "/api/v1/developer/webhooks"));
        assert!("GET api".parse::<Rule>().is_err());
        assert!("FETCH? /x".parse::<Rule>().is_err());
        assert!("GET /a/**/b".parse::<Rule>().is_err());
    }

    #[test]
    fn presets() {
        let ro = Policy::preset("read-only").unwrap();
        assert!(ro.check(&Method::GET, "/api/v1/developer/users").is_ok());
        assert!(ro.check(&Method::POST, "/api/v1/developer/users").is_err());
        let mv = Policy::preset("members-and-visitors").unwrap();
        assert!(mv.check(&Method::POST, "/api/v1/developer/users").is_ok());
        assert!(mv
            .check(&Method::PUT, "/api/v1/developer/doors/settings/emergency")
            .is_err());
        assert!(mv
            .check(&Method::POST, "/api/v1/developer/api_server/certificates")
            .is_err());
        assert!(mv.check(&Method::POST, "/api/v1/developer/webhooks/endpoints").is_err());
        assert!(Policy::preset("nope").is_err());
    }
}
