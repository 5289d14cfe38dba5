//! `keyway-agent console pin`: trust the console's new certificate after it
//! changed (a console update regenerates it), on the Pi itself, without a
//! new pairing code from the relay's operator.
//!
//! It reads the certificate the console presents now, shows it beside the
//! pinned one, and writes the new fingerprint to `agent.toml` once the
//! operator confirms it (or it matches `--fingerprint`). The running agent
//! notices at its next console check (`console_check_interval`) and trusts
//! the new certificate from then on: nothing restarts.

use std::path::Path;

use keyway_certs::{ConsoleTrust, Fingerprint};

use crate::config::AgentConfig;
use crate::pair::{console_fingerprint, PairError};

/// What `console pin` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// The console presents the pinned certificate already.
    Unchanged(Fingerprint),
    /// The pin now names the console's certificate.
    Changed {
        /// The fingerprint pinned before.
        old: Fingerprint,
        /// The one pinned now.
        new: Fingerprint,
    },
}

/// Pins the certificate the console presents now. `expected` must match it
/// when given; otherwise `confirm(old, new)` decides.
pub async fn pin(
    config: &Path,
    expected: Option<Fingerprint>,
    confirm: impl FnOnce(&Fingerprint, &Fingerprint) -> bool,
) -> Result<Pinned, PairError> {
    let cfg = AgentConfig::load(config)?;
    let old = match cfg.console_trust()? {
        ConsoleTrust::Pinned(fp) => fp,
        ConsoleTrust::Insecure => {
            return Err(PairError::Other(anyhow::anyhow!(
                "console_insecure is set in {}: the agent trusts any certificate; remove it to pin one",
                config.display()
            )))
        }
    };
    let seen = console_fingerprint(&cfg.console_uri()?).await?;
    if seen == old {
        return Ok(Pinned::Unchanged(seen));
    }
    match expected {
        Some(want) if want != seen => return Err(PairError::ConsoleMismatch { expected: want, seen }),
        Some(_) => {}
        None if confirm(&old, &seen) => {}
        None => {
            return Err(PairError::NotPinned(format!(
                "the console presents {seen}; confirm it with --fingerprint {seen}"
            )))
        }
    }
    write_pin(config, &seen)?;
    Ok(Pinned::Changed { old, new: seen })
}

/// Rewrites the `console_fingerprint` line of `config` (atomically; the rest
/// of the file as it was).
fn write_pin(config: &Path, fp: &Fingerprint) -> Result<(), PairError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| PairError::Other(anyhow::anyhow!("could not read {}: {e}", config.display())))?;
    let line = format!("console_fingerprint = \"{fp}\"");
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("console_fingerprint") && !found {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        // Before any table, where a top-level key belongs.
        let at = out
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(out.len());
        out.insert(at, line);
    }
    let mut new = out.join("\n");
    new.push('\n');
    keyway_certs::files::write_atomic(config, new.as_bytes(), false).map_err(|e| PairError::Other(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_line_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "relay = \"r:443\"\nconsole_fingerprint = \"aa\"\n# note\n").unwrap();
        let fp = Fingerprint([0xcd; 32]);
        write_pin(&path, &fp).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("relay = \"r:443\"\nconsole_fingerprint = \"{fp}\"\n# note\n")
        );
        std::fs::write(&path, "relay = \"r:443\"\n[access]\nx = 1\n").unwrap();
        write_pin(&path, &fp).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("relay = \"r:443\"\nconsole_fingerprint = \"{fp}\"\n[access]")),
            "{text}"
        );
    }
}
