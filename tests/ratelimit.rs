//! Tenants and tier rate limits through the real binary: exact burst, daily quota, isolation,
//! headers, 401, trusted tenant header, client IP and X-Forwarded-For trust, shadow mode,
//! per-route cost and policies, metrics, and the `explain` / `hash-key` commands.
//! (Sustained-rate convergence is proven on the limiter with a virtual clock: src/ratelimit.)

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

const ACME: &str = "key-acme";
const GLOBEX: &str = "key-globex-from-env";
const DAILY: &str = "key-daily";
const SHADOW: &str = "key-shadow";

/// Four tiers (rps 0.01: one token per 100 s, so no refill can happen while a test runs),
/// a tenant on each, and routes with a cost, a route policy, no limits, and the rest.
fn limits(app: SocketAddr) -> Config {
    Config::new()
        .upstream(Group::new("app", [app]))
        .identity("anonymous_tier", "anon")
        .tier("anon", "{ rps: 0.01, burst: 3 }")
        .tier("free", "{ rps: 0.01, burst: 5, daily: 1000 }")
        .tier("tiny", "{ rps: 100, burst: 100, daily: 3 }")
        .tier("shadowed", "{ rps: 0.01, burst: 2, shadow: true }")
        // `tollgate hash-key key-acme`, and so on.
        .tenant(
            "acme",
            "free",
            ["sha256:6371cb7a907cc8f10740229732c4b6164b285169494b85304468313513427878"],
        )
        .tenant("globex", "free", ["${GLOBEX_KEY}"])
        .tenant(
            "daily-co",
            "tiny",
            ["sha256:adf5ed7ee36fb5d61f51b3c7dc94c321906e64e83023aa6106b16469345fda86"],
        )
        .tenant(
            "shadow-co",
            "shadowed",
            ["sha256:3743c50b1c964dccd284615725bd6e750310c9f2abebe48f4fe27195226491f1"],
        )
        .route(
            Route::prefix("/costly/")
                .name("costly")
                .to("app")
                .rate_limit("{ cost: 2 }"),
        )
        .route(
            Route::prefix("/special/")
                .name("special")
                .to("app")
                .rate_limit("{ tiers: { free: { burst: 1 } } }"),
        )
        .route(
            Route::prefix("/health")
                .name("health")
                .to("app")
                .rate_limit("{ enabled: false }"),
        )
        .route(Route::prefix("/").name("api").to("app"))
        .env("GLOBEX_KEY", GLOBEX)
}

/// An upstream and a tollgate on [`limits`].
async fn start() -> (Upstream, Tollgate) {
    start_with(|c| c).await
}

/// An upstream and a tollgate on [`limits`] changed by `more`.
async fn start_with(more: impl FnOnce(Config) -> Config) -> (Upstream, Tollgate) {
    let app = Upstream::start().await;
    let tg = more(limits(app.addr())).start().await;
    (app, tg)
}

fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

async fn statuses(tg: &Tollgate, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tg.get_with(path, headers).await.status);
    }
    out
}

#[tokio::test]
async fn exactly_burst_requests_pass_then_429_with_standard_headers() {
    let (app, tg) = start().await;
    let (k, v) = bearer(ACME);
    for i in 0..5u32 {
        let r = tg
            .get_with("/v1/x", &[(k, &v), ("x-request-id", "rl-1")])
            .await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header("ratelimit-policy"),
            r#""burst";q=5;w=1, "daily";q=1000;w=86400"#
        );
        let rl = r.header("ratelimit").to_string();
        let want_prefix = format!(r#""burst";r={};t="#, 4 - i);
        assert!(
            rl.starts_with(&want_prefix),
            "request {i}: RateLimit {rl:?} should start with {want_prefix:?}"
        );
        assert!(rl.contains(&format!(r#""daily";r={};t="#, 999 - i)), "{rl}");
        assert!(
            !r.has("x-ratelimit-limit"),
            "legacy headers are off by default"
        );
    }
    let r = tg
        .get_with("/v1/x", &[(k, &v), ("x-request-id", "rl-6")])
        .await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(
        (90..=100).contains(&retry),
        "one token takes 100 s at 0.01 rps: Retry-After {retry}"
    );
    assert!(r.header("ratelimit").starts_with(r#""burst";r=0;"#));
    assert_eq!(r.header("x-request-id"), "rl-6");
    let body = r.json();
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
    tg.expect_metric("tollgate_ratelimit_decisions_total", &labels, 5.0)
        .await;
    let labels = [
        ("tier", "free"),
        ("policy", "burst"),
        ("decision", "limited"),
    ];
    tg.expect_metric("tollgate_ratelimit_decisions_total", &labels, 1.0)
        .await;
}

#[tokio::test]
async fn tenants_are_isolated_and_keys_work_from_either_header_and_from_env() {
    let (_app, tg) = start().await;
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
    let (app, tg) = start().await;
    let r = tg
        .get_with(
            "/x",
            &[
                ("authorization", "Bearer not-a-key"),
                ("x-request-id", "who"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let body = r.json();
    assert_eq!(body["error"], "unknown_api_key");
    assert_eq!(body["request_id"], "who");
    assert_eq!(app.count(), 0);
    // Not limited routes do not look at keys at all.
    assert_eq!(
        tg.get_with("/health", &[("authorization", "Bearer not-a-key")])
            .await
            .status,
        200
    );

    let (_app2, tg2) = start_with(|c| c.identity("unknown_key", "anonymous")).await;
    let r = tg2
        .get_with("/x", &[("authorization", "Bearer not-a-key")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        r#""burst";q=3;w=1"#,
        "anonymous tier"
    );
}

#[tokio::test]
async fn daily_quota_exhaustion_is_429_until_utc_midnight() {
    let (_app, tg) = start().await;
    let (k, v) = bearer(DAILY);
    assert_eq!(statuses(&tg, "/x", &[(k, &v)], 3).await, [200, 200, 200]);
    let r = tg.get_with("/x", &[(k, &v)]).await;
    assert_eq!(r.status, 429);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(
        retry.abs_diff(to_midnight) <= 2,
        "Retry-After {retry} vs {to_midnight} s to 00:00 UTC"
    );
    let body = r.json();
    assert_eq!(body["error"], "daily_quota_exhausted");
    assert_eq!(body["policy"], "daily");
    assert_eq!(body["tier"], "tiny");
}

#[tokio::test]
async fn tenant_header_is_honoured_only_when_trusted() {
    let (_app, untrusted) = start().await;
    let r = untrusted.get_with("/x", &[("x-tenant-id", "acme")]).await;
    assert_eq!(
        r.header("ratelimit-policy"),
        r#""burst";q=3;w=1"#,
        "ignored: anonymous tier"
    );

    let (_app2, trusted) = start_with(|c| c.identity("trust_tenant_header", true)).await;
    let r = trusted.get_with("/x", &[("x-tenant-id", "acme")]).await;
    assert_eq!(
        r.header("ratelimit-policy"),
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
    let (_app, tg) = start().await;
    let mut got = Vec::new();
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"] {
        got.push(tg.get_with("/x", &[("x-forwarded-for", ip)]).await.status);
    }
    assert_eq!(got, [200, 200, 200, 429]);

    // Loopback trusted: each forwarded client has its own bucket.
    let (_app2, tg2) = start_with(|c| c.identity("trusted_proxies", r#"["127.0.0.1/32"]"#)).await;
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
        tg2.get_with("/x", &[("x-forwarded-for", "9.9.9.9, 2.2.2.2")])
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn shadow_mode_counts_and_reports_but_never_refuses() {
    let (app, tg) = start().await;
    let (k, v) = bearer(SHADOW);
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let r = tg.get_with("/x", &[(k, &v)]).await;
        assert_eq!(r.status, 200);
        remaining.push(r.header("ratelimit").to_string());
    }
    assert!(remaining[0].starts_with(r#""burst";r=1;"#), "{remaining:?}");
    assert!(remaining[2].starts_with(r#""burst";r=0;"#), "{remaining:?}");
    assert_eq!(app.count(), 4);
    let labels = [
        ("tier", "shadowed"),
        ("policy", "burst"),
        ("decision", "shadow_limited"),
    ];
    tg.expect_metric("tollgate_ratelimit_decisions_total", &labels, 2.0)
        .await;
}

#[tokio::test]
async fn route_cost_and_route_policies() {
    let (_app, tg) = start().await;
    let (k, v) = bearer(ACME);
    // cost 2 against burst 5: two pass (4 units), the third would need 6.
    assert_eq!(
        statuses(&tg, "/costly/x", &[(k, &v)], 3).await,
        [200, 200, 429]
    );
    // The tier bucket has 1 unit left for normal routes.
    assert_eq!(statuses(&tg, "/x", &[(k, &v)], 2).await, [200, 429]);
    // /special/ has its own bucket for the free tier (burst 1), separate from the tier's.
    let r = tg.get_with("/special/x", &[(k, &v)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        r#""burst";q=1;w=1, "daily";q=1000;w=86400"#
    );
    assert_eq!(tg.get_with("/special/x", &[(k, &v)]).await.status, 429);
    // A route with `enabled: false` is never limited and carries no RateLimit headers.
    for _ in 0..10 {
        let r = tg.get_with("/health", &[(k, &v)]).await;
        assert_eq!(r.status, 200);
        assert!(!r.has("ratelimit"));
    }
}

#[tokio::test]
async fn legacy_headers_when_switched_on() {
    let (_app, tg) = start_with(|c| c.rate_limit("legacy_headers", true)).await;
    let (k, v) = bearer(ACME);
    let r = tg.get_with("/x", &[(k, &v)]).await;
    r.assert_header("x-ratelimit-limit", "5")
        .assert_header("x-ratelimit-remaining", "4");
    assert!(r.has("x-ratelimit-reset"), "{r:?}");
}

#[test]
fn explain_prints_tier_limits_and_route_policies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.yaml");
    std::fs::write(&p, limits("127.0.0.1:3000".parse().unwrap()).render()).unwrap();
    let p = p.to_str().unwrap();
    let env = [("GLOBEX_KEY", GLOBEX)];
    let (code, text, err) = run_cli(["explain", "-c", p, "--key", ACME], &env);
    assert_eq!(code, 0, "{err}");
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

    let (code, _, err) = run_cli(["explain", "-c", p, "--key", "nope"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("no tenant owns this API key"), "{err}");
}

#[test]
fn hash_key_prints_the_digest_config_expects() {
    let (_, out, _) = run_cli(["hash-key", ACME], &[]);
    assert_eq!(
        out.trim(),
        "sha256:6371cb7a907cc8f10740229732c4b6164b285169494b85304468313513427878"
    );
}

#[test]
fn a_plain_key_beside_an_env_key_on_one_line_is_still_rejected() {
    let (code, _, err) = check_yaml_with_env(
        "upstreams:\n  app: { endpoints: [\"127.0.0.1:1\"] }\nroutes:\n  - { match: { path_prefix: / }, upstream: app }\ntiers:\n  free: { rps: 10, burst: 20 }\ntenants:\n  a: { tier: free, api_keys: [\"${A_KEY}\", \"plaintext-in-file\"] }\n",
        &[("A_KEY", "from-env ")],
    );
    assert_eq!(code, 1, "{err}");
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
    let (code, _, err) = check_yaml(
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
