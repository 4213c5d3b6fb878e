//! Cached completions end to end (issue 18): the real tollgate binary in front of the mock
//! OpenAI/Anthropic model API ([`LlmUpstream`]), on routes with
//! `cache: { key: { body: json } }`. A POST is keyed on its canonical JSON body (key order,
//! whitespace and `0` vs `0.0` do not matter, ignored fields are left out, arrays keep their
//! order); only requests with the `store_when` values use the cache (default `temperature: 0`;
//! `{}`: all), the others bypass it with the reason in `Cache-Status`, as do bodies too large
//! or of unknown length, and bodies that are not a JSON object. A streamed answer is stored
//! once complete and replayed byte for byte. Such POSTs do not invalidate the cache, tenants
//! keep their own entries, and a hit's tokens are counted as cached (and their cost as saved)
//! but never debited. Also `cache.key.headers` on a GET route (a per-user cache).

mod common;

use common::llm::{anthropic_stream, openai_stream, TEXT};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Instant;

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";

/// The cache the brief describes: an hour, keyed on the JSON body without `user`.
const CACHE: &str = "{ ttl: 1h, key: { body: json, ignore_fields: [user] } }";

/// The mock behind group `openai`; route `llm` on `/` caching with `cache` (YAML text);
/// tenants named by a trusted `x-tenant-id` header (`acme` and `globex`, both allowlisted as
/// labels) on a generous tier.
fn cached_llm(llm: SocketAddr, cache: &str) -> Config {
    llm_config(
        llm,
        Route::prefix("/").name("llm").to("openai").cache(cache),
    )
}

/// [`cached_llm`] with `route` as the route on `/`.
fn llm_config(llm: SocketAddr, route: Route) -> Config {
    Config::new()
        .upstream(Group::new("openai", [llm]))
        .route(route)
        .identity("order", "[tenant_header]")
        .identity("trust_tenant_header", "true")
        .tier("llm", "{ rps: 1000, burst: 1000 }")
        .set("tenants", "acme", "{ tier: llm }")
        .set("tenants", "globex", "{ tier: llm }")
        .observability("tenant_label_allowlist", "[acme, globex]")
        // Failures print the proxy's log: keep it to tollgate's own lines.
        .observability("access_log", "{ enabled: false }")
}

/// A POST of `body` (sent as written, `Content-Length` set) to `path`, as `tenant` ("" for an
/// anonymous caller).
fn post(
    tg: &Tollgate,
    tenant: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    let mut req = tg
        .req(Method::POST, path)
        .header("content-type", "application/json")
        .body(body);
    if !tenant.is_empty() {
        req = req.header("x-tenant-id", tenant);
    }
    req
}

/// POST the JSON text `body` to the chat path as `tenant`.
async fn ask(tg: &Tollgate, tenant: &str, body: &str) -> Got {
    tg.send(post(tg, tenant, CHAT, body.to_string())).await
}

/// A chat request for `model` at `temperature`, as compact JSON text.
fn chat(model: &str, temperature: Value) -> String {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": temperature,
    })
    .to_string()
}

/// Assert `got` was answered from the cache, and with `body`.
#[track_caller]
fn assert_hit(got: &Got, body: &[u8]) {
    got.assert_status(200);
    assert_eq!(got.cache(), "HIT", "{got:?}");
    assert!(
        got.cache_status().starts_with("tollgate; hit; ttl="),
        "{got:?}"
    );
    assert_eq!(&got.body[..], body, "a hit replays the stored body");
}

/// Assert `got` went to the model and was stored.
#[track_caller]
fn assert_stored_miss(got: &Got) {
    got.assert_status(200);
    assert_eq!(got.cache(), "MISS", "{got:?}");
    assert_eq!(
        got.cache_status(),
        "tollgate; fwd=miss; fwd-status=200; stored",
        "{got:?}"
    );
}

/// Assert `got` went to the model around the cache, for `detail`.
#[track_caller]
fn assert_bypass(got: &Got, detail: &str) {
    got.assert_status(200);
    assert_eq!(got.cache(), "BYPASS", "{got:?}");
    let status = got.cache_status();
    assert!(
        status.starts_with("tollgate; fwd=bypass;"),
        "Cache-Status {status:?} of {got:?}"
    );
    assert!(
        status.ends_with(&format!("; detail={detail}")),
        "Cache-Status {status:?} of {got:?}"
    );
}

#[tokio::test]
async fn a_reordered_json_body_hits_the_entry_of_the_first() {
    let llm = LlmUpstream::start().await;
    let tg = cached_llm(llm.addr(), CACHE).start().await;

    let first_body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello."}],"temperature":0,"user":"u1"}"#;
    let first = ask(&tg, "acme", first_body).await;
    assert_stored_miss(&first);
    assert_eq!(first.json()["choices"][0]["message"]["content"], TEXT);

    // Keys in another order at every depth, other whitespace, 0.0 for 0, another user.
    let reordered = "{\n  \"user\": \"u2\",\n  \"temperature\": 0.0,\n  \"messages\": [ { \"content\": \"Say hello.\", \"role\": \"user\" } ],\n  \"model\": \"gpt-4o\"\n}";
    assert_hit(&ask(&tg, "acme", reordered).await, &first.body);
    assert_eq!(llm.count(), 1, "the model was asked once");

    // Another question is another entry.
    let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say goodbye."}],"temperature":0}"#;
    assert_stored_miss(&ask(&tg, "acme", other).await);
    // Another model too.
    assert_stored_miss(&ask(&tg, "acme", &chat("gpt-4o-mini", json!(0))).await);
    assert_eq!(llm.count(), 3);

    // Arrays keep their order: the same two messages swapped are another conversation.
    let two = r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"A"},{"role":"user","content":"B"}]}"#;
    let swapped = r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"B"},{"role":"user","content":"A"}]}"#;
    let a = ask(&tg, "acme", two).await;
    assert_stored_miss(&a);
    assert_stored_miss(&ask(&tg, "acme", swapped).await);
    assert_hit(&ask(&tg, "acme", two).await, &a.body);
    assert_eq!(llm.count(), 5);
    // What reached the model is the client's body, untouched by the canonical form.
    let seen = llm.requests();
    assert_eq!(
        seen[0].body,
        serde_json::from_str::<Value>(first_body).unwrap()
    );
    assert_eq!(seen[0].path, CHAT);
}

#[tokio::test]
async fn a_nondeterministic_request_bypasses_the_cache_and_says_why() {
    let llm = LlmUpstream::start().await;
    let tg = cached_llm(llm.addr(), CACHE).start().await;
    let warm = chat("gpt-4o", json!(0.7));
    for n in 1..=2 {
        assert_bypass(&ask(&tg, "acme", &warm).await, "nondeterministic");
        assert_eq!(llm.count(), n, "every 0.7 request is asked of the model");
    }
    // No temperature at all: the provider's default is not 0.
    let unset = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]});
    assert_bypass(
        &ask(&tg, "acme", &unset.to_string()).await,
        "nondeterministic",
    );
    assert_eq!(llm.count(), 3);
    // The deterministic twin of the 0.7 request is cached.
    let cold = chat("gpt-4o", json!(0));
    let first = ask(&tg, "acme", &cold).await;
    assert_stored_miss(&first);
    assert_hit(&ask(&tg, "acme", &cold).await, &first.body);
    // The 0.7 one still is not, though an entry now exists for its twin.
    assert_bypass(&ask(&tg, "acme", &warm).await, "nondeterministic");
    assert_eq!(llm.count(), 5);
}

#[tokio::test]
async fn store_when_says_which_requests_are_cached() {
    let llm = LlmUpstream::start().await;
    // `{}`: every request is cached, whatever its temperature.
    let tg = cached_llm(
        llm.addr(),
        "{ ttl: 1h, key: { body: json, store_when: {} } }",
    )
    .start()
    .await;
    let warm = chat("gpt-4o", json!(0.7));
    let first = ask(&tg, "acme", &warm).await;
    assert_stored_miss(&first);
    assert_hit(&ask(&tg, "acme", &warm).await, &first.body);
    let unset = json!({"model": "gpt-4o", "messages": []}).to_string();
    assert_stored_miss(&ask(&tg, "acme", &unset).await);
    assert_eq!(llm.count(), 2);
    drop(tg);

    // Other values: every one named must match (numbers by value).
    let tg = cached_llm(
        llm.addr(),
        "{ ttl: 1h, key: { body: json, store_when: { temperature: 0, seed: 7 } } }",
    )
    .start()
    .await;
    let seeded = json!({"model": "m", "temperature": 0, "seed": 7.0}).to_string();
    let first = ask(&tg, "acme", &seeded).await;
    assert_stored_miss(&first);
    assert_hit(&ask(&tg, "acme", &seeded).await, &first.body);
    for body in [
        json!({"model": "m", "temperature": 0}),
        json!({"model": "m", "temperature": 0, "seed": 8}),
        json!({"model": "m", "temperature": 0.7, "seed": 7}),
    ] {
        assert_bypass(
            &ask(&tg, "acme", &body.to_string()).await,
            "nondeterministic",
        );
    }
    assert_eq!(llm.count(), 2 + 1 + 3);
}

#[tokio::test]
async fn ignore_fields_leave_the_named_fields_out_of_the_key() {
    let llm = LlmUpstream::start().await;
    // The same model API twice: `/plain/...` without ignore_fields, `/...` with `user` ignored.
    let tg = cached_llm(llm.addr(), CACHE)
        .upstream(Group::new("plain", [llm.addr()]).strip_prefix("/plain"))
        .route(
            Route::prefix("/plain/")
                .name("plain")
                .to("plain")
                .cache("{ ttl: 1h, key: { body: json } }"),
        )
        .start()
        .await;
    let as_user = |user: &str| {
        json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Say hello."}],
            "temperature": 0,
            "user": user,
        })
        .to_string()
    };
    let plain = |body: String| tg.send(post(&tg, "acme", "/plain/v1/chat/completions", body));

    let alice = plain(as_user("alice")).await;
    assert_stored_miss(&alice);
    assert_stored_miss(&plain(as_user("bob")).await);
    assert_hit(&plain(as_user("alice")).await, &alice.body);
    assert_eq!(
        llm.count(),
        2,
        "without ignore_fields, each user has an entry"
    );

    let alice = ask(&tg, "acme", &as_user("alice")).await;
    assert_stored_miss(&alice);
    assert_hit(&ask(&tg, "acme", &as_user("bob")).await, &alice.body);
    // Absent is the same as any value of an ignored field.
    let anonymous = chat("gpt-4o", json!(0));
    assert_hit(&ask(&tg, "acme", &anonymous).await, &alice.body);
    assert_eq!(
        llm.count(),
        3,
        "with `user` ignored, one entry for all users"
    );
    // Only top-level fields are ignored: a `user` inside a message still counts.
    let nested = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Say hello.", "user": "carol"}],
        "temperature": 0,
    });
    assert_stored_miss(&ask(&tg, "acme", &nested.to_string()).await);
    assert_eq!(llm.count(), 4);
}

#[tokio::test]
async fn bodies_the_cache_cannot_key_bypass_it_and_reach_the_model_whole() {
    let llm = LlmUpstream::start().await;
    let tg = cached_llm(
        llm.addr(),
        "{ ttl: 1h, key: { body: json, max_body: 1KiB } }",
    )
    .start()
    .await;
    // Over max_body.
    let long = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "y".repeat(2000)}],
        "temperature": 0,
    })
    .to_string();
    for n in 1..=2 {
        assert_bypass(&ask(&tg, "acme", &long).await, "body-unread");
        assert_eq!(llm.count(), n);
    }
    assert_eq!(
        llm.requests()[1].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .len(),
        2000,
        "the body passed whole"
    );
    // No Content-Length (a chunked body): its size is known only at its end.
    let small = chat("gpt-4o", json!(0));
    let chunked = || {
        let chunks: Vec<Result<String, std::io::Error>> =
            vec![Ok(small[..10].to_string()), Ok(small[10..].to_string())];
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    for _ in 0..2 {
        let got = tg.send(post(&tg, "acme", CHAT, chunked())).await;
        assert_bypass(&got, "body-unread");
    }
    assert_eq!(llm.count(), 4);
    assert_eq!(
        llm.requests()[3].body,
        serde_json::from_str::<Value>(&small).unwrap()
    );
    // JSON that is not an object, and no JSON at all.
    for body in ["[1, 2, 3]", "\"temperature\"", "temperature=0"] {
        assert_bypass(&ask(&tg, "acme", body).await, "body-not-json");
    }
    assert_eq!(llm.count(), 7);
    // The same small body with a Content-Length is cached.
    let first = ask(&tg, "acme", &small).await;
    assert_stored_miss(&first);
    assert_hit(&ask(&tg, "acme", &small).await, &first.body);
    assert_eq!(llm.count(), 8);
}

#[tokio::test]
async fn a_streamed_answer_is_stored_once_complete_and_replayed_byte_for_byte() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(12, 34);
    let tg = cached_llm(llm.addr(), CACHE).start().await;
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let first = ask(&tg, "acme", &body).await;
    first
        .assert_status(200)
        .assert_header("content-type", "text/event-stream");
    let want = openai_stream("gpt-4o", TEXT, Tokens::new(12, 34), true).concat();
    assert_eq!(first.text(), want, "the stream passes unchanged");
    assert_stored_miss(&first);

    let second = ask(&tg, "acme", &body).await;
    second.assert_header("content-type", "text/event-stream");
    assert_hit(&second, want.as_bytes());
    assert_eq!(llm.count(), 1, "the model was asked once");

    // The same for an Anthropic Messages stream.
    let body = json!({
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 256,
        "temperature": 0,
        "stream": true,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
    .to_string();
    let want = anthropic_stream("claude-3-5-haiku-latest", TEXT, Tokens::new(12, 34)).concat();
    let first = tg.send(post(&tg, "acme", MESSAGES, body.clone())).await;
    assert_eq!(first.text(), want);
    assert_stored_miss(&first);
    let second = tg.send(post(&tg, "acme", MESSAGES, body)).await;
    second.assert_header("content-type", "text/event-stream");
    assert_hit(&second, want.as_bytes());
    assert_eq!(llm.count(), 2);
}

#[tokio::test]
async fn tenants_keep_their_own_entries_unless_the_scope_is_shared() {
    let llm = LlmUpstream::start().await;
    let tg = cached_llm(llm.addr(), CACHE).start().await;
    let body = chat("gpt-4o", json!(0));
    let acme = ask(&tg, "acme", &body).await;
    assert_stored_miss(&acme);
    assert_hit(&ask(&tg, "acme", &body).await, &acme.body);
    let globex = ask(&tg, "globex", &body).await;
    assert_stored_miss(&globex);
    assert_hit(&ask(&tg, "globex", &body).await, &globex.body);
    // Anonymous callers share one set of entries, apart from every tenant's.
    assert_stored_miss(&ask(&tg, "", &body).await);
    assert_eq!(llm.count(), 3);
    drop(tg);

    let tg = cached_llm(
        llm.addr(),
        "{ ttl: 1h, scope: shared, key: { body: json } }",
    )
    .start()
    .await;
    let acme = ask(&tg, "acme", &body).await;
    assert_stored_miss(&acme);
    assert_hit(&ask(&tg, "globex", &body).await, &acme.body);
    assert_hit(&ask(&tg, "", &body).await, &acme.body);
    assert_eq!(llm.count(), 4);
}

#[tokio::test]
async fn posts_on_a_body_keyed_route_do_not_invalidate_its_entries() {
    let llm = LlmUpstream::start().await;
    let tg = cached_llm(llm.addr(), CACHE).start().await;
    let body = chat("gpt-4o", json!(0));
    let first = ask(&tg, "acme", &body).await;
    assert_stored_miss(&first);
    // Successful POSTs to the same path: one around the cache, one another entry's miss.
    assert_bypass(
        &ask(&tg, "acme", &chat("gpt-4o", json!(0.7))).await,
        "nondeterministic",
    );
    let mini = ask(&tg, "acme", &chat("gpt-4o-mini", json!(0))).await;
    assert_stored_miss(&mini);
    assert_eq!(llm.count(), 3);
    // Neither removed the first entry (a mutation would remove the path's entries).
    assert_hit(&ask(&tg, "acme", &body).await, &first.body);
    assert_hit(
        &ask(&tg, "acme", &chat("gpt-4o-mini", json!(0))).await,
        &mini.body,
    );
    assert_eq!(llm.count(), 3);
    assert_eq!(
        tg.metric(
            "tollgate_cache_purged_entries_total",
            &[("reason", "mutation")]
        )
        .await
        .unwrap_or(0.0),
        0.0
    );
}

/// Tokens left in the minute budget as `RateLimit` tells it (`"tokens";r=`).
#[track_caller]
fn tokens_left(got: &Got) -> u64 {
    let header = got.header("ratelimit");
    header
        .split(',')
        .map(str::trim)
        .find_map(|item| {
            let mut parts = item.split(';');
            (parts.next()? == "\"tokens\"").then(|| {
                parts
                    .find_map(|p| p.strip_prefix("r="))
                    .and_then(|r| r.parse().ok())
            })?
        })
        .unwrap_or_else(|| panic!("no \"tokens\";r= in RateLimit {header:?} of {got:?}"))
}

/// Assert `RateLimit` says `want` tokens are left, give or take what a bucket of
/// `per_minute` refilled since `since` (taken before the first debited request was sent).
#[track_caller]
fn assert_tokens_left(got: &Got, want: u64, per_minute: u64, since: Instant) {
    let refill = (since.elapsed().as_secs_f64() * per_minute as f64 / 60.0).floor() as u64;
    let r = tokens_left(got);
    assert!(
        (want..=want + refill).contains(&r),
        "tokens left {r}, want {want} (+ up to {refill} refilled) in {got:?}"
    );
}

#[tokio::test]
async fn hits_count_cached_tokens_and_the_cost_saved_and_are_not_debited() {
    let llm = LlmUpstream::start().await;
    // At $2 per million input tokens and $4 per million output tokens: $1 + $1 an answer.
    llm.set_usage(500_000, 250_000);
    const PER_MINUTE: u64 = 3_000_000;
    let tg = llm_config(
        llm.addr(),
        Route::prefix("/")
            .name("llm")
            .to("openai")
            .cache(CACHE)
            .set("tokens", "{}"),
    )
    .tier(
        "llm",
        &format!("{{ rps: 1000, burst: 1000, tokens_per_minute: {PER_MINUTE} }}"),
    )
    .set("llm", "prices", "{ gpt-4o: { input: 2.0, output: 4.0 } }")
    .start()
    .await;
    let body = chat("gpt-4o", json!(0));
    let acme = [
        ("route", "llm"),
        ("tenant", "acme"),
        ("group", "openai"),
        ("model", "gpt-4o"),
    ];
    let with_type = |kind: &'static str| {
        let mut l = acme.to_vec();
        l.push(("type", kind));
        l
    };

    let t0 = Instant::now();
    let miss = ask(&tg, "acme", &body).await;
    assert_stored_miss(&miss);
    assert_eq!(tokens_left(&miss), PER_MINUTE, "debited after the answer");
    tg.expect_metric("tollgate_llm_tokens_total", &with_type("input"), 500_000.0)
        .await;
    tg.expect_metric("tollgate_llm_tokens_total", &with_type("output"), 250_000.0)
        .await;
    tg.expect_metric("tollgate_llm_cost_usd_total", &acme, 2.0)
        .await;

    let cached = |kind| [("route", "llm"), ("model", "gpt-4o"), ("type", kind)];
    for n in 1..=2 {
        let hit = ask(&tg, "acme", &body).await;
        assert_hit(&hit, &miss.body);
        // Only the miss was debited, whatever the hits before this one.
        assert_tokens_left(&hit, PER_MINUTE - 750_000, PER_MINUTE, t0);
        let n = n as f64;
        tg.expect_metric(
            "tollgate_llm_cached_tokens_total",
            &cached("input"),
            500_000.0 * n,
        )
        .await;
        tg.expect_metric(
            "tollgate_llm_cached_tokens_total",
            &cached("output"),
            250_000.0 * n,
        )
        .await;
        tg.expect_metric(
            "tollgate_llm_cost_saved_usd_total",
            &[("route", "llm"), ("model", "gpt-4o")],
            2.0 * n,
        )
        .await;
    }
    assert_eq!(llm.count(), 1);
    // A request that goes to the model again sees the budget the miss left, not less.
    let bypass = ask(&tg, "acme", &chat("gpt-4o", json!(0.7))).await;
    assert_bypass(&bypass, "nondeterministic");
    assert_tokens_left(&bypass, PER_MINUTE - 750_000, PER_MINUTE, t0);
    tg.expect_metric(
        "tollgate_llm_tokens_total",
        &with_type("input"),
        1_000_000.0,
    )
    .await;
    tg.expect_metric("tollgate_llm_cost_usd_total", &acme, 4.0)
        .await;
    // Hits are not provider calls: neither timed nor counted as tokens spent.
    let timed = [("group", "openai"), ("model", "gpt-4o")];
    tg.expect_metric("tollgate_llm_request_duration_seconds_count", &timed, 2.0)
        .await;
    assert_eq!(
        tg.metric("tollgate_llm_cached_tokens_total", &cached("input"))
            .await,
        Some(1_000_000.0)
    );
}

#[tokio::test]
async fn key_headers_give_each_value_and_the_absent_header_its_own_entry() {
    let origin = Upstream::scripted(|r, n| {
        Reply::ok(format!("answer #{n} for {:?}", r.header("x-user-id")))
            .header("content-type", "text/plain")
    })
    .await;
    let tg = Config::new()
        .upstream(Group::new("app", [origin.addr()]))
        .route(
            Route::prefix("/")
                .name("app")
                .to("app")
                .cache("{ ttl: 1h, key: { headers: [x-user-id] } }"),
        )
        .start()
        .await;
    let get = |user: Option<&'static str>| {
        let headers: Vec<(&str, &str)> = user.map(|u| ("X-User-Id", u)).into_iter().collect();
        let tg = &tg;
        async move { tg.get_with("/session", &headers).await }
    };
    let alice = get(Some("alice")).await;
    alice.assert_status(200);
    assert_eq!(alice.cache(), "MISS", "{alice:?}");
    assert_eq!(alice.text(), "answer #0 for \"alice\"");
    let bob = get(Some("bob")).await;
    assert_eq!(bob.cache(), "MISS", "{bob:?}");
    assert_eq!(bob.text(), "answer #1 for \"bob\"");
    let nobody = get(None).await;
    assert_eq!(nobody.cache(), "MISS", "{nobody:?}");
    assert_eq!(nobody.text(), "answer #2 for \"\"");
    assert_eq!(origin.count(), 3);

    for (user, want) in [
        (Some("alice"), &alice),
        (Some("bob"), &bob),
        (None, &nobody),
        (Some("alice"), &alice),
    ] {
        let again = get(user).await;
        assert_eq!(again.cache(), "HIT", "{user:?}: {again:?}");
        assert_eq!(again.body, want.body, "{user:?}");
    }
    assert_eq!(origin.count(), 3);
    // A header's value is compared as sent: another spelling is another user.
    assert_eq!(get(Some("Alice")).await.cache(), "MISS");
    assert_eq!(origin.count(), 4);
}

#[test]
fn check_refuses_a_body_key_without_ttl_or_with_max_body_past_64kib() {
    let base = "upstreams: { llm: { endpoints: [127.0.0.1:3000] } }\n";
    let route = |cache: &str| {
        format!(
            "{base}routes: [{{ match: {{ path_prefix: / }}, upstream: llm, cache: {cache} }}]\n"
        )
    };
    let (code, out, err) = check_yaml(&route("{ key: { body: json } }"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("routes[0].cache.ttl"), "{err}");
    let (code, out, err) = check_yaml(&route("{ ttl: 1h, key: { body: json, max_body: 65KiB } }"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("routes[0].cache.key.max_body"), "{err}");
    let (code, out, err) = check_yaml(&route(
        "{ ttl: 1h, key: { body: json, max_body: 64KiB, ignore_fields: [user], store_when: {} } }",
    ));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = check_yaml(&route(
        "{ ttl: 1h, key: { headers: [x-user-id, X-User-Id] } }",
    ));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("routes[0].cache.key.headers[1]"), "{err}");
}

/// SDKs send `Accept-Encoding: gzip`: a token route asks its provider for identity anyway (so
/// the usage can be read), caches it identity, and its own `compression` encodes for the
/// client, on the fill and on the hits.
#[tokio::test]
async fn a_gzip_accepting_client_on_a_compressing_caching_token_route_is_still_read() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(300, 700);
    let tg = llm_config(
        llm.addr(),
        Route::prefix("/")
            .name("llm")
            .to("openai")
            .cache(CACHE)
            .compression("{ min_size: 16 }")
            .set("tokens", "{}"),
    )
    .start()
    .await;
    let body = chat("gpt-4o", json!(0));
    let gzip =
        |tg: &Tollgate| post(tg, "acme", CHAT, body.clone()).header("accept-encoding", "gzip");
    let miss = gzip(&tg).send().await.unwrap();
    assert_eq!(miss.status(), 200);
    assert_eq!(miss.headers()["content-encoding"], "gzip");
    assert_eq!(
        llm.requests()[0].headers["accept-encoding"],
        "identity",
        "the provider is asked for what tollgate can read"
    );
    let labels = |kind| {
        [
            ("route", "llm"),
            ("tenant", "acme"),
            ("group", "openai"),
            ("model", "gpt-4o"),
            ("type", kind),
        ]
    };
    tg.expect_metric("tollgate_llm_tokens_total", &labels("input"), 300.0)
        .await;
    tg.expect_metric("tollgate_llm_tokens_total", &labels("output"), 700.0)
        .await;
    let hit = gzip(&tg).send().await.unwrap();
    assert_eq!(hit.headers()["x-cache-status"], "HIT");
    assert_eq!(hit.headers()["content-encoding"], "gzip");
    let cached = [("route", "llm"), ("model", "gpt-4o"), ("type", "output")];
    tg.expect_metric("tollgate_llm_cached_tokens_total", &cached, 700.0)
        .await;
    assert_eq!(llm.count(), 1);
}
