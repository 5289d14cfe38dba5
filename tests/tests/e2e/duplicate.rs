//! Two agents with one identity (a cloned SD card, an old Pi left running):
//! they take the site from each other, and the relay's `site list`, the
//! agent's `status` and `doctor` say so, with the addresses, instead of a
//! warning in a log nobody reads.

use std::time::{Duration, Instant};

use http::StatusCode;
use keyway_tests::client::Api;
use keyway_tests::console::{ConsoleOptions, RunningConsole};
use keyway_tests::procs::{cli, BinaryStack, Proc};
use keyway_tests::stack::{empty, https_client, DOMAIN, SITE, TOKEN};

/// Copies the agent's state directory, as `dd` of its SD card would.
fn clone_agent(from: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        // The agent is running: a temporary file of an atomic write can be
        // renamed away between the listing and the copy. What is gone was
        // never part of the state.
        match std::fs::copy(entry.path(), to.join(entry.file_name())) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("copying {}: {e}", entry.path().display()),
        }
    }
    let config = to.join("agent.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(from.to_str().unwrap(), to.to_str().unwrap())).unwrap();
    config
}

/// Polls `cli(bin, args)` until its stdout contains `needle` (bounded).
async fn until_says(bin: &str, args: &[&str], needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let out = cli(bin, args).await.unwrap();
        if out.stdout.contains(needle) {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{bin} {args:?} never said {needle:?}: {}",
            out.stdout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_identity_are_named_with_both_addresses() {
    let console = RunningConsole::start(ConsoleOptions::new(TOKEN)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bins = BinaryStack::start(dir.path(), &console.url).await.unwrap();
    let relay_config = bins.relay_config.to_str().unwrap().to_string();
    let original = bins.agent_config.to_str().unwrap().to_string();
    let agent_dir = bins.agent_config.parent().unwrap().to_path_buf();
    let clone = clone_agent(&agent_dir, &dir.path().join("clone"));
    let clone = clone.to_str().unwrap().to_string();

    // One agent: nothing to report.
    let list = cli("keyway-relay", &["site", "list", "--config", &relay_config])
        .await
        .unwrap();
    assert!(!list.stdout.contains("DUPLICATE"), "{}", list.stdout);

    let second = Proc::spawn("keyway-agent", &["run", "--config", &clone]).unwrap();
    let list = until_says(
        "keyway-relay",
        &["site", "list", "--config", &relay_config],
        &format!("{SITE}: DUPLICATE: two agents with one identity, at 127.0.0.1:"),
    )
    .await;
    let line = list.lines().find(|l| l.contains("DUPLICATE")).unwrap();
    assert_eq!(line.matches("127.0.0.1:").count(), 2, "both addresses: {line}");
    assert!(line.contains("stop one"), "{line}");
    let json = cli("keyway-relay", &["site", "list", "--config", &relay_config, "--json"])
        .await
        .unwrap();
    assert!(json.stdout.contains("\"duplicate\""), "{}", json.stdout);

    // Each agent hears, from the relay, who took the site; the one taken
    // from twice says what is going on, in `status` and in `doctor`.
    let (a, b) = (["status", "--config", &original], ["status", "--config", &clone]);
    let (status, which) = tokio::select! {
        s = until_says("keyway-agent", &a, "DUPLICATE: another agent") => (s, &original),
        s = until_says("keyway-agent", &b, "DUPLICATE: another agent") => (s, &clone),
    };
    eprintln!("site list: {line}\nstatus: {status}");
    assert!(status.contains("stop one of them"), "{status}");
    let doctor = cli("keyway-agent", &["doctor", "--config", which]).await.unwrap();
    assert!(
        doctor
            .stdout
            .contains("FAIL the relay keeps giving this site to another agent"),
        "{}",
        doctor.stdout
    );

    // Requests still get answers from one agent or the other meanwhile.
    let api = Api::with_client(
        https_client(&bins.https_ca_der),
        &format!("https://{}", bins.addr),
        TOKEN,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = api
            .request(http::Method::GET, "/api/v1/developer/doors")
            .header("host", format!("{SITE}.{DOMAIN}"))
            .body(empty())
            .unwrap();
        let r = api.send(req).await.unwrap();
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer while two agents flap: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
    bins.kill_agent().await.unwrap();
}
