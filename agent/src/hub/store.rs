//! The hub's ring on disk, so `?since=` survives an agent restart.
//!
//! `events/epoch` names this install's sequence space; events are appended
//! as JSON lines to segment files `events/seg-<first seq>.jsonl`. A writer
//! thread owns the files (the runtime never waits on the disk); whole
//! segments are deleted once the newer ones hold the buffer (by count and
//! by bytes) or they are past retention, so the folder stays bounded: at
//! most `max_bytes` plus the segment being written (an eighth of it). Lines are flushed per batch,
//! not fsynced: a power cut may lose the last events, never the file.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use anyhow::Context;
use serde_json::Value;
use tracing::{info, warn};

use super::{now_ms, Event, HubOptions};

/// What was found on disk.
pub struct Loaded {
    /// The install's epoch.
    pub epoch: String,
    /// Events still within the buffer and retention, oldest first.
    pub events: VecDeque<Arc<Event>>,
    /// The next sequence number if `events` is empty.
    pub next_seq: u64,
}

impl Loaded {
    /// Nothing stored (a new epoch).
    pub fn fresh(epoch: String) -> Self {
        Self {
            epoch,
            events: VecDeque::new(),
            next_seq: 1,
        }
    }
}

struct Segment {
    path: PathBuf,
    count: usize,
    /// Bytes of its lines.
    bytes: u64,
    last_at: u64,
}

/// Reads the folder (creating it and an epoch if new).
///
/// Sequence numbers are never reused within an epoch: when the writer
/// could not persist an event it retires the epoch (deletes its file, which
/// needs no free space), and the next start begins a new epoch, dropping
/// the old segments. Subscribers resuming with the old epoch then get a gap
/// frame instead of numbers they have already seen, meaning other events.
pub fn load(dir: &Path, opts: &HubOptions) -> anyhow::Result<(Loaded, Writer)> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let epoch_file = dir.join("epoch");
    let mut names: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_segment_name))
        .collect();
    names.sort();
    let epoch = match fs::read_to_string(&epoch_file) {
        Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
        _ => {
            if !names.is_empty() {
                warn!(
                    dir = %dir.display(),
                    "the event store lost events before the last stop (a full disk?): starting a new epoch; \
                     subscribers resuming get a gap frame"
                );
                for old in names.drain(..) {
                    let _ = fs::remove_file(old);
                }
            }
            let e = new_epoch()?;
            if let Err(err) = keyway_certs::files::write_atomic(&epoch_file, format!("{e}\n").as_bytes(), false) {
                // Served live all the same; the next start begins another epoch.
                warn!(
                    "could not write {} ({err}); events are not kept across a restart",
                    epoch_file.display()
                );
            }
            e
        }
    };
    let oldest_kept = now_ms().saturating_sub(opts.retention.as_millis() as u64);
    let mut events = VecDeque::new();
    let mut kept_bytes = 0u64;
    let mut segments = VecDeque::new();
    let (mut max_seq, mut bad) = (0, 0usize);
    for path in names {
        let mut seg = Segment {
            path,
            count: 0,
            bytes: 0,
            last_at: 0,
        };
        let file = File::open(&seg.path).with_context(|| format!("could not read {}", seg.path.display()))?;
        for line in BufReader::new(file).lines() {
            let Some((ev, len)) = line
                .ok()
                .and_then(|l| parse_line(&l).map(|ev| (ev, l.len() as u64 + 1)))
            else {
                bad += 1;
                continue;
            };
            seg.count += 1;
            seg.bytes += len;
            seg.last_at = seg.last_at.max(ev.at_ms);
            max_seq = max_seq.max(ev.seq);
            if ev.at_ms >= oldest_kept && events.back().is_none_or(|b: &Arc<Event>| b.seq < ev.seq) {
                kept_bytes += ev.text.len() as u64;
                events.push_back(Arc::new(ev));
                while events.len() > opts.buffer || (events.len() > 1 && kept_bytes > opts.max_bytes) {
                    if let Some(old) = events.pop_front() {
                        kept_bytes -= old.text.len() as u64;
                    }
                }
            }
        }
        segments.push_back(seg);
    }
    if bad > 0 {
        warn!(dir = %dir.display(), "skipped {bad} unreadable event lines (an interrupted write?)");
    }
    if !events.is_empty() {
        info!("event buffer: {} events restored, up to #{max_seq}", events.len());
    }
    let loaded = Loaded {
        epoch,
        events,
        next_seq: max_seq + 1,
    };
    let writer = Writer::start(dir.to_path_buf(), segments, opts.clone())?;
    Ok((loaded, writer))
}

fn is_segment_name(n: &str) -> bool {
    n.starts_with("seg-") && n.ends_with(".jsonl")
}

fn parse_line(line: &str) -> Option<Event> {
    let v: Value = serde_json::from_str(line).ok()?;
    let event = v.get("event").filter(|e| e.is_object())?;
    Some(Event {
        seq: v.get("seq")?.as_u64()?,
        at_ms: v.get("at")?.as_u64()?,
        text: event.to_string().into(),
    })
}

fn new_epoch() -> anyhow::Result<String> {
    let mut b = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| anyhow::anyhow!("no randomness for the event epoch"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Hands events to the writer thread.
pub struct Writer {
    tx: mpsc::Sender<Arc<Event>>,
}

impl Writer {
    fn start(dir: PathBuf, segments: VecDeque<Segment>, opts: HubOptions) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("keyway-events".into())
            .spawn(move || write_loop(&dir, segments, &opts, rx))
            .context("could not start the event writer thread")?;
        Ok(Self { tx })
    }

    /// Queues one event for the disk (never blocks).
    pub fn append(&self, event: &Arc<Event>) {
        let _ = self.tx.send(event.clone());
    }
}

fn write_loop(dir: &Path, mut segments: VecDeque<Segment>, opts: &HubOptions, rx: mpsc::Receiver<Arc<Event>>) {
    let per_segment = (opts.buffer / 8).clamp(64, 4096);
    let segment_bytes = (opts.max_bytes / 8).max(64 * 1024);
    let mut current: Option<File> = None;
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut out = String::new();
        let result: anyhow::Result<()> = (|| {
            for ev in &batch {
                let full = segments
                    .back()
                    .is_none_or(|s| s.count >= per_segment || s.bytes >= segment_bytes);
                if current.is_none() || full {
                    if let Some(mut f) = current.take() {
                        f.write_all(out.as_bytes())?;
                        out.clear();
                    }
                    let path = dir.join(format!("seg-{:020}.jsonl", ev.seq));
                    current = Some(OpenOptions::new().create(true).append(true).open(&path)?);
                    segments.push_back(Segment {
                        path,
                        count: 0,
                        bytes: 0,
                        last_at: 0,
                    });
                }
                let compact = serde_json::from_str::<Value>(&ev.text).map(|v| v.to_string());
                let text = compact.as_deref().unwrap_or("{}");
                let line = format!("{{\"seq\":{},\"at\":{},\"event\":{text}}}\n", ev.seq, ev.at_ms);
                out.push_str(&line);
                if let Some(seg) = segments.back_mut() {
                    seg.count += 1;
                    seg.bytes += line.len() as u64;
                    seg.last_at = ev.at_ms;
                }
            }
            if let Some(f) = current.as_mut() {
                f.write_all(out.as_bytes())?;
                f.flush()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    warn!(dir = %dir.display(), "could not persist door events (they are still served live): {e}");
                    // Numbers handed out now would be reused after a restart:
                    // retire the epoch, so the next start begins a new one.
                    if let Err(e) = fs::remove_file(dir.join("epoch")) {
                        warn!("could not retire the event epoch: {e}");
                    }
                }
                failing = true;
                current = None;
            }
        }
        prune(&mut segments, opts);
    }
}

/// Deletes the oldest segments that are no longer needed.
fn prune(segments: &mut VecDeque<Segment>, opts: &HubOptions) {
    let oldest_kept = now_ms().saturating_sub(opts.retention.as_millis() as u64);
    loop {
        let total: usize = segments.iter().map(|s| s.count).sum();
        let bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        let Some(oldest) = segments.front() else { return };
        let spare = total - oldest.count >= opts.buffer || bytes - oldest.bytes >= opts.max_bytes;
        let expired = oldest.last_at < oldest_kept;
        if segments.len() == 1 || !(spare || expired) {
            return;
        }
        if let Err(e) = fs::remove_file(&oldest.path) {
            warn!("could not delete {}: {e}", oldest.path.display());
        }
        segments.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hub::Hub;

    fn opts(buffer: usize) -> HubOptions {
        HubOptions {
            buffer,
            max_bytes: 64 * 1024 * 1024,
            retention: Duration::from_secs(3600),
            queue: 16,
        }
    }

    fn reopen(dir: &Path, o: &HubOptions) -> Hub {
        let (loaded, writer) = load(dir, o).unwrap();
        Hub::new(o.clone(), loaded, Some(writer))
    }

    /// Waits (bounded) until the writer has put event `seq` on disk.
    fn wait_lines(dir: &Path, seq: u64) {
        let needle = format!("{{\"seq\":{seq},");
        for _ in 0..500 {
            let written = fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| is_segment_name(&e.file_name().to_string_lossy()))
                .any(|e| fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&needle)));
            if written {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writer did not persist event {seq}");
    }

    #[test]
    fn events_survive_a_restart_with_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(100);
        let h = reopen(dir.path(), &o);
        for i in 0..5 {
            h.publish(&format!("{{\n  \"n\": {i}\n}}"));
        }
        wait_lines(dir.path(), 5);
        let epoch = h.epoch().to_string();
        drop(h);
        let h = reopen(dir.path(), &o);
        assert_eq!(h.epoch(), epoch, "same install, same epoch");
        let s = h.subscribe(Some(crate::hub::Since { seq: 3, epoch: None }));
        let got: Vec<_> = s.replay.iter().map(|e| (e.seq, e.text.to_string())).collect();
        assert_eq!(got, [(4, "{\"n\":3}".to_string()), (5, "{\"n\":4}".to_string())]);
        assert_eq!(h.publish("{}"), 6, "numbering continues");
    }

    #[test]
    fn the_folder_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(64);
        let h = reopen(dir.path(), &o);
        for _ in 0..1000 {
            h.publish("{\"event\":\"x\"}");
        }
        wait_lines(dir.path(), 1000);
        drop(h);
        let h = reopen(dir.path(), &o);
        let segs = fs::read_dir(dir.path()).unwrap().count() - 1;
        assert!(segs <= 3, "{segs} segments kept for a 64-event buffer");
        let s = h.subscribe(Some(crate::hub::Since { seq: 0, epoch: None }));
        assert_eq!(s.replay.len(), 64);
        assert_eq!(s.replay.last().unwrap().seq, 1000);
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let o = HubOptions {
            max_bytes: 256 * 1024,
            ..opts(10_000)
        };
        let h = reopen(dir.path(), &o);
        let event = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
        for _ in 0..2000 {
            h.publish(&event);
        }
        wait_lines(dir.path(), 2000);
        let held = |h: &Hub| {
            let s = h.subscribe(Some(crate::hub::Since { seq: 0, epoch: None }));
            assert_eq!(s.replay.last().unwrap().seq, 2000, "the newest is kept");
            s.replay.iter().map(|e| e.text.len() as u64).sum::<u64>()
        };
        let in_memory = held(&h);
        assert!(
            in_memory <= o.max_bytes && in_memory > o.max_bytes - 2 * event.len() as u64,
            "{in_memory} bytes held for a {}-byte buffer",
            o.max_bytes
        );
        drop(h);
        // The writer prunes after each batch it has written: wait for it.
        let on_disk = || -> u64 {
            fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| is_segment_name(&e.file_name().to_string_lossy()))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        };
        let bound = o.max_bytes + 64 * 1024 + event.len() as u64 + 64;
        for _ in 0..500 {
            if on_disk() < bound {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            on_disk() < bound,
            "{} bytes on disk for a {}-byte buffer",
            on_disk(),
            o.max_bytes
        );
        let h = reopen(dir.path(), &o);
        assert!(held(&h) <= o.max_bytes, "restored past the bound");
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(10);
        let h = reopen(dir.path(), &o);
        h.publish("{}");
        wait_lines(dir.path(), 1);
        drop(h);
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| is_segment_name(&e.file_name().to_string_lossy()))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(seg).unwrap();
        f.write_all(b"{\"seq\":2,\"at\":1,\"ev").unwrap();
        let h = reopen(dir.path(), &o);
        assert_eq!(h.publish("{}"), 2);
    }
}
