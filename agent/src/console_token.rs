//! The console's API token, stored on the agent's machine only.
//!
//! `keyway-agent console-token set` reads it from stdin (never from the
//! command line, where `ps` and shell history would see it) and writes it
//! with mode 0600. The agent uses it for its own connections to the console
//! (the event hub's one WebSocket); it never crosses the tunnel.

use std::path::Path;

use anyhow::{bail, Context};

/// The token, checked: one line of visible ASCII.
pub fn parse(text: &str) -> anyhow::Result<String> {
    let token = text.trim();
    if token.is_empty() {
        bail!("the console token is empty");
    }
    if token.lines().count() > 1 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the console token must be one line of visible ASCII (as the console shows it)");
    }
    Ok(token.to_string())
}

/// Reads the token at `path`; `None` when no token was set.
pub fn load(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text)
            .map(Some)
            .with_context(|| format!("console token file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Writes the token to `path` (mode 0600, atomically).
pub fn store(path: &Path, token: &str) -> anyhow::Result<()> {
    let token = parse(token)?;
    keyway_certs::files::write_atomic(path, format!("{token}\n").as_bytes(), true)
        .with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console-token");
        assert_eq!(load(&p).unwrap(), None);
        store(&p, "  abc.DEF-123\n").unwrap();
        assert_eq!(load(&p).unwrap().as_deref(), Some("abc.DEF-123"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn rejects_what_cannot_be_a_token() {
        assert!(parse("").is_err());
        assert!(parse("two\nlines").is_err());
        assert!(parse("has space").is_err());
    }
}
