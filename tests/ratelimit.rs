//! Tenants and tier rate limits through the real binary: exact burst, daily quota, isolation,
//! headers, 401, trusted tenant header, client IP and X-Forwarded-For trust, shadow mode,
//! per-route cost and policies, metrics, and the `explain` / `hash-key` commands.
//! (Sustained-rate convergence is proven on the limiter with a virtual clock: src/ratelimit.)

#[path = "common_old/mod.rs"]
mod common;

use common::{MockUpstream, Tollgate};
use std::time::{SystemTime, UNIX_EPOCH};

const ACME: &str = "key-acme";
const GLOBEX: &str = "key-globex-from-env";
const DAILY: &str = "key-daily";
const SHADOW: &str = "key-shadow";

/// rps 0.01: one token per 100 s, so no refill can happen while a test runs.
fn config(app: std::net::SocketAddr, identity: &str) -> String {
    format!(
        r#"upstreams:
  app:
    endpoints: ["{app}"]
identity:
  anonymous_tier: anon
{identity}
tiers:
  anon: {{ rps: 0.01, burst: 3 }}
  free: {{ rps: 0.01, burst: 5, daily: 1000 }}
  tiny: {{ rps: 100, burst: 100, daily: 3 }}
  shadowed: {{ rps: 0.01, burst: 2, shadow: true }}
tenants:
  acme: {{ tier: free, api_keys: ["sha256:6371cb7a907cc8f10740229732c4b6164b285169494b85304468313513427878"] }}
  globex: {{ tier: free, api_keys: ["${{GLOBEX_KEY}}"] }}
  daily-co: {{ tier: tiny, api_keys: ["sha256:adf5ed7ee36fb5d61f51b3c7dc94c321906e64e83023aa6106b16469345fda86"] }}
  shadow-co: {{ tier: shadowed, api_keys: ["sha256:3743c50b1c964dccd284615725bd6e750310c9f2abebe48f4fe27195226491f1"] }}
routes:
  - name: costly
    match: {{ path_prefix: /costly/ }}
    upstream: app
    rate_limit: {{ cost: 2 }}
  - name: special
    match: {{ path_prefix: /special/ }}
    upstream: app
    rate_limit: {{ tiers: {{ free: {{ burst: 1 }} }} }}
  - name: health
    match: {{ path_prefix: /health }}
    upstream: app
    rate_limit: {{ enabled: false }}
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
"#
    )
}

async fn start(identity: &str) -> (MockUpstream, Tollgate) {
    let app = MockUpstream::start().await;
    let tg =
        Tollgate::start_with_env(&config(app.addr(), identity), &[("GLOBEX_KEY", GLOBEX)]).await;
    (app, tg)
}

async fn call(tg: &Tollgate, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = tg.client.get(tg.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

async fn statuses(tg: &Tollgate, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(call(tg, path, headers).await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn exactly_burst_requests_pass_then_429_with_standard_headers() {
    let (app, tg) = start("").await;
    let (k, v) = bearer(ACME);
    for i in 0..5u32 {
        let r = call(&tg, "/v1/x", &[(k, &v), ("x-request-id", "rl-1")]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["ratelimit-policy"],
            r#""burst";q=5;w=1, "daily";q=1000;w=86400"#
        );
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_string();
        let want_prefix = format!(r#""burst";r={};t="#, 4 - i);
        assert!(
            rl.starts_with(&want_prefix),
            "request {i}: RateLimit {rl:?} should start with {want_prefix:?}"
        );
        assert!(rl.contains(&format!(r#""daily";r={};t="#, 999 - i)), "{rl}");
        assert!(
            r.headers().get("x-ratelimit-limit").is_none(),
            "legacy headers are off by default"
        );
    }
    let r = call(&tg, "/v1/x", &[(k, &v), ("x-request-id", "rl-6")]).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (90..=100).contains(&retry),
        "one token takes 100 s at 0.01 rps: Retry-After {retry}"
    );
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with(r#""burst";r=0;"#));
    assert_eq!(r.headers()["x-request-id"], "rl-6");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["tier"], "free");
    assert_eq!(body["policy"], "burst");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(body["request_id"], "rl-6");
    assert_eq!(
        app.count(),
        5,
        "the refused request never reached the upstream"
    );

    let labels = [
        ("tier", "free"),
        ("policy", "none"),
        ("decision", "allowed"),
    ];
    assert_eq!(
        tg.metric_reaches("tollgate_ratelimit_decisions_total", &labels, 5.0)
            .await,
        Some(5.0)
    );
    let labels = [
        ("tier", "free"),
        ("policy", "burst"),
        ("decision", "limited"),
    ];
    assert_eq!(
        tg.metric_reaches("tollgate_ratelimit_decisions_total", &labels, 1.0)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn tenants_are_isolated_and_keys_work_from_either_header_and_from_env() {
    let (_app, tg) = start("").await;
    let (k, v) = bearer(ACME);
    assert_eq!(
        statuses(&tg, "/x", &[(k, &v)], 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    // globex's key came from ${GLOBEX_KEY}; it is sent in X-API-Key here.
    assert_eq!(
        statuses(&tg, "/x", &[("x-api-key", GLOBEX)], 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    // Anonymous callers have their own tier (burst 3), untouched by the tenants.
    assert_eq!(statuses(&tg, "/x", &[], 4).await, [200, 200, 200, 429]);
}

#[tokio::test]
async fn unknown_api_key_is_401_or_anonymous_when_configured() {
    let (app, tg) = start("").await;
    let r = call(
        &tg,
        "/x",
        &[
            ("authorization", "Bearer not-a-key"),
            ("x-request-id", "who"),
        ],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unknown_api_key");
    assert_eq!(body["request_id"], "who");
    assert_eq!(app.count(), 0);
    // Not limited routes do not look at keys at all.
    assert_eq!(
        call(&tg, "/health", &[("authorization", "Bearer not-a-key")])
            .await
            .status(),
        200
    );

    let (_app2, tg2) = start("  unknown_key: anonymous").await;
    let r = call(&tg2, "/x", &[("authorization", "Bearer not-a-key")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        r#""burst";q=3;w=1"#,
        "anonymous tier"
    );
}

#[tokio::test]
async fn daily_quota_exhaustion_is_429_until_utc_midnight() {
    let (_app, tg) = start("").await;
    let (k, v) = bearer(DAILY);
    assert_eq!(statuses(&tg, "/x", &[(k, &v)], 3).await, [200, 200, 200]);
    let r = call(&tg, "/x", &[(k, &v)]).await;
    assert_eq!(r.status(), 429);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry.abs_diff(to_midnight) <= 2,
        "Retry-After {retry} vs {to_midnight} s to 00:00 UTC"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "daily_quota_exhausted");
    assert_eq!(body["policy"], "daily");
    assert_eq!(body["tier"], "tiny");
}

#[tokio::test]
async fn tenant_header_is_honoured_only_when_trusted() {
    let (_app, untrusted) = start("").await;
    let r = call(&untrusted, "/x", &[("x-tenant-id", "acme")]).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        r#""burst";q=3;w=1"#,
        "ignored: anonymous tier"
    );

    let (_app2, trusted) = start("  trust_tenant_header: true").await;
    let r = call(&trusted, "/x", &[("x-tenant-id", "acme")]).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        r#""burst";q=5;w=1, "daily";q=1000;w=86400"#,
        "acme's tier"
    );
    assert_eq!(
        statuses(&trusted, "/x", &[("x-tenant-id", "acme")], 5).await,
        [200, 200, 200, 200, 429]
    );
}

#[tokio::test]
async fn anonymous_callers_are_keyed_by_ip_and_forwarded_for_counts_only_from_trusted_proxies() {
    // Untrusted peer: X-Forwarded-For is ignored, every request is the same client.
    let (_app, tg) = start("").await;
    let mut got = Vec::new();
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"] {
        got.push(
            call(&tg, "/x", &[("x-forwarded-for", ip)])
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(got, [200, 200, 200, 429]);

    // Loopback trusted: each forwarded client has its own bucket.
    let (_app2, tg2) = start("  trusted_proxies: [\"127.0.0.1/32\"]").await;
    assert_eq!(
        statuses(&tg2, "/x", &[("x-forwarded-for", "1.1.1.1")], 4).await,
        [200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&tg2, "/x", &[("x-forwarded-for", "2.2.2.2")], 4).await,
        [200, 200, 200, 429]
    );
    // A spoofed left-most entry does not help: the right-most untrusted hop is the client.
    assert_eq!(
        call(&tg2, "/x", &[("x-forwarded-for", "9.9.9.9, 2.2.2.2")])
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn shadow_mode_counts_and_reports_but_never_refuses() {
    let (app, tg) = start("").await;
    let (k, v) = bearer(SHADOW);
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let r = call(&tg, "/x", &[(k, &v)]).await;
        assert_eq!(r.status(), 200);
        remaining.push(r.headers()["ratelimit"].to_str().unwrap().to_string());
    }
    assert!(remaining[0].starts_with(r#""burst";r=1;"#), "{remaining:?}");
    assert!(remaining[2].starts_with(r#""burst";r=0;"#), "{remaining:?}");
    assert_eq!(app.count(), 4);
    let labels = [
        ("tier", "shadowed"),
        ("policy", "burst"),
        ("decision", "shadow_limited"),
    ];
    assert_eq!(
        tg.metric_reaches("tollgate_ratelimit_decisions_total", &labels, 2.0)
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn route_cost_and_route_policies() {
    let (_app, tg) = start("").await;
    let (k, v) = bearer(ACME);
    // cost 2 against burst 5: two pass (4 units), the third would need 6.
    assert_eq!(
        statuses(&tg, "/costly/x", &[(k, &v)], 3).await,
        [200, 200, 429]
    );
    // The tier bucket has 1 unit left for normal routes.
    assert_eq!(statuses(&tg, "/x", &[(k, &v)], 2).await, [200, 429]);
    // /special/ has its own bucket for the free tier (burst 1), separate from the tier's.
    let r = call(&tg, "/special/x", &[(k, &v)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        r#""burst";q=1;w=1, "daily";q=1000;w=86400"#
    );
    assert_eq!(call(&tg, "/special/x", &[(k, &v)]).await.status(), 429);
    // A route with `enabled: false` is never limited and carries no RateLimit headers.
    for _ in 0..10 {
        let r = call(&tg, "/health", &[(k, &v)]).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("ratelimit").is_none());
    }
}

#[tokio::test]
async fn legacy_headers_when_switched_on() {
    let app = MockUpstream::start().await;
    let cfg =
        config(app.addr(), "").replace("tiers:\n", "rate_limit:\n  legacy_headers: true\ntiers:\n");
    let tg = Tollgate::start_with_env(&cfg, &[("GLOBEX_KEY", GLOBEX)]).await;
    let (k, v) = bearer(ACME);
    let r = call(&tg, "/x", &[(k, &v)]).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "5");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "4");
    assert!(r.headers().get("x-ratelimit-reset").is_some());
}

fn write_config(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("t.yaml");
    std::fs::write(&p, config("127.0.0.1:3000".parse().unwrap(), "")).unwrap();
    p
}

#[test]
fn explain_prints_tier_limits_and_route_policies() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(&dir);
    let out = std::process::Command::new(common::bin())
        .args(["explain", "-c"])
        .arg(&p)
        .args(["--key", ACME])
        .env("GLOBEX_KEY", GLOBEX)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("caller: tenant `acme`"), "{text}");
    assert!(text.contains("tier:   free"), "{text}");
    assert!(
        text.contains("limits: rps 0.01, burst 5, daily 1000"),
        "{text}"
    );
    assert!(
        text.contains("costly           cost 2; shares the tier buckets"),
        "{text}"
    );
    assert!(
        text.contains(
            "special          cost 1; route policy `route:special`: rps 0.01, burst 1, daily 1000"
        ),
        "{text}"
    );
    assert!(text.contains("health           not rate limited"), "{text}");
    assert!(!text.contains(ACME), "the key itself is never printed");

    let out = std::process::Command::new(common::bin())
        .args(["explain", "-c"])
        .arg(&p)
        .args(["--key", "nope"])
        .env("GLOBEX_KEY", GLOBEX)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tenant owns this API key"));
}

#[test]
fn hash_key_prints_the_digest_config_expects() {
    let out = std::process::Command::new(common::bin())
        .args(["hash-key", ACME])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256:6371cb7a907cc8f10740229732c4b6164b285169494b85304468313513427878"
    );
}

#[test]
fn a_plain_key_beside_an_env_key_on_one_line_is_still_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.yaml");
    std::fs::write(
        &p,
        "upstreams:\n  app: { endpoints: [\"127.0.0.1:1\"] }\nroutes:\n  - { match: { path_prefix: / }, upstream: app }\ntiers:\n  free: { rps: 10, burst: 20 }\ntenants:\n  a: { tier: free, api_keys: [\"${A_KEY}\", \"plaintext-in-file\"] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .arg("check")
        .arg(&p)
        .env("A_KEY", "from-env ")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(":8: tenants.a.api_keys[1]: plain API keys must not be written"),
        "{err}"
    );
    assert!(
        !err.contains("api_keys[0]"),
        "the env key (with its trailing space) is fine: {err}"
    );
}

#[test]
fn plain_keys_in_the_file_and_unknown_tiers_are_rejected() {
    let (code, _, err) = common::check_yaml(
        "upstreams:\n  app: { endpoints: [\"127.0.0.1:1\"] }\nroutes:\n  - { match: { path_prefix: / }, upstream: app, rate_limit: { tiers: { gold: { rps: 1 } } } }\ntiers:\n  free: { rps: 10, burst: 0 }\ntenants:\n  a: { tier: fre, api_keys: [\"plain-secret\"] }\n",
    );
    assert_eq!(code, 1);
    for want in [
        ":4: routes[0].rate_limit.tiers.gold: unknown tier `gold` (defined tiers: free)",
        ":6: tiers.free.burst: burst must be at least 1",
        ":8: tenants.a.tier: unknown tier `fre` (defined tiers: free)",
        ":8: tenants.a.api_keys[0]: plain API keys must not be written in the config file",
    ] {
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
    assert!(!err.contains("plain-secret"), "the key must not be echoed");
}
