#!/usr/bin/env python3
"""What reading LLM usage costs a request (issue 18, point 7): tollgate's CPU per request on a
route with `tokens:` (usage read from the answer as it streams, a token budget checked before
and debited after, token metrics) against the same route without it, in one process, in the
same run.

    cargo build --release --bin tollgate
    python3 benches/llm_usage.py [--rounds 3] [--duration 8s] [--conns 32]

The upstream is nginx (one worker) serving two static answers over keep-alive:
  json   a 2 KB OpenAI chat completion (`usage` at its end), application/json
  sse    an OpenAI stream: 200 `data:` events of ~150 B, the usage chunk and `[DONE]`,
         text/event-stream (41 KB)
tollgate (one thread, access log off) has two routes to it: `/plain/` and `/tokens/` (with
`tokens: {}` and an anonymous tier with a token budget too large to refuse). wrk (one thread)
loads each of the four (route x answer) for `--duration`, rounds interleaved; the CPU of the
tollgate process (utime + stime from /proc) over the requests wrk completed is the cost. Medians
over the rounds, and the ratio tokens / plain per answer. Loopback only; a benchmark, not a
test: it asserts nothing.
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
    port = free_port()
    conf = os.path.join(dirpath, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {dirpath}/nginx.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dirpath}; proxy_temp_path {dirpath};
  fastcgi_temp_path {dirpath}; uwsgi_temp_path {dirpath}; scgi_temp_path {dirpath};
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {dirpath};
    location = /chat.json {{ default_type application/json; }}
    location = /stream.sse {{ default_type text/event-stream; }} }} }}
""")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx_bin, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def tollgate(upstream_port, dirpath):
    port, admin = free_port(), free_port()
    conf = os.path.join(dirpath, "tollgate.yaml")
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
    proc = subprocess.Popen([BIN, "run", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, admin


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--conns", type=int, default=32)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release --bin tollgate")
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: scripts/setup.sh {tool}")
    cases = [("json", "plain", "/plain/chat.json"), ("json", "tokens", "/tokens/chat.json"),
             ("sse", "plain", "/plain/stream.sse"), ("sse", "tokens", "/tokens/stream.sse")]
    with tempfile.TemporaryDirectory() as d:
        json_size, sse_size = answers(d)
        up, up_port = nginx(d)
        tg, port, admin = tollgate(up_port, d)
        results = {c[:2]: [] for c in cases}
        try:
            for path in (c[2] for c in cases):  # warm-up
                wrk(port, path, "2s", args.conns)
            for _ in range(args.rounds):
                for answer, route, path in cases:
                    before = cpu_seconds(tg.pid)
                    n, p99 = wrk(port, path, args.duration, args.conns)
                    cpu = cpu_seconds(tg.pid) - before
                    results[(answer, route)].append((cpu / n * 1e6, n, p99))
            metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/metrics"],
                                     capture_output=True, text=True).stdout
        finally:
            tg.terminate()
            up.terminate()
            for p in (tg, up):
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
    tokens_seen = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                      if l.startswith("tollgate_llm_tokens_total{"))
    print(f"answers: json {json_size} B, sse {sse_size} B (200 events); {args.rounds} rounds x "
          f"{args.duration}, wrk -t1 -c{args.conns}, tollgate 1 thread")
    print(f"tokens counted by the tokens route: {tokens_seen:.0f}\n")
    print("| answer | route | CPU per request (µs, median) | requests/s (median) | p99 (ms, median) |")
    print("|---|---|---:|---:|---:|")
    secs = float(args.duration.rstrip("s"))
    med = {}
    for answer, route, _ in cases:
        rows = results[(answer, route)]
        cpu = statistics.median(r[0] for r in rows)
        med[(answer, route)] = cpu
        rps = statistics.median(r[1] for r in rows) / secs
        p99 = statistics.median(r[2] for r in rows)
        print(f"| {answer} | {route} | {cpu:.1f} | {rps:,.0f} | {p99:.2f} |")
    print()
    for answer in ("json", "sse"):
        ratio = med[(answer, "tokens")] / med[(answer, "plain")]
        print(f"{answer}: tokens / plain = {ratio:.3f} ({(ratio - 1) * 100:+.1f}% CPU per request)")


if __name__ == "__main__":
    main()
