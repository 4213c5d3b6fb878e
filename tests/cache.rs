//! The response cache through the real binary, against scripted origins on loopback:
//! hits and misses with RFC 9211 `Cache-Status`, RFC 9111 storage rules, `Age`, 304
//! revalidation, conditional requests from cache, `Vary`, tenant-scoped keys,
//! stale-while-revalidate (exactly one background refresh), stale-if-error (5xx and a killed
//! origin process), 50-way request coalescing, admin purges, mutation invalidation, eviction
//! under the byte budget, metrics.
//!
//! Staleness without sleeping: an origin answer with `Cache-Control: max-age=10` and `Age: 10`
//! is stored already stale (its whole lifetime was used up before it arrived).

mod common;

use common::*;
use reqwest::Method;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Group `app` on `origin`, one catch-all route `api` caching with `cache` (YAML text).
fn cached(origin: SocketAddr, cache: &str) -> Config {
    Config::new()
        .upstream(Group::new("app", [origin]))
        .route(Route::prefix("/").name("api").to("app").cache(cache))
}

/// An origin script: the first answer, `body` with `cache_control` and `Age: 10`, is stored
/// already stale (when its max-age is 10); every later answer is `later`.
fn stale_then(
    body: &'static str,
    cache_control: &str,
    later: Reply,
) -> impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static {
    let cache_control = cache_control.to_string();
    move |_, n| {
        if n == 0 {
            Reply::ok(body).headers(&[("cache-control", &cache_control), ("age", "10")])
        } else {
            later.clone()
        }
    }
}

/// A 200 with `body`, fresh for a minute.
fn fresh(body: impl Into<axum::body::Bytes>) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=60")
}

/// Tenants `acme` and `globex` (keys `key-acme`, `key-globex`, from the environment) on a
/// generous tier that anonymous callers share.
fn with_tenants(cfg: Config) -> Config {
    cfg.identity("anonymous_tier", "free")
        .tier("free", "{ rps: 1000, burst: 1000 }")
        .tenant("acme", "free", ["${ACME_KEY}"])
        .tenant("globex", "free", ["${GLOBEX_KEY}"])
        .env("ACME_KEY", "key-acme")
        .env("GLOBEX_KEY", "key-globex")
}

const ACME: [(&str, &str); 1] = [("authorization", "Bearer key-acme")];
const GLOBEX: [(&str, &str); 1] = [("authorization", "Bearer key-globex")];

#[tokio::test]
async fn miss_then_hit_with_rfc9211_cache_status_and_age() {
    let origin = Upstream::scripted(|r, n| {
        Reply::ok(format!("{} #{n}", r.path)).headers(&[
            ("cache-control", "max-age=100"),
            ("age", "7"),
            ("cache-status", "app-cache; fwd=uri-miss"),
        ])
    })
    .await;
    let tg = cached(origin.addr(), "{ ttl: 60s }").start().await;

    let first = tg.get("/api/models").await;
    first.assert_status(200);
    assert_eq!(first.text(), "/api/models #0");
    assert_eq!(first.cache(), "MISS");
    // RFC 9211: tollgate's member follows the one of the cache nearer the origin.
    assert_eq!(
        first.cache_status(),
        "app-cache; fwd=uri-miss, tollgate; fwd=miss; fwd-status=200; stored"
    );

    let second = tg.get("/api/models").await;
    assert_eq!(second.text(), "/api/models #0", "served from cache");
    assert_eq!(second.cache(), "HIT");
    // Fresh for 100 s minus the 7 s it was old on arrival.
    let ttl: i64 = second
        .cache_status()
        .strip_prefix("app-cache; fwd=uri-miss, tollgate; hit; ttl=")
        .unwrap_or_else(|| panic!("{}", second.cache_status()))
        .parse()
        .unwrap();
    assert!((90..=93).contains(&ttl), "ttl {ttl}");
    assert!(second.age().unwrap() >= 7, "Age counts the age on arrival");
    assert_eq!(origin.count(), 1);

    // Other paths and queries are other entries.
    assert_eq!(tg.get("/api/models?page=2").await.cache(), "MISS");
    assert_eq!(tg.get("/api/other").await.cache(), "MISS");
    assert_eq!(origin.count(), 3);

    let m = tg.metrics().await;
    assert!(metric_value(&m, "tollgate_cache_entries", &[]).unwrap() >= 3.0);
    assert!(metric_value(&m, "tollgate_cache_used_bytes", &[]).unwrap() > 0.0);
    let hits = [("route", "api"), ("status", "hit")];
    tg.expect_metric("tollgate_cache_requests_total", &hits, 1.0)
        .await;
}

#[tokio::test]
async fn origin_directives_and_route_rules_decide_what_is_stored() {
    let origin = Upstream::scripted(|r, n| {
        let body = format!("{} #{n}", r.path);
        match r.path.as_str() {
            "/no-store" => Reply::ok(body).header("cache-control", "no-store"),
            "/private" => Reply::ok(body).header("cache-control", "private, max-age=60"),
            "/cookie" => fresh(body).header("set-cookie", "s=1"),
            "/bare" => Reply::ok(body),
            "/error" => fresh(body).status(500),
            _ => fresh(body),
        }
    })
    .await;
    // No route ttl: only origin freshness counts.
    let tg = cached(origin.addr(), "{ stale_if_error: 0s }")
        .start()
        .await;
    for (path, detail) in [
        ("/no-store", "origin-no-store"),
        ("/private", "origin-no-store"),
        ("/cookie", "set-cookie"),
        ("/bare", "no-freshness"),
        ("/error", "status"),
    ] {
        let a = tg.get(path).await;
        assert_eq!(a.cache(), "MISS", "{path}");
        assert!(
            a.cache_status().ends_with(&format!("detail={detail}")),
            "{path}: {}",
            a.cache_status()
        );
        // Not stored; and remembered as such, so the next request skips the cache lock.
        let b = tg.get(path).await;
        assert_eq!(b.cache(), "BYPASS", "{path} must not be stored");
        assert!(
            b.cache_status().ends_with(&format!("detail={detail}")),
            "{path}: {}",
            b.cache_status()
        );
        assert_ne!(a.text(), b.text(), "{path} answered twice by the origin");
    }

    // Authorization on a shared-scope route: neither stored nor served from shared entries.
    let anon = tg.get("/authz").await;
    assert_eq!(anon.cache(), "MISS");
    assert_eq!(tg.get("/authz").await.cache(), "HIT");
    let before = origin.count();
    let a = tg
        .get_with("/authz", &[("authorization", "Bearer x")])
        .await;
    assert_eq!(a.cache(), "BYPASS");
    assert_eq!(
        a.cache_status(),
        "tollgate; fwd=bypass; fwd-status=200; detail=authorization"
    );
    assert_ne!(
        a.text(),
        anon.text(),
        "the shared entry is not served to a credentialed request"
    );
    assert_eq!(origin.count(), before + 1);

    // Methods other than GET/HEAD bypass the cache.
    let r = tg.send(tg.req(Method::POST, "/thing")).await;
    assert_eq!(r.cache(), "BYPASS");
    assert!(
        r.cache_status().starts_with("tollgate; fwd=bypass"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn head_and_conditional_requests_are_answered_from_cache() {
    let origin =
        Upstream::scripted(|_, n| fresh(format!("body #{n}")).header("etag", "\"v1\"")).await;
    let tg = cached(origin.addr(), "{}").start().await;
    assert_eq!(tg.get("/doc").await.cache(), "MISS");

    let head = tg.send(tg.req(Method::HEAD, "/doc")).await;
    head.assert_status(200)
        .assert_header("x-cache-status", "HIT")
        .assert_header("content-length", "7");

    let cond = tg.get_with("/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status, 304, "matching validator: 304 from cache");
    assert_eq!(cond.cache(), "HIT");
    let other = tg.get_with("/doc", &[("if-none-match", "\"v0\"")]).await;
    other.assert_status(200);
    assert_eq!(other.text(), "body #0");
    assert_eq!(origin.count(), 1, "all of it from one origin response");
}

#[tokio::test]
async fn stale_entry_is_revalidated_with_validators_and_a_304_refreshes_it() {
    let origin = Upstream::scripted(|r, n| {
        if n == 0 {
            // Stored already stale: the next request revalidates.
            Reply::ok("the full body").headers(&[
                ("cache-control", "max-age=10"),
                ("age", "10"),
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
            ])
        } else if r.header("if-none-match") == "\"v1\"" {
            Reply::ok("")
                .status(304)
                .headers(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")])
        } else {
            Reply::ok("unexpected full fetch")
        }
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;
    assert_eq!(tg.get("/r").await.cache(), "MISS");

    let second = tg.get("/r").await;
    second.assert_status(200);
    assert_eq!(second.text(), "the full body");
    assert_eq!(second.cache(), "REVALIDATED");
    assert!(
        second
            .cache_status()
            .starts_with("tollgate; fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.count(), 2);
    let revalidation = origin.request(1);
    assert_eq!(revalidation.header("if-none-match"), "\"v1\"");
    assert_eq!(
        revalidation.header("if-modified-since"),
        "Mon, 02 Nov 2026 10:00:00 GMT"
    );

    let third = tg.get("/r").await;
    assert_eq!(third.cache(), "HIT", "the 304 made it fresh again");
    assert_eq!(third.text(), "the full body");
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let origin = Upstream::scripted(|r, n| {
        let (lang, variant) = (r.header("accept-language"), r.header("x-variant"));
        fresh(format!("lang={lang} variant={variant} #{n}"))
            .header("vary", "Accept-Language, X-Variant")
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;
    let combos = [("en", "a"), ("fr", "a"), ("en", "b")];
    let mut first = Vec::new();
    for (lang, v) in combos {
        let r = tg
            .get_with("/v", &[("accept-language", lang), ("x-variant", v)])
            .await;
        assert_eq!(r.cache(), "MISS", "{lang}/{v} is its own variant");
        assert!(
            r.text().starts_with(&format!("lang={lang} variant={v} ")),
            "{}",
            r.text()
        );
        first.push(r.text().to_string());
    }
    for (i, (lang, v)) in combos.iter().enumerate() {
        let r = tg
            .get_with("/v", &[("accept-language", lang), ("x-variant", v)])
            .await;
        assert_eq!(r.cache(), "HIT", "{lang}/{v}");
        assert_eq!(r.text(), first[i], "each variant gets its own body");
    }
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn tenant_scope_never_serves_one_tenants_body_to_another() {
    let origin =
        Upstream::scripted(|r, _| fresh(format!("data for {}", r.header("authorization")))).await;
    let tg = with_tenants(cached(origin.addr(), "{ scope: tenant }"))
        .start()
        .await;

    let a = tg.get_with("/api/me", &ACME).await;
    assert_eq!(a.cache(), "MISS");
    let g = tg.get_with("/api/me", &GLOBEX).await;
    assert_eq!(g.cache(), "MISS", "globex must not get acme's entry");
    assert_eq!(g.text(), "data for Bearer key-globex");
    for _ in 0..3 {
        let a = tg.get_with("/api/me", &ACME).await;
        assert_eq!((a.cache(), a.text()), ("HIT", "data for Bearer key-acme"));
        let g = tg.get_with("/api/me", &GLOBEX).await;
        assert_eq!((g.cache(), g.text()), ("HIT", "data for Bearer key-globex"));
    }
    // Anonymous callers share one entry, distinct from both tenants'.
    let anon = tg.get("/api/me").await;
    assert_eq!((anon.cache(), anon.text()), ("MISS", "data for "));
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_exactly_once() {
    let origin = Upstream::scripted(|_, n| {
        if n == 0 {
            Reply::ok("v1").headers(&[
                ("cache-control", "max-age=10, stale-while-revalidate=300"),
                ("age", "10"),
            ])
        } else {
            // The refresh is held until the test has seen every stale answer.
            fresh("v2").held()
        }
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;
    assert_eq!(tg.get("/swr").await.text(), "v1");

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (tg.client.clone(), tg.url("/swr"));
        tasks.push(tokio::spawn(async move {
            Got::read(client.get(url).send().await.unwrap()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            r.text(),
            "v1",
            "stale body served at once (the refresh is still held)"
        );
        assert_eq!(r.cache(), "UPDATING");
        assert!(
            r.cache_status().contains("detail=stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
    }
    // The refresh runs in the background: wait for it to reach the origin.
    let refreshing = eventually(Duration::from_secs(10), || async { origin.count() >= 2 }).await;
    assert!(refreshing, "no background refresh reached the origin");

    origin.open_gate(1);
    let refreshed = [("route", "api"), ("outcome", "refreshed")];
    tg.expect_metric(
        "tollgate_cache_background_revalidations_total",
        &refreshed,
        1.0,
    )
    .await;
    let after = tg.get("/swr").await;
    assert_eq!((after.cache(), after.text()), ("HIT", "v2"));
    // A second refresh would have reached the origin (and been held there) meanwhile.
    assert_eq!(
        origin.count(),
        2,
        "20 stale requests, exactly one background refresh"
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_object_on_5xx() {
    let broken = || Reply::ok("broken").status(503);
    let origin = Upstream::scripted(stale_then("good", "max-age=10", broken())).await;
    let tg = cached(origin.addr(), "{ stale_if_error: 5m }")
        .start()
        .await;
    assert_eq!(tg.get("/sie").await.text(), "good");
    let r = tg.get("/sie").await;
    r.assert_status(200);
    assert_eq!(r.text(), "good");
    assert_eq!(r.cache(), "STALE");
    assert!(
        r.cache_status()
            .starts_with("tollgate; fwd=stale; fwd-status=503; ttl=-"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().ends_with("detail=stale-if-error"));

    // Without a stale-if-error window the error goes through.
    let origin2 = Upstream::scripted(stale_then("good", "max-age=10", broken())).await;
    let tg2 = cached(origin2.addr(), "{}").start().await;
    tg2.get("/sie").await;
    tg2.get("/sie").await.assert_status(503);
}

#[tokio::test]
async fn stale_if_error_survives_the_origin_process_being_killed() {
    let addr = free_addr();
    let mut demo = DemoUpstream::start(addr).await;
    let tg = cached(addr, "{ ttl: 1s, stale_if_error: 5m }")
        .start()
        .await;
    let first = tg.get("/api/hello").await;
    assert_eq!(first.cache(), "MISS");
    assert!(first.text().contains("\"hello\""));

    demo.kill();
    // Poll until the entry has expired: every answer meanwhile must still be the stored body.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tg.get("/api/hello").await;
        assert_eq!(r.status, 200, "origin down: {}", r.cache_status());
        assert_eq!(r.text(), first.text());
        if r.cache() == "STALE" {
            assert!(
                r.cache_status().contains("fwd=stale"),
                "{}",
                r.cache_status()
            );
            assert!(
                !r.cache_status().contains("fwd-status"),
                "no status from a dead origin"
            );
            break;
        }
        assert_eq!(r.cache(), "HIT");
        assert!(Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_request() {
    let origin = Upstream::scripted(|_, n| fresh(format!("only #{n}")).held()).await;
    let tg = cached(origin.addr(), "{}").start().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (tg.client.clone(), tg.url("/hot"));
        tasks.push(tokio::spawn(async move {
            Got::read(client.get(url).send().await.unwrap()).await
        }));
    }
    // Release the origin only once all fifty are inside tollgate and one reached the origin.
    let in_flight = "tollgate_http_requests_in_flight";
    let all_in = eventually(Duration::from_secs(10), || async {
        tg.metric(in_flight, &[]).await == Some(50.0) && origin.count() >= 1
    })
    .await;
    assert!(all_in, "in flight: {:?}", tg.metric(in_flight, &[]).await);
    origin.open_gate(50);
    let mut outcomes = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text()), (200, "only #0"));
        *outcomes.entry(r.cache().to_string()).or_insert(0) += 1;
    }
    assert_eq!(origin.count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.get("MISS"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("HIT"), Some(&49), "{outcomes:?}");
}

#[tokio::test]
async fn admin_purge_by_url_prefix_and_tenant_needs_the_token() {
    let origin = Upstream::scripted(|r, n| fresh(format!("{}?{} #{n}", r.path, r.query))).await;
    let tg = with_tenants(cached(origin.addr(), "{ scope: tenant }"))
        .admin("token", "\"${TOLLGATE_ADMIN_TOKEN}\"")
        .env("TOLLGATE_ADMIN_TOKEN", "s3cret-token")
        .start()
        .await;
    for p in ["/api/a", "/api/b?x=1", "/other"] {
        tg.get_with(p, &ACME).await;
        tg.get_with(p, &GLOBEX).await;
        tg.get(p).await;
    }
    let purge = |body: &'static str, token: Option<&'static str>| {
        let mut req = tg.client.post(tg.admin_url("/cache/purge")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = Got::read(req.send().await.unwrap()).await;
            (r.status, r.json())
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
    assert_eq!(tg.get_with("/api/a", &ACME).await.cache(), "MISS");
    assert_eq!(tg.get_with("/api/a", &GLOBEX).await.cache(), "HIT");
    assert_eq!(tg.get("/api/a").await.cache(), "HIT");

    // By prefix, every scope: /api/a and /api/b?x=1 for acme (refilled: 1), globex and shared.
    let (status, body) = purge(r#"{"prefix": "/api/"}"#, Some("s3cret-token")).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(5)));
    assert_eq!(tg.get_with("/api/b?x=1", &GLOBEX).await.cache(), "MISS");
    assert_eq!(tg.get("/other").await.cache(), "HIT");

    // By exact URL (query included), shared scope only.
    tg.get("/api/b?x=1").await;
    let (_, body) = purge(
        r#"{"url": "/api/b?x=1", "shared": true}"#,
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(body["purged"].as_u64(), Some(1));
    assert_eq!(tg.get("/api/b?x=1").await.cache(), "MISS");
    assert_eq!(tg.get_with("/api/b?x=1", &GLOBEX).await.cache(), "HIT");
    let purged = tg
        .metric(
            "tollgate_cache_purged_entries_total",
            &[("reason", "admin")],
        )
        .await;
    assert!(purged.unwrap() >= 9.0, "{purged:?}");
}

#[tokio::test]
async fn successful_mutations_invalidate_the_path_and_related_prefixes() {
    let origin = Upstream::scripted(|r, n| {
        if r.method == "GET" {
            fresh(format!("{} #{n}", r.path))
        } else if r.path.ends_with("/fail") {
            Reply::ok("no").status(500)
        } else {
            Reply::ok("done").status(201)
        }
    })
    .await;
    let cache = r#"{ scope: shared, invalidate_prefixes: ["/api/items/list"] }"#;
    let tg = cached(origin.addr(), cache).start().await;
    for p in [
        "/api/items/1",
        "/api/items/2",
        "/api/items/list?page=1",
        "/api/items/fail",
    ] {
        assert_eq!(tg.get(p).await.cache(), "MISS");
    }
    let r = tg.send(tg.req(Method::PUT, "/api/items/1").body("x")).await;
    r.assert_status(201);
    assert_eq!(
        tg.get("/api/items/1").await.cache(),
        "MISS",
        "mutated path purged"
    );
    assert_eq!(
        tg.get("/api/items/list?page=1").await.cache(),
        "MISS",
        "related prefix purged"
    );
    assert_eq!(
        tg.get("/api/items/2").await.cache(),
        "HIT",
        "other paths kept"
    );

    let r = tg.send(tg.req(Method::DELETE, "/api/items/fail")).await;
    r.assert_status(500);
    assert_eq!(
        tg.get("/api/items/fail").await.cache(),
        "HIT",
        "a failed mutation purges nothing"
    );
}

/// [`cached`] with route defaults, in a 1 MiB store taking objects up to 256 KiB.
fn small_store(origin: SocketAddr) -> Config {
    cached(origin, "{}")
        .cache("max_size", "1MiB")
        .cache("max_object_size", "256KiB")
}

#[tokio::test]
async fn eviction_keeps_the_store_within_its_byte_budget() {
    // 4 KiB bodies into a 1 MiB store: about two hundred fit (each entry also pays for its
    // headers and bookkeeping). Enough entries per LRU shard (16) that the approximate,
    // per-shard LRU order is a sure thing at both ends: the newest all stay, the oldest goes.
    let origin = Upstream::scripted(|r, _| fresh(format!("{:<4096}", r.path))).await;
    let tg = small_store(origin.addr()).start().await;
    const N: usize = 600;
    for i in 0..N {
        assert_eq!(tg.get(&format!("/obj/{i}")).await.cache(), "MISS");
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
            tg.get(&format!("/obj/{i}")).await.cache(),
            "HIT",
            "recent entry {i} kept"
        );
    }
    assert_eq!(
        tg.get("/obj/0").await.cache(),
        "MISS",
        "least recently used evicted"
    );

    // Larger than max_object_size: passed through, not stored.
    let origin2 = Upstream::scripted(|_, n| fresh(format!("{n}{}", "x".repeat(300_000)))).await;
    let tg2 = small_store(origin2.addr()).start().await;
    let big = tg2.get("/big").await;
    assert_eq!(big.body.len(), 300_001);
    assert!(
        big.cache_status().contains("detail=too-large"),
        "{}",
        big.cache_status()
    );
    let again = tg2.get("/big").await;
    assert_eq!(again.body.len(), 300_001);
    assert_eq!(
        again.cache(),
        "BYPASS",
        "remembered as too large: no lock, no store"
    );
    assert!(again.cache_status().ends_with("detail=too-large"));
    assert_eq!(origin2.count(), 2);
}

#[tokio::test]
async fn cache_config_errors_name_the_key() {
    let (code, _, err) = check_yaml(
        r#"upstreams: { app: { endpoints: ["127.0.0.1:1"] } }
routes:
  - match: { path_prefix: / }
    upstream: app
    cache: { methods: [GET, POST], statuses: [200, 206], ttl: 0s, scope: everyone }
"#,
    );
    assert_eq!(code, 1);
    assert!(err.contains("routes[0].cache.scope"), "{err}");
    let (code, _, err) = check_yaml(
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
    let (code, _, err) = check_yaml(
        r#"upstreams: { app: { endpoints: ["127.0.0.1:1"] } }
routes:
  - match: { path_prefix: /a/ }
    upstream: app
    cache: { targeted_field: "Bad Name" }
  - match: { path_prefix: /b/ }
    upstream: app
    cache: { targeted_field: Cache-Control }
  - match: { path_prefix: /c/ }
    upstream: app
    cache: { targeted_field: CDN-Cache-Control, store_authorized: yes please }
"#,
    );
    assert_eq!(code, 1);
    for want in [
        "routes[0].cache.targeted_field: `Bad Name` is not a valid header name",
        "routes[1].cache.targeted_field: `Cache-Control` is the field a targeted field overrides",
        "routes[2].cache.store_authorized",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    let (code, _, err) = check_yaml(
        r#"upstreams: { app: { endpoints: ["127.0.0.1:1"] } }
routes:
  - match: { path_prefix: /c/ }
    upstream: app
    cache: { targeted_field: CDN-Cache-Control }
"#,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[0].cache.targeted_field: `CDN-Cache-Control` is always honoured"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_keys_on_a_route_that_only_caches_pass_uncached() {
    let origin =
        Upstream::scripted(|r, n| fresh(format!("{} #{n}", r.header("authorization")))).await;
    let route = Route::prefix("/")
        .name("api")
        .to("app")
        .rate_limit("{ enabled: false }")
        .cache("{ scope: tenant }");
    let tg = with_tenants(
        Config::new()
            .upstream(Group::new("app", [origin.addr()]))
            .route(route),
    )
    .start()
    .await;
    let stranger = [("authorization", "Bearer not-a-tenant")];
    for _ in 0..2 {
        let r = tg.get_with("/api/me", &stranger).await;
        assert_eq!(
            r.status, 200,
            "no limits here: unknown keys are not refused"
        );
        assert_eq!(r.cache(), "BYPASS");
        assert!(
            r.cache_status().ends_with("detail=unknown-key"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(tg.get_with("/api/me", &ACME).await.cache(), "MISS");
    assert_eq!(tg.get_with("/api/me", &ACME).await.cache(), "HIT");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn compressed_routes_store_one_encoded_variant_per_coding() {
    use std::io::Read;
    let doc: String = (0..200)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item-{i}\"}},"))
        .collect();
    let body = format!("[{}]", doc.trim_end_matches(','));
    let origin = Upstream::start().await;
    origin.set_reply(fresh(body.clone()).header("content-type", "application/json"));
    let route = Route::prefix("/")
        .name("api")
        .to("app")
        .cache("{ scope: shared }")
        .compression("{ gzip: { level: 6 }, brotli: { level: 5 } }");
    let tg = Config::new()
        .upstream(Group::new("app", [origin.addr()]))
        .route(route)
        .start()
        .await;
    let fetch = |ae: Option<&'static str>, opt_out: bool| {
        let mut headers = Vec::new();
        headers.extend(ae.map(|ae| ("accept-encoding", ae)));
        if opt_out {
            headers.push(("x-no-compression", "1"));
        }
        let tg = &tg;
        async move { tg.get_with("/list", &headers).await }
    };
    let gunzip = |raw: &[u8]| {
        let mut s = String::new();
        flate2::read::GzDecoder::new(raw)
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let encoding = |r: &Got| r.header_opt("content-encoding").map(str::to_string);

    let r = fetch(Some("gzip"), false).await;
    assert_eq!((r.cache(), encoding(&r).as_deref()), ("MISS", Some("gzip")));
    assert_eq!(gunzip(&r.body), body);
    assert_eq!(origin.request(0).header("accept-encoding"), "gzip");
    // Another way of asking for gzip: the same (gzip) variant, served as stored.
    let r = fetch(Some("deflate;q=1, gzip;q=0.8"), false).await;
    assert_eq!((r.cache(), encoding(&r).as_deref()), ("HIT", Some("gzip")));
    assert_eq!(gunzip(&r.body), body);

    // No Accept-Encoding: the identity variant, fetched once.
    let r = fetch(None, false).await;
    assert_eq!((r.cache(), encoding(&r)), ("MISS", None));
    assert_eq!(r.text(), body);
    assert_eq!(origin.request(1).header("accept-encoding"), "");
    let r = fetch(None, false).await;
    assert_eq!((r.cache(), encoding(&r)), ("HIT", None));
    // Opting out is the identity variant too.
    let r = fetch(Some("gzip"), true).await;
    assert_eq!((r.cache(), encoding(&r)), ("HIT", None));
    assert_eq!(r.text(), body);
    assert_eq!(origin.count(), 2);

    // brotli (tollgate's own encoder, on the way out): its entry keeps identity from the
    // upstream, encoded for each response; every response decodes strictly.
    for want in ["MISS", "HIT"] {
        let r = fetch(Some("br"), false).await;
        assert_eq!((r.cache(), encoding(&r).as_deref()), (want, Some("br")));
        let mut out = String::new();
        brotli::Decompressor::new(&r.body[..], 4096)
            .read_to_string(&mut out)
            .expect("a complete brotli stream");
        assert_eq!(out, body);
    }
    assert_eq!(origin.count(), 3);
    assert_eq!(origin.request(2).header("accept-encoding"), "");

    // Compressed once, when the gzip variant was stored: hits are not compressed again.
    let gzip = [("algorithm", "gzip")];
    tg.expect_metric(
        "tollgate_compression_input_bytes_total",
        &gzip,
        body.len() as f64,
    )
    .await;
}

#[tokio::test]
async fn a_stale_entry_without_validators_is_fetched_again_and_replaced() {
    // Stored (it had a lifetime) but stale on arrival, and nothing to revalidate with.
    let origin = Upstream::scripted(stale_then("old", "max-age=10", fresh("new"))).await;
    let tg = cached(origin.addr(), "{}").start().await;
    assert_eq!(tg.get("/e").await.cache(), "MISS");
    let r = tg.get("/e").await;
    assert_eq!((r.cache(), r.text()), ("EXPIRED", "new"));
    assert_eq!(
        r.cache_status(),
        "tollgate; fwd=stale; fwd-status=200; stored"
    );
    let r = tg.get("/e").await;
    assert_eq!((r.cache(), r.text()), ("HIT", "new"));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn stale_if_error_covers_an_origin_that_times_out() {
    // Later answers are never given (the gate stays shut): the attempt's read timeout fires.
    let later = Reply::ok("late").held();
    let origin = Upstream::scripted(stale_then("good", "max-age=10", later)).await;
    let tg = Config::new()
        .upstream(
            Group::new("app", [origin.addr()]).retry("{ attempts: 1, per_try_timeout: 300ms }"),
        )
        .route(
            Route::prefix("/")
                .name("api")
                .to("app")
                .cache("{ stale_if_error: 5m }"),
        )
        .start()
        .await;
    assert_eq!(tg.get("/slow").await.cache(), "MISS");
    let r = tg.get("/slow").await;
    assert_eq!((r.status, r.text()), (200, "good"));
    assert_eq!(r.cache(), "STALE");
    assert!(
        r.cache_status().starts_with("tollgate; fwd=stale")
            && r.cache_status().ends_with("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 2, "the refresh was tried (and timed out)");
}

#[tokio::test]
async fn must_revalidate_and_proxy_revalidate_forbid_serving_stale_on_error() {
    for directive in ["must-revalidate", "proxy-revalidate"] {
        let cc = format!("max-age=10, {directive}");
        let broken = Reply::ok("broken").status(503);
        let origin = Upstream::scripted(stale_then("good", &cc, broken)).await;
        let cache = "{ stale_while_revalidate: 5m, stale_if_error: 5m }";
        let tg = cached(origin.addr(), cache).start().await;
        assert_eq!(tg.get("/strict").await.cache(), "MISS");
        // The route would allow both stale windows; the origin's directive wins: the stale
        // copy is neither served while revalidating nor in place of the error.
        let r = tg.get("/strict").await;
        assert_eq!(
            (r.status, r.text()),
            (503, "broken"),
            "{directive}: {}",
            r.cache_status()
        );
        assert!(origin.count() >= 2, "{directive}: the origin was asked");
    }
}

// ---- RFC 9111 / RFC 9213 corners ----

/// The `Cache-Status` ttl of a hit (`...; hit; ttl=N`).
fn hit_ttl(r: &Got) -> i64 {
    r.cache_status()
        .rsplit("ttl=")
        .next()
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {}", r.cache_status()))
}

#[tokio::test]
async fn a_304_updates_the_stored_fields_it_carries_and_the_freshness() {
    let origin = Upstream::scripted(|r, n| {
        if n == 0 {
            // Stale on arrival: its Date is older than its max-age.
            let long_ago =
                httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(100));
            Reply::ok("the full body").headers(&[
                ("cache-control", "max-age=10"),
                ("date", &long_ago),
                ("etag", "\"v1\""),
                ("x-version", "1"),
                ("x-kept", "yes"),
            ])
        } else if r.header("if-none-match") == "\"v1\"" {
            // A 304 with a field Pingora's own merge leaves out, a Content-Length that describes
            // no body, and (added by the server) a current Date.
            Reply::ok("").status(304).headers(&[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("x-version", "2"),
                ("content-length", "0"),
            ])
        } else {
            Reply::ok("unexpected full fetch")
        }
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;
    let first = tg.get("/r").await;
    assert_eq!(first.cache(), "MISS");
    assert_eq!(first.header("x-version"), "1");

    let second = tg.get("/r").await;
    assert_eq!(second.cache(), "REVALIDATED", "{second:?}");
    assert_eq!(origin.request(1).header("if-none-match"), "\"v1\"");
    assert_eq!(second.text(), "the full body");
    second
        .assert_header("x-version", "2")
        .assert_header("x-kept", "yes")
        .assert_header("content-length", "13");

    // Fresh for the 60 s the 304 gave, counted from the 304's Date, not the stored one.
    let third = tg.get("/r").await;
    assert_eq!(third.cache(), "HIT", "{third:?}");
    assert!(
        (50..=60).contains(&hit_ttl(&third)),
        "{}",
        third.cache_status()
    );
    assert_eq!(third.text(), "the full body");
    third
        .assert_header("x-version", "2")
        .assert_header("content-length", "13");
    assert_eq!(origin.count(), 2);
}

/// Pingora's HTTP/1 writer stamps the current time on every answer; tollgate puts the answer's
/// own `Date` back on the client stream (src/origin_date.rs): the origin's on a miss, the
/// stored one on a hit, in IMF-fixdate form whatever form the origin used.
#[tokio::test]
async fn a_hit_keeps_the_stored_date() {
    let made = std::time::SystemTime::now() - Duration::from_secs(5);
    let date = httpdate::fmt_http_date(made);
    let origin_date = date.clone();
    let origin = Upstream::scripted(move |r, _| {
        if r.path == "/rfc850" {
            // The obsolete form (RFC 9110 §5.6.7) a recipient must still read.
            let old = rfc850(made);
            return fresh("x").header("date", &old);
        }
        fresh("x").header("date", &origin_date)
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;
    let miss = tg.get("/d").await;
    assert_eq!(miss.cache(), "MISS");
    miss.assert_header("date", &date);
    let hit = tg.get("/d").await;
    assert_eq!(hit.cache(), "HIT");
    assert!(hit.age().unwrap() >= 5, "{hit:?}");
    hit.assert_header("date", &date);
    for _ in 0..2 {
        tg.get("/rfc850").await.assert_header("date", &date);
    }
}

/// `made` in RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`).
fn rfc850(made: std::time::SystemTime) -> String {
    // From the IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
    let fix = httpdate::fmt_http_date(made);
    let day = match &fix[..3] {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    format!(
        "{day}, {}-{}-{} {}",
        &fix[5..7],
        &fix[8..11],
        &fix[14..16],
        &fix[17..]
    )
}

#[tokio::test]
async fn age_is_its_first_member_and_a_huge_age_still_stores_the_response_stale() {
    let origin = Upstream::scripted(|r, _| {
        if r.header("if-none-match") == "\"v1\"" {
            return Reply::ok("").status(304).header("etag", "\"v1\"");
        }
        let age = match r.path.as_str() {
            "/list" => "30, 5",
            "/two-pow-31" => "2147483648",
            "/u64-max" => "18446744073709551615",
            _ => "99999999999999999999999",
        };
        Reply::ok(format!("{} body", r.path)).headers(&[
            ("cache-control", "max-age=100"),
            ("age", age),
            ("etag", "\"v1\""),
        ])
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;

    // `Age: 30, 5` is 30 s old on arrival: fresh for 70 more, and hits say it is 30+ s old.
    assert_eq!(tg.get("/list").await.cache(), "MISS");
    let hit = tg.get("/list").await;
    assert_eq!(hit.cache(), "HIT");
    assert!((60..=70).contains(&hit_ttl(&hit)), "{}", hit.cache_status());
    assert!(hit.age().unwrap() >= 30, "{hit:?}");

    // Ages past 2^31 s (and past u64) are stored, stale: the next request revalidates them.
    for path in ["/two-pow-31", "/u64-max", "/past-u64"] {
        let first = tg.get(path).await;
        first.assert_status(200);
        assert_eq!(
            first.cache_status(),
            "tollgate; fwd=miss; fwd-status=200; stored",
            "{path}"
        );
        let before = origin.requests_to(path).len();
        let second = tg.get(path).await;
        assert_eq!(second.cache(), "REVALIDATED", "{path}: {second:?}");
        assert_eq!(second.text(), format!("{path} body"));
        let asked = origin.requests_to(path);
        assert_eq!(asked.len(), before + 1);
        assert_eq!(asked[before].header("if-none-match"), "\"v1\"", "{path}");
        assert_eq!(tg.get(path).await.cache(), "HIT", "{path}");
    }
}

#[tokio::test]
async fn non_error_answers_to_unsafe_or_unknown_methods_invalidate_like_post() {
    let origin = Upstream::scripted(|r, n| match (r.method.as_str(), r.path.as_str()) {
        ("GET", _) => fresh(format!("{} #{n}", r.path)),
        (_, "/moved") => Reply::ok("").status(303),
        (_, "/missing") => Reply::ok("no such thing").status(404),
        _ => Reply::ok("done"),
    })
    .await;
    let tg = cached(origin.addr(), "{}").start().await;
    let method = |m: &str| Method::from_bytes(m.as_bytes()).unwrap();
    // (path, method sent, its status, whether it removes the entry)
    let cases = [
        ("/unknown", "FOO", 200, true),
        ("/moved", "POST", 303, true),
        ("/missing", "FOO", 404, false),
        ("/safe", "OPTIONS", 200, false),
        ("/search", "PROPFIND", 200, false),
    ];
    for (path, m, status, invalidates) in cases {
        assert_eq!(tg.get(path).await.cache(), "MISS", "{path}");
        assert_eq!(tg.get(path).await.cache(), "HIT", "{path}");
        let r = tg.send(tg.req(method(m), path)).await;
        r.assert_status(status);
        assert_eq!(r.cache(), "BYPASS", "{m} {path} does not use the cache");
        let after = tg.get(path).await;
        let want = if invalidates { "MISS" } else { "HIT" };
        assert_eq!(after.cache(), want, "{m} {path} answered {status}");
    }
    let seen: Vec<String> = origin.requests().iter().map(|r| r.method.clone()).collect();
    for m in ["FOO", "POST", "OPTIONS", "PROPFIND"] {
        assert!(
            seen.iter().any(|s| s == m),
            "{m} reached the origin: {seen:?}"
        );
    }
}

#[tokio::test]
async fn cdn_cache_control_and_the_routes_targeted_field_win_over_cache_control() {
    let origin = Upstream::scripted(|r, n| {
        let body = format!("{} #{n}", r.path);
        match r.path.as_str() {
            "/cdn" => Reply::ok(body).headers(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ]),
            "/ours" => Reply::ok(body).headers(&[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=60"),
                ("tollgate-cache-control", "no-store"),
            ]),
            "/ours-ttl" => Reply::ok(body).headers(&[
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "max-age=300"),
                ("tollgate-cache-control", "max-age=30"),
            ]),
            _ => fresh(body),
        }
    })
    .await;
    let tg = cached(origin.addr(), "{ targeted_field: Tollgate-Cache-Control }")
        .start()
        .await;

    // CDN-Cache-Control allows what Cache-Control forbids.
    let a = tg.get("/cdn").await;
    assert_eq!(a.cache(), "MISS");
    assert_eq!(
        a.cache_status(),
        "tollgate; fwd=miss; fwd-status=200; stored"
    );
    let b = tg.get("/cdn").await;
    assert_eq!((b.cache(), b.text()), ("HIT", a.text()));
    b.assert_header("cdn-cache-control", "max-age=60");

    // The route's own field beats both.
    let a = tg.get("/ours").await;
    assert!(
        a.cache_status().ends_with("detail=origin-no-store"),
        "{}",
        a.cache_status()
    );
    let b = tg.get("/ours").await;
    assert_ne!(b.text(), a.text(), "not stored");
    assert_eq!(tg.get("/ours-ttl").await.cache(), "MISS");
    let hit = tg.get("/ours-ttl").await;
    assert_eq!(hit.cache(), "HIT");
    assert!((20..=30).contains(&hit_ttl(&hit)), "{}", hit.cache_status());

    // Cache-Control alone still works as before.
    assert_eq!(tg.get("/plain").await.cache(), "MISS");
    assert_eq!(tg.get("/plain").await.cache(), "HIT");
    assert_eq!(origin.requests_to("/cdn").len(), 1);
    assert_eq!(origin.requests_to("/ours").len(), 2);
}

#[tokio::test]
async fn authorized_requests_are_stored_when_the_response_allows_it_on_routes_that_opt_in() {
    let origin = Upstream::scripted(|r, n| {
        let body = format!("{} #{n} for {}", r.path, r.header("authorization"));
        let cc = match r.path.rsplit('/').next().unwrap() {
            "public" => "public, max-age=60",
            "s-maxage" => "s-maxage=60",
            "must-revalidate" => "max-age=60, must-revalidate",
            _ => "max-age=60",
        };
        Reply::ok(body).header("cache-control", cc)
    })
    .await;
    let tg = Config::new()
        .upstream(Group::new("app", [origin.addr()]))
        .route(
            Route::prefix("/opt/")
                .name("opt")
                .to("app")
                .cache("{ scope: shared, store_authorized: true }"),
        )
        .route(
            Route::prefix("/strict/")
                .name("strict")
                .to("app")
                .cache("{ scope: shared }"),
        )
        .start()
        .await;
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];

    // public, s-maxage and must-revalidate let a shared cache keep an authorized response.
    for path in ["/opt/public", "/opt/s-maxage", "/opt/must-revalidate"] {
        let first = tg.get_with(path, &alice).await;
        assert_eq!(
            first.cache_status(),
            "tollgate; fwd=miss; fwd-status=200; stored",
            "{path}"
        );
        let other = tg.get_with(path, &bob).await;
        assert_eq!(
            (other.cache(), other.text()),
            ("HIT", first.text()),
            "{path}"
        );
        let anon = tg.get(path).await;
        assert_eq!((anon.cache(), anon.text()), ("HIT", first.text()), "{path}");
        assert_eq!(origin.requests_to(path).len(), 1, "{path}");
    }

    // Without them it is not stored, and anonymous callers still use the cache for the URL.
    let path = "/opt/plain";
    for who in [&alice, &bob] {
        let r = tg.get_with(path, who).await;
        assert_eq!(
            r.cache_status(),
            "tollgate; fwd=miss; fwd-status=200; detail=authorization",
        );
        assert!(r.text().ends_with(who[0].1), "{}", r.text());
    }
    let first = tg.get(path).await;
    assert_eq!(first.cache(), "MISS");
    assert!(first.text().ends_with(" for "), "{}", first.text());
    let anon = tg.get(path).await;
    assert_eq!((anon.cache(), anon.text()), ("HIT", first.text()));
    assert_eq!(origin.requests_to(path).len(), 3);

    // The default stays strict: Authorization bypasses the cache whatever the origin says.
    for _ in 0..2 {
        let r = tg.get_with("/strict/public", &alice).await;
        assert_eq!(
            r.cache_status(),
            "tollgate; fwd=bypass; fwd-status=200; detail=authorization"
        );
    }
    assert_eq!(origin.requests_to("/strict/public").len(), 2);
}
