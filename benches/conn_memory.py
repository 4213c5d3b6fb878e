#!/usr/bin/env python3
"""Memory per client connection: tollgate's resident memory with N connections open, then after
they close, for several `server.client_read_buffer` sizes (and nginx as the peer, when installed).

    cargo build --release --bin tollgate
    python3 benches/conn_memory.py [--counts 1000,10000] [--buffers 65536,4096]

For each proxy and each N, four kinds of connection, each measured on a fresh process:
  idle       connected, nothing sent
  partial    an unfinished request header sent (a slowloris client)
  kept       one request answered (one connection after the other), then kept alive and idle
  burst      as kept, but the N requests sent at once: the proxy also holds N upstream
             requests at the same time, so the figure includes what that concurrency grows
             (upstream connections, the keep-alive pool that survives them)
It prints RSS (VmRSS of the proxy process) before, with the N connections open (per connection),
and 2 s after they all closed (percent over the idle figure). Loopback only; a benchmark, not a
test: numbers depend on the machine, and the script asserts nothing.
"""
import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "target", "release", "tollgate"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    """Resident memory of a process and its children (nginx: master + worker), in KiB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


def get(port, path="/api/hello"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()


def settle(pid, seconds=2.0):
    """RSS once it has stopped moving (or after `seconds`)."""
    end = time.time() + seconds
    last = rss_kib(pid)
    while time.time() < end:
        time.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def read_answer(s):
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk


def open_connections(port, n, kind):
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if kind == "partial":
            s.sendall(b"GET /api/hello HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        elif kind in ("kept", "burst"):
            s.sendall(b"GET /api/hello HTTP/1.1\r\nHost: a\r\n\r\n")
            if kind == "kept":
                read_answer(s)
        conns.append(s)
    if kind == "burst":
        for s in conns:
            read_answer(s)
    return conns


def tollgate(upstream_port, read_buffer, dirpath, pool=None, upstream_idle=None):
    port, admin = free_port(), free_port()
    conf = os.path.join(dirpath, f"tg-{read_buffer}.yaml")
    pool_line = f", upstream_keepalive_pool: {pool}" if pool is not None else ""
    idle_line = f", timeouts: {{ idle: {upstream_idle}s }}" if upstream_idle is not None else ""
    with open(conf, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
server: {{ client_read_buffer: {read_buffer}, grace_period: 0s, shutdown_timeout: 1s,
          keepalive_timeout: 600s, client_body_timeout: 600s{pool_line} }}
observability: {{ access_log: {{ enabled: false }} }}
upstreams: {{ app: {{ endpoints: ["127.0.0.1:{upstream_port}"]{idle_line} }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
""")
    proc = subprocess.Popen([BIN, "run", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def nginx(upstream_port, dirpath):
    port = free_port()
    conf = os.path.join(dirpath, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {dirpath}/nginx.pid; error_log /dev/null;
events {{ worker_connections 20000; }}
http {{ access_log off; client_body_temp_path {dirpath}; proxy_temp_path {dirpath};
  fastcgi_temp_path {dirpath}; uwsgi_temp_path {dirpath}; scgi_temp_path {dirpath};
  keepalive_timeout 600s; client_header_timeout 600s;
  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; proxy_http_version 1.1;
    proxy_set_header Connection ""; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--buffers", default="65536,4096")
    ap.add_argument("--kinds", default="idle,partial,kept,burst")
    ap.add_argument("--pool", type=int, default=None,
                    help="tollgate's server.upstream_keepalive_pool (default: tollgate's 128; "
                         "nginx here keeps 16)")
    ap.add_argument("--upstream-idle", type=int, default=None, metavar="SECONDS",
                    help="tollgate's upstream timeouts.idle (default 60 s): how long the pool "
                         "keeps an idle upstream connection; the closed RSS is then read that "
                         "much later too")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(counts) * 2 + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release --bin tollgate")
    proxies = [(f"tollgate client_read_buffer={b}", b) for b in args.buffers.split(",")]
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
        proxies.append(("nginx 1 worker", None))
    with tempfile.TemporaryDirectory() as d:
        up_port = free_port()
        upstream = subprocess.Popen([BIN, "demo-upstream", "--listen", f"127.0.0.1:{up_port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(up_port)
        print(f"{'proxy':36} {'kind':8} {'N':>6} {'idle RSS':>10} {'open RSS':>10} {'per conn':>9} {'closed RSS':>11} {'over idle':>9}")
        try:
            for name, buf in proxies:
                for n in counts:
                    for kind in args.kinds.split(","):
                        if buf is None:
                            proc, port = nginx(up_port, d)
                        else:
                            proc, port = tollgate(up_port, buf, d, args.pool, args.upstream_idle)
                        try:
                            for _ in range(20):
                                get(port)
                            idle = settle(proc.pid)
                            conns = open_connections(port, n, kind)
                            opened = settle(proc.pid, 3.0)
                            for s in conns:
                                s.close()
                            time.sleep(2.0 + (args.upstream_idle or 0))
                            closed = settle(proc.pid)
                            per = (opened - idle) / n
                            over = 100.0 * (closed - idle) / idle
                            print(f"{name:36} {kind:8} {n:>6} {idle:>8} K {opened:>8} K {per:>6.1f} K {closed:>9} K {over:>8.1f}%")
                            sys.stdout.flush()
                        finally:
                            proc.terminate()
                            try:
                                proc.wait(5)
                            except subprocess.TimeoutExpired:
                                proc.kill()
        finally:
            upstream.kill()


if __name__ == "__main__":
    main()
