//! Every way `keyway-agent pair` fails exits with the number the README
//! gives it, read from the README itself, so neither can drift.

use std::time::Duration;

use keyway_agent::pair::PairError;
use keyway_certs::Fingerprint;
use keyway_proto::pair::PairErrorKind;
use keyway_relay::{admin, RelayConfig};
use keyway_tests::procs::cli;
use keyway_tests::readme::pair_exit_codes;
use keyway_tests::stack::{free_port, Stack, SITE};

/// A fresh code for the site, valid for `ttl`.
fn code(stack: &Stack, ttl: Duration) -> String {
    let mut cfg = RelayConfig::load(&stack.relay_config).unwrap();
    cfg.pairing_code_ttl = ttl;
    keyway_tests::stack::off_runtime(|| admin::new_code(&cfg, SITE))
        .unwrap()
        .code
}

/// Same code, secret part changed.
fn wrong(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    let last = c.len() - 1;
    c[last] = if c[last] == '7' { '8' } else { '7' };
    c.into_iter().collect()
}

struct Pairing<'a> {
    stack: &'a Stack,
    dir: tempfile::TempDir,
}

impl Pairing<'_> {
    /// `pair CODE` with valid arguments for this stack.
    fn args(&self, code: &str) -> Vec<String> {
        let dir = self.dir.path();
        [
            "pair",
            code,
            "--relay",
            &self.stack.relay_addr.to_string(),
            "--relay-ca",
            self.stack.https_ca.to_str().unwrap(),
            "--console",
            &self.stack.console.url,
            "--trust-console",
            "--config",
            dir.join("agent.toml").to_str().unwrap(),
            "--state-dir",
            dir.to_str().unwrap(),
            "--force",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `keyway-agent pair CODE` with valid arguments, `change` applied; its exit code.
    async fn exit(&self, code: &str, change: impl FnOnce(&mut Vec<String>)) -> i32 {
        let mut args = self.args(code);
        change(&mut args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli("keyway-agent", &refs).await.unwrap();
        eprintln!("pair {:?} → {}: {}", &args[2..], out.code, out.stderr.trim());
        out.code
    }
}

fn set(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).expect("flag present");
    args[i + 1] = value.to_string();
}

fn drop_flag(args: &mut Vec<String>, flag: &str) {
    args.retain(|a| a != flag);
}

#[tokio::test]
async fn every_pairing_failure_exits_with_the_number_the_readme_gives_it() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let p = Pairing {
        stack: &stack,
        dir: tempfile::tempdir().unwrap(),
    };
    let readme = pair_exit_codes();
    let n = |words: &str| {
        *readme
            .get(words)
            .unwrap_or_else(|| panic!("README has no {words:?}: {readme:?}"))
    };
    let minute = Duration::from_secs(60);
    let closed = format!("127.0.0.1:{}", free_port("127.0.0.1".parse().unwrap()).unwrap());
    let tunnel_ca = keyway_agent::AgentConfig::load(&stack.agent_config).unwrap().relay_ca;

    assert_eq!(p.exit("not a code", |_| {}).await, n("not a code"));
    let out = cli(
        "keyway-agent",
        &["pair", "not a code", "--relay", "x", "--console", "https://x"],
    )
    .await
    .unwrap();
    assert!(
        out.stderr
            .starts_with("keyway-agent: \"not a code\" is not a pairing code"),
        "says what is wrong, nothing else: {}",
        out.stderr
    );
    assert_eq!(p.exit("ZZZZ-ZZZZ-ZZ", |_| {}).await, n("unknown code"));
    let c = code(&stack, minute);
    assert_eq!(p.exit(&c, |a| set(a, "--relay", &closed)).await, n("relay unreachable"));
    // An IPv6 relay is named as one ([::1]:port, not ::1:port).
    let v6 = format!("[::1]:{}", free_port("::1".parse().unwrap()).unwrap());
    let dir = p.dir.path().join("v6");
    let out = cli(
        "keyway-agent",
        &[
            "pair",
            &c,
            "--relay",
            &v6,
            "--relay-ca",
            stack.https_ca.to_str().unwrap(),
            "--console",
            &stack.console.url,
            "--trust-console",
            "--config",
            dir.join("agent.toml").to_str().unwrap(),
            "--state-dir",
            dir.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.code, n("relay unreachable"), "{}", out.stderr);
    assert!(out.stderr.contains(&v6), "the address as typed: {}", out.stderr);
    let ca = tunnel_ca.to_str().unwrap();
    assert_eq!(
        p.exit(&c, |a| set(a, "--relay-ca", ca)).await,
        n("relay certificate not trusted")
    );
    let console = format!("https://{closed}");
    assert_eq!(
        p.exit(&c, |a| set(a, "--console", &console)).await,
        n("console unreachable")
    );
    let other = Fingerprint([0xab; 32]).to_string();
    let mismatch = p
        .exit(&c, |a| {
            drop_flag(a, "--trust-console");
            a.extend(["--console-fingerprint".to_string(), other.clone()]);
        })
        .await;
    assert_eq!(mismatch, n("console fingerprint mismatch"));
    let unpinned = p.exit(&c, |a| drop_flag(a, "--trust-console")).await;
    assert_eq!(unpinned, n("console not pinned"), "no terminal to ask on");
    std::fs::write(p.dir.path().join("agent.toml"), "# an earlier pairing\n").unwrap();
    assert_eq!(p.exit(&c, |a| drop_flag(a, "--force")).await, n("already paired"));
    assert_eq!(p.exit(&wrong(&c), |_| {}).await, n("proof failed"));
    // Four more wrong tries burn `c` (five in all): even the right code is refused.
    for _ in 0..4 {
        assert_eq!(p.exit(&wrong(&c), |_| {}).await, n("proof failed"));
    }
    assert_eq!(p.exit(&c, |_| {}).await, n("burned"));
    // (A new code for the site retires the pending one: these come last.)
    assert_eq!(p.exit(&code(&stack, Duration::ZERO), |_| {}).await, n("expired"));
    let c = code(&stack, minute);
    assert_eq!(p.exit(&c, |_| {}).await, 0, "a valid code pairs");
    assert_eq!(p.exit(&c, |_| {}).await, n("already used"));
    stack.shutdown().await.unwrap();
}

/// A Pi with no battery-backed clock, before NTP answers, believes it is
/// some other year: the relay's certificate is then "not yet valid" or
/// "expired", and the fix to print is the clock, not `--relay-ca`.
#[tokio::test]
async fn a_pi_with_the_wrong_year_is_told_to_fix_its_clock_not_its_ca() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let p = Pairing {
        stack: &stack,
        dir: tempfile::tempdir().unwrap(),
    };
    let readme = pair_exit_codes();
    let c = code(&stack, Duration::from_secs(60));
    for fake in ["@2001-01-01 00:00:00", "+20y"] {
        let out = tokio::process::Command::new("faketime")
            .args(["-f", fake])
            .arg(keyway_tests::workspace_bin("keyway-agent"))
            .args(p.args(&c))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .await
            .expect("faketime is installed (apt-get install faketime)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(readme["clock wrong"]), "{fake}: {stderr}");
        assert!(stderr.contains("timedatectl set-ntp true"), "{fake}: {stderr}");
        assert!(!stderr.contains("--relay-ca"), "{fake}: not the CA's fault: {stderr}");
        assert!(!p.dir.path().join("agent.toml").exists(), "nothing written");
    }
    // The code was never spent: with the right time it pairs.
    assert_eq!(p.exit(&c, |_| {}).await, 0);
    stack.shutdown().await.unwrap();
}

#[test]
fn each_pairing_error_has_the_readmes_number() {
    let fp = Fingerprint([0; 32]);
    let refused = |kind| PairError::Refused {
        kind,
        message: String::new(),
    };
    let documented = [
        ("unknown code", refused(PairErrorKind::WrongCode)),
        ("expired", refused(PairErrorKind::Expired)),
        ("already used", refused(PairErrorKind::Used)),
        ("burned", refused(PairErrorKind::Burned)),
        ("proof failed", PairError::ProofFailed),
        ("proof failed", refused(PairErrorKind::ProofFailed)),
        ("relay unreachable", PairError::RelayUnreachable(String::new())),
        (
            "relay certificate not trusted",
            PairError::RelayUntrusted(String::new()),
        ),
        ("console unreachable", PairError::ConsoleUnreachable(String::new())),
        (
            "console fingerprint mismatch",
            PairError::ConsoleMismatch { expected: fp, seen: fp },
        ),
        ("already paired", PairError::AlreadyPaired(std::path::PathBuf::new())),
        ("console not pinned", PairError::NotPinned(String::new())),
        ("relay speaks another protocol version", refused(PairErrorKind::Version)),
        ("not a code", PairError::BadCode(String::new())),
        ("clock wrong", PairError::ClockWrong(String::new())),
    ];
    let readme = pair_exit_codes();
    for (words, err) in &documented {
        assert_eq!(
            readme.get(*words),
            Some(&i32::from(err.exit_code())),
            "{words:?}: {readme:?}"
        );
    }
    assert_eq!(
        readme.len(),
        documented.len() - 1,
        "every documented code is checked: {readme:?}"
    );
}
