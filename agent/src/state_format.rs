//! Which layout of files the agent's config and state folder hold.
//!
//! `agent.toml` may say `format = N` and the state folder holds a `format`
//! file with the same number. An upgraded agent reads every older format
//! (moving files forward here, one step per version, before anything else
//! reads them); a folder written by a newer agent is refused with a clear
//! error instead of being misread — the way back from a downgrade is the
//! newer package. Format 1 is what 0.1.0 wrote, without either marker.

use std::path::Path;

use anyhow::{bail, Context};

/// The format this agent writes and reads.
pub const CURRENT: u32 = 1;
/// The marker's file name in the state folder.
const FILE: &str = "format";

/// Refuses a config written by a newer agent (`format` absent: 1).
pub fn check_config(found: Option<u32>) -> anyhow::Result<()> {
    match found.unwrap_or(1) {
        0 => bail!("format = 0: no such format (this agent reads 1 to {CURRENT})"),
        n if n > CURRENT => bail!("{}", newer("agent.toml", n)),
        _ => Ok(()),
    }
}

/// Brings the state folder to [`CURRENT`] (recording the format of a
/// folder from before the marker), or refuses one from a newer agent.
/// A folder that cannot be written (a read-only command run without root,
/// a full disk) is still read: the marker is written by the next run that
/// can.
pub fn check_state(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(FILE);
    // (the format found, whether the folder says it)
    let (found, marked) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let n = text.trim().parse::<u32>().ok().filter(|n| *n >= 1);
            let n = n.with_context(|| format!("{}: not a format number: {:?}", path.display(), text.trim()))?;
            (n, true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (1, false),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    if found > CURRENT {
        bail!("{}", newer(&dir.display().to_string(), found));
    }
    // Steps from `found` to CURRENT go here; there are none yet.
    if found < CURRENT || !marked {
        if let Err(e) = keyway_certs::files::write_atomic(&path, format!("{CURRENT}\n").as_bytes(), false) {
            tracing::debug!("could not record the state format: {e}");
        }
    }
    Ok(())
}

fn newer(what: &str, found: u32) -> String {
    format!(
        "{what} is in format {found}, written by a newer keyway-agent; this one ({}) reads formats 1 to {CURRENT}. \
         Install the newer package again (apt install keyway-agent), or restore the folder from before it",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_from_before_the_marker_is_format_1_and_gets_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.json"), "[]").unwrap();
        check_state(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap(), "1\n");
        check_state(dir.path()).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_naming_both_and_the_way_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "2\n").unwrap();
        let err = check_state(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format 2") && err.contains("formats 1 to 1"), "{err}");
        assert!(err.contains("apt install keyway-agent"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            "2\n",
            "left as it was"
        );
        for bad in ["", "two", "0", "-1"] {
            std::fs::write(dir.path().join(FILE), bad).unwrap();
            assert!(check_state(dir.path()).is_err(), "{bad:?}");
        }
        assert!(check_config(Some(2)).is_err());
        assert!(check_config(Some(0)).is_err());
        check_config(None).unwrap();
        check_config(Some(1)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_that_cannot_be_written_is_still_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = std::fs::write(dir.path().join("probe"), "").is_ok();
        let result = check_state(dir.path());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        result.unwrap();
        if !writable {
            assert!(!dir.path().join(FILE).exists());
        }
    }
}
