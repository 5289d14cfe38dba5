//! Fault injection with the real binaries: crashes, restarts, stops and
//! graceful shutdowns, each healed without anyone touching the agent.

use std::time::{Duration, Instant};

use http::StatusCode;
use keyway_tests::client::{Api, EventListener, Reply};
use keyway_tests::console::{ConsoleOptions, RunningConsole, DELAY_HEADER, HELLO_FRAME};
use keyway_tests::procs::BinaryStack;
use keyway_tests::stack::{empty, https_client, DOMAIN, SITE, TOKEN};

const DOORS: &str = "/api/v1/developer/doors";

struct Fixture {
    _console: RunningConsole,
    _dir: tempfile::TempDir,
    bins: BinaryStack,
    api: Api,
}

async fn fixture() -> Fixture {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let api = Api::with_client(
        https_client(&bins.https_ca_der),
        &format!("https://{}", bins.addr),
        TOKEN,
    );
    Fixture {
        _console: console,
        _dir: dir,
        bins,
        api,
    }
}

async fn get(api: &Api, delay_ms: Option<u64>) -> anyhow::Result<Reply> {
    let mut req = api
        .request(http::Method::GET, DOORS)
        .header("host", format!("{SITE}.{DOMAIN}"));
    if let Some(ms) = delay_ms {
        req = req.header(DELAY_HEADER, ms.to_string());
    }
    api.send(req.body(empty())?).await
}

/// Time until the first 200 through the tunnel, polling (bounded) from now.
async fn time_to_first_ok(api: &Api) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        if let Ok(r) = get(api, None).await {
            if r.status == StatusCode::OK {
                return t0.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no 200 through the tunnel within 15 s");
}

fn report(what: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    eprintln!(
        "{what}: n={} p50={:?} p95={:?} max={:?}",
        v.len(),
        p(0.5),
        p(0.95),
        v[v.len() - 1]
    );
    p(0.95)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_crash_and_restart_heals_within_a_second() {
    let mut f = fixture().await;
    let mut heal = vec![];
    for _ in 0..10 {
        assert_eq!(get(&f.api, None).await.unwrap().status, StatusCode::OK);
        f.bins.kill_relay().await.unwrap();
        f.bins.start_relay().await.unwrap();
        heal.push(time_to_first_ok(&f.api).await);
    }
    let p95 = report("relay kill -9 → listening again → first 200", heal);
    assert!(p95 < RELAY_CRASH_HEAL, "p95 heal {p95:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crash_and_restart_replaces_the_stale_session_at_once() {
    let mut f = fixture().await;
    let mut heal = vec![];
    for _ in 0..3 {
        f.bins.kill_agent().await.unwrap();
        // The relay still holds the dead agent's connection; a new one must
        // replace it rather than wait for the idle timeout.
        f.bins.spawn_agent().unwrap();
        heal.push(time_to_first_ok(&f.api).await);
    }
    let p95 = report("agent kill -9 → restarted → first 200", heal);
    assert!(p95 < CRASH_HEAL, "p95 {p95:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sigterm_lets_in_flight_requests_finish_and_restarts_websockets() {
    let mut f = fixture().await;
    let mut sockets = vec![];
    for _ in 0..5 {
        let mut l = EventListener::connect(f.bins.addr, &format!("{SITE}.{DOMAIN}"), &f.bins.https_ca_der, TOKEN)
            .await
            .unwrap();
        assert_eq!(l.next_text(Duration::from_secs(10)).await.unwrap(), HELLO_FRAME);
        sockets.push(l);
    }
    let mut inflight = vec![];
    for _ in 0..20 {
        let api = f.api.clone();
        inflight.push(tokio::spawn(async move { get(&api, Some(1500)).await }));
    }
    // A fast request sent after them has completed a full round trip, so
    // the 20 slow ones (1.5 s each at the console) are in flight.
    assert_eq!(get(&f.api, None).await.unwrap().status, StatusCode::OK);
    BinaryStack::signal(f.bins.relay.pid(), "TERM").await.unwrap();
    for r in inflight {
        let r = r.await.unwrap().expect("in-flight request answered");
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    for mut l in sockets {
        let code = l.close_code(Duration::from_secs(10)).await.unwrap();
        assert_eq!(code, Some(1012), "WebSockets are told the service restarts");
    }
    let status = f.bins.relay.0.wait().await.unwrap();
    assert!(status.success(), "relay exits 0 after draining: {status:?}");
    f.bins.start_relay().await.unwrap();
    time_to_first_ok(&f.api).await;
}

/// A silent agent is dropped after the relay's silence limit (it may have
/// been heard up to one keep-alive before it froze), not before, and within
/// a check interval after: 2.0 to 3.0 s, the README's bound.
pub(crate) fn assert_silence_detected(after: Duration) {
    let (limit, keepalive) = (keyway_proto::SILENT_LIMIT, keyway_proto::AGENT_KEEPALIVE);
    assert!(
        after >= limit - keepalive,
        "dropped after {after:?}: before {limit:?} of silence"
    );
    assert!(after < Duration::from_secs(3), "dropped only after {after:?}");
}

/// Polls (bounded) until `pred` holds for a response status.
async fn until_status(api: &Api, deadline: Duration, pred: impl Fn(StatusCode) -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        if let Ok(r) = get(api, None).await {
            if pred(r.status) {
                return t0.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within {deadline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_is_dropped_and_reconnects_when_it_wakes() {
    let f = fixture().await;
    let agent = f.bins.agent.pid();
    BinaryStack::signal(agent, "STOP").await.unwrap();
    let dropped = until_status(&f.api, Duration::from_secs(15), |s| {
        s == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    eprintln!(
        "relay dropped the frozen agent after {dropped:?} (silence limit {:?})",
        keyway_proto::SILENT_LIMIT
    );
    assert_silence_detected(dropped);
    BinaryStack::signal(agent, "CONT").await.unwrap();
    let back = until_status(&f.api, Duration::from_secs(15), |s| s == StatusCode::OK).await;
    eprintln!("agent serving again {back:?} after SIGCONT");
    assert!(back < MAX_ANSWER, "serving again only {back:?} after SIGCONT");
    let list = keyway_tests::procs::cli(
        "keyway-relay",
        &[
            "site",
            "list",
            "--json",
            "--config",
            f.bins.relay_config.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let sites: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(sites[0]["online"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_across_five_relay_restarts_never_hang() {
    let mut f = fixture().await;
    let (mut ok, mut offline) = (0, 0);
    let mut slowest = Duration::ZERO;
    let mut heals = vec![];
    for round in 0..5 {
        // Restart only a healthy tunnel, so each restart is a fresh fault.
        until_status(&f.api, Duration::from_secs(15), |s| s == StatusCode::OK).await;
        BinaryStack::signal(f.bins.relay.pid(), "TERM").await.unwrap();
        f.bins.relay.0.wait().await.unwrap();
        f.bins.start_relay().await.unwrap();
        let restarted = Instant::now();
        let mut healed = None;
        for i in 0..200 {
            let t0 = Instant::now();
            // The relay is listening: every request gets an answer.
            let r = get(&f.api, None)
                .await
                .unwrap_or_else(|e| panic!("round {round}, request {i}: no answer from a listening relay: {e:#}"));
            slowest = slowest.max(t0.elapsed());
            if r.status == StatusCode::OK {
                ok += 1;
                healed.get_or_insert(restarted.elapsed());
            } else {
                // Until the agent is back, the one honest answer: it is offline.
                assert_eq!(
                    r.status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(r.json()["code"], "CODE_KEYWAY_AGENT_OFFLINE");
                assert!(healed.is_none(), "round {round}: a 503 after the tunnel had healed");
                offline += 1;
                // Paced while the agent is away, so the round spans its return.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let healed = healed.unwrap_or_else(|| panic!("round {round}: the tunnel did not heal within 200 requests"));
        heals.push(healed);
    }
    eprintln!(
        "1000 requests, 5 SIGTERM restarts: {ok} ok, {offline} 503 agent offline; slowest {slowest:?}; healed after {heals:?}"
    );
    assert_eq!(ok + offline, 1000);
    assert!(slowest < MAX_ANSWER, "a request took {slowest:?}");
    let worst = heals.iter().max().copied().unwrap_or_default();
    assert!(worst < SIGTERM_HEAL, "a restart healed only after {worst:?}");
}

/// The bounds the README's table states (typical figures are far below;
/// these leave room for a loaded 2-core CI machine running tests side by side).
const MAX_ANSWER: Duration = Duration::from_secs(1);
/// A SIGTERM'd relay restarted: the agent returns after its reconnect backoff.
const SIGTERM_HEAL: Duration = Duration::from_secs(3);
/// A crashed agent replaced: first 200 through the tunnel (p95). The new
/// agent dials at once and the relay replaces the stale session.
const CRASH_HEAL: Duration = Duration::from_millis(500);
/// A crashed relay restarted: the agent hears the new relay's stateless
/// reset on its next packet — a keep-alive or loss probe, at most
/// `AGENT_KEEPALIVE` apart — then dials at once (p95 of ten is the slowest,
/// so the handshake on a loaded 2-core machine is allowed for).
const RELAY_CRASH_HEAL: Duration = Duration::from_millis(keyway_proto::AGENT_KEEPALIVE.as_millis() as u64 + 250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_gets_the_next_request_a_503_within_3_s() {
    let mut f = fixture().await;
    assert_eq!(get(&f.api, None).await.unwrap().status, StatusCode::OK);
    // A power cut at the site: no FIN, no close frame, just silence.
    f.bins.kill_agent().await.unwrap();
    let t0 = Instant::now();
    let r = get(&f.api, None).await.unwrap();
    let took = t0.elapsed();
    eprintln!("agent kill -9 → next request answered {} after {took:?}", r.status);
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["code"], "CODE_KEYWAY_AGENT_OFFLINE");
    assert!(took < Duration::from_secs(3), "the 503 took {took:?}");
    // The link is down: the next one is answered at once.
    let t0 = Instant::now();
    assert_eq!(get(&f.api, None).await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t0.elapsed() < MAX_ANSWER, "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigterm_lets_in_flight_requests_finish() {
    let mut f = fixture().await;
    let mut inflight = vec![];
    for _ in 0..10 {
        let api = f.api.clone();
        inflight.push(tokio::spawn(async move { get(&api, Some(1000)).await }));
    }
    assert_eq!(get(&f.api, None).await.unwrap().status, StatusCode::OK);
    BinaryStack::signal(f.bins.agent.pid(), "TERM").await.unwrap();
    for r in inflight {
        let r = r.await.unwrap().expect("in-flight request answered");
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    let status = f.bins.agent.0.wait().await.unwrap();
    assert!(status.success(), "agent exits 0 after draining: {status:?}");
    let r = get(&f.api, None).await.unwrap();
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the relay knows the agent left"
    );
    f.bins.spawn_agent().unwrap();
    time_to_first_ok(&f.api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sigterm_waits_shutdown_grace_for_requests_then_exits() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bins = BinaryStack::start_with(dir.path(), &console.url, "shutdown_grace = \"1s\"\n")
        .await
        .unwrap();
    let api = Api::with_client(
        https_client(&bins.https_ca_der),
        &format!("https://{}", bins.addr),
        TOKEN,
    );
    let quick = {
        let api = api.clone();
        tokio::spawn(async move { get(&api, Some(300)).await })
    };
    let slow = {
        let api = api.clone();
        tokio::spawn(async move { get(&api, Some(10_000)).await })
    };
    // A fast request after them has made a full round trip: both are in flight.
    assert_eq!(get(&api, None).await.unwrap().status, StatusCode::OK);
    let t0 = Instant::now();
    BinaryStack::signal(bins.relay.pid(), "TERM").await.unwrap();
    let status = bins.relay.0.wait().await.unwrap();
    let took = t0.elapsed();
    eprintln!("relay exited {took:?} after SIGTERM with a 10 s request in flight (grace 1 s)");
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(900), "left before the grace: {took:?}");
    assert!(took < Duration::from_secs(5), "waited past the grace: {took:?}");
    let quick = quick.await.unwrap().expect("the request within the grace finished");
    assert_eq!(quick.status, StatusCode::OK);
    let slow = slow.await.unwrap();
    assert!(
        slow.as_ref().map_or(true, |r| r.status != StatusCode::OK),
        "the request past the grace was cut: {:?}",
        slow.map(|r| r.status)
    );
}
