//! No token, pairing code or private key in any log line: the real
//! binaries at debug level through pairing, both kinds of token, a wrong
//! token, the event stream, a revocation, and the audit log.

use std::time::Duration;

use http::StatusCode;
use keyway_tests::client::{Api, EventListener};
use keyway_tests::console::{ConsoleOptions, RunningConsole, HELLO_FRAME};
use keyway_tests::procs::{cli, cli_stdin, BinaryStack};
use keyway_tests::stack::{https_client, DOMAIN, SITE, TOKEN};

/// Base64 lines of every PEM private key under `dir`.
fn key_material(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for entry in walk(dir) {
        let Ok(text) = std::fs::read_to_string(&entry) else {
            continue;
        };
        if text.contains("PRIVATE KEY-----") {
            out.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                    .map(str::to_string),
            );
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_code_or_key_appears_in_any_log_line() {
    // This test runs in its own process (nextest): the binaries log at debug.
    std::env::set_var("KEYWAY_TEST_BIN_LOG", "debug");
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let config = bins.agent_config.to_str().unwrap().to_string();
    let mut cli_logs = vec![];
    let out = cli_stdin("keyway-agent", &["console-token", "set", "--config", &config], TOKEN)
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    cli_logs.push(out.stderr);
    let out = cli("keyway-agent", &["token", "add", "coworks", "--config", &config])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    cli_logs.push(out.stderr);
    let token = out.stdout.lines().next().unwrap().to_string();
    bins.kill_agent().await.unwrap();
    bins.spawn_agent().unwrap();
    bins.agent.wait_for_log("tunnel up").await.unwrap();
    bins.agent
        .wait_for_log("connected to the console's event stream")
        .await
        .unwrap();

    let base = format!("https://{}", bins.addr);
    let host = format!("{SITE}.{DOMAIN}");
    let client = https_client(&bins.https_ca_der);
    let call = |t: &str| {
        let api = Api::with_client(client.clone(), &base, t);
        let host = host.clone();
        async move {
            let req = api
                .request(http::Method::GET, "/api/v1/developer/doors?token=query-secret-1")
                .header("host", host)
                .body(keyway_tests::stack::empty())
                .unwrap();
            api.send(req).await.unwrap().status
        }
    };
    assert_eq!(call(&token).await, StatusCode::OK);
    assert_eq!(call(TOKEN).await, StatusCode::OK);
    assert_eq!(call("wrong-token-value-42").await, StatusCode::UNAUTHORIZED);
    let mut l = EventListener::connect(bins.addr, &host, &bins.https_ca_der, &token)
        .await
        .unwrap();
    assert_eq!(l.next_text(Duration::from_secs(10)).await.unwrap(), HELLO_FRAME);
    l.close().await;
    let out = cli("keyway-agent", &["token", "revoke", "coworks", "--config", &config])
        .await
        .unwrap();
    cli_logs.push(out.stderr);
    assert_eq!(call(&token).await, StatusCode::UNAUTHORIZED);
    let out = cli("keyway-agent", &["doctor", "--config", &config]).await.unwrap();
    cli_logs.push(out.stdout);
    cli_logs.push(out.stderr);

    let audit = std::fs::read_to_string(
        keyway_agent::AgentConfig::load(&bins.agent_config)
            .unwrap()
            .state_dir()
            .join("audit.log"),
    )
    .unwrap_or_default();
    let mut lines: Vec<String> = bins.relay.log();
    lines.extend(bins.agent.log());
    lines.extend(cli_logs.iter().flat_map(|l| l.lines().map(str::to_string)));
    lines.extend(audit.lines().map(str::to_string));
    assert!(lines.len() > 20, "the scan has something to scan: {}", lines.len());
    assert!(lines.iter().any(|l| l.contains("DEBUG")), "debug logs were on");

    let code = bins.pairing_code.clone();
    let mut secrets = vec![
        TOKEN.to_string(),
        token.clone(),
        token[3..].to_string(),
        "query-secret-1".to_string(),
        "wrong-token-value-42".to_string(),
        code.clone(),
        code.replace('-', ""),
    ];
    secrets.extend(key_material(dir.path()));
    assert!(secrets.len() > 8, "private keys found to look for");
    for line in &lines {
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "a secret in a log line: {line}");
        }
    }
}
