#!/usr/bin/env python3
"""Tests of bench/perf_report.py on a hand-made run (scripts/test runs them)."""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import perf_report  # noqa: E402

K = "[kernel.kallsyms]"
BIN = "/x/keyway-relay"

# Three samples of 1 ms each in process 10, one in 20, one in 30 (the console).
# perf pads a short pid with spaces, as in the sample of 20.
SCRIPT = """\
10/11    1000000 
\tffffffff820a6ac0 __raw_spin_unlock ({K})
\tffffffff820a6ac0 udp_sendmsg ({K})
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ({K})
\t          10ac4d __libc_sendmsg (/usr/lib/libc.so.6)
\t          771088 quinn_udp::imp::send ({BIN})

10/12    1000000 
\t          4a0000 _int_malloc (/usr/lib/libc.so.6)
\t          4a0001 hyper::proto::h1::io::WriteBuf::buffer ({BIN})

10/12    1000000 
\t          4b0000 core::ptr::drop_in_place<x> ({BIN})
\t          4b0001 rustls::conn::ConnectionCommon::read_tls ({BIN})
\t          4b0002 hyper::proto::h1::dispatch::Dispatcher::poll_read ({BIN})

   20    1000000 
\t          2cdd41 [unknown] (/x/rathole)

30/31    1000000 
\tffffffff813ae493 finish_task_switch.isra.0 ({K})
\tffffffff81753b58 do_epoll_wait ({K})

""".format(K=K, BIN=BIN)


def run(tmp, n_keyway=1000, n_rathole=2000):
    """A bench directory: 1 s measured after 0.25 s of warm-up."""
    result = {
        "settings": {"warmup": {"secs": 0, "nanos": 250_000_000}, "duration": {"secs": 1, "nanos": 0}},
        "workloads": {"get_c16": {
            "keyway": {"latency": {"n": n_keyway}, "value": {"median": 1000.0}},
            "rathole": {"latency": {"n": n_rathole}, "value": {"median": 2000.0}},
            "direct": {"latency": {"n": 4000}, "value": {"median": 4000.0}},
        }},
    }
    with open(f"{tmp}/result.json", "w") as f:
        json.dump(result, f)
    with open(f"{tmp}/pids", "w") as f:
        f.write("keyway relay 10\nkeyway-tcp relay 10\nrathole relay 20\ndirect console 30\n")
    with open(f"{tmp}/script.txt", "w") as f:
        f.write(SCRIPT)


def output(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        fn(*args)
    return out.getvalue()


def table(text):
    """{row name: [values]} of a printed table."""
    rows = {}
    for line in text.splitlines()[2:]:
        name, vals = line[:24].strip(), line[24:].split()
        rows[name] = [float(v) for v in vals]
    return rows


class Layers(unittest.TestCase):
    def test_each_sample_is_charged_to_one_layer(self):
        got = [perf_report.layer(frames) for _, _, frames in perf_report.samples_of(SCRIPT)]
        self.assertEqual(got, ["kernel: send", "allocation + copies", "TLS", "user: no symbols",
                               "kernel: wait/switch"])

    def test_cpu_per_request_for_the_wanted_paths_only(self):
        with tempfile.TemporaryDirectory() as tmp:
            run(tmp)
            text = output(perf_report.layers, tmp, "get_c16", ["keyway", "rathole", "direct"])
            rows = table(text)
        # The console serves every path: none of its samples is a path's.
        self.assertEqual(text.splitlines()[1].split(), ["layer", "keyway", "rathole"])
        # keyway: 3 ms over 1000 × 1.25 requests; rathole: 1 ms over 2500.
        self.assertEqual(rows["total"], [2.4, 0.4])
        self.assertEqual(rows["kernel: send"], [0.8, 0.0])
        self.assertEqual(rows["TLS"], [0.8, 0.0])
        self.assertEqual(rows["user: no symbols"], [0.0, 0.4])
        self.assertNotIn("kernel: wait/switch", rows)

    def test_a_shared_process_is_counted_once(self):
        with tempfile.TemporaryDirectory() as tmp:
            run(tmp)
            text = output(perf_report.layers, tmp, "get_c16", ["keyway", "keyway-tcp"])
        self.assertNotIn("keyway-tcp", text.splitlines()[1])


class Counts(unittest.TestCase):
    def test_counts_are_divided_by_requests(self):
        with tempfile.TemporaryDirectory() as tmp:
            run(tmp)
            with open(f"{tmp}/keyway.relay.perf", "w") as f:
                f.write("# started\n\n6250,,raw_syscalls:sys_enter,1,100.00,,\n"
                        "1250,,cs,1,100.00,,\n<not counted>,,syscalls:sys_enter_futex,0,0,,\n")
            text = output(perf_report.counts, tmp, "get_c16", ["keyway"])
        relay = next(l for l in text.splitlines() if l.startswith("keyway "))
        # path, process, req/s, syscalls, futex, epoll_wait, ctx switches, migrations
        self.assertEqual(relay.split()[2:], ["1000", "5.00", "nan", "nan", "1.00", "nan"])


if __name__ == "__main__":
    unittest.main()
