//! PEM parsing and writing key material to disk.
//!
//! Private keys are written 0600 through a temporary file and a rename, so a
//! crash never leaves a half-written or world-readable key behind.

use std::io::Write;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// All certificates in a PEM buffer; at least one.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what: what.into(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            what: what.into(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM buffer.
pub fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| CertError::Pem {
        what: what.into(),
        why: e.to_string(),
    })
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Certificates from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    certs_from_pem(&path.display().to_string(), &read(path)?)
}

/// A private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    key_from_pem(&path.display().to_string(), &read(path)?)
}

/// Writes `contents` atomically; `secret` files get mode 0600 from the start.
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents).and_then(|_| f.sync_all()).map_err(io)?;
    #[cfg(unix)]
    same_owner_as_dir(&tmp, dir);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Gives a file the owner of its folder when they differ and we may (root
/// running `keyway-agent token add` into the service user's state folder):
/// the service can then read what the administrator wrote. Best effort.
#[cfg(unix)]
fn same_owner_as_dir(file: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Ok(f)) = (std::fs::metadata(dir), std::fs::metadata(file)) else {
        return;
    };
    if (d.uid(), d.gid()) != (f.uid(), f.gid()) {
        let _ = std::os::unix::fs::chown(file, Some(d.uid()), Some(d.gid()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_0600_and_pem_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let key_path = dir.path().join("k.pem");
        write_atomic(&key_path, ck.signing_key.serialize_pem().as_bytes(), true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        load_key(&key_path).unwrap();
        let cert_path = dir.path().join("c.pem");
        write_atomic(&cert_path, ck.cert.pem().as_bytes(), false).unwrap();
        assert_eq!(load_certs(&cert_path).unwrap()[0], *ck.cert.der());
    }

    #[test]
    fn clear_errors_for_missing_and_empty_files() {
        let err = load_certs(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/ca.pem"), "{err}");
        let err = certs_from_pem("ca.pem", b"hello").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        assert!(key_from_pem("k.pem", b"").is_err());
    }
}
