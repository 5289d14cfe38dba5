//! A console whose certificate changes (as after a console update): the
//! agent refuses it, `status` and the relay's `site list` say so with both
//! fingerprints, and `keyway-agent console pin` on the Pi restores service
//! without a new pairing code and without restarting the agent.

use std::time::{Duration, Instant};

use http::StatusCode;
use keyway_tests::console::RunningConsole;
use keyway_tests::procs::cli;
use keyway_tests::stack::Stack;
use serde_json::Value;

const DOORS: &str = "/api/v1/developer/doors";

/// `keyway-agent status --json`, parsed.
async fn status(config: &str) -> Value {
    let out = cli("keyway-agent", &["status", "--json", "--config", config])
        .await
        .unwrap();
    serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
}

/// Polls (bounded by `limit`) until `cond` holds for the agent's status.
async fn status_until(config: &str, limit: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let s = status(config).await;
        if cond(&s) {
            return s;
        }
        assert!(t0.elapsed() < limit, "status never got there: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_changed_console_certificate_is_reported_and_re_pinned_on_the_pi() {
    let mut stack = Stack::builder()
        .agent_extra("console_check_interval = \"200ms\"")
        .start()
        .await
        .unwrap();
    let (agent, relay) = (
        stack.agent_config.to_str().unwrap().to_string(),
        stack.relay_config.to_str().unwrap().to_string(),
    );
    let api = stack.api();
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    let old = stack.console.fingerprint().to_string();

    // The console comes back on the same address with a new certificate.
    let mut again = stack.console.restart_options();
    again.identity = None;
    stack.console.stop().await;
    stack.console = RunningConsole::start(again).await.unwrap();
    let new = stack.console.fingerprint().to_string();
    assert_ne!(old, new);
    let r = api.get(DOORS).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["code"], "CODE_KEYWAY_CONSOLE_CERTIFICATE");

    // Said within 30 s (here a few checks), with both fingerprints.
    let changed = |s: &Value| {
        s["console_problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("certificate changed"))
    };
    let s = status_until(&agent, Duration::from_secs(30), changed).await;
    let problem = s["console_problem"].as_str().unwrap();
    assert!(problem.contains(&old) && problem.contains(&new), "{problem}");
    assert_eq!(s["console_ok"], false);
    let human = cli("keyway-agent", &["status", "--config", &agent]).await.unwrap();
    assert!(human.stdout.contains("CERTIFICATE CHANGED"), "{}", human.stdout);
    let t0 = Instant::now();
    let sites = loop {
        let out = cli("keyway-relay", &["site", "list", "--json", "--config", &relay])
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        if v[0]["console_problem"].as_str().is_some_and(|p| p.contains(&new)) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "site list never said it: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sites[0]["console_ok"], false);

    // On the Pi: a wrong fingerprint, or none without a terminal, pins nothing.
    let wrong = "ab".repeat(32);
    let out = cli(
        "keyway-agent",
        &["console", "pin", "--config", &agent, "--fingerprint", &wrong],
    )
    .await
    .unwrap();
    assert_eq!(out.code, 18, "{}", out.stderr);
    let out = cli("keyway-agent", &["console", "pin", "--config", &agent])
        .await
        .unwrap();
    assert_eq!(out.code, 20, "{}", out.stderr);
    assert!(out.stderr.contains(&new), "names what to confirm: {}", out.stderr);
    let out = cli(
        "keyway-agent",
        &["console", "pin", "--config", &agent, "--fingerprint", &new],
    )
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("no restart"), "{}", out.stdout);

    // The running agent trusts it from its next check: requests and status recover.
    status_until(&agent, Duration::from_secs(30), |s| s["console_ok"] == true).await;
    assert_eq!(api.get(DOORS).await.unwrap().status, StatusCode::OK);
    let mut l = stack.listen_events().await.unwrap();
    assert!(
        l.next_text(Duration::from_secs(10)).await.is_ok(),
        "the event hub follows the new pin"
    );
    let out = cli("keyway-agent", &["console", "pin", "--config", &agent])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    stack.shutdown().await.unwrap();
}
