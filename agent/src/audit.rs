//! The audit log: one JSON line per request through the tunnel.
//!
//! Time, request id, credential (an integration's name or a token
//! fingerprint, never a token), client address, method, path template (ids
//! replaced by `{id}`, no query string: queries can carry secrets), status,
//! sizes and duration. Written by a thread to `audit.log` beside the key
//! (rotated at `audit_max_bytes`, `audit.log.1` … kept), and to the journal
//! through the log at target `keyway_agent::audit`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// The relay's request id (`x-request-id`).
    pub request_id: String,
    /// Who: `integration:NAME`, `passthrough:FINGERPRINT`, `anonymous`.
    pub credential: String,
    /// The client's address as the relay saw it.
    pub client_ip: String,
    /// Method.
    pub method: String,
    /// Path with ids replaced by `{id}`.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// Request body bytes, when declared.
    pub request_bytes: Option<u64>,
    /// Response body bytes, when declared.
    pub response_bytes: Option<u64>,
    /// Milliseconds until the response head.
    pub duration_ms: u64,
}

/// Files kept besides the current one.
const KEEP: usize = 3;

/// How often the writer thread wakes to write what has queued: the request
/// path only queues (no syscall, no wake-up), and a busy minute costs a
/// few hundred writes, not one per request.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Hands records to the writer thread.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Record>,
}

impl Audit {
    /// Starts the writer for `dir/audit.log`.
    pub fn start(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Record>();
        let path = dir.join("audit.log");
        std::thread::Builder::new()
            .name("keyway-audit".into())
            .spawn(move || write_loop(&path, max_bytes, rx, FLUSH_EVERY))?;
        Ok(Self { tx })
    }

    /// Records one request (never blocks, never wakes the writer).
    pub fn record(&self, r: Record) {
        let _ = self.tx.send(r);
    }
}

/// The log file beside the key.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join("audit.log")
}

fn open(path: &Path) -> std::io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new().create(true).append(true).mode(0o640).open(path)?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

fn rotate(path: &Path) {
    for i in (1..KEEP).rev() {
        let _ = std::fs::rename(
            format!("{}.{i}", path.display()),
            format!("{}.{}", path.display(), i + 1),
        );
    }
    let _ = std::fs::rename(path, format!("{}.1", path.display()));
}

/// Every `every`, writes what has queued to the file and, one line per
/// record, to the journal (through the log); ends once the agent is gone
/// and the queue is written.
fn write_loop(path: &Path, max_bytes: u64, rx: mpsc::Receiver<Record>, every: std::time::Duration) {
    let mut file: Option<(File, u64)> = None;
    let mut warned = false;
    let mut lost = 0u64;
    let mut open_senders = true;
    while open_senders {
        std::thread::sleep(every);
        let mut out = String::new();
        loop {
            let r = match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open_senders = false;
                    break;
                }
            };
            tracing::info!(
                target: "keyway_agent::audit",
                request_id = %r.request_id, credential = %r.credential, client = %r.client_ip,
                method = %r.method, path = %r.path, status = r.status, ms = r.duration_ms,
                "request"
            );
            if let Ok(line) = serde_json::to_string(&r) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        if out.is_empty() {
            continue;
        }
        if file.is_none() {
            file = open(path).ok();
        }
        if file.as_ref().is_some_and(|(_, len)| *len >= max_bytes) {
            rotate(path);
            file = open(path).ok();
        }
        // Records lost earlier are owned up to first, in a line of their own.
        if lost > 0 {
            out.insert_str(0, &loss_marker(lost));
        }
        let records = out.lines().count() as u64;
        match file.as_mut().map(|(f, len)| append_whole(f, len, &out)) {
            Some(Ok(())) => {
                warned = false;
                lost = 0;
            }
            failed => {
                // The batch is not in the file at all; count what it lost.
                lost += records - u64::from(lost > 0);
                if !warned {
                    let why = match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "it cannot be opened".into(),
                    };
                    tracing::warn!(
                        "could not write the audit log {} ({why}); counting lost records",
                        path.display()
                    );
                    warned = true;
                }
                file = None;
            }
        }
    }
}

/// Appends `text` whole or not at all: a write cut short (a full disk) is
/// truncated away, so no half line is ever glued to the next record.
fn append_whole(f: &mut File, len: &mut u64, text: &str) -> std::io::Result<()> {
    match f.write_all(text.as_bytes()).and_then(|()| f.flush()) {
        Ok(()) => {
            *len += text.len() as u64;
            Ok(())
        }
        Err(e) => {
            // Shrinking needs no free space; the file ends where it did.
            let _ = f.set_len(*len);
            Err(e)
        }
    }
}

/// The line that stands for `n` records that could not be written.
fn loss_marker(n: u64) -> String {
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let line = serde_json::json!({
        "time": time, "lost": n,
        "note": format!("{n} audit records could not be written (the disk was full or unwritable)"),
    });
    format!("{line}\n")
}

/// `/api/v1/developer/users/3f2a…/avatar` → `/api/v1/developer/users/{id}/avatar`.
pub fn template(path: &str) -> String {
    path.split('/')
        .map(|seg| if looks_like_id(seg) { "{id}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn looks_like_id(seg: &str) -> bool {
    let hexish = seg.len() >= 8 && seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let numeric = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
    hexish || numeric || (seg.len() > 24 && seg.bytes().any(|b| b.is_ascii_digit()))
}

/// The last `n` records in `dir` (oldest first).
pub fn tail(dir: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let path = path_in(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::anyhow!("could not read {}: {e}", path.display())),
    };
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

/// One record as a human line.
pub fn describe(line: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if let (Some(time), Some(n)) = (v["time"].as_str(), v["lost"].as_u64()) {
            return format!("{time} LOST {n} records: the disk was full or unwritable");
        }
    }
    match serde_json::from_str::<Record>(line) {
        Ok(r) => format!(
            "{} {} {:<6} {:<48} {} {:>5}ms {} {}",
            r.time, r.status, r.method, r.path, r.credential, r.duration_ms, r.client_ip, r.request_id
        ),
        Err(_) => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_hide_ids() {
        assert_eq!(
            template("/api/v1/developer/users/5d600936-8618-4f2d-a1b7-d786865b70ba/avatar"),
            "/api/v1/developer/users/{id}/avatar"
        );
        assert_eq!(template("/api/v1/developer/doors"), "/api/v1/developer/doors");
        assert_eq!(
            template("/api/v1/developer/visitors/42"),
            "/api/v1/developer/visitors/{id}"
        );
    }

    #[test]
    fn rotates_and_keeps_a_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let rec = Record {
            time: "t".into(),
            request_id: "r".into(),
            credential: "integration:x".into(),
            client_ip: "127.0.0.1".into(),
            method: "GET".into(),
            path: "/p".into(),
            status: 200,
            request_bytes: None,
            response_bytes: Some(3),
            duration_ms: 1,
        };
        let line = serde_json::to_string(&rec).unwrap().len() as u64 + 1;
        // One record per writer run: each run reopens the file, as after a restart.
        for _ in 0..60 {
            let (tx, rx) = mpsc::channel();
            tx.send(rec.clone()).unwrap();
            drop(tx);
            write_loop(&path, 500, rx, std::time::Duration::ZERO);
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, KEEP + 1, "the current file and {KEEP} older ones");
        assert!(std::fs::metadata(&path).unwrap().len() <= 500 + line);
        assert_eq!(tail(dir.path(), 1).unwrap().len(), 1);
        let kept: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().count())
            .sum();
        assert!(kept < 60, "old records are dropped ({kept} kept)");
    }
}
