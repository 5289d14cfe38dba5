//! ACME in a cluster: one node orders, the CA may reach any node for any
//! name (pebble's DNS sends each name to a different node), and every
//! node serves the new certificate without a restart.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use keyway_relay::registry::postgres::PgStore;
use keyway_relay::registry::SiteStore;
use keyway_relay::RelayConfig;
use keyway_tests::acme::Pebble;
use keyway_tests::postgres::TempPostgres;
use keyway_tests::stack::{free_port, off_runtime, Stack, DOMAIN, SITE};
use rustls_pki_types::CertificateDer;

use crate::certs::presented;
use crate::cluster::{cluster_section, node_ip, peer_port, start_node_at, stop_all};

/// A port number free on 127.0.0.1, .2 and .3: the CA validates every
/// name at one port, so the three nodes share its number.
fn common_port() -> u16 {
    let ips: Vec<IpAddr> = ["a", "b", "c"].into_iter().map(node_ip).collect();
    for _ in 0..50 {
        let port = free_port(ips[0]).unwrap();
        let free_everywhere = ips.iter().all(|ip| {
            std::net::TcpListener::bind((*ip, port)).is_ok() && std::net::UdpSocket::bind((*ip, port)).is_ok()
        });
        if free_everywhere {
            return port;
        }
    }
    panic!("no port free on all three loopback addresses");
}

/// The relay config with the certificate files replaced by `[acme]`.
fn with_acme(text: String, pebble: &Pebble) -> String {
    let files_gone: String = text
        .lines()
        .filter(|l| !l.starts_with("https_cert") && !l.starts_with("https_key"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "{files_gone}\n[acme]\ndirectory = {:?}\nagree_terms = true\ncontact = [\"mailto:ops@keyway.test\"]\nca_file = {:?}\n",
        pebble.directory, pebble.https_ca
    )
}

/// Polls (bounded) until `addr` presents, for `name`, a certificate from
/// pebble's root naming all of `names`; returns it.
async fn until_certified(addr: SocketAddr, name: &str, root: &CertificateDer<'static>, names: &[String]) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(leaf) = presented(addr, name, std::slice::from_ref(root)).await {
            let covered = keyway_certs::public::summarize(&leaf).unwrap().names;
            if names.iter().all(|n| covered.contains(n)) {
                return leaf;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never presented a certificate for {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_orders_any_node_answers_the_ca_and_every_node_serves_the_certificate() {
    let pg = TempPostgres::start();
    let port = common_port();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.database();
    let mut stack = Stack::builder()
        .registry_url(&url)
        .relay_port(port)
        .relay_extra(&cluster_section("a", peer_port()))
        .start()
        .await
        .unwrap();
    let pebble = Pebble::start(dir.path(), port).await.unwrap();
    let root = pebble.root_der().await.unwrap();
    let host = format!("{SITE}.{DOMAIN}");
    let (domain, annex) = (DOMAIN.to_string(), format!("annex.{DOMAIN}"));

    // Node a turns to ACME and orders the first certificate (every name
    // resolves to it so far).
    let text = std::fs::read_to_string(&stack.relay_config).unwrap();
    std::fs::write(&stack.relay_config, with_acme(text, &pebble)).unwrap();
    stack.restart_relay().await.unwrap();
    let first = until_certified(stack.relay_addr, &host, &root, &[domain.clone(), host.clone()]).await;

    // Nodes b and c (node a's config, so ACME too) start from the stored
    // certificate: no order of their own.
    let b = start_node_at(&stack, "b", SocketAddr::new(node_ip("b"), port), |t| t).await;
    let c = start_node_at(&stack, "c", SocketAddr::new(node_ip("c"), port), |t| t).await;
    for node in [&b, &c] {
        let leaf = presented(node.addr, &host, std::slice::from_ref(&root)).await.unwrap();
        assert_eq!(
            leaf, first,
            "{} serves the cluster's certificate from its start",
            node.addr
        );
    }

    // From now on the CA validates each name at a different node.
    pebble.resolve(&domain, node_ip("a")).await.unwrap();
    pebble.resolve(&host, node_ip("b")).await.unwrap();
    pebble.resolve(&annex, node_ip("c")).await.unwrap();

    // A site added through the registry: every node notices, one orders,
    // all three answer their challenge, all three serve the result.
    let cfg = RelayConfig::load(&c.config).unwrap();
    off_runtime(|| keyway_relay::admin::add_site(&cfg, "annex")).unwrap();
    let wanted = [domain.clone(), host.clone(), annex.clone()];
    let second = until_certified(stack.relay_addr, &annex, &root, &wanted).await;
    assert_ne!(second, first);
    for node in [&b, &c] {
        let leaf = until_certified(node.addr, &annex, &root, &wanted).await;
        assert_eq!(leaf, second, "{} serves the new certificate", node.addr);
    }

    // One order per change: the stored certificate is the second one.
    let store = off_runtime(|| PgStore::connect(&url)).unwrap();
    let snapshot = off_runtime(|| store.acme_snapshot(keyway_relay::registry::now())).unwrap();
    assert_eq!(snapshot.cert_version, 2, "one certificate per change, by one node");
    assert!(snapshot.challenges.is_empty(), "answers are withdrawn: {snapshot:?}");
    // Nothing of it was written to the nodes' disks.
    let state = stack.relay_config.parent().unwrap().join("acme");
    assert!(!state.join("key.pem").exists(), "the key lives in the registry only");
    off_runtime(move || drop(store));
    stop_all(stack, vec![b, c]).await;
}
