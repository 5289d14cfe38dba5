#!/usr/bin/env python3
"""Per-request figures for bench/perf-stat, from one narrowed bench run.

`counts`: the `perf stat` counts of each tunnel process (syscalls, futex
calls, epoll_waits, context switches, migrations) divided by the requests
its path served.

`layers`: reads `perf script -F pid,period,ip,sym,dso` of a `perf record -e
cpu-clock --call-graph dwarf` on every tunnel process and prints, for each
path, the CPU microseconds per request spent in each layer.

Each sample is charged to one layer. Kernel samples are named by what the
kernel was doing (a loopback send includes delivering to the receiver and
waking it). User samples go to the innermost frame that belongs to a known
library; a binary without symbols (the peers' release builds) lands in
"user: no symbols".

usage: perf_report.py counts DIR WORKLOAD PATHS
       perf_report.py layers DIR WORKLOAD PATHS
  DIR: bench/perf-stat's directory: result.json (bench/run's), pids (lines
       of "path role pid"), and <path>.<role>.perf (counts) or script.txt
       (layers)
  PATHS: the paths to report, comma-separated
Requests are estimated from the run's measured requests and its warm-up, so
the warm-up's share is counted too.
"""

import collections
import json
import os
import re
import sys

COUNTS = {"raw_syscalls:sys_enter": "syscalls", "syscalls:sys_enter_futex": "futex",
          "syscalls:sys_enter_epoll_wait": "epoll_wait", "cs": "ctx switches",
          "cpu-migrations": "migrations"}

KERNEL = [
    ("kernel: send", r"tcp_sendmsg|udp_sendmsg|____sys_sendmsg|__sys_sendto|__sys_sendmmsg|sock_write_iter"),
    ("kernel: recv", r"tcp_recvmsg|udp_recvmsg|sock_recvmsg|sock_read_iter|__sys_recvfrom|do_recvmmsg"),
    ("kernel: wake (eventfd)", r"eventfd_write"),
    ("kernel: wait/switch", r"epoll_wait|futex|finish_task_switch|__schedule"),
    ("kernel: other syscall", r"entry_SYSCALL"),
]
ALLOC = r"^(_int_malloc|_int_free|_int_realloc|malloc|free|cfree|realloc|malloc_consolidate|unlink_chunk|__libc_(malloc|free|calloc|realloc)|__mem(move|cpy|set)|mem(move|cpy|set))"
USER = [
    ("TLS", r"rustls|ring::|ring_core|tokio_rustls|aesni|_ghash|gcm_|SSL|ssl3?_|EVP_|tls13?_"),
    ("QUIC", r"quinn"),
    ("HTTP", r"hyper|\bh2::|httparse|\bhttp::|ngx_http"),
    ("async runtime", r"tokio::|tokio_util|mio::|futures_"),
    ("the tunnel's own code", r"keyway|rathole|bore_cli|ngx_|tracing"),
]
ORDER = [k for k, _ in KERNEL] + ["kernel: irq/other", "TLS", "QUIC", "HTTP", "async runtime", "allocation + copies",
                                  "the tunnel's own code", "user: other", "user: no symbols"]


def layer(frames):
    """The layer one sample (innermost frame first) is charged to."""
    if not frames:
        return "user: no symbols"
    if frames[0][1] == "[kernel.kallsyms]":
        k = " ".join(sym for sym, dso in frames if dso == "[kernel.kallsyms]")
        return next((name for name, pat in KERNEL if re.search(pat, k)), "kernel: irq/other")
    if re.match(ALLOC, frames[0][0]):
        return "allocation + copies"
    for sym, dso in frames:
        if dso == "[kernel.kallsyms]":
            continue
        for name, pat in USER:
            if re.search(pat, sym):
                return name
    return "user: no symbols" if frames[0][0] == "[unknown]" else "user: other"


def samples_of(lines):
    """(pid, period in ns, frames) for each sample of `perf script`'s text."""
    cur = None
    for line in lines.splitlines() if isinstance(lines, str) else lines:
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif not line.startswith("\t"):
            # perf pads the pid to five columns: " 2105    2004008".
            head = line.split()
            try:
                cur = (head[0].split("/")[0], int(head[1]), [])
            except (IndexError, ValueError):
                cur = None
        elif cur is not None:
            m = re.match(r"\s*[0-9a-f]+ (.*) \((.*)\)$", line.rstrip())
            if m:
                cur[2].append((m.group(1), m.group(2)))
    if cur:
        yield cur


def load(d, workload, wanted):
    """The workload's result rows, the requests each path served (warm-up
    included), and the wanted (path, role, pid) lines of the pids list."""
    res = json.load(open(f"{d}/result.json"))
    s = res["settings"]
    span = lambda x: x["secs"] + x["nanos"] / 1e9
    scale = (span(s["warmup"]) + span(s["duration"])) / span(s["duration"])
    rows = res["workloads"][workload]
    requests = {p: r["latency"]["n"] * scale for p, r in rows.items()}
    procs = [tuple(l.split()) for l in open(f"{d}/pids")]
    return rows, requests, [(p, r, pid) for p, r, pid in procs if p in wanted and p in rows]


def counts(d, workload, wanted):
    rows, requests, procs = load(d, workload, wanted)
    cols = list(COUNTS.values())
    print(f"{workload}, per request (warm-up included):")
    print(f"{'path':<12} {'process':<8} {'req/s':>8} " + " ".join(f"{c:>12}" for c in cols))
    for path, role, _ in procs:
        got = {}
        f = f"{d}/{path}.{role}.perf"
        for line in open(f) if os.path.exists(f) else []:
            p = line.strip().split(",")
            if len(p) > 2 and p[2] in COUNTS and p[0].replace(".", "").isdigit():
                got[COUNTS[p[2]]] = float(p[0]) / requests[path]
        print(f"{path:<12} {role:<8} {rows[path]['value']['median']:>8.0f} "
              + " ".join(f"{got.get(c, float('nan')):>12.2f}" for c in cols))


def layers(d, workload, wanted):
    rows, requests, procs = load(d, workload, wanted)
    owner = {}
    for path, role, pid in procs:
        if role == "console":
            continue  # it serves every path, and bench/perf-stat does not record it
        if pid in owner and owner[pid] != path:
            print(f"note: {path} shares process {pid} ({role}) with {owner[pid]}; "
                  f"it is counted under {owner[pid]} only", file=sys.stderr)
        owner.setdefault(pid, path)
    ns = collections.defaultdict(collections.Counter)
    with open(f"{d}/script.txt", errors="replace") as script:
        for pid, period, frames in samples_of(script):
            if pid in owner:
                ns[owner[pid]][layer(frames)] += period
    paths = [p for p in dict.fromkeys(owner.values()) if ns[p]]
    per_req = {p: 1e3 * requests[p] for p in paths}  # ns → µs, per request

    print(f"{workload}, CPU µs per request by layer, every tunnel process (warm-up included):")
    print(f"{'layer':<24}" + "".join(f"{p:>12}" for p in paths))
    for name in ORDER:
        vals = [ns[p][name] / per_req[p] for p in paths]
        if any(v >= 0.05 for v in vals):
            print(f"{name:<24}" + "".join(f"{v:>12.1f}" for v in vals))
    print(f"{'total':<24}" + "".join(f"{sum(ns[p].values()) / per_req[p]:>12.1f}" for p in paths))
    print(f"{'req/s':<24}" + "".join(f"{rows[p]['value']['median']:>12.0f}" for p in paths))


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("counts", "layers"):
        sys.exit("usage: perf_report.py counts|layers DIR WORKLOAD PATHS")
    mode, d, workload, wanted = sys.argv[1:]
    (counts if mode == "counts" else layers)(d, workload, wanted.split(","))


if __name__ == "__main__":
    main()
