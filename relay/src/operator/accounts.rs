//! Operator accounts for the web console: argon2id password hashes in the
//! registry (never the password), generated passwords drawn from the
//! system's random source, and a lockout after repeated failures.

use std::sync::LazyLock;

use anyhow::{anyhow, bail};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

use crate::registry::{RegistryError, SiteStore};

/// Failed sign-ins in a row that lock an account…
pub const LOCK_AFTER: u32 = 5;
/// …for this many seconds (a new password unlocks it at once).
pub const LOCK_FOR: i64 = 15 * 60;
/// The shortest password an operator may set.
pub const MIN_PASSWORD: usize = 12;

/// Symbols of generated passwords: no 0/o, 1/l/i to misread.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A hash to verify against when the name is unknown, so that an unknown
/// name costs what a wrong password costs (no name probing by timing).
static DECOY: LazyLock<String> = LazyLock::new(|| hash_password("decoy password, never set").unwrap_or_default());

/// The argon2id hash (PHC string) of `password`, with a fresh salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow!("the system's random source failed"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow!("hashing the password: {e}"))?
        .to_string())
}

fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A new password: four groups of five symbols (about 99 bits).
pub fn generate_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system's random source failed"))?;
    let symbols: Vec<char> = bytes
        .iter()
        // 256 = 8 × 31 + 8: the few values past 248 fold onto the first
        // symbols, a bias too small to matter at this length.
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    Ok(symbols
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// Checks an operator name: 1–64 of a-z, 0-9, '.', '_', '-', '@'.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_@".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        bail!("operator name {name:?}: 1 to 64 of a-z, 0-9, '.', '_', '-', '@'");
    }
    Ok(())
}

/// Checks a password an operator chose.
pub fn validate_password(password: &str) -> anyhow::Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        bail!("a password needs at least {MIN_PASSWORD} characters");
    }
    Ok(())
}

/// What a sign-in attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    /// The password is right.
    Accepted,
    /// No such operator, or the wrong password (never said which).
    Refused,
    /// Too many failures: refused until then (unix seconds), whatever the password.
    Locked { until: i64 },
}

/// Checks `password` for `name` (blocking: argon2 takes tens of
/// milliseconds on purpose), counting failures and locking the account
/// after [`LOCK_AFTER`] in a row.
pub fn sign_in(store: &dyn SiteStore, name: &str, password: &str, now: i64) -> Result<SignIn, RegistryError> {
    let Some(operator) = store.operator(name)? else {
        let _ = verify(password, &DECOY);
        return Ok(SignIn::Refused);
    };
    if operator.locked_until > now {
        return Ok(SignIn::Locked {
            until: operator.locked_until,
        });
    }
    if verify(password, &operator.password_hash) {
        store.operator_signed_in(name, now)?;
        return Ok(SignIn::Accepted);
    }
    store.operator_failed(name, LOCK_AFTER, now + LOCK_FOR)?;
    if operator.failures + 1 >= LOCK_AFTER {
        return Ok(SignIn::Locked { until: now + LOCK_FOR });
    }
    Ok(SignIn::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password_and_salts_differ() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify("correct horse battery", &a));
        assert!(!verify("correct horse battery!", &a));
        assert!(!verify("anything", "not a hash"));
    }

    #[test]
    fn generated_passwords_are_long_unambiguous_and_new() {
        let p = generate_password().unwrap();
        assert_eq!(p.len(), 23, "{p}");
        assert!(p.chars().all(|c| c == '-' || ALPHABET.contains(&(c as u8))), "{p}");
        assert_ne!(p, generate_password().unwrap());
        validate_password(&p).unwrap();
        assert!(validate_password("short").is_err());
    }

    #[test]
    fn names_are_checked() {
        for good in ["ada", "ops@example.com", "a.b_c-d"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "Ada", "a b", "<script>", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
