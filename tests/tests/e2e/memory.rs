//! Streams, not buffers: 100 MB through the relay and agent processes while
//! their resident memory is watched.

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use keyway_tests::console::{ConsoleOptions, RunningConsole, EXPORT_BYTES_HEADER};
use keyway_tests::procs::BinaryStack;
use keyway_tests::rss_bytes;
use keyway_tests::stack::{body, https_client, TOKEN};
use tokio_util::sync::CancellationToken;

const MB: u64 = 1024 * 1024;
/// The CLI-made relay has no default site: address the site by name.
const SITE_HOST: &str = "hq.relay.keyway.test";
const EXPORT: &str = r#"{"topic":"all","since":1700000000,"until":1700086400,"timezone":"UTC"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_export_and_upload_stream_through_relay_and_agent_with_flat_memory() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The 100 MB upload is over the default 20 MB body limit: raised here.
    let bins = BinaryStack::start_with(dir.path(), &console.url, "[limits]\nmax_body_bytes = 209715200")
        .await
        .unwrap();
    let (relay_pid, agent_pid, addr) = (bins.relay.pid(), bins.agent.pid(), bins.addr);
    let layout = &bins;
    let client = https_client(&layout.https_ca_der);
    let export = |bytes: u64| export_request(addr, bytes);
    // Warm up: pools, buffers and QUIC windows reach their working size.
    for _ in 0..3 {
        let r = client.request(export(4 * MB)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.into_body().collect().await.unwrap();
    }
    let base = (rss_bytes(relay_pid).unwrap(), rss_bytes(agent_pid).unwrap());

    let watch = Watch::start([relay_pid, agent_pid]);
    let total = 100 * MB;
    let resp = client.request(export(total)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = stream.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
    }
    let peak = watch.stop().await;
    assert_eq!(received, total, "the whole export arrived");
    assert_flat("export", base, peak);

    // And the other way: a 100 MB multipart upload, generated as it is sent.
    let user = {
        let r = client
            .request(
                hyper::Request::builder()
                    .method(Method::POST)
                    .uri(format!("https://{addr}/api/v1/developer/users"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("host", SITE_HOST)
                    .body(body(r#"{"first_name":"Big","last_name":"Upload"}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
        v["data"]["id"].as_str().unwrap().to_string()
    };
    let base = (rss_bytes(relay_pid).unwrap(), rss_bytes(agent_pid).unwrap());
    let watch = Watch::start([relay_pid, agent_pid]);
    // Declared length: it streams (a body without one is read whole at
    // the edge, up to max_chunked_body_bytes).
    let (upload, length, digest) = streamed_multipart(100 * MB);
    let req = hyper::Request::builder()
        .method(Method::POST)
        .uri(format!("https://{addr}/api/v1/developer/users/{user}/avatar"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("host", SITE_HOST)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", length)
        .body(upload)
        .unwrap();
    let r = client.request(req).await.unwrap();
    let status = r.status();
    let answer = r.into_body().collect().await.unwrap().to_bytes();
    let peak = watch.stop().await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
    let stored = console.static_file(&format!("avatar/{user}")).expect("upload stored");
    assert_eq!(stored.len() as u64, 100 * MB);
    assert_eq!(
        keyway_certs::Fingerprint::of(&stored),
        digest.await.unwrap(),
        "upload arrived byte-exact"
    );
    assert_flat("upload", base, peak);
    console.stop().await;
}

/// A system-log export of `bytes` from the console, through the relay at `addr`.
fn export_request(addr: std::net::SocketAddr, bytes: u64) -> hyper::Request<keyway_tests::stack::ClientBody> {
    hyper::Request::builder()
        .method(Method::POST)
        .uri(format!("https://{addr}/api/v1/developer/system/logs/export"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("host", SITE_HOST)
        .header("content-type", "application/json")
        .header(EXPORT_BYTES_HEADER, bytes.to_string())
        .body(body(EXPORT))
        .unwrap()
}

const BOUNDARY: &str = "keyway-memory-boundary";

/// A multipart body of `size` pseudo-random bytes produced chunk by chunk,
/// its total length, and the SHA-256 of those bytes once they have all been
/// produced.
fn streamed_multipart(
    size: u64,
) -> (
    keyway_tests::stack::ClientBody,
    u64,
    tokio::sync::oneshot::Receiver<keyway_certs::Fingerprint>,
) {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let length = head.len() as u64 + size + tail.len() as u64;
    let chunk = 256 * 1024u64;
    let mut ctx = Some(ring::digest::Context::new(&ring::digest::SHA256));
    let mut tx = Some(tx);
    let data = futures_util::stream::iter(0..size.div_ceil(chunk)).map(move |i| {
        let n = chunk.min(size - i * chunk) as usize;
        let bytes: Vec<u8> = (0..n)
            .map(|j| (((i as usize * 31 + j) * 2654435761usize) >> 7) as u8)
            .collect();
        if let Some(c) = ctx.as_mut() {
            c.update(&bytes);
        }
        if (i + 1) * chunk >= size {
            let digest = ctx.take().unwrap().finish();
            let mut fp = [0u8; 32];
            fp.copy_from_slice(digest.as_ref());
            let _ = tx.take().unwrap().send(keyway_certs::Fingerprint(fp));
        }
        bytes::Bytes::from(bytes)
    });
    let stream = futures_util::stream::once(async move { bytes::Bytes::from(head) })
        .chain(data)
        .chain(futures_util::stream::once(async move { bytes::Bytes::from(tail) }))
        .map(|b| Ok::<_, keyway_tests::stack::BoxError>(Frame::data(b)));
    (http_body_util::BodyExt::boxed(StreamBody::new(stream)), length, rx)
}

/// How far above idle a relay or agent may go while 100 MB stream through.
const FLAT: u64 = 10 * MB;

fn assert_flat(what: &str, base: (u64, u64), peak: (u64, u64)) {
    let grew = (peak.0.saturating_sub(base.0), peak.1.saturating_sub(base.1));
    eprintln!(
        "{what}: relay RSS {} → {} MB, agent RSS {} → {} MB over 100 MB",
        base.0 / MB,
        peak.0 / MB,
        base.1 / MB,
        peak.1 / MB
    );
    // The README's promise: within 10 MB of idle (typically 1-5 MB here).
    assert!(grew.0 < FLAT, "{what}: relay grew by {} MB", grew.0 / MB);
    assert!(grew.1 < FLAT, "{what}: agent grew by {} MB", grew.1 / MB);
}

/// Samples processes' RSS every 20 ms and keeps the peak.
struct Watch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Watch {
    fn start(pids: [u32; 2]) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = (0u64, 0u64);
                while !stop.is_cancelled() {
                    peak.0 = peak.0.max(rss_bytes(pids[0]).unwrap_or(0));
                    peak.1 = peak.1.max(rss_bytes(pids[1]).unwrap_or(0));
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                peak
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// 200 integrations each downloading a 1 MiB export at once, through one
/// agent (a Pi has 1 GB): the agent's memory is bounded per stream, not
/// per byte, and given back when they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_exports_keep_the_agent_small_and_it_shrinks_after() {
    const STREAMS: usize = 200;
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let (agent_pid, addr) = (bins.agent.pid(), bins.addr);
    let client = https_client(&bins.https_ca_der);
    let export = move || export_request(addr, MB);
    let idle = rss_bytes(agent_pid).unwrap();
    let watch = Watch::start([agent_pid, agent_pid]);
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let (client, req) = (client.clone(), export());
        all.spawn(async move {
            let r = client.request(req).await?;
            anyhow::ensure!(r.status() == StatusCode::OK, "{}", r.status());
            let bytes = r.into_body().collect().await?.to_bytes();
            Ok(bytes.len() as u64)
        });
    }
    while let Some(done) = all.join_next().await {
        assert_eq!(done.unwrap().unwrap(), MB, "each export arrives whole");
    }
    let (peak, _) = watch.stop().await;
    // Given back: polled (bounded), since the allocator returns memory as
    // connections and tasks wind down.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = rss_bytes(agent_pid).unwrap();
        if now < 25 * MB || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{STREAMS} concurrent 1 MiB exports: agent RSS {} MB idle, {} MB peak, {} MB after",
        idle / MB,
        peak / MB,
        after / MB
    );
    assert!(peak < 64 * MB, "agent peaked at {} MB", peak / MB);
    assert!(after < 25 * MB, "agent kept {} MB", after / MB);
    console.stop().await;
}
