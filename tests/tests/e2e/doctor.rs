//! `keyway-agent doctor`: one line per check and a fix for each failure.

use keyway_tests::procs::cli;
use keyway_tests::stack::Stack;

#[tokio::test]
async fn a_healthy_agent_passes_and_a_dead_console_is_named_with_its_fix() {
    let stack = Stack::start().await.unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        !out.stdout.contains("FAIL") && !out.stdout.contains("WARN"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ok   relay"), "{}", out.stdout);
    assert!(out.stdout.contains("ok   console token accepted"), "{}", out.stdout);

    // A console token the console no longer accepts is named, with its fix.
    let token_file = keyway_agent::AgentConfig::load(&stack.agent_config)
        .unwrap()
        .console_token_path();
    keyway_agent::console_token::store(&token_file, "revoked-token").unwrap();
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("FAIL the console refuses the stored console token (HTTP 401"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("revoked-token"), "the token is not printed");
    std::fs::remove_file(&token_file).unwrap();
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("WARN no console token"), "{}", out.stdout);

    stack.console.stop().await;
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 1, "{}", out.stdout);
    let line = out
        .stdout
        .lines()
        .position(|l| l.starts_with("FAIL console"))
        .expect(&out.stdout);
    assert!(
        out.stdout.lines().nth(line + 1).unwrap().contains("fix:"),
        "{}",
        out.stdout
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_config_fails_with_what_to_do() {
    let out = cli(
        "keyway-agent",
        &["doctor", "--config", "/nonexistent/keyway/agent.toml"],
    )
    .await
    .unwrap();
    assert_eq!(out.code, 1);
    assert!(out.stdout.starts_with("FAIL config"), "{}", out.stdout);
    assert!(out.stdout.contains("keyway-agent pair"), "{}", out.stdout);
}

#[tokio::test]
async fn an_unreachable_relay_is_named_with_its_fix() {
    let stack = Stack::builder().transport("auto").start().await.unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    // The relay goes away (its ports are closed, UDP and TCP).
    let stack = {
        let mut s = stack;
        s.stop_agent().await.unwrap();
        s.stop_relay().await.unwrap();
        s
    };
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    assert_eq!(out.code, 1, "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL relay") && l.contains("unreachable over UDP"))
        .expect(&out.stdout);
    assert!(
        lines[at + 1].contains("fix:") && lines[at + 1].contains("relay address"),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL relay") && l.contains("over TLS/TCP")),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ok   console")),
        "the console is still fine: {}",
        out.stdout
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_clock_is_named_with_its_fix() {
    let stack = Stack::start().await.unwrap();
    let config = stack.agent_config.to_str().unwrap().to_string();
    // This machine's clock three hours fast, as on a Pi whose NTP never
    // answered (libfaketime, from Debian's faketime; scripts/test installs it).
    let out = tokio::process::Command::new("faketime")
        .args(["-f", "+3h"])
        .arg(keyway_tests::workspace_bin("keyway-agent"))
        .args(["doctor", "--config", &config])
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .await
        .expect("faketime is installed (apt-get install faketime)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .position(|l| l.starts_with("FAIL this machine's clock is 3 h ahead of the relay's"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        stdout
            .lines()
            .nth(line + 1)
            .unwrap()
            .contains("timedatectl set-ntp true"),
        "{stdout}"
    );
    // The same agent with the right time passes the clock check.
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    assert!(
        out.stdout.contains("ok   clock agrees with the relay's"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ok   agent certificate valid for"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ok   relay 127.0.0.1:"), "{}", out.stdout);
    // Asking the relay's time did not take the running agent's tunnel.
    let doors = stack.api().get("/api/v1/developer/doors").await.unwrap();
    assert_eq!(doors.status, http::StatusCode::OK);
    stack.shutdown().await.unwrap();
}
