//! The benchmark figures the README quotes, generated from a results file,
//! and the check that README.md and BENCHMARKS.md still say what the
//! committed results say.
//!
//! The README holds blocks between `<!-- bench:NAME -->` and
//! `<!-- /bench:NAME -->`; `keyway-bench docs --write` regenerates them (and
//! BENCHMARKS.md) from the results file, `keyway-bench docs` only compares
//! and fails on any difference. `bench/run` writes; `scripts/test` checks.

use std::path::Path;

use serde_json::Value;

use crate::Results;

/// A workload's row for `path`.
fn row<'a>(r: &'a Results, workload: &str, path: &str) -> anyhow::Result<&'a Value> {
    r.workloads
        .get(workload)
        .and_then(|w| w.get(path))
        .ok_or_else(|| anyhow::anyhow!("the results have no {workload} row for {path}"))
}

fn median(v: &Value) -> anyhow::Result<f64> {
    v["value"]["median"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("a row without a median value"))
}

fn p99(v: &Value) -> anyhow::Result<f64> {
    v["latency"]["p99_ms"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("a row without a p99"))
}

/// The README's "not yet" paragraph: Keyway against rathole where it lags
/// (small GETs at c16) and where it leads (round trips).
fn headline(r: &Results) -> anyhow::Result<String> {
    let (k16, r16) = (row(r, "get_c16", "keyway")?, row(r, "get_c16", "rathole")?);
    let (kwan, rwan) = (
        row(r, "wan40_new_connection", "keyway")?,
        row(r, "wan40_new_connection", "rathole")?,
    );
    let (kusers, rusers) = (row(r, "users_10k", "keyway")?, row(r, "users_10k", "rathole")?);
    Ok(format!(
        "Not yet (open issue): small-request throughput on par with plain TCP\n\
         forwarders. At concurrency 16 Keyway does {:.2}× rathole's requests/s with\n\
         {:.2}× its p99 in BENCHMARKS.md's run of {}: on 2 cores shared by client,\n\
         console and both ends, CPU per request is the limit, and Keyway's ends\n\
         terminate TLS and parse HTTP where rathole copies bytes. Where round\n\
         trips count, Keyway leads: {:.2}× rathole's new connections per second\n\
         at 40 ms RTT, and the 10,000-user listing {:.0}× faster.",
        median(k16)? / median(r16)?,
        p99(k16)? / p99(r16)?,
        r.date,
        median(kwan)? / median(rwan)?,
        median(rusers)? / median(kusers)?,
    ))
}

/// Total CPU per 10k requests of a row, all its processes.
fn cpu(v: &Value) -> anyhow::Result<f64> {
    Ok(v["cpu_per_10k"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("a row without CPU figures"))?
        .values()
        .filter_map(Value::as_f64)
        .sum())
}

/// Keyway's CPU per request against nginx's plus rathole's, at c16 and c64.
fn split_work(r: &Results) -> anyhow::Result<String> {
    let against = |w: &str, p: &str| -> anyhow::Result<f64> {
        Ok(cpu(row(r, w, p)?)? / (cpu(row(r, w, "nginx")?)? + cpu(row(r, w, "rathole")?)?))
    };
    Ok(format!(
        "In the run of {}, Keyway used {:.2}× that sum at c16 over QUIC and\n\
         {:.2}× over TCP ({:.2}× and {:.2}× at c64).",
        r.date,
        against("get_c16", "keyway")?,
        against("get_c16", "keyway-tcp")?,
        against("get_c64", "keyway")?,
        against("get_c64", "keyway-tcp")?,
    ))
}

/// The README's generated blocks, by name.
fn blocks(r: &Results) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![("headline", headline(r)?), ("split-work", split_work(r)?)])
}

/// `text` with block `name` replaced by `body`; an error if it has none.
fn replace_block(text: &str, name: &str, body: &str) -> anyhow::Result<String> {
    let (open, close) = (format!("<!-- bench:{name} -->\n"), format!("<!-- /bench:{name} -->"));
    let start = text
        .find(&open)
        .ok_or_else(|| anyhow::anyhow!("README.md has no {open:?} marker"))?
        + open.len();
    let end = start
        + text[start..]
            .find(&close)
            .ok_or_else(|| anyhow::anyhow!("README.md has no {close:?} marker"))?;
    Ok(format!("{}{body}\n{}", &text[..start], &text[end..]))
}

/// Compares (or with `write`, rewrites) BENCHMARKS.md, its plot and the
/// README's blocks against what `results` gives.
pub fn docs(results: &Path, markdown: &Path, plot: &Path, readme: &Path, write: bool) -> anyhow::Result<()> {
    let r: Results = serde_json::from_str(&std::fs::read_to_string(results)?)?;
    let mut wanted = vec![
        (
            markdown.to_path_buf(),
            crate::report::text(&r, results, &plot.display().to_string()),
        ),
        (plot.to_path_buf(), crate::report::svg(&r)),
    ];
    let mut text = std::fs::read_to_string(readme)?;
    for (name, body) in blocks(&r)? {
        text = replace_block(&text, name, &body)?;
    }
    wanted.push((readme.to_path_buf(), text));
    let mut stale = Vec::new();
    for (path, want) in wanted {
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have == want {
            continue;
        }
        if write {
            std::fs::write(&path, want)?;
        } else {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| have.lines().count().min(want.lines().count()))
                + 1;
            stale.push(format!(
                "{} differs from what {} gives, from line {line}:\n  has:    {}\n  should: {}",
                path.display(),
                results.display(),
                have.lines().nth(line - 1).unwrap_or("(end)"),
                want.lines().nth(line - 1).unwrap_or("(end)"),
            ));
        }
    }
    anyhow::ensure!(
        stale.is_empty(),
        "{}\n(regenerate with: keyway-bench docs --write …, as bench/run does)",
        stale.join("\n")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_in_place_and_must_exist() {
        let text = "a\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nb\n";
        assert_eq!(
            replace_block(text, "x", "new").unwrap(),
            "a\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\nb\n"
        );
        assert!(replace_block(text, "y", "new").is_err());
    }

    /// The committed results and the committed documents agree.
    #[test]
    fn committed_docs_match_the_committed_results() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let markdown = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap();
        let results = markdown
            .split('`')
            .find(|s| s.starts_with("bench/results/") && s.ends_with(".json"))
            .expect("BENCHMARKS.md names its results file");
        let plot = results.replace(".json", "-latency.svg");
        std::env::set_current_dir(&root).unwrap();
        docs(
            Path::new(results),
            Path::new("BENCHMARKS.md"),
            Path::new(&plot),
            Path::new("README.md"),
            false,
        )
        .unwrap();
    }
}
