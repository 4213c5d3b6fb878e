//! The response cache through the real binary, against scripted origins on loopback:
//! hits and misses with RFC 9211 `Cache-Status`, RFC 9111 storage rules, `Age`, 304
//! revalidation, conditional requests from cache, `Vary`, tenant-scoped keys,
//! stale-while-revalidate (exactly one background refresh), stale-if-error (5xx and a killed
//! origin process), 50-way request coalescing, admin purges, mutation invalidation, eviction
//! under the byte budget, metrics.
//!
//! Staleness without sleeping: an origin answer with `Cache-Control: max-age=10` and `Age: 10`
//! is stored already stale (its whole lifetime was used up before it arrived).

#[path = "common_old/mod.rs"]
mod common;

use common::origin::{Answer, Origin, Seen};
use common::{metric_value, DemoUpstream, Tollgate};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A config with one catch-all route caching with `cache` (a flow mapping body).
fn config(origin: SocketAddr, cache: &str, extra: &str) -> String {
    format!(
        r#"upstreams:
  app:
    endpoints: ["{origin}"]
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
    cache: {{ {cache} }}
{extra}"#
    )
}

async fn start(origin: &Origin, cache: &str) -> Tollgate {
    Tollgate::start(&config(origin.addr(), cache, "")).await
}

struct Got {
    status: u16,
    x_cache: String,
    cache_status: String,
    age: Option<u64>,
    body: String,
}

async fn get_with(tg: &Tollgate, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = tg.client.get(tg.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request through tollgate");
    got(r).await
}

async fn got(r: reqwest::Response) -> Got {
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (x_cache, cache_status) = (h("x-cache-status"), h("cache-status"));
    let age = r
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    Got {
        status,
        x_cache,
        cache_status,
        age,
        body,
    }
}

async fn get(tg: &Tollgate, path: &str) -> Got {
    get_with(tg, path, &[]).await
}

/// An origin script: the first answer, `body` with `cache_control` and `Age: 10`, is stored
/// already stale (when its max-age is 10); every later answer is `later`.
fn stale_then(
    body: &'static str,
    cache_control: &str,
    later: Answer,
) -> impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static {
    let cache_control = cache_control.to_string();
    move |_s: &Seen, n| {
        if n == 0 {
            Answer::ok(
                body,
                &[("cache-control", cache_control.as_str()), ("age", "10")],
            )
        } else {
            later.clone()
        }
    }
}

fn fresh(body: &str) -> Answer {
    Answer::ok(body, &[("cache-control", "max-age=60")])
}

#[tokio::test]
async fn miss_then_hit_with_rfc9211_cache_status_and_age() {
    let origin = Origin::start(|s: &Seen, n| {
        Answer::ok(
            format!("{} #{n}", s.path),
            &[
                ("cache-control", "max-age=100"),
                ("age", "7"),
                ("cache-status", "app-cache; fwd=uri-miss"),
            ],
        )
    })
    .await;
    let tg = start(&origin, "ttl: 60s").await;

    let first = get(&tg, "/api/models").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "/api/models #0");
    assert_eq!(first.x_cache, "MISS");
    // RFC 9211: tollgate's member follows the one of the cache nearer the origin.
    assert_eq!(
        first.cache_status,
        "app-cache; fwd=uri-miss, tollgate; fwd=miss; fwd-status=200; stored"
    );

    let second = get(&tg, "/api/models").await;
    assert_eq!(second.body, "/api/models #0", "served from cache");
    assert_eq!(second.x_cache, "HIT");
    // Fresh for 100 s minus the 7 s it was old on arrival.
    let ttl: i64 = second
        .cache_status
        .strip_prefix("app-cache; fwd=uri-miss, tollgate; hit; ttl=")
        .unwrap_or_else(|| panic!("{}", second.cache_status))
        .parse()
        .unwrap();
    assert!((90..=93).contains(&ttl), "ttl {ttl}");
    assert!(second.age.unwrap() >= 7, "Age counts the age on arrival");
    assert_eq!(origin.count(), 1);

    // Other paths and queries are other entries.
    assert_eq!(get(&tg, "/api/models?page=2").await.x_cache, "MISS");
    assert_eq!(get(&tg, "/api/other").await.x_cache, "MISS");
    assert_eq!(origin.count(), 3);

    let m = tg.metrics().await;
    assert!(metric_value(&m, "tollgate_cache_entries", &[]).unwrap() >= 3.0);
    assert!(metric_value(&m, "tollgate_cache_used_bytes", &[]).unwrap() > 0.0);
    assert_eq!(
        tg.metric_reaches(
            "tollgate_cache_requests_total",
            &[("route", "api"), ("status", "hit")],
            1.0
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn origin_directives_and_route_rules_decide_what_is_stored() {
    let origin = Origin::start(|s: &Seen, n| {
        let body = format!("{} #{n}", s.path);
        match s.path.as_str() {
            "/no-store" => Answer::ok(body, &[("cache-control", "no-store")]),
            "/private" => Answer::ok(body, &[("cache-control", "private, max-age=60")]),
            "/cookie" => Answer::ok(
                body,
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
            ),
            "/bare" => Answer::ok(body, &[]),
            "/error" => Answer::ok(body, &[("cache-control", "max-age=60")]).status(500),
            _ => fresh(&body),
        }
    })
    .await;
    // No route ttl: only origin freshness counts.
    let tg = start(&origin, "stale_if_error: 0s").await;
    for (path, detail) in [
        ("/no-store", "origin-no-store"),
        ("/private", "origin-no-store"),
        ("/cookie", "set-cookie"),
        ("/bare", "no-freshness"),
        ("/error", "status"),
    ] {
        let a = get(&tg, path).await;
        assert_eq!(a.x_cache, "MISS", "{path}");
        assert!(
            a.cache_status.ends_with(&format!("detail={detail}")),
            "{path}: {}",
            a.cache_status
        );
        // Not stored; and remembered as such, so the next request skips the cache lock.
        let b = get(&tg, path).await;
        assert_eq!(b.x_cache, "BYPASS", "{path} must not be stored");
        assert!(
            b.cache_status.ends_with(&format!("detail={detail}")),
            "{path}: {}",
            b.cache_status
        );
        assert_ne!(a.body, b.body, "{path} answered twice by the origin");
    }

    // Authorization on a shared-scope route: neither stored nor served from shared entries.
    let anon = get(&tg, "/authz").await;
    assert_eq!(anon.x_cache, "MISS");
    assert_eq!(get(&tg, "/authz").await.x_cache, "HIT");
    let before = origin.count();
    let a = get_with(&tg, "/authz", &[("authorization", "Bearer x")]).await;
    assert_eq!(a.x_cache, "BYPASS");
    assert_eq!(
        a.cache_status,
        "tollgate; fwd=bypass; fwd-status=200; detail=authorization"
    );
    assert_ne!(
        a.body, anon.body,
        "the shared entry is not served to a credentialed request"
    );
    assert_eq!(origin.count(), before + 1);

    // Methods other than GET/HEAD bypass the cache.
    let r = got(tg.client.post(tg.url("/thing")).send().await.unwrap()).await;
    assert_eq!(r.x_cache, "BYPASS");
    assert!(
        r.cache_status.starts_with("tollgate; fwd=bypass"),
        "{}",
        r.cache_status
    );
}

#[tokio::test]
async fn head_and_conditional_requests_are_answered_from_cache() {
    let origin = Origin::start(|_s: &Seen, n| {
        Answer::ok(
            format!("body #{n}"),
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
        )
    })
    .await;
    let tg = start(&origin, "").await;
    assert_eq!(get(&tg, "/doc").await.x_cache, "MISS");

    let head = tg.client.head(tg.url("/doc")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-cache-status"], "HIT");
    assert_eq!(head.headers()["content-length"], "7");

    let cond = get_with(&tg, "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status, 304, "matching validator: 304 from cache");
    assert_eq!(cond.x_cache, "HIT");
    let other = get_with(&tg, "/doc", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, "body #0");
    assert_eq!(origin.count(), 1, "all of it from one origin response");
}

#[tokio::test]
async fn stale_entry_is_revalidated_with_validators_and_a_304_refreshes_it() {
    let origin = Origin::start(|s: &Seen, n| {
        if n == 0 {
            // Stored already stale: the next request revalidates.
            Answer::ok(
                "the full body",
                &[
                    ("cache-control", "max-age=10"),
                    ("age", "10"),
                    ("etag", "\"v1\""),
                    ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
                ],
            )
        } else if s.header("if-none-match") == "\"v1\"" {
            Answer::ok("", &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]).status(304)
        } else {
            Answer::ok("unexpected full fetch", &[])
        }
    })
    .await;
    let tg = start(&origin, "").await;
    assert_eq!(get(&tg, "/r").await.x_cache, "MISS");

    let second = get(&tg, "/r").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "the full body");
    assert_eq!(second.x_cache, "REVALIDATED");
    assert!(
        second
            .cache_status
            .starts_with("tollgate; fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), "\"v1\"");
    assert_eq!(
        seen[1].header("if-modified-since"),
        "Mon, 02 Nov 2026 10:00:00 GMT"
    );

    let third = get(&tg, "/r").await;
    assert_eq!(third.x_cache, "HIT", "the 304 made it fresh again");
    assert_eq!(third.body, "the full body");
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let origin = Origin::start(|s: &Seen, n| {
        Answer::ok(
            format!(
                "lang={} variant={} #{n}",
                s.header("accept-language"),
                s.header("x-variant")
            ),
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language, X-Variant"),
            ],
        )
    })
    .await;
    let tg = start(&origin, "").await;
    let combos = [("en", "a"), ("fr", "a"), ("en", "b")];
    let mut first = Vec::new();
    for (lang, v) in combos {
        let r = get_with(&tg, "/v", &[("accept-language", lang), ("x-variant", v)]).await;
        assert_eq!(r.x_cache, "MISS", "{lang}/{v} is its own variant");
        assert!(
            r.body.starts_with(&format!("lang={lang} variant={v} ")),
            "{}",
            r.body
        );
        first.push(r.body);
    }
    for (i, (lang, v)) in combos.iter().enumerate() {
        let r = get_with(&tg, "/v", &[("accept-language", lang), ("x-variant", v)]).await;
        assert_eq!(r.x_cache, "HIT", "{lang}/{v}");
        assert_eq!(r.body, first[i], "each variant gets its own body");
    }
    assert_eq!(origin.count(), 3);
}

const KEYS: [(&str, &str); 2] = [("ACME_KEY", "key-acme"), ("GLOBEX_KEY", "key-globex")];

const TENANTS: &str = r#"identity:
  anonymous_tier: free
tiers:
  free: { rps: 1000, burst: 1000 }
tenants:
  acme: { tier: free, api_keys: ["${ACME_KEY}"] }
  globex: { tier: free, api_keys: ["${GLOBEX_KEY}"] }
"#;

#[tokio::test]
async fn tenant_scope_never_serves_one_tenants_body_to_another() {
    let origin =
        Origin::start(|s: &Seen, _| fresh(&format!("data for {}", s.header("authorization"))))
            .await;
    let tg =
        Tollgate::start_with_env(&config(origin.addr(), "scope: tenant", TENANTS), &KEYS).await;
    let acme = [("authorization", "Bearer key-acme")];
    let globex = [("authorization", "Bearer key-globex")];

    let a = get_with(&tg, "/api/me", &acme).await;
    assert_eq!(a.x_cache, "MISS");
    let g = get_with(&tg, "/api/me", &globex).await;
    assert_eq!(g.x_cache, "MISS", "globex must not get acme's entry");
    assert_eq!(g.body, "data for Bearer key-globex");
    for _ in 0..3 {
        let a = get_with(&tg, "/api/me", &acme).await;
        assert_eq!(
            (a.x_cache.as_str(), a.body.as_str()),
            ("HIT", "data for Bearer key-acme")
        );
        let g = get_with(&tg, "/api/me", &globex).await;
        assert_eq!(
            (g.x_cache.as_str(), g.body.as_str()),
            ("HIT", "data for Bearer key-globex")
        );
    }
    // Anonymous callers share one entry, distinct from both tenants'.
    let anon = get(&tg, "/api/me").await;
    assert_eq!(
        (anon.x_cache.as_str(), anon.body.as_str()),
        ("MISS", "data for ")
    );
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_exactly_once() {
    let origin = Origin::start(|_s: &Seen, n| {
        if n == 0 {
            Answer::ok(
                "v1",
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=300"),
                    ("age", "10"),
                ],
            )
        } else {
            // The refresh is held until the test has seen every stale answer.
            fresh("v2").held()
        }
    })
    .await;
    let tg = start(&origin, "").await;
    assert_eq!(get(&tg, "/swr").await.body, "v1");

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (tg.client.clone(), tg.url("/swr"));
        tasks.push(tokio::spawn(async move {
            got(client.get(url).send().await.unwrap()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            r.body, "v1",
            "stale body served at once (the refresh is still held)"
        );
        assert_eq!(r.x_cache, "UPDATING");
        assert!(
            r.cache_status.contains("detail=stale-while-revalidate"),
            "{}",
            r.cache_status
        );
    }
    // The refresh runs in the background: wait for it to reach the origin.
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no background refresh reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    origin.open_gate(1);
    assert_eq!(
        tg.metric_reaches(
            "tollgate_cache_background_revalidations_total",
            &[("route", "api"), ("outcome", "refreshed")],
            1.0
        )
        .await,
        Some(1.0)
    );
    let after = get(&tg, "/swr").await;
    assert_eq!((after.x_cache.as_str(), after.body.as_str()), ("HIT", "v2"));
    // A second refresh would have reached the origin (and been held there) meanwhile.
    assert_eq!(
        origin.count(),
        2,
        "20 stale requests, exactly one background refresh"
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_object_on_5xx() {
    let origin = Origin::start(stale_then(
        "good",
        "max-age=10",
        Answer::ok("broken", &[]).status(503),
    ))
    .await;
    let tg = start(&origin, "stale_if_error: 5m").await;
    assert_eq!(get(&tg, "/sie").await.body, "good");
    let r = get(&tg, "/sie").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "good");
    assert_eq!(r.x_cache, "STALE");
    assert!(
        r.cache_status
            .starts_with("tollgate; fwd=stale; fwd-status=503; ttl=-"),
        "{}",
        r.cache_status
    );
    assert!(r.cache_status.ends_with("detail=stale-if-error"));

    // Without a stale-if-error window the error goes through.
    let origin2 = Origin::start(stale_then(
        "good",
        "max-age=10",
        Answer::ok("broken", &[]).status(503),
    ))
    .await;
    let tg2 = start(&origin2, "").await;
    get(&tg2, "/sie").await;
    assert_eq!(get(&tg2, "/sie").await.status, 503);
}

#[tokio::test]
async fn stale_if_error_survives_the_origin_process_being_killed() {
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut demo = DemoUpstream::start(addr).await;
    let tg = Tollgate::start(&config(addr, "ttl: 1s, stale_if_error: 5m", "")).await;
    let first = get(&tg, "/api/hello").await;
    assert_eq!(first.x_cache, "MISS");
    assert!(first.body.contains("\"hello\""));

    demo.kill();
    // Poll until the entry has expired: every answer meanwhile must still be the stored body.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&tg, "/api/hello").await;
        assert_eq!(r.status, 200, "origin down: {}", r.cache_status);
        assert_eq!(r.body, first.body);
        if r.x_cache == "STALE" {
            assert!(r.cache_status.contains("fwd=stale"), "{}", r.cache_status);
            assert!(
                !r.cache_status.contains("fwd-status"),
                "no status from a dead origin"
            );
            break;
        }
        assert_eq!(r.x_cache, "HIT");
        assert!(Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start(|_s: &Seen, n| fresh(&format!("only #{n}")).held()).await;
    let tg = start(&origin, "").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (tg.client.clone(), tg.url("/hot"));
        tasks.push(tokio::spawn(async move {
            got(client.get(url).send().await.unwrap()).await
        }));
    }
    // Release the origin only once all fifty are inside tollgate and one reached the origin.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inflight = metric_value(&tg.metrics().await, "tollgate_http_requests_in_flight", &[]);
        if inflight == Some(50.0) && origin.count() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "in flight: {inflight:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    origin.open_gate(50);
    let mut outcomes = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "only #0"));
        *outcomes.entry(r.x_cache).or_insert(0) += 1;
    }
    assert_eq!(origin.count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.get("MISS"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("HIT"), Some(&49), "{outcomes:?}");
}

#[tokio::test]
async fn admin_purge_by_url_prefix_and_tenant_needs_the_token() {
    let origin = Origin::start(|s: &Seen, n| fresh(&format!("{}?{} #{n}", s.path, s.query))).await;
    let tg = common::Tollgate::start_with_env_admin(
        &config(origin.addr(), "scope: tenant", TENANTS),
        "  token: \"${TOLLGATE_ADMIN_TOKEN}\"\n",
        &[("TOLLGATE_ADMIN_TOKEN", "s3cret-token"), KEYS[0], KEYS[1]],
    )
    .await;
    let acme = [("authorization", "Bearer key-acme")];
    let globex = [("authorization", "Bearer key-globex")];
    for p in ["/api/a", "/api/b?x=1", "/other"] {
        get_with(&tg, p, &acme).await;
        get_with(&tg, p, &globex).await;
        get(&tg, p).await;
    }
    let purge = |body: &'static str, token: Option<&'static str>| {
        let mut req = tg.client.post(tg.admin_url("/cache/purge")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    assert_eq!(purge(r#"{"all": true}"#, None).await.0, 401);
    assert_eq!(purge(r#"{"all": true}"#, Some("wrong")).await.0, 401);
    let (status, body) = purge(r#"{"prefixx": "/"}"#, Some("s3cret-token")).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("unknown field"),
        "{body}"
    );

    // By tenant: acme's three entries go, globex's and the shared ones stay.
    let (status, body) = purge(r#"{"tenant": "acme"}"#, Some("s3cret-token")).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(3)));
    assert_eq!(get_with(&tg, "/api/a", &acme).await.x_cache, "MISS");
    assert_eq!(get_with(&tg, "/api/a", &globex).await.x_cache, "HIT");
    assert_eq!(get(&tg, "/api/a").await.x_cache, "HIT");

    // By prefix, every scope: /api/a and /api/b?x=1 for acme (refilled: 1), globex and shared.
    let (status, body) = purge(r#"{"prefix": "/api/"}"#, Some("s3cret-token")).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(5)));
    assert_eq!(get_with(&tg, "/api/b?x=1", &globex).await.x_cache, "MISS");
    assert_eq!(get(&tg, "/other").await.x_cache, "HIT");

    // By exact URL (query included), shared scope only.
    get(&tg, "/api/b?x=1").await;
    let (_, body) = purge(
        r#"{"url": "/api/b?x=1", "shared": true}"#,
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(body["purged"].as_u64(), Some(1));
    assert_eq!(get(&tg, "/api/b?x=1").await.x_cache, "MISS");
    assert_eq!(get_with(&tg, "/api/b?x=1", &globex).await.x_cache, "HIT");
    assert!(
        metric_value(
            &tg.metrics().await,
            "tollgate_cache_purged_entries_total",
            &[("reason", "admin")]
        )
        .unwrap()
            >= 9.0
    );
}

#[tokio::test]
async fn successful_mutations_invalidate_the_path_and_related_prefixes() {
    let origin = Origin::start(|s: &Seen, n| {
        if s.method == "GET" {
            fresh(&format!("{} #{n}", s.path))
        } else if s.path.ends_with("/fail") {
            Answer::ok("no", &[]).status(500)
        } else {
            Answer::ok("done", &[]).status(201)
        }
    })
    .await;
    let tg = start(
        &origin,
        "scope: shared, invalidate_prefixes: [\"/api/items/list\"]",
    )
    .await;
    for p in [
        "/api/items/1",
        "/api/items/2",
        "/api/items/list?page=1",
        "/api/items/fail",
    ] {
        assert_eq!(get(&tg, p).await.x_cache, "MISS");
    }
    let r = tg
        .client
        .put(tg.url("/api/items/1"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        get(&tg, "/api/items/1").await.x_cache,
        "MISS",
        "mutated path purged"
    );
    assert_eq!(
        get(&tg, "/api/items/list?page=1").await.x_cache,
        "MISS",
        "related prefix purged"
    );
    assert_eq!(
        get(&tg, "/api/items/2").await.x_cache,
        "HIT",
        "other paths kept"
    );

    let r = tg
        .client
        .delete(tg.url("/api/items/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        get(&tg, "/api/items/fail").await.x_cache,
        "HIT",
        "a failed mutation purges nothing"
    );
}

#[tokio::test]
async fn eviction_keeps_the_store_within_its_byte_budget() {
    // 4 KiB bodies into a 1 MiB store: about two hundred fit (each entry also pays for its
    // headers and bookkeeping). Enough entries per LRU shard (16) that the approximate,
    // per-shard LRU order is a sure thing at both ends: the newest all stay, the oldest goes.
    let origin = Origin::start(|s: &Seen, _| fresh(&format!("{:<4096}", s.path))).await;
    let tg = Tollgate::start(&config(
        origin.addr(),
        "",
        "cache:\n  max_size: 1MiB\n  max_object_size: 256KiB\n",
    ))
    .await;
    const N: usize = 600;
    for i in 0..N {
        assert_eq!(get(&tg, &format!("/obj/{i}")).await.x_cache, "MISS");
    }
    let m = tg.metrics().await;
    let used = metric_value(&m, "tollgate_cache_used_bytes", &[]).unwrap();
    let max = metric_value(&m, "tollgate_cache_max_bytes", &[]).unwrap();
    let entries = metric_value(&m, "tollgate_cache_entries", &[]).unwrap();
    let evicted = metric_value(&m, "tollgate_cache_evictions_total", &[]).unwrap();
    assert_eq!(max, 1048576.0);
    assert!(used <= max, "used {used} > budget {max}");
    assert!((128.0..256.0).contains(&entries), "entries {entries}");
    assert_eq!(
        entries + evicted,
        N as f64,
        "every object stored, the oldest evicted"
    );
    for i in N - 10..N {
        assert_eq!(
            get(&tg, &format!("/obj/{i}")).await.x_cache,
            "HIT",
            "recent entry {i} kept"
        );
    }
    assert_eq!(
        get(&tg, "/obj/0").await.x_cache,
        "MISS",
        "least recently used evicted"
    );

    // Larger than max_object_size: passed through, not stored.
    let origin2 = Origin::start(|_s: &Seen, n| fresh(&format!("{n}{}", "x".repeat(300_000)))).await;
    let tg2 = Tollgate::start(&config(
        origin2.addr(),
        "",
        "cache:\n  max_size: 1MiB\n  max_object_size: 256KiB\n",
    ))
    .await;
    let big = get(&tg2, "/big").await;
    assert_eq!(big.body.len(), 300_001);
    assert!(
        big.cache_status.contains("detail=too-large"),
        "{}",
        big.cache_status
    );
    let again = get(&tg2, "/big").await;
    assert_eq!(again.body.len(), 300_001);
    assert_eq!(
        again.x_cache, "BYPASS",
        "remembered as too large: no lock, no store"
    );
    assert!(again.cache_status.ends_with("detail=too-large"));
    assert_eq!(origin2.count(), 2);
}

#[tokio::test]
async fn cache_config_errors_name_the_key() {
    let (code, _, err) = common::check_yaml(
        r#"upstreams: { app: { endpoints: ["127.0.0.1:1"] } }
routes:
  - match: { path_prefix: / }
    upstream: app
    cache: { methods: [GET, POST], statuses: [200, 206], ttl: 0s, scope: everyone }
"#,
    );
    assert_eq!(code, 1);
    assert!(err.contains("routes[0].cache.scope"), "{err}");
    let (code, _, err) = common::check_yaml(
        r#"upstreams: { app: { endpoints: ["127.0.0.1:1"] } }
routes:
  - match: { path_prefix: / }
    upstream: app
    cache: { methods: [GET, POST], statuses: [200, 206], ttl: 0s }
cache: { max_size: 10MB, max_object_size: 8MB }
"#,
    );
    assert_eq!(code, 1);
    for want in [
        "routes[0].cache.methods[1]: `POST` responses cannot be cached",
        "routes[0].cache.statuses[1]: 206",
        "routes[0].cache.ttl: must be more than 0s",
        "cache.max_object_size",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}

#[tokio::test]
async fn unknown_keys_on_a_route_that_only_caches_pass_uncached() {
    let origin =
        Origin::start(|s: &Seen, n| fresh(&format!("{} #{n}", s.header("authorization")))).await;
    let yaml = format!(
        r#"upstreams:
  app:
    endpoints: ["{}"]
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
    rate_limit: {{ enabled: false }}
    cache: {{ scope: tenant }}
{TENANTS}"#,
        origin.addr()
    );
    let tg = Tollgate::start_with_env(&yaml, &KEYS).await;
    let stranger = [("authorization", "Bearer not-a-tenant")];
    for _ in 0..2 {
        let r = get_with(&tg, "/api/me", &stranger).await;
        assert_eq!(
            r.status, 200,
            "no limits here: unknown keys are not refused"
        );
        assert_eq!(r.x_cache, "BYPASS");
        assert!(
            r.cache_status.ends_with("detail=unknown-key"),
            "{}",
            r.cache_status
        );
    }
    let acme = [("authorization", "Bearer key-acme")];
    assert_eq!(get_with(&tg, "/api/me", &acme).await.x_cache, "MISS");
    assert_eq!(get_with(&tg, "/api/me", &acme).await.x_cache, "HIT");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn compressed_routes_store_one_encoded_variant_per_coding() {
    use std::io::Read;
    let doc: String = (0..200)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item-{i}\"}},"))
        .collect();
    let body = format!("[{}]", doc.trim_end_matches(','));
    let origin_body = body.clone();
    let origin = Origin::start(move |_s: &Seen, _| {
        Answer::ok(
            origin_body.clone(),
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "application/json"),
            ],
        )
    })
    .await;
    let yaml = format!(
        r#"upstreams:
  app:
    endpoints: ["{}"]
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
    cache: {{ scope: shared }}
    compression: {{ gzip: {{ level: 6 }}, brotli: {{ level: 5 }} }}
"#,
        origin.addr()
    );
    let tg = Tollgate::start(&yaml).await;
    let fetch = |ae: Option<&'static str>, opt_out: bool| {
        let mut req = tg.client.get(tg.url("/list"));
        if let Some(ae) = ae {
            req = req.header("accept-encoding", ae);
        }
        if opt_out {
            req = req.header("x-no-compression", "1");
        }
        async move {
            let r = req.send().await.unwrap();
            let enc = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            let x = r.headers()["x-cache-status"].to_str().unwrap().to_string();
            let raw = r.bytes().await.unwrap().to_vec();
            (x, enc, raw)
        }
    };
    let gunzip = |raw: &[u8]| {
        let mut s = String::new();
        flate2::read::GzDecoder::new(raw)
            .read_to_string(&mut s)
            .unwrap();
        s
    };

    let (x, enc, raw) = fetch(Some("gzip"), false).await;
    assert_eq!((x.as_str(), enc.as_deref()), ("MISS", Some("gzip")));
    assert_eq!(gunzip(&raw), body);
    assert_eq!(origin.seen()[0].header("accept-encoding"), "gzip");
    // Another way of asking for gzip: the same (gzip) variant, served as stored.
    let (x, enc, raw) = fetch(Some("deflate;q=1, gzip;q=0.8"), false).await;
    assert_eq!((x.as_str(), enc.as_deref()), ("HIT", Some("gzip")));
    assert_eq!(gunzip(&raw), body);

    // No Accept-Encoding: the identity variant, fetched once.
    let (x, enc, raw) = fetch(None, false).await;
    assert_eq!((x.as_str(), enc.as_deref()), ("MISS", None));
    assert_eq!(String::from_utf8(raw).unwrap(), body);
    assert_eq!(origin.seen()[1].header("accept-encoding"), "");
    let (x, enc, _) = fetch(None, false).await;
    assert_eq!((x.as_str(), enc.as_deref()), ("HIT", None));
    // Opting out is the identity variant too.
    let (x, enc, raw) = fetch(Some("gzip"), true).await;
    assert_eq!((x.as_str(), enc.as_deref()), ("HIT", None));
    assert_eq!(String::from_utf8(raw).unwrap(), body);
    assert_eq!(origin.count(), 2);

    // brotli (tollgate's own encoder, on the way out): its entry keeps identity from the
    // upstream, encoded for each response; every response decodes strictly.
    for want in ["MISS", "HIT"] {
        let (x, enc, raw) = fetch(Some("br"), false).await;
        assert_eq!((x.as_str(), enc.as_deref()), (want, Some("br")));
        let mut out = String::new();
        brotli::Decompressor::new(&raw[..], 4096)
            .read_to_string(&mut out)
            .expect("a complete brotli stream");
        assert_eq!(out, body);
    }
    assert_eq!(origin.count(), 3);
    assert_eq!(origin.seen()[2].header("accept-encoding"), "");

    // Compressed once, when the gzip variant was stored: hits are not compressed again.
    let input = tg
        .metric_reaches(
            "tollgate_compression_input_bytes_total",
            &[("algorithm", "gzip")],
            body.len() as f64,
        )
        .await;
    assert_eq!(input, Some(body.len() as f64));
}

#[tokio::test]
async fn a_stale_entry_without_validators_is_fetched_again_and_replaced() {
    // Stored (it had a lifetime) but stale on arrival, and nothing to revalidate with.
    let origin = Origin::start(stale_then("old", "max-age=10", fresh("new"))).await;
    let tg = start(&origin, "").await;
    assert_eq!(get(&tg, "/e").await.x_cache, "MISS");
    let r = get(&tg, "/e").await;
    assert_eq!((r.x_cache.as_str(), r.body.as_str()), ("EXPIRED", "new"));
    assert_eq!(
        r.cache_status,
        "tollgate; fwd=stale; fwd-status=200; stored"
    );
    let r = get(&tg, "/e").await;
    assert_eq!((r.x_cache.as_str(), r.body.as_str()), ("HIT", "new"));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn stale_if_error_covers_an_origin_that_times_out() {
    // Later answers are never given (the gate stays shut): the attempt's read timeout fires.
    let origin = Origin::start(stale_then(
        "good",
        "max-age=10",
        Answer::ok("late", &[]).held(),
    ))
    .await;
    let yaml = format!(
        r#"upstreams:
  app:
    endpoints: ["{}"]
    retry: {{ attempts: 1, per_try_timeout: 300ms }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
    cache: {{ stale_if_error: 5m }}
"#,
        origin.addr()
    );
    let tg = Tollgate::start(&yaml).await;
    assert_eq!(get(&tg, "/slow").await.x_cache, "MISS");
    let r = get(&tg, "/slow").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert_eq!(r.x_cache, "STALE");
    assert!(
        r.cache_status.starts_with("tollgate; fwd=stale")
            && r.cache_status.ends_with("detail=stale-if-error"),
        "{}",
        r.cache_status
    );
    assert_eq!(origin.count(), 2, "the refresh was tried (and timed out)");
}

#[tokio::test]
async fn must_revalidate_and_proxy_revalidate_forbid_serving_stale_on_error() {
    for directive in ["must-revalidate", "proxy-revalidate"] {
        let cc = format!("max-age=10, {directive}");
        let broken = Answer::ok("broken", &[]).status(503);
        let origin = Origin::start(stale_then("good", &cc, broken)).await;
        let tg = start(&origin, "stale_while_revalidate: 5m, stale_if_error: 5m").await;
        assert_eq!(get(&tg, "/strict").await.x_cache, "MISS");
        // The route would allow both stale windows; the origin's directive wins: the stale
        // copy is neither served while revalidating nor in place of the error.
        let r = get(&tg, "/strict").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "broken"),
            "{directive}: {}",
            r.cache_status
        );
        assert!(origin.count() >= 2, "{directive}: the origin was asked");
    }
}
