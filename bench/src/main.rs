//! `keyway-bench`: runs the benchmark workloads against every path named in
//! a targets file (written by `bench/run`, which starts the processes) and
//! writes the raw results; `report` turns results into `BENCHMARKS.md` and a
//! latency plot.

mod client;
mod cluster;
mod console;
mod docs;
mod procs;
mod report;
mod stats;
mod swarm;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use client::{Path, PathSpec};
use workloads::{Outcome, Settings};

#[derive(Parser)]
#[command(version, about = "Keyway side-by-side benchmarks (driven by bench/run)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every workload against every path of a targets file.
    Run {
        /// Targets (JSON, written by bench/run).
        #[arg(long)]
        targets: PathBuf,
        /// Where to write the raw results (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Short rounds (about a minute of load in all).
        #[arg(long)]
        quick: bool,
        /// Run only these workloads (comma-separated), e.g. for the WAN shape.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Prefix for the workload names in the results (e.g. `wan40_`).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Add to this existing results file instead of writing a new one.
        #[arg(long)]
        merge: bool,
        /// Run only these paths (comma-separated; direct always runs first).
        #[arg(long, value_delimiter = ',')]
        paths: Vec<String>,
    },
    /// The relay cluster (set up by bench/cluster): each node's memory with
    /// 10,000 sites and 1,000 idle agents, and a GET through a node that
    /// forwards against one through the node holding the agent's link.
    Cluster {
        /// Targets (JSON, written by bench/cluster).
        #[arg(long)]
        targets: PathBuf,
        /// Where to write the results (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Rounds of requests, alternating between the two nodes.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Requests per node per round.
        #[arg(long, default_value_t = 200)]
        per_round: usize,
    },
    /// The operator console (set up by bench/console): the sites page with
    /// 1,000 sites, and while 1,000 agents come online at once.
    Console {
        /// Targets (JSON, written by bench/console).
        #[arg(long)]
        targets: PathBuf,
        /// Where to write the results (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Regenerate BENCHMARKS.md and the latency plot from a results file.
    Report {
        /// Raw results (JSON).
        #[arg(long)]
        results: PathBuf,
        /// Markdown to write.
        #[arg(long)]
        markdown: PathBuf,
        /// SVG plot to write (linked from the markdown by file name).
        #[arg(long)]
        plot: PathBuf,
    },
    /// Check that BENCHMARKS.md, its plot and the README's generated
    /// blocks (`<!-- bench:NAME -->`) say what a results file says; with
    /// --write, regenerate them. Exits 1 naming the first stale line.
    Docs {
        /// Raw results (JSON).
        #[arg(long)]
        results: PathBuf,
        /// BENCHMARKS.md.
        #[arg(long, default_value = "BENCHMARKS.md")]
        markdown: PathBuf,
        /// The latency plot.
        #[arg(long)]
        plot: PathBuf,
        /// README.md.
        #[arg(long, default_value = "README.md")]
        readme: PathBuf,
        /// Rewrite what differs instead of failing.
        #[arg(long)]
        write: bool,
    },
}

/// What bench/run set up.
#[derive(Debug, Deserialize)]
struct Targets {
    token: String,
    paths: Vec<PathSpec>,
    #[serde(default)]
    swarm: Option<SwarmSpec>,
    #[serde(default)]
    machine: serde_json::Value,
    #[serde(default)]
    versions: serde_json::Value,
    #[serde(default)]
    notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SwarmSpec {
    relay_config: PathBuf,
    quic: std::net::SocketAddr,
    relay_pid: u32,
}

/// The raw results file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    /// UTC date of the run.
    pub date: String,
    /// Short rounds?
    pub quick: bool,
    /// Durations and counts.
    pub settings: serde_json::Value,
    /// The machine.
    pub machine: serde_json::Value,
    /// Versions of everything measured.
    pub versions: serde_json::Value,
    /// Path order as run (direct first).
    pub paths: Vec<String>,
    /// workload → path → outcome.
    pub workloads: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Resident memory: idle per path and role, and the relay under a swarm.
    pub memory: serde_json::Value,
    /// Remarks (skipped rows and why).
    pub notes: Vec<String>,
}

const PEERS: [&str; 3] = ["nginx", "rathole", "bore"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            targets,
            out,
            quick,
            only,
            prefix,
            merge,
            paths,
        } => {
            let sel = Selection {
                only,
                prefix,
                merge,
                paths,
            };
            run(&targets, &out, quick, &sel).await
        }
        Cmd::Cluster {
            targets,
            out,
            rounds,
            per_round,
        } => {
            let t: cluster::ClusterTargets = serde_json::from_str(
                &std::fs::read_to_string(&targets).with_context(|| format!("{}", targets.display()))?,
            )?;
            let mut results = cluster::run(&t, rounds, per_round).await?;
            results["date"] = utc_date().into();
            std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
            eprintln!("bench: wrote {}", out.display());
            Ok(())
        }
        Cmd::Console { targets, out } => {
            let t: console::ConsoleTargets = serde_json::from_str(
                &std::fs::read_to_string(&targets).with_context(|| format!("{}", targets.display()))?,
            )?;
            let mut results = console::run(&t).await?;
            results["date"] = utc_date().into();
            std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
            eprintln!("bench: wrote {}", out.display());
            Ok(())
        }
        Cmd::Report {
            results,
            markdown,
            plot,
        } => report::write(&results, &markdown, &plot),
        Cmd::Docs {
            results,
            markdown,
            plot,
            readme,
            write,
        } => docs::docs(&results, &markdown, &plot, &readme, write),
    }
}

/// Which workloads, under which names, into which file.
struct Selection {
    only: Vec<String>,
    prefix: String,
    merge: bool,
    paths: Vec<String>,
}

impl Selection {
    fn wants(&self, w: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == w)
    }
}

async fn run(targets: &std::path::Path, out: &std::path::Path, quick: bool, sel: &Selection) -> anyhow::Result<()> {
    let t: Targets = serde_json::from_str(&std::fs::read_to_string(targets)?).context("targets file")?;
    let settings = Settings::new(quick);
    let paths: Vec<Path> = t
        .paths
        .iter()
        .filter(|p| sel.paths.is_empty() || p.name == "direct" || sel.paths.contains(&p.name))
        .cloned()
        .map(|p| Path::new(p, &t.token))
        .collect::<anyhow::Result<_>>()?;
    let direct = paths
        .iter()
        .find(|p| p.spec.name == "direct")
        .context("no direct path")?;
    let fill = sel.wants("users_10k") || sel.wants("upload_10mb");
    if fill {
        eprintln!("bench: filling the console (10,000 users)…");
    }
    let fixture = workloads::prepare(direct, fill).await?;

    let mut memory = serde_json::Map::new();
    let idle: BTreeMap<&str, BTreeMap<&String, u64>> = paths
        .iter()
        .map(|p| {
            let rss = p
                .spec
                .pids
                .iter()
                .filter_map(|(role, pid)| Some((role, procs::rss_bytes(*pid)?)))
                .collect();
            (p.spec.name.as_str(), rss)
        })
        .collect();
    memory.insert("idle_rss_bytes".into(), serde_json::to_value(&idle)?);
    let mut workloads: BTreeMap<String, BTreeMap<String, Outcome>> = BTreeMap::new();
    let mut put = |w: &str, name: &str, o: anyhow::Result<Outcome>| match o {
        Ok(o) => {
            eprintln!("  {w:<16} {name:<8} {:>10.1} {}", o.value.median, o.unit);
            let key = format!("{}{w}", sel.prefix);
            workloads.entry(key).or_default().insert(name.to_string(), o);
        }
        Err(e) => eprintln!("  {w:<16} {name:<8} FAILED: {e:#}"),
    };
    // The load workloads take turns between the paths round by round.
    for (w, concurrency) in [("get_c1", 1), ("get_c16", 16), ("get_c64", 64)] {
        if sel.wants(w) {
            eprintln!("bench: {w}, rounds taking turns between the paths");
            for (p, o) in paths
                .iter()
                .zip(workloads::small_gets(&paths, concurrency, &settings).await)
            {
                put(w, &p.spec.name, o);
            }
        }
    }
    for p in &paths {
        let name = p.spec.name.as_str();
        eprintln!("bench: {name}");
        let mut put = |w: &str, o: anyhow::Result<Outcome>| put(w, name, o);
        let s = &settings;
        if sel.wants("users_10k") {
            put("users_10k", workloads::user_listing(p, s).await);
        }
        if sel.wants("download_10mb") {
            put("download_10mb", workloads::download(p, s).await);
        }
        if sel.wants("upload_10mb") {
            put("upload_10mb", workloads::upload(p, s, &fixture.user).await);
        }
        if sel.wants("new_connection") {
            put("new_connection", workloads::new_connections(p, s).await);
        }
        if sel.wants("door_event") {
            put("door_event", workloads::door_events(p, s, &fixture.door).await);
        }
        if sel.wants("door_event_50") {
            put(
                "door_event_50",
                workloads::door_events_fanout(p, s, &fixture.door, 50).await,
            );
        }
    }
    for outcomes in workloads.values_mut() {
        ratios(outcomes);
    }
    // Last, so the relay's peak memory under load above is its own.
    if let Some(sw) = t.swarm.as_ref().filter(|_| !sel.merge && sel.wants("relay_swarm")) {
        memory.insert("relay_swarm".into(), swarm_memory(sw).await?);
    }

    let workloads: BTreeMap<String, BTreeMap<String, serde_json::Value>> = workloads
        .into_iter()
        .map(|(w, m)| {
            let m = m
                .into_iter()
                .map(|(p, o)| Ok((p, serde_json::to_value(o)?)))
                .collect::<anyhow::Result<_>>()?;
            Ok((w, m))
        })
        .collect::<anyhow::Result<_>>()?;
    if sel.merge {
        let mut existing: Results =
            serde_json::from_str(&std::fs::read_to_string(out)?).context("results to merge into")?;
        existing.workloads.extend(workloads);
        existing.notes.extend(t.notes);
        std::fs::write(out, serde_json::to_string_pretty(&existing)?)?;
        eprintln!("bench: added to {}", out.display());
        return Ok(());
    }
    let results = Results {
        date: utc_date(),
        quick,
        settings: serde_json::to_value(&settings)?,
        machine: t.machine,
        versions: t.versions,
        paths: paths.iter().map(|p| p.spec.name.clone()).collect(),
        workloads,
        memory: memory.into(),
        notes: t.notes,
    };
    std::fs::write(out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("bench: results in {}", out.display());
    Ok(())
}

/// Ratios where > 1 always means better than the reference.
fn ratios(outcomes: &mut BTreeMap<String, Outcome>) {
    let better = |o: &Outcome, reference: f64| {
        let v = o.value.median;
        if v <= 0.0 || reference <= 0.0 {
            return None;
        }
        Some(if o.higher_is_better {
            v / reference
        } else {
            reference / v
        })
    };
    let direct = outcomes.get("direct").map(|o| o.value.median);
    let best_peer = PEERS
        .iter()
        .filter_map(|p| outcomes.get(*p))
        .map(|o| o.value.median)
        .filter(|v| *v > 0.0)
        .reduce(|a, b| {
            let higher = outcomes.values().next().is_none_or(|o| o.higher_is_better);
            if higher == (a >= b) {
                a
            } else {
                b
            }
        });
    for o in outcomes.values_mut() {
        o.ratio_to_direct = direct.and_then(|d| better(o, d));
        o.ratio_to_best_peer = best_peer.and_then(|b| better(o, b));
    }
}

/// Relay RSS with its own agents only, then with 100 and 1,000 idle sites.
async fn swarm_memory(sw: &SwarmSpec) -> anyhow::Result<serde_json::Value> {
    let cfg = keyway_relay::RelayConfig::load(&sw.relay_config)?;
    let endpoint = swarm::endpoint()?;
    let rss = || procs::rss_bytes(sw.relay_pid).unwrap_or(0);
    let settle = || tokio::time::sleep(std::time::Duration::from_secs(2));
    settle().await;
    let baseline = rss();
    eprintln!("bench: swarm of 100 idle sites…");
    let mut held = swarm::connect(&cfg, &endpoint, sw.quic, "swarm-", 0..100).await?;
    settle().await;
    let at_100 = rss();
    eprintln!("bench: swarm of 1,000 idle sites…");
    held.extend(swarm::connect(&cfg, &endpoint, sw.quic, "swarm-", 100..1000).await?);
    settle().await;
    let at_1000 = rss();
    let per_site = at_1000.saturating_sub(baseline) as f64 / 1000.0;
    eprintln!(
        "bench: relay RSS {:.1} MB → {:.1} MB (100) → {:.1} MB (1,000): {:.0} bytes per idle site",
        baseline as f64 / 1e6,
        at_100 as f64 / 1e6,
        at_1000 as f64 / 1e6,
        per_site
    );
    drop(held);
    endpoint.close(0u32.into(), b"bench over");
    Ok(serde_json::json!({
        "baseline_bytes": baseline, "sites_100_bytes": at_100, "sites_1000_bytes": at_1000,
        "bytes_per_idle_site": per_site,
    }))
}

/// The run's date, as bench/run passes it (`date -u +%F`).
fn utc_date() -> String {
    std::env::var("BENCH_DATE").unwrap_or_else(|_| "undated".into())
}
