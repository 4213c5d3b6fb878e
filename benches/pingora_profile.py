#!/usr/bin/env python3
"""Where a pass-through request's instructions go: bare Pingora (examples/bare_pingora.rs) and
tollgate, each under valgrind's callgrind in front of the same nginx, 800 requests of a 2 KB
JSON answer over 16 keep-alive connections (after 800 of warm-up). Prints the instructions per
request of each and the functions (inclusive) that cost most, per request. docs/pingora-costs.md
is written from its output.

    cargo build --release --bin tollgate --example bare_pingora
    python3 benches/pingora_profile.py [--top 40] [--keep DIR]

User-space instructions only (the kernel is about half the CPU here), deterministic to ~0.3%.
A benchmark, not a test: it asserts nothing. Loopback only.
"""
import argparse
import os
import re
import shutil
import subprocess
import tempfile

import llm_usage as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE = os.environ.get("PINGORA_BIN", os.path.join(ROOT, "target", "release", "examples", "bare_pingora"))
REQUESTS, CONNS = 800, 16


def load(port, path):
    L.keepalive_load(port, path, REQUESTS, CONNS)


def profile(name, cmd, port, path, d):
    out = os.path.join(d, f"cg.{name}")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--dump-instr=no",
                             f"--callgrind-out-file={out}"] + cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        L.wait_port(port, limit=120)
        load(port, path)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        load(port, path)
        subprocess.run(["callgrind_control", "-d", "measure", str(proc.pid)], capture_output=True,
                       check=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return out + ".1"


def top(dump, n):
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=yes",
                           dump], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    return total, rows[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--keep", help="keep the callgrind files in this directory")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} missing (apt-get install valgrind nginx-light)")
    for b in (BARE, L.BIN):
        if not os.path.exists(b):
            raise SystemExit(f"{b} missing: cargo build --release --bin tollgate --example bare_pingora")
    d = args.keep or tempfile.mkdtemp()
    os.makedirs(d, exist_ok=True)
    L.answers(d)
    up, up_port = L.nginx(d)
    try:
        bare_port = L.free_port()
        port, admin = L.free_port(), L.free_port()
        conf = os.path.join(d, "tollgate.yaml")
        L.tollgate_conf(conf, up_port, port, admin)
        dumps = {
            "bare Pingora": profile("bare", [BARE, f"127.0.0.1:{bare_port}", f"127.0.0.1:{up_port}", "1"],
                                    bare_port, "/chat.json", d),
            "tollgate": profile("tollgate", [L.BIN, "run", "-c", conf], port, "/plain/chat.json", d),
        }
    finally:
        up.terminate()
        up.wait(10)
    totals = {}
    for name, dump in dumps.items():
        total, rows = top(dump, args.top)
        totals[name] = total / REQUESTS
        print(f"\n## {name}: {total / REQUESTS:,.0f} instructions per request\n")
        for cost, fn in rows:
            print(f"{cost / REQUESTS:9,.0f}  {fn[:160]}")
    print(f"\ntollgate / bare Pingora: {totals['tollgate'] / totals['bare Pingora']:.3f}")
    if not args.keep:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
