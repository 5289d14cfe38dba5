//! One canonical request path, decided before anything looks at a request.
//!
//! Route policy, unlock limits, the event hub, the audit log and the console
//! must all see the same path, or a rule written for one spelling is passed
//! by another (`/doors/X/unlock/`, `/developer//doors/X/unlock`,
//! `/doors/X/%75nlock`). Both ends apply [`canonical`]: the relay before a
//! request enters a tunnel, the agent again before its checks, so neither
//! trusts the other's spelling.
//!
//! The canonical form (RFC 3986 §6.2.2 normalisation, stricter where a
//! spelling could mean two things):
//!
//! * percent-encoded unreserved characters are decoded (`%75` → `u`), the
//!   hex digits of the other encodings are upper-cased (`%c3` → `%C3`);
//! * empty segments are dropped: repeated slashes collapse and a trailing
//!   slash goes (`/a//b/` → `/a/b`; the root stays `/`);
//! * refused, as [`PathError`]: dot-segments (`.`, `..`, in any encoding),
//!   an encoded slash or backslash (`%2F`, `%5C`), a raw backslash, a `;`
//!   (matrix parameters, which some servers strip and others keep), encoded
//!   control bytes, broken percent-encoding, and a target that is not a
//!   path (`*`, or one not starting with `/`).
//!
//! Letter case is left alone (identifiers may be case-sensitive); rule
//! matching compares literal segments without regard to ASCII case instead.

use std::borrow::Cow;

/// Why a request path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty, or not starting with `/`).
    #[error("the request target is not a path starting with /")]
    NotAbsolute,
    /// A `.` or `..` segment, literal or percent-encoded.
    #[error("the path has a dot-segment (. or ..)")]
    DotSegment,
    /// `%2F` or `%5C`: a slash that is not a separator.
    #[error("the path has an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    /// A raw backslash, which some servers read as a slash.
    #[error("the path has a backslash")]
    Backslash,
    /// A `;`, which some servers strip with what follows and others keep.
    #[error("the path has a ';' (matrix parameters are not accepted)")]
    Semicolon,
    /// An encoded control byte (`%00`–`%1F`, `%7F`).
    #[error("the path has an encoded control character")]
    Control,
    /// A `%` not followed by two hex digits.
    #[error("the path has a broken percent-encoding")]
    BadPercent,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The canonical form of `path` (no query), borrowed when it already is.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = normalize_encoding(path)?;
    let mut out = String::with_capacity(decoded.len());
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(PathError::DotSegment);
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Whether `path` is canonical as it stands without a percent sign (the
/// common case: no allocation), or an error it certainly has.
fn is_canonical(path: &str) -> Result<bool, PathError> {
    if path == "/" {
        return Ok(true);
    }
    for seg in path.split('/').skip(1) {
        if seg.is_empty() || seg.contains('%') {
            return Ok(false);
        }
        if seg == "." || seg == ".." {
            return Err(PathError::DotSegment);
        }
        if seg.contains('\\') {
            return Err(PathError::Backslash);
        }
        if seg.contains(';') {
            return Err(PathError::Semicolon);
        }
    }
    Ok(true)
}

/// Decodes unreserved characters, upper-cases the rest of the encodings,
/// and refuses what would be read two ways.
fn normalize_encoding(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (hi, lo) = match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadPercent),
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b';' => return Err(PathError::Semicolon),
                    0..=0x1f | 0x7f => return Err(PathError::Control),
                    c if is_unreserved(c) => out.push(c as char),
                    c => {
                        out.push('%');
                        out.push_str(&format!("{c:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            _ => {
                // Path bytes are ASCII (the URI parser refuses the rest);
                // copy a whole run of plain characters at once.
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b'%' | b'\\' | b';'))
                    .map_or(b.len(), |p| i + p);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// `path_and_query` with its path made canonical; `None` when nothing changes.
pub fn canonical_target(path_and_query: &str) -> Result<Option<String>, PathError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    Ok(match canonical(path)? {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNLOCK: &str = "/api/v1/developer/doors/0ed545f8-2fcd-4839-9021-b39e707f6aa9/unlock";

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", UNLOCK, "/api/v1/developer/users", "/a/b~c/d-e_f.g"] {
            assert!(matches!(canonical(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn variants_collapse_to_one_path() {
        let cases = [
            ("/api/v1/developer/doors/X/unlock/", "/api/v1/developer/doors/X/unlock"),
            ("/api/v1/developer//doors/X/unlock", "/api/v1/developer/doors/X/unlock"),
            (
                "//api///v1/developer/doors/X/unlock//",
                "/api/v1/developer/doors/X/unlock",
            ),
            ("/api/v1/developer/doors/X/%75nlock", "/api/v1/developer/doors/X/unlock"),
            (
                "/api/v1/developer/doors/X/%75%6E%6c%6f%63%6B",
                "/api/v1/developer/doors/X/unlock",
            ),
            ("/api/v1/developer/users/%c3%a9", "/api/v1/developer/users/%C3%A9"),
            ("/a/%2Dx%7e", "/a/-x~"),
            ("//", "/"),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn ambiguities_are_refused() {
        let cases = [
            ("/api/v1/developer/doors/X/unlock/.", PathError::DotSegment),
            ("/api/v1/developer/x/../doors/X/unlock", PathError::DotSegment),
            ("/api/v1/developer/doors/X/%2e%2E/X/unlock", PathError::DotSegment),
            ("/api/v1/developer/doors/X/%2E/unlock", PathError::DotSegment),
            ("/api/v1/developer/doors%2FX/unlock", PathError::EncodedSlash),
            ("/api/v1/developer/doors%2fX/unlock", PathError::EncodedSlash),
            ("/api/v1/developer/doors%5cX/unlock", PathError::EncodedSlash),
            ("/api/v1/developer\\doors/X/unlock", PathError::Backslash),
            ("/api/v1/developer/doors/X/unlock;x=1", PathError::Semicolon),
            ("/api/v1/developer/doors/X/unlock%3B", PathError::Semicolon),
            ("/api/v1/developer/doors/X/unlock%00", PathError::Control),
            ("/a/%zz", PathError::BadPercent),
            ("/a/%4", PathError::BadPercent),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn targets_keep_their_query() {
        assert_eq!(canonical_target("/a/b?x=1").unwrap(), None);
        assert_eq!(canonical_target("/a//b/?x=%2F").unwrap().as_deref(), Some("/a/b?x=%2F"));
        assert!(canonical_target("/a/%2F?x").is_err());
    }

    /// One way of spelling a segment: as is, or with some bytes percent-encoded
    /// in either case.
    fn spell(seg: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec((any::<bool>(), any::<bool>()), seg.len()).prop_map(move |flags| {
            seg.bytes()
                .zip(flags)
                .map(|(c, (encode, lower))| match (encode, lower) {
                    (false, _) => (c as char).to_string(),
                    (true, false) => format!("%{c:02X}"),
                    (true, true) => format!("%{c:02x}"),
                })
                .collect()
        })
    }

    proptest! {
        /// Any spelling of a path either canonicalises to it or is refused.
        #[test]
        fn no_spelling_escapes(
            segs in (spell("api"), spell("v1"), spell("developer"), spell("doors"), spell("abc-1"), spell("unlock")),
            slashes in proptest::collection::vec(1usize..4, 6),
            trailing in 0usize..3,
            dots in proptest::collection::vec(0u8..4, 6),
        ) {
            let parts = [segs.0, segs.1, segs.2, segs.3, segs.4, segs.5];
            let mut raw = String::new();
            for (i, seg) in parts.iter().enumerate() {
                raw.push_str(&"/".repeat(slashes[i]));
                match dots[i] {
                    1 => raw.push_str("./"),
                    2 => raw.push_str("x/../"),
                    3 => raw.push_str("%2e/"),
                    _ => {}
                }
                raw.push_str(seg);
            }
            raw.push_str(&"/".repeat(trailing));
            match canonical(&raw) {
                Ok(p) => prop_assert_eq!(p, "/api/v1/developer/doors/abc-1/unlock"),
                Err(e) => prop_assert_eq!(e, PathError::DotSegment, "{}", raw),
            }
        }

        /// Canonical forms are fixed points, and nothing panics.
        #[test]
        fn canonical_is_idempotent(raw in "/[a-zA-Z0-9/%._~;\\\\-]{0,40}") {
            if let Ok(p) = canonical(&raw) {
                let again = canonical(&p).unwrap();
                prop_assert!(matches!(again, Cow::Borrowed(_)), "{} → {}", raw, p);
            }
        }
    }
}
