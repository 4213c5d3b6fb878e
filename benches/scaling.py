#!/usr/bin/env python3
"""Scaling curves: tollgate's CPU per request as its tables grow, not at one point. Each curve
runs one tollgate (one worker thread, defaults otherwise: request metrics, X-Response-Time, an
access log to a file) in front of one nginx answering a 45-byte JSON body, loaded by wrk:

  routes     1, 10, 100, 1,000 routes (`path_prefix: /rI/`), every request to the last one
  tenants    10 to 1,000,000 tenants (trusted `X-Tenant-Id`, one tier that never refuses, with
             a daily quota so that each tenant's entry stays), each named once before the
             measure (so the limiter holds them all), then
             requests from tenants picked at random among them
  cache      0 to 1,000,000 stored entries (`/cI`, max-age 300), each fetched once before the
             measure, then hits on entries picked at random among them (0: one uncached route)
  conns      32 and 256 client connections on the 1-route config, with nginx (proxy_pass,
             one worker, keep-alive upstream pool) as the peer: the kernel's share grows with
             the connections for both

    cargo build --release --bin tollgate
    python3 benches/scaling.py [--curves routes,tenants,cache,conns] [--rounds 3] [--duration 5]
                               [--max 1000000]

For each point it prints the median over rounds of rps, CPU per request (utime + stime of the
tollgate process over the run / requests) and its ratio to the curve's first point, and the
process's RSS after the last round. A curve that should be flat shows ratios near 1.00; CPU per
request on this machine varies by about 5% between runs of the same point (see
benches/README.md). A benchmark, not a test: it asserts nothing. Loopback only.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import llm_usage as L

BODY = '{"id":"scaling","object":"ok","n":1234567890}'
assert len(BODY) == 45


def upstream(d):
    return L.nginx_with(d, "upstream", lambda port: f"""server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; add_header Cache-Control "max-age=300";
      return 200 '{BODY}'; }} }}""")


class NginxProxy:
    """nginx as the peer of the `conns` curve: proxy_pass with a keep-alive pool, one worker.
    `pid` is the worker's (where the CPU goes); terminate() stops the master."""

    def __init__(self, d, up_port):
        self.master, self.port = L.nginx_with(d, "proxy", lambda port: f"""upstream app {{ server 127.0.0.1:{up_port}; keepalive 32; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")
        workers = subprocess.run(["pgrep", "-P", str(self.master.pid)], capture_output=True,
                                 text=True).stdout.split()
        self.pid = int(workers[0])

    def poll(self):
        return self.master.poll()

    def terminate(self):
        self.master.terminate()

    def wait(self, timeout):
        return self.master.wait(timeout)


def start(d, name, up_port, body):
    port, admin = L.free_port(), L.free_port()
    conf = os.path.join(d, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
server: {{ threads: 1, work_stealing: false, grace_period: 0s, shutdown_timeout: 1s }}
observability: {{ access_log: {{ output: {d}/{name}.access.log }} }}
upstreams: {{ app: {{ endpoints: ["127.0.0.1:{up_port}"] }} }}
{body}""")
    check = subprocess.run([L.BIN, "check", "-c", conf], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"{name}: tollgate check failed:\n{check.stdout}{check.stderr}")
    proc = subprocess.Popen([L.BIN, "run", "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, f"{name}.log"), "w"))
    L.wait_port(port, limit=60)
    return proc, port


def lua(d, name, text):
    path = os.path.join(d, f"{name}.lua")
    with open(path, "w") as f:
        f.write(text)
    return path


def cycling(d, name, n, what):
    """A wrk script naming each of n keys in turn (tenant or path), from 0."""
    req = ('wrk.format(nil, "/x", {["X-Tenant-Id"] = "t" .. i})' if what == "tenant"
           else 'wrk.format(nil, "/c" .. i)')
    return lua(d, f"{name}-fill", f"""local n, i = {n}, -1
request = function() i = (i + 1) % n; return {req} end
""")


def random_keys(d, name, n, what):
    req = ('wrk.format(nil, "/x", {["X-Tenant-Id"] = "t" .. math.random(0, n - 1)})'
           if what == "tenant" else 'wrk.format(nil, "/c" .. math.random(0, n - 1))')
    return lua(d, f"{name}-random", f"""local n = {n}
math.randomseed(7)
request = function() return {req} end
""")


def wrk(port, conns, seconds, script=None, path="/"):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True,
                         text=True, check=True).stdout
    requests = int(out.split(" requests in")[0].split()[-1])
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return requests


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def fill(port, script, n):
    """Send requests cycling through n keys until each has been named at least once."""
    sent, rate = 0, None
    while sent < n:
        seconds = 1 if rate is None else max(1, min(60, int((n - sent) / rate) + 1))
        got = wrk(port, 32, seconds, script)
        rate = got / seconds
        sent += got


def measure(procs, args):
    """Interleaved rounds over the points of one curve: {label: (rps, cpu us/req)} medians."""
    samples = {label: [] for label in procs}
    for _ in range(args.rounds):
        for label, (proc, port, conns, script, path) in procs.items():
            wrk(port, conns, 1, script, path)
            c0 = L.cpu_seconds(proc.pid)
            n = wrk(port, conns, args.duration, script, path)
            cpu = (L.cpu_seconds(proc.pid) - c0) / n * 1e6
            samples[label].append((n / args.duration, cpu))
    return {label: (statistics.median(r for r, _ in s), statistics.median(c for _, c in s))
            for label, s in samples.items()}


def report(title, procs, results):
    print(f"\n### {title}\n")
    print("| point | rps | cpu us/req | ratio to the first | RSS after (MB) |")
    print("|---|---:|---:|---:|---:|")
    first = {}
    for label, (rps, cpu) in results.items():
        # The conns curve has two proxies: each is compared with its own first point.
        who = label.split(",")[0] if title == "conns" else ""
        first.setdefault(who, cpu)
        print(f"| {label} | {rps:,.0f} | {cpu:.2f} | {cpu / first[who]:.2f} | "
              f"{rss_mb(procs[label][0].pid):.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--curves", default="routes,tenants,cache,conns")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    ap.add_argument("--max", type=int, default=1_000_000, help="largest tenant/cache count")
    args = ap.parse_args()
    if not os.path.exists(L.BIN):
        raise SystemExit(f"{L.BIN} missing: cargo build --release --bin tollgate")
    counts = [n for n in (10, 1_000, 100_000, 1_000_000) if n <= args.max]
    d = tempfile.mkdtemp()
    up, up_port = upstream(d)
    print(f"tollgate {L.BIN}, {time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, "
          f"{args.rounds} rounds of {args.duration} s, medians")
    try:
        for curve in args.curves.split(","):
            procs = {}
            try:
                if curve == "routes":
                    for n in (1, 10, 100, 1000):
                        routes = "".join(f"  - {{ name: r{i}, match: {{ path_prefix: /r{i}/ }}, "
                                         f"upstream: app }}\n" for i in range(n))
                        proc, port = start(d, f"routes{n}", up_port, f"routes:\n{routes}")
                        procs[f"{n} routes"] = (proc, port, 32, None, f"/r{n - 1}/x")
                elif curve == "tenants":
                    for n in counts:
                        proc, port = start(d, f"tenants{n}", up_port, f"""identity:
  order: [tenant_header]
  trust_tenant_header: true
  header_tenant_tier: t
tiers: {{ t: {{ rps: 1000000, burst: 1000000, daily: 1000000000 }} }}
rate_limit: {{ max_tracked_keys: 0 }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
""")
                        fill(port, cycling(d, f"tenants{n}", n, "tenant"), n)
                        procs[f"{n:,} tenants"] = (proc, port, 32,
                                                   random_keys(d, f"tenants{n}", n, "tenant"), "/")
                elif curve == "cache":
                    for n in [0] + counts:
                        cache = ("cache: { ttl: 300s }" if n else "")
                        proc, port = start(d, f"cache{n}", up_port, f"""cache: {{ max_size: 4GiB }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: app
    {cache}
""")
                        if n:
                            fill(port, cycling(d, f"cache{n}", n, "path"), n)
                            script = random_keys(d, f"cache{n}", n, "path")
                        else:
                            script = None
                        procs[f"{n:,} entries" + ("" if n else " (no cache: pass-through)")] = (
                            proc, port, 32, script, "/c0")
                elif curve == "conns":
                    proc, port = start(d, "conns", up_port,
                                       "routes: [{ name: all, match: { path_prefix: / }, upstream: app }]\n")
                    procs["tollgate, 32 connections"] = (proc, port, 32, None, "/x")
                    procs["tollgate, 256 connections"] = (proc, port, 256, None, "/x")
                    peer = NginxProxy(d, up_port)
                    procs["nginx, 32 connections"] = (peer, peer.port, 32, None, "/x")
                    procs["nginx, 256 connections"] = (peer, peer.port, 256, None, "/x")
                else:
                    raise SystemExit(f"unknown curve {curve}")
                report(curve, procs, measure(procs, args))
            finally:
                for proc, *_ in procs.values():
                    if proc.poll() is None:
                        proc.terminate()
                        proc.wait(10)
    finally:
        up.terminate()
        up.wait(10)


if __name__ == "__main__":
    main()
