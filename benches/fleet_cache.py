#!/usr/bin/env python3
"""Fleet cache benchmark (issue 16): what the shared tier in Redis and the purge bus cost and save.

Run it through benches/fleet_cache.sh (which finds or builds the binary); the header comment
of that script describes every measurement, its command lines and its configs. This file is
the implementation: it starts redis-server, an nginx upstream, a small Python origin (part 2)
and tollgate replicas on ephemeral 127.0.0.1 ports, drives them (wrk for part 1, Python
clients for the rest), checks through each replica's /metrics and Redis that every run
measured what it claims, and prints a Markdown report on stdout (progress on stderr).
Every process it starts is stopped on exit, Ctrl-C or SIGTERM.

    python3 benches/fleet_cache.py            # all four parts
    PARTS="1 4" ROUNDS=5 python3 benches/fleet_cache.py
    python3 benches/fleet_cache.py origin --port P --delay-ms 50   # (internal) part 2's origin
"""
import asyncio
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_TOKEN = "fleet-cache-bench-token"


# ------------------------------------------------------------------------------- knobs
def env_int(name, default, minimum=1):
    raw = os.environ.get(name, str(default))
    try:
        v = int(raw)
    except ValueError:
        raise SystemExit(f"[fleet_cache] {name} must be an integer (got {raw!r})")
    if v < minimum:
        raise SystemExit(f"[fleet_cache] {name} must be >= {minimum} (got {v})")
    return v


def knobs():
    k = {
        "PARTS": os.environ.get("PARTS", "1 2 3 4"),
        "ROUNDS": env_int("ROUNDS", 3),
        "DURATION": os.environ.get("DURATION", "5s"),
        "CONNS": env_int("CONNS", 32),
        "WRK_THREADS": env_int("WRK_THREADS", 1),
        "THREADS": env_int("THREADS", 1),
        "SHARED_KEYS": env_int("SHARED_KEYS", 150000),
        "FILL_CONNS": env_int("FILL_CONNS", 32),
        "BODY": env_int("BODY", 1024, 64),
        "KEYS2": env_int("KEYS2", 200),
        "ORIGIN_DELAY_MS": env_int("ORIGIN_DELAY_MS", 50, 0),
        "ENTRIES3": env_int("ENTRIES3", 2000),
        "SAMPLE3": env_int("SAMPLE3", 200),
        "PURGES4": env_int("PURGES4", 200),
        "READY_TIMEOUT": env_int("READY_TIMEOUT", 20),
        "KEEP_TMP": os.environ.get("KEEP_TMP", "0") == "1",
        "TOLLGATE_BIN": os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "target", "release", "tollgate")),
    }
    if not re.fullmatch(r"[0-9]+[smh]?", k["DURATION"]):
        raise SystemExit(f"[fleet_cache] DURATION must look like 5, 5s, 2m (got {k['DURATION']!r})")
    for p in k["PARTS"].split():
        if p not in ("1", "2", "3", "4"):
            raise SystemExit(f"[fleet_cache] PARTS holds 1 2 3 4 (got {k['PARTS']!r})")
    if k["CONNS"] < k["WRK_THREADS"]:
        raise SystemExit("[fleet_cache] CONNS must be >= WRK_THREADS (wrk requirement)")
    return k


K = None  # knobs, set in main()
NGINX_PIDS = []  # the upstream nginx's master and worker


# ------------------------------------------------------------------------------- helpers
class Fatal(Exception):
    pass


def log(msg):
    print(f"[fleet_cache] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    if not v:
        return float("nan")
    rank = max(1, -(-len(v) * p // 100))  # ceil(n*p/100), at least 1
    return v[int(rank) - 1]


def median(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """utime + stime (fields 14 and 15 of /proc/PID/stat, all threads of the process)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def children(pid):
    """Pids whose parent is pid (nginx: the master's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def machine_busy():
    """Busy clock ticks of all CPUs so far (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4]


class OtherCpu:
    """CPU the rest of the machine used during a window: busy ticks of all CPUs minus the ticks
    of the processes this benchmark runs (the given pids, wrk and itself), in % of one core.
    Not 0 means something else ran beside the benchmark and shared its cores."""

    def __init__(self, pids):
        self.pids = [p for p in pids if p]
        self.t0 = time.time()
        self.busy0 = machine_busy()
        self.own0 = self._own()

    def _own(self):
        t = os.times()
        own = (t.user + t.system + t.children_user + t.children_system) * CLK_TCK
        for p in self.pids:
            try:
                own += cpu_ticks(p)
            except OSError:
                pass
        return own

    def done(self):
        dt = time.time() - self.t0
        other = (machine_busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, other) / CLK_TCK / dt * 100 if dt > 0 else None


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"({path}: {e})"


# ------------------------------------------------------------------------------- processes
class Procs:
    def __init__(self):
        self.items = []  # (name, Popen, grace seconds)

    def start(self, name, argv, grace, **kw):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.items.append((name, p, grace))
        return p

    def stop(self, p):
        for i, (name, q, grace) in enumerate(self.items):
            if q is p:
                self._stop_one(name, q, grace)
                del self.items[i]
                return

    @staticmethod
    def _stop_one(name, p, grace):
        if p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {p.pid}) still running {grace}s after SIGTERM: SIGKILL")
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass

    def stop_all(self):
        while self.items:
            name, p, grace = self.items.pop()
            self._stop_one(name, p, grace)


PROCS = Procs()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------- Redis (RESP)
class RedisError(Exception):
    pass


class Redis:
    """A minimal RESP2 client: the benchmark's own reads (INFO, SCAN, MEMORY USAGE, ...)."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")

    def __call__(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise RedisError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RedisError(f"unexpected reply {line!r}")

    def info(self, section):
        out = {}
        for ln in self(b"INFO", section).decode().splitlines():
            if ":" in ln and not ln.startswith("#"):
                k, v = ln.split(":", 1)
                out[k] = v
        return out

    def calls(self):
        """INFO commandstats -> {command: calls}."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                m = re.search(r"calls=(\d+)", v)
                out[k[len("cmdstat_"):]] = int(m.group(1)) if m else 0
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def start_redis(work):
    d = os.path.join(work, "redis")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    p = PROCS.start("redis-server", ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                     "--save", "", "--appendonly", "no", "--dir", d,
                                     "--logfile", os.path.join(d, "redis.log"), "--daemonize", "no"],
                    3, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + K["READY_TIMEOUT"]
    while True:
        try:
            r = Redis(port)
            if r(b"PING") == "PONG":
                break
        except (OSError, RedisError):
            pass
        if p.poll() is not None or time.time() > deadline:
            raise Fatal(f"redis-server did not answer PING on {port}:\n{tail(os.path.join(d, 'redis.log'))}")
        time.sleep(0.05)
    log(f"redis-server up on 127.0.0.1:{port} (pid {p.pid}, --save '' --appendonly no)")
    return p, port, r


# ------------------------------------------------------------------------------- upstreams
NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    gzip off;
    types {{ }}
    default_type application/json;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        # Every path answers a JSON body with Cache-Control: max-age=300 (longer than any run):
        # /b10k/... the 10240-byte file, /b1k/... the 1024-byte file, anything else the
        # BODY-byte file (part 1).
        location /b10k/ {{ add_header Cache-Control "max-age=300"; try_files /10k.json =404; }}
        location /b1k/ {{ add_header Cache-Control "max-age=300"; try_files /1k.json =404; }}
        location / {{ add_header Cache-Control "max-age=300"; try_files /body.json =404; }}
        # Request counter (third line, "requests"): what reached the origin.
        location = /__upstream_status {{ stub_status; }}
    }}
}}
"""


def json_body(n, seed):
    """A deterministic compact JSON array of records, exactly n bytes."""
    rng = random.Random(seed)
    recs, s = [], "[]"
    while True:
        rec = {"id": len(recs) + 1, "name": f"item-{rng.randrange(10**6):06d}", "score": rng.randrange(1000),
               "tags": [rng.choice(["a", "bb", "ccc", "dd"]) for _ in range(3)], "note": ""}
        trial = json.dumps(recs + [rec], separators=(",", ":"))
        if len(trial) > n:
            break
        recs.append(rec)
        s = trial
    # Pad the last record's note (or add one record with a note) to reach exactly n bytes.
    if not recs:
        raise Fatal(f"body size {n} too small")
    recs[-1]["note"] = "x" * (n - len(s))
    s = json.dumps(recs, separators=(",", ":"))
    assert len(s) == n, (len(s), n)
    return s.encode()


def start_nginx(work):
    prefix = os.path.join(work, "nginx")
    docroot = os.path.join(work, "docroot")
    os.makedirs(prefix, exist_ok=True)
    os.makedirs(docroot, exist_ok=True)
    for name, n in (("body.json", K["BODY"]), ("1k.json", 1024), ("10k.json", 10240)):
        with open(os.path.join(docroot, name), "wb") as f:
            f.write(json_body(n, n))
    port = free_port()
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(prefix=prefix, port=port, docroot=docroot))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    t = subprocess.run([nginx, "-t", "-q", "-p", prefix + "/", "-c", conf, "-e", os.path.join(prefix, "error.log")],
                       capture_output=True, text=True)
    if t.returncode != 0:
        raise Fatal(f"nginx config test failed: {t.stderr}")
    p = PROCS.start("nginx", [nginx, "-p", prefix + "/", "-c", conf, "-e", os.path.join(prefix, "error.log")], 5,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, "/__upstream_status", p, os.path.join(prefix, "error.log"), "nginx upstream")
    log(f"nginx upstream up on 127.0.0.1:{port} (pid {p.pid}, 1 worker)")
    global NGINX_PIDS
    NGINX_PIDS = [p.pid] + children(p.pid)
    return p, port


def origin_requests(port):
    """nginx stub_status 'requests' (the read itself counts one)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/__upstream_status")
    lines = c.getresponse().read().decode().splitlines()
    c.close()
    return int(lines[2].split()[2])


def origin_main(argv):
    """Part 2's origin: every GET sleeps --delay-ms, counts its path, answers 1 KB of JSON with
    Cache-Control: max-age=300. GET /__stats answers the counts as JSON."""
    import argparse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=int, default=50)
    a = ap.parse_args(argv)
    body = json_body(1024, 1024)
    counts = Counter()
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK
        # would add ~40 ms to every answer.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/__stats":
                with lock:
                    data = json.dumps(counts).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            with lock:
                counts[self.path] += 1
            if a.delay_ms:
                time.sleep(a.delay_ms / 1000)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=300")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    srv.serve_forever()


def start_origin(work):
    port = free_port()
    logf = os.path.join(work, "origin.log")
    p = PROCS.start("origin", [sys.executable, os.path.abspath(__file__), "origin", "--port", str(port),
                               "--delay-ms", str(K["ORIGIN_DELAY_MS"])], 3,
                    stdout=open(logf, "w"), stderr=subprocess.STDOUT)
    wait_http(port, "/__stats", p, logf, "python origin")
    log(f"python origin up on 127.0.0.1:{port} (pid {p.pid}, {K['ORIGIN_DELAY_MS']} ms per request)")
    return p, port


def origin_stats(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/__stats")
    d = json.loads(c.getresponse().read())
    c.close()
    return Counter(d)


def wait_http(port, path, proc, logf, what):
    deadline = time.time() + K["READY_TIMEOUT"]
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise Fatal(f"{what} exited during startup (rc {proc.returncode}):\n{tail(logf)}")
        if time.time() > deadline:
            raise Fatal(f"{what} not ready after {K['READY_TIMEOUT']}s:\n{tail(logf)}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------- tollgate
def replica_config(port, admin, upstream, redis_port, cache_extra):
    """The replica config. Everything but `cache_extra` (lines of the top-level cache:) and
    the redis: section (absent when redis_port is None) is the same in every part."""
    redis = f"""redis:
  url: redis://127.0.0.1:{redis_port}
  required: true
""" if redis_port else ""
    return f"""listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin}
  token: "${{TOLLGATE_ADMIN_TOKEN}}"
server:
  threads: {K['THREADS']}
  work_stealing: false
  grace_period: 0s
  shutdown_timeout: 1s
observability:
  access_log: {{ enabled: false }}
{redis}cache:
  max_size: 1GiB
{cache_extra}upstreams:
  app: {{ endpoints: ["127.0.0.1:{upstream}"] }}
routes:
  - name: pass
    match: {{ path_prefix: /pass/ }}
    upstream: app
  - name: cached
    match: {{ path_prefix: / }}
    upstream: app
    cache: {{ ttl: 60s, scope: shared }}
"""


SHARED = "  shared: redis\n"
SHARED_LOCK = "  shared: redis\n  shared_fill_lock: true\n"
SHARED_NONE = ""


class Replica:
    def __init__(self, name, work, upstream, redis_port, cache_extra):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        self.conf = os.path.join(self.dir, "tollgate.yaml")
        self.cache_extra = cache_extra
        with open(self.conf, "w") as f:
            f.write(replica_config(self.port, self.admin, upstream, redis_port, cache_extra))
        env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=ADMIN_TOKEN)
        chk = subprocess.run([K["TOLLGATE_BIN"], "check", "-c", self.conf], capture_output=True, text=True, env=env)
        if chk.returncode != 0:
            raise Fatal(f"{name}: tollgate check rejected {self.conf}:\n{chk.stdout}{chk.stderr}\n---\n"
                        + open(self.conf).read())
        self.logf = os.path.join(self.dir, "tollgate.log")
        self.proc = PROCS.start(name, [K["TOLLGATE_BIN"], "run", "-c", self.conf], 2, env=env,
                                stdout=open(self.logf, "w"), stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        wait_http(self.admin, "/readyz", self.proc, self.logf, name)
        if redis_port:
            self.wait_metric("tollgate_redis_up", 1)
            self.wait_metric("tollgate_cache_purge_bus_connected", 1)
        log(f"{name} up on 127.0.0.1:{self.port}, admin {self.admin} (pid {self.pid}; cache: "
            f"{cache_extra.strip().replace(chr(10), ', ') or 'local only'}{', redis' if redis_port else ''})")

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        return Metrics(text)

    def wait_metric(self, name, value):
        deadline = time.time() + K["READY_TIMEOUT"]
        while True:
            m = self.metrics()
            if m.has(name) and m.sum(name) == value:
                return
            if self.proc.poll() is not None:
                raise Fatal(f"{self.name} exited:\n{tail(self.logf)}")
            if time.time() > deadline:
                raise Fatal(f"{self.name}: {name} is not {value} after {K['READY_TIMEOUT']}s "
                            f"(samples: {m.samples(name) or 'none'})\n{tail(self.logf)}")
            time.sleep(0.1)

    def stop(self):
        PROCS.stop(self.proc)


class Metrics:
    LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
    LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text):
        self.rows = []
        for ln in text.splitlines():
            if not ln or ln.startswith("#"):
                continue
            m = self.LINE.match(ln)
            if not m:
                continue
            labels = dict(self.LABEL.findall(m.group(3) or ""))
            try:
                v = float(m.group(4))
            except ValueError:
                continue
            self.rows.append((m.group(1), labels, v))

    def has(self, name):
        return any(n == name for n, _, _ in self.rows)

    def sum(self, name, **want):
        return sum(v for n, lab, v in self.rows if n == name and all(lab.get(k) == w for k, w in want.items()))

    def by(self, name, label):
        out = Counter()
        for n, lab, v in self.rows:
            if n == name:
                out[lab.get(label, "")] += v
        return out

    def samples(self, name):
        return "; ".join(f"{n}{lab} {v:g}" for n, lab, v in self.rows if n == name)

    def any_label_value(self, name, value):
        return sum(v for n, lab, v in self.rows if n == name and value in lab.values())


def delta(m0, m1, name, **want):
    return m1.sum(name, **want) - m0.sum(name, **want)


def by_delta(m0, m1, name, label):
    a, b = m0.by(name, label), m1.by(name, label)
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}


# ------------------------------------------------------------------------------- HTTP clients
async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.read()
    return status, headers, body


async def _fill(port, paths, conns):
    queue = list(reversed(paths))
    results = []

    async def worker():
        reader = writer = None
        while queue:
            path = queue.pop()
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # The Host wrk sends (the cache key has the host without its port).
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            status, headers, body = await _read_response(reader)
            results.append((path, status, headers.get("x-cache-status", ""), headers.get("cache-status", ""), len(body)))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(conns, len(paths)))))
    return results


def fill(port, paths, conns=None):
    """GET every path once over `conns` keep-alive connections; [(path, status, x-cache-status,
    cache-status, body bytes)]."""
    return asyncio.run(_fill(port, paths, conns or K["FILL_CONNS"]))


class Client:
    """One keep-alive connection, for the sequential requests of parts 2 and 4."""

    def __init__(self, port):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method, path, body=None, headers=None):
        for attempt in (1, 2):
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.HTTPException, ConnectionError):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise

    def close(self):
        self.c.close()


# ------------------------------------------------------------------------------- wrk
WRK_LUA = r"""-- benches/fleet_cache.py: one distinct path per request.
-- wrk ... URL -- PREFIX N MODE STRIDE: thread t (0-based) sends PREFIX.."k"..i for
-- i = t, t+STRIDE, t+2*STRIDE, ...; MODE "wrap" takes i modulo N (keys 0..N-1 over and over),
-- MODE "once" sends PREFIX.."x"..i once i >= N (keys nobody filled: the run outgrew its key set).
local nextid = 0
function setup(thread)
  thread:set("tid", nextid)
  nextid = nextid + 1
end
local prefix, n, wrap, stride, i, verify
function init(args)
  prefix = args[1]; n = tonumber(args[2]); wrap = (args[3] == "wrap"); stride = tonumber(args[4])
  i = tid or 0
  -- wrk calls thread 0's request() once after init to inspect the request, without sending it:
  -- that call must not use up a key.
  verify = (i == 0)
end
function request()
  if verify then
    verify = false
    return wrk.format(nil, prefix .. "verify")
  end
  local k = i
  i = i + stride
  if k < n then return wrk.format(nil, prefix .. "k" .. k) end
  if wrap then return wrk.format(nil, prefix .. "k" .. (k % n)) end
  return wrk.format(nil, prefix .. "x" .. k)
end
"""


def to_ms(v):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", v)
    if not m:
        return None
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m.group(2)]


def parse_wrk(out):
    r = {"rps": None, "p50": None, "p99": None, "total": None, "non2xx": 0, "sockerr": 0}
    for ln in out.splitlines():
        s = ln.strip()
        if s.startswith("Requests/sec:"):
            r["rps"] = float(s.split()[1])
        elif s.startswith("50%"):
            r["p50"] = to_ms(s.split()[1])
        elif s.startswith("99%"):
            r["p99"] = to_ms(s.split()[1])
        elif " requests in " in s:
            r["total"] = int(s.split()[0])
        elif s.startswith("Non-2xx or 3xx responses:"):
            r["non2xx"] = int(s.split()[-1])
        elif s.startswith("Socket errors:"):
            r["sockerr"] = sum(int(x) for x in re.findall(r"\d+", s))
    return r


def wrk_cmd(port, prefix, n, mode, duration, threads, conns, lua):
    return ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", "--latency", "-s", lua,
            f"http://127.0.0.1:{port}/", "--", prefix, str(n), mode, str(threads)]


# ------------------------------------------------------------------------------- part 1
def settle_writes(rep, m_prev, limit=5.0):
    """Wait until the replica's shared-tier writes stop moving (background SETs after the load)."""
    end = time.time() + limit
    last = m_prev.sum("tollgate_cache_shared_writes_total")
    while time.time() < end:
        time.sleep(0.1)
        now = rep.metrics().sum("tollgate_cache_shared_writes_total")
        if now == last:
            return
        last = now


def wait_writes(rep, m0, n, what, limit=60.0):
    """Wait until the replica has finished n shared-tier writes since m0 (any result)."""
    end = time.time() + limit
    while True:
        m = rep.metrics()
        d = delta(m0, m, "tollgate_cache_shared_writes_total")
        if d >= n:
            return m
        if time.time() > end:
            raise Fatal(f"{what}: {rep.name} finished {d:.0f} of {n} shared-tier writes after {limit:.0f}s "
                        f"({by_delta(m0, m, 'tollgate_cache_shared_writes_total', 'result')})")
        time.sleep(0.1)


def reset_stores(tag, A, B, redis, limit=60.0):
    """`POST /cache/purge {"all": true}` on A: A drops its store at once, B through the purge
    bus, and the entries in Redis are unlinked (a background SCAN). Waits until both stores
    are empty and Redis holds no entry key; returns a summary for the report."""
    t0 = time.time()
    c = Client(A.admin)
    st, h, d = c.request("POST", "/cache/purge", body=json.dumps({"all": True}),
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    c.close()
    if st != 200:
        raise Fatal(f"{tag}: purge all on A -> {st} {d[:200]!r}")
    ans = json.loads(d)
    last, still = None, 0.0
    while True:
        ea = A.metrics().sum("tollgate_cache_entries")
        eb = B.metrics().sum("tollgate_cache_entries")
        left = len(scan_entries(redis))
        if ea == 0 and eb == 0 and left == 0:
            break
        # The unlinking in Redis is tollgate's (a task that SCANs and UNLINKs); when the count
        # of entry keys has not moved for 3 s, it has stopped: say so and go on (the entries
        # left are refused by every replica, being older than the purge, and expire).
        still = still + 0.2 if left == last else 0.0
        last = left
        if (ea == 0 and eb == 0 and still >= 3.0) or time.time() - t0 > limit:
            log(f"{tag}: WARNING: {time.time() - t0:.1f}s after purge all: A holds {ea:.0f} entries, B {eb:.0f}, "
                f"Redis {left} entry keys (not moving for {still:.1f}s)")
            break
        time.sleep(0.2)
    summary = (f"purge all on A answered {ans}; A {ea:.0f} / B {eb:.0f} entries, {left} Redis entry keys "
               f"left after {time.time() - t0:.1f}s")
    if left:
        with open(A.logf, errors="replace") as f:
            said = [ln.strip() for ln in f if "shared entries removed from Redis" in ln]
        errs = {k: v for k, v in A.metrics().by("tollgate_redis_errors_total", "kind").items() if v}
        summary += (f" (WARN: the unlinking stopped; A's last log line on it: {said[-1] if said else 'none'}; "
                    f"A's tollgate_redis_errors_total so far: {fmtc(errs)})")
    log(f"{tag}: reset: {summary}")
    return summary


def cache_status_of(results):
    return Counter(r[2] for r in results)


def part1(work, redis, redis_port, redis_proc, up_port):
    """CPU per request and latency: local hit, shared-tier hit, miss, pass-through."""
    log("---- part 1: CPU per request and latency of local hits, shared-tier hits, misses, pass-through")
    A = Replica("p1-A", work, up_port, redis_port, SHARED)
    B = Replica("p1-B", work, up_port, redis_port, SHARED)
    lua = os.path.join(work, "keys.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    body_len = K["BODY"]

    # Probe: what each case answers, before any load.
    probes = {}
    a, b = Client(A.port), Client(B.port)
    m0 = A.metrics()
    st, h, d = a.request("GET", "/c/probe/k0")
    if st != 200 or len(d) != body_len or h.get("x-cache-status") != "MISS":
        raise Fatal(f"probe: GET /c/probe/k0 on A -> {st}, {len(d)} bytes, X-Cache-Status {h.get('x-cache-status')} "
                    f"(want 200, {body_len} bytes, MISS); headers {h}")
    probes["fill on A"] = h.get("cache-status", "")
    wait_writes(A, m0, 1, "probe")
    st, h, d = b.request("GET", "/c/probe/k0")
    probes["first GET on B"] = h.get("cache-status", "")
    if st != 200 or len(d) != body_len or h.get("x-cache-status") != "HIT" or "detail=redis" not in h.get("cache-status", ""):
        raise Fatal(f"probe: GET /c/probe/k0 on B after A filled it -> {st}, X-Cache-Status {h.get('x-cache-status')}, "
                    f"Cache-Status {h.get('cache-status')!r}; want 200, HIT, detail=redis (a shared-tier hit)")
    st, h, d = b.request("GET", "/c/probe/k0")
    probes["second GET on B"] = h.get("cache-status", "")
    if h.get("x-cache-status") != "HIT" or "detail=redis" in h.get("cache-status", ""):
        raise Fatal(f"probe: second GET /c/probe/k0 on B -> X-Cache-Status {h.get('x-cache-status')}, "
                    f"Cache-Status {h.get('cache-status')!r}; want a local HIT (no detail=redis)")
    st, h, d = b.request("GET", "/c/probe/m0")
    probes["new key on B"] = h.get("cache-status", "")
    st, h, d = b.request("GET", "/pass/probe")
    probes["pass route on B"] = h.get("cache-status", "") or "(no Cache-Status)"
    if st != 200 or len(d) != body_len:
        raise Fatal(f"probe: GET /pass/probe on B -> {st}, {len(d)} bytes")
    a.close()
    b.close()
    for k, v in probes.items():
        log(f"probe: {k}: Cache-Status: {v}")

    cases = ["local hit", "shared hit", "miss", "pass-through"]
    V = {c: [] for c in cases}  # per round: dict

    def measure(tag, case, prefix, n, mode, n_filled):
        """One measured wrk run on B; the result with its counters and a status."""
        cmd = wrk_cmd(B.port, prefix, n, mode, K["DURATION"], K["WRK_THREADS"], K["CONNS"], lua)
        log(f"{tag}: {case}: {' '.join(cmd)}")
        mb0 = B.metrics()
        ups0 = origin_requests(up_port)
        calls0 = redis.calls()
        net0 = redis.info("stats")
        other = OtherCpu([A.pid, B.pid, redis_proc.pid] + NGINX_PIDS)
        c0, r0 = cpu_ticks(B.pid), cpu_ticks(redis_proc.pid)
        w = subprocess.run(cmd, capture_output=True, text=True)
        settle_writes(B, mb0)
        c1, r1 = cpu_ticks(B.pid), cpu_ticks(redis_proc.pid)
        r_other = other.done()
        net1 = redis.info("stats")
        calls1 = redis.calls()
        ups1 = origin_requests(up_port)
        mb1 = B.metrics()
        r = parse_wrk(w.stdout)
        r["other"] = r_other
        total = r["total"] or 0
        r["cpu"] = (c1 - c0) / CLK_TCK * 1e6 / total if total else None
        r["rcpu"] = (r1 - r0) / CLK_TCK * 1e6 / total if total else None
        r["get"] = (calls1.get("get", 0) - calls0.get("get", 0)) / total if total else None
        r["set"] = (calls1.get("set", 0) - calls0.get("set", 0)) / total if total else None
        # Every command Redis ran in the window, per request (INFO itself excluded).
        r["cmds"] = {c: (v - calls0.get(c, 0)) / total for c, v in calls1.items()
                     if v - calls0.get(c, 0) and c != "info" and total}
        r["rbytes"] = ((int(net1["total_net_input_bytes"]) - int(net0["total_net_input_bytes"]))
                       + (int(net1["total_net_output_bytes"]) - int(net0["total_net_output_bytes"]))) / total if total else None
        ups = ups1 - ups0 - 1
        r["origin"] = ups / total if total else None
        lookups = by_delta(mb0, mb1, "tollgate_cache_shared_lookups_total", "result")
        by_status = by_delta(mb0, mb1, "tollgate_cache_requests_total", "status")
        writes = by_delta(mb0, mb1, "tollgate_cache_shared_writes_total", "result")
        r["lookups"], r["by_status"], r["writes"] = lookups, by_status, writes
        r["exhausted"] = False
        status = "ok"
        if w.returncode != 0 or r["rps"] is None or not total:
            status = f"FAIL: wrk rc {w.returncode}"
            log(f"{tag}: {case}: wrk output:\n{w.stdout}{w.stderr}")
        elif r["non2xx"] or r["sockerr"]:
            status = f"FAIL: non-2xx {r['non2xx']}, socket errors {r['sockerr']} of {total}"
            log(f"{tag}: {case}: wrk output:\n{w.stdout}")
        elif case == "shared hit":
            # Requests that were not shared hits went to the origin (a Redis lookup error or
            # timeout is a miss): a few are a fact of the run (WARN), more than 1% is not the
            # case this row claims to measure (FAIL).
            if total > 0.9 * n_filled:
                r["exhausted"] = True
                status = f"FAIL: {total} requests for {n_filled} keys: raise SHARED_KEYS"
            elif ups > 0.01 * total or lookups.get("hit", 0) < 0.99 * total:
                status = f"FAIL: {lookups.get('hit', 0):.0f} shared hits for {total} requests, origin got {ups}"
            elif ups > 0:
                status = f"WARN: {ups} of {total} requests went to the origin (shared lookups {fmtc(lookups)})"
        elif case == "local hit":
            if sum(lookups.values()) > 0 or ups > 0:
                status = f"FAIL: Redis lookups {fmtc(lookups)}, origin got {ups}"
        elif case == "miss":
            # Every request must reach the origin; each should have looked Redis up first (no
            # lookup while the link backs off after failed calls: cheaper misses).
            if ups < total:
                status = f"FAIL: origin got {ups} for {total} requests"
            elif lookups.get("miss", 0) < 0.99 * total:
                status = (f"FAIL: shared lookups {fmtc(lookups)} for {total} requests (Redis errors: skipped "
                          f"while the link backed off), writes {fmtc(writes)}")
            elif lookups.get("miss", 0) < total or writes.get("error", 0):
                status = f"WARN: shared lookups {fmtc(lookups)}, writes {fmtc(writes)} for {total} requests"
        elif case == "pass-through":
            if ups < total or sum(lookups.values()) > 0:
                status = f"FAIL: origin got {ups}, Redis lookups {fmtc(lookups)}"
        r["status"] = status
        log(f"{tag}: {case}: {r['rps']} rps, p50 {r['p50']} ms, p99 {r['p99']} ms, {total} requests, "
            f"tollgate {fmt(r['cpu'])} us/req, redis-server {fmt(r['rcpu'])} us/req, GET/req {fmt(r['get'], 3)}, "
            f"SET/req {fmt(r['set'], 3)}, origin/req {fmt(r['origin'], 3)}, other processes {fmt(r['other'], 0)}% of a core; "
            f"shared lookups {lookups}; "
            f"cache requests {by_status}; shared writes {writes}: {status}")
        return r

    n_keys = K["SHARED_KEYS"]
    fills = []
    resets = []
    for rnd in range(1, K["ROUNDS"] + 1):
        tag = f"round {rnd}/{K['ROUNDS']}"
        for attempt in range(1, 4):
            # 0. Every round (and every retry) starts from the same state: empty local stores
            #    on A and B, no entries in Redis.
            resets.append(reset_stores(tag, A, B, redis))
            # 1. Fill n_keys distinct keys through A (misses on A, each written to Redis).
            base = f"/c/r{rnd}a{attempt}/"
            paths = [f"{base}k{i}" for i in range(n_keys)]
            log(f"{tag}: fill {n_keys} keys {base}k<i> through A ({K['FILL_CONNS']} connections)")
            m0 = A.metrics()
            t0 = time.time()
            res = fill(A.port, paths)
            bad = [x for x in res if x[1] != 200 or x[4] != body_len]
            xs = cache_status_of(res)
            if bad or xs.get("MISS", 0) != n_keys:
                raise Fatal(f"{tag}: fill through A: {len(bad)} bad answers (first {bad[:3]}), X-Cache-Status {dict(xs)}")
            mA = wait_writes(A, m0, n_keys, f"{tag} fill")
            wr = by_delta(m0, mA, "tollgate_cache_shared_writes_total", "result")
            fills.append((n_keys, time.time() - t0, wr))
            log(f"{tag}: filled {n_keys} keys in {time.time() - t0:.1f}s; A's shared writes: {wr}")
            # 2. A short warm-up of B (local hits on a small key set of its own), not measured.
            subprocess.run(wrk_cmd(B.port, f"/c/warm{rnd}/", 1000, "wrap", "1s", 1, K["CONNS"], lua),
                           capture_output=True, text=True)
            shared = measure(tag, "shared hit", base, n_keys, "once", n_keys)
            total = shared["total"] or 0
            if shared["exhausted"] and attempt < 3:
                n_keys = int(total * 1.5)
                log(f"{tag}: the shared-hit run served {total} requests, more than 0.9 x the {len(paths)} keys "
                    f"filled: filling {n_keys} keys and running the round again")
                continue
            break
        V["shared hit"].append(shared)
        # The keys the shared-hit run just copied into B's local store. Margins: the last CONNS
        # requests may have been cut off by wrk's stop (B counts the shared hit, but the
        # client went away before the answer was complete, and the local copy may not be
        # kept), and with several wrk threads one thread may lag behind the others.
        k_local = max(1, int(total * (1.0 if K["WRK_THREADS"] == 1 else 0.9)) - K["CONNS"])
        V["local hit"].append(measure(tag, "local hit", base, k_local, "wrap", None))
        V["miss"].append(measure(tag, "miss", f"/c/r{rnd}/m", 0, "once", None))
        V["pass-through"].append(measure(tag, "pass-through", f"/pass/r{rnd}/", 0, "once", None))
        # Next rounds: enough keys for 1.5 x what this round's shared-hit run served, when it
        # came close to the key set.
        if total > 0.8 * n_keys:
            n_keys = int(total * 1.5)
            log(f"next rounds fill {n_keys} keys")
    mB = B.metrics()
    A.stop()
    B.stop()
    return {"cases": cases, "V": V, "probes": probes, "fills": fills, "resets": resets,
            "bus": mB.samples("tollgate_cache_purge_bus_resyncs_total")}


def report_part1(p):
    out = []
    out.append("## 1. CPU per request and latency (replica B, `shared: redis`)\n")
    out.append("| case | rps | p50 (ms) | p99 (ms) | tollgate cpu us/req | redis-server cpu us/req "
               "| Redis GET/req | Redis SET/req | Redis bytes/req (in+out) | origin req/req | status |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    med = {}
    for case in p["cases"]:
        rows = p["V"][case]
        mm = {k: median([r[k] for r in rows]) for k in ("rps", "p50", "p99", "cpu", "rcpu", "get", "set", "rbytes", "origin")}
        med[case] = mm
        # The worst round's status: its first FAIL, else its first WARN.
        st = next((f"round {i + 1}: {r['status']}" for i, r in enumerate(rows) if r["status"].startswith("FAIL")),
                  next((f"round {i + 1}: {r['status']}" for i, r in enumerate(rows) if r["status"] != "ok"), "ok"))
        out.append(f"| {case} | {fmt(mm['rps'], 0)} | {fmt(mm['p50'], 3)} | {fmt(mm['p99'], 3)} | {fmt(mm['cpu'])} | "
                   f"{fmt(mm['rcpu'])} | {fmt(mm['get'], 3)} | {fmt(mm['set'], 3)} | {fmt(mm['rbytes'], 0)} | "
                   f"{fmt(mm['origin'], 3)} | {st} |")
    out.append("")
    out.append(f"Medians over {K['ROUNDS']} interleaved rounds. Per round (rps / tollgate cpu us/req / p99 ms / CPU "
               "of other processes on the machine during the run, % of one core: 0 = nothing else ran):\n")
    out.append("| case | " + " | ".join(f"round {i + 1}" for i in range(K["ROUNDS"])) + " |")
    out.append("|---|" + "---:|" * K["ROUNDS"])
    for case in p["cases"]:
        out.append(f"| {case} | " + " | ".join(f"{fmt(r['rps'], 0)} / {fmt(r['cpu'])} / {fmt(r['p99'], 3)} / "
                                              f"{fmt(r.get('other'), 0)}%" for r in p["V"][case]) + " |")
    out.append("")

    def ratio(a, b, k):
        x, y = med[a][k], med[b][k]
        return fmt(x / y) if x is not None and y else "n/a"

    out.append(f"- shared hit / local hit: CPU per request {ratio('shared hit', 'local hit', 'cpu')}, "
               f"p50 {ratio('shared hit', 'local hit', 'p50')}, p99 {ratio('shared hit', 'local hit', 'p99')}, "
               f"rps {ratio('shared hit', 'local hit', 'rps')}")
    out.append(f"- miss / local hit: CPU per request {ratio('miss', 'local hit', 'cpu')}, "
               f"p50 {ratio('miss', 'local hit', 'p50')}, p99 {ratio('miss', 'local hit', 'p99')}, "
               f"rps {ratio('miss', 'local hit', 'rps')}")
    out.append(f"- pass-through / local hit: CPU per request {ratio('pass-through', 'local hit', 'cpu')}; "
               f"miss / pass-through: CPU per request {ratio('miss', 'pass-through', 'cpu')}")
    sh, lo = med["shared hit"], med["local hit"]
    if sh["cpu"] is not None and sh["rcpu"] is not None and lo["cpu"]:
        out.append(f"- shared hit incl. redis-server CPU / local hit: {fmt((sh['cpu'] + sh['rcpu']) / lo['cpu'])} "
                   f"({fmt(sh['cpu'])} + {fmt(sh['rcpu'])} us vs {fmt(lo['cpu'])} us)")
    out.append("")
    out.append("Per-run counters of B (last round): " + "; ".join(
        f"{c}: shared lookups {fmtc(p['V'][c][-1]['lookups'])}, cache requests {fmtc(p['V'][c][-1]['by_status'])}, "
        f"shared writes {fmtc(p['V'][c][-1]['writes'])}, Redis commands/req "
        f"{', '.join(f'{k} {v:.3f}' for k, v in sorted(p['V'][c][-1]['cmds'].items()) if v >= 0.001) or '-'}"
        for c in p["cases"] if p["V"][c]))
    out.append("")
    out.append("Fills through A (not measured): " + "; ".join(
        f"{n} keys in {t:.1f}s, writes {fmtc(w)}" for n, t, w in p["fills"]))
    out.append("")
    out.append("Resets before each fill (`POST /cache/purge {\"all\": true}` on A): " + "; ".join(p["resets"]))
    out.append("")
    out.append("Probe answers (Cache-Status): " + "; ".join(f"{k}: `{v}`" for k, v in p["probes"].items()))
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------- part 2
def part2(work, redis, redis_port):
    """Origin requests for the same keys on 3 replicas."""
    log("---- part 2: origin requests, 3 replicas, with and without the shared tier")
    origin_proc, oport = start_origin(work)
    variants = [("no shared tier (`shared: none`)", "none", SHARED_NONE),
                ("`shared: redis`", "shared", SHARED),
                ("`shared: redis` + `shared_fill_lock: true`", "lock", SHARED_LOCK)]
    n = K["KEYS2"]
    rows = []
    for label, vid, extra in variants:
        redis(b"FLUSHALL")
        reps = [Replica(f"p2-{vid}-{x}", work, oport, redis_port, extra) for x in "ABC"]
        for mode in ("burst", "spread"):
            prefix = f"/c/{vid}/{mode}/k"
            m0 = [r.metrics() for r in reps]
            s0 = origin_stats(oport)
            lat = []
            xcs = Counter()
            errors = []
            barrier = threading.Barrier(3)
            lk = threading.Lock()

            def client(idx, rep):
                order = list(range(n))
                if mode == "spread":
                    random.Random(1000 + idx).shuffle(order)
                c = Client(rep.port)
                try:
                    for i in order:
                        if mode == "burst":
                            barrier.wait(timeout=60)
                        t0 = time.perf_counter()
                        st, h, d = c.request("GET", f"{prefix}{i}")
                        dt = (time.perf_counter() - t0) * 1000
                        with lk:
                            lat.append(dt)
                            xcs[h.get("x-cache-status", "") + (" (redis)" if "detail=redis" in h.get("cache-status", "") else "")] += 1
                            if st != 200 or len(d) != 1024:
                                errors.append((rep.name, i, st, len(d)))
                except Exception as e:  # noqa: BLE001 - reported below
                    with lk:
                        errors.append((rep.name, "exception", repr(e)))
                    barrier.abort()
                finally:
                    c.close()

            t0 = time.time()
            ths = [threading.Thread(target=client, args=(i, r)) for i, r in enumerate(reps)]
            for t in ths:
                t.start()
            for t in ths:
                t.join()
            wall = time.time() - t0
            # Let background writes finish before reading the counters.
            time.sleep(0.3)
            s1 = origin_stats(oport)
            m1 = [r.metrics() for r in reps]
            fetched = {p: s1[p] - s0.get(p, 0) for p in s1 if p.startswith(prefix) and s1[p] - s0.get(p, 0)}
            total = sum(fetched.values())
            multi = sum(1 for v in fetched.values() if v > 1)
            lookups, locks, writes = Counter(), Counter(), Counter()
            for a, b in zip(m0, m1):
                lookups.update(by_delta(a, b, "tollgate_cache_shared_lookups_total", "result"))
                locks.update(by_delta(a, b, "tollgate_cache_shared_fill_lock_total", "result"))
                writes.update(by_delta(a, b, "tollgate_cache_shared_writes_total", "result"))
            row = {"label": label, "mode": mode, "origin": total, "keys": len(fetched), "multi": multi,
                   "xcs": dict(xcs), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat) if lat else None,
                   "wall": wall, "lookups": dict(lookups), "locks": dict(locks), "writes": dict(writes),
                   "errors": errors, "requests": len(lat)}
            rows.append(row)
            log(f"{label} {mode}: origin requests {total} for {n} keys x 3 replicas ({len(fetched)} keys fetched, "
                f"{multi} more than once); answers {dict(xcs)}; client latency p50 {row['p50']:.1f} ms p99 "
                f"{row['p99']:.1f} ms; lookups {dict(lookups)}; fill lock {dict(locks)}; writes {dict(writes)}"
                f"{'; ERRORS ' + str(errors[:5]) if errors else ''}")
        for r in reps:
            r.stop()
    PROCS.stop(origin_proc)
    return rows


def report_part2(rows):
    out = ["## 2. Origin requests: {n} keys, each requested once from each of 3 replicas "
           "(origin answers after {d} ms)\n".format(n=K["KEYS2"], d=K["ORIGIN_DELAY_MS"])]
    out.append("| config | mode | origin requests | keys fetched > once | answers (X-Cache-Status) | client p50 / p99 / max (ms) "
               "| shared lookups | fill lock | shared writes | errors |")
    out.append("|---|---|---:|---:|---|---|---|---|---|---|")
    for r in rows:
        out.append(f"| {r['label']} | {r['mode']} | {r['origin']} / {r['requests']} | {r['multi']} | "
                   f"{', '.join(f'{k or (chr(39) * 2)}: {v}' for k, v in sorted(r['xcs'].items()))} | "
                   f"{r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} | {fmtc(r['lookups'])} | {fmtc(r['locks'])} | "
                   f"{fmtc(r['writes'])} | {('FAIL: ' + str(len(r['errors'])) + ' ' + repr(r['errors'][:2])) if r['errors'] else 'none'} |")
    out.append("")
    out.append("burst: for each key the three requests (one per replica) are released together (a barrier), "
               "then the next key. spread: three clients, one per replica, each walks all keys in its own "
               "random order at once. `HIT (redis)` is a hit with `detail=redis` in Cache-Status.")
    out.append("")
    return "\n".join(out)


def fmtc(d):
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(d.items())) or "-"


# ------------------------------------------------------------------------------- part 3
# Entry keys `<prefix>:cache:<8 hex scope>:{<hex key>}:<hex variant>` (docs/fleet.md); not the
# `...:lock` keys, nor the purge stream `<prefix>:cache:{purges}` and its `:meta` hash.
ENTRY_KEY = re.compile(rb":cache:[0-9a-f]{8}:\{[0-9a-f]+\}:[0-9a-f]+$")


def scan_entries(redis):
    keys, cursor = set(), b"0"
    while True:
        cursor, batch = redis(b"SCAN", cursor, b"MATCH", b"tollgate:cache:*", b"COUNT", b"1000")
        keys.update(k for k in batch if ENTRY_KEY.search(k))
        if cursor == b"0":
            return keys


def part3(work, redis, redis_port, up_port):
    """Redis bytes and memory per entry."""
    log("---- part 3: Redis memory per entry")
    redis(b"FLUSHALL")
    R = Replica("p3-A", work, up_port, redis_port, SHARED)
    n = K["ENTRIES3"]
    rows = []
    for size, loc in ((1024, "b1k"), (10240, "b10k")):
        before = scan_entries(redis)
        time.sleep(0.2)
        mem0 = int(redis.info("memory")["used_memory"])
        net0 = int(redis.info("stats")["total_net_input_bytes"])
        m0 = R.metrics()
        res = fill(R.port, [f"/{loc}/k{i}" for i in range(n)])
        bad = [r for r in res if r[1] != 200 or r[4] != size]
        if bad:
            raise Fatal(f"part 3: {len(bad)} bad answers filling /{loc}/: {bad[:3]}")
        m1 = wait_writes(R, m0, n, f"part 3 {loc}")
        time.sleep(0.3)
        mem1 = int(redis.info("memory")["used_memory"])
        net1 = int(redis.info("stats")["total_net_input_bytes"])
        writes = by_delta(m0, m1, "tollgate_cache_shared_writes_total", "result")
        new = sorted(scan_entries(redis) - before)
        sample = random.Random(size).sample(new, min(K["SAMPLE3"], len(new))) if new else []
        usage, strlen, types, pttl = [], [], Counter(), []
        for k in sample:
            usage.append(redis(b"MEMORY", b"USAGE", k, b"SAMPLES", b"0"))
            t = redis(b"TYPE", k)
            types[t] += 1
            if t == "string":
                strlen.append(redis(b"STRLEN", k))
            pttl.append(redis(b"PTTL", k))
        row = {"size": size, "entries": len(new), "writes": writes, "usage_med": median(usage),
               "usage_min": min(usage) if usage else None, "usage_max": max(usage) if usage else None,
               "strlen": median(strlen), "types": dict(types), "mem_per": (mem1 - mem0) / len(new) if new else None,
               "net_per": (net1 - net0) / n, "pttl": median(pttl), "sample": len(sample),
               "example": new[0].decode() if new else ""}
        rows.append(row)
        log(f"{size}-byte bodies: {len(new)} new entry keys for {n} fills (writes {writes}); MEMORY USAGE median "
            f"{row['usage_med']} (min {row['usage_min']}, max {row['usage_max']}) of {len(sample)}; value bytes "
            f"median {row['strlen']} ({dict(types)}); used_memory delta/entry {fmt(row['mem_per'], 0)}; "
            f"bytes sent to Redis per fill {row['net_per']:.0f}; PTTL median {row['pttl']} ms; e.g. {row['example']}")
    R.stop()
    return rows


def report_part3(rows):
    out = [f"## 3. Redis memory per entry ({K['ENTRIES3']} entries per body size, one replica)\n"]
    out.append("| body | entries in Redis | value bytes (STRLEN, median) | MEMORY USAGE median (min-max) "
               "| used_memory delta / entry | value overhead over body | bytes sent to Redis per fill | PTTL median (s) | writes |")
    out.append("|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        over = (r["strlen"] - r["size"]) if r["strlen"] is not None else None
        out.append(f"| {r['size']} | {r['entries']} | {fmt(r['strlen'], 0)} | {fmt(r['usage_med'], 0)} "
                   f"({fmt(r['usage_min'], 0)}-{fmt(r['usage_max'], 0)}) | {fmt(r['mem_per'], 0)} | "
                   f"{fmt(over, 0)} | {r['net_per']:.0f} | {fmt(r['pttl'] / 1000 if r['pttl'] is not None else None, 1)} | "
                   f"{fmtc(r['writes'])} |")
    out.append("")
    if rows:
        out.append(f"Key example: `{rows[0]['example']}`; types of the sampled keys: "
                   + "; ".join(f"{r['size']}: {r['types']}" for r in rows))
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------- part 4
def part4(work, redis, redis_port, up_port):
    """Purge propagation A -> B."""
    log("---- part 4: purge propagation between 2 replicas")
    rows = []
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    for label, vid, extra in (("purge bus only (`shared: none`)", "bus", SHARED_NONE),
                              ("`shared: redis`", "shared", SHARED)):
        A = Replica(f"p4-{vid}-A", work, up_port, redis_port, extra)
        B = Replica(f"p4-{vid}-B", work, up_port, redis_port, extra)
        ca, cb, cg = Client(A.admin), Client(B.port), Client(A.port)
        mb0, ma0 = B.metrics(), A.metrics()
        from_answer, from_send, polls, fleet, timeouts, purged = [], [], [], Counter(), 0, Counter()
        for i in range(K["PURGES4"]):
            path = f"/c/pb-{vid}/k{i}"
            for _ in range(3):
                st, h, d = cb.request("GET", path)
                if h.get("x-cache-status") == "HIT":
                    break
            else:
                raise Fatal(f"part 4: {path} on B is not a HIT after 3 GETs (last: {h})")
            # A holds the path too, so its purge removes an entry of its own as well.
            st, h, d = cg.request("GET", path)
            t_send = time.perf_counter()
            st, h, d = ca.request("POST", "/cache/purge", body=json.dumps({"url": path}), headers=auth)
            t_ans = time.perf_counter()
            if st != 200:
                raise Fatal(f"part 4: purge on A -> {st} {d[:200]!r}")
            ans = json.loads(d)
            fleet[ans.get("fleet")] += 1
            purged[ans.get("purged")] += 1
            k = 0
            while True:
                k += 1
                t = time.perf_counter()  # this GET's send: B looks the path up right after it
                st, h, d = cb.request("GET", path)
                if h.get("x-cache-status") != "HIT":
                    break
                if t - t_ans > 5:
                    timeouts += 1
                    break
            from_answer.append(max(0.0, t - t_ans) * 1000)
            from_send.append((t - t_send) * 1000)
            polls.append(k)
        time.sleep(0.3)
        mb1, ma1 = B.metrics(), A.metrics()
        ca.close()
        cb.close()
        cg.close()
        lag_n = delta(mb0, mb1, "tollgate_cache_purge_bus_lag_seconds_count")
        lag_s = delta(mb0, mb1, "tollgate_cache_purge_bus_lag_seconds_sum")
        row = {"label": label, "n": len(from_answer), "p50": pct(from_answer, 50), "p99": pct(from_answer, 99),
               "max": max(from_answer), "send_p50": pct(from_send, 50), "send_p99": pct(from_send, 99),
               "send_max": max(from_send), "polls_med": median(polls), "polls_max": max(polls),
               "first_poll_miss": sum(1 for p in polls if p == 1), "timeouts": timeouts, "fleet": dict(fleet),
               "purged": dict(purged),
               "published": delta(ma0, ma1, "tollgate_cache_purge_bus_published_total"),
               "applied": delta(mb0, mb1, "tollgate_cache_purge_bus_applied_total"),
               "fleet_entries": delta(mb0, mb1, "tollgate_cache_purged_entries_total", reason="fleet"),
               "lag_mean_ms": lag_s / lag_n * 1000 if lag_n else None,
               "resyncs": delta(mb0, mb1, "tollgate_cache_purge_bus_resyncs_total")}
        problems = []
        if timeouts:
            problems.append(f"{timeouts} purges still hits on B after 5 s")
        if fleet.get("published", 0) != len(from_answer):
            problems.append(f"answers fleet={dict(fleet)}, want published")
        if row["applied"] < len(from_answer):
            problems.append(f"B applied {row['applied']:.0f} of {len(from_answer)}")
        row["status"] = "FAIL: " + "; ".join(problems) if problems else "ok"
        rows.append(row)
        log(f"{label}: {row['n']} purges: from A's answer to B's first non-hit p50 {row['p50']:.2f} ms, p99 "
            f"{row['p99']:.2f} ms, max {row['max']:.2f} ms (from the send: p50 {row['send_p50']:.2f}, p99 "
            f"{row['send_p99']:.2f}, max {row['send_max']:.2f}); polls median {row['polls_med']} max {row['polls_max']}, "
            f"first poll already a miss {row['first_poll_miss']}; timeouts {timeouts}; answers fleet={dict(fleet)} "
            f"purged={dict(purged)}; A published {row['published']:.0f}, B applied {row['applied']:.0f}, B purged "
            f"entries (fleet) {row['fleet_entries']:.0f}, B lag histogram mean {fmt(row['lag_mean_ms'], 3)} ms, "
            f"resyncs {row['resyncs']:.0f}")
        A.stop()
        B.stop()
    return rows


def report_part4(rows):
    out = [f"## 4. Purge propagation ({K['PURGES4']} purges on A, `POST /cache/purge {{\"url\": path}}`; "
           "time until a GET of that path on B is no longer a hit)\n"]
    out.append("| config | purges | from A's answer: p50 / p99 / max (ms) | from the purge's send: p50 / p99 / max (ms) "
               "| GETs on B per purge: median / max (first already a miss) | purge answers `fleet` | A published | B applied "
               "| B lag histogram mean (ms) | timeouts (5 s) | resyncs | status |")
    out.append("|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        out.append(f"| {r['label']} | {r['n']} | {r['p50']:.2f} / {r['p99']:.2f} / {r['max']:.2f} | "
                   f"{r['send_p50']:.2f} / {r['send_p99']:.2f} / {r['send_max']:.2f} | {fmt(r['polls_med'], 0)} / "
                   f"{r['polls_max']} ({r['first_poll_miss']}) | {fmtc(r['fleet'])} | {r['published']:.0f} | "
                   f"{r['applied']:.0f} | {fmt(r['lag_mean_ms'], 3)} | {r['timeouts']} | {r['resyncs']:.0f} | {r['status']} |")
    out.append("")
    out.append("The time is taken when the first GET on B that is not a hit was sent (B had applied the purge "
               "by the time it looked that GET up, and had not when it looked the previous GET up: a resolution of "
               "one hit's round trip, ~0.2 ms); 0 when the first GET after A's answer was already a miss (B applied "
               "the purge before A's answer arrived: the 'first already a miss' count). B's GETs run back to back "
               "on one keep-alive connection. The lag histogram is B's own: the purge's stream id time to applied.")
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------- main
def version(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"


def header(cmdline, redis_port):
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    bin_ = K["TOLLGATE_BIN"]
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(bin_)))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = ["# Fleet cache benchmark (benches/fleet_cache.sh)", "",
             f"- command: `{cmdline}`",
             f"- started {time.strftime('%Y-%m-%d %H:%M:%S')}, load average before the run {load}",
             "- knobs: " + ", ".join(f"{k}={K[k]}" for k in ("PARTS", "ROUNDS", "DURATION", "CONNS", "WRK_THREADS",
                                                             "THREADS", "SHARED_KEYS", "FILL_CONNS", "BODY", "KEYS2",
                                                             "ORIGIN_DELAY_MS", "ENTRIES3", "SAMPLE3", "PURGES4")),
             f"- tollgate: `{bin_}` built {built}; this repository at {rev}{'-dirty' if dirty else ''}",
             f"- nproc {os.cpu_count()}, kernel {os.uname().release}; {version(['redis-server', '--version'])}; "
             f"{version([shutil.which('nginx') or '/usr/sbin/nginx', '-v'])}; {version(['wrk', '-v'])}",
             f"- redis-server on 127.0.0.1:{redis_port} (`--save '' --appendonly no`); replicas: `server.threads: "
             f"{K['THREADS']}`, `work_stealing: false`, access log off, `cache.max_size: 1GiB`, route `cached` "
             "(`path_prefix: /`, `cache: {ttl: 60s, scope: shared}`) and route `pass` (`/pass/`, no cache); "
             "`redis: {url, required: true}` (default `command_timeout` 20ms, `key_prefix` tollgate)",
             ""]
    return "\n".join(lines)


def main():
    global K
    if len(sys.argv) > 1 and sys.argv[1] == "origin":
        origin_main(sys.argv[2:])
        return 0
    K = knobs()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if not os.access(K["TOLLGATE_BIN"], os.X_OK):
        raise SystemExit(f"[fleet_cache] {K['TOLLGATE_BIN']} missing: cargo build --release")
    for tool in ("redis-server", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"[fleet_cache] {tool} not on PATH")
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        raise SystemExit("[fleet_cache] nginx not found")
    cmdline = os.environ.get("FLEET_CACHE_CMDLINE", " ".join([sys.executable] + sys.argv))
    t_start = time.time()
    work = tempfile.mkdtemp(prefix="fleet_cache.")
    os.chmod(work, 0o755)  # nginx workers (user nobody when run as root) read the docroot in it
    parts = K["PARTS"].split()
    rc = 0
    try:
        redis_proc, redis_port, redis = start_redis(work)
        _, up_port = start_nginx(work)
        # The bodies must be what the report says.
        for path, n in (("/c/check", K["BODY"]), ("/b1k/check", 1024), ("/b10k/check", 10240)):
            c = Client(up_port)
            st, h, d = c.request("GET", path)
            c.close()
            if st != 200 or len(d) != n or h.get("cache-control") != "max-age=300":
                raise Fatal(f"upstream GET {path} -> {st}, {len(d)} bytes, Cache-Control {h.get('cache-control')}")
        report = [header(cmdline, redis_port)]
        if "1" in parts:
            report.append(report_part1(part1(work, redis, redis_port, redis_proc, up_port)))
        if "2" in parts:
            report.append(report_part2(part2(work, redis, redis_port)))
        if "3" in parts:
            report.append(report_part3(part3(work, redis, redis_port, up_port)))
        if "4" in parts:
            report.append(report_part4(part4(work, redis, redis_port, up_port)))
        report.append(f"Run time: {time.time() - t_start:.0f} s")
        print("\n".join(report))
        if any("FAIL" in r for r in report):
            rc = 1
    except Fatal as e:
        log(f"ERROR: {e}")
        rc = 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}): stopping everything")
        rc = 130
    finally:
        PROCS.stop_all()
        if K["KEEP_TMP"]:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
