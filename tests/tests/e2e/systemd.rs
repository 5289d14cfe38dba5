//! `keyway-agent run` under systemd's notify protocol, against a stand-in
//! for the service manager: a datagram socket named in `NOTIFY_SOCKET` and
//! a watchdog period in `WATCHDOG_USEC`/`WATCHDOG_PID`, as systemd sets
//! them for the unit (`Type=notify`, `WatchdogSec=`).

use std::time::{Duration, Instant};

use keyway_tests::console::{ConsoleOptions, RunningConsole};
use keyway_tests::procs::{BinaryStack, Proc};
use keyway_tests::stack::{SITE, TOKEN};
use keyway_tests::workspace_bin;
use tokio::net::UnixDatagram;

/// The stand-in's `WatchdogSec`.
const WATCHDOG: Duration = Duration::from_millis(400);
const WAIT: Duration = Duration::from_secs(10);

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager(UnixDatagram);

impl Manager {
    /// The assignments of the next datagram, if one comes within `wait`.
    async fn next(&self, wait: Duration) -> Option<Vec<String>> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(wait, self.0.recv(&mut buf)).await.ok()?.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string).collect())
    }

    /// Waits (bounded) for an assignment starting with `prefix`.
    async fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while let Some(lines) = self.next(deadline.saturating_duration_since(Instant::now())).await {
            if let Some(line) = lines.into_iter().find(|l| l.starts_with(prefix)) {
                return line;
            }
        }
        panic!("no {prefix}… within {WAIT:?}");
    }

    /// Watches the watchdog as systemd does for up to `window`: how long
    /// after the watch began it found a whole period without `WATCHDOG=1`
    /// (None: fed throughout).
    async fn hung_within(&self, window: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < window {
            match self.next(WATCHDOG).await {
                None => return Some(t0.elapsed()),
                Some(lines) if lines.iter().any(|l| l == "WATCHDOG=1") => {}
                Some(_) => {}
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_ready_feeds_the_watchdog_and_is_found_hung_when_stopped() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    bins.kill_agent().await.unwrap();
    let socket = dir.path().join("notify.sock");
    let manager = Manager(UnixDatagram::bind(&socket).unwrap());
    // As systemd: WATCHDOG_PID is the service's own pid, so `exec` keeps it.
    let bin = workspace_bin("keyway-agent");
    let usec = WATCHDOG.as_micros().to_string();
    let mut agent = Proc::spawn_program(
        "sh",
        &[
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"",
            bin.to_str().unwrap(),
            bins.agent_config.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", socket.to_str().unwrap()), ("WATCHDOG_USEC", &usec)],
    )
    .unwrap();
    assert_eq!(manager.expect("READY=").await, "READY=1");
    let status = manager.expect("STATUS=tunnel up").await;
    assert!(status.contains(&format!("site {SITE} (")), "{status}");
    // Fed at half the period, for as long as it runs.
    assert_eq!(manager.hung_within(6 * WATCHDOG).await, None);

    BinaryStack::signal(agent.pid(), "STOP").await.unwrap();
    let hung = manager.hung_within(WAIT).await;
    assert!(hung.is_some(), "a stopped agent still fed the watchdog");
    eprintln!("stopped agent found hung after {hung:?} (WatchdogSec {WATCHDOG:?})");
    BinaryStack::signal(agent.pid(), "CONT").await.unwrap();
    manager.expect("WATCHDOG=1").await;

    BinaryStack::signal(agent.pid(), "TERM").await.unwrap();
    manager.expect("STOPPING=1").await;
    let exit = tokio::time::timeout(WAIT, agent.0.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(agent.log().iter().all(|l| !l.contains(TOKEN)));
}
