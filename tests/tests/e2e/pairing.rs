//! Pairing: one code enrols one agent, and nothing else gets anything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use keyway_agent::pair::{pair, ConsolePin, PairError, PairOptions};
use keyway_certs::PrivateCa;
use keyway_proto::pair::PairErrorKind;
use keyway_relay::{admin, RelayConfig};
use keyway_tests::client::Api;
use keyway_tests::console::{ConsoleOptions, RunningConsole};
use keyway_tests::procs::{cli, BinaryStack};
use keyway_tests::stack::{https_client, Stack, DOMAIN, SITE, TOKEN};

fn new_code(stack: &Stack) -> String {
    let cfg = RelayConfig::load(&stack.relay_config).unwrap();
    keyway_tests::stack::off_runtime(|| admin::new_code(&cfg, SITE))
        .unwrap()
        .code
}

fn options(stack: &Stack, code: &str, dir: &std::path::Path) -> PairOptions {
    PairOptions {
        code: code.into(),
        relay: stack.relay_addr.to_string(),
        relay_ca: Some(stack.https_ca.clone()),
        console_url: stack.console.url.clone(),
        console: ConsolePin::TrustFirstUse,
        config: dir.join("agent.toml"),
        state_dir: dir.to_path_buf(),
        force: false,
    }
}

/// Same code, secret part changed.
fn wrong(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    let last = c.len() - 1;
    c[last] = if c[last] == '7' { '8' } else { '7' };
    c.into_iter().collect()
}

fn refused(r: Result<keyway_agent::pair::Paired, PairError>) -> PairErrorKind {
    match r {
        Err(PairError::Refused { kind, .. }) => kind,
        Err(PairError::ProofFailed) => PairErrorKind::ProofFailed,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_cli_flow_pairs_serves_refuses_reuse_and_revokes() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let base = format!("https://{}", bins.addr);
    let api = Api::with_client(https_client(&bins.https_ca_der), &base, TOKEN);
    let host = format!("{SITE}.{DOMAIN}");
    let get = || async {
        let req = api
            .request(http::Method::GET, "/api/v1/developer/doors")
            .header("host", &host)
            .body(keyway_tests::stack::empty())
            .unwrap();
        api.send(req).await.unwrap()
    };
    assert_eq!(get().await.status, StatusCode::OK, "served at https://hq.DOMAIN/");
    let health = healthz(bins.admin_addr).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains(r#""agents_online":1"#) && health.contains(r#""sites":1"#),
        "{health}"
    );

    let cfg = bins.relay_config.to_str().unwrap().to_string();
    let list = cli("keyway-relay", &["site", "list", "--config", &cfg, "--json"])
        .await
        .unwrap();
    let sites: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(sites[0]["name"], SITE);
    assert_eq!(sites[0]["paired"], true);
    assert_eq!(sites[0]["online"], true);

    // A fresh code for the same site: a wrong secret, then the right one twice.
    let code = cli("keyway-relay", &["site", "code", SITE, "--config", &cfg, "--json"])
        .await
        .unwrap();
    let code = serde_json::from_str::<serde_json::Value>(&code.stdout).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    let ca = bins.https_ca.to_str().unwrap().to_string();
    let relay = bins.addr.to_string();
    let other = dir.path().join("other");
    let other_cfg = other.join("agent.toml");
    let pair_args = |c: &str| {
        vec![
            "pair".to_string(),
            c.to_string(),
            "--relay".into(),
            relay.clone(),
            "--relay-ca".into(),
            ca.clone(),
            "--console".into(),
            console.url.clone(),
            "--trust-console".into(),
            "--config".into(),
            other_cfg.to_str().unwrap().into(),
            "--state-dir".into(),
            other.to_str().unwrap().into(),
            "--force".into(),
        ]
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli("keyway-agent", &refs).await.unwrap()
    };
    let out = run(pair_args(&wrong(&code))).await;
    assert_eq!(out.code, 14, "wrong code: {}", out.stderr);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    assert!(!out.stderr.contains(&code[..9]), "the code never appears in messages");
    let out = run(pair_args("ZZZZ-ZZZZ-ZZ")).await;
    assert_eq!(out.code, 10, "unknown code: {}", out.stderr);
    let out = run(pair_args(&code)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(pair_args(&code)).await;
    assert_eq!(out.code, 12, "reused code: {}", out.stderr);
    assert!(out.stderr.contains("already used"), "{}", out.stderr);
    let out = run(pair_args("not a code")).await;
    assert_eq!(out.code, 65, "{}", out.stderr);

    // The second pairing superseded the first agent's certificate: its tunnel
    // closes, and the new identity is the only one that may connect.
    let t0 = Instant::now();
    let mut status = get().await.status;
    while status == StatusCode::OK && t0.elapsed() < Duration::from_secs(5) {
        tokio::task::yield_now().await;
        status = get().await.status;
    }
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "superseded agent cut off within {:?}",
        t0.elapsed()
    );

    let mut second =
        keyway_tests::procs::Proc::spawn("keyway-agent", &["run", "--config", other_cfg.to_str().unwrap()]).unwrap();
    second.wait_for_log("tunnel up").await.unwrap();
    assert_eq!(get().await.status, StatusCode::OK);

    let out = cli("keyway-relay", &["site", "revoke", SITE, "--config", &cfg])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t0 = Instant::now();
    let mut status = get().await.status;
    while status == StatusCode::OK && t0.elapsed() < Duration::from_secs(5) {
        tokio::task::yield_now().await;
        status = get().await.status;
    }
    let took = t0.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The relay re-reads the registry every 500 ms: the README says within 1 s.
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    eprintln!("revoke → 503 in {took:?}");

    let out = cli("keyway-relay", &["site", "revoke", "nope", "--config", &cfg])
        .await
        .unwrap();
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = cli("keyway-relay", &["site", "add", "Bad_Name", "--config", &cfg])
        .await
        .unwrap();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("a site name is"), "{}", out.stderr);
    console.stop().await;
}

#[tokio::test]
async fn a_code_burns_after_five_tries() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let code = new_code(&stack);
    for _ in 0..5 {
        assert_eq!(
            refused(pair(&options(&stack, &wrong(&code), dir.path())).await),
            PairErrorKind::ProofFailed
        );
    }
    assert_eq!(
        refused(pair(&options(&stack, &code, dir.path())).await),
        PairErrorKind::Burned,
        "even the right code"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_attempts_with_one_code_have_exactly_one_winner() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let code = new_code(&stack);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let attempts = dirs.iter().map(|d| pair_owned(options(&stack, &code, d.path())));
    let results = futures_util::future::join_all(attempts).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_eq!(refused(r), PairErrorKind::Used);
    }
    stack.shutdown().await.unwrap();
}

async fn pair_owned(o: PairOptions) -> Result<keyway_agent::pair::Paired, PairError> {
    pair(&o).await
}

#[tokio::test]
async fn pairing_refuses_an_existing_identity_and_a_mismatched_console() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let code = new_code(&stack);
    let mut o = options(&stack, &code, dir.path());
    o.config = stack.agent_config.clone();
    assert!(matches!(pair(&o).await, Err(PairError::AlreadyPaired(_))));

    let mut o = options(&stack, &code, dir.path());
    o.console = ConsolePin::Expect(keyway_certs::Fingerprint([9; 32]));
    match pair(&o).await {
        Err(e @ PairError::ConsoleMismatch { .. }) => {
            assert!(e.to_string().contains(&stack.console.fingerprint().to_string()))
        }
        other => panic!("{other:?}"),
    }
    let mut o = options(&stack, &code, dir.path());
    o.console_url = "https://127.0.0.1:9".into();
    assert!(matches!(pair(&o).await, Err(PairError::ConsoleUnreachable(_))));
    // None of those spent the code.
    pair(&options(&stack, &code, dir.path())).await.unwrap();
    stack.shutdown().await.unwrap();
}

/// A man in the middle with a certificate the agent trusts, relaying every
/// pairing byte between the agent and the real relay, learns nothing and
/// completes nothing: the TLS exporters on its two sides differ.
#[tokio::test]
async fn a_tls_terminating_man_in_the_middle_cannot_pair() {
    let stack = Stack::builder().without_agent().start().await.unwrap();
    let code = new_code(&stack);

    // The attacker's endpoint, with a certificate from a CA the victim trusts.
    let rogue = PrivateCa::generate("rogue").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rogue
        .issue_server(&["127.0.0.1".into()], &key, Duration::from_secs(3600))
        .unwrap();
    let chain = vec![cert.der.clone()];
    let pk = keyway_certs::files::key_from_pem("k", key.serialize_pem().as_bytes()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(keyway_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, pk)
        .unwrap();
    tls.alpn_protocols = vec![keyway_proto::ALPN_PAIR.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
    ));
    let mitm = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mitm_addr = mitm.local_addr().unwrap();

    // Upstream: the attacker pairs with the real relay as a client would.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(stack.https_ca_der.clone()).unwrap();
    let up_tls = keyway_certs::tls::pairing_client(roots).unwrap();
    let mut up = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    up.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(up_tls).unwrap(),
    )));
    let relay_addr = stack.relay_addr;
    let relayed = tokio::spawn(async move {
        let victim = mitm.accept().await.unwrap().await.unwrap();
        let (mut vs, mut vr) = victim.accept_bi().await.unwrap();
        let real = up.connect(relay_addr, "127.0.0.1").unwrap().await.unwrap();
        let (mut rs, mut rr) = real.open_bi().await.unwrap();
        let a = tokio::io::copy(&mut vr, &mut rs);
        let b = tokio::io::copy(&mut rr, &mut vs);
        let _ = tokio::time::timeout(Duration::from_secs(20), futures_util::future::join(a, b)).await;
    });

    let dir = tempfile::tempdir().unwrap();
    let rogue_ca = dir.path().join("rogue-ca.pem");
    std::fs::write(&rogue_ca, rogue.cert_pem()).unwrap();
    let mut o = options(&stack, &code, dir.path());
    o.relay = mitm_addr.to_string();
    o.relay_ca = Some(rogue_ca);
    assert_eq!(
        refused(pair(&o).await),
        PairErrorKind::ProofFailed,
        "the victim notices"
    );
    relayed.abort();
    assert!(!dir.path().join("agent.toml").exists(), "nothing was written");
    // The relay issued nothing for this attempt: the code is still unused.
    pair(&options(&stack, &code, dir.path())).await.unwrap();
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpair_tells_the_relay_and_removes_the_identity() {
    let stack = Stack::start().await.unwrap();
    let cfg = keyway_agent::AgentConfig::load(&stack.agent_config).unwrap();
    let out = cli(
        "keyway-agent",
        &["unpair", "--config", stack.agent_config.to_str().unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    for p in [&cfg.key, &cfg.cert, &stack.agent_config] {
        assert!(!p.exists(), "{} removed", p.display());
    }
    let cfg = RelayConfig::load(&stack.relay_config).unwrap();
    let sites = keyway_tests::stack::off_runtime(|| admin::list(&cfg)).unwrap();
    assert!(!sites[0].paired, "the relay revoked the certificate");
    tokio::time::timeout(Duration::from_secs(10), stack.agents.wait_until(|t| !t.is_online(SITE)))
        .await
        .expect("the tunnel closes");
    stack.assert_offline(stack.api().get("/api/v1/developer/doors").await);

    // Nothing left to unpair: a clear error, not a panic.
    let out = cli(
        "keyway-agent",
        &["unpair", "--config", stack.agent_config.to_str().unwrap()],
    )
    .await
    .unwrap();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("could not read"), "{}", out.stderr);
    stack.shutdown().await.unwrap();
}

/// `GET /healthz` on the admin listener (plain HTTP on loopback).
async fn healthz(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}
