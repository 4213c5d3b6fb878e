//! Kubernetes injection, offline: AdmissionReview fixtures sent over HTTPS to a running
//! `tollgate inject-webhook`, each answer compared with its golden file (and the patched pod with
//! the golden pod, which `scripts/helm-test.sh` validates against the Kubernetes schemas);
//! `tollgate inject` on the same pods gives the same pods; the sidecar's command line and config
//! start a real tollgate that proxies; the serving certificate rotates without a restart.
//!
//! Golden files: `tests/fixtures/inject/<case>.answer.json` and `<case>.patched.yaml`.
//! `UPDATE_GOLDEN=1 cargo test --test inject` rewrites them; review the diff before committing.

mod common;

use common::{bin, free_addr, Upstream};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CASES: [&str; 5] = [
    "deployment-pod",
    "bare-pod",
    "opted-out",
    "port-taken",
    "own-tollgate",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn admission_review(pod: &Value, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// A golden file: compared with `actual`, or rewritten with it under `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = fixtures().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (UPDATE_GOLDEN=1 cargo test --test inject writes it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 to accept the new output)",
        path.display()
    );
}

/// A CA and a serving certificate for `localhost`/127.0.0.1, made with the openssl CLI.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let certs = Certs {
            dir: tempfile::tempdir().unwrap(),
        };
        certs.sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=tollgate-injector-test-ca");
        certs.issue("tls");
        certs
    }

    fn sh(&self, cmd: &str) {
        let ok = Command::new("sh")
            .args(["-c", cmd])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "`{cmd}` failed");
    }

    /// `<name>.crt` and `<name>.key`, signed by the CA.
    fn issue(&self, name: &str) {
        self.sh(&format!("openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN=tollgate-injector.shop.svc"));
        self.sh(&format!("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext && openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 1 -extfile ext"));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running `tollgate inject-webhook`, killed on drop.
struct Webhook {
    child: Child,
    https: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start(certs: &Certs) -> Webhook {
        let (https, admin) = (free_addr(), free_addr());
        let child = Command::new(bin())
            .arg("inject-webhook")
            .args([
                "--listen",
                &https.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .arg("--tls-cert")
            .arg(certs.path("tls.crt"))
            .arg("--tls-key")
            .arg(certs.path("tls.key"))
            .arg("--settings")
            .arg(fixtures().join("settings.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tollgate inject-webhook");
        let webhook = Webhook {
            child,
            https,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while plain_get(admin, "/healthz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "the webhook did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        webhook
    }

    /// One HTTPS exchange, verified against the test CA: (status, body, the served
    /// certificate's SHA-256).
    fn exchange(
        &self,
        certs: &Certs,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector.set_ca_file(certs.path("ca.crt")).unwrap();
        connector.set_verify(SslVerifyMode::PEER);
        let tcp = TcpStream::connect(self.https).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = connector
            .build()
            .connect("localhost", tcp)
            .expect("TLS handshake");
        let fingerprint = tls
            .ssl()
            .peer_certificate()
            .expect("a certificate")
            .digest(openssl::hash::MessageDigest::sha256())
            .unwrap()
            .to_vec();
        write!(
            tls,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        tls.write_all(body).unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string(), fingerprint)
    }

    fn review(&self, certs: &Certs, review: &Value) -> Value {
        let (status, body, _) = self.exchange(
            certs,
            "POST",
            "/mutate",
            &serde_json::to_vec(review).unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Plain HTTP GET (the admin listener, the sidecar under test): (status, body).
fn plain_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

/// The answer with its base64 patch decoded (a golden file a person can read), and the pod
/// after the patch.
fn decode(answer: &Value, pod: &Value) -> (Value, Value) {
    let mut readable = answer.clone();
    let mut patched = pod.clone();
    if let Some(patch) = answer["response"]["patch"].as_str() {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let ops: Value = serde_json::from_slice(&bytes).unwrap();
        let parsed: json_patch::Patch = serde_json::from_value(ops.clone()).unwrap();
        json_patch::patch(&mut patched, &parsed).expect("the patch applies to the pod");
        readable["response"]["patch"] = ops;
    }
    (readable, patched)
}

#[test]
fn webhook_answers_every_fixture_over_https_as_its_golden_file() {
    let certs = Certs::new();
    let webhook = Webhook::start(&certs);
    for case in CASES {
        let pod = yaml_file(&fixtures().join(format!("{case}.yaml")));
        let answer = webhook.review(&certs, &admission_review(&pod, &format!("uid-{case}")));
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], format!("uid-{case}"));
        let (readable, patched) = decode(&answer, &pod);
        golden(
            &format!("{case}.answer.json"),
            &(serde_json::to_string_pretty(&readable).unwrap() + "\n"),
        );
        let injected = answer["response"]["patch"].is_string();
        assert_eq!(
            injected,
            ["deployment-pod", "bare-pod"].contains(&case),
            "{case}: {answer}"
        );
        if injected {
            golden(
                &format!("{case}.patched.yaml"),
                &serde_yaml::to_string(&patched).unwrap(),
            );
            // Injected once, the pod is left alone the second time (the API server may call a
            // webhook again; a ReplicaSet may re-create from an injected template).
            let again = webhook.review(&certs, &admission_review(&patched, "uid-again"));
            assert_eq!(again["response"]["allowed"], true);
            assert!(again["response"].get("patch").is_none(), "{again}");
        }
    }
    // The refusals say what to change.
    let refused = yaml_file(&fixtures().join("port-taken.yaml"));
    let answer = webhook.review(&certs, &admission_review(&refused, "u"));
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("set the annotation tollgate.io/proxy-port"),
        "{message}"
    );

    // Not a review: 400, not a crash; other paths 404; /healthz on the HTTPS port too.
    let (status, body, _) = webhook.exchange(&certs, "POST", "/mutate", b"{\"kind\":");
    assert_eq!(status, 400, "{body}");
    assert_eq!(webhook.exchange(&certs, "GET", "/nope", b"").0, 404);
    assert_eq!(webhook.exchange(&certs, "GET", "/healthz", b"").0, 200);

    // Every review counted by outcome.
    let (_, metrics) = plain_get(webhook.admin, "/metrics").unwrap();
    for (outcome, n) in [
        ("injected", 2),
        ("already_injected", 2),
        ("opted_out", 1),
        ("refused", 3),
        ("invalid", 1),
    ] {
        let line = format!("tollgate_injector_reviews_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    assert!(metrics.contains("tollgate_injector_certificate_not_after_timestamp_seconds "));
}

#[test]
fn inject_command_gives_the_webhooks_pods() {
    // The same pods, as one multi-document file with a Deployment and a List around two of them.
    let deployment_pod = yaml_file(&fixtures().join("deployment-pod.yaml"));
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop-api", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "shop-api"}},
            "template": {"metadata": deployment_pod["metadata"], "spec": deployment_pod["spec"]},
        },
    });
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        yaml_file(&fixtures().join("bare-pod.yaml")),
        yaml_file(&fixtures().join("opted-out.yaml")),
    ]});
    let input = [deployment, list]
        .iter()
        .map(|v| serde_yaml::to_string(v).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, &input).unwrap();
    let out = Command::new(bin())
        .args(["inject", "-f"])
        .arg(&file)
        .arg("--settings")
        .arg(fixtures().join("settings.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "deployment/shop-api injected",
            "pod/worker injected",
            "pod/batch opted out (tollgate.io/inject: false), unchanged"
        ]
    );
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    assert_eq!(docs.len(), 2);
    let golden_pod = |case: &str| yaml_file(&fixtures().join(format!("{case}.patched.yaml")));
    let want = golden_pod("deployment-pod");
    assert_eq!(docs[0]["spec"]["template"]["spec"], want["spec"]);
    assert_eq!(docs[0]["spec"]["template"]["metadata"], want["metadata"]);
    assert_eq!(docs[1]["items"][0], golden_pod("bare-pod"));
    assert_eq!(
        docs[1]["items"][1],
        yaml_file(&fixtures().join("opted-out.yaml"))
    );

    // A refusal: the document comes out unchanged, the reason on stderr, exit 1.
    let out = Command::new(bin())
        .args(["inject", "-f"])
        .arg(fixtures().join("port-taken.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("pod/legacy NOT injected: port 8080"),
        "{stderr}"
    );
    // Bad settings: the file and the key.
    std::fs::write(dir.path().join("bad.yaml"), "proxy_port: 9901\n").unwrap();
    let out = Command::new(bin())
        .args(["inject", "-f"])
        .arg(&file)
        .arg("--settings")
        .arg(dir.path().join("bad.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: admin_port: 9901 is also proxy_port"),
        "{stderr}"
    );
}

/// The container the injector adds, run here as the kubelet would: its args, its environment,
/// the ConfigMap's files where its volume is mounted. It must start and proxy to the app.
#[tokio::test]
async fn the_injected_sidecar_starts_with_its_command_and_config_and_proxies() {
    let app = Upstream::start().await;
    let (proxy, admin) = (free_addr(), free_addr());
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "annotations": {
            "tollgate.io/proxy-port": proxy.port().to_string(),
            "tollgate.io/admin-port": admin.port().to_string(),
        }},
        "spec": {"containers": [{"name": "app", "image": "app:1",
            "ports": [{"containerPort": app.addr().port()}]}]},
    });
    let out = Command::new(bin())
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(serde_yaml::to_string(&pod).unwrap().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let sidecar = &injected["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");

    // The volume: the ConfigMap's keys as files in a directory.
    let configmap = yaml_file(&fixtures().join("configmap.yaml"));
    let volume = tempfile::tempdir().unwrap();
    for (key, text) in configmap["data"].as_object().unwrap() {
        std::fs::write(volume.path().join(key), text.as_str().unwrap()).unwrap();
    }
    let mount = sidecar["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<String> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.strip_prefix(mount) {
                Some(rest) => format!("{}{rest}", volume.path().display()),
                None => a.to_string(),
            }
        })
        .collect();
    let mut command = Command::new(bin());
    command
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in sidecar["env"].as_array().unwrap() {
        command.env(
            var["name"].as_str().unwrap(),
            var["value"].as_str().unwrap(),
        );
    }
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _sidecar = Killed(command.spawn().expect("start the sidecar's command"));

    // Its probes, on the ports they name, then a request through it.
    let admin_port = sidecar["ports"][1]["containerPort"].as_u64().unwrap() as u16;
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"]["port"],
        "tollgate-admin"
    );
    assert_eq!(sidecar["ports"][1]["name"], "tollgate-admin");
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let readiness = sidecar["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let ready = common::eventually(Duration::from_secs(10), || {
        let path = readiness.clone();
        async move {
            tokio::task::spawn_blocking(move || plain_get(admin_addr, &path))
                .await
                .unwrap()
                .is_some_and(|(s, _)| s == 200)
        }
    })
    .await;
    assert!(ready, "the sidecar never became ready");
    let liveness = sidecar["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = tokio::task::spawn_blocking(move || plain_get(admin_addr, &liveness))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let proxy_port = sidecar["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    assert_eq!(sidecar["ports"][0]["name"], "tollgate");
    let (status, body) = tokio::task::spawn_blocking(move || {
        plain_get(SocketAddr::from(([127, 0, 0, 1], proxy_port)), "/hello")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.count(), 1);
}

#[test]
fn the_serving_certificate_rotates_without_a_restart_and_a_bad_pair_keeps_the_old_one() {
    let certs = Certs::new();
    let webhook = Webhook::start(&certs);
    let (_, _, first) = webhook.exchange(&certs, "GET", "/healthz", b"");
    // A rotation as a Secret volume does it: new files swapped in.
    certs.issue("next");
    for ext in ["crt", "key"] {
        std::fs::copy(
            certs.path(&format!("next.{ext}")),
            certs.path(&format!("new.{ext}")),
        )
        .unwrap();
        std::fs::rename(
            certs.path(&format!("new.{ext}")),
            certs.path(&format!("tls.{ext}")),
        )
        .unwrap();
    }
    let (status, _, second) = webhook.exchange(&certs, "GET", "/healthz", b"");
    assert_eq!(status, 200);
    assert_ne!(first, second, "still serving the old certificate");
    // A broken certificate file: the last good pair is still served, and the error counted.
    std::fs::write(certs.path("tls.crt"), "not a certificate\n").unwrap();
    let (status, _, third) = webhook.exchange(&certs, "GET", "/healthz", b"");
    assert_eq!(status, 200);
    assert_eq!(third, second);
    let (_, metrics) = plain_get(webhook.admin, "/metrics").unwrap();
    assert!(
        metrics.contains("tollgate_injector_certificate_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_injector_certificate_reloads_total{result=\"error\"}"));
}

#[test]
fn webhook_refuses_to_start_on_missing_or_mismatched_certificate_files() {
    let certs = Certs::new();
    certs.issue("other");
    for (cert, key, says) in [
        ("missing.crt", "tls.key", "missing.crt: No such file"),
        (
            "tls.crt",
            "other.key",
            "the key does not belong to the certificate",
        ),
    ] {
        let out = Command::new(bin())
            .arg("inject-webhook")
            .args([
                "--listen",
                &free_addr().to_string(),
                "--admin",
                &free_addr().to_string(),
            ])
            .arg("--tls-cert")
            .arg(certs.path(cert))
            .arg("--tls-key")
            .arg(certs.path(key))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}
