//! The `keyway-relay` binary's command line: help, version, config errors.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyway-relay"))
}

#[test]
fn version_and_help_explain_themselves() {
    let out = relay().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = relay().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("SIGTERM"), "{help}");
}

#[test]
fn bad_config_exits_64_naming_the_problem() {
    let out = relay()
        .args(["serve", "--config", "/nonexistent/relay.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not read /nonexistent/relay.toml"));

    let dir = std::env::temp_dir().join(format!("kw-relay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("relay.toml");
    std::fs::write(&cfg, "domain = \"x.test\"\nhttps_cert = \"a\"\nhttps_key = \"b\"\ntunnel_ca = \"c\"\ntunnel_cert = \"d\"\ntunnel_key = \"e\"\ntunnel_ca_key = \"f\"\ndefault_site = \"Bad Name\"\n").unwrap();
    let out = relay()
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default_site") && err.contains("a site name is"), "{err}");

    // Valid config, missing certificate files: a clear error, not a panic.
    std::fs::write(&cfg, "domain = \"x.test\"\nhttps_listen = \"127.0.0.1:0\"\nquic_listen = \"127.0.0.1:0\"\nhttps_cert = \"a.pem\"\nhttps_key = \"b\"\ntunnel_ca = \"c\"\ntunnel_cert = \"d\"\ntunnel_key = \"e\"\ntunnel_ca_key = \"f\"\n").unwrap();
    let out = relay()
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
