#!/usr/bin/env python3
"""Deliberate breakages the test suite must catch (`scripts/test --mutants`).

Each mutant replaces one snippet of the product (or of a test harness that
could silently stop doing its job), builds, runs the tests that guard that
behaviour, and restores the file whatever happens. A mutant the tests do
not fail on "survived": the suite has a hole there. A mutant whose snippet
is no longer in the file is reported as stale (the code moved; update the
list), which also fails the run.

Not part of CI's default path: each mutant costs a rebuild.
Usage: scripts/mutants.py [NAME ...]   (default: all)
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, file, original, replacement, nextest filter)
MUTANTS = [
    (
        "keep-alive off at the edge",
        "relay/src/tcp_port.rs",
        ".header_read_timeout(header_read_timeout)",
        ".header_read_timeout(header_read_timeout).keep_alive(false)",
        "test(/slow_headers_and_idle_keep_alive/)",
    ),
    (
        "impairment proxy stubbed",
        "tests/src/impair.rs",
        "let pass = !imp.blackhole && rng.unit() >= imp.loss;",
        "let pass = { let _ = (imp.blackhole, rng.unit()); true };",
        "test(/five_percent_loss/)",
    ),
    (
        "concurrency limit off by one",
        "relay/src/limits.rs",
        "(prev < max).then_some(slot)",
        "(prev <= max).then_some(slot)",
        "test(/concurrent_requests_over_the_limit|rate_concurrency_and_allow_list/)",
    ),
    (
        "envelope codes swapped",
        "proto/src/envelope.rs",
        'Self::TunnelFailed => "CODE_KEYWAY_TUNNEL_FAILED",',
        'Self::TunnelFailed => "CODE_KEYWAY_CONSOLE_UNREACHABLE",',
        "test(/tunnel_failed/)",
    ),
    (
        "refused chunked body forwarded",
        "relay/src/proxy/forward.rs",
        "let unsized_body =",
        "let unsized_body = false &&",
        "test(/refused::bodies_and_headers/)",
    ),
    (
        "paths not canonicalised",
        "proto/src/path.rs",
        "    let (path, query) = match path_and_query.split_once('?') {",
        "    if path_and_query.len() < usize::MAX { return Ok(None); }\n"
        "    let (path, query) = match path_and_query.split_once('?') {",
        "test(/paths::/)",
    ),
    (
        "door unlocks not recognised",
        "agent/src/access/mod.rs",
        "    if method != Method::PUT {\n        return false;",
        "    if method != Method::PUT || path.len() < usize::MAX {\n        return false;",
        "test(/unlock_limit_counts_every_spelling|stricter_limit_per_credential/)",
    ),
    (
        "silent agents kept",
        "relay/src/tunnel.rs",
        "} else if since.elapsed() >= SILENT_LIMIT {",
        "} else if since.elapsed() >= SILENT_LIMIT * 100 {",
        "test(/killed_agent_gets_the_next_request/)",
    ),
    (
        "console status frames dropped",
        "agent/src/hub/frames.rs",
        "std::iter::once(greeting).chain(s.base_info.clone()).collect()",
        "std::iter::once(greeting).collect()",
        "test(/every_subscriber_gets_the_current_connections/)",
    ),
]


def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def main(names):
    chosen = [m for m in MUTANTS if not names or m[0] in names]
    unknown = set(names) - {m[0] for m in MUTANTS}
    if unknown:
        sys.exit(f"no such mutant: {sorted(unknown)}; mutants: {[m[0] for m in MUTANTS]}")
    # The unmutated tree must build and pass the chosen tests first, or a
    # "caught" mutant would mean nothing.
    filters = " | ".join(m[4] for m in chosen)
    if run(["cargo", "build", "--workspace", "--all-targets", "--locked"]) != 0:
        sys.exit("mutants: the unmutated tree does not build")
    if run(["cargo", "nextest", "run", "--workspace", "--locked", "-E", filters]) != 0:
        sys.exit("mutants: the guarding tests fail without any mutant; fix that first")
    results = []
    for name, file, original, replacement, tests in chosen:
        path = ROOT / file
        text = path.read_text()
        if text.count(original) != 1:
            verdict = "STALE (snippet not found once: update scripts/mutants.py)"
            print(f"{verdict}  {name}  ({file})", flush=True)
            results.append((name, verdict))
            continue
        try:
            path.write_text(text.replace(original, replacement))
            if run(["cargo", "build", "--workspace", "--all-targets", "--locked"]) != 0:
                verdict = "caught (does not build)"
            elif run(["cargo", "nextest", "run", "--workspace", "--locked", "--no-fail-fast", "-E", tests]) != 0:
                verdict = "caught"
            else:
                verdict = "SURVIVED"
        finally:
            path.write_text(text)
        print(f"{verdict:>10}  {name}  ({file}; {tests})", flush=True)
        results.append((name, verdict))
    bad = [n for n, v in results if not v.startswith("caught")]
    print(f"mutants: {len(results) - len(bad)} caught, {len(bad)} not: {bad}" if bad else f"mutants: all {len(results)} caught")
    # Leave the tree's build matching its sources.
    run(["cargo", "build", "--workspace", "--all-targets", "--locked"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
