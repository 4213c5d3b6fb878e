#!/usr/bin/env python3
"""What reading LLM usage costs a request (issue 18, point 7): tollgate's CPU per request on a
route with `tokens:` (usage read from the answer as it streams, a token budget checked before
and debited after, token metrics) against the same route without it.

    cargo build --release --bin tollgate
    python3 benches/llm_usage.py [--rounds 10] [--duration 4s] [--conns 32] [--aa]

The upstream is nginx (one worker) serving two static answers over keep-alive:
  json   a 2 KB OpenAI chat completion (`usage` at its end), application/json
  sse    an OpenAI stream: 200 `data:` events of ~150 B, the usage chunk and `[DONE]`,
         text/event-stream (41 KB)
Two tollgate processes (one thread each, access log off, the same config) have two routes to
it: `/plain/` and `/tokens/` (with `tokens: {}` and an anonymous tier with a token budget too
large to refuse). In each round both processes are loaded at once by their own wrk (one thread),
one on `/plain/` and one on `/tokens/`, the roles swapped every round; the CPU of each process
(utime + stime from /proc) over the requests its wrk completed is the cost. Loading both at
once is what makes the ratio stable on a shared machine: a slow second slows both sides. Per
answer: the median of the rounds' ratios tokens / plain and their range. `--aa` loads `/plain/`
on both sides, which shows the method's own noise (its ratio should be 1.00). Loopback only; a
benchmark, not a test: it asserts nothing.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "target", "release", "tollgate"))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def answers(dirpath):
    """The two static answers: a 2 KB completion and a 200-event stream."""
    content = "The quick brown fox jumps over the lazy dog. " * 36
    chat = {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 380, "total_tokens": 500},
    }
    with open(os.path.join(dirpath, "chat.json"), "w") as f:
        json.dump(chat, f)
    lines = []
    for i in range(200):
        ev = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
              "model": "gpt-4o-mini",
              "choices": [{"index": 0, "delta": {"content": f"token {i:03d} "}, "finish_reason": None}]}
        lines.append("data: " + json.dumps(ev) + "\n\n")
    lines.append("data: " + json.dumps({"id": "chatcmpl-bench", "choices": [],
                 "usage": {"prompt_tokens": 120, "completion_tokens": 200, "total_tokens": 320}}) + "\n\n")
    lines.append("data: [DONE]\n\n")
    with open(os.path.join(dirpath, "stream.sse"), "w") as f:
        f.write("".join(lines))
    return (os.path.getsize(os.path.join(dirpath, "chat.json")),
            os.path.getsize(os.path.join(dirpath, "stream.sse")))


def nginx(dirpath):
    """nginx serving the two answers of `answers(dirpath)`."""
    return nginx_with(dirpath, "nginx", lambda port: f"""server {{ listen 127.0.0.1:{port}; root {dirpath};
    location = /chat.json {{ default_type application/json; }}
    location = /stream.sse {{ default_type text/event-stream; }} }}""")


def nginx_with(dirpath, name, http_body):
    """An nginx (one worker, no logs, temp files under `dirpath`) whose `http` block holds
    `http_body(port)`, on a free port: (process, port)."""
    port = free_port()
    conf = os.path.join(dirpath, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {dirpath}/{name}.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dirpath}; proxy_temp_path {dirpath};
  fastcgi_temp_path {dirpath}; uwsgi_temp_path {dirpath}; scgi_temp_path {dirpath};
  keepalive_requests 100000000;
  {http_body(port)} }}
""")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx_bin, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def tollgate(upstream_port, dirpath):
    port, admin = free_port(), free_port()
    conf = os.path.join(dirpath, "tollgate.yaml")
    tollgate_conf(conf, upstream_port, port, admin)
    proc = subprocess.Popen([BIN, "run", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, admin


def tollgate_conf(conf, upstream_port, port, admin):
    with open(conf, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
server: {{ threads: 1, work_stealing: false, grace_period: 0s, shutdown_timeout: 1s }}
observability: {{ access_log: {{ enabled: false }} }}
identity: {{ anonymous_tier: anon }}
tiers: {{ anon: {{ rps: 100000000, burst: 100000000, tokens_per_minute: 1000000000000000 }} }}
upstreams:
  plain: {{ endpoints: ["127.0.0.1:{upstream_port}"], strip_prefix: /plain }}
  tokens: {{ endpoints: ["127.0.0.1:{upstream_port}"], strip_prefix: /tokens }}
routes:
  - {{ name: plain, match: {{ path_prefix: /plain/ }}, upstream: plain }}
  - {{ name: tokens, match: {{ path_prefix: /tokens/ }}, upstream: tokens, tokens: {{}} }}
""")


def wrk(port, path, duration, conns):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}", "--latency", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{path}: {errors.group(1)} non-2xx answers\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return requests, float(p99.group(1)) * scale[p99.group(2)]


def keepalive_load(port, path, requests, conns):
    """`requests` GETs of `path` over `conns` keep-alive connections (Python threads), each
    answer read whole; any status but 200 stops the script."""
    import threading
    import http.client

    def one():
        c = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(requests // conns):
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"{path}: {r.status}")
        c.close()
    ts = [threading.Thread(target=one) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def instructions(args):
    """`--instructions`: user-space instructions per request under callgrind, plain and tokens
    routes on one process, each answer twice. Deterministic to about 0.5%, where the CPU times
    of a shared 2-core machine move by several percent from run to run; kernel time (the same
    syscalls and bytes on both routes) is not in it, so the ratio is an upper bound on the
    share of the whole CPU per request."""
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install valgrind")
    n, conns = args.requests, 16

    def load(port, path):
        keepalive_load(port, path, n, conns)

    def ctl(pid, *a):
        return subprocess.run(["callgrind_control", *a, str(pid)], capture_output=True,
                              text=True, check=True).stdout

    with tempfile.TemporaryDirectory() as d:
        json_size, sse_size = answers(d)
        up, up_port = nginx(d)
        port, admin = free_port(), free_port()
        conf = os.path.join(d, "tollgate.yaml")
        tollgate_conf(conf, up_port, port, admin)
        tg = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.%p",
                               BIN, "run", "-c", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, limit=120)
            per = {}
            for path in ("/plain/chat.json", "/tokens/chat.json", "/plain/stream.sse",
                         "/tokens/stream.sse"):
                load(port, path)  # warm-up
            for _ in range(2):
                for path in ("/plain/chat.json", "/tokens/chat.json", "/plain/stream.sse",
                             "/tokens/stream.sse"):
                    ctl(tg.pid, "-z")
                    load(port, path)
                    out = ctl(tg.pid, "-e", "Ir")
                    total = sum(int(m.replace(",", ""))
                                for m in re.findall(r"Th\s+\d+\s+([\d,]+)", out))
                    per.setdefault(path, []).append(total / (n // conns * conns))
        finally:
            for p in (tg, up):
                p.terminate()
            for p in (tg, up):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    print(f"answers: json {json_size} B, sse {sse_size} B; {n} requests per measure over {conns} "
          "connections, one tollgate under callgrind; user-space instructions per request "
          "(two measures each)\n")
    print("| answer | plain | tokens | tokens / plain |")
    print("|---|---:|---:|---:|")
    for answer, f in (("json", "chat.json"), ("sse", "stream.sse")):
        plain, tokens = per[f"/plain/{f}"], per[f"/tokens/{f}"]
        ratio = statistics.mean(tokens) / statistics.mean(plain)
        print(f"| {answer} | {' / '.join(f'{x:,.0f}' for x in plain)} | "
              f"{' / '.join(f'{x:,.0f}' for x in tokens)} | {ratio:.3f} ({(ratio - 1) * 100:+.1f}%) |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under callgrind instead of CPU time")
    ap.add_argument("--requests", type=int, default=800,
                    help="--instructions: requests per measure")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", default="4s")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--aa", action="store_true",
                    help="A/A check: both processes on the plain route (the method's noise)")
    args = ap.parse_args()
    if args.instructions:
        if not os.path.exists(BIN):
            raise SystemExit(f"{BIN} missing: cargo build --release --bin tollgate")
        return instructions(args)
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release --bin tollgate")
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: scripts/setup.sh {tool}")
    measured = "plain" if args.aa else "tokens"
    answers_ = [("json", "chat.json"), ("sse", "stream.sse")]
    with tempfile.TemporaryDirectory() as d:
        json_size, sse_size = answers(d)
        up, up_port = nginx(d)
        procs = []
        for name in ("a", "b"):
            os.mkdir(os.path.join(d, name))
            tg, port, admin = tollgate(up_port, os.path.join(d, name))
            procs.append((tg, port, admin))
        # Per answer and round: both processes loaded at once, one on the plain route and one
        # on the tokens route, the roles swapped every round. Whatever slows the machine during
        # a round (other tenants of the host, frequency) slows both sides, and neither process
        # is always the measured one. The ratio of each round's CPU per request is the result.
        cpu = {(a, r): [] for a, _ in answers_ for r in ("plain", measured)}
        rps = dict((k, []) for k in cpu)
        ratios = {a: [] for a, _ in answers_}
        try:
            for (tg, port, _), route in zip(procs, ("plain", measured)):  # warm-up
                for _, f in answers_:
                    wrk(port, f"/{route}/{f}", "2s", args.conns)
            for answer, f in answers_:
                for r in range(args.rounds):
                    sides = [(procs[r % 2], "plain"), (procs[1 - r % 2], measured)]
                    before = [cpu_seconds(p[0].pid) for p, _ in sides]
                    runs = [subprocess.Popen(
                        ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}",
                         f"http://127.0.0.1:{p[1]}/{route}/{f}"],
                        stdout=subprocess.PIPE, text=True) for p, route in sides]
                    outs = [w.communicate()[0] for w in runs]
                    per_req = []
                    for (p, route), out, b in zip(sides, outs, before):
                        n = int(re.search(r"(\d+) requests in", out).group(1))
                        if re.search(r"Non-2xx or 3xx responses", out):
                            raise SystemExit(f"{route}/{f}: non-2xx answers\n{out}")
                        used = (cpu_seconds(p[0].pid) - b) / n
                        per_req.append(used)
                        cpu[(answer, route)].append(used * 1e6)
                        rps[(answer, route)].append(n)
                    ratios[answer].append(per_req[1] / per_req[0])
            metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{procs[0][2]}/metrics"],
                                     capture_output=True, text=True).stdout
        finally:
            for p in [x[0] for x in procs] + [up]:
                p.terminate()
            for p in [x[0] for x in procs] + [up]:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
    tokens_seen = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                      if l.startswith("tollgate_llm_tokens_total{"))
    print(f"answers: json {json_size} B, sse {sse_size} B (200 events); {args.rounds} rounds x "
          f"{args.duration} per answer, two tollgate processes (1 thread each) loaded at once, "
          f"wrk -t1 -c{args.conns} on each" + (" -- A/A check: plain against plain" if args.aa else ""))
    print(f"tokens counted by one process's tokens route: {tokens_seen:.0f}\n")
    print("| answer | route | CPU per request (µs, median) | requests/s (median) |")
    print("|---|---|---:|---:|")
    secs = float(args.duration.rstrip("s"))
    for answer, _ in answers_:
        for route in ("plain", measured) if not args.aa else ("plain",):
            print(f"| {answer} | {route} | {statistics.median(cpu[(answer, route)]):.1f} | "
                  f"{statistics.median(rps[(answer, route)]) / secs:,.0f} |")
    print()
    for answer, _ in answers_:
        r = sorted(ratios[answer])
        ratio = statistics.median(r)
        print(f"{answer}: {measured} / plain = {ratio:.3f} ({(ratio - 1) * 100:+.1f}% CPU per request; "
              f"median of {len(r)} rounds, range {r[0]:.3f}-{r[-1]:.3f})")

if __name__ == "__main__":
    main()
