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
