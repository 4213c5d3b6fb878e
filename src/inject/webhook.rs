//! `tollgate inject-webhook`: the in-cluster door. An HTTPS server for the API server's
//! `admission.k8s.io/v1` AdmissionReview (`POST /mutate`), answering with a JSONPatch made by
//! [`super::mutate`], plus `GET /healthz`; and a plain-HTTP admin listener with `/healthz` and
//! `/metrics`. The certificate and key are read from files and read again when their content
//! changes (a Secret mounted as a directory is rotated in place), checked at every handshake:
//! the rotation needs no restart, and a bad new pair keeps the last good one.

use super::mutate::{inject, Outcome};
use super::settings::Settings;
use async_trait::async_trait;
use base64::Engine as _;
use http::{Response, StatusCode};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::http::ServerSession;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::ssl::SslRef;
use pingora_core::tls::x509::X509;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// The injector's metrics, in their own registry: the process serves no proxy traffic.
struct Metrics {
    registry: Registry,
    reviews: IntCounterVec,
    duration: HistogramVec,
    cert_reloads: IntCounterVec,
    cert_not_after: IntGauge,
}

static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let registry = Registry::new();
    let reviews = IntCounterVec::new(
        Opts::new(
            "tollgate_injector_reviews_total",
            "AdmissionReviews answered, by outcome: injected, already_injected, opted_out, refused, skipped (not a pod CREATE), invalid (a 400).",
        ),
        &["outcome"],
    )
    .expect("metric");
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_injector_review_duration_seconds",
            "Time to answer an AdmissionReview, from its request header to the answer.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        ]),
        &["outcome"],
    )
    .expect("metric");
    let cert_reloads = IntCounterVec::new(
        Opts::new(
            "tollgate_injector_certificate_reloads_total",
            "Certificate and key files read again after they changed, by result (ok, error: the last good pair stays).",
        ),
        &["result"],
    )
    .expect("metric");
    let cert_not_after = IntGauge::new(
        "tollgate_injector_certificate_not_after_timestamp_seconds",
        "Expiry of the serving certificate in use (Unix time).",
    )
    .expect("metric");
    registry
        .register(Box::new(reviews.clone()))
        .expect("register");
    registry
        .register(Box::new(duration.clone()))
        .expect("register");
    registry
        .register(Box::new(cert_reloads.clone()))
        .expect("register");
    registry
        .register(Box::new(cert_not_after.clone()))
        .expect("register");
    Metrics {
        registry,
        reviews,
        duration,
        cert_reloads,
        cert_not_after,
    }
});

/// The answer to one AdmissionReview: the HTTP status, the body, and the outcome label.
pub struct Answer {
    /// 200 for any review answered (allowed or not); 400 for a request that is not one.
    pub status: u16,
    /// The AdmissionReview answer (or an error object).
    pub body: Value,
    /// For the metrics: injected, already_injected, opted_out, refused, skipped, invalid.
    pub outcome: &'static str,
}

fn invalid(message: String) -> Answer {
    Answer {
        status: 400,
        body: json!({"error": "bad_request", "message": message}),
        outcome: "invalid",
    }
}

/// Answers an AdmissionReview (the request body). Pure: the HTTP server, the tests and any
/// other caller get the same answer for the same review.
pub fn review(body: &[u8], settings: &Settings) -> Answer {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("not JSON: {e}")),
    };
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return invalid(format!(
            "not an admission.k8s.io/v1 AdmissionReview (apiVersion {}, kind {})",
            review["apiVersion"], review["kind"]
        ));
    }
    let request = &review["request"];
    let Some(uid) = request["uid"].as_str() else {
        return invalid("request.uid is missing".into());
    };
    let answer = |response: Value, outcome| Answer {
        status: 200,
        body: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        outcome,
    };
    let allowed = json!({"uid": uid, "allowed": true});
    let is_pod = request["kind"]["kind"] == "Pod"
        && request["kind"]["group"].as_str().unwrap_or("").is_empty();
    if !is_pod || request["operation"] != "CREATE" || request["subResource"].is_string() {
        // The webhook's rules send only pod CREATEs; anything else passes untouched.
        return answer(allowed, "skipped");
    }
    let Some(original) = request.get("object").filter(|o| o.is_object()) else {
        return invalid("request.object (the Pod) is missing".into());
    };
    let mut pod = original.clone();
    match inject(&mut pod, settings) {
        Outcome::Injected => {
            let patch = json_patch::diff(original, &pod);
            let patch = serde_json::to_vec(&patch).expect("a patch is JSON");
            let mut response = allowed;
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            answer(response, "injected")
        }
        Outcome::AlreadyInjected => answer(allowed, "already_injected"),
        Outcome::OptedOut => answer(allowed, "opted_out"),
        Outcome::Refused(message) => {
            let name = original["metadata"]["name"]
                .as_str()
                .or(original["metadata"]["generateName"].as_str())
                .unwrap_or("");
            let response = json!({
                "uid": uid,
                "allowed": false,
                "status": {
                    "code": 400,
                    "reason": "BadRequest",
                    "message": format!("tollgate injector: pod {name:?} in namespace {:?}: {message}", request["namespace"].as_str().unwrap_or("")),
                },
            });
            answer(response, "refused")
        }
    }
}

fn json_response(status: u16, body: Value) -> Response<Vec<u8>> {
    crate::admin::json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

/// The HTTPS app: `POST /mutate`, `GET /healthz`.
pub struct WebhookApp {
    /// What the sidecar looks like.
    pub settings: Arc<Settings>,
}

#[async_trait]
impl ServeHttp for WebhookApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let (method, path) = {
            let req = session.req_header();
            (req.method.clone(), req.uri.path().to_string())
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => json_response(200, json!({"status": "ok"})),
            ("POST", "/mutate") => {
                let mut body = Vec::new();
                loop {
                    match session.read_request_body().await {
                        Ok(Some(chunk)) => {
                            body.extend_from_slice(&chunk);
                            if body.len() > MAX_REVIEW_BYTES {
                                METRICS.reviews.with_label_values(&["invalid"]).inc();
                                return json_response(
                                    413,
                                    json!({"error": "too_large", "message": format!("an AdmissionReview over {MAX_REVIEW_BYTES} bytes")}),
                                );
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            METRICS.reviews.with_label_values(&["invalid"]).inc();
                            return json_response(
                                400,
                                json!({"error": "bad_request", "message": format!("reading the body: {e}")}),
                            );
                        }
                    }
                }
                let answer = review(&body, &self.settings);
                METRICS.reviews.with_label_values(&[answer.outcome]).inc();
                METRICS
                    .duration
                    .with_label_values(&[answer.outcome])
                    .observe(started.elapsed().as_secs_f64());
                if answer.outcome == "refused" {
                    tracing::warn!(
                        "{}",
                        answer.body["response"]["status"]["message"]
                            .as_str()
                            .unwrap_or("")
                    );
                }
                json_response(answer.status, answer.body)
            }
            _ => json_response(
                404,
                json!({"error": "not_found", "message": format!("no {method} {path} here (POST /mutate, GET /healthz)")}),
            ),
        }
    }
}

/// The plain-HTTP admin app: `/healthz`, `/metrics`.
pub struct InjectorAdminApp;

#[async_trait]
impl ServeHttp for InjectorAdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => json_response(200, json!({"status": "ok"})),
            "/metrics" => {
                let mut buf = Vec::new();
                use prometheus::Encoder as _;
                prometheus::TextEncoder::new()
                    .encode(&METRICS.registry.gather(), &mut buf)
                    .expect("text encoding cannot fail");
                crate::admin::prometheus_text(buf)
            }
            path => json_response(
                404,
                json!({"error": "not_found", "message": format!("no admin endpoint `{path}` (try /healthz, /metrics)")}),
            ),
        }
    }
}

/// A certificate chain and key as read from their files.
struct Pair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// The serving certificate, read again from its files when they change.
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Arc<Pair>>,
}

fn parse_pair(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Pair, String> {
    let chain = X509::stack_from_pem(&cert_pem).map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no PEM certificate in the file".into());
    }
    let key = PKey::private_key_from_pem(&key_pem).map_err(|e| format!("key: {e}"))?;
    let public = chain[0]
        .public_key()
        .map_err(|e| format!("certificate: {e}"))?;
    if !public.public_eq(&key) {
        return Err("the key does not belong to the certificate".into());
    }
    Ok(Pair {
        cert_pem,
        key_pem,
        chain,
        key,
    })
}

fn not_after_unix(cert: &X509) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

impl CertFiles {
    /// Reads the pair once; an error names the file and what is wrong with it.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<CertFiles, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let pair = parse_pair(read(&cert)?, read(&key)?)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
        if let Some(t) = not_after_unix(&pair.chain[0]) {
            METRICS.cert_not_after.set(t);
        }
        Ok(CertFiles {
            cert,
            key,
            current: Mutex::new(Arc::new(pair)),
        })
    }

    /// The pair to serve: the one in use, or the files' new content when it changed and is a
    /// valid pair. Reading two small files per handshake is nothing at a webhook's rate, and
    /// comparing contents (not mtimes) sees every kind of in-place update.
    fn pair(&self) -> Arc<Pair> {
        let current = self.current.lock().clone();
        let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read(&self.cert), std::fs::read(&self.key))
        else {
            return current;
        };
        if cert_pem == current.cert_pem && key_pem == current.key_pem {
            return current;
        }
        match parse_pair(cert_pem, key_pem) {
            Ok(pair) => {
                if let Some(t) = not_after_unix(&pair.chain[0]) {
                    METRICS.cert_not_after.set(t);
                }
                tracing::info!("serving the new certificate from {}", self.cert.display());
                METRICS.cert_reloads.with_label_values(&["ok"]).inc();
                let pair = Arc::new(pair);
                *self.current.lock() = pair.clone();
                pair
            }
            Err(e) => {
                // A rotation writes two files: the first handshake may see one new file and one
                // old. Keep serving the last good pair, and say so.
                tracing::warn!(
                    "certificate files changed but are not a valid pair ({e}); still serving the previous one"
                );
                METRICS.cert_reloads.with_label_values(&["error"]).inc();
                current
            }
        }
    }
}

#[async_trait]
impl TlsAccept for CertFiles {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        use pingora_core::tls::ext;
        let pair = self.pair();
        if let Err(e) = ext::ssl_use_certificate(ssl, &pair.chain[0]) {
            tracing::error!("cannot use the certificate: {e}");
        }
        for intermediate in &pair.chain[1..] {
            if let Err(e) = ext::ssl_add_chain_cert(ssl, intermediate) {
                tracing::error!("cannot add a chain certificate: {e}");
            }
        }
        if let Err(e) = ext::ssl_use_private_key(ssl, &pair.key) {
            tracing::error!("cannot use the key: {e}");
        }
    }
}

/// Runs the webhook until SIGTERM: HTTPS on `listen`, the admin app on `admin`. Returns only on
/// a start-up error (unreadable or mismatched certificate files, a bad address).
pub fn serve(
    listen: &str,
    admin: &str,
    cert: PathBuf,
    key: PathBuf,
    settings: Settings,
) -> Result<std::convert::Infallible, String> {
    use pingora_core::listeners::tls::TlsSettings;
    use pingora_core::server::configuration::{Opt, ServerConf};
    use pingora_core::services::listening::Service;
    for (what, addr) in [("--listen", listen), ("--admin", admin)] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| format!("{what} {addr:?}: {e} (want HOST:PORT)"))?;
    }
    let certs = CertFiles::load(cert, key)?;
    let mut tls =
        TlsSettings::with_callbacks(Box::new(certs)).map_err(|e| format!("TLS settings: {e}"))?;
    tls.enable_h2();
    let mut server = pingora_core::server::Server::new_with_opt_and_conf(
        Opt::default(),
        ServerConf {
            threads: 2,
            grace_period_seconds: Some(1),
            graceful_shutdown_timeout_seconds: Some(5),
            ..Default::default()
        },
    );
    let mut webhook = Service::new(
        "tollgate injector webhook".to_string(),
        WebhookApp {
            settings: Arc::new(settings),
        },
    );
    webhook.add_tls_with_settings(listen, None, tls);
    let mut admin_service = Service::new("tollgate injector admin".to_string(), InjectorAdminApp);
    admin_service.add_tcp(admin);
    server.add_service(webhook);
    server.add_service(admin_service);
    server.bootstrap();
    tracing::info!(
        "tollgate {} injector: AdmissionReview on https://{listen}/mutate, admin on http://{admin}/",
        super::settings::VERSION
    );
    server.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(object: Value, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "42",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": operation,
                "namespace": "shop",
                "object": object,
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_patch_that_applies_to_the_pod_gives_the_injected_pod() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8000}]}]}});
        let a = review(&review_of(pod.clone(), "CREATE"), &Settings::default());
        assert_eq!((a.status, a.outcome), (200, "injected"));
        let response = &a.body["response"];
        assert_eq!(response["uid"], "42");
        assert_eq!(response["allowed"], true);
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let mut expected = pod;
        assert_eq!(
            inject(&mut expected, &Settings::default()),
            Outcome::Injected
        );
        assert_eq!(patched, expected);
    }

    #[test]
    fn refusals_skips_and_garbage() {
        let taken = json!({"metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8080}]}]}});
        let a = review(&review_of(taken.clone(), "CREATE"), &Settings::default());
        assert_eq!(a.outcome, "refused");
        assert_eq!(a.body["response"]["allowed"], false);
        let m = a.body["response"]["status"]["message"].as_str().unwrap();
        assert!(
            m.starts_with("tollgate injector: pod \"web\" in namespace \"shop\": port 8080"),
            "{m}"
        );
        assert_eq!(
            review(&review_of(taken, "UPDATE"), &Settings::default()).outcome,
            "skipped"
        );
        assert_eq!(review(b"{", &Settings::default()).status, 400);
        let a = review(
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
            &Settings::default(),
        );
        assert_eq!(a.status, 400);
    }
}
