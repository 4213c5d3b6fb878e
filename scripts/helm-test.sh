#!/usr/bin/env bash
# Offline tests of the Helm chart helm/tollgate (no Kubernetes cluster, no network but PyPI).
#
#   scripts/helm-test.sh            # from anywhere; exit 0 only if every check passed
#
# What it does, each check printed as PASS or FAIL:
#   - installs what it needs in a venv (helm-sdkpy, kubernetes-validate, check-jsonschema, pinned);
#   - lints the chart (Helm's own linter, through helm-sdkpy) with its defaults and with each
#     helm/tollgate/ci/*-values.yaml;
#   - renders the chart for the defaults and for each ci/*-values.yaml by a real `helm install`
#     (helm-sdkpy has no `template`) against a fake API server on 127.0.0.1 that stores what it
#     is sent, once reporting Kubernetes 1.29 and once the newest version kubernetes-validate
#     ships; and checks the chart's contract with the injector binary on what it rendered;
#   - validates every rendered object with kubernetes-validate --strict for both versions (custom
#     resources it has no schema for are listed as skipped, with the reason);
#   - helm upgrade keeps the generated webhook certificate (lookup), kubeVersion < 1.29 is refused;
#   - every values file in ci/bad/ is refused, with the message its `# expect:` line names;
#   - tests/fixtures/inject/*.patched.yaml (pods patched by `tollgate inject`), if the directory
#     exists: kubernetes-validate --strict for 1.29 and the newest version;
#   - `tollgate check` on the example sidecar config and on every standalone config the chart
#     renders, with a tollgate binary: $TOLLGATE_BIN, else target/debug/tollgate, else
#     target/release/tollgate (build one first: cargo build --bin tollgate).
#
# Environment: TOLLGATE_HELM_VENV (default ~/.cache/tollgate/helm-venv), HELM_TEST_OUT (rendered
# manifests, default target/helm-test), TOLLGATE_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TOLLGATE_HELM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/helm-venv}"
PINS=(helm-sdkpy==0.1.32 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)

die() { echo "FAIL setup: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

# helm-sdkpy needs Python >= 3.12. Take the first one found.
find_python() {
  local c
  for c in "${HELM_TEST_PYTHON:-}" python3.13 python3.12 python3 \
           "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$c" 2>/dev/null || echo "$c"
      return 0
    fi
  done
  return 1
}

if ! "$VENV/bin/python" -c 'import helm_sdkpy, kubernetes_validate, yaml' 2>/dev/null; then
  PIPFLAGS=()
  if ! PY="$(find_python)"; then
    # helm-sdkpy declares Python >= 3.12, but it is a cffi binding to Helm's Go library and this
    # whole script passed with it on Python 3.11.7. Take python3 >= 3.10 and say so.
    PY="$(command -v python3)" && "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
      || die "no Python >= 3.10 found; set HELM_TEST_PYTHON"
    PIPFLAGS=(--ignore-requires-python)
    echo "setup: no Python >= 3.12; helm-sdkpy goes on $("$PY" --version) with --ignore-requires-python"
  fi
  echo "setup: venv $VENV with $("$PY" --version) ..."
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIPFLAGS[@]}" "${PINS[@]}" \
    || die "pip install ${PINS[*]} failed"
fi
command -v openssl >/dev/null || die "openssl is needed to check the generated certificates (apt-get install openssl)"

export HELM_CACHE_HOME="${TMPDIR:-/tmp}/tollgate-helm-test/cache"
export HELM_CONFIG_HOME="${TMPDIR:-/tmp}/tollgate-helm-test/config"
export HELM_DATA_HOME="${TMPDIR:-/tmp}/tollgate-helm-test/data"
export TOLLGATE_ROOT="$ROOT"
# The checks, in Python (written to a file so that a failed assertion shows its source line).
PYFILE="$(mktemp "${TMPDIR:-/tmp}/helm-test.XXXXXX.py")"
trap 'rm -f "$PYFILE"' EXIT
cat > "$PYFILE" <<'PY'
import asyncio, base64, copy, glob, json, os, re, shutil, struct, subprocess, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

import yaml
import helm_sdkpy as helm
import kubernetes_validate
from kubernetes_validate import utils as kv

ROOT = os.environ["TOLLGATE_ROOT"]
CHART = os.path.join(ROOT, "helm", "tollgate")
OUT = os.environ.get("HELM_TEST_OUT", os.path.join(ROOT, "target", "helm-test"))
NS = "tollgate-system"
REL = "tg"
V129 = "1.29.0"
NEWEST = kv.latest_version()
VERSIONS = [V129, NEWEST]
T0 = time.time()

passed, failed = [], []
def check(name, ok, detail=""):
    (passed if ok else failed).append(name)
    print(("PASS " if ok else "FAIL ") + name + (("\n     " + detail.replace("\n", "\n     ")) if detail and not ok else (f"  ({detail})" if detail else "")), flush=True)
    return ok

# ------------------------------------------------------------------------------------------
# A fake API server: discovery for the kinds the chart uses, and a store of what is created.
# Helm keeps its release records in Secrets sent as protobuf; they are stored as sent and
# listed back in a protobuf SecretList. Everything else is JSON. PATCH is answered with the
# stored object unchanged (enough for helm upgrade; the manifest is what is checked).
# ------------------------------------------------------------------------------------------
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
RESOURCES = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("services", "Service", True),
           ("serviceaccounts", "ServiceAccount", True), ("pods", "Pod", True), ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "admissionregistration.k8s.io/v1": [("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "cert-manager.io/v1": [("issuers", "Issuer", True), ("certificates", "Certificate", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
}

def pb_fields(buf):
    """Top-level fields of a protobuf message: [(number, wiretype, value)]."""
    i, out = 0, []
    def varint():
        nonlocal i
        shift = val = 0
        while True:
            b = buf[i]; i += 1
            val |= (b & 0x7F) << shift; shift += 7
            if not b & 0x80: return val
    while i < len(buf):
        key = varint(); num, wt = key >> 3, key & 7
        if wt == 0: out.append((num, wt, varint()))
        elif wt == 2:
            n = varint(); out.append((num, wt, buf[i:i + n])); i += n
        elif wt == 1: out.append((num, wt, buf[i:i + 8])); i += 8
        elif wt == 5: out.append((num, wt, buf[i:i + 4])); i += 4
        else: raise ValueError("protobuf wire type %d" % wt)
    return out

def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)

def pb_field(num, data):
    return pb_varint(num << 3 | 2) + pb_varint(len(data)) + data

def pb_secret_labels(envelope):
    raw = [v for n, _, v in pb_fields(envelope[4:]) if n == 2][0]
    meta = [v for n, _, v in pb_fields(raw) if n == 1][0]
    labels = {}
    for n, _, entry in pb_fields(meta):
        if n == 11:
            kvs = dict((k, v) for k, _, v in pb_fields(entry))
            labels[kvs.get(1, b"").decode()] = kvs.get(2, b"").decode()
    return raw, labels

class FakeCluster:
    def __init__(self, version):
        self.version = version
        self.objects = {}      # (prefix, ns, resource, name) -> ("json", dict) | ("pb", bytes)
        self.requests = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown(); self.server.server_close()

    def kubeconfig(self):
        port = self.server.server_address[1]
        return ("apiVersion: v1\nkind: Config\n"
                f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
                "users: [{name: fake, user: {token: fake}}]\n"
                f"contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {NS}}}}}]\n"
                "current-context: fake\n")

    def handler(cluster):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def send(self, code, obj=None, raw=None, ctype="application/json"):
                body = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers(); self.wfile.write(body)
            def not_found(self, what):
                self.send(404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": f"{what} not found"})
            def route(self):
                u = urlparse(self.path); p = [x for x in u.path.split("/") if x]
                q = parse_qs(u.query)
                cluster.requests.append((self.command, u.path))
                if p == ["version"]:
                    major, minor, patch = cluster.version.split(".")
                    return ("version", major, minor, patch)
                if p == ["api"]: return ("api",)
                if p == ["apis"]: return ("apis",)
                if p[:1] == ["api"] and len(p) >= 2: gv, rest = p[1], p[2:]
                elif p[:1] == ["apis"] and len(p) >= 3: gv, rest = p[1] + "/" + p[2], p[3:]
                else: return ("unknown",)
                if not rest: return ("resources", gv)
                ns = None
                if rest[0] == "namespaces" and len(rest) >= 3:
                    ns, rest = rest[1], rest[2:]
                return ("object", gv, ns, rest[0], rest[1] if len(rest) > 1 else None, q)
            def body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n)
            def do_GET(self):
                r = self.route()
                if r[0] == "version":
                    return self.send(200, {"major": r[1], "minor": r[2], "gitVersion": f"v{r[1]}.{r[2]}.{r[3]}",
                                           "platform": "linux/amd64"})
                if r[0] == "api":
                    return self.send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
                if r[0] == "apis":
                    groups = {}
                    for gv in RESOURCES:
                        if "/" in gv:
                            g, v = gv.split("/")
                            groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
                    return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                        {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in groups.items()]})
                if r[0] == "resources":
                    if r[1] not in RESOURCES: return self.not_found(r[1])
                    return self.send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": r[1],
                        "resources": [{"name": n, "singularName": k.lower(), "namespaced": nsd, "kind": k, "verbs": VERBS}
                                      for n, k, nsd in RESOURCES[r[1]]]})
                if r[0] == "object":
                    _, gv, ns, res, name, q = r
                    if name is None:
                        return self.list(gv, ns, res, q)
                    obj = cluster.objects.get((gv, ns, res, name))
                    if obj is None: return self.not_found(f"{res} {name}")
                    if obj[0] == "pb": return self.send(200, raw=obj[1], ctype="application/vnd.kubernetes.protobuf")
                    return self.send(200, obj[1])
                return self.not_found(self.path)
            def list(self, gv, ns, res, q):
                want = {}
                for req in (q.get("labelSelector", [""])[0]).split(","):
                    if "=" in req:
                        k, v = req.split("=", 1); want[k.rstrip("=!")] = v
                items_pb, items_json = [], []
                for (g, n, rs, name), obj in sorted(cluster.objects.items()):
                    if (g, n, rs) != (gv, ns, res): continue
                    if obj[0] == "pb":
                        raw, labels = pb_secret_labels(obj[1])
                        if all(labels.get(k) == v for k, v in want.items()): items_pb.append(raw)
                    else:
                        labels = obj[1].get("metadata", {}).get("labels") or {}
                        if all(labels.get(k) == v for k, v in want.items()): items_json.append(obj[1])
                if "protobuf" in (self.headers.get("Accept") or "") and not items_json:
                    typemeta = pb_field(1, b"v1") + pb_field(2, b"SecretList" if res == "secrets" else b"List")
                    lst = pb_field(1, b"") + b"".join(pb_field(2, it) for it in items_pb)
                    env = b"k8s\x00" + pb_field(1, typemeta) + pb_field(2, lst) + pb_field(3, b"") + pb_field(4, b"")
                    return self.send(200, raw=env, ctype="application/vnd.kubernetes.protobuf")
                kind = {k for n, k, _ in RESOURCES.get(gv, []) if n == res}
                return self.send(200, {"kind": (kind.pop() if kind else "") + "List", "apiVersion": gv,
                                       "metadata": {"resourceVersion": "1"}, "items": items_json})
            def store(self, creating):
                r = self.route()
                if r[0] != "object": return self.not_found(self.path)
                _, gv, ns, res, name, q = r
                data = self.body()
                if "protobuf" in (self.headers.get("Content-Type") or ""):
                    raw, _ = pb_secret_labels(data)
                    meta = [v for n, _, v in pb_fields(raw) if n == 1][0]
                    name = name or [v for n, _, v in pb_fields(meta) if n == 1][0].decode()
                    cluster.objects[(gv, ns, res, name)] = ("pb", data)
                    return self.send(201 if creating else 200, raw=data, ctype="application/vnd.kubernetes.protobuf")
                obj = json.loads(data)
                meta = obj.setdefault("metadata", {})
                name = name or meta.get("name")
                if creating and (gv, ns, res, name) in cluster.objects:
                    return self.send(409, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                           "reason": "AlreadyExists", "code": 409, "message": f"{name} exists"})
                meta.setdefault("uid", f"uid-{len(cluster.objects)}"); meta["resourceVersion"] = "1"
                meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                if ns: meta.setdefault("namespace", ns)
                cluster.objects[(gv, ns, res, name)] = ("json", obj)
                return self.send(201 if creating else 200, obj)
            def do_POST(self): return self.store(True)
            def do_PUT(self): return self.store(False)
            def do_PATCH(self):
                r = self.route(); self.body()
                obj = cluster.objects.get((r[1], r[2], r[3], r[4])) if r[0] == "object" else None
                if obj is None: return self.not_found(self.path)
                return self.send(200, obj[1])
            def do_DELETE(self):
                r = self.route(); self.body()
                if r[0] == "object": cluster.objects.pop((r[1], r[2], r[3], r[4]), None)
                return self.send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        return H

def helm_install(cluster, values, chart=CHART, upgrade=False):
    cfg = helm.Configuration(namespace=NS, kubeconfig=cluster.kubeconfig())
    if upgrade:
        rel = asyncio.run(helm.Upgrade(cfg).run(REL, chart, values=values, wait=False, timeout=60, server_side_apply=False))
    else:
        rel = asyncio.run(helm.Install(cfg).run(REL, chart, values=values, wait=False, timeout=60))
    return rel

def docs_of(manifest):
    return [d for d in yaml.safe_load_all(manifest) if d]

def load_values(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}

# ------------------------------------------------------------------------------------------
# Contract checks on what the chart rendered.
# ------------------------------------------------------------------------------------------
def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]

def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1: raise AssertionError(f"expected one {kind}, got {len(found)}")
    return found[0]

def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

DEFAULTS = load_values(os.path.join(CHART, "values.yaml"))
SETTINGS_KEYS = {"image", "image_pull_policy", "log_level", "proxy_port", "admin_port", "config_map",
                 "resources", "drain_seconds", "app_pre_stop_sleep_seconds"}

def assert_pod_security(pod_spec, container):
    psc, sc = pod_spec.get("securityContext", {}), container.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, psc
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", psc
    assert sc.get("readOnlyRootFilesystem") is True, sc
    assert sc.get("allowPrivilegeEscalation") is False, sc
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], sc
    assert pod_spec.get("automountServiceAccountToken") is False

def contract_injector(docs, values, certs_out):
    v = deep_merge(DEFAULTS, values)
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert dep["spec"]["replicas"] == v["replicaCount"]
    assert c["image"] == f"{v['image']['repository']}:{v['image']['tag'] or '0.1.0'}", c["image"]
    assert c["args"] == ["inject-webhook", "--listen", "0.0.0.0:8443",
                         "--tls-cert", "/etc/tollgate-injector/tls/tls.crt",
                         "--tls-key", "/etc/tollgate-injector/tls/tls.key",
                         "--settings", "/etc/tollgate-injector/settings/settings.yaml",
                         "--admin", "0.0.0.0:9901"], c["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c[probe]["httpGet"]
        assert g["scheme"] == "HTTPS" and g["port"] == "https" and g["path"] == "/healthz", (probe, g)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https": 8443, "admin": 9901}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "subPath" not in mounts["/etc/tollgate-injector/tls"] and "subPath" not in mounts["/etc/tollgate-injector/settings"]
    assert_pod_security(spec, c)
    pdb = one(docs, "PodDisruptionBudget"); assert pdb["spec"]["minAvailable"] == 1
    # settings.yaml: exactly the contract's keys.
    cm = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings")][0]
    settings = yaml.safe_load(cm["data"]["settings.yaml"])
    assert set(settings) == SETTINGS_KEYS, sorted(set(settings) ^ SETTINGS_KEYS)
    inj = v["injection"]
    want_img = inj["image"] or f"{v['image']['repository']}:{v['image']['tag'] or '0.1.0'}"
    for k in SETTINGS_KEYS - {"image"}:
        assert settings[k] == inj[k], (k, settings[k], inj[k])
    assert settings["image"] == want_img, settings["image"]
    # The webhook.
    svc = one(docs, "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]][0] == ("https", 443, "https")
    mwc = one(docs, "MutatingWebhookConfiguration")
    wh = mwc["webhooks"][0]
    assert wh["admissionReviewVersions"] == ["v1"] and wh["sideEffects"] == "None"
    assert wh["failurePolicy"] == v["webhook"]["failurePolicy"] and wh["timeoutSeconds"] == v["webhook"]["timeoutSeconds"]
    assert wh["reinvocationPolicy"] == "Never" and "objectSelector" not in wh
    assert wh["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}], wh["rules"]
    cs = wh["clientConfig"]["service"]
    assert (cs["name"], cs["namespace"], cs["path"], cs["port"]) == (svc["metadata"]["name"], NS, "/mutate", 443), cs
    sel = wh["namespaceSelector"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NS]} in sel["matchExpressions"], sel
    assert sel.get("matchLabels") == v["webhook"]["namespaceSelector"].get("matchLabels"), sel
    # The API server's choice, evaluated as it does (every matchLabels pair and every
    # expression must hold; namespaces carry kubernetes.io/metadata.name): which namespaces'
    # pods reach the webhook at all. The webhook sees no namespace labels itself, so a pod in
    # an unlabelled namespace is left alone here, before any AdmissionReview is sent.
    def selects(labels):
        if any(labels.get(k) != val for k, val in sel.get("matchLabels", {}).items()):
            return False
        for e in sel.get("matchExpressions", []):
            key, op, vals = e["key"], e["operator"], e.get("values", [])
            if op == "In" and labels.get(key) not in vals: return False
            if op == "NotIn" and key in labels and labels[key] in vals: return False
            if op == "Exists" and key not in labels: return False
            if op == "DoesNotExist" and key in labels: return False
        return True
    # The labels a team gives a namespace to opt it in: the chart's matchLabels, and the first
    # value of each `In` expression the values add.
    wanted = dict(v["webhook"]["namespaceSelector"].get("matchLabels", {}))
    for e in v["webhook"]["namespaceSelector"].get("matchExpressions", []):
        if e["operator"] == "In":
            wanted[e["key"]] = e["values"][0]
    for name, labels, expect in [
        ("shop", wanted, True),           # a labelled namespace: its pods are injected
        ("payments", {}, False),          # an unlabelled namespace: never sent to the webhook
        (NS, wanted, False),              # the injector's own, even if labelled
    ]:
        got = selects({**labels, "kubernetes.io/metadata.name": name})
        assert got == expect, (name, labels, got, sel)
    if v["certManager"]["enabled"]:
        assert "caBundle" not in wh["clientConfig"]
        ann = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        certs = [d for d in by_kind(docs, "Certificate") if d["metadata"]["name"] == ann.split("/")[1]]
        assert ann.split("/")[0] == NS and len(certs) == 1, ann
        assert f"{svc['metadata']['name']}.{NS}.svc" in certs[0]["spec"]["dnsNames"]
        assert certs[0]["spec"]["secretName"] == spec["volumes"][0]["secret"]["secretName"]
        assert not [s for s in by_kind(docs, "Secret") if s.get("type") == "kubernetes.io/tls"]
        assert len(by_kind(docs, "Issuer")) == 2
    else:
        sec = [s for s in by_kind(docs, "Secret") if s.get("type") == "kubernetes.io/tls"]
        assert len(sec) == 1 and sec[0]["metadata"]["name"] == spec["volumes"][0]["secret"]["secretName"]
        assert wh["clientConfig"]["caBundle"] == sec[0]["data"]["ca.crt"]
        certs_out.update(sec[0]["data"])
        verify_certs(sec[0]["data"], f"{svc['metadata']['name']}.{NS}.svc")
    return "args, probes, settings.yaml keys, webhook rules/TLS, namespaceSelector picks a labelled namespace, not an unlabelled one nor its own"

def verify_certs(data, dns):
    with tempfile.TemporaryDirectory() as d:
        for k in ("ca.crt", "tls.crt", "tls.key"):
            with open(os.path.join(d, k), "wb") as f: f.write(base64.b64decode(data[k]))
        r = subprocess.run(["openssl", "verify", "-CAfile", f"{d}/ca.crt", f"{d}/tls.crt"], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(["openssl", "x509", "-in", f"{d}/tls.crt", "-noout", "-ext", "subjectAltName"], capture_output=True, text=True)
        assert f"DNS:{dns}" in r.stdout, r.stdout
        mod = lambda args: subprocess.run(args, capture_output=True, text=True).stdout
        assert mod(["openssl", "x509", "-in", f"{d}/tls.crt", "-noout", "-pubkey"]) == \
               mod(["openssl", "pkey", "-in", f"{d}/tls.key", "-pubout"]), "key does not match the certificate"

def contract_standalone(docs, values):
    v = deep_merge(DEFAULTS, values)
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["args"] == ["run", "-c", "/etc/tollgate/tollgate.yaml"], c["args"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert_pod_security(spec, c)
    sd = v["shutdown"]
    assert spec["terminationGracePeriodSeconds"] == sd["preStopSleepSeconds"] + sd["gracePeriodSeconds"] + sd["shutdownTimeoutSeconds"] + 5
    if sd["preStopSleepSeconds"]:
        assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": sd["preStopSleepSeconds"]}}
    mount = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/tollgate"][0]
    assert "subPath" not in mount
    svc = one(docs, "Service")
    names = [p["name"] for p in svc["spec"]["ports"]]
    assert names == (["http", "admin"] if v["admin"]["expose"] else ["http"]), names
    assert ("replicas" in dep["spec"]) != v["autoscaling"]["enabled"]
    assert bool(by_kind(docs, "HorizontalPodAutoscaler")) == v["autoscaling"]["enabled"]
    assert bool(by_kind(docs, "ServiceMonitor")) == v["serviceMonitor"]["enabled"]
    assert bool(by_kind(docs, "NetworkPolicy")) == v["networkPolicy"]["enabled"]
    env = {e["name"]: e for e in c.get("env", [])}
    redis = bool(v["redis"]["url"] or v["redis"]["existingSecret"])
    assert ("REDIS_URL" in env) == redis and "value" not in env.get("REDIS_URL", {}), env
    if v["redis"]["url"]:
        sec = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"]]
        assert base64.b64decode(sec[0]["data"]["url"]).decode() == v["redis"]["url"]
    if v["networkPolicy"]["enabled"]:
        np = one(docs, "NetworkPolicy")
        admin_rules = [r for r in np["spec"]["ingress"] if any(p["port"] == v["admin"]["port"] for p in r["ports"])]
        assert all(r.get("from") for r in admin_rules) and admin_rules, np
    if v["serviceMonitor"]["enabled"]:
        sm = one(docs, "ServiceMonitor")
        assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["jobLabel"] == "app.kubernetes.io/name"
    cm = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == spec["volumes"][0]["configMap"]["name"]][0]
    return cm["data"]["tollgate.yaml"]

# ------------------------------------------------------------------------------------------
def validate_objects(tag, docs):
    """kubernetes-validate --strict, per object, for 1.29 and the newest version."""
    for ver in VERSIONS:
        errors, skipped, ok = [], [], 0
        for d in docs:
            meta = d.get("metadata") or {}
            kn = f"{d.get('kind')}/{meta.get('name') or meta.get('generateName') or '?'}"
            try:
                kubernetes_validate.validate(d, ver, strict=True); ok += 1
            except kv.SchemaNotFoundError as e:
                skipped.append(f"{kn} ({d['apiVersion']})")
            except kv.ValidationError as e:
                errors.append(f"{kn}: {'.'.join(map(str, e.path))}: {e.message}")
        check(f"{tag}: kubernetes-validate --strict {ver}", not errors and ok > 0,
              "\n".join(errors) if errors else f"{ok} objects valid" + (
                  f"; skipped, no schema in kubernetes-validate (custom resource): {', '.join(skipped)}" if skipped else ""))

def lint(tag, values):
    """Helm's linter on a copy of the chart whose values.yaml is defaults + values."""
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "tollgate")
        shutil.copytree(CHART, c, ignore=shutil.ignore_patterns("ci"))
        with open(os.path.join(c, "values.yaml"), "w") as f:
            yaml.safe_dump(deep_merge(DEFAULTS, values), f, sort_keys=False)
        cfg = helm.Configuration(namespace=NS)
        res = asyncio.run(helm.Lint(cfg).run(c))
    msgs = res.get("Messages") or res.get("messages") or []
    # Severity: 1 info, 2 warning, 3 error. Errors and warnings fail; INFO (e.g. "icon is recommended") is shown.
    bad = [m for m in msgs if (m.get("Severity") or m.get("severity") or 0) >= 2] + [{"Err": e} for e in (res.get("Errors") or [])]
    info = [str(m.get("Err") or m) for m in msgs if m not in bad]
    check(f"{tag}: helm lint", not bad, "\n".join(str(m.get("Err") or m) for m in bad) if bad else (f"{len(info)} info: " + "; ".join(info) if info else "clean"))

def tollgate_bin():
    for p in (os.environ.get("TOLLGATE_BIN"), os.path.join(ROOT, "target/debug/tollgate"), os.path.join(ROOT, "target/release/tollgate")):
        if p and os.access(p, os.X_OK): return p
    return None

def tollgate_check(tag, text, env):
    tg = tollgate_bin()
    if not tg:
        return check(f"{tag}: tollgate check", False, "no tollgate binary: set TOLLGATE_BIN or run cargo build --bin tollgate")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text); f.flush()
        r = subprocess.run([tg, "check", f.name], capture_output=True, text=True, env={**os.environ, **env})
    return check(f"{tag}: tollgate check", r.returncode == 0, (r.stdout + r.stderr).strip().replace(f.name, "tollgate.yaml"))

CHECK_ENV = {"TOLLGATE_LISTEN": "0.0.0.0:8080", "TOLLGATE_ADMIN_LISTEN": "0.0.0.0:9901", "APP_ADDR": "127.0.0.1:3000",
             "REDIS_URL": "redis://127.0.0.1:6379"}

# ------------------------------------------------------------------------------------------
os.makedirs(OUT, exist_ok=True)
for stale in glob.glob(os.path.join(OUT, "*.yaml")) + glob.glob(os.path.join(OUT, "*.NOTES.txt")): os.remove(stale)
print(f"helm-sdkpy {helm.__version__} ({helm.get_version()}), kubernetes-validate {kubernetes_validate.__version__} "
      f"(schemas {kv.all_versions()[0]}..{NEWEST}); chart {CHART}; rendered manifests in {OUT}", flush=True)

cases = [("default", {})] + [(os.path.basename(p)[:-len("-values.yaml")], load_values(p))
                             for p in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))]
check("ci values matrix has the four required cases",
      {"injector-default", "injector-certmanager", "standalone-minimal", "standalone-full"} <= {n for n, _ in cases},
      ", ".join(n for n, _ in cases))

# The schema itself (draft-07 metaschema), and the values files against it, with check-jsonschema.
CJS = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
SCHEMA = os.path.join(CHART, "values.schema.json")
r = subprocess.run([CJS, "--check-metaschema", SCHEMA], capture_output=True, text=True)
check("values.schema.json is valid draft-07 (check-jsonschema --check-metaschema)",
      r.returncode == 0 and json.load(open(SCHEMA)).get("$schema") == "http://json-schema.org/draft-07/schema#", (r.stdout + r.stderr).strip())
good = [os.path.join(CHART, "values.yaml")] + sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))
r = subprocess.run([CJS, "--schemafile", SCHEMA] + good, capture_output=True, text=True)
check(f"values.yaml and ci/*-values.yaml match the schema (check-jsonschema, {len(good)} files)", r.returncode == 0, (r.stdout + r.stderr).strip())

lint("default values", {})
for name, values in cases[1:]:
    lint(f"ci/{name}", values)

for name, values in cases:
    mode = deep_merge(DEFAULTS, values)["mode"]
    rendered = {}
    for ver in VERSIONS:
        cluster = FakeCluster(ver)
        try:
            rel = helm_install(cluster, values)
            rendered[ver] = rel["manifest"]
            notes = (rel.get("info") or {}).get("notes") or ""
            if ver == V129:
                want = "tollgate.io/inject=enabled" if mode == "injector" else "port-forward"
                check(f"{name}: NOTES.txt rendered", want in notes, notes if want not in notes else f"{len(notes.splitlines())} lines")
                with open(os.path.join(OUT, f"{name}.NOTES.txt"), "w") as f: f.write(notes)
            ok = check(f"{name}: helm install (fake API server, Kubernetes {ver})", True,
                       f"{len(docs_of(rel['manifest']))} objects, {sum(1 for m, _ in cluster.requests if m == 'POST')} POSTs")
        except helm.HelmError as e:
            check(f"{name}: helm install (fake API server, Kubernetes {ver})", False, str(e))
        finally:
            cluster.close()
    if V129 not in rendered: continue
    manifest = rendered[V129]
    with open(os.path.join(OUT, f"{name}.yaml"), "w") as f: f.write(manifest)
    docs = docs_of(manifest)
    validate_objects(name, docs)
    if name == "default" and os.path.isfile(os.path.join(ROOT, "tests", "fixtures", "inject", "settings.yaml")):
        cm = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings")][0]
        mine = yaml.safe_load(cm["data"]["settings.yaml"])
        theirs = load_values(os.path.join(ROOT, "tests", "fixtures", "inject", "settings.yaml"))
        check("default settings.yaml = tests/fixtures/inject/settings.yaml (the injector's fixtures)", mine == theirs,
              "" if mine == theirs else f"chart: {mine}\nfixture: {theirs}")
    certs = {}
    try:
        if mode == "injector":
            what = contract_injector(docs, values, certs)
        else:
            config_text = contract_standalone(docs, values)
            what = "probes, security, grace, ports, HPA/ServiceMonitor/NetworkPolicy/Redis toggles"
        check(f"{name}: contract checks", True, what)
    except AssertionError as e:
        import traceback
        check(f"{name}: contract checks", False, traceback.format_exc(limit=-1).strip())
        continue
    if mode == "standalone":
        tollgate_check(f"{name}: rendered tollgate.yaml", config_text, CHECK_ENV)
    for cm in by_kind(docs, "ConfigMap"):
        if "tollgate.yaml" in cm.get("data", {}) and mode == "injector":
            tollgate_check(f"{name}: example ConfigMap {cm['metadata']['namespace']}/{cm['metadata']['name']}", cm["data"]["tollgate.yaml"], CHECK_ENV)

# helm upgrade keeps the generated certificate; two installs get different ones.
cluster = FakeCluster(V129)
try:
    first = docs_of(helm_install(cluster, {})["manifest"])
    second = docs_of(helm_install(cluster, {"replicaCount": 3}, upgrade=True)["manifest"])
    tls = lambda docs: [d for d in docs if d.get("type") == "kubernetes.io/tls"][0]["data"]
    bundle = lambda docs: one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
    lookups = sum(1 for m, p in cluster.requests if m == "GET" and p.endswith("/secrets/tg-tollgate-tls"))
    check("helm upgrade keeps the generated webhook certificate (lookup)",
          tls(first) == tls(second) and bundle(first) == bundle(second) == tls(first)["ca.crt"]
          and one(second, "Deployment")["spec"]["replicas"] == 3,
          f"same ca.crt/tls.crt/tls.key and caBundle after upgrade; {lookups} GETs of the Secret")
finally:
    cluster.close()
cluster = FakeCluster(V129)
try:
    other = docs_of(helm_install(cluster, {})["manifest"])
    check("a new install generates a new CA", tls(other)["ca.crt"] != tls(first)["ca.crt"])
finally:
    cluster.close()

# kubeVersion >= 1.29 (native sidecars).
cluster = FakeCluster("1.28.9")
try:
    helm_install(cluster, {})
    check("Kubernetes 1.28 is refused (Chart.yaml kubeVersion)", False, "install passed")
except helm.HelmError as e:
    check("Kubernetes 1.28 is refused (Chart.yaml kubeVersion)", "kubeVersion" in str(e) or "1.28" in str(e), str(e).strip())
finally:
    cluster.close()

# Bad values are refused with the expected message.
for path in sorted(glob.glob(os.path.join(CHART, "ci", "bad", "*-values.yaml"))):
    name = os.path.basename(path)
    expect = re.search(r"^# expect: (.+)$", open(path).read(), re.M)
    if not expect:
        check(f"ci/bad/{name}", False, "no '# expect: <text of the message>' line"); continue
    expect = expect.group(1).strip()
    cluster = FakeCluster(V129)
    try:
        helm_install(cluster, load_values(path))
        check(f"ci/bad/{name} is refused", False, "helm install accepted it")
    except helm.HelmError as e:
        msg = str(e)
        is_schema = "schema" in msg
        want_schema = not expect.startswith("template: ")
        text = expect[len("template: "):] if not want_schema else expect
        check(f"ci/bad/{name} is refused", text in msg and is_schema == want_schema,
              " ".join(msg.split())[:300] if (text in msg and is_schema == want_schema) else f"expected {'a schema' if want_schema else 'a template'} message containing {text!r}, got: {msg}")
    finally:
        cluster.close()

# The example sidecar config shipped in the chart.
tollgate_check("files/tollgate-sidecar.yaml", open(os.path.join(CHART, "files", "tollgate-sidecar.yaml")).read(), CHECK_ENV)

# Pods patched by `tollgate inject` (the lead's fixtures), when present.
fixtures = os.path.join(ROOT, "tests", "fixtures", "inject")
if os.path.isdir(fixtures):
    files = sorted(glob.glob(os.path.join(fixtures, "*.patched.yaml")))
    check("tests/fixtures/inject has *.patched.yaml files", bool(files), f"{len(files)} files")
    for p in files:
        try:
            docs = docs_of(open(p).read())
        except yaml.YAMLError as e:
            check(f"fixtures/{os.path.basename(p)}: YAML", False, str(e)); continue
        validate_objects(f"fixtures/{os.path.basename(p)}", docs)
else:
    print(f"note: {os.path.relpath(fixtures, ROOT)} does not exist: no injected pods to validate", flush=True)

print(f"wall time {time.time() - T0:.1f}s")
print(f"{len(passed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
PY
"$VENV/bin/python" "$PYFILE" "$@"
