//! The operator's apt repository, served read-only at
//! `https://<domain>/apt/` when `apt_repository` is set, so every Pi fetches
//! updates from the relay it already trusts (its packages are signed by the
//! operator's key; HTTPS adds privacy, the signature is what apt checks).
//!
//! Only the relay's own names (the bare domain, `localhost`, an IP address)
//! serve it; `<site>.<domain>/apt/…` still goes to the site's console. Files
//! only: no listings, no file outside the folder (the path is canonical
//! first, so no dot-segment or encoded slash reaches here, and the resolved
//! file must still lie inside the folder after symlinks). GET and HEAD, with
//! `If-Modified-Since` (apt sends it for `InRelease`); bodies are streamed
//! from disk in 64 KiB reads, never held whole.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, IF_MODIFIED_SINCE, LAST_MODIFIED};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tracing::debug;

/// The URL prefix the repository is served under.
pub const PREFIX: &str = "/apt";

/// A response body read from disk.
pub type FileBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// The folder behind `/apt/`.
#[derive(Debug, Clone)]
pub struct AptRepository {
    root: PathBuf,
}

impl AptRepository {
    /// Serves `root` (which may be empty or missing until the first build).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Whether `req` is for the repository: the relay's own host and a path
    /// under [`PREFIX`].
    pub fn wants<B>(&self, req: &Request<B>, domain: &str) -> bool {
        let path = req.uri().path();
        path.strip_prefix(PREFIX)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            && crate::proxy::is_for_relay(req, domain)
    }

    /// Answers one request for a file of the repository.
    pub async fn serve<B>(&self, req: &Request<B>) -> Response<FileBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "the apt repository is read-only\n");
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let Some(relative) = relative_path(req.uri().path_and_query().map_or("/", |pq| pq.as_str())) else {
            return text(StatusCode::BAD_REQUEST, "not a file name of the repository\n");
        };
        let Some((file, meta, path)) = self.open(&relative).await else {
            return text(StatusCode::NOT_FOUND, "not in the repository\n");
        };
        let modified = meta.modified().ok();
        if let (Some(m), Some(since)) = (modified, if_modified_since(req)) {
            if unix_seconds(m) <= unix_seconds(since) {
                return status_only(StatusCode::NOT_MODIFIED, modified);
            }
        }
        debug!("apt: {} ({} bytes)", path.display(), meta.len());
        let mut resp = if req.method() == Method::HEAD {
            Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync())
        } else {
            let chunks = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map_ok(Frame::data);
            Response::new(StreamBody::new(chunks).boxed_unsync())
        };
        let h = resp.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(meta.len()));
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
        if let Some(v) = modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()) {
            h.insert(LAST_MODIFIED, v);
        }
        resp
    }

    /// Opens a regular file under the root; `None` for anything else
    /// (missing, a folder, unreadable, or resolving outside the root).
    async fn open(&self, relative: &Path) -> Option<(tokio::fs::File, std::fs::Metadata, PathBuf)> {
        let root = tokio::fs::canonicalize(&self.root).await.ok()?;
        let path = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
        if !path.starts_with(&root) {
            debug!("apt: {} resolves outside the repository", relative.display());
            return None;
        }
        let file = tokio::fs::File::open(&path).await.ok()?;
        let meta = file.metadata().await.ok()?;
        meta.is_file().then_some((file, meta, path))
    }
}

/// The file a request target names, relative to the root: canonical, under
/// [`PREFIX`], each segment percent-decoded and a plain file name.
fn relative_path(target: &str) -> Option<PathBuf> {
    let canonical = keyway_proto::path::canonical_target(target).ok()?;
    let target = canonical.as_deref().unwrap_or(target);
    let path = target.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let mut out = PathBuf::new();
    for segment in rest.split('/') {
        let name = percent_encoding::percent_decode_str(segment).decode_utf8().ok()?;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(&*name);
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn if_modified_since<B>(req: &Request<B>) -> Option<SystemTime> {
    let v = req.headers().get(IF_MODIFIED_SINCE)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok()
}

/// HTTP dates have whole seconds.
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("deb") => "application/vnd.debian.binary-package",
        Some("gz") => "application/gzip",
        Some("asc") => "application/pgp-keys",
        Some("gpg") => "application/pgp-signature",
        _ => "text/plain; charset=utf-8",
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<FileBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn status_only(status: StatusCode, modified: Option<SystemTime>) -> Response<FileBody> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    if let Some(v) = modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()) {
        resp.headers_mut().insert(LAST_MODIFIED, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_under_the_prefix() {
        let p = |t: &str| relative_path(t).map(|p| p.display().to_string());
        assert_eq!(
            p("/apt/dists/stable/InRelease").as_deref(),
            Some("dists/stable/InRelease")
        );
        assert_eq!(
            p("/apt/pool/main/keyway-agent_0.1.0%2B1-1_arm64.deb").as_deref(),
            Some("pool/main/keyway-agent_0.1.0+1-1_arm64.deb")
        );
        assert_eq!(p("/apt//pool/x.deb?y=1").as_deref(), Some("pool/x.deb"));
        assert_eq!(p("/apt/../registry.db"), None);
        assert_eq!(p("/apt/%2e%2e/registry.db"), None);
        assert_eq!(p("/apt/pool%2F..%2Fx"), None);
        assert_eq!(p("/apt/"), None);
        assert_eq!(p("/apt"), None);
        assert_eq!(p("/aptx/y"), None);
        assert_eq!(p("/apt/a%00b"), None);
    }
}
