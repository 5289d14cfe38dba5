//! `keyway-agent status`: the running agent answers through its socket with
//! live figures; a stopped agent is reported from its last written state.

use http::StatusCode;
use keyway_tests::procs::cli;
use keyway_tests::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_live_figures_through_the_socket_then_the_stop() {
    let mut stack = Stack::start().await.unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    let api = stack.api();
    for _ in 0..5 {
        assert_eq!(api.get("/api/v1/developer/doors").await.unwrap().status, StatusCode::OK);
    }

    let out = cli("keyway-agent", &["status", "--json", "--config", &config])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(v["state"], "online", "{v}");
    assert_eq!(v["site"], keyway_tests::stack::SITE, "{v}");
    assert!(v["rtt_ms"].as_f64().is_some(), "{v}");
    assert_eq!(v["console_ok"], true, "{v}");
    assert!(v["requests_last_hour"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(v["errors_last_hour"], 0, "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(v["cert_not_after"].as_i64().unwrap() > now, "{v}");

    // Anyone in the socket's group may ask: the socket is 0660.
    let sock =
        keyway_agent::status_socket::path_for(&keyway_agent::AgentConfig::load(&stack.agent_config).unwrap().key);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);

    let out = cli("keyway-agent", &["status", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stdout);
    for want in [
        "Online for",
        "Round trip to the relay:",
        "Console: reachable",
        "Last hour: ",
        "Agent certificate: valid for",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in {}", out.stdout);
    }

    stack.stop_agent().await.unwrap();
    assert!(!sock.exists(), "the socket goes with the agent");
    let out = cli("keyway-agent", &["status", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(out.stdout.contains("not running"), "{}", out.stdout);
    stack.shutdown().await.unwrap();
}

/// Runs `bin args` with its standard output a pipe nobody reads any more
/// (as `| head -1` leaves it once head has its line): exit code and stderr.
fn into_closed_pipe(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    // A socket pair with one end closed: a write gets EPIPE, as into a
    // pipe whose reader exited (std::io::pipe is newer than our MSRV).
    let (writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(reader);
    let writer = std::os::fd::OwnedFd::from(writer);
    let out = std::process::Command::new(keyway_tests::workspace_bin(bin))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly_not_in_a_panic() {
    let stack = Stack::start().await.unwrap();
    let (agent, relay) = (
        stack.agent_config.to_str().unwrap(),
        stack.relay_config.to_str().unwrap(),
    );
    for (bin, args) in [
        ("keyway-relay", vec!["site", "list", "--config", relay]),
        ("keyway-agent", vec!["status", "--config", agent]),
        ("keyway-agent", vec!["doctor", "--config", agent]),
    ] {
        let (code, stderr) = into_closed_pipe(bin, &args);
        assert!(!stderr.contains("panicked"), "{bin} {args:?}: {stderr}");
        assert_ne!(code, Some(101), "{bin} {args:?} panicked: {stderr}");
    }
    stack.shutdown().await.unwrap();
}
