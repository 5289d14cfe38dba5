//! `BENCHMARKS.md` and the latency plot, from a results file.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::Results;

/// Human names of the workloads, in report order.
const WORKLOADS: [(&str, &str); 13] = [
    (
        "get_c1",
        "Small JSON GET (`/api/v1/developer/doors`), keep-alive, concurrency 1",
    ),
    ("get_c16", "Small JSON GET, keep-alive, concurrency 16"),
    ("get_c64", "Small JSON GET, keep-alive, concurrency 64"),
    (
        "users_10k",
        "Paginated list of 10,000 users (100 pages of 100, one connection)",
    ),
    ("download_10mb", "10 MB download (log export), one connection"),
    ("upload_10mb", "10 MB multipart upload (avatar), one connection"),
    (
        "new_connection",
        "New connection per request (TCP + full TLS handshake + GET), concurrency 1",
    ),
    (
        "door_event",
        "Door event: unlock call → event at a WebSocket listener, both through the path (Keyway: from the agent's event hub)",
    ),
    (
        "door_event_50",
        "Door event fan-out: 50 WebSocket listeners on the path, latency at each (direct/peers: 50 console WebSockets; Keyway: one, through the hub)",
    ),
    (
        "wan40_new_connection",
        "WAN shape (40 ms RTT on the tunnel leg): new connection per request",
    ),
    (
        "wan40_get_c1",
        "WAN shape (40 ms RTT): small GET, keep-alive, concurrency 1",
    ),
    (
        "wan40loss_new_connection",
        "WAN shape (40 ms RTT, 1 % loss each way): new connection per request",
    ),
    (
        "wan40loss_get_c1",
        "WAN shape (40 ms RTT, 1 % loss each way): small GET, keep-alive, concurrency 1",
    ),
];

/// Writes the markdown and the SVG.
pub fn write(results: &Path, markdown: &Path, plot: &Path) -> anyhow::Result<()> {
    let r: Results = serde_json::from_str(&std::fs::read_to_string(results)?)?;
    std::fs::write(plot, svg(&r))?;
    std::fs::write(markdown, text(&r, results, &plot.display().to_string()))?;
    Ok(())
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn ratio(v: &Value) -> String {
    f(v).map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into())
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Clock ticks a process must have used for its CPU figure to mean
/// something: the kernel counts CPU time in 10 ms ticks, so a few ticks over
/// a slow WAN workload's few dozen requests are noise, not a measurement.
const MIN_TICKS: f64 = 20.0;

/// A row's CPU per 10k requests by process, or why it is not shown.
fn cpu_cell(o: &Value) -> String {
    let Some(m) = o["cpu_per_10k"].as_object().filter(|m| !m.is_empty()) else {
        return String::new();
    };
    let n = f(&o["latency"]["n"]).unwrap_or(0.0);
    let ticks = |s: f64| s * n / 10_000.0 * 100.0;
    if m.values().filter_map(Value::as_f64).any(|s| ticks(s) < MIN_TICKS) {
        return format!("– ({n:.0} requests: too few for the 10 ms CPU clock)");
    }
    m.iter()
        .map(|(role, s)| format!("{role} {:.2}", s.as_f64().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Total CPU per 10k requests of a path, all its processes.
fn cpu_total(row: &Value) -> Option<f64> {
    let roles = row.get("cpu_per_10k")?.as_object()?;
    Some(roles.values().filter_map(Value::as_f64).sum())
}

/// Keyway's CPU per request against nginx's plus rathole's, in one run.
/// Keyway does what nginx does (TLS termination, HTTP parsed on the way in
/// and out, TLS to the console) and carries it across a tunnel as rathole
/// does, so the sum of the two is what that work costs in tools that each
/// do half of it: the ratio says how far above that reference Keyway is.
fn against_split_work(rows: &std::collections::BTreeMap<String, Value>) -> Option<String> {
    let reference = cpu_total(rows.get("nginx")?)? + cpu_total(rows.get("rathole")?)?;
    if reference <= 0.0 {
        return None;
    }
    let ours: Vec<String> = ["keyway", "keyway-tcp", "keyway-zk"]
        .iter()
        .filter_map(|p| Some(format!("{p} {:.2}×", cpu_total(rows.get(*p)?)? / reference)))
        .collect();
    (!ours.is_empty()).then(|| {
        let mut line = format!(
            "CPU per request against nginx's plus rathole's ({reference:.2} s / 10k req: the same TLS and \
             HTTP work and a tunnel hop, split between two tools): {}.",
            ours.join(", ")
        );
        if let Some(zk) = relay_against_rathole(rows) {
            line.push(' ');
            line.push_str(&zk);
        }
        line
    })
}

/// A zero-knowledge site's relay does what rathole's server does (bytes
/// routed, nothing opened): its CPU per request against that server's.
fn relay_against_rathole(rows: &std::collections::BTreeMap<String, Value>) -> Option<String> {
    let role = |path: &str| rows.get(path)?.get("cpu_per_10k")?.get("relay")?.as_f64();
    let (zk, rathole) = (role("keyway-zk")?, role("rathole")?);
    (rathole > 0.0).then(|| {
        format!(
            "keyway-zk's relay alone against rathole's server: {:.2}×.",
            zk / rathole
        )
    })
}

pub(crate) fn text(r: &Results, results: &Path, plot: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `bench/run{}` on {} from `{}`; do not edit by hand.\n",
        if r.quick { " --quick" } else { "" },
        r.date,
        results.display()
    );
    let _ = writeln!(
        md,
        "Every path reaches the same simulated console (`console-sim`, release build) over loopback \
         in the same run. **Ratios are the headline** (this machine is shared and noisy): \
         `× direct` and `× best peer` are > 1 when the row is better than the reference, whatever \
         the unit (for times, reference ÷ row). The best peer is the best of nginx, rathole and bore \
         on that workload. Values are the median of the rounds; the spread is min–max over rounds. \
         The small-GET rounds take turns between the paths (round 1 on every path, then round 2…), \
         so a slow spell lands on every path alike.\n"
    );
    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "```\n{}\n{}\n```\n", pretty(&r.machine), pretty(&r.versions));
    let _ = writeln!(md, "Settings: `{}`\n", r.settings);
    let _ = writeln!(md, "Paths:\n");
    for (name, what) in [
        ("direct", "client → console (the limit: what port forwarding gives)"),
        (
            "nginx",
            "client → nginx (TLS terminated, `proxy_pass https` with a keep-alive upstream pool) → console",
        ),
        (
            "rathole",
            "client → rathole server → rathole client → console (TCP forwarding; the client's TLS runs end to end)",
        ),
        (
            "bore",
            "client → bore server → bore local → console (TCP forwarding; TLS end to end)",
        ),
        (
            "keyway",
            "client → relay (HTTPS) → QUIC tunnel → agent → console (pooled TLS)",
        ),
        (
            "keyway-tcp",
            "the same with the agent on the TLS/TCP fallback transport (HTTP/2 framing)",
        ),
        (
            "keyway-zk",
            "a zero-knowledge site: client → relay (routed by SNI, TLS unopened) → QUIC tunnel → agent (TLS and HTTP) → console",
        ),
    ] {
        if r.paths.iter().any(|p| p == name) {
            let _ = writeln!(md, "* **{name}**: {what}");
        }
    }
    let _ = writeln!(md);
    for (key, title) in WORKLOADS {
        let Some(rows) = r.workloads.get(key) else { continue };
        let unit = rows.values().next().and_then(|o| o["unit"].as_str()).unwrap_or("");
        let _ = writeln!(md, "## {title}\n");
        let has_latency = rows.values().any(|o| o.get("latency").is_some());
        let has_cpu = rows.values().any(|o| o.get("cpu_per_10k").is_some());
        let mut head = format!("| path | {unit} | spread | × direct | × best peer |");
        let mut rule = "|---|---:|---:|---:|---:|".to_string();
        if has_latency {
            head.push_str(" p50 ms | p99 ms | p99.9 ms |");
            rule.push_str("---:|---:|---:|");
        }
        if has_cpu {
            head.push_str(" CPU s / 10k req |");
            rule.push_str("---|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for path in &r.paths {
            let Some(o) = rows.get(path) else {
                let _ = writeln!(md, "| {path} | not measured (see the run's log) | | | |");
                continue;
            };
            let v = &o["value"];
            let mut line = format!(
                "| {path} | {} | {}–{} | {} | {} |",
                num(f(&v["median"]).unwrap_or(0.0)),
                num(f(&v["min"]).unwrap_or(0.0)),
                num(f(&v["max"]).unwrap_or(0.0)),
                ratio(&o["ratio_to_direct"]),
                ratio(&o["ratio_to_best_peer"]),
            );
            if has_latency {
                let l = &o["latency"];
                for k in ["p50_ms", "p99_ms", "p999_ms"] {
                    let _ = write!(
                        line,
                        " {} |",
                        f(&l[k]).map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into())
                    );
                }
            }
            if has_cpu {
                let _ = write!(line, " {} |", cpu_cell(o));
            }
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md);
        if let Some(line) = against_split_work(rows) {
            let _ = writeln!(md, "{line}\n");
        }
        if key == "get_c16" {
            let _ = writeln!(md, "![Latency by percentile, small GETs at concurrency 16]({plot})\n");
        }
    }
    let _ = writeln!(md, "## Memory\n");
    if let Some(sw) = r.memory.get("relay_swarm") {
        let mb = |k: &str| {
            f(&sw[k])
                .map(|b| format!("{:.1} MB", b / 1e6))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            md,
            "Relay resident memory after the load workloads, with its two benchmark agents: {}; with \
             100 more idle sites: {}; with 1,000: {} → **{:.1} KB per idle site** (a swarm of real \
             QUIC agent connections from one process, each with its own certificate, `Hello` and the \
             agent's keep-alive).\n",
            mb("baseline_bytes"),
            mb("sites_100_bytes"),
            mb("sites_1000_bytes"),
            f(&sw["bytes_per_idle_site"]).unwrap_or(0.0) / 1000.0
        );
    }
    let _ = writeln!(
        md,
        "| path | process | RSS idle (MB) | peak RSS under c=64 (MB) |\n|---|---|---:|---:|"
    );
    for path in &r.paths {
        let idle = &r.memory["idle_rss_bytes"][path];
        let peak = &r
            .workloads
            .get("get_c64")
            .and_then(|w| w.get(path))
            .map(|o| o["peak_rss"].clone());
        if let Some(roles) = idle.as_object() {
            for (role, bytes) in roles {
                let p = peak
                    .as_ref()
                    .and_then(|p| p[role].as_f64())
                    .map(|b| format!("{:.1}", b / 1e6))
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    md,
                    "| {path} | {role} | {:.1} | {p} |",
                    bytes.as_f64().unwrap_or(0.0) / 1e6
                );
            }
        }
    }
    let _ = writeln!(md);
    if !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "* {n}");
        }
        let _ = writeln!(md);
    }
    md
}

fn pretty(v: &Value) -> String {
    match v.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}: {}",
                    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => v.to_string(),
    }
}

/// Latency by percentile for small GETs at c=16, one line per path.
pub(crate) fn svg(r: &Results) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const L: f64 = 60.0;
    const B: f64 = 40.0;
    const COLORS: [&str; 6] = ["#222222", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let rows = r.workloads.get("get_c16");
    let curves: Vec<(String, Vec<(f64, f64)>)> = r
        .paths
        .iter()
        .filter_map(|p| {
            let c = rows?.get(p)?["curve"].as_array()?;
            Some((
                p.clone(),
                c.iter()
                    .filter_map(|pt| Some((pt[0].as_f64()?, pt[1].as_f64()?)))
                    .collect(),
            ))
        })
        .collect();
    let ymax = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.1f64, f64::max)
        * 1.05;
    // x: percentile on a "nines" scale so the tail gets room: -log10(1 - q).
    let xs = |q: f64| -((1.0 - q / 100.0).max(0.0005)).log10();
    let xmax = xs(99.9);
    let px = |q: f64| L + (W - L - 20.0) * xs(q) / xmax;
    let py = |ms: f64| H - B - (H - B - 20.0) * ms / ymax;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{L}\" y=\"14\">Small GETs, keep-alive, concurrency 16: latency by percentile ({})</text>\n",
        r.date
    );
    for q in [1.0f64, 50.0, 90.0, 99.0, 99.9] {
        let x = px(q);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"20\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">p{q}</text>",
            H - B,
            H - B + 16.0
        );
    }
    for i in 0..=4 {
        let ms = ymax * f64::from(i) / 4.0;
        let y = py(ms);
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{ms:.2} ms</text>",
            W - 20.0,
            L - 4.0,
            y + 4.0
        );
    }
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = c
            .iter()
            .map(|(q, ms)| format!("{:.1},{:.1}", px(*q), py(*ms)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{name}</text>",
            pts.join(" "),
            L + 10.0,
            40.0 + 16.0 * i as f64
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keyway_cpu_is_set_against_nginx_plus_rathole() {
        let rows: std::collections::BTreeMap<String, Value> = [
            ("nginx", json!({"cpu_per_10k": {"relay": 0.25}})),
            ("rathole", json!({"cpu_per_10k": {"relay": 0.2, "agent": 0.15}})),
            ("keyway", json!({"cpu_per_10k": {"relay": 0.5, "agent": 0.4}})),
            ("direct", json!({"cpu_per_10k": {"console": 0.25}})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let line = against_split_work(&rows).unwrap();
        assert!(line.contains("(0.60 s / 10k req"), "{line}");
        assert!(line.ends_with(": keyway 1.50×."), "{line}");

        let mut without_nginx = rows.clone();
        without_nginx.remove("nginx");
        assert_eq!(against_split_work(&without_nginx), None);
        let mut without_keyway = rows.clone();
        without_keyway.remove("keyway");
        assert_eq!(against_split_work(&without_keyway), None);

        // A zero-knowledge site: both sums, and its relay against rathole's server.
        let mut zk = rows;
        zk.insert(
            "keyway-zk".into(),
            json!({"cpu_per_10k": {"relay": 0.24, "agent": 0.3}}),
        );
        let line = against_split_work(&zk).unwrap();
        assert!(
            line.ends_with(": keyway 1.50×, keyway-zk 0.90×. keyway-zk's relay alone against rathole's server: 1.20×."),
            "{line}"
        );
    }
}
