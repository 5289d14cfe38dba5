#!/usr/bin/env python3
"""CPU per request, by layer, for each tunnel of a narrowed bench run.

Reads `perf script -F pid,period,ip,sym,dso` of a `perf record -e cpu-clock
--call-graph dwarf` on every tunnel process (bench/perf-stat --layers) and
prints, for each path, the CPU microseconds per request spent in each layer.

Each sample is charged to one layer. Kernel samples are named by what the
kernel was doing (a loopback send includes delivering to the receiver and
waking it). User samples go to the innermost frame that belongs to a known
library; a binary without symbols (the peers' release builds) lands in
"user: no symbols".

usage: perf_layers.py PERF_SCRIPT PIDS RESULT_JSON WORKLOAD PATHS
  PIDS: lines of "path role pid" (bench/perf-stat's list)
  PATHS: the paths to report, comma-separated
"""

import collections
import json
import re
import sys

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


def samples(path):
    """(pid, period in ns, frames) for each sample of `perf script`."""
    cur = None
    for line in open(path, errors="replace"):
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif not line[0].isspace():
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


def main():
    script, pids, result, workload, wanted = sys.argv[1:6]
    wanted = wanted.split(",")
    owner = {}
    for line in open(pids):
        path, role, pid = line.split()
        if path not in wanted:
            continue
        if pid in owner and owner[pid] != path:
            print(f"note: {path} shares process {pid} ({role}) with {owner[pid]}; "
                  f"it is counted under {owner[pid]} only", file=sys.stderr)
        owner.setdefault(pid, path)
    res = json.load(open(result))
    s = res["settings"]
    span = lambda x: x["secs"] + x["nanos"] / 1e9
    scale = (span(s["warmup"]) + span(s["duration"])) / span(s["duration"])
    rows = res["workloads"][workload]

    ns = collections.defaultdict(collections.Counter)
    for pid, period, frames in samples(script):
        if pid in owner:
            ns[owner[pid]][layer(frames)] += period
    paths = [p for p in dict.fromkeys(owner.values()) if p in rows and ns[p]]
    per_req = {p: 1e3 * rows[p]["latency"]["n"] * scale for p in paths}  # ns → µs, per request

    print(f"{workload}, CPU µs per request by layer, every tunnel process (warm-up included):")
    print(f"{'layer':<24}" + "".join(f"{p:>12}" for p in paths))
    for name in ORDER:
        vals = [ns[p][name] / per_req[p] for p in paths]
        if any(v >= 0.05 for v in vals):
            print(f"{name:<24}" + "".join(f"{v:>12.1f}" for v in vals))
    print(f"{'total':<24}" + "".join(f"{sum(ns[p].values()) / per_req[p]:>12.1f}" for p in paths))
    print(f"{'req/s':<24}" + "".join(f"{rows[p]['value']['median']:>12.0f}" for p in paths))


if __name__ == "__main__":
    main()
