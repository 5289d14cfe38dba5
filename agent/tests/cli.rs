//! The `keyway-agent` binary's command line: help, version, config errors.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyway-agent"))
}

#[test]
fn version_and_help_explain_themselves() {
    let out = agent().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = agent().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("Reconnects"), "{help}");
}

#[test]
fn config_without_a_console_pin_is_refused() {
    let dir = std::env::temp_dir().join(format!("kw-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        "relay = \"relay.example.com:443\"\nrelay_ca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\nconsole_url = \"https://192.0.2.1:12445\"\n",
    )
    .unwrap();
    let out = agent()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("console_fingerprint: missing"), "{err}");

    let out = agent()
        .args(["run", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    std::fs::remove_dir_all(dir).unwrap();
}
