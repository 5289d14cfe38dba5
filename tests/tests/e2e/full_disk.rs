//! A full disk under the agent and the relay (a Pi's SD card): the audit
//! log keeps only whole records and says how many it lost; door-event
//! numbers are never reused, so a resuming subscriber gets every event once
//! or a gap frame, never a silent miss; requests are served throughout.
//!
//! The state lives on a small tmpfs this test mounts (it needs root, as
//! CI and the packaging checks have).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use keyway_tests::procs::cli;
use keyway_tests::stack::Stack;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// A tmpfs of `size` mounted on a fresh folder; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root (CI runs the suite as root)");
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Keeps the file system of `dir` full (as a runaway log would) until
/// dropped: whatever space is freed (a deleted file, a finished journal) is
/// taken again at once. Dropping it frees the disk.
struct Filler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Filler {
    fn start(dir: &Path) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, fill_dir) = (stop.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            let block = vec![0u8; 4096];
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                if let Ok(mut f) = std::fs::File::create(fill_dir.join(format!("filler-{n}"))) {
                    // Bounded by the tmpfs's size.
                    while f.write_all(&block).is_ok() {}
                    while f.write_all(&block[..1]).is_ok() {}
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        // Full before the caller goes on.
        while std::fs::File::create(dir.join("probe"))
            .and_then(|mut f| f.write_all(&[0; 4096]))
            .is_ok()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = std::fs::remove_file(dir.join("probe"));
        Self {
            stop,
            thread: Some(thread),
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("filler-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

async fn audit_lines(config: &str) -> Vec<String> {
    let out = cli(
        "keyway-agent",
        &["audit", "tail", "--json", "-n", "1000", "--config", config],
    )
    .await
    .unwrap();
    out.stdout.lines().map(str::to_string).collect()
}

fn ring(i: usize) -> Value {
    json!({"event": "access.remote_view", "receiver_id": "", "event_object_id": format!("ring-{i}"),
           "save_to_history": false, "data": {"request_id": format!("r{i}")}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_history_silently_and_serves_throughout() {
    let disk = Tmpfs::mount("4m");
    let mut stack = Stack::builder().dir(disk.0.join("stack")).start().await.unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    let api = stack.api();

    // Before: one event numbered and persisted, one request audited.
    let mut l = stack.listen_events_since("since=0").await.unwrap();
    stack.console.emit(&ring(0));
    let first = loop {
        let v = l.next_event(WAIT).await.unwrap();
        if v["keyway"] == "event" {
            break v;
        }
    };
    let (epoch, seq0) = (
        first["epoch"].as_str().unwrap().to_string(),
        first["seq"].as_u64().unwrap(),
    );
    assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, StatusCode::OK);

    // The disk fills: requests and events go on, their records cannot be kept.
    let filler = Filler::start(&disk.0);
    for _ in 0..20 {
        assert_eq!(
            api.get("/api/v1/developer/doors").await.unwrap().status,
            StatusCode::OK,
            "served while full"
        );
    }
    // More than a page of events: some cannot be persisted.
    for i in 1..=30 {
        stack.console.emit(&ring(i));
        let v = l.next_event(WAIT).await.unwrap();
        assert_eq!(v["seq"], seq0 + i as u64, "live events keep flowing while full");
    }
    let seen_last = seq0 + 30;
    l.close().await;

    // Space returns; more requests; the agent restarts.
    // Let the writers meet the full disk (the audit writer wakes every
    // 200 ms) before space returns.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(filler);
    for _ in 0..3 {
        assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, StatusCode::OK);
    }
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = audit_lines(&config).await;
        if lines.iter().any(|l| l.contains("\"lost\"")) && lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Only whole records, and one line owning up to what was lost.
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn record: {l:?}: {e}")))
        .collect();
    let markers: Vec<&Value> = parsed.iter().filter(|v| v.get("lost").is_some()).collect();
    assert_eq!(markers.len(), 1, "{lines:#?}");
    assert!(markers[0]["lost"].as_u64().unwrap() >= 20, "{}", markers[0]);
    let human = cli("keyway-agent", &["audit", "tail", "--config", &config])
        .await
        .unwrap();
    assert!(human.stdout.contains("LOST"), "{}", human.stdout);

    stack.stop_agent().await.unwrap();
    stack.start_agent().await.unwrap();
    // A subscriber resuming where it left off is told of the gap: the
    // numbers it saw were never persisted and belong to a retired epoch.
    let mut resumed = stack
        .listen_events_since(&format!("since={seen_last}&epoch={epoch}"))
        .await
        .unwrap();
    let frame = resumed.next_event(WAIT).await.unwrap();
    assert_eq!(frame["keyway"], "gap", "never a silent miss: {frame}");
    assert_ne!(frame["epoch"], json!(epoch), "a new epoch");
    // And new events are numbered in it, never colliding with what was seen.
    stack.console.emit(&ring(9));
    let v = loop {
        let v = resumed.next_event(WAIT).await.unwrap();
        if v["keyway"] == "event" {
            break v;
        }
    };
    assert_eq!(v["event"]["event_object_id"], "ring-9");
    assert_ne!(v["epoch"], json!(epoch));
    resumed.close().await;
    stack.shutdown().await.unwrap();
    drop(disk);
}
