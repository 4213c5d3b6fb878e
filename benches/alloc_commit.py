#!/usr/bin/env python3
"""Resident memory and CPU per request of tollgate with mimalloc's arena committed on demand
(tollgate's default, src/memory.rs) against eager commit (MIMALLOC_ARENA_EAGER_COMMIT=2,
mimalloc's default): two tollgate processes of the same binary in front of one nginx, loaded
at once by two wrk (10 rounds of 4 s, roles swapped each round), the llm_usage.py config.

    cargo build --release --bin tollgate
    python3 benches/alloc_commit.py

A benchmark, not a test: it asserts nothing. Loopback only.
"""
import os
import statistics
import subprocess
import tempfile
import threading

import llm_usage as L

d = tempfile.mkdtemp()
L.answers(d)
up, up_port = L.nginx(d)
procs = {}
try:
    for name, env in (("eager", {"MIMALLOC_ARENA_EAGER_COMMIT": "2"}), ("ondemand", {})):
        port, admin = L.free_port(), L.free_port()
        conf = os.path.join(d, f"{name}.yaml"); L.tollgate_conf(conf, up_port, port, admin)
        p = subprocess.Popen([L.BIN, "run", "-c", conf], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        L.wait_port(port); procs[name] = (p, port)
    def rss(pid):
        return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
    print("idle RSS KiB:", {n: rss(p.pid) for n, (p, _) in procs.items()})
    ratios = []
    for r in range(10):
        names = ["eager", "ondemand"] if r % 2 == 0 else ["ondemand", "eager"]
        res = {}
        c0 = {n: L.cpu_seconds(procs[n][0].pid) for n in names}
        def go(n, path):
            res[n] = L.wrk(procs[n][1], path, "4s", 32)
        ts = [threading.Thread(target=go, args=(n, "/plain/chat.json")) for n in names]
        [t.start() for t in ts]; [t.join() for t in ts]
        per = {n: (L.cpu_seconds(procs[n][0].pid) - c0[n]) / res[n][0] * 1e6 for n in names}
        ratios.append(per["ondemand"] / per["eager"])
        print(f"round {r}: eager {per['eager']:.1f} us/req, on demand {per['ondemand']:.1f} us/req, ratio {ratios[-1]:.3f}")
    print("median on-demand / eager CPU per request:", round(statistics.median(ratios), 3), "range", round(min(ratios), 3), round(max(ratios), 3))
    print("RSS after load KiB:", {n: rss(p.pid) for n, (p, _) in procs.items()})
finally:
    for p, _ in procs.values():
        p.terminate()
    up.terminate()
    import shutil
    shutil.rmtree(d, ignore_errors=True)
