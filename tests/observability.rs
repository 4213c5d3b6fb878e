//! Observability end to end: exact counter and histogram values on /metrics for known traffic,
//! the tenant label allowlist, timing headers, the JSON access log (fields, sampling, no
//! secrets), and `promtool check metrics` on the live exposition.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const REQUESTS: &str = "tollgate_http_requests_total";

/// Group `app` on `app`, route `api` on `/api/` (anything else is a 404).
fn api(app: SocketAddr) -> Config {
    Config::new()
        .upstream(Group::new("app", [app]))
        .route(Route::prefix("/api/").name("api").to("app"))
}

/// Tier `free` (generous) and tenant `acme` with the key in `${ACME}`.
fn with_acme(cfg: Config) -> Config {
    cfg.tier("free", "{ rps: 100, burst: 100 }")
        .tenant("acme", "free", ["${ACME}"])
}

/// `observability.access_log` writing to `log`, with more keys (`", sample_rate: 0.0"`).
fn access_log(log: &Path, more: &str) -> String {
    format!(
        "{{ output: {}{more} }}",
        config::quote(&log.display().to_string())
    )
}

fn bucket(m: &str, le: &str) -> Option<f64> {
    metric_value(
        m,
        "tollgate_http_request_duration_seconds_bucket",
        &[
            ("route", "api"),
            ("method", "GET"),
            ("status_class", "2xx"),
            ("tier", "none"),
            ("cache", "none"),
            ("le", le),
        ],
    )
}

#[tokio::test]
async fn known_traffic_gives_exact_counters_and_histogram_buckets() {
    let app = Upstream::start().await;
    let tg = api(app.addr()).start().await;
    for _ in 0..3 {
        assert_eq!(tg.get("/api/fast").await.text(), "hello from upstream");
    }
    app.set_reply(Reply::default().delay(Duration::from_millis(600)));
    tg.get("/api/slow").await.assert_status(200);
    tg.get("/nowhere").await.assert_status(404);

    let labels = [
        ("route", "api"),
        ("method", "GET"),
        ("status_class", "2xx"),
        ("tenant", "none"),
    ];
    tg.expect_metric(REQUESTS, &labels, 4.0).await;
    let labels = [("route", "none"), ("status_class", "4xx")];
    tg.expect_metric(REQUESTS, &labels, 1.0).await;
    let m = tg.metrics().await;
    // Three fast requests below 250 ms, the slow one between 0.5 s and 1 s.
    assert_eq!(bucket(&m, "0.25"), Some(3.0), "{m}");
    assert_eq!(bucket(&m, "0.5"), Some(3.0));
    assert_eq!(bucket(&m, "1"), Some(4.0));
    assert_eq!(bucket(&m, "+Inf"), Some(4.0));
    let count = metric_value(
        &m,
        "tollgate_http_request_duration_seconds_count",
        &[("route", "api"), ("status_class", "2xx")],
    );
    assert_eq!(count, Some(4.0));
    let up = [("upstream", "app"), ("le", "+Inf")];
    assert_eq!(
        metric_value(&m, "tollgate_upstream_duration_seconds_bucket", &up),
        Some(4.0)
    );
    let ok = [
        ("upstream", "app"),
        ("endpoint", &*app.addr().to_string()),
        ("outcome", "success"),
    ];
    assert_eq!(
        metric_value(&m, "tollgate_upstream_requests_total", &ok),
        Some(4.0)
    );
    // 4 x "hello from upstream" (19 bytes).
    let bytes = [("route", "api")];
    assert_eq!(
        metric_value(&m, "tollgate_http_response_body_bytes_total", &bytes),
        Some(76.0)
    );
    tg.expect_metric("tollgate_http_requests_in_flight", &[], 0.0)
        .await;
}

#[tokio::test]
async fn upstream_failures_are_counted_by_outcome() {
    let dead = closed_addr();
    let tg = api(dead).start().await;
    tg.get("/api/x").await.assert_status(502);
    let labels = [
        ("upstream", "app"),
        ("endpoint", &*dead.to_string()),
        ("outcome", "connect_error"),
    ];
    // `retry.attempts` defaults to 3: each failed connection is one attempt.
    tg.expect_metric("tollgate_upstream_requests_total", &labels, 3.0)
        .await;
    let retries = [("upstream", "app")];
    assert_eq!(
        tg.metric("tollgate_upstream_retries_total", &retries).await,
        Some(2.0)
    );
}

#[tokio::test]
async fn tenant_label_only_for_allowlisted_tenants() {
    let app = Upstream::start().await;
    let tg = with_acme(api(app.addr()))
        .tenant("globex", "free", ["${GLOBEX}"])
        .observability("tenant_label_allowlist", "[acme]")
        .env("ACME", "k-acme")
        .env("GLOBEX", "k-globex")
        .start()
        .await;
    for key in ["k-acme", "k-acme", "k-globex"] {
        let r = tg
            .send(tg.req(reqwest::Method::GET, "/api/x").bearer_auth(key))
            .await;
        r.assert_status(200);
    }
    tg.expect_metric(REQUESTS, &[("route", "api"), ("tenant", "acme")], 2.0)
        .await;
    tg.expect_metric(REQUESTS, &[("route", "api"), ("tenant", "other")], 1.0)
        .await;
    let m = tg.metrics().await;
    assert!(
        !m.contains("globex"),
        "non-allowlisted tenant ids never become label values"
    );
    let by_tier = metric_value(
        &m,
        "tollgate_http_request_duration_seconds_count",
        &[("route", "api"), ("tier", "free")],
    );
    assert_eq!(by_tier, Some(3.0));
}

#[tokio::test]
async fn response_time_and_server_timing_headers_are_switchable() {
    let app = Upstream::start().await;
    let tg = api(app.addr())
        .observability("server_timing_header", true)
        .start()
        .await;
    let r = tg.get("/api/x").await;
    let rt = r.header("x-response-time");
    let ms = rt.strip_suffix("ms").expect("ends in ms");
    assert!(
        ms.split_once('.').is_some_and(|(_, frac)| frac.len() == 3),
        "{rt}"
    );
    assert!(ms.parse::<f64>().unwrap() >= 0.0);
    let st = r.header("server-timing");
    assert!(
        st.starts_with("upstream;dur=") && st.contains(", total;dur="),
        "{st}"
    );

    let off = api(app.addr())
        .observability("response_time_header", false)
        .start()
        .await;
    let r = off.get("/api/x").await;
    r.assert_no_header("x-response-time");
    assert!(!r.has("server-timing"), "Server-Timing is off by default");
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn access_log_lines_carry_the_fields_and_never_secrets() {
    let app = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let tg = with_acme(api(app.addr()))
        .observability("access_log", access_log(&log, ""))
        .env("ACME", "super-secret-key")
        .start()
        .await;
    let req = tg
        .req(reqwest::Method::GET, "/api/items?token=query-secret&x=1")
        .bearer_auth("super-secret-key")
        .header("x-request-id", "log-1")
        .header("cookie", "session=cookie-secret");
    tg.send(req).await.assert_status(200);
    let ok = eventually(Duration::from_secs(5), || async {
        !read_lines(&log).is_empty()
    })
    .await;
    assert!(ok, "no access log line written");
    let raw = std::fs::read_to_string(&log).unwrap();
    for secret in [
        "super-secret-key",
        "query-secret",
        "cookie-secret",
        "Bearer",
    ] {
        assert!(
            !raw.contains(secret),
            "{secret} leaked into the access log: {raw}"
        );
    }
    let line = &read_lines(&log)[0];
    assert_eq!(line["request_id"], "log-1");
    assert_eq!(line["tenant"], "acme");
    assert_eq!(line["tier"], "free");
    assert_eq!(line["route"], "api");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/items");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 19);
    assert_eq!(line["upstream"], app.addr().to_string());
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["cache"], "none");
    assert_eq!(line["ratelimit"], "allowed");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(line["upstream_ms"].as_f64().is_some());
    let time = line["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.contains('T'),
        "RFC 3339 UTC: {time}"
    );
    assert!(line["error"].is_null());

    // tollgate's own answers say which error they were.
    tg.get("/elsewhere").await.assert_status(404);
    let ok = eventually(Duration::from_secs(5), || async {
        read_lines(&log).len() >= 2
    })
    .await;
    assert!(ok, "no line for the 404");
    let line = &read_lines(&log)[1];
    assert_eq!(line["status"], 404);
    assert_eq!(line["route"], "none");
    assert_eq!(line["error"], "route_not_found");
}

#[tokio::test]
async fn sampling_keeps_slow_requests_and_errors() {
    let app = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sampled = access_log(&log, ", sample_rate: 0.0, slow_threshold: 300ms");
    let tg = api(app.addr())
        .observability("access_log", sampled)
        .start()
        .await;
    for _ in 0..5 {
        tg.get("/api/fast").await;
    }
    app.set_reply(Reply::default().delay(Duration::from_millis(400)));
    tg.get("/api/slow").await;
    app.set_reply(Reply::default().status(503));
    tg.get("/api/broken").await;

    let ok = eventually(Duration::from_secs(5), || async {
        read_lines(&log).len() >= 2
    })
    .await;
    assert!(ok, "expected the slow and the 5xx request in the log");
    let lines = "tollgate_access_log_lines_total";
    tg.expect_metric(lines, &[("outcome", "sampled_out")], 5.0)
        .await;
    tg.expect_metric(lines, &[("outcome", "written")], 2.0)
        .await;
    let paths: Vec<String> = read_lines(&log)
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/api/slow", "/api/broken"]);
}

#[tokio::test]
async fn live_metrics_pass_promtool_check_metrics() {
    let app = Upstream::start().await;
    let tg = api(app.addr()).start().await;
    tg.get("/api/x").await;
    let m = tg.metrics().await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's `prometheus` package (scripts/setup.sh does it as root)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{text}"
    );
    assert!(
        text.trim().is_empty(),
        "promtool reported lint problems:\n{text}"
    );
}
