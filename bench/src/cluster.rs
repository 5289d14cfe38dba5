//! `keyway-bench cluster`: three relay nodes on one PostgreSQL (started by
//! `bench/cluster`), 10,000 sites registered, 1,000 idle agents spread over
//! the nodes, and one real agent on node a. Measures each node's resident
//! memory under that load, and a small GET through the node holding the
//! agent's link against one through a node that forwards it, in the same
//! run, interleaved round by round so drift touches both alike.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::client::{exchange, Path, PathSpec};
use crate::stats::Latency;

/// What `bench/cluster` set up.
#[derive(Debug, Deserialize)]
pub struct ClusterTargets {
    /// The console token.
    pub token: String,
    /// Node a's relay.toml (the registry and CA all nodes share).
    pub relay_config: PathBuf,
    /// The three nodes, a first (it holds the real agent's link).
    pub nodes: Vec<Node>,
    /// The relay's HTTPS CA.
    pub ca: PathBuf,
    /// Sites registered in all.
    pub sites: usize,
    /// Idle agents connected in all.
    pub agents: usize,
}

/// One relay node.
#[derive(Debug, Deserialize)]
pub struct Node {
    /// Its `[cluster] node` name.
    pub name: String,
    /// HTTPS and QUIC (one port).
    pub addr: std::net::SocketAddr,
    /// Its process.
    pub pid: u32,
}

const DOORS: &str = "/api/v1/developer/doors";

/// Runs the cluster measurement; returns the results document.
pub async fn run(t: &ClusterTargets, rounds: usize, per_round: usize) -> anyhow::Result<serde_json::Value> {
    let cfg = keyway_relay::RelayConfig::load(&t.relay_config)?;

    // Sites without an agent, straight into the registry (pairing ten
    // thousand would measure PBKDF2).
    let plain = t.sites.saturating_sub(t.agents + 1);
    eprintln!("bench: registering {plain} sites…");
    let registry = keyway_relay::Registry::open_at(&cfg.registry).await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        for i in 0..plain {
            registry.blocking().add_site(&format!("quiet-{i}"), now)?;
        }
        Ok(())
    })
    .await??;

    eprintln!("bench: {} idle agents over {} nodes…", t.agents, t.nodes.len());
    let endpoint = crate::swarm::endpoint()?;
    let mut held = Vec::new();
    let per_node = t.agents.div_ceil(t.nodes.len());
    for (k, node) in t.nodes.iter().enumerate() {
        let range = (k * per_node)..((k + 1) * per_node).min(t.agents);
        held.extend(crate::swarm::connect(&cfg, &endpoint, node.addr, "swarm-", range).await?);
    }
    // Heartbeats carry the links; idle connections settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss: Vec<(String, u64)> = t
        .nodes
        .iter()
        .map(|n| (n.name.clone(), crate::procs::rss_bytes(n.pid).unwrap_or(0)))
        .collect();
    for (name, bytes) in &rss {
        eprintln!("bench: node {name}: {:.1} MB resident", *bytes as f64 / 1e6);
    }

    // Holding (a) against forwarding (b), interleaved.
    let path = |node: &Node, name: &str| {
        Path::new(
            PathSpec {
                name: name.into(),
                addr: node.addr,
                host: format!("hq.{}", cfg.domain),
                sni: Some(format!("hq.{}", cfg.domain)),
                trust: crate::client::Trust::Ca(t.ca.clone()),
                pids: Default::default(),
            },
            &t.token,
        )
    };
    let holding = path(&t.nodes[0], "holding")?;
    let forwarding = path(&t.nodes[1], "forwarding")?;
    let (mut a, mut b) = (holding.connect(false).await?, forwarding.connect(false).await?);
    for _ in 0..50 {
        exchange(&mut a, holding.get(DOORS)).await?;
        exchange(&mut b, forwarding.get(DOORS)).await?;
    }
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..per_round {
            on_a.push(exchange(&mut a, holding.get(DOORS)).await?.1);
        }
        for _ in 0..per_round {
            on_b.push(exchange(&mut b, forwarding.get(DOORS)).await?.1);
        }
    }
    let (la, lb) = (Latency::of(&mut on_a), Latency::of(&mut on_b));
    let ratio = lb.p50_ms / la.p50_ms;
    eprintln!(
        "bench: GET doors, concurrency 1: holding node p50 {:.3} ms, forwarding node p50 {:.3} ms: {ratio:.2}×",
        la.p50_ms, lb.p50_ms
    );
    drop(held);
    endpoint.close(0u32.into(), b"bench over");
    Ok(serde_json::json!({
        "sites": t.sites,
        "idle_agents": t.agents,
        "nodes": t.nodes.len(),
        "rss_bytes": rss.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "get_c1": {"holding": la, "forwarding": lb, "p50_ratio_forwarding_to_holding": ratio},
    }))
}
